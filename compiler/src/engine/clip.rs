//! CLIP towers as engine graphs, following Hugging Face's `CLIPModel` exactly (pre-LN blocks,
//! `pre_layrnorm`, class token, end-of-text pooling, projections without bias) and `BertModel`
//! for BERT-family text towers (post-LN blocks, mean pooling). Parameters are created from
//! `ModelSpec::parameters`, so names and shapes are the checker's.

use super::graph::{Binary, Graph, Id, Op, Reduce, Unary};
use crate::model::{Activation, ModelSpec, Part, TextKind};
use std::collections::HashMap;

/// CLIP's and BERT's layer-norm epsilons.
pub const CLIP_LN_EPS: f32 = 1e-5;
pub const BERT_LN_EPS: f32 = 1e-12;
/// XLM-RoBERTa's LayerNorm ε.
pub const ROBERTA_LN_EPS: f32 = 1e-5;

/// One model's parameters in a graph, by Hugging Face name.
pub struct ModelParams {
    pub prefix: String,
    pub by_name: HashMap<String, Id>,
}

impl ModelParams {
    /// Adds every parameter of `spec`; `trainable(part)` says which receive gradients.
    /// The model's parameters as graph parameters named `model/hf_name`; `trainable` decides
    /// from a parameter's part and full name.
    pub fn new(
        g: &mut Graph,
        spec: &ModelSpec,
        trainable: impl Fn(Part, &str) -> bool,
    ) -> ModelParams {
        let prefix = spec.name.clone();
        let mut by_name = HashMap::new();
        for p in spec.parameters() {
            let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let full = format!("{prefix}/{}", p.name);
            let trains = trainable(p.part, &full);
            let id = g.param(full, shape, trains);
            by_name.insert(p.name, id);
        }
        ModelParams { prefix, by_name }
    }

    pub fn get(&self, name: &str) -> Id {
        *self
            .by_name
            .get(name)
            .unwrap_or_else(|| panic!("{} has no parameter {name}", self.prefix))
    }
}

/// x·Wᵀ + b with Hugging Face's [out, in] weight layout.
pub fn linear(g: &mut Graph, x: Id, weight: Id, bias: Option<Id>) -> Id {
    let y = g.matmul_t(x, weight, false, true);
    match bias {
        Some(b) => g.add2(y, b),
        None => y,
    }
}

fn act(g: &mut Graph, x: Id, a: Activation) -> Id {
    g.unary(
        if a == Activation::QuickGelu {
            Unary::QuickGelu
        } else {
            Unary::Gelu
        },
        x,
    )
}

/// The query rows an attention layer computes: every token, or only the rows a pooled output
/// reads, the class token (first) or one gathered position per batch item (CLIP text: end of
/// text). Keys and values always come from every token.
#[derive(Clone, Copy)]
pub enum Rows {
    All,
    First,
    Gather(Id),
}

impl Rows {
    /// Query rows per sequence, of `t` tokens.
    fn len(self, t: usize) -> usize {
        match self {
            Rows::All => t,
            Rows::First | Rows::Gather(_) => 1,
        }
    }
}

/// `x[:, rows, :]`: x itself for all rows, else [b, 1, w].
fn pick(g: &mut Graph, x: Id, rows: Rows) -> Id {
    match rows {
        Rows::All => x,
        Rows::First => g.slice(x, 1, 0, 1),
        Rows::Gather(index) => g.gather_rows(x, index),
    }
}

