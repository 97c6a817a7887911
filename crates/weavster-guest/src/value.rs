//! What a value is and what it converts to: type names (for messages),
//! truthiness, floats as JSON numbers, the string form. Shared by the
//! operators (`ops`) and the functions (`func`), which depend on this
//! module and not on each other's helpers.

use serde_json::{Number, Value};

use crate::{R, RecordError};

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Jinja truthiness: null, false, 0, "", [] and {} are false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// A float as a JSON value; NaN and infinities are record errors.
pub fn float(x: f64) -> R<Value> {
    Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| RecordError::transform(format!("the result is not a finite number ({x})")))
}

/// The string form of a value: strings as they are, everything else as JSON.
pub fn to_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
