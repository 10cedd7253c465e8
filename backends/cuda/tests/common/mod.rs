//! Helpers of the emulated kernel tests: random inputs, running launches, comparing with the
//! kdc-cpu reference.
#![allow(dead_code)]

use kdc_cuda::emu::{self, DeviceBuf, Schedule};
use kdc_cuda::launch::KernelCall;

/// Sizes the tests use: 1, a partial warp, a warp and one, and more than one block of 256.
pub const SIZES: [usize; 4] = [1, 7, 33, 257];

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// An integer in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The largest |got − want| over the largest |want| (or 1e-30 if all are zero); NaNs must
/// agree in position (a NaN on one side only is an infinite error).
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f64, |m, &v| m.max((v as f64).abs()))
        .max(1e-30);
    let mut worst = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        let e = if g.is_nan() && w.is_nan() || g == w {
            0.0
        } else if g.is_nan() || w.is_nan() || g.is_infinite() || w.is_infinite() {
            f64::INFINITY
        } else {
            (g as f64 - w as f64).abs() / scale
        };
        worst = worst.max(e);
    }
    worst
}

/// Asserts `rel_err(got, want) <= tol` and prints the error (collected by `--nocapture` runs).
#[track_caller]
pub fn check(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    let e = rel_err(got, want);
    eprintln!("[max-rel-err] {what}: {e:.3e}");
    assert!(
        e <= tol,
        "{what}: relative error {e:.3e} > {tol:.1e}\n got  {:?}\n want {:?}",
        &got[..got.len().min(16)],
        &want[..want.len().min(16)]
    );
    e
}

/// Device buffers holding each of `inputs`, then `outputs` zero-initialised outputs of the
/// given lengths.
pub fn bufs(inputs: &[&[f32]], outputs: &[usize]) -> Vec<DeviceBuf> {
    inputs
        .iter()
        .map(|x| DeviceBuf::from_slice(x))
        .chain(outputs.iter().map(|&n| DeviceBuf::uninit(n * 4)))
        .collect()
}

/// Runs `calls` on `bufs` with `schedule`, panicking with the emulator's message on an error.
#[track_caller]
pub fn run(calls: &[KernelCall], bufs: &mut [DeviceBuf], schedule: Schedule) {
    let mut refs: Vec<&mut DeviceBuf> = bufs.iter_mut().collect();
    if let Err(e) = emu::run_all(calls, &mut refs, schedule) {
        panic!("emulated launch failed: {e}");
    }
}

/// Runs `calls` on fresh copies of `inputs` under the forward and the reverse serial schedules
/// (and the parallel one), checks that all agree bit for bit (a race between threads of a block
/// makes them differ), and returns the outputs (the buffers after the inputs).
#[track_caller]
pub fn run_checked(calls: &[KernelCall], inputs: &[&[f32]], outputs: &[usize]) -> Vec<Vec<f32>> {
    let mut results: Vec<Vec<Vec<f32>>> = Vec::new();
    for schedule in [Schedule::Forward, Schedule::Reverse, Schedule::Parallel] {
        let mut b = bufs(inputs, outputs);
        run(calls, &mut b, schedule);
        results.push(b[inputs.len()..].iter().map(|b| b.read::<f32>()).collect());
    }
    for r in &results[1..] {
        for (o, (x, y)) in results[0].iter().zip(r).enumerate() {
            let same = x
                .iter()
                .zip(y)
                .all(|(a, b)| a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan());
            assert!(
                same,
                "output {o} differs between thread schedules (a race?)"
            );
        }
    }
    results.swap_remove(0)
}

/// Runs `calls` once (parallel schedule) and returns the outputs.
#[track_caller]
pub fn run_once(calls: &[KernelCall], inputs: &[&[f32]], outputs: &[usize]) -> Vec<Vec<f32>> {
    let mut b = bufs(inputs, outputs);
    run(calls, &mut b, Schedule::Parallel);
    b[inputs.len()..].iter().map(|b| b.read::<f32>()).collect()
}
