//! Conservation of records under generated bad input.
//!
//! Each case generates input files (JSON lines, CSV, JSON arrays) mixing
//! good records with every kind of bad input the runtime must survive —
//! raw NULs, invalid UTF-8 in keys and values, over-long records, truncated
//! files, byte-order marks, CRLF, blank lines, huge numbers, duplicate
//! keys, non-objects, records the flow rejects — runs `weavster run --once`
//! (in some cases killed with `kill -9` at a random moment first, then run
//! again), and accounts for every record from the outputs and the
//! dead-letter table: each one is written to the output its value routes it
//! to, or filtered, or dead-lettered at the stage its defect calls for —
//! exactly once (after a kill, outputs may hold duplicates, as
//! docs/guarantees.md allows; dead letters never). Nothing may hang.
//!
//! A second generated test changes an input file under its queued range
//! jobs (bytes set, lines replaced in place, records appended) and accounts
//! for every range: delivered again unchanged, or one dead letter naming
//! it, never records that were not read.
//!
//! `WEAVSTER_CONSERVATION_CASES` (default 9), `WEAVSTER_CHANGED_CASES`
//! (default 8) and `WEAVSTER_CONSERVATION_SEED` set the run;
//! `scripts/conservation.sh` runs a long one.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{command, dead_letters, dead_record, project, wait_bounded, weavster, write};
use serde_json::Value;

/// SplitMix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What must become of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    Even,
    Odd,
    Filtered,
    Dead(&'static str),
}

/// The records' longest allowed size in the generated project.
const MAX_RECORD: usize = 2048;

/// The flow, for each input format (`{}`: jsonl, csv, json).
const FLOW: &str = "input: files.in_{}
unrouted: error
transforms:
  - set: { n: int(v) }
  - filter: string(skip) != 'true'
outputs:
  - to: files.even
    when: n % 2 == 0
  - to: files.odd
    when: n % 2 == 1
";

