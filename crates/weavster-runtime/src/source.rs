//! Sources: where a flow's records come from.
//!
//! A source yields batches of JSON records (text, one object each) with the
//! position they end at. The runtime pushes a batch onto the queue, stores
//! its position, and only then calls [`Source::ack`]: a source never
//! forgets a record that is not durably enqueued. Records a source cannot
//! turn into JSON (a CSV row with too many fields) are handed back as
//! rejects and become dead letters (stage `input`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read as _, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::io::AsyncBufReadExt;

use crate::Format;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("standard input: {0}")]
    Stdin(String),
}

/// Where a batch ends in its stream, to resume after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The stream (a file's path as shown to the user).
    pub stream: String,
    pub start: i64,
    pub end: i64,
}

/// A record the source could not read, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    pub record: String,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct SourceBatch {
    pub records: Vec<String>,
    pub rejects: Vec<Reject>,
    /// `None` for streams that cannot be resumed (standard input).
    pub position: Option<Position>,
}

/// A source of record batches. Kafka, PostgreSQL and HTTP sources implement
/// the same trait.
pub trait Source: Send {
    /// The next batch; `None` once a finite source is exhausted. Must be
    /// cancel-safe: a batch is consumed only when returned.
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<SourceBatch>, SourceError>>;

    /// Called once the batch is durably enqueued and its position stored.
    fn ack(&mut self, _batch: &SourceBatch) -> BoxFuture<'_, Result<(), SourceError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The format of a file: configured, else from its extension.
pub fn format_of(path: &Path, configured: Option<Format>) -> Option<Format> {
    configured.or_else(
        || match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            _ => None,
        },
    )
}

/// How many bytes a file source reads at once.
const CHUNK: usize = 4 << 20;
/// How often a following file source looks for new data.
const POLL: Duration = Duration::from_millis(200);

/// Files matching a glob, read in name order from their stored positions
/// (a byte offset for jsonl and csv, a record index for json). Follows
/// appended data unless `once`.
pub struct FileSource {
    pattern: String,
    format: Option<Format>,
    delimiter: u8,
    follow: bool,
    batch_size: usize,
    root: PathBuf,
    positions: HashMap<String, i64>,
    /// Files known, by path; `true` once finished (`once` mode).
    done: BTreeMap<PathBuf, bool>,
    /// For json files: the size last parsed, to re-read only on change.
    json_seen: HashMap<PathBuf, u64>,
}

impl FileSource {
    /// `positions`: the stored positions by stream (a file's path relative
    /// to `root`).
    pub fn new(
        pattern: String,
        root: PathBuf,
        format: Option<Format>,
        delimiter: u8,
        follow: bool,
        batch_size: usize,
        positions: HashMap<String, i64>,
    ) -> FileSource {
        FileSource {
            pattern,
            format,
            delimiter,
            follow,
            batch_size: batch_size.max(1),
            root,
            positions,
            done: BTreeMap::new(),
            json_seen: HashMap::new(),
        }
    }

