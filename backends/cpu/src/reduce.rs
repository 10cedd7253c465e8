//! Operators along one axis of a tensor viewed as `[outer, n, inner]`: softmax, log-softmax,
//! L2 normalisation, sum, mean and variance, with their backward.
//!
//! A *lane* is the `n` elements `x[o, 0..n, i]` for one `(o, i)`; every operator acts on lanes
//! independently. For the last axis (`inner == 1`) lanes are contiguous rows, processed one row
//! at a time with vectorisable passes. Otherwise a tile of up to `TILE` adjacent lanes is
//! processed together, so that the inner loops run over contiguous memory (`x[o, j, i0..i0+w]`)
//! with per-lane accumulators on the stack. Parallelism is over rows, or over outer blocks.

use crate::math;
use crate::util::{dot_slice, for_rows, max_slice, sq_dev_sum, sum_slice};
use crate::Real;

/// `eps` of [`l2_normalize`] matching PyTorch's `F.normalize`: `1e-12`.
pub const NORMALIZE_EPS: f64 = 1e-12;

/// Lanes per tile when `inner > 1`.
const TILE: usize = 64;

/// `(outer, n, inner)` for reducing `shape` along `axis`: `outer = Π shape[..axis]`,
/// `n = shape[axis]`, `inner = Π shape[axis+1..]`. Panics if `axis >= shape.len()`.
pub fn axis_dims(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    assert!(
        axis < shape.len(),
        "axis {axis} out of range for shape {shape:?}"
    );
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

#[track_caller]
fn check(len: usize, outer: usize, n: usize, inner: usize, what: &str) {
    assert_eq!(
        len,
        outer * n * inner,
        "{what} does not have [outer, n, inner] = [{outer}, {n}, {inner}] elements"
    );
}

/// Drives a lane operator over `out` (`[outer, n, inner]`): `row(r, out_row)` for each
/// contiguous lane when `inner == 1`, else `tile(o, i0, w, out_block)` for each tile of lanes
/// `i0..i0+w` of outer block `o`.
fn lanes<T: Real, R, S>(out: &mut [T], outer: usize, n: usize, inner: usize, row: R, tile: S)
where
    R: Fn(usize, &mut [T]) + Sync + Send,
    S: Fn(usize, usize, usize, &mut [T]) + Sync + Send,
{
    if n == 0 || outer * inner == 0 {
        return;
    }
    if inner == 1 {
        for_rows(out, n, n, row);
    } else {
        let block = n * inner;
        for_rows(
            out,
            block,
            block,
            #[inline(always)]
            |o, blk| {
                for i0 in (0..inner).step_by(TILE) {
                    tile(o, i0, TILE.min(inner - i0), blk);
                }
            },
        );
    }
}

/// Row `j` of the tile `i0..i0+w` in a block with row length `inner`.
#[inline(always)]
fn trow<T>(block: &[T], j: usize, inner: usize, i0: usize, w: usize) -> &[T] {
    &block[j * inner + i0..j * inner + i0 + w]
}

#[inline(always)]
fn trow_mut<T>(block: &mut [T], j: usize, inner: usize, i0: usize, w: usize) -> &mut [T] {
    &mut block[j * inner + i0..j * inner + i0 + w]
}

/// Per-lane sums `acc[..w] = Σ_j block[j, i0..i0+w]`.
#[inline(always)]
fn tile_sum<T: Real>(block: &[T], n: usize, inner: usize, i0: usize, w: usize, acc: &mut [T]) {
    acc[..w].fill(T::zero());
    for j in 0..n {
        for (a, &v) in acc[..w].iter_mut().zip(trow(block, j, inner, i0, w)) {
            *a = *a + v;
        }
    }
}

/// Per-lane dot products `acc[..w] = Σ_j a[j, i]·b[j, i]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_dot<T: Real>(a: &[T], b: &[T], n: usize, inner: usize, i0: usize, w: usize, acc: &mut [T]) {
    acc[..w].fill(T::zero());
    for j in 0..n {
        for ((s, &x), &y) in acc[..w]
            .iter_mut()
            .zip(trow(a, j, inner, i0, w))
            .zip(trow(b, j, inner, i0, w))
        {
            *s = *s + x * y;
        }
    }
}

