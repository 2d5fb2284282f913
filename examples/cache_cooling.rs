//! What an idle gap costs a hand-off between two CPUs, before any program logic: two threads
//! pinned to two CPUs pass a counter back and forth through one cache line each way; before
//! each hand-off each side touches its own working set of LINES cache lines (as a request
//! path touches its connection's state, buffers and counters), and between round trips the
//! first side spins for GAP microseconds.
//!
//!     cargo run --release --example cache_cooling [CPU_A CPU_B] [ROUND_TRIPS]
//!
//! Prints the round trip's p50 and p90 for working sets of 0, 100 and 400 lines and gaps of
//! 0.1, 1, 10 and 62 ms. A round trip that grows with the gap, though nothing else of this
//! program ran meanwhile, is the machine cooling the caches under an idle program: on a VM,
//! other guests and the host sharing the core and its caches.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One counter per cache line, so the two directions do not share one.
#[repr(align(64))]
struct Line(AtomicU64);

struct Shared {
    request: Line,
    reply: Line,
    lines: AtomicU64,
    stop: AtomicBool,
}

/// A working set of `n` lines, spread over 256 KiB so that they do not sit side by side.
fn touch(set: &mut [u8], n: usize) -> u8 {
    let mut x = 0u8;
    for i in 0..n {
        let at = ((i * 7919) % (set.len() / 64)) * 64;
        x = x.wrapping_add(set[at]);
        set[at] = x;
    }
    x
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
    let (cpu_a, cpu_b) = match args[..] {
        [a, b, ..] => (a, b),
        _ => (1, 0),
    };
    let rounds = args.get(2).copied().unwrap_or(60);
    let shared = Arc::new(Shared {
        request: Line(AtomicU64::new(0)),
        reply: Line(AtomicU64::new(0)),
        lines: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let other = shared.clone();
    let echo = std::thread::spawn(move || -> anyhow::Result<()> {
        iolab::os::cpu::pin_current_thread(&[cpu_b])?;
        let mut set = vec![1u8; 256 * 1024];
        let mut seen = 0;
        while !other.stop.load(Ordering::Relaxed) {
            let r = other.request.0.load(Ordering::Acquire);
            if r != seen {
                seen = r;
                std::hint::black_box(touch(&mut set, other.lines.load(Ordering::Relaxed) as usize));
                other.reply.0.store(r, Ordering::Release);
            }
        }
        Ok(())
    });
    iolab::os::cpu::pin_current_thread(&[cpu_a])?;
    let mut set = vec![1u8; 256 * 1024];
    let mut id = 0u64;
    println!("round trips between CPU {cpu_a} and CPU {cpu_b}, {rounds} per line:");
    for lines in [0u64, 100, 400] {
        shared.lines.store(lines, Ordering::Relaxed);
        for gap_us in [100u64, 1_000, 10_000, 62_000] {
            let mut rtt = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let idle_until = Instant::now() + Duration::from_micros(gap_us);
                while Instant::now() < idle_until {
                    std::hint::spin_loop();
                }
                id += 1;
                let start = Instant::now();
                std::hint::black_box(touch(&mut set, lines as usize));
                shared.request.0.store(id, Ordering::Release);
                let deadline = start + Duration::from_secs(1);
                while shared.reply.0.load(Ordering::Acquire) != id {
                    if Instant::now() > deadline {
                        anyhow::bail!("no hand-off back within 1 s (is CPU {cpu_b} online?)");
                    }
                }
                rtt.push(start.elapsed().as_nanos() as f64 / 1e3);
            }
            rtt.sort_by(f64::total_cmp);
            println!(
                "  working set {lines:>3} lines a side, {:>5.1} ms apart: p50 {:>5.2} us  p90 {:>5.2} us",
                gap_us as f64 / 1e3,
                rtt[rtt.len() / 2],
                rtt[rtt.len() * 9 / 10]
            );
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(())
}
