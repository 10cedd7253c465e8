//! Scalar math for the elementwise kernels.
//!
//! For `f32` (training) `exp` and `erf` are branch-free polynomial/rational evaluations that the
//! compiler vectorises inside the kernels' loops (the C library's `expf`/`erff` are opaque calls
//! that do not). For every other type (`f64`: tests and references) they are the accurate
//! library functions.

use std::any::TypeId;

use crate::Real;

#[inline(always)]
fn is_f32<T: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>()
}

/// `eˣ`: [`exp_f32`] for `f32`, `Float::exp` otherwise.
#[inline(always)]
pub(crate) fn exp<T: Real>(x: T) -> T {
    if is_f32::<T>() {
        T::from(exp_f32(x.to_f32().unwrap())).unwrap()
    } else {
        x.exp()
    }
}

/// `erf x`: [`erf_f32`] for `f32`, `libm::erf` (in `f64`) otherwise.
#[inline(always)]
pub(crate) fn erf<T: Real>(x: T) -> T {
    if is_f32::<T>() {
        T::from(erf_f32(x.to_f32().unwrap())).unwrap()
    } else {
        T::from(libm::erf(x.to_f64().unwrap())).unwrap()
    }
}

/// `eˣ` in `f32` without branches or calls. `x = n·ln 2 + r` with `n = round(x·log₂e)`
/// (Cody–Waite split of ln 2, exact products), `eʳ` by its degree-7 Taylor polynomial
/// (truncation < 6e-9 relative for `|r| <= ln2/2`), scaled by `2ⁿ` built in the exponent bits.
/// Relative error about 1–2 ulp. Returns 0 for `x < −86` (true value below 5e-38) and +∞ above
/// `88.72` (beyond `f32::MAX`); NaN propagates.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LO: f32 = -86.0;
    const HI: f32 = 88.72;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 355.0 / 512.0; // exact in 9 bits
    const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 − LN2_HI
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let xc = x.clamp(LO, HI);
    let k = xc * LOG2E + MAGIC;
    let n = k - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // k's low mantissa bits hold n (as 0x4B40_0000 + n); build 2^(n−1), then double, so that
    // n = 128 (x near HI) does not overflow the exponent field.
    let n_bits = k.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(126) << 23);
    let y = p * scale * 2.0;
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// `erf x` in `f32` without branches or calls: `x·P(x²)/Q(x²)` on `x` clamped to `[−4, 4]`
/// (where `|erf| > 1 − 1.6e-8`), with a rational approximation of degrees 6/4 in `x²` fitted for
/// kdc by `tools/fit_erf.py` (weighted least squares with Lawson iterations, 40-digit
/// arithmetic): absolute error below 5.5e-8 in exact arithmetic, below 4e-7 (a few ulp) after
/// `f32` rounding.
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    const P: [f64; 7] = [
        1.128_378_677_299_469_2,
        0.213_943_163_188_387_03,
        0.052_433_263_030_168_19,
        0.004_292_984_764_709_928,
        0.000_155_534_972_883_249_24,
        -1.990_310_789_855_886_3e-6,
        1.921_718_149_122_150_1e-8,
    ];
    const Q: [f64; 5] = [
        1.0,
        0.522_929_848_652_380_2,
        0.120_798_984_456_674_24,
        0.015_550_956_818_052_867,
        0.001_098_020_812_417_040_2,
    ];
    let x = x.clamp(-4.0, 4.0);
    let t = x * x;
    // The coefficients are rounded to f32 at compile time.
    let [p0, p1, p2, p3, p4, p5, p6] = P.map(|c| c as f32);
    let [q0, q1, q2, q3, q4] = Q.map(|c| c as f32);
    let p = p0 + t * (p1 + t * (p2 + t * (p3 + t * (p4 + t * (p5 + t * p6)))));
    let q = q0 + t * (q1 + t * (q2 + t * (q3 + t * q4)));
    x * p / q
}
