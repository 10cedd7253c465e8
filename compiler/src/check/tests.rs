//! `test` blocks, for `kdc test`: each is evaluated like a function body in its module, and
//! its expectations come back with the graph that computes them.

use super::value::Value;
use super::{Checker, Ctx, Env};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::ir::{self, NodeId};
use crate::source::Span;
use crate::syntax::ast;
use std::collections::HashMap;

/// One `test` block, checked.
pub struct TestCase {
    pub name: String,
    pub span: Span,
    /// The nodes its expectations read (literal tensors, functions of them).
    pub graph: ir::Graph,
    pub checks: Vec<Check>,
    /// The block uses something a test cannot run: a model, a learnable part, a schedule.
    pub unsupported: Option<String>,
}

/// `expect(actual, expected, tol)`.
pub struct Check {
    pub actual: NodeId,
    pub expected: NodeId,
    pub tol: f64,
    pub span: Span,
}

impl Checker<'_> {
    /// The `test` blocks of the root module, checked (an erroneous block is left out; its
    /// errors are in the diagnostics). Names are resolved already, with the recipe's.
    pub(in crate::check) fn test_cases(&mut self) -> Vec<TestCase> {
        let mut out = Vec::new();
        let program = self.program;
        for item in &program.root().ast.items {
            let ast::Item::Test(t) = item else { continue };
            let before = self.diags.error_count();
            let mut ctx = Ctx::default();
            let mut env = Env {
                module: 0,
                stage: None,
                locals: HashMap::new(),
            };
            for l in &t.lets {
                let v = self.eval(&mut ctx, &env, &l.value);
                env.locals.insert(l.name.name.clone(), v);
            }
            let value = self.eval(&mut ctx, &env, &t.body);
            let items = match value {
                Value::List(items) => items,
                other => vec![(other, t.body.span)],
            };
            let mut checks = Vec::new();
            for (v, span) in items {
                match v {
                    Value::Expect(e) => checks.push(Check {
                        actual: e.actual,
                        expected: e.expected,
                        tol: e.tol,
                        span: e.span,
                    }),
                    Value::Error => {}
                    other => self.diags.push(
                        Diagnostic::error(
                            Code::TypeMismatch,
                            span,
                            format!(
                                "a test ends in `expect(…)` or a list of them, not {}",
                                other.kind()
                            ),
                        )
                        .primary_label(format!("this is {}", other.kind()))
                        .hint("for example `expect(f(x), tensor([1, 2]))`"),
                    ),
                }
            }
            if self.diags.error_count() > before || checks.is_empty() {
                continue;
            }
            let unsupported = ctx.graph.nodes.iter().find_map(|n| match &n.op {
                ir::Op::Tap { .. } => Some("a model's output".to_string()),
                ir::Op::Param(_) => {
                    Some("a learnable part (`linear`, `proj`, `param`)".to_string())
                }
                ir::Op::Scheduled(_) => Some("a schedule".to_string()),
                _ => None,
            });
            out.push(TestCase {
                name: t.name.name.clone(),
                span: t.span,
                graph: std::mem::take(&mut ctx.graph),
                checks,
                unsupported,
            });
        }
        out
    }
}
