//! How often does this machine take the CPU away from a busy thread, and for how long?
//!
//! Spins reading the monotonic clock and records every gap between two reads above 5 us:
//! time the thread did not run (hypervisor, interrupts, other tasks). That is the floor under
//! any latency or send-lag number measured on the same CPU.
//!
//!     taskset -c 1 cargo run --release --example clock_jitter [SECONDS]

use std::time::Instant;

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let run_ns = (seconds * 1e9) as u64;
    let start = Instant::now();
    let mut last = 0u64;
    let mut reads = 0u64;
    let mut gaps: Vec<u64> = Vec::new();
    loop {
        let now = start.elapsed().as_nanos() as u64;
        reads += 1;
        if now - last > 5_000 {
            gaps.push(now - last);
        }
        last = now;
        if now > run_ns {
            break;
        }
    }
    gaps.sort_unstable();
    let lost: u64 = gaps.iter().sum();
    let at = |q: f64| {
        gaps.get(((gaps.len().max(1) - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or(0)
            / 1000
    };
    println!(
        "{seconds}s, {reads} clock reads: {} gaps > 5us ({:.0}/s), {:.2} ms lost ({:.3}%); gap p50 {} us, p99 {} us, max {} us",
        gaps.len(),
        gaps.len() as f64 / seconds,
        lost as f64 / 1e6,
        lost as f64 / run_ns as f64 * 100.0,
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
