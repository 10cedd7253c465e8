//! The dispatch from engine operations to the CPU backend (`kdc-cpu`). Each operation reads its
//! inputs as contiguous row-major f32 slices with the static shapes recorded at compile time and
//! writes its output into a buffer the memory plan gives it (whatever it held before: every
//! kernel overwrites all of it), with a scratch buffer of [`scratch_len`] floats.
//!
//! Index operands (token ids, pooling and masking indices) are f32 tensors holding exact
//! integers; `kdc-cpu`'s index kernels read them as such.

use super::graph::{numel, Binary, Op, Reduce, Unary};

/// Floats of scratch memory the operation needs while it runs (planned with the buffers).
pub fn scratch_len(op: &Op, shapes: &[Vec<usize>]) -> usize {
    match op {
        // Each row's mean and reciprocal standard deviation.
        Op::LayerNorm { .. } | Op::LayerNormBackward { .. } | Op::LayerNormParamGrads { .. } => {
            let x = &shapes[0];
            2 * numel(x) / x.last().copied().unwrap_or(1).max(1)
        }
        _ => 0,
    }
}

/// Runs one operation into `out` (`numel(out_shape)` floats).
pub fn run(
    op: &Op,
    inputs: &[&[f32]],
    shapes: &[Vec<usize>],
    out_shape: &[usize],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    debug_assert_eq!(out.len(), numel(out_shape));
    match op {
        Op::Fill(v) => out.fill(*v),
        Op::Eye => {
            let c = out_shape[1];
            out.fill(0.0);
            for i in 0..out_shape[0].min(c) {
                out[i * c + i] = 1.0;
            }
        }
        Op::CausalMask => {
            let l = out_shape[0];
            for (i, row) in out.chunks_exact_mut(l).enumerate() {
                row[..=i].fill(0.0);
                row[i + 1..].fill(f32::MIN);
            }
        }
        Op::Unary(f) => kdc_cpu::unary(cpu_unary(*f), inputs[0], out),
        Op::UnaryBackward(f) => {
            kdc_cpu::unary_backward(cpu_unary(*f), inputs[0], inputs[1], inputs[2], out)
        }
        Op::Binary(f) => kdc_cpu::binary(
            cpu_binary(*f),
            inputs[0],
            &shapes[0],
            inputs[1],
            &shapes[1],
            out,
            out_shape,
        ),
        Op::MatMul { ta, tb } => matmul_into(
            inputs[0], &shapes[0], *ta, inputs[1], &shapes[1], *tb, out_shape, out, false,
        ),
        Op::MatMulAdd { ta, tb } => {
            kdc_cpu::broadcast_to(inputs[2], &shapes[2], out, out_shape);
            matmul_into(
                inputs[0], &shapes[0], *ta, inputs[1], &shapes[1], *tb, out_shape, out, true,
            );
        }
        Op::Permute(perm) => kdc_cpu::permute(inputs[0], &shapes[0], perm, out),
        Op::Reshape | Op::Detach => out.copy_from_slice(inputs[0]),
        Op::Broadcast => kdc_cpu::broadcast_to(inputs[0], &shapes[0], out, out_shape),
        Op::SumTo => kdc_cpu::sum_to(inputs[0], &shapes[0], out, out_shape),
        Op::Reduce { kind, axis } => {
            let (outer, n, inner) = reduce_dims(*axis, &shapes[0]);
            match kind {
                Reduce::Sum => kdc_cpu::sum_axis(inputs[0], out, outer, n, inner),
                Reduce::Mean => kdc_cpu::mean_axis(inputs[0], out, outer, n, inner),
                Reduce::Var => kdc_cpu::var_axis(inputs[0], out, outer, n, inner),
            }
        }
        Op::ReduceBackward { kind, axis } => {
            let (outer, n, inner) = reduce_dims(*axis, &shapes[0]);
            let (x, dy) = (inputs[0], inputs[1]);
            match kind {
                Reduce::Sum => kdc_cpu::sum_axis_backward(dy, out, outer, n, inner),
                Reduce::Mean => kdc_cpu::mean_axis_backward(dy, out, outer, n, inner),
                Reduce::Var => kdc_cpu::var_axis_backward(x, dy, out, outer, n, inner),
            }
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            let (outer, len, inner) = kdc_cpu::axis_dims(&shapes[0], *axis);
            if matches!(op, Op::Softmax { .. }) {
                kdc_cpu::softmax(inputs[0], out, outer, len, inner);
            } else {
                kdc_cpu::log_softmax(inputs[0], out, outer, len, inner);
            }
        }
        Op::SoftmaxBackward { axis } | Op::LogSoftmaxBackward { axis } => {
            let (outer, len, inner) = kdc_cpu::axis_dims(&shapes[0], *axis);
            if matches!(op, Op::SoftmaxBackward { .. }) {
                kdc_cpu::softmax_backward(inputs[0], inputs[1], out, outer, len, inner);
            } else {
                kdc_cpu::log_softmax_backward(inputs[0], inputs[1], out, outer, len, inner);
            }
        }
        Op::Normalize { axis } => {
            let (outer, len, inner) = kdc_cpu::axis_dims(&shapes[0], *axis);
            let eps = kdc_cpu::NORMALIZE_EPS as f32;
            kdc_cpu::l2_normalize(inputs[0], out, outer, len, inner, eps);
        }
        Op::NormalizeBackward { axis } => {
            let (outer, len, inner) = kdc_cpu::axis_dims(&shapes[0], *axis);
            let eps = kdc_cpu::NORMALIZE_EPS as f32;
            kdc_cpu::l2_normalize_backward(inputs[0], inputs[1], out, outer, len, inner, eps);
        }
        Op::LayerNorm { eps } => {
            let d = *out_shape.last().unwrap();
            let rows = out.len() / d;
            let (mean, rstd) = scratch.split_at_mut(rows);
            kdc_cpu::layer_norm(
                inputs[0], inputs[1], inputs[2], out, mean, rstd, rows, d, *eps,
            );
        }
        Op::LayerNormBackward { eps } | Op::LayerNormParamGrads { eps } => {
            // The statistics are recomputed from x (one pass) rather than kept from the forward.
            let (x, dy) = (inputs[0], *inputs.last().unwrap());
            let d = *shapes[0].last().unwrap();
            let rows = x.len() / d;
            let (mean, rstd) = scratch.split_at_mut(rows);
            kdc_cpu::layer_norm_stats(x, mean, rstd, rows, d, *eps);
            if matches!(op, Op::LayerNormBackward { .. }) {
                kdc_cpu::layer_norm_backward_input(x, inputs[1], mean, rstd, dy, out, rows, d);
            } else {
                let (dgain, dbias) = out.split_at_mut(d);
                kdc_cpu::layer_norm_backward_params(x, mean, rstd, dy, dgain, dbias, rows, d);
            }
        }
        Op::Embedding => {
            let (v, w) = (shapes[0][0], shapes[0][1]);
            kdc_cpu::embedding(inputs[0], inputs[1], out, v, w);
        }
        Op::EmbeddingBackward => {
            let (v, w) = (out_shape[0], out_shape[1]);
            out.fill(0.0);
            kdc_cpu::embedding_backward(inputs[1], inputs[0], out, v, w);
        }
        Op::GatherRows => {
            let (b, t, w) = (shapes[0][0], shapes[0][1], shapes[0][2]);
            kdc_cpu::gather_rows(inputs[0], inputs[1], out, b, t, shapes[1][1], w);
        }
        Op::ScatterRows => {
            let (b, t, w) = (out_shape[0], out_shape[1], out_shape[2]);
            out.fill(0.0);
            kdc_cpu::scatter_add_rows(inputs[1], inputs[0], out, b, t, shapes[0][1], w);
        }
        Op::Concat { axis } => {
            let outer: usize = out_shape[..*axis].iter().product();
            let inner: usize = out_shape[axis + 1..].iter().product();
            let sizes = [shapes[0][*axis], shapes[1][*axis]];
            kdc_cpu::concat(&[inputs[0], inputs[1]], outer, &sizes, inner, out);
        }
        Op::Slice { axis, start } => {
            let outer: usize = out_shape[..*axis].iter().product();
            let inner: usize = out_shape[axis + 1..].iter().product();
            let (full, len) = (shapes[0][*axis] * inner, out_shape[*axis] * inner);
            for (o, dst) in out.chunks_exact_mut(len.max(1)).take(outer).enumerate() {
                let from = o * full + start * inner;
                dst.copy_from_slice(&inputs[0][from..from + len]);
            }
        }
        Op::SliceBackward { axis, start } => {
            let outer: usize = out_shape[..*axis].iter().product();
            let inner: usize = out_shape[axis + 1..].iter().product();
            let (full, len) = (out_shape[*axis] * inner, shapes[0][*axis] * inner);
            out.fill(0.0);
            for (o, src) in inputs[0].chunks_exact(len.max(1)).take(outer).enumerate() {
                let at = o * full + start * inner;
                out[at..at + len].copy_from_slice(src);
            }
        }
        Op::Mse
        | Op::L1
        | Op::SmoothL1 { .. }
        | Op::Kl
        | Op::CrossEntropyDiagonal
        | Op::CrossEntropySoft => out[0] = loss(op, inputs, shapes),
        Op::LossBackward { loss: l, which } => loss_backward(l, *which, inputs, shapes, out),
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

fn cpu_binary(f: Binary) -> kdc_cpu::BinaryOp {
    match f {
        Binary::Add => kdc_cpu::BinaryOp::Add,
        Binary::Sub => kdc_cpu::BinaryOp::Sub,
        Binary::Mul => kdc_cpu::BinaryOp::Mul,
        Binary::Div => kdc_cpu::BinaryOp::Div,
    }
}

/// `[outer, n, inner]` of a reduction over `axis` (all elements when `None`).
fn reduce_dims(axis: Option<usize>, shape: &[usize]) -> (usize, usize, usize) {
    match axis {
        Some(a) => kdc_cpu::axis_dims(shape, a),
        None => (1, numel(shape), 1),
    }
}

/// `out (+)= op(a) · op(b)` over the batch axes (`accumulate` adds to what `out` holds).
#[allow(clippy::too_many_arguments)]
fn matmul_into(
    a: &[f32],
    sa: &[usize],
    ta: bool,
    b: &[f32],
    sb: &[usize],
    tb: bool,
    out_shape: &[usize],
    out: &mut [f32],
    accumulate: bool,
) {
    let r = out_shape.len();
    let (m, n) = (out_shape[r - 2], out_shape[r - 1]);
    let k = if ta {
        sa[sa.len() - 2]
    } else {
        sa[sa.len() - 1]
    };
    let batch: usize = out_shape[..r - 2].iter().product();
    let product = if accumulate {
        kdc_cpu::matmul_acc::<f32>
    } else {
        kdc_cpu::matmul::<f32>
    };
    product(
        a,
        b,
        out,
        batch,
        m,
        k,
        n,
        ta,
        tb,
        sa.len() > 2,
        sb.len() > 2,
    );
}

/// `[rows, cols]` of a tensor seen as rows of its last axis.
fn rows_cols(shape: &[usize]) -> (usize, usize) {
    let c = *shape.last().unwrap_or(&1);
    (numel(shape) / c.max(1), c)
}

fn loss(op: &Op, inputs: &[&[f32]], shapes: &[Vec<usize>]) -> f32 {
    let a = inputs[0];
    let (rows, cols) = rows_cols(&shapes[0]);
    match op {
        Op::Mse => kdc_cpu::mse(a, inputs[1]),
        Op::L1 => kdc_cpu::l1(a, inputs[1]),
        Op::SmoothL1 { beta } => kdc_cpu::smooth_l1(a, inputs[1], *beta),
        Op::Kl => kdc_cpu::kl_rows(a, inputs[1], rows, cols),
        Op::CrossEntropyDiagonal => kdc_cpu::cross_entropy_diagonal(a, rows, cols),
        Op::CrossEntropySoft => kdc_cpu::cross_entropy_soft(a, inputs[1], rows, cols),
        _ => unreachable!("not a loss: {op:?}"),
    }
}

/// The gradient of loss `op` with respect to its input `which` into `d`.
fn loss_backward(op: &Op, which: usize, inputs: &[&[f32]], shapes: &[Vec<usize>], d: &mut [f32]) {
    let g = inputs.last().unwrap()[0];
    let a = inputs[0];
    let (rows, cols) = rows_cols(&shapes[0]);
    let (da, db) = if which == 0 {
        (Some(d), None)
    } else {
        (None, Some(d))
    };
    match op {
        Op::Mse => kdc_cpu::mse_backward(a, inputs[1], g, da, db),
        Op::L1 => kdc_cpu::l1_backward(a, inputs[1], g, da, db),
        Op::SmoothL1 { beta } => kdc_cpu::smooth_l1_backward(a, inputs[1], *beta, g, da, db),
        Op::Kl => kdc_cpu::kl_rows_backward(a, inputs[1], rows, cols, g, da, db),
        Op::CrossEntropyDiagonal => {
            kdc_cpu::cross_entropy_diagonal_backward(a, rows, cols, g, da.expect("one input"))
        }
        Op::CrossEntropySoft => {
            kdc_cpu::cross_entropy_soft_backward(a, inputs[1], rows, cols, g, da, db)
        }
        _ => unreachable!("not a loss: {op:?}"),
    }
}
