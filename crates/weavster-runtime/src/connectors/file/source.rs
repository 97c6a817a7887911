//! Reading files: every file matching a glob, in name order, by byte
//! windows from the stored byte positions (jsonl, csv with a header, json
//! arrays streamed element by element). Every byte of an input ends up in
//! exactly one record or reject: an over-long record, a CSV row with the
//! wrong number of fields or a JSON file that ends inside a record (stage
//! `input`), invalid UTF-8 or JSON (`decode`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read as _, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::Format;
use crate::dead_letter::Stage;
use crate::queue::FileRange;
use crate::source::{
    KEEP_BYTES, Limits, MAX_BATCH_BYTES, MAX_RANGE_BYTES, Position, Positions, READ_AHEAD, Reject,
    Source, SourceBatch, SourceError,
};

/// Stored positions of files are byte offsets.
fn byte_positions(positions: Positions) -> HashMap<String, i64> {
    positions
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_i64()?)))
        .collect()
}

/// The format of a file: configured, else from its extension.
pub fn format_of(path: &Path, configured: Option<Format>) -> Option<Format> {
    configured.or_else(|| {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase()
            .as_str()
        {
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    })
}

/// Whether a path pattern has glob syntax (else it names one file).
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// How often a following file source looks for new data.
const POLL: Duration = Duration::from_millis(200);

/// Files matching a glob, read in name order from their stored byte
/// positions. Follows appended data unless `once`.
pub struct FileSource {
    pattern: String,
    /// The path as the user wrote it.
    display: String,
    format: Option<Format>,
    delimiter: u8,
    follow: bool,
    limits: Limits,
    root: PathBuf,
    positions: HashMap<String, i64>,
    /// Files known, by path; `true` once finished (`once` mode).
    done: BTreeMap<PathBuf, bool>,
    /// A missing file or empty glob was reported (reported once).
    warned_missing: bool,
}

impl FileSource {
    /// `positions`: the stored positions by stream (a file's path relative
    /// to `root`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pattern: String,
        display: String,
        root: PathBuf,
        format: Option<Format>,
        delimiter: u8,
        follow: bool,
        limits: Limits,
        positions: Positions,
    ) -> FileSource {
        let positions = byte_positions(positions);
        FileSource {
            pattern,
            display,
            format,
            delimiter,
            follow,
            limits,
            root,
            positions,
            done: BTreeMap::new(),
            warned_missing: false,
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
            path: self.display.clone(),
            message: format!("bad glob: {e}"),
        })?;
        for p in paths.flatten() {
            if p.is_file() {
                self.done.entry(p).or_insert(false);
            }
        }
        if self.done.is_empty() {
            if !is_glob(&self.display) {
                let message = "no such file".to_string();
                if !self.follow {
                    return Err(SourceError::File {
                        path: self.display.clone(),
                        message,
                    });
                }
                if !self.warned_missing {
                    tracing::warn!(input = %self.display, "no such file yet; waiting for it");
                }
            } else if !self.warned_missing {
                tracing::warn!(input = %self.display, "the pattern matches no file");
            }
            self.warned_missing = true;
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
            let read = Reader {
                path: &path,
                stream: &stream,
                start,
                limits: self.limits,
                final_: !self.follow,
                ranges: true,
            };
            let chunk = match format {
                Format::Jsonl => read.jsonl(),
                Format::Csv => read.csv(self.delimiter),
                Format::Json => read.json(),
            }
            .map_err(|message| SourceError::File {
                path: stream.clone(),
                message,
            })?;
            if chunk.records.is_empty()
                && chunk.rejects.is_empty()
                && chunk.range.is_none()
                && chunk.end == start
            {
                if !self.follow && chunk.at_end {
                    self.done.insert(path, true);
                }
                continue;
            }
            return Ok(Some(SourceBatch {
                records: chunk.records,
                rejects: chunk.rejects,
                range: chunk.range,
                position: Some(Position {
                    stream,
                    start: Some(start.into()),
                    end: chunk.end.into(),
                }),
                ..SourceBatch::default()
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
        if let Some(p) = &batch.position
            && let Some(end) = p.end.as_i64()
        {
            self.positions.insert(p.stream.clone(), end);
        }
        Box::pin(async { Ok(()) })
    }

    fn reset(&mut self, positions: Positions) -> BoxFuture<'_, ()> {
        self.positions = byte_positions(positions);
        self.done.clear();
        Box::pin(async {})
    }
}

/// What one read of a file gave.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pub(crate) records: Vec<String>,
    pub(crate) rejects: Vec<Reject>,
    /// The position after the last record or reject returned.
    pub(crate) end: i64,
    /// Nothing left after `end` (for now).
    pub(crate) at_end: bool,
    /// The records as the range they came from (`records` is then empty).
    pub(crate) range: Option<FileRange>,
}

impl Chunk {
    /// Whether the batch is full.
    fn full(&self, limits: &Limits, bytes: usize) -> bool {
        self.records.len() + self.rejects.len() >= limits.batch_size
            || bytes >= limits.max_batch_bytes
    }
}

/// What kind of unit a scan looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Up to a line feed.
    Line,
    /// Up to a line feed outside double quotes.
    CsvRow,
    /// One JSON value.
    Json,
}

/// Finds where a unit ends, fed its bytes piece by piece (for units longer
/// than any buffer). JSON: strings, escapes and bracket depth are tracked,
/// not validated.
#[derive(Debug, Clone)]
struct Scan {
    unit: Unit,
    in_str: bool,
    escape: bool,
    depth: u32,
    /// JSON: the first byte of the value was seen (and whether it is a
    /// scalar, which ends at a delimiter).
    started: bool,
    scalar: bool,
}

impl Scan {
    fn new(unit: Unit) -> Scan {
        Scan {
            unit,
            in_str: false,
            escape: false,
            depth: 0,
            started: false,
            scalar: false,
        }
    }

