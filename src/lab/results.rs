//! The results folder's format, shared by the sweep that writes it and the report that reads
//! it, and the rules that turn measurements into conclusions. No I/O beyond reading the folder.
//!
//! - A [`Point`] is one measurement: one row of `points.csv`, one engine at one offered rate,
//!   with its verdict as a measurement (valid or invalid, and whose fault) and as a result
//!   (saturated, over the SLO).
//! - A [`Cell`] is every measurement of one engine at one rate: a sweep repeats points, and a
//!   cell's verdict is the majority of its valid repeats, its figures their median with the
//!   range of the repeats and the envelope of their confidence intervals. One stalled repeat
//!   cannot move a median of three, and cannot decide a verdict.
//! - The [`Knee`] is the highest rate an engine sustains within the SLO, walking up its cells;
//!   it says when it is a lower bound (the generator or the ladder could not show more) and
//!   when its deciding cells are uncertain (repeats that disagree, or an interval across the
//!   SLO), and which ladder steps it may really be at.
//! - Two engines are told apart only when their intervals do not overlap ([`Comparison`],
//!   [`Knee::told_apart`]): the report calls a difference only when it exceeds the noise.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::sansio::stats::median;

/// One row of points.csv.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Point {
    pub engine: String,
    pub workload: String,
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub send_lag_p99_us: f64,
    /// Fraction of the run the generator spent working rather than waiting.
    pub generator_busy: f64,
    pub ks_p_value: f64,
    pub ks_d: f64,
    pub errors: u64,
    pub server_cpu_s: f64,
    pub client_cpu_s: f64,
    /// Server CPU time per completed request.
    pub server_cpu_us_per_request: f64,
    pub valid: bool,
    /// Why the point is not a valid measurement (empty when it is).
    pub invalid_reason: String,
    /// The server fell behind: fewer replies than scheduled requests, a backlog that grew
    /// through the point, or errors.
    pub saturated: bool,
    pub summary: String,
    pub hdr_log: String,
    pub gaps: String,
    /// 1 for a cell's first measurement, counting up with every further one (repeats and
    /// re-measurements of invalid ones alike).
    pub attempt: u32,
    /// The sweep's round this measurement belongs to (1 up): every engine and rate still
    /// being measured gets one point per round, interleaved.
    pub round: u32,
    /// p99 above the SLO.
    pub over_slo: bool,
    /// Whose fault an invalid point was: `generator`, `machine`, or empty.
    pub blame: String,
    /// 95% confidence intervals (order statistics) of the percentiles; NaN where the sample
    /// cannot bound a side.
    pub p50_ci_low_us: f64,
    pub p50_ci_high_us: f64,
    pub p99_ci_low_us: f64,
    pub p99_ci_high_us: f64,
    pub p999_ci_low_us: f64,
    pub p999_ci_high_us: f64,
    /// Requests unanswered when the measured window ended.
    pub backlog_at_end: u64,
    /// Machine stalls the canaries saw inside the measured window.
    pub stall_count: u64,
    pub stall_max_us: f64,
    /// Of the stalls, the time beyond the grace (half the SLO) each, summed.
    pub stall_excess_us: f64,
    /// Stall time the server's CPUs' canaries saw, and the generator's: a stall of the
    /// machine shows on both, a CPU the program under test held (where the kernel did not
    /// let a real-time canary preempt it) on its own.
    pub stall_us_server_cpus: f64,
    pub stall_us_load_cpus: f64,
    /// How long the sweep waited for the machine to be quiet before this point, and whether
    /// it was.
    pub quiet_wait_ms: f64,
    pub quiet: bool,
    /// Costs per request from the cell's profiled run ([`Profile`]); NaN where the cell was
    /// not profiled.
    pub syscalls_per_request: f64,
    pub context_switches_per_request: f64,
    pub user_us_per_request: f64,
    pub kernel_us_per_request: f64,
    /// The machine stalled inside the window enough to move a p99, yet the point met the SLO
    /// with every reply in. A stall only ever delays, so the verdict holds and the point is
    /// valid; its latency figures are upper bounds.
    pub met_despite_stalls: bool,
    /// The generator sent late (its send lag or busy share past their bounds), yet it sent
    /// what the window scheduled (replies to 99% of it) and the point met the SLO with every
    /// reply in. Latency is timed from the schedule, so the lateness only added to it: valid,
    /// its latency figures upper bounds.
    pub met_despite_lag: bool,
    /// The machine stalled or the generator was late, yet the median request, timed from its
    /// actual send, waited past the SLO with the stalls small and most sends on time: noise
    /// cannot move a median that far unless the server is at its limit. Valid, over the SLO.
    pub over_despite_noise: bool,
    /// Not a measurement: the sweep did not measure this rate for this engine because the
    /// generator could not have driven it ([`crate::lab::sweep::reach_forecast`]). The row
    /// says why (`invalid_reason`); its figures are NaN and it has no files.
    pub beyond_reach: bool,
}

impl Point {
    /// A valid measurement within the SLO, the server keeping up.
    pub fn good(&self) -> bool {
        self.valid && !self.saturated && !self.over_slo
    }

    /// A valid measurement past the SLO or of a server falling behind.
    pub fn over(&self) -> bool {
        self.valid && (self.saturated || self.over_slo)
    }

