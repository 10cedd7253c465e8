//! Losses reducing to a scalar, and their backward (which takes the upstream scalar gradient
//! `g = ∂L/∂loss`).
//!
//! Forward sums are accumulated in `f64` over fixed-size chunks (added in order), so a loss does
//! not depend on the thread count and stays accurate in `f32`. A mean over zero elements is NaN.

use crate::math;
use crate::util::{cst, for_rows, map2, ordered_sum, PAR_MIN_WORK};
use crate::Real;

/// Elements per chunk of the ordered parallel sums.
const CHUNK: usize = PAR_MIN_WORK;

#[inline]
fn f<T: Real>(x: T) -> f64 {
    x.to_f64().unwrap()
}

/// Mean over all elements of `term(a[i], b[i])`.
fn mean_of<T: Real>(a: &[T], b: &[T], term: impl Fn(T, T) -> f64 + Sync + Send) -> T {
    assert_eq!(a.len(), b.len(), "loss operands differ in length");
    let total = ordered_sum(a.len(), CHUNK, |s, e| {
        a[s..e]
            .iter()
            .zip(&b[s..e])
            .map(|(&x, &y)| term(x, y))
            .sum()
    });
    T::from(total / a.len() as f64).unwrap()
}

/// Writes `da[i] = h(a[i], b[i])` and `db[i] = −h(a[i], b[i])` for the requested outputs.
fn pair_backward<T: Real>(
    a: &[T],
    b: &[T],
    da: Option<&mut [T]>,
    db: Option<&mut [T]>,
    h: impl Fn(T, T) -> T + Sync + Send + Copy,
) {
    assert_eq!(a.len(), b.len(), "loss operands differ in length");
    if let Some(da) = da {
        map2(a, b, da, h);
    }
    if let Some(db) = db {
        map2(a, b, db, move |x, y| -h(x, y));
    }
}

#[inline(always)]
fn sign0<T: Real>(x: T) -> T {
    if x > T::zero() {
        T::one()
    } else if x < T::zero() {
        -T::one()
    } else {
        T::zero()
    }
}

/// Mean squared error: `mse(a, b) = (1/N) Σ_i (a[i] − b[i])²`, `N = a.len() = b.len()`.
pub fn mse<T: Real>(a: &[T], b: &[T]) -> T {
    mean_of(a, b, |x, y| {
        let d = f(x) - f(y);
        d * d
    })
}

/// Backward of [`mse`]: `da[i] = g · 2(a[i] − b[i])/N`, `db[i] = −da[i]`. Either output may be
/// `None`.
pub fn mse_backward<T: Real>(a: &[T], b: &[T], g: T, da: Option<&mut [T]>, db: Option<&mut [T]>) {
    let c = g * cst::<T>(2.0) / T::from(a.len()).unwrap();
    pair_backward(a, b, da, db, move |x, y| c * (x - y));
}

/// Mean absolute error: `l1(a, b) = (1/N) Σ_i |a[i] − b[i]|`.
pub fn l1<T: Real>(a: &[T], b: &[T]) -> T {
    mean_of(a, b, |x, y| (f(x) - f(y)).abs())
}

/// Backward of [`l1`]: `da[i] = g · sign(a[i] − b[i]) / N` (`sign(0) = 0`, as PyTorch),
/// `db[i] = −da[i]`.
pub fn l1_backward<T: Real>(a: &[T], b: &[T], g: T, da: Option<&mut [T]>, db: Option<&mut [T]>) {
    let c = g / T::from(a.len()).unwrap();
    pair_backward(a, b, da, db, move |x, y| c * sign0(x - y));
}

/// Smooth L1 (PyTorch's `F.smooth_l1_loss(a, b, beta=beta)`, mean reduction): with
/// `d = a[i] − b[i]`, the term is `½d²/beta` if `|d| < beta`, else `|d| − ½beta`;
/// `smooth_l1 = (1/N) Σ_i term`. `beta = 0` is exactly [`l1`]. Requires `beta >= 0`.
pub fn smooth_l1<T: Real>(a: &[T], b: &[T], beta: T) -> T {
    assert!(beta >= T::zero(), "smooth_l1: beta must be non-negative");
    let beta = f(beta);
    mean_of(a, b, move |x, y| {
        let z = (f(x) - f(y)).abs();
        if z < beta {
            0.5 * z * z / beta
        } else {
            z - 0.5 * beta
        }
    })
}

