//! Writing one file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use futures::future::BoxFuture;

use crate::sink::{Refused, Sink, SinkError, encode};
use crate::{Format, WriteMode};

struct FileState {
    file: File,
    columns: Vec<String>,
    /// `mode: overwrite` and nothing written by this run yet: the file is
    /// emptied just before the run's first write, never sooner (a run that
    /// fails to start, or finds nothing new to read, leaves it as it was).
    truncate: bool,
}

/// A file: jsonl and csv are appended to; a json file is kept a valid JSON
/// array after every batch (its closing bracket is rewritten). Written with
/// `write(2)` before the batch is acknowledged (a killed process loses
/// nothing written; the OS decides when it reaches the disk).
pub struct FileSink {
    path: PathBuf,
    display: String,
    format: Format,
    delimiter: u8,
    state: Mutex<FileState>,
}

/// A line file whose last line has no line break was cut mid-append by a
/// killed process (a `write(2)` of a batch stops at a page boundary when
/// the process is killed): that batch was not marked written and will be
/// written again whole, so its fragment is removed. Appenders hold an
/// exclusive lock while they write and call this first, so a live
/// process's append is never taken for a torn one, and a fragment is cut
/// before anything is appended after it (it would otherwise spoil the
/// next process's first record).
fn cut_torn_tail(file: &File, name: &str) -> std::io::Result<()> {
    file.lock()?;
    let result = cut_torn_tail_locked(file, name);
    file.unlock()?;
    result
}

/// [`cut_torn_tail`], the lock already held.
fn cut_torn_tail_locked(file: &File, name: &str) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut f = file;
    let mut at = len;
    let mut buf = vec![0u8; 64 * 1024];
    // The last byte first: the common case reads one.
    let mut last = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1))?;
    f.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    while at > 0 {
        let start = at.saturating_sub(buf.len() as u64);
        let n = (at - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            let cut = len - (start + i as u64 + 1);
            tracing::warn!(output = %name, "cutting a torn last line ({cut} bytes) left by a killed writer");
            return file.set_len(start + i as u64 + 1);
        }
        at = start;
    }
    tracing::warn!(output = %name, "cutting a torn last line ({len} bytes) left by a killed writer");
    file.set_len(0)
}

