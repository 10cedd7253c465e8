use super::{assert_close, check_grad, Rng};
use crate::{
    cross_entropy_diagonal, cross_entropy_diagonal_backward, cross_entropy_soft,
    cross_entropy_soft_backward, kl_rows, kl_rows_backward, l1, l1_backward, mse, mse_backward,
    smooth_l1, smooth_l1_backward,
};

fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}: {a} vs {b}");
}

fn ref_mse(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / a.len() as f64
}

fn ref_l1(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}

fn ref_smooth_l1(a: &[f64], b: &[f64], beta: f64) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let z = (x - y).abs();
            if z < beta {
                0.5 * z * z / beta
            } else {
                z - 0.5 * beta
            }
        })
        .sum::<f64>()
        / a.len() as f64
}

fn ref_log_softmax_row(l: &[f64]) -> Vec<f64> {
    let z = l.iter().map(|v| v.exp()).sum::<f64>().ln();
    l.iter().map(|v| v - z).collect()
}

fn ref_kl(lp: &[f64], lq: &[f64], rows: usize) -> f64 {
    lp.iter()
        .zip(lq)
        .map(|(a, b)| a.exp() * (a - b))
        .sum::<f64>()
        / rows as f64
}

fn ref_ce_diag(l: &[f64], rows: usize, n: usize) -> f64 {
    (0..rows)
        .map(|i| -ref_log_softmax_row(&l[i * n..(i + 1) * n])[i])
        .sum::<f64>()
        / rows as f64
}

fn ref_ce_soft(l: &[f64], t: &[f64], rows: usize, n: usize) -> f64 {
    (0..rows)
        .map(|i| {
            let ls = ref_log_softmax_row(&l[i * n..(i + 1) * n]);
            -ls.iter()
                .zip(&t[i * n..(i + 1) * n])
                .map(|(a, b)| a * b)
                .sum::<f64>()
        })
        .sum::<f64>()
        / rows as f64
}

#[test]
fn pointwise_losses() {
    let mut rng = Rng::new(60);
    for n in [1, 105, 50_000] {
        let a = rng.vec(n, -2.0, 2.0);
        // Differences bounded away from 0 and from ±beta (the kinks).
        let b: Vec<f64> = a
            .iter()
            .zip(rng.vec_away(n, 0.05, 1.5))
            .map(|(x, d)| x - d)
            .collect();
        let b: Vec<f64> = b
            .iter()
            .zip(&a)
            .map(|(&y, &x)| {
                if ((x - y).abs() - 0.5).abs() < 0.02 {
                    x - 0.3
                } else {
                    y
                }
            })
            .collect();
        close(mse(&a, &b), ref_mse(&a, &b), 1e-13, "mse");
        close(l1(&a, &b), ref_l1(&a, &b), 1e-13, "l1");
        close(
            smooth_l1(&a, &b, 0.5),
            ref_smooth_l1(&a, &b, 0.5),
            1e-13,
            "smooth_l1",
        );
        close(
            smooth_l1(&a, &b, 0.0),
            ref_l1(&a, &b),
            1e-13,
            "smooth_l1 beta 0",
        );
        if n > 200 {
            continue;
        }
        let g = 1.7;
        let (mut da, mut db) = (vec![f64::NAN; n], vec![f64::NAN; n]);
        mse_backward(&a, &b, g, Some(&mut da), Some(&mut db));
        check_grad("mse da", &a, &da, |a| g * ref_mse(a, &b));
        check_grad("mse db", &b, &db, |b| g * ref_mse(&a, b));
        l1_backward(&a, &b, g, Some(&mut da), Some(&mut db));
        check_grad("l1 da", &a, &da, |a| g * ref_l1(a, &b));
        check_grad("l1 db", &b, &db, |b| g * ref_l1(&a, b));
        for beta in [0.5, 0.0] {
            smooth_l1_backward(&a, &b, beta, g, Some(&mut da), Some(&mut db));
            check_grad("smooth_l1 da", &a, &da, |a| g * ref_smooth_l1(a, &b, beta));
            check_grad("smooth_l1 db", &b, &db, |b| g * ref_smooth_l1(&a, b, beta));
        }
        let mut only = vec![0.0; n];
        mse_backward(&a, &b, g, None, Some(&mut only));
        mse_backward(&a, &b, g, Some(&mut da), None);
        assert_close(
            &only,
            &da.iter().map(|v| -v).collect::<Vec<_>>(),
            1e-15,
            "db = -da",
        );
    }
}

fn log_softmax_rows(x: &[f64], rows: usize, n: usize) -> Vec<f64> {
    (0..rows)
        .flat_map(|i| ref_log_softmax_row(&x[i * n..(i + 1) * n]))
        .collect()
}

