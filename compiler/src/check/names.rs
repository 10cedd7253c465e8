//! Name resolution: every name in every function body resolved up front, lookups through
//! locals, stage bindings, module bindings, functions, imports, constants and built-ins, and
//! "unknown name" diagnostics with suggestions.

use super::builtins;
use super::program::{ModuleId, STD_MODULES};
use super::types::Type;
use super::value::{FuncRef, Value};
use super::{BindingKey, Checker, Ctx, Env};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::source::Span;
use crate::syntax::ast::{self, Expr, ExprKind};
use std::collections::HashMap;

impl Checker<'_> {
    /// Unknown type names in `fn` signatures, and duplicate parameters.
    pub(in crate::check) fn check_fn_signatures(&mut self) {
        for module in &self.program.modules {
            for item in &module.ast.items {
                let ast::Item::Fn(f) = item else { continue };
                let mut seen: HashMap<&str, Span> = HashMap::new();
                for p in &f.params {
                    if let Some(previous) = seen.get(p.name.name.as_str()) {
                        self.diags.push(
                            Diagnostic::error(
                                Code::DuplicateDefinition,
                                p.name.span,
                                format!("parameter `{}` is declared twice", p.name.name),
                            )
                            .primary_label("declared again here")
                            .label(*previous, "first declared here"),
                        );
                    }
                    seen.insert(&p.name.name, p.name.span);
                    self.check_type_name(&p.ty);
                }
                if let Some(ret) = &f.ret {
                    self.check_type_name(ret);
                }
                let mut lets: HashMap<&str, Span> = HashMap::new();
                for l in &f.lets {
                    if let Some(previous) = lets
                        .get(l.name.name.as_str())
                        .or_else(|| seen.get(l.name.name.as_str()))
                    {
                        self.diags.push(
                            Diagnostic::error(
                                Code::DuplicateDefinition,
                                l.name.span,
                                format!("`{}` is defined twice in `{}`", l.name.name, f.name.name),
                            )
                            .primary_label("defined again here")
                            .label(*previous, "first defined here"),
                        );
                    }
                    lets.insert(&l.name.name, l.name.span);
                }
            }
        }
    }

    /// Every name in every function body is resolved once, whether or not the function is
    /// called. (Shapes are checked at each call, with the arguments' real shapes.)
    pub(in crate::check) fn resolve_fn_bodies(&mut self) {
        for (module_id, module) in self.program.modules.iter().enumerate() {
            for item in &module.ast.items {
                if let ast::Item::Test(t) = item {
                    let mut locals: Vec<String> = Vec::new();
                    for l in &t.lets {
                        self.resolve_expr(module_id, &locals, &l.value);
                        locals.push(l.name.name.clone());
                    }
                    self.resolve_expr(module_id, &locals, &t.body);
                    continue;
                }
                let ast::Item::Fn(f) = item else { continue };
                // A default sees the parameters before it (`tau2: Num = tau * tau`).
                let mut locals: Vec<String> = Vec::new();
                for p in &f.params {
                    if let Some(default) = &p.default {
                        self.resolve_expr(module_id, &locals, default);
                    }
                    locals.push(p.name.name.clone());
                }
                for l in &f.lets {
                    self.resolve_expr(module_id, &locals, &l.value);
                    locals.push(l.name.name.clone());
                }
                self.resolve_expr(module_id, &locals, &f.body);
            }
        }
    }

    pub(in crate::check) fn module_defines(&self, module: ModuleId, name: &str) -> bool {
        let m = &self.program.modules[module];
        m.bindings.contains_key(name)
            || m.fns.contains_key(name)
            || m.imports.contains_key(name)
            || m.failed_imports.contains(name)
            || builtins::CONSTANTS.contains(&name)
            || builtins::BUILTINS.iter().any(|b| b.name == name)
    }

    /// Reports `name` if neither a local nor anything of the module defines it.
    fn resolve_name(
        &mut self,
        module: ModuleId,
        locals: &[String],
        name: &str,
        span: Span,
        as_function: bool,
    ) {
        if !locals.iter().any(|l| l == name) && !self.module_defines(module, name) {
            let env = Env {
                module,
                stage: None,
                locals: locals.iter().map(|l| (l.clone(), Value::Error)).collect(),
            };
            self.unknown_name(&Ctx::default(), &env, name, span, as_function);
        }
    }

    pub(in crate::check) fn resolve_expr(&mut self, module: ModuleId, locals: &[String], e: &Expr) {
        match &e.kind {
            ExprKind::Name(n) => self.resolve_name(module, locals, n, e.span, false),
            ExprKind::Call(callee, args) => {
                let flags: Vec<&str> = match &callee.kind {
                    ExprKind::Name(n) => {
                        self.resolve_name(module, locals, n, callee.span, true);
                        builtins::flag_names(n)
                    }
                    _ => {
                        self.resolve_expr(module, locals, callee);
                        Vec::new()
                    }
                };
                for a in args {
                    let bare_flag = matches!(&a.value.kind, ExprKind::Name(n) if a.name.is_none() && flags.contains(&n.as_str()));
                    if !bare_flag {
                        self.resolve_expr(module, locals, &a.value);
                    }
                }
            }
            ExprKind::Field(base, _) | ExprKind::Paren(base) | ExprKind::Neg(base) => {
                self.resolve_expr(module, locals, base)
            }
            ExprKind::List(items) => items
                .iter()
                .for_each(|i| self.resolve_expr(module, locals, i)),
            ExprKind::Index(base, items) => {
                self.resolve_expr(module, locals, base);
                for item in items {
                    for e in item.exprs() {
                        self.resolve_expr(module, locals, e);
                    }
                }
            }
            ExprKind::Binary(_, l, r) => {
                self.resolve_expr(module, locals, l);
                self.resolve_expr(module, locals, r);
            }
            ExprKind::Number { .. } | ExprKind::Str { .. } | ExprKind::Bool(_) => {}
        }
    }

    pub(in crate::check) fn check_type_name(&mut self, ty: &ast::Ident) {
        if Type::parse(&ty.name).is_none() {
            let names = Type::ALL.map(Type::name);
            let mut d = Diagnostic::error(
                Code::UnknownName,
                ty.span,
                format!("there is no type `{}`", ty.name),
            )
            .primary_label("unknown type")
            .note(format!("types are {}", names.join(", ")));
            if let Some(s) = crate::suggest::closest(&ty.name, names.iter().copied()) {
                d = d.hint(format!("did you mean `{s}`?"));
            }
            self.diags.push(d);
        }
    }

    pub(in crate::check) fn lookup(
        &mut self,
        ctx: &mut Ctx,
        env: &Env,
        name: &str,
        span: Span,
    ) -> Option<Value> {
        if let Some(v) = env.locals.get(name) {
            return Some(v.clone());
        }
        if env.module == 0 {
            if let Some((key, _)) = self.stage_binding(env.stage, name) {
                match key.stage_scope {
                    None => self.used.insert((0, name.to_string())),
                    Some(i) => self.used_stage.insert((i, name.to_string())),
                };
                return Some(self.eval_binding(ctx, key, span));
            }
        }
        let module = &self.program.modules[env.module];
        if module.bindings.contains_key(name) {
            self.used.insert((env.module, name.to_string()));
            let key = BindingKey {
                stage_scope: None,
                module: env.module,
                name: name.to_string(),
            };
            return Some(self.eval_binding(ctx, key, span));
        }
        if module.fns.contains_key(name) {
            return Some(Value::Func(FuncRef::User(env.module, name.to_string())));
        }
        if let Some((target, item, _)) = module.imports.get(name).cloned() {
            if self.program.modules[target].fns.contains_key(&item) {
                return Some(Value::Func(FuncRef::User(target, item)));
            }
            let key = BindingKey {
                stage_scope: None,
                module: target,
                name: item,
            };
            return Some(self.eval_binding(ctx, key, span));
        }
        if module.failed_imports.contains(name) {
            return Some(Value::Error);
        }
        if let Some(constant) = builtins::CONSTANTS.iter().find(|c| **c == name) {
            return Some(Value::Enum(constant));
        }
        if let Some(b) = builtins::BUILTINS.iter().find(|b| b.name == name) {
            return Some(Value::Func(FuncRef::Builtin(b.name)));
        }
        None
    }

    /// Every name visible from `env`, for suggestions.
    pub(in crate::check) fn visible_names(&self, env: &Env) -> Vec<String> {
        let mut names: Vec<String> = env.locals.keys().cloned().collect();
        let module = &self.program.modules[env.module];
        names.extend(module.bindings.keys().cloned());
        names.extend(module.fns.keys().cloned());
        names.extend(module.imports.keys().cloned());
        if env.module == 0 {
            if let Some(i) = env.stage {
                names.extend(
                    self.program
                        .root()
                        .stages()
                        .nth(i)
                        .unwrap()
                        .bindings
                        .iter()
                        .map(|b| b.name.name.clone()),
                );
            }
        }
        names.extend(builtins::CONSTANTS.iter().map(|c| c.to_string()));
        names.extend(builtins::BUILTINS.iter().map(|b| b.name.to_string()));
        names
    }

    pub(in crate::check) fn unknown_name(
        &mut self,
        ctx: &Ctx,
        env: &Env,
        name: &str,
        span: Span,
        as_function: bool,
    ) {
        // Names inside function bodies were all resolved once, up front.
        if !ctx.calls.is_empty() {
            return;
        }
        let names = self.visible_names(env);
        let (code, what) = if as_function {
            (Code::UnknownFunction, "function")
        } else {
            (Code::UnknownName, "name")
        };
        let mut d = Diagnostic::error(code, span, format!("unknown {what} `{name}`"))
            .primary_label(format!("no {what} `{name}` here"));
        if let Some(s) = crate::suggest::closest(name, names.iter().map(String::as_str)) {
            d = d.hint(format!("did you mean `{s}`?"));
        } else if let Some(module) = self.std_module_defining(name) {
            d = d.hint(format!(
                "`{name}` is in the standard library: add `use {module}.{name}`"
            ));
        }
        self.error(ctx, d);
    }

    pub(in crate::check) fn std_module_defining(&self, name: &str) -> Option<String> {
        STD_MODULES
            .iter()
            .filter(|(module, _)| *module != "prelude")
            .find_map(|(module, text)| {
                let needle = format!("fn {name}(");
                text.contains(&needle).then(|| format!("std.{module}"))
            })
    }

    /// Whether `name` is bound in scope (so that a bare flag name is not mistaken for it).
    pub(in crate::check) fn name_defined(&self, env: &Env, name: &str) -> bool {
        let module = &self.program.modules[env.module];
        env.locals.contains_key(name)
            || module.bindings.contains_key(name)
            || module.fns.contains_key(name)
            || module.imports.contains_key(name)
            || (env.module == 0 && self.stage_binding(env.stage, name).is_some())
    }
}
