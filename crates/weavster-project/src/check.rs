//! Semantic checks after parsing: names, references, expressions, regexes,
//! templates, lookups, bridges, fixtures.

use std::collections::{BTreeMap, BTreeSet};

use weavster_spec::diag::did_you_mean;
use weavster_spec::types::{
    Connector, Direction, FlowFile, Format, PostgresMode, RegexStep, RuntimeConfig, TestCase,
    Transform,
};
use weavster_spec::yaml::{DeError, DeErrorKind, Node, NodeKind, Step};
use weavster_spec::{Diagnostic, Span};

use crate::ident::quoted_list;
use crate::{ConnectorDef, FlowDef, Project};

/// A deserialization error as a diagnostic.
pub(crate) fn de_diagnostic(file: &str, root: &Node, e: &DeError) -> Diagnostic {
    let span = e.span.unwrap_or(root.span);
    let d = match &e.kind {
        DeErrorKind::UnknownField { field, expected } => {
            Diagnostic::error("schema::unknown-key", format!("unknown key `{field}`"))
                .label("not allowed here")
                .expected(if expected.is_empty() {
                    "no keys".into()
                } else {
                    format!("one of {}", quoted_list(expected))
                })
                .maybe_hint(
                    did_you_mean(field, expected.iter().copied())
                        .map(|s| format!("did you mean `{s}`?")),
                )
        }
        DeErrorKind::UnknownVariant { variant, expected } => {
            let is_transform = expected.len() > 10 && expected.contains(&"explode");
            let message = if is_transform {
                format!("unknown transform `{variant}`")
            } else {
                format!("unknown value `{variant}`")
            };
            Diagnostic::error("schema::unknown-value", message)
                .expected(format!("one of {}", quoted_list(expected)))
                .maybe_hint(
                    did_you_mean(variant, expected.iter().copied())
                        .map(|s| format!("did you mean `{s}`?")),
                )
        }
        DeErrorKind::MissingField { field } => Diagnostic::error(
            "schema::missing-key",
            format!("missing required key `{field}`"),
        )
        .label("in this map"),
        DeErrorKind::InvalidType { found, expected } => Diagnostic::error(
            "schema::wrong-type",
            format!("expected {}, found {found}", article(expected)),
        ),
        DeErrorKind::InvalidValue { found, expected } => {
            Diagnostic::error("schema::invalid-value", format!("invalid value {found}"))
                .expected(article(expected))
        }
        DeErrorKind::DuplicateField { field } => {
            Diagnostic::error("schema::duplicate-key", format!("duplicate key `{field}`"))
        }
        DeErrorKind::NullForChoice { field, expected } => Diagnostic::error(
            "schema::null-choice",
            format!("`{field}` is YAML's null, which means \"not set\""),
        )
        .label("not set: the default would apply")
        .expected(format!(
            "one of {}",
            quoted_list(&expected.iter().map(String::as_str).collect::<Vec<_>>())
        ))
        .hint(if expected.iter().any(|w| w == "null") {
            format!(
                "to choose `null`, quote it: `{field}: \"null\"`; to leave it unset, remove the key"
            )
        } else {
            "remove the key to leave it unset".to_string()
        }),
        DeErrorKind::Custom => Diagnostic::error("schema::invalid", e.message.clone()),
    };
    d.in_file(file).at(span)
}

/// serde says "struct X" / "a string"; make it read as prose.
fn article(expected: &str) -> String {
    if let Some(rest) = expected.strip_prefix("struct ") {
        return format!("a map ({rest})");
    }
    if expected.starts_with("a ") || expected.starts_with("an ") || expected.starts_with("one ") {
        return expected.to_string();
    }
    match expected {
        "a sequence" => "a list".into(),
        "u32" | "u64" | "u16" | "u8" | "usize" => "a non-negative integer".into(),
        "i32" | "i64" => "an integer".into(),
        "f64" | "f32" => "a number".into(),
        other => other.to_string(),
    }
}

pub(crate) fn runtime(diags: &mut Vec<Diagnostic>, file: &str, node: &Node, rt: &RuntimeConfig) {
    if let Some(q) = &rt.queue {
        let ok = q == "embedded" || q.starts_with("postgres://") || q.starts_with("postgresql://");
        if !ok && crate::render::find_unset_marker(q).is_none() {
            diags.push(
                Diagnostic::error(
                    "runtime::queue",
                    format!("invalid queue `{}`", crate::secrets::mask_url_password(q)),
                )
                .in_file(file)
                .at(node.find(&[Step::Key("queue")]).span)
                .expected("`embedded` or a `postgres://user:password@host:port/db` URL"),
            );
        }
    }
    for (key, value) in [
        ("batch_size", rt.batch_size),
        ("workers", rt.workers),
        ("max_attempts", rt.max_attempts),
        (
            "batch_timeout_ms",
            rt.batch_timeout_ms.map(|v| v.min(1) as u32),
        ),
        (
            "max_record_bytes",
            rt.max_record_bytes.map(|v| v.min(1) as u32),
        ),
    ] {
        if value == Some(0) {
            diags.push(
                Diagnostic::error("runtime::zero", format!("`{key}` must be at least 1"))
                    .in_file(file)
                    .at(node.find(&[Step::Key(key)]).span),
            );
        }
    }
}

/// `path` lexically normalized (`.` and `..` resolved without the disk).
fn normalize(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The directory a path (maybe a glob) reads or writes under: up to its
/// first component with glob syntax.
fn literal_prefix(path: &std::path::Path) -> std::path::PathBuf {
    path.components()
        .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
        .collect()
}

/// Where `path` resolves (through symlinks, as far as it exists).
fn resolved(path: &std::path::Path) -> std::path::PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    for name in rest.into_iter().rev() {
        out.push(name);
    }
    out
}