/// Multi-head self-attention of x [b, t, w] for the query `rows` ([b, rows.len(t), w] out,
/// and the attention probabilities [b, heads, rows.len(t), t]);
/// `bias` is added to the scores: with all rows a causal or padding mask broadcastable to
/// [b, heads, t, t]; with picked rows a per-query-row mask [t, t] (causal), of which the picked
/// rows' lines are used.
pub fn self_attention(
    g: &mut Graph,
    x: Id,
    heads: usize,
    proj: [(Id, Id); 4],
    bias: Option<Id>,
    rows: Rows,
) -> Attention {
    let s = g.shape(x).to_vec();
    let (b, t, w) = (s[0], s[1], s[2]);
    let (d, r) = (w / heads, rows.len(t));
    let split = |g: &mut Graph, y: Id, len: usize| {
        let y = g.reshape(y, vec![b, len, heads, d]);
        g.permute(y, vec![0, 2, 1, 3])
    };
    let xq = pick(g, x, rows);
    let query = linear(g, xq, proj[0].0, Some(proj[0].1));
    let key = linear(g, x, proj[1].0, Some(proj[1].1));
    let value = linear(g, x, proj[2].0, Some(proj[2].1));
    let scale = (d as f32).powf(-0.5);
    let (q, k, v) = (split(g, query, r), split(g, key, t), split(g, value, t));
    let bias = bias.map(|bias| match rows {
        Rows::All => bias,
        // The picked rows' lines of the mask: [t, t] -> [b, t, t] -> [b, 1, 1, t].
        _ => {
            let full = g.reshape(bias, vec![1, t, t]);
            let full = g.broadcast(full, vec![b, t, t]);
            let line = pick(g, full, rows);
            g.reshape(line, vec![b, 1, 1, t])
        }
    });
    // One fused operation: the scores and probabilities never take step memory.
    let o = g.attention(q, k, v, bias, scale);
    // The probabilities as their own operations, for a tap that reads them (dead code, never
    // run, otherwise).
    let qs = g.scale(q, scale);
    let mut scores = g.matmul_t(qs, k, false, true);
    if let Some(bias) = bias {
        scores = g.add2(scores, bias);
    }
    let p = g.softmax(scores, 3);
    let o = g.permute(o, vec![0, 2, 1, 3]);
    let o = g.reshape(o, vec![b, r, w]);
    Attention {
        out: linear(g, o, proj[3].0, Some(proj[3].1)),
        probs: p,
        query,
        key,
        value,
    }
}

/// What an attention layer computes: its output and, for taps, its probabilities
/// [b, heads, rows, t] and its projected queries, keys and values [b, rows or t, w] (before
/// the head split and the 1/√d scaling).
pub struct Attention {
    pub out: Id,
    pub probs: Id,
    pub query: Id,
    pub key: Id,
    pub value: Id,
}

/// Block k's attention, for taps.
#[derive(Clone, Copy)]
pub struct AttentionTaps {
    pub probs: Id,
    pub query: Id,
    pub key: Id,
    pub value: Id,
}

impl From<&Attention> for AttentionTaps {
    fn from(a: &Attention) -> AttentionTaps {
        AttentionTaps {
            probs: a.probs,
            query: a.query,
            key: a.key,
            value: a.value,
        }
    }
}

/// One CLIP encoder layer (pre-LN): x + attn(ln1(x)), then x + fc2(act(fc1(ln2(x)))), for the
/// query `rows`. Row for row the same operations whichever rows are picked, so a picked layer
/// equals `pick(clip_layer(x, All))`: the last layer of a tower whose pooled output reads one
/// token is built for that row, and when nothing reads the full layer's tokens, dead code
/// removes its queries, output projection and MLP for every other row.
#[allow(clippy::too_many_arguments)]
fn clip_layer(
    g: &mut Graph,
    p: &ModelParams,
    prefix: &str,
    x: Id,
    heads: usize,
    a: Activation,
    bias: Option<Id>,
    rows: Rows,
) -> (Id, AttentionTaps) {
    let n = |s: &str| p.get(&format!("{prefix}.{s}"));
    let h = g.layer_norm(
        x,
        n("layer_norm1.weight"),
        n("layer_norm1.bias"),
        CLIP_LN_EPS,
    );
    let proj = ["q_proj", "k_proj", "v_proj", "out_proj"].map(|q| {
        (
            n(&format!("self_attn.{q}.weight")),
            n(&format!("self_attn.{q}.bias")),
        )
    });
    g.push_scope("attn");
    let attention = self_attention(g, h, heads, proj, bias, rows);
    let (h, probs) = (attention.out, AttentionTaps::from(&attention));
    g.pop_scope();
    let x = pick(g, x, rows);
    let x = g.add2(x, h);
    let h = g.layer_norm(
        x,
        n("layer_norm2.weight"),
        n("layer_norm2.bias"),
        CLIP_LN_EPS,
    );
    let h = linear(g, h, n("mlp.fc1.weight"), Some(n("mlp.fc1.bias")));
    let h = act(g, h, a);
    let h = linear(g, h, n("mlp.fc2.weight"), Some(n("mlp.fc2.bias")));
    (g.add2(x, h), probs)
}