    /// Invalid because the generator could not drive the rate (not a passing stall).
    pub fn generator_limited(&self) -> bool {
        !self.valid && self.blame == "generator"
    }
}

/// Where a results folder keeps its profiles: `ENGINE-RATE.json` ([`Profile`]), the folded
/// stacks `ENGINE-RATE.folded` and the flamegraph `ENGINE-RATE.svg`; `unavailable.txt` says
/// why there are none when profiling was asked for and perf could not run.
pub const PROFILE_DIR: &str = "profile";
pub const PROFILE_UNAVAILABLE: &str = "unavailable.txt";

/// One system call's share of a profiled run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyscallCost {
    pub name: String,
    pub per_request: f64,
}

/// Where one engine's time went at one rate: a run of its own after the sweep's
/// measurements, on a fresh server, so that no tracing touches a latency figure.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    pub engine: String,
    pub offered_rps: f64,
    /// The load of each of the two runs (CPU from /proc; perf's counts and samples).
    pub duration_s: f64,
    pub connections: usize,
    /// Requests answered in the CPU run and in the perf run.
    pub requests_cpu_run: u64,
    pub requests_perf_run: u64,
    /// The server's CPU time per request: perf's task-clock (exact, and nothing hooked on
    /// any system call), split into user and kernel by /proc's utime and stime.
    pub user_us_per_request: f64,
    pub kernel_us_per_request: f64,
    /// The /proc clock ticks (10 ms) that split the CPU time into user and kernel: with few,
    /// the split is rough (the total is perf's exact task-clock).
    pub cpu_ticks: u64,
    /// Softirq time of the server's CPUs per request, whoever it was for (/proc/stat).
    pub softirq_us_per_request: f64,
    /// System calls per request (perf counts every `sys_enter`), and by name, the most first;
    /// `other` holds those of no name listed.
    pub syscalls_per_request: f64,
    pub syscalls: Vec<SyscallCost>,
    /// Context switches per request: involuntary ones found the thread still runnable (it was
    /// preempted), the rest were a thread going to sleep.
    pub context_switches_per_request: f64,
    pub voluntary_switches_per_request: f64,
    pub involuntary_switches_per_request: f64,
    /// The server's CPU time the flamegraph's samples stand for, and its file (empty
    /// without one).
    pub sampled_cpu_ms: f64,
    pub flamegraph: String,
    pub folded: String,
    /// What went wrong with part of the profile, if anything (the rest still stands).
    pub note: String,
}

impl Profile {
    /// The file stem of an engine's profile at a rate: `epoll-20000`.
    pub fn stem(engine: &str, rate: f64) -> String {
        let engine: String = engine
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("{engine}-{}", rate as u64)
    }

    /// Kernel time's share of the server's CPU time.
    pub fn kernel_share(&self) -> f64 {
        let total = self.user_us_per_request + self.kernel_us_per_request;
        if total > 0.0 {
            self.kernel_us_per_request / total
        } else {
            f64::NAN
        }
    }

    /// The calls per request of the first of `names` this profile made.
    pub fn calls(&self, names: &[&str]) -> Option<&SyscallCost> {
        self.syscalls.iter().find(|s| names.contains(&s.name.as_str()))
    }
}

/// A results folder's profiles, in the order of the engines' names and rates, or why there
/// are none.
#[derive(Debug, Clone, Default)]
pub struct Profiles {
    pub profiles: Vec<Profile>,
    /// perf could not run (the reason, and how to fix it).
    pub unavailable: Option<String>,
}

/// Reads `DIR/profile/`; a folder without one has no profiles and no reason.
pub fn read_profiles(dir: &Path) -> anyhow::Result<Profiles> {
    let pdir = dir.join(PROFILE_DIR);
    let mut out = Profiles::default();
    let Ok(entries) = std::fs::read_dir(&pdir) else {
        return Ok(out);
    };
    out.unavailable = std::fs::read_to_string(pdir.join(PROFILE_UNAVAILABLE))
        .ok()
        .map(|s| s.trim().to_string());
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let profile: Profile =
            serde_json::from_str(&text).with_context(|| format!("{} is not a profile", path.display()))?;
        out.profiles.push(profile);
    }
    out.profiles.sort_by(|a, b| {
        a.engine
            .cmp(&b.engine)
            .then(a.offered_rps.total_cmp(&b.offered_rps))
    });
    Ok(out)
}

/// Reads a results folder's points.csv.
pub fn read_points(dir: &Path) -> anyhow::Result<Vec<Point>> {
    let path = dir.join("points.csv");
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for row in reader.deserialize() {
        rows.push(row.with_context(|| format!("a bad row in {}", path.display()))?);
    }
    Ok(rows)
}

/// Engines in the order the sweep ran them.
pub fn engine_order(rows: &[Point]) -> Vec<String> {
    let mut engines: Vec<String> = Vec::new();
    for r in rows {
        if !engines.contains(&r.engine) {
            engines.push(r.engine.clone());
        }
    }
    engines
}

/// The offered rates, rising, each once.
pub fn offered_rates(rows: &[Point]) -> Vec<f64> {
    let mut rates: Vec<f64> = rows.iter().map(|r| r.offered_rps).collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    rates
}

