//! The [`Backend`] trait: what the engine asks of a device.
//!
//! The engine plans a step's memory at compile time: every intermediate value at a fixed
//! offset in one arena, every parameter, batch input and optimiser slot in a buffer of its
//! own. A backend owns those buffers (host memory on the CPU, device memory on a GPU) and runs
//! one operation at a time on views into them. Values cross between host and device only
//! through [`Backend::upload`] and [`Backend::download`]: batches in (the next one through
//! [`Backend::upload_async`] while the current step runs), the loss and the per-term values
//! out, checkpoints both ways. Parameters, gradients and optimiser state stay
//! on the device; the optimiser's update is a backend operation.
//!
//! Operations are issued in order. A backend may run them asynchronously (a GPU stream), as
//! long as each one sees the effects of the ones before it; [`Backend::download`],
//! [`Backend::l2_norm`] and [`Backend::synchronize`] wait for everything issued.

use crate::op::{Dtype, Op};

/// A buffer a backend allocated: an index into the backend's own table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufferId(pub usize);

/// `len` floats at `offset` in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub buffer: BufferId,
    pub offset: usize,
    pub len: usize,
}

impl View {
    /// The whole of a buffer of `len` floats.
    pub fn whole(buffer: BufferId, len: usize) -> View {
        View {
            buffer,
            offset: 0,
            len,
        }
    }

    /// Whether two views share memory.
    pub fn overlaps(&self, other: &View) -> bool {
        self.buffer == other.buffer
            && self.len > 0
            && other.len > 0
            && self.offset < other.offset + other.len
            && other.offset < self.offset + self.len
    }
}

/// One operation to run: its inputs (row-major, contiguous, of the given shapes), where its
/// output goes, and the scratch memory the plan reserved for it
/// ([`Backend::scratch_len`] floats). The output is overwritten entirely. The plan guarantees
/// that the output and the scratch overlap no input and no value alive at that point.
#[derive(Clone, Debug)]
pub struct Launch<'a> {
    pub op: &'a Op,
    pub inputs: &'a [View],
    pub input_shapes: &'a [Vec<usize>],
    pub output: View,
    pub shape: &'a [usize],
    pub scratch: View,
    /// The output's type: `Bf16` rounds the output (and a matrix product's factors) to
    /// bfloat16, as [`Dtype`] describes.
    pub dtype: Dtype,
}

/// AdamW's hyper-parameters for one update (decoupled weight decay, PyTorch's convention:
/// `step` counts from 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
}

/// PyTorch's `clip_grad_norm_` divides by `norm + 1e-6`.
pub const CLIP_GRAD_NORM_EPS: f64 = 1e-6;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The device cannot hold a buffer of this many bytes.
    #[error("the {device} backend cannot allocate {bytes} bytes")]
    OutOfMemory { device: &'static str, bytes: usize },
    /// The device is not there or not usable (no GPU, no driver).
    #[error("{0}")]
    Unavailable(String),
    /// The device failed while running work (a launch that failed, a fault, a library error):
    /// what it reported. The work issued after it did not run.
    #[error("the {device} device failed: {message}")]
    Device {
        device: &'static str,
        message: String,
    },
    /// The backend's kernels cannot run an operation of the step (found before it runs).
    #[error("the {device} backend cannot run this step: {reason}")]
    Unsupported {
        device: &'static str,
        /// Which operation, on which shapes, and why.
        reason: String,
    },
}

/// A device that runs compiled steps. Every method that takes views panics if a view lies
/// outside its buffer or a buffer is unknown: those are programming errors of the engine.
/// Failures of the device itself are not panics: see [`Backend::take_error`].
pub trait Backend: Send {
    /// `cpu`, `cuda`, …
    fn name(&self) -> &'static str;

    /// Floats of scratch memory this backend's kernel for `op` (with its output typed `dtype`)
    /// needs while it runs; the memory plan reserves them next to the operation's output.
    fn scratch_len(
        &self,
        op: &Op,
        input_shapes: &[Vec<usize>],
        shape: &[usize],
        dtype: Dtype,
    ) -> usize;

