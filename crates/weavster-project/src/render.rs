//! MiniJinja rendering of project files, before they are parsed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value as JValue};
use serde_json::Value;
use weavster_spec::{Diagnostic, Span};

use crate::secrets::Secrets;

/// Env vars whose values are secrets.
pub const SECRET_ENV_PREFIX: &str = "WEAVSTER_SECRET_";

/// What a file can see while it is rendered.
pub struct RenderContext<'a> {
    pub env: &'a BTreeMap<String, String>,
    /// Merged vars, highest precedence first already applied.
    pub vars: IndexMap<String, Value>,
    /// `target.*` (absent while weavster.yaml and profiles.yaml render).
    pub target: Option<Value>,
    /// `project.*`.
    pub project: Option<Value>,
    pub secrets: &'a Secrets,
    /// profiles.yaml: an unset env var without default renders as a marker
    /// ([`unset_marker`]) instead of failing, so that only the selected
    /// target's values must be resolvable (as in dbt).
    pub lenient_env: bool,
    /// Flow files: `{{ ... }}` blocks that use no load-time name are record
    /// templates and are left as they are.
    pub protect_record_templates: bool,
}

const UNSET_PREFIX: &str = "__WEAVSTER_UNSET_ENV_VAR__";

/// What an unset env var renders as in lenient mode.
pub fn unset_marker(name: &str) -> String {
    format!("{UNSET_PREFIX}{name}__")
}

/// The name of the first unset env var marker in `text`, if any.
pub fn find_unset_marker(text: &str) -> Option<&str> {
    let start = text.find(UNSET_PREFIX)? + UNSET_PREFIX.len();
    let rest = &text[start..];
    rest.find("__").map(|end| &rest[..end])
}

/// Names that make a `{{ ... }}` block a load-time expression.
const LOAD_TIME_NAMES: &[&str] = &["env_var", "var", "target", "project"];