#[test]
fn kl_rows_forward_and_backward() {
    let mut rng = Rng::new(61);
    for (rows, n) in [(3, 7), (1, 5), (4, 1), (300, 130)] {
        let lp = log_softmax_rows(&rng.vec(rows * n, -2.0, 2.0), rows, n);
        let lq = log_softmax_rows(&rng.vec(rows * n, -2.0, 2.0), rows, n);
        close(
            kl_rows(&lp, &lq, rows, n),
            ref_kl(&lp, &lq, rows),
            1e-12,
            "kl_rows",
        );
        if rows * n > 200 {
            continue;
        }
        let g = -0.8;
        let (mut dp, mut dq) = (vec![f64::NAN; lp.len()], vec![f64::NAN; lp.len()]);
        kl_rows_backward(&lp, &lq, rows, n, g, Some(&mut dp), Some(&mut dq));
        // The inputs are free variables here (not constrained to be normalised).
        check_grad("kl dlog_p", &lp, &dp, |lp| g * ref_kl(lp, &lq, rows));
        check_grad("kl dlog_q", &lq, &dq, |lq| g * ref_kl(&lp, lq, rows));
    }
    // p = 0 contributes nothing (no NaN from 0·(−∞)).
    let lp = [0.0, f64::NEG_INFINITY];
    let lq = [-0.1, -2.0];
    close(kl_rows(&lp, &lq, 1, 2), 0.1, 1e-15, "kl with p = 0");
    let (mut dp, mut dq) = ([f64::NAN; 2], [f64::NAN; 2]);
    kl_rows_backward(&lp, &lq, 1, 2, 1.0, Some(&mut dp), Some(&mut dq));
    assert_eq!(dp[1], 0.0);
    assert_eq!(dq[1], 0.0);
}

#[test]
fn cross_entropy_diagonal_forward_and_backward() {
    let mut rng = Rng::new(62);
    for (rows, n) in [(5, 5), (3, 7), (1, 1), (1, 4), (256, 256)] {
        let l = rng.vec(rows * n, -3.0, 3.0);
        close(
            cross_entropy_diagonal(&l, rows, n),
            ref_ce_diag(&l, rows, n),
            1e-12,
            "ce diag",
        );
        if rows * n > 200 {
            continue;
        }
        let g = 1.3;
        let mut dl = vec![f64::NAN; l.len()];
        cross_entropy_diagonal_backward(&l, rows, n, g, &mut dl);
        check_grad("ce diag dlogits", &l, &dl, |l| g * ref_ce_diag(l, rows, n));
    }
}

#[test]
#[should_panic(expected = "rows <= n")]
fn cross_entropy_diagonal_needs_enough_columns() {
    cross_entropy_diagonal(&[0.0; 6], 3, 2);
}

#[test]
fn cross_entropy_soft_forward_and_backward() {
    let mut rng = Rng::new(63);
    for (rows, n) in [(4, 6), (1, 3), (3, 1), (300, 130)] {
        let l = rng.vec(rows * n, -3.0, 3.0);
        // Targets: a softmax of random logits (rows sum to 1) ...
        let t: Vec<f64> = log_softmax_rows(&rng.vec(rows * n, -2.0, 2.0), rows, n)
            .iter()
            .map(|v| v.exp())
            .collect();
        close(
            cross_entropy_soft(&l, &t, rows, n),
            ref_ce_soft(&l, &t, rows, n),
            1e-12,
            "ce soft",
        );
        if rows * n > 200 {
            continue;
        }
        // ... and arbitrary non-negative weights (rows not normalised), for the target gradient.
        let t2 = rng.vec(rows * n, 0.0, 1.0);
        for t in [&t, &t2] {
            let g = 0.6;
            let (mut dl, mut dt) = (vec![f64::NAN; l.len()], vec![f64::NAN; l.len()]);
            cross_entropy_soft_backward(&l, t, rows, n, g, Some(&mut dl), Some(&mut dt));
            check_grad("ce soft dlogits", &l, &dl, |l| {
                g * ref_ce_soft(l, t, rows, n)
            });
            check_grad("ce soft dtarget", t, &dt, |t| {
                g * ref_ce_soft(&l, t, rows, n)
            });
        }
    }
}

#[test]
fn f32_losses_accumulate_accurately() {
    let mut rng = Rng::new(64);
    let n = 200_000;
    let a = rng.vec(n, -1.0, 1.0);
    let b = rng.vec(n, -1.0, 1.0);
    let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
    let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
    let ar: Vec<f64> = a32.iter().map(|&v| v as f64).collect();
    let br: Vec<f64> = b32.iter().map(|&v| v as f64).collect();
    close(mse(&a32, &b32) as f64, ref_mse(&ar, &br), 1e-7, "f32 mse");
    close(l1(&a32, &b32) as f64, ref_l1(&ar, &br), 1e-7, "f32 l1");
}
