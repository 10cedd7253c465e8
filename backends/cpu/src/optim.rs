//! The AdamW update and gradient-norm clipping, with PyTorch's semantics.

use rayon::prelude::*;

use crate::util::{ordered_sum, simd, FLAT_CHUNK, PAR_MIN_WORK};
use crate::Real;

/// The `1e-6` PyTorch adds to the total norm in `clip_grad_norm_`.
pub const CLIP_GRAD_NORM_EPS: f64 = kdc_backend::backend::CLIP_GRAD_NORM_EPS;

/// One AdamW step in place, exactly as PyTorch's `torch.optim.AdamW` (single-tensor path,
/// `amsgrad=False`, `maximize=False`). For every element, with `t = step` (the count *after*
/// this update, so the first call has `step = 1`):
///
/// ```text
/// p ← p · (1 − lr·wd)                      (decoupled weight decay)
/// m ← m + (1 − β1)·(g − m)                 (= β1·m + (1 − β1)·g, torch's lerp)
/// v ← β2·v + (1 − β2)·g²
/// p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + eps)
/// ```
///
/// The scalar coefficients are computed in `f64` (as Python floats) and rounded to `T` once.
/// All four slices have the same length.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step<T: Real>(
    param: &mut [T],
    grad: &[T],
    m: &mut [T],
    v: &mut [T],
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: u64,
) {
    let len = param.len();
    assert!(
        grad.len() == len && m.len() == len && v.len() == len,
        "adamw_step: slices differ in length"
    );
    assert!(step >= 1, "adamw_step: step counts from 1");
    let t = step.min(i32::MAX as u64) as i32;
    let decay: T = T::from(1.0 - lr * weight_decay).unwrap();
    let w: T = T::from(1.0 - beta1).unwrap(); // lerp weight
    let b2: T = T::from(beta2).unwrap();
    let one_minus_b2: T = T::from(1.0 - beta2).unwrap();
    let bias_correction1 = 1.0 - beta1.powi(t);
    let bias_correction2 = 1.0 - beta2.powi(t);
    let neg_step_size: T = T::from(-(lr / bias_correction1)).unwrap();
    let bc2_sqrt: T = T::from(bias_correction2.sqrt()).unwrap();
    let eps: T = T::from(eps).unwrap();
    let half: T = T::from(0.5).unwrap();
    let lerp_small = w.abs() < half;

    type Chunks<'a, T> = (((&'a mut [T], &'a [T]), &'a mut [T]), &'a mut [T]);
    let body = {
        #[inline(always)]
        |(((p, g), m), v): Chunks<'_, T>| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *p = *p * decay;
                // torch.lerp(m, g, w): m + w·(g − m) for |w| < ½, else g − (g − m)·(1 − w).
                *m = if lerp_small {
                    *m + w * (g - *m)
                } else {
                    g - (g - *m) * (T::one() - w)
                };
                *v = *v * b2 + one_minus_b2 * g * g;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p = *p + neg_step_size * (*m / denom);
            }
        }
    };
    if len < PAR_MIN_WORK {
        simd(|| body((((param, grad), m), v)));
    } else {
        param
            .par_chunks_mut(FLAT_CHUNK)
            .zip(grad.par_chunks(FLAT_CHUNK))
            .zip(m.par_chunks_mut(FLAT_CHUNK))
            .zip(v.par_chunks_mut(FLAT_CHUNK))
            .for_each(|args| simd(|| body(args)));
    }
}

/// Global L2 norm of a list of gradients: `√(Σ_t Σ_i grads[t][i]²)`, accumulated in `f64`.
pub fn grad_norm<T: Real>(grads: &[&[T]]) -> f64 {
    grads
        .iter()
        .map(|g| {
            ordered_sum(g.len(), PAR_MIN_WORK, |s, e| {
                g[s..e]
                    .iter()
                    .map(|&x| {
                        let x = x.to_f64().unwrap();
                        x * x
                    })
                    .sum()
            })
        })
        .sum::<f64>()
        .sqrt()
}

/// Clips gradients by their global norm, as PyTorch's `clip_grad_norm_(norm_type=2)`: with
/// `total = `[`grad_norm`]`(grads)` and `coef = max_norm / (total + 1e-6)`, every gradient is
/// multiplied by `coef` when `coef < 1` (PyTorch multiplies by `min(coef, 1)`; a NaN `total`
/// makes every gradient NaN, as there). Returns `total`, the norm *before* clipping.
///
/// Note that, as in PyTorch, a total just below `max_norm + 1e-6` is still scaled (by a factor
/// within `1e-6/max_norm` of 1).
pub fn clip_grad_norm<T: Real>(grads: &mut [&mut [T]], max_norm: f64) -> f64 {
    let total = {
        let views: Vec<&[T]> = grads.iter().map(|g| &**g).collect();
        grad_norm(&views)
    };
    let coef = max_norm / (total + CLIP_GRAD_NORM_EPS);
    // `coef < 1` or NaN (PyTorch multiplies by clamp(coef, max=1), which keeps NaN).
    if coef.is_nan() || coef < 1.0 {
        let c: T = T::from(coef).unwrap_or_else(T::nan);
        for g in grads.iter_mut() {
            crate::util::map_inplace(g, |x| x * c);
        }
    }
    total
}
