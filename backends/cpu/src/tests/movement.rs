use super::{assert_close, check_vjp, strides, unravel, Rng};
use crate::{concat, embedding, embedding_backward, gather_rows, permute, scatter_add_rows, split};

fn permute_reference(x: &[f64], shape: &[usize], perm: &[usize]) -> Vec<f64> {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let st = strides(shape);
    (0..x.len())
        .map(|i| {
            let idx = unravel(i, &out_shape);
            let src: usize = perm.iter().zip(&idx).map(|(&p, &v)| v * st[p]).sum();
            x[src]
        })
        .collect()
}

fn permutations(r: usize) -> Vec<Vec<usize>> {
    if r == 0 {
        return vec![vec![]];
    }
    let mut out = vec![];
    for p in permutations(r - 1) {
        for pos in 0..=p.len() {
            let mut q = p.clone();
            q.insert(pos, r - 1);
            out.push(q);
        }
    }
    out
}

#[test]
fn permute_all_4d_permutations() {
    let mut rng = Rng::new(50);
    for shape in [[2, 3, 4, 5], [3, 1, 7, 2], [1, 4, 1, 6]] {
        let x = rng.vec(shape.iter().product(), -1.0, 1.0);
        for perm in permutations(4) {
            let mut out = vec![f64::NAN; x.len()];
            permute(&x, &shape, &perm, &mut out);
            assert_eq!(
                out,
                permute_reference(&x, &shape, &perm),
                "{shape:?} {perm:?}"
            );
        }
    }
}

#[test]
fn permute_large_and_other_ranks() {
    let mut rng = Rng::new(51);
    let cases: &[(&[usize], &[usize])] = &[
        (&[300, 130], &[1, 0]),
        (&[4, 300, 130], &[0, 2, 1]),
        (&[8, 77, 8, 64], &[0, 2, 1, 3]),
        (&[8, 8, 77, 64], &[0, 2, 1, 3]),
        (&[20, 30, 40], &[2, 0, 1]),
        (&[20, 30, 40], &[1, 2, 0]),
        (&[5], &[0]),
        (&[], &[]),
        (&[2, 3, 2, 3, 2], &[4, 2, 0, 3, 1]),
    ];
    for &(shape, perm) in cases {
        let x = rng.vec(shape.iter().product(), -1.0, 1.0);
        let mut out = vec![f64::NAN; x.len()];
        permute(&x, shape, perm, &mut out);
        assert_eq!(
            out,
            permute_reference(&x, shape, perm),
            "{shape:?} {perm:?}"
        );
    }
    // Works for non-float element types too.
    let ids: Vec<usize> = (0..6).collect();
    let mut t = vec![0usize; 6];
    permute(&ids, &[2, 3], &[1, 0], &mut t);
    assert_eq!(t, [0, 3, 1, 4, 2, 5]);
}

#[test]
fn concat_and_split() {
    let mut rng = Rng::new(52);
    for (outer, sizes, inner) in [
        (3usize, vec![2usize, 5, 1], 4usize),
        (1, vec![3, 0, 4], 1),
        (5, vec![1], 3),
        (200, vec![30, 40, 60], 2),
    ] {
        let parts: Vec<Vec<f64>> = sizes
            .iter()
            .map(|&s| rng.vec(outer * s * inner, -1.0, 1.0))
            .collect();
        let total: usize = sizes.iter().sum();
        let refs: Vec<&[f64]> = parts.iter().map(|p| p.as_slice()).collect();
        let mut out = vec![f64::NAN; outer * total * inner];
        concat(&refs, outer, &sizes, inner, &mut out);
        // Reference: out[o, S_p + j, i] = parts[p][o, j, i].
        let mut start = 0;
        for (p, &s) in sizes.iter().enumerate() {
            for o in 0..outer {
                for j in 0..s {
                    for i in 0..inner {
                        assert_eq!(
                            out[(o * total + start + j) * inner + i],
                            parts[p][(o * s + j) * inner + i]
                        );
                    }
                }
            }
            start += s;
        }
        let mut back: Vec<Vec<f64>> = sizes
            .iter()
            .map(|&s| vec![f64::NAN; outer * s * inner])
            .collect();
        let mut outs: Vec<&mut [f64]> = back.iter_mut().map(|v| v.as_mut_slice()).collect();
        split(&out, outer, &sizes, inner, &mut outs);
        assert_eq!(back, parts);
    }
}

