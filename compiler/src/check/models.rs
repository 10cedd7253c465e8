//! A model's fields (`student.image`, `teacher.dim`, `student.vision`) and methods
//! (`image_layer(k)`, `text_layer(k)`, `masked(ratio)`): taps into the towers, dimensions and
//! parts.

use super::builtins::{ParamKind, ParamSig};
use super::value::Value;
use super::{kept_patches, type_error, Checker, Ctx, Env};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::ir::{self, Op};
use crate::model::{ModelSpec, Part};
use crate::shape::Shape;
use crate::source::Span;
use crate::syntax::ast;

impl Checker<'_> {
    pub(in crate::check) fn model_field(
        &mut self,
        ctx: &mut Ctx,
        id: ir::ModelId,
        mask: Option<ir::Mask>,
        field: &ast::Ident,
        span: Span,
    ) -> Value {
        let m = &self.models[id];
        let name = m.name.clone();
        let b = crate::shape::Dim::batch();
        let tokens = |m: &ModelSpec| match &mask {
            Some(k) => kept_patches(m.vision.patches(), k.ratio),
            None => m.vision.patches(),
        };
        let embed = crate::shape::Dim::named(m.embed, format!("{name}.dim"));
        let (tap, shape) = match field.name.as_str() {
            "image" => (ir::Tap::Image, Shape(vec![b, embed])),
            "text" => (ir::Tap::Text, Shape(vec![b, embed])),
            "scale" => (ir::Tap::Scale, Shape::scalar()),
            "patches" => (
                ir::Tap::Patches,
                Shape(vec![
                    b,
                    crate::shape::Dim::known(tokens(m)),
                    crate::shape::Dim::named(m.vision.width, format!("{name}.image_width")),
                ]),
            ),
            "text_mask" => (
                ir::Tap::TextMask,
                Shape(vec![b, crate::shape::Dim::known(m.text.context)]),
            ),
            "dim" => return Value::Dim(embed, None),
            "image_width" => {
                return Value::Dim(
                    crate::shape::Dim::named(m.vision.width, format!("{name}.image_width")),
                    None,
                )
            }
            "text_width" => {
                return Value::Dim(
                    crate::shape::Dim::named(m.text.width, format!("{name}.text_width")),
                    None,
                )
            }
            "vision" => return Value::Part(id, Part::Vision),
            "visual_projection" => return Value::Part(id, Part::VisionProjection),
            "text_tower" => return Value::Part(id, Part::Text),
            "text_projection" => return Value::Part(id, Part::TextProjection),
            "logit_scale" => return Value::Part(id, Part::Scale),
            _ => {
                self.unknown_field(ctx, field, "a model", MODEL_FIELDS);
                return Value::Error;
            }
        };
        let node = self.push_node(
            ctx,
            Op::Tap {
                model: id,
                tap,
                mask,
            },
            vec![],
            shape.clone(),
            span,
        );
        Value::Tensor(node, shape)
    }

    #[allow(clippy::too_many_arguments)]
    pub(in crate::check) fn method(
        &mut self,
        ctx: &mut Ctx,
        env: &Env,
        receiver: Value,
        base_span: Span,
        method: &ast::Ident,
        args: &[ast::Arg],
        span: Span,
    ) -> Value {
        let (id, mask) = match receiver {
            Value::Error => return Value::Error,
            Value::Model { id, mask } => (id, mask),
            other => {
                self.error(
                    ctx,
                    Diagnostic::error(
                        Code::UnknownField,
                        method.span,
                        format!("{} has no method `{}`", other.kind(), method.name),
                    )
                    .primary_label("no such method")
                    .label(base_span, format!("this is {}", other.kind())),
                );
                return Value::Error;
            }
        };
        let sig: &[ParamSig] = match method.name.as_str() {
            "image_layer" | "text_layer" | "image_attention" | "text_attention" | "image_query"
            | "image_key" | "image_value" | "text_query" | "text_key" | "text_value" => {
                &[ParamSig {
                    name: "k",
                    kind: ParamKind::Required,
                    default: None,
                }]
            }
            "masked" => &[
                ParamSig {
                    name: "ratio",
                    kind: ParamKind::Required,
                    default: None,
                },
                ParamSig {
                    name: "shared",
                    kind: ParamKind::Optional,
                    default: None,
                },
            ],
            _ => {
                self.unknown_field(ctx, method, "a model", MODEL_FIELDS);
                return Value::Error;
            }
        };
        let Some(bound) = self.bind_args(ctx, env, &method.name, sig, args, span) else {
            return Value::Error;
        };
        let Some((value, vspan)) = bound.values[0].clone() else {
            return Value::Error;
        };
        let Value::Num(x) = value else {
            if !value.is_error() {
                self.error(ctx, type_error(vspan, &method.name, &value, "a number"));
            }
            return Value::Error;
        };
        let m = self.models[id].clone();
        let b = crate::shape::Dim::batch();
        match method.name.as_str() {
            "masked" => {
                if mask.is_some() {
                    self.error(
                        ctx,
                        Diagnostic::error(Code::OutOfRange, span, "this model is already masked")
                            .primary_label("masked twice"),
                    );
                    return Value::Error;
                }
                if !(0.0..1.0).contains(&x) {
                    self.error(
                        ctx,
                        Diagnostic::error(
                            Code::OutOfRange,
                            vspan,
                            format!(
                                "a masking ratio must be in [0, 1), not {}",
                                crate::fmt_num(x)
                            ),
                        )
                        .primary_label("out of range")
                        .hint("CLIP-KD's MFD drops 75% of the patches: `masked(0.75)`"),
                    );
                    return Value::Error;
                }
                if kept_patches(m.vision.patches(), x) == 0 {
                    self.error(
                        ctx,
                        Diagnostic::error(
                            Code::OutOfRange,
                            vspan,
                            format!(
                                "masking {} of {} patches keeps none",
                                crate::fmt_num(x),
                                m.vision.patches()
                            ),
                        )
                        .primary_label("too high"),
                    );
                    return Value::Error;
                }
                let shared = match bound.values.get(1).cloned().flatten() {
                    None => None,
                    Some((Value::Str(name), sspan)) if !name.is_empty() => {
                        let patches = m.vision.patches();
                        match self.shared_masks.get(&name).cloned() {
                            Some((p, r, first)) if p != patches || r != x => {
                                self.error(
                                    ctx,
                                    Diagnostic::error(
                                        Code::ConflictingArguments,
                                        sspan,
                                        format!("views sharing the mask `{name}` must mask the same number of patches at the same ratio: {patches} patches at {} here, {p} at {} before", crate::fmt_num(x), crate::fmt_num(r)),
                                    )
                                    .primary_label("another patch grid or ratio")
                                    .label(first, "first used here"),
                                );
                                return Value::Error;
                            }
                            Some(_) => {}
                            None => {
                                self.shared_masks.insert(name.clone(), (patches, x, sspan));
                            }
                        }
                        Some(name)
                    }
                    Some((Value::Error, _)) => return Value::Error,
                    Some((other, sspan)) => {
                        self.error(
                            ctx,
                            type_error(sspan, "shared", &other, "a name such as \"mfd\""),
                        );
                        return Value::Error;
                    }
                };
                Value::Model {
                    id,
                    mask: Some(ir::Mask { ratio: x, shared }),
                }
            }
            _ => {
                let image = method.name.starts_with("image");
                let qkv = match method.name.rsplit('_').next() {
                    Some("query") => Some(ir::Qkv::Query),
                    Some("key") => Some(ir::Qkv::Key),
                    Some("value") => Some(ir::Qkv::Value),
                    _ => None,
                };
                let attention = method.name.ends_with("attention") || qkv.is_some();
                let layers = if image {
                    m.vision.layers
                } else {
                    m.text.layers
                };
                if attention && (x.fract() != 0.0 || x < 1.0 || x > layers as f64) {
                    self.error(
                        ctx,
                        Diagnostic::error(
                            Code::LayerOutOfRange,
                            vspan,
                            format!(
                                "`{}` has attention in blocks 1 to {layers}, not {}",
                                m.name,
                                crate::fmt_num(x)
                            ),
                        )
                        .primary_label("no such block")
                        .note("block k's attention is the softmax of its queries against its keys"),
                    );
                    return Value::Error;
                }
                if x.fract() != 0.0 || x < 0.0 || x > layers as f64 {
                    self.error(
                        ctx,
                        Diagnostic::error(Code::LayerOutOfRange, vspan, format!("`{}` has layers 0 to {layers}, not {}", m.name, crate::fmt_num(x)))
                            .primary_label("no such layer")
                            .note("layer 0 is the input to the first block; layer k is the output of block k"),
                    );
                    return Value::Error;
                }
                let k = x as u64;
                let shape = if image {
                    let tokens = match &mask {
                        Some(k) => kept_patches(m.vision.patches(), k.ratio) + 1,
                        None => m.vision.patches() + 1,
                    };
                    Shape(vec![
                        b,
                        crate::shape::Dim::known(tokens),
                        crate::shape::Dim::named(m.vision.width, format!("{}.image_width", m.name)),
                    ])
                } else {
                    Shape(vec![
                        b,
                        crate::shape::Dim::known(m.text.context),
                        crate::shape::Dim::named(m.text.width, format!("{}.text_width", m.name)),
                    ])
                };
                let shape = if qkv.is_some() {
                    shape
                } else if attention {
                    let (heads, tokens) = if image {
                        (m.vision.heads, shape.0[1].clone())
                    } else {
                        (m.text.heads, shape.0[1].clone())
                    };
                    let what = if image { "image" } else { "text" };
                    Shape(vec![
                        shape.0[0].clone(),
                        crate::shape::Dim::named(heads, format!("{}.{what}_heads", m.name)),
                        tokens.clone(),
                        tokens,
                    ])
                } else {
                    shape
                };
                let tap = match (image, attention, qkv) {
                    (_, _, Some(which)) => ir::Tap::Projection {
                        image,
                        which,
                        block: k,
                    },
                    (true, false, _) => ir::Tap::ImageLayer(k),
                    (false, false, _) => ir::Tap::TextLayer(k),
                    (true, true, _) => ir::Tap::ImageAttention(k),
                    (false, true, _) => ir::Tap::TextAttention(k),
                };
                let node = self.push_node(
                    ctx,
                    Op::Tap {
                        model: id,
                        tap,
                        mask,
                    },
                    vec![],
                    shape.clone(),
                    span,
                );
                Value::Tensor(node, shape)
            }
        }
    }
}

const MODEL_FIELDS: &[&str] = &[
    "image",
    "text",
    "scale",
    "dim",
    "patches",
    "text_mask",
    "image_width",
    "text_width",
    "vision",
    "visual_projection",
    "text_tower",
    "text_projection",
    "logit_scale",
    "image_layer",
    "text_layer",
    "image_attention",
    "text_attention",
    "image_query",
    "image_key",
    "image_value",
    "text_query",
    "text_key",
    "text_value",
    "masked",
];
