//! Every operation of the engine's operator set through `dispatch::plan` on the emulated
//! backend, against kdc-cpu's backend on the same inputs, views and shapes.
//!
//! Each case runs twice on the emulator: with views bound in place — every input, the output
//! and the scratch in one arena at odd offsets, separated by sentinel values that must survive,
//! and the inputs unchanged — and isolated (each view in a guarded buffer of its own, the output
//! starting as NaN, so an unwritten element or a write past a view fails). Outputs must agree
//! with the CPU within 1e-5 of the output's largest magnitude, or exactly where the CPU's result
//! is a selection, a copy or a single IEEE operation.

mod common;

use common::{check, Rng};
use kdc_backend::{
    numel, round_bf16, Backend, Binary, Dtype, Launch, LossKind, Op, Reduce, Unary, View, F32,
};
use kdc_cpu::CpuBackend;
use kdc_cuda::dispatch::{self, Step};
use kdc_cuda::emulated::EmulatedBackend;

/// Tolerance of results that add or use transcendental functions.
const TOL: f64 = 1e-5;
/// Results that must be bit-identical.
const EXACT: f64 = 0.0;
/// Value of the arena's gaps.
const SENTINEL: f32 = 7777.25;

/// The backend under test: the emulated CUDA backend, or, in the GPU suite
/// (`KDC_TEST_CUDA=1`, feature `cuda`: backends/cuda/gpu-tests.sh), the real one on the first
/// GPU. `isolated` asks the emulator for its stricter binding (no effect on a GPU).
fn device(isolated: bool) -> Box<dyn Backend> {
    if std::env::var("KDC_TEST_CUDA").as_deref() == Ok("1") {
        #[cfg(feature = "cuda")]
        return Box::new(
            kdc_cuda::device::CudaBackend::new(0)
                .unwrap_or_else(|e| panic!("KDC_TEST_CUDA=1 but no usable GPU: {e}")),
        );
        #[cfg(not(feature = "cuda"))]
        panic!("KDC_TEST_CUDA=1 runs the GPU suite, which needs the `cuda` feature: run backends/cuda/gpu-tests.sh");
    }
    if isolated {
        Box::new(EmulatedBackend::isolated())
    } else {
        Box::new(EmulatedBackend::new())
    }
}

/// Runs `op` on a backend, each input and the output and scratch in buffers of their own.
fn run_separate(
    b: &mut dyn Backend,
    op: &Op,
    inputs: &[(Vec<usize>, Vec<f32>)],
    shape: &[usize],
    dtype: Dtype,
) -> Vec<f32> {
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|i| i.0.clone()).collect();
    let mut views = Vec::new();
    for (_, values) in inputs {
        let v = View::whole(b.alloc(values.len()).unwrap(), values.len());
        b.upload(v, values);
        views.push(v);
    }
    let n = numel(shape);
    let output = View::whole(b.alloc(n).unwrap(), n);
    let s = b.scratch_len(op, &shapes, shape, dtype);
    let scratch = View::whole(b.alloc(s).unwrap(), s);
    b.launch(&Launch {
        op,
        inputs: &views,
        input_shapes: &shapes,
        output,
        shape,
        scratch,
        dtype,
    });
    let mut out = vec![0.0; n];
    b.download(output, &mut out);
    for v in views.iter().chain([&output, &scratch]) {
        b.free(v.buffer);
    }
    out
}

/// Runs `op` on the emulated backend with every view in one arena at odd offsets, gaps of
/// sentinels between them; checks that the gaps and the inputs are intact.
fn run_in_arena(
    op: &Op,
    inputs: &[(Vec<usize>, Vec<f32>)],
    shape: &[usize],
    dtype: Dtype,
) -> Vec<f32> {
    let mut b = device(false);
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|i| i.0.clone()).collect();
    let n = numel(shape);
    let s = b.scratch_len(op, &shapes, shape, dtype);
    let lens: Vec<usize> = inputs.iter().map(|i| i.1.len()).chain([n, s]).collect();
    const GAP: usize = 3;
    let total = GAP + lens.iter().map(|l| l + GAP).sum::<usize>();
    let arena = b.alloc(total).unwrap();
    let mut contents = vec![SENTINEL; total];
    let mut views = Vec::new();
    let mut at = GAP;
    for (i, &len) in lens.iter().enumerate() {
        views.push(View {
            buffer: arena,
            offset: at,
            len,
        });
        if i < inputs.len() {
            contents[at..at + len].copy_from_slice(&inputs[i].1);
        } else {
            contents[at..at + len].fill(f32::NAN);
        }
        at += len + GAP;
    }
    b.upload(View::whole(arena, total), &contents);
    let (output, scratch) = (views[inputs.len()], views[inputs.len() + 1]);
    b.launch(&Launch {
        op,
        inputs: &views[..inputs.len()],
        input_shapes: &shapes,
        output,
        shape,
        scratch,
        dtype,
    });
    let mut after = vec![0.0; total];
    b.download(View::whole(arena, total), &mut after);
    for (i, v) in views.iter().enumerate() {
        if i < inputs.len() {
            let same = after[v.offset..v.offset + v.len]
                .iter()
                .zip(&inputs[i].1)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{op:?}: input {i} changed");
        }
    }
    let mut gap_start = 0;
    for v in views.iter().chain([&View {
        buffer: arena,
        offset: total,
        len: 0,
    }]) {
        assert!(
            after[gap_start..v.offset].iter().all(|&x| x == SENTINEL),
            "{op:?}: a write outside its views (floats {gap_start}..{})",
            v.offset
        );
        gap_start = v.offset + v.len;
    }
    after[output.offset..output.offset + n].to_vec()
}

