//! Launch descriptions: which kernel, on what grid, with which arguments, for a problem size.
//!
//! A [`KernelCall`] names its buffers by position ([`Arg::Buf`]): each builder documents the
//! buffers it expects, in order. The CUDA backend binds them to device pointers (cudarc's
//! launch takes the same `void**` argument array the emulator does); the emulated tests bind
//! them to host buffers with guard zones. Building both from here means the tests run the
//! launch configurations the GPU will run.
//!
//! Sizes are `int` in the kernels: builders panic on tensors of 2³¹ elements or more.

use crate::kernels::{BinaryCode, PairLossCode, ReduceCode, RowLossCode, UnaryCode};

/// Threads per block of the elementwise kernels.
pub const ELEMENTWISE_BLOCK: u32 = 256;
/// Most blocks an elementwise launch uses (the kernels loop over the rest, grid-stride).
pub const ELEMENTWISE_MAX_BLOCKS: u32 = 4096;
/// Most dimensions of the broadcasting and strided-copy kernels (`KDC_MAX_RANK`).
pub const MAX_RANK: usize = 8;
/// Tile edge of the shared-memory matrix product (`KDC_TILE` in matmul.cu).
pub const MATMUL_TILE: u32 = 16;

/// One kernel argument.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// A pointer to buffer `index` of the caller's list, `offset` elements in.
    Buf {
        index: usize,
        offset: usize,
    },
    I32(i32),
    F32(f32),
    /// A struct passed by value (its bytes, `#[repr(C)]` layout matching the kernel's).
    Bytes(Vec<u8>),
}

/// A pointer to the start of buffer `index`.
pub fn buf(index: usize) -> Arg {
    Arg::Buf { index, offset: 0 }
}

/// `args` followed by pointers to buffers 0, 1, …, `n − 1` (the kernels' usual signature:
/// sizes and scalars first, then the buffers in order).
fn with_bufs(mut args: Vec<Arg>, n: usize) -> Vec<Arg> {
    args.extend((0..n).map(buf));
    args
}

/// One kernel launch.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelCall {
    pub kernel: &'static str,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Bytes of dynamic shared memory.
    pub shared_bytes: u32,
    pub args: Vec<Arg>,
}

fn int(n: usize) -> i32 {
    i32::try_from(n).unwrap_or_else(|_| panic!("kdc-cuda: size {n} does not fit the kernels' int"))
}

/// A call of one of [`crate::kernels::ROUNDING_KERNELS`]: its last argument, `round`, starts
/// 0 (the output stored in f32); [`round_output`] sets it.
fn storing(mut call: KernelCall) -> KernelCall {
    debug_assert!(crate::kernels::ROUNDING_KERNELS.contains(&call.kernel));
    call.args.push(Arg::I32(0));
    call
}

/// Makes `call` round what it stores into its output to bf16 (the output of an operation typed
/// bf16), if its kernel can ([`crate::kernels::ROUNDING_KERNELS`]): then no separate rounding
/// pass is needed. Returns whether it can.
pub fn round_output(call: &mut KernelCall) -> bool {
    if !crate::kernels::ROUNDING_KERNELS.contains(&call.kernel) {
        return false;
    }
    match call.args.last_mut() {
        Some(Arg::I32(round)) => {
            *round = 1;
            true
        }
        _ => unreachable!("{}: its last argument is `int round`", call.kernel),
    }
}

fn elementwise(kernel: &'static str, n: usize, args: Vec<Arg>) -> KernelCall {
    let blocks = n
        .div_ceil(ELEMENTWISE_BLOCK as usize)
        .clamp(1, ELEMENTWISE_MAX_BLOCKS as usize);
    KernelCall {
        kernel,
        grid: [blocks as u32, 1, 1],
        block: [ELEMENTWISE_BLOCK, 1, 1],
        shared_bytes: 0,
        args,
    }
}

/// Threads for one block reducing `n` values: a multiple of 32 (the block reductions need
/// whole warps), at most 256.
pub fn reduction_block(n: usize) -> u32 {
    (n.next_power_of_two().clamp(32, 256)) as u32
}

