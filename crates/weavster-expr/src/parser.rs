//! A recursive-descent parser with Jinja2's operator precedence, lowest first:
//! `x if c else y`, `or`, `and`, `not`, comparisons (`== != < <= > >= in
//! not in`), `+ -`, `~`, `* / // %`, `**`, unary `- +`, then postfix
//! (`.name`, `[index]`) and filters (`| name(args)`), which bind tightest.

use crate::ExprError;
use crate::ast::{BinOp, Expr, ExprKind, Literal, PathSeg, UnOp};
use crate::lexer::{Tok, Token, lex};

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 64;

/// Parses one expression.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    let tokens = lex(src)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    if matches!(p.peek(), Tok::Eof) {
        return Err(ExprError::new("empty expression", 0, src.len())
            .with_hint("write a value, a path or a call"));
    }
    let expr = p.expr()?;
    let t = p.token();
    if !matches!(t.tok, Tok::Eof) {
        let mut err = ExprError::new(
            format!(
                "unexpected {} after the end of the expression",
                describe(&t.tok)
            ),
            t.start,
            t.end,
        );
        if matches!(t.tok, Tok::Op("=")) || matches!(t.tok, Tok::Op(":")) {
            err = err.with_hint(
                "is this meant to be a YAML mapping? quote the expression or check the indentation",
            );
        }
        return Err(err);
    }
    Ok(expr)
}

