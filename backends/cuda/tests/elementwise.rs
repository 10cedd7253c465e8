//! The elementwise kernels (kernels/elementwise.cu), emulated, against kdc-cpu.

mod common;

use common::{check, run_once, Rng, SIZES};
use kdc_backend::Unary;
use kdc_cuda::kernels::UnaryCode;
use kdc_cuda::launch;

/// Inputs in each function's domain, with exact zeros mixed in (relu, abs and their gradients
/// branch there).
fn inputs(f: Unary, n: usize, rng: &mut Rng) -> Vec<f32> {
    let (lo, hi) = match f {
        Unary::Log | Unary::Sqrt => (0.05, 6.0),
        Unary::Exp => (-8.0, 8.0),
        _ => (-6.0, 6.0),
    };
    let mut x = rng.vec(n, lo, hi);
    if !matches!(f, Unary::Log | Unary::Sqrt) && n > 3 {
        x[3] = 0.0;
    }
    x
}

#[test]
fn unary_forward_and_backward_match_kdc_cpu() {
    let mut rng = Rng::new(1);
    for f in Unary::ALL {
        for n in SIZES.into_iter().chain([1000]) {
            let x = inputs(f, n, &mut rng);
            let dy = rng.vec(n, -2.0, 2.0);
            let mut y_cpu = vec![0f32; n];
            kdc_cpu::unary(f.into(), &x, &mut y_cpu);
            let mut dx_cpu = vec![0f32; n];
            kdc_cpu::unary_backward(f.into(), &x, &y_cpu, &dy, &mut dx_cpu);

            let y = run_once(&[launch::unary(UnaryCode::from(f), n)], &[&x], &[n]).remove(0);
            check(&format!("unary {f:?} n={n}"), &y, &y_cpu, 1e-5);
            let dx = run_once(
                &[launch::unary_backward(UnaryCode::from(f), n)],
                &[&x, &y_cpu, &dy],
                &[n],
            )
            .remove(0);
            check(&format!("unary backward {f:?} n={n}"), &dx, &dx_cpu, 1e-5);
        }
    }
}

#[test]
fn buffer_operations_match_the_cpu_backend_formulas() {
    let mut rng = Rng::new(2);
    for n in SIZES {
        let x = rng.vec(n, -3.0, 3.0);
        let s = rng.vec(n, -3.0, 3.0);

        // scale, clamp: in place on buffer 0.
        let mut b = common::bufs(&[&x], &[]);
        common::run(
            &[launch::scale(n, -0.37)],
            &mut b,
            kdc_cuda::emu::Schedule::Parallel,
        );
        let want: Vec<f32> = x.iter().map(|v| v * -0.37).collect();
        check("scale", &b[0].read::<f32>(), &want, 0.0);

        let mut b = common::bufs(&[&x], &[]);
        common::run(
            &[launch::clamp(n, -1.5, 0.25)],
            &mut b,
            kdc_cuda::emu::Schedule::Parallel,
        );
        let want: Vec<f32> = x.iter().map(|v| v.clamp(-1.5, 0.25)).collect();
        check("clamp", &b[0].read::<f32>(), &want, 0.0);

        let mut b = common::bufs(&[&x, &s], &[]);
        common::run(
            &[launch::lerp(n, 0.1)],
            &mut b,
            kdc_cuda::emu::Schedule::Parallel,
        );
        let want: Vec<f32> = x.iter().zip(&s).map(|(d, s)| d + 0.1 * (s - d)).collect();
        check("lerp", &b[0].read::<f32>(), &want, 0.0);

        let mut b = common::bufs(&[&x, &s], &[]);
        common::run(
            &[launch::add_into(n)],
            &mut b,
            kdc_cuda::emu::Schedule::Parallel,
        );
        let want: Vec<f32> = x.iter().zip(&s).map(|(d, s)| d + s).collect();
        check("add_into", &b[0].read::<f32>(), &want, 0.0);

        let out = run_once(&[launch::fill(n, 2.5)], &[], &[n]).remove(0);
        check("fill", &out, &vec![2.5; n], 0.0);

        let c: Vec<f32> = (0..n).map(|i| (i % 3 == 0) as u8 as f32).collect();
        let out = run_once(&[launch::select(n)], &[&c, &x, &s], &[n]).remove(0);
        let mut want = vec![0f32; n];
        kdc_cpu::select(&c, &x, &s, &mut want);
        check("select", &out, &want, 0.0);
    }
}