    /// The index in `bytes` where the unit ends (exclusive; for lines and
    /// rows, the index of their line feed), if it ends in `bytes`.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        match self.unit {
            Unit::Line => memchr::memchr(b'\n', bytes),
            Unit::CsvRow => {
                for (i, b) in bytes.iter().enumerate() {
                    match b {
                        b'"' => self.in_str = !self.in_str,
                        b'\n' if !self.in_str => return Some(i),
                        _ => {}
                    }
                }
                None
            }
            Unit::Json => {
                for (i, &b) in bytes.iter().enumerate() {
                    if !self.started {
                        if b.is_ascii_whitespace() {
                            continue;
                        }
                        self.started = true;
                        match b {
                            b'{' | b'[' => self.depth = 1,
                            b'"' => self.in_str = true,
                            _ => self.scalar = true,
                        }
                        continue;
                    }
                    if self.scalar {
                        if matches!(b, b',' | b']' | b'}') || b.is_ascii_whitespace() {
                            return Some(i);
                        }
                        continue;
                    }
                    if self.in_str {
                        if self.escape {
                            self.escape = false;
                        } else if b == b'\\' {
                            self.escape = true;
                        } else if b == b'"' {
                            self.in_str = false;
                            if self.depth == 0 {
                                return Some(i + 1);
                            }
                        }
                        continue;
                    }
                    match b {
                        b'"' => self.in_str = true,
                        b'{' | b'[' => self.depth += 1,
                        b'}' | b']' => {
                            self.depth = self.depth.saturating_sub(1);
                            if self.depth == 0 {
                                return Some(i + 1);
                            }
                        }
                        _ => {}
                    }
                }
                None
            }
        }
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// `buf[a..b]` without leading and trailing ASCII whitespace, as indices.
fn trim_span(buf: &[u8], mut a: usize, mut b: usize) -> (usize, usize) {
    while a < b && buf[a].is_ascii_whitespace() {
        a += 1;
    }
    while b > a && buf[b - 1].is_ascii_whitespace() {
        b -= 1;
    }
    (a, b)
}

/// One read of one file from a stored position.
pub(crate) struct Reader<'a> {
    pub(crate) path: &'a Path,
    pub(crate) stream: &'a str,
    pub(crate) start: i64,
    pub(crate) limits: Limits,
    /// The file is complete (`--once`): a last line without a line feed is
    /// a record, and a JSON file that ends early is an error.
    pub(crate) final_: bool,
    /// JSON lines: a chunk without rejects is returned as its file range
    /// (the job then holds the range, not the records).
    pub(crate) ranges: bool,
}

