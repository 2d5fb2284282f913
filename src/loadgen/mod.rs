//! The open-loop load generator.
//!
//! `--rate` is the total offered load. It is split evenly over `--connections`, each an
//! independent arrival process (Poisson by default), and the connections are split over
//! `--threads` driver threads, each an event loop over its connections ([`driver`]). Requests
//! leave on an absolute schedule whether or not earlier ones were answered; latency runs from
//! the scheduled send to the full reply, so nothing the server does can hide from it.
//!
//! The generator also checks itself: how late each send left versus its schedule (send lag),
//! whether the achieved rate met the offered one, and whether the interarrival times it
//! actually produced pass a Kolmogorov–Smirnov test against the exponential distribution.

pub mod arrival;
pub mod canary;
pub mod client;
mod driver;
pub mod error;
pub mod merge;
pub mod spec;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::sansio::frame::{DEFAULT_CHUNK_SIZE, DEFAULT_MAX_FRAME};
use crate::sansio::stats::{
    gaps_per_sample, ks_erlang, ks_exponential, mean_cv, new_histogram, quantile_ci, KsResult,
};
pub use arrival::ArrivalKind;
use driver::{Report, StartGate, ThreadOutcome, ThreadPlan};
use error::LoadError;
use spec::{ReplyDist, SizeDist, WorkDist};

/// How connections are opened before the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectMode {
    /// One after another, each waited for, before the first request.
    Sequential,
    /// All at once; each joins the schedule as soon as its handshake completes.
    Concurrent,
}

/// How a driver thread moves its connections' bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// `uring` for small messages where the kernel allows it, else `epoll` (what measured
    /// faster on each side of that line: docs/measurements.md).
    Auto,
    /// Non-blocking sockets and edge-triggered epoll: a wait and two reads per reply.
    Epoll,
    /// io_uring: multishot receives into a shared buffer ring, sends submitted as scheduled.
    Uring,
    /// The LibOS queue API (push/pop tokens, wait_any): one loop over any transport. The
    /// only driver for `--transport shm` and `--transport userspace`; over TCP, a baseline
    /// for what the abstraction costs.
    Queue,
}

/// Mean message size up to which `--driver auto` picks io_uring. Measured on the 2-core VM
/// (64 connections, server on CPU 0): with 64 B echo the uring driver let the server reach
/// ~300k rps where the epoll driver's own send lag ended runs at ~156k; with 16 KiB echo the
/// uring driver's p99 was worse (the epoll driver measured the same server at 95k rps, the
/// uring driver at 37.5k).
pub const AUTO_URING_MAX_MEAN: f64 = 4096.0;

/// Timescale of the arrivals check. It matches the send-lag bound a sweep accepts by default
/// (200 µs): a generator allowed to be that late is judged Poisson at that scale, not at the
/// few microseconds one send costs it (measured on the 2-core VM: gap by gap the K-S test
/// rejects every rate from 25k rps up, while 200 µs windows pass from 25k to 150k).
pub const DEFAULT_KS_TIMESCALE: Duration = Duration::from_micros(200);

impl DriverKind {
    /// `Auto` made concrete for this machine and this workload.
    pub fn resolve(self, request: SizeDist, reply: ReplyDist) -> DriverKind {
        let reply_mean = match reply {
            ReplyDist::Echo => request.mean(),
            ReplyDist::Sized(d) => d.mean(),
        };
        let small = request.mean().max(reply_mean) <= AUTO_URING_MAX_MEAN;
        match self {
            DriverKind::Auto if small && driver::uring_available() => DriverKind::Uring,
            DriverKind::Auto => DriverKind::Epoll,
            other => other,
        }
    }
}

/// A load run, fully specified.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub addr: SocketAddr,
    /// Total offered rate, requests per second.
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub threads: usize,
    pub arrival: ArrivalKind,
    pub request_size: SizeDist,
    pub reply: ReplyDist,
    pub work: WorkDist,
    pub seed: u64,
    /// Requests in flight per connection before further sends are counted as overflow.
    pub max_in_flight: usize,
    pub chunk_size: usize,
    pub max_frame: usize,
    pub connect: ConnectMode,
    /// The I/O model of the driver threads.
    pub driver: DriverKind,
    /// Cut the run into intervals of this length (for the per-interval log and --hdr-log).
    pub log_interval: Option<Duration>,
    /// How long to wait for replies still in flight after the last send.
    pub drain_timeout: Duration,
    /// CPUs for the driver threads (thread i on pin[i % len]); empty: no pinning.
    pub pin: Vec<usize>,
    /// Keep one record per request (for --requests-log).
    pub requests_log: bool,
    /// Shortest gap whose frequency the arrivals check judges (see [`stats`]).
    pub ks_resolution: Duration,
    /// Timescale at which the arrivals check judges the process (see [`stats`]): it tests sums
    /// of rate x timescale consecutive gaps.
    pub ks_timescale: Duration,
    /// Extra connections opened before the run and held, silent, until its end: they cost
    /// the server whatever an idle connection costs its I/O model.
    pub idle_connections: usize,
    /// Speak HTTP/1.1, asking for these pages (one drawn at random per request), instead of
    /// the frame protocol.
    pub http: Option<std::sync::Arc<client::Pages>>,
    /// Reach the server through the shared-memory segment of this name (`serve --engine
    /// shm`) instead of TCP; `addr` is then unused.
    pub shm: Option<String>,
    /// Reach the server through a user-space TCP/IP stack (smoltcp) on a TAP device of the
    /// load's own, instead of the kernel's sockets. Needs `netns`.
    pub userspace: Option<crate::os::tap::LinkOptions>,
    /// Run the load inside this (existing) network namespace.
    pub netns: Option<String>,
    /// CPUs a real-time canary watches for machine stalls during the run ([`canary`]);
    /// empty: none.
    pub watch_cpus: Vec<usize>,
    /// Whether idle CPUs poll (held awake) or may halt during the run; the summary records
    /// what was in force.
    pub cpu_idle: crate::os::cpu::CpuIdle,
    /// Of each machine stall, the part beyond this counts as `machine_stalls.excess_us`: what
    /// could push a request past a latency bound about twice this long on its own.
    pub stall_grace: Duration,
    /// Closed loop: each connection keeps this many requests outstanding and sends the next
    /// as each reply arrives (`rate` is then unused). `None`: the open loop, on a schedule.
    pub closed_loop: Option<usize>,
    /// Stop after this many measured requests have been sent and answered (`--requests`).
    pub requests: Option<u64>,
    /// Start the measured window at this wall-clock instant (the warm-up before it), so that
    /// agents on several machines measure the same window (`--start-at`).
    pub start_at: Option<std::time::SystemTime>,
    /// This run is one agent of several (`--agent NAME`): its name labels the output, and
    /// its seed is derived from `seed` and the name, so agents' arrivals are independent.
    pub agent: Option<String>,
    /// This host's clock minus the reference clock, in seconds, where the caller measured it
    /// (`--clock-offset`): recorded, and used by `iolab merge` to line up agents' sends.
    pub clock_offset: Option<f64>,
}

