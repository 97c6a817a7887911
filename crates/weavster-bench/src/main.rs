//! `cargo run --release -p weavster-bench` (or `scripts/bench-compile.sh`):
//! compile times (cold, one flow changed, nothing changed) and transform
//! throughput of the `orders` example at batch sizes 1/64/1024 through
//! wasmtime, the same generated Rust compiled natively, and a hand-written
//! `serde_json::Value` version — measured in one run, printed as ratios.
//! Nothing is asserted: this is a benchmark, not a test.

mod records;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Map, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_name() == ".weavster" || e.file_name() == "out" {
            continue;
        }
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// What `weavster compile` does: load, lower, build, precompile.
fn compile(root: &Path, host: &weavster_host::Host) -> anyhow::Result<Vec<weavster_build::Built>> {
    let loaded = weavster_project::load(&weavster_project::LoadOptions {
        project_dir: root.to_path_buf(),
        ..Default::default()
    })?;
    if !loaded.is_valid() {
        bail!("invalid project: {:?}", loaded.diagnostics);
    }
    let req = weavster_compile::Request {
        profile: weavster_compile::Profile::Release,
        ..Default::default()
    };
    let built = weavster_compile::compile(&loaded.project, &req, host, &mut |_| {})?.built;
    Ok(built)
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    // WEAVSTER_BENCH_DIR keeps the project and the native program (for a
    // profiler); by default they go to a temp dir.
    let tmp = tempfile::tempdir()?;
    let work = match std::env::var_os("WEAVSTER_BENCH_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d)?;
            d
        }
        None => tmp.path().to_path_buf(),
    };
    let root = work.join("orders");
    copy_dir(&repo().join("flows-examples/orders"), &root)?;
    let host = weavster_host::Host::new()?;

    eprintln!("cold build (dependencies included)…");
    let t = Instant::now();
    compile(&root, &host)?;
    let cold = t.elapsed().as_secs_f64();

    let t = Instant::now();
    compile(&root, &host)?;
    let unchanged = t.elapsed().as_secs_f64();

    let flow_file = root.join("flows/orders.yaml");
    let text = std::fs::read_to_string(&flow_file)?;
    std::fs::write(
        &flow_file,
        text.replace(
            "then: [ { add: { priority: high } } ]",
            "then: [ { add: { priority: high, flagged: true } } ]",
        ),
    )?;
    eprintln!("one flow changed…");
    let t = Instant::now();
    let built_changed = compile(&root, &host)?;
    let changed = t.elapsed().as_secs_f64();
    drop(built_changed);
    // Back to the example as it is (cached: no cargo run), which the
    // hand-written version implements.
    std::fs::write(&flow_file, text)?;
    let built = compile(&root, &host)?;
    let wasm = built.first().context("no flow built")?.wasm.clone();
    let wasm_size = std::fs::metadata(&wasm)?.len();

    eprintln!("building the native comparison program…");
    let native = native_program(&work, &root)?;
    let module = host.load(&wasm)?;
    let mut vars = Map::new();
    vars.insert("big_order_total".into(), serde_json::json!(100));
    let mut instance = module.instantiate(&vars)?;
    // The same module without the deadline's epoch checks: what they cost.
    let unbounded = weavster_host::Host::with_deadline(false)?;
    let mut free_instance = unbounded.load(&wasm)?.instantiate(&vars)?;
    println!("weavster benchmark — flows-examples/orders, {n} records, best of 3");
    println!();
    println!(
        "compile: cold {cold:.1}s · one flow changed {changed:.2}s · nothing changed {unchanged:.3}s · module {} KiB",
        wasm_size / 1024
    );
    for shape in ["narrow", "wide"] {
        let out = Command::new(&native)
            .args([n.to_string(), shape.to_string()])
            .output()?;
        if !out.status.success() {
            bail!(
                "native benchmark failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let native_rps: Map<String, Value> = serde_json::from_slice(&out.stdout)?;
        if native_rps.get("same_output") != Some(&Value::Bool(true)) {
            println!(
                "WARNING: the hand-written version's output differs from the flow's ({shape}):\n{}",
                native_rps
                    .get("first_difference")
                    .and_then(Value::as_str)
                    .unwrap_or("(different lengths)")
            );
        }
        let recs = records::records(n, shape);
        let bytes: usize = recs.iter().map(|r| r.to_string().len() + 1).sum();
        println!();
        println!(
            "transform, {shape} records ({} bytes on average):",
            bytes / n.max(1)
        );
        println!(
            "{:>6}  {:>14}  {:>14}  {:>14}  {:>16}  {:>12}  {:>12}  {:>14}",
            "batch",
            "wasm rec/s",
            "no-deadline",
            "native rec/s",
            "serde_json rec/s",
            "wasm/native",
            "wasm/naive",
            "deadline cost"
        );
        for size in [1usize, 64, 1024] {
            let batches = records::batches(&recs, size);
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                for b in &batches {
                    instance.process(b)?;
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            let wasm_rps = n as f64 / best;
            let mut best_free = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                for b in &batches {
                    free_instance.process(b)?;
                }
                best_free = best_free.min(t.elapsed().as_secs_f64());
            }
            let free_rps = n as f64 / best_free;
            let get = |k: &str| {
                native_rps
                    .get(k)
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::NAN)
            };
            let (nat, naive) = (
                get(&format!("native_{size}")),
                get(&format!("naive_{size}")),
            );
            println!(
                "{size:>6}  {wasm_rps:>14.0}  {free_rps:>14.0}  {nat:>14.0}  {naive:>16.0}  {:>11.2}×  {:>11.2}×  {:>13.0}%",
                wasm_rps / nat,
                wasm_rps / naive,
                100.0 * (1.0 - wasm_rps / free_rps)
            );
        }
    }
    println!();
    println!(
        "wasm/native ≥ 0.8× and wasm/naive ≥ 1.0× are the goals (throughput ratios: higher is better)."
    );
    Ok(())
}