/// Whether a file connector's `path` stays inside the project or an
/// allowed directory (lexically and through symlinks).
pub(crate) fn path_allowed(root: &std::path::Path, allowed: &[String], path: &str) -> bool {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let within = |p: &std::path::Path| -> std::path::PathBuf {
        if p.is_absolute() {
            normalize(p)
        } else {
            normalize(&root.join(p))
        }
    };
    let target = literal_prefix(&within(std::path::Path::new(path)));
    let mut dirs = vec![root.clone()];
    dirs.extend(allowed.iter().map(|a| within(std::path::Path::new(a))));
    let real = resolved(&target);
    dirs.iter().any(|d| target.starts_with(d)) && dirs.iter().any(|d| real.starts_with(resolved(d)))
}

pub(crate) fn connector(
    diags: &mut Vec<Diagnostic>,
    def: &ConnectorDef,
    node: &Node,
    root: &std::path::Path,
    allowed: &[String],
) {
    // `key` or `key.sub`: the innermost of them present.
    let at = |key: &str| {
        let (outer, inner) = key.split_once('.').unwrap_or((key, ""));
        let o = node.get(outer);
        o.and_then(|o| o.get(inner))
            .or(o)
            .map(|n| n.span)
            .unwrap_or(node.span)
    };
    let err = |msg: String, key: &str| {
        Diagnostic::error(
            "connector::invalid",
            format!("connector `{}`: {msg}", def.reference),
        )
        .in_file(&def.file)
        .at(at(key))
    };
    match &def.connector {
        Connector::File(f) => {
            if f.format.is_none() && format_from_path(&f.path).is_none() {
                diags.push(
                    err(
                        format!("cannot tell the format of `{}` from its extension", f.path),
                        "path",
                    )
                    .expected("`format: jsonl`, `json` or `csv`"),
                );
            }
            if f.path.trim().is_empty() {
                diags.push(err("`path` is empty".into(), "path"));
            } else if !path_allowed(root, allowed, &f.path) {
                diags.push(
                    err(
                        format!("`path` `{}` is outside the project", f.path),
                        "path",
                    )
                    .expected("a path inside the project directory")
                    .hint("to read or write elsewhere, list the directory under `runtime.allowed_paths` (in weavster.yaml, or the target in profiles.yaml)"),
                );
            }
            if let Some(other) = differs_only_in_case(root, &f.path) {
                diags.push(
                    Diagnostic::warning(
                        "connector::path-case",
                        format!(
                            "connector `{}`: no file is named `{}`, but `{other}` is: paths are case-sensitive",
                            def.reference, f.path
                        ),
                    )
                    .in_file(&def.file)
                    .at(at("path")),
                );
            }
            if let Some(d) = &f.delimiter
                && (d.chars().count() != 1 || !d.is_ascii())
            {
                diags.push(err(
                    format!("`delimiter` must be one ASCII character, not `{d}`"),
                    "delimiter",
                ));
            }
        }
        Connector::Kafka(k) => {
            if k.brokers.trim().is_empty() {
                diags.push(
                    err("`brokers` is empty".into(), "brokers")
                        .expected("`host:port[,host:port…]`"),
                );
            }
            // What `run` fixes for its delivery guarantee (the consumer
            // commits offsets with the queue; the producer is idempotent).
            for (key, want) in [
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.idempotence", "true"),
                ("acks", "all"),
            ] {
                if let Some(v) = k.options.get(key)
                    && v != want
                {
                    diags.push(err(
                        format!("option `{key}` must be `{want}` here: Weavster's delivery guarantee depends on it"),
                        "options",
                    ));
                }
            }
            if let Some(g) = k.options.get("group.id")
                && k.group_id.as_deref() != Some(g.as_str())
            {
                diags.push(
                    err(
                        "set the consumer group with `group_id`, not `options.group.id`".into(),
                        "options",
                    )
                    .expected(format!("`group_id: {g}`")),
                );
            }
        }
        Connector::Postgres(p) => {
            if !(p.url.starts_with("postgres://") || p.url.starts_with("postgresql://")) {
                diags.push(err("`url` must start with `postgres://`".into(), "url"));
            }
            let cdc = p.mode == Some(PostgresMode::Cdc);
            if p.table.is_none() && p.query.is_none() && !cdc {
                diags.push(err(
                    "set `query` (to read), `mode: cdc` (to read changes) or `table` (to write)"
                        .into(),
                    "type",
                ));
            }
            if cdc && p.publication.as_deref().is_none_or(|s| s.trim().is_empty()) {
                diags.push(
                    err(
                        "`mode: cdc` needs a `publication`: the tables whose changes are read"
                            .into(),
                        "mode",
                    )
                    .expected("`publication: <name>` (CREATE PUBLICATION <name> FOR TABLE …)"),
                );
            }
            if cdc && (p.query.is_some() || p.cursor.is_some()) {
                diags.push(err(
                    "`query` and `cursor` are for `mode: query`; `mode: cdc` reads the publication's tables".into(),
                    if p.query.is_some() { "query" } else { "cursor" },
                ));
            }
            if !cdc && (p.publication.is_some() || p.slot.is_some() || p.snapshot.is_some()) {
                let key = if p.publication.is_some() {
                    "publication"
                } else if p.slot.is_some() {
                    "slot"
                } else {
                    "snapshot"
                };
                diags.push(
                    err(format!("`{key}` is for `mode: cdc`"), key)
                        .expected("`mode: cdc` with `publication`"),
                );
            }
            if let Some(s) = &p.slot
                && (s.is_empty()
                    || s.len() > 63
                    || !s
                        .bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'))
            {
                diags.push(err(
                    format!("`slot` `{s}`: a replication slot name is 1 to 63 lowercase letters, digits and `_`"),
                    "slot",
                ));
            }
            if p.pool_size == Some(0) {
                diags.push(err("`pool_size` must be at least 1".into(), "pool_size"));
            }
            if p.query.is_some() && p.cursor.as_ref().is_none_or(|c| c.columns().is_empty()) {
                diags.push(
                    err("a `query` needs a `cursor`: the column(s) rows are read in order of and resumed after".into(), "query")
                        .expected("`cursor: id` or `cursor: [updated_at, id]`"),
                );
            }
            if p.jsonb_column.is_some() && !p.columns.is_empty() {
                diags.push(err(
                    "set `jsonb_column` (the whole record into one column) or `columns` (fields into columns), not both".into(),
                    "jsonb_column",
                ));
            }
        }
        Connector::Http(h) => {
            if h.listen.is_none() && h.url.is_none() {
                diags.push(err(
                    "set `listen` (to receive) or `url` (to send)".into(),
                    "type",
                ));
            }
            if let Some(status) = h.response.as_ref().and_then(|r| r.status)
                && !(200..300).contains(&status)
            {
                diags.push(
                    err(
                        format!("`response.status` {status} is not a success"),
                        "response",
                    )
                    .expected("a 2xx status: 200, 202, 204"),
                );
            }
            if let Some(hmac) = h.auth.as_ref().and_then(|a| a.hmac.as_ref())
                && hmac.secrets.iter().all(|s| s.is_empty())
            {
                diags.push(err(
                    "`auth.hmac.secrets` is empty: no signature could pass".into(),
                    "auth",
                ));
            }
            if h.auth
                .as_ref()
                .is_some_and(|a| a.bearer.iter().any(String::is_empty))
            {
                diags.push(err("`auth.bearer` holds an empty token".into(), "auth"));
            }
            if h.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
                diags.push(err("`path` must start with `/`".into(), "path"));
            }
            // What `run` would refuse when it builds the server or client.
            if let Some(listen) = &h.listen {
                let port_ok = listen
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !port_ok {
                    diags.push(
                        err(
                            format!("`listen` `{listen}` is not a host and port"),
                            "listen",
                        )
                        .expected("`127.0.0.1:8080` or `0.0.0.0:8080`"),
                    );
                }
            }
            if let Some(u) = &h.url {
                match url::Url::parse(u) {
                    Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                    Ok(parsed) => diags.push(
                        err(
                            format!("`url` scheme `{}` is not http or https", parsed.scheme()),
                            "url",
                        )
                        .expected("`https://host/path`"),
                    ),
                    Err(e) => diags.push(
                        err(format!("`url` is not a URL: {e}"), "url")
                            .expected("`https://host/path`"),
                    ),
                }
            }
            // An HTTP token: the characters RFC 9110 allows in a method or
            // a header name.
            let token = |t: &str| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            };
            if let Some(m) = &h.method
                && !token(m)
            {
                diags.push(err(
                    format!("`method` `{m}` is not an HTTP method"),
                    "method",
                ));
            }
            for (name, value) in &h.headers {
                if !token(name) {
                    diags.push(err(
                        format!("header name `{name}` is not an HTTP token"),
                        "headers",
                    ));
                }
                if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                    diags.push(err(
                        format!(
                            "the value of header `{name}` holds a control character (a line break?)"
                        ),
                        "headers",
                    ));
                }
            }
            if let Some(tls) = &h.tls {
                for (key, file) in [
                    ("tls.cert_file", &tls.cert_file),
                    ("tls.key_file", &tls.key_file),
                    ("tls.ca_file", &tls.ca_file),
                ] {
                    if let Some(f) = file
                        && !root.join(f).is_file()
                    {
                        diags.push(err(format!("`{key}` `{f}` is not a file"), key));
                    }
                }
            }
            if let Some(tls) = &h.tls {
                let serves = tls.cert_file.is_some() || tls.key_file.is_some();
                if serves && (tls.cert_file.is_none() || tls.key_file.is_none()) {
                    diags.push(
                        err(
                            "`tls` needs both `cert_file` and `key_file`".into(),
                            if tls.cert_file.is_some() {
                                "tls.cert_file"
                            } else {
                                "tls.key_file"
                            },
                        )
                        .expected("PEM files of the certificate chain and its key"),
                    );
                }
            }
            // Keys of the other direction: `one_way_keys`, by how the
            // connector is used.
            if let Some(statuses) = &h.statuses
                && let Err(problems) = statuses.table()
            {
                for (list, p) in problems {
                    diags.push(err(p, &format!("statuses.{list}")));
                }
            }
        }
        Connector::Stdout(s) if s.format == Some(Format::Json) => {
            // One JSON array cannot be streamed: `run` refuses it.
            diags.push(
                err(
                    "standard output takes `jsonl` or `csv`, not `json`".into(),
                    "format",
                )
                .expected("`format: jsonl` (one record per line) or `format: csv`"),
            );
        }
        Connector::Stdin(_) | Connector::Stdout(_) => {}
    }
}

