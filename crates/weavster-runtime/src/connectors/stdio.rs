//! Standard input (a source, not resumable: each process reads its own)
//! and standard output (a sink).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncReadExt as _;
use weavster_spec::types::{Format, StdinConnector, StdoutConnector};

use super::file::source::{CsvHeader, CsvRow, Reader, csv_record, header_names};
use super::{Check, ConnectorError, Context, Family, Reading};
use crate::dead_letter::Stage;
use crate::sink::{Refused, Sink, SinkError, encode};
use crate::source::{KEEP_BYTES, Limits, Positions, Reject, Source, SourceBatch, SourceError};

impl Family for StdinConnector {
    fn reading(&self) -> Reading {
        Reading::PerProcess
    }

    fn source<'a>(
        &'a self,
        cx: &'a Context,
        _positions: Positions,
    ) -> BoxFuture<'a, Result<Box<dyn Source>, ConnectorError>> {
        let format = self.format.unwrap_or(Format::Jsonl);
        Box::pin(async move {
            Ok(Box::new(StdinSource::new(format, cx.limits, cx.linger)) as Box<dyn Source>)
        })
    }

    fn check<'a>(&'a self, _cx: &'a super::CheckContext) -> BoxFuture<'a, Option<Check>> {
        Box::pin(async { None })
    }
}

impl Family for StdoutConnector {
    fn sink<'a>(
        &'a self,
        _cx: &'a Context,
    ) -> BoxFuture<'a, Result<Box<dyn Sink>, ConnectorError>> {
        Box::pin(async move {
            let format = self.format.unwrap_or(Format::Jsonl);
            if format == Format::Json {
                return Err(ConnectorError::Config(
                    "standard output takes `jsonl` or `csv`, not `json`".into(),
                ));
            }
            Ok(Box::new(StdoutSink::new(format)) as Box<dyn Sink>)
        })
    }

    fn check<'a>(&'a self, _cx: &'a super::CheckContext) -> BoxFuture<'a, Option<Check>> {
        Box::pin(async { None })
    }
}

/// Standard input: JSON lines (or CSV with a header line, or one JSON
/// array). Batches are cut at `batch_size` records or `linger` after their
/// first record.
pub struct StdinSource {
    rx: tokio::sync::mpsc::Receiver<Result<Line, String>>,
    limits: Limits,
    linger: Duration,
    format: Format,
    header: Option<CsvHeader>,
    ended: bool,
}

/// A line of standard input, or the head of an over-long one.
enum Line {
    Whole(Vec<u8>),
    TooLong { head: Vec<u8>, len: usize },
}

/// Reads standard input as lines of at most `max` bytes (longer ones are
/// reported with their head), into `tx`.
async fn read_lines(
    mut input: impl tokio::io::AsyncRead + Unpin,
    max: usize,
    tx: tokio::sync::mpsc::Sender<Result<Line, String>>,
) {
    let mut buf = vec![0u8; 64 << 10];
    let mut line: Vec<u8> = Vec::new();
    let mut len = 0usize;
    loop {
        let n = match input.read(&mut buf).await {
            Ok(0) => {
                if len > 0 {
                    let l = if len > max {
                        Line::TooLong { head: line, len }
                    } else {
                        Line::Whole(line)
                    };
                    let _ = tx.send(Ok(l)).await;
                }
                return;
            }
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(e.to_string())).await;
                return;
            }
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let (piece, ended) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], Some(i + 1)),
                None => (rest, None),
            };
            let room = KEEP_BYTES
                .min(max.saturating_add(1))
                .saturating_sub(line.len());
            line.extend_from_slice(&piece[..piece.len().min(room)]);
            len += piece.len();
            match ended {
                Some(i) => {
                    let l = if len > max {
                        Line::TooLong {
                            head: std::mem::take(&mut line),
                            len,
                        }
                    } else {
                        Line::Whole(std::mem::take(&mut line))
                    };
                    len = 0;
                    if tx.send(Ok(l)).await.is_err() {
                        return;
                    }
                    rest = &rest[i..];
                }
                None => rest = &[],
            }
        }
    }
}

impl StdinSource {
    pub fn new(format: Format, limits: Limits, linger: Duration) -> StdinSource {
        let (tx, rx) = tokio::sync::mpsc::channel(limits.batch_size * 4);
        tokio::spawn(read_lines(tokio::io::stdin(), limits.max_record_bytes, tx));
        StdinSource {
            rx,
            limits,
            linger,
            format,
            header: None,
            ended: false,
        }
    }

