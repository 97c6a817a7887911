//! Names and how messages quote them: what an identifier is (project,
//! flow, connector, lookup names), making one from any name, and lists of
//! names in diagnostics. Shared by the loader and the checks.

/// `[a-z][a-z0-9_]*`: names of projects, flows, connectors, lookup tables.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A best-effort identifier made from any name (for hints and `init`).
pub fn to_identifier(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert_str(0, "p_");
    }
    out
}

/// Names as a message lists them: `` `a`, `b` ``.
pub fn quoted_list<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "nothing (none defined)".to_string();
    }
    items
        .iter()
        .map(|s| format!("`{}`", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}
