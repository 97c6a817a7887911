//! Record paths: `a.b[0]['k']` as a slice of segments.

use serde_json::{Map, Value};

use crate::{R, RecordError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(&'a str),
    /// Negative indexes count from the end.
    Idx(i64),
}

/// `a.b[0]['x y']` for messages.
pub fn display(segs: &[Seg<'_>]) -> String {
    let mut s = String::new();
    for (i, seg) in segs.iter().enumerate() {
        match seg {
            Seg::Key(k) if k.chars().all(|c| c.is_alphanumeric() || c == '_') && !k.is_empty() => {
                if i > 0 {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Key(k) => s.push_str(&format!("['{}']", k.replace('\'', "\\'"))),
            Seg::Idx(n) => s.push_str(&format!("[{n}]")),
        }
    }
    s
}

fn index(len: usize, i: i64) -> Option<usize> {
    let i = if i < 0 { len as i64 + i } else { i };
    (0..len as i64).contains(&i).then_some(i as usize)
}

/// The value at `segs`; `None` when any step is missing.
pub fn get<'v>(v: &'v Value, segs: &[Seg<'_>]) -> Option<&'v Value> {
    let mut cur = v;
    for seg in segs {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get(*k)?,
            (Seg::Idx(i), Value::Array(a)) => a.get(index(a.len(), *i)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

static NULL: Value = Value::Null;

/// The value at `segs`, or a reference to null.
pub fn get_ref<'v>(v: &'v Value, segs: &[Seg<'_>]) -> &'v Value {
    get(v, segs).unwrap_or(&NULL)
}

/// The value at `segs`, or null.
pub fn get_or_null(v: &Value, segs: &[Seg<'_>]) -> Value {
    get(v, segs).cloned().unwrap_or(Value::Null)
}

/// Whether the path is present (its value may be null).
pub fn exists(v: &Value, segs: &[Seg<'_>]) -> bool {
    get(v, segs).is_some()
}

/// Sets the value at `segs`, creating objects for missing keys.
pub fn set(v: &mut Value, segs: &[Seg<'_>], new: Value) -> R<()> {
    let Some((last, parents)) = segs.split_last() else {
        return match new {
            Value::Object(_) => {
                *v = new;
                Ok(())
            }
            _ => Err(RecordError::transform("a record must stay an object")),
        };
    };
    let mut cur = v;
    for (i, seg) in parents.iter().enumerate() {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(m)) => {
                if !m.contains_key(*k) {
                    m.insert(k.to_string(), Value::Null);
                }
                let entry = m
                    .get_mut(*k)
                    .ok_or_else(|| RecordError::transform("internal: key vanished"))?;
                if entry.is_null() {
                    *entry = Value::Object(Map::new());
                }
                entry
            }
            (Seg::Idx(n), Value::Array(a)) => {
                let len = a.len();
                let at = index(len, *n).ok_or_else(|| {
                    RecordError::transform(format!("index {n} is out of range (length {len})"))
                        .at(&display(&segs[..=i]))
                })?;
                &mut a[at]
            }
            (_, other) => {
                return Err(RecordError::transform(format!(
                    "cannot set `{}`: `{}` is {}",
                    display(segs),
                    display(&segs[..i]),
                    crate::ops::type_name(other)
                ))
                .at(&display(segs)));
            }
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(m)) => {
            // Overwriting an existing key allocates nothing.
            match m.get_mut(*k) {
                Some(slot) => *slot = new,
                None => {
                    m.insert(k.to_string(), new);
                }
            }
            Ok(())
        }
        (Seg::Idx(n), Value::Array(a)) => {
            let len = a.len();
            let at = index(len, *n).ok_or_else(|| {
                RecordError::transform(format!("index {n} is out of range (length {len})"))
                    .at(&display(segs))
            })?;
            a[at] = new;
            Ok(())
        }
        (_, other) => Err(RecordError::transform(format!(
            "cannot set `{}`: `{}` is {}",
            display(segs),
            display(parents),
            crate::ops::type_name(other)
        ))
        .at(&display(segs))),
    }
}

/// Removes and returns the value at `segs`.
pub fn remove(v: &mut Value, segs: &[Seg<'_>]) -> Option<Value> {
    let (last, parents) = segs.split_last()?;
    let mut cur = v;
    for seg in parents {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(*k)?,
            (Seg::Idx(i), Value::Array(a)) => {
                let at = index(a.len(), *i)?;
                a.get_mut(at)?
            }
            _ => return None,
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(m)) => m.shift_remove(*k),
        (Seg::Idx(i), Value::Array(a)) => {
            let at = index(a.len(), *i)?;
            Some(a.remove(at))
        }
        _ => None,
    }
}

/// A new record holding only `paths` (missing ones are left out).
pub fn select(v: &Value, paths: &[&[Seg<'_>]]) -> R<Value> {
    let mut out = Value::Object(Map::new());
    for p in paths {
        if let Some(x) = get(v, p) {
            // Indexes in selected paths keep only that element, as a key-less
            // copy: `items[0]` selects the element into `items` as a list of one.
            let keys: Vec<Seg<'_>> = p
                .iter()
                .map(|s| if let Seg::Idx(_) = s { Seg::Idx(0) } else { *s })
                .collect();
            set_creating_lists(&mut out, &keys, x.clone())?;
        }
    }
    Ok(out)
}

fn set_creating_lists(v: &mut Value, segs: &[Seg<'_>], new: Value) -> R<()> {
    let mut cur = v;
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        match seg {
            Seg::Key(k) => {
                let m = match cur {
                    Value::Object(m) => m,
                    _ => {
                        return Err(
                            RecordError::transform("overlapping `select` paths").at(&display(segs))
                        );
                    }
                };
                if last {
                    m.insert(k.to_string(), new);
                    return Ok(());
                }
                let next_is_idx = matches!(segs.get(i + 1), Some(Seg::Idx(_)));
                cur = m.entry(k.to_string()).or_insert_with(|| {
                    if next_is_idx {
                        Value::Array(Vec::new())
                    } else {
                        Value::Object(Map::new())
                    }
                });
            }
            Seg::Idx(_) => {
                let a = match cur {
                    Value::Array(a) => a,
                    _ => {
                        return Err(
                            RecordError::transform("overlapping `select` paths").at(&display(segs))
                        );
                    }
                };
                if last {
                    a.push(new);
                    return Ok(());
                }
                let next_is_idx = matches!(segs.get(i + 1), Some(Seg::Idx(_)));
                a.push(if next_is_idx {
                    Value::Array(Vec::new())
                } else {
                    Value::Object(Map::new())
                });
                let at = a.len() - 1;
                cur = &mut a[at];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn get_set_remove() {
        let mut v = json!({"a": {"b": [1, 2, 3]}});
        assert_eq!(
            get(&v, &[Seg::Key("a"), Seg::Key("b"), Seg::Idx(-1)]),
            Some(&json!(3))
        );
        set(&mut v, &[Seg::Key("x"), Seg::Key("y")], json!(1)).expect("set");
        assert_eq!(v["x"]["y"], json!(1));
        assert!(
            set(
                &mut v,
                &[Seg::Key("x"), Seg::Key("y"), Seg::Key("z")],
                json!(1)
            )
            .is_err()
        );
        assert_eq!(
            remove(&mut v, &[Seg::Key("a")]),
            Some(json!({"b": [1, 2, 3]}))
        );
        assert_eq!(
            display(&[Seg::Key("a"), Seg::Key("k y"), Seg::Idx(0)]),
            "a['k y'][0]"
        );
    }

    #[test]
    fn select_keeps_only_paths() {
        let v = json!({"a": {"b": 1, "c": 2}, "d": 3});
        let out = select(
            &v,
            &[
                &[Seg::Key("a"), Seg::Key("b")],
                &[Seg::Key("d")],
                &[Seg::Key("zz")],
            ],
        )
        .expect("ok");
        assert_eq!(out, json!({"a": {"b": 1}, "d": 3}));
    }
}
