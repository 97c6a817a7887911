//! The `orders` example flow written by hand over `serde_json::Value`, the
//! straightforward way: parse every record, transform it, serialize it.

use std::collections::HashMap;
use std::io::Write as _;

use serde_json::Value;

pub struct Naive {
    countries: HashMap<&'static str, &'static str>,
    big_order_total: f64,
}

impl Naive {
    pub fn new() -> Self {
        let countries = [("DE", "Germany"), ("FR", "France"), ("GB", "United Kingdom"), ("US", "United States"), ("CA", "Canada")];
        Naive { countries: countries.into_iter().collect(), big_order_total: 100.0 }
    }

    fn text(v: Option<&Value>) -> String {
        match v {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        }
    }

    /// Returns the routes and the record, or None when filtered.
    pub fn transform(&self, mut rec: Value) -> Option<(Vec<u32>, Value)> {
        let obj = rec.as_object_mut()?;
        if let Some(v) = obj.shift_remove("cust") {
            obj.insert("customer_id".into(), v);
        }
        if let Some(v) = obj.shift_remove("amt") {
            obj.insert("amount".into(), v);
        }
        let cid = obj.get("customer_id").and_then(Value::as_str).map(|s| s.trim().to_uppercase());
        let amount = obj.get("amount").and_then(|v| match v {
            Value::String(s) => s.trim().parse::<f64>().ok(),
            other => other.as_f64(),
        });
        let country = obj.get("country").and_then(Value::as_str).map(str::to_uppercase);
        obj.insert("customer_id".into(), cid.map(Value::from).unwrap_or(Value::Null));
        obj.insert("amount".into(), amount.map(Value::from).unwrap_or(Value::Null));
        obj.insert("country".into(), country.clone().map(Value::from).unwrap_or(Value::Null));
        let qty = obj.get("qty").and_then(Value::as_f64).unwrap_or(0.0);
        let total = amount.map(|a| (a * qty * 100.0).round() / 100.0);
        obj.insert("total".into(), total.map(Value::from).unwrap_or(Value::Null));
        if obj.get("currency").is_none_or(Value::is_null) {
            obj.insert("currency".into(), Value::from("EUR"));
        }
        if obj.get("status").and_then(Value::as_str) == Some("test") {
            return None;
        }
        let name = country.as_deref().and_then(|c| self.countries.get(c)).copied().unwrap_or("Unknown");
        obj.insert("country_name".into(), Value::from(name));
        let summary = format!(
            "{} ordered {} for {} {}",
            Self::text(obj.get("customer_id")),
            Self::text(obj.get("qty")),
            Self::text(obj.get("total")),
            Self::text(obj.get("currency"))
        );
        obj.insert("summary".into(), Value::from(summary));
        let big = total.is_some_and(|t| t >= self.big_order_total);
        obj.insert("priority".into(), Value::from(if big { "high" } else { "normal" }));
        obj.shift_remove("internal_note");
        Some((if big { vec![0, 1] } else { vec![0] }, rec))
    }

    /// The same batch format and outcome encoding as a compiled flow.
    pub fn process(&self, batch: &[u8], out: &mut Vec<u8>) {
        for (i, line) in batch.split(|b| *b == b'\n').skip(1).enumerate() {
            let Ok(rec) = serde_json::from_slice::<Value>(line) else { continue };
            match self.transform(rec) {
                Some((routes, r)) => {
                    let routes: Vec<String> = routes.iter().map(u32::to_string).collect();
                    let _ = write!(out, "{{\"i\":{i},\"o\":[{}],\"r\":", routes.join(","));
                    let _ = serde_json::to_writer(&mut *out, &r);
                    out.extend_from_slice(b"}\n");
                }
                None => {
                    let _ = writeln!(out, "{{\"i\":{i},\"f\":1}}");
                }
            }
        }
    }
}
