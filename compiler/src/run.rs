//! A whole run of a recipe: its stages in order (each starting from an earlier stage's final
//! parameters when it says `from:`), the JSONL log, checkpoints (atomic, resumable), the
//! evaluations after the last stage, and the trained models exported as Hugging Face folders.
//!
//! The run folder holds `log.jsonl` (one line per optimiser step), `checkpoint.safetensors`
//! (the latest state), `stage-<name>.safetensors` (each finished stage's parameters),
//! `eval.json` and `models/<model>/` (each trained model).

use crate::engine::checkpoint::{fingerprint, Checkpoint, CheckpointError};
use crate::engine::device;
use crate::engine::export::{self, ExportError};
use crate::engine::train::{Options, StepLog, TrainError, Trainer};
use crate::evaluate::{self, EvalError, Report};
use crate::ir::Recipe;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct RunOptions {
    /// Where the recipe's relative paths resolve.
    pub base: crate::manifest::Base,
    /// The run folder.
    pub dir: PathBuf,
    /// Stop each stage after this many steps (default: the recipe's length).
    pub steps: Option<u64>,
    /// Continue from the run folder's checkpoint.
    pub resume: bool,
    /// Write a checkpoint at least this often (besides the recipe's `checkpoint(every: n)`).
    pub checkpoint_seconds: f64,
    /// Export every trained model as a Hugging Face folder at the end.
    pub export: bool,
    /// The recipe file, recorded in the run folder (`run.json`) so that `kdc eval RUN_FOLDER`
    /// finds it.
    pub recipe_path: Option<PathBuf>,
    /// Where the steps and evaluations run.
    pub device: device::Device,
}

/// A backend for `device`, or the run's error.
fn backend(device: device::Device) -> Result<crate::engine::exec::SharedBackend, RunError> {
    device::open(device).map_err(|e| RunError::Train(TrainError::Backend(e)))
}

/// What a run reports as it goes.
pub enum Event<'a> {
    Stage {
        index: usize,
        name: &'a str,
        steps: u64,
        /// Optimiser steps per pass over the data.
        steps_per_epoch: u64,
        operations: usize,
        seconds: f64,
        data: Option<String>,
    },
    Resumed {
        stage: &'a str,
        steps: u64,
    },
    Step {
        log: &'a StepLog,
        total: u64,
    },
    Checkpoint(&'a Path),
    /// The training plot was written here.
    Plotted(&'a Path),
    Skipped {
        skipped: usize,
        read: usize,
        examples: &'a [String],
    },
    Eval(&'a Report),
    Exported {
        model: &'a str,
        dir: &'a Path,
    },
    Note(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Resume(String),
}

/// The outcome of a run.
pub struct Summary {
    pub reports: Vec<Report>,
    /// Every model's final parameters, by name.
    pub params: HashMap<String, Vec<f32>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn stage_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("stage-{name}.safetensors"))
}

/// Keeps the log lines a resumed run does not redo: those of earlier stages, and of this stage
/// up to the checkpoint's step.
fn truncate_log(path: &Path, recipe: &Recipe, stage: usize, steps: u64) -> Result<(), RunError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let earlier: Vec<&str> = recipe.stages[..stage]
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                return false;
            };
            let name = v["stage"].as_str().unwrap_or_default();
            let step = v["step"].as_u64().unwrap_or(u64::MAX);
            earlier.contains(&name) || (name == recipe.stages[stage].name && step <= steps)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out).map_err(io(path))
}

fn log_line(log: &StepLog) -> String {
    serde_json::json!({
        "stage": log.stage, "step": log.step, "loss": log.loss,
        "terms": log.terms.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<String, serde_json::Value>>(),
        "lr": log.lr, "grad_norm": log.grad_norm, "step_seconds": log.seconds,
    })
    .to_string()
}

