//! Static checks: every call names a known function with a valid number of
//! arguments, and no operator or function is applied to a value whose type
//! is certainly wrong. Paths are `Any`: their type is known only at run time,
//! where a mismatch is a record error.

use crate::ExprError;
use crate::ast::{BinOp, Expr, ExprKind, Literal, UnOp};

/// What is statically known of a value's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Any,
    Null,
    Bool,
    Int,
    Float,
    /// Int or Float.
    Number,
    String,
    List,
    Map,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Any => "any value",
            Type::Null => "null",
            Type::Bool => "a boolean",
            Type::Int => "an integer",
            Type::Float => "a float",
            Type::Number => "a number",
            Type::String => "a string",
            Type::List => "a list",
            Type::Map => "a map",
        }
    }

    fn is_numeric(self) -> bool {
        matches!(self, Type::Int | Type::Float | Type::Number)
    }

    /// Whether a value of type `self` may be passed where `want` is expected.
    /// Null and unknown values are always accepted (null propagates).
    fn fits(self, want: Type) -> bool {
        match (self, want) {
            (Type::Any | Type::Null, _) | (_, Type::Any) => true,
            (have, Type::Number) => have.is_numeric(),
            (Type::Int | Type::Number, Type::Float) => true,
            (have, want) => have == want,
        }
    }
}

/// A function of the standard library.
#[derive(Debug, Clone, Copy)]
pub struct Function {
    pub name: &'static str,
    /// Parameter types; `variadic` repeats the last one.
    pub params: &'static [Type],
    pub required: usize,
    pub variadic: bool,
    pub returns: Type,
    pub doc: &'static str,
}

impl Function {
    fn arity(&self) -> String {
        match (self.required, self.params.len(), self.variadic) {
            (r, _, true) => format!("at least {r} argument{}", if r == 1 { "" } else { "s" }),
            (r, n, false) if r == n => format!("{r} argument{}", if r == 1 { "" } else { "s" }),
            (r, n, false) => format!("{r} to {n} arguments"),
        }
    }
}

const fn f(
    name: &'static str,
    params: &'static [Type],
    required: usize,
    variadic: bool,
    returns: Type,
    doc: &'static str,
) -> Function {
    Function {
        name,
        params,
        required,
        variadic,
        returns,
        doc,
    }
}

use Type::{Any, Bool, Float, Int, List, Number, String as Str};

/// The standard library, in documentation order.
pub const FUNCTIONS: &[Function] = &[
    f("upper", &[Str], 1, false, Str, "upper-case a string"),
    f("lower", &[Str], 1, false, Str, "lower-case a string"),
    f(
        "trim",
        &[Str, Str],
        1,
        false,
        Str,
        "strip white space (or the given characters) from both ends",
    ),
    f(
        "length",
        &[Any],
        1,
        false,
        Int,
        "characters of a string, elements of a list, keys of a map",
    ),
    f(
        "round",
        &[Number, Int],
        1,
        false,
        Number,
        "round half away from zero to N decimals (default 0)",
    ),
    f(
        "floor",
        &[Number],
        1,
        false,
        Int,
        "largest integer not above",
    ),
    f(
        "ceil",
        &[Number],
        1,
        false,
        Int,
        "smallest integer not below",
    ),
    f("abs", &[Number], 1, false, Number, "absolute value"),
    f(
        "int",
        &[Any],
        1,
        false,
        Int,
        "convert to an integer (strings are parsed, floats truncated)",
    ),
    f("float", &[Any], 1, false, Float, "convert to a float"),
    f(
        "string",
        &[Any],
        1,
        false,
        Str,
        "convert to a string (objects and lists as JSON)",
    ),
    f(
        "bool",
        &[Any],
        1,
        false,
        Bool,
        "convert to a boolean ('true'/'false'/'1'/'0', numbers)",
    ),
    f(
        "concat",
        &[Any],
        1,
        true,
        Any,
        "join strings (or lists) end to end",
    ),
    f(
        "replace",
        &[Str, Str, Str],
        3,
        false,
        Str,
        "replace every occurrence of a substring",
    ),
    f(
        "split",
        &[Str, Str],
        1,
        false,
        List,
        "split on a separator (default: runs of white space)",
    ),
    f(
        "join",
        &[List, Str],
        1,
        false,
        Str,
        "join list elements with a separator (default empty)",
    ),
    f(
        "contains",
        &[Any, Any],
        2,
        false,
        Bool,
        "substring of a string, element of a list, key of a map",
    ),
    f(
        "starts_with",
        &[Str, Str],
        2,
        false,
        Bool,
        "string prefix test",
    ),
    f(
        "ends_with",
        &[Str, Str],
        2,
        false,
        Bool,
        "string suffix test",
    ),
    f(
        "substring",
        &[Str, Int, Int],
        2,
        false,
        Str,
        "characters from start (0-based), optionally of a length",
    ),
    f(
        "coalesce",
        &[Any],
        1,
        true,
        Any,
        "the first argument that is not null",
    ),
    f(
        "default",
        &[Any, Any],
        2,
        false,
        Any,
        "the value, or the default when it is null or missing",
    ),
    f(
        "exists",
        &[Any],
        1,
        false,
        Bool,
        "whether the path is present in the record (even if null)",
    ),
    f(
        "is_null",
        &[Any],
        1,
        false,
        Bool,
        "whether the value is null or missing",
    ),
    f(
        "now",
        &[],
        0,
        false,
        Str,
        "the batch timestamp (RFC 3339, UTC)",
    ),
    f(
        "uuid",
        &[],
        0,
        false,
        Str,
        "a UUID v4 from the batch seed (deterministic per batch)",
    ),
    f("parse_json", &[Str], 1, false, Any, "parse a JSON document"),
    f(
        "to_json",
        &[Any],
        1,
        false,
        Str,
        "serialize to compact JSON",
    ),
    f(
        "parse_timestamp",
        &[Str, Str],
        1,
        false,
        Str,
        "parse (RFC 3339, or a strftime format) to RFC 3339 UTC",
    ),
    f(
        "format_timestamp",
        &[Str, Str],
        2,
        false,
        Str,
        "format an RFC 3339 timestamp with a strftime format",
    ),
    f(
        "sha256",
        &[Str],
        1,
        false,
        Str,
        "hex SHA-256 of a string's UTF-8 bytes",
    ),
    f(
        "base64_encode",
        &[Str],
        1,
        false,
        Str,
        "standard base64 of a string's UTF-8 bytes",
    ),
    f(
        "base64_decode",
        &[Str],
        1,
        false,
        Str,
        "decode standard base64 into a UTF-8 string",
    ),
    f(
        "var",
        &[Str, Any],
        1,
        false,
        Any,
        "a project var from the active target (the name must be a string literal)",
    ),
];