fn cpu(op: &Op, inputs: &[(Vec<usize>, Vec<f32>)], shape: &[usize], dtype: Dtype) -> Vec<f32> {
    run_separate(&mut CpuBackend::new(), op, inputs, shape, dtype)
}

/// The operation on both backends (both emulated bindings), compared; returns the CPU's output.
#[track_caller]
fn compare(
    what: &str,
    op: Op,
    inputs: Vec<(Vec<usize>, Vec<f32>)>,
    shape: &[usize],
    tol: f64,
) -> Vec<f32> {
    compare_typed(what, op, inputs, shape, Dtype::F32, tol).0
}

/// [`compare`] with the output typed `dtype`; returns the CPU's output and the emulator's.
#[track_caller]
fn compare_typed(
    what: &str,
    op: Op,
    inputs: Vec<(Vec<usize>, Vec<f32>)>,
    shape: &[usize],
    dtype: Dtype,
    tol: f64,
) -> (Vec<f32>, Vec<f32>) {
    let want = cpu(&op, &inputs, shape, dtype);
    let isolated = run_separate(&mut *device(true), &op, &inputs, shape, dtype);
    check(&format!("{what} isolated"), &isolated, &want, tol);
    let shared = run_in_arena(&op, &inputs, shape, dtype);
    check(&format!("{what} in arena"), &shared, &want, tol);
    (want, shared)
}

fn t(shape: &[usize], values: Vec<f32>) -> (Vec<usize>, Vec<f32>) {
    assert_eq!(numel(shape), values.len());
    (shape.to_vec(), values)
}

fn rand(rng: &mut Rng, shape: &[usize], lo: f32, hi: f32) -> (Vec<usize>, Vec<f32>) {
    t(shape, rng.vec(numel(shape), lo, hi))
}

/// Values from a small set, so that ties occur.
fn ties(rng: &mut Rng, shape: &[usize]) -> (Vec<usize>, Vec<f32>) {
    t(
        shape,
        (0..numel(shape))
            .map(|_| rng.below(5) as f32 - 2.0)
            .collect(),
    )
}

fn indices(rng: &mut Rng, shape: &[usize], below: usize) -> (Vec<usize>, Vec<f32>) {
    t(
        shape,
        (0..numel(shape)).map(|_| rng.below(below) as f32).collect(),
    )
}

#[test]
fn constants_fill_eye_and_causal_mask() {
    compare("fill", Op::Fill(F32(-1.25)), vec![], &[3, 37], EXACT);
    let values: Vec<F32> = (0..15).map(|i| F32(i as f32 * 0.5 - 3.0)).collect();
    compare("constant", Op::Constant(values), vec![], &[3, 5], EXACT);
    for shape in [[5, 7], [7, 5], [1, 1]] {
        compare(&format!("eye {shape:?}"), Op::Eye, vec![], &shape, EXACT);
    }
    for l in [1, 7, 33] {
        let want = compare(
            &format!("causal mask {l}"),
            Op::CausalMask,
            vec![],
            &[l, l],
            EXACT,
        );
        assert!(
            l == 1 || want[1] == f32::MIN,
            "the mask's large negative is f32::MIN"
        );
    }
}

#[test]
fn unary_functions_and_their_backward() {
    let mut rng = Rng::new(1);
    let shape = [3, 37];
    for f in Unary::ALL {
        let lo = if matches!(f, Unary::Log | Unary::Sqrt) {
            0.1
        } else {
            -4.0
        };
        let x = rand(&mut rng, &shape, lo, 4.0);
        let y = compare(
            &format!("{f:?}"),
            Op::Unary(f),
            vec![x.clone()],
            &shape,
            TOL,
        );
        let dy = rand(&mut rng, &shape, -1.0, 1.0);
        compare(
            &format!("{f:?} backward"),
            Op::UnaryBackward(f),
            vec![x, t(&shape, y), dy],
            &shape,
            TOL,
        );
    }
}