/// A file that `path` (a name or a glob, relative to `root`) names only
/// when case is ignored: what `run` would not find.
fn differs_only_in_case(root: &std::path::Path, path: &str) -> Option<String> {
    let full = root.join(path);
    if glob::glob(full.to_str()?)
        .ok()?
        .filter_map(Result::ok)
        .next()
        .is_some()
    {
        return None;
    }
    // The glob crate compares literal parts exactly even when told to
    // ignore case: every letter of `path` becomes a class (`[dD]`).
    let mut loose = String::new();
    let mut in_class = false;
    for c in path.chars() {
        match c {
            '[' => in_class = true,
            ']' => in_class = false,
            _ => {}
        }
        if !in_class && c.is_ascii_alphabetic() {
            loose.push_str(&format!(
                "[{}{}]",
                c.to_ascii_lowercase(),
                c.to_ascii_uppercase()
            ));
        } else {
            loose.push(c);
        }
    }
    let pattern = if std::path::Path::new(path).is_absolute() {
        loose
    } else {
        format!("{}/{loose}", glob::Pattern::escape(root.to_str()?))
    };
    let found = glob::glob(&pattern).ok()?.filter_map(Result::ok).next()?;
    Some(
        found
            .strip_prefix(root)
            .unwrap_or(&found)
            .display()
            .to_string(),
    )
}