impl Reader<'_> {
    fn err(&self, e: std::io::Error) -> String {
        e.to_string()
    }

    /// Up to `len` bytes from byte `at`; and whether the file ends there.
    fn read_at(&self, at: u64, len: usize) -> Result<(Vec<u8>, bool), String> {
        let mut f = File::open(self.path).map_err(|e| self.err(e))?;
        let size = f.metadata().map_err(|e| self.err(e))?.len();
        if at > size {
            return Err(format!(
                "the file is shorter ({size} bytes) than the stored position {at}: it was truncated or replaced; reset with `weavster run --from-start`"
            ));
        }
        f.seek(SeekFrom::Start(at)).map_err(|e| self.err(e))?;
        let mut buf = Vec::with_capacity(len.min((size - at) as usize));
        f.take(len as u64)
            .read_to_end(&mut buf)
            .map_err(|e| self.err(e))?;
        let eof = at + buf.len() as u64 >= size;
        Ok((buf, eof))
    }

    /// Reads from the start position: a small read first, the whole window
    /// when no unit ends in it.
    fn read(&self, unit: Unit) -> Result<(Vec<u8>, bool), String> {
        self.read_first(unit, READ_AHEAD)
    }

    /// [`Reader::read`], reading `first` bytes (at least [`READ_AHEAD`]) at first.
    fn read_first(&self, unit: Unit, first: usize) -> Result<(Vec<u8>, bool), String> {
        let start = self.start as u64;
        let first = first.max(READ_AHEAD);
        let (buf, eof) = self.read_at(start, first)?;
        if eof || self.limits.window() <= first {
            return Ok((buf, eof));
        }
        let mut from = if start == 0 && buf.starts_with(BOM) {
            BOM.len()
        } else {
            0
        };
        if unit == Unit::Json {
            // The first element: after whitespace and `[` or `,`.
            let ws = |mut p: usize| {
                while p < buf.len() && buf[p].is_ascii_whitespace() {
                    p += 1;
                }
                p
            };
            from = ws(from);
            if from < buf.len() && matches!(buf[from], b'[' | b',') {
                from = ws(from + 1);
            }
        }
        if Scan::new(unit).feed(&buf[from.min(buf.len())..]).is_some() {
            return Ok((buf, eof));
        }
        self.read_at(start, self.limits.window())
    }

    fn at(&self, offset: usize) -> Option<String> {
        Some(format!(
            "{}@{}",
            self.stream,
            self.start as u64 + offset as u64
        ))
    }

    /// A unit starting at `offset` (of the read) too long for the window:
    /// scanned to its end through the file. `None`: it does not end yet
    /// and the file may still grow.
    fn skip_overlong(
        &self,
        offset: usize,
        unit: Unit,
        scan: Scan,
    ) -> Result<Option<(Reject, usize)>, String> {
        let from = self.start as u64 + offset as u64;
        let mut f = File::open(self.path).map_err(|e| self.err(e))?;
        f.seek(SeekFrom::Start(from)).map_err(|e| self.err(e))?;
        let mut scan = scan;
        let mut head = Vec::new();
        let mut piece = vec![0u8; 1 << 20];
        let mut len = 0usize;
        let (content_len, consumed) = loop {
            let n = f.read(&mut piece).map_err(|e| self.err(e))?;
            if n == 0 {
                if !self.final_ {
                    return Ok(None);
                }
                break (len, len);
            }
            if let Some(e) = scan.feed(&piece[..n]) {
                let take = e.min(KEEP_BYTES.saturating_sub(head.len()));
                head.extend_from_slice(&piece[..take]);
                let skip_lf = usize::from(unit != Unit::Json);
                break (len + e, len + e + skip_lf);
            }
            let take = n.min(KEEP_BYTES.saturating_sub(head.len()));
            head.extend_from_slice(&piece[..take]);
            len += n;
        };
        let kept = if head.len() < content_len {
            format!("; the dead letter keeps its first {} bytes", head.len())
        } else {
            String::new()
        };
        let reject = Reject {
            record: head,
            stage: Stage::Input,
            message: format!(
                "record of {content_len} bytes is longer than max_record_bytes ({}){kept}",
                self.limits.max_record_bytes
            ),
            at: self.at(offset),
        };
        Ok(Some((reject, offset + consumed)))
    }

    fn over_long(&self, record: &[u8], offset: usize) -> Reject {
        let keep = &record[..record.len().min(KEEP_BYTES)];
        Reject {
            record: keep.to_vec(),
            stage: Stage::Input,
            message: format!(
                "record of {} bytes is longer than max_record_bytes ({})",
                record.len(),
                self.limits.max_record_bytes
            ),
            at: self.at(offset),
        }
    }

    fn not_utf8(&self, record: &[u8], offset: usize, e: std::str::Utf8Error) -> Reject {
        Reject {
            record: record.to_vec(),
            stage: Stage::Decode,
            message: format!("not valid UTF-8 (byte {} of the record)", e.valid_up_to()),
            at: self.at(offset),
        }
    }

    /// JSON lines: one record per line, blank lines skipped. A chunk that
    /// becomes a range is cut at `max_range_bytes`; one with rejects, queued
    /// as its records, at `max_batch_bytes` (read again to that cut).
    pub(crate) fn jsonl(&self) -> Result<Chunk, String> {
        let (range, payload) = (self.limits.max_range_bytes, self.limits.max_batch_bytes);
        if self.ranges && range > payload {
            let chunk = self.jsonl_upto(range)?;
            if chunk.rejects.is_empty() {
                return Ok(chunk);
            }
        }
        self.jsonl_upto(payload)
    }

    /// [`Reader::jsonl`], cutting the batch once its records hold `cut` bytes.
    fn jsonl_upto(&self, cut: usize) -> Result<Chunk, String> {
        let (buf, eof) = self.read_first(Unit::Line, cut.min(MAX_RANGE_BYTES))?;
        let mut out = Chunk::default();
        let mut pos = if self.start == 0 && buf.starts_with(BOM) {
            BOM.len()
        } else {
            0
        };
        // The records, as spans of `buf` (copied once the chunk is known
        // to have no rejects, or not at all when it becomes a range).
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut bytes = 0usize;
        let max = self.limits.max_record_bytes;
        let full = |spans: &Vec<(usize, usize)>, rejects: usize, bytes: usize| {
            spans.len() + rejects >= self.limits.batch_size || bytes >= cut
        };
        while pos < buf.len() && !full(&spans, out.rejects.len(), bytes) {
            let (end, next) = match memchr::memchr(b'\n', &buf[pos..]) {
                Some(n) => (pos + n, pos + n + 1),
                None if buf.len() - pos > max => {
                    // Longer than a record may be, and not ended in the window.
                    if let Some((reject, next)) =
                        self.skip_overlong(pos, Unit::Line, Scan::new(Unit::Line))?
                    {
                        out.rejects.push(reject);
                        pos = next;
                    }
                    break;
                }
                None if eof && self.final_ => (buf.len(), buf.len()),
                None => break,
            };
            let (a, b) = trim_span(&buf, pos, end);
            let text = &buf[a..b];
            if text.len() > max {
                out.rejects.push(self.over_long(text, pos));
            } else if !text.is_empty() {
                match std::str::from_utf8(text) {
                    Ok(_) => {
                        bytes += text.len();
                        spans.push((a, b));
                    }
                    Err(e) => out.rejects.push(self.not_utf8(text, pos, e)),
                }
            }
            pos = next;
        }
        out.end = self.start + pos as i64;
        out.at_end = eof && pos >= buf.len();
        if self.ranges && out.rejects.is_empty() && !spans.is_empty() {
            out.range = Some(FileRange {
                file: self.stream.to_string(),
                start: self.start as u64,
                end: out.end as u64,
                records: spans.len() as u32,
                xxh3: xxhash_rust::xxh3::xxh3_64(&buf[..pos]),
            });
        } else {
            out.records = spans
                .iter()
                .map(|&(a, b)| String::from_utf8_lossy(&buf[a..b]).into_owned())
                .collect();
        }
        Ok(out)
    }

    /// CSV with a header row: each row a JSON object of strings.
    fn csv(&self, delimiter: u8) -> Result<Chunk, String> {
        let header = csv_header(self.path, delimiter)?;
        let Some((header, header_end)) = header else {
            return Ok(Chunk {
                end: self.start,
                at_end: true,
                ..Chunk::default()
            });
        };
        // Positions of CSV files start after the header.
        let reader = Reader {
            start: self.start.max(header_end),
            ..*self
        };
        let mut out = reader.csv_rows(delimiter, &header)?;
        if out.end < self.start.max(header_end) {
            out.end = self.start.max(header_end);
        }
        Ok(out)
    }

    fn csv_rows(&self, delimiter: u8, header: &CsvHeader) -> Result<Chunk, String> {
        let (buf, eof) = self.read(Unit::CsvRow)?;
        let max = self.limits.max_record_bytes;
        // Rows that end in the buffer (a row being written is read later).
        let mut rows: Vec<(usize, usize)> = Vec::new();
        let mut pos = 0usize;
        let mut bytes = 0usize;
        let mut overlong: Option<(Reject, usize)> = None;
        while pos < buf.len() && rows.len() < self.limits.batch_size && bytes < MAX_BATCH_BYTES {
            let mut scan = Scan::new(Unit::CsvRow);
            match scan.feed(&buf[pos..]) {
                Some(n) if n > max => {
                    if rows.is_empty() {
                        overlong = Some((self.over_long(&buf[pos..pos + n], pos), pos + n + 1));
                    }
                    break;
                }
                Some(n) => {
                    rows.push((pos, pos + n));
                    bytes += n;
                    pos += n + 1;
                }
                None if buf.len() - pos > max => {
                    if rows.is_empty() {
                        overlong =
                            self.skip_overlong(pos, Unit::CsvRow, Scan::new(Unit::CsvRow))?;
                    }
                    break;
                }
                None if eof && self.final_ => {
                    rows.push((pos, buf.len()));
                    pos = buf.len();
                }
                None => break,
            }
        }
        let mut out = Chunk::default();
        if let Some((reject, next)) = overlong {
            out.rejects.push(reject);
            out.end = self.start + next as i64;
            return Ok(out);
        }
        let mut parser = CsvRow::new(delimiter);
        for (s, e) in rows {
            let raw = buf[s..e].strip_suffix(b"\r").unwrap_or(&buf[s..e]);
            if raw.trim_ascii().is_empty() {
                continue;
            }
            match parser
                .fields(raw)
                .and_then(|fields| csv_record(header, &fields))
            {
                Ok(r) => out.records.push(r),
                Err((stage, message)) => out.rejects.push(Reject {
                    record: raw.to_vec(),
                    stage,
                    message,
                    at: self.at(s),
                }),
            }
        }
        out.end = self.start + pos as i64;
        out.at_end = eof && pos >= buf.len();
        Ok(out)
    }

    /// A JSON array of records, element by element. The position is the
    /// byte after the last element read (or after `[`), so a writer that
    /// rewrites the closing bracket to append is followed.
    pub(crate) fn json(&self) -> Result<Chunk, String> {
        let (buf, eof) = self.read(Unit::Json)?;
        let max = self.limits.max_record_bytes;
        let mut out = Chunk {
            end: self.start,
            ..Chunk::default()
        };
        let skip_ws = |mut p: usize| {
            while p < buf.len() && buf[p].is_ascii_whitespace() {
                p += 1;
            }
            p
        };
        let mut pos;
        // What comes next: an element (just after `[` or `,`) or a separator.
        let mut want_element;
        if self.start == 0 {
            let bom = if buf.starts_with(BOM) { BOM.len() } else { 0 };
            pos = skip_ws(bom);
            if pos == buf.len() {
                // Empty (so far).
                out.at_end = eof;
                return Ok(out);
            }
            if buf[pos] != b'[' {
                return self.json_broken(
                    &buf,
                    pos,
                    eof,
                    "a json input must be one JSON array of records: expected `[`",
                    out,
                );
            }
            pos += 1;
            out.end = self.start + pos as i64;
            want_element = true;
            // `[` then `]`: an empty array.
            let p = skip_ws(pos);
            if p < buf.len() && buf[p] == b']' {
                out.at_end = true;
                return Ok(out);
            }
        } else {
            pos = 0;
            want_element = false;
            let p = skip_ws(0);
            if p < buf.len() && buf[p] != b',' && buf[p] != b']' {
                // Stored just after `[`.
                want_element = true;
            }
        }
        let mut bytes = 0usize;
        loop {
            let p = skip_ws(pos);
            if p >= buf.len() {
                if eof && self.final_ {
                    return self.json_broken(
                        &buf,
                        p,
                        eof,
                        "the file ends before the array is closed",
                        out,
                    );
                }
                return Ok(out);
            }
            if !want_element {
                match buf[p] {
                    b',' => {
                        pos = p + 1;
                        want_element = true;
                        continue;
                    }
                    b']' => {
                        // Closed: anything after it but whitespace is an error.
                        let rest = skip_ws(p + 1);
                        if rest < buf.len() {
                            return self.json_broken(
                                &buf,
                                rest,
                                eof,
                                "text after the array's closing `]`",
                                out,
                            );
                        }
                        out.at_end = eof;
                        return Ok(out);
                    }
                    _ => {
                        return self.json_broken(
                            &buf,
                            p,
                            eof,
                            "expected `,` or `]` after a record",
                            out,
                        );
                    }
                }
            }
            if out.full(&self.limits, bytes) {
                return Ok(out);
            }
            if buf[p] == b']' {
                // `[1,]` and the like.
                return self.json_broken(&buf, p, eof, "expected a record, found `]`", out);
            }
            let mut scan = Scan::new(Unit::Json);
            match scan.feed(&buf[p..]) {
                Some(n) => {
                    let elem = &buf[p..p + n];
                    if n > max {
                        out.rejects.push(self.over_long(elem, p));
                    } else {
                        match json_record(elem) {
                            Ok(r) => {
                                bytes += r.len();
                                out.records.push(r);
                            }
                            Err((stage, message)) => out.rejects.push(Reject {
                                record: elem.to_vec(),
                                stage,
                                message,
                                at: self.at(p),
                            }),
                        }
                    }
                    pos = p + n;
                    out.end = self.start + pos as i64;
                    want_element = false;
                }
                None if buf.len() - p > max => {
                    if let Some((reject, next)) =
                        self.skip_overlong(p, Unit::Json, Scan::new(Unit::Json))?
                    {
                        out.rejects.push(reject);
                        out.end = self.start + next as i64;
                    }
                    return Ok(out);
                }
                None if eof && self.final_ => {
                    return self.json_broken(&buf, p, eof, "the file ends inside a record", out);
                }
                None => return Ok(out),
            }
        }
    }

    /// The rest of a JSON file from `p` cannot be read: one dead letter
    /// (`input`) holds it, and the file is finished. While the file may
    /// still grow, nothing is decided yet.
    fn json_broken(
        &self,
        buf: &[u8],
        p: usize,
        eof: bool,
        why: &str,
        mut out: Chunk,
    ) -> Result<Chunk, String> {
        if !self.final_ {
            return Ok(out);
        }
        let from = self.start as u64 + p as u64;
        let size = std::fs::metadata(self.path).map_err(|e| self.err(e))?.len();
        let rest = if eof {
            buf[p..].to_vec()
        } else {
            self.read_at(from, KEEP_BYTES)?.0
        };
        let mut message = format!("invalid JSON array at byte {from}: {why}");
        if (rest.len() as u64) < size - from {
            message.push_str(&format!(
                "; the dead letter keeps the first {} of the {} bytes left",
                rest.len(),
                size - from
            ));
        }
        if !rest.iter().all(u8::is_ascii_whitespace) {
            out.rejects.push(Reject {
                record: rest,
                stage: Stage::Input,
                message,
                at: self.at(p),
            });
        }
        out.end = size as i64;
        out.at_end = true;
        Ok(out)
    }
}

