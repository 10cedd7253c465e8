use super::{assert_close, check_grad, dot, Rng};
use crate::{
    layer_norm, layer_norm_backward, layer_norm_backward_input, layer_norm_backward_params,
    layer_norm_stats, LAYER_NORM_EPS,
};

fn reference(
    x: &[f64],
    gain: &[f64],
    bias: &[f64],
    rows: usize,
    d: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; rows * d];
    let mut means = vec![0.0; rows];
    let mut rstds = vec![0.0; rows];
    for r in 0..rows {
        let row = &x[r * d..(r + 1) * d];
        let m = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / d as f64;
        let rs = 1.0 / (var + eps).sqrt();
        for j in 0..d {
            out[r * d + j] = (row[j] - m) * rs * gain[j] + bias[j];
        }
        means[r] = m;
        rstds[r] = rs;
    }
    (out, means, rstds)
}

#[test]
fn forward_matches_reference() {
    let mut rng = Rng::new(40);
    for (rows, d) in [(7, 13), (1, 8), (3, 1), (300, 200)] {
        let x = rng.vec(rows * d, -2.0, 3.0);
        let gain = rng.vec(d, 0.5, 1.5);
        let bias = rng.vec(d, -1.0, 1.0);
        let (expect, em, er) = reference(&x, &gain, &bias, rows, d, LAYER_NORM_EPS);
        let mut out = vec![f64::NAN; rows * d];
        let mut mean = vec![f64::NAN; rows];
        let mut rstd = vec![f64::NAN; rows];
        layer_norm(
            &x,
            &gain,
            &bias,
            &mut out,
            &mut mean,
            &mut rstd,
            rows,
            d,
            LAYER_NORM_EPS,
        );
        assert_close(&out, &expect, 1e-12, &format!("layer_norm {rows}x{d}"));
        assert_close(&mean, &em, 1e-13, "mean");
        assert_close(&rstd, &er, 1e-12, "rstd");
    }
}

#[test]
fn backward_matches_finite_differences() {
    let mut rng = Rng::new(41);
    for (rows, d) in [(5, 13), (1, 7), (4, 2)] {
        let eps = 1e-3;
        let x = rng.vec(rows * d, -2.0, 2.0);
        let gain = rng.vec(d, 0.5, 1.5);
        let bias = rng.vec(d, -1.0, 1.0);
        let dy = rng.vec(rows * d, -1.0, 1.0);
        let mut out = vec![0.0; rows * d];
        let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
        layer_norm(
            &x, &gain, &bias, &mut out, &mut mean, &mut rstd, rows, d, eps,
        );
        let mut dx = vec![f64::NAN; rows * d];
        let mut dgain = vec![f64::NAN; d];
        let mut dbias = vec![f64::NAN; d];
        layer_norm_backward(
            &x, &gain, &mean, &rstd, &dy, &mut dx, &mut dgain, &mut dbias, rows, d,
        );
        let f = |x: &[f64], g: &[f64], b: &[f64]| dot(&dy, &reference(x, g, b, rows, d, eps).0);
        check_grad("layer_norm dx", &x, &dx, |x| f(x, &gain, &bias));
        check_grad("layer_norm dgain", &gain, &dgain, |g| f(&x, g, &bias));
        check_grad("layer_norm dbias", &bias, &dbias, |b| f(&x, &gain, b));
    }
}