/// The format implied by a file name, if any.
pub fn format_from_path(path: &str) -> Option<Format> {
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
        Some(Format::Jsonl)
    } else if lower.ends_with(".json") {
        Some(Format::Json)
    } else if lower.ends_with(".csv") {
        Some(Format::Csv)
    } else {
        None
    }
}

/// Checks every flow, then the bridge graph.
pub(crate) fn flows(diags: &mut Vec<Diagnostic>, project: &Project, flows: &[(FlowDef, Node)]) {
    for (flow, node) in flows {
        let mut c = FlowCheck {
            diags,
            file: &flow.file,
            project,
            flows,
            flow,
        };
        c.flow(&flow.spec, node);
    }
    bridge_cycles(diags, flows);
}

/// How the project's flows use each connector: the directions, and the
/// first flow (name, file) using it each way.
fn uses(flows: &[(FlowDef, Node)]) -> BTreeMap<&str, BTreeMap<Direction, &FlowDef>> {
    let mut uses: BTreeMap<&str, BTreeMap<Direction, &FlowDef>> = BTreeMap::new();
    for (flow, _) in flows {
        uses.entry(flow.spec.input.as_str())
            .or_default()
            .entry(Direction::Input)
            .or_insert(flow);
        for o in &flow.spec.outputs {
            uses.entry(o.to.as_str())
                .or_default()
                .entry(Direction::Output)
                .or_insert(flow);
        }
    }
    uses
}

/// A key that applies to one direction only, on a connector that no flow
/// uses that way, is refused at the key: it would be silently ignored (an
/// output's `token` on a webhook input leaves the webhook open to anyone).
/// A connector no flow uses is not checked (it may be used by a selection
/// or a later flow both ways).
pub(crate) fn one_way_keys(
    diags: &mut Vec<Diagnostic>,
    project: &Project,
    flows: &[(FlowDef, Node)],
    nodes: &indexmap::IndexMap<String, Node>,
) {
    let uses = uses(flows);
    for def in project.connectors.values() {
        let Some(used) = uses.get(def.reference.as_str()) else {
            continue;
        };
        let node = nodes.get(&def.reference);
        for key in def.connector.one_way_keys() {
            if used.contains_key(&key.direction) {
                continue;
            }
            let Some((other, flow)) = used.iter().next() else {
                continue;
            };
            // At the key itself (`token:`), else the connector.
            let span = node
                .and_then(|n| {
                    let (parents, last) = key.key.rsplit_once('.').unwrap_or(("", &key.key));
                    let parent = parents
                        .split('.')
                        .filter(|s| !s.is_empty())
                        .try_fold(n, |n, seg| n.get(seg))?;
                    parent.entry(last).map(|(k, _)| k)
                })
                .or(node)
                .map(|n| n.span);
            let d = Diagnostic::error(
                "connector::wrong-direction-key",
                format!(
                    "connector `{}`: `{}` applies to an {} only, but `{}` is only used as an {} (by flow `{}`, {})",
                    def.reference,
                    key.key,
                    key.direction.as_str(),
                    def.reference,
                    other.as_str(),
                    flow.name,
                    flow.file
                ),
            )
            .in_file(&def.file)
            .at(span.unwrap_or(Span {
                line: 1,
                col: 1,
                ..Span::default()
            }))
            .label(format!("ignored on an {}", other.as_str()))
            .hint(match &key.instead {
                Some(instead) => format!("{instead}; remove `{}`", key.key),
                None => format!(
                    "remove `{}`, or use `{}` as an {} too",
                    key.key,
                    def.reference,
                    key.direction.as_str()
                ),
            });
            diags.push(d);
        }
    }
}

/// A flow whose input file is also one of its outputs would read its own
/// output (nothing, or forever with `follow`): refused at the output.
pub(crate) fn own_output(
    diags: &mut Vec<Diagnostic>,
    project: &Project,
    flows: &[(FlowDef, Node)],
) {
    let path_of = |reference: &str| match project.connectors.get(reference).map(|d| &d.connector) {
        Some(Connector::File(f)) => Some(f.path.as_str()),
        _ => None,
    };
    for (flow, node) in flows {
        let Some(input) = path_of(&flow.spec.input) else {
            continue;
        };
        let within = |p: &str| normalize(&project.root.join(p));
        let pattern = glob::Pattern::new(&within(input).display().to_string()).ok();
        for (i, o) in flow.spec.outputs.iter().enumerate() {
            let Some(output) = path_of(&o.to) else {
                continue;
            };
            let out = within(output);
            let same =
                out == within(input) || pattern.as_ref().is_some_and(|p| p.matches_path(&out));
            if same {
                let at = node.find(&[Step::Key("outputs"), Step::Index(i), Step::Key("to")]);
                diags.push(
                    Diagnostic::error(
                        "flow::reads-own-output",
                        format!(
                            "flow `{}` writes `{output}` (through `{}`), which its input `{}` reads (`{input}`): it would read its own output",
                            flow.name, o.to, flow.spec.input
                        ),
                    )
                    .in_file(&flow.file)
                    .at(at.span)
                    .hint("write to another file, or send records on to another flow with `to: bridge.<flow>`"),
                );
            }
        }
    }
}