    fn take(&mut self, line: Line, batch: &mut SourceBatch) {
        let reject = |record: Vec<u8>, stage: Stage, message: String| Reject {
            record,
            stage,
            message,
            at: Some("stdin".into()),
        };
        let line = match line {
            Line::Whole(l) => l,
            Line::TooLong { head, len } => {
                batch.rejects.push(reject(
                    head,
                    Stage::Input,
                    format!(
                        "record of {len} bytes is longer than max_record_bytes ({})",
                        self.limits.max_record_bytes
                    ),
                ));
                return;
            }
        };
        let raw = line.trim_ascii();
        if raw.is_empty() {
            return;
        }
        match self.format {
            Format::Jsonl | Format::Json => match std::str::from_utf8(raw) {
                Ok(t) => batch.records.push(t.to_string()),
                Err(e) => batch.rejects.push(reject(
                    raw.to_vec(),
                    Stage::Decode,
                    format!("not valid UTF-8 (byte {} of the record)", e.valid_up_to()),
                )),
            },
            Format::Csv => {
                let raw = line.strip_suffix(b"\r").unwrap_or(&line);
                let mut parser = CsvRow::new(b',');
                let row = match parser.fields(raw) {
                    Ok(row) => row,
                    Err((stage, message)) => {
                        batch.rejects.push(reject(raw.to_vec(), stage, message));
                        return;
                    }
                };
                match &self.header {
                    None => {
                        self.header = Some(header_names(row.iter().copied()));
                    }
                    Some(h) => match csv_record(h, &row) {
                        Ok(r) => batch.records.push(r),
                        Err((stage, message)) => {
                            batch.rejects.push(reject(raw.to_vec(), stage, message))
                        }
                    },
                }
            }
        }
    }

    /// A whole JSON array from standard input.
    async fn json_array(&mut self) -> Result<SourceBatch, SourceError> {
        let mut text = Vec::new();
        while let Some(line) = self.rx.recv().await {
            match line.map_err(SourceError::Stdin)? {
                Line::Whole(l) => text.extend_from_slice(&l),
                Line::TooLong { head, .. } => text.extend_from_slice(&head),
            }
            text.push(b'\n');
        }
        self.ended = true;
        let dir = tempfile_dir();
        let path = dir.join(format!("weavster-stdin-{}.json", std::process::id()));
        std::fs::write(&path, &text).map_err(|e| SourceError::Stdin(e.to_string()))?;
        let limits = Limits {
            batch_size: usize::MAX,
            max_batch_bytes: usize::MAX,
            ..self.limits
        };
        let read = Reader {
            path: &path,
            stream: "stdin",
            start: 0,
            limits,
            final_: true,
            ranges: false,
        }
        .json();
        let _ = std::fs::remove_file(&path);
        let chunk = read.map_err(SourceError::Stdin)?;
        Ok(SourceBatch {
            records: chunk.records,
            rejects: chunk.rejects,
            position: None,
            ..SourceBatch::default()
        })
    }
}

fn tempfile_dir() -> PathBuf {
    std::env::temp_dir()
}

impl Source for StdinSource {
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<SourceBatch>, SourceError>> {
        Box::pin(async move {
            if self.ended {
                return Ok(None);
            }
            // A JSON array arrives whole.
            if self.format == Format::Json {
                let batch = self.json_array().await?;
                return Ok(Some(batch));
            }
            let mut batch = SourceBatch::default();
            let mut deadline = None;
            let mut bytes = 0usize;
            while batch.records.len() + batch.rejects.len() < self.limits.batch_size
                && bytes < self.limits.max_batch_bytes
            {
                let next = match deadline {
                    None => self.rx.recv().await,
                    Some(d) => match tokio::time::timeout_at(d, self.rx.recv()).await {
                        Ok(n) => n,
                        Err(_) => break,
                    },
                };
                match next {
                    None => {
                        self.ended = true;
                        break;
                    }
                    Some(line) => {
                        let had = batch.records.len();
                        self.take(line.map_err(SourceError::Stdin)?, &mut batch);
                        bytes += batch.records[had..].iter().map(String::len).sum::<usize>();
                        if deadline.is_none()
                            && !(batch.records.is_empty() && batch.rejects.is_empty())
                        {
                            deadline = Some(tokio::time::Instant::now() + self.linger);
                        }
                    }
                }
            }
            if batch.records.is_empty() && batch.rejects.is_empty() {
                return Ok(None);
            }
            Ok(Some(batch))
        })
    }
}

/// Standard output (jsonl or csv).
pub struct StdoutSink {
    format: Format,
    columns: Mutex<Vec<String>>,
}

impl StdoutSink {
    pub fn new(format: Format) -> StdoutSink {
        StdoutSink {
            format,
            columns: Mutex::new(Vec::new()),
        }
    }
}

impl Sink for StdoutSink {
    fn write<'a>(
        &'a self,
        _job: &'a str,
        records: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Refused, SinkError>> {
        Box::pin(async move {
            let mut bytes = Vec::new();
            let mut guard = self
                .columns
                .lock()
                .map_err(|_| SinkError::Stdout("a writer panicked".into()))?;
            let refused = encode(self.format, records, b',', &mut guard, &mut bytes);
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .map_err(|e| SinkError::Stdout(e.to_string()))?;
            Ok(refused)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stdin_lines_are_bounded() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(10);
        let input = b"abc\ndefghijkl\nmn".to_vec();
        read_lines(&input[..], 5, tx).await;
        let mut got = Vec::new();
        while let Some(Ok(l)) = rx.recv().await {
            got.push(match l {
                Line::Whole(l) => format!("whole {}", String::from_utf8_lossy(&l)),
                Line::TooLong { head, len } => {
                    format!("long {} {len}", String::from_utf8_lossy(&head))
                }
            });
        }
        assert_eq!(got, ["whole abc", "long defghi 9", "whole mn"]);
    }
}
