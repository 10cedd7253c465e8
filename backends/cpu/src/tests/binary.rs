use super::{assert_close, check_vjp, strides, unravel, Rng};
use crate::{
    add, binary, binary_backward, broadcast_shape, broadcast_to, div, mul, sub, sum_to, BinaryOp,
};

/// Flat index in `shape` (aligned right) of the output multi-index `idx`, with broadcasting.
fn bcast_index(idx: &[usize], shape: &[usize]) -> usize {
    let lead = idx.len() - shape.len();
    let st = strides(shape);
    shape
        .iter()
        .enumerate()
        .map(|(d, &s)| if s == 1 { 0 } else { idx[lead + d] * st[d] })
        .sum()
}

fn reference(
    op: BinaryOp,
    a: &[f64],
    ash: &[usize],
    b: &[f64],
    bsh: &[usize],
) -> (Vec<f64>, Vec<usize>) {
    let osh = broadcast_shape(ash, bsh).unwrap();
    let n: usize = osh.iter().product();
    let out = (0..n)
        .map(|i| {
            let idx = unravel(i, &osh);
            let (x, y) = (a[bcast_index(&idx, ash)], b[bcast_index(&idx, bsh)]);
            match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                BinaryOp::Div => x / y,
                BinaryOp::Max => x.max(y),
                BinaryOp::Min => x.min(y),
                BinaryOp::Gt => (x > y) as u8 as f64,
                BinaryOp::Ge => (x >= y) as u8 as f64,
                BinaryOp::Lt => (x < y) as u8 as f64,
                BinaryOp::Le => (x <= y) as u8 as f64,
                BinaryOp::Eq => (x == y) as u8 as f64,
                BinaryOp::Ne => (x != y) as u8 as f64,
            }
        })
        .collect();
    (out, osh)
}

fn sum_to_reference(x: &[f64], xsh: &[usize], osh: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; osh.iter().product()];
    for (i, &v) in x.iter().enumerate() {
        out[bcast_index(&unravel(i, xsh), osh)] += v;
    }
    out
}

const CASES: &[(&[usize], &[usize])] = &[
    (&[3, 5, 7], &[3, 5, 7]),
    (&[3, 5, 7], &[7]),
    (&[7], &[3, 5, 7]),
    (&[3, 1, 7], &[5, 1]),
    (&[3, 5, 1], &[1, 5, 7]),
    (&[3, 5, 7], &[]),
    (&[1], &[3, 5, 7]),
    (&[3, 5, 7], &[3, 1, 1]),
    (&[2, 1, 4, 1], &[3, 1, 5]),
    (&[1, 1], &[1]),
    (&[300, 130], &[130]),
    (&[300, 130], &[300, 1]),
    (&[6, 70, 90], &[6, 1, 90]),
    (&[40000], &[1]),
];

const ALL: [BinaryOp; 12] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::Gt,
    BinaryOp::Ge,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Eq,
    BinaryOp::Ne,
];

#[test]
fn comparisons_and_ties() {
    // Equal operands: max/min send the gradient to the first, comparisons have none.
    let a = [1.0, 2.0, 3.0, f64::NAN];
    let b = [1.0, 3.0, 2.0, 0.0];
    let mut out = [0.0; 4];
    binary(BinaryOp::Ge, &a, &[4], &b, &[4], &mut out, &[4]);
    assert_eq!(out, [1.0, 0.0, 1.0, 0.0]);
    binary(BinaryOp::Max, &a, &[4], &b, &[4], &mut out, &[4]);
    assert_eq!(&out[..3], &[1.0, 3.0, 3.0]);
    assert!(out[3].is_nan(), "max propagates NaN as PyTorch does");
    let dy = [1.0; 4];
    let (mut da, mut db) = ([9.0; 4], [9.0; 4]);
    binary_backward(
        BinaryOp::Max,
        &a[..3],
        &[3],
        &b[..3],
        &[3],
        &dy[..3],
        &[3],
        Some(&mut da[..3]),
        Some(&mut db[..3]),
    );
    assert_eq!(
        (&da[..3], &db[..3]),
        (&[1.0, 0.0, 1.0][..], &[0.0, 1.0, 0.0][..])
    );
    binary_backward(
        BinaryOp::Lt,
        &a,
        &[4],
        &b,
        &[4],
        &dy,
        &[4],
        Some(&mut da),
        Some(&mut db),
    );
    assert_eq!((da, db), ([0.0; 4], [0.0; 4]));
    let mut sel = [0.0; 3];
    crate::select(
        &[1.0, 0.0, -2.0],
        &[1.0, 2.0, 3.0],
        &[7.0, 8.0, 9.0],
        &mut sel,
    );
    assert_eq!(sel, [1.0, 8.0, 3.0]);
}