#[test]
fn binary_functions_with_broadcasting() {
    let mut rng = Rng::new(2);
    let cases: [(&[usize], &[usize], &[usize]); 3] = [
        (&[3, 1, 5], &[4, 1], &[3, 4, 5]),
        (&[7, 9], &[7, 9], &[7, 9]),
        (&[1], &[2, 3, 1, 33], &[2, 3, 1, 33]),
    ];
    for f in Binary::ALL {
        for (sa, sb, so) in cases {
            let a = ties(&mut rng, sa);
            let mut b = ties(&mut rng, sb);
            if f == Binary::Div {
                b.1.iter_mut().for_each(|v| *v += 2.5);
            }
            compare(
                &format!("{f:?} {sa:?} {sb:?}"),
                Op::Binary(f),
                vec![a, b],
                so,
                EXACT,
            );
        }
    }
}

#[test]
fn matrix_products_in_every_layout_and_batching() {
    let mut rng = Rng::new(3);
    // (batch of a, batch of b, batch of the result); m, k, n odd.
    let (m, k, n) = (5, 17, 33);
    let batchings: [(&[usize], &[usize], &[usize]); 4] = [
        (&[], &[], &[]),
        (&[2, 3], &[], &[2, 3]),
        (&[], &[3], &[3]),
        (&[2], &[2], &[2]),
    ];
    for (ba, bb, bo) in batchings {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut sa = ba.to_vec();
            sa.extend(if ta { [k, m] } else { [m, k] });
            let mut sb = bb.to_vec();
            sb.extend(if tb { [n, k] } else { [k, n] });
            let mut so = bo.to_vec();
            so.extend([m, n]);
            let a = rand(&mut rng, &sa, -1.0, 1.0);
            let b = rand(&mut rng, &sb, -1.0, 1.0);
            let what = format!("matmul {sa:?} {sb:?} ta={ta} tb={tb}");
            let op = Op::MatMul { ta, tb };
            compare(&what, op, vec![a.clone(), b.clone()], &so, TOL);
            // With a bias over the last axis, and with a residual of the result's shape.
            for bias_shape in [vec![n], so.clone()] {
                let bias = rand(&mut rng, &bias_shape, -1.0, 1.0);
                let op = Op::MatMulAdd { ta, tb };
                let what = format!("{what} + {bias_shape:?}");
                compare(&what, op, vec![a.clone(), b.clone(), bias], &so, TOL);
            }
        }
    }
}

/// One bf16 ulp relative to the output's largest magnitude (bf16 keeps 8 significant bits:
/// the ulp of a value in [2ᵉ, 2ᵉ⁺¹) is 2ᵉ⁻⁷): f32 sums in another order may round to the
/// neighbouring bf16 value.
const BF16_ULP: f64 = 1.0 / 128.0;

fn is_bf16(values: &[f32]) -> bool {
    values.iter().all(|v| v.to_bits() & 0xffff == 0)
}

/// bf16 autocast's products: both backends read the factors as bf16, accumulate in f32 and
/// round the result; both agree with a float64 product of the rounded factors; and a
/// `MatMulAdd` adds its third input rounded to bf16 (a bias cast with its layer) before the
/// result's rounding.
#[test]
fn bf16_products_match_the_cpu_and_a_float64_reference() {
    let mut rng = Rng::new(11);
    let (m, k, n) = (7, 37, 19);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        for (ba, bb, bo) in [
            (vec![], vec![], vec![]),
            (vec![3], vec![3], vec![3]),
            (vec![2], vec![], vec![2]),
        ] {
            let mut sa = ba.clone();
            sa.extend(if ta { [k, m] } else { [m, k] });
            let mut sb = bb.clone();
            sb.extend(if tb { [n, k] } else { [k, n] });
            let mut so = bo.clone();
            so.extend([m, n]);
            let a = rand(&mut rng, &sa, -2.0, 2.0);
            let b = rand(&mut rng, &sb, -2.0, 2.0);
            let bias = rand(&mut rng, &[n], -1.0, 1.0);
            let what = format!("bf16 matmul {sa:?} {sb:?} ta={ta} tb={tb}");
            let (cpu_out, emu_out) = compare_typed(
                &what,
                Op::MatMul { ta, tb },
                vec![a.clone(), b.clone()],
                &so,
                Dtype::Bf16,
                BF16_ULP,
            );
            let (cpu_add, emu_add) = compare_typed(
                &format!("{what} + bias"),
                Op::MatMulAdd { ta, tb },
                vec![a.clone(), b.clone(), bias.clone()],
                &so,
                Dtype::Bf16,
                BF16_ULP,
            );
            for out in [&cpu_out, &emu_out, &cpu_add, &emu_add] {
                assert!(is_bf16(out), "{what}: a result that is not a bf16 value");
            }
            // The float64 reference: rounded factors, exact products, one rounding at the end.
            let batch: usize = bo.iter().product();
            let mut want = vec![0.0f32; batch * m * n];
            let mut want_add = vec![0.0f32; batch * m * n];
            let r = |x: f32| round_bf16(x) as f64;
            for beta in 0..batch {
                let (oa, ob) = (
                    if ba.is_empty() { 0 } else { beta * m * k },
                    if bb.is_empty() { 0 } else { beta * k * n },
                );
                for i in 0..m {
                    for j in 0..n {
                        let mut acc = 0.0f64;
                        for p in 0..k {
                            let av = a.1[oa + if ta { p * m + i } else { i * k + p }];
                            let bv = b.1[ob + if tb { j * k + p } else { p * n + j }];
                            acc += r(av) * r(bv);
                        }
                        want[(beta * m + i) * n + j] = round_bf16(acc as f32);
                        want_add[(beta * m + i) * n + j] = round_bf16((acc + r(bias.1[j])) as f32);
                    }
                }
            }
            check(&format!("{what} vs float64"), &cpu_out, &want, BF16_ULP);
            check(
                &format!("{what} + bias vs float64"),
                &cpu_add,
                &want_add,
                BF16_ULP,
            );
            // Autocast changes the result: the same product in f32 is not all bf16 values.
            let f32_out = cpu(&Op::MatMul { ta, tb }, &[a, b], &so, Dtype::F32);
            assert!(
                !is_bf16(&f32_out),
                "{what}: the f32 product is already bf16"
            );
        }
    }
}

