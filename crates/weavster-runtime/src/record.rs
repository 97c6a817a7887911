//! A record's fields as the JSON text they are. What a sink takes out of a
//! record — a Kafka key or header, a CSV cell, a PostgreSQL upsert key — is
//! the field's text as it was sent, never a number read into an `f64` and
//! printed again (`1e400` would be refused, `1.50` written `1.50`, not
//! `1.5`; a 30-digit integer keeps every digit).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Why a record's fields cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a JSON object")]
    NotObject,
}

/// A JSON object's members in order, each value its raw text. A name
/// given twice keeps its first place and its last value (as serde_json's
/// map does).
pub(crate) type Fields<'r> = Vec<(Cow<'r, str>, &'r RawValue)>;

/// The members of the JSON object `text`.
pub(crate) fn fields(text: &str) -> Result<Fields<'_>, RecordError> {
    if !text.trim_start().starts_with('{') {
        // Still say "invalid JSON" for what is not JSON at all.
        serde_json::from_str::<&RawValue>(text)?;
        return Err(RecordError::NotObject);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let out = de.deserialize_map(FieldsVisitor)?;
    de.end()?;
    Ok(out)
}

/// The value at `path` (object members by name, array elements by index)
/// in the JSON text `text`; `None` where the path leads nowhere.
#[cfg(test)]
pub(crate) fn at_path<'r>(
    text: &'r str,
    path: &[String],
) -> Result<Option<&'r RawValue>, RecordError> {
    if path.is_empty() {
        return Ok(Some(serde_json::from_str(text)?));
    }
    match fields(text) {
        Ok(f) => lookup(&f, path),
        Err(RecordError::NotObject) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The value at `path` in a record already split into its `fields` (so
/// that several paths of one record parse its top level once).
pub(crate) fn lookup<'r>(
    fields: &Fields<'r>,
    path: &[String],
) -> Result<Option<&'r RawValue>, RecordError> {
    let Some((first, rest)) = path.split_first() else {
        return Ok(None);
    };
    let Some(mut here) = fields.iter().find(|(k, _)| k == first).map(|(_, v)| *v) else {
        return Ok(None);
    };
    for seg in rest {
        let inner = here.get().trim_start();
        let next = if inner.starts_with('{') {
            member(inner, seg)?
        } else if inner.starts_with('[') {
            let items: Vec<&RawValue> = serde_json::from_str(inner)?;
            seg.parse::<usize>()
                .ok()
                .and_then(|i| items.get(i).copied())
        } else {
            None
        };
        match next {
            Some(v) => here = v,
            None => return Ok(None),
        }
    }
    Ok(Some(here))
}

/// Member `name` of the JSON object `text` (`None` if `text` is no object
/// or has no such member).
fn member<'r>(text: &'r str, name: &str) -> Result<Option<&'r RawValue>, RecordError> {
    match fields(text) {
        Ok(f) => Ok(f.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)),
        Err(RecordError::NotObject) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A value as text for a key, a header or a cell: a string unescaped,
/// null as `None`, anything else as its JSON text in the record.
pub(crate) fn text(raw: &RawValue) -> Option<Cow<'_, str>> {
    let t = raw.get();
    match t.as_bytes().first() {
        Some(b'n') => None,
        Some(b'"') => serde_json::from_str::<String>(t).ok().map(Cow::Owned),
        _ => Some(Cow::Borrowed(t)),
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut out: Fields<'de> = Vec::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let value: &'de RawValue = map.next_value()?;
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => out.push((key, value)),
            }
        }
        Ok(out)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Fields<'de>, A::Error> {
        Err(de::Error::custom("not a JSON object"))
    }
}

/// A member name, borrowed from the text when it has no escapes.
struct Key;

impl<'de> de::DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(Key)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn values_keep_their_text() {
        let r = r#"{"big":1e400,"f":1.50,"n":123456789012345678901234567890,"s":"a\"b","z":null,"o":{"x":[1, 2.0]},"e\u00e9":true}"#;
        let got = |p: &[&str]| {
            at_path(r, &path(p))
                .expect("JSON")
                .and_then(text)
                .map(|c| c.into_owned())
        };
        assert_eq!(got(&["big"]).as_deref(), Some("1e400"));
        assert_eq!(got(&["f"]).as_deref(), Some("1.50"));
        assert_eq!(
            got(&["n"]).as_deref(),
            Some("123456789012345678901234567890")
        );
        assert_eq!(got(&["s"]).as_deref(), Some("a\"b"));
        assert_eq!(got(&["z"]), None);
        assert_eq!(got(&["missing"]), None);
        assert_eq!(got(&["o", "x", "1"]).as_deref(), Some("2.0"));
        assert_eq!(got(&["o", "x"]).as_deref(), Some("[1, 2.0]"));
        assert_eq!(got(&["eé"]).as_deref(), Some("true"));
        assert_eq!(got(&["s", "x"]), None);
    }

    #[test]
    fn fields_in_order_with_the_last_of_a_repeated_name() {
        let f = fields(r#"{"b":1,"a":2,"b":3}"#).expect("object");
        let got: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_ref(), v.get())).collect();
        assert_eq!(got, [("b", "3"), ("a", "2")]);
        assert!(matches!(fields("[1]"), Err(RecordError::NotObject)));
        assert!(matches!(fields("{"), Err(RecordError::Json(_))));
        assert!(matches!(fields("nope"), Err(RecordError::Json(_))));
        assert!(matches!(fields(r#"{"a":1} x"#), Err(RecordError::Json(_))));
    }
}
