//! The checked intermediate representation: what a recipe computes, with every name resolved,
//! every tensor's shape known and every number validated. The training engine lowers this, and
//! only this, to a luminal graph.
//!
//! A stage's loss is a graph of primitive operations (`Node`s in topological order) over taps
//! into the models (`student.image`, a layer's tokens), learnable parts of the loss (`Param`s)
//! and constants. Each loss term is one node with its weight beside it.

use crate::model::{ModelSpec, ParamClass, Part};
use crate::shape::Shape;
use crate::source::Span;
pub use kdc_backend::op::LossKind;
use serde::Serialize;
use std::hash::Hash;

#[derive(Clone, Debug, Serialize)]
pub struct Recipe {
    pub models: Vec<ModelSpec>,
    pub stages: Vec<Stage>,
    pub eval: Vec<EvalSpec>,
}

pub type ModelId = usize;
pub type NodeId = usize;
pub type ParamId = usize;

#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    pub name: String,
    /// The stage whose final checkpoint this stage starts from.
    pub from: Option<usize>,
    pub data: DataSpec,
    pub train: TrainSpec,
    pub graph: Graph,
    pub terms: Vec<Term>,
    pub params: Vec<ParamSpec>,
    /// Model parts frozen in this stage on top of those frozen in their definitions.
    pub frozen: Vec<(ModelId, Part)>,
    /// Model parts that receive gradients in this stage: reached by the loss, not frozen.
    pub trainable: Vec<(ModelId, Part)>,
    /// `freeze` patterns over parameter names, as written, and the names they freeze
    /// (`student/vision_model.encoder.layers.{0..5}.*`): no gradient, no optimiser state.
    pub frozen_patterns: Vec<String>,
    pub frozen_names: Vec<String>,
}

/// One weighted term of a stage's loss: `weight × node`.
#[derive(Clone, Debug, Serialize)]
pub struct Term {
    pub label: String,
    pub weight: Schedule,
    pub node: NodeId,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub shape: Shape,
    #[serde(skip)]
    pub span: Span,
}

