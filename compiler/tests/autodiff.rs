//! Every operator's backward, as produced by kdc's reverse-mode pass and run by the kernels,
//! against central finite differences of the forward pass. The kernels compute in f32, so the
//! differences use a step of 1e-2 and a relative tolerance of 2e-2 on a random projection of
//! the output; the CPU backend's own f64 kernels are checked more tightly in its crate.

use kdc::engine::autodiff::backward;
use kdc::engine::exec::Executable;
use kdc::engine::graph::{Binary, Graph, Id, LossKind, Op, Reduce, Unary, F32};
use kdc::engine::rng::Rng;

/// Builds `f` on parameters of the given shapes, reduces its output with a fixed random
/// weighting, and compares the gradient of every parameter with finite differences.
fn check(name: &str, shapes: &[Vec<usize>], positive: bool, f: impl Fn(&mut Graph, &[Id]) -> Id) {
    let mut rng = Rng::new(name.len() as u64 * 7919);
    let values: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| {
            (0..s.iter().product::<usize>())
                .map(|_| {
                    if positive {
                        (0.5 + rng.uniform()) as f32
                    } else {
                        rng.normal() as f32
                    }
                })
                .collect()
        })
        .collect();
    let build = |g: &mut Graph| -> (Vec<Id>, Id) {
        let params: Vec<Id> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| g.param(format!("x{i}"), s.clone(), true))
            .collect();
        let y = f(g, &params);
        let shape = g.shape(y).to_vec();
        let mut r = Rng::new(99);
        let weights = g.param("r", shape.clone(), false);
        let _ = &mut r;
        let weighted = g.mul(y, weights);
        let loss = g.reduce(Reduce::Sum, weighted, None);
        (params, loss)
    };
    let mut g = Graph::default();
    let (_, loss) = build(&mut g);
    let grads = backward(&mut g, loss);
    let r_index = g.params.len() - 1;
    let r_len: usize = g.params[r_index].shape.iter().product();
    let mut r_rng = Rng::new(12345);
    let r_values: Vec<f32> = (0..r_len).map(|_| r_rng.normal() as f32).collect();
    let mut outputs = vec![loss];
    outputs.extend(grads.iter().map(|g| g.1));
    let mut exec = Executable::from_graph(g, &outputs);
    let evaluate = |exec: &mut Executable, values: &[Vec<f32>]| -> Vec<Vec<f32>> {
        for (i, v) in values.iter().enumerate() {
            exec.set_param(i, v);
        }
        exec.set_param(r_index, &r_values);
        exec.run()
    };
    let analytic = evaluate(&mut exec, &values);
    let eps = 1e-2f32;
    for (k, &(p, _)) in grads.iter().enumerate() {
        let grad = &analytic[1 + k];
        let mut worst = 0f32;
        let scale = grad.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for j in 0..values[p].len() {
            let mut plus = values.clone();
            plus[p][j] += eps;
            let mut minus = values.clone();
            minus[p][j] -= eps;
            let numeric = (evaluate(&mut exec, &plus)[0][0] - evaluate(&mut exec, &minus)[0][0])
                / (2.0 * eps);
            worst = worst.max((numeric - grad[j]).abs());
        }
        assert!(
            worst <= 2e-2 * scale + 1e-3,
            "{name}: gradient of input {p} is off by {worst} (largest component {scale})"
        );
    }
    let differentiable = shapes.len();
    assert!(grads.len() <= differentiable);
}

#[test]
fn unary_operators() {
    for (f, positive) in [
        (Unary::Neg, false),
        (Unary::Exp, false),
        (Unary::Log, true),
        (Unary::Sqrt, true),
        (Unary::Abs, false),
        (Unary::Gelu, false),
        (Unary::QuickGelu, false),
        (Unary::Relu, false),
        (Unary::Sigmoid, false),
        (Unary::Tanh, false),
    ] {
        check(&format!("{f:?}"), &[vec![3, 5]], positive, |g, x| {
            g.unary(f, x[0])
        });
    }
}

