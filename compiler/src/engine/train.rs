//! The training loop. `engine::compile` makes one executable step per stage; the trainer only
//! drives it: batches in, the schedule's values, the optimiser's update (run by the backend,
//! where parameters, gradients and AdamW's moments live), clipping, accumulation and logs.

use super::batches::{BatchError, Batches, Filled};
use super::compile::{self, Compiled};
use super::device;
use super::exec::{self, Executable, SharedBackend};
use super::graph::{numel, InputKind};
use super::lower::Output;
use super::rng::Rng;
use super::weights;
use crate::data::loader::Position;
use crate::ir::{self, Length, Recipe};
use crate::model::ParamClass;
use kdc_backend::backend::CLIP_GRAD_NORM_EPS;
use kdc_backend::{AdamW, BackendError, View};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Weights(#[from] weights::WeightsError),
    #[error("model `{model}`: {message}")]
    Model { model: String, message: String },
    #[error(
        "stage `{stage}` needs {gib:.1} GiB for the activations and gradients of one step \
         (batch {batch}), which this machine cannot allocate; lower the batch (`data = \
         …(batch: N)`) and use `accumulate(k)` to keep the effective batch"
    )]
    Memory {
        stage: String,
        batch: usize,
        gib: f64,
    },
    #[error(transparent)]
    Backend(BackendError),
    #[error(transparent)]
    Batches(#[from] BatchError),
    #[error(
        "stage `{stage}`, step {step}: {what} is {value}; training stopped before this step's \
         update (the parameters and the last checkpoint hold the step before)"
    )]
    NotFinite {
        stage: String,
        step: u64,
        /// `the term \`crd\``, `the loss`, `the gradient norm`.
        what: String,
        value: f64,
    },
    #[error("cannot write the log {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
}

/// What one optimiser step measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepLog {
    pub stage: String,
    pub step: u64,
    pub loss: f64,
    pub terms: Vec<(String, f64)>,
    pub lr: f64,
    pub grad_norm: f64,
    pub seconds: f64,
}

#[derive(Default)]
pub struct Options {
    /// Stop after this many steps (default: the recipe's length).
    pub steps: Option<u64>,
    /// Where relative paths in the recipe resolve.
    pub base: crate::manifest::Base,
    /// Where to append one JSON line per step.
    pub log: Option<PathBuf>,
    /// Initialise frozen models randomly when their weights file is absent (benchmarks only:
    /// the numbers of a frozen random teacher mean nothing).
    pub random_missing_weights: bool,
    /// Parameter values by name that replace the recipe's weights and initialisation (a
    /// stage's `from:`, or a checkpoint).
    pub initial: Option<HashMap<String, Vec<f32>>>,
    /// Where in its data the stage starts (default: the beginning).
    pub data_start: Option<Position>,
}

/// Everything one evaluation of a step saw and produced.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub loss: f64,
    pub terms: Vec<(String, f64)>,
    /// Every parameter: name (`student/vision_model…`, `loss/clip_kd.icl_scale`), shape, values.
    pub params: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// The gradient of the total loss for every trainable parameter the loss reaches.
    pub grads: Vec<(String, Vec<f32>)>,
    /// The batch: name (`pixels:student`, `ids:student`, `eot:student`), shape, values.
    pub inputs: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// Per trainable parameter with a gradient: where its state is on the backend.
struct Slot {
    param: usize,
    /// AdamW's first and second moments.
    m: View,
    v: View,
    /// The gradient summed over micro-batches (only with `accumulate(n)`, n > 1; otherwise
    /// the optimiser reads the gradient where the step left it).
    sum: Option<View>,
    /// The weight decay AdamW applies (0 for the `no_decay` classes).
    weight_decay: f64,
    /// The learning rate is the schedule's times this (its parameter group's `lr_scale`).
    lr_scale: f64,
    clamp: Option<(f32, f32)>,
}

