//! Elementwise unary operators and their backward.

use crate::math;
use crate::util::{cst, map1, map3, map_inplace};
use crate::Real;

/// An elementwise unary operator `y = f(x)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `y = −x`; `dx = −dy`
    Neg,
    /// `y = eˣ`; `dx = dy · y` (in `f32` a vectorised polynomial, 1–2 ulp)
    Exp,
    /// `y = ln x`; `dx = dy / x`
    Log,
    /// `y = √x`; `dx = dy / (2y)`
    Sqrt,
    /// `y = |x|`; `dx = dy · sign(x)` with `sign(0) = 0` (as PyTorch)
    Abs,
    /// `y = 1/x`; `dx = −dy · y²`
    Recip,
    /// `y = x²`; `dx = 2x · dy`
    Square,
    /// `y = max(x, 0)`; `dx = dy · [x > 0]`
    Relu,
    /// `y = σ(x) = 1/(1 + e⁻ˣ)`; `dx = dy · y(1 − y)`
    Sigmoid,
    /// `y = tanh x`; `dx = dy · (1 − y²)`
    Tanh,
    /// Exact GELU, `y = x·Φ(x) = ½x(1 + erf(x/√2))`; `dx = dy · (Φ(x) + x·φ(x))` with
    /// `φ(x) = e^(−x²/2)/√(2π)` (see [`gelu`], [`gelu_grad`])
    Gelu,
    /// OpenAI CLIP's `y = x·σ(1.702x)`; `dx = dy · (s + 1.702·x·s(1 − s))`, `s = σ(1.702x)`
    /// (see [`quick_gelu`], [`quick_gelu_grad`])
    QuickGelu,
}

/// The error function `erf(x) = 2/√π ∫₀ˣ e^(−t²) dt`. In `f64` (and any type but `f32`) this is
/// `libm::erf`, accurate to about 1 ulp. In `f32` it is a vectorisable rational approximation
/// with absolute error below 5.5e-8 before rounding (below 4e-7, a few ulp, in `f32`).
#[inline(always)]
pub fn erf<T: Real>(x: T) -> T {
    math::erf(x)
}

/// Exact GELU: `gelu(x) = ½·x·(1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu<T: Real>(x: T) -> T {
    let half: T = cst(0.5);
    half * x * (T::one() + erf(x * cst(std::f64::consts::FRAC_1_SQRT_2)))
}

/// Derivative of the exact GELU: `gelu'(x) = ½(1 + erf(x/√2)) + x·e^(−x²/2)/√(2π)`.
#[inline(always)]
pub fn gelu_grad<T: Real>(x: T) -> T {
    let half: T = cst(0.5);
    let cdf = half * (T::one() + erf(x * cst(std::f64::consts::FRAC_1_SQRT_2)));
    let pdf = math::exp(-half * x * x) * cst(0.398_942_280_401_432_7); // 1/√(2π)
    cdf + x * pdf
}

/// QuickGELU (OpenAI CLIP): `quick_gelu(x) = x·σ(1.702x)`, `σ(z) = 1/(1 + e⁻ᶻ)`.
#[inline(always)]
pub fn quick_gelu<T: Real>(x: T) -> T {
    x * sigmoid(x * cst(1.702))
}

/// Derivative of QuickGELU: `s + 1.702·x·s·(1 − s)` with `s = σ(1.702x)`.
#[inline(always)]
pub fn quick_gelu_grad<T: Real>(x: T) -> T {
    let k: T = cst(1.702);
    let s = sigmoid(x * k);
    s + k * x * s * (T::one() - s)
}

#[inline(always)]
fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + math::exp(-x))
}

#[inline(always)]
fn sign0<T: Real>(x: T) -> T {
    if x > T::zero() {
        T::one()
    } else if x < T::zero() {
        -T::one()
    } else {
        x // 0 (or NaN)
    }
}