#[test]
fn binary_operators_with_broadcasting() {
    for f in [Binary::Add, Binary::Sub, Binary::Mul, Binary::Div] {
        check(
            &format!("{f:?} same"),
            &[vec![3, 4], vec![3, 4]],
            true,
            |g, x| g.binary(f, x[0], x[1]),
        );
        check(
            &format!("{f:?} row"),
            &[vec![2, 3, 4], vec![4]],
            true,
            |g, x| g.binary(f, x[0], x[1]),
        );
        check(
            &format!("{f:?} column"),
            &[vec![3, 1], vec![3, 4]],
            true,
            |g, x| g.binary(f, x[0], x[1]),
        );
        check(
            &format!("{f:?} scalar"),
            &[vec![3, 4], vec![]],
            true,
            |g, x| g.binary(f, x[0], x[1]),
        );
    }
}

#[test]
fn selection_operators() {
    for f in [Binary::Max, Binary::Min] {
        check(
            &format!("{f:?} same"),
            &[vec![3, 4], vec![3, 4]],
            false,
            |g, x| g.binary(f, x[0], x[1]),
        );
        check(
            &format!("{f:?} row"),
            &[vec![2, 3, 4], vec![4]],
            false,
            |g, x| g.binary(f, x[0], x[1]),
        );
        check(
            &format!("{f:?} scalar"),
            &[vec![3, 4], vec![]],
            false,
            |g, x| g.binary(f, x[0], x[1]),
        );
    }
    // where(x0 > x1, x0, 2·x1), with the condition broadcast against both branches; the
    // comparison itself has no gradient.
    check("where", &[vec![3, 4], vec![4]], false, |g, x| {
        let c = g.binary(Binary::Gt, x[0], x[1]);
        let two = g.scalar(2.0);
        let b = g.mul(x[1], two);
        g.select(c, x[0], b)
    });
    // The branch not taken may be non-finite (√ of a negative) without reaching the gradient.
    check(
        "where guards the other branch",
        &[vec![3, 4]],
        false,
        |g, x| {
            let zero = g.scalar(0.0);
            let c = g.binary(Binary::Gt, x[0], zero);
            let one = g.scalar(1.0);
            let safe = g.select(c, x[0], one);
            let root = g.unary(Unary::Sqrt, safe);
            g.select(c, root, zero)
        },
    );
    // The extreme of each lane is set apart by ±5 (an identity pattern), so that the finite
    // differences' steps never change which entry it is.
    for kind in [Reduce::Max, Reduce::Min] {
        let apart = |g: &mut Graph, x: Id, shape: Vec<usize>| {
            let eye = g.add(Op::Eye, vec![], shape);
            let five = g.scalar(if kind == Reduce::Max { 5.0 } else { -5.0 });
            let offset = g.mul(eye, five);
            g.add2(x, offset)
        };
        check(
            &format!("{kind:?} axis"),
            &[vec![3, 4, 2]],
            false,
            |g, x| {
                let y = apart(g, x[0], vec![4, 2]);
                g.reduce(kind, y, Some(1))
            },
        );
        check(&format!("{kind:?} all"), &[vec![3, 4]], false, |g, x| {
            let y = apart(g, x[0], vec![3, 4]);
            g.reduce(kind, y, None)
        });
    }
    // Top-k: the largest entry of each lane set apart (k = 1), and a full sort (k = n), whose
    // order the small random values keep under the finite differences' steps.
    check("topk 1", &[vec![3, 4, 2]], false, |g, x| {
        let eye = g.add(Op::Eye, vec![], vec![4, 2]);
        let five = g.scalar(5.0);
        let offset = g.mul(eye, five);
        let y = g.add2(x[0], offset);
        g.add(Op::TopK { k: 1, axis: 1 }, vec![y], vec![3, 1, 2])
    });
    check("topk all", &[vec![3, 4]], false, |g, x| {
        g.add(Op::TopK { k: 3, axis: 0 }, vec![x[0]], vec![3, 4])
    });
    check("normalize eps", &[vec![3, 5]], false, |g, x| {
        g.normalize_eps(x[0], 1, 1e-3)
    });
}

