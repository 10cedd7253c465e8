//! What a compiled step costs: floating-point operations and bytes moved per operation, and a
//! roofline estimate of its time on a named GPU (`kdc explain --stage graph --device cuda`,
//! `kdc bench --device cuda`), so a user knows before renting one whether a recipe fits and
//! how fast it can be.
//!
//! The model is deliberately simple and stated: a matrix product costs 2·m·n·k operations;
//! other operations a few per element (listed in [`per_element`]); every operation reads its
//! inputs and writes its output once from device memory (4 bytes a value in f32, 2 in bf16
//! for activations); an operation takes max(operations / peak, bytes / bandwidth); the
//! optimiser reads and writes each trainable value's parameter, gradient and two moments.
//! Real kernels fuse less or more, and small operations are bound by launch latency (about
//! 5 µs each, counted separately), so treat the result as a lower bound.

use super::compile::Compiled;
use super::graph::numel;
use kdc_backend::op::Op;

/// A GPU's published peak numbers (dense, without sparsity).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gpu {
    pub name: &'static str,
    /// FP32 on the CUDA cores (SGEMM without TF32), TFLOP/s.
    pub fp32_tflops: f64,
    /// BF16 on the tensor cores, TFLOP/s.
    pub bf16_tflops: f64,
    /// Device memory bandwidth, TB/s.
    pub bandwidth_tbs: f64,
    pub memory_gib: f64,
}

/// The GPUs kdc can estimate for (NVIDIA's data sheets).
pub const GPUS: &[Gpu] = &[
    Gpu {
        name: "A100",
        fp32_tflops: 19.5,
        bf16_tflops: 312.0,
        bandwidth_tbs: 2.039,
        memory_gib: 80.0,
    },
    Gpu {
        name: "H100",
        fp32_tflops: 67.0,
        bf16_tflops: 989.4,
        bandwidth_tbs: 3.35,
        memory_gib: 80.0,
    },
    Gpu {
        name: "L4",
        fp32_tflops: 30.3,
        bf16_tflops: 121.0,
        bandwidth_tbs: 0.3,
        memory_gib: 24.0,
    },
];

/// A GPU by name (case-insensitive; `a100`, `H100`), or one whose name the driver's device
/// name contains (`NVIDIA A100-SXM4-80GB`).
pub fn gpu(name: &str) -> Option<Gpu> {
    let upper = name.to_ascii_uppercase();
    GPUS.iter()
        .find(|g| g.name == upper)
        .or_else(|| GPUS.iter().find(|g| upper.contains(g.name)))
        .copied()
}

/// Operations per output element of the operations that are not matrix products.
pub fn per_element(op: &Op) -> f64 {
    match op {
        Op::Input(_) | Op::Param(_) | Op::Reshape | Op::Detach => 0.0,
        Op::Fill(_) | Op::Constant(_) | Op::Eye | Op::CausalMask => 0.0,
        Op::Permute(_) | Op::Broadcast | Op::Concat { .. } | Op::Slice { .. } => 0.0,
        Op::SliceBackward { .. } | Op::Embedding | Op::GatherRows => 0.0,
        Op::Binary(_) | Op::SumTo | Op::EmbeddingBackward | Op::ScatterRows => 1.0,
        Op::Unary(_) | Op::Where => 4.0,
        Op::UnaryBackward(_) => 6.0,
        Op::Reduce { .. } | Op::ReduceBackward { .. } | Op::Arg { .. } => 2.0,
        Op::Softmax { .. } | Op::LogSoftmax { .. } => 5.0,
        Op::SoftmaxBackward { .. } | Op::LogSoftmaxBackward { .. } => 4.0,
        Op::Normalize { .. } | Op::NormalizeBackward { .. } => 5.0,
        Op::LayerNorm { .. } | Op::LayerNormBackward { .. } => 8.0,
        Op::LayerNormParamGrads { .. } => 4.0,
        Op::TopK { .. } | Op::TopKBackward { .. } => 8.0,
        Op::Loss(_) | Op::LossBackward { .. } => 6.0,
        Op::MatMul { .. } | Op::MatMulAdd { .. } => 0.0,
    }
}

/// One operation's cost.
#[derive(Clone, Debug, PartialEq)]
pub struct OpCost {
    pub kind: &'static str,
    pub flops: f64,
    /// Values read and written (multiply by the bytes of a value).
    pub values_moved: f64,
    /// Whether it is a matrix product (tensor cores under bf16).
    pub matmul: bool,
}

