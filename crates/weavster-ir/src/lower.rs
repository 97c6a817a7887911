//! Spec → IR.

use std::collections::BTreeMap;

use weavster_expr::{ExprKind, Literal, PathSeg};
use weavster_spec::types::{self as spec, FlowFile, Transform};

use crate::ir::*;

pub use weavster_spec::types::LookupData;

/// The flow could not be lowered. After `validate` passed this does not
/// happen; it is reported as an internal error with the flow's file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LowerError(pub String);

type Res<T> = Result<T, LowerError>;

struct Lowerer<'a> {
    lookups: &'a dyn Fn(&str) -> Option<&'a LookupData>,
    regexes: Vec<String>,
    templates: Vec<String>,
    tables: Vec<Table>,
}

/// Lowers a checked flow. `lookups` holds every table of the project (by
/// value or borrowed: a large table is not copied).
pub fn lower<T: std::borrow::Borrow<LookupData>>(
    name: &str,
    flow: &FlowFile,
    lookups: &BTreeMap<String, T>,
) -> Res<Flow> {
    let find = |t: &str| lookups.get(t).map(|d| d.borrow());
    let mut l = Lowerer {
        lookups: &find,
        regexes: Vec::new(),
        templates: Vec::new(),
        tables: Vec::new(),
    };
    let steps = l.steps(&flow.transforms)?;
    let outputs = flow
        .outputs
        .iter()
        .map(|o| {
            Ok(Output {
                to: o.to.clone(),
                when: o.when.as_deref().map(expr).transpose()?,
            })
        })
        .collect::<Res<Vec<_>>>()?;
    let mut flow = Flow {
        name: name.to_string(),
        steps,
        outputs,
        unrouted_error: flow.unrouted == Some(spec::Unrouted::Error),
        regexes: l.regexes,
        templates: l.templates,
        tables: l.tables,
        fields: None,
    };
    flow.fields = crate::fields::touched(&flow);
    Ok(flow)
}

/// Parses an expression and lowers it.
pub fn expr(src: &str) -> Res<Expr> {
    let parsed = weavster_expr::parse(src)
        .map_err(|e| LowerError(format!("expression `{src}`: {}", e.message)))?;
    if let Some(e) = weavster_expr::check(&parsed).into_iter().next() {
        return Err(LowerError(format!("expression `{src}`: {}", e.message)));
    }
    lower_expr(&parsed)
}

fn seg(s: &PathSeg) -> Seg {
    match s {
        PathSeg::Key(k) => Seg::Key(k.clone()),
        PathSeg::Index(i) => Seg::Idx(*i),
    }
}

/// Parses a record path.
pub fn path(src: &str) -> Res<Path> {
    weavster_expr::parse_path(src)
        .map(|segs| segs.iter().map(seg).collect())
        .map_err(|e| LowerError(format!("path `{src}`: {}", e.message)))
}

