//! Where a step's batch inputs come from: a recipe's real data (a [`Loader`] preparing images
//! and captions per model ahead of the step), or synthetic batches for `synthetic(…)` data. The
//! patch masks of masked views are drawn here too, from the seed and the step.

use super::graph::{Input, InputKind};
use super::rng::Rng;
use crate::data::loader::{Loader, Options as LoaderOptions, Position};
use crate::data::{self, DataError};
use crate::ir::{DataSource, Recipe};
use crate::model::{ModelSpec, PreprocessSpec, TextKind, TokenizerSpec};
use crate::tokenize::{Tokenizer, TokenizerError};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("model `{model}`: {source}")]
    Tokenizer {
        model: String,
        source: TokenizerError,
    },
    #[error(
        "model `{model}`: its tokenizer makes ids up to {ids} but its text tower has a vocabulary of {vocab}; \
         with `clip_bpe` the transformer needs `vocab: 49408`"
    )]
    Vocabulary {
        model: String,
        ids: usize,
        vocab: u64,
    },
}

/// The batch inputs of a compiled step, filled each step.
pub enum Batches {
    Synthetic { seed: u64 },
    Real(Box<Real>),
}

pub struct Real {
    loader: Loader,
    seed: u64,
    /// Per model name: its preprocessing's index in the loader's views.
    views: Vec<(String, usize)>,
    /// Per model name: its tokenizer's index in the loader's tokenizers.
    tokenizers: Vec<(String, usize)>,
}

/// A step's inputs: (input index, values).
pub type Filled = Vec<(usize, Vec<f32>)>;

impl Batches {
    /// The source for stage `stage` of `recipe` whose graph reads `inputs`, starting at `start`
    /// in its data. `augment` applies open_clip's training crop (scale 0.9–1).
    pub fn open(
        recipe: &Recipe,
        stage: usize,
        inputs: &[Input],
        base: &crate::manifest::Base,
        start: Position,
        augment: bool,
    ) -> Result<Batches, BatchError> {
        let spec = &recipe.stages[stage].data;
        if let DataSource::Synthetic { .. } = spec.source {
            return Ok(Batches::Synthetic {
                seed: recipe.stages[stage].train.seed,
            });
        }
        let dataset: Arc<dyn data::Dataset> = Arc::from(data::open(spec, base)?);
        let models = |pick: fn(&InputKind) -> Option<&str>| -> Vec<&ModelSpec> {
            let mut out: Vec<&ModelSpec> = Vec::new();
            for i in inputs {
                if let Some(name) = pick(&i.kind) {
                    let m = recipe
                        .models
                        .iter()
                        .find(|m| m.name == name)
                        .expect("a recipe model");
                    if !out.iter().any(|o| o.name == m.name) {
                        out.push(m);
                    }
                }
            }
            out
        };
        let seeing = models(|k| match k {
            InputKind::Pixels { model } => Some(model),
            _ => None,
        });
        let reading = models(|k| match k {
            InputKind::Ids { model } => Some(model),
            _ => None,
        });
        let mut view_specs: Vec<PreprocessSpec> = Vec::new();
        let mut views = Vec::new();
        for m in seeing {
            let i = match view_specs.iter().position(|v| *v == m.preprocess) {
                Some(i) => i,
                None => {
                    view_specs.push(m.preprocess.clone());
                    view_specs.len() - 1
                }
            };
            views.push((m.name.clone(), i));
        }
        let mut token_specs: Vec<(TokenizerSpec, Arc<Tokenizer>)> = Vec::new();
        let mut tokenizers = Vec::new();
        for m in reading {
            let i = match token_specs.iter().position(|(s, _)| *s == m.tokenizer) {
                Some(i) => i,
                None => {
                    let t = Tokenizer::load(&m.tokenizer, base).map_err(|source| {
                        BatchError::Tokenizer {
                            model: m.name.clone(),
                            source,
                        }
                    })?;
                    token_specs.push((m.tokenizer.clone(), Arc::new(t)));
                    token_specs.len() - 1
                }
            };
            let size = token_specs[i].1.vocab_size();
            if size as u64 > m.text.vocab {
                return Err(BatchError::Vocabulary {
                    model: m.name.clone(),
                    ids: size,
                    vocab: m.text.vocab,
                });
            }
            tokenizers.push((m.name.clone(), i));
        }
        let options = LoaderOptions::new(
            spec.batch as usize,
            spec.seed,
            spec.shuffle,
            augment.then_some((0.9, 1.0)),
        );
        let loader = Loader::new(
            dataset,
            view_specs,
            token_specs.into_iter().map(|(_, t)| t).collect(),
            options,
            start,
        )?;
        Ok(Batches::Real(Box::new(Real {
            loader,
            seed: recipe.stages[stage].train.seed,
            views,
            tokenizers,
        })))
    }

    /// Optimiser steps in one epoch, when the data says (synthetic data: `samples / batch`).
    pub fn steps_per_epoch(&self, recipe: &Recipe, stage: usize) -> u64 {
        match self {
            Batches::Real(r) => r.loader.batches_per_epoch() as u64,
            Batches::Synthetic { .. } => {
                let spec = &recipe.stages[stage].data;
                let samples = match spec.source {
                    DataSource::Synthetic { samples } => samples,
                    _ => unreachable!(),
                };
                (samples / spec.batch).max(1)
            }
        }
    }

