//! kdc's tokenizers against golden ids made by the reference implementations
//! (tests/fixtures/tokenizer/make_golden.py): open_clip's SimpleTokenizer for CLIP's BPE, and
//! transformers for the all-MiniLM-L6-v2 WordPiece tokenizer.json. Every string must match
//! exactly: ImageNet prompts, prose, long texts cut at the context, CJK, emoji, HTML entities,
//! accents, unusual white space, fullwidth forms and random mixtures.

use kdc::tokenize::clip_bpe::ClipBpe;
use kdc::tokenize::Tokenizer;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Golden {
    text: String,
    clip: Vec<u32>,
    minilm: Vec<u32>,
}

fn golden() -> Vec<Golden> {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/tokenizer/golden.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids = |k: &str| -> Vec<u32> {
                v[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            };
            Golden {
                text: v["text"].as_str().unwrap().to_string(),
                clip: ids("clip"),
                minilm: ids("minilm"),
            }
        })
        .collect()
}

/// Lists the first few mismatches, so a failure says what differs.
fn report(failures: &[(String, Vec<u32>, Vec<u32>)], total: usize, what: &str) {
    if failures.is_empty() {
        return;
    }
    let shown: Vec<String> = failures
        .iter()
        .take(10)
        .map(|(t, want, got)| format!("{t:?}\n  want {want:?}\n  got  {got:?}"))
        .collect();
    panic!(
        "{what}: {} of {total} strings differ:\n{}",
        failures.len(),
        shown.join("\n")
    );
}

#[test]
fn clip_bpe_matches_open_clip_on_the_golden_set() {
    let golden = golden();
    assert!(golden.len() >= 2000, "{} golden strings", golden.len());
    assert!(
        golden.iter().filter(|g| g.clip.len() == 77).count() >= 100,
        "long texts are covered"
    );
    let bpe = ClipBpe::default_vocab();
    assert_eq!(bpe.vocab_size(), 49408);
    let mut failures = Vec::new();
    for g in &golden {
        let mut got = bpe.tokenize(&g.text, 77);
        while got.last() == Some(&0) {
            got.pop();
        }
        if got != g.clip {
            failures.push((g.text.clone(), g.clip.clone(), got));
        }
    }
    report(&failures, golden.len(), "CLIP BPE");
}

#[test]
fn wordpiece_matches_transformers_on_the_golden_set() {
    let golden = golden();
    let inner =
        tokenizers::Tokenizer::from_file(root().join("tests/fixtures/minilm/tokenizer.json"))
            .unwrap();
    let tokenizer = Tokenizer::from_hf(inner, 32);
    let mut failures = Vec::new();
    for g in &golden {
        let encoded = tokenizer.encode(&g.text);
        let n = encoded.mask.iter().filter(|&&m| m == 1).count();
        let got = encoded.ids[..n].to_vec();
        assert!(
            encoded.ids[n..].iter().all(|&i| i == 0),
            "padding with [PAD] (0)"
        );
        if got != g.minilm {
            failures.push((g.text.clone(), g.minilm.clone(), got));
        }
    }
    report(&failures, golden.len(), "WordPiece");
}

#[test]
fn a_clip_caption_pools_at_its_end_of_text() {
    let bpe = ClipBpe::default_vocab();
    let t = Tokenizer::Clip { bpe, context: 8 };
    let e = t.encode("a photo of a dog.");
    assert_eq!(e.ids, vec![49406, 320, 1125, 539, 320, 1929, 269, 49407]);
    assert_eq!(e.eot, 7);
    let long = t.encode("one two three four five six seven eight nine ten");
    assert_eq!(
        long.ids[7], 49407,
        "the end mark is kept when a caption is cut"
    );
    assert_eq!(long.eot, 7);
    let short = t.encode("cat");
    assert_eq!(short.eot, 2);
    assert_eq!(short.mask, vec![1, 1, 1, 0, 0, 0, 0, 0]);
}
