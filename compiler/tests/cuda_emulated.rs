//! A whole CLIP-KD training step on the CUDA kernels (kdc-cuda's dispatcher and kernels, run by
//! its CPU emulator) against the CPU backend: the small demo recipe
//! (recipes/demo/clip_kd_small.kd) from the same initial parameters and batch on both. The loss,
//! every term, every gradient, the gradient norm, AdamW's moments and the parameters after one
//! update must agree within 1e-4 of each tensor's largest magnitude. `--nocapture` prints the
//! worst errors.
//!
//! The recipe is the demo's with a batch of 4 instead of 16 (the emulator's time grows with the
//! blocks launched), and a constant learning rate instead of its warm-up (whose first step has a
//! learning rate of almost nothing, which would make the parameters after the update compare
//! trivially).

use kdc::engine::exec::SharedBackend;
use kdc::engine::train::{Evaluation, Options, StepLog, Trainer};
use kdc_backend::Backend;
use kdc_cuda::emulated::EmulatedBackend;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

const TOL: f64 = 1e-4;

/// The backend under test: the emulated CUDA backend, or, in the GPU suite
/// (`KDC_TEST_CUDA=1`, feature `cuda`: backends/cuda/gpu-tests.sh), the real one on the first
/// GPU — never a silent fallback.
fn cuda_backend() -> Box<dyn Backend> {
    if std::env::var("KDC_TEST_CUDA").as_deref() == Ok("1") {
        #[cfg(feature = "cuda")]
        return Box::new(
            kdc_cuda::device::CudaBackend::new(0)
                .unwrap_or_else(|e| panic!("KDC_TEST_CUDA=1 but no usable GPU: {e}")),
        );
        #[cfg(not(feature = "cuda"))]
        panic!("KDC_TEST_CUDA=1 runs the GPU suite, which needs the `cuda` feature: run backends/cuda/gpu-tests.sh");
    }
    Box::new(EmulatedBackend::new())
}

/// The test recipe's constant learning rate.
const LR: f32 = 1e-3;

/// AdamW's ε in the test recipe (the default).
const ADAMW_EPS: f32 = 1e-6;

/// The batch of the test's variant of the recipe (the demo's is 16): the emulator runs every
/// CUDA thread as an OS thread, and its time grows with the blocks launched.
const BATCH: usize = 4;

/// Gradients that are zero in exact arithmetic: an attention key's bias adds q·b to every
/// score of a query's row, which the softmax ignores. Both backends return rounding noise
/// there; it must be noise (tiny next to the same projection's weight gradient), not compared
/// elementwise.
fn zero_in_exact_arithmetic(name: &str) -> bool {
    name.ends_with("k_proj.bias")
}

fn recipe(precision: &str) -> (kdc::ir::Recipe, kdc::manifest::Base) {
    recipe_with(precision, "")
}

/// The test recipe with `extra` appended to its train line (`| accumulate(2)`).
fn recipe_with(precision: &str, extra: &str) -> (kdc::ir::Recipe, kdc::manifest::Base) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("recipes/demo");
    let path = dir.join("clip_kd_small.kd");
    let text = std::fs::read_to_string(&path).unwrap();
    let train = text
        .lines()
        .find(|l| l.starts_with("train ="))
        .expect("the demo recipe has a train line");
    let data = text
        .lines()
        .find(|l| l.starts_with("data ="))
        .expect("the demo recipe has a data line");
    let text = text
        .replace(
            train,
            &format!(
                "train = adamw(lr: {LR}, weight_decay: 0.1) | steps(200) | seed(0) | precision({precision}){extra}"
            ),
        )
        .replace(
            data,
            &format!("data = synthetic(batch: {BATCH}, samples: 512, seed: 0)"),
        );
    let compiled = kdc::compile(path.to_str().unwrap(), &text, &kdc::FsLoader);
    let base = compiled.base();
    let recipe = compiled
        .recipe
        .unwrap_or_else(|| panic!("the variant of the small recipe does not check"));
    (recipe, base)
}

/// What one backend computed: the evaluation of step 0, then the step itself, the parameters
/// and moments after it.
struct Run {
    eval: Evaluation,
    log: StepLog,
    after: Vec<(String, Vec<f32>)>,
    moments: Vec<(String, Vec<f32>, Vec<f32>)>,
    seconds: f64,
}

