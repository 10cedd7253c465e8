//! The training engine: a checked stage lowered to a graph of kdc operations (forward, then
//! backward by kdc's own reverse-mode pass), executed as a luminal graph whose operators call
//! the CPU backend's kernels, with AdamW, schedules and logging around it.

pub mod autodiff;
pub mod clip;
pub mod exec;
pub mod graph;
pub mod kernels;
pub mod lower;
pub mod rng;
pub mod train;
pub mod weights;
