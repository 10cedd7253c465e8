//! Data sets (`pairs`, `folders`, `webdataset`, `fashion_mnist`, `synthetic`) with their batch and
//! shuffling, caption templates, and evaluations (`zero_shot`, `retrieval`).

use super::Bound;
use crate::check::value::Value;
use crate::check::{Checker, Ctx};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::ir::{DataSource, DataSpec, EvalSpec};
use crate::source::Span;

impl Checker<'_> {
    pub(in crate::check) fn pairs(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let csv = self.string(ctx, b, "csv");
        let image = self.string(ctx, b, "image");
        let caption = self.string(ctx, b, "caption");
        let sep = self.string(ctx, b, "sep");
        if let Some(s) = &sep {
            if s.chars().count() != 1 {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::OutOfRange,
                        b.span("sep"),
                        "a CSV separator must be one character",
                    )
                    .primary_label(format!("{} characters", s.chars().count())),
                );
            }
        }
        let source = match (csv, image, caption, sep) {
            (Some(csv), Some(image), Some(caption), Some(sep)) => Some(DataSource::Pairs {
                csv,
                image,
                caption,
                sep,
            }),
            _ => None,
        };
        self.data(ctx, b, source)
    }

    pub(in crate::check) fn folders(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let root = self.string(ctx, b, "root");
        let template = self.templates_one(ctx, b);
        let source = match (root, template) {
            (Some(root), Some(template)) => Some(DataSource::Folders { root, template }),
            _ => None,
        };
        self.data(ctx, b, source)
    }

    pub(in crate::check) fn webdataset(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let shards = self.string(ctx, b, "shards").and_then(|shards| {
            match crate::data::webdataset::count(&shards) {
                Ok(_) => Some(shards),
                Err(e) => {
                    self.bad(
                        ctx,
                        b,
                        Diagnostic::error(
                            Code::OutOfRange,
                            b.span("shards"),
                            format!("the shard pattern \"{shards}\" is malformed: {}", e.message),
                        )
                        .primary_label(format!("at `{}`", e.part))
                        .hint(
                            "write ranges as {000..099} (ascending, zero-padded as wide as \
                             written), lists as {a,b}, and join patterns with `::`",
                        ),
                    );
                    None
                }
            }
        });
        let source = shards.map(|shards| DataSource::WebDataset { shards });
        self.data(ctx, b, source)
    }

    pub(in crate::check) fn fashion_mnist(
        &mut self,
        ctx: &mut Ctx,
        b: &Bound,
        _span: Span,
    ) -> Value {
        let split = self.choice(ctx, b, "split", &["train", "test"]);
        let templates = self.templates(ctx, b, "templates");
        let root = self.string(ctx, b, "root");
        let source = match (split, templates) {
            (Some(split), Some(templates)) => Some(DataSource::FashionMnist {
                split: split.into(),
                templates,
                root,
            }),
            _ => None,
        };
        self.data(ctx, b, source)
    }

    pub(in crate::check) fn synthetic(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let samples = self.count(ctx, b, "samples");
        let source = samples.map(|samples| DataSource::Synthetic { samples });
        self.data(ctx, b, source)
    }

    pub(in crate::check) fn data(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        source: Option<DataSource>,
    ) -> Value {
        let batch = self.count(ctx, b, "batch");
        let shuffle = self.boolean(ctx, b, "shuffle");
        let seed = self.natural(ctx, b, "seed");
        match (source, batch, shuffle, seed) {
            (Some(source), Some(batch), Some(shuffle), Some(seed)) => Value::Data(DataSpec {
                source,
                batch,
                shuffle,
                seed,
            }),
            _ => Value::Error,
        }
    }

    pub(in crate::check) fn templates(
        &mut self,
        ctx: &Ctx,
        b: &Bound,
        name: &str,
    ) -> Option<Vec<String>> {
        let list = self.str_list(ctx, b, name)?;
        let mut out = Vec::new();
        for (t, span) in list {
            if !t.contains("{}") {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::BadTemplate,
                        span,
                        format!("the template \"{t}\" has no `{{}}` for the class name"),
                    )
                    .primary_label("no `{}`")
                    .hint("write for instance \"a photo of a {}.\""),
                );
                return None;
            }
            out.push(t);
        }
        if out.is_empty() {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::BadTemplate,
                    b.span(name),
                    "at least one template is needed",
                )
                .primary_label("empty list"),
            );
            return None;
        }
        Some(out)
    }

    pub(in crate::check) fn templates_one(&mut self, ctx: &Ctx, b: &Bound) -> Option<String> {
        let t = self.string(ctx, b, "template")?;
        if !t.contains("{}") {
            self.bad(
                ctx,
                b,
                Diagnostic::error(
                    Code::BadTemplate,
                    b.span("template"),
                    format!("the template \"{t}\" has no `{{}}` for the class name"),
                )
                .primary_label("no `{}`")
                .hint("write for instance \"a photo of a {}.\""),
            );
            return None;
        }
        Some(t)
    }

    pub(in crate::check) fn evaluation(&mut self, ctx: &mut Ctx, b: &Bound, _span: Span) -> Value {
        let name = b.callee.as_str();
        let model = self.model_arg(ctx, b, "model");
        let data = match b.get("data") {
            Some((Value::Data(d), _)) => Some(d),
            Some((other, s)) => {
                self.wrong_kind(ctx, b, "data", &other, s, "a data set");
                None
            }
            None => None,
        };
        let every = if b.has("every") {
            match self.count(ctx, b, "every") {
                Some(n) => Some(Some(n)),
                None => None,
            }
        } else {
            Some(None)
        };
        if name == "zero_shot" {
            let templates = self.templates(ctx, b, "templates");
            if let Some(DataSpec {
                source:
                    DataSource::Pairs { .. }
                    | DataSource::WebDataset { .. }
                    | DataSource::Synthetic { .. },
                ..
            }) = &data
            {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::TypeMismatch,
                        b.span("data"),
                        "zero-shot classification needs labelled classes",
                    )
                    .primary_label("these are captioned pairs, not classes")
                    .hint("use `folders(…)` or `fashion_mnist(…)`, or `retrieval(…)` for pairs"),
                );
            }
            match (model, data, templates, every) {
                (Some(model), Some(data), Some(templates), Some(every)) => {
                    Value::Eval(EvalSpec::ZeroShot {
                        model,
                        data,
                        templates,
                        every,
                    })
                }
                _ => Value::Error,
            }
        } else {
            let k = self.num_list(ctx, b, "k").and_then(|list| {
                list.iter()
                    .all(|(v, _)| v.fract() == 0.0 && *v >= 1.0)
                    .then(|| list.iter().map(|(v, _)| *v as u64).collect::<Vec<u64>>())
            });
            if k.is_none() && !b.bad.get() {
                self.bad(
                    ctx,
                    b,
                    Diagnostic::error(
                        Code::NotPositive,
                        b.span("k"),
                        "recall cut-offs must be whole numbers of at least 1",
                    )
                    .primary_label("for example [1, 5, 10]"),
                );
            }
            match (model, data, k, every) {
                (Some(model), Some(data), Some(k), Some(every)) => {
                    Value::Eval(EvalSpec::Retrieval {
                        model,
                        data,
                        k,
                        every,
                    })
                }
                _ => Value::Error,
            }
        }
    }
}