fn run(recipe: &kdc::ir::Recipe, base: &kdc::manifest::Base, backend: Box<dyn Backend>) -> Run {
    let started = Instant::now();
    let shared: SharedBackend = Arc::new(Mutex::new(backend));
    let options = Options {
        base: base.clone(),
        ..Default::default()
    };
    let mut trainer = Trainer::on(recipe, 0, &options, shared).unwrap();
    let eval = trainer.evaluate(0).unwrap();
    let log = trainer.train_step().unwrap();
    Run {
        eval,
        log,
        after: trainer.parameters(),
        moments: trainer.moments(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The largest |got − want| over the largest |want| (NaN if either has a NaN).
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want
        .iter()
        .fold(0f64, |m, &v| m.max((v as f64).abs()))
        .max(1e-30);
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).abs() / scale)
        .fold(0f64, |m, e| {
            if e.is_nan() || m.is_nan() {
                f64::NAN
            } else {
                m.max(e)
            }
        })
}

/// The worst error of a family of tensors, which must be within `tol`.
struct Worst {
    what: &'static str,
    error: f64,
    at: String,
    count: usize,
}

impl Worst {
    fn new(what: &'static str) -> Worst {
        Worst {
            what,
            error: 0.0,
            at: String::new(),
            count: 0,
        }
    }

    fn add(&mut self, name: &str, got: &[f32], want: &[f32]) {
        let e = rel_err(got, want);
        self.count += 1;
        if !(e <= self.error) {
            self.error = e;
            self.at = name.to_string();
        }
    }

    fn report(&self, tol: f64) {
        eprintln!(
            "[cuda-emulated vs cpu] {:<22} worst {:.3e} over {:>3} tensors ({}; tolerance {tol:.0e})",
            self.what, self.error, self.count, self.at
        );
        assert!(
            self.error <= tol,
            "{}: {} differs by {:.3e} (> {tol:.0e}) of its largest magnitude",
            self.what,
            self.at,
            self.error
        );
    }
}

fn scalar_err(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-30)
}

#[test]
fn a_clip_kd_training_step_on_the_emulated_cuda_kernels_matches_the_cpu() {
    compare_step("fp32", TOL);
}

/// The same under `precision(bf16)`: autocast's products and roundings on both backends.
/// Values agree bit for bit until an f32 sum taken in another order lands on the other side
/// of a bf16 rounding boundary; the tolerance is a few bf16 ulps (2⁻⁷ relative each).
#[test]
fn a_bf16_autocast_training_step_on_the_emulated_cuda_kernels_matches_the_cpu() {
    compare_step("bf16", TOL_BF16);
}

const TOL_BF16: f64 = 1e-2;