/// What the repeats of a cell say together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Most valid repeats met the SLO with the server keeping up.
    Good,
    /// Most valid repeats were over the SLO or saturated.
    Over,
    /// As many valid repeats one way as the other.
    Undecided,
    /// No valid repeat: the generator could not drive it, or the machine stalled every time.
    Unmeasured,
}

/// Every measurement of one engine at one rate.
#[derive(Debug, Clone)]
pub struct Cell<'a> {
    pub engine: &'a str,
    pub rate: f64,
    pub points: Vec<&'a Point>,
}

/// A robust figure over a cell's valid repeats: their median, the range of the repeats, and
/// the envelope of their confidence intervals (the repeats' spread and each one's sampling
/// error together).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub low: f64,
    pub high: f64,
    pub repeats: usize,
}

impl Spread {
    /// Whether the intervals of two figures overlap (so the difference is within the noise).
    pub fn overlaps(&self, other: &Spread) -> bool {
        self.low <= other.high && other.low <= self.high
    }
}

impl<'a> Cell<'a> {
    pub fn valid(&self) -> impl Iterator<Item = &&'a Point> + '_ {
        self.points.iter().filter(|p| p.valid)
    }

    pub fn good(&self) -> usize {
        self.points.iter().filter(|p| p.good()).count()
    }

    pub fn over(&self) -> usize {
        self.points.iter().filter(|p| p.over()).count()
    }

    pub fn invalid(&self) -> usize {
        self.points.iter().filter(|p| !p.valid).count()
    }

    pub fn verdict(&self) -> Verdict {
        let (good, over) = (self.good(), self.over());
        match good.cmp(&over) {
            _ if good + over == 0 => Verdict::Unmeasured,
            std::cmp::Ordering::Greater => Verdict::Good,
            std::cmp::Ordering::Less => Verdict::Over,
            std::cmp::Ordering::Equal => Verdict::Undecided,
        }
    }

    /// The median, range and interval envelope of a percentile over the valid repeats
    /// (`None` without any). A side a repeat's sample could not bound is taken from the
    /// value itself below and as unbounded above.
    pub fn spread(&self, pick: fn(&Point) -> (f64, f64, f64)) -> Option<Spread> {
        let v: Vec<(f64, f64, f64)> = self.valid().map(|p| pick(p)).collect();
        if v.is_empty() {
            return None;
        }
        let values: Vec<f64> = v.iter().map(|x| x.0).collect();
        let fold =
            |f: fn(f64, f64) -> f64, init: f64, g: fn(&(f64, f64, f64)) -> f64| v.iter().map(g).fold(init, f);
        Some(Spread {
            median: median(&values),
            min: fold(f64::min, f64::INFINITY, |x| x.0),
            max: fold(f64::max, f64::NEG_INFINITY, |x| x.0),
            low: fold(f64::min, f64::INFINITY, |x| if x.1.is_nan() { x.0 } else { x.1 }),
            high: fold(f64::max, f64::NEG_INFINITY, |x| {
                if x.2.is_nan() {
                    f64::INFINITY
                } else {
                    x.2
                }
            }),
            repeats: v.len(),
        })
    }

    pub fn p99(&self) -> Option<Spread> {
        self.spread(|p| (p.p99_us, p.p99_ci_low_us, p.p99_ci_high_us))
    }

    pub fn p50(&self) -> Option<Spread> {
        self.spread(|p| (p.p50_us, p.p50_ci_low_us, p.p50_ci_high_us))
    }

    pub fn p999(&self) -> Option<Spread> {
        self.spread(|p| (p.p999_us, p.p999_ci_low_us, p.p999_ci_high_us))
    }

    /// A figure without intervals (achieved rate, CPU per request) over the valid repeats.
    pub fn plain(&self, pick: fn(&Point) -> f64) -> Option<Spread> {
        let values: Vec<f64> = self.valid().map(|p| pick(p)).collect();
        if values.is_empty() {
            return None;
        }
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // Without per-repeat intervals, the interval is the range of the repeats.
        Some(Spread {
            median: median(&values),
            min,
            max,
            low: min,
            high: max,
            repeats: values.len(),
        })
    }
}

/// Every cell, engines in sweep order, rates rising within each.
pub fn cells(rows: &[Point]) -> Vec<Cell<'_>> {
    let rates = offered_rates(rows);
    let mut out = Vec::new();
    for engine in engine_order(rows) {
        for &rate in &rates {
            let points: Vec<&Point> = rows
                .iter()
                .filter(|r| r.engine == engine && r.offered_rps == rate)
                .collect();
            if let Some(first) = points.first() {
                out.push(Cell {
                    engine: first.engine.as_str(),
                    rate,
                    points,
                });
            }
        }
    }
    out
}

/// One cell of an engine.
pub fn cell<'a>(rows: &'a [Point], engine: &str, rate: f64) -> Option<Cell<'a>> {
    cells(rows)
        .into_iter()
        .find(|c| c.engine == engine && c.rate == rate)
}

