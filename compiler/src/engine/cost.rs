//! What a compiled step costs: floating-point operations and bytes moved per operation, and a
//! roofline estimate of its time on a named GPU (`kdc explain --stage graph --device cuda`,
//! `kdc bench --device cuda`), so a user knows before renting one whether a recipe fits and
//! how fast it can be.
//!
//! The model is deliberately simple and stated: a matrix product costs 2·m·n·k operations;
//! other operations a few per element (listed in [`per_element`]); every operation reads its
//! inputs and writes its output once from device memory (4 bytes a value); an operation
//! takes max(operations / peak, bytes / bandwidth); the optimiser reads and writes each
//! trainable value's parameter, gradient and two moments. Under bf16 autocast it counts what
//! kdc-cuda runs: a bf16 product converts its factors (reads them in f32, writes bf16), runs on
//! the tensor cores reading 2 bytes a factor value, and rounds its output in a second pass;
//! every other bf16-typed operation rounds as its kernels store, or adds a rounding pass where
//! they cannot (kdc-cuda's plan says which; activations stay in f32 memory). A linear layer's
//! bias is added in the GEMM's epilogue; another addend is broadcast into the output first.
//! Real kernels fuse less or more, and small operations are bound by launch latency (about
//! 5 µs each, counted separately), so treat the result as a lower bound.

use super::compile::Compiled;
use super::graph::numel;
use kdc_backend::op::{Dtype, Op};

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
        // Counted from their dimensions in `operations`.
        Op::MatMul { .. } | Op::MatMulAdd { .. } => 0.0,
        Op::Attention { .. } | Op::AttentionBackward { .. } => 0.0,
    }
}

/// One operation's cost, as the compiled step runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct OpCost {
    pub kind: &'static str,
    pub flops: f64,
    /// Values read and written by the operation itself, in f32.
    pub values_moved: f64,
    /// Bytes moved, autocast's conversions and rounding included.
    pub bytes: f64,
    /// Whether it is a matrix product.
    pub matmul: bool,
    /// Whether it runs in bf16 (a product then uses the tensor cores).
    pub bf16: bool,
    /// Kernel launches (a bf16 operation's conversions and rounding are launches of their own).
    pub launches: usize,
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
            Op::Attention { .. } | Op::AttentionBackward { .. } => {
                let forward = matches!(node.op, Op::Attention { .. });
                let count = node.inputs.len() - usize::from(!forward);
                let owned: Vec<Vec<usize>> = shapes[..count].iter().map(|s| s.to_vec()).collect();
                // q, k, v and the bias when there is one (the backward's last input is dout).
                let dims = kdc_backend::AttentionDims::of(&owned, count == 4)
                    .expect("a checked attention");
                let (mn, d, e) = (
                    (dims.batch * dims.m * dims.n) as f64,
                    dims.d as f64,
                    dims.e as f64,
                );
                // Forward: the scores (2d), their softmax (about 5) and the weighted sum (2e) per
                // query–key pair. Backward: the scores twice (once per pass), dp twice, dq, dk, dv.
                let flops = if forward {
                    mn * (2.0 * d + 5.0 + 2.0 * e)
                } else {
                    mn * (4.0 * d + 4.0 * e + 2.0 * d + 2.0 * d + 2.0 * e + 10.0)
                };
                (flops, false)
            }
            ref op => (per_element(op) * out_len.max(read), false),
        };
        // A MatMulAdd's addend: a linear layer's bias is added by the GEMM's epilogue as it
        // writes the product; any other addend (a residual) is first broadcast into the output,
        // which the GEMM then reads back to accumulate onto (a launch, and the output written
        // and read once more).
        let broadcast_addend = matches!(node.op, Op::MatMulAdd { .. })
            && !kdc_backend::is_row_bias(shapes[2], &node.shape);
        let values_moved = read + out_len + if broadcast_addend { 2.0 * out_len } else { 0.0 };
        let bf16 = node.dtype == Dtype::Bf16;
        let (bytes, launches) = match (bf16, matmul) {
            (false, true) => (values_moved * 4.0, 1 + usize::from(broadcast_addend)),
            (false, false) => (values_moved * 4.0, 1),
            (true, true) => {
                let factors = (numel(shapes[0]) + numel(shapes[1])) as f64;
                // Conversions (read f32, write bf16), the product reading bf16 factors (and a
                // MatMulAdd's third input in f32), then the rounding pass over the output.
                let conversions = factors * 6.0;
                let product = factors * 2.0 + (read - factors) * 4.0 + out_len * 4.0;
                // A MatMulAdd's addend is rounded as it is copied: a bias into the scratch (a
                // launch over its n values), any other addend as it is broadcast into the
                // output (which the GEMM reads back).
                let (addend, launches) = match node.op {
                    Op::MatMulAdd { .. } if broadcast_addend => (out_len * 8.0, 5),
                    Op::MatMulAdd { .. } => ((read - factors) * 8.0, 5),
                    _ => (0.0, 4),
                };
                (conversions + product + addend + out_len * 8.0, launches)
            }
            // Kernels that round as they store (elementwise, strided copies, sums to a shape,
            // attention) cost nothing more; the others are followed by a rounding pass.
            (true, false) => {
                let owned: Vec<Vec<usize>> = shapes.iter().map(|s| s.to_vec()).collect();
                if kdc_cuda::dispatch::rounding_pass(&node.op, &owned, &node.shape) {
                    (values_moved * 4.0 + out_len * 8.0, 2)
                } else {
                    (values_moved * 4.0, 1)
                }
            }
        };
        out.push(OpCost {
            kind: node.op.kind(),
            flops,
            values_moved,
            bytes,
            matmul,
            bf16,
            launches,
        });
    }
    out
}