#[test]
fn matrix_products() {
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = if ta { vec![4, 3] } else { vec![3, 4] };
        let b = if tb { vec![5, 4] } else { vec![4, 5] };
        check(
            &format!("matmul {ta} {tb}"),
            &[a.clone(), b.clone()],
            false,
            |g, x| g.matmul_t(x[0], x[1], ta, tb),
        );
        let mut ba = vec![2];
        ba.extend(&a);
        let mut bb = vec![2];
        bb.extend(&b);
        check(
            &format!("batched matmul {ta} {tb}"),
            &[ba.clone(), bb],
            false,
            |g, x| g.matmul_t(x[0], x[1], ta, tb),
        );
        check(
            &format!("shared right {ta} {tb}"),
            &[ba, b.clone()],
            false,
            |g, x| g.matmul_t(x[0], x[1], ta, tb),
        );
    }
    check(
        "linear layer",
        &[vec![2, 3, 4], vec![5, 4], vec![5]],
        false,
        |g, x| kdc::engine::clip::linear(g, x[0], x[1], Some(x[2])),
    );
}

#[test]
fn movement() {
    check("permute", &[vec![2, 3, 4]], false, |g, x| {
        g.permute(x[0], vec![2, 0, 1])
    });
    check("reshape", &[vec![2, 6]], false, |g, x| {
        g.reshape(x[0], vec![3, 4])
    });
    check("broadcast", &[vec![1, 4]], false, |g, x| {
        g.broadcast(x[0], vec![3, 4])
    });
    check("sum_to", &[vec![3, 4]], false, |g, x| {
        g.sum_to(x[0], vec![1, 4])
    });
    check("concat", &[vec![2, 3], vec![2, 2]], false, |g, x| {
        g.concat(x[0], x[1], 1)
    });
    check("slice", &[vec![3, 5]], false, |g, x| g.slice(x[0], 1, 1, 3));
    check("gather rows", &[vec![2, 5, 3]], false, |g, x| {
        let index = g.param("index", vec![2, 2], false);
        let _ = index;
        let idx = g.add(Op::Fill(F32(1.0)), vec![], vec![2, 2]);
        g.gather_rows(x[0], idx)
    });
}

#[test]
fn reductions_and_normalisations() {
    for kind in [Reduce::Sum, Reduce::Mean, Reduce::Var] {
        check(
            &format!("{kind:?} axis"),
            &[vec![3, 4, 2]],
            false,
            |g, x| g.reduce(kind, x[0], Some(1)),
        );
        check(&format!("{kind:?} all"), &[vec![3, 4]], false, |g, x| {
            g.reduce(kind, x[0], None)
        });
    }
    check("softmax", &[vec![3, 5]], false, |g, x| g.softmax(x[0], 1));
    check("softmax axis 0", &[vec![3, 5]], false, |g, x| {
        g.softmax(x[0], 0)
    });
    check("log_softmax", &[vec![3, 5]], false, |g, x| {
        g.log_softmax(x[0], 1)
    });
    check("normalize", &[vec![3, 5]], false, |g, x| {
        g.normalize(x[0], 1)
    });
    check(
        "layer norm",
        &[vec![3, 6], vec![6], vec![6]],
        false,
        |g, x| g.layer_norm(x[0], x[1], x[2], 1e-5),
    );
}

#[test]
fn embedding_lookup() {
    check("embedding", &[vec![6, 3]], false, |g, x| {
        let ids = g.add(Op::Fill(F32(2.0)), vec![], vec![2, 3]);
        g.embedding(x[0], ids)
    });
}

#[test]
fn losses() {
    check("mse", &[vec![3, 4], vec![3, 4]], false, |g, x| {
        g.loss(LossKind::Mse, vec![x[0], x[1]])
    });
    check("l1", &[vec![3, 4], vec![3, 4]], false, |g, x| {
        g.loss(LossKind::L1, vec![x[0], x[1]])
    });
    check("smooth_l1", &[vec![3, 4], vec![3, 4]], false, |g, x| {
        g.loss(LossKind::SmoothL1 { beta: F32(0.7) }, vec![x[0], x[1]])
    });
    check("kl", &[vec![3, 4], vec![3, 4]], false, |g, x| {
        let p = g.log_softmax(x[0], 1);
        let q = g.log_softmax(x[1], 1);
        g.loss(LossKind::Kl, vec![p, q])
    });
    check("cross_entropy diagonal", &[vec![4, 4]], false, |g, x| {
        g.loss(LossKind::CrossEntropyDiagonal, vec![x[0]])
    });
    check(
        "cross_entropy soft",
        &[vec![3, 4], vec![3, 4]],
        false,
        |g, x| {
            let t = g.softmax(x[1], 1);
            g.loss(LossKind::CrossEntropySoft, vec![x[0], t])
        },
    );
}
