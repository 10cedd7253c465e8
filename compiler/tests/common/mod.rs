//! Shared by the fixture tests (losses.rs, research.rs): one training step on fixed values.

use kdc::engine::compile;
use kdc::engine::device;
use kdc::engine::exec::{self, Executable};
use kdc::engine::graph::InputKind;
use kdc::engine::lower::{Output, Target};
use std::collections::HashMap;

/// The loss and gradients of one step of `recipe`'s first stage at batch `batch`, with the
/// taps named in `taps` given as parameters. Every parameter takes `value_of(name)` (by its
/// graph name; one the step reads must have a value), every term its weight at step 0. The
/// gradients come back for the parameters `fixture_of` names, under that name. `what` names
/// the case in failures.
pub fn fixed_step(
    recipe: &kdc::ir::Recipe,
    batch: usize,
    taps: Vec<String>,
    value_of: impl Fn(&str) -> Option<Vec<f32>>,
    fixture_of: impl Fn(&str) -> Option<String>,
    what: &str,
) -> (f32, HashMap<String, Vec<f32>>) {
    let options = compile::Options {
        batch: Some(batch),
        target: Target::Train,
        tap_params: taps,
        precision: None,
    };
    let backend = device::cpu();
    let compiled = compile::compile(recipe, 0, &options, &**exec::lock(&backend));
    let mut exec = Executable::new(compiled, backend).unwrap();
    let params = exec.compiled().graph.params.clone();
    for (i, p) in params.iter().enumerate() {
        let Some(values) = value_of(&p.name) else {
            assert!(
                !exec.uses_param(i),
                "{what}: parameter {} has no fixture value",
                p.name
            );
            continue;
        };
        assert_eq!(
            values.len(),
            p.shape.iter().product::<usize>(),
            "{what}: {}",
            p.name
        );
        exec.set_param(i, &values);
    }
    for term in &recipe.stages[0].terms {
        let kind = InputKind::Weight {
            term: term.label.clone(),
        };
        let index = exec.input_index(&kind).unwrap();
        exec.set_input(index, &[term.weight.at(0, kdc::ir::Clock::steps(1)) as f32]);
    }
    exec.execute();
    let grads = exec
        .compiled()
        .grads()
        .into_iter()
        .filter_map(|(p, _)| {
            let name = params[p].name.clone();
            let fixture = fixture_of(&name)?;
            Some((fixture, exec.output(&Output::Grad(name))))
        })
        .collect();
    (exec.output(&Output::Loss)[0], grads)
}
