//! The training plot: `plot.png` beside a run's log, drawn from the run folder's files alone.
//!
//! It reads `log.jsonl` (one JSON object per optimiser step: `stage`, `step`, `loss`, `lr`,
//! `terms`; and lines `{"stage", "step", "eval": [reports…]}` of evaluations made during
//! training) and `eval.json` (the final evaluations, if any), and draws one panel per quantity
//! group, all over the global step (the steps of every stage one after the other, each stage
//! restarting at 1 in the log):
//!
//! * the total loss and every loss term (a logarithmic axis when every value is positive and
//!   they span more than two decades); long noisy series are drawn faint with a centred moving
//!   average over them;
//! * the learning rate;
//! * the evaluation metrics in percent, one panel per kind of evaluation (`zero_shot`,
//!   `retrieval`, …): those logged during training at their step, those of `eval.json` at the
//!   last step.
//!
//! Stage boundaries are vertical lines with the stages' names above each panel; every panel has
//! its legend (with each series' last value) in a column on its right.
//!
//! Values that are not finite (`null` as kdc writes NaN and infinities, `NaN`/`Infinity` as
//! Python's `json` does) are left out. Text is drawn with a font embedded in the binary
//! (DejaVu Sans, a subset: `assets/fonts/`), so no system font is needed. The figure is drawn at
//! twice its size and averaged down, which antialiases lines and markers.

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The figure's width in pixels.
pub const WIDTH: u32 = 1280;
/// The height of the band with the figure's title.
pub const TITLE_HEIGHT: u32 = 76;
/// The height of a panel whose legend fits (a panel grows with a longer legend:
/// [`panel_height`]).
pub const PANEL_HEIGHT: u32 = 300;

/// The height of a panel whose legend has `entries` rows.
pub fn panel_height(entries: usize) -> u32 {
    PANEL_HEIGHT.max(PLOT_TOP + entries as u32 * LEGEND_ROW + 16)
}

/// DejaVu Sans 2.37, cut down to Latin, Greek and common signs (see its licence file).
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";

/// Drawn at this multiple of the figure's size, then averaged down.
const SS: u32 = 2;
const LEGEND_WIDTH: u32 = 280;
const LEGEND_ROW: u32 = 20;
/// From a panel's top to its plotting area: the title line and the stage names.
const PLOT_TOP: u32 = 58;
const X_AXIS_HEIGHT: u32 = 46;
const Y_AXIS_WIDTH: u32 = 74;

const TEXT: RGBColor = RGBColor(0x1f, 0x23, 0x28);
const MUTED: RGBColor = RGBColor(0x5f, 0x67, 0x73);
const GRID: RGBColor = RGBColor(0xe3, 0xe6, 0xea);
const MINOR_GRID: RGBColor = RGBColor(0xf1, 0xf3, 0xf5);
const AXIS: RGBColor = RGBColor(0x9a, 0xa1, 0xab);
const STAGE_TINT: RGBColor = RGBColor(0xf6, 0xf7, 0xf9);
const BOUNDARY: RGBColor = RGBColor(0x8a, 0x91, 0x9c);
const RULE: RGBColor = RGBColor(0xe3, 0xe6, 0xea);
/// Tableau 10.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xba, 0xb0, 0xac),
];

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line of the log that is not a step or an evaluation.
    #[error("{}, line {line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A malformed `eval.json`.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{} has no training step to plot", path.display())]
    Empty { path: PathBuf },
    #[error("cannot draw the plot: {0}")]
    Draw(String),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads `run_dir/log.jsonl` (and `run_dir/eval.json` when there is one) and writes
/// `run_dir/plot.png` (through a temporary file renamed into place); returns its path.
pub fn write_plot(run_dir: &Path) -> Result<PathBuf, PlotError> {
    let log_path = run_dir.join("log.jsonl");
    let text = std::fs::read_to_string(&log_path).map_err(|source| PlotError::Read {
        path: log_path.clone(),
        source,
    })?;
    let mut run = Run::default();
    run.read_log(&log_path, &text)?;
    if run.stages.is_empty() {
        return Err(PlotError::Empty { path: log_path });
    }
    let eval_path = run_dir.join("eval.json");
    match std::fs::read_to_string(&eval_path) {
        Ok(text) => run.read_final_eval(&eval_path, &text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(PlotError::Read {
                path: eval_path,
                source,
            })
        }
    }
    let title = run_dir
        .canonicalize()
        .unwrap_or_else(|_| run_dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let panels = run.panels();
    if panels.is_empty() {
        return Err(PlotError::Empty { path: log_path });
    }
    let image = render(&run, &panels, &title)?;
    let out = run_dir.join("plot.png");
    // Unique to this call: the process and a counter.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = run_dir.join(format!(".plot.png.{}-{call}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        image
            .write_to(&mut file, image::ImageFormat::Png)
            .map_err(std::io::Error::other)?;
        file.flush()?;
        file.get_ref().sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &out)
    })();
    written.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        PlotError::Write {
            path: out.clone(),
            source,
        }
    })?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Reading

