//! CLIP model descriptions: towers, presets and the parameter list of each model, named exactly
//! as Hugging Face's `CLIPModel` names them (open_clip's names map onto these), so that real
//! checkpoints load without renaming.

use serde::Serialize;

/// The activation inside transformer MLPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Activation {
    /// x · sigmoid(1.702 x), OpenAI CLIP's approximation.
    QuickGelu,
    /// The exact (erf) GELU.
    Gelu,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::QuickGelu => "quick_gelu",
            Activation::Gelu => "gelu",
        }
    }
}

/// A ViT image tower: patch embedding, class token, positions, pre-LN blocks, post-LN.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VisionSpec {
    pub image_size: u64,
    pub patch: u64,
    pub width: u64,
    pub layers: u64,
    pub heads: u64,
    pub mlp: u64,
    pub act: Activation,
    pub frozen: bool,
}

impl VisionSpec {
    /// Patches per image: (image / patch)².
    pub fn patches(&self) -> u64 {
        (self.image_size / self.patch).pow(2)
    }
}

/// A text tower: CLIP's causal transformer or a BERT-family encoder (MiniLM, XLM-R).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TextSpec {
    pub kind: TextKind,
    pub context: u64,
    pub vocab: u64,
    pub width: u64,
    pub layers: u64,
    pub heads: u64,
    pub mlp: u64,
    pub act: Activation,
    pub frozen: bool,
    /// A BERT-family tower's preset name and weights, when it comes pretrained on its own.
    pub preset: Option<String>,
    pub weights: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TextKind {
    /// CLIP's text transformer: causal mask, pooled at the end-of-text token.
    Clip,
    /// A bidirectional BERT-family encoder, mean-pooled over non-padding tokens.
    Bert,
    /// XLM-RoBERTa's encoder: BERT's layers, but positions counted from 2 (the padding index
    /// plus one), one token type, LayerNorm ε 1e-5. `context` is its position table's length
    /// (514 for xlm-roberta-base), two more than the longest text it reads.
    Roberta,
}

impl TextKind {
    /// A bidirectional encoder with BERT's layers (mean-pooled, attention mask).
    pub fn is_encoder(self) -> bool {
        matches!(self, TextKind::Bert | TextKind::Roberta)
    }

    /// The first position id a text's tokens take.
    pub fn position_offset(self) -> u64 {
        match self {
            TextKind::Roberta => 2,
            TextKind::Clip | TextKind::Bert => 0,
        }
    }
}

/// How the model's own logit scale σ = exp(t) is held.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogitScaleSpec {
    /// Initial σ (not t).
    pub init: f64,
    /// σ is clamped to [min, max] after every step.
    pub min: f64,
    pub max: f64,
    pub learnable: bool,
}

impl Default for LogitScaleSpec {
    fn default() -> LogitScaleSpec {
        LogitScaleSpec {
            init: 1.0 / 0.07,
            min: 1.0,
            max: 100.0,
            learnable: true,
        }
    }
}

/// How a model turns captions into token ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TokenizerKind {
    /// open_clip's byte-level BPE.
    ClipBpe,
    /// A Hugging Face `tokenizer.json`.
    File,
}

impl std::fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenizerKind::ClipBpe => "clip_bpe",
            TokenizerKind::File => "file",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenizerSpec {
    pub kind: TokenizerKind,
    pub path: Option<String>,
    pub context: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PreprocessSpec {
    pub resize: u64,
    pub crop: u64,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// OpenAI CLIP's image normalisation.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelSpec {
    /// The binding that holds it (`teacher`, `student`).
    pub name: String,
    pub preset: Option<String>,
    pub vision: VisionSpec,
    pub text: TextSpec,
    pub embed: u64,
    pub weights: Option<String>,
    /// Frozen as a whole: no gradient, no optimiser state.
    pub frozen: bool,
    pub logit_scale: LogitScaleSpec,
    pub tokenizer: TokenizerSpec,
    pub preprocess: PreprocessSpec,
    /// An exponential moving average of another model's parameters (`ema(student, decay:)`):
    /// frozen, starting from that model's values, updated after every optimiser step.
    pub ema: Option<EmaSpec>,
}

/// The model an EMA model follows, and how fast: after each step, p ← decay·p + (1 − decay)·q.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EmaSpec {
    pub source: usize,
    pub decay: f64,
}