/// Checks the parts of a flow file that could be read on their own (the
/// whole did not deserialize), so that their errors are reported too.
pub(crate) fn partial_flow(
    diags: &mut Vec<Diagnostic>,
    project: &Project,
    flows: &[(FlowDef, Node)],
    name: &str,
    file: &str,
    node: &Node,
) {
    let input = node
        .get("input")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    let spec = FlowFile {
        name: Some(name.to_string()),
        description: None,
        input: input.clone(),
        transforms: Vec::new(),
        outputs: Vec::new(),
        unrouted: None,
    };
    let flow = FlowDef {
        name: name.to_string(),
        file: file.to_string(),
        spec,
    };
    let mut c = FlowCheck {
        diags,
        file,
        project,
        flows,
        flow: &flow,
    };
    if let Some(n) = node.get("input").filter(|n| n.as_str().is_some()) {
        c.reference(&input, n, false);
    }
    for step in node.get("transforms").map(Node::items).unwrap_or_default() {
        if let Ok(t) = weavster_spec::yaml::from_node::<Transform>(step) {
            let args = step.get(t.name()).unwrap_or(step);
            c.transform(&t, args);
        }
    }
    for out in node.get("outputs").map(Node::items).unwrap_or_default() {
        if let Ok(o) = weavster_spec::yaml::from_node::<weavster_spec::types::Output>(out) {
            c.reference(&o.to, out.find(&[Step::Key("to")]), true);
            if let Some(w) = &o.when {
                c.expr(w, out.find(&[Step::Key("when")]));
            }
        }
    }
}

struct FlowCheck<'a> {
    diags: &'a mut Vec<Diagnostic>,
    file: &'a str,
    project: &'a Project,
    flows: &'a [(FlowDef, Node)],
    flow: &'a FlowDef,
}

