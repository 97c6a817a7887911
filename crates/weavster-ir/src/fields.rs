//! Which top-level record fields a flow reads, and which it writes.
//!
//! The batch decoder parses only these: every other field is passed through
//! as its input text, and a field the flow only reads is written back as
//! the text it came with (`weavster_guest::abi`), so `1.50` or a 30-digit
//! integer a flow merely looks at is not reformatted. The analysis is
//! conservative: anything it cannot bound (a full template calling
//! `debug()`, which prints the whole context; a path starting with an
//! index) makes the flow take whole records. A step that may change a
//! field in any way — set, remove, rename, reshape, or write regex groups
//! into the record — counts as writing it.

use std::collections::{BTreeMap, BTreeSet};

use crate::ir::*;

/// The top-level fields `flow` reads and writes, or `None` for "any".
pub fn touched(flow: &Flow) -> Option<Fields> {
    let mut acc = Acc {
        regexes: &flow.regexes,
        ..Acc::default()
    };
    acc.steps(&flow.steps);
    for o in &flow.outputs {
        if let Some(e) = &o.when {
            acc.expr(e);
        }
    }
    if acc.whole {
        return None;
    }
    let read_only: Vec<String> = acc.read.difference(&acc.written).cloned().collect();
    let members = read_only
        .iter()
        .filter_map(|k| match acc.members.get(k) {
            Some(Some(m)) => Some((k.clone(), m.iter().cloned().collect())),
            _ => None,
        })
        .collect();
    Some(Fields {
        read_only,
        written: acc.written.into_iter().collect(),
        members,
    })
}

#[derive(Default)]
struct Acc<'a> {
    regexes: &'a [String],
    read: BTreeSet<String>,
    written: BTreeSet<String>,
    /// By top-level field read: the members read, or `None` when the field
    /// may be read whole.
    members: BTreeMap<String, Option<BTreeSet<String>>>,
    whole: bool,
}

