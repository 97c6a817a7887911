//! Generated flows and records, for differential testing.
//!
//! [`case`] is a proptest strategy of [`Case`]s: a well-formed flow (the
//! spec types a user writes: every transform — `set`, `add`, `default`,
//! `rename`, `drop`, `select`, `coalesce`, `cast`, `filter`, `regex`
//! extraction with and without `into` and every `on_no_match`, `regex`
//! replacement, plain and full templates, `lookup` with every `on_miss`,
//! nested `when`, `explode` — expressions over every function and operator,
//! nested and indexed paths, outputs with `when`s) and a batch of records
//! biased towards the fields the flow names (present, missing, null, of the
//! wrong type), plus vars. Shrinking comes with proptest.
//!
//! Field names overlap on purpose: regex groups, `into`s and renames write
//! fields that expressions read, so that a wrong "which fields does a flow
//! touch" analysis shows. No I/O.

use indexmap::IndexMap;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use weavster_spec::types::{
    CastType, ExplodeStep, FlowFile, LookupStep, OnMiss, OnNoMatch, Output, RegexStep, Transform,
    Unrouted, WhenStep,
};

/// One generated case: a flow, records and vars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub flow: FlowFile,
    pub records: Vec<Value>,
    #[serde(default)]
    pub vars: Map<String, Value>,
}

/// Top-level field names flows and records use.
pub const FIELDS: &[&str] = &["a", "b", "c", "n", "s", "items", "user", "k y", "day"];
/// Keys inside nested objects.
const INNER: &[&str] = &["x", "y", "id"];

/// The lookup table every generated `lookup` may use: `codes`, with columns
/// `code`, `name`, `region`.
pub fn lookup_table() -> (Vec<String>, Vec<Vec<String>>) {
    let columns = ["code", "name", "region"].map(String::from).to_vec();
    let rows = [
        ["de", "Germany", "eu"],
        ["fr", "France", "eu"],
        ["us", "United States", "na"],
        ["1", "one", "num"],
        ["", "empty", "none"],
    ]
    .iter()
    .map(|r| r.map(String::from).to_vec())
    .collect();
    (columns, rows)
}

/// The name of [`lookup_table`] in a project.
pub const LOOKUP: &str = "codes";

/// Vars a flow's `var()` may read.
pub fn vars() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("limit".into(), Value::from(10));
    m.insert("tag".into(), Value::from("v"));
    m
}

// ---------------------------------------------------------------------------
// Paths and expressions (source text, as users write them)
// ---------------------------------------------------------------------------

/// Top-level fields a path can name on its own (a key with a space can
/// only be reached inside another: `user['k y']`).
const PATH_FIELDS: &[&str] = &["a", "b", "c", "n", "s", "items", "user", "day"];

/// A record path: `a`, `user.x`, `items[0]`, `items[1].id`, `user['k y']`.
pub fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(PATH_FIELDS).prop_map(str::to_string),
        2 => (prop::sample::select(&["user", "b", "c"][..]), prop::sample::select(INNER))
            .prop_map(|(a, b)| format!("{a}.{b}")),
        1 => (prop::sample::select(&["items", "a"][..]), -2i64..3).prop_map(|(a, i)| format!("{a}[{i}]")),
        1 => (prop::sample::select(&["items"][..]), 0i64..2, prop::sample::select(INNER))
            .prop_map(|(a, i, k)| format!("{a}[{i}].{k}")),
        1 => prop::sample::select(&["id", "k y"][..]).prop_map(|k| format!("user['{k}']")),
    ]
}

/// A path that names a single field to write (no negative index).
fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(PATH_FIELDS).prop_map(str::to_string),
        2 => (prop::sample::select(&["user", "out", "b"][..]), prop::sample::select(INNER))
            .prop_map(|(a, b)| format!("{a}.{b}")),
        1 => (prop::sample::select(&["items"][..]), 0i64..2).prop_map(|(a, i)| format!("{a}[{i}]")),
    ]
}

/// The kind of value an expression should give, so that generated
/// expressions pass the static checks (a path can still hold anything:
/// type errors at run time are record errors, and are generated too).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Any,
    Num,
    Str,
    Bool,
    List,
}

fn kind_of(t: weavster_expr::Type) -> Kind {
    use weavster_expr::Type;
    match t {
        Type::Int | Type::Float | Type::Number => Kind::Num,
        Type::String => Kind::Str,
        Type::Bool => Kind::Bool,
        Type::List => Kind::List,
        _ => Kind::Any,
    }
}

