//! What a checked recipe computes (`--stage ir`): models, data, optimiser groups, learnable
//! parts, every loss term expanded to primitives with shapes.

use crate::fmt_num;
use crate::ir::{DataSource, EvalSpec, Length, Op, Recipe, Stage, Tap};
use crate::model::{ModelSpec, ParamClass, Part, TextKind};
use std::fmt::Write;

fn count(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else if n >= 10_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

fn model(out: &mut String, m: &ModelSpec, models: &[ModelSpec]) {
    let origin = match &m.preset {
        Some(p) => format!("preset {p}"),
        None => "explicit towers".into(),
    };
    let mut flags = Vec::new();
    if m.frozen {
        flags.push("frozen".to_string());
    }
    match (&m.ema, &m.weights) {
        (Some(e), _) => flags.push(format!(
            "exponential moving average of {} (decay {}), starting from its values",
            models[e.source].name,
            fmt_num(e.decay)
        )),
        (None, Some(w)) => flags.push(format!("weights {w}")),
        (None, None) => flags.push("random initialisation".into()),
    }
    let _ = writeln!(
        out,
        "  {}: clip, {}, {}, {} parameters",
        m.name,
        origin,
        flags.join(", "),
        count(m.parameter_count())
    );
    let v = &m.vision;
    let _ = writeln!(
        out,
        "    vision  vit(size {}, patch {}, width {}, layers {}, heads {}, mlp {}, act {}){}: {} patches + class token",
        v.image_size,
        v.patch,
        v.width,
        v.layers,
        v.heads,
        v.mlp,
        v.act.name(),
        if v.frozen && !m.frozen { ", frozen" } else { "" },
        v.patches()
    );
    let t = &m.text;
    let kind = match t.kind {
        TextKind::Clip => "transformer".to_string(),
        TextKind::Bert | TextKind::Roberta => format!(
            "{}{}",
            if t.kind == TextKind::Roberta {
                "roberta"
            } else {
                "bert"
            },
            t.preset
                .as_ref()
                .map(|p| format!(" {p}"))
                .unwrap_or_default()
        ),
    };
    let _ =
        writeln!(
        out,
        "    text    {}(context {}, vocab {}, width {}, layers {}, heads {}, mlp {}, act {}){}{}",
        kind,
        t.context,
        t.vocab,
        t.width,
        t.layers,
        t.heads,
        t.mlp,
        t.act.name(),
        if t.frozen && !m.frozen { ", frozen" } else { "" },
        t.weights.as_ref().map(|w| format!(", weights {w}")).unwrap_or_default()
    );
    let s = &m.logit_scale;
    let scale = if s.learnable {
        format!(
            "learnable σ = exp(t), t₀ = ln {} ≈ {}, σ clamped to [{}, {}]",
            fmt_num(s.init),
            fmt_num((s.init.ln() * 1e4).round() / 1e4),
            fmt_num(s.min),
            fmt_num(s.max)
        )
    } else {
        format!("fixed σ = {}", fmt_num(s.init))
    };
    let _ = writeln!(out, "    embed   {}; logit scale {}", m.embed, scale);
    let tok = match &m.tokenizer.path {
        Some(p) => format!("{} {p}", m.tokenizer.kind),
        None => m.tokenizer.kind.to_string(),
    };
    let p = &m.preprocess;
    let _ = writeln!(
        out,
        "    input   tokenizer {} (context {}); images resized to {}, centre-cropped to {}, mean [{}], std [{}]",
        tok,
        m.tokenizer.context,
        p.resize,
        p.crop,
        p.mean.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(", "),
        p.std.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(", ")
    );
}

fn data(d: &crate::ir::DataSpec) -> String {
    let source = match &d.source {
        DataSource::Pairs { csv, image, caption, sep } => format!("pairs from {csv} (image column \"{image}\", caption column \"{caption}\", separator {sep:?})"),
        DataSource::Folders { root, template } => format!("class folders under {root}, captions \"{template}\""),
        DataSource::WebDataset { shards } => format!("webdataset shards {shards}"),
        DataSource::FashionMnist { split, templates, root } => {
            format!("Fashion-MNIST {split} split{}, prompts {:?}", root.as_ref().map(|r| format!(" from {r}")).unwrap_or_default(), templates)
        }
        DataSource::Synthetic { samples } => format!("{samples} synthetic samples"),
    };
    format!(
        "{source}; batch {}, {}, seed {}",
        d.batch,
        if d.shuffle { "shuffled" } else { "in order" },
        d.seed
    )
}

fn part_name(p: Part) -> &'static str {
    p.name()
}