/// Per-lane maxima `acc[..w] = max_j block[j, i0..i0+w]`.
#[inline(always)]
fn tile_max<T: Real>(block: &[T], n: usize, inner: usize, i0: usize, w: usize, acc: &mut [T]) {
    acc[..w].fill(T::neg_infinity());
    for j in 0..n {
        for (a, &v) in acc[..w].iter_mut().zip(trow(block, j, inner, i0, w)) {
            *a = a.max(v);
        }
    }
}

/// Softmax along the axis: `out[o, j, i] = exp(x[o, j, i] − m) / Σ_l exp(x[o, l, i] − m)`, with
/// `m = max_l x[o, l, i]` for stability. `x` and `out` are `[outer, n, inner]`.
pub fn softmax<T: Real>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize) {
    check(x.len(), outer, n, inner, "x");
    check(out.len(), outer, n, inner, "out");
    let block = n * inner;
    lanes(
        out,
        outer,
        n,
        inner,
        #[inline(always)]
        |r, o| {
            let x = &x[r * n..(r + 1) * n];
            let max = max_slice(x);
            for (o, &v) in o.iter_mut().zip(x) {
                *o = math::exp(v - max);
            }
            let inv = sum_slice(o).recip();
            for o in o.iter_mut() {
                *o = *o * inv;
            }
        },
        #[inline(always)]
        |ob, i0, w, o| {
            let x = &x[ob * block..(ob + 1) * block];
            let (mut max, mut sum) = ([T::zero(); TILE], [T::zero(); TILE]);
            tile_max(x, n, inner, i0, w, &mut max);
            sum[..w].fill(T::zero());
            for j in 0..n {
                let (xr, or) = (trow(x, j, inner, i0, w), trow_mut(o, j, inner, i0, w));
                for (((o, &v), &m), s) in or.iter_mut().zip(xr).zip(&max[..w]).zip(&mut sum[..w]) {
                    let e = math::exp(v - m);
                    *o = e;
                    *s = *s + e;
                }
            }
            for s in &mut sum[..w] {
                *s = s.recip();
            }
            for j in 0..n {
                for (o, &s) in trow_mut(o, j, inner, i0, w).iter_mut().zip(&sum[..w]) {
                    *o = *o * s;
                }
            }
        },
    );
}

/// Backward of [`softmax`] from its output `y`:
/// `dx[o, j, i] = y[o, j, i] · (dy[o, j, i] − Σ_l dy[o, l, i] · y[o, l, i])`.
pub fn softmax_backward<T: Real>(
    y: &[T],
    dy: &[T],
    dx: &mut [T],
    outer: usize,
    n: usize,
    inner: usize,
) {
    check(y.len(), outer, n, inner, "y");
    check(dy.len(), outer, n, inner, "dy");
    check(dx.len(), outer, n, inner, "dx");
    let block = n * inner;
    lanes(
        dx,
        outer,
        n,
        inner,
        #[inline(always)]
        |r, d| {
            let (y, g) = (&y[r * n..(r + 1) * n], &dy[r * n..(r + 1) * n]);
            let dot = dot_slice(y, g);
            for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
                *d = y * (g - dot);
            }
        },
        #[inline(always)]
        |ob, i0, w, d| {
            let (y, g) = (
                &y[ob * block..(ob + 1) * block],
                &dy[ob * block..(ob + 1) * block],
            );
            let mut dot = [T::zero(); TILE];
            tile_dot(y, g, n, inner, i0, w, &mut dot);
            for j in 0..n {
                let (yr, gr) = (trow(y, j, inner, i0, w), trow(g, j, inner, i0, w));
                for (((d, &y), &g), &s) in trow_mut(d, j, inner, i0, w)
                    .iter_mut()
                    .zip(yr)
                    .zip(gr)
                    .zip(&dot[..w])
                {
                    *d = y * (g - s);
                }
            }
        },
    );
}