/// Builds the native program: the generated flow crate as an rlib plus
/// `native/main.rs` and the hand-written version.
fn native_program(tmp: &Path, project: &Path) -> anyhow::Result<PathBuf> {
    let dir = tmp.join("native");
    let build = project.join(".weavster/build");
    let lib = build.join("flows/orders/src/lib.rs");
    let guest = build.join("weavster-guest");
    std::fs::create_dir_all(dir.join("flow/src"))?;
    std::fs::create_dir_all(dir.join("bench/src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        "[workspace]\nresolver = \"2\"\nmembers = [\"flow\", \"bench\"]\n\n[profile.release]\nopt-level = 3\nlto = \"fat\"\ncodegen-units = 1\npanic = \"abort\"\n",
    )?;
    std::fs::write(
        dir.join("flow/Cargo.toml"),
        format!(
            "[package]\nname = \"flow_native\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n[lib]\npath = {:?}\n\n[dependencies]\nweavster-guest = {{ path = {:?} }}\n",
            lib.display().to_string(),
            guest.display().to_string()
        ),
    )?;
    std::fs::write(
        dir.join("bench/Cargo.toml"),
        format!(
            "[package]\nname = \"bench_native\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n[dependencies]\nflow_native = {{ path = \"../flow\" }}\nweavster-guest = {{ path = {:?} }}\nserde_json = {{ version = \"1\", features = [\"preserve_order\"] }}\n",
            guest.display().to_string()
        ),
    )?;
    std::fs::write(
        dir.join("bench/src/main.rs"),
        include_str!("../native/main.rs"),
    )?;
    std::fs::write(
        dir.join("bench/src/naive.rs"),
        include_str!("../native/naive.rs"),
    )?;
    std::fs::write(dir.join("bench/src/records.rs"), include_str!("records.rs"))?;
    let status = Command::new("cargo")
        .current_dir(&dir)
        .args(["build", "--release", "-q"])
        .env_remove("CARGO_TARGET_DIR")
        .status()?;
    if !status.success() {
        bail!("building the native benchmark failed");
    }
    Ok(dir.join("target/release/bench_native"))
}