/// Wraps every `{{ ... }}` block that uses none of the load-time names in
/// `{% raw %}`, so that record templates (`template:` values such as
/// `{{ first_name }}`) reach the flow compiler untouched.
fn protect_runtime_blocks(src: &str) -> String {
    static RAW: std::sync::OnceLock<Option<(regex::Regex, regex::Regex)>> =
        std::sync::OnceLock::new();
    let raw = RAW.get_or_init(|| {
        Some((
            regex::Regex::new(r"\{%-?\s*raw\s*-?%\}").ok()?,
            regex::Regex::new(r"\{%-?\s*endraw\s*-?%\}").ok()?,
        ))
    });
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(open) = rest.find("{{") {
        // A `{% raw %}` block before the next `{{` is copied as it is.
        if let Some((start_re, end_re)) = raw
            && let Some(m) = start_re.find(&rest[..open])
        {
            let end = end_re
                .find(&rest[m.end()..])
                .map(|e| m.end() + e.end())
                .unwrap_or(rest.len());
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        let line_end = rest[open..]
            .find('\n')
            .map(|e| open + e)
            .unwrap_or(rest.len());
        let Some(close) = rest[open..line_end].find("}}").map(|c| open + c + 2) else {
            // An unclosed `{{` on its line: leave it to the template checks.
            out.push_str(&rest[..open]);
            out.push_str("{% raw %}{{{% endraw %}");
            rest = &rest[open + 2..];
            continue;
        };
        out.push_str(&rest[..open]);
        let block = &rest[open..close];
        let inner = &block[2..block.len() - 2];
        let load_time = inner
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| LOAD_TIME_NAMES.contains(&word));
        if load_time {
            out.push_str(block);
        } else {
            out.push_str("{% raw %}");
            out.push_str(block);
            out.push_str("{% endraw %}");
        }
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

/// Renders `src`; on failure returns a located diagnostic.
pub fn render(file: &str, src: &str, ctx: &RenderContext<'_>) -> Result<String, Diagnostic> {
    // Files without template syntax are returned as they are.
    if !src.contains("{{") && !src.contains("{%") && !src.contains("{#") {
        return Ok(src.to_string());
    }
    let protected = if ctx.protect_record_templates {
        protect_runtime_blocks(src)
    } else {
        src.to_string()
    };
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    if let Ok(syntax) = SyntaxConfig::builder().keep_trailing_newline(true).build() {
        env.set_syntax(syntax);
    }
    let used_secrets: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let envs = ctx.env.clone();
        let lenient = ctx.lenient_env;
        let used = Arc::clone(&used_secrets);
        env.add_function("env_var", move |name: String, default: Option<JValue>| -> Result<JValue, Error> {
            match envs.get(&name) {
                Some(v) => {
                    if name.starts_with(SECRET_ENV_PREFIX)
                        && let Ok(mut used) = used.lock() {
                            used.push(v.clone());
                        }
                    Ok(JValue::from(v.clone()))
                }
                None => match default {
                    Some(d) => Ok(d),
                    None if lenient => Ok(JValue::from(unset_marker(&name))),
                    None => Err(Error::new(
                        ErrorKind::InvalidOperation,
                        format!("environment variable `{name}` is not set and env_var() was given no default"),
                    )),
                },
            }
        });
    }
    {
        let vars = ctx.vars.clone();
        env.add_function("var", move |name: String, default: Option<JValue>| -> Result<JValue, Error> {
            match vars.get(&name) {
                Some(v) => Ok(JValue::from(Serde(v))),
                None => match default {
                    Some(d) => Ok(d),
                    None => Err(Error::new(
                        ErrorKind::InvalidOperation,
                        format!(
                            "var `{name}` is not defined: set it under `vars:` in weavster.yaml or the target, or pass --vars"
                        ),
                    )),
                },
            }
        });
    }
    let mut globals = BTreeMap::new();
    if let Some(t) = &ctx.target {
        globals.insert("target", JValue::from(Serde(t)));
    }
    if let Some(p) = &ctx.project {
        globals.insert("project", JValue::from(Serde(p)));
    }
    let result = env.render_str(&protected, globals);
    if let Ok(used) = used_secrets.lock() {
        for s in used.iter() {
            ctx.secrets.add(s);
        }
    }
    result.map_err(|e| render_error(file, src, &protected, &e, ctx.target.is_none()))
}

fn render_error(file: &str, src: &str, protected: &str, e: &Error, early: bool) -> Diagnostic {
    let detail = e
        .detail()
        .map(str::to_string)
        .unwrap_or_else(|| e.kind().to_string());
    let code = match e.kind() {
        ErrorKind::SyntaxError => "render::syntax",
        ErrorKind::UndefinedError => "render::undefined",
        _ => "render::error",
    };
    let mut d = Diagnostic::error(code, format!("cannot render this file: {detail}")).in_file(file);
    // Offsets refer to the protected text; map them back to the source by
    // skipping the `{% raw %}` wrappers inserted before them.
    let to_src = |offset: usize| {
        let prefix = &protected[..offset.min(protected.len())];
        let inserted = prefix.matches("{% raw %}").count() * "{% raw %}".len()
            + prefix.matches("{% endraw %}").count() * "{% endraw %}".len();
        offset.saturating_sub(inserted)
    };
    let span = e
        .range()
        .filter(|r| {
            r.end <= protected.len()
                && protected.is_char_boundary(r.start)
                && protected.is_char_boundary(r.end)
        })
        .map(|r| span_of(src, to_src(r.start), to_src(r.end)))
        .or_else(|| e.line().map(|l| line_span(src, l)));
    if let Some(span) = span {
        d = d.at(span);
    }
    if e.kind() == ErrorKind::UndefinedError {
        d = d.hint(if early {
            "weavster.yaml and profiles.yaml can use env_var() and var() (from --vars); `target` and `project` are available in connectors, flows and tests"
        } else {
            "available: env_var('NAME', 'default'), var('name', default), target.name, target.profile, project.name"
        });
    } else if e.kind() == ErrorKind::SyntaxError && protected.len() != src.len() {
        d = d.hint("`{% ... %}` statements in flow files run when the project loads; to keep one for a record template, wrap it in {% raw %}...{% endraw %}");
    } else if e.kind() == ErrorKind::UnknownFunction {
        d = d.hint("available functions: env_var('NAME', 'default'), var('name', default)");
    }
    d
}

/// The span of bytes `[start, end)` of `src`, with its line and column.
pub fn span_of(src: &str, start: usize, end: usize) -> Span {
    let start = start.min(src.len());
    let before = &src[..floor_char(src, start)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = src[line_start..floor_char(src, start)].chars().count() + 1;
    Span {
        start,
        end: end.clamp(start, src.len()),
        line,
        col,
    }
}

/// The span of a whole 1-based line.
pub fn line_span(src: &str, line: usize) -> Span {
    let mut offset = 0;
    for (i, l) in src.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let text = l.trim_end_matches('\n');
            return Span {
                start: offset,
                end: offset + text.len(),
                line,
                col: 1,
            };
        }
        offset += l.len();
    }
    Span {
        start: src.len(),
        end: src.len(),
        line,
        col: 1,
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
