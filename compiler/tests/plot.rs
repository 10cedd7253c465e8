//! `plot.png` from a run folder: a synthetic two-stage log with several loss terms, an
//! evaluation logged during training, the final `eval.json`, and values that are not finite.

use kdc::plot::{self, write_plot, PlotError};
use std::fmt::Write as _;
use std::path::PathBuf;

/// A fresh folder under the system's temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("kdc-plot-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn report(kind: &str, model: &str, metrics: &[(&str, f64)]) -> serde_json::Value {
    serde_json::json!({
        "kind": kind, "model": model, "data": "synthetic (8 images)", "samples": 8,
        "metrics": metrics.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
    })
}

/// Two stages (`warmup`: one term, 60 steps; `distill`: three terms spanning four decades, 140
/// steps), an evaluation line half-way through `distill`, a step whose loss is `null` (as kdc
/// writes NaN) and one with Python's `NaN` and `Infinity`.
fn synthetic_log() -> String {
    let mut log = String::new();
    for step in 1..=60u64 {
        let t = step as f64;
        let clip = 4.6 * (-t / 40.0).exp() + 1.0 + 0.05 * (t * 1.7).sin();
        let loss = if step == 30 {
            serde_json::Value::Null
        } else {
            clip.into()
        };
        let line = serde_json::json!({
            "stage": "warmup", "step": step, "loss": loss, "lr": 1e-4 * (t / 60.0),
            "terms": { "clip_loss": clip }, "grad_norm": 1.0, "step_seconds": 0.1,
        });
        writeln!(log, "{line}").unwrap();
    }
    for step in 1..=140u64 {
        let t = step as f64;
        let decay = (-t / 50.0).exp();
        let (clip, kd, fd) = (
            3.0 * decay + 0.8 + 0.04 * (t * 2.3).sin(),
            2.0 * decay + 0.2,
            0.05 * decay + 0.0005,
        );
        let lr = 5e-5 * 0.5 * (1.0 + (std::f64::consts::PI * t / 140.0).cos());
        if step == 77 {
            // Python's json writes non-finite numbers as bare literals.
            writeln!(
                log,
                r#"{{"stage": "distill", "step": 77, "loss": NaN, "lr": {lr}, "terms": {{"clip_loss": Infinity, "kd": {kd}, "fd": {fd}}}, "step_seconds": 0.1}}"#
            )
            .unwrap();
            continue;
        }
        let line = serde_json::json!({
            "stage": "distill", "step": step, "loss": clip + 10.0 * kd + 100.0 * fd, "lr": lr,
            "terms": { "clip_loss": clip, "kd": kd, "fd": fd }, "grad_norm": 1.0, "step_seconds": 0.1,
        });
        writeln!(log, "{line}").unwrap();
        if step == 70 {
            let eval = serde_json::json!({
                "stage": "distill", "step": 70,
                "eval": [report("zero_shot", "student", &[("top1", 0.41), ("top5", 0.83)])],
            });
            writeln!(log, "{eval}").unwrap();
        }
    }
    log
}

fn synthetic_eval() -> String {
    serde_json::to_string_pretty(&serde_json::json!([
        report("zero_shot", "student", &[("top1", 0.52), ("top5", 0.91)]),
        report(
            "retrieval",
            "student",
            &[("image_to_text_R@1", 0.34), ("text_to_image_R@1", 0.3)]
        ),
    ]))
    .unwrap()
}

