//! How the engine runs a recipe (`--stage graph`): per stage, the lowered training step, what
//! each graph pass did, the memory plan and the backend's kernels.

use crate::engine::compile::{self, Compiled};
use crate::engine::graph::{numel, Dtype};
use crate::ir::Recipe;
use kdc_backend::Backend;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Every stage's compiled training step on `backend`.
pub fn graph(recipe: &Recipe, backend: &dyn Backend) -> String {
    let mut out = String::new();
    for (index, stage) in recipe.stages.iter().enumerate() {
        let compiled = compile::compile(recipe, index, &compile::Options::train(), backend);
        let _ = writeln!(out, "stage {} (batch {})", stage.name, compiled.batch);
        summary(&mut out, &compiled);
        kernels(&mut out, &compiled);
    }
    out
}

/// Every stage's lowered training step in brief (`kdc snap`): operations built and after each
/// pass, parameters, gradients, inputs and the memory plan. Machine-independent: the same
/// text on every machine for a given backend.
pub fn step_summary(recipe: &Recipe, backend: &dyn Backend) -> String {
    let mut out = String::new();
    for (index, stage) in recipe.stages.iter().enumerate() {
        let compiled = compile::compile(recipe, index, &compile::Options::train(), backend);
        let _ = writeln!(out, "stage {} (batch {})", stage.name, compiled.batch);
        summary(&mut out, &compiled);
    }
    out
}

fn summary(out: &mut String, c: &Compiled) {
    let g = &c.graph;
    let _ = writeln!(
        out,
        "  built {} nodes: {} forward, {} backward (reverse mode) that the outputs need",
        c.built.nodes, c.built.forward, c.built.backward
    );
    let values = |trainable: bool| -> usize {
        g.params
            .iter()
            .filter(|p| p.trainable == trainable)
            .map(|p| numel(&p.shape))
            .sum()
    };
    let _ = writeln!(
        out,
        "  parameters: {} tensors, {} values trainable; {} values frozen",
        g.params.iter().filter(|p| p.trainable).count(),
        values(true),
        values(false)
    );
    let _ = writeln!(out, "  gradients: {} tensors", c.grads().len());
    let inputs: Vec<String> = g
        .inputs
        .iter()
        .map(|i| format!("{} {:?}", i.kind, i.shape))
        .collect();
    let _ = writeln!(out, "  inputs per step: {}", inputs.join(", "));
    let _ = writeln!(out, "  passes (operations before -> after):");
    for r in &c.reports {
        let _ = writeln!(
            out,
            "    {:<14} {:>6} -> {:<6} ({} rewrites)",
            r.name, r.before, r.after, r.rewrites
        );
    }
    let mib = |floats: usize| floats as f64 * 4.0 / (1 << 20) as f64;
    let plan = &c.plan;
    let _ = writeln!(
        out,
        "    {:<14} {} buffers in one {:.1} MiB arena (one buffer each: {:.1} MiB); {} reshapes share their input",
        "memory plan",
        plan.buffers,
        mib(plan.arena_len),
        mib(plan.unshared_len),
        plan.aliases
    );
}

fn kernels(out: &mut String, c: &Compiled) {
    let (g, plan) = (&c.graph, &c.plan);
    let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in &plan.order {
        *histogram.entry(g.nodes[i].op.kind()).or_default() += 1;
    }
    let _ = writeln!(out, "  kernels ({}):", backend_words(c.backend));
    for (name, count) in histogram {
        let _ = writeln!(out, "    {name:<24} {count} {}", kernel_of(c.backend, name));
    }
}

fn backend_words(backend: &str) -> &'static str {
    match backend {
        "cpu" => "CPU; kdc-cpu, matrix products through gemm",
        _ => "",
    }
}

/// The kernel behind an operation on a backend.
fn kernel_of(backend: &str, op: &str) -> &'static str {
    if backend != "cpu" {
        return "";
    }
    match op {
        "MatMul" => "gemm (batched; transposes as strides)",
        "MatMulAdd" => "broadcast copy + gemm accumulating",
        "Reshape" | "Detach" => "none (shares memory)",
        "LayerNorm" => "kdc-cpu layer_norm",
        "LayerNormBackward" => "kdc-cpu layer_norm_stats + backward_input",
        "LayerNormParamGrads" => "kdc-cpu layer_norm_stats + backward_params",
        "Binary" => "kdc-cpu binary (broadcasting)",
        "Unary" | "UnaryBackward" => "kdc-cpu unary (vectorised)",
        "Softmax" | "SoftmaxBackward" | "LogSoftmax" | "LogSoftmaxBackward" => "kdc-cpu softmax",
        "SumTo" => "kdc-cpu sum_to",
        "Permute" => "kdc-cpu permute",
        _ => "kdc-cpu",
    }
}

