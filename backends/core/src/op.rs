//! The operator set of a compiled step: forward operations from the model towers and the
//! recipe's loss, and the backward operations autodiff appends, all on concrete shapes. A
//! backward step is an operation of the same set (the gradient of a matmul is two matmuls), so
//! every pass and every backend sees one kind of node.
//!
//! Operators are plain data: `Eq` and `Hash` (floats compare by their bits), so the engine's
//! common-subexpression pass keys on them directly.

use std::fmt;

/// An `f32` that compares and hashes by its bits, for the constants inside operators
/// (a fill value, an epsilon, a threshold). Prints as the plain number.
#[derive(Clone, Copy, Default)]
pub struct F32(pub f32);

impl PartialEq for F32 {
    fn eq(&self, other: &F32) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for F32 {}

impl std::hash::Hash for F32 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

impl fmt::Debug for F32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for F32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl serde::Serialize for F32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f32(self.0)
    }
}

/// A unary elementwise function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    /// The exact GELU, x·Φ(x).
    Gelu,
    /// x·σ(1.702x).
    QuickGelu,
    /// max(x, 0); gradient 0 at 0.
    Relu,
    /// 1 / (1 + e⁻ˣ).
    Sigmoid,
    Tanh,
}

impl Unary {
    /// Every unary function, in declaration order.
    pub const ALL: [Unary; 10] = [
        Unary::Neg,
        Unary::Exp,
        Unary::Log,
        Unary::Sqrt,
        Unary::Abs,
        Unary::Gelu,
        Unary::QuickGelu,
        Unary::Relu,
        Unary::Sigmoid,
        Unary::Tanh,
    ];
}

/// A binary elementwise function with NumPy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    /// The larger; on ties the gradient goes to the first operand.
    Max,
    /// The smaller; on ties the gradient goes to the first operand.
    Min,
    /// Comparisons: 1 where true, 0 where false, no gradient.
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Binary {
    /// Every binary function, in declaration order.
    pub const ALL: [Binary; 12] = [
        Binary::Add,
        Binary::Sub,
        Binary::Mul,
        Binary::Div,
        Binary::Max,
        Binary::Min,
        Binary::Gt,
        Binary::Ge,
        Binary::Lt,
        Binary::Le,
        Binary::Eq,
        Binary::Ne,
    ];
}

impl Binary {
    /// Whether the result is a comparison (0 or 1, no gradient).
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            Binary::Gt | Binary::Ge | Binary::Lt | Binary::Le | Binary::Eq | Binary::Ne
        )
    }
}

/// A reduction along one axis, or over everything (`axis: None`, a scalar result).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduce {
    Sum,
    Mean,
    /// Biased variance.
    Var,
    /// The largest value; the gradient goes to its (first) position.
    Max,
    /// The smallest value; the gradient goes to its (first) position.
    Min,
}

/// A loss primitive: a scalar from one or two tensors. The checked IR and the engine graph
/// share this one enum, so a new primitive is declared once (ARCHITECTURE.md lists the other
/// places it touches).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum LossKind {
    /// Mean of (a − b)² over all elements.
    Mse,
    /// Mean of |a − b| over all elements.
    L1,
    /// Mean of ½d²/β where |d| < β, else |d| − ½β, d = a − b.
    SmoothL1 { beta: F32 },
    /// KL(p ‖ q) from log-probabilities (log p, log q) over the last axis: Σ p (log p − log q),
    /// mean over rows.
    Kl,
    /// Cross-entropy of row logits against the diagonal (row i's target is column i), mean
    /// over rows.
    CrossEntropyDiagonal,
    /// Cross-entropy of row logits against given target probabilities, mean over rows.
    CrossEntropySoft,
}

impl LossKind {
    /// How many tensors the loss reads.
    pub fn arity(self) -> usize {
        match self {
            LossKind::CrossEntropyDiagonal => 1,
            _ => 2,
        }
    }

