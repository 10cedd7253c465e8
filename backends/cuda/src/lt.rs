//! A [`Gemm`] with a [`crate::dispatch::Bias`] on cuBLASLt: the product and its bias in one
//! call (the bias epilogue), instead of a broadcast of the bias into the output followed by a
//! product that reads the output back to accumulate onto it.
//!
//! Operands are mapped as for cuBLAS (kdc's row-major `C = A·B` is cuBLASLt's column-major
//! `Cᵀ = Bᵀ·Aᵀ`: its first operand is kdc's B), so the bias — one value per column of kdc's
//! C — is one value per row of cuBLASLt's D, which is what its epilogue adds. A layout is
//! planned once (descriptors, the heuristic's algorithm, chosen for the operands' actual
//! alignment) and reused; when cuBLASLt has no algorithm for it, [`Lt::gemm_bias`] says so and
//! the caller runs the plan's equivalent without the epilogue.

use crate::dispatch::{Gemm, Operand};
use crate::launch::alignment;
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::Arc;

/// What a planned product depends on: its dimensions and layouts, its arithmetic and the
/// alignment of its operands (cuBLASLt's kernels need aligned pointers).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    dims: [usize; 4],
    operands: [(bool, usize, usize); 3],
    bf16: bool,
    alignments: [u32; 4],
}

/// A planned product: its descriptors and algorithm.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by `Lt::plan`, destroyed once here. Failures cannot be reported from
        // a drop and leak nothing of the device's.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for layout in self.layouts {
                let _ = lt::destroy_matrix_layout(layout);
            }
        }
    }
}

/// A cuBLASLt handle bound to the backend's compute stream, with its workspace and the plans
/// made so far (`None`: no algorithm for that product).
pub struct Lt {
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
    plans: HashMap<Key, Option<Plan>>,
}

// SAFETY: the handle and descriptors are used only through `&mut Lt`, by one thread at a time.
unsafe impl Send for Lt {}

/// An attribute's value as cuBLASLt's setters take it: its address and size in bytes.
fn raw<T>(value: &T) -> (*const c_void, usize) {
    (value as *const T as *const c_void, size_of::<T>())
}

fn status(what: &str) -> impl Fn(cudarc::cublaslt::result::CublasError) -> String + '_ {
    move |e| format!("cuBLASLt {what}: {e:?}")
}

impl Lt {
    /// A handle on `stream` with NVIDIA's recommended workspace (32 MiB from Hopper on, 4 MiB
    /// before), or why not.
    pub fn new(stream: Arc<CudaStream>, major: i32) -> Result<Lt, String> {
        let handle = lt::create_handle().map_err(status("handle"))?;
        let bytes = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let workspace = stream
            .alloc_zeros::<u8>(bytes)
            .map_err(|e| format!("cuBLASLt workspace: {e:?}"))?;
        Ok(Lt {
            handle,
            stream,
            workspace,
            plans: HashMap::new(),
        })
    }

    /// Bytes of device memory the workspace holds.
    pub fn workspace_bytes(&self) -> usize {
        self.workspace.len()
    }

