//! Checkpoints: everything a run needs to continue exactly where it was — parameters, AdamW's
//! moments, the stage and its optimiser step, the position in the data — in one safetensors
//! file (tensors `param/<name>`, `adam.m/<name>`, `adam.v/<name>`; the rest in its metadata).
//! Every other random choice of a run is derived from the seed and the step, so nothing more is
//! needed for a resumed run to reach exactly the losses of an uninterrupted one.
//!
//! Files are written atomically: to a temporary file in the same folder, flushed to disk, then
//! renamed over the old one (and the folder flushed), so a run killed at any moment leaves
//! either the old checkpoint or the new one, never a torn file.

use crate::data::loader::Position;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

pub struct Checkpoint {
    /// The stage being trained, and the optimiser steps it has taken.
    pub stage: usize,
    pub steps: u64,
    /// Where the stage's next batch starts (None for synthetic data).
    pub data: Option<Position>,
    /// What the recipe computes (a hash of its explanation): a checkpoint of another recipe
    /// is refused.
    pub fingerprint: String,
    pub params: HashMap<String, Vec<f32>>,
    pub moments: HashMap<String, (Vec<f32>, Vec<f32>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read the checkpoint {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a kdc checkpoint: {message}")]
    Format { path: String, message: String },
}

/// A stable 64-bit FNV-1a hash, as hex (std's hasher may change between Rust versions).
pub fn fingerprint(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `tensors` (name → values, shape) with `metadata` to `path`, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let err = |source| CheckpointError::Write {
        path: path.display().to_string(),
        source,
    };
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), bytes(v)))
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("shape matches data"),
            )
        })
        .collect();
    let serialized = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| err(std::io::Error::other(e.to_string())))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&serialized).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    // The rename itself must reach the disk.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        let mut names: Vec<&String> = self.params.keys().collect();
        names.sort();
        for n in names {
            let v = &self.params[n];
            tensors.push((format!("param/{n}"), vec![v.len()], v));
        }
        let mut names: Vec<&String> = self.moments.keys().collect();
        names.sort();
        for n in names {
            let (m, v) = &self.moments[n];
            tensors.push((format!("adam.m/{n}"), vec![m.len()], m));
            tensors.push((format!("adam.v/{n}"), vec![v.len()], v));
        }
        let mut meta = HashMap::new();
        meta.insert("format".into(), "kdc-checkpoint-1".into());
        meta.insert("stage".into(), self.stage.to_string());
        meta.insert("steps".into(), self.steps.to_string());
        meta.insert("fingerprint".into(), self.fingerprint.clone());
        if let Some(p) = self.data {
            meta.insert("data_epoch".into(), p.epoch.to_string());
            meta.insert("data_cursor".into(), p.cursor.to_string());
        }
        write_safetensors(path, &tensors, meta)
    }

    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let shown = path.display().to_string();
        let bad = |message: String| CheckpointError::Format {
            path: shown.clone(),
            message,
        };
        let raw = std::fs::read(path).map_err(|source| CheckpointError::Read {
            path: shown.clone(),
            source,
        })?;
        let (_, header) = SafeTensors::read_metadata(&raw).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some("kdc-checkpoint-1") {
            return Err(bad("no kdc-checkpoint-1 format marker".into()));
        }
        let field = |k: &str| -> Result<u64, CheckpointError> {
            meta.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(format!("no `{k}` in its metadata")))
        };
        let file = SafeTensors::deserialize(&raw).map_err(|e| bad(e.to_string()))?;
        let mut params = HashMap::new();
        let mut m = HashMap::new();
        let mut v = HashMap::new();
        for (name, view) in file.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!("{name} is not float32")));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            if let Some(n) = name.strip_prefix("param/") {
                params.insert(n.to_string(), values);
            } else if let Some(n) = name.strip_prefix("adam.m/") {
                m.insert(n.to_string(), values);
            } else if let Some(n) = name.strip_prefix("adam.v/") {
                v.insert(n.to_string(), values);
            }
        }
        let mut moments = HashMap::new();
        for (n, mm) in m {
            let vv = v
                .remove(&n)
                .ok_or_else(|| bad(format!("{n} has adam.m but no adam.v")))?;
            moments.insert(n, (mm, vv));
        }
        let data = match (meta.get("data_epoch"), meta.get("data_cursor")) {
            (Some(_), Some(_)) => Some(Position {
                epoch: field("data_epoch")?,
                cursor: field("data_cursor")? as usize,
            }),
            _ => None,
        };
        Ok(Checkpoint {
            stage: field("stage")? as usize,
            steps: field("steps")?,
            data,
            fingerprint: meta.get("fingerprint").cloned().unwrap_or_default(),
            params,
            moments,
        })
    }
}
