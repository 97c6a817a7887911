//! IR → Rust source for one flow crate.
//!
//! The generated code is built with `quote` (every user string becomes an
//! escaped literal token, never pasted text) and formatted with
//! `prettyplease`. It mirrors the reference interpreter
//! (`weavster_ir::interp`) step for step: one method per simple step, one
//! per block (a step list, or the rest of one after `explode`/`when`), and a
//! continuation that ends in routing. Regexes, templates and literals are
//! built once per instance in `new`; lookup tables are data (sorted,
//! serialized files beside the source, `include_bytes!`ed and searched in
//! place: a 1M-row table costs bytes, not compile time); plain `{{ path }}`
//! templates are string building.

use std::collections::BTreeMap;

use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote};
use serde_json::Value;
use weavster_ir::interp::binop_name;
use weavster_ir::{
    CastType, Expr, Flow, OnMiss, OnNoMatch, Path, Piece, Seg, Step, Template, UnOp, display_path,
};

#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    #[error("generated code does not parse (a bug in Weavster): {0}")]
    Syntax(String),
}

/// A flow crate's `lib.rs` and the files it includes (written beside it).
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub source: String,
    /// (file name, bytes): serialized lookup tables.
    pub assets: Vec<(String, Vec<u8>)>,
}

/// The file name of a serialized table: named by its content.
fn asset_name(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(bytes);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("table-{hex}.bin")
}