    /// Runs `g` (which has a bias) with the bias epilogue: `addresses` are the device addresses
    /// of its buffer positions. `Ok(false)`: cuBLASLt has no algorithm for this product or
    /// refused these pointers; nothing ran.
    pub fn gemm_bias(&mut self, g: &Gemm, addresses: &[u64]) -> Result<bool, String> {
        let bias = g.bias.as_ref().expect("a product with a bias");
        assert!(
            !g.accumulate,
            "kdc-cuda: a bias epilogue overwrites its output"
        );
        let ptr = |o: &Operand| addresses[o.index] + (o.offset * 4) as u64;
        let (a, b, c) = (ptr(&g.a), ptr(&g.b), ptr(&g.c));
        let bias_ptr = addresses[bias.index] + (bias.offset * 4) as u64;
        if alignment(bias_ptr) < 16 {
            // The epilogue reads the bias in 16-byte vectors (a misaligned one faults on the
            // device rather than being refused): the plain path instead.
            return Ok(false);
        }
        let key = Key {
            dims: [g.batch, g.m, g.n, g.k],
            operands: [&g.a, &g.b, &g.c].map(|o| (o.transposed, o.ld, o.batch_stride)),
            bf16: g.bf16,
            alignments: [
                alignment(a),
                alignment(b),
                alignment(c),
                alignment(bias_ptr),
            ],
        };
        if !self.plans.contains_key(&key) {
            let plan = self.plan(g, &key)?;
            self.plans.insert(key.clone(), plan);
        }
        let Some(plan) = &self.plans[&key] else {
            return Ok(false);
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (workspace, _sync) = self.workspace.device_ptr(&self.stream);
        // SAFETY: the descriptors are live (owned by `plan`); the pointers lie in live
        // allocations of this context, sized by dispatch for these dimensions; the workspace
        // is this handle's and only used on its stream.
        let result = unsafe {
            let (value, size) = raw(&bias_ptr);
            lt::set_matmul_desc_attribute(
                plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                value,
                size,
            )
            .map_err(status("bias pointer"))?;
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                b as *const c_void,
                plan.layouts[0],
                a as *const c_void,
                plan.layouts[1],
                c as *const c_void,
                plan.layouts[2],
                c as *mut c_void,
                plan.layouts[2],
                &plan.algo,
                workspace as *mut c_void,
                self.workspace.len(),
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        };
        match result {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    e.0,
                    sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED
                        | sys::cublasStatus_t::CUBLAS_STATUS_INVALID_VALUE
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(format!("cuBLASLt matmul: {e:?}")),
        }
    }

    /// The descriptors and the heuristic's algorithm for `g`, or `None` when there is none.
    fn plan(&self, g: &Gemm, key: &Key) -> Result<Option<Plan>, String> {
        use sys::cublasLtMatmulDescAttributes_t as Desc;
        use sys::cublasLtMatmulPreferenceAttributes_t as Pref;
        use sys::cublasLtMatrixLayoutAttribute_t as Layout;
        let factor = if g.bf16 {
            sys::cudaDataType_t::CUDA_R_16BF
        } else {
            sys::cudaDataType_t::CUDA_R_32F
        };
        // Column-major shapes: cuBLASLt's A is kdc's B (n × k as op(A)), its B kdc's A.
        let stored = |o: &Operand, rows: usize, cols: usize| {
            if o.transposed {
                (cols, rows)
            } else {
                (rows, cols)
            }
        };
        let shapes = [
            (factor, stored(&g.b, g.n, g.k), &g.b),
            (factor, stored(&g.a, g.k, g.m), &g.a),
            (sys::cudaDataType_t::CUDA_R_32F, (g.n, g.m), &g.c),
        ];
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(status("descriptor"))?;
        let mut plan = Plan {
            desc,
            layouts: [std::ptr::null_mut(); 3],
            // SAFETY: plain data, overwritten by the heuristic's choice before any use.
            algo: unsafe { std::mem::zeroed() },
        };
        for (i, (ty, (rows, cols), o)) in shapes.into_iter().enumerate() {
            plan.layouts[i] = lt::create_matrix_layout(ty, rows as u64, cols as u64, o.ld as i64)
                .map_err(status("layout"))?;
            if g.batch > 1 {
                let (count, stride) = (g.batch as i32, o.batch_stride as i64);
                let layout = plan.layouts[i];
                // SAFETY: the layout is live; the values are of the attributes' types.
                let set = |attr: Layout, (value, size): (*const c_void, usize), what| unsafe {
                    lt::set_matrix_layout_attribute(layout, attr, value, size).map_err(status(what))
                };
                set(
                    Layout::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    raw(&count),
                    "batch count",
                )?;
                set(
                    Layout::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    raw(&stride),
                    "batch stride",
                )?;
            }
        }
        // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 (an int32 attribute).
        let op = |o: &Operand| i32::from(o.transposed);
        let epilogue = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
        let bias_type = sys::cudaDataType_t::CUDA_R_32F;
        let pref = lt::create_matmul_pref().map_err(status("preference"))?;
        let workspace = self.workspace.len();
        // SAFETY: the descriptor and preference are live; each value is of its attribute's
        // type; the preference is destroyed once, below.
        let found = unsafe {
            let set_desc = |attr: Desc, (value, size): (*const c_void, usize)| {
                lt::set_matmul_desc_attribute(plan.desc, attr, value, size)
                    .map_err(status("descriptor attribute"))
            };
            let (ta, tb) = (op(&g.b), op(&g.a));
            set_desc(Desc::CUBLASLT_MATMUL_DESC_TRANSA, raw(&ta))?;
            set_desc(Desc::CUBLASLT_MATMUL_DESC_TRANSB, raw(&tb))?;
            set_desc(Desc::CUBLASLT_MATMUL_DESC_EPILOGUE, raw(&epilogue))?;
            set_desc(Desc::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, raw(&bias_type))?;
            let set_pref = |attr: Pref, (value, size): (*const c_void, usize)| {
                lt::set_matmul_pref_attribute(pref, attr, value, size)
                    .map_err(status("preference attribute"))
            };
            let mut outcome = set_pref(
                Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                raw(&workspace),
            );
            let aligned = [
                (
                    Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    key.alignments[1],
                ),
                (
                    Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    key.alignments[0],
                ),
                (
                    Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    key.alignments[2],
                ),
                (
                    Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                    key.alignments[2],
                ),
            ];
            for (attr, bytes) in aligned {
                outcome = outcome.and_then(|_| set_pref(attr, raw(&bytes)));
            }
            let heuristic = outcome.and_then(|_| {
                match lt::get_matmul_algo_heuristic(
                    self.handle,
                    plan.desc,
                    plan.layouts[0],
                    plan.layouts[1],
                    plan.layouts[2],
                    plan.layouts[2],
                    pref,
                ) {
                    Ok(h) => Ok(Some(h.algo)),
                    Err(e) if e.0 == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => Ok(None),
                    Err(e) => Err(format!("cuBLASLt heuristic: {e:?}")),
                }
            });
            let _ = lt::destroy_matmul_pref(pref);
            heuristic?
        };
        Ok(found.map(|algo| {
            plan.algo = algo;
            plan
        }))
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: the handle is this value's, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
