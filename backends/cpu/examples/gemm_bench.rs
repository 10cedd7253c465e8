//! Micro benchmark of `kdc_cpu::matmul` in f32, printing GFLOP/s (2·m·k·n flops per product).
//!
//! `cargo run --release --example gemm_bench [-- SECONDS_PER_CASE]`
//!
//! Cases: a square 512³ product, and 4096×192×576 (a QKV projection of 4096 tokens at width 192)
//! in the layout a linear layer uses (`x·Wᵀ`, W stored `[n, k]`) and plain (`x·W`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use kdc_cpu::matmul;

struct Case {
    name: &'static str,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    b_trans: bool,
}

fn main() {
    let budget = std::env::args()
        .nth(1)
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(2));
    let cases = [
        Case {
            name: "512x512x512        (a·b)",
            batch: 1,
            m: 512,
            k: 512,
            n: 512,
            b_trans: false,
        },
        Case {
            name: "4096x192x576       (x·Wᵀ)",
            batch: 1,
            m: 4096,
            k: 192,
            n: 576,
            b_trans: true,
        },
        Case {
            name: "4096x192x576       (x·W)",
            batch: 1,
            m: 4096,
            k: 192,
            n: 576,
            b_trans: false,
        },
        Case {
            name: "64 x 77x64x77      (q·kᵀ)",
            batch: 64,
            m: 77,
            k: 64,
            n: 77,
            b_trans: true,
        },
    ];
    println!(
        "kdc-cpu matmul f32, {} rayon threads",
        rayon::current_num_threads()
    );
    for c in &cases {
        let a: Vec<f32> = (0..c.batch * c.m * c.k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let b_len = if c.batch > 1 {
            c.batch * c.k * c.n
        } else {
            c.k * c.n
        };
        let b: Vec<f32> = (0..b_len)
            .map(|i| ((i * 104_729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mut out = vec![0f32; c.batch * c.m * c.n];
        let batched = c.batch > 1;
        let run = |out: &mut [f32]| {
            matmul(
                black_box(&a),
                black_box(&b),
                out,
                c.batch,
                c.m,
                c.k,
                c.n,
                false,
                c.b_trans,
                batched,
                batched,
            );
        };
        // Warm up (thread pool, page faults, caches).
        for _ in 0..3 {
            run(&mut out);
        }
        let mut iters = 0u64;
        let mut best = f64::INFINITY;
        let start = Instant::now();
        while start.elapsed() < budget || iters < 5 {
            let t = Instant::now();
            run(&mut out);
            best = best.min(t.elapsed().as_secs_f64());
            iters += 1;
        }
        let mean = start.elapsed().as_secs_f64() / iters as f64;
        let flops = 2.0 * (c.batch * c.m * c.k * c.n) as f64;
        println!(
            "{:28} {:8.3} ms mean {:8.3} ms best  {:7.1} GFLOP/s mean {:7.1} GFLOP/s best  \
             ({iters} runs)",
            c.name,
            mean * 1e3,
            best * 1e3,
            flops / mean / 1e9,
            flops / best / 1e9,
        );
        black_box(&out);
    }
}
