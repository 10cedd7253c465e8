//! The CUDA backend (feature `cuda`): kdc's [`Backend`] on an NVIDIA GPU through cudarc.
//!
//! - Memory: every buffer the engine asks for (the step's arena, each parameter, gradient,
//!   optimiser moment and batch input) is one device allocation; views are offsets into them.
//!   Parameters, gradients and optimiser state never leave the device; batches come in through
//!   [`Backend::upload`], the loss and terms go out through [`Backend::download`].
//! - Work: [`crate::dispatch::plan`] turns each operation into kernel launches, matrix
//!   products and constant uploads — the same plan the emulated backend runs in the tests.
//!   Kernels are the CUDA C files of [`crate::kernels`], compiled by NVRTC for this GPU's
//!   architecture at first use and cached per file; matrix products go to cuBLAS
//!   (strided-batched SGEMM, or GemmEx in bf16), a linear layer's product and bias to cuBLASLt
//!   in one call (its bias epilogue: [`crate::lt`]).
//! - Order: every operation is issued on one compute stream, so each sees the effects of the
//!   ones before it; `download`, `l2_norm` and `synchronize` wait. Batches drawn ahead
//!   ([`Backend::upload_async`]) are copied into pinned host memory and sent on a second
//!   stream while the compute stream runs the current step; [`Backend::fence_uploads`] makes
//!   the compute stream wait for them.
//!
//! Without a GPU, [`CudaBackend::new`] returns [`BackendError::Unavailable`] with the reason
//! (no driver library, no device): cudarc loads the CUDA libraries lazily and would panic on
//! a missing one, so each is checked first.

use crate::dispatch::{self, Gemm, Operand, Step};
use crate::kernels;
use crate::launch::{self, Arg, KernelCall};
use crate::lt::Lt;
use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{
    result as drv, sys as drv_sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice,
    CudaStream, DevicePtr, PinnedHostSlice,
};
use kdc_backend::{AdamW, Backend, BackendError, BufferId, Launch, View};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

/// Where NVRTC finds `cuda_bf16.h` (the runtime headers: `nvidia/cuda_runtime/include` of
/// the `nvidia-cuda-runtime-cu12` wheel, or a toolkit's `include/`).
pub const INCLUDE_ENV: &str = "KDC_CUDA_INCLUDE";

/// kdc's training step on one NVIDIA GPU.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Where batches drawn ahead are copied to the device, beside the compute stream.
    copy_stream: Arc<CudaStream>,
    /// Per destination buffer: its pinned host staging memory, and the copy that last read it
    /// (the host waits for that copy before writing the staging memory again).
    staging: HashMap<usize, Staging>,
    blas: CudaBlas,
    lt: Lt,
    buffers: Vec<Option<CudaSlice<f32>>>,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: HashMap<&'static str, CudaFunction>,
    /// `sm_80` for an A100, `sm_90` for an H100: what NVRTC compiles for.
    arch: &'static str,
    include_paths: Vec<String>,
    device_name: String,
    /// Bytes allocated now, and the most at once.
    allocated: usize,
    peak: usize,
    /// The first failure of the device not yet taken ([`Backend::take_error`]); work issued
    /// after it is skipped.
    error: Option<BackendError>,
}

/// Page-locked host memory an asynchronous upload is staged in.
struct Staging {
    pinned: PinnedHostSlice<f32>,
    /// Recorded on the copy stream after the last copy out of `pinned`.
    copied: Option<CudaEvent>,
}

/// Why the CUDA backend cannot start on this machine, or `None` when its libraries are there.
pub fn missing_library() -> Option<&'static str> {
    // SAFETY: these only try to load the shared libraries.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            return Some("the CUDA driver library (libcuda.so.1) is not installed: no NVIDIA driver on this machine");
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            return Some("NVRTC (libnvrtc.so.12) is not found: install the CUDA toolkit or the PyPI wheel nvidia-cuda-nvrtc-cu12 and put its lib/ on LD_LIBRARY_PATH");
        }
        if !cudarc::cublas::sys::is_culib_present() {
            return Some("cuBLAS (libcublas.so.12) is not found: install the CUDA toolkit or the PyPI wheel nvidia-cublas-cu12 and put its lib/ on LD_LIBRARY_PATH");
        }
        if !cudarc::cublaslt::sys::is_culib_present() {
            return Some("cuBLASLt (libcublasLt.so.12) is not found: install the CUDA toolkit or the PyPI wheel nvidia-cublas-cu12 and put its lib/ on LD_LIBRARY_PATH");
        }
    }
    None
}

