//! Webdataset shards: plain `.tar` files whose members are grouped into samples by key, as
//! open_clip's `--train-data` reads them (`data/shard-{00000..00999}.tar`, several patterns
//! joined by `::`).
//!
//! A member's key is its path up to the first dot of its file name, its extension the rest,
//! lower-cased (webdataset's convention); consecutive members with one key are one sample. The
//! image is the `jpg`, `png`, `jpeg` or `webp` member (open_clip's order), the caption the `txt`
//! member, else the `caption` (or `text`) field of the `json` member.
//!
//! Opening reads every shard's tar headers once (seeking over the contents, decoding nothing)
//! and keeps where each sample's image and caption lie, so a sample is read by index with two
//! seeks: shuffling stays seeded and a resumed run reads exactly what an uninterrupted one
//! would, as with the other sources. A sample without an image or a caption, with a member
//! cut off by a truncated shard, or whose image does not decode, is an error the loader skips
//! and counts; a missing or unreadable shard, or a pattern that names no shard, stops at open.

use super::image::Rgb;
use super::{shown, DataError, Dataset, Sample};
use rayon::prelude::*;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The most shards a pattern may name (LAION-5B has about 230 000).
pub const MAX_SHARDS: usize = 1_000_000;

/// Image members by preference: open_clip's `jpg;png;jpeg;webp`.
const IMAGE_EXTS: [&str; 4] = ["jpg", "png", "jpeg", "webp"];
/// A member larger than this is not an image or a caption.
const MAX_MEMBER: u64 = u32::MAX as u64;

// ------------------------------------------------------------------------------------------
// Shard patterns.

/// What is wrong with a shard pattern: a sentence, and the part of the pattern at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    pub message: String,
    pub part: String,
}

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One piece of a pattern: text, a `{a,b}` list of alternatives (each itself a pattern), or a
/// `{000..099}` range of whole numbers written `width` digits wide (0: as they come).
#[derive(Clone, Debug)]
enum Piece {
    Text(String),
    Choice(Vec<Vec<Piece>>),
    Range { from: u64, to: u64, width: usize },
}

fn error(message: impl Into<String>, part: impl Into<String>) -> PatternError {
    PatternError {
        message: message.into(),
        part: part.into(),
    }
}

/// Parses one `::`-free pattern.
fn parse(pattern: &str) -> Result<Vec<Piece>, PatternError> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut at = 0;
    let pieces = sequence(&chars, &mut at, false)?;
    debug_assert_eq!(at, chars.len());
    Ok(pieces)
}