    fn stream_name(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    fn scan(&mut self) -> Result<(), SourceError> {
        let paths = glob::glob(&self.pattern).map_err(|e| SourceError::File {
            path: self.pattern.clone(),
            message: format!("bad glob: {e}"),
        })?;
        for p in paths.flatten() {
            if p.is_file() {
                self.done.entry(p).or_insert(false);
            }
        }
        Ok(())
    }

    /// One batch from the first file that has data.
    fn poll_files(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        self.scan()?;
        let files: Vec<PathBuf> = self
            .done
            .iter()
            .filter(|(_, done)| !**done)
            .map(|(p, _)| p.clone())
            .collect();
        for path in files {
            let stream = self.stream_name(&path);
            let start = self.positions.get(&stream).copied().unwrap_or(0);
            let format = format_of(&path, self.format).ok_or_else(|| SourceError::File {
                path: stream.clone(),
                message: "unknown format: name it .jsonl, .json or .csv, or set `format`".into(),
            })?;
            let err = |message: String| SourceError::File {
                path: stream.clone(),
                message,
            };
            let read = match format {
                Format::Jsonl => read_jsonl(&path, start, self.batch_size, !self.follow),
                Format::Csv => {
                    read_csv(&path, start, self.batch_size, !self.follow, self.delimiter)
                }
                Format::Json => {
                    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    if self.follow && self.json_seen.get(&path) == Some(&size) {
                        Ok(Chunk::default())
                    } else {
                        let r = read_json(&path, start, self.batch_size, !self.follow);
                        if r.as_ref().is_ok_and(|r| r.at_end) {
                            self.json_seen.insert(path.clone(), size);
                        }
                        r
                    }
                }
            }
            .map_err(err)?;
            if read.records.is_empty() && read.rejects.is_empty() {
                if !self.follow && read.at_end {
                    self.done.insert(path, true);
                }
                continue;
            }
            return Ok(Some(SourceBatch {
                records: read.records,
                rejects: read.rejects,
                position: Some(Position {
                    stream,
                    start,
                    end: read.end,
                }),
            }));
        }
        Ok(None)
    }
}

impl Source for FileSource {
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<SourceBatch>, SourceError>> {
        Box::pin(async move {
            loop {
                if let Some(batch) = tokio::task::block_in_place(|| self.poll_files())? {
                    return Ok(Some(batch));
                }
                if !self.follow {
                    return Ok(None);
                }
                tokio::time::sleep(POLL).await;
            }
        })
    }

    fn ack(&mut self, batch: &SourceBatch) -> BoxFuture<'_, Result<(), SourceError>> {
        if let Some(p) = &batch.position {
            self.positions.insert(p.stream.clone(), p.end);
        }
        Box::pin(async { Ok(()) })
    }
}

#[derive(Debug, Default)]
struct Chunk {
    records: Vec<String>,
    rejects: Vec<Reject>,
    /// The position after the last record returned.
    end: i64,
    /// Nothing left after `end` (for now).
    at_end: bool,
}

/// Reads up to `CHUNK` bytes from `start`; returns them and whether the file
/// ends there.
fn chunk(path: &Path, start: i64) -> Result<(Vec<u8>, bool), String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if (start as u64) > len {
        return Err(format!(
            "the file is shorter ({len} bytes) than the stored position {start}: it was truncated or replaced; reset with `weavster run --from-start`"
        ));
    }
    f.seek(SeekFrom::Start(start as u64))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(CHUNK.min((len - start as u64) as usize));
    f.take(CHUNK as u64)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    let at_end = start as u64 + buf.len() as u64 >= len;
    Ok((buf, at_end))
}

/// JSON lines from byte `start`. A last line without a newline is taken only
/// when `final_` (the file is complete).
fn read_jsonl(path: &Path, start: i64, max: usize, final_: bool) -> Result<Chunk, String> {
    let (buf, eof) = chunk(path, start)?;
    let mut out = Chunk {
        end: start,
        ..Chunk::default()
    };
    let mut pos = 0usize;
    while pos < buf.len() && out.records.len() < max {
        let (line, next) = match buf[pos..].iter().position(|b| *b == b'\n') {
            Some(n) => (&buf[pos..pos + n], pos + n + 1),
            None if eof && final_ => (&buf[pos..], buf.len()),
            None => break,
        };
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if !text.is_empty() {
            out.records.push(text.to_string());
        }
        pos = next;
    }
    out.end = start + pos as i64;
    out.at_end = eof && pos == buf.len();
    Ok(out)
}

/// A CSV row as a JSON object of strings, keyed by the header.
fn csv_record(header: &csv::StringRecord, row: &csv::StringRecord) -> String {
    let obj: Map<String, Value> = header
        .iter()
        .zip(row.iter())
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    Value::Object(obj).to_string()
}

/// The header of a CSV file and the byte offset after it.
fn csv_header(path: &Path, delimiter: u8) -> Result<Option<(csv::StringRecord, i64)>, String> {
    let f = File::open(path).map_err(|e| e.to_string())?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .from_reader(f);
    let mut header = csv::StringRecord::new();
    match rdr.read_record(&mut header) {
        Ok(true) => Ok(Some((header, rdr.position().byte() as i64))),
        Ok(false) => Ok(None),
        Err(e) => Err(format!("bad CSV header: {e}")),
    }
}

