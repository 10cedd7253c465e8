//! Scaled dot-product attention in one operation (`Op::Attention`) and its gradient
//! (`Op::AttentionBackward`): per batch item, the scores `scale·q·kᵀ + bias` and their softmax
//! live only in a per-task buffer of `m·n` values, never in the step's memory; the backward
//! recomputes them (as flash attention does) instead of reading stored probabilities.

use kdc_backend::AttentionDims;
use rayon::prelude::*;

use crate::matmul::matmul;
use crate::Real;

/// The scores of batch item `beta` into `s` (`[m, n]`), then their row softmax in place.
fn probabilities<T: Real>(
    dims: &AttentionDims,
    beta: usize,
    q: &[T],
    k: &[T],
    bias: Option<&[T]>,
    scale: T,
    s: &mut [T],
) {
    let (m, n, d) = (dims.m, dims.n, dims.d);
    matmul(
        &q[beta * m * d..(beta + 1) * m * d],
        &k[beta * n * d..(beta + 1) * n * d],
        s,
        1,
        m,
        d,
        n,
        false,
        true,
        false,
        false,
    );
    let offset = dims.bias_offset(beta);
    for (i, row) in s.chunks_mut(n.max(1)).enumerate().take(m) {
        match (bias, &dims.bias) {
            (Some(b), Some((_, si, sj))) => {
                for (j, x) in row.iter_mut().enumerate() {
                    *x = *x * scale + b[offset + i * si + j * sj];
                }
            }
            _ => row.iter_mut().for_each(|x| *x = *x * scale),
        }
        let max = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        // A row masked everywhere (−∞ throughout) gives NaN, as PyTorch's softmax does.
        let mut sum = T::zero();
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum = sum + *x;
        }
        let inv = T::one() / sum;
        row.iter_mut().for_each(|x| *x = *x * inv);
    }
}

/// `out[β] = softmax(scale·q[β]·k[β]ᵀ + bias)·v[β]` for every batch item (see
/// [`AttentionDims`] for the shapes; `bias` is given when `dims.bias` is).
pub fn attention<T: Real>(
    dims: &AttentionDims,
    q: &[T],
    k: &[T],
    v: &[T],
    bias: Option<&[T]>,
    scale: T,
    out: &mut [T],
) {
    let (m, n, e) = (dims.m, dims.n, dims.e);
    assert_eq!(
        out.len(),
        dims.batch * m * e,
        "kdc-cpu attention: output length"
    );
    if m * e == 0 {
        return;
    }
    out.par_chunks_mut(m * e)
        .enumerate()
        .for_each_init(Vec::new, |s, (beta, o)| {
            s.resize(m * n, T::zero());
            probabilities(dims, beta, q, k, bias, scale, s);
            matmul(
                s,
                &v[beta * n * e..(beta + 1) * n * e],
                o,
                1,
                m,
                n,
                e,
                false,
                false,
                false,
                false,
            );
        });
}

/// The gradient of [`attention`] for the output gradient `dout`, into `out` =
/// `[dq | dk | dv]` (each flattened, in that order).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Real>(
    dims: &AttentionDims,
    q: &[T],
    k: &[T],
    v: &[T],
    bias: Option<&[T]>,
    dout: &[T],
    scale: T,
    out: &mut [T],
) {
    let (batch, m, n, d, e) = (dims.batch, dims.m, dims.n, dims.d, dims.e);
    assert_eq!(
        out.len(),
        batch * (m * d + n * d + n * e),
        "kdc-cpu attention backward: output length"
    );
    let (dq, rest) = out.split_at_mut(batch * m * d);
    let (dk, dv) = rest.split_at_mut(batch * n * d);
    if batch == 0 {
        return;
    }
    let items: Vec<(usize, (&mut [T], &mut [T], &mut [T]))> = chunks(dq, m * d, batch)
        .into_iter()
        .zip(chunks(dk, n * d, batch))
        .zip(chunks(dv, n * e, batch))
        .map(|((a, b), c)| (a, b, c))
        .enumerate()
        .collect();
    items.into_par_iter().for_each(|(beta, (dq, dk, dv))| {
        let mut p = vec![T::zero(); m * n];
        let mut dp = vec![T::zero(); m * n];
        probabilities(dims, beta, q, k, bias, scale, &mut p);
        let dob = &dout[beta * m * e..(beta + 1) * m * e];
        let (qb, kb, vb) = (
            &q[beta * m * d..(beta + 1) * m * d],
            &k[beta * n * d..(beta + 1) * n * d],
            &v[beta * n * e..(beta + 1) * n * e],
        );
        // dv = pᵀ·do; dp = do·vᵀ.
        matmul(&p, dob, dv, 1, n, m, e, true, false, false, false);
        matmul(dob, vb, &mut dp, 1, m, e, n, false, true, false, false);
        // ds = p ∘ (dp − Σⱼ p∘dp), times the scale (the scores' gradient to q·kᵀ).
        for (prow, dprow) in p.chunks(n.max(1)).zip(dp.chunks_mut(n.max(1))).take(m) {
            let dot = prow
                .iter()
                .zip(dprow.iter())
                .fold(T::zero(), |acc, (&a, &b)| acc + a * b);
            for (x, &pj) in dprow.iter_mut().zip(prow) {
                *x = pj * (*x - dot) * scale;
            }
        }
        // dq = ds·k; dk = dsᵀ·q.
        matmul(&dp, kb, dq, 1, m, n, d, false, false, false, false);
        matmul(&dp, qb, dk, 1, n, m, d, true, false, false, false);
    });
}

