//! The training loop: one lowered, executable step per stage; parameters, AdamW state and
//! batches live here, outside the graph.

use super::exec::Executable;
use super::graph::Op;
use super::lower::{self, Step};
use super::rng::Rng;
use super::weights;
use crate::ir::{self, DataSource, Length, Recipe};
use crate::model::{ParamClass, TextKind};
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

pub struct Options {
    /// Stop after this many steps (default: the recipe's length).
    pub steps: Option<u64>,
    /// Where relative paths in the recipe resolve.
    pub base: PathBuf,
    /// Where to append one JSON line per step.
    pub log: Option<PathBuf>,
    /// Initialise frozen models randomly when their weights file is absent (benchmarks only:
    /// the numbers of a frozen random teacher mean nothing).
    pub random_missing_weights: bool,
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

/// A stage ready to train.
pub struct Trainer<'r> {
    recipe: &'r Recipe,
    stage_index: usize,
    step: Step,
    exec: Executable,
    /// Values of every graph parameter (None while moved into the executable).
    values: Vec<Option<Vec<f32>>>,
    adam: Vec<Option<(Vec<f32>, Vec<f32>)>>,
    decay: Vec<bool>,
    clamp: Vec<Option<(f32, f32)>>,
    pub total_steps: u64,
    done: u64,
    rng_seed: u64,
    /// Per parameter: its gradient for the current step (kept allocated between steps).
    grad_sums: Vec<Option<Vec<f32>>>,
}

