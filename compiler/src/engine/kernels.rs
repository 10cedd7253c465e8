//! The dispatch from engine operations to CPU kernels. Each operation reads its inputs as
//! contiguous row-major f32 slices with the static shapes recorded at compile time and
//! returns a new buffer.

use super::graph::{numel, Binary, Op, Reduce, Unary};
use rayon::prelude::*;

/// Below this many elements a loop runs on one thread: spreading it costs more than it saves.
const PARALLEL: usize = 1 << 15;

/// Maps `f` over `x`, in parallel when large.
fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    if x.len() >= PARALLEL {
        x.par_iter().map(|&v| f(v)).collect()
    } else {
        x.iter().map(|&v| f(v)).collect()
    }
}

fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    if a.len() >= PARALLEL {
        a.par_iter()
            .zip(b.par_iter())
            .map(|(&x, &y)| f(x, y))
            .collect()
    } else {
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
    }
}

/// Runs one operation.
pub fn run(op: &Op, inputs: &[&[f32]], shapes: &[Vec<usize>], out_shape: &[usize]) -> Vec<f32> {
    let n = numel(out_shape);
    match op {
        Op::Fill(v) => vec![*v; n],
        Op::Eye => {
            let (r, c) = (out_shape[0], out_shape[1]);
            let mut out = vec![0.0; n];
            for i in 0..r.min(c) {
                out[i * c + i] = 1.0;
            }
            out
        }
        Op::CausalMask => {
            let l = out_shape[0];
            let mut out = vec![0.0; n];
            for i in 0..l {
                for j in i + 1..l {
                    out[i * l + j] = f32::MIN;
                }
            }
            out
        }
        Op::Unary(f) => {
            let mut out = vec![0.0; n];
            kdc_cpu::unary(cpu_unary(*f), inputs[0], &mut out);
            out
        }
        Op::UnaryBackward(f) => {
            let mut dx = vec![0.0; n];
            kdc_cpu::unary_backward(cpu_unary(*f), inputs[0], inputs[1], inputs[2], &mut dx);
            dx
        }
        Op::Binary(f) => binary(*f, inputs[0], &shapes[0], inputs[1], &shapes[1], out_shape),
        Op::MatMul { ta, tb } => matmul(
            inputs[0], &shapes[0], *ta, inputs[1], &shapes[1], *tb, out_shape,
        ),
        Op::Permute(perm) => {
            let mut out = vec![0.0; n];
            kdc_cpu::permute(inputs[0], &shapes[0], perm, &mut out);
            out
        }
        Op::Reshape | Op::Detach => inputs[0].to_vec(),
        Op::Broadcast => binary(Binary::Add, inputs[0], &shapes[0], &[0.0], &[], out_shape),
        Op::SumTo => sum_to(inputs[0], &shapes[0], out_shape),
        Op::Reduce { kind, axis } => reduce(*kind, *axis, inputs[0], &shapes[0]),
        Op::ReduceBackward { kind, axis } => {
            reduce_backward(*kind, *axis, inputs[0], &shapes[0], inputs[1])
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            let (outer, len, inner) = kdc_cpu::axis_dims(&shapes[0], *axis);
            let mut out = vec![0.0; n];
            if matches!(op, Op::Softmax { .. }) {
                kdc_cpu::softmax(inputs[0], &mut out, outer, len, inner);
            } else {
                kdc_cpu::log_softmax(inputs[0], &mut out, outer, len, inner);
            }
            out
        }
        Op::SoftmaxBackward { axis } | Op::LogSoftmaxBackward { axis } => {
            let (outer, len, inner) = kdc_cpu::axis_dims(&shapes[0], *axis);
            let mut dx = vec![0.0; n];
            if matches!(op, Op::SoftmaxBackward { .. }) {
                kdc_cpu::softmax_backward(inputs[0], inputs[1], &mut dx, outer, len, inner);
            } else {
                kdc_cpu::log_softmax_backward(inputs[0], inputs[1], &mut dx, outer, len, inner);
            }
            dx
        }
        Op::Normalize { axis } => {
            let (outer, len, inner) = kdc_cpu::axis_dims(&shapes[0], *axis);
            let mut out = vec![0.0; n];
            kdc_cpu::l2_normalize(
                inputs[0],
                &mut out,
                outer,
                len,
                inner,
                kdc_cpu::NORMALIZE_EPS as f32,
            );
            out
        }
        Op::NormalizeBackward { axis } => {
            let (outer, len, inner) = kdc_cpu::axis_dims(&shapes[0], *axis);
            let mut dx = vec![0.0; n];
            kdc_cpu::l2_normalize_backward(
                inputs[0],
                inputs[1],
                &mut dx,
                outer,
                len,
                inner,
                kdc_cpu::NORMALIZE_EPS as f32,
            );
            dx
        }
        Op::LayerNorm { eps } => {
            let d = *out_shape.last().unwrap();
            let rows = n / d;
            let (mut out, mut mean, mut rstd) = (vec![0.0; n], vec![0.0; rows], vec![0.0; rows]);
            kdc_cpu::layer_norm(
                inputs[0], inputs[1], inputs[2], &mut out, &mut mean, &mut rstd, rows, d, *eps,
            );
            out
        }
        Op::LayerNormBackward { eps } | Op::LayerNormParamGrads { eps } => {
            // The statistics are recomputed from x (a forward into scratch), then one backward
            // kernel gives dx and the parameters' gradients; each op keeps what it needs.
            let (x, dy) = (inputs[0], *inputs.last().unwrap());
            let d = *shapes[0].last().unwrap();
            let rows = x.len() / d;
            let ones = vec![1.0; d];
            let gain = if inputs.len() == 3 { inputs[1] } else { &ones };
            let zeros = vec![0.0; d];
            let (mut scratch, mut mean, mut rstd) =
                (vec![0.0; x.len()], vec![0.0; rows], vec![0.0; rows]);
            kdc_cpu::layer_norm(
                x,
                gain,
                &zeros,
                &mut scratch,
                &mut mean,
                &mut rstd,
                rows,
                d,
                *eps,
            );
            let (mut dgain, mut dbias) = (vec![0.0; d], vec![0.0; d]);
            kdc_cpu::layer_norm_backward(
                x,
                gain,
                &mean,
                &rstd,
                dy,
                &mut scratch,
                &mut dgain,
                &mut dbias,
                rows,
                d,
            );
            if matches!(op, Op::LayerNormBackward { .. }) {
                scratch
            } else {
                dgain.extend(dbias);
                dgain
            }
        }
        Op::Embedding => {
            let w = shapes[0][1];
            let mut out = Vec::with_capacity(n);
            for &id in inputs[1] {
                let r = id as usize;
                out.extend_from_slice(&inputs[0][r * w..(r + 1) * w]);
            }
            out
        }
        Op::EmbeddingBackward => {
            let w = out_shape[1];
            let mut out = vec![0.0; n];
            for (k, &id) in inputs[0].iter().enumerate() {
                let r = id as usize;
                for j in 0..w {
                    out[r * w + j] += inputs[1][k * w + j];
                }
            }
            out
        }
        Op::GatherRows => {
            let (b, t, w) = (shapes[0][0], shapes[0][1], shapes[0][2]);
            let k = shapes[1][1];
            let mut out = Vec::with_capacity(n);
            for i in 0..b {
                for j in 0..k {
                    let r = inputs[1][i * k + j] as usize;
                    out.extend_from_slice(&inputs[0][(i * t + r) * w..(i * t + r + 1) * w]);
                }
            }
            out
        }
        Op::ScatterRows => {
            let (b, t, w) = (out_shape[0], out_shape[1], out_shape[2]);
            let k = shapes[0][1];
            let mut out = vec![0.0; n];
            for i in 0..b {
                for j in 0..k {
                    let r = inputs[0][i * k + j] as usize;
                    for c in 0..w {
                        out[(i * t + r) * w + c] += inputs[1][(i * k + j) * w + c];
                    }
                }
            }
            out
        }
        Op::Concat { axis } => {
            let outer: usize = out_shape[..*axis].iter().product();
            let inner: usize = out_shape[axis + 1..].iter().product();
            let (a, b) = (shapes[0][*axis] * inner, shapes[1][*axis] * inner);
            let mut out = Vec::with_capacity(n);
            for o in 0..outer {
                out.extend_from_slice(&inputs[0][o * a..(o + 1) * a]);
                out.extend_from_slice(&inputs[1][o * b..(o + 1) * b]);
            }
            out
        }
        Op::Slice { axis, start } => {
            let outer: usize = out_shape[..*axis].iter().product();
            let inner: usize = out_shape[axis + 1..].iter().product();
            let (full, len) = (shapes[0][*axis] * inner, out_shape[*axis] * inner);
            let mut out = Vec::with_capacity(n);
            for o in 0..outer {
                out.extend_from_slice(
                    &inputs[0][o * full + start * inner..o * full + start * inner + len],
                );
            }
            out
        }
        Op::SliceBackward { axis, start } => {
            let outer: usize = out_shape[..*axis].iter().product();
            let inner: usize = out_shape[axis + 1..].iter().product();
            let (full, len) = (out_shape[*axis] * inner, shapes[0][*axis] * inner);
            let mut out = vec![0.0; n];
            for o in 0..outer {
                out[o * full + start * inner..o * full + start * inner + len]
                    .copy_from_slice(&inputs[0][o * len..(o + 1) * len]);
            }
            out
        }
        Op::Mse
        | Op::L1
        | Op::SmoothL1 { .. }
        | Op::Kl
        | Op::CrossEntropyDiagonal
        | Op::CrossEntropySoft => vec![loss(op, inputs, shapes) as f32],
        Op::LossBackward { loss: l, which } => loss_backward(l, *which, inputs, shapes),
        Op::Param(_) | Op::Input(_) | Op::Scalar(_) => unreachable!("sources are set, not run"),
    }
}