impl LoadConfig {
    pub fn new(addr: SocketAddr, rate: f64, duration: Duration) -> Self {
        LoadConfig {
            addr,
            rate,
            duration,
            warmup: Duration::ZERO,
            connections: 16,
            threads: 1,
            arrival: ArrivalKind::Poisson,
            request_size: SizeDist::Fixed(64),
            reply: ReplyDist::Echo,
            work: WorkDist::None,
            seed: 1,
            max_in_flight: 1024,
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_frame: DEFAULT_MAX_FRAME,
            connect: ConnectMode::Sequential,
            driver: DriverKind::Auto,
            log_interval: None,
            drain_timeout: Duration::from_secs(5),
            pin: Vec::new(),
            requests_log: false,
            ks_resolution: Duration::from_micros(20),
            ks_timescale: DEFAULT_KS_TIMESCALE,
            idle_connections: 0,
            http: None,
            shm: None,
            userspace: None,
            netns: None,
            watch_cpus: canary::online_cpus(),
            cpu_idle: crate::os::cpu::CpuIdle::Awake,
            stall_grace: Duration::from_micros(500),
            closed_loop: None,
            requests: None,
            start_at: None,
            agent: None,
            clock_offset: None,
        }
    }

    /// Where the load goes, as people write it: `HOST:PORT` or `shm:NAME`.
    pub fn endpoint(&self) -> String {
        match &self.shm {
            Some(name) => format!("shm:{name}"),
            None => self.addr.to_string(),
        }
    }

    /// Rejects combinations that cannot run, with a reason a person can act on.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(depth) = self.closed_loop {
            if depth == 0 {
                return Err("--depth must be at least 1 request outstanding per connection".into());
            }
            if depth > self.max_in_flight {
                return Err(format!(
                    "--depth {depth} is above --max-in-flight {}",
                    self.max_in_flight
                ));
            }
        } else if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!(
                "--rate must be a positive number of requests per second, not {}",
                self.rate
            ));
        }
        if self.duration.is_zero() {
            return Err("--duration must be longer than zero".into());
        }
        if self.requests == Some(0) {
            return Err("--requests must be at least 1".into());
        }
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.shm.is_some() && self.idle_connections > 0 {
            return Err("--idle-connections opens TCP connections; a shm run has none".into());
        }
        if self.userspace.is_some() && self.idle_connections > 0 {
            return Err(
                "--idle-connections opens kernel TCP connections; use them with --transport tcp".into(),
            );
        }
        if self.userspace.is_some() && self.threads > 1 {
            return Err("--transport userspace runs one stack on one TAP queue: --threads 1".into());
        }
        if self.shm.is_some() && self.http.is_some() {
            return Err("the shm transport carries the frame protocol only".into());
        }
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if self.chunk_size == 0 {
            return Err("--chunk-size must be at least 1 byte".into());
        }
        if self.max_frame > u32::MAX as usize {
            return Err("--max-frame must be below 4 GiB".into());
        }
        let too_big =
            |what: &str, n: u64| format!("{what} can reach {n} B, above --max-frame {} B", self.max_frame);
        if let Some(n) = self.request_size.max().filter(|&n| n > self.max_frame as u64) {
            return Err(too_big("--request-size", n));
        }
        if let ReplyDist::Sized(d) = self.reply {
            if let Some(n) = d.max().filter(|&n| n > self.max_frame as u64) {
                return Err(too_big("--reply", n));
            }
        }
        Ok(())
    }
}

/// One request, as `--requests-log` writes it (times in ns on the generator's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    pub id: u64,
    pub scheduled_ns: u64,
    pub sent_ns: u64,
    pub done_ns: u64,
    pub request_bytes: u32,
    pub reply_bytes: u32,
    pub ok: bool,
}

/// One `--log-interval` slice, merged over all threads.
#[derive(Debug, Clone)]
pub struct IntervalLine {
    pub index: u64,
    pub length: Duration,
    pub completed: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

impl IntervalLine {
    pub fn describe(&self) -> String {
        let secs = self.length.as_secs_f64();
        format!(
            "[{:>6.1}s] {:>10.1} rps   p50 {:>9}   p99 {:>9}   errors {}",
            (self.index + 1) as f64 * secs,
            self.completed as f64 / secs,
            fmt_us(self.latency.value_at_quantile(0.5)),
            fmt_us(self.latency.value_at_quantile(0.99)),
            self.errors
        )
    }
}

/// The counters and histograms of a run, or of one thread of it: they add up.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Scheduled send to full reply, ns.
    pub latency: Histogram<u64>,
    /// Actual send to full reply, ns.
    pub uncorrected: Histogram<u64>,
    /// Actual send minus scheduled send, ns: the generator's own error.
    pub send_lag: Histogram<u64>,
    pub sent: u64,
    pub completed: u64,
    /// Of `completed`, those whose reply arrived before the measured window ended: with
    /// `sent`, how far the server had fallen behind when the schedule stopped.
    pub completed_by_end: u64,
    pub bad_replies: u64,
    pub overflow: u64,
    pub lost: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// HTTP responses whose status was not 200, by status.
    pub http_status: std::collections::BTreeMap<u16, u64>,
}

impl Measured {
    pub fn new() -> Self {
        Measured {
            latency: new_histogram(),
            uncorrected: new_histogram(),
            send_lag: new_histogram(),
            sent: 0,
            completed: 0,
            completed_by_end: 0,
            bad_replies: 0,
            overflow: 0,
            lost: 0,
            bytes_sent: 0,
            bytes_received: 0,
            http_status: Default::default(),
        }
    }

    pub fn add(&mut self, o: &Measured) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.uncorrected.add(&o.uncorrected);
        let _ = self.send_lag.add(&o.send_lag);
        self.sent += o.sent;
        self.completed += o.completed;
        self.completed_by_end += o.completed_by_end;
        self.bad_replies += o.bad_replies;
        self.overflow += o.overflow;
        self.lost += o.lost;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        for (status, n) in &o.http_status {
            *self.http_status.entry(*status).or_default() += n;
        }
    }
}

