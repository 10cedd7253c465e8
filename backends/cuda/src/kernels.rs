//! Every CUDA C source kdc ships, embedded, with its entry points, and the operation codes the
//! kernels take.
//!
//! The backend compiles a file with NVRTC the first time one of its kernels is needed
//! ([`KernelFile::nvrtc_source`] gives a self-contained source: the shared header is inlined),
//! and the compile check (`src/bin/compile_kernels.rs`) enumerates [`FILES`]. The tests check
//! that each file's `entry_points` are exactly the `extern "C" __global__` functions in its
//! source and in the emulator.

/// The header every kernel file includes as `#include "common.cuh"`.
pub const COMMON_HEADER: &str = include_str!("../kernels/common.cuh");

/// One kernel source file.
#[derive(Clone, Copy, Debug)]
pub struct KernelFile {
    /// The file name under `kernels/`.
    pub name: &'static str,
    /// Its text.
    pub source: &'static str,
    /// Its `extern "C" __global__` functions.
    pub entry_points: &'static [&'static str],
    /// Whether it includes `<cuda_bf16.h>` (NVRTC then needs the CUDA runtime headers on its
    /// include path: `nvidia/cuda_runtime/include` of the `nvidia-cuda-runtime-cu12` wheel).
    pub needs_cuda_headers: bool,
}

