//! Secret values seen while loading, and masking of everything shown to users.
//!
//! What is masked is decided by what a value is, in one place:
//! - **secrets**, masked wherever they appear (diagnostics, snippets, logs,
//!   `ls`, `debug`, manifests): values of `WEAVSTER_SECRET_*` env vars, and
//!   every value of a connector field whose name says it is secret
//!   ([`is_secret_key`]: passwords, tokens, API keys, `Authorization`
//!   headers…);
//! - **patterns**: URL passwords (`scheme://user:…@`), secret-looking query
//!   or connection-string parameters (`?api_key=…`, `sslpassword=…`) and
//!   `password="…"` inside a Kafka `sasl.jaas.config`;
//! - **env values**: every other value read with `env_var()` is masked in
//!   structured output (a field of `ls`, `debug` or a manifest holding it),
//!   and in free text when it is distinctive enough not to hide unrelated
//!   words (8 characters or more, not a number).

use std::sync::{Mutex, OnceLock};

use serde_json::Value;

pub const MASK: &str = "*****";

/// Connector fields (and HTTP headers) whose values are never shown.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "token",
        "secret",
        "api_key",
        "apikey",
        "api-key",
        "authorization",
        "bearer",
        "credential",
        "private_key",
        "private-key",
        "cookie",
        "access_key",
        "sasl.jaas.config",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Values that must never be printed (see the module documentation).
#[derive(Debug, Default)]
pub struct Secrets {
    values: Mutex<Vec<String>>,
    env: Mutex<Vec<String>>,
    /// Env vars read with `env_var()`: (name, value).
    read: Mutex<Vec<(String, String)>>,
}