fn compare_step(precision: &str, tol: f64) {
    let (recipe, base) = recipe(precision);
    let cpu = run(&recipe, &base, Box::new(kdc_cpu::CpuBackend::new()));
    let cuda = run(&recipe, &base, cuda_backend());
    eprintln!(
        "[cuda-emulated vs cpu] cpu {:.2} s, emulated {:.2} s (compile, initialise, evaluate, one step)",
        cpu.seconds, cuda.seconds
    );

    // The same starting point: parameters and batch, bit for bit.
    assert_eq!(cpu.eval.params.len(), cuda.eval.params.len());
    for ((name, _, a), (_, _, b)) in cpu.eval.params.iter().zip(&cuda.eval.params) {
        assert!(a == b, "initial {name} differs");
    }
    assert!(!cpu.eval.inputs.is_empty());
    for ((name, _, a), (_, _, b)) in cpu.eval.inputs.iter().zip(&cuda.eval.inputs) {
        assert!(a == b, "batch input {name} differs");
    }

    // The loss and every term, at evaluation and in the step.
    let mut scalars: Vec<(String, f64, f64)> = vec![
        ("loss".into(), cuda.eval.loss, cpu.eval.loss),
        ("step loss".into(), cuda.log.loss, cpu.log.loss),
        ("grad norm".into(), cuda.log.grad_norm, cpu.log.grad_norm),
    ];
    assert_eq!(
        cpu.eval.terms.len(),
        4,
        "clip, crd, icl, fd: {:?}",
        cpu.eval.terms
    );
    for ((label, want), (_, got)) in cpu.eval.terms.iter().zip(&cuda.eval.terms) {
        scalars.push((format!("term {label}"), *got, *want));
    }
    for (what, got, want) in &scalars {
        let e = scalar_err(*got, *want);
        eprintln!("[cuda-emulated vs cpu] {what:<22} {got:.7} vs {want:.7}: {e:.3e}");
        assert!(
            want.is_finite() && e <= tol,
            "{what}: {got} vs {want} ({e:.3e})"
        );
    }

    let mut grads = Worst::new("gradients");
    assert!(
        cpu.eval.grads.len() > 10,
        "{} gradients",
        cpu.eval.grads.len()
    );
    assert_eq!(cpu.eval.grads.len(), cuda.eval.grads.len());
    let largest = |v: &[f32]| v.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    for ((name, want), (other, got)) in cpu.eval.grads.iter().zip(&cuda.eval.grads) {
        assert_eq!(name, other);
        if zero_in_exact_arithmetic(name) {
            let weight = name.replace("k_proj.bias", "k_proj.weight");
            let (_, w) = cpu.eval.grads.iter().find(|(n, _)| *n == weight).unwrap();
            let noise = largest(got).max(largest(want)) / largest(w);
            eprintln!("[cuda-emulated vs cpu] {name}: zero up to {noise:.1e} of the weight's");
            assert!(noise < tol, "{name}: {noise:.3e}");
            continue;
        }
        assert!(
            want.iter().any(|&g| g != 0.0),
            "the CPU's gradient of {name} is zero"
        );
        grads.add(name, got, want);
    }
    grads.report(tol);

    let mut moments = Worst::new("AdamW m and v");
    for ((name, m0, v0), (_, m1, v1)) in cpu.moments.iter().zip(&cuda.moments) {
        if zero_in_exact_arithmetic(name) {
            continue; // moments of rounding noise
        }
        moments.add(&format!("{name} m"), m1, m0);
        moments.add(&format!("{name} v"), v1, v0);
    }
    moments.report(tol);

    let mut params = Worst::new("parameters after");
    // The update itself (after − before): reported, its size shows the step is not trivial.
    let mut updates = Worst::new("updates (info)");
    let mut moved = 0usize;
    for (((name, want), (_, got)), (_, _, before)) in
        cpu.after.iter().zip(&cuda.after).zip(&cpu.eval.params)
    {
        if zero_in_exact_arithmetic(name) {
            // AdamW's first step moves each element by lr·g/(|g| + ε), at most lr, whatever the
            // noise's sign: the two backends may differ by 2·lr there, no more.
            let worst = got
                .iter()
                .zip(want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 2.0 * LR * 1.001,
                "{name} after the update: {worst}"
            );
            continue;
        }
        // AdamW's first step moves an element by lr·g/(|g| + ε) (ε = 1e-6, the recipe's
        // default): where |g| is within a hundred ε, that ratio amplifies the backends'
        // rounding noise in g (a gradient of 5.7e-7 differing by 4e-4 of itself moved its
        // element 1e-4 apart, relative to the tensor), and a gradient at noise level may even
        // change sign. Those elements are held to the bound that always holds, 2·lr; the rest
        // are compared.
        let (mut got, want) = (got.clone(), want.clone());
        if let Some((_, g)) = cpu.eval.grads.iter().find(|(n, _)| n == name) {
            for (i, gi) in g.iter().enumerate() {
                if gi.abs() <= 100.0 * ADAMW_EPS {
                    assert!(
                        (got[i] - want[i]).abs() <= 2.0 * LR * 1.001,
                        "{name}[{i}] after the update: {} vs {}",
                        got[i],
                        want[i]
                    );
                    got[i] = want[i];
                }
            }
        }
        params.add(name, &got, &want);
        let dw: Vec<f32> = want.iter().zip(before).map(|(a, b)| a - b).collect();
        let dg: Vec<f32> = got.iter().zip(before).map(|(a, b)| a - b).collect();
        if dw.iter().any(|&d| d != 0.0) {
            moved += 1;
            updates.add(name, &dg, &dw);
        }
    }
    let compared = cpu
        .eval
        .grads
        .iter()
        .filter(|(n, _)| !zero_in_exact_arithmetic(n))
        .count();
    assert!(moved >= compared, "only {moved} parameters moved");
    params.report(tol);
    updates.report(f64::INFINITY);
}