#[derive(Default)]
struct Run {
    /// Stages in order of appearance: name and last step.
    stages: Vec<(String, u64)>,
    /// The total loss (`loss`), then every term by name, in order of appearance.
    loss: Vec<Series>,
    lr: Series,
    evals: Vec<EvalSeries>,
}

#[derive(Default)]
struct Series {
    name: String,
    /// (stage index, step, value)
    points: Vec<(usize, u64, f64)>,
}

struct EvalSeries {
    kind: String,
    model: String,
    data: String,
    metric: String,
    /// (stage index and step, or None for the final evaluation; value in percent)
    points: Vec<(Option<(usize, u64)>, f64)>,
}

/// An evaluation report as `eval.json` and the log's `eval` lines hold it.
#[derive(serde::Deserialize)]
struct ReportIn {
    kind: String,
    model: String,
    #[serde(default)]
    data: String,
    metrics: Vec<(String, Value)>,
}

/// A number, `None` for a value that is not finite (`null`, `"NaN"`, `"inf"`, …).
fn number(v: &Value) -> Result<Option<f64>, ()> {
    match v {
        Value::Number(n) => Ok(n.as_f64().filter(|x| x.is_finite())),
        Value::Null => Ok(None),
        Value::String(s) => {
            let s = s.trim().trim_start_matches(['+', '-']).to_ascii_lowercase();
            if matches!(s.as_str(), "nan" | "inf" | "infinity") {
                Ok(None)
            } else {
                Err(())
            }
        }
        _ => Err(()),
    }
}

/// `NaN`, `Infinity` and `-Infinity` outside strings (as Python's `json` writes non-finite
/// numbers) replaced by `null`; `None` when there are none.
fn null_nonfinite_literals(line: &str) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut replaced = false;
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(word) = ["NaN", "-Infinity", "Infinity"]
            .into_iter()
            .find(|w| rest.starts_with(w))
        {
            out.push_str("null");
            rest = &rest[word.len()..];
            replaced = true;
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    replaced.then_some(out)
}

impl Run {
    fn stage_index(&mut self, name: &str, step: u64) -> usize {
        match self.stages.iter().position(|(n, _)| n == name) {
            Some(i) => {
                self.stages[i].1 = self.stages[i].1.max(step);
                i
            }
            None => {
                self.stages.push((name.to_string(), step));
                self.stages.len() - 1
            }
        }
    }

