//! `iolab sweep`: engines × offered rates, each point measured the same way, into a folder.
//!
//! Each engine runs as its own server process (`iolab serve`), pinned to the server CPUs,
//! so one engine's threads and memory never colour another's numbers and its CPU time can
//! be read from /proc. The generator runs in this process, pinned to the other CPUs, and
//! walks the rates up. An engine is stopped early once it is saturated (achieved < 95% of
//! the scheduled rate, or p99 above the SLO, or errors): the points beyond would only measure a queue growing.
//!
//! Every point is judged valid or not *as a measurement*: invalid when the generator was the
//! bottleneck (its own send lag above a bound, its time nearly all spent working rather than
//! waiting for the next send, or its run cut short) or when its arrivals failed the Poisson
//! check. Invalid points are kept, marked and explained, never mixed in.
//!
//! The folder holds everything the report (or any program) needs, and nothing that needs
//! this machine to read it: `meta.json`, `points.csv`, and per point the load summary
//! (`points/ENGINE-RATE.json`), its HdrHistogram interval log (`.hlog`) and a stretch of its
//! actual interarrival gaps (`.gaps`), and each server's own log (`ENGINE.server.log`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::loadgen::spec::{ReplyDist, SizeDist, WorkDist};
use crate::loadgen::{self, LoadConfig, LoadReport};
use crate::results::Point;

/// A sweep, fully specified.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Engines as `serve` arguments: the engine name, then any extra options
    /// (`uring --register-files`).
    pub engines: Vec<Vec<String>>,
    pub rates: Vec<f64>,
    pub request_size: SizeDist,
    pub reply: ReplyDist,
    pub work: WorkDist,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// p99 above this counts as saturated.
    pub slo: Duration,
    /// A point whose generator send-lag p99 is above this is invalid.
    pub max_send_lag: Duration,
    /// Arrivals whose K-S p-value falls below this are invalid.
    pub min_ks_p: f64,
    /// The arrivals check's timescale and resolution (see `stats`).
    pub ks_timescale: Duration,
    pub ks_resolution: Duration,
    /// A point whose generator was busy for more than this fraction of its run is invalid.
    pub max_generator_busy: f64,
    /// Measurements of a rate that came out saturated or invalid before the last one counts
    /// (1: no retry).
    pub attempts: u32,
    pub server_cpus: Vec<usize>,
    pub load_cpus: Vec<usize>,
    pub seed: u64,
    pub out: PathBuf,
    /// The `iolab` binary that serves (this one, normally).
    pub server_binary: PathBuf,
    /// How this sweep was asked for, recorded in meta.json.
    pub command_line: Vec<String>,
}

/// Consecutive interarrival gaps kept per point (in `.gaps`): enough for the report's
/// histogram and to re-run the arrivals check, small enough for dozens of points.
pub const GAPS_KEPT: usize = 20_000;

impl SweepConfig {
    /// A sweep with the command line's defaults: 64 B echo, 64 connections, 3 s points after
    /// 1 s of warm-up, SLO 1 ms, the server on CPU 0 and the generator on CPU 1.
    pub fn new(engines: Vec<Vec<String>>, rates: Vec<f64>, out: PathBuf) -> anyhow::Result<Self> {
        let two_cpus = crate::engine::num_cpus() > 1;
        Ok(SweepConfig {
            engines,
            rates,
            request_size: SizeDist::Fixed(64),
            reply: ReplyDist::Echo,
            work: WorkDist::None,
            connections: 64,
            duration: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            slo: Duration::from_millis(1),
            max_send_lag: Duration::from_micros(200),
            min_ks_p: 0.01,
            ks_timescale: loadgen::DEFAULT_KS_TIMESCALE,
            ks_resolution: Duration::from_micros(20),
            max_generator_busy: 0.9,
            attempts: 2,
            server_cpus: vec![0],
            load_cpus: vec![if two_cpus { 1 } else { 0 }],
            seed: 1,
            out,
            server_binary: std::env::current_exe().context("cannot find the iolab binary")?,
            command_line: std::env::args().collect(),
        })
    }
}

