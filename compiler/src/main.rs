//! The `kdc` command line. This is the only place that prints, and, with `kdc::FsLoader`, the
//! only place that touches the file system.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use kdc::codes::Code;
use kdc::diag::{render_all, RenderOptions};
use kdc::{compile, explain, format, FsLoader};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The recipe `kdc run` uses when given none: CLIP-KD's best combination at a size that trains
/// in seconds, with the tiny Hugging Face CLIP of the test fixtures as its teacher.
const DEFAULT_RECIPE: (&str, &str) = (
    "recipes/demo/clip_kd_small.kd",
    include_str!("../../recipes/demo/clip_kd_small.kd"),
);

/// Where the default recipe's relative paths resolve: its folder in the source tree.
const DEFAULT_BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/demo");

#[derive(Parser)]
#[command(
    name = "kdc",
    version,
    about = "A compiler for knowledge-distillation recipes for CLIP models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check recipes; report every error with its code and location.
    Check {
        /// Recipe files, or folders to search for .kd files.
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
    },
    /// Rewrite recipes in the canonical layout, keeping comments.
    Fmt {
        /// Do not write; exit with 1 if any file would change.
        #[arg(long)]
        check: bool,
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
    },
    /// Show what a recipe computes, what a diagnostic code means (`kdc explain KD0009`), or
    /// what a function computes (`kdc explain crd`).
    Explain {
        /// A recipe file, a diagnostic code or a function name.
        target: String,
        /// What to show of a recipe.
        #[arg(long, value_enum, default_value = "ir")]
        stage: ExplainStage,
    },
    /// Train a recipe (default: the shipped Fashion-MNIST demo).
    Run {
        recipe: Option<PathBuf>,
        /// Stop after this many optimiser steps (per stage).
        #[arg(long)]
        steps: Option<u64>,
        /// Append one JSON line per step here (default: runs/<recipe>/log.jsonl).
        #[arg(long)]
        log: Option<PathBuf>,
        /// Print a progress line every this many steps.
        #[arg(long, default_value_t = 10)]
        every: u64,
    },
    /// Zero-shot classification and image-text retrieval of a recipe's model or a checkpoint.
    Eval { target: PathBuf },
    /// Measure compile time, steady-state step time and peak memory of a recipe's first stage
    /// (on synthetic batches; frozen models without a weights file get random weights).
    Bench {
        recipe: PathBuf,
        /// Timed steps after the warm-up.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        steps: u64,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExplainStage {
    /// The syntax tree.
    Ast,
    /// The checked recipe: models, data, loss terms expanded to primitives with shapes,
    /// learnable parts, optimiser groups.
    Ir,
    /// The lowered training graph.
    Graph,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn render_options() -> RenderOptions {
    RenderOptions {
        color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

/// The .kd files named, searching folders recursively, in a stable order.
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            collect_kd(path, &mut found)
                .with_context(|| format!("reading folder {}", path.display()))?;
            found.sort();
            if found.is_empty() {
                bail!("no .kd files in {}", path.display());
            }
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn collect_kd(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_kd(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "kd") {
            out.push(path);
        }
    }
    Ok(())
}

/// The process's peak resident memory in MiB (Linux's VmHWM), if it can be read.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn data_name(source: &kdc::ir::DataSource) -> String {
    match source {
        kdc::ir::DataSource::Pairs { csv, .. } => csv.clone(),
        kdc::ir::DataSource::Folders { root, .. } => root.clone(),
        kdc::ir::DataSource::FashionMnist { .. } => "Fashion-MNIST".into(),
        kdc::ir::DataSource::Synthetic { .. } => "synthetic data".into(),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read recipe {}", path.display()))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { recipes } => {
            let files = expand(&recipes)?;
            let mut failed = 0;
            for path in &files {
                let text = read(path)?;
                let compiled = compile(&path.display().to_string(), &text, &FsLoader);
                if !compiled.diagnostics.is_empty() {
                    eprint!(
                        "{}",
                        render_all(&compiled.diagnostics, &compiled.sources, render_options())
                    );
                }
                if compiled.diagnostics.has_errors() {
                    failed += 1;
                }
            }
            if failed > 0 {
                eprintln!(
                    "{failed} of {} recipe{} failed to check",
                    files.len(),
                    if files.len() == 1 { "" } else { "s" }
                );
                Ok(ExitCode::from(1))
            } else {
                eprintln!(
                    "checked {} recipe{}: ok",
                    files.len(),
                    if files.len() == 1 { "" } else { "s" }
                );
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Fmt { check, recipes } => {
            let files = expand(&recipes)?;
            let mut changed = 0;
            let mut errors = 0;
            for path in &files {
                let text = read(path)?;
                let mut sources = kdc::source::SourceMap::new();
                let name = path.display().to_string();
                let file = sources.add(name.clone(), text.clone());
                match kdc::syntax::parse(file, &text) {
                    Ok(ast) => {
                        let formatted = format::format(&ast, &text);
                        if formatted != text {
                            changed += 1;
                            if check {
                                eprintln!("would reformat {name}");
                            } else {
                                std::fs::write(path, formatted)
                                    .with_context(|| format!("writing {name}"))?;
                                eprintln!("formatted {name}");
                            }
                        }
                    }
                    Err(diags) => {
                        errors += 1;
                        let mut all = kdc::diag::Diagnostics::default();
                        diags.into_iter().for_each(|d| all.push(d));
                        eprint!("{}", render_all(&all, &sources, render_options()));
                    }
                }
            }
            if errors > 0 || (check && changed > 0) {
                Ok(ExitCode::from(1))
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Explain { target, stage } => {
            if let Some(code) = Code::parse(&target) {
                println!("{}: {}\n\n{}", code, code.title(), code.explanation());
                return Ok(ExitCode::SUCCESS);
            }
            if !Path::new(&target).exists() {
                if let Some(text) = kdc::check::describe_function(&target) {
                    println!("{text}");
                    return Ok(ExitCode::SUCCESS);
                }
            }
            if target.to_ascii_uppercase().starts_with("KD") && !Path::new(&target).exists() {
                bail!(
                    "there is no diagnostic code {target}; codes run from KD0001 to {}",
                    Code::ALL.last().unwrap()
                );
            }
            let path = PathBuf::from(&target);
            let text = read(&path)?;
            let compiled = compile(&target, &text, &FsLoader);
            if !compiled.diagnostics.is_empty() {
                eprint!(
                    "{}",
                    render_all(&compiled.diagnostics, &compiled.sources, render_options())
                );
            }
            match stage {
                ExplainStage::Ast => {
                    let Some(program) = &compiled.program else {
                        return Ok(ExitCode::from(1));
                    };
                    print!("{}", explain::ast(&program.root().ast, &compiled.sources));
                    Ok(ExitCode::SUCCESS)
                }
                ExplainStage::Ir => match &compiled.recipe {
                    Some(recipe) => {
                        print!("{}", explain::ir(recipe));
                        Ok(ExitCode::SUCCESS)
                    }
                    None => Ok(ExitCode::from(1)),
                },
                ExplainStage::Graph => {
                    if compiled.recipe.is_none() {
                        return Ok(ExitCode::from(1));
                    }
                    let Some(recipe) = &compiled.recipe else {
                        return Ok(ExitCode::from(1));
                    };
                    print!("{}", kdc::engine::describe(recipe));
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Run {
            recipe,
            steps,
            log,
            every,
        } => {
            let (name, text, base) = match &recipe {
                Some(path) => (
                    path.display().to_string(),
                    read(path)?,
                    path.parent().map(Path::to_path_buf).unwrap_or_default(),
                ),
                None => (
                    DEFAULT_RECIPE.0.to_string(),
                    DEFAULT_RECIPE.1.to_string(),
                    PathBuf::from(DEFAULT_BASE),
                ),
            };
            let compiled = compile(&name, &text, &FsLoader);
            if !compiled.diagnostics.is_empty() {
                eprint!(
                    "{}",
                    render_all(&compiled.diagnostics, &compiled.sources, render_options())
                );
            }
            let Some(recipe) = compiled.recipe else {
                return Ok(ExitCode::from(1));
            };
            let stem = Path::new(&name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            let log = log.unwrap_or_else(|| PathBuf::from("runs").join(&stem).join("log.jsonl"));
            if let Some(dir) = log.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let options = kdc::engine::train::Options {
                steps,
                base,
                log: Some(log.clone()),
                random_missing_weights: false,
            };
            for (index, stage) in recipe.stages.iter().enumerate() {
                if !matches!(stage.data.source, kdc::ir::DataSource::Synthetic { .. }) {
                    eprintln!("note: stage {}: reading {} arrives with the data milestone; training on synthetic batches of the same shapes", stage.name, data_name(&stage.data.source));
                }
                let started = std::time::Instant::now();
                let mut trainer = kdc::engine::train::Trainer::new(&recipe, index, &options)?;
                let total = steps.unwrap_or(trainer.total_steps);
                eprintln!(
                    "stage {} ({} of {}): {} steps, graph of {} operations, compiled in {:.2} s",
                    stage.name,
                    index + 1,
                    recipe.stages.len(),
                    total,
                    trainer.graph().nodes.len(),
                    started.elapsed().as_secs_f64()
                );
                trainer.train(Some(total), Some(&log), |entry| {
                    if entry.step == 1 || entry.step % every.max(1) == 0 || entry.step == total {
                        let terms: Vec<String> = entry
                            .terms
                            .iter()
                            .map(|(k, v)| format!("{k} {v:.4}"))
                            .collect();
                        eprintln!(
                            "step {:>5}/{total}  loss {:.4}  [{}]  lr {:.2e}  |g| {:.3}  {:.0} ms",
                            entry.step,
                            entry.loss,
                            terms.join(", "),
                            entry.lr,
                            entry.grad_norm,
                            entry.seconds * 1e3
                        );
                    }
                })?;
            }
            eprintln!("log: {}", log.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { target } => {
            bail!("evaluation of {} arrives with real data and checkpoints (after the training engine)", target.display())
        }
        Command::Bench {
            recipe: path,
            steps,
            warmup,
        } => {
            let text = read(&path)?;
            let name = path.display().to_string();
            let started = std::time::Instant::now();
            let compiled = compile(&name, &text, &FsLoader);
            if !compiled.diagnostics.is_empty() {
                eprint!(
                    "{}",
                    render_all(&compiled.diagnostics, &compiled.sources, render_options())
                );
            }
            let Some(recipe) = compiled.recipe else {
                return Ok(ExitCode::from(1));
            };
            let check_seconds = started.elapsed().as_secs_f64();
            let options = kdc::engine::train::Options {
                steps: None,
                base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
                log: None,
                random_missing_weights: true,
            };
            let mut trainer = kdc::engine::train::Trainer::new(&recipe, 0, &options)?;
            let compile_seconds = started.elapsed().as_secs_f64();
            let report = |e: &kdc::engine::train::StepLog| {
                eprintln!("step {} {:.3} s loss {:.4}", e.step, e.seconds, e.loss)
            };
            let mut logs = trainer.train(Some(warmup), None, report)?;
            // The profile covers the measured steps only (warm-up touches fresh memory).
            kdc::engine::exec::reset_profile();
            logs.extend(trainer.train(Some(steps), None, report)?);
            let mut times: Vec<f64> = logs[warmup as usize..].iter().map(|l| l.seconds).collect();
            times.sort_by(f64::total_cmp);
            let half = times.len() / 2;
            let median = if times.len() % 2 == 0 {
                (times[half - 1] + times[half]) / 2.0
            } else {
                times[half]
            };
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            let peak = peak_rss_mib();
            let result = serde_json::json!({
                "impl": "kdc", "recipe": name, "batch": recipe.stages[0].data.batch,
                "check_s": check_seconds, "compile_s": compile_seconds,
                "median_step_s": median, "mean_step_s": mean, "peak_rss_mib": peak,
                "first_loss": logs.first().map(|l| l.loss), "last_loss": logs.last().map(|l| l.loss),
            });
            println!("{result}");
            for (op, seconds, calls) in kdc::engine::exec::profile() {
                let per_step = seconds / steps as f64;
                eprintln!(
                    "{op:<24} {per_step:>9.4} s/step {:>7} calls/step",
                    calls / steps
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
