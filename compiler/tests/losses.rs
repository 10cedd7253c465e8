//! Every loss of the standard library, written in kdc's own language, against a PyTorch
//! computation of the same formula on fixed features (tests/fixtures/losses, made by
//! tests/fixtures/make_fixtures.py; its CLIP-KD terms are computed as the official CLIP-KD
//! code computes them): the value and the gradient with respect to every student-side input,
//! through kdc's lowering, autodiff and kernels.
//!
//! Every comparison is relative to the size of the quantity compared: a value within
//! `REL`·|reference|, a gradient tensor within `REL`·(its largest absolute entry). GD is about
//! 3e-5 and its gradients about 1e-6, so an absolute floor would hide a wrong GD; there is none.
//! Two tests prove the comparison can fail: a 1e-4 relative error in any value or any gradient
//! tensor is rejected, and so is each of several plausible slips in a formula.

mod common;

use kdc::engine::weights::read_safetensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// kdc runs in f32 and the fixture is f64 rounded to f32: 1e-5 relative leaves room for f32
/// rounding through a few dozen operations and nothing else.
const REL: f32 = 1e-5;

type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Student embeddings 8 wide, teachers 12, batch 6, as in the fixture. The towers are tiny:
/// the loss sees the fixture's features in place of their outputs. `extra` holds functions a
/// case defines for itself.
fn recipe(loss: &str, student_scale: &str, extra: &str) -> String {
    format!(
        r#"use std.clip_kd.{{crd, fd, gd, icl, afd, cross_kd, image_to, text_to}}
use std.clip.hinton
use std.comkd.{{ifalign, edu_attention, refine}}
use std.dcclip.{{image_features, text_features}}
use std.tinyclip.affinity
use std.kd.{{distill, ensemble2}}

teacher = clip(
  image: vit(size: 8, patch: 4, width: 8, layers: 1, heads: 1),
  text: transformer(context: 4, vocab: 10, width: 8, layers: 1, heads: 1),
  embed: 12,
  weights: "unused.safetensors",
  frozen,
)
teacher2 = clip(
  image: vit(size: 8, patch: 4, width: 8, layers: 1, heads: 1),
  text: transformer(context: 4, vocab: 10, width: 8, layers: 1, heads: 1),
  embed: 12,
  weights: "unused.safetensors",
  frozen,
)
student = clip(
  image: vit(size: 8, patch: 4, width: 8, layers: 1, heads: 1),
  text: transformer(context: 4, vocab: 10, width: 8, layers: 1, heads: 1),
  embed: 8{student_scale},
)
data = synthetic(batch: 6)
{extra}
loss = {loss}
train = adamw(lr: 1e-3) | steps(1)
"#
    )
}

struct Case {
    /// The fixture's loss this case is compared with.
    fixture: &'static str,
    loss: &'static str,
    student_scale: &'static str,
    extra: &'static str,
    /// kdc parameter name → fixture input name.
    params: &'static [(&'static str, &'static str)],
}

const TAPS: &[(&str, &str)] = &[
    ("tap:student.image", "v_s"),
    ("tap:student.text", "s_s"),
    ("tap:teacher.image", "v_t"),
    ("tap:teacher.text", "s_t"),
    ("tap:teacher2.image", "v_t2"),
    ("tap:teacher2.text", "s_t2"),
];
const W: &[(&str, &str)] = &[
    ("loss/clip_kd.w_image.weight", "W_img"),
    ("loss/clip_kd.w_image.bias", "b_img"),
    ("loss/clip_kd.w_text.weight", "W_txt"),
    ("loss/clip_kd.w_text.bias", "b_txt"),
];
const W_KAPPA: &[(&str, &str)] = &[
    ("loss/clip_kd.w_image.weight", "W_img"),
    ("loss/clip_kd.w_image.bias", "b_img"),
    ("loss/clip_kd.w_text.weight", "W_txt"),
    ("loss/clip_kd.w_text.bias", "b_txt"),
    ("loss/clip_kd.icl_scale", "kappa"),
];
const W_AFD: &[(&str, &str)] = &[
    ("loss/clip_kd.w_image.weight", "W_img"),
    ("loss/clip_kd.w_image.bias", "b_img"),
    ("loss/clip_kd.w_text.weight", "W_txt"),
    ("loss/clip_kd.w_text.bias", "b_txt"),
    ("loss/clip_kd.afd_fuse_image.weight", "afd_W_img"),
    ("loss/clip_kd.afd_fuse_image.bias", "afd_b_img"),
    ("loss/clip_kd.afd_fuse_text.weight", "afd_W_txt"),
    ("loss/clip_kd.afd_fuse_text.bias", "afd_b_txt"),
    ("loss/clip_kd.afd_scale", "afd_scale"),
];
const ADAPTERS: &[(&str, &str)] = &[
    ("loss/dcclip.adapter_image.weight", "W_img"),
    ("loss/dcclip.adapter_image.bias", "b_img"),
    ("loss/dcclip.adapter_text.weight", "W_txt"),
    ("loss/dcclip.adapter_text.bias", "b_txt"),
];
const EDU: &[(&str, &str)] = &[
    ("loss/comkd.edu_q.weight", "edu_Wq"),
    ("loss/comkd.edu_q.bias", "edu_bq"),
    ("loss/comkd.edu_k.weight", "edu_Wk"),
    ("loss/comkd.edu_k.bias", "edu_bk"),
    ("loss/comkd.edu_v.weight", "edu_Wv"),
    ("loss/comkd.edu_v.bias", "edu_bv"),
    ("loss/comkd.edu_out.weight", "edu_Wo"),
    ("loss/comkd.edu_out.bias", "edu_bo"),
    ("loss/comkd.edu_in.weight", "edu_Win"),
    ("loss/comkd.edu_in.bias", "edu_bin"),
    ("loss/comkd.edu_alpha", "edu_alpha"),
];

