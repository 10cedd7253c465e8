//! Elementwise binary operators with NumPy broadcasting, their backward, and `sum_to`.

use rayon::prelude::*;

use crate::util::{for_rows, map1, map2, map3, sum_slice, PAR_MIN_WORK};
use crate::{numel, Real};

/// An elementwise binary operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a · b`
    Mul,
    /// `a / b`
    Div,
    /// `max(a, b)`; the gradient goes to `a` where `a ≥ b`, else to `b`
    Max,
    /// `min(a, b)`; the gradient goes to `a` where `a ≤ b`, else to `b`
    Min,
    /// `1` where `a > b`, else `0` (no gradient)
    Gt,
    /// `1` where `a ≥ b`, else `0` (no gradient)
    Ge,
    /// `1` where `a < b`, else `0` (no gradient)
    Lt,
    /// `1` where `a ≤ b`, else `0` (no gradient)
    Le,
    /// `1` where `a = b`, else `0` (no gradient)
    Eq,
    /// `1` where `a ≠ b`, else `0` (no gradient)
    Ne,
}

impl BinaryOp {
    /// The operator on two numbers.
    #[inline(always)]
    pub fn apply<T: Real>(self, x: T, y: T) -> T {
        let truth = |c: bool| if c { T::one() } else { T::zero() };
        match self {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            BinaryOp::Div => x / y,
            BinaryOp::Max => {
                if x >= y || x.is_nan() {
                    x
                } else {
                    y
                }
            }
            BinaryOp::Min => {
                if x <= y || x.is_nan() {
                    x
                } else {
                    y
                }
            }
            BinaryOp::Gt => truth(x > y),
            BinaryOp::Ge => truth(x >= y),
            BinaryOp::Lt => truth(x < y),
            BinaryOp::Le => truth(x <= y),
            BinaryOp::Eq => truth(x == y),
            BinaryOp::Ne => truth(x != y),
        }
    }
}

/// The NumPy broadcast of two shapes: align them on the right, pad the shorter with 1s, and take
/// `max(a_d, b_d)` per dimension, which requires `a_d == b_d` or one of them to be 1. `None` if
/// the shapes are not broadcastable.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for (d, o) in out.iter_mut().enumerate() {
        let ad = if d + a.len() >= r {
            a[d + a.len() - r]
        } else {
            1
        };
        let bd = if d + b.len() >= r {
            b[d + b.len() - r]
        } else {
            1
        };
        *o = if ad == bd || bd == 1 {
            ad
        } else if ad == 1 {
            bd
        } else {
            return None;
        };
    }
    Some(out)
}

/// Collapsed iteration plan for inputs broadcast to a contiguous `out` shape: dimensions of size
/// 1 are dropped and adjacent dimensions merged whenever every input stays linear across them.
/// Returns the dimensions and, per input, its element strides (0 along broadcast dimensions).
fn plan(inputs: &[&[usize]], out: &[usize]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let r = out.len();
    let mut full: Vec<Vec<usize>> = Vec::with_capacity(inputs.len());
    for shape in inputs {
        assert!(
            shape.len() <= r,
            "shape {shape:?} does not broadcast to {out:?}"
        );
        let lead = r - shape.len();
        let mut strides = vec![0; r];
        let mut s = 1;
        for d in (0..r).rev() {
            let size = if d >= lead { shape[d - lead] } else { 1 };
            if size == out[d] {
                strides[d] = s;
            } else {
                assert!(size == 1, "shape {shape:?} does not broadcast to {out:?}");
            }
            s *= size;
        }
        full.push(strides);
    }
    let mut dims: Vec<usize> = Vec::with_capacity(r);
    let mut strides: Vec<Vec<usize>> = vec![Vec::with_capacity(r); inputs.len()];
    for d in 0..r {
        if out[d] == 1 {
            continue;
        }
        let mergeable = !dims.is_empty()
            && full
                .iter()
                .zip(&strides)
                .all(|(f, s)| *s.last().unwrap() == f[d] * out[d]);
        if mergeable {
            *dims.last_mut().unwrap() *= out[d];
            for (f, s) in full.iter().zip(strides.iter_mut()) {
                *s.last_mut().unwrap() = f[d];
            }
        } else {
            dims.push(out[d]);
            for (f, s) in full.iter().zip(strides.iter_mut()) {
                s.push(f[d]);
            }
        }
    }
    if dims.is_empty() {
        dims.push(1);
        for s in strides.iter_mut() {
            s.push(0);
        }
    }
    (dims, strides)
}

