//! Operators. Null rules: arithmetic, `~` and `in` on null give null;
//! `==`/`!=` compare nulls; ordering comparisons with null are false.
//! Integers stay integers (overflow is a record error); any float makes a float.

use serde_json::Value;

pub use crate::value::{float, truthy, type_name};
use crate::{R, RecordError};

#[derive(Clone, Copy)]
enum Num {
    I(i64),
    F(f64),
}

fn num(v: &Value) -> Option<Num> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(Num::I(i)),
            None => n.as_f64().map(Num::F),
        },
        _ => None,
    }
}

fn f(n: Num) -> f64 {
    match n {
        Num::I(i) => i as f64,
        Num::F(x) => x,
    }
}

fn mismatch(op: &str, a: &Value, b: &Value) -> RecordError {
    RecordError::transform(format!(
        "cannot apply `{op}` to {} and {}",
        type_name(a),
        type_name(b)
    ))
}

fn overflow(op: &str) -> RecordError {
    RecordError::transform(format!("integer overflow in `{op}`"))
}

fn arith(
    op: &str,
    a: &Value,
    b: &Value,
    int: fn(i64, i64) -> Option<i64>,
    flt: fn(f64, f64) -> f64,
) -> R<Value> {
    if a.is_null() || b.is_null() {
        return Ok(Value::Null);
    }
    match (num(a), num(b)) {
        (Some(Num::I(x)), Some(Num::I(y))) => {
            int(x, y).map(Value::from).ok_or_else(|| overflow(op))
        }
        (Some(x), Some(y)) => float(flt(f(x), f(y))),
        _ => Err(mismatch(op, a, b)),
    }
}

pub fn add(a: &Value, b: &Value) -> R<Value> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Ok(Value::String(format!("{x}{y}"))),
        (Value::Array(x), Value::Array(y)) => {
            Ok(Value::Array(x.iter().chain(y).cloned().collect()))
        }
        _ => arith("+", a, b, i64::checked_add, |x, y| x + y),
    }
}

pub fn sub(a: &Value, b: &Value) -> R<Value> {
    arith("-", a, b, i64::checked_sub, |x, y| x - y)
}

pub fn mul(a: &Value, b: &Value) -> R<Value> {
    arith("*", a, b, i64::checked_mul, |x, y| x * y)
}

fn zero(b: &Value) -> bool {
    num(b).is_some_and(|n| f(n) == 0.0)
}

/// The shared rules of `/`, `//` and `%`: null gives null, a zero divisor
/// is a record error, non-numbers are a mismatch.
fn division(
    op: &str,
    a: &Value,
    b: &Value,
    int: fn(i64, i64) -> R<Value>,
    flt: fn(f64, f64) -> R<Value>,
) -> R<Value> {
    if a.is_null() || b.is_null() {
        return Ok(Value::Null);
    }
    if zero(b) && num(a).is_some() {
        return Err(RecordError::transform("division by zero"));
    }
    match (num(a), num(b)) {
        (Some(Num::I(x)), Some(Num::I(y))) => int(x, y),
        (Some(x), Some(y)) => flt(f(x), f(y)),
        _ => Err(mismatch(op, a, b)),
    }
}

/// `/` always gives a float.
pub fn div(a: &Value, b: &Value) -> R<Value> {
    division(
        "/",
        a,
        b,
        |x, y| float(x as f64 / y as f64),
        |x, y| float(x / y),
    )
}

/// `//` floors; integers stay integers.
pub fn floordiv(a: &Value, b: &Value) -> R<Value> {
    division(
        "//",
        a,
        b,
        |x, y| {
            let q = x.checked_div(y).ok_or_else(|| overflow("//"))?;
            Ok(Value::from(if x % y != 0 && ((x < 0) != (y < 0)) {
                q - 1
            } else {
                q
            }))
        },
        |x, y| float((x / y).floor()),
    )
}

/// `%` takes the sign of the divisor (as in Python and Jinja).
pub fn rem(a: &Value, b: &Value) -> R<Value> {
    division(
        "%",
        a,
        b,
        |x, y| {
            let r = x.checked_rem(y).ok_or_else(|| overflow("%"))?;
            Ok(Value::from(if r != 0 && (r < 0) != (y < 0) {
                r + y
            } else {
                r
            }))
        },
        |x, y| float(x - y * (x / y).floor()),
    )
}