fn lower_expr(e: &weavster_expr::Expr) -> Res<Expr> {
    use weavster_expr::{BinOp as B, UnOp as U};
    Ok(match &e.kind {
        ExprKind::Lit(l) => Expr::Lit(match l {
            Literal::Null => serde_json::Value::Null,
            Literal::Bool(b) => serde_json::Value::Bool(*b),
            Literal::Int(i) => serde_json::Value::from(*i),
            Literal::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or_default(),
            Literal::Str(s) => serde_json::Value::String(s.clone()),
        }),
        ExprKind::Path(segs) => Expr::Path(segs.iter().map(seg).collect()),
        ExprKind::List(items) => Expr::List(items.iter().map(lower_expr).collect::<Res<_>>()?),
        ExprKind::Map(entries) => Expr::Map(
            entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), lower_expr(v)?)))
                .collect::<Res<_>>()?,
        ),
        ExprKind::Unary(op, inner) => {
            let op = match op {
                U::Not => UnOp::Not,
                U::Neg => UnOp::Neg,
                U::Pos => UnOp::Pos,
            };
            Expr::Unary(op, Box::new(lower_expr(inner)?))
        }
        ExprKind::Binary(op, a, b) => {
            let (a, b) = (Box::new(lower_expr(a)?), Box::new(lower_expr(b)?));
            let op = match op {
                B::And => return Ok(Expr::And(a, b)),
                B::Or => return Ok(Expr::Or(a, b)),
                B::Add => BinOp::Add,
                B::Sub => BinOp::Sub,
                B::Mul => BinOp::Mul,
                B::Div => BinOp::Div,
                B::FloorDiv => BinOp::FloorDiv,
                B::Rem => BinOp::Rem,
                B::Pow => BinOp::Pow,
                B::Concat => BinOp::Concat,
                B::Eq => BinOp::Eq,
                B::Ne => BinOp::Ne,
                B::Lt => BinOp::Lt,
                B::Le => BinOp::Le,
                B::Gt => BinOp::Gt,
                B::Ge => BinOp::Ge,
                B::In => BinOp::In,
                B::NotIn => BinOp::NotIn,
            };
            Expr::Binary(op, a, b)
        }
        ExprKind::Cond {
            cond,
            then,
            otherwise,
        } => Expr::Cond {
            cond: Box::new(lower_expr(cond)?),
            then: Box::new(lower_expr(then)?),
            otherwise: Box::new(lower_expr(otherwise)?),
        },
        ExprKind::Call { name, args, .. } => {
            if name == "exists" {
                return match args.first().map(|a| &a.kind) {
                    Some(ExprKind::Path(segs)) => Ok(Expr::Exists(segs.iter().map(seg).collect())),
                    _ => Err(LowerError("`exists` takes a record path".into())),
                };
            }
            if weavster_guest::func::lookup(name).is_none() {
                return Err(LowerError(format!("unknown function `{name}`")));
            }
            Expr::Call {
                func: name.clone(),
                args: args.iter().map(lower_expr).collect::<Res<_>>()?,
            }
        }
        ExprKind::Index(a, b) => Expr::Index(Box::new(lower_expr(a)?), Box::new(lower_expr(b)?)),
    })
}

