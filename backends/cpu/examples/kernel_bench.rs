//! Micro benchmark of the fused (non-matmul) kernels in f32 at CLIP-like sizes
//! (batch 32, 77 tokens, width 512, 8 heads), printing time and effective memory bandwidth.
//!
//! `cargo run --release --example kernel_bench`

use std::hint::black_box;
use std::time::Instant;

use kdc_cpu as k;

fn time(name: &str, bytes: usize, mut f: impl FnMut()) {
    for _ in 0..3 {
        f();
    }
    let mut best = f64::INFINITY;
    let start = Instant::now();
    let mut iters = 0;
    while start.elapsed().as_secs_f64() < 0.5 || iters < 5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        iters += 1;
    }
    println!(
        "{name:40} {:9.3} ms best  {:6.1} GB/s",
        best * 1e3,
        bytes as f64 / best / 1e9
    );
}

fn data(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
        .collect()
}

fn main() {
    let (b, t, d, h) = (32, 77, 512, 8);
    let rows = b * t;
    let f = std::mem::size_of::<f32>();
    let x = data(rows * d);
    let dy = data(rows * d);
    let mut out = vec![0f32; rows * d];
    let mut dx = vec![0f32; rows * d];
    let gain = vec![1.1f32; d];
    let bias = vec![0.1f32; d];
    let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
    time("layer_norm [2464, 512]", 2 * x.len() * f, || {
        k::layer_norm(
            &x, &gain, &bias, &mut out, &mut mean, &mut rstd, rows, d, 1e-5,
        );
    });
    let (mut dg, mut db) = (vec![0f32; d], vec![0f32; d]);
    time("layer_norm_backward [2464, 512]", 3 * x.len() * f, || {
        k::layer_norm_backward(
            &x, &gain, &mean, &rstd, &dy, &mut dx, &mut dg, &mut db, rows, d,
        );
    });

    let hidden = data(rows * 4 * d);
    let mut hout = vec![0f32; hidden.len()];
    let mut hdx = vec![0f32; hidden.len()];
    for op in [k::UnaryOp::Gelu, k::UnaryOp::QuickGelu] {
        time(
            &format!("{op:?} [2464, 2048]"),
            2 * hidden.len() * f,
            || k::unary(op, &hidden, &mut hout),
        );
        let y = hout.clone();
        time(
            &format!("{op:?} backward [2464, 2048]"),
            4 * hidden.len() * f,
            || k::unary_backward(op, &hidden, &y, &hidden, &mut hdx),
        );
    }

    let scores = data(b * h * t * t);
    let mut probs = vec![0f32; scores.len()];
    let mut dscores = vec![0f32; scores.len()];
    time("softmax [32·8·77, 77]", 2 * scores.len() * f, || {
        k::softmax(&scores, &mut probs, b * h * t, t, 1)
    });
    time("exp [32·8·77·77]", 2 * scores.len() * f, || {
        k::unary(k::UnaryOp::Exp, &scores, &mut probs)
    });
    time("sum_axis [32·8·77, 77]", scores.len() * f, || {
        k::sum_axis(&scores, &mut dscores[..b * h * t], b * h * t, t, 1)
    });
    time(
        "softmax_backward [32·8·77, 77]",
        3 * scores.len() * f,
        || k::softmax_backward(&probs, &scores, &mut dscores, b * h * t, t, 1),
    );
    time("softmax over axis 0 [256, 256]", 2 * 256 * 256 * f, || {
        k::softmax(&scores[..256 * 256], &mut probs[..256 * 256], 1, 256, 256)
    });
    time("l2_normalize [2464, 512]", 2 * x.len() * f, || {
        k::l2_normalize(&x, &mut out, rows, d, 1, 1e-12)
    });

    time("add bias [2464, 512] + [512]", 2 * x.len() * f, || {
        k::add(&x, &[rows, d], &bias, &[d], &mut out, &[rows, d])
    });
    time("add [2464, 512] + [2464, 512]", 3 * x.len() * f, || {
        k::add(&x, &[rows, d], &dy, &[rows, d], &mut out, &[rows, d])
    });
    time("sum_to [2464, 512] -> [512]", x.len() * f, || {
        k::sum_to(&x, &[rows, d], &mut db, &[d])
    });

    time(
        "permute [32,77,8,64] -> [32,8,77,64]",
        2 * x.len() * f,
        || k::permute(&x, &[b, t, h, d / h], &[0, 2, 1, 3], &mut out),
    );
    time(
        "permute [2464, 512] -> [512, 2464]",
        2 * x.len() * f,
        || k::permute(&x, &[rows, d], &[1, 0], &mut out),
    );

    let n = 10_000_000;
    let mut p = data(n);
    let g = data(n);
    let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
    let mut step = 0;
    time("adamw_step 10M", 7 * n * f, || {
        step += 1;
        k::adamw_step(
            &mut p, &g, &mut m, &mut v, 1e-4, 0.9, 0.999, 1e-8, 0.1, step,
        );
    });
    black_box((&out, &dx, &p));
    time("mse [2464, 512]", 2 * x.len() * f, || {
        black_box(k::mse(&x, &dy));
    });
    let logits = data(256 * 256);
    time(
        "cross_entropy_diagonal [256, 256]",
        logits.len() * f,
        || {
            black_box(k::cross_entropy_diagonal(&logits, 256, 256));
        },
    );
}