/// Offsets into the inputs of row `row` of the plan's outer dimensions (all but the last).
#[inline]
fn row_offsets(row: usize, dims: &[usize], sa: &[usize], sb: &[usize]) -> (usize, usize) {
    let (mut rem, mut oa, mut ob) = (row, 0, 0);
    for d in (0..dims.len() - 1).rev() {
        let i = rem % dims[d];
        rem /= dims[d];
        oa += i * sa[d];
        ob += i * sb[d];
    }
    (oa, ob)
}

fn check_shapes(a_shape: &[usize], b_shape: &[usize], out_shape: &[usize]) {
    let expect = broadcast_shape(a_shape, b_shape)
        .unwrap_or_else(|| panic!("shapes {a_shape:?} and {b_shape:?} do not broadcast"));
    assert_eq!(
        expect, out_shape,
        "output shape is not the broadcast of {a_shape:?} and {b_shape:?}"
    );
}

/// `out = f(a, b)` elementwise with broadcasting (shapes already checked).
fn broadcast_map<T: Real, F: Fn(T, T) -> T + Sync + Send>(
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out: &mut [T],
    out_shape: &[usize],
    f: F,
) {
    assert_eq!(a.len(), numel(a_shape), "a does not match its shape");
    assert_eq!(b.len(), numel(b_shape), "b does not match its shape");
    assert_eq!(out.len(), numel(out_shape), "out does not match its shape");
    if out.is_empty() {
        return;
    }
    if a.len() == out.len() && b.len() == out.len() {
        return map2(a, b, out, f);
    }
    if b.len() == 1 && a.len() == out.len() {
        let y = b[0];
        return map1(a, out, |x| f(x, y));
    }
    if a.len() == 1 && b.len() == out.len() {
        let x = a[0];
        return map1(b, out, |y| f(x, y));
    }
    let (dims, s) = plan(&[a_shape, b_shape], out_shape);
    let (sa, sb) = (&s[0], &s[1]);
    let inner = *dims.last().unwrap();
    let (ia, ib) = (*sa.last().unwrap(), *sb.last().unwrap());
    for_rows(
        out,
        inner,
        inner,
        #[inline(always)]
        |row, o| {
            let (oa, ob) = row_offsets(row, &dims, sa, sb);
            match (ia, ib) {
                (0, 0) => o.fill(f(a[oa], b[ob])),
                (_, 0) => {
                    let y = b[ob];
                    for (o, &x) in o.iter_mut().zip(&a[oa..oa + inner]) {
                        *o = f(x, y);
                    }
                }
                (0, _) => {
                    let x = a[oa];
                    for (o, &y) in o.iter_mut().zip(&b[ob..ob + inner]) {
                        *o = f(x, y);
                    }
                }
                _ => {
                    for ((o, &x), &y) in
                        o.iter_mut().zip(&a[oa..oa + inner]).zip(&b[ob..ob + inner])
                    {
                        *o = f(x, y);
                    }
                }
            }
        },
    );
}

/// `out = f(dy, a, b)` elementwise, with `dy` and `out` of shape `out_shape` and `a`, `b`
/// broadcast to it (shapes already checked).
#[allow(clippy::too_many_arguments)]
fn broadcast_map3<T: Real, F: Fn(T, T, T) -> T + Sync + Send>(
    dy: &[T],
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out: &mut [T],
    out_shape: &[usize],
    f: F,
) {
    assert_eq!(dy.len(), out.len());
    if out.is_empty() {
        return;
    }
    if a.len() == out.len() && b.len() == out.len() {
        return map3(dy, a, b, out, f);
    }
    let (dims, s) = plan(&[a_shape, b_shape], out_shape);
    let (sa, sb) = (&s[0], &s[1]);
    let inner = *dims.last().unwrap();
    let (ia, ib) = (*sa.last().unwrap(), *sb.last().unwrap());
    for_rows(
        out,
        inner,
        inner,
        #[inline(always)]
        |row, o| {
            let (oa, ob) = row_offsets(row, &dims, sa, sb);
            let g = &dy[row * inner..(row + 1) * inner];
            match (ia, ib) {
                (0, 0) => {
                    let (x, y) = (a[oa], b[ob]);
                    for (o, &g) in o.iter_mut().zip(g) {
                        *o = f(g, x, y);
                    }
                }
                (_, 0) => {
                    let y = b[ob];
                    for ((o, &g), &x) in o.iter_mut().zip(g).zip(&a[oa..oa + inner]) {
                        *o = f(g, x, y);
                    }
                }
                (0, _) => {
                    let x = a[oa];
                    for ((o, &g), &y) in o.iter_mut().zip(g).zip(&b[ob..ob + inner]) {
                        *o = f(g, x, y);
                    }
                }
                _ => {
                    for (((o, &g), &x), &y) in o
                        .iter_mut()
                        .zip(g)
                        .zip(&a[oa..oa + inner])
                        .zip(&b[ob..ob + inner])
                    {
                        *o = f(g, x, y);
                    }
                }
            }
        },
    );
}

