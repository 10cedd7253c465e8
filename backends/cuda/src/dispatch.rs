//! The one mapping from an operation of a compiled step ([`Op`] on concrete shapes) to device
//! work: kernel launches of this crate, matrix products, constants to upload. Shared by every
//! backend that runs these kernels — the emulated one ([`crate::emulated`], feature `emulate`)
//! and the CUDA one — so what the tests verify is what the GPU runs.
//!
//! # Buffer positions
//!
//! The steps of an operation with `n` inputs name their buffers by position: `0..n` the
//! inputs (in the operation's order), `n` its output, `n + 1` its scratch ([`scratch_len`]
//! floats). A backend binds each position to a device pointer: its view's buffer at the view's
//! offset, plus the offset the step gives ([`Arg::Buf`]'s `offset`, [`Operand::offset`]),
//! counted in floats.
//!
//! # Semantics
//!
//! kdc-cpu's, operation for operation (backends/cpu/src/backend.rs): every tensor row-major
//! and contiguous, index operands exact integers held as f32, the output overwritten entirely.
//! Reductions and losses may add in another order than the CPU (results differ by rounding
//! only); selections (arg max, top-k, max/min and their gradients, comparisons, copies) are
//! exact.
//!
//! Matrix products are [`Step::Gemm`]: the CUDA backend hands them to cuBLAS (strided-batched,
//! with row-major operands read as column-major transposes), the emulated one runs
//! [`Gemm::kernels`], the tiled kernel of kernels/matmul.cu. A `MatMulAdd` whose addend is a
//! linear layer's bias ([`kdc_backend::is_row_bias`]) is one GEMM with a [`Bias`]: cuBLASLt's
//! bias epilogue adds it as the product is written (no broadcast of the bias into the output,
//! no second pass over it); its equivalent without the epilogue — the broadcast, then the
//! product accumulated onto it — is what the emulator runs, and the GPU when cuBLASLt has no
//! algorithm for the layout. Other addends (a residual) are broadcast into the output first.
//! cuBLASLt's GELU epilogues are not used: they compute GELU's tanh approximation, and CLIP's
//! towers use the exact GELU or QuickGELU.
//!
//! # bf16 autocast
//!
//! An operation typed [`Dtype::Bf16`] rounds its output to bf16: as its kernels store it when
//! they all can ([`crate::kernels::ROUNDING_KERNELS`]: elementwise functions, strided copies,
//! sums to a shape, fused attention), otherwise with a final kernel that rounds the output in
//! place. A bf16 matrix product first converts its two factors to bfloat16 in its scratch
//! (A at float offset 0, B after it) and runs a bf16 GEMM on them (cuBLAS's GemmEx with f32
//! accumulation on the tensor cores; the tiled kernel's bf16 variant in emulation); a
//! `MatMulAdd` rounds its addend once broadcast into the output, before the GEMM adds onto it
//! (a bias, rounded in a copy in the scratch after the factors).

use std::fmt;

use kdc_backend::{is_row_bias, numel, Dtype, LossKind, Op};

use crate::kernels::{
    BinaryCode, PairLossCode, ReduceCode, RowLossCode, UnaryCode, ROUNDING_KERNELS,
};
use crate::launch::{self, Arg, KernelCall, MatmulLayout, MAX_RANK};

/// One piece of device work of an operation, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A kernel launch; its [`Arg::Buf`] indices are buffer positions.
    Kernel(KernelCall),
    /// A (batched) matrix product.
    Gemm(Gemm),
    /// These values (as many as the output has) copied from the host into the output.
    Upload(Vec<f32>),
}

/// One operand of a [`Gemm`]: a row-major matrix (or a batch of them) in buffer `index` at
/// `offset` floats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    /// Buffer position (see the module documentation).
    pub index: usize,
    /// Floats from the start of the buffer's view.
    pub offset: usize,
    /// Floats between consecutive batch items; 0 when one matrix is shared by the batch.
    pub batch_stride: usize,
    /// Whether the product reads the stored matrix transposed (A stored `[k, m]`, B `[n, k]`).
    /// Always false for the result.
    pub transposed: bool,
    /// Floats between consecutive rows of the stored matrix (its row length when packed; at
    /// least 1, as cuBLAS requires).
    pub ld: usize,
}

/// `C_β (+)= op(A_β)·op(B_β)` for `β < batch`: `op(A)` is `[m, k]`, `op(B)` is `[k, n]`, C is
/// `[m, n]`, all row-major as [`Operand`] describes. With `accumulate` the product is added to
/// what C holds; otherwise C is overwritten. With a [`Bias`], the bias is added to every row.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemm {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Operand,
    pub b: Operand,
    pub c: Operand,
    pub accumulate: bool,
    /// Whether A and B hold bfloat16 values (their offsets still count floats; their leading
    /// dimensions and strides count elements). C is f32 either way.
    pub bf16: bool,
    /// A vector of `n` floats added to every row of each product (never with `accumulate`).
    pub bias: Option<Bias>,
}

/// The bias a [`Gemm`]'s epilogue adds to every row of the result.
#[derive(Clone, Debug, PartialEq)]
pub struct Bias {
    /// Buffer position of the `n` floats.
    pub index: usize,
    /// Floats from the start of that buffer's view.
    pub offset: usize,
    /// The same without the epilogue: this kernel broadcasts the bias into C, and the product
    /// accumulates onto it.
    pub broadcast: KernelCall,
}