impl FlowCheck<'_> {
    fn push(&mut self, d: Diagnostic) {
        self.diags.push(d.in_file(self.file));
    }

    fn flow(&mut self, spec: &FlowFile, node: &Node) {
        self.stray_templates(node);
        let input_node = node.find(&[Step::Key("input")]);
        self.reference(&spec.input, input_node, false);
        if let Some(ts) = node.get("transforms") {
            self.transforms(&spec.transforms, ts);
        }
        let outputs = node.find(&[Step::Key("outputs")]);
        if spec.outputs.is_empty() {
            self.push(
                Diagnostic::error("flow::no-outputs", "a flow needs at least one output")
                    .at(outputs.span)
                    .hint("add `- to: <file>.<connector>` under `outputs:`"),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, out) in spec.outputs.iter().enumerate() {
            let onode = outputs.find(&[Step::Index(i)]);
            let to_node = onode.find(&[Step::Key("to")]);
            if !seen.insert(out.to.clone()) {
                self.push(
                    Diagnostic::error(
                        "flow::duplicate-output",
                        format!("output `{}` is listed twice", out.to),
                    )
                    .at(to_node.span)
                    .hint("combine the conditions with `or` in one output's `when`"),
                );
            }
            self.reference(&out.to, to_node, true);
            if let Some(w) = &out.when {
                self.expr(w, onode.find(&[Step::Key("when")]));
            }
        }
    }

    /// `{{ ... }}` left in a flow file outside `template:` values was not a
    /// load-time expression and would be taken literally.
    fn stray_templates(&mut self, node: &Node) {
        match &node.kind {
            NodeKind::Map(entries) => {
                for (k, v) in entries {
                    if k.raw.as_deref() != Some("template") {
                        self.stray_templates(v);
                    }
                }
            }
            NodeKind::Seq(items) => items.iter().for_each(|i| self.stray_templates(i)),
            NodeKind::Str(s) if s.contains("{{") => self.push(
                Diagnostic::error("render::record-template", "`{{ ... }}` outside a `template` step")
                    .at(node.span)
                    .label("not rendered")
                    .hint("when a flow file loads, only `{{ }}` blocks using env_var, var, target or project are rendered; use a `template` step or a `set` expression for record values"),
            ),
            _ => {}
        }
    }

    fn reference(&mut self, reference: &str, node: &Node, as_output: bool) {
        let role = if as_output { "output" } else { "input" };
        let Some((prefix, name)) = reference.split_once('.') else {
            self.push(
                Diagnostic::error(
                    "ref::syntax",
                    format!("`{reference}` is not a connector reference"),
                )
                .at(node.span)
                .expected("`<connectors file>.<key>`, e.g. `files.orders_in`, or `bridge.<flow>`"),
            );
            return;
        };
        if prefix == "bridge" {
            if as_output {
                match self.flows.iter().find(|(f, _)| f.name == name) {
                    None => {
                        let names: Vec<&str> =
                            self.flows.iter().map(|(f, _)| f.name.as_str()).collect();
                        self.push(
                            Diagnostic::error(
                                "ref::unknown-flow",
                                format!("`{reference}` names no flow"),
                            )
                            .at(node.span)
                            .expected("`bridge.<flow>` where <flow> is a flow of this project")
                            .maybe_hint(
                                did_you_mean(name, names.iter().copied())
                                    .map(|s| format!("did you mean `bridge.{s}`?")),
                            ),
                        );
                    }
                    Some((target, _)) if target.spec.input != reference => {
                        self.push(
                            Diagnostic::error(
                                "ref::bridge-input",
                                format!("flow `{name}` does not read from `{reference}` (its input is `{}`)", target.spec.input),
                            )
                            .at(node.span)
                            .hint(format!("set `input: {reference}` in {}", target.file)),
                        );
                    }
                    Some(_) => {}
                }
            } else if name != self.flow.name {
                self.push(
                    Diagnostic::error(
                        "ref::bridge-input",
                        format!(
                            "a flow can only read its own bridge: `bridge.{}`, not `{reference}`",
                            self.flow.name
                        ),
                    )
                    .at(node.span)
                    .hint(format!(
                        "other flows send to this one with `to: bridge.{}`",
                        self.flow.name
                    )),
                );
            }
            return;
        }
        let Some(def) = self.project.connectors.get(reference) else {
            if self
                .project
                .broken
                .contains(&format!("connector:{reference}"))
                || self
                    .project
                    .broken
                    .contains(&format!("connectors:{prefix}"))
            {
                return;
            }
            let names: Vec<&str> = self.project.connectors.keys().map(String::as_str).collect();
            let mut d = Diagnostic::error(
                "ref::unknown-connector",
                format!("unknown connector `{reference}`"),
            )
            .at(node.span)
            .label(format!("{role} not found"));
            d = match did_you_mean(reference, names.iter().copied()) {
                Some(s) => d.hint(format!("did you mean `{s}`?")),
                None if names.is_empty() => d.hint("define connectors in connectors/<file>.yaml and refer to them as `<file>.<key>`"),
                None => d.expected(format!("one of {}", quoted_list(&names))),
            };
            self.push(d);
            return;
        };
        let ok = if as_output {
            def.connector.can_be_output()
        } else {
            def.connector.can_be_input()
        };
        if !ok {
            self.push(
                Diagnostic::error(
                    "ref::wrong-direction",
                    format!(
                        "`{reference}` is a `{}` connector and cannot be used as an {role}",
                        def.connector.type_name()
                    ),
                )
                .at(node.span)
                .hint(if as_output {
                    "`stdin` can only be an input"
                } else {
                    "`stdout` can only be an output"
                }),
            );
        }
    }

    fn transforms(&mut self, list: &[Transform], node: &Node) {
        for (i, t) in list.iter().enumerate() {
            let step = node.find(&[Step::Index(i)]);
            let args = step.get(t.name()).unwrap_or(step);
            self.transform(t, args);
        }
    }

    fn transform(&mut self, t: &Transform, args: &Node) {
        match t {
            Transform::Set(map) => {
                for (i, (path, e)) in map.iter().enumerate() {
                    let (k, v) = entry(args, i);
                    self.path(path, k);
                    self.expr(e, v);
                }
            }
            Transform::Add(map) | Transform::Default(map) => {
                for (i, path) in map.keys().enumerate() {
                    self.path(path, entry(args, i).0);
                }
            }
            Transform::Rename(map) => {
                for (i, (from, to)) in map.iter().enumerate() {
                    let (k, v) = entry(args, i);
                    self.path(from, k);
                    self.path(to, v);
                }
            }
            Transform::Drop(paths) | Transform::Select(paths) => {
                for (i, p) in paths.iter().enumerate() {
                    self.path(p, args.find(&[Step::Index(i)]));
                }
                if paths.is_empty() && matches!(t, Transform::Select(_)) {
                    self.push(
                        Diagnostic::warning(
                            "transform::empty-select",
                            "`select: []` removes every field",
                        )
                        .at(args.span),
                    );
                }
            }
            Transform::Coalesce(map) => {
                for (i, (path, exprs)) in map.iter().enumerate() {
                    let (k, v) = entry(args, i);
                    self.path(path, k);
                    if exprs.is_empty() {
                        self.push(
                            Diagnostic::error(
                                "transform::coalesce",
                                "`coalesce` needs at least one expression",
                            )
                            .at(v.span),
                        );
                    }
                    for (j, e) in exprs.iter().enumerate() {
                        self.expr(e, v.find(&[Step::Index(j)]));
                    }
                }
            }
            Transform::Cast(map) => {
                for (i, path) in map.keys().enumerate() {
                    self.path(path, entry(args, i).0);
                }
            }
            Transform::Filter(e) => self.expr(e, args),
            Transform::Regex(r) => self.regex(r, args),
            Transform::Template(map) => {
                for (i, (path, tpl)) in map.iter().enumerate() {
                    let (k, v) = entry(args, i);
                    self.path(path, k);
                    self.template(tpl, v);
                }
            }
            Transform::Lookup(l) => {
                self.path(&l.field, args.find(&[Step::Key("field")]));
                if let Some(into) = &l.into {
                    self.path(into, args.find(&[Step::Key("into")]));
                }
                let table_node = args.find(&[Step::Key("table")]);
                match self.project.lookups.get(&l.table) {
                    None if self.project.broken.contains(&format!("lookup:{}", l.table)) => {}
                    None => {
                        let names: Vec<&str> =
                            self.project.lookups.keys().map(String::as_str).collect();
                        self.push(
                            Diagnostic::error(
                                "lookup::unknown-table",
                                format!("unknown lookup table `{}`", l.table),
                            )
                            .at(table_node.span)
                            .expected(format!("a file lookups/{}.csv", l.table))
                            .maybe_hint(
                                did_you_mean(&l.table, names.iter().copied())
                                    .map(|s| format!("did you mean `{s}`?")),
                            ),
                        );
                    }
                    Some(table) => {
                        if let Some(col) = &l.column
                            && !table.data.columns.iter().any(|c| c == col)
                        {
                            let cols: Vec<&str> = table
                                .data
                                .columns
                                .iter()
                                .skip(1)
                                .map(String::as_str)
                                .collect();
                            self.push(
                                Diagnostic::error(
                                    "lookup::unknown-column",
                                    format!("lookup table `{}` has no column `{col}`", l.table),
                                )
                                .at(args.find(&[Step::Key("column")]).span)
                                .expected(format!("one of {}", quoted_list(&cols)))
                                .maybe_hint(
                                    did_you_mean(col, cols.iter().copied())
                                        .map(|s| format!("did you mean `{s}`?")),
                                ),
                            );
                        }
                    }
                }
                let default_ok = matches!(
                    l.on_miss,
                    None | Some(weavster_spec::types::OnMiss::Default)
                );
                if l.default.is_some() && !default_ok {
                    self.push(
                        Diagnostic::warning(
                            "lookup::unused-default",
                            "`default` is used only with `on_miss: default`",
                        )
                        .at(args.find(&[Step::Key("default")]).span),
                    );
                }
            }
            Transform::When(w) => {
                self.expr(&w.condition, args.find(&[Step::Key("if")]));
                if let Some(n) = args.get("then") {
                    self.transforms(&w.then, n);
                }
                if let Some(n) = args.get("else") {
                    self.transforms(&w.otherwise, n);
                }
                if w.then.is_empty() && w.otherwise.is_empty() {
                    self.push(
                        Diagnostic::warning(
                            "transform::empty-when",
                            "`when` has neither `then` nor `else` steps",
                        )
                        .at(args.span),
                    );
                }
            }
            Transform::Explode(x) => {
                self.path(&x.field, args.find(&[Step::Key("field")]));
                if let Some(into) = &x.into {
                    self.path(into, args.find(&[Step::Key("into")]));
                }
            }
        }
    }

    fn regex(&mut self, r: &RegexStep, args: &Node) {
        self.path(&r.field, args.find(&[Step::Key("field")]));
        match (&r.pattern, &r.replace) {
            (Some(_), Some(_)) => self.push(
                Diagnostic::error("regex::mode", "`pattern` and `replace` cannot be used together")
                    .at(args.find(&[Step::Key("replace")]).span)
                    .hint("use one `regex` step to extract (`pattern`) and another to replace (`replace` + `with`)"),
            ),
            (None, None) => self.push(
                Diagnostic::error("regex::mode", "`regex` needs `pattern` (to extract) or `replace` (to replace)")
                    .at(args.span),
            ),
            (Some(p), None) => {
                let pnode = args.find(&[Step::Key("pattern")]);
                if r.with.is_some() {
                    self.push(
                        Diagnostic::error("regex::mode", "`with` goes with `replace`, not `pattern`")
                            .at(args.find(&[Step::Key("with")]).span),
                    );
                }
                if let Some(re) = self.compile_regex(p, pnode)
                    && re.capture_names().flatten().next().is_none() {
                        self.push(
                            Diagnostic::error("regex::no-groups", "the pattern has no named groups to extract")
                                .at(pnode.span)
                                .hint("name the parts to extract: `(?P<name>...)`"),
                        );
                    }
                if let Some(into) = &r.into {
                    self.path(into, args.find(&[Step::Key("into")]));
                }
            }
            (None, Some(p)) => {
                let pnode = args.find(&[Step::Key("replace")]);
                self.compile_regex(p, pnode);
                if r.with.is_none() {
                    self.push(Diagnostic::error("regex::mode", "`replace` needs `with` (the replacement text)").at(args.span));
                }
                for key in ["into", "on_no_match"] {
                    if let Some(n) = args.get(key) {
                        self.push(
                            Diagnostic::error("regex::mode", format!("`{key}` goes with `pattern`, not `replace`")).at(n.span),
                        );
                    }
                }
            }
        }
    }

    fn compile_regex(&mut self, pattern: &str, node: &Node) -> Option<regex::Regex> {
        match regex::Regex::new(pattern) {
            Ok(re) => Some(re),
            Err(e) => {
                let text = e.to_string();
                let reason = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("error: "))
                    .unwrap_or(text.lines().last().unwrap_or("invalid"))
                    .to_string();
                self.push(
                    Diagnostic::error("regex::invalid", format!("invalid regex: {reason}"))
                        .at(node.span)
                        .hint("patterns use the Rust `regex` crate syntax (no look-around or backreferences)"),
                );
                None
            }
        }
    }

    fn template(&mut self, src: &str, node: &Node) {
        // A record template has no other templates to load: these would
        // fail on every record.
        static LOADS: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
        if let Some(re) = LOADS
            .get_or_init(|| regex::Regex::new(r"\{%[-+]?\s*(include|import|extends|from)\b").ok())
            && let Some(m) = re.captures(src).and_then(|c| c.get(1))
        {
            self.push(
                Diagnostic::error(
                    "template::load",
                    format!("`{}` cannot be used in a record template", m.as_str()),
                )
                .at(sub_span(node, m.start(), m.end()))
                .hint("a record template is compiled into the flow on its own; write the text in place, or use a macro defined in the same template"),
            );
            return;
        }
        let env = minijinja::Environment::new();
        if let Err(e) = env.template_from_str(src) {
            let detail = e
                .detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.kind().to_string());
            let span = e
                .range()
                .map(|r| sub_span(node, r.start, r.end))
                .unwrap_or(node.span);
            self.push(
                Diagnostic::error("template::syntax", format!("invalid template: {detail}"))
                    .at(span),
            );
        }
    }

    fn path(&mut self, path: &str, node: &Node) {
        if let Err(e) = weavster_expr::parse_path(path) {
            self.push(
                Diagnostic::error(
                    "path::invalid",
                    format!("invalid record path `{path}`: {}", e.message),
                )
                .at(node.span)
                .expected("`field`, `a.b.c`, `a['key with space']` or `items[0]`"),
            );
        }
    }

    fn expr(&mut self, src: &str, node: &Node) {
        let parsed = match weavster_expr::parse(src) {
            Ok(e) => e,
            Err(e) => {
                let d =
                    Diagnostic::error("expr::syntax", format!("invalid expression: {}", e.message))
                        .at(sub_span(node, e.start, e.end))
                        .maybe_hint(e.hint);
                self.push(d);
                return;
            }
        };
        for e in weavster_expr::check(&parsed) {
            let code = if e.message.starts_with("unknown function") {
                "expr::unknown-function"
            } else {
                "expr::type"
            };
            self.push(
                Diagnostic::error(code, e.message.clone())
                    .at(sub_span(node, e.start, e.end))
                    .maybe_hint(e.hint),
            );
        }
        let mut missing = Vec::new();
        parsed.walk(&mut |e| {
            if let weavster_expr::ExprKind::Call { name, args, .. } = &e.kind
                && name == "var"
                && args.len() == 1
                && let Some(weavster_expr::ExprKind::Lit(weavster_expr::Literal::Str(v))) =
                    args.first().map(|a| &a.kind)
                && !self.project.vars.contains_key(v)
            {
                missing.push((v.clone(), e.start, e.end));
            }
        });
        for (v, start, end) in missing {
            self.push(
                Diagnostic::warning(
                    "expr::unknown-var",
                    format!(
                        "var `{v}` is not defined for target `{}`",
                        self.project.target
                    ),
                )
                .at(sub_span(node, start, end))
                .hint(format!(
                    "define it under `vars:` or give a default: var('{v}', 0)"
                )),
            );
        }
    }
}

