//! The syntax tree: what the recipe says, with a span on every node. It keeps comments and
//! the source text of numbers and strings so that `kdc fmt` loses nothing.

use crate::source::{FileId, Span};

#[derive(Clone, Debug)]
pub struct File {
    pub file: FileId,
    pub items: Vec<Item>,
    pub comments: Vec<Comment>,
}

#[derive(Clone, Debug)]
pub struct Comment {
    pub span: Span,
    /// The whole comment, `#` included.
    pub text: String,
}

#[derive(Clone, Debug)]
pub enum Item {
    Use(Use),
    Fn(FnDef),
    Stage(Stage),
    Binding(Binding),
    Test(TestDef),
}

/// `test name { let …  expectations }`, run by `kdc test`.
#[derive(Clone, Debug)]
pub struct TestDef {
    pub name: Ident,
    pub lets: Vec<Let>,
    pub body: Expr,
    pub span: Span,
}

impl Item {
    pub fn span(&self) -> Span {
        match self {
            Item::Use(u) => u.span,
            Item::Fn(f) => f.span,
            Item::Stage(s) => s.span,
            Item::Binding(b) => b.span,
            Item::Test(t) => t.span,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// `use a.b.{c, d}` (`names` is `Some`) or `use a.b.c` (`names` is `None`: the last segment
/// of the path is the imported name).
#[derive(Clone, Debug)]
pub struct Use {
    pub path: Vec<Ident>,
    pub names: Option<Vec<Ident>>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct FnDef {
    pub name: Ident,
    pub params: Vec<Param>,
    /// Where the `)` closing the parameter list is.
    pub params_close: u32,
    pub ret: Option<Ident>,
    pub lets: Vec<Let>,
    pub body: Expr,
    /// The `##` comment lines directly above the definition, without the `##`.
    pub doc: Vec<String>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: Ident,
    pub ty: Ident,
    pub default: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Let {
    pub name: Ident,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Stage {
    pub name: Ident,
    pub args: Vec<Arg>,
    /// Where the `)` closing the arguments is (the name's end when there are none).
    pub args_close: u32,
    pub bindings: Vec<Binding>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Binding {
    pub name: Ident,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Pipe,
    Add,
    Sub,
    Mul,
    Div,
    MatMul,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Pipe => "|",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
        }
    }

    /// Binding power: higher binds tighter. All operators associate to the left.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Pipe => 1,
            BinOp::Add | BinOp::Sub => 2,
            BinOp::Mul | BinOp::Div | BinOp::MatMul => 3,
        }
    }
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    /// A number and its text as written (`10_000`, `1e-3`).
    Number {
        value: f64,
        text: String,
    },
    /// A string's value and its text as written, quotes included.
    Str {
        value: String,
        text: String,
    },
    Bool(bool),
    Name(String),
    List(Vec<Expr>),
    Paren(Box<Expr>),
    Field(Box<Expr>, Ident),
    Call(Box<Expr>, Vec<Arg>),
    /// `x[i, a:b, :]`.
    Index(Box<Expr>, Vec<IndexItem>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
}

/// One item of an index: a position, or a range with optional ends (`:` alone is the whole
/// axis).
#[derive(Clone, Debug)]
pub enum IndexItem {
    At(Expr),
    Range {
        start: Option<Expr>,
        end: Option<Expr>,
        span: Span,
    },
}

impl IndexItem {
    pub fn span(&self) -> Span {
        match self {
            IndexItem::At(e) => e.span,
            IndexItem::Range { span, .. } => *span,
        }
    }

    /// The expressions inside, in order.
    pub fn exprs(&self) -> Vec<&Expr> {
        match self {
            IndexItem::At(e) => vec![e],
            IndexItem::Range { start, end, .. } => start.iter().chain(end.iter()).collect(),
        }
    }
}

/// A call argument, positional (`name` is `None`) or named (`name: value`).
#[derive(Clone, Debug)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

impl Expr {
    /// The callee's name if this is a call of a plain name, such as `fd(…)`.
    pub fn callee_name(&self) -> Option<&str> {
        match &self.kind {
            ExprKind::Call(callee, _) => match &callee.kind {
                ExprKind::Name(name) => Some(name),
                _ => None,
            },
            ExprKind::Paren(inner) => inner.callee_name(),
            _ => None,
        }
    }
}
