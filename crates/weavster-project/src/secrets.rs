//! Secret values seen while loading, and masking of everything shown to users.

use std::sync::Mutex;

use serde_json::Value;

pub const MASK: &str = "*****";

/// Connector fields whose values are never shown.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "token", "secret"]
        .iter()
        .any(|s| k.contains(s))
}

/// Values that must never be printed: the values of `WEAVSTER_SECRET_*` env
/// vars used while rendering, and secret connector fields.
#[derive(Debug, Default)]
pub struct Secrets {
    values: Mutex<Vec<String>>,
}

impl Secrets {
    pub fn add(&self, value: &str) {
        // Very short values would mask unrelated text; they are still never
        // printed as connector fields, but not searched for in free text.
        if value.len() < 3 {
            return;
        }
        if let Ok(mut v) = self.values.lock()
            && !v.iter().any(|s| s == value)
        {
            v.push(value.to_string());
            // Longest first, so a secret containing another is masked whole.
            v.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// `text` with every known secret replaced by `*****`.
    pub fn mask(&self, text: &str) -> String {
        let Ok(values) = self.values.lock() else {
            return text.to_string();
        };
        let mut out = text.to_string();
        for s in values.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASK);
            }
        }
        out
    }

    /// A JSON value with secret fields, URL passwords and known secrets masked.
    pub fn mask_value(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let v = if is_secret_key(k) && !v.is_null() {
                            Value::String(MASK.into())
                        } else {
                            self.mask_value(v)
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.mask_value(v)).collect()),
            Value::String(s) => Value::String(mask_url_password(&self.mask(s))),
            other => other.clone(),
        }
    }
}

/// `scheme://user:password@host` → `scheme://user:*****@host`.
pub fn mask_url_password(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_string();
    };
    let rest = &s[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return s.to_string();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return s.to_string();
    };
    format!(
        "{}{}:{MASK}{}",
        &s[..scheme_end + 3],
        &userinfo[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_url_passwords() {
        assert_eq!(
            mask_url_password("postgres://u:p4ss@h:5432/db"),
            "postgres://u:*****@h:5432/db"
        );
        assert_eq!(mask_url_password("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn masks_known_values_and_secret_keys() {
        let s = Secrets::default();
        s.add("hunter22");
        assert_eq!(s.mask("pw=hunter22;"), "pw=*****;");
        let v = serde_json::json!({"password": "x", "url": "a hunter22 b", "n": 1});
        assert_eq!(
            s.mask_value(&v),
            serde_json::json!({"password": "*****", "url": "a ***** b", "n": 1})
        );
    }
}