/// Log-softmax along the axis: `out[o, j, i] = x[o, j, i] − m − ln Σ_l exp(x[o, l, i] − m)`,
/// `m = max_l x[o, l, i]`.
pub fn log_softmax<T: Real>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize) {
    check(x.len(), outer, n, inner, "x");
    check(out.len(), outer, n, inner, "out");
    let block = n * inner;
    lanes(
        out,
        outer,
        n,
        inner,
        #[inline(always)]
        |r, o| {
            let x = &x[r * n..(r + 1) * n];
            let max = max_slice(x);
            // The exponentials go through `out` so both passes vectorise.
            for (o, &v) in o.iter_mut().zip(x) {
                *o = math::exp(v - max);
            }
            let shift = max + sum_slice(o).ln();
            for (o, &v) in o.iter_mut().zip(x) {
                *o = v - shift;
            }
        },
        #[inline(always)]
        |ob, i0, w, o| {
            let x = &x[ob * block..(ob + 1) * block];
            let (mut max, mut sum) = ([T::zero(); TILE], [T::zero(); TILE]);
            tile_max(x, n, inner, i0, w, &mut max);
            sum[..w].fill(T::zero());
            for j in 0..n {
                for ((&v, &m), s) in trow(x, j, inner, i0, w)
                    .iter()
                    .zip(&max[..w])
                    .zip(&mut sum[..w])
                {
                    *s = *s + math::exp(v - m);
                }
            }
            for (s, &m) in sum[..w].iter_mut().zip(&max[..w]) {
                *s = m + s.ln();
            }
            for j in 0..n {
                let xr = trow(x, j, inner, i0, w);
                for ((o, &v), &s) in trow_mut(o, j, inner, i0, w)
                    .iter_mut()
                    .zip(xr)
                    .zip(&sum[..w])
                {
                    *o = v - s;
                }
            }
        },
    );
}

/// Backward of [`log_softmax`] from its output `y`:
/// `dx[o, j, i] = dy[o, j, i] − exp(y[o, j, i]) · Σ_l dy[o, l, i]`.
pub fn log_softmax_backward<T: Real>(
    y: &[T],
    dy: &[T],
    dx: &mut [T],
    outer: usize,
    n: usize,
    inner: usize,
) {
    check(y.len(), outer, n, inner, "y");
    check(dy.len(), outer, n, inner, "dy");
    check(dx.len(), outer, n, inner, "dx");
    let block = n * inner;
    lanes(
        dx,
        outer,
        n,
        inner,
        #[inline(always)]
        |r, d| {
            let (y, g) = (&y[r * n..(r + 1) * n], &dy[r * n..(r + 1) * n]);
            let total = sum_slice(g);
            for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
                *d = g - math::exp(y) * total;
            }
        },
        #[inline(always)]
        |ob, i0, w, d| {
            let (y, g) = (
                &y[ob * block..(ob + 1) * block],
                &dy[ob * block..(ob + 1) * block],
            );
            let mut total = [T::zero(); TILE];
            tile_sum(g, n, inner, i0, w, &mut total);
            for j in 0..n {
                let (yr, gr) = (trow(y, j, inner, i0, w), trow(g, j, inner, i0, w));
                for (((d, &y), &g), &t) in trow_mut(d, j, inner, i0, w)
                    .iter_mut()
                    .zip(yr)
                    .zip(gr)
                    .zip(&total[..w])
                {
                    *d = g - math::exp(y) * t;
                }
            }
        },
    );
}

/// L2 normalisation along the axis (PyTorch's `F.normalize(x, dim, eps)`):
/// `out[o, j, i] = x[o, j, i] / max(‖x[o, :, i]‖₂, eps)`; use `eps = `[`NORMALIZE_EPS`].
pub fn l2_normalize<T: Real>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize, eps: T) {
    check(x.len(), outer, n, inner, "x");
    check(out.len(), outer, n, inner, "out");
    let block = n * inner;
    lanes(
        out,
        outer,
        n,
        inner,
        #[inline(always)]
        |r, o| {
            let x = &x[r * n..(r + 1) * n];
            let inv = dot_slice(x, x).sqrt().max(eps).recip();
            for (o, &v) in o.iter_mut().zip(x) {
                *o = v * inv;
            }
        },
        #[inline(always)]
        |ob, i0, w, o| {
            let x = &x[ob * block..(ob + 1) * block];
            let mut inv = [T::zero(); TILE];
            tile_dot(x, x, n, inner, i0, w, &mut inv);
            for s in &mut inv[..w] {
                *s = s.sqrt().max(eps).recip();
            }
            for j in 0..n {
                let xr = trow(x, j, inner, i0, w);
                for ((o, &v), &s) in trow_mut(o, j, inner, i0, w)
                    .iter_mut()
                    .zip(xr)
                    .zip(&inv[..w])
                {
                    *o = v * s;
                }
            }
        },
    );
}

