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
    #[error("{path} does not fit model `{model}`:{report}")]
    Mismatch {
        path: String,
        model: String,
        report: String,
    },
    #[error("{path}: {name} has dtype {dtype}; only F32, F16 and BF16 are read")]
    Dtype {
        path: String,
        name: String,
        dtype: String,
    },
}

/// Tensors by name: shape and f32 values.
pub type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of a checkpoint, as f32: a safetensors file, a folder holding
/// `model.safetensors` (a Hugging Face model folder), or a PyTorch `.pt`/`.pth`/`.bin` state
/// dict (read with candle-core's pickle reader). A `module.` prefix (from DistributedDataParallel)
/// is dropped, and open_clip's `state_dict` wrapper is looked through.
pub fn load(path: &Path) -> Result<Tensors, WeightsError> {
    let shown = path.display().to_string();
    let file = if path.is_dir() {
        let candidates = [
            "model.safetensors",
            "open_clip_model.safetensors",
            "pytorch_model.bin",
        ];
        match candidates.iter().map(|c| path.join(c)).find(|p| p.exists()) {
            Some(f) => f,
            None => {
                return Err(WeightsError::Format {
                    path: shown,
                    message: format!("a folder without {}", candidates.join(", ")),
                })
            }
        }
    } else {
        path.to_path_buf()
    };
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    let raw = if matches!(ext, "pt" | "pth" | "bin") {
        read_pickle(&file)?
    } else {
        read_safetensors(&file)?
    };
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let k = k.strip_prefix("module.").map(str::to_string).unwrap_or(k);
            let k = k
                .strip_prefix("state_dict.")
                .map(str::to_string)
                .unwrap_or(k);
            (k, v)
        })
        .collect())
}

/// A PyTorch state dict through candle-core's pickle reader.
fn read_pickle(path: &Path) -> Result<Tensors, WeightsError> {
    let shown = path.display().to_string();
    let format = |message: String| WeightsError::Format {
        path: shown.clone(),
        message,
    };
    let mut tensors = candle_core::pickle::read_all_with_key(path, Some("state_dict"))
        .or_else(|_| candle_core::pickle::read_all(path))
        .map_err(|e| format(format!("not a PyTorch state dict: {e}")))?;
    let mut out = HashMap::new();
    for (name, t) in tensors.drain(..) {
        let shape = t.dims().to_vec();
        let values = t
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| format(format!("{name}: {e}")))?;
        out.insert(name, (shape, values));
    }
    Ok(out)
}

/// Tensors a checkpoint may hold that no model parameter takes (buffers, heads kdc has no
/// use for): not reported as unexpected.
fn ignorable(name: &str) -> bool {
    name.ends_with("position_ids")
        || name.starts_with("pooler.")
        || name.ends_with("attn_mask")
        || name == "input_resolution"
        || name == "context_length"
        || name == "vocab_size"
}

/// A kdc checkpoint (`checkpoint.safetensors`, `stage-<name>.safetensors`) holds every
/// parameter as `param/<model>/<Hugging Face name>` (flattened) beside AdamW's moments: the
/// model's own are those under its name, or, when the file holds a single model, that
/// model's. Other files are returned as they are.
fn own_tensors(tensors: Tensors, model: &str) -> Tensors {
    if !tensors.keys().any(|k| k.starts_with("param/")) {
        return tensors;
    }
    let models: std::collections::BTreeSet<String> = tensors
        .keys()
        .filter_map(|k| {
            k.strip_prefix("param/")?
                .split_once('/')
                .map(|(m, _)| m.to_string())
        })
        .collect();
    let pick = if models.contains(model) || models.len() != 1 {
        model.to_string()
    } else {
        models.into_iter().next().expect("one model")
    };
    let prefix = format!("param/{pick}/");
    tensors
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|n| (n.to_string(), v)))
        .collect()
}

