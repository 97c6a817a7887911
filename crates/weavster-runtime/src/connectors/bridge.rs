//! Bridges: a flow output into another flow's queue.

use futures::future::BoxFuture;

use crate::Db;
use crate::queue::{self, Job};
use crate::sink::{Refused, Sink, SinkError};

/// Another flow's queue: the batch becomes one job of that flow.
pub struct BridgeSink {
    flow: String,
    db: Db,
    max_attempts: u32,
}

impl BridgeSink {
    pub(crate) fn new(flow: String, db: Db, max_attempts: u32) -> Self {
        BridgeSink {
            flow,
            db,
            max_attempts,
        }
    }
}

impl Sink for BridgeSink {
    fn write<'a>(
        &'a self,
        _job: &'a str,
        records: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Refused, SinkError>> {
        Box::pin(async move {
            queue::push(
                self.db.pool(),
                &self.flow,
                &Job::from_records(records),
                self.max_attempts,
            )
            .await
            .map_err(|e| SinkError::Bridge {
                flow: self.flow.clone(),
                message: e.to_string(),
            })?;
            Ok(Vec::new())
        })
    }
}