    fn read_log(&mut self, path: &Path, text: &str) -> Result<(), PlotError> {
        self.loss.push(Series {
            name: "total loss".into(),
            points: Vec::new(),
        });
        self.lr.name = "learning rate".into();
        let mut terms: HashMap<String, usize> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |message: String| PlotError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => null_nonfinite_literals(line)
                    .and_then(|fixed| serde_json::from_str(&fixed).ok())
                    .ok_or_else(|| {
                        // serde's position is within the line: keep only its column.
                        let message = e.to_string();
                        let message = message.split(" at line ").next().unwrap_or(&message);
                        bad(format!(
                            "not valid JSON at column {}: {message}",
                            e.column()
                        ))
                    })?,
            };
            let Value::Object(object) = value else {
                return Err(bad("not a JSON object".into()));
            };
            let stage = object
                .get("stage")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no `stage` (the stage's name)".into()))?;
            let step = object
                .get("step")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("no `step` (a whole number)".into()))?;
            let s = self.stage_index(stage, step);
            let field = |name: &str| -> Result<Option<f64>, PlotError> {
                match object.get(name) {
                    None => Ok(None),
                    Some(v) => {
                        number(v).map_err(|()| bad(format!("`{name}` is not a number: {v}")))
                    }
                }
            };
            if let Some(loss) = field("loss")? {
                self.loss[0].points.push((s, step, loss));
            }
            if let Some(lr) = field("lr")? {
                self.lr.points.push((s, step, lr));
            }
            match object.get("terms") {
                None | Some(Value::Null) => {}
                Some(Value::Object(map)) => {
                    for (name, v) in map {
                        let value = number(v)
                            .map_err(|()| bad(format!("the term `{name}` is not a number: {v}")))?;
                        let index = *terms.entry(name.clone()).or_insert_with(|| {
                            self.loss.push(Series {
                                name: name.clone(),
                                points: Vec::new(),
                            });
                            self.loss.len() - 1
                        });
                        if let Some(value) = value {
                            self.loss[index].points.push((s, step, value));
                        }
                    }
                }
                Some(other) => {
                    return Err(bad(format!("`terms` is not an object of numbers: {other}")))
                }
            }
            if let Some(eval) = object.get("eval") {
                let reports: Vec<ReportIn> = serde_json::from_value(eval.clone())
                    .map_err(|e| bad(format!("`eval` is not a list of evaluation reports: {e}")))?;
                self.add_reports(reports, Some((s, step)))
                    .map_err(|m| bad(format!("in `eval`: {m}")))?;
            }
        }
        Ok(())
    }

    fn read_final_eval(&mut self, path: &Path, text: &str) -> Result<(), PlotError> {
        let bad = |message: String| PlotError::File {
            path: path.to_path_buf(),
            message,
        };
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => null_nonfinite_literals(text)
                .and_then(|fixed| serde_json::from_str(&fixed).ok())
                .ok_or_else(|| bad(format!("not JSON: {e}")))?,
        };
        let reports: Vec<ReportIn> = serde_json::from_value(value)
            .map_err(|e| bad(format!("not a list of evaluation reports: {e}")))?;
        self.add_reports(reports, None).map_err(bad)
    }

    fn add_reports(
        &mut self,
        reports: Vec<ReportIn>,
        at: Option<(usize, u64)>,
    ) -> Result<(), String> {
        for r in reports {
            for (metric, v) in r.metrics {
                let value = number(&v)
                    .map_err(|()| format!("the metric `{metric}` is not a number: {v}"))?;
                let index = match self.evals.iter().position(|e| {
                    e.kind == r.kind && e.model == r.model && e.data == r.data && e.metric == metric
                }) {
                    Some(i) => i,
                    None => {
                        self.evals.push(EvalSeries {
                            kind: r.kind.clone(),
                            model: r.model.clone(),
                            data: r.data.clone(),
                            metric: metric.clone(),
                            points: Vec::new(),
                        });
                        self.evals.len() - 1
                    }
                };
                if let Some(value) = value {
                    self.evals[index].points.push((at, 100.0 * value));
                }
            }
        }
        Ok(())
    }

    /// Where each stage starts on the global axis (its step 1 is at offset + 1).
    fn offsets(&self) -> Vec<f64> {
        let mut at = 0.0;
        self.stages
            .iter()
            .map(|(_, steps)| {
                let o = at;
                at += *steps as f64;
                o
            })
            .collect()
    }

    fn total_steps(&self) -> f64 {
        self.stages.iter().map(|(_, s)| *s as f64).sum()
    }

    fn panels(&self) -> Vec<Panel> {
        let offsets = self.offsets();
        let total = self.total_steps();
        let mut panels = Vec::new();
        // Loss: the terms, then the total over them.
        let all: Vec<f64> = self
            .loss
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.2))
            .collect();
        if !all.is_empty() {
            let log = log_scale(&all);
            let mut lines: Vec<Line> = self.loss[1..]
                .iter()
                .filter(|s| !s.points.is_empty())
                .enumerate()
                .map(|(i, s)| Line {
                    label: s.name.clone(),
                    colour: PALETTE[i % PALETTE.len()],
                    width: 1.5,
                    marker: None,
                    segments: stage_segments(&s.points, &offsets),
                    smooth: true,
                    value: fmt_sig(s.points.last().unwrap().2),
                })
                .collect();
            if !self.loss[0].points.is_empty() {
                lines.push(Line {
                    label: "total loss".into(),
                    colour: TEXT,
                    width: 2.0,
                    marker: None,
                    segments: stage_segments(&self.loss[0].points, &offsets),
                    smooth: true,
                    value: fmt_sig(self.loss[0].points.last().unwrap().2),
                });
                // The total first in the legend, drawn last (on top).
                lines.rotate_right(1);
            }
            panels.push(Panel {
                title: "Loss".into(),
                note: if log {
                    "logarithmic axis".into()
                } else {
                    String::new()
                },
                y_desc: "loss".into(),
                scale: if log { Scale::Log } else { Scale::Linear },
                lines,
            });
        }
        if !self.lr.points.is_empty() {
            panels.push(Panel {
                title: "Learning rate".into(),
                note: String::new(),
                y_desc: "learning rate".into(),
                scale: Scale::Linear,
                lines: vec![Line {
                    label: "learning rate".into(),
                    colour: PALETTE[0],
                    width: 1.5,
                    marker: None,
                    segments: stage_segments(&self.lr.points, &offsets),
                    smooth: false,
                    value: fmt_sig(self.lr.points.last().unwrap().2),
                }],
            });
        }
        // Evaluations: one panel per kind, in order of appearance.
        let mut kinds: Vec<&str> = Vec::new();
        for e in &self.evals {
            if !e.points.is_empty() && !kinds.contains(&e.kind.as_str()) {
                kinds.push(&e.kind);
            }
        }
        for kind in kinds {
            let series: Vec<&EvalSeries> = self
                .evals
                .iter()
                .filter(|e| e.kind == kind && !e.points.is_empty())
                .collect();
            let mut models: Vec<&str> = Vec::new();
            let mut metrics: Vec<(&str, &str)> = Vec::new();
            let mut datas: Vec<&str> = Vec::new();
            for e in &series {
                if !models.contains(&e.model.as_str()) {
                    models.push(&e.model);
                }
                if !metrics.contains(&(e.metric.as_str(), e.data.as_str())) {
                    metrics.push((&e.metric, &e.data));
                }
                if !datas.contains(&e.data.as_str()) {
                    datas.push(&e.data);
                }
            }
            let lines = series
                .iter()
                .map(|e| {
                    let m = models.iter().position(|x| *x == e.model).unwrap();
                    let k = metrics
                        .iter()
                        .position(|x| *x == (e.metric.as_str(), e.data.as_str()))
                        .unwrap();
                    // Several models: a colour per model, a marker per metric; else a colour per
                    // metric.
                    let (colour, marker) = if models.len() > 1 {
                        (m, k % MARKERS)
                    } else {
                        (k, (k / PALETTE.len()) % MARKERS)
                    };
                    let mut label = format!("{} {}", e.model, e.metric);
                    if datas.len() > 1 {
                        label = format!("{label} · {}", short_data(&e.data));
                    }
                    let mut points: Vec<(f64, f64)> = e
                        .points
                        .iter()
                        .map(|(at, v)| (at.map_or(total, |(s, step)| offsets[s] + step as f64), *v))
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Line {
                        label,
                        colour: PALETTE[colour % PALETTE.len()],
                        width: 1.5,
                        marker: Some(marker),
                        segments: vec![points],
                        smooth: false,
                        value: format!("{:.1} %", e.points.last().unwrap().1),
                    }
                })
                .collect();
            let (title, y_desc) = match kind {
                "zero_shot" => ("Zero-shot classification".to_string(), "accuracy (%)"),
                "retrieval" => ("Retrieval".to_string(), "recall (%)"),
                other => (format!("Evaluation: {}", other.replace('_', " ")), "%"),
            };
            panels.push(Panel {
                title,
                note: if datas.len() == 1 {
                    datas[0].to_string()
                } else {
                    String::new()
                },
                y_desc: y_desc.into(),
                scale: Scale::Percent,
                lines,
            });
        }
        panels
    }
}

