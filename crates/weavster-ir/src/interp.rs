//! The reference interpreter: executes the IR natively with the guest's
//! library. It is the oracle the compiled wasm is compared with.
//!
//! Execution order is part of the contract and the code generator mirrors
//! it exactly: steps run in order on one record; `explode` runs the rest of
//! its step list once per element, in order; `when` runs its branch and then
//! the rest of the enclosing list; the end of the top-level list routes.

use std::collections::HashMap;

use regex::Regex;
use serde_json::{Map, Value};
use weavster_guest::path::{self, Seg as GSeg};
use weavster_guest::step::{self, Templates};
use weavster_guest::{Ctx, Outcome, R, RecordError, func, ops};

use crate::ir::*;

/// A flow ready to run in the interpreter.
pub struct Interpreter {
    flow: Flow,
    regexes: Vec<Regex>,
    templates: Templates,
    tables: Vec<HashMap<String, String>>,
}

/// Guest path segments borrowing from an IR path.
fn g(p: &Path) -> Vec<GSeg<'_>> {
    guest_path(p)
}

type Cont<'a> = &'a dyn Fn(&Interpreter, Value, &Ctx<'_>, &mut Vec<Outcome>);

/// Compiles `src`, reusing earlier compilations of the same pattern in
/// this process (the differential tests build hundreds of thousands of
/// interpreters over a few patterns; a `Regex` clone shares its program).
pub fn regex(src: &str) -> Result<Regex, String> {
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(re) = cache.lock().ok().and_then(|c| c.get(src).cloned()) {
        return Ok(re);
    }
    let re = Regex::new(src).map_err(|e| e.to_string())?;
    if let Ok(mut c) = cache.lock() {
        if c.len() >= 1024 {
            c.clear();
        }
        c.insert(src.to_string(), re.clone());
    }
    Ok(re)
}

impl Interpreter {
    pub fn new(flow: Flow) -> Result<Self, String> {
        let regexes = flow
            .regexes
            .iter()
            .map(|r| regex(r))
            .collect::<Result<_, _>>()?;
        let names: Vec<String> = (0..flow.templates.len()).map(|i| format!("t{i}")).collect();
        let sources: Vec<(&str, &str)> = names
            .iter()
            .map(String::as_str)
            .zip(flow.templates.iter().map(String::as_str))
            .collect();
        let templates = Templates::new(&sources)?;
        let tables = flow
            .tables
            .iter()
            .map(|t| t.entries.iter().cloned().collect())
            .collect();
        Ok(Interpreter {
            flow,
            regexes,
            templates,
            tables,
        })
    }

    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    fn block(
        &self,
        steps: &[Step],
        mut rec: Value,
        ctx: &Ctx<'_>,
        out: &mut Vec<Outcome>,
        k: Cont<'_>,
    ) {
        for (i, s) in steps.iter().enumerate() {
            let rest = &steps[i + 1..];
            match s {
                Step::Explode { field, into } => {
                    match step::explode(rec, &g(field), &g(into)) {
                        Ok(items) if items.is_empty() => out.push(Outcome::Filtered),
                        Ok(items) => {
                            for item in items {
                                self.block(rest, item, ctx, out, k);
                            }
                        }
                        Err(e) => out.push(Outcome::Error(e)),
                    }
                    return;
                }
                Step::When {
                    cond,
                    then,
                    otherwise,
                } => {
                    match self.eval(cond, &rec, ctx) {
                        Ok(v) => {
                            let branch = if ops::truthy(&v) { then } else { otherwise };
                            self.block(branch, rec, ctx, out, &|me, r, c, o| {
                                me.block(rest, r, c, o, k)
                            });
                        }
                        Err(e) => out.push(Outcome::Error(e)),
                    }
                    return;
                }
                other => match self.simple(other, &mut rec, ctx) {
                    Ok(step::Flow::Keep) => {}
                    Ok(step::Flow::Drop) => {
                        out.push(Outcome::Filtered);
                        return;
                    }
                    Err(e) => {
                        out.push(Outcome::Error(e));
                        return;
                    }
                },
            }
        }
        k(self, rec, ctx, out);
    }

    fn simple(&self, s: &Step, rec: &mut Value, ctx: &Ctx<'_>) -> R<step::Flow> {
        match s {
            Step::Set(assignments) => {
                let mut values = Vec::with_capacity(assignments.len());
                for (p, e) in assignments {
                    values.push(
                        self.eval(e, rec, ctx)
                            .map_err(|err| err.at(&path::display(&g(p))))?,
                    );
                }
                for ((p, _), v) in assignments.iter().zip(values) {
                    path::set(rec, &g(p), v)?;
                }
            }
            Step::Add(assignments) => {
                for (p, v) in assignments {
                    path::set(rec, &g(p), v.clone())?;
                }
            }
            Step::Default(assignments) => {
                for (p, v) in assignments {
                    if path::get(rec, &g(p)).is_none_or(Value::is_null) {
                        path::set(rec, &g(p), v.clone())?;
                    }
                }
            }
            Step::Rename(pairs) => {
                for (from, to) in pairs {
                    if let Some(v) = path::remove(rec, &g(from)) {
                        path::set(rec, &g(to), v)?;
                    }
                }
            }
            Step::Drop(paths) => {
                for p in paths {
                    path::remove(rec, &g(p));
                }
            }
            Step::Select(paths) => {
                let segs: Vec<Vec<GSeg<'_>>> = paths.iter().map(g).collect();
                let refs: Vec<&[GSeg<'_>]> = segs.iter().map(Vec::as_slice).collect();
                *rec = path::select(rec, &refs)?;
            }
            Step::Coalesce(entries) => {
                for (p, exprs) in entries {
                    let mut found = Value::Null;
                    for e in exprs {
                        let v = self
                            .eval(e, rec, ctx)
                            .map_err(|err| err.at(&path::display(&g(p))))?;
                        if !v.is_null() {
                            found = v;
                            break;
                        }
                    }
                    path::set(rec, &g(p), found)?;
                }
            }
            Step::Cast(entries) => {
                for (p, ty) in entries {
                    let ty = (*ty).into();
                    step::cast(rec, &g(p), ty, ctx)?;
                }
            }
            Step::Filter(e) => {
                if !ops::truthy(&self.eval(e, rec, ctx)?) {
                    return Ok(step::Flow::Drop);
                }
            }
            Step::RegexExtract {
                field,
                regex,
                into,
                on_no_match,
            } => {
                let on = (*on_no_match).into();
                let into = into.as_ref().map(g);
                return step::regex_extract(
                    rec,
                    &g(field),
                    &self.regexes[*regex],
                    into.as_deref(),
                    on,
                );
            }
            Step::RegexReplace { field, regex, with } => {
                step::regex_replace(rec, &g(field), &self.regexes[*regex], with)?
            }
            Step::Template(entries) => {
                for (p, t) in entries {
                    let v = match t {
                        Template::Plain(pieces) => {
                            let mut s = String::new();
                            for piece in pieces {
                                match piece {
                                    Piece::Text(t) => s.push_str(t),
                                    Piece::Path(p) => {
                                        step::push_rendered(&mut s, path::get(rec, &g(p)))
                                    }
                                }
                            }
                            Value::String(s)
                        }
                        Template::Full { id, .. } => self
                            .templates
                            .render(&format!("t{id}"), rec)
                            .map_err(|e| e.at(&path::display(&g(p))))?,
                    };
                    path::set(rec, &g(p), v)?;
                }
            }
            Step::Lookup {
                field,
                table,
                into,
                on_miss,
                default,
            } => {
                let on = (*on_miss).into();
                let t = &self.tables[*table];
                return step::lookup(
                    rec,
                    &g(field),
                    |k| t.get(k).map(String::as_str),
                    &g(into),
                    on,
                    default,
                );
            }
            Step::When { .. } | Step::Explode { .. } => {
                return Err(RecordError::transform(
                    "internal: control step in simple position",
                ));
            }
        }
        Ok(step::Flow::Keep)
    }

    /// Evaluates an expression against a record.
    pub fn eval(&self, e: &Expr, rec: &Value, ctx: &Ctx<'_>) -> R<Value> {
        Ok(match e {
            Expr::Lit(v) => v.clone(),
            Expr::Path(p) => path::get_or_null(rec, &g(p)),
            Expr::List(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.eval(i, rec, ctx))
                    .collect::<R<_>>()?,
            ),
            Expr::Map(entries) => {
                let mut m = Map::new();
                for (k, v) in entries {
                    m.insert(k.clone(), self.eval(v, rec, ctx)?);
                }
                Value::Object(m)
            }
            Expr::Unary(op, inner) => {
                let v = self.eval(inner, rec, ctx)?;
                match op {
                    UnOp::Not => ops::not(&v)?,
                    UnOp::Neg => ops::neg(&v)?,
                    UnOp::Pos => ops::pos(&v)?,
                }
            }
            Expr::Binary(op, a, b) => {
                let a = self.eval(a, rec, ctx)?;
                let b = self.eval(b, rec, ctx)?;
                binop(*op)(&a, &b)?
            }
            Expr::And(a, b) => {
                let a = self.eval(a, rec, ctx)?;
                Value::Bool(ops::truthy(&a) && ops::truthy(&self.eval(b, rec, ctx)?))
            }
            Expr::Or(a, b) => {
                let a = self.eval(a, rec, ctx)?;
                Value::Bool(ops::truthy(&a) || ops::truthy(&self.eval(b, rec, ctx)?))
            }
            Expr::Cond {
                cond,
                then,
                otherwise,
            } => {
                if ops::truthy(&self.eval(cond, rec, ctx)?) {
                    self.eval(then, rec, ctx)?
                } else {
                    self.eval(otherwise, rec, ctx)?
                }
            }
            Expr::Call { func: name, args } => {
                let f = func::lookup(name)
                    .ok_or_else(|| RecordError::transform(format!("unknown function `{name}`")))?;
                let args: Vec<Value> = args
                    .iter()
                    .map(|a| self.eval(a, rec, ctx))
                    .collect::<R<_>>()?;
                let refs: Vec<&Value> = args.iter().collect();
                f(&refs, ctx)?
            }
            Expr::Exists(p) => Value::Bool(path::exists(rec, &g(p))),
            Expr::Index(a, b) => {
                let a = self.eval(a, rec, ctx)?;
                let b = self.eval(b, rec, ctx)?;
                ops::index(&a, &b)?
            }
        })
    }

    fn route(&self, rec: Value, ctx: &Ctx<'_>, out: &mut Vec<Outcome>) {
        let mut routes = Vec::new();
        for (i, o) in self.flow.outputs.iter().enumerate() {
            match &o.when {
                None => routes.push(i as u32),
                Some(w) => match self.eval(w, &rec, ctx) {
                    Ok(v) if ops::truthy(&v) => routes.push(i as u32),
                    Ok(_) => {}
                    Err(e) => {
                        out.push(Outcome::Error(e.stage("output").at(&o.to)));
                        return;
                    }
                },
            }
        }
        if routes.is_empty() && self.flow.unrouted_error {
            out.push(Outcome::Error(RecordError {
                stage: "routing",
                message: "no output takes this record".into(),
                path: None,
            }));
            return;
        }
        out.push(Outcome::Routed {
            routes,
            record: rec,
        });
    }
}

/// The guest function of a binary operator.
pub fn binop(op: BinOp) -> fn(&Value, &Value) -> R<Value> {
    match op {
        BinOp::Add => ops::add,
        BinOp::Sub => ops::sub,
        BinOp::Mul => ops::mul,
        BinOp::Div => ops::div,
        BinOp::FloorDiv => ops::floordiv,
        BinOp::Rem => ops::rem,
        BinOp::Pow => ops::pow,
        BinOp::Concat => ops::concat,
        BinOp::Eq => ops::eq,
        BinOp::Ne => ops::ne,
        BinOp::Lt => ops::lt,
        BinOp::Le => ops::le,
        BinOp::Gt => ops::gt,
        BinOp::Ge => ops::ge,
        BinOp::In => ops::in_,
        BinOp::NotIn => ops::not_in,
    }
}

/// The name of the guest function of a binary operator (for generated code).
pub fn binop_name(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "add",
        BinOp::Sub => "sub",
        BinOp::Mul => "mul",
        BinOp::Div => "div",
        BinOp::FloorDiv => "floordiv",
        BinOp::Rem => "rem",
        BinOp::Pow => "pow",
        BinOp::Concat => "concat",
        BinOp::Eq => "eq",
        BinOp::Ne => "ne",
        BinOp::Lt => "lt",
        BinOp::Le => "le",
        BinOp::Gt => "gt",
        BinOp::Ge => "ge",
        BinOp::In => "in_",
        BinOp::NotIn => "not_in",
    }
}

impl weavster_guest::Flow for Interpreter {
    fn run(&self, record: Value, ctx: &Ctx<'_>, out: &mut Vec<Outcome>) {
        self.block(&self.flow.steps, record, ctx, out, &|me, r, c, o| {
            me.route(r, c, o)
        });
    }

    fn touch(&self, key: &str) -> weavster_guest::Touch {
        match &self.flow.fields {
            Some(f) => f.touch(key),
            None => weavster_guest::Touch::Write,
        }
    }

    fn reads(&self, key: &str, member: &str) -> Option<bool> {
        self.flow.fields.as_ref()?.reads(key, member)
    }
}