/// Dispatches `$op` to a monomorphic closure `|$x| body` and calls `$apply(closure)`.
macro_rules! with_unary {
    ($op:expr, $apply:ident, $x:ident) => {
        match $op {
            UnaryOp::Neg => $apply!(|$x: T| -$x),
            UnaryOp::Exp => $apply!(|$x: T| math::exp($x)),
            UnaryOp::Log => $apply!(|$x: T| $x.ln()),
            UnaryOp::Sqrt => $apply!(|$x: T| $x.sqrt()),
            UnaryOp::Abs => $apply!(|$x: T| $x.abs()),
            UnaryOp::Recip => $apply!(|$x: T| $x.recip()),
            UnaryOp::Square => $apply!(|$x: T| $x * $x),
            UnaryOp::Relu => $apply!(|$x: T| if $x > T::zero() { $x } else { T::zero() }),
            UnaryOp::Sigmoid => $apply!(|$x: T| sigmoid($x)),
            UnaryOp::Tanh => $apply!(|$x: T| $x.tanh()),
            UnaryOp::Gelu => $apply!(|$x: T| gelu($x)),
            UnaryOp::QuickGelu => $apply!(|$x: T| quick_gelu($x)),
        }
    };
}

/// `out[i] = f(x[i])` for the operator `op` (formulas on [`UnaryOp`]).
pub fn unary<T: Real>(op: UnaryOp, x: &[T], out: &mut [T]) {
    macro_rules! apply {
        ($f:expr) => {
            map1(x, out, $f)
        };
    }
    with_unary!(op, apply, v)
}

/// In place: `x[i] ← f(x[i])` for the operator `op`.
pub fn unary_inplace<T: Real>(op: UnaryOp, x: &mut [T]) {
    macro_rules! apply {
        ($f:expr) => {
            map_inplace(x, $f)
        };
    }
    with_unary!(op, apply, v)
}

/// Backward of [`unary`]: `dx[i] = dy[i] · f'(x[i])`, written with whichever of the input `x`
/// and the forward output `y = f(x)` is cheaper (formulas on [`UnaryOp`]). All four slices have
/// the same length; `y` must be the forward output (it is read by `Exp`, `Sqrt`, `Recip`,
/// `Sigmoid` and `Tanh`).
pub fn unary_backward<T: Real>(op: UnaryOp, x: &[T], y: &[T], dy: &[T], dx: &mut [T]) {
    let two: T = cst(2.0);
    let half: T = cst(0.5);
    macro_rules! by {
        (|$x:ident, $y:ident, $g:ident| $body:expr) => {
            map3(x, y, dy, dx, |$x: T, $y: T, $g: T| $body)
        };
    }
    match op {
        UnaryOp::Neg => by!(|_x, _y, g| -g),
        UnaryOp::Exp => by!(|_x, y, g| g * y),
        UnaryOp::Log => by!(|x, _y, g| g / x),
        UnaryOp::Sqrt => by!(|_x, y, g| g * half / y),
        UnaryOp::Abs => by!(|x, _y, g| g * sign0(x)),
        UnaryOp::Recip => by!(|_x, y, g| -g * y * y),
        UnaryOp::Square => by!(|x, _y, g| two * x * g),
        UnaryOp::Relu => by!(|x, _y, g| if x > T::zero() { g } else { T::zero() }),
        UnaryOp::Sigmoid => by!(|_x, y, g| g * y * (T::one() - y)),
        UnaryOp::Tanh => by!(|_x, y, g| g * (T::one() - y * y)),
        UnaryOp::Gelu => by!(|x, _y, g| g * gelu_grad(x)),
        UnaryOp::QuickGelu => by!(|x, _y, g| g * quick_gelu_grad(x)),
    }
}

/// `out[i] = c · x[i]`.
pub fn scale<T: Real>(x: &[T], c: T, out: &mut [T]) {
    map1(x, out, |v| c * v);
}

/// Backward of [`scale`]: `dx[i] = c · dy[i]`.
pub fn scale_backward<T: Real>(dy: &[T], c: T, dx: &mut [T]) {
    map1(dy, dx, |g| c * g);
}
