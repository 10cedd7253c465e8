//! Turning captions into the token ids a model's text tower reads: CLIP's byte-level BPE
//! (exactly open_clip's ids, including its text cleaning) or any Hugging Face
//! `tokenizer.json` (WordPiece for BERT-family towers, Unigram for XLM-R), each padded or cut
//! to the tower's context as its reference implementation does.

pub mod clean;
pub mod clip_bpe;

use crate::model::{TokenizerKind, TokenizerSpec};
use clip_bpe::ClipBpe;

/// A model's tokenizer, ready to encode captions.
pub enum Tokenizer {
    Clip {
        bpe: ClipBpe,
        context: usize,
    },
    File {
        inner: Box<tokenizers::Tokenizer>,
        context: usize,
        pad: u32,
    },
}

/// One caption as a text tower reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// `context` ids, padded.
    pub ids: Vec<u32>,
    /// 1 for each real token, 0 for padding.
    pub mask: Vec<u32>,
    /// Where a CLIP text tower pools: the end-of-text token's position.
    pub eot: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Bpe(#[from] clip_bpe::BpeError),
    #[error("cannot read the BPE vocabulary {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot load the tokenizer {path}: {message}")]
    File { path: String, message: String },
    #[error(
        "the model's tokenizer names no tokenizer.json file; give `tokenizer: tokenizer(file: …)`"
    )]
    NoFile,
}

impl Tokenizer {
    /// The tokenizer a model's spec describes; relative paths resolve against `base`.
    pub fn load(
        spec: &TokenizerSpec,
        base: &crate::manifest::Base,
    ) -> Result<Tokenizer, TokenizerError> {
        let context = spec.context as usize;
        match spec.kind {
            TokenizerKind::ClipBpe => {
                let bpe = match &spec.path {
                    None => ClipBpe::default_vocab(),
                    Some(p) => {
                        let path = base.join(p);
                        let bytes = std::fs::read(&path).map_err(|source| TokenizerError::Io {
                            path: path.display().to_string(),
                            source,
                        })?;
                        ClipBpe::from_gz(&bytes)?
                    }
                };
                Ok(Tokenizer::Clip { bpe, context })
            }
            TokenizerKind::File => {
                let path = base.join(spec.path.as_ref().ok_or(TokenizerError::NoFile)?);
                let inner =
                    tokenizers::Tokenizer::from_file(&path).map_err(|e| TokenizerError::File {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?;
                Ok(Tokenizer::from_hf(inner, context))
            }
        }
    }

    /// A Hugging Face tokenizer cut and padded to `context`, as `transformers` does with
    /// `truncation=True, padding="max_length"`.
    pub fn from_hf(mut inner: tokenizers::Tokenizer, context: usize) -> Tokenizer {
        // The padding id: the file's padding section, else BERT's `[PAD]` or RoBERTa's
        // `<pad>` (XLM-R pads with 1; 0 is its `<s>`), else 0.
        let pad = match inner.get_padding() {
            Some(p) => Some(p.pad_id),
            None => inner
                .token_to_id("[PAD]")
                .or_else(|| inner.token_to_id("<pad>")),
        }
        .unwrap_or(0);
        inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: context,
                ..Default::default()
            }))
            .expect("a valid truncation");
        inner.with_padding(None);
        Tokenizer::File {
            inner: Box::new(inner),
            context,
            pad,
        }
    }

    /// How many ids the tokenizer can produce (a text tower's vocabulary must cover them).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Clip { bpe, .. } => bpe.vocab_size(),
            Tokenizer::File { inner, .. } => inner.get_vocab_size(true),
        }
    }

    pub fn context(&self) -> usize {
        match self {
            Tokenizer::Clip { context, .. } | Tokenizer::File { context, .. } => *context,
        }
    }

    pub fn encode(&self, text: &str) -> Encoded {
        match self {
            Tokenizer::Clip { bpe, context } => {
                let ids = bpe.tokenize(text, *context);
                let eot = ids
                    .iter()
                    .position(|&i| i == bpe.end_of_text)
                    .expect("an end-of-text id is always kept");
                let mask = (0..*context).map(|i| u32::from(i <= eot)).collect();
                Encoded { ids, mask, eot }
            }
            Tokenizer::File {
                inner,
                context,
                pad,
            } => {
                let encoding = inner
                    .encode(text, true)
                    .unwrap_or_else(|_| inner.encode("", true).expect("an empty text encodes"));
                let mut ids: Vec<u32> = encoding.get_ids().to_vec();
                let n = ids.len().min(*context);
                ids.truncate(*context);
                ids.resize(*context, *pad);
                let mask = (0..*context).map(|i| u32::from(i < n)).collect();
                Encoded {
                    ids,
                    mask,
                    eot: n.saturating_sub(1),
                }
            }
        }
    }
}