/// `{{ path }}`-only templates become pieces; anything else is `None`.
pub fn plain_template(src: &str) -> Option<Vec<Piece>> {
    if src.contains("{%") || src.contains("{#") {
        return None;
    }
    let mut pieces = Vec::new();
    let mut rest = src;
    while let Some(open) = rest.find("{{") {
        let close = rest[open..].find("}}")? + open;
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let inner = &rest[open + 2..close];
        if inner.starts_with('-') || inner.ends_with('-') {
            return None;
        }
        let segs = weavster_expr::parse_path(inner.trim()).ok()?;
        pieces.push(Piece::Path(segs.iter().map(seg).collect()));
        rest = &rest[close + 2..];
    }
    if rest.contains("}}") {
        return None;
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Some(pieces)
}

impl Lowerer<'_> {
    fn steps(&mut self, list: &[Transform]) -> Res<Vec<Step>> {
        list.iter().map(|t| self.step(t)).collect()
    }

    fn regex(&mut self, pattern: &str) -> Res<usize> {
        crate::interp::regex(pattern).map_err(|e| LowerError(format!("regex `{pattern}`: {e}")))?;
        if let Some(i) = self.regexes.iter().position(|r| r == pattern) {
            return Ok(i);
        }
        self.regexes.push(pattern.to_string());
        Ok(self.regexes.len() - 1)
    }

    fn table(&mut self, table: &str, column: Option<&str>) -> Res<usize> {
        let data = (self.lookups)(table)
            .ok_or_else(|| LowerError(format!("unknown lookup table `{table}`")))?;
        let col =
            match column {
                None => 1,
                Some(c) => data.columns.iter().position(|x| x == c).ok_or_else(|| {
                    LowerError(format!("lookup table `{table}` has no column `{c}`"))
                })?,
            };
        let name = format!(
            "{table}.{}",
            data.columns.get(col).cloned().unwrap_or_default()
        );
        if let Some(i) = self.tables.iter().position(|t| t.name == name) {
            return Ok(i);
        }
        let mut entries: Vec<(String, String)> = data
            .rows
            .iter()
            .filter_map(|r| Some((r.first()?.clone(), r.get(col).cloned().unwrap_or_default())))
            .collect();
        entries.sort();
        entries.dedup_by(|a, b| a.0 == b.0);
        self.tables.push(Table { name, entries });
        Ok(self.tables.len() - 1)
    }

    fn step(&mut self, t: &Transform) -> Res<Step> {
        let paths = |list: &[String]| list.iter().map(|p| path(p)).collect::<Res<Vec<_>>>();
        Ok(match t {
            Transform::Set(m) => Step::Set(
                m.iter()
                    .map(|(p, e)| Ok((path(p)?, expr(e)?)))
                    .collect::<Res<_>>()?,
            ),
            Transform::Add(m) => Step::Add(
                m.iter()
                    .map(|(p, v)| Ok((path(p)?, v.clone())))
                    .collect::<Res<_>>()?,
            ),
            Transform::Default(m) => Step::Default(
                m.iter()
                    .map(|(p, v)| Ok((path(p)?, v.clone())))
                    .collect::<Res<_>>()?,
            ),
            Transform::Rename(m) => Step::Rename(
                m.iter()
                    .map(|(a, b)| Ok((path(a)?, path(b)?)))
                    .collect::<Res<_>>()?,
            ),
            Transform::Drop(list) => Step::Drop(paths(list)?),
            Transform::Select(list) => Step::Select(paths(list)?),
            Transform::Coalesce(m) => Step::Coalesce(
                m.iter()
                    .map(|(p, es)| {
                        Ok((
                            path(p)?,
                            es.iter().map(|e| expr(e)).collect::<Res<Vec<_>>>()?,
                        ))
                    })
                    .collect::<Res<_>>()?,
            ),
            Transform::Cast(m) => Step::Cast(
                m.iter()
                    .map(|(p, ty)| {
                        let ty = match ty {
                            spec::CastType::Int => CastType::Int,
                            spec::CastType::Float => CastType::Float,
                            spec::CastType::String => CastType::String,
                            spec::CastType::Bool => CastType::Bool,
                            spec::CastType::Timestamp => CastType::Timestamp,
                        };
                        Ok((path(p)?, ty))
                    })
                    .collect::<Res<_>>()?,
            ),
            Transform::Filter(e) => Step::Filter(expr(e)?),
            Transform::Regex(r) => {
                let field = path(&r.field)?;
                match (&r.pattern, &r.replace) {
                    (Some(p), None) => Step::RegexExtract {
                        field,
                        regex: self.regex(p)?,
                        into: r.into.as_deref().map(path).transpose()?,
                        on_no_match: match r.on_no_match.unwrap_or(spec::OnNoMatch::Keep) {
                            spec::OnNoMatch::Keep => OnNoMatch::Keep,
                            spec::OnNoMatch::Drop => OnNoMatch::Drop,
                            spec::OnNoMatch::Null => OnNoMatch::Null,
                            spec::OnNoMatch::Error => OnNoMatch::Error,
                        },
                    },
                    (None, Some(p)) => Step::RegexReplace {
                        field,
                        regex: self.regex(p)?,
                        with: r.with.clone().unwrap_or_default(),
                    },
                    _ => {
                        return Err(LowerError(
                            "`regex` needs exactly one of `pattern` and `replace`".into(),
                        ));
                    }
                }
            }
            Transform::Template(m) => Step::Template(
                m.iter()
                    .map(|(p, src)| {
                        let t = match plain_template(src) {
                            Some(pieces) => Template::Plain(pieces),
                            None => {
                                self.templates.push(src.clone());
                                Template::Full {
                                    id: self.templates.len() - 1,
                                    source: src.clone(),
                                }
                            }
                        };
                        Ok((path(p)?, t))
                    })
                    .collect::<Res<_>>()?,
            ),
            Transform::Lookup(l) => {
                let field = path(&l.field)?;
                Step::Lookup {
                    into: match &l.into {
                        Some(i) => path(i)?,
                        None => field.clone(),
                    },
                    field,
                    table: self.table(&l.table, l.column.as_deref())?,
                    on_miss: match l.on_miss.unwrap_or(spec::OnMiss::Default) {
                        spec::OnMiss::Default => OnMiss::Default,
                        spec::OnMiss::Keep => OnMiss::Keep,
                        spec::OnMiss::Drop => OnMiss::Drop,
                        spec::OnMiss::Error => OnMiss::Error,
                    },
                    default: l.default.clone().unwrap_or(serde_json::Value::Null),
                }
            }
            Transform::When(w) => Step::When {
                cond: expr(&w.condition)?,
                then: self.steps(&w.then)?,
                otherwise: self.steps(&w.otherwise)?,
            },
            Transform::Explode(x) => {
                let field = path(&x.field)?;
                Step::Explode {
                    into: match &x.into {
                        Some(i) => path(i)?,
                        None => field.clone(),
                    },
                    field,
                }
            }
        })
    }
}