const CONNECTORS: &str = "in_jsonl: { type: file, path: data/*.jsonl }
in_csv: { type: file, path: data/*.csv }
in_json: { type: file, path: data/*.json }
even: { type: file, path: out/even.jsonl }
odd: { type: file, path: out/odd.jsonl }
";

/// A generated case: files, and every record's fate by id.
#[derive(Default)]
struct Case {
    files: Vec<(String, Vec<u8>)>,
    fates: BTreeMap<String, Fate>,
    /// Expected dead letters by stage (letters, not records).
    letters: BTreeMap<&'static str, usize>,
}

impl Case {
    fn expect(&mut self, id: &str, fate: Fate) {
        self.fates.insert(id.to_string(), fate);
        if let Fate::Dead(stage) = fate {
            *self.letters.entry(stage).or_default() += 1;
        }
    }
}

/// A good record's value: (v as JSON, parity fate) — or a defect.
fn value(rng: &mut Rng) -> (String, u64) {
    let n = rng.below(1000);
    let v = if rng.chance(50) {
        n.to_string()
    } else {
        format!("\"{n}\"")
    };
    (v, n)
}

fn parity(n: u64) -> Fate {
    if n.is_multiple_of(2) {
        Fate::Even
    } else {
        Fate::Odd
    }
}

/// Extra fields the flow never touches: kept exactly.
fn extras(rng: &mut Rng) -> String {
    let mut s = String::new();
    if rng.chance(20) {
        s.push_str(",\"big\":1e400,\"huge\":123456789012345678901234567890");
    }
    if rng.chance(20) {
        s.push_str(",\"u\":\"é\\u00e9\\\"\"");
    }
    if rng.chance(10) {
        s.push_str(",\"deep\":[[[[[[[[[[{\"a\":[1,{\"b\":null}]}]]]]]]]]]]");
    }
    if rng.chance(10) {
        s.push_str(",\"dup\":1,\"dup\":2");
    }
    s
}

/// One JSON record (object text, one line) and its fate. In an array, a
/// record is never unbalanced (an unclosed `{` there swallows the next
/// records: no reader can tell where it was meant to end).
fn json_unit(rng: &mut Rng, id: &str, in_array: bool) -> (Vec<u8>, Fate) {
    let (v, n) = value(rng);
    let skip = rng.chance(15);
    let good = |v: &str, skip: bool, extra: &str| {
        format!("{{\"id\":\"{id}\",\"v\":{v},\"skip\":{skip}{extra}}}").into_bytes()
    };
    let kind = match rng.below(20) {
        2 if in_array => 0,
        k => k,
    };
    match kind {
        0 => (good("\"x\"", false, ""), Fate::Dead("transform")),
        1 => (
            format!("{{\"id\":\"{id}\",\"skip\":false}}").into_bytes(),
            Fate::Dead("routing"),
        ),
        2 => (
            format!("{{\"id\":\"{id}\",\"v\":{v},").into_bytes(),
            Fate::Dead("decode"),
        ),
        3 => (
            [
                format!("{{\"id\":\"{id}\",\"v\":{v},\"k\":\"a").as_bytes(),
                b"\x00",
                b"b\"}",
            ]
            .concat(),
            Fate::Dead("decode"),
        ),
        4 => (
            [
                format!("{{\"id\":\"{id}\",\"v\":{v},\"s\":\"").as_bytes(),
                b"\xff\xc3",
                b"\"}",
            ]
            .concat(),
            Fate::Dead("decode"),
        ),
        5 => (
            [
                format!("{{\"id\":\"{id}\",\"").as_bytes(),
                b"\xfe",
                format!("\":1,\"v\":{v}}}").as_bytes(),
            ]
            .concat(),
            Fate::Dead("decode"),
        ),
        6 => (format!("[\"{id}\", 1]").into_bytes(), Fate::Dead("decode")),
        7 => (
            format!(
                "{{\"id\":\"{id}\",\"v\":{v},\"pad\":\"{}\"}}",
                "p".repeat(MAX_RECORD + rng.below(3000) as usize)
            )
            .into_bytes(),
            Fate::Dead("input"),
        ),
        8 => (
            format!("{{\"id\":\"{id}\",\"v\":{v},\"k\":\"a\\u0000b\"}}").into_bytes(),
            parity(n),
        ),
        _ => {
            let extra = extras(rng);
            let fate = if skip { Fate::Filtered } else { parity(n) };
            (good(&v, skip, &extra), fate)
        }
    }
}

fn jsonl_file(rng: &mut Rng, case: &mut Case, prefix: &str, count: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.chance(20) {
        out.extend_from_slice(b"\xEF\xBB\xBF");
    }
    let crlf = rng.chance(30);
    for k in 0..count {
        let id = format!("{prefix}r{k}");
        let (bytes, fate) = json_unit(rng, &id, false);
        case.expect(&id, fate);
        out.extend_from_slice(&bytes);
        out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        if rng.chance(5) {
            out.extend_from_slice(b"   \n\n");
        }
    }
    if out.ends_with(b"\n") && rng.chance(30) {
        out.pop();
        if out.ends_with(b"\r") {
            out.pop();
        }
    }
    out
}

fn csv_file(rng: &mut Rng, case: &mut Case, prefix: &str, count: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.chance(20) {
        out.extend_from_slice(b"\xEF\xBB\xBF");
    }
    let eol: &[u8] = if rng.chance(30) { b"\r\n" } else { b"\n" };
    out.extend_from_slice(b"id,v,skip");
    out.extend_from_slice(eol);
    for k in 0..count {
        let id = format!("{prefix}r{k}");
        let n = rng.below(1000);
        let (row, fate): (Vec<u8>, Fate) = match rng.below(12) {
            0 => (
                format!("{id},x,false").into_bytes(),
                Fate::Dead("transform"),
            ),
            1 => (format!("{id},{n}").into_bytes(), Fate::Dead("input")),
            2 => (
                [format!("{id},").as_bytes(), b"\xff", b",false"].concat(),
                Fate::Dead("decode"),
            ),
            3 => (
                format!("{id},{n},\"{}\"", "q".repeat(MAX_RECORD + 10)).into_bytes(),
                Fate::Dead("input"),
            ),
            4 => (format!("{id},{n},true").into_bytes(), Fate::Filtered),
            5 => (
                format!("{id},\"{n}\",\"a, \"\"quoted\"\"\nline\"").into_bytes(),
                parity(n),
            ),
            _ => (format!("{id},{n},false").into_bytes(), parity(n)),
        };
        case.expect(&id, fate);
        out.extend_from_slice(&row);
        out.extend_from_slice(eol);
    }
    out
}

fn json_file(rng: &mut Rng, case: &mut Case, prefix: &str, count: usize) -> Vec<u8> {
    // An object instead of an array: one dead letter.
    if rng.chance(8) {
        let id = format!("{prefix}r0");
        case.expect(&id, Fate::Dead("input"));
        return format!("{{\"id\":\"{id}\",\"v\":1}}").into_bytes();
    }
    if count == 0 || rng.chance(5) {
        return if rng.chance(50) {
            Vec::new()
        } else {
            b"[]".to_vec()
        };
    }
    let pretty = rng.chance(40);
    let mut out = Vec::new();
    if rng.chance(20) {
        out.extend_from_slice(b"\xEF\xBB\xBF");
    }
    out.extend_from_slice(b"[");
    let truncate = rng.chance(20);
    for k in 0..count {
        let id = format!("{prefix}r{k}");
        if k > 0 {
            out.push(b',');
        }
        if pretty {
            out.extend_from_slice(b"\n  ");
        }
        let (mut bytes, mut fate) = match rng.below(10) {
            0 => (
                format!("{{\"id\":\"{id}\", \"v\": tru}}").into_bytes(),
                Fate::Dead("decode"),
            ),
            _ => json_unit(rng, &id, true),
        };
        if pretty && fate != Fate::Dead("input") {
            // Line breaks between tokens, as pretty printers write them.
            bytes = String::from_utf8_lossy(&bytes)
                .replacen(",\"v\"", ",\n    \"v\"", 1)
                .into_bytes();
            if bytes.iter().any(|b| *b == 0 || *b >= 0x80) {
                // Keep the exact bad bytes: no reformatting.
                (bytes, fate) = json_unit(&mut Rng(0), &id, true);
            }
        }
        if truncate && k + 1 == count {
            // Cut after the id: the tail is one dead letter holding it.
            let cut = bytes
                .windows(id.len())
                .position(|w| w == id.as_bytes())
                .map_or(bytes.len(), |p| p + id.len() + 1);
            bytes.truncate(cut.min(bytes.len()));
            fate = Fate::Dead("input");
        }
        case.expect(&id, fate);
        out.extend_from_slice(&bytes);
    }
    if !truncate {
        out.extend_from_slice(if pretty { b"\n]\n" } else { b"]" });
    }
    out
}

fn generate(seed: u64, case_no: usize, records: usize) -> Case {
    let mut rng = Rng(seed ^ (case_no as u64).wrapping_mul(0x1234_5678_9abc_def1));
    let mut case = Case::default();
    let files = 1 + rng.below(4) as usize;
    for f in 0..files {
        let count = (records / files).max(1);
        let prefix = format!("c{case_no}f{f}");
        let (ext, bytes) = match rng.below(3) {
            0 => ("jsonl", jsonl_file(&mut rng, &mut case, &prefix, count)),
            1 => ("csv", csv_file(&mut rng, &mut case, &prefix, count)),
            _ => ("json", json_file(&mut rng, &mut case, &prefix, count)),
        };
        case.files.push((format!("data/in-{f}.{ext}"), bytes));
    }
    case
}

/// Ids (`c<digits>f<digits>r<digits>`) found in `bytes`.
fn ids_in(bytes: &[u8]) -> Vec<String> {
    let digits = |b: &[u8], at: usize| b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'c' {
            let mut p = i + 1;
            let mut ok = true;
            for sep in [b'f', b'r', 0] {
                let n = digits(bytes, p);
                if n == 0 {
                    ok = false;
                    break;
                }
                p += n;
                if sep != 0 {
                    if bytes.get(p) != Some(&sep) {
                        ok = false;
                        break;
                    }
                    p += 1;
                }
            }
            if ok {
                out.push(String::from_utf8_lossy(&bytes[i..p]).to_string());
                i = p;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// Where every id ended up.
#[derive(Default, Debug)]
struct Seen {
    out: BTreeMap<String, Vec<Fate>>,
    dead: BTreeMap<String, Vec<&'static str>>,
    letters: BTreeMap<String, usize>,
}

fn stage(s: &str) -> &'static str {
    [
        "input",
        "decode",
        "transform",
        "routing",
        "trap",
        "deadline",
        "output",
        "delivery",
        "internal",
    ]
    .into_iter()
    .find(|x| *x == s)
    .unwrap_or("unknown")
}

fn observe(dir: &Path, env: &[(String, String)]) -> Seen {
    let mut seen = Seen::default();
    for (file, fate) in [("out/even.jsonl", Fate::Even), ("out/odd.jsonl", Fate::Odd)] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        for line in text.lines() {
            // 1e400 is kept verbatim, beyond what an f64 holds.
            let v: Value = serde_json::from_str(&line.replace("1e400", "1"))
                .unwrap_or_else(|e| panic!("{file}: not a JSON record ({e}): {line}"));
            let id = v["id"].as_str().expect("id").to_string();
            let n = v["n"].as_i64().expect("n");
            assert_eq!(parity(n as u64), fate, "{file}: {line}");
            if line.contains("\"big\"") {
                assert!(
                    line.contains("\"big\":1e400,\"huge\":123456789012345678901234567890"),
                    "untouched fields were rewritten: {line}"
                );
            }
            seen.out.entry(id).or_default().push(fate);
        }
    }
    for d in dead_letters(dir, env) {
        let st = stage(d["stage"].as_str().unwrap_or(""));
        *seen.letters.entry(st.to_string()).or_default() += 1;
        for id in ids_in(&dead_record(&d)) {
            seen.dead.entry(id).or_default().push(st);
        }
    }
    seen
}

/// Every record is where its fate says; `dup_ok`: outputs may repeat one.
fn account(case: &Case, seen: &Seen, dup_ok: bool) -> Result<(), String> {
    let mut problems = Vec::new();
    for (id, fate) in &case.fates {
        let outs = seen.out.get(id).cloned().unwrap_or_default();
        let dead = seen.dead.get(id).cloned().unwrap_or_default();
        let ok = match fate {
            Fate::Even | Fate::Odd => {
                dead.is_empty()
                    && !outs.is_empty()
                    && outs.iter().all(|f| f == fate)
                    && (dup_ok || outs.len() == 1)
            }
            Fate::Filtered => outs.is_empty() && dead.is_empty(),
            Fate::Dead(stage) => outs.is_empty() && dead == [*stage],
        };
        if !ok {
            problems.push(format!(
                "{id}: expected {fate:?}, found outputs {outs:?} dead {dead:?}"
            ));
        }
    }
    for id in seen.out.keys().chain(seen.dead.keys()) {
        if !case.fates.contains_key(id) {
            problems.push(format!("{id}: never generated"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.truncate(20);
        Err(problems.join("\n"))
    }
}

fn run_once(dir: &Path, env: &[(String, String)], args: &[&str]) -> (i32, String) {
    let log = dir.join("run.log");
    let mut child = command(dir, args, env)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let status = wait_bounded(&mut child, Duration::from_secs(300), "run --once");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("panicked"), "{text}");
    (status.code().unwrap_or(-1), text)
}

#[test]
fn every_record_is_accounted_for_under_generated_bad_input() {
    let cases: usize = std::env::var("WEAVSTER_CONSERVATION_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    let seed: u64 = std::env::var("WEAVSTER_CONSERVATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    let flow = |f: &str| FLOW.replace("{}", f);
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: conservation\n"),
        ("connectors/files.yaml", CONNECTORS),
        ("flows/route_jsonl.yaml", &flow("jsonl")),
        ("flows/route_csv.yaml", &flow("csv")),
        ("flows/route_json.yaml", &flow("json")),
    ]);
    let dir = tmp.path();
    let compiled = weavster(dir, &["compile"], &env);
    assert_eq!(compiled.code, 0, "{}", compiled.stderr);
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    for case_no in 0..cases {
        let mut rng = Rng(seed.wrapping_add(case_no as u64));
        // Every third case is killed mid-run and run again.
        let kill = case_no % 3 == 2;
        let records = if kill {
            5_000 + rng.below(15_000) as usize
        } else {
            1 + rng.below(400) as usize
        };
        // Batches of one record are many jobs: not for the big kill cases.
        let batch = if kill {
            [50, 1000][rng.below(2) as usize]
        } else {
            [1, 3, 50, 1000][rng.below(4) as usize]
        };
        let case = generate(seed, case_no, records);
        let _ = std::fs::remove_dir_all(dir.join("data"));
        let _ = std::fs::remove_dir_all(dir.join("out"));
        for (path, bytes) in &case.files {
            write(dir, path, bytes);
        }
        write(
            dir,
            "weavster.yaml",
            format!(
                "name: conservation\nruntime: {{ batch_size: {batch}, max_record_bytes: {MAX_RECORD} }}\n"
            )
            .as_bytes(),
        );
        let what = format!(
            "case {case_no} (seed {seed}, {} records in {} files, batch {batch}, kill {kill})",
            case.fates.len(),
            case.files.len()
        );
        let started = std::time::Instant::now();
        let (code, log) = if kill {
            let mut child = command(dir, &["run", "--once", "--from-start"], &env)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
            let _ = child.kill();
            let _ = child.wait();
            run_once(dir, &env, &["run", "--once"])
        } else {
            run_once(dir, &env, &["run", "--once", "--from-start"])
        };
        let seen = observe(dir, &env);
        if let Err(problems) = account(&case, &seen, kill) {
            for (path, bytes) in &case.files {
                let keep = std::env::temp_dir().join(format!(
                    "weavster-conservation-{seed}-{case_no}-{}",
                    path.replace('/', "_")
                ));
                let _ = std::fs::write(&keep, bytes);
            }
            panic!(
                "{what}: records not accounted for (inputs kept in the temp dir):\n{problems}\n\nrun log:\n{log}"
            );
        }
        // Dead letters are never repeated, even after a kill.
        let letters: BTreeMap<String, usize> = case
            .letters
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        assert_eq!(seen.letters, letters, "{what}\n{log}");
        let want_code = if kill {
            code // the last run may or may not meet dead letters
        } else if case.letters.is_empty() {
            0
        } else {
            1
        };
        assert_eq!(code, want_code, "{what}: exit code\n{log}");
        if !kill {
            let results: Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join(".weavster/target/run_results.json"))
                    .expect("run_results.json"),
            )
            .expect("json");
            let filtered = case
                .fates
                .values()
                .filter(|f| **f == Fate::Filtered)
                .count();
            let counted: u64 = ["jsonl", "csv", "json"]
                .iter()
                .filter_map(|f| results["flows"][format!("route_{f}")]["filtered"].as_u64())
                .sum();
            assert_eq!(counted, filtered as u64, "{what}");
        }
        eprintln!(
            "{what}: accounted in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        for f in case.fates.values() {
            *totals.entry(format!("{f:?}")).or_default() += 1;
        }
        let purge = weavster(dir, &["dlq", "purge", "--all"], &env);
        assert_eq!(purge.code, 0, "{}", purge.stderr);
    }
    eprintln!("conservation: {cases} cases, records by fate: {totals:?}");
}

/// The input file of the changed-ranges test, and what each line is.
struct Lines {
    bytes: Vec<u8>,
    /// `(start, end, id)` of every line.
    at: Vec<(usize, usize, i64)>,
}

fn line(id: i64, pad: usize) -> String {
    format!("{{\"id\":{id},\"pad\":\"{}\"}}\n", "x".repeat(pad))
}

/// Generated end to end: a JSON-lines file is run (its batches queued as
/// byte ranges), every range is queued again, and the file is changed under
/// them — bytes set, lines replaced in place by other records of the same
/// length, records appended. The next `run --once` must account for every
/// range: one whose bytes are unchanged delivers its records again, once;
/// one whose bytes changed is exactly one dead letter naming the file and
/// the range, and none of its records, old or new, reaches the output;
/// appended records are read once. Nothing else is written.
#[test]
fn a_file_changed_under_queued_ranges_gives_dead_letters_never_other_records() {
    let cases: u64 = std::env::var("WEAVSTER_CHANGED_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let seed: u64 = std::env::var("WEAVSTER_CONSERVATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    let (tmp, env) = project(&[
        ("weavster.yaml", "name: changed\n"),
        (
            "connectors/files.yaml",
            "input: { type: file, path: data/in.jsonl }\noutput: { type: file, path: out/out.jsonl }\n",
        ),
        (
            "flows/copy.yaml",
            "input: files.input\noutputs:\n  - to: files.output\n",
        ),
        ("data/in.jsonl", ""),
    ]);
    let dir = tmp.path();
    let compiled = weavster(dir, &["compile"], &env);
    assert_eq!(compiled.code, 0, "{}", compiled.stderr);
    let queue = common::Queue::hold(dir);
    let out = dir.join("out/out.jsonl");
    let ids = common::ids;
    let mut totals = (0usize, 0usize, 0usize); // ranges kept, ranges changed, records appended
    for case in 0..cases {
        let mut rng = Rng(seed ^ (0xC4A9_6E00 + case));
        let batch = 1 + rng.below(40);
        write(
            dir,
            "weavster.yaml",
            format!("name: changed\nruntime: {{ batch_size: {batch} }}\n").as_bytes(),
        );
        let mut file = Lines {
            bytes: Vec::new(),
            at: Vec::new(),
        };
        for id in 0..(20 + rng.below(300)) as i64 {
            let l = line(id, 8 + rng.below(50) as usize);
            let start = file.bytes.len();
            file.bytes.extend_from_slice(l.as_bytes());
            file.at.push((start, file.bytes.len(), id));
        }
        write(dir, "data/in.jsonl", &file.bytes);
        // Earlier cases' jobs out of the way (never fetched, never requeued);
        // before the first run there is no queue table yet.
        if case > 0 {
            queue
                .sql("UPDATE apalis.jobs SET job_type = 'weavster:earlier' WHERE job_type = 'weavster:copy'")
                .expect("earlier jobs");
        }
        let _ = std::fs::remove_dir_all(dir.join("out"));
        let purge = weavster(dir, &["dlq", "purge", "--all"], &env);
        assert_eq!(purge.code, 0, "{}", purge.stderr);
        let (code, log) = run_once(dir, &env, &["run", "--once", "--from-start"]);
        let what = format!(
            "case {case} (seed {seed}, {} records, batch {batch})",
            file.at.len()
        );
        assert_eq!(code, 0, "{what}\n{log}");
        let all: Vec<i64> = file.at.iter().map(|l| l.2).collect();
        assert_eq!(
            ids(&out),
            all.iter().map(|i| (*i, 1)).collect(),
            "{what}\n{log}"
        );

        // The ranges queued: they cover the file, in order, with no gap.
        let text = queue
            .sql(
                "SELECT j->'range'->>'start', j->'range'->>'end' FROM \
                 (SELECT convert_from(job, 'UTF8')::jsonb AS j FROM apalis.jobs \
                  WHERE job_type = 'weavster:copy') s ORDER BY (j->'range'->>'start')::bigint",
            )
            .expect("ranges");
        let ranges: Vec<(usize, usize)> = text
            .lines()
            .map(|l| {
                let (s, e) = l.split_once('|').expect("start|end");
                (
                    s.parse()
                        .unwrap_or_else(|_| panic!("{what}: a job without a range: {l}")),
                    e.parse().expect("end"),
                )
            })
            .collect();
        let mut next = 0;
        for (s, e) in &ranges {
            assert_eq!(*s, next, "{what}: ranges {ranges:?}");
            next = *e;
        }
        assert_eq!(next, file.bytes.len(), "{what}: ranges {ranges:?}");
        queue.requeue_all("copy");

        // The file changed under them, in place.
        let mut changed = file.bytes.clone();
        for edit in 0..1 + rng.below(4) {
            if rng.chance(50) {
                let at = rng.below(changed.len() as u64) as usize;
                let to = b"0x}{\"\n"[rng.below(6) as usize];
                changed[at] = to;
            } else {
                let (s, e, _) = file.at[rng.below(file.at.len() as u64) as usize];
                let id = 1_000_000 + (case as i64) * 100 + edit as i64;
                let bare = line(id, 0).len();
                let other = line(id, e - s - bare);
                changed[s..e].copy_from_slice(other.as_bytes());
            }
        }
        let mut appended = Vec::new();
        if rng.chance(50) {
            for k in 0..1 + rng.below(20) as i64 {
                let id = 2_000_000 + (case as i64) * 100 + k;
                changed.extend_from_slice(line(id, 8).as_bytes());
                appended.push(id);
            }
        }
        write(dir, "data/in.jsonl", &changed);
        let _ = std::fs::remove_dir_all(dir.join("out"));
        let (code, log) = run_once(dir, &env, &["run", "--once"]);

        let mut want: Vec<i64> = appended.clone();
        let mut want_dead = BTreeMap::new();
        for (s, e) in &ranges {
            if changed[*s..*e] == file.bytes[*s..*e] {
                want.extend(
                    file.at
                        .iter()
                        .filter(|l| l.0 >= *s && l.1 <= *e)
                        .map(|l| l.2),
                );
                totals.0 += 1;
            } else {
                want_dead.insert(format!("data/in.jsonl@{s}..{e}"), 1usize);
                totals.1 += 1;
            }
        }
        totals.2 += appended.len();
        let what = format!(
            "{what}, {} of {} ranges changed",
            want_dead.len(),
            ranges.len()
        );
        assert_eq!(
            ids(&out),
            want.iter().map(|i| (*i, 1)).collect(),
            "{what}: the records written\n{log}"
        );
        let mut dead = BTreeMap::new();
        for d in common::dead_letters(dir, &env) {
            assert_eq!(d["stage"], "input", "{what}: {d}");
            let reason = d["message"].as_str().unwrap_or_default();
            assert!(
                reason.contains("data/in.jsonl: bytes")
                    && reason.contains("changed since they were read"),
                "{what}: {reason}"
            );
            *dead
                .entry(d["source"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
        assert_eq!(dead, want_dead, "{what}: the dead letters\n{log}");
        assert_eq!(
            code,
            if want_dead.is_empty() { 0 } else { 1 },
            "{what}: exit code\n{log}"
        );
        eprintln!("{what}: accounted");
    }
    eprintln!(
        "changed ranges: {cases} cases, {} ranges delivered again, {} changed ranges dead-lettered, {} records appended",
        totals.0, totals.1, totals.2
    );
}