/// One engine's row of the knee table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Knee {
    pub engine: String,
    /// The highest offered rate, walking up, whose cell was good (`None`: not even the first).
    pub rate: Option<f64>,
    /// The engine may sustain more than shown: the cell above could not be measured (the
    /// generator's limit), or the knee is the top of the ladder.
    pub lower_bound: bool,
    /// A deciding cell is uncertain: its repeats disagree, or its p99 interval crosses the
    /// SLO.
    pub uncertain: bool,
    /// What ended the walk, in words.
    pub why: String,
    /// Measurements left out as invalid.
    pub invalid: usize,
    /// The p99 at the knee (median of the repeats, their range and interval envelope).
    pub p99_at_knee: Option<Spread>,
    /// The p99 of the cell that ended the walk, if one did.
    pub p99_above: Option<Spread>,
    /// The ladder indices the true knee may lie between: the lowest (-1: below the first
    /// rate) and the highest (`None`: unbounded above). Two knees whose ranges do not overlap
    /// are told apart.
    pub steps: (i64, Option<i64>),
}

impl Knee {
    /// Whether this knee and another are different beyond the noise.
    pub fn told_apart(&self, other: &Knee) -> bool {
        let hi = |k: &Knee| k.steps.1.unwrap_or(i64::MAX);
        hi(self) < other.steps.0 || hi(other) < self.steps.0
    }
}

/// The knee table, one row per engine.
pub fn knees(rows: &[Point], slo_us: f64) -> Vec<Knee> {
    let rates = offered_rates(rows);
    let all = cells(rows);
    engine_order(rows)
        .into_iter()
        .map(|engine| {
            let mine: Vec<&Cell> = all.iter().filter(|c| c.engine == engine).collect();
            knee_of(engine.clone(), &mine, &rates, slo_us)
        })
        .collect()
}

fn knee_of(engine: String, cells: &[&Cell], rates: &[f64], slo_us: f64) -> Knee {
    let step = |c: &Cell| rates.iter().position(|&r| r == c.rate).map_or(-1, |s| s as i64);
    let mut knee: Option<&Cell> = None;
    let mut stop: Option<(&Cell, Verdict)> = None;
    for c in cells {
        match c.verdict() {
            Verdict::Good => knee = Some(c),
            v => {
                stop = Some((c, v));
                break;
            }
        }
    }
    let knee_step = knee.map_or(-1, step);
    // The knee cell is shaky when a repeat was over or its interval reaches past the SLO: the
    // true knee may be a step lower.
    let shaky_knee = knee.is_some_and(|c| c.over() > 0 || c.p99().is_some_and(|s| s.high > slo_us));
    let low = if shaky_knee { knee_step - 1 } else { knee_step };
    let (high, lower_bound, shaky_above, why) = match stop {
        None => (
            None,
            true,
            false,
            if knee.is_some() {
                "the top of the ladder: the engine may sustain more".to_string()
            } else {
                "no point was measured".to_string()
            },
        ),
        Some((c, Verdict::Over)) => {
            // Over, but a repeat was good, or the p99 interval reaches under the SLO without
            // the server falling behind: the true knee may be this step.
            let shaky = c.good() > 0 || (c.p99().is_some_and(|s| s.low <= slo_us) && !any_saturated(c));
            let high = if shaky { step(c) } else { knee_step };
            (Some(high), false, shaky, over_reason(c, slo_us))
        }
        Some((c, Verdict::Undecided)) => (
            Some(step(c)),
            false,
            true,
            format!(
                "at {:.0} rps the repeats disagree ({} within the SLO, {} not)",
                c.rate,
                c.good(),
                c.over()
            ),
        ),
        Some((c, _)) => (None, true, false, unmeasured_reason(c)),
    };
    Knee {
        engine,
        rate: knee.map(|c| c.rate),
        lower_bound,
        uncertain: shaky_knee || shaky_above,
        why,
        invalid: cells.iter().map(|c| c.invalid()).sum(),
        p99_at_knee: knee.and_then(|c| c.p99()),
        p99_above: stop.and_then(|(c, _)| c.p99()),
        steps: (low, high),
    }
}

fn any_saturated(c: &Cell) -> bool {
    c.valid().any(|p| p.saturated)
}

fn over_reason(c: &Cell, slo_us: f64) -> String {
    let p99 = c.p99().map_or(f64::NAN, |s| s.median);
    if c.valid().filter(|p| p.saturated).count() * 2 > c.valid().count() {
        format!(
            "saturated at {:.0} rps (the server fell behind; p99 {})",
            c.rate,
            fmt_us(p99)
        )
    } else {
        format!(
            "p99 over {} at {:.0} rps ({})",
            fmt_us(slo_us),
            c.rate,
            fmt_us(p99)
        )
    }
}

fn unmeasured_reason(c: &Cell) -> String {
    if let Some(p) = c.points.iter().find(|p| p.beyond_reach) {
        // The row's generator_busy is the forecast; its invalid_reason has the whole sum.
        return format!(
            "{:.0} rps is beyond the generator's reach (about {:.0}% busy there, judged one rung below; points.csv says more): a lower bound",
            c.rate,
            p.generator_busy * 100.0
        );
    }
    let generator = c.points.iter().filter(|p| p.generator_limited()).count();
    if generator * 2 >= c.points.len() {
        format!(
            "the generator could not drive {:.0} rps faithfully: a lower bound",
            c.rate
        )
    } else {
        format!(
            "{:.0} rps was never measured cleanly (the machine stalled in {} of {} tries): a lower bound",
            c.rate,
            c.points.iter().filter(|p| p.blame == "machine").count(),
            c.points.len()
        )
    }
}