/// CSV rows as JSON objects of strings, from byte `start` (0: after the
/// header). Only complete lines unless `final_`.
fn read_csv(
    path: &Path,
    start: i64,
    max: usize,
    final_: bool,
    delimiter: u8,
) -> Result<Chunk, String> {
    let Some((header, header_end)) = csv_header(path, delimiter)? else {
        return Ok(Chunk {
            end: start,
            at_end: true,
            ..Chunk::default()
        });
    };
    let start = start.max(header_end);
    let (mut buf, eof) = chunk(path, start)?;
    if !(eof && final_) {
        // Only whole lines: a row being written is read next time.
        let keep = buf.iter().rposition(|b| *b == b'\n').map_or(0, |n| n + 1);
        buf.truncate(keep);
    }
    let complete = buf.len();
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(&buf[..]);
    let mut out = Chunk {
        end: start,
        ..Chunk::default()
    };
    let mut row = csv::StringRecord::new();
    while out.records.len() + out.rejects.len() < max {
        match rdr.read_record(&mut row) {
            Ok(false) => break,
            Ok(true) => {
                if row.len() == 1 && row.get(0) == Some("") {
                    // A blank line.
                } else if row.len() != header.len() {
                    out.rejects.push(Reject {
                        record: row.iter().collect::<Vec<_>>().join(","),
                        message: format!(
                            "CSV row {} has {} fields, the header has {}",
                            row.position().map_or(0, |p| p.line()),
                            row.len(),
                            header.len()
                        ),
                    });
                } else {
                    out.records.push(csv_record(&header, &row));
                }
            }
            Err(e) => {
                out.rejects.push(Reject {
                    record: String::new(),
                    message: format!("bad CSV: {e}"),
                });
                break;
            }
        }
        out.end = start + rdr.position().byte() as i64;
    }
    out.at_end = eof && (out.end - start) as usize >= complete;
    Ok(out)
}

/// Elements of a JSON array from index `start`. A file that does not parse
/// is an error when `final_`, else (being written) read later.
fn read_json(path: &Path, start: i64, max: usize, final_: bool) -> Result<Chunk, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let items: Vec<Value> = match serde_json::from_slice(&text) {
        Ok(Value::Array(items)) => items,
        Ok(_) => return Err("a json input must be one JSON array of records".into()),
        Err(_) if !final_ => {
            return Ok(Chunk {
                end: start,
                ..Chunk::default()
            });
        }
        Err(e) => return Err(format!("invalid JSON: {e}")),
    };
    let from = (start.max(0) as usize).min(items.len());
    let to = (from + max).min(items.len());
    Ok(Chunk {
        records: items[from..to].iter().map(Value::to_string).collect(),
        rejects: Vec::new(),
        end: to as i64,
        at_end: to == items.len(),
    })
}

/// Standard input: JSON lines (or CSV with a header line). Batches are cut
/// at `batch_size` records or `linger` after their first record.
pub struct StdinSource {
    rx: tokio::sync::mpsc::Receiver<Result<String, String>>,
    batch_size: usize,
    linger: Duration,
    format: Format,
    header: Option<csv::StringRecord>,
    ended: bool,
}

impl StdinSource {
    pub fn new(format: Format, batch_size: usize, linger: Duration) -> StdinSource {
        let (tx, rx) = tokio::sync::mpsc::channel(batch_size.max(1) * 4);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) => {
                        if tx.send(Ok(l)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string())).await;
                        return;
                    }
                }
            }
        });
        StdinSource {
            rx,
            batch_size: batch_size.max(1),
            linger,
            format,
            header: None,
            ended: false,
        }
    }

    fn take(&mut self, line: String, batch: &mut SourceBatch) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        match self.format {
            Format::Jsonl | Format::Json => batch.records.push(line.to_string()),
            Format::Csv => {
                let mut rdr = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .from_reader(line.as_bytes());
                let row = rdr.records().next();
                match (row, &self.header) {
                    (Some(Ok(row)), None) => self.header = Some(row),
                    (Some(Ok(row)), Some(h)) if row.len() == h.len() => {
                        batch.records.push(csv_record(h, &row));
                    }
                    (Some(Ok(row)), Some(h)) => batch.rejects.push(Reject {
                        record: line.to_string(),
                        message: format!(
                            "CSV row has {} fields, the header has {}",
                            row.len(),
                            h.len()
                        ),
                    }),
                    (Some(Err(e)), _) => batch.rejects.push(Reject {
                        record: line.to_string(),
                        message: format!("bad CSV: {e}"),
                    }),
                    (None, _) => {}
                }
            }
        }
    }
}

