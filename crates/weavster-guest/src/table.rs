//! Lookup tables as data: a sorted table serialized at compile time and
//! read in place (binary search), so that a table's size costs bytes in the
//! module, not compiler time or code.
//!
//! Layout (little-endian `u32`s): `n`, then `n + 1` key offsets, then
//! `n + 1` value offsets (both into the data after them), then the data:
//! keys and values, UTF-8. Keys are sorted bytewise and unique.

/// A serialized table, read in place.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a>(&'a [u8]);

fn u32_at(b: &[u8], i: usize) -> usize {
    let s = i * 4;
    match b.get(s..s + 4) {
        Some(w) => u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize,
        None => 0,
    }
}

impl<'a> Table<'a> {
    pub const fn new(bytes: &'a [u8]) -> Table<'a> {
        Table(bytes)
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        u32_at(self.0, 0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn data(&self) -> &'a [u8] {
        let n = self.len();
        self.0.get(4 * (1 + 2 * (n + 1))..).unwrap_or_default()
    }

    fn key(&self, i: usize) -> &'a [u8] {
        let (a, b) = (u32_at(self.0, 1 + i), u32_at(self.0, 2 + i));
        self.data().get(a..b).unwrap_or_default()
    }

    fn value(&self, i: usize) -> &'a str {
        let n = self.len();
        let (a, b) = (u32_at(self.0, n + 2 + i), u32_at(self.0, n + 3 + i));
        self.data()
            .get(a..b)
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or_default()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        let (mut lo, mut hi) = (0, self.len());
        let key = key.as_bytes();
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.value(mid)),
            }
        }
        None
    }
}

/// Serializes `entries` (a key's first entry wins, as in the reference
/// interpreter's map… which rejects duplicates anyway).
pub fn encode(entries: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<&(String, String)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    sorted.dedup_by(|b, a| a.0 == b.0);
    let n = sorted.len();
    let mut data = Vec::new();
    let mut keys = Vec::with_capacity(n + 1);
    for (k, _) in &sorted {
        keys.push(data.len() as u32);
        data.extend_from_slice(k.as_bytes());
    }
    keys.push(data.len() as u32);
    let mut values = Vec::with_capacity(n + 1);
    for (_, v) in &sorted {
        values.push(data.len() as u32);
        data.extend_from_slice(v.as_bytes());
    }
    values.push(data.len() as u32);
    let mut out = Vec::with_capacity(4 * (1 + 2 * (n + 1)) + data.len());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for o in keys.iter().chain(&values) {
        out.extend_from_slice(&o.to_le_bytes());
    }
    out.extend_from_slice(&data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_key_and_nothing_else() {
        let entries: Vec<(String, String)> = [
            ("de", "Germany"),
            ("", "empty"),
            ("fr", "France"),
            ("é", "e"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let bytes = encode(&entries);
        let t = Table::new(&bytes);
        assert_eq!(t.len(), 4);
        for (k, v) in &entries {
            assert_eq!(t.get(k), Some(v.as_str()), "{k}");
        }
        for missing in ["d", "dee", "zz", "E"] {
            assert_eq!(t.get(missing), None);
        }
        let empty = encode(&[]);
        assert_eq!(Table::new(&empty).get("x"), None);
    }
}