/// Any other operation typed bf16 rounds its output, on both backends alike.
#[test]
fn bf16_outputs_are_rounded_on_both_backends() {
    let mut rng = Rng::new(12);
    let x = rand(&mut rng, &[5, 33], -3.0, 3.0);
    let y = rand(&mut rng, &[33], -3.0, 3.0);
    let cases: Vec<(Op, Vec<(Vec<usize>, Vec<f32>)>, Vec<usize>)> = vec![
        (Op::Unary(Unary::Gelu), vec![x.clone()], vec![5, 33]),
        (Op::Unary(Unary::QuickGelu), vec![x.clone()], vec![5, 33]),
        (
            Op::Binary(Binary::Mul),
            vec![x.clone(), y.clone()],
            vec![5, 33],
        ),
        (Op::Permute(vec![1, 0]), vec![x.clone()], vec![33, 5]),
        (Op::SumTo, vec![x.clone()], vec![33]),
        (
            Op::UnaryBackward(Unary::Gelu),
            vec![x.clone(), x.clone(), x.clone()],
            vec![5, 33],
        ),
        (
            Op::Slice { axis: 1, start: 4 },
            vec![x.clone()],
            vec![5, 20],
        ),
        (
            Op::Concat { axis: 0 },
            vec![x.clone(), x.clone()],
            vec![10, 33],
        ),
        (Op::Broadcast, vec![y.clone()], vec![5, 33]),
        (
            Op::SliceBackward { axis: 1, start: 4 },
            vec![rand(&mut rng, &[5, 20], -3.0, 3.0)],
            vec![5, 33],
        ),
        (
            Op::Attention { scale: F32(0.4) },
            vec![
                rand(&mut rng, &[2, 3, 5], -1.0, 1.0),
                rand(&mut rng, &[2, 7, 5], -1.0, 1.0),
                rand(&mut rng, &[2, 7, 4], -1.0, 1.0),
            ],
            vec![2, 3, 4],
        ),
        (
            Op::AttentionBackward { scale: F32(0.4) },
            vec![
                rand(&mut rng, &[2, 3, 5], -1.0, 1.0),
                rand(&mut rng, &[2, 7, 5], -1.0, 1.0),
                rand(&mut rng, &[2, 7, 4], -1.0, 1.0),
                rand(&mut rng, &[2, 3, 4], -1.0, 1.0),
            ],
            vec![2 * 3 * 5 + 2 * 7 * 5 + 2 * 7 * 4],
        ),
    ];
    for (op, inputs, shape) in cases {
        // Kernels that round as they store need no rounding pass (a fill, which does not
        // round, is followed by one).
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|i| i.0.clone()).collect();
        let steps = dispatch::plan(&op, &shapes, &shape, Dtype::Bf16).unwrap();
        let pass = steps
            .iter()
            .any(|s| matches!(s, Step::Kernel(c) if c.kernel == "kdc_round_bf16"));
        let fill = steps
            .iter()
            .any(|s| matches!(s, Step::Kernel(c) if c.kernel == "kdc_fill_f32"));
        assert_eq!(pass, fill, "{op:?}: {steps:?}");
        let what = format!("bf16 {op:?}");
        let (cpu_out, emu_out) = compare_typed(
            &what,
            op.clone(),
            inputs.clone(),
            &shape,
            Dtype::Bf16,
            BF16_ULP,
        );
        assert!(
            is_bf16(&cpu_out) && is_bf16(&emu_out),
            "{what}: not rounded"
        );
        // Exactly the f32 result rounded (the CPU's; the emulator's within one ulp above).
        let exact = cpu(&op, &inputs, &shape, Dtype::F32);
        let rounded: Vec<f32> = exact.iter().map(|&v| round_bf16(v)).collect();
        check(&format!("{what} vs rounded f32"), &cpu_out, &rounded, EXACT);
    }
}

