//! BERT-family text towers against Hugging Face transformers: a tiny random `BertModel` and a
//! tiny random `XLMRobertaModel` with their locally trained WordPiece and Unigram tokenizers
//! (fixtures and the script that made them: tests/fixtures/text_towers/). Checked: the
//! tokenizers' ids on ~300 strings each, the weights loading through the recipe's `bert(…)`,
//! every hidden state at the real tokens, and the mean-pooled output.

use kdc::engine::clip::{self, ModelParams, TextInputs};
use kdc::engine::exec::Executable;
use kdc::engine::graph::{Graph, InputKind};
use kdc::engine::weights;
use kdc::model::{ModelSpec, TextKind};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/fixtures/text_towers")
}

/// The model a recipe declares with the fixture's text tower (`family` "bert" or "roberta").
fn spec(folder: &str, family: &str, context: u64, vocab: u64, tokens: u64) -> ModelSpec {
    let text = format!(
        r#"m = clip(
  image: vit(size: 16, patch: 8, width: 32, layers: 1, heads: 2),
  text: bert(family: "{family}", context: {context}, vocab: {vocab}, width: 32, layers: 2, heads: 4, mlp: 64,
             weights: "{folder}", frozen),
  embed: 16,
  tokenizer: tokenizer(file: "{folder}/tokenizer.json", context: {tokens}),
)
data = synthetic(samples: 8, batch: 4)
loss = clip_loss(m)
train = adamw(lr: 1e-3) | steps(1)
"#
    );
    let compiled = kdc::compile("towers.kd", &text, &kdc::FsLoader);
    assert!(
        !compiled.diagnostics.has_errors(),
        "{:?}",
        compiled.diagnostics
    );
    compiled.recipe.unwrap().models.remove(0)
}

fn check_tokenizer(spec: &ModelSpec, family: &str) {
    let tokenizer =
        kdc::tokenize::Tokenizer::load(&spec.tokenizer, &kdc::manifest::Base::new(fixtures()))
            .unwrap();
    let text = std::fs::read_to_string(fixtures().join("tokenizer_golden.jsonl")).unwrap();
    let mut checked = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["family"] != family {
            continue;
        }
        let want: Vec<u32> = serde_json::from_value(v["ids"].clone()).unwrap();
        let got = tokenizer.encode(v["text"].as_str().unwrap());
        let n = got.mask.iter().filter(|&&m| m == 1).count();
        assert_eq!(&got.ids[..n], &want[..], "{family}: {:?}", v["text"]);
        checked += 1;
    }
    assert!(checked >= 250, "{family}: only {checked} golden strings");
}

/// Runs the text tower on the fixture's ids and compares with transformers.
fn check_tower(spec: &ModelSpec, prefix: &str) {
    let expected = weights::read_safetensors(&fixtures().join("expected.safetensors")).unwrap();
    let get = |name: &str| &expected[&format!("{prefix}.{name}")];
    let (b, l) = (8usize, 16usize);
    let mask = &get("attention_mask").1;
    // The tokenizer pads like transformers: the first padding id is the vocabulary's.
    let tokenizer =
        kdc::tokenize::Tokenizer::load(&spec.tokenizer, &kdc::manifest::Base::new(fixtures()))
            .unwrap();
    let pad = tokenizer.encode("").ids[l - 1] as f32;
    for (i, (&id, &m)) in get("input_ids").1.iter().zip(mask).enumerate() {
        if m == 0.0 {
            assert_eq!(id, pad, "padding id at {i}");
        }
    }

    let mut g = Graph::default();
    let params = ModelParams::new(&mut g, spec, |_, _| false);
    let owner = || spec.name.clone();
    let ids = g.input(InputKind::Ids { model: owner() }, vec![b, l]);
    let mask_in = g.input(InputKind::Mask { model: owner() }, vec![b, l]);
    let text = clip::text(
        &mut g,
        spec,
        &params,
        &TextInputs {
            ids,
            eot: None,
            mask: Some(mask_in),
        },
    );
    let mut outputs = text.hidden.clone();
    outputs.push(text.pooled);
    let values = weights::model_values(spec, &kdc::manifest::Base::new(fixtures()))
        .expect("the fixture's weights load");
    let mut set = Vec::new();
    for (name, &id) in &params.by_name {
        let kdc::engine::graph::Op::Param(p) = g.nodes[id].op else {
            unreachable!()
        };
        if let Some(v) = values.get(name) {
            set.push((p, v.clone()));
        }
    }
    let mut exec = Executable::from_graph(g, &outputs);
    for (p, v) in &set {
        exec.set_param(*p, v);
    }
    let index = exec
        .input_index(&InputKind::Ids { model: owner() })
        .unwrap();
    exec.set_input(index, &get("input_ids").1);
    let index = exec
        .input_index(&InputKind::Mask { model: owner() })
        .unwrap();
    exec.set_input(index, mask);
    let results = exec.run();

    let width = 32;
    let mut worst = 0.0f32;
    for (k, got) in results[..text.hidden.len()].iter().enumerate() {
        let name = if k + 1 == text.hidden.len() {
            "last_hidden_state".to_string()
        } else {
            format!("hidden_states.{k}")
        };
        let want = &get(&name).1;
        assert_eq!(got.len(), want.len(), "{prefix}.{name}");
        let scale = want.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        // Real tokens only: RoBERTa gives padding the padding index as its position, which
        // never reaches a real token or the pooled output.
        for (t, &m) in mask.iter().enumerate() {
            if m == 0.0 {
                continue;
            }
            let row = t * width..(t + 1) * width;
            for (x, y) in got[row.clone()].iter().zip(&want[row]) {
                let d = (x - y).abs() / scale;
                worst = worst.max(d);
                assert!(
                    d < 1e-5,
                    "{prefix}.{name}: relative difference {d} at token {t}"
                );
            }
        }
    }
    let pooled = results.last().unwrap();
    let want = &get("mean_pooled").1;
    let scale = want.iter().fold(0.0f32, |a, x| a.max(x.abs()));
    for (x, y) in pooled.iter().zip(want) {
        let d = (x - y).abs() / scale;
        worst = worst.max(d);
        assert!(d < 1e-5, "{prefix}.mean_pooled: relative difference {d}");
    }
    assert!(worst > 0.0, "suspiciously exact");
    eprintln!("{prefix}: worst relative difference {worst:.2e}");
}

#[test]
fn a_bert_tower_matches_transformers() {
    let spec = spec("bert_tiny", "bert", 64, 520, 16);
    assert_eq!(spec.text.kind, TextKind::Bert);
    check_tokenizer(&spec, "bert");
    check_tower(&spec, "bert");
}

#[test]
fn an_xlm_roberta_tower_matches_transformers() {
    // 66 positions: 64 tokens after the offset of 2.
    let spec = spec("xlmr_tiny", "roberta", 66, 939, 16);
    assert_eq!(spec.text.kind, TextKind::Roberta);
    check_tokenizer(&spec, "xlmr");
    check_tower(&spec, "xlmr");
}

#[test]
fn the_wrong_family_is_caught() {
    // Reading XLM-R's weights as a BERT: its one-row token-type table does not fit, and the
    // error names it.
    let spec = spec("xlmr_tiny", "bert", 66, 939, 16);
    let err = weights::model_values(&spec, &kdc::manifest::Base::new(fixtures()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("token_type_embeddings"), "{err}");
}