/// Every stage's compiled step on a CUDA GPU, estimated (`--stage graph --device cuda`): the
/// kernels each operation launches, operations and bytes per step, the memory it needs
/// against the GPU's, and a roofline time in the recipe's arithmetic and in the other one
/// (f32, bf16 autocast).
pub fn cuda(recipe: &Recipe, backend: &dyn Backend, gpu: crate::engine::cost::Gpu) -> String {
    let mut out = String::new();
    let gib = |bytes: f64| bytes / (1u64 << 30) as f64;
    for (index, stage) in recipe.stages.iter().enumerate() {
        let compiled = compile::compile(recipe, index, &compile::Options::train(), backend);
        let e = crate::engine::cost::estimate(&compiled, gpu);
        // The other arithmetic, for comparison.
        let other_precision = match compiled.precision {
            Dtype::F32 => Dtype::Bf16,
            Dtype::Bf16 => Dtype::F32,
        };
        let other = compile::compile(
            recipe,
            index,
            &compile::Options {
                precision: Some(other_precision),
                ..compile::Options::train()
            },
            backend,
        );
        let o = crate::engine::cost::estimate(&other, gpu);
        let _ = writeln!(
            out,
            "stage {} (batch {}) on one {} ({} GiB, {} TB/s, {} TFLOP/s FP32, {} TFLOP/s BF16 tensor): a roofline estimate",
            stage.name,
            compiled.batch,
            gpu.name,
            gpu.memory_gib,
            gpu.bandwidth_tbs,
            gpu.fp32_tflops,
            gpu.bf16_tflops
        );
        let _ = writeln!(
            out,
            "  work       {:.3} TFLOP per step ({:.1} % in matrix products{}), {:.2} GB moved",
            e.flops / 1e12,
            100.0 * e.matmul_flops / e.flops.max(1.0),
            if e.tensor_flops > 0.0 {
                format!(
                    ", {:.1} % on the tensor cores",
                    100.0 * e.tensor_flops / e.flops.max(1.0)
                )
            } else {
                String::new()
            },
            e.bytes / 1e9
        );
        let fits = if gib(e.memory_bytes) <= gpu.memory_gib * 0.95 {
            "fits"
        } else {
            "does NOT fit: lower the batch or use a GPU with more memory"
        };
        let _ = writeln!(
            out,
            "  memory     {:.2} GiB of {} GiB (activation arena {:.2} GiB; parameters, gradients and AdamW moments; inputs): {fits}",
            gib(e.memory_bytes),
            gpu.memory_gib,
            gib(compiled.plan.arena_len as f64 * 4.0)
        );
        let arithmetic = |d: Dtype| match d {
            Dtype::F32 => "in f32 (products as SGEMM on the CUDA cores)",
            Dtype::Bf16 => {
                "with bf16 autocast (products on the tensor cores, activations in f32 memory)"
            }
        };
        let _ = writeln!(
            out,
            "  time       ≥ {:.2} ms per step {}, as the recipe asks ({:.0} % of it bound by bandwidth); ≥ {:.2} ms {}; plus {} kernel launches ≈ {:.2} ms of launch latency",
            e.seconds * 1e3,
            arithmetic(e.precision),
            100.0 * e.bandwidth_bound_share,
            o.seconds * 1e3,
            arithmetic(o.precision),
            e.launches,
            e.launch_seconds * 1e3
        );
        let mut kernels: BTreeMap<String, usize> = BTreeMap::new();
        let mut unsupported: BTreeMap<String, usize> = BTreeMap::new();
        for &id in &compiled.plan.order {
            let node = &compiled.graph.nodes[id];
            if compiled.plan.shares_input(&compiled.graph, id) {
                continue;
            }
            let shapes: Vec<Vec<usize>> = node
                .inputs
                .iter()
                .map(|&i| compiled.graph.nodes[i].shape.clone())
                .collect();
            match kdc_cuda::dispatch::plan(&node.op, &shapes, &node.shape, node.dtype) {
                Ok(steps) => {
                    for step in steps {
                        let name = match step {
                            kdc_cuda::dispatch::Step::Kernel(call) => call.kernel.to_string(),
                            kdc_cuda::dispatch::Step::Gemm(g) if g.bias.is_some() => {
                                let ty = if g.bf16 { "bf16" } else { "f32" };
                                format!("cuBLASLt {ty} + bias epilogue")
                            }
                            kdc_cuda::dispatch::Step::Gemm(g) if g.bf16 => {
                                "cuBLAS GemmEx bf16 (strided batched)".to_string()
                            }
                            kdc_cuda::dispatch::Step::Gemm(_) => {
                                "cuBLAS SGEMM (strided batched)".to_string()
                            }
                            kdc_cuda::dispatch::Step::Upload(_) => "constant upload".to_string(),
                        };
                        *kernels.entry(name).or_default() += 1;
                    }
                }
                Err(_) => *unsupported.entry(node.op.kind().to_string()).or_default() += 1,
            }
        }
        let _ = writeln!(out, "  kernels per step (kdc-cuda):");
        for (name, count) in &kernels {
            let _ = writeln!(out, "    {name:<36} {count}");
        }
        if !unsupported.is_empty() {
            let listed: Vec<String> = unsupported
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            let _ = writeln!(
                out,
                "  not yet on cuda: {} (the step cannot run there yet)",
                listed.join(", ")
            );
        }
    }
    out
}