impl Source for StdinSource {
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<SourceBatch>, SourceError>> {
        Box::pin(async move {
            if self.ended {
                return Ok(None);
            }
            let mut batch = SourceBatch::default();
            // A JSON array arrives whole: collect all of standard input.
            if self.format == Format::Json {
                let mut text = String::new();
                while let Some(line) = self.rx.recv().await {
                    text.push_str(&line.map_err(SourceError::Stdin)?);
                    text.push('\n');
                }
                self.ended = true;
                let items: Vec<Value> = serde_json::from_str(&text)
                    .map_err(|e| SourceError::Stdin(format!("invalid JSON array: {e}")))?;
                batch.records = items.iter().map(Value::to_string).collect();
                return Ok(Some(batch));
            }
            let mut deadline = None;
            while batch.records.len() + batch.rejects.len() < self.batch_size {
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
                        self.take(line.map_err(SourceError::Stdin)?, &mut batch);
                        if deadline.is_none() && !batch.records.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check_jsonl(content: &str, start: i64, max: usize, final_: bool, want: &[&str], end: i64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("in.jsonl");
        std::fs::write(&p, content).expect("write");
        let r = read_jsonl(&p, start, max, final_).expect("read");
        assert_eq!(r.records, want);
        assert_eq!(r.end, end);
    }

    #[test]
    fn jsonl_positions() {
        check_jsonl(
            "{\"a\":1}\n\n{\"a\":2}\n",
            0,
            10,
            false,
            &["{\"a\":1}", "{\"a\":2}"],
            17,
        );
        check_jsonl("{\"a\":1}\n{\"a\":2}\n", 8, 10, false, &["{\"a\":2}"], 16);
        check_jsonl("{\"a\":1}\n{\"a\":2}\n", 0, 1, false, &["{\"a\":1}"], 8);
        // A line still being written is left for later, unless final.
        check_jsonl("{\"a\":1}\n{\"a\"", 0, 10, false, &["{\"a\":1}"], 8);
        check_jsonl(
            "{\"a\":1}\n{\"a\":2}",
            0,
            10,
            true,
            &["{\"a\":1}", "{\"a\":2}"],
            15,
        );
    }

    #[test]
    fn csv_rows_and_rejects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("in.csv");
        std::fs::write(&p, "id,name\n1,\"a, b\"\n2\n3,c\n").expect("write");
        let r = read_csv(&p, 0, 10, true, b',').expect("read");
        assert_eq!(
            r.records,
            [r#"{"id":"1","name":"a, b"}"#, r#"{"id":"3","name":"c"}"#]
        );
        assert_eq!(r.rejects.len(), 1);
        assert!(r.rejects[0].message.contains("1 fields, the header has 2"));
        assert_eq!(r.end, 23);
        // Resuming after the first row.
        let r = read_csv(&p, 17, 10, true, b',').expect("read");
        assert_eq!(r.records, [r#"{"id":"3","name":"c"}"#]);
    }

    #[test]
    fn json_array_by_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("in.json");
        std::fs::write(&p, "[{\"a\": 1},\n {\"a\": 2}, {\"a\": 3}]").expect("write");
        let r = read_json(&p, 1, 1, true).expect("read");
        assert_eq!(r.records, [r#"{"a":2}"#]);
        assert_eq!(r.end, 2);
        assert!(!r.at_end);
    }

    #[test]
    fn truncated_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("in.jsonl");
        std::fs::write(&p, "{}\n").expect("write");
        let e = read_jsonl(&p, 100, 10, true).expect_err("shorter than position");
        assert!(e.contains("--from-start"), "{e}");
    }
}
