use super::{assert_close, Rng};
use crate::{adamw_step, clip_grad_norm, grad_norm};

/// Two AdamW steps on one parameter, worked by hand from PyTorch's algorithm with lr = 0.1,
/// β = (0.9, 0.999), eps = 1e-8, weight_decay = 0.01, p₀ = 1, g₁ = 0.5, g₂ = −0.25:
///
/// step 1: p ← 1·(1 − 0.001) = 0.999; m = 0.1·0.5 = 0.05; v = 0.001·0.25 = 0.00025;
///   bias corrections 1 − 0.9 = 0.1 and 1 − 0.999 = 0.001; step size 0.1/0.1 = 1;
///   denom = √0.00025/√0.001 + 1e-8 = 0.5 + 1e-8;
///   p₁ = 0.999 − 0.05/0.50000001 = 0.999 − 0.099999998 = 0.899000002.
/// step 2: p ← 0.899000002·0.999 = 0.898101001998; m = 0.9·0.05 + 0.1·(−0.25) = 0.02;
///   v = 0.999·0.00025 + 0.001·0.0625 = 0.00031225; corrections 1 − 0.81 = 0.19 and
///   1 − 0.998001 = 0.001999; denom = √(0.00031225/0.001999) + 1e-8 = 0.395225390701667;
///   p₂ = 0.898101001998 − (0.1/0.19)·0.02/0.395225390701667 = 0.8714672987058463.
#[test]
fn adamw_two_steps_by_hand() {
    let (lr, b1, b2, eps, wd) = (0.1, 0.9, 0.999, 1e-8, 0.01);
    let mut p = [1.0f64];
    let (mut m, mut v) = ([0.0f64], [0.0f64]);
    adamw_step(&mut p, &[0.5], &mut m, &mut v, lr, b1, b2, eps, wd, 1);
    assert!((p[0] - 0.899000002).abs() < 1e-15, "p1 = {}", p[0]);
    assert!((m[0] - 0.05).abs() < 1e-16 && (v[0] - 0.00025).abs() < 1e-18);
    adamw_step(&mut p, &[-0.25], &mut m, &mut v, lr, b1, b2, eps, wd, 2);
    assert!((m[0] - 0.02).abs() < 1e-16 && (v[0] - 0.00031225).abs() < 1e-18);
    assert!((p[0] - 0.8714672987058463).abs() < 1e-14, "p2 = {}", p[0]);
}

/// Many elements (parallel path), f32 and f64, against a scalar f64 transcription.
#[test]
fn adamw_vectors_match_reference() {
    let mut rng = Rng::new(70);
    let n = 50_000;
    let (lr, b1, b2, eps, wd) = (3e-4, 0.9, 0.98, 1e-6, 0.2);
    let mut p = rng.vec(n, -1.0, 1.0);
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let mut p32: Vec<f32> = p.iter().map(|&x| x as f32).collect();
    let (mut m32, mut v32) = (vec![0f32; n], vec![0f32; n]);
    let (mut rp, mut rm, mut rv) = (p.clone(), m.clone(), v.clone());
    for step in 1..=3u64 {
        let g = rng.vec(n, -1.0, 1.0);
        let g32: Vec<f32> = g.iter().map(|&x| x as f32).collect();
        adamw_step(&mut p, &g, &mut m, &mut v, lr, b1, b2, eps, wd, step);
        adamw_step(
            &mut p32, &g32, &mut m32, &mut v32, lr, b1, b2, eps, wd, step,
        );
        let t = step as i32;
        for i in 0..n {
            rp[i] *= 1.0 - lr * wd;
            rm[i] = b1 * rm[i] + (1.0 - b1) * g[i];
            rv[i] = b2 * rv[i] + (1.0 - b2) * g[i] * g[i];
            let mhat = rm[i] / (1.0 - b1.powi(t));
            let vhat = rv[i] / (1.0 - b2.powi(t));
            // Algebraically equal to torch's lr/bc1 · m / (√v/√bc2 + eps).
            rp[i] -= lr * mhat / (vhat.sqrt() + eps);
        }
    }
    assert_close(&p, &rp, 1e-12, "adamw f64");
    super::assert_close_f32(&p32, &rp, 1e-6, "adamw f32");
}

#[test]
fn clip_grad_norm_like_torch() {
    let mut a = vec![3.0f64, 0.0];
    let mut b = vec![4.0f64];
    assert_eq!(grad_norm(&[&a, &b]), 5.0);
    // Above max_norm: scaled by max_norm / (total + 1e-6).
    let total = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
    assert_eq!(total, 5.0);
    let c = 1.0 / (5.0 + 1e-6);
    assert_close(&a, &[3.0 * c, 0.0], 1e-15, "clipped a");
    assert_close(&b, &[4.0 * c], 1e-15, "clipped b");
    // Below max_norm: untouched.
    let mut a = vec![0.3f32, 0.4];
    let total = clip_grad_norm(&mut [&mut a], 1.0);
    assert!((total - 0.5).abs() < 1e-7);
    assert_eq!(a, [0.3f32, 0.4]);
    // Large gradients go through the parallel norm.
    let mut rng = Rng::new(71);
    let g = rng.vec(100_000, -1.0, 1.0);
    let expect = g.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut g2 = g.clone();
    let total = clip_grad_norm(&mut [&mut g2], 0.5 * expect);
    assert!((total - expect).abs() < 1e-9 * expect);
    let c = 0.5 * expect / (expect + 1e-6);
    assert_close(
        &g2,
        &g.iter().map(|x| x * c).collect::<Vec<_>>(),
        1e-15,
        "clipped large",
    );
}
