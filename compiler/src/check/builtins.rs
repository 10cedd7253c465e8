//! Built-in functions and constants: the language's primitives. Each entry's parameter list
//! is written `name` (required), `name?` (optional) or `name!` (a flag: `frozen` alone means
//! `frozen: true`).

use super::value::{TrainPart, Value};
use super::{Checker, Ctx, Env};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::fmt_num;
use crate::ir::{self, DataSource, DataSpec, EvalSpec, Init, LossKind, NodeId, Op, ParamSpec, Schedule};
use kdc_backend::op::F32;
use crate::model::{
    self, Activation, LogitScaleSpec, ModelSpec, ParamClass, PreprocessSpec, TextKind, TextSpec,
    TokenizerSpec, VisionSpec,
};
use crate::shape::{Dim, Shape};
use crate::source::Span;
use crate::syntax::ast::{self, ExprKind};
use std::cell::Cell;

pub struct Builtin {
    pub name: &'static str,
    pub params: &'static str,
    pub doc: &'static str,
}

macro_rules! builtins {
    ($($name:literal ($params:literal) $doc:literal;)*) => {
        pub const BUILTINS: &[Builtin] = &[$(Builtin { name: $name, params: $params, doc: $doc }),*];
    };
}

builtins! {
    // Models.
    "clip" ("preset?, image?, text?, embed?, act?, weights?, frozen!, logit_scale?, tokenizer?, preprocess?")
        "A CLIP model: a named `preset`, or `image`, `text` towers and an `embed` width.";
    "vit" ("size, patch, width, layers, heads, mlp?, frozen!") "A ViT image tower.";
    "transformer" ("context, vocab, width, layers, heads, mlp?, frozen!") "CLIP's causal text transformer.";
    "bert" ("preset?, context?, vocab?, width?, layers?, heads?, mlp?, weights?, frozen!")
        "A BERT-family text encoder (MiniLM, XLM-R), mean-pooled.";
    "learnable" ("init, min?, max?") "A learnable logit scale σ = exp(t), clamped to [min, max].";
    "fixed" ("value") "A fixed logit scale.";
    "clip_bpe" ("context?, vocab?") "open_clip's byte-level BPE tokenizer.";
    "tokenizer" ("file, context?") "A Hugging Face tokenizer.json.";
    "image_pre" ("resize?, crop?, mean?, std?") "Image preprocessing: resize the short side, centre-crop, normalise.";
    // Data.
    "pairs" ("csv, image?, caption?, sep?, batch, shuffle?, seed?") "Image-text pairs from a CSV (open_clip convention).";
    "folders" ("root, template?, batch, shuffle?, seed?") "One folder per class; captions from a template.";
    "fashion_mnist" ("split?, templates?, root?, batch, shuffle?, seed?") "The built-in Fashion-MNIST.";
    "synthetic" ("batch, samples?, shuffle?, seed?") "Random images and token ids.";
    // Training.
    "adamw" ("lr, weight_decay?, betas?, eps?, no_decay?") "AdamW with decoupled weight decay.";
    "epochs" ("count") "Train for this many passes over the data.";
    "steps" ("count") "Train for this many optimiser steps.";
    "clip_grad" ("norm") "Clip the global gradient norm.";
    "accumulate" ("count") "Accumulate gradients over this many micro-batches per step.";
    "precision" ("format") "Numeric precision: fp32, bf16 or fp16.";
    "seed" ("value") "The random seed for initialisation, masking and shuffling.";
    "checkpoint" ("every") "Write a checkpoint every n steps.";
    // Schedules.
    "cosine" ("peak, warmup?, end?, steps?") "Linear warm-up to `peak`, then a half cosine to `end`.";
    "ramp" ("from, to, steps, start?") "Linear from `from` to `to` over `steps` steps.";
    "step" ("values, at") "Piecewise constant: values[i] from boundary at[i-1] on.";
    // Evaluation.
    "zero_shot" ("model, data, templates?") "Zero-shot classification accuracy.";
    "retrieval" ("model, data, k?") "Image-text retrieval recall at k.";
    // Tensor primitives.
    "matmul" ("a, b") "Matrix product over the last two axes (also written `a @ b`).";
    "transpose" ("x") "Swap the last two axes (also written `x.T`).";
    "softmax" ("x, axis?") "Softmax along an axis (default: the last).";
    "log_softmax" ("x, axis?") "Log-softmax along an axis (default: the last).";
    "norm" ("x, axis?") "x / ‖x‖₂ along an axis (default: the last).";
    "mean" ("x, axis?") "Mean over an axis, or over everything.";
    "sum" ("x, axis?") "Sum over an axis, or over everything.";
    "var" ("x, axis?") "Biased variance over an axis, or over everything.";
    "mse" ("a, b") "Mean squared error over all elements.";
    "l1" ("a, b") "Mean absolute error over all elements.";
    "smooth_l1" ("a, b, beta?") "Mean smooth-L1 (Huber) error with threshold beta (default 1).";
    "kl" ("log_p, log_q") "KL(p ‖ q) from log-probabilities along the last axis, mean over rows.";
    "cross_entropy" ("logits, target") "Cross-entropy of row logits against `diagonal` or target probabilities, mean over rows.";
    "concat" ("a, b, axis?") "Concatenate along an axis (default: the last).";
    "linear" ("x, to, bias?, name?") "A learnable linear map of the last axis to width `to`, owned by the loss.";
    "proj" ("x, to, name?") "The identity when x is already `to` wide, otherwise `linear(x, to)`.";
    "attention" ("q, k, v, heads?") "Multi-head scaled dot-product attention softmax(q kᵀ/√d) v.";
    "param" ("init, shape?, clamp?, name?") "A learnable tensor owned by the loss.";
    "logit_scale" ("init, min?, max?, name?") "A learnable scale σ = exp(t) owned by the loss, clamped to [min, max].";
    "detach" ("x") "The value without gradient.";
    "exp" ("x") "eˣ.";
    "log" ("x") "Natural logarithm.";
    "sqrt" ("x") "Square root.";
    "abs" ("x") "Absolute value.";
    "eye" ("n") "The n × n identity matrix.";
    "rows" ("x") "The size of the first axis.";
    "size" ("x, axis") "The size of an axis.";
}

/// The largest size, count or step number a recipe may give: far beyond any real model or
/// run, and small enough that products of sizes cannot overflow.
const MAX_COUNT: f64 = 1e9;

/// Built-in constants.
pub const CONSTANTS: &[&str] = &[
    "quick_gelu",
    "gelu",
    "diagonal",
    "fp32",
    "bf16",
    "fp16",
    "weights",
    "embeddings",
    "gains",
    "biases",
    "scales",
];

/// What is wrong with a learning-rate schedule, if anything: it must never be negative and
/// must be positive somewhere.
fn learning_rate_problem(lr: &Schedule) -> Option<String> {
    let (values, peak): (Vec<f64>, f64) = match lr {
        Schedule::Constant(v) => (vec![*v], *v),
        Schedule::Cosine { peak, end, .. } => (vec![*peak, *end], *peak),
        Schedule::Ramp { from, to, .. } => (vec![*from, *to], from.max(*to)),
        Schedule::Step { values, .. } => (
            values.clone(),
            values.iter().cloned().fold(f64::MIN, f64::max),
        ),
        Schedule::Scaled(f, inner) => {
            if *f <= 0.0 {
                return Some(format!(
                    "is scaled by {}, which is not positive",
                    fmt_num(*f)
                ));
            }
            return learning_rate_problem(inner);
        }
    };
    if let Some(v) = values.iter().find(|v| **v < 0.0) {
        return Some(format!("would become negative ({})", fmt_num(*v)));
    }
    (peak <= 0.0).then(|| format!("must be positive, not {}", fmt_num(peak)))
}

/// `name(params): doc` for a built-in function, for `kdc explain NAME`.
pub fn describe(name: &str) -> Option<String> {
    let b = BUILTINS.iter().find(|b| b.name == name)?;
    Some(format!("{}({})  [built-in]\n\n{}", b.name, b.params, b.doc))
}

/// The flag parameters of a built-in (`frozen`), which may appear as bare names.
pub fn flag_names(name: &str) -> Vec<&'static str> {
    BUILTINS
        .iter()
        .find(|b| b.name == name)
        .map(|b| {
            signature(b)
                .into_iter()
                .filter(|p| p.flag)
                .map(|p| p.name)
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Clone, Copy, Debug)]
pub struct ParamSig {
    pub name: &'static str,
    pub required: bool,
    pub flag: bool,
}

fn signature(b: &Builtin) -> Vec<ParamSig> {
    b.params
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.strip_suffix('?') {
            Some(n) => ParamSig {
                name: n,
                required: false,
                flag: false,
            },
            None => match p.strip_suffix('!') {
                Some(n) => ParamSig {
                    name: n,
                    required: false,
                    flag: true,
                },
                None => ParamSig {
                    name: p,
                    required: true,
                    flag: false,
                },
            },
        })
        .collect()
}

/// Arguments matched to parameters.
pub struct Bound {
    pub names: Vec<&'static str>,
    pub values: Vec<Option<(Value, Span)>>,
    pub call_span: Span,
    pub callee: String,
    /// Set when an argument was present but wrong; the caller then yields `Value::Error`.
    pub bad: Cell<bool>,
}

