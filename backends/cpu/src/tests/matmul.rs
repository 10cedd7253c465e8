use super::{assert_close, assert_close_f32, check_grad, dot, Rng};
use crate::{matmul, matmul_acc};

/// Naive reference with the documented indexing.
#[allow(clippy::too_many_arguments)]
fn reference(
    a: &[f64],
    b: &[f64],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    at: bool,
    bt: bool,
    ab: bool,
    bb: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * m * n];
    for z in 0..batch {
        let oa = if ab { z * m * k } else { 0 };
        let ob = if bb { z * k * n } else { 0 };
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let av = if at {
                        a[oa + p * m + i]
                    } else {
                        a[oa + i * k + p]
                    };
                    let bv = if bt {
                        b[ob + j * k + p]
                    } else {
                        b[ob + p * n + j]
                    };
                    s += av * bv;
                }
                out[z * m * n + i * n + j] = s;
            }
        }
    }
    out
}

fn check_all_flags(rng: &mut Rng, batch: usize, m: usize, k: usize, n: usize) {
    for flags in 0..16 {
        let (at, bt, ab, bb) = (
            flags & 1 != 0,
            flags & 2 != 0,
            flags & 4 != 0,
            flags & 8 != 0,
        );
        let a = rng.vec(if ab { batch } else { 1 } * m * k, -1.0, 1.0);
        let b = rng.vec(if bb { batch } else { 1 } * k * n, -1.0, 1.0);
        let expect = reference(&a, &b, batch, m, k, n, at, bt, ab, bb);
        let mut out = vec![f64::NAN; batch * m * n];
        matmul(&a, &b, &mut out, batch, m, k, n, at, bt, ab, bb);
        let what = format!("matmul b{batch} m{m} k{k} n{n} at{at} bt{bt} ab{ab} bb{bb}");
        assert_close(&out, &expect, 1e-12, &what);

        // Accumulating variant adds onto existing contents.
        let base = rng.vec(batch * m * n, -1.0, 1.0);
        let mut acc = base.clone();
        matmul_acc(&a, &b, &mut acc, batch, m, k, n, at, bt, ab, bb);
        let expect_acc: Vec<f64> = base.iter().zip(&expect).map(|(x, y)| x + y).collect();
        assert_close(&acc, &expect_acc, 1e-12, &format!("{what} (acc)"));
    }
}

#[test]
fn all_transpose_and_batch_combinations() {
    let mut rng = Rng::new(1);
    check_all_flags(&mut rng, 3, 5, 7, 4);
    check_all_flags(&mut rng, 1, 5, 7, 4);
    check_all_flags(&mut rng, 2, 1, 9, 1);
    check_all_flags(&mut rng, 2, 13, 1, 11);
    check_all_flags(&mut rng, 4, 17, 19, 23);
}

#[test]
fn long_reductions_split_over_threads() {
    // One product, small output, k long enough to be split into uneven parts.
    let mut rng = Rng::new(2);
    check_all_flags(&mut rng, 1, 5, 3001, 7);
    check_all_flags(&mut rng, 1, 9, 5003, 3);
}

#[test]
fn many_large_products_run_one_per_task() {
    // Each product above gemm's threading threshold, more products than threads.
    let mut rng = Rng::new(3);
    check_all_flags(&mut rng, 6, 90, 80, 90);
}

#[test]
fn empty_inner_dimension_gives_zeros() {
    let mut out = vec![f64::NAN; 2 * 3 * 4];
    matmul::<f64>(&[], &[], &mut out, 2, 3, 0, 4, false, false, true, true);
    assert!(out.iter().all(|&v| v == 0.0));
    let mut none: Vec<f64> = vec![];
    matmul::<f64>(
        &[],
        &[1.0; 6],
        &mut none,
        2,
        0,
        3,
        2,
        false,
        false,
        true,
        false,
    );
}

