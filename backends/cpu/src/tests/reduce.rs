use super::{assert_close, check_vjp, Rng};
use crate::{
    axis_dims, l2_normalize, l2_normalize_backward, log_softmax, log_softmax_backward, mean_axis,
    mean_axis_backward, softmax, softmax_backward, sum_axis, sum_axis_backward, var_axis,
    var_axis_backward, NORMALIZE_EPS,
};

/// Applies `f` (lane → lane) to every lane of `[outer, n, inner]`, naively.
fn per_lane(
    x: &[f64],
    outer: usize,
    n: usize,
    inner: usize,
    f: impl Fn(&[f64]) -> Vec<f64>,
) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let lane: Vec<f64> = (0..n).map(|j| x[(o * n + j) * inner + i]).collect();
            for (j, v) in f(&lane).into_iter().enumerate() {
                out[(o * n + j) * inner + i] = v;
            }
        }
    }
    out
}

/// Reduces every lane with `f`, naively; result `[outer, inner]`.
fn per_lane_reduce(
    x: &[f64],
    outer: usize,
    n: usize,
    inner: usize,
    f: impl Fn(&[f64]) -> f64,
) -> Vec<f64> {
    let mut out = vec![0.0; outer * inner];
    for o in 0..outer {
        for i in 0..inner {
            let lane: Vec<f64> = (0..n).map(|j| x[(o * n + j) * inner + i]).collect();
            out[o * inner + i] = f(&lane);
        }
    }
    out
}

fn ref_softmax(l: &[f64]) -> Vec<f64> {
    let z: f64 = l.iter().map(|v| v.exp()).sum();
    l.iter().map(|v| v.exp() / z).collect()
}

fn ref_log_softmax(l: &[f64]) -> Vec<f64> {
    let z: f64 = l.iter().map(|v| v.exp()).sum::<f64>().ln();
    l.iter().map(|v| v - z).collect()
}

fn ref_normalize(l: &[f64]) -> Vec<f64> {
    let r = l
        .iter()
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt()
        .max(NORMALIZE_EPS);
    l.iter().map(|v| v / r).collect()
}

fn ref_sum(l: &[f64]) -> f64 {
    l.iter().sum()
}

fn ref_mean(l: &[f64]) -> f64 {
    ref_sum(l) / l.len() as f64
}

fn ref_var(l: &[f64]) -> f64 {
    let m = ref_mean(l);
    l.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / l.len() as f64
}

const SHAPES: &[(usize, usize, usize)] = &[
    (3, 5, 7),
    (1, 9, 1),
    (4, 1, 3),
    (2, 13, 1),
    (1, 6, 11),
    // Large enough for the parallel paths, last axis and strided.
    (300, 130, 1),
    (20, 50, 40),
];

type LaneFn = fn(&[f64], &mut [f64], usize, usize, usize);
type LaneRef = fn(&[f64]) -> Vec<f64>;
type Red = fn(&[f64], &mut [f64], usize, usize, usize);
type RedRef = fn(&[f64]) -> f64;

#[test]
fn lane_maps_match_reference() {
    let mut rng = Rng::new(30);
    let normalize: LaneFn = |x, o, a, b, c| l2_normalize(x, o, a, b, c, NORMALIZE_EPS);
    let ops: [(&str, LaneFn, LaneRef); 3] = [
        ("softmax", softmax, ref_softmax),
        ("log_softmax", log_softmax, ref_log_softmax),
        ("l2_normalize", normalize, ref_normalize),
    ];
    for &(outer, n, inner) in SHAPES {
        let x = rng.vec(outer * n * inner, -3.0, 3.0);
        for (name, kernel, reference) in ops {
            let mut out = vec![f64::NAN; x.len()];
            kernel(&x, &mut out, outer, n, inner);
            let expect = per_lane(&x, outer, n, inner, reference);
            assert_close(&out, &expect, 1e-13, &format!("{name} {outer}x{n}x{inner}"));
        }
    }
}

#[test]
fn softmax_is_stable_for_large_logits() {
    let x = [1000.0, 1001.0, 999.0];
    let mut out = [0.0; 3];
    softmax(&x, &mut out, 1, 3, 1);
    assert_close(
        &out,
        &ref_softmax(&[1.0, 2.0, 0.0]),
        1e-15,
        "stable softmax",
    );
    log_softmax(&x, &mut out, 1, 3, 1);
    assert_close(
        &out,
        &ref_log_softmax(&[1.0, 2.0, 0.0]),
        1e-12,
        "stable log_softmax",
    );
}

#[test]
fn reductions_match_reference() {
    let mut rng = Rng::new(31);
    let ops: [(&str, Red, RedRef); 3] = [
        ("sum", sum_axis, ref_sum),
        ("mean", mean_axis, ref_mean),
        ("var", var_axis, ref_var),
    ];
    for &(outer, n, inner) in SHAPES.iter().chain(&[(40000, 1, 1), (1, 40000, 1)]) {
        let x = rng.vec(outer * n * inner, -3.0, 3.0);
        for (name, kernel, reference) in ops {
            let mut out = vec![f64::NAN; outer * inner];
            kernel(&x, &mut out, outer, n, inner);
            let expect = per_lane_reduce(&x, outer, n, inner, reference);
            assert_close(&out, &expect, 1e-12, &format!("{name} {outer}x{n}x{inner}"));
        }
    }
}

