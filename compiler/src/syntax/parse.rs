use super::ast::*;
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::source::{FileId, Span};
use kdc_grammar::{rule_words, KdParser, Parser, Rule};
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use std::cell::RefCell;
use std::sync::OnceLock;

/// Parses one source file. A syntax error stops parsing (pest has no recovery) and comes back
/// as a single KD0001 diagnostic pointing at the first offending token.
pub fn parse(file: FileId, text: &str) -> Result<File, Vec<Diagnostic>> {
    if let Some(at) = text.find('\0') {
        return Err(vec![Diagnostic::error(
            crate::codes::Code::Syntax,
            Span::new(file, at, at + 1),
            "a recipe cannot contain a NUL byte",
        )
        .primary_label("NUL (0x00) here")
        .hint(
            "the file is probably not text, or was saved in UTF-16; save it as UTF-8",
        )]);
    }
    if let Some(too_deep) = nesting_limit(file, text) {
        return Err(vec![too_deep]);
    }
    let pairs = KdParser::parse(Rule::file, text).map_err(|e| vec![syntax_error(file, text, e)])?;
    let comments: Vec<Comment> = pairs
        .clone()
        .flatten()
        .filter(|p| p.as_rule() == Rule::COMMENT)
        .map(|p| Comment {
            span: Span::new(file, p.as_span().start(), p.as_span().end()),
            text: p.as_str().trim_end().to_string(),
        })
        .collect();
    let builder = Builder {
        file,
        text,
        comment_ends: comments
            .iter()
            .map(|c| (c.span.end as usize, c.span.start as usize))
            .collect(),
        errors: RefCell::new(Vec::new()),
    };
    let file_pair = pairs
        .into_iter()
        .next()
        .expect("the file rule always matches once");
    let mut items = Vec::new();
    for pair in children(file_pair) {
        match pair.as_rule() {
            Rule::EOI => {}
            _ => items.push(builder.item(pair)),
        }
    }
    for item in &mut items {
        if let Item::Fn(f) = item {
            f.doc = doc_comment(text, &comments, f.span);
        }
    }
    let errors = builder.errors.into_inner();
    if errors.is_empty() {
        Ok(File {
            file,
            items,
            comments,
        })
    } else {
        Err(errors)
    }
}

/// Brackets may nest at most this deep; deeper input is rejected before the recursive parser
/// sees it, so that no input can exhaust the stack.
pub const MAX_NESTING: usize = 64;

fn nesting_limit(file: FileId, text: &str) -> Option<Diagnostic> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut in_comment = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if in_comment {
            in_comment = c != '\n';
        } else if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' || c == '\n' {
                in_string = false;
            }
        } else {
            match c {
                '#' => in_comment = true,
                '"' => in_string = true,
                '(' | '[' | '{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Some(
                            Diagnostic::error(
                                Code::Syntax,
                                Span::new(file, i, i + 1),
                                format!("brackets are nested more than {MAX_NESTING} deep"),
                            )
                            .primary_label("too deep")
                            .hint("name intermediate values with `let` or bindings instead"),
                        );
                    }
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    None
}

/// The `##` lines directly above `span` with nothing but white space between them.
fn doc_comment(text: &str, comments: &[Comment], span: Span) -> Vec<String> {
    let mut doc = Vec::new();
    let mut end = span.start as usize;
    let before: Vec<&Comment> = comments
        .iter()
        .filter(|c| (c.span.end as usize) <= end)
        .collect();
    for comment in before.into_iter().rev() {
        let between = &text[comment.span.end as usize..end];
        if !between.trim().is_empty()
            || between.matches('\n').count() > 1
            || !comment.text.starts_with("##")
        {
            break;
        }
        doc.push(comment.text.trim_start_matches("##").trim().to_string());
        end = comment.span.start as usize;
    }
    doc.reverse();
    doc
}