/// Coefficients `(a, c)` of the normalisation backward `dx = a·dy − c·x` for a lane with
/// `‖x‖² = ss` and `⟨x, dy⟩ = xdy`.
#[inline(always)]
fn l2_coefficients<T: Real>(ss: T, xdy: T, eps: T) -> (T, T) {
    let r = ss.sqrt();
    if r > eps {
        let inv = r.recip();
        (inv, xdy * inv * inv * inv)
    } else {
        (eps.recip(), T::zero())
    }
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
    let block = n * inner;
    lanes(
        dx,
        outer,
        n,
        inner,
        #[inline(always)]
        |r, d| {
            let (x, g) = (&x[r * n..(r + 1) * n], &dy[r * n..(r + 1) * n]);
            let (a, c) = l2_coefficients(dot_slice(x, x), dot_slice(x, g), eps);
            for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                *d = a * g - c * x;
            }
        },
        #[inline(always)]
        |ob, i0, w, d| {
            let (x, g) = (
                &x[ob * block..(ob + 1) * block],
                &dy[ob * block..(ob + 1) * block],
            );
            let (mut a, mut c) = ([T::zero(); TILE], [T::zero(); TILE]);
            tile_dot(x, x, n, inner, i0, w, &mut a);
            tile_dot(x, g, n, inner, i0, w, &mut c);
            for (a, c) in a[..w].iter_mut().zip(&mut c[..w]) {
                (*a, *c) = l2_coefficients(*a, *c, eps);
            }
            for j in 0..n {
                let (xr, gr) = (trow(x, j, inner, i0, w), trow(g, j, inner, i0, w));
                let lanes = a[..w].iter().zip(&c[..w]);
                for (((d, &x), &g), (&a, &c)) in trow_mut(d, j, inner, i0, w)
                    .iter_mut()
                    .zip(xr)
                    .zip(gr)
                    .zip(lanes)
                {
                    *d = a * g - c * x;
                }
            }
        },
    );
}

/// Runs a reduction: `out[r] = row(x_row)` for `inner == 1`, else
/// `block(x_block, out_row)` per outer block (`out_row = out[o, 0..inner]`).
fn reduce<T: Real, R, B>(
    x: &[T],
    out: &mut [T],
    outer: usize,
    n: usize,
    inner: usize,
    row: R,
    block: B,
) where
    R: Fn(&[T]) -> T + Sync + Send,
    B: Fn(&[T], &mut [T]) + Sync + Send,
{
    check(x.len(), outer, n, inner, "x");
    check(out.len(), outer, 1, inner, "out");
    if outer * inner == 0 {
        return;
    }
    if inner == 1 {
        for_rows(out, 1, n, |r, o| o[0] = row(&x[r * n..(r + 1) * n]));
    } else {
        let size = n * inner;
        for_rows(out, inner, size, |o, out| {
            block(&x[o * size..(o + 1) * size], out)
        });
    }
}

/// `out[i] = Σ_j x[j, i]` for a block `[n, inner]`, accumulating whole rows.
#[inline(always)]
fn block_sum<T: Real>(x: &[T], out: &mut [T]) {
    out.fill(T::zero());
    for row in x.chunks_exact(out.len()) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o = *o + v;
        }
    }
}

/// Sum along the axis: `out[o, i] = Σ_j x[o, j, i]`; `out` is `[outer, inner]`.
pub fn sum_axis<T: Real>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize) {
    reduce(x, out, outer, n, inner, sum_slice, block_sum);
}

/// Backward of [`sum_axis`]: `dx[o, j, i] = dy[o, i]`.
pub fn sum_axis_backward<T: Real>(dy: &[T], dx: &mut [T], outer: usize, n: usize, inner: usize) {
    broadcast_axis(dy, dx, outer, n, inner, T::one());
}