/// A stage ready to train.
pub struct Trainer<'r> {
    recipe: &'r Recipe,
    stage_index: usize,
    exec: Executable,
    batches: Batches,
    slots: Vec<Slot>,
    /// EMA models: (followed parameter, EMA parameter, decay), updated after each step.
    ema: Vec<(usize, usize, f64)>,
    pub total_steps: u64,
    /// Optimiser steps in one pass over the data.
    pub steps_per_epoch: u64,
    done: u64,
    /// The micro-batch already in the other set of input buffers (drawn while the previous
    /// one ran), if any.
    staged: Option<Staged>,
    /// Why drawing the next micro-batch ahead failed: reported when that batch is needed.
    prefetch_error: Option<TrainError>,
}

/// A micro-batch drawn ahead.
struct Staged {
    /// Its index, counted over the stage.
    step: u64,
    /// Where the data stood before it was drawn: what a checkpoint records, so that a resumed
    /// run draws it again.
    before: Option<Position>,
}

/// The optimiser's buffers go back to the backend with the trainer (the executable frees its
/// own), so that a backend shared by a run's stages and evaluations does not keep them.
impl Drop for Trainer<'_> {
    fn drop(&mut self) {
        let mut b = exec::lock(self.exec.backend());
        for slot in &self.slots {
            b.free(slot.m.buffer);
            b.free(slot.v.buffer);
            if let Some(sum) = slot.sum {
                b.free(sum.buffer);
            }
        }
    }
}