impl Bound {
    fn get(&self, name: &str) -> Option<(Value, Span)> {
        let i = self.names.iter().position(|n| *n == name)?;
        self.values[i].clone()
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn span(&self, name: &str) -> Span {
        self.get(name).map(|(_, s)| s).unwrap_or(self.call_span)
    }
}

impl<'p> Checker<'p> {
    pub(super) fn bind_args(
        &mut self,
        ctx: &mut Ctx,
        env: &Env,
        callee: &str,
        sig: &[ParamSig],
        args: &[ast::Arg],
        call_span: Span,
    ) -> Option<Bound> {
        let mut values: Vec<Option<(Value, Span)>> = vec![None; sig.len()];
        let mut ok = true;
        let mut next_positional = 0;
        let mut suggested: Vec<&'static str> = Vec::new();
        let param_list = || {
            sig.iter()
                .map(|p| format!("`{}`", p.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for arg in args {
            let index = match &arg.name {
                Some(name) => match sig.iter().position(|p| p.name == name.name) {
                    Some(i) => i,
                    None => {
                        let mut d = Diagnostic::error(
                            Code::UnknownArgument,
                            name.span,
                            format!("`{callee}` has no parameter `{}`", name.name),
                        )
                        .primary_label("unknown argument")
                        .note(format!(
                            "`{callee}` takes {}",
                            if sig.is_empty() {
                                "no arguments".to_string()
                            } else {
                                param_list()
                            }
                        ));
                        if let Some(s) =
                            crate::suggest::closest(&name.name, sig.iter().map(|p| p.name))
                        {
                            d = d.hint(format!("did you mean `{s}`?"));
                            suggested.push(s);
                        }
                        self.error(ctx, d);
                        self.eval(ctx, env, &arg.value);
                        ok = false;
                        continue;
                    }
                },
                None => {
                    // A bare flag name: `frozen` alone means `frozen: true`.
                    if let ExprKind::Name(n) = &arg.value.kind {
                        if let Some(i) = sig.iter().position(|p| p.flag && p.name == n) {
                            if !self.name_defined(env, n) {
                                if values[i].is_some() {
                                    self.duplicate_arg(ctx, callee, sig[i].name, arg.span);
                                    ok = false;
                                } else {
                                    values[i] = Some((Value::Bool(true), arg.span));
                                }
                                continue;
                            }
                        }
                    }
                    while next_positional < sig.len() && sig[next_positional].flag {
                        next_positional += 1;
                    }
                    if next_positional >= sig.len() {
                        let count = sig.iter().filter(|p| !p.flag).count();
                        self.error(
                            ctx,
                            Diagnostic::error(
                                Code::TooManyArguments,
                                arg.span,
                                format!(
                                    "`{callee}` takes at most {count} positional argument{}",
                                    if count == 1 { "" } else { "s" }
                                ),
                            )
                            .primary_label("one too many")
                            .note(format!("`{callee}` takes {}", param_list())),
                        );
                        self.eval(ctx, env, &arg.value);
                        ok = false;
                        continue;
                    }
                    next_positional += 1;
                    next_positional - 1
                }
            };
            if values[index].is_some() {
                self.duplicate_arg(ctx, callee, sig[index].name, arg.span);
                self.eval(ctx, env, &arg.value);
                ok = false;
                continue;
            }
            let v = self.eval(ctx, env, &arg.value);
            values[index] = Some((v, arg.value.span));
        }
        // A required parameter that an unknown argument was suggested for is not reported
        // missing too: the suggestion already says what to write.
        let missing: Vec<&str> = sig
            .iter()
            .zip(&values)
            .filter(|(p, v)| p.required && v.is_none() && !suggested.contains(&p.name))
            .map(|(p, _)| p.name)
            .collect();
        if !missing.is_empty() {
            let list = missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ");
            self.error(
                ctx,
                Diagnostic::error(
                    Code::MissingArgument,
                    call_span,
                    format!("`{callee}` is missing {list}"),
                )
                .primary_label(format!("needs {list}"))
                .note(format!("`{callee}` takes {}", param_list())),
            );
            ok = false;
        }
        ok.then(|| Bound {
            names: sig.iter().map(|p| p.name).collect(),
            values,
            call_span,
            callee: callee.to_string(),
            bad: Cell::new(false),
        })
    }

    fn duplicate_arg(&mut self, ctx: &Ctx, callee: &str, name: &str, span: Span) {
        self.error(
            ctx,
            Diagnostic::error(
                Code::DuplicateArgument,
                span,
                format!("`{name}` is given twice to `{callee}`"),
            )
            .primary_label("given again here"),
        );
    }

    /// Whether `name` is bound in scope (so that a bare flag name is not mistaken for it).
    fn name_defined(&self, env: &Env, name: &str) -> bool {
        let module = &self.program.modules[env.module];
        env.locals.contains_key(name)
            || module.bindings.contains_key(name)
            || module.fns.contains_key(name)
            || module.imports.contains_key(name)
            || (env.module == 0 && self.stage_binding(env.stage, name).is_some())
    }

    // ----------------------------------------------------------------------------------------
    // Typed access to bound arguments. Each returns `None` when the argument is absent, and
    // also when it is wrong, after reporting it and marking the call bad.

    fn bad(&mut self, ctx: &Ctx, b: &Bound, d: Diagnostic) {
        self.error(ctx, d);
        b.bad.set(true);
    }

    fn wrong_kind(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        name: &str,
        value: &Value,
        span: Span,
        expected: &str,
    ) {
        if value.is_error() {
            b.bad.set(true);
            return;
        }
        let d = Diagnostic::error(
            Code::TypeMismatch,
            span,
            format!(
                "`{}` expects {expected} for `{name}`, but this is {}",
                b.callee,
                value.kind()
            ),
        )
        .primary_label(format!("this is {}", value.kind()));
        let d = match value {
            Value::Model { .. } if expected.contains("tensor") => {
                d.hint("use one of the model's outputs, such as `.image` or `.text`")
            }
            Value::Str(s) if expected.contains("number") && s.parse::<f64>().is_ok() => {
                d.hint(format!("write the number without quotes: {s}"))
            }
            _ => d,
        };
        self.bad(ctx, b, d);
    }

    fn num(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<f64> {
        let (value, span) = b.get(name)?;
        let v = match value {
            Value::Num(v) => v,
            Value::Dim(ref d, _) if d.size.is_some() => d.size.unwrap() as f64,
            other => {
                self.wrong_kind(ctx, b, name, &other, span, "a number");
                return None;
            }
        };
        if !v.is_finite() {
            self.bad(
                ctx,
                b,
                Diagnostic::error(Code::NotFinite, span, format!("`{name}` must be finite"))
                    .primary_label("not a finite number"),
            );
            return None;
        }
        Some(v)
    }

    /// A number within a range; `open_low`/`open_high` exclude the bound itself.
    #[allow(clippy::too_many_arguments)]
    fn ranged(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        name: &str,
        low: f64,
        high: f64,
        open_low: bool,
        open_high: bool,
    ) -> Option<f64> {
        let v = self.num(ctx, b, name)?;
        let below = if open_low { v <= low } else { v < low };
        let above = if open_high { v >= high } else { v > high };
        if below || above {
            let range = format!(
                "{}{}, {}{}",
                if open_low { "(" } else { "[" },
                fmt_num(low),
                if high.is_infinite() {
                    "∞".to_string()
                } else {
                    fmt_num(high)
                },
                if open_high || high.is_infinite() {
                    ")"
                } else {
                    "]"
                }
            );
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::OutOfRange,
                    b.span(name),
                    format!(
                        "`{name}` of `{}` must be in {range}, not {}",
                        b.callee,
                        fmt_num(v)
                    ),
                )
                .primary_label("out of range"),
            );
            return None;
        }
        Some(v)
    }

    fn positive(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<f64> {
        self.ranged(ctx, b, name, 0.0, f64::INFINITY, true, true)
    }

    fn whole(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<f64> {
        let v = self.num(ctx, b, name)?;
        if v.abs() > MAX_COUNT {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::OutOfRange,
                    b.span(name),
                    format!(
                        "`{name}` of `{}` is {}, more than kdc supports ({})",
                        b.callee,
                        fmt_num(v),
                        fmt_num(MAX_COUNT)
                    ),
                )
                .primary_label("too large"),
            );
            return None;
        }
        if v.fract() != 0.0 {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::TypeMismatch,
                    b.span(name),
                    format!("`{name}` must be a whole number, not {}", fmt_num(v)),
                )
                .primary_label("not whole"),
            );
            return None;
        }
        Some(v)
    }

    /// A whole number ≥ 1.
    fn count(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<u64> {
        let v = self.whole(ctx, b, name)?;
        if v < 1.0 {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::NotPositive,
                    b.span(name),
                    format!(
                        "`{name}` of `{}` must be at least 1, not {}",
                        b.callee,
                        fmt_num(v)
                    ),
                )
                .primary_label("must be positive"),
            );
            return None;
        }
        Some(v as u64)
    }

