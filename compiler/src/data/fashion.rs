//! Fashion-MNIST from its idx files (plain or gzipped): 28×28 grey images of ten classes of
//! clothing, captioned from templates around the class name.

use super::image::Rgb;
use super::{existing, shown, DataError, Dataset, Sample};
use crate::engine::rng::Rng;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The class names captions use, in label order.
pub const CLASSES: [&str; 10] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// Where Debian's `dataset-fashion-mnist` package installs the files.
const DEBIAN: &str = "/usr/share/datasets/fashion-mnist";

pub struct FashionMnist {
    images: Vec<u8>,
    labels: Vec<u8>,
    templates: Vec<String>,
    classes: Vec<String>,
    seed: u64,
    what: String,
}

/// The folder with the idx files: `root` if the recipe gives one, else `$KDC_FASHION_MNIST`,
/// else Debian's package.
pub fn find_root(root: Option<PathBuf>) -> Result<PathBuf, DataError> {
    if let Some(root) = root {
        return Ok(root);
    }
    if let Some(dir) = std::env::var_os("KDC_FASHION_MNIST") {
        return Ok(PathBuf::from(dir));
    }
    existing(PathBuf::from(DEBIAN)).ok_or_else(|| {
        DataError::NotFound(format!(
            "Fashion-MNIST was not found: give `fashion_mnist(root: …)`, set KDC_FASHION_MNIST, \
             or install Debian's dataset-fashion-mnist (files in {DEBIAN}); assets/fetch.sh does it"
        ))
    })
}

/// The contents of `name` or `name.gz` in `dir`.
fn read_idx(dir: &Path, name: &str) -> Result<(PathBuf, Vec<u8>), DataError> {
    for (path, gz) in [
        (dir.join(name), false),
        (dir.join(format!("{name}.gz")), true),
    ] {
        if !path.exists() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| DataError::Read {
            path: shown(&path),
            message: e.to_string(),
        })?;
        if !gz {
            return Ok((path, bytes));
        }
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Format {
                path: shown(&path),
                message: format!("not a gzip file: {e}"),
            })?;
        return Ok((path, out));
    }
    Err(DataError::NotFound(format!(
        "{} has no {name} (nor {name}.gz)",
        shown(dir)
    )))
}

/// The payload of an idx file after checking its magic number and dimensions.
fn idx_payload(
    path: &Path,
    bytes: &[u8],
    dims: &[Option<u32>],
) -> Result<(Vec<u32>, Vec<u8>), DataError> {
    let bad = |message: String| DataError::Format {
        path: shown(path),
        message,
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad("not an idx file of unsigned bytes".into()));
    }
    let rank = bytes[3] as usize;
    if rank != dims.len() || bytes.len() < 4 + 4 * rank {
        return Err(bad(format!("{rank} dimensions, expected {}", dims.len())));
    }
    let sizes: Vec<u32> = (0..rank)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()))
        .collect();
    for (got, want) in sizes.iter().zip(dims) {
        if let Some(w) = want {
            if got != w {
                return Err(bad(format!("dimensions {sizes:?}, expected {dims:?}")));
            }
        }
    }
    let n: usize = sizes.iter().map(|&s| s as usize).product();
    let payload = &bytes[4 + 4 * rank..];
    if payload.len() != n {
        return Err(bad(format!(
            "{} bytes of data for dimensions {sizes:?}",
            payload.len()
        )));
    }
    Ok((sizes, payload.to_vec()))
}

impl FashionMnist {
    pub fn open(
        root: &Path,
        train: bool,
        templates: Vec<String>,
        seed: u64,
    ) -> Result<FashionMnist, DataError> {
        let prefix = if train { "train" } else { "t10k" };
        let (ipath, ibytes) = read_idx(root, &format!("{prefix}-images-idx3-ubyte"))?;
        let (lpath, lbytes) = read_idx(root, &format!("{prefix}-labels-idx1-ubyte"))?;
        let (isizes, images) = idx_payload(&ipath, &ibytes, &[None, Some(28), Some(28)])?;
        let (lsizes, labels) = idx_payload(&lpath, &lbytes, &[None])?;
        if isizes[0] != lsizes[0] {
            return Err(DataError::Format {
                path: shown(&lpath),
                message: format!("{} labels for {} images", lsizes[0], isizes[0]),
            });
        }
        if let Some(bad) = labels.iter().find(|&&l| l >= 10) {
            return Err(DataError::Format {
                path: shown(&lpath),
                message: format!("label {bad} is not a class (0–9)"),
            });
        }
        Ok(FashionMnist {
            images,
            labels,
            templates,
            classes: CLASSES.iter().map(|c| c.to_string()).collect(),
            seed,
            what: format!(
                "Fashion-MNIST {} ({}, {} images)",
                if train { "train" } else { "test" },
                shown(root),
                isizes[0]
            ),
        })
    }
}

impl Dataset for FashionMnist {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn sample(&self, index: usize, epoch: u64) -> Result<Sample, String> {
        let label = self.labels[index] as usize;
        let pixels = &self.images[index * 784..(index + 1) * 784];
        // A template per sample and epoch, drawn from the seed.
        let template = if self.templates.len() == 1 {
            &self.templates[0]
        } else {
            let mut rng = Rng::derive(
                self.seed ^ epoch.wrapping_mul(0x2545_F491),
                &format!("template:{index}"),
            );
            &self.templates[rng.below(self.templates.len())]
        };
        Ok(Sample {
            image: Rgb::from_grey(28, 28, pixels),
            caption: template.replace("{}", &self.classes[label]),
            label: Some(label),
            image_id: None,
        })
    }

    fn classes(&self) -> Option<&[String]> {
        Some(&self.classes)
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}
