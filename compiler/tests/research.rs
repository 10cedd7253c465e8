//! The research methods of recipes/research/methods.kd, written in kdc's language, against
//! their papers' reference code run in PyTorch on fixed inputs (tests/fixtures/research, made
//! by make_research_fixtures.py): the value and the gradient of every student-side input, each
//! within 1e-5 of its own size (a value relative to itself, a gradient tensor relative to its
//! largest entry). A test also proves the comparison rejects a slip in a formula.

mod common;

use kdc::engine::compile;
use kdc::engine::device;
use kdc::engine::exec;
use kdc::engine::graph::InputKind;
use kdc::engine::lower::Target;
use kdc::engine::weights::read_safetensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// f32 against f64 through a few dozen operations: 1e-5 of each quantity's own size.
const REL: f32 = 1e-5;

type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Batch 6; student embeddings 8 wide and a 1-block ViT 8 wide with 2 heads; teacher
/// embeddings 12 wide and a 2-block ViT 12 wide with 2 heads; 4 patches + class token.
fn recipe(loss: &str, extra: &str) -> String {
    format!(
        r#"use methods.{{rkd_distance, rkd_angle, dist, pkt, cls_token, attention_transfer, conditional_kd}}

teacher = clip(
  image: vit(size: 8, patch: 4, width: 12, layers: 2, heads: 2),
  text: transformer(context: 4, vocab: 10, width: 8, layers: 1, heads: 1),
  embed: 12,
  weights: "unused.safetensors",
  frozen,
)
student = clip(
  image: vit(size: 8, patch: 4, width: 8, layers: 1, heads: 2),
  text: transformer(context: 4, vocab: 10, width: 8, layers: 1, heads: 1),
  embed: 8,
)
data = synthetic(batch: 6)
{extra}
loss = {loss}
train = adamw(lr: 1e-3) | steps(1)
"#
    )
}

/// kdc tap or parameter → fixture input.
const TAPS: &[(&str, &str)] = &[
    ("tap:student.image", "v_s"),
    ("tap:student.text", "s_s"),
    ("tap:teacher.image", "v_t"),
    ("tap:teacher.text", "s_t"),
    ("tap:student.image_layer(1)", "tok_s"),
    ("tap:teacher.image_layer(2)", "tok_t"),
    ("tap:student.image_attention(1)", "att_s"),
    ("tap:teacher.image_attention(2)", "att_t"),
    ("loss/research.cls.weight", "W_cls"),
    ("loss/research.cls.bias", "b_cls"),
];

struct Evaluation {
    value: f32,
    grads: HashMap<String, Vec<f32>>,
}

fn evaluate(loss: &str, extra: &str, inputs: &Tensors) -> Evaluation {
    let text = recipe(loss, extra);
    // Placed beside methods.kd, so that `use methods` finds it.
    let path = root().join("recipes/research/fixture_check.kd");
    let compiled = kdc::compile(&path.display().to_string(), &text, &kdc::FsLoader);
    let recipe = compiled
        .recipe
        .unwrap_or_else(|| panic!("{loss}: {:?}", compiled.diagnostics.sorted()));
    let taps = TAPS
        .iter()
        .filter_map(|(t, _)| t.strip_prefix("tap:").map(str::to_string))
        .collect();
    let fixture = |name: &str| TAPS.iter().find(|(k, _)| *k == name).map(|(_, f)| *f);
    let value_of = |name: &str| match (fixture(name), name) {
        (Some(f), _) => Some(inputs[f].1.clone()),
        (None, "student/logit_scale") => Some(vec![inputs["sigma_s"].1[0].ln()]),
        (None, "teacher/logit_scale") => Some(vec![inputs["sigma_t"].1[0].ln()]),
        (None, _) => None,
    };
    let (value, grads) = common::fixed_step(
        &recipe,
        6,
        taps,
        value_of,
        |name| fixture(name).map(str::to_string),
        loss,
    );
    Evaluation { value, grads }
}

