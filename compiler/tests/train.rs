//! Training end to end on the small CLIP-KD recipe (synthetic batches, the tiny Hugging Face
//! CLIP as frozen teacher): the loss falls over 200 steps, and two runs with the same seed
//! produce identical losses.

use kdc::engine::train::{Options, Trainer};
use std::path::Path;

fn recipe() -> (kdc::ir::Recipe, kdc::manifest::Base) {
    recipe_with(|text| text)
}

/// The small recipe with its text changed by `edit`.
fn recipe_with(edit: impl Fn(String) -> String) -> (kdc::ir::Recipe, kdc::manifest::Base) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("recipes/demo");
    let path = dir.join("clip_kd_small.kd");
    let text = edit(std::fs::read_to_string(&path).unwrap());
    let compiled = kdc::compile(path.to_str().unwrap(), &text, &kdc::FsLoader);
    let base = compiled.base();
    (compiled.recipe.expect("the small recipe checks"), base)
}

/// The small recipe under `precision(bf16)`.
fn bf16_recipe() -> (kdc::ir::Recipe, kdc::manifest::Base) {
    recipe_with(|text| {
        let train = text
            .lines()
            .find(|l| l.starts_with("train ="))
            .expect("a train line")
            .to_string();
        text.replace(&train, &format!("{train} | precision(bf16)"))
    })
}

fn losses(steps: u64) -> Vec<f64> {
    losses_of(recipe(), steps)
}

fn losses_of((recipe, base): (kdc::ir::Recipe, kdc::manifest::Base), steps: u64) -> Vec<f64> {
    let mut trainer = Trainer::new(
        &recipe,
        0,
        &Options {
            steps: None,
            base,
            log: None,
            random_missing_weights: false,
            ..Default::default()
        },
    )
    .unwrap();
    trainer
        .train(Some(steps), None, |_| {})
        .unwrap()
        .into_iter()
        .map(|l| l.loss)
        .collect()
}

#[test]
fn loss_falls_over_200_steps_and_runs_repeat_exactly() {
    let first = losses(200);
    assert!(first.iter().all(|l| l.is_finite()));
    let start: f64 = first[..10].iter().sum::<f64>() / 10.0;
    let end: f64 = first[180..].iter().sum::<f64>() / 20.0;
    assert!(end < 0.5 * start, "loss went from {start:.3} to {end:.3}");
    let again = losses(30);
    assert_eq!(&first[..30], &again[..], "same seed, different losses");
}

