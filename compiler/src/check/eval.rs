//! Evaluation: bindings (memoised per stage, cycles reported), expressions, calls of built-ins
//! and of user functions (expanded at each call with the arguments' real shapes), and fields.

use super::builtins::{self, ParamKind, ParamSig};
use super::program::ModuleId;
use super::types::Type;
use super::value::{FuncRef, Value};
use super::{BindingKey, Checker, Ctx, Env, MAX_BINDING_DEPTH};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::ir::Op;
use crate::source::Span;
use crate::syntax::ast::{self, Expr, ExprKind};
use std::collections::HashMap;

impl Checker<'_> {
    // ----------------------------------------------------------------------------------------
    // Names and bindings.
    pub(in crate::check) fn eval_binding(
        &mut self,
        ctx: &mut Ctx,
        key: BindingKey,
        use_span: Span,
    ) -> Value {
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

    /// A string `"$root/…"` names a root of the manifest: an unknown one is an error (with the
    /// closest root), one whose folder is missing on this machine a warning (once per root).
    fn root_reference(&mut self, ctx: &mut Ctx, value: &str, text: &str, span: Span) {
        let Some((root, _)) = crate::manifest::root_reference(value) else {
            return;
        };
        // The span of `$root` inside the literal (the value starts right after the quote).
        let at = if text.starts_with("\"$") {
            let start = span.start as usize;
            Span::new(span.file, start + 1, start + 2 + root.len())
        } else {
            span
        };
        let program = self.program;
        match &program.manifest {
            Some(m) if m.roots.contains_key(root) => {
                if program.roots_present.get(root) == Some(&false)
                    && self.roots_warned.insert(root.to_string())
                {
                    let r = &m.roots[root];
                    let source = match &r.from_env {
                        Some(var) => format!("{var} sets it to `{}`", r.written),
                        None => format!("{} sets it to `{}`", m.file.display(), r.written),
                    };
                    self.diags.push(
                        Diagnostic::warning(
                            Code::MissingRoot,
                            at,
                            format!(
                                "root `{root}` is {}, which does not exist",
                                r.path.display()
                            ),
                        )
                        .primary_label("missing on this machine")
                        .note(source)
                        .hint(format!(
                            "create or fetch it, or point the root elsewhere with {}=/path",
                            crate::manifest::env_var(root)
                        )),
                    );
                }
            }
            Some(m) => {
                let d = crate::manifest::unknown_root(root, at, &m.roots, Some(&m.file));
                self.error(ctx, d);
            }
            // A manifest that did not parse has had its errors reported; roots are unknown.
            None if program.manifest_file.is_some() => {}
            None => {
                let d = crate::manifest::unknown_root(root, at, &Default::default(), None);
                self.error(ctx, d);
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Expressions.
    pub(in crate::check) fn eval(&mut self, ctx: &mut Ctx, env: &Env, expr: &Expr) -> Value {
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
            ExprKind::Str { value, text } => {
                self.root_reference(ctx, value, text, expr.span);
                Value::Str(value.clone())
            }
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
            ExprKind::Index(base, items) => {
                let value = self.eval(ctx, env, base);
                let mut evaluated = Vec::new();
                for item in items {
                    let mut position =
                        |e: &Option<&crate::syntax::ast::Expr>| -> Result<Option<i64>, ()> {
                            let Some(e) = e else { return Ok(None) };
                            match self.eval(ctx, env, e) {
                                Value::Num(v) if v.fract() == 0.0 && v.abs() <= 1e9 => {
                                    Ok(Some(v as i64))
                                }
                                Value::Dim(d, _) if d.size.is_some() => {
                                    Ok(Some(d.size.unwrap() as i64))
                                }
                                Value::Error => Err(()),
                                other => {
                                    let d = Diagnostic::error(
                                        Code::BadIndex,
                                        e.span,
                                        format!(
                                            "an index is a whole number, not {}",
                                            match other {
                                                Value::Num(v) => crate::fmt_num(v),
                                                o => o.kind().to_string(),
                                            }
                                        ),
                                    )
                                    .primary_label("not a position");
                                    self.error(ctx, d);
                                    Err(())
                                }
                            }
                        };
                    let item = match item {
                        crate::syntax::ast::IndexItem::At(e) => {
                            position(&Some(e)).map(|p| builtins::IndexItem::At(p.unwrap(), e.span))
                        }
                        crate::syntax::ast::IndexItem::Range { start, end, span } => {
                            match (position(&start.as_ref()), position(&end.as_ref())) {
                                (Ok(a), Ok(b)) => Ok(builtins::IndexItem::Range(a, b, *span)),
                                _ => Err(()),
                            }
                        }
                    };
                    match item {
                        Ok(i) => evaluated.push(i),
                        Err(()) => return Value::Error,
                    }
                }
                match value {
                    Value::Error => Value::Error,
                    Value::Tensor(n, s) => self.index(ctx, (n, s), evaluated, expr.span),
                    other => {
                        let d = Diagnostic::error(
                            Code::TypeMismatch,
                            base.span,
                            format!("only a tensor can be indexed, not {}", other.kind()),
                        )
                        .primary_label(format!("this is {}", other.kind()));
                        self.error(ctx, d);
                        Value::Error
                    }
                }
            }
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

    pub(in crate::check) fn eval_call(
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

    pub(in crate::check) fn call(
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
    pub(in crate::check) fn call_user(
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
        let sig: Vec<ParamSig> = def
            .params
            .iter()
            .map(|p| ParamSig {
                name: &p.name.name,
                kind: if p.default.is_none() {
                    ParamKind::Required
                } else {
                    ParamKind::Optional
                },
                default: None,
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
                    // Evaluated in the function's module, seeing the parameters before it.
                    let env = Env {
                        module,
                        stage: None,
                        locals: locals.clone(),
                    };
                    (self.eval(ctx, &env, default), default.span)
                }
            };
            // An unknown type name was reported once, where the function is defined.
            let coerced = Type::parse(&p.ty.name)
                .and_then(|ty| self.coerce(ctx, value, ty, vspan, &p.name.name, shown));
            match coerced {
                Some(v) => {
                    locals.insert(p.name.name.clone(), v);
                }
                None => {
                    // Later defaults that read it stay quiet: the error is reported.
                    locals.insert(p.name.name.clone(), Value::Error);
                    bad = true
                }
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
            let declared = Type::parse(&ret.name);
            if !declared.is_some_and(|t| t.accepts(&result)) && !result.is_error() {
                self.error(
                    ctx,
                    Diagnostic::error(
                        Code::BadReturnType,
                        def.body.span,
                        format!(
                            "`{fname}` should give {} but gives {}",
                            declared
                                .map(|t| t.words().to_string())
                                .unwrap_or_else(|| format!("`{}`", ret.name)),
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

    pub(in crate::check) fn field(
        &mut self,
        ctx: &mut Ctx,
        value: Value,
        base_span: Span,
        field: &ast::Ident,
    ) -> Value {
        let span = base_span.to(field.span);
        match value {
            Value::Error => Value::Error,
            Value::Model { id, mask } => self.model_field(ctx, id, mask, field, span),
            Value::Tensor(node, shape) => match field.name.as_str() {
                "T" => self.transpose_node(ctx, node, shape, span),
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

    pub(in crate::check) fn unknown_field(
        &mut self,
        ctx: &Ctx,
        field: &ast::Ident,
        what: &str,
        fields: &[&str],
    ) {
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
}
