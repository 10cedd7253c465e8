//! The types a function parameter or result may declare, and the conversions between values
//! that a declared type allows (a number is a scalar; a known dimension is a number).

use super::value::Value;
use super::{Checker, Ctx};
use crate::codes::Code;
use crate::diag::Diagnostic;
use crate::source::Span;

/// A declared type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Clip,
    Tensor,
    Scalar,
    Num,
    Int,
    Dim,
    Str,
    Bool,
    Schedule,
    List,
}

impl Type {
    pub const ALL: [Type; 10] = [
        Type::Clip,
        Type::Tensor,
        Type::Scalar,
        Type::Num,
        Type::Int,
        Type::Dim,
        Type::Str,
        Type::Bool,
        Type::Schedule,
        Type::List,
    ];

    /// The type a recipe names, if there is one.
    pub fn parse(name: &str) -> Option<Type> {
        Type::ALL.into_iter().find(|t| t.name() == name)
    }

    /// How a recipe writes it.
    pub fn name(self) -> &'static str {
        match self {
            Type::Clip => "Clip",
            Type::Tensor => "Tensor",
            Type::Scalar => "Scalar",
            Type::Num => "Num",
            Type::Int => "Int",
            Type::Dim => "Dim",
            Type::Str => "Str",
            Type::Bool => "Bool",
            Type::Schedule => "Schedule",
            Type::List => "List",
        }
    }

    /// How messages say it: "a whole number".
    pub fn words(self) -> &'static str {
        match self {
            Type::Clip => "a model",
            Type::Tensor => "a tensor",
            Type::Scalar => "a scalar",
            Type::Num => "a number",
            Type::Int => "a whole number",
            Type::Dim => "a dimension",
            Type::Str => "a string",
            Type::Bool => "a boolean",
            Type::Schedule => "a schedule",
            Type::List => "a list",
        }
    }

    /// Whether a value fits this type (an erroneous value fits everything, silently).
    pub fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Error) => true,
            (Type::Clip, Value::Model { .. }) => true,
            (Type::Tensor, Value::Tensor(..) | Value::Num(_) | Value::Schedule(_)) => true,
            (Type::Tensor, Value::Dim(..)) => true,
            (Type::Scalar, Value::Tensor(_, s)) => s.is_scalar(),
            (Type::Scalar, Value::Num(_) | Value::Dim(..) | Value::Schedule(_)) => true,
            (Type::Num, Value::Num(_)) => true,
            (Type::Num, Value::Dim(d, _)) => d.size.is_some(),
            (Type::Int, Value::Num(v)) => v.fract() == 0.0,
            (Type::Int, Value::Dim(d, _)) => d.size.is_some(),
            (Type::Dim, Value::Dim(..)) => true,
            (Type::Dim, Value::Num(v)) => v.fract() == 0.0 && *v >= 1.0,
            (Type::Str, Value::Str(_)) => true,
            (Type::Bool, Value::Bool(_)) => true,
            (Type::Schedule, Value::Schedule(_) | Value::Num(_)) => true,
            (Type::List, Value::List(_)) => true,
            _ => false,
        }
    }
}

impl Checker<'_> {
    /// Checks that a value fits a declared parameter type, converting where the language
    /// allows (a number, dimension or schedule passed as a tensor becomes a scalar tensor).
    pub(in crate::check) fn coerce(
        &mut self,
        ctx: &mut Ctx,
        value: Value,
        ty: Type,
        span: Span,
        param: &str,
        callee: &str,
    ) -> Option<Value> {
        if value.is_error() {
            return None;
        }
        if ty.accepts(&value) {
            if matches!(ty, Type::Scalar | Type::Tensor) {
                if let Value::Num(_) | Value::Dim(..) | Value::Schedule(_) = value {
                    return self
                        .to_tensor(ctx, value, span)
                        .map(|(n, s)| Value::Tensor(n, s));
                }
            }
            return Some(value);
        }
        let mut d = Diagnostic::error(
            Code::TypeMismatch,
            span,
            format!(
                "`{callee}` expects {} for `{param}`, but this is {}",
                ty.words(),
                value.kind()
            ),
        )
        .primary_label(format!("this is {}", value.kind()));
        if ty == Type::Clip {
            if let Value::Tensor(..) = value {
                d = d.hint("pass a model itself, not one of its outputs such as `.image`");
            }
        }
        if matches!(ty, Type::Tensor | Type::Scalar) {
            if let Value::Model { .. } = value {
                d = d.hint("pass one of the model's outputs, such as `.image` or `.text`");
            }
        }
        self.error(ctx, d);
        None
    }
}