pub fn pow(a: &Value, b: &Value) -> R<Value> {
    if a.is_null() || b.is_null() {
        return Ok(Value::Null);
    }
    match (num(a), num(b)) {
        (Some(Num::I(x)), Some(Num::I(y))) if y >= 0 => u32::try_from(y)
            .ok()
            .and_then(|y| x.checked_pow(y))
            .map(Value::from)
            .ok_or_else(|| overflow("**")),
        (Some(x), Some(y)) => float(f(x).powf(f(y))),
        _ => Err(mismatch("**", a, b)),
    }
}

/// `~`: string forms joined.
pub fn concat(a: &Value, b: &Value) -> R<Value> {
    if a.is_null() || b.is_null() {
        return Ok(Value::Null);
    }
    let mut s = crate::value::to_string(a);
    s.push_str(&crate::value::to_string(b));
    Ok(Value::String(s))
}

/// Equality; integers and floats compare by value.
pub fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => match (num(a), num(b)) {
            (Some(Num::I(x)), Some(Num::I(y))) => x == y,
            (Some(x), Some(y)) => f(x) == f(y),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

pub fn eq(a: &Value, b: &Value) -> R<Value> {
    Ok(Value::Bool(equal(a, b)))
}

pub fn ne(a: &Value, b: &Value) -> R<Value> {
    Ok(Value::Bool(!equal(a, b)))
}

/// Ordering; `None` when either side is null (the comparison is false).
fn order(op: &str, a: &Value, b: &Value) -> R<Option<std::cmp::Ordering>> {
    if a.is_null() || b.is_null() {
        return Ok(None);
    }
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => Ok(match (num(a), num(b)) {
            (Some(Num::I(x)), Some(Num::I(y))) => Some(x.cmp(&y)),
            (Some(x), Some(y)) => f(x).partial_cmp(&f(y)),
            _ => None,
        }),
        (Value::String(x), Value::String(y)) => Ok(Some(x.cmp(y))),
        (Value::Bool(x), Value::Bool(y)) => Ok(Some(x.cmp(y))),
        _ => Err(mismatch(op, a, b)),
    }
}

pub fn lt(a: &Value, b: &Value) -> R<Value> {
    Ok(Value::Bool(order("<", a, b)?.is_some_and(|o| o.is_lt())))
}

pub fn le(a: &Value, b: &Value) -> R<Value> {
    Ok(Value::Bool(order("<=", a, b)?.is_some_and(|o| o.is_le())))
}

pub fn gt(a: &Value, b: &Value) -> R<Value> {
    Ok(Value::Bool(order(">", a, b)?.is_some_and(|o| o.is_gt())))
}

pub fn ge(a: &Value, b: &Value) -> R<Value> {
    Ok(Value::Bool(order(">=", a, b)?.is_some_and(|o| o.is_ge())))
}

/// `x in y`: element of a list, key of an object, substring of a string.
pub fn contains_op(x: &Value, y: &Value) -> R<Value> {
    match y {
        Value::Null => Ok(Value::Null),
        Value::Array(items) => Ok(Value::Bool(items.iter().any(|i| equal(i, x)))),
        Value::Object(m) => match x {
            Value::String(k) => Ok(Value::Bool(m.contains_key(k))),
            Value::Null => Ok(Value::Null),
            other => Err(RecordError::transform(format!(
                "an object key must be a string, not {}",
                type_name(other)
            ))),
        },
        Value::String(s) => match x {
            Value::String(sub) => Ok(Value::Bool(s.contains(sub.as_str()))),
            Value::Null => Ok(Value::Null),
            other => Err(RecordError::transform(format!(
                "cannot look for {} in a string",
                type_name(other)
            ))),
        },
        other => Err(RecordError::transform(format!(
            "`in` needs a list, object or string, not {}",
            type_name(other)
        ))),
    }
}

pub fn in_(x: &Value, y: &Value) -> R<Value> {
    contains_op(x, y)
}

pub fn not_in(x: &Value, y: &Value) -> R<Value> {
    Ok(match contains_op(x, y)? {
        Value::Bool(b) => Value::Bool(!b),
        other => other,
    })
}