#[test]
fn broadcast_shapes() {
    assert_eq!(broadcast_shape(&[3, 1, 7], &[5, 1]), Some(vec![3, 5, 7]));
    assert_eq!(broadcast_shape(&[], &[2, 3]), Some(vec![2, 3]));
    assert_eq!(broadcast_shape(&[2, 3], &[3, 2]), None);
}

#[test]
fn forward_matches_reference() {
    let mut rng = Rng::new(10);
    for &(ash, bsh) in CASES {
        let a = rng.vec(ash.iter().product(), -2.0, 2.0);
        let b = rng.vec_away(bsh.iter().product(), 0.5, 2.0);
        for op in ALL {
            let (expect, osh) = reference(op, &a, ash, &b, bsh);
            let mut out = vec![f64::NAN; expect.len()];
            binary(op, &a, ash, &b, bsh, &mut out, &osh);
            assert_close(&out, &expect, 1e-15, &format!("{op:?} {ash:?} {bsh:?}"));
        }
        let (expect, osh) = reference(BinaryOp::Add, &a, ash, &b, bsh);
        let mut out = vec![0.0; expect.len()];
        add(&a, ash, &b, bsh, &mut out, &osh);
        assert_close(&out, &expect, 1e-15, "add");
        sub(&a, ash, &b, bsh, &mut out, &osh);
        assert_close(
            &out,
            &reference(BinaryOp::Sub, &a, ash, &b, bsh).0,
            1e-15,
            "sub",
        );
        mul(&a, ash, &b, bsh, &mut out, &osh);
        assert_close(
            &out,
            &reference(BinaryOp::Mul, &a, ash, &b, bsh).0,
            1e-15,
            "mul",
        );
        div(&a, ash, &b, bsh, &mut out, &osh);
        assert_close(
            &out,
            &reference(BinaryOp::Div, &a, ash, &b, bsh).0,
            1e-15,
            "div",
        );
    }
}

#[test]
#[should_panic(expected = "do not broadcast")]
fn incompatible_shapes_panic() {
    let mut out = vec![0.0; 6];
    add(&[0.0; 6], &[2, 3], &[0.0; 6], &[3, 2], &mut out, &[2, 3]);
}

#[test]
fn sum_to_matches_reference() {
    let mut rng = Rng::new(11);
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 5, 7], &[7]),
        (&[3, 5, 7], &[5, 1]),
        (&[3, 5, 7], &[3, 1, 7]),
        (&[3, 5, 7], &[3, 5, 1]),
        (&[3, 5, 7], &[1, 5, 7]),
        (&[3, 5, 7], &[]),
        (&[3, 5, 7], &[1]),
        (&[3, 5, 7], &[3, 5, 7]),
        (&[1, 5, 7], &[5, 7]),
        (&[2, 3, 4, 5], &[3, 1, 5]),
        (&[2, 3, 4, 5], &[2, 1, 4, 1]),
        // Parallel paths: bias gradient, few columns, row sums, kept leading dimension, total.
        (&[300, 130], &[130]),
        (&[6000, 7], &[7]),
        (&[300, 130], &[300, 1]),
        (&[40, 30, 50], &[40, 1, 50]),
        (&[40, 30, 50], &[40, 30, 1]),
        (&[40000], &[1]),
    ];
    for &(xsh, osh) in cases {
        let x = rng.vec(xsh.iter().product(), -1.0, 1.0);
        let expect = sum_to_reference(&x, xsh, osh);
        let mut out = vec![f64::NAN; expect.len()];
        sum_to(&x, xsh, &mut out, osh);
        assert_close(&out, &expect, 1e-12, &format!("sum_to {xsh:?} -> {osh:?}"));
    }
}

