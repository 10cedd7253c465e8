//! Operators along one axis of a tensor viewed as `[outer, n, inner]`: softmax, log-softmax,
//! L2 normalisation, sum, mean and variance, with their backward.
//!
//! A *lane* is the `n` elements `x[o, 0..n, i]` for one `(o, i)`; every operator acts on lanes
//! independently. For the last axis (`inner == 1`) lanes are contiguous rows; otherwise they are
//! strided by `inner` and processed one outer block at a time.

use rayon::prelude::*;

use crate::binary::sum_slice;
use crate::util::{for_rows, min_items_per_task, PAR_MIN_WORK};
use crate::Real;

/// `eps` of [`l2_normalize`] matching PyTorch's `F.normalize`: `1e-12`.
pub const NORMALIZE_EPS: f64 = 1e-12;

/// `(outer, n, inner)` for reducing `shape` along `axis`: `outer = Π shape[..axis]`,
/// `n = shape[axis]`, `inner = Π shape[axis+1..]`. Panics if `axis >= shape.len()`.
pub fn axis_dims(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    assert!(axis < shape.len(), "axis {axis} out of range for shape {shape:?}");
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

fn check(len: usize, outer: usize, n: usize, inner: usize, what: &str) {
    assert_eq!(len, outer * n * inner, "{what} does not have [outer, n, inner] = [{outer}, {n}, {inner}] elements");
}

/// Runs `f(a_lane, b_lane, out_lane, stride)` on every lane, where each `*_lane` slice starts at
/// the lane's first element and the lane's elements are those at multiples of `stride` (exactly
/// `n` of them).
fn lanes2<T: Real, F>(a: &[T], b: &[T], out: &mut [T], outer: usize, n: usize, inner: usize, f: F)
where
    F: Fn(&[T], &[T], &mut [T], usize) + Sync + Send,
{
    if n == 0 || outer * inner == 0 {
        return;
    }
    if inner == 1 {
        for_rows(out, n, n, |r, o| f(&a[r * n..(r + 1) * n], &b[r * n..(r + 1) * n], o, 1));
        return;
    }
    let block = n * inner;
    let body = |o: usize, out: &mut [T]| {
        let (a, b) = (&a[o * block..(o + 1) * block], &b[o * block..(o + 1) * block]);
        for j in 0..inner {
            f(&a[j..], &b[j..], &mut out[j..], inner);
        }
    };
    for_rows(out, block, block, body);
}

/// Runs `out[o·inner + i] = f(x_lane, stride)` on every lane (see [`lanes2`]).
fn reduce_lanes<T: Real, F>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize, f: F)
where
    F: Fn(&[T], usize) -> T + Sync + Send,
{
    if outer * inner == 0 {
        return;
    }
    let block = n * inner;
    if inner == 1 {
        for_rows(out, 1, n, |r, o| o[0] = f(&x[r * n..(r + 1) * n], 1));
        return;
    }
    for_rows(out, inner, block, |o, out| {
        let x = &x[o * block..(o + 1) * block];
        for (j, v) in out.iter_mut().enumerate() {
            *v = f(&x[j..], inner);
        }
    });
}

/// Runs `f(x_lane, s, out_lane, stride)` on every lane, `s = s_all[o·inner + i]` a per-lane
/// scalar (an upstream gradient of a reduction).
#[allow(clippy::too_many_arguments)]
fn lanes_with_scalar<T: Real, F>(
    x: &[T],
    s_all: &[T],
    out: &mut [T],
    outer: usize,
    n: usize,
    inner: usize,
    f: F,
) where
    F: Fn(&[T], T, &mut [T], usize) + Sync + Send,
{
    if n == 0 || outer * inner == 0 {
        return;
    }
    if inner == 1 {
        for_rows(out, n, n, |r, o| f(&x[r * n..(r + 1) * n], s_all[r], o, 1));
        return;
    }
    let block = n * inner;
    for_rows(out, block, block, |o, out| {
        let x = &x[o * block..(o + 1) * block];
        for j in 0..inner {
            f(&x[j..], s_all[o * inner + j], &mut out[j..], inner);
        }
    });
}

/// Sum of a lane.
#[inline(always)]
fn lane_sum<T: Real>(x: &[T], s: usize) -> T {
    if s == 1 {
        sum_slice(x)
    } else {
        x.iter().step_by(s).fold(T::zero(), |acc, &v| acc + v)
    }
}

/// Σ a·b over a pair of lanes.
#[inline(always)]
fn lane_dot<T: Real>(a: &[T], b: &[T], s: usize) -> T {
    a.iter().step_by(s).zip(b.iter().step_by(s)).fold(T::zero(), |acc, (&x, &y)| acc + x * y)
}

#[inline(always)]
fn lane_max<T: Real>(x: &[T], s: usize) -> T {
    x.iter().step_by(s).fold(T::neg_infinity(), |m, &v| m.max(v))
}