#[test]
fn large_products_use_the_parallel_paths() {
    let mut rng = Rng::new(2);
    // One product above the gemm threading threshold.
    check_all_flags(&mut rng, 2, 70, 65, 67);
    // Many small products run one per task.
    let (batch, m, k, n) = (300, 9, 10, 11);
    for (at, bt) in [(false, false), (true, true), (false, true)] {
        let a = rng.vec(batch * m * k, -1.0, 1.0);
        let b = rng.vec(batch * k * n, -1.0, 1.0);
        let mut out = vec![0.0; batch * m * n];
        matmul(&a, &b, &mut out, batch, m, k, n, at, bt, true, true);
        assert_close(
            &out,
            &reference(&a, &b, batch, m, k, n, at, bt, true, true),
            1e-12,
            "batched small",
        );
    }
    // Batched a against a shared weight folds into one big product.
    let (batch, m, k, n) = (5, 33, 40, 50);
    let a = rng.vec(batch * m * k, -1.0, 1.0);
    let b = rng.vec(n * k, -1.0, 1.0);
    let mut out = vec![0.0; batch * m * n];
    matmul(&a, &b, &mut out, batch, m, k, n, false, true, true, false);
    assert_close(
        &out,
        &reference(&a, &b, batch, m, k, n, false, true, true, false),
        1e-12,
        "folded x·Wᵀ",
    );
}

#[test]
fn f32_matches_f64() {
    let mut rng = Rng::new(3);
    let (batch, m, k, n) = (3, 37, 70, 45);
    for (at, bt) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = rng.vec(batch * m * k, -1.0, 1.0);
        let b = rng.vec(k * n, -1.0, 1.0);
        let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
        let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
        let a_r: Vec<f64> = a32.iter().map(|&v| v as f64).collect();
        let b_r: Vec<f64> = b32.iter().map(|&v| v as f64).collect();
        let mut out = vec![0f32; batch * m * n];
        matmul(&a32, &b32, &mut out, batch, m, k, n, at, bt, true, false);
        assert_close_f32(
            &out,
            &reference(&a_r, &b_r, batch, m, k, n, at, bt, true, false),
            1e-5,
            "f32",
        );
    }
}

/// The backward of a linear layer `y = x·Wᵀ` (x `[batch·t, k]`, W `[n, k]`) by matmul calls:
/// `dx = dy·W` and `dW = dyᵀ·x` — checked against finite differences, documenting the recipe.
#[test]
fn linear_layer_backward_recipe() {
    let mut rng = Rng::new(4);
    let (rows, k, n) = (6, 5, 3);
    let x = rng.vec(rows * k, -1.0, 1.0);
    let w = rng.vec(n * k, -1.0, 1.0);
    let dy = rng.vec(rows * n, -1.0, 1.0);
    let fwd = |x: &[f64], w: &[f64]| {
        let mut y = vec![0.0; rows * n];
        matmul(x, w, &mut y, 1, rows, k, n, false, true, false, false);
        y
    };
    let mut dx = vec![0.0; rows * k];
    matmul(&dy, &w, &mut dx, 1, rows, n, k, false, false, false, false);
    let mut dw = vec![0.0; n * k];
    matmul(&dy, &x, &mut dw, 1, n, rows, k, true, false, false, false);
    check_grad("linear dx", &x, &dx, |x| dot(&dy, &fwd(x, &w)));
    check_grad("linear dW", &w, &dw, |w| dot(&dy, &fwd(&x, w)));

    // Attention scores s = q·kᵀ per batch item: dq = ds·k, dk = dsᵀ·q.
    let (batch, t, d) = (2, 4, 3);
    let q = rng.vec(batch * t * d, -1.0, 1.0);
    let kk = rng.vec(batch * t * d, -1.0, 1.0);
    let ds = rng.vec(batch * t * t, -1.0, 1.0);
    let scores = |q: &[f64], kk: &[f64]| {
        let mut s = vec![0.0; batch * t * t];
        matmul(q, kk, &mut s, batch, t, d, t, false, true, true, true);
        s
    };
    let mut dq = vec![0.0; batch * t * d];
    matmul(&ds, &kk, &mut dq, batch, t, t, d, false, false, true, true);
    let mut dk = vec![0.0; batch * t * d];
    matmul(&ds, &q, &mut dk, batch, t, t, d, true, false, true, true);
    check_grad("scores dq", &q, &dq, |q| dot(&ds, &scores(q, &kk)));
    check_grad("scores dk", &kk, &dk, |kk| dot(&ds, &scores(&q, kk)));
}