/// Pieces up to the end, or (inside braces) up to the `,` or `}` that ends an alternative.
fn sequence(chars: &[char], at: &mut usize, inside: bool) -> Result<Vec<Piece>, PatternError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    while *at < chars.len() {
        match chars[*at] {
            ',' | '}' if inside => break,
            '}' => {
                return Err(error(
                    "a `}` closes no `{`",
                    chars[..=*at].iter().collect::<String>(),
                ))
            }
            '{' => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(group(chars, at)?);
            }
            c => {
                text.push(c);
                *at += 1;
            }
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// A `{…}` group starting at `chars[*at]`.
fn group(chars: &[char], at: &mut usize) -> Result<Piece, PatternError> {
    let open = *at;
    *at += 1;
    let mut alternatives = Vec::new();
    loop {
        let start = *at;
        let alternative = sequence(chars, at, true)?;
        let written: String = chars[start..*at].iter().collect();
        alternatives.push((alternative, written));
        match chars.get(*at) {
            Some(',') => *at += 1,
            Some('}') => {
                *at += 1;
                break;
            }
            _ => {
                return Err(error(
                    "a `{` is never closed by a `}`",
                    chars[open..].iter().collect::<String>(),
                ))
            }
        }
    }
    let whole: String = chars[open..*at].iter().collect();
    if alternatives.len() == 1 {
        let (_, written) = &alternatives[0];
        if written.is_empty() {
            return Err(error("`{}` lists nothing", whole));
        }
        if let Some((from, to)) = written.split_once("..") {
            return range(from, to, &whole);
        }
    }
    if alternatives.iter().any(|(_, w)| w.is_empty()) {
        return Err(error(format!("`{whole}` has an empty alternative"), whole));
    }
    Ok(Piece::Choice(
        alternatives.into_iter().map(|(a, _)| a).collect(),
    ))
}

/// `{from..to}`: whole numbers, ascending; zero-padded when either bound is (braceexpand's
/// rule: `{000..123}` is 000, 001, …, 123).
fn range(from: &str, to: &str, whole: &str) -> Result<Piece, PatternError> {
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (Some(a), Some(b)) = (number(from), number(to)) else {
        return Err(error(
            format!("the range `{whole}` needs whole numbers on both sides, as in {{000..099}}"),
            whole,
        ));
    };
    if a > b {
        return Err(error(
            format!("the range `{whole}` counts down; write the smaller number first ({{{to}..{from}}})"),
            whole,
        ));
    }
    let padded = |s: &str| s.len() > 1 && s.starts_with('0');
    let width = if padded(from) || padded(to) {
        from.len().max(to.len())
    } else {
        0
    };
    Ok(Piece::Range {
        from: a,
        to: b,
        width,
    })
}

/// How many strings `pieces` expand to, saturating.
fn count_of(pieces: &[Piece]) -> usize {
    pieces.iter().fold(1usize, |n, p| {
        let k = match p {
            Piece::Text(_) => 1,
            Piece::Choice(alternatives) => alternatives
                .iter()
                .fold(0usize, |s, a| s.saturating_add(count_of(a))),
            Piece::Range { from, to, .. } => {
                usize::try_from(to - from).map_or(usize::MAX, |d| d.saturating_add(1))
            }
        };
        n.saturating_mul(k)
    })
}

fn expand_pieces(pieces: &[Piece]) -> Vec<String> {
    let mut out = vec![String::new()];
    for p in pieces {
        let options: Vec<String> = match p {
            Piece::Text(t) => vec![t.clone()],
            Piece::Choice(alternatives) => {
                alternatives.iter().flat_map(|a| expand_pieces(a)).collect()
            }
            Piece::Range { from, to, width } => {
                (*from..=*to).map(|i| format!("{i:0width$}")).collect()
            }
        };
        out = out
            .iter()
            .flat_map(|prefix| options.iter().map(move |o| format!("{prefix}{o}")))
            .collect();
    }
    out
}

/// The patterns of a `::`-separated list, parsed, with how many paths they name in all.
fn parse_all(patterns: &str) -> Result<(Vec<Vec<Piece>>, usize), PatternError> {
    let mut parsed = Vec::new();
    let mut total = 0usize;
    for pattern in patterns.split("::") {
        if pattern.trim().is_empty() {
            return Err(error("an empty pattern beside `::`", "::"));
        }
        let pieces = parse(pattern)?;
        total = total.saturating_add(count_of(&pieces));
        parsed.push(pieces);
    }
    if total > MAX_SHARDS {
        return Err(error(
            format!("the pattern names more than {MAX_SHARDS} shards"),
            patterns,
        ));
    }
    Ok((parsed, total))
}

/// How many paths a shard pattern names, or what is wrong with it, without expanding it.
pub fn count(patterns: &str) -> Result<usize, PatternError> {
    parse_all(patterns).map(|(_, n)| n)
}

/// The paths a shard pattern names, in order: `::` separates patterns, `{a,b}` lists
/// alternatives (which may nest), `{000..099}` is a range of whole numbers keeping the
/// zero-padded width, as open_clip's `--train-data` (braceexpand) reads them.
pub fn expand(patterns: &str) -> Result<Vec<String>, PatternError> {
    let (parsed, total) = parse_all(patterns)?;
    let mut out = Vec::with_capacity(total);
    for pieces in &parsed {
        out.extend(expand_pieces(pieces));
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------
// Shards.

/// Where a member's contents lie in its shard.
#[derive(Clone, Copy, Debug)]
struct Member {
    offset: u64,
    len: u32,
}

/// One sample: its shard, its key (a range of `WebDataset::keys`), and either where its image
/// and caption are or why it cannot be read.
#[derive(Debug)]
struct Entry {
    shard: u32,
    key: (usize, u32),
    what: Result<Parts, Box<str>>,
}

#[derive(Debug)]
struct Parts {
    image: Member,
    image_ext: &'static str,
    caption: Member,
    /// The caption is the `json` member's `caption` (or `text`) field, not a `txt` member.
    json: bool,
}

pub struct WebDataset {
    shards: Vec<PathBuf>,
    entries: Vec<Entry>,
    /// Every sample's key, one after another.
    keys: String,
    what: String,
}

/// The key and lower-cased extension of a member (webdataset's `base_plus_ext`): the path up
/// to the first dot of the file name, and the rest. None for names without both.
pub fn key_and_extension(path: &str) -> Option<(&str, String)> {
    let name_start = path.rfind('/').map_or(0, |i| i + 1);
    let dot = path[name_start..].find('.')? + name_start;
    if dot == name_start || dot + 1 == path.len() {
        return None;
    }
    Some((&path[..dot], path[dot + 1..].to_ascii_lowercase()))
}

/// A shard's samples: (key, members as (extension, where)), grouped as they follow each other.
type Group = (String, Vec<(String, u64, u64)>);

/// Reads a shard's headers (seeking over the contents).
fn scan(path: &Path) -> Result<(Vec<Group>, u64), DataError> {
    let read_error = |e: std::io::Error| DataError::Read {
        path: shown(path),
        message: e.to_string(),
    };
    let mut file = File::open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    let mut magic = [0u8; 2];
    if size >= 2 {
        file.read_exact(&mut magic).map_err(read_error)?;
        if magic == [0x1f, 0x8b] {
            return Err(DataError::Format {
                path: shown(path),
                message: "a gzip-compressed shard; samples are read by seeking, so shards must \
                          be plain .tar files (gunzip them)"
                    .into(),
            });
        }
        file.seek(SeekFrom::Start(0)).map_err(read_error)?;
    }
    // Unbuffered: each header is one 512-byte read and each member one seek, so a shard of
    // large images costs a few bytes per member, not a buffer's worth.
    let mut archive = tar::Archive::new(file);
    let corrupt = |e: std::io::Error| DataError::Format {
        path: shown(path),
        message: format!("not a readable tar file: {e}"),
    };
    let mut groups: Vec<Group> = Vec::new();
    for entry in archive.entries_with_seek().map_err(corrupt)? {
        let entry = entry.map_err(corrupt)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some((key, ext)) = key_and_extension(&name) else {
            continue;
        };
        let member = (ext, entry.raw_file_position(), entry.size());
        match groups.last_mut() {
            Some((k, members)) if k == key => members.push(member),
            _ => groups.push((key.to_string(), vec![member])),
        }
    }
    Ok((groups, size))
}

/// Where a sample's image and caption are, or why it cannot be read.
fn parts(key: &str, members: &[(String, u64, u64)], shard_size: u64) -> Result<Parts, String> {
    for (i, (ext, _, _)) in members.iter().enumerate() {
        if members[..i].iter().any(|(e, _, _)| e == ext) {
            return Err(format!("two members named {key}.{ext}"));
        }
    }
    let find = |ext: &str| members.iter().find(|(e, _, _)| e == ext);
    let member = |(ext, offset, len): &(String, u64, u64)| -> Result<Member, String> {
        if offset + len > shard_size {
            return Err(format!(
                "the shard ends inside {key}.{ext} (it is truncated)"
            ));
        }
        if *len > MAX_MEMBER {
            return Err(format!("{key}.{ext} is too large ({len} bytes)"));
        }
        Ok(Member {
            offset: *offset,
            len: *len as u32,
        })
    };
    let exts = || {
        members
            .iter()
            .map(|(e, _, _)| e.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some((image_ext, image)) = IMAGE_EXTS.iter().find_map(|e| find(e).map(|m| (*e, m))) else {
        return Err(format!(
            "no image (jpg, png, jpeg or webp) among its members ({})",
            exts()
        ));
    };
    let (caption, json) = match (find("txt"), find("json")) {
        (Some(t), _) => (t, false),
        (None, Some(j)) => (j, true),
        (None, None) => {
            return Err(format!(
                "no caption (txt or json) among its members ({})",
                exts()
            ))
        }
    };
    Ok(Parts {
        image: member(image)?,
        image_ext,
        caption: member(caption)?,
        json,
    })
}

impl WebDataset {
    /// Expands `patterns`, resolves relative paths against `base`, and indexes every shard.
    pub fn open(patterns: &str, base: &crate::manifest::Base) -> Result<WebDataset, DataError> {
        let paths = expand(patterns).map_err(|e| DataError::Format {
            path: patterns.to_string(),
            message: e.message,
        })?;
        if paths.is_empty() {
            return Err(DataError::NotFound(format!(
                "the pattern {patterns} names no shard"
            )));
        }
        let shards: Vec<PathBuf> = paths.iter().map(|p| base.join(p)).collect();
        let missing: Vec<&PathBuf> = shards.iter().filter(|p| !p.is_file()).collect();
        if let Some(first) = missing.first() {
            let message = if first.exists() {
                "not a file".to_string()
            } else if missing.len() == 1 {
                "no such file".to_string()
            } else {
                format!(
                    "no such file ({} of the {} shards of {patterns} are missing)",
                    missing.len(),
                    shards.len()
                )
            };
            return Err(DataError::Read {
                path: shown(first),
                message,
            });
        }
        let scanned: Vec<Result<(Vec<Group>, u64), DataError>> =
            shards.par_iter().map(|p| scan(p)).collect();
        let mut entries = Vec::new();
        let mut keys = String::new();
        let mut bad = 0;
        for (shard, result) in scanned.into_iter().enumerate() {
            let (groups, size) = result?;
            for (key, members) in groups {
                let what = parts(&key, &members, size).map_err(String::into_boxed_str);
                bad += what.is_err() as usize;
                entries.push(Entry {
                    shard: shard as u32,
                    key: (keys.len(), key.len() as u32),
                    what,
                });
                keys.push_str(&key);
            }
        }
        if entries.is_empty() {
            return Err(DataError::Format {
                path: patterns.to_string(),
                message: format!("no samples in its {} shard(s)", shards.len()),
            });
        }
        let unusable = if bad > 0 {
            format!(", {bad} without a usable image or caption")
        } else {
            String::new()
        };
        Ok(WebDataset {
            what: format!(
                "{patterns} ({} samples{unusable}, {} shard{})",
                entries.len(),
                shards.len(),
                if shards.len() == 1 { "" } else { "s" }
            ),
            shards,
            entries,
            keys,
        })
    }

    /// The shards, as the pattern names them (resolved).
    pub fn shards(&self) -> &[PathBuf] {
        &self.shards
    }

    /// Sample `index`'s key.
    pub fn key(&self, index: usize) -> &str {
        let (start, len) = self.entries[index].key;
        &self.keys[start..start + len as usize]
    }
}

fn read_member(file: &mut File, m: Member) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(m.offset))?;
    let mut bytes = vec![0; m.len as usize];
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The caption in a `json` member: its `caption` field, else its `text` field.
fn json_caption(bytes: &[u8]) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    ["caption", "text"]
        .iter()
        .find_map(|f| value.get(f).and_then(|v| v.as_str()).map(String::from))
        .ok_or_else(|| "no \"caption\" or \"text\" string".to_string())
}

impl Dataset for WebDataset {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn sample(&self, index: usize, _epoch: u64) -> Result<Sample, String> {
        let entry = &self.entries[index];
        let shard = &self.shards[entry.shard as usize];
        let key = self.key(index);
        let at = |what: &str| format!("{}: {key}{what}", shown(shard));
        let parts = entry.what.as_ref().map_err(|why| at(&format!(": {why}")))?;
        let mut file = File::open(shard).map_err(|e| at(&format!(": {e}")))?;
        let caption_ext = if parts.json { "json" } else { "txt" };
        let caption = read_member(&mut file, parts.caption)
            .map_err(|e| at(&format!(".{caption_ext}: {e}")))?;
        let caption = if parts.json {
            json_caption(&caption)
        } else {
            String::from_utf8(caption).map_err(|_| "not UTF-8 text".to_string())
        }
        .map_err(|e| at(&format!(".{caption_ext}: {e}")))?;
        let caption = caption.trim();
        if caption.is_empty() {
            return Err(at(&format!(".{caption_ext}: an empty caption")));
        }
        let image = read_member(&mut file, parts.image)
            .map_err(|e| at(&format!(".{}: {e}", parts.image_ext)))?;
        let image = Rgb::decode(&image).map_err(|e| at(&format!(".{}: {e}", parts.image_ext)))?;
        Ok(Sample {
            image,
            caption: caption.to_string(),
            label: None,
            image_id: None,
        })
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}
