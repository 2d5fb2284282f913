//! What this machine's stalls look like over time: a real-time canary per CPU (the same one
//! the generator and the sweep use), one line per second: stalls above 100 us, their total,
//! the longest, and the excess beyond 500 us (what could push a request past a 1 ms SLO).
//!
//!     cargo run --release --example machine_noise [SECONDS]

use iolab::loadgen::canary::StallWatch;

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(30);
    let cpus: Vec<usize> = (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    let start = iolab::os::clock::now_ns();
    let watch = StallWatch::start(&cpus);
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    let log = watch.finish();
    println!(
        "cpus {:?}, real-time canaries: {}, mean lateness {:.1} us",
        log.cpus, log.realtime, log.mean_late_us
    );
    let mut per_sec_excess = Vec::new();
    for s in 0..seconds {
        let from = start + s * 1_000_000_000;
        let sum = log.summary(from, from + 1_000_000_000, 500.0);
        per_sec_excess.push(sum.excess_us);
        println!(
            "{s:>4}s  stalls {:>4}  total {:>8.0} us  max {:>7.0} us  excess>500us {:>7.0} us  by cpu {:?}",
            sum.count,
            sum.total_us,
            sum.max_us,
            sum.excess_us,
            sum.total_us_by_cpu
                .iter()
                .map(|us| us.round())
                .collect::<Vec<_>>()
        );
    }
    per_sec_excess.sort_by(f64::total_cmp);
    let n = per_sec_excess.len();
    println!(
        "seconds with any excess: {} of {n}; excess per second p50 {:.0} us, p90 {:.0} us, max {:.0} us",
        per_sec_excess.iter().filter(|e| **e > 0.0).count(),
        per_sec_excess[n / 2],
        per_sec_excess[(n * 9 / 10).min(n - 1)],
        per_sec_excess[n - 1]
    );
}
