//! A run killed with SIGKILL at arbitrary points and resumed with `kdc run --resume` reaches
//! exactly the losses of an uninterrupted run with the same seed, across a stage boundary
//! (`from:`), on real data with shuffling and augmentation; and a checkpoint of another recipe
//! is refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn write_recipe(dir: &Path, steps: u64) -> PathBuf {
    let data = root().join("recipes/demo/data/fashion-mnist-mini");
    let text = format!(
        r#"use std.clip_kd.{{crd, fd}}
pixels = image_pre(resize: 28, crop: 28, mean: [0.286, 0.286, 0.286], std: [0.353, 0.353, 0.353])
teacher = clip(
  image: vit(size: 28, patch: 7, width: 32, layers: 1, heads: 2),
  text: transformer(context: 8, vocab: 49408, width: 16, layers: 1, heads: 2),
  embed: 16,
  tokenizer: clip_bpe(context: 8),
  preprocess: pixels,
)
student = clip(
  image: vit(size: 28, patch: 7, width: 16, layers: 1, heads: 2),
  text: transformer(context: 8, vocab: 49408, width: 16, layers: 1, heads: 2),
  embed: 8,
  tokenizer: clip_bpe(context: 8),
  preprocess: pixels,
)
data = fashion_mnist(root: "{}", templates: ["a photo of a {{}}.", "a {{}}."], batch: 40)
train = adamw(lr: cosine(1e-3, warmup: 5), weight_decay: 0.05) | steps({steps}) | checkpoint(every: 4) | seed(3)
stage first {{
  loss = clip_loss(teacher)
}}
stage second(from: first) {{
  loss = clip_loss(student) + crd(student, teacher) + 100 * fd(student, teacher)
  freeze = teacher
}}
"#,
        data.display()
    );
    let path = dir.join("resume.kd");
    std::fs::write(&path, text).unwrap();
    path
}

fn kdc(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kdc"));
    c.args(args).env("NO_COLOR", "1");
    c
}

fn lines(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Starts a run and kills it (SIGKILL) once its log has `at` lines.
fn kill_at(mut child: Child, log: &Path, at: usize) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if lines(log).len() >= at {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("the run did not reach {at} steps");
}

#[test]
fn a_killed_run_resumes_to_exactly_the_uninterrupted_losses() {
    let base = std::env::temp_dir().join(format!("kdc-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let path = write_recipe(&base, 24);
    let recipe = path.to_str().unwrap();

    let whole = base.join("whole");
    let out = kdc(&[
        "run",
        recipe,
        "--dir",
        whole.to_str().unwrap(),
        "--no-export",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = lines(&whole.join("log.jsonl"));
    assert_eq!(reference.len(), 48);

    // Killed in the middle of stage 1, then in the middle of stage 2, each time resumed.
    let parts = base.join("parts");
    let log = parts.join("log.jsonl");
    let mut kills = 0;
    for (resume, at) in [(false, 9), (true, 30)] {
        let mut args = vec![
            "run",
            recipe,
            "--dir",
            parts.to_str().unwrap(),
            "--no-export",
        ];
        if resume {
            args.push("--resume");
        }
        let child = kdc(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if kill_at(child, &log, at) {
            kills += 1;
        }
    }
    assert_eq!(kills, 2, "both runs were killed before they finished");
    let out = kdc(&[
        "run",
        recipe,
        "--dir",
        parts.to_str().unwrap(),
        "--no-export",
        "--resume",
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming stage"), "{err}");
    let resumed = lines(&log);
    assert_eq!(
        resumed.len(),
        reference.len(),
        "one line per step, none lost or repeated"
    );
    for (a, b) in reference.iter().zip(&resumed) {
        assert_eq!(a["stage"], b["stage"]);
        assert_eq!(a["step"], b["step"]);
        assert_eq!(a["loss"], b["loss"], "step {} of {}", a["step"], a["stage"]);
        assert_eq!(a["terms"], b["terms"]);
        assert_eq!(a["grad_norm"], b["grad_norm"]);
    }

    // The same folder, another recipe: refused, with a reason.
    std::fs::create_dir_all(base.join("other")).unwrap();
    let other = write_recipe(&base.join("other"), 25);
    let out = kdc(&[
        "run",
        other.to_str().unwrap(),
        "--dir",
        parts.to_str().unwrap(),
        "--resume",
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("another recipe"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&base);
}
