//! The Weavster expression language: Jinja expression syntax, compiled (not
//! interpreted by MiniJinja).
//!
//! - [`parse`] turns source text into an [`Expr`] tree with byte spans;
//! - [`parse_path`] parses a record path (`a.b`, `a['k']`, `items[0]`);
//! - [`check`] resolves calls against [`FUNCTIONS`] (unknown names, arity)
//!   and reports type errors that are certain from literals.
//!
//! No I/O; every error carries the byte range it is about.

mod ast;
mod check;
mod lexer;
mod parser;

pub use ast::{BinOp, Expr, ExprKind, Literal, PathSeg, UnOp};
pub use check::{FUNCTIONS, Function, Type, check};
pub use parser::{parse, parse_path};

/// An error in an expression, located by byte offsets into its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub message: String,
    pub start: usize,
    pub end: usize,
    pub hint: Option<String>,
}

impl ExprError {
    pub(crate) fn new(message: impl Into<String>, start: usize, end: usize) -> Self {
        ExprError {
            message: message.into(),
            start,
            end,
            hint: None,
        }
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}