/// The worst relative errors of the value and of any gradient, or what differs.
fn compare(name: &str, got: &Evaluation, expected: &Tensors) -> Result<(f32, f32), String> {
    let want = expected[&format!("{name}.value")].1[0];
    let value_error = (got.value - want).abs() / want.abs();
    if !(value_error <= REL) {
        return Err(format!(
            "{name}: value {} vs {want} (relative {value_error:.2e})",
            got.value
        ));
    }
    let prefix = format!("{name}.grad.");
    let mut grad_error = 0f32;
    let mut compared = 0;
    for (key, (_, want)) in expected.iter().filter(|(k, _)| k.starts_with(&prefix)) {
        let input = &key[prefix.len()..];
        let grad = got
            .grads
            .get(input)
            .ok_or_else(|| format!("{name}: no gradient for {input}"))?;
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = grad
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        if !(scale > 0.0 && worst <= REL * scale) {
            return Err(format!(
                "{name}: gradient for {input} off by {worst:.3e} where its largest entry is {scale:.3e}"
            ));
        }
        grad_error = grad_error.max(worst / scale);
        compared += 1;
    }
    if compared == 0 {
        return Err(format!("{name}: the fixture has no gradient"));
    }
    Ok((value_error, grad_error))
}

fn fixtures() -> (Tensors, Tensors) {
    let dir = root().join("tests/fixtures/research");
    (
        read_safetensors(&dir.join("inputs.safetensors")).unwrap(),
        read_safetensors(&dir.join("expected.safetensors")).unwrap(),
    )
}

/// (fixture name, loss as a recipe writes it).
const CASES: &[(&str, &str)] = &[
    ("rkd_distance", "rkd_distance(student.image, teacher.image)"),
    ("rkd_angle", "rkd_angle(student.image, teacher.image)"),
    ("dist", "dist(logits(student), logits(teacher))"),
    (
        "dist_tau4",
        "dist(logits(student), logits(teacher), tau: 4, beta: 2, gamma: 0.5)",
    ),
    ("pkt", "pkt(student.image, teacher.image)"),
    (
        "cls_token",
        "cls_token(student, teacher, s_layer: 1, t_layer: 2)",
    ),
    (
        "attention_transfer",
        "attention_transfer(student, teacher, k: 1)",
    ),
    (
        "conditional_kd",
        "conditional_kd(logits(student), logits(teacher))",
    ),
    (
        "conditional_kd_t2i",
        "conditional_kd(logits(student).T, logits(teacher).T)",
    ),
];

#[test]
fn research_methods_match_their_reference_code() {
    let (inputs, expected) = fixtures();
    let mut report = Vec::new();
    for (name, loss) in CASES {
        let got = evaluate(loss, "", &inputs);
        let (v, g) = compare(name, &got, &expected).unwrap_or_else(|e| panic!("{e}"));
        report.push(format!("{name}: value {v:.1e}, gradients {g:.1e}"));
    }
    let covered = expected.keys().filter(|k| k.ends_with(".value")).count();
    assert_eq!(covered, CASES.len(), "a fixture loss has no case");
    eprintln!("{}", report.join("\n"));
}

#[test]
fn a_slip_in_a_method_is_rejected() {
    let (inputs, expected) = fixtures();
    // RKD's distances normalised by the mean over all pairs (diagonal included), PKT without
    // the (K + 1) / 2 shift, conditional KD over every row: each must fail the comparison.
    let slips: &[(&str, &str, &str)] = &[
        (
            "rkd_distance",
            "rkd_all_pairs(student.image, teacher.image)",
            r#"
fn scaled_all(x: Tensor) -> Tensor {
  let d = cdist(x, x)
  d / mean(d)
}
fn rkd_all_pairs(s: Tensor, t: Tensor) -> Scalar {
  smooth_l1(scaled_all(s), detach(scaled_all(t)))
}
"#,
        ),
        (
            "pkt",
            "pkt_unshifted(student.image, teacher.image)",
            r#"
fn kernel_unshifted(x: Tensor) -> Tensor {
  let n = x / (sqrt(sum(x * x, axis: 1, keepdim: true)) + 1e-7)
  let k = exp(n @ n.T)
  k / sum(k, axis: 1, keepdim: true)
}
fn pkt_unshifted(s: Tensor, t: Tensor) -> Scalar {
  let ks = kernel_unshifted(s)
  let kt = detach(kernel_unshifted(t))
  mean(kt * log((kt + 1e-7) / (ks + 1e-7)))
}
"#,
        ),
        (
            "conditional_kd",
            "16 * kl(log_softmax(detach(logits(teacher)) / 4), log_softmax(logits(student) / 4))",
            "",
        ),
    ];
    for (name, loss, extra) in slips {
        let got = evaluate(loss, extra, &inputs);
        assert!(
            compare(name, &got, &expected).is_err(),
            "the slip `{loss}` passes as {name}"
        );
    }
}

