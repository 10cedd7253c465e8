//! Graph passes between differentiation and execution. Each rewrites the graph in place, keeps
//! node ids (so the graph stays in topological order) and reports the live node count before
//! and after. The memory plan (`plan.rs`) comes last.
//!
//! * **dead code** — nodes that no output needs (the gradients of frozen towers, forward
//!   values only a dead gradient read) are not executed: liveness from the outputs.
//! * **common subexpressions** — an operation equal to an earlier one (same operation, same
//!   inputs) becomes a reshape of it, which the memory plan makes the same memory: nothing
//!   runs twice (a pooled branch and the full layer share their layer norm, keys, values).
//! * **matmul + add** — `A·B + C`, with `C` broadcast to the product (a linear layer's bias, a
//!   residual stream), becomes one `MatMulAdd`: the output is written once with `C` and the
//!   product accumulates into it inside the GEMM, where two kernels would read and write the
//!   product twice. Only when the product has no other reader, and under autocast only when the
//!   product and the sum have one type (a bf16 product added to an f32 residual stream stays
//!   two operations, so the product is rounded before the addition, as PyTorch rounds it; a
//!   bias, which autocast casts with its linear layer, fuses and is read as bf16).
//! * **autocast** (only under `precision(bf16)`, before the fusion) — types every value f32
//!   or bf16 as PyTorch's automatic mixed precision does: matrix products take bf16 factors
//!   and give bf16; layer norms, softmaxes, normalisations, reductions, `exp`, `log` and the
//!   losses give f32; every other operation gives bf16 when its computed inputs are all bf16
//!   (parameters, batch inputs and constants adapt to the other operand, as autocast casts a
//!   weight), else f32. Backward operations follow the same rules, so the gradient of a
//!   product is two bf16 products. Parameters, their gradients' accumulation in the optimiser,
//!   AdamW's state and the loss stay f32.

use super::graph::{numel, Binary, Dtype, Graph, Id, Op, Unary};

/// What one pass did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassReport {
    pub name: &'static str,
    /// Live operations (not counting parameters and inputs) before and after.
    pub before: usize,
    pub after: usize,
    /// How many rewrites the pass made.
    pub rewrites: usize,
}

/// Live operations (excluding sources).
pub fn live_ops(g: &Graph, outputs: &[Id]) -> usize {
    let live = g.live(outputs);
    (0..g.nodes.len())
        .filter(|&i| live[i] && !g.nodes[i].op.is_source())
        .count()
}

/// Runs every pass (autocast when `precision` is bf16); returns their reports in order.
pub fn optimize(g: &mut Graph, outputs: &[Id], precision: Dtype) -> Vec<PassReport> {
    let built = g.nodes.iter().filter(|n| !n.op.is_source()).count();
    let live = live_ops(g, outputs);
    let mut reports = vec![PassReport {
        name: "dead code",
        before: built,
        after: live,
        rewrites: built - live,
    }];
    let rewrites = common_subexpressions(g, outputs);
    let after_cse = live_ops(g, outputs);
    reports.push(PassReport {
        name: "common subexpr",
        before: live,
        after: after_cse,
        rewrites,
    });
    if precision == Dtype::Bf16 {
        let rewrites = autocast(g, outputs);
        reports.push(PassReport {
            name: "autocast bf16",
            before: after_cse,
            after: after_cse,
            rewrites,
        });
    }
    let rewrites = fuse_matmul_add(g, outputs);
    reports.push(PassReport {
        name: "matmul + add",
        before: after_cse,
        after: live_ops(g, outputs),
        rewrites,
    });
    reports
}

fn common_subexpressions(g: &mut Graph, outputs: &[Id]) -> usize {
    use std::collections::HashMap;
    let live = g.live(outputs);
    let mut canonical: Vec<Id> = (0..g.nodes.len()).collect();
    // Operators hash by value (their float constants by bits): two nodes are the same
    // computation when operator, inputs and shape are equal.
    let mut seen: HashMap<(Op, Vec<Id>, Vec<usize>, Dtype), Id> = HashMap::new();
    let mut rewrites = 0;
    for i in 0..g.nodes.len() {
        let inputs: Vec<Id> = g.nodes[i].inputs.iter().map(|&x| canonical[x]).collect();
        g.nodes[i].inputs = inputs;
        let node = &g.nodes[i];
        if !live[i] || node.op.is_source() {
            continue;
        }
        let key = (
            node.op.clone(),
            node.inputs.clone(),
            node.shape.clone(),
            node.dtype,
        );
        match seen.get(&key) {
            Some(&first) => {
                canonical[i] = first;
                // Kept as a view of the first, for outputs that name it.
                g.nodes[i].op = Op::Reshape;
                g.nodes[i].inputs = vec![first];
                rewrites += 1;
            }
            None => {
                seen.insert(key, i);
            }
        }
    }
    rewrites
}

/// Readers of each node among the live ones; outputs count as a reader.
fn readers(g: &Graph, outputs: &[Id]) -> Vec<usize> {
    let live = g.live(outputs);
    let mut count = vec![0; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if live[i] {
            for &input in &n.inputs {
                count[input] += 1;
            }
        }
    }
    for &o in outputs {
        count[o] += 1;
    }
    count
}

