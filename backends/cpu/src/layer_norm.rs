//! Layer normalisation over the last dimension, with gain and bias.

use rayon::prelude::*;

use crate::util::{min_items_per_task, simd, sq_dev_sum, sum_slice, PAR_MIN_WORK};
use crate::Real;

/// `eps` of PyTorch's `nn.LayerNorm` (and CLIP's): `1e-5`.
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// Layer norm over the last dimension of `x: [rows, d]`:
///
/// `μ_r = (1/d) Σ_j x[r, j]`, `σ²_r = (1/d) Σ_j (x[r, j] − μ_r)²` (biased),
/// `ρ_r = 1/√(σ²_r + eps)`, `out[r, j] = (x[r, j] − μ_r) · ρ_r · gain[j] + bias[j]`.
///
/// Also writes `mean[r] = μ_r` and `rstd[r] = ρ_r` (each `[rows]`) for the backward.
/// Use `eps = `[`LAYER_NORM_EPS`] for PyTorch's default.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm<T: Real>(
    x: &[T],
    gain: &[T],
    bias: &[T],
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    rows: usize,
    d: usize,
    eps: T,
) {
    assert_eq!(x.len(), rows * d, "layer_norm: x is not [rows, d]");
    assert_eq!(out.len(), rows * d, "layer_norm: out is not [rows, d]");
    assert_eq!(gain.len(), d, "layer_norm: gain is not [d]");
    assert_eq!(bias.len(), d, "layer_norm: bias is not [d]");
    assert_eq!(mean.len(), rows, "layer_norm: mean is not [rows]");
    assert_eq!(rstd.len(), rows, "layer_norm: rstd is not [rows]");
    if rows == 0 || d == 0 {
        mean.fill(T::zero());
        rstd.fill(eps.sqrt().recip());
        return;
    }
    let inv_d = T::from(d).unwrap().recip();
    #[allow(clippy::type_complexity)]
    let row = {
        #[inline(always)]
        |(((r, o), mu), rs): (((usize, &mut [T]), &mut T), &mut T)| {
            let x = &x[r * d..(r + 1) * d];
            let (m, rho) = row_stats(x, inv_d, eps);
            for (((o, &v), &g), &b) in o.iter_mut().zip(x).zip(gain).zip(bias) {
                *o = (v - m) * rho * g + b;
            }
            *mu = m;
            *rs = rho;
        }
    };
    if x.len() < PAR_MIN_WORK {
        out.chunks_exact_mut(d)
            .enumerate()
            .zip(mean.iter_mut())
            .zip(rstd.iter_mut())
            .for_each(row);
    } else {
        out.par_chunks_exact_mut(d)
            .enumerate()
            .zip(mean.par_iter_mut())
            .zip(rstd.par_iter_mut())
            .with_min_len(min_items_per_task(d))
            .for_each(|args| simd(|| row(args)));
    }
}

/// `(μ, ρ)` of one row (`inv_d = 1/d`): the mean and `1/√(biased variance + eps)`.
#[inline(always)]
fn row_stats<T: Real>(x: &[T], inv_d: T, eps: T) -> (T, T) {
    let m = sum_slice(x) * inv_d;
    let var = sq_dev_sum(x, m) * inv_d;
    (m, (var + eps).sqrt().recip())
}

/// The statistics [`layer_norm`] saves, without the normalised output: `mean[r] = μ_r`,
/// `rstd[r] = ρ_r` for `x: [rows, d]` (for a backward that recomputes them instead of keeping
/// them alive from the forward).
pub fn layer_norm_stats<T: Real>(
    x: &[T],
    mean: &mut [T],
    rstd: &mut [T],
    rows: usize,
    d: usize,
    eps: T,
) {
    assert_eq!(x.len(), rows * d, "layer_norm_stats: x is not [rows, d]");
    assert_eq!(mean.len(), rows, "layer_norm_stats: mean is not [rows]");
    assert_eq!(rstd.len(), rows, "layer_norm_stats: rstd is not [rows]");
    if d == 0 {
        mean.fill(T::zero());
        rstd.fill(eps.sqrt().recip());
        return;
    }
    let inv_d = T::from(d).unwrap().recip();
    let row = {
        #[inline(always)]
        |((r, mu), rs): ((usize, &mut T), &mut T)| {
            (*mu, *rs) = row_stats(&x[r * d..(r + 1) * d], inv_d, eps);
        }
    };
    if x.len() < PAR_MIN_WORK {
        mean.iter_mut()
            .enumerate()
            .zip(rstd.iter_mut())
            .for_each(row);
    } else {
        mean.par_iter_mut()
            .enumerate()
            .zip(rstd.par_iter_mut())
            .with_min_len(min_items_per_task(d))
            .for_each(|args| simd(|| row(args)));
    }
}