#[test]
fn gather_and_scatter_add_rows() {
    let mut rng = Rng::new(53);
    for (batch, t, k, w) in [(3, 7, 4, 5), (1, 5, 9, 3), (2, 300, 200, 90)] {
        let x = rng.vec(batch * t * w, -1.0, 1.0);
        let index: Vec<usize> = (0..batch * k).map(|_| rng.below(t)).collect();
        let gather = |x: &[f64]| {
            let mut out = vec![f64::NAN; batch * k * w];
            gather_rows(x, &index, &mut out, batch, t, k, w);
            out
        };
        let out = gather(&x);
        for b in 0..batch {
            for j in 0..k {
                let src = index[b * k + j];
                assert_eq!(
                    &out[(b * k + j) * w..(b * k + j + 1) * w],
                    &x[(b * t + src) * w..(b * t + src + 1) * w]
                );
            }
        }
        let dout = rng.vec(batch * k * w, -1.0, 1.0);
        let mut dx = vec![0.0; batch * t * w];
        scatter_add_rows(&dout, &index, &mut dx, batch, t, k, w);
        // Naive scatter-add reference.
        let mut expect = vec![0.0; batch * t * w];
        for b in 0..batch {
            for j in 0..k {
                let dst = index[b * k + j];
                for i in 0..w {
                    expect[(b * t + dst) * w + i] += dout[(b * k + j) * w + i];
                }
            }
        }
        assert_close(&dx, &expect, 1e-14, "scatter_add_rows");
        if x.len() < 1000 {
            check_vjp("gather_rows", &x, &dout, &dx, gather);
        }
        // Accumulates onto existing contents.
        let mut twice = dx.clone();
        scatter_add_rows(&dout, &index, &mut twice, batch, t, k, w);
        let doubled: Vec<f64> = dx.iter().map(|v| 2.0 * v).collect();
        assert_close(&twice, &doubled, 1e-14, "scatter accumulates");
    }
}

#[test]
#[should_panic(expected = "out of range")]
fn gather_rejects_bad_index() {
    let mut out = vec![0.0; 2];
    gather_rows(&[0.0; 6], &[3usize], &mut out, 1, 3, 1, 2);
}

#[test]
fn embedding_and_backward() {
    let mut rng = Rng::new(54);
    for (v, w, n) in [(11, 5, 9), (3, 1, 20), (1000, 64, 800)] {
        let table = rng.vec(v * w, -1.0, 1.0);
        let ids: Vec<usize> = (0..n).map(|_| rng.below(v)).collect();
        let lookup = |table: &[f64]| {
            let mut out = vec![f64::NAN; n * w];
            embedding(table, &ids, &mut out, v, w);
            out
        };
        let out = lookup(&table);
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(&out[i * w..(i + 1) * w], &table[id * w..(id + 1) * w]);
        }
        let dout = rng.vec(n * w, -1.0, 1.0);
        let mut dtable = vec![0.0; v * w];
        embedding_backward(&dout, &ids, &mut dtable, v, w);
        let mut expect = vec![0.0; v * w];
        for (i, &id) in ids.iter().enumerate() {
            for j in 0..w {
                expect[id * w + j] += dout[i * w + j];
            }
        }
        assert_close(&dtable, &expect, 1e-14, "embedding_backward");
        if table.len() < 1000 {
            check_vjp("embedding", &table, &dout, &dtable, lookup);
        }
    }
}

/// The backward of `permute(perm)` is `permute` by the inverse permutation (applied to the
/// output shape), and the backward of `concat` is `split`: checked as vector-Jacobian products.
#[test]
fn movement_backwards_match_finite_differences() {
    let mut rng = Rng::new(55);
    let shape = [2, 3, 4, 5];
    let perm = [0, 2, 3, 1];
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let mut inverse = [0; 4];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    let x = rng.vec(120, -1.0, 1.0);
    let dy = rng.vec(120, -1.0, 1.0);
    let mut dx = vec![f64::NAN; 120];
    permute(&dy, &out_shape, &inverse, &mut dx);
    check_vjp("permute", &x, &dy, &dx, |x| {
        let mut y = vec![0.0; x.len()];
        permute(x, &shape, &perm, &mut y);
        y
    });

    let (outer, sizes, inner) = (3, [2, 4], 5);
    let a = rng.vec(outer * sizes[0] * inner, -1.0, 1.0);
    let b = rng.vec(outer * sizes[1] * inner, -1.0, 1.0);
    let dy = rng.vec(outer * 6 * inner, -1.0, 1.0);
    let (mut da, mut db) = (vec![f64::NAN; a.len()], vec![f64::NAN; b.len()]);
    split(&dy, outer, &sizes, inner, &mut [&mut da, &mut db]);
    let cat = |a: &[f64], b: &[f64]| {
        let mut y = vec![0.0; dy.len()];
        concat(&[a, b], outer, &sizes, inner, &mut y);
        y
    };
    check_vjp("concat a", &a, &dy, &da, |a| cat(a, &b));
    check_vjp("concat b", &b, &dy, &db, |b| cat(&a, b));
}

#[test]
fn float_indices_index_like_integers() {
    let table: Vec<f64> = (0..12).map(|v| v as f64).collect();
    let (mut a, mut b) = (vec![0.0; 9], vec![0.0; 9]);
    embedding(&table, &[2usize, 0, 3], &mut a, 4, 3);
    embedding(&table, &[2.0f32, 0.0, 3.0], &mut b, 4, 3);
    assert_eq!(a, b);
}

#[test]
#[should_panic(expected = "not a non-negative integer")]
fn fractional_float_index_panics() {
    let mut out = vec![0.0; 3];
    embedding(&[0.0f64; 12], &[1.5f32], &mut out, 4, 3);
}
