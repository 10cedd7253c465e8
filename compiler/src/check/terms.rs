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
        // Constant summands: (index of the term that follows, value, span).
        let mut constants: Vec<(usize, f64, Span)> = Vec::new();
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
                // A constant joins the term next to it (`1 - x` is one term, 1 − x).
                if let Schedule::Constant(c) = weight {
                    constants.push((terms.len(), c, summand.span));
                    continue;
                }
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
        for (next, c, span) in constants {
            // The term right after the constant (`1 - x`), whose weight must be a number: it
            // moves into the body, c + w·body, with weight 1.
            let target = (next < terms.len())
                .then_some(next)
                .filter(|&i| matches!(terms[i].weight, Schedule::Constant(_)));
            let Some(i) = target else {
                self.error(
                    ctx,
                    Diagnostic::error(Code::NotALoss, span, "this loss term is a constant")
                        .primary_label("nothing here depends on a model")
                        .hint(if next < terms.len() {
                            "a constant joins the term after it only when that term's weight is a number; put the two in parentheses"
                        } else {
                            "a constant adds nothing to the gradient; remove it"
                        }),
                );
                ok = false;
                continue;
            };
            let Schedule::Constant(w) = terms[i].weight else {
                unreachable!()
            };
            let term_span = terms[i].span;
            let mut node = terms[i].node;
            if w != 1.0 {
                let wn = self.push_node(ctx, Op::Const(w), vec![], Shape::scalar(), term_span);
                node = self.push_node(ctx, Op::Mul, vec![wn, node], Shape::scalar(), term_span);
            }
            let cn = self.push_node(ctx, Op::Const(c), vec![], Shape::scalar(), span);
            let span = span.to(term_span);
            terms[i].node = self.push_node(ctx, Op::Add, vec![cn, node], Shape::scalar(), span);
            terms[i].weight = Schedule::Constant(1.0);
            terms[i].span = span;
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
