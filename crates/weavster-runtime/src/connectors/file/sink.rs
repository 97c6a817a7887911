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
/// killed process: that batch was not marked written and will be written
/// again whole, so its fragment is removed. Under an exclusive lock:
/// appenders hold a shared one while they write, so a live process's
/// append is never taken for a torn one.
fn cut_torn_tail(file: &File) -> std::io::Result<()> {
    file.lock()?;
    let result = (|| {
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(());
        }
        let mut f = file;
        let mut at = len;
        let mut buf = vec![0u8; 64 * 1024];
        while at > 0 {
            let start = at.saturating_sub(buf.len() as u64);
            let n = (at - start) as usize;
            f.seek(SeekFrom::Start(start))?;
            f.read_exact(&mut buf[..n])?;
            if at == len && buf[n - 1] == b'\n' {
                return Ok(());
            }
            if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
                return file.set_len(start + i as u64 + 1);
            }
            at = start;
        }
        file.set_len(0)
    })();
    file.unlock()?;
    result
}

impl FileSink {
    /// Opens (creating parent dirs); `Overwrite` truncates now.
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
        if mode == WriteMode::Overwrite {
            file.set_len(0).map_err(err)?;
        } else if format != Format::Json {
            cut_torn_tail(&file).map_err(err)?;
        }
        let mut columns = Vec::new();
        if format == Format::Csv {
            // Appending to a CSV file keeps its header.
            let mut text = String::new();
            let mut f = &file;
            f.read_to_string(&mut text).map_err(err)?;
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
            state: Mutex::new(FileState { file, columns }),
        })
    }

    fn write_locked(
        guard: &mut FileState,
        format: Format,
        bytes: &[u8],
    ) -> Result<(), std::io::Error> {
        let file = &mut guard.file;
        let len = file.seek(SeekFrom::End(0))?;
        if format != Format::Json {
            // Shared with other appenders; `open` waits for none to be
            // mid-write before cutting a torn tail.
            file.lock_shared()?;
            let written = file.write_all(bytes);
            file.unlock()?;
            return written;
        }
        // JSON array: `[\n` rec `,\n` rec `\n]\n`.
        let body: Vec<&[u8]> = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let mut text = Vec::with_capacity(bytes.len() + 8);
        if len < 2 {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            text.extend_from_slice(b"[\n");
        } else {
            // Overwrite the closing `\n]\n` (or `]\n` of an empty array).
            let mut tail = [0u8; 3];
            let at = len.saturating_sub(3);
            file.seek(SeekFrom::Start(at))?;
            file.read_exact(&mut tail[..(len - at) as usize])?;
            let tail = &tail[..(len - at) as usize];
            if tail.ends_with(b"[]\n") || tail == b"[]" {
                let cut = if tail.ends_with(b"\n") { 2 } else { 1 };
                file.seek(SeekFrom::Start(len - cut))?;
                text.extend_from_slice(b"\n");
            } else if tail.ends_with(b"\n]\n") {
                file.seek(SeekFrom::Start(len - 3))?;
                text.extend_from_slice(b",\n");
            } else {
                return Err(std::io::Error::other(
                    "the file does not end a JSON array written by weavster (expected `]` at its end)",
                ));
            }
        }
        for (i, rec) in body.iter().enumerate() {
            if i > 0 {
                text.extend_from_slice(b",\n");
            }
            text.extend_from_slice(rec);
        }
        text.extend_from_slice(b"\n]\n");
        file.write_all(&text)
    }
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
                let refused = encode(
                    self.format,
                    records,
                    self.delimiter,
                    &mut guard.columns,
                    &mut bytes,
                );
                if !bytes.is_empty() {
                    Self::write_locked(&mut guard, self.format, &bytes)
                        .map_err(|e| err(e.to_string()))?;
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
}
