//! The training engine: a checked stage compiled (`compile`) into a graph of kdc operations —
//! towers and loss forward, kdc's own reverse-mode pass backward — optimised and planned, then
//! run as a luminal graph whose operators launch on a backend (`device`), with AdamW,
//! schedules and logging around it (`train`).

pub mod autodiff;
pub mod batches;
pub mod checkpoint;
pub mod clip;
pub mod compile;
pub mod cost;
pub mod device;
pub mod exec;
pub mod export;
pub mod graph;
pub mod lower;
pub mod passes;
pub mod plan;
pub mod rng;
pub mod train;
pub mod weights;
