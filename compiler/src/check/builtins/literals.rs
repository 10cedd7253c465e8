//! Literal tensors (`tensor([[1, 2], [3, 4]])`) and the expectations of `test` blocks
//! (`expect(actual, expected, tol?)`).

use super::Bound;
use crate::check::value::{Expectation, Value};
use crate::check::{Checker, Ctx};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::ir::Op;
use crate::shape::{Dim, Shape};
use crate::source::Span;

/// The most values a literal tensor may hold.
const MAX_LITERAL: usize = 1 << 20;

impl Checker<'_> {
    /// `tensor(values)`: a number, or nested lists of numbers of one shape.
    pub(in crate::check) fn tensor_literal(
        &mut self,
        ctx: &mut Ctx,
        b: &Bound,
        span: Span,
    ) -> Value {
        let (value, vspan) = b.get("values").unwrap();
        let mut dims: Vec<usize> = Vec::new();
        let mut values = Vec::new();
        if let Err((message, at)) = flatten(&value, vspan, 0, &mut dims, &mut values) {
            self.bad(
                ctx,
                b,
                Diagnostic::error(Code::ShapeMismatch, at, message)
                    .primary_label("here")
                    .hint("a tensor literal is a number or nested lists of numbers, every list at one depth as long as the others: `tensor([[1, 2], [3, 4]])`"),
            );
            return Value::Error;
        }
        if values.len() > MAX_LITERAL {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::OutOfRange,
                    vspan,
                    format!("a literal tensor holds at most {MAX_LITERAL} values"),
                )
                .primary_label("too many values"),
            );
            return Value::Error;
        }
        let shape = Shape(dims.iter().map(|&d| Dim::known(d as u64)).collect());
        if shape.is_scalar() {
            return self.node(ctx, Op::Const(values[0]), vec![], shape, span);
        }
        self.node(ctx, Op::Literal(values), vec![], shape, span)
    }

    /// `expect(actual, expected, tol? (1e-5))`: in a `test`, every entry of `actual` within
    /// tol·(1 + |expected|) of `expected` (same shape, or a scalar expected of every entry).
    pub(in crate::check) fn expect(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let (Some((a, sa, spa)), Some((e, se, spe))) = (
            self.tensor(ctx, b, "actual"),
            self.tensor(ctx, b, "expected"),
        ) else {
            return Value::Error;
        };
        let Some(tol) = self.ranged(ctx, b, "tol", 0.0, f64::INFINITY, false, true) else {
            return Value::Error;
        };
        if sa != se && !se.is_scalar() {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::ShapeMismatch,
                    span,
                    format!("`expect` compares tensors of one shape (or with a number), not {sa} and {se}"),
                )
                .primary_label("shapes differ")
                .label(spa, format!("this is {sa}"))
                .label(spe, format!("this is {se}")),
            );
            return Value::Error;
        }
        Value::Expect(Expectation {
            actual: a,
            expected: e,
            tol,
            span,
        })
    }
}

/// Row-major values of a nested list, and its shape; an error names the offending item.
fn flatten(
    value: &Value,
    span: Span,
    depth: usize,
    dims: &mut Vec<usize>,
    out: &mut Vec<f64>,
) -> Result<(), (String, Span)> {
    match value {
        Value::Num(v) => {
            if depth != dims.len() {
                return Err((
                    format!(
                        "a number where a list of depth {} was expected",
                        dims.len() - depth
                    ),
                    span,
                ));
            }
            out.push(*v);
            Ok(())
        }
        Value::List(items) => {
            if items.is_empty() {
                return Err(("an empty list has no shape".into(), span));
            }
            if depth == dims.len() {
                if !out.is_empty() {
                    return Err(("a list where a number was expected".into(), span));
                }
                dims.push(items.len());
            } else if dims[depth] != items.len() {
                return Err((
                    format!(
                        "a list of {} where the others hold {}",
                        items.len(),
                        dims[depth]
                    ),
                    span,
                ));
            }
            for (item, ispan) in items {
                flatten(item, *ispan, depth + 1, dims, out)?;
            }
            Ok(())
        }
        other => Err((format!("{} in a tensor literal", other.kind()), span)),
    }
}
