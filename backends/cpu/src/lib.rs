//! CPU kernels for kdc's training engine: the forward and backward pass of CLIP distillation.
//!
//! Every kernel is a plain function over contiguous, row-major slices, generic over the float
//! type (`f32` for training, `f64` for tests). Callers own all buffers: outputs are passed in
//! as `&mut [T]` of exactly the right length (every kernel asserts the lengths it relies on), and
//! kernels allocate nothing data-sized except where documented (`binary_backward` of a
//! broadcast `mul`/`div` operand).
//!
//! # Conventions
//!
//! * **Layout.** Row-major and contiguous. A shape `[d0, d1, …, d(r-1)]` has its last index
//!   varying fastest.
//! * **Axis ops** take a tensor viewed as `[outer, n, inner]` and act along `n` (see
//!   [`axis_dims`]); the last axis is `inner == 1`.
//! * **Backward kernels overwrite** their gradient outputs, except the scatter kernels
//!   ([`scatter_add_rows`], [`embedding_backward`]), which *add* into theirs (zero them first),
//!   and the matmul variant [`matmul_acc`].
//! * **Scalar hyper-parameters** of the optimiser ([`adamw_step`], [`clip_grad_norm`]) are `f64`,
//!   like Python floats in PyTorch; everything else is `T`.
//! * **Parallelism.** Kernels use rayon's global pool when a call has enough work
//!   (about [`PAR_MIN_WORK`] elements); small calls stay on the calling thread. The fused
//!   kernels' results never depend on the number of threads: parallel reductions use fixed
//!   chunk sizes and combine the partial sums in order (matrix products are `gemm`'s).
//! * **SIMD.** Matrix products use `gemm`'s own runtime CPU dispatch. The fused loops are written
//!   to auto-vectorise and, on x86-64 CPUs with AVX2, run through a copy compiled for AVX2
//!   (detected at run time); `exp` and `erf` are vectorisable polynomial forms in `f32`
//!   (1–2 ulp and < 4e-7 absolute respectively) and the accurate library functions in `f64`.
//! * **Errors.** Shape or length mismatches and out-of-range indices are programming errors and
//!   panic with a message naming the kernel and operand.

#![warn(missing_docs)]

mod attention;
mod backend;
mod binary;
mod layer_norm;
mod loss;
mod math;
mod matmul;
mod movement;
mod optim;
mod reduce;
mod tensor;
mod unary;
mod util;

#[cfg(test)]
mod tests;

use std::fmt::Debug;

use num_traits::Float;

pub use attention::{attention, attention_backward};
pub use backend::CpuBackend;
pub use binary::{
    add, binary, binary_backward, broadcast_shape, broadcast_to, div, mul, select, sub, sum_to,
    BinaryOp,
};
pub use layer_norm::{
    layer_norm, layer_norm_backward, layer_norm_backward_input, layer_norm_backward_params,
    layer_norm_stats, LAYER_NORM_EPS,
};
pub use loss::{
    cross_entropy_diagonal, cross_entropy_diagonal_backward, cross_entropy_soft,
    cross_entropy_soft_backward, kl_rows, kl_rows_backward, l1, l1_backward, mse, mse_backward,
    smooth_l1, smooth_l1_backward,
};
pub use matmul::{matmul, matmul_acc};
pub use movement::{
    concat, embedding, embedding_backward, gather_rows, permute, scatter_add_rows, split, Index,
};
pub use optim::{adamw_step, clip_grad_norm, grad_norm, CLIP_GRAD_NORM_EPS};
pub use reduce::{
    arg_extreme_axis, axis_dims, extreme_axis, extreme_axis_backward, l2_normalize,
    l2_normalize_backward, log_softmax, log_softmax_backward, mean_axis, mean_axis_backward,
    softmax, softmax_backward, sum_axis, sum_axis_backward, topk_axis, topk_axis_backward,
    var_axis, var_axis_backward, NORMALIZE_EPS,
};
pub use tensor::{numel, Tensor};
pub use unary::{
    erf, gelu, gelu_grad, quick_gelu, quick_gelu_grad, scale, scale_backward, unary,
    unary_backward, unary_inplace, UnaryOp,
};
pub use util::PAR_MIN_WORK;

/// The float types the kernels accept: `f32` and `f64` (matrix products are fastest for these
/// two; any other `Float` type falls back to a naive product).
pub trait Real: Float + Send + Sync + Debug + 'static {}

impl<T: Float + Send + Sync + Debug + 'static> Real for T {}
