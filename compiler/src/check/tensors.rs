//! Tensor arithmetic with symbolic shapes: `+ - * /` with NumPy broadcasting, matrix products,
//! transposes, compile-time arithmetic on numbers, and the hash-consed IR nodes they make.

use super::value::Value;
use super::{Checker, Ctx};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::ir::{Node, NodeId, Op};
use crate::shape::Shape;
use crate::source::Span;
use crate::syntax::ast::BinOp;

impl Checker<'_> {
    // ----------------------------------------------------------------------------------------
    // Arithmetic.
    pub(in crate::check) fn binary(
        &mut self,
        ctx: &mut Ctx,
        op: BinOp,
        (l, ls): (Value, Span),
        (r, rs): (Value, Span),
        span: Span,
    ) -> Value {
        use Value as V;
        match (op, l, r) {
            (_, V::Error, _) | (_, _, V::Error) => V::Error,
            (BinOp::Pipe, l, r) => {
                let mut parts = Vec::new();
                for (v, s) in [(l, ls), (r, rs)] {
                    match v {
                        V::Train(p) => parts.extend(p),
                        V::TrainPart(p) => parts.push((p, s)),
                        other => {
                            self.error(
                                ctx,
                                Diagnostic::error(Code::TypeMismatch, s, format!("`|` joins training settings, but this is {}", other.kind()))
                                    .primary_label(format!("this is {}", other.kind()))
                                    .hint("a training pipeline reads `adamw(lr: 1e-3) | epochs(10) | clip_grad(1.0)`"),
                            );
                            return V::Error;
                        }
                    }
                }
                V::Train(parts)
            }
            (op, V::Num(a), V::Num(b)) => match op {
                BinOp::Add => V::Num(a + b),
                BinOp::Sub => V::Num(a - b),
                BinOp::Mul => V::Num(a * b),
                BinOp::Div => {
                    if b == 0.0 {
                        self.error(
                            ctx,
                            Diagnostic::error(Code::NotFinite, rs, "division by zero")
                                .primary_label("this is 0"),
                        );
                        V::Error
                    } else {
                        V::Num(a / b)
                    }
                }
                _ => {
                    self.error(
                        ctx,
                        Diagnostic::error(
                            Code::TypeMismatch,
                            span,
                            "`@` multiplies matrices, not numbers",
                        )
                        .primary_label("two numbers")
                        .hint("use `*`"),
                    );
                    V::Error
                }
            },
            (BinOp::Add, V::Str(a), V::Str(b)) => V::Str(a + &b),
            (BinOp::Mul | BinOp::Div, V::Schedule(s), V::Num(x)) => {
                V::Schedule(s.scaled(if op == BinOp::Mul { x } else { 1.0 / x }))
            }
            (BinOp::Mul, V::Num(x), V::Schedule(s)) => V::Schedule(s.scaled(x)),
            (op, V::Dim(a, _), V::Dim(b, _)) if a.size.is_some() && b.size.is_some() => self
                .binary(
                    ctx,
                    op,
                    (V::Num(a.size.unwrap() as f64), ls),
                    (V::Num(b.size.unwrap() as f64), rs),
                    span,
                ),
            (op, V::Dim(a, None), other) if a.size.is_some() => self.binary(
                ctx,
                op,
                (V::Num(a.size.unwrap() as f64), ls),
                (other, rs),
                span,
            ),
            (op, other, V::Dim(b, None)) if b.size.is_some() => self.binary(
                ctx,
                op,
                (other, ls),
                (V::Num(b.size.unwrap() as f64), rs),
                span,
            ),
            (op, l, r) => {
                let numeric = |v: &Value| {
                    matches!(v, V::Tensor(..) | V::Num(_) | V::Dim(..) | V::Schedule(_))
                };
                if !numeric(&l) || !numeric(&r) {
                    let (bad, bad_span) = if numeric(&l) { (&r, rs) } else { (&l, ls) };
                    let mut d = Diagnostic::error(
                        Code::TypeMismatch,
                        bad_span,
                        format!("cannot use `{}` on {}", op.symbol(), bad.kind()),
                    )
                    .primary_label(format!("this is {}", bad.kind()));
                    if let V::Model { .. } = bad {
                        d = d.hint(
                            "arithmetic works on a model's outputs, such as `.image` or `.text`",
                        );
                    }
                    self.error(ctx, d);
                    return V::Error;
                }
                let Some((ln, lshape)) = self.to_tensor(ctx, l, ls) else {
                    return V::Error;
                };
                let Some((rn, rshape)) = self.to_tensor(ctx, r, rs) else {
                    return V::Error;
                };
                match self.tensor_binary(ctx, op, (ln, lshape, ls), (rn, rshape, rs), span) {
                    Some((n, s)) => V::Tensor(n, s),
                    None => V::Error,
                }
            }
        }
    }

    pub(in crate::check) fn tensor_binary(
        &mut self,
        ctx: &mut Ctx,
        op: BinOp,
        (ln, ls, lspan): (NodeId, Shape, Span),
        (rn, rs, rspan): (NodeId, Shape, Span),
        span: Span,
    ) -> Option<(NodeId, Shape)> {
        if op == BinOp::MatMul {
            return self.matrix_product(ctx, (ln, ls, lspan), (rn, rs, rspan), span);
        }
        let Some(shape) = ls.broadcast(&rs) else {
            let verb = match op {
                BinOp::Add => "add",
                BinOp::Sub => "subtract",
                BinOp::Mul => "multiply",
                _ => "divide",
            };
            let mut d = Diagnostic::error(
                Code::ShapeMismatch,
                span,
                format!("cannot {verb} tensors of shapes {ls} and {rs}"),
            )
            .primary_label("shapes do not broadcast")
            .label(lspan, format!("this is {ls}"))
            .label(rspan, format!("this is {rs}"));
            d = width_hint(d, &ls, &rs);
            self.error(ctx, d);
            return None;
        };
        self.ambiguous_broadcast(ctx, (&ls, lspan), (&rs, rspan));
        let op = match op {
            BinOp::Add => Op::Add,
            BinOp::Sub => Op::Sub,
            BinOp::Mul => Op::Mul,
            _ => Op::Div,
        };
        Some((
            self.push_node(ctx, op, vec![ln, rn], shape.clone(), span),
            shape,
        ))
    }

    pub(in crate::check) fn matrix_product(
        &mut self,
        ctx: &mut Ctx,
        (ln, ls, lspan): (NodeId, Shape, Span),
        (rn, rs, rspan): (NodeId, Shape, Span),
        span: Span,
    ) -> Option<(NodeId, Shape)> {
        if ls.rank() < 2 || rs.rank() < 2 {
            self.error(
                ctx,
                Diagnostic::error(
                    Code::ShapeMismatch,
                    span,
                    format!("a matrix product needs two matrices, not {ls} and {rs}"),
                )
                .primary_label("rank below 2")
                .label(lspan, format!("this is {ls}"))
                .label(rspan, format!("this is {rs}")),
            );
            return None;
        }
        let k1 = &ls.0[ls.rank() - 1];
        let k2 = &rs.0[rs.rank() - 2];
        let lead_l = Shape(ls.0[..ls.rank() - 2].to_vec());
        let lead_r = Shape(rs.0[..rs.rank() - 2].to_vec());
        let lead = lead_l.broadcast(&lead_r);
        if k1 != k2 || lead.is_none() {
            let mut d = Diagnostic::error(
                Code::ShapeMismatch,
                span,
                format!("cannot multiply matrices of shapes {ls} and {rs}"),
            )
            .primary_label(format!(
                "inner dimensions {} and {} differ",
                k1.describe(),
                k2.describe()
            ))
            .label(lspan, format!("this is {ls}"))
            .label(rspan, format!("this is {rs}"));
            let right_cols = &rs.0[rs.rank() - 1];
            if k1 != k2 && rs.0[rs.rank() - 1] == *k1 {
                d = d.hint("the right side may need transposing: add `.T`");
            } else if k1 != k2 && k1.size.is_some() && k2.size.is_some() {
                d = d.hint(format!(
                    "map one side onto the other's width first, for example `proj(x, to: {})`",
                    k2.describe_short()
                ));
            } else if k1 != k2 && k1.size.is_some() && right_cols.size.is_some() {
                // Rows against rows, as in `s.image @ t.image`: transpose, and match widths.
                d = d.hint(format!(
                    "the right side may need transposing (`.T`), and its width {} mapped to {} first, for example `proj(x, to: {})`",
                    right_cols.describe(),
                    k1.describe(),
                    k1.describe_short()
                ));
            }
            self.error(ctx, d);
            return None;
        }
        let mut dims = lead.unwrap().0;
        dims.push(ls.0[ls.rank() - 2].clone());
        dims.push(rs.0[rs.rank() - 1].clone());
        let shape = Shape(dims);
        Some((
            self.push_node(ctx, Op::MatMul, vec![ln, rn], shape.clone(), span),
            shape,
        ))
    }

    pub(in crate::check) fn transpose_node(
        &mut self,
        ctx: &mut Ctx,
        node: NodeId,
        shape: Shape,
        span: Span,
    ) -> Value {
        if shape.rank() < 2 {
            self.error(
                ctx,
                Diagnostic::error(
                    Code::ShapeMismatch,
                    span,
                    format!("only a matrix can be transposed, not a tensor {shape}"),
                )
                .primary_label("rank below 2"),
            );
            return Value::Error;
        }
        let mut dims = shape.0.clone();
        let n = dims.len();
        dims.swap(n - 1, n - 2);
        let shape = Shape(dims);
        Value::Tensor(
            self.push_node(ctx, Op::Transpose, vec![node], shape.clone(), span),
            shape,
        )
    }

    /// A value used as a tensor: numbers become constants, dimensions their size, schedules a
    /// scalar that follows the step.
    pub(in crate::check) fn to_tensor(
        &mut self,
        ctx: &mut Ctx,
        value: Value,
        span: Span,
    ) -> Option<(NodeId, Shape)> {
        match value {
            Value::Tensor(n, s) => Some((n, s)),
            Value::Num(v) => Some((
                self.push_node(ctx, Op::Const(v), vec![], Shape::scalar(), span),
                Shape::scalar(),
            )),
            Value::Dim(d, source) => match (d.size, source) {
                (Some(size), _) => Some((
                    self.push_node(ctx, Op::Const(size as f64), vec![], Shape::scalar(), span),
                    Shape::scalar(),
                )),
                (None, Some((node, axis))) => Some((
                    self.push_node(ctx, Op::Size { axis }, vec![node], Shape::scalar(), span),
                    Shape::scalar(),
                )),
                (None, None) => None,
            },
            Value::Schedule(s) => Some((
                self.push_node(ctx, Op::Scheduled(s), vec![], Shape::scalar(), span),
                Shape::scalar(),
            )),
            Value::Error => None,
            other => {
                let mut d = Diagnostic::error(
                    Code::TypeMismatch,
                    span,
                    format!("expected a tensor, found {}", other.kind()),
                )
                .primary_label(format!("this is {}", other.kind()));
                if let Value::Model { .. } = other {
                    d = d.hint("use one of the model's outputs, such as `.image` or `.text`");
                }
                self.error(ctx, d);
                None
            }
        }
    }

    pub(in crate::check) fn push_node(
        &mut self,
        ctx: &mut Ctx,
        op: Op,
        inputs: Vec<NodeId>,
        shape: Shape,
        span: Span,
    ) -> NodeId {
        let pure = !matches!(op, Op::Param(_));
        let key = (op.clone(), inputs.clone(), shape.clone());
        if pure {
            if let Some(&n) = ctx.node_keys.get(&key) {
                return n;
            }
        }
        ctx.graph.nodes.push(Node {
            op,
            inputs,
            shape,
            span,
        });
        let id = ctx.graph.nodes.len() - 1;
        if pure {
            ctx.node_keys.insert(key, id);
        }
        id
    }
}

