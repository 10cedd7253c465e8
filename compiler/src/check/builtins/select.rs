//! Shape and selection primitives: reshape, unsqueeze, squeeze, permute, stack, indexing and
//! slicing; element-wise maximum, minimum, clamp, comparisons and `where`; reductions to the
//! largest or smallest value and their positions; pairwise distances.

use super::Bound;
use crate::check::value::Value;
use crate::check::{Checker, Ctx};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::fmt_num;
use crate::ir::{Cmp, NodeId, Op};
use crate::shape::{Dim, Shape};
use crate::source::Span;

/// One item of an index `x[…]`, already evaluated.
pub(in crate::check) enum IndexItem {
    /// `i`: one position; the axis disappears.
    At(i64, Span),
    /// `a:b`, `a:`, `:b`, `:`: a range; the axis stays.
    Range(Option<i64>, Option<i64>, Span),
}

impl Checker<'_> {
    /// `maximum`/`minimum` of two tensors, or the largest/smallest value over an axis.
    pub(in crate::check) fn extreme(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let largest = b.callee == "max";
        if b.has("y") {
            if b.has("axis") || b.has("keepdim") {
                let d = Diagnostic::error(
                    Code::TypeMismatch,
                    b.span(if b.has("axis") { "axis" } else { "keepdim" }),
                    format!(
                        "`{}` of two tensors is element-wise and takes no axis",
                        b.callee
                    ),
                )
                .primary_label("not with a second tensor")
                .hint(format!(
                    "write `{}(x, axis: …)` for the {} along an axis",
                    b.callee,
                    if largest {
                        "largest value"
                    } else {
                        "smallest value"
                    }
                ));
                self.bad(ctx, b, d);
                return Value::Error;
            }
            let op = if largest { Op::Maximum } else { Op::Minimum };
            return self.broadcast_op(ctx, b, op, &["x", "y"], span);
        }
        let op = |axis| {
            if largest {
                Op::Max { axis }
            } else {
                Op::Min { axis }
            }
        };
        self.reduce_with(ctx, b, op, span)
    }

    /// `argmax`/`argmin` along an axis, or over everything.
    pub(in crate::check) fn arg_extreme(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let largest = b.callee == "argmax";
        self.reduce_with(ctx, b, |axis| Op::Arg { largest, axis }, span)
    }

    /// `topk(x, k, axis? (-1))`: the k largest values along an axis, largest first.
    pub(in crate::check) fn topk(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let Some((n, s, xspan)) = self.tensor(ctx, b, "x") else {
            return Value::Error;
        };
        if s.is_scalar() {
            let d = Diagnostic::error(
                Code::ShapeMismatch,
                xspan,
                "`topk` needs a tensor with at least one axis, not a scalar",
            )
            .primary_label("a scalar");
            self.bad(ctx, b, d);
            return Value::Error;
        }
        let Some(axis) = self.axis(ctx, b, &s, -1) else {
            return Value::Error;
        };
        let Some(k) = self.count(ctx, b, "k") else {
            return Value::Error;
        };
        match s.0[axis].size {
            // Along the batch, k is checked against the stage's batch size.
            Some(size) if k <= size => {}
            None => {}
            size => {
                let d = Diagnostic::error(
                    Code::OutOfRange,
                    b.span("k"),
                    match size {
                        Some(size) => format!("k = {k} is more than the {size} entries along axis {axis}"),
                        None => format!("axis {axis} has the size {} known only when data arrives; `topk` needs an axis of known size", s.0[axis].describe()),
                    },
                )
                .primary_label("too many")
                .label(xspan, format!("this is {s}"));
                self.bad(ctx, b, d);
                return Value::Error;
            }
        }
        let mut dims = s.0.clone();
        dims[axis] = Dim::known(k);
        self.node(ctx, Op::TopK { k, axis }, vec![n], Shape(dims), span)
    }

    /// A reduction over `axis` (or everything) with `keepdim`.
    pub(in crate::check) fn reduce_with(
        &mut self,
        ctx: &mut Ctx,
        b: &Bound,
        op: impl Fn(Option<usize>) -> Op,
        span: Span,
    ) -> Value {
        let Some((n, s, xspan)) = self.tensor(ctx, b, "x") else {
            return Value::Error;
        };
        if s.is_scalar() && b.callee != "mean" && b.callee != "sum" && b.callee != "var" {
            let d = Diagnostic::error(
                Code::ShapeMismatch,
                xspan,
                format!(
                    "`{}` needs a tensor with at least one axis, not a scalar",
                    b.callee
                ),
            )
            .primary_label("a scalar");
            self.bad(ctx, b, d);
            return Value::Error;
        }
        let keepdim = if b.has("keepdim") {
            match self.boolean(ctx, b, "keepdim") {
                Some(k) => k,
                None => return Value::Error,
            }
        } else {
            false
        };
        let (axis, out, kept) = if b.has("axis") {
            let Some(a) = self.axis(ctx, b, &s, -1) else {
                return Value::Error;
            };
            let mut kept = s.0.clone();
            kept[a] = Dim::known(1);
            (Some(a), s.without(a), Shape(kept))
        } else {
            (None, Shape::scalar(), Shape(vec![Dim::known(1); s.rank()]))
        };
        let reduced = self.push_node(ctx, op(axis), vec![n], out, span);
        if keepdim {
            self.node(ctx, Op::Reshape, vec![reduced], kept, span)
        } else {
            let shape = ctx.graph.nodes[reduced].shape.clone();
            Value::Tensor(reduced, shape)
        }
    }

    /// An element-wise operation of several tensors that broadcast together.
    pub(in crate::check) fn broadcast_op(
        &mut self,
        ctx: &mut Ctx,
        b: &Bound,
        op: Op,
        names: &[&str],
        span: Span,
    ) -> Value {
        let mut inputs = Vec::new();
        for name in names {
            match self.tensor(ctx, b, name) {
                Some(t) => inputs.push(t),
                None => return Value::Error,
            }
        }
        let mut shape = Shape::scalar();
        for (i, (_, s, sspan)) in inputs.iter().enumerate() {
            match shape.broadcast(s) {
                Some(out) => {
                    if i > 0 {
                        self.ambiguous_broadcast(ctx, (&shape, inputs[0].2), (s, *sspan));
                    }
                    shape = out;
                }
                None => {
                    let mut d = Diagnostic::error(
                        Code::ShapeMismatch,
                        span,
                        format!(
                            "the arguments of `{}` do not broadcast together: {}",
                            b.callee,
                            inputs
                                .iter()
                                .map(|(_, s, _)| s.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                    .primary_label("shapes do not broadcast");
                    for (name, (_, s, sp)) in names.iter().zip(&inputs) {
                        d = d.label(*sp, format!("`{name}` is {s}"));
                    }
                    self.bad(ctx, b, d);
                    return Value::Error;
                }
            }
        }
        let nodes = inputs.iter().map(|(n, _, _)| *n).collect();
        self.node(ctx, op, nodes, shape, span)
    }

    /// Comparisons `gt`, `ge`, `lt`, `le`, `eq`, `ne`: 1 where true, 0 where false.
    pub(in crate::check) fn compare(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let cmp = match b.callee.as_str() {
            "gt" => Cmp::Gt,
            "ge" => Cmp::Ge,
            "lt" => Cmp::Lt,
            "le" => Cmp::Le,
            "eq" => Cmp::Eq,
            _ => Cmp::Ne,
        };
        self.broadcast_op(ctx, b, Op::Compare(cmp), &["a", "b"], span)
    }

    pub(in crate::check) fn select_where(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        self.broadcast_op(ctx, b, Op::Where, &["cond", "a", "b"], span)
    }

    /// `clamp(x, min?, max?)`: max(min(x, max), min), the gradient passing where
    /// min ≤ x ≤ max.
    pub(in crate::check) fn clamp_values(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let lo = if b.has("min") {
            self.num(ctx, b, "min")
        } else {
            None
        };
        let hi = if b.has("max") {
            self.num(ctx, b, "max")
        } else {
            None
        };
        if b.bad.get() {
            return Value::Error;
        }
        if lo.is_none() && hi.is_none() {
            let d = Diagnostic::error(
                Code::MissingArgument,
                span,
                "`clamp` needs `min:`, `max:` or both",
            )
            .primary_label("nothing to clamp to")
            .hint("for example `clamp(x, min: 0)`");
            self.bad(ctx, b, d);
            return Value::Error;
        }
        if let (Some(l), Some(h)) = (lo, hi) {
            if l > h {
                let d = Diagnostic::error(
                    Code::OutOfRange,
                    b.span("max"),
                    format!("`max` ({}) is below `min` ({})", fmt_num(h), fmt_num(l)),
                )
                .primary_label("an empty range");
                self.bad(ctx, b, d);
                return Value::Error;
            }
        }
        let (x, _) = b.get("x").unwrap();
        if let Value::Num(v) = x {
            return Value::Num(v.max(lo.unwrap_or(f64::MIN)).min(hi.unwrap_or(f64::MAX)));
        }
        let Some((mut n, s, _)) = self.tensor(ctx, b, "x") else {
            return Value::Error;
        };
        if let Some(l) = lo {
            let c = self.push_node(ctx, Op::Const(l), vec![], Shape::scalar(), span);
            n = self.push_node(ctx, Op::Maximum, vec![n, c], s.clone(), span);
        }
        if let Some(h) = hi {
            let c = self.push_node(ctx, Op::Const(h), vec![], Shape::scalar(), span);
            n = self.push_node(ctx, Op::Minimum, vec![n, c], s.clone(), span);
        }
        Value::Tensor(n, s)
    }

    /// `cdist(a, b)`: Euclidean distances between the rows of a [.., M, D] and b [.., N, D],
    /// [.., M, N]; exactly 0 (with gradient 0) where two rows are equal.
    pub(in crate::check) fn cdist(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let (Some((a, sa, spa)), Some((c, sc, spc))) =
            (self.tensor(ctx, b, "a"), self.tensor(ctx, b, "b"))
        else {
            return Value::Error;
        };
        let r = sa.rank();
        let lead = |s: &Shape| Shape(s.0[..s.rank() - 2].to_vec());
        let ok = r >= 2
            && sc.rank() == r
            && sa.last() == sc.last()
            && lead(&sa).broadcast(&lead(&sc)).is_some();
        if !ok {
            let d = Diagnostic::error(
                Code::ShapeMismatch,
                span,
                format!(
                    "`cdist` needs rows of one width, a [M, D] and b [N, D], not {sa} and {sc}"
                ),
            )
            .primary_label("shapes do not fit")
            .label(spa, format!("this is {sa}"))
            .label(spc, format!("this is {sc}"));
            let d = crate::check::width_hint(d, &sa, &sc);
            self.bad(ctx, b, d);
            return Value::Error;
        }
        // d[.., i, j, :] = a[.., i, :] − b[.., j, :] through [.., M, 1, D] − [.., 1, N, D].
        let mut ua = sa.0.clone();
        ua.insert(r - 1, Dim::known(1));
        let mut ub = sc.0.clone();
        ub.insert(r - 2, Dim::known(1));
        let (ua, ub) = (Shape(ua), Shape(ub));
        let a3 = self.push_node(ctx, Op::Reshape, vec![a], ua.clone(), span);
        let b3 = self.push_node(ctx, Op::Reshape, vec![c], ub.clone(), span);
        let diff_shape = ua.broadcast(&ub).expect("checked above");
        let diff = self.push_node(ctx, Op::Sub, vec![a3, b3], diff_shape.clone(), span);
        let sq = self.push_node(ctx, Op::Mul, vec![diff, diff], diff_shape.clone(), span);
        let out = diff_shape.without(diff_shape.rank() - 1);
        let s2 = self.push_node(ctx, Op::Sum { axis: Some(r) }, vec![sq], out.clone(), span);
        // √ only where positive, so that equal rows give 0 and a zero gradient, not NaN.
        let zero = self.push_node(ctx, Op::Const(0.0), vec![], Shape::scalar(), span);
        let one = self.push_node(ctx, Op::Const(1.0), vec![], Shape::scalar(), span);
        let pos = self.push_node(ctx, Op::Compare(Cmp::Gt), vec![s2, zero], out.clone(), span);
        let safe = self.push_node(ctx, Op::Where, vec![pos, s2, one], out.clone(), span);
        let root = self.push_node(ctx, Op::Sqrt, vec![safe], out.clone(), span);
        self.node(ctx, Op::Where, vec![pos, root, zero], out, span)
    }

    /// `unsqueeze(x, axis)`: a new axis of size 1 at `axis` (−1 appends one).
    pub(in crate::check) fn unsqueeze(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let Some((n, s, _)) = self.tensor(ctx, b, "x") else {
            return Value::Error;
        };
        let Some(axis) = self.whole(ctx, b, "axis") else {
            return Value::Error;
        };
        let wider = Shape(vec![Dim::known(1); s.rank() + 1]);
        let Some(at) = wider.axis(axis as i64) else {
            self.bad_axis(ctx, b, axis as i64, &wider, "the result");
            return Value::Error;
        };
        let mut dims = s.0.clone();
        dims.insert(at, Dim::known(1));
        self.node(ctx, Op::Reshape, vec![n], Shape(dims), span)
    }

    /// `squeeze(x, axis)`: removes an axis of size 1.
    pub(in crate::check) fn squeeze(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let Some((n, s, xspan)) = self.tensor(ctx, b, "x") else {
            return Value::Error;
        };
        let Some(axis) = self.axis(ctx, b, &s, 0) else {
            return Value::Error;
        };
        if !s.0[axis].is_one() {
            let d = Diagnostic::error(
                Code::BadReshape,
                b.span("axis"),
                format!(
                    "axis {axis} of {s} has size {}, not 1",
                    s.0[axis].describe()
                ),
            )
            .primary_label("only an axis of size 1 can be squeezed")
            .label(xspan, format!("this is {s}"))
            .hint("to pick one entry along the axis, index it: `x[:, 0]`");
            self.bad(ctx, b, d);
            return Value::Error;
        }
        self.node(ctx, Op::Reshape, vec![n], s.without(axis), span)
    }

    /// `reshape(x, shape)`: the same elements in another shape; one entry may be −1 (inferred).
    pub(in crate::check) fn reshape(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let Some((n, s, xspan)) = self.tensor(ctx, b, "x") else {
            return Value::Error;
        };
        let Some(items) = self.list(ctx, b, "shape") else {
            return Value::Error;
        };
        let mut dims: Vec<Option<Dim>> = Vec::new();
        for (v, vspan) in items {
            match v {
                Value::Num(x) if x == -1.0 => dims.push(None),
                Value::Num(x) if x >= 1.0 && x.fract() == 0.0 && x <= 1e9 => {
                    dims.push(Some(Dim::known(x as u64)))
                }
                Value::Dim(d, _) => dims.push(Some(d)),
                other => {
                    let d = Diagnostic::error(
                        Code::BadReshape,
                        vspan,
                        format!(
                            "a shape entry is a whole number ≥ 1, a dimension such as `rows(x)`, or −1, not {}",
                            match other {
                                Value::Num(x) => fmt_num(x),
                                o => o.kind().to_string(),
                            }
                        ),
                    )
                    .primary_label("not a size");
                    self.bad(ctx, b, d);
                    return Value::Error;
                }
            }
        }
        if dims.iter().filter(|d| d.is_none()).count() > 1 {
            let d = Diagnostic::error(
                Code::BadReshape,
                b.span("shape"),
                "at most one entry may be −1",
            )
            .primary_label("two sizes to infer");
            self.bad(ctx, b, d);
            return Value::Error;
        }
        // Symbols (the batch) must appear on both sides equally often; known sizes multiply.
        let symbols = |ds: &mut dyn Iterator<Item = &Dim>| {
            let mut v: Vec<String> = ds
                .filter(|d| d.size.is_none())
                .map(|d| d.to_string())
                .collect();
            v.sort();
            v
        };
        let known =
            |ds: &mut dyn Iterator<Item = &Dim>| -> u64 { ds.filter_map(|d| d.size).product() };
        let have_sym = symbols(&mut s.0.iter());
        let want_sym = symbols(&mut dims.iter().flatten());
        let have = known(&mut s.0.iter());
        let want = known(&mut dims.iter().flatten());
        let infer = dims.iter().any(|d| d.is_none());
        let fits = have_sym == want_sym
            && if infer {
                want > 0 && have % want == 0
            } else {
                have == want
            };
        if !fits {
            let written: Vec<String> = dims
                .iter()
                .map(|d| d.as_ref().map(|d| d.to_string()).unwrap_or("-1".into()))
                .collect();
            let d = Diagnostic::error(
                Code::BadReshape,
                span,
                format!("cannot reshape {s} to [{}]", written.join(", ")),
            )
            .primary_label("the element counts differ")
            .label(xspan, format!("this is {s}"))
            .hint("a reshape keeps every element: the product of the sizes must stay the same, and the batch `B` must stay a size of its own");
            self.bad(ctx, b, d);
            return Value::Error;
        }
        let out = Shape(
            dims.into_iter()
                .map(|d| d.unwrap_or_else(|| Dim::known(have / want)))
                .collect(),
        );
        self.node(ctx, Op::Reshape, vec![n], out, span)
    }

    /// `permute(x, axes)`: output axis i is input axis `axes[i]`.
    pub(in crate::check) fn permute(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let Some((n, s, _)) = self.tensor(ctx, b, "x") else {
            return Value::Error;
        };
        let Some(axes) = self.num_list(ctx, b, "axes") else {
            return Value::Error;
        };
        let mut perm = Vec::new();
        for (a, aspan) in &axes {
            match (a.fract() == 0.0).then(|| s.axis(*a as i64)).flatten() {
                Some(p) if !perm.contains(&p) => perm.push(p),
                _ => {
                    let d = Diagnostic::error(
                        Code::BadAxis,
                        *aspan,
                        format!(
                            "`axes` must list each axis of {s} once (0 to {}), and {} is {}",
                            s.rank().saturating_sub(1),
                            fmt_num(*a),
                            if s.axis(*a as i64).is_some() {
                                "repeated"
                            } else {
                                "not one"
                            }
                        ),
                    )
                    .primary_label("not a new axis");
                    self.bad(ctx, b, d);
                    return Value::Error;
                }
            }
        }
        if perm.len() != s.rank() {
            let d = Diagnostic::error(
                Code::BadAxis,
                b.span("axes"),
                format!(
                    "`axes` must list all {} axes of {s}, not {}",
                    s.rank(),
                    perm.len()
                ),
            )
            .primary_label("axes missing");
            self.bad(ctx, b, d);
            return Value::Error;
        }
        let out = Shape(perm.iter().map(|&p| s.0[p].clone()).collect());
        self.node(ctx, Op::Permute(perm), vec![n], out, span)
    }

    /// `stack(a, b, axis? (0))`: a new axis of size 2.
    pub(in crate::check) fn stack(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        let (Some((a, sa, spa)), Some((c, sc, spc))) =
            (self.tensor(ctx, b, "a"), self.tensor(ctx, b, "b"))
        else {
            return Value::Error;
        };
        if sa != sc {
            let d = Diagnostic::error(
                Code::ShapeMismatch,
                span,
                format!("`stack` needs tensors of one shape, not {sa} and {sc}"),
            )
            .primary_label("shapes differ")
            .label(spa, format!("this is {sa}"))
            .label(spc, format!("this is {sc}"));
            self.bad(ctx, b, d);
            return Value::Error;
        }
        let wider = Shape(vec![Dim::known(1); sa.rank() + 1]);
        let Some(axis) = self.axis(ctx, b, &wider, 0) else {
            return Value::Error;
        };
        let mut dims = sa.0.clone();
        dims.insert(axis, Dim::known(1));
        let one = Shape(dims.clone());
        let ua = self.push_node(ctx, Op::Reshape, vec![a], one.clone(), span);
        let ub = self.push_node(ctx, Op::Reshape, vec![c], one, span);
        dims[axis] = Dim::known(2);
        self.node(ctx, Op::Concat { axis }, vec![ua, ub], Shape(dims), span)
    }

    /// `x[i, a:b, :]`: positions drop their axis, ranges keep it; axes not named stay whole.
    pub(in crate::check) fn index(
        &mut self,
        ctx: &mut Ctx,
        (n, s): (NodeId, Shape),
        items: Vec<IndexItem>,
        span: Span,
    ) -> Value {
        if items.len() > s.rank() {
            let d = Diagnostic::error(
                Code::BadIndex,
                span,
                format!(
                    "{} indices for a tensor {s} of rank {}",
                    items.len(),
                    s.rank()
                ),
            )
            .primary_label("too many indices");
            self.error(ctx, d);
            return Value::Error;
        }
        let mut node = n;
        let mut dims = s.0.clone();
        let mut keep = Vec::new();
        for (axis, item) in items.iter().enumerate() {
            let dim = s.0[axis].clone();
            let (lo, hi, at, ispan) = match *item {
                IndexItem::At(i, sp) => (Some(i), None, true, sp),
                IndexItem::Range(a, b, sp) => (a, b, false, sp),
            };
            let whole = !at && lo.is_none() && hi.is_none();
            if whole {
                keep.push(dim);
                continue;
            }
            let Some(size) = dim.size else {
                let d = Diagnostic::error(
                    Code::BadIndex,
                    ispan,
                    format!(
                        "axis {axis} has the size {} known only when data arrives",
                        dim.describe()
                    ),
                )
                .primary_label("cannot index the batch")
                .hint("index an axis of known size, or keep this one whole with `:`");
                self.error(ctx, d);
                return Value::Error;
            };
            let size = size as i64;
            let resolve = |i: i64| if i < 0 { i + size } else { i };
            let (start, end) = if at {
                let i = resolve(lo.unwrap());
                (i, i + 1)
            } else {
                (
                    resolve(lo.unwrap_or(0)).clamp(0, size),
                    resolve(hi.unwrap_or(size)).clamp(0, size),
                )
            };
            if start < 0 || start >= size || end <= start {
                let d = Diagnostic::error(
                    Code::BadIndex,
                    ispan,
                    if at {
                        format!(
                            "index {} is out of range for axis {axis} of size {size}",
                            lo.unwrap()
                        )
                    } else {
                        format!("the range selects nothing from axis {axis} of size {size}")
                    },
                )
                .primary_label(format!("positions are {} to {}", -size, size - 1));
                self.error(ctx, d);
                return Value::Error;
            }
            let len = (end - start) as u64;
            if len as i64 != size {
                dims[axis] = Dim::known(len);
                node = self.push_node(
                    ctx,
                    Op::Slice {
                        axis,
                        start: start as u64,
                        len,
                    },
                    vec![node],
                    Shape(dims.clone()),
                    span,
                );
            }
            if !at {
                keep.push(dims[axis].clone());
            }
        }
        keep.extend(s.0[items.len()..].iter().cloned());
        let out = Shape(keep);
        if out.rank() != dims.len() {
            node = self.push_node(ctx, Op::Reshape, vec![node], out.clone(), span);
        }
        Value::Tensor(node, out)
    }

    /// Warns when a tensor of lower rank broadcasts against one whose other axes it could
    /// equally match (`[B, B] - [B]`): NumPy aligns the last axes, which may not be meant.
    pub(in crate::check) fn ambiguous_broadcast(
        &mut self,
        ctx: &Ctx,
        (a, aspan): (&Shape, Span),
        (b, bspan): (&Shape, Span),
    ) {
        let (long, short, sspan) = if a.rank() > b.rank() {
            (a, b, bspan)
        } else {
            (b, a, aspan)
        };
        let (k, r) = (short.rank(), long.rank());
        if k == 0 || k == r || short.0.iter().all(|d| d.is_one()) {
            return;
        }
        let window = |at: usize| &long.0[at..at + k];
        let other = (0..r - k).find(|&at| window(at) == short.0.as_slice());
        if let Some(at) = other {
            let d = Diagnostic::warning(
                Code::AmbiguousBroadcast,
                sspan,
                format!(
                    "{short} is aligned with the last {} of {long}, though it fits axis{} {} as well",
                    if k == 1 { "axis".to_string() } else { format!("{k} axes") },
                    if k == 1 { "" } else { "es" },
                    (at..at + k).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
                ),
            )
            .primary_label(format!("this is {short}, broadcast along the leading axes"))
            .hint(format!(
                "NumPy's rule aligns trailing axes; if that is meant, say so with `unsqueeze(x, axis: 0)`; to align with axis {at}, reduce with `keepdim: true` or write `unsqueeze(x, axis: -1)`"
            ));
            self.error(ctx, d);
        }
    }

    fn bad_axis(&mut self, ctx: &Ctx, b: &Bound, axis: i64, shape: &Shape, what: &str) {
        let rank = shape.rank() as i64;
        let d = Diagnostic::error(
            Code::BadAxis,
            b.span("axis"),
            format!("axis {axis} is out of range for {what}, of rank {rank}"),
        )
        .primary_label(format!("axes are {} to {}", -rank, rank - 1));
        self.bad(ctx, b, d);
    }
}