#[derive(Debug, Serialize)]
struct Meta {
    iolab_version: &'static str,
    command_line: Vec<String>,
    hostname: String,
    cpu_model: String,
    cpus: usize,
    kernel: String,
    server_cpus: Vec<usize>,
    load_cpus: Vec<usize>,
    seed: u64,
    engines: Vec<String>,
    rates: Vec<f64>,
    workload: String,
    connections: usize,
    duration_s: f64,
    warmup_s: f64,
    slo_us: f64,
    max_send_lag_us: f64,
    min_ks_p: f64,
    ks_timescale_us: f64,
    ks_resolution_us: f64,
    max_generator_busy: f64,
    started_unix_s: u64,
}

/// What a progress display is told.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    Point {
        engine: &'a str,
        rate: f64,
    },
    Done(&'a Point),
    /// The point just done was saturated or invalid (`how`); the same rate is measured again.
    Retry {
        engine: &'a str,
        rate: f64,
        how: &'static str,
    },
    /// No more points for this engine; `remaining` rates of the ladder will not run.
    EngineStopped {
        engine: &'a str,
        why: String,
        remaining: usize,
    },
}

/// Parses `START..END:STEPS` (evenly spaced, both ends included), `START..ENDxFACTOR`
/// (START, START×FACTOR, ... up to END), or a list `R1,R2,...` (rising).
pub fn parse_rates(s: &str) -> Result<Vec<f64>, String> {
    let bad =
        || format!("'{s}' is not a rate ladder (examples: 1000..50000:8, 1000..256000x2, 5000,20000,80000)");
    if !s.contains("..") {
        let rates: Vec<f64> = s
            .split(',')
            .map(|r| r.trim().parse::<f64>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        if rates.iter().any(|r| !(*r > 0.0 && r.is_finite())) {
            return Err(format!("'{s}': rates must be positive"));
        }
        if rates.windows(2).any(|w| w[1] <= w[0]) {
            return Err(format!("'{s}': list the rates rising, each once"));
        }
        return Ok(rates);
    }
    let (start, rest) = s.split_once("..").ok_or_else(bad)?;
    let start: f64 = start.trim().parse().map_err(|_| bad())?;
    let (end, step, geometric) = if let Some((e, n)) = rest.split_once(':') {
        (e, n, false)
    } else if let Some((e, f)) = rest.split_once('x') {
        (e, f, true)
    } else {
        return Err(bad());
    };
    let end: f64 = end.trim().parse().map_err(|_| bad())?;
    if !(start > 0.0 && end >= start && end.is_finite()) {
        return Err(format!("'{s}': rates must be positive and END ≥ START"));
    }
    let mut rates = Vec::new();
    if geometric {
        let factor: f64 = step.trim().parse().map_err(|_| bad())?;
        if factor.partial_cmp(&1.0) != Some(std::cmp::Ordering::Greater) {
            return Err(format!("'{s}': the factor must be above 1"));
        }
        let mut r = start;
        while r <= end * (1.0 + 1e-9) && rates.len() < 1000 {
            rates.push(r.round());
            r *= factor;
        }
    } else {
        let steps: usize = step.trim().parse().map_err(|_| bad())?;
        if !(1..=1000).contains(&steps) {
            return Err(format!("'{s}': STEPS must be between 1 and 1000"));
        }
        if steps == 1 {
            rates.push(start);
        } else {
            let gap = (end - start) / (steps - 1) as f64;
            rates.extend((0..steps).map(|i| (start + gap * i as f64).round()));
        }
    }
    Ok(rates)
}

/// Runs the sweep; returns every point measured (also in `out/points.csv`).
pub fn run(cfg: &SweepConfig, mut progress: impl FnMut(Progress<'_>)) -> anyhow::Result<Vec<Point>> {
    if cfg.engines.is_empty() || cfg.rates.is_empty() {
        anyhow::bail!("a sweep needs at least one engine and one rate");
    }
    let points_dir = cfg.out.join("points");
    std::fs::create_dir_all(&points_dir)
        .with_context(|| format!("cannot create {}", points_dir.display()))?;
    write_meta(cfg)?;
    let csv_path = cfg.out.join("points.csv");
    let mut csv =
        csv::Writer::from_path(&csv_path).with_context(|| format!("cannot write {}", csv_path.display()))?;
    let workload = workload_label(cfg);
    let mut points = Vec::new();
    let mut skipped = Vec::new();
    for spec in &cfg.engines {
        let label = spec.join(" ");
        let file_label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let log = cfg.out.join(format!("{file_label}.server.log"));
        let mut server = match Server::start(cfg, spec, &log) {
            Ok(server) => server,
            // One engine this machine cannot run (io_uring denied, say) must not cost the
            // others their points.
            Err(e) => {
                progress(Progress::EngineStopped {
                    engine: &label,
                    why: format!("skipped, it did not start: {e:#}"),
                    remaining: cfg.rates.len(),
                });
                skipped.push(e);
                continue;
            }
        };
        for (i, &rate) in cfg.rates.iter().enumerate() {
            let remaining = cfg.rates.len() - i - 1;
            let mut attempt = 1;
            let (point, error) = loop {
                progress(Progress::Point { engine: &label, rate });
                let stem = match attempt {
                    1 => format!("{file_label}-{}", rate as u64),
                    n => format!("{file_label}-{}-attempt{n}", rate as u64),
                };
                let cpu_before = server.cpu_seconds();
                let report = loadgen::run(
                    load_config(cfg, &server.endpoint, server.netns.as_deref(), rate),
                    &mut |_| {},
                )?;
                let server_cpu = server.cpu_seconds() - cpu_before;
                report.write_json(&points_dir.join(format!("{stem}.json")))?;
                report.write_hdr_log(&points_dir.join(format!("{stem}.hlog")))?;
                report.write_interarrivals(&points_dir.join(format!("{stem}.gaps")), GAPS_KEPT)?;
                let mut point = judge(cfg, &label, &workload, rate, &report, server_cpu, &stem);
                point.attempt = attempt;
                csv.serialize(&point)?;
                csv.flush()?;
                progress(Progress::Done(&point));
                // A stray stall of the VM can saturate a short point or make the generator
                // miss its schedule; the rate is measured again before it counts.
                let failed = if point.saturated {
                    Some("saturated")
                } else if !point.valid {
                    Some("invalid")
                } else {
                    None
                };
                if let Some(how) = failed {
                    if report.error.is_none() && attempt < cfg.attempts && server.alive() {
                        attempt += 1;
                        points.push(point);
                        progress(Progress::Retry {
                            engine: &label,
                            rate,
                            how,
                        });
                        continue;
                    }
                }
                break (point, report.error);
            };
            let stop = if let Some(e) = &error {
                Some(format!("the run failed: {e}"))
            } else if point.saturated {
                Some(format!(
                    "saturated at {} rps (achieved {:.0}, p99 {:.0} us{})",
                    rate,
                    point.achieved_rps,
                    point.p99_us,
                    if attempt > 1 { ", on every attempt" } else { "" }
                ))
            } else {
                None
            };
            points.push(point);
            if let Some(why) = stop {
                progress(Progress::EngineStopped {
                    engine: &label,
                    why,
                    remaining,
                });
                break;
            }
            if !server.alive() {
                progress(Progress::EngineStopped {
                    engine: &label,
                    why: "the server exited".into(),
                    remaining,
                });
                break;
            }
        }
        server.stop();
    }
    if skipped.len() == cfg.engines.len() {
        if let Some(e) = skipped.pop() {
            return Err(e.context("no engine started"));
        }
    }
    Ok(points)
}

fn load_config(cfg: &SweepConfig, endpoint: &Endpoint, netns: Option<&str>, rate: f64) -> LoadConfig {
    let addr = match endpoint {
        Endpoint::Tcp(addr) => *addr,
        Endpoint::Shm(_) => std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    let mut load = LoadConfig::new(addr, rate, cfg.duration);
    if let Endpoint::Shm(name) = endpoint {
        load.shm = Some(name.clone());
    }
    load.netns = netns.map(str::to_string);
    load.warmup = cfg.warmup;
    load.connections = cfg.connections;
    load.request_size = cfg.request_size;
    load.reply = cfg.reply;
    load.work = cfg.work;
    load.pin = cfg.load_cpus.clone();
    load.threads = cfg.load_cpus.len().max(1);
    load.seed = cfg.seed;
    load.log_interval = Some(Duration::from_secs(1));
    load.ks_timescale = cfg.ks_timescale;
    load.ks_resolution = cfg.ks_resolution;
    load
}

/// Marks a point valid or not, and saturated or not.
fn judge(
    cfg: &SweepConfig,
    engine: &str,
    workload: &str,
    rate: f64,
    report: &LoadReport,
    server_cpu_s: f64,
    stem: &str,
) -> Point {
    let s = report.summary();
    let mut reasons = Vec::new();
    let lag_bound_us = cfg.max_send_lag.as_secs_f64() * 1e6;
    if s.send_lag_us.p99 > lag_bound_us {
        reasons.push(format!(
            "generator send-lag p99 {:.0} us > {:.0} us: the load generator was the bottleneck",
            s.send_lag_us.p99, lag_bound_us
        ));
    }
    if s.generator_busy > cfg.max_generator_busy {
        reasons.push(format!(
            "generator busy {:.0}% of the run > {:.0}%: its core was the bottleneck",
            s.generator_busy * 100.0,
            cfg.max_generator_busy * 100.0
        ));
    }
    if s.completed > 100 && s.interarrival.ks_p_value < cfg.min_ks_p {
        reasons.push(format!(
            "arrivals failed the Poisson check at {:.0} us scale (K-S D = {:.3}, p {} < {})",
            s.interarrival.ks_timescale_us,
            s.interarrival.ks_d,
            crate::stats::fmt_p(s.interarrival.ks_p_value),
            cfg.min_ks_p
        ));
    }
    if let Some(e) = &s.error {
        reasons.push(format!("the run did not complete: {e}"));
    }
    let slo_us = cfg.slo.as_secs_f64() * 1e6;
    // Against what was scheduled, not offered: a short run's Poisson count noise alone can
    // be several percent.
    let saturated = s.achieved_rps < 0.95 * s.scheduled_rps || s.latency_us.p99 > slo_us || s.errors > 0;
    Point {
        engine: engine.to_string(),
        workload: workload.to_string(),
        offered_rps: rate,
        achieved_rps: s.achieved_rps,
        p50_us: s.latency_us.p50,
        p90_us: s.latency_us.p90,
        p99_us: s.latency_us.p99,
        p999_us: s.latency_us.p999,
        max_us: s.latency_us.max,
        send_lag_p99_us: s.send_lag_us.p99,
        generator_busy: s.generator_busy,
        ks_p_value: s.interarrival.ks_p_value,
        ks_d: s.interarrival.ks_d,
        errors: s.errors,
        server_cpu_s,
        client_cpu_s: s.client_cpu_s,
        server_cpu_us_per_request: if s.completed > 0 {
            server_cpu_s * 1e6 / (s.completed as f64 / s.duration_s * (s.duration_s + s.warmup_s))
        } else {
            0.0
        },
        valid: reasons.is_empty(),
        invalid_reason: reasons.join("; "),
        saturated,
        summary: format!("points/{stem}.json"),
        hdr_log: format!("points/{stem}.hlog"),
        gaps: format!("points/{stem}.gaps"),
        attempt: 1,
    }
}

fn workload_label(cfg: &SweepConfig) -> String {
    format!(
        "request {}, reply {}, work {}",
        cfg.request_size, cfg.reply, cfg.work
    )
}

fn write_meta(cfg: &SweepConfig) -> anyhow::Result<()> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let meta = Meta {
        iolab_version: env!("CARGO_PKG_VERSION"),
        command_line: cfg.command_line.clone(),
        hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        cpu_model,
        cpus: crate::engine::num_cpus(),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        server_cpus: cfg.server_cpus.clone(),
        load_cpus: cfg.load_cpus.clone(),
        seed: cfg.seed,
        engines: cfg.engines.iter().map(|e| e.join(" ")).collect(),
        rates: cfg.rates.clone(),
        workload: workload_label(cfg),
        connections: cfg.connections,
        duration_s: cfg.duration.as_secs_f64(),
        warmup_s: cfg.warmup.as_secs_f64(),
        slo_us: cfg.slo.as_secs_f64() * 1e6,
        max_send_lag_us: cfg.max_send_lag.as_secs_f64() * 1e6,
        min_ks_p: cfg.min_ks_p,
        ks_timescale_us: cfg.ks_timescale.as_secs_f64() * 1e6,
        ks_resolution_us: cfg.ks_resolution.as_secs_f64() * 1e6,
        max_generator_busy: cfg.max_generator_busy,
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let path = cfg.out.join("meta.json");
    std::fs::write(&path, serde_json::to_string_pretty(&meta)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

/// An engine under test, as its own process.
struct Server {
    child: Child,
    /// What the load connects to: a TCP address, or a shared-memory segment's name.
    endpoint: Endpoint,
    /// The network namespace the server made for itself (the `userspace` engine's), which
    /// the load joins.
    netns: Option<String>,
    _stdout: BufReader<ChildStdout>,
}

#[derive(Debug, Clone)]
enum Endpoint {
    Tcp(std::net::SocketAddr),
    Shm(String),
}

impl Server {
    /// Starts `iolab serve` for `spec`; its stderr (start-up line, warnings, summary) goes to
    /// `log`.
    fn start(cfg: &SweepConfig, spec: &[String], log: &Path) -> anyhow::Result<Server> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("cannot write {}", log.display()))?;
        let Some((engine, extra)) = spec.split_first() else {
            anyhow::bail!("an empty engine spec");
        };
        let mut cmd = Command::new(&cfg.server_binary);
        cmd.args(["serve", "--quiet", "--addr", "127.0.0.1:0", "--engine", engine])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        if !cfg.server_cpus.is_empty() {
            let list: Vec<String> = cfg.server_cpus.iter().map(|c| c.to_string()).collect();
            cmd.args(["--pin", &list.join(",")]);
        }
        if engine == "shm" && !extra.iter().any(|a| a == "--shm") {
            // A segment of its own per sweep, so two sweeps never meet.
            cmd.args(["--shm", &format!("sweep-{}", std::process::id())]);
        }
        let netns = match extra.iter().position(|a| a == "--netns") {
            Some(i) => extra.get(i + 1).cloned(),
            // The user-space stack's TAP device and the load live in a namespace the server
            // makes for the run and deletes when it exits.
            None if engine == "userspace" => {
                let name = format!("iolab-sweep-{}", std::process::id());
                cmd.args(["--netns", &name]);
                Some(name)
            }
            None => None,
        };
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", cfg.server_binary.display()))?;
        let stdout = child.stdout.take().context("no server stdout")?;
        let mut stdout = BufReader::new(stdout);
        let mut first = String::new();
        stdout.read_line(&mut first)?;
        let Some(addr) = first.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let status = child.wait()?;
            let why = std::fs::read_to_string(log).unwrap_or_default();
            let why = why.lines().last().unwrap_or("no message");
            anyhow::bail!("the {} server did not start ({status}): {why}", spec.join(" "));
        };
        let endpoint = match addr.strip_prefix("shm:") {
            Some(name) => Endpoint::Shm(name.to_string()),
            None => Endpoint::Tcp(addr.parse().context("the server printed a bad address")?),
        };
        Ok(Server {
            child,
            endpoint,
            netns,
            _stdout: stdout,
        })
    }

    /// User plus system CPU time of the whole server process so far.
    fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.child.id()).unwrap_or(0.0)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// utime + stime of process `pid` from /proc (fields 14 and 15 of its stat line).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it start past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks.max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_ladders_parse() {
        assert_eq!(
            parse_rates("1000..5000:5").unwrap(),
            vec![1000.0, 2000.0, 3000.0, 4000.0, 5000.0]
        );
        assert_eq!(
            parse_rates("1000..8000x2").unwrap(),
            vec![1000.0, 2000.0, 4000.0, 8000.0]
        );
        assert_eq!(parse_rates("500..500:1").unwrap(), vec![500.0]);
        assert_eq!(
            parse_rates("5000, 20000,80000").unwrap(),
            vec![5000.0, 20000.0, 80000.0]
        );
        assert_eq!(parse_rates("700").unwrap(), vec![700.0]);
        for bad in [
            "",
            "1000..",
            "5000..1000:3",
            "1000..8000x1",
            "0..10:2",
            "1..9:0",
            "2000,1000",
            "1000,1000",
            "1000,-5",
            "1000,,2000",
        ] {
            assert!(parse_rates(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proc_cpu_time_of_this_process_reads() {
        let t = process_cpu_seconds(std::process::id()).expect("readable");
        assert!(t >= 0.0);
    }
}