/// `precision(bf16)` trains with autocast: every matrix product of the step (forward and
/// backward) is typed bf16 and the layer norms, softmaxes and losses f32; the losses differ
/// from f32 training by bf16 rounding only, and fall as much.
#[test]
fn bf16_autocast_types_the_step_and_trains_like_f32_within_its_precision() {
    use kdc::engine::graph::{Dtype, Op};
    let (recipe, base) = bf16_recipe();
    let mut trainer = Trainer::new(
        &recipe,
        0,
        &Options {
            base: base.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let compiled = trainer.executable().compiled();
    assert_eq!(compiled.precision, Dtype::Bf16);
    assert!(compiled
        .reports
        .iter()
        .any(|r| r.name == "autocast bf16" && r.rewrites > 0));
    let (mut products, mut f32_kinds) = (0, 0);
    for &id in &compiled.plan.order {
        let node = &compiled.graph.nodes[id];
        match node.op {
            Op::MatMul { .. } | Op::MatMulAdd { .. } => {
                products += 1;
                assert_eq!(node.dtype, Dtype::Bf16, "{} {:?}", node.label, node.op);
            }
            Op::LayerNorm { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::Normalize { .. }
            | Op::Loss(_)
            | Op::Reduce { .. } => {
                f32_kinds += 1;
                assert_eq!(node.dtype, Dtype::F32, "{} {:?}", node.label, node.op);
            }
            _ => {}
        }
    }
    assert!(
        products > 20 && f32_kinds > 10,
        "{products} products, {f32_kinds} f32 ops"
    );
    drop(trainer);

    let steps = 200;
    let bf16 = losses_of((recipe, base), steps);
    let f32 = losses(steps);
    assert!(bf16.iter().all(|l| l.is_finite()));
    let first = (bf16[0] - f32[0]).abs() / f32[0].abs();
    assert!(
        (1e-7..1e-2).contains(&first),
        "first loss {} in bf16 vs {} in f32: autocast inactive or far off",
        bf16[0],
        f32[0]
    );
    let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
    let (start, end) = (mean(&bf16[..10]), mean(&bf16[180..]));
    let end_f32 = mean(&f32[180..]);
    assert!(
        end < 0.5 * start,
        "bf16 loss went from {start:.3} to {end:.3}"
    );
    assert!(
        (end - end_f32).abs() < 0.05 * end_f32,
        "after {steps} steps: bf16 {end:.4} vs f32 {end_f32:.4}"
    );
    eprintln!(
        "[bf16 vs f32] first loss {:.6} vs {:.6}; last 20 steps {end:.4} vs {end_f32:.4}",
        bf16[0], f32[0]
    );
}

#[test]
fn a_frozen_teacher_gets_no_gradient_and_the_loss_parts_do() {
    let (recipe, base) = recipe();
    let mut trainer = Trainer::new(
        &recipe,
        0,
        &Options {
            steps: None,
            base,
            log: None,
            random_missing_weights: false,
            ..Default::default()
        },
    )
    .unwrap();
    let ev = trainer.evaluate(0).unwrap();
    assert!(ev
        .grads
        .iter()
        .all(|(name, _)| !name.starts_with("teacher/")));
    assert!(ev
        .grads
        .iter()
        .any(|(name, _)| name == "loss/clip_kd.icl_scale"));
    assert!(ev
        .grads
        .iter()
        .any(|(name, _)| name == "student/logit_scale"));
    let total: f64 = ev
        .terms
        .iter()
        .map(|(label, v)| if label == "fd" { 2000.0 * v } else { *v })
        .sum();
    assert!(
        (total - ev.loss).abs() < 1e-3 * ev.loss.abs(),
        "terms {total} vs total {}",
        ev.loss
    );
}

/// Evaluation prepares a step exactly as training does: a schedule inside a loss term (not its
/// weight) takes its value at the step evaluated.
#[test]
fn evaluation_sets_scheduled_scalars_like_training() {
    let text = r#"
student = clip(
  image: vit(size: 8, patch: 4, width: 8, layers: 1, heads: 1),
  text: transformer(context: 4, vocab: 10, width: 8, layers: 1, heads: 1),
  embed: 8,
)
data = synthetic(batch: 2)
loss = clip_loss(student) + mean(student.image * 0 + ramp(from: 1, to: 3, steps: 10))
train = adamw(lr: 1e-3) | steps(20)
"#;
    let compiled = kdc::compile("scheduled.kd", text, &kdc::FsLoader);
    let recipe = compiled.recipe.expect("the recipe checks");
    let mut trainer = Trainer::new(
        &recipe,
        0,
        &Options {
            steps: None,
            base: kdc::manifest::Base::new("."),
            log: None,
            random_missing_weights: false,
            ..Default::default()
        },
    )
    .unwrap();
    for (step, want) in [(0, 1.0), (5, 2.0), (10, 3.0), (15, 3.0)] {
        let ev = trainer.evaluate(step).unwrap();
        let (_, got) = ev.terms.iter().find(|(l, _)| l == "mean").unwrap();
        assert!(
            (got - want).abs() < 1e-6,
            "step {step}: {got}, expected {want}"
        );
    }
}

/// The small recipe with its loss's projections in a group at 10× the learning rate without
/// weight decay, the visual projection at ½×, and the first vision block and the text
/// embeddings frozen by name.
fn grouped_recipe() -> (kdc::ir::Recipe, kdc::manifest::Base) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("recipes/demo");
    let text = std::fs::read_to_string(dir.join("clip_kd_small.kd"))
        .unwrap()
        .replace(
            "train = adamw(lr: cosine(1e-3, warmup: 20), weight_decay: 0.1)",
            "freeze = [\"student/vision_model.encoder.layers.{0..0}.*\", \"student/text_model.embeddings.*\"]\n\
             train = adamw(lr: 1e-3, weight_decay: 0.1, groups: [group(\"loss/*\", lr_scale: 10, weight_decay: 0), group(student.visual_projection, lr_scale: 0.5)])",
        );
    let path = dir.join("grouped.kd");
    let compiled = kdc::compile(path.to_str().unwrap(), &text, &kdc::FsLoader);
    let base = compiled.base();
    let recipe = compiled
        .recipe
        .unwrap_or_else(|| panic!("{:?}", compiled.diagnostics.sorted()));
    (recipe, base)
}

#[test]
fn parameter_groups_scale_the_step_and_frozen_names_do_not_move() {
    let (recipe, base) = grouped_recipe();
    let mut trainer = Trainer::new(
        &recipe,
        0,
        &Options {
            base,
            ..Default::default()
        },
    )
    .unwrap();
    let before: std::collections::HashMap<String, Vec<f32>> =
        trainer.parameters().into_iter().collect();
    trainer.train(Some(1), None, |_| {}).unwrap();
    let after: std::collections::HashMap<String, Vec<f32>> =
        trainer.parameters().into_iter().collect();
    let largest_step = |name: &str| {
        before[name]
            .iter()
            .zip(&after[name])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    };
    // AdamW's first step moves each entry by lr·g/(|g| + ε) ≈ lr (plus lr·λ·w with decay).
    let lr = 1e-3f32;
    let w = largest_step("loss/clip_kd.w_image.weight");
    assert!(
        (w - 10.0 * lr).abs() < 0.02 * lr * 10.0,
        "loss group moved {w}"
    );
    let p = largest_step("student/visual_projection.weight");
    assert!(
        p > 0.45 * lr && p < 0.55 * lr,
        "visual projection moved {p}"
    );
    let other = largest_step("student/text_model.encoder.layers.0.mlp.fc1.weight");
    assert!(
        other > 0.9 * lr && other < 1.1 * lr,
        "an ordinary weight moved {other}"
    );
    for name in [
        "student/vision_model.encoder.layers.0.mlp.fc1.weight",
        "student/vision_model.encoder.layers.0.layer_norm1.bias",
        "student/text_model.embeddings.token_embedding.weight",
    ] {
        assert_eq!(largest_step(name), 0.0, "{name} is frozen but moved");
    }
}

#[test]
fn an_ema_teacher_starts_as_the_student_and_follows_its_average() {
    let text = "student = clip(
  image: vit(size: 32, patch: 8, width: 16, layers: 1, heads: 2),
  text: transformer(context: 16, vocab: 1000, width: 16, layers: 1, heads: 2),
  embed: 16,
)
teacher = ema(student, decay: 0.9)
data = synthetic(batch: 8, samples: 64, seed: 0)
loss = clip_loss(student) + mse(norm(student.image), norm(teacher.image))
train = adamw(lr: 1e-3) | steps(3) | seed(0)
";
    let compiled = kdc::compile("ema.kd", text, &kdc::FsLoader);
    let recipe = compiled
        .recipe
        .unwrap_or_else(|| panic!("{:?}", compiled.diagnostics.sorted()));
    assert!(kdc::explain::ir(&recipe).contains("exponential moving average of student (decay 0.9)"));
    let mut trainer = Trainer::new(&recipe, 0, &Options::default()).unwrap();
    let values = |t: &Trainer| -> std::collections::HashMap<String, Vec<f32>> {
        t.parameters().into_iter().collect()
    };
    let mut before = values(&trainer);
    let name = "vision_model.encoder.layers.0.mlp.fc1.weight";
    let (s, t) = (format!("student/{name}"), format!("teacher/{name}"));
    assert_eq!(before[&s], before[&t], "the average starts as the student");
    let mut first_loss = None;
    for _ in 0..3 {
        let log = trainer.train_step().unwrap();
        // At step 1 both see the same parameters: the distillation term is 0.
        first_loss.get_or_insert(log.terms[1].1);
        let after = values(&trainer);
        for (i, (tp, sp)) in before[&t].iter().zip(&after[&s]).enumerate() {
            let want = 0.9 * tp + 0.1 * sp;
            assert!(
                (after[&t][i] - want).abs() <= 1e-6,
                "{i}: {} vs {want}",
                after[&t][i]
            );
        }
        assert_ne!(after[&t], before[&t], "the average moves");
        assert_ne!(after[&t], after[&s], "and lags the student");
        before = after;
    }
    assert!(first_loss.unwrap().abs() < 1e-12, "{first_loss:?}");
    // No optimiser state for the average.
    assert!(trainer
        .moments()
        .iter()
        .all(|(n, _, _)| !n.starts_with("teacher/")));
}