/// One block per lane of `[outer, n, inner]` (`outer · inner` blocks, spread over the grid's
/// x and y so that it stays within CUDA's limits).
fn per_lane(kernel: &'static str, lanes: usize, n: usize, args: Vec<Arg>) -> KernelCall {
    let lanes = lanes.max(1);
    let (gx, gy) = if lanes <= i32::MAX as usize {
        (lanes as u32, 1)
    } else {
        panic!("kdc-cuda: {lanes} lanes exceed the grid")
    };
    KernelCall {
        kernel,
        grid: [gx, gy, 1],
        block: [reduction_block(n), 1, 1],
        shared_bytes: 0,
        args,
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise (kernels/elementwise.cu).

/// `y = f(x)`; buffers (x, y).
pub fn unary(op: UnaryCode, n: usize) -> KernelCall {
    storing(elementwise(
        "kdc_unary_f32",
        n,
        vec![Arg::I32(op as i32), Arg::I32(int(n)), buf(0), buf(1)],
    ))
}

/// `dx = dy · f'(x)`; buffers (x, y, dy, dx), y the forward output.
pub fn unary_backward(op: UnaryCode, n: usize) -> KernelCall {
    storing(elementwise(
        "kdc_unary_backward_f32",
        n,
        with_bufs(vec![Arg::I32(op as i32), Arg::I32(int(n))], 4),
    ))
}

/// `x = value`; buffers (x).
pub fn fill(n: usize, value: f32) -> KernelCall {
    elementwise(
        "kdc_fill_f32",
        n,
        vec![Arg::I32(int(n)), Arg::F32(value), buf(0)],
    )
}

/// `x *= factor`; buffers (x).
pub fn scale(n: usize, factor: f32) -> KernelCall {
    elementwise(
        "kdc_scale_f32",
        n,
        vec![Arg::I32(int(n)), Arg::F32(factor), buf(0)],
    )
}

/// `x = clamp(x, lo, hi)`; buffers (x).
pub fn clamp(n: usize, lo: f32, hi: f32) -> KernelCall {
    elementwise(
        "kdc_clamp_f32",
        n,
        vec![Arg::I32(int(n)), Arg::F32(lo), Arg::F32(hi), buf(0)],
    )
}

/// `dst += weight · (src − dst)`; buffers (dst, src).
pub fn lerp(n: usize, weight: f32) -> KernelCall {
    elementwise(
        "kdc_lerp_f32",
        n,
        vec![Arg::I32(int(n)), Arg::F32(weight), buf(0), buf(1)],
    )
}

/// `dst += src`; buffers (dst, src).
pub fn add_into(n: usize) -> KernelCall {
    elementwise(
        "kdc_add_into_f32",
        n,
        vec![Arg::I32(int(n)), buf(0), buf(1)],
    )
}

/// `out = c ≠ 0 ? a : b`; buffers (c, a, b, out).
pub fn select(n: usize) -> KernelCall {
    elementwise("kdc_select_f32", n, with_bufs(vec![Arg::I32(int(n))], 4))
}

/// `dst = src`; buffers (src, dst).
pub fn copy(n: usize) -> KernelCall {
    elementwise("kdc_copy_f32", n, vec![Arg::I32(int(n)), buf(0), buf(1)])
}

/// The identity matrix `[rows, cols]`; buffers (out).
pub fn eye(rows: usize, cols: usize) -> KernelCall {
    int(rows * cols);
    elementwise(
        "kdc_eye_f32",
        rows * cols,
        vec![Arg::I32(int(rows)), Arg::I32(int(cols)), buf(0)],
    )
}

/// The additive causal mask `[l, l]` (0 on and below the diagonal, `f32::MIN` above); buffers
/// (out).
pub fn causal_mask(l: usize) -> KernelCall {
    int(l * l);
    elementwise("kdc_causal_mask_f32", l * l, vec![Arg::I32(int(l)), buf(0)])
}

// ---------------------------------------------------------------------------------------------
// Along an axis, tensors seen as [outer, n, inner] (kernels/lanes.cu). One block per lane.

fn lane_args(outer: usize, n: usize, inner: usize) -> Vec<Arg> {
    vec![Arg::I32(int(outer)), Arg::I32(int(n)), Arg::I32(int(inner))]
}

fn lane_call(
    kernel: &'static str,
    outer: usize,
    n: usize,
    inner: usize,
    mut head: Vec<Arg>,
    tail: Vec<Arg>,
) -> KernelCall {
    int(outer * n * inner);
    head.extend(lane_args(outer, n, inner));
    head.extend(tail);
    per_lane(kernel, outer * inner, n, head)
}

/// Softmax along the axis; buffers (x, y).
pub fn softmax(outer: usize, n: usize, inner: usize) -> KernelCall {
    lane_call(
        "kdc_softmax_f32",
        outer,
        n,
        inner,
        vec![],
        vec![buf(0), buf(1)],
    )
}

/// Log-softmax along the axis; buffers (x, y).
pub fn log_softmax(outer: usize, n: usize, inner: usize) -> KernelCall {
    lane_call(
        "kdc_log_softmax_f32",
        outer,
        n,
        inner,
        vec![],
        vec![buf(0), buf(1)],
    )
}

/// Softmax backward; buffers (y, dy, dx).
pub fn softmax_backward(outer: usize, n: usize, inner: usize) -> KernelCall {
    lane_call(
        "kdc_softmax_backward_f32",
        outer,
        n,
        inner,
        vec![],
        vec![buf(0), buf(1), buf(2)],
    )
}

/// Log-softmax backward; buffers (y, dy, dx).
pub fn log_softmax_backward(outer: usize, n: usize, inner: usize) -> KernelCall {
    lane_call(
        "kdc_log_softmax_backward_f32",
        outer,
        n,
        inner,
        vec![],
        vec![buf(0), buf(1), buf(2)],
    )
}

/// `x / max(‖x‖₂, eps)` along the axis; buffers (x, y).
pub fn normalize(outer: usize, n: usize, inner: usize, eps: f32) -> KernelCall {
    lane_call(
        "kdc_normalize_f32",
        outer,
        n,
        inner,
        vec![],
        vec![Arg::F32(eps), buf(0), buf(1)],
    )
}

/// Normalisation backward; buffers (x, dy, dx).
pub fn normalize_backward(outer: usize, n: usize, inner: usize, eps: f32) -> KernelCall {
    lane_call(
        "kdc_normalize_backward_f32",
        outer,
        n,
        inner,
        vec![],
        with_bufs(vec![Arg::F32(eps)], 3),
    )
}

/// A reduction along the axis into `[outer, inner]`; buffers (x, out). `n` must be ≥ 1.
pub fn reduce(kind: ReduceCode, outer: usize, n: usize, inner: usize) -> KernelCall {
    assert!(n > 0, "kdc-cuda: reduction over an empty axis");
    lane_call(
        "kdc_reduce_f32",
        outer,
        n,
        inner,
        vec![Arg::I32(kind as i32)],
        vec![buf(0), buf(1)],
    )
}

/// A reduction's backward; buffers (x, dy, dx).
pub fn reduce_backward(kind: ReduceCode, outer: usize, n: usize, inner: usize) -> KernelCall {
    assert!(n > 0, "kdc-cuda: reduction over an empty axis");
    lane_call(
        "kdc_reduce_backward_f32",
        outer,
        n,
        inner,
        vec![Arg::I32(kind as i32)],
        vec![buf(0), buf(1), buf(2)],
    )
}

/// The first position of the largest (smallest) value along the axis; buffers (x, out).
pub fn arg(largest: bool, outer: usize, n: usize, inner: usize) -> KernelCall {
    assert!(n > 0, "kdc-cuda: arg over an empty axis");
    lane_call(
        "kdc_arg_f32",
        outer,
        n,
        inner,
        vec![Arg::I32(largest as i32)],
        vec![buf(0), buf(1)],
    )
}

/// The largest power of two dividing a device address, at most 256 bytes: the alignment
/// cuBLASLt is told its operands have (its kernels need aligned pointers, and an arena view
/// is aligned only to its float offset).
pub fn alignment(address: u64) -> u32 {
    if address == 0 {
        256
    } else {
        (address & address.wrapping_neg()).min(256) as u32
    }
}

/// `call` with its buffer arguments renumbered: `Buf { index: i }` becomes `map[i]`.
pub fn remap(mut call: KernelCall, map: &[usize]) -> KernelCall {
    for a in &mut call.args {
        if let Arg::Buf { index, .. } = a {
            *index = map[*index];
        }
    }
    call
}

// ---------------------------------------------------------------------------------------------
// Layer norm over the last axis of [rows, d] (kernels/layer_norm.cu).

/// Buffers (x, gain, bias, out, mean, rstd); mean and rstd are `[rows]` (scratch).
pub fn layer_norm(rows: usize, d: usize, eps: f32) -> KernelCall {
    int(rows * d);
    per_lane(
        "kdc_layer_norm_f32",
        rows,
        d,
        with_bufs(
            vec![Arg::I32(int(rows)), Arg::I32(int(d)), Arg::F32(eps)],
            6,
        ),
    )
}

/// Buffers (x, mean, rstd).
pub fn layer_norm_stats(rows: usize, d: usize, eps: f32) -> KernelCall {
    int(rows * d);
    per_lane(
        "kdc_layer_norm_stats_f32",
        rows,
        d,
        with_bufs(
            vec![Arg::I32(int(rows)), Arg::I32(int(d)), Arg::F32(eps)],
            3,
        ),
    )
}

/// The input gradient; buffers (x, gain, dy, dx).
pub fn layer_norm_backward_input(rows: usize, d: usize, eps: f32) -> KernelCall {
    int(rows * d);
    per_lane(
        "kdc_layer_norm_backward_input_f32",
        rows,
        d,
        with_bufs(
            vec![Arg::I32(int(rows)), Arg::I32(int(d)), Arg::F32(eps)],
            4,
        ),
    )
}

/// The gain and bias gradients into `[2, d]`; buffers (x, dy, out, scratch of 2·rows floats).
/// Two launches: the row statistics into the scratch, then the column sums.
pub fn layer_norm_param_grads(rows: usize, d: usize, eps: f32) -> Vec<KernelCall> {
    int(rows * d);
    let stats = remap(layer_norm_stats(rows, d, eps), &[0, 3, 3]);
    let mut stats = stats;
    // rstd lives after the `rows` means in the scratch.
    if let Some(Arg::Buf { offset, .. }) = stats.args.last_mut() {
        *offset = rows;
    }
    let grads = KernelCall {
        kernel: "kdc_layer_norm_param_grads_f32",
        grid: [d.div_ceil(32).max(1) as u32, 1, 1],
        block: [32, 8, 1],
        shared_bytes: 0,
        args: vec![
            Arg::I32(int(rows)),
            Arg::I32(int(d)),
            buf(0),
            buf(1),
            buf(3),
            Arg::Buf {
                index: 3,
                offset: rows,
            },
            buf(2),
        ],
    };
    vec![stats, grads]
}

// ---------------------------------------------------------------------------------------------
// Losses (kernels/loss.cu).

/// Cross-entropy against the diagonal of `[rows, n]` logits; buffers (logits, loss (1 float),
/// scratch of `rows` floats). Two launches: per-row terms, then their mean.
pub fn ce_diagonal(rows: usize, n: usize) -> Vec<KernelCall> {
    assert!(
        rows >= 1 && rows <= n,
        "kdc-cuda: cross_entropy[diagonal] needs 1 <= rows <= n"
    );
    int(rows * n);
    let terms = per_lane(
        "kdc_ce_diagonal_terms_f32",
        rows,
        n,
        vec![Arg::I32(int(rows)), Arg::I32(int(n)), buf(0), buf(2)],
    );
    let mean = remap(reduce(ReduceCode::Mean, 1, rows, 1), &[2, 1]);
    vec![terms, mean]
}

/// Its gradient; buffers (logits, dloss (1 float), dlogits).
pub fn ce_diagonal_backward(rows: usize, n: usize) -> KernelCall {
    assert!(
        rows >= 1 && rows <= n,
        "kdc-cuda: cross_entropy[diagonal] needs 1 <= rows <= n"
    );
    int(rows * n);
    per_lane(
        "kdc_ce_diagonal_backward_f32",
        rows,
        n,
        with_bufs(vec![Arg::I32(int(rows)), Arg::I32(int(n))], 3),
    )
}

/// Most blocks of an elementwise loss's partial sums.
pub const LOSS_MAX_BLOCKS: usize = 256;

/// Blocks of [`pair_loss`] over `n` elements; its scratch holds two floats per block.
pub fn pair_loss_blocks(n: usize) -> usize {
    n.div_ceil(ELEMENTWISE_BLOCK as usize)
        .clamp(1, LOSS_MAX_BLOCKS)
}

/// The mean over `n` elements of an elementwise loss term (mse, l1, smooth_l1 with `beta`),
/// summed in f64; buffers (a, b, loss (1 float), scratch of `2·pair_loss_blocks(n)` floats).
/// Two launches: per-block partial sums, then their total over `n`.
pub fn pair_loss(kind: PairLossCode, n: usize, beta: f32) -> Vec<KernelCall> {
    let blocks = pair_loss_blocks(n);
    let partials = KernelCall {
        kernel: "kdc_pair_loss_partials_f32",
        grid: [blocks as u32, 1, 1],
        block: [ELEMENTWISE_BLOCK, 1, 1],
        shared_bytes: 0,
        args: vec![
            Arg::I32(kind as i32),
            Arg::I32(int(n)),
            Arg::F32(beta),
            buf(0),
            buf(1),
            buf(3),
        ],
    };
    vec![partials, mean_of_split(blocks, n, 3, 2)]
}

/// `out[0] = Σ (parts[2i] + parts[2i + 1]) / divisor` over `count` pairs, in f64; reads buffer
/// `parts`, writes buffer `out`.
fn mean_of_split(count: usize, divisor: usize, parts: usize, out: usize) -> KernelCall {
    KernelCall {
        kernel: "kdc_mean_of_split_f32",
        grid: [1, 1, 1],
        block: [reduction_block(count), 1, 1],
        shared_bytes: 0,
        args: vec![
            Arg::I32(int(count)),
            Arg::I32(int(divisor)),
            buf(parts),
            buf(out),
        ],
    }
}

/// The gradient of [`pair_loss`] with respect to `a` (`which` 0) or `b` (1); buffers (a, b,
/// dloss (1 float), d).
pub fn pair_loss_backward(kind: PairLossCode, which: usize, n: usize, beta: f32) -> KernelCall {
    elementwise(
        "kdc_pair_loss_backward_f32",
        n,
        with_bufs(
            vec![
                Arg::I32(kind as i32),
                Arg::I32(int(which)),
                Arg::I32(int(n)),
                Arg::F32(beta),
            ],
            4,
        ),
    )
}

/// A loss over the rows of `[rows, n]` operands (KL from log-probabilities, cross-entropy
/// against soft targets), the mean of per-row f64 terms; buffers (a, b, loss (1 float),
/// scratch of `2·rows` floats). Two launches: the row terms, then their mean.
pub fn row_loss(kind: RowLossCode, rows: usize, n: usize) -> Vec<KernelCall> {
    int(rows * n);
    let terms = per_lane(
        "kdc_row_loss_terms_f32",
        rows,
        n,
        vec![
            Arg::I32(kind as i32),
            Arg::I32(int(rows)),
            Arg::I32(int(n)),
            buf(0),
            buf(1),
            buf(3),
        ],
    );
    vec![terms, mean_of_split(rows, rows, 3, 2)]
}

/// The gradient of [`row_loss`] with respect to `a` (`which` 0) or `b` (1); buffers (a, b,
/// dloss (1 float), d).
pub fn row_loss_backward(kind: RowLossCode, which: usize, rows: usize, n: usize) -> KernelCall {
    int(rows * n);
    per_lane(
        "kdc_row_loss_backward_f32",
        rows,
        n,
        with_bufs(
            vec![
                Arg::I32(kind as i32),
                Arg::I32(int(which)),
                Arg::I32(int(rows)),
                Arg::I32(int(n)),
            ],
            4,
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Top-k along an axis (kernels/topk.cu).

/// The `k` largest values of each lane of `[outer, n, inner]`, largest first, into
/// `[outer, k, inner]`; buffers (x, out).
pub fn topk(outer: usize, n: usize, inner: usize, k: usize) -> KernelCall {
    elementwise(
        "kdc_topk_f32",
        int(outer * n * inner) as usize,
        vec![
            Arg::I32(int(outer)),
            Arg::I32(int(n)),
            Arg::I32(int(inner)),
            Arg::I32(int(k)),
            buf(0),
            buf(1),
        ],
    )
}

/// Its backward: each of `dy`'s values back at its position, zeros elsewhere; buffers (x,
/// dy [outer, k, inner], dx [outer, n, inner]).
pub fn topk_backward(outer: usize, n: usize, inner: usize, k: usize) -> KernelCall {
    elementwise(
        "kdc_topk_backward_f32",
        int(outer * n * inner) as usize,
        with_bufs(
            vec![
                Arg::I32(int(outer)),
                Arg::I32(int(n)),
                Arg::I32(int(inner)),
                Arg::I32(int(k)),
            ],
            3,
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Optimiser (kernels/optim.cu).

/// AdamW's per-update coefficients (`KdcAdamW` in optim.cu), computed in f64 as kdc-cpu does.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWCoefficients {
    pub decay: f32,
    pub lerp_weight: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub neg_step_size: f32,
    pub bc2_sqrt: f32,
    pub eps: f32,
    pub lerp_small: i32,
}

impl AdamWCoefficients {
    pub fn new(h: &kdc_backend::AdamW) -> AdamWCoefficients {
        assert!(h.step >= 1, "AdamW's step counts from 1");
        let t = h.step.min(i32::MAX as u64) as i32;
        let w = (1.0 - h.beta1) as f32;
        AdamWCoefficients {
            decay: (1.0 - h.lr * h.weight_decay) as f32,
            lerp_weight: w,
            beta2: h.beta2 as f32,
            one_minus_beta2: (1.0 - h.beta2) as f32,
            neg_step_size: (-(h.lr / (1.0 - h.beta1.powi(t)))) as f32,
            bc2_sqrt: (1.0 - h.beta2.powi(t)).sqrt() as f32,
            eps: h.eps as f32,
            lerp_small: (w.abs() < 0.5) as i32,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let fields = [
            self.decay,
            self.lerp_weight,
            self.beta2,
            self.one_minus_beta2,
            self.neg_step_size,
            self.bc2_sqrt,
            self.eps,
        ];
        let mut out: Vec<u8> = fields.iter().flat_map(|f| f.to_ne_bytes()).collect();
        out.extend(self.lerp_small.to_ne_bytes());
        out
    }
}

/// One AdamW update; buffers (param, grad, m, v).
pub fn adamw(n: usize, h: &kdc_backend::AdamW) -> KernelCall {
    let c = AdamWCoefficients::new(h);
    elementwise(
        "kdc_adamw_f32",
        n,
        with_bufs(vec![Arg::I32(int(n)), Arg::Bytes(c.bytes())], 4),
    )
}

/// Partial sums of squares for the gradient norm; buffers (x, partial: `f64` × the returned
/// count). The host adds the partial sums (in f64) and takes the square root.
pub fn sum_squares(n: usize) -> (KernelCall, usize) {
    let call = elementwise(
        "kdc_sum_squares_f64",
        n,
        vec![Arg::I32(int(n)), buf(0), buf(1)],
    );
    let blocks = call.grid[0] as usize;
    (call, blocks)
}

// ---------------------------------------------------------------------------------------------
// Index operations (kernels/index.cu). Index tensors hold exact integers as f32.

/// `out[i, :] = table[ids[i], :]`; buffers (table [v, w], ids [n], out [n, w]).
pub fn embedding(n: usize, v: usize, w: usize) -> KernelCall {
    elementwise(
        "kdc_embedding_f32",
        int(n * w) as usize,
        with_bufs(
            vec![Arg::I32(int(n)), Arg::I32(int(v)), Arg::I32(int(w))],
            3,
        ),
    )
}

/// The table's gradient (zeroed, then scatter-added); buffers (ids [n], dout [n, w],
/// dtable [v, w]).
pub fn embedding_backward(n: usize, v: usize, w: usize) -> Vec<KernelCall> {
    vec![
        remap(fill(v * w, 0.0), &[2]),
        elementwise(
            "kdc_embedding_backward_f32",
            int(n * w) as usize,
            with_bufs(
                vec![Arg::I32(int(n)), Arg::I32(int(v)), Arg::I32(int(w))],
                3,
            ),
        ),
    ]
}

/// `out[b, j, :] = x[b, index[b, j], :]`; buffers (x [batch, t, w], index [batch, k],
/// out [batch, k, w]).
pub fn gather_rows(batch: usize, t: usize, k: usize, w: usize) -> KernelCall {
    elementwise(
        "kdc_gather_rows_f32",
        int(batch * k * w) as usize,
        with_bufs(
            vec![
                Arg::I32(int(batch)),
                Arg::I32(int(t)),
                Arg::I32(int(k)),
                Arg::I32(int(w)),
            ],
            3,
        ),
    )
}

/// Its backward (zeroed, then scatter-added); buffers (index [batch, k], dout [batch, k, w],
/// dx [batch, t, w]).
pub fn scatter_rows(batch: usize, t: usize, k: usize, w: usize) -> Vec<KernelCall> {
    vec![
        remap(fill(batch * t * w, 0.0), &[2]),
        elementwise(
            "kdc_scatter_rows_f32",
            int(batch * k * w) as usize,
            with_bufs(
                vec![
                    Arg::I32(int(batch)),
                    Arg::I32(int(t)),
                    Arg::I32(int(k)),
                    Arg::I32(int(w)),
                ],
                3,
            ),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Conversions (kernels/convert.cu).

/// f32 → bf16; buffers (x: f32, y: bf16).
pub fn f32_to_bf16(n: usize) -> KernelCall {
    elementwise("kdc_f32_to_bf16", n, vec![Arg::I32(int(n)), buf(0), buf(1)])
}

/// bf16 → f32; buffers (x: bf16, y: f32).
pub fn bf16_to_f32(n: usize) -> KernelCall {
    elementwise("kdc_bf16_to_f32", n, vec![Arg::I32(int(n)), buf(0), buf(1)])
}

/// Rounds f32 values to bf16 in place; buffer (y).
pub fn round_bf16(n: usize) -> KernelCall {
    elementwise("kdc_round_bf16", n, vec![Arg::I32(int(n)), buf(0)])
}

// ---------------------------------------------------------------------------------------------
// Matrix product (kernels/matmul.cu): kdc-cpu's `matmul` semantics, 16×16 tiles.

/// Buffers (a, b, out), packed row-major operands (A `[m, k]`, `[k, m]` when `ta`; B `[k, n]`,
/// `[n, k]` when `tb`; out `[batch, m, n]`), an operand that is not batched shared by every
/// batch item; `accumulate` adds to `out` instead of overwriting it.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    a_batched: bool,
    b_batched: bool,
    accumulate: bool,
) -> KernelCall {
    let layout = MatmulLayout {
        lda: if ta { m } else { k },
        ldb: if tb { k } else { n },
        ldc: n,
        stride_a: if a_batched { m * k } else { 0 },
        stride_b: if b_batched { k * n } else { 0 },
        stride_c: m * n,
    };
    matmul_strided(
        batch,
        m,
        n,
        k,
        ta,
        tb,
        accumulate,
        false,
        &layout,
        buf(0),
        buf(1),
        buf(2),
    )
}

/// Leading dimensions (row strides of the stored, row-major matrices) and batch strides
/// (0: shared by every batch item) of a strided-batched matrix product, in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulLayout {
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

/// `C_β (+)= op(A_β)·op(B_β)` for `β < batch`, row-major with the given layout (see
/// kernels/matmul.cu); `a`, `b`, `c` are the operands' [`Arg::Buf`]s; with `bf16` A and B
/// hold bfloat16 values (C is f32 either way).
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    accumulate: bool,
    bf16: bool,
    layout: &MatmulLayout,
    a: Arg,
    b: Arg,
    c: Arg,
) -> KernelCall {
    let t = MATMUL_TILE as usize;
    KernelCall {
        kernel: if bf16 {
            "kdc_matmul_bf16"
        } else {
            "kdc_matmul_f32"
        },
        grid: [
            n.div_ceil(t).max(1) as u32,
            m.div_ceil(t).max(1) as u32,
            batch.clamp(1, 65535) as u32,
        ],
        block: [MATMUL_TILE, MATMUL_TILE, 1],
        shared_bytes: 0,
        args: vec![
            Arg::I32(int(batch)),
            Arg::I32(int(m)),
            Arg::I32(int(n)),
            Arg::I32(int(k)),
            Arg::I32(ta as i32),
            Arg::I32(tb as i32),
            Arg::I32(int(layout.lda)),
            Arg::I32(int(layout.ldb)),
            Arg::I32(int(layout.ldc)),
            Arg::I32(int(layout.stride_a)),
            Arg::I32(int(layout.stride_b)),
            Arg::I32(int(layout.stride_c)),
            Arg::I32(accumulate as i32),
            a,
            b,
            c,
        ],
    }
}

// ---------------------------------------------------------------------------------------------
// Broadcasting and data movement (kernels/binary.cu).

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Element strides of `shape` (right-aligned) along each dimension of `out`: 0 where it is
/// broadcast.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    assert!(
        shape.len() <= out.len(),
        "kdc-cuda: {shape:?} does not broadcast to {out:?}"
    );
    let lead = out.len() - shape.len();
    let own = contiguous_strides(shape);
    (0..out.len())
        .map(|d| {
            if d < lead {
                return 0;
            }
            let size = shape[d - lead];
            assert!(
                size == out[d] || size == 1,
                "kdc-cuda: {shape:?} does not broadcast to {out:?}"
            );
            if size == out[d] {
                own[d - lead]
            } else {
                0
            }
        })
        .collect()
}

fn i32s(v: &[usize]) -> [i32; MAX_RANK] {
    assert!(
        v.len() <= MAX_RANK,
        "kdc-cuda: more than {MAX_RANK} dimensions"
    );
    let mut out = [0; MAX_RANK];
    for (o, &x) in out.iter_mut().zip(v) {
        *o = int(x);
    }
    out
}

fn push_i32s(out: &mut Vec<u8>, v: &[i32]) {
    for x in v {
        out.extend(x.to_ne_bytes());
    }
}

/// Drops the dimensions of size 1 (they contribute nothing to any offset).
fn squeeze(dims: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let keep: Vec<usize> = (0..dims.len()).filter(|&d| dims[d] != 1).collect();
    (
        keep.iter().map(|&d| dims[d]).collect(),
        strides
            .iter()
            .map(|s| keep.iter().map(|&d| s[d]).collect())
            .collect(),
    )
}

/// `out = a ∘ b` with NumPy broadcasting; buffers (a, b, out).
pub fn binary(
    op: BinaryCode,
    a_shape: &[usize],
    b_shape: &[usize],
    out_shape: &[usize],
) -> KernelCall {
    let n: usize = out_shape.iter().product();
    let sa = broadcast_strides(a_shape, out_shape);
    let sb = broadcast_strides(b_shape, out_shape);
    let (dims, s) = squeeze(out_shape, &[&sa, &sb]);
    let mut bytes = Vec::new();
    push_i32s(&mut bytes, &[int(dims.len())]);
    push_i32s(&mut bytes, &i32s(&dims));
    push_i32s(&mut bytes, &i32s(&s[0]));
    push_i32s(&mut bytes, &i32s(&s[1]));
    storing(elementwise(
        "kdc_binary_f32",
        n,
        with_bufs(
            vec![Arg::I32(op as i32), Arg::I32(int(n)), Arg::Bytes(bytes)],
            3,
        ),
    ))
}

/// A strided copy of the iteration space `dims` from buffer `from` to buffer `to`.
fn strided_copy(
    dims: &[usize],
    in_strides: &[usize],
    out_strides: &[usize],
    in_offset: usize,
    out_offset: usize,
    from: usize,
    to: usize,
) -> KernelCall {
    let n: usize = dims.iter().product();
    let (dims, s) = squeeze(dims, &[in_strides, out_strides]);
    let mut bytes = Vec::new();
    push_i32s(&mut bytes, &[int(dims.len())]);
    push_i32s(&mut bytes, &i32s(&dims));
    push_i32s(&mut bytes, &i32s(&s[0]));
    push_i32s(&mut bytes, &i32s(&s[1]));
    push_i32s(&mut bytes, &[int(in_offset), int(out_offset)]);
    storing(elementwise(
        "kdc_strided_copy_f32",
        n,
        vec![Arg::I32(int(n)), Arg::Bytes(bytes), buf(from), buf(to)],
    ))
}

/// Axes reordered (`out` has shape `shape[perm[·]]`); buffers (x, out).
pub fn permute(shape: &[usize], perm: &[usize]) -> KernelCall {
    let own = contiguous_strides(shape);
    let dims: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let in_strides: Vec<usize> = perm.iter().map(|&p| own[p]).collect();
    strided_copy(&dims, &in_strides, &contiguous_strides(&dims), 0, 0, 0, 1)
}

/// `x` repeated to `out_shape`; buffers (x, out).
pub fn broadcast_to(x_shape: &[usize], out_shape: &[usize]) -> KernelCall {
    let s = broadcast_strides(x_shape, out_shape);
    strided_copy(out_shape, &s, &contiguous_strides(out_shape), 0, 0, 0, 1)
}

/// `len` entries from `start` along `axis`; buffers (x, out).
pub fn slice(in_shape: &[usize], axis: usize, start: usize, len: usize) -> KernelCall {
    let s = contiguous_strides(in_shape);
    let mut dims = in_shape.to_vec();
    dims[axis] = len;
    strided_copy(
        &dims,
        &s,
        &contiguous_strides(&dims),
        start * s[axis],
        0,
        0,
        1,
    )
}

/// The gradient of [`slice`]: zeros, with `dy` (shape `dy_shape`) at `start` along `axis` of
/// `out_shape`; buffers (dy, dx).
pub fn slice_backward(
    dy_shape: &[usize],
    axis: usize,
    start: usize,
    out_shape: &[usize],
) -> Vec<KernelCall> {
    let so = contiguous_strides(out_shape);
    vec![
        remap(fill(out_shape.iter().product(), 0.0), &[1]),
        strided_copy(
            dy_shape,
            &contiguous_strides(dy_shape),
            &so,
            0,
            start * so[axis],
            0,
            1,
        ),
    ]
}

/// Two tensors joined along `axis`; buffers (a, b, out).
pub fn concat(a_shape: &[usize], b_shape: &[usize], axis: usize) -> Vec<KernelCall> {
    let mut out_shape = a_shape.to_vec();
    out_shape[axis] += b_shape[axis];
    let so = contiguous_strides(&out_shape);
    vec![
        strided_copy(a_shape, &contiguous_strides(a_shape), &so, 0, 0, 0, 2),
        strided_copy(
            b_shape,
            &contiguous_strides(b_shape),
            &so,
            0,
            a_shape[axis] * so[axis],
            1,
            2,
        ),
    ]
}

/// `x` summed down to `out_shape` (which broadcasts to `x_shape`); buffers (x, out).
pub fn sum_to(x_shape: &[usize], out_shape: &[usize]) -> KernelCall {
    let xs = contiguous_strides(x_shape);
    let lead = x_shape.len() - out_shape.len();
    let (mut kept_dims, mut kept_strides, mut red_dims, mut red_strides) =
        (vec![], vec![], vec![], vec![]);
    for d in 0..x_shape.len() {
        let o = if d >= lead { out_shape[d - lead] } else { 1 };
        if x_shape[d] == 1 {
            continue;
        }
        if o == x_shape[d] {
            kept_dims.push(x_shape[d]);
            kept_strides.push(xs[d]);
        } else {
            assert!(
                o == 1,
                "kdc-cuda: {out_shape:?} does not broadcast to {x_shape:?}"
            );
            red_dims.push(x_shape[d]);
            red_strides.push(xs[d]);
        }
    }
    let n_out: usize = out_shape.iter().product();
    let count: usize = red_dims.iter().product();
    let mut bytes = Vec::new();
    push_i32s(&mut bytes, &[int(kept_dims.len())]);
    push_i32s(&mut bytes, &i32s(&kept_dims));
    push_i32s(&mut bytes, &i32s(&kept_strides));
    push_i32s(&mut bytes, &[int(red_dims.len())]);
    push_i32s(&mut bytes, &i32s(&red_dims));
    push_i32s(&mut bytes, &i32s(&red_strides));
    push_i32s(&mut bytes, &[int(count)]);
    let blocks = n_out.max(1);
    let (gx, gy) = if blocks <= 65535 {
        (blocks, 1)
    } else {
        (65535, blocks.div_ceil(65535))
    };
    storing(KernelCall {
        kernel: "kdc_sum_to_f32",
        grid: [gx as u32, gy as u32, 1],
        block: [reduction_block(count), 1, 1],
        shared_bytes: 0,
        args: vec![Arg::I32(int(n_out)), Arg::Bytes(bytes), buf(0), buf(1)],
    })
}

// ---------------------------------------------------------------------------------------------
// Fused attention (kernels/attention.cu).

/// Leading axes the attention kernels take for a bias (the scores' rank minus two).
pub const ATTENTION_MAX_LEAD: usize = 3;

/// Dynamic shared memory a block may use (CUDA's default limit without opting in).
pub const MAX_SHARED_BYTES: usize = 48 * 1024;

/// The kernels' `KdcAttention`; panics past [`ATTENTION_MAX_LEAD`] leading axes with a bias
/// (dispatch checks first).
fn attention_bytes(dims: &kdc_backend::AttentionDims, scale: f32) -> Vec<u8> {
    let mut bytes = Vec::new();
    push_i32s(
        &mut bytes,
        &[
            int(dims.batch),
            int(dims.m),
            int(dims.n),
            int(dims.d),
            int(dims.e),
        ],
    );
    bytes.extend(scale.to_ne_bytes());
    let mut lead_dims = [1i32; ATTENTION_MAX_LEAD];
    let mut lead_strides = [0i32; ATTENTION_MAX_LEAD];
    let (has_bias, rank, si, sj) = match &dims.bias {
        Some((strides, si, sj)) => {
            assert!(
                dims.lead.len() <= ATTENTION_MAX_LEAD,
                "kdc-cuda: attention with more than {ATTENTION_MAX_LEAD} leading axes"
            );
            for (x, (&dim, &stride)) in dims.lead.iter().zip(strides).enumerate() {
                lead_dims[x] = int(dim);
                lead_strides[x] = int(stride);
            }
            (1, dims.lead.len(), *si, *sj)
        }
        None => (0, 0, 0, 0),
    };
    push_i32s(&mut bytes, &[has_bias, int(rank)]);
    push_i32s(&mut bytes, &lead_dims);
    push_i32s(&mut bytes, &lead_strides);
    push_i32s(&mut bytes, &[int(si), int(sj)]);
    bytes
}

/// One block per row of `rows`, `floats` of shared memory per block.
fn attention_call(
    kernel: &'static str,
    rows: usize,
    widest: usize,
    floats: usize,
    args: Vec<Arg>,
) -> KernelCall {
    KernelCall {
        kernel,
        grid: [
            u32::try_from(rows.max(1)).expect("kdc-cuda: attention rows exceed the grid"),
            1,
            1,
        ],
        block: [reduction_block(widest), 1, 1],
        shared_bytes: (floats * 4) as u32,
        args,
    }
}

/// `o = softmax(scale·q·kᵀ + bias)·v`; buffers (q, k, v, bias, o) — bias any buffer when there
/// is none.
pub fn attention(dims: &kdc_backend::AttentionDims, scale: f32) -> KernelCall {
    storing(attention_call(
        "kdc_attention_f32",
        dims.batch * dims.m,
        dims.n.max(dims.e),
        dims.n,
        with_bufs(vec![Arg::Bytes(attention_bytes(dims, scale))], 5),
    ))
}

/// The query rows' pass of the backward: buffers (q, k, v, bias, dout, dq, stats), stats
/// `[batch·m, 2]` (log-sum-exp, Σ p·dp).
pub fn attention_backward_rows(dims: &kdc_backend::AttentionDims, scale: f32) -> KernelCall {
    storing(attention_call(
        "kdc_attention_backward_rows_f32",
        dims.batch * dims.m,
        dims.n.max(dims.d),
        2 * dims.n,
        with_bufs(vec![Arg::Bytes(attention_bytes(dims, scale))], 7),
    ))
}

/// The keys' pass: buffers (q, k, v, bias, dout, stats, dk, dv).
pub fn attention_backward_keys(dims: &kdc_backend::AttentionDims, scale: f32) -> KernelCall {
    storing(attention_call(
        "kdc_attention_backward_keys_f32",
        dims.batch * dims.n,
        dims.m.max(dims.d).max(dims.e),
        2 * dims.m,
        with_bufs(vec![Arg::Bytes(attention_bytes(dims, scale))], 8),
    ))
}