/// Mean along the axis: `out[o, i] = (1/n) Σ_j x[o, j, i]`; `out` is `[outer, inner]`.
pub fn mean_axis<T: Real>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize) {
    let inv_n = T::from(n).unwrap().recip();
    reduce(
        x,
        out,
        outer,
        n,
        inner,
        |x| sum_slice(x) * inv_n,
        |x, out| {
            block_sum(x, out);
            out.iter_mut().for_each(|o| *o = *o * inv_n);
        },
    );
}

/// Backward of [`mean_axis`]: `dx[o, j, i] = dy[o, i] / n`.
pub fn mean_axis_backward<T: Real>(dy: &[T], dx: &mut [T], outer: usize, n: usize, inner: usize) {
    broadcast_axis(dy, dx, outer, n, inner, T::from(n).unwrap().recip());
}

/// Biased variance along the axis (PyTorch's `var(dim, unbiased=False)`):
/// `out[o, i] = (1/n) Σ_j (x[o, j, i] − μ[o, i])²`, `μ = mean_axis(x)`; `out` is `[outer, inner]`.
pub fn var_axis<T: Real>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize) {
    let inv_n = T::from(n).unwrap().recip();
    reduce(
        x,
        out,
        outer,
        n,
        inner,
        |x| sq_dev_sum(x, sum_slice(x) * inv_n) * inv_n,
        |x, out| {
            let inner = out.len();
            let mut mu = [T::zero(); TILE];
            for (t, out) in out.chunks_mut(TILE).enumerate() {
                let (i0, w) = (t * TILE, out.len());
                tile_sum(x, n, inner, i0, w, &mut mu);
                mu[..w].iter_mut().for_each(|m| *m = *m * inv_n);
                out.fill(T::zero());
                for j in 0..n {
                    for ((o, &v), &m) in out.iter_mut().zip(trow(x, j, inner, i0, w)).zip(&mu[..w])
                    {
                        *o = *o + (v - m) * (v - m);
                    }
                }
                out.iter_mut().for_each(|o| *o = *o * inv_n);
            }
        },
    );
}

/// Backward of [`var_axis`] from its input `x`:
/// `dx[o, j, i] = dy[o, i] · 2(x[o, j, i] − μ[o, i])/n`.
pub fn var_axis_backward<T: Real>(
    x: &[T],
    dy: &[T],
    dx: &mut [T],
    outer: usize,
    n: usize,
    inner: usize,
) {
    check(x.len(), outer, n, inner, "x");
    check(dy.len(), outer, 1, inner, "dy");
    check(dx.len(), outer, n, inner, "dx");
    let inv_n = T::from(n).unwrap().recip();
    let two_over_n = inv_n + inv_n;
    let block = n * inner;
    lanes(
        dx,
        outer,
        n,
        inner,
        #[inline(always)]
        |r, d| {
            let x = &x[r * n..(r + 1) * n];
            let mu = sum_slice(x) * inv_n;
            let c = dy[r] * two_over_n;
            for (d, &v) in d.iter_mut().zip(x) {
                *d = c * (v - mu);
            }
        },
        #[inline(always)]
        |ob, i0, w, d| {
            let x = &x[ob * block..(ob + 1) * block];
            let mut mu = [T::zero(); TILE];
            tile_sum(x, n, inner, i0, w, &mut mu);
            mu[..w].iter_mut().for_each(|m| *m = *m * inv_n);
            let c = &dy[ob * inner + i0..ob * inner + i0 + w];
            for j in 0..n {
                let xr = trow(x, j, inner, i0, w);
                for (((d, &v), &m), &g) in trow_mut(d, j, inner, i0, w)
                    .iter_mut()
                    .zip(xr)
                    .zip(&mu[..w])
                    .zip(c)
                {
                    *d = g * two_over_n * (v - m);
                }
            }
        },
    );
}

/// `dx[o, j, i] = c · dy[o, i]`.
fn broadcast_axis<T: Real>(dy: &[T], dx: &mut [T], outer: usize, n: usize, inner: usize, c: T) {
    check(dy.len(), outer, 1, inner, "dy");
    check(dx.len(), outer, n, inner, "dx");
    let block = n * inner;
    if block == 0 {
        return;
    }
    for_rows(dx, block, block, |o, dx| {
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
    });
}

