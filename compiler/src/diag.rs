//! Diagnostics are data: a code, a severity, a message, a primary span, secondary labels and
//! hints. Only `render` turns them into text, and only the CLI prints that text.

use crate::codes::Code;
use crate::source::{SourceMap, Span};
use ariadne::{Config, IndexType, Label as AriadneLabel, Report, ReportKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// A span with a short message drawn under it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    pub primary: Label,
    pub labels: Vec<Label>,
    pub hints: Vec<String>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            primary: Label {
                span,
                message: String::new(),
            },
            labels: Vec::new(),
            hints: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn warning(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, span, message)
        }
    }

    /// The message drawn under the primary span.
    pub fn primary_label(mut self, message: impl Into<String>) -> Diagnostic {
        self.primary.message = message.into();
        self
    }

    pub fn label(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hints.push(hint.into());
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// A growing list of diagnostics. Checks push into it and go on, so one run reports every
/// error it can find; the same diagnostic reached twice (say, through two stages that share a
/// binding) is kept once.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    list: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        if !self.list.contains(&diagnostic) {
            self.list.push(diagnostic);
        }
    }

    pub fn extend(&mut self, other: Diagnostics) {
        for d in other.list {
            self.push(d);
        }
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(Diagnostic::is_error)
    }

    pub fn error_count(&self) -> usize {
        self.list.iter().filter(|d| d.is_error()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// In the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.list.iter()
    }

    /// In source order, so that output is stable whatever order the checks ran in.
    pub fn sorted(&self) -> Vec<&Diagnostic> {
        let mut sorted: Vec<&Diagnostic> = self.list.iter().collect();
        sorted.sort_by_key(|d| {
            (
                d.primary.span.file,
                d.primary.span.start,
                d.code,
                d.message.clone(),
            )
        });
        sorted
    }
}

/// How to draw diagnostics: colour for terminals, plain for tests and pipes.
#[derive(Clone, Copy, Debug)]
pub struct RenderOptions {
    pub color: bool,
}

/// Draws one diagnostic like rustc: `error[KD0009]: message`, then the source lines with the
/// primary span, labels, hints and notes.
pub fn render(diagnostic: &Diagnostic, sources: &SourceMap, options: RenderOptions) -> String {
    let kind = match diagnostic.severity {
        Severity::Error => ReportKind::Error,
        Severity::Warning => ReportKind::Warning,
    };
    let name = |span: Span| sources.get(span.file).name.clone();
    let primary = diagnostic.primary.span;
    let config = Config::default()
        .with_color(options.color)
        .with_index_type(IndexType::Byte);
    let mut report = Report::build(kind, (name(primary), primary.range()))
        .with_config(config)
        .with_code(diagnostic.code.as_str())
        .with_message(&diagnostic.message);
    let mut primary_label = AriadneLabel::new((name(primary), primary.range()))
        .with_order(0)
        .with_priority(1);
    if !diagnostic.primary.message.is_empty() {
        primary_label = primary_label.with_message(&diagnostic.primary.message);
    }
    if options.color {
        primary_label = primary_label.with_color(ariadne::Color::Red);
    }
    report = report.with_label(primary_label);
    for (index, label) in diagnostic.labels.iter().enumerate() {
        let mut l = AriadneLabel::new((name(label.span), label.span.range()))
            .with_message(&label.message)
            .with_order(index as i32 + 1);
        if options.color {
            l = l.with_color(ariadne::Color::Blue);
        }
        report = report.with_label(l);
    }
    for hint in &diagnostic.hints {
        report = report.with_help(hint);
    }
    for note in &diagnostic.notes {
        report = report.with_note(note);
    }
    let cache = ariadne::sources(
        sources
            .files()
            .map(|(_, f)| (f.name.clone(), f.text.clone())),
    );
    let mut out = Vec::new();
    report
        .finish()
        .write(cache, &mut out)
        .expect("writing a diagnostic to memory cannot fail");
    let text = String::from_utf8_lossy(&out).into_owned();
    // ariadne heads a report `[KD0009] Error: message`; kdc writes the head the way rustc
    // does, `error[KD0009]: message`, and keeps ariadne's drawing of the source below it (whose
    // first line names `file:line:col`).
    let severity = match diagnostic.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let head = format!("{severity}[{}]: {}", diagnostic.code, diagnostic.message);
    let head = if options.color {
        format!("\x1b[1m{head}\x1b[0m")
    } else {
        head
    };
    let rest: Vec<&str> = text.lines().skip(1).map(str::trim_end).collect();
    format!("{head}\n{}\n", rest.join("\n").trim_end())
}

/// Draws every diagnostic in source order and a closing count line.
pub fn render_all(
    diagnostics: &Diagnostics,
    sources: &SourceMap,
    options: RenderOptions,
) -> String {
    let mut out = String::new();
    for d in diagnostics.sorted() {
        out.push_str(&render(d, sources, options));
        out.push('\n');
    }
    let errors = diagnostics.error_count();
    let warnings = diagnostics.sorted().len() - errors;
    if errors > 0 {
        out.push_str(&format!(
            "error: {} error{} found",
            errors,
            if errors == 1 { "" } else { "s" }
        ));
        if warnings > 0 {
            out.push_str(&format!(
                ", {} warning{}",
                warnings,
                if warnings == 1 { "" } else { "s" }
            ));
        }
        out.push('\n');
    }
    out
}