fn fuse_matmul_add(g: &mut Graph, outputs: &[Id]) -> usize {
    let readers = readers(g, outputs);
    let live = g.live(outputs);
    let mut rewrites = 0;
    for i in 0..g.nodes.len() {
        if !live[i] || g.nodes[i].op != Op::Binary(Binary::Add) {
            continue;
        }
        let shape = g.nodes[i].shape.clone();
        let (x, y) = (g.nodes[i].inputs[0], g.nodes[i].inputs[1]);
        // The product operand: a matmul of the output's shape read by this add alone.
        let fusable = |m: Id, other: Id| {
            matches!(g.nodes[m].op, Op::MatMul { .. })
                && readers[m] == 1
                && m != other
                && g.nodes[m].shape == shape
                && g.nodes[m].dtype == g.nodes[i].dtype
                && numel(&g.nodes[other].shape) <= numel(&shape)
        };
        let (m, c) = if fusable(x, y) {
            (x, y)
        } else if fusable(y, x) {
            (y, x)
        } else {
            continue;
        };
        let Op::MatMul { ta, tb } = g.nodes[m].op else {
            unreachable!()
        };
        let (a, b) = (g.nodes[m].inputs[0], g.nodes[m].inputs[1]);
        g.nodes[i].op = Op::MatMulAdd { ta, tb };
        g.nodes[i].inputs = vec![a, b, c];
        rewrites += 1;
    }
    rewrites
}

/// How an operation's output type follows from autocast.
enum Rule {
    /// Always bf16 (matrix products).
    Bf16,
    /// Always f32 (PyTorch autocast's f32 list, and indices).
    F32,
    /// bf16 when its computed inputs are all bf16 and there is at least one.
    Follow,
    /// A parameter, a batch input or a constant: f32, adapting to the other operands.
    Source,
}

fn rule(op: &Op) -> Rule {
    match op {
        Op::Input(_) | Op::Param(_) | Op::Fill(_) | Op::Constant(_) | Op::Eye | Op::CausalMask => {
            Rule::Source
        }
        Op::MatMul { .. } | Op::MatMulAdd { .. } => Rule::Bf16,
        Op::Unary(Unary::Exp | Unary::Log) => Rule::F32,
        Op::Reduce { .. }
        | Op::ReduceBackward { .. }
        | Op::Softmax { .. }
        | Op::LogSoftmax { .. }
        | Op::SoftmaxBackward { .. }
        | Op::LogSoftmaxBackward { .. }
        | Op::Normalize { .. }
        | Op::NormalizeBackward { .. }
        | Op::LayerNorm { .. }
        | Op::LayerNormBackward { .. }
        | Op::LayerNormParamGrads { .. }
        | Op::Loss(_)
        | Op::LossBackward { .. }
        // Positions: exact integers that bf16 could not hold beyond 256.
        | Op::Arg { .. } => Rule::F32,
        Op::Unary(_)
        | Op::UnaryBackward(_)
        | Op::Binary(_)
        | Op::Permute(_)
        | Op::Reshape
        | Op::Broadcast
        | Op::SumTo
        | Op::Where
        | Op::TopK { .. }
        | Op::TopKBackward { .. }
        | Op::Embedding
        | Op::EmbeddingBackward
        | Op::GatherRows
        | Op::ScatterRows
        | Op::Concat { .. }
        | Op::Slice { .. }
        | Op::SliceBackward { .. }
        | Op::Detach
        // Attention's softmax is f32 inside the operation; its output (and gradients) follow
        // q, k and v.
        | Op::Attention { .. }
        | Op::AttentionBackward { .. } => Rule::Follow,
    }
}

