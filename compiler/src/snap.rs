//! `kdc snap`: snapshot tests for recipe libraries.
//!
//! Each recipe gets a snapshot beside it (`fd.kd` → `fd.kd.snap`): a readable, stable text of
//! what it computes — the checked recipe as `kdc explain` prints it (models, data, each
//! stage's optimiser groups, learnable parts, every loss term expanded to primitives with
//! shapes) and the lowered training step in brief (operations per pass, parameters, memory
//! plan). Nothing in it depends on the machine: no absolute paths, times or thread counts.
//!
//! The file format is insta's (a `---` header with `source`, `expression`, `input_file`,
//! then the body), so insta's tools (`cargo insta show`) and parsers read the files. Only the
//! body is compared: the header names the kdc version that last wrote the snapshot.
//!
//! A survey ([`survey`]) compiles every recipe and compares, writing nothing; the CLI then
//! records, checks, updates or reviews. Libraries of functions have no snapshot of their own:
//! a change to one shows in the snapshots of the recipes that use it.

use crate::check::Loader;
use crate::manifest;
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// The snapshot of `recipe`: beside it, with `.snap` appended.
pub fn snapshot_path(recipe: &Path) -> PathBuf {
    let mut name = recipe.as_os_str().to_owned();
    name.push(".snap");
    PathBuf::from(name)
}

/// A snapshot that waits for review (`kdc snap` leaves one beside a changed snapshot).
pub fn pending_path(snapshot: &Path) -> PathBuf {
    let mut name = snapshot.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// The header kdc writes above a body.
pub fn header(recipe: &Path) -> String {
    let file = recipe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "---\nsource: kdc {}\nexpression: kdc snap\ninput_file: {file}\n---\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The body of a snapshot file (everything after the header), or the whole text when it has
/// no header.
pub fn body(text: &str) -> &str {
    if let Some(rest) = text.strip_prefix("---\n") {
        if let Some(end) = rest.find("\n---\n") {
            return &rest[end + 5..];
        }
    }
    text
}

/// What a recipe computes, as its snapshot's body.
pub fn render(recipe: &crate::ir::Recipe, lowered: bool) -> String {
    let mut out = crate::explain::ir(recipe);
    if lowered {
        let backend = crate::engine::device::cpu();
        let guard = crate::engine::exec::lock(&backend);
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("\nlowered training step (cpu backend)\n");
        for line in crate::explain::step_summary(recipe, &**guard).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    normalise(&out)
}

/// Line endings and the end of the text made canonical: no trailing spaces, one final newline.
fn normalise(text: &str) -> String {
    let mut out: String = text
        .lines()
        .map(|l| l.trim_end())
        .collect::<Vec<_>>()
        .join("\n");
    while out.ends_with('\n') {
        out.pop();
    }
    out.push('\n');
    out
}

/// How a recipe's snapshot compares.
#[derive(Debug)]
pub enum Outcome {
    /// The snapshot matches.
    Unchanged,
    /// No snapshot yet.
    New { body: String },
    /// The snapshot differs.
    Changed { old: String, new: String },
    /// The recipe does not check: its rendered diagnostics. Its snapshot stays as it is.
    Failed { diagnostics: String },
    /// A snapshot whose recipe is gone, excluded, or a library.
    Orphaned,
}

/// One recipe (or orphaned snapshot) of a survey.
#[derive(Debug)]
pub struct Entry {
    /// The recipe, as named on the command line or found in a folder.
    pub recipe: PathBuf,
    pub snapshot: PathBuf,
    pub outcome: Outcome,
}

/// What a survey covered, besides its entries.
#[derive(Debug, Default)]
pub struct Survey {
    pub entries: Vec<Entry>,
    /// Libraries of functions (no snapshot of their own).
    pub libraries: Vec<PathBuf>,
    /// Recipes the manifest's `[snap] exclude` leaves out.
    pub excluded: Vec<PathBuf>,
}

/// Compiles every recipe under `paths` (files, or folders searched recursively) and compares
/// it with its snapshot; writes nothing. `color` colours the diagnostics of failed recipes.
pub fn survey(
    paths: &[PathBuf],
    loader: &(dyn Loader + Sync),
    color: bool,
) -> std::io::Result<Survey> {
    let mut survey = Survey::default();
    let mut recipes = Vec::new();
    let mut snapshots = BTreeSet::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut recipes, &mut snapshots)?;
        } else if path.exists() {
            recipes.push(path.clone());
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} does not exist", path.display()),
            ));
        }
    }
    recipes.sort();
    recipes.dedup();
    let mut libraries: HashMap<PathBuf, Option<Library>> = HashMap::new();
    let mut covered = BTreeSet::new();
    for recipe in recipes {
        let library = library_of(&recipe, loader, &mut libraries);
        if library.is_some_and(|l| l.excludes(&recipe)) {
            survey.excluded.push(recipe);
            continue;
        }
        let lowered = library.is_none_or(|l| l.lowered);
        let snapshot = snapshot_path(&recipe);
        let bytes = std::fs::read(&recipe)?;
        let compiled = crate::compile_bytes(&recipe.display().to_string(), &bytes, loader);
        let outcome = if compiled.diagnostics.has_errors() {
            Outcome::Failed {
                diagnostics: crate::diag::render_all(
                    &compiled.diagnostics,
                    &compiled.sources,
                    crate::diag::RenderOptions { color },
                ),
            }
        } else if compiled.is_library() {
            survey.libraries.push(recipe);
            continue;
        } else {
            let recipe_ir = compiled
                .recipe
                .as_ref()
                .expect("a recipe without errors is checked");
            let new = render(recipe_ir, lowered);
            match std::fs::read_to_string(&snapshot) {
                Ok(old) if body(&old) == new => Outcome::Unchanged,
                Ok(old) => Outcome::Changed {
                    old: body(&old).to_string(),
                    new,
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::New { body: new },
                Err(e) => return Err(e),
            }
        };
        covered.insert(snapshot.clone());
        survey.entries.push(Entry {
            recipe,
            snapshot,
            outcome,
        });
    }
    for snapshot in snapshots {
        if !covered.contains(&snapshot) {
            let recipe = snapshot.with_extension("");
            survey.entries.push(Entry {
                recipe,
                snapshot,
                outcome: Outcome::Orphaned,
            });
        }
    }
    Ok(survey)
}