    /// Reads the next batch and drops it (the loader alone, for `kdc bench --data`); returns
    /// the samples it held.
    pub fn pull(&mut self) -> Result<usize, BatchError> {
        match self {
            Batches::Real(r) => Ok(r.loader.next_batch()?.indices.len()),
            Batches::Synthetic { .. } => Ok(0),
        }
    }

    /// The loader's worker threads (0 for synthetic data).
    pub fn workers(&self) -> usize {
        match self {
            Batches::Real(r) => r.loader.workers(),
            Batches::Synthetic { .. } => 0,
        }
    }

    /// Where the next batch starts in the data (None for synthetic data).
    pub fn position(&self) -> Option<Position> {
        match self {
            Batches::Real(r) => Some(r.loader.position()),
            Batches::Synthetic { .. } => None,
        }
    }

    /// Samples read and skipped so far, with examples of why.
    pub fn stats(&self) -> Option<&crate::data::loader::Stats> {
        match self {
            Batches::Real(r) => Some(r.loader.stats()),
            Batches::Synthetic { .. } => None,
        }
    }

    /// The batch inputs of micro-batch `step` (its index counted over the whole stage).
    pub fn next(
        &mut self,
        recipe: &Recipe,
        inputs: &[Input],
        batch: usize,
        step: u64,
    ) -> Result<Filled, BatchError> {
        match self {
            Batches::Synthetic { seed } => Ok(synthetic(recipe, inputs, batch, *seed, step)),
            Batches::Real(r) => r.next(inputs, batch, step),
        }
    }
}

impl Real {
    fn next(&mut self, inputs: &[Input], batch: usize, step: u64) -> Result<Filled, BatchError> {
        let b = self.loader.next_batch()?;
        let index_of = |table: &[(String, usize)], model: &str| {
            table
                .iter()
                .find(|(m, _)| m == model)
                .map(|x| x.1)
                .expect("every model has its entry")
        };
        let mut out = Vec::new();
        for (index, input) in inputs.iter().enumerate() {
            let values = match &input.kind {
                InputKind::Pixels { model } => b.pixels[index_of(&self.views, model)].clone(),
                InputKind::Ids { model } => b.tokens[index_of(&self.tokenizers, model)]
                    .iter()
                    .flat_map(|e| e.ids.iter().map(|&i| i as f32))
                    .collect(),
                InputKind::Eot { model } => b.tokens[index_of(&self.tokenizers, model)]
                    .iter()
                    .map(|e| e.eot as f32)
                    .collect(),
                InputKind::Mask { model } => b.tokens[index_of(&self.tokenizers, model)]
                    .iter()
                    .flat_map(|e| e.mask.iter().map(|&m| m as f32))
                    .collect(),
                InputKind::Keep { patches, .. } => {
                    keep(&input.kind, *patches, &input.shape, batch, self.seed, step)
                }
                InputKind::Weight { .. } | InputKind::Schedule { .. } => continue,
            };
            out.push((index, values));
        }
        Ok(out)
    }
}

fn step_seed(seed: u64, step: u64) -> u64 {
    seed ^ step.wrapping_mul(0x9E37)
}

/// The kept patches of a masked view: `k` sorted indices per row, fresh every step (the same
/// stream as for synthetic data).
fn keep(
    kind: &InputKind,
    patches: usize,
    shape: &[usize],
    batch: usize,
    seed: u64,
    step: u64,
) -> Vec<f32> {
    let mut rng = Rng::derive(step_seed(seed, step), &kind.to_string());
    (0..batch)
        .flat_map(|_| rng.choose_sorted(patches, shape[1]))
        .map(|i| i as f32)
        .collect()
}

/// Synthetic inputs for micro-batch `step`: images ~ N(0, 1), captions of random token ids that
/// end in the end-of-text token, fresh patch masks.
fn synthetic(recipe: &Recipe, inputs: &[Input], b: usize, seed: u64, step: u64) -> Filled {
    let mut out = Vec::new();
    for (index, input) in inputs.iter().enumerate() {
        let (kind, shape) = (&input.kind, &input.shape);
        let model_name = match kind {
            InputKind::Pixels { model }
            | InputKind::Ids { model }
            | InputKind::Eot { model }
            | InputKind::Mask { model } => model.as_str(),
            InputKind::Keep { patches, .. } => {
                out.push((index, keep(kind, *patches, shape, b, seed, step)));
                continue;
            }
            InputKind::Weight { .. } | InputKind::Schedule { .. } => continue,
        };
        let spec = recipe.models.iter().find(|m| m.name == model_name);
        let n: usize = shape.iter().product();
        let values = match kind {
            // Every model sees the same images (a teacher must judge what the student sees):
            // the stream depends on the image size, not on the model.
            InputKind::Pixels { .. } => {
                let mut images =
                    Rng::derive(step_seed(seed, step), &format!("pixels:{:?}", &shape[1..]));
                (0..n).map(|_| images.normal() as f32).collect()
            }
            InputKind::Ids { .. } | InputKind::Eot { .. } | InputKind::Mask { .. } => {
                // One caption per row, shared by the ids, eot and mask inputs of a model.
                let spec = spec.expect("text inputs belong to a model");
                let l = spec.tokenizer.context as usize;
                let mut caption = Rng::derive(
                    step_seed(seed, step),
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
                    InputKind::Ids { .. } => ids,
                    InputKind::Eot { .. } => eot,
                    _ => mask,
                }
            }
            InputKind::Keep { .. } | InputKind::Weight { .. } | InputKind::Schedule { .. } => {
                unreachable!("handled above")
            }
        };
        out.push((index, values));
    }
    out
}