#[test]
fn plots_a_two_stage_run() {
    let dir = TempDir::new("two-stage");
    std::fs::write(dir.0.join("log.jsonl"), synthetic_log()).unwrap();
    std::fs::write(dir.0.join("eval.json"), synthetic_eval()).unwrap();
    let path = write_plot(&dir.0).expect("the plot is drawn");
    assert_eq!(path, dir.0.join("plot.png"));
    // Nothing but the inputs and the plot: the temporary file was renamed into place.
    let mut names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["eval.json", "log.jsonl", "plot.png"]);

    let image = image::open(&path).expect("plot.png decodes").to_rgb8();
    // Panels: loss, learning rate, zero-shot, retrieval; every legend fits the standard height.
    assert_eq!(
        image.dimensions(),
        (plot::WIDTH, plot::TITLE_HEIGHT + 4 * plot::PANEL_HEIGHT)
    );
    let first = *image.get_pixel(0, 0);
    assert!(
        image.pixels().any(|p| *p != first),
        "the plot is a single colour"
    );
    let colours: std::collections::HashSet<[u8; 3]> = image.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 50, "only {} colours", colours.len());
    // The title band holds nothing but text: dark pixels there mean the embedded font drew.
    let dark_in_title = (0..plot::TITLE_HEIGHT)
        .flat_map(|y| (0..plot::WIDTH).map(move |x| (x, y)))
        .filter(|&(x, y)| image.get_pixel(x, y).0.iter().all(|&c| c < 100))
        .count();
    assert!(
        dark_in_title > 200,
        "no text in the title band ({dark_in_title} dark pixels)"
    );
}

#[test]
fn a_run_without_evaluations_has_loss_and_learning_rate() {
    let dir = TempDir::new("no-eval");
    let log: String = synthetic_log()
        .lines()
        .filter(|l| !l.contains("\"eval\""))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.0.join("log.jsonl"), log).unwrap();
    let path = write_plot(&dir.0).unwrap();
    let image = image::open(&path).unwrap();
    assert_eq!(
        (image.width(), image.height()),
        (plot::WIDTH, plot::TITLE_HEIGHT + 2 * plot::PANEL_HEIGHT)
    );
}

#[test]
fn a_malformed_line_names_the_file_and_line() {
    let dir = TempDir::new("malformed");
    let mut lines: Vec<String> = synthetic_log().lines().take(5).map(String::from).collect();
    lines[2] = r#"{"stage": "warmup", "step": 3, "loss": 4.1"#.into();
    std::fs::write(dir.0.join("log.jsonl"), lines.join("\n")).unwrap();
    let err = write_plot(&dir.0).unwrap_err();
    match &err {
        PlotError::Line { path, line, .. } => {
            assert_eq!(path, &dir.0.join("log.jsonl"));
            assert_eq!(*line, 3);
        }
        other => panic!("expected a Line error, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("log.jsonl")
            && message.contains("line 3")
            && message.contains("not valid JSON"),
        "{message}"
    );
    assert!(!dir.0.join("plot.png").exists());

    // A field of the wrong type is malformed too.
    lines[2] = r#"{"stage": "warmup", "step": 3, "loss": "low"}"#.into();
    std::fs::write(dir.0.join("log.jsonl"), lines.join("\n")).unwrap();
    let message = write_plot(&dir.0).unwrap_err().to_string();
    assert!(
        message.contains("line 3") && message.contains("`loss`"),
        "{message}"
    );
}

#[test]
fn a_malformed_eval_file_is_named() {
    let dir = TempDir::new("bad-eval");
    std::fs::write(dir.0.join("log.jsonl"), synthetic_log()).unwrap();
    std::fs::write(dir.0.join("eval.json"), r#"{"kind": "zero_shot"}"#).unwrap();
    let err = write_plot(&dir.0).unwrap_err();
    assert!(matches!(err, PlotError::File { .. }), "{err:?}");
    assert!(err.to_string().contains("eval.json"), "{err}");
}

#[test]
fn missing_or_empty_logs_are_errors() {
    let dir = TempDir::new("empty");
    let err = write_plot(&dir.0).unwrap_err();
    assert!(
        matches!(err, PlotError::Read { .. }) && err.to_string().contains("log.jsonl"),
        "{err}"
    );
    std::fs::write(dir.0.join("log.jsonl"), "").unwrap();
    let err = write_plot(&dir.0).unwrap_err();
    assert!(matches!(err, PlotError::Empty { .. }), "{err:?}");
}
