//! The emulator itself: each kind of bug it claims to catch is caught (kernels in
//! emu/selftest/), and the kernel registry, the sources and the emulator agree.

mod common;

use kdc_cuda::emu::{self, DeviceBuf, EmuError, Schedule};
use kdc_cuda::kernels::{self, FILES};
use kdc_cuda::launch::{buf, Arg, KernelCall};

fn call(kernel: &'static str, threads: u32, shared_bytes: u32, args: Vec<Arg>) -> KernelCall {
    KernelCall {
        kernel,
        grid: [1, 1, 1],
        block: [threads, 1, 1],
        shared_bytes,
        args,
    }
}

fn launch(
    c: &KernelCall,
    bufs: &mut [DeviceBuf],
    schedule: Schedule,
) -> Result<emu::Report, EmuError> {
    let mut refs: Vec<&mut DeviceBuf> = bufs.iter_mut().collect();
    emu::run(c, &mut refs, schedule)
}

#[test]
fn a_missing_syncthreads_is_caught_by_the_serial_schedules() {
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let want: Vec<f32> = (0..64).map(|i| ((i + 1) % 64) as f32).collect();
    let run = |with_barrier: i32, schedule| {
        let c = call(
            "kdc_selftest_neighbour",
            64,
            0,
            vec![Arg::I32(with_barrier), buf(0), buf(1)],
        );
        let mut b = vec![DeviceBuf::from_slice(&x), DeviceBuf::uninit(64 * 4)];
        launch(&c, &mut b, schedule).unwrap();
        b[1].read::<f32>()
    };
    // With the barrier: right under every schedule.
    for s in [Schedule::Forward, Schedule::Reverse, Schedule::Parallel] {
        assert_eq!(run(1, s), want, "{s:?}");
    }
    // Without: in increasing thread order every thread but the last reads a slot its
    // neighbour has not written yet (the NaN poison); in decreasing order only the last
    // thread does (it runs first and reads thread 0's slot).
    let forward = run(0, Schedule::Forward);
    assert_eq!(
        forward.iter().filter(|v| v.is_nan()).count(),
        63,
        "{forward:?}"
    );
    let reverse = run(0, Schedule::Reverse);
    let nans: Vec<usize> = (0..64).filter(|&i| reverse[i].is_nan()).collect();
    assert_eq!(nans, vec![63], "{reverse:?}");
}

#[test]
fn a_block_size_that_is_not_a_multiple_of_32_is_caught_in_the_warp_reduction() {
    let x = vec![1.0f32; 200];
    let c = call("kdc_selftest_block_sum", 200, 0, vec![buf(0), buf(1)]);
    let mut b = vec![DeviceBuf::from_slice(&x), DeviceBuf::uninit(4)];
    match launch(&c, &mut b, Schedule::Forward) {
        Err(EmuError::Kernel {
            absent_lane_reads,
            message,
            ..
        }) => {
            assert!(absent_lane_reads > 0);
            assert!(message.contains("absent"), "{message}");
        }
        other => panic!("expected an absent-lane error, got {other:?}"),
    }
    // The same kernel with 224 threads (7 warps) is fine.
    let x = vec![1.0f32; 224];
    let c = call("kdc_selftest_block_sum", 224, 0, vec![buf(0), buf(1)]);
    let mut b = vec![DeviceBuf::from_slice(&x), DeviceBuf::uninit(4)];
    launch(&c, &mut b, Schedule::Parallel).unwrap();
    assert_eq!(b[1].read::<f32>(), vec![224.0]);
}

#[test]
fn a_shipped_kernel_launched_with_a_partial_warp_is_caught() {
    let x = vec![0.5f32; 100];
    let mut c = kdc_cuda::launch::softmax(1, 100, 1);
    c.block = [100, 1, 1];
    let mut b = vec![DeviceBuf::from_slice(&x), DeviceBuf::uninit(400)];
    assert!(matches!(
        launch(&c, &mut b, Schedule::Parallel),
        Err(EmuError::Kernel { .. })
    ));
}

#[test]
fn barriers_on_different_lines_are_reported() {
    let c = call("kdc_selftest_divergent_barrier", 32, 0, vec![buf(0)]);
    let mut b = vec![DeviceBuf::uninit(32 * 4)];
    match launch(&c, &mut b, Schedule::Parallel) {
        Err(EmuError::Kernel {
            divergent_barriers, ..
        }) => assert!(divergent_barriers > 0),
        other => panic!("expected a divergent barrier, got {other:?}"),
    }
}

