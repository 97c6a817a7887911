//! The function library. Every function has the signature [`Func`]; arity
//! and certain type errors were checked at compile time. A function on null
//! gives null, except `coalesce`, `default`, `is_null` (and `exists`, which
//! the compiler lowers to a path test).

use base64::Engine as _;
use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::Digest as _;

pub use crate::value::to_string;
use crate::value::{float, type_name};
use crate::{Ctx, R, RecordError};

/// Arguments are borrowed: generated code passes record fields and literals
/// without cloning them.
pub type Func = fn(&[&Value], &Ctx<'_>) -> R<Value>;

static NULL: Value = Value::Null;

fn arg<'a>(a: &[&'a Value], i: usize) -> &'a Value {
    a.get(i).copied().unwrap_or(&NULL)
}

fn want(name: &str, what: &str, v: &Value) -> RecordError {
    RecordError::transform(format!("`{name}` expects {what}, got {}", type_name(v)))
}

fn string_arg<'a>(name: &str, a: &[&'a Value], i: usize) -> R<Option<&'a str>> {
    match arg(a, i) {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => Err(want(name, "a string", other)),
    }
}

fn int_arg(name: &str, a: &[&Value], i: usize) -> R<Option<i64>> {
    match arg(a, i) {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| want(name, "an integer", arg(a, i))),
        other => Err(want(name, "an integer", other)),
    }
}

macro_rules! string_fn {
    ($name:ident, $f:expr) => {
        pub fn $name(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
            Ok(match string_arg(stringify!($name), a, 0)? {
                None => Value::Null,
                Some(s) => Value::String($f(s)),
            })
        }
    };
}

string_fn!(upper, |s: &str| s.to_uppercase());
string_fn!(lower, |s: &str| s.to_lowercase());

pub fn trim(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let Some(s) = string_arg("trim", a, 0)? else {
        return Ok(Value::Null);
    };
    Ok(Value::String(match a.get(1) {
        None => s.trim().to_string(),
        Some(_) => match string_arg("trim", a, 1)? {
            None => return Ok(Value::Null),
            Some(chars) => s.trim_matches(|c| chars.contains(c)).to_string(),
        },
    }))
}

pub fn length(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    Ok(match arg(a, 0) {
        Value::Null => Value::Null,
        Value::String(s) => Value::from(s.chars().count()),
        Value::Array(x) => Value::from(x.len()),
        Value::Object(m) => Value::from(m.len()),
        other => return Err(want("length", "a string, list or object", other)),
    })
}

fn number(name: &str, v: &Value) -> R<Option<f64>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_f64()),
        other => Err(want(name, "a number", other)),
    }
}

fn to_int(name: &str, x: f64) -> R<Value> {
    if x.is_finite() && x.abs() < 9.2e18 {
        Ok(Value::from(x as i64))
    } else {
        Err(RecordError::transform(format!(
            "`{name}`: {x} does not fit an integer"
        )))
    }
}

pub fn round(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let v = arg(a, 0);
    let digits = match a.get(1) {
        None => 0,
        Some(_) => match int_arg("round", a, 1)? {
            None => return Ok(Value::Null),
            Some(d) => d,
        },
    };
    if v.is_i64() || v.is_u64() {
        return Ok(v.clone());
    }
    let Some(x) = number("round", v)? else {
        return Ok(Value::Null);
    };
    let factor = 10f64.powi(digits.clamp(-300, 300) as i32);
    float((x * factor).round() / factor)
}

pub fn floor(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    if arg(a, 0).is_i64() {
        return Ok(arg(a, 0).clone());
    }
    match number("floor", arg(a, 0))? {
        None => Ok(Value::Null),
        Some(x) => to_int("floor", x.floor()),
    }
}

pub fn ceil(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    if arg(a, 0).is_i64() {
        return Ok(arg(a, 0).clone());
    }
    match number("ceil", arg(a, 0))? {
        None => Ok(Value::Null),
        Some(x) => to_int("ceil", x.ceil()),
    }
}

pub fn abs(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let v = arg(a, 0);
    if let Some(i) = v.as_i64() {
        return i
            .checked_abs()
            .map(Value::from)
            .ok_or_else(|| RecordError::transform("integer overflow in `abs`"));
    }
    match number("abs", v)? {
        None => Ok(Value::Null),
        Some(x) => float(x.abs()),
    }
}