/// Parses a record path such as `a.b`, `a['key with space']` or `items[0]`.
pub fn parse_path(src: &str) -> Result<Vec<PathSeg>, ExprError> {
    let expr = parse(src)?;
    match expr.kind {
        ExprKind::Path(segs) => Ok(segs),
        _ => Err(ExprError::new("expected a record path", 0, src.len())
            .with_hint("a path is `field`, `a.b.c`, `a['key with space']` or `items[0]`")),
    }
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident(s) => format!("name `{s}`"),
        Tok::Int(i) => format!("number `{i}`"),
        Tok::Float(f) => format!("number `{f}`"),
        Tok::Str(_) => "string".to_string(),
        Tok::Op(op) => format!("`{op}`"),
        Tok::Eof => "end of expression".to_string(),
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn token(&self) -> Token {
        self.tokens.get(self.pos).cloned().unwrap_or(Token {
            tok: Tok::Eof,
            start: 0,
            end: 0,
        })
    }

    fn peek(&self) -> &Tok {
        self.tokens
            .get(self.pos)
            .map(|t| &t.tok)
            .unwrap_or(&Tok::Eof)
    }

    fn peek_at(&self, n: usize) -> &Tok {
        self.tokens
            .get(self.pos + n)
            .map(|t| &t.tok)
            .unwrap_or(&Tok::Eof)
    }

    fn bump(&mut self) -> Token {
        let t = self.token();
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Tok::Op(o) if *o == op)
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == kw)
    }

    fn expect_op(&mut self, op: &str, what: &str) -> Result<Token, ExprError> {
        if self.is_op(op) {
            return Ok(self.bump());
        }
        let t = self.token();
        Err(ExprError::new(
            format!("expected `{op}` {what}, found {}", describe(&t.tok)),
            t.start,
            t.end.max(t.start + 1),
        ))
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let t = self.token();
            return Err(ExprError::new(
                format!("expression nested more than {MAX_DEPTH} levels deep"),
                t.start,
                t.end,
            ));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, ExprError> {
        self.enter()?;
        let result = self.ternary();
        self.depth -= 1;
        result
    }

    fn ternary(&mut self) -> Result<Expr, ExprError> {
        let then = self.or()?;
        if self.is_kw("if") {
            self.bump();
            let cond = self.or()?;
            if !self.is_kw("else") {
                let t = self.token();
                return Err(ExprError::new(
                    format!(
                        "expected `else` in a conditional expression, found {}",
                        describe(&t.tok)
                    ),
                    t.start,
                    t.end.max(t.start + 1),
                )
                .with_hint("write `a if condition else b`"));
            }
            self.bump();
            let otherwise = self.expr()?;
            let (start, end) = (then.start, otherwise.end);
            return Ok(Expr {
                kind: ExprKind::Cond {
                    cond: Box::new(cond),
                    then: Box::new(then),
                    otherwise: Box::new(otherwise),
                },
                start,
                end,
            });
        }
        Ok(then)
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.and()?;
        while self.is_kw("or") {
            self.bump();
            let right = self.and()?;
            left = binary(BinOp::Or, left, right);
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.not()?;
        while self.is_kw("and") {
            self.bump();
            let right = self.not()?;
            left = binary(BinOp::And, left, right);
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, ExprError> {
        if self.is_kw("not") {
            let t = self.bump();
            self.enter()?;
            let inner = self.not();
            self.depth -= 1;
            let inner = inner?;
            let end = inner.end;
            return Ok(Expr {
                kind: ExprKind::Unary(UnOp::Not, Box::new(inner)),
                start: t.start,
                end,
            });
        }
        self.compare()
    }

    fn compare_op(&self) -> Option<(BinOp, usize)> {
        match self.peek() {
            Tok::Op("==") => Some((BinOp::Eq, 1)),
            Tok::Op("!=") => Some((BinOp::Ne, 1)),
            Tok::Op("<") => Some((BinOp::Lt, 1)),
            Tok::Op("<=") => Some((BinOp::Le, 1)),
            Tok::Op(">") => Some((BinOp::Gt, 1)),
            Tok::Op(">=") => Some((BinOp::Ge, 1)),
            Tok::Ident(s) if s == "in" => Some((BinOp::In, 1)),
            Tok::Ident(s)
                if s == "not" && matches!(self.peek_at(1), Tok::Ident(n) if n == "in") =>
            {
                Some((BinOp::NotIn, 2))
            }
            _ => None,
        }
    }

    fn compare(&mut self) -> Result<Expr, ExprError> {
        let left = self.math1()?;
        let Some((op, n)) = self.compare_op() else {
            return Ok(left);
        };
        for _ in 0..n {
            self.bump();
        }
        let right = self.math1()?;
        if self.compare_op().is_some() {
            let t = self.token();
            return Err(
                ExprError::new("comparisons cannot be chained", t.start, t.end)
                    .with_hint("combine them with `and`, e.g. `a < b and b < c`"),
            );
        }
        Ok(binary(op, left, right))
    }

    fn math1(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.concat()?;
        loop {
            let op = match self.peek() {
                Tok::Op("+") => BinOp::Add,
                Tok::Op("-") => BinOp::Sub,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.concat()?;
            left = binary(op, left, right);
        }
    }

    fn concat(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.math2()?;
        while self.is_op("~") {
            self.bump();
            let right = self.math2()?;
            left = binary(BinOp::Concat, left, right);
        }
        Ok(left)
    }

    fn math2(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.pow()?;
        loop {
            let op = match self.peek() {
                Tok::Op("*") => BinOp::Mul,
                Tok::Op("/") => BinOp::Div,
                Tok::Op("//") => BinOp::FloorDiv,
                Tok::Op("%") => BinOp::Rem,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.pow()?;
            left = binary(op, left, right);
        }
    }

    fn pow(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.unary()?;
        while self.is_op("**") {
            self.bump();
            let right = self.unary()?;
            left = binary(BinOp::Pow, left, right);
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        let op = match self.peek() {
            Tok::Op("-") => Some(UnOp::Neg),
            Tok::Op("+") => Some(UnOp::Pos),
            _ => None,
        };
        let node = match op {
            Some(op) => {
                let t = self.bump();
                self.enter()?;
                let inner = self.unary_no_filter();
                self.depth -= 1;
                let inner = inner?;
                fold_neg(op, inner, t.start)
            }
            None => {
                let primary = self.primary()?;
                self.postfix(primary)?
            }
        };
        self.filters(node)
    }

    fn unary_no_filter(&mut self) -> Result<Expr, ExprError> {
        match self.peek() {
            Tok::Op("-") | Tok::Op("+") => {
                let t = self.bump();
                let op = if matches!(t.tok, Tok::Op("-")) {
                    UnOp::Neg
                } else {
                    UnOp::Pos
                };
                self.enter()?;
                let inner = self.unary_no_filter();
                self.depth -= 1;
                Ok(fold_neg(op, inner?, t.start))
            }
            _ => {
                let primary = self.primary()?;
                self.postfix(primary)
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let t = self.bump();
        let lit = |l| {
            Ok(Expr {
                kind: ExprKind::Lit(l),
                start: t.start,
                end: t.end,
            })
        };
        match &t.tok {
            Tok::Int(i) => lit(Literal::Int(*i)),
            Tok::Float(f) => lit(Literal::Float(*f)),
            Tok::Str(s) => lit(Literal::Str(s.clone())),
            Tok::Ident(name) => match name.as_str() {
                "true" | "True" => lit(Literal::Bool(true)),
                "false" | "False" => lit(Literal::Bool(false)),
                "null" | "none" | "None" => lit(Literal::Null),
                "and" | "or" | "not" | "if" | "else" | "in" => Err(ExprError::new(
                    format!("expected a value, found the keyword `{name}`"),
                    t.start,
                    t.end,
                )),
                _ if self.is_op("(") => {
                    self.bump();
                    let (args, end) = self.args(name)?;
                    Ok(Expr {
                        kind: ExprKind::Call {
                            name: name.clone(),
                            name_start: t.start,
                            name_end: t.end,
                            args,
                        },
                        start: t.start,
                        end,
                    })
                }
                _ => Ok(Expr {
                    kind: ExprKind::Path(vec![PathSeg::Key(name.clone())]),
                    start: t.start,
                    end: t.end,
                }),
            },
            Tok::Op("(") => {
                let inner = self.expr()?;
                let close = self.expect_op(")", "to close `(`")?;
                Ok(Expr {
                    start: t.start,
                    end: close.end,
                    ..inner
                })
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                while !self.is_op("]") {
                    items.push(self.expr()?);
                    if !self.is_op(",") {
                        break;
                    }
                    self.bump();
                }
                let close = self.expect_op("]", "to close the list")?;
                Ok(Expr {
                    kind: ExprKind::List(items),
                    start: t.start,
                    end: close.end,
                })
            }
            Tok::Op("{") => {
                let mut entries = Vec::new();
                while !self.is_op("}") {
                    let k = self.bump();
                    let key = match k.tok {
                        Tok::Str(s) => s,
                        Tok::Ident(s) => s,
                        other => {
                            return Err(ExprError::new(
                                format!(
                                    "expected a string key in a map literal, found {}",
                                    describe(&other)
                                ),
                                k.start,
                                k.end.max(k.start + 1),
                            ));
                        }
                    };
                    self.expect_op(":", "after a map key")?;
                    entries.push((key, self.expr()?));
                    if !self.is_op(",") {
                        break;
                    }
                    self.bump();
                }
                let close = self.expect_op("}", "to close the map")?;
                Ok(Expr {
                    kind: ExprKind::Map(entries),
                    start: t.start,
                    end: close.end,
                })
            }
            Tok::Eof => Err(ExprError::new(
                "unexpected end of expression",
                t.start,
                t.end,
            )),
            other => Err(ExprError::new(
                format!("expected a value, found {}", describe(other)),
                t.start,
                t.end,
            )),
        }
    }

    /// Arguments after `(`; returns them and the offset after `)`.
    fn args(&mut self, name: &str) -> Result<(Vec<Expr>, usize), ExprError> {
        let mut args = Vec::new();
        while !self.is_op(")") {
            args.push(self.expr()?);
            if !self.is_op(",") {
                break;
            }
            self.bump();
        }
        let close = self.expect_op(")", &format!("to close the arguments of `{name}`"))?;
        Ok((args, close.end))
    }

    fn postfix(&mut self, mut node: Expr) -> Result<Expr, ExprError> {
        loop {
            if self.is_op(".") {
                self.bump();
                let t = self.bump();
                let seg = match t.tok {
                    Tok::Ident(s) => PathSeg::Key(s),
                    Tok::Int(i) => PathSeg::Index(i),
                    other => {
                        return Err(ExprError::new(
                            format!(
                                "expected a field name after `.`, found {}",
                                describe(&other)
                            ),
                            t.start,
                            t.end.max(t.start + 1),
                        ));
                    }
                };
                node = extend(node, seg, t.end);
            } else if self.is_op("[") {
                self.bump();
                let index = self.expr()?;
                let close = self.expect_op("]", "to close `[`")?;
                let seg = match &index.kind {
                    ExprKind::Lit(Literal::Str(s)) => Some(PathSeg::Key(s.clone())),
                    ExprKind::Lit(Literal::Int(i)) => Some(PathSeg::Index(*i)),
                    _ => None,
                };
                node = match seg {
                    Some(seg) => extend(node, seg, close.end),
                    None => {
                        let start = node.start;
                        Expr {
                            kind: ExprKind::Index(Box::new(node), Box::new(index)),
                            start,
                            end: close.end,
                        }
                    }
                };
            } else if self.is_op("(") {
                let t = self.token();
                return Err(
                    ExprError::new("only named functions can be called", t.start, t.end)
                        .with_hint("call a function by name, e.g. `upper(x)` or `x | upper`"),
                );
            } else {
                return Ok(node);
            }
        }
    }

    fn filters(&mut self, mut node: Expr) -> Result<Expr, ExprError> {
        while self.is_op("|") {
            self.bump();
            let t = self.bump();
            let Tok::Ident(name) = t.tok else {
                return Err(ExprError::new(
                    format!(
                        "expected a function name after `|`, found {}",
                        describe(&t.tok)
                    ),
                    t.start,
                    t.end.max(t.start + 1),
                ));
            };
            let mut args = vec![node];
            let mut end = t.end;
            if self.is_op("(") {
                self.bump();
                let (more, close) = self.args(&name)?;
                args.extend(more);
                end = close;
            }
            let start = args[0].start;
            node = Expr {
                kind: ExprKind::Call {
                    name,
                    name_start: t.start,
                    name_end: t.end,
                    args,
                },
                start,
                end,
            };
        }
        Ok(node)
    }
}

fn binary(op: BinOp, left: Expr, right: Expr) -> Expr {
    let (start, end) = (left.start, right.end);
    Expr {
        kind: ExprKind::Binary(op, Box::new(left), Box::new(right)),
        start,
        end,
    }
}

/// `-` applied to a number literal is folded into the literal.
fn fold_neg(op: UnOp, inner: Expr, start: usize) -> Expr {
    let end = inner.end;
    match (op, &inner.kind) {
        (UnOp::Neg, ExprKind::Lit(Literal::Int(i))) if i.checked_neg().is_some() => Expr {
            kind: ExprKind::Lit(Literal::Int(-i)),
            start,
            end,
        },
        (UnOp::Neg, ExprKind::Lit(Literal::Float(f))) => Expr {
            kind: ExprKind::Lit(Literal::Float(-f)),
            start,
            end,
        },
        _ => Expr {
            kind: ExprKind::Unary(op, Box::new(inner)),
            start,
            end,
        },
    }
}

/// Appends a segment to a path, or indexes any other expression.
fn extend(node: Expr, seg: PathSeg, end: usize) -> Expr {
    let start = node.start;
    match node.kind {
        ExprKind::Path(mut segs) => {
            segs.push(seg);
            Expr {
                kind: ExprKind::Path(segs),
                start,
                end,
            }
        }
        other => {
            let base = Expr {
                kind: other,
                start,
                end: node.end,
            };
            let lit = match seg {
                PathSeg::Key(k) => Literal::Str(k),
                PathSeg::Index(i) => Literal::Int(i),
            };
            let index = Expr {
                kind: ExprKind::Lit(lit),
                start: base.end,
                end,
            };
            Expr {
                kind: ExprKind::Index(Box::new(base), Box::new(index)),
                start,
                end,
            }
        }
    }
}
