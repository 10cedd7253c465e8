//! Kernels along an axis (kernels/lanes.cu): softmax, log-softmax, L2 normalisation,
//! reductions, with their backward, emulated under three thread schedules, against kdc-cpu.

mod common;

use common::{check, run_checked, Rng};
use kdc_cuda::kernels::ReduceCode;
use kdc_cuda::launch;

/// [outer, n, inner] views: last-axis rows of odd lengths (partial warps, more than one block
/// of 256) and middle axes (inner > 1).
const SHAPES: [(usize, usize, usize); 8] = [
    (1, 1, 1),
    (3, 7, 1),
    (2, 33, 1),
    (2, 257, 1),
    (1, 600, 1),
    (2, 7, 3),
    (1, 33, 5),
    (4, 1, 2),
];

#[test]
fn softmax_and_log_softmax_match_kdc_cpu() {
    let mut rng = Rng::new(10);
    for (outer, n, inner) in SHAPES {
        let len = outer * n * inner;
        let x = rng.vec(len, -8.0, 8.0);
        let dy = rng.vec(len, -1.0, 1.0);
        let what = format!("[{outer}, {n}, {inner}]");

        let mut y = vec![0f32; len];
        kdc_cpu::softmax(&x, &mut y, outer, n, inner);
        let got = run_checked(&[launch::softmax(outer, n, inner)], &[&x], &[len]);
        check(&format!("softmax {what}"), &got[0], &y, 1e-6);

        let mut dx = vec![0f32; len];
        kdc_cpu::softmax_backward(&y, &dy, &mut dx, outer, n, inner);
        let got = run_checked(
            &[launch::softmax_backward(outer, n, inner)],
            &[&y, &dy],
            &[len],
        );
        check(&format!("softmax backward {what}"), &got[0], &dx, 1e-6);

        let mut ly = vec![0f32; len];
        kdc_cpu::log_softmax(&x, &mut ly, outer, n, inner);
        let got = run_checked(&[launch::log_softmax(outer, n, inner)], &[&x], &[len]);
        check(&format!("log_softmax {what}"), &got[0], &ly, 1e-6);

        let mut dx = vec![0f32; len];
        kdc_cpu::log_softmax_backward(&ly, &dy, &mut dx, outer, n, inner);
        let got = run_checked(
            &[launch::log_softmax_backward(outer, n, inner)],
            &[&ly, &dy],
            &[len],
        );
        check(&format!("log_softmax backward {what}"), &got[0], &dx, 1e-6);
    }
}

#[test]
fn normalize_matches_kdc_cpu_including_lanes_below_eps() {
    let mut rng = Rng::new(11);
    for (outer, n, inner) in SHAPES {
        // Without and with a tiny first lane (norm below eps: the other branch of the
        // backward, whose gradients are 1/eps large, so it is checked on its own).
        for tiny in [false, true] {
            let len = outer * n * inner;
            let mut x = rng.vec(len, -2.0, 2.0);
            if tiny {
                for j in 0..n {
                    x[j * inner] *= 1e-9;
                }
            }
            let dy = rng.vec(len, -1.0, 1.0);
            let what = format!("[{outer}, {n}, {inner}] tiny={tiny}");
            let eps = 1e-6f32;

            let mut y = vec![0f32; len];
            kdc_cpu::l2_normalize(&x, &mut y, outer, n, inner, eps);
            let got = run_checked(&[launch::normalize(outer, n, inner, eps)], &[&x], &[len]);
            check(&format!("normalize {what}"), &got[0], &y, 1e-6);

            let mut dx = vec![0f32; len];
            kdc_cpu::l2_normalize_backward(&x, &dy, &mut dx, outer, n, inner, eps);
            let got = run_checked(
                &[launch::normalize_backward(outer, n, inner, eps)],
                &[&x, &dy],
                &[len],
            );
            check(&format!("normalize backward {what}"), &got[0], &dx, 1e-5);
        }
    }
}

#[test]
fn reductions_and_their_backward_match_kdc_cpu() {
    let mut rng = Rng::new(12);
    for (outer, n, inner) in SHAPES {
        let len = outer * n * inner;
        let lanes = outer * inner;
        // Half-integers: many ties, so the "first extreme" rule of max/min is exercised.
        let x: Vec<f32> = rng
            .vec(len, -4.0, 4.0)
            .iter()
            .map(|v| (v * 2.0).round() / 2.0)
            .collect();
        let dy = rng.vec(lanes, -1.0, 1.0);
        let what = format!("[{outer}, {n}, {inner}]");
        for kind in [
            ReduceCode::Sum,
            ReduceCode::Mean,
            ReduceCode::Var,
            ReduceCode::Max,
            ReduceCode::Min,
        ] {
            let mut want = vec![0f32; lanes];
            let mut dwant = vec![0f32; len];
            match kind {
                ReduceCode::Sum => {
                    kdc_cpu::sum_axis(&x, &mut want, outer, n, inner);
                    kdc_cpu::sum_axis_backward(&dy, &mut dwant, outer, n, inner);
                }
                ReduceCode::Mean => {
                    kdc_cpu::mean_axis(&x, &mut want, outer, n, inner);
                    kdc_cpu::mean_axis_backward(&dy, &mut dwant, outer, n, inner);
                }
                ReduceCode::Var => {
                    kdc_cpu::var_axis(&x, &mut want, outer, n, inner);
                    kdc_cpu::var_axis_backward(&x, &dy, &mut dwant, outer, n, inner);
                }
                ReduceCode::Max | ReduceCode::Min => {
                    let largest = kind == ReduceCode::Max;
                    kdc_cpu::extreme_axis(&x, &mut want, outer, n, inner, largest);
                    kdc_cpu::extreme_axis_backward(&x, &dy, &mut dwant, outer, n, inner, largest);
                }
            }
            let got = run_checked(&[launch::reduce(kind, outer, n, inner)], &[&x], &[lanes]);
            check(&format!("reduce {kind:?} {what}"), &got[0], &want, 1e-6);
            let got = run_checked(
                &[launch::reduce_backward(kind, outer, n, inner)],
                &[&x, &dy],
                &[len],
            );
            check(
                &format!("reduce backward {kind:?} {what}"),
                &got[0],
                &dwant,
                1e-6,
            );
        }
    }
}

#[test]
fn arg_max_and_min_pick_the_first_extreme_and_nan_like_kdc_cpu() {
    let mut rng = Rng::new(13);
    for (outer, n, inner) in SHAPES {
        let len = outer * n * inner;
        let mut x: Vec<f32> = rng.vec(len, -3.0, 3.0).iter().map(|v| v.round()).collect();
        if n > 5 {
            // A NaN in the last lane: it is the extreme there, for max and min alike.
            x[len - 1 - 2 * inner] = f32::NAN;
        }
        for largest in [true, false] {
            let mut want = vec![0f32; outer * inner];
            kdc_cpu::arg_extreme_axis(&x, &mut want, outer, n, inner, largest);
            let got = run_checked(
                &[launch::arg(largest, outer, n, inner)],
                &[&x],
                &[outer * inner],
            );
            check(
                &format!("arg largest={largest} [{outer}, {n}, {inner}]"),
                &got[0],
                &want,
                0.0,
            );
        }
    }
}
