//! Weavster's file formats.
//!
//! - [`types`]: serde types for every file, and the JSON Schemas derived from them;
//! - [`yaml`]: a YAML reader that keeps spans, and a serde deserializer over it;
//! - [`diag`]: located diagnostics as plain data.
//!
//! This crate does no I/O: it turns text into typed values or diagnostics.

pub mod diag;
pub mod types;
pub mod yaml;

pub use diag::{Diagnostic, Severity, Span};