impl FileSink {
    /// Opens (creating parent dirs); `Overwrite` empties the file at the
    /// first write.
    pub fn open(
        path: PathBuf,
        display: String,
        format: Format,
        mode: WriteMode,
        delimiter: u8,
    ) -> Result<FileSink, SinkError> {
        let err = |e: std::io::Error| SinkError::File {
            path: display.clone(),
            message: e.to_string(),
        };
        if let Some(parent) = path.parent() {
            // A file where a directory must be: say which.
            let blocking = parent
                .ancestors()
                .find(|a| a.exists())
                .filter(|a| !a.is_dir());
            if let Some(file) = blocking {
                return Err(SinkError::File {
                    path: display.clone(),
                    message: format!(
                        "cannot create its directory: {} is a file, not a directory",
                        file.display()
                    ),
                });
            }
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        // jsonl and csv are opened for appending (O_APPEND): each batch is
        // one write, so several processes can share the file. A json array
        // is rewritten at its end: one writer only.
        let mut options = OpenOptions::new();
        options.create(true).read(true);
        if format == Format::Json {
            options.write(true);
        } else {
            options.append(true);
        }
        let file = options.open(&path).map_err(err)?;
        let truncate = mode == WriteMode::Overwrite;
        if !truncate && format != Format::Json {
            cut_torn_tail(&file, &display).map_err(err)?;
        }
        let mut columns = Vec::new();
        if format == Format::Csv && !truncate {
            // Appending to a CSV file keeps its header: its first line
            // (read from the start: cutting a torn tail moved to the end).
            let mut text = String::new();
            let mut f = &file;
            f.seek(SeekFrom::Start(0)).map_err(err)?;
            std::io::BufRead::read_line(&mut std::io::BufReader::new(f), &mut text).map_err(err)?;
            if let Some(first) = text.lines().next() {
                let mut rdr = csv::ReaderBuilder::new()
                    .delimiter(delimiter)
                    .has_headers(false)
                    .from_reader(first.as_bytes());
                if let Some(Ok(h)) = rdr.records().next() {
                    columns = h.iter().map(str::to_string).collect();
                }
            }
        }
        Ok(FileSink {
            path,
            display,
            format,
            delimiter,
            state: Mutex::new(FileState {
                file,
                columns,
                truncate,
            }),
        })
    }

    /// Writes one batch's bytes. A write that fails (a full disk, a file
    /// size limit, an I/O error) is undone before the error is returned:
    /// the file is cut back to what it held before, so a batch that is
    /// retried or dead-lettered is never also partly in the file.
    fn write_locked(
        guard: &mut FileState,
        format: Format,
        display: &str,
        bytes: &[u8],
    ) -> Result<(), std::io::Error> {
        let file = &mut guard.file;
        if format != Format::Json {
            // Exclusive among appenders (of every process): none is
            // mid-write, so a line without its line break is torn, and the
            // length seen here is where this batch starts.
            file.lock()?;
            let written = cut_torn_tail_locked(file, display).and_then(|()| {
                let before = file.metadata()?.len();
                file.write_all(bytes).or_else(|e| {
                    undo(file, before, &[], display)?;
                    Err(e)
                })
            });
            file.unlock()?;
            return written;
        }
        let len = file.seek(SeekFrom::End(0))?;
        // JSON array: `[\n` rec `,\n` rec `\n]\n`.
        let body: Vec<&[u8]> = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let mut text = Vec::with_capacity(bytes.len() + 8);
        // Where the new text starts, and the bytes from there to the old
        // end (put back if the write fails).
        let (from, tail): (u64, Vec<u8>);
        if len < 2 {
            file.set_len(0)?;
            (from, tail) = (0, Vec::new());
            text.extend_from_slice(b"[\n");
        } else {
            // Overwrite the closing `\n]\n` (or `]\n` of an empty array).
            let mut last = [0u8; 3];
            let at = len.saturating_sub(3);
            file.seek(SeekFrom::Start(at))?;
            file.read_exact(&mut last[..(len - at) as usize])?;
            let last = &last[..(len - at) as usize];
            if last.ends_with(b"[]\n") || last == b"[]" {
                let cut = if last.ends_with(b"\n") { 2 } else { 1 };
                from = len - cut;
                text.extend_from_slice(b"\n");
            } else if last.ends_with(b"\n]\n") {
                from = len - 3;
                text.extend_from_slice(b",\n");
            } else {
                return Err(std::io::Error::other(
                    "the file does not end a JSON array written by weavster (expected `]` at its end)",
                ));
            }
            tail = last[last.len() - (len - from) as usize..].to_vec();
        }
        for (i, rec) in body.iter().enumerate() {
            if i > 0 {
                text.extend_from_slice(b",\n");
            }
            text.extend_from_slice(rec);
        }
        text.extend_from_slice(b"\n]\n");
        file.seek(SeekFrom::Start(from))?;
        file.write_all(&text).or_else(|e| {
            undo(file, from, &tail, display)?;
            Err(e)
        })
    }
}

/// Cuts `file` back to `len` bytes and appends `tail` (a JSON array's
/// closing bytes): the state before a failed write. Cutting frees what the
/// failed write took, so putting a few bytes back fits where it fitted.
fn undo(file: &mut File, len: u64, tail: &[u8], name: &str) -> std::io::Result<()> {
    file.set_len(len)?;
    if !tail.is_empty() {
        file.seek(SeekFrom::Start(len))?;
        file.write_all(tail)?;
    }
    tracing::warn!(output = %name, "a write failed: the file is cut back to its {len} bytes before the batch");
    Ok(())
}

impl Sink for FileSink {
    fn write<'a>(
        &'a self,
        _job: &'a str,
        records: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Refused, SinkError>> {
        Box::pin(async move {
            let err = |message: String| SinkError::File {
                path: format!("{} ({})", self.display, self.path.display()),
                message,
            };
            // Encoding and writing under one lock: a CSV header set by one
            // batch is written before any other batch's rows.
            tokio::task::block_in_place(|| {
                let mut guard = self
                    .state
                    .lock()
                    .map_err(|_| err("a writer panicked".into()))?;
                let mut bytes = Vec::new();
                let columns = guard.columns.clone();
                let refused = encode(
                    self.format,
                    records,
                    self.delimiter,
                    &mut guard.columns,
                    &mut bytes,
                );
                if !bytes.is_empty() && guard.truncate {
                    // Once per file and process: outputs of several flows
                    // into one file empty it once, before the first write.
                    static EMPTIED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
                    let mut emptied = EMPTIED
                        .lock()
                        .map_err(|_| err("a writer panicked".into()))?;
                    if !emptied.contains(&self.path) {
                        guard.file.set_len(0).map_err(|e| {
                            err(format!("cannot empty it (`mode: overwrite`): {e}"))
                        })?;
                        emptied.push(self.path.clone());
                    }
                    guard.truncate = false;
                }
                if !bytes.is_empty()
                    && let Err(e) =
                        Self::write_locked(&mut guard, self.format, &self.display, &bytes)
                {
                    // The header this batch chose was not written either.
                    guard.columns = columns;
                    return Err(err(e.to_string()));
                }
                Ok(refused)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn check(format: Format, batches: &[&[&str]], want: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("out");
        let sink =
            FileSink::open(p.clone(), "out".into(), format, WriteMode::Append, b',').expect("open");
        for b in batches {
            sink.write("j", b).await.expect("write");
        }
        assert_eq!(std::fs::read_to_string(&p).expect("read"), want);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn file_formats() {
        check(
            Format::Jsonl,
            &[&["{\"a\":1}"], &["{\"a\":2}"]],
            "{\"a\":1}\n{\"a\":2}\n",
        )
        .await;
        check(
            Format::Json,
            &[&["{\"a\":1}", "{\"a\":2}"], &["{\"a\":3}"]],
            "[\n{\"a\":1},\n{\"a\":2},\n{\"a\":3}\n]\n",
        )
        .await;
        check(
            Format::Csv,
            &[&["{\"a\":1,\"b\":\"x,y\"}"], &["{\"b\":null,\"a\":[1]}"]],
            "a,b\n1,\"x,y\"\n[1],\n",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn csv_refuses_unknown_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::open(
            dir.path().join("o.csv"),
            "o.csv".into(),
            Format::Csv,
            WriteMode::Append,
            b',',
        )
        .expect("open");
        let refused = sink
            .write("j", &["{\"a\":1}", "{\"a\":2,\"z\":3}"])
            .await
            .expect("write");
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, 1);
        assert!(refused[0].1.contains("`z`"), "{}", refused[0].1);
    }

    /// `mode: overwrite` empties the file at the run's first write, not
    /// when it is opened: a run that writes nothing leaves it as it was.
    #[tokio::test(flavor = "multi_thread")]
    async fn overwrite_empties_the_file_at_the_first_write_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("o.jsonl");
        std::fs::write(&p, "{\"old\":1}\n").expect("write");
        let open = || {
            FileSink::open(
                p.clone(),
                "o.jsonl".into(),
                Format::Jsonl,
                WriteMode::Overwrite,
                b',',
            )
            .expect("open")
        };
        drop(open());
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "{\"old\":1}\n");
        let sink = open();
        sink.write("j", &["{\"a\":1}"]).await.expect("write");
        sink.write("j", &["{\"a\":2}"]).await.expect("write");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "{\"a\":1}\n{\"a\":2}\n"
        );
    }

    /// A CSV file appended to by a later run (a new sink) keeps its one
    /// header and its columns.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_reopened_csv_file_keeps_its_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("o.csv");
        for batch in [["{\"a\":1,\"b\":2}"], ["{\"b\":4,\"a\":3}"]] {
            let sink = FileSink::open(
                p.clone(),
                "o.csv".into(),
                Format::Csv,
                WriteMode::Append,
                b',',
            )
            .expect("open");
            let refused = sink.write("j", &batch).await.expect("write");
            assert!(refused.is_empty(), "{refused:?}");
        }
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "a,b\n1,2\n3,4\n"
        );
    }

    /// Another process killed mid-append after this sink opened the file:
    /// its fragment is cut before the next append, never glued to it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_torn_tail_left_after_open_is_cut_before_appending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("o.jsonl");
        let sink = FileSink::open(
            p.clone(),
            "o.jsonl".into(),
            Format::Jsonl,
            WriteMode::Append,
            b',',
        )
        .expect("open");
        sink.write("j", &["{\"a\":1}"]).await.expect("write");
        let mut other = OpenOptions::new().append(true).open(&p).expect("open");
        other.write_all(b"{\"a\":2}\n{\"a\":").expect("torn write");
        sink.write("j", &["{\"a\":3}"]).await.expect("write");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"
        );
    }
}