/// What can be read out of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Tap {
    /// The projected image embedding, before normalisation: [B, embed].
    Image,
    /// The projected text embedding, before normalisation: [B, embed].
    Text,
    /// The model's logit scale σ = exp(t): a scalar.
    Scale,
    /// The last block's patch tokens, class token excluded: [B, N, vision width].
    Patches,
    /// Block k's output tokens (0: the input to the first block): [B, N+1, vision width].
    ImageLayer(u64),
    /// Block k's output tokens: [B, context, text width].
    TextLayer(u64),
    /// Block k's attention probabilities (1 ≤ k ≤ layers): [B, heads, N+1, N+1].
    ImageAttention(u64),
    /// Block k's attention probabilities of the text tower: [B, heads, context, context].
    TextAttention(u64),
    /// Block k's projected queries, keys or values, before the head split and the 1/√d
    /// scaling: [B, N+1, vision width] (image) or [B, context, text width] (text).
    Projection { image: bool, which: Qkv, block: u64 },
    /// 1 for each real token of a caption (end of text included), 0 for padding: [B, context].
    TextMask,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Op {
    /// A value read from a model. `mask` is the fraction of patch tokens dropped at random
    /// (MAE-style) before the image tower, fresh every step.
    Tap {
        model: ModelId,
        tap: Tap,
        mask: Option<Mask>,
    },
    /// A learnable part of the loss.
    Param(ParamId),
    /// A scalar constant.
    Const(f64),
    /// A constant tensor of the node's shape, row-major (`tensor([[1, 2], [3, 4]])`).
    Literal(Vec<f64>),
    /// A scalar that follows a schedule over training steps.
    Scheduled(Schedule),
    /// The size of axis `axis` of the input, as a scalar (the batch size B, say).
    Size {
        axis: usize,
    },
    /// The identity matrix of the output's shape.
    Eye,
    Add,
    Sub,
    Mul,
    Div,
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    /// Batched matrix product over the last two axes.
    MatMul,
    /// Swaps the last two axes.
    Transpose,
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },
    /// x / max(‖x‖₂, eps) along `axis`.
    Normalize {
        axis: usize,
        eps: f64,
    },
    Relu,
    Sigmoid,
    Tanh,
    /// Elementwise larger and smaller of two tensors (broadcast).
    Maximum,
    Minimum,
    /// An elementwise comparison: 1 where it holds, else 0; no gradient.
    Compare(Cmp),
    /// Inputs (c, a, b): a where c ≠ 0, else b (broadcast).
    Where,
    /// The largest or smallest value over `axis`, or over everything.
    Max {
        axis: Option<usize>,
    },
    Min {
        axis: Option<usize>,
    },
    /// The position of the largest (`largest`) or smallest value along `axis`, or in the
    /// flattened tensor; no gradient.
    Arg {
        largest: bool,
        axis: Option<usize>,
    },
    /// The same elements in the output's shape (unsqueeze, squeeze, reshape, keepdim).
    Reshape,
    /// The k largest values along `axis`, largest first.
    TopK {
        k: u64,
        axis: usize,
    },
    /// Axes reordered: output axis i is input axis `perm[i]`.
    Permute(Vec<usize>),
    /// `len` entries from `start` along `axis` (indexing and slicing).
    Slice {
        axis: usize,
        start: u64,
        len: u64,
    },
    /// Mean over `axis`, or over everything when `None`.
    Mean {
        axis: Option<usize>,
    },
    Sum {
        axis: Option<usize>,
    },
    /// Biased (population) variance over `axis`, or over everything.
    Var {
        axis: Option<usize>,
    },
    /// A loss primitive (mse, l1, smooth_l1, kl, cross_entropy): a scalar. The engine's graph
    /// uses the same kinds.
    Loss(LossKind),
    Concat {
        axis: usize,
    },
    /// Multi-head scaled dot-product attention softmax(q kᵀ / √d) v with `heads` heads.
    Attention {
        heads: u64,
    },
    /// The value, with no gradient flowing back through it.
    Detach,
}

/// MAE-style patch masking of a model's view: the fraction of patch tokens dropped, fresh
/// every step; views with the same `shared` name drop the same patches.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mask {
    pub ratio: f64,
    pub shared: Option<String>,
}

/// Queries, keys or values of an attention layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Qkv {
    Query,
    Key,
    Value,
}

impl Qkv {
    pub fn name(self) -> &'static str {
        match self {
            Qkv::Query => "query",
            Qkv::Key => "key",
            Qkv::Value => "value",
        }
    }
}

/// An elementwise comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Cmp {
    pub fn name(self) -> &'static str {
        match self {
            Cmp::Gt => "gt",
            Cmp::Ge => "ge",
            Cmp::Lt => "lt",
            Cmp::Le => "le",
            Cmp::Eq => "eq",
            Cmp::Ne => "ne",
        }
    }
}

/// The ε of `norm` unless a recipe gives one (PyTorch's `F.normalize`).
pub const NORM_EPS: f64 = 1e-12;

/// Hashes a float consistently with `==`: 0.0 and −0.0 hash alike (NaN equals nothing, so
/// its hash does not matter).
fn hash_f64<H: std::hash::Hasher>(v: f64, state: &mut H) {
    (if v == 0.0 { 0.0f64 } else { v }).to_bits().hash(state)
}

