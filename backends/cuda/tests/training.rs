//! Layer norm, the diagonal cross-entropy, AdamW and the gradient norm, the index operations,
//! the tiled matrix product and the bf16 conversions, emulated, against kdc-cpu.

mod common;

use common::{check, run_checked, run_once, Rng, SIZES};
use kdc_cuda::emu::{DeviceBuf, Schedule};
use kdc_cuda::launch;

#[test]
fn layer_norm_forward_backward_and_parameter_grads_match_kdc_cpu() {
    let mut rng = Rng::new(30);
    for (rows, d) in [(1, 1), (3, 7), (5, 33), (2, 257), (37, 20)] {
        let eps = 1e-5f32;
        let x = rng.vec(rows * d, -3.0, 3.0);
        let gain = rng.vec(d, 0.5, 1.5);
        let bias = rng.vec(d, -0.5, 0.5);
        let dy = rng.vec(rows * d, -1.0, 1.0);
        let what = format!("[{rows}, {d}]");

        let (mut out, mut mean, mut rstd) =
            (vec![0f32; rows * d], vec![0f32; rows], vec![0f32; rows]);
        kdc_cpu::layer_norm(
            &x, &gain, &bias, &mut out, &mut mean, &mut rstd, rows, d, eps,
        );
        let got = run_checked(
            &[launch::layer_norm(rows, d, eps)],
            &[&x, &gain, &bias],
            &[rows * d, rows, rows],
        );
        check(&format!("layer_norm {what}"), &got[0], &out, 1e-5);
        check(&format!("layer_norm mean {what}"), &got[1], &mean, 1e-6);
        check(&format!("layer_norm rstd {what}"), &got[2], &rstd, 1e-5);

        let mut dx = vec![0f32; rows * d];
        kdc_cpu::layer_norm_backward_input(&x, &gain, &mean, &rstd, &dy, &mut dx, rows, d);
        let got = run_checked(
            &[launch::layer_norm_backward_input(rows, d, eps)],
            &[&x, &gain, &dy],
            &[rows * d],
        );
        check(
            &format!("layer_norm backward input {what}"),
            &got[0],
            &dx,
            1e-5,
        );

        let (mut dgain, mut dbias) = (vec![0f32; d], vec![0f32; d]);
        kdc_cpu::layer_norm_backward_params(&x, &mean, &rstd, &dy, &mut dgain, &mut dbias, rows, d);
        let want: Vec<f32> = dgain.iter().chain(&dbias).copied().collect();
        let got = run_checked(
            &launch::layer_norm_param_grads(rows, d, eps),
            &[&x, &dy],
            &[2 * d, 2 * rows],
        );
        check(
            &format!("layer_norm param grads {what}"),
            &got[0],
            &want,
            1e-5,
        );
    }
}

#[test]
fn cross_entropy_diagonal_and_its_gradient_match_kdc_cpu() {
    let mut rng = Rng::new(31);
    for (rows, n) in [(1, 1), (3, 7), (33, 33), (5, 257), (40, 40)] {
        let logits = rng.vec(rows * n, -10.0, 10.0);
        let g = [0.7f32];
        let want = kdc_cpu::cross_entropy_diagonal(&logits, rows, n);
        let got = run_checked(&launch::ce_diagonal(rows, n), &[&logits], &[1, rows]);
        check(
            &format!("ce_diagonal [{rows}, {n}]"),
            &got[0],
            &[want],
            1e-6,
        );

        let mut dwant = vec![0f32; rows * n];
        kdc_cpu::cross_entropy_diagonal_backward(&logits, rows, n, g[0], &mut dwant);
        let got = run_checked(
            &[launch::ce_diagonal_backward(rows, n)],
            &[&logits, &g],
            &[rows * n],
        );
        check(
            &format!("ce_diagonal backward [{rows}, {n}]"),
            &got[0],
            &dwant,
            1e-6,
        );
    }
}