/// A data set's description up to its first parenthesis.
fn short_data(data: &str) -> &str {
    data.split(" (").next().unwrap_or(data).trim()
}

/// Each stage's points on the global axis, sorted by step.
fn stage_segments(points: &[(usize, u64, f64)], offsets: &[f64]) -> Vec<Vec<(f64, f64)>> {
    let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new(); offsets.len()];
    for &(s, step, v) in points {
        segments[s].push((offsets[s] + step as f64, v));
    }
    for seg in &mut segments {
        seg.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    segments.retain(|s| !s.is_empty());
    segments
}

/// Whether values are all positive and span more than two decades.
fn log_scale(values: &[f64]) -> bool {
    let (lo, hi) = min_max(values.iter().copied());
    lo > 0.0 && hi / lo > 100.0
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// Four significant digits: `13.34`, `0.001268`, `6.294e-8`.
fn fmt_sig(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let exponent = v.abs().log10().floor() as i32;
    if (-3..5).contains(&exponent) {
        format!("{:.*}", (3 - exponent).max(0) as usize, v)
    } else {
        trim_scientific(&format!("{v:.3e}"))
    }
}

/// `6.000e-5` → `6e-5`.
fn trim_scientific(text: &str) -> String {
    match text.split_once('e') {
        Some((mantissa, exp)) if mantissa.contains('.') => {
            format!(
                "{}e{}",
                mantissa.trim_end_matches('0').trim_end_matches('.'),
                exp
            )
        }
        _ => text.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Drawing

#[derive(Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    /// Values are drawn as their base-10 logarithm.
    Log,
    /// Linear, ticks within 0–100.
    Percent,
}

struct Panel {
    title: String,
    /// Grey text after the title.
    note: String,
    y_desc: String,
    scale: Scale,
    lines: Vec<Line>,
}

struct Line {
    label: String,
    colour: RGBColor,
    /// Stroke width in pixels of the final figure.
    width: f64,
    /// A marker at each point (an index into the shapes of [`marker_shape`]).
    marker: Option<usize>,
    /// Points (global step, value), one run of connected points per stage.
    segments: Vec<Vec<(f64, f64)>>,
    /// Draw long series faintly, with their moving average over them.
    smooth: bool,
    /// The last value, for the legend.
    value: String,
}

type Root<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// A linear axis with the ticks given: bold ones (labelled, with grid lines) and light ones
/// (grid lines only).
#[derive(Clone)]
struct Axis {
    range: RangedCoordf64,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl Axis {
    fn new(lo: f64, hi: f64, bold: Vec<f64>, light: Vec<f64>) -> Axis {
        Axis {
            range: (lo..hi).into(),
            bold,
            light,
        }
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.range.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.range()
    }
}

fn draw_error(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// Pixels of the final figure in pixels of the drawing.
fn px(v: u32) -> i32 {
    (v * SS) as i32
}

fn font(size: u32) -> FontDesc<'static> {
    (FAMILY, (size * SS) as f64).into_font()
}

fn register_font() -> Result<(), PlotError> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(PlotError::Draw("the embedded font cannot be read".into()))
    }
}

/// Draws `text` with its baseline at `y` (drawing pixels), aligned at `x` by `h`.
fn text(
    root: &Root,
    s: &str,
    x: i32,
    y: i32,
    size: u32,
    colour: &RGBColor,
    h: HPos,
) -> Result<(), PlotError> {
    // plotters' ab_glyph text puts the baseline half the font size below the top of the box.
    let style = font(size).color(colour).pos(Pos::new(h, VPos::Top));
    root.draw_text(s, &style, (x, y - px(size) / 2))
        .map_err(draw_error)
}

fn text_width(root: &Root, s: &str, size: u32) -> i32 {
    root.estimate_text_size(s, &TextStyle::from(font(size)))
        .map_or(0, |(w, _)| w as i32)
}

/// `s`, shortened with an ellipsis to fit `width` drawing pixels.
fn fit(root: &Root, s: &str, size: u32, width: i32) -> String {
    if text_width(root, s, size) <= width {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    for n in (0..chars.len()).rev() {
        let t: String = chars[..n].iter().collect::<String>() + "…";
        if text_width(root, &t, size) <= width {
            return t;
        }
    }
    String::new()
}

fn render(run: &Run, panels: &[Panel], name: &str) -> Result<image::RgbImage, PlotError> {
    register_font()?;
    let heights: Vec<u32> = panels.iter().map(|p| panel_height(p.lines.len())).collect();
    let height = TITLE_HEIGHT + heights.iter().sum::<u32>();
    let (w, h) = (WIDTH * SS, height * SS);
    let mut buffer = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        // The title band.
        let title = if name.is_empty() {
            "Training".to_string()
        } else {
            format!("Training · {name}")
        };
        text(&root, &title, px(24), px(34), 24, &TEXT, HPos::Left)?;
        let stages: Vec<String> = run
            .stages
            .iter()
            .map(|(n, s)| format!("{n} ({s} step{})", if *s == 1 { "" } else { "s" }))
            .collect();
        let summary = format!(
            "{} stage{}: {}",
            run.stages.len(),
            if run.stages.len() == 1 { "" } else { "s" },
            stages.join("  →  ")
        );
        let summary = fit(&root, &summary, 14, px(WIDTH - 48));
        text(&root, &summary, px(24), px(58), 14, &MUTED, HPos::Left)?;
        let mut top = TITLE_HEIGHT;
        for (panel, height) in panels.iter().zip(&heights) {
            root.draw(&PathElement::new(
                vec![(px(16), px(top)), (px(WIDTH - 16), px(top))],
                RULE.stroke_width(SS),
            ))
            .map_err(draw_error)?;
            draw_panel(&root, run, panel, top, *height)?;
            top += height;
        }
        root.present().map_err(draw_error)?;
    }
    // Average each SS×SS block.
    let mut out = image::RgbImage::new(WIDTH, height);
    let n = SS * SS;
    for (x, y, pixel) in out.enumerate_pixels_mut() {
        let mut sum = [0u32; 3];
        for dy in 0..SS {
            for dx in 0..SS {
                let i = (((y * SS + dy) * w + x * SS + dx) * 3) as usize;
                for c in 0..3 {
                    sum[c] += buffer[i + c] as u32;
                }
            }
        }
        *pixel = image::Rgb(sum.map(|s| ((s + n / 2) / n) as u8));
    }
    Ok(out)
}

fn draw_panel(
    root: &Root,
    run: &Run,
    panel: &Panel,
    top: u32,
    height: u32,
) -> Result<(), PlotError> {
    let offsets = run.offsets();
    let total = run.total_steps();
    let area = root
        .clone()
        .shrink((0, px(top)), (px(WIDTH - LEGEND_WIDTH), px(height)));
    let transform = |v: f64| {
        if panel.scale == Scale::Log {
            v.log10()
        } else {
            v
        }
    };

    // The axes.
    let x_hi = total + (total * 0.015).max(0.5);
    let x_ticks: Vec<f64> = nice_ticks(0.0, total, 8, true);
    let values: Vec<f64> = panel
        .lines
        .iter()
        .flat_map(|l| l.segments.iter().flatten().map(|p| transform(p.1)))
        .collect();
    let (lo, hi) = min_max(values.iter().copied());
    let (y_lo, y_hi, y_ticks, y_minor) = match panel.scale {
        Scale::Log => {
            let pad = (hi - lo) * 0.06;
            let (y_lo, y_hi) = (lo - pad, hi + pad);
            let ticks: Vec<f64> = (y_lo.ceil() as i32..=y_hi.floor() as i32)
                .map(f64::from)
                .collect();
            // Minor grid lines at 2…9 times each power of ten, or at 2 and 5 over many decades.
            let decades = y_hi - y_lo;
            let multiples: &[u32] = match decades {
                d if d <= 3.5 => &[2, 3, 4, 5, 6, 7, 8, 9],
                d if d <= 7.0 => &[2, 5],
                _ => &[],
            };
            let minor: Vec<f64> = (y_lo.floor() as i32..=y_hi.ceil() as i32)
                .flat_map(|k| {
                    multiples
                        .iter()
                        .map(move |&m| k as f64 + (m as f64).log10())
                })
                .filter(|v| (y_lo..=y_hi).contains(v))
                .collect();
            (y_lo, y_hi, ticks, minor)
        }
        Scale::Linear | Scale::Percent => {
            let mut span = if hi > lo {
                hi - lo
            } else {
                lo.abs().max(1e-12) * 0.2
            };
            let (mut lo, mut hi) = (lo, hi);
            if panel.scale == Scale::Percent && span < 10.0 {
                // At least ten points of percentage around the values.
                let mid = (lo + hi) / 2.0;
                (lo, hi, span) = (mid - 5.0, mid + 5.0, 10.0);
            }
            let pad = span
                * if panel.scale == Scale::Percent {
                    0.1
                } else {
                    0.06
                };
            let (mut y_lo, mut y_hi) = (lo - pad, hi + pad);
            if panel.scale == Scale::Percent {
                y_lo = y_lo.max(-2.0);
                y_hi = y_hi.min(102.0).max(y_lo + 5.0);
            } else if lo >= 0.0 && lo < 0.25 * hi {
                // Quantities that start from zero (a learning rate's warm-up) show zero.
                y_lo = -0.5 * pad;
            } else if lo >= 0.0 && y_lo < 0.0 {
                y_lo = lo - (lo * 0.5).min(pad);
            }
            let mut ticks = nice_ticks(y_lo, y_hi, 6, false);
            if panel.scale == Scale::Percent {
                ticks.retain(|t| (0.0..=100.0).contains(t));
            }
            (y_lo, y_hi, ticks, Vec::new())
        }
    };
    let y_step = if y_ticks.len() > 1 {
        y_ticks[1] - y_ticks[0]
    } else {
        1.0
    };
    // 20k, 40k, … for long runs.
    let thousands = total >= 10_000.0 && x_ticks.iter().all(|t| t % 1000.0 == 0.0);
    let format_x = |v: &f64| {
        let n = v.round() as i64;
        match thousands {
            true if n != 0 && n % 1_000_000 == 0 && total >= 1e7 => format!("{}M", n / 1_000_000),
            true if n != 0 => format!("{}k", n / 1000),
            _ => n.to_string(),
        }
    };
    let x_axis = Axis::new(0.0, x_hi, x_ticks, Vec::new());
    let y_axis = Axis::new(y_lo, y_hi, y_ticks, y_minor);
    let mut chart = ChartBuilder::on(&area)
        .margin_top(px(PLOT_TOP))
        .margin_left(px(16))
        .margin_right(px(20))
        .x_label_area_size(px(X_AXIS_HEIGHT))
        .y_label_area_size(px(Y_AXIS_WIDTH))
        .build_cartesian_2d(x_axis, y_axis)
        .map_err(draw_error)?;

    // Alternate stages on a tinted ground.
    let stage_spans: Vec<(f64, f64)> = offsets
        .iter()
        .zip(&run.stages)
        .map(|(o, (_, s))| (*o, o + *s as f64))
        .collect();
    // The last stage's ground reaches the right edge.
    let ground =
        |i: usize, (a, b): (f64, f64)| (a, if i + 1 == stage_spans.len() { x_hi } else { b });
    if run.stages.len() > 1 {
        chart
            .draw_series(
                stage_spans
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % 2 == 1)
                    .map(|(i, span)| {
                        let (a, b) = ground(i, *span);
                        Rectangle::new([(a, y_lo), (b, y_hi)], STAGE_TINT.filled())
                    }),
            )
            .map_err(draw_error)?;
    }
    let format_y = |v: &f64| match panel.scale {
        Scale::Log => fmt_decade(*v),
        _ => fmt_tick(*v, y_step),
    };
    chart
        .configure_mesh()
        .bold_line_style(GRID.stroke_width(SS))
        .light_line_style(MINOR_GRID.stroke_width(SS))
        .axis_style(AXIS.stroke_width(SS))
        .set_all_tick_mark_size(px(4))
        .x_label_formatter(&format_x)
        .y_label_formatter(&format_y)
        .label_style(font(13).color(&MUTED))
        .axis_desc_style(font(13).color(&MUTED))
        .x_desc(if run.stages.len() > 1 {
            "step (all stages)"
        } else {
            "step"
        })
        .y_desc(panel.y_desc.as_str())
        .x_labels(64)
        .y_labels(64)
        .draw()
        .map_err(draw_error)?;

    // Stage boundaries.
    for o in offsets.iter().skip(1) {
        chart
            .draw_series(std::iter::once(DashedPathElement::new(
                vec![(*o, y_lo), (*o, y_hi)],
                px(5),
                px(4),
                BOUNDARY.stroke_width(SS),
            )))
            .map_err(draw_error)?;
    }

    // The data.
    let (plot_x, plot_y) = chart.plotting_area().get_pixel_range();
    let plot_width = (plot_x.end - plot_x.start).max(1) as usize;
    let pixels = |points: &[(f64, f64)]| -> Vec<(i32, i32)> {
        let mut out: Vec<(i32, i32)> = decimate(points, 3 * plot_width)
            .iter()
            .map(|p| chart.backend_coord(p))
            .collect();
        out.dedup();
        out
    };
    let transformed = |segment: &[(f64, f64)]| -> Vec<(f64, f64)> {
        segment.iter().map(|&(x, v)| (x, transform(v))).collect()
    };
    let smoothed = |line: &Line, segment: &[(f64, f64)]| line.smooth && segment.len() >= 30;
    // Long noisy series: every step in a pale tint (opaque, so that thousands of overlapping
    // segments do not add up), under every line.
    for line in panel.lines.iter().rev() {
        let pale = blend(line.colour, 0.3);
        for segment in line.segments.iter().filter(|s| smoothed(line, s)) {
            polyline(root, &pixels(&transformed(segment)), pale, SS)?;
        }
    }
    // The lines (moving averages of the noisy ones), the first in the legend on top.
    for line in panel.lines.iter().rev() {
        let stroke = (line.width * SS as f64).round().max(1.0) as u32;
        for segment in &line.segments {
            let points = transformed(segment);
            let shown = if smoothed(line, segment) {
                moving_average(&points)
            } else {
                points.clone()
            };
            polyline(root, &pixels(&shown), line.colour.to_rgba(), stroke)?;
            if let Some(shape) = line.marker {
                for p in &points {
                    let at = chart.backend_coord(p);
                    root.draw(&marker(at, shape, px(5), &WHITE))
                        .map_err(draw_error)?;
                    root.draw(&marker(at, shape, px(4), &line.colour))
                        .map_err(draw_error)?;
                }
            } else if points.len() == 1 {
                let at = chart.backend_coord(&points[0]);
                root.draw(&marker(at, 0, px(3), &line.colour))
                    .map_err(draw_error)?;
            }
        }
    }

    // The title, the stages' names over their spans.
    let left = plot_x.start;
    let mut title_end = left;
    text(
        root,
        &panel.title,
        left,
        px(top + 26),
        16,
        &TEXT,
        HPos::Left,
    )?;
    title_end += text_width(root, &panel.title, 16);
    if !panel.note.is_empty() {
        let room = px(WIDTH - LEGEND_WIDTH - 20) - title_end - px(12);
        let note = fit(root, &panel.note, 13, room);
        text(
            root,
            &note,
            title_end + px(12),
            px(top + 26),
            13,
            &MUTED,
            HPos::Left,
        )?;
    }
    for ((a, b), (name, _)) in stage_spans.iter().zip(&run.stages) {
        let xa = chart.backend_coord(&(*a, y_hi)).0;
        let xb = chart.backend_coord(&(*b, y_hi)).0;
        let label = fit(root, name, 12, xb - xa - px(8));
        text(
            root,
            &label,
            (xa + xb) / 2,
            plot_y.start - px(7),
            12,
            &MUTED,
            HPos::Center,
        )?;
    }

    // The legend.
    let lx = px(WIDTH - LEGEND_WIDTH);
    let right = px(WIDTH - 24);
    for (i, line) in panel.lines.iter().enumerate() {
        let cy = plot_y.start + px(8) + px(i as u32 * LEGEND_ROW);
        let stroke = (line.width * SS as f64).round().max(1.0) as u32;
        // A line unless every series is single points.
        if line.segments.iter().any(|s| s.len() > 1) || line.marker.is_none() {
            root.draw(&PathElement::new(
                vec![(lx, cy), (lx + px(24), cy)],
                line.colour.stroke_width(stroke),
            ))
            .map_err(draw_error)?;
        }
        if let Some(shape) = line.marker {
            root.draw(&marker((lx + px(12), cy), shape, px(5), &WHITE))
                .map_err(draw_error)?;
            root.draw(&marker((lx + px(12), cy), shape, px(4), &line.colour))
                .map_err(draw_error)?;
        }
        let value_width = text_width(root, &line.value, 13);
        text(
            root,
            &line.value,
            right,
            cy + px(5),
            13,
            &MUTED,
            HPos::Right,
        )?;
        let label = fit(
            root,
            &line.label,
            13,
            right - value_width - px(10) - (lx + px(32)),
        );
        text(root, &label, lx + px(32), cy + px(5), 13, &TEXT, HPos::Left)?;
    }
    Ok(())
}