/// Operators are hash-consed by the checker (one node per distinct computation), keyed on the
/// operator and its inputs.
impl std::hash::Hash for Op {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Op::Tap { model, tap, mask } => {
                model.hash(state);
                tap.hash(state);
                mask.is_some().hash(state);
                if let Some(m) = mask {
                    hash_f64(m.ratio, state);
                    m.shared.hash(state);
                }
            }
            Op::Param(p) => p.hash(state),
            Op::Const(v) => hash_f64(*v, state),
            Op::Literal(values) => {
                values.len().hash(state);
                values.iter().for_each(|v| hash_f64(*v, state));
            }
            Op::Scheduled(s) => s.hash(state),
            Op::Size { axis }
            | Op::Softmax { axis }
            | Op::LogSoftmax { axis }
            | Op::Concat { axis } => axis.hash(state),
            Op::Normalize { axis, eps } => {
                axis.hash(state);
                hash_f64(*eps, state);
            }
            Op::Mean { axis }
            | Op::Sum { axis }
            | Op::Var { axis }
            | Op::Max { axis }
            | Op::Min { axis } => axis.hash(state),
            Op::Arg { largest, axis } => {
                largest.hash(state);
                axis.hash(state);
            }
            Op::Compare(c) => c.hash(state),
            Op::Permute(p) => p.hash(state),
            Op::TopK { k, axis } => {
                k.hash(state);
                axis.hash(state);
            }
            Op::Slice { axis, start, len } => {
                axis.hash(state);
                start.hash(state);
                len.hash(state);
            }
            Op::Loss(kind) => kind.hash(state),
            Op::Attention { heads } => heads.hash(state),
            Op::Eye
            | Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Neg
            | Op::Exp
            | Op::Log
            | Op::Sqrt
            | Op::Abs
            | Op::MatMul
            | Op::Transpose
            | Op::Detach
            | Op::Relu
            | Op::Sigmoid
            | Op::Tanh
            | Op::Maximum
            | Op::Minimum
            | Op::Where
            | Op::Reshape => {}
        }
    }
}

impl Eq for Op {}

impl std::hash::Hash for Schedule {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Schedule::Constant(v) => hash_f64(*v, state),
            Schedule::Ramp {
                from,
                to,
                start,
                steps,
            } => {
                hash_f64(*from, state);
                hash_f64(*to, state);
                start.hash(state);
                steps.hash(state);
            }
            Schedule::Cosine {
                peak,
                warmup,
                end,
                steps,
            } => {
                hash_f64(*peak, state);
                warmup.hash(state);
                hash_f64(*end, state);
                steps.hash(state);
            }
            Schedule::Step { values, at } => {
                values.len().hash(state);
                values.iter().for_each(|v| hash_f64(*v, state));
                at.hash(state);
            }
            Schedule::Scaled(factor, inner) => {
                hash_f64(*factor, state);
                inner.hash(state);
            }
        }
    }
}

