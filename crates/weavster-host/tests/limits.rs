//! Runaway and failing guests: stopped by the deadline, their instance
//! poisoned, a new instance of the same module works.

use std::path::Path;
use std::time::Duration;

use serde_json::Map;
use weavster_host::{Host, HostError};

/// A minimal ABI v1 module whose `weavster_process` loops forever when the
/// batch's first byte is `L`, traps (unreachable) on `T`, and otherwise
/// returns an empty output.
const GUEST: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "weavster_abi_version") (result i32) i32.const 1)
  (func (export "weavster_input") (param i32) (result i32) i32.const 1024)
  (func (export "weavster_init") (param i32) (result i32) i32.const 0)
  (func (export "weavster_output") (result i32) i32.const 2048)
  (func (export "weavster_output_len") (result i32) i32.const 0)
  (func (export "weavster_process") (param i32) (result i32)
    (if (i32.eq (i32.load8_u (i32.const 1024)) (i32.const 76))
      (then (loop $forever (br $forever))))
    (if (i32.eq (i32.load8_u (i32.const 1024)) (i32.const 84))
      (then unreachable))
    i32.const 0))
"#;

/// Runs `batches` on one instance (replacing it after a failure, as the
/// runtime does); returns what each call gave.
fn check(batches: &[&str]) -> Vec<String> {
    let mut host = Host::new().expect("host");
    host.batch_deadline = Duration::from_millis(200);
    let module = host
        .load_bytes(GUEST.as_bytes(), Path::new("loop.wasm"))
        .expect("loads");
    let mut inst = module.instantiate(&Map::new()).expect("instance");
    batches
        .iter()
        .map(|b| match inst.process(b.as_bytes()) {
            Ok(out) => format!("ok {}", out.len()),
            Err(e) => {
                let poisoned = matches!(inst.process(b"x"), Err(HostError::Poisoned));
                inst = module.instantiate(&Map::new()).expect("new instance");
                match e {
                    HostError::Deadline(d) => format!("deadline {d:?} poisoned={poisoned}"),
                    HostError::Trap(m) => {
                        // The cause leads; the backtrace follows it.
                        let first = m.lines().next().unwrap_or("");
                        format!("trap {} poisoned={poisoned}", first.contains("unreachable"))
                    }
                    other => format!("other {other}"),
                }
            }
        })
        .collect()
}

#[test]
fn a_runaway_guest_is_stopped_and_replaced() {
    assert_eq!(
        check(&["ok", "L loop", "ok", "T trap", "ok"]),
        [
            "ok 0",
            "deadline 200ms poisoned=true",
            "ok 0",
            "trap true poisoned=true",
            "ok 0"
        ]
    );
}