    /// The name the language and the IR explanation use (`smooth_l1[beta 1]`).
    pub fn name(self) -> String {
        match self {
            LossKind::Mse => "mse".into(),
            LossKind::L1 => "l1".into(),
            LossKind::SmoothL1 { beta } => format!("smooth_l1[beta {beta}]"),
            LossKind::Kl => "kl".into(),
            LossKind::CrossEntropyDiagonal => "cross_entropy[diagonal]".into(),
            LossKind::CrossEntropySoft => "cross_entropy[soft]".into(),
        }
    }

    /// The name without parameters, for summaries and profiles (`Mse`, `SmoothL1`).
    pub fn kind(self) -> &'static str {
        match self {
            LossKind::Mse => "Mse",
            LossKind::L1 => "L1",
            LossKind::SmoothL1 { .. } => "SmoothL1",
            LossKind::Kl => "Kl",
            LossKind::CrossEntropyDiagonal => "CrossEntropyDiagonal",
            LossKind::CrossEntropySoft => "CrossEntropySoft",
        }
    }
}

/// One operation of a compiled step.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A value set from outside before each run: a batch input (pixels, token ids, pooling and
    /// mask indices, held as exact f32 integers) or a scalar that follows the step (a loss
    /// weight, a schedule), by index into the graph's table of inputs.
    Input(usize),
    /// A trainable or frozen parameter, by index into the graph's parameters.
    Param(usize),
    /// A constant tensor filled with one value.
    Fill(F32),
    /// A constant tensor of the given values, row-major.
    Constant(Vec<F32>),
    /// The identity matrix.
    Eye,
    /// The additive causal mask: 0 on and below the diagonal, a large negative above.
    CausalMask,
    Unary(Unary),
    /// The backward of a unary function: inputs (x, y, dy) → dx.
    UnaryBackward(Unary),
    Binary(Binary),
    /// Batched matrix product of the last two axes; `ta`/`tb` read an operand transposed.
    /// An operand of rank 2 is shared by every batch item of the other.
    MatMul {
        ta: bool,
        tb: bool,
    },
    /// `MatMul { ta, tb }` of the first two inputs plus the third broadcast to the product's
    /// shape (a bias, a residual): made by the fusion pass, one pass over the output instead of
    /// two.
    MatMulAdd {
        ta: bool,
        tb: bool,
    },
    /// Reorders axes (a copy).
    Permute(Vec<usize>),
    /// The same data seen with another shape.
    Reshape,
    /// Repeats the input along axes of size 1 (or missing leading axes) to the output shape.
    Broadcast,
    /// Sums the input down to the output shape (the gradient of `Broadcast` and of
    /// broadcasting binary operations).
    SumTo,
    Reduce {
        kind: Reduce,
        axis: Option<usize>,
    },
    /// The gradient of a reduction: inputs (x, dy) → dx.
    ReduceBackward {
        kind: Reduce,
        axis: Option<usize>,
    },
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },
    /// Inputs (y, dy) → dx, y the softmax output.
    SoftmaxBackward {
        axis: usize,
    },
    /// Inputs (y, dy) → dx, y the log-softmax output.
    LogSoftmaxBackward {
        axis: usize,
    },
    /// x / max(‖x‖₂, ε) along an axis.
    Normalize {
        axis: usize,
        eps: F32,
    },
    /// Inputs (x, dy) → dx.
    NormalizeBackward {
        axis: usize,
        eps: F32,
    },
    /// The position of the largest (or smallest) value along an axis, or over everything, as
    /// an exact f32 integer; the first on ties. No gradient.
    Arg {
        largest: bool,
        axis: Option<usize>,
    },
    /// Inputs (c, a, b), all of the output's shape: a where c ≠ 0, else b. The gradient of a
    /// is dy·c and of b dy·(1 − c), written as products.
    Where,
    /// The k largest values along an axis, largest first (the axis becomes k long).
    TopK {
        k: usize,
        axis: usize,
    },
    /// Inputs (x, dy) → dx: each value's gradient back at its position.
    TopKBackward {
        k: usize,
        axis: usize,
    },
    /// Layer norm over the last axis: inputs (x, gain, bias).
    LayerNorm {
        eps: F32,
    },
    /// Inputs (x, gain, dy) → dx.
    LayerNormBackward {
        eps: F32,
    },
    /// Inputs (x, dy) → [2, n]: row 0 the gain's gradient, row 1 the bias's.
    LayerNormParamGrads {
        eps: F32,
    },
    /// Rows of a table: inputs (table [v, w], ids [..]) → [.., w].
    Embedding,
    /// Inputs (ids, dy) → the table's gradient (scatter-add), shape of the table.
    EmbeddingBackward,
    /// Per batch item, rows of x picked by index: (x [b, t, w], index [b, k]) → [b, k, w].
    GatherRows,
    /// Inputs (index [b, k], dy [b, k, w]) → dx [b, t, w] (scatter-add).
    ScatterRows,
    Concat {
        axis: usize,
    },
    /// A contiguous range along an axis.
    Slice {
        axis: usize,
        start: usize,
    },
    /// Inputs (dy) → dx zero outside the slice: the gradient of `Slice`.
    SliceBackward {
        axis: usize,
        start: usize,
    },
    /// A loss primitive's value, a scalar.
    Loss(LossKind),
    /// The gradient of a loss with respect to its input `which`: inputs (loss inputs…, dloss).
    LossBackward {
        loss: LossKind,
        which: usize,
    },
    /// Blocks gradients.
    Detach,
    /// Scaled dot-product attention in one operation, never holding the scores:
    /// `softmax(scale·q·kᵀ + bias)·v` per batch item. Inputs q `[.., m, d]`, k `[.., n, d]`,
    /// v `[.., n, e]` (equal leading axes) and optionally an additive bias (a causal or padding
    /// mask) that broadcasts to the scores `[.., m, n]`; output `[.., m, e]`. The softmax is taken
    /// in f32 with the row's maximum subtracted.
    Attention {
        scale: F32,
    },
    /// The gradient of `Attention`: inputs (q, k, v, [bias], do) → dq, dk and dv flattened and
    /// concatenated, `[len(q) + len(k) + len(v)]` (the bias gets none: it is a mask). The
    /// probabilities are recomputed, as flash attention does.
    AttentionBackward {
        scale: F32,
    },
}

