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
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
        }
    }
}

/// A backend for `device`, or why it cannot be had.
pub fn open(device: Device) -> Result<SharedBackend, BackendError> {
    match device {
        Device::Cpu => Ok(cpu()),
    }
}

/// A fresh CPU backend.
pub fn cpu() -> SharedBackend {
    Arc::new(Mutex::new(Box::new(kdc_cpu::CpuBackend::new())))
}
