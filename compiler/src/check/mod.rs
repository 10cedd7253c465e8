//! The checker: resolves every name, evaluates every compile-time value, infers every tensor's
//! shape and validates every number, producing the IR. It never stops at the first error: each
//! mistake is reported and its value becomes `Value::Error`, which silences everything
//! computed from it, so one run lists every independent error once.
//!
//! By concern: [`stages`] (the recipe, its stages and what they bind), [`terms`] (the loss as
//! weighted terms), [`settings`] (training pipelines, evaluations, unused bindings), [`names`]
//! (name resolution), [`eval`] (bindings, expressions, calls), [`types`] (declared types),
//! [`models`] (a model's fields and methods), [`tensors`] (arithmetic with symbolic shapes),
//! and [`builtins`] (every built-in, by family).

mod builtins;
mod eval;
mod models;
mod names;
pub mod program;
mod settings;
mod stages;
pub(crate) mod tensors;
mod terms;
pub mod tests;
mod types;
mod value;

pub use program::{Loader, Program, STD_MODULES};

use crate::codes::Code;
use crate::diag::{Diagnostic, Diagnostics};
use crate::ir::{self, Graph, NodeId, Op, ParamSpec, Recipe};
use crate::model::ModelSpec;
use crate::source::Span;
use crate::syntax::ast;
use program::ModuleId;
use std::collections::{HashMap, HashSet};
use tensors::width_hint;
use value::Value;

/// `fn name(params) -> T`, with defaults as written.
fn signature(f: &ast::FnDef, text: impl Fn(crate::source::Span) -> String) -> String {
    let params: Vec<String> = f
        .params
        .iter()
        .map(|p| match &p.default {
            Some(d) => format!("{}: {} = {}", p.name.name, p.ty.name, text(d.span)),
            None => format!("{}: {}", p.name.name, p.ty.name),
        })
        .collect();
    let ret = f
        .ret
        .as_ref()
        .map(|r| format!(" -> {}", r.name))
        .unwrap_or_default();
    format!("fn {}({}){ret}", f.name.name, params.join(", "))
}

/// A function a recipe can call, found through the recipe: its own `fn`s and those of every
/// module it loads (user libraries and the standard library), with signature, documentation
/// and where it is defined. For `kdc explain NAME --in RECIPE`.
pub fn describe_in_program(
    program: &Program,
    sources: &crate::source::SourceMap,
    name: &str,
) -> Option<String> {
    for module in &program.modules {
        let Some(f) = module.fn_def(name) else {
            continue;
        };
        let source = sources.get(f.name.span.file);
        let (line, _) = source.line_col(f.name.span.start as usize);
        let file = &source.name;
        let sig = signature(f, |s| sources.text(s).to_string());
        return Some(format!(
            "{sig}  [{file}:{line}, module {}]\n\n{}",
            module.name,
            f.doc.join("\n")
        ));
    }
    None
}

/// What a function is, for `kdc explain NAME`: a built-in's signature and summary, or a
/// standard-library function's signature and `##` documentation (its formula).
pub fn describe_function(name: &str) -> Option<String> {
    if let Some(text) = builtins::describe(name) {
        return Some(text);
    }
    for (module, text) in STD_MODULES {
        let Ok(ast) = crate::syntax::parse(crate::source::FileId(0), text) else {
            continue;
        };
        for item in &ast.items {
            if let ast::Item::Fn(f) = item {
                if f.name.name == name {
                    let params: Vec<String> = f
                        .params
                        .iter()
                        .map(|p| match &p.default {
                            // Defaults as written, so a variant's default is visible.
                            Some(d) => format!(
                                "{}: {} = {}",
                                p.name.name,
                                p.ty.name,
                                &text[d.span.start as usize..d.span.end as usize]
                            ),
                            None => format!("{}: {}", p.name.name, p.ty.name),
                        })
                        .collect();
                    let ret = f
                        .ret
                        .as_ref()
                        .map(|r| format!(" -> {}", r.name))
                        .unwrap_or_default();
                    let import = if *module == "prelude" {
                        "always in scope".to_string()
                    } else {
                        format!("use std.{module}.{name}")
                    };
                    return Some(format!(
                        "fn {name}({}){ret}  [{import}]\n\n{}",
                        params.join(", "),
                        f.doc.join("\n")
                    ));
                }
            }
        }
    }
    None
}

