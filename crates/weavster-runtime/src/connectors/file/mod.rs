//! Files on the local disk: a glob of files read in name order (source), one
//! file appended to or kept a valid JSON array (sink).

pub mod sink;
pub mod source;

use std::path::Path;

use futures::future::BoxFuture;
use weavster_spec::types::{FileConnector, WriteMode};

use super::{Check, CheckContext, ConnectorError, Context, Family};
use crate::sink::Sink;
use crate::source::{Positions, Source};
pub use sink::FileSink;
pub use source::{FileSource, format_of, is_glob};

/// The CSV delimiter (one byte; the project check refuses others).
fn delimiter(d: &Option<String>) -> u8 {
    d.as_deref().and_then(|s| s.bytes().next()).unwrap_or(b',')
}

impl Family for FileConnector {
    fn source<'a>(
        &'a self,
        cx: &'a Context,
        positions: Positions,
    ) -> BoxFuture<'a, Result<Box<dyn Source>, ConnectorError>> {
        Box::pin(async move {
            Ok(Box::new(FileSource::new(
                cx.root.join(&self.path).display().to_string(),
                self.path.clone(),
                cx.root.clone(),
                self.format,
                delimiter(&self.delimiter),
                self.follow.unwrap_or(true) && !cx.once,
                cx.limits,
                positions,
            )) as Box<dyn Source>)
        })
    }

    fn sink<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, Result<Box<dyn Sink>, ConnectorError>> {
        Box::pin(async move {
            let path = cx.root.join(&self.path);
            let format = format_of(&path, self.format).ok_or_else(|| {
                ConnectorError::Config(format!(
                    "cannot tell the format of `{}`; name it .jsonl, .json or .csv, or set `format`",
                    self.path
                ))
            })?;
            let sink = FileSink::open(
                path,
                self.path.clone(),
                format,
                self.mode.unwrap_or(WriteMode::Append),
                delimiter(&self.delimiter),
            )
            .map_err(|e| ConnectorError::Connect(e.to_string()))?;
            Ok(Box::new(sink) as Box<dyn Sink>)
        })
    }

    fn check<'a>(&'a self, cx: &'a CheckContext) -> BoxFuture<'a, Option<Check>> {
        Box::pin(async move { Some(file_check(&cx.root, &self.path, cx.input)) })
    }
}

/// An input: some file matches; an output: its directory can be written.
fn file_check(root: &Path, pattern: &str, input: bool) -> Check {
    let full = root.join(pattern);
    if input {
        let matches =
            glob::glob(&full.to_string_lossy()).map(|paths| paths.filter_map(Result::ok).count());
        match matches {
            Ok(0) => Check::fail(
                format!("no file matches {pattern}"),
                "create the input file or fix `path`",
            ),
            Ok(n) => Check::ok(format!("{n} file(s) match {pattern}")),
            Err(e) => Check::fail(format!("invalid glob {pattern}: {e}"), "fix `path`"),
        }
    } else {
        let parent = full
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| root.to_path_buf());
        let mut existing = parent.as_path();
        while !existing.exists() {
            match existing.parent() {
                Some(p) => existing = p,
                None => break,
            }
        }
        if existing.is_file() {
            return Check::fail(
                format!(
                    "{pattern} cannot be created: {} is a file, not a directory",
                    existing.strip_prefix(root).unwrap_or(existing).display()
                ),
                "move that file away or fix `path`",
            );
        }
        let writable = std::fs::metadata(existing)
            .map(|m| !m.permissions().readonly())
            .unwrap_or(false);
        if writable {
            Check::ok(format!("{pattern} can be written"))
        } else {
            Check::fail(
                format!("{} is not writable", existing.display()),
                "fix the directory's permissions or `path`",
            )
        }
    }
}
