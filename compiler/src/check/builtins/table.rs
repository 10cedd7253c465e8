//! The table of built-ins: every built-in declared once, with its typed parameters, the
//! function that checks a call, and its summary.

use super::Bound;
use crate::check::value::Value;
use crate::check::{Checker, Ctx};
use crate::model;
use crate::source::Span;

/// How a parameter is passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Required,
    Optional,
    /// A boolean that a bare word sets: `frozen` alone means `frozen: true`.
    Flag,
}

/// A parameter's default value, for optional parameters that have one.
#[derive(Clone, Copy, Debug)]
pub enum Default {
    Num(f64),
    Bool(bool),
    Str(&'static str),
    Nums(&'static [f64]),
    Strs(&'static [&'static str]),
    /// A list of built-in constants (`[gains, biases, scales]`).
    Words(&'static [&'static str]),
}

impl Default {
    pub(super) fn value(self, span: Span) -> Value {
        match self {
            Default::Num(v) => Value::Num(v),
            Default::Bool(b) => Value::Bool(b),
            Default::Str(s) => Value::Str(s.to_string()),
            Default::Nums(v) => Value::List(v.iter().map(|x| (Value::Num(*x), span)).collect()),
            Default::Strs(v) => Value::List(
                v.iter()
                    .map(|x| (Value::Str(x.to_string()), span))
                    .collect(),
            ),
            Default::Words(v) => Value::List(v.iter().map(|x| (Value::Enum(x), span)).collect()),
        }
    }