/// Softmax along the axis: `out[o, j, i] = exp(x[o, j, i] − m) / Σ_l exp(x[o, l, i] − m)`, with
/// `m = max_l x[o, l, i]` for stability. `x` and `out` are `[outer, n, inner]`.
pub fn softmax<T: Real>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize) {
    check(x.len(), outer, n, inner, "x");
    check(out.len(), outer, n, inner, "out");
    lanes2(x, x, out, outer, n, inner, |x, _, out, s| {
        let max = lane_max(x, s);
        let mut sum = T::zero();
        for (o, &v) in out.iter_mut().step_by(s).zip(x.iter().step_by(s)) {
            let e = (v - max).exp();
            *o = e;
            sum = sum + e;
        }
        let inv = sum.recip();
        for o in out.iter_mut().step_by(s) {
            *o = *o * inv;
        }
    });
}

/// Backward of [`softmax`] from its output `y`:
/// `dx[o, j, i] = y[o, j, i] · (dy[o, j, i] − Σ_l dy[o, l, i] · y[o, l, i])`.
pub fn softmax_backward<T: Real>(y: &[T], dy: &[T], dx: &mut [T], outer: usize, n: usize, inner: usize) {
    check(y.len(), outer, n, inner, "y");
    check(dy.len(), outer, n, inner, "dy");
    check(dx.len(), outer, n, inner, "dx");
    lanes2(y, dy, dx, outer, n, inner, |y, dy, dx, s| {
        let dot = lane_dot(y, dy, s);
        for ((d, &y), &g) in dx.iter_mut().step_by(s).zip(y.iter().step_by(s)).zip(dy.iter().step_by(s)) {
            *d = y * (g - dot);
        }
    });
}

/// Log-softmax along the axis: `out[o, j, i] = x[o, j, i] − m − ln Σ_l exp(x[o, l, i] − m)`,
/// `m = max_l x[o, l, i]`.
pub fn log_softmax<T: Real>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize) {
    check(x.len(), outer, n, inner, "x");
    check(out.len(), outer, n, inner, "out");
    lanes2(x, x, out, outer, n, inner, |x, _, out, s| {
        let max = lane_max(x, s);
        let sum = x.iter().step_by(s).fold(T::zero(), |acc, &v| acc + (v - max).exp());
        let shift = max + sum.ln();
        for (o, &v) in out.iter_mut().step_by(s).zip(x.iter().step_by(s)) {
            *o = v - shift;
        }
    });
}

/// Backward of [`log_softmax`] from its output `y`:
/// `dx[o, j, i] = dy[o, j, i] − exp(y[o, j, i]) · Σ_l dy[o, l, i]`.
pub fn log_softmax_backward<T: Real>(y: &[T], dy: &[T], dx: &mut [T], outer: usize, n: usize, inner: usize) {
    check(y.len(), outer, n, inner, "y");
    check(dy.len(), outer, n, inner, "dy");
    check(dx.len(), outer, n, inner, "dx");
    lanes2(y, dy, dx, outer, n, inner, |y, dy, dx, s| {
        let total = lane_sum(dy, s);
        for ((d, &y), &g) in dx.iter_mut().step_by(s).zip(y.iter().step_by(s)).zip(dy.iter().step_by(s)) {
            *d = g - y.exp() * total;
        }
    });
}

/// L2 normalisation along the axis (PyTorch's `F.normalize(x, dim, eps)`):
/// `out[o, j, i] = x[o, j, i] / max(‖x[o, :, i]‖₂, eps)`; use `eps = `[`NORMALIZE_EPS`].
pub fn l2_normalize<T: Real>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize, eps: T) {
    check(x.len(), outer, n, inner, "x");
    check(out.len(), outer, n, inner, "out");
    lanes2(x, x, out, outer, n, inner, |x, _, out, s| {
        let inv = lane_dot(x, x, s).sqrt().max(eps).recip();
        for (o, &v) in out.iter_mut().step_by(s).zip(x.iter().step_by(s)) {
            *o = v * inv;
        }
    });
}

/// Backward of [`l2_normalize`] from its input `x`. With `r = ‖x_lane‖₂`:
/// if `r > eps`, `dx = dy / r − x · (Σ_l dy_l x_l) / r³` (i.e. `(dy − y·⟨dy, y⟩)/r`);
/// otherwise the denominator is the constant `eps` and `dx = dy / eps`.
pub fn l2_normalize_backward<T: Real>(
    x: &[T],
    dy: &[T],
    dx: &mut [T],
    outer: usize,
    n: usize,
    inner: usize,
    eps: T,
) {
    check(x.len(), outer, n, inner, "x");
    check(dy.len(), outer, n, inner, "dy");
    check(dx.len(), outer, n, inner, "dx");
    lanes2(x, dy, dx, outer, n, inner, |x, dy, dx, s| {
        let r = lane_dot(x, x, s).sqrt();
        if r > eps {
            let inv = r.recip();
            let c = lane_dot(x, dy, s) * inv * inv * inv;
            for ((d, &x), &g) in dx.iter_mut().step_by(s).zip(x.iter().step_by(s)).zip(dy.iter().step_by(s)) {
                *d = g * inv - x * c;
            }
        } else {
            let inv = eps.recip();
            for (d, &g) in dx.iter_mut().step_by(s).zip(dy.iter().step_by(s)) {
                *d = g * inv;
            }
        }
    });
}