/// What a vision forward pass yields.
pub struct VisionOut {
    /// hidden_states[0] (after `pre_layrnorm`) to hidden_states[layers]: [b, tokens, width].
    pub hidden: Vec<Id>,
    /// Block k's attention at index k − 1: probabilities [b, heads, tokens, tokens], queries,
    /// keys and values [b, tokens, width].
    pub attention: Vec<AttentionTaps>,
    /// post_layernorm of the class token: [b, width].
    pub pooled: Id,
    /// The projected embedding, unnormalised: [b, embed].
    pub embed: Id,
}

/// The ViT forward on `pixels` [b, 3, s, s]. With `keep` [b, k] (indices of kept patches),
/// only those patch tokens, with their positions, go through the blocks (MAE-style masking).
pub fn vision(
    g: &mut Graph,
    spec: &ModelSpec,
    p: &ModelParams,
    pixels: Id,
    keep: Option<Id>,
) -> VisionOut {
    let v = &spec.vision;
    let (size, patch, width) = (v.image_size as usize, v.patch as usize, v.width as usize);
    let b = g.shape(pixels)[0];
    let side = size / patch;
    let n = side * side;
    g.push_scope(format!("{}.vision", spec.name));
    // Convolution with stride = kernel = patch, as a product over flattened patches.
    let x = g.reshape(pixels, vec![b, 3, side, patch, side, patch]);
    let x = g.permute(x, vec![0, 2, 4, 1, 3, 5]);
    let x = g.reshape(x, vec![b, n, 3 * patch * patch]);
    let w = p.get("vision_model.embeddings.patch_embedding.weight");
    let w = g.reshape(w, vec![width, 3 * patch * patch]);
    let x = g.matmul_t(x, w, false, true);
    let positions = p.get("vision_model.embeddings.position_embedding.weight");
    let class_position = g.slice(positions, 0, 0, 1);
    let patch_positions = g.slice(positions, 0, 1, n);
    let mut x = g.add2(x, patch_positions);
    if let Some(keep) = keep {
        x = g.gather_rows(x, keep);
    }
    let tokens = g.shape(x)[1];
    let class = p.get("vision_model.embeddings.class_embedding");
    let class = g.reshape(class, vec![1, width]);
    let class = g.add2(class, class_position);
    let class = g.reshape(class, vec![1, 1, width]);
    let class = g.broadcast(class, vec![b, 1, width]);
    let x = g.concat(class, x, 1);
    debug_assert_eq!(g.shape(x), &[b, tokens + 1, width]);
    let mut x = g.layer_norm(
        x,
        p.get("vision_model.pre_layrnorm.weight"),
        p.get("vision_model.pre_layrnorm.bias"),
        CLIP_LN_EPS,
    );
    let mut hidden = vec![x];
    let mut attention = Vec::new();
    for i in 0..v.layers as usize {
        g.push_scope(format!("layer{i}"));
        let probs;
        (x, probs) = clip_layer(
            g,
            p,
            &format!("vision_model.encoder.layers.{i}"),
            x,
            v.heads as usize,
            v.act,
            None,
            Rows::All,
        );
        g.pop_scope();
        hidden.push(x);
        attention.push(probs);
    }
    // The pooled output reads the class token alone: its last layer runs on that row only.
    let cls = match v.layers as usize {
        0 => g.slice(x, 1, 0, 1),
        layers => {
            g.push_scope(format!("layer{}.class", layers - 1));
            let (row, _) = clip_layer(
                g,
                p,
                &format!("vision_model.encoder.layers.{}", layers - 1),
                hidden[layers - 1],
                v.heads as usize,
                v.act,
                None,
                Rows::First,
            );
            g.pop_scope();
            row
        }
    };
    let cls = g.reshape(cls, vec![b, width]);
    let pooled = g.layer_norm(
        cls,
        p.get("vision_model.post_layernorm.weight"),
        p.get("vision_model.post_layernorm.bias"),
        CLIP_LN_EPS,
    );
    let embed = linear(g, pooled, p.get("visual_projection.weight"), None);
    g.pop_scope();
    VisionOut {
        hidden,
        attention,
        pooled,
        embed,
    }
}