fn literal(kind: Kind) -> BoxedStrategy<String> {
    let num = prop_oneof![
        (-20i64..20).prop_map(|i| i.to_string()),
        (-100.0f64..100.0).prop_map(|f| format!("{f:.2}")),
    ];
    let text = prop::sample::select(
        &[
            "'de'",
            "'x'",
            "''",
            "'a,b'",
            "'12'",
            "'2026-01-02T03:04:05Z'",
            "\"Q\"",
        ][..],
    )
    .prop_map(str::to_string);
    let boolean = prop::sample::select(&["true", "false"][..]).prop_map(str::to_string);
    match kind {
        Kind::Num => num.boxed(),
        Kind::Str => text.boxed(),
        Kind::Bool => boolean.boxed(),
        Kind::List => Just("[1, 'a', null]".to_string()).boxed(),
        Kind::Any => prop_oneof![
            Just("null".to_string()),
            boolean,
            num,
            text,
            Just("[1, 'a', null]".to_string()),
            Just("{'k': 1}".to_string()),
        ]
        .boxed(),
    }
}

/// Calls whose arguments must have a particular shape.
fn special_call(kind: Kind) -> BoxedStrategy<String> {
    match kind {
        Kind::Bool => path().prop_map(|p| format!("exists({p})")).boxed(),
        Kind::Num => prop_oneof![
            Just("var('limit')".to_string()),
            path().prop_map(|p| format!("round({p}, 1)")),
            path().prop_map(|p| format!("length(string({p}))")),
        ]
        .boxed(),
        Kind::Str => prop_oneof![
            Just("var('tag')".to_string()),
            Just("now()".to_string()),
            Just("uuid()".to_string()),
            path().prop_map(|p| format!("format_timestamp({p}, '%Y-%m-%d')")),
            path().prop_map(|p| format!("base64_decode(base64_encode(string({p})))")),
            path().prop_map(|p| format!("substring(string({p}), 1, 3)")),
            path().prop_map(|p| format!("replace(string({p}), 'a', 'b')")),
            path().prop_map(|p| format!("join([{p}, 'z'], '-')")),
            path().prop_map(|p| format!("to_json({p})")),
        ]
        .boxed(),
        Kind::List => path()
            .prop_map(|p| format!("split(string({p}), ',')"))
            .boxed(),
        Kind::Any => prop_oneof![
            path().prop_map(|p| format!("parse_timestamp({p})")),
            path().prop_map(|p| format!("parse_json(to_json({p}))")),
            Just("var('missing')".to_string()),
        ]
        .boxed(),
    }
}

/// A call of a library function returning `kind`, its arguments of the
/// kinds its parameters take.
fn call(kind: Kind, depth: u32) -> BoxedStrategy<String> {
    let fns: Vec<&'static weavster_expr::Function> = weavster_expr::FUNCTIONS
        .iter()
        .filter(|f| !matches!(f.name, "exists" | "var" | "now" | "uuid"))
        .filter(|f| {
            kind == Kind::Any || kind_of(f.returns) == kind || kind_of(f.returns) == Kind::Any
        })
        .collect();
    if fns.is_empty() {
        return special_call(kind);
    }
    (prop::sample::select(fns), any::<bool>(), 0usize..3)
        .prop_flat_map(move |(f, as_filter, extra)| {
            let count = if f.variadic {
                f.required + extra
            } else {
                (f.required + extra).min(f.params.len())
            };
            let args: Vec<BoxedStrategy<String>> = (0..count)
                .map(|i| {
                    let t = f
                        .params
                        .get(i)
                        .or(f.params.last())
                        .copied()
                        .unwrap_or(weavster_expr::Type::Any);
                    typed(kind_of(t), depth)
                })
                .collect();
            args.prop_map(move |mut args| {
                if as_filter && !args.is_empty() {
                    let first = args.remove(0);
                    if args.is_empty() {
                        format!("({first} | {})", f.name)
                    } else {
                        format!("({first} | {}({}))", f.name, args.join(", "))
                    }
                } else {
                    format!("{}({})", f.name, args.join(", "))
                }
            })
        })
        .boxed()
}

