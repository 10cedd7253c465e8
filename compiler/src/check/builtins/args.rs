//! Typed access to a call's bound arguments. Each accessor returns `None` when the argument is
//! absent and has no default, and also when it is wrong, after reporting it and marking the
//! call bad (so the call yields `Value::Error`).

use super::{Bound, MAX_COUNT};
use crate::check::value::Value;
use crate::check::{Checker, Ctx};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::fmt_num;
use crate::ir::{self, NodeId, Schedule};
use crate::shape::Shape;
use crate::source::Span;

impl Checker<'_> {
    // ----------------------------------------------------------------------------------------
    // Typed access to bound arguments. Each returns `None` when the argument is absent, and
    // also when it is wrong, after reporting it and marking the call bad.
    pub(in crate::check) fn bad(&mut self, ctx: &Ctx, b: &Bound, d: Diagnostic) {
        self.error(ctx, d);
        b.bad.set(true);
    }

    pub(in crate::check) fn wrong_kind(
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

    pub(in crate::check) fn num(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<f64> {
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
    pub(in crate::check) fn ranged(
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

    pub(in crate::check) fn positive(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<f64> {
        self.ranged(ctx, b, name, 0.0, f64::INFINITY, true, true)
    }

    pub(in crate::check) fn whole(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<f64> {
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
    pub(in crate::check) fn count(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<u64> {
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
    pub(in crate::check) fn natural(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<u64> {
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

    pub(in crate::check) fn string(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<String> {
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

    pub(in crate::check) fn boolean(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<bool> {
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
    pub(in crate::check) fn choice(
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

    pub(in crate::check) fn tensor(
        &mut self,
        ctx: &mut Ctx,
        b: &Bound,
        name: &str,
    ) -> Option<(NodeId, Shape, Span)> {
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

    pub(in crate::check) fn model_arg(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        name: &str,
    ) -> Option<ir::ModelId> {
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

    pub(in crate::check) fn schedule(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        name: &str,
    ) -> Option<Schedule> {
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
    pub(in crate::check) fn width(&mut self, ctx: &Ctx, b: &Bound, name: &str) -> Option<u64> {
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

    pub(in crate::check) fn list(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        name: &str,
    ) -> Option<Vec<(Value, Span)>> {
        let (value, span) = b.get(name)?;
        match value {
            Value::List(items) => Some(items),
            other => {
                self.wrong_kind(ctx, b, name, &other, span, "a list `[…]`");
                None
            }
        }
    }

    pub(in crate::check) fn num_list(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        name: &str,
    ) -> Option<Vec<(f64, Span)>> {
        self.list_of(ctx, b, name, "a list of numbers", |v| match v {
            Value::Num(x) => Ok(x),
            other => Err(other),
        })
    }

    pub(in crate::check) fn str_list(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        name: &str,
    ) -> Option<Vec<(String, Span)>> {
        self.list_of(ctx, b, name, "a list of strings", |v| match v {
            Value::Str(x) => Ok(x),
            other => Err(other),
        })
    }

    /// A list whose every item `pick` accepts; the first item it rejects is reported.
    fn list_of<T>(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        name: &str,
        expected: &str,
        pick: impl Fn(Value) -> Result<T, Value>,
    ) -> Option<Vec<(T, Span)>> {
        let items = self.list(ctx, b, name)?;
        let mut out = Vec::new();
        for (v, s) in items {
            match pick(v) {
                Ok(x) => out.push((x, s)),
                Err(other) => {
                    self.wrong_kind(ctx, b, name, &other, s, expected);
                    return None;
                }
            }
        }
        Some(out)
    }

    /// `init`, `min` and `max` of a logit scale: all positive, `min ≤ init ≤ max`.
    pub(in crate::check) fn scale_range(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        label: &str,
    ) -> Option<(f64, f64, f64)> {
        let init = self.positive(ctx, b, "init");
        let min = self.positive(ctx, b, "min");
        let max = self.positive(ctx, b, "max");
        let (init, min, max) = (init?, min?, max?);
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
                .primary_label(label),
            );
            return None;
        }
        Some((init, min, max))
    }

    pub(in crate::check) fn axis(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        shape: &Shape,
        default: i64,
    ) -> Option<usize> {
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

    pub(in crate::check) fn triple(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        name: &str,
    ) -> Option<[f64; 3]> {
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
}
