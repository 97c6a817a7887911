//! The parser and checker never panic, whatever the input. The corpus under
//! `tests/corpus/` holds inputs that once found bugs or cover tricky syntax;
//! proptest adds arbitrary strings and strings built from expression tokens.

use proptest::prelude::*;

fn run(src: &str) {
    if let Ok(expr) = weavster_expr::parse(src) {
        let _ = weavster_expr::check(&expr);
        assert!(
            expr.start <= expr.end && expr.end <= src.len(),
            "span out of range for {src:?}"
        );
    }
}

#[test]
fn corpus_does_not_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("corpus file");
        for line in text.lines() {
            run(line);
            n += 1;
        }
    }
    assert!(n >= 50, "corpus has {n} lines");
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let src = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(weavster_expr::parse(&src).is_err());
    let src = format!("{}1", "-".repeat(10_000));
    assert!(weavster_expr::parse(&src).is_err());
    let src = format!("{}a", "not ".repeat(10_000));
    assert!(weavster_expr::parse(&src).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_strings(s in "\\PC{0,40}") {
        run(&s);
    }

    #[test]
    fn token_soup(parts in proptest::collection::vec(
        prop_oneof![
            Just("a"), Just("b.c"), Just("["), Just("]"), Just("("), Just(")"), Just("{"), Just("}"),
            Just("'s'"), Just("1"), Just("2.5"), Just("+"), Just("-"), Just("*"), Just("**"), Just("//"),
            Just("~"), Just("|"), Just("upper"), Just("round"), Just(","), Just(":"), Just("."), Just(" if "),
            Just(" else "), Just(" and "), Just(" not "), Just(" in "), Just("=="), Just("<"), Just("null"),
        ],
        0..24,
    )) {
        run(&parts.concat());
    }
}
