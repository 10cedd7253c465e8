use super::Rng;
use crate::math::{erf_f32, exp_f32};

#[test]
fn exp_f32_is_accurate() {
    let mut rng = Rng::new(80);
    let mut worst = 0f64;
    for i in 0..200_000 {
        let x = if i < 100_000 {
            rng.range(-86.0, 88.72)
        } else {
            rng.range(-2.0, 2.0)
        } as f32;
        let y = exp_f32(x) as f64;
        let e = (x as f64).exp();
        worst = worst.max(((y - e) / e).abs());
    }
    assert!(worst < 3e-7, "exp_f32 worst relative error {worst}");
    assert_eq!(exp_f32(0.0), 1.0);
    assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp_f32(-1000.0), 0.0);
    assert_eq!(exp_f32(89.0), f32::INFINITY);
    assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
    assert!(exp_f32(88.72).is_finite());
    assert!(exp_f32(f32::NAN).is_nan());
}

#[test]
fn erf_f32_is_accurate() {
    let mut worst = 0f64;
    for i in -60_000..=60_000 {
        let x = i as f32 * 1e-4;
        let e = libm::erf(x as f64);
        worst = worst.max((erf_f32(x) as f64 - e).abs());
    }
    assert!(worst < 4e-7, "erf_f32 worst absolute error {worst}");
    assert_eq!(erf_f32(0.0), 0.0);
    assert!((erf_f32(10.0) - 1.0).abs() < 1e-7 && (erf_f32(-10.0) + 1.0).abs() < 1e-7);
    assert!(erf_f32(f32::NAN).is_nan());
}