pub fn int(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let v = arg(a, 0);
    match v {
        Value::Null => Ok(Value::Null),
        Value::Bool(b) => Ok(Value::from(i64::from(*b))),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(Value::from(i)),
            None => to_int("int", n.as_f64().unwrap_or(f64::NAN).trunc()),
        },
        Value::String(s) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                return Ok(Value::from(i));
            }
            match t.parse::<f64>() {
                Ok(x) if x.is_finite() => to_int("int", x.trunc()),
                _ => Err(RecordError::transform(format!(
                    "cannot convert \"{s}\" to an integer"
                ))),
            }
        }
        other => Err(want("int", "a string, number or boolean", other)),
    }
}

pub fn float_fn(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let v = arg(a, 0);
    match v {
        Value::Null => Ok(Value::Null),
        Value::Bool(b) => float(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => float(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => match s.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => float(x),
            _ => Err(RecordError::transform(format!(
                "cannot convert \"{s}\" to a float"
            ))),
        },
        other => Err(want("float", "a string, number or boolean", other)),
    }
}

pub fn string(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    Ok(match arg(a, 0) {
        Value::Null => Value::Null,
        v => Value::String(to_string(v)),
    })
}

pub fn bool_fn(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    Ok(match arg(a, 0) {
        Value::Null => Value::Null,
        Value::Bool(b) => Value::Bool(*b),
        Value::Number(n) => Value::Bool(n.as_f64().is_some_and(|x| x != 0.0)),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "on" | "1" => Value::Bool(true),
            "false" | "no" | "n" | "off" | "0" | "" => Value::Bool(false),
            _ => {
                return Err(RecordError::transform(format!(
                    "cannot convert \"{s}\" to a boolean"
                )));
            }
        },
        other => return Err(want("bool", "a string, number or boolean", other)),
    })
}

pub fn concat(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    if a.iter().any(|v| v.is_null()) {
        return Ok(Value::Null);
    }
    if a.iter().all(|v| v.is_array()) {
        return Ok(Value::Array(
            a.iter()
                .filter_map(|v| v.as_array())
                .flatten()
                .cloned()
                .collect(),
        ));
    }
    let mut out = String::new();
    for v in a {
        match *v {
            Value::String(s) => out.push_str(s),
            other => return Err(want("concat", "strings (or only lists)", other)),
        }
    }
    Ok(Value::String(out))
}

pub fn replace(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let (Some(s), Some(from), Some(to)) = (
        string_arg("replace", a, 0)?,
        string_arg("replace", a, 1)?,
        string_arg("replace", a, 2)?,
    ) else {
        return Ok(Value::Null);
    };
    if from.is_empty() {
        return Err(RecordError::transform(
            "`replace`: the text to replace is empty",
        ));
    }
    Ok(Value::String(s.replace(from, to)))
}

pub fn split(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let Some(s) = string_arg("split", a, 0)? else {
        return Ok(Value::Null);
    };
    let parts: Vec<Value> = match a.get(1) {
        None => s
            .split_whitespace()
            .map(|p| Value::String(p.into()))
            .collect(),
        Some(_) => match string_arg("split", a, 1)? {
            None => return Ok(Value::Null),
            Some("") => return Err(RecordError::transform("`split`: the separator is empty")),
            Some(sep) => s.split(sep).map(|p| Value::String(p.into())).collect(),
        },
    };
    Ok(Value::Array(parts))
}

pub fn join(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let items = match arg(a, 0) {
        Value::Null => return Ok(Value::Null),
        Value::Array(x) => x,
        other => return Err(want("join", "a list", other)),
    };
    let sep = match a.get(1) {
        None => "",
        Some(_) => match string_arg("join", a, 1)? {
            None => return Ok(Value::Null),
            Some(s) => s,
        },
    };
    let parts: Vec<String> = items
        .iter()
        .map(|v| {
            if v.is_null() {
                String::new()
            } else {
                to_string(v)
            }
        })
        .collect();
    Ok(Value::String(parts.join(sep)))
}

pub fn contains(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    crate::ops::contains_op(arg(a, 1), arg(a, 0))
}