/// Fused attention and its gradient: leading axes [2, 3] (batch, heads), odd sizes, no bias,
/// a causal-shaped [m, n] bias and a padding-shaped [2, 1, 1, n] one with masked keys; and a
/// single query row over many keys (a pooled row).
#[test]
fn fused_attention_and_its_gradient() {
    let mut rng = Rng::new(13);
    for (m, n, d, e) in [(5, 7, 4, 3), (1, 37, 8, 8), (9, 11, 5, 6)] {
        let qs = vec![2, 3, m, d];
        let ks = vec![2, 3, n, d];
        let vs = vec![2, 3, n, e];
        let mut padding = vec![0.0f32; 2 * n];
        padding[n - 1] = -1e9;
        padding[n + 2] = -1e9;
        let biases: Vec<Option<(Vec<usize>, Vec<f32>)>> = vec![
            None,
            Some(rand(&mut rng, &[m, n], -2.0, 2.0)),
            Some(t(&[2, 1, 1, n], padding)),
        ];
        for bias in biases {
            let mut inputs = vec![
                rand(&mut rng, &qs, -1.5, 1.5),
                rand(&mut rng, &ks, -1.5, 1.5),
                rand(&mut rng, &vs, -1.0, 1.0),
            ];
            inputs.extend(bias.clone());
            let what = format!(
                "attention m={m} n={n} d={d} e={e} bias {:?}",
                bias.as_ref().map(|b| &b.0)
            );
            let scale = F32(1.0 / (d as f32).sqrt());
            compare(
                &what,
                Op::Attention { scale },
                inputs.clone(),
                &[2, 3, m, e],
                TOL,
            );
            let mut backward = inputs.clone();
            backward.push(rand(&mut rng, &[2, 3, m, e], -1.0, 1.0));
            let total = 6 * (m * d + n * d + n * e);
            compare(
                &format!("{what} backward"),
                Op::AttentionBackward { scale },
                backward,
                &[total],
                TOL,
            );
        }
    }
}

#[test]
fn data_movement_permute_reshape_broadcast_sum_to_concat_slice() {
    let mut rng = Rng::new(4);
    let x = rand(&mut rng, &[2, 3, 5, 7], -1.0, 1.0);
    for perm in [vec![2, 0, 3, 1], vec![0, 1, 3, 2], vec![3, 2, 1, 0]] {
        let shape: Vec<usize> = perm.iter().map(|&p| x.0[p]).collect();
        compare(
            &format!("permute {perm:?}"),
            Op::Permute(perm),
            vec![x.clone()],
            &shape,
            EXACT,
        );
    }
    compare("reshape", Op::Reshape, vec![x.clone()], &[6, 35], EXACT);
    compare("detach", Op::Detach, vec![x.clone()], &[2, 3, 5, 7], EXACT);
    for (from, to) in [
        (vec![3, 1, 5], vec![2, 3, 4, 5]),
        (vec![1], vec![7, 3]),
        (vec![33], vec![3, 33]),
    ] {
        let x = rand(&mut rng, &from, -1.0, 1.0);
        compare(
            &format!("broadcast {from:?} -> {to:?}"),
            Op::Broadcast,
            vec![x],
            &to,
            EXACT,
        );
        let big = rand(&mut rng, &to, -1.0, 1.0);
        compare(
            &format!("sum_to {to:?} -> {from:?}"),
            Op::SumTo,
            vec![big],
            &from,
            TOL,
        );
    }
    let big = rand(&mut rng, &[5, 300], -1.0, 1.0);
    compare("sum_to [5, 300] -> [1]", Op::SumTo, vec![big], &[1], TOL);
    for axis in 0..3 {
        let mut sb = vec![2, 3, 5];
        sb[axis] = 4;
        let mut so = sb.clone();
        so[axis] += [2, 3, 5][axis];
        let a = rand(&mut rng, &[2, 3, 5], -1.0, 1.0);
        let b = rand(&mut rng, &sb, -1.0, 1.0);
        compare(
            &format!("concat axis {axis}"),
            Op::Concat { axis },
            vec![a, b],
            &so,
            EXACT,
        );
    }
    let x = rand(&mut rng, &[2, 7, 5], -1.0, 1.0);
    for (axis, start, len) in [(0, 1, 1), (1, 2, 3), (2, 0, 4), (1, 0, 7)] {
        let mut so = x.0.clone();
        so[axis] = len;
        let op = Op::Slice { axis, start };
        let part = compare(
            &format!("slice {axis} {start} {len}"),
            op,
            vec![x.clone()],
            &so,
            EXACT,
        );
        let op = Op::SliceBackward { axis, start };
        compare(
            &format!("slice backward {axis} {start}"),
            op,
            vec![t(&so, part)],
            &x.0,
            EXACT,
        );
    }
}