fn case(
    fixture: &'static str,
    loss: &'static str,
    params: &'static [(&'static str, &'static str)],
) -> Case {
    Case {
        fixture,
        loss,
        student_scale: "",
        extra: "",
        params,
    }
}

/// The standard library, one case per fixture loss.
fn library() -> Vec<Case> {
    vec![
        case("clip_loss", "clip_loss(student)", &[]),
        case("crd", "crd(student, teacher)", &[]),
        case("fd", "fd(student, teacher)", W),
        case("gd", "gd(student, teacher)", W),
        case("icl", "icl(student, teacher)", W_KAPPA),
        case("cross_kd", "cross_kd(student, teacher)", W_KAPPA),
        case("afd", "afd(student, teacher)", W_AFD),
        // The exponentiated variant, asked for by name.
        case(
            "afd_expscale",
            "afd(student, teacher, scale: logit_scale(init: 1 / 0.07, name: \"clip_kd.afd_scale\"))",
            W_AFD,
        ),
        Case {
            student_scale: ", logit_scale: fixed(50)",
            ..case("tinyclip", "affinity(student, teacher)", &[])
        },
        case("openclip_distill", "distill(student, teacher)", &[]),
        case(
            "hinton_kd",
            "(hinton(logits(teacher), logits(student), temperature: 2) + hinton(logits(teacher).T, logits(student).T, temperature: 2)) / 2",
            &[],
        ),
        case("ensemble2", "ensemble2(student, teacher, teacher2)", &[]),
        case(
            "ifalign",
            "ifalign(student, teacher)",
            &[("loss/comkd.ifalign.weight", "W_img"), ("loss/comkd.ifalign.bias", "b_img")],
        ),
        case("smoothl1", "image_features(student, teacher) + text_features(student, teacher)", ADAPTERS),
        case(
            "comkd_refine",
            "refine(proj(student.image, to: teacher.dim, name: \"refine_in\"), student, teacher, temperature: 2)",
            &[("loss/refine_in.weight", "W_img"), ("loss/refine_in.bias", "b_img")],
        ),
        case(
            "comkd_edu",
            "refine(edu_attention(student, teacher, width: 4, heads: 2), student, teacher, temperature: 2)",
            EDU,
        ),
    ]
}