impl Default for Measured {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything a run measured.
#[derive(Debug)]
pub struct LoadReport {
    pub config: LoadConfig,
    pub m: Measured,
    /// The gaps between actual sends and the checks that they are Poisson.
    pub arrivals: ArrivalChecks,
    pub records: Vec<RequestRecord>,
    pub intervals: Vec<IntervalLine>,
    pub wall: Duration,
    pub cpu: Duration,
    /// Fraction of the schedule the driver threads spent on their own work rather than
    /// waiting (see [`driver::ThreadOutcome::idle_ns`]); NaN when nothing was scheduled.
    pub generator_busy: f64,
    /// Why the run did not complete, if it did not. The rest of the report is what was
    /// measured up to then.
    pub error: Option<String>,
    /// What the canaries saw over the whole run.
    pub stalls: canary::StallLog,
    /// The measured window, `[start, end)` on [`crate::os::clock::now_ns`]'s clock (zero when
    /// nothing ran).
    pub window_ns: (u64, u64),
    /// Actual and scheduled send times of the measured requests, each sorted (ns, same clock).
    pub send_times_ns: Vec<u64>,
    pub scheduled_times_ns: Vec<u64>,
    /// One reading of the monotonic clock and the wall clock together: `(now_ns, unix ns)`.
    pub wall_anchor: (u64, u64),
    /// Where this run's agent files went (`--agent` with `--json`): the HdrHistogram log and
    /// the sends, as the JSON names them.
    pub agent_files: Option<(String, String)>,
    /// A run merged from agents' (`iolab merge`): what their summaries add to this one.
    pub merged: Option<Box<merge::MergedParts>>,
}

/// The `--json` summary. Keys are part of the command-line contract: add, never rename.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The rate offered; `null` in a closed loop, whose rate is what the server allowed.
    pub offered_rps: Option<f64>,
    pub achieved_rps: f64,
    /// `null` in a closed loop.
    pub achieved_within_1pct: Option<bool>,
    /// Arrivals the schedule placed in the measured window, per second. A Poisson count is
    /// itself random (relative spread 1/sqrt(rate x duration)), so this is what achieved
    /// should be compared with to judge the server and the generator.
    pub scheduled_rps: f64,
    pub achieved_within_1pct_of_scheduled: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub sent: u64,
    pub completed: u64,
    pub errors: u64,
    pub error_kinds: ErrorKinds,
    pub latency_us: LatencyUs,
    pub latency_uncorrected_us: LatencyUs,
    pub send_lag_us: LatencyUs,
    pub interarrival: InterarrivalSummary,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub client_cpu_s: f64,
    /// Fraction of its time the generator spent working rather than waiting for the next
    /// send (its CPU time cannot say: it spins the last stretch before each send).
    pub generator_busy: f64,
    pub config: ConfigSummary,
    pub error: Option<String>,
    /// Requests sent in the measured window whose replies had not arrived when it ended. A
    /// server keeping up holds about rate x latency of them; one falling behind, a queue that
    /// grew through the point.
    pub backlog_at_end: u64,
    /// Stalls of the whole machine inside the measured window, seen by the canaries: time no
    /// program on a watched CPU could run, which neither the server nor the generator caused.
    pub machine_stalls: canary::StallSummary,
    /// `"open"` (a schedule that does not wait for replies) or `"closed"` (each connection
    /// waits for a reply before sending the next: `--closed-loop`).
    pub mode: &'static str,
    /// Closed loop: requests each connection keeps outstanding (`null` when open).
    pub depth: Option<usize>,
    /// `--agent`: who this run was, when its window started, and its files for `iolab merge`
    /// (`null` for a plain run).
    pub agent: Option<merge::AgentSummary>,
    /// A merged summary (`iolab merge`): each agent's own figures (`null` otherwise).
    pub agents: Option<Vec<merge::AgentRow>>,
    /// A merged summary: where the agents disagreed (start times, durations) beyond the
    /// bound, or anything else that makes the merge doubtful (`null` otherwise).
    pub merge_warnings: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct ErrorKinds {
    /// Replies whose id, length or payload bytes were wrong.
    pub bad_replies: u64,
    /// Sends skipped because the connection already had --max-in-flight requests out.
    pub overflow: u64,
    /// Requests still unanswered when the drain timeout ended the run.
    pub lost: u64,
    /// HTTP: responses whose status was not 200, by status (they count in `bad_replies`).
    pub http_status: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct LatencyUs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
    /// 95% confidence intervals `[low, high]` of p50, p99 and p99.9 from order statistics
    /// (`null` on a side too few samples can bound).
    pub p50_ci: (Option<f64>, Option<f64>),
    pub p99_ci: (Option<f64>, Option<f64>),
    pub p999_ci: (Option<f64>, Option<f64>),
}

#[derive(Debug, Serialize)]
pub struct InterarrivalSummary {
    pub mean_us: f64,
    pub offered_mean_us: f64,
    pub cv: f64,
    /// K-S p-value of the actual sends: sums of `ks_gaps_per_sample` consecutive gaps (about
    /// `ks_timescale_us`) against the Erlang distribution, compared from `ks_resolution_us` up.
    pub ks_p_value: f64,
    pub ks_d: f64,
    pub ks_n: usize,
    pub ks_resolution_us: f64,
    pub ks_timescale_us: f64,
    pub ks_gaps_per_sample: usize,
    /// The same test at every gap, however short.
    pub ks_strict_p_value: f64,
    /// The shortest gap the generator actually produced.
    pub min_gap_us: f64,
    /// The same test on the schedule itself (what the RNG produced, before any send lag).
    pub scheduled_ks_p_value: f64,
}

#[derive(Debug, Serialize)]
pub struct ConfigSummary {
    pub addr: String,
    pub connections: usize,
    pub threads: usize,
    pub arrival: ArrivalKind,
    pub request_size: String,
    pub reply: String,
    pub work: String,
    pub seed: u64,
    pub max_in_flight: usize,
    pub chunk_size: usize,
    pub connect: ConnectMode,
    pub driver: DriverKind,
    pub idle_connections: usize,
    /// `frame` or `http`.
    pub protocol: &'static str,
    /// HTTP: how many pages the requests draw from.
    pub pages: usize,
    /// `awake` (idle CPUs polled: the kernel's CPU-latency QoS held at 0) or `os`.
    pub cpu_idle: crate::os::cpu::CpuIdle,
}

fn latency_us(h: &Histogram<u64>) -> LatencyUs {
    let ci = |q: f64| {
        let (low, high) = quantile_ci(h, q);
        (low.map(|v| v as f64 / 1e3), high.map(|v| v as f64 / 1e3))
    };
    let q = |x: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(x) as f64 / 1e3
        }
    };
    LatencyUs {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: if h.is_empty() { 0.0 } else { h.max() as f64 / 1e3 },
        mean: if h.is_empty() { 0.0 } else { h.mean() / 1e3 },
        count: h.len(),
        p50_ci: ci(0.5),
        p99_ci: ci(0.99),
        p999_ci: ci(0.999),
    }
}

/// Formats nanoseconds as microseconds (or milliseconds when large) for people.
pub fn fmt_us(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else {
        format!("{:.1}us", ns as f64 / 1e3)
    }
}

impl LoadReport {
    /// A run that could not start: nothing measured, only the reason.
    fn failed_before_start(config: LoadConfig, error: String) -> Self {
        merge(
            config,
            Vec::new(),
            Vec::new(),
            Some(error),
            Duration::ZERO,
            Duration::ZERO,
        )
    }

    pub fn errors(&self) -> u64 {
        self.m.bad_replies + self.m.overflow + self.m.lost
    }

    /// The measured window's length: `--duration`, or up to the last reply when `--requests`
    /// ended the run first.
    pub fn measured_duration(&self) -> Duration {
        let (from, to) = self.window_ns;
        if self.config.requests.is_some() && to > from {
            Duration::from_nanos(to - from).min(self.config.duration)
        } else {
            self.config.duration
        }
    }

    pub fn closed(&self) -> bool {
        self.config.closed_loop.is_some()
    }

    pub fn achieved_rps(&self) -> f64 {
        self.m.completed as f64 / self.measured_duration().as_secs_f64()
    }