/// Per-step inputs of a text tower.
pub struct TextInputs {
    /// Token ids [b, l].
    pub ids: Id,
    /// CLIP: the end-of-text position of each row, [b, 1].
    pub eot: Option<Id>,
    /// BERT: 1 for real tokens, 0 for padding, [b, l].
    pub mask: Option<Id>,
}

pub struct TextOut {
    pub hidden: Vec<Id>,
    /// Block k's attention at index k − 1 (probabilities [b, heads, context, context]).
    pub attention: Vec<AttentionTaps>,
    pub pooled: Id,
    pub embed: Id,
}

pub fn text(g: &mut Graph, spec: &ModelSpec, p: &ModelParams, inputs: &TextInputs) -> TextOut {
    let t = &spec.text;
    let s = g.shape(inputs.ids).to_vec();
    let (b, l) = (s[0], s[1]);
    let width = t.width as usize;
    g.push_scope(format!("{}.text", spec.name));
    let out = match t.kind {
        TextKind::Clip => {
            let tokens = g.embedding(
                p.get("text_model.embeddings.token_embedding.weight"),
                inputs.ids,
            );
            let positions = p.get("text_model.embeddings.position_embedding.weight");
            let positions = g.slice(positions, 0, 0, l);
            let mut x = g.add2(tokens, positions);
            let causal = g.add(Op::CausalMask, vec![], vec![l, l]);
            let mut hidden = vec![x];
            let mut attention = Vec::new();
            for i in 0..t.layers as usize {
                g.push_scope(format!("layer{i}"));
                let probs;
                (x, probs) = clip_layer(
                    g,
                    p,
                    &format!("text_model.encoder.layers.{i}"),
                    x,
                    t.heads as usize,
                    t.act,
                    Some(causal),
                    Rows::All,
                );
                g.pop_scope();
                hidden.push(x);
                attention.push(probs);
            }
            let eot = inputs
                .eot
                .expect("a CLIP text tower needs end-of-text positions");
            // The pooled output reads the end-of-text token alone: its last layer runs on
            // that row only (the final layer norm is per token).
            let rows = match t.layers as usize {
                0 => g.gather_rows(x, eot),
                layers => {
                    g.push_scope(format!("layer{}.eot", layers - 1));
                    let (row, _) = clip_layer(
                        g,
                        p,
                        &format!("text_model.encoder.layers.{}", layers - 1),
                        hidden[layers - 1],
                        t.heads as usize,
                        t.act,
                        Some(causal),
                        Rows::Gather(eot),
                    );
                    g.pop_scope();
                    row
                }
            };
            let x = g.layer_norm(
                rows,
                p.get("text_model.final_layer_norm.weight"),
                p.get("text_model.final_layer_norm.bias"),
                CLIP_LN_EPS,
            );
            let pooled = g.reshape(x, vec![b, width]);
            let embed = linear(g, pooled, p.get("text_projection.weight"), None);
            TextOut {
                hidden,
                attention,
                pooled,
                embed,
            }
        }
        TextKind::Bert | TextKind::Roberta => {
            let e = "text_model.embeddings";
            let eps = if t.kind == TextKind::Roberta {
                ROBERTA_LN_EPS
            } else {
                BERT_LN_EPS
            };
            // Token i takes position offset + i. RoBERTa gives padding the padding index
            // instead; padding is masked out of attention and pooling, so the pooled output is
            // the same.
            let offset = t.kind.position_offset() as usize;
            let words = g.embedding(p.get(&format!("{e}.word_embeddings.weight")), inputs.ids);
            let positions = g.slice(
                p.get(&format!("{e}.position_embeddings.weight")),
                0,
                offset,
                l,
            );
            let token_type = g.slice(p.get(&format!("{e}.token_type_embeddings.weight")), 0, 0, 1);
            let x = g.add2(words, positions);
            let x = g.add2(x, token_type);
            let mut x = g.layer_norm(
                x,
                p.get(&format!("{e}.LayerNorm.weight")),
                p.get(&format!("{e}.LayerNorm.bias")),
                eps,
            );
            let mask = inputs
                .mask
                .expect("a BERT text tower needs an attention mask");
            // Padding keys get a large negative score: (mask − 1) · 1e9, broadcast over heads
            // and queries.
            let one = g.scalar(1.0);
            let m = g.binary(Binary::Sub, mask, one);
            let m = g.scale(m, 1e9);
            let bias = g.reshape(m, vec![b, 1, 1, l]);
            let mut hidden = vec![x];
            let mut attention = Vec::new();
            for i in 0..t.layers as usize {
                let n = |s: &str| p.get(&format!("text_model.encoder.layer.{i}.{s}"));
                g.push_scope(format!("layer{i}"));
                let proj = [
                    "attention.self.query",
                    "attention.self.key",
                    "attention.self.value",
                    "attention.output.dense",
                ]
                .map(|q| (n(&format!("{q}.weight")), n(&format!("{q}.bias"))));
                let at = self_attention(g, x, t.heads as usize, proj, Some(bias), Rows::All);
                attention.push(AttentionTaps::from(&at));
                let a = at.out;
                let a = g.add2(a, x);
                let x1 = g.layer_norm(
                    a,
                    n("attention.output.LayerNorm.weight"),
                    n("attention.output.LayerNorm.bias"),
                    eps,
                );
                let h = linear(
                    g,
                    x1,
                    n("intermediate.dense.weight"),
                    Some(n("intermediate.dense.bias")),
                );
                let h = g.unary(Unary::Gelu, h);
                let h = linear(g, h, n("output.dense.weight"), Some(n("output.dense.bias")));
                let h = g.add2(h, x1);
                x = g.layer_norm(
                    h,
                    n("output.LayerNorm.weight"),
                    n("output.LayerNorm.bias"),
                    eps,
                );
                g.pop_scope();
                hidden.push(x);
            }
            // Mean over real tokens.
            let m3 = g.reshape(mask, vec![b, l, 1]);
            let masked = g.mul(x, m3);
            let summed = g.reduce(Reduce::Sum, masked, Some(1));
            let count = g.reduce(Reduce::Sum, m3, Some(1));
            let pooled = g.binary(Binary::Div, summed, count);
            let embed = linear(g, pooled, p.get("text_projection.weight"), None);
            TextOut {
                hidden,
                attention,
                pooled,
                embed,
            }
        }
    };
    g.pop_scope();
    out
}

/// σ = exp(t) of the model's logit scale.
pub fn logit_scale(g: &mut Graph, p: &ModelParams) -> Id {
    let t = p.get("logit_scale");
    g.unary(Unary::Exp, t)
}
