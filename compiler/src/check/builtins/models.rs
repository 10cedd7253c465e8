//! `clip(…)`: a model from a preset or from towers, with its weights, logit scale, tokenizer
//! and preprocessing, and the frozen-needs-weights rule.

use super::Bound;
use crate::check::value::Value;
use crate::check::{Checker, Ctx};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::fmt_num;
use crate::model::{
    self, Activation, LogitScaleSpec, ModelSpec, PreprocessSpec, TextKind, TokenizerKind,
    TokenizerSpec,
};
use crate::source::Span;

impl Checker<'_> {
    pub(in crate::check) fn clip(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        if let Some(&id) = self.model_sites.get(&span) {
            return Value::Model { id, mask: None };
        }
        let act = if b.has("act") {
            match self.choice(ctx, b, "act", &["quick_gelu", "gelu"]) {
                Some("quick_gelu") => Some(Activation::QuickGelu),
                Some(_) => Some(Activation::Gelu),
                None => return Value::Error,
            }
        } else {
            None
        };
        let preset_name = if b.has("preset") {
            self.string(ctx, b, "preset")
        } else {
            None
        };
        let towers = ["image", "text", "embed"];
        let (mut vision, mut text, embed) = if let Some(name) = &preset_name {
            if let Some(conflict) = towers.iter().find(|t| b.has(t)) {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::ConflictingArguments,
                        b.span(conflict),
                        format!("`{conflict}` cannot be combined with a preset"),
                    )
                    .primary_label("explicit part")
                    .label(b.span("preset"), "the preset already fixes it")
                    .hint("use either `preset:` or `image:`, `text:` and `embed:`"),
                );
                return Value::Error;
            }
            let Some(p) = model::preset(name) else {
                let names: Vec<&str> = model::PRESETS.iter().map(|p| p.name).collect();
                let mut d = Diagnostic::error(
                    Code::UnknownPreset,
                    b.span("preset"),
                    format!("there is no preset \"{name}\""),
                )
                .primary_label("unknown preset")
                .note(format!("presets: {}", names.join(", ")));
                if let Some(s) = crate::suggest::closest(name, names.iter().copied()) {
                    d = d.hint(format!("did you mean \"{s}\"?"));
                }
                self.bad(ctx, b, d);
                return Value::Error;
            };
            let (vision, text) = (p.vision(), p.text());
            if act.is_some_and(|a| a != p.act) {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::ConflictingArguments,
                        b.span("act"),
                        format!("preset \"{name}\" uses {}", p.act.name()),
                    )
                    .primary_label("a different activation")
                    .hint({
                        let base = name.trim_end_matches("-quickgelu");
                        let other = if name.ends_with("-quickgelu") { base.to_string() } else { format!("{base}-quickgelu") };
                        if model::preset(&other).is_some() {
                            format!("use the preset \"{other}\" instead")
                        } else {
                            format!("preset \"{name}\" exists only with {}; describe the towers explicitly for another activation", p.act.name())
                        }
                    }),
                );
                return Value::Error;
            }
            (vision, text, p.embed)
        } else {
            let missing: Vec<&str> = towers.iter().copied().filter(|t| !b.has(t)).collect();
            if !missing.is_empty() {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(Code::MissingArgument, b.call_span, format!("a model needs a `preset` or its towers; missing {}", missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")))
                        .primary_label("incomplete model")
                        .hint("write `clip(preset: \"ViT-B-16\")` or `clip(image: vit(…), text: transformer(…), embed: 512)`"),
                );
                return Value::Error;
            }
            let vision = match b.get("image").unwrap() {
                (Value::Vision(v), _) => Some(v),
                (other, s) => {
                    self.wrong_kind(ctx, b, "image", &other, s, "an image tower `vit(…)`");
                    None
                }
            };
            let text = match b.get("text").unwrap() {
                (Value::Text(t), _) => Some(t),
                (other, s) => {
                    self.wrong_kind(
                        ctx,
                        b,
                        "text",
                        &other,
                        s,
                        "a text tower `transformer(…)` or `bert(…)`",
                    );
                    None
                }
            };
            let embed = self.width(ctx, b, "embed");
            let (Some(mut vision), Some(mut text), Some(embed)) = (vision, text, embed) else {
                return Value::Error;
            };
            let act = act.unwrap_or(Activation::Gelu);
            vision.act = act;
            if text.kind == TextKind::Clip {
                text.act = act;
            }
            (vision, text, embed)
        };
        let weights = if b.has("weights") {
            self.string(ctx, b, "weights")
        } else {
            None
        };
        let frozen = self.boolean(ctx, b, "frozen").unwrap_or(false);
        if frozen {
            vision.frozen = true;
            text.frozen = true;
        }
        let logit_scale = match b.get("logit_scale") {
            None => LogitScaleSpec::default(),
            Some((Value::ScaleOption(s), _)) => s,
            Some((Value::Num(v), _)) if (1.0..=100.0).contains(&v) => LogitScaleSpec {
                init: v,
                ..LogitScaleSpec::default()
            },
            Some((Value::Num(v), span)) => {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(Code::OutOfRange, span, format!("an initial logit scale of {} is outside the default clamp [1, 100]", fmt_num(v)))
                        .primary_label("out of range")
                        .hint("write `learnable(init: …, min: …, max: …)` for another range, or `fixed(…)`"),
                );
                return Value::Error;
            }
            Some((other, s)) => {
                self.wrong_kind(
                    ctx,
                    b,
                    "logit_scale",
                    &other,
                    s,
                    "`learnable(init: …)` or `fixed(…)`",
                );
                return Value::Error;
            }
        };
        let tokenizer = match b.get("tokenizer") {
            None => match text.kind {
                TextKind::Clip => TokenizerSpec {
                    kind: TokenizerKind::ClipBpe,
                    path: None,
                    context: text.context,
                },
                TextKind::Bert | TextKind::Roberta => TokenizerSpec {
                    kind: TokenizerKind::File,
                    path: None,
                    context: (text.context - text.kind.position_offset()).min(128),
                },
            },
            Some((Value::Tokenizer(t), s)) => {
                let positions = text.context - text.kind.position_offset();
                if t.context > positions {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::OutOfRange,
                            s,
                            format!(
                                "the tokenizer makes {} tokens but the text tower has {} positions",
                                t.context, positions
                            ),
                        )
                        .primary_label("context too long"),
                    );
                }
                t
            }
            Some((other, s)) => {
                self.wrong_kind(
                    ctx,
                    b,
                    "tokenizer",
                    &other,
                    s,
                    "`clip_bpe(…)` or `tokenizer(…)`",
                );
                return Value::Error;
            }
        };
        let preprocess = match b.get("preprocess") {
            None => PreprocessSpec {
                resize: vision.image_size,
                crop: vision.image_size,
                mean: model::CLIP_MEAN,
                std: model::CLIP_STD,
            },
            Some((Value::Preprocess(p), s)) => {
                if p.crop != vision.image_size {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::ShapeMismatch,
                            s,
                            format!(
                                "preprocessing crops {} pixels but the image tower takes {}",
                                p.crop, vision.image_size
                            ),
                        )
                        .primary_label("crop size differs from the tower's image size"),
                    );
                }
                p
            }
            Some((other, s)) => {
                self.wrong_kind(ctx, b, "preprocess", &other, s, "`image_pre(…)`");
                return Value::Error;
            }
        };
        // A frozen part must come with weights from somewhere.
        let text_has_weights = weights.is_some() || text.weights.is_some();
        let vision_has_weights = weights.is_some();
        let frozen_without = if vision.frozen && !vision_has_weights {
            Some("the image tower")
        } else if text.frozen && !text_has_weights {
            Some("the text tower")
        } else {
            None
        };
        if let Some(part) = frozen_without {
            let which = if frozen {
                "this frozen model".to_string()
            } else {
                format!("{part}, which is frozen,")
            };
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::FrozenWithoutWeights,
                    span,
                    format!("{which} has no weights"),
                )
                .primary_label("frozen, but nothing to load")
                .hint(
                    "add `weights: \"path/to/model.safetensors\"`, or remove `frozen` to train it",
                ),
            );
            return Value::Error;
        }
        if b.bad.get() {
            return Value::Error;
        }
        let spec = ModelSpec {
            name: String::new(),
            preset: preset_name,
            vision,
            text,
            embed,
            weights,
            frozen,
            logit_scale,
            tokenizer,
            preprocess,
            ema: None,
        };
        self.models.push(spec);
        let id = self.models.len() - 1;
        self.model_sites.insert(span, id);
        Value::Model { id, mask: None }
    }

    /// `ema(model, decay)`: a frozen model whose parameters follow the exponential moving
    /// average of `model`'s after every optimiser step (a self-distillation teacher).
    pub(in crate::check) fn ema(&mut self, ctx: &mut Ctx, b: &Bound, span: Span) -> Value {
        if let Some(&id) = self.model_sites.get(&span) {
            return Value::Model { id, mask: None };
        }
        let (value, vspan) = b.get("model").unwrap();
        let source = match value {
            Value::Model { id, mask: None } => id,
            Value::Model { .. } => {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(Code::TypeMismatch, vspan, "an EMA follows a model, not a masked view")
                        .primary_label("masked")
                        .hint("average the model itself: `ema(student, decay: 0.999)`, and mask the average if needed"),
                );
                return Value::Error;
            }
            Value::Error => return Value::Error,
            other => {
                self.wrong_kind(ctx, b, "model", &other, vspan, "a model");
                return Value::Error;
            }
        };
        if self.models[source].ema.is_some() {
            self.bad(
                ctx,
                b,
                Diagnostic::error(Code::TypeMismatch, vspan, "this model is itself an EMA")
                    .primary_label("an average of an average")
                    .hint("average the trained model directly"),
            );
            return Value::Error;
        }
        let Some(decay) = self.ranged(ctx, b, "decay", 0.0, 1.0, false, true) else {
            return Value::Error;
        };
        let mut spec = self.models[source].clone();
        spec.name = String::new();
        spec.frozen = true;
        spec.ema = Some(model::EmaSpec { source, decay });
        self.models.push(spec);
        let id = self.models.len() - 1;
        self.model_sites.insert(span, id);
        Value::Model { id, mask: None }
    }
}
