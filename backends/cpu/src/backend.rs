//! [`CpuBackend`]: kdc's engine on the CPU, the first implementation of
//! [`kdc_backend::Backend`]. Buffers are host vectors; each operation is dispatched to this
//! crate's kernels, reading its inputs as contiguous row-major `f32` slices and writing its
//! output into the view the memory plan gave it.
//!
//! Index operands (token ids, pooling and masking indices) are `f32` tensors holding exact
//! integers; the index kernels read them as such.

use kdc_backend::{
    numel, round_bf16, AdamW, AttentionDims, Backend, BackendError, Binary, BufferId, Dtype,
    Launch, LossKind, Op, Reduce, Unary, View,
};

/// The CPU backend. Operations run synchronously on the calling thread and rayon's pool.
#[derive(Default)]
pub struct CpuBackend {
    buffers: Vec<Option<Vec<f32>>>,
}

impl CpuBackend {
    /// A backend with no buffers yet.
    pub fn new() -> CpuBackend {
        CpuBackend::default()
    }

    fn buffer(&self, id: BufferId) -> &Vec<f32> {
        self.buffers[id.0]
            .as_ref()
            .unwrap_or_else(|| panic!("kdc-cpu: buffer {} was freed", id.0))
    }

    fn slice(&self, v: View) -> &[f32] {
        &self.buffer(v.buffer)[v.offset..v.offset + v.len]
    }

    fn slice_mut(&mut self, v: View) -> &mut [f32] {
        let b = self.buffers[v.buffer.0]
            .as_mut()
            .unwrap_or_else(|| panic!("kdc-cpu: buffer {} was freed", v.buffer.0));
        &mut b[v.offset..v.offset + v.len]
    }

    /// A shared slice and a mutable slice of two views that do not overlap (possibly of the
    /// same buffer).
    fn pair(&mut self, read: View, write: View) -> (&[f32], &mut [f32]) {
        assert!(!read.overlaps(&write), "kdc-cpu: views overlap");
        let r = self.raw(read);
        let w = self.raw(write);
        // SAFETY: both ranges lie inside live buffers (checked by `raw`) and do not overlap.
        unsafe {
            (
                std::slice::from_raw_parts(r, read.len),
                std::slice::from_raw_parts_mut(w, write.len),
            )
        }
    }