impl Gemm {
    /// The product as launches of this crate's kernels (what the emulator runs, and the
    /// reference): a bias's broadcast, then the tiled kernel of kernels/matmul.cu.
    pub fn kernels(&self) -> Vec<KernelCall> {
        match &self.bias {
            Some(bias) => vec![
                bias.broadcast.clone(),
                Gemm {
                    accumulate: true,
                    bias: None,
                    ..self.clone()
                }
                .kernel(),
            ],
            None => vec![self.kernel()],
        }
    }

    /// The product alone as a launch of the tiled kernel of kernels/matmul.cu (buffer positions
    /// as the operands'). Panics if `c.transposed` (no plan makes one) or with a bias.
    pub fn kernel(&self) -> KernelCall {
        assert!(
            self.bias.is_none(),
            "kdc-cuda: a GEMM with a bias runs as Gemm::kernels"
        );
        assert!(
            !self.c.transposed,
            "kdc-cuda: a GEMM result is never transposed"
        );
        let layout = MatmulLayout {
            lda: self.a.ld,
            ldb: self.b.ld,
            ldc: self.c.ld,
            stride_a: self.a.batch_stride,
            stride_b: self.b.batch_stride,
            stride_c: self.c.batch_stride,
        };
        let arg = |o: &Operand| Arg::Buf {
            index: o.index,
            offset: o.offset,
        };
        launch::matmul_strided(
            self.batch,
            self.m,
            self.n,
            self.k,
            self.a.transposed,
            self.b.transposed,
            self.accumulate,
            self.bf16,
            &layout,
            arg(&self.a),
            arg(&self.b),
            arg(&self.c),
        )
    }
}

/// An operation the CUDA kernels cannot run (an operator or shapes outside what they cover).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// The operation's kind (`MatMul`, `TopK`, `Mse`).
    pub op: &'static str,
    pub input_shapes: Vec<Vec<usize>>,
    pub shape: Vec<usize>,
    pub reason: String,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the CUDA kernels cannot run {} on inputs {:?} into {:?}: {}",
            self.op, self.input_shapes, self.shape, self.reason
        )
    }
}

impl std::error::Error for Unsupported {}

/// `[rows, cols]` of a tensor seen as rows of its last axis (a scalar is one row of one).
fn rows_cols(shape: &[usize]) -> (usize, usize) {
    let c = shape.last().copied().unwrap_or(1);
    (numel(shape).checked_div(c).unwrap_or(0), c)
}

/// `[outer, n, inner]` around `axis`.
fn axis_dims(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// Whether `op` typed bf16 rounds its output in a pass of its own after its kernels (they
/// cannot round as they store), as [`plan`] makes it; false for one it cannot run.
pub fn rounding_pass(op: &Op, input_shapes: &[Vec<usize>], shape: &[usize]) -> bool {
    plan(op, input_shapes, shape, Dtype::Bf16).is_ok_and(|steps| {
        steps
            .iter()
            .any(|s| matches!(s, Step::Kernel(c) if c.kernel == "kdc_round_bf16"))
    })
}

/// Floats of scratch memory the steps of `op` (output typed `dtype`) use (buffer position
/// `inputs + 1`).
pub fn scratch_len(op: &Op, input_shapes: &[Vec<usize>], shape: &[usize], dtype: Dtype) -> usize {
    let first = || input_shapes.first().map(|s| rows_cols(s)).unwrap_or((0, 0));
    match op {
        // The two factors as bf16, two to a float, and a bias's rounded copy.
        Op::MatMul { .. } | Op::MatMulAdd { .. } if dtype == Dtype::Bf16 => {
            bf16_factors(input_shapes).2 + bf16_bias(input_shapes, shape)
        }
        // Each query row's log-sum-exp and Σ p·dp.
        Op::AttentionBackward { .. } => {
            let q = input_shapes.first().map_or(&[][..], |s| &s[..]);
            2 * q[..q.len().saturating_sub(1)].iter().product::<usize>()
        }
        // The rows' mean and reciprocal standard deviation.
        Op::LayerNorm { .. } | Op::LayerNormParamGrads { .. } => 2 * first().0,
        Op::Loss(LossKind::CrossEntropyDiagonal) => first().0,
        Op::Loss(LossKind::Kl | LossKind::CrossEntropySoft) => 2 * first().0,
        Op::Loss(LossKind::Mse | LossKind::L1 | LossKind::SmoothL1 { .. }) => {
            2 * launch::pair_loss_blocks(input_shapes.first().map_or(0, |s| numel(s)))
        }
        _ => 0,
    }
}

/// Where a bf16 product's factors go in its scratch: (A's float offset, B's, floats in all,
/// which is where a bias's rounded copy goes). Each part starts on a multiple of 16 floats, as
/// the memory plan aligns the scratch itself (64 bytes): the tensor-core GEMMs and cuBLASLt's
/// bias epilogue need aligned pointers.
fn bf16_factors(input_shapes: &[Vec<usize>]) -> (usize, usize, usize) {
    let half = |i: usize| {
        input_shapes
            .get(i)
            .map_or(0, |s| numel(s).div_ceil(2).next_multiple_of(16))
    };
    (0, half(0), half(0) + half(1))
}

/// `call` with its buffers remapped to `positions`, the scratch's (`scratch`) read or written
/// at `offset` floats into it.
fn in_scratch(call: KernelCall, positions: &[usize], scratch: usize, offset: usize) -> KernelCall {
    let mut call = launch::remap(call, positions);
    for arg in &mut call.args {
        if let Arg::Buf { index, offset: at } = arg {
            if *index == scratch {
                *at = offset;
            }
        }
    }
    call
}

/// Floats of a bf16 product's scratch after its factors: a bias's rounded copy.
fn bf16_bias(input_shapes: &[Vec<usize>], shape: &[usize]) -> usize {
    match input_shapes.get(2) {
        Some(addend) if is_row_bias(addend, shape) => numel(addend),
        _ => 0,
    }
}

/// Checks and builds the steps of one operation.
struct Planner<'a> {
    op: &'a Op,
    shapes: &'a [Vec<usize>],
    shape: &'a [usize],
    dtype: Dtype,
}

