//! Image-caption pairs listed in a CSV/TSV file (open_clip's `--csv-img-key`,
//! `--csv-caption-key`, `--csv-separator`), and image folders with one folder per class
//! (ImageNet's layout) captioned from a template.

use super::image::Rgb;
use super::{shown, DataError, Dataset, Sample};
use std::path::{Path, PathBuf};

pub struct Pairs {
    /// Every row in file order: its image and caption, or why it cannot be used (a malformed
    /// row stays a sample that fails, so the loader skips, counts and reports it).
    rows: Vec<Result<(PathBuf, String), String>>,
    /// The malformed rows, with why (as their samples report it).
    pub malformed: Vec<String>,
    what: String,
}

impl Pairs {
    /// Reads the file's header and rows; image paths are relative to the file's folder.
    pub fn open(
        csv: &Path,
        image_key: &str,
        caption_key: &str,
        sep: char,
    ) -> Result<Pairs, DataError> {
        let bytes = std::fs::read(csv).map_err(|e| DataError::Read {
            path: shown(csv),
            message: e.to_string(),
        })?;
        let mut reader = ::csv::ReaderBuilder::new()
            .delimiter(sep as u8)
            .flexible(true)
            .from_reader(&bytes[..]);
        let header = reader
            .headers()
            .map_err(|e| DataError::Format {
                path: shown(csv),
                message: e.to_string(),
            })?
            .clone();
        let column = |key: &str| {
            header
                .iter()
                .position(|h| h == key)
                .ok_or_else(|| DataError::Format {
                    path: shown(csv),
                    message: format!(
                        "no column `{key}`; the columns are {}",
                        header
                            .iter()
                            .map(|h| format!("`{h}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
        };
        let (ic, cc) = (column(image_key)?, column(caption_key)?);
        let dir = csv.parent().unwrap_or(Path::new("."));
        let mut rows = Vec::new();
        let mut malformed = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let line = record
                .as_ref()
                .ok()
                .and_then(|r| r.position())
                .map_or(i as u64 + 2, |p| p.line());
            let row = match record {
                Ok(r) if r.len() != header.len() => Err(format!(
                    "{} fields where the header has {}",
                    r.len(),
                    header.len()
                )),
                Ok(r) => match (r.get(ic), r.get(cc)) {
                    (Some(image), _) if image.trim().is_empty() => {
                        Err(format!("no image in column `{image_key}`"))
                    }
                    (_, Some(caption)) if caption.trim().is_empty() => {
                        Err(format!("an empty caption in column `{caption_key}`"))
                    }
                    (Some(image), Some(caption)) => Ok((dir.join(image), caption.to_string())),
                    _ => Err("missing the image or caption column".to_string()),
                },
                Err(e) => Err(e.to_string()),
            }
            .map_err(|why| format!("{}:{line}: {why}", shown(csv)));
            if let Err(why) = &row {
                malformed.push(why.clone());
            }
            rows.push(row);
        }
        let bad = if malformed.is_empty() {
            String::new()
        } else {
            format!(", {} malformed rows", malformed.len())
        };
        Ok(Pairs {
            what: format!(
                "{} ({} pairs{bad})",
                shown(csv),
                rows.len() - malformed.len()
            ),
            rows,
            malformed,
        })
    }
}

fn read_image(path: &Path) -> Result<Rgb, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", shown(path)))?;
    Rgb::decode(&bytes).map_err(|e| format!("{}: {e}", shown(path)))
}

impl Dataset for Pairs {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn sample(&self, index: usize, _epoch: u64) -> Result<Sample, String> {
        let (path, caption) = self.rows[index].as_ref().map_err(Clone::clone)?;
        Ok(Sample {
            image: read_image(path)?,
            caption: caption.clone(),
            label: None,
            image_id: Some(path.display().to_string()),
        })
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// One folder per class under a root; a class's name is its folder's name with `_` as a
/// space (ImageNet's synset folders are named through `classnames.txt` in the root, one
/// name per line in sorted folder order, when it is there).
pub struct Folders {
    files: Vec<(PathBuf, usize)>,
    classes: Vec<String>,
    template: String,
    what: String,
}

impl Folders {
    pub fn open(root: &Path, template: &str) -> Result<Folders, DataError> {
        let read = |p: &Path| {
            std::fs::read_dir(p).map_err(|e| DataError::Read {
                path: shown(p),
                message: e.to_string(),
            })
        };
        let mut dirs: Vec<PathBuf> = read(root)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        if dirs.is_empty() {
            return Err(DataError::Format {
                path: shown(root),
                message: "no class folders".into(),
            });
        }
        let names_file = root.join("classnames.txt");
        let classes: Vec<String> = if names_file.exists() {
            let text = std::fs::read_to_string(&names_file).map_err(|e| DataError::Read {
                path: shown(&names_file),
                message: e.to_string(),
            })?;
            let names: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if names.len() != dirs.len() {
                return Err(DataError::Format {
                    path: shown(&names_file),
                    message: format!("{} names for {} class folders", names.len(), dirs.len()),
                });
            }
            names
        } else {
            dirs.iter()
                .map(|d| d.file_name().unwrap().to_string_lossy().replace('_', " "))
                .collect()
        };
        let mut files = Vec::new();
        for (label, dir) in dirs.iter().enumerate() {
            let mut in_class: Vec<PathBuf> = read(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        matches!(
                            e.to_ascii_lowercase().as_str(),
                            "jpg" | "jpeg" | "png" | "webp"
                        )
                    })
                })
                .collect();
            in_class.sort();
            files.extend(in_class.into_iter().map(|p| (p, label)));
        }
        Ok(Folders {
            what: format!(
                "{} ({} images, {} classes)",
                shown(root),
                files.len(),
                classes.len()
            ),
            files,
            classes,
            template: template.to_string(),
        })
    }
}

impl Dataset for Folders {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn sample(&self, index: usize, _epoch: u64) -> Result<Sample, String> {
        let (path, label) = &self.files[index];
        Ok(Sample {
            image: read_image(path)?,
            caption: self.template.replace("{}", &self.classes[*label]),
            label: Some(*label),
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