/// Checks a loaded program. The recipe comes back only when there is no error.
/// Its `test` blocks are checked too and come back ready for `kdc test`.
pub fn check(program: &Program) -> (Option<Recipe>, Vec<tests::TestCase>, Diagnostics) {
    let mut checker = Checker::new(program);
    let recipe = checker.recipe();
    let tests = checker.test_cases();
    let diags = checker.diags;
    let recipe = if diags.has_errors() { None } else { recipe };
    (recipe, tests, diags)
}

impl<'p> Checker<'p> {
    fn new(program: &'p Program) -> Checker<'p> {
        Checker {
            program,
            diags: Diagnostics::default(),
            models: Vec::new(),
            model_sites: HashMap::new(),
            used: HashSet::new(),
            used_stage: HashSet::new(),
            shared_masks: HashMap::new(),
            roots_warned: HashSet::new(),
        }
    }
}

/// Names with a meaning of their own at the top level of a recipe or stage.
pub(crate) const SPECIAL_BINDINGS: &[&str] = &["loss", "data", "train", "eval", "freeze"];

pub(crate) struct Checker<'p> {
    program: &'p Program,
    /// Roots already reported missing on this machine (one warning each).
    roots_warned: HashSet<String>,
    diags: Diagnostics,
    models: Vec<ModelSpec>,
    /// Models by the span of the `clip(…)` call that made them, so that a model is one model
    /// however many stages evaluate its binding.
    model_sites: HashMap<Span, ir::ModelId>,
    /// Bindings that something looked up, for unused-binding warnings.
    used: HashSet<(ModuleId, String)>,
    /// Stage bindings that something looked up: (stage, name).
    used_stage: HashSet<(usize, String)>,
    /// Shared patch masks by name: (patches, ratio, where first used).
    shared_masks: HashMap<String, (u64, f64, Span)>,
}

/// A binding is identified by the stage it is evaluated for and where it is defined.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BindingKey {
    /// `Some(i)`: a binding inside stage i.
    stage_scope: Option<usize>,
    module: ModuleId,
    name: String,
}

/// Everything that belongs to one stage's graph.
#[derive(Default)]
pub(crate) struct Ctx {
    graph: Graph,
    params: Vec<ParamSpec>,
    param_keys: HashMap<String, ir::ParamId>,
    /// Hash-consing of pure nodes: identical operations on identical inputs, with the same
    /// result shape, are one node (a reshape or an identity matrix is known by its shape).
    node_keys: HashMap<(Op, Vec<NodeId>, crate::shape::Shape), NodeId>,
    memo: HashMap<BindingKey, Value>,
    evaluating: Vec<(BindingKey, Span)>,
    /// User functions being evaluated, outermost first: (module, name, call span).
    calls: Vec<(ModuleId, String, Span)>,
}

/// Where names are looked up: function locals, then a stage's bindings, then the module.
#[derive(Clone)]
pub(crate) struct Env {
    module: ModuleId,
    stage: Option<usize>,
    locals: HashMap<String, Value>,
}

impl Checker<'_> {
    pub(in crate::check) fn error(&mut self, ctx: &Ctx, mut d: Diagnostic) {
        // An error inside a function body names the call in the recipe that led there.
        if let Some((module, name, span)) = ctx.calls.first() {
            let _ = module;
            if span.file != d.primary.span.file || !ctx.calls.iter().any(|c| c.2 == d.primary.span)
            {
                d = d.label(*span, format!("in this call of `{name}`"));
            }
        }
        self.diags.push(d);
    }
}

/// How deep bindings may refer to one another (`a = b`, `b = c`, …) before the checker gives
/// up, so that no recipe can exhaust the stack.
pub(crate) const MAX_BINDING_DEPTH: usize = 200;

/// Patch tokens kept by MAE-style masking: ⌊N · (1 − ratio)⌋.
pub fn kept_patches(patches: u64, ratio: f64) -> u64 {
    (patches as f64 * (1.0 - ratio)).floor() as u64
}

pub(crate) fn type_error(span: Span, what: &str, found: &Value, expected: &str) -> Diagnostic {
    Diagnostic::error(
        Code::TypeMismatch,
        span,
        format!("`{what}` must be {expected}, but this is {}", found.kind()),
    )
    .primary_label(format!("this is {}", found.kind()))
}
