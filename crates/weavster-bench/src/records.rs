//! Deterministic order records like the `orders` example's input.
//! Shared (by file) with the native benchmark program.

pub fn records(n: usize) -> Vec<serde_json::Value> {
    let countries = ["de", "fr", "us", "gb", "ca", "zz"];
    let statuses = ["new", "paid", "new", "test", "shipped"];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let amt = (x % 50_000) as f64 / 100.0;
            serde_json::json!({
                "id": i,
                "cust": format!("  customer{}  ", x % 997),
                "amt": format!("{amt:.2}"),
                "qty": (x % 9) + 1,
                "country": countries[(x % 6) as usize],
                "status": statuses[((x >> 8) % 5) as usize],
                "internal_note": if x.is_multiple_of(3) { "vip" } else { "" },
                "email": format!("c{}@example.com", x % 997),
            })
        })
        .collect()
}

/// Batches in the ABI v1 format.
pub fn batches(records: &[serde_json::Value], size: usize) -> Vec<Vec<u8>> {
    records
        .chunks(size)
        .map(|chunk| {
            let mut b = Vec::new();
            weavster_guest::abi::encode_batch("2026-01-01T00:00:00Z", 1, chunk, &mut b);
            b
        })
        .collect()
}
