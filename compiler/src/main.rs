//! The `kdc` command line. This is the only place that prints, and, with `kdc::FsLoader`, the
//! only place that touches the file system.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kdc::codes::Code;
use kdc::diag::{render_all, RenderOptions};
use kdc::engine::exec::Profiling;
use kdc::{explain, format, FsLoader};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The recipe `kdc run` uses when given none: the quickstart, which trains a teacher, distils
/// it into a small student beside an undistilled baseline, and evaluates all three, on the
/// Fashion-MNIST subset shipped in recipes/demo/data.
const DEFAULT_RECIPE: (&str, &str) = (
    "recipes/demo/quickstart.kd",
    include_str!("../../recipes/demo/quickstart.kd"),
);

/// Where the default recipe's relative paths resolve: its folder in the source tree, and the
/// manifest of the shipped library (recipes/kdc.toml), whose roots it uses.
const DEFAULT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/demo");
const DEFAULT_MANIFEST: (&str, &str) = (
    concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/kdc.toml"),
    include_str!("../../recipes/kdc.toml"),
);

/// A path of the source tree without the `compiler/..` detour.
fn source_tree(path: &str) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| kdc::manifest::clean(Path::new(path)))
}

/// The built-in recipe's view of the machine: the file system, with the shipped library's
/// manifest compiled in.
struct BuiltinLoader;

impl kdc::check::Loader for BuiltinLoader {
    fn read(&self, path: &Path) -> Option<String> {
        FsLoader.read(path)
    }
    fn manifest(&self, _recipe: &Path) -> Option<(PathBuf, String)> {
        Some((
            source_tree(DEFAULT_MANIFEST.0),
            DEFAULT_MANIFEST.1.to_string(),
        ))
    }
    fn env(&self, name: &str) -> Option<String> {
        FsLoader.env(name)
    }
    fn is_dir(&self, path: &Path) -> bool {
        FsLoader.is_dir(path)
    }
}

/// A recipe to load: a file, or the built-in quickstart.
#[derive(Clone, Copy)]
enum Source<'a> {
    File(&'a Path),
    Builtin,
}

/// A checked recipe and where its paths resolve.
struct Loaded {
    name: String,
    recipe: kdc::ir::Recipe,
    base: kdc::manifest::Base,
    manifest: Option<kdc::manifest::Manifest>,
}

