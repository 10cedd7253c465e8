//! The recipe as a whole: its stages, what each stage binds (loss, data, train, freeze), how
//! stages chain, and what each stage's loss trains.

use super::program::Program;
use super::value::Value;
use super::{type_error, BindingKey, Checker, Ctx, Env, SPECIAL_BINDINGS};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::ir::{self, Graph, NodeId, Op, Recipe, Term};
use crate::model::Part;
use crate::source::Span;
use crate::syntax::ast::{self, ExprKind};
use std::collections::HashMap;

impl<'p> Checker<'p> {
    // ----------------------------------------------------------------------------------------
    // The recipe as a whole.
    pub(in crate::check) fn recipe(&mut self) -> Option<Recipe> {
        let root = self.program.root();
        self.check_fn_signatures();
        self.resolve_fn_bodies();
        if root.is_library() {
            // A module of functions: its signatures, defaults and names are checked above;
            // shapes are checked where a recipe calls them.
            return None;
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

    pub(in crate::check) fn stage_from(
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
    pub(in crate::check) fn evaluate_all_bindings(&mut self, ctx: &mut Ctx) {
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
    pub(in crate::check) fn stage_binding(
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

    pub(in crate::check) fn stage(
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
        let mut frozen_patterns: Vec<(String, Span)> = Vec::new();
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
                    Value::Str(_) => {
                        if let Some(p) = self.param_patterns(ctx, item, span) {
                            frozen_patterns.extend(p.into_iter().map(|p| (p, span)));
                        }
                    }
                    Value::Error => {}
                    other => self.error(
                        ctx,
                        type_error(
                            span,
                            "freeze",
                            &other,
                            "a model, a part such as `student.text_tower`, or a parameter-name pattern such as \"student/vision_model.encoder.layers.{0..5}.*\"",
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
                            ir::Tap::Patches
                            | ir::Tap::ImageLayer(_)
                            | ir::Tap::ImageAttention(_) => &[Part::Vision],
                            ir::Tap::Text => &[Part::Text, Part::TextProjection],
                            ir::Tap::TextLayer(_) | ir::Tap::TextAttention(_) => &[Part::Text],
                            ir::Tap::Scale => &[Part::Scale],
                            ir::Tap::TextMask => &[],
                            ir::Tap::Projection { image: true, .. } => &[Part::Vision],
                            ir::Tap::Projection { image: false, .. } => &[Part::Text],
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

        // Parameter-name patterns (freeze, optimiser groups) against every parameter.
        let names: Vec<String> = self
            .models
            .iter()
            .flat_map(|m| {
                m.parameters()
                    .into_iter()
                    .map(move |p| format!("{}/{}", m.name, p.name))
            })
            .chain(ctx.params.iter().map(|p| format!("loss/{}", p.name)))
            .collect();
        let mut frozen_names = Vec::new();
        let mut reported: Vec<Span> = Vec::new();
        for (pattern, span) in &frozen_patterns {
            if let Some(found) = self.resolve_pattern(&names, pattern, *span, &mut reported) {
                frozen_names.extend(found);
            }
        }
        frozen_names.sort();
        frozen_names.dedup();
        let group_span = self
            .stage_binding(index, "train")
            .map(|(_, b)| b.value.span)
            .unwrap_or(header);
        let mut train = train;
        if let Some(t) = train.as_mut() {
            for g in &mut t.optimizer.groups {
                for pattern in g.patterns.clone() {
                    if let Some(found) =
                        self.resolve_pattern(&names, &pattern, group_span, &mut reported)
                    {
                        g.names.extend(found);
                    }
                }
                g.names.sort();
                g.names.dedup();
            }
        }

        // `topk` along the batch: k must fit in the stage's batches.
        if let Some(d) = &data {
            for node in &ctx.graph.nodes {
                if let Op::TopK { k, axis } = node.op {
                    let along = &ctx.graph.nodes[node.inputs[0]].shape.0[axis];
                    if along.size.is_none() && k > d.batch {
                        self.diags.push(
                            Diagnostic::error(
                                Code::OutOfRange,
                                node.span,
                                format!(
                                    "`topk` takes {k} along the batch, but {where_} reads batches of {}",
                                    d.batch
                                ),
                            )
                            .primary_label("k larger than the batch")
                            .hint("lower k, or raise the data's `batch`"),
                        );
                    }
                }
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
            frozen_patterns: frozen_patterns.into_iter().map(|(p, _)| p).collect(),
            frozen_names,
        })
    }

    /// The parameter names a pattern matches, or an error naming the closest one.
    /// One error per written pattern (`reported` holds their spans): the first of its
    /// expansions that names nothing.
    fn resolve_pattern(
        &mut self,
        names: &[String],
        pattern: &str,
        span: Span,
        reported: &mut Vec<Span>,
    ) -> Option<Vec<String>> {
        let found: Vec<String> = names
            .iter()
            .filter(|n| ir::name_matches(pattern, n))
            .cloned()
            .collect();
        if found.is_empty() {
            if reported.contains(&span) {
                return None;
            }
            reported.push(span);
            let mut d = Diagnostic::error(
                Code::NoSuchParameter,
                span,
                format!("no parameter matches `{pattern}`"),
            )
            .primary_label("matches nothing");
            let plain = pattern.replace('*', "");
            let shared = |n: &String| {
                n.chars()
                    .zip(plain.chars())
                    .take_while(|(a, b)| a == b)
                    .count()
            };
            let close = crate::suggest::closest(&plain, names.iter().map(String::as_str))
                .map(str::to_string)
                .or_else(|| names.iter().max_by_key(|n| shared(n)).cloned());
            if let Some(c) = close {
                d = d.hint(format!("parameters are named like `{c}`"));
            }
            self.diags.push(d);
            return None;
        }
        Some(found)
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