/// Plausible slips in a formula, each of which must be told apart from the reference.
fn slips() -> Vec<Case> {
    const NORM_FIRST: &str = r#"
fn image_first(s: Clip, t: Clip) -> Tensor {
  norm(proj(norm(s.image), to: t.dim, name: "clip_kd.w_image"))
}
fn text_first(s: Clip, t: Clip) -> Tensor {
  norm(proj(norm(s.text), to: t.dim, name: "clip_kd.w_text"))
}
fn infonce_grad_anchor(p: Tensor, k: Tensor, tau: Scalar) -> Tensor {
  (softmax(p @ k.T / tau) - eye(rows(p))) @ k / (tau * rows(p))
}
fn infonce_grad_contrast(p: Tensor, k: Tensor, tau: Scalar) -> Tensor {
  (softmax(p @ k.T / tau) - eye(rows(p))).T @ p / (tau * rows(p))
}
fn gd_first(s: Clip, t: Clip) -> Scalar {
  let vs = image_first(s, t)
  let ss = text_first(s, t)
  let vt = detach(norm(t.image))
  let st = detach(norm(t.text))
  let ts = detach(t.scale)
  mse(infonce_grad_anchor(vs, ss, s.scale), infonce_grad_anchor(vt, st, ts))
    + mse(infonce_grad_contrast(vs, ss, s.scale), infonce_grad_contrast(vt, st, ts))
    + mse(infonce_grad_anchor(ss, vs, s.scale), infonce_grad_anchor(st, vt, ts))
    + mse(infonce_grad_contrast(ss, vs, s.scale), infonce_grad_contrast(st, vt, ts))
}
"#;
    vec![
        // Normalising the student before the projection (kdc's earlier FD and GD).
        Case {
            extra: NORM_FIRST,
            ..case(
                "fd",
                "mse(image_first(student, teacher), norm(teacher.image)) + mse(text_first(student, teacher), norm(teacher.text))",
                W,
            )
        },
        Case { extra: NORM_FIRST, ..case("gd", "gd_first(student, teacher)", W) },
        // The teacher's features used without their normalisation.
        case(
            "fd",
            "mse(image_to(student, teacher), teacher.image) + mse(text_to(student, teacher), teacher.text)",
            W,
        ),
        // AFD's scale exponentiated where the reference uses it as is, and the reverse.
        case(
            "afd",
            "afd(student, teacher, scale: logit_scale(init: 1 / 0.07, name: \"clip_kd.afd_scale\"))",
            W_AFD,
        ),
        case("afd_expscale", "afd(student, teacher)", W_AFD),
        // IFAlign on the normalised teacher features instead of the raw ones.
        Case {
            extra: r#"
fn ifalign_normed(s: Clip, t: Clip) -> Scalar {
  let p = linear(s.image, to: t.dim, name: "comkd.ifalign")
  l1(mean(p, axis: 0), mean(norm(t.image), axis: 0)) + l1(var(p, axis: 0), var(norm(t.image), axis: 0))
}
"#,
            ..case(
                "ifalign",
                "ifalign_normed(student, teacher)",
                &[("loss/comkd.ifalign.weight", "W_img"), ("loss/comkd.ifalign.bias", "b_img")],
            )
        },
        // CRD as KL(student ‖ teacher) instead of KL(teacher ‖ student).
        case(
            "crd",
            "(kl(log_softmax(logits(student)), log_softmax(detach(logits(teacher)))) + kl(log_softmax(logits(student).T), log_softmax(detach(logits(teacher).T)))) / 2",
            &[],
        ),
    ]
}

/// kdc's value and gradients (by fixture input name) for one case.
struct Evaluation {
    value: f32,
    grads: HashMap<String, Vec<f32>>,
}

fn evaluate(case: &Case, inputs: &Tensors) -> Evaluation {
    let text = recipe(case.loss, case.student_scale, case.extra);
    let compiled = kdc::compile("losses.kd", &text, &kdc::FsLoader);
    let recipe = compiled
        .recipe
        .unwrap_or_else(|| panic!("{}: {:?}", case.loss, compiled.diagnostics.sorted()));
    let taps: Vec<String> = TAPS
        .iter()
        .map(|(t, _)| t.trim_start_matches("tap:").to_string())
        .collect();
    let fixture_name = |kdc_name: &str| -> Option<&'static str> {
        TAPS.iter()
            .chain(case.params)
            .find(|(k, _)| *k == kdc_name)
            .map(|(_, f)| *f)
            .or(match kdc_name {
                "student/logit_scale" if case.student_scale.is_empty() => Some("t_s"),
                _ => None,
            })
    };
    let value_of = |name: &str| match (fixture_name(name), name) {
        (Some(f), _) => Some(inputs[f].1.clone()),
        (None, "student/logit_scale") => Some(vec![50f32.ln()]),
        (None, "teacher/logit_scale") => Some(vec![inputs["sigma_t"].1[0].ln()]),
        (None, "teacher2/logit_scale") => Some(vec![inputs["sigma_t2"].1[0].ln()]),
        (None, _) => None,
    };
    let (value, grads) = common::fixed_step(
        &recipe,
        6,
        taps,
        value_of,
        |name| fixture_name(name).map(str::to_string),
        case.loss,
    );
    Evaluation { value, grads }
}

/// `got` within `rel`·|want|; returns the relative error.
fn compare_value(got: f32, want: f32, rel: f32) -> Result<f32, String> {
    let error = (got - want).abs();
    if error <= rel * want.abs() {
        Ok(error / want.abs())
    } else {
        Err(format!(
            "value {got} vs {want}: relative error {:.2e}",
            error / want.abs()
        ))
    }
}