type Plan = Result<Vec<Step>, Unsupported>;

impl Planner<'_> {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, Unsupported> {
        Err(Unsupported {
            op: self.op.kind(),
            input_shapes: self.shapes.to_vec(),
            shape: self.shape.to_vec(),
            reason: reason.into(),
        })
    }

    fn ensure(&self, ok: bool, reason: impl FnOnce() -> String) -> Result<(), Unsupported> {
        if ok {
            Ok(())
        } else {
            self.fail(reason())
        }
    }

    /// Position of the output.
    fn out(&self) -> usize {
        self.shapes.len()
    }

    /// Position of the scratch.
    fn scratch(&self) -> usize {
        self.shapes.len() + 1
    }

    fn n(&self) -> usize {
        numel(self.shape)
    }

    /// Input `i` has as many elements as the output.
    fn same_size(&self, i: usize) -> Result<(), Unsupported> {
        self.ensure(numel(&self.shapes[i]) == self.n(), || {
            format!("input {i} and the output differ in size")
        })
    }

    fn rank_at_most(&self, shape: &[usize], r: usize) -> Result<(), Unsupported> {
        self.ensure(shape.len() <= r, || {
            format!("{shape:?} has more than {r} dimensions")
        })
    }

    /// `[outer, n, inner]` of input 0 around `axis`, which must exist.
    fn lanes(&self, axis: usize) -> Result<(usize, usize, usize), Unsupported> {
        let s = &self.shapes[0];
        self.ensure(axis < s.len(), || {
            format!("axis {axis} of a rank-{} tensor", s.len())
        })?;
        Ok(axis_dims(s, axis))
    }

    /// `[outer, n, inner]` of a reduction of input 0 (over everything when `axis` is None),
    /// checking the output's size and that lanes are not empty.
    fn reduction(&self, axis: Option<usize>) -> Result<(usize, usize, usize), Unsupported> {
        let dims = match axis {
            Some(a) => self.lanes(a)?,
            None => (1, numel(&self.shapes[0]), 1),
        };
        self.ensure(dims.1 > 0, || "a reduction over an empty axis".into())?;
        Ok(dims)
    }

    /// A lane operation (softmax, normalisation…) of input 0 into an output of its size.
    fn lane_op(&self, axis: usize) -> Result<(usize, usize, usize), Unsupported> {
        self.same_size(0)?;
        for i in 1..self.shapes.len() {
            self.same_size(i)?;
        }
        self.lanes(axis)
    }

    fn broadcasts(&self, from: &[usize], to: &[usize]) -> Result<(), Unsupported> {
        let ok = from.len() <= to.len()
            && from
                .iter()
                .rev()
                .zip(to.iter().rev())
                .all(|(&f, &t)| f == t || f == 1);
        self.ensure(ok, || format!("{from:?} does not broadcast to {to:?}"))?;
        self.rank_at_most(to, MAX_RANK)
    }

    /// One kernel whose buffers `0..` are the positions in `map`.
    fn kernel(&self, call: KernelCall, map: &[usize]) -> Plan {
        Ok(vec![Step::Kernel(launch::remap(call, map))])
    }

    fn kernels(&self, calls: Vec<KernelCall>, map: &[usize]) -> Plan {
        Ok(calls
            .into_iter()
            .map(|c| Step::Kernel(launch::remap(c, map)))
            .collect())
    }

    /// The matrix product of inputs 0 and 1 into the output.
    fn gemm(&self, ta: bool, tb: bool, accumulate: bool) -> Result<Gemm, Unsupported> {
        let (sa, sb, so) = (&self.shapes[0], &self.shapes[1], self.shape);
        self.ensure(sa.len() >= 2 && sb.len() >= 2 && so.len() >= 2, || {
            "matrix products need operands and a result of rank 2 or more".into()
        })?;
        let last2 = |s: &[usize]| (s[s.len() - 2], s[s.len() - 1]);
        let (m, n) = last2(so);
        let (a0, a1) = last2(sa);
        let (b0, b1) = last2(sb);
        let (am, k) = if ta { (a1, a0) } else { (a0, a1) };
        let (bk, bn) = if tb { (b1, b0) } else { (b0, b1) };
        self.ensure(am == m && bn == n && bk == k, || {
            format!("op(a) is [{am}, {k}], op(b) [{bk}, {bn}], the result [{m}, {n}]")
        })?;
        let batch: usize = so[..so.len() - 2].iter().product();
        let (a_batched, b_batched) = (sa.len() > 2, sb.len() > 2);
        self.ensure(!a_batched || numel(sa) == batch * m * k, || {
            "a batched a with another batch than the result".into()
        })?;
        self.ensure(!b_batched || numel(sb) == batch * k * n, || {
            "a batched b with another batch than the result".into()
        })?;
        Ok(Gemm {
            batch,
            m,
            n,
            k,
            a: Operand {
                index: 0,
                offset: 0,
                batch_stride: if a_batched { m * k } else { 0 },
                transposed: ta,
                ld: if ta { m } else { k }.max(1),
            },
            b: Operand {
                index: 1,
                offset: 0,
                batch_stride: if b_batched { k * n } else { 0 },
                transposed: tb,
                ld: if tb { k } else { n }.max(1),
            },
            c: Operand {
                index: self.out(),
                offset: 0,
                batch_stride: m * n,
                transposed: false,
                ld: n.max(1),
            },
            accumulate,
            bf16: false,
            bias: None,
        })
    }

    /// An attention's dimensions from the first three (or four, with a bias) input shapes.
    fn attention_dims(&self, has_bias: bool) -> Result<kdc_backend::AttentionDims, Unsupported> {
        let dims =
            kdc_backend::AttentionDims::of(self.shapes, has_bias).or_else(|e| self.fail(e))?;
        self.ensure(
            dims.bias.is_none() || dims.lead.len() <= launch::ATTENTION_MAX_LEAD,
            || {
                format!(
                    "a bias over more than {} leading axes",
                    launch::ATTENTION_MAX_LEAD
                )
            },
        )?;
        Ok(dims)
    }

    /// Whether a block's `floats` of shared memory fit.
    fn attention_fits(&self, floats: usize) -> Result<(), Unsupported> {
        self.ensure(floats * 4 <= launch::MAX_SHARED_BYTES, || {
            format!(
                "a row of {floats} scores does not fit a block's {} KiB of shared memory",
                launch::MAX_SHARED_BYTES / 1024
            )
        })
    }

    /// The arity an operation takes.
    fn arity(&self) -> Result<usize, Unsupported> {
        Ok(match self.op {
            Op::Input(_) | Op::Param(_) => {
                return self.fail("a source: the runner sets its value, no kernel computes it")
            }
            Op::Fill(_) | Op::Constant(_) | Op::Eye | Op::CausalMask => 0,
            // q, k, v and an optional bias (then the output gradient).
            Op::Attention { .. } | Op::AttentionBackward { .. } => {
                let least = if matches!(self.op, Op::Attention { .. }) {
                    3
                } else {
                    4
                };
                match self.shapes.len() {
                    k if k == least || k == least + 1 => k,
                    k => {
                        return self.fail(format!(
                            "{k} inputs where it takes {least} or {}",
                            least + 1
                        ))
                    }
                }
            }
            Op::Unary(_)
            | Op::Permute(_)
            | Op::Reshape
            | Op::Detach
            | Op::Broadcast
            | Op::SumTo
            | Op::Reduce { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::Normalize { .. }
            | Op::Arg { .. }
            | Op::TopK { .. }
            | Op::Slice { .. }
            | Op::SliceBackward { .. } => 1,
            Op::Binary(_)
            | Op::MatMul { .. }
            | Op::ReduceBackward { .. }
            | Op::SoftmaxBackward { .. }
            | Op::LogSoftmaxBackward { .. }
            | Op::NormalizeBackward { .. }
            | Op::TopKBackward { .. }
            | Op::LayerNormParamGrads { .. }
            | Op::Embedding
            | Op::EmbeddingBackward
            | Op::GatherRows
            | Op::ScatterRows
            | Op::Concat { .. } => 2,
            Op::UnaryBackward(_)
            | Op::MatMulAdd { .. }
            | Op::Where
            | Op::LayerNorm { .. }
            | Op::LayerNormBackward { .. } => 3,
            Op::Loss(kind) => kind.arity(),
            Op::LossBackward { loss, .. } => loss.arity() + 1,
        })
    }

    /// The steps, with bf16 autocast's conversions and rounding around them.
    fn plan(&self) -> Plan {
        let mut steps = self.steps()?;
        if self.dtype == Dtype::F32 || steps.is_empty() {
            return Ok(steps);
        }
        if matches!(self.op, Op::MatMul { .. } | Op::MatMulAdd { .. }) {
            let (a_at, b_at, bias_at) = bf16_factors(self.shapes);
            let scratch = self.scratch();
            let cast = |input: usize, at: usize| {
                let call = launch::f32_to_bf16(numel(&self.shapes[input]));
                Step::Kernel(in_scratch(call, &[input, scratch], scratch, at))
            };
            let mut bias_rounding = Vec::new();
            for step in &mut steps {
                if let Step::Gemm(g) = step {
                    g.bf16 = true;
                    g.a.index = scratch;
                    g.a.offset = a_at;
                    g.b.index = scratch;
                    g.b.offset = b_at;
                    if let Some(bias) = &mut g.bias {
                        // The bias rounded in a copy after the factors, read from there by the
                        // epilogue (and by its broadcast).
                        let n = numel(&self.shapes[2]);
                        let at = |call, positions: &[usize]| {
                            in_scratch(call, positions, scratch, bias_at)
                        };
                        let mut copy = launch::broadcast_to(&[n], &[n]);
                        launch::round_output(&mut copy);
                        bias_rounding.push(Step::Kernel(at(copy, &[bias.index, scratch])));
                        bias.broadcast = at(
                            launch::broadcast_to(&self.shapes[2], self.shape),
                            &[scratch, self.out()],
                        );
                        bias.index = scratch;
                        bias.offset = bias_at;
                    }
                }
            }
            // A MatMulAdd's addend is rounded as it is broadcast into the output, before the
            // product accumulates onto it.
            for step in &mut steps {
                if let Step::Kernel(broadcast) = step {
                    let rounds = launch::round_output(broadcast);
                    debug_assert!(rounds, "a MatMulAdd's addend goes through a strided copy");
                }
            }
            steps.splice(0..0, bias_rounding);
            steps.splice(0..0, [cast(0, a_at), cast(1, b_at)]);
        } else if steps.iter().all(
            |step| matches!(step, Step::Kernel(call) if ROUNDING_KERNELS.contains(&call.kernel)),
        ) {
            // Every kernel of the operation rounds what it stores into the output (they write
            // disjoint parts of it and none reads it back).
            for step in &mut steps {
                if let Step::Kernel(call) = step {
                    launch::round_output(call);
                }
            }
            return Ok(steps);
        }
        steps.push(Step::Kernel(launch::remap(
            launch::round_bf16(self.n()),
            &[self.out()],
        )));
        Ok(steps)
    }

    /// The steps in f32.
    fn steps(&self) -> Plan {
        let arity = self.arity()?;
        self.ensure(self.shapes.len() == arity, || {
            format!("{} inputs where it takes {arity}", self.shapes.len())
        })?;
        let limit = i32::MAX as usize;
        for s in self
            .shapes
            .iter()
            .chain(std::iter::once(&self.shape.to_vec()))
        {
            let fits = s
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .is_some_and(|total| total <= limit);
            self.ensure(fits, || {
                format!("{s:?} has 2³¹ elements or more (the kernels index with int)")
            })?;
        }
        let (out, n) = (self.out(), self.n());
        if n == 0 {
            // Nothing to write (and lane kernels would still start one block).
            return Ok(vec![]);
        }
        match self.op {
            Op::Input(_) | Op::Param(_) => unreachable!("refused by arity"),
            Op::Fill(v) => self.kernel(launch::fill(n, v.0), &[out]),
            Op::Constant(values) => {
                self.ensure(values.len() == n, || {
                    format!("{} values for {n} elements", values.len())
                })?;
                Ok(vec![Step::Upload(values.iter().map(|v| v.0).collect())])
            }
            Op::Eye => {
                self.ensure(self.shape.len() == 2, || "an identity of rank ≠ 2".into())?;
                self.kernel(launch::eye(self.shape[0], self.shape[1]), &[out])
            }
            Op::CausalMask => {
                let square = self.shape.len() == 2 && self.shape[0] == self.shape[1];
                self.ensure(square, || "a causal mask that is not square".into())?;
                self.kernel(launch::causal_mask(self.shape[0]), &[out])
            }
            Op::Unary(f) => {
                self.same_size(0)?;
                self.kernel(launch::unary(UnaryCode::from(*f), n), &[0, out])
            }
            Op::UnaryBackward(f) => {
                (0..3).try_for_each(|i| self.same_size(i))?;
                let call = launch::unary_backward(UnaryCode::from(*f), n);
                self.kernel(call, &[0, 1, 2, out])
            }
            Op::Binary(f) => {
                self.broadcasts(&self.shapes[0], self.shape)?;
                self.broadcasts(&self.shapes[1], self.shape)?;
                let call = launch::binary(
                    BinaryCode::from(*f),
                    &self.shapes[0],
                    &self.shapes[1],
                    self.shape,
                );
                self.kernel(call, &[0, 1, out])
            }
            Op::MatMul { ta, tb } => Ok(vec![Step::Gemm(self.gemm(*ta, *tb, false)?)]),
            Op::MatMulAdd { ta, tb } => {
                self.broadcasts(&self.shapes[2], self.shape)?;
                let broadcast =
                    launch::remap(launch::broadcast_to(&self.shapes[2], self.shape), &[2, out]);
                if is_row_bias(&self.shapes[2], self.shape) {
                    let mut gemm = self.gemm(*ta, *tb, false)?;
                    gemm.bias = Some(Bias {
                        index: 2,
                        offset: 0,
                        broadcast,
                    });
                    return Ok(vec![Step::Gemm(gemm)]);
                }
                Ok(vec![
                    Step::Kernel(broadcast),
                    Step::Gemm(self.gemm(*ta, *tb, true)?),
                ])
            }
            Op::Attention { scale } => {
                let dims = self.attention_dims(self.shapes.len() == 4)?;
                let mut shape = dims.lead.clone();
                shape.extend([dims.m, dims.e]);
                self.ensure(self.shape == &shape[..], || {
                    format!("the output is {:?}, not {shape:?}", self.shape)
                })?;
                self.attention_fits(dims.n)?;
                let bias = if dims.bias.is_some() { 3 } else { 0 };
                self.kernel(launch::attention(&dims, scale.0), &[0, 1, 2, bias, out])
            }
            Op::AttentionBackward { scale } => {
                let k = self.shapes.len();
                let dims = Planner {
                    shapes: &self.shapes[..k - 1],
                    ..*self
                }
                .attention_dims(k == 5)?;
                let (qn, kn, vn) = (
                    dims.batch * dims.m * dims.d,
                    dims.batch * dims.n * dims.d,
                    dims.batch * dims.n * dims.e,
                );
                self.ensure(self.shape == [qn + kn + vn], || {
                    format!("the output is {:?}, not [{}]", self.shape, qn + kn + vn)
                })?;
                self.ensure(
                    numel(&self.shapes[k - 1]) == dims.batch * dims.m * dims.e,
                    || "the output gradient is not of the output's size".into(),
                )?;
                self.attention_fits(dims.n.max(dims.m) * 2)?;
                let (bias, dout, scratch) = (if k == 5 { 3 } else { 0 }, k - 1, self.scratch());
                let rows = launch::remap(
                    launch::attention_backward_rows(&dims, scale.0),
                    &[0, 1, 2, bias, dout, out, scratch],
                );
                let mut keys = launch::remap(
                    launch::attention_backward_keys(&dims, scale.0),
                    &[0, 1, 2, bias, dout, scratch, out, out],
                );
                // dk and dv after dq in the packed output: the call's last two buffers.
                let mut bufs = 0;
                for arg in &mut keys.args {
                    if let Arg::Buf { offset, .. } = arg {
                        bufs += 1;
                        match bufs {
                            7 => *offset = qn,
                            8 => *offset = qn + kn,
                            _ => {}
                        }
                    }
                }
                Ok(vec![Step::Kernel(rows), Step::Kernel(keys)])
            }
            Op::Permute(perm) => {
                let s = &self.shapes[0];
                let mut seen = vec![false; s.len()];
                let valid = perm.len() == s.len()
                    && perm
                        .iter()
                        .all(|&p| p < s.len() && !std::mem::replace(&mut seen[p], true));
                self.ensure(valid, || {
                    format!("{perm:?} is not a permutation of {s:?}'s axes")
                })?;
                self.same_size(0)?;
                self.rank_at_most(s, MAX_RANK)?;
                self.kernel(launch::permute(s, perm), &[0, out])
            }
            Op::Reshape | Op::Detach => {
                self.same_size(0)?;
                self.kernel(launch::copy(n), &[0, out])
            }
            Op::Broadcast => {
                self.broadcasts(&self.shapes[0], self.shape)?;
                self.kernel(launch::broadcast_to(&self.shapes[0], self.shape), &[0, out])
            }
            Op::SumTo => {
                self.broadcasts(self.shape, &self.shapes[0])?;
                self.kernel(launch::sum_to(&self.shapes[0], self.shape), &[0, out])
            }
            Op::Reduce { kind, axis } => {
                let (outer, len, inner) = self.reduction(*axis)?;
                self.ensure(n == outer * inner, || {
                    "the output is not the reduced shape".into()
                })?;
                let call = launch::reduce(ReduceCode::from(*kind), outer, len, inner);
                self.kernel(call, &[0, out])
            }
            Op::ReduceBackward { kind, axis } => {
                let (outer, len, inner) = self.reduction(*axis)?;
                self.same_size(0)?;
                self.ensure(numel(&self.shapes[1]) == outer * inner, || {
                    "dy is not the reduced shape".into()
                })?;
                let call = launch::reduce_backward(ReduceCode::from(*kind), outer, len, inner);
                self.kernel(call, &[0, 1, out])
            }
            Op::Arg { largest, axis } => {
                let (outer, len, inner) = self.reduction(*axis)?;
                self.ensure(n == outer * inner, || {
                    "the output is not the reduced shape".into()
                })?;
                self.kernel(launch::arg(*largest, outer, len, inner), &[0, out])
            }
            Op::Softmax { axis } => {
                let (o, l, i) = self.lane_op(*axis)?;
                self.kernel(launch::softmax(o, l, i), &[0, out])
            }
            Op::LogSoftmax { axis } => {
                let (o, l, i) = self.lane_op(*axis)?;
                self.kernel(launch::log_softmax(o, l, i), &[0, out])
            }
            Op::SoftmaxBackward { axis } => {
                let (o, l, i) = self.lane_op(*axis)?;
                self.kernel(launch::softmax_backward(o, l, i), &[0, 1, out])
            }
            Op::LogSoftmaxBackward { axis } => {
                let (o, l, i) = self.lane_op(*axis)?;
                self.kernel(launch::log_softmax_backward(o, l, i), &[0, 1, out])
            }
            Op::Normalize { axis, eps } => {
                let (o, l, i) = self.lane_op(*axis)?;
                self.kernel(launch::normalize(o, l, i, eps.0), &[0, out])
            }
            Op::NormalizeBackward { axis, eps } => {
                let (o, l, i) = self.lane_op(*axis)?;
                self.kernel(launch::normalize_backward(o, l, i, eps.0), &[0, 1, out])
            }
            Op::Where => {
                (0..3).try_for_each(|i| self.same_size(i))?;
                self.kernel(launch::select(n), &[0, 1, 2, out])
            }
            Op::TopK { k, axis } => {
                let (outer, len, inner) = self.lanes(*axis)?;
                self.ensure(*k >= 1 && *k <= len, || format!("k = {k} of {len}"))?;
                self.ensure(n == outer * k * inner, || {
                    "the output is not [.., k, ..]".into()
                })?;
                self.kernel(launch::topk(outer, len, inner, *k), &[0, out])
            }
            Op::TopKBackward { k, axis } => {
                let (outer, len, inner) = self.lanes(*axis)?;
                self.ensure(*k >= 1 && *k <= len, || format!("k = {k} of {len}"))?;
                self.same_size(0)?;
                self.ensure(numel(&self.shapes[1]) == outer * k * inner, || {
                    "dy is not [.., k, ..]".into()
                })?;
                self.kernel(launch::topk_backward(outer, len, inner, *k), &[0, 1, out])
            }
            Op::LayerNorm { eps } => {
                let (rows, d) = self.layer_norm_dims()?;
                self.ensure(
                    numel(&self.shapes[1]) == d && numel(&self.shapes[2]) == d,
                    || "gain and bias are not [d]".into(),
                )?;
                let mut call = launch::remap(
                    launch::layer_norm(rows, d, eps.0),
                    &[0, 1, 2, out, self.scratch(), self.scratch()],
                );
                // rstd follows the rows' means in the scratch.
                if let Some(Arg::Buf { offset, .. }) = call.args.last_mut() {
                    *offset = rows;
                }
                Ok(vec![Step::Kernel(call)])
            }
            Op::LayerNormBackward { eps } => {
                let (rows, d) = self.layer_norm_dims()?;
                self.ensure(numel(&self.shapes[1]) == d, || "gain is not [d]".into())?;
                self.ensure(numel(&self.shapes[2]) == n, || "dy is not x's size".into())?;
                let call = launch::layer_norm_backward_input(rows, d, eps.0);
                self.kernel(call, &[0, 1, 2, out])
            }
            Op::LayerNormParamGrads { eps } => {
                let (rows, d) = rows_cols(&self.shapes[0]);
                self.ensure(d > 0, || "layer norm over an empty axis".into())?;
                self.ensure(n == 2 * d, || "the output is not [2, d]".into())?;
                self.ensure(numel(&self.shapes[1]) == rows * d, || {
                    "dy is not x's size".into()
                })?;
                if rows == 0 {
                    return self.kernel(launch::fill(n, 0.0), &[out]);
                }
                let calls = launch::layer_norm_param_grads(rows, d, eps.0);
                self.kernels(calls, &[0, 1, out, self.scratch()])
            }
            Op::Embedding => {
                let t = &self.shapes[0];
                self.ensure(t.len() == 2, || "the table is not [v, w]".into())?;
                let (v, w, ids) = (t[0], t[1], numel(&self.shapes[1]));
                self.ensure(n == ids * w, || "the output is not [ids.., w]".into())?;
                self.kernel(launch::embedding(ids, v, w), &[0, 1, out])
            }
            Op::EmbeddingBackward => {
                self.ensure(self.shape.len() == 2, || "the table is not [v, w]".into())?;
                let (v, w, ids) = (self.shape[0], self.shape[1], numel(&self.shapes[0]));
                self.ensure(numel(&self.shapes[1]) == ids * w, || {
                    "dy is not [ids.., w]".into()
                })?;
                self.kernels(launch::embedding_backward(ids, v, w), &[0, 1, out])
            }
            Op::GatherRows => {
                let (x, index) = (&self.shapes[0], &self.shapes[1]);
                let ok = x.len() == 3 && index.len() == 2 && index[0] == x[0];
                self.ensure(ok, || "not x [b, t, w] and index [b, k]".into())?;
                let (b, t, w, k) = (x[0], x[1], x[2], index[1]);
                self.ensure(n == b * k * w, || "the output is not [b, k, w]".into())?;
                self.kernel(launch::gather_rows(b, t, k, w), &[0, 1, out])
            }
            Op::ScatterRows => {
                let (index, dy, s) = (&self.shapes[0], &self.shapes[1], self.shape);
                let ok = s.len() == 3 && index.len() == 2 && index[0] == s[0];
                self.ensure(ok, || "not index [b, k] into dx [b, t, w]".into())?;
                let (b, t, w, k) = (s[0], s[1], s[2], index[1]);
                self.ensure(numel(dy) == b * k * w, || "dy is not [b, k, w]".into())?;
                self.kernels(launch::scatter_rows(b, t, k, w), &[0, 1, out])
            }
            Op::Concat { axis } => {
                let (a, b) = (&self.shapes[0], &self.shapes[1]);
                let ok = *axis < a.len()
                    && a.len() == b.len()
                    && a.len() == self.shape.len()
                    && (0..a.len()).all(|d| {
                        if d == *axis {
                            a[d] + b[d] == self.shape[d]
                        } else {
                            a[d] == b[d] && a[d] == self.shape[d]
                        }
                    });
                self.ensure(ok, || format!("not a concatenation along axis {axis}"))?;
                self.rank_at_most(a, MAX_RANK)?;
                self.kernels(launch::concat(a, b, *axis), &[0, 1, out])
            }
            Op::Slice { axis, start } => {
                self.slice_shapes(&self.shapes[0], self.shape, *axis, *start)?;
                let call = launch::slice(&self.shapes[0], *axis, *start, self.shape[*axis]);
                self.kernel(call, &[0, out])
            }
            Op::SliceBackward { axis, start } => {
                self.slice_shapes(self.shape, &self.shapes[0], *axis, *start)?;
                let calls = launch::slice_backward(&self.shapes[0], *axis, *start, self.shape);
                self.kernels(calls, &[0, out])
            }
            Op::Loss(kind) => {
                self.ensure(n == 1, || "a loss is one value".into())?;
                let (rows, cols) = self.loss_dims(*kind)?;
                let scratch = self.scratch();
                match kind {
                    LossKind::CrossEntropyDiagonal => {
                        self.kernels(launch::ce_diagonal(rows, cols), &[0, out, scratch])
                    }
                    LossKind::Mse | LossKind::L1 | LossKind::SmoothL1 { .. } => {
                        let (code, beta) = pair_loss(*kind);
                        let calls = launch::pair_loss(code, rows * cols, beta);
                        self.kernels(calls, &[0, 1, out, scratch])
                    }
                    LossKind::Kl | LossKind::CrossEntropySoft => {
                        let calls = launch::row_loss(row_loss(*kind), rows, cols);
                        self.kernels(calls, &[0, 1, out, scratch])
                    }
                }
            }
            Op::LossBackward { loss, which } => {
                let (rows, cols) = self.loss_dims(*loss)?;
                let arity = loss.arity();
                self.ensure(*which < arity, || {
                    format!("input {which} of a loss of {arity}")
                })?;
                self.ensure(numel(&self.shapes[arity]) == 1, || {
                    "dloss is not one value".into()
                })?;
                self.ensure(n == rows * cols, || {
                    "the output is not the input's size".into()
                })?;
                match loss {
                    LossKind::CrossEntropyDiagonal => {
                        self.kernel(launch::ce_diagonal_backward(rows, cols), &[0, 1, out])
                    }
                    LossKind::Mse | LossKind::L1 | LossKind::SmoothL1 { .. } => {
                        let (code, beta) = pair_loss(*loss);
                        let call = launch::pair_loss_backward(code, *which, rows * cols, beta);
                        self.kernel(call, &[0, 1, 2, out])
                    }
                    LossKind::Kl | LossKind::CrossEntropySoft => {
                        let call = launch::row_loss_backward(row_loss(*loss), *which, rows, cols);
                        self.kernel(call, &[0, 1, 2, out])
                    }
                }
            }
        }
    }

    /// `[rows, d]` of a layer norm's x (input 0) and output of x's size.
    fn layer_norm_dims(&self) -> Result<(usize, usize), Unsupported> {
        let (rows, d) = rows_cols(&self.shapes[0]);
        self.ensure(d > 0, || "layer norm over an empty axis".into())?;
        self.same_size(0)?;
        Ok((rows, d))
    }

    /// `part` is `len` entries of `whole` from `start` along `axis`, the same elsewhere.
    fn slice_shapes(
        &self,
        whole: &[usize],
        part: &[usize],
        axis: usize,
        start: usize,
    ) -> Result<(), Unsupported> {
        let ok = axis < whole.len()
            && whole.len() == part.len()
            && start + part[axis] <= whole[axis]
            && (0..whole.len()).all(|d| d == axis || whole[d] == part[d]);
        self.ensure(ok, || {
            format!("{part:?} is not a slice of {whole:?} from {start} along axis {axis}")
        })?;
        self.rank_at_most(whole, MAX_RANK)
    }

    /// `[rows, cols]` of a loss's operands (input 0, and input 1 of the same size when the
    /// loss has two), checking what each kernel needs.
    fn loss_dims(&self, kind: LossKind) -> Result<(usize, usize), Unsupported> {
        let (rows, cols) = rows_cols(&self.shapes[0]);
        if kind.arity() == 2 {
            self.ensure(self.shapes[1] == self.shapes[0], || {
                "the loss's operands differ in shape".into()
            })?;
        }
        match kind {
            LossKind::CrossEntropyDiagonal => self.ensure(rows >= 1 && rows <= cols, || {
                "cross_entropy[diagonal] needs 1 <= rows <= columns".into()
            })?,
            LossKind::Kl | LossKind::CrossEntropySoft => {
                self.ensure(rows >= 1, || "a row loss without rows".into())?
            }
            LossKind::SmoothL1 { beta } => self.ensure(beta.0 >= 0.0, || {
                "smooth_l1 needs a non-negative beta".into()
            })?,
            LossKind::Mse | LossKind::L1 => {}
        }
        Ok((rows, cols))
    }
}

fn pair_loss(kind: LossKind) -> (PairLossCode, f32) {
    match kind {
        LossKind::Mse => (PairLossCode::Mse, 0.0),
        LossKind::L1 => (PairLossCode::L1, 0.0),
        LossKind::SmoothL1 { beta } => (PairLossCode::SmoothL1, beta.0),
        other => unreachable!("{other:?} is not an elementwise loss"),
    }
}

fn row_loss(kind: LossKind) -> RowLossCode {
    match kind {
        LossKind::Kl => RowLossCode::Kl,
        LossKind::CrossEntropySoft => RowLossCode::CrossEntropySoft,
        other => unreachable!("{other:?} is not a row loss"),
    }
}

/// The device work of `op` on inputs of `input_shapes` into an output of `shape` typed
/// `dtype`, in order, with buffers by position (see the module documentation); or why the
/// kernels cannot do it. Never panics.
pub fn plan(
    op: &Op,
    input_shapes: &[Vec<usize>],
    shape: &[usize],
    dtype: Dtype,
) -> Result<Vec<Step>, Unsupported> {
    Planner {
        op,
        shapes: input_shapes,
        shape,
        dtype,
    }
    .plan()
}
