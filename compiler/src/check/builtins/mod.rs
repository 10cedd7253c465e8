//! Built-in functions and constants: the language's primitives. Each built-in is declared once,
//! in [`BUILTINS`]: its name, its typed parameters (required, optional with or without a
//! default, or a flag such as `frozen`), the function that checks a call and makes its value,
//! and a one-line summary for `kdc explain NAME`. The functions live with their family:
//! models and towers, data and evaluation, training and schedules, tensors, losses.

mod args;
mod data;
mod literals;
mod losses;
mod models;
mod select;
mod table;
mod tensors;
mod towers;
mod training;

pub(in crate::check) use select::IndexItem;
pub use table::{Builtin, Default, ParamKind, ParamSig, BUILTINS};

use super::value::Value;
use super::{Checker, Ctx, Env};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::source::Span;
use crate::syntax::ast::{self, ExprKind};
use std::cell::Cell;

/// The built-in called `name`.
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}
/// The largest size, count or step number a recipe may give: far beyond any real model or
/// run, and small enough that products of sizes cannot overflow.
const MAX_COUNT: f64 = 1e9;

/// Built-in constants.
pub const CONSTANTS: &[&str] = &[
    "quick_gelu",
    "gelu",
    "diagonal",
    "fp32",
    "bf16",
    "fp16",
    "weights",
    "embeddings",
    "gains",
    "biases",
    "scales",
];

/// Arguments matched to parameters.
pub struct Bound {
    pub names: Vec<String>,
    /// Per parameter: the default used when the argument is absent.
    pub defaults: Vec<Option<Default>>,
    pub values: Vec<Option<(Value, Span)>>,
    pub call_span: Span,
    pub callee: String,
    /// Set when an argument was present but wrong; the caller then yields `Value::Error`.
    pub bad: Cell<bool>,
}

impl Bound {
    /// The argument, or the parameter's default (placed at the call) when it has one.
    pub fn get(&self, name: &str) -> Option<(Value, Span)> {
        let i = self.names.iter().position(|n| n == name)?;
        match &self.values[i] {
            Some(v) => Some(v.clone()),
            None => self.defaults[i].map(|d| (d.value(self.call_span), self.call_span)),
        }
    }

    /// Whether the call gives this argument itself.
    pub fn has(&self, name: &str) -> bool {
        let i = self.names.iter().position(|n| n == name);
        i.is_some_and(|i| self.values[i].is_some())
    }

    pub fn span(&self, name: &str) -> Span {
        self.get(name).map(|(_, s)| s).unwrap_or(self.call_span)
    }
}

/// `name(params): doc` for a built-in function, for `kdc explain NAME`.
pub fn describe(name: &str) -> Option<String> {
    let b = find(name)?;
    let params: Vec<String> = b
        .params
        .iter()
        .map(|p| match (p.kind, p.default) {
            (ParamKind::Required, _) => p.name.to_string(),
            (ParamKind::Flag, _) => format!("{}!", p.name),
            (ParamKind::Optional, None) => format!("{}?", p.name),
            (ParamKind::Optional, Some(d)) => format!("{}? = {}", p.name, d.written()),
        })
        .collect();
    Some(format!(
        "{}({})  [built-in]\n\n{}",
        b.name,
        params.join(", "),
        b.doc
    ))
}

/// The flag parameters of a built-in (`frozen`), which may appear as bare names.
pub fn flag_names(name: &str) -> Vec<&'static str> {
    find(name)
        .map(|b| {
            b.params
                .iter()
                .filter(|p| p.kind == ParamKind::Flag)
                .map(|p| p.name)
                .collect()
        })
        .unwrap_or_default()
}

