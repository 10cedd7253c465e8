//! Every recipe of the library through every stage: parse (AST snapshot), check (no
//! diagnostics but missing roots), and format (the recipe is already canonical); and the
//! library's own snapshot tests, run the way users run theirs (`kdc snap --check recipes`).

use kdc::codes::Code;
use kdc::snap::{survey, Outcome};
use kdc::FsLoader;
use kdc_tests::{ast_without_positions, compile_file, rendered, root, with_root};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[test]
fn every_recipe_checks_and_explains() {
    let base = root().join("recipes");
    insta::glob!(base.as_path(), "**/*.kd", |path| {
        let (compiled, text) = compile_file(path);
        // A root whose folder is missing here (runs/ before the first run) is a warning of
        // this machine, not of the recipe.
        assert!(
            compiled
                .diagnostics
                .iter()
                .all(|d| d.code == Code::MissingRoot),
            "{} has diagnostics:\n{}",
            path.display(),
            rendered(&compiled)
        );
        let program = compiled.program.as_ref().unwrap();
        if compiled.is_library() {
            // A library of functions (recipes/research/methods.kd): its syntax tree and
            // canonical layout; its functions are checked where recipes call them.
            assert!(compiled.recipe.is_none());
            insta::assert_snapshot!(
                "ast",
                kdc::explain::ast(&program.root().ast, &compiled.sources)
            );
            let formatted = kdc::format::format(&program.root().ast, &text);
            assert_eq!(
                formatted,
                text,
                "{} is not in canonical format",
                path.display()
            );
            return;
        }
        let recipe = compiled
            .recipe
            .as_ref()
            .expect("a recipe without errors compiles");
        assert!(!recipe.stages.is_empty());
        for stage in &recipe.stages {
            assert!(!stage.terms.is_empty());
            for term in &stage.terms {
                assert!(
                    stage.graph.nodes[term.node].shape.is_scalar(),
                    "term {} is not a scalar",
                    term.label
                );
            }
        }
        insta::assert_snapshot!(
            "ast",
            kdc::explain::ast(&program.root().ast, &compiled.sources)
        );
        let formatted = kdc::format::format(&program.root().ast, &text);
        assert_eq!(
            formatted,
            text,
            "{} is not in canonical format (run `kdc fmt`)",
            path.display()
        );
        assert_eq!(
            ast_without_positions(&formatted),
            ast_without_positions(&text)
        );
    });
}

#[test]
fn the_standard_library_is_canonical_and_documented() {
    for (name, text) in kdc::check::STD_MODULES {
        let mut sources = kdc::source::SourceMap::new();
        let file = sources.add(format!("std/{name}.kd"), *text);
        let ast = kdc::syntax::parse(file, text).unwrap_or_else(|e| panic!("std/{name}.kd: {e:?}"));
        assert_eq!(
            &kdc::format::format(&ast, text),
            text,
            "std/{name}.kd is not in canonical format"
        );
        for item in &ast.items {
            if let kdc::syntax::ast::Item::Fn(f) = item {
                let public = !f.name.name.starts_with('_');
                let helper = f.name.name.starts_with("infonce_grad_contrast");
                assert!(
                    !public || helper || !f.doc.is_empty(),
                    "std/{name}.kd: fn {} has no `##` doc comment with its formula",
                    f.name.name
                );
            }
        }
    }
}

/// The shipped library's snapshots (recipes/**/*.kd.snap) match what each recipe computes
/// now: the same survey `kdc snap --check recipes` makes.
#[test]
fn the_shipped_library_matches_its_snapshots() {
    let found = with_root(|| survey(&[PathBuf::from("recipes")], &FsLoader, false)).unwrap();
    let mut problems = String::new();
    for entry in &found.entries {
        match &entry.outcome {
            Outcome::Unchanged => {}
            Outcome::Changed { old, new } => {
                problems.push_str(&kdc::snap::diff(old, new, &entry.snapshot, false))
            }
            other => problems.push_str(&format!("{}: {other:?}\n", entry.recipe.display())),
        }
    }
    assert!(
        problems.is_empty(),
        "{problems}\nreview with `cargo run --release -- snap --review recipes` (or accept all with --update)"
    );
    assert_eq!(
        found.libraries,
        vec![PathBuf::from("recipes/research/methods.kd")]
    );
    assert!(found.entries.len() >= 28, "{} recipes", found.entries.len());
}

