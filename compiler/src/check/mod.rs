//! The checker: resolves every name, evaluates every compile-time value, infers every tensor's
//! shape and validates every number, producing the IR. It never stops at the first error: each
//! mistake is reported and its value becomes `Value::Error`, which silences everything
//! computed from it, so one run lists every independent error once.

mod builtins;
pub mod program;
mod value;

pub use program::{Loader, Program, STD_MODULES};

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

use crate::codes::Code;
use crate::diag::{Diagnostic, Diagnostics};
use crate::ir::{self, Graph, Node, NodeId, Op, ParamSpec, Recipe, Schedule, Term};
use crate::model::{ModelSpec, Part};
use crate::shape::Shape;
use crate::source::Span;
use crate::syntax::ast::{self, BinOp, Expr, ExprKind};
use program::ModuleId;
use std::collections::{HashMap, HashSet};
use value::{FuncRef, TrainPart, Value};

/// Checks a loaded program. The recipe comes back only when there is no error.
pub fn check(program: &Program) -> (Option<Recipe>, Diagnostics) {
    let mut checker = Checker {
        program,
        diags: Diagnostics::default(),
        models: Vec::new(),
        model_sites: HashMap::new(),
        used: HashSet::new(),
        used_stage: HashSet::new(),
    };
    let recipe = checker.recipe();
    let diags = checker.diags;
    let recipe = if diags.has_errors() { None } else { recipe };
    (recipe, diags)
}

/// Names with a meaning of their own at the top level of a recipe or stage.
const SPECIAL_BINDINGS: &[&str] = &["loss", "data", "train", "eval", "freeze"];

struct Checker<'p> {
    program: &'p Program,
    diags: Diagnostics,
    models: Vec<ModelSpec>,
    /// Models by the span of the `clip(…)` call that made them, so that a model is one model
    /// however many stages evaluate its binding.
    model_sites: HashMap<Span, ir::ModelId>,
    /// Bindings that something looked up, for unused-binding warnings.
    used: HashSet<(ModuleId, String)>,
    /// Stage bindings that something looked up: (stage, name).
    used_stage: HashSet<(usize, String)>,
}

/// A binding is identified by the stage it is evaluated for and where it is defined.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BindingKey {
    /// `Some(i)`: a binding inside stage i.
    stage_scope: Option<usize>,
    module: ModuleId,
    name: String,
}

/// Everything that belongs to one stage's graph.
#[derive(Default)]
struct Ctx {
    graph: Graph,
    params: Vec<ParamSpec>,
    param_keys: HashMap<String, ir::ParamId>,
    /// Hash-consing of pure nodes: identical operations on identical inputs are one node.
    node_keys: HashMap<(Op, Vec<NodeId>), NodeId>,
    memo: HashMap<BindingKey, Value>,
    evaluating: Vec<(BindingKey, Span)>,
    /// User functions being evaluated, outermost first: (module, name, call span).
    calls: Vec<(ModuleId, String, Span)>,
}

/// Where names are looked up: function locals, then a stage's bindings, then the module.
#[derive(Clone)]
struct Env {
    module: ModuleId,
    stage: Option<usize>,
    locals: HashMap<String, Value>,
}

impl Env {
    fn module(module: ModuleId) -> Env {
        Env {
            module,
            stage: None,
            locals: HashMap::new(),
        }
    }
}

