//! Small helpers shared by the kernels: constants, parallel row loops, ordered parallel sums.

use rayon::prelude::*;

use crate::Real;

/// Amount of work (roughly, elements touched) below which a kernel runs on the calling thread:
/// smaller calls cost more in rayon's scheduling than they gain from the second core.
pub const PAR_MIN_WORK: usize = 1 << 15;

/// Converts an `f64` constant to `T`.
#[inline(always)]
pub(crate) fn cst<T: Real>(x: f64) -> T {
    T::from(x).expect("constant representable in T")
}

/// How many items of `work_per_item` each to give one parallel task.
#[inline]
pub(crate) fn min_items_per_task(work_per_item: usize) -> usize {
    (PAR_MIN_WORK / 4 / work_per_item.max(1)).max(1)
}

/// Calls `f(row_index, row)` for every `row_len`-long row of `out`, in parallel when the total
/// work (`rows × work_per_row`) is large enough.
#[inline]
pub(crate) fn for_rows<T, F>(out: &mut [T], row_len: usize, work_per_row: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    if row_len == 0 {
        return;
    }
    let rows = out.len() / row_len;
    if rows.saturating_mul(work_per_row) < PAR_MIN_WORK || rows < 2 {
        simd(
            #[inline(always)]
            || {
                out.chunks_exact_mut(row_len)
                    .enumerate()
                    .for_each(|(i, row)| f(i, row))
            },
        );
    } else {
        out.par_chunks_exact_mut(row_len)
            .enumerate()
            .with_min_len(min_items_per_task(work_per_row))
            .for_each(|(i, row)| {
                simd(
                    #[inline(always)]
                    || f(i, row),
                )
            });
    }
}

/// Sums `f(start..end)` over fixed-size chunks of `0..len`, in parallel when `len` is large,
/// adding the partial sums in chunk order (so the result does not depend on the thread count).
pub(crate) fn ordered_sum<F>(len: usize, chunk: usize, f: F) -> f64
where
    F: Fn(usize, usize) -> f64 + Sync + Send,
{
    let chunk = chunk.max(1);
    if len <= chunk {
        return f(0, len);
    }
    let chunks = len.div_ceil(chunk);
    let partial: Vec<f64> = (0..chunks)
        .into_par_iter()
        .map(|c| f(c * chunk, ((c + 1) * chunk).min(len)))
        .collect();
    partial.iter().sum()
}

/// Elementwise chunk length for flat parallel maps.
pub(crate) const FLAT_CHUNK: usize = 1 << 14;

/// `out[i] = f(x[i])`, in parallel over large inputs.
#[inline]
pub(crate) fn map1<T: Real, F: Fn(T) -> T + Sync + Send>(x: &[T], out: &mut [T], f: F) {
    assert_eq!(x.len(), out.len(), "input and output lengths differ");
    let body = |(o, x): (&mut [T], &[T])| {
        simd(
            #[inline(always)]
            || {
                for (o, &x) in o.iter_mut().zip(x) {
                    *o = f(x);
                }
            },
        )
    };
    if x.len() < PAR_MIN_WORK {
        body((out, x));
    } else {
        out.par_chunks_mut(FLAT_CHUNK)
            .zip(x.par_chunks(FLAT_CHUNK))
            .for_each(body);
    }
}

/// `x[i] = f(x[i])`, in parallel over large inputs.
#[inline]
pub(crate) fn map_inplace<T: Real, F: Fn(T) -> T + Sync + Send>(x: &mut [T], f: F) {
    let body = |x: &mut [T]| {
        simd(
            #[inline(always)]
            || {
                for x in x.iter_mut() {
                    *x = f(*x);
                }
            },
        )
    };
    if x.len() < PAR_MIN_WORK {
        body(x);
    } else {
        x.par_chunks_mut(FLAT_CHUNK).for_each(body);
    }
}

/// `out[i] = f(a[i], b[i])`, in parallel over large inputs.
#[inline]
pub(crate) fn map2<T: Real, F: Fn(T, T) -> T + Sync + Send>(a: &[T], b: &[T], out: &mut [T], f: F) {
    assert_eq!(a.len(), out.len(), "input and output lengths differ");
    assert_eq!(b.len(), out.len(), "input and output lengths differ");
    let body = |((o, a), b): ((&mut [T], &[T]), &[T])| {
        simd(
            #[inline(always)]
            || {
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    *o = f(a, b);
                }
            },
        )
    };
    if a.len() < PAR_MIN_WORK {
        body(((out, a), b));
    } else {
        out.par_chunks_mut(FLAT_CHUNK)
            .zip(a.par_chunks(FLAT_CHUNK))
            .zip(b.par_chunks(FLAT_CHUNK))
            .for_each(body);
    }
}