fn cpu_unary(f: Unary) -> kdc_cpu::UnaryOp {
    match f {
        Unary::Neg => kdc_cpu::UnaryOp::Neg,
        Unary::Exp => kdc_cpu::UnaryOp::Exp,
        Unary::Log => kdc_cpu::UnaryOp::Log,
        Unary::Sqrt => kdc_cpu::UnaryOp::Sqrt,
        Unary::Abs => kdc_cpu::UnaryOp::Abs,
        Unary::Gelu => kdc_cpu::UnaryOp::Gelu,
        Unary::QuickGelu => kdc_cpu::UnaryOp::QuickGelu,
    }
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides of `shape` broadcast to `out` (0 along broadcast axes).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let s = strides(shape);
    let offset = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < offset || shape[i - offset] == 1 && out[i] != 1 {
                0
            } else {
                s[i - offset]
            }
        })
        .collect()
}

fn binary(
    f: Binary,
    a: &[f32],
    sa: &[usize],
    b: &[f32],
    sb: &[usize],
    out_shape: &[usize],
) -> Vec<f32> {
    let apply = |x: f32, y: f32| match f {
        Binary::Add => x + y,
        Binary::Sub => x - y,
        Binary::Mul => x * y,
        Binary::Div => x / y,
    };
    let n = numel(out_shape);
    if sa == sb {
        return zip_map(a, b, apply);
    }
    if b.len() == 1 && a.len() == n {
        let y = b[0];
        return map(a, |x| apply(x, y));
    }
    if a.len() == 1 && b.len() == n {
        let x = a[0];
        return map(b, |y| apply(x, y));
    }
    // A row (a bias, a mask) repeated over the leading axes of the other operand.
    let trailing = |small: &[usize], big: &[usize]| {
        let s: Vec<usize> = small.iter().copied().skip_while(|&d| d == 1).collect();
        !s.is_empty()
            && big.len() >= s.len()
            && big[big.len() - s.len()..] == s[..]
            && numel(big) == n
    };
    if trailing(sb, sa) {
        let w = b.len();
        let mut out = vec![0.0; n];
        let row = |(o, x): (&mut [f32], &[f32])| {
            o.iter_mut()
                .zip(x)
                .zip(b)
                .for_each(|((o, &x), &y)| *o = apply(x, y))
        };
        if n >= PARALLEL {
            out.par_chunks_mut(w).zip(a.par_chunks(w)).for_each(row);
        } else {
            out.chunks_mut(w).zip(a.chunks(w)).for_each(row);
        }
        return out;
    }
    if trailing(sa, sb) {
        let w = a.len();
        let mut out = vec![0.0; n];
        let row = |(o, y): (&mut [f32], &[f32])| {
            o.iter_mut()
                .zip(a)
                .zip(y)
                .for_each(|((o, &x), &y)| *o = apply(x, y))
        };
        if n >= PARALLEL {
            out.par_chunks_mut(w).zip(b.par_chunks(w)).for_each(row);
        } else {
            out.chunks_mut(w).zip(b.chunks(w)).for_each(row);
        }
        return out;
    }
    let (ta, tb) = (
        broadcast_strides(sa, out_shape),
        broadcast_strides(sb, out_shape),
    );
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; out_shape.len()];
    let (mut ia, mut ib) = (0usize, 0usize);
    for _ in 0..n {
        out.push(apply(a[ia], b[ib]));
        for d in (0..out_shape.len()).rev() {
            index[d] += 1;
            ia += ta[d];
            ib += tb[d];
            if index[d] < out_shape[d] {
                break;
            }
            ia -= ta[d] * out_shape[d];
            ib -= tb[d] * out_shape[d];
            index[d] = 0;
        }
    }
    out
}

