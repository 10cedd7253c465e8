//! CLIP's byte-level BPE, built from open_clip's merges file: the vocabulary is the 256 byte
//! symbols, the same with the end-of-word mark `</w>`, one symbol per merge (48 894 of them),
//! then `<start_of_text>` and `<end_of_text>` — 49 408 ids. A caption is cleaned
//! ([`super::clean::clean_lower`]), split into words by open_clip's pattern, each word's UTF-8
//! bytes mapped to printable symbols and merged by the BPE model of the `tokenizers` crate.

use regex::Regex;
use std::io::Read;
use tokenizers::models::bpe::BPE;
use tokenizers::Model;

/// The merges file open_clip ships, vendored (MIT; see assets/LICENSE-bpe_simple_vocab_16e6.txt).
pub const DEFAULT_VOCAB: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// The number of merges CLIP uses (the file has more).
const MERGES: usize = 49152 - 256 - 2;

pub struct ClipBpe {
    model: BPE,
    pattern: Regex,
    byte_symbol: [char; 256],
    pub start_of_text: u32,
    pub end_of_text: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BpeError {
    #[error("cannot read the BPE vocabulary: {0}")]
    Read(String),
    #[error("the BPE vocabulary is malformed: {0}")]
    Format(String),
}

impl ClipBpe {
    /// From a gzipped merges file (open_clip's `bpe_simple_vocab_16e6.txt.gz`).
    pub fn from_gz(bytes: &[u8]) -> Result<ClipBpe, BpeError> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .map_err(|e| BpeError::Read(e.to_string()))?;
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() < MERGES + 1 {
            return Err(BpeError::Format(format!(
                "{} lines, CLIP needs {} merges after the header",
                lines.len(),
                MERGES
            )));
        }
        let merges: Vec<(String, String)> = lines[1..=MERGES]
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut parts = l.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                    _ => Err(BpeError::Format(format!(
                        "line {} is not a merge: {l:?}",
                        i + 2
                    ))),
                }
            })
            .collect::<Result<_, _>>()?;
        let byte_symbol = byte_symbols();
        // The vocabulary lists the printable bytes' symbols first, then the others'.
        let order: Vec<char> = (0..256u32)
            .filter(|&b| printable(b))
            .chain((0..256u32).filter(|&b| !printable(b)))
            .map(|b| byte_symbol[b as usize])
            .collect();
        let mut tokens: Vec<String> = order.iter().map(|c| c.to_string()).collect();
        tokens.extend(order.iter().map(|c| format!("{c}</w>")));
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.push("<start_of_text>".into());
        tokens.push("<end_of_text>".into());
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let model = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .end_of_word_suffix("</w>".into())
            .build()
            .map_err(|e| BpeError::Format(e.to_string()))?;
        // open_clip's pattern, applied to lower-cased text (its IGNORECASE then changes nothing).
        let pattern = Regex::new(
            r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .expect("a valid pattern");
        let n = tokens.len() as u32;
        Ok(ClipBpe {
            model,
            pattern,
            byte_symbol,
            start_of_text: n - 2,
            end_of_text: n - 1,
        })
    }

    /// The vendored vocabulary.
    pub fn default_vocab() -> ClipBpe {
        ClipBpe::from_gz(DEFAULT_VOCAB).expect("the vendored vocabulary is valid")
    }

    pub fn vocab_size(&self) -> usize {
        self.end_of_text as usize + 1
    }

    /// The ids of a caption, without start and end marks.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let cleaned = super::clean::clean_lower(text);
        let mut ids = Vec::new();
        for word in self.pattern.find_iter(&cleaned) {
            let word = word.as_str();
            if word == "<start_of_text>" {
                ids.push(self.start_of_text);
                continue;
            }
            if word == "<end_of_text>" {
                ids.push(self.end_of_text);
                continue;
            }
            let symbols: String = word.bytes().map(|b| self.byte_symbol[b as usize]).collect();
            let tokens = self
                .model
                .tokenize(&symbols)
                .expect("every byte symbol is in the vocabulary");
            ids.extend(tokens.iter().map(|t| t.id));
        }
        ids
    }

    /// open_clip's `tokenize`: start mark, the caption, end mark, cut to `context` (the end mark
    /// kept as the last id) and padded with 0.
    pub fn tokenize(&self, text: &str, context: usize) -> Vec<u32> {
        let mut ids = Vec::with_capacity(context);
        ids.push(self.start_of_text);
        ids.extend(self.encode(text));
        ids.push(self.end_of_text);
        if ids.len() > context {
            ids.truncate(context);
            ids[context - 1] = self.end_of_text;
        }
        ids.resize(context, 0);
        ids
    }
}

/// Bytes that stand for themselves in the byte-to-symbol map.
fn printable(b: u32) -> bool {
    (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes stand
/// for themselves, the others for U+0100 onwards in order.
fn byte_symbols() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        out[b as usize] = if printable(b) {
            char::from_u32(b).unwrap()
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap()
        };
    }
    out
}
