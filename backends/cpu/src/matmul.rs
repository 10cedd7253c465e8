//! Batched matrix products on top of the `gemm` crate.

use std::any::TypeId;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::Real;

/// Size (`m·n·k`) of one product from which `gemm` itself splits it over threads (its own
/// threshold, 48·48·256 by default). Smaller products in a batch run one per rayon task instead.
#[inline]
fn gemm_par_min() -> usize {
    gemm::get_threading_threshold()
}

/// Batched matrix product, overwriting `out`:
///
/// `out[β, i, j] = Σ_{p<k} A_β[i, p] · B_β[p, j]` for `β < batch`, `i < m`, `j < n`, where
///
/// * `A_β[i, p] = a[off_a + i·k + p]` (a stored `[m, k]`), or `a[off_a + p·m + i]` when `a_trans`
///   (a stored `[k, m]`, so the product uses `aᵀ`), with `off_a = β·m·k` if `a_batched` else 0
///   (one matrix shared by every batch item);
/// * `B_β[p, j] = b[off_b + p·n + j]` (b stored `[k, n]`), or `b[off_b + j·k + p]` when `b_trans`
///   (b stored `[n, k]`), with `off_b = β·k·n` if `b_batched` else 0;
/// * `out` is `[batch, m, n]`.
///
/// Examples: a linear layer `y = x·Wᵀ` with `x: [batch, m, k]`, `W: [n, k]` is
/// `matmul(x, w, y, batch, m, k, n, false, true, true, false)` (computed as one `[batch·m, k]`
/// product); attention scores `q·kᵀ` are `b_trans` with both operands batched; the weight
/// gradient `dW = dyᵀ·x` summed over the batch is `matmul(dy, x, dw, 1, n, batch·m, k, true,
/// false, false, false)` on the flattened `[batch·m, ·]` matrices.
///
/// Lengths: `a.len() == (batch if a_batched else 1)·m·k`, likewise `b` with `k·n`,
/// `out.len() == batch·m·n`; panics otherwise. `k == 0` gives zeros.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Real>(
    a: &[T],
    b: &[T],
    out: &mut [T],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    a_trans: bool,
    b_trans: bool,
    a_batched: bool,
    b_batched: bool,
) {
    matmul_impl(
        a, b, out, batch, m, k, n, a_trans, b_trans, a_batched, b_batched, false,
    );
}

/// Accumulating batched matrix product: `out[β, i, j] += Σ_{p<k} A_β[i, p] · B_β[p, j]`, with
/// operands, flags and lengths exactly as in [`matmul`]. Useful to accumulate gradients.
#[allow(clippy::too_many_arguments)]
pub fn matmul_acc<T: Real>(
    a: &[T],
    b: &[T],
    out: &mut [T],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    a_trans: bool,
    b_trans: bool,
    a_batched: bool,
    b_batched: bool,
) {
    matmul_impl(
        a, b, out, batch, m, k, n, a_trans, b_trans, a_batched, b_batched, true,
    );
}

