//! Throughput of kdc-cpu's matmul on the shapes of a CLIP text tower (width 512, 64×77 tokens).
//! `cargo run --release -p kdc-cpu --example gemm_speed`
use std::time::Instant;
fn main() {
    // Attention at 224 px: 64 images × 6 heads of [197, 64]·[64, 197] and [197, 197]·[197, 64].
    for &(name, batch, m, k, n, at, bt) in &[
        (
            "scores q·kᵀ",
            384usize,
            197usize,
            64usize,
            197usize,
            false,
            true,
        ),
        ("p·v", 384, 197, 197, 64, false, false),
        ("dv = pᵀ·dy", 384, 197, 197, 64, true, false),
    ] {
        let a: Vec<f32> = (0..batch * m * k)
            .map(|i| ((i % 97) as f32) * 0.01)
            .collect();
        let b: Vec<f32> = (0..batch * k * n)
            .map(|i| ((i % 89) as f32) * 0.01)
            .collect();
        let mut o = vec![0f32; batch * m * n];
        kdc_cpu::matmul(&a, &b, &mut o, batch, m, k, n, at, bt, true, true);
        let reps = 5;
        let t = Instant::now();
        for _ in 0..reps {
            kdc_cpu::matmul(&a, &b, &mut o, batch, m, k, n, at, bt, true, true);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        let flops = 2.0 * (batch * m * k * n) as f64;
        println!(
            "{name:16} {batch}×{m}x{k}x{n}: {:.2} ms, {:.1} GFLOP/s",
            s * 1e3,
            flops / s / 1e9
        );
    }
    let cases: &[(&str, usize, usize, usize, bool, bool)] = &[
        ("fc1 fwd  x·Wᵀ", 4928, 512, 2048, false, true),
        ("fc2 fwd  x·Wᵀ", 4928, 2048, 512, false, true),
        ("fc1 dX   dy·W", 4928, 2048, 512, false, false),
        ("fc1 dW   dyᵀ·x", 2048, 4928, 512, true, false),
        ("qkv fwd", 4928, 512, 512, false, true),
        ("vit dW  dyᵀ·x", 192, 12608, 192, true, false),
        ("txt dW  dyᵀ·x", 384, 4928, 384, true, false),
    ];
    for &(name, m, k, n, at, bt) in cases {
        let a: Vec<f32> = (0..m * k).map(|i| ((i % 97) as f32) * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i % 89) as f32) * 0.01).collect();
        let mut o = vec![0f32; m * n];
        kdc_cpu::matmul(&a, &b, &mut o, 1, m, k, n, at, bt, false, false);
        let reps = 5;
        let t = Instant::now();
        for _ in 0..reps {
            kdc_cpu::matmul(&a, &b, &mut o, 1, m, k, n, at, bt, false, false);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{name:16} {m}x{k}x{n}: {:.2} ms, {:.1} GFLOP/s",
            s * 1e3,
            2.0 * (m * k * n) as f64 / s / 1e9
        );
        let t = Instant::now();
        for _ in 0..reps {
            kdc_cpu::matmul_acc(&a, &b, &mut o, 1, m, k, n, at, bt, false, false);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{:16} accumulating: {:.2} ms, {:.1} GFLOP/s",
            "",
            s * 1e3,
            2.0 * (m * k * n) as f64 / s / 1e9
        );
    }
}
