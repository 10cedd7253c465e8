//! Tests: every forward against a naive f64 reference, every backward against central finite
//! differences (the full vector-Jacobian product, element by element), in f64.

mod binary;
mod layer_norm;
mod loss;
mod math;
mod matmul;
mod movement;
mod optim;
mod reduce;
mod threads;
mod unary;

/// A small deterministic generator (xorshift64*), so tests need no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }

    /// Values in ±[lo, hi] with random sign (away from 0, for kinked functions).
    pub fn vec_away(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let v = self.range(lo, hi);
                if self.next_u64() & 1 == 0 {
                    v
                } else {
                    -v
                }
            })
            .collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `|a − e| <= tol · (1 + |e|)` elementwise.
#[track_caller]
pub fn assert_close(actual: &[f64], expected: &[f64], tol: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tol * (1.0 + e.abs()),
            "{what}: element {i}: got {a}, expected {e} (diff {})",
            (a - e).abs()
        );
    }
}

/// Same for f32 results against f64 references.
#[track_caller]
pub fn assert_close_f32(actual: &[f32], expected: &[f64], tol: f64, what: &str) {
    let a: Vec<f64> = actual.iter().map(|&v| v as f64).collect();
    assert_close(&a, expected, tol, what);
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Checks an analytic gradient of the scalar `loss` at `x` against central differences
/// (step 1e-6) at every element: `|num − ana| <= 1e-6·max(|num|, |ana|) + 1e-8`.
#[track_caller]
pub fn check_grad(what: &str, x: &[f64], grad: &[f64], loss: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), grad.len(), "{what}: gradient length");
    let h = 1e-6;
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        let x0 = xp[i];
        xp[i] = x0 + h;
        let lp = loss(&xp);
        xp[i] = x0 - h;
        let lm = loss(&xp);
        xp[i] = x0;
        let num = (lp - lm) / (2.0 * h);
        let ana = grad[i];
        let tol = 1e-6 * num.abs().max(ana.abs()) + 1e-8;
        assert!(
            (num - ana).abs() <= tol,
            "{what}: d/dx[{i}]: analytic {ana}, finite difference {num} (diff {})",
            (num - ana).abs()
        );
    }
}

/// Checks the backward `dx` of a vector function `f` at `x` for upstream gradient `dy`, via the
/// scalar `L(x) = ⟨dy, f(x)⟩`.
#[track_caller]
pub fn check_vjp(what: &str, x: &[f64], dy: &[f64], dx: &[f64], f: impl Fn(&[f64]) -> Vec<f64>) {
    check_grad(what, x, dx, |x| dot(dy, &f(x)));
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Multi-index of flat index `i` in `shape`.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}
