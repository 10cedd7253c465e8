//! The seam between kdc's engine and its backends.
//!
//! The engine (crate `kdc`) compiles a recipe's training step into a graph of [`Op`]s on
//! concrete shapes and plans its memory; a backend (crate `kdc-cpu` today, CUDA and Metal
//! behind cargo features later) owns the device memory and runs each operation at the offsets
//! the plan gives it. Both depend on this crate and on nothing of each other, so a backend
//! never sees the checker or the graph passes, and the engine never calls a kernel directly.
//!
//! - [`op`]: the closed operator set, forward and backward, with one [`LossKind`] shared by
//!   the checked IR and the engine graph.
//! - [`backend`]: the [`Backend`] trait (buffers, upload and download, one launch per
//!   operation, the optimiser's update, synchronisation) and its plain data types.

pub mod backend;
pub mod op;

pub use backend::{AdamW, Backend, BackendError, BufferId, Launch, View};
pub use op::{
    broadcast_shapes, is_row_bias, numel, round_bf16, round_bf16_slice, AttentionDims, Binary,
    Dtype, LossKind, Op, Reduce, Unary, F32,
};