/// Backward of [`smooth_l1`]: with `d = a[i] − b[i]`, `da[i] = g/N · (d/beta if |d| < beta,
/// else sign(d))`, `db[i] = −da[i]`.
pub fn smooth_l1_backward<T: Real>(
    a: &[T],
    b: &[T],
    beta: T,
    g: T,
    da: Option<&mut [T]>,
    db: Option<&mut [T]>,
) {
    assert!(
        beta >= T::zero(),
        "smooth_l1_backward: beta must be non-negative"
    );
    let c = g / T::from(a.len()).unwrap();
    pair_backward(a, b, da, db, move |x, y| {
        let d = x - y;
        if d.abs() < beta {
            c * d / beta
        } else {
            c * sign0(d)
        }
    });
}

/// Per-row `logsumexp`: `m + ln Σ_j exp(x_j − m)`, `m = max_j x_j`.
#[inline]
fn logsumexp<T: Real>(x: &[T]) -> T {
    let m = x.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
    if m == T::neg_infinity() {
        return m;
    }
    m + x
        .iter()
        .fold(T::zero(), |acc, &v| acc + math::exp(v - m))
        .ln()
}

/// Mean over rows of `row_term(r, row slices…)` for `[rows, n]` inputs.
fn mean_rows<T: Real>(rows: usize, n: usize, row_term: impl Fn(usize) -> f64 + Sync + Send) -> T {
    let chunk = (CHUNK / n.max(1)).max(1);
    let total = ordered_sum(rows, chunk, |s, e| (s..e).map(&row_term).sum());
    T::from(total / rows as f64).unwrap()
}

/// Row-wise KL divergence from log-probabilities: for `log_p, log_q: [rows, n]`,
/// `kl_rows = (1/rows) Σ_r Σ_j p[r, j] · (log_p[r, j] − log_q[r, j])`, `p = exp(log_p)`, with a
/// term taken as 0 where `p = 0` (PyTorch's `F.kl_div(log_q, log_p, reduction="batchmean",
/// log_target=True)`, i.e. KL(p ‖ q)).
pub fn kl_rows<T: Real>(log_p: &[T], log_q: &[T], rows: usize, n: usize) -> T {
    assert_eq!(log_p.len(), rows * n, "kl_rows: log_p is not [rows, n]");
    assert_eq!(log_q.len(), rows * n, "kl_rows: log_q is not [rows, n]");
    mean_rows(rows, n, |r| {
        let (lp, lq) = (&log_p[r * n..(r + 1) * n], &log_q[r * n..(r + 1) * n]);
        lp.iter()
            .zip(lq)
            .map(|(&a, &b)| {
                let p = f(a).exp();
                if p == 0.0 {
                    0.0
                } else {
                    p * (f(a) - f(b))
                }
            })
            .sum()
    })
}

/// Backward of [`kl_rows`]: with `c = g/rows` and `p = exp(log_p)`,
/// `dlog_p = c · p · (log_p − log_q + 1)` and `dlog_q = −c · p` (both 0 where `p = 0`).
/// Either output may be `None`.
pub fn kl_rows_backward<T: Real>(
    log_p: &[T],
    log_q: &[T],
    rows: usize,
    n: usize,
    g: T,
    dlog_p: Option<&mut [T]>,
    dlog_q: Option<&mut [T]>,
) {
    assert_eq!(
        log_p.len(),
        rows * n,
        "kl_rows_backward: log_p is not [rows, n]"
    );
    assert_eq!(
        log_q.len(),
        rows * n,
        "kl_rows_backward: log_q is not [rows, n]"
    );
    let c = g / T::from(rows).unwrap();
    if let Some(d) = dlog_p {
        map2(log_p, log_q, d, move |a, b| {
            let p = math::exp(a);
            if p == T::zero() {
                T::zero()
            } else {
                c * p * (a - b + T::one())
            }
        });
    }
    if let Some(d) = dlog_q {
        map2(log_p, log_q, d, move |a, _| -c * math::exp(a));
    }
}

/// Cross-entropy with the diagonal as targets (CLIP's contrastive loss for one direction): for
/// `logits: [rows, n]` with `rows <= n`, the target of row `i` is column `i`, and
/// `ce = (1/rows) Σ_i (logsumexp_j logits[i, j] − logits[i, i])`.
pub fn cross_entropy_diagonal<T: Real>(logits: &[T], rows: usize, n: usize) -> T {
    assert_eq!(
        logits.len(),
        rows * n,
        "cross_entropy_diagonal: logits is not [rows, n]"
    );
    assert!(rows <= n, "cross_entropy_diagonal: needs rows <= n");
    mean_rows(rows, n, |i| {
        let row = &logits[i * n..(i + 1) * n];
        f(logsumexp(row)) - f(row[i])
    })
}

