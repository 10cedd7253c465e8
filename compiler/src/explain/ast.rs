//! The syntax tree of a recipe, one node per line with its place (`--stage ast`).

use crate::fmt_num;
use crate::source::SourceMap;
use crate::syntax::ast::*;
use std::fmt::Write;

/// The syntax tree, one node per line, with each node's line:column.
pub fn ast(file: &File, sources: &SourceMap) -> String {
    let mut out = String::new();
    let at = |span: crate::source::Span| {
        let l = sources.location(span);
        format!("@{}:{}", l.line, l.col)
    };
    let _ = writeln!(out, "file {}", sources.get(file.file).name);
    for item in &file.items {
        match item {
            Item::Use(u) => {
                let path: Vec<&str> = u.path.iter().map(|i| i.name.as_str()).collect();
                let names = u
                    .names
                    .as_ref()
                    .map(|n| {
                        format!(
                            ".{{{}}}",
                            n.iter()
                                .map(|i| i.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
                    .unwrap_or_default();
                let _ = writeln!(out, "  use {}{} {}", path.join("."), names, at(u.span));
            }
            Item::Test(t) => {
                let _ = writeln!(out, "  test {} {}", t.name.name, at(t.span));
                for l in &t.lets {
                    let _ = writeln!(out, "    let {} {}", l.name.name, at(l.span));
                    expr(&mut out, &l.value, 3, sources);
                }
                expr(&mut out, &t.body, 2, sources);
            }
            Item::Fn(f) => {
                let params: Vec<String> = f
                    .params
                    .iter()
                    .map(|p| {
                        format!(
                            "{}: {}{}",
                            p.name.name,
                            p.ty.name,
                            if p.default.is_some() { " = …" } else { "" }
                        )
                    })
                    .collect();
                let ret = f
                    .ret
                    .as_ref()
                    .map(|r| format!(" -> {}", r.name))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  fn {}({}){} {}",
                    f.name.name,
                    params.join(", "),
                    ret,
                    at(f.span)
                );
                for line in &f.doc {
                    let _ = writeln!(out, "    doc {line}");
                }
                for p in &f.params {
                    if let Some(d) = &p.default {
                        let _ = writeln!(out, "    default {}", p.name.name);
                        expr(&mut out, d, 3, sources);
                    }
                }
                for l in &f.lets {
                    let _ = writeln!(out, "    let {} {}", l.name.name, at(l.span));
                    expr(&mut out, &l.value, 3, sources);
                }
                let _ = writeln!(out, "    result");
                expr(&mut out, &f.body, 3, sources);
            }
            Item::Stage(s) => {
                let _ = writeln!(out, "  stage {} {}", s.name.name, at(s.span));
                for a in &s.args {
                    arg(&mut out, a, 2, sources);
                }
                for b in &s.bindings {
                    let _ = writeln!(out, "    binding {} {}", b.name.name, at(b.span));
                    expr(&mut out, &b.value, 3, sources);
                }
            }
            Item::Binding(b) => {
                let _ = writeln!(out, "  binding {} {}", b.name.name, at(b.span));
                expr(&mut out, &b.value, 2, sources);
            }
        }
    }
    let _ = writeln!(out, "  comments {}", file.comments.len());
    out
}

fn arg(out: &mut String, a: &Arg, depth: usize, sources: &SourceMap) {
    let pad = "  ".repeat(depth);
    match &a.name {
        Some(n) => {
            let _ = writeln!(out, "{pad}arg {}:", n.name);
        }
        None => {
            let _ = writeln!(out, "{pad}arg");
        }
    }
    expr(out, &a.value, depth + 1, sources);
}

fn expr(out: &mut String, e: &Expr, depth: usize, sources: &SourceMap) {
    let pad = "  ".repeat(depth);
    match &e.kind {
        ExprKind::Number { text, value } => {
            let _ = writeln!(out, "{pad}number {text} = {}", fmt_num(*value));
        }
        ExprKind::Str { text, .. } => {
            let _ = writeln!(out, "{pad}string {text}");
        }
        ExprKind::Bool(b) => {
            let _ = writeln!(out, "{pad}bool {b}");
        }
        ExprKind::Name(n) => {
            let _ = writeln!(out, "{pad}name {n}");
        }
        ExprKind::List(items) => {
            let _ = writeln!(out, "{pad}list");
            for i in items {
                expr(out, i, depth + 1, sources);
            }
        }
        ExprKind::Paren(inner) => {
            let _ = writeln!(out, "{pad}paren");
            expr(out, inner, depth + 1, sources);
        }
        ExprKind::Field(base, f) => {
            let _ = writeln!(out, "{pad}field .{}", f.name);
            expr(out, base, depth + 1, sources);
        }
        ExprKind::Index(base, items) => {
            let _ = writeln!(out, "{pad}index");
            expr(out, base, depth + 1, sources);
            for item in items {
                match item {
                    crate::syntax::ast::IndexItem::At(e) => expr(out, e, depth + 1, sources),
                    crate::syntax::ast::IndexItem::Range { start, end, .. } => {
                        let _ = writeln!(out, "{pad}  range");
                        for e in start.iter().chain(end.iter()) {
                            expr(out, e, depth + 2, sources);
                        }
                    }
                }
            }
        }
        ExprKind::Call(callee, args) => {
            let _ = writeln!(out, "{pad}call");
            expr(out, callee, depth + 1, sources);
            for a in args {
                arg(out, a, depth + 1, sources);
            }
        }
        ExprKind::Binary(op, l, r) => {
            let _ = writeln!(out, "{pad}binary {}", op.symbol());
            expr(out, l, depth + 1, sources);
            expr(out, r, depth + 1, sources);
        }
        ExprKind::Neg(inner) => {
            let _ = writeln!(out, "{pad}neg");
            expr(out, inner, depth + 1, sources);
        }
    }
}
