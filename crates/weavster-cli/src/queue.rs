//! The queue database for `run` and `dlq`: the embedded server or the
//! configured URL.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use weavster_project::Project;
use weavster_runtime::Db;

/// An open queue; [`Queue::close`] stops an embedded server.
pub struct Queue {
    pub db: Db,
    embedded: Option<weavster_queue_server::Embedded>,
    /// Where it is, for messages (password masked).
    pub shown: String,
}

impl Queue {
    pub async fn open(project: &Project, max_connections: u32) -> anyhow::Result<Queue> {
        let queue = &project.runtime.queue;
        if queue == "embedded" {
            let mut opts =
                weavster_queue_server::Options::new(project.root.join(".weavster/postgres"));
            opts.bin_dir = std::env::var_os("WEAVSTER_PG_BIN").map(PathBuf::from);
            let server = weavster_queue_server::Embedded::start(&opts)
                .await
                .context("cannot start the embedded PostgreSQL (queue: embedded)")?;
            let url = server.url();
            let db = match Db::connect(&url, max_connections, Duration::from_secs(10)).await {
                Ok(db) => db,
                Err(e) => {
                    let _ = server.stop().await;
                    return Err(e.into());
                }
            };
            Ok(Queue {
                db,
                embedded: Some(server),
                shown: ".weavster/postgres (embedded)".into(),
            })
        } else {
            let db = Db::connect(queue, max_connections, Duration::from_secs(10)).await?;
            Ok(Queue {
                db,
                embedded: None,
                shown: weavster_runtime::mask_url(queue),
            })
        }
    }

    /// Stops the embedded server from anywhere (a forced exit).
    pub fn emergency(&self) -> Option<weavster_queue_server::EmergencyStop> {
        self.embedded.as_ref().map(|e| e.emergency())
    }

    /// Resolves with an error message if the embedded server dies and
    /// cannot be started again; restarts it otherwise (checked every
    /// second). Never resolves for an external database (its own
    /// supervisor restarts it; the run retries meanwhile).
    pub async fn failed(&self) -> String {
        let Some(server) = &self.embedded else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match server.ensure_running().await {
                Ok(true) => {
                    tracing::warn!("the embedded PostgreSQL had stopped; it was started again")
                }
                Ok(false) => {}
                Err(e) => {
                    return format!(
                        "the embedded PostgreSQL stopped and could not be started again ({} attempts): {e}",
                        weavster_queue_server::RESTART_ATTEMPTS
                    );
                }
            }
        }
    }

    pub async fn close(self) {
        self.db.pool().close().await;
        if let Some(server) = self.embedded
            && let Err(e) = server.stop().await
        {
            tracing::warn!("stopping the embedded PostgreSQL: {e}");
        }
    }
}

/// A tokio runtime for the commands that need one.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