/// A manifest's snapshot settings, read once per manifest file: its `exclude` patterns
/// compiled, against its folder made absolute.
struct Library {
    lowered: bool,
    dir: Option<PathBuf>,
    exclude: globset::GlobSet,
}

impl Library {
    fn read(file: &Path, text: &str, loader: &dyn Loader) -> Option<Library> {
        // Errors in the manifest are reported with the recipe's diagnostics.
        let mut sources = crate::source::SourceMap::new();
        let mut diags = crate::diag::Diagnostics::default();
        let manifest = manifest::parse(file, text, &|n| loader.env(n), &mut sources, &mut diags)?;
        let dir = if manifest.dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &manifest.dir
        };
        let mut exclude = globset::GlobSetBuilder::new();
        for pattern in &manifest.snap.exclude {
            // The manifest's parser has checked every pattern.
            if let Ok(glob) = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
            {
                exclude.add(glob);
            }
        }
        Some(Library {
            lowered: manifest.snap.lowered,
            dir: std::fs::canonicalize(dir).ok(),
            exclude: exclude
                .build()
                .unwrap_or_else(|_| globset::GlobSet::empty()),
        })
    }

    /// Whether `[snap] exclude` covers `recipe`.
    fn excludes(&self, recipe: &Path) -> bool {
        if self.exclude.is_empty() {
            return false;
        }
        let (Some(dir), Ok(absolute)) = (&self.dir, std::fs::canonicalize(recipe)) else {
            return false;
        };
        absolute
            .strip_prefix(dir)
            .is_ok_and(|relative| self.exclude.is_match(relative))
    }
}