fn sum_to(x: &[f32], sx: &[usize], out_shape: &[usize]) -> Vec<f32> {
    let t = broadcast_strides(out_shape, sx);
    let mut out = vec![0.0; numel(out_shape)];
    let mut index = vec![0usize; sx.len()];
    let mut io = 0usize;
    for &v in x {
        out[io] += v;
        for d in (0..sx.len()).rev() {
            index[d] += 1;
            io += t[d];
            if index[d] < sx[d] {
                break;
            }
            io -= t[d] * sx[d];
            index[d] = 0;
        }
    }
    out
}

fn matmul(
    a: &[f32],
    sa: &[usize],
    ta: bool,
    b: &[f32],
    sb: &[usize],
    tb: bool,
    out_shape: &[usize],
) -> Vec<f32> {
    let r = out_shape.len();
    let (m, n) = (out_shape[r - 2], out_shape[r - 1]);
    let k = if ta {
        sa[sa.len() - 2]
    } else {
        sa[sa.len() - 1]
    };
    let batch: usize = out_shape[..r - 2].iter().product();
    let mut out = vec![0.0f32; numel(out_shape)];
    kdc_cpu::matmul(
        a,
        b,
        &mut out,
        batch,
        m,
        k,
        n,
        ta,
        tb,
        sa.len() > 2,
        sb.len() > 2,
    );
    out
}

