//! Choosing the device a step runs on: the one place the engine names a backend crate.

use super::exec::SharedBackend;
use kdc_backend::BackendError;
use std::sync::{Arc, Mutex};

/// A device kdc can train on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The CPU backend (`kdc-cpu`): always available.
    #[default]
    Cpu,
    /// The CUDA backend (`kdc-cuda`, cargo feature `cuda`): the first NVIDIA GPU.
    Cuda,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda => write!(f, "cuda"),
        }
    }
}

/// A backend for `device`, or why it cannot be had (a build without the `cuda` feature; no
/// driver, no GPU).
pub fn open(device: Device) -> Result<SharedBackend, BackendError> {
    match device {
        Device::Cpu => Ok(cpu()),
        Device::Cuda => cuda(),
    }
}

/// A fresh CPU backend.
pub fn cpu() -> SharedBackend {
    Arc::new(Mutex::new(Box::new(kdc_cpu::CpuBackend::new())))
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<SharedBackend, BackendError> {
    let backend = kdc_cuda::device::CudaBackend::new(0)?;
    Ok(Arc::new(Mutex::new(Box::new(backend))))
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<SharedBackend, BackendError> {
    Err(BackendError::Unavailable(
        "this kdc is built without the CUDA backend: build it with `cargo build --release --features cuda` \
         (no CUDA toolkit needed to build), or train on the CPU with --device cpu"
            .into(),
    ))
}
