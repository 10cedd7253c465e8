//! Evaluation of a model on held-out data: zero-shot classification with prompt templates
//! (open_clip's: each class's prompts encoded, normalised, averaged and normalised again; top-1
//! and top-5 accuracy) and image-text retrieval (recall at k in both directions).
//!
//! A model's encoders are forward-only graphs from `engine::compile` (no loss, no backward),
//! run on the same backend as training, with the model's parameters given by name.

use crate::data::loader::{Loader, Options as LoaderOptions, Position};
use crate::data::{self, DataError};
use crate::engine::compile::{self, Options};
use crate::engine::exec::{self, Executable, SharedBackend};
use crate::engine::graph::InputKind;
use crate::engine::lower::Output;
use crate::ir::{self, EvalSpec, ModelId, Recipe, Tap};
use crate::tokenize::{Encoded, Tokenizer, TokenizerError};
use kdc_backend::BackendError;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("model `{model}` has no value for its parameter {name}")]
    Missing { model: String, name: String },
    #[error("zero-shot classification needs labelled data; {0} has no classes")]
    Unlabelled(String),
}

/// What one evaluation measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// `zero_shot` or `retrieval`.
    pub kind: &'static str,
    pub model: String,
    pub data: String,
    pub samples: usize,
    /// Metric name → value in [0, 1] (`top1`, `top5`, `image_to_text_R@1`, …).
    pub metrics: Vec<(String, f64)>,
    /// The model's parameters, all and its image tower's (with its projection).
    pub parameters: u64,
    pub image_parameters: u64,
    /// Images encoded per second by the image tower in this evaluation (batches of the data's
    /// batch size; decoding excluded).
    pub images_per_s: f64,
}

fn millions(n: u64) -> String {
    if n >= 100_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else {
        format!("{:.1}k", n as f64 / 1e3)
    }
}

/// A model's parameter counts: all, and the image tower's with its projection.
fn parameter_counts(spec: &crate::model::ModelSpec) -> (u64, u64) {
    use crate::model::Part;
    let image = spec
        .parameters()
        .iter()
        .filter(|p| matches!(p.part, Part::Vision | Part::VisionProjection))
        .map(|p| p.shape.iter().product::<u64>())
        .sum();
    (spec.parameter_count(), image)
}

/// Image embeddings of a batch, timed: the first batch runs once untimed first (it touches
/// fresh memory), so `seconds` covers steady-state batches only.
fn timed_images(
    encoder: &mut Encoder,
    pixels: &[f32],
    n: usize,
    seconds: &mut f64,
) -> Vec<Vec<f32>> {
    if *seconds == 0.0 {
        encoder.images(pixels, n);
    }
    let started = std::time::Instant::now();
    let out = encoder.images(pixels, n);
    *seconds += started.elapsed().as_secs_f64();
    out
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let metrics: Vec<String> = self
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} {:.2} %", 100.0 * v))
            .collect();
        write!(
            f,
            "{} {} on {} ({} samples): {}  [{} parameters, image tower {}; {:.0} images/s]",
            self.kind,
            self.model,
            self.data,
            self.samples,
            metrics.join(", "),
            millions(self.parameters),
            millions(self.image_parameters),
            self.images_per_s
        )
    }
}

/// A model's image and text encoders, L2-normalised outputs.
pub struct Encoder {
    image: Executable,
    text: Executable,
    image_out: Output,
    text_out: Output,
    tokenizer: Tokenizer,
    batch: usize,
}

impl Encoder {
    /// Compiles model `model`'s two towers for batches of `batch` and loads its parameters
    /// (names as in training: `<model>/<Hugging Face name>`).
    pub fn new(
        recipe: &Recipe,
        model: ModelId,
        params: &HashMap<String, Vec<f32>>,
        batch: usize,
        base: &crate::manifest::Base,
        backend: SharedBackend,
    ) -> Result<Encoder, EvalError> {
        let spec = &recipe.models[model];
        let build = |tap: Tap| -> Result<Executable, EvalError> {
            let compiled = {
                let b = exec::lock(&backend);
                compile::compile(
                    recipe,
                    0,
                    &Options::forward(vec![(model, tap)], batch),
                    &**b,
                )
            };
            let mut e = Executable::new(compiled, backend.clone())?;
            let names: Vec<String> = e
                .compiled()
                .graph
                .params
                .iter()
                .map(|p| p.name.clone())
                .collect();
            for (i, name) in names.iter().enumerate() {
                if !e.uses_param(i) {
                    continue;
                }
                let values = params.get(name).ok_or_else(|| EvalError::Missing {
                    model: spec.name.clone(),
                    name: name.clone(),
                })?;
                e.set_param(i, values);
            }
            Ok(e)
        };
        let name = |tap: Tap| {
            Output::Tensor(format!(
                "{}.{}",
                spec.name,
                crate::engine::lower::tap_name(tap)
            ))
        };
        Ok(Encoder {
            image: build(Tap::Image)?,
            text: build(Tap::Text)?,
            image_out: name(Tap::Image),
            text_out: name(Tap::Text),
            tokenizer: Tokenizer::load(&spec.tokenizer, base)?,
            batch,
        })
    }

