//! Shared helpers for the test runners: compile a file the way the CLI does and render its
//! diagnostics deterministically (no colour, paths relative to the repository).

use kdc::diag::{render_all, RenderOptions};
use kdc::{compile, Compiled, FsLoader};
use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `path` relative to the repository root, with forward slashes.
pub fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// Compiles a recipe file; names it by its repository-relative path so snapshots are stable.
pub fn compile_file(path: &Path) -> (Compiled, String) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    // Modules are resolved relative to the recipe, so compile from the repository root.
    let name = relative(path);
    let compiled = with_root(|| compile(&name, &text, &FsLoader));
    (compiled, text)
}

/// Runs `f` with the repository root as the working directory. Tests in one binary run on
/// several threads, so the change is serialised.
pub fn with_root<T>(f: impl FnOnce() -> T) -> T {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_current_dir(root()).unwrap();
    f()
}

pub fn rendered(compiled: &Compiled) -> String {
    render_all(
        &compiled.diagnostics,
        &compiled.sources,
        RenderOptions { color: false },
    )
}

/// The AST print without positions, to compare two parses of the same program.
pub fn ast_without_positions(text: &str) -> Result<String, String> {
    let mut sources = kdc::source::SourceMap::new();
    let file = sources.add("input.kd", text);
    match kdc::syntax::parse(file, text) {
        Ok(ast) => {
            let printed = kdc::explain::ast(&ast, &sources);
            Ok(printed
                .lines()
                .map(|l| l.split(" @").next().unwrap().to_string())
                .collect::<Vec<_>>()
                .join("\n"))
        }
        Err(d) => Err(format!("{d:?}")),
    }
}

/// Every comment's text, in order.
pub fn comments(text: &str) -> Vec<String> {
    let mut sources = kdc::source::SourceMap::new();
    let file = sources.add("input.kd", text);
    kdc::syntax::parse(file, text)
        .map(|a| a.comments.into_iter().map(|c| c.text).collect())
        .unwrap_or_default()
}