/// An expression of about `kind`, nesting up to `depth`.
fn typed(kind: Kind, depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        4 => path().boxed(),
        2 => literal(kind),
        1 => special_call(kind),
    ]
    .boxed();
    if depth == 0 {
        return leaf;
    }
    let d = depth - 1;
    let cond = (typed(Kind::Bool, d), typed(kind, d), typed(kind, d))
        .prop_map(|(c, a, b)| format!("({a} if {c} else {b})"));
    let inner = match kind {
        Kind::Num => prop_oneof![
            2 => (typed(Kind::Num, d), prop::sample::select(&["+", "-", "*", "/", "//", "%", "**"][..]), typed(Kind::Num, d))
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            1 => typed(Kind::Num, d).prop_map(|a| format!("(-{a})")),
        ]
        .boxed(),
        Kind::Str => (typed(Kind::Any, d), typed(Kind::Any, d))
            .prop_map(|(a, b)| format!("({a} ~ {b})"))
            .boxed(),
        Kind::Bool => prop_oneof![
            2 => (typed(Kind::Any, d), prop::sample::select(&["==", "!=", "<", "<=", ">", ">="][..]), typed(Kind::Any, d))
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            1 => (typed(Kind::Bool, d), prop::sample::select(&["and", "or"][..]), typed(Kind::Bool, d))
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            1 => typed(Kind::Bool, d).prop_map(|a| format!("(not {a})")),
            1 => (typed(Kind::Any, d), prop::sample::select(&["in", "not in"][..]), typed(Kind::List, d))
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
        ]
        .boxed(),
        Kind::List => typed(Kind::Any, d)
            .prop_map(|a| format!("[{a}, 1]"))
            .boxed(),
        Kind::Any => prop_oneof![
            1 => typed(Kind::Num, d),
            1 => typed(Kind::Str, d),
            1 => typed(Kind::Bool, d),
            1 => (typed(Kind::List, d), 0i64..2).prop_map(|(a, i)| format!("{a}[{i}]")),
        ]
        .boxed(),
    };
    prop_oneof![
        3 => leaf,
        3 => inner,
        2 => call(kind, d),
        1 => cond,
    ]
    .boxed()
}

/// An expression (source text).
pub fn expr() -> BoxedStrategy<String> {
    typed(Kind::Any, 3)
}

/// A condition.
fn condition() -> BoxedStrategy<String> {
    typed(Kind::Bool, 2)
}

// ---------------------------------------------------------------------------
// Transforms
// ---------------------------------------------------------------------------

fn json_literal() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-50i64..50).prop_map(Value::from),
        (-50.0f64..50.0).prop_map(|f| Value::from((f * 4.0).round() / 4.0)),
        prop::sample::select(&["de", "x", "", "12", "a b"][..]).prop_map(Value::from),
        Just(serde_json::json!([1, "a", {"x": null}])),
        Just(serde_json::json!({"x": 1, "y": [true]})),
    ]
}

/// Named groups, some named after fields that expressions read.
const PATTERNS: &[&str] = &[
    r"^(?P<day>\d{4}-\d{2}-\d{2})T",
    r"(?P<a>[a-z]+)-(?P<n>\d+)",
    r"^(?P<first>\w)(?P<rest>.*)$",
    r"(?P<s>[A-Z]+)",
    r"(?P<word>\w+) (?P<other>\w+)",
];
const REPLACES: &[(&str, &str)] = &[
    (r"\s+", " "),
    (r"[aeiou]", "_"),
    (r"(\d)", "<$1>"),
    ("^", "x"),
];
const TEMPLATES: &[&str] = &[
    "{{ a }}-{{ user.x }}",
    "{{ s }} and {{ n }}",
    "[{{ day }}]",
    "{{ a | upper }}",
    "{% if n %}{{ n }}{% else %}none{% endif %}",
    "{% for i in items %}{{ i }},{% endfor %}",
    "{{ user }}",
    "{{ b.x }}{{ c }}",
];

fn on_no_match() -> impl Strategy<Value = Option<OnNoMatch>> {
    prop::option::of(prop::sample::select(vec![
        OnNoMatch::Keep,
        OnNoMatch::Drop,
        OnNoMatch::Null,
        OnNoMatch::Error,
    ]))
}

fn on_miss() -> impl Strategy<Value = Option<OnMiss>> {
    prop::option::of(prop::sample::select(vec![
        OnMiss::Default,
        OnMiss::Keep,
        OnMiss::Drop,
        OnMiss::Error,
    ]))
}

fn map_of<V: std::fmt::Debug + Clone>(
    keys: impl Strategy<Value = String>,
    values: impl Strategy<Value = V>,
) -> impl Strategy<Value = IndexMap<String, V>> {
    prop::collection::vec((keys, values), 1..3).prop_map(|kvs| kvs.into_iter().collect())
}

