//! The loss split into weighted terms: `a + w * f(…) - g(…) / 2` gives one term per summand,
//! each a scalar body with a weight (a number or a schedule) and a label.

use super::value::Value;
use super::{Checker, Ctx, Env};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::ir::{NodeId, Op, Schedule, Term};
use crate::shape::Shape;
use crate::source::Span;
use crate::syntax::ast::{BinOp, Expr, ExprKind};
use std::collections::HashMap;

impl Checker<'_> {
    /// Splits `loss = a + w * f(…) - g(…) / 2 …` into weighted terms. Numbers and schedules
    /// multiplying a term are its weight; the rest must be a scalar tensor.
    pub(in crate::check) fn loss_terms(
        &mut self,
        ctx: &mut Ctx,
        env: &Env,
        expr: &Expr,
        terms: &mut Vec<Term>,
    ) -> bool {
        let mut summands = Vec::new();
        split_sum(expr, 1.0, &mut summands);
        let mut ok = true;
        let mut labels: HashMap<String, usize> = HashMap::new();
        for (sign, summand) in summands {
            let mut factors = Vec::new();
            split_product(summand, false, &mut factors);
            let mut weight = Schedule::Constant(sign);
            let mut tensors: Vec<(NodeId, Shape, Span, bool)> = Vec::new();
            let mut body_expr: Option<&Expr> = None;
            let mut bad = false;
            for (factor, reciprocal) in factors {
                let value = self.eval(ctx, env, factor);
                match value {
                    Value::Error => bad = true,
                    Value::Num(v) => {
                        if reciprocal && v == 0.0 {
                            self.error(
                                ctx,
                                Diagnostic::error(
                                    Code::NotFinite,
                                    factor.span,
                                    "a loss term is divided by zero",
                                )
                                .primary_label("this is 0"),
                            );
                            bad = true;
                        } else {
                            let v = if reciprocal { 1.0 / v } else { v };
                            if !v.is_finite() {
                                self.error(
                                    ctx,
                                    Diagnostic::error(
                                        Code::NotFinite,
                                        factor.span,
                                        "a loss weight must be a finite number",
                                    )
                                    .primary_label("this weight is not finite"),
                                );
                                bad = true;
                            }
                            weight = weight.scaled(v);
                        }
                    }
                    Value::Schedule(s)
                        if !reciprocal && matches!(weight, Schedule::Constant(_)) =>
                    {
                        let Schedule::Constant(c) = weight else {
                            unreachable!()
                        };
                        weight = s.scaled(c);
                    }
                    other => match self.to_tensor(ctx, other, factor.span) {
                        Some((node, shape)) => {
                            if body_expr.is_none() {
                                body_expr = Some(factor);
                            }
                            tensors.push((node, shape, factor.span, reciprocal));
                        }
                        None => bad = true,
                    },
                }
            }
            if bad {
                ok = false;
                continue;
            }
            if tensors.is_empty() {
                self.error(
                    ctx,
                    Diagnostic::error(Code::NotALoss, summand.span, "this loss term is a constant")
                        .primary_label("nothing here depends on a model")
                        .hint("a constant adds nothing to the gradient; remove it"),
                );
                ok = false;
                continue;
            }
            let (mut node, mut shape, span, reciprocal) = tensors[0].clone();
            if reciprocal {
                let one = self.push_node(ctx, Op::Const(1.0), vec![], Shape::scalar(), span);
                node = self.push_node(ctx, Op::Div, vec![one, node], shape.clone(), span);
            }
            for (other, other_shape, other_span, reciprocal) in tensors.into_iter().skip(1) {
                let op = if reciprocal { BinOp::Div } else { BinOp::Mul };
                match self.tensor_binary(
                    ctx,
                    op,
                    (node, shape.clone(), span),
                    (other, other_shape, other_span),
                    summand.span,
                ) {
                    Some((n, s)) => {
                        node = n;
                        shape = s;
                    }
                    None => {
                        ok = false;
                        continue;
                    }
                }
            }
            if !shape.is_scalar() {
                self.error(
                    ctx,
                    Diagnostic::error(
                        Code::NotALoss,
                        summand.span,
                        format!("a loss term must be a scalar, but this one is a tensor {shape}"),
                    )
                    .primary_label(format!("this is {shape}"))
                    .hint("reduce it to a scalar, for example with `mean(…)`"),
                );
                ok = false;
                continue;
            }
            let base = body_expr
                .and_then(label_of)
                .unwrap_or_else(|| "term".to_string());
            let count = labels.entry(base.clone()).or_insert(0);
            *count += 1;
            let label = if *count == 1 {
                base
            } else {
                format!("{base}#{count}")
            };
            terms.push(Term {
                label,
                weight,
                node,
                span: summand.span,
            });
        }
        ok
    }
}

fn label_of(expr: &Expr) -> Option<String> {
    match &expr.kind {
        ExprKind::Call(callee, _) => match &callee.kind {
            ExprKind::Name(n) => Some(n.clone()),
            ExprKind::Field(_, m) => Some(m.name.clone()),
            _ => None,
        },
        ExprKind::Paren(inner) => label_of(inner),
        ExprKind::Name(n) => Some(n.clone()),
        _ => None,
    }
}

fn split_sum<'e>(expr: &'e Expr, sign: f64, out: &mut Vec<(f64, &'e Expr)>) {
    match &expr.kind {
        ExprKind::Binary(BinOp::Add, l, r) => {
            split_sum(l, sign, out);
            split_sum(r, sign, out);
        }
        ExprKind::Binary(BinOp::Sub, l, r) => {
            split_sum(l, sign, out);
            split_sum(r, -sign, out);
        }
        _ => out.push((sign, expr)),
    }
}

fn split_product<'e>(expr: &'e Expr, reciprocal: bool, out: &mut Vec<(&'e Expr, bool)>) {
    match &expr.kind {
        ExprKind::Binary(BinOp::Mul, l, r) => {
            split_product(l, reciprocal, out);
            split_product(r, reciprocal, out);
        }
        ExprKind::Binary(BinOp::Div, l, r) if !reciprocal => {
            split_product(l, false, out);
            split_product(r, true, out);
        }
        _ => out.push((expr, reciprocal)),
    }
}
