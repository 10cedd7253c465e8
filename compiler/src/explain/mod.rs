//! Readable prints of what a recipe says (`--stage ast`), what it computes (`--stage ir`) and
//! how the engine runs it (`--stage graph`). Pure functions to text; only the CLI prints.

mod ast;
mod graph;
mod ir;

pub use ast::ast;
pub use graph::{cuda, graph, step_summary};
pub use ir::ir;