pub fn neg(a: &Value) -> R<Value> {
    match num(a) {
        _ if a.is_null() => Ok(Value::Null),
        Some(Num::I(i)) => i
            .checked_neg()
            .map(Value::from)
            .ok_or_else(|| overflow("-")),
        Some(Num::F(x)) => float(-x),
        None => Err(RecordError::transform(format!(
            "cannot negate {}",
            type_name(a)
        ))),
    }
}

pub fn pos(a: &Value) -> R<Value> {
    match a {
        Value::Null | Value::Number(_) => Ok(a.clone()),
        other => Err(RecordError::transform(format!(
            "cannot apply unary `+` to {}",
            type_name(other)
        ))),
    }
}

pub fn not(a: &Value) -> R<Value> {
    Ok(Value::Bool(!truthy(a)))
}

/// Indexing a computed value: `expr[i]` / `expr.name`; missing gives null.
pub fn index(base: &Value, i: &Value) -> R<Value> {
    Ok(match (base, i) {
        (Value::Null, _) | (_, Value::Null) => Value::Null,
        (Value::Object(m), Value::String(k)) => m.get(k).cloned().unwrap_or(Value::Null),
        (Value::Array(a), Value::Number(_)) => {
            let Some(Num::I(n)) = num(i) else {
                return Err(RecordError::transform("a list index must be an integer"));
            };
            let len = a.len() as i64;
            let n = if n < 0 { len + n } else { n };
            if (0..len).contains(&n) {
                a[n as usize].clone()
            } else {
                Value::Null
            }
        }
        (Value::String(s), Value::Number(_)) => {
            let Some(Num::I(n)) = num(i) else {
                return Err(RecordError::transform("a string index must be an integer"));
            };
            let len = s.chars().count() as i64;
            let n = if n < 0 { len + n } else { n };
            if (0..len).contains(&n) {
                Value::String(
                    s.chars()
                        .nth(n as usize)
                        .map(String::from)
                        .unwrap_or_default(),
                )
            } else {
                Value::Null
            }
        }
        (b, i) => {
            return Err(RecordError::transform(format!(
                "cannot index {} with {}",
                type_name(b),
                type_name(i)
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_rules() {
        assert_eq!(add(&Value::Null, &json!(1)), Ok(Value::Null));
        assert_eq!(eq(&Value::Null, &Value::Null), Ok(json!(true)));
        assert_eq!(lt(&Value::Null, &json!(1)), Ok(json!(false)));
        assert_eq!(ge(&json!(1), &Value::Null), Ok(json!(false)));
        assert_eq!(concat(&Value::Null, &json!("a")), Ok(Value::Null));
    }

    #[test]
    fn numbers() {
        assert_eq!(add(&json!(1), &json!(2)), Ok(json!(3)));
        assert_eq!(add(&json!(1), &json!(2.5)), Ok(json!(3.5)));
        assert_eq!(div(&json!(3), &json!(2)), Ok(json!(1.5)));
        assert_eq!(floordiv(&json!(7), &json!(2)), Ok(json!(3)));
        assert_eq!(floordiv(&json!(-7), &json!(2)), Ok(json!(-4)));
        assert_eq!(floordiv(&json!(7), &json!(-2)), Ok(json!(-4)));
        assert_eq!(rem(&json!(-7), &json!(3)), Ok(json!(2)));
        assert_eq!(rem(&json!(7), &json!(-3)), Ok(json!(-2)));
        assert_eq!(pow(&json!(2), &json!(10)), Ok(json!(1024)));
        assert_eq!(pow(&json!(2), &json!(-1)), Ok(json!(0.5)));
        assert!(div(&json!(1), &json!(0)).is_err());
        assert!(mul(&json!(i64::MAX), &json!(2)).is_err());
        assert!(equal(&json!(1), &json!(1.0)));
        assert!(mul(&json!("a"), &json!({})).is_err());
    }

    #[test]
    fn membership() {
        assert_eq!(in_(&json!(2), &json!([1, 2])), Ok(json!(true)));
        assert_eq!(in_(&json!("b"), &json!({"b": 1})), Ok(json!(true)));
        assert_eq!(not_in(&json!("x"), &json!("abc")), Ok(json!(true)));
        assert_eq!(in_(&json!(1), &Value::Null), Ok(Value::Null));
    }
}
