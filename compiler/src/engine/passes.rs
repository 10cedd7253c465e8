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
//!   product twice. Only when the product has no other reader.

use super::graph::{numel, Binary, Graph, Id, Op};

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

/// Runs every pass; returns their reports in order.
pub fn optimize(g: &mut Graph, outputs: &[Id]) -> Vec<PassReport> {
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
    let mut seen: HashMap<(Op, Vec<Id>, Vec<usize>), Id> = HashMap::new();
    let mut rewrites = 0;
    for i in 0..g.nodes.len() {
        let inputs: Vec<Id> = g.nodes[i].inputs.iter().map(|&x| canonical[x]).collect();
        g.nodes[i].inputs = inputs;
        let node = &g.nodes[i];
        if !live[i] || node.op.is_source() {
            continue;
        }
        let key = (node.op.clone(), node.inputs.clone(), node.shape.clone());
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
        let reports = optimize(&mut g, &[loss]);
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
        let reports = optimize(&mut g, &[loss]);
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
        let reports = optimize(&mut g, &[loss]);
        assert_eq!(reports[1].rewrites, 2, "{reports:?}");
        assert_eq!(g.nodes[s].inputs, vec![ea, ea]);
        // The duplicates are no longer read.
        let live = g.live(&[loss]);
        assert!(!live[b] && !live[eb]);
    }
}