/// The key and value nodes of the `i`th entry of a map node.
fn entry(map: &Node, i: usize) -> (&Node, &Node) {
    match map.entries().get(i) {
        Some((k, v)) => (k, v),
        None => (map, map),
    }
}

/// The span of bytes `[start, end)` of a scalar's text, when the scalar is
/// written on one line without escapes; otherwise the whole scalar.
fn sub_span(node: &Node, start: usize, end: usize) -> Span {
    let Some(raw) = &node.raw else {
        return node.span;
    };
    let len = node.span.end - node.span.start;
    let exact = if node.quoted {
        len == raw.len() + 2
    } else {
        len == raw.len()
    };
    if exact && !raw.contains('\n') {
        let prefix = node.text_start() - node.span.start;
        let col_start = raw
            .get(..start.min(raw.len()))
            .map(|s| s.chars().count())
            .unwrap_or(0);
        Span {
            start: node.text_start() + start,
            end: node.text_start() + end.max(start + usize::from(start == end)).min(raw.len()),
            line: node.span.line,
            col: node.span.col + prefix + col_start,
        }
    } else {
        node.span
    }
}

fn bridge_cycles(diags: &mut Vec<Diagnostic>, flows: &[(FlowDef, Node)]) {
    let edges: BTreeMap<&str, Vec<(&str, usize)>> = flows
        .iter()
        .map(|(f, _)| {
            let targets = f
                .spec
                .outputs
                .iter()
                .enumerate()
                .filter_map(|(i, o)| o.to.strip_prefix("bridge.").map(|t| (t, i)))
                .collect();
            (f.name.as_str(), targets)
        })
        .collect();
    let mut reported: BTreeSet<Vec<&str>> = BTreeSet::new();
    for start in edges.keys() {
        // Depth-first search for a path back to `start`.
        let mut stack: Vec<(&str, Vec<&str>)> = vec![(start, vec![start])];
        let mut visited = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for (next, _) in edges.get(at).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    let min_pos = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, n)| **n)
                        .map(|(i, _)| i)
                        .unwrap_or(0);
                    cycle.rotate_left(min_pos);
                    if reported.insert(cycle.clone()) {
                        let closing = *path.last().unwrap_or(start);
                        let Some((flow, node)) = flows.iter().find(|(f, _)| f.name == closing)
                        else {
                            continue;
                        };
                        let out_index = edges
                            .get(closing)
                            .and_then(|es| es.iter().find(|(t, _)| t == start).map(|(_, i)| *i))
                            .unwrap_or(0);
                        let at = node
                            .find(&[
                                Step::Key("outputs"),
                                Step::Index(out_index),
                                Step::Key("to"),
                            ])
                            .span;
                        let mut names: Vec<&str> = path.clone();
                        names.push(start);
                        diags.push(
                            Diagnostic::error("bridge::cycle", format!("bridge cycle: {}", names.join(" → ")))
                                .in_file(&flow.file)
                                .at(at)
                                .hint("records would circulate forever; break the cycle or guard it with a `when` on a different output"),
                        );
                    }
                } else if visited.insert(*next) && edges.contains_key(next) {
                    let mut p = path.clone();
                    p.push(next);
                    stack.push((next, p));
                }
            }
        }
    }
}