    /// The rate offered: none in a closed loop, whose rate is the server's answer.
    pub fn offered_rps(&self) -> Option<f64> {
        (!self.closed()).then_some(self.config.rate)
    }

    pub fn achieved_within_1pct(&self) -> bool {
        (self.achieved_rps() - self.config.rate).abs() <= 0.01 * self.config.rate
    }

    /// Requests the schedule placed in the measured window (sent or skipped as overflow).
    pub fn scheduled(&self) -> u64 {
        self.m.sent + self.m.overflow
    }

    pub fn scheduled_rps(&self) -> f64 {
        self.scheduled() as f64 / self.measured_duration().as_secs_f64()
    }

    pub fn achieved_within_1pct_of_scheduled(&self) -> bool {
        self.scheduled() > 0 && self.m.completed as f64 >= 0.99 * self.scheduled() as f64
    }

    pub fn summary(&self) -> Summary {
        let mut s = self.own_summary();
        if let Some(parts) = &self.merged {
            s.config.addr = parts.addr.clone();
            s.config.protocol = parts.protocol;
            s.config.pages = parts.pages;
            s.agents = Some(parts.agents.clone());
            s.merge_warnings = Some(parts.warnings.clone());
        }
        s
    }

    fn own_summary(&self) -> Summary {
        let c = &self.config;
        let gaps_us: Vec<f64> = self.arrivals.gaps_ns.iter().map(|g| g / 1e3).collect();
        let (mean_us, cv) = mean_cv(&gaps_us);
        Summary {
            offered_rps: self.offered_rps(),
            achieved_rps: self.achieved_rps(),
            achieved_within_1pct: (!self.closed()).then(|| self.achieved_within_1pct()),
            scheduled_rps: self.scheduled_rps(),
            achieved_within_1pct_of_scheduled: self.achieved_within_1pct_of_scheduled(),
            duration_s: self.measured_duration().as_secs_f64(),
            warmup_s: c.warmup.as_secs_f64(),
            sent: self.m.sent,
            completed: self.m.completed,
            errors: self.errors(),
            error_kinds: ErrorKinds {
                bad_replies: self.m.bad_replies,
                overflow: self.m.overflow,
                lost: self.m.lost,
                http_status: self
                    .m
                    .http_status
                    .iter()
                    .map(|(s, n)| (s.to_string(), *n))
                    .collect(),
            },
            latency_us: latency_us(&self.m.latency),
            latency_uncorrected_us: latency_us(&self.m.uncorrected),
            send_lag_us: latency_us(&self.m.send_lag),
            interarrival: InterarrivalSummary {
                mean_us,
                offered_mean_us: match self.offered_rps() {
                    Some(rate) => 1e6 / rate,
                    None => f64::NAN,
                },
                cv,
                ks_p_value: self.arrivals.actual.p_value,
                ks_d: self.arrivals.actual.d,
                ks_n: self.arrivals.actual.n,
                ks_resolution_us: c.ks_resolution.as_secs_f64() * 1e6,
                ks_timescale_us: c.ks_timescale.as_secs_f64() * 1e6,
                ks_gaps_per_sample: self.arrivals.gaps_per_sample,
                ks_strict_p_value: self.arrivals.strict.p_value,
                min_gap_us: self
                    .arrivals
                    .gaps_ns
                    .iter()
                    .copied()
                    .fold(f64::INFINITY, f64::min)
                    / 1e3,
                scheduled_ks_p_value: self.arrivals.scheduled.p_value,
            },
            bytes_sent: self.m.bytes_sent,
            bytes_received: self.m.bytes_received,
            client_cpu_s: self.cpu.as_secs_f64(),
            generator_busy: self.generator_busy,
            config: ConfigSummary {
                addr: c.endpoint(),
                connections: c.connections,
                threads: c.threads.min(c.connections),
                arrival: c.arrival,
                request_size: c.request_size.to_string(),
                reply: c.reply.to_string(),
                work: c.work.to_string(),
                seed: c.seed,
                max_in_flight: c.max_in_flight,
                chunk_size: c.chunk_size,
                connect: c.connect,
                driver: c.driver,
                idle_connections: c.idle_connections,
                protocol: if c.http.is_some() { "http" } else { "frame" },
                pages: c.http.as_ref().map_or(0, |p| p.len()),
                cpu_idle: c.cpu_idle,
            },
            error: self.error.clone(),
            backlog_at_end: self.backlog_at_end(),
            machine_stalls: self.machine_stalls(),
            mode: if self.closed() { "closed" } else { "open" },
            depth: c.closed_loop,
            agent: c.agent.as_ref().map(|name| self.agent_summary(name)),
            agents: None,
            merge_warnings: None,
        }
    }

