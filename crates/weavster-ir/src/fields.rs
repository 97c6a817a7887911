//! Which top-level record fields a flow reads or writes.
//!
//! The batch decoder parses only these and passes every other field through
//! as its input text (`weavster_guest::abi`). The analysis is conservative:
//! anything it cannot bound (a full template calling `debug()`, which prints
//! the whole context) makes the flow take whole records.

use std::collections::BTreeSet;

use crate::ir::*;

/// The sorted top-level fields `flow` touches, or `None` for "all of them".
pub fn touched(flow: &Flow) -> Option<Vec<String>> {
    let mut acc = Acc::default();
    acc.steps(&flow.steps);
    for o in &flow.outputs {
        if let Some(e) = &o.when {
            acc.expr(e);
        }
    }
    (!acc.whole).then(|| acc.fields.into_iter().collect())
}

#[derive(Default)]
struct Acc {
    fields: BTreeSet<String>,
    whole: bool,
}

impl Acc {
    fn path(&mut self, p: &[Seg]) {
        match p.first() {
            Some(Seg::Key(k)) => {
                self.fields.insert(k.clone());
            }
            _ => self.whole = true,
        }
    }

    fn expr(&mut self, e: &Expr) {
        match e {
            Expr::Lit(_) => {}
            Expr::Path(p) | Expr::Exists(p) => self.path(p),
            Expr::List(items) => items.iter().for_each(|x| self.expr(x)),
            Expr::Map(entries) => entries.iter().for_each(|(_, x)| self.expr(x)),
            Expr::Unary(_, a) => self.expr(a),
            Expr::Binary(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) | Expr::Index(a, b) => {
                self.expr(a);
                self.expr(b);
            }
            Expr::Cond {
                cond,
                then,
                otherwise,
            } => {
                self.expr(cond);
                self.expr(then);
                self.expr(otherwise);
            }
            Expr::Call { args, .. } => args.iter().for_each(|x| self.expr(x)),
        }
    }

    fn template(&mut self, source: &str) {
        let env = minijinja::Environment::new();
        match env.template_from_str(source) {
            Ok(t) => {
                let vars = t.undeclared_variables(false);
                if vars.contains("debug") {
                    self.whole = true;
                }
                self.fields.extend(vars);
            }
            Err(_) => self.whole = true,
        }
    }

    fn steps(&mut self, steps: &[Step]) {
        for s in steps {
            match s {
                Step::Set(xs) => xs.iter().for_each(|(p, e)| {
                    self.path(p);
                    self.expr(e);
                }),
                Step::Add(xs) | Step::Default(xs) => xs.iter().for_each(|(p, _)| self.path(p)),
                Step::Rename(xs) => xs.iter().for_each(|(a, b)| {
                    self.path(a);
                    self.path(b);
                }),
                Step::Drop(ps) | Step::Select(ps) => ps.iter().for_each(|p| self.path(p)),
                Step::Coalesce(xs) => xs.iter().for_each(|(p, es)| {
                    self.path(p);
                    es.iter().for_each(|e| self.expr(e));
                }),
                Step::Cast(xs) => xs.iter().for_each(|(p, _)| self.path(p)),
                Step::Filter(e) => self.expr(e),
                Step::RegexExtract { field, into, .. } => {
                    self.path(field);
                    if let Some(into) = into {
                        self.path(into);
                    }
                }
                Step::RegexReplace { field, .. } => self.path(field),
                Step::Template(xs) => {
                    for (p, t) in xs {
                        self.path(p);
                        match t {
                            Template::Plain(pieces) => {
                                for piece in pieces {
                                    if let Piece::Path(p) = piece {
                                        self.path(p);
                                    }
                                }
                            }
                            Template::Full { source, .. } => self.template(source),
                        }
                    }
                }
                Step::Lookup { field, into, .. } => {
                    self.path(field);
                    self.path(into);
                }
                Step::When {
                    cond,
                    then,
                    otherwise,
                } => {
                    self.expr(cond);
                    self.steps(then);
                    self.steps(otherwise);
                }
                Step::Explode { field, into } => {
                    self.path(field);
                    self.path(into);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    /// The fields a flow with these transforms (YAML) and outputs touches.
    fn check(transforms: &str, expected: Option<&[&str]>) {
        let src = format!(
            "input: files.x\ntransforms:\n{transforms}\noutputs:\n  - to: files.y\n    when: out_flag\n"
        );
        let spec: weavster_spec::types::FlowFile =
            weavster_spec::yaml::from_str(&src).expect("flow parses");
        let flow = crate::lower("f", &spec, &BTreeMap::new()).expect("flow lowers");
        let expected = expected.map(|e| e.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(flow.fields, expected, "{transforms}");
    }

    #[test]
    fn every_step_kind_names_its_top_level_fields() {
        check(
            "  - set:\n      a.b: \"upper(c[0].d) ~ var('v')\"\n  - rename: { e: f.g }",
            Some(&["a", "c", "e", "f", "out_flag"]),
        );
        check(
            "  - drop: [h]\n  - default: { i: 1 }\n  - filter: \"exists(j.k) and l in [m, 'n']\"",
            Some(&["h", "i", "j", "l", "m", "out_flag"]),
        );
        check(
            "  - when:\n      if: p\n      then: [ { explode: { field: q, into: r } } ]\n      else: [ { coalesce: { s: [t, 'u'] } } ]",
            // YAML unquotes `'u'`: the expression is the path `u`.
            Some(&["out_flag", "p", "q", "r", "s", "t", "u"]),
        );
        check(
            "  - template: { v: \"{{ w.x }} and {{ y }}\" }",
            Some(&["out_flag", "v", "w", "y"]),
        );
        check(
            "  - template: { v: \"{% for i in items %}{{ i.n }}{% endfor %}{{ z | upper }}\" }",
            Some(&["items", "out_flag", "v", "z"]),
        );
    }

    #[test]
    fn a_template_printing_its_context_needs_the_whole_record() {
        check("  - template: { v: \"{{ debug() }}\" }", None);
    }
}