/// The server stall `sweep --compare-loops` injects (part of the folder's format: the report
/// describes the runs by it): SIGSTOP for this long ...
pub const LOOPS_STALL: Duration = Duration::from_millis(100);
/// ... once in this long.
pub const LOOPS_STALL_EVERY: Duration = Duration::from_secs(1);
/// Each of the two runs' measured time (after the sweep's warm-up).
pub const LOOPS_DURATION: Duration = Duration::from_secs(2);
/// Where the two runs go in the results folder: `loops/open.*` and `loops/closed.*`.
pub const LOOPS_DIR: &str = "loops";

/// The coordinated-omission lesson of a results folder (`sweep --compare-loops`): the same
/// server, stopped now and then, loaded open loop and closed loop.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopsComparison {
    pub engine: String,
    pub connections: u64,
    pub open_rate: f64,
    pub open_p99_us: f64,
    pub open_p50_us: f64,
    pub open_sent: u64,
    pub closed_rate: f64,
    pub closed_p99_us: f64,
    pub closed_p50_us: f64,
    pub closed_sent: u64,
    pub duration_s: f64,
    pub stall_ms: f64,
    pub every_s: f64,
}

impl LoopsComparison {
    /// Reads `loops/open.json` and `loops/closed.json`; `None` when the sweep did not compare.
    pub fn read(dir: &Path, engine: &str) -> Option<anyhow::Result<LoopsComparison>> {
        let folder = dir.join(LOOPS_DIR);
        if !folder.join("open.json").is_file() {
            return None;
        }
        let read = |name: &str| -> anyhow::Result<serde_json::Value> {
            let path = folder.join(format!("{name}.json"));
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not a summary", path.display()))
        };
        Some((|| {
            let (open, closed) = (read("open")?, read("closed")?);
            let num = |v: &serde_json::Value, path: &[&str]| {
                path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(f64::NAN)
            };
            Ok(LoopsComparison {
                engine: engine.to_string(),
                connections: closed["config"]["connections"].as_u64().unwrap_or(0),
                open_rate: num(&open, &["offered_rps"]),
                open_p99_us: num(&open, &["latency_us", "p99"]),
                open_p50_us: num(&open, &["latency_us", "p50"]),
                open_sent: open["sent"].as_u64().unwrap_or(0),
                closed_rate: num(&closed, &["achieved_rps"]),
                closed_p99_us: num(&closed, &["latency_us", "p99"]),
                closed_p50_us: num(&closed, &["latency_us", "p50"]),
                closed_sent: closed["sent"].as_u64().unwrap_or(0),
                duration_s: num(&open, &["duration_s"]),
                stall_ms: LOOPS_STALL.as_secs_f64() * 1e3,
                every_s: LOOPS_STALL_EVERY.as_secs_f64(),
            })
        })())
    }

    /// What the two runs say, in words and numbers.
    pub fn sentences(&self) -> Vec<String> {
        let ratio = self.open_p99_us / self.closed_p99_us;
        let stalls = (self.duration_s / self.every_s).floor().max(1.0);
        vec![
            format!(
                "The server ({}) was stopped for {:.0} ms once every {:.0} s in both runs. Open loop, \
                 a schedule of {:.0} rps: p99 {} (p50 {}). Closed loop, {} connections each waiting \
                 for its reply (as wrk and the echo clients of kernel-bypass stacks run): p99 {} \
                 (p50 {}) at the {:.0} rps it reached. The closed loop reports a p99 {} lower.",
                self.engine,
                self.stall_ms,
                self.every_s,
                self.open_rate,
                fmt_us(self.open_p99_us),
                fmt_us(self.open_p50_us),
                self.connections,
                fmt_us(self.closed_p99_us),
                fmt_us(self.closed_p50_us),
                self.closed_rate,
                if ratio.is_finite() {
                    format!("{ratio:.0}x")
                } else {
                    "-".into()
                },
            ),
            format!(
                "Why: while the server was stopped, each closed-loop connection had its one request \
                 out and sent nothing more, so only {} requests met each stop, and the {} it sent in \
                 all are mostly from the time the server ran. The open loop kept sending on its \
                 schedule, about {:.0} requests into each stop, as users who do not wait for each \
                 other would: their waits are the tail the closed loop never measured (coordinated \
                 omission), over {:.0} stops.",
                self.connections,
                self.closed_sent,
                self.open_rate * self.stall_ms / 1e3,
                stalls,
            ),
        ]
    }
}

/// Microseconds as people read them: `152 us`, `1.2 ms`.
pub fn fmt_us(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else if us.is_infinite() {
        "∞".into()
    } else if us >= 10_000.0 {
        format!("{:.0} ms", us / 1e3)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} us")
    }
}

/// A figure with its interval: `152 us [140, 170]`.
pub fn fmt_spread(s: &Spread) -> String {
    let bound = |v: f64| {
        if v.is_infinite() {
            "∞".to_string()
        } else if s.median >= 1_000.0 {
            format!("{:.2}", v / 1e3)
        } else {
            format!("{v:.0}")
        }
    };
    format!("{} [{}, {}]", fmt_us(s.median), bound(s.low), bound(s.high))
}