    /// Turns a reading of the monotonic clock into Unix ns (this host's wall clock).
    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        let (mono, unix) = self.wall_anchor;
        (unix as i128 + mono_ns as i128 - mono as i128).max(0) as u64
    }

    /// As [`Self::unix_ns`], in seconds.
    pub fn unix_s(&self, mono_ns: u64) -> f64 {
        self.unix_ns(mono_ns) as f64 / 1e9
    }

    fn agent_summary(&self, name: &str) -> merge::AgentSummary {
        let (hdr_log, sends) = match &self.agent_files {
            Some((h, s)) => (Some(h.clone()), Some(s.clone())),
            None => (None, None),
        };
        let window_start = self.window_ns.0;
        merge::AgentSummary {
            name: name.to_string(),
            host: merge::hostname(),
            start_at_unix_s: match self.config.start_at {
                Some(at) => merge::unix_ns(at) as f64 / 1e9,
                None => self.unix_s(window_start),
            },
            window_start_unix_s: (window_start > 0).then(|| self.unix_s(window_start)),
            first_scheduled_unix_s: self.scheduled_times_ns.first().map(|&t| self.unix_s(t)),
            first_send_unix_s: self.send_times_ns.first().map(|&t| self.unix_s(t)),
            clock_offset_s: self.config.clock_offset,
            hdr_log,
            sends,
        }
    }

    /// Measured requests still unanswered when the measured window ended.
    pub fn backlog_at_end(&self) -> u64 {
        self.m
            .sent
            .saturating_sub(self.m.completed_by_end + self.m.bad_replies)
    }

    /// The canaries' stalls within the measured window.
    pub fn machine_stalls(&self) -> canary::StallSummary {
        if let Some(parts) = &self.merged {
            return parts.stalls.clone();
        }
        let (from, to) = self.window_ns;
        self.stalls
            .summary(from, to, self.config.stall_grace.as_secs_f64() * 1e6)
    }

    /// The human-readable table `iolab load` prints.
    pub fn table(&self) -> String {
        let c = &self.config;
        let s = self.summary();
        let mut t = String::new();
        if self.m.sent == 0 {
            if let Some(e) = &self.error {
                let _ = writeln!(t, "load INCOMPLETE -> {}: nothing was sent: {e}", c.endpoint());
                return t;
            }
        }
        let _ = writeln!(
            t,
            "load {} -> {}: {} over {} connection(s) on {} {} thread(s), {:.1}s (+{:.1}s warm-up)",
            if self.error.is_some() {
                "INCOMPLETE"
            } else {
                "done"
            },
            c.endpoint(),
            match (c.closed_loop, c.arrival) {
                (Some(depth), _) => format!("closed loop, {depth} outstanding per connection"),
                (None, ArrivalKind::Poisson) => format!("poisson arrivals at {} rps", c.rate),
                (None, ArrivalKind::Constant) => format!("constant arrivals at {} rps", c.rate),
            },
            c.connections,
            c.threads.min(c.connections),
            match c.driver {
                DriverKind::Uring => "uring",
                DriverKind::Queue => match (&c.shm, &c.userspace) {
                    (Some(_), _) => "queue-API (shared memory)",
                    (None, Some(_)) => "queue-API (smoltcp)",
                    (None, None) => "queue-API (kernel TCP)",
                },
                _ => "epoll",
            },
            self.measured_duration().as_secs_f64(),
            c.warmup.as_secs_f64()
        );
        let _ = writeln!(
            t,
            "  workload      {}",
            match &c.http {
                Some(pages) => format!("HTTP/1.1 GET, a page drawn at random from {}", pages.len()),
                None => format!("request {}, reply {}, work {}", c.request_size, c.reply, c.work),
            }
        );
        let _ = writeln!(
            t,
            "  requests      sent {}  completed {}  errors {} (bad replies {}, overflow {}, lost {})",
            self.m.sent,
            self.m.completed,
            self.errors(),
            self.m.bad_replies,
            self.m.overflow,
            self.m.lost
        );
        if !self.m.http_status.is_empty() {
            let by_status: Vec<String> = self
                .m
                .http_status
                .iter()
                .map(|(s, n)| format!("{s}: {n}"))
                .collect();
            let _ = writeln!(t, "  HTTP status   not 200: {}", by_status.join(", "));
        }
        if self.closed() {
            let _ = writeln!(
                t,
                "  throughput    reached {:.1} rps (a closed loop offers no rate: this is what the server let it send)\n\
                 {:16}each connection waited for a reply before its next send, so a server that stalls\n\
                 {:16}is sent less instead of showing in the latency (coordinated omission)",
                self.achieved_rps(),
                "",
                ""
            );
        }
        let noise = 100.0 / (c.rate * self.measured_duration().as_secs_f64()).sqrt();
        if !self.closed() {
            let _ = writeln!(
            t,
            "  throughput    offered {:.1} rps, scheduled {:.1} (Poisson count noise +-{:.1}%), achieved {:.1} rps\n\
             {:16}achieved is {} of offered and {} of scheduled",
            c.rate,
            self.scheduled_rps(),
            noise,
            self.achieved_rps(),
            "",
            if self.achieved_within_1pct() { "within 1%" } else { "NOT within 1%" },
            if self.achieved_within_1pct_of_scheduled() { "within 1%" } else { "NOT within 1%" },
        );
        }
        let row = |name: &str, h: &Histogram<u64>| {
            if h.is_empty() {
                return format!("  {name:<13} (no samples)\n");
            }
            format!(
                "  {name:<13} p50 {:>9}  p90 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}  mean {:>9}\n",
                fmt_us(h.value_at_quantile(0.5)),
                fmt_us(h.value_at_quantile(0.9)),
                fmt_us(h.value_at_quantile(0.99)),
                fmt_us(h.value_at_quantile(0.999)),
                fmt_us(h.max()),
                fmt_us(h.mean() as u64)
            )
        };
        t.push_str(&row("latency", &self.m.latency));
        t.push_str(&row("uncorrected", &self.m.uncorrected));
        t.push_str(&row("send lag", &self.m.send_lag));
        let ia = &s.interarrival;
        if self.closed() {
            let _ = writeln!(
                t,
                "  arrivals      none to check: in a closed loop the sends follow the replies"
            );
        } else if self.arrivals.gaps_ns.is_empty() {
            let _ = writeln!(t, "  arrivals      (none measured)");
        } else {
            let _ = writeln!(
                t,
                "  arrivals      mean gap {:.1}us (offered {:.1}us)  cv {:.2}  K-S p={:.3} at {:.0}us scale \
                 ({} gaps per sample, n={}, from {:.0}us up)\n\
                 {:16}every gap p={:.1e}, shortest gap {:.1}us, schedule p={:.3}",
                ia.mean_us,
                ia.offered_mean_us,
                ia.cv,
                ia.ks_p_value,
                ia.ks_timescale_us,
                ia.ks_gaps_per_sample,
                ia.ks_n,
                ia.ks_resolution_us,
                "",
                ia.ks_strict_p_value,
                ia.min_gap_us,
                ia.scheduled_ks_p_value
            );
        }
        let _ = writeln!(
            t,
            "  client CPU    {:.2}s over {:.2}s, busy {:.0}% of the schedule (the rest waiting for the next send)",
            self.cpu.as_secs_f64(),
            self.wall.as_secs_f64(),
            self.generator_busy * 100.0
        );
        let st = self.machine_stalls();
        if !st.cpus.is_empty() {
            let _ = writeln!(
                t,
                "  machine       {} stall(s) over {:.0}us on CPUs {:?} in the measured window, {:.1}ms in all, longest {:.0}us{}",
                st.count,
                canary::STALL_THRESHOLD.as_secs_f64() * 1e6,
                st.cpus,
                st.total_us / 1e3,
                st.max_us,
                if st.realtime { "" } else { " (canaries without real-time priority: an upper bound)" }
            );
        }
        let _ = writeln!(t, "  idle CPUs     {}", self.config.cpu_idle.describe());
        let _ = writeln!(
            t,
            "  backlog       {} request(s) unanswered when the measured window ended",
            self.backlog_at_end()
        );
        if let Some(e) = &self.error {
            let _ = writeln!(t, "  error         {e}");
        }
        t
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(&self.summary())?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
    }

    /// The measured requests' send times for `iolab merge`: a header giving the measured
    /// window's start in Unix ns on this host's clock, then per request the scheduled and the
    /// actual send, in ns after that start, sorted each.
    pub fn write_sends(&self, path: &Path) -> anyhow::Result<()> {
        let from = self.window_ns.0;
        let start_unix_ns = self.unix_ns(from);
        let mut out = String::with_capacity(self.send_times_ns.len() * 22 + 100);
        let _ = writeln!(out, "{} {start_unix_ns}", merge::SENDS_HEADER);
        for (sched, sent) in self.scheduled_times_ns.iter().zip(&self.send_times_ns) {
            let _ = writeln!(
                out,
                "{} {}",
                *sched as i64 - from as i64,
                *sent as i64 - from as i64
            );
        }
        std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Interarrival times in microseconds, one per line: the first `limit` consecutive gaps.
    pub fn write_interarrivals(&self, path: &Path, limit: usize) -> anyhow::Result<()> {
        let gaps = &self.arrivals.gaps_ns[..self.arrivals.gaps_ns.len().min(limit)];
        let mut out = String::with_capacity(gaps.len() * 8);
        for g in gaps {
            let _ = writeln!(out, "{:.3}", g / 1e3);
        }
        std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn write_requests_log(&self, path: &Path) -> anyhow::Result<()> {
        let mut w =
            csv::Writer::from_path(path).with_context(|| format!("cannot write {}", path.display()))?;
        let mut records = self.records.clone();
        records.sort_by_key(|r| r.scheduled_ns);
        for r in &records {
            w.serialize(r)?;
        }
        w.flush()?;
        Ok(())
    }

    /// The per-interval latency histograms as an HdrHistogram interval log (values in ns),
    /// untagged; then the whole measured window's latency, uncorrected latency and send lag,
    /// tagged [`merge::TAG_LATENCY`] and so on, which `iolab merge` adds up exactly.
    pub fn write_hdr_log(&self, path: &Path) -> anyhow::Result<()> {
        use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
        use hdrhistogram::serialization::V2DeflateSerializer;
        let file = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
        let mut file = std::io::BufWriter::new(file);
        let mut serializer = V2DeflateSerializer::new();
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment("iolab load: latency from scheduled send to full reply, values in ns")
            .with_max_value_divisor(1000.0)
            .begin_log_with(&mut file, &mut serializer)?;
        for line in &self.intervals {
            let start = self.config.warmup + line.length * line.index as u32;
            log.write_histogram(&line.latency, start, line.length, None)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        }
        let whole = [
            (merge::TAG_LATENCY, &self.m.latency),
            (merge::TAG_UNCORRECTED, &self.m.uncorrected),
            (merge::TAG_SEND_LAG, &self.m.send_lag),
        ];
        for (tag, h) in whole {
            log.write_histogram(h, self.config.warmup, self.measured_duration(), Tag::new(tag))
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        }
        drop(log);
        file.flush()?;
        Ok(())
    }
}

/// A `duration` that stands for "until `--requests` are answered": no run lasts a year.
pub const UNBOUNDED: Duration = Duration::from_secs(365 * 86_400);

/// The run so far, for a live progress line: refreshed about four times a second.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Since the schedule started (warm-up included).
    pub elapsed: Duration,
    /// Warm-up and duration; `None` when `--requests` alone ends the run (a duration of
    /// [`UNBOUNDED`]).
    pub total: Option<Duration>,
    pub warming_up: bool,
    /// `--requests`: how many measured requests the run is to send.
    pub requests: Option<u64>,
    pub sent: u64,
    pub completed: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
    pub send_lag: Histogram<u64>,
    /// Seconds of measured window so far (after the warm-up).
    pub measured_secs: f64,
}