impl<'r> Trainer<'r> {
    /// Compiles stage `stage_index` for the CPU and loads or initialises its parameters.
    pub fn new(
        recipe: &'r Recipe,
        stage_index: usize,
        options: &Options,
    ) -> Result<Trainer<'r>, TrainError> {
        Trainer::on(recipe, stage_index, options, device::cpu())
    }

    /// The same on a given backend.
    pub fn on(
        recipe: &'r Recipe,
        stage_index: usize,
        options: &Options,
        backend: SharedBackend,
    ) -> Result<Trainer<'r>, TrainError> {
        let stage = &recipe.stages[stage_index];
        let compiled = {
            let b = exec::lock(&backend);
            compile::compile(recipe, stage_index, &compile::Options::train(), &**b)
        };
        let values = initial_values(recipe, stage_index, &compiled, options)?;
        let memory = |e: BackendError| match e {
            BackendError::OutOfMemory { bytes, .. } => TrainError::Memory {
                stage: stage.name.clone(),
                batch: compiled_batch(recipe, stage_index),
                gib: bytes as f64 / (1u64 << 30) as f64,
            },
            other => TrainError::Backend(other),
        };
        let grads = compiled.grads();
        let mut exec = Executable::staged(compiled, backend.clone()).map_err(memory)?;
        let mut init = values.into_iter();
        for p in 0..exec.compiled().graph.params.len() {
            let (values, _, _) = init.next().expect("one value per parameter");
            exec.set_param(p, &values);
        }
        let groups = optimiser_groups(recipe, stage_index, exec.compiled());
        let accumulate = stage.train.accumulate.max(1);
        let mut slots = Vec::new();
        {
            let mut b = exec::lock(&backend);
            for (param, _) in grads {
                let len = exec.param_view(param).len;
                let m = View::whole(b.alloc(len).map_err(memory)?, len);
                let v = View::whole(b.alloc(len).map_err(memory)?, len);
                let sum = if accumulate > 1 {
                    Some(View::whole(b.alloc(len).map_err(memory)?, len))
                } else {
                    None
                };
                slots.push(Slot {
                    param,
                    m,
                    v,
                    sum,
                    weight_decay: groups[param].weight_decay,
                    lr_scale: groups[param].lr_scale,
                    clamp: groups[param].clamp,
                });
            }
        }
        let batches = Batches::open(
            recipe,
            stage_index,
            &exec.compiled().graph.inputs,
            &options.base,
            options.data_start.unwrap_or(Position {
                epoch: 0,
                cursor: 0,
            }),
            true,
        )?;
        let per_epoch =
            batches.steps_per_epoch(recipe, stage_index) / stage.train.accumulate.max(1);
        let total_steps = match stage.train.length {
            Length::Steps(n) => n,
            Length::Epochs(e) => e * per_epoch.max(1),
        };
        let ema = ema_pairs(recipe, exec.compiled());
        for (model_id, by_name) in &exec.compiled().model_params {
            let Some(spec) = &recipe.models[*model_id].ema else {
                continue;
            };
            let follows = &recipe.models[spec.source].name;
            let in_graph = exec
                .compiled()
                .model_params
                .iter()
                .any(|(m, _)| *m == spec.source);
            let given = options.initial.as_ref().is_some_and(|v| {
                by_name
                    .keys()
                    .all(|n| v.contains_key(&format!("{}/{n}", recipe.models[*model_id].name)))
            });
            if !in_graph && !given {
                return Err(TrainError::Model {
                    model: recipe.models[*model_id].name.clone(),
                    message: format!(
                        "an average of `{follows}`, which this stage's loss does not read, so \
                         there is nothing to average; read `{follows}` in the loss, or start the \
                         stage `from:` one that did"
                    ),
                });
            }
        }
        Ok(Trainer {
            recipe,
            stage_index,
            exec,
            batches,
            slots,
            ema,
            total_steps,
            steps_per_epoch: per_epoch.max(1),
            done: 0,
            staged: None,
            prefetch_error: None,
        })
    }

    /// The stage's length and epoch, where schedules are read.
    pub fn clock(&self) -> ir::Clock {
        ir::Clock {
            total: self.total_steps,
            per_epoch: self.steps_per_epoch,
        }
    }

    /// Every parameter's current values, by name.
    pub fn parameters(&self) -> Vec<(String, Vec<f32>)> {
        let g = &self.exec.compiled().graph;
        g.params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), self.exec.param(i)))
            .collect()
    }

    /// AdamW's moments (m, v) of every parameter the optimiser updates, by name.
    pub fn moments(&self) -> Vec<(String, Vec<f32>, Vec<f32>)> {
        let g = &self.exec.compiled().graph;
        let mut b = exec::lock(self.exec.backend());
        self.slots
            .iter()
            .map(|s| {
                let (mut m, mut v) = (vec![0.0; s.m.len], vec![0.0; s.v.len]);
                b.download(s.m, &mut m);
                b.download(s.v, &mut v);
                (g.params[s.param].name.clone(), m, v)
            })
            .collect()
    }

    /// Continues from a checkpoint: `steps` optimiser steps already taken, with these moments
    /// (every parameter the optimiser updates must have them).
    pub fn restore(
        &mut self,
        steps: u64,
        moments: &HashMap<String, (Vec<f32>, Vec<f32>)>,
    ) -> Result<(), String> {
        let names: Vec<String> = {
            let g = &self.exec.compiled().graph;
            self.slots
                .iter()
                .map(|s| g.params[s.param].name.clone())
                .collect()
        };
        let mut b = exec::lock(self.exec.backend());
        for (slot, name) in self.slots.iter().zip(&names) {
            let (m, v) = moments
                .get(name)
                .ok_or_else(|| format!("the checkpoint has no optimiser state for {name}"))?;
            if m.len() != slot.m.len || v.len() != slot.v.len {
                return Err(format!(
                    "the checkpoint's optimiser state for {name} has another size"
                ));
            }
            b.upload(slot.m, m);
            b.upload(slot.v, v);
        }
        drop(b);
        self.done = steps;
        Ok(())
    }

    /// Where the next batch starts in the stage's data (None for synthetic data); a batch
    /// drawn ahead for the next step does not count as read.
    pub fn data_position(&self) -> Option<Position> {
        match &self.staged {
            Some(staged) => staged.before,
            None => self.batches.position(),
        }
    }

    /// Samples read and skipped so far.
    pub fn data_stats(&self) -> Option<&crate::data::loader::Stats> {
        self.batches.stats()
    }

    /// Optimiser steps taken.
    pub fn steps_done(&self) -> u64 {
        self.done
    }

    /// The executable step (its compiled graph, plan and profile).
    pub fn executable(&mut self) -> &mut Executable {
        &mut self.exec
    }

    pub fn graph(&self) -> &super::graph::Graph {
        &self.exec.compiled().graph
    }

    /// Makes micro-batch `batch_step` (at optimiser step `t`) the one the next run reads:
    /// the one drawn ahead when it is that batch, otherwise drawn now. Returns the batch's
    /// values when it was drawn now.
    fn prepare(&mut self, batch_step: u64, t: u64) -> Result<Option<Filled>, TrainError> {
        if let Some(e) = self.prefetch_error.take() {
            return Err(e);
        }
        let filled = match &self.staged {
            Some(staged) if staged.step == batch_step => None,
            _ => Some(self.stage(batch_step, t)?),
        };
        self.staged = None;
        self.exec.swap_inputs();
        Ok(filled)
    }

    /// Draws micro-batch `batch_step` ahead, while the step issued last may still run, when it
    /// belongs to this stage: its copy to the device overlaps that step. A failure waits for
    /// [`Trainer::prepare`] of that batch.
    fn prefetch(&mut self, batch_step: u64, t: u64) {
        if t >= self.total_steps {
            return;
        }
        if let Err(e) = self.stage(batch_step, t) {
            self.staged = None;
            self.prefetch_error = Some(e);
        }
    }

    /// Fills the set of input buffers the next run reads after [`Executable::swap_inputs`]
    /// with every input of one micro-batch: the batch drawn for `batch_step`, and each loss
    /// weight and scheduled scalar at optimiser step `t`. Shared by training and evaluation.
    fn stage(&mut self, batch_step: u64, t: u64) -> Result<Filled, TrainError> {
        let before = self.batches.position();
        let compiled = self.exec.compiled();
        let batch = self.batches.next(
            self.recipe,
            &compiled.graph.inputs,
            compiled.batch,
            batch_step,
        )?;
        for (index, values) in &batch {
            self.exec.stage_input(*index, values);
        }
        let stage = &self.recipe.stages[self.stage_index];
        let clock = self.clock();
        let scalars: Vec<(usize, f32)> = self
            .exec
            .compiled()
            .graph
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(index, input)| {
                let value = match &input.kind {
                    InputKind::Weight { term } => {
                        let weight = &stage.terms.iter().find(|x| &x.label == term)?.weight;
                        weight.at(t, clock)
                    }
                    InputKind::Schedule { node } => match &stage.graph.nodes[*node].op {
                        ir::Op::Scheduled(s) => s.at(t, clock),
                        other => unreachable!("schedule input on {other:?}"),
                    },
                    _ => return None,
                };
                Some((index, value as f32))
            })
            .collect();
        for (index, value) in scalars {
            self.exec.stage_input(index, &[value]);
        }
        self.staged = Some(Staged {
            step: batch_step,
            before,
        });
        Ok(batch)
    }

    /// The loss, each term and every gradient at `step` (one micro-batch), without updating
    /// anything: for tests against other implementations.
    pub fn evaluate(&mut self, step: u64) -> Result<Evaluation, TrainError> {
        // Drawn now (a batch drawn ahead for training is drawn again), so that its values can
        // be returned.
        self.staged = None;
        let inputs = self
            .prepare(step, step)?
            .expect("a batch drawn now has its values");
        self.exec.execute();
        self.device_error()?;
        let compiled = self.exec.compiled();
        let g = &compiled.graph;
        Ok(Evaluation {
            loss: self.exec.scalar(&Output::Loss),
            terms: compiled
                .terms
                .iter()
                .map(|(label, _)| {
                    (
                        label.clone(),
                        self.exec.scalar(&Output::Term(label.clone())),
                    )
                })
                .collect(),
            params: g
                .params
                .iter()
                .enumerate()
                .map(|(i, p)| (p.name.clone(), p.shape.clone(), self.exec.param(i)))
                .collect(),
            grads: compiled
                .grads()
                .into_iter()
                .map(|(p, _)| {
                    let name = g.params[p].name.clone();
                    let values = self.exec.output(&Output::Grad(name.clone()));
                    (name, values)
                })
                .collect(),
            inputs: inputs
                .into_iter()
                .map(|(index, v)| {
                    let input = &g.inputs[index];
                    (input.kind.to_string(), input.shape.clone(), v)
                })
                .collect(),
        })
    }

    /// A failure the device reported while running the work issued so far.
    fn device_error(&self) -> Result<(), TrainError> {
        match exec::lock(self.exec.backend()).take_error() {
            Some(e) => Err(TrainError::Backend(e)),
            None => Ok(()),
        }
    }

    /// One optimiser step. Returns what it measured.
    pub fn train_step(&mut self) -> Result<StepLog, TrainError> {
        let started = Instant::now();
        let stage = &self.recipe.stages[self.stage_index];
        let t = self.done;
        let accumulate = stage.train.accumulate.max(1);
        let labels: Vec<String> = self
            .exec
            .compiled()
            .terms
            .iter()
            .map(|t| t.0.clone())
            .collect();
        let grad_views: Vec<View> = self
            .slots
            .iter()
            .map(|s| {
                let name = self.exec.compiled().graph.params[s.param].name.clone();
                self.exec
                    .output_view(&Output::Grad(name))
                    .expect("every slot has a gradient output")
            })
            .collect();
        let mut loss = 0.0;
        let mut terms = vec![0.0; labels.len()];
        for micro in 0..accumulate {
            let index = t * accumulate + micro;
            self.prepare(index, t)?;
            self.exec.execute();
            // The next micro-batch is drawn and sent while this one runs.
            let next_t = if micro + 1 == accumulate { t + 1 } else { t };
            self.prefetch(index + 1, next_t);
            self.device_error()?;
            loss += self.exec.scalar(&Output::Loss) / accumulate as f64;
            for (term, label) in terms.iter_mut().zip(&labels) {
                *term += self.exec.scalar(&Output::Term(label.clone())) / accumulate as f64;
            }
            // With accumulation, gradients leave the arena (the next micro-batch reuses it)
            // into sums that stay on the backend.
            let mut b = exec::lock(self.exec.backend());
            for (slot, &grad) in self.slots.iter().zip(&grad_views) {
                if let Some(sum) = slot.sum {
                    if micro == 0 {
                        b.copy(sum, grad);
                    } else {
                        b.add_into(sum, grad);
                    }
                }
            }
        }
        let not_finite = |what: String, value: f64| TrainError::NotFinite {
            stage: stage.name.clone(),
            step: t + 1,
            what,
            value,
        };
        if let Some((label, value)) = labels.iter().zip(&terms).find(|(_, v)| !v.is_finite()) {
            return Err(not_finite(format!("the term `{label}`"), *value));
        }
        if !loss.is_finite() {
            return Err(not_finite("the weighted loss".into(), loss));
        }
        let mut b = exec::lock(self.exec.backend());
        let grads: Vec<View> = self
            .slots
            .iter()
            .zip(&grad_views)
            .map(|(slot, &g)| slot.sum.unwrap_or(g))
            .collect();
        if accumulate > 1 {
            for &g in &grads {
                b.scale(g, 1.0 / accumulate as f32);
            }
        }
        let grad_norm = b.l2_norm(&grads);
        if !grad_norm.is_finite() {
            return Err(not_finite(
                "the gradient norm (every term is finite; a gradient is not)".into(),
                grad_norm,
            ));
        }
        if let Some(max) = stage.train.clip_grad {
            // PyTorch's clip_grad_norm_: scale by max / (norm + 1e-6) when that is below 1
            // (or NaN, which it keeps).
            let coef = max / (grad_norm + CLIP_GRAD_NORM_EPS);
            if coef.is_nan() || coef < 1.0 {
                for &g in &grads {
                    b.scale(g, coef as f32);
                }
            }
        }
        let o = &stage.train.optimizer;
        let lr = o.lr.at(t, self.clock());
        for (slot, &grad) in self.slots.iter().zip(&grads) {
            let param = self.exec.param_view(slot.param);
            let hyper = AdamW {
                lr: lr * slot.lr_scale,
                beta1: o.betas.0,
                beta2: o.betas.1,
                eps: o.eps,
                weight_decay: slot.weight_decay,
                step: t + 1,
            };
            b.adamw(param, grad, slot.m, slot.v, &hyper);
            if let Some((lo, hi)) = slot.clamp {
                b.clamp(param, lo, hi);
            }
        }
        // EMA models follow their model: p ← decay·p + (1 − decay)·q.
        for &(source, ema, decay) in &self.ema {
            let (q, p) = (self.exec.param_view(source), self.exec.param_view(ema));
            b.lerp(p, q, (1.0 - decay) as f32);
        }
        b.synchronize();
        if let Some(e) = b.take_error() {
            return Err(TrainError::Backend(e));
        }
        drop(b);
        self.done += 1;
        Ok(StepLog {
            stage: stage.name.clone(),
            step: t + 1,
            loss,
            terms: labels.into_iter().zip(terms).collect(),
            lr,
            grad_norm,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Trains for the given number of steps (default: the stage's length), logging each step.
    pub fn train(
        &mut self,
        steps: Option<u64>,
        log: Option<&Path>,
        mut each: impl FnMut(&StepLog),
    ) -> Result<Vec<StepLog>, TrainError> {
        let steps = steps.unwrap_or(self.total_steps);
        let mut file = match log {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| TrainError::Log {
                        path: path.display().to_string(),
                        source,
                    })?,
            ),
            None => None,
        };
        let mut logs = Vec::new();
        for _ in 0..steps {
            let entry = self.train_step()?;
            if let Some(f) = &mut file {
                let line = serde_json::json!({
                    "stage": entry.stage, "step": entry.step, "loss": entry.loss,
                    "terms": entry.terms.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<String, serde_json::Value>>(),
                    "lr": entry.lr, "grad_norm": entry.grad_norm, "step_seconds": entry.seconds,
                });
                writeln!(f, "{line}").map_err(|source| TrainError::Log {
                    path: log.unwrap().display().to_string(),
                    source,
                })?;
            }
            each(&entry);
            logs.push(entry);
        }
        Ok(logs)
    }
}

fn compiled_batch(recipe: &Recipe, stage_index: usize) -> usize {
    recipe.stages[stage_index].data.batch as usize
}

/// Every parameter's initial values (name, shape, values), in the graph's order: model weights
/// from their checkpoints (or initialised from the seed), the loss's parts from their `init`.
fn initial_values(
    recipe: &Recipe,
    stage_index: usize,
    compiled: &Compiled,
    options: &Options,
) -> Result<Vec<(Vec<f32>, String, Vec<usize>)>, TrainError> {
    let stage = &recipe.stages[stage_index];
    let g = &compiled.graph;
    let mut values: Vec<Option<Vec<f32>>> = vec![None; g.params.len()];
    for (model_id, by_name) in &compiled.model_params {
        let spec = &recipe.models[*model_id];
        let has_weights = spec.weights.is_some() || spec.text.weights.is_some();
        let skip = options.random_missing_weights
            && [&spec.weights, &spec.text.weights]
                .into_iter()
                .flatten()
                .any(|w| !options.base.join(w).exists());
        // The checkpoints' values, and the seeded initialisation for what they do not cover.
        let loaded = if has_weights && !skip {
            weights::model_values(spec, &options.base)?
        } else {
            HashMap::new()
        };
        let initial: HashMap<String, Vec<f32>> =
            weights::init(spec, stage.train.seed).into_iter().collect();
        for (name, &index) in by_name {
            let value = loaded.get(name).unwrap_or(&initial[name]).clone();
            let shape = &g.params[index].shape;
            if value.len() != numel(shape) {
                return Err(weights::WeightsError::Shape {
                    path: spec.weights.clone().unwrap_or_default(),
                    name: name.clone(),
                    found: vec![value.len()],
                    expected: shape.clone(),
                }
                .into());
            }
            values[index] = Some(value);
        }
    }
    for &(spec_index, index) in &compiled.loss_params {
        let p = &stage.params[spec_index];
        let n = numel(&g.params[index].shape);
        let mut rng = Rng::derive(stage.train.seed, &p.name);
        values[index] = Some(match p.init {
            ir::Init::Constant(c) => vec![c as f32; n],
            ir::Init::Uniform { bound } => (0..n)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                .collect(),
            ir::Init::Normal { std } => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
        });
    }
    // An EMA model starts from the values of the model it follows.
    for (source, ema, _) in ema_pairs(recipe, compiled) {
        values[ema] = values[source].clone();
    }
    if let Some(initial) = &options.initial {
        for (i, p) in g.params.iter().enumerate() {
            if let Some(v) = initial.get(&p.name) {
                if v.len() == numel(&p.shape) {
                    values[i] = Some(v.clone());
                }
            }
        }
    }
    Ok(values
        .into_iter()
        .zip(&g.params)
        .map(|(v, p)| {
            let v = v.unwrap_or_else(|| {
                // A parameter the step lowered for testing (a tap given as a parameter).
                vec![0.0; numel(&p.shape)]
            });
            (v, p.name.clone(), p.shape.clone())
        })
        .collect())
}

/// (followed parameter, EMA parameter, decay) for every parameter of every EMA model in the
/// graph whose followed model is in the graph too.
fn ema_pairs(recipe: &Recipe, compiled: &Compiled) -> Vec<(usize, usize, f64)> {
    let mut out = Vec::new();
    for (model_id, by_name) in &compiled.model_params {
        let Some(ema) = &recipe.models[*model_id].ema else {
            continue;
        };
        let Some((_, source)) = compiled.model_params.iter().find(|(m, _)| *m == ema.source) else {
            continue;
        };
        for (name, &index) in by_name {
            if let Some(&s) = source.get(name) {
                out.push((s, index, ema.decay));
            }
        }
    }
    out.sort_by_key(|p| p.1);
    out
}

/// One parameter's optimiser settings.
#[derive(Clone, Copy, Debug)]
struct ParamSettings {
    weight_decay: f64,
    lr_scale: f64,
    /// The range it is clamped to after each step.
    clamp: Option<(f32, f32)>,
}

/// Per parameter of the graph: its weight decay (0 for the `no_decay` classes; a group's own
/// for the rest of a group), its learning-rate scale (the first group naming it), its clamp.
fn optimiser_groups(
    recipe: &Recipe,
    stage_index: usize,
    compiled: &Compiled,
) -> Vec<ParamSettings> {
    let stage = &recipe.stages[stage_index];
    let o = &stage.train.optimizer;
    let graph_params = &compiled.graph.params;
    let mut out = vec![
        ParamSettings {
            weight_decay: 0.0,
            lr_scale: 1.0,
            clamp: None
        };
        graph_params.len()
    ];
    let settings = |index: usize, class: ParamClass| {
        let name = &graph_params[index].name;
        let group = o.groups.iter().find(|g| g.names.iter().any(|n| n == name));
        let decays = !o.no_decay.contains(&class);
        ParamSettings {
            weight_decay: match (decays, group.and_then(|g| g.weight_decay)) {
                (false, _) => 0.0,
                (true, Some(wd)) => wd,
                (true, None) => o.weight_decay,
            },
            lr_scale: group.map_or(1.0, |g| g.lr_scale),
            clamp: None,
        }
    };
    for (model_id, by_name) in &compiled.model_params {
        let spec = &recipe.models[*model_id];
        let classes: HashMap<String, ParamClass> = spec
            .parameters()
            .into_iter()
            .map(|p| (p.name, p.class))
            .collect();
        for (name, &index) in by_name {
            out[index] = settings(index, classes[name]);
            if name == "logit_scale" {
                out[index].clamp = Some((
                    spec.logit_scale.min.ln() as f32,
                    spec.logit_scale.max.ln() as f32,
                ));
            }
        }
    }
    for &(spec_index, index) in &compiled.loss_params {
        let p = &stage.params[spec_index];
        out[index] = settings(index, p.class);
        out[index].clamp = p.clamp.map(|(lo, hi)| (lo as f32, hi as f32));
    }
    out
}