impl Op {
    /// Whether the runner sets this value (a parameter or an input) rather than a kernel
    /// computing it.
    pub fn is_source(&self) -> bool {
        matches!(self, Op::Param(_) | Op::Input(_))
    }

    /// The operation's name without its parameters (`MatMul`, `Softmax`, `Mse`), for summaries
    /// and profiles.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input(_) => "Input",
            Op::Param(_) => "Param",
            Op::Fill(_) => "Fill",
            Op::Constant(_) => "Constant",
            Op::Eye => "Eye",
            Op::CausalMask => "CausalMask",
            Op::Unary(_) => "Unary",
            Op::UnaryBackward(_) => "UnaryBackward",
            Op::Binary(_) => "Binary",
            Op::MatMul { .. } => "MatMul",
            Op::MatMulAdd { .. } => "MatMulAdd",
            Op::Permute(_) => "Permute",
            Op::Reshape => "Reshape",
            Op::Broadcast => "Broadcast",
            Op::SumTo => "SumTo",
            Op::Reduce { .. } => "Reduce",
            Op::ReduceBackward { .. } => "ReduceBackward",
            Op::Softmax { .. } => "Softmax",
            Op::LogSoftmax { .. } => "LogSoftmax",
            Op::SoftmaxBackward { .. } => "SoftmaxBackward",
            Op::LogSoftmaxBackward { .. } => "LogSoftmaxBackward",
            Op::Normalize { .. } => "Normalize",
            Op::NormalizeBackward { .. } => "NormalizeBackward",
            Op::Arg { .. } => "Arg",
            Op::Where => "Where",
            Op::TopK { .. } => "TopK",
            Op::TopKBackward { .. } => "TopKBackward",
            Op::LayerNorm { .. } => "LayerNorm",
            Op::LayerNormBackward { .. } => "LayerNormBackward",
            Op::LayerNormParamGrads { .. } => "LayerNormParamGrads",
            Op::Embedding => "Embedding",
            Op::EmbeddingBackward => "EmbeddingBackward",
            Op::GatherRows => "GatherRows",
            Op::ScatterRows => "ScatterRows",
            Op::Concat { .. } => "Concat",
            Op::Slice { .. } => "Slice",
            Op::SliceBackward { .. } => "SliceBackward",
            Op::Loss(l) => l.kind(),
            Op::LossBackward { .. } => "LossBackward",
            Op::Detach => "Detach",
            Op::Attention { .. } => "Attention",
            Op::AttentionBackward { .. } => "AttentionBackward",
        }
    }

    /// Whether the output is its input's memory seen with another shape (no kernel work).
    pub fn is_view(&self) -> bool {
        matches!(self, Op::Reshape | Op::Detach)
    }
}

