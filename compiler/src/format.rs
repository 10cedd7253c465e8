//! `kdc fmt`: the canonical layout of a recipe. It keeps every comment, preserves single blank
//! lines between items, writes numbers and strings as they were written, and breaks lines by
//! fitting groups into 100 columns (Wadler's algorithm, from the `pretty` crate). Formatting
//! twice changes nothing.

use crate::source::Span;
use crate::syntax::ast::*;
use pretty::RcDoc;
use std::cell::RefCell;
use std::collections::VecDeque;

pub const WIDTH: usize = 100;
const INDENT: isize = 2;

type Doc = RcDoc<'static, ()>;

/// Formats a parsed file whose source text is `text`.
pub fn format(file: &File, text: &str) -> String {
    let printer = Printer {
        text,
        comments: RefCell::new(file.comments.iter().cloned().collect()),
    };
    let mut parts: Vec<Doc> = Vec::new();
    let mut previous_end: Option<u32> = None;
    for item in &file.items {
        let span = item.span();
        let leading = printer.leading(span.start, previous_end);
        if let Some(end) = previous_end {
            parts.push(Doc::hardline());
            if printer.blank_line_between(end, first_start(&leading, span.start)) {
                parts.push(Doc::hardline());
            }
        }
        parts.push(leading.doc);
        parts.push(printer.item(item));
        parts.push(printer.trailing(span.end));
        previous_end = Some(span.end);
    }
    let rest = printer.rest(previous_end);
    parts.push(rest);
    let doc = Doc::concat(parts);
    let mut out = Vec::new();
    doc.render(WIDTH, &mut out)
        .expect("rendering to memory cannot fail");
    let rendered = String::from_utf8(out).expect("the printer writes UTF-8");
    let mut result: String = rendered
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n");
    result = result.trim_matches('\n').to_string();
    result.push('\n');
    result
}

struct Printer<'t> {
    text: &'t str,
    comments: RefCell<VecDeque<Comment>>,
}

/// Comments found before a node: the document that prints them (each on its own line) and
/// where the first one started.
struct Leading {
    doc: Doc,
    first: Option<u32>,
}

fn first_start(leading: &Leading, fallback: u32) -> u32 {
    leading.first.unwrap_or(fallback)
}