#[allow(clippy::too_many_arguments)]
fn matmul_impl<T: Real>(
    a: &[T],
    b: &[T],
    out: &mut [T],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    a_trans: bool,
    b_trans: bool,
    a_batched: bool,
    b_batched: bool,
    accumulate: bool,
) {
    let a_item = m * k;
    let b_item = k * n;
    let o_item = m * n;
    assert_eq!(
        a.len(),
        if a_batched { batch * a_item } else { a_item },
        "matmul: a has the wrong length"
    );
    assert_eq!(
        b.len(),
        if b_batched { batch * b_item } else { b_item },
        "matmul: b has the wrong length"
    );
    assert_eq!(
        out.len(),
        batch * o_item,
        "matmul: out has the wrong length"
    );
    if out.is_empty() {
        return;
    }
    // Strides (row, column) of op(a) as an [m, k] matrix and of op(b) as a [k, n] matrix.
    let (a_rs, a_cs) = if a_trans { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if b_trans { (1, k) } else { (n, 1) };
    let strides = Strides {
        a_rs,
        a_cs,
        b_rs,
        b_cs,
    };

    // One product with a small output and a long reduction (a weight gradient dW = dyᵀ·x summed
    // over every token): gemm can only split the output over threads, which leaves them idle;
    // split the reduction instead into a fixed number of parts (a function of k alone, so the
    // result does not depend on the thread count), computed in parallel and summed in order.
    if batch == 1
        && m * n <= SPLIT_K_MAX_OUT
        && k >= 2 * SPLIT_K_MIN
        && rayon::current_num_threads() > 1
    {
        split_k(a, b, out, m, k, n, a_trans, b_trans, strides, accumulate);
        return;
    }

    // A batch of row-major a's against one shared b is a single [batch·m, k] × [k, n] product.
    if batch > 1 && a_batched && !a_trans && !b_batched {
        let rows = batch * m;
        let par = parallelism(rows * k * n);
        gemm_one(a, b, out, rows, k, n, strides, accumulate, par);
        return;
    }

    let work = o_item * k;
    let item = |i: usize, o: &mut [T], par: Parallelism| {
        let a_i = if a_batched {
            &a[i * a_item..(i + 1) * a_item]
        } else {
            a
        };
        let b_i = if b_batched {
            &b[i * b_item..(i + 1) * b_item]
        } else {
            b
        };
        gemm_one(a_i, b_i, o, m, k, n, strides, accumulate, par);
    };
    let threads = rayon::current_num_threads();
    let few = batch < 2 * threads && work >= gemm_par_min();
    if batch == 1 || threads == 1 || few || batch * work < gemm_par_min() {
        // Few large products (or little work): one after another, each using the pool if it
        // is big enough. Many products (attention heads) run one per task below: splitting
        // each small product over threads costs more than it saves.
        let par = parallelism(work);
        for (i, o) in out.chunks_exact_mut(o_item).enumerate() {
            item(i, o, par);
        }
    } else {
        // Many products (attention heads): one product per task.
        let per_task = (gemm_par_min() / 4 / work.max(1)).max(1);
        out.par_chunks_exact_mut(o_item)
            .enumerate()
            .with_min_len(per_task)
            .for_each(|(i, o)| item(i, o, Parallelism::None));
    }
}

/// Largest output (m·n) for which a long reduction is split.
const SPLIT_K_MAX_OUT: usize = 1024 * 1024;
/// Smallest reduction length of one part.
const SPLIT_K_MIN: usize = 1024;
/// Most parts.
const SPLIT_K_PARTS: usize = 4;

/// `out (+)= op(a)·op(b)` for one product, the reduction split into parts (see the caller).
#[allow(clippy::too_many_arguments)]
fn split_k<T: Real>(
    a: &[T],
    b: &[T],
    out: &mut [T],
    m: usize,
    k: usize,
    n: usize,
    a_trans: bool,
    b_trans: bool,
    s: Strides,
    accumulate: bool,
) {
    let parts = (k / SPLIT_K_MIN).clamp(2, SPLIT_K_PARTS);
    let chunk = k.div_ceil(parts);
    let range = |p: usize| (p * chunk, ((p + 1) * chunk).min(k));
    // The operands of part p: the same layout, starting at reduction index p0.
    let operands = |p0: usize| {
        let a_off = if a_trans { p0 * m } else { p0 };
        let b_off = if b_trans { p0 } else { p0 * n };
        (&a[a_off..], &b[b_off..])
    };
    // The other parts' sums, in a buffer kept per thread and type between calls (a step makes
    // the same calls every time, so this allocates on the first step only).
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<Box<dyn std::any::Any>>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let len = (parts - 1) * m * n;
    let mut partial: Vec<T> = SCRATCH
        .with(|s| {
            let mut s = s.borrow_mut();
            let at = s.iter().position(|b| b.is::<Vec<T>>())?;
            Some(*s.swap_remove(at).downcast::<Vec<T>>().unwrap())
        })
        .unwrap_or_default();
    partial.clear();
    partial.resize(len, T::zero());
    rayon::scope(|scope| {
        for (i, dst) in partial.chunks_exact_mut(m * n).enumerate() {
            let (p0, p1) = range(i + 1);
            let (ap, bp) = operands(p0);
            scope.spawn(move |_| gemm_one(ap, bp, dst, m, p1 - p0, n, s, false, Parallelism::None));
        }
        let (p0, p1) = range(0);
        let (ap, bp) = operands(p0);
        gemm_one(ap, bp, out, m, p1 - p0, n, s, accumulate, Parallelism::None);
    });
    for part in partial.chunks_exact(m * n) {
        for (o, &v) in out.iter_mut().zip(part) {
            *o = *o + v;
        }
    }
    SCRATCH.with(|s| s.borrow_mut().push(Box::new(partial)));
}

#[derive(Clone, Copy)]
struct Strides {
    a_rs: usize,
    a_cs: usize,
    b_rs: usize,
    b_cs: usize,
}

#[inline]
fn parallelism(flops: usize) -> Parallelism {
    if flops >= gemm_par_min() && rayon::current_num_threads() > 1 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// `out[m, n] (+)= op(a)[m, k] · op(b)[k, n]` with the given strides; `out` row-major.
#[allow(clippy::too_many_arguments)]
fn gemm_one<T: Real>(
    a: &[T],
    b: &[T],
    out: &mut [T],
    m: usize,
    k: usize,
    n: usize,
    s: Strides,
    accumulate: bool,
    par: Parallelism,
) {
    debug_assert_eq!(out.len(), m * n);
    let id = TypeId::of::<T>();
    if id == TypeId::of::<f32>() || id == TypeId::of::<f64>() {
        // SAFETY: `a` holds the m×k matrix addressed by (a_rs, a_cs) (its length was checked by
        // the caller: max offset (m-1)·a_rs + (k-1)·a_cs < m·k), likewise `b` and `out`, and
        // `out` does not alias the inputs (it is a unique borrow). T is f32 or f64, which gemm
        // supports.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                accumulate,
                a.as_ptr(),
                s.a_cs as isize,
                s.a_rs as isize,
                b.as_ptr(),
                s.b_cs as isize,
                s.b_rs as isize,
                if accumulate { T::one() } else { T::zero() },
                T::one(),
                false,
                false,
                false,
                par,
            );
        }
    } else {
        // Any other float type: a plain triple loop.
        for i in 0..m {
            for j in 0..n {
                let mut acc = T::zero();
                for p in 0..k {
                    acc = acc + a[i * s.a_rs + p * s.a_cs] * b[p * s.b_rs + j * s.b_cs];
                }
                let o = &mut out[i * n + j];
                *o = if accumulate { *o + acc } else { acc };
            }
        }
    }
}
