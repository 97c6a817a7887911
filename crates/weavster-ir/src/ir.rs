//! IR types. Everything is ordered (no hash maps) so that serializing the IR
//! is canonical and its fingerprint stable across processes and machines.

use serde::Serialize;
use serde_json::Value;
use sha2::Digest as _;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Seg {
    Key(String),
    Idx(i64),
}

pub type Path = Vec<Seg>;

/// The guest library's view of a path (borrowing its keys).
pub fn guest_path(p: &[Seg]) -> Vec<weavster_guest::path::Seg<'_>> {
    p.iter()
        .map(|s| match s {
            Seg::Key(k) => weavster_guest::path::Seg::Key(k),
            Seg::Idx(i) => weavster_guest::path::Seg::Idx(*i),
        })
        .collect()
}

/// `a.b[0]['k y']`, as record errors name paths.
pub fn display_path(p: &[Seg]) -> String {
    weavster_guest::path::display(&guest_path(p))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum UnOp {
    Not,
    Neg,
    Pos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Rem,
    Pow,
    Concat,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Expr {
    Lit(Value),
    Path(Path),
    List(Vec<Expr>),
    Map(Vec<(String, Expr)>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// Short-circuit: the right side is evaluated only when needed.
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cond {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    /// A library function (`weavster_guest::func`).
    Call {
        func: String,
        args: Vec<Expr>,
    },
    /// `exists(path)`.
    Exists(Path),
    Index(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OnNoMatch {
    Keep,
    Drop,
    Null,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OnMiss {
    Default,
    Keep,
    Drop,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CastType {
    Int,
    Float,
    String,
    Bool,
    Timestamp,
}

/// A piece of a template that is only substitutions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Piece {
    Text(String),
    Path(Path),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Template {
    /// Only text and `{{ path }}`: lowered to string building.
    Plain(Vec<Piece>),
    /// Anything else: rendered by MiniJinja; `id` indexes the flow's templates.
    Full { id: usize, source: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Step {
    Set(Vec<(Path, Expr)>),
    Add(Vec<(Path, Value)>),
    Default(Vec<(Path, Value)>),
    Rename(Vec<(Path, Path)>),
    Drop(Vec<Path>),
    Select(Vec<Path>),
    Coalesce(Vec<(Path, Vec<Expr>)>),
    Cast(Vec<(Path, CastType)>),
    Filter(Expr),
    /// `regex` indexes the flow's regexes.
    RegexExtract {
        field: Path,
        regex: usize,
        into: Option<Path>,
        on_no_match: OnNoMatch,
    },
    RegexReplace {
        field: Path,
        regex: usize,
        with: String,
    },
    Template(Vec<(Path, Template)>),
    /// `table` indexes the flow's lookup tables.
    Lookup {
        field: Path,
        table: usize,
        into: Path,
        on_miss: OnMiss,
        default: Value,
    },
    When {
        cond: Expr,
        then: Vec<Step>,
        otherwise: Vec<Step>,
    },
    Explode {
        field: Path,
        into: Path,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    pub to: String,
    pub when: Option<Expr>,
}

/// One lookup column: key → value, sorted by key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    /// `<table>.<column>`, for messages and generated names.
    pub name: String,
    pub entries: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flow {
    pub name: String,
    pub steps: Vec<Step>,
    pub outputs: Vec<Output>,
    /// `unrouted: error`.
    pub unrouted_error: bool,
    pub regexes: Vec<String>,
    /// Full templates, by id.
    pub templates: Vec<String>,
    pub tables: Vec<Table>,
    /// The top-level fields the flow reads and writes (`None`: it may
    /// touch any); see [`crate::fields`].
    pub fields: Option<Fields>,
}

/// How a flow uses top-level record fields: the batch decoder parses only
/// these, and writes read-only ones back as the text they came with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Fields {
    /// Sorted: fields the flow reads and never writes.
    pub read_only: Vec<String>,
    /// Sorted: fields a step may set, change or remove.
    pub written: Vec<String>,
    /// Sorted: read-only fields the flow reads only by member (`user.name`,
    /// never `user` itself), with the members it reads, sorted.
    pub members: Vec<(String, Vec<String>)>,
}

impl Fields {
    /// How the flow uses `key`.
    pub fn touch(&self, key: &str) -> weavster_guest::Touch {
        let has = |v: &[String]| v.binary_search_by(|x| x.as_str().cmp(key)).is_ok();
        if has(&self.written) {
            weavster_guest::Touch::Write
        } else if has(&self.read_only) {
            weavster_guest::Touch::Read
        } else {
            weavster_guest::Touch::None
        }
    }

    /// See [`weavster_guest::Flow::reads`].
    pub fn reads(&self, key: &str, member: &str) -> Option<bool> {
        let i = self
            .members
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()?;
        Some(
            self.members[i]
                .1
                .binary_search_by(|m| m.as_str().cmp(member))
                .is_ok(),
        )
    }
}

impl Flow {
    /// A stable hash of the normalized IR (hex SHA-256 of its canonical JSON).
    pub fn fingerprint(&self) -> String {
        /// Hashes what is written to it (the JSON is never held whole:
        /// a large lookup table is tens of megabytes of it).
        struct Hashing(sha2::Sha256);
        impl std::io::Write for Hashing {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut h = Hashing(sha2::Sha256::new());
        let _ = serde_json::to_writer(std::io::BufWriter::with_capacity(1 << 16, &mut h), self);
        let digest = h.0.finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl From<OnNoMatch> for weavster_guest::step::OnNoMatch {
    fn from(o: OnNoMatch) -> Self {
        match o {
            OnNoMatch::Keep => Self::Keep,
            OnNoMatch::Drop => Self::Drop,
            OnNoMatch::Null => Self::Null,
            OnNoMatch::Error => Self::Error,
        }
    }
}

impl From<OnMiss> for weavster_guest::step::OnMiss {
    fn from(o: OnMiss) -> Self {
        match o {
            OnMiss::Default => Self::Default,
            OnMiss::Keep => Self::Keep,
            OnMiss::Drop => Self::Drop,
            OnMiss::Error => Self::Error,
        }
    }
}

impl From<CastType> for weavster_guest::step::CastType {
    fn from(c: CastType) -> Self {
        match c {
            CastType::Int => Self::Int,
            CastType::Float => Self::Float,
            CastType::String => Self::String,
            CastType::Bool => Self::Bool,
            CastType::Timestamp => Self::Timestamp,
        }
    }
}