impl Op {
    pub fn name(&self) -> String {
        match self {
            Op::Tap { .. } => "tap".into(),
            Op::Param(_) => "param".into(),
            Op::Const(_) => "const".into(),
            Op::Literal(v) => format!("tensor[{} values]", v.len()),
            Op::Scheduled(_) => "schedule".into(),
            Op::Size { axis } => format!("size[axis {axis}]"),
            Op::Eye => "eye".into(),
            Op::Add => "add".into(),
            Op::Sub => "sub".into(),
            Op::Mul => "mul".into(),
            Op::Div => "div".into(),
            Op::Neg => "neg".into(),
            Op::Exp => "exp".into(),
            Op::Log => "log".into(),
            Op::Sqrt => "sqrt".into(),
            Op::Abs => "abs".into(),
            Op::MatMul => "matmul".into(),
            Op::Transpose => "transpose".into(),
            Op::Softmax { axis } => format!("softmax[axis {axis}]"),
            Op::LogSoftmax { axis } => format!("log_softmax[axis {axis}]"),
            Op::Normalize { axis, eps } if *eps == NORM_EPS => format!("norm[axis {axis}]"),
            Op::Normalize { axis, eps } => {
                format!("norm[axis {axis}, eps {}]", crate::fmt_num(*eps))
            }
            Op::Relu => "relu".into(),
            Op::Sigmoid => "sigmoid".into(),
            Op::Tanh => "tanh".into(),
            Op::Maximum => "maximum".into(),
            Op::Minimum => "minimum".into(),
            Op::Compare(c) => c.name().into(),
            Op::Where => "where".into(),
            Op::Max { axis: Some(a) } => format!("max[axis {a}]"),
            Op::Max { axis: None } => "max".into(),
            Op::Min { axis: Some(a) } => format!("min[axis {a}]"),
            Op::Min { axis: None } => "min".into(),
            Op::Arg { largest, axis } => format!(
                "{}{}",
                if *largest { "argmax" } else { "argmin" },
                axis.map(|a| format!("[axis {a}]")).unwrap_or_default()
            ),
            Op::Reshape => "reshape".into(),
            Op::TopK { k, axis } => format!("topk[k {k}, axis {axis}]"),
            Op::Permute(p) => format!(
                "permute[{}]",
                p.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Op::Slice { axis, start, len } => {
                format!("slice[axis {axis}, {start}..{}]", start + len)
            }
            Op::Mean { axis: Some(a) } => format!("mean[axis {a}]"),
            Op::Mean { axis: None } => "mean".into(),
            Op::Sum { axis: Some(a) } => format!("sum[axis {a}]"),
            Op::Sum { axis: None } => "sum".into(),
            Op::Var { axis: Some(a) } => format!("var[axis {a}]"),
            Op::Var { axis: None } => "var".into(),
            Op::Loss(kind) => kind.name(),
            Op::Concat { axis } => format!("concat[axis {axis}]"),
            Op::Attention { heads } => format!("attention[heads {heads}]"),
            Op::Detach => "detach".into(),
        }
    }
}

/// A learnable part of the loss (a projection W, a fusion head, a logit scale).
#[derive(Clone, Debug, Serialize)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<u64>,
    pub init: Init,
    /// Clamped to this range after every optimiser step.
    pub clamp: Option<(f64, f64)>,
    pub class: ParamClass,
    /// The loss reads exp(t) of this parameter t (a `logit_scale`), not t itself.
    pub exponentiated: bool,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Init {
    Constant(f64),
    /// Uniform in [−bound, bound] (PyTorch's `nn.Linear` default has bound 1/√fan_in).
    Uniform {
        bound: f64,
    },
    Normal {
        std: f64,
    },
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Init::Constant(v) => write!(f, "constant {}", crate::fmt_num(*v)),
            Init::Uniform { bound } => write!(f, "uniform(±{})", crate::fmt_num(*bound)),
            Init::Normal { std } => write!(f, "normal(0, {})", crate::fmt_num(*std)),
        }
    }
}

/// A number that may change with the training step: loss weights, learning rates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Schedule {
    Constant(f64),
    /// Linear from `from` to `to` over steps [start, start + steps], constant outside.
    Ramp {
        from: f64,
        to: f64,
        start: Duration,
        steps: Duration,
    },
    /// Linear warm-up from 0 to `peak` over `warmup` steps, then a half cosine from `peak` to
    /// `end` at step `steps` (`None`: the stage's last step).
    Cosine {
        peak: f64,
        warmup: Duration,
        end: f64,
        steps: Option<Duration>,
    },
    /// `values[i]` from boundary `at[i-1]` (inclusive) on; `values.len() == at.len() + 1`.
    Step {
        values: Vec<f64>,
        at: Vec<Duration>,
    },
    /// Another schedule multiplied by a constant.
    Scaled(f64, Box<Schedule>),
}

/// A span of training in a schedule: optimiser steps, whole epochs of the stage's data, or a
/// fraction of the stage.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Duration {
    Steps(u64),
    Epochs(u64),
    Fraction(f64),
}

impl Duration {
    /// In optimiser steps, on `clock`.
    pub fn steps(self, clock: Clock) -> u64 {
        match self {
            Duration::Steps(n) => n,
            Duration::Epochs(e) => e * clock.per_epoch,
            Duration::Fraction(f) => (f * clock.total as f64).round() as u64,
        }
    }
}

impl std::hash::Hash for Duration {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Duration::Steps(n) | Duration::Epochs(n) => n.hash(state),
            Duration::Fraction(f) => hash_f64(*f, state),
        }
    }
}

impl std::fmt::Display for Duration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Duration::Steps(n) => write!(f, "{n}"),
            Duration::Epochs(1) => write!(f, "1 epoch"),
            Duration::Epochs(n) => write!(f, "{n} epochs"),
            Duration::Fraction(x) => write!(f, "{} of the stage", crate::fmt_num(*x)),
        }
    }
}