/// The parallel path (rows and column blocks) equals row-by-row small calls.
#[test]
fn large_backward_matches_small_calls() {
    let mut rng = Rng::new(42);
    let (rows, d) = (300, 200);
    let x = rng.vec(rows * d, -2.0, 2.0);
    let gain = rng.vec(d, 0.5, 1.5);
    let bias = rng.vec(d, -1.0, 1.0);
    let dy = rng.vec(rows * d, -1.0, 1.0);
    let mut out = vec![0.0; rows * d];
    let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
    layer_norm(
        &x,
        &gain,
        &bias,
        &mut out,
        &mut mean,
        &mut rstd,
        rows,
        d,
        LAYER_NORM_EPS,
    );
    let (mut dx, mut dg, mut db) = (vec![0.0; rows * d], vec![0.0; d], vec![0.0; d]);
    layer_norm_backward(
        &x, &gain, &mean, &rstd, &dy, &mut dx, &mut dg, &mut db, rows, d,
    );

    let (mut dg_sum, mut db_sum) = (vec![0.0; d], vec![0.0; d]);
    for r in 0..rows {
        let s = r * d..(r + 1) * d;
        let (mut dx_r, mut dg_r, mut db_r) = (vec![0.0; d], vec![0.0; d], vec![0.0; d]);
        layer_norm_backward(
            &x[s.clone()],
            &gain,
            &mean[r..r + 1],
            &rstd[r..r + 1],
            &dy[s.clone()],
            &mut dx_r,
            &mut dg_r,
            &mut db_r,
            1,
            d,
        );
        assert_eq!(&dx[s], &dx_r[..], "row {r}");
        for j in 0..d {
            dg_sum[j] += dg_r[j];
            db_sum[j] += db_r[j];
        }
    }
    assert_close(&dg, &dg_sum, 1e-12, "dgain");
    assert_close(&db, &db_sum, 1e-12, "dbias");
}

#[test]
fn f32_layer_norm() {
    let mut rng = Rng::new(43);
    let (rows, d) = (77, 512);
    let x = rng.vec(rows * d, -2.0, 3.0);
    let gain = rng.vec(d, 0.5, 1.5);
    let bias = rng.vec(d, -1.0, 1.0);
    let c = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let (x32, g32, b32) = (c(&x), c(&gain), c(&bias));
    let mut out = vec![0f32; rows * d];
    let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
    layer_norm(
        &x32,
        &g32,
        &b32,
        &mut out,
        &mut mean,
        &mut rstd,
        rows,
        d,
        LAYER_NORM_EPS as f32,
    );
    let r = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let (expect, _, _) = reference(&r(&x32), &r(&g32), &r(&b32), rows, d, LAYER_NORM_EPS);
    super::assert_close_f32(&out, &expect, 1e-5, "f32 layer_norm");
}

#[test]
fn stats_alone_match_the_reference() {
    let mut rng = Rng::new(41);
    // Small (serial) and large (parallel) cases.
    for &(rows, d) in &[(3, 5), (300, 256)] {
        let x = rng.vec(rows * d, -2.0, 2.0);
        let gain = vec![1.0; d];
        let bias = vec![0.0; d];
        let (_, means, rstds) = reference(&x, &gain, &bias, rows, d, LAYER_NORM_EPS);
        let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
        layer_norm_stats(&x, &mut mean, &mut rstd, rows, d, LAYER_NORM_EPS);
        assert_close(&mean, &means, 1e-12, "mean");
        assert_close(&rstd, &rstds, 1e-10, "rstd");
    }
}

#[test]
fn split_backward_equals_the_joint_one() {
    let mut rng = Rng::new(42);
    let (rows, d) = (70, 130);
    let x = rng.vec(rows * d, -1.5, 1.5);
    let gain = rng.vec(d, 0.5, 1.5);
    let dy = rng.vec(rows * d, -1.0, 1.0);
    let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
    layer_norm_stats(&x, &mut mean, &mut rstd, rows, d, LAYER_NORM_EPS);
    let (mut dx, mut dg, mut db) = (vec![0.0; rows * d], vec![0.0; d], vec![0.0; d]);
    layer_norm_backward(
        &x, &gain, &mean, &rstd, &dy, &mut dx, &mut dg, &mut db, rows, d,
    );
    let mut dx2 = vec![7.0; rows * d];
    layer_norm_backward_input(&x, &gain, &mean, &rstd, &dy, &mut dx2, rows, d);
    let (mut dg2, mut db2) = (vec![7.0; d], vec![7.0; d]);
    layer_norm_backward_params(&x, &mean, &rstd, &dy, &mut dg2, &mut db2, rows, d);
    assert_eq!(dx, dx2);
    assert_eq!(dg, dg2);
    assert_eq!(db, db2);
}