/// The type a value of a step has. Every value is held in f32 memory; a `Bf16` value is one
/// that has been rounded to bfloat16 (round to nearest, ties to even, as PyTorch's
/// `.to(torch.bfloat16)`), so a backend that stores it in two bytes loses nothing.
///
/// Under `precision(bf16)` the engine's autocast pass types the graph as PyTorch's automatic
/// mixed precision does and hands each operation its output's type in [`crate::Launch`]:
///
/// * a matrix product (`MatMul`, `MatMulAdd`) typed `Bf16` reads its inputs rounded to bf16
///   (a `MatMulAdd`'s addend too: a linear layer's bias, cast with the layer as autocast
///   does), accumulates in f32 and rounds its output;
/// * any other operation typed `Bf16` runs in f32 and rounds its output.
///
/// `F32` operations are unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even), as an f32: the upper 16 bits of the
/// rounded value, the lower 16 zero. NaN stays NaN (quiet), infinities stay, values beyond
/// bf16's largest finite round to infinity — CUDA's `__float2bfloat16_rn` exactly.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((bits | 0x0040_0000) & 0xffff_0000);
    }
    let lsb = (bits >> 16) & 1;
    f32::from_bits(bits.wrapping_add(0x7fff + lsb) & 0xffff_0000)
}

/// Rounds every value of `xs` to bf16 in place ([`round_bf16`]).
pub fn round_bf16_slice(xs: &mut [f32]) {
    for x in xs {
        *x = round_bf16(*x);
    }
}

/// The dimensions of an [`Op::Attention`] (or its backward) on inputs of `shapes`: q, k, v
/// and, when there are four inputs (three for the forward), the bias.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// The leading axes, and their product.
    pub lead: Vec<usize>,
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub d: usize,
    pub e: usize,
    /// The bias's element strides along the leading axes (0 where it broadcasts), along the
    /// query rows and along the keys; `None` without a bias.
    pub bias: Option<(Vec<usize>, usize, usize)>,
}