fn softmax(x: &[f32], y: &mut [f32], log: bool) {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    for i in 0..x.len() {
        y[i] = if log {
            x[i] - max - sum.ln()
        } else {
            (x[i] - max).exp() / sum
        };
    }
}

fn reduce(kind: Reduce, axis: Option<usize>, x: &[f32], shape: &[usize]) -> Vec<f32> {
    let (outer, n, inner) = match axis {
        Some(a) => (
            shape[..a].iter().product::<usize>(),
            shape[a],
            shape[a + 1..].iter().product::<usize>(),
        ),
        None => (1, x.len(), 1),
    };
    let mut out = vec![0.0; outer * inner];
    for o in 0..outer {
        for i in 0..inner {
            let get = |j: usize| x[(o * n + j) * inner + i] as f64;
            let sum: f64 = (0..n).map(get).sum();
            out[o * inner + i] = match kind {
                Reduce::Sum => sum as f32,
                Reduce::Mean => (sum / n as f64) as f32,
                Reduce::Var => {
                    let mean = sum / n as f64;
                    ((0..n).map(|j| (get(j) - mean).powi(2)).sum::<f64>() / n as f64) as f32
                }
            };
        }
    }
    out
}

fn reduce_backward(
    kind: Reduce,
    axis: Option<usize>,
    x: &[f32],
    shape: &[usize],
    dy: &[f32],
) -> Vec<f32> {
    let (outer, n, inner) = match axis {
        Some(a) => (
            shape[..a].iter().product::<usize>(),
            shape[a],
            shape[a + 1..].iter().product::<usize>(),
        ),
        None => (1, x.len(), 1),
    };
    let mut dx = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let g = dy[o * inner + i];
            let mean = if kind == Reduce::Var {
                (0..n).map(|j| x[(o * n + j) * inner + i]).sum::<f32>() / n as f32
            } else {
                0.0
            };
            for j in 0..n {
                let at = (o * n + j) * inner + i;
                dx[at] = match kind {
                    Reduce::Sum => g,
                    Reduce::Mean => g / n as f32,
                    Reduce::Var => g * 2.0 * (x[at] - mean) / n as f32,
                };
            }
        }
    }
    dx
}

fn rows_cols(shape: &[usize]) -> (usize, usize) {
    let c = *shape.last().unwrap_or(&1);
    (numel(shape) / c.max(1), c)
}