/// Types the live nodes (see the module documentation); returns how many are bf16.
fn autocast(g: &mut Graph, outputs: &[Id]) -> usize {
    let live = g.live(outputs);
    let mut count = 0;
    for i in 0..g.nodes.len() {
        let dtype = match rule(&g.nodes[i].op) {
            Rule::Bf16 => Dtype::Bf16,
            Rule::F32 | Rule::Source => Dtype::F32,
            Rule::Follow => {
                let computed = g.nodes[i]
                    .inputs
                    .iter()
                    .filter(|&&x| !matches!(rule(&g.nodes[x].op), Rule::Source));
                let mut any = false;
                let mut all = true;
                for &x in computed {
                    any = true;
                    all &= g.nodes[x].dtype == Dtype::Bf16;
                }
                if any && all {
                    Dtype::Bf16
                } else {
                    Dtype::F32
                }
            }
        };
        g.nodes[i].dtype = dtype;
        if live[i] && dtype == Dtype::Bf16 {
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::graph::{InputKind, Reduce};

    /// A linear layer `y = x·w + b`: the graph and (x, w, b, x·w, y).
    fn linear() -> (Graph, [Id; 5]) {
        let mut g = Graph::default();
        let x = g.input(InputKind::Pixels { model: "x".into() }, vec![4, 3]);
        let w = g.param("w", vec![3, 5], true);
        let b = g.param("b", vec![5], true);
        let xw = g.matmul(x, w);
        let y = g.add2(xw, b);
        (g, [x, w, b, xw, y])
    }

    #[test]
    fn a_bias_add_fuses_into_its_product() {
        let (mut g, [x, w, b, _, y]) = linear();
        let loss = g.reduce(Reduce::Sum, y, None);
        let reports = optimize(&mut g, &[loss], Dtype::F32);
        assert_eq!(reports[2].rewrites, 1);
        assert_eq!(reports[2].after, reports[2].before - 1);
        assert_eq!(
            g.nodes[y].op,
            Op::MatMulAdd {
                ta: false,
                tb: false
            }
        );
        assert_eq!(g.nodes[y].inputs, vec![x, w, b]);
    }

    #[test]
    fn a_product_read_twice_is_not_fused() {
        let (mut g, [_, _, _, xw, y]) = linear();
        let z = g.mul(xw, y);
        let loss = g.reduce(Reduce::Sum, z, None);
        let reports = optimize(&mut g, &[loss], Dtype::F32);
        assert_eq!(reports[2].rewrites, 0);
        assert_eq!(g.nodes[y].op, Op::Binary(Binary::Add));
    }

    #[test]
    fn an_operation_computed_twice_runs_once() {
        let mut g = Graph::default();
        let x = g.input(InputKind::Pixels { model: "x".into() }, vec![4, 3]);
        let w = g.param("w", vec![3, 5], true);
        let a = g.matmul(x, w);
        let b = g.matmul(x, w);
        let ea = g.unary(crate::engine::graph::Unary::Exp, a);
        let eb = g.unary(crate::engine::graph::Unary::Exp, b);
        let s = g.add2(ea, eb);
        let loss = g.reduce(Reduce::Sum, s, None);
        let reports = optimize(&mut g, &[loss], Dtype::F32);
        assert_eq!(reports[1].rewrites, 2, "{reports:?}");
        assert_eq!(g.nodes[s].inputs, vec![ea, ea]);
        // The duplicates are no longer read.
        let live = g.live(&[loss]);
        assert!(!live[b] && !live[eb]);
    }

    /// A pre-norm block's shapes: `h = x + gelu(ln(x)·w1 + b1)·w2`, read by a softmax.
    #[test]
    fn autocast_types_products_and_their_followers_and_keeps_the_residual_unfused() {
        use crate::engine::graph::Unary;
        let mut g = Graph::default();
        let pixels = g.input(InputKind::Pixels { model: "x".into() }, vec![4, 3]);
        // A computed f32 residual stream (batch inputs, like parameters, adapt).
        let x = g.unary(Unary::Neg, pixels);
        let (gain, bias) = (g.param("g", vec![3], true), g.param("b", vec![3], true));
        let (w1, b1) = (
            g.param("w1", vec![3, 5], true),
            g.param("b1", vec![5], true),
        );
        let w2 = g.param("w2", vec![5, 3], true);
        let ln = g.layer_norm(x, gain, bias, 1e-5);
        let p1 = g.matmul(ln, w1);
        let h1 = g.add2(p1, b1);
        let act = g.unary(Unary::Gelu, h1);
        let p2 = g.matmul(act, w2);
        let h = g.add2(x, p2);
        let s = g.softmax(h, 1);
        let pos = g.arg(act, true, Some(1));
        let e = g.unary(Unary::Exp, act);
        let loss = g.reduce(Reduce::Sum, s, None);
        let l2 = g.reduce(Reduce::Sum, pos, None);
        let l3 = g.reduce(Reduce::Sum, e, None);
        let outputs = [loss, l2, l3];
        let mut f32_graph = g.clone();
        let reports = optimize(&mut g, &outputs, Dtype::Bf16);
        let names: Vec<&str> = reports.iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            [
                "dead code",
                "common subexpr",
                "autocast bf16",
                "matmul + add"
            ]
        );
        let dtype = |id: Id| g.nodes[id].dtype;
        // Products, the bias add (a parameter adapts) and the activation on it: bf16; the bias
        // add fused into its product.
        assert_eq!(
            g.nodes[h1].op,
            Op::MatMulAdd {
                ta: false,
                tb: false
            }
        );
        for id in [h1, act, p2] {
            assert_eq!(dtype(id), Dtype::Bf16, "{:?}", g.nodes[id].op);
        }
        // The residual stream (f32 input + bf16 product) is f32 and stays an addition, so the
        // product is rounded before it; layer norm, softmax, exp, reductions, positions: f32.
        assert_eq!(g.nodes[h].op, Op::Binary(Binary::Add));
        for id in [x, ln, h, s, pos, e, loss, l2, l3] {
            assert_eq!(dtype(id), Dtype::F32, "{:?}", g.nodes[id].op);
        }
        // Without autocast nothing is typed bf16 and the residual fuses.
        optimize(&mut f32_graph, &outputs, Dtype::F32);
        assert!(f32_graph.nodes.iter().all(|n| n.dtype == Dtype::F32));
        assert!(matches!(f32_graph.nodes[h].op, Op::MatMulAdd { .. }));
    }
}