    /// A whole number ≥ 0.
    fn natural(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<u64> {
        let v = self.whole(ctx, b, name)?;
        if v < 0.0 {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::OutOfRange,
                    b.span(name),
                    format!("`{name}` must not be negative, not {}", fmt_num(v)),
                )
                .primary_label("negative"),
            );
            return None;
        }
        Some(v as u64)
    }

    fn string(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<String> {
        let (value, span) = b.get(name)?;
        match value {
            Value::Str(s) if s.is_empty() => {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::OutOfRange,
                        span,
                        format!("`{name}` must not be empty"),
                    )
                    .primary_label("empty string"),
                );
                None
            }
            Value::Str(s) => Some(s),
            other => {
                self.wrong_kind(ctx, b, name, &other, span, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<bool> {
        let (value, span) = b.get(name)?;
        match value {
            Value::Bool(v) => Some(v),
            other => {
                self.wrong_kind(ctx, b, name, &other, span, "`true` or `false`");
                None
            }
        }
    }

    /// One of a fixed set of words, written as a constant (`bf16`) or a string (`"bf16"`).
    fn choice(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        name: &str,
        options: &[&'static str],
    ) -> Option<&'static str> {
        let (value, span) = b.get(name)?;
        let word = match &value {
            Value::Enum(e) => e.to_string(),
            Value::Str(s) => s.clone(),
            other => {
                self.wrong_kind(
                    ctx,
                    b,
                    name,
                    other,
                    span,
                    &format!("one of {}", options.join(", ")),
                );
                return None;
            }
        };
        match options.iter().find(|o| **o == word) {
            Some(o) => Some(o),
            None => {
                let mut d = Diagnostic::error(
                    Code::OutOfRange,
                    span,
                    format!(
                        "`{name}` must be one of {}, not `{word}`",
                        options.join(", ")
                    ),
                )
                .primary_label("not an allowed value");
                if let Some(s) = crate::suggest::closest(&word, options.iter().copied()) {
                    d = d.hint(format!("did you mean `{s}`?"));
                }
                self.bad(ctx, b, d);
                None
            }
        }
    }

    fn tensor(&mut self, ctx: &mut Ctx, b: &Bound, name: &str) -> Option<(NodeId, Shape, Span)> {
        let (value, span) = b.get(name)?;
        match value {
            Value::Tensor(n, s) => Some((n, s, span)),
            v @ (Value::Num(_) | Value::Dim(..) | Value::Schedule(_)) => {
                self.to_tensor(ctx, v, span).map(|(n, s)| (n, s, span))
            }
            other => {
                self.wrong_kind(ctx, b, name, &other, span, "a tensor");
                None
            }
        }
    }

    fn model_arg(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<ir::ModelId> {
        let (value, span) = b.get(name)?;
        match value {
            Value::Model { id, mask: None } => Some(id),
            Value::Model { .. } => {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::TypeMismatch,
                        span,
                        "a masked view of a model cannot be evaluated",
                    )
                    .primary_label("masked"),
                );
                None
            }
            other => {
                self.wrong_kind(ctx, b, name, &other, span, "a model");
                None
            }
        }
    }

    fn schedule(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<Schedule> {
        let (value, span) = b.get(name)?;
        match value {
            Value::Schedule(s) => Some(s),
            Value::Num(_) => self.num(ctx, b, name).map(Schedule::Constant),
            other => {
                self.wrong_kind(ctx, b, name, &other, span, "a number or a schedule");
                None
            }
        }
    }

    /// A width: a model dimension such as `teacher.dim` or a whole number.
    fn width(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<u64> {
        let (value, span) = b.get(name)?;
        match value {
            Value::Dim(d, _) => match d.size {
                Some(s) => Some(s),
                None => {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::ShapeMismatch,
                            span,
                            format!("`{name}` must be a width known before training, not `{d}`"),
                        )
                        .primary_label("known only at run time"),
                    );
                    None
                }
            },
            _ => self.count(ctx, b, name),
        }
    }

    fn list(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<Vec<(Value, Span)>> {
        let (value, span) = b.get(name)?;
        match value {
            Value::List(items) => Some(items),
            other => {
                self.wrong_kind(ctx, b, name, &other, span, "a list `[…]`");
                None
            }
        }
    }

    fn num_list(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<Vec<(f64, Span)>> {
        let items = self.list(ctx, b, name)?;
        let mut out = Vec::new();
        for (v, s) in items {
            match v {
                Value::Num(x) => out.push((x, s)),
                other => {
                    self.wrong_kind(ctx, b, name, &other, s, "a list of numbers");
                    return None;
                }
            }
        }
        Some(out)
    }

    fn str_list(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<Vec<(String, Span)>> {
        let items = self.list(ctx, b, name)?;
        let mut out = Vec::new();
        for (v, s) in items {
            match v {
                Value::Str(x) => out.push((x, s)),
                other => {
                    self.wrong_kind(ctx, b, name, &other, s, "a list of strings");
                    return None;
                }
            }
        }
        Some(out)
    }

    fn axis(&mut self, ctx: &Ctx, b: &Bound, shape: &Shape, default: i64) -> Option<usize> {
        let axis = if b.has("axis") {
            self.whole(ctx, b, "axis")? as i64
        } else {
            default
        };
        match shape.axis(axis) {
            Some(a) => Some(a),
            None => {
                let rank = shape.rank() as i64;
                let d = Diagnostic::error(
                    Code::BadAxis,
                    b.span("axis"),
                    format!("axis {axis} is out of range for a tensor {shape}"),
                )
                .primary_label(if rank == 0 {
                    "a scalar has no axes".to_string()
                } else {
                    format!("axes are {} to {}", -rank, rank - 1)
                });
                self.bad(ctx, b, d);
                None
            }
        }
    }

    fn templates(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<Vec<String>> {
        let list = self.str_list(ctx, b, name)?;
        let mut out = Vec::new();
        for (t, span) in list {
            if !t.contains("{}") {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::BadTemplate,
                        span,
                        format!("the template \"{t}\" has no `{{}}` for the class name"),
                    )
                    .primary_label("no `{}`")
                    .hint("write for instance \"a photo of a {}.\""),
                );
                return None;
            }
            out.push(t);
        }
        if out.is_empty() {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::BadTemplate,
                    b.span(name),
                    "at least one template is needed",
                )
                .primary_label("empty list"),
            );
            return None;
        }
        Some(out)
    }

    // ----------------------------------------------------------------------------------------

    pub(super) fn call_builtin(
        &mut self,
        ctx: &mut Ctx,
        env: &Env,
        name: &'static str,
        args: &[ast::Arg],
        span: Span,
    ) -> Value {
        let builtin = BUILTINS
            .iter()
            .find(|b| b.name == name)
            .expect("known builtin");
        let sig = signature(builtin);
        let Some(b) = self.bind_args(ctx, env, name, &sig, args, span) else {
            return Value::Error;
        };
        // Any argument that is already an error makes the call an error, silently.
        if b.values.iter().flatten().any(|(v, _)| v.is_error()) {
            return Value::Error;
        }
        let value = self.builtin(ctx, name, &b, span);
        if b.bad.get() {
            Value::Error
        } else {
            value
        }
    }

    fn builtin(&mut self, ctx: &mut Ctx, name: &str, b: &Bound, span: Span) -> Value {
        match name {
            "clip" => self.clip(ctx, b, span),
            "vit" => {
                let Some((size, patch, width, layers, heads, mlp, frozen)) =
                    self.tower_sizes(ctx, b, ["size", "patch"])
                else {
                    return Value::Error;
                };
                if size % patch != 0 {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::PatchDoesNotDivide,
                            b.span("patch"),
                            format!("a patch of {patch} does not divide an image of {size}"),
                        )
                        .primary_label(format!("{size} / {patch} is not whole"))
                        .label(b.span("size"), "image size"),
                    );
                }
                Value::Vision(VisionSpec {
                    image_size: size,
                    patch,
                    width,
                    layers,
                    heads,
                    mlp,
                    act: Activation::Gelu,
                    frozen,
                })
            }
            "transformer" => {
                let Some((context, vocab, width, layers, heads, mlp, frozen)) =
                    self.tower_sizes(ctx, b, ["context", "vocab"])
                else {
                    return Value::Error;
                };
                Value::Text(TextSpec {
                    kind: TextKind::Clip,
                    context,
                    vocab,
                    width,
                    layers,
                    heads,
                    mlp,
                    act: Activation::Gelu,
                    frozen,
                    preset: None,
                    weights: None,
                })
            }
            "bert" => self.bert(ctx, b),
            "learnable" => {
                let init = self.positive(ctx, b, "init");
                let min = if b.has("min") {
                    self.positive(ctx, b, "min")
                } else {
                    Some(1.0)
                };
                let max = if b.has("max") {
                    self.positive(ctx, b, "max")
                } else {
                    Some(100.0)
                };
                let (Some(init), Some(min), Some(max)) = (init, min, max) else {
                    return Value::Error;
                };
                if !(min <= init && init <= max) {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::OutOfRange,
                            b.span("init"),
                            format!(
                                "the initial scale {} is outside [{}, {}]",
                                fmt_num(init),
                                fmt_num(min),
                                fmt_num(max)
                            ),
                        )
                        .primary_label("outside the clamp range"),
                    );
                }
                Value::ScaleOption(LogitScaleSpec {
                    init,
                    min,
                    max,
                    learnable: true,
                })
            }
            "fixed" => match self.positive(ctx, b, "value") {
                Some(v) => Value::ScaleOption(LogitScaleSpec {
                    init: v,
                    min: v,
                    max: v,
                    learnable: false,
                }),
                None => Value::Error,
            },
            "clip_bpe" => {
                let context = if b.has("context") {
                    self.count(ctx, b, "context")
                } else {
                    Some(77)
                };
                let path = if b.has("vocab") {
                    self.string(ctx, b, "vocab")
                } else {
                    None
                };
                match context {
                    Some(context) => Value::Tokenizer(TokenizerSpec {
                        kind: "clip_bpe".into(),
                        path,
                        context,
                    }),
                    None => Value::Error,
                }
            }
            "tokenizer" => {
                let path = self.string(ctx, b, "file");
                let context = if b.has("context") {
                    self.count(ctx, b, "context")
                } else {
                    Some(77)
                };
                match (path, context) {
                    (Some(path), Some(context)) => Value::Tokenizer(TokenizerSpec {
                        kind: "file".into(),
                        path: Some(path),
                        context,
                    }),
                    _ => Value::Error,
                }
            }
            "image_pre" => {
                let resize = if b.has("resize") {
                    self.count(ctx, b, "resize")
                } else {
                    Some(224)
                };
                let crop = if b.has("crop") {
                    self.count(ctx, b, "crop")
                } else {
                    resize
                };
                let mean = if b.has("mean") {
                    self.triple(ctx, b, "mean")
                } else {
                    Some(model::CLIP_MEAN)
                };
                let std = if b.has("std") {
                    self.triple(ctx, b, "std")
                } else {
                    Some(model::CLIP_STD)
                };
                if let Some(std) = std {
                    if std.iter().any(|s| *s <= 0.0) {
                        self.bad(
                            ctx,
                            b,
                            Diagnostic::error(
                                Code::OutOfRange,
                                b.span("std"),
                                "standard deviations must be positive",
                            )
                            .primary_label("zero or negative"),
                        );
                    }
                }
                if let (Some(r), Some(c)) = (resize, crop) {
                    if c > r {
                        self.bad(
                            ctx,
                            b,
                            Diagnostic::error(
                                Code::OutOfRange,
                                b.span("crop"),
                                format!("cannot crop {c} pixels out of an image resized to {r}"),
                            )
                            .primary_label("larger than `resize`"),
                        );
                    }
                }
                match (resize, crop, mean, std) {
                    (Some(resize), Some(crop), Some(mean), Some(std)) => {
                        Value::Preprocess(PreprocessSpec {
                            resize,
                            crop,
                            mean,
                            std,
                        })
                    }
                    _ => Value::Error,
                }
            }
            "pairs" => {
                let csv = self.string(ctx, b, "csv");
                let image = if b.has("image") {
                    self.string(ctx, b, "image")
                } else {
                    Some("filepath".into())
                };
                let caption = if b.has("caption") {
                    self.string(ctx, b, "caption")
                } else {
                    Some("title".into())
                };
                let sep = if b.has("sep") {
                    self.string(ctx, b, "sep")
                } else {
                    Some("\t".into())
                };
                if let Some(s) = &sep {
                    if s.chars().count() != 1 {
                        self.bad(
                            ctx,
                            b,
                            Diagnostic::error(
                                Code::OutOfRange,
                                b.span("sep"),
                                "a CSV separator must be one character",
                            )
                            .primary_label(format!("{} characters", s.chars().count())),
                        );
                    }
                }
                let source = match (csv, image, caption, sep) {
                    (Some(csv), Some(image), Some(caption), Some(sep)) => Some(DataSource::Pairs {
                        csv,
                        image,
                        caption,
                        sep,
                    }),
                    _ => None,
                };
                self.data(ctx, b, source)
            }
            "folders" => {
                let root = self.string(ctx, b, "root");
                let template = if b.has("template") {
                    self.templates_one(ctx, b)
                } else {
                    Some("a photo of a {}.".into())
                };
                let source = match (root, template) {
                    (Some(root), Some(template)) => Some(DataSource::Folders { root, template }),
                    _ => None,
                };
                self.data(ctx, b, source)
            }
            "fashion_mnist" => {
                let split = if b.has("split") {
                    self.choice(ctx, b, "split", &["train", "test"])
                } else {
                    Some("train")
                };
                let templates = if b.has("templates") {
                    self.templates(ctx, b, "templates")
                } else {
                    Some(vec!["a photo of a {}.".into()])
                };
                let root = if b.has("root") {
                    self.string(ctx, b, "root")
                } else {
                    None
                };
                let source = match (split, templates) {
                    (Some(split), Some(templates)) => Some(DataSource::FashionMnist {
                        split: split.into(),
                        templates,
                        root,
                    }),
                    _ => None,
                };
                self.data(ctx, b, source)
            }
            "synthetic" => {
                let samples = if b.has("samples") {
                    self.count(ctx, b, "samples")
                } else {
                    Some(1024)
                };
                let source = samples.map(|samples| DataSource::Synthetic { samples });
                self.data(ctx, b, source)
            }
            "adamw" => {
                let lr = self.schedule(ctx, b, "lr");
                if let Some(lr) = &lr {
                    if let Some(problem) = learning_rate_problem(lr) {
                        self.bad(
                            ctx,
                            b,
                            Diagnostic::error(
                                Code::OutOfRange,
                                b.span("lr"),
                                format!("the learning rate {problem}"),
                            )
                            .primary_label("not a valid learning rate"),
                        );
                    }
                }
                let wd = if b.has("weight_decay") {
                    self.ranged(ctx, b, "weight_decay", 0.0, f64::INFINITY, false, true)
                } else {
                    Some(0.1)
                };
                let betas = if b.has("betas") {
                    match self.num_list(ctx, b, "betas") {
                        Some(list)
                            if list.len() == 2
                                && list.iter().all(|(v, _)| (0.0..1.0).contains(v)) =>
                        {
                            Some((list[0].0, list[1].0))
                        }
                        Some(_) => {
                            self.bad(
                                ctx,
                                b,
                                Diagnostic::error(
                                    Code::OutOfRange,
                                    b.span("betas"),
                                    "`betas` must be two numbers in [0, 1)",
                                )
                                .primary_label("for example [0.9, 0.98]"),
                            );
                            None
                        }
                        None => None,
                    }
                } else {
                    Some((0.9, 0.98))
                };
                let eps = if b.has("eps") {
                    self.positive(ctx, b, "eps")
                } else {
                    Some(1e-6)
                };
                let no_decay = if b.has("no_decay") {
                    self.param_classes(ctx, b)
                } else {
                    Some(vec![ParamClass::Gain, ParamClass::Bias, ParamClass::Scale])
                };
                match (lr, wd, betas, eps, no_decay) {
                    (Some(lr), Some(weight_decay), Some(betas), Some(eps), Some(no_decay)) => {
                        Value::TrainPart(TrainPart::Optimizer(ir::AdamW {
                            lr,
                            weight_decay,
                            betas,
                            eps,
                            no_decay,
                        }))
                    }
                    _ => Value::Error,
                }
            }
            "epochs" => self
                .count(ctx, b, "count")
                .map(|n| Value::TrainPart(TrainPart::Epochs(n)))
                .unwrap_or(Value::Error),
            "steps" => self
                .count(ctx, b, "count")
                .map(|n| Value::TrainPart(TrainPart::Steps(n)))
                .unwrap_or(Value::Error),
            "clip_grad" => self
                .positive(ctx, b, "norm")
                .map(|n| Value::TrainPart(TrainPart::ClipGrad(n)))
                .unwrap_or(Value::Error),
            "accumulate" => self
                .count(ctx, b, "count")
                .map(|n| Value::TrainPart(TrainPart::Accumulate(n)))
                .unwrap_or(Value::Error),
            "precision" => self
                .choice(ctx, b, "format", &["fp32", "bf16", "fp16"])
                .map(|p| Value::TrainPart(TrainPart::Precision(p)))
                .unwrap_or(Value::Error),
            "seed" => self
                .natural(ctx, b, "value")
                .map(|n| Value::TrainPart(TrainPart::Seed(n)))
                .unwrap_or(Value::Error),
            "checkpoint" => self
                .count(ctx, b, "every")
                .map(|n| Value::TrainPart(TrainPart::Checkpoint(n)))
                .unwrap_or(Value::Error),
            "cosine" => {
                let peak = self.num(ctx, b, "peak");
                let warmup = if b.has("warmup") {
                    self.natural(ctx, b, "warmup")
                } else {
                    Some(0)
                };
                let end = if b.has("end") {
                    self.num(ctx, b, "end")
                } else {
                    Some(0.0)
                };
                let steps = if b.has("steps") {
                    self.count(ctx, b, "steps").map(Some)
                } else {
                    Some(None)
                };
                let (Some(peak), Some(warmup), Some(end), Some(steps)) = (peak, warmup, end, steps)
                else {
                    return Value::Error;
                };
                if let Some(steps) = steps {
                    if warmup >= steps {
                        self.bad(
                            ctx,
                            b,
                            Diagnostic::error(Code::BadSchedule, b.span("warmup"), format!("a warm-up of {warmup} steps does not fit in a schedule of {steps}"))
                                .primary_label("longer than the schedule")
                                .label(b.span("steps"), "schedule length"),
                        );
                    }
                }
                Value::Schedule(Schedule::Cosine {
                    peak,
                    warmup,
                    end,
                    steps,
                })
            }
            "ramp" => {
                let from = self.num(ctx, b, "from");
                let to = self.num(ctx, b, "to");
                let steps = self.count(ctx, b, "steps");
                let start = if b.has("start") {
                    self.natural(ctx, b, "start")
                } else {
                    Some(0)
                };
                match (from, to, steps, start) {
                    (Some(from), Some(to), Some(steps), Some(start)) => {
                        Value::Schedule(Schedule::Ramp {
                            from,
                            to,
                            start,
                            steps,
                        })
                    }
                    _ => Value::Error,
                }
            }
            "step" => {
                let values = self.num_list(ctx, b, "values");
                let at = self.num_list(ctx, b, "at");
                let (Some(values), Some(at)) = (values, at) else {
                    return Value::Error;
                };
                if values.len() != at.len() + 1 {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(Code::BadSchedule, b.span("values"), format!("`step` needs one more value than boundaries: {} values, {} boundaries", values.len(), at.len()))
                            .primary_label("values")
                            .label(b.span("at"), "boundaries"),
                    );
                    return Value::Error;
                }
                let mut bounds = Vec::new();
                for (i, (x, s)) in at.iter().enumerate() {
                    if x.fract() != 0.0 || *x < 0.0 || (i > 0 && *x <= at[i - 1].0) {
                        self.bad(
                            ctx,
                            b,
                            Diagnostic::error(
                                Code::BadSchedule,
                                *s,
                                "step boundaries must be increasing whole step numbers",
                            )
                            .primary_label("out of order or not whole"),
                        );
                        return Value::Error;
                    }
                    bounds.push(*x as u64);
                }
                Value::Schedule(Schedule::Step {
                    values: values.into_iter().map(|(v, _)| v).collect(),
                    at: bounds,
                })
            }
            "zero_shot" | "retrieval" => {
                let model = self.model_arg(ctx, b, "model");
                let data = match b.get("data") {
                    Some((Value::Data(d), _)) => Some(d),
                    Some((other, s)) => {
                        self.wrong_kind(ctx, b, "data", &other, s, "a data set");
                        None
                    }
                    None => None,
                };
                if name == "zero_shot" {
                    let templates = if b.has("templates") {
                        self.templates(ctx, b, "templates")
                    } else {
                        Some(vec!["a photo of a {}.".into()])
                    };
                    if let Some(DataSpec {
                        source: DataSource::Pairs { .. } | DataSource::Synthetic { .. },
                        ..
                    }) = &data
                    {
                        self.bad(
                            ctx,
                            b,
                            Diagnostic::error(Code::TypeMismatch, b.span("data"), "zero-shot classification needs labelled classes")
                                .primary_label("these are captioned pairs, not classes")
                                .hint("use `folders(…)` or `fashion_mnist(…)`, or `retrieval(…)` for pairs"),
                        );
                    }
                    match (model, data, templates) {
                        (Some(model), Some(data), Some(templates)) => {
                            Value::Eval(EvalSpec::ZeroShot {
                                model,
                                data,
                                templates,
                            })
                        }
                        _ => Value::Error,
                    }
                } else {
                    let k = if b.has("k") {
                        self.num_list(ctx, b, "k").and_then(|list| {
                            list.iter()
                                .all(|(v, _)| v.fract() == 0.0 && *v >= 1.0)
                                .then(|| list.iter().map(|(v, _)| *v as u64).collect::<Vec<u64>>())
                        })
                    } else {
                        Some(vec![1, 5, 10])
                    };
                    if k.is_none() && !b.bad.get() {
                        self.bad(
                            ctx,
                            b,
                            Diagnostic::error(
                                Code::NotPositive,
                                b.span("k"),
                                "recall cut-offs must be whole numbers of at least 1",
                            )
                            .primary_label("for example [1, 5, 10]"),
                        );
                    }
                    match (model, data, k) {
                        (Some(model), Some(data), Some(k)) => {
                            Value::Eval(EvalSpec::Retrieval { model, data, k })
                        }
                        _ => Value::Error,
                    }
                }
            }
            _ => self.tensor_builtin(ctx, name, b, span),
        }
    }

    /// The sizes every transformer tower has: two of its own (`size`, `patch` or `context`,
    /// `vocab`), then width, layers, heads, MLP width (4 × width unless given) and `frozen`.
    #[allow(clippy::type_complexity)]
    fn tower_sizes(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        first: [&str; 2],
    ) -> Option<(u64, u64, u64, u64, u64, u64, bool)> {
        let (a, c) = (self.count(ctx, b, first[0]), self.count(ctx, b, first[1]));
        let (width, layers, heads) = (
            self.count(ctx, b, "width"),
            self.count(ctx, b, "layers"),
            self.count(ctx, b, "heads"),
        );
        let mlp = if b.has("mlp") {
            self.count(ctx, b, "mlp")
        } else {
            width.map(|w| 4 * w)
        };
        let frozen = self.boolean(ctx, b, "frozen").unwrap_or(false);
        let (a, c, width, layers, heads, mlp) = (a?, c?, width?, layers?, heads?, mlp?);
        self.heads_divide(ctx, b, width, heads);
        Some((a, c, width, layers, heads, mlp, frozen))
    }

    fn triple(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<[f64; 3]> {
        let list = self.num_list(ctx, b, name)?;
        if list.len() != 3 {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::OutOfRange,
                    b.span(name),
                    format!(
                        "`{name}` needs one number per colour channel (3), not {}",
                        list.len()
                    ),
                )
                .primary_label("for R, G and B"),
            );
            return None;
        }
        Some([list[0].0, list[1].0, list[2].0])
    }

    fn templates_one(&mut self, ctx: &Ctx, b: &Bound) -> Option<String> {
        let t = self.string(ctx, b, "template")?;
        if !t.contains("{}") {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::BadTemplate,
                    b.span("template"),
                    format!("the template \"{t}\" has no `{{}}` for the class name"),
                )
                .primary_label("no `{}`")
                .hint("write for instance \"a photo of a {}.\""),
            );
            return None;
        }
        Some(t)
    }

    fn param_classes(&mut self, ctx: &Ctx, b: &Bound) -> Option<Vec<ParamClass>> {
        let items = self.list(ctx, b, "no_decay")?;
        let mut out = Vec::new();
        for (v, s) in items {
            match v {
                Value::Enum(e) if ParamClass::from_plural(e).is_some() => {
                    out.push(ParamClass::from_plural(e).unwrap())
                }
                other => {
                    self.wrong_kind(
                        ctx,
                        b,
                        "no_decay",
                        &other,
                        s,
                        "a list of `weights`, `embeddings`, `gains`, `biases`, `scales`",
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    fn data(&mut self, ctx: &Ctx, b: &Bound, source: Option<DataSource>) -> Value {
        let batch = self.count(ctx, b, "batch");
        let shuffle = if b.has("shuffle") {
            self.boolean(ctx, b, "shuffle")
        } else {
            Some(true)
        };
        let seed = if b.has("seed") {
            self.natural(ctx, b, "seed")
        } else {
            Some(0)
        };
        match (source, batch, shuffle, seed) {
            (Some(source), Some(batch), Some(shuffle), Some(seed)) => Value::Data(DataSpec {
                source,
                batch,
                shuffle,
                seed,
            }),
            _ => Value::Error,
        }
    }

    fn heads_divide(&mut self, ctx: &Ctx, b: &Bound, width: u64, heads: u64) {
        if width % heads != 0 {
            let divisors: Vec<String> = (1..=width.min(64))
                .filter(|h| width % h == 0)
                .map(|h| h.to_string())
                .collect();
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::HeadsDoNotDivide,
                    b.span("heads"),
                    format!("{heads} heads do not divide a width of {width}"),
                )
                .primary_label(format!("{width} / {heads} is not whole"))
                .label(b.span("width"), "width")
                .hint(format!(
                    "heads that divide {width}: {}",
                    divisors.join(", ")
                )),
            );
        }
    }

    fn bert(&mut self, ctx: &Ctx, b: &Bound) -> Value {
        let frozen = self.boolean(ctx, b, "frozen").unwrap_or(false);
        let weights = if b.has("weights") {
            self.string(ctx, b, "weights")
        } else {
            None
        };
        let mut dims = None;
        let preset = if b.has("preset") {
            self.string(ctx, b, "preset")
        } else {
            None
        };
        if let Some(p) = &preset {
            match model::bert_preset(p) {
                Some(bp) => dims = Some(bp.dims),
                None => {
                    let names: Vec<&str> = model::BERT_PRESETS.iter().map(|p| p.name).collect();
                    let mut d = Diagnostic::error(
                        Code::UnknownPreset,
                        b.span("preset"),
                        format!("there is no text encoder preset \"{p}\""),
                    )
                    .primary_label("unknown preset")
                    .note(format!("text encoder presets: {}", names.join(", ")));
                    if let Some(s) = crate::suggest::closest(p, names.iter().copied()) {
                        d = d.hint(format!("did you mean \"{s}\"?"));
                    }
                    self.bad(ctx, b, d);
                    return Value::Error;
                }
            }
        }
        let explicit: Vec<&str> = ["context", "vocab", "width", "layers", "heads", "mlp"]
            .into_iter()
            .filter(|n| b.has(n))
            .collect();
        let (context, vocab, width, layers, heads, mlp) = match dims {
            Some(d) if explicit.is_empty() => d,
            Some(_) => {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(Code::ConflictingArguments, b.span(explicit[0]), "a preset fixes the architecture; it cannot be combined with explicit sizes")
                        .primary_label("explicit size")
                        .label(b.span("preset"), "preset"),
                );
                return Value::Error;
            }
            None => {
                let missing: Vec<&str> = ["context", "vocab", "width", "layers", "heads"]
                    .into_iter()
                    .filter(|n| !b.has(n))
                    .collect();
                if !missing.is_empty() {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::MissingArgument,
                            b.call_span,
                            format!(
                                "`bert` needs a `preset` or all of its sizes; missing {}",
                                missing.join(", ")
                            ),
                        )
                        .primary_label("incomplete text encoder"),
                    );
                    return Value::Error;
                }
                let (c, v, w, l, h) = (
                    self.count(ctx, b, "context"),
                    self.count(ctx, b, "vocab"),
                    self.count(ctx, b, "width"),
                    self.count(ctx, b, "layers"),
                    self.count(ctx, b, "heads"),
                );
                let m = if b.has("mlp") {
                    self.count(ctx, b, "mlp")
                } else {
                    w.map(|w| 4 * w)
                };
                let (Some(c), Some(v), Some(w), Some(l), Some(h), Some(m)) = (c, v, w, l, h, m)
                else {
                    return Value::Error;
                };
                self.heads_divide(ctx, b, w, h);
                (c, v, w, l, h, m)
            }
        };
        Value::Text(TextSpec {
            kind: TextKind::Bert,
            context,
            vocab,
            width,
            layers,
            heads,
            mlp,
            act: Activation::Gelu,
            frozen,
            preset,
            weights,
        })
    }

    fn clip(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        if let Some(&id) = self.model_sites.get(&span) {
            return Value::Model { id, mask: None };
        }
        let act = if b.has("act") {
            match self.choice(ctx, b, "act", &["quick_gelu", "gelu"]) {
                Some("quick_gelu") => Some(Activation::QuickGelu),
                Some(_) => Some(Activation::Gelu),
                None => return Value::Error,
            }
        } else {
            None
        };
        let preset_name = if b.has("preset") {
            self.string(ctx, b, "preset")
        } else {
            None
        };
        let towers = ["image", "text", "embed"];
        let (mut vision, mut text, embed) = if let Some(name) = &preset_name {
            if let Some(conflict) = towers.iter().find(|t| b.has(t)) {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::ConflictingArguments,
                        b.span(conflict),
                        format!("`{conflict}` cannot be combined with a preset"),
                    )
                    .primary_label("explicit part")
                    .label(b.span("preset"), "the preset already fixes it")
                    .hint("use either `preset:` or `image:`, `text:` and `embed:`"),
                );
                return Value::Error;
            }
            let Some(p) = model::preset(name) else {
                let names: Vec<&str> = model::PRESETS.iter().map(|p| p.name).collect();
                let mut d = Diagnostic::error(
                    Code::UnknownPreset,
                    b.span("preset"),
                    format!("there is no preset \"{name}\""),
                )
                .primary_label("unknown preset")
                .note(format!("presets: {}", names.join(", ")));
                if let Some(s) = crate::suggest::closest(name, names.iter().copied()) {
                    d = d.hint(format!("did you mean \"{s}\"?"));
                }
                self.bad(ctx, b, d);
                return Value::Error;
            };
            let (vision, text) = (p.vision(), p.text());
            if act.is_some_and(|a| a != p.act) {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::ConflictingArguments,
                        b.span("act"),
                        format!("preset \"{name}\" uses {}", p.act.name()),
                    )
                    .primary_label("a different activation")
                    .hint({
                        let base = name.trim_end_matches("-quickgelu");
                        let other = if name.ends_with("-quickgelu") { base.to_string() } else { format!("{base}-quickgelu") };
                        if model::preset(&other).is_some() {
                            format!("use the preset \"{other}\" instead")
                        } else {
                            format!("preset \"{name}\" exists only with {}; describe the towers explicitly for another activation", p.act.name())
                        }
                    }),
                );
                return Value::Error;
            }
            (vision, text, p.embed)
        } else {
            let missing: Vec<&str> = towers.iter().copied().filter(|t| !b.has(t)).collect();
            if !missing.is_empty() {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(Code::MissingArgument, b.call_span, format!("a model needs a `preset` or its towers; missing {}", missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")))
                        .primary_label("incomplete model")
                        .hint("write `clip(preset: \"ViT-B-16\")` or `clip(image: vit(…), text: transformer(…), embed: 512)`"),
                );
                return Value::Error;
            }
            let vision = match b.get("image").unwrap() {
                (Value::Vision(v), _) => Some(v),
                (other, s) => {
                    self.wrong_kind(ctx, b, "image", &other, s, "an image tower `vit(…)`");
                    None
                }
            };
            let text = match b.get("text").unwrap() {
                (Value::Text(t), _) => Some(t),
                (other, s) => {
                    self.wrong_kind(
                        ctx,
                        b,
                        "text",
                        &other,
                        s,
                        "a text tower `transformer(…)` or `bert(…)`",
                    );
                    None
                }
            };
            let embed = self.width(ctx, b, "embed");
            let (Some(mut vision), Some(mut text), Some(embed)) = (vision, text, embed) else {
                return Value::Error;
            };
            let act = act.unwrap_or(Activation::Gelu);
            vision.act = act;
            if text.kind == TextKind::Clip {
                text.act = act;
            }
            (vision, text, embed)
        };
        let weights = if b.has("weights") {
            self.string(ctx, b, "weights")
        } else {
            None
        };
        let frozen = self.boolean(ctx, b, "frozen").unwrap_or(false);
        if frozen {
            vision.frozen = true;
            text.frozen = true;
        }
        let logit_scale = match b.get("logit_scale") {
            None => LogitScaleSpec::default(),
            Some((Value::ScaleOption(s), _)) => s,
            Some((Value::Num(v), _)) if (1.0..=100.0).contains(&v) => LogitScaleSpec {
                init: v,
                ..LogitScaleSpec::default()
            },
            Some((Value::Num(v), span)) => {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(Code::OutOfRange, span, format!("an initial logit scale of {} is outside the default clamp [1, 100]", fmt_num(v)))
                        .primary_label("out of range")
                        .hint("write `learnable(init: …, min: …, max: …)` for another range, or `fixed(…)`"),
                );
                return Value::Error;
            }
            Some((other, s)) => {
                self.wrong_kind(
                    ctx,
                    b,
                    "logit_scale",
                    &other,
                    s,
                    "`learnable(init: …)` or `fixed(…)`",
                );
                return Value::Error;
            }
        };
        let tokenizer = match b.get("tokenizer") {
            None => match text.kind {
                TextKind::Clip => TokenizerSpec {
                    kind: "clip_bpe".into(),
                    path: None,
                    context: text.context,
                },
                TextKind::Bert => TokenizerSpec {
                    kind: "file".into(),
                    path: None,
                    context: text.context.min(128),
                },
            },
            Some((Value::Tokenizer(t), s)) => {
                if t.context > text.context {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::OutOfRange,
                            s,
                            format!(
                                "the tokenizer makes {} tokens but the text tower has {} positions",
                                t.context, text.context
                            ),
                        )
                        .primary_label("context too long"),
                    );
                }
                t
            }
            Some((other, s)) => {
                self.wrong_kind(
                    ctx,
                    b,
                    "tokenizer",
                    &other,
                    s,
                    "`clip_bpe(…)` or `tokenizer(…)`",
                );
                return Value::Error;
            }
        };
        let preprocess = match b.get("preprocess") {
            None => PreprocessSpec {
                resize: vision.image_size,
                crop: vision.image_size,
                mean: model::CLIP_MEAN,
                std: model::CLIP_STD,
            },
            Some((Value::Preprocess(p), s)) => {
                if p.crop != vision.image_size {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::ShapeMismatch,
                            s,
                            format!(
                                "preprocessing crops {} pixels but the image tower takes {}",
                                p.crop, vision.image_size
                            ),
                        )
                        .primary_label("crop size differs from the tower's image size"),
                    );
                }
                p
            }
            Some((other, s)) => {
                self.wrong_kind(ctx, b, "preprocess", &other, s, "`image_pre(…)`");
                return Value::Error;
            }
        };
        // A frozen part must come with weights from somewhere.
        let text_has_weights = weights.is_some() || text.weights.is_some();
        let vision_has_weights = weights.is_some();
        let frozen_without = if vision.frozen && !vision_has_weights {
            Some("the image tower")
        } else if text.frozen && !text_has_weights {
            Some("the text tower")
        } else {
            None
        };
        if let Some(part) = frozen_without {
            let which = if frozen {
                "this frozen model".to_string()
            } else {
                format!("{part}, which is frozen,")
            };
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::FrozenWithoutWeights,
                    span,
                    format!("{which} has no weights"),
                )
                .primary_label("frozen, but nothing to load")
                .hint(
                    "add `weights: \"path/to/model.safetensors\"`, or remove `frozen` to train it",
                ),
            );
            return Value::Error;
        }
        if b.bad.get() {
            return Value::Error;
        }
        let spec = ModelSpec {
            name: String::new(),
            preset: preset_name,
            vision,
            text,
            embed,
            weights,
            frozen,
            logit_scale,
            tokenizer,
            preprocess,
        };
        self.models.push(spec);
        let id = self.models.len() - 1;
        self.model_sites.insert(span, id);
        Value::Model { id, mask: None }
    }

    // ----------------------------------------------------------------------------------------
    // Tensor primitives.

    fn node(
        &mut self,
        ctx: &mut Ctx,
        op: Op,
        inputs: Vec<NodeId>,
        shape: Shape,
        span: Span,
    ) -> Value {
        let n = self.push_node(ctx, op, inputs, shape.clone(), span);
        Value::Tensor(n, shape)
    }

    fn same_shape(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        what: &str,
        (a, sa): (&Shape, Span),
        (c, sc): (&Shape, Span),
    ) -> bool {
        if a == c {
            return true;
        }
        let d = Diagnostic::error(
            Code::ShapeMismatch,
            b.call_span,
            format!("`{what}` compares tensors of the same shape, not {a} and {c}"),
        )
        .primary_label("shapes differ")
        .label(sa, format!("this is {a}"))
        .label(sc, format!("this is {c}"));
        let d = super::width_hint(d, a, c);
        self.bad(ctx, b, d);
        false
    }

    fn unary_math(&mut self, ctx: &mut Ctx, name: &str, b: &Bound, span: Span) -> Value {
        let (value, vspan) = b.get("x").unwrap();
        if let Value::Num(x) = value {
            let out = match name {
                "exp" => x.exp(),
                "log" => x.ln(),
                "sqrt" => x.sqrt(),
                _ => x.abs(),
            };
            if !out.is_finite() {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::OutOfRange,
                        vspan,
                        format!("`{name}({})` is not a finite number", fmt_num(x)),
                    )
                    .primary_label("out of the function's domain"),
                );
                return Value::Error;
            }
            return Value::Num(out);
        }
        let Some((n, shape, _)) = self.tensor(ctx, b, "x") else {
            return Value::Error;
        };
        let op = match name {
            "exp" => Op::Exp,
            "log" => Op::Log,
            "sqrt" => Op::Sqrt,
            _ => Op::Abs,
        };
        self.node(ctx, op, vec![n], shape, span)
    }

    /// A learnable part of the loss. With `name:` the name identifies it (so two calls can share
    /// one parameter); without, each call site (through every enclosing function call) makes
    /// its own. `suffix` tells apart the several tensors one call makes (a weight and a bias).
    #[allow(clippy::too_many_arguments)]
    fn make_param(
        &mut self,
        ctx: &mut Ctx,
        b: &Bound,
        base: &str,
        suffix: Option<&str>,
        shape: Vec<u64>,
        init: Init,
        clamp: Option<(f64, f64)>,
        class: ParamClass,
        span: Span,
    ) -> Option<ir::ParamId> {
        let explicit = if b.names.contains(&"name") && b.has("name") {
            let n = self.string(ctx, b, "name")?;
            Some(match suffix {
                Some(s) => format!("{n}.{s}"),
                None => n,
            })
        } else {
            None
        };
        let key = match &explicit {
            Some(n) => format!("name:{n}"),
            None => format!(
                "site:{:?}/{:?}/{base}",
                ctx.calls.iter().map(|c| c.2).collect::<Vec<_>>(),
                span
            ),
        };
        if let Some(&id) = ctx.param_keys.get(&key) {
            let existing = &ctx.params[id];
            if existing.shape != shape {
                let d = Diagnostic::error(
                    Code::ParamConflict,
                    span,
                    format!(
                        "the learnable part \"{}\" is used with shape {:?} here and {:?} before",
                        existing.name, shape, existing.shape
                    ),
                )
                .primary_label(format!("shape {shape:?}"))
                .label(existing.span, format!("shape {:?}", existing.shape))
                .hint("give the two parts different names");
                self.bad(ctx, b, d);
                return None;
            }
            return Some(id);
        }
        let name = explicit.unwrap_or_else(|| {
            let owner = ctx
                .calls
                .last()
                .map(|c| c.1.clone())
                .unwrap_or_else(|| "loss".into());
            let base = format!("{owner}.{base}");
            let taken = |n: &str| ctx.params.iter().any(|p| p.name == n);
            if !taken(&base) {
                base
            } else {
                (2..)
                    .map(|i| format!("{base}#{i}"))
                    .find(|n| !taken(n))
                    .unwrap()
            }
        });
        ctx.params.push(ParamSpec {
            name,
            shape,
            init,
            clamp,
            class,
            exponentiated: false,
            span,
        });
        let id = ctx.params.len() - 1;
        ctx.param_keys.insert(key, id);
        Some(id)
    }

    fn linear(
        &mut self,
        ctx: &mut Ctx,
        b: &Bound,
        x: (NodeId, Shape, Span),
        to: u64,
        bias: bool,
        span: Span,
    ) -> Value {
        let (n, shape, xspan) = x;
        let Some(input) = shape.last().and_then(|d| d.size) else {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::ShapeMismatch,
                    xspan,
                    format!("a linear map needs a known input width, but this is {shape}"),
                )
                .primary_label("last axis unknown before training"),
            );
            return Value::Error;
        };
        let bound = 1.0 / (input as f64).sqrt();
        let Some(w) = self.make_param(
            ctx,
            b,
            "linear.weight",
            Some("weight"),
            vec![to, input],
            Init::Uniform { bound },
            None,
            ParamClass::Weight,
            span,
        ) else {
            return Value::Error;
        };
        let w_shape = Shape(vec![Dim::known(to), Dim::known(input)]);
        let w_node = self.push_node(ctx, Op::Param(w), vec![], w_shape.clone(), span);
        let wt_shape = Shape(vec![Dim::known(input), Dim::known(to)]);
        let wt = self.push_node(ctx, Op::Transpose, vec![w_node], wt_shape.clone(), span);
        let Some((y, y_shape)) = self.matmul(ctx, (n, shape, xspan), (wt, wt_shape, span), span)
        else {
            return Value::Error;
        };
        if !bias {
            return Value::Tensor(y, y_shape);
        }
        let Some(bp) = self.make_param(
            ctx,
            b,
            "linear.bias",
            Some("bias"),
            vec![to],
            Init::Uniform { bound },
            None,
            ParamClass::Bias,
            span,
        ) else {
            return Value::Error;
        };
        let b_node = self.push_node(
            ctx,
            Op::Param(bp),
            vec![],
            Shape(vec![Dim::known(to)]),
            span,
        );
        self.node(ctx, Op::Add, vec![y, b_node], y_shape, span)
    }

    fn tensor_builtin(&mut self, ctx: &mut Ctx, name: &str, b: &Bound, span: Span) -> Value {
        match name {
            "matmul" => {
                let (Some(a), Some(c)) = (self.tensor(ctx, b, "a"), self.tensor(ctx, b, "b"))
                else {
                    return Value::Error;
                };
                match self.matmul(ctx, a, c, span) {
                    Some((n, s)) => Value::Tensor(n, s),
                    None => Value::Error,
                }
            }
            "transpose" => {
                let Some((n, s, _)) = self.tensor(ctx, b, "x") else {
                    return Value::Error;
                };
                self.transpose(ctx, n, s, span)
            }
            "softmax" | "log_softmax" | "norm" => {
                let Some((n, s, xspan)) = self.tensor(ctx, b, "x") else {
                    return Value::Error;
                };
                if s.is_scalar() {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::ShapeMismatch,
                            xspan,
                            format!("`{name}` needs a tensor with at least one axis, not a scalar"),
                        )
                        .primary_label("a scalar"),
                    );
                    return Value::Error;
                }
                let Some(axis) = self.axis(ctx, b, &s, -1) else {
                    return Value::Error;
                };
                let op = match name {
                    "softmax" => Op::Softmax { axis },
                    "log_softmax" => Op::LogSoftmax { axis },
                    _ => Op::Normalize { axis },
                };
                self.node(ctx, op, vec![n], s, span)
            }
            "mean" | "sum" | "var" => {
                let Some((n, s, _)) = self.tensor(ctx, b, "x") else {
                    return Value::Error;
                };
                let (axis, out) = if b.has("axis") {
                    let Some(a) = self.axis(ctx, b, &s, -1) else {
                        return Value::Error;
                    };
                    (Some(a), s.without(a))
                } else {
                    (None, Shape::scalar())
                };
                let op = match name {
                    "mean" => Op::Mean { axis },
                    "sum" => Op::Sum { axis },
                    _ => Op::Var { axis },
                };
                self.node(ctx, op, vec![n], out, span)
            }
            "mse" | "l1" | "smooth_l1" | "kl" => {
                let (first, second) = if name == "kl" {
                    ("log_p", "log_q")
                } else {
                    ("a", "b")
                };
                let (Some((a, sa, spa)), Some((c, sc, spc))) =
                    (self.tensor(ctx, b, first), self.tensor(ctx, b, second))
                else {
                    return Value::Error;
                };
                if !self.same_shape(ctx, b, name, (&sa, spa), (&sc, spc)) {
                    return Value::Error;
                }
                let op = match name {
                    "mse" => Op::Loss(LossKind::Mse),
                    "l1" => Op::Loss(LossKind::L1),
                    "kl" => {
                        if sa.is_scalar() {
                            self.bad(
                                ctx,
                                b,
                                Diagnostic::error(
                                    Code::ShapeMismatch,
                                    spa,
                                    "`kl` compares distributions along the last axis, not scalars",
                                )
                                .primary_label("a scalar"),
                            );
                            return Value::Error;
                        }
                        Op::Loss(LossKind::Kl)
                    }
                    _ => {
                        let beta = if b.has("beta") {
                            self.positive(ctx, b, "beta")
                        } else {
                            Some(1.0)
                        };
                        let Some(beta) = beta else {
                            return Value::Error;
                        };
                        Op::Loss(LossKind::SmoothL1 {
                            beta: F32(beta as f32),
                        })
                    }
                };
                self.node(ctx, op, vec![a, c], Shape::scalar(), span)
            }
            "cross_entropy" => {
                let Some((logits, shape, lspan)) = self.tensor(ctx, b, "logits") else {
                    return Value::Error;
                };
                if shape.rank() != 2 {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::ShapeMismatch,
                            lspan,
                            format!("`cross_entropy` needs row logits [N, C], not {shape}"),
                        )
                        .primary_label("not a matrix"),
                    );
                    return Value::Error;
                }
                let (target, tspan) = b.get("target").unwrap();
                match target {
                    Value::Enum("diagonal") => {
                        if shape.0[0] != shape.0[1] {
                            self.bad(
                                ctx,
                                b,
                                Diagnostic::error(Code::ShapeMismatch, lspan, format!("diagonal targets need square logits [N, N], but these are {shape}"))
                                    .primary_label("not square")
                                    .label(tspan, "row i's target is column i"),
                            );
                            return Value::Error;
                        }
                        self.node(
                            ctx,
                            Op::Loss(LossKind::CrossEntropyDiagonal),
                            vec![logits],
                            Shape::scalar(),
                            span,
                        )
                    }
                    _ => {
                        let Some((t, tshape, tspan)) = self.tensor(ctx, b, "target") else {
                            return Value::Error;
                        };
                        if !self.same_shape(
                            ctx,
                            b,
                            "cross_entropy",
                            (&shape, lspan),
                            (&tshape, tspan),
                        ) {
                            return Value::Error;
                        }
                        self.node(
                            ctx,
                            Op::Loss(LossKind::CrossEntropySoft),
                            vec![logits, t],
                            Shape::scalar(),
                            span,
                        )
                    }
                }
            }
            "concat" => {
                let (Some((a, sa, spa)), Some((c, sc, spc))) =
                    (self.tensor(ctx, b, "a"), self.tensor(ctx, b, "b"))
                else {
                    return Value::Error;
                };
                let Some(axis) = self.axis(ctx, b, &sa, -1) else {
                    return Value::Error;
                };
                let compatible = sa.rank() == sc.rank()
                    && (0..sa.rank()).all(|i| i == axis || sa.0[i] == sc.0[i]);
                if !compatible {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::ShapeMismatch,
                            span,
                            format!("cannot concatenate {sa} and {sc} along axis {axis}"),
                        )
                        .primary_label("other axes differ")
                        .label(spa, format!("this is {sa}"))
                        .label(spc, format!("this is {sc}")),
                    );
                    return Value::Error;
                }
                let mut dims = sa.0.clone();
                dims[axis] = sa.0[axis].add(&sc.0[axis]);
                self.node(ctx, Op::Concat { axis }, vec![a, c], Shape(dims), span)
            }
            "linear" => {
                let x = self.tensor(ctx, b, "x");
                let to = self.width(ctx, b, "to");
                let bias = if b.has("bias") {
                    self.boolean(ctx, b, "bias")
                } else {
                    Some(true)
                };
                let (Some(x), Some(to), Some(bias)) = (x, to, bias) else {
                    return Value::Error;
                };
                self.linear(ctx, b, x, to, bias, span)
            }
            "proj" => {
                let x = self.tensor(ctx, b, "x");
                let to = self.width(ctx, b, "to");
                let (Some(x), Some(to)) = (x, to) else {
                    return Value::Error;
                };
                if x.1.last().and_then(|d| d.size) == Some(to) {
                    return Value::Tensor(x.0, x.1);
                }
                self.linear(ctx, b, x, to, true, span)
            }
            "attention" => {
                let (Some((q, sq, spq)), Some((k, sk, spk)), Some((v, sv, spv))) = (
                    self.tensor(ctx, b, "q"),
                    self.tensor(ctx, b, "k"),
                    self.tensor(ctx, b, "v"),
                ) else {
                    return Value::Error;
                };
                let heads = if b.has("heads") {
                    self.count(ctx, b, "heads")
                } else {
                    Some(1)
                };
                let Some(heads) = heads else {
                    return Value::Error;
                };
                let ok = sq.rank() >= 2
                    && sk.rank() == sq.rank()
                    && sv.rank() == sq.rank()
                    && sq.last() == sk.last()
                    && sk.0[sk.rank() - 2] == sv.0[sv.rank() - 2];
                if !ok {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(Code::ShapeMismatch, span, format!("attention needs q [M, C], k [N, C] and v [N, C'], not {sq}, {sk} and {sv}"))
                            .primary_label("shapes do not fit")
                            .label(spq, format!("q is {sq}"))
                            .label(spk, format!("k is {sk}"))
                            .label(spv, format!("v is {sv}")),
                    );
                    return Value::Error;
                }
                for (shape, what) in [(&sq, "query"), (&sv, "value")] {
                    if let Some(w) = shape.last().and_then(|d| d.size) {
                        if w % heads != 0 {
                            self.bad(
                                ctx,
                                b,
                                Diagnostic::error(
                                    Code::HeadsDoNotDivide,
                                    b.span("heads"),
                                    format!("{heads} heads do not divide the {what} width {w}"),
                                )
                                .primary_label("not a divisor"),
                            );
                            return Value::Error;
                        }
                    }
                }
                let mut dims = sq.0.clone();
                let last = dims.len() - 1;
                dims[last] = sv.0[sv.rank() - 1].clone();
                self.node(
                    ctx,
                    Op::Attention { heads },
                    vec![q, k, v],
                    Shape(dims),
                    span,
                )
            }
            "param" => {
                let init = self.num(ctx, b, "init");
                let shape = if b.has("shape") {
                    self.num_list(ctx, b, "shape").and_then(|l| {
                        if l.iter().all(|(v, _)| v.fract() == 0.0 && *v >= 1.0) {
                            Some(l.iter().map(|(v, _)| *v as u64).collect::<Vec<u64>>())
                        } else {
                            None
                        }
                    })
                } else {
                    Some(vec![])
                };
                if shape.is_none() && !b.bad.get() {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::NotPositive,
                            b.span("shape"),
                            "a shape is a list of whole numbers of at least 1",
                        )
                        .primary_label("for example [512]"),
                    );
                }
                let clamp = if b.has("clamp") {
                    self.clamp(ctx, b)
                } else {
                    Some(None)
                };
                let (Some(init), Some(shape), Some(clamp)) = (init, shape, clamp) else {
                    return Value::Error;
                };
                if let Some((lo, hi)) = clamp {
                    if init < lo || init > hi {
                        self.bad(
                            ctx,
                            b,
                            Diagnostic::error(
                                Code::OutOfRange,
                                b.span("init"),
                                format!(
                                    "the initial value {} is outside the clamp [{}, {}]",
                                    fmt_num(init),
                                    fmt_num(lo),
                                    fmt_num(hi)
                                ),
                            )
                            .primary_label("outside the clamp"),
                        );
                        return Value::Error;
                    }
                }
                let class = if shape.len() <= 1 {
                    ParamClass::Scale
                } else {
                    ParamClass::Weight
                };
                let Some(p) = self.make_param(
                    ctx,
                    b,
                    "param",
                    None,
                    shape.clone(),
                    Init::Constant(init),
                    clamp,
                    class,
                    span,
                ) else {
                    return Value::Error;
                };
                let s = Shape(shape.into_iter().map(Dim::known).collect());
                self.node(ctx, Op::Param(p), vec![], s, span)
            }
            "logit_scale" => {
                let init = self.positive(ctx, b, "init");
                let min = if b.has("min") {
                    self.positive(ctx, b, "min")
                } else {
                    Some(1.0)
                };
                let max = if b.has("max") {
                    self.positive(ctx, b, "max")
                } else {
                    Some(100.0)
                };
                let (Some(init), Some(min), Some(max)) = (init, min, max) else {
                    return Value::Error;
                };
                if init < min || init > max {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::OutOfRange,
                            b.span("init"),
                            format!(
                                "the initial scale {} is outside [{}, {}]",
                                fmt_num(init),
                                fmt_num(min),
                                fmt_num(max)
                            ),
                        )
                        .primary_label("outside the clamp"),
                    );
                    return Value::Error;
                }
                let Some(p) = self.make_param(
                    ctx,
                    b,
                    "logit_scale",
                    None,
                    vec![],
                    Init::Constant(init.ln()),
                    Some((min.ln(), max.ln())),
                    ParamClass::Scale,
                    span,
                ) else {
                    return Value::Error;
                };
                ctx.params[p].exponentiated = true;
                let t = self.push_node(ctx, Op::Param(p), vec![], Shape::scalar(), span);
                self.node(ctx, Op::Exp, vec![t], Shape::scalar(), span)
            }
            "detach" => {
                let Some((n, s, _)) = self.tensor(ctx, b, "x") else {
                    return Value::Error;
                };
                self.node(ctx, Op::Detach, vec![n], s, span)
            }
            "exp" | "log" | "sqrt" | "abs" => self.unary_math(ctx, name, b, span),
            "eye" => {
                let (value, vspan) = b.get("n").unwrap();
                let dim = match value {
                    Value::Dim(d, _) => d,
                    Value::Num(_) => match self.count(ctx, b, "count") {
                        Some(n) => Dim::known(n),
                        None => return Value::Error,
                    },
                    other => {
                        self.wrong_kind(
                            ctx,
                            b,
                            "n",
                            &other,
                            vspan,
                            "a dimension such as `rows(x)`",
                        );
                        return Value::Error;
                    }
                };
                self.node(ctx, Op::Eye, vec![], Shape(vec![dim.clone(), dim]), span)
            }
            "rows" | "size" => {
                let Some((n, s, xspan)) = self.tensor(ctx, b, "x") else {
                    return Value::Error;
                };
                let axis = if name == "rows" {
                    if s.is_scalar() {
                        self.bad(
                            ctx,
                            b,
                            Diagnostic::error(Code::ShapeMismatch, xspan, "a scalar has no rows")
                                .primary_label("a scalar"),
                        );
                        return Value::Error;
                    }
                    0
                } else {
                    let Some(a) = self.axis(ctx, b, &s, 0) else {
                        return Value::Error;
                    };
                    a
                };
                Value::Dim(s.0[axis].clone(), Some((n, axis)))
            }
            other => unreachable!("builtin `{other}` has no implementation"),
        }
    }

    fn clamp(&mut self, ctx: &Ctx, b: &Bound) -> Option<Option<(f64, f64)>> {
        let list = self.num_list(ctx, b, "clamp")?;
        if list.len() != 2 || list[0].0 > list[1].0 {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::OutOfRange,
                    b.span("clamp"),
                    "`clamp` takes [low, high] with low ≤ high",
                )
                .primary_label("for example [0, 4.6052]"),
            );
            return None;
        }
        Some(Some((list[0].0, list[1].0)))
    }
}