impl Progress {
    /// One line: `[ 12.0s / 60.0s] sent 120000 done 119990 (10000 rps) p50 ... errors 0`.
    pub fn describe(&self) -> String {
        let of = match (self.total, self.requests) {
            (Some(t), _) => format!(" / {:.1}s", t.as_secs_f64()),
            (None, Some(n)) => format!(" of {n} requests"),
            (None, None) => String::new(),
        };
        let q = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                "-".to_string()
            } else {
                fmt_us(h.value_at_quantile(q))
            }
        };
        format!(
            "[{:>6.1}s{of}]{} sent {} done {} ({:.0} rps)  p50 {}  p99 {}  errors {}  send lag p99 {}",
            self.elapsed.as_secs_f64(),
            if self.warming_up { " warming up" } else { "" },
            self.sent,
            self.completed,
            self.rate(),
            q(&self.latency, 0.5),
            q(&self.latency, 0.99),
            self.errors,
            q(&self.send_lag, 0.99),
        )
    }

    /// Completions per second of measured time so far.
    fn rate(&self) -> f64 {
        let secs = self.measured_secs;
        if secs > 0.0 {
            self.completed as f64 / secs
        } else {
            0.0
        }
    }
}

/// Runs a load as configured. `on_interval` sees each `--log-interval` slice as it ends.
/// Failures (connection refused, a server that dies) come back in [`LoadReport::error`] with
/// whatever was measured up to then.
pub fn run(config: LoadConfig, on_interval: &mut dyn FnMut(&IntervalLine)) -> anyhow::Result<LoadReport> {
    run_watched(config, on_interval, None)
}