/// `colour` at opacity `alpha` over white, as an opaque colour.
fn blend(colour: RGBColor, alpha: f64) -> RGBAColor {
    let mix = |c: u8| (255.0 - alpha * (255.0 - c as f64)).round() as u8;
    RGBAColor(mix(colour.0), mix(colour.1), mix(colour.2), 1.0)
}

/// A line through `points` (drawing pixels) `width` wide, drawn segment by segment with round
/// joins: plotters joins the segments of a wide path with unbounded mitres, which shoot far out
/// where a noisy series turns back.
fn polyline(
    root: &Root,
    points: &[(i32, i32)],
    colour: RGBAColor,
    width: u32,
) -> Result<(), PlotError> {
    for pair in points.windows(2) {
        root.draw(&PathElement::new(
            vec![pair[0], pair[1]],
            colour.stroke_width(width),
        ))
        .map_err(draw_error)?;
    }
    if width >= 3 && colour.3 >= 1.0 {
        for p in points.iter().skip(1).take(points.len().saturating_sub(2)) {
            root.draw(&Circle::new(*p, width / 2, colour.filled()))
                .map_err(draw_error)?;
        }
    }
    Ok(())
}

const MARKERS: usize = 6;

/// A filled marker of radius `r` at `at` (drawing pixels): circle, square, triangle, diamond,
/// downward triangle, plus.
fn marker(at: (i32, i32), shape: usize, r: i32, colour: &RGBColor) -> Polygon<(i32, i32)> {
    let rf = r as f64;
    let polygon = |n: usize, phase: f64, scale: f64| -> Vec<(i32, i32)> {
        (0..n)
            .map(|i| {
                let a = phase + i as f64 * std::f64::consts::TAU / n as f64;
                (
                    at.0 + (rf * scale * a.cos()).round() as i32,
                    at.1 + (rf * scale * a.sin()).round() as i32,
                )
            })
            .collect()
    };
    use std::f64::consts::{FRAC_PI_2, FRAC_PI_4};
    let points = match shape % MARKERS {
        0 => polygon(24, 0.0, 1.0),
        1 => polygon(4, FRAC_PI_4, 1.2),
        2 => polygon(3, -FRAC_PI_2, 1.3),
        3 => polygon(4, 0.0, 1.3),
        4 => polygon(3, FRAC_PI_2, 1.3),
        _ => {
            // A plus sign a third of its size thick.
            let (a, b) = ((rf * 1.2).round() as i32, (rf * 0.4).round() as i32);
            [
                (-a, -b),
                (-b, -b),
                (-b, -a),
                (b, -a),
                (b, -b),
                (a, -b),
                (a, b),
                (b, b),
                (b, a),
                (-b, a),
                (-b, b),
                (-a, b),
            ]
            .iter()
            .map(|(x, y)| (at.0 + x, at.1 + y))
            .collect()
        }
    };
    Polygon::new(points, colour.filled())
}