/// The index `j` of the extreme of `x[o, ·, i]` (the first one on ties; a NaN counts as the
/// extreme, as in PyTorch): the largest when `largest`, else the smallest.
#[inline]
fn extreme_index<T: Real>(
    x: &[T],
    o: usize,
    i: usize,
    n: usize,
    inner: usize,
    largest: bool,
) -> usize {
    let at = |j: usize| x[(o * n + j) * inner + i];
    let mut best = 0;
    let mut v = at(0);
    for j in 1..n {
        let y = at(j);
        if v.is_nan() {
            break;
        }
        if y.is_nan() || (largest && y > v) || (!largest && y < v) {
            best = j;
            v = y;
        }
    }
    best
}

/// The largest (`largest`) or smallest value along the axis: `out[o, i] = max_j x[o, j, i]`;
/// `out` is `[outer, inner]`.
pub fn extreme_axis<T: Real>(
    x: &[T],
    out: &mut [T],
    outer: usize,
    n: usize,
    inner: usize,
    largest: bool,
) {
    assert!(n > 0 && x.len() == outer * n * inner && out.len() == outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            out[o * inner + i] = x[(o * n + extreme_index(x, o, i, n, inner, largest)) * inner + i];
        }
    }
}

/// The position of the extreme along the axis, as a number (`argmax`, `argmin`).
pub fn arg_extreme_axis<T: Real>(
    x: &[T],
    out: &mut [T],
    outer: usize,
    n: usize,
    inner: usize,
    largest: bool,
) {
    assert!(n > 0 && x.len() == outer * n * inner && out.len() == outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            out[o * inner + i] = T::from(extreme_index(x, o, i, n, inner, largest)).unwrap();
        }
    }
}

/// Backward of [`extreme_axis`]: the gradient goes to the one position the value came from
/// (the first extreme on ties, as `torch.max(x, dim)` does); zero elsewhere.
pub fn extreme_axis_backward<T: Real>(
    x: &[T],
    dy: &[T],
    dx: &mut [T],
    outer: usize,
    n: usize,
    inner: usize,
    largest: bool,
) {
    assert!(dx.len() == outer * n * inner && dy.len() == outer * inner);
    dx.fill(T::zero());
    for o in 0..outer {
        for i in 0..inner {
            let j = extreme_index(x, o, i, n, inner, largest);
            dx[(o * n + j) * inner + i] = dy[o * inner + i];
        }
    }
}

/// The positions of the `k` largest values of lane (o, i), largest first (ties: the earlier
/// position first; NaN counts as the largest).
fn top_positions<T: Real>(
    x: &[T],
    o: usize,
    i: usize,
    n: usize,
    inner: usize,
    k: usize,
) -> Vec<usize> {
    let at = |j: usize| x[(o * n + j) * inner + i];
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| {
        let (va, vb) = (at(a), at(b));
        match (va.is_nan(), vb.is_nan()) {
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => vb.partial_cmp(&va).unwrap_or(std::cmp::Ordering::Equal),
        }
        .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

/// The `k` largest values along the axis, largest first: `out` is `[outer, k, inner]`.
pub fn topk_axis<T: Real>(x: &[T], out: &mut [T], outer: usize, n: usize, inner: usize, k: usize) {
    assert!(k >= 1 && k <= n && x.len() == outer * n * inner && out.len() == outer * k * inner);
    for o in 0..outer {
        for i in 0..inner {
            for (r, j) in top_positions(x, o, i, n, inner, k).into_iter().enumerate() {
                out[(o * k + r) * inner + i] = x[(o * n + j) * inner + i];
            }
        }
    }
}

/// Backward of [`topk_axis`]: each output's gradient goes to the position it came from.
pub fn topk_axis_backward<T: Real>(
    x: &[T],
    dy: &[T],
    dx: &mut [T],
    outer: usize,
    n: usize,
    inner: usize,
    k: usize,
) {
    assert!(dx.len() == outer * n * inner && dy.len() == outer * k * inner);
    dx.fill(T::zero());
    for o in 0..outer {
        for i in 0..inner {
            for (r, j) in top_positions(x, o, i, n, inner, k).into_iter().enumerate() {
                dx[(o * n + j) * inner + i] = dy[(o * k + r) * inner + i];
            }
        }
    }
}