fn loss(op: &Op, inputs: &[&[f32]], shapes: &[Vec<usize>]) -> f64 {
    let a = inputs[0];
    match op {
        Op::Mse => {
            a.iter()
                .zip(inputs[1])
                .map(|(&x, &y)| ((x - y) as f64).powi(2))
                .sum::<f64>()
                / a.len() as f64
        }
        Op::L1 => {
            a.iter()
                .zip(inputs[1])
                .map(|(&x, &y)| ((x - y) as f64).abs())
                .sum::<f64>()
                / a.len() as f64
        }
        Op::SmoothL1 { beta } => {
            let beta = *beta as f64;
            a.iter()
                .zip(inputs[1])
                .map(|(&x, &y)| {
                    let d = ((x - y) as f64).abs();
                    if d < beta {
                        0.5 * d * d / beta
                    } else {
                        d - 0.5 * beta
                    }
                })
                .sum::<f64>()
                / a.len() as f64
        }
        Op::Kl => {
            let (rows, _) = rows_cols(&shapes[0]);
            a.iter()
                .zip(inputs[1])
                .map(|(&lp, &lq)| (lp as f64).exp() * (lp - lq) as f64)
                .sum::<f64>()
                / rows as f64
        }
        Op::CrossEntropyDiagonal => {
            let (rows, cols) = rows_cols(&shapes[0]);
            let mut total = 0.0;
            for (i, row) in a.chunks_exact(cols).enumerate() {
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let lse = max
                    + row
                        .iter()
                        .map(|&v| (v as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                total += lse - row[i] as f64;
            }
            total / rows as f64
        }
        Op::CrossEntropySoft => {
            let (rows, cols) = rows_cols(&shapes[0]);
            let mut total = 0.0;
            for (row, target) in a.chunks_exact(cols).zip(inputs[1].chunks_exact(cols)) {
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let lse = max
                    + row
                        .iter()
                        .map(|&v| (v as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                total += row
                    .iter()
                    .zip(target)
                    .map(|(&z, &t)| -(t as f64) * (z as f64 - lse))
                    .sum::<f64>();
            }
            total / rows as f64
        }
        _ => unreachable!(),
    }
}

fn loss_backward(op: &Op, which: usize, inputs: &[&[f32]], shapes: &[Vec<usize>]) -> Vec<f32> {
    let g = *inputs.last().unwrap().first().unwrap();
    let a = inputs[0];
    let sign = if which == 0 { 1.0 } else { -1.0 };
    match op {
        Op::Mse => a
            .iter()
            .zip(inputs[1])
            .map(|(&x, &y)| sign * g * 2.0 * (x - y) / a.len() as f32)
            .collect(),
        Op::L1 => a
            .iter()
            .zip(inputs[1])
            .map(|(&x, &y)| sign * g * (x - y).signum() * ((x != y) as i32 as f32) / a.len() as f32)
            .collect(),
        Op::SmoothL1 { beta } => a
            .iter()
            .zip(inputs[1])
            .map(|(&x, &y)| {
                let d = x - y;
                let local = if d.abs() < *beta {
                    d / beta
                } else {
                    d.signum()
                };
                sign * g * local / a.len() as f32
            })
            .collect(),
        Op::Kl => {
            let (rows, _) = rows_cols(&shapes[0]);
            let scale = g / rows as f32;
            if which == 0 {
                a.iter()
                    .zip(inputs[1])
                    .map(|(&lp, &lq)| scale * lp.exp() * (lp - lq + 1.0))
                    .collect()
            } else {
                a.iter().map(|&lp| -scale * lp.exp()).collect()
            }
        }
        Op::CrossEntropyDiagonal => {
            let (rows, cols) = rows_cols(&shapes[0]);
            let mut d = vec![0.0; a.len()];
            for (i, (row, out)) in a
                .chunks_exact(cols)
                .zip(d.chunks_exact_mut(cols))
                .enumerate()
            {
                softmax(row, out, false);
                out[i] -= 1.0;
                out.iter_mut().for_each(|v| *v *= g / rows as f32);
            }
            d
        }
        Op::CrossEntropySoft => {
            let (rows, cols) = rows_cols(&shapes[0]);
            let mut d = vec![0.0; a.len()];
            for ((row, target), out) in a
                .chunks_exact(cols)
                .zip(inputs[1].chunks_exact(cols))
                .zip(d.chunks_exact_mut(cols))
            {
                if which == 0 {
                    softmax(row, out, false);
                    let mass: f32 = target.iter().sum();
                    for j in 0..cols {
                        out[j] = g * (out[j] * mass - target[j]) / rows as f32;
                    }
                } else {
                    softmax(row, out, true);
                    out.iter_mut().for_each(|v| *v *= -g / rows as f32);
                }
            }
            d
        }
        _ => unreachable!(),
    }
}
