//! How the engine runs a recipe (`--stage graph`): per stage, the lowered training step, what
//! each graph pass did, the memory plan and the backend's kernels.

use crate::engine::compile::{self, Compiled};
use crate::engine::graph::numel;
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
