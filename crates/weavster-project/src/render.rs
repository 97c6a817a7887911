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

/// What rendering gave: the text with a marker where each `{{ ... }}`
/// printed something, and what each printed. Values are put into the
/// parsed YAML as data ([`fill`]), never spliced into its text: a value
/// cannot add keys or change the file's structure, whatever it holds.
#[derive(Debug, Default, Clone)]
pub struct Rendered {
    pub text: String,
    pub inserts: Vec<Insert>,
}

/// One printed value.
#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    pub value: Value,
    /// As MiniJinja prints it.
    pub text: String,
    /// Names of the env vars whose values it holds.
    pub env: Vec<String>,
    /// It holds a secret (a `WEAVSTER_SECRET_*` value).
    pub secret: bool,
    /// Where its marker is in [`Rendered::text`] (start, end).
    pub at: usize,
    pub end: usize,
}

const MARK_OPEN: char = '\u{E000}';
const MARK_CLOSE: char = '\u{E001}';

impl Rendered {
    fn plain(text: &str) -> Rendered {
        Rendered {
            text: text.to_string(),
            inserts: Vec::new(),
        }
    }

    /// The text for people: each marker replaced by what it printed (line
    /// breaks escaped, secrets masked), and how offsets move.
    pub fn display(&self) -> (String, crate::edits::Edits) {
        let edits: Vec<(usize, usize, String)> = markers(&self.text)
            .filter_map(|(start, end, i)| {
                let ins = self.inserts.get(i)?;
                let shown = if ins.secret {
                    crate::secrets::MASK.to_string()
                } else {
                    ins.text.replace('\n', "\\n").replace('\r', "\\r")
                };
                Some((start, end, shown))
            })
            .collect();
        crate::edits::apply(&self.text, &edits)
    }

    /// Inserts whose markers lie in `[start, end)`.
    pub fn inserts_in(&self, start: usize, end: usize) -> impl Iterator<Item = &Insert> {
        self.inserts
            .iter()
            .filter(move |i| i.at >= start && i.at < end)
    }
}

/// The markers in `text`: (start, end, index).
fn markers(text: &str) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    text.match_indices(MARK_OPEN).filter_map(|(start, _)| {
        let rest = &text[start + MARK_OPEN.len_utf8()..];
        let close = rest.find(MARK_CLOSE)?;
        let i: usize = rest[..close].parse().ok()?;
        Some((
            start,
            start + MARK_OPEN.len_utf8() + close + MARK_CLOSE.len_utf8(),
            i,
        ))
    })
}

/// Puts the printed values into `node` (parsed from [`Rendered::text`]):
/// a scalar that is one marker takes the value as data (a list stays a
/// list); a scalar with markers in text takes their printed text, and a
/// plain one is then resolved as YAML would (`{{ env_var('N') }}` giving
/// `500` is a number).
pub fn fill(node: &mut weavster_spec::yaml::Node, inserts: &[Insert]) {
    use weavster_spec::yaml::NodeKind;
    match &mut node.kind {
        NodeKind::Seq(items) => items.iter_mut().for_each(|n| fill(n, inserts)),
        NodeKind::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            fill(k, inserts);
            fill(v, inserts);
        }),
        _ => {
            let Some(raw) = node.raw.as_deref() else {
                return;
            };
            if !raw.contains(MARK_OPEN) {
                return;
            }
            let found: Vec<(usize, usize, usize)> = markers(raw).collect();
            if let [(0, end, i)] = found[..]
                && end == raw.len()
                && let Some(ins) = inserts.get(i)
                && !ins.value.is_string()
            {
                *node = json_node(&ins.value, node.span);
                return;
            }
            let mut text = String::with_capacity(raw.len());
            let mut last = 0;
            for (start, end, i) in found {
                text.push_str(&raw[last..start]);
                if let Some(ins) = inserts.get(i) {
                    text.push_str(&ins.text);
                }
                last = end;
            }
            text.push_str(&raw[last..]);
            node.kind = if node.quoted {
                NodeKind::Str(text.clone())
            } else {
                weavster_spec::yaml::resolve_plain(&text)
            };
            node.raw = Some(text);
        }
    }
}

