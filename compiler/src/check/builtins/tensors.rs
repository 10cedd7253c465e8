//! Tensor primitives with their shape rules: products, transposes, softmax and normalisation
//! along an axis, reductions, concatenation, attention, element-wise functions, identity
//! matrices and sizes.

use super::Bound;
use crate::check::value::Value;
use crate::check::{width_hint, Checker, Ctx};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::fmt_num;
use crate::ir::{NodeId, Op};
use crate::shape::{Dim, Shape};
use crate::source::Span;

impl Checker<'_> {
    pub(in crate::check) fn matmul(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let (Some(a), Some(c)) = (self.tensor(ctx, b, "a"), self.tensor(ctx, b, "b")) else {
            return Value::Error;
        };
        match self.matrix_product(ctx, a, c, span) {
            Some((n, s)) => Value::Tensor(n, s),
            None => Value::Error,
        }
    }

    pub(in crate::check) fn transpose(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let Some((n, s, _)) = self.tensor(ctx, b, "x") else {
            return Value::Error;
        };
        self.transpose_node(ctx, n, s, span)
    }

    pub(in crate::check) fn along_axis(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let name = b.callee.as_str();
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
            _ => {
                let Some(eps) = self.positive(ctx, b, "eps") else {
                    return Value::Error;
                };
                Op::Normalize { axis, eps }
            }
        };
        self.node(ctx, op, vec![n], s, span)
    }

    pub(in crate::check) fn reduction(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let name = b.callee.clone();
        let op = move |axis| match name.as_str() {
            "mean" => Op::Mean { axis },
            "sum" => Op::Sum { axis },
            _ => Op::Var { axis },
        };
        self.reduce_with(ctx, b, op, span)
    }

    pub(in crate::check) fn concat(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let (Some((a, sa, spa)), Some((c, sc, spc))) =
            (self.tensor(ctx, b, "a"), self.tensor(ctx, b, "b"))
        else {
            return Value::Error;
        };
        let Some(axis) = self.axis(ctx, b, &sa, -1) else {
            return Value::Error;
        };
        let compatible =
            sa.rank() == sc.rank() && (0..sa.rank()).all(|i| i == axis || sa.0[i] == sc.0[i]);
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

    pub(in crate::check) fn attention(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let (Some((q, sq, spq)), Some((k, sk, spk)), Some((v, sv, spv))) = (
            self.tensor(ctx, b, "q"),
            self.tensor(ctx, b, "k"),
            self.tensor(ctx, b, "v"),
        ) else {
            return Value::Error;
        };
        let heads = self.count(ctx, b, "heads");
        let Some(heads) = heads else {
            return Value::Error;
        };
        let ok = sq.rank() >= 2
            && sk.rank() == sq.rank()
            && sv.rank() == sq.rank()
            && sq.last() == sk.last()
            && sk.0[sk.rank() - 2] == sv.0[sv.rank() - 2]
            && sq.0[..sq.rank() - 2] == sk.0[..sk.rank() - 2]
            && sq.0[..sq.rank() - 2] == sv.0[..sv.rank() - 2];
        if !ok {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::ShapeMismatch,
                    span,
                    format!(
                        "attention needs q [M, C], k [N, C] and v [N, C'], not {sq}, {sk} and {sv}"
                    ),
                )
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

    pub(in crate::check) fn detach(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let Some((n, s, _)) = self.tensor(ctx, b, "x") else {
            return Value::Error;
        };
        self.node(ctx, Op::Detach, vec![n], s, span)
    }

    pub(in crate::check) fn elementwise(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let name = b.callee.as_str();
        self.unary_math(ctx, name, b, span)
    }

    pub(in crate::check) fn unary_math(
        &mut self,
        ctx: &mut Ctx,
        name: &str,
        b: &Bound,
        span: Span,
    ) -> Value {
        let (value, vspan) = b.get("x").unwrap();
        if let Value::Num(x) = value {
            let out = match name {
                "exp" => x.exp(),
                "log" => x.ln(),
                "sqrt" => x.sqrt(),
                "relu" => x.max(0.0),
                "sigmoid" => 1.0 / (1.0 + (-x).exp()),
                "tanh" => x.tanh(),
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
            "relu" => Op::Relu,
            "sigmoid" => Op::Sigmoid,
            "tanh" => Op::Tanh,
            _ => Op::Abs,
        };
        self.node(ctx, op, vec![n], shape, span)
    }

    pub(in crate::check) fn eye(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let (value, vspan) = b.get("n").unwrap();
        let dim = match value {
            Value::Dim(d, _) => d,
            Value::Num(_) => match self.count(ctx, b, "count") {
                Some(n) => Dim::known(n),
                None => return Value::Error,
            },
            other => {
                self.wrong_kind(ctx, b, "n", &other, vspan, "a dimension such as `rows(x)`");
                return Value::Error;
            }
        };
        self.node(ctx, Op::Eye, vec![], Shape(vec![dim.clone(), dim]), span)
    }

    pub(in crate::check) fn axis_size(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let name = b.callee.as_str();
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

    // ----------------------------------------------------------------------------------------
    // Tensor primitives.
    pub(in crate::check) fn node(
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

    pub(in crate::check) fn same_shape(
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
        let d = width_hint(d, a, c);
        let d = crate::check::tensors::token_hint(d, a, c);
        self.bad(ctx, b, d);
        false
    }
}