impl Checker<'_> {
    // ----------------------------------------------------------------------------------------
    pub(in crate::check) fn call_builtin(
        &mut self,
        ctx: &mut Ctx,
        env: &Env,
        name: &'static str,
        args: &[ast::Arg],
        span: Span,
    ) -> Value {
        let builtin = find(name).expect("known builtin");
        let Some(b) = self.bind_args(ctx, env, name, builtin.params, args, span) else {
            return Value::Error;
        };
        // Any argument that is already an error makes the call an error, silently.
        if b.values.iter().flatten().any(|(v, _)| v.is_error()) {
            return Value::Error;
        }
        let value = (builtin.run)(self, ctx, &b, span);
        if b.bad.get() {
            Value::Error
        } else {
            value
        }
    }

    pub(in crate::check) fn bind_args(
        &mut self,
        ctx: &mut Ctx,
        env: &Env,
        callee: &str,
        sig: &[ParamSig<'_>],
        args: &[ast::Arg],
        call_span: Span,
    ) -> Option<Bound> {
        let mut values: Vec<Option<(Value, Span)>> = vec![None; sig.len()];
        let mut ok = true;
        let mut next_positional = 0;
        let mut suggested: Vec<&str> = Vec::new();
        let param_list = || {
            sig.iter()
                .map(|p| format!("`{}`", p.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for arg in args {
            let index = match &arg.name {
                Some(name) => match sig.iter().position(|p| p.name == name.name) {
                    Some(i) => i,
                    None => {
                        let mut d = Diagnostic::error(
                            Code::UnknownArgument,
                            name.span,
                            format!("`{callee}` has no parameter `{}`", name.name),
                        )
                        .primary_label("unknown argument")
                        .note(format!(
                            "`{callee}` takes {}",
                            if sig.is_empty() {
                                "no arguments".to_string()
                            } else {
                                param_list()
                            }
                        ));
                        if let Some(s) =
                            crate::suggest::closest(&name.name, sig.iter().map(|p| p.name))
                        {
                            d = d.hint(format!("did you mean `{s}`?"));
                            suggested.push(s);
                        }
                        self.error(ctx, d);
                        self.eval(ctx, env, &arg.value);
                        ok = false;
                        continue;
                    }
                },
                None => {
                    // A bare flag name: `frozen` alone means `frozen: true`.
                    if let ExprKind::Name(n) = &arg.value.kind {
                        if let Some(i) = sig
                            .iter()
                            .position(|p| p.kind == ParamKind::Flag && p.name == n)
                        {
                            if !self.name_defined(env, n) {
                                if values[i].is_some() {
                                    self.duplicate_arg(ctx, callee, sig[i].name, arg.span);
                                    ok = false;
                                } else {
                                    values[i] = Some((Value::Bool(true), arg.span));
                                }
                                continue;
                            }
                        }
                    }
                    while next_positional < sig.len()
                        && sig[next_positional].kind == ParamKind::Flag
                    {
                        next_positional += 1;
                    }
                    if next_positional >= sig.len() {
                        let count = sig.iter().filter(|p| p.kind != ParamKind::Flag).count();
                        self.error(
                            ctx,
                            Diagnostic::error(
                                Code::TooManyArguments,
                                arg.span,
                                format!(
                                    "`{callee}` takes at most {count} positional argument{}",
                                    if count == 1 { "" } else { "s" }
                                ),
                            )
                            .primary_label("one too many")
                            .note(format!("`{callee}` takes {}", param_list())),
                        );
                        self.eval(ctx, env, &arg.value);
                        ok = false;
                        continue;
                    }
                    next_positional += 1;
                    next_positional - 1
                }
            };
            if values[index].is_some() {
                self.duplicate_arg(ctx, callee, sig[index].name, arg.span);
                self.eval(ctx, env, &arg.value);
                ok = false;
                continue;
            }
            let v = self.eval(ctx, env, &arg.value);
            values[index] = Some((v, arg.value.span));
        }
        // A required parameter that an unknown argument was suggested for is not reported
        // missing too: the suggestion already says what to write.
        let missing: Vec<&str> = sig
            .iter()
            .zip(&values)
            .filter(|(p, v)| {
                p.kind == ParamKind::Required && v.is_none() && !suggested.contains(&p.name)
            })
            .map(|(p, _)| p.name)
            .collect();
        if !missing.is_empty() {
            let list = missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ");
            self.error(
                ctx,
                Diagnostic::error(
                    Code::MissingArgument,
                    call_span,
                    format!("`{callee}` is missing {list}"),
                )
                .primary_label(format!("needs {list}"))
                .note(format!("`{callee}` takes {}", param_list())),
            );
            ok = false;
        }
        ok.then(|| Bound {
            names: sig.iter().map(|p| p.name.to_string()).collect(),
            defaults: sig.iter().map(|p| p.default).collect(),
            values,
            call_span,
            callee: callee.to_string(),
            bad: Cell::new(false),
        })
    }

    pub(in crate::check) fn duplicate_arg(
        &mut self,
        ctx: &Ctx,
        callee: &str,
        name: &str,
        span: Span,
    ) {
        self.error(
            ctx,
            Diagnostic::error(
                Code::DuplicateArgument,
                span,
                format!("`{name}` is given twice to `{callee}`"),
            )
            .primary_label("given again here"),
        );
    }
}
