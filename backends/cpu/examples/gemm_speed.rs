//! Throughput of kdc-cpu's matmul on the shapes of a CLIP-KD step: attention at 224 px, a text
//! tower of width 512 (64×77 tokens), and weight gradients.
//! `cargo run --release -p kdc-cpu --example gemm_speed`
use std::time::Instant;

/// One measured case: a batch of `m×k·k×n` products (operands batched when `batch > 1`).
struct Case {
    name: &'static str,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    at: bool,
    bt: bool,
}

/// Prints milliseconds and GFLOP/s of `product` (a warm-up call, then the mean of five).
fn report(label: &str, case: &Case, mut product: impl FnMut()) {
    product();
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        product();
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    let Case { batch, m, k, n, .. } = *case;
    let flops = 2.0 * (batch * m * k * n) as f64;
    println!(
        "{label:30} {batch}×{m}x{k}x{n}: {:.2} ms, {:.1} GFLOP/s",
        s * 1e3,
        flops / s / 1e9
    );
}

fn main() {
    let case = |name, batch, m, k, n, at, bt| Case {
        name,
        batch,
        m,
        k,
        n,
        at,
        bt,
    };
    let cases = [
        // Attention at 224 px: 64 images × 6 heads.
        case("scores q·kᵀ", 384, 197, 64, 197, false, true),
        case("p·v", 384, 197, 197, 64, false, false),
        case("dv = pᵀ·dy", 384, 197, 197, 64, true, false),
        // Text tower, width 512.
        case("fc1 fwd  x·Wᵀ", 1, 4928, 512, 2048, false, true),
        case("fc2 fwd  x·Wᵀ", 1, 4928, 2048, 512, false, true),
        case("fc1 dX   dy·W", 1, 4928, 2048, 512, false, false),
        case("fc1 dW   dyᵀ·x", 1, 2048, 4928, 512, true, false),
        case("qkv fwd", 1, 4928, 512, 512, false, true),
        // Weight gradients with a long reduction.
        case("vit dW  dyᵀ·x", 1, 192, 12608, 192, true, false),
        case("txt dW  dyᵀ·x", 1, 384, 4928, 384, true, false),
    ];
    for c in &cases {
        let Case {
            batch,
            m,
            k,
            n,
            at,
            bt,
            ..
        } = *c;
        let batched = batch > 1;
        let a: Vec<f32> = (0..batch * m * k)
            .map(|i| ((i % 97) as f32) * 0.01)
            .collect();
        let b: Vec<f32> = (0..batch * k * n)
            .map(|i| ((i % 89) as f32) * 0.01)
            .collect();
        let mut o = vec![0f32; batch * m * n];
        report(c.name, c, || {
            kdc_cpu::matmul(&a, &b, &mut o, batch, m, k, n, at, bt, batched, batched)
        });
        report(&format!("{} (accumulating)", c.name), c, || {
            kdc_cpu::matmul_acc(&a, &b, &mut o, batch, m, k, n, at, bt, batched, batched)
        });
    }
}