#[test]
fn a_deadlock_is_reported_instead_of_hanging() {
    for schedule in [Schedule::Parallel, Schedule::Forward] {
        let c = call("kdc_selftest_deadlock", 64, 0, vec![buf(0)]);
        let mut b = vec![DeviceBuf::uninit(64 * 4)];
        match launch(&c, &mut b, schedule) {
            Err(EmuError::Kernel { message, .. }) => {
                assert!(message.contains("deadlock"), "{message}")
            }
            other => panic!("expected a deadlock, got {other:?}"),
        }
    }
}

#[test]
fn a_write_past_the_end_of_a_buffer_is_caught_by_the_guards() {
    let c = call("kdc_selftest_off_by_one", 32, 0, vec![Arg::I32(40), buf(0)]);
    let mut b = vec![DeviceBuf::uninit(40 * 4)];
    assert_eq!(
        launch(&c, &mut b, Schedule::Parallel).unwrap_err(),
        EmuError::OutOfBounds {
            buffer: 0,
            kernel: "kdc_selftest_off_by_one".into()
        }
    );
}

#[test]
fn unwritten_shared_memory_reads_as_nan() {
    let c = call("kdc_selftest_uninitialised_shared", 64, 0, vec![buf(0)]);
    let mut b = vec![DeviceBuf::uninit(64 * 4)];
    launch(&c, &mut b, Schedule::Parallel).unwrap();
    let y = b[0].read::<f32>();
    for (i, v) in y.iter().enumerate() {
        assert_eq!(v.is_nan(), i % 2 == 1, "thread {i}: {v}");
    }
}

#[test]
fn a_write_past_the_dynamic_shared_memory_is_caught() {
    let c = call(
        "kdc_selftest_dynamic_overflow",
        32,
        16 * 4,
        vec![Arg::I32(16), buf(0)],
    );
    let mut b = vec![DeviceBuf::uninit(4)];
    match launch(&c, &mut b, Schedule::Parallel) {
        Err(EmuError::Kernel { message, .. }) => {
            assert!(message.contains("dynamic shared"), "{message}")
        }
        other => panic!("expected a dynamic shared memory overflow, got {other:?}"),
    }
    // Within its 16 floats the same kernel is fine.
    let c = call(
        "kdc_selftest_dynamic_overflow",
        32,
        17 * 4,
        vec![Arg::I32(16), buf(0)],
    );
    launch(&c, &mut b, Schedule::Parallel).unwrap();
}

#[test]
fn bad_launches_are_rejected() {
    let mut b = vec![DeviceBuf::uninit(4)];
    let unknown = call("kdc_no_such_kernel", 32, 0, vec![buf(0)]);
    assert!(matches!(
        launch(&unknown, &mut b, Schedule::Parallel),
        Err(EmuError::BadLaunch(_))
    ));
    let wrong_args = call("kdc_fill_f32", 32, 0, vec![Arg::I32(1), buf(0)]);
    assert!(matches!(
        launch(&wrong_args, &mut b, Schedule::Parallel),
        Err(EmuError::BadLaunch(_))
    ));
    let too_big = call(
        "kdc_fill_f32",
        2048,
        0,
        vec![Arg::I32(1), Arg::F32(0.0), buf(0)],
    );
    assert!(matches!(
        launch(&too_big, &mut b, Schedule::Parallel),
        Err(EmuError::BadLaunch(_))
    ));
}

#[test]
fn the_registry_lists_exactly_the_entry_points_of_every_file_and_the_emulator_has_them() {
    let linked = emu::kernel_names();
    let mut all = Vec::new();
    for f in FILES {
        let scanned = kernels::scan_entry_points(f.source);
        assert_eq!(
            scanned, f.entry_points,
            "{}: registry and source disagree",
            f.name
        );
        for e in f.entry_points {
            assert!(linked.iter().any(|l| l == e), "{e} is not in the emulator");
            assert_eq!(kernels::file_of(e).unwrap().name, f.name);
            all.push(*e);
        }
        // The NVRTC form is self-contained: the header is inlined.
        let src = f.nvrtc_source();
        assert!(!src.contains("#include \"common.cuh\""));
        assert!(src.contains("kdc_block_sum"));
    }
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), all.len(), "an entry point is defined twice");
    // Every kernel file under kernels/ is registered.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".cu") {
            assert!(
                FILES.iter().any(|f| f.name == name),
                "{name} is not in kernels::FILES"
            );
        }
    }
}
