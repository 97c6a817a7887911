//! Generated flows through the reference interpreter: decoding only the
//! fields a flow touches must give exactly the bytes decoding whole records
//! gives, for every generated flow and batch. This finds a wrong "which
//! fields does this flow read and write" analysis (the bug of a regex
//! extraction without `into`: its groups were not counted as written).
//!
//! `WEAVSTER_FLOWGEN_CASES` sets how many flows (default 100,000; seconds
//! of CPU, no cargo); `scripts/fuzz-flows.sh` runs millions. A failing case
//! is shrunk by proptest and written to `tests/flows-corpus/` (outside CI),
//! whose every case this test replays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::test_runner::{Config, TestCaseError, TestRunner};
use weavster_flowgen::Case;
use weavster_guest::abi::{encode_batch, process_batch};
use weavster_ir::LookupData;
use weavster_ir::interp::Interpreter;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/flows-corpus")
}

fn tables() -> BTreeMap<String, LookupData> {
    let (columns, rows) = weavster_flowgen::lookup_table();
    BTreeMap::from([(
        weavster_flowgen::LOOKUP.to_string(),
        LookupData { columns, rows },
    )])
}

/// What a case did: skipped (the flow does not lower: a static error in a
/// generated expression), or compared.
#[derive(Debug, PartialEq)]
enum Checked {
    Skipped,
    Compared,
}

/// Runs `case` with partial and whole decoding; `Err` describes a mismatch.
fn check(case: &Case, tables: &BTreeMap<String, LookupData>) -> Result<Checked, String> {
    let ir = match weavster_ir::lower("gen", &case.flow, tables) {
        Ok(ir) => ir,
        Err(e) => {
            if std::env::var_os("WEAVSTER_FLOWGEN_WHY").is_some() {
                eprintln!("skip: {e}");
            }
            return Ok(Checked::Skipped);
        }
    };
    let Ok(partial) = Interpreter::new(ir.clone()) else {
        return Ok(Checked::Skipped);
    };
    let whole = Interpreter::new(weavster_ir::Flow {
        fields: None,
        ..ir.clone()
    })
    .map_err(|e| format!("whole-record interpreter: {e}"))?;
    let mut batch = Vec::new();
    encode_batch("2026-03-04T05:06:07Z", 42, &case.records, &mut batch);
    let mut a = Vec::new();
    process_batch(&partial, &case.vars, &batch, &mut a).map_err(|e| e.to_string())?;
    let mut b = Vec::new();
    process_batch(&whole, &case.vars, &batch, &mut b).map_err(|e| e.to_string())?;
    if a != b {
        return Err(format!(
            "partial and whole decoding differ (fields: {:?})\n--- batch\n{}\n--- partial\n{}\n--- whole\n{}",
            ir.fields,
            String::from_utf8_lossy(&batch),
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b)
        ));
    }
    Ok(Checked::Compared)
}

/// Saves a failing case to the corpus (not in CI, where nothing is
/// written); returns where.
fn save(case: &Case) -> Option<PathBuf> {
    if std::env::var_os("CI").is_some() {
        return None;
    }
    let text = serde_json::to_string_pretty(case).ok()?;
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("found-{hash:016x}.json"));
    std::fs::write(&path, text + "\n").ok()?;
    Some(path)
}

#[test]
fn partial_decoding_equals_whole_decoding_on_generated_flows() {
    let cases: u32 = std::env::var("WEAVSTER_FLOWGEN_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let tables = tables();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..Config::default()
    });
    let counts = std::cell::RefCell::new((0u64, 0u64));
    let result = runner.run(&weavster_flowgen::case(), |case| {
        match check(&case, &tables) {
            Ok(Checked::Compared) => counts.borrow_mut().0 += 1,
            Ok(Checked::Skipped) => counts.borrow_mut().1 += 1,
            Err(e) => return Err(TestCaseError::fail(e)),
        }
        Ok(())
    });
    let (compared, skipped) = *counts.borrow();
    eprintln!("generated flows: {compared} compared, {skipped} skipped (static errors)");
    if let Err(e) = result {
        let saved = match &e {
            proptest::test_runner::TestError::Fail(_, case) => save(case),
            _ => None,
        };
        panic!(
            "{e}\n(minimal case saved to {})",
            saved.map_or("nowhere: CI".into(), |p| p.display().to_string())
        );
    }
    // The generator must keep producing flows that lower.
    assert!(
        compared * 2 >= compared + skipped,
        "only {compared} of {} generated flows lowered",
        compared + skipped
    );
}

/// Every case in `tests/flows-corpus/` (found by the generator, or written
/// by hand for a bug) holds.
#[test]
fn the_flows_corpus_holds() {
    let tables = tables();
    let mut n = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/flows-corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).expect("read");
        let case: Case = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a case: {e}", path.display()));
        match check(&case, &tables) {
            Ok(Checked::Compared) => n += 1,
            Ok(Checked::Skipped) => panic!("{}: the flow does not lower", path.display()),
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
    assert!(n > 0, "the corpus is empty");
}