/// Ticks at a round step (1, 2 or 5 times a power of ten) within [lo, hi], about `target` of
/// them; whole numbers only when `integer`.
fn nice_ticks(lo: f64, hi: f64, target: usize, integer: bool) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return vec![lo];
    }
    let raw = (hi - lo) / target as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = magnitude
        * match raw / magnitude {
            r if r < 1.5 => 1.0,
            r if r < 3.0 => 2.0,
            r if r < 7.0 => 5.0,
            _ => 10.0,
        };
    let step = if integer { step.max(1.0).round() } else { step };
    let first = (lo / step).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label of a linear axis whose ticks are `step` apart.
fn fmt_tick(v: f64, step: f64) -> String {
    if v.abs() < step * 1e-6 {
        return "0".into();
    }
    if !(1e-3..1e6).contains(&step) {
        return trim_scientific(&format!("{v:.2e}"));
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let decimals = if (step * 10f64.powi(decimals as i32)).fract().abs() > 1e-6 {
        decimals + 1
    } else {
        decimals
    };
    format!("{v:.decimals$}")
}

/// The label of a decade tick of a logarithmic axis (`v` is the exponent).
fn fmt_decade(v: f64) -> String {
    let k = v.round() as i32;
    if (-4..=5).contains(&k) {
        let value = 10f64.powi(k);
        format!("{:.*}", (-k).max(0) as usize, value)
    } else {
        format!("1e{k}")
    }
}

/// A centred moving average over about a twenty-fifth of the points (cut short at the ends: a
/// window narrowed to stay centred would end on single noisy steps).
fn moving_average(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let n = points.len();
    let half = (n / 50).max(1);
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    for p in points {
        prefix.push(prefix.last().unwrap() + p.1);
    }
    (0..n)
        .map(|i| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(n));
            (points[i].0, (prefix[b] - prefix[a]) / (b - a) as f64)
        })
        .collect()
}