#[test]
fn axis_dims_splits_shapes() {
    assert_eq!(axis_dims(&[2, 3, 4, 5], 0), (1, 2, 60));
    assert_eq!(axis_dims(&[2, 3, 4, 5], 2), (6, 4, 5));
    assert_eq!(axis_dims(&[2, 3, 4, 5], 3), (24, 5, 1));
}

#[test]
fn lane_map_backwards_match_finite_differences() {
    let mut rng = Rng::new(32);
    for &(outer, n, inner) in &SHAPES[..5] {
        let x = rng.vec(outer * n * inner, -2.0, 2.0);
        let dy = rng.vec(x.len(), -1.0, 1.0);
        let mut y = vec![0.0; x.len()];
        let mut dx = vec![f64::NAN; x.len()];
        let what = |s: &str| format!("{s} {outer}x{n}x{inner}");

        softmax(&x, &mut y, outer, n, inner);
        softmax_backward(&y, &dy, &mut dx, outer, n, inner);
        check_vjp(&what("softmax"), &x, &dy, &dx, |x| {
            per_lane(x, outer, n, inner, ref_softmax)
        });

        log_softmax(&x, &mut y, outer, n, inner);
        log_softmax_backward(&y, &dy, &mut dx, outer, n, inner);
        check_vjp(&what("log_softmax"), &x, &dy, &dx, |x| {
            per_lane(x, outer, n, inner, ref_log_softmax)
        });

        l2_normalize_backward(&x, &dy, &mut dx, outer, n, inner, NORMALIZE_EPS);
        check_vjp(&what("l2_normalize"), &x, &dy, &dx, |x| {
            per_lane(x, outer, n, inner, ref_normalize)
        });
    }
}

#[test]
fn l2_normalize_below_eps() {
    // A lane with norm below eps is divided by eps (value and gradient).
    let eps = 0.5;
    let x = [0.1, -0.2, 3.0, 4.0];
    let mut y = [0.0; 4];
    l2_normalize(&x, &mut y, 2, 2, 1, eps);
    assert_close(&y, &[0.2, -0.4, 0.6, 0.8], 1e-15, "normalize below eps");
    let dy = [1.0, 2.0, 0.5, -1.0];
    let mut dx = [0.0; 4];
    l2_normalize_backward(&x, &dy, &mut dx, 2, 2, 1, eps);
    let f = |x: &[f64]| {
        let mut y = vec![0.0; 4];
        l2_normalize(x, &mut y, 2, 2, 1, eps);
        y
    };
    check_vjp("normalize below eps", &x, &dy, &dx, f);
    // Zero lanes stay zero.
    let z = [0.0; 3];
    let mut out = [f64::NAN; 3];
    l2_normalize(&z, &mut out, 1, 3, 1, NORMALIZE_EPS);
    assert_eq!(out, [0.0; 3]);
}

#[test]
fn reduction_backwards_match_finite_differences() {
    let mut rng = Rng::new(33);
    for &(outer, n, inner) in &SHAPES[..5] {
        let x = rng.vec(outer * n * inner, -2.0, 2.0);
        let dy = rng.vec(outer * inner, -1.0, 1.0);
        let mut dx = vec![f64::NAN; x.len()];
        let what = |s: &str| format!("{s} {outer}x{n}x{inner}");

        sum_axis_backward(&dy, &mut dx, outer, n, inner);
        check_vjp(&what("sum"), &x, &dy, &dx, |x| {
            per_lane_reduce(x, outer, n, inner, ref_sum)
        });
        mean_axis_backward(&dy, &mut dx, outer, n, inner);
        check_vjp(&what("mean"), &x, &dy, &dx, |x| {
            per_lane_reduce(x, outer, n, inner, ref_mean)
        });
        var_axis_backward(&x, &dy, &mut dx, outer, n, inner);
        check_vjp(&what("var"), &x, &dy, &dx, |x| {
            per_lane_reduce(x, outer, n, inner, ref_var)
        });
    }
}