#[test]
fn adamw_matches_kdc_cpu_over_several_steps() {
    let mut rng = Rng::new(32);
    for n in SIZES.into_iter().chain([1000]) {
        let mut p_cpu = rng.vec(n, -1.0, 1.0);
        let (mut m_cpu, mut v_cpu) = (vec![0f32; n], vec![0f32; n]);
        let mut bufs = vec![
            DeviceBuf::from_slice(&p_cpu),
            DeviceBuf::zeros::<f32>(n),
            DeviceBuf::zeros::<f32>(n),
            DeviceBuf::zeros::<f32>(n),
        ];
        // beta1 = 0.9 and then 0.2: both of torch.lerp's formulas.
        for (step, beta1) in [(1u64, 0.9), (2, 0.9), (3, 0.2), (50, 0.9)] {
            let h = kdc_backend::AdamW {
                lr: 1e-3,
                beta1,
                beta2: 0.98,
                eps: 1e-6,
                weight_decay: 0.2,
                step,
            };
            let grad = rng.vec(n, -0.5, 0.5);
            kdc_cpu::adamw_step(
                &mut p_cpu,
                &grad,
                &mut m_cpu,
                &mut v_cpu,
                h.lr,
                h.beta1,
                h.beta2,
                h.eps,
                h.weight_decay,
                h.step,
            );
            bufs[1].write(&grad);
            common::run(&[launch::adamw(n, &h)], &mut bufs, Schedule::Parallel);
            check(
                &format!("adamw param n={n} step={step}"),
                &bufs[0].read::<f32>(),
                &p_cpu,
                1e-6,
            );
            check(
                &format!("adamw m n={n} step={step}"),
                &bufs[2].read::<f32>(),
                &m_cpu,
                1e-6,
            );
            check(
                &format!("adamw v n={n} step={step}"),
                &bufs[3].read::<f32>(),
                &v_cpu,
                1e-6,
            );
        }
    }
}

#[test]
fn sum_of_squares_partials_give_kdc_cpus_gradient_norm() {
    let mut rng = Rng::new(33);
    for n in SIZES.into_iter().chain([5000]) {
        let x = rng.vec(n, -2.0, 2.0);
        let (call, blocks) = launch::sum_squares(n);
        let mut bufs = vec![DeviceBuf::from_slice(&x), DeviceBuf::uninit(blocks * 8)];
        common::run(&[call], &mut bufs, Schedule::Forward);
        let norm = bufs[1].read::<f64>().iter().sum::<f64>().sqrt();
        let want = kdc_cpu::grad_norm(&[&x[..]]);
        let err = (norm - want).abs() / want;
        eprintln!("[max-rel-err] grad norm n={n}: {err:.3e}");
        assert!(err < 1e-12, "n={n}: {norm} vs {want}");
    }
}

#[test]
fn embedding_and_row_gathers_with_their_scatter_add_match_kdc_cpu() {
    let mut rng = Rng::new(34);
    for (n, v, w) in [(1, 1, 1), (7, 5, 33), (40, 9, 7)] {
        let table = rng.vec(v * w, -1.0, 1.0);
        // Repeated ids: the scatter-add accumulates.
        let ids: Vec<f32> = (0..n).map(|_| rng.below(v) as f32).collect();
        let dout = rng.vec(n * w, -1.0, 1.0);
        let mut want = vec![0f32; n * w];
        kdc_cpu::embedding(&table, &ids, &mut want, v, w);
        let got = run_once(&[launch::embedding(n, v, w)], &[&table, &ids], &[n * w]);
        check(&format!("embedding n={n} v={v} w={w}"), &got[0], &want, 0.0);
        let mut dwant = vec![0f32; v * w];
        kdc_cpu::embedding_backward(&dout, &ids, &mut dwant, v, w);
        let got = run_once(
            &launch::embedding_backward(n, v, w),
            &[&ids, &dout],
            &[v * w],
        );
        check(
            &format!("embedding backward n={n} v={v} w={w}"),
            &got[0],
            &dwant,
            1e-6,
        );
    }
    for (batch, t, k, w) in [(1, 1, 1, 1), (2, 7, 3, 33), (3, 5, 9, 4)] {
        let x = rng.vec(batch * t * w, -1.0, 1.0);
        let index: Vec<f32> = (0..batch * k).map(|_| rng.below(t) as f32).collect();
        let dout = rng.vec(batch * k * w, -1.0, 1.0);
        let mut want = vec![0f32; batch * k * w];
        kdc_cpu::gather_rows(&x, &index, &mut want, batch, t, k, w);
        let got = run_once(
            &[launch::gather_rows(batch, t, k, w)],
            &[&x, &index],
            &[want.len()],
        );
        check(
            &format!("gather_rows {batch} {t} {k} {w}"),
            &got[0],
            &want,
            0.0,
        );
        let mut dwant = vec![0f32; batch * t * w];
        kdc_cpu::scatter_add_rows(&dout, &index, &mut dwant, batch, t, k, w);
        let got = run_once(
            &launch::scatter_rows(batch, t, k, w),
            &[&index, &dout],
            &[dwant.len()],
        );
        check(
            &format!("scatter_rows {batch} {t} {k} {w}"),
            &got[0],
            &dwant,
            1e-6,
        );
    }
}

