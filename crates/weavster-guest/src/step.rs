//! Helpers for transform steps that are more than an expression.

use minijinja::Environment;
use regex::Regex;
use serde_json::{Map, Value};

use crate::path::{self, Seg};
use crate::{R, RecordError};

/// Whether the record goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Keep,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnNoMatch {
    Keep,
    Drop,
    Null,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMiss {
    Default,
    Keep,
    Drop,
    Error,
}

fn string_field<'v>(rec: &'v Value, field: &[Seg<'_>], what: &str) -> R<Option<&'v str>> {
    match path::get(rec, field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(RecordError::transform(format!(
            "{what}: `{}` is {}, not a string",
            path::display(field),
            crate::ops::type_name(other)
        ))
        .at(&path::display(field))),
    }
}

/// Named-group extraction. Groups go into an object at `into`, or merge
/// into the record. Unmatched optional groups are null.
pub fn regex_extract(
    rec: &mut Value,
    field: &[Seg<'_>],
    re: &Regex,
    into: Option<&[Seg<'_>]>,
    on_no_match: OnNoMatch,
) -> R<Flow> {
    let names: Vec<&str> = re.capture_names().flatten().collect();
    let captured: Option<Map<String, Value>> = match string_field(rec, field, "regex")? {
        None => None,
        Some(s) => re.captures(s).map(|caps| {
            names
                .iter()
                .map(|n| {
                    (
                        n.to_string(),
                        caps.name(n)
                            .map(|m| Value::String(m.as_str().to_string()))
                            .unwrap_or(Value::Null),
                    )
                })
                .collect()
        }),
    };
    let groups = match captured {
        Some(g) => g,
        None => match on_no_match {
            OnNoMatch::Keep => return Ok(Flow::Keep),
            OnNoMatch::Drop => return Ok(Flow::Drop),
            OnNoMatch::Error => {
                return Err(RecordError::transform(format!(
                    "`{}` does not match the pattern",
                    path::display(field)
                ))
                .at(&path::display(field)));
            }
            OnNoMatch::Null => {
                if let Some(into) = into {
                    path::set(rec, into, Value::Null)?;
                    return Ok(Flow::Keep);
                }
                names.iter().map(|n| (n.to_string(), Value::Null)).collect()
            }
        },
    };
    match into {
        Some(into) => path::set(rec, into, Value::Object(groups))?,
        None => {
            for (k, v) in groups {
                path::set(rec, &[Seg::Key(&k)], v)?;
            }
        }
    }
    Ok(Flow::Keep)
}

/// Replaces every match in the string at `field` (null stays null).
pub fn regex_replace(rec: &mut Value, field: &[Seg<'_>], re: &Regex, with: &str) -> R<()> {
    let Some(s) = string_field(rec, field, "regex")? else {
        return Ok(());
    };
    let out = re.replace_all(s, with).into_owned();
    path::set(rec, field, Value::String(out))
}

/// The key a value is looked up by: strings as they are, numbers and
/// booleans in their JSON form; null, lists and objects have none.
pub fn lookup_key(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

/// Translates `field` through a table (`get`), writing to `into`.
pub fn lookup<'t>(
    rec: &mut Value,
    field: &[Seg<'_>],
    get: impl Fn(&str) -> Option<&'t str>,
    into: &[Seg<'_>],
    on_miss: OnMiss,
    default: &Value,
) -> R<Flow> {
    let found = match path::get(rec, field) {
        Some(Value::String(k)) => get(k),
        other => lookup_key(other).and_then(|k| get(&k)),
    };
    match (found, on_miss) {
        (Some(v), _) => path::set(rec, into, Value::String(v.to_string()))?,
        (None, OnMiss::Default) => path::set(rec, into, default.clone())?,
        (None, OnMiss::Keep) => {}
        (None, OnMiss::Drop) => return Ok(Flow::Drop),
        (None, OnMiss::Error) => {
            let key = path::get(rec, field)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "null".into());
            return Err(
                RecordError::transform(format!("no entry for {key} in the lookup table"))
                    .at(&path::display(field)),
            );
        }
    }
    Ok(Flow::Keep)
}

/// Templates compiled once per instance.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// `sources`: (name, template source). A template that does not compile
    /// is an error of the whole flow (the compiler checked them).
    pub fn new(sources: &[(&str, &str)]) -> Result<Self, String> {
        let mut env = Environment::new();
        for (name, src) in sources {
            env.add_template_owned(name.to_string(), src.to_string())
                .map_err(|e| format!("template `{name}`: {e}"))?;
        }
        Ok(Templates { env })
    }

    /// Renders a template with the record as its context.
    pub fn render(&self, name: &str, rec: &Value) -> R<Value> {
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| RecordError::transform(e.to_string()))?;
        tmpl.render(minijinja::value::Value::from(minijinja::value::Serde(rec)))
            .map(Value::String)
            .map_err(|e| RecordError::transform(format!("template: {e}")))
    }
}

/// Appends a value as `{{ path }}` renders it: missing → nothing, strings as
/// they are, everything else as MiniJinja prints it (`None`, `True`, `25.0`). Used by templates that
/// are only substitutions, lowered to string building.
pub fn push_rendered(out: &mut String, v: Option<&Value>) {
    match v {
        None => {}
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => out.push_str(&n.to_string()),
        // The same text MiniJinja prints, without converting the value.
        Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {
            let text = n.as_f64().map(|f| f.to_string()).unwrap_or_default();
            out.push_str(&text);
            if !text.contains('.') {
                out.push_str(".0");
            }
        }
        Some(Value::Bool(b)) => out.push_str(if *b { "True" } else { "False" }),
        Some(Value::Null) => out.push_str("None"),
        Some(other) => {
            out.push_str(&minijinja::value::Value::from(minijinja::value::Serde(other)).to_string())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastType {
    Int,
    Float,
    String,
    Bool,
    Timestamp,
}

/// Converts the value at `segs` in place; missing and null stay as they are.
pub fn cast(rec: &mut Value, segs: &[Seg<'_>], ty: CastType, ctx: &crate::Ctx<'_>) -> R<()> {
    let Some(v) = path::get(rec, segs) else {
        return Ok(());
    };
    if v.is_null() {
        return Ok(());
    }
    let args = [v];
    let converted = match ty {
        CastType::Int => crate::func::int(&args, ctx),
        CastType::Float => crate::func::float_fn(&args, ctx),
        CastType::String => crate::func::string(&args, ctx),
        CastType::Bool => crate::func::bool_fn(&args, ctx),
        CastType::Timestamp => match v {
            Value::String(s) => crate::func::parse_ts(s, None)
                .map(|dt| Value::String(dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))),
            other => Err(RecordError::transform(format!(
                "cannot convert {} to a timestamp",
                crate::ops::type_name(other)
            ))),
        },
    }
    .map_err(|e| e.at(&path::display(segs)))?;
    path::set(rec, segs, converted)
}

/// The records of an `explode`: one per element of the list at `field`,
/// the element written to `into` (or replacing `field`). Missing or null
/// gives none.
pub fn explode(rec: Value, field: &[Seg<'_>], into: &[Seg<'_>]) -> R<Vec<Value>> {
    let items = match path::get(&rec, field) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => {
            return Err(RecordError::transform(format!(
                "explode: `{}` is {}, not a list",
                path::display(field),
                crate::ops::type_name(other)
            ))
            .at(&path::display(field)));
        }
    };
    let mut base = rec;
    path::remove(&mut base, field);
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let mut r = base.clone();
        path::set(&mut r, into, item)?;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lowered_substitution_matches_minijinja() {
        let rec = json!({"s": "x", "i": 3, "f": 25.0, "g": 1.5, "h": -0.1, "e": 1e21, "t": 1e-7, "b": true, "c": false,
            "n": null, "l": [1, "a"], "o": {"k": 1}, "u": u64::MAX});
        for key in [
            "s", "i", "f", "g", "h", "e", "t", "b", "c", "n", "l", "o", "u", "missing",
        ] {
            let t = Templates::new(&[("t", &format!("<{{{{ {key} }}}}>"))]).expect("template");
            let full = t.render("t", &rec).expect("render");
            let mut lowered = String::from("<");
            push_rendered(&mut lowered, rec.get(key));
            lowered.push('>');
            assert_eq!(Value::String(lowered), full, "{key}");
        }
    }

    #[test]
    fn extract_and_replace() {
        let re = Regex::new(r"^(?P<cc>\d+)-(?P<n>\d+)$").expect("re");
        let mut rec = json!({"p": "49-123"});
        assert_eq!(
            regex_extract(
                &mut rec,
                &[Seg::Key("p")],
                &re,
                Some(&[Seg::Key("parts")]),
                OnNoMatch::Keep
            ),
            Ok(Flow::Keep)
        );
        assert_eq!(rec["parts"], json!({"cc": "49", "n": "123"}));
        let mut rec = json!({"p": "x"});
        assert_eq!(
            regex_extract(&mut rec, &[Seg::Key("p")], &re, None, OnNoMatch::Drop),
            Ok(Flow::Drop)
        );
        assert!(regex_extract(&mut rec, &[Seg::Key("p")], &re, None, OnNoMatch::Error).is_err());
        let ws = Regex::new(r"\s+").expect("re");
        let mut rec = json!({"note": "a   b"});
        regex_replace(&mut rec, &[Seg::Key("note")], &ws, " ").expect("replace");
        assert_eq!(rec["note"], json!("a b"));
    }

    #[test]
    fn explode_one_per_element() {
        let out = explode(
            json!({"id": 1, "items": [1, 2]}),
            &[Seg::Key("items")],
            &[Seg::Key("item")],
        )
        .expect("ok");
        assert_eq!(
            out,
            vec![json!({"id": 1, "item": 1}), json!({"id": 1, "item": 2})]
        );
    }
}