fn add_to(list: &Mutex<Vec<String>>, value: &str) {
    if let Ok(mut v) = list.lock()
        && !v.iter().any(|s| s == value)
    {
        v.push(value.to_string());
        // Longest first, so a value containing another is masked whole.
        v.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

impl Secrets {
    /// A secret value: masked wherever it appears.
    pub fn add(&self, value: &str) {
        // Very short values would mask unrelated text; they are still never
        // printed as fields, but not searched for in free text.
        if value.len() < 3 {
            return;
        }
        add_to(&self.values, value);
    }

    /// A value read with `env_var()`.
    pub fn add_env(&self, value: &str) {
        if !value.is_empty() {
            add_to(&self.env, value);
        }
    }

    /// Env var `name` was read with `env_var()` and gave `value`.
    pub fn read_env(&self, name: &str, value: &str) {
        if let Ok(mut r) = self.read.lock()
            && !r.iter().any(|(n, _)| n == name)
        {
            r.push((name.to_string(), value.to_string()));
        }
        if name.starts_with(crate::render::SECRET_ENV_PREFIX) {
            self.add(value);
        } else {
            self.add_env(value);
        }
    }

    /// Env vars read so far: (name, value).
    pub fn env_read(&self) -> Vec<(String, String)> {
        self.read.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Every string under a secret key of `value` (a connector) becomes a
    /// secret.
    pub fn add_secret_fields(&self, value: &Value) {
        match value {
            Value::Object(m) => {
                for (k, v) in m {
                    if is_secret_key(k) {
                        self.add_strings(v);
                    } else {
                        self.add_secret_fields(v);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.add_secret_fields(v)),
            // A secret inside another value (a URL's password or secret
            // query parameter, a JAAS password) is a secret value too:
            // libraries may print it detached (`value=…`).
            Value::String(text) => {
                for (a, b) in pattern_ranges(text) {
                    if let Some(v) = text.get(a..b) {
                        self.add(v);
                    }
                }
            }
            _ => {}
        }
    }

    fn add_strings(&self, v: &Value) {
        match v {
            Value::String(s) => {
                // A JAAS config is masked by pattern; the whole string is
                // not a secret.
                if let Some(pw) = jaas_passwords(s) {
                    pw.iter().for_each(|p| self.add(p));
                } else {
                    self.add(s);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| self.add_strings(i)),
            Value::Object(m) => m.values().for_each(|i| self.add_strings(i)),
            _ => {}
        }
    }

    /// The secret values (longest first) and the distinctive env values:
    /// what free text is searched for.
    pub fn needles(&self) -> Vec<String> {
        let mut all: Vec<String> = self.values.lock().map(|v| v.clone()).unwrap_or_default();
        if let Ok(env) = self.env.lock() {
            all.extend(env.iter().filter(|v| distinctive(v)).cloned());
        }
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all.dedup();
        all
    }

    /// `text` with every secret, distinctive env value and secret pattern
    /// replaced by `*****`.
    pub fn mask(&self, text: &str) -> String {
        self.mask_edits(text).0
    }

    /// `text` with secret values (and distinctive env values) masked, but
    /// not patterns: for texts of Weavster's own that show URL shapes.
    pub fn mask_values(&self, text: &str) -> String {
        crate::edits::replace_all(text, &self.needles(), MASK).0
    }

    /// [`Secrets::mask`], and how offsets move (for spans into the text).
    pub fn mask_edits(&self, text: &str) -> (String, crate::edits::Edits) {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for n in self.needles() {
            for (at, _) in text.match_indices(n.as_str()) {
                ranges.push((at, at + n.len()));
            }
        }
        ranges.extend(pattern_ranges(text));
        ranges.sort_by_key(|(s, e)| (*s, std::cmp::Reverse(*e)));
        let mut edits: Vec<(usize, usize, String)> = Vec::new();
        for (s, e) in ranges {
            match edits.last_mut() {
                Some((_, last_end, _)) if s < *last_end => *last_end = (*last_end).max(e),
                _ => edits.push((s, e, MASK.to_string())),
            }
        }
        crate::edits::apply(text, &edits)
    }

    /// A field's text: masked as free text, and wholly if it is (or holds)
    /// any env value.
    pub fn mask_str(&self, s: &str) -> String {
        let env = self.env.lock().map(|v| v.clone()).unwrap_or_default();
        if env.iter().any(|e| s == e) {
            return MASK.to_string();
        }
        let (out, _) = crate::edits::replace_all(s, &env, MASK);
        self.mask(&out)
    }

    /// A JSON value with secret fields, patterns, secrets and env values
    /// masked.
    pub fn mask_value(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let v = if is_secret_key(k) && !v.is_null() {
                            match v {
                                Value::String(s) if jaas_passwords(s).is_some() => {
                                    Value::String(mask_patterns(s))
                                }
                                _ => Value::String(MASK.into()),
                            }
                        } else {
                            self.mask_value(v)
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.mask_value(v)).collect()),
            Value::String(s) => Value::String(self.mask_str(s)),
            other => other.clone(),
        }
    }
}

/// An env value worth searching free text for.
fn distinctive(v: &str) -> bool {
    v.chars().count() >= 8 && v.parse::<f64>().is_err()
}

/// The passwords of a `sasl.jaas.config`-style string, if it is one.
fn jaas_passwords(s: &str) -> Option<Vec<String>> {
    let re = patterns().get(2)?;
    let found: Vec<String> = re
        .captures_iter(s)
        .filter_map(|c| c.get(2).map(|m| m.as_str().to_string()))
        .collect();
    (!found.is_empty()).then_some(found)
}

fn patterns() -> &'static [regex::Regex] {
    static P: OnceLock<Vec<regex::Regex>> = OnceLock::new();
    P.get_or_init(|| {
        [
            // A query or connection-string parameter with a secret name.
            r#"(?i)([?&;]\s*[a-z0-9_.\-]*(?:pass|pwd|token|secret|key|signature|sig|auth|credential)[a-z0-9_.\-]*=)([^&#\s;]*)"#,
            // libpq key=value: password=… sslpassword=…
            r#"(?i)((?:^|\s)(?:ssl)?password\s*=\s*)('[^']*'|[^\s'"][^\s']*)"#,
            // JAAS: password="…"
            r#"(?i)(password\s*=\s*")([^"]*)"#,
        ]
        .iter()
        .filter_map(|p| regex::Regex::new(p).ok())
        .collect()
    })
}

/// Where secret patterns' values are in `s`: URL passwords, secret-looking
/// parameters, JAAS passwords.
fn pattern_ranges(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for re in patterns() {
        for c in re.captures_iter(s) {
            if let Some(m) = c.get(2)
                && !m.as_str().is_empty()
            {
                out.push((m.start(), m.end()));
            }
        }
    }
    let mut from = 0;
    while let Some(i) = s[from..].find("://") {
        let rest_start = from + i + 3;
        let rest = &s[rest_start..];
        let authority_end = rest
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
            && colon + 1 < at
        {
            out.push((rest_start + colon + 1, rest_start + at));
        }
        from = rest_start;
    }
    out
}

/// Secret-looking parameters, JAAS passwords and URL passwords masked.
pub fn mask_patterns(s: &str) -> String {
    let ranges: Vec<(usize, usize, String)> = {
        let mut r = pattern_ranges(s);
        r.sort();
        r.dedup();
        let mut merged: Vec<(usize, usize, String)> = Vec::new();
        for (a, b) in r {
            match merged.last_mut() {
                Some((_, e, _)) if a < *e => *e = (*e).max(b),
                _ => merged.push((a, b, MASK.to_string())),
            }
        }
        merged
    };
    crate::edits::apply(s, &ranges).0
}

/// `scheme://user:password@host` → `scheme://user:*****@host`.
pub fn mask_url_password(s: &str) -> String {
    mask_patterns(s)
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

    /// Each case: a value as a connector holds it → what `ls` shows.
    #[test]
    fn masks_by_what_a_value_is() {
        let s = Secrets::default();
        s.add_env("broker-7.internal:9092");
        s.add_env("dev");
        let v = serde_json::json!({
            "headers": {"Authorization": "Bearer abc123", "X-Api-Key": "k-1", "Accept": "json"},
            "url": "https://api.example.com/v1?api_key=abc&page=2&access_token=t0k",
            "dsn": "host=db sslpassword=s3cret port=5432",
            "options": {"sasl.jaas.config": "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"u\" password=\"pa55\";"},
            "brokers": "broker-7.internal:9092",
            "target": "dev",
            "path": "out/dev/x.jsonl",
        });
        let m = s.mask_value(&v);
        assert_eq!(m["headers"]["Authorization"], "*****");
        assert_eq!(m["headers"]["X-Api-Key"], "*****");
        assert_eq!(m["headers"]["Accept"], "json");
        assert_eq!(
            m["url"],
            "https://api.example.com/v1?api_key=*****&page=2&access_token=*****"
        );
        assert_eq!(m["dsn"], "host=db sslpassword=***** port=5432");
        let jaas = m["options"]["sasl.jaas.config"]
            .as_str()
            .unwrap_or_default();
        assert!(
            jaas.contains("password=\"*****\"") && !jaas.contains("pa55"),
            "{jaas}"
        );
        assert_eq!(m["brokers"], "*****");
        assert_eq!(m["target"], "*****");
        assert_eq!(m["path"], "out/*****/x.jsonl");
        // Free text: only distinctive env values.
        assert_eq!(
            s.mask("cannot reach broker-7.internal:9092 in dev"),
            "cannot reach ***** in dev"
        );
    }

    #[test]
    fn secret_fields_become_secrets_everywhere() {
        let s = Secrets::default();
        s.add_secret_fields(
            &serde_json::json!({"type": "http", "headers": {"Authorization": "Bearer zz-top"}}),
        );
        assert_eq!(s.mask("401 for Bearer zz-top"), "401 for *****");
    }

    #[test]
    fn secrets_inside_urls_are_masked_when_printed_alone() {
        let s = Secrets::default();
        s.add_secret_fields(&serde_json::json!({
            "type": "postgres",
            "url": "postgres://u:pw-in-url@db/shop?sslpassword=pgpass-456&application_name=w"
        }));
        assert_eq!(
            s.mask("ignoring unrecognized connect parameter key=sslpassword value=pgpass-456 (pw-in-url)"),
            "ignoring unrecognized connect parameter key=sslpassword value=***** (*****)"
        );
    }
}