/// Elementwise `out = a ∘ b` for `op` ∈ {+, −, ·, /} with NumPy broadcasting:
/// `out[i] = a[i mod a_shape] ∘ b[i mod b_shape]`, where `i` ranges over `out_shape` and an index
/// is reduced to 0 along every dimension in which the operand has size 1 (or which it lacks, the
/// shapes being aligned on the right).
///
/// `out_shape` must equal [`broadcast_shape`]`(a_shape, b_shape)`; each slice must have the
/// length of its shape. Fast paths: equal shapes, a single-element operand, and any pattern that
/// collapses to a contiguous inner row (e.g. a bias `[d]` against `[rows, d]`).
pub fn binary<T: Real>(
    op: BinaryOp,
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out: &mut [T],
    out_shape: &[usize],
) {
    check_shapes(a_shape, b_shape, out_shape);
    match op {
        BinaryOp::Add => broadcast_map(a, a_shape, b, b_shape, out, out_shape, |x, y| x + y),
        BinaryOp::Sub => broadcast_map(a, a_shape, b, b_shape, out, out_shape, |x, y| x - y),
        BinaryOp::Mul => broadcast_map(a, a_shape, b, b_shape, out, out_shape, |x, y| x * y),
        BinaryOp::Div => broadcast_map(a, a_shape, b, b_shape, out, out_shape, |x, y| x / y),
        other => broadcast_map(a, a_shape, b, b_shape, out, out_shape, move |x, y| {
            other.apply(x, y)
        }),
    }
}

/// `out = c ? a : b` elementwise, with `c`, `a`, `b` and `out` of one length (`c` nonzero
/// meaning true). The gradient is `dy·c` for `a` and `dy·(1 − c)` for `b`, which the engine
/// writes with products, so a non-finite value in the branch not taken never leaks into it.
pub fn select<T: Real>(c: &[T], a: &[T], b: &[T], out: &mut [T]) {
    assert!(c.len() == out.len() && a.len() == out.len() && b.len() == out.len());
    crate::util::map3(c, a, b, out, |c, x, y| if c != T::zero() { x } else { y });
}

/// Broadcasting `out = a + b`; see [`binary`].
pub fn add<T: Real>(
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out: &mut [T],
    out_shape: &[usize],
) {
    binary(BinaryOp::Add, a, a_shape, b, b_shape, out, out_shape);
}

/// Broadcasting `out = a − b`; see [`binary`].
pub fn sub<T: Real>(
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out: &mut [T],
    out_shape: &[usize],
) {
    binary(BinaryOp::Sub, a, a_shape, b, b_shape, out, out_shape);
}

/// Broadcasting `out = a · b`; see [`binary`].
pub fn mul<T: Real>(
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out: &mut [T],
    out_shape: &[usize],
) {
    binary(BinaryOp::Mul, a, a_shape, b, b_shape, out, out_shape);
}

/// Broadcasting `out = a / b`; see [`binary`].
pub fn div<T: Real>(
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out: &mut [T],
    out_shape: &[usize],
) {
    binary(BinaryOp::Div, a, a_shape, b, b_shape, out, out_shape);
}