/// Backward of [`layer_norm`], from its input `x`, `gain`, and the saved `mean` and `rstd`.
/// With `x̂ = (x − μ_r)·ρ_r` and `g = gain ⊙ dy`, overwrites
///
/// * `dx[r, j] = ρ_r · (g[r, j] − (1/d) Σ_l g[r, l] − x̂[r, j] · (1/d) Σ_l g[r, l] x̂[r, l])`,
/// * `dgain[j] = Σ_r dy[r, j] · x̂[r, j]`,
/// * `dbias[j] = Σ_r dy[r, j]`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward<T: Real>(
    x: &[T],
    gain: &[T],
    mean: &[T],
    rstd: &[T],
    dy: &[T],
    dx: &mut [T],
    dgain: &mut [T],
    dbias: &mut [T],
    rows: usize,
    d: usize,
) {
    assert_eq!(x.len(), rows * d, "layer_norm_backward: x is not [rows, d]");
    assert_eq!(
        dy.len(),
        rows * d,
        "layer_norm_backward: dy is not [rows, d]"
    );
    assert_eq!(
        dx.len(),
        rows * d,
        "layer_norm_backward: dx is not [rows, d]"
    );
    assert_eq!(gain.len(), d, "layer_norm_backward: gain is not [d]");
    assert_eq!(dgain.len(), d, "layer_norm_backward: dgain is not [d]");
    assert_eq!(dbias.len(), d, "layer_norm_backward: dbias is not [d]");
    assert_eq!(mean.len(), rows, "layer_norm_backward: mean is not [rows]");
    assert_eq!(rstd.len(), rows, "layer_norm_backward: rstd is not [rows]");
    layer_norm_backward_input(x, gain, mean, rstd, dy, dx, rows, d);
    layer_norm_backward_params(x, mean, rstd, dy, dgain, dbias, rows, d);
}

/// The input gradient of [`layer_norm_backward`] alone: overwrites `dx` as described there.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward_input<T: Real>(
    x: &[T],
    gain: &[T],
    mean: &[T],
    rstd: &[T],
    dy: &[T],
    dx: &mut [T],
    rows: usize,
    d: usize,
) {
    assert_eq!(
        x.len(),
        rows * d,
        "layer_norm_backward_input: x is not [rows, d]"
    );
    assert_eq!(
        dy.len(),
        rows * d,
        "layer_norm_backward_input: dy is not [rows, d]"
    );
    assert_eq!(
        dx.len(),
        rows * d,
        "layer_norm_backward_input: dx is not [rows, d]"
    );
    assert_eq!(gain.len(), d, "layer_norm_backward_input: gain is not [d]");
    assert_eq!(
        mean.len(),
        rows,
        "layer_norm_backward_input: mean is not [rows]"
    );
    assert_eq!(
        rstd.len(),
        rows,
        "layer_norm_backward_input: rstd is not [rows]"
    );
    if rows == 0 || d == 0 {
        return;
    }
    let inv_d = T::from(d).unwrap().recip();
    let large = x.len() >= PAR_MIN_WORK;

    // dx, one row at a time.
    let row = {
        #[inline(always)]
        |(r, dx): (usize, &mut [T])| {
            let (x, dy) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
            let (m, rho) = (mean[r], rstd[r]);
            let (mut sg, mut sgx) = (T::zero(), T::zero());
            for ((&v, &g), &w) in x.iter().zip(dy).zip(gain) {
                let gy = g * w;
                sg = sg + gy;
                sgx = sgx + gy * (v - m) * rho;
            }
            let (a, b) = (sg * inv_d, sgx * inv_d);
            for (((o, &v), &g), &w) in dx.iter_mut().zip(x).zip(dy).zip(gain) {
                let xhat = (v - m) * rho;
                *o = rho * (g * w - a - xhat * b);
            }
        }
    };
    if large {
        dx.par_chunks_exact_mut(d)
            .enumerate()
            .with_min_len(min_items_per_task(d))
            .for_each(row);
    } else {
        dx.chunks_exact_mut(d).enumerate().for_each(row);
    }
}

/// The gain and bias gradients of [`layer_norm_backward`] alone: overwrites `dgain` and `dbias`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward_params<T: Real>(
    x: &[T],
    mean: &[T],
    rstd: &[T],
    dy: &[T],
    dgain: &mut [T],
    dbias: &mut [T],
    rows: usize,
    d: usize,
) {
    assert_eq!(
        x.len(),
        rows * d,
        "layer_norm_backward_params: x is not [rows, d]"
    );
    assert_eq!(
        dy.len(),
        rows * d,
        "layer_norm_backward_params: dy is not [rows, d]"
    );
    assert_eq!(
        dgain.len(),
        d,
        "layer_norm_backward_params: dgain is not [d]"
    );
    assert_eq!(
        dbias.len(),
        d,
        "layer_norm_backward_params: dbias is not [d]"
    );
    assert_eq!(
        mean.len(),
        rows,
        "layer_norm_backward_params: mean is not [rows]"
    );
    assert_eq!(
        rstd.len(),
        rows,
        "layer_norm_backward_params: rstd is not [rows]"
    );
    dgain.fill(T::zero());
    dbias.fill(T::zero());
    if rows == 0 || d == 0 {
        return;
    }
    let large = x.len() >= PAR_MIN_WORK;
    // dgain and dbias, one block of columns at a time (summing rows in order).
    const BLOCK: usize = 64;
    let cols = {
        #[inline(always)]
        |(blk, (dg, db)): (usize, (&mut [T], &mut [T]))| {
            let c0 = blk * BLOCK;
            let w = dg.len();
            for r in 0..rows {
                let (m, rho) = (mean[r], rstd[r]);
                let xs = &x[r * d + c0..r * d + c0 + w];
                let gs = &dy[r * d + c0..r * d + c0 + w];
                for (((dg, db), &v), &g) in dg.iter_mut().zip(db.iter_mut()).zip(xs).zip(gs) {
                    *dg = *dg + g * ((v - m) * rho);
                    *db = *db + g;
                }
            }
        }
    };
    if large && d >= 2 * BLOCK {
        dgain
            .par_chunks_mut(BLOCK)
            .zip(dbias.par_chunks_mut(BLOCK))
            .enumerate()
            .for_each(cols);
    } else {
        cols((0, (dgain, dbias)));
    }
}