/// The library governing `recipe` (its manifest's settings), read once per manifest file.
fn library_of<'c>(
    recipe: &Path,
    loader: &dyn Loader,
    cache: &'c mut HashMap<PathBuf, Option<Library>>,
) -> Option<&'c Library> {
    let (file, text) = loader.manifest(recipe)?;
    cache
        .entry(file.clone())
        .or_insert_with(|| Library::read(&file, &text, loader))
        .as_ref()
}

fn walk(
    dir: &Path,
    recipes: &mut Vec<PathBuf>,
    snapshots: &mut BTreeSet<PathBuf>,
) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_dir() {
            if !name.starts_with('.') {
                walk(&path, recipes, snapshots)?;
            }
        } else if name.ends_with(".kd") {
            recipes.push(path);
        } else if name.ends_with(".kd.snap") {
            snapshots.insert(path);
        }
    }
    Ok(())
}

/// A unified diff of two snapshot bodies, coloured for a terminal when `color`.
pub fn diff(old: &str, new: &str, snapshot: &Path, color: bool) -> String {
    let text = similar::TextDiff::from_lines(old, new);
    let name = snapshot.display().to_string();
    let unified = text
        .unified_diff()
        .context_radius(3)
        .header(&format!("{name} (recorded)"), &format!("{name} (now)"))
        .to_string();
    if !color {
        return unified;
    }
    unified
        .lines()
        .map(|line| {
            let code = if line.starts_with("+++") || line.starts_with("---") {
                "1"
            } else if line.starts_with('+') {
                "32"
            } else if line.starts_with('-') {
                "31"
            } else if line.starts_with("@@") {
                "36"
            } else {
                return format!("{line}\n");
            };
            format!("\x1b[{code}m{line}\x1b[0m\n")
        })
        .collect()
}

/// Writes `body` as the snapshot of `recipe` (atomically: a temporary file renamed over it)
/// and removes a pending one.
pub fn accept(recipe: &Path, snapshot: &Path, body: &str) -> std::io::Result<()> {
    write_atomic(snapshot, &format!("{}{body}", header(recipe)))?;
    remove_if_present(&pending_path(snapshot))
}

/// Leaves `body` beside the snapshot as `<snapshot>.new`, for review.
pub fn pend(recipe: &Path, snapshot: &Path, body: &str) -> std::io::Result<()> {
    write_atomic(
        &pending_path(snapshot),
        &format!("{}{body}", header(recipe)),
    )
}

/// Removes a file that may not be there.
pub fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

/// An answer in `kdc snap --review`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Accept,
    Reject,
    Skip,
}

