//! The fused kernels give bit-identical results on one thread and on several.

use super::Rng;
use crate::*;

fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = Rng::new(90);
    let (rows, d) = (700, 150);
    let x: Vec<f32> = rng
        .vec(rows * d, -2.0, 2.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let dy: Vec<f32> = rng
        .vec(rows * d, -1.0, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let gain = vec![1.25f32; d];
    let run = || {
        let mut outs: Vec<Vec<f32>> = Vec::new();
        let (mut y, mut mean, mut rstd) =
            (vec![0f32; rows * d], vec![0f32; rows], vec![0f32; rows]);
        layer_norm(
            &x, &gain, &gain, &mut y, &mut mean, &mut rstd, rows, d, 1e-5,
        );
        let (mut dx, mut dg, mut db) = (vec![0f32; rows * d], vec![0f32; d], vec![0f32; d]);
        layer_norm_backward(
            &x, &gain, &mean, &rstd, &dy, &mut dx, &mut dg, &mut db, rows, d,
        );
        outs.extend([y, dx, dg, db]);
        let mut s = vec![0f32; rows * d];
        softmax(&x, &mut s, rows, d, 1);
        outs.push(s);
        let mut s = vec![0f32; rows * d];
        softmax(&x, &mut s, 7, 100, 150);
        outs.push(s);
        let mut c = vec![0f32; d];
        sum_to(&x, &[rows, d], &mut c, &[d]);
        outs.push(c);
        let mut g = vec![0f32; rows * d];
        unary_backward(UnaryOp::Gelu, &x, &x, &dy, &mut g);
        outs.push(g);
        outs.push(vec![mse(&x, &dy), cross_entropy_diagonal(&x, d, rows)]);
        let mut p = x.clone();
        let (mut m, mut v) = (vec![0f32; p.len()], vec![0f32; p.len()]);
        adamw_step(&mut p, &dy, &mut m, &mut v, 1e-3, 0.9, 0.999, 1e-8, 0.1, 1);
        let mut gr = dy.clone();
        let norm = clip_grad_norm(&mut [&mut gr], 1.0);
        outs.extend([p, gr, vec![norm as f32]]);
        outs
    };
    let one = on_threads(1, run);
    let two = on_threads(2, run);
    let three = on_threads(3, run);
    for (i, ((a, b), c)) in one.iter().zip(&two).zip(&three).enumerate() {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "output {i}: 1 vs 2 threads"
        );
        assert!(
            a.iter().zip(c).all(|(x, y)| x.to_bits() == y.to_bits()),
            "output {i}: 1 vs 3 threads"
        );
    }
}
