//! The `kdc` binary end to end: exit codes, where output goes, and that bad input gives a
//! clear error rather than a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kdc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .expect("kdc runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp_recipe(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kdc-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.kd"));
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn check_accepts_the_whole_recipe_library() {
    let out = kdc(&["check", "recipes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("recipes and 1 library: ok"), "{err}");
    // The standard library's modules check as libraries.
    let out = kdc(&["check", "compiler/std"]);
    let err = text(&out.stderr);
    assert!(
        out.status.success() && err.contains("libraries: ok"),
        "{err}"
    );
    // A library is not a recipe to run.
    let out = kdc(&["run", "recipes/research/methods.kd"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is a library of functions"), "{err}");
}

#[test]
fn check_rejects_a_wrong_recipe_with_code_location_and_exit_1() {
    let path = temp_recipe(
        "wrong",
        "student = clip(preset: \"ViT-T-16\")\nloss = clip_loss(studnet)\n",
    );
    let out = kdc(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("error[KD0002]: unknown name `studnet`"),
        "{err}"
    );
    assert!(err.contains("wrong.kd:2:18"), "{err}");
    assert!(err.contains("did you mean `student`?"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_missing_file_is_an_error_not_a_panic() {
    let out = kdc(&["check", "no/such/recipe.kd"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot read recipe no/such/recipe.kd"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn fmt_check_passes_on_the_library_and_fails_on_messy_input() {
    assert!(kdc(&["fmt", "--check", "recipes"]).status.success());
    let path = temp_recipe("messy", "loss=clip_loss(m)\n");
    let out = kdc(&["fmt", "--check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("would reformat"));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "loss=clip_loss(m)\n",
        "--check must not write"
    );
    let out = kdc(&["fmt", path.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "loss = clip_loss(m)\n"
    );
}

#[test]
fn explain_prints_codes_and_recipes() {
    let out = kdc(&["explain", "KD0009"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("KD0009: shape mismatch"));
    let out = kdc(&["explain", "KD9999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("there is no diagnostic code KD9999"));
    let out = kdc(&["explain", "crd"]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("KL(p_T^{I→T} ‖ p_S^{I→T})"),
        "{}",
        text(&out.stdout)
    );
    let out = kdc(&["explain", "mse"]);
    assert!(text(&out.stdout).starts_with("mse(a, b)"));
    let out = kdc(&["explain", "recipes/clip_kd/best.kd"]);
    assert!(out.status.success());
    let ir = text(&out.stdout);
    assert!(
        ir.contains("loss = 1 × clip_loss + 1 × crd + 1 × icl + 2000 × fd"),
        "{ir}"
    );
    let out = kdc(&["explain", "recipes/clip_kd/best.kd", "--stage", "ast"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("use std.clip_kd.{crd, icl, fd}"));
}

#[test]
fn run_without_a_recipe_trains_the_quickstart_evaluates_and_logs_each_step() {
    let dir = std::env::temp_dir().join(format!("kdc-cli-{}-run", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = kdc(&[
        "run",
        "--steps",
        "3",
        "--every",
        "1",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("distillation epoch 1 step     3/3"), "{err}");
    for model in ["teacher", "student", "baseline"] {
        assert!(
            err.contains(&format!("zero_shot {model} on Fashion-MNIST test")),
            "{err}"
        );
        assert!(dir
            .join("models")
            .join(model)
            .join("model.safetensors")
            .exists());
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "three steps in each of two stages");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["step"], (i % 3) as u64 + 1);
        assert!(line["loss"].as_f64().unwrap().is_finite());
        assert!(line["lr"].as_f64().unwrap() > 0.0);
        assert!(line["step_seconds"].as_f64().unwrap() > 0.0);
    }
    assert!(lines[5]["terms"]["fd"].as_f64().is_some());
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("eval.json")).unwrap()).unwrap();
    assert_eq!(eval.as_array().unwrap().len(), 6);
    // `kdc eval RUN_FOLDER` finds the recipe through run.json and reproduces the numbers.
    let again = kdc(&["eval", dir.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let evaluated: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("eval.json")).unwrap()).unwrap();
    // Everything but the measured speed.
    let strip = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut r = r.clone();
                assert!(r["images_per_s"].as_f64().unwrap() > 0.0);
                r.as_object_mut().unwrap().remove("images_per_s");
                r
            })
            .collect()
    };
    assert_eq!(strip(&evaluated), strip(&eval));
    // A kdc checkpoint serves as a model's `weights:`: the stage-1 teacher, evaluated from a
    // recipe that names its checkpoint, scores what the run's teacher scored.
    let quickstart = std::fs::read_to_string(root().join("recipes/demo/quickstart.kd")).unwrap();
    let stage1 = dir.join("stage-teacher_training.safetensors");
    let data = root().join("recipes/demo/data/fashion-mnist-mini");
    let recipe = quickstart
        .replace(
            "teacher = clip(",
            &format!(
                "teacher = clip(\n  weights: {:?},",
                stage1.to_str().unwrap()
            ),
        )
        .replace(
            "fashion = \"$demo_data/fashion-mnist-mini\"",
            &format!("fashion = {:?}", data.to_str().unwrap()),
        );
    let recipe = &recipe[..recipe.find("eval = [").unwrap()];
    let recipe =
        format!("{recipe}eval = [zero_shot(model: teacher, data: test, templates: templates)]\n");
    let path = dir.join("from_checkpoint.kd");
    std::fs::write(&path, recipe).unwrap();
    let fresh = dir.join("fresh");
    let out = kdc(&[
        "eval",
        path.to_str().unwrap(),
        "--dir",
        fresh.to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(eval[0]["model"], "teacher");
    let (top1, top5) = (
        eval[0]["metrics"][0][1].as_f64().unwrap(),
        eval[0]["metrics"][1][1].as_f64().unwrap(),
    );
    let want = format!("top1 {:.2} %, top5 {:.2} %", 100.0 * top1, 100.0 * top5);
    assert!(err.contains(&want), "want {want}: {err}");
    // `kdc eval CHECKPOINT`: the stage-1 checkpoint holds the teacher only.
    let out = kdc(&["eval", stage1.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&want), "want {want}: {err}");
    assert!(err.contains("model `student` is not evaluated"), "{err}");
    assert!(
        eval[0]["parameters"].as_u64().unwrap() > eval[0]["image_parameters"].as_u64().unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokenize_prints_the_ids_a_model_reads() {
    let out = kdc(&[
        "tokenize",
        "recipes/demo/quickstart.kd",
        "a photo of a Sneaker",
        "T-shirt/top",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Vec<u32>> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // <start> a photo of a sneaker <end>, in OpenAI CLIP's vocabulary.
    assert_eq!(lines[0], [49406, 320, 1125, 539, 320, 24781, 49407]);
    assert_eq!(lines.len(), 2);
    assert_eq!((lines[1][0], *lines[1].last().unwrap()), (49406, 49407));
    let out = kdc(&[
        "tokenize",
        "recipes/demo/quickstart.kd",
        "--model",
        "nobody",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no model `nobody`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn run_reports_missing_weights_clearly() {
    let out = kdc(&["run", "recipes/clip_kd/best.kd", "--steps", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot read weights") && err.contains("vit-b-16.safetensors"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_recipe_that_is_not_utf8_or_holds_a_nul_gets_a_located_syntax_error() {
    let dir = std::env::temp_dir().join(format!("kdc-cli-{}-bytes", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let latin1 = dir.join("latin1.kd");
    std::fs::write(
        &latin1,
        b"student = clip(preset: \"ViT-T-16\")\n# caf\xe9\n",
    )
    .unwrap();
    let nul = dir.join("nul.kd");
    std::fs::write(&nul, b"student = clip(preset: \"ViT-T-16\")\nloss\0 = 1\n").unwrap();
    for (path, place, what) in [(&latin1, ":2:6", "not UTF-8"), (&nul, ":2:5", "NUL")] {
        for command in ["check", "fmt"] {
            let out = kdc(&[command, path.to_str().unwrap()]);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command}: {err}");
            assert!(err.contains("error[KD0001]"), "{command}: {err}");
            assert!(err.contains(place), "{command}: expected {place}: {err}");
            assert!(err.contains(what), "{command}: {err}");
            assert!(!err.contains("panicked"), "{command}: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    use std::process::Stdio;
    for args in [
        &["explain", "recipes/clip_kd/best.kd"][..],
        &["explain", "KD0009"][..],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kdc"))
            .args(args)
            .current_dir(root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end at once, as `| head -0` would.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {err}");
    }
}

/// A small student on synthetic batches, with `LOSS` as its loss.
fn tiny_recipe(loss: &str, steps: u32) -> String {
    format!(
        "student = clip(
  image: vit(size: 32, patch: 8, width: 16, layers: 1, heads: 2),
  text: transformer(context: 16, vocab: 1000, width: 16, layers: 1, heads: 2),
  embed: 16,
)
data = synthetic(batch: 4, samples: 16, seed: 0)
train = adamw(lr: 1e-3) | steps({steps}) | seed(0)
loss = {loss}
"
    )
}

#[test]
fn a_loss_that_goes_non_finite_stops_the_run_with_the_step_and_the_term() {
    let recipe = temp_recipe(
        "nan",
        &tiny_recipe(
            "clip_loss(student) + mean(log(student.image - student.image))",
            5,
        ),
    );
    let dir = recipe.with_extension("run");
    let out = kdc(&[
        "run",
        recipe.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
        "--no-export",
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("step 1") && err.contains("the term `mean`") && err.contains("-inf"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn recipes_that_once_crashed_run() {
    // A bare learnable parameter as a term; attention over rank-3 tokens; a class token and
    // pairwise distances.
    for (name, loss) in [
        ("param", "clip_loss(student) + param(0.5)"),
        (
            "attention3",
            "clip_loss(student) + mean(attention(student.image_layer(1), student.image_layer(1), student.image_layer(1), heads: 2))",
        ),
        (
            "cls",
            "clip_loss(student) + mean(cdist(student.image_layer(1)[:, 0], student.image))",
        ),
    ] {
        let recipe = temp_recipe(name, &tiny_recipe(loss, 2));
        let dir = recipe.with_extension("run");
        let out = kdc(&["run", recipe.to_str().unwrap(), "--dir", dir.to_str().unwrap(), "--no-export"]);
        let err = text(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
        assert_eq!(log.lines().count(), 2, "{name}: {log}");
        assert!(!log.contains("NaN") && !log.contains("null"), "{name}: {log}");
    }
}

#[test]
fn every_research_recipe_trains_with_finite_losses() {
    let dir = root().join("recipes/research");
    let mut recipes: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kd") && !p.ends_with("methods.kd"))
        .collect();
    recipes.sort();
    assert!(recipes.len() >= 6, "{recipes:?}");
    for recipe in recipes {
        let run = std::env::temp_dir().join(format!(
            "kdc-cli-{}-research-{}",
            std::process::id(),
            recipe.file_stem().unwrap().to_string_lossy()
        ));
        let out = kdc(&[
            "run",
            recipe.to_str().unwrap(),
            "--steps",
            "4",
            "--dir",
            run.to_str().unwrap(),
            "--no-export",
        ]);
        let err = text(&out.stderr);
        assert!(out.status.success(), "{}: {err}", recipe.display());
        let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
        let steps: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(steps.len(), 4, "{}", recipe.display());
        for step in &steps {
            let terms = step["terms"].as_object().expect("terms by name");
            assert!(terms.len() >= 2, "{step}");
            for (name, value) in terms {
                let v = value.as_f64().unwrap_or(f64::NAN);
                assert!(v.is_finite(), "{}: {name} = {value}", recipe.display());
            }
        }
    }
}

#[test]
fn explain_finds_a_user_function_through_the_recipe_that_imports_it() {
    let out = kdc(&["explain", "rkd_angle", "--in", "recipes/research/rkd.kd"]);
    let text_out = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text_out.starts_with("fn rkd_angle(s: Tensor, t: Tensor) -> Scalar"),
        "{text_out}"
    );
    assert!(
        text_out.contains("recipes/research/methods.kd:"),
        "{text_out}"
    );
    assert!(text_out.contains("RKD angle"), "{text_out}");
    // Without the recipe, the error says how to ask.
    let out = kdc(&["explain", "rkd_angle"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--in RECIPE"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn schedules_read_epochs_and_fractions_of_the_stage() {
    // 64 samples in batches of 16: 4 steps per epoch; 8 steps in all.
    let recipe = temp_recipe(
        "epochs",
        &tiny_recipe("clip_loss(student)", 8)
            .replace("samples: 16", "samples: 64")
            .replace("batch: 4", "batch: 16")
            .replace(
                "adamw(lr: 1e-3)",
                "adamw(lr: step(values: [1e-3, 1e-4, 1e-5], at: [epochs(1), fraction(0.75)]))",
            ),
    );
    let dir = recipe.with_extension("run");
    let out = kdc(&[
        "run",
        recipe.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
        "--no-export",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    let lrs: Vec<f64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(lrs, [1e-3, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5]);
}

#[test]
fn query_and_key_taps_give_back_the_attention_probabilities() {
    // softmax(q kᵀ/√d) per head from the query and key taps equals the attention tap (image
    // tower, 2 heads of 8).
    let q = |t: &str| {
        format!("permute(reshape(student.{t}_query(1), shape: [rows(student.image), -1, 2, 8]), axes: [0, 2, 1, 3])")
    };
    let k = |t: &str| {
        format!("permute(reshape(student.{t}_key(1), shape: [rows(student.image), -1, 2, 8]), axes: [0, 2, 1, 3])")
    };
    let loss = format!(
        "clip_loss(student) + 1e6 * mse(softmax({} @ {}.T / sqrt(8), axis: 3), student.image_attention(1))",
        q("image"),
        k("image")
    );
    let recipe = temp_recipe("qkv", &tiny_recipe(&loss, 1));
    let dir = recipe.with_extension("run");
    let out = kdc(&[
        "run",
        recipe.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
        "--no-export",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    let step: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let gap = step["terms"]["mse"].as_f64().unwrap();
    assert!(
        gap < 1e-10,
        "queries and keys do not give the attention: mse {gap}"
    );
    // And a wrong pairing (keys against keys) does not.
    let wrong = loss.replace("image_query(1)", "image_key(1)");
    let recipe = temp_recipe("qkv_wrong", &tiny_recipe(&wrong, 1));
    let dir = recipe.with_extension("run");
    let out = kdc(&[
        "run",
        recipe.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
        "--no-export",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    let step: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(step["terms"]["mse"].as_f64().unwrap() > 1e-8);
}

#[test]
fn kdc_test_runs_test_blocks_and_reports_what_failed() {
    let out = kdc(&["test", "recipes/research"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("5 passed, 0 failed"), "{stdout}");
    let recipe = temp_recipe(
        "unit",
        "fn double(x: Tensor) -> Tensor {
  2 * x
}

test doubles {
  expect(double(tensor([[1, 2], [3, 4]])), tensor([[2, 4], [6, 8]]))
}

test off_by_one {
  expect(double(tensor([1, 2])), tensor([2, 5]))
}

student = clip(preset: \"ViT-T-16\")

test reads_a_model {
  expect(mean(student.image), 0)
}
",
    );
    let out = kdc(&["test", recipe.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("doubles ... ok"), "{stdout}");
    assert!(stdout.contains("off_by_one ... FAILED"), "{stdout}");
    assert!(stdout.contains("entry [1] is 4, expected 5"), "{stdout}");
    assert!(stdout.contains("reads_a_model ... FAILED"), "{stdout}");
    assert!(
        stdout.contains("a test runs on literal tensors, but this one reads a model's output"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 2 failed"), "{stdout}");
}

/// Copies the shipped library's recipes and manifest (no data, no snapshots) to a fresh folder.
fn copy_library(name: &str) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                if path.file_name().unwrap() != "data" {
                    copy(&path, &target);
                }
            } else if path.extension().is_some_and(|e| e == "kd" || e == "toml") {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("kdc-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy(&root().join("recipes"), &dir);
    dir
}

/// The files under `dir` whose names end with `suffix`, sorted.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The bar of `kdc snap` on a copy of the shipped library: record, check, a changed weight
/// fails the check with a diff naming its term, update restores it, a broken recipe is
/// reported and keeps its snapshot, an orphaned snapshot is listed and removed.
#[test]
fn snap_records_checks_updates_and_keeps_the_snapshot_of_a_broken_recipe() {
    let dir = copy_library("snap");
    let d = dir.to_str().unwrap();
    // Every recipe but the library of functions.
    let recipes = files_ending(&dir, ".kd")
        .iter()
        .filter(|p| !p.ends_with("methods.kd"))
        .count();

    let out = kdc(&["snap", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let recorded = files_ending(&dir, ".kd.snap");
    assert_eq!(recorded.len(), recipes, "one snapshot per recipe");
    let fd = dir.join("clip_kd/fd.kd");
    let fd_snap = dir.join("clip_kd/fd.kd.snap");
    let snap_text = std::fs::read_to_string(&fd_snap).unwrap();
    assert!(snap_text.starts_with(&format!(
        "---\nsource: kdc {}\nexpression: kdc snap\ninput_file: fd.kd\n---\n",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(
        snap_text.contains("loss = 1 × clip_loss + 2000 × fd"),
        "{snap_text}"
    );
    assert!(snap_text.contains("lowered training step (cpu backend)"));
    assert!(
        !snap_text.contains(d) && !snap_text.contains(&*root().to_string_lossy()),
        "no absolute paths"
    );

    let out = kdc(&["snap", "--check", d]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains(&format!("{recipes} unchanged")));

    // One weight of one recipe.
    let source = std::fs::read_to_string(&fd).unwrap();
    std::fs::write(&fd, source.replace("2000 * fd", "1000 * fd")).unwrap();
    let out = kdc(&["snap", "--check", d]);
    assert_eq!(out.status.code(), Some(1));
    let diff = text(&out.stdout);
    assert!(
        diff.contains("-  loss = 1 × clip_loss + 2000 × fd"),
        "{diff}"
    );
    assert!(
        diff.contains("+  loss = 1 × clip_loss + 1000 × fd"),
        "{diff}"
    );
    assert!(diff.contains("+  term fd = 1000 × "), "{diff}");
    assert_eq!(
        diff.matches("(recorded)").count(),
        1,
        "only fd.kd changed: {diff}"
    );
    assert!(!diff.contains("\x1b["), "plain text off a terminal");
    assert_eq!(
        std::fs::read_to_string(&fd_snap).unwrap(),
        snap_text,
        "--check writes nothing"
    );

    // Without a flag: the change is left beside the snapshot for review.
    let out = kdc(&["snap", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(dir.join("clip_kd/fd.kd.snap.new").exists());
    assert_eq!(std::fs::read_to_string(&fd_snap).unwrap(), snap_text);

    let out = kdc(&["snap", "--update", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!dir.join("clip_kd/fd.kd.snap.new").exists());
    assert!(std::fs::read_to_string(&fd_snap)
        .unwrap()
        .contains("1000 × fd"));
    let out = kdc(&["snap", "--check", d]);
    assert!(out.status.success(), "{}", text(&out.stdout));

    // A broken recipe: its diagnostics, and its snapshot kept.
    std::fs::write(
        &fd,
        source.replace("clip_loss(student)", "clip_los(student)"),
    )
    .unwrap();
    let kept = std::fs::read_to_string(&fd_snap).unwrap();
    for mode in ["--check", "--update"] {
        let out = kdc(&["snap", mode, d]);
        assert_eq!(out.status.code(), Some(1), "{mode}");
        let err = text(&out.stderr);
        assert!(err.contains("KD0003") && err.contains("clip_los"), "{err}");
        assert!(
            err.contains("fd.kd does not check; its snapshot is left as it was"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&fd_snap).unwrap(), kept, "{mode}");
    }
    std::fs::write(&fd, source.replace("2000 * fd", "1000 * fd")).unwrap();

    // A recipe removed: its snapshot is orphaned, listed by --check, removed by --update.
    std::fs::remove_file(dir.join("clip_kd/gd.kd")).unwrap();
    let out = kdc(&["snap", "--check", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("orphaned:") && text(&out.stdout).contains("gd.kd.snap"));
    let out = kdc(&["snap", "--update", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!dir.join("clip_kd/gd.kd.snap").exists());

    // A new recipe is listed by --check, and the manifest's exclude leaves recipes out.
    std::fs::write(dir.join("clip_kd/fd2.kd"), source).unwrap();
    let out = kdc(&["snap", "--check", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("new:") && text(&out.stdout).contains("fd2.kd"));
    let manifest = std::fs::read_to_string(dir.join("kdc.toml")).unwrap();
    std::fs::write(
        dir.join("kdc.toml"),
        manifest.replace("[snap]\n", "[snap]\nexclude = [\"clip_kd/fd2.kd\"]\n"),
    )
    .unwrap();
    let out = kdc(&["snap", "--check", d]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("1 excluded by kdc.toml"));

    // `lowered = false` leaves the lowered step out of every snapshot.
    let manifest = std::fs::read_to_string(dir.join("kdc.toml")).unwrap();
    std::fs::write(
        dir.join("kdc.toml"),
        manifest.replace("lowered = true", "lowered = false"),
    )
    .unwrap();
    let out = kdc(&["snap", "--check", d]);
    assert_eq!(out.status.code(), Some(1));
    let diff = text(&out.stdout);
    assert_eq!(
        diff.matches("-lowered training step (cpu backend)").count(),
        recipes - 1,
        "every remaining recipe loses its lowered step: {diff}"
    );
    std::fs::write(dir.join("kdc.toml"), manifest).unwrap();

    // --review needs a terminal.
    let out = kdc(&["snap", "--review", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--review asks about each change on a terminal"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Roots: `$name/…` resolves through the manifest; an unknown root is an error with the
/// closest one; a missing folder is a warning; KDC_ROOT_<NAME> overrides the manifest.
#[test]
fn manifest_roots_are_checked_like_names() {
    let dir = std::env::temp_dir().join(format!("kdc-cli-{}-roots", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("lib/sub")).unwrap();
    std::fs::write(
        dir.join("lib/kdc.toml"),
        "[library]\nname = \"t\"\n\n[roots]\nfixtures = \"../nowhere\"\n",
    )
    .unwrap();
    let recipe = dir.join("lib/sub/r.kd");
    let body = std::fs::read_to_string(root().join("recipes/research/dist.kd")).unwrap();
    std::fs::write(&recipe, &body).unwrap();
    std::fs::copy(
        root().join("recipes/research/methods.kd"),
        dir.join("lib/sub/methods.kd"),
    )
    .unwrap();
    let r = recipe.to_str().unwrap();
    let out = kdc(&["check", r]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning[KD0045]: root `fixtures`") && err.contains("does not exist"),
        "{err}"
    );

    let fixtures = root().join("tests/fixtures");
    let out = Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(["check", r])
        .env("KDC_ROOT_FIXTURES", &fixtures)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        !text(&out.stderr).contains("KD0045"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(&recipe, body.replace("$fixtures/", "$fixture/")).unwrap();
    let out = kdc(&["check", r]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("error[KD0044]") && err.contains("declares no root `fixture`"),
        "{err}"
    );
    assert!(err.contains("did you mean `$fixtures`?"), "{err}");
    assert!(
        err.contains("r.kd:"),
        "names the file, line and column: {err}"
    );

    std::fs::write(
        dir.join("lib/kdc.toml"),
        "[library]\nname = \"t\"\n[defaults]\nthreads = \"two\"\n",
    )
    .unwrap();
    let out = kdc(&["check", r]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("error[KD0043]") && err.contains("kdc.toml:4:"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
