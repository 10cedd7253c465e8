use super::{assert_close, assert_close_f32, check_vjp, Rng};
use crate::{erf, gelu, scale, scale_backward, unary, unary_backward, unary_inplace, UnaryOp};

const ALL: [UnaryOp; 12] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Abs,
    UnaryOp::Recip,
    UnaryOp::Square,
    UnaryOp::Relu,
    UnaryOp::Sigmoid,
    UnaryOp::Tanh,
    UnaryOp::Gelu,
    UnaryOp::QuickGelu,
];

/// Erf by its Maclaurin series (x small) or continued fraction for erfc (x large), summed in
/// f64 far past convergence: an independent reference.
fn erf_reference(x: f64) -> f64 {
    if x < 0.0 {
        return -erf_reference(-x);
    }
    if x < 3.0 {
        // erf x = 2/√π Σ (−1)ⁿ x^(2n+1) / (n! (2n+1))
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc x = e^(−x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + …))))
        let mut f = x;
        for k in (1..200).rev() {
            f = x + (k as f64 / 2.0) / f;
        }
        1.0 - (-x * x).exp() / std::f64::consts::PI.sqrt() / f
    }
}

fn reference(op: UnaryOp, x: f64) -> f64 {
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Square => x * x,
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Sigmoid => sig(x),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Gelu => 0.5 * x * (1.0 + erf_reference(x / 2f64.sqrt())),
        UnaryOp::QuickGelu => x * sig(1.702 * x),
    }
}

fn input(rng: &mut Rng, op: UnaryOp, n: usize) -> Vec<f64> {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt => rng.vec(n, 0.1, 3.0),
        UnaryOp::Recip | UnaryOp::Abs | UnaryOp::Relu => rng.vec_away(n, 0.1, 3.0),
        _ => rng.vec(n, -4.0, 4.0),
    }
}

#[test]
fn erf_is_accurate() {
    let known = [
        (0.0, 0.0),
        (0.1, 0.1124629160182849),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497149),
        (2.0, 0.9953222650189527),
        (-0.3, -0.3286267594591274),
        (3.5, 0.9999992569016276),
    ];
    for (x, e) in known {
        let (x, e): (f64, f64) = (x, e);
        assert!(
            (erf(x) - e).abs() < 1e-15,
            "erf({x}) = {}, expected {e}",
            erf(x)
        );
        assert!((erf_reference(x) - e).abs() < 1e-13, "reference erf({x})");
    }
    let mut rng = Rng::new(20);
    for _ in 0..2000 {
        let x = rng.range(-6.0, 6.0);
        assert!((erf(x) - erf_reference(x)).abs() < 1e-12, "erf({x})");
        assert!(
            (erf(x as f32) as f64 - erf_reference(x as f32 as f64)).abs() < 4e-7,
            "f32 erf({x})"
        );
    }
}

#[test]
fn forward_matches_reference() {
    let mut rng = Rng::new(21);
    for op in ALL {
        for n in [1, 105, 40_000] {
            let x = input(&mut rng, op, n);
            let expect: Vec<f64> = x.iter().map(|&v| reference(op, v)).collect();
            let mut out = vec![f64::NAN; n];
            unary(op, &x, &mut out);
            assert_close(&out, &expect, 1e-13, &format!("{op:?}"));
            let mut inplace = x.clone();
            unary_inplace(op, &mut inplace);
            assert_eq!(inplace, out, "{op:?} in place");
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    let mut rng = Rng::new(22);
    for op in ALL {
        let x = input(&mut rng, op, 3 * 5 * 7);
        let dy = rng.vec(x.len(), -1.0, 1.0);
        let mut y = vec![0.0; x.len()];
        unary(op, &x, &mut y);
        let mut dx = vec![f64::NAN; x.len()];
        unary_backward(op, &x, &y, &dy, &mut dx);
        check_vjp(&format!("{op:?}"), &x, &dy, &dx, |x| {
            let mut y = vec![0.0; x.len()];
            unary(op, x, &mut y);
            y
        });
    }
}

#[test]
fn abs_and_relu_gradients_at_zero() {
    let x = [0.0, 0.0];
    let y = [0.0, 0.0];
    let dy = [1.0, -2.0];
    let mut dx = [f64::NAN; 2];
    unary_backward(UnaryOp::Abs, &x, &y, &dy, &mut dx);
    assert_eq!(dx, [0.0, 0.0]);
    unary_backward(UnaryOp::Relu, &x, &y, &dy, &mut dx);
    assert_eq!(dx, [0.0, 0.0]);
}

#[test]
fn f32_gelu_matches_f64() {
    let mut rng = Rng::new(23);
    let x = rng.vec(50_000, -6.0, 6.0);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    for op in [
        UnaryOp::Gelu,
        UnaryOp::QuickGelu,
        UnaryOp::Exp,
        UnaryOp::Tanh,
    ] {
        let mut out = vec![0f32; x.len()];
        unary(op, &x32, &mut out);
        let expect: Vec<f64> = x32.iter().map(|&v| reference(op, v as f64)).collect();
        assert_close_f32(&out, &expect, 1e-6, &format!("f32 {op:?}"));
    }
    assert!((gelu(1.0f64) - 0.8413447460685429).abs() < 1e-15);
}

#[test]
fn scale_and_backward() {
    let mut rng = Rng::new(24);
    let x = rng.vec(37, -1.0, 1.0);
    let dy = rng.vec(37, -1.0, 1.0);
    let c = -1.75;
    let mut out = vec![0.0; 37];
    scale(&x, c, &mut out);
    let expect: Vec<f64> = x.iter().map(|v| c * v).collect();
    assert_close(&out, &expect, 1e-15, "scale");
    let mut dx = vec![0.0; 37];
    scale_backward(&dy, c, &mut dx);
    check_vjp("scale", &x, &dy, &dx, |x| x.iter().map(|v| c * v).collect());
}
