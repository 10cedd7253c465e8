//! Weights out: a trained model as a Hugging Face CLIP folder (`model.safetensors` with
//! `CLIPModel`'s names and shapes, and `config.json`), which `transformers.CLIPModel
//! .from_pretrained` loads. kdc's parameters already carry Hugging Face names, so export is a
//! rename (the model's prefix dropped) and a config.

use super::checkpoint::{write_safetensors, CheckpointError};
use crate::model::{Activation, ModelSpec};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Write(#[from] CheckpointError),
    #[error(
        "model `{0}` has a BERT-family text tower, which a Hugging Face CLIPModel cannot hold"
    )]
    NotClip(String),
    #[error("model `{model}` has no value for its parameter {name}")]
    Missing { model: String, name: String },
}

fn act(a: Activation) -> &'static str {
    match a {
        Activation::QuickGelu => "quick_gelu",
        Activation::Gelu => "gelu",
    }
}

/// `config.json` of a Hugging Face `CLIPModel` with this architecture.
pub fn config(spec: &ModelSpec) -> serde_json::Value {
    let v = &spec.vision;
    let t = &spec.text;
    serde_json::json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": spec.embed,
        "logit_scale_init_value": spec.logit_scale.init.ln(),
        "initializer_factor": 1.0,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": t.vocab,
            "hidden_size": t.width,
            "intermediate_size": t.mlp,
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context,
            "hidden_act": act(t.act),
            "layer_norm_eps": 1e-5,
            "projection_dim": spec.embed,
            // kdc's CLIP text tower pools at the end-of-text token, the vocabulary's last id
            // (open_clip's argmax rule); Hugging Face pools at the first eos_token_id.
            "bos_token_id": t.vocab - 2,
            "eos_token_id": t.vocab - 1,
            "pad_token_id": 0,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "image_size": v.image_size,
            "patch_size": v.patch,
            "num_channels": 3,
            "hidden_size": v.width,
            "intermediate_size": v.mlp,
            "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads,
            "hidden_act": act(v.act),
            "layer_norm_eps": 1e-5,
            "projection_dim": spec.embed,
        },
    })
}

/// Writes `spec`'s parameters (from `values`, named `<model>/<Hugging Face name>`) as a
/// Hugging Face CLIP folder in `dir`.
pub fn hf_folder(
    spec: &ModelSpec,
    values: &HashMap<String, Vec<f32>>,
    dir: &Path,
) -> Result<(), ExportError> {
    if spec.text.kind.is_encoder() {
        return Err(ExportError::NotClip(spec.name.clone()));
    }
    let mut tensors = Vec::new();
    for p in spec.parameters() {
        let key = format!("{}/{}", spec.name, p.name);
        let v = values.get(&key).ok_or_else(|| ExportError::Missing {
            model: spec.name.clone(),
            name: p.name.clone(),
        })?;
        tensors.push((
            p.name.clone(),
            p.shape.iter().map(|&d| d as usize).collect(),
            v.as_slice(),
        ));
    }
    let mut meta = HashMap::new();
    meta.insert("format".into(), "pt".into());
    write_safetensors(&dir.join("model.safetensors"), &tensors, meta)?;
    write_json(&dir.join("config.json"), &config(spec))?;
    write_json(&dir.join("preprocessor_config.json"), &preprocessor(spec))?;
    Ok(())
}

/// `preprocessor_config.json` of a Hugging Face `CLIPImageProcessor` doing the model's
/// preprocessing (resize the shortest side bicubic, centre crop, normalise).
pub fn preprocessor(spec: &ModelSpec) -> serde_json::Value {
    let p = &spec.preprocess;
    serde_json::json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true,
        "size": { "shortest_edge": p.resize },
        "resample": 3,
        "do_center_crop": true,
        "crop_size": { "height": p.crop, "width": p.crop },
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": p.mean,
        "image_std": p.std,
        "do_convert_rgb": true,
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), CheckpointError> {
    let text = serde_json::to_string_pretty(value).expect("json") + "\n";
    std::fs::write(path, text).map_err(|source| CheckpointError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Writes the reference inputs and embeddings ([`crate::evaluate::reference_embeddings`]) as
/// `kdc_reference.safetensors` in an exported folder.
pub fn reference(
    dir: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), CheckpointError> {
    let views: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    write_safetensors(
        &dir.join("kdc_reference.safetensors"),
        &views,
        HashMap::new(),
    )
}
