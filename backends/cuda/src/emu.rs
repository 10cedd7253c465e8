//! Runs [`KernelCall`]s on the CPU through the C++ emulation layer in `emu/` (feature
//! `emulate`).
//!
//! Buffers are host memory with guard zones on both sides ([`DeviceBuf`]); after every launch
//! the guards are checked, so a kernel writing outside its buffer is an error. The emulator
//! itself reports shuffles that read absent lanes, barriers met on different lines, deadlocks
//! and (after `KDC_EMU_WATCHDOG_SECS`, default 60) blocks that stop making progress.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;

use crate::launch::{Arg, KernelCall};

/// How a block's threads are scheduled (see emu/runtime.cpp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Schedule {
    /// All threads at once (real concurrency).
    Parallel = 0,
    /// One thread at a time, in increasing thread order between barriers.
    Forward = 1,
    /// One thread at a time, in decreasing thread order between barriers.
    Reverse = 2,
}

#[repr(C)]
struct RawReport {
    blocks: u64,
    threads_per_block: u64,
    barriers: u64,
    absent_lane_reads: u64,
    divergent_barriers: u64,
    seconds: f64,
    message: [c_char; 512],
}

extern "C" {
    fn kdc_emu_kernel_count() -> c_int;
    fn kdc_emu_kernel_name(i: c_int) -> *const c_char;
    #[allow(clippy::too_many_arguments)]
    fn kdc_emu_launch(
        kernel: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: usize,
        args: *mut *mut c_void,
        nargs: usize,
        arg_sizes: *const usize,
        schedule: c_int,
        report: *mut RawReport,
    ) -> c_int;
}

/// What a successful launch did.
#[derive(Clone, Debug)]
pub struct Report {
    pub blocks: u64,
    pub threads_per_block: u64,
    /// `__syncthreads` barriers completed, over all blocks.
    pub barriers: u64,
    pub seconds: f64,
}

/// Why a launch failed.
#[derive(Clone, Debug, PartialEq)]
pub enum EmuError {
    /// Unknown kernel, wrong argument count or sizes, or an invalid launch configuration.
    BadLaunch(String),
    /// The kernel ran and the emulator found a bug.
    Kernel {
        message: String,
        absent_lane_reads: u64,
        divergent_barriers: u64,
    },
    /// The kernel wrote outside buffer `buffer` (a guard zone changed).
    OutOfBounds { buffer: usize, kernel: String },
}

impl fmt::Display for EmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmuError::BadLaunch(m) => write!(f, "bad launch: {m}"),
            EmuError::Kernel { message, .. } => write!(f, "{message}"),
            EmuError::OutOfBounds { buffer, kernel } => {
                write!(f, "{kernel} wrote outside buffer {buffer}")
            }
        }
    }
}

impl std::error::Error for EmuError {}