/// Where schedules are read: the stage's length and the optimiser steps in one epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clock {
    pub total: u64,
    pub per_epoch: u64,
}

impl Clock {
    /// A stage `total` steps long, one epoch being the whole stage (tests, explanations).
    pub fn steps(total: u64) -> Clock {
        Clock {
            total,
            per_epoch: total,
        }
    }
}

impl Schedule {
    /// The value at optimiser step `step` on `clock`.
    pub fn at(&self, step: u64, clock: Clock) -> f64 {
        let total = clock.total;
        match self {
            Schedule::Constant(v) => *v,
            Schedule::Ramp {
                from,
                to,
                start,
                steps,
            } => {
                let (start, steps) = (start.steps(clock), steps.steps(clock).max(1));
                if step <= start {
                    *from
                } else if step >= start + steps {
                    *to
                } else {
                    from + (to - from) * (step - start) as f64 / steps as f64
                }
            }
            Schedule::Cosine {
                peak,
                warmup,
                end,
                steps,
            } => {
                let total = steps.map_or(total, |s| s.steps(clock)).max(1);
                let warmup = warmup.steps(clock);
                if step < warmup {
                    peak * (step + 1) as f64 / warmup as f64
                } else {
                    let span = total.saturating_sub(warmup).max(1);
                    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
                    end + 0.5 * (peak - end) * (1.0 + (std::f64::consts::PI * progress).cos())
                }
            }
            Schedule::Step { values, at } => {
                let index = at.iter().filter(|b| step >= b.steps(clock)).count();
                values[index]
            }
            Schedule::Scaled(factor, inner) => factor * inner.at(step, clock),
        }
    }