/// What a parameter is, for optimiser groups (no weight decay on gains, biases, scales).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ParamClass {
    Weight,
    Embedding,
    Gain,
    Bias,
    Scale,
}

impl ParamClass {
    pub fn plural(self) -> &'static str {
        match self {
            ParamClass::Weight => "weights",
            ParamClass::Embedding => "embeddings",
            ParamClass::Gain => "gains",
            ParamClass::Bias => "biases",
            ParamClass::Scale => "scales",
        }
    }

    pub fn from_plural(name: &str) -> Option<ParamClass> {
        [
            ParamClass::Weight,
            ParamClass::Embedding,
            ParamClass::Gain,
            ParamClass::Bias,
            ParamClass::Scale,
        ]
        .into_iter()
        .find(|c| c.plural() == name)
    }
}

/// Which part of a model a parameter belongs to, for freezing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Part {
    /// The image encoder, up to and including its final layer norm.
    Vision,
    /// `visual_projection`: image tower width to embedding width.
    VisionProjection,
    /// The text encoder, up to and including its final layer norm.
    Text,
    /// `text_projection`: text tower width to embedding width.
    TextProjection,
    Scale,
}

impl Part {
    pub const ALL: [Part; 5] = [
        Part::Vision,
        Part::VisionProjection,
        Part::Text,
        Part::TextProjection,
        Part::Scale,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Part::Vision => "vision",
            Part::VisionProjection => "visual_projection",
            Part::Text => "text_tower",
            Part::TextProjection => "text_projection",
            Part::Scale => "logit_scale",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelParam {
    pub name: String,
    pub shape: Vec<u64>,
    pub class: ParamClass,
    pub part: Part,
}

impl ModelSpec {
    /// Every parameter tensor, with Hugging Face `CLIPModel` names (BERT-family text towers
    /// use `BertModel` names under `text_model.`).
    pub fn parameters(&self) -> Vec<ModelParam> {
        let mut out = Vec::new();
        let mut add = |name: String, shape: Vec<u64>, class: ParamClass, part: Part| {
            out.push(ModelParam {
                name,
                shape,
                class,
                part,
            });
        };
        let v = &self.vision;
        let p = "vision_model";
        add(
            format!("{p}.embeddings.class_embedding"),
            vec![v.width],
            ParamClass::Embedding,
            Part::Vision,
        );
        add(
            format!("{p}.embeddings.patch_embedding.weight"),
            vec![v.width, 3, v.patch, v.patch],
            ParamClass::Weight,
            Part::Vision,
        );
        add(
            format!("{p}.embeddings.position_embedding.weight"),
            vec![v.patches() + 1, v.width],
            ParamClass::Embedding,
            Part::Vision,
        );
        // Hugging Face spells this one `pre_layrnorm`.
        add(
            format!("{p}.pre_layrnorm.weight"),
            vec![v.width],
            ParamClass::Gain,
            Part::Vision,
        );
        add(
            format!("{p}.pre_layrnorm.bias"),
            vec![v.width],
            ParamClass::Bias,
            Part::Vision,
        );
        for i in 0..v.layers {
            clip_block(
                &mut add,
                &format!("{p}.encoder.layers.{i}"),
                v.width,
                v.mlp,
                Part::Vision,
            );
        }
        add(
            format!("{p}.post_layernorm.weight"),
            vec![v.width],
            ParamClass::Gain,
            Part::Vision,
        );
        add(
            format!("{p}.post_layernorm.bias"),
            vec![v.width],
            ParamClass::Bias,
            Part::Vision,
        );
        add(
            "visual_projection.weight".into(),
            vec![self.embed, v.width],
            ParamClass::Weight,
            Part::VisionProjection,
        );

        let t = &self.text;
        let p = "text_model";
        match t.kind {
            TextKind::Clip => {
                add(
                    format!("{p}.embeddings.token_embedding.weight"),
                    vec![t.vocab, t.width],
                    ParamClass::Embedding,
                    Part::Text,
                );
                add(
                    format!("{p}.embeddings.position_embedding.weight"),
                    vec![t.context, t.width],
                    ParamClass::Embedding,
                    Part::Text,
                );
                for i in 0..t.layers {
                    clip_block(
                        &mut add,
                        &format!("{p}.encoder.layers.{i}"),
                        t.width,
                        t.mlp,
                        Part::Text,
                    );
                }
                add(
                    format!("{p}.final_layer_norm.weight"),
                    vec![t.width],
                    ParamClass::Gain,
                    Part::Text,
                );
                add(
                    format!("{p}.final_layer_norm.bias"),
                    vec![t.width],
                    ParamClass::Bias,
                    Part::Text,
                );
            }
            TextKind::Bert | TextKind::Roberta => {
                let e = format!("{p}.embeddings");
                add(
                    format!("{e}.word_embeddings.weight"),
                    vec![t.vocab, t.width],
                    ParamClass::Embedding,
                    Part::Text,
                );
                add(
                    format!("{e}.position_embeddings.weight"),
                    vec![t.context, t.width],
                    ParamClass::Embedding,
                    Part::Text,
                );
                add(
                    format!("{e}.token_type_embeddings.weight"),
                    vec![if t.kind == TextKind::Roberta { 1 } else { 2 }, t.width],
                    ParamClass::Embedding,
                    Part::Text,
                );
                add(
                    format!("{e}.LayerNorm.weight"),
                    vec![t.width],
                    ParamClass::Gain,
                    Part::Text,
                );
                add(
                    format!("{e}.LayerNorm.bias"),
                    vec![t.width],
                    ParamClass::Bias,
                    Part::Text,
                );
                for i in 0..t.layers {
                    let l = format!("{p}.encoder.layer.{i}");
                    for (name, out, inp) in [
                        ("attention.self.query", t.width, t.width),
                        ("attention.self.key", t.width, t.width),
                        ("attention.self.value", t.width, t.width),
                        ("attention.output.dense", t.width, t.width),
                        ("intermediate.dense", t.mlp, t.width),
                        ("output.dense", t.width, t.mlp),
                    ] {
                        add(
                            format!("{l}.{name}.weight"),
                            vec![out, inp],
                            ParamClass::Weight,
                            Part::Text,
                        );
                        add(
                            format!("{l}.{name}.bias"),
                            vec![out],
                            ParamClass::Bias,
                            Part::Text,
                        );
                    }
                    for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                        add(
                            format!("{l}.{name}.weight"),
                            vec![t.width],
                            ParamClass::Gain,
                            Part::Text,
                        );
                        add(
                            format!("{l}.{name}.bias"),
                            vec![t.width],
                            ParamClass::Bias,
                            Part::Text,
                        );
                    }
                }
            }
        }
        add(
            "text_projection.weight".into(),
            vec![self.embed, t.width],
            ParamClass::Weight,
            Part::TextProjection,
        );
        add("logit_scale".into(), vec![], ParamClass::Scale, Part::Scale);
        out
    }

    pub fn parameter_count(&self) -> u64 {
        self.parameters()
            .iter()
            .map(|p| p.shape.iter().product::<u64>())
            .sum()
    }

    /// Whether a part receives gradients at all (before any stage's `freeze`). A frozen tower
    /// (`bert(…, frozen)`) keeps its projection trainable, as in locked-image or locked-text
    /// tuning; a frozen model freezes everything.
    pub fn part_frozen(&self, part: Part) -> bool {
        self.frozen
            || match part {
                Part::Vision => self.vision.frozen,
                Part::Text => self.text.frozen,
                Part::VisionProjection | Part::TextProjection => false,
                Part::Scale => !self.logit_scale.learnable,
            }
    }
}

fn clip_block(
    add: &mut impl FnMut(String, Vec<u64>, ParamClass, Part),
    prefix: &str,
    width: u64,
    mlp: u64,
    part: Part,
) {
    for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
        add(
            format!("{prefix}.self_attn.{proj}.weight"),
            vec![width, width],
            ParamClass::Weight,
            part,
        );
        add(
            format!("{prefix}.self_attn.{proj}.bias"),
            vec![width],
            ParamClass::Bias,
            part,
        );
    }
    add(
        format!("{prefix}.layer_norm1.weight"),
        vec![width],
        ParamClass::Gain,
        part,
    );
    add(
        format!("{prefix}.layer_norm1.bias"),
        vec![width],
        ParamClass::Bias,
        part,
    );
    add(
        format!("{prefix}.mlp.fc1.weight"),
        vec![mlp, width],
        ParamClass::Weight,
        part,
    );
    add(
        format!("{prefix}.mlp.fc1.bias"),
        vec![mlp],
        ParamClass::Bias,
        part,
    );
    add(
        format!("{prefix}.mlp.fc2.weight"),
        vec![width, mlp],
        ParamClass::Weight,
        part,
    );
    add(
        format!("{prefix}.mlp.fc2.bias"),
        vec![width],
        ParamClass::Bias,
        part,
    );
    add(
        format!("{prefix}.layer_norm2.weight"),
        vec![width],
        ParamClass::Gain,
        part,
    );
    add(
        format!("{prefix}.layer_norm2.bias"),
        vec![width],
        ParamClass::Bias,
        part,
    );
}

