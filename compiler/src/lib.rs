//! kdc: a compiler for knowledge-distillation recipes for CLIP models.
//!
//! The pipeline is a list of stages, each one function (see ARCHITECTURE.md):
//!
//! | stage | function | produces |
//! |---|---|---|
//! | parse | [`syntax::parse`] | [`syntax::ast::File`]: the syntax tree with spans and comments |
//! | load | [`check::Program::load`] | the recipe and every module it imports |
//! | check | [`check::check`] | [`ir::Recipe`]: names resolved, shapes inferred, values validated |
//! | format | [`format::format`] | canonical source text |
//! | explain | [`explain`] | readable prints of the AST and the IR |
//!
//! Only the CLI (`main.rs`), [`FsLoader`] and [`snap`] (which reads and writes snapshots) touch
//! the file system.

pub mod check;
pub mod codes;
pub mod data;
pub mod diag;
pub mod engine;
pub mod evaluate;
pub mod explain;
pub mod format;
pub mod ir;
pub mod manifest;
pub mod model;
pub mod plot;
pub mod run;
pub mod shape;
pub mod snap;
pub mod source;
mod suggest;
pub mod syntax;
pub mod testing;
pub mod tokenize;

use check::{Loader, Program};
use diag::Diagnostics;
use source::SourceMap;
use std::path::Path;

/// The outcome of compiling one recipe up to the checked IR.
pub struct Compiled {
    pub sources: SourceMap,
    pub program: Option<Program>,
    pub recipe: Option<ir::Recipe>,
    /// The root module's `test` blocks, checked, for `kdc test`.
    pub tests: Vec<check::tests::TestCase>,
    pub diagnostics: Diagnostics,
}

impl Compiled {
    /// Whether the file is a library of functions rather than a recipe (and parsed).
    pub fn is_library(&self) -> bool {
        self.program.as_ref().is_some_and(|p| p.root().is_library())
    }

    /// Where the recipe's paths resolve: the folder of the path it was compiled under, and
    /// its manifest's roots.
    pub fn base(&self) -> manifest::Base {
        let dir = self
            .program
            .as_ref()
            .and_then(|p| Path::new(&p.root().name).parent().map(Path::to_path_buf))
            .unwrap_or_default();
        manifest::Base::with_manifest(dir, self.program.as_ref().and_then(|p| p.manifest.as_ref()))
    }
}

/// Parses, loads and checks the recipe `path` whose text is `text`.
///
/// The work runs on a thread of its own with a large stack: the parser and the checker recurse
/// over expressions and bindings, and although both depths are bounded (`MAX_NESTING`, the
/// binding-depth limit), the bound must never be reachable as a stack overflow, whatever stack
/// the caller's thread has.
pub fn compile(path: &str, text: &str, loader: &(dyn Loader + Sync)) -> Compiled {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(COMPILER_STACK)
            .spawn_scoped(scope, || compile_here(path, text, loader))
            .expect("starting the compiler thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// [`compile`] on a file's bytes: bytes that are not UTF-8 are a syntax error at the first
/// offending byte (reported on the text decoded with replacement characters).
pub fn compile_bytes(path: &str, bytes: &[u8], loader: &(dyn Loader + Sync)) -> Compiled {
    match std::str::from_utf8(bytes) {
        Ok(text) => compile(path, text, loader),
        Err(e) => {
            let valid = e.valid_up_to();
            let text = String::from_utf8_lossy(bytes).into_owned();
            let mut sources = SourceMap::new();
            let file = sources.add(path, text.clone());
            // The replacement character stands where the bad byte was.
            let at = valid;
            let end = (at + '\u{fffd}'.len_utf8()).min(text.len());
            let mut diagnostics = Diagnostics::default();
            diagnostics.push(
                diag::Diagnostic::error(
                    codes::Code::Syntax,
                    source::Span::new(file, at, end),
                    format!(
                        "a recipe must be UTF-8 text; byte {} (0x{:02x}) is not",
                        valid, bytes[valid]
                    ),
                )
                .primary_label("not UTF-8")
                .hint("save the file as UTF-8"),
            );
            Compiled {
                sources,
                program: None,
                recipe: None,
                tests: Vec::new(),
                diagnostics,
            }
        }
    }
}

const COMPILER_STACK: usize = 256 << 20;

fn compile_here(path: &str, text: &str, loader: &dyn Loader) -> Compiled {
    let mut sources = SourceMap::new();
    let mut diagnostics = Diagnostics::default();
    let program = Program::load(path, text, loader, &mut sources, &mut diagnostics);
    let mut recipe = None;
    let mut tests = Vec::new();
    if let Some(program) = &program {
        let (checked, test_cases, check_diags) = check::check(program);
        diagnostics.extend(check_diags);
        tests = test_cases;
        recipe = if diagnostics.has_errors() {
            None
        } else {
            checked
        };
    }
    Compiled {
        sources,
        program,
        recipe,
        tests,
        diagnostics,
    }
}

/// Reads modules from the file system.
pub struct FsLoader;

impl Loader for FsLoader {
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    fn manifest(&self, recipe: &Path) -> Option<(std::path::PathBuf, String)> {
        let file = manifest::find_upward(recipe.parent().unwrap_or(Path::new("")))?;
        let text = std::fs::read_to_string(&file).ok()?;
        Some((file, text))
    }

    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
}

/// A number the way a person writes it: `0.07`, `2000`, `1e-8`, at most six significant
/// digits (`14.2857` for 1/0.07).
pub fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return format!("{v}");
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    // The shortest of up to six significant digits that gives back the value, else six.
    let text = (1..=6)
        .map(|digits| format!("{:.*e}", digits - 1, v))
        .find(|t| t.parse::<f64>().ok() == Some(v))
        .unwrap_or_else(|| format!("{:.5e}", v));
    let value: f64 = text.parse().unwrap();
    let exponent = value.abs().log10().floor() as i32;
    if (-4..15).contains(&exponent) {
        let mantissa_digits = text
            .split('e')
            .next()
            .unwrap()
            .trim_start_matches('-')
            .replace('.', "")
            .len() as i32;
        let decimals = (mantissa_digits - 1 - exponent).max(0) as usize;
        format!("{:.*}", decimals, value)
    } else {
        let (mantissa, exp) = text.split_once('e').unwrap();
        format!(
            "{}e{}",
            mantissa.trim_end_matches('0').trim_end_matches('.'),
            exp
        )
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_num;

    #[test]
    fn numbers_print_as_written() {
        assert_eq!(fmt_num(0.07), "0.07");
        assert_eq!(fmt_num(2000.0), "2000");
        assert_eq!(fmt_num(1e-8), "1e-8");
        assert_eq!(fmt_num(1.0 / 0.07), "14.2857");
        assert_eq!(fmt_num(-0.5), "-0.5");
        assert_eq!(fmt_num(0.0625), "0.0625");
        assert_eq!(fmt_num(0.044194173824159216), "0.0441942");
    }
}