/// What a checked recipe computes: models, data, and for each stage its loss terms expanded to
/// primitive operations with shapes, the learnable parts of the loss, and the optimiser.
pub fn ir(recipe: &Recipe) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "models");
    for m in &recipe.models {
        model(&mut out, m, &recipe.models);
    }
    for (i, stage) in recipe.stages.iter().enumerate() {
        let _ = writeln!(out);
        stage_ir(&mut out, recipe, i, stage);
    }
    if !recipe.eval.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "evaluation");
        for e in &recipe.eval {
            match e {
                EvalSpec::ZeroShot {
                    model,
                    data: d,
                    templates,
                    every,
                } => {
                    let _ = writeln!(
                        out,
                        "  zero-shot classification of {} on {}; prompts {:?}{}",
                        recipe.models[*model].name,
                        data(d),
                        templates,
                        when(*every)
                    );
                }
                EvalSpec::Retrieval {
                    model,
                    data: d,
                    k,
                    every,
                } => {
                    let _ = writeln!(
                        out,
                        "  image-text retrieval R@{:?} of {} on {}{}",
                        k,
                        recipe.models[*model].name,
                        data(d),
                        when(*every)
                    );
                }
            }
        }
    }
    out
}

/// When a periodic evaluation runs, for the IR listing (nothing for the default, after training).
fn when(every: Option<u64>) -> String {
    every
        .map(|n| format!("; also every {n} steps"))
        .unwrap_or_default()
}