/// The kernels linked into the emulator (shipped and self-test ones).
pub fn kernel_names() -> Vec<String> {
    // SAFETY: plain C calls; the names are static NUL-terminated strings.
    unsafe {
        (0..kdc_emu_kernel_count())
            .map(|i| {
                CStr::from_ptr(kdc_emu_kernel_name(i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }
}

/// Bytes of guard before and after every buffer.
const GUARD: usize = 64;
const GUARD_BYTE: u8 = 0xA5;

/// Element types a [`DeviceBuf`] can be read and written as.
pub trait Elem: Copy {
    const SIZE: usize;
    fn write(self, out: &mut [u8]);
    fn read(bytes: &[u8]) -> Self;
}

macro_rules! elem {
    ($t:ty) => {
        impl Elem for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn write(self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_ne_bytes());
            }
            fn read(bytes: &[u8]) -> Self {
                <$t>::from_ne_bytes(bytes.try_into().unwrap())
            }
        }
    };
}
elem!(f32);
elem!(f64);
elem!(u16);
elem!(i32);

/// A "device" buffer: host memory, 16-byte aligned, with guard zones.
pub struct DeviceBuf {
    storage: Vec<u128>,
    bytes: usize,
}

impl DeviceBuf {
    /// `bytes` bytes, filled with NaN bytes (0xFF), so that reading unwritten output shows.
    pub fn uninit(bytes: usize) -> DeviceBuf {
        let words = (2 * GUARD + bytes).div_ceil(16);
        let mut b = DeviceBuf {
            storage: vec![0; words],
            bytes,
        };
        let raw = b.raw_mut();
        raw.fill(GUARD_BYTE);
        raw[GUARD..GUARD + bytes].fill(0xFF);
        b
    }

    /// A buffer holding `values`.
    pub fn from_slice<T: Elem>(values: &[T]) -> DeviceBuf {
        let mut b = DeviceBuf::uninit(values.len() * T::SIZE);
        b.write(values);
        b
    }

    /// `n` zeros of type `T`.
    pub fn zeros<T: Elem>(n: usize) -> DeviceBuf {
        let mut b = DeviceBuf::uninit(n * T::SIZE);
        b.data_mut().fill(0);
        b
    }

    /// `n` f32 zeros, or None when the memory cannot be had.
    pub fn try_zeros_f32(n: usize) -> Option<DeviceBuf> {
        let bytes = n.checked_mul(4)?;
        let words = bytes.checked_add(2 * GUARD)?.div_ceil(16);
        let mut storage = Vec::new();
        storage.try_reserve_exact(words).ok()?;
        storage.resize(words, 0u128);
        let mut b = DeviceBuf { storage, bytes };
        b.raw_mut().fill(GUARD_BYTE);
        b.data_mut().fill(0);
        Some(b)
    }

    /// Its size in bytes (without the guards).
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// Writes `values` at f32 element `offset` (a byte copy; panics outside the buffer).
    pub fn write_f32_at(&mut self, offset: usize, values: &[f32]) {
        let (start, len) = (offset * 4, values.len() * 4);
        assert!(
            start + len <= self.bytes,
            "DeviceBuf::write_f32_at: outside the buffer"
        );
        let dst = &mut self.data_mut()[start..start + len];
        // SAFETY: `dst` has exactly `len` bytes, as many as `values` holds.
        unsafe {
            std::ptr::copy_nonoverlapping(values.as_ptr() as *const u8, dst.as_mut_ptr(), len)
        };
    }

    /// `len` f32s from element `offset` (a byte copy; panics outside the buffer).
    pub fn read_f32_at(&self, offset: usize, len: usize) -> Vec<f32> {
        let start = offset * 4;
        assert!(
            start + len * 4 <= self.bytes,
            "DeviceBuf::read_f32_at: outside the buffer"
        );
        let src = &self.data()[start..start + len * 4];
        let mut out = vec![0f32; len];
        // SAFETY: `out` has exactly `len · 4` bytes, as many as `src`.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), out.as_mut_ptr() as *mut u8, len * 4)
        };
        out
    }

    /// Overwrites the buffer with `values` (which must fill it exactly).
    pub fn write<T: Elem>(&mut self, values: &[T]) {
        assert_eq!(
            values.len() * T::SIZE,
            self.bytes,
            "DeviceBuf::write: length"
        );
        for (v, chunk) in values.iter().zip(self.data_mut().chunks_exact_mut(T::SIZE)) {
            v.write(chunk);
        }
    }

    /// The contents as values of type `T`.
    pub fn read<T: Elem>(&self) -> Vec<T> {
        self.data().chunks_exact(T::SIZE).map(T::read).collect()
    }

    fn raw(&self) -> &[u8] {
        // SAFETY: the storage holds at least 2·GUARD + bytes bytes.
        unsafe {
            std::slice::from_raw_parts(self.storage.as_ptr() as *const u8, 2 * GUARD + self.bytes)
        }
    }

    fn raw_mut(&mut self) -> &mut [u8] {
        let len = 2 * GUARD + self.bytes;
        // SAFETY: as in `raw`.
        unsafe { std::slice::from_raw_parts_mut(self.storage.as_mut_ptr() as *mut u8, len) }
    }

    fn data(&self) -> &[u8] {
        &self.raw()[GUARD..GUARD + self.bytes]
    }

    fn data_mut(&mut self) -> &mut [u8] {
        let bytes = self.bytes;
        &mut self.raw_mut()[GUARD..GUARD + bytes]
    }

    fn guards_intact(&self) -> bool {
        let raw = self.raw();
        raw[..GUARD]
            .iter()
            .chain(&raw[GUARD + self.bytes..])
            .all(|&b| b == GUARD_BYTE)
    }

    /// The device pointer of element `offset` (of `elem_size` bytes each).
    fn ptr(&mut self, byte_offset: usize) -> *mut c_void {
        assert!(
            byte_offset <= self.bytes,
            "argument offset outside its buffer"
        );
        // SAFETY: within the allocation (checked above).
        unsafe { (self.storage.as_mut_ptr() as *mut u8).add(GUARD + byte_offset) as *mut c_void }
    }
}

/// Runs `call` with `bufs` bound to its [`Arg::Buf`] arguments (offsets count `f32`s, the
/// element type of every buffer but the bf16 and f64 ones, which the calls bind at offset 0).
pub fn run(
    call: &KernelCall,
    bufs: &mut [&mut DeviceBuf],
    schedule: Schedule,
) -> Result<Report, EmuError> {
    // Argument values, kept alive while the kernel runs; `args[i]` points at one of them.
    let mut values: Vec<Vec<u8>> = Vec::with_capacity(call.args.len());
    for arg in &call.args {
        let bytes = match arg {
            Arg::Buf { index, offset } => {
                let p = bufs[*index].ptr(offset * 4);
                (p as usize).to_ne_bytes().to_vec()
            }
            Arg::I32(v) => v.to_ne_bytes().to_vec(),
            Arg::F32(v) => v.to_ne_bytes().to_vec(),
            Arg::Bytes(b) => b.clone(),
        };
        values.push(bytes);
    }
    // Copy each value into 16-byte aligned storage (structs may need the alignment).
    let mut aligned: Vec<Vec<u128>> = values
        .iter()
        .map(|v| {
            let mut w = vec![0u128; v.len().div_ceil(16).max(1)];
            // SAFETY: `w` has at least v.len() bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(v.as_ptr(), w.as_mut_ptr() as *mut u8, v.len())
            };
            w
        })
        .collect();
    let mut ptrs: Vec<*mut c_void> = aligned
        .iter_mut()
        .map(|w| w.as_mut_ptr() as *mut c_void)
        .collect();
    let sizes: Vec<usize> = values.iter().map(Vec::len).collect();
    let name = CString::new(call.kernel).unwrap();
    let mut report = RawReport {
        blocks: 0,
        threads_per_block: 0,
        barriers: 0,
        absent_lane_reads: 0,
        divergent_barriers: 0,
        seconds: 0.0,
        message: [0; 512],
    };
    // SAFETY: every pointer argument points into a live DeviceBuf; the argument array and its
    // sizes match in length; the kernels only touch memory through those pointers.
    let code = unsafe {
        kdc_emu_launch(
            name.as_ptr(),
            call.grid.as_ptr(),
            call.block.as_ptr(),
            call.shared_bytes as usize,
            ptrs.as_mut_ptr(),
            ptrs.len(),
            sizes.as_ptr(),
            schedule as c_int,
            &mut report,
        )
    };
    // SAFETY: the runtime NUL-terminates the message (snprintf, or all zeros).
    let message = unsafe { CStr::from_ptr(report.message.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    for (i, b) in bufs.iter().enumerate() {
        if !b.guards_intact() {
            return Err(EmuError::OutOfBounds {
                buffer: i,
                kernel: call.kernel.to_string(),
            });
        }
    }
    match code {
        0 => Ok(Report {
            blocks: report.blocks,
            threads_per_block: report.threads_per_block,
            barriers: report.barriers,
            seconds: report.seconds,
        }),
        2 => Err(EmuError::BadLaunch(message)),
        _ => Err(EmuError::Kernel {
            message,
            absent_lane_reads: report.absent_lane_reads,
            divergent_barriers: report.divergent_barriers,
        }),
    }
}

/// Runs a sequence of calls (one operation's launches) in order, stopping at the first error.
pub fn run_all(
    calls: &[KernelCall],
    bufs: &mut [&mut DeviceBuf],
    schedule: Schedule,
) -> Result<(), EmuError> {
    for call in calls {
        run(call, bufs, schedule)?;
    }
    Ok(())
}