/// One transform that is not a `when` block.
fn simple() -> BoxedStrategy<Transform> {
    prop_oneof![
        3 => map_of(target(), expr()).prop_map(Transform::Set),
        1 => map_of(target(), json_literal()).prop_map(Transform::Add),
        1 => map_of(target(), json_literal()).prop_map(Transform::Default),
        1 => map_of(path(), target()).prop_map(Transform::Rename),
        1 => prop::collection::vec(path(), 1..3).prop_map(Transform::Drop),
        1 => prop::collection::vec(path(), 1..4).prop_map(Transform::Select),
        1 => map_of(target(), prop::collection::vec(expr(), 1..3)).prop_map(Transform::Coalesce),
        1 => map_of(
            target(),
            prop::sample::select(vec![
                CastType::Int,
                CastType::Float,
                CastType::String,
                CastType::Bool,
                CastType::Timestamp,
            ]),
        )
        .prop_map(Transform::Cast),
        2 => condition().prop_map(Transform::Filter),
        2 => (path(), prop::sample::select(PATTERNS), prop::option::of(target()), on_no_match())
            .prop_map(|(field, pattern, into, on_no_match)| {
                Transform::Regex(RegexStep {
                    field,
                    pattern: Some(pattern.to_string()),
                    into,
                    on_no_match,
                    replace: None,
                    with: None,
                })
            }),
        1 => (path(), prop::sample::select(REPLACES)).prop_map(|(field, (re, with))| {
            Transform::Regex(RegexStep {
                field,
                pattern: None,
                into: None,
                on_no_match: None,
                replace: Some(re.to_string()),
                with: Some(with.to_string()),
            })
        }),
        1 => map_of(target(), prop::sample::select(TEMPLATES).prop_map(str::to_string))
            .prop_map(Transform::Template),
        1 => (
            path(),
            prop::option::of(prop::sample::select(vec!["name".to_string(), "region".to_string()])),
            prop::option::of(target()),
            on_miss(),
            prop::option::of(json_literal()),
        )
            .prop_map(|(field, column, into, on_miss, default)| {
                Transform::Lookup(LookupStep {
                    field,
                    table: LOOKUP.into(),
                    column,
                    into,
                    on_miss,
                    default,
                })
            }),
        1 => (path(), prop::option::of(target()))
            .prop_map(|(field, into)| Transform::Explode(ExplodeStep { field, into })),
    ]
    .boxed()
}

/// A list of transforms, `when` blocks nested up to `depth`.
fn transforms(depth: u32) -> BoxedStrategy<Vec<Transform>> {
    let step = if depth == 0 {
        simple()
    } else {
        prop_oneof![
            5 => simple(),
            1 => (condition(), transforms(depth - 1), transforms(depth - 1)).prop_map(
                |(condition, then, otherwise)| Transform::When(WhenStep {
                    condition,
                    then,
                    otherwise,
                })
            ),
        ]
        .boxed()
    };
    prop::collection::vec(step, 0..5).boxed()
}

/// A flow over generated transforms and outputs.
pub fn flow() -> impl Strategy<Value = FlowFile> {
    (
        transforms(2),
        prop::collection::vec(prop::option::of(condition()), 1..4),
        any::<bool>(),
    )
        .prop_map(|(transforms, whens, unrouted_error)| FlowFile {
            name: Some("gen".into()),
            description: None,
            input: "files.input".into(),
            transforms,
            outputs: whens
                .into_iter()
                .enumerate()
                .map(|(i, when)| Output {
                    to: format!("files.out{i}"),
                    when,
                })
                .collect(),
            unrouted: unrouted_error.then_some(Unrouted::Error),
        })
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1000i64..1000).prop_map(Value::from),
        (-1.0e6f64..1.0e6).prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        "[a-z ]{0,6}".prop_map(Value::String),
        "-?[0-9]{1,4}(\\.[0-9]{1,2})?".prop_map(Value::String),
        prop::sample::select(
            &[
                "de",
                "US",
                "1",
                "",
                "2026-01-02T03:04:05Z",
                "abc-12",
                "Hello World",
                "a,b",
                "true",
                "x y z",
            ][..]
        )
        .prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(2, 10, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(INNER), inner), 0..3).prop_map(|kvs| {
                Value::Object(kvs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// A record: the flow's fields (some), and fields it never names.
pub fn record() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        8 => prop::sample::select(FIELDS).prop_map(str::to_string),
        1 => prop::sample::select(&["untouched", "other", "z"][..]).prop_map(str::to_string),
    ];
    prop::collection::vec((key, value()), 0..7)
        .prop_map(|kvs| Value::Object(kvs.into_iter().collect::<Map<String, Value>>()))
}

/// A case: a flow and a batch of records.
pub fn case() -> impl Strategy<Value = Case> {
    (flow(), prop::collection::vec(record(), 1..6)).prop_map(|(flow, records)| Case {
        flow,
        records,
        vars: vars(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    #[test]
    fn flows_serialize_as_yaml_users_could_write() {
        let mut runner = TestRunner::deterministic();
        for _ in 0..50 {
            let c = case().new_tree(&mut runner).expect("case").current();
            let text = serde_json::to_string(&c.flow).expect("serializes");
            let back: FlowFile = serde_json::from_str(&text).expect("reads back");
            assert_eq!(back, c.flow);
        }
    }
}