/// Two engines' p99 at one rate, and whether the difference exceeds the noise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub rate: f64,
    pub a_p99: Spread,
    pub b_p99: Spread,
    /// Their intervals do not overlap.
    pub different: bool,
}

impl Comparison {
    pub fn sentence(&self) -> String {
        let (lead, a, b) = if self.different {
            let (fast, slow) = if self.a_p99.median <= self.b_p99.median {
                (&self.a, &self.b)
            } else {
                (&self.b, &self.a)
            };
            (format!("{fast} beats {slow}"), &self.a, &self.b)
        } else {
            (
                format!("{} and {} are indistinguishable", self.a, self.b),
                &self.a,
                &self.b,
            )
        };
        format!(
            "{lead} at {}: p99 {} ({a}) vs {} ({b})",
            fmt_rate(self.rate),
            fmt_spread(&self.a_p99),
            fmt_spread(&self.b_p99)
        )
    }
}

/// `80k`, `1.6M`, `500`.
pub fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{}M", trim(r / 1e6))
    } else if r >= 1e3 {
        format!("{}k", trim(r / 1e3))
    } else {
        format!("{r:.0}")
    }
}

fn trim(x: f64) -> String {
    let s = format!("{x:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// Every pair of engines with valid repeats at `rate`, in sweep order.
pub fn comparisons(rows: &[Point], rate: f64) -> Vec<Comparison> {
    let here: Vec<(String, Spread)> = engine_order(rows)
        .into_iter()
        .filter_map(|e| {
            let s = cell(rows, &e, rate)?.p99()?;
            Some((e, s))
        })
        .collect();
    let mut out = Vec::new();
    for (i, (a, sa)) in here.iter().enumerate() {
        for (b, sb) in &here[i + 1..] {
            out.push(Comparison {
                a: a.clone(),
                b: b.clone(),
                rate,
                a_p99: *sa,
                b_p99: *sb,
                different: !sa.overlaps(sb),
            });
        }
    }
    out
}

/// The knee table as the terminal shows it.
pub fn knee_table(rows: &[Point], slo: Duration) -> String {
    let slo_us = slo.as_secs_f64() * 1e6;
    let knees = knees(rows, slo_us);
    let mut t = format!(
        "highest rate with p99 <= {} (majority of valid repeats; median p99 [interval])\n",
        crate::sansio::units::Dur(slo)
    );
    for k in &knees {
        let at_least = if k.lower_bound { ">=" } else { "" };
        let rate = match (k.rate, k.lower_bound) {
            (Some(r), _) => format!("{at_least:>2}{r:>8.0} rps"),
            // Nothing valid at the first rate: unknown, not failed.
            (None, true) => format!("{:>14}", "not measured"),
            (None, false) => format!("{:>10} rps", "none"),
        };
        let p99 = k.p99_at_knee.as_ref().map_or(String::new(), fmt_spread);
        let same: Vec<&str> = knees
            .iter()
            .filter(|o| o.engine != k.engine && !o.told_apart(k))
            .map(|o| o.engine.as_str())
            .collect();
        let mut notes = vec![k.why.clone()];
        if k.uncertain {
            notes.insert(0, "UNCERTAIN".into());
        }
        if k.invalid > 0 {
            notes.push(format!("{} invalid measurement(s) left out", k.invalid));
        }
        if !same.is_empty() && same.len() + 1 < knees.len() {
            notes.push(format!("cannot be told apart from {}", same.join(", ")));
        }
        t += &format!("  {:<16} {rate}  {p99:<26} {}\n", k.engine, notes.join("; "));
    }
    if knees.len() > 1 && knees.iter().all(|k| knees.iter().all(|o| !o.told_apart(k))) {
        t += "  (no two knees can be told apart)\n";
    }
    t
}

/// The knee table for programs (`iolab knee DIR --json`).
#[derive(Debug, Serialize)]
pub struct KneeJson {
    pub slo_us: f64,
    pub rates: Vec<f64>,
    pub engines: Vec<KneeJsonRow>,
}

#[derive(Debug, Serialize)]
pub struct KneeJsonRow {
    pub engine: String,
    pub knee_rps: Option<f64>,
    pub lower_bound: bool,
    pub uncertain: bool,
    pub why: String,
    /// The p99 at the knee: median over the repeats, their range, the interval envelope.
    pub p99_us: Option<Spread>,
    pub p99_above_us: Option<Spread>,
    /// Rates the true knee may lie between: a low of `null` is below the ladder's first rate,
    /// a high of 0 too (certainly below it), a high of `null` unbounded.
    pub knee_range_rps: (Option<f64>, Option<f64>),
    pub invalid_measurements: usize,
    /// Engines whose knees this one cannot be told apart from.
    pub indistinguishable_from: Vec<String>,
}

pub fn knee_json(rows: &[Point], slo: Duration) -> KneeJson {
    let slo_us = slo.as_secs_f64() * 1e6;
    let rates = offered_rates(rows);
    let knees = knees(rows, slo_us);
    let engines = knees
        .iter()
        .map(|k| KneeJsonRow {
            engine: k.engine.clone(),
            knee_rps: k.rate,
            lower_bound: k.lower_bound,
            uncertain: k.uncertain,
            why: k.why.clone(),
            p99_us: k.p99_at_knee,
            p99_above_us: k.p99_above,
            knee_range_rps: (
                usize::try_from(k.steps.0)
                    .ok()
                    .and_then(|s| rates.get(s).copied()),
                k.steps.1.map(|s| {
                    usize::try_from(s)
                        .ok()
                        .and_then(|s| rates.get(s).copied())
                        .unwrap_or(0.0)
                }),
            ),
            invalid_measurements: k.invalid,
            indistinguishable_from: knees
                .iter()
                .filter(|o| o.engine != k.engine && !o.told_apart(k))
                .map(|o| o.engine.clone())
                .collect(),
        })
        .collect();
    KneeJson {
        slo_us,
        rates,
        engines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid point of `engine` at `rate` with this p99 (interval +-10%).
    fn pt(engine: &str, rate: f64, p99: f64) -> Point {
        Point {
            engine: engine.into(),
            offered_rps: rate,
            achieved_rps: rate,
            p99_us: p99,
            p99_ci_low_us: p99 * 0.9,
            p99_ci_high_us: p99 * 1.1,
            valid: true,
            over_slo: p99 > 1000.0,
            ..Point::default()
        }
    }

    fn invalid(mut p: Point, blame: &str) -> Point {
        p.valid = false;
        p.blame = blame.into();
        p.invalid_reason = format!("{blame} was late");
        p
    }

    fn saturated(mut p: Point) -> Point {
        p.saturated = true;
        p
    }

    #[test]
    fn a_cell_is_the_majority_of_its_valid_repeats() {
        let rows = [
            pt("a", 1.0, 100.0),
            pt("a", 1.0, 4_000.0), // one stalled repeat
            pt("a", 1.0, 120.0),
            invalid(pt("a", 1.0, 9_000.0), "machine"),
        ];
        let c = cell(&rows, "a", 1.0).unwrap();
        assert_eq!(c.verdict(), Verdict::Good);
        let s = c.p99().unwrap();
        assert_eq!((s.median, s.min, s.max, s.repeats), (120.0, 100.0, 4_000.0, 3));
        assert!(
            (s.low - 90.0).abs() < 1e-9 && (s.high - 4_400.0).abs() < 1e-9,
            "{s:?}"
        );
        let tie = [pt("b", 1.0, 100.0), pt("b", 1.0, 2_000.0)];
        assert_eq!(cell(&tie, "b", 1.0).unwrap().verdict(), Verdict::Undecided);
        let none = [invalid(pt("c", 1.0, 100.0), "generator")];
        assert_eq!(cell(&none, "c", 1.0).unwrap().verdict(), Verdict::Unmeasured);
        assert!(cell(&none, "c", 1.0).unwrap().p99().is_none());
    }

    #[test]
    fn nan_values_and_unbounded_intervals_do_not_poison_a_cell() {
        let mut p = pt("a", 1.0, 100.0);
        p.p99_ci_high_us = f64::NAN; // too few samples to bound it above
        p.p99_ci_low_us = f64::NAN;
        let rows = [p, pt("a", 1.0, 110.0)];
        let s = cell(&rows, "a", 1.0).unwrap().p99().unwrap();
        assert_eq!(s.low, 99.0);
        assert!(s.high.is_infinite());
        assert_eq!(s.median, 105.0);
    }

    #[test]
    fn a_nan_p99_neither_decides_nor_poisons_a_knee() {
        // A repeat whose p99 could not be read (NaN, as points.csv writes it) next to two
        // real ones: the knee's figure is the median of the real ones.
        let mut blank = pt("a", 1.0, f64::NAN);
        blank.p99_ci_low_us = f64::NAN;
        blank.p99_ci_high_us = f64::NAN;
        let rows = [
            blank,
            pt("a", 1.0, 100.0),
            pt("a", 1.0, 120.0),
            saturated(pt("a", 2.0, 5_000.0)),
            saturated(pt("a", 2.0, 6_000.0)),
        ];
        let k = &knees(&rows, 1000.0)[0];
        assert_eq!(k.rate, Some(1.0));
        let s = k.p99_at_knee.unwrap();
        assert_eq!((s.median, s.min, s.max), (110.0, 100.0, 120.0), "{s:?}");
        // An unbounded repeat leaves the interval open above, past the SLO: the knee is
        // uncertain, possibly a step lower.
        assert!(s.high.is_infinite() && k.uncertain, "{k:?}");
        assert_eq!(k.steps, (-1, Some(0)));
    }

    #[test]
    fn the_knee_walks_up_good_cells_and_stops_at_the_first_over_one() {
        let rows = [
            pt("a", 1.0, 100.0),
            pt("a", 1.0, 110.0),
            pt("a", 2.0, 200.0),
            pt("a", 2.0, 210.0),
            saturated(pt("a", 4.0, 5_000.0)),
            saturated(pt("a", 4.0, 6_000.0)),
            // Good again above an over cell: the walk has already stopped.
            pt("a", 8.0, 100.0),
        ];
        let k = &knees(&rows, 1000.0)[0];
        assert_eq!(k.rate, Some(2.0));
        assert!(!k.lower_bound && !k.uncertain, "{k:?}");
        assert!(k.why.contains("saturated at 4"), "{}", k.why);
        assert_eq!(k.steps, (1, Some(1)));
        assert_eq!(k.p99_at_knee.unwrap().median, 205.0);
    }

    #[test]
    fn a_later_repeat_outvotes_an_earlier_failure_in_both_directions() {
        // The case: the first attempt invalid (under the SLO), the second valid but
        // saturated. The valid one counts: the knee is the rate below, not a lower bound.
        let rows = [
            pt("a", 1.0, 100.0),
            invalid(pt("a", 2.0, 150.0), "generator"),
            saturated(pt("a", 2.0, 3_000.0)),
        ];
        let k = &knees(&rows, 1000.0)[0];
        assert_eq!(k.rate, Some(1.0));
        assert!(!k.lower_bound, "{k:?}");
        assert_eq!(k.invalid, 1);
        // And the other way round: an over repeat outvoted by two good ones.
        let rows = [pt("b", 1.0, 100.0), pt("b", 1.0, 3_000.0), pt("b", 1.0, 120.0)];
        let k = &knees(&rows, 1000.0)[0];
        assert_eq!(k.rate, Some(1.0));
        assert!(k.uncertain, "a repeat over the SLO makes the knee shaky");
    }

    #[test]
    fn generator_limits_make_lower_bounds_and_ties_make_uncertain_knees() {
        let rows = [
            pt("a", 1.0, 100.0),
            invalid(pt("a", 2.0, 100.0), "generator"),
            invalid(pt("a", 2.0, 100.0), "generator"),
            pt("b", 1.0, 100.0),
            pt("b", 2.0, 100.0),
            pt("b", 2.0, 3_000.0),
            pt("c", 1.0, 100.0),
            pt("c", 2.0, 100.0),
        ];
        let k = knees(&rows, 1000.0);
        assert_eq!((k[0].rate, k[0].lower_bound), (Some(1.0), true));
        assert!(k[0].why.contains("generator"), "{}", k[0].why);
        assert_eq!(k[0].steps, (0, None));
        assert_eq!((k[1].rate, k[1].uncertain), (Some(1.0), true));
        assert_eq!(k[1].steps, (0, Some(1)));
        // The top of the ladder is a lower bound too.
        assert_eq!((k[2].rate, k[2].lower_bound), (Some(2.0), true));
        // a (>= 1) overlaps b (1 or 2) and c (>= 2); b and c overlap at step 1.
        assert!(!k[0].told_apart(&k[1]) && !k[1].told_apart(&k[2]) && !k[0].told_apart(&k[2]));
    }

    #[test]
    fn knees_far_apart_are_told_apart() {
        let rows = [
            pt("slow", 1.0, 100.0),
            saturated(pt("slow", 2.0, 5_000.0)),
            saturated(pt("slow", 2.0, 5_000.0)),
            pt("fast", 1.0, 100.0),
            pt("fast", 2.0, 100.0),
            pt("fast", 4.0, 100.0),
            saturated(pt("fast", 8.0, 9_000.0)),
        ];
        let k = knees(&rows, 1000.0);
        assert_eq!(k[0].steps, (0, Some(0)));
        assert_eq!(k[1].steps, (2, Some(2)));
        assert!(k[0].told_apart(&k[1]));
        let table = knee_table(&rows, Duration::from_millis(1));
        assert!(!table.contains("cannot be told apart"), "{table}");
    }

    #[test]
    fn an_engine_over_at_the_first_rate_has_no_knee() {
        let rows = [saturated(pt("a", 1.0, 5_000.0)), saturated(pt("a", 1.0, 6_000.0))];
        let k = &knees(&rows, 1000.0)[0];
        assert_eq!(k.rate, None);
        assert!(!k.lower_bound && !k.uncertain);
        assert_eq!(k.steps, (-1, Some(-1)), "certainly below the ladder");
        let all_invalid = [invalid(pt("b", 1.0, 100.0), "machine")];
        let k = &knees(&all_invalid, 1000.0)[0];
        assert_eq!((k.rate, k.lower_bound), (None, true));
        assert!(k.why.contains("machine stalled"), "{}", k.why);
        assert!(knees(&[], 1000.0).is_empty());
    }

    #[test]
    fn comparisons_call_a_difference_only_beyond_the_noise() {
        let rows = [
            pt("uring", 80.0, 152.0),
            pt("uring", 80.0, 160.0),
            pt("epoll", 80.0, 166.0),
            pt("epoll", 80.0, 170.0),
            pt("threads", 80.0, 600.0),
            pt("threads", 80.0, 640.0),
        ];
        let c = comparisons(&rows, 80.0);
        assert_eq!(c.len(), 3);
        assert!(!c[0].different, "{c:?}");
        assert!(c[0]
            .sentence()
            .starts_with("uring and epoll are indistinguishable at 80"));
        assert!(c[1].different && c[2].different);
        assert!(
            c[1].sentence().starts_with("uring beats threads"),
            "{}",
            c[1].sentence()
        );
    }
}