/// `x` in `batch` chunks of `len` (empty ones when `len` is 0).
fn chunks<T>(x: &mut [T], len: usize, batch: usize) -> Vec<&mut [T]> {
    if len == 0 {
        (0..batch).map(|_| &mut [][..]).collect()
    } else {
        x.chunks_mut(len).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator of values in [-1, 1).
    fn values(seed: u64, n: usize) -> Vec<f64> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// The attention written out naively (scores, softmax, weighted sum), in f64.
    fn naive(
        dims: &AttentionDims,
        q: &[f64],
        k: &[f64],
        v: &[f64],
        bias: Option<&[f64]>,
        scale: f64,
    ) -> Vec<f64> {
        let (m, n, d, e) = (dims.m, dims.n, dims.d, dims.e);
        let mut out = vec![0.0; dims.batch * m * e];
        for beta in 0..dims.batch {
            for i in 0..m {
                let mut s: Vec<f64> = (0..n)
                    .map(|j| {
                        let dot: f64 = (0..d)
                            .map(|c| q[(beta * m + i) * d + c] * k[(beta * n + j) * d + c])
                            .sum();
                        let b = match (bias, &dims.bias) {
                            (Some(b), Some((_, si, sj))) => {
                                b[dims.bias_offset(beta) + i * si + j * sj]
                            }
                            _ => 0.0,
                        };
                        dot * scale + b
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                s.iter_mut().for_each(|x| *x = (*x - max).exp());
                let sum: f64 = s.iter().sum();
                for c in 0..e {
                    out[(beta * m + i) * e + c] =
                        (0..n).map(|j| s[j] / sum * v[(beta * n + j) * e + c]).sum();
                }
            }
        }
        out
    }

    /// Shapes with leading axes [2, 3] (batch and heads), odd sizes, and each kind of bias the
    /// towers use: none, causal [m, n], padding [2, 1, 1, n].
    fn cases() -> Vec<(Vec<Vec<usize>>, bool)> {
        let (m, n, d, e) = (5, 7, 4, 3);
        let base = vec![vec![2, 3, m, d], vec![2, 3, n, d], vec![2, 3, n, e]];
        let with = |b: Vec<usize>| {
            let mut s = base.clone();
            s.push(b);
            (s, true)
        };
        vec![
            (base.clone(), false),
            with(vec![m, n]),
            with(vec![2, 1, 1, n]),
        ]
    }

    #[test]
    fn attention_matches_the_naive_composition() {
        for (shapes, has_bias) in cases() {
            let dims = AttentionDims::of(&shapes, has_bias).unwrap();
            let inputs: Vec<Vec<f64>> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    values(i as u64 + 1, s.iter().product())
                        .iter()
                        .map(|x| 2.0 * x)
                        .collect()
                })
                .collect();
            let bias = has_bias.then(|| &inputs[3][..]);
            let mut out = vec![0.0; dims.batch * dims.m * dims.e];
            attention(
                &dims, &inputs[0], &inputs[1], &inputs[2], bias, 0.5, &mut out,
            );
            let want = naive(&dims, &inputs[0], &inputs[1], &inputs[2], bias, 0.5);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "{shapes:?}: {a} vs {b}");
            }
        }
    }

    /// The gradient against central finite differences of Σ w∘attention(q, k, v).
    #[test]
    fn attention_backward_matches_finite_differences() {
        for (shapes, has_bias) in cases() {
            let dims = AttentionDims::of(&shapes, has_bias).unwrap();
            let mut inputs: Vec<Vec<f64>> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| values(i as u64 + 11, s.iter().product()))
                .collect();
            let w = values(99, dims.batch * dims.m * dims.e);
            let lens: Vec<usize> = inputs[..3].iter().map(Vec::len).collect();
            let mut grads = vec![0.0; lens.iter().sum()];
            let bias = has_bias.then(|| inputs[3].clone());
            attention_backward(
                &dims,
                &inputs[0],
                &inputs[1],
                &inputs[2],
                bias.as_deref(),
                &w,
                0.7,
                &mut grads,
            );
            let loss = |x: &[Vec<f64>]| -> f64 {
                let mut out = vec![0.0; w.len()];
                attention(&dims, &x[0], &x[1], &x[2], bias.as_deref(), 0.7, &mut out);
                out.iter().zip(&w).map(|(a, b)| a * b).sum()
            };
            let h = 1e-6;
            let mut at = 0;
            for which in 0..3 {
                for i in 0..lens[which] {
                    let keep = inputs[which][i];
                    inputs[which][i] = keep + h;
                    let up = loss(&inputs);
                    inputs[which][i] = keep - h;
                    let down = loss(&inputs);
                    inputs[which][i] = keep;
                    let fd = (up - down) / (2.0 * h);
                    let got = grads[at + i];
                    assert!(
                        (fd - got).abs() < 1e-7 * (1.0 + fd.abs()),
                        "{shapes:?} input {which}[{i}]: {got} vs {fd}"
                    );
                }
                at += lens[which];
            }
        }
    }
}
