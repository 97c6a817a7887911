//! The typed IR of a flow.
//!
//! [`lower`] turns a checked flow spec (plus the lookup tables it uses) into
//! an [`ir::Flow`](Flow): expressions parsed, paths split into segments,
//! templates classified (plain substitutions vs. full MiniJinja), lookup
//! columns extracted. The IR is what the code generator and the reference
//! interpreter ([`interp`]) both execute, and what the compile cache hashes
//! ([`Flow::fingerprint`]). No I/O.

pub mod fields;
pub mod interp;
mod ir;
mod lower;

pub use ir::*;
pub use lower::{LookupData, LowerError, lower};