impl<'p> Checker<'p> {
    fn error(&mut self, ctx: &Ctx, mut d: Diagnostic) {
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

    // ----------------------------------------------------------------------------------------
    // The recipe as a whole.

    fn recipe(&mut self) -> Option<Recipe> {
        let root = self.program.root();
        self.check_fn_signatures();
        self.resolve_fn_bodies();
        for (index, item) in root.ast.items.iter().enumerate() {
            let _ = index;
            if let ast::Item::Stage(_) = item {}
        }
        let stages: Vec<&ast::Stage> = root.stages().collect();
        let mut stage_names: HashMap<&str, (usize, Span)> = HashMap::new();
        for (i, s) in stages.iter().enumerate() {
            if let Some((_, previous)) = stage_names.get(s.name.name.as_str()) {
                self.diags.push(
                    Diagnostic::error(
                        Code::DuplicateDefinition,
                        s.name.span,
                        format!("stage `{}` is defined twice", s.name.name),
                    )
                    .primary_label("defined again here")
                    .label(*previous, "first defined here"),
                );
                continue;
            }
            stage_names.insert(&s.name.name, (i, s.name.span));
        }
        // Stage-level duplicate bindings.
        for s in &stages {
            let mut seen: HashMap<&str, Span> = HashMap::new();
            for b in &s.bindings {
                if let Some(previous) = seen.get(b.name.name.as_str()) {
                    self.diags.push(
                        Diagnostic::error(
                            Code::DuplicateDefinition,
                            b.name.span,
                            format!(
                                "`{}` is bound twice in stage `{}`",
                                b.name.name, s.name.name
                            ),
                        )
                        .primary_label("bound again here")
                        .label(*previous, "first bound here"),
                    );
                }
                seen.insert(&b.name.name, b.name.span);
            }
        }

        let mut ir_stages = Vec::new();
        if stages.is_empty() {
            let mut ctx = Ctx::default();
            // Bindings in source order first, so that models are numbered as they are written.
            self.evaluate_all_bindings(&mut ctx);
            let stage = self.stage(&mut ctx, None, "main", None, Span::new(root.ast.file, 0, 0));
            ir_stages.push(stage);
        } else {
            // The top level on its own, so errors in bindings no stage uses are still found.
            let mut top = Ctx::default();
            self.evaluate_all_bindings(&mut top);
            for (i, s) in stages.iter().enumerate() {
                let from = self.stage_from(s, i, &stage_names);
                let mut ctx = Ctx::default();
                ir_stages.push(self.stage(&mut ctx, Some(i), &s.name.name, from, s.name.span));
                for b in &s.bindings {
                    if b.name.name == "eval" {
                        self.diags.push(
                            Diagnostic::error(Code::MisplacedBinding, b.name.span, "`eval` belongs at the top level, not in a stage")
                                .primary_label("inside stage")
                                .hint("evaluation runs once, on the recipe's models, after the last stage: move it out of the stage"),
                        );
                    } else if !SPECIAL_BINDINGS.contains(&b.name.name.as_str()) {
                        let key = BindingKey {
                            stage_scope: Some(i),
                            module: 0,
                            name: b.name.name.clone(),
                        };
                        if let Value::Model { .. } = self.eval_binding(&mut ctx, key, b.name.span) {
                            self.diags.push(
                                Diagnostic::error(Code::MisplacedBinding, b.name.span, format!("stage `{}` defines a model", s.name.name))
                                    .primary_label("a model inside a stage")
                                    .hint("define models at the top level, where every stage sees the same one; a stage chooses what to freeze with `freeze = [...]`"),
                            );
                            continue;
                        }
                        if !self.used_stage.contains(&(i, b.name.name.clone())) {
                            self.diags.push(
                                Diagnostic::warning(Code::UnusedBinding, b.name.span, format!("`{}` is never used in stage `{}`", b.name.name, s.name.name))
                                    .primary_label("defined here, used nowhere")
                                    .note("a stage's bindings are seen by that stage's own bindings only, not by the top level's"),
                            );
                        }
                    }
                }
            }
        }
        let eval = self.eval_specs();
        self.warn_unused();
        let stages: Option<Vec<ir::Stage>> = ir_stages.into_iter().collect();
        Some(Recipe {
            models: self.models.clone(),
            stages: stages?,
            eval,
        })
    }

    fn stage_from(
        &mut self,
        stage: &ast::Stage,
        index: usize,
        names: &HashMap<&str, (usize, Span)>,
    ) -> Option<usize> {
        let mut from = None;
        for arg in &stage.args {
            let Some(name) = &arg.name else {
                self.diags.push(
                    Diagnostic::error(
                        Code::StageChain,
                        arg.span,
                        "a stage takes only `from: stage`",
                    )
                    .primary_label("positional argument")
                    .hint(format!(
                        "write `stage {}(from: previous_stage) {{ … }}`",
                        stage.name.name
                    )),
                );
                continue;
            };
            if name.name != "from" {
                let mut d = Diagnostic::error(
                    Code::UnknownArgument,
                    name.span,
                    format!("a stage has no argument `{}`", name.name),
                )
                .primary_label("unknown argument")
                .note("a stage takes `from: stage`, the stage whose checkpoint it starts from");
                if crate::suggest::closest(&name.name, ["from"]).is_some() {
                    d = d.hint("did you mean `from`?");
                }
                self.diags.push(d);
                continue;
            }
            let ExprKind::Name(target) = &arg.value.kind else {
                self.diags.push(
                    Diagnostic::error(
                        Code::StageChain,
                        arg.value.span,
                        "`from:` takes the name of an earlier stage",
                    )
                    .primary_label("not a stage name"),
                );
                continue;
            };
            match names.get(target.as_str()) {
                Some((i, _)) if *i < index => from = Some(*i),
                Some((i, span)) if *i == index => {
                    self.diags.push(
                        Diagnostic::error(
                            Code::StageChain,
                            arg.value.span,
                            format!("stage `{target}` cannot start from itself"),
                        )
                        .primary_label("this stage")
                        .label(*span, "defined here"),
                    );
                }
                Some((_, span)) => {
                    self.diags.push(
                        Diagnostic::error(Code::StageChain, arg.value.span, format!("stage `{}` starts from `{target}`, which runs after it", stage.name.name))
                            .primary_label("a later stage")
                            .label(*span, format!("`{target}` is defined here"))
                            .note("stages run in the order they are written; each may start only from an earlier one"),
                    );
                }
                None => {
                    let mut d = Diagnostic::error(
                        Code::StageChain,
                        arg.value.span,
                        format!("there is no stage `{target}`"),
                    )
                    .primary_label("unknown stage");
                    if let Some(s) = crate::suggest::closest(target, names.keys().copied()) {
                        d = d.hint(format!("did you mean `{s}`?"));
                    }
                    self.diags.push(d);
                }
            }
        }
        from
    }

    /// Every top-level binding of the recipe, so that errors anywhere are found.
    fn evaluate_all_bindings(&mut self, ctx: &mut Ctx) {
        let root = self.program.root();
        let mut names: Vec<(&String, &usize)> = root.bindings.iter().collect();
        names.sort_by_key(|(_, i)| **i);
        for (name, _) in names {
            if name == "loss" || name == "train" || name == "eval" {
                continue;
            }
            let span = root.binding(name).unwrap().name.span;
            self.eval_binding(
                ctx,
                BindingKey {
                    stage_scope: None,
                    module: 0,
                    name: name.clone(),
                },
                span,
            );
        }
        // A `fn` nobody calls is still resolved, with its parameters as opaque values.
        for module in 0..self.program.modules.len() {
            let _ = module;
        }
    }

    /// The binding `name` as a stage sees it: the stage's own, else the top level's.
    fn stage_binding(
        &self,
        stage: Option<usize>,
        name: &str,
    ) -> Option<(BindingKey, &'p ast::Binding)> {
        let root = self.program.root();
        if let Some(i) = stage {
            let s = root.stages().nth(i).unwrap();
            if let Some(b) = s.bindings.iter().find(|b| b.name.name == name) {
                return Some((
                    BindingKey {
                        stage_scope: Some(i),
                        module: 0,
                        name: name.into(),
                    },
                    b,
                ));
            }
        }
        root.binding(name).map(|b| {
            (
                BindingKey {
                    stage_scope: None,
                    module: 0,
                    name: name.into(),
                },
                b,
            )
        })
    }

    fn stage(
        &mut self,
        ctx: &mut Ctx,
        index: Option<usize>,
        name: &str,
        from: Option<usize>,
        header: Span,
    ) -> Option<ir::Stage> {
        let env = Env {
            module: 0,
            stage: index,
            locals: HashMap::new(),
        };
        let where_ = match index {
            Some(_) => format!("stage `{name}`"),
            None => "the recipe".to_string(),
        };
        let missing = |this: &mut Self, what: &str, example: &str| {
            let span = if index.is_some() {
                header
            } else {
                first_line(this.program)
            };
            this.diags.push(
                Diagnostic::error(
                    Code::MissingBinding,
                    span,
                    format!("{where_} has no `{what}`"),
                )
                .primary_label(format!("`{what}` is needed here"))
                .hint(format!("add for example `{what} = {example}`")),
            );
        };

        // The loss, term by term.
        let mut terms = Vec::new();
        let loss_ok;
        match self.stage_binding(index, "loss") {
            Some((key, binding)) => {
                self.used.insert((0, "loss".into()));
                ctx.evaluating.push((key.clone(), binding.name.span));
                let env = if key.stage_scope.is_some() {
                    env.clone()
                } else {
                    Env {
                        stage: None,
                        ..env.clone()
                    }
                };
                loss_ok = self.loss_terms(ctx, &env, &binding.value, &mut terms);
                ctx.evaluating.pop();
            }
            None => {
                missing(self, "loss", "clip_loss(student)");
                loss_ok = false;
            }
        }

        let data = match self.stage_binding(index, "data") {
            Some((key, binding)) => match self.eval_binding(ctx, key, binding.name.span) {
                Value::Data(d) => Some(d),
                Value::Error => None,
                other => {
                    self.error(
                        ctx,
                        type_error(
                            binding.value.span,
                            "data",
                            &other,
                            "`pairs(…)`, `folders(…)`, `fashion_mnist(…)` or `synthetic(…)`",
                        ),
                    );
                    None
                }
            },
            None => {
                missing(self, "data", "pairs(csv: \"data/pairs.csv\", batch: 256)");
                None
            }
        };

        let train = match self.stage_binding(index, "train") {
            Some((key, binding)) => {
                let value = self.eval_binding(ctx, key, binding.name.span);
                self.train_spec(ctx, value, binding.value.span)
            }
            None => {
                missing(self, "train", "adamw(lr: 1e-3) | epochs(10)");
                None
            }
        };

        let mut frozen = Vec::new();
        if let Some((key, binding)) = self.stage_binding(index, "freeze") {
            let value = self.eval_binding(ctx, key, binding.name.span);
            let items = match value {
                Value::List(items) => items,
                Value::Error => Vec::new(),
                other => vec![(other, binding.value.span)],
            };
            for (item, span) in items {
                match item {
                    Value::Part(model, part) => frozen.push((model, part)),
                    Value::Model { id, .. } => frozen.extend(Part::ALL.map(|p| (id, p))),
                    Value::Error => {}
                    other => self.error(
                        ctx,
                        type_error(
                            span,
                            "freeze",
                            &other,
                            "a model or a part such as `student.text_tower`",
                        ),
                    ),
                }
            }
        }

        // What the loss can train.
        let mut trainable = Vec::new();
        let mut has_param = false;
        if loss_ok && !terms.is_empty() {
            let reached = reachable(&ctx.graph, terms.iter().map(|t: &Term| t.node));
            for node in reached {
                match &ctx.graph.nodes[node].op {
                    Op::Tap { model, tap, .. } => {
                        let parts: &[Part] = match tap {
                            ir::Tap::Image => &[Part::Vision, Part::VisionProjection],
                            ir::Tap::Patches | ir::Tap::ImageLayer(_) => &[Part::Vision],
                            ir::Tap::Text => &[Part::Text, Part::TextProjection],
                            ir::Tap::TextLayer(_) => &[Part::Text],
                            ir::Tap::Scale => &[Part::Scale],
                        };
                        for &p in parts {
                            if !self.models[*model].part_frozen(p)
                                && !frozen.contains(&(*model, p))
                                && !trainable.contains(&(*model, p))
                            {
                                trainable.push((*model, p));
                            }
                        }
                    }
                    Op::Param(_) => has_param = true,
                    _ => {}
                }
            }
            trainable.sort();
            if trainable.is_empty() && !has_param {
                let span = terms.first().map(|t| t.span).unwrap_or(header);
                let all = terms
                    .iter()
                    .map(|t| t.span)
                    .reduce(|a, b| a.to(b))
                    .unwrap_or(span);
                self.diags.push(
                    Diagnostic::error(
                        Code::NotALoss,
                        all,
                        format!("the loss of {where_} trains nothing"),
                    )
                    .primary_label("every model this loss reads is frozen")
                    .hint(
                        "make the loss depend on a trainable model (the student), or un-freeze it",
                    ),
                );
            }
        }

        let recipe_ok = loss_ok && data.is_some() && train.is_some();
        recipe_ok.then(|| ir::Stage {
            name: name.to_string(),
            from,
            data: data.unwrap(),
            train: train.unwrap(),
            graph: std::mem::take(&mut ctx.graph),
            terms,
            params: std::mem::take(&mut ctx.params),
            frozen,
            trainable,
        })
    }

    /// Splits `loss = a + w * f(…) - g(…) / 2 …` into weighted terms. Numbers and schedules
    /// multiplying a term are its weight; the rest must be a scalar tensor.
    fn loss_terms(&mut self, ctx: &mut Ctx, env: &Env, expr: &Expr, terms: &mut Vec<Term>) -> bool {
        let mut summands = Vec::new();
        split_sum(expr, 1.0, &mut summands);
        let mut ok = true;
        let mut labels: HashMap<String, usize> = HashMap::new();
        for (sign, summand) in summands {
            let mut factors = Vec::new();
            split_product(summand, false, &mut factors);
            let mut weight = Schedule::Constant(sign);
            let mut tensors: Vec<(NodeId, Shape, Span, bool)> = Vec::new();
            let mut body_expr: Option<&Expr> = None;
            let mut bad = false;
            for (factor, reciprocal) in factors {
                let value = self.eval(ctx, env, factor);
                match value {
                    Value::Error => bad = true,
                    Value::Num(v) => {
                        if reciprocal && v == 0.0 {
                            self.error(
                                ctx,
                                Diagnostic::error(
                                    Code::NotFinite,
                                    factor.span,
                                    "a loss term is divided by zero",
                                )
                                .primary_label("this is 0"),
                            );
                            bad = true;
                        } else {
                            let v = if reciprocal { 1.0 / v } else { v };
                            if !v.is_finite() {
                                self.error(
                                    ctx,
                                    Diagnostic::error(
                                        Code::NotFinite,
                                        factor.span,
                                        "a loss weight must be a finite number",
                                    )
                                    .primary_label("this weight is not finite"),
                                );
                                bad = true;
                            }
                            weight = weight.scaled(v);
                        }
                    }
                    Value::Schedule(s)
                        if !reciprocal && matches!(weight, Schedule::Constant(_)) =>
                    {
                        let Schedule::Constant(c) = weight else {
                            unreachable!()
                        };
                        weight = s.scaled(c);
                    }
                    other => match self.to_tensor(ctx, other, factor.span) {
                        Some((node, shape)) => {
                            if body_expr.is_none() {
                                body_expr = Some(factor);
                            }
                            tensors.push((node, shape, factor.span, reciprocal));
                        }
                        None => bad = true,
                    },
                }
            }
            if bad {
                ok = false;
                continue;
            }
            if tensors.is_empty() {
                self.error(
                    ctx,
                    Diagnostic::error(Code::NotALoss, summand.span, "this loss term is a constant")
                        .primary_label("nothing here depends on a model")
                        .hint("a constant adds nothing to the gradient; remove it"),
                );
                ok = false;
                continue;
            }
            let (mut node, mut shape, span, reciprocal) = tensors[0].clone();
            if reciprocal {
                let one = self.push_node(ctx, Op::Const(1.0), vec![], Shape::scalar(), span);
                node = self.push_node(ctx, Op::Div, vec![one, node], shape.clone(), span);
            }
            for (other, other_shape, other_span, reciprocal) in tensors.into_iter().skip(1) {
                let op = if reciprocal { BinOp::Div } else { BinOp::Mul };
                match self.tensor_binary(
                    ctx,
                    op,
                    (node, shape.clone(), span),
                    (other, other_shape, other_span),
                    summand.span,
                ) {
                    Some((n, s)) => {
                        node = n;
                        shape = s;
                    }
                    None => {
                        ok = false;
                        continue;
                    }
                }
            }
            if !shape.is_scalar() {
                self.error(
                    ctx,
                    Diagnostic::error(
                        Code::NotALoss,
                        summand.span,
                        format!("a loss term must be a scalar, but this one is a tensor {shape}"),
                    )
                    .primary_label(format!("this is {shape}"))
                    .hint("reduce it to a scalar, for example with `mean(…)`"),
                );
                ok = false;
                continue;
            }
            let base = body_expr
                .and_then(label_of)
                .unwrap_or_else(|| "term".to_string());
            let count = labels.entry(base.clone()).or_insert(0);
            *count += 1;
            let label = if *count == 1 {
                base
            } else {
                format!("{base}#{count}")
            };
            terms.push(Term {
                label,
                weight,
                node,
                span: summand.span,
            });
        }
        ok
    }

    fn train_spec(&mut self, ctx: &Ctx, value: Value, span: Span) -> Option<ir::TrainSpec> {
        let parts = match value {
            Value::Train(parts) => parts,
            Value::TrainPart(p) => vec![(p, span)],
            Value::Error => return None,
            other => {
                self.error(
                    ctx,
                    type_error(
                        span,
                        "train",
                        &other,
                        "a pipeline such as `adamw(lr: 1e-3) | epochs(10)`",
                    ),
                );
                return None;
            }
        };
        let mut seen: HashMap<&'static str, Span> = HashMap::new();
        let mut spec = ir::TrainSpec {
            optimizer: ir::AdamW {
                lr: Schedule::Constant(0.0),
                weight_decay: 0.0,
                betas: (0.9, 0.999),
                eps: 1e-8,
                no_decay: vec![],
            },
            length: ir::Length::Steps(0),
            clip_grad: None,
            accumulate: 1,
            precision: "fp32".into(),
            seed: 0,
            checkpoint_every: None,
        };
        let mut ok = true;
        for (part, part_span) in parts {
            let setting = part.setting();
            if let Some(previous) = seen.get(setting) {
                self.error(
                    ctx,
                    Diagnostic::error(
                        Code::DuplicateTrainSetting,
                        part_span,
                        format!("the training pipeline sets its {setting} twice"),
                    )
                    .primary_label("set again here")
                    .label(*previous, "first set here"),
                );
                ok = false;
                continue;
            }
            seen.insert(setting, part_span);
            match part {
                TrainPart::Optimizer(o) => spec.optimizer = o,
                TrainPart::Epochs(n) => spec.length = ir::Length::Epochs(n),
                TrainPart::Steps(n) => spec.length = ir::Length::Steps(n),
                TrainPart::ClipGrad(v) => spec.clip_grad = Some(v),
                TrainPart::Accumulate(n) => spec.accumulate = n,
                TrainPart::Precision(p) => spec.precision = p.to_string(),
                TrainPart::Seed(s) => spec.seed = s,
                TrainPart::Checkpoint(n) => spec.checkpoint_every = Some(n),
            }
        }
        for (setting, example) in [
            ("optimiser", "adamw(lr: 1e-3)"),
            ("length", "epochs(10)` or `steps(1000)"),
        ] {
            if !seen.contains_key(setting) && ok {
                self.error(
                    ctx,
                    Diagnostic::error(
                        Code::DuplicateTrainSetting,
                        span,
                        format!("the training pipeline has no {setting}"),
                    )
                    .primary_label(format!("no {setting} here"))
                    .hint(format!("add `| {example}`")),
                );
                ok = false;
            }
        }
        ok.then_some(spec)
    }

    fn eval_specs(&mut self) -> Vec<ir::EvalSpec> {
        let mut ctx = Ctx::default();
        let Some(binding) = self.program.root().binding("eval") else {
            return Vec::new();
        };
        self.used.insert((0, "eval".into()));
        let value = self.eval_binding(
            &mut ctx,
            BindingKey {
                stage_scope: None,
                module: 0,
                name: "eval".into(),
            },
            binding.name.span,
        );
        let items = match value {
            Value::List(items) => items,
            Value::Error => Vec::new(),
            other => vec![(other, binding.value.span)],
        };
        let mut out = Vec::new();
        for (item, span) in items {
            match item {
                Value::Eval(e) => out.push(e),
                Value::Error => {}
                other => self.error(
                    &ctx,
                    type_error(span, "eval", &other, "`zero_shot(…)` or `retrieval(…)`"),
                ),
            }
        }
        out
    }

    fn warn_unused(&mut self) {
        let root = self.program.root();
        let mut unused: Vec<&ast::Binding> = root
            .bindings
            .keys()
            .filter(|name| {
                !SPECIAL_BINDINGS.contains(&name.as_str())
                    && !self.used.contains(&(0, (*name).clone()))
            })
            .filter_map(|name| root.binding(name))
            .collect();
        unused.sort_by_key(|b| b.span.start);
        for b in unused {
            self.diags.push(
                Diagnostic::warning(
                    Code::UnusedBinding,
                    b.name.span,
                    format!("`{}` is never used", b.name.name),
                )
                .primary_label("defined here, used nowhere")
                .hint("remove it, or use it in the loss, data, training or evaluation"),
            );
        }
    }

    /// Unknown type names in `fn` signatures, and duplicate parameters.
    fn check_fn_signatures(&mut self) {
        for module in &self.program.modules {
            for item in &module.ast.items {
                let ast::Item::Fn(f) = item else { continue };
                let mut seen: HashMap<&str, Span> = HashMap::new();
                for p in &f.params {
                    if let Some(previous) = seen.get(p.name.name.as_str()) {
                        self.diags.push(
                            Diagnostic::error(
                                Code::DuplicateDefinition,
                                p.name.span,
                                format!("parameter `{}` is declared twice", p.name.name),
                            )
                            .primary_label("declared again here")
                            .label(*previous, "first declared here"),
                        );
                    }
                    seen.insert(&p.name.name, p.name.span);
                    self.check_type_name(&p.ty);
                }
                if let Some(ret) = &f.ret {
                    self.check_type_name(ret);
                }
                let mut lets: HashMap<&str, Span> = HashMap::new();
                for l in &f.lets {
                    if let Some(previous) = lets
                        .get(l.name.name.as_str())
                        .or_else(|| seen.get(l.name.name.as_str()))
                    {
                        self.diags.push(
                            Diagnostic::error(
                                Code::DuplicateDefinition,
                                l.name.span,
                                format!("`{}` is defined twice in `{}`", l.name.name, f.name.name),
                            )
                            .primary_label("defined again here")
                            .label(*previous, "first defined here"),
                        );
                    }
                    lets.insert(&l.name.name, l.name.span);
                }
            }
        }
    }

    /// Every name in every function body is resolved once, whether or not the function is
    /// called. (Shapes are checked at each call, with the arguments' real shapes.)
    fn resolve_fn_bodies(&mut self) {
        for (module_id, module) in self.program.modules.iter().enumerate() {
            for item in &module.ast.items {
                let ast::Item::Fn(f) = item else { continue };
                let mut locals: Vec<String> = Vec::new();
                for p in &f.params {
                    if let Some(default) = &p.default {
                        self.resolve_expr(module_id, &[], default);
                    }
                }
                locals.extend(f.params.iter().map(|p| p.name.name.clone()));
                for l in &f.lets {
                    self.resolve_expr(module_id, &locals, &l.value);
                    locals.push(l.name.name.clone());
                }
                self.resolve_expr(module_id, &locals, &f.body);
            }
        }
    }

    fn module_defines(&self, module: ModuleId, name: &str) -> bool {
        let m = &self.program.modules[module];
        m.bindings.contains_key(name)
            || m.fns.contains_key(name)
            || m.imports.contains_key(name)
            || m.failed_imports.contains(name)
            || builtins::CONSTANTS.contains(&name)
            || builtins::BUILTINS.iter().any(|b| b.name == name)
    }

    fn resolve_expr(&mut self, module: ModuleId, locals: &[String], e: &Expr) {
        match &e.kind {
            ExprKind::Name(n) => {
                if !locals.contains(n) && !self.module_defines(module, n) {
                    let env = Env {
                        module,
                        stage: None,
                        locals: locals.iter().map(|l| (l.clone(), Value::Error)).collect(),
                    };
                    self.unknown_name(&Ctx::default(), &env, n, e.span, false);
                }
            }
            ExprKind::Call(callee, args) => {
                let flags: Vec<&str> = match &callee.kind {
                    ExprKind::Name(n) => {
                        if !locals.contains(n) && !self.module_defines(module, n) {
                            let env = Env {
                                module,
                                stage: None,
                                locals: locals.iter().map(|l| (l.clone(), Value::Error)).collect(),
                            };
                            self.unknown_name(&Ctx::default(), &env, n, callee.span, true);
                        }
                        builtins::flag_names(n)
                    }
                    _ => {
                        self.resolve_expr(module, locals, callee);
                        Vec::new()
                    }
                };
                for a in args {
                    let bare_flag = matches!(&a.value.kind, ExprKind::Name(n) if a.name.is_none() && flags.contains(&n.as_str()));
                    if !bare_flag {
                        self.resolve_expr(module, locals, &a.value);
                    }
                }
            }
            ExprKind::Field(base, _) | ExprKind::Paren(base) | ExprKind::Neg(base) => {
                self.resolve_expr(module, locals, base)
            }
            ExprKind::List(items) => items
                .iter()
                .for_each(|i| self.resolve_expr(module, locals, i)),
            ExprKind::Binary(_, l, r) => {
                self.resolve_expr(module, locals, l);
                self.resolve_expr(module, locals, r);
            }
            ExprKind::Number { .. } | ExprKind::Str { .. } | ExprKind::Bool(_) => {}
        }
    }

    fn check_type_name(&mut self, ty: &ast::Ident) {
        if !TYPE_NAMES.contains(&ty.name.as_str()) {
            let mut d = Diagnostic::error(
                Code::UnknownName,
                ty.span,
                format!("there is no type `{}`", ty.name),
            )
            .primary_label("unknown type")
            .note(format!("types are {}", TYPE_NAMES.join(", ")));
            if let Some(s) = crate::suggest::closest(&ty.name, TYPE_NAMES.iter().copied()) {
                d = d.hint(format!("did you mean `{s}`?"));
            }
            self.diags.push(d);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Names and bindings.

    fn eval_binding(&mut self, ctx: &mut Ctx, key: BindingKey, use_span: Span) -> Value {
        if let Some(v) = ctx.memo.get(&key) {
            return v.clone();
        }
        if let Some(position) = ctx.evaluating.iter().position(|(k, _)| *k == key) {
            let chain: Vec<String> = ctx.evaluating[position..]
                .iter()
                .map(|(k, _)| format!("`{}`", k.name))
                .collect();
            let mut d = Diagnostic::error(
                Code::Cycle,
                use_span,
                format!("`{}` is defined in terms of itself", key.name),
            )
            .primary_label(format!("`{}` used here", key.name))
            .note(format!("the cycle: {} → `{}`", chain.join(" → "), key.name));
            for (k, span) in &ctx.evaluating[position..] {
                if *span != use_span {
                    d = d.label(*span, format!("`{}` is being defined here", k.name));
                }
            }
            self.error(ctx, d);
            return Value::Error;
        }
        if ctx.evaluating.len() >= MAX_BINDING_DEPTH {
            self.error(
                ctx,
                Diagnostic::error(
                    Code::Cycle,
                    use_span,
                    format!("bindings refer to one another more than {MAX_BINDING_DEPTH} deep"),
                )
                .primary_label("too deep")
                .hint("shorten the chain of bindings"),
            );
            return Value::Error;
        }
        let binding = match key.stage_scope {
            Some(i) => self
                .program
                .root()
                .stages()
                .nth(i)
                .unwrap()
                .bindings
                .iter()
                .find(|b| b.name.name == key.name),
            None => self.program.modules[key.module].binding(&key.name),
        };
        let Some(binding) = binding else {
            return Value::Error;
        };
        ctx.evaluating.push((key.clone(), binding.name.span));
        let env = Env {
            module: key.module,
            stage: key.stage_scope,
            locals: HashMap::new(),
        };
        let value = self.eval(ctx, &env, &binding.value);
        ctx.evaluating.pop();
        if let Value::Model { id, mask: None } = &value {
            if self.models[*id].name.is_empty() {
                self.models[*id].name = key.name.clone();
            }
        }
        ctx.memo.insert(key, value.clone());
        value
    }

    fn lookup(&mut self, ctx: &mut Ctx, env: &Env, name: &str, span: Span) -> Option<Value> {
        if let Some(v) = env.locals.get(name) {
            return Some(v.clone());
        }
        if env.module == 0 {
            if let Some((key, _)) = self.stage_binding(env.stage, name) {
                match key.stage_scope {
                    None => self.used.insert((0, name.to_string())),
                    Some(i) => self.used_stage.insert((i, name.to_string())),
                };
                return Some(self.eval_binding(ctx, key, span));
            }
        }
        let module = &self.program.modules[env.module];
        if module.bindings.contains_key(name) {
            self.used.insert((env.module, name.to_string()));
            let key = BindingKey {
                stage_scope: None,
                module: env.module,
                name: name.to_string(),
            };
            return Some(self.eval_binding(ctx, key, span));
        }
        if module.fns.contains_key(name) {
            return Some(Value::Func(FuncRef::User(env.module, name.to_string())));
        }
        if let Some((target, item, _)) = module.imports.get(name).cloned() {
            if self.program.modules[target].fns.contains_key(&item) {
                return Some(Value::Func(FuncRef::User(target, item)));
            }
            let key = BindingKey {
                stage_scope: None,
                module: target,
                name: item,
            };
            return Some(self.eval_binding(ctx, key, span));
        }
        if module.failed_imports.contains(name) {
            return Some(Value::Error);
        }
        if let Some(constant) = builtins::CONSTANTS.iter().find(|c| **c == name) {
            return Some(Value::Enum(constant));
        }
        if let Some(b) = builtins::BUILTINS.iter().find(|b| b.name == name) {
            return Some(Value::Func(FuncRef::Builtin(b.name)));
        }
        None
    }

    /// Every name visible from `env`, for suggestions.
    fn visible_names(&self, env: &Env) -> Vec<String> {
        let mut names: Vec<String> = env.locals.keys().cloned().collect();
        let module = &self.program.modules[env.module];
        names.extend(module.bindings.keys().cloned());
        names.extend(module.fns.keys().cloned());
        names.extend(module.imports.keys().cloned());
        if env.module == 0 {
            if let Some(i) = env.stage {
                names.extend(
                    self.program
                        .root()
                        .stages()
                        .nth(i)
                        .unwrap()
                        .bindings
                        .iter()
                        .map(|b| b.name.name.clone()),
                );
            }
        }
        names.extend(builtins::CONSTANTS.iter().map(|c| c.to_string()));
        names.extend(builtins::BUILTINS.iter().map(|b| b.name.to_string()));
        names
    }

    fn unknown_name(&mut self, ctx: &Ctx, env: &Env, name: &str, span: Span, as_function: bool) {
        // Names inside function bodies were all resolved once, up front.
        if !ctx.calls.is_empty() {
            return;
        }
        let names = self.visible_names(env);
        let (code, what) = if as_function {
            (Code::UnknownFunction, "function")
        } else {
            (Code::UnknownName, "name")
        };
        let mut d = Diagnostic::error(code, span, format!("unknown {what} `{name}`"))
            .primary_label(format!("no {what} `{name}` here"));
        if let Some(s) = crate::suggest::closest(name, names.iter().map(String::as_str)) {
            d = d.hint(format!("did you mean `{s}`?"));
        } else if let Some(module) = self.std_module_defining(name) {
            d = d.hint(format!(
                "`{name}` is in the standard library: add `use {module}.{name}`"
            ));
        }
        self.error(ctx, d);
    }

    fn std_module_defining(&self, name: &str) -> Option<String> {
        STD_MODULES
            .iter()
            .filter(|(module, _)| *module != "prelude")
            .find_map(|(module, text)| {
                let needle = format!("fn {name}(");
                text.contains(&needle).then(|| format!("std.{module}"))
            })
    }

    // ----------------------------------------------------------------------------------------
    // Expressions.

    fn eval(&mut self, ctx: &mut Ctx, env: &Env, expr: &Expr) -> Value {
        match &expr.kind {
            ExprKind::Number { value, .. } => {
                if !value.is_finite() {
                    self.error(
                        ctx,
                        Diagnostic::error(
                            Code::NotFinite,
                            expr.span,
                            "this number is too large to represent",
                        )
                        .primary_label("overflows a 64-bit float"),
                    );
                    return Value::Error;
                }
                Value::Num(*value)
            }
            ExprKind::Str { value, .. } => Value::Str(value.clone()),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::Name(name) => match self.lookup(ctx, env, name, expr.span) {
                Some(v) => v,
                None => {
                    self.unknown_name(ctx, env, name, expr.span, false);
                    Value::Error
                }
            },
            ExprKind::List(items) => Value::List(
                items
                    .iter()
                    .map(|e| (self.eval(ctx, env, e), e.span))
                    .collect(),
            ),
            ExprKind::Paren(inner) => self.eval(ctx, env, inner),
            ExprKind::Field(base, field) => {
                let value = self.eval(ctx, env, base);
                self.field(ctx, value, base.span, field)
            }
            ExprKind::Call(callee, args) => self.eval_call(ctx, env, callee, args, expr.span),
            ExprKind::Neg(inner) => {
                let value = self.eval(ctx, env, inner);
                match value {
                    Value::Num(v) => Value::Num(-v),
                    Value::Error => Value::Error,
                    other => match self.to_tensor(ctx, other, inner.span) {
                        Some((node, shape)) => {
                            let n =
                                self.push_node(ctx, Op::Neg, vec![node], shape.clone(), expr.span);
                            Value::Tensor(n, shape)
                        }
                        None => Value::Error,
                    },
                }
            }
            ExprKind::Binary(op, l, r) => {
                let lv = self.eval(ctx, env, l);
                let rv = self.eval(ctx, env, r);
                self.binary(ctx, *op, (lv, l.span), (rv, r.span), expr.span)
            }
        }
    }

    fn eval_call(
        &mut self,
        ctx: &mut Ctx,
        env: &Env,
        callee: &Expr,
        args: &[ast::Arg],
        span: Span,
    ) -> Value {
        match &callee.kind {
            ExprKind::Name(name) => match self.lookup(ctx, env, name, callee.span) {
                Some(Value::Func(f)) => self.call(ctx, env, f, name, args, span),
                Some(Value::Error) => Value::Error,
                Some(other) => {
                    self.error(
                        ctx,
                        Diagnostic::error(
                            Code::TypeMismatch,
                            callee.span,
                            format!("`{name}` is {}, not a function", other.kind()),
                        )
                        .primary_label("called here"),
                    );
                    Value::Error
                }
                None => {
                    self.unknown_name(ctx, env, name, callee.span, true);
                    // Still check the arguments.
                    for a in args {
                        self.eval(ctx, env, &a.value);
                    }
                    Value::Error
                }
            },
            ExprKind::Field(base, method) => {
                let receiver = self.eval(ctx, env, base);
                self.method(ctx, env, receiver, base.span, method, args, span)
            }
            _ => {
                self.error(
                    ctx,
                    Diagnostic::error(
                        Code::TypeMismatch,
                        callee.span,
                        "only named functions can be called",
                    )
                    .primary_label("not a function name"),
                );
                Value::Error
            }
        }
    }

    fn call(
        &mut self,
        ctx: &mut Ctx,
        env: &Env,
        f: FuncRef,
        name: &str,
        args: &[ast::Arg],
        span: Span,
    ) -> Value {
        match f {
            FuncRef::Builtin(b) => self.call_builtin(ctx, env, b, args, span),
            FuncRef::User(module, fname) => {
                self.call_user(ctx, env, module, &fname, name, args, span)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn call_user(
        &mut self,
        ctx: &mut Ctx,
        env: &Env,
        module: ModuleId,
        fname: &str,
        shown: &str,
        args: &[ast::Arg],
        span: Span,
    ) -> Value {
        let def = self.program.modules[module]
            .fn_def(fname)
            .expect("resolved functions exist");
        if ctx.calls.iter().any(|(m, n, _)| *m == module && n == fname) {
            self.error(
                ctx,
                Diagnostic::error(Code::Cycle, span, format!("`{fname}` calls itself"))
                    .primary_label("recursive call")
                    .label(def.name.span, "defined here")
                    .note("kdc functions are expanded at compile time and cannot be recursive"),
            );
            return Value::Error;
        }
        let sig: Vec<builtins::ParamSig> = def
            .params
            .iter()
            .map(|p| builtins::ParamSig {
                name: leak(&p.name.name),
                required: p.default.is_none(),
                flag: false,
            })
            .collect();
        let Some(bound) = self.bind_args(ctx, env, shown, &sig, args, span) else {
            return Value::Error;
        };
        let mut locals = HashMap::new();
        let mut bad = false;
        for (p, slot) in def.params.iter().zip(bound.values) {
            let (value, vspan) = match slot {
                Some(v) => v,
                None => {
                    let default = p
                        .default
                        .as_ref()
                        .expect("missing required arguments were reported");
                    (self.eval(ctx, &Env::module(module), default), default.span)
                }
            };
            match self.coerce(ctx, value, &p.ty.name, vspan, &p.name.name, shown) {
                Some(v) => {
                    locals.insert(p.name.name.clone(), v);
                }
                None => bad = true,
            }
        }
        if bad {
            return Value::Error;
        }
        ctx.calls.push((module, fname.to_string(), span));
        let mut fenv = Env {
            module,
            stage: None,
            locals,
        };
        for l in &def.lets {
            let v = self.eval(ctx, &fenv, &l.value);
            fenv.locals.insert(l.name.name.clone(), v);
        }
        let result = self.eval(ctx, &fenv, &def.body);
        ctx.calls.pop();
        if let Some(ret) = &def.ret {
            if self.coerce_quiet(&result, &ret.name).is_none() && !result.is_error() {
                self.error(
                    ctx,
                    Diagnostic::error(
                        Code::BadReturnType,
                        def.body.span,
                        format!(
                            "`{fname}` should give {} but gives {}",
                            type_words(&ret.name),
                            result.kind()
                        ),
                    )
                    .primary_label(format!("this is {}", result.kind()))
                    .label(ret.span, "declared result type"),
                );
                return Value::Error;
            }
        }
        result
    }

    /// Checks that a value fits a declared parameter type, converting where the language
    /// allows (a number is a scalar; a known dimension is a number).
    fn coerce(
        &mut self,
        ctx: &mut Ctx,
        value: Value,
        ty: &str,
        span: Span,
        param: &str,
        callee: &str,
    ) -> Option<Value> {
        if value.is_error() {
            return None;
        }
        if !TYPE_NAMES.contains(&ty) {
            return None;
        }
        match self.coerce_quiet(&value, ty) {
            Some(()) => {
                if ty == "Scalar" || ty == "Tensor" {
                    if let Value::Num(_) | Value::Dim(..) | Value::Schedule(_) = value {
                        return self
                            .to_tensor(ctx, value, span)
                            .map(|(n, s)| Value::Tensor(n, s));
                    }
                }
                Some(value)
            }
            None => {
                let mut d = Diagnostic::error(
                    Code::TypeMismatch,
                    span,
                    format!(
                        "`{callee}` expects {} for `{param}`, but this is {}",
                        type_words(ty),
                        value.kind()
                    ),
                )
                .primary_label(format!("this is {}", value.kind()));
                if ty == "Clip" {
                    if let Value::Tensor(..) = value {
                        d = d.hint("pass a model itself, not one of its outputs such as `.image`");
                    }
                }
                if ty == "Tensor" || ty == "Scalar" {
                    if let Value::Model { .. } = value {
                        d = d.hint("pass one of the model's outputs, such as `.image` or `.text`");
                    }
                }
                self.error(ctx, d);
                None
            }
        }
    }

    fn coerce_quiet(&self, value: &Value, ty: &str) -> Option<()> {
        let ok = match (ty, value) {
            (_, Value::Error) => true,
            ("Clip", Value::Model { .. }) => true,
            ("Tensor", Value::Tensor(..) | Value::Num(_) | Value::Schedule(_)) => true,
            ("Tensor", Value::Dim(..)) => true,
            ("Scalar", Value::Tensor(_, s)) => s.is_scalar(),
            ("Scalar", Value::Num(_) | Value::Dim(..) | Value::Schedule(_)) => true,
            ("Num", Value::Num(_)) => true,
            ("Num", Value::Dim(d, _)) => d.size.is_some(),
            ("Int", Value::Num(v)) => v.fract() == 0.0,
            ("Int", Value::Dim(d, _)) => d.size.is_some(),
            ("Dim", Value::Dim(..)) => true,
            ("Dim", Value::Num(v)) => v.fract() == 0.0 && *v >= 1.0,
            ("Str", Value::Str(_)) => true,
            ("Bool", Value::Bool(_)) => true,
            ("Schedule", Value::Schedule(_) | Value::Num(_)) => true,
            ("List", Value::List(_)) => true,
            _ => false,
        };
        ok.then_some(())
    }

    fn field(&mut self, ctx: &mut Ctx, value: Value, base_span: Span, field: &ast::Ident) -> Value {
        let span = base_span.to(field.span);
        match value {
            Value::Error => Value::Error,
            Value::Model { id, mask } => self.model_field(ctx, id, mask, field, span),
            Value::Tensor(node, shape) => match field.name.as_str() {
                "T" => self.transpose(ctx, node, shape, span),
                "rows" if shape.rank() >= 1 => Value::Dim(shape.0[0].clone(), Some((node, 0))),
                _ => {
                    self.unknown_field(ctx, field, &format!("a tensor {shape}"), &["T", "rows"]);
                    Value::Error
                }
            },
            other => {
                self.error(
                    ctx,
                    Diagnostic::error(
                        Code::UnknownField,
                        field.span,
                        format!("{} has no field `{}`", other.kind(), field.name),
                    )
                    .primary_label("no such field")
                    .label(base_span, format!("this is {}", other.kind())),
                );
                Value::Error
            }
        }
    }

    fn unknown_field(&mut self, ctx: &Ctx, field: &ast::Ident, what: &str, fields: &[&str]) {
        let mut d = Diagnostic::error(
            Code::UnknownField,
            field.span,
            format!("{what} has no field `{}`", field.name),
        )
        .primary_label("no such field")
        .note(format!(
            "the fields are {}",
            fields
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if let Some(s) = crate::suggest::closest(&field.name, fields.iter().copied()) {
            d = d.hint(format!("did you mean `{s}`?"));
        }
        self.error(ctx, d);
    }

    fn model_field(
        &mut self,
        ctx: &mut Ctx,
        id: ir::ModelId,
        mask: Option<f64>,
        field: &ast::Ident,
        span: Span,
    ) -> Value {
        let m = &self.models[id];
        let name = m.name.clone();
        let b = crate::shape::Dim::batch();
        let tokens = |m: &ModelSpec| match mask {
            Some(ratio) => kept_patches(m.vision.patches(), ratio),
            None => m.vision.patches(),
        };
        let embed = crate::shape::Dim::named(m.embed, format!("{name}.dim"));
        let (tap, shape) = match field.name.as_str() {
            "image" => (ir::Tap::Image, Shape(vec![b, embed])),
            "text" => (ir::Tap::Text, Shape(vec![b, embed])),
            "scale" => (ir::Tap::Scale, Shape::scalar()),
            "patches" => (
                ir::Tap::Patches,
                Shape(vec![
                    b,
                    crate::shape::Dim::known(tokens(m)),
                    crate::shape::Dim::named(m.vision.width, format!("{name}.image_width")),
                ]),
            ),
            "dim" => return Value::Dim(embed, None),
            "image_width" => {
                return Value::Dim(
                    crate::shape::Dim::named(m.vision.width, format!("{name}.image_width")),
                    None,
                )
            }
            "text_width" => {
                return Value::Dim(
                    crate::shape::Dim::named(m.text.width, format!("{name}.text_width")),
                    None,
                )
            }
            "vision" => return Value::Part(id, Part::Vision),
            "visual_projection" => return Value::Part(id, Part::VisionProjection),
            "text_tower" => return Value::Part(id, Part::Text),
            "text_projection" => return Value::Part(id, Part::TextProjection),
            "logit_scale" => return Value::Part(id, Part::Scale),
            _ => {
                self.unknown_field(ctx, field, "a model", MODEL_FIELDS);
                return Value::Error;
            }
        };
        let node = self.push_node(
            ctx,
            Op::Tap {
                model: id,
                tap,
                mask,
            },
            vec![],
            shape.clone(),
            span,
        );
        Value::Tensor(node, shape)
    }

    #[allow(clippy::too_many_arguments)]
    fn method(
        &mut self,
        ctx: &mut Ctx,
        env: &Env,
        receiver: Value,
        base_span: Span,
        method: &ast::Ident,
        args: &[ast::Arg],
        span: Span,
    ) -> Value {
        let (id, mask) = match receiver {
            Value::Error => return Value::Error,
            Value::Model { id, mask } => (id, mask),
            other => {
                self.error(
                    ctx,
                    Diagnostic::error(
                        Code::UnknownField,
                        method.span,
                        format!("{} has no method `{}`", other.kind(), method.name),
                    )
                    .primary_label("no such method")
                    .label(base_span, format!("this is {}", other.kind())),
                );
                return Value::Error;
            }
        };
        let sig: &[builtins::ParamSig] = match method.name.as_str() {
            "image_layer" | "text_layer" => &[builtins::ParamSig {
                name: "k",
                required: true,
                flag: false,
            }],
            "masked" => &[builtins::ParamSig {
                name: "ratio",
                required: true,
                flag: false,
            }],
            _ => {
                self.unknown_field(ctx, method, "a model", MODEL_FIELDS);
                return Value::Error;
            }
        };
        let Some(bound) = self.bind_args(ctx, env, &method.name, sig, args, span) else {
            return Value::Error;
        };
        let Some((value, vspan)) = bound.values[0].clone() else {
            return Value::Error;
        };
        let Value::Num(x) = value else {
            if !value.is_error() {
                self.error(ctx, type_error(vspan, &method.name, &value, "a number"));
            }
            return Value::Error;
        };
        let m = self.models[id].clone();
        let b = crate::shape::Dim::batch();
        match method.name.as_str() {
            "masked" => {
                if mask.is_some() {
                    self.error(
                        ctx,
                        Diagnostic::error(Code::OutOfRange, span, "this model is already masked")
                            .primary_label("masked twice"),
                    );
                    return Value::Error;
                }
                if !(0.0..1.0).contains(&x) {
                    self.error(
                        ctx,
                        Diagnostic::error(
                            Code::OutOfRange,
                            vspan,
                            format!(
                                "a masking ratio must be in [0, 1), not {}",
                                crate::fmt_num(x)
                            ),
                        )
                        .primary_label("out of range")
                        .hint("CLIP-KD's MFD drops 75% of the patches: `masked(0.75)`"),
                    );
                    return Value::Error;
                }
                if kept_patches(m.vision.patches(), x) == 0 {
                    self.error(
                        ctx,
                        Diagnostic::error(
                            Code::OutOfRange,
                            vspan,
                            format!(
                                "masking {} of {} patches keeps none",
                                crate::fmt_num(x),
                                m.vision.patches()
                            ),
                        )
                        .primary_label("too high"),
                    );
                    return Value::Error;
                }
                Value::Model { id, mask: Some(x) }
            }
            _ => {
                let image = method.name == "image_layer";
                let layers = if image {
                    m.vision.layers
                } else {
                    m.text.layers
                };
                if x.fract() != 0.0 || x < 0.0 || x > layers as f64 {
                    self.error(
                        ctx,
                        Diagnostic::error(Code::LayerOutOfRange, vspan, format!("`{}` has layers 0 to {layers}, not {}", m.name, crate::fmt_num(x)))
                            .primary_label("no such layer")
                            .note("layer 0 is the input to the first block; layer k is the output of block k"),
                    );
                    return Value::Error;
                }
                let k = x as u64;
                let shape = if image {
                    let tokens = match mask {
                        Some(r) => kept_patches(m.vision.patches(), r) + 1,
                        None => m.vision.patches() + 1,
                    };
                    Shape(vec![
                        b,
                        crate::shape::Dim::known(tokens),
                        crate::shape::Dim::named(m.vision.width, format!("{}.image_width", m.name)),
                    ])
                } else {
                    Shape(vec![
                        b,
                        crate::shape::Dim::known(m.text.context),
                        crate::shape::Dim::named(m.text.width, format!("{}.text_width", m.name)),
                    ])
                };
                let tap = if image {
                    ir::Tap::ImageLayer(k)
                } else {
                    ir::Tap::TextLayer(k)
                };
                let node = self.push_node(
                    ctx,
                    Op::Tap {
                        model: id,
                        tap,
                        mask,
                    },
                    vec![],
                    shape.clone(),
                    span,
                );
                Value::Tensor(node, shape)
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Arithmetic.

    fn binary(
        &mut self,
        ctx: &mut Ctx,
        op: BinOp,
        (l, ls): (Value, Span),
        (r, rs): (Value, Span),
        span: Span,
    ) -> Value {
        use Value as V;
        match (op, l, r) {
            (_, V::Error, _) | (_, _, V::Error) => V::Error,
            (BinOp::Pipe, l, r) => {
                let mut parts = Vec::new();
                for (v, s) in [(l, ls), (r, rs)] {
                    match v {
                        V::Train(p) => parts.extend(p),
                        V::TrainPart(p) => parts.push((p, s)),
                        other => {
                            self.error(
                                ctx,
                                Diagnostic::error(Code::TypeMismatch, s, format!("`|` joins training settings, but this is {}", other.kind()))
                                    .primary_label(format!("this is {}", other.kind()))
                                    .hint("a training pipeline reads `adamw(lr: 1e-3) | epochs(10) | clip_grad(1.0)`"),
                            );
                            return V::Error;
                        }
                    }
                }
                V::Train(parts)
            }
            (op, V::Num(a), V::Num(b)) => match op {
                BinOp::Add => V::Num(a + b),
                BinOp::Sub => V::Num(a - b),
                BinOp::Mul => V::Num(a * b),
                BinOp::Div => {
                    if b == 0.0 {
                        self.error(
                            ctx,
                            Diagnostic::error(Code::NotFinite, rs, "division by zero")
                                .primary_label("this is 0"),
                        );
                        V::Error
                    } else {
                        V::Num(a / b)
                    }
                }
                _ => {
                    self.error(
                        ctx,
                        Diagnostic::error(
                            Code::TypeMismatch,
                            span,
                            "`@` multiplies matrices, not numbers",
                        )
                        .primary_label("two numbers")
                        .hint("use `*`"),
                    );
                    V::Error
                }
            },
            (BinOp::Add, V::Str(a), V::Str(b)) => V::Str(a + &b),
            (BinOp::Mul | BinOp::Div, V::Schedule(s), V::Num(x)) => {
                V::Schedule(s.scaled(if op == BinOp::Mul { x } else { 1.0 / x }))
            }
            (BinOp::Mul, V::Num(x), V::Schedule(s)) => V::Schedule(s.scaled(x)),
            (op, V::Dim(a, _), V::Dim(b, _)) if a.size.is_some() && b.size.is_some() => self
                .binary(
                    ctx,
                    op,
                    (V::Num(a.size.unwrap() as f64), ls),
                    (V::Num(b.size.unwrap() as f64), rs),
                    span,
                ),
            (op, V::Dim(a, None), other) if a.size.is_some() => self.binary(
                ctx,
                op,
                (V::Num(a.size.unwrap() as f64), ls),
                (other, rs),
                span,
            ),
            (op, other, V::Dim(b, None)) if b.size.is_some() => self.binary(
                ctx,
                op,
                (other, ls),
                (V::Num(b.size.unwrap() as f64), rs),
                span,
            ),
            (op, l, r) => {
                let numeric = |v: &Value| {
                    matches!(v, V::Tensor(..) | V::Num(_) | V::Dim(..) | V::Schedule(_))
                };
                if !numeric(&l) || !numeric(&r) {
                    let (bad, bad_span) = if numeric(&l) { (&r, rs) } else { (&l, ls) };
                    let mut d = Diagnostic::error(
                        Code::TypeMismatch,
                        bad_span,
                        format!("cannot use `{}` on {}", op.symbol(), bad.kind()),
                    )
                    .primary_label(format!("this is {}", bad.kind()));
                    if let V::Model { .. } = bad {
                        d = d.hint(
                            "arithmetic works on a model's outputs, such as `.image` or `.text`",
                        );
                    }
                    self.error(ctx, d);
                    return V::Error;
                }
                let Some((ln, lshape)) = self.to_tensor(ctx, l, ls) else {
                    return V::Error;
                };
                let Some((rn, rshape)) = self.to_tensor(ctx, r, rs) else {
                    return V::Error;
                };
                match self.tensor_binary(ctx, op, (ln, lshape, ls), (rn, rshape, rs), span) {
                    Some((n, s)) => V::Tensor(n, s),
                    None => V::Error,
                }
            }
        }
    }

    fn tensor_binary(
        &mut self,
        ctx: &mut Ctx,
        op: BinOp,
        (ln, ls, lspan): (NodeId, Shape, Span),
        (rn, rs, rspan): (NodeId, Shape, Span),
        span: Span,
    ) -> Option<(NodeId, Shape)> {
        if op == BinOp::MatMul {
            return self.matmul(ctx, (ln, ls, lspan), (rn, rs, rspan), span);
        }
        let Some(shape) = ls.broadcast(&rs) else {
            let verb = match op {
                BinOp::Add => "add",
                BinOp::Sub => "subtract",
                BinOp::Mul => "multiply",
                _ => "divide",
            };
            let mut d = Diagnostic::error(
                Code::ShapeMismatch,
                span,
                format!("cannot {verb} tensors of shapes {ls} and {rs}"),
            )
            .primary_label("shapes do not broadcast")
            .label(lspan, format!("this is {ls}"))
            .label(rspan, format!("this is {rs}"));
            d = width_hint(d, &ls, &rs);
            self.error(ctx, d);
            return None;
        };
        let op = match op {
            BinOp::Add => Op::Add,
            BinOp::Sub => Op::Sub,
            BinOp::Mul => Op::Mul,
            _ => Op::Div,
        };
        Some((
            self.push_node(ctx, op, vec![ln, rn], shape.clone(), span),
            shape,
        ))
    }

    fn matmul(
        &mut self,
        ctx: &mut Ctx,
        (ln, ls, lspan): (NodeId, Shape, Span),
        (rn, rs, rspan): (NodeId, Shape, Span),
        span: Span,
    ) -> Option<(NodeId, Shape)> {
        if ls.rank() < 2 || rs.rank() < 2 {
            self.error(
                ctx,
                Diagnostic::error(
                    Code::ShapeMismatch,
                    span,
                    format!("a matrix product needs two matrices, not {ls} and {rs}"),
                )
                .primary_label("rank below 2")
                .label(lspan, format!("this is {ls}"))
                .label(rspan, format!("this is {rs}")),
            );
            return None;
        }
        let k1 = &ls.0[ls.rank() - 1];
        let k2 = &rs.0[rs.rank() - 2];
        let lead_l = Shape(ls.0[..ls.rank() - 2].to_vec());
        let lead_r = Shape(rs.0[..rs.rank() - 2].to_vec());
        let lead = lead_l.broadcast(&lead_r);
        if k1 != k2 || lead.is_none() {
            let mut d = Diagnostic::error(
                Code::ShapeMismatch,
                span,
                format!("cannot multiply matrices of shapes {ls} and {rs}"),
            )
            .primary_label(format!(
                "inner dimensions {} and {} differ",
                k1.describe(),
                k2.describe()
            ))
            .label(lspan, format!("this is {ls}"))
            .label(rspan, format!("this is {rs}"));
            if k1 != k2 && rs.rank() == 2 && rs.0[1] == *k1 {
                d = d.hint("the right side may need transposing: add `.T`");
            } else {
                d = d.hint(format!(
                    "map one side onto the other's width first, for example `proj(x, to: {})`",
                    k2.describe_short()
                ));
            }
            self.error(ctx, d);
            return None;
        }
        let mut dims = lead.unwrap().0;
        dims.push(ls.0[ls.rank() - 2].clone());
        dims.push(rs.0[rs.rank() - 1].clone());
        let shape = Shape(dims);
        Some((
            self.push_node(ctx, Op::MatMul, vec![ln, rn], shape.clone(), span),
            shape,
        ))
    }

    fn transpose(&mut self, ctx: &mut Ctx, node: NodeId, shape: Shape, span: Span) -> Value {
        if shape.rank() < 2 {
            self.error(
                ctx,
                Diagnostic::error(
                    Code::ShapeMismatch,
                    span,
                    format!("only a matrix can be transposed, not a tensor {shape}"),
                )
                .primary_label("rank below 2"),
            );
            return Value::Error;
        }
        let mut dims = shape.0.clone();
        let n = dims.len();
        dims.swap(n - 1, n - 2);
        let shape = Shape(dims);
        Value::Tensor(
            self.push_node(ctx, Op::Transpose, vec![node], shape.clone(), span),
            shape,
        )
    }

    /// A value used as a tensor: numbers become constants, dimensions their size, schedules a
    /// scalar that follows the step.
    fn to_tensor(&mut self, ctx: &mut Ctx, value: Value, span: Span) -> Option<(NodeId, Shape)> {
        match value {
            Value::Tensor(n, s) => Some((n, s)),
            Value::Num(v) => Some((
                self.push_node(ctx, Op::Const(v), vec![], Shape::scalar(), span),
                Shape::scalar(),
            )),
            Value::Dim(d, source) => match (d.size, source) {
                (Some(size), _) => Some((
                    self.push_node(ctx, Op::Const(size as f64), vec![], Shape::scalar(), span),
                    Shape::scalar(),
                )),
                (None, Some((node, axis))) => Some((
                    self.push_node(ctx, Op::Size { axis }, vec![node], Shape::scalar(), span),
                    Shape::scalar(),
                )),
                (None, None) => None,
            },
            Value::Schedule(s) => Some((
                self.push_node(ctx, Op::Scheduled(s), vec![], Shape::scalar(), span),
                Shape::scalar(),
            )),
            Value::Error => None,
            other => {
                let mut d = Diagnostic::error(
                    Code::TypeMismatch,
                    span,
                    format!("expected a tensor, found {}", other.kind()),
                )
                .primary_label(format!("this is {}", other.kind()));
                if let Value::Model { .. } = other {
                    d = d.hint("use one of the model's outputs, such as `.image` or `.text`");
                }
                self.error(ctx, d);
                None
            }
        }
    }

    fn push_node(
        &mut self,
        ctx: &mut Ctx,
        op: Op,
        inputs: Vec<NodeId>,
        shape: Shape,
        span: Span,
    ) -> NodeId {
        let pure = !matches!(op, Op::Param(_));
        let key = (op.clone(), inputs.clone());
        if pure {
            if let Some(&n) = ctx.node_keys.get(&key) {
                return n;
            }
        }
        ctx.graph.nodes.push(Node {
            op,
            inputs,
            shape,
            span,
        });
        let id = ctx.graph.nodes.len() - 1;
        if pure {
            ctx.node_keys.insert(key, id);
        }
        id
    }
}

/// How deep bindings may refer to one another (`a = b`, `b = c`, …) before the checker gives
/// up, so that no recipe can exhaust the stack.
const MAX_BINDING_DEPTH: usize = 200;

const TYPE_NAMES: &[&str] = &[
    "Clip", "Tensor", "Scalar", "Num", "Int", "Dim", "Str", "Bool", "Schedule", "List",
];

const MODEL_FIELDS: &[&str] = &[
    "image",
    "text",
    "scale",
    "dim",
    "patches",
    "image_width",
    "text_width",
    "vision",
    "visual_projection",
    "text_tower",
    "text_projection",
    "logit_scale",
    "image_layer",
    "text_layer",
    "masked",
];

fn type_words(ty: &str) -> String {
    match ty {
        "Clip" => "a model".into(),
        "Tensor" => "a tensor".into(),
        "Scalar" => "a scalar".into(),
        "Num" => "a number".into(),
        "Int" => "a whole number".into(),
        "Dim" => "a dimension".into(),
        "Str" => "a string".into(),
        "Bool" => "a boolean".into(),
        "Schedule" => "a schedule".into(),
        "List" => "a list".into(),
        other => format!("`{other}`"),
    }
}

/// Patch tokens kept by MAE-style masking: ⌊N · (1 − ratio)⌋.
pub fn kept_patches(patches: u64, ratio: f64) -> u64 {
    (patches as f64 * (1.0 - ratio)).floor() as u64
}

fn type_error(span: Span, what: &str, found: &Value, expected: &str) -> Diagnostic {
    Diagnostic::error(
        Code::TypeMismatch,
        span,
        format!("`{what}` must be {expected}, but this is {}", found.kind()),
    )
    .primary_label(format!("this is {}", found.kind()))
}

/// Suggests a projection when two shapes differ only in their last (width) dimension.
fn width_hint(d: Diagnostic, a: &Shape, b: &Shape) -> Diagnostic {
    // Only widths known before training (model dimensions) can be projected.
    let known = |s: &Shape| s.last().is_some_and(|d| d.size.is_some());
    if a.rank() == b.rank()
        && a.rank() >= 1
        && known(a)
        && known(b)
        && a.0[..a.rank() - 1] == b.0[..b.rank() - 1]
        && a.last() != b.last()
    {
        let target = b.last().unwrap();
        d.hint(format!(
            "the widths differ; project one side first, for example `proj(x, to: {})`",
            target.describe_short()
        ))
    } else {
        d
    }
}

impl crate::shape::Dim {
    /// How to write this dimension in a recipe: its source name if it has one.
    fn describe_short(&self) -> String {
        match (&self.name, self.size) {
            (Some(n), Some(_)) => n.clone(),
            (_, Some(s)) => s.to_string(),
            (Some(n), None) => n.clone(),
            (None, None) => "?".into(),
        }
    }
}

/// Where a missing top-level binding is reported: the end of the recipe, where it would go.
fn first_line(program: &Program) -> Span {
    let root = program.root();
    let end = root.ast.items.last().map(|i| i.span().end).unwrap_or(0);
    Span {
        file: root.ast.file,
        start: end,
        end,
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn label_of(expr: &Expr) -> Option<String> {
    match &expr.kind {
        ExprKind::Call(callee, _) => match &callee.kind {
            ExprKind::Name(n) => Some(n.clone()),
            ExprKind::Field(_, m) => Some(m.name.clone()),
            _ => None,
        },
        ExprKind::Paren(inner) => label_of(inner),
        ExprKind::Name(n) => Some(n.clone()),
        _ => None,
    }
}

fn split_sum<'e>(expr: &'e Expr, sign: f64, out: &mut Vec<(f64, &'e Expr)>) {
    match &expr.kind {
        ExprKind::Binary(BinOp::Add, l, r) => {
            split_sum(l, sign, out);
            split_sum(r, sign, out);
        }
        ExprKind::Binary(BinOp::Sub, l, r) => {
            split_sum(l, sign, out);
            split_sum(r, -sign, out);
        }
        _ => out.push((sign, expr)),
    }
}

fn split_product<'e>(expr: &'e Expr, reciprocal: bool, out: &mut Vec<(&'e Expr, bool)>) {
    match &expr.kind {
        ExprKind::Binary(BinOp::Mul, l, r) => {
            split_product(l, reciprocal, out);
            split_product(r, reciprocal, out);
        }
        ExprKind::Binary(BinOp::Div, l, r) if !reciprocal => {
            split_product(l, false, out);
            split_product(r, true, out);
        }
        _ => out.push((expr, reciprocal)),
    }
}

/// Nodes the given roots depend on through differentiable edges (not through `detach`).
fn reachable(graph: &Graph, roots: impl Iterator<Item = NodeId>) -> Vec<NodeId> {
    let mut seen = vec![false; graph.nodes.len()];
    let mut stack: Vec<NodeId> = roots.collect();
    let mut out = Vec::new();
    while let Some(n) = stack.pop() {
        if seen[n] {
            continue;
        }
        seen[n] = true;
        out.push(n);
        if graph.nodes[n].op != Op::Detach {
            stack.extend(graph.nodes[n].inputs.iter().copied());
        }
    }
    out.sort();
    out
}
