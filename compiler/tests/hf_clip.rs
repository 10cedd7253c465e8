//! The engine's CLIP towers reproduce a tiny random Hugging Face `CLIPModel` (fixture made by
//! tests/fixtures/make_fixtures.py with transformers): every hidden state, the pooled outputs
//! and the projected embeddings, within 1e-4.

use kdc::engine::clip::{self, ModelParams, TextInputs};
use kdc::engine::exec::Executable;
use kdc::engine::graph::{Graph, InputKind};
use kdc::engine::weights;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The fixture's model as a recipe describes it (the teacher of demo/clip_kd_small.kd).
fn spec() -> kdc::model::ModelSpec {
    let path = root().join("recipes/demo/clip_kd_small.kd");
    let text = std::fs::read_to_string(&path).unwrap();
    let compiled = kdc::compile(path.to_str().unwrap(), &text, &kdc::FsLoader);
    let recipe = compiled.recipe.expect("the small recipe checks");
    recipe
        .models
        .into_iter()
        .find(|m| m.name == "teacher")
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn towers_match_hugging_face() {
    let spec = spec();
    let dir = root().join("tests/fixtures/hf_clip_tiny");
    let model = weights::read_safetensors(&dir.join("model.safetensors")).unwrap();
    let io = weights::read_safetensors(&dir.join("io.safetensors")).unwrap();
    let (b, l) = (3usize, 16usize);

    let mut g = Graph::default();
    let params = ModelParams::new(&mut g, &spec, |_, _| false);
    let owner = || spec.name.clone();
    let pixels = g.input(InputKind::Pixels { model: owner() }, vec![b, 3, 32, 32]);
    let ids = g.input(InputKind::Ids { model: owner() }, vec![b, l]);
    let eot = g.input(InputKind::Eot { model: owner() }, vec![b, 1]);
    let vision = clip::vision(&mut g, &spec, &params, pixels, None);
    let text = clip::text(
        &mut g,
        &spec,
        &params,
        &TextInputs {
            ids,
            eot: Some(eot),
            mask: None,
        },
    );
    let scale = clip::logit_scale(&mut g, &params);

    let mut checks: Vec<(String, usize)> = Vec::new();
    for (i, &h) in vision.hidden.iter().enumerate() {
        checks.push((format!("vision.hidden_states.{i}"), h));
    }
    for (i, &h) in text.hidden.iter().enumerate() {
        checks.push((format!("text.hidden_states.{i}"), h));
    }
    checks.push(("vision.pooler_output".into(), vision.pooled));
    checks.push(("text.pooler_output".into(), text.pooled));
    checks.push(("image_embeds_unnormalized".into(), vision.embed));
    checks.push(("text_embeds_unnormalized".into(), text.embed));
    checks.push(("logit_scale_exp".into(), scale));
    let outputs: Vec<usize> = checks.iter().map(|c| c.1).collect();
    let mut values = Vec::new();
    for (name, &id) in &params.by_name {
        let kdc::engine::graph::Op::Param(p) = g.nodes[id].op else {
            unreachable!()
        };
        let found = weights::find(&model, name, &g.params[p].shape)
            .unwrap_or_else(|| panic!("fixture lacks {name}"));
        values.push((p, found));
    }
    let mut exec = Executable::from_graph(g, &outputs);
    for (p, v) in &values {
        exec.set_param(*p, v);
    }
    for (kind, fixture) in [
        (InputKind::Pixels { model: owner() }, "pixel_values"),
        (InputKind::Ids { model: owner() }, "input_ids"),
        (InputKind::Eot { model: owner() }, "eot_positions"),
    ] {
        let index = exec.input_index(&kind).unwrap();
        exec.set_input(index, &io[fixture].1);
    }
    let results = exec.run();
    let mut worst = 0.0f32;
    for ((name, _), got) in checks.iter().zip(&results) {
        let expected = &io[name.as_str()].1;
        let d = max_diff(got, expected);
        worst = worst.max(d);
        assert!(d < 1e-4, "{name}: max |difference| {d}");
    }
    assert!(worst > 0.0, "suspiciously exact");
}

/// `engine::compile` with a forward-only target (what evaluation uses): the teacher's two
/// embeddings from the recipe, every parameter frozen, no backward pass, outputs by name.
#[test]
fn a_forward_only_graph_encodes_like_hugging_face() {
    use kdc::engine::compile::{self, Options};
    use kdc::engine::exec;
    use kdc::engine::lower::Output;
    use kdc::ir::Tap;

    let path = root().join("recipes/demo/clip_kd_small.kd");
    let text = std::fs::read_to_string(&path).unwrap();
    let recipe = kdc::compile(path.to_str().unwrap(), &text, &kdc::FsLoader)
        .recipe
        .unwrap();
    let teacher = recipe
        .models
        .iter()
        .position(|m| m.name == "teacher")
        .unwrap();
    let backend = kdc::engine::device::cpu();
    let options = Options::forward(vec![(teacher, Tap::Image), (teacher, Tap::Text)], 3);
    let compiled = compile::compile(&recipe, 0, &options, &**exec::lock(&backend));
    assert_eq!(
        compiled.built.backward, 0,
        "a forward graph has no backward pass"
    );
    assert!(compiled.grads().is_empty());
    assert!(compiled.graph.params.iter().all(|p| !p.trainable));
    assert!(compiled.terms.is_empty());

    let dir = root().join("tests/fixtures/hf_clip_tiny");
    let model = weights::read_safetensors(&dir.join("model.safetensors")).unwrap();
    let io = weights::read_safetensors(&dir.join("io.safetensors")).unwrap();
    let mut exec = Executable::new(compiled, backend).unwrap();
    let params = exec.compiled().graph.params.clone();
    for (p, param) in params.iter().enumerate() {
        let name = param.name.trim_start_matches("teacher/");
        let values = weights::find(&model, name, &param.shape).expect("fixture has it");
        exec.set_param(p, &values);
    }
    let inputs = exec.compiled().graph.inputs.clone();
    for (i, input) in inputs.iter().enumerate() {
        let fixture = match &input.kind {
            InputKind::Pixels { .. } => "pixel_values",
            InputKind::Ids { .. } => "input_ids",
            InputKind::Eot { .. } => "eot_positions",
            other => panic!("unexpected input {other}"),
        };
        exec.set_input(i, &io[fixture].1);
    }
    exec.execute();
    for (tap, fixture) in [
        ("teacher.image", "image_embeds_unnormalized"),
        ("teacher.text", "text_embeds_unnormalized"),
    ] {
        let got = exec.output(&Output::Tensor(tap.into()));
        let d = max_diff(&got, &io[fixture].1);
        assert!(d < 1e-4, "{tap}: max |difference| {d}");
    }
    assert!(exec.output_view(&Output::Loss).is_none());
}