#[test]
fn reductions_arg_and_their_backward() {
    let mut rng = Rng::new(5);
    let shape = [5, 33, 3];
    for kind in [
        Reduce::Sum,
        Reduce::Mean,
        Reduce::Var,
        Reduce::Max,
        Reduce::Min,
    ] {
        let exact = matches!(kind, Reduce::Max | Reduce::Min);
        for axis in [Some(0), Some(1), Some(2), None] {
            let x = if exact {
                ties(&mut rng, &shape)
            } else {
                rand(&mut rng, &shape, -2.0, 2.0)
            };
            let out: Vec<usize> = match axis {
                Some(a) => shape
                    .iter()
                    .enumerate()
                    .filter(|&(d, _)| d != a)
                    .map(|(_, &s)| s)
                    .collect(),
                None => vec![],
            };
            let what = format!("reduce {kind:?} {axis:?}");
            let tol = if exact { EXACT } else { TOL };
            compare(&what, Op::Reduce { kind, axis }, vec![x.clone()], &out, tol);
            let dy = rand(&mut rng, &out, -1.0, 1.0);
            let op = Op::ReduceBackward { kind, axis };
            compare(
                &format!("{what} backward"),
                op,
                vec![x.clone(), dy],
                &shape,
                tol,
            );
            for largest in [true, false] {
                let op = Op::Arg { largest, axis };
                compare(
                    &format!("arg largest={largest} {axis:?}"),
                    op,
                    vec![x.clone()],
                    &out,
                    EXACT,
                );
            }
        }
    }
}

#[test]
fn softmax_log_softmax_normalize_and_their_backward() {
    let mut rng = Rng::new(6);
    let shape = [3, 37, 5];
    for axis in [0, 1, 2] {
        let x = rand(&mut rng, &shape, -6.0, 6.0);
        let dy = rand(&mut rng, &shape, -1.0, 1.0);
        let y = compare(
            &format!("softmax {axis}"),
            Op::Softmax { axis },
            vec![x.clone()],
            &shape,
            TOL,
        );
        let op = Op::SoftmaxBackward { axis };
        compare(
            &format!("softmax backward {axis}"),
            op,
            vec![t(&shape, y), dy.clone()],
            &shape,
            TOL,
        );
        let y = compare(
            &format!("log_softmax {axis}"),
            Op::LogSoftmax { axis },
            vec![x.clone()],
            &shape,
            TOL,
        );
        let op = Op::LogSoftmaxBackward { axis };
        compare(
            &format!("log_softmax backward {axis}"),
            op,
            vec![t(&shape, y), dy.clone()],
            &shape,
            TOL,
        );
        let eps = F32(kdc_backend::op::NORMALIZE_EPS);
        compare(
            &format!("normalize {axis}"),
            Op::Normalize { axis, eps },
            vec![x.clone()],
            &shape,
            TOL,
        );
        let op = Op::NormalizeBackward { axis, eps };
        compare(
            &format!("normalize backward {axis}"),
            op,
            vec![x, dy],
            &shape,
            TOL,
        );
    }
}

#[test]
fn where_and_top_k_with_ties() {
    let mut rng = Rng::new(7);
    let shape = [4, 9, 3];
    let c = t(
        &shape,
        (0..numel(&shape))
            .map(|_| (rng.below(3) as f32 - 1.0) * 0.5)
            .collect(),
    );
    let a = rand(&mut rng, &shape, -1.0, 1.0);
    let b = rand(&mut rng, &shape, -1.0, 1.0);
    compare("where", Op::Where, vec![c, a, b], &shape, EXACT);
    for axis in [0, 1, 2] {
        for k in [1, 2, shape[axis]] {
            let x = ties(&mut rng, &shape);
            let mut so = shape.to_vec();
            so[axis] = k;
            compare(
                &format!("topk k={k} axis {axis}"),
                Op::TopK { k, axis },
                vec![x.clone()],
                &so,
                EXACT,
            );
            let dy = rand(&mut rng, &so, -1.0, 1.0);
            let op = Op::TopKBackward { k, axis };
            compare(
                &format!("topk backward k={k} axis {axis}"),
                op,
                vec![x, dy],
                &shape,
                EXACT,
            );
        }
    }
}