impl KernelFile {
    /// The source with `#include "common.cuh"` replaced by the header's text, for NVRTC
    /// (which then needs no file system, except for `<cuda_bf16.h>`).
    pub fn nvrtc_source(&self) -> String {
        let mut out = String::with_capacity(self.source.len() + COMMON_HEADER.len());
        for line in self.source.lines() {
            if line.trim() == "#include \"common.cuh\"" {
                out.push_str("// ---- common.cuh ----\n");
                out.push_str(COMMON_HEADER);
                out.push_str("// ---- end of common.cuh ----\n");
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

macro_rules! kernel_file {
    ($name:literal, [$($entry:literal),* $(,)?], $bf16:expr) => {
        KernelFile {
            name: $name,
            source: include_str!(concat!("../kernels/", $name)),
            entry_points: &[$($entry),*],
            needs_cuda_headers: $bf16,
        }
    };
}

/// The kernels whose last parameter is `int round`: nonzero, they round every value they store
/// into the operation's output to bf16 (`kdc_out` in common.cuh), which is how a bf16-typed
/// operation of these kernels is planned ([`crate::launch::round_output`]); scratch values
/// (statistics, partial sums) stay f32.
pub const ROUNDING_KERNELS: &[&str] = &[
    "kdc_unary_f32",
    "kdc_unary_backward_f32",
    "kdc_binary_f32",
    "kdc_strided_copy_f32",
    "kdc_sum_to_f32",
    "kdc_attention_f32",
    "kdc_attention_backward_rows_f32",
    "kdc_attention_backward_keys_f32",
];

/// Every kernel file kdc ships.
pub const FILES: &[KernelFile] = &[
    kernel_file!(
        "elementwise.cu",
        [
            "kdc_unary_f32",
            "kdc_unary_backward_f32",
            "kdc_fill_f32",
            "kdc_scale_f32",
            "kdc_clamp_f32",
            "kdc_lerp_f32",
            "kdc_add_into_f32",
            "kdc_select_f32",
            "kdc_copy_f32",
            "kdc_eye_f32",
            "kdc_causal_mask_f32",
        ],
        false
    ),
    kernel_file!(
        "lanes.cu",
        [
            "kdc_softmax_f32",
            "kdc_log_softmax_f32",
            "kdc_softmax_backward_f32",
            "kdc_log_softmax_backward_f32",
            "kdc_normalize_f32",
            "kdc_normalize_backward_f32",
            "kdc_reduce_f32",
            "kdc_reduce_backward_f32",
            "kdc_arg_f32",
        ],
        false
    ),
    kernel_file!(
        "binary.cu",
        ["kdc_binary_f32", "kdc_strided_copy_f32", "kdc_sum_to_f32"],
        false
    ),
    kernel_file!(
        "layer_norm.cu",
        [
            "kdc_layer_norm_f32",
            "kdc_layer_norm_stats_f32",
            "kdc_layer_norm_backward_input_f32",
            "kdc_layer_norm_param_grads_f32",
        ],
        false
    ),
    kernel_file!(
        "index.cu",
        [
            "kdc_embedding_f32",
            "kdc_embedding_backward_f32",
            "kdc_gather_rows_f32",
            "kdc_scatter_rows_f32",
        ],
        false
    ),
    kernel_file!(
        "loss.cu",
        [
            "kdc_ce_diagonal_terms_f32",
            "kdc_ce_diagonal_backward_f32",
            "kdc_pair_loss_partials_f32",
            "kdc_mean_of_split_f32",
            "kdc_pair_loss_backward_f32",
            "kdc_row_loss_terms_f32",
            "kdc_row_loss_backward_f32",
        ],
        false
    ),
    kernel_file!("topk.cu", ["kdc_topk_f32", "kdc_topk_backward_f32"], false),
    kernel_file!(
        "attention.cu",
        [
            "kdc_attention_f32",
            "kdc_attention_backward_rows_f32",
            "kdc_attention_backward_keys_f32",
        ],
        false
    ),
    kernel_file!("optim.cu", ["kdc_adamw_f32", "kdc_sum_squares_f64"], false),
    kernel_file!("matmul.cu", ["kdc_matmul_f32", "kdc_matmul_bf16"], true),
    kernel_file!(
        "convert.cu",
        ["kdc_f32_to_bf16", "kdc_bf16_to_f32", "kdc_round_bf16"],
        true
    ),
];

/// The file that defines kernel `entry`.
pub fn file_of(entry: &str) -> Option<&'static KernelFile> {
    FILES.iter().find(|f| f.entry_points.contains(&entry))
}

/// Unary function codes (`KDC_NEG` … in elementwise.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum UnaryCode {
    Neg = 0,
    Exp = 1,
    Log = 2,
    Sqrt = 3,
    Abs = 4,
    Gelu = 5,
    QuickGelu = 6,
    Relu = 7,
    Sigmoid = 8,
    Tanh = 9,
}

impl From<kdc_backend::Unary> for UnaryCode {
    fn from(f: kdc_backend::Unary) -> UnaryCode {
        use kdc_backend::Unary as U;
        match f {
            U::Neg => UnaryCode::Neg,
            U::Exp => UnaryCode::Exp,
            U::Log => UnaryCode::Log,
            U::Sqrt => UnaryCode::Sqrt,
            U::Abs => UnaryCode::Abs,
            U::Gelu => UnaryCode::Gelu,
            U::QuickGelu => UnaryCode::QuickGelu,
            U::Relu => UnaryCode::Relu,
            U::Sigmoid => UnaryCode::Sigmoid,
            U::Tanh => UnaryCode::Tanh,
        }
    }
}

/// Binary function codes (`KDC_ADD` … in binary.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum BinaryCode {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
    Max = 4,
    Min = 5,
    Gt = 6,
    Ge = 7,
    Lt = 8,
    Le = 9,
    Eq = 10,
    Ne = 11,
}

impl From<kdc_backend::Binary> for BinaryCode {
    fn from(f: kdc_backend::Binary) -> BinaryCode {
        use kdc_backend::Binary as B;
        match f {
            B::Add => BinaryCode::Add,
            B::Sub => BinaryCode::Sub,
            B::Mul => BinaryCode::Mul,
            B::Div => BinaryCode::Div,
            B::Max => BinaryCode::Max,
            B::Min => BinaryCode::Min,
            B::Gt => BinaryCode::Gt,
            B::Ge => BinaryCode::Ge,
            B::Lt => BinaryCode::Lt,
            B::Le => BinaryCode::Le,
            B::Eq => BinaryCode::Eq,
            B::Ne => BinaryCode::Ne,
        }
    }
}

/// Reduction codes (`KDC_SUM` … in reduce.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ReduceCode {
    Sum = 0,
    Mean = 1,
    Var = 2,
    Max = 3,
    Min = 4,
}

impl From<kdc_backend::Reduce> for ReduceCode {
    fn from(r: kdc_backend::Reduce) -> ReduceCode {
        use kdc_backend::Reduce as R;
        match r {
            R::Sum => ReduceCode::Sum,
            R::Mean => ReduceCode::Mean,
            R::Var => ReduceCode::Var,
            R::Max => ReduceCode::Max,
            R::Min => ReduceCode::Min,
        }
    }
}

/// Elementwise loss codes (`KDC_LOSS_MSE` … in loss.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum PairLossCode {
    Mse = 0,
    L1 = 1,
    SmoothL1 = 2,
}

/// Row loss codes (`KDC_LOSS_KL`, `KDC_LOSS_CE_SOFT` in loss.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum RowLossCode {
    Kl = 0,
    CrossEntropySoft = 1,
}

/// The `extern "C" __global__ void NAME(` functions of a CUDA source, in order (a textual scan,
/// as build.rs does for the emulator's registry).
pub fn scan_entry_points(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("__global__") {
        rest = &rest[at + "__global__".len()..];
        if let Some(after) = rest.trim_start().strip_prefix("void") {
            let name: String = after
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names
}