fn children(pair: Pair<'_, Rule>) -> impl Iterator<Item = Pair<'_, Rule>> {
    pair.into_inner().filter(|p| {
        !matches!(
            p.as_rule(),
            Rule::COMMENT | Rule::kw_use | Rule::kw_fn | Rule::kw_let | Rule::kw_stage
        )
    })
}

/// What the brackets and quotes of a text say, scanned outside comments and strings: the
/// first unterminated string, closing bracket without its opener, or opener never closed.
enum Balance {
    Fine,
    UnterminatedString(usize),
    Unexpected {
        at: usize,
        opener: Option<(usize, char)>,
    },
    Unclosed(usize, char),
}

fn balance(text: &str) -> Balance {
    let mut stack: Vec<(usize, char)> = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' => {
                while chars.peek().is_some_and(|(_, c)| *c != '\n') {
                    chars.next();
                }
            }
            '"' => loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        chars.next();
                    }
                    Some((_, '"')) => break,
                    Some((_, '\n')) | None => return Balance::UnterminatedString(i),
                    Some(_) => {}
                }
            },
            '(' | '[' | '{' => stack.push((i, c)),
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                match stack.pop() {
                    Some((_, open)) if open == want => {}
                    other => {
                        return Balance::Unexpected {
                            at: i,
                            opener: other,
                        }
                    }
                }
            }
            _ => {}
        }
    }
    match stack.pop() {
        Some((i, c)) => Balance::Unclosed(i, c),
        None => Balance::Fine,
    }
}

/// Bracket depth at a position, outside comments and strings.
fn depth_at(text: &str, position: usize) -> usize {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut in_comment = false;
    for (i, c) in text.char_indices() {
        if i >= position {
            break;
        }
        match (in_comment, in_string, c) {
            (true, _, '\n') => in_comment = false,
            (true, _, _) => {}
            (_, true, '"') | (_, true, '\n') => in_string = false,
            (_, true, _) => {}
            (_, _, '#') => in_comment = true,
            (_, _, '"') => in_string = true,
            (_, _, '(' | '[' | '{') => depth += 1,
            (_, _, ')' | ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    depth
}

fn syntax_error(file: FileId, text: &str, error: pest::error::Error<Rule>) -> Diagnostic {
    // Unbalanced brackets and unterminated strings are almost always the real cause, and the
    // parser notices them only later, somewhere else: report them where they are.
    match balance(text) {
        Balance::UnterminatedString(at) => {
            return Diagnostic::error(
                Code::Syntax,
                Span::new(file, at, at + 1),
                "this string is never closed",
            )
            .primary_label("opened here")
            .hint("a string ends with `\"` on the same line");
        }
        Balance::Unexpected { at, opener } => {
            let c = &text[at..at + 1];
            let mut d = Diagnostic::error(
                Code::Syntax,
                Span::new(file, at, at + 1),
                format!("unexpected `{c}`"),
            )
            .primary_label("nothing open to close here");
            if let Some((o, open)) = opener {
                d = d
                    .label(
                        Span::new(file, o, o + 1),
                        format!("this `{open}` is still open"),
                    )
                    .primary_label("does not match");
            }
            return d;
        }
        Balance::Unclosed(at, c) => {
            let close = match c {
                '(' => ')',
                '[' => ']',
                _ => '}',
            };
            return Diagnostic::error(
                Code::Syntax,
                Span::new(file, at, at + 1),
                format!("this `{c}` is never closed"),
            )
            .primary_label(format!("needs a matching `{close}`"));
        }
        Balance::Fine => {}
    }
    let position = match error.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    // Point at the whole offending token when there is one, so the caret covers it.
    let rest = &text[position..];
    let token_len = rest
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || (!c.is_alphanumeric() && *c != '_'))
        .map(|(i, c)| if i == 0 { c.len_utf8() } else { i })
        .unwrap_or(rest.len());
    let span = Span::new(file, position, position + token_len);
    let found = if rest.is_empty() {
        "the end of the file".to_string()
    } else {
        format!("`{}`", &rest[..token_len])
    };
    let expected = match &error.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut words: Vec<&str> = positives
                .iter()
                .filter(|r| !matches!(r, Rule::COMMENT | Rule::WHITESPACE))
                .map(|r| rule_words(*r))
                .collect();
            words.sort();
            words.dedup();
            words
        }
        pest::error::ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let expected_text = match expected.len() {
        0 => "something else".to_string(),
        1 => expected[0].to_string(),
        _ => {
            let (last, first) = expected.split_last().unwrap();
            format!("{} or {}", first.join(", "), last)
        }
    };
    let mut d = if expected.is_empty() {
        Diagnostic::error(Code::Syntax, span, format!("unexpected {found}"))
            .primary_label("not expected here")
    } else {
        Diagnostic::error(
            Code::Syntax,
            span,
            format!("expected {expected_text}, found {found}"),
        )
        .primary_label(format!("expected {expected_text}"))
    };
    let depth = depth_at(text, position);
    let line_start = text[..position].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let before_line = text[..line_start].trim_end();
    if rest.starts_with('\'') {
        d = d.hint("strings are written with double quotes: \"like this\"");
    } else if rest.starts_with(';') {
        d = d.hint("kdc needs no semicolons: a binding ends where its expression ends");
    } else if rest.starts_with('=') && depth > 0 {
        d = d.hint("named arguments are written `name: value`");
    } else if rest.starts_with('=') && before_line.ends_with(['+', '-', '*', '/', '@', '|']) {
        d = d.hint(
            "the line before ends with an operator, which continues its expression onto this line",
        );
    } else if rest.starts_with(':') && depth == 0 {
        d = d.hint("bindings are written `name = value`");
    } else if rest.starts_with('×') {
        d = d.hint("multiply with `*`");
    } else if rest.starts_with("return") {
        d = d.hint("a function's result is its last expression; there is no `return`");
    } else if depth > 0
        && rest.starts_with(|c: char| c.is_alphabetic() || c == '_' || c == '"')
        && expected.contains(&"`+`")
    {
        d = d.hint("separate arguments with `,`");
    } else if rest.starts_with(',') && depth == 0 {
        d = d.hint("write large numbers with underscores, as in `10_000`");
    }
    if let Some(keyword) = ["use", "fn", "let", "stage", "true", "false"]
        .iter()
        .find(|k| {
            rest.starts_with(*k)
                && !rest[k.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
        })
    {
        if expected.contains(&"a name") || expected.contains(&"a binding `name = value`") {
            d = d.hint(format!(
                "`{keyword}` is a keyword and cannot be used as a name"
            ));
        }
    }
    d
}

struct Builder<'t> {
    file: FileId,
    text: &'t str,
    /// (end, start) of every comment, to trim trailing trivia off spans.
    comment_ends: std::collections::HashMap<usize, usize>,
    errors: RefCell<Vec<Diagnostic>>,
}

fn pratt() -> &'static PrattParser<Rule> {
    static PRATT: OnceLock<PrattParser<Rule>> = OnceLock::new();
    PRATT.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::pipe, Assoc::Left))
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left)
                | Op::infix(Rule::div, Assoc::Left)
                | Op::infix(Rule::matmul, Assoc::Left))
            .op(Op::prefix(Rule::neg))
    })
}