/// A JSON array element as a one-line record: line breaks between tokens
/// become spaces (a JSON string cannot hold one), the text is otherwise
/// kept exactly.
pub(crate) fn json_record(elem: &[u8]) -> Result<String, (Stage, String)> {
    let text = std::str::from_utf8(elem).map_err(|e| {
        (
            Stage::Decode,
            format!("not valid UTF-8 (byte {} of the record)", e.valid_up_to()),
        )
    })?;
    serde_json::from_str::<&RawValue>(text)
        .map_err(|e| (Stage::Decode, format!("invalid JSON: {e}")))?;
    Ok(if text.contains(['\n', '\r']) {
        text.replace(['\n', '\r'], " ")
    } else {
        text.to_string()
    })
}

/// A CSV file's column names (`Err`: not UTF-8) and the byte after the header.
pub(crate) type CsvHeader = Result<Vec<String>, String>;

/// The column names of a header row (a byte-order mark before the first
/// is not part of it).
pub(crate) fn header_names<'a>(fields: impl Iterator<Item = &'a [u8]>) -> CsvHeader {
    fields
        .enumerate()
        .map(|(i, f)| {
            let f = if i == 0 {
                f.strip_prefix(BOM).unwrap_or(f)
            } else {
                f
            };
            std::str::from_utf8(f)
                .map(str::to_string)
                .map_err(|_| format!("the CSV header's column {} is not valid UTF-8", i + 1))
        })
        .collect()
}