/// Backward of [`cross_entropy_diagonal`]:
/// `dlogits[i, j] = (g/rows) · (softmax(logits[i, :])_j − [i = j])`.
pub fn cross_entropy_diagonal_backward<T: Real>(
    logits: &[T],
    rows: usize,
    n: usize,
    g: T,
    dlogits: &mut [T],
) {
    assert_eq!(
        logits.len(),
        rows * n,
        "cross_entropy_diagonal_backward: logits is not [rows, n]"
    );
    assert_eq!(
        dlogits.len(),
        rows * n,
        "cross_entropy_diagonal_backward: dlogits is not [rows, n]"
    );
    assert!(
        rows <= n,
        "cross_entropy_diagonal_backward: needs rows <= n"
    );
    let c = g / T::from(rows).unwrap();
    for_rows(
        dlogits,
        n,
        n,
        #[inline(always)]
        |i, d| {
            let row = &logits[i * n..(i + 1) * n];
            let lse = logsumexp(row);
            for (d, &v) in d.iter_mut().zip(row) {
                *d = c * math::exp(v - lse);
            }
            d[i] = d[i] - c;
        },
    );
}

/// Cross-entropy against soft targets: for `logits, target: [rows, n]`,
/// `ce = (1/rows) Σ_i −Σ_j target[i, j] · log_softmax(logits[i, :])_j`
/// `= (1/rows) Σ_i (logsumexp(logits[i, :]) · Σ_j target[i, j] − Σ_j target[i, j] · logits[i, j])`.
pub fn cross_entropy_soft<T: Real>(logits: &[T], target: &[T], rows: usize, n: usize) -> T {
    assert_eq!(
        logits.len(),
        rows * n,
        "cross_entropy_soft: logits is not [rows, n]"
    );
    assert_eq!(
        target.len(),
        rows * n,
        "cross_entropy_soft: target is not [rows, n]"
    );
    mean_rows(rows, n, |i| {
        let (l, t) = (&logits[i * n..(i + 1) * n], &target[i * n..(i + 1) * n]);
        let lse = f(logsumexp(l));
        l.iter().zip(t).map(|(&l, &t)| -f(t) * (f(l) - lse)).sum()
    })
}

/// Backward of [`cross_entropy_soft`], with `c = g/rows` and `s_i = softmax(logits[i, :])`:
/// `dlogits[i, j] = c · (s_i[j] · Σ_l target[i, l] − target[i, j])` and
/// `dtarget[i, j] = −c · log_softmax(logits[i, :])_j`. Either output may be `None`.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_soft_backward<T: Real>(
    logits: &[T],
    target: &[T],
    rows: usize,
    n: usize,
    g: T,
    dlogits: Option<&mut [T]>,
    dtarget: Option<&mut [T]>,
) {
    assert_eq!(
        logits.len(),
        rows * n,
        "cross_entropy_soft_backward: logits is not [rows, n]"
    );
    assert_eq!(
        target.len(),
        rows * n,
        "cross_entropy_soft_backward: target is not [rows, n]"
    );
    let c = g / T::from(rows).unwrap();
    if let Some(dl) = dlogits {
        assert_eq!(
            dl.len(),
            rows * n,
            "cross_entropy_soft_backward: dlogits is not [rows, n]"
        );
        for_rows(
            dl,
            n,
            n,
            #[inline(always)]
            |i, d| {
                let (l, t) = (&logits[i * n..(i + 1) * n], &target[i * n..(i + 1) * n]);
                let lse = logsumexp(l);
                let tsum = t.iter().fold(T::zero(), |acc, &v| acc + v);
                for ((d, &l), &t) in d.iter_mut().zip(l).zip(t) {
                    *d = c * (math::exp(l - lse) * tsum - t);
                }
            },
        );
    }
    if let Some(dt) = dtarget {
        assert_eq!(
            dt.len(),
            rows * n,
            "cross_entropy_soft_backward: dtarget is not [rows, n]"
        );
        for_rows(
            dt,
            n,
            n,
            #[inline(always)]
            |i, d| {
                let l = &logits[i * n..(i + 1) * n];
                let lse = logsumexp(l);
                for (d, &l) in d.iter_mut().zip(l) {
                    *d = c * (lse - l);
                }
            },
        );
    }
}
