//! Model weights in and out: safetensors files with Hugging Face `CLIPModel` names, or
//! open_clip names mapped onto them; random initialisation following Hugging Face's CLIP.

use super::rng::Rng;
use crate::model::{ModelSpec, ParamClass};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read weights {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a safetensors file: {message}")]
    Format { path: String, message: String },
    #[error(
        "{path} has no tensor {name} (nor an open_clip equivalent); {count} tensors in the file"
    )]
    Missing {
        path: String,
        name: String,
        count: usize,
    },
    #[error("{path}: {name} has shape {found:?}, the recipe's model needs {expected:?}")]
    Shape {
        path: String,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: {name} has dtype {dtype}; only F32, F16 and BF16 are read")]
    Dtype {
        path: String,
        name: String,
        dtype: String,
    },
}

/// Every tensor of a safetensors file, as f32.
pub fn read_safetensors(
    path: &Path,
) -> Result<HashMap<String, (Vec<usize>, Vec<f32>)>, WeightsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
        path: shown.clone(),
        source,
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| WeightsError::Format {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let mut out = HashMap::new();
    for (name, view) in file.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::I64 => data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            other => {
                return Err(WeightsError::Dtype {
                    path: shown,
                    name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// The open_clip name of a Hugging Face CLIP parameter, for the parameters whose layout is the
/// same in both (open_clip fuses q, k, v into one `in_proj`; those are split on load).
fn open_clip_name(hf: &str) -> Option<String> {
    let simple = [
        (
            "vision_model.embeddings.class_embedding",
            "visual.class_embedding",
        ),
        (
            "vision_model.embeddings.position_embedding.weight",
            "visual.positional_embedding",
        ),
        (
            "vision_model.embeddings.patch_embedding.weight",
            "visual.conv1.weight",
        ),
        ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"),
        ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"),
        (
            "vision_model.post_layernorm.weight",
            "visual.ln_post.weight",
        ),
        ("vision_model.post_layernorm.bias", "visual.ln_post.bias"),
        (
            "text_model.embeddings.token_embedding.weight",
            "token_embedding.weight",
        ),
        (
            "text_model.embeddings.position_embedding.weight",
            "positional_embedding",
        ),
        ("text_model.final_layer_norm.weight", "ln_final.weight"),
        ("text_model.final_layer_norm.bias", "ln_final.bias"),
        ("logit_scale", "logit_scale"),
    ];
    if let Some((_, o)) = simple.iter().find(|(h, _)| *h == hf) {
        return Some(o.to_string());
    }
    for (hf_prefix, oc_prefix) in [
        (
            "vision_model.encoder.layers.",
            "visual.transformer.resblocks.",
        ),
        ("text_model.encoder.layers.", "transformer.resblocks."),
    ] {
        if let Some(rest) = hf.strip_prefix(hf_prefix) {
            let (layer, tail) = rest.split_once('.')?;
            let tail = match tail {
                "self_attn.out_proj.weight" => "attn.out_proj.weight",
                "self_attn.out_proj.bias" => "attn.out_proj.bias",
                "layer_norm1.weight" => "ln_1.weight",
                "layer_norm1.bias" => "ln_1.bias",
                "layer_norm2.weight" => "ln_2.weight",
                "layer_norm2.bias" => "ln_2.bias",
                "mlp.fc1.weight" => "mlp.c_fc.weight",
                "mlp.fc1.bias" => "mlp.c_fc.bias",
                "mlp.fc2.weight" => "mlp.c_proj.weight",
                "mlp.fc2.bias" => "mlp.c_proj.bias",
                _ => return None,
            };
            return Some(format!("{oc_prefix}{layer}.{tail}"));
        }
    }
    None
}

/// Looks a model parameter up in a file's tensors: by Hugging Face name, else by open_clip
/// name (splitting the fused `in_proj` and transposing the projections open_clip stores as
/// [width, embed]).
pub fn find(
    tensors: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    hf: &str,
    shape: &[usize],
) -> Option<Vec<f32>> {
    for prefix in ["", "model.", "clip."] {
        if let Some((s, v)) = tensors.get(&format!("{prefix}{hf}")) {
            if s.iter().product::<usize>() == shape.iter().product::<usize>() {
                return Some(v.clone());
            }
        }
    }
    if let Some(name) = open_clip_name(hf) {
        if let Some((_, v)) = tensors.get(&name) {
            return Some(v.clone());
        }
    }
    // open_clip's fused attention input projection: rows [q; k; v].
    for (hf_prefix, oc_prefix) in [
        (
            "vision_model.encoder.layers.",
            "visual.transformer.resblocks.",
        ),
        ("text_model.encoder.layers.", "transformer.resblocks."),
    ] {
        if let Some(rest) = hf.strip_prefix(hf_prefix) {
            let (layer, tail) = rest.split_once('.')?;
            let (which, kind) = match tail {
                "self_attn.q_proj.weight" => (0, "weight"),
                "self_attn.k_proj.weight" => (1, "weight"),
                "self_attn.v_proj.weight" => (2, "weight"),
                "self_attn.q_proj.bias" => (0, "bias"),
                "self_attn.k_proj.bias" => (1, "bias"),
                "self_attn.v_proj.bias" => (2, "bias"),
                _ => return None,
            };
            let (_, fused) = tensors.get(&format!("{oc_prefix}{layer}.attn.in_proj_{kind}"))?;
            let part = fused.len() / 3;
            return Some(fused[which * part..(which + 1) * part].to_vec());
        }
    }
    // open_clip stores projections as x·P with P [width, embed]; Hugging Face as [embed, width].
    let projection = match hf {
        "visual_projection.weight" => Some("visual.proj"),
        "text_projection.weight" => Some("text_projection"),
        _ => None,
    };
    if let Some(name) = projection {
        let (s, v) = tensors.get(name)?;
        let (rows, cols) = (s[0], s[1]);
        let mut t = vec![0.0; v.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = v[r * cols + c];
            }
        }
        return Some(t);
    }
    None
}

/// Hugging Face CLIP's initialisation, simplified: normal(0, 0.02) for weights and
/// embeddings, ones for layer-norm gains, zeros for biases, ln σ₀ for the logit scale, and
/// width^-½ for the class embedding.
pub fn init(spec: &ModelSpec, seed: u64) -> Vec<(String, Vec<f32>)> {
    spec.parameters()
        .into_iter()
        .map(|p| {
            let n: u64 = p.shape.iter().product();
            let mut rng = Rng::derive(seed, &format!("{}/{}", spec.name, p.name));
            let values: Vec<f32> = match p.class {
                ParamClass::Gain => vec![1.0; n as usize],
                ParamClass::Bias => vec![0.0; n as usize],
                ParamClass::Scale => vec![spec.logit_scale.init.ln() as f32; n as usize],
                ParamClass::Embedding if p.name.ends_with("class_embedding") => {
                    let std = (spec.vision.width as f64).powf(-0.5);
                    (0..n).map(|_| (rng.normal() * std) as f32).collect()
                }
                _ => (0..n).map(|_| (rng.normal() * 0.02) as f32).collect(),
            };
            (p.name, values)
        })
        .collect()
}