/// Looks a function up by name.
pub fn function(name: &str) -> Option<&'static Function> {
    FUNCTIONS.iter().find(|f| f.name == name)
}

/// Checks an expression; returns every error found.
pub fn check(expr: &Expr) -> Vec<ExprError> {
    let mut errors = Vec::new();
    infer(expr, &mut errors);
    errors
}

fn infer(expr: &Expr, errors: &mut Vec<ExprError>) -> Type {
    match &expr.kind {
        ExprKind::Lit(l) => match l {
            Literal::Null => Type::Null,
            Literal::Bool(_) => Type::Bool,
            Literal::Int(_) => Type::Int,
            Literal::Float(_) => Type::Float,
            Literal::Str(_) => Type::String,
        },
        ExprKind::Path(_) => Type::Any,
        ExprKind::List(items) => {
            for item in items {
                infer(item, errors);
            }
            Type::List
        }
        ExprKind::Map(entries) => {
            for (_, v) in entries {
                infer(v, errors);
            }
            Type::Map
        }
        ExprKind::Index(base, index) => {
            let b = infer(base, errors);
            let i = infer(index, errors);
            if !matches!(
                b,
                Type::Any | Type::Null | Type::List | Type::Map | Type::String
            ) {
                errors.push(ExprError::new(
                    format!("cannot index {}", b.name()),
                    expr.start,
                    expr.end,
                ));
            } else if !i.fits(Type::String) && !i.fits(Type::Int) {
                errors.push(ExprError::new(
                    format!("an index must be a string or an integer, not {}", i.name()),
                    index.start,
                    index.end,
                ));
            }
            Type::Any
        }
        ExprKind::Unary(op, inner) => {
            let t = infer(inner, errors);
            match op {
                UnOp::Not => Type::Bool,
                UnOp::Neg | UnOp::Pos => {
                    if !t.fits(Type::Number) {
                        errors.push(ExprError::new(
                            format!("cannot negate {}", t.name()),
                            expr.start,
                            expr.end,
                        ));
                        return Type::Any;
                    }
                    if t == Type::Null { Type::Null } else { t }
                }
            }
        }
        ExprKind::Binary(op, a, b) => {
            let ta = infer(a, errors);
            let tb = infer(b, errors);
            binary(*op, ta, tb, expr, errors)
        }
        ExprKind::Cond {
            cond,
            then,
            otherwise,
        } => {
            infer(cond, errors);
            let t = infer(then, errors);
            let o = infer(otherwise, errors);
            if t == o { t } else { Type::Any }
        }
        ExprKind::Call {
            name,
            name_start,
            name_end,
            args,
        } => call(name, *name_start, *name_end, args, expr, errors),
    }
}