/// The Rust source of the flow crate's `lib.rs`, and its assets.
pub fn generate(flow: &Flow, origin: &str) -> Result<Generated, CodegenError> {
    let mut g = Gen {
        paths: BTreeMap::new(),
        lits: Vec::new(),
        steps: Vec::new(),
        blocks: Vec::new(),
        next_block: 0,
    };
    let top = g.block(&flow.steps);
    let route = g.route(flow);
    let steps = std::mem::take(&mut g.steps);
    let blocks = std::mem::take(&mut g.blocks);

    let path_statics = g.paths.iter().map(|(p, name)| {
        let segs = p.iter().map(seg_tokens);
        quote! { static #name: &[Seg<'static>] = &[#(#segs),*]; }
    });
    let mut assets = Vec::new();
    let table_statics: Vec<TokenStream> = flow
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let name = format_ident!("TABLE_{}", i);
            let bytes = weavster_guest::table::encode(&t.entries);
            let file = asset_name(&bytes);
            assets.push((file.clone(), bytes));
            let doc = format!(" Lookup `{}`: {} entries.", t.name, t.entries.len());
            quote! {
                #[doc = #doc]
                static #name: ::weavster_guest::table::Table<'static> =
                    ::weavster_guest::table::Table::new(include_bytes!(#file));
            }
        })
        .collect();
    let regexes = flow.regexes.iter().map(|r| {
        quote! { ::weavster_guest::regex::Regex::new(#r).map_err(|e| e.to_string())? }
    });
    let templates = flow.templates.iter().enumerate().map(|(i, t)| {
        let name = format!("t{i}");
        quote! { (#name, #t) }
    });
    let lits = g.lits.iter().map(|v| {
        let json = v.to_string();
        quote! { ::weavster_guest::serde_json::from_str(#json).map_err(|e| e.to_string())? }
    });
    let touch = match &flow.fields {
        Some(f) => {
            let arm = |names: &[String], touch: proc_macro2::TokenStream| {
                (!names.is_empty()).then(|| quote! { #(#names)|* => #touch, })
            };
            let read = arm(&f.read_only, quote! { ::weavster_guest::Touch::Read });
            let written = arm(&f.written, quote! { ::weavster_guest::Touch::Write });
            quote! {
                match key {
                    #written
                    #read
                    _ => ::weavster_guest::Touch::None,
                }
            }
        }
        None => quote! { ::weavster_guest::Touch::Write },
    };
    // Only for flows reading some field by member: the default (`None`,
    // read whole) otherwise.
    let reads = flow
        .fields
        .as_ref()
        .filter(|f| !f.members.is_empty())
        .map(|f| {
            let arms = f.members.iter().map(|(k, m)| {
                quote! { #k => Some(matches!(member, #(#m)|*)), }
            });
            quote! {
                fn reads(&self, key: &str, member: &str) -> Option<bool> {
                    match key {
                        #(#arms)*
                        _ => None,
                    }
                }
            }
        });
    // A flow without regexes or templates does not link the regex engine or
    // MiniJinja: smaller modules, faster to build and to load.
    let (regex_field, regex_init) = if flow.regexes.is_empty() {
        (quote! {}, quote! {})
    } else {
        (
            quote! { regexes: Vec<::weavster_guest::regex::Regex>, },
            quote! { regexes: vec![#(#regexes),*], },
        )
    };
    let (template_field, template_init) = if flow.templates.is_empty() {
        (quote! {}, quote! {})
    } else {
        (
            quote! { templates: step::Templates, },
            quote! { templates: step::Templates::new(&[#(#templates),*])?, },
        )
    };
    let header = format!(
        " Generated by Weavster from {origin} (flow `{}`). Do not edit.",
        flow.name
    );
    let tokens = quote! {
        #![doc = #header]
        #![allow(unused_mut, unused_variables, dead_code, clippy::all)]

        use weavster_guest::path::{self, Seg};
        use weavster_guest::step;
        use weavster_guest::{func, ops, Ctx, Map, Outcome, RecordError, Value, R};

        #(#path_statics)*
        #(#table_statics)*

        type Cont<'a> = &'a dyn Fn(&Compiled, Value, &Ctx<'_>, &mut Vec<Outcome>);

        pub struct Compiled {
            #regex_field
            #template_field
            lits: Vec<Value>,
        }

        impl Compiled {
            /// Builds an instance: regexes, templates and literals are compiled once here.
            pub fn new(_vars: &Map<String, Value>) -> Result<Self, String> {
                Ok(Compiled {
                    #regex_init
                    #template_init
                    lits: vec![#(#lits),*],
                })
            }

            #(#blocks)*
            #(#steps)*
            #route
        }

        impl weavster_guest::Flow for Compiled {
            fn run(&self, rec: Value, ctx: &Ctx<'_>, out: &mut Vec<Outcome>) {
                self.#top(rec, ctx, out, &|me, r, c, o| me.route(r, c, o));
            }

            fn touch(&self, key: &str) -> ::weavster_guest::Touch {
                #touch
            }

            #reads
        }

        #[cfg(target_arch = "wasm32")]
        weavster_guest::export_flow!(Compiled, Compiled::new);
    };
    let file: syn::File = syn::parse2(tokens).map_err(|e| CodegenError::Syntax(e.to_string()))?;
    Ok(Generated {
        source: prettyplease::unparse(&file),
        assets,
    })
}

struct Gen {
    /// Path → name of its static.
    paths: BTreeMap<Path, Ident>,
    lits: Vec<Value>,
    steps: Vec<TokenStream>,
    blocks: Vec<TokenStream>,
    next_block: usize,
}

fn seg_tokens(s: &Seg) -> TokenStream {
    match s {
        Seg::Key(k) => quote! { Seg::Key(#k) },
        Seg::Idx(i) => quote! { Seg::Idx(#i) },
    }
}

impl Gen {
    fn path(&mut self, p: &Path) -> Ident {
        let key = p.clone();
        let n = self.paths.len();
        self.paths
            .entry(key)
            .or_insert_with(|| format_ident!("P{}", n))
            .clone()
    }

    fn lit(&mut self, v: &Value) -> TokenStream {
        match v {
            Value::Null => quote! { Value::Null },
            Value::Bool(b) => quote! { Value::Bool(#b) },
            other => {
                let i = self.lit_index(other);
                quote! { self.lits[#i].clone() }
            }
        }
    }

    /// Generates a block method for `steps`; returns its name.
    fn block(&mut self, steps: &[Step]) -> Ident {
        let name = format_ident!("b{}", self.next_block);
        self.next_block += 1;
        let mut body = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            let rest = &steps[i + 1..];
            match s {
                Step::Explode { field, into } => {
                    let (f, t) = (self.path(field), self.path(into));
                    let rest_block = self.block(rest);
                    body.push(quote! {
                        match step::explode(rec, #f, #t) {
                            Ok(items) if items.is_empty() => out.push(Outcome::Filtered),
                            Ok(items) => {
                                for item in items {
                                    self.#rest_block(item, ctx, out, k);
                                }
                            }
                            Err(e) => out.push(Outcome::Error(e)),
                        }
                        return;
                    });
                    return self.finish_block(name, body, false);
                }
                Step::When {
                    cond,
                    then,
                    otherwise,
                } => {
                    let c = self.expr(cond);
                    let then_block = self.block(then);
                    let else_block = self.block(otherwise);
                    let rest_block = self.block(rest);
                    body.push(quote! {
                        let cond = {
                            let rec = &rec;
                            (|| -> R<Value> { Ok(#c) })()
                        };
                        match cond {
                            Ok(v) => {
                                let next: Cont<'_> = &|me, r, c, o| me.#rest_block(r, c, o, k);
                                if ops::truthy(&v) {
                                    self.#then_block(rec, ctx, out, next);
                                } else {
                                    self.#else_block(rec, ctx, out, next);
                                }
                            }
                            Err(e) => out.push(Outcome::Error(e)),
                        }
                        return;
                    });
                    return self.finish_block(name, body, false);
                }
                other => {
                    let step_fn = self.simple(other);
                    body.push(quote! {
                        match self.#step_fn(&mut rec, ctx) {
                            Ok(step::Flow::Keep) => {}
                            Ok(step::Flow::Drop) => {
                                out.push(Outcome::Filtered);
                                return;
                            }
                            Err(e) => {
                                out.push(Outcome::Error(e));
                                return;
                            }
                        }
                    });
                }
            }
        }
        self.finish_block(name, body, true)
    }

    fn finish_block(&mut self, name: Ident, body: Vec<TokenStream>, continues: bool) -> Ident {
        let tail = if continues {
            quote! { k(self, rec, ctx, out); }
        } else {
            quote! {}
        };
        self.blocks.push(quote! {
            fn #name(&self, mut rec: Value, ctx: &Ctx<'_>, out: &mut Vec<Outcome>, k: Cont<'_>) {
                #(#body)*
                #tail
            }
        });
        name
    }

    /// Generates a method for a simple step; returns its name.
    fn simple(&mut self, s: &Step) -> Ident {
        let name = format_ident!("s{}", self.steps.len());
        // Reserve the slot so nested generation keeps names unique.
        self.steps.push(TokenStream::new());
        let slot = self.steps.len() - 1;
        let body = match s {
            Step::Set(assignments) => {
                let mut evals = Vec::new();
                let mut sets = Vec::new();
                for (i, (p, e)) in assignments.iter().enumerate() {
                    let v = format_ident!("v{}", i);
                    let pn = self.path(p);
                    let d = display_path(p);
                    let code = self.expr(e);
                    evals.push(quote! { let #v = (|| -> R<Value> { Ok(#code) })().map_err(|e| e.at(#d))?; });
                    sets.push(quote! { path::set(rec, #pn, #v)?; });
                }
                quote! { #(#evals)* #(#sets)* }
            }
            Step::Add(assignments) => {
                let sets = assignments.iter().map(|(p, v)| {
                    let pn = self.path(p);
                    let lit = self.lit(v);
                    quote! { path::set(rec, #pn, #lit)?; }
                });
                let sets: Vec<_> = sets.collect();
                quote! { #(#sets)* }
            }
            Step::Default(assignments) => {
                let sets: Vec<_> = assignments
                    .iter()
                    .map(|(p, v)| {
                        let pn = self.path(p);
                        let lit = self.lit(v);
                        quote! {
                            if path::get(rec, #pn).is_none_or(Value::is_null) {
                                path::set(rec, #pn, #lit)?;
                            }
                        }
                    })
                    .collect();
                quote! { #(#sets)* }
            }
            Step::Rename(pairs) => {
                let moves: Vec<_> = pairs
                    .iter()
                    .map(|(a, b)| {
                        let (a, b) = (self.path(a), self.path(b));
                        quote! {
                            if let Some(v) = path::remove(rec, #a) {
                                path::set(rec, #b, v)?;
                            }
                        }
                    })
                    .collect();
                quote! { #(#moves)* }
            }
            Step::Drop(paths) => {
                let rm: Vec<_> = paths
                    .iter()
                    .map(|p| {
                        let p = self.path(p);
                        quote! { path::remove(rec, #p); }
                    })
                    .collect();
                quote! { #(#rm)* }
            }
            Step::Select(paths) => {
                let ps: Vec<_> = paths.iter().map(|p| self.path(p)).collect();
                quote! { *rec = path::select(rec, &[#(#ps),*])?; }
            }
            Step::Coalesce(entries) => {
                let mut code = Vec::new();
                for (p, exprs) in entries {
                    let pn = self.path(p);
                    let d = display_path(p);
                    let tries: Vec<_> = exprs
                        .iter()
                        .map(|e| {
                            let c = self.expr(e);
                            quote! {
                                let v = (|| -> R<Value> { Ok(#c) })().map_err(|e| e.at(#d))?;
                                if !v.is_null() {
                                    break 'found v;
                                }
                            }
                        })
                        .collect();
                    code.push(quote! {
                        let found = 'found: {
                            #(#tries)*
                            Value::Null
                        };
                        path::set(rec, #pn, found)?;
                    });
                }
                quote! { #(#code)* }
            }
            Step::Cast(entries) => {
                let casts: Vec<_> = entries
                    .iter()
                    .map(|(p, ty)| {
                        let pn = self.path(p);
                        let ty = match ty {
                            CastType::Int => quote! { step::CastType::Int },
                            CastType::Float => quote! { step::CastType::Float },
                            CastType::String => quote! { step::CastType::String },
                            CastType::Bool => quote! { step::CastType::Bool },
                            CastType::Timestamp => quote! { step::CastType::Timestamp },
                        };
                        quote! { step::cast(rec, #pn, #ty, ctx)?; }
                    })
                    .collect();
                quote! { #(#casts)* }
            }
            Step::Filter(e) => {
                let c = self.operand(e, &format_ident!("c"));
                quote! {
                    #c
                    if !ops::truthy(c) {
                        return Ok(step::Flow::Drop);
                    }
                }
            }
            Step::RegexExtract {
                field,
                regex,
                into,
                on_no_match,
            } => {
                let f = self.path(field);
                let into = match into {
                    Some(p) => {
                        let p = self.path(p);
                        quote! { Some(#p) }
                    }
                    None => quote! { None },
                };
                let on = match on_no_match {
                    OnNoMatch::Keep => quote! { step::OnNoMatch::Keep },
                    OnNoMatch::Drop => quote! { step::OnNoMatch::Drop },
                    OnNoMatch::Null => quote! { step::OnNoMatch::Null },
                    OnNoMatch::Error => quote! { step::OnNoMatch::Error },
                };
                quote! { return step::regex_extract(rec, #f, &self.regexes[#regex], #into, #on); }
            }
            Step::RegexReplace { field, regex, with } => {
                let f = self.path(field);
                quote! { step::regex_replace(rec, #f, &self.regexes[#regex], #with)?; }
            }
            Step::Template(entries) => {
                let mut code = Vec::new();
                for (p, t) in entries {
                    let pn = self.path(p);
                    let d = display_path(p);
                    let value = match t {
                        Template::Plain(pieces) => {
                            let pushes: Vec<_> = pieces
                                .iter()
                                .map(|piece| match piece {
                                    Piece::Text(t) => quote! { s.push_str(#t); },
                                    Piece::Path(p) => {
                                        let p = self.path(p);
                                        quote! { step::push_rendered(&mut s, path::get(rec, #p)); }
                                    }
                                })
                                .collect();
                            quote! {{
                                let mut s = String::new();
                                #(#pushes)*
                                Value::String(s)
                            }}
                        }
                        Template::Full { id, .. } => {
                            let name = format!("t{id}");
                            quote! { self.templates.render(#name, rec).map_err(|e| e.at(#d))? }
                        }
                    };
                    code.push(quote! {
                        let v = #value;
                        path::set(rec, #pn, v)?;
                    });
                }
                quote! { #(#code)* }
            }
            Step::Lookup {
                field,
                table,
                into,
                on_miss,
                default,
            } => {
                let (f, t) = (self.path(field), self.path(into));
                let table = format_ident!("TABLE_{}", *table);
                let on = match on_miss {
                    OnMiss::Default => quote! { step::OnMiss::Default },
                    OnMiss::Keep => quote! { step::OnMiss::Keep },
                    OnMiss::Drop => quote! { step::OnMiss::Drop },
                    OnMiss::Error => quote! { step::OnMiss::Error },
                };
                let default = self.lit(default);
                quote! {
                    let default = #default;
                    return step::lookup(rec, #f, |k| #table.get(k), #t, #on, &default);
                }
            }
            Step::When { .. } | Step::Explode { .. } => quote! {
                return Err(RecordError::transform("internal: control step in simple position"));
            },
        };
        self.steps[slot] = quote! {
            #[allow(unreachable_code)]
            fn #name(&self, rec: &mut Value, ctx: &Ctx<'_>) -> R<step::Flow> {
                #body
                Ok(step::Flow::Keep)
            }
        };
        name
    }

    /// A statement binding `name` to a `&Value` for `e`: record fields and
    /// literals are borrowed, not cloned; anything else is computed first.
    fn operand(&mut self, e: &Expr, name: &Ident) -> TokenStream {
        match e {
            Expr::Path(p) => {
                let p = self.path(p);
                quote! { let #name: &Value = path::get_ref(rec, #p); }
            }
            Expr::Lit(Value::Null) => quote! { let #name: &Value = &Value::Null; },
            Expr::Lit(Value::Bool(b)) => quote! { let #name: &Value = &Value::Bool(#b); },
            Expr::Lit(v) => {
                let i = self.lit_index(v);
                quote! { let #name: &Value = &self.lits[#i]; }
            }
            other => {
                let owned = format_ident!("{}_owned", name);
                let code = self.expr(other);
                quote! { let #owned: Value = #code; let #name: &Value = &#owned; }
            }
        }
    }

    fn lit_index(&mut self, v: &Value) -> usize {
        match self.lits.iter().position(|l| l == v) {
            Some(i) => i,
            None => {
                self.lits.push(v.clone());
                self.lits.len() - 1
            }
        }
    }

    /// An expression of type `Value`, inside a function returning `R<_>`.
    fn expr(&mut self, e: &Expr) -> TokenStream {
        match e {
            Expr::Lit(v) => self.lit(v),
            Expr::Path(p) => {
                let p = self.path(p);
                quote! { path::get_or_null(rec, #p) }
            }
            Expr::List(items) => {
                let items: Vec<_> = items.iter().map(|i| self.expr(i)).collect();
                quote! {{
                    let mut items = Vec::new();
                    #( items.push(#items); )*
                    Value::Array(items)
                }}
            }
            Expr::Map(entries) => {
                let inserts: Vec<_> = entries
                    .iter()
                    .map(|(k, v)| {
                        let v = self.expr(v);
                        quote! { m.insert(#k.to_string(), #v); }
                    })
                    .collect();
                quote! {{
                    let mut m = Map::new();
                    #(#inserts)*
                    Value::Object(m)
                }}
            }
            Expr::Unary(op, inner) => {
                let a = self.operand(inner, &format_ident!("a"));
                let f = match op {
                    UnOp::Not => quote! { ops::not },
                    UnOp::Neg => quote! { ops::neg },
                    UnOp::Pos => quote! { ops::pos },
                };
                quote! {{ #a #f(a)? }}
            }
            Expr::Binary(op, a, b) => {
                let a = self.operand(a, &format_ident!("a"));
                let b = self.operand(b, &format_ident!("b"));
                let f = Ident::new(binop_name(*op), Span::call_site());
                quote! {{ #a #b ops::#f(a, b)? }}
            }
            Expr::And(a, b) => {
                let a = self.operand(a, &format_ident!("a"));
                let b = self.operand(b, &format_ident!("b"));
                quote! {{ #a Value::Bool(ops::truthy(a) && { #b ops::truthy(b) }) }}
            }
            Expr::Or(a, b) => {
                let a = self.operand(a, &format_ident!("a"));
                let b = self.operand(b, &format_ident!("b"));
                quote! {{ #a Value::Bool(ops::truthy(a) || { #b ops::truthy(b) }) }}
            }
            Expr::Cond {
                cond,
                then,
                otherwise,
            } => {
                let c = self.operand(cond, &format_ident!("c"));
                let (t, o) = (self.expr(then), self.expr(otherwise));
                quote! {{ #c if ops::truthy(c) { #t } else { #o } }}
            }
            Expr::Call { func, args } => {
                let f = Ident::new(weavster_guest::func::rust_name(func), Span::call_site());
                let names: Vec<Ident> = (0..args.len()).map(|i| format_ident!("a{}", i)).collect();
                let binds: Vec<_> = args
                    .iter()
                    .zip(&names)
                    .map(|(a, n)| self.operand(a, n))
                    .collect();
                quote! {{
                    #(#binds)*
                    func::#f(&[#(#names),*], ctx)?
                }}
            }
            Expr::Exists(p) => {
                let p = self.path(p);
                quote! { Value::Bool(path::exists(rec, #p)) }
            }
            Expr::Index(a, b) => {
                let a = self.operand(a, &format_ident!("a"));
                let b = self.operand(b, &format_ident!("b"));
                quote! {{ #a #b ops::index(a, b)? }}
            }
        }
    }

    fn route(&mut self, flow: &Flow) -> TokenStream {
        let checks: Vec<_> = flow
            .outputs
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let i = i as u32;
                let to = &o.to;
                match &o.when {
                    None => quote! { routes.push(#i); },
                    Some(w) => {
                        let c = self.expr(w);
                        quote! {
                            match (|| -> R<Value> { Ok(#c) })() {
                                Ok(v) if ops::truthy(&v) => routes.push(#i),
                                Ok(_) => {}
                                Err(e) => {
                                    out.push(Outcome::Error(e.stage("output").at(#to)));
                                    return;
                                }
                            }
                        }
                    }
                }
            })
            .collect();
        let unrouted = flow.unrouted_error;
        quote! {
            fn route(&self, record: Value, ctx: &Ctx<'_>, out: &mut Vec<Outcome>) {
                let mut routes: Vec<u32> = Vec::new();
                {
                    let rec = &record;
                    #(#checks)*
                }
                if routes.is_empty() && #unrouted {
                    out.push(Outcome::Error(RecordError {
                        stage: "routing",
                        message: "no output takes this record".into(),
                        path: None,
                    }));
                    return;
                }
                out.push(Outcome::Routed { routes, record });
            }
        }
    }
}
