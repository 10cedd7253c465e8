//! Data movement: permutation (N-d transpose), concatenation and split along an axis, row
//! gathers with their scatter-add backward, and embedding lookups.

use rayon::prelude::*;

use crate::util::{for_rows, PAR_MIN_WORK};
use crate::Real;

/// Offset of the `idx`-th element (row-major over `dims`) in a layout with `strides`.
#[inline]
fn offset(mut idx: usize, dims: &[usize], strides: &[usize]) -> usize {
    let mut off = 0;
    for d in (0..dims.len()).rev() {
        off += (idx % dims[d]) * strides[d];
        idx /= dims[d];
    }
    off
}

/// Permutes the axes of `x` (shape `shape`) into `out`, whose shape is
/// `[shape[perm[0]], …, shape[perm[r-1]]]`: `out[i_0, …, i_(r-1)] = x[j]` with `j[perm[a]] = i_a`
/// (NumPy's `transpose(x, perm)` / PyTorch's `permute`, made contiguous).
///
/// Dimensions are collapsed first, so e.g. `[B, T, H, D] → [B, H, T, D]` (`perm = [0, 2, 1, 3]`)
/// copies contiguous rows of `D`, and swapping the two last axes runs as a tiled transpose.
pub fn permute<T: Copy + Send + Sync>(x: &[T], shape: &[usize], perm: &[usize], out: &mut [T]) {
    let r = shape.len();
    assert_eq!(perm.len(), r, "permute: perm has the wrong rank");
    let mut seen = vec![false; r];
    for &p in perm {
        assert!(p < r && !seen[p], "permute: {perm:?} is not a permutation");
        seen[p] = true;
    }
    let n: usize = shape.iter().product();
    assert_eq!(x.len(), n, "permute: x does not match its shape");
    assert_eq!(out.len(), n, "permute: out has the wrong length");
    if n == 0 {
        return;
    }
    let mut in_strides = vec![1; r];
    for d in (0..r.saturating_sub(1)).rev() {
        in_strides[d] = in_strides[d + 1] * shape[d + 1];
    }
    // Output dimensions with their strides in x, size-1 dimensions dropped, linear runs merged.
    let mut dims: Vec<usize> = Vec::with_capacity(r);
    let mut ss: Vec<usize> = Vec::with_capacity(r);
    for &p in perm {
        let (size, stride) = (shape[p], in_strides[p]);
        if size == 1 {
            continue;
        }
        match (dims.last_mut(), ss.last_mut()) {
            (Some(ld), Some(ls)) if *ls == stride * size => {
                *ld *= size;
                *ls = stride;
            }
            _ => {
                dims.push(size);
                ss.push(stride);
            }
        }
    }
    if dims.len() <= 1 {
        out.copy_from_slice(x);
        return;
    }
    let rank = dims.len();
    let inner = dims[rank - 1];
    let inner_stride = ss[rank - 1];
    let outer_dims = &dims[..rank - 1];
    let outer_strides = &ss[..rank - 1];
    if inner_stride == 1 {
        // Copy contiguous rows.
        for_rows(out, inner, inner, |row, o| {
            let off = offset(row, outer_dims, outer_strides);
            o.copy_from_slice(&x[off..off + inner]);
        });
    } else if ss[rank - 2] == 1 {
        // A batch of 2-d transposes: out[b][p][l] = x[base_b + p + l·inner_stride].
        let p_len = dims[rank - 2];
        let block = p_len * inner;
        let batch_dims = &dims[..rank - 2];
        let batch_strides = &ss[..rank - 2];
        const TP: usize = 16;
        let tile = |base: usize, p0: usize, o: &mut [T]| {
            // `o` holds output rows p0.. of one block.
            let rows = o.len() / inner;
            for l0 in (0..inner).step_by(TP) {
                let l1 = (l0 + TP).min(inner);
                for p in 0..rows {
                    let src = base + p0 + p;
                    let dst = &mut o[p * inner + l0..p * inner + l1];
                    for (l, d) in (l0..l1).zip(dst.iter_mut()) {
                        *d = x[src + l * inner_stride];
                    }
                }
            }
        };
        let blocks = n / block;
        if blocks > 1 {
            for_rows(out, block, block, |b, o| {
                let base = offset(b, batch_dims, batch_strides);
                for (g, o) in o.chunks_mut(TP * inner).enumerate() {
                    tile(base, g * TP, o);
                }
            });
        } else if n >= PAR_MIN_WORK {
            out.par_chunks_mut(TP * inner)
                .enumerate()
                .for_each(|(g, o)| tile(0, g * TP, o));
        } else {
            for (g, o) in out.chunks_mut(TP * inner).enumerate() {
                tile(0, g * TP, o);
            }
        }
    } else {
        // General strided gather.
        for_rows(out, inner, inner, |row, o| {
            let off = offset(row, outer_dims, outer_strides);
            for (l, d) in o.iter_mut().enumerate() {
                *d = x[off + l * inner_stride];
            }
        });
    }
}