/// A named CLIP configuration: image size, patch, vision width/layers/heads, text
/// context/vocab/width/layers/heads, embedding width, activation.
pub struct Preset {
    pub name: &'static str,
    pub vision: (u64, u64, u64, u64, u64),
    pub text: (u64, u64, u64, u64, u64),
    pub embed: u64,
    pub act: Activation,
}

/// The presets kdc knows. Figures follow open_clip's model configurations (ViT head width 64,
/// MLP ratio 4); `-quickgelu` variants are OpenAI's originals.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "ViT-B-16",
        vision: (224, 16, 768, 12, 12),
        text: (77, 49408, 512, 12, 8),
        embed: 512,
        act: Activation::Gelu,
    },
    Preset {
        name: "ViT-B-16-quickgelu",
        vision: (224, 16, 768, 12, 12),
        text: (77, 49408, 512, 12, 8),
        embed: 512,
        act: Activation::QuickGelu,
    },
    Preset {
        name: "ViT-B-32",
        vision: (224, 32, 768, 12, 12),
        text: (77, 49408, 512, 12, 8),
        embed: 512,
        act: Activation::Gelu,
    },
    Preset {
        name: "ViT-B-32-quickgelu",
        vision: (224, 32, 768, 12, 12),
        text: (77, 49408, 512, 12, 8),
        embed: 512,
        act: Activation::QuickGelu,
    },
    Preset {
        name: "ViT-L-14",
        vision: (224, 14, 1024, 24, 16),
        text: (77, 49408, 768, 12, 12),
        embed: 768,
        act: Activation::Gelu,
    },
    Preset {
        name: "ViT-L-14-quickgelu",
        vision: (224, 14, 1024, 24, 16),
        text: (77, 49408, 768, 12, 12),
        embed: 768,
        act: Activation::QuickGelu,
    },
    Preset {
        name: "ViT-S-16",
        vision: (224, 16, 384, 12, 6),
        text: (77, 49408, 384, 12, 6),
        embed: 384,
        act: Activation::Gelu,
    },
    // CLIP-KD's tiny student: a 192-wide, 3-head ViT with a 384-wide text transformer.
    Preset {
        name: "ViT-T-16",
        vision: (224, 16, 192, 12, 3),
        text: (77, 49408, 384, 12, 6),
        embed: 512,
        act: Activation::Gelu,
    },
    // TinyCLIP's smallest released pair of towers.
    Preset {
        name: "TinyCLIP-ViT-8M-16-Text-3M",
        vision: (224, 16, 256, 10, 4),
        text: (77, 49408, 256, 3, 4),
        embed: 512,
        act: Activation::QuickGelu,
    },
    Preset {
        name: "TinyCLIP-ViT-39M-16-Text-19M",
        vision: (224, 16, 512, 12, 8),
        text: (77, 49408, 512, 6, 8),
        embed: 512,
        act: Activation::QuickGelu,
    },
];