#[test]
fn a_leading_constant_joins_the_term_after_it() {
    // `1 - 2 * pkt(…)` is one term whose value is 1 − 2·pkt, not a constant term and a
    // negative one.
    let text = recipe("1 - 2 * pkt(student.image, teacher.image)", "");
    let path = root().join("recipes/research/fixture_check.kd");
    let compiled = kdc::compile(&path.display().to_string(), &text, &kdc::FsLoader);
    let recipe = compiled.recipe.expect("checks");
    let terms = &recipe.stages[0].terms;
    assert_eq!(terms.len(), 1);
    assert_eq!(terms[0].label, "pkt");
    let (inputs, expected) = fixtures();
    let got = evaluate("1 - 2 * pkt(student.image, teacher.image)", "", &inputs);
    let want = 1.0 - 2.0 * expected["pkt.value"].1[0];
    assert!((got.value - want).abs() <= 1e-6, "{} vs {want}", got.value);
    let grad = &got.grads["v_s"];
    let want_grad = &expected["pkt.grad.v_s"].1;
    for (g, w) in grad.iter().zip(want_grad) {
        assert!(
            (g + 2.0 * w).abs() <= 1e-5 * want_grad.iter().fold(0f32, |m, v| m.max(v.abs())) * 2.0
        );
    }
}

/// The masked views of a recipe's stage: how many distinct patch-mask inputs the step reads.
fn keep_inputs(views: &str) -> Vec<String> {
    let text = format!(
        "student = clip(
  image: vit(size: 32, patch: 8, width: 16, layers: 1, heads: 2),
  text: transformer(context: 16, vocab: 1000, width: 16, layers: 1, heads: 2),
  embed: 16,
)
teacher = clip(
  image: vit(size: 32, patch: 8, width: 32, layers: 1, heads: 2),
  text: transformer(context: 16, vocab: 1000, width: 32, layers: 1, heads: 2),
  embed: 24,
  weights: \"unused.safetensors\",
  frozen,
)
data = synthetic(batch: 4)
train = adamw(lr: 1e-3) | steps(1)
{views}
loss = clip_loss(s) + mse(proj(s.patches, to: teacher.image_width), t.patches)
"
    );
    let compiled = kdc::compile("masks.kd", &text, &kdc::FsLoader);
    let recipe = compiled
        .recipe
        .unwrap_or_else(|| panic!("{:?}", compiled.diagnostics.sorted()));
    let options = compile::Options {
        batch: Some(4),
        target: Target::Train,
        tap_params: vec![],
        precision: None,
    };
    let backend = device::cpu();
    let compiled = compile::compile(&recipe, 0, &options, &**exec::lock(&backend));
    compiled
        .graph
        .inputs
        .iter()
        .filter(|i| matches!(i.kind, InputKind::Keep { .. }))
        .map(|i| i.kind.to_string())
        .collect()
}

#[test]
fn masked_views_share_a_mask_only_when_asked() {
    let own = keep_inputs("s = student.masked(0.5)\nt = teacher.masked(0.5)");
    assert_eq!(own, ["keep:student:0.5", "keep:teacher:0.5"]);
    let shared = keep_inputs(
        "s = student.masked(0.5, shared: \"m\")\nt = teacher.masked(0.5, shared: \"m\")",
    );
    assert_eq!(shared, ["keep:shared m:0.5"]);
}