    /// As a recipe would write it.
    pub(super) fn written(self) -> String {
        let num = |v: f64| crate::fmt_num(v);
        match self {
            Default::Num(v) => num(v),
            Default::Bool(b) => b.to_string(),
            Default::Str(s) => format!("{s:?}"),
            Default::Nums(v) => format!(
                "[{}]",
                v.iter().map(|x| num(*x)).collect::<Vec<_>>().join(", ")
            ),
            Default::Strs(v) => format!(
                "[{}]",
                v.iter()
                    .map(|x| format!("{x:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Default::Words(v) => format!("[{}]", v.join(", ")),
        }
    }
}

/// One parameter of a built-in or of a user function.
#[derive(Clone, Copy, Debug)]
pub struct ParamSig<'a> {
    pub name: &'a str,
    pub kind: ParamKind,
    pub default: Option<Default>,
}

const fn req(name: &'static str) -> ParamSig<'static> {
    ParamSig {
        name,
        kind: ParamKind::Required,
        default: None,
    }
}
const fn opt(name: &'static str) -> ParamSig<'static> {
    ParamSig {
        name,
        kind: ParamKind::Optional,
        default: None,
    }
}
const fn flag(name: &'static str) -> ParamSig<'static> {
    ParamSig {
        name,
        kind: ParamKind::Flag,
        default: None,
    }
}
const fn with(name: &'static str, default: Default) -> ParamSig<'static> {
    ParamSig {
        name,
        kind: ParamKind::Optional,
        default: Some(default),
    }
}
const fn num(name: &'static str, v: f64) -> ParamSig<'static> {
    with(name, Default::Num(v))
}
const fn yes(name: &'static str) -> ParamSig<'static> {
    with(name, Default::Bool(true))
}
const fn text(name: &'static str, s: &'static str) -> ParamSig<'static> {
    with(name, Default::Str(s))
}
const fn nums(name: &'static str, v: &'static [f64]) -> ParamSig<'static> {
    with(name, Default::Nums(v))
}
const fn texts(name: &'static str, v: &'static [&'static str]) -> ParamSig<'static> {
    with(name, Default::Strs(v))
}
const fn words(name: &'static str, v: &'static [&'static str]) -> ParamSig<'static> {
    with(name, Default::Words(v))
}

/// What checks a call of a built-in and makes its value.
pub type Run = for<'c, 'p> fn(&'c mut Checker<'p>, &mut Ctx, &Bound, Span) -> Value;

pub struct Builtin {
    pub name: &'static str,
    pub params: &'static [ParamSig<'static>],
    pub run: Run,
    pub doc: &'static str,
}

const fn builtin(
    name: &'static str,
    params: &'static [ParamSig<'static>],
    run: Run,
    doc: &'static str,
) -> Builtin {
    Builtin {
        name,
        params,
        run,
        doc,
    }
}

/// Every built-in function, in the order the manual lists them.
pub const BUILTINS: &[Builtin] = &[
    // Models.
    builtin(
        "clip",
        &[
            opt("preset"),
            opt("image"),
            opt("text"),
            opt("embed"),
            opt("act"),
            opt("weights"),
            flag("frozen"),
            opt("logit_scale"),
            opt("tokenizer"),
            opt("preprocess"),
        ],
        |c, ctx, b, span| c.clip(ctx, b, span),
        "A CLIP model: a named `preset`, or `image`, `text` towers and an `embed` width.",
    ),
    builtin(
        "ema",
        &[req("model"), req("decay")],
        |c, ctx, b, span| c.ema(ctx, b, span),
        "A frozen copy of a model whose parameters follow its exponential moving average (decay in [0, 1)).",
    ),
    builtin(
        "vit",
        &[
            req("size"),
            req("patch"),
            req("width"),
            req("layers"),
            req("heads"),
            opt("mlp"),
            flag("frozen"),
        ],
        |c, ctx, b, span| c.vit(ctx, b, span),
        "A ViT image tower.",
    ),
    builtin(
        "transformer",
        &[
            req("context"),
            req("vocab"),
            req("width"),
            req("layers"),
            req("heads"),
            opt("mlp"),
            flag("frozen"),
        ],
        |c, ctx, b, span| c.transformer(ctx, b, span),
        "CLIP's causal text transformer.",
    ),
    builtin(
        "bert",
        &[
            opt("preset"),
            opt("context"),
            opt("vocab"),
            opt("width"),
            opt("layers"),
            opt("heads"),
            opt("mlp"),
            opt("weights"),
            flag("frozen"),
            opt("family"),
        ],
        |c, ctx, b, span| c.bert(ctx, b, span),
        "A BERT-family text encoder (MiniLM, XLM-R), mean-pooled; `family: roberta` for XLM-R's positions and LayerNorm.",
    ),
    builtin(
        "learnable",
        &[req("init"), num("min", 1.0), num("max", 100.0)],
        |c, ctx, b, span| c.learnable(ctx, b, span),
        "A learnable logit scale σ = exp(t), clamped to [min, max].",
    ),
    builtin(
        "fixed",
        &[req("value")],
        |c, ctx, b, span| c.fixed(ctx, b, span),
        "A fixed logit scale.",
    ),
    builtin(
        "clip_bpe",
        &[num("context", 77.0), opt("vocab")],
        |c, ctx, b, span| c.clip_bpe(ctx, b, span),
        "open_clip's byte-level BPE tokenizer.",
    ),
    builtin(
        "tokenizer",
        &[req("file"), num("context", 77.0)],
        |c, ctx, b, span| c.tokenizer(ctx, b, span),
        "A Hugging Face tokenizer.json.",
    ),
    builtin(
        "image_pre",
        &[
            num("resize", 224.0),
            opt("crop"),
            nums("mean", &model::CLIP_MEAN),
            nums("std", &model::CLIP_STD),
        ],
        |c, ctx, b, span| c.image_pre(ctx, b, span),
        "Image preprocessing: resize the short side, centre-crop, normalise.",
    ),
    // Data.
    builtin(
        "pairs",
        &[
            req("csv"),
            text("image", "filepath"),
            text("caption", "title"),
            text("sep", "\t"),
            req("batch"),
            yes("shuffle"),
            num("seed", 0.0),
        ],
        |c, ctx, b, span| c.pairs(ctx, b, span),
        "Image-text pairs from a CSV (open_clip convention).",
    ),
    builtin(
        "folders",
        &[
            req("root"),
            text("template", "a photo of a {}."),
            req("batch"),
            yes("shuffle"),
            num("seed", 0.0),
        ],
        |c, ctx, b, span| c.folders(ctx, b, span),
        "One folder per class; captions from a template.",
    ),
    builtin(
        "webdataset",
        &[req("shards"), req("batch"), yes("shuffle"), num("seed", 0.0)],
        |c, ctx, b, span| c.webdataset(ctx, b, span),
        "Image-text samples from webdataset .tar shards (open_clip's --train-data): `shards` \
         names them with brace ranges and lists (\"data/{00000..00099}.tar\", {a,b}), several \
         patterns joined by `::`; image from the jpg/png/jpeg member, caption from txt (else \
         json's \"caption\").",
    ),
    builtin(
        "fashion_mnist",
        &[
            text("split", "train"),
            texts("templates", &["a photo of a {}."]),
            opt("root"),
            req("batch"),
            yes("shuffle"),
            num("seed", 0.0),
        ],
        |c, ctx, b, span| c.fashion_mnist(ctx, b, span),
        "The built-in Fashion-MNIST.",
    ),
    builtin(
        "synthetic",
        &[
            req("batch"),
            num("samples", 1024.0),
            yes("shuffle"),
            num("seed", 0.0),
        ],
        |c, ctx, b, span| c.synthetic(ctx, b, span),
        "Random images and token ids.",
    ),
    // Training.
    builtin(
        "adamw",
        &[
            req("lr"),
            num("weight_decay", 0.1),
            nums("betas", &[0.9, 0.98]),
            num("eps", 1e-6),
            words("no_decay", &["gains", "biases", "scales"]),
            opt("groups"),
        ],
        |c, ctx, b, span| c.adamw(ctx, b, span),
        "AdamW with decoupled weight decay.",
    ),
    builtin(
        "group",
        &[req("params"), num("lr_scale", 1.0), opt("weight_decay")],
        |c, ctx, b, span| c.param_group(ctx, b, span),
        "Optimiser settings for some parameters: a model, a part, or name patterns (`*`, `{0..5}`).",
    ),
    builtin(
        "epochs",
        &[req("count")],
        |c, ctx, b, span| c.epochs(ctx, b, span),
        "Train for this many passes over the data.",
    ),
    builtin(
        "steps",
        &[req("count")],
        |c, ctx, b, span| c.steps(ctx, b, span),
        "Train for this many optimiser steps.",
    ),
    builtin(
        "clip_grad",
        &[req("norm")],
        |c, ctx, b, span| c.clip_grad(ctx, b, span),
        "Clip the global gradient norm.",
    ),
    builtin(
        "accumulate",
        &[req("count")],
        |c, ctx, b, span| c.accumulate(ctx, b, span),
        "Accumulate gradients over this many micro-batches per step.",
    ),
    builtin(
        "precision",
        &[req("format")],
        |c, ctx, b, span| c.precision(ctx, b, span),
        "Numeric precision: fp32, bf16 or fp16.",
    ),
    builtin(
        "seed",
        &[req("value")],
        |c, ctx, b, span| c.seed(ctx, b, span),
        "The random seed for initialisation, masking and shuffling.",
    ),
    builtin(
        "checkpoint",
        &[req("every")],
        |c, ctx, b, span| c.checkpoint(ctx, b, span),
        "Write a checkpoint every n steps.",
    ),
    // Schedules.
    builtin(
        "cosine",
        &[
            req("peak"),
            num("warmup", 0.0),
            num("end", 0.0),
            opt("steps"),
        ],
        |c, ctx, b, span| c.cosine(ctx, b, span),
        "Linear warm-up to `peak`, then a half cosine to `end`.",
    ),
    builtin(
        "ramp",
        &[req("from"), req("to"), req("steps"), num("start", 0.0)],
        |c, ctx, b, span| c.ramp(ctx, b, span),
        "Linear from `from` to `to` over `steps` steps.",
    ),
    builtin(
        "fraction",
        &[req("x")],
        |c, ctx, b, span| c.fraction(ctx, b, span),
        "A part x (0 to 1) of the stage's steps, for a schedule's warm-up, length or boundaries.",
    ),
    builtin(
        "step",
        &[req("values"), req("at")],
        |c, ctx, b, span| c.step(ctx, b, span),
        "Piecewise constant: values[i] from boundary at[i-1] on.",
    ),
    // Evaluation.
    builtin(
        "zero_shot",
        &[
            req("model"),
            req("data"),
            texts("templates", &["a photo of a {}."]),
            opt("every"),
        ],
        |c, ctx, b, span| c.evaluation(ctx, b, span),
        "Zero-shot classification accuracy (after training; also every n steps with `every: n`).",
    ),
    builtin(
        "retrieval",
        &[req("model"), req("data"), nums("k", &[1.0, 5.0, 10.0]), opt("every")],
        |c, ctx, b, span| c.evaluation(ctx, b, span),
        "Image-text retrieval recall at k (after training; also every n steps with `every: n`).",
    ),
    // Tensor primitives.
    builtin(
        "matmul",
        &[req("a"), req("b")],
        |c, ctx, b, span| c.matmul(ctx, b, span),
        "Matrix product over the last two axes (also written `a @ b`).",
    ),
    builtin(
        "transpose",
        &[req("x")],
        |c, ctx, b, span| c.transpose(ctx, b, span),
        "Swap the last two axes (also written `x.T`).",
    ),
    builtin(
        "softmax",
        &[req("x"), opt("axis")],
        |c, ctx, b, span| c.along_axis(ctx, b, span),
        "Softmax along an axis (default: the last).",
    ),
    builtin(
        "log_softmax",
        &[req("x"), opt("axis")],
        |c, ctx, b, span| c.along_axis(ctx, b, span),
        "Log-softmax along an axis (default: the last).",
    ),
    builtin(
        "norm",
        &[req("x"), opt("axis"), num("eps", 1e-12)],
        |c, ctx, b, span| c.along_axis(ctx, b, span),
        "x / max(‖x‖₂, eps) along an axis (default: the last; eps 1e-12, as PyTorch's F.normalize).",
    ),
    builtin(
        "mean",
        &[req("x"), opt("axis"), opt("keepdim")],
        |c, ctx, b, span| c.reduction(ctx, b, span),
        "Mean over an axis, or over everything (`keepdim: true` keeps it with size 1).",
    ),
    builtin(
        "sum",
        &[req("x"), opt("axis"), opt("keepdim")],
        |c, ctx, b, span| c.reduction(ctx, b, span),
        "Sum over an axis, or over everything (`keepdim: true` keeps it with size 1).",
    ),
    builtin(
        "var",
        &[req("x"), opt("axis"), opt("keepdim")],
        |c, ctx, b, span| c.reduction(ctx, b, span),
        "Biased variance over an axis, or over everything (`keepdim: true` keeps it with size 1).",
    ),
    builtin(
        "mse",
        &[req("a"), req("b")],
        |c, ctx, b, span| c.pairwise_loss(ctx, b, span),
        "Mean squared error over all elements.",
    ),
    builtin(
        "l1",
        &[req("a"), req("b")],
        |c, ctx, b, span| c.pairwise_loss(ctx, b, span),
        "Mean absolute error over all elements.",
    ),
    builtin(
        "smooth_l1",
        &[req("a"), req("b"), num("beta", 1.0)],
        |c, ctx, b, span| c.pairwise_loss(ctx, b, span),
        "Mean smooth-L1 (Huber) error with threshold beta (default 1).",
    ),
    builtin(
        "kl",
        &[req("log_p"), req("log_q")],
        |c, ctx, b, span| c.pairwise_loss(ctx, b, span),
        "KL(p ‖ q) from log-probabilities along the last axis, mean over rows.",
    ),
    builtin(
        "cross_entropy",
        &[req("logits"), req("target")],
        |c, ctx, b, span| c.cross_entropy(ctx, b, span),
        "Cross-entropy of row logits against `diagonal` or target probabilities, mean over rows.",
    ),
    builtin(
        "concat",
        &[req("a"), req("b"), opt("axis")],
        |c, ctx, b, span| c.concat(ctx, b, span),
        "Concatenate along an axis (default: the last).",
    ),
    builtin(
        "linear",
        &[req("x"), req("to"), yes("bias"), opt("name")],
        |c, ctx, b, span| c.linear(ctx, b, span),
        "A learnable linear map of the last axis to width `to`, owned by the loss.",
    ),
    builtin(
        "proj",
        &[req("x"), req("to"), opt("name")],
        |c, ctx, b, span| c.proj(ctx, b, span),
        "The identity when x is already `to` wide, otherwise `linear(x, to)`.",
    ),
    builtin(
        "attention",
        &[req("q"), req("k"), req("v"), num("heads", 1.0)],
        |c, ctx, b, span| c.attention(ctx, b, span),
        "Multi-head scaled dot-product attention softmax(q kᵀ/√d) v.",
    ),
    builtin(
        "param",
        &[req("init"), nums("shape", &[]), opt("clamp"), opt("name")],
        |c, ctx, b, span| c.param(ctx, b, span),
        "A learnable tensor owned by the loss.",
    ),
    builtin(
        "logit_scale",
        &[req("init"), num("min", 1.0), num("max", 100.0), opt("name")],
        |c, ctx, b, span| c.logit_scale(ctx, b, span),
        "A learnable scale σ = exp(t) owned by the loss, clamped to [min, max].",
    ),
    builtin(
        "detach",
        &[req("x")],
        |c, ctx, b, span| c.detach(ctx, b, span),
        "The value without gradient.",
    ),
    builtin(
        "exp",
        &[req("x")],
        |c, ctx, b, span| c.elementwise(ctx, b, span),
        "eˣ.",
    ),
    builtin(
        "log",
        &[req("x")],
        |c, ctx, b, span| c.elementwise(ctx, b, span),
        "Natural logarithm.",
    ),
    builtin(
        "sqrt",
        &[req("x")],
        |c, ctx, b, span| c.elementwise(ctx, b, span),
        "Square root.",
    ),
    builtin(
        "abs",
        &[req("x")],
        |c, ctx, b, span| c.elementwise(ctx, b, span),
        "Absolute value.",
    ),
    builtin(
        "relu",
        &[req("x")],
        |c, ctx, b, span| c.elementwise(ctx, b, span),
        "max(x, 0), gradient 0 at 0.",
    ),
    builtin(
        "sigmoid",
        &[req("x")],
        |c, ctx, b, span| c.elementwise(ctx, b, span),
        "1 / (1 + e⁻ˣ).",
    ),
    builtin(
        "tanh",
        &[req("x")],
        |c, ctx, b, span| c.elementwise(ctx, b, span),
        "Hyperbolic tangent.",
    ),
    builtin(
        "clamp",
        &[req("x"), opt("min"), opt("max")],
        |c, ctx, b, span| c.clamp_values(ctx, b, span),
        "x limited to [min, max] (either may be left out); gradient 1 inside, 0 outside.",
    ),
    builtin(
        "max",
        &[req("x"), opt("y"), opt("axis"), opt("keepdim")],
        |c, ctx, b, span| c.extreme(ctx, b, span),
        "The element-wise larger of x and y, or the largest value of x over an axis or everything.",
    ),
    builtin(
        "min",
        &[req("x"), opt("y"), opt("axis"), opt("keepdim")],
        |c, ctx, b, span| c.extreme(ctx, b, span),
        "The element-wise smaller of x and y, or the smallest value of x over an axis or everything.",
    ),
    builtin(
        "argmax",
        &[req("x"), opt("axis"), opt("keepdim")],
        |c, ctx, b, span| c.arg_extreme(ctx, b, span),
        "The position of the largest value along an axis (the first on ties); no gradient.",
    ),
    builtin(
        "argmin",
        &[req("x"), opt("axis"), opt("keepdim")],
        |c, ctx, b, span| c.arg_extreme(ctx, b, span),
        "The position of the smallest value along an axis (the first on ties); no gradient.",
    ),
    builtin(
        "topk",
        &[req("x"), req("k"), opt("axis")],
        |c, ctx, b, span| c.topk(ctx, b, span),
        "The k largest values along an axis (default: the last), largest first; the gradient goes back to their positions.",
    ),
    builtin(
        "gt",
        &[req("a"), req("b")],
        |c, ctx, b, span| c.compare(ctx, b, span),
        "1 where a > b, else 0 (broadcast; no gradient).",
    ),
    builtin(
        "ge",
        &[req("a"), req("b")],
        |c, ctx, b, span| c.compare(ctx, b, span),
        "1 where a ≥ b, else 0 (broadcast; no gradient).",
    ),
    builtin(
        "lt",
        &[req("a"), req("b")],
        |c, ctx, b, span| c.compare(ctx, b, span),
        "1 where a < b, else 0 (broadcast; no gradient).",
    ),
    builtin(
        "le",
        &[req("a"), req("b")],
        |c, ctx, b, span| c.compare(ctx, b, span),
        "1 where a ≤ b, else 0 (broadcast; no gradient).",
    ),
    builtin(
        "eq",
        &[req("a"), req("b")],
        |c, ctx, b, span| c.compare(ctx, b, span),
        "1 where a = b, else 0 (broadcast; no gradient).",
    ),
    builtin(
        "ne",
        &[req("a"), req("b")],
        |c, ctx, b, span| c.compare(ctx, b, span),
        "1 where a ≠ b, else 0 (broadcast; no gradient).",
    ),
    builtin(
        "where",
        &[req("cond"), req("a"), req("b")],
        |c, ctx, b, span| c.select_where(ctx, b, span),
        "a where cond ≠ 0, else b (broadcast); the gradient reaches only the branch taken.",
    ),
    builtin(
        "cdist",
        &[req("a"), req("b")],
        |c, ctx, b, span| c.cdist(ctx, b, span),
        "Euclidean distances between the rows of a [.., M, D] and b [.., N, D]: [.., M, N].",
    ),
    builtin(
        "reshape",
        &[req("x"), req("shape")],
        |c, ctx, b, span| c.reshape(ctx, b, span),
        "The same elements in another shape; one size may be -1.",
    ),
    builtin(
        "unsqueeze",
        &[req("x"), req("axis")],
        |c, ctx, b, span| c.unsqueeze(ctx, b, span),
        "A new axis of size 1 at `axis` (-1: at the end).",
    ),
    builtin(
        "squeeze",
        &[req("x"), req("axis")],
        |c, ctx, b, span| c.squeeze(ctx, b, span),
        "Removes an axis of size 1.",
    ),
    builtin(
        "permute",
        &[req("x"), req("axes")],
        |c, ctx, b, span| c.permute(ctx, b, span),
        "Reorders the axes: output axis i is input axis axes[i].",
    ),
    builtin(
        "stack",
        &[req("a"), req("b"), num("axis", 0.0)],
        |c, ctx, b, span| c.stack(ctx, b, span),
        "Two tensors of one shape stacked along a new axis of size 2.",
    ),
    builtin(
        "tensor",
        &[req("values")],
        |c, ctx, b, span| c.tensor_literal(ctx, b, span),
        "A constant tensor: a number, or nested lists of numbers (`tensor([[1, 2], [3, 4]])`).",
    ),
    builtin(
        "expect",
        &[req("actual"), req("expected"), num("tol", 1e-5)],
        |c, ctx, b, span| c.expect(ctx, b, span),
        "In a `test`: every entry of actual within tol·(1 + |expected|) of expected.",
    ),
    builtin(
        "eye",
        &[req("n")],
        |c, ctx, b, span| c.eye(ctx, b, span),
        "The n × n identity matrix.",
    ),
    builtin(
        "rows",
        &[req("x")],
        |c, ctx, b, span| c.axis_size(ctx, b, span),
        "The size of the first axis.",
    ),
    builtin(
        "size",
        &[req("x"), req("axis")],
        |c, ctx, b, span| c.axis_size(ctx, b, span),
        "The size of an axis.",
    ),
];