/// As [`run`], and `on_progress` (if any) sees the run so far about four times a second.
pub fn run_watched(
    mut config: LoadConfig,
    on_interval: &mut dyn FnMut(&IntervalLine),
    mut on_progress: Option<&mut dyn FnMut(&Progress)>,
) -> anyhow::Result<LoadReport> {
    config.validate().map_err(anyhow::Error::msg)?;
    // Agents given the same --seed must still draw independent arrivals: their sum is then
    // a Poisson stream at the total rate. The summary records the seed actually used.
    if let Some(name) = &config.agent {
        config.seed = merge::agent_seed(config.seed, name);
    }
    // Every thread of the load is born inside the namespace; this one returns when done.
    let _visit = match &config.netns {
        Some(name) => Some(crate::os::netns::Visit::enter(name)?),
        None => None,
    };
    config.driver = match (&config.http, config.driver) {
        _ if config.shm.is_some() || config.userspace.is_some() => DriverKind::Queue,
        // A page's size decides as a reply's does; unknown sizes are taken as large.
        (Some(pages), DriverKind::Auto) => match pages.mean_size() {
            Some(mean) => DriverKind::Auto.resolve(
                config.request_size,
                ReplyDist::Sized(SizeDist::Fixed(mean as u64)),
            ),
            None => DriverKind::Epoll,
        },
        _ => config.driver.resolve(config.request_size, config.reply),
    };
    crate::os::cpu::raise_fd_limit();
    let (_awake, in_force, refused) = crate::os::cpu::apply_cpu_idle(config.cpu_idle);
    if let Some(why) = refused {
        eprintln!(
            "iolab load: cannot hold the CPUs awake ({why}): idle CPUs may halt, and on a VM \
             waking one can take longer than a reply (`--cpu-idle os` asks for this)"
        );
    }
    config.cpu_idle = in_force;
    let idle = match open_idle(&config) {
        Ok(idle) => idle,
        Err(e) => return Ok(LoadReport::failed_before_start(config, e)),
    };
    let started = Instant::now();
    let cpu_before = crate::os::sys::process_cpu_time();
    let threads = config.threads.min(config.connections);
    let shared = Arc::new(config.clone());
    let abort = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(StartGate::default());
    let (ready_tx, ready_rx) = mpsc::channel();
    let (interval_tx, interval_rx) = mpsc::channel::<Report>();
    let tickets = config
        .requests
        .map(|n| Arc::new(std::sync::atomic::AtomicU64::new(n)));

    let mut handles = Vec::with_capacity(threads);
    for index in 0..threads {
        let plan = ThreadPlan {
            index,
            connections: (index..config.connections).step_by(threads).collect(),
            config: shared.clone(),
            abort: abort.clone(),
            gate: gate.clone(),
            ready: ready_tx.clone(),
            intervals: config.log_interval.map(|_| interval_tx.clone()),
            progress: on_progress.as_ref().map(|_| interval_tx.clone()),
            tickets: tickets.clone(),
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("load-{index}"))
                .spawn(move || driver::run(plan))?,
        );
    }
    drop((ready_tx, interval_tx));

    let mut setup_error = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                setup_error.get_or_insert(e);
            }
            Err(_) => {
                setup_error.get_or_insert("a load thread died while connecting".into());
            }
        }
    }
    // Every thread starts its schedule at the same instant: a moment from now, or the
    // warm-up's length before --start-at.
    let start = match config.start_at {
        None => crate::os::clock::now_ns() + 2_000_000,
        Some(at) => {
            let (mono, unix) = wall_anchor();
            let at = merge::unix_ns(at).saturating_sub(config.warmup.as_nanos() as u64);
            if at < unix + 1_000_000 && setup_error.is_none() {
                setup_error = Some(format!(
                    "--start-at passed {:.3} s before the load was ready to start{}",
                    (unix - at.min(unix)) as f64 / 1e9,
                    if config.warmup.is_zero() {
                        ""
                    } else {
                        " (the warm-up comes before it)"
                    }
                ));
            }
            mono + at.saturating_sub(unix)
        }
    };
    let watch = canary::StallWatch::start(&config.watch_cpus);
    gate.open(setup_error.is_none().then_some(start));
    let window_ns = if setup_error.is_none() {
        let from = start + config.warmup.as_nanos() as u64;
        (from, from + config.duration.as_nanos() as u64)
    } else {
        (0, 0)
    };

    let length = config.log_interval.unwrap_or(Duration::from_secs(1));
    let mut pending: BTreeMap<u64, (usize, IntervalLine)> = BTreeMap::new();
    let mut intervals = Vec::new();
    let mut emit = |line: IntervalLine, intervals: &mut Vec<IntervalLine>| {
        on_interval(&line);
        intervals.push(line);
    };
    let mut so_far = Progress {
        elapsed: Duration::ZERO,
        total: (config.duration < UNBOUNDED).then_some(config.warmup + config.duration),
        warming_up: true,
        requests: config.requests,
        sent: 0,
        completed: 0,
        errors: 0,
        latency: new_histogram(),
        send_lag: new_histogram(),
        measured_secs: 0.0,
    };
    let mut shown_at = Instant::now();
    for report in interval_rx.iter() {
        let report = match report {
            Report::Interval(r) => r,
            Report::Progress(p) => {
                so_far.sent += p.sent;
                so_far.completed += p.completed;
                so_far.errors += p.errors;
                let _ = so_far.latency.add(&p.latency);
                let _ = so_far.send_lag.add(&p.send_lag);
                if let Some(show) = on_progress.as_mut() {
                    let now = crate::os::clock::now_ns();
                    so_far.elapsed = Duration::from_nanos(now.saturating_sub(start));
                    so_far.warming_up = now < window_ns.0;
                    so_far.measured_secs = now.saturating_sub(window_ns.0) as f64 / 1e9;
                    // One line per round of the threads' reports, not one per thread.
                    if shown_at.elapsed() >= driver::PROGRESS_EVERY / 2 {
                        shown_at = Instant::now();
                        show(&so_far);
                    }
                }
                continue;
            }
        };
        let entry = pending.entry(report.index).or_insert_with(|| {
            (
                0,
                IntervalLine {
                    index: report.index,
                    length,
                    completed: 0,
                    errors: 0,
                    latency: new_histogram(),
                },
            )
        });
        entry.0 += 1;
        entry.1.completed += report.completed;
        entry.1.errors += report.errors;
        let _ = entry.1.latency.add(&report.latency);
        let _ = report.thread;
        // An interval is printed once every thread has closed it, in order.
        while let Some(first) = pending.first_entry() {
            if first.get().0 < threads {
                break;
            }
            emit(first.remove().1, &mut intervals);
        }
    }
    for (_, (_, line)) in std::mem::take(&mut pending) {
        emit(line, &mut intervals);
    }

    let mut outcomes: Vec<ThreadOutcome> = Vec::with_capacity(threads);
    for h in handles {
        match h.join() {
            Ok(o) => outcomes.push(o),
            Err(_) => setup_error = Some("a load thread panicked".into()),
        }
    }
    drop(idle);
    // With --requests the measured window ends at the last reply, not at --duration.
    let last_done = outcomes.iter().map(|o| o.last_done_ns).max().unwrap_or(0);
    let window_ns = match config.requests {
        Some(_) if last_done > window_ns.0 => (window_ns.0, last_done.min(window_ns.1)),
        _ => window_ns,
    };
    let mut report = merge(
        config,
        outcomes,
        intervals,
        setup_error,
        started.elapsed(),
        crate::os::sys::process_cpu_time() - cpu_before,
    );
    report.stalls = watch.finish();
    report.window_ns = window_ns;
    Ok(report)
}

/// Opens the `--idle-connections`, one by one, before the run.
fn open_idle(config: &LoadConfig) -> Result<Vec<std::net::TcpStream>, String> {
    (0..config.idle_connections)
        .map(|i| {
            std::net::TcpStream::connect_timeout(&config.addr, Duration::from_secs(5))
                .map_err(|e| format!("cannot open idle connection {i} to {}: {e}", config.addr))
        })
        .collect()
}

fn merge(
    config: LoadConfig,
    outcomes: Vec<ThreadOutcome>,
    intervals: Vec<IntervalLine>,
    setup_error: Option<String>,
    wall: Duration,
    cpu: Duration,
) -> LoadReport {
    let mut m = Measured::new();
    let mut send_times = Vec::new();
    let (mut idle_ns, mut schedule_ns) = (0u64, 0u64);
    let mut scheduled_times = Vec::new();
    let mut records = Vec::new();
    let mut error = setup_error;
    // Whether the error kept so far is only another thread's "stopped".
    let mut stopped_only = false;
    for o in outcomes {
        m.add(&o.m);
        send_times.extend(o.send_times);
        scheduled_times.extend(o.scheduled_times);
        records.extend(o.records);
        idle_ns += o.idle_ns;
        schedule_ns += o.schedule_ns;
        // The first thread's own failure explains the others' "stopped" errors.
        if let Some(e) = o.error {
            let stopped = matches!(e, LoadError::Stopped);
            if error.is_none() || (!stopped && stopped_only) {
                stopped_only = stopped;
                error = Some(e.to_string());
            }
        }
    }
    send_times.sort_unstable();
    scheduled_times.sort_unstable();
    let arrivals = ArrivalChecks::of(&config, &send_times, &scheduled_times);
    LoadReport {
        config,
        m,
        arrivals,
        records,
        intervals,
        wall,
        cpu,
        generator_busy: if schedule_ns > 0 {
            1.0 - idle_ns.min(schedule_ns) as f64 / schedule_ns as f64
        } else {
            f64::NAN
        },
        error,
        stalls: canary::StallLog::default(),
        window_ns: (0, 0),
        send_times_ns: send_times,
        scheduled_times_ns: scheduled_times,
        wall_anchor: wall_anchor(),
        agent_files: None,
        merged: None,
    }
}

/// The monotonic clock and the wall clock read together, to turn one into the other.
fn wall_anchor() -> (u64, u64) {
    let mono = crate::os::clock::now_ns();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (mono, unix)
}