    /// Embeddings of up to `batch` preprocessed images ([n, 3, s, s]), one row each.
    pub fn images(&mut self, pixels: &[f32], n: usize) -> Vec<Vec<f32>> {
        let per = pixels.len() / n.max(1);
        let mut padded = pixels.to_vec();
        padded.resize(per * self.batch, 0.0);
        let index = (0..self.image.compiled().graph.inputs.len()).find(|&i| {
            matches!(
                self.image.compiled().graph.inputs[i].kind,
                InputKind::Pixels { .. }
            )
        });
        self.image
            .set_input(index.expect("an image graph reads pixels"), &padded);
        self.image.execute();
        rows(self.image.output(&self.image_out), self.batch, n)
    }

    /// Embeddings of up to `batch` captions.
    pub fn texts(&mut self, captions: &[String]) -> Vec<Vec<f32>> {
        let encoded: Vec<Encoded> = captions.iter().map(|c| self.tokenizer.encode(c)).collect();
        let context = self.tokenizer.context();
        let inputs = self.text.compiled().graph.inputs.clone();
        for (i, input) in inputs.iter().enumerate() {
            let mut values: Vec<f32> = match input.kind {
                InputKind::Ids { .. } => encoded
                    .iter()
                    .flat_map(|e| e.ids.iter().map(|&x| x as f32))
                    .collect(),
                InputKind::Eot { .. } => encoded.iter().map(|e| e.eot as f32).collect(),
                InputKind::Mask { .. } => encoded
                    .iter()
                    .flat_map(|e| e.mask.iter().map(|&x| x as f32))
                    .collect(),
                _ => continue,
            };
            let per = if matches!(input.kind, InputKind::Eot { .. }) {
                1
            } else {
                context
            };
            // Padding rows: a caption of just the end mark at position 0 (any valid row).
            values.resize(per * self.batch, 0.0);
            self.text.set_input(i, &values);
        }
        self.text.execute();
        rows(self.text.output(&self.text_out), self.batch, captions.len())
    }

    pub fn batch(&self) -> usize {
        self.batch
    }
}

/// Inputs and kdc's embeddings of them for an exported model, so that another implementation
/// can check it computes the same function (`scripts/check_export.py`): four seeded pseudo-random
/// images and four captions as token ids, with L2-normalised image and text embeddings.
/// Ids are stored as f32 (exact below 2^24).
pub fn reference_embeddings(
    recipe: &Recipe,
    model: ModelId,
    params: &HashMap<String, Vec<f32>>,
    base: &crate::manifest::Base,
    backend: SharedBackend,
) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>, EvalError> {
    const N: usize = 4;
    let spec = &recipe.models[model];
    let mut encoder = Encoder::new(recipe, model, params, N, base, backend)?;
    let size = spec.vision.image_size as usize;
    let mut rng = crate::engine::rng::Rng::derive(0, "export reference");
    let pixels: Vec<f32> = (0..N * 3 * size * size)
        .map(|_| rng.normal() as f32)
        .collect();
    let captions: Vec<String> = [
        "a photo of a sneaker.",
        "an image of a bag.",
        "T-shirt/top",
        "a long caption about an ankle boot, worn on a rainy day in a city with many streets",
    ]
    .map(String::from)
    .to_vec();
    let context = encoder.tokenizer.context();
    let ids: Vec<f32> = captions
        .iter()
        .flat_map(|c| {
            encoder
                .tokenizer
                .encode(c)
                .ids
                .into_iter()
                .map(|x| x as f32)
        })
        .collect();
    let images: Vec<f32> = encoder.images(&pixels, N).concat();
    let texts: Vec<f32> = encoder.texts(&captions).concat();
    let embed = spec.embed as usize;
    Ok(vec![
        ("pixel_values".into(), vec![N, 3, size, size], pixels),
        ("input_ids".into(), vec![N, context], ids),
        ("image_embeds".into(), vec![N, embed], images),
        ("text_embeds".into(), vec![N, embed], texts),
    ])
}

