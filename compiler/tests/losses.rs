//! Every loss of the standard library, written in kdc's own language, against a PyTorch
//! computation of the same formula on fixed features (tests/fixtures/losses, made by
//! tests/fixtures/make_fixtures.py): the value and the gradient with respect to every
//! student-side input, through kdc's lowering, autodiff and kernels.

use kdc::engine::exec::Executable;
use kdc::engine::lower::lower_with;
use kdc::engine::weights::read_safetensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Student embeddings 8 wide, teacher 12, batch 6, as in the fixture. The towers are tiny:
/// the loss sees the fixture's features in place of their outputs.
fn recipe(loss: &str, student_scale: &str) -> String {
    format!(
        r#"use std.clip_kd.{{crd, fd, gd, icl, afd, cross_kd}}
use std.clip.hinton
use std.comkd.{{ifalign, refine}}
use std.dcclip.{{image_features, text_features}}
use std.tinyclip.affinity
use std.kd.distill

teacher = clip(
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
loss = {loss}
train = adamw(lr: 1e-3) | steps(1)
"#
    )
}

struct Case {
    name: &'static str,
    loss: &'static str,
    student_scale: &'static str,
    /// kdc parameter name → fixture input name.
    params: &'static [(&'static str, &'static str)],
}

const TAPS: &[(&str, &str)] = &[
    ("tap:student.image", "v_s"),
    ("tap:student.text", "s_s"),
    ("tap:teacher.image", "v_t"),
    ("tap:teacher.text", "s_t"),
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

fn cases() -> Vec<Case> {
    vec![
        Case { name: "clip_loss", loss: "clip_loss(student)", student_scale: "", params: &[] },
        Case { name: "crd", loss: "crd(student, teacher)", student_scale: "", params: &[] },
        Case { name: "fd", loss: "fd(student, teacher)", student_scale: "", params: W },
        Case { name: "gd", loss: "gd(student, teacher)", student_scale: "", params: W },
        Case { name: "icl", loss: "icl(student, teacher)", student_scale: "", params: W_KAPPA },
        Case { name: "cross_kd", loss: "cross_kd(student, teacher)", student_scale: "", params: W_KAPPA },
        Case { name: "afd_expscale", loss: "afd(student, teacher)", student_scale: "", params: W_AFD },
        Case { name: "tinyclip", loss: "affinity(student, teacher)", student_scale: ", logit_scale: fixed(50)", params: &[] },
        Case { name: "openclip_distill", loss: "distill(student, teacher)", student_scale: "", params: &[] },
        Case {
            name: "hinton_kd",
            loss: "(hinton(logits(teacher), logits(student), temperature: 2) + hinton(logits(teacher).T, logits(student).T, temperature: 2)) / 2",
            student_scale: "",
            params: &[],
        },
        Case { name: "ifalign", loss: "ifalign(student, teacher)", student_scale: "", params: &[("loss/comkd.ifalign.weight", "W_img"), ("loss/comkd.ifalign.bias", "b_img")] },
        Case {
            name: "smoothl1",
            loss: "image_features(student, teacher) + text_features(student, teacher)",
            student_scale: "",
            params: &[
                ("loss/dcclip.adapter_image.weight", "W_img"),
                ("loss/dcclip.adapter_image.bias", "b_img"),
                ("loss/dcclip.adapter_text.weight", "W_txt"),
                ("loss/dcclip.adapter_text.bias", "b_txt"),
            ],
        },
        Case {
            name: "comkd_refine",
            loss: "refine(proj(norm(student.image), to: teacher.dim, name: \"refine_in\"), student, teacher, temperature: 2)",
            student_scale: "",
            params: &[("loss/refine_in.weight", "W_img"), ("loss/refine_in.bias", "b_img")],
        },
    ]
}

#[test]
fn every_library_loss_matches_pytorch() {
    let dir = root().join("tests/fixtures/losses");
    let inputs = read_safetensors(&dir.join("inputs.safetensors")).unwrap();
    let expected = read_safetensors(&dir.join("expected.safetensors")).unwrap();
    let mut report = Vec::new();
    for case in cases() {
        let text = recipe(case.loss, case.student_scale);
        let compiled = kdc::compile("losses.kd", &text, &kdc::FsLoader);
        let recipe = compiled
            .recipe
            .unwrap_or_else(|| panic!("{}: {:?}", case.name, compiled.diagnostics.sorted()));
        let taps: Vec<String> = TAPS
            .iter()
            .map(|(t, _)| t.trim_start_matches("tap:").to_string())
            .collect();
        let step = lower_with(&recipe, 0, 6, &taps);
        let mut outputs = vec![step.loss];
        outputs.extend(step.grads.iter().map(|g| g.1));
        let mut exec = Executable::new(&step.graph, &outputs);
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (i, p) in step.graph.params.iter().enumerate() {
            by_name.insert(p.name.clone(), i);
            let fixture = TAPS
                .iter()
                .chain(case.params)
                .find(|(k, _)| *k == p.name)
                .map(|(_, f)| *f);
            let values = match (fixture, p.name.as_str()) {
                (Some(f), _) => inputs[f].1.clone(),
                (None, "student/logit_scale") => {
                    if case.student_scale.is_empty() {
                        inputs["t_s"].1.clone()
                    } else {
                        vec![50f32.ln()]
                    }
                }
                (None, "teacher/logit_scale") => vec![inputs["sigma_t"].1[0].ln()],
                (None, name) => {
                    assert!(
                        !exec.uses_param(i),
                        "{}: parameter {name} has no fixture value",
                        case.name
                    );
                    continue;
                }
            };
            assert_eq!(
                values.len(),
                p.shape.iter().product::<usize>(),
                "{}: {}",
                case.name,
                p.name
            );
            exec.set_param(i, values);
        }
        for name in &step.weight_inputs {
            let label = name.trim_start_matches("weight:");
            let weight = recipe.stages[0]
                .terms
                .iter()
                .find(|t| t.label == label)
                .unwrap()
                .weight
                .at(0, 1);
            exec.set_input(name, vec![weight as f32]);
        }
        let results = exec.run();
        let value = results[0][0];
        let want = expected[&format!("{}.value", case.name)].1[0];
        assert!(
            (value - want).abs() <= 1e-5 + 1e-4 * want.abs(),
            "{}: value {value}, PyTorch {want}",
            case.name
        );

        // Every gradient PyTorch computed for a student-side input must match kdc's.
        let grads: HashMap<&str, &Vec<f32>> = step
            .grads
            .iter()
            .zip(&results[1..])
            .map(|((p, _), g)| (step.graph.params[*p].name.as_str(), g))
            .collect();
        let mut checked = 0;
        for (kdc_name, fixture_name) in TAPS
            .iter()
            .chain(case.params)
            .chain(&[("student/logit_scale", "t_s")])
        {
            let Some((_, want)) = expected.get(&format!("{}.grad.{fixture_name}", case.name))
            else {
                continue;
            };
            let got = grads.get(kdc_name).unwrap_or_else(|| {
                panic!("{}: kdc computed no gradient for {kdc_name}", case.name)
            });
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-6 + 2e-4 * scale,
                "{}: gradient for {fixture_name} differs by {worst} (largest {scale})",
                case.name
            );
            checked += 1;
        }
        assert!(checked > 0, "{}: no gradient compared", case.name);
        report.push(format!("{} ({checked} gradients)", case.name));
    }
    assert_eq!(report.len(), cases().len());
}