#[test]
fn layer_norm_and_its_backward() {
    let mut rng = Rng::new(8);
    for shape in [vec![3, 5, 37], vec![1, 257], vec![7, 1]] {
        let d = *shape.last().unwrap();
        let eps = F32(1e-5);
        let x = rand(&mut rng, &shape, -3.0, 3.0);
        let gain = rand(&mut rng, &[d], 0.5, 1.5);
        let bias = rand(&mut rng, &[d], -0.5, 0.5);
        let dy = rand(&mut rng, &shape, -1.0, 1.0);
        let what = format!("layer_norm {shape:?}");
        let op = Op::LayerNorm { eps };
        compare(&what, op, vec![x.clone(), gain.clone(), bias], &shape, TOL);
        let op = Op::LayerNormBackward { eps };
        compare(
            &format!("{what} backward"),
            op,
            vec![x.clone(), gain, dy.clone()],
            &shape,
            TOL,
        );
        let op = Op::LayerNormParamGrads { eps };
        compare(
            &format!("{what} param grads"),
            op,
            vec![x, dy],
            &[2, d],
            TOL,
        );
    }
}

#[test]
fn embedding_gather_and_scatter_rows() {
    let mut rng = Rng::new(9);
    let (v, w) = (11, 7);
    let table = rand(&mut rng, &[v, w], -1.0, 1.0);
    let ids = indices(&mut rng, &[3, 5], v);
    compare(
        "embedding",
        Op::Embedding,
        vec![table, ids.clone()],
        &[3, 5, w],
        EXACT,
    );
    let dy = rand(&mut rng, &[3, 5, w], -1.0, 1.0);
    compare(
        "embedding backward",
        Op::EmbeddingBackward,
        vec![ids, dy],
        &[v, w],
        TOL,
    );
    let x = rand(&mut rng, &[3, 9, 7], -1.0, 1.0);
    let index = indices(&mut rng, &[3, 4], 9);
    compare(
        "gather_rows",
        Op::GatherRows,
        vec![x, index.clone()],
        &[3, 4, 7],
        EXACT,
    );
    let dy = rand(&mut rng, &[3, 4, 7], -1.0, 1.0);
    compare(
        "scatter_rows",
        Op::ScatterRows,
        vec![index, dy],
        &[3, 9, 7],
        TOL,
    );
}

#[test]
fn every_loss_and_its_gradients() {
    let mut rng = Rng::new(10);
    let kinds = [
        LossKind::Mse,
        LossKind::L1,
        LossKind::SmoothL1 { beta: F32(0.5) },
        LossKind::SmoothL1 { beta: F32(0.0) },
        LossKind::Kl,
        LossKind::CrossEntropyDiagonal,
        LossKind::CrossEntropySoft,
    ];
    for shape in [vec![5, 7], vec![37, 3], vec![3, 300]] {
        for kind in kinds {
            if kind == LossKind::CrossEntropyDiagonal && shape[0] > shape[1] {
                continue;
            }
            let (a, b) = match kind {
                // Log-probabilities for KL; logits and target probabilities for the soft
                // cross-entropy.
                LossKind::Kl | LossKind::CrossEntropySoft => {
                    let axis = 1;
                    let la = cpu(
                        &Op::LogSoftmax { axis },
                        &[rand(&mut rng, &shape, -3.0, 3.0)],
                        &shape,
                        Dtype::F32,
                    );
                    let lb = cpu(
                        &Op::LogSoftmax { axis },
                        &[rand(&mut rng, &shape, -3.0, 3.0)],
                        &shape,
                        Dtype::F32,
                    );
                    if kind == LossKind::Kl {
                        (t(&shape, la), t(&shape, lb))
                    } else {
                        let target =
                            cpu(&Op::Softmax { axis }, &[t(&shape, lb)], &shape, Dtype::F32);
                        (rand(&mut rng, &shape, -4.0, 4.0), t(&shape, target))
                    }
                }
                _ => (
                    rand(&mut rng, &shape, -2.0, 2.0),
                    rand(&mut rng, &shape, -2.0, 2.0),
                ),
            };
            let mut inputs = vec![a];
            if kind.arity() == 2 {
                inputs.push(b);
            }
            let what = format!("{} {shape:?}", kind.name());
            compare(&what, Op::Loss(kind), inputs.clone(), &[], TOL);
            let mut with_dloss = inputs.clone();
            with_dloss.push(t(&[], vec![0.7]));
            for which in 0..kind.arity() {
                let op = Op::LossBackward { loss: kind, which };
                compare(
                    &format!("{what} backward {which}"),
                    op,
                    with_dloss.clone(),
                    &shape,
                    TOL,
                );
            }
        }
    }
}

