//! Source text to syntax tree. Parsing is all-or-nothing at the first syntax error (pest does
//! not recover); everything that parses gets a tree with spans.

pub mod ast;
mod parse;

pub use parse::parse;