type Chunks3<'a, T> = (((&'a mut [T], &'a [T]), &'a [T]), &'a [T]);

/// `out[i] = f(a[i], b[i], c[i])`, in parallel over large inputs.
#[inline]
pub(crate) fn map3<T: Real, F: Fn(T, T, T) -> T + Sync + Send>(
    a: &[T],
    b: &[T],
    c: &[T],
    out: &mut [T],
    f: F,
) {
    assert_eq!(a.len(), out.len(), "input and output lengths differ");
    assert_eq!(b.len(), out.len(), "input and output lengths differ");
    assert_eq!(c.len(), out.len(), "input and output lengths differ");
    let body = |(((o, a), b), c): Chunks3<'_, T>| {
        simd(
            #[inline(always)]
            || {
                for (((o, &a), &b), &c) in o.iter_mut().zip(a).zip(b).zip(c) {
                    *o = f(a, b, c);
                }
            },
        )
    };
    if a.len() < PAR_MIN_WORK {
        body((((out, a), b), c));
    } else {
        out.par_chunks_mut(FLAT_CHUNK)
            .zip(a.par_chunks(FLAT_CHUNK))
            .zip(b.par_chunks(FLAT_CHUNK))
            .zip(c.par_chunks(FLAT_CHUNK))
            .for_each(body);
    }
}

/// Number of independent accumulators in the slice reductions: enough for the compiler to use
/// full vector registers, and more accurate than one running sum.
const ACC: usize = 8;

/// Reduces `x` with `f` over `ACC` interleaved accumulators started at `init`, then combines
/// them pairwise with `f`.
#[inline(always)]
fn fold_acc<T: Real>(x: &[T], init: T, f: impl Fn(T, T) -> T) -> T {
    let mut acc = [init; ACC];
    let mut chunks = x.chunks_exact(ACC);
    for c in &mut chunks {
        for k in 0..ACC {
            acc[k] = f(acc[k], c[k]);
        }
    }
    for (k, &v) in chunks.remainder().iter().enumerate() {
        acc[k] = f(acc[k], v);
    }
    let a = [
        f(acc[0], acc[4]),
        f(acc[1], acc[5]),
        f(acc[2], acc[6]),
        f(acc[3], acc[7]),
    ];
    f(f(a[0], a[2]), f(a[1], a[3]))
}

/// `Σ x[i]`.
#[inline]
pub(crate) fn sum_slice<T: Real>(x: &[T]) -> T {
    fold_acc(x, T::zero(), |a, b| a + b)
}

/// `max x[i]` (−∞ for an empty slice; NaNs are skipped, as `Float::max`).
#[inline]
pub(crate) fn max_slice<T: Real>(x: &[T]) -> T {
    fold_acc(x, T::neg_infinity(), |a, b| a.max(b))
}

/// `Σ a[i]·b[i]`.
#[inline]
pub(crate) fn dot_slice<T: Real>(a: &[T], b: &[T]) -> T {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [T::zero(); ACC];
    let mut ca = a.chunks_exact(ACC);
    let mut cb = b.chunks_exact(ACC);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..ACC {
            acc[k] = acc[k] + x[k] * y[k];
        }
    }
    for (k, (&x, &y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[k] = acc[k] + x * y;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// `Σ (x[i] − m)²`.
#[inline]
pub(crate) fn sq_dev_sum<T: Real>(x: &[T], m: T) -> T {
    let mut acc = [T::zero(); ACC];
    let mut chunks = x.chunks_exact(ACC);
    for c in &mut chunks {
        for k in 0..ACC {
            let d = c[k] - m;
            acc[k] = acc[k] + d * d;
        }
    }
    for (k, &v) in chunks.remainder().iter().enumerate() {
        let d = v - m;
        acc[k] = acc[k] + d * d;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Runs `f` compiled for AVX2 when the CPU has it (`f` is inlined into a function with that
/// target feature), else as is.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
