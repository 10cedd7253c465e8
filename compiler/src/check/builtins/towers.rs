//! The parts a model is built from: towers (`vit`, `transformer`, `bert`), logit-scale
//! settings (`learnable`, `fixed`), tokenizers (`clip_bpe`, `tokenizer`) and preprocessing
//! (`image_pre`).

use super::Bound;
use crate::check::value::Value;
use crate::check::{Checker, Ctx};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::model::{
    self, Activation, LogitScaleSpec, PreprocessSpec, TextKind, TextSpec, TokenizerKind,
    TokenizerSpec, VisionSpec,
};
use crate::source::Span;

impl Checker<'_> {
    pub(in crate::check) fn vit(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let Some((size, patch, width, layers, heads, mlp, frozen)) =
            self.tower_sizes(ctx, b, ["size", "patch"])
        else {
            return Value::Error;
        };
        if size % patch != 0 {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::PatchDoesNotDivide,
                    b.span("patch"),
                    format!("a patch of {patch} does not divide an image of {size}"),
                )
                .primary_label(format!("{size} / {patch} is not whole"))
                .label(b.span("size"), "image size"),
            );
        }
        Value::Vision(VisionSpec {
            image_size: size,
            patch,
            width,
            layers,
            heads,
            mlp,
            act: Activation::Gelu,
            frozen,
        })
    }

    pub(in crate::check) fn transformer(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let Some((context, vocab, width, layers, heads, mlp, frozen)) =
            self.tower_sizes(ctx, b, ["context", "vocab"])
        else {
            return Value::Error;
        };
        Value::Text(TextSpec {
            kind: TextKind::Clip,
            context,
            vocab,
            width,
            layers,
            heads,
            mlp,
            act: Activation::Gelu,
            frozen,
            preset: None,
            weights: None,
        })
    }

    pub(in crate::check) fn bert(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        self.bert_tower(ctx, b)
    }

    pub(in crate::check) fn bert_tower(&mut self, ctx: &Ctx, b: &Bound) -> Value {
        let frozen = self.boolean(ctx, b, "frozen").unwrap_or(false);
        let weights = if b.has("weights") {
            self.string(ctx, b, "weights")
        } else {
            None
        };
        let mut dims = None;
        let preset = if b.has("preset") {
            self.string(ctx, b, "preset")
        } else {
            None
        };
        let mut kind = TextKind::Bert;
        if let Some(p) = &preset {
            match model::bert_preset(p) {
                Some(bp) => {
                    dims = Some(bp.dims);
                    kind = bp.kind;
                }
                None => {
                    let names: Vec<&str> = model::BERT_PRESETS.iter().map(|p| p.name).collect();
                    let mut d = Diagnostic::error(
                        Code::UnknownPreset,
                        b.span("preset"),
                        format!("there is no text encoder preset \"{p}\""),
                    )
                    .primary_label("unknown preset")
                    .note(format!("text encoder presets: {}", names.join(", ")));
                    if let Some(s) = crate::suggest::closest(p, names.iter().copied()) {
                        d = d.hint(format!("did you mean \"{s}\"?"));
                    }
                    self.bad(ctx, b, d);
                    return Value::Error;
                }
            }
        }
        let explicit: Vec<&str> = [
            "context", "vocab", "width", "layers", "heads", "mlp", "family",
        ]
        .into_iter()
        .filter(|n| b.has(n))
        .collect();
        if b.has("family") && dims.is_none() {
            match self.choice(ctx, b, "family", &["bert", "roberta"]) {
                Some("roberta") => kind = TextKind::Roberta,
                Some(_) => {}
                None => return Value::Error,
            }
        }
        let (context, vocab, width, layers, heads, mlp) = match dims {
            Some(d) if explicit.is_empty() => d,
            Some(_) => {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(Code::ConflictingArguments, b.span(explicit[0]), "a preset fixes the architecture; it cannot be combined with explicit sizes")
                        .primary_label("explicit size")
                        .label(b.span("preset"), "preset"),
                );
                return Value::Error;
            }
            None => {
                let missing: Vec<&str> = ["context", "vocab", "width", "layers", "heads"]
                    .into_iter()
                    .filter(|n| !b.has(n))
                    .collect();
                if !missing.is_empty() {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::MissingArgument,
                            b.call_span,
                            format!(
                                "`bert` needs a `preset` or all of its sizes; missing {}",
                                missing.join(", ")
                            ),
                        )
                        .primary_label("incomplete text encoder"),
                    );
                    return Value::Error;
                }
                let (c, v, w, l, h) = (
                    self.count(ctx, b, "context"),
                    self.count(ctx, b, "vocab"),
                    self.count(ctx, b, "width"),
                    self.count(ctx, b, "layers"),
                    self.count(ctx, b, "heads"),
                );
                let m = if b.has("mlp") {
                    self.count(ctx, b, "mlp")
                } else {
                    w.map(|w| 4 * w)
                };
                let (Some(c), Some(v), Some(w), Some(l), Some(h), Some(m)) = (c, v, w, l, h, m)
                else {
                    return Value::Error;
                };
                self.heads_divide(ctx, b, w, h);
                (c, v, w, l, h, m)
            }
        };
        if kind == TextKind::Roberta && context <= 2 {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::OutOfRange,
                    b.span("context"),
                    "a RoBERTa-family encoder's `context` is its position table, two more than the longest text; it must be at least 3",
                )
                .primary_label("too short"),
            );
            return Value::Error;
        }
        Value::Text(TextSpec {
            kind,
            context,
            vocab,
            width,
            layers,
            heads,
            mlp,
            act: Activation::Gelu,
            frozen,
            preset,
            weights,
        })
    }

    /// The sizes every transformer tower has: two of its own (`size`, `patch` or `context`,
    /// `vocab`), then width, layers, heads, MLP width (4 × width unless given) and `frozen`.
    #[allow(clippy::type_complexity)]
    pub(in crate::check) fn tower_sizes(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        first: [&str; 2],
    ) -> Option<(u64, u64, u64, u64, u64, u64, bool)> {
        let (a, c) = (self.count(ctx, b, first[0]), self.count(ctx, b, first[1]));
        let (width, layers, heads) = (
            self.count(ctx, b, "width"),
            self.count(ctx, b, "layers"),
            self.count(ctx, b, "heads"),
        );
        let mlp = if b.has("mlp") {
            self.count(ctx, b, "mlp")
        } else {
            width.map(|w| 4 * w)
        };
        let frozen = self.boolean(ctx, b, "frozen").unwrap_or(false);
        let (a, c, width, layers, heads, mlp) = (a?, c?, width?, layers?, heads?, mlp?);
        self.heads_divide(ctx, b, width, heads);
        Some((a, c, width, layers, heads, mlp, frozen))
    }

    pub(in crate::check) fn heads_divide(&mut self, ctx: &Ctx, b: &Bound, width: u64, heads: u64) {
        if width % heads != 0 {
            let divisors: Vec<String> = (1..=width.min(64))
                .filter(|h| width % h == 0)
                .map(|h| h.to_string())
                .collect();
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::HeadsDoNotDivide,
                    b.span("heads"),
                    format!("{heads} heads do not divide a width of {width}"),
                )
                .primary_label(format!("{width} / {heads} is not whole"))
                .label(b.span("width"), "width")
                .hint(format!(
                    "heads that divide {width}: {}",
                    divisors.join(", ")
                )),
            );
        }
    }

    pub(in crate::check) fn learnable(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let Some((init, min, max)) = self.scale_range(ctx, b, "outside the clamp range") else {
            return Value::Error;
        };
        Value::ScaleOption(LogitScaleSpec {
            init,
            min,
            max,
            learnable: true,
        })
    }

    pub(in crate::check) fn fixed(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        match self.positive(ctx, b, "value") {
            Some(v) => Value::ScaleOption(LogitScaleSpec {
                init: v,
                min: v,
                max: v,
                learnable: false,
            }),
            None => Value::Error,
        }
    }

    pub(in crate::check) fn clip_bpe(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let context = self.count(ctx, b, "context");
        let path = self.string(ctx, b, "vocab");
        match context {
            Some(context) => Value::Tokenizer(TokenizerSpec {
                kind: TokenizerKind::ClipBpe,
                path,
                context,
            }),
            None => Value::Error,
        }
    }

    pub(in crate::check) fn tokenizer(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let path = self.string(ctx, b, "file");
        let context = self.count(ctx, b, "context");
        match (path, context) {
            (Some(path), Some(context)) => Value::Tokenizer(TokenizerSpec {
                kind: TokenizerKind::File,
                path: Some(path),
                context,
            }),
            _ => Value::Error,
        }
    }

    pub(in crate::check) fn image_pre(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let resize = self.count(ctx, b, "resize");
        let crop = if b.has("crop") {
            self.count(ctx, b, "crop")
        } else {
            resize
        };
        let mean = self.triple(ctx, b, "mean");
        let std = self.triple(ctx, b, "std");
        if let Some(std) = std {
            if std.iter().any(|s| *s <= 0.0) {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::OutOfRange,
                        b.span("std"),
                        "standard deviations must be positive",
                    )
                    .primary_label("zero or negative"),
                );
            }
        }
        if let (Some(r), Some(c)) = (resize, crop) {
            if c > r {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::OutOfRange,
                        b.span("crop"),
                        format!("cannot crop {c} pixels out of an image resized to {r}"),
                    )
                    .primary_label("larger than `resize`"),
                );
            }
        }
        match (resize, crop, mean, std) {
            (Some(resize), Some(crop), Some(mean), Some(std)) => {
                Value::Preprocess(PreprocessSpec {
                    resize,
                    crop,
                    mean,
                    std,
                })
            }
            _ => Value::Error,
        }
    }
}