/// Every computed operation of a compiled step, in execution order (aliases cost nothing
/// and are left out).
pub fn operations(c: &Compiled) -> Vec<OpCost> {
    let g = &c.graph;
    let mut out = Vec::new();
    for &id in &c.plan.order {
        let node = &g.nodes[id];
        if c.plan.shares_input(g, id) || matches!(node.op, Op::Input(_) | Op::Param(_)) {
            continue;
        }
        let shapes: Vec<&Vec<usize>> = node.inputs.iter().map(|&i| &g.nodes[i].shape).collect();
        let out_len = numel(&node.shape) as f64;
        let read: f64 = shapes.iter().map(|s| numel(s) as f64).sum();
        let (flops, matmul) = match node.op {
            Op::MatMul { ta, .. } | Op::MatMulAdd { ta, .. } => {
                let a = shapes[0];
                let k = if ta { a[a.len() - 2] } else { a[a.len() - 1] };
                let extra = if matches!(node.op, Op::MatMulAdd { .. }) {
                    out_len
                } else {
                    0.0
                };
                (2.0 * out_len * k as f64 + extra, true)
            }
            ref op => (per_element(op) * out_len.max(read), false),
        };
        out.push(OpCost {
            kind: node.op.kind(),
            flops,
            values_moved: read + out_len,
            matmul,
        });
    }
    out
}

/// A step's estimate on one GPU.
#[derive(Clone, Debug)]
pub struct Estimate {
    pub gpu: Gpu,
    /// Operations per step: forward, backward and the optimiser.
    pub flops: f64,
    /// Of which in matrix products.
    pub matmul_flops: f64,
    /// Bytes moved per step in f32.
    pub bytes_f32: f64,
    /// Roofline time per step (s), f32 (what kdc-cuda runs today) and bf16 autocast.
    pub seconds_f32: f64,
    pub seconds_bf16: f64,
    /// Kernel launches per step, and their latency at 5 µs each.
    pub launches: usize,
    pub launch_seconds: f64,
    /// Device memory the step needs: arena, parameters, gradients, moments, inputs (bytes).
    pub memory_bytes: f64,
    /// Whether the operations of each kind are bound by bandwidth rather than arithmetic in
    /// f32 (share of the f32 time spent on bandwidth-bound operations).
    pub bandwidth_bound_share: f64,
}

/// The roofline estimate of compiled step `c` on `gpu`.
pub fn estimate(c: &Compiled, gpu: Gpu) -> Estimate {
    let ops = operations(c);
    let trainable: f64 = c
        .graph
        .params
        .iter()
        .filter(|p| p.trainable)
        .map(|p| numel(&p.shape) as f64)
        .sum();
    let frozen: f64 = c
        .graph
        .params
        .iter()
        .filter(|p| !p.trainable)
        .map(|p| numel(&p.shape) as f64)
        .sum();
    let inputs: f64 = c.graph.inputs.iter().map(|i| numel(&i.shape) as f64).sum();
    let fp32 = gpu.fp32_tflops * 1e12;
    let bf16 = gpu.bf16_tflops * 1e12;
    let bandwidth = gpu.bandwidth_tbs * 1e12;
    let (mut seconds_f32, mut seconds_bf16, mut bandwidth_seconds) = (0.0, 0.0, 0.0);
    let (mut flops, mut matmul_flops, mut values) = (0.0, 0.0, 0.0);
    for op in &ops {
        flops += op.flops;
        values += op.values_moved;
        if op.matmul {
            matmul_flops += op.flops;
        }
        let compute = op.flops / fp32;
        let memory = op.values_moved * 4.0 / bandwidth;
        seconds_f32 += compute.max(memory);
        if memory > compute {
            bandwidth_seconds += memory;
        }
        // bf16 autocast: products on the tensor cores, activations stored in 2 bytes;
        // element-wise work stays on the CUDA cores in f32.
        let compute_bf16 = op.flops / if op.matmul { bf16 } else { fp32 };
        seconds_bf16 += compute_bf16.max(op.values_moved * 2.0 / bandwidth);
    }
    // AdamW and the gradient norm: parameter, gradient, two moments read, three written, and
    // the gradient read once more for its norm; about 15 operations a value.
    let optimiser_values = trainable * 8.0;
    let optimiser_flops = trainable * 15.0;
    flops += optimiser_flops;
    values += optimiser_values;
    let optimiser_seconds = (optimiser_values * 4.0 / bandwidth).max(optimiser_flops / fp32);
    seconds_f32 += optimiser_seconds;
    seconds_bf16 += optimiser_seconds;
    bandwidth_seconds += optimiser_seconds;
    let launches = ops.len() + c.graph.params.iter().filter(|p| p.trainable).count() * 2;
    let memory_bytes = 4.0 * (c.plan.arena_len as f64 + frozen + trainable * 4.0 + inputs);
    Estimate {
        gpu,
        flops,
        matmul_flops,
        bytes_f32: values * 4.0,
        seconds_f32,
        seconds_bf16,
        launches,
        launch_seconds: launches as f64 * 5e-6,
        memory_bytes,
        bandwidth_bound_share: if seconds_f32 > 0.0 {
            bandwidth_seconds / seconds_f32
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_found_by_name_or_in_the_driver_name() {
        assert_eq!(gpu("a100").unwrap().name, "A100");
        assert_eq!(gpu("NVIDIA H100 80GB HBM3").unwrap().name, "H100");
        assert!(gpu("V100").is_none());
    }
}
