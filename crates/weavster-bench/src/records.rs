//! Deterministic order records like the `orders` example's input.
//! Shared (by file) with the native benchmark program.

/// `shape`: `narrow` (8 flat fields, 6 of them touched by the flow) or
/// `wide` (the same plus what real order events carry: a shipping address,
/// line items, client details — 16 top-level fields, nested, ~800 bytes).
pub fn records(n: usize, shape: &str) -> Vec<serde_json::Value> {
    let countries = ["de", "fr", "us", "gb", "ca", "zz"];
    let statuses = ["new", "paid", "new", "test", "shipped"];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let amt = (x % 50_000) as f64 / 100.0;
            let mut r = serde_json::json!({
                "id": i,
                "cust": format!("  customer{}  ", x % 997),
                "amt": format!("{amt:.2}"),
                "qty": (x % 9) + 1,
                "country": countries[(x % 6) as usize],
                "status": statuses[((x >> 8) % 5) as usize],
                "internal_note": if x.is_multiple_of(3) { "vip" } else { "" },
                "email": format!("c{}@example.com", x % 997),
            });
            if shape == "wide" {
                let items: Vec<_> = (0..(x % 4) + 1)
                    .map(|k| {
                        serde_json::json!({
                            "sku": format!("SKU-{:05}", (x >> k) % 99_991),
                            "name": format!("Product number {} with a longer name", (x >> k) % 500),
                            "qty": k + 1,
                            "unit_price": ((x >> k) % 10_000) as f64 / 100.0,
                            "tags": ["catalog", "summer-sale"],
                        })
                    })
                    .collect();
                let extra = serde_json::json!({
                    "created_at": "2026-11-23T10:15:30.123Z",
                    "shipping": {
                        "name": format!("Customer {}", x % 997),
                        "street": format!("{} Long Street Name", x % 300),
                        "city": "Springfield",
                        "zip": format!("{:05}", x % 99_999),
                        "country": countries[(x % 6) as usize],
                    },
                    "items": items,
                    "client": {
                        "ip": format!("10.{}.{}.{}", x % 256, (x >> 8) % 256, (x >> 16) % 256),
                        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
                        "session": format!("{:016x}", x),
                    },
                    "channel": "web",
                    "coupon": null,
                    "notes": "Please leave the parcel at the back door if nobody answers.",
                    "version": 3,
                });
                if let (Some(r), serde_json::Value::Object(extra)) = (r.as_object_mut(), extra) {
                    r.extend(extra);
                }
            }
            r
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
