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
    let io = fixture("io.safetensors");
    let (exec, got) = teacher_embeddings(None);
    for (tap, fixture) in [
        ("teacher.image", "image_embeds_unnormalized"),
        ("teacher.text", "text_embeds_unnormalized"),
    ] {
        let d = max_diff(&got[tap], &io[fixture].1);
        assert!(d < 1e-4, "{tap}: max |difference| {d}");
    }
    let compiled = exec.compiled();
    assert_eq!(
        compiled.built.backward, 0,
        "a forward graph has no backward pass"
    );
    assert!(compiled.grads().is_empty());
    assert!(compiled.graph.params.iter().all(|p| !p.trainable));
    assert!(compiled.terms.is_empty());
    assert!(exec
        .output_view(&kdc::engine::lower::Output::Loss)
        .is_none());
}

/// bf16 autocast against PyTorch's own (`torch.autocast("cpu", dtype=torch.bfloat16)` on the
/// same model and inputs: tests/fixtures/make_autocast_fixture.py). The two round at a few
/// different places (PyTorch scales attention scores after their product and rounds each step
/// of quick_gelu; kdc scales the queries before it and rounds quick_gelu once), so their
/// rounding errors are of one size but not the same bits. What must hold: kdc's bf16
/// embeddings are within two bf16 ulps of PyTorch's; autocast moves kdc's embeddings away from
/// f32 about as far as it moves PyTorch's (neither less rounding nor more, such as a bf16
/// residual stream, would); and the two bf16 results are no further apart than two
/// independent bf16 roundings of one computation (the root of the sum of their squares).
#[test]
fn bf16_autocast_encodes_like_pytorch_autocast() {
    let reference = fixture("autocast_bf16.safetensors");
    let io = fixture("io.safetensors");
    let (_, f32) = teacher_embeddings(None);
    let (exec, bf16) = teacher_embeddings(Some(kdc_backend::Dtype::Bf16));
    assert_eq!(exec.compiled().precision, kdc_backend::Dtype::Bf16);
    let rms = |a: &[f32], b: &[f32]| {
        let sum: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        (sum / a.len() as f64).sqrt()
    };
    for (tap, fixture) in [
        ("teacher.image", "image_embeds_unnormalized"),
        ("teacher.text", "text_embeds_unnormalized"),
    ] {
        let (torch_bf16, torch_f32) = (&reference[fixture].1, &io[fixture].1);
        let scale = torch_bf16.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = max_diff(&bf16[tap], torch_bf16);
        let kdc_effect = rms(&bf16[tap], &f32[tap]);
        let torch_effect = rms(torch_bf16, torch_f32);
        let apart = rms(&bf16[tap], torch_bf16);
        eprintln!(
            "[autocast] {tap}: kdc bf16 vs torch autocast: worst {worst:.3e} (largest value {scale:.3}), rms {apart:.3e}; rms bf16 − f32: kdc {kdc_effect:.3e}, torch {torch_effect:.3e}"
        );
        assert!(
            worst <= 2.0f32.powi(-6) * scale,
            "{tap}: {worst} from PyTorch's autocast (largest value {scale})"
        );
        let ratio = kdc_effect / torch_effect;
        assert!(
            (0.5..2.0).contains(&ratio),
            "{tap}: autocast moves kdc's embeddings {kdc_effect:.3e}, PyTorch's {torch_effect:.3e}"
        );
        let independent = (kdc_effect.powi(2) + torch_effect.powi(2)).sqrt();
        assert!(
            apart <= 1.1 * independent,
            "{tap}: kdc's and PyTorch's bf16 embeddings are {apart:.3e} apart, more than independent roundings ({independent:.3e})"
        );
    }
}

fn fixture(name: &str) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    weights::read_safetensors(&root().join("tests/fixtures/hf_clip_tiny").join(name)).unwrap()
}

/// The teacher of the small recipe (the fixture's model) encoding the fixture's images and
/// captions with a forward-only graph in `precision` (None: as evaluation does, f32).
fn teacher_embeddings(
    precision: Option<kdc_backend::Dtype>,
) -> (
    Executable,
    std::collections::HashMap<&'static str, Vec<f32>>,
) {
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
    let options = Options {
        precision,
        ..Options::forward(vec![(teacher, Tap::Image), (teacher, Tap::Text)], 3)
    };
    let compiled = compile::compile(&recipe, 0, &options, &**exec::lock(&backend));
    let model = fixture("model.safetensors");
    let io = fixture("io.safetensors");
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
    let mut out = std::collections::HashMap::new();
    for tap in ["teacher.image", "teacher.text"] {
        out.insert(tap, exec.output(&Output::Tensor(tap.into())));
    }
    (exec, out)
}