pub fn starts_with(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    match (
        string_arg("starts_with", a, 0)?,
        string_arg("starts_with", a, 1)?,
    ) {
        (Some(s), Some(p)) => Ok(Value::Bool(s.starts_with(p))),
        _ => Ok(Value::Null),
    }
}

pub fn ends_with(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    match (
        string_arg("ends_with", a, 0)?,
        string_arg("ends_with", a, 1)?,
    ) {
        (Some(s), Some(p)) => Ok(Value::Bool(s.ends_with(p))),
        _ => Ok(Value::Null),
    }
}

pub fn substring(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let Some(s) = string_arg("substring", a, 0)? else {
        return Ok(Value::Null);
    };
    let Some(start) = int_arg("substring", a, 1)? else {
        return Ok(Value::Null);
    };
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len() as i64;
    let from = if start < 0 {
        (n + start).max(0)
    } else {
        start.min(n)
    };
    let to = match a.get(2) {
        None => n,
        Some(_) => match int_arg("substring", a, 2)? {
            None => return Ok(Value::Null),
            Some(len) if len < 0 => {
                return Err(RecordError::transform(
                    "`substring`: the length is negative",
                ));
            }
            Some(len) => from.saturating_add(len).min(n),
        },
    };
    Ok(Value::String(
        chars[from as usize..to as usize].iter().collect(),
    ))
}

pub fn coalesce(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    Ok(a.iter()
        .find(|v| !v.is_null())
        .map(|v| (*v).clone())
        .unwrap_or(Value::Null))
}

pub fn default(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    Ok(if arg(a, 0).is_null() {
        arg(a, 1).clone()
    } else {
        arg(a, 0).clone()
    })
}

pub fn is_null(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    Ok(Value::Bool(arg(a, 0).is_null()))
}

pub fn now(_: &[&Value], ctx: &Ctx<'_>) -> R<Value> {
    Ok(Value::String(ctx.now.to_string()))
}

pub fn uuid(_: &[&Value], ctx: &Ctx<'_>) -> R<Value> {
    let hi = ctx.next_random();
    let lo = ctx.next_random();
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&lo.to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(Value::String(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )))
}

pub fn parse_json(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let Some(s) = string_arg("parse_json", a, 0)? else {
        return Ok(Value::Null);
    };
    serde_json::from_str(s)
        .map_err(|e| RecordError::transform(format!("`parse_json`: invalid JSON: {e}")))
}

pub fn to_json(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    Ok(match arg(a, 0) {
        Value::Null => Value::Null,
        v => Value::String(v.to_string()),
    })
}

fn rfc3339(dt: DateTime<Utc>) -> Value {
    Value::String(dt.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn valid_format(fmt: &str) -> R<()> {
    if StrftimeItems::new(fmt).any(|i| matches!(i, Item::Error)) {
        return Err(RecordError::transform(format!(
            "invalid timestamp format `{fmt}`"
        )));
    }
    Ok(())
}

/// Parses a timestamp: RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]` (UTC) or
/// `YYYY-MM-DD` (midnight UTC) without a format; with one, strftime syntax.
pub fn parse_ts(s: &str, fmt: Option<&str>) -> R<DateTime<Utc>> {
    let bad = || RecordError::transform(format!("cannot parse \"{s}\" as a timestamp"));
    match fmt {
        None => {
            let t = s.trim();
            if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
                return Ok(dt.with_timezone(&Utc));
            }
            for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
                if let Ok(n) = NaiveDateTime::parse_from_str(t, f) {
                    return Ok(n.and_utc());
                }
            }
            NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|n| n.and_utc())
                .ok_or_else(bad)
        }
        Some(f) => {
            valid_format(f)?;
            if let Ok(dt) = DateTime::parse_from_str(s, f) {
                return Ok(dt.with_timezone(&Utc));
            }
            if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
                return Ok(n.and_utc());
            }
            NaiveDate::parse_from_str(s, f)
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|n| n.and_utc())
                .ok_or_else(bad)
        }
    }
}

pub fn parse_timestamp(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let Some(s) = string_arg("parse_timestamp", a, 0)? else {
        return Ok(Value::Null);
    };
    let fmt = match a.get(1) {
        None => None,
        Some(_) => match string_arg("parse_timestamp", a, 1)? {
            None => return Ok(Value::Null),
            f => f,
        },
    };
    parse_ts(s, fmt).map(rfc3339)
}

