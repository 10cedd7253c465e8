//! The training pipeline a stage binds (`train = adamw(…) | epochs(…) | …`), the recipe's
//! evaluations, and the warnings for bindings nothing uses.

use super::value::{TrainPart, Value};
use super::{type_error, BindingKey, Checker, Ctx, SPECIAL_BINDINGS};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::ir::{self, Schedule};
use crate::source::Span;
use crate::syntax::ast;
use std::collections::HashMap;

impl Checker<'_> {
    pub(in crate::check) fn train_spec(
        &mut self,
        ctx: &Ctx,
        value: Value,
        span: Span,
    ) -> Option<ir::TrainSpec> {
        let parts = match value {
            Value::Train(parts) => parts,
            Value::TrainPart(p) => vec![(p, span)],
            Value::Error => return None,
            other => {
                self.error(
                    ctx,
                    type_error(
                        span,
                        "train",
                        &other,
                        "a pipeline such as `adamw(lr: 1e-3) | epochs(10)`",
                    ),
                );
                return None;
            }
        };
        let mut seen: HashMap<&'static str, Span> = HashMap::new();
        let mut spec = ir::TrainSpec {
            optimizer: ir::AdamW {
                lr: Schedule::Constant(0.0),
                weight_decay: 0.0,
                betas: (0.9, 0.999),
                eps: 1e-8,
                no_decay: vec![],
                groups: vec![],
            },
            length: ir::Length::Steps(0),
            clip_grad: None,
            accumulate: 1,
            precision: ir::Precision::Fp32,
            seed: 0,
            checkpoint_every: None,
        };
        let mut ok = true;
        for (part, part_span) in parts {
            let setting = part.setting();
            if let Some(previous) = seen.get(setting) {
                self.error(
                    ctx,
                    Diagnostic::error(
                        Code::DuplicateTrainSetting,
                        part_span,
                        format!("the training pipeline sets its {setting} twice"),
                    )
                    .primary_label("set again here")
                    .label(*previous, "first set here"),
                );
                ok = false;
                continue;
            }
            seen.insert(setting, part_span);
            match part {
                TrainPart::Optimizer(o) => spec.optimizer = o,
                TrainPart::Epochs(n) => spec.length = ir::Length::Epochs(n),
                TrainPart::Steps(n) => spec.length = ir::Length::Steps(n),
                TrainPart::ClipGrad(v) => spec.clip_grad = Some(v),
                TrainPart::Accumulate(n) => spec.accumulate = n,
                TrainPart::Precision(p) => spec.precision = p,
                TrainPart::Seed(s) => spec.seed = s,
                TrainPart::Checkpoint(n) => spec.checkpoint_every = Some(n),
            }
        }
        for (setting, example) in [
            ("optimiser", "adamw(lr: 1e-3)"),
            ("length", "epochs(10)` or `steps(1000)"),
        ] {
            if !seen.contains_key(setting) && ok {
                self.error(
                    ctx,
                    Diagnostic::error(
                        Code::DuplicateTrainSetting,
                        span,
                        format!("the training pipeline has no {setting}"),
                    )
                    .primary_label(format!("no {setting} here"))
                    .hint(format!("add `| {example}`")),
                );
                ok = false;
            }
        }
        ok.then_some(spec)
    }

    pub(in crate::check) fn eval_specs(&mut self) -> Vec<ir::EvalSpec> {
        let mut ctx = Ctx::default();
        let Some(binding) = self.program.root().binding("eval") else {
            return Vec::new();
        };
        self.used.insert((0, "eval".into()));
        let value = self.eval_binding(
            &mut ctx,
            BindingKey {
                stage_scope: None,
                module: 0,
                name: "eval".into(),
            },
            binding.name.span,
        );
        let items = match value {
            Value::List(items) => items,
            Value::Error => Vec::new(),
            other => vec![(other, binding.value.span)],
        };
        let mut out = Vec::new();
        for (item, span) in items {
            match item {
                Value::Eval(e) => out.push(e),
                Value::Error => {}
                other => self.error(
                    &ctx,
                    type_error(span, "eval", &other, "`zero_shot(…)` or `retrieval(…)`"),
                ),
            }
        }
        out
    }

    pub(in crate::check) fn warn_unused(&mut self) {
        let root = self.program.root();
        let mut unused: Vec<&ast::Binding> = root
            .bindings
            .keys()
            .filter(|name| {
                !SPECIAL_BINDINGS.contains(&name.as_str())
                    && !self.used.contains(&(0, (*name).clone()))
            })
            .filter_map(|name| root.binding(name))
            .collect();
        unused.sort_by_key(|b| b.span.start);
        for b in unused {
            self.diags.push(
                Diagnostic::warning(
                    Code::UnusedBinding,
                    b.name.span,
                    format!("`{}` is never used", b.name.name),
                )
                .primary_label("defined here, used nowhere")
                .hint("remove it, or use it in the loss, data, training or evaluation"),
            );
        }
    }
}