impl AttentionDims {
    /// The dimensions, or why the shapes do not fit (`has_bias`: the fourth shape is a bias).
    pub fn of(shapes: &[Vec<usize>], has_bias: bool) -> Result<AttentionDims, String> {
        let (q, k, v) = match shapes {
            [q, k, v, ..] => (q, k, v),
            _ => return Err("attention takes q, k and v".into()),
        };
        let r = q.len();
        if r < 2 || k.len() != r || v.len() != r {
            return Err(format!(
                "q {q:?}, k {k:?}, v {v:?} are not [.., rows, width] of one rank"
            ));
        }
        let lead = q[..r - 2].to_vec();
        if k[..r - 2] != lead[..] || v[..r - 2] != lead[..] {
            return Err(format!(
                "q {q:?}, k {k:?}, v {v:?} differ in their leading axes"
            ));
        }
        let (m, d, n, e) = (q[r - 2], q[r - 1], k[r - 2], v[r - 1]);
        if k[r - 1] != d || v[r - 2] != n {
            return Err(format!("k {k:?} and v {v:?} do not fit q {q:?}"));
        }
        let bias = if has_bias {
            let b = shapes.get(3).ok_or("the bias is missing")?;
            let mut scores = lead.clone();
            scores.extend([m, n]);
            if b.len() > scores.len() {
                return Err(format!(
                    "the bias {b:?} does not broadcast to the scores {scores:?}"
                ));
            }
            // Row-major strides of the bias, right-aligned to the scores; 0 where it broadcasts.
            let mut strides = vec![0; scores.len()];
            let mut stride = 1;
            for (i, &dim) in b.iter().enumerate().rev() {
                let at = scores.len() - b.len() + i;
                if dim != scores[at] && dim != 1 {
                    return Err(format!(
                        "the bias {b:?} does not broadcast to the scores {scores:?}"
                    ));
                }
                strides[at] = if dim == 1 { 0 } else { stride };
                stride *= dim;
            }
            Some((strides[..r - 2].to_vec(), strides[r - 2], strides[r - 1]))
        } else {
            None
        };
        Ok(AttentionDims {
            batch: lead.iter().product(),
            lead,
            m,
            n,
            d,
            e,
            bias,
        })
    }

    /// The bias's offset for batch item `beta` (the leading axes flattened row-major).
    pub fn bias_offset(&self, beta: usize) -> usize {
        let Some((strides, _, _)) = &self.bias else {
            return 0;
        };
        let mut rest = beta;
        let mut offset = 0;
        for (a, &dim) in self.lead.iter().enumerate().rev() {
            offset += (rest % dim) * strides[a];
            rest /= dim;
        }
        offset
    }
}

/// The default ε of `Normalize` (x / max(‖x‖₂, ε)), as `torch.nn.functional.normalize`.
pub const NORMALIZE_EPS: f32 = 1e-12;

/// The number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Whether a `MatMulAdd`'s addend of shape `addend` is one vector along the last axis of its
/// output of shape `out` (a linear layer's bias): what a GEMM epilogue adds to each row as it
/// writes the product (cuBLASLt's bias epilogue), instead of a broadcast of the addend into the
/// output that the product then accumulates onto.
pub fn is_row_bias(addend: &[usize], out: &[usize]) -> bool {
    match out.last() {
        Some(&n) => out.len() >= 2 && addend.last() == Some(&n) && numel(addend) == n,
        None => false,
    }
}

/// The broadcast of two shapes (NumPy rules), or `None`.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for (i, o) in out.iter_mut().enumerate() {
        let x = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let y = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        *o = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `round_bf16` agrees bit for bit with the `half` crate's conversion (round to nearest
    /// even) on every class of value: ties both ways, subnormals, the overflow edge, NaN.
    #[test]
    fn round_bf16_matches_the_half_crate() {
        let reference = |x: f32| half::bf16::from_f32(x).to_f32();
        let mut xs: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            f32::from_bits(0x3f80_8000), // a tie, even below: stays 1.0
            f32::from_bits(0x3f81_8000), // a tie, odd below: rounds up
            f32::from_bits(0x3f80_8001), // just above a tie
            f32::MIN_POSITIVE,
            f32::from_bits(1),           // the smallest subnormal
            f32::from_bits(0x7f7f_ffff), // f32::MAX: beyond bf16's largest, rounds to ∞
            f32::from_bits(0x7f7f_7fff), // stays bf16's largest finite
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        // A deterministic sweep over the bit patterns (every exponent, many mantissas).
        let mut state = 0x1234_5678u32;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            xs.push(f32::from_bits(state));
        }
        for x in xs {
            let (got, want) = (round_bf16(x), reference(x));
            if want.is_nan() {
                assert!(got.is_nan(), "{x:e} ({:#x})", x.to_bits());
                assert_eq!(got.to_bits() & 0xffff, 0);
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{x:e} ({:#x})", x.to_bits());
            }
        }
    }
}
