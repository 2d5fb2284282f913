//! Machine stalls, measured rather than guessed: an idle canary thread per CPU.
//!
//! A VM loses its CPUs now and then, for milliseconds: the hypervisor runs someone else
//! (steal), or the guest kernel holds a CPU with interrupts off. During such a stall the
//! server answers nothing and the generator sends nothing, so one stall can decide a short
//! point's p99 and, through it, a knee. Neither the server nor the generator can tell a stall
//! from its own slowness; a third party can.
//!
//! Each canary is pinned to one CPU, runs at real-time priority (SCHED_FIFO, so no ordinary
//! thread on that CPU, server or generator, can delay it) and sleeps on an absolute schedule,
//! one wake-up every [`PERIOD`]. How late it wakes is time its CPU did not run anything it
//! was told to: a stall of the machine, not of the program under test. Lateness above
//! [`STALL_THRESHOLD`] is kept as a stall interval (start, length) on the generator's clock,
//! so a sweep can ask how much stall fell inside a point's measured window.
//!
//! The canaries cost about one timer interrupt and two context switches per CPU per
//! millisecond (well under 1% of a CPU here). Without the privilege for real-time priority
//! they run at normal priority and say so: their lateness then also counts time other
//! threads held the CPU, and the verdict is marked as less certain (`realtime: false`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::os::clock::now_ns;

/// How often each canary wakes.
pub const PERIOD: Duration = Duration::from_millis(1);
/// Lateness up to this is the timer's and the scheduler's ordinary jitter, not a stall.
pub const STALL_THRESHOLD: Duration = Duration::from_micros(100);

/// One interval during which a CPU ran nothing it was asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stall {
    pub cpu: usize,
    /// When the canary should have woken, on [`now_ns`]'s clock.
    pub at_ns: u64,
    /// How late it woke.
    pub len_ns: u64,
}

/// Canary threads watching some CPUs until [`StallWatch::finish`].
#[derive(Debug)]
pub struct StallWatch {
    stop: Arc<AtomicBool>,
    woken: Arc<AtomicU64>,
    threads: Vec<(usize, JoinHandle<CanaryLog>)>,
}

#[derive(Debug, Default)]
struct CanaryLog {
    wakeups: u64,
    realtime: bool,
    stalls: Vec<Stall>,
    /// Lateness of the ordinary wake-ups, to say what "usual" is on this machine.
    late_sum_ns: u64,
}

/// What the canaries saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StallLog {
    pub cpus: Vec<usize>,
    /// Every canary ran at real-time priority (its lateness is the machine's alone).
    pub realtime: bool,
    pub wakeups: u64,
    /// Mean lateness of a wake-up, stalls included (µs).
    pub mean_late_us: f64,
    pub stalls: Vec<Stall>,
}

impl StallWatch {
    /// Starts one canary per CPU in `cpus` (an empty list watches nothing).
    pub fn start(cpus: &[usize]) -> StallWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let woken = Arc::new(AtomicU64::new(0));
        let threads = cpus
            .iter()
            .filter_map(|&cpu| {
                let (stop, woken) = (stop.clone(), woken.clone());
                std::thread::Builder::new()
                    .name(format!("canary-{cpu}"))
                    .spawn(move || canary(cpu, &stop, &woken))
                    .ok()
                    .map(|t| (cpu, t))
            })
            .collect();
        StallWatch { stop, woken, threads }
    }

    /// Wake-ups so far, all canaries together.
    pub fn wakeups(&self) -> u64 {
        self.woken.load(Ordering::Relaxed)
    }

    /// Stops the canaries and hands back what they saw.
    pub fn finish(self) -> StallLog {
        self.stop.store(true, Ordering::Relaxed);
        let mut log = StallLog {
            realtime: true,
            ..StallLog::default()
        };
        let mut late_sum = 0u64;
        for (cpu, t) in self.threads {
            let Ok(c) = t.join() else { continue };
            log.cpus.push(cpu);
            log.realtime &= c.realtime;
            log.wakeups += c.wakeups;
            late_sum += c.late_sum_ns;
            log.stalls.extend(c.stalls);
        }
        log.realtime &= !log.cpus.is_empty();
        log.stalls.sort_by_key(|s| s.at_ns);
        log.mean_late_us = if log.wakeups > 0 {
            late_sum as f64 / log.wakeups as f64 / 1e3
        } else {
            0.0
        };
        log
    }
}

fn canary(cpu: usize, stop: &AtomicBool, woken: &AtomicU64) -> CanaryLog {
    let mut log = CanaryLog::default();
    if crate::os::cpu::pin_current_thread(&[cpu]).is_err() {
        return log;
    }
    crate::os::sys::tighten_timer_slack();
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: a plain struct we own; 0 is this thread.
    log.realtime = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0;
    let period = PERIOD.as_nanos() as u64;
    let threshold = STALL_THRESHOLD.as_nanos() as u64;
    let mut next = now_ns() + period;
    while !stop.load(Ordering::Relaxed) {
        sleep_until(next);
        let now = now_ns();
        let late = now.saturating_sub(next);
        log.wakeups += 1;
        woken.fetch_add(1, Ordering::Relaxed);
        log.late_sum_ns += late;
        if late > threshold {
            log.stalls.push(Stall {
                cpu,
                at_ns: next,
                len_ns: late,
            });
        }
        // After a stall the schedule resumes from now: the wake-ups it swallowed are one stall,
        // not a burst of late ones.
        next = next.max(now) + period;
        if late > period {
            next = now + period;
        }
    }
    log
}

