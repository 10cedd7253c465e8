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
        out.chunks_exact_mut(row_len).enumerate().for_each(|(i, row)| f(i, row));
    } else {
        out.par_chunks_exact_mut(row_len)
            .enumerate()
            .with_min_len(min_items_per_task(work_per_row))
            .for_each(|(i, row)| f(i, row));
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
        for (o, &x) in o.iter_mut().zip(x) {
            *o = f(x);
        }
    };
    if x.len() < PAR_MIN_WORK {
        body((out, x));
    } else {
        out.par_chunks_mut(FLAT_CHUNK).zip(x.par_chunks(FLAT_CHUNK)).for_each(body);
    }
}

/// `x[i] = f(x[i])`, in parallel over large inputs.
#[inline]
pub(crate) fn map_inplace<T: Real, F: Fn(T) -> T + Sync + Send>(x: &mut [T], f: F) {
    let body = |x: &mut [T]| {
        for x in x.iter_mut() {
            *x = f(*x);
        }
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
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = f(a, b);
        }
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
    let body = |(((o, a), b), c): (((&mut [T], &[T]), &[T]), &[T])| {
        for (((o, &a), &b), &c) in o.iter_mut().zip(a).zip(b).zip(c) {
            *o = f(a, b, c);
        }
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