impl Builder<'_> {
    /// A pair's span without the white space and comments pest lets a rule swallow at its end
    /// (a repetition that skips trivia and then matches nothing), so that a binding's span
    /// ends at its last token.
    fn span(&self, pair: &Pair<'_, Rule>) -> Span {
        let s = pair.as_span();
        let mut end = s.end();
        loop {
            let trimmed = self.text[s.start()..end]
                .trim_end_matches([' ', '\t', '\r', '\n'])
                .len()
                + s.start();
            match self.comment_ends.get(&trimmed) {
                Some(&start) if start >= s.start() && pair.as_rule() != Rule::COMMENT => {
                    end = start
                }
                _ => {
                    end = trimmed;
                    break;
                }
            }
        }
        Span::new(self.file, s.start(), end)
    }

    /// The position of the first `)` at or after `from` that is not inside a comment.
    fn closing_paren(&self, from: u32) -> u32 {
        let mut at = from as usize;
        while let Some(offset) = self.text[at..].find([')', '#']) {
            let found = at + offset;
            if self.text.as_bytes()[found] == b')' {
                return found as u32;
            }
            at = found
                + self.text[found..]
                    .find('\n')
                    .unwrap_or(self.text.len() - found);
        }
        from
    }

    fn ident(&self, pair: Pair<'_, Rule>) -> Ident {
        Ident {
            name: pair.as_str().to_string(),
            span: self.span(&pair),
        }
    }

    fn item(&self, pair: Pair<'_, Rule>) -> Item {
        match pair.as_rule() {
            Rule::use_decl => Item::Use(self.use_decl(pair)),
            Rule::fn_def => Item::Fn(self.fn_def(pair)),
            Rule::stage_def => Item::Stage(self.stage(pair)),
            Rule::binding => Item::Binding(self.binding(pair)),
            Rule::test_def => Item::Test(self.test_def(pair)),
            other => unreachable!("the grammar allows no {other:?} as an item"),
        }
    }

    fn use_decl(&self, pair: Pair<'_, Rule>) -> Use {
        let span = self.span(&pair);
        let mut inner = children(pair);
        let path = children(inner.next().unwrap())
            .map(|p| self.ident(p))
            .collect();
        let names = inner
            .next()
            .map(|group| children(group).map(|p| self.ident(p)).collect());
        Use { path, names, span }
    }

    /// A block: its `let`s and its result.
    fn block(&self, pair: Pair<'_, Rule>) -> (Vec<Let>, Expr) {
        let mut lets = Vec::new();
        let mut body = None;
        for q in children(pair) {
            match q.as_rule() {
                Rule::let_stmt => {
                    let span = self.span(&q);
                    let mut parts = children(q);
                    let name = self.ident(parts.next().unwrap());
                    let value = self.expr(parts.next().unwrap());
                    lets.push(Let { name, value, span });
                }
                _ => body = Some(self.expr(q)),
            }
        }
        (lets, body.expect("a block ends in an expression"))
    }

    fn test_def(&self, pair: Pair<'_, Rule>) -> TestDef {
        let span = self.span(&pair);
        let mut inner = children(pair).filter(|p| p.as_rule() != Rule::kw_test);
        let name = self.ident(inner.next().unwrap());
        let (lets, body) = self.block(inner.next().unwrap());
        TestDef {
            name,
            lets,
            body,
            span,
        }
    }

    fn fn_def(&self, pair: Pair<'_, Rule>) -> FnDef {
        let span = self.span(&pair);
        let mut name = None;
        let mut params = Vec::new();
        let mut ret = None;
        let mut lets = Vec::new();
        let mut body = None;
        for p in children(pair) {
            match p.as_rule() {
                Rule::ident => name = Some(self.ident(p)),
                Rule::params => params = children(p).map(|q| self.param(q)).collect(),
                Rule::type_name => ret = Some(self.ident(p)),
                Rule::block => {
                    for q in children(p) {
                        match q.as_rule() {
                            Rule::let_stmt => {
                                let let_span = self.span(&q);
                                let mut parts = children(q);
                                let name = self.ident(parts.next().unwrap());
                                let value = self.expr(parts.next().unwrap());
                                lets.push(Let {
                                    name,
                                    value,
                                    span: let_span,
                                });
                            }
                            _ => body = Some(self.expr(q)),
                        }
                    }
                }
                other => unreachable!("unexpected {other:?} in fn"),
            }
        }
        let name = name.unwrap();
        let params_close =
            self.closing_paren(params.last().map(|p| p.span.end).unwrap_or(name.span.end));
        FnDef {
            name,
            params,
            params_close,
            ret,
            lets,
            body: body.unwrap(),
            doc: Vec::new(),
            span,
        }
    }

    fn param(&self, pair: Pair<'_, Rule>) -> Param {
        let span = self.span(&pair);
        let mut inner = children(pair);
        let name = self.ident(inner.next().unwrap());
        let ty = self.ident(inner.next().unwrap());
        let default = inner.next().map(|p| self.expr(p));
        Param {
            name,
            ty,
            default,
            span,
        }
    }

    fn stage(&self, pair: Pair<'_, Rule>) -> Stage {
        let span = self.span(&pair);
        let mut name = None;
        let mut args = Vec::new();
        let mut bindings = Vec::new();
        for p in children(pair) {
            match p.as_rule() {
                Rule::ident => name = Some(self.ident(p)),
                Rule::args => args = self.args(p),
                Rule::binding => bindings.push(self.binding(p)),
                other => unreachable!("unexpected {other:?} in stage"),
            }
        }
        let name = name.unwrap();
        let args_close = if args.is_empty() {
            name.span.end
        } else {
            self.closing_paren(args.last().unwrap().span.end)
        };
        Stage {
            name,
            args,
            args_close,
            bindings,
            span,
        }
    }

    fn binding(&self, pair: Pair<'_, Rule>) -> Binding {
        let span = self.span(&pair);
        let mut inner = children(pair);
        let name = self.ident(inner.next().unwrap());
        let value = self.expr(inner.next().unwrap());
        Binding { name, value, span }
    }

    fn args(&self, pair: Pair<'_, Rule>) -> Vec<Arg> {
        children(pair)
            .map(|p| {
                let span = self.span(&p);
                match p.as_rule() {
                    Rule::named_arg => {
                        let mut inner = children(p);
                        let name = self.ident(inner.next().unwrap());
                        let value = self.expr(inner.next().unwrap());
                        Arg {
                            name: Some(name),
                            value,
                            span,
                        }
                    }
                    _ => Arg {
                        name: None,
                        value: self.expr(p),
                        span,
                    },
                }
            })
            .collect()
    }

    fn expr(&self, pair: Pair<'_, Rule>) -> Expr {
        debug_assert_eq!(pair.as_rule(), Rule::expr);
        let operands: Pairs<'_, Rule> = pair.into_inner();
        pratt()
            .map_primary(|p| self.postfix_expr(p))
            .map_prefix(|op, rhs| {
                let span = self.span(&op).to(rhs.span);
                Expr {
                    kind: ExprKind::Neg(Box::new(rhs)),
                    span,
                }
            })
            .map_infix(|lhs, op, rhs| {
                let op = match op.as_rule() {
                    Rule::pipe => BinOp::Pipe,
                    Rule::add => BinOp::Add,
                    Rule::sub => BinOp::Sub,
                    Rule::mul => BinOp::Mul,
                    Rule::div => BinOp::Div,
                    Rule::matmul => BinOp::MatMul,
                    other => unreachable!("{other:?} is not an infix operator"),
                };
                let span = lhs.span.to(rhs.span);
                Expr {
                    kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                    span,
                }
            })
            .parse(operands.filter(|p| p.as_rule() != Rule::COMMENT))
    }

    fn postfix_expr(&self, pair: Pair<'_, Rule>) -> Expr {
        let mut inner = children(pair);
        let mut expr = self.primary(inner.next().unwrap());
        for postfix in inner {
            let span = expr.span.to(self.span(&postfix));
            expr = match postfix.as_rule() {
                Rule::field => {
                    let name = self.ident(children(postfix).next().unwrap());
                    Expr {
                        kind: ExprKind::Field(Box::new(expr), name),
                        span,
                    }
                }
                Rule::call => {
                    let args = children(postfix)
                        .next()
                        .map(|a| self.args(a))
                        .unwrap_or_default();
                    Expr {
                        kind: ExprKind::Call(Box::new(expr), args),
                        span,
                    }
                }
                Rule::index => {
                    let items = children(postfix)
                        .filter(|p| p.as_rule() == Rule::index_item)
                        .map(|item| {
                            let inner = children(item).next().unwrap();
                            match inner.as_rule() {
                                Rule::index_range => {
                                    let span = self.span(&inner);
                                    let text = inner.as_str();
                                    let colon = text.find(':').unwrap_or(0) as u32;
                                    let mut start = None;
                                    let mut end = None;
                                    for e in children(inner).filter(|p| p.as_rule() == Rule::expr) {
                                        let e = self.expr(e);
                                        if e.span.start < span.start + colon {
                                            start = Some(e);
                                        } else {
                                            end = Some(e);
                                        }
                                    }
                                    IndexItem::Range { start, end, span }
                                }
                                _ => IndexItem::At(self.expr(inner)),
                            }
                        })
                        .collect();
                    Expr {
                        kind: ExprKind::Index(Box::new(expr), items),
                        span,
                    }
                }
                other => unreachable!("{other:?} is not a postfix"),
            };
        }
        expr
    }

    fn primary(&self, pair: Pair<'_, Rule>) -> Expr {
        let span = self.span(&pair);
        let kind = match pair.as_rule() {
            Rule::number => {
                let text = pair.as_str().to_string();
                let value = text.replace('_', "").parse::<f64>().unwrap_or(f64::NAN);
                ExprKind::Number { value, text }
            }
            Rule::string => {
                let text = pair.as_str().to_string();
                let value = self.unescape(&text, span);
                ExprKind::Str { value, text }
            }
            Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
            Rule::ident => ExprKind::Name(pair.as_str().to_string()),
            Rule::paren => ExprKind::Paren(Box::new(self.expr(children(pair).next().unwrap()))),
            Rule::list => ExprKind::List(children(pair).map(|p| self.expr(p)).collect()),
            other => unreachable!("{other:?} is not a primary"),
        };
        Expr { kind, span }
    }

    fn unescape(&self, text: &str, span: Span) -> String {
        let inner = &text[1..text.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                Some((j, other)) => {
                    let start = span.start as usize + 1 + i;
                    let escape_span =
                        Span::new(self.file, start, start + 1 + (j - i - 1) + other.len_utf8());
                    self.errors.borrow_mut().push(
                        Diagnostic::error(
                            Code::Syntax,
                            escape_span,
                            format!("unknown escape `\\{other}` in a string"),
                        )
                        .primary_label("not one of \\n, \\t, \\\", \\\\")
                        .hint("write a backslash as `\\\\`"),
                    );
                }
                None => {}
            }
        }
        out
    }
}
