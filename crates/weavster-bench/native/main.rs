//! Native side of the transform benchmark: the generated flow compiled
//! natively, and the hand-written version. Prints one JSON object.

mod naive;
mod records;

use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let shape = std::env::args().nth(2).unwrap_or_else(|| "narrow".into());
    let recs = records::records(n, &shape);
    let mut vars = weavster_guest::Map::new();
    vars.insert("big_order_total".into(), serde_json::json!(100));
    let flow = flow_native::Compiled::new(&vars).expect("flow");
    let hand = naive::Naive::new();
    let mut out = Vec::new();
    let mut result = serde_json::Map::new();
    // The comparison is fair only if both do the same work: same output bytes.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for batch in records::batches(&recs, 64) {
        weavster_guest::abi::process_batch(&flow, &vars, &batch, &mut a).expect("batch");
        hand.process(&batch, &mut b);
    }
    result.insert("same_output".into(), serde_json::json!(a == b));
    if let Some((x, y)) = a.split(|c| *c == b'\n').zip(b.split(|c| *c == b'\n')).find(|(x, y)| x != y) {
        let diff = format!("flow:  {}\nnaive: {}", String::from_utf8_lossy(x), String::from_utf8_lossy(y));
        result.insert("first_difference".into(), serde_json::json!(diff));
    }
    for size in [1usize, 64, 1024] {
        let batches = records::batches(&recs, size);
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let t = Instant::now();
            for b in &batches {
                out.clear();
                weavster_guest::abi::process_batch(&flow, &vars, b, &mut out).expect("batch");
            }
            best.0 = best.0.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for b in &batches {
                out.clear();
                hand.process(b, &mut out);
            }
            best.1 = best.1.min(t.elapsed().as_secs_f64());
        }
        result.insert(format!("native_{size}"), serde_json::json!(n as f64 / best.0));
        result.insert(format!("naive_{size}"), serde_json::json!(n as f64 / best.1));
    }
    println!("{}", serde_json::Value::Object(result));
}