impl Acc<'_> {
    fn top<'p>(&mut self, p: &'p [Seg]) -> Option<&'p String> {
        match p.first() {
            Some(Seg::Key(k)) => Some(k),
            _ => {
                self.whole = true;
                None
            }
        }
    }

    fn read(&mut self, p: &[Seg]) {
        if let Some(k) = self.top(p) {
            self.read.insert(k.clone());
            let members = self
                .members
                .entry(k.clone())
                .or_insert_with(|| Some(BTreeSet::new()));
            match (members, p.get(1)) {
                (Some(m), Some(Seg::Key(member))) => {
                    m.insert(member.clone());
                }
                (members, _) => *members = None,
            }
        }
    }

    /// A top-level field read in a way not bounded by members.
    fn read_whole(&mut self, k: &str) {
        self.read.insert(k.to_string());
        self.members.insert(k.to_string(), None);
    }

    fn write(&mut self, p: &[Seg]) {
        if let Some(k) = self.top(p) {
            self.written.insert(k.clone());
        }
    }

    fn expr(&mut self, e: &Expr) {
        match e {
            Expr::Lit(_) => {}
            Expr::Path(p) | Expr::Exists(p) => self.read(p),
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
                for v in vars {
                    self.read_whole(&v);
                }
            }
            Err(_) => self.whole = true,
        }
    }

    /// The named groups of regex `id`, which an extraction without `into`
    /// writes as top-level fields.
    fn groups(&mut self, id: usize) {
        let re = self
            .regexes
            .get(id)
            .and_then(|src| crate::interp::regex(src).ok());
        match re {
            Some(re) => {
                for name in re.capture_names().flatten() {
                    self.written.insert(name.to_string());
                }
            }
            None => self.whole = true,
        }
    }

    fn steps(&mut self, steps: &[Step]) {
        for s in steps {
            match s {
                Step::Set(xs) => xs.iter().for_each(|(p, e)| {
                    self.write(p);
                    self.expr(e);
                }),
                Step::Add(xs) | Step::Default(xs) => xs.iter().for_each(|(p, _)| self.write(p)),
                Step::Rename(xs) => xs.iter().for_each(|(a, b)| {
                    self.write(a);
                    self.write(b);
                }),
                Step::Drop(ps) | Step::Select(ps) => ps.iter().for_each(|p| self.write(p)),
                Step::Coalesce(xs) => xs.iter().for_each(|(p, es)| {
                    self.write(p);
                    es.iter().for_each(|e| self.expr(e));
                }),
                Step::Cast(xs) => xs.iter().for_each(|(p, _)| self.write(p)),
                Step::Filter(e) => self.expr(e),
                Step::RegexExtract {
                    field, into, regex, ..
                } => {
                    self.read(field);
                    match into {
                        Some(into) => self.write(into),
                        None => self.groups(*regex),
                    }
                }
                Step::RegexReplace { field, .. } => self.write(field),
                Step::Template(xs) => {
                    for (p, t) in xs {
                        self.write(p);
                        match t {
                            Template::Plain(pieces) => {
                                for piece in pieces {
                                    if let Piece::Path(p) = piece {
                                        self.read(p);
                                    }
                                }
                            }
                            Template::Full { source, .. } => self.template(source),
                        }
                    }
                }
                Step::Lookup { field, into, .. } => {
                    self.read(field);
                    self.write(into);
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
                    self.write(field);
                    self.write(into);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    /// The fields a flow with these transforms (YAML) and outputs reads
    /// only, and writes: `expected` is `(read_only, written)`.
    fn check(transforms: &str, expected: Option<(&[&str], &[&str])>) {
        let src = format!(
            "input: files.x\ntransforms:\n{transforms}\noutputs:\n  - to: files.y\n    when: out_flag\n"
        );
        let spec: weavster_spec::types::FlowFile =
            weavster_spec::yaml::from_str(&src).expect("flow parses");
        let flow = crate::lower("f", &spec, &BTreeMap::<String, crate::LookupData>::new())
            .expect("flow lowers");
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let found = flow.fields.map(|f| (f.read_only, f.written));
        let expected = expected.map(|(r, w)| (strings(r), strings(w)));
        assert_eq!(found, expected, "{transforms}");
    }

    #[test]
    fn every_step_kind_names_its_top_level_fields() {
        check(
            "  - set:\n      a.b: \"upper(c[0].d) ~ var('v')\"\n  - rename: { e: f.g }",
            Some((&["c", "out_flag"], &["a", "e", "f"])),
        );
        check(
            "  - drop: [h]\n  - default: { i: 1 }\n  - filter: \"exists(j.k) and l in [m, 'n']\"",
            Some((&["j", "l", "m", "out_flag"], &["h", "i"])),
        );
        check(
            "  - when:\n      if: p\n      then: [ { explode: { field: q, into: r } } ]\n      else: [ { coalesce: { s: [t, 'u'] } } ]",
            // YAML unquotes `'u'`: the expression is the path `u`.
            Some((&["out_flag", "p", "t", "u"], &["q", "r", "s"])),
        );
        check(
            "  - template: { v: \"{{ w.x }} and {{ y }}\" }",
            Some((&["out_flag", "w", "y"], &["v"])),
        );
        check(
            "  - template: { v: \"{% for i in items %}{{ i.n }}{% endfor %}{{ z | upper }}\" }",
            Some((&["items", "out_flag", "z"], &["v"])),
        );
    }

    #[test]
    fn regex_groups_without_into_are_written() {
        check(
            "  - regex: { field: ts, pattern: '^(?P<day>\\d{4}-\\d{2}-\\d{2})T(?P<hour>\\d\\d)' }",
            Some((&["out_flag", "ts"], &["day", "hour"])),
        );
        check(
            "  - regex: { field: ts, pattern: '^(?P<day>.+)$', into: parts }",
            Some((&["out_flag", "ts"], &["parts"])),
        );
        check(
            "  - regex: { field: note, replace: 'a', with: 'b' }",
            Some((&["out_flag"], &["note"])),
        );
    }

    /// The read-only fields read by member only, with their members.
    fn check_members(transforms: &str, expected: &[(&str, &[&str])]) {
        let src = format!("input: files.x\ntransforms:\n{transforms}\noutputs:\n  - to: files.y\n");
        let spec: weavster_spec::types::FlowFile =
            weavster_spec::yaml::from_str(&src).expect("flow parses");
        let flow = crate::lower("f", &spec, &BTreeMap::<String, crate::LookupData>::new())
            .expect("flow lowers");
        let found = flow.fields.map(|f| f.members).unwrap_or_default();
        let expected: Vec<(String, Vec<String>)> = expected
            .iter()
            .map(|(k, m)| (k.to_string(), m.iter().map(|s| s.to_string()).collect()))
            .collect();
        assert_eq!(found, expected, "{transforms}");
    }

    #[test]
    fn fields_read_by_member_name_their_members() {
        check_members(
            "  - set: { n: \"upper(user.name) ~ user.id\", t: tags }\n  - filter: exists(user.email.x)",
            &[("user", &["email", "id", "name"])],
        );
        // Read whole somewhere (itself, indexed, in a template, written):
        // no members.
        check_members("  - set: { n: user.name, m: user }", &[]);
        check_members("  - set: { n: \"user.name ~ user[0]\" }", &[]);
        check_members(
            "  - set: { n: user.name }\n  - template: { t: \"{{ user.id | upper }}\" }",
            &[],
        );
        // A plain template interpolates paths: members.
        check_members(
            "  - template: { t: \"{{ user.id }}\" }",
            &[("user", &["id"])],
        );
        check_members("  - set: { n: user.name }\n  - set: { user.x: 1 }", &[]);
        check_members(
            "  - regex: { field: a.b, pattern: '(?P<d>x)' }",
            &[("a", &["b"])],
        );
    }

    #[test]
    fn a_field_both_read_and_written_is_written() {
        check(
            "  - set: { n2: n + 1 }\n  - set: { m: m * 2 }",
            Some((&["n", "out_flag"], &["m", "n2"])),
        );
    }

    #[test]
    fn a_template_printing_its_context_needs_the_whole_record() {
        check("  - template: { v: \"{{ debug() }}\" }", None);
    }
}
