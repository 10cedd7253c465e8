//! Reverse-mode differentiation at the level of the engine's operations: each forward
//! operation appends its backward as operations of the same set, so the gradient of a matmul
//! is two matmuls and the backend sees nothing new. Nodes that no trainable parameter reaches
//! (frozen teachers, detached values) get no backward at all.

use super::graph::{Binary, Graph, Id, Op, Unary};

/// Appends the backward pass of scalar `loss` to the graph. Returns, for every trainable
/// parameter that the loss reaches, (parameter index, gradient node).
pub fn backward(graph: &mut Graph, loss: Id) -> Vec<(usize, Id)> {
    assert!(graph.shape(loss).is_empty(), "the loss must be a scalar");
    let forward_len = graph.nodes.len();
    let mut grads: Vec<Option<Id>> = vec![None; forward_len];
    let one = graph.scalar(1.0);
    grads[loss] = Some(one);
    let mut out = Vec::new();
    for n in (0..=loss).rev() {
        let Some(g) = grads[n] else { continue };
        if !graph.nodes[n].grad {
            continue;
        }
        let node = graph.nodes[n].clone();
        let x = |i: usize| node.inputs[i];
        let mut contributions: Vec<(Id, Id)> = Vec::new();
        match &node.op {
            Op::Param(p) => out.push((*p, g)),
            Op::Unary(f) => {
                let dx = graph.add(Op::UnaryBackward(*f), vec![x(0), n, g], node.shape.clone());
                contributions.push((x(0), dx));
            }
            Op::Binary(f) => {
                let (a, b) = (x(0), x(1));
                let (sa, sb) = (graph.shape(a).to_vec(), graph.shape(b).to_vec());
                match f {
                    Binary::Add => {
                        contributions.push((a, graph.sum_to(g, sa)));
                        contributions.push((b, graph.sum_to(g, sb)));
                    }
                    Binary::Sub => {
                        contributions.push((a, graph.sum_to(g, sa)));
                        if graph.nodes[b].grad {
                            let neg = graph.unary(Unary::Neg, g);
                            contributions.push((b, graph.sum_to(neg, sb)));
                        }
                    }
                    Binary::Mul => {
                        if graph.nodes[a].grad {
                            let ga = graph.mul(g, b);
                            contributions.push((a, graph.sum_to(ga, sa)));
                        }
                        if graph.nodes[b].grad {
                            let gb = graph.mul(g, a);
                            contributions.push((b, graph.sum_to(gb, sb)));
                        }
                    }
                    Binary::Div => {
                        if graph.nodes[a].grad {
                            let ga = graph.binary(Binary::Div, g, b);
                            contributions.push((a, graph.sum_to(ga, sa)));
                        }
                        if graph.nodes[b].grad {
                            // d(a/b)/db = −(a/b)/b.
                            let gy = graph.mul(g, n);
                            let q = graph.binary(Binary::Div, gy, b);
                            let neg = graph.unary(Unary::Neg, q);
                            contributions.push((b, graph.sum_to(neg, sb)));
                        }
                    }
                    Binary::Max | Binary::Min => {
                        // The first operand takes the gradient where it is chosen (ties too).
                        let pick = if *f == Binary::Max {
                            Binary::Ge
                        } else {
                            Binary::Le
                        };
                        let first = graph.binary(pick, a, b);
                        let ga = graph.mul(g, first);
                        if graph.nodes[a].grad {
                            contributions.push((a, graph.sum_to(ga, sa)));
                        }
                        if graph.nodes[b].grad {
                            let gb = graph.binary(Binary::Sub, g, ga);
                            contributions.push((b, graph.sum_to(gb, sb)));
                        }
                    }
                    // Comparisons carry no gradient (their nodes are never `grad`).
                    _ => {}
                }
            }
            Op::TopK { k, axis } => {
                let s = graph.shape(x(0)).to_vec();
                contributions.push((
                    x(0),
                    graph.add(Op::TopKBackward { k: *k, axis: *axis }, vec![x(0), g], s),
                ));
            }
            Op::Where => {
                let (c, a, b) = (x(0), x(1), x(2));
                let ga = graph.mul(g, c);
                contributions.push((a, ga));
                if graph.nodes[b].grad {
                    contributions.push((b, graph.binary(Binary::Sub, g, ga)));
                }
            }
            Op::MatMul { ta, tb } => {
                matmul_backward(graph, (x(0), x(1)), (*ta, *tb), g, &mut contributions)
            }
            Op::Permute(perm) => {
                let mut inverse = vec![0; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inverse[p] = i;
                }
                contributions.push((x(0), graph.permute(g, inverse)));
            }
            Op::Reshape => {
                let s = graph.shape(x(0)).to_vec();
                contributions.push((x(0), graph.reshape(g, s)));
            }
            Op::Broadcast => {
                let s = graph.shape(x(0)).to_vec();
                contributions.push((x(0), graph.sum_to(g, s)));
            }
            Op::SumTo => {
                let s = graph.shape(x(0)).to_vec();
                contributions.push((x(0), graph.broadcast(g, s)));
            }
            Op::Reduce { kind, axis } => {
                let s = graph.shape(x(0)).to_vec();
                contributions.push((
                    x(0),
                    graph.add(
                        Op::ReduceBackward {
                            kind: *kind,
                            axis: *axis,
                        },
                        vec![x(0), g],
                        s,
                    ),
                ));
            }
            Op::Softmax { axis } => {
                contributions.push((
                    x(0),
                    graph.add(
                        Op::SoftmaxBackward { axis: *axis },
                        vec![n, g],
                        node.shape.clone(),
                    ),
                ));
            }
            Op::LogSoftmax { axis } => {
                contributions.push((
                    x(0),
                    graph.add(
                        Op::LogSoftmaxBackward { axis: *axis },
                        vec![n, g],
                        node.shape.clone(),
                    ),
                ));
            }
            Op::Normalize { axis, eps } => {
                contributions.push((
                    x(0),
                    graph.add(
                        Op::NormalizeBackward {
                            axis: *axis,
                            eps: *eps,
                        },
                        vec![x(0), g],
                        node.shape.clone(),
                    ),
                ));
            }
            Op::LayerNorm { eps } => {
                let (input, gain, bias) = (x(0), x(1), x(2));
                if graph.nodes[input].grad {
                    contributions.push((
                        input,
                        graph.add(
                            Op::LayerNormBackward { eps: *eps },
                            vec![input, gain, g],
                            node.shape.clone(),
                        ),
                    ));
                }
                if graph.nodes[gain].grad || graph.nodes[bias].grad {
                    let width = *node.shape.last().unwrap();
                    let both = graph.add(
                        Op::LayerNormParamGrads { eps: *eps },
                        vec![input, g],
                        vec![2, width],
                    );
                    for (row, target) in [(0, gain), (1, bias)] {
                        if graph.nodes[target].grad {
                            let s = graph.slice(both, 0, row, 1);
                            contributions.push((target, graph.reshape(s, vec![width])));
                        }
                    }
                }
            }
            Op::Embedding => {
                let s = graph.shape(x(0)).to_vec();
                contributions.push((x(0), graph.add(Op::EmbeddingBackward, vec![x(1), g], s)));
            }
            Op::GatherRows => {
                let s = graph.shape(x(0)).to_vec();
                contributions.push((x(0), graph.add(Op::ScatterRows, vec![x(1), g], s)));
            }
            Op::Concat { axis } => {
                let first = graph.shape(x(0))[*axis];
                let second = graph.shape(x(1))[*axis];
                contributions.push((x(0), graph.slice(g, *axis, 0, first)));
                contributions.push((x(1), graph.slice(g, *axis, first, second)));
            }
            Op::Slice { axis, start } => {
                let s = graph.shape(x(0)).to_vec();
                contributions.push((
                    x(0),
                    graph.add(
                        Op::SliceBackward {
                            axis: *axis,
                            start: *start,
                        },
                        vec![g],
                        s,
                    ),
                ));
            }
            Op::Loss(kind) => {
                for (which, &input) in node.inputs.iter().enumerate() {
                    if graph.nodes[input].grad {
                        let mut inputs = node.inputs.clone();
                        inputs.push(g);
                        let s = graph.shape(input).to_vec();
                        contributions.push((
                            input,
                            graph.add(Op::LossBackward { loss: *kind, which }, inputs, s),
                        ));
                    }
                }
            }
            Op::Attention { scale } => {
                // One backward operation recomputes the probabilities and gives dq, dk and dv
                // packed; the bias (a mask) gets no gradient.
                let (q, k, v) = (x(0), x(1), x(2));
                if node.inputs.len() == 4 && graph.nodes[x(3)].grad {
                    panic!("an attention bias is a mask: it takes no gradient");
                }
                let shapes = [q, k, v].map(|i| graph.shape(i).to_vec());
                let lens = shapes.clone().map(|s| s.iter().product::<usize>());
                let mut inputs = node.inputs.clone();
                inputs.push(g);
                let packed = graph.add(
                    Op::AttentionBackward { scale: *scale },
                    inputs,
                    vec![lens.iter().sum()],
                );
                let mut start = 0;
                for ((input, shape), len) in [q, k, v].into_iter().zip(shapes).zip(lens) {
                    if graph.nodes[input].grad {
                        let flat = graph.slice(packed, 0, start, len);
                        contributions.push((input, graph.reshape(flat, shape)));
                    }
                    start += len;
                }
            }
            Op::Detach
            | Op::Input(_)
            | Op::Fill(_)
            | Op::Constant(_)
            | Op::Eye
            | Op::CausalMask
            | Op::Arg { .. } => {}
            other => {
                panic!("{other:?} is a backward or fused operation, made after differentiation")
            }
        }
        for (target, dx) in contributions {
            if !graph.nodes[target].grad {
                continue;
            }
            grads[target] = Some(match grads[target] {
                Some(previous) => graph.add2(previous, dx),
                None => dx,
            });
        }
    }
    out.sort();
    out
}

