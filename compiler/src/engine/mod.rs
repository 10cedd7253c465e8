//! The training engine: a checked stage lowered to a graph of kdc operations (forward, then
//! backward by kdc's own reverse-mode pass), executed as a luminal graph whose operators call
//! the CPU backend's kernels, with AdamW, schedules and logging around it.

pub mod autodiff;
pub mod clip;
pub mod exec;
pub mod graph;
pub mod kernels;
pub mod lower;
pub mod passes;
pub mod plan;
pub mod rng;
pub mod train;
pub mod weights;

/// A summary of a stage's lowered training graph, for `kdc explain --stage graph`.
pub fn describe(recipe: &crate::ir::Recipe) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let mut out = String::new();
    for (index, stage) in recipe.stages.iter().enumerate() {
        let step = lower::lower(recipe, index, stage.data.batch as usize);
        let g = &step.graph;
        let mut outputs = vec![step.loss];
        outputs.extend(step.terms.iter().map(|t| t.2));
        outputs.extend(step.grads.iter().map(|x| x.1));
        let live = g.live(&outputs);
        let first_backward = step.forward_len;
        let forward = (0..first_backward).filter(|&i| live[i]).count();
        let backward = (first_backward..g.nodes.len()).filter(|&i| live[i]).count();
        let trainable: usize = g
            .params
            .iter()
            .filter(|p| p.trainable)
            .map(|p| graph::numel(&p.shape))
            .sum();
        let frozen: usize = g
            .params
            .iter()
            .filter(|p| !p.trainable)
            .map(|p| graph::numel(&p.shape))
            .sum();
        let _ = writeln!(out, "stage {} (batch {})", stage.name, step.batch);
        let _ = writeln!(
            out,
            "  built {} nodes: {} forward, {} backward (reverse mode) that the outputs need",
            g.nodes.len(),
            forward,
            backward
        );
        let _ = writeln!(
            out,
            "  parameters: {} tensors, {} values trainable; {} values frozen",
            g.params.iter().filter(|p| p.trainable).count(),
            trainable,
            frozen
        );
        let _ = writeln!(out, "  gradients: {} tensors", step.grads.len());
        let inputs: Vec<String> = step
            .inputs
            .iter()
            .map(|(n, s)| format!("{n} {s:?}"))
            .collect();
        let _ = writeln!(out, "  inputs per step: {}", inputs.join(", "));
        let (optimised, reports, plan) = exec::prepare(g, &outputs);
        let _ = writeln!(out, "  passes (operations before -> after):");
        for r in &reports {
            let _ = writeln!(
                out,
                "    {:<14} {:>6} -> {:<6} ({} rewrites)",
                r.name, r.before, r.after, r.rewrites
            );
        }
        let mib = |floats: usize| floats as f64 * 4.0 / (1 << 20) as f64;
        let _ = writeln!(
            out,
            "    {:<14} {} buffers in one {:.1} MiB arena (one buffer each: {:.1} MiB); {} reshapes share their input",
            "memory plan",
            plan.buffers,
            mib(plan.arena_len),
            mib(plan.unshared_len),
            plan.aliases
        );
        let mut histogram: BTreeMap<String, usize> = BTreeMap::new();
        for &i in &plan.order {
            *histogram.entry(optimised.nodes[i].op.kind()).or_default() += 1;
        }
        let _ = writeln!(
            out,
            "  kernels (CPU; kdc-cpu, matrix products through gemm):"
        );
        for (name, count) in histogram {
            let _ = writeln!(out, "    {name:<24} {count} {}", kernel_of(&name));
        }
    }
    out
}

/// The CPU kernel behind an operation, for `explain --stage graph`.
fn kernel_of(op: &str) -> &'static str {
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