/// The header of a CSV file and the byte offset after it.
fn csv_header(path: &Path, delimiter: u8) -> Result<Option<(CsvHeader, i64)>, String> {
    let f = File::open(path).map_err(|e| e.to_string())?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(f);
    let mut header = csv::ByteRecord::new();
    match rdr.read_byte_record(&mut header) {
        Ok(true) => {
            let end = rdr.position().byte() as i64;
            Ok(Some((header_names(header.iter()), end)))
        }
        Ok(false) => Ok(None),
        Err(e) => Err(format!("bad CSV header: {e}")),
    }
}

/// Parses single CSV rows (quotes, escaped quotes, a delimiter) without
/// allocating per row.
pub(crate) struct CsvRow {
    rdr: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl CsvRow {
    pub(crate) fn new(delimiter: u8) -> CsvRow {
        CsvRow {
            rdr: csv_core::ReaderBuilder::new().delimiter(delimiter).build(),
            out: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// The fields of one row (its bytes without the line feed).
    pub(crate) fn fields(&mut self, raw: &[u8]) -> Result<Vec<&[u8]>, (Stage, String)> {
        use csv_core::ReadRecordResult as R;
        self.rdr.reset();
        // Unquoting never makes a row longer; a row has at most len + 1 fields.
        self.out.resize(raw.len() + 1, 0);
        self.ends.resize(raw.len() + 2, 0);
        let (mut input, mut nout, mut nend) = (raw, 0usize, 0usize);
        loop {
            let (res, nin, o, e) =
                self.rdr
                    .read_record(input, &mut self.out[nout..], &mut self.ends[nend..]);
            // Field ends count from the start of the record, across calls.
            input = &input[nin..];
            nout += o;
            nend += e;
            match res {
                R::InputEmpty => {}
                R::Record | R::End => break,
                R::OutputFull | R::OutputEndsFull => {
                    return Err((Stage::Input, "bad CSV: the row does not parse".into()));
                }
            }
        }
        if !input.is_empty() {
            return Err((
                Stage::Input,
                "bad CSV: a line break (carriage return) inside an unquoted field".into(),
            ));
        }
        let mut fields = Vec::with_capacity(nend);
        let mut from = 0;
        for &end in &self.ends[..nend] {
            fields.push(&self.out[from..end]);
            from = end;
        }
        Ok(fields)
    }
}

/// A CSV row as a JSON object of strings, keyed by the header.
pub(crate) fn csv_record(header: &CsvHeader, row: &[&[u8]]) -> Result<String, (Stage, String)> {
    let header = header.as_ref().map_err(|e| (Stage::Decode, e.clone()))?;
    if row.len() != header.len() {
        return Err((
            Stage::Input,
            format!(
                "CSV row has {} field{}, the header has {}",
                row.len(),
                if row.len() == 1 { "" } else { "s" },
                header.len()
            ),
        ));
    }
    let mut obj = Map::with_capacity(header.len());
    for (i, (k, v)) in header.iter().zip(row.iter().copied()).enumerate() {
        let v = std::str::from_utf8(v).map_err(|_| {
            (
                Stage::Decode,
                format!("CSV field `{k}` (column {}) is not valid UTF-8", i + 1),
            )
        })?;
        obj.insert(k.clone(), Value::String(v.to_string()));
    }
    Ok(Value::Object(obj).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{RangeError, range_lines};

    fn limits(batch: usize, max_record: usize) -> Limits {
        Limits::new(batch, max_record)
    }

    /// Records, rejects (stage, bytes), end, at_end.
    type Read = (Vec<String>, Vec<(Stage, Vec<u8>)>, i64, bool);

    /// Reads `content` (as file `name`) from `start` with `limits`; returns
    /// the records, the rejects' (stage, bytes), the end and at_end.
    fn check(name: &str, content: &[u8], start: i64, limits: Limits, final_: bool) -> Read {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(name);
        std::fs::write(&p, content).expect("write");
        let r = Reader {
            path: &p,
            stream: name,
            start,
            limits,
            final_,
            ranges: false,
        };
        let c = match format_of(&p, None) {
            Some(Format::Jsonl) => r.jsonl(),
            Some(Format::Csv) => r.csv(b','),
            _ => r.json(),
        }
        .expect("read");
        if format_of(&p, None) == Some(Format::Jsonl) {
            same_as_range(dir.path(), &r, &c);
        }
        let rejects = c.rejects.into_iter().map(|r| (r.stage, r.record)).collect();
        (c.records, rejects, c.end, c.at_end)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// With range batches cut later than payload batches, reading a
        /// generated file chunk by chunk (ranges read back as the worker
        /// does) gives every record a plain read gives, in order, and every
        /// reject once; a range holds no reject and a payload chunk is cut
        /// at the payload size.
        #[test]
        fn range_and_payload_cuts_account_for_every_record(
            lines in proptest::collection::vec(any_line(), 0..60),
            batch in 1usize..50,
            payload in 1usize..200,
            more in 0usize..400,
        ) {
            let mut content: Vec<u8> = lines.join(&b'\n');
            content.push(b'\n');
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("in.jsonl");
            std::fs::write(&path, &content).expect("write");
            let limits = Limits {
                batch_size: batch,
                max_record_bytes: 30,
                max_batch_bytes: payload,
                max_range_bytes: payload + more,
            };
            let (plain, plain_rejects) = read_all("in.jsonl", &content, limits);
            let (mut records, mut rejects) = (Vec::new(), Vec::new());
            let mut start = 0i64;
            for _ in 0..10_000 {
                let c = Reader {
                    path: &path,
                    stream: "in.jsonl",
                    start,
                    limits,
                    final_: true,
                    ranges: true,
                }
                .jsonl()
                .expect("read");
                match &c.range {
                    Some(r) => {
                        proptest::prop_assert!(c.rejects.is_empty() && c.records.is_empty());
                        let text = r.read(dir.path()).expect("range reads back");
                        records.extend(range_lines(&text, r.start == 0).map(str::to_string));
                    }
                    None => {
                        let bytes: usize = c.records.iter().map(String::len).sum();
                        let last = c.records.last().map_or(0, String::len);
                        proptest::prop_assert!(bytes < payload + last.max(1), "payload chunk of {bytes} bytes");
                        records.extend(c.records.iter().cloned());
                    }
                }
                rejects.extend(c.rejects.into_iter().map(|r| (r.stage, r.record)));
                if c.end == start && c.at_end {
                    break;
                }
                start = c.end;
            }
            proptest::prop_assert_eq!(records, plain);
            proptest::prop_assert_eq!(rejects, plain_rejects);
        }
    }

    #[test]
    fn a_range_is_cut_at_range_bytes_and_a_chunk_with_rejects_at_batch_bytes() {
        // 200 lines of 50 bytes (49 without the line feed, which the cut
        // counts); payload batches cut at 1,000 bytes, ranges at 5,000.
        let line = |i: usize| format!("{{\"id\":\"{i:05}\",\"pad\":\"{}\"}}\n", "x".repeat(26));
        assert_eq!(line(0).len(), 50);
        let lines: Vec<Vec<u8>> = (0..200).map(|i| line(i).into_bytes()).collect();
        let limits = Limits {
            batch_size: 100_000,
            max_record_bytes: 1000,
            max_batch_bytes: 1000,
            max_range_bytes: 5000,
        };
        let read = |content: &[u8]| {
            let dir = tempfile::tempdir().expect("tempdir");
            let p = dir.path().join("in.jsonl");
            std::fs::write(&p, content).expect("write");
            Reader {
                path: &p,
                stream: "in.jsonl",
                start: 0,
                limits,
                final_: true,
                ranges: true,
            }
            .jsonl()
            .expect("read")
        };
        // Clean: one range, cut once its records hold 5,000 bytes.
        let c = read(&lines.concat());
        let range = c.range.expect("a range");
        assert_eq!((range.records, range.end), (103, 103 * 50));
        // A bad line past the payload cut: the chunk is cut there, as a range.
        let mut bad = lines.clone();
        bad[60] = b"{\"id\":\"\xff\"}\n".to_vec();
        let c = read(&bad.concat());
        let range = c.range.expect("a range");
        assert!(c.rejects.is_empty());
        assert_eq!((range.records, range.end), (21, 21 * 50));
        // A bad line before it: its records and the reject, cut at 1,000 bytes.
        let mut bad = lines.clone();
        bad[5] = b"{\"id\":\"\xff\"}\n".to_vec();
        let c = read(&bad.concat());
        assert!(c.range.is_none());
        assert_eq!(c.rejects.len(), 1);
        assert_eq!(c.records.len(), 21);
    }

    /// The same read as a range (what a job holds) gives the same records,
    /// rejects and end once the worker reads the range back.
    fn same_as_range(root: &Path, plain: &Reader<'_>, c: &Chunk) {
        // Cut where the plain read cuts (a range may hold more: tested in
        // `a_range_is_cut_at_range_bytes_and_a_chunk_with_rejects_at_batch_bytes`).
        let limits = Limits {
            max_range_bytes: plain.limits.max_batch_bytes,
            ..plain.limits
        };
        let ranged = Reader {
            ranges: true,
            limits,
            ..*plain
        }
        .jsonl()
        .expect("ranged read");
        assert_eq!((ranged.end, ranged.at_end), (c.end, c.at_end));
        assert_eq!(ranged.rejects, c.rejects);
        match &ranged.range {
            None => assert_eq!(ranged.records, c.records),
            Some(range) => {
                assert!(ranged.records.is_empty() && c.rejects.is_empty());
                assert_eq!((range.start, range.end), (plain.start as u64, c.end as u64));
                let text = range.read(root).expect("range reads back");
                let back: Vec<&str> = range_lines(&text, range.start == 0).collect();
                assert_eq!(back, c.records);
            }
        }
    }

    /// Reads a whole file batch by batch, as a source does.
    fn read_all(
        name: &str,
        content: &[u8],
        limits: Limits,
    ) -> (Vec<String>, Vec<(Stage, Vec<u8>)>) {
        let mut start = 0;
        let mut records = Vec::new();
        let mut rejects = Vec::new();
        for _ in 0..10_000 {
            let (r, j, end, at_end) = check(name, content, start, limits, true);
            let progress = end != start || !r.is_empty() || !j.is_empty();
            records.extend(r);
            rejects.extend(j);
            start = end;
            if at_end && !progress {
                return (records, rejects);
            }
            assert!(progress || at_end, "no progress at {start}");
        }
        panic!("did not finish");
    }

    /// One generated line of a JSON-lines file: records, blank and padded
    /// lines, CRLF, NUL bytes, invalid UTF-8, over-long lines.
    fn any_line() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            4 => "[a-z0-9 ]{0,12}".prop_map(|v| format!("{{\"v\":\"{v}\"}}").into_bytes()),
            1 => Just(Vec::new()),
            1 => "[ \t]{1,3}".prop_map(String::into_bytes),
            1 => "[a-z]{0,5}".prop_map(|v| format!("  {{\"p\":\"{v}\"}}\r").into_bytes()),
            1 => Just(b"{\"nul\":\"a\0b\"}".to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 1..6)
                .prop_map(|b| b.into_iter().filter(|c| *c != b'\n').collect()),
            1 => Just(vec![b'x'; 40]),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Reading a file batch by batch as ranges and reading the ranges
        /// back gives every record a plain read gives, in order (`check`
        /// compares each batch).
        #[test]
        fn ranges_read_back_as_the_records(
            bom in proptest::prelude::any::<bool>(),
            lines in proptest::collection::vec(any_line(), 0..40),
            last_lf in proptest::prelude::any::<bool>(),
            batch in 1usize..6,
        ) {
            let mut content = if bom { BOM.to_vec() } else { Vec::new() };
            content.extend(lines.join(&b'\n'));
            if last_lf {
                content.push(b'\n');
            }
            let (records, rejects) = read_all("in.jsonl", &content, limits(batch, 30));
            // Every line that is not blank is a record or a reject.
            let expected = lines.iter().filter(|l| !l.trim_ascii().is_empty()).count();
            proptest::prop_assert_eq!(records.len() + rejects.len(), expected);
        }
    }

    /// A change made to an input file after its ranges were queued.
    #[derive(Debug, Clone)]
    enum Change {
        /// One byte replaced (maybe by itself: no change).
        Set(usize, u8),
        Truncate(usize),
        Append(Vec<u8>),
        /// The same length, other lines (a file replaced in place).
        Replace(Vec<u8>),
        Remove,
    }

    fn any_change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Change::Set(at, b)),
            2 => any::<usize>().prop_map(Change::Truncate),
            1 => proptest::collection::vec(any::<u8>(), 1..20).prop_map(Change::Append),
            1 => any::<u64>().prop_map(|seed| Change::Replace(seed.to_le_bytes().to_vec())),
            1 => Just(Change::Remove),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Whatever happens to a file after its batches were queued as
        /// ranges, reading a range back gives exactly the bytes the source
        /// read, or is refused: `Changed` with what the range holds now, or
        /// `Unreadable` when the file is gone — never other records.
        #[test]
        fn a_changed_range_never_reads_as_records(
            lines in proptest::collection::vec("[a-z0-9]{0,12}", 1..40),
            batch in 1usize..6,
            change in any_change(),
        ) {
            let content: Vec<u8> = lines
                .iter()
                .map(|v| format!("{{\"v\":\"{v}\"}}\n"))
                .collect::<String>()
                .into_bytes();
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("in.jsonl");
            std::fs::write(&path, &content).expect("write");
            // Queue the whole file as ranges.
            let mut ranges = Vec::new();
            let mut start = 0i64;
            loop {
                let c = Reader {
                    path: &path,
                    stream: "in.jsonl",
                    start,
                    limits: limits(batch, 100),
                    final_: true,
                    ranges: true,
                }
                .jsonl()
                .expect("read");
                ranges.extend(c.range);
                if c.end == start {
                    break;
                }
                start = c.end;
            }
            proptest::prop_assert_eq!(ranges.iter().map(|r| r.records as usize).sum::<usize>(), lines.len());
            let mut now = content.clone();
            match &change {
                Change::Set(at, b) => now[at % content.len()] = *b,
                Change::Truncate(at) => now.truncate(at % content.len()),
                Change::Append(more) => now.extend(more),
                Change::Replace(seed) => {
                    for (i, b) in now.iter_mut().enumerate() {
                        if *b != b'\n' {
                            *b = b'a' + (seed[i % seed.len()].wrapping_add(i as u8) % 26);
                        }
                    }
                }
                Change::Remove => {}
            }
            if matches!(change, Change::Remove) {
                std::fs::remove_file(&path).expect("remove");
            } else {
                std::fs::write(&path, &now).expect("rewrite");
            }
            for r in &ranges {
                let (a, b) = (r.start as usize, r.end as usize);
                let was = &content[a..b];
                let is = now.get(a..b.min(now.len())).unwrap_or_default();
                match r.read(dir.path()) {
                    Ok(text) => {
                        proptest::prop_assert!(!matches!(change, Change::Remove));
                        proptest::prop_assert_eq!(text.as_bytes(), was);
                    }
                    Err(RangeError::Changed { found, start, end, .. }) => {
                        proptest::prop_assert_eq!((start, end), (r.start, r.end));
                        proptest::prop_assert_ne!(is, was, "refused an unchanged range");
                        proptest::prop_assert_eq!(found.as_slice(), is);
                    }
                    Err(RangeError::Unreadable { .. }) => {
                        proptest::prop_assert!(matches!(change, Change::Remove));
                    }
                }
            }
        }
    }

    #[test]
    fn a_changed_range_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("in.jsonl");
        std::fs::write(&p, b"{\"a\":1}\n{\"a\":2}\n").expect("write");
        let r = Reader {
            path: &p,
            stream: "in.jsonl",
            start: 0,
            limits: limits(10, 100),
            final_: false,
            ranges: true,
        };
        let range = r.jsonl().expect("read").range.expect("a range");
        assert_eq!((range.start, range.end, range.records), (0, 16, 2));
        range.read(dir.path()).expect("unchanged");
        // Rewritten in place, same length.
        std::fs::write(&p, b"{\"a\":3}\n{\"a\":4}\n").expect("write");
        let e = range.read(dir.path()).expect_err("changed");
        let RangeError::Changed { found, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(found, b"{\"a\":3}\n{\"a\":4}\n");
        assert!(
            e.to_string().starts_with("in.jsonl: bytes 0..16 changed"),
            "{e}"
        );
        // Truncated.
        std::fs::write(&p, b"{\"a\":1}\n").expect("write");
        let e = range.read(dir.path()).expect_err("truncated");
        assert!(e.to_string().contains("the file now ends at byte 8"), "{e}");
        // Gone: maybe not for good (another attempt may read it).
        std::fs::remove_file(&p).expect("rm");
        let e = range.read(dir.path()).expect_err("gone");
        assert!(matches!(e, RangeError::Unreadable { .. }), "{e}");
    }

    #[test]
    fn jsonl_positions() {
        let l = limits(10, 1 << 20);
        let (r, _, end, _) = check("in.jsonl", b"{\"a\":1}\n\n{\"a\":2}\n", 0, l, false);
        assert_eq!(
            (r, end),
            (vec!["{\"a\":1}".to_string(), "{\"a\":2}".into()], 17)
        );
        let (r, _, end, _) = check("in.jsonl", b"{\"a\":1}\n{\"a\":2}\n", 8, l, false);
        assert_eq!((r, end), (vec!["{\"a\":2}".to_string()], 16));
        let (r, _, end, _) = check(
            "in.jsonl",
            b"{\"a\":1}\n{\"a\":2}\n",
            0,
            limits(1, 99),
            false,
        );
        assert_eq!((r, end), (vec!["{\"a\":1}".to_string()], 8));
        // A line still being written is left for later, unless final.
        let (r, _, end, _) = check("in.jsonl", b"{\"a\":1}\n{\"a\"", 0, l, false);
        assert_eq!((r, end), (vec!["{\"a\":1}".to_string()], 8));
        let (r, _, end, _) = check("in.jsonl", b"{\"a\":1}\r\n{\"a\":2}", 0, l, true);
        assert_eq!(
            (r, end),
            (vec!["{\"a\":1}".to_string(), "{\"a\":2}".into()], 16)
        );
        // A byte-order mark is not part of the first record.
        let (r, _, _, _) = check("in.jsonl", b"\xEF\xBB\xBF{\"a\":1}\n", 0, l, true);
        assert_eq!(r, ["{\"a\":1}"]);
    }

    #[test]
    fn jsonl_bad_lines_are_rejects_and_reading_goes_on() {
        let long = format!("{{\"k\":\"{}\"}}", "x".repeat(3000));
        let content = [
            b"{\"id\":1}\n".to_vec(),
            long.clone().into_bytes(),
            b"\n{\"id\":2,\"s\":\"\xff\"}\n{\"id\":3,\"z\":\"a\x00b\"}\n{\"id\":4}".to_vec(),
        ]
        .concat();
        // max_record_bytes below the long line, window far above it.
        let (records, rejects) = read_all("in.jsonl", &content, limits(2, 100));
        assert_eq!(
            records,
            ["{\"id\":1}", "{\"id\":3,\"z\":\"a\u{0}b\"}", "{\"id\":4}"]
        );
        assert_eq!(rejects.len(), 2);
        assert_eq!(rejects[0], (Stage::Input, long.into_bytes()));
        assert_eq!(
            rejects[1],
            (Stage::Decode, b"{\"id\":2,\"s\":\"\xff\"}".to_vec())
        );
    }

    #[test]
    fn a_line_longer_than_the_window_is_skipped_to_its_end() {
        // 3 MiB line with a 1 MiB window: read through the file.
        let long = vec![b'x'; 3 << 20];
        let content = [
            b"{\"id\":1}\n".to_vec(),
            long.clone(),
            b"\n{\"id\":2}\n".to_vec(),
        ]
        .concat();
        let l = Limits {
            batch_size: 10,
            max_record_bytes: 1000,
            max_batch_bytes: MAX_BATCH_BYTES,
            max_range_bytes: MAX_RANGE_BYTES,
        };
        let (records, rejects) = read_all("in.jsonl", &content, l);
        assert_eq!(records, ["{\"id\":1}", "{\"id\":2}"]);
        assert_eq!(rejects, [(Stage::Input, long)]);
    }

    #[test]
    fn csv_rows_and_rejects() {
        let l = limits(10, 1 << 20);
        let (r, j, end, _) = check("in.csv", b"id,name\n1,\"a, b\"\n2\n3,c\n", 0, l, true);
        assert_eq!(
            r,
            [r#"{"id":"1","name":"a, b"}"#, r#"{"id":"3","name":"c"}"#]
        );
        assert_eq!(j, [(Stage::Input, b"2".to_vec())]);
        assert_eq!(end, 23);
        // Resuming after the first row.
        let (r, _, _, _) = check("in.csv", b"id,name\n1,\"a, b\"\n2\n3,c\n", 17, l, true);
        assert_eq!(r, [r#"{"id":"3","name":"c"}"#]);
        // Invalid UTF-8: that row only, and reading goes on (once hung).
        let (r, j) = read_all("in.csv", b"id,name\n1,ann\n2,\xff\n3,cy\n", l);
        assert_eq!(
            r,
            [r#"{"id":"1","name":"ann"}"#, r#"{"id":"3","name":"cy"}"#]
        );
        assert_eq!(j, [(Stage::Decode, b"2,\xff".to_vec())]);
        // A quoted line break inside a row being written is not a row yet.
        let (r, _, end, _) = check("in.csv", b"id,note\n1,\"a\nb", 0, l, false);
        assert_eq!((r.len(), end), (0, 8));
        // BOM and CRLF.
        let (r, _) = read_all("in.csv", b"\xEF\xBB\xBFid,n\r\n1,a\r\n", l);
        assert_eq!(r, [r#"{"id":"1","n":"a"}"#]);
    }

    #[test]
    fn json_arrays_stream_by_element() {
        let l = limits(2, 1 << 20);
        let text = b"[{\"a\": 1},\n {\"a\":\n 2.50}, {\"a\": 3}]";
        let (r, _, end, at_end) = check("in.json", text, 0, l, true);
        assert_eq!(r, ["{\"a\": 1}", "{\"a\":  2.50}"]);
        assert!(!at_end);
        let (r, _, _, at_end) = check("in.json", text, end, l, true);
        assert_eq!(r, ["{\"a\": 3}"]);
        assert!(at_end);
        // An element that is not JSON is a dead letter; reading goes on.
        let (r, j) = read_all("in.json", b"[{\"a\":1}, {\"a\": tru}, {\"a\":2}]", l);
        assert_eq!(r, ["{\"a\":1}", "{\"a\":2}"]);
        assert_eq!(j, [(Stage::Decode, b"{\"a\": tru}".to_vec())]);
        // Truncated: the rest is one dead letter.
        let (r, j) = read_all("in.json", b"[{\"a\":1}, {\"a\":", l);
        assert_eq!(r, ["{\"a\":1}"]);
        assert_eq!(j, [(Stage::Input, b"{\"a\":".to_vec())]);
        // An object, not an array: one dead letter.
        let (r, j) = read_all("in.json", b"{\"a\":1}", l);
        assert!(r.is_empty());
        assert_eq!(j, [(Stage::Input, b"{\"a\":1}".to_vec())]);
        // Empty and empty arrays: nothing.
        assert_eq!(read_all("in.json", b"", l), (vec![], vec![]));
        assert_eq!(read_all("in.json", b" [ ] ", l), (vec![], vec![]));
    }

    #[test]
    fn a_json_array_appended_by_rewriting_its_bracket_is_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("in.json");
        std::fs::write(&p, b"[\n{\"a\":1}\n]\n").expect("write");
        let read = |start| {
            Reader {
                path: &p,
                stream: "in.json",
                start,
                limits: limits(10, 1 << 20),
                final_: false,
                ranges: false,
            }
            .json()
            .expect("read")
        };
        let c = read(0);
        assert_eq!(c.records, ["{\"a\":1}"]);
        std::fs::write(&p, b"[\n{\"a\":1},\n{\"a\":2}\n]\n").expect("write");
        let c = read(c.end);
        assert_eq!(c.records, ["{\"a\":2}"]);
    }

    #[test]
    fn truncated_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("in.jsonl");
        std::fs::write(&p, "{}\n").expect("write");
        let r = Reader {
            path: &p,
            stream: "in.jsonl",
            start: 100,
            limits: limits(10, 100),
            final_: true,
            ranges: false,
        };
        let e = r.jsonl().expect_err("shorter than position");
        assert!(e.contains("--from-start"), "{e}");
    }
}