impl Loaded {
    /// The run folder: `--dir`, or `<runs>/<recipe>` where `<runs>` is the manifest's
    /// `defaults.runs` (default: `runs` in the working folder).
    fn run_dir(&self, dir: Option<PathBuf>) -> PathBuf {
        dir.unwrap_or_else(|| {
            let stem = Path::new(&self.name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            let manifest_runs = self
                .manifest
                .as_ref()
                .and_then(|m| Some((m, m.defaults.runs.as_ref()?)));
            let runs = match manifest_runs {
                Some((_, runs)) if kdc::manifest::root_reference(runs).is_some() => {
                    self.base.join(runs)
                }
                Some((m, runs)) => m.dir.join(runs),
                None => PathBuf::from("runs"),
            };
            runs.join(stem)
        })
    }
}

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
    /// Run the `test` blocks of recipes and libraries: functions on literal tensors against
    /// expected values.
    Test {
        /// Files, or folders to search for .kd files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Snapshot-test recipes: what each computes, in a `.kd.snap` file beside it. Without a flag:
    /// records missing snapshots, and leaves a changed one's new text beside it
    /// (`.kd.snap.new`) with its diff, exiting 1.
    #[command(group(clap::ArgGroup::new("mode").args(["check", "update", "review"])))]
    Snap {
        /// Recipe files, or folders to search recursively.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Write nothing; exit 1 with a diff per changed recipe, and list new recipes and
        /// orphaned snapshots (for CI).
        #[arg(long)]
        check: bool,
        /// Accept every change: write new and changed snapshots, remove orphaned ones.
        #[arg(long)]
        update: bool,
        /// Walk through each new or changed snapshot on a terminal: accept, reject or skip.
        #[arg(long)]
        review: bool,
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
        /// Look the function up through this recipe (its own functions and every module it
        /// imports, user libraries included).
        #[arg(long = "in", value_name = "RECIPE")]
        within: Option<PathBuf>,
        /// With `--stage graph`: the device to explain the step for; `cuda` lists the CUDA
        /// kernels and estimates the step on `--gpu` (operations, bytes, memory, roofline time).
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        /// The GPU of a `--device cuda` estimate: A100, H100 or L4.
        #[arg(long, default_value = "A100")]
        gpu: String,
    },
    /// Train a recipe (default: the shipped quickstart), evaluate it and export its models.
    Run {
        recipe: Option<PathBuf>,
        /// Stop after this many optimiser steps (per stage).
        #[arg(long)]
        steps: Option<u64>,
        /// The run folder: log.jsonl, checkpoints, eval.json, models/ (default: runs/<recipe>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Continue the run folder's last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Print a progress line every this many steps (when standard error is not a terminal).
        #[arg(long, default_value_t = 10)]
        every: u64,
        /// Do not export the trained models as Hugging Face folders.
        #[arg(long)]
        no_export: bool,
        #[command(flatten)]
        settings: Settings,
    },
    /// Run a recipe's evaluations (zero-shot classification, retrieval) on the models of its
    /// run folder, or of a run folder given directly; models no stage trained come from their
    /// weights (which may be an exported Hugging Face folder).
    Eval {
        /// A recipe, a run folder (`runs/quickstart`), or one of its checkpoints
        /// (`runs/quickstart/stage-teacher_training.safetensors`).
        target: PathBuf,
        /// The run folder, for a recipe (default: runs/<recipe>).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Print the token ids each model's tokenizer gives, one JSON array per line (the texts
    /// are the arguments, or the lines of standard input).
    Tokenize {
        recipe: PathBuf,
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
        texts: Vec<String>,
    },
    /// Draw a run folder's plot.png again from its log.jsonl and eval.json: every loss term,
    /// the learning rate and every evaluation metric over steps
    Plot { dir: PathBuf },
    /// Measure compile time, steady-state step time and peak memory of a recipe's first stage
    /// (frozen models without a weights file get random weights); with --data, the data
    /// loader alone (images/s)
    Bench {
        recipe: PathBuf,
        /// Timed steps after the warm-up.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        steps: u64,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Time the first stage's data loader alone (decoding, preprocessing, tokenizing on its
        /// worker threads): batches and images per second, no model step.
        #[arg(long)]
        data: bool,
        #[command(flatten)]
        settings: Settings,
    },
}

/// Where a run computes: command-line options, else the manifest's `[defaults]`, else the CPU
/// with one thread per core.
#[derive(Args, Clone, Default)]
struct Settings {
    /// The device to train on (default: the manifest's `defaults.device`, else cpu).
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Compute threads (default: the manifest's `defaults.threads`, else one per core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum DeviceArg {
    Cpu,
    Cuda,
}

impl Settings {
    /// Applies the settings (the manifest filling what the command line leaves out): sizes
    /// the compute pool and returns the device. A device this build or machine cannot use is
    /// reported when its backend opens (`engine::device::open`), with the reason.
    fn apply(&self, manifest: Option<&kdc::manifest::Manifest>) -> kdc::engine::device::Device {
        use kdc::engine::device::Device;
        let defaults = manifest.map(|m| &m.defaults);
        let device = match (self.device, defaults.and_then(|d| d.device.as_deref())) {
            (Some(DeviceArg::Cuda), _) | (None, Some("cuda")) => Device::Cuda,
            _ => Device::Cpu,
        };
        let threads = self
            .threads
            .or_else(|| defaults.and_then(|d| d.threads))
            .filter(|&n| n > 0);
        if let Some(n) = threads {
            // The pool is global and built once; a second build (tests calling twice) is
            // harmless.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
        }
        device
    }
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

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read recipe {}", path.display()))
}

/// Writes to standard output. A closed pipe (`kdc explain … | head`) ends the output quietly
/// instead of panicking.
fn print(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to standard output"),
    }
}

/// Compiles a recipe and prints its diagnostics (to standard error).
fn load(name: &str, text: &[u8]) -> kdc::Compiled {
    load_with(name, text, &FsLoader)
}

/// [`load`] through a given view of the machine (the built-in recipe's embeds its manifest).
fn load_with(name: &str, text: &[u8], loader: &(dyn kdc::check::Loader + Sync)) -> kdc::Compiled {
    let compiled = kdc::compile_bytes(name, text, loader);
    if !compiled.diagnostics.is_empty() {
        eprint!(
            "{}",
            render_all(&compiled.diagnostics, &compiled.sources, render_options())
        );
    }
    compiled
}

/// The checked recipe of a file (or the built-in one), or `None` after its diagnostics (or, for
/// a library of functions, a note that it is not a recipe) are printed.
fn load_recipe(source: Source<'_>) -> Result<Option<Loaded>> {
    let (name, text, dir) = match source {
        Source::File(path) => (
            path.display().to_string(),
            read(path)?,
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
        Source::Builtin => (
            DEFAULT_RECIPE.0.to_string(),
            DEFAULT_RECIPE.1.as_bytes().to_vec(),
            source_tree(DEFAULT_DIR),
        ),
    };
    let compiled = match source {
        Source::File(_) => load(&name, &text),
        Source::Builtin => load_with(&name, &text, &BuiltinLoader),
    };
    if compiled.recipe.is_none() && !compiled.diagnostics.has_errors() && compiled.is_library() {
        eprintln!(
            "error: {name} is a library of functions (no `loss`, `data` or `train`); \
             import it from a recipe with `use`, or check it with `kdc check {name}`"
        );
    }
    let Some(recipe) = compiled.recipe else {
        return Ok(None);
    };
    let manifest = compiled.program.and_then(|p| p.manifest);
    let base = kdc::manifest::Base::with_manifest(dir, manifest.as_ref());
    Ok(Some(Loaded {
        name,
        recipe,
        base,
        manifest,
    }))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { recipes } => check(&recipes),
        Command::Test { paths } => run_tests(&paths),
        Command::Fmt { check, recipes } => fmt(&recipes, check),
        Command::Snap {
            paths,
            check,
            update,
            review,
        } => snap(
            &paths,
            match (check, update, review) {
                (true, _, _) => SnapMode::Check,
                (_, true, _) => SnapMode::Update,
                (_, _, true) => SnapMode::Review,
                _ => SnapMode::Record,
            },
        ),
        Command::Explain {
            target,
            stage,
            within,
            device,
            gpu,
        } => explain(&target, stage, within.as_deref(), device, &gpu),
        Command::Run {
            recipe,
            steps,
            dir,
            resume,
            every,
            no_export,
            settings,
        } => train(
            recipe.as_deref(),
            steps,
            dir,
            resume,
            every,
            !no_export,
            &settings,
        ),
        Command::Eval {
            target,
            dir,
            settings,
        } => eval(&target, dir, &settings),
        Command::Plot { dir } => {
            let path = kdc::plot::write_plot(&dir)?;
            eprintln!("plot: {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Tokenize {
            recipe,
            model,
            texts,
        } => tokenize(&recipe, model.as_deref(), texts),
        Command::Bench {
            recipe,
            steps,
            warmup,
            data: true,
            settings,
        } => bench_data(&recipe, steps, warmup, &settings),
        Command::Bench {
            recipe,
            steps,
            warmup,
            data: false,
            settings,
        } => bench(&recipe, steps, warmup, &settings),
    }
}

/// `kdc check`: every recipe's diagnostics; exit 1 if any has an error.
fn check(recipes: &[PathBuf]) -> Result<ExitCode> {
    let files = expand(recipes)?;
    let mut failed = 0;
    let mut libraries = 0;
    for path in &files {
        let compiled = load(&path.display().to_string(), &read(path)?);
        if compiled.diagnostics.has_errors() {
            failed += 1;
        } else if compiled.is_library() {
            libraries += 1;
        }
    }
    let plural = if files.len() == 1 { "" } else { "s" };
    if failed > 0 {
        eprintln!("{failed} of {} file{plural} failed to check", files.len());
        Ok(ExitCode::from(1))
    } else {
        let recipes = files.len() - libraries;
        let what = match (recipes, libraries) {
            (r, 0) => format!("{r} recipe{}", if r == 1 { "" } else { "s" }),
            (0, l) => format!("{l} librar{}", if l == 1 { "y" } else { "ies" }),
            (r, l) => format!(
                "{r} recipe{} and {l} librar{}",
                if r == 1 { "" } else { "s" },
                if l == 1 { "y" } else { "ies" }
            ),
        };
        eprintln!("checked {what}: ok");
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SnapMode {
    Record,
    Check,
    Update,
    Review,
}

/// `kdc snap`: compares every recipe's snapshot and records, checks, updates or reviews.
fn snap(paths: &[PathBuf], mode: SnapMode) -> Result<ExitCode> {
    use kdc::snap::{accept, diff, pend, pending_path, remove_if_present, Answer, Outcome};
    if mode == SnapMode::Review && !std::io::stdin().is_terminal() {
        bail!("--review asks about each change on a terminal; in scripts, use --check (compare) or --update (accept all)");
    }
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let survey = kdc::snap::survey(paths, &FsLoader, render_options().color)?;
    let (mut unchanged, mut changed, mut new, mut failed, mut orphaned) = (0, 0, 0, 0, 0);
    let mut out = String::new();
    for entry in &survey.entries {
        let (recipe, snapshot) = (entry.recipe.display(), entry.snapshot.display());
        match &entry.outcome {
            Outcome::Unchanged => {
                unchanged += 1;
                if mode != SnapMode::Check {
                    remove_if_present(&pending_path(&entry.snapshot))?;
                }
            }
            Outcome::New { body } => {
                new += 1;
                match mode {
                    SnapMode::Check => out.push_str(&format!(
                        "new: {recipe} has no snapshot (record it with `kdc snap`)\n"
                    )),
                    SnapMode::Record | SnapMode::Update => {
                        accept(&entry.recipe, &entry.snapshot, body)?;
                        eprintln!("recorded {snapshot}");
                    }
                    SnapMode::Review => {}
                }
            }
            Outcome::Changed { old, new: now } => {
                changed += 1;
                match mode {
                    SnapMode::Check => out.push_str(&diff(old, now, &entry.snapshot, color)),
                    SnapMode::Record => {
                        out.push_str(&diff(old, now, &entry.snapshot, color));
                        pend(&entry.recipe, &entry.snapshot, now)?;
                    }
                    SnapMode::Update => {
                        accept(&entry.recipe, &entry.snapshot, now)?;
                        eprintln!("updated {snapshot}");
                    }
                    SnapMode::Review => {}
                }
            }
            Outcome::Failed { diagnostics } => {
                failed += 1;
                eprint!("{diagnostics}");
                eprintln!("{recipe} does not check; its snapshot is left as it was");
            }
            Outcome::Orphaned => {
                orphaned += 1;
                match mode {
                    SnapMode::Update => {
                        std::fs::remove_file(&entry.snapshot)
                            .with_context(|| format!("removing {snapshot}"))?;
                        remove_if_present(&pending_path(&entry.snapshot))?;
                        eprintln!("removed orphaned {snapshot} (no recipe {recipe})");
                    }
                    _ => out.push_str(&format!(
                        "orphaned: {snapshot} has no recipe {recipe} (`kdc snap --update` removes it)\n"
                    )),
                }
            }
        }
    }
    print(&out)?;
    let mut left = changed + new;
    if mode == SnapMode::Review {
        let answers = kdc::snap::review(
            &survey.entries,
            &mut std::io::stdin().lock(),
            &mut std::io::stdout().lock(),
            color,
        )?;
        left = answers.iter().filter(|(_, a)| *a != Answer::Accept).count();
    }
    let recipes = survey.entries.len() - orphaned;
    let mut summary = format!(
        "snap: {recipes} recipe{}: {unchanged} unchanged, {changed} changed, {new} new, {failed} failed",
        if recipes == 1 { "" } else { "s" }
    );
    if orphaned > 0 {
        summary.push_str(&format!(
            "; {orphaned} orphaned snapshot{}",
            if orphaned == 1 { "" } else { "s" }
        ));
    }
    if !survey.libraries.is_empty() {
        summary.push_str(&format!(
            " ({} librar{} of functions: no snapshot of their own)",
            survey.libraries.len(),
            if survey.libraries.len() == 1 {
                "y"
            } else {
                "ies"
            }
        ));
    }
    if !survey.excluded.is_empty() {
        summary.push_str(&format!(
            " ({} excluded by kdc.toml)",
            survey.excluded.len()
        ));
    }
    eprintln!("{summary}");
    let ok = failed == 0
        && match mode {
            SnapMode::Check => changed + new + orphaned == 0,
            SnapMode::Record => changed == 0,
            SnapMode::Update => true,
            SnapMode::Review => left == 0,
        };
    if mode == SnapMode::Record && changed > 0 {
        eprintln!("the new text of each changed snapshot is beside it (.kd.snap.new): accept with `kdc snap --update` or `--review`");
    }
    if mode == SnapMode::Check && changed + new + orphaned > 0 {
        eprintln!("snapshots differ: review with `kdc snap --review`, or accept all with `kdc snap --update`");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `kdc test`: every `test` block of every file; exit 1 if one fails or does not check.
fn run_tests(paths: &[PathBuf]) -> Result<ExitCode> {
    let files = expand(paths)?;
    let (mut passed, mut failed, mut broken) = (0, 0, 0);
    for path in &files {
        let name = path.display().to_string();
        let bytes = read(path)?;
        let compiled = kdc::compile_bytes(&name, &bytes, &FsLoader);
        let Some(program) = &compiled.program else {
            eprint!(
                "{}",
                render_all(&compiled.diagnostics, &compiled.sources, render_options())
            );
            broken += 1;
            continue;
        };
        let has_tests = program
            .root()
            .ast
            .items
            .iter()
            .any(|i| matches!(i, kdc::syntax::ast::Item::Test(_)));
        if !has_tests {
            continue;
        }
        if !compiled.diagnostics.is_empty() {
            eprint!(
                "{}",
                render_all(&compiled.diagnostics, &compiled.sources, render_options())
            );
        }
        if compiled.diagnostics.has_errors() {
            broken += 1;
        }
        for o in kdc::testing::run(&compiled.tests) {
            match o.failure {
                None => {
                    passed += 1;
                    println!("test {name} {} ... ok", o.name);
                }
                Some(why) => {
                    failed += 1;
                    println!("test {name} {} ... FAILED", o.name);
                    for line in why.lines() {
                        println!("    {line}");
                    }
                }
            }
        }
    }
    println!(
        "{passed} passed, {failed} failed{}",
        if broken > 0 {
            format!(", {broken} file(s) with errors")
        } else {
            String::new()
        }
    );
    Ok(if failed + broken > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `kdc fmt [--check]`.
fn fmt(recipes: &[PathBuf], check: bool) -> Result<ExitCode> {
    let files = expand(recipes)?;
    let mut changed = 0;
    let mut errors = 0;
    for path in &files {
        let bytes = read(path)?;
        let name = path.display().to_string();
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                // The checker's diagnostic for a file that is not UTF-8.
                errors += 1;
                load(&name, e.as_bytes());
                continue;
            }
        };
        let mut sources = kdc::source::SourceMap::new();
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

/// `kdc explain`: a diagnostic code, a function, or a recipe at one stage.
fn explain(
    target: &str,
    stage: ExplainStage,
    within: Option<&Path>,
    device: DeviceArg,
    gpu: &str,
) -> Result<ExitCode> {
    let gpu = match kdc::engine::cost::gpu(gpu) {
        Some(g) => g,
        None => bail!(
            "kdc has no figures for the GPU `{gpu}`; it knows {}",
            kdc::engine::cost::GPUS
                .iter()
                .map(|g| g.name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if let Some(recipe) = within {
        let name = recipe.display().to_string();
        let compiled = load(&name, &read(recipe)?);
        let found = compiled
            .program
            .as_ref()
            .and_then(|p| kdc::check::describe_in_program(p, &compiled.sources, target))
            .or_else(|| kdc::check::describe_function(target));
        return match found {
            Some(text) => {
                print(&format!("{text}\n"))?;
                Ok(ExitCode::SUCCESS)
            }
            None => bail!("{name} defines and imports no function `{target}`, and there is no built-in of that name"),
        };
    }
    if let Some(code) = Code::parse(target) {
        print(&format!(
            "{}: {}\n\n{}\n",
            code,
            code.title(),
            code.explanation()
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let is_file = Path::new(target).exists();
    if !is_file {
        if let Some(text) = kdc::check::describe_function(target) {
            print(&format!("{text}\n"))?;
            return Ok(ExitCode::SUCCESS);
        }
        if !target.ends_with(".kd") && !target.to_ascii_uppercase().starts_with("KD") {
            bail!("there is no built-in or standard-library function `{target}`; for a function of your own, name the recipe that imports it: `kdc explain {target} --in RECIPE`");
        }
        if target.to_ascii_uppercase().starts_with("KD") {
            bail!(
                "there is no diagnostic code {target}; codes run from KD0001 to {}",
                Code::ALL.last().unwrap()
            );
        }
    }
    let compiled = load(target, &read(Path::new(target))?);
    let text = match (stage, &compiled.recipe, &compiled.program) {
        (ExplainStage::Ast, _, Some(program)) => {
            explain::ast(&program.root().ast, &compiled.sources)
        }
        (ExplainStage::Ir, Some(recipe), _) => explain::ir(recipe),
        (ExplainStage::Graph, Some(recipe), _) => {
            // The step is planned as on the CPU; for cuda, its kernels and a roofline
            // estimate (no GPU needed).
            let backend = kdc::engine::device::cpu();
            let guard = kdc::engine::exec::lock(&backend);
            match device {
                DeviceArg::Cpu => explain::graph(recipe, &**guard),
                DeviceArg::Cuda => explain::cuda(recipe, &**guard, gpu),
            }
        }
        _ => return Ok(ExitCode::from(1)),
    };
    print(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// `kdc run`: trains every stage of a recipe (default: the shipped quickstart), evaluates it
/// and exports its trained models.
fn train(
    recipe_path: Option<&Path>,
    steps: Option<u64>,
    dir: Option<PathBuf>,
    resume: bool,
    every: u64,
    export: bool,
    settings: &Settings,
) -> Result<ExitCode> {
    let source = match recipe_path {
        Some(path) => Source::File(path),
        None => Source::Builtin,
    };
    let Some(loaded) = load_recipe(source)? else {
        return Ok(ExitCode::from(1));
    };
    let device = settings.apply(loaded.manifest.as_ref());
    let dir = loaded.run_dir(dir);
    let recipe = &loaded.recipe;
    let options = kdc::run::RunOptions {
        device,
        base: loaded.base.clone(),
        dir: dir.clone(),
        steps,
        resume,
        checkpoint_seconds: 300.0,
        export,
        recipe_path: recipe_path.map(Path::to_path_buf),
    };
    let terminal = std::io::stderr().is_terminal();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut samples_per_step = 0usize;
    let mut stage_name = String::new();
    let mut per_epoch = 1u64;
    let stages = recipe.stages.len();
    let summary = kdc::run::run(recipe, &options, |event| match event {
        kdc::run::Event::Stage {
            index,
            name,
            steps,
            steps_per_epoch,
            operations,
            seconds,
            ..
        } => {
            per_epoch = steps_per_epoch;
            stage_name = name.to_string();
            samples_per_step = (recipe.stages[index].data.batch
                * recipe.stages[index].train.accumulate.max(1))
                as usize;
            eprintln!(
                "stage {name} ({} of {stages}): {steps} steps, graph of {operations} operations, compiled in {seconds:.2} s",
                index + 1
            );
            if terminal {
                let b = indicatif::ProgressBar::new(steps);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, eta {eta})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b.set_prefix(name.to_string());
                bar = Some(b);
            }
        }
        kdc::run::Event::Resumed { stage, steps } => {
            eprintln!("resuming stage {stage} after step {steps}")
        }
        kdc::run::Event::Step { log: entry, total } => {
            let terms: Vec<String> = entry
                .terms
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            let rate = samples_per_step as f64 / entry.seconds.max(1e-9);
            let epoch = (entry.step - 1) / per_epoch.max(1) + 1;
            match &bar {
                Some(b) => {
                    b.set_position(entry.step);
                    b.set_message(format!(
                        "epoch {epoch} loss {:.4} [{}] {rate:.0} samples/s",
                        entry.loss,
                        terms.join(", ")
                    ));
                }
                None => {
                    if entry.step == 1 || entry.step % every.max(1) == 0 || entry.step == total {
                        eprintln!(
                            "{stage_name} epoch {epoch} step {:>5}/{total}  loss {:.4}  [{}]  lr {:.2e}  |g| {:.3}  {:.0} ms  {rate:.0} samples/s",
                            entry.step,
                            entry.loss,
                            terms.join(", "),
                            entry.lr,
                            entry.grad_norm,
                            entry.seconds * 1e3
                        );
                    }
                }
            }
            if entry.step == total {
                if let Some(b) = bar.take() {
                    b.finish();
                }
            }
        }
        kdc::run::Event::Checkpoint(path) => {
            if bar.is_none() {
                eprintln!("checkpoint: {}", path.display());
            }
        }
        kdc::run::Event::Skipped {
            skipped,
            read,
            examples,
        } => {
            eprintln!("note: {skipped} of {read} samples could not be read and were skipped, for example:");
            for e in examples {
                eprintln!("  {e}");
            }
        }
        kdc::run::Event::Eval(report) => match &bar {
            Some(b) => b.println(report.to_string()),
            None => eprintln!("{report}"),
        },
        kdc::run::Event::Exported { model, dir } => {
            eprintln!(
                "exported {model}: {} (Hugging Face CLIPModel)",
                dir.display()
            )
        }
        kdc::run::Event::Plotted(path) => eprintln!("plot: {}", path.display()),
        kdc::run::Event::Note(note) => eprintln!("note: {note}"),
    })?;
    let _ = summary;
    eprintln!(
        "run folder: {} (log.jsonl, checkpoints{})",
        dir.display(),
        if recipe.eval.is_empty() {
            ""
        } else {
            ", eval.json"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `kdc eval`: a recipe's evaluations on its run folder's models.
fn eval(target: &Path, dir: Option<PathBuf>, settings: &Settings) -> Result<ExitCode> {
    // A checkpoint file of a run folder: that checkpoint's parameters, the folder's recipe.
    let checkpoint =
        (target.extension().is_some_and(|e| e == "safetensors")).then(|| target.to_path_buf());
    let folder = match &checkpoint {
        Some(file) => Some(file.parent().map(Path::to_path_buf).unwrap_or_default()),
        None => target.is_dir().then(|| target.to_path_buf()),
    };
    let (loaded, dir) = if let Some(folder) = folder {
        let source = kdc::run::recipe_of(&folder).with_context(|| {
            format!(
                "{} is not a run folder (no run.json naming its recipe)",
                folder.display()
            )
        })?;
        let dir = dir.unwrap_or(folder);
        let loaded = match &source {
            kdc::run::RecipeSource::File(path) => load_recipe(Source::File(path))?,
            kdc::run::RecipeSource::Builtin => load_recipe(Source::Builtin)?,
        };
        (loaded, Some(dir))
    } else {
        (load_recipe(Source::File(target))?, dir)
    };
    let Some(loaded) = loaded else {
        return Ok(ExitCode::from(1));
    };
    let device = settings.apply(loaded.manifest.as_ref());
    let dir = loaded.run_dir(dir);
    let (name, recipe) = (&loaded.name, &loaded.recipe);
    if recipe.eval.is_empty() {
        bail!("{name} has no `eval = [...]`; add for example `eval = [zero_shot(model: student, data: fashion_mnist(split: \"test\", batch: 256))]`");
    }
    kdc::run::evaluate_saved(
        recipe,
        &loaded.base,
        &dir,
        checkpoint.as_deref(),
        device,
        |event| match event {
            kdc::run::Event::Eval(report) => eprintln!("{report}"),
            kdc::run::Event::Note(note) => eprintln!("note: {note}"),
            _ => {}
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `kdc tokenize`: what each model's text tower reads.
fn tokenize(recipe_path: &Path, model: Option<&str>, texts: Vec<String>) -> Result<ExitCode> {
    let Some(loaded) = load_recipe(Source::File(recipe_path))? else {
        return Ok(ExitCode::from(1));
    };
    let (recipe, base) = (&loaded.recipe, &loaded.base);
    let models: Vec<&kdc::model::ModelSpec> = match model {
        Some(name) => match recipe.models.iter().find(|m| m.name == name) {
            Some(m) => vec![m],
            None => bail!(
                "{} has no model `{name}`; its models are {}",
                recipe_path.display(),
                recipe
                    .models
                    .iter()
                    .map(|m| format!("`{}`", m.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        None => recipe.models.iter().collect(),
    };
    // Models that read text the same way share one line; each distinct tokenizer gets its own.
    let mut groups: Vec<(Vec<&str>, &kdc::model::TokenizerSpec)> = Vec::new();
    for m in &models {
        match groups.iter_mut().find(|(_, spec)| **spec == m.tokenizer) {
            Some((names, _)) => names.push(&m.name),
            None => groups.push((vec![&m.name], &m.tokenizer)),
        }
    }
    let tokenizers = groups
        .iter()
        .map(|(names, spec)| {
            kdc::tokenize::Tokenizer::load(spec, base)
                .with_context(|| format!("model `{}`", names[0]))
        })
        .collect::<Result<Vec<_>>>()?;
    let texts: Vec<String> = if texts.is_empty() {
        use std::io::BufRead;
        std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<_>>()
            .context("reading standard input")?
    } else {
        texts
    };
    // One line per text: the token ids up to and including the end token, as JSON. With
    // several distinct tokenizers each line is prefixed by the models that read it.
    let mut out = String::new();
    for text in &texts {
        for ((names, _), t) in groups.iter().zip(&tokenizers) {
            let e = t.encode(text);
            let n = e.mask.iter().filter(|&&m| m == 1).count();
            if groups.len() > 1 {
                out.push_str(&names.join(","));
                out.push('\t');
            }
            out.push_str(&serde_json::to_string(&e.ids[..n]).expect("json"));
            out.push('\n');
        }
    }
    print(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// `kdc bench --data`: the first stage's loader alone, as training builds it (the views and
/// tokenizers its graph reads, training augmentation): `steps` batches after `warmup`.
fn bench_data(path: &Path, steps: u64, warmup: u64, settings: &Settings) -> Result<ExitCode> {
    let Some(loaded) = load_recipe(Source::File(path))? else {
        return Ok(ExitCode::from(1));
    };
    settings.apply(loaded.manifest.as_ref());
    let (name, recipe, base) = (&loaded.name, &loaded.recipe, &loaded.base);
    let backend = kdc::engine::device::cpu();
    let inputs = {
        let b = kdc::engine::exec::lock(&backend);
        let options = kdc::engine::compile::Options::train();
        kdc::engine::compile::compile(recipe, 0, &options, &**b)
            .graph
            .inputs
    };
    let mut batches =
        kdc::engine::batches::Batches::open(recipe, 0, &inputs, base, Default::default(), true)?;
    if let kdc::engine::batches::Batches::Synthetic { .. } = batches {
        bail!("{name}: the first stage reads synthetic data, which has no loader to time");
    }
    for _ in 0..warmup {
        batches.pull()?;
    }
    let started = std::time::Instant::now();
    let mut samples = 0;
    for _ in 0..steps {
        samples += batches.pull()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let result = serde_json::json!({
        "recipe": name, "batch": recipe.stages[0].data.batch, "batches": steps,
        "workers": batches.workers(), "seconds": seconds,
        "batches_per_s": steps as f64 / seconds, "images_per_s": samples as f64 / seconds,
        "skipped": batches.stats().map_or(0, |s| s.skipped),
    });
    print(&format!("{result}\n"))?;
    Ok(ExitCode::SUCCESS)
}

/// `kdc bench`: compile time, median step time and peak memory of the first stage (JSON on
/// standard output); `KDC_PROFILE=1` (or `=shapes`) adds the time per operation.
fn bench(path: &Path, steps: u64, warmup: u64, settings: &Settings) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let Some(loaded) = load_recipe(Source::File(path))? else {
        return Ok(ExitCode::from(1));
    };
    let device = settings.apply(loaded.manifest.as_ref());
    let (name, recipe) = (&loaded.name, &loaded.recipe);
    let check_seconds = started.elapsed().as_secs_f64();
    let options = kdc::engine::train::Options {
        steps: None,
        base: loaded.base.clone(),
        log: None,
        random_missing_weights: true,
        ..Default::default()
    };
    let backend = kdc::engine::device::open(device)?;
    let mut trainer = kdc::engine::train::Trainer::on(recipe, 0, &options, backend)?;
    let compile_seconds = started.elapsed().as_secs_f64();
    let report = |e: &kdc::engine::train::StepLog| {
        eprintln!("step {} {:.3} s loss {:.4}", e.step, e.seconds, e.loss)
    };
    let mut logs = trainer.train(Some(warmup), None, report)?;
    // The profile covers the measured steps only (warm-up touches fresh memory).
    let profiling = match std::env::var("KDC_PROFILE").as_deref() {
        Ok("shapes") => Profiling::ByShape,
        Ok(_) => Profiling::ByKind,
        Err(_) => Profiling::Off,
    };
    trainer.executable().set_profiling(profiling);
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
    // Achieved arithmetic rate against the step's operation count (engine::cost's model),
    // and on a GPU kdc has figures for, the share of its peak.
    let (device_name, peak_device) = {
        let b = kdc::engine::exec::lock(trainer.executable().backend());
        (b.device_name(), b.peak_memory_bytes())
    };
    // (The operation count does not depend on the GPU the estimate is for.)
    let estimate =
        kdc::engine::cost::estimate(trainer.executable().compiled(), kdc::engine::cost::GPUS[0]);
    let flops = estimate.flops;
    let achieved_tflops = flops / median / 1e12;
    let gpu = kdc::engine::cost::gpu(&device_name);
    // Under bf16 autocast the share that matters is of the tensor cores' peak.
    let bf16 = estimate.precision == kdc_backend::Dtype::Bf16;
    let result = serde_json::json!({
        "impl": "kdc", "recipe": name, "batch": recipe.stages[0].data.batch,
        "device": device_name,
        "check_s": check_seconds, "compile_s": compile_seconds,
        "median_step_s": median, "mean_step_s": mean, "peak_rss_mib": peak_rss_mib(),
        "peak_device_mib": peak_device.map(|b| b as f64 / (1u64 << 20) as f64),
        "flops_per_step": flops, "achieved_tflops": achieved_tflops,
        "precision": estimate.precision.name(),
        "fp32_peak_share": gpu.map(|g| achieved_tflops / g.fp32_tflops),
        "bf16_peak_share": gpu.filter(|_| bf16).map(|g| achieved_tflops / g.bf16_tflops),
        "first_loss": logs.first().map(|l| l.loss), "last_loss": logs.last().map(|l| l.loss),
    });
    print(&format!("{result}\n"))?;
    for (op, seconds, calls) in trainer.executable().profile() {
        let per_step = seconds / steps as f64;
        eprintln!(
            "{op:<24} {per_step:>9.4} s/step {:>7} calls/step",
            calls / steps
        );
    }
    Ok(ExitCode::SUCCESS)
}