pub(crate) fn test_case(
    diags: &mut Vec<Diagnostic>,
    file: &str,
    node: &Node,
    case: &TestCase,
    flow: &FlowDef,
) {
    let outputs: Vec<&str> = flow.spec.outputs.iter().map(|o| o.to.as_str()).collect();
    let expect = node.find(&[Step::Key("expect")]);
    for (key_node, value) in expect.entries() {
        let key = key_node.raw.as_deref().unwrap_or_default();
        if key == "errors" {
            for (i, item) in value.items().iter().enumerate() {
                let ok = matches!(&item.kind, NodeKind::Map(_))
                    && item.get("stage").is_some_and(|s| s.as_str().is_some())
                    && item.entries().iter().all(|(k, _)| {
                        matches!(k.raw.as_deref(), Some("stage" | "message" | "path"))
                    });
                if !ok {
                    diags.push(
                        Diagnostic::error("test::expected-error", format!("expected error #{} must be `{{stage, message}}`", i + 1))
                            .in_file(file)
                            .at(item.span)
                            .expected("a map with `stage` (transform, output, deadline…) and an optional `message` substring and `path`"),
                    );
                }
            }
            continue;
        }
        if !outputs.contains(&key) {
            diags.push(
                Diagnostic::error(
                    "test::unknown-output",
                    format!("flow `{}` has no output `{key}`", flow.name),
                )
                .in_file(file)
                .at(key_node.span)
                .expected(format!("one of {}, or `errors`", quoted_list(&outputs)))
                .maybe_hint(
                    did_you_mean(key, outputs.iter().copied())
                        .map(|s| format!("did you mean `{s}`?")),
                ),
            );
        }
    }
    let input = node.find(&[Step::Key("input")]);
    for (i, rec) in case.input.iter().enumerate() {
        if !rec.is_object() {
            diags.push(
                Diagnostic::error(
                    "test::input",
                    format!("input record #{} is not an object", i + 1),
                )
                .in_file(file)
                .at(input.find(&[Step::Index(i)]).span)
                .expected("a map, e.g. `- { id: 1, name: ada }`"),
            );
        }
    }
    if let Some(now) = &case.now
        && !is_rfc3339(now)
    {
        diags.push(
            Diagnostic::error(
                "test::now",
                format!("`now` is not an RFC 3339 timestamp: `{now}`"),
            )
            .in_file(file)
            .at(node.find(&[Step::Key("now")]).span)
            .expected("e.g. `2026-01-01T00:00:00Z`"),
        );
    }
}

fn is_rfc3339(s: &str) -> bool {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(
            r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$",
        )
        .ok()
    })
    .as_ref()
    .is_some_and(|re| re.is_match(s))
}