/// Suggests a projection when two shapes differ only in their last (width) dimension.
pub(super) fn width_hint(d: Diagnostic, a: &Shape, b: &Shape) -> Diagnostic {
    // Only widths known before training (model dimensions) can be projected.
    let known = |s: &Shape| s.last().is_some_and(|d| d.size.is_some());
    if a.rank() == b.rank()
        && a.rank() >= 1
        && known(a)
        && known(b)
        && a.0[..a.rank() - 1] == b.0[..b.rank() - 1]
        && a.last() != b.last()
    {
        let target = b.last().unwrap();
        d.hint(format!(
            "the widths differ; project one side first, for example `proj(x, to: {})`",
            target.describe_short()
        ))
    } else {
        d
    }
}

/// Suggests pooling or selecting tokens when two token sequences differ only in length.
pub(crate) fn token_hint(d: Diagnostic, a: &Shape, b: &Shape) -> Diagnostic {
    if a.rank() == 3 && b.rank() == 3 && a.0[0] == b.0[0] && a.0[2] == b.0[2] && a.0[1] != b.0[1] {
        d.hint(format!(
            "the token counts differ ({} and {}); compare pooled tokens, `mean(x, axis: 1)`, or one token such as the class token, `x[:, 0]`",
            a.0[1].describe(),
            b.0[1].describe()
        ))
    } else {
        d
    }
}

impl crate::shape::Dim {
    /// How to write this dimension in a recipe: its source name if it has one.
    pub(in crate::check) fn describe_short(&self) -> String {
        match (&self.name, self.size) {
            (Some(n), Some(_)) => n.clone(),
            (_, Some(s)) => s.to_string(),
            (Some(n), None) => n.clone(),
            (None, None) => "?".into(),
        }
    }
}