    /// The address of a view's first float, after checking that the view lies in its buffer.
    fn raw(&mut self, v: View) -> *mut f32 {
        let b = self.buffers[v.buffer.0]
            .as_mut()
            .unwrap_or_else(|| panic!("kdc-cpu: buffer {} was freed", v.buffer.0));
        assert!(
            v.offset + v.len <= b.len(),
            "kdc-cpu: view {v:?} outside its buffer of {}",
            b.len()
        );
        // SAFETY: in bounds (checked above).
        unsafe { b.as_mut_ptr().add(v.offset) }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn scratch_len(
        &self,
        op: &Op,
        input_shapes: &[Vec<usize>],
        _shape: &[usize],
        dtype: Dtype,
    ) -> usize {
        match op {
            // The inputs rounded to bf16 (held as f32).
            Op::MatMul { .. } | Op::MatMulAdd { .. } if dtype == Dtype::Bf16 => {
                input_shapes.iter().map(|s| numel(s)).sum()
            }
            // Each row's mean and reciprocal standard deviation.
            Op::LayerNorm { .. }
            | Op::LayerNormBackward { .. }
            | Op::LayerNormParamGrads { .. } => {
                let x = &input_shapes[0];
                2 * numel(x) / x.last().copied().unwrap_or(1).max(1)
            }
            _ => 0,
        }
    }

    fn alloc(&mut self, len: usize) -> Result<BufferId, BackendError> {
        let bytes = len * std::mem::size_of::<f32>();
        let oom = || BackendError::OutOfMemory {
            device: "cpu",
            bytes,
        };
        let data = if len == 0 {
            Vec::new()
        } else {
            let layout = std::alloc::Layout::array::<f32>(len).map_err(|_| oom())?;
            // Zeroed memory from the allocator (calloc: pages are mapped on first touch, so a
            // large arena costs nothing until it is used), and a clear error instead of an
            // abort when the machine cannot provide it.
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut f32;
            if ptr.is_null() {
                return Err(oom());
            }
            // SAFETY: allocated by the global allocator with exactly this layout; zeroed
            // floats are valid `0.0`s.
            unsafe { Vec::from_raw_parts(ptr, len, len) }
        };
        self.buffers.push(Some(data));
        Ok(BufferId(self.buffers.len() - 1))
    }

    fn free(&mut self, buffer: BufferId) {
        self.buffers[buffer.0] = None;
    }

    fn upload(&mut self, dst: View, src: &[f32]) {
        self.slice_mut(dst).copy_from_slice(src);
    }

    fn download(&mut self, src: View, dst: &mut [f32]) {
        dst.copy_from_slice(self.slice(src));
    }

    fn launch(&mut self, l: &Launch<'_>) {
        debug_assert_eq!(l.output.len, numel(l.shape));
        for input in l.inputs {
            debug_assert!(
                !input.overlaps(&l.output),
                "{:?}: output overlaps an input",
                l.op
            );
            debug_assert!(
                !input.overlaps(&l.scratch),
                "{:?}: scratch overlaps an input",
                l.op
            );
        }
        let inputs: Vec<*mut f32> = l.inputs.iter().map(|&v| self.raw(v)).collect();
        let out = self.raw(l.output);
        let scratch = self.raw(l.scratch);
        // SAFETY: every view lies in a live buffer (`raw` checks), and the memory plan
        // guarantees that the output and the scratch overlap no input and no other value in
        // use (debug builds check the inputs above; `MemoryPlan::check` checks the rest).
        // Inputs are only read.
        unsafe {
            let inputs: Vec<&[f32]> = inputs
                .iter()
                .zip(l.inputs)
                .map(|(&p, v)| std::slice::from_raw_parts(p as *const f32, v.len))
                .collect();
            let out = std::slice::from_raw_parts_mut(out, l.output.len);
            let scratch = std::slice::from_raw_parts_mut(scratch, l.scratch.len);
            if l.dtype == Dtype::Bf16 && matches!(l.op, Op::MatMul { .. } | Op::MatMulAdd { .. }) {
                // bf16 inputs, f32 accumulation: the product runs on rounded copies.
                let mut rest = &mut scratch[..];
                let mut rounded: Vec<&[f32]> = Vec::with_capacity(inputs.len());
                for x in &inputs {
                    let (copy, tail) = std::mem::take(&mut rest).split_at_mut(x.len());
                    copy.copy_from_slice(x);
                    crate::util::map_inplace(copy, round_bf16);
                    rounded.push(copy);
                    rest = tail;
                }
                run(l.op, &rounded, l.input_shapes, l.shape, out, &mut []);
            } else {
                run(l.op, &inputs, l.input_shapes, l.shape, out, scratch);
            }
            if l.dtype == Dtype::Bf16 {
                crate::util::map_inplace(out, round_bf16);
            }
        }
    }

    fn copy(&mut self, dst: View, src: View) {
        let (s, d) = self.pair(src, dst);
        d.copy_from_slice(s);
    }

    fn add_into(&mut self, dst: View, src: View) {
        let (s, d) = self.pair(src, dst);
        d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
    }

    fn scale(&mut self, x: View, factor: f32) {
        crate::util::map_inplace(self.slice_mut(x), |v| v * factor);
    }

    fn lerp(&mut self, dst: View, src: View, weight: f32) {
        let (s, d) = self.pair(src, dst);
        d.iter_mut()
            .zip(s)
            .for_each(|(d, s)| *d += weight * (s - *d));
    }

    fn clamp(&mut self, x: View, lo: f32, hi: f32) {
        self.slice_mut(x)
            .iter_mut()
            .for_each(|v| *v = v.clamp(lo, hi));
    }

    fn l2_norm(&mut self, xs: &[View]) -> f64 {
        let slices: Vec<&[f32]> = xs.iter().map(|&v| self.slice(v)).collect();
        crate::grad_norm(&slices)
    }

    fn adamw(&mut self, param: View, grad: View, m: View, v: View, h: &AdamW) {
        let views = [param, grad, m, v];
        for (i, a) in views.iter().enumerate() {
            assert_eq!(
                a.len, param.len,
                "kdc-cpu: AdamW views of different lengths"
            );
            for b in &views[i + 1..] {
                assert!(!a.overlaps(b), "kdc-cpu: AdamW views overlap");
            }
        }
        let ptrs = views.map(|v| self.raw(v));
        // SAFETY: four non-overlapping in-bounds views (checked above).
        unsafe {
            let n = param.len;
            crate::adamw_step(
                std::slice::from_raw_parts_mut(ptrs[0], n),
                std::slice::from_raw_parts(ptrs[1], n),
                std::slice::from_raw_parts_mut(ptrs[2], n),
                std::slice::from_raw_parts_mut(ptrs[3], n),
                h.lr,
                h.beta1,
                h.beta2,
                h.eps,
                h.weight_decay,
                h.step,
            );
        }
    }

    fn synchronize(&mut self) {}
}

/// Runs one operation into `out` (`numel(out_shape)` floats).
fn run(
    op: &Op,
    inputs: &[&[f32]],
    shapes: &[Vec<usize>],
    out_shape: &[usize],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    match op {
        Op::Fill(v) => out.fill(v.0),
        Op::Constant(values) => out.iter_mut().zip(values).for_each(|(o, v)| *o = v.0),
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
        Op::Unary(f) => crate::unary((*f).into(), inputs[0], out),
        Op::UnaryBackward(f) => {
            crate::unary_backward((*f).into(), inputs[0], inputs[1], inputs[2], out)
        }
        Op::Binary(f) => crate::binary(
            (*f).into(),
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
            crate::broadcast_to(inputs[2], &shapes[2], out, out_shape);
            matmul_into(
                inputs[0], &shapes[0], *ta, inputs[1], &shapes[1], *tb, out_shape, out, true,
            );
        }
        Op::Permute(perm) => crate::permute(inputs[0], &shapes[0], perm, out),
        Op::Reshape | Op::Detach => out.copy_from_slice(inputs[0]),
        Op::Attention { scale } => {
            let bias = inputs.get(3).copied();
            let dims = AttentionDims::of(shapes, bias.is_some())
                .unwrap_or_else(|e| panic!("kdc-cpu: Attention: {e}"));
            crate::attention(&dims, inputs[0], inputs[1], inputs[2], bias, scale.0, out);
        }
        Op::AttentionBackward { scale } => {
            let (dout, rest) = inputs.split_last().expect("inputs");
            let bias = rest.get(3).copied();
            let dims = AttentionDims::of(&shapes[..rest.len()], bias.is_some())
                .unwrap_or_else(|e| panic!("kdc-cpu: AttentionBackward: {e}"));
            crate::attention_backward(&dims, rest[0], rest[1], rest[2], bias, dout, scale.0, out);
        }
        Op::Broadcast => crate::broadcast_to(inputs[0], &shapes[0], out, out_shape),
        Op::SumTo => crate::sum_to(inputs[0], &shapes[0], out, out_shape),
        Op::Reduce { kind, axis } => {
            let (outer, n, inner) = reduce_dims(*axis, &shapes[0]);
            match kind {
                Reduce::Sum => crate::sum_axis(inputs[0], out, outer, n, inner),
                Reduce::Mean => crate::mean_axis(inputs[0], out, outer, n, inner),
                Reduce::Var => crate::var_axis(inputs[0], out, outer, n, inner),
                Reduce::Max => crate::extreme_axis(inputs[0], out, outer, n, inner, true),
                Reduce::Min => crate::extreme_axis(inputs[0], out, outer, n, inner, false),
            }
        }
        Op::ReduceBackward { kind, axis } => {
            let (outer, n, inner) = reduce_dims(*axis, &shapes[0]);
            let (x, dy) = (inputs[0], inputs[1]);
            match kind {
                Reduce::Sum => crate::sum_axis_backward(dy, out, outer, n, inner),
                Reduce::Mean => crate::mean_axis_backward(dy, out, outer, n, inner),
                Reduce::Var => crate::var_axis_backward(x, dy, out, outer, n, inner),
                Reduce::Max => crate::extreme_axis_backward(x, dy, out, outer, n, inner, true),
                Reduce::Min => crate::extreme_axis_backward(x, dy, out, outer, n, inner, false),
            }
        }
        Op::Arg { largest, axis } => {
            let (outer, n, inner) = reduce_dims(*axis, &shapes[0]);
            crate::arg_extreme_axis(inputs[0], out, outer, n, inner, *largest);
        }
        Op::Where => crate::select(inputs[0], inputs[1], inputs[2], out),
        Op::TopK { k, axis } => {
            let (outer, n, inner) = crate::axis_dims(&shapes[0], *axis);
            crate::topk_axis(inputs[0], out, outer, n, inner, *k);
        }
        Op::TopKBackward { k, axis } => {
            let (outer, n, inner) = crate::axis_dims(&shapes[0], *axis);
            crate::topk_axis_backward(inputs[0], inputs[1], out, outer, n, inner, *k);
        }
        Op::Softmax { axis } => {
            let (outer, len, inner) = crate::axis_dims(&shapes[0], *axis);
            crate::softmax(inputs[0], out, outer, len, inner);
        }
        Op::LogSoftmax { axis } => {
            let (outer, len, inner) = crate::axis_dims(&shapes[0], *axis);
            crate::log_softmax(inputs[0], out, outer, len, inner);
        }
        Op::SoftmaxBackward { axis } => {
            let (outer, len, inner) = crate::axis_dims(&shapes[0], *axis);
            crate::softmax_backward(inputs[0], inputs[1], out, outer, len, inner);
        }
        Op::LogSoftmaxBackward { axis } => {
            let (outer, len, inner) = crate::axis_dims(&shapes[0], *axis);
            crate::log_softmax_backward(inputs[0], inputs[1], out, outer, len, inner);
        }
        Op::Normalize { axis, eps } => {
            let (outer, len, inner) = crate::axis_dims(&shapes[0], *axis);
            let eps = eps.0;
            crate::l2_normalize(inputs[0], out, outer, len, inner, eps);
        }
        Op::NormalizeBackward { axis, eps } => {
            let (outer, len, inner) = crate::axis_dims(&shapes[0], *axis);
            let eps = eps.0;
            crate::l2_normalize_backward(inputs[0], inputs[1], out, outer, len, inner, eps);
        }
        Op::LayerNorm { eps } => {
            let d = *out_shape.last().unwrap();
            let rows = out.len() / d;
            let (mean, rstd) = scratch.split_at_mut(rows);
            crate::layer_norm(
                inputs[0], inputs[1], inputs[2], out, mean, rstd, rows, d, eps.0,
            );
        }
        Op::LayerNormBackward { eps } | Op::LayerNormParamGrads { eps } => {
            // The statistics are recomputed from x (one pass) rather than kept from the forward.
            let (x, dy) = (inputs[0], *inputs.last().unwrap());
            let d = *shapes[0].last().unwrap();
            let rows = x.len() / d;
            let (mean, rstd) = scratch.split_at_mut(rows);
            crate::layer_norm_stats(x, mean, rstd, rows, d, eps.0);
            if matches!(op, Op::LayerNormBackward { .. }) {
                crate::layer_norm_backward_input(x, inputs[1], mean, rstd, dy, out, rows, d);
            } else {
                let (dgain, dbias) = out.split_at_mut(d);
                crate::layer_norm_backward_params(x, mean, rstd, dy, dgain, dbias, rows, d);
            }
        }
        Op::Embedding => {
            let (v, w) = (shapes[0][0], shapes[0][1]);
            crate::embedding(inputs[0], inputs[1], out, v, w);
        }
        Op::EmbeddingBackward => {
            let (v, w) = (out_shape[0], out_shape[1]);
            out.fill(0.0);
            crate::embedding_backward(inputs[1], inputs[0], out, v, w);
        }
        Op::GatherRows => {
            let (b, t, w) = (shapes[0][0], shapes[0][1], shapes[0][2]);
            crate::gather_rows(inputs[0], inputs[1], out, b, t, shapes[1][1], w);
        }
        Op::ScatterRows => {
            let (b, t, w) = (out_shape[0], out_shape[1], out_shape[2]);
            out.fill(0.0);
            crate::scatter_add_rows(inputs[1], inputs[0], out, b, t, shapes[0][1], w);
        }
        Op::Concat { axis } => {
            let outer: usize = out_shape[..*axis].iter().product();
            let inner: usize = out_shape[axis + 1..].iter().product();
            let sizes = [shapes[0][*axis], shapes[1][*axis]];
            crate::concat(&[inputs[0], inputs[1]], outer, &sizes, inner, out);
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
        Op::Loss(kind) => out[0] = loss(*kind, inputs, shapes),
        Op::LossBackward { loss: kind, which } => loss_backward(*kind, *which, inputs, shapes, out),
        Op::Param(_) | Op::Input(_) => unreachable!("sources are set, not run"),
    }
}

impl From<Unary> for crate::UnaryOp {
    fn from(f: Unary) -> crate::UnaryOp {
        match f {
            Unary::Neg => crate::UnaryOp::Neg,
            Unary::Exp => crate::UnaryOp::Exp,
            Unary::Log => crate::UnaryOp::Log,
            Unary::Sqrt => crate::UnaryOp::Sqrt,
            Unary::Abs => crate::UnaryOp::Abs,
            Unary::Gelu => crate::UnaryOp::Gelu,
            Unary::QuickGelu => crate::UnaryOp::QuickGelu,
            Unary::Relu => crate::UnaryOp::Relu,
            Unary::Sigmoid => crate::UnaryOp::Sigmoid,
            Unary::Tanh => crate::UnaryOp::Tanh,
        }
    }
}

impl From<Binary> for crate::BinaryOp {
    fn from(f: Binary) -> crate::BinaryOp {
        match f {
            Binary::Add => crate::BinaryOp::Add,
            Binary::Sub => crate::BinaryOp::Sub,
            Binary::Mul => crate::BinaryOp::Mul,
            Binary::Div => crate::BinaryOp::Div,
            Binary::Max => crate::BinaryOp::Max,
            Binary::Min => crate::BinaryOp::Min,
            Binary::Gt => crate::BinaryOp::Gt,
            Binary::Ge => crate::BinaryOp::Ge,
            Binary::Lt => crate::BinaryOp::Lt,
            Binary::Le => crate::BinaryOp::Le,
            Binary::Eq => crate::BinaryOp::Eq,
            Binary::Ne => crate::BinaryOp::Ne,
        }
    }
}

/// `[outer, n, inner]` of a reduction over `axis` (all elements when `None`).
fn reduce_dims(axis: Option<usize>, shape: &[usize]) -> (usize, usize, usize) {
    match axis {
        Some(a) => crate::axis_dims(shape, a),
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
        crate::matmul_acc::<f32>
    } else {
        crate::matmul::<f32>
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

fn loss(kind: LossKind, inputs: &[&[f32]], shapes: &[Vec<usize>]) -> f32 {
    let a = inputs[0];
    let (rows, cols) = rows_cols(&shapes[0]);
    match kind {
        LossKind::Mse => crate::mse(a, inputs[1]),
        LossKind::L1 => crate::l1(a, inputs[1]),
        LossKind::SmoothL1 { beta } => crate::smooth_l1(a, inputs[1], beta.0),
        LossKind::Kl => crate::kl_rows(a, inputs[1], rows, cols),
        LossKind::CrossEntropyDiagonal => crate::cross_entropy_diagonal(a, rows, cols),
        LossKind::CrossEntropySoft => crate::cross_entropy_soft(a, inputs[1], rows, cols),
    }
}

/// The gradient of a loss with respect to its input `which` into `d`.
fn loss_backward(
    kind: LossKind,
    which: usize,
    inputs: &[&[f32]],
    shapes: &[Vec<usize>],
    d: &mut [f32],
) {
    let g = inputs.last().unwrap()[0];
    let a = inputs[0];
    let (rows, cols) = rows_cols(&shapes[0]);
    let (da, db) = if which == 0 {
        (Some(d), None)
    } else {
        (None, Some(d))
    };
    match kind {
        LossKind::Mse => crate::mse_backward(a, inputs[1], g, da, db),
        LossKind::L1 => crate::l1_backward(a, inputs[1], g, da, db),
        LossKind::SmoothL1 { beta } => crate::smooth_l1_backward(a, inputs[1], beta.0, g, da, db),
        LossKind::Kl => crate::kl_rows_backward(a, inputs[1], rows, cols, g, da, db),
        LossKind::CrossEntropyDiagonal => {
            crate::cross_entropy_diagonal_backward(a, rows, cols, g, da.expect("one input"))
        }
        LossKind::CrossEntropySoft => {
            crate::cross_entropy_soft_backward(a, inputs[1], rows, cols, g, da, db)
        }
    }
}