/// The arrivals checks of a run (or of several agents' merged sends): the gaps between
/// consecutive actual sends, and the K-S tests of the actual sends (at the configured
/// timescale, and gap by gap) and of the schedule.
#[derive(Debug)]
pub struct ArrivalChecks {
    /// Gaps between consecutive actual sends, in ns, in send order.
    pub gaps_ns: Vec<f64>,
    /// Actual sends against the Poisson process at the configured timescale and resolution.
    pub actual: KsResult,
    /// Consecutive gaps summed into each sample of `actual`.
    pub gaps_per_sample: usize,
    /// Actual sends against the exponential, at every gap.
    pub strict: KsResult,
    /// The schedule itself against the exponential.
    pub scheduled: KsResult,
}

impl ArrivalChecks {
    /// `sends` and `scheduled` sorted, in ns; `config` gives the rate and the check's scales.
    pub fn of(config: &LoadConfig, sends: &[u64], scheduled: &[u64]) -> ArrivalChecks {
        let gaps = |times: &[u64]| -> Vec<f64> { times.windows(2).map(|w| (w[1] - w[0]) as f64).collect() };
        let offered_gap_ns = 1e9 / config.rate;
        let gaps_ns = gaps(sends);
        let resolution_ns = config.ks_resolution.as_nanos() as f64;
        let gaps_per_sample = gaps_per_sample(config.rate, config.ks_timescale);
        // A closed loop has no arrival process to check: its sends follow the replies.
        if config.closed_loop.is_some() {
            let none = KsResult {
                d: f64::NAN,
                p_value: f64::NAN,
                n: 0,
            };
            return ArrivalChecks {
                gaps_ns,
                actual: none,
                gaps_per_sample,
                strict: none,
                scheduled: none,
            };
        }
        ArrivalChecks {
            actual: ks_erlang(&gaps_ns, offered_gap_ns, gaps_per_sample, resolution_ns),
            strict: ks_exponential(&gaps_ns, offered_gap_ns, 0.0),
            scheduled: ks_exponential(&gaps(scheduled), offered_gap_ns, 0.0),
            gaps_ns,
            gaps_per_sample,
        }
    }
}

/// Hand-made reports for the tests of what reads them (the sweep's verdicts).
#[cfg(test)]
impl LoadReport {
    /// A clean run at the configured rate: every request sent, answered in 100 µs, sent on
    /// time, no stall, the generator 30% busy. The window is [1 s, 1 s + duration).
    pub(crate) fn synthetic(config: LoadConfig) -> LoadReport {
        let n = (config.rate * config.duration.as_secs_f64()) as u64;
        let mut m = Measured::new();
        m.sent = n;
        m.completed = n;
        m.completed_by_end = n;
        let _ = m.latency.record_n(100_000, n);
        let _ = m.uncorrected.record_n(90_000, n);
        let _ = m.send_lag.record_n(10_000, n);
        let from = 1_000_000_000;
        let window_ns = (from, from + config.duration.as_nanos() as u64);
        let nan = KsResult {
            d: 0.0,
            p_value: f64::NAN,
            n: 0,
        };
        LoadReport {
            config,
            m,
            arrivals: ArrivalChecks {
                gaps_ns: Vec::new(),
                actual: nan,
                gaps_per_sample: 1,
                strict: nan,
                scheduled: nan,
            },
            records: Vec::new(),
            intervals: Vec::new(),
            wall: Duration::from_secs(1),
            cpu: Duration::from_millis(300),
            generator_busy: 0.3,
            error: None,
            stalls: canary::StallLog {
                cpus: vec![0, 1],
                realtime: true,
                wakeups: 1000,
                mean_late_us: 5.0,
                stalls: Vec::new(),
            },
            window_ns,
            send_times_ns: Vec::new(),
            scheduled_times_ns: Vec::new(),
            wall_anchor: (0, 0),
            agent_files: None,
            merged: None,
        }
    }

    /// One machine stall of `len_ns` a little after the window opens.
    pub(crate) fn stall_in_window(&mut self, len_ns: u64) {
        self.stalls.stalls.push(canary::Stall {
            cpu: 0,
            at_ns: self.window_ns.0 + 100_000_000,
            len_ns,
        });
    }

    /// Replaces the latencies, from the schedule and from the actual send alike: `fast`
    /// requests at `fast_ns`, `slow` at `slow_ns`.
    pub(crate) fn record_latencies(&mut self, fast: u64, fast_ns: u64, slow: u64, slow_ns: u64) {
        for h in [&mut self.m.latency, &mut self.m.uncorrected] {
            *h = new_histogram();
            let _ = h.record_n(fast_ns, fast);
            let _ = h.record_n(slow_ns, slow);
        }
    }

    /// Makes 2% of the sends `lag_ns` late.
    pub(crate) fn record_send_lag(&mut self, lag_ns: u64) {
        let late = self.m.sent / 50;
        let _ = self.m.send_lag.record_n(lag_ns, late);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_driver_follows_message_size_and_explicit_choices_stand() {
        let big = SizeDist::Fixed(16 * 1024);
        let small = SizeDist::Fixed(64);
        assert_eq!(DriverKind::Auto.resolve(big, ReplyDist::Echo), DriverKind::Epoll);
        assert_eq!(
            DriverKind::Auto.resolve(small, ReplyDist::Sized(SizeDist::Uniform(0, 1 << 20))),
            DriverKind::Epoll,
            "a large mean reply counts too"
        );
        let expected = if driver::uring_available() {
            DriverKind::Uring
        } else {
            DriverKind::Epoll
        };
        assert_eq!(DriverKind::Auto.resolve(small, ReplyDist::Echo), expected);
        for explicit in [DriverKind::Epoll, DriverKind::Uring] {
            assert_eq!(explicit.resolve(big, ReplyDist::Echo), explicit);
        }
    }

    #[test]
    fn impossible_configs_are_refused_with_reasons() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let ok = LoadConfig::new(addr, 0.5, Duration::from_secs(1));
        assert!(ok.validate().is_ok(), "fractional rates are fine");
        let bad = |f: &dyn Fn(&mut LoadConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(&|c| c.rate = 0.0).contains("--rate"));
        assert!(bad(&|c| c.rate = f64::NAN).contains("--rate"));
        assert!(bad(&|c| c.connections = 0).contains("--connections"));
        assert!(bad(&|c| c.duration = Duration::ZERO).contains("--duration"));
        assert!(bad(&|c| c.reply = ReplyDist::Sized(SizeDist::Fixed(1 << 30))).contains("--reply"));
    }

    #[test]
    fn refused_connection_is_a_clear_error_not_a_hang() {
        // Bind then drop a listener: the port is (almost certainly) closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let cfg = LoadConfig::new(port, 100.0, Duration::from_millis(100));
        let report = run(cfg, &mut |_| {}).unwrap();
        let err = report.error.expect("must fail");
        assert!(err.contains("cannot connect") && err.contains("refused"), "{err}");
        assert_eq!(report.m.sent, 0);
    }
}
