//! Tokens of the expression language.

use crate::ExprError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Ident(String),
    Int(i64),
    Float(f64),
    Str(String),
    /// Operators and punctuation.
    Op(&'static str),
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

const OPS: &[&str] = &[
    "**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(", ")", "[", "]",
    "{", "}", ",", ":", ".", "|",
];

pub(crate) fn lex(src: &str) -> Result<Vec<Token>, ExprError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(src[start..i].to_string()),
                start,
                end: i,
            });
            continue;
        }
        if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
                i += 1;
            }
            let mut float = false;
            if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                float = true;
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
                    i += 1;
                }
            }
            if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                let mut j = i + 1;
                if j < bytes.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
                    j += 1;
                }
                if j < bytes.len() && bytes[j].is_ascii_digit() {
                    float = true;
                    i = j;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            let text: String = src[start..i].chars().filter(|c| *c != '_').collect();
            let tok = if float {
                Tok::Float(
                    text.parse()
                        .map_err(|_| ExprError::new("invalid number", start, i))?,
                )
            } else {
                Tok::Int(
                    text.parse()
                        .map_err(|_| ExprError::new("integer literal out of range", start, i))?,
                )
            };
            out.push(Token { tok, start, end: i });
            continue;
        }
        if c == b'\'' || c == b'"' {
            let (s, end) = lex_string(src, i)?;
            out.push(Token {
                tok: Tok::Str(s),
                start,
                end,
            });
            i = end;
            continue;
        }
        match OPS.iter().find(|op| src[i..].starts_with(**op)) {
            Some(op) => {
                i += op.len();
                out.push(Token {
                    tok: Tok::Op(op),
                    start,
                    end: i,
                });
            }
            None => {
                let ch = src[i..].chars().next().unwrap_or('?');
                let mut err =
                    ExprError::new(format!("unexpected character `{ch}`"), i, i + ch.len_utf8());
                if ch == '=' {
                    err = err.with_hint("use `==` to compare; expressions do not assign");
                } else if ch == '&' || ch == '!' {
                    err = err.with_hint("use `and`, `or` and `not`");
                }
                return Err(err);
            }
        }
    }
    out.push(Token {
        tok: Tok::Eof,
        start: src.len(),
        end: src.len(),
    });
    Ok(out)
}

/// Lexes a quoted string starting at `start`; returns its value and the end offset.
fn lex_string(src: &str, start: usize) -> Result<(String, usize), ExprError> {
    let quote = src.as_bytes()[start] as char;
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((off, ch)) = chars.next() {
        let at = start + 1 + off;
        if ch == quote {
            return Ok((out, at + 1));
        }
        if ch == '\\' {
            let Some((_, esc)) = chars.next() else { break };
            match esc {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                '\\' | '\'' | '"' => out.push(esc),
                'u' => {
                    let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                    let code = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                    match code {
                        Some(c) if hex.len() == 4 => out.push(c),
                        _ => {
                            return Err(ExprError::new(
                                "invalid `\\u` escape: expected 4 hex digits",
                                at,
                                at + 2 + hex.len(),
                            ));
                        }
                    }
                }
                other => {
                    return Err(ExprError::new(
                        format!("unknown escape `\\{other}`"),
                        at,
                        at + 1 + other.len_utf8(),
                    )
                    .with_hint("known escapes: \\n \\t \\r \\0 \\\\ \\' \\\" \\uXXXX"));
                }
            }
        } else {
            out.push(ch);
        }
    }
    Err(
        ExprError::new("unterminated string literal", start, src.len())
            .with_hint(format!("close it with {quote}")),
    )
}