/// A compiled step's estimate on one GPU, in the arithmetic it was compiled for.
#[derive(Clone, Debug)]
pub struct Estimate {
    pub gpu: Gpu,
    /// The step's arithmetic (bf16: autocast).
    pub precision: Dtype,
    /// Operations per step: forward, backward and the optimiser.
    pub flops: f64,
    /// Of which in matrix products.
    pub matmul_flops: f64,
    /// Of which in bf16 products on the tensor cores.
    pub tensor_flops: f64,
    /// Bytes moved per step.
    pub bytes: f64,
    /// Roofline time per step (s).
    pub seconds: f64,
    /// Kernel launches per step, and their latency at 5 µs each.
    pub launches: usize,
    pub launch_seconds: f64,
    /// Device memory the step needs: arena, parameters, gradients, moments, inputs (bytes).
    pub memory_bytes: f64,
    /// The share of the time spent on operations bound by bandwidth rather than arithmetic.
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
    let tensor = gpu.bf16_tflops * 1e12;
    let bandwidth = gpu.bandwidth_tbs * 1e12;
    let (mut seconds, mut bandwidth_seconds) = (0.0, 0.0);
    let (mut flops, mut matmul_flops, mut tensor_flops, mut bytes) = (0.0, 0.0, 0.0, 0.0);
    let mut launches = 0;
    for op in &ops {
        flops += op.flops;
        bytes += op.bytes;
        launches += op.launches;
        if op.matmul {
            matmul_flops += op.flops;
        }
        let on_tensor_cores = op.matmul && op.bf16;
        if on_tensor_cores {
            tensor_flops += op.flops;
        }
        let compute = op.flops / if on_tensor_cores { tensor } else { fp32 };
        let memory = op.bytes / bandwidth;
        seconds += compute.max(memory);
        if memory > compute {
            bandwidth_seconds += memory;
        }
    }
    // AdamW and the gradient norm: parameter, gradient, two moments read, three written, and
    // the gradient read once more for its norm; about 15 operations a value, in f32.
    let optimiser_bytes = trainable * 8.0 * 4.0;
    let optimiser_flops = trainable * 15.0;
    flops += optimiser_flops;
    bytes += optimiser_bytes;
    let optimiser_seconds = (optimiser_bytes / bandwidth).max(optimiser_flops / fp32);
    seconds += optimiser_seconds;
    bandwidth_seconds += optimiser_seconds;
    launches += c.graph.params.iter().filter(|p| p.trainable).count() * 2;
    let memory_bytes = 4.0 * (c.plan.arena_len as f64 + frozen + trainable * 4.0 + inputs);
    Estimate {
        gpu,
        precision: c.precision,
        flops,
        matmul_flops,
        tensor_flops,
        bytes,
        seconds,
        launches,
        launch_seconds: launches as f64 * 5e-6,
        memory_bytes,
        bandwidth_bound_share: if seconds > 0.0 {
            bandwidth_seconds / seconds
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