/// The shipped recipes name their files through recipes/kdc.toml's roots: no path climbs out
/// of the library with `../`.
#[test]
fn shipped_recipes_use_the_manifest_roots() {
    let base = root().join("recipes");
    let mut offenders = Vec::new();
    insta::glob!(base.as_path(), "**/*.kd", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split('#').next().unwrap_or("");
            if code.contains("\"../") || code.contains("\"./../") {
                offenders.push(format!("{}:{}: {line}", path.display(), i + 1));
            }
        }
    });
    assert!(offenders.is_empty(), "{offenders:#?}");
}

/// A loader that serves one standard-library module with a change.
struct ChangedStd {
    module: &'static str,
    text: String,
}

impl kdc::check::Loader for ChangedStd {
    fn read(&self, path: &Path) -> Option<String> {
        FsLoader.read(path)
    }
    fn std_module(&self, name: &str) -> Option<String> {
        if name == self.module {
            Some(self.text.clone())
        } else {
            FsLoader.std_module(name)
        }
    }
    fn manifest(&self, recipe: &Path) -> Option<(PathBuf, String)> {
        FsLoader.manifest(recipe)
    }
    fn env(&self, name: &str) -> Option<String> {
        FsLoader.env(name)
    }
    fn is_dir(&self, path: &Path) -> bool {
        FsLoader.is_dir(path)
    }
}

/// The recipes whose `use std.<module>…` lines import `name` (read from their text, not
/// through the compiler).
fn importers(module: &str, name: &str) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let prefix = format!("use std.{module}.");
    with_root(|| {
        let mut stack = vec![PathBuf::from("recipes")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "kd") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let imports = text
                        .lines()
                        .filter_map(|l| l.strip_prefix(&prefix))
                        .any(|l| {
                            l.trim_matches(|c| c == '{' || c == '}' || c == ' ')
                                .split(',')
                                .any(|n| n.trim() == name)
                        });
                    if imports {
                        out.insert(path);
                    }
                }
            }
        }
    });
    out
}

/// Changing one standard-library function changes the snapshots of exactly the recipes that
/// import it.
#[test]
fn a_std_change_reaches_exactly_the_recipes_that_import_it() {
    let (_, original) = kdc::check::STD_MODULES
        .iter()
        .find(|(n, _)| *n == "clip_kd")
        .unwrap();
    let before = "mse(image_to(s, t), norm(t.image)) + mse(text_to(s, t), norm(t.text))";
    assert!(
        original.contains(before),
        "std.clip_kd's fd changed: update this test"
    );
    let loader = ChangedStd {
        module: "clip_kd",
        text: original.replace(
            before,
            "mse(image_to(s, t), norm(t.image)) + l1(text_to(s, t), norm(t.text))",
        ),
    };
    let found = with_root(|| survey(&[PathBuf::from("recipes")], &loader, false)).unwrap();
    let changed: BTreeSet<PathBuf> = found
        .entries
        .iter()
        .filter(|e| {
            if let Outcome::Changed { old, new } = &e.outcome {
                // The change shows as the new primitive in the expansion.
                assert!(
                    new.matches("l1(").count() > old.matches("l1(").count(),
                    "{}",
                    e.recipe.display()
                );
            }
            !matches!(e.outcome, Outcome::Unchanged)
        })
        .map(|e| e.recipe.clone())
        .collect();
    let expected = importers("clip_kd", "fd");
    assert!(expected.len() >= 5, "{expected:?}");
    assert_eq!(changed, expected);
}
