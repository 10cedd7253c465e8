//! The values the checker computes while it evaluates a recipe.

use crate::ir::{DataSpec, EvalSpec, ModelId, NodeId, Schedule};
use crate::model::{LogitScaleSpec, Part, PreprocessSpec, TextSpec, TokenizerSpec, VisionSpec};
use crate::shape::{Dim, Shape};
use crate::source::Span;

#[derive(Clone, Debug)]
pub enum Value {
    /// An error was already reported for this value; anything computed from it is silently
    /// an error too, so one mistake gives one diagnostic.
    Error,
    Num(f64),
    Str(String),
    Bool(bool),
    /// A built-in constant such as `quick_gelu`, `diagonal` or `bf16`.
    Enum(&'static str),
    List(Vec<(Value, Span)>),
    /// A model, possibly seen through MFD's patch mask.
    Model {
        id: ModelId,
        mask: Option<crate::ir::Mask>,
    },
    /// One part of a model, for `freeze`.
    Part(ModelId, Part),
    Vision(VisionSpec),
    Text(TextSpec),
    ScaleOption(LogitScaleSpec),
    Tokenizer(TokenizerSpec),
    Preprocess(PreprocessSpec),
    Tensor(NodeId, Shape),
    /// A dimension; `source` is the tensor and axis it was read from, when it is not a
    /// compile-time number.
    Dim(Dim, Option<(NodeId, usize)>),
    Schedule(Schedule),
    Data(DataSpec),
    TrainPart(TrainPart),
    Train(Vec<(TrainPart, Span)>),
    Eval(EvalSpec),
    Func(FuncRef),
    /// An optimiser parameter group.
    Group(crate::ir::ParamGroup),
    /// A span of training for a schedule (`fraction(0.05)`).
    Duration(crate::ir::Duration),
    /// What a `test` expects: `actual` within `tol` of `expected` (nodes of the test's graph).
    Expect(Expectation),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expectation {
    pub actual: crate::ir::NodeId,
    pub expected: crate::ir::NodeId,
    pub tol: f64,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FuncRef {
    Builtin(&'static str),
    /// A `fn` defined in a module, by module index and name.
    User(usize, String),
}

/// One element of a `train` pipeline.
#[derive(Clone, Debug)]
pub enum TrainPart {
    Optimizer(crate::ir::AdamW),
    Epochs(u64),
    Steps(u64),
    ClipGrad(f64),
    Accumulate(u64),
    Precision(crate::ir::Precision),
    Seed(u64),
    Checkpoint(u64),
}

impl TrainPart {
    pub fn setting(&self) -> &'static str {
        match self {
            TrainPart::Optimizer(_) => "optimiser",
            TrainPart::Epochs(_) | TrainPart::Steps(_) => "length",
            TrainPart::ClipGrad(_) => "clip_grad",
            TrainPart::Accumulate(_) => "accumulate",
            TrainPart::Precision(_) => "precision",
            TrainPart::Seed(_) => "seed",
            TrainPart::Checkpoint(_) => "checkpoint",
        }
    }
}

impl Value {
    /// What the value is, for messages: "a model", "a tensor [B, 512]".
    pub fn kind(&self) -> String {
        match self {
            Value::Error => "an erroneous value".into(),
            Value::Num(_) => "a number".into(),
            Value::Str(_) => "a string".into(),
            Value::Bool(_) => "a boolean".into(),
            Value::Enum(name) => format!("the constant `{name}`"),
            Value::List(_) => "a list".into(),
            Value::Model { .. } => "a model".into(),
            Value::Part(..) => "a model part".into(),
            Value::Vision(_) => "an image tower".into(),
            Value::Text(_) => "a text tower".into(),
            Value::ScaleOption(_) => "a logit-scale setting".into(),
            Value::Tokenizer(_) => "a tokenizer".into(),
            Value::Preprocess(_) => "an image preprocessing".into(),
            Value::Tensor(_, shape) if shape.is_scalar() => "a scalar".into(),
            Value::Tensor(_, shape) => format!("a tensor {shape}"),
            Value::Dim(d, _) => format!("a dimension ({})", d.describe()),
            Value::Schedule(_) => "a schedule".into(),
            Value::Data(_) => "a data set".into(),
            Value::TrainPart(p) => format!("a training setting ({})", p.setting()),
            Value::Train(_) => "a training pipeline".into(),
            Value::Eval(_) => "an evaluation".into(),
            Value::Func(_) => "a function".into(),
            Value::Group(_) => "a parameter group".into(),
            Value::Duration(_) => "a span of training".into(),
            Value::Expect(_) => "an expectation".into(),
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error)
    }
}