/// The parallel paths give the same backward as lane-by-lane small calls.
#[test]
fn large_backwards_match_small_calls() {
    let mut rng = Rng::new(34);
    for &(outer, n, inner) in &SHAPES[5..] {
        let x = rng.vec(outer * n * inner, -2.0, 2.0);
        let dy = rng.vec(x.len(), -1.0, 1.0);
        let block = n * inner;
        let mut y = vec![0.0; x.len()];
        softmax(&x, &mut y, outer, n, inner);
        let mut dx = vec![0.0; x.len()];
        softmax_backward(&y, &dy, &mut dx, outer, n, inner);
        let mut dx_small = vec![0.0; x.len()];
        for o in 0..outer {
            let r = o * block..(o + 1) * block;
            softmax_backward(&y[r.clone()], &dy[r.clone()], &mut dx_small[r], 1, n, inner);
        }
        assert_eq!(dx, dx_small, "softmax backward {outer}x{n}x{inner}");

        let dys = rng.vec(outer * inner, -1.0, 1.0);
        var_axis_backward(&x, &dys, &mut dx, outer, n, inner);
        for o in 0..outer {
            let r = o * block..(o + 1) * block;
            let g = &dys[o * inner..(o + 1) * inner];
            var_axis_backward(&x[r.clone()], g, &mut dx_small[r], 1, n, inner);
        }
        assert_eq!(dx, dx_small, "var backward {outer}x{n}x{inner}");
    }
}

#[test]
fn f32_softmax_rows() {
    let mut rng = Rng::new(35);
    let (rows, n) = (200, 77);
    let x = rng.vec(rows * n, -5.0, 5.0);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let mut out = vec![0f32; x.len()];
    softmax(&x32, &mut out, rows, n, 1);
    let x_r: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
    super::assert_close_f32(
        &out,
        &per_lane(&x_r, rows, n, 1, ref_softmax),
        1e-6,
        "f32 softmax",
    );
}

#[test]
fn extremes_along_an_axis() {
    use crate::{arg_extreme_axis, extreme_axis, extreme_axis_backward};
    let mut rng = Rng::new(31);
    for (outer, n, inner) in [(1, 7, 1), (3, 5, 4), (2, 1, 3), (4, 9, 2)] {
        let x = rng.vec(outer * n * inner, -2.0, 2.0);
        let dy = rng.vec(outer * inner, -1.0, 1.0);
        for largest in [true, false] {
            let mut out = vec![f64::NAN; outer * inner];
            let mut arg = vec![f64::NAN; outer * inner];
            extreme_axis(&x, &mut out, outer, n, inner, largest);
            arg_extreme_axis(&x, &mut arg, outer, n, inner, largest);
            for o in 0..outer {
                for i in 0..inner {
                    let col: Vec<f64> = (0..n).map(|j| x[(o * n + j) * inner + i]).collect();
                    let want = col.iter().cloned().fold(
                        if largest { f64::MIN } else { f64::MAX },
                        |a, b| if largest { a.max(b) } else { a.min(b) },
                    );
                    assert_eq!(out[o * inner + i], want);
                    assert_eq!(col[arg[o * inner + i] as usize], want);
                }
            }
            let mut dx = vec![f64::NAN; x.len()];
            extreme_axis_backward(&x, &dy, &mut dx, outer, n, inner, largest);
            check_vjp(
                &format!("extreme {outer}x{n}x{inner} {largest}"),
                &x,
                &dy,
                &dx,
                |x| {
                    let mut o = vec![0.0; outer * inner];
                    extreme_axis(x, &mut o, outer, n, inner, largest);
                    o
                },
            );
        }
    }
    // Ties: the first position takes the value, the gradient and the index.
    let x = [1.0, 3.0, 3.0, 0.0];
    let mut arg = [0.0];
    arg_extreme_axis(&x, &mut arg, 1, 4, 1, true);
    assert_eq!(arg, [1.0]);
    let mut dx = [9.0; 4];
    extreme_axis_backward(&x, &[2.0], &mut dx, 1, 4, 1, true);
    assert_eq!(dx, [0.0, 2.0, 0.0, 0.0]);
}

#[test]
fn top_k_along_an_axis() {
    use crate::{topk_axis, topk_axis_backward};
    let mut rng = Rng::new(32);
    for (outer, n, inner, k) in [(1, 7, 1, 3), (3, 5, 4, 2), (2, 6, 3, 6), (4, 9, 2, 1)] {
        let x = rng.vec(outer * n * inner, -2.0, 2.0);
        let dy = rng.vec(outer * k * inner, -1.0, 1.0);
        let mut out = vec![f64::NAN; outer * k * inner];
        topk_axis(&x, &mut out, outer, n, inner, k);
        for o in 0..outer {
            for i in 0..inner {
                let mut col: Vec<f64> = (0..n).map(|j| x[(o * n + j) * inner + i]).collect();
                col.sort_by(|a, b| b.partial_cmp(a).unwrap());
                let got: Vec<f64> = (0..k).map(|r| out[(o * k + r) * inner + i]).collect();
                assert_eq!(got, col[..k]);
            }
        }
        let mut dx = vec![f64::NAN; x.len()];
        topk_axis_backward(&x, &dy, &mut dx, outer, n, inner, k);
        check_vjp(
            &format!("topk {outer}x{n}x{inner} k {k}"),
            &x,
            &dy,
            &dx,
            |x| {
                let mut o = vec![0.0; outer * k * inner];
                topk_axis(x, &mut o, outer, n, inner, k);
                o
            },
        );
    }
}