impl Printer<'_> {
    /// Own-line comments before `pos`, each followed by a line break; a blank line the author
    /// left between two comments, or between a comment and the node, is kept.
    fn leading(&self, pos: u32, _previous_end: Option<u32>) -> Leading {
        let mut docs = Vec::new();
        let mut first = None;
        let mut queue = self.comments.borrow_mut();
        while queue.front().is_some_and(|c| c.span.start < pos) {
            let c = queue.pop_front().unwrap();
            first.get_or_insert(c.span.start);
            docs.push(Doc::text(c.text.clone()));
            docs.push(Doc::hardline());
            let next = queue
                .front()
                .map(|n| n.span.start)
                .filter(|s| *s < pos)
                .unwrap_or(pos);
            if self.blank_line_between(c.span.end, next) {
                docs.push(Doc::hardline());
            }
        }
        Leading {
            doc: Doc::concat(docs),
            first,
        }
    }

    /// A comment that starts on the line where a node ends, printed after it.
    fn trailing(&self, end: u32) -> Doc {
        self.trailing_before(end, u32::MAX)
    }

    /// Like `trailing`, for a comment that starts before `limit` (an element's comment comes
    /// before its list's closing bracket; one after the bracket belongs to what follows).
    fn trailing_before(&self, end: u32, limit: u32) -> Doc {
        let mut queue = self.comments.borrow_mut();
        if let Some(c) = queue.front() {
            if c.span.start >= end
                && c.span.start < limit
                && !self.text[end as usize..c.span.start as usize].contains('\n')
            {
                let c = queue.pop_front().unwrap();
                // A line comment ends the line. Every place that calls this is followed by a line
                // break when its group is broken; the flat alternative forces it to be broken.
                return Doc::text(format!(" {}", c.text)).append(force_break());
            }
        }
        Doc::nil()
    }

    /// Comments before the closing delimiter at `pos`, each on a line of its own.
    fn closing(&self, pos: u32) -> Option<Doc> {
        let mut docs = Vec::new();
        let mut queue = self.comments.borrow_mut();
        while queue.front().is_some_and(|c| c.span.start < pos) {
            let c = queue.pop_front().unwrap();
            docs.push(Doc::hardline());
            docs.push(Doc::text(c.text.clone()));
        }
        (!docs.is_empty()).then(|| Doc::concat(docs))
    }

    fn rest(&self, previous_end: Option<u32>) -> Doc {
        let mut docs = Vec::new();
        let mut last = previous_end;
        let mut queue = self.comments.borrow_mut();
        while let Some(c) = queue.pop_front() {
            if let Some(end) = last {
                docs.push(Doc::hardline());
                if self.blank_line_between(end, c.span.start) {
                    docs.push(Doc::hardline());
                }
            }
            docs.push(Doc::text(c.text.clone()));
            last = Some(c.span.end);
        }
        Doc::concat(docs)
    }

    fn blank_line_between(&self, from: u32, to: u32) -> bool {
        if to <= from {
            return false;
        }
        self.text[from as usize..to as usize].matches('\n').count() >= 2
    }

    fn item(&self, item: &Item) -> Doc {
        match item {
            Item::Use(u) => self.use_decl(u),
            Item::Fn(f) => self.fn_def(f),
            Item::Test(t) => self.test_def(t),
            Item::Stage(s) => self.stage(s),
            Item::Binding(b) => self.binding(b),
        }
    }

    fn use_decl(&self, u: &Use) -> Doc {
        let path = u
            .path
            .iter()
            .map(|i| i.name.clone())
            .collect::<Vec<_>>()
            .join(".");
        let mut doc = Doc::text(format!("use {path}"));
        if let Some(names) = &u.names {
            let items = names
                .iter()
                .map(|n| (n.span, Doc::text(n.name.clone())))
                .collect();
            doc = doc.append(self.delimited(".{", "}", items, u.span.end));
        }
        doc
    }

    fn fn_def(&self, f: &FnDef) -> Doc {
        let params = f.params.iter().map(|p| {
            let mut d = Doc::text(format!("{}: {}", p.name.name, p.ty.name));
            if let Some(default) = &p.default {
                d = d.append(Doc::text(" = ")).append(self.expr(default));
            }
            (p.span, d)
        });
        let mut head = Doc::text(format!("fn {}", f.name.name)).append(self.delimited(
            "(",
            ")",
            params.collect(),
            f.params_close + 1,
        ));
        if let Some(ret) = &f.ret {
            head = head.append(Doc::text(format!(" -> {}", ret.name)));
        }
        let mut body = Vec::new();
        let mut previous: Option<u32> = None;
        for l in &f.lets {
            body.push(self.line_in_block(l.span, previous, || {
                Doc::text(format!("let {} = ", l.name.name))
                    .append(self.expr_nested(&l.value, 4 + l.name.name.len() as isize + 3))
            }));
            previous = Some(l.span.end);
        }
        body.push(self.line_in_block(f.body.span, previous, || self.expr(&f.body).group()));
        let closing = self.closing(f.span.end - 1).unwrap_or(Doc::nil());
        let inner = Doc::concat(body).append(closing).nest(INDENT);
        head.append(Doc::text(" {"))
            .append(inner)
            .append(Doc::hardline())
            .append(Doc::text("}"))
    }

    fn test_def(&self, t: &TestDef) -> Doc {
        let mut body = Vec::new();
        let mut previous: Option<u32> = None;
        for l in &t.lets {
            body.push(self.line_in_block(l.span, previous, || {
                Doc::text(format!("let {} = ", l.name.name))
                    .append(self.expr_nested(&l.value, 4 + l.name.name.len() as isize + 3))
            }));
            previous = Some(l.span.end);
        }
        body.push(self.line_in_block(t.body.span, previous, || self.expr(&t.body).group()));
        let closing = self.closing(t.span.end - 1).unwrap_or(Doc::nil());
        let inner = Doc::concat(body).append(closing).nest(INDENT);
        Doc::text(format!("test {} {{", t.name.name))
            .append(inner)
            .append(Doc::hardline())
            .append(Doc::text("}"))
    }

    /// One line of a block: a line break, comments above it, the content, a trailing comment.
    /// The content is printed after the comments above it are taken, so that they stay above
    /// the line instead of joining its expression.
    fn line_in_block(
        &self,
        span: Span,
        previous_end: Option<u32>,
        content: impl FnOnce() -> Doc,
    ) -> Doc {
        let leading = self.leading(span.start, previous_end);
        let content = content();
        let mut doc = Doc::hardline();
        if let Some(end) = previous_end {
            if self.blank_line_between(end, first_start(&leading, span.start)) {
                doc = doc.append(Doc::hardline());
            }
        }
        doc.append(leading.doc)
            .append(content)
            .append(self.trailing(span.end))
    }

    fn stage(&self, s: &Stage) -> Doc {
        let mut head = Doc::text(format!("stage {}", s.name.name));
        if !s.args.is_empty() {
            let args = s.args.iter().map(|a| (a.span, self.arg(a))).collect();
            head = head.append(self.delimited("(", ")", args, s.args_close + 1));
        }
        let mut body = Vec::new();
        let mut previous: Option<u32> = None;
        for b in &s.bindings {
            body.push(self.line_in_block(b.span, previous, || self.binding(b)));
            previous = Some(b.span.end);
        }
        let closing = self.closing(s.span.end - 1).unwrap_or(Doc::nil());
        let inner = Doc::concat(body).append(closing).nest(INDENT);
        head.append(Doc::text(" {"))
            .append(inner)
            .append(Doc::hardline())
            .append(Doc::text("}"))
    }

    fn binding(&self, b: &Binding) -> Doc {
        // Continuation lines of a sum or pipeline line up under the `=`.
        let width = b.name.name.chars().count() as isize + 1;
        Doc::text(format!("{} = ", b.name.name)).append(self.expr_nested(&b.value, width))
    }

    /// An expression whose operator chains, when broken, continue at `indent` columns.
    fn expr_nested(&self, e: &Expr, indent: isize) -> Doc {
        match &e.kind {
            ExprKind::Binary(op, ..) if op.precedence() <= 2 => self.chain(e, *op, indent).group(),
            _ => self.expr(e).group(),
        }
    }

    /// A chain of one precedence level (`a + b - c`, `x | y | z`), breaking before operators.
    fn chain(&self, e: &Expr, op: BinOp, indent: isize) -> Doc {
        let mut operands: Vec<(Option<BinOp>, &Expr)> = Vec::new();
        collect_chain(e, op.precedence(), None, &mut operands);
        // In a broken sum, numeric weights line up: `+ 1    * crd(…)` over `+ 2000 * fd(…)`.
        let weight_width = operands
            .iter()
            .filter_map(|(_, o)| weight_text(o))
            .map(|t| t.chars().count())
            .max()
            .unwrap_or(0);
        let term = |operand: &Expr, right: bool| match (&operand.kind, weight_text(operand)) {
            (ExprKind::Binary(BinOp::Mul, _, r), Some(w)) if op.precedence() == 2 => {
                let padded = format!("{w:<weight_width$}");
                Doc::text(padded)
                    .flat_alt(Doc::text(w))
                    .append(Doc::text(" * "))
                    .append(self.operand(r, 3, true))
            }
            _ => self.operand(operand, op.precedence(), right),
        };
        let mut doc = Doc::nil();
        for (i, (operator, operand)) in operands.iter().enumerate() {
            if i == 0 {
                doc = doc.append(term(operand, false));
            } else {
                let leading = self.leading(operand.span.start, None);
                let symbol = operator.unwrap().symbol();
                let piece = Doc::line()
                    .append(leading.doc)
                    .append(Doc::text(format!("{symbol} ")))
                    .append(term(operand, true));
                doc = doc.append(piece.nest(indent));
            }
            // The last operand's trailing comment belongs to whatever encloses the chain.
            if i + 1 < operands.len() {
                doc = doc.append(self.trailing(operand.span.end).nest(indent));
            }
        }
        doc
    }

    fn operand(&self, e: &Expr, parent: u8, right: bool) -> Doc {
        let needs = match &e.kind {
            ExprKind::Binary(op, ..) => {
                op.precedence() < parent || (right && op.precedence() == parent)
            }
            _ => false,
        };
        // The parser keeps explicit parentheses, so `needs` is only a safety net for trees
        // built by hand.
        if needs {
            Doc::text("(").append(self.expr(e)).append(Doc::text(")"))
        } else {
            self.expr(e)
        }
    }

    fn expr(&self, e: &Expr) -> Doc {
        match &e.kind {
            ExprKind::Number { text, .. } => Doc::text(text.clone()),
            ExprKind::Str { text, .. } => Doc::text(text.clone()),
            ExprKind::Bool(b) => Doc::text(if *b { "true" } else { "false" }),
            ExprKind::Name(n) => Doc::text(n.clone()),
            ExprKind::List(items) => {
                let items = items.iter().map(|i| (i.span, self.expr(i))).collect();
                self.delimited("[", "]", items, e.span.end)
            }
            ExprKind::Paren(inner) => Doc::text("(")
                .append(self.expr_nested(inner, 1))
                .append(Doc::text(")")),
            ExprKind::Field(base, field) => self
                .expr(base)
                .append(Doc::text(format!(".{}", field.name))),
            ExprKind::Call(callee, args) => {
                let args = args.iter().map(|a| (a.span, self.arg(a))).collect();
                self.expr(callee)
                    .append(self.delimited("(", ")", args, e.span.end))
            }
            ExprKind::Index(base, items) => {
                let mut doc = self.expr(base).append(Doc::text("["));
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        doc = doc.append(Doc::text(", "));
                    }
                    doc = match item {
                        IndexItem::At(e) => doc.append(self.expr_nested(e, INDENT)),
                        IndexItem::Range { start, end, .. } => {
                            if let Some(e) = start {
                                doc = doc.append(self.expr_nested(e, INDENT));
                            }
                            doc = doc.append(Doc::text(":"));
                            if let Some(e) = end {
                                doc = doc.append(self.expr_nested(e, INDENT));
                            }
                            doc
                        }
                    };
                }
                doc.append(Doc::text("]"))
            }
            ExprKind::Neg(inner) => Doc::text("-").append(self.operand(inner, 4, false)),
            ExprKind::Binary(op, l, r) => {
                if op.precedence() <= 2 {
                    return self.chain(e, *op, INDENT).group();
                }
                self.operand(l, op.precedence(), false)
                    .append(Doc::text(format!(" {} ", op.symbol())))
                    .append(self.operand(r, op.precedence(), true))
            }
        }
    }

    fn arg(&self, a: &Arg) -> Doc {
        match &a.name {
            Some(n) => {
                Doc::text(format!("{}: ", n.name)).append(self.expr_nested(&a.value, INDENT))
            }
            None => self.expr_nested(&a.value, INDENT),
        }
    }

    /// `open items close`, on one line if it fits, else one item per line with a trailing
    /// comma. Comments between items stay with the item after them.
    fn delimited(&self, open: &str, close: &str, items: Vec<(Span, Doc)>, end: u32) -> Doc {
        if items.is_empty() {
            return match self.closing(end - 1) {
                Some(comments) => Doc::text(open.to_string())
                    .append(comments.nest(INDENT))
                    .append(Doc::hardline())
                    .append(Doc::text(close.to_string())),
                None => Doc::text(format!("{open}{close}")),
            };
        }
        let count = items.len();
        let mut inner = Doc::nil();
        for (i, (span, doc)) in items.into_iter().enumerate() {
            let leading = self.leading(span.start, None);
            let comma = if i + 1 < count {
                Doc::text(",")
            } else {
                Doc::text(",").flat_alt(Doc::nil())
            };
            let separator = if i == 0 { Doc::line_() } else { Doc::line() };
            inner = inner
                .append(separator)
                .append(leading.doc)
                .append(doc)
                .append(comma)
                .append(self.trailing_before(span.end, end));
        }
        let closing = match self.closing(end - 1) {
            Some(comments) => comments.append(force_break()),
            None => Doc::nil(),
        };
        Doc::text(open.to_string())
            .append(inner.append(closing).nest(INDENT))
            .append(Doc::line_())
            .append(Doc::text(close.to_string()))
            .group()
    }
}

/// Nothing when the enclosing group is broken; an impossible line break when it would be
/// flat, so the group breaks.
fn force_break() -> Doc {
    Doc::nil().flat_alt(Doc::hardline())
}

/// The number of a `number * term` operand, as written.
fn weight_text(e: &Expr) -> Option<String> {
    match &e.kind {
        ExprKind::Binary(BinOp::Mul, l, _) => match &l.kind {
            ExprKind::Number { text, .. } => Some(text.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn collect_chain<'e>(
    e: &'e Expr,
    level: u8,
    operator: Option<BinOp>,
    out: &mut Vec<(Option<BinOp>, &'e Expr)>,
) {
    match &e.kind {
        ExprKind::Binary(op, l, r) if op.precedence() == level => {
            collect_chain(l, level, operator, out);
            out.push((Some(*op), r));
        }
        _ => out.push((operator, e)),
    }
}
