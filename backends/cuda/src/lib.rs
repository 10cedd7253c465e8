//! The kernel layer of kdc's future CUDA backend, and the machinery that verifies it without a
//! GPU.
//!
//! - [`kernels`]: every CUDA C source kdc ships (embedded), with its entry points: the one list
//!   the backend loads into NVRTC and the compile check enumerates.
//! - [`launch`]: how each kernel is launched (grid, block, shared memory, arguments) for a
//!   given problem size. The backend and the emulated tests build their launches here, so the
//!   tests exercise the launch configurations the GPU will run.
//! - [`dispatch`]: the one mapping from an operation of a compiled step (`Op` + shapes) to
//!   device work — kernel launches, matrix products, uploads — and its scratch needs, shared
//!   by every backend running these kernels.
//! - [`emu`] (feature `emulate`): runs those launches on the CPU through the C++ emulation
//!   layer in `emu/` (one OS thread per CUDA thread), checking guard zones around every buffer
//!   and reporting what the emulator detects (absent shuffle lanes, divergent barriers,
//!   deadlocks).
//! - [`emulated`] (feature `emulate`): `EmulatedBackend`, kdc's `Backend` on the emulator: the
//!   whole engine on these kernels, checked against kdc-cpu.
//!
//! See README.md for what the emulator cannot catch.

pub mod dispatch;
pub mod kernels;
pub mod launch;

#[cfg(feature = "emulate")]
pub mod emu;
#[cfg(feature = "emulate")]
pub mod emulated;

/// The CUDA backend itself (feature `cuda`).
#[cfg(feature = "cuda")]
pub mod device;
#[cfg(feature = "cuda")]
mod lt;