/// Every entry of `got` within `rel` times the largest absolute entry of `want`; returns the
/// largest error relative to that entry.
fn compare_tensor(got: &[f32], want: &[f32], rel: f32) -> Result<f32, String> {
    if got.len() != want.len() {
        return Err(format!("{} entries vs {}", got.len(), want.len()));
    }
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    if scale > 0.0 && worst <= rel * scale {
        Ok(worst / scale)
    } else {
        Err(format!(
            "differs by {worst:.3e} where its largest entry is {scale:.3e} (relative {:.2e})",
            worst / scale
        ))
    }
}

/// Compares one evaluation with the fixture's loss `name`: its value and every gradient the
/// fixture has. Returns the number of gradient tensors compared and the worst relative errors
/// of the value and of a gradient.
fn compare(
    name: &str,
    got: &Evaluation,
    expected: &Tensors,
    rel: f32,
) -> Result<(usize, f32, f32), String> {
    let want = expected[&format!("{name}.value")].1[0];
    let value_error = compare_value(got.value, want, rel).map_err(|e| format!("{name}: {e}"))?;
    let mut grad_error = 0f32;
    let prefix = format!("{name}.grad.");
    let mut wanted: Vec<&String> = expected.keys().filter(|k| k.starts_with(&prefix)).collect();
    wanted.sort();
    for key in &wanted {
        let input = &key[prefix.len()..];
        let grad = got
            .grads
            .get(input)
            .ok_or_else(|| format!("{name}: kdc computed no gradient for {input}"))?;
        let error = compare_tensor(grad, &expected[*key].1, rel)
            .map_err(|e| format!("{name}: gradient for {input} {e}"))?;
        grad_error = grad_error.max(error);
    }
    if wanted.is_empty() {
        return Err(format!("{name}: the fixture has no gradient"));
    }
    Ok((wanted.len(), value_error, grad_error))
}

fn fixtures() -> (Tensors, Tensors) {
    let dir = root().join("tests/fixtures/losses");
    (
        read_safetensors(&dir.join("inputs.safetensors")).unwrap(),
        read_safetensors(&dir.join("expected.safetensors")).unwrap(),
    )
}

#[test]
fn every_library_loss_matches_pytorch_and_rejects_a_small_error() {
    let (inputs, expected) = fixtures();
    let mut covered = Vec::new();
    for case in library() {
        let got = evaluate(&case, &inputs);
        let (checked, value_error, grad_error) = compare(case.fixture, &got, &expected, REL)
            .unwrap_or_else(|e| panic!("{e} (recipe loss: {})", case.loss));
        println!(
            "{:16} value {value_error:.1e}, {checked} gradients worst {grad_error:.1e} (relative)",
            case.fixture
        );
        covered.push(case.fixture);

        // The same comparison rejects a 1e-4 relative error in the value, and in each
        // gradient tensor (at its largest entry, where the tolerance is loosest).
        let mut off = expected.clone();
        off.get_mut(&format!("{}.value", case.fixture)).unwrap().1[0] *= 1.0 + 1e-4;
        assert!(
            compare(case.fixture, &got, &off, REL).is_err(),
            "{}: a 1e-4 relative error in the value passed",
            case.fixture
        );
        let prefix = format!("{}.grad.", case.fixture);
        let keys: Vec<String> = expected
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        assert_eq!(keys.len(), checked);
        for key in keys {
            let mut off = expected.clone();
            let values = &mut off.get_mut(&key).unwrap().1;
            let (at, largest) = values.iter().enumerate().fold((0, 0f32), |(i, m), (j, v)| {
                if v.abs() > m {
                    (j, v.abs())
                } else {
                    (i, m)
                }
            });
            values[at] += 1e-4 * largest;
            assert!(
                compare(case.fixture, &got, &off, REL).is_err(),
                "{key}: a 1e-4 relative error in this gradient passed"
            );
        }
    }
    // Every loss of the fixture is covered.
    let mut fixture_losses: Vec<&str> = expected
        .keys()
        .filter_map(|k| k.strip_suffix(".value"))
        .filter(|k| !k.contains('.'))
        .collect();
    fixture_losses.sort();
    covered.sort();
    assert_eq!(covered, fixture_losses);
}

#[test]
fn slips_in_a_formula_are_rejected() {
    let (inputs, expected) = fixtures();
    for case in slips() {
        let got = evaluate(&case, &inputs);
        let result = compare(case.fixture, &got, &expected, REL);
        assert!(
            result.is_err(),
            "{}: the slip `{}` matched the reference",
            case.fixture,
            case.loss
        );
    }
}