fn stage_ir(out: &mut String, recipe: &Recipe, index: usize, stage: &Stage) {
    let from = stage
        .from
        .map(|f| {
            format!(
                ", starting from stage {}'s checkpoint",
                recipe.stages[f].name
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "stage {} ({} of {}){}",
        stage.name,
        index + 1,
        recipe.stages.len(),
        from
    );
    let _ = writeln!(out, "  data    {}", data(&stage.data));
    let t = &stage.train;
    let length = match t.length {
        Length::Epochs(n) => format!("{n} epochs"),
        Length::Steps(n) => format!("{n} steps"),
    };
    let _ = writeln!(
        out,
        "  train   {length}, {}{}{}, seed {}{}",
        t.precision,
        if t.accumulate > 1 {
            format!(
                ", gradients accumulated over {} micro-batches",
                t.accumulate
            )
        } else {
            String::new()
        },
        t.clip_grad
            .map(|c| format!(", gradient norm clipped to {}", fmt_num(c)))
            .unwrap_or_default(),
        t.seed,
        t.checkpoint_every
            .map(|c| format!(", checkpoint every {c} steps"))
            .unwrap_or_default()
    );
    let o = &t.optimizer;
    let _ = writeln!(
        out,
        "  optim   adamw(lr {}, weight decay {}, betas ({}, {}), eps {})",
        o.lr,
        fmt_num(o.weight_decay),
        fmt_num(o.betas.0),
        fmt_num(o.betas.1),
        fmt_num(o.eps)
    );

    // Parameter groups over everything this stage trains.
    let mut decay = (0u64, 0u64);
    let mut no_decay = (0u64, 0u64);
    let mut add = |class: ParamClass, numel: u64| {
        let group = if o.no_decay.contains(&class) {
            &mut no_decay
        } else {
            &mut decay
        };
        group.0 += 1;
        group.1 += numel;
    };
    // Parameters frozen by name get no optimiser state and count in no group.
    let frozen = |name: String| stage.frozen_names.contains(&name);
    for (model_id, part) in &stage.trainable {
        let m = &recipe.models[*model_id];
        for p in m.parameters().iter().filter(|p| p.part == *part) {
            if !frozen(format!("{}/{}", m.name, p.name)) {
                add(p.class, p.shape.iter().product());
            }
        }
    }
    for p in &stage.params {
        if !frozen(format!("loss/{}", p.name)) {
            add(p.class, p.shape.iter().product());
        }
    }
    let classes: Vec<&str> = o.no_decay.iter().map(|c| c.plural()).collect();
    let _ = writeln!(
        out,
        "          group decay:    {} tensors, {} values, weight decay {}",
        decay.0,
        count(decay.1),
        fmt_num(o.weight_decay)
    );
    let _ = writeln!(
        out,
        "          group no_decay: {} tensors, {} values ({}), weight decay 0",
        no_decay.0,
        count(no_decay.1),
        classes.join(", ")
    );
    for (i, g) in o.groups.iter().enumerate() {
        let _ = writeln!(
            out,
            "          group {}: {} ({} tensors): lr × {}{}",
            i + 1,
            g.patterns.join(", "),
            g.names.len(),
            fmt_num(g.lr_scale),
            g.weight_decay
                .map(|w| format!(", weight decay {}", fmt_num(w)))
                .unwrap_or_default()
        );
    }
    let trainable: Vec<String> = stage
        .trainable
        .iter()
        .map(|(m, p)| format!("{}.{}", recipe.models[*m].name, part_name(*p)))
        .collect();
    let _ = writeln!(
        out,
        "  trains  {}",
        if trainable.is_empty() {
            "only the loss's own parts".into()
        } else {
            trainable.join(", ")
        }
    );
    if !stage.frozen.is_empty() {
        let frozen: Vec<String> = stage
            .frozen
            .iter()
            .map(|(m, p)| format!("{}.{}", recipe.models[*m].name, part_name(*p)))
            .collect();
        let _ = writeln!(out, "  freezes {}", frozen.join(", "));
    }
    if !stage.frozen_patterns.is_empty() {
        let _ = writeln!(
            out,
            "  freezes {} ({} tensors)",
            stage.frozen_patterns.join(", "),
            stage.frozen_names.len()
        );
    }
    let frozen_models: Vec<&str> = recipe
        .models
        .iter()
        .filter(|m| m.frozen)
        .map(|m| m.name.as_str())
        .collect();
    if !frozen_models.is_empty() {
        let _ = writeln!(
            out,
            "  frozen  {} (no gradient, no optimiser state)",
            frozen_models.join(", ")
        );
    }

    if !stage.params.is_empty() {
        let _ = writeln!(out, "  learnable parts of the loss");
        for (i, p) in stage.params.iter().enumerate() {
            let clamp = p
                .clamp
                .map(|(lo, hi)| format!(", clamped to [{}, {}]", fmt_num(lo), fmt_num(hi)))
                .unwrap_or_default();
            // Which scale a term uses (CLIP-KD's as-is κ, or an exponentiated σ) shows here.
            let read = if p.exponentiated {
                ", read as σ = exp(t)"
            } else if p.shape.is_empty() {
                ", read as is"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "    p{i} {} {:?} init {}{}{read}, {}",
                p.name,
                p.shape,
                p.init,
                clamp,
                p.class.plural()
            );
        }
    }

    let _ = writeln!(
        out,
        "  loss = {}",
        stage
            .terms
            .iter()
            .map(|t| format!("{} × {}", t.weight, t.label))
            .collect::<Vec<_>>()
            .join(" + ")
    );
    let _ = writeln!(out, "  graph ({} nodes)", stage.graph.nodes.len());
    for (i, node) in stage.graph.nodes.iter().enumerate() {
        let what = match &node.op {
            Op::Tap { model, tap, mask } => {
                let m = &recipe.models[*model].name;
                let mask = mask
                    .as_ref()
                    .map(|k| match &k.shared {
                        None => format!(" (patches masked at {})", fmt_num(k.ratio)),
                        Some(name) => format!(
                            " (patches masked at {}, mask `{name}` shared)",
                            fmt_num(k.ratio)
                        ),
                    })
                    .unwrap_or_default();
                let tap = match tap {
                    Tap::Image => "image".to_string(),
                    Tap::Text => "text".to_string(),
                    Tap::Scale => "scale".to_string(),
                    Tap::Patches => "patches".to_string(),
                    Tap::ImageLayer(k) => format!("image_layer({k})"),
                    Tap::TextLayer(k) => format!("text_layer({k})"),
                    Tap::ImageAttention(k) => format!("image_attention({k})"),
                    Tap::TextAttention(k) => format!("text_attention({k})"),
                    Tap::TextMask => "text_mask".into(),
                    tap @ Tap::Projection { .. } => crate::engine::lower::tap_name(*tap),
                };
                let frozen = if recipe.models[*model].frozen {
                    " [frozen]"
                } else {
                    ""
                };
                format!("tap {m}.{tap}{mask}{frozen}")
            }
            Op::Param(p) => format!("param p{p} {}", stage.params[*p].name),
            Op::Const(v) => format!("const {}", fmt_num(*v)),
            Op::Scheduled(s) => format!("schedule {s}"),
            other => {
                let inputs: Vec<String> = node.inputs.iter().map(|n| format!("%{n}")).collect();
                format!("{}({})", other.name(), inputs.join(", "))
            }
        };
        let label = stage
            .terms
            .iter()
            .filter(|t| t.node == i)
            .map(|t| format!("   ← term {}", t.label))
            .collect::<String>();
        let _ = writeln!(out, "    %{i:<3} = {what:<58} : {}{label}", node.shape);
    }
    for t in &stage.terms {
        let _ = writeln!(out, "  term {} = {} × %{}", t.label, t.weight, t.node);
    }
}