/// Backward of [`binary`]: given `dy = ∂L/∂out` (shape `out_shape`), overwrites
///
/// * `da = sum_to(∂out/∂a · dy, a_shape)`, `db = sum_to(∂out/∂b · dy, b_shape)`, where
///   `∂out/∂a` is `1, 1, b, 1/b` and `∂out/∂b` is `1, −1, a, −a/b²` for `add, sub, mul, div`.
///
/// Either output may be `None` (not needed). Allocates one `out_shape`-sized temporary per
/// requested gradient only when that operand is broadcast (smaller than the output) and the
/// operator is `mul` or `div`.
#[allow(clippy::too_many_arguments)]
pub fn binary_backward<T: Real>(
    op: BinaryOp,
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    dy: &[T],
    out_shape: &[usize],
    da: Option<&mut [T]>,
    db: Option<&mut [T]>,
) {
    check_shapes(a_shape, b_shape, out_shape);
    assert_eq!(a.len(), numel(a_shape), "a does not match its shape");
    assert_eq!(b.len(), numel(b_shape), "b does not match its shape");
    assert_eq!(
        dy.len(),
        numel(out_shape),
        "dy does not match the output shape"
    );
    match op {
        BinaryOp::Add | BinaryOp::Sub => {
            if let Some(da) = da {
                sum_to(dy, out_shape, da, a_shape);
            }
            if let Some(db) = db {
                sum_to(dy, out_shape, db, b_shape);
                if op == BinaryOp::Sub {
                    crate::util::map_inplace(db, |x| -x);
                }
            }
        }
        BinaryOp::Mul => {
            if let Some(da) = da {
                grad_into(
                    dy,
                    a,
                    a_shape,
                    b,
                    b_shape,
                    out_shape,
                    da,
                    a_shape,
                    |g, _, y| g * y,
                );
            }
            if let Some(db) = db {
                grad_into(
                    dy,
                    a,
                    a_shape,
                    b,
                    b_shape,
                    out_shape,
                    db,
                    b_shape,
                    |g, x, _| g * x,
                );
            }
        }
        BinaryOp::Div => {
            if let Some(da) = da {
                grad_into(
                    dy,
                    a,
                    a_shape,
                    b,
                    b_shape,
                    out_shape,
                    da,
                    a_shape,
                    |g, _, y| g / y,
                );
            }
            if let Some(db) = db {
                grad_into(
                    dy,
                    a,
                    a_shape,
                    b,
                    b_shape,
                    out_shape,
                    db,
                    b_shape,
                    |g, x, y| -(g * x) / (y * y),
                );
            }
        }
        BinaryOp::Max | BinaryOp::Min => {
            let first = move |x: T, y: T| {
                if op == BinaryOp::Max {
                    x >= y
                } else {
                    x <= y
                }
            };
            if let Some(da) = da {
                grad_into(
                    dy,
                    a,
                    a_shape,
                    b,
                    b_shape,
                    out_shape,
                    da,
                    a_shape,
                    move |g, x, y| {
                        if first(x, y) {
                            g
                        } else {
                            T::zero()
                        }
                    },
                );
            }
            if let Some(db) = db {
                grad_into(
                    dy,
                    a,
                    a_shape,
                    b,
                    b_shape,
                    out_shape,
                    db,
                    b_shape,
                    move |g, x, y| {
                        if first(x, y) {
                            T::zero()
                        } else {
                            g
                        }
                    },
                );
            }
        }
        _ => {
            // Comparisons are piecewise constant: no gradient.
            if let Some(da) = da {
                da.fill(T::zero());
            }
            if let Some(db) = db {
                db.fill(T::zero());
            }
        }
    }
}

/// One operand's gradient: `d = sum_to(f(dy, a, b), shape)`, with `f` evaluated on the output
/// shape (through a temporary only when `shape` is smaller than the output).
#[allow(clippy::too_many_arguments)]
fn grad_into<T: Real, F: Fn(T, T, T) -> T + Sync + Send>(
    dy: &[T],
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out_shape: &[usize],
    d: &mut [T],
    shape: &[usize],
    f: F,
) {
    assert_eq!(
        d.len(),
        numel(shape),
        "gradient does not match its operand's shape"
    );
    if d.len() == dy.len() {
        broadcast_map3(dy, a, a_shape, b, b_shape, d, out_shape, f);
    } else {
        let mut tmp = vec![T::zero(); dy.len()];
        broadcast_map3(dy, a, a_shape, b, b_shape, &mut tmp, out_shape, f);
        sum_to(&tmp, out_shape, d, shape);
    }
}

/// Repeats `x` (shape `x_shape`) to `out_shape` (NumPy broadcasting: along dimensions where
/// `x` has size 1 or which it lacks): `out[i] = x[i mod x_shape]`. The adjoint of [`sum_to`].
/// `x_shape` must broadcast to `out_shape`.
pub fn broadcast_to<T: Real>(x: &[T], x_shape: &[usize], out: &mut [T], out_shape: &[usize]) {
    check_shapes(x_shape, out_shape, out_shape);
    broadcast_map(x, x_shape, &[T::zero()], &[], out, out_shape, |v, _| v);
}