pub fn format_timestamp(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let (Some(s), Some(fmt)) = (
        string_arg("format_timestamp", a, 0)?,
        string_arg("format_timestamp", a, 1)?,
    ) else {
        return Ok(Value::Null);
    };
    valid_format(fmt)?;
    let dt = parse_ts(s, None)?;
    Ok(Value::String(dt.format(fmt).to_string()))
}

pub fn sha256(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let Some(s) = string_arg("sha256", a, 0)? else {
        return Ok(Value::Null);
    };
    let digest = sha2::Sha256::digest(s.as_bytes());
    Ok(Value::String(
        digest.iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

pub fn base64_encode(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let Some(s) = string_arg("base64_encode", a, 0)? else {
        return Ok(Value::Null);
    };
    Ok(Value::String(
        base64::engine::general_purpose::STANDARD.encode(s.as_bytes()),
    ))
}

pub fn base64_decode(a: &[&Value], _: &Ctx<'_>) -> R<Value> {
    let Some(s) = string_arg("base64_decode", a, 0)? else {
        return Ok(Value::Null);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| RecordError::transform(format!("`base64_decode`: {e}")))?;
    String::from_utf8(bytes)
        .map(Value::String)
        .map_err(|_| RecordError::transform("`base64_decode`: the decoded bytes are not UTF-8"))
}

pub fn var(a: &[&Value], ctx: &Ctx<'_>) -> R<Value> {
    let name = match arg(a, 0) {
        Value::String(s) => s,
        other => return Err(want("var", "a name", other)),
    };
    Ok(ctx
        .vars
        .get(name)
        .cloned()
        .unwrap_or_else(|| arg(a, 1).clone()))
}

/// The function of a name (the compiler checked it exists).
pub fn lookup(name: &str) -> Option<Func> {
    Some(match name {
        "upper" => upper,
        "lower" => lower,
        "trim" => trim,
        "length" => length,
        "round" => round,
        "floor" => floor,
        "ceil" => ceil,
        "abs" => abs,
        "int" => int,
        "float" => float_fn,
        "string" => string,
        "bool" => bool_fn,
        "concat" => concat,
        "replace" => replace,
        "split" => split,
        "join" => join,
        "contains" => contains,
        "starts_with" => starts_with,
        "ends_with" => ends_with,
        "substring" => substring,
        "coalesce" => coalesce,
        "default" => default,
        "is_null" => is_null,
        "now" => now,
        "uuid" => uuid,
        "parse_json" => parse_json,
        "to_json" => to_json,
        "parse_timestamp" => parse_timestamp,
        "format_timestamp" => format_timestamp,
        "sha256" => sha256,
        "base64_encode" => base64_encode,
        "base64_decode" => base64_decode,
        "var" => var,
        _ => return None,
    })
}

/// The Rust name of a function in this module (`float` → `float_fn`).
pub fn rust_name(name: &str) -> &str {
    match name {
        "float" => "float_fn",
        "bool" => "bool_fn",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn check(name: &str, args: Vec<Value>) -> Result<Value, String> {
        let vars: Map<String, Value> = [("min".to_string(), json!(3))].into_iter().collect();
        let ctx = Ctx::new("2026-01-01T00:00:00Z", 42, &vars);
        let f = lookup(name).ok_or("unknown")?;
        let refs: Vec<&Value> = args.iter().collect();
        f(&refs, &ctx).map_err(|e| e.message)
    }

    #[test]
    fn null_in_null_out() {
        for f in [
            "upper",
            "lower",
            "trim",
            "length",
            "round",
            "floor",
            "ceil",
            "abs",
            "int",
            "float",
            "string",
            "bool",
            "split",
            "join",
            "parse_json",
            "to_json",
            "parse_timestamp",
            "sha256",
            "base64_encode",
            "base64_decode",
        ] {
            assert_eq!(check(f, vec![Value::Null]), Ok(Value::Null), "{f}(null)");
        }
        for f in [
            "concat",
            "replace",
            "contains",
            "starts_with",
            "ends_with",
            "substring",
            "format_timestamp",
        ] {
            assert_eq!(
                check(f, vec![Value::Null, json!("a"), json!("b")]),
                Ok(Value::Null),
                "{f}(null, …)"
            );
        }
        assert_eq!(check("coalesce", vec![Value::Null, json!(1)]), Ok(json!(1)));
        assert_eq!(check("default", vec![Value::Null, json!(2)]), Ok(json!(2)));
        assert_eq!(check("is_null", vec![Value::Null]), Ok(json!(true)));
    }

    #[test]
    fn type_errors_are_record_errors() {
        assert!(check("upper", vec![json!(1)]).is_err());
        assert!(check("length", vec![json!(true)]).is_err());
        assert!(check("int", vec![json!("x1")]).is_err());
        assert!(check("float", vec![json!([1])]).is_err());
        assert!(check("bool", vec![json!("maybe")]).is_err());
        assert!(check("concat", vec![json!("a"), json!(1)]).is_err());
        assert!(check("parse_json", vec![json!("{")]).is_err());
        assert!(check("base64_decode", vec![json!("%%%")]).is_err());
        assert!(
            check(
                "format_timestamp",
                vec![json!("2026-01-01T00:00:00Z"), json!("%Q")]
            )
            .is_err()
        );
    }

    #[test]
    fn values() {
        assert_eq!(check("upper", vec![json!("straße")]), Ok(json!("STRASSE")));
        assert_eq!(
            check("trim", vec![json!("--a--"), json!("-")]),
            Ok(json!("a"))
        );
        assert_eq!(
            check("round", vec![json!(2.345), json!(2)]),
            Ok(json!(2.35))
        );
        assert_eq!(check("round", vec![json!(-2.5)]), Ok(json!(-3.0)));
        assert_eq!(check("floor", vec![json!(-1.5)]), Ok(json!(-2)));
        assert_eq!(check("int", vec![json!(" 12.9 ")]), Ok(json!(12)));
        assert_eq!(check("float", vec![json!("12.5")]), Ok(json!(12.5)));
        assert_eq!(
            check("string", vec![json!({"a": 1})]),
            Ok(json!("{\"a\":1}"))
        );
        assert_eq!(check("string", vec![json!(25.0)]), Ok(json!("25.0")));
        assert_eq!(
            check("concat", vec![json!([1]), json!([2])]),
            Ok(json!([1, 2]))
        );
        assert_eq!(check("split", vec![json!(" a  b ")]), Ok(json!(["a", "b"])));
        assert_eq!(
            check("join", vec![json!(["a", 1, null]), json!(",")]),
            Ok(json!("a,1,"))
        );
        assert_eq!(
            check("substring", vec![json!("héllo"), json!(1), json!(3)]),
            Ok(json!("éll"))
        );
        assert_eq!(
            check("substring", vec![json!("hello"), json!(-3)]),
            Ok(json!("llo"))
        );
        assert_eq!(
            check("contains", vec![json!([1, 2]), json!(2)]),
            Ok(json!(true))
        );
        assert_eq!(check("var", vec![json!("min")]), Ok(json!(3)));
        assert_eq!(check("var", vec![json!("nope"), json!(7)]), Ok(json!(7)));
        assert_eq!(check("now", vec![]), Ok(json!("2026-01-01T00:00:00Z")));
        assert_eq!(
            check("sha256", vec![json!("abc")]),
            Ok(json!(
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            ))
        );
        assert_eq!(check("base64_encode", vec![json!("hi")]), Ok(json!("aGk=")));
        assert_eq!(check("base64_decode", vec![json!("aGk=")]), Ok(json!("hi")));
        assert_eq!(
            check("parse_timestamp", vec![json!("2026-03-04T05:06:07+02:00")]),
            Ok(json!("2026-03-04T03:06:07Z"))
        );
        assert_eq!(
            check(
                "parse_timestamp",
                vec![json!("04/03/2026"), json!("%d/%m/%Y")]
            ),
            Ok(json!("2026-03-04T00:00:00Z"))
        );
        assert_eq!(
            check(
                "format_timestamp",
                vec![json!("2026-03-04T05:06:07Z"), json!("%Y%m%d")]
            ),
            Ok(json!("20260304"))
        );
        let u = check("uuid", vec![]).expect("uuid");
        assert_eq!(u.as_str().map(str::len), Some(36));
        assert_eq!(u.as_str().and_then(|s| s.chars().nth(14)), Some('4'));
    }
}