/// Concatenates `parts` along an axis. Part `p` is viewed as `[outer, sizes[p], inner]` and
/// `out` as `[outer, Σ sizes, inner]`:
/// `out[o, S_p + j, i] = parts[p][o, j, i]` with `S_p = Σ_{q<p} sizes[q]`.
pub fn concat<T: Copy + Send + Sync>(
    parts: &[&[T]],
    outer: usize,
    sizes: &[usize],
    inner: usize,
    out: &mut [T],
) {
    assert_eq!(parts.len(), sizes.len(), "concat: one size per part");
    for (p, (part, &s)) in parts.iter().zip(sizes).enumerate() {
        assert_eq!(
            part.len(),
            outer * s * inner,
            "concat: part {p} is not [outer, sizes[{p}], inner]"
        );
    }
    let total: usize = sizes.iter().sum();
    assert_eq!(
        out.len(),
        outer * total * inner,
        "concat: out is not [outer, Σ sizes, inner]"
    );
    let row = total * inner;
    for_rows(out, row, row, |o, dst| {
        let mut off = 0;
        for (part, &s) in parts.iter().zip(sizes) {
            let len = s * inner;
            dst[off..off + len].copy_from_slice(&part[o * len..(o + 1) * len]);
            off += len;
        }
    });
}

/// Splits `x`, viewed as `[outer, Σ sizes, inner]`, along the middle axis into `outs`
/// (part `p` is `[outer, sizes[p], inner]`): `outs[p][o, j, i] = x[o, S_p + j, i]` with
/// `S_p = Σ_{q<p} sizes[q]`. The backward of [`concat()`], and [`concat()`] is the backward of
/// this.
pub fn split<T: Copy + Send + Sync>(
    x: &[T],
    outer: usize,
    sizes: &[usize],
    inner: usize,
    outs: &mut [&mut [T]],
) {
    assert_eq!(outs.len(), sizes.len(), "split: one size per part");
    let total: usize = sizes.iter().sum();
    assert_eq!(
        x.len(),
        outer * total * inner,
        "split: x is not [outer, Σ sizes, inner]"
    );
    let mut starts = Vec::with_capacity(sizes.len());
    let mut acc = 0;
    for (p, (o, &s)) in outs.iter().zip(sizes).enumerate() {
        assert_eq!(
            o.len(),
            outer * s * inner,
            "split: part {p} is not [outer, sizes[{p}], inner]"
        );
        starts.push(acc);
        acc += s;
    }
    let row = total * inner;
    let one = |(p, dst): (usize, &mut &mut [T])| {
        let (len, start) = (sizes[p] * inner, starts[p] * inner);
        if len == 0 {
            return;
        }
        for (o, d) in dst.chunks_exact_mut(len).enumerate() {
            d.copy_from_slice(&x[o * row + start..o * row + start + len]);
        }
    };
    if x.len() >= PAR_MIN_WORK && outs.len() > 1 {
        outs.par_iter_mut().enumerate().for_each(one);
    } else {
        outs.iter_mut().enumerate().for_each(one);
    }
}

/// Gathers rows within each batch item: `x: [batch, t, w]`, `index: [batch, k]` (values `< t`),
/// `out: [batch, k, w]`, `out[b, j, :] = x[b, index[b, j], :]`. Panics on an index `>= t`.
pub fn gather_rows<T: Copy + Send + Sync, I: Index>(
    x: &[T],
    index: &[I],
    out: &mut [T],
    batch: usize,
    t: usize,
    k: usize,
    w: usize,
) {
    assert_eq!(
        x.len(),
        batch * t * w,
        "gather_rows: x is not [batch, t, w]"
    );
    assert_eq!(
        index.len(),
        batch * k,
        "gather_rows: index is not [batch, k]"
    );
    assert_eq!(
        out.len(),
        batch * k * w,
        "gather_rows: out is not [batch, k, w]"
    );
    if k == 0 {
        return;
    }
    for_rows(out, w, w, |row, o| {
        let (b, src) = (row / k, index[row].index());
        assert!(src < t, "gather_rows: index {src} out of range for t = {t}");
        let start = (b * t + src) * w;
        o.copy_from_slice(&x[start..start + w]);
    });
}