/// The values of model `spec`'s parameters that its weights provide, by Hugging Face name:
/// the model's own checkpoint (`weights:`), and a BERT text tower's (`bert(weights: …)`) for
/// the text tower when the model's has none. Every parameter a checkpoint should hold must be
/// there with its shape; otherwise one error lists every missing, mis-shaped and unexpected
/// tensor.
pub fn model_values(
    spec: &ModelSpec,
    base: &crate::manifest::Base,
) -> Result<HashMap<String, Vec<f32>>, WeightsError> {
    let params = spec.parameters();
    let mut out = HashMap::new();
    let mut sources: Vec<(String, Tensors, Box<dyn Fn(&str) -> bool>, &'static str)> = Vec::new();
    if let Some(w) = &spec.weights {
        let tensors = own_tensors(load(&base.join(w))?, &spec.name);
        sources.push((w.clone(), tensors, Box::new(|_: &str| true), ""));
    }
    if let Some(w) = &spec.text.weights {
        // A BERT checkpoint has BertModel's names, without the `text_model.` kdc puts first.
        // Checkpoints of a whole BertForX / XLMRobertaForX model put the encoder under
        // `bert.` / `roberta.`; sentence-transformers saves under `0.auto_model.`.
        let tensors = load(&base.join(w))?
            .into_iter()
            .map(|(k, v)| {
                let k = ["bert.", "roberta.", "0.auto_model."]
                    .iter()
                    .find_map(|p| k.strip_prefix(p))
                    .map(str::to_string)
                    .unwrap_or(k);
                (k, v)
            })
            .collect();
        sources.push((
            w.clone(),
            tensors,
            Box::new(|n: &str| n.starts_with("text_model.")),
            "text_model.",
        ));
    }
    for (path, tensors, covers, strip) in &sources {
        let mut used = std::collections::HashSet::new();
        let (mut missing, mut misshaped) = (Vec::new(), Vec::new());
        for p in params.iter().filter(|p| covers(&p.name)) {
            if out.contains_key(&p.name) {
                continue;
            }
            let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let name = p.name.strip_prefix(strip).unwrap_or(&p.name);
            match find_used(tensors, name, &shape) {
                Some((v, names)) if v.len() == numel(&shape) => {
                    used.extend(names);
                    out.insert(p.name.clone(), v);
                }
                Some((v, names)) => {
                    used.extend(names);
                    misshaped.push(format!(
                        "{name}: {} values, the model needs {shape:?}",
                        v.len()
                    ));
                }
                None => missing.push(name.to_string()),
            }
        }
        // A BERT tower's checkpoint does not have to cover what the model's own covers.
        if !missing.is_empty() || !misshaped.is_empty() {
            let mut unexpected: Vec<&String> = tensors
                .keys()
                .filter(|k| !used.contains(*k) && !ignorable(k))
                .collect();
            unexpected.sort();
            missing.sort();
            let list = |title: &str, items: Vec<String>| -> String {
                if items.is_empty() {
                    return String::new();
                }
                let shown: Vec<&String> = items.iter().take(12).collect();
                let more = if items.len() > 12 {
                    format!(" … and {} more", items.len() - 12)
                } else {
                    String::new()
                };
                format!(
                    "\n  {title} ({}): {}{more}",
                    items.len(),
                    shown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let report = list("missing", missing)
                + &list("mis-shaped", misshaped)
                + &list("unexpected", unexpected.into_iter().cloned().collect());
            return Err(WeightsError::Mismatch {
                path: base.join(path).display().to_string(),
                model: spec.name.clone(),
                report,
            });
        }
    }
    Ok(out)
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// [`find`], also saying which tensors of the file it read.
fn find_used(tensors: &Tensors, hf: &str, shape: &[usize]) -> Option<(Vec<f32>, Vec<String>)> {
    let v = find(tensors, hf, shape)?;
    let mut names: Vec<String> = ["", "model.", "clip."]
        .iter()
        .map(|p| format!("{p}{hf}"))
        .filter(|n| tensors.contains_key(n))
        .collect();
    if let Some(o) = open_clip_name(hf) {
        names.push(o);
    }
    for (hf_prefix, oc_prefix) in [
        (
            "vision_model.encoder.layers.",
            "visual.transformer.resblocks.",
        ),
        ("text_model.encoder.layers.", "transformer.resblocks."),
    ] {
        if let Some(rest) = hf.strip_prefix(hf_prefix) {
            if let Some((layer, tail)) = rest.split_once('.') {
                for kind in ["weight", "bias"] {
                    if tail.ends_with(kind)
                        && tail.starts_with("self_attn.")
                        && !tail.contains("out_proj")
                    {
                        names.push(format!("{oc_prefix}{layer}.attn.in_proj_{kind}"));
                    }
                }
            }
        }
    }
    match hf {
        "visual_projection.weight" => names.push("visual.proj".into()),
        "text_projection.weight" => names.push("text_projection".into()),
        _ => {}
    }
    Some((v, names))
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