fn unavailable(what: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("the cuda device is not available: {what}"))
}

/// The NVRTC architecture for a compute capability (the real architecture, so that resource
/// limits such as shared memory are checked at compile time).
fn arch_of(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (7, 0) => "sm_70",
        (7, 5) => "sm_75",
        (8, 0) => "sm_80",
        (8, 6) => "sm_86",
        (8, 7) => "sm_87",
        (8, 9) => "sm_89",
        (9, 0) => "sm_90",
        (10, 0) => "sm_100",
        (12, 0) => "sm_120",
        (m, _) if m >= 9 => "sm_90",
        (8, _) => "sm_80",
        _ => "sm_70",
    }
}

impl CudaBackend {
    /// The GPU `ordinal` (0 for the first), or why it cannot be used.
    pub fn new(ordinal: usize) -> Result<CudaBackend, BackendError> {
        if let Some(why) = missing_library() {
            return Err(unavailable(why));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| match e.0 {
            drv_sys::CUresult::CUDA_ERROR_NO_DEVICE => {
                unavailable("no NVIDIA GPU is visible (CUDA_ERROR_NO_DEVICE)")
            }
            drv_sys::CUresult::CUDA_ERROR_INVALID_DEVICE => {
                unavailable(format!("there is no GPU {ordinal}"))
            }
            _ => unavailable(format!("GPU {ordinal} cannot be opened: {e:?}")),
        })?;
        // The engine issues operations in order on one compute stream; the copy stream only
        // writes input buffers the running step does not read, and the compute stream waits
        // for it at each fence: cudarc's per-buffer events are not needed.
        // SAFETY: only this backend uses the context; the two streams are ordered by the
        // backend's own events.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| unavailable(format!("creating the compute stream: {e:?}")))?;
        let copy_stream = ctx
            .new_stream()
            .map_err(|e| unavailable(format!("creating the copy stream: {e:?}")))?;
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| unavailable(format!("cuBLAS: {e:?}")))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| unavailable(format!("{e:?}")))?;
        let device_name = ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into());
        let lt = Lt::new(stream.clone(), major).map_err(unavailable)?;
        let include_paths = std::env::var(INCLUDE_ENV)
            .map(|p| vec![p])
            .unwrap_or_default();
        Ok(CudaBackend {
            ctx,
            stream,
            copy_stream,
            staging: HashMap::new(),
            blas,
            buffers: Vec::new(),
            modules: HashMap::new(),
            functions: HashMap::new(),
            arch: arch_of(major, minor),
            include_paths,
            device_name,
            allocated: lt.workspace_bytes(),
            peak: lt.workspace_bytes(),
            lt,
            error: None,
        })
    }

    fn slice(&self, id: BufferId) -> &CudaSlice<f32> {
        self.buffers
            .get(id.0)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("cuda backend: unknown buffer {}", id.0))
    }

    /// The device address of element `offset` of a view's buffer.
    fn address(&self, id: BufferId, offset: usize) -> u64 {
        let slice = self.slice(id);
        assert!(
            offset <= slice.len(),
            "cuda backend: offset outside buffer {}",
            id.0
        );
        let (ptr, _sync) = slice.device_ptr(&self.stream);
        ptr + (offset * std::mem::size_of::<f32>()) as u64
    }

    /// The kernel `name`, compiling its file with NVRTC the first time one of its kernels runs.
    fn function(&mut self, name: &'static str) -> Result<CudaFunction, String> {
        if let Some(f) = self.functions.get(name) {
            return Ok(f.clone());
        }
        let file =
            kernels::file_of(name).ok_or_else(|| format!("no kernel file defines {name}"))?;
        let module = match self.modules.get(file.name) {
            Some(m) => m.clone(),
            None => {
                let options = cudarc::nvrtc::CompileOptions {
                    arch: Some(self.arch),
                    include_paths: self.include_paths.clone(),
                    ..Default::default()
                };
                let ptx = cudarc::nvrtc::compile_ptx_with_opts(file.nvrtc_source(), options)
                    .map_err(|e| {
                        format!(
                            "NVRTC could not compile kernels/{} for {}{}: {e:?}",
                            file.name,
                            self.arch,
                            if file.needs_cuda_headers && self.include_paths.is_empty() {
                                format!(" (it needs cuda_bf16.h: set {INCLUDE_ENV})")
                            } else {
                                String::new()
                            }
                        )
                    })?;
                let module = self
                    .ctx
                    .load_module(ptx)
                    .map_err(|e| format!("loading kernels/{}: {e:?}", file.name))?;
                self.modules.insert(file.name, module.clone());
                module
            }
        };
        let function = module
            .load_function(name)
            .map_err(|e| format!("kernel {name}: {e:?}"))?;
        self.functions.insert(name, function.clone());
        Ok(function)
    }

    /// Records the device's first failure (later ones follow from it).
    fn fail(&mut self, message: String) {
        if self.error.is_none() {
            self.error = Some(BackendError::Device {
                device: "cuda",
                message,
            });
        }
    }

    /// Runs `work` unless the device has failed, recording its failure.
    fn guard(&mut self, work: impl FnOnce(&mut Self) -> Result<(), String>) {
        if self.error.is_none() {
            if let Err(message) = work(self) {
                self.fail(message);
            }
        }
    }

    /// Launches `call` with its buffer arguments bound to `addresses` (device addresses of
    /// element 0 of each position).
    fn run(&mut self, call: &KernelCall, addresses: &[u64]) -> Result<(), String> {
        // Every argument's bytes, kept alive (8-byte aligned) until the launch is issued.
        let mut storage: Vec<Vec<u64>> = call
            .args
            .iter()
            .map(|arg| {
                let bytes: Vec<u8> = match arg {
                    Arg::Buf { index, offset } => (addresses[*index] + (*offset * 4) as u64)
                        .to_ne_bytes()
                        .to_vec(),
                    Arg::I32(v) => v.to_ne_bytes().to_vec(),
                    Arg::F32(v) => v.to_ne_bytes().to_vec(),
                    Arg::Bytes(b) => b.clone(),
                };
                let mut words = vec![0u64; bytes.len().div_ceil(8).max(1)];
                // SAFETY: `words` holds at least `bytes.len()` bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        words.as_mut_ptr() as *mut u8,
                        bytes.len(),
                    )
                };
                words
            })
            .collect();
        let mut params: Vec<*mut c_void> = storage
            .iter_mut()
            .map(|w| w.as_mut_ptr() as *mut c_void)
            .collect();
        let function = self.function(call.kernel)?.cu_function();
        // SAFETY: the arguments match the kernel's parameters (launch.rs builds both sides
        // from one description, and the emulated tests run the same calls); every address
        // lies in a live allocation of this context.
        unsafe {
            drv::launch_kernel(
                function,
                (call.grid[0], call.grid[1], call.grid[2]),
                (call.block[0], call.block[1], call.block[2]),
                call.shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| format!("launching {}: {e:?}", call.kernel))
    }

    /// A row-major batched product on cuBLAS (column-major): C = A·B is computed as
    /// Cᵀ = Bᵀ·Aᵀ, which reads the row-major operands in place.
    fn gemm(&mut self, g: &Gemm, addresses: &[u64]) -> Result<(), String> {
        if let Some(bias) = &g.bias {
            if self.lt.gemm_bias(g, addresses)? {
                return Ok(());
            }
            // No cuBLASLt algorithm for this layout: the bias broadcast into the output, then
            // the product accumulated onto it.
            self.run(&bias.broadcast, addresses)?;
            let product = Gemm {
                accumulate: true,
                bias: None,
                ..g.clone()
            };
            return self.gemm(&product, addresses);
        }
        let op = |o: &Operand| {
            if o.transposed {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let ptr = |o: &Operand| addresses[o.index] + (o.offset * 4) as u64;
        let (alpha, beta) = (1.0f32, if g.accumulate { 1.0f32 } else { 0.0 });
        if g.bf16 {
            // bf16 factors, f32 result and accumulation: the tensor cores' GEMM.
            use blas_sys::cudaDataType::{CUDA_R_16BF, CUDA_R_32F};
            // SAFETY: as below; A and B are bf16 copies in the operation's scratch, which
            // dispatch sized for them.
            return unsafe {
                blas_sys::cublasGemmStridedBatchedEx(
                    *self.blas.handle(),
                    op(&g.b),
                    op(&g.a),
                    g.n as i32,
                    g.m as i32,
                    g.k as i32,
                    &alpha as *const f32 as *const std::ffi::c_void,
                    ptr(&g.b) as *const std::ffi::c_void,
                    CUDA_R_16BF,
                    g.b.ld as i32,
                    g.b.batch_stride as i64,
                    ptr(&g.a) as *const std::ffi::c_void,
                    CUDA_R_16BF,
                    g.a.ld as i32,
                    g.a.batch_stride as i64,
                    &beta as *const f32 as *const std::ffi::c_void,
                    ptr(&g.c) as *mut std::ffi::c_void,
                    CUDA_R_32F,
                    g.c.ld as i32,
                    g.c.batch_stride as i64,
                    g.batch as i32,
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .result()
            .map_err(|e| format!("cuBLAS bf16 GEMM: {e:?}"));
        }
        // SAFETY: cuBLAS reads and writes within the operands' allocations (dispatch sizes
        // the product from the operation's shapes); the handle is bound to this stream.
        unsafe {
            blas_sys::cublasSgemmStridedBatched(
                *self.blas.handle(),
                op(&g.b),
                op(&g.a),
                g.n as i32,
                g.m as i32,
                g.k as i32,
                &alpha,
                ptr(&g.b) as *const f32,
                g.b.ld as i32,
                g.b.batch_stride as i64,
                ptr(&g.a) as *const f32,
                g.a.ld as i32,
                g.a.batch_stride as i64,
                &beta,
                ptr(&g.c) as *mut f32,
                g.c.ld as i32,
                g.c.batch_stride as i64,
                g.batch as i32,
            )
        }
        .result()
        .map_err(|e| format!("cuBLAS SGEMM: {e:?}"))
    }

    fn whole(&self, view: View) -> u64 {
        self.address(view.buffer, view.offset)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn check(
        &self,
        op: &kdc_backend::Op,
        input_shapes: &[Vec<usize>],
        shape: &[usize],
        dtype: kdc_backend::Dtype,
    ) -> Result<(), String> {
        dispatch::plan(op, input_shapes, shape, dtype)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn scratch_len(
        &self,
        op: &kdc_backend::op::Op,
        input_shapes: &[Vec<usize>],
        shape: &[usize],
        dtype: kdc_backend::Dtype,
    ) -> usize {
        dispatch::scratch_len(op, input_shapes, shape, dtype)
    }

    fn alloc(&mut self, len: usize) -> Result<BufferId, BackendError> {
        let slice = self.stream.alloc_zeros::<f32>(len.max(1)).map_err(|e| {
            if e.0 == drv_sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                BackendError::OutOfMemory {
                    device: "cuda",
                    bytes: len * 4,
                }
            } else {
                unavailable(format!("allocating {len} floats: {e:?}"))
            }
        })?;
        self.allocated += slice.len() * 4;
        self.peak = self.peak.max(self.allocated);
        self.buffers.push(Some(slice));
        Ok(BufferId(self.buffers.len() - 1))
    }

    fn free(&mut self, buffer: BufferId) {
        if let Some(staging) = self.staging.remove(&buffer.0) {
            // The copy out of the staging memory, into the buffer, finishes first.
            if let Some(event) = &staging.copied {
                if let Err(e) = event.synchronize() {
                    self.fail(format!("waiting for an upload: {e:?}"));
                }
            }
        }
        if let Some(b) = self.buffers.get_mut(buffer.0) {
            if let Some(slice) = b.take() {
                self.allocated -= slice.len() * 4;
            }
        }
    }

    fn device_name(&self) -> String {
        self.device_name.clone()
    }

    fn peak_memory_bytes(&self) -> Option<usize> {
        Some(self.peak)
    }

    fn upload(&mut self, dst: View, src: &[f32]) {
        assert_eq!(src.len(), dst.len, "cuda backend: upload length");
        self.guard(|b| {
            let stream = b.stream.clone();
            let slice = b.buffers[dst.buffer.0]
                .as_mut()
                .expect("cuda backend: upload into a freed buffer");
            let mut view = slice.slice_mut(dst.offset..dst.offset + dst.len);
            stream
                .memcpy_htod(src, &mut view)
                .map_err(|e| format!("upload: {e:?}"))
        });
    }

    fn upload_async(&mut self, dst: View, src: &[f32]) {
        assert_eq!(src.len(), dst.len, "cuda backend: upload length");
        let to = self.whole(dst);
        let capacity = self.slice(dst.buffer).len();
        self.guard(|b| {
            let staging = match b.staging.entry(dst.buffer.0) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    // SAFETY: the memory is written below before any copy reads it.
                    let pinned = unsafe { b.ctx.alloc_pinned::<f32>(capacity) }.map_err(|e| {
                        format!("allocating {capacity} floats of pinned memory: {e:?}")
                    })?;
                    e.insert(Staging {
                        pinned,
                        copied: None,
                    })
                }
            };
            // The previous copy out of this staging memory must be done before it is written.
            if let Some(event) = &staging.copied {
                event
                    .synchronize()
                    .map_err(|e| format!("waiting for an upload: {e:?}"))?;
            }
            let host = staging
                .pinned
                .as_mut_slice()
                .map_err(|e| format!("pinned memory: {e:?}"))?;
            let host = &mut host[dst.offset..dst.offset + dst.len];
            host.copy_from_slice(src);
            // SAFETY: `host` is page-locked and stays alive and unwritten until the event
            // recorded after the copy has passed; `to` lies in a live allocation no running
            // operation touches (the caller's guarantee).
            unsafe { drv::memcpy_htod_async(to, host, b.copy_stream.cu_stream()) }
                .map_err(|e| format!("upload: {e:?}"))?;
            let event = b
                .copy_stream
                .record_event(None)
                .map_err(|e| format!("upload: {e:?}"))?;
            staging.copied = Some(event);
            Ok(())
        });
    }

    fn fence_uploads(&mut self) {
        self.guard(|b| {
            b.stream
                .join(&b.copy_stream)
                .map_err(|e| format!("waiting for the copy stream: {e:?}"))
        });
    }

    fn overlaps_uploads(&self) -> bool {
        true
    }

    fn download(&mut self, src: View, dst: &mut [f32]) {
        assert_eq!(dst.len(), src.len, "cuda backend: download length");
        // What a failed device leaves: NaN, never stale values.
        dst.fill(f32::NAN);
        self.guard(|b| {
            let view = b.slice(src.buffer).slice(src.offset..src.offset + src.len);
            b.stream
                .memcpy_dtoh(&view, dst)
                .map_err(|e| format!("download: {e:?}"))?;
            b.stream
                .synchronize()
                .map_err(|e| format!("synchronize: {e:?}"))
        });
        if self.error.is_some() {
            dst.fill(f32::NAN);
        }
    }

    fn launch(&mut self, l: &Launch<'_>) {
        self.guard(|b| {
            // Checked when the step was made ready (`check`); an error here is a device
            // failure of no kind, kept as one rather than a panic.
            let steps = dispatch::plan(l.op, l.input_shapes, l.shape, l.dtype)
                .map_err(|e| e.to_string())?;
            let mut addresses: Vec<u64> = l.inputs.iter().map(|v| b.whole(*v)).collect();
            addresses.push(b.whole(l.output));
            addresses.push(b.whole(l.scratch));
            for step in &steps {
                if b.error.is_some() {
                    break;
                }
                match step {
                    Step::Kernel(call) => b.run(call, &addresses)?,
                    Step::Gemm(g) => b.gemm(g, &addresses)?,
                    Step::Upload(values) => {
                        let output = View {
                            len: values.len(),
                            ..l.output
                        };
                        b.upload(output, values)
                    }
                }
            }
            Ok(())
        });
    }

    fn copy(&mut self, dst: View, src: View) {
        assert_eq!(dst.len, src.len, "cuda backend: copy length");
        self.guard(|b| {
            let stream = b.stream.clone();
            let from = b.slice(src.buffer).slice(src.offset..src.offset + src.len);
            let (from_ptr, _sync) = from.device_ptr(&stream);
            let to = b.whole(dst);
            // SAFETY: both ranges lie in live allocations and do not overlap (the engine's
            // rule).
            unsafe { drv::memcpy_dtod_async(to, from_ptr, src.len * 4, stream.cu_stream()) }
                .map_err(|e| format!("copy: {e:?}"))
        });
    }

    fn add_into(&mut self, dst: View, src: View) {
        let addresses = [self.whole(dst), self.whole(src)];
        self.guard(|b| b.run(&launch::add_into(dst.len), &addresses));
    }

    fn scale(&mut self, x: View, factor: f32) {
        let addresses = [self.whole(x)];
        self.guard(|b| b.run(&launch::scale(x.len, factor), &addresses));
    }

    fn lerp(&mut self, dst: View, src: View, weight: f32) {
        let addresses = [self.whole(dst), self.whole(src)];
        self.guard(|b| b.run(&launch::lerp(dst.len, weight), &addresses));
    }

    fn clamp(&mut self, x: View, lo: f32, hi: f32) {
        let addresses = [self.whole(x)];
        self.guard(|b| b.run(&launch::clamp(x.len, lo, hi), &addresses));
    }

    fn l2_norm(&mut self, xs: &[View]) -> f64 {
        // Every tensor's f64 partial sums into one device buffer, then one download (one
        // synchronisation per call, not one per tensor).
        let calls: Vec<(View, KernelCall, usize)> = xs
            .iter()
            .filter(|x| x.len > 0)
            .map(|x| {
                let (call, partials) = launch::sum_squares(x.len);
                (*x, call, partials)
            })
            .collect();
        let total: usize = calls.iter().map(|c| c.2).sum();
        if total == 0 || self.error.is_some() {
            return if self.error.is_some() { f64::NAN } else { 0.0 };
        }
        let mut norm = f64::NAN;
        self.guard(|b| {
            let partial: CudaSlice<f64> = b
                .stream
                .alloc_zeros(total)
                .map_err(|e| format!("l2_norm: {e:?}"))?;
            let base = partial.device_ptr(&b.stream).0;
            let mut at = 0;
            for (x, call, partials) in &calls {
                let addresses = [b.whole(*x), base + (at * std::mem::size_of::<f64>()) as u64];
                b.run(call, &addresses)?;
                at += partials;
            }
            let host = b
                .stream
                .clone_dtoh(&partial)
                .map_err(|e| format!("l2_norm: {e:?}"))?;
            norm = host.iter().sum::<f64>().sqrt();
            Ok(())
        });
        norm
    }

    fn adamw(&mut self, param: View, grad: View, m: View, v: View, hyper: &AdamW) {
        let addresses = [
            self.whole(param),
            self.whole(grad),
            self.whole(m),
            self.whole(v),
        ];
        self.guard(|b| b.run(&launch::adamw(param.len, hyper), &addresses));
    }

    fn synchronize(&mut self) {
        self.guard(|b| {
            b.stream
                .synchronize()
                .map_err(|e| format!("synchronize: {e:?}"))
        });
    }

    fn take_error(&mut self) -> Option<BackendError> {
        self.error.take()
    }
}
