//! Load from many machines, merged exactly.
//!
//! An agent is a plain `iolab load` with `--agent NAME` and `--start-at TIME`: every agent
//! measures the same wall-clock window, each with its own seed, so their arrivals are
//! independent Poisson streams whose sum is a Poisson stream at the total rate. Each agent
//! writes its JSON summary, an HdrHistogram log holding its whole-window histograms
//! (tagged), and its send times. `iolab merge` reads them back and builds one run:
//!
//! - counts and rates are summed;
//! - latency and send-lag percentiles come from the sum of the agents' histograms, which is
//!   the histogram of all their samples together (exact to the histogram's precision);
//!   percentiles are never averaged;
//! - the arrivals check runs per agent (their own summaries) and on the merged sends, put on
//!   one clock with each agent's clock offset where it is known;
//! - agents whose start times or durations disagree beyond a bound are named in a warning.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use super::canary::StallSummary;
use super::{ArrivalChecks, IntervalLine, LoadConfig, LoadReport, Measured};
use crate::os::cpu::CpuIdle;
use crate::sansio::stats::{new_histogram, parse_hlog, HlogEntry};

/// Tags of the whole-window histograms in a load's HdrHistogram log (the untagged entries
/// are its per-interval latency).
pub const TAG_LATENCY: &str = "latency";
pub const TAG_UNCORRECTED: &str = "uncorrected";
pub const TAG_SEND_LAG: &str = "send_lag";

/// First word of a sends file; the window's start in Unix ns follows it.
pub const SENDS_HEADER: &str = "#iolab-sends-v1";

/// How far agents' start times or measured durations may disagree before the merge warns.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_millis(10);

/// What `load --json` records of an agent run.
#[derive(Debug, Clone, Serialize)]
pub struct AgentSummary {
    pub name: String,
    /// The machine the agent ran on (its hostname): agents on one machine share its clock.
    pub host: String,
    /// The common start (`--start-at`), or where this run's window began.
    pub start_at_unix_s: f64,
    /// Where the measured window actually began on this host's clock.
    pub window_start_unix_s: Option<f64>,
    /// The first measured request's scheduled and actual send.
    pub first_scheduled_unix_s: Option<f64>,
    pub first_send_unix_s: Option<f64>,
    /// This host's clock minus the reference clock (s), if the caller measured it.
    pub clock_offset_s: Option<f64>,
    /// The HdrHistogram log and the sends file, as written (relative to the JSON's folder
    /// when they are beside it).
    pub hdr_log: Option<String>,
    pub sends: Option<String>,
}

/// One agent's own figures, in a merged summary.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    pub name: String,
    pub json: String,
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub sent: u64,
    pub completed: u64,
    pub errors: u64,
    pub p99_us: f64,
    pub send_lag_p99_us: f64,
    pub ks_p_value: f64,
    pub start_at_unix_s: f64,
    pub first_scheduled_unix_s: Option<f64>,
    pub duration_s: f64,
    pub clock_offset_s: Option<f64>,
    pub error: Option<String>,
}

/// The seed an agent uses: `seed` mixed with its name (FNV-1a, then SplitMix64), so agents
/// given one `--seed` draw independent streams, and the same agent the same stream again.
pub fn agent_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = seed ^ h;
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// This machine's hostname.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Unix ns of a wall-clock instant (0 before the epoch).
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// `--start-at`: Unix seconds (`1767225600`, `1767225600.25`), RFC 3339
/// (`2026-12-01T22:00:00Z`, `2026-12-01T23:00:00.5+01:00`), or `+DURATION` from now (`+3s`).
pub fn parse_start_at(s: &str) -> Result<SystemTime, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "--start-at {s:?}: give Unix seconds (1767225600.5), RFC 3339 (2026-12-01T22:00:00Z) or +DURATION (+3s)"
        )
    };
    if let Some(after) = s.strip_prefix('+') {
        let d: crate::sansio::units::Dur = after.parse().map_err(|_| bad())?;
        return Ok(SystemTime::now() + d.0);
    }
    if let Ok(secs) = s.parse::<f64>() {
        if !(secs.is_finite() && secs >= 0.0) {
            return Err(bad());
        }
        return Ok(UNIX_EPOCH + Duration::from_secs_f64(secs));
    }
    rfc3339(s).ok_or_else(bad)
}

/// RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ns = 0u64;
    if b.get(i) == Some(&b'.') {
        let digits: String = s[i + 1..].chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            return None;
        }
        i += 1 + digits.len();
        let padded = format!("{:0<9}", &digits[..digits.len().min(9)]);
        frac_ns = padded.parse().ok()?;
    }
    let offset_s = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (num(i + 1, 2)? * 3600 + num(i + 4, 2)? * 60)
        }
        _ => return None,
    };
    // Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let (y, m) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    (secs >= 0).then(|| UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_nanos(frac_ns))
}

/// Reads an HdrHistogram interval log and adds up its histograms with this tag (`None`: the
/// untagged ones). Returns the sum and the entries one by one.
pub fn read_hlog(path: &Path, tag: Option<&str>) -> anyhow::Result<(Histogram<u64>, Vec<HlogEntry>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_hlog(&bytes, tag).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// One agent's run, read back from its files.
pub struct AgentRun {
    pub json_path: PathBuf,
    pub summary: Value,
    pub name: String,
    pub latency: Histogram<u64>,
    pub uncorrected: Histogram<u64>,
    pub send_lag: Histogram<u64>,
    /// Per-interval latency: (start after the schedule began, length, histogram).
    pub intervals: Vec<HlogEntry>,
    /// The window's start, Unix ns on the agent's clock, and its sends (scheduled, actual)
    /// in ns after it.
    pub window_start_unix_ns: u64,
    pub sends: Vec<(i64, i64)>,
}

fn f(v: &Value, path: &str) -> f64 {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

fn u(v: &Value, path: &str) -> u64 {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn text<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
}

/// A file an agent's JSON names: beside the JSON if it is there (fetched results), else as
/// written.
fn beside(json: &Path, named: &str) -> PathBuf {
    let named = Path::new(named);
    if let Some(file) = named.file_name() {
        let near = json.parent().unwrap_or(Path::new(".")).join(file);
        if near.exists() {
            return near;
        }
    }
    named.to_path_buf()
}

impl AgentRun {
    /// Reads `load --agent ... --json PATH`'s summary and the files it names.
    pub fn read(json_path: &Path) -> anyhow::Result<AgentRun> {
        let what = json_path.display();
        let raw = std::fs::read_to_string(json_path).with_context(|| format!("cannot read {what}"))?;
        let summary: Value = serde_json::from_str(&raw).with_context(|| format!("{what}: not JSON"))?;
        let agent = summary
            .get("agent")
            .filter(|a| !a.is_null())
            .with_context(|| format!("{what}: not an agent's run (load it with --agent NAME --json)"))?;
        let name = text(agent, "name").unwrap_or("?").to_string();
        let hlog = text(agent, "hdr_log")
            .with_context(|| format!("{what}: names no HdrHistogram log (agent.hdr_log)"))?;
        let hlog = beside(json_path, hlog);
        let (latency, _) = read_hlog(&hlog, Some(TAG_LATENCY))?;
        let (uncorrected, _) = read_hlog(&hlog, Some(TAG_UNCORRECTED))?;
        let (send_lag, _) = read_hlog(&hlog, Some(TAG_SEND_LAG))?;
        let (_, intervals) = read_hlog(&hlog, None)?;
        if latency.len() != u(&summary, "latency_us.count") {
            anyhow::bail!(
                "{}: {} latency samples, but {what} counts {}: the files are of different runs",
                hlog.display(),
                latency.len(),
                u(&summary, "latency_us.count")
            );
        }
        let sends_path =
            text(agent, "sends").with_context(|| format!("{what}: names no sends file (agent.sends)"))?;
        let sends_path = beside(json_path, sends_path);
        let (window_start_unix_ns, sends) = read_sends(&sends_path)?;
        Ok(AgentRun {
            json_path: json_path.to_path_buf(),
            summary,
            name,
            latency,
            uncorrected,
            send_lag,
            intervals,
            window_start_unix_ns,
            sends,
        })
    }

    fn offset_ns(&self) -> i64 {
        let off = f(&self.summary, "agent.clock_offset_s");
        if off.is_finite() {
            (off * 1e9) as i64
        } else {
            0
        }
    }

    fn row(&self) -> AgentRow {
        let s = &self.summary;
        let opt = |p: &str| Some(f(s, p)).filter(|x| x.is_finite());
        AgentRow {
            name: self.name.clone(),
            json: self.json_path.display().to_string(),
            offered_rps: f(s, "offered_rps"),
            achieved_rps: f(s, "achieved_rps"),
            sent: u(s, "sent"),
            completed: u(s, "completed"),
            errors: u(s, "errors"),
            p99_us: f(s, "latency_us.p99"),
            send_lag_p99_us: f(s, "send_lag_us.p99"),
            ks_p_value: f(s, "interarrival.ks_p_value"),
            start_at_unix_s: f(s, "agent.start_at_unix_s"),
            first_scheduled_unix_s: opt("agent.first_scheduled_unix_s"),
            duration_s: f(s, "duration_s"),
            clock_offset_s: opt("agent.clock_offset_s"),
            error: text(s, "error").map(str::to_string),
        }
    }
}

fn read_sends(path: &Path) -> anyhow::Result<(u64, Vec<(i64, i64)>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let start = lines
        .next()
        .and_then(|l| l.strip_prefix(SENDS_HEADER))
        .and_then(|rest| rest.trim().parse().ok())
        .with_context(|| format!("{}: not a sends file (no {SENDS_HEADER} header)", path.display()))?;
    let mut sends = Vec::new();
    for (i, line) in lines.enumerate() {
        let mut it = line.split_whitespace().map(str::parse::<i64>);
        match (it.next(), it.next()) {
            (Some(Ok(a)), Some(Ok(b))) => sends.push((a, b)),
            _ => anyhow::bail!("{}: line {} is not two numbers", path.display(), i + 2),
        }
    }
    Ok((start, sends))
}

/// What a merged run adds to a report's summary: the agents' stalls, their rows, the
/// warnings, and the protocol (the merged configuration holds no HTTP pages).
#[derive(Debug, Clone)]
pub struct MergedParts {
    pub stalls: StallSummary,
    pub agents: Vec<AgentRow>,
    pub warnings: Vec<String>,
    pub protocol: &'static str,
    pub pages: usize,
    pub addr: String,
}

fn parse_enum<T: clap::ValueEnum>(s: Option<&str>, default: T) -> T {
    s.and_then(|s| T::from_str(s, true).ok()).unwrap_or(default)
}

/// Merges agents' runs into one report, as if one generator had sent all their requests.
/// Agents' start times or durations further apart than `max_skew` are named in a warning.
pub fn merge(runs: &[AgentRun], max_skew: Duration) -> anyhow::Result<LoadReport> {
    let Some(first) = runs.first() else {
        anyhow::bail!("nothing to merge: name the agents' JSON summaries");
    };
    let s0 = &first.summary;
    let mode = text(s0, "mode").unwrap_or("open");
    for r in runs {
        if text(&r.summary, "mode").unwrap_or("open") != mode {
            anyhow::bail!(
                "{} ran in {} loop and {} in {mode} loop: they do not merge",
                r.json_path.display(),
                text(&r.summary, "mode").unwrap_or("?"),
                first.json_path.display()
            );
        }
    }
    let mut names = std::collections::BTreeSet::new();
    let mut warnings = Vec::new();
    for r in runs {
        if !names.insert(r.name.as_str()) {
            warnings.push(format!(
                "agent name {:?} appears twice: if both ran with one seed their arrivals were the same stream",
                r.name
            ));
        }
    }
    let skew_s = max_skew.as_secs_f64();
    let spread = |what: &str, unit: &str, scale: f64, get: &dyn Fn(&AgentRun) -> f64| {
        let vals: Vec<(f64, &str)> = runs.iter().map(|r| (get(r), r.name.as_str())).collect();
        let lo = vals
            .iter()
            .copied()
            .fold((f64::INFINITY, ""), |a, b| if b.0 < a.0 { b } else { a });
        let hi = vals
            .iter()
            .copied()
            .fold((f64::NEG_INFINITY, ""), |a, b| if b.0 > a.0 { b } else { a });
        (hi.0 - lo.0 > skew_s).then(|| {
            format!(
                "agents' {what} disagree by {:.1} {unit} ({} vs {}), more than the bound of {:.1} {unit}",
                (hi.0 - lo.0) * scale,
                lo.1,
                hi.1,
                skew_s * scale
            )
        })
    };
    // Where each agent's window began, on the reference clock.
    let start_of = |r: &AgentRun| (r.window_start_unix_ns as i64 - r.offset_ns()) as f64 / 1e9;
    warnings.extend(spread("window starts", "ms", 1e3, &start_of));
    warnings.extend(spread("measured durations", "ms", 1e3, &|r| {
        f(&r.summary, "duration_s")
    }));
    let hosts: std::collections::BTreeSet<&str> = runs
        .iter()
        .map(|r| text(&r.summary, "agent.host").unwrap_or("?"))
        .collect();
    if hosts.len() > 1
        && runs
            .iter()
            .any(|r| !f(&r.summary, "agent.clock_offset_s").is_finite())
    {
        warnings.push(
            "agents ran on several hosts and some clock offsets are unknown: their sends are lined up on their own clocks"
                .into(),
        );
    }

    let rate: f64 = runs
        .iter()
        .map(|r| f(&r.summary, "offered_rps"))
        .filter(|x| x.is_finite())
        .sum();
    let duration = runs
        .iter()
        .map(|r| f(&r.summary, "duration_s"))
        .fold(0.0, f64::max);
    let warmup = f(s0, "warmup_s");
    let addr = text(s0, "config.addr").unwrap_or("?").to_string();
    let mut config = LoadConfig::new(
        addr.parse()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
        if mode == "closed" { f64::NAN } else { rate },
        Duration::from_secs_f64(duration.max(1e-9)),
    );
    if let Some(name) = addr.strip_prefix("shm:") {
        config.shm = Some(name.to_string());
    }
    config.warmup = Duration::from_secs_f64(if warmup.is_finite() { warmup } else { 0.0 });
    config.connections = runs
        .iter()
        .map(|r| u(&r.summary, "config.connections") as usize)
        .sum();
    config.threads = runs
        .iter()
        .map(|r| u(&r.summary, "config.threads") as usize)
        .sum();
    config.idle_connections = runs
        .iter()
        .map(|r| u(&r.summary, "config.idle_connections") as usize)
        .sum();
    config.seed = u(s0, "config.seed");
    config.max_in_flight = u(s0, "config.max_in_flight") as usize;
    config.chunk_size = u(s0, "config.chunk_size") as usize;
    config.arrival = parse_enum(text(s0, "config.arrival"), config.arrival);
    config.connect = parse_enum(text(s0, "config.connect"), config.connect);
    config.driver = parse_enum(text(s0, "config.driver"), config.driver);
    if let Some(d) = text(s0, "config.request_size").and_then(|t| t.parse().ok()) {
        config.request_size = d;
    }
    if let Some(d) = text(s0, "config.reply").and_then(|t| t.parse().ok()) {
        config.reply = d;
    }
    if let Some(d) = text(s0, "config.work").and_then(|t| t.parse().ok()) {
        config.work = d;
    }
    config.closed_loop = (mode == "closed").then(|| u(s0, "depth") as usize);
    let us = |x: f64| Duration::from_secs_f64(if x.is_finite() { x / 1e6 } else { 0.0 });
    config.ks_resolution = us(f(s0, "interarrival.ks_resolution_us"));
    config.ks_timescale = us(f(s0, "interarrival.ks_timescale_us"));
    config.watch_cpus = Vec::new();
    // Held awake only if every agent's CPUs were (a summary from before the key: unknown).
    config.cpu_idle = if runs
        .iter()
        .all(|r| parse_enum(text(&r.summary, "config.cpu_idle"), CpuIdle::Os) == CpuIdle::Awake)
    {
        CpuIdle::Awake
    } else {
        CpuIdle::Os
    };

    let mut m = Measured::new();
    let mut cpu_s = 0.0;
    let mut busy = f64::NAN;
    let mut error = None;
    let mut stalls = StallSummary::default();
    // Every agent's canaries ran at real-time priority, or the stalls are an upper bound.
    let mut all_realtime = true;
    for r in runs {
        let s = &r.summary;
        let add = |a: &mut Histogram<u64>, b: &Histogram<u64>| {
            a.add(b)
                .map_err(|e| anyhow::anyhow!("{}: {e:?}", r.json_path.display()))
        };
        add(&mut m.latency, &r.latency)?;
        add(&mut m.uncorrected, &r.uncorrected)?;
        add(&mut m.send_lag, &r.send_lag)?;
        let sent = u(s, "sent");
        let bad = u(s, "error_kinds.bad_replies");
        m.sent += sent;
        m.completed += u(s, "completed");
        m.completed_by_end += sent.saturating_sub(u(s, "backlog_at_end") + bad);
        m.bad_replies += bad;
        m.overflow += u(s, "error_kinds.overflow");
        m.lost += u(s, "error_kinds.lost");
        m.bytes_sent += u(s, "bytes_sent");
        m.bytes_received += u(s, "bytes_received");
        if let Some(by) = s.pointer("/error_kinds/http_status").and_then(Value::as_object) {
            for (status, n) in by {
                if let (Ok(status), Some(n)) = (status.parse(), n.as_u64()) {
                    *m.http_status.entry(status).or_default() += n;
                }
            }
        }
        cpu_s += f(s, "client_cpu_s").max(0.0);
        let b = f(s, "generator_busy");
        if b.is_finite() {
            busy = if busy.is_finite() { busy.max(b) } else { b };
        }
        if error.is_none() {
            error = text(s, "error").map(|e| format!("agent {}: {e}", r.name));
        }
        // Stalls on different machines are independent: counts and totals add; the worst
        // agent's excess is what can have pushed its share of requests past the bound.
        if let Some(st) = s
            .get("machine_stalls")
            .and_then(|v| serde_json::from_value::<StallSummary>(v.clone()).ok())
        {
            stalls.count += st.count;
            stalls.total_us += st.total_us;
            stalls.max_us = stalls.max_us.max(st.max_us);
            stalls.excess_us = stalls.excess_us.max(st.excess_us);
            stalls.grace_us = st.grace_us;
            all_realtime &= st.realtime;
            stalls.mean_late_us = stalls.mean_late_us.max(st.mean_late_us);
            stalls.longest.extend(st.longest);
            // CPUs of different machines share numbers; the per-CPU totals add as the
            // totals do.
            for (i, c) in st.cpus.iter().enumerate() {
                let at = match stalls.cpus.iter().position(|x| x == c) {
                    Some(at) => at,
                    None => {
                        stalls.cpus.push(*c);
                        stalls.total_us_by_cpu.push(0.0);
                        stalls.cpus.len() - 1
                    }
                };
                stalls.total_us_by_cpu[at] += st.total_us_by_cpu.get(i).copied().unwrap_or(0.0);
            }
        }
    }
    stalls.realtime = all_realtime;
    stalls.longest.sort_by(|a, b| b.total_cmp(a));
    stalls.longest.truncate(8);

    // The merged sends, on the reference clock, over the window every agent covered.
    let origin = runs.iter().map(&start_of).fold(f64::INFINITY, f64::min);
    let origin_ns = (origin * 1e9) as i64;
    let from = runs
        .iter()
        .map(|r| ((start_of(r) * 1e9) as i64) - origin_ns)
        .max()
        .unwrap_or(0);
    let to = runs
        .iter()
        .map(|r| ((start_of(r) + f(&r.summary, "duration_s")) * 1e9) as i64 - origin_ns)
        .min()
        .unwrap_or(0);
    let (mut sends, mut scheduled) = (Vec::new(), Vec::new());
    for r in runs {
        let shift = (r.window_start_unix_ns as i64 - r.offset_ns()) - origin_ns;
        for &(sched, sent) in &r.sends {
            let (sched, sent) = (sched + shift, sent + shift);
            if (from..to).contains(&sent) {
                sends.push(sent.max(0) as u64);
            }
            if (from..to).contains(&sched) {
                scheduled.push(sched.max(0) as u64);
            }
        }
    }
    sends.sort_unstable();
    scheduled.sort_unstable();
    let arrivals = ArrivalChecks::of(&config, &sends, &scheduled);

    // Intervals: the agents' per-interval histograms, by index, added.
    let mut intervals: std::collections::BTreeMap<u64, IntervalLine> = Default::default();
    for r in runs {
        let warm = config.warmup;
        for (start, length, h) in &r.intervals {
            if length.is_zero() {
                continue;
            }
            let index = (start.saturating_sub(warm).as_secs_f64() / length.as_secs_f64()).round() as u64;
            let line = intervals.entry(index).or_insert_with(|| IntervalLine {
                index,
                length: *length,
                completed: 0,
                errors: 0,
                latency: new_histogram(),
            });
            line.completed += h.len();
            let _ = line.latency.add(h);
        }
    }

    let protocol = if text(s0, "config.protocol") == Some("http") {
        "http"
    } else {
        "frame"
    };
    let parts = MergedParts {
        stalls,
        agents: runs.iter().map(AgentRun::row).collect(),
        warnings,
        protocol,
        pages: u(s0, "config.pages") as usize,
        addr,
    };
    let window = (1, 1 + config.duration.as_nanos() as u64);
    Ok(LoadReport {
        config,
        m,
        arrivals,
        records: Vec::new(),
        intervals: intervals.into_values().collect(),
        wall: Duration::from_secs_f64(duration + warmup.max(0.0)),
        cpu: Duration::from_secs_f64(cpu_s),
        generator_busy: busy,
        error,
        stalls: Default::default(),
        window_ns: window,
        send_times_ns: sends,
        scheduled_times_ns: scheduled,
        wall_anchor: (1, origin_ns.max(0) as u64 + 1),
        agent_files: None,
        merged: Some(Box::new(parts)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_parse_in_every_form() {
        let at = |s: &str| unix_ns(parse_start_at(s).unwrap());
        assert_eq!(at("1767225600"), 1_767_225_600_000_000_000);
        assert_eq!(at("1767225600.25"), 1_767_225_600_250_000_000);
        assert_eq!(at("2026-01-01T00:00:00Z"), 1_767_225_600_000_000_000);
        assert_eq!(at("2026-01-01T01:00:00.5+01:00"), 1_767_225_600_500_000_000);
        assert_eq!(at("2025-12-31T23:00:00-01:00"), 1_767_225_600_000_000_000);
        assert_eq!(at("2024-02-29T12:00:00Z"), 1_709_208_000_000_000_000);
        let soon = at("+2s") as i128 - unix_ns(SystemTime::now()) as i128;
        assert!((1_000_000_000..=2_000_000_000).contains(&soon), "{soon}");
        for bad in [
            "",
            "tomorrow",
            "2026-13-01T00:00:00Z",
            "2026-01-01 00:00",
            "-5",
            "2026-01-01T00:00:00+0100",
        ] {
            let err = parse_start_at(bad).unwrap_err();
            assert!(err.contains("--start-at"), "{bad}: {err}");
        }
    }

    /// An agent's run as its files would give it: `n` requests at `latency_us` each, at
    /// `rate` over 1 s, its window starting at `start_ns`, sends evenly spread.
    fn run(name: &str, n: u64, latency_us: u64, start_ns: u64, offset_s: Option<f64>) -> AgentRun {
        let mut latency = new_histogram();
        latency.record_n(latency_us * 1000, n).unwrap();
        let mut send_lag = new_histogram();
        send_lag.record_n(5_000, n).unwrap();
        let gap = 1_000_000_000 / n as i64;
        let sends = (0..n as i64).map(|i| (i * gap, i * gap + 5_000)).collect();
        AgentRun {
            json_path: PathBuf::from(format!("{name}.json")),
            summary: serde_json::json!({
                "offered_rps": n as f64, "achieved_rps": n as f64, "sent": n, "completed": n,
                "errors": 0, "error_kinds": {"bad_replies": 0, "overflow": 0, "lost": 0, "http_status": {"503": 2}},
                "bytes_sent": 64 * n, "bytes_received": 64 * n, "backlog_at_end": 0,
                "duration_s": 1.0, "warmup_s": 0.5, "client_cpu_s": 0.25, "generator_busy": 0.3,
                "mode": "open", "error": null,
                "latency_us": {"p99": latency_us as f64, "count": n},
                "send_lag_us": {"p99": 5.0},
                "interarrival": {"ks_p_value": 0.5, "ks_resolution_us": 20.0, "ks_timescale_us": 200.0},
                "config": {"addr": "10.0.0.1:7000", "connections": 8, "threads": 1, "seed": 1,
                           "request_size": "64", "reply": "echo", "work": "none", "protocol": "frame"},
                "machine_stalls": {"cpus": [0], "realtime": true, "count": 1, "total_us": 700.0,
                                   "max_us": 700.0, "excess_us": 200.0, "grace_us": 500.0,
                                   "longest": [700.0], "mean_late_us": 3.0},
                "agent": {"name": name, "host": name, "start_at_unix_s": start_ns as f64 / 1e9,
                          "clock_offset_s": offset_s},
            }),
            name: name.to_string(),
            uncorrected: latency.clone(),
            latency,
            send_lag,
            intervals: Vec::new(),
            window_start_unix_ns: start_ns,
            sends,
        }
    }

    #[test]
    fn merged_counts_add_and_percentiles_come_from_all_samples() {
        const T: u64 = 1_800_000_000_000_000_000;
        // 990 fast requests on one agent, 20 slow on the other: p99 of all of them is slow,
        // while the average of the agents' p99s (100 and 5,000 µs) would say 2,550 µs.
        let runs = [
            run("a", 990, 100, T, Some(0.0)),
            run("b", 20, 5_000, T, Some(0.0)),
        ];
        let merged = merge(&runs, DEFAULT_MAX_SKEW).unwrap();
        let s = merged.summary();
        assert_eq!((s.sent, s.completed), (1010, 1010));
        assert_eq!(s.offered_rps, Some(1010.0));
        assert_eq!(s.config.connections, 16);
        assert_eq!(s.config.addr, "10.0.0.1:7000");
        assert_eq!(s.error_kinds.http_status.get("503"), Some(&4));
        assert_eq!(s.latency_us.count, 1010);
        let p99 = s.latency_us.p99;
        assert!((4_990.0..=5_010.0).contains(&p99), "p99 {p99} µs");
        assert_eq!(s.machine_stalls.count, 2);
        assert_eq!(
            s.machine_stalls.excess_us, 200.0,
            "the worst agent's excess, not their sum"
        );
        assert!((s.client_cpu_s - 0.5).abs() < 1e-9);
        assert_eq!(s.agents.as_ref().map(Vec::len), Some(2));
        assert_eq!(s.merge_warnings, Some(Vec::new()));
        // The merged sends are the union of both agents' sends in the common window.
        assert_eq!(merged.send_times_ns.len(), 1010);
    }

    #[test]
    fn disagreeing_agents_are_named_in_warnings() {
        const T: u64 = 1_800_000_000_000_000_000;
        let late = 50_000_000; // 50 ms
        let runs = [run("a", 100, 100, T, None), run("b", 100, 100, T + late, None)];
        let warnings = merge(&runs, DEFAULT_MAX_SKEW)
            .unwrap()
            .summary()
            .merge_warnings
            .unwrap();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("window starts disagree by 50.0 ms (a vs b)")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("clock offsets are unknown")),
            "{warnings:?}"
        );
        // The same lateness, explained by b's measured clock offset: no warning.
        let runs = [
            run("a", 100, 100, T, Some(0.0)),
            run("b", 100, 100, T + late, Some(0.05)),
        ];
        let warnings = merge(&runs, DEFAULT_MAX_SKEW)
            .unwrap()
            .summary()
            .merge_warnings
            .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let runs = [run("a", 100, 100, T, Some(0.0)), run("a", 100, 100, T, Some(0.0))];
        let warnings = merge(&runs, DEFAULT_MAX_SKEW)
            .unwrap()
            .summary()
            .merge_warnings
            .unwrap();
        assert!(
            warnings.iter().any(|w| w.contains("appears twice")),
            "{warnings:?}"
        );
    }

    #[test]
    fn agents_seeds_differ_by_name_and_repeat_by_name() {
        assert_ne!(agent_seed(1, "a"), agent_seed(1, "b"));
        assert_ne!(agent_seed(1, "a"), agent_seed(2, "a"));
        assert_eq!(agent_seed(7, "host-1"), agent_seed(7, "host-1"));
    }
}