/// Every online CPU of the machine, whatever this process's own affinity (a generator pinned
/// to one CPU still wants to know when the server's CPU stalled).
pub fn online_cpus() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| crate::os::cpu::parse_cpu_list(s.trim()).ok())
        .filter(|cpus| !cpus.is_empty())
        .unwrap_or_else(|| (0..crate::os::cpu::num_cpus()).collect())
}

/// Sleeps until `at` on [`now_ns`]'s clock.
fn sleep_until(at: u64) {
    let left = at.saturating_sub(now_ns());
    if left > 0 {
        std::thread::sleep(Duration::from_nanos(left));
    }
}

impl StallLog {
    /// The stalls that overlap `[from, to)` on [`now_ns`]'s clock, clipped to it.
    pub fn within(&self, from: u64, to: u64) -> impl Iterator<Item = Stall> + '_ {
        self.stalls.iter().filter_map(move |s| {
            let start = s.at_ns.max(from);
            let end = (s.at_ns + s.len_ns).min(to);
            // Lazily: for a stall outside the window, end - start would underflow.
            (end > start).then(|| Stall {
                cpu: s.cpu,
                at_ns: start,
                len_ns: end - start,
            })
        })
    }

    /// A summary of the stalls within `[from, to)`; `grace_us` as in
    /// [`StallSummary::excess_us`].
    pub fn summary(&self, from: u64, to: u64, grace_us: f64) -> StallSummary {
        let mut s = StallSummary {
            cpus: self.cpus.clone(),
            realtime: self.realtime,
            mean_late_us: self.mean_late_us,
            grace_us,
            total_us_by_cpu: vec![0.0; self.cpus.len()],
            ..StallSummary::default()
        };
        for st in self.within(from, to) {
            let us = st.len_ns as f64 / 1e3;
            if let Some(i) = self.cpus.iter().position(|&c| c == st.cpu) {
                s.total_us_by_cpu[i] += us;
            }
            s.count += 1;
            s.total_us += us;
            s.max_us = s.max_us.max(us);
            s.excess_us += (us - grace_us).max(0.0);
            s.longest.push(us);
        }
        s.longest.sort_by(|a, b| b.total_cmp(a));
        s.longest.truncate(8);
        s
    }
}

/// The stalls of one measured window, as the `load --json` summary reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StallSummary {
    /// The CPUs watched.
    pub cpus: Vec<usize>,
    pub realtime: bool,
    /// Stalls (a canary later than [`STALL_THRESHOLD`]).
    pub count: u64,
    pub total_us: f64,
    /// `total_us` per watched CPU, in the order of `cpus`: a stall of the machine shows on
    /// both, a CPU held by something the canary cannot preempt (a kernel path of the program
    /// under test, on a kernel that does not preempt there) on one.
    #[serde(default)]
    pub total_us_by_cpu: Vec<f64>,
    pub max_us: f64,
    /// Stall time beyond `grace_us` per stall, summed: the part of the stalls long enough to
    /// push a request past a latency bound of about `grace_us` on their own.
    pub excess_us: f64,
    pub grace_us: f64,
    /// The longest few, longest first (µs).
    pub longest: Vec<f64>,
    /// A canary's mean lateness over the whole run (µs): this machine's ordinary jitter.
    pub mean_late_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(stalls: &[(u64, u64)]) -> StallLog {
        StallLog {
            cpus: vec![0],
            realtime: true,
            wakeups: 100,
            mean_late_us: 5.0,
            stalls: stalls
                .iter()
                .map(|&(at_ns, len_ns)| Stall {
                    cpu: 0,
                    at_ns,
                    len_ns,
                })
                .collect(),
        }
    }

    #[test]
    fn stalls_are_clipped_to_the_window() {
        let l = log(&[(100, 50), (900, 300), (2_000, 10)]);
        let inside: Vec<_> = l.within(120, 1_000).map(|s| (s.at_ns, s.len_ns)).collect();
        assert_eq!(inside, vec![(120, 30), (900, 100)]);
        let s = l.summary(0, 1_000_000, 0.0);
        assert_eq!(s.count, 3);
        assert!((s.total_us - 0.36).abs() < 1e-9, "{s:?}");
        assert_eq!(s.longest, vec![0.3, 0.05, 0.01]);
    }

    #[test]
    fn stall_time_is_told_per_cpu() {
        let mut l = log(&[(0, 2_000), (10_000, 500), (20_000, 300)]);
        l.cpus = vec![0, 1];
        l.stalls[1].cpu = 1;
        let s = l.summary(0, u64::MAX, 0.0);
        assert_eq!(s.total_us_by_cpu, vec![2.3, 0.5]);
        assert!((s.total_us - 2.8).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn excess_counts_only_what_is_past_the_grace() {
        let l = log(&[(0, 3_000_000), (10_000_000, 400_000), (20_000_000, 700_000)]);
        // 3 ms and 0.7 ms stalls against a 500 µs grace: 2.5 ms + 0.2 ms.
        let s = l.summary(0, u64::MAX, 500.0);
        assert!((s.excess_us - 2_700.0).abs() < 1e-6, "{s:?}");
        assert_eq!(l.summary(0, u64::MAX, 5_000.0).excess_us, 0.0);
    }

    #[test]
    fn a_canary_watching_an_idle_cpu_wakes_and_stops() {
        let watch = StallWatch::start(&[0]);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while watch.wakeups() < 3 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        let l = watch.finish();
        assert_eq!(l.cpus, vec![0]);
        assert!(l.wakeups >= 3, "{l:?}");
    }
}