#[test]
fn every_operation_plans_and_the_unsupported_ones_say_which() {
    // Sources are set by the runner: a clear error, not a panic.
    let e = dispatch::plan(&Op::Input(0), &[], &[3], Dtype::F32).unwrap_err();
    assert_eq!(e.op, "Input");
    assert!(e.to_string().contains("Input"), "{e}");
    // Shapes the kernels cannot take.
    let bad: [(Op, Vec<Vec<usize>>, Vec<usize>); 6] = [
        (
            Op::MatMul {
                ta: false,
                tb: false,
            },
            vec![vec![3, 4], vec![5, 6]],
            vec![3, 6],
        ),
        (Op::Softmax { axis: 2 }, vec![vec![3, 4]], vec![3, 4]),
        (Op::TopK { k: 5, axis: 0 }, vec![vec![3]], vec![5]),
        (
            Op::Loss(LossKind::CrossEntropyDiagonal),
            vec![vec![5, 3]],
            vec![],
        ),
        (Op::Binary(Binary::Add), vec![vec![3]], vec![3]),
        (Op::Permute(vec![0, 0]), vec![vec![2, 2]], vec![2, 2]),
    ];
    for (op, shapes, shape) in bad {
        let e = dispatch::plan(&op, &shapes, &shape, Dtype::F32).expect_err("unsupported");
        assert_eq!(e.op, op.kind());
        assert!(e.to_string().contains(op.kind()), "{e}");
    }
    // Matrix products are GEMM steps (for cuBLAS), and the fallback kernel is the tiled one.
    // A linear layer's bias is the GEMM's epilogue (one step; without cuBLASLt, its broadcast
    // and the product accumulated onto it); a residual addend is broadcast into the output
    // first, and the product accumulates onto it.
    let matmul_add = |addend: Vec<usize>| {
        dispatch::plan(
            &Op::MatMulAdd {
                ta: false,
                tb: true,
            },
            &[vec![2, 5, 7], vec![9, 7], addend],
            &[2, 5, 9],
            Dtype::F32,
        )
        .unwrap()
    };
    let steps = matmul_add(vec![9]);
    let [Step::Gemm(g)] = &steps[..] else {
        panic!("{steps:?}")
    };
    assert_eq!((g.batch, g.m, g.n, g.k, g.accumulate), (2, 5, 9, 7, false));
    assert_eq!(
        (g.a.batch_stride, g.b.batch_stride, g.b.ld, g.c.index),
        (35, 0, 7, 3)
    );
    let bias = g.bias.as_ref().expect("a bias epilogue");
    assert_eq!((bias.index, bias.offset), (2, 0));
    let kernels: Vec<&str> = g.kernels().iter().map(|k| k.kernel).collect();
    assert_eq!(kernels, ["kdc_strided_copy_f32", "kdc_matmul_f32"]);
    let steps = matmul_add(vec![2, 5, 9]);
    let [Step::Kernel(broadcast), Step::Gemm(g)] = &steps[..] else {
        panic!("{steps:?}")
    };
    assert_eq!(broadcast.kernel, "kdc_strided_copy_f32");
    assert!(g.accumulate && g.bias.is_none());
    assert_eq!(g.kernel().kernel, "kdc_matmul_f32");
    // In bf16 the factors and the bias's rounded copy sit in the scratch at multiples of 16
    // floats (the plan aligns the scratch to 64 bytes; cuBLASLt's bias and the tensor-core
    // GEMM need aligned pointers), within the scratch the plan reserves.
    let (shapes, shape) = (vec![vec![2, 5, 7], vec![9, 7], vec![9]], vec![2, 5, 9]);
    let op = Op::MatMulAdd {
        ta: false,
        tb: true,
    };
    let steps = dispatch::plan(&op, &shapes, &shape, Dtype::Bf16).unwrap();
    let g = steps
        .iter()
        .find_map(|s| match s {
            Step::Gemm(g) => Some(g),
            _ => None,
        })
        .unwrap();
    let bias = g.bias.as_ref().unwrap();
    assert_eq!((g.a.index, g.b.index, bias.index), (4, 4, 4), "{g:?}");
    assert_eq!((g.a.offset, g.b.offset, bias.offset), (0, 48, 80), "{g:?}");
    assert_eq!(dispatch::scratch_len(&op, &shapes, &shape, Dtype::Bf16), 89);
    // A constant is an upload; a view with nothing to compute still copies when planned.
    let c = Op::Constant(vec![F32(1.0), F32(2.0)]);
    assert_eq!(
        dispatch::plan(&c, &[], &[2], Dtype::F32).unwrap(),
        vec![Step::Upload(vec![1.0, 2.0])]
    );
    assert!(dispatch::plan(&c, &[], &[3], Dtype::F32).is_err());
    assert!(
        !dispatch::plan(&Op::Reshape, &[vec![2, 3]], &[6], Dtype::F32)
            .unwrap()
            .is_empty()
    );
}

/// What cuBLASLt is told about an operand's alignment: the largest power of two dividing its
/// address, capped at 256 bytes (an arena view at an odd float offset is 4-byte aligned).
#[test]
fn operand_alignment_is_the_largest_power_of_two_dividing_the_address() {
    use kdc_cuda::launch::alignment;
    assert_eq!(alignment(0x7f00_0000_0000), 256);
    assert_eq!(alignment(0x7f00_0000_0104), 4);
    assert_eq!(alignment(0x7f00_0000_0110), 16);
    assert_eq!(alignment(0x7f00_0000_0180), 128);
    assert_eq!(alignment(0x7f00_0000_0200), 256);
}
