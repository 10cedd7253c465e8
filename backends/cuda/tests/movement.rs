//! Broadcasting binary functions, strided copies (permute, broadcast, slice, concat) and
//! sum_to (kernels/binary.cu), emulated, against kdc-cpu.

mod common;

use common::{check, run_checked, run_once, Rng};
use kdc_backend::Binary;
use kdc_cuda::kernels::BinaryCode;
use kdc_cuda::launch;

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// (a, b) shape pairs: equal, scalar, a bias row, a column, both broadcast, rank mismatch.
fn shape_pairs() -> Vec<(Vec<usize>, Vec<usize>)> {
    vec![
        (vec![7], vec![7]),
        (vec![33, 5], vec![]),
        (vec![], vec![3, 7]),
        (vec![5, 33], vec![33]),
        (vec![7, 1], vec![7, 9]),
        (vec![3, 1, 5], vec![4, 1]),
        (vec![2, 3, 4, 5], vec![3, 1, 5]),
        (vec![1], vec![257]),
    ]
}

#[test]
fn binary_functions_broadcast_like_kdc_cpu() {
    let mut rng = Rng::new(20);
    for (sa, sb) in shape_pairs() {
        let so = kdc_backend::broadcast_shapes(&sa, &sb).unwrap();
        // Small integers: ties and equal values for max/min and the comparisons.
        let a: Vec<f32> = rng
            .vec(numel(&sa), -3.0, 3.0)
            .iter()
            .map(|v| v.round())
            .collect();
        let b: Vec<f32> = rng
            .vec(numel(&sb), -3.0, 3.0)
            .iter()
            .map(|v| v.round() + 0.5 * (v.round() == 0.0) as u8 as f32)
            .collect();
        for f in Binary::ALL {
            let mut want = vec![0f32; numel(&so)];
            kdc_cpu::binary(f.into(), &a, &sa, &b, &sb, &mut want, &so);
            let got = run_once(
                &[launch::binary(BinaryCode::from(f), &sa, &sb, &so)],
                &[&a, &b],
                &[numel(&so)],
            );
            check(&format!("binary {f:?} {sa:?} {sb:?}"), &got[0], &want, 0.0);
        }
    }
}

#[test]
fn sum_to_and_broadcast_to_match_kdc_cpu() {
    let mut rng = Rng::new(21);
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![7], vec![7]),
        (vec![33, 5], vec![]),
        (vec![33, 5], vec![5]),
        (vec![33, 5], vec![33, 1]),
        (vec![2, 3, 4, 5], vec![3, 1, 5]),
        (vec![2, 3, 4, 5], vec![2, 1, 4, 1]),
        (vec![300], vec![1]),
    ];
    for (xs, os) in cases {
        let x = rng.vec(numel(&xs), -1.0, 1.0);
        let mut want = vec![0f32; numel(&os)];
        kdc_cpu::sum_to(&x, &xs, &mut want, &os);
        let got = run_checked(&[launch::sum_to(&xs, &os)], &[&x], &[numel(&os)]);
        check(&format!("sum_to {xs:?} -> {os:?}"), &got[0], &want, 1e-6);

        let small = rng.vec(numel(&os), -1.0, 1.0);
        let mut want = vec![0f32; numel(&xs)];
        kdc_cpu::broadcast_to(&small, &os, &mut want, &xs);
        let got = run_once(&[launch::broadcast_to(&os, &xs)], &[&small], &[numel(&xs)]);
        check(
            &format!("broadcast_to {os:?} -> {xs:?}"),
            &got[0],
            &want,
            0.0,
        );
    }
}

#[test]
fn permute_slice_and_concat_match_kdc_cpu() {
    let mut rng = Rng::new(22);
    for (shape, perm) in [
        (vec![7, 33], vec![1, 0]),
        (vec![2, 3, 4, 5], vec![0, 2, 1, 3]),
        (vec![2, 3, 4, 5], vec![3, 1, 0, 2]),
        (vec![1, 7, 1], vec![2, 0, 1]),
    ] {
        let x = rng.vec(numel(&shape), -1.0, 1.0);
        let mut want = vec![0f32; x.len()];
        kdc_cpu::permute(&x, &shape, &perm, &mut want);
        let got = run_once(&[launch::permute(&shape, &perm)], &[&x], &[x.len()]);
        check(&format!("permute {shape:?} {perm:?}"), &got[0], &want, 0.0);
    }
    // Slice and its backward are each other's adjoint: compare with kdc-cpu's split, which
    // cuts an axis into consecutive parts.
    let shape = [3usize, 10, 4];
    let x = rng.vec(numel(&shape), -1.0, 1.0);
    let (outer, inner) = (3, 4);
    let sizes = [2usize, 5, 3];
    let mut parts: Vec<Vec<f32>> = sizes
        .iter()
        .map(|s| vec![0f32; outer * s * inner])
        .collect();
    {
        let mut refs: Vec<&mut [f32]> = parts.iter_mut().map(|p| p.as_mut_slice()).collect();
        kdc_cpu::split(&x, outer, &sizes, inner, &mut refs);
    }
    let got = run_once(
        &[launch::slice(&shape, 1, 2, 5)],
        &[&x],
        &[outer * 5 * inner],
    );
    check(
        "slice [3, 10, 4] axis 1 from 2 len 5",
        &got[0],
        &parts[1],
        0.0,
    );
    let got = run_once(
        &launch::slice_backward(&[3, 5, 4], 1, 2, &shape),
        &[&parts[1]],
        &[x.len()],
    );
    let mut want = vec![0f32; x.len()];
    let zeros0 = vec![0f32; parts[0].len()];
    let zeros2 = vec![0f32; parts[2].len()];
    kdc_cpu::concat(
        &[&zeros0, &parts[1], &zeros2],
        outer,
        &sizes,
        inner,
        &mut want,
    );
    check("slice backward", &got[0], &want, 0.0);

    let a = rng.vec(3 * 2 * 4, -1.0, 1.0);
    let b = rng.vec(3 * 7 * 4, -1.0, 1.0);
    let mut want = vec![0f32; 3 * 9 * 4];
    kdc_cpu::concat(&[&a, &b], 3, &[2, 7], 4, &mut want);
    let got = run_once(
        &launch::concat(&[3, 2, 4], &[3, 7, 4], 1),
        &[&a, &b],
        &[want.len()],
    );
    check("concat axis 1", &got[0], &want, 0.0);
}