/// BERT-family text encoders: context (max positions), vocab, width, layers, heads, MLP width.
pub struct BertPreset {
    pub name: &'static str,
    pub kind: TextKind,
    pub dims: (u64, u64, u64, u64, u64, u64),
}

pub const BERT_PRESETS: &[BertPreset] = &[
    // The sentence-transformers MiniLM used as the demo's frozen, pretrained text tower.
    BertPreset {
        name: "all-MiniLM-L6-v2",
        kind: TextKind::Bert,
        dims: (512, 30522, 384, 6, 12, 1536),
    },
    // Multilingual teachers' text towers.
    BertPreset {
        name: "xlm-roberta-base",
        kind: TextKind::Roberta,
        dims: (514, 250002, 768, 12, 12, 3072),
    },
    BertPreset {
        name: "xlm-roberta-large",
        kind: TextKind::Roberta,
        dims: (514, 250002, 1024, 24, 16, 4096),
    },
];

impl Preset {
    /// The preset's image tower (MLP ratio 4), trainable.
    pub fn vision(&self) -> VisionSpec {
        let (image_size, patch, width, layers, heads) = self.vision;
        VisionSpec {
            image_size,
            patch,
            width,
            layers,
            heads,
            mlp: 4 * width,
            act: self.act,
            frozen: false,
        }
    }

