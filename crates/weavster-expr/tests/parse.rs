//! Parser and checker behaviour, as data: each case is an expression and the
//! rendered result (tree or located errors), kept in one snapshot.

use weavster_expr::{Expr, ExprKind, parse};

fn render(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Lit(l) => format!("{l:?}"),
        ExprKind::Path(segs) => format!("Path{segs:?}"),
        ExprKind::List(items) => format!(
            "[{}]",
            items.iter().map(render).collect::<Vec<_>>().join(", ")
        ),
        ExprKind::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{k:?}: {}", render(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ExprKind::Unary(op, inner) => format!("{op:?}({})", render(inner)),
        ExprKind::Binary(op, a, b) => format!("({} {} {})", render(a), op.symbol(), render(b)),
        ExprKind::Cond {
            cond,
            then,
            otherwise,
        } => {
            format!(
                "({} if {} else {})",
                render(then),
                render(cond),
                render(otherwise)
            )
        }
        ExprKind::Call { name, args, .. } => {
            format!(
                "{name}({})",
                args.iter().map(render).collect::<Vec<_>>().join(", ")
            )
        }
        ExprKind::Index(a, b) => format!("{}[{}]", render(a), render(b)),
    }
}

fn check_one(src: &str) -> String {
    match parse(src) {
        Err(e) => format!(
            "{src}\n  parse error at {}..{}: {}{}",
            e.start,
            e.end,
            e.message,
            hint(&e.hint)
        ),
        Ok(expr) => {
            let errors = weavster_expr::check(&expr);
            let mut out = format!("{src}\n  = {}", render(&expr));
            for e in errors {
                out.push_str(&format!(
                    "\n  check error at {}..{}: {}{}",
                    e.start,
                    e.end,
                    e.message,
                    hint(&e.hint)
                ));
            }
            out
        }
    }
}

fn hint(h: &Option<String>) -> String {
    h.as_ref()
        .map(|h| format!(" (hint: {h})"))
        .unwrap_or_default()
}

fn check(cases: &[&str]) -> String {
    cases
        .iter()
        .map(|c| check_one(c))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn valid_expressions() {
    insta::assert_snapshot!(check(&[
        "upper(trim(customer_id))",
        "country | upper",
        "x | round(2)",
        "amount * qty",
        "total > var('min_total') and status != 'test'",
        "a['key with space'].b[0]",
        "items[-1]",
        "1 + 2 * 3 ** 2",
        "a ~ b + c",
        "-x | abs",
        "not a == b",
        "'big' if total >= 1000 else 'small'",
        "x in [1, 2, 3]",
        "x not in {'a': 1}",
        "coalesce(a, b, 'c')",
        "exists(contact.email)",
        "\"double \\\"quoted\\\"\" ~ '\\u00e9'",
        "null == none",
        "a.0.b",
        "f(x)[0] if true else {}",
    ]));
}

#[test]
fn invalid_expressions() {
    insta::assert_snapshot!(check(&[
        "",
        "upper(",
        "a +",
        "a = 1",
        "a && b",
        "'unterminated",
        "uper(x)",
        "upper(a, b)",
        "substring(x)",
        "'a' * {}",
        "1 < 'a'",
        "a < b < c",
        "x if y",
        "var(name)",
        "exists(upper(a))",
        "round('x')",
        "(a)(b)",
        "a.+",
        "1 in 2",
        "'\\q'",
    ]));
}
