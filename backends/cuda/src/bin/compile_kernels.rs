//! The NVRTC compile check: compiles every kernel file kdc ships ([`kdc_cuda::kernels::FILES`])
//! to cubin for real GPU architectures, printing each result and NVRTC's log, then compiles a
//! deliberately broken kernel that must fail. Needs no GPU, only libnvrtc (the PyPI wheel
//! `nvidia-cuda-nvrtc-cu12` has it; see compile-check.sh).
//!
//! ```text
//! compile_kernels [--include-path DIR] [--arch sm_80,sm_90]
//! ```
//!
//! `--include-path` (or `KDC_CUDA_INCLUDE`) is the directory holding `cuda_bf16.h`
//! (`nvidia/cuda_runtime/include` of the `nvidia-cuda-runtime-cu12` wheel).
//!
//! Exit status: 0 when every shipped kernel compiled and the broken one did not, 1 otherwise,
//! 2 when libnvrtc cannot be loaded, 3 on a usage error.

use std::ffi::{c_char, CString};
use std::process::ExitCode;
use std::time::Instant;

use cudarc::nvrtc::{result, sys};
use kdc_cuda::kernels::FILES;

/// Compiles fine with g++ (whose <cmath> defines INFINITY) but not with NVRTC, which has no
/// standard headers: the emulator alone would not notice.
const BROKEN: &str = r#"
extern "C" __global__ void kdc_broken_uses_host_macro(float* y) {
    y[threadIdx.x] = INFINITY;
}
"#;

struct Outcome {
    ok: bool,
    log: String,
    cubin_bytes: usize,
}

fn text(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).trim_end().to_string()
}

/// Compiles `source` for `arch` (a real architecture, `sm_XX`) and fetches the cubin.
fn compile(name: &str, source: &str, arch: &str, include: Option<&str>) -> Outcome {
    let src = CString::new(source).expect("kernel source has a NUL byte");
    let cname = CString::new(name).unwrap();
    let prog = match result::create_program(&src, Some(&cname)) {
        Ok(p) => p,
        Err(e) => {
            return Outcome {
                ok: false,
                log: format!("nvrtcCreateProgram failed: {e:?}"),
                cubin_bytes: 0,
            }
        }
    };
    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--fmad=true".to_string(),
    ];
    if let Some(dir) = include {
        options.push(format!("--include-path={dir}"));
    }
    // SAFETY: `prog` was just created and is destroyed once, below.
    unsafe {
        let compiled = result::compile_program(prog, &options);
        let log = result::get_program_log(prog)
            .map(|l| text(&l))
            .unwrap_or_default();
        let mut cubin_bytes = 0usize;
        let ok = match compiled {
            Ok(()) => {
                let mut size = 0usize;
                let got = sys::nvrtcGetCUBINSize(prog, &mut size);
                if got == sys::nvrtcResult::NVRTC_SUCCESS && size > 0 {
                    let mut cubin = vec![0 as c_char; size];
                    cubin_bytes = size;
                    sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr()) == sys::nvrtcResult::NVRTC_SUCCESS
                } else {
                    false
                }
            }
            Err(_) => false,
        };
        let log = match compiled {
            Err(e) if log.is_empty() => format!("{e:?}"),
            Err(e) => format!("{e:?}\n{log}"),
            Ok(()) => log,
        };
        let _ = result::destroy_program(prog);
        Outcome {
            ok,
            log,
            cubin_bytes,
        }
    }
}

fn indent(log: &str) -> String {
    log.lines().map(|l| format!("      | {l}\n")).collect()
}

fn main() -> ExitCode {
    let mut include = std::env::var("KDC_CUDA_INCLUDE").ok();
    let mut archs = vec!["sm_80".to_string(), "sm_90".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--include-path", Some(v)) => include = Some(v),
            ("--arch", Some(v)) => archs = v.split(',').map(str::to_string).collect(),
            _ => {
                eprintln!("usage: compile_kernels [--include-path DIR] [--arch sm_80,sm_90]");
                return ExitCode::from(3);
            }
        }
    }

    // SAFETY: only tries to load the library.
    if !unsafe { sys::is_culib_present() } {
        eprintln!(
            "error: libnvrtc was not found. Install the `nvidia-cuda-nvrtc-cu12` wheel and put its \
             nvidia/cuda_nvrtc/lib on LD_LIBRARY_PATH (backends/cuda/compile-check.sh does both)."
        );
        return ExitCode::from(2);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    println!(
        "NVRTC {major}.{minor}; architectures {}; include path {}",
        archs.join(", "),
        include.as_deref().unwrap_or("(none)")
    );

    let mut failures = 0;
    let mut compiled = 0;
    let t0 = Instant::now();
    for file in FILES {
        let source = file.nvrtc_source();
        for arch in &archs {
            let t = Instant::now();
            let out = compile(file.name, &source, arch, include.as_deref());
            let status = if out.ok { "ok" } else { "FAILED" };
            println!(
                "{status:>6}  {:<16} {arch}  {:>7} bytes of cubin  {:>5.2} s  entry points: {}",
                file.name,
                out.cubin_bytes,
                t.elapsed().as_secs_f64(),
                file.entry_points.join(" ")
            );
            if !out.log.is_empty() {
                print!("{}", indent(&out.log));
            }
            if out.ok {
                compiled += 1;
            } else {
                failures += 1;
                if file.needs_cuda_headers && include.is_none() {
                    println!("      (this file includes <cuda_bf16.h>: pass --include-path)");
                }
            }
        }
    }

    let broken = compile("broken.cu", BROKEN, &archs[0], include.as_deref());
    println!(
        "{:>6}  broken.cu (must fail)  {}",
        if broken.ok { "WRONG" } else { "ok" },
        if broken.ok {
            "compiled, but it uses INFINITY, which NVRTC does not define"
        } else {
            "rejected, as it must be"
        }
    );
    print!("{}", indent(&broken.log));

    println!(
        "{compiled} compiled, {failures} failed, in {:.1} s; broken kernel {}",
        t0.elapsed().as_secs_f64(),
        if broken.ok {
            "COMPILED (wrong)"
        } else {
            "rejected"
        }
    );
    if failures > 0 || broken.ok {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