#[test]
fn backward_matches_finite_differences() {
    let mut rng = Rng::new(12);
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 5, 7], &[3, 5, 7]),
        (&[3, 5, 7], &[7]),
        (&[3, 1, 7], &[5, 1]),
        (&[4], &[3, 1]),
        (&[2, 3], &[]),
        (&[1], &[2, 3]),
    ];
    for &(ash, bsh) in cases {
        let a = rng.vec(ash.iter().product(), -2.0, 2.0);
        let b = rng.vec_away(bsh.iter().product(), 0.5, 2.0);
        let osh = broadcast_shape(ash, bsh).unwrap();
        let dy = rng.vec(osh.iter().product(), -1.0, 1.0);
        for op in [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Max,
            BinaryOp::Min,
        ] {
            let mut da = vec![f64::NAN; a.len()];
            let mut db = vec![f64::NAN; b.len()];
            binary_backward(
                op,
                &a,
                ash,
                &b,
                bsh,
                &dy,
                &osh,
                Some(&mut da),
                Some(&mut db),
            );
            let what = format!("{op:?} {ash:?} {bsh:?}");
            check_vjp(&format!("{what} da"), &a, &dy, &da, |a| {
                reference(op, a, ash, &b, bsh).0
            });
            check_vjp(&format!("{what} db"), &b, &dy, &db, |b| {
                reference(op, &a, ash, b, bsh).0
            });
            // Requesting one gradient only gives the same values.
            let mut db_only = vec![0.0; b.len()];
            binary_backward(op, &a, ash, &b, bsh, &dy, &osh, None, Some(&mut db_only));
            assert_eq!(db_only, db);
        }
    }
}

#[test]
fn f32_bias_add() {
    let mut rng = Rng::new(13);
    let (r, c) = (257, 129);
    let x = rng.vec(r * c, -1.0, 1.0);
    let bias = rng.vec(c, -1.0, 1.0);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let b32: Vec<f32> = bias.iter().map(|&v| v as f32).collect();
    let mut out = vec![0f32; r * c];
    add(&x32, &[r, c], &b32, &[c], &mut out, &[r, c]);
    let (expect, _) = reference(BinaryOp::Add, &x, &[r, c], &bias, &[c]);
    super::assert_close_f32(&out, &expect, 1e-6, "f32 bias add");
}

#[test]
fn broadcast_to_is_the_adjoint_of_sum_to() {
    // <broadcast_to(x), y> = <x, sum_to(y)> for every x, y.
    let mut rng = Rng::new(77);
    for (xs, os) in [
        (vec![2, 1, 3], vec![4, 2, 5, 3]),
        (vec![1, 4], vec![3, 4]),
        (vec![], vec![2, 3]),
        (vec![3, 1], vec![3, 7]),
    ] {
        let x = rng.vec(xs.iter().product(), -1.0, 1.0);
        let y = rng.vec(os.iter().product(), -1.0, 1.0);
        let mut bx = vec![f64::NAN; y.len()];
        broadcast_to(&x, &xs, &mut bx, &os);
        let mut sy = vec![f64::NAN; x.len()];
        sum_to(&y, &os, &mut sy, &xs);
        let lhs: f64 = bx.iter().zip(&y).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&sy).map(|(a, b)| a * b).sum();
        assert!(
            (lhs - rhs).abs() < 1e-12,
            "{xs:?} -> {os:?}: {lhs} vs {rhs}"
        );
        // And each element is the element it repeats.
        let xst = strides(&xs);
        for (i, &v) in bx.iter().enumerate() {
            let idx = unravel(i, &os);
            let lead = os.len() - xs.len();
            let j: usize = (0..xs.len())
                .map(|d| {
                    if xs[d] == 1 {
                        0
                    } else {
                        idx[lead + d] * xst[d]
                    }
                })
                .sum();
            assert_eq!(v, x[j]);
        }
    }
}