    pub fn scaled(self, factor: f64) -> Schedule {
        match self {
            Schedule::Constant(v) => Schedule::Constant(v * factor),
            Schedule::Scaled(f, inner) => Schedule::Scaled(f * factor, inner),
            other if factor == 1.0 => other,
            other => Schedule::Scaled(factor, Box::new(other)),
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::fmt_num as n;
        match self {
            Schedule::Constant(v) => write!(f, "{}", n(*v)),
            Schedule::Ramp {
                from,
                to,
                start,
                steps,
            } => match (start, steps) {
                (Duration::Steps(a), Duration::Steps(b)) => write!(
                    f,
                    "ramp({} → {} over steps {}..{})",
                    n(*from),
                    n(*to),
                    a,
                    a + b
                ),
                _ => write!(
                    f,
                    "ramp({} → {} over {} from {})",
                    n(*from),
                    n(*to),
                    steps,
                    start
                ),
            },
            Schedule::Cosine {
                peak,
                warmup,
                end,
                steps,
            } => {
                let until = steps
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "the last step".into());
                let warm = match warmup {
                    Duration::Steps(w) => format!("{w} steps"),
                    other => other.to_string(),
                };
                write!(
                    f,
                    "cosine(warm-up 0 → {} over {}, then → {} at {})",
                    n(*peak),
                    warm,
                    n(*end),
                    until
                )
            }
            Schedule::Step { values, at } => {
                let values: Vec<String> = values.iter().map(|v| n(*v)).collect();
                let at: Vec<String> = at.iter().map(|v| v.to_string()).collect();
                write!(f, "step([{}] at [{}])", values.join(", "), at.join(", "))
            }
            Schedule::Scaled(factor, inner) => write!(f, "{} × {}", n(*factor), inner),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum DataSource {
    /// Image-text pairs listed in a CSV (open_clip's convention).
    Pairs {
        csv: String,
        image: String,
        caption: String,
        sep: String,
    },
    /// One folder per class under `root`; captions from a template.
    Folders { root: String, template: String },
    /// Webdataset `.tar` shards, as the recipe writes them: brace patterns (`{000..099}`,
    /// `{a,b}`) joined by `::`, expanded when the data is opened.
    WebDataset { shards: String },
    /// The built-in Fashion-MNIST (Debian's dataset-fashion-mnist), captions from templates.
    FashionMnist {
        split: String,
        templates: Vec<String>,
        root: Option<String>,
    },
    /// Random images and token ids, for engine tests and benchmarks.
    Synthetic { samples: u64 },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataSpec {
    pub source: DataSource,
    pub batch: u64,
    pub shuffle: bool,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdamW {
    pub lr: Schedule,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Parameter classes that get no weight decay.
    pub no_decay: Vec<ParamClass>,
    /// Parameter groups with their own learning-rate scale or weight decay; the first group
    /// that names a parameter applies to it.
    pub groups: Vec<ParamGroup>,
}

/// Parameters chosen by name, with their own optimiser settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamGroup {
    /// The patterns as written: full parameter names (`student/visual_projection.weight`,
    /// `loss/clip_kd.w_image.weight`) with `*` for any run of characters and `{a..b}` ranges.
    pub patterns: Vec<String>,
    /// The group's learning rate is the schedule's times this.
    pub lr_scale: f64,
    /// Replaces the optimiser's weight decay for the group's decayed parameters.
    pub weight_decay: Option<f64>,
    /// The parameter names the patterns match (filled when the stage is checked).
    pub names: Vec<String>,
}

/// Whether a full parameter name matches a pattern with `*` wildcards (ranges already expanded).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Length {
    Epochs(u64),
    Steps(u64),
}

/// The number format a stage trains in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Precision {
    Fp32,
    Bf16,
    Fp16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Bf16, Precision::Fp16];

    /// The word a recipe writes (`bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainSpec {
    pub optimizer: AdamW,
    pub length: Length,
    pub clip_grad: Option<f64>,
    pub accumulate: u64,
    pub precision: Precision,
    pub seed: u64,
    pub checkpoint_every: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum EvalSpec {
    ZeroShot {
        model: ModelId,
        data: DataSpec,
        templates: Vec<String>,
        /// Also every this many optimiser steps of each stage that trains the model.
        every: Option<u64>,
    },
    Retrieval {
        model: ModelId,
        data: DataSpec,
        k: Vec<u64>,
        every: Option<u64>,
    },
}

impl EvalSpec {
    pub fn model(&self) -> ModelId {
        match self {
            EvalSpec::ZeroShot { model, .. } | EvalSpec::Retrieval { model, .. } => *model,
        }
    }

    pub fn every(&self) -> Option<u64> {
        match self {
            EvalSpec::ZeroShot { every, .. } | EvalSpec::Retrieval { every, .. } => *every,
        }
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn durations_resolve_on_the_stage_clock() {
        let clock = Clock {
            total: 1000,
            per_epoch: 250,
        };
        assert_eq!(Duration::Steps(7).steps(clock), 7);
        assert_eq!(Duration::Epochs(2).steps(clock), 500);
        assert_eq!(Duration::Fraction(0.05).steps(clock), 50);
        // A warm-up of 5% of 1000 steps: peak reached at step 49, cosine after.
        let lr = Schedule::Cosine {
            peak: 1.0,
            warmup: Duration::Fraction(0.05),
            end: 0.0,
            steps: None,
        };
        assert_eq!(lr.at(0, clock), 1.0 / 50.0);
        assert_eq!(lr.at(49, clock), 1.0);
        assert!((lr.at(525, clock) - 0.5).abs() < 1e-12);
        // Boundaries in epochs and fractions.
        let s = Schedule::Step {
            values: vec![1.0, 2.0, 3.0],
            at: vec![Duration::Epochs(1), Duration::Fraction(0.75)],
        };
        assert_eq!(
            (s.at(249, clock), s.at(250, clock), s.at(750, clock)),
            (1.0, 2.0, 3.0)
        );
        let r = Schedule::Ramp {
            from: 0.0,
            to: 1.0,
            start: Duration::Epochs(1),
            steps: Duration::Fraction(0.5),
        };
        assert_eq!(
            (r.at(250, clock), r.at(500, clock), r.at(750, clock)),
            (0.0, 0.5, 1.0)
        );
    }
}