#[test]
fn an_index_out_of_range_gives_nan_instead_of_reading_outside_the_table() {
    let table = vec![1.0f32; 6];
    let ids = [0.0f32, 3.0, 1.5, -1.0];
    let got = run_once(&[launch::embedding(4, 3, 2)], &[&table, &ids], &[8]).remove(0);
    assert_eq!(&got[..2], &[1.0, 1.0]);
    assert!(got[2..].iter().all(|v| v.is_nan()), "{got:?}");
}

#[test]
fn tiled_matmul_matches_kdc_cpu_in_every_layout() {
    let mut rng = Rng::new(35);
    for (batch, m, k, n) in [(1, 1, 1, 1), (1, 7, 33, 5), (2, 17, 16, 33), (3, 5, 0, 4)] {
        for (ta, tb, a_batched, b_batched) in [
            (false, false, true, true),
            (true, false, true, false),
            (false, true, false, true),
            (true, true, true, true),
        ] {
            let a = rng.vec(if a_batched { batch } else { 1 } * m * k, -1.0, 1.0);
            let b = rng.vec(if b_batched { batch } else { 1 } * k * n, -1.0, 1.0);
            let init = rng.vec(batch * m * n, -1.0, 1.0);
            for accumulate in [false, true] {
                let mut want = init.clone();
                if accumulate {
                    kdc_cpu::matmul_acc(
                        &a, &b, &mut want, batch, m, k, n, ta, tb, a_batched, b_batched,
                    );
                } else {
                    kdc_cpu::matmul(
                        &a, &b, &mut want, batch, m, k, n, ta, tb, a_batched, b_batched,
                    );
                }
                let call = launch::matmul(batch, m, k, n, ta, tb, a_batched, b_batched, accumulate);
                let mut bufs = vec![
                    DeviceBuf::from_slice(&a),
                    DeviceBuf::from_slice(&b),
                    DeviceBuf::from_slice(&init),
                ];
                common::run(&[call], &mut bufs, Schedule::Forward);
                let what = format!("matmul b={batch} {m}x{k}x{n} ta={ta} tb={tb} acc={accumulate}");
                check(&what, &bufs[2].read::<f32>(), &want, 1e-6);
            }
        }
    }
}

#[test]
fn bf16_conversions_are_bit_exact_against_the_half_crate() {
    let mut rng = Rng::new(36);
    // Random bit patterns (every exponent, subnormals, infinities), halfway cases and extremes.
    let mut x: Vec<f32> = (0..3000)
        .map(|_| f32::from_bits(rng.next_u64() as u32))
        .collect();
    x.extend([
        0.0,
        -0.0,
        1.0,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-45,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    x.extend((0..64u32).map(|i| f32::from_bits(0x3f80_8000 + (i << 16)))); // exact ties
    x.push(f32::NAN);
    let n = x.len();
    let mut bufs = vec![
        DeviceBuf::from_slice(&x),
        DeviceBuf::uninit(n * 2),
        DeviceBuf::uninit(n * 4),
    ];
    common::run(&[launch::f32_to_bf16(n)], &mut bufs, Schedule::Parallel);
    let got = bufs[1].read::<u16>();
    let mut nans = 0;
    for (i, (&v, &g)) in x.iter().zip(&got).enumerate() {
        if v.is_nan() {
            // CUDA canonicalises NaN to 0x7FFF; the half crate keeps the payload.
            assert_eq!(g, 0x7fff, "NaN at {i}");
            nans += 1;
        } else {
            assert_eq!(
                g,
                half::bf16::from_f32(v).to_bits(),
                "element {i}: {v:e} ({:#010x})",
                v.to_bits()
            );
        }
    }
    assert!(nans > 0);
    // And back: exact (bf16 → f32 widens).
    common::run(
        &[launch::bf16_to_f32(n)],
        &mut bufs[1..],
        Schedule::Parallel,
    );
    for (&h, &f) in got.iter().zip(&bufs[2].read::<f32>()) {
        assert_eq!(f.to_bits(), half::bf16::from_bits(h).to_f32().to_bits());
    }
}
