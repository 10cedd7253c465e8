//! The one compile stage of the engine: a checked stage → a graph ready to run. It lowers the
//! stage (towers, loss terms and the backward pass, or a forward pass alone), runs the graph
//! passes and plans the memory, for the backend that will run it. Nothing else in kdc lowers,
//! optimises or plans.

use super::graph::{Dtype, Graph, Id};
use super::lower::{self, Output, Target};
use super::passes::{self, PassReport};
use super::plan::{self, MemoryPlan};
use crate::ir::{self, Recipe, Schedule};
use kdc_backend::Backend;
use std::collections::HashMap;

/// What to compile.
#[derive(Clone, Debug)]
pub struct Options {
    /// The batch size (default: the stage's).
    pub batch: Option<usize>,
    pub target: Target,
    /// Taps given as parameters `tap:<model>.<tap>` instead of computed by the towers (tests of
    /// the loss library on fixed features).
    pub tap_params: Vec<String>,
    /// The arithmetic: `None` follows the stage's `precision(…)` for a training step and is
    /// f32 for a forward pass (evaluations run in f32).
    pub precision: Option<Dtype>,
}

impl Options {
    /// A training step at the stage's batch size.
    pub fn train() -> Options {
        Options {
            batch: None,
            target: Target::Train,
            tap_params: Vec::new(),
            precision: None,
        }
    }

    /// The forward pass of some taps only.
    pub fn forward(taps: Vec<(ir::ModelId, ir::Tap)>, batch: usize) -> Options {
        Options {
            batch: Some(batch),
            target: Target::Forward(taps),
            tap_params: Vec::new(),
            precision: None,
        }
    }
}

/// The graph as lowered, before the passes: what `kdc explain --stage graph` reports of it.
#[derive(Clone, Debug)]
pub struct Built {
    pub nodes: usize,
    /// Operations of the forward pass and of the backward pass that the outputs need.
    pub forward: usize,
    pub backward: usize,
}

/// A compiled step: the optimised graph, its memory plan and its named outputs.
pub struct Compiled {
    /// The graph after the passes (parameters and inputs as lowered).
    pub graph: Graph,
    pub built: Built,
    pub reports: Vec<PassReport>,
    pub plan: MemoryPlan,
    /// Every value the caller reads, by name.
    pub outputs: Vec<(Output, Id)>,
    /// Each loss term's label and weight schedule, in order (none for a forward graph).
    pub terms: Vec<(String, Schedule)>,
    /// Per model: its parameters' names and indices into `graph.params`.
    pub model_params: Vec<(ir::ModelId, HashMap<String, usize>)>,
    /// The loss's own parameters: (index in the stage's `params`, index in `graph.params`).
    pub loss_params: Vec<(usize, usize)>,
    pub batch: usize,
    pub target: Target,
    /// The arithmetic it runs in (bf16: the autocast pass typed it).
    pub precision: Dtype,
    /// The backend it was planned for.
    pub backend: &'static str,
}

impl Compiled {
    /// The node of a named output.
    pub fn output(&self, name: &Output) -> Option<Id> {
        self.outputs
            .iter()
            .find(|(o, _)| o == name)
            .map(|&(_, id)| id)
    }

    /// Every gradient: (parameter index, the gradient's node), in the order of the outputs.
    pub fn grads(&self) -> Vec<(usize, Id)> {
        self.outputs
            .iter()
            .filter_map(|(o, id)| match o {
                Output::Grad(name) => {
                    let p = self.graph.params.iter().position(|p| &p.name == name)?;
                    Some((p, *id))
                }
                _ => None,
            })
            .collect()
    }
}

/// Compiles stage `stage_index` of `recipe` for `backend`.
pub fn compile(
    recipe: &Recipe,
    stage_index: usize,
    options: &Options,
    backend: &dyn Backend,
) -> Compiled {
    let batch = options
        .batch
        .unwrap_or(recipe.stages[stage_index].data.batch as usize);
    let lowered = lower::lower(
        recipe,
        stage_index,
        batch,
        &options.target,
        &options.tap_params,
    );
    let precision = options.precision.unwrap_or(match options.target {
        Target::Train => autocast_dtype(recipe.stages[stage_index].train.precision),
        Target::Forward(_) | Target::Values(_) => Dtype::F32,
    });
    let mut compiled = compile_graph(
        lowered.graph,
        lowered.outputs,
        lowered.forward_len,
        precision,
        backend,
    );
    compiled.terms = lowered.terms;
    compiled.model_params = lowered.model_params;
    compiled.loss_params = lowered.loss_params;
    compiled.batch = batch;
    compiled.target = options.target.clone();
    compiled
}

/// The type autocast computes in under a recipe's `precision(…)`: bf16 for `bf16`; f32 for
/// `fp32`, and for `fp16`, which is not built (the run says so).
pub fn autocast_dtype(precision: ir::Precision) -> Dtype {
    match precision {
        ir::Precision::Bf16 => Dtype::Bf16,
        ir::Precision::Fp32 | ir::Precision::Fp16 => Dtype::F32,
    }
}

/// Optimises and plans a graph built by hand (tests, tools) for the given named outputs;
/// nodes before `forward_len` count as its forward pass; `precision` bf16 runs the autocast
/// pass.
pub fn compile_graph(
    mut graph: Graph,
    outputs: Vec<(Output, Id)>,
    forward_len: usize,
    precision: Dtype,
    backend: &dyn Backend,
) -> Compiled {
    let output_ids: Vec<Id> = outputs.iter().map(|o| o.1).collect();
    let live = graph.live(&output_ids);
    let built = Built {
        nodes: graph.nodes.len(),
        forward: (0..forward_len.min(graph.nodes.len()))
            .filter(|&i| live[i])
            .count(),
        backward: (forward_len.min(graph.nodes.len())..graph.nodes.len())
            .filter(|&i| live[i])
            .count(),
    };
    let reports = passes::optimize(&mut graph, &output_ids, precision);
    let plan = plan::plan(&graph, &output_ids, |i| {
        backend.scratch_len(
            &graph.nodes[i].op,
            &graph.input_shapes(i),
            &graph.nodes[i].shape,
            graph.nodes[i].dtype,
        )
    });
    #[cfg(debug_assertions)]
    if plan.order.len() <= 4000 {
        if let Err(conflict) = plan.check(&graph, &output_ids) {
            panic!("kdc memory plan: {conflict}");
        }
    }
    Compiled {
        graph,
        built,
        reports,
        plan,
        outputs,
        terms: Vec::new(),
        model_params: Vec::new(),
        loss_params: Vec::new(),
        batch: 0,
        target: Target::Forward(Vec::new()),
        precision,
        backend: backend.name(),
    }
}
