//! Training settings (`adamw`, `epochs`, `steps`, `clip_grad`, `accumulate`, `precision`,
//! `seed`, `checkpoint`) and schedules (`cosine`, `ramp`, `step`).

use super::Bound;
use crate::check::value::{TrainPart, Value};
use crate::check::{Checker, Ctx};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::fmt_num;
use crate::ir::{self, Duration, Schedule};
use crate::model::ParamClass;
use crate::source::Span;

impl Checker<'_> {
    pub(in crate::check) fn adamw(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
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
        let wd = self.ranged(ctx, b, "weight_decay", 0.0, f64::INFINITY, false, true);
        let betas = match self.num_list(ctx, b, "betas") {
            Some(list) if list.len() == 2 && list.iter().all(|(v, _)| (0.0..1.0).contains(v)) => {
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
        };
        let eps = self.positive(ctx, b, "eps");
        let no_decay = self.param_classes(ctx, b);
        let mut groups = Some(Vec::new());
        if b.has("groups") {
            let (value, span) = b.get("groups").unwrap();
            let items = match value {
                Value::List(items) => items,
                other => vec![(other, span)],
            };
            for (item, ispan) in items {
                match item {
                    Value::Group(g) => {
                        if let Some(gs) = groups.as_mut() {
                            gs.push(g)
                        }
                    }
                    Value::Error => groups = None,
                    other => {
                        self.wrong_kind(ctx, b, "groups", &other, ispan, "a list of `group(…)`");
                        groups = None;
                    }
                }
            }
        }
        match (lr, wd, betas, eps, no_decay, groups) {
            (
                Some(lr),
                Some(weight_decay),
                Some(betas),
                Some(eps),
                Some(no_decay),
                Some(groups),
            ) => Value::TrainPart(TrainPart::Optimizer(ir::AdamW {
                lr,
                weight_decay,
                betas,
                eps,
                no_decay,
                groups,
            })),
            _ => Value::Error,
        }
    }

    /// `group(params, lr_scale? (1), weight_decay?)`.
    pub(in crate::check) fn param_group(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let (value, span) = b.get("params").unwrap();
        let patterns = self.param_patterns(ctx, value, span);
        let lr_scale = self.ranged(ctx, b, "lr_scale", 0.0, f64::INFINITY, false, true);
        let weight_decay = if b.has("weight_decay") {
            self.ranged(ctx, b, "weight_decay", 0.0, f64::INFINITY, false, true)
                .map(Some)
        } else {
            Some(None)
        };
        match (patterns, lr_scale, weight_decay) {
            (Some(patterns), Some(lr_scale), Some(weight_decay)) => Value::Group(ir::ParamGroup {
                patterns,
                lr_scale,
                weight_decay,
                names: Vec::new(),
            }),
            _ => Value::Error,
        }
    }

    /// Parameter-name patterns for a model (`student/*`), a part (its parameters' names), a
    /// string (`{a..b}` ranges expanded), or a list of these.
    pub(in crate::check) fn param_patterns(
        &mut self,
        ctx: &Ctx,
        value: Value,
        span: Span,
    ) -> Option<Vec<String>> {
        match value {
            Value::Model { id, .. } => Some(vec![format!("{}/*", self.models[id].name)]),
            Value::Part(id, part) => {
                let m = &self.models[id];
                Some(
                    m.parameters()
                        .into_iter()
                        .filter(|p| p.part == part)
                        .map(|p| format!("{}/{}", m.name, p.name))
                        .collect(),
                )
            }
            Value::Str(s) => match crate::data::webdataset::expand(&s) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.error(
                        ctx,
                        Diagnostic::error(
                            Code::NoSuchParameter,
                            span,
                            format!("the pattern `{s}` is malformed: {e}"),
                        )
                        .primary_label(format!("at `{}`", e.part)),
                    );
                    None
                }
            },
            Value::List(items) => {
                let mut out = Some(Vec::new());
                for (item, ispan) in items {
                    match self.param_patterns(ctx, item, ispan) {
                        Some(p) => {
                            if let Some(o) = out.as_mut() {
                                o.extend(p)
                            }
                        }
                        None => out = None,
                    }
                }
                out
            }
            Value::Error => None,
            other => {
                self.error(
                    ctx,
                    crate::check::type_error(
                        span,
                        "params",
                        &other,
                        "a model, a part such as `student.text_tower`, or a name pattern such as \"student/vision_model.encoder.layers.{0..5}.*\"",
                    ),
                );
                None
            }
        }
    }

    pub(in crate::check) fn epochs(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        self.count(ctx, b, "count")
            .map(|n| Value::TrainPart(TrainPart::Epochs(n)))
            .unwrap_or(Value::Error)
    }

    pub(in crate::check) fn steps(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        self.count(ctx, b, "count")
            .map(|n| Value::TrainPart(TrainPart::Steps(n)))
            .unwrap_or(Value::Error)
    }

    pub(in crate::check) fn clip_grad(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        self.positive(ctx, b, "norm")
            .map(|n| Value::TrainPart(TrainPart::ClipGrad(n)))
            .unwrap_or(Value::Error)
    }

    pub(in crate::check) fn accumulate(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        self.count(ctx, b, "count")
            .map(|n| Value::TrainPart(TrainPart::Accumulate(n)))
            .unwrap_or(Value::Error)
    }

    pub(in crate::check) fn precision(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let names = ir::Precision::ALL.map(ir::Precision::name);
        self.choice(ctx, b, "format", &names)
            .and_then(|p| ir::Precision::ALL.into_iter().find(|x| x.name() == p))
            .map(|p| Value::TrainPart(TrainPart::Precision(p)))
            .unwrap_or(Value::Error)
    }

    pub(in crate::check) fn seed(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        self.natural(ctx, b, "value")
            .map(|n| Value::TrainPart(TrainPart::Seed(n)))
            .unwrap_or(Value::Error)
    }

    pub(in crate::check) fn checkpoint(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        self.count(ctx, b, "every")
            .map(|n| Value::TrainPart(TrainPart::Checkpoint(n)))
            .unwrap_or(Value::Error)
    }

    /// A span of training: a whole number of steps (≥ `least`), `epochs(n)`, or
    /// `fraction(x)` of the stage.
    pub(in crate::check) fn duration(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        name: &str,
        least: u64,
    ) -> Option<Duration> {
        let (value, span) = b.get(name)?;
        match value {
            Value::TrainPart(TrainPart::Epochs(n)) => Some(Duration::Epochs(n)),
            Value::Duration(d) => Some(d),
            Value::Num(_) | Value::Dim(..) => {
                let n = if least == 0 {
                    self.natural(ctx, b, name)?
                } else {
                    self.count(ctx, b, name)?
                };
                Some(Duration::Steps(n))
            }
            other => {
                self.wrong_kind(
                    ctx,
                    b,
                    name,
                    &other,
                    span,
                    "a number of steps, `epochs(n)` or `fraction(x)` of the stage",
                );
                None
            }
        }
    }

    /// `fraction(x)`: a part of the stage, 0 ≤ x ≤ 1, for schedules.
    pub(in crate::check) fn fraction(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        self.ranged(ctx, b, "x", 0.0, 1.0, false, false)
            .map(|x| Value::Duration(Duration::Fraction(x)))
            .unwrap_or(Value::Error)
    }

    pub(in crate::check) fn cosine(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let peak = self.num(ctx, b, "peak");
        let warmup = self.duration(ctx, b, "warmup", 0);
        let end = self.num(ctx, b, "end");
        let steps = if b.has("steps") {
            self.duration(ctx, b, "steps", 1).map(Some)
        } else {
            Some(None)
        };
        let (Some(peak), Some(warmup), Some(end), Some(steps)) = (peak, warmup, end, steps) else {
            return Value::Error;
        };
        // Comparable at compile time when both are steps, or both fractions, or both epochs.
        let comparable = match (warmup, steps) {
            (Duration::Steps(w), Some(Duration::Steps(s))) => Some((w as f64, s as f64)),
            (Duration::Epochs(w), Some(Duration::Epochs(s))) => Some((w as f64, s as f64)),
            (Duration::Fraction(w), Some(Duration::Fraction(s))) => Some((w, s)),
            (Duration::Fraction(w), None) => Some((w, 1.0)),
            _ => None,
        };
        let (warmup_d, steps_d) = (warmup, steps);
        let written = |d: Duration| match d {
            Duration::Steps(n) => format!("{n} steps"),
            other => other.to_string(),
        };
        if let Some((warmup, steps)) = comparable {
            if warmup >= steps {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::BadSchedule,
                        b.span("warmup"),
                        format!(
                            "a warm-up of {} does not fit in a schedule of {}",
                            written(warmup_d),
                            steps_d.map_or("the whole stage".to_string(), written)
                        ),
                    )
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

    pub(in crate::check) fn ramp(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let from = self.num(ctx, b, "from");
        let to = self.num(ctx, b, "to");
        let steps = self.duration(ctx, b, "steps", 1);
        let start = self.duration(ctx, b, "start", 0);
        match (from, to, steps, start) {
            (Some(from), Some(to), Some(steps), Some(start)) => Value::Schedule(Schedule::Ramp {
                from,
                to,
                start,
                steps,
            }),
            _ => Value::Error,
        }
    }

    pub(in crate::check) fn step(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let values = self.num_list(ctx, b, "values");
        let at = self.list(ctx, b, "at");
        let (Some(values), Some(at)) = (values, at) else {
            return Value::Error;
        };
        if values.len() != at.len() + 1 {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::BadSchedule,
                    b.span("values"),
                    format!(
                        "`step` needs one more value than boundaries: {} values, {} boundaries",
                        values.len(),
                        at.len()
                    ),
                )
                .primary_label("values")
                .label(b.span("at"), "boundaries"),
            );
            return Value::Error;
        }
        let mut bounds: Vec<Duration> = Vec::new();
        for (x, s) in &at {
            let d = match x {
                Value::Num(v) if v.fract() == 0.0 && *v >= 0.0 => Duration::Steps(*v as u64),
                Value::TrainPart(TrainPart::Epochs(n)) => Duration::Epochs(*n),
                Value::Duration(d) => *d,
                Value::Error => return Value::Error,
                _ => {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::BadSchedule,
                            *s,
                            "a step boundary is a whole step number, `epochs(n)` or `fraction(x)`",
                        )
                        .primary_label("not a boundary"),
                    );
                    return Value::Error;
                }
            };
            // Boundaries of one kind must increase (kinds compare only when training starts).
            let previous = bounds.last().copied();
            let increasing = match (previous, d) {
                (Some(Duration::Steps(a)), Duration::Steps(c)) => c > a,
                (Some(Duration::Epochs(a)), Duration::Epochs(c)) => c > a,
                (Some(Duration::Fraction(a)), Duration::Fraction(c)) => c > a,
                _ => true,
            };
            if !increasing {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(Code::BadSchedule, *s, "step boundaries must increase")
                        .primary_label("out of order"),
                );
                return Value::Error;
            }
            bounds.push(d);
        }
        Value::Schedule(Schedule::Step {
            values: values.into_iter().map(|(v, _)| v).collect(),
            at: bounds,
        })
    }

    pub(in crate::check) fn param_classes(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
    ) -> Option<Vec<ParamClass>> {
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
}

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