/// Sum along the axis: `out[o, i] = Σ_j x[o, j, i]`; `out` is `[outer, inner]`.
pub fn sum_axis<T: Real>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize) {
    check(x.len(), outer, n, inner, "x");
    check(out.len(), outer, 1, inner, "out");
    reduce_lanes(x, out, outer, n, inner, lane_sum);
}

/// Backward of [`sum_axis`]: `dx[o, j, i] = dy[o, i]`.
pub fn sum_axis_backward<T: Real>(dy: &[T], dx: &mut [T], outer: usize, n: usize, inner: usize) {
    broadcast_axis(dy, dx, outer, n, inner, T::one());
}

/// Mean along the axis: `out[o, i] = (1/n) Σ_j x[o, j, i]`; `out` is `[outer, inner]`.
pub fn mean_axis<T: Real>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize) {
    check(x.len(), outer, n, inner, "x");
    check(out.len(), outer, 1, inner, "out");
    let inv_n = T::from(n).unwrap().recip();
    reduce_lanes(x, out, outer, n, inner, |x, s| lane_sum(x, s) * inv_n);
}

/// Backward of [`mean_axis`]: `dx[o, j, i] = dy[o, i] / n`.
pub fn mean_axis_backward<T: Real>(dy: &[T], dx: &mut [T], outer: usize, n: usize, inner: usize) {
    broadcast_axis(dy, dx, outer, n, inner, T::from(n).unwrap().recip());
}

/// Biased variance along the axis (PyTorch's `var(dim, unbiased=False)`):
/// `out[o, i] = (1/n) Σ_j (x[o, j, i] − μ[o, i])²`, `μ = mean_axis(x)`; `out` is `[outer, inner]`.
pub fn var_axis<T: Real>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize) {
    check(x.len(), outer, n, inner, "x");
    check(out.len(), outer, 1, inner, "out");
    let inv_n = T::from(n).unwrap().recip();
    reduce_lanes(x, out, outer, n, inner, |x, s| {
        let mu = lane_sum(x, s) * inv_n;
        x.iter().step_by(s).fold(T::zero(), |acc, &v| acc + (v - mu) * (v - mu)) * inv_n
    });
}

/// Backward of [`var_axis`] from its input `x`: `dx[o, j, i] = dy[o, i] · 2(x[o, j, i] − μ[o, i])/n`.
pub fn var_axis_backward<T: Real>(x: &[T], dy: &[T], dx: &mut [T], outer: usize, n: usize, inner: usize) {
    check(x.len(), outer, n, inner, "x");
    check(dy.len(), outer, 1, inner, "dy");
    check(dx.len(), outer, n, inner, "dx");
    let inv_n = T::from(n).unwrap().recip();
    let two_over_n = inv_n + inv_n;
    lanes_with_scalar(x, dy, dx, outer, n, inner, |x, g, dx, s| {
        let mu = lane_sum(x, s) * inv_n;
        let c = g * two_over_n;
        for (d, &v) in dx.iter_mut().step_by(s).zip(x.iter().step_by(s)) {
            *d = c * (v - mu);
        }
    });
}

/// `dx[o, j, i] = c · dy[o, i]`.
fn broadcast_axis<T: Real>(dy: &[T], dx: &mut [T], outer: usize, n: usize, inner: usize, c: T) {
    check(dy.len(), outer, 1, inner, "dy");
    check(dx.len(), outer, n, inner, "dx");
    let block = n * inner;
    if block == 0 {
        return;
    }
    let body = |o: usize, dx: &mut [T]| {
        let g = &dy[o * inner..(o + 1) * inner];
        if inner == 1 {
            dx.fill(c * g[0]);
        } else {
            for row in dx.chunks_exact_mut(inner) {
                for (d, &g) in row.iter_mut().zip(g) {
                    *d = c * g;
                }
            }
        }
    };
    if dx.len() < PAR_MIN_WORK {
        dx.chunks_exact_mut(block).enumerate().for_each(|(o, d)| body(o, d));
    } else {
        dx.par_chunks_exact_mut(block)
            .enumerate()
            .with_min_len(min_items_per_task(block))
            .for_each(|(o, d)| body(o, d));
    }
}