impl<'r> Trainer<'r> {
    pub fn new(
        recipe: &'r Recipe,
        stage_index: usize,
        options: &Options,
    ) -> Result<Trainer<'r>, TrainError> {
        let stage = &recipe.stages[stage_index];
        let batch = stage.data.batch as usize;
        let step = lower::lower(recipe, stage_index, batch);
        let mut outputs = vec![step.loss];
        outputs.extend(step.terms.iter().map(|t| t.2));
        outputs.extend(step.grads.iter().map(|g| g.1));
        let mut exec = Executable::new(&step.graph, &outputs);
        let g = &step.graph;
        let n_params = g.params.len();
        let mut values: Vec<Option<Vec<f32>>> = vec![None; g.params.len()];
        let mut decay = vec![false; g.params.len()];
        let mut clamp = vec![None; g.params.len()];
        let no_decay = &stage.train.optimizer.no_decay;
        for (model_id, by_name) in &step.model_params {
            let spec = &recipe.models[*model_id];
            let classes: HashMap<String, ParamClass> = spec
                .parameters()
                .into_iter()
                .map(|p| (p.name, p.class))
                .collect();
            let loaded = match &spec.weights {
                Some(w) if options.random_missing_weights && !options.base.join(w).exists() => None,
                Some(w) => Some(weights::read_safetensors(&options.base.join(w))?),
                None => None,
            };
            let initial: HashMap<String, Vec<f32>> =
                weights::init(spec, stage.train.seed).into_iter().collect();
            for (name, &index) in by_name {
                let shape = &g.params[index].shape;
                let value = match &loaded {
                    Some(tensors) => weights::find(tensors, name, shape).ok_or_else(|| {
                        weights::WeightsError::Missing {
                            path: spec.weights.clone().unwrap_or_default(),
                            name: name.clone(),
                            count: tensors.len(),
                        }
                    })?,
                    None => initial[name].clone(),
                };
                if value.len() != super::graph::numel(shape) {
                    return Err(weights::WeightsError::Shape {
                        path: spec.weights.clone().unwrap_or_default(),
                        name: name.clone(),
                        found: vec![value.len()],
                        expected: shape.clone(),
                    }
                    .into());
                }
                values[index] = Some(value);
                decay[index] = !no_decay.contains(&classes[name]);
                if name == "logit_scale" {
                    clamp[index] = Some((
                        spec.logit_scale.min.ln() as f32,
                        spec.logit_scale.max.ln() as f32,
                    ));
                }
            }
        }
        for &(spec_index, index) in &step.loss_params {
            let p = &stage.params[spec_index];
            let n = super::graph::numel(&g.params[index].shape);
            let mut rng = Rng::derive(stage.train.seed, &p.name);
            let value = match p.init {
                ir::Init::Constant(c) => vec![c as f32; n],
                ir::Init::Uniform { bound } => (0..n)
                    .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                    .collect(),
                ir::Init::Normal { std } => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
            };
            values[index] = Some(value);
            decay[index] = !no_decay.contains(&p.class);
            clamp[index] = p.clamp.map(|(lo, hi)| (lo as f32, hi as f32));
        }
        let adam = (0..g.params.len())
            .map(|i| {
                g.params[i].trainable.then(|| {
                    (
                        vec![0.0; values[i].as_ref().map_or(0, Vec::len)],
                        vec![0.0; values[i].as_ref().map_or(0, Vec::len)],
                    )
                })
            })
            .collect();
        let samples = match &stage.data.source {
            DataSource::Synthetic { samples } => *samples,
            _ => 1024,
        };
        let per_epoch = (samples / stage.data.batch).max(1);
        let total_steps = match stage.train.length {
            Length::Steps(n) => n,
            Length::Epochs(e) => e * per_epoch,
        };
        exec.allocate().map_err(|bytes| TrainError::Memory {
            stage: stage.name.clone(),
            batch,
            gib: bytes as f64 / (1u64 << 30) as f64,
        })?;
        Ok(Trainer {
            recipe,
            stage_index,
            step,
            exec,
            values,
            adam,
            decay,
            clamp,
            total_steps,
            done: 0,
            rng_seed: stage.train.seed,
            grad_sums: vec![None; n_params],
        })
    }

    pub fn graph(&self) -> &super::graph::Graph {
        &self.step.graph
    }

    /// Synthetic inputs for step `step`: images ~ N(0, 1), captions of random token ids that end
    /// in the end-of-text token, fresh patch masks.
    fn batch_inputs(&self, step: u64) -> Vec<(String, Vec<f32>)> {
        let mut out = Vec::new();
        let b = self.step.batch;
        for (name, shape) in &self.step.inputs {
            let mut rng = Rng::derive(self.rng_seed ^ step.wrapping_mul(0x9E37), name);
            let kind = name.split(':').next().unwrap();
            let model_name = name.split(':').nth(1).unwrap_or_default();
            let spec = self.recipe.models.iter().find(|m| m.name == model_name);
            let n: usize = shape.iter().product();
            let values = match kind {
                // Every model sees the same images (a teacher must judge what the student
                // sees): the stream depends on the image size, not on the model.
                "pixels" => {
                    let mut images = Rng::derive(
                        self.rng_seed ^ step.wrapping_mul(0x9E37),
                        &format!("pixels:{:?}", &shape[1..]),
                    );
                    (0..n).map(|_| images.normal() as f32).collect()
                }
                "ids" | "eot" | "mask" => {
                    // One caption per row, shared by the ids, eot and mask inputs of a model.
                    let spec = spec.expect("text inputs belong to a model");
                    let l = spec.tokenizer.context as usize;
                    let mut caption = Rng::derive(
                        self.rng_seed ^ step.wrapping_mul(0x9E37),
                        &format!("caption:{}", spec.tokenizer.kind),
                    );
                    let vocab = spec.text.vocab as usize;
                    let mut ids = vec![0f32; b * l];
                    let mut eot = vec![0f32; b];
                    let mut mask = vec![0f32; b * l];
                    for row in 0..b {
                        let len = 2 + caption.below(l - 1);
                        for j in 0..len {
                            ids[row * l + j] = if j + 1 == len && spec.text.kind == TextKind::Clip {
                                (vocab - 1) as f32
                            } else {
                                (1 + caption.below(vocab - 2)) as f32
                            };
                            mask[row * l + j] = 1.0;
                        }
                        eot[row] = (len - 1) as f32;
                    }
                    match kind {
                        "ids" => ids,
                        "eot" => eot,
                        _ => mask,
                    }
                }
                "keep" => {
                    let patches = spec.map(|s| s.vision.patches() as usize).unwrap_or(0);
                    let k = shape[1];
                    (0..b)
                        .flat_map(|_| rng.choose_sorted(patches, k))
                        .map(|i| i as f32)
                        .collect()
                }
                _ => unreachable!("unknown input {name}"),
            };
            out.push((name.clone(), values));
        }
        out
    }

    /// The loss, each term and every gradient at `step` (one micro-batch), without updating
    /// anything: for tests against other implementations.
    pub fn evaluate(&mut self, step: u64) -> Evaluation {
        let inputs = self.batch_inputs(step);
        let stage = &self.recipe.stages[self.stage_index];
        for (p, v) in self.values.iter_mut().enumerate() {
            if let Some(values) = v.take() {
                self.exec.set_param(p, values);
            }
        }
        for (name, values) in &inputs {
            self.exec.set_input(name, values.clone());
        }
        for ((_, schedule, _), name) in self.step.terms.iter().zip(&self.step.weight_inputs) {
            self.exec
                .set_input(name, vec![schedule.at(step, self.total_steps) as f32]);
        }
        let _ = stage;
        let outputs = self.exec.run();
        for (p, v) in self.values.iter_mut().enumerate() {
            if v.is_none() {
                *v = self.exec.take_param(p);
            }
        }
        let g = &self.step.graph;
        let first_grad = 1 + self.step.terms.len();
        Evaluation {
            loss: outputs[0][0] as f64,
            terms: self
                .step
                .terms
                .iter()
                .enumerate()
                .map(|(i, t)| (t.0.clone(), outputs[1 + i][0] as f64))
                .collect(),
            params: g
                .params
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    self.values[i]
                        .clone()
                        .map(|v| (p.name.clone(), p.shape.clone(), v))
                })
                .collect(),
            grads: self
                .step
                .grads
                .iter()
                .enumerate()
                .map(|(k, &(p, _))| (g.params[p].name.clone(), outputs[first_grad + k].clone()))
                .collect(),
            inputs: inputs
                .into_iter()
                .map(|(name, v)| {
                    let shape = self
                        .step
                        .inputs
                        .iter()
                        .find(|i| i.0 == name)
                        .map(|i| i.1.clone())
                        .unwrap_or_default();
                    (name, shape, v)
                })
                .collect(),
        }
    }

    /// One optimiser step. Returns what it measured.
    pub fn train_step(&mut self) -> StepLog {
        let started = Instant::now();
        let stage = &self.recipe.stages[self.stage_index];
        let t = self.done;
        let total = self.total_steps;
        let accumulate = stage.train.accumulate.max(1);
        let mut loss = 0.0;
        let mut terms = vec![0.0; self.step.terms.len()];
        for micro in 0..accumulate {
            for (p, v) in self.values.iter_mut().enumerate() {
                if let Some(values) = v.take() {
                    self.exec.set_param(p, values);
                }
            }
            for (name, values) in self.batch_inputs(t * accumulate + micro) {
                self.exec.set_input(&name, values);
            }
            for ((_, schedule, _), name) in self.step.terms.iter().zip(&self.step.weight_inputs) {
                self.exec
                    .set_input(name, vec![schedule.at(t, total) as f32]);
            }
            for node in &self.step.graph.nodes {
                if let Op::Scalar(name) = &node.op {
                    if let Some(index) = name.strip_prefix("schedule:") {
                        let ir_node = &stage.graph.nodes[index.parse::<usize>().unwrap()];
                        if let ir::Op::Scheduled(s) = &ir_node.op {
                            self.exec.set_input(name, vec![s.at(t, total) as f32]);
                        }
                    }
                }
            }
            self.exec.execute();
            for (p, v) in self.values.iter_mut().enumerate() {
                if v.is_none() {
                    *v = self.exec.take_param(p);
                }
            }
            loss += self.exec.output(0)[0] as f64 / accumulate as f64;
            for (i, term) in terms.iter_mut().enumerate() {
                *term += self.exec.output(1 + i)[0] as f64 / accumulate as f64;
            }
            // Gradients leave the arena into buffers kept from step to step (summed over
            // micro-batches).
            let first_grad = 1 + self.step.terms.len();
            for (k, &(p, _)) in self.step.grads.iter().enumerate() {
                let g = self.exec.output(first_grad + k);
                let sum = self.grad_sums[p].get_or_insert_with(|| vec![0.0; g.len()]);
                if micro == 0 {
                    sum.copy_from_slice(g);
                } else {
                    sum.iter_mut().zip(g).for_each(|(s, x)| *s += x);
                }
            }
        }
        if accumulate > 1 {
            let scale = 1.0 / accumulate as f32;
            for g in self.grad_sums.iter_mut().flatten() {
                g.iter_mut().for_each(|x| *x *= scale);
            }
        }
        let grad_norm = {
            let grads: Vec<&[f32]> = self.grad_sums.iter().flatten().map(|g| &g[..]).collect();
            kdc_cpu::grad_norm(&grads)
        };
        if let Some(max) = stage.train.clip_grad {
            let mut grads: Vec<&mut [f32]> = self
                .grad_sums
                .iter_mut()
                .flatten()
                .map(|g| &mut g[..])
                .collect();
            kdc_cpu::clip_grad_norm(&mut grads, max);
        }
        let o = &stage.train.optimizer;
        let lr = o.lr.at(t, total);
        for (p, grad) in self.grad_sums.iter().enumerate() {
            let (Some(grad), Some(values), Some((m, v))) =
                (grad, self.values[p].as_mut(), self.adam[p].as_mut())
            else {
                continue;
            };
            let wd = if self.decay[p] { o.weight_decay } else { 0.0 };
            kdc_cpu::adamw_step(
                values,
                grad,
                m,
                v,
                lr,
                o.betas.0,
                o.betas.1,
                o.eps,
                wd,
                t + 1,
            );
            if let Some((lo, hi)) = self.clamp[p] {
                values.iter_mut().for_each(|x| *x = x.clamp(lo, hi));
            }
        }
        self.done += 1;
        StepLog {
            stage: stage.name.clone(),
            step: t + 1,
            loss,
            terms: self
                .step
                .terms
                .iter()
                .map(|t| t.0.clone())
                .zip(terms)
                .collect(),
            lr,
            grad_norm,
            seconds: started.elapsed().as_secs_f64(),
        }
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
            let entry = self.train_step();
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
