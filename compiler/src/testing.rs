//! `kdc test`: runs the `test` blocks of a recipe or library. Each block's expectations are
//! computed by the engine (the same lowering, kernels and executor as training, forward only)
//! and compared entry by entry: |actual − expected| ≤ tol·(1 + |expected|).

use crate::check::tests::TestCase;
use crate::engine::lower::{Output, Target};
use crate::engine::{compile, device, exec};
use crate::ir;

/// How one test went.
pub struct Outcome {
    pub name: String,
    /// `None` when every expectation holds; else what failed, one line per expectation.
    pub failure: Option<String>,
}

/// The outcome of every checked `test` block (`Compiled::tests`).
pub fn run(cases: &[TestCase]) -> Vec<Outcome> {
    cases.iter().map(run_case).collect()
}

fn run_case(case: &TestCase) -> Outcome {
    let fail = |why: String| Outcome {
        name: case.name.clone(),
        failure: Some(why),
    };
    if let Some(what) = &case.unsupported {
        return fail(format!(
            "a test runs on literal tensors, but this one reads {what}"
        ));
    }
    let recipe = ir::Recipe {
        models: Vec::new(),
        stages: vec![stage(case.graph.clone())],
        eval: Vec::new(),
    };
    let nodes: Vec<ir::NodeId> = case
        .checks
        .iter()
        .flat_map(|c| [c.actual, c.expected])
        .collect();
    let options = compile::Options {
        batch: Some(1),
        target: Target::Values(nodes),
        tap_params: Vec::new(),
        precision: None,
    };
    let backend = device::cpu();
    let compiled = compile::compile(&recipe, 0, &options, &**exec::lock(&backend));
    let mut run = match exec::Executable::new(compiled, backend) {
        Ok(e) => e,
        Err(e) => return fail(e.to_string()),
    };
    run.execute();
    let mut problems = Vec::new();
    for (i, c) in case.checks.iter().enumerate() {
        let actual = run.output(&Output::Tensor(format!("%{}", c.actual)));
        let expected = run.output(&Output::Tensor(format!("%{}", c.expected)));
        let shape = &case.graph.nodes[c.actual].shape;
        for (j, &a) in actual.iter().enumerate() {
            let e = expected[if expected.len() == 1 { 0 } else { j }];
            let ok = (a as f64 - e as f64).abs() <= c.tol * (1.0 + (e as f64).abs());
            if !ok || a.is_nan() {
                problems.push(format!(
                    "expectation {} ({shape}): entry {} is {a}, expected {e} (tolerance {})",
                    i + 1,
                    index(j, shape),
                    crate::fmt_num(c.tol)
                ));
                break;
            }
        }
    }
    Outcome {
        name: case.name.clone(),
        failure: (!problems.is_empty()).then(|| problems.join("\n")),
    }
}

/// `[i, j, …]` of flat position `j` in a shape of known sizes.
fn index(mut flat: usize, shape: &crate::shape::Shape) -> String {
    let sizes: Vec<usize> = shape
        .0
        .iter()
        .map(|d| d.size.unwrap_or(1) as usize)
        .collect();
    let mut idx = vec![0; sizes.len()];
    for (k, &s) in sizes.iter().enumerate().rev() {
        idx[k] = flat % s.max(1);
        flat /= s.max(1);
    }
    format!(
        "[{}]",
        idx.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A stage that holds only a test's graph.
fn stage(graph: ir::Graph) -> ir::Stage {
    ir::Stage {
        name: "test".into(),
        from: None,
        data: ir::DataSpec {
            source: ir::DataSource::Synthetic { samples: 1 },
            batch: 1,
            shuffle: false,
            seed: 0,
        },
        train: ir::TrainSpec {
            optimizer: ir::AdamW {
                lr: ir::Schedule::Constant(0.0),
                weight_decay: 0.0,
                betas: (0.9, 0.999),
                eps: 1e-8,
                no_decay: Vec::new(),
                groups: Vec::new(),
            },
            length: ir::Length::Steps(1),
            clip_grad: None,
            accumulate: 1,
            precision: ir::Precision::Fp32,
            seed: 0,
            checkpoint_every: None,
        },
        graph,
        terms: Vec::new(),
        params: Vec::new(),
        frozen: Vec::new(),
        trainable: Vec::new(),
        frozen_patterns: Vec::new(),
        frozen_names: Vec::new(),
    }
}