    /// The preset's text tower (CLIP's causal transformer, MLP ratio 4), trainable.
    pub fn text(&self) -> TextSpec {
        let (context, vocab, width, layers, heads) = self.text;
        TextSpec {
            kind: TextKind::Clip,
            context,
            vocab,
            width,
            layers,
            heads,
            mlp: 4 * width,
            act: self.act,
            frozen: false,
            preset: None,
            weights: None,
        }
    }
}

pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

pub fn bert_preset(name: &str) -> Option<&'static BertPreset> {
    BERT_PRESETS.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(p: &Preset) -> ModelSpec {
        ModelSpec {
            name: "m".into(),
            preset: Some(p.name.into()),
            vision: p.vision(),
            text: p.text(),
            embed: p.embed,
            weights: None,
            frozen: false,
            logit_scale: LogitScaleSpec::default(),
            tokenizer: TokenizerSpec {
                kind: TokenizerKind::ClipBpe,
                path: None,
                context: p.text.0,
            },
            preprocess: PreprocessSpec {
                resize: 224,
                crop: 224,
                mean: CLIP_MEAN,
                std: CLIP_STD,
            },
            ema: None,
        }
    }

    #[test]
    fn vit_b_16_has_the_published_parameter_count() {
        // OpenAI's ViT-B/16 CLIP has 149,620,737 parameters (torch's model.parameters()).
        let count = spec(preset("ViT-B-16").unwrap()).parameter_count();
        assert_eq!(count, 149_620_737);
    }

    #[test]
    fn presets_have_heads_that_divide_widths() {
        for p in PRESETS {
            assert_eq!(p.vision.2 % p.vision.4, 0, "{}", p.name);
            assert_eq!(p.text.2 % p.text.4, 0, "{}", p.name);
            assert_eq!(p.vision.0 % p.vision.1, 0, "{}", p.name);
        }
    }
}