/// Runs every stage of `recipe`, then its evaluations.
pub fn run(
    recipe: &Recipe,
    options: &RunOptions,
    mut event: impl FnMut(Event),
) -> Result<Summary, RunError> {
    // The device first (a missing GPU is reported before anything is written), opened once:
    // every stage and evaluation of the run shares it (a GPU's context and compiled kernels).
    let device = backend(options.device)?;
    let dir = &options.dir;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let print = crate::explain::ir(recipe);
    let fp = fingerprint(&print);
    let checkpoint_path = dir.join("checkpoint.safetensors");
    let log_path = dir.join("log.jsonl");
    let mut resume: Option<Checkpoint> = None;
    if options.resume {
        if !checkpoint_path.exists() {
            return Err(RunError::Resume(format!(
                "there is no checkpoint to resume in {}; run without --resume to start",
                dir.display()
            )));
        }
        let ck = Checkpoint::load(&checkpoint_path)?;
        if ck.fingerprint != fp {
            return Err(RunError::Resume(format!(
                "{} was written for another recipe (or an earlier version of this one): what the recipe \
                 computes has changed since; start afresh without --resume, or restore the recipe",
                checkpoint_path.display()
            )));
        }
        if ck.stage > recipe.stages.len() {
            return Err(RunError::Resume(format!(
                "{} names stage {} of a {}-stage recipe",
                checkpoint_path.display(),
                ck.stage + 1,
                recipe.stages.len()
            )));
        }
        truncate_log(
            &log_path,
            recipe,
            ck.stage.min(recipe.stages.len() - 1),
            ck.steps,
        )?;
        resume = Some(ck);
    } else if log_path.exists() {
        std::fs::remove_file(&log_path).map_err(io(&log_path))?;
    }
    {
        // What `kdc eval RUN_FOLDER` re-reads: the recipe file, or null for the built-in demo.
        let recipe_file = options
            .recipe_path
            .as_ref()
            .map(|p| std::fs::canonicalize(p).unwrap_or(p.clone()));
        let info = serde_json::json!({ "recipe": recipe_file, "fingerprint": fp });
        let file = dir.join("run.json");
        std::fs::write(
            &file,
            serde_json::to_string_pretty(&info).expect("json") + "\n",
        )
        .map_err(io(&file))?;
    }
    let first = resume.as_ref().map_or(0, |c| c.stage);
    let mut finals: Vec<Option<HashMap<String, Vec<f32>>>> = vec![None; recipe.stages.len()];
    for (i, stage) in recipe.stages.iter().enumerate().take(first) {
        let ck = Checkpoint::load(&stage_file(dir, &stage.name))?;
        finals[i] = Some(ck.params);
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(&log_path))?;
    for index in first..recipe.stages.len() {
        let stage = &recipe.stages[index];
        let started = Instant::now();
        let continuing = resume.take().filter(|c| c.stage == index && c.steps > 0);
        let initial = match (&continuing, stage.from) {
            (Some(c), _) => Some(c.params.clone()),
            (None, Some(from)) => finals[from].clone(),
            (None, None) => None,
        };
        let train_options = Options {
            steps: options.steps,
            base: options.base.clone(),
            log: None,
            random_missing_weights: false,
            initial,
            data_start: continuing.as_ref().and_then(|c| c.data),
        };
        let mut trainer = Trainer::on(recipe, index, &train_options, device.clone())?;
        if let Some(c) = &continuing {
            trainer
                .restore(c.steps, &c.moments)
                .map_err(RunError::Resume)?;
            event(Event::Resumed {
                stage: &stage.name,
                steps: c.steps,
            });
        }
        let total = options
            .steps
            .map_or(trainer.total_steps, |s| s.min(trainer.total_steps));
        event(Event::Stage {
            index,
            name: &stage.name,
            steps: total,
            steps_per_epoch: trainer.steps_per_epoch,
            operations: trainer.graph().nodes.len(),
            seconds: started.elapsed().as_secs_f64(),
            data: None,
        });
        match stage.train.precision {
            crate::ir::Precision::Fp32 => {}
            crate::ir::Precision::Bf16 if options.device == crate::engine::device::Device::Cpu => {
                event(Event::Note(format!(
                    "stage {}: precision(bf16) trains with bf16 autocast (products on bf16 factors, bf16-typed activations rounded); on the cpu it reproduces a GPU's bf16 arithmetic and is not faster than fp32",
                    stage.name
                )))
            }
            crate::ir::Precision::Bf16 => {}
            crate::ir::Precision::Fp16 => event(Event::Note(format!(
                "stage {}: precision(fp16) is not built yet on any backend ({}); this stage trains in fp32 (bf16 autocast is: precision(bf16))",
                stage.name, options.device
            ))),
        }
        let every = stage.train.checkpoint_every;
        let mut last_checkpoint = Instant::now();
        while trainer.steps_done() < total {
            let entry = trainer.train_step()?;
            writeln!(log, "{}", log_line(&entry)).map_err(io(&log_path))?;
            event(Event::Step { log: &entry, total });
            // Periodic evaluations, logged before the checkpoint of the same step so that a
            // resumed run neither loses nor repeats one.
            let periodic: Vec<&crate::ir::EvalSpec> = recipe
                .eval
                .iter()
                .filter(|e| e.every().is_some_and(|n| entry.step % n == 0) && entry.step < total)
                .filter(|e| stage.trainable.iter().any(|(m, _)| *m == e.model()))
                .collect();
            if !periodic.is_empty() {
                let mut params: HashMap<String, Vec<f32>> = HashMap::new();
                for f in finals.iter().flatten() {
                    params.extend(f.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                params.extend(trainer.parameters());
                let mut reports = Vec::new();
                for spec in periodic {
                    let report =
                        evaluate::run(recipe, spec, &params, &options.base, device.clone())?;
                    event(Event::Eval(&report));
                    reports.push(report);
                }
                if !reports.is_empty() {
                    let line = serde_json::json!({ "stage": stage.name, "step": entry.step, "eval": reports });
                    writeln!(log, "{line}").map_err(io(&log_path))?;
                }
            }
            let due = every.is_some_and(|n| entry.step % n == 0)
                || last_checkpoint.elapsed().as_secs_f64() >= options.checkpoint_seconds;
            if due && entry.step < total {
                save(&trainer, index, &fp, &checkpoint_path)?;
                last_checkpoint = Instant::now();
                event(Event::Checkpoint(&checkpoint_path));
            }
        }
        if let Some(stats) = trainer.data_stats() {
            if stats.skipped > 0 {
                event(Event::Skipped {
                    skipped: stats.skipped,
                    read: stats.read,
                    examples: &stats.examples,
                });
            }
        }
        let params: HashMap<String, Vec<f32>> = trainer.parameters().into_iter().collect();
        let file = stage_file(dir, &stage.name);
        Checkpoint {
            stage: index,
            steps: trainer.steps_done(),
            data: trainer.data_position(),
            fingerprint: fp.clone(),
            params: params.clone(),
            moments: HashMap::new(),
        }
        .save(&file)?;
        // The next stage starts afresh (or from its `from:`).
        Checkpoint {
            stage: index + 1,
            steps: 0,
            data: None,
            fingerprint: fp.clone(),
            params: HashMap::new(),
            moments: HashMap::new(),
        }
        .save(&checkpoint_path)?;
        event(Event::Checkpoint(&file));
        finals[index] = Some(params);
    }
    // Every model's latest parameters: later stages override earlier ones.
    let mut latest: HashMap<String, Vec<f32>> = HashMap::new();
    for f in finals.into_iter().flatten() {
        latest.extend(f);
    }
    let mut reports = Vec::new();
    for spec in &recipe.eval {
        let report = evaluate::run(recipe, spec, &latest, &options.base, device.clone())?;
        event(Event::Eval(&report));
        reports.push(report);
    }
    if !reports.is_empty() {
        let path = dir.join("eval.json");
        let text = serde_json::to_string_pretty(&reports).expect("json") + "\n";
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    if options.export {
        for model in trained_models(recipe) {
            let spec = &recipe.models[model];
            let out = dir.join("models").join(&spec.name);
            match export::hf_folder(spec, &latest, &out) {
                Ok(()) => {
                    let tensors = evaluate::reference_embeddings(recipe, model, &latest, &options.base, device.clone())?;
                    export::reference(&out, &tensors)?;
                    event(Event::Exported {
                        model: &spec.name,
                        dir: &out,
                    })
                }
                Err(ExportError::NotClip(m)) => {
                    event(Event::Note(format!("model `{m}` is not exported: its BERT text tower has no place in a Hugging Face CLIPModel")))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    // The plot is a convenience: a failure to draw it is a note, never a lost run.
    match crate::plot::write_plot(dir) {
        Ok(path) => event(Event::Plotted(&path)),
        Err(e) => event(Event::Note(format!("no plot: {e}"))),
    }
    Ok(Summary {
        reports,
        params: latest,
    })
}

/// Evaluates a recipe's `eval` list on the parameters a run folder holds (each finished
/// stage's, the latest winning); models no stage trained come from their weights.
/// With `checkpoint`, that checkpoint's parameters instead of the finished stages' (a stage
/// file, or `checkpoint.safetensors` mid-stage); the report then goes to standard error only.
pub fn evaluate_saved(
    recipe: &Recipe,
    base: &crate::manifest::Base,
    dir: &Path,
    checkpoint: Option<&Path>,
    device: device::Device,
    mut event: impl FnMut(Event),
) -> Result<Vec<Report>, RunError> {
    let mut params: HashMap<String, Vec<f32>> = HashMap::new();
    let mut found = 0;
    match checkpoint {
        Some(file) => {
            let ck = Checkpoint::load(file)?;
            if ck.params.is_empty() {
                return Err(RunError::Resume(format!(
                    "{} holds no parameters (a run between stages); evaluate a stage-<name>.safetensors instead",
                    file.display()
                )));
            }
            params.extend(ck.params);
            found += 1;
        }
        None => {
            for stage in &recipe.stages {
                let file = stage_file(dir, &stage.name);
                if file.exists() {
                    params.extend(Checkpoint::load(&file)?.params);
                    found += 1;
                }
            }
        }
    }
    for spec in &recipe.models {
        let prefix = format!("{}/", spec.name);
        if params.keys().any(|k| k.starts_with(&prefix)) {
            continue;
        }
        if spec.weights.is_some() {
            let values =
                crate::engine::weights::model_values(spec, base).map_err(TrainError::from)?;
            params.extend(values.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
        }
    }
    if found == 0 {
        event(Event::Note(format!(
            "{} holds no finished stage of this recipe: only models with weights can be evaluated",
            dir.display()
        )));
    }
    let mut reports = Vec::new();
    let mut skipped: Vec<&str> = Vec::new();
    let device = backend(device)?;
    for spec in &recipe.eval {
        let name = &recipe.models[spec.model()].name;
        let prefix = format!("{name}/");
        if !params.keys().any(|k| k.starts_with(&prefix)) {
            if !skipped.contains(&name.as_str()) {
                skipped.push(name);
                event(Event::Note(format!(
                    "model `{name}` is not evaluated: no stage here trained it and it has no `weights`"
                )));
            }
            continue;
        }
        let report = evaluate::run(recipe, spec, &params, base, device.clone())?;
        event(Event::Eval(&report));
        reports.push(report);
    }
    if reports.is_empty() && !recipe.eval.is_empty() {
        return Err(RunError::Resume(format!(
            "nothing to evaluate in {}: no finished stage, and no evaluated model has weights",
            checkpoint.unwrap_or(dir).display()
        )));
    }
    let path = dir.join("eval.json");
    if checkpoint.is_none() && dir.exists() {
        let text = serde_json::to_string_pretty(&reports).expect("json") + "\n";
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(reports)
}

/// Where a run folder's recipe came from (its `run.json`).
#[derive(Clone, Debug, PartialEq)]
pub enum RecipeSource {
    File(PathBuf),
    /// The recipe built into the binary (`kdc run` without a file).
    Builtin,
}

/// The recipe a run folder was trained from, or `None` when the folder has no `run.json`.
pub fn recipe_of(dir: &Path) -> Option<RecipeSource> {
    let text = std::fs::read_to_string(dir.join("run.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    match &v["recipe"] {
        serde_json::Value::String(s) => Some(RecipeSource::File(PathBuf::from(s))),
        serde_json::Value::Null => Some(RecipeSource::Builtin),
        _ => None,
    }
}

/// Models some stage trains.
fn trained_models(recipe: &Recipe) -> Vec<usize> {
    let mut out: Vec<usize> = recipe
        .stages
        .iter()
        .flat_map(|s| s.trainable.iter().map(|(m, _)| *m))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn save(trainer: &Trainer, stage: usize, fp: &str, path: &Path) -> Result<(), RunError> {
    let moments = trainer
        .moments()
        .into_iter()
        .map(|(n, m, v)| (n, (m, v)))
        .collect();
    Checkpoint {
        stage,
        steps: trainer.steps_done(),
        data: trainer.data_position(),
        fingerprint: fp.to_string(),
        params: trainer.parameters().into_iter().collect(),
        moments,
    }
    .save(path)?;
    Ok(())
}

/// Whether the run folder has a checkpoint (`kdc run --resume` would continue it).
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join("checkpoint.safetensors").exists()
}

/// Reports in a run folder's `eval.json`, for tools.
pub fn eval_path(dir: &Path) -> PathBuf {
    dir.join("eval.json")
}