/// At most about `max` points: beyond that, the lowest and highest of each bucket, in order.
fn decimate(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max.max(4) {
        return points.to_vec();
    }
    let bucket = points.len().div_ceil(max / 2);
    points
        .chunks(bucket)
        .flat_map(|chunk| {
            let low = chunk
                .iter()
                .enumerate()
                .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
                .unwrap();
            let high = chunk
                .iter()
                .enumerate()
                .max_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
                .unwrap();
            if low.0 <= high.0 {
                [*low.1, *high.1]
            } else {
                [*high.1, *low.1]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_nonfinite_literals_become_null() {
        assert_eq!(
            null_nonfinite_literals(r#"{"a": NaN, "b": [Infinity, -Infinity], "c": "NaN"}"#)
                .as_deref(),
            Some(r#"{"a": null, "b": [null, null], "c": "NaN"}"#)
        );
        assert_eq!(null_nonfinite_literals(r#"{"a": 1}"#), None);
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(
            nice_ticks(0.0, 640.0, 8, true),
            vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0]
        );
        assert_eq!(nice_ticks(0.0, 3.0, 8, true), vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(fmt_tick(4e-5, 2e-5), "4e-5");
        assert_eq!(fmt_tick(2.5, 0.5), "2.5");
        assert_eq!(fmt_tick(0.25, 0.25), "0.25");
        assert_eq!(fmt_decade(-3.0), "0.001");
        assert_eq!(fmt_decade(2.0), "100");
        assert_eq!(fmt_decade(-7.0), "1e-7");
        assert_eq!(fmt_sig(13.340887), "13.34");
        assert_eq!(fmt_sig(6.294324529942941e-8), "6.294e-8");
    }

    #[test]
    fn log_scale_needs_two_decades_of_positive_values() {
        assert!(log_scale(&[0.001, 0.5, 108.0]));
        assert!(!log_scale(&[0.1, 5.0]));
        assert!(!log_scale(&[-1.0, 0.001, 100.0]));
    }
}