/// Walks through every new and changed snapshot: shows the diff and asks (reading lines of
/// `input`: `a`ccept, `r`eject, `s`kip). Accepting writes the snapshot; rejecting keeps the
/// recorded one and drops a pending one; skipping leaves the change pending beside it.
/// Returns the answers in order.
pub fn review(
    entries: &[Entry],
    input: &mut dyn BufRead,
    output: &mut dyn Write,
    color: bool,
) -> std::io::Result<Vec<(PathBuf, Answer)>> {
    let to_review: Vec<&Entry> = entries
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::New { .. } | Outcome::Changed { .. }))
        .collect();
    let mut answers = Vec::new();
    for (i, entry) in to_review.iter().enumerate() {
        let (old, new) = match &entry.outcome {
            Outcome::New { body } => ("", body.as_str()),
            Outcome::Changed { old, new } => (old.as_str(), new.as_str()),
            _ => unreachable!("filtered above"),
        };
        let what = if old.is_empty() { "new" } else { "changed" };
        writeln!(
            output,
            "[{}/{}] {} ({what})",
            i + 1,
            to_review.len(),
            entry.recipe.display()
        )?;
        write!(output, "{}", diff(old, new, &entry.snapshot, color))?;
        let answer = loop {
            write!(output, "accept (a), reject (r) or skip (s)? ")?;
            output.flush()?;
            let mut line = String::new();
            if input.read_line(&mut line)? == 0 {
                // End of input: leave the rest for later.
                writeln!(output)?;
                break Answer::Skip;
            }
            match line.trim().to_ascii_lowercase().as_str() {
                "a" | "accept" => break Answer::Accept,
                "r" | "reject" => break Answer::Reject,
                "s" | "skip" | "" => break Answer::Skip,
                other => writeln!(output, "`{other}`: answer a, r or s")?,
            }
        };
        match answer {
            Answer::Accept => accept(&entry.recipe, &entry.snapshot, new)?,
            Answer::Reject => remove_if_present(&pending_path(&entry.snapshot))?,
            Answer::Skip => pend(&entry.recipe, &entry.snapshot, new)?,
        }
        answers.push((entry.recipe.clone(), answer));
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_what_follows_the_header() {
        let text = format!("{}models\n  a\n", header(Path::new("x/fd.kd")));
        assert!(text.contains("input_file: fd.kd\n"));
        assert_eq!(body(&text), "models\n  a\n");
        assert_eq!(body("no header\n"), "no header\n");
        assert_eq!(normalise("a  \nb\n\n\n"), "a\nb\n");
    }

    #[test]
    fn diffs_are_unified_and_coloured_only_when_asked() {
        let plain = diff("a\nb\nc\n", "a\nB\nc\n", Path::new("r.kd.snap"), false);
        assert!(
            plain.contains("--- r.kd.snap (recorded)\n+++ r.kd.snap (now)\n"),
            "{plain}"
        );
        assert!(plain.contains("-b\n+B\n"), "{plain}");
        assert!(!plain.contains('\x1b'));
        let coloured = diff("a\nb\nc\n", "a\nB\nc\n", Path::new("r.kd.snap"), true);
        assert!(coloured.contains("\x1b[31m-b\x1b[0m") && coloured.contains("\x1b[32m+B\x1b[0m"));
    }

    /// `--review`'s loop on scripted answers: accept writes, reject keeps the recorded text,
    /// skip leaves the change pending; an unknown answer asks again; the end of input skips.
    #[test]
    fn review_accepts_rejects_and_skips() {
        let dir = std::env::temp_dir().join(format!("kdc-snap-review-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let entry = |name: &str, old: Option<&str>, new: &str| {
            let recipe = dir.join(name);
            let snapshot = snapshot_path(&recipe);
            if let Some(old) = old {
                std::fs::write(&snapshot, format!("{}{old}", header(&recipe))).unwrap();
            }
            Entry {
                recipe,
                snapshot,
                outcome: match old {
                    Some(old) => Outcome::Changed {
                        old: old.into(),
                        new: new.into(),
                    },
                    None => Outcome::New { body: new.into() },
                },
            }
        };
        let entries = vec![
            entry("a.kd", Some("old a\n"), "new a\n"),
            entry("b.kd", Some("old b\n"), "new b\n"),
            entry("c.kd", None, "new c\n"),
            entry("d.kd", Some("old d\n"), "new d\n"),
        ];
        let mut input = std::io::Cursor::new("a\nwhat\nr\ns\n");
        let mut output = Vec::new();
        let answers = review(&entries, &mut input, &mut output, false).unwrap();
        let answers: Vec<Answer> = answers.into_iter().map(|(_, a)| a).collect();
        assert_eq!(
            answers,
            [Answer::Accept, Answer::Reject, Answer::Skip, Answer::Skip]
        );
        let read = |p: &Path| std::fs::read_to_string(p).map(|t| body(&t).to_string());
        assert_eq!(read(&entries[0].snapshot).unwrap(), "new a\n");
        assert_eq!(read(&entries[1].snapshot).unwrap(), "old b\n");
        assert!(read(&entries[2].snapshot).is_err());
        assert_eq!(
            read(&pending_path(&entries[2].snapshot)).unwrap(),
            "new c\n"
        );
        assert_eq!(read(&entries[3].snapshot).unwrap(), "old d\n");
        assert_eq!(
            read(&pending_path(&entries[3].snapshot)).unwrap(),
            "new d\n"
        );
        let shown = String::from_utf8(output).unwrap();
        assert!(
            shown.contains("[1/4]") && shown.contains("-old a\n+new a\n"),
            "{shown}"
        );
        assert!(shown.contains("`what`: answer a, r or s"), "{shown}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