/// Sums `x` (shape `x_shape`) down to `out_shape`, the gradient of broadcasting `out_shape` to
/// `x_shape`: `out[j] = Σ { x[i] : i ∈ x_shape, i mod out_shape = j }`, the reduction running
/// over every dimension where `out_shape` has size 1 or is missing (shapes aligned on the right).
///
/// `out_shape` must broadcast to `x_shape` ([`broadcast_shape`]`(out_shape, x_shape) ==
/// x_shape`). Overwrites `out`.
pub fn sum_to<T: Real>(x: &[T], x_shape: &[usize], out: &mut [T], out_shape: &[usize]) {
    assert_eq!(x.len(), numel(x_shape), "x does not match its shape");
    assert_eq!(out.len(), numel(out_shape), "out does not match its shape");
    let (dims, s) = plan(&[out_shape], x_shape);
    if out.len() == x.len() {
        out.copy_from_slice(x);
        return;
    }
    out.fill(T::zero());
    if x.is_empty() {
        return;
    }
    let so = &s[0];
    let r = dims.len();
    let large = x.len() >= PAR_MIN_WORK;
    if r == 1 {
        // Everything to one element.
        out[0] = sum_slice(x);
    } else if r == 2 && so[0] == 0 && so[1] == 1 {
        // [rows, cols] -> [cols]: a bias gradient.
        column_sums(x, dims[0], dims[1], out);
    } else if r == 2 && so[0] == 1 && so[1] == 0 {
        // [rows, cols] -> [rows].
        let cols = dims[1];
        for_rows(out, 1, cols, |i, o| {
            o[0] = sum_slice(&x[i * cols..(i + 1) * cols])
        });
    } else if large && so[0] != 0 && dims[0] > 1 {
        // Independent blocks along the first (kept) dimension.
        let xb = x.len() / dims[0];
        out.par_chunks_mut(so[0])
            .zip(x.par_chunks(xb))
            .for_each(|(o, x)| sum_to_serial(x, o, &dims[1..], &so[1..]));
    } else {
        sum_to_serial(x, out, &dims, so);
    }
}

/// `out[c] = Σ_r x[r, c]` for `x: [rows, cols]`, `out` zeroed.
fn column_sums<T: Real>(x: &[T], rows: usize, cols: usize, out: &mut [T]) {
    const BLOCK: usize = 128;
    let add_rows = |c0: usize, o: &mut [T], r0: usize, r1: usize| {
        for r in r0..r1 {
            let row = &x[r * cols + c0..r * cols + c0 + o.len()];
            for (o, &v) in o.iter_mut().zip(row) {
                *o = *o + v;
            }
        }
    };
    if x.len() < PAR_MIN_WORK {
        add_rows(0, out, 0, rows);
    } else if cols >= 2 * BLOCK {
        out.par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(b, o)| add_rows(b * BLOCK, o, 0, rows));
    } else {
        // Few columns, many rows: partial sums over fixed row chunks, added in order.
        let chunk = (PAR_MIN_WORK / cols).max(1);
        let partial: Vec<Vec<T>> = (0..rows.div_ceil(chunk))
            .into_par_iter()
            .map(|c| {
                let mut p = vec![T::zero(); cols];
                add_rows(0, &mut p, c * chunk, ((c + 1) * chunk).min(rows));
                p
            })
            .collect();
        for p in partial {
            for (o, v) in out.iter_mut().zip(p) {
                *o = *o + v;
            }
        }
    }
}

/// Serial `sum_to` over a collapsed plan; `out` must be zeroed.
fn sum_to_serial<T: Real>(x: &[T], out: &mut [T], dims: &[usize], so: &[usize]) {
    let Some((&inner, outer)) = dims.split_last() else {
        out[0] = out[0] + x[0];
        return;
    };
    let kept = so[dims.len() - 1] != 0;
    let mut idx = vec![0usize; outer.len()];
    let mut off = 0usize;
    for row in x.chunks_exact(inner) {
        if kept {
            for (o, &v) in out[off..off + inner].iter_mut().zip(row) {
                *o = *o + v;
            }
        } else {
            out[off] = out[off] + sum_slice(row);
        }
        // Advance the odometer over the outer dimensions.
        for d in (0..outer.len()).rev() {
            idx[d] += 1;
            off += so[d];
            if idx[d] < outer[d] {
                break;
            }
            off -= so[d] * outer[d];
            idx[d] = 0;
        }
    }
}