/// The first `n` rows of a [batch, d] output, each L2-normalised.
fn rows(flat: Vec<f32>, batch: usize, n: usize) -> Vec<Vec<f32>> {
    let d = flat.len() / batch;
    flat.chunks(d)
        .take(n)
        .map(|r| {
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            r.iter().map(|x| x / norm).collect()
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Runs one evaluation of the recipe with the given parameters.
pub fn run(
    recipe: &Recipe,
    spec: &EvalSpec,
    params: &HashMap<String, Vec<f32>>,
    base: &crate::manifest::Base,
    backend: SharedBackend,
) -> Result<Report, EvalError> {
    let device = backend.clone();
    let report = match spec {
        EvalSpec::ZeroShot {
            model,
            data,
            templates,
            ..
        } => zero_shot(recipe, *model, data, templates, params, base, backend),
        EvalSpec::Retrieval { model, data, k, .. } => {
            retrieval(recipe, *model, data, k, params, base, backend)
        }
    }?;
    // A device that failed on the way leaves NaN embeddings: its error, not their scores.
    let error = crate::engine::exec::lock(&device).take_error();
    match error {
        Some(e) => Err(EvalError::Backend(e)),
        None => Ok(report),
    }
}

/// Images of a data set in order, preprocessed for `model`, batch by batch.
fn images_of(
    recipe: &Recipe,
    model: ModelId,
    data: &ir::DataSpec,
    base: &crate::manifest::Base,
) -> Result<(Loader, String), EvalError> {
    let dataset: Arc<dyn data::Dataset> = Arc::from(data::open(data, base)?);
    let what = dataset.describe();
    let mut options = LoaderOptions::new(data.batch as usize, data.seed, false, None);
    options.keep_last = true;
    let views = vec![recipe.models[model].preprocess.clone()];
    let loader = Loader::new(
        dataset,
        views,
        Vec::new(),
        options,
        Position {
            epoch: 0,
            cursor: 0,
        },
    )?;
    Ok((loader, what))
}

#[allow(clippy::too_many_arguments)]
fn zero_shot(
    recipe: &Recipe,
    model: ModelId,
    data: &ir::DataSpec,
    templates: &[String],
    params: &HashMap<String, Vec<f32>>,
    base: &crate::manifest::Base,
    backend: SharedBackend,
) -> Result<Report, EvalError> {
    let (mut loader, what) = images_of(recipe, model, data, base)?;
    let classes: Vec<String> = loader
        .dataset()
        .classes()
        .ok_or_else(|| EvalError::Unlabelled(what.clone()))?
        .to_vec();
    let batch = data.batch as usize;
    let mut encoder = Encoder::new(recipe, model, params, batch, base, backend)?;
    // The classifier: per class, the mean of its normalised prompt embeddings, normalised.
    let mut classifier = Vec::with_capacity(classes.len());
    for class in &classes {
        let prompts: Vec<String> = templates.iter().map(|t| t.replace("{}", class)).collect();
        let mut sum = Vec::new();
        for chunk in prompts.chunks(batch) {
            for e in encoder.texts(chunk) {
                if sum.is_empty() {
                    sum = vec![0.0; e.len()];
                }
                sum.iter_mut().zip(&e).for_each(|(s, x)| *s += x);
            }
        }
        let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        classifier.push(sum.iter().map(|x| x / norm).collect::<Vec<f32>>());
    }
    let (mut top1, mut top5, mut n) = (0usize, 0usize, 0usize);
    let mut seconds = 0.0;
    while let Some(b) = loader.next_in_epoch()? {
        let embeddings = timed_images(&mut encoder, &b.pixels[0], b.labels.len(), &mut seconds);
        for (e, label) in embeddings.iter().zip(&b.labels) {
            let label = label.expect("labelled data");
            let scores: Vec<f32> = classifier.iter().map(|c| dot(e, c)).collect();
            let rank = scores.iter().filter(|&&s| s > scores[label]).count();
            top1 += usize::from(rank < 1);
            top5 += usize::from(rank < 5);
            n += 1;
        }
    }
    let (parameters, image_parameters) = parameter_counts(&recipe.models[model]);
    Ok(Report {
        kind: "zero_shot",
        model: recipe.models[model].name.clone(),
        data: what,
        samples: n,
        metrics: vec![
            ("top1".into(), top1 as f64 / n.max(1) as f64),
            ("top5".into(), top5 as f64 / n.max(1) as f64),
        ],
        parameters,
        image_parameters,
        images_per_s: n as f64 / seconds.max(1e-9),
    })
}

/// Recall at k both ways, over distinct images and distinct captions: an image is a hit for
/// a caption when the caption describes it (several captions may describe one image, as in
/// COCO); on labelled data, where many images share each caption, when their classes agree.
#[allow(clippy::too_many_arguments)]
fn retrieval(
    recipe: &Recipe,
    model: ModelId,
    data: &ir::DataSpec,
    k: &[u64],
    params: &HashMap<String, Vec<f32>>,
    base: &crate::manifest::Base,
    backend: SharedBackend,
) -> Result<Report, EvalError> {
    let (mut loader, what) = images_of(recipe, model, data, base)?;
    let batch = data.batch as usize;
    let mut encoder = Encoder::new(recipe, model, params, batch, base, backend)?;
    // Distinct images (by id, else one per sample) and distinct captions.
    let mut images: Vec<Vec<f32>> = Vec::new();
    let mut image_labels: Vec<Option<usize>> = Vec::new();
    let mut image_index: HashMap<String, usize> = HashMap::new();
    let mut captions: Vec<String> = Vec::new();
    let mut caption_labels: Vec<Option<usize>> = Vec::new();
    let mut caption_index: HashMap<String, usize> = HashMap::new();
    // (image, caption) pairs the data lists.
    let mut pairs: std::collections::HashSet<(usize, usize)> = Default::default();
    let (mut seconds, mut encoded) = (0.0, 0usize);
    while let Some(b) = loader.next_in_epoch()? {
        encoded += b.labels.len();
        let embeddings = timed_images(&mut encoder, &b.pixels[0], b.labels.len(), &mut seconds);
        for (((e, label), caption), id) in embeddings
            .into_iter()
            .zip(&b.labels)
            .zip(&b.captions)
            .zip(&b.image_ids)
        {
            let image = match id {
                Some(id) => *image_index.entry(id.clone()).or_insert_with(|| {
                    images.push(e.clone());
                    image_labels.push(*label);
                    images.len() - 1
                }),
                None => {
                    images.push(e);
                    image_labels.push(*label);
                    images.len() - 1
                }
            };
            let text = *caption_index.entry(caption.clone()).or_insert_with(|| {
                captions.push(caption.clone());
                caption_labels.push(*label);
                captions.len() - 1
            });
            pairs.insert((image, text));
        }
    }
    let mut texts = Vec::new();
    for chunk in captions.chunks(batch) {
        texts.extend(encoder.texts(chunk));
    }
    let labelled = image_labels.iter().all(Option::is_some);
    let hit = |i: usize, t: usize| {
        if labelled {
            image_labels[i] == caption_labels[t]
        } else {
            pairs.contains(&(i, t))
        }
    };
    // A query's rank: how many non-matching items score above its best matching one.
    let rank = |scores: &[f32], matches: &dyn Fn(usize) -> bool| {
        let best = (0..scores.len())
            .filter(|&j| matches(j))
            .map(|j| scores[j])
            .fold(f32::MIN, f32::max);
        scores
            .iter()
            .enumerate()
            .filter(|&(j, &s)| s > best && !matches(j))
            .count()
    };
    let i2t: Vec<usize> = (0..images.len())
        .into_par_iter()
        .map(|i| {
            let scores: Vec<f32> = texts.iter().map(|t| dot(&images[i], t)).collect();
            rank(&scores, &|t| hit(i, t))
        })
        .collect();
    let t2i: Vec<usize> = (0..texts.len())
        .into_par_iter()
        .map(|t| {
            let scores: Vec<f32> = images.iter().map(|im| dot(im, &texts[t])).collect();
            rank(&scores, &|i| hit(i, t))
        })
        .collect();
    let mut metrics = Vec::new();
    for (name, ranks) in [("image_to_text", &i2t), ("text_to_image", &t2i)] {
        for &kk in k {
            let hits = ranks.iter().filter(|&&r| (r as u64) < kk).count();
            metrics.push((
                format!("{name}_R@{kk}"),
                hits as f64 / ranks.len().max(1) as f64,
            ));
        }
    }
    let (parameters, image_parameters) = parameter_counts(&recipe.models[model]);
    Ok(Report {
        kind: "retrieval",
        model: recipe.models[model].name.clone(),
        data: format!(
            "{what}; {} images, {} captions",
            images.len(),
            captions.len()
        ),
        samples: images.len(),
        metrics,
        parameters,
        image_parameters,
        images_per_s: encoded as f64 / seconds.max(1e-9),
    })
}
