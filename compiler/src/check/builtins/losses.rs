//! Loss primitives (`mse`, `l1`, `smooth_l1`, `kl`, `cross_entropy`) and the learnable parts a
//! loss owns (`linear`, `proj`, `param`, `logit_scale`), named for sharing between terms.

use super::Bound;
use crate::check::value::Value;
use crate::check::{Checker, Ctx};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::fmt_num;
use crate::ir::{self, Init, LossKind, NodeId, Op, ParamSpec};
use crate::model::ParamClass;
use crate::shape::{Dim, Shape};
use crate::source::Span;
use kdc_backend::op::F32;

impl Checker<'_> {
    pub(in crate::check) fn pairwise_loss(
        &mut self,
        ctx: &mut Ctx,
        b: &Bound,
        span: Span,
    ) -> Value {
        let name = b.callee.as_str();
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
                let beta = self.positive(ctx, b, "beta");
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

    pub(in crate::check) fn cross_entropy(
        &mut self,
        ctx: &mut Ctx,
        b: &Bound,
        span: Span,
    ) -> Value {
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
                        Diagnostic::error(
                            Code::ShapeMismatch,
                            lspan,
                            format!(
                                "diagonal targets need square logits [N, N], but these are {shape}"
                            ),
                        )
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
                if !self.same_shape(ctx, b, "cross_entropy", (&shape, lspan), (&tshape, tspan)) {
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

    pub(in crate::check) fn linear(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let x = self.tensor(ctx, b, "x");
        let to = self.width(ctx, b, "to");
        let bias = self.boolean(ctx, b, "bias");
        let (Some(x), Some(to), Some(bias)) = (x, to, bias) else {
            return Value::Error;
        };
        self.linear_map(ctx, b, x, to, bias, span)
    }

    pub(in crate::check) fn proj(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let x = self.tensor(ctx, b, "x");
        let to = self.width(ctx, b, "to");
        let (Some(x), Some(to)) = (x, to) else {
            return Value::Error;
        };
        if x.1.last().and_then(|d| d.size) == Some(to) {
            return Value::Tensor(x.0, x.1);
        }
        self.linear_map(ctx, b, x, to, true, span)
    }

    pub(in crate::check) fn param(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
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

    pub(in crate::check) fn logit_scale(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let Some((init, min, max)) = self.scale_range(ctx, b, "outside the clamp") else {
            return Value::Error;
        };
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

    /// A learnable part of the loss. With `name:` the name identifies it (so two calls can share
    /// one parameter); without, each call site (through every enclosing function call) makes
    /// its own. `suffix` tells apart the several tensors one call makes (a weight and a bias).
    #[allow(clippy::too_many_arguments)]
    pub(in crate::check) fn make_param(
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
        let explicit = if b.names.iter().any(|n| n == "name") && b.has("name") {
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

    pub(in crate::check) fn linear_map(
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
        let Some((y, y_shape)) =
            self.matrix_product(ctx, (n, shape, xspan), (wt, wt_shape, span), span)
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

    pub(in crate::check) fn clamp(&mut self, ctx: &Ctx, b: &Bound) -> Option<Option<(f64, f64)>> {
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