    /// A new buffer of `len` floats, zeroed.
    fn alloc(&mut self, len: usize) -> Result<BufferId, BackendError>;

    /// Gives a buffer back.
    fn free(&mut self, buffer: BufferId);

    /// Copies host values into a view (`src.len() == dst.len`).
    fn upload(&mut self, dst: View, src: &[f32]);

    /// Copies a view to the host (`dst.len() == src.len`), after everything issued before.
    fn download(&mut self, src: View, dst: &mut [f32]);

    /// Starts copying host values into a view without waiting for the work already issued:
    /// a GPU stages them in pinned host memory and copies on a stream of its own, so that the
    /// next batch travels while the current step computes. Operations see the values only
    /// after [`Backend::fence_uploads`]. The caller guarantees that no operation issued and
    /// not yet finished reads or writes `dst` (the engine uploads into the input buffers the
    /// running step does not read: see [`Backend::overlaps_uploads`]). By default
    /// [`Backend::upload`].
    fn upload_async(&mut self, dst: View, src: &[f32]) {
        self.upload(dst, src);
    }

    /// Operations issued after this see every [`Backend::upload_async`] issued before it
    /// (a GPU's compute stream waits for its copy stream). Nothing to do by default.
    fn fence_uploads(&mut self) {}

    /// Whether [`Backend::upload_async`] overlaps the work already issued. When it does, the
    /// engine keeps two sets of batch input buffers and fills one while a step reads the other;
    /// when it does not (the CPU runs each step to its end before returning), one set.
    fn overlaps_uploads(&self) -> bool {
        false
    }

    /// Whether this backend can run `op` on inputs of `input_shapes` into an output of `shape`
    /// typed `dtype`, or why not. The engine asks for every operation of a step before it
    /// allocates or runs anything, so that [`Backend::launch`] never meets an operation it
    /// cannot run. Every operation by default.
    fn check(
        &self,
        op: &Op,
        input_shapes: &[Vec<usize>],
        shape: &[usize],
        dtype: Dtype,
    ) -> Result<(), String> {
        let _ = (op, input_shapes, shape, dtype);
        Ok(())
    }

    /// Runs one operation.
    fn launch(&mut self, launch: &Launch<'_>);

    /// `dst = src` (same lengths; no overlap).
    fn copy(&mut self, dst: View, src: View);

    /// `dst += src` (same lengths; no overlap).
    fn add_into(&mut self, dst: View, src: View);

    /// `x *= factor`.
    fn scale(&mut self, x: View, factor: f32);

    /// `dst += weight · (src − dst)`: an exponential moving average step (same lengths; no
    /// overlap).
    fn lerp(&mut self, dst: View, src: View, weight: f32);

    /// `x = clamp(x, lo, hi)`.
    fn clamp(&mut self, x: View, lo: f32, hi: f32);

    /// √(Σ x²) over all the views together, accumulated in f64, after everything issued
    /// before (the global gradient norm).
    fn l2_norm(&mut self, xs: &[View]) -> f64;

    /// One AdamW update of `param` from `grad`, with its moment buffers `m` and `v`
    /// (all the same length).
    fn adamw(&mut self, param: View, grad: View, m: View, v: View, hyper: &AdamW);

    /// Waits for everything issued.
    fn synchronize(&mut self);

    /// The first error the device reported since the last call, if any. A backend whose
    /// device can fail while running work (a GPU's asynchronous faults, a failed kernel
    /// compilation, a library error) records the first failure instead of panicking, skips the
    /// work issued after it (downloads then read NaN) and returns it here; the engine asks
    /// after each step and each evaluation, before it trusts what it downloaded. `None` by
    /// default: the CPU does not fail this way.
    fn take_error(&mut self) -> Option<BackendError> {
        None
    }

    /// The device as its driver names it (`NVIDIA A100-SXM4-80GB`); the backend's name by
    /// default.
    fn device_name(&self) -> String {
        self.name().to_string()
    }

    /// The most device memory this backend has held at once, in bytes, when it keeps count
    /// (a GPU's; the CPU's is the process's resident memory).
    fn peak_memory_bytes(&self) -> Option<usize> {
        None
    }
}