/// Backward of [`gather_rows`], **accumulating**: `dx[b, index[b, j], :] += dout[b, j, :]` for
/// every `b < batch`, `j < k` (repeated indices add up). `dout: [batch, k, w]`,
/// `dx: [batch, t, w]` — zero it first for a plain gradient.
pub fn scatter_add_rows<T: Real, I: Index>(
    dout: &[T],
    index: &[I],
    dx: &mut [T],
    batch: usize,
    t: usize,
    k: usize,
    w: usize,
) {
    assert_eq!(
        dout.len(),
        batch * k * w,
        "scatter_add_rows: dout is not [batch, k, w]"
    );
    assert_eq!(
        index.len(),
        batch * k,
        "scatter_add_rows: index is not [batch, k]"
    );
    assert_eq!(
        dx.len(),
        batch * t * w,
        "scatter_add_rows: dx is not [batch, t, w]"
    );
    if t == 0 || w == 0 {
        assert!(
            k == 0 || w == 0 || batch == 0,
            "scatter_add_rows: index into an empty axis"
        );
        return;
    }
    for_rows(dx, t * w, k * w, |b, dxb| {
        for j in 0..k {
            let dst = index[b * k + j].index();
            assert!(
                dst < t,
                "scatter_add_rows: index {dst} out of range for t = {t}"
            );
            let src = &dout[(b * k + j) * w..(b * k + j + 1) * w];
            for (d, &g) in dxb[dst * w..(dst + 1) * w].iter_mut().zip(src) {
                *d = *d + g;
            }
        }
    });
}

/// Embedding lookup: `table: [v, w]`, `ids: [n]` (values `< v`), `out: [n, w]`,
/// `out[i, :] = table[ids[i], :]`. Panics on an id `>= v`.
pub fn embedding<T: Copy + Send + Sync, I: Index>(
    table: &[T],
    ids: &[I],
    out: &mut [T],
    v: usize,
    w: usize,
) {
    assert_eq!(table.len(), v * w, "embedding: table is not [v, w]");
    assert_eq!(
        out.len(),
        ids.len() * w,
        "embedding: out is not [ids.len(), w]"
    );
    for_rows(out, w, w, |i, o| {
        let id = ids[i].index();
        assert!(id < v, "embedding: id {id} out of range for v = {v}");
        o.copy_from_slice(&table[id * w..(id + 1) * w]);
    });
}

/// Backward of [`embedding`], **accumulating**: `dtable[ids[i], :] += dout[i, :]` for every
/// `i < n` (in increasing `i`, so results are deterministic). `dout: [n, w]`,
/// `dtable: [v, w]` — zero it first for a plain gradient.
pub fn embedding_backward<T: Real, I: Index>(
    dout: &[T],
    ids: &[I],
    dtable: &mut [T],
    v: usize,
    w: usize,
) {
    assert_eq!(
        dtable.len(),
        v * w,
        "embedding_backward: dtable is not [v, w]"
    );
    assert_eq!(
        dout.len(),
        ids.len() * w,
        "embedding_backward: dout is not [ids.len(), w]"
    );
    if let Some(bad) = ids.iter().map(|id| id.index()).find(|&id| id >= v) {
        panic!("embedding_backward: id {bad} out of range for v = {v}");
    }
    if w == 0 {
        return;
    }
    // Each task owns a range of table rows and scans all ids for the ones it owns.
    let add = |row0: usize, dt: &mut [T]| {
        let rows = dt.len() / w;
        for (i, id) in ids.iter().enumerate() {
            let id = id.index();
            if id >= row0 && id < row0 + rows {
                let dst = &mut dt[(id - row0) * w..(id - row0 + 1) * w];
                for (d, &g) in dst.iter_mut().zip(&dout[i * w..(i + 1) * w]) {
                    *d = *d + g;
                }
            }
        }
    };
    if dout.len() < PAR_MIN_WORK || v < 2 {
        add(0, dtable);
    } else {
        let tasks = 2 * rayon::current_num_threads();
        let rows_per = v.div_ceil(tasks);
        dtable
            .par_chunks_mut(rows_per * w)
            .enumerate()
            .for_each(|(c, dt)| add(c * rows_per, dt));
    }
}

/// An index operand: token ids, row indices. The engine keeps integers as exact `f32`/`f64`
/// values in its float tensors, so floats index too (their value, which must be a
/// non-negative integer; anything else panics).
pub trait Index: Copy + Send + Sync {
    /// The index as a `usize`.
    fn index(self) -> usize;
}

impl Index for usize {
    #[inline(always)]
    fn index(self) -> usize {
        self
    }
}

impl Index for u32 {
    #[inline(always)]
    fn index(self) -> usize {
        self as usize
    }
}

impl Index for f32 {
    #[inline(always)]
    fn index(self) -> usize {
        // Exact: every f32 is an f64.
        f64::from(self).index()
    }
}

impl Index for f64 {
    #[inline(always)]
    fn index(self) -> usize {
        assert!(
            self >= 0.0 && self.fract() == 0.0,
            "index {self} is not a non-negative integer"
        );
        self as usize
    }
}