/// C = op(A)·op(B). An operand shared across the other's batch (rank 2 against rank ≥ 3)
/// gets its gradient as one 2-D product over the flattened batch rather than a batched product
/// and a sum.
fn matmul_backward(
    graph: &mut Graph,
    (a, b): (Id, Id),
    (ta, tb): (bool, bool),
    g: Id,
    out: &mut Vec<(Id, Id)>,
) {
    let (ra, rb) = (graph.shape(a).len(), graph.shape(b).len());
    if graph.nodes[a].grad {
        let da = if ra == 2 && rb > 2 {
            // A shared: dA = Σ_batch g·op(B)ᵀ (or its transpose); flatten when B is plain rows.
            let batched = if ta {
                graph.matmul_t(b, g, tb, true)
            } else {
                graph.matmul_t(g, b, false, !tb)
            };
            let s = graph.shape(a).to_vec();
            graph.sum_to(batched, s)
        } else if ta {
            graph.matmul_t(b, g, tb, true)
        } else {
            graph.matmul_t(g, b, false, !tb)
        };
        out.push((a, da));
    }
    if graph.nodes[b].grad {
        let db = if rb == 2 && ra > 2 && !ta {
            // B shared (x·Wᵀ with x [.., t, k]): flatten the batch into rows.
            let sa = graph.shape(a).to_vec();
            let sg = graph.shape(g).to_vec();
            let rows: usize = sa[..sa.len() - 1].iter().product();
            let a2 = graph.reshape(a, vec![rows, sa[sa.len() - 1]]);
            let g2 = graph.reshape(g, vec![rows, sg[sg.len() - 1]]);
            if tb {
                graph.matmul_t(g2, a2, true, false)
            } else {
                graph.matmul_t(a2, g2, true, false)
            }
        } else if tb {
            graph.matmul_t(g, a, true, ta)
        } else {
            graph.matmul_t(a, g, !ta, false)
        };
        let db = if graph.shape(db).len() > rb {
            let s = graph.shape(b).to_vec();
            graph.sum_to(db, s)
        } else {
            db
        };
        out.push((b, db));
    }
}