/// A step with an operation the CUDA kernels cannot run (a tensor of 2³¹ values: the kernels
/// index with int) fails when it is made ready, with the operation and the reason, before
/// anything is allocated or launched: never a panic in the middle of training.
#[test]
fn a_step_the_cuda_kernels_cannot_run_is_refused_before_it_runs() {
    use kdc::engine::compile::compile_graph;
    use kdc::engine::exec::Executable;
    use kdc::engine::graph::{Dtype, Graph, Op, Reduce, F32};
    use kdc::engine::lower::Output;

    let mut g = Graph::default();
    let huge = g.add(Op::Fill(F32(1.0)), vec![], vec![1 << 31]);
    let sum = g.reduce(Reduce::Sum, huge, None);
    let backend: SharedBackend = Arc::new(Mutex::new(Box::new(EmulatedBackend::new())));
    let compiled = {
        let b = kdc::engine::exec::lock(&backend);
        compile_graph(g, vec![(Output::Loss, sum)], usize::MAX, Dtype::F32, &**b)
    };
    let err = match Executable::new(compiled, backend) {
        Ok(_) => panic!("a step with 2³¹ values was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("cannot run this step") && err.contains("Fill") && err.contains("2³¹"),
        "{err}"
    );
}

/// A device that fails in the middle of a step (simulated: the emulated device faults at its
/// 40th kernel launch, as a GPU reports an illegal address asynchronously): the step returns
/// the device's error — not a panic, and not a "loss is not finite" error from the NaNs the
/// skipped work leaves — and the trainer has not counted the step.
#[test]
fn a_device_fault_in_the_middle_of_a_step_is_an_error_of_the_step() {
    let (recipe, base) = recipe("fp32");
    let shared: SharedBackend = Arc::new(Mutex::new(Box::new(EmulatedBackend::failing_after(39))));
    let options = Options {
        base,
        ..Default::default()
    };
    let mut trainer = Trainer::on(&recipe, 0, &options, shared).unwrap();
    let err = match trainer.train_step() {
        Ok(log) => panic!("a faulted step succeeded: {log:?}"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("device failed") && err.contains("simulated fault at kernel launch 40"),
        "{err}"
    );
    assert_eq!(trainer.steps_done(), 0);
}

/// Batches drawn ahead: the CUDA backend uploads micro-batch n + 1 while n runs, into a second
/// set of input buffers (the emulated backend lets an unfenced upload land only at the fence,
/// and panics when an operation touches it before). Two optimiser steps of two accumulated
/// micro-batches each — four batches through the two sets — give the CPU's losses (one set, no
/// overlap) step by step; a batch read from the wrong set, or a step reading its own batch
/// before the copy was fenced, would not.
#[test]
fn batches_drawn_ahead_reach_the_micro_batch_that_reads_them() {
    let (recipe, base) = recipe_with("fp32", " | accumulate(2)");
    let losses = |backend: Box<dyn Backend>| -> Vec<f64> {
        let shared: SharedBackend = Arc::new(Mutex::new(backend));
        let options = Options {
            base: base.clone(),
            ..Default::default()
        };
        let mut trainer = Trainer::on(&recipe, 0, &options, shared).unwrap();
        (0..2).map(|_| trainer.train_step().unwrap().loss).collect()
    };
    let cpu = losses(Box::new(kdc_cpu::CpuBackend::new()));
    let cuda = losses(cuda_backend());
    eprintln!("[cuda-emulated vs cpu] accumulated steps: {cuda:?} vs {cpu:?}");
    for (step, (got, want)) in cuda.iter().zip(&cpu).enumerate() {
        let e = scalar_err(*got, *want);
        assert!(e <= TOL, "step {}: {got} vs {want} ({e:.3e})", step + 1);
    }
    // Different batches: a step that read a stale set would repeat a loss.
    assert!(cpu.windows(2).all(|w| w[0] != w[1]), "{cpu:?}");
}