/// A JSON value as a YAML node at `span`.
fn json_node(v: &Value, span: Span) -> weavster_spec::yaml::Node {
    use weavster_spec::yaml::{Node, NodeKind};
    let scalar = |kind: NodeKind, raw: String| Node {
        kind,
        span,
        raw: Some(raw),
        quoted: false,
    };
    match v {
        Value::Null => scalar(NodeKind::Null, "null".into()),
        Value::Bool(b) => scalar(NodeKind::Bool(*b), b.to_string()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => scalar(NodeKind::Int(i), n.to_string()),
            None => scalar(
                NodeKind::Float(n.as_f64().unwrap_or(f64::NAN)),
                n.to_string(),
            ),
        },
        Value::String(s) => Node {
            kind: NodeKind::Str(s.clone()),
            span,
            raw: Some(s.clone()),
            quoted: true,
        },
        Value::Array(items) => Node {
            kind: NodeKind::Seq(items.iter().map(|i| json_node(i, span)).collect()),
            span,
            raw: None,
            quoted: false,
        },
        Value::Object(m) => Node {
            kind: NodeKind::Map(
                m.iter()
                    .map(|(k, v)| {
                        (
                            json_node(&Value::String(k.clone()), span),
                            json_node(v, span),
                        )
                    })
                    .collect(),
            ),
            span,
            raw: None,
            quoted: false,
        },
    }
}

/// Renders `src`; on failure returns a located diagnostic.
pub fn render(file: &str, src: &str, ctx: &RenderContext<'_>) -> Result<Rendered, Diagnostic> {
    // Files without template syntax are returned as they are.
    if !src.contains("{{") && !src.contains("{%") && !src.contains("{#") {
        return Ok(Rendered::plain(src));
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
    // Env vars read while rendering (and before, by other files): (name,
    // value); what a printed value holds of them is tracked.
    let used_env: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(ctx.secrets.env_read()));
    let inserts: Arc<Mutex<Vec<Insert>>> = Arc::default();
    {
        let used = Arc::clone(&used_env);
        let inserts = Arc::clone(&inserts);
        env.set_formatter(move |out, _state, value| {
            let text = value.to_string();
            let json = serde_json::to_value(value).unwrap_or(Value::Null);
            let mut names = Vec::new();
            let mut secret = false;
            if let Ok(used) = used.lock() {
                for (name, v) in used.iter() {
                    if !v.is_empty() && text.contains(v.as_str()) {
                        names.push(name.clone());
                        secret |= name.starts_with(SECRET_ENV_PREFIX);
                    }
                }
            }
            let Ok(mut inserts) = inserts.lock() else {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "render state poisoned",
                ));
            };
            let i = inserts.len();
            inserts.push(Insert {
                value: json,
                text,
                env: names,
                secret,
                at: 0,
                end: 0,
            });
            write!(out, "{MARK_OPEN}{i}{MARK_CLOSE}").map_err(Error::from)
        });
    }
    {
        let envs = ctx.env.clone();
        let lenient = ctx.lenient_env;
        let used = Arc::clone(&used_env);
        env.add_function("env_var", move |name: String, default: Option<JValue>| -> Result<JValue, Error> {
            match envs.get(&name) {
                Some(v) => {
                    if let Ok(mut used) = used.lock() {
                        used.push((name.clone(), v.clone()));
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
    if let Ok(used) = used_env.lock() {
        for (name, v) in used.iter() {
            ctx.secrets.read_env(name, v);
        }
    }
    let text = result.map_err(|e| render_error(file, src, &protected, &e, ctx.target.is_none()))?;
    let mut inserts = inserts.lock().map(|i| i.clone()).unwrap_or_default();
    for (start, end, i) in markers(&text) {
        if let Some(ins) = inserts.get_mut(i) {
            ins.at = start;
            ins.end = end;
        }
    }
    Ok(Rendered { text, inserts })
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