fn binary(op: BinOp, ta: Type, tb: Type, expr: &Expr, errors: &mut Vec<ExprError>) -> Type {
    let mismatch = |errors: &mut Vec<ExprError>| {
        errors.push(ExprError::new(
            format!(
                "cannot apply `{}` to {} and {}",
                op.symbol(),
                ta.name(),
                tb.name()
            ),
            expr.start,
            expr.end,
        ));
        Type::Any
    };
    let unknown = matches!(ta, Type::Any | Type::Null) || matches!(tb, Type::Any | Type::Null);
    match op {
        BinOp::And | BinOp::Or => Type::Bool,
        BinOp::Eq | BinOp::Ne => Type::Bool,
        BinOp::Concat => Type::String,
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let comparable = unknown
                || (ta.is_numeric() && tb.is_numeric())
                || (ta == tb && matches!(ta, Type::String | Type::Bool | Type::List));
            if !comparable {
                mismatch(errors);
            }
            Type::Bool
        }
        BinOp::In | BinOp::NotIn => {
            if !matches!(
                tb,
                Type::Any | Type::Null | Type::List | Type::Map | Type::String
            ) {
                errors.push(ExprError::new(
                    format!(
                        "`{}` needs a list, map or string on its right, not {}",
                        op.symbol(),
                        tb.name()
                    ),
                    expr.start,
                    expr.end,
                ));
            }
            Type::Bool
        }
        BinOp::Add => {
            if unknown {
                return Type::Any;
            }
            match (ta, tb) {
                (a, b) if a.is_numeric() && b.is_numeric() => numeric(a, b),
                (Type::String, Type::String) => Type::String,
                (Type::List, Type::List) => Type::List,
                _ => mismatch(errors),
            }
        }
        BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::FloorDiv | BinOp::Rem | BinOp::Pow => {
            if !ta.fits(Type::Number) || !tb.fits(Type::Number) {
                return mismatch(errors);
            }
            if unknown {
                return Type::Any;
            }
            match op {
                BinOp::Div => Type::Float,
                BinOp::FloorDiv => numeric(ta, tb),
                _ => numeric(ta, tb),
            }
        }
    }
}

fn numeric(a: Type, b: Type) -> Type {
    match (a, b) {
        (Type::Int, Type::Int) => Type::Int,
        (Type::Float, _) | (_, Type::Float) => Type::Float,
        _ => Type::Number,
    }
}

fn call(
    name: &str,
    name_start: usize,
    name_end: usize,
    args: &[Expr],
    expr: &Expr,
    errors: &mut Vec<ExprError>,
) -> Type {
    let types: Vec<Type> = args.iter().map(|a| infer(a, errors)).collect();
    let Some(func) = function(name) else {
        let mut err = ExprError::new(format!("unknown function `{name}`"), name_start, name_end);
        let best = FUNCTIONS
            .iter()
            .map(|f| (strsim::levenshtein(name, f.name), f.name))
            .filter(|(d, n)| *d <= (n.len().max(name.len()) / 3).max(1))
            .min_by_key(|(d, _)| *d);
        err = match best {
            Some((_, n)) => err.with_hint(format!("did you mean `{n}`?")),
            None => err.with_hint("see docs/flows.md for the function list"),
        };
        errors.push(err);
        return Type::Any;
    };
    let n = args.len();
    let max = if func.variadic {
        usize::MAX
    } else {
        func.params.len()
    };
    if n < func.required || n > max {
        errors.push(
            ExprError::new(
                format!("`{name}` takes {}, got {n}", func.arity()),
                expr.start,
                expr.end,
            )
            .with_hint(format!("`{name}`: {}", func.doc)),
        );
        return func.returns;
    }
    for (i, (arg, t)) in args.iter().zip(&types).enumerate() {
        let want = func
            .params
            .get(i)
            .or(func.params.last())
            .copied()
            .unwrap_or(Type::Any);
        if !t.fits(want) {
            errors.push(ExprError::new(
                format!(
                    "`{name}` expects {} as argument {}, not {}",
                    want.name(),
                    i + 1,
                    t.name()
                ),
                arg.start,
                arg.end,
            ));
        }
    }
    match name {
        "var" => {
            if !matches!(
                args.first().map(|a| &a.kind),
                Some(ExprKind::Lit(Literal::Str(_)))
            ) && let Some(a) = args.first()
            {
                errors.push(
                    ExprError::new(
                        "the name given to `var` must be a string literal",
                        a.start,
                        a.end,
                    )
                    .with_hint("write `var('min_total')`"),
                );
            }
        }
        "exists" => {
            if !matches!(args.first().map(|a| &a.kind), Some(ExprKind::Path(_)))
                && let Some(a) = args.first()
            {
                errors.push(
                    ExprError::new("`exists` takes a record path", a.start, a.end).with_hint(
                        "write `exists(customer.email)`; use `is_null` for computed values",
                    ),
                );
            }
        }
        _ => {}
    }
    if matches!(name, "round" | "abs") {
        return types
            .first()
            .copied()
            .filter(|t| t.is_numeric())
            .unwrap_or(Type::Number);
    }
    func.returns
}
