//! The `iolab` command line: the only place that knows every subsystem. `args` holds the
//! options; the commands here turn them into configurations and run them.

use std::io::{IsTerminal as _, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory as _, FromArgMatches as _};
// Printing never panics: a closed pipe must not stop a server from shutting down.
use iolab::{eprintln, print, println};

use iolab::engine::{self, EngineKind, ServeConfig};
use iolab::lab::demo;
use iolab::loadgen::spec::{ReplyDist, SizeDist, WorkDist};
use iolab::loadgen::{self, LoadConfig};
use iolab::sansio::budget::{MemoryBudget, FLOOR};
use iolab::sansio::session::SessionConfig;
use iolab::sansio::units::{Dur, Size};

mod args;

use args::*;

pub fn main() -> ExitCode {
    // The matches too, not only the parsed options: `serve` asks which options were given.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Serve(a) => {
            let given = |id: &str| {
                matches
                    .subcommand_matches("serve")
                    .is_some_and(|m| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
            };
            serve(*a, &given)
        }
        Command::Load(a) => load(*a),
        Command::Demo(a) => run_demo(a),
        Command::Sweep(a) => sweep(*a),
        Command::Knee(a) => knee(a),
        Command::Merge(a) => merge(a),
        Command::Report(a) => report(a),
        Command::Corpus(a) => corpus(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("iolab: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `serve`'s options that belong to one engine (or two), by clap id: given to another
/// engine they would be ignored, so they are refused.
const ENGINE_OPTIONS: &[(&str, &[EngineKind])] = {
    use EngineKind::*;
    &[
        ("epoll_mode", &[Epoll]),
        ("workers", &[Pool]),
        ("ring_entries", &[Uring, Monoio]),
        ("sqpoll", &[Uring]),
        ("sqpoll_idle", &[Uring]),
        ("zero_copy_threshold", &[Uring]),
        ("register_files", &[Uring]),
        ("recv", &[Uring]),
        ("recv_buffers", &[Uring]),
        ("recv_buffer_size", &[Uring]),
        ("shm", &[Shm]),
        ("shm_slots", &[Shm]),
        ("shm_ring", &[Shm]),
        ("shm_spin", &[Shm]),
        ("tap", &[Userspace]),
        ("tap_ip", &[Userspace]),
        ("tap_mtu", &[Userspace]),
        ("tap_buffer", &[Userspace]),
        ("tap_backlog", &[Userspace]),
        ("netns", &[Userspace]),
    ]
};

/// The engine's own options from `serve`'s arguments; an option of another engine is an error.
fn engine_options(a: &ServeArgs, given: &dyn Fn(&str) -> bool) -> anyhow::Result<engine::EngineOptions> {
    use engine::EngineOptions as O;
    for (id, engines) in ENGINE_OPTIONS {
        if given(id) && !engines.contains(&a.engine) {
            let names: Vec<&str> = engines.iter().map(|e| e.name()).collect();
            anyhow::bail!(
                "--{} is an option of --engine {}, not of {}",
                id.replace('_', "-"),
                names.join(" and "),
                a.engine
            );
        }
    }
    Ok(match a.engine {
        EngineKind::Threads => O::Threads,
        EngineKind::Iovec => O::Iovec,
        EngineKind::Select => O::Select,
        EngineKind::Poll => O::Poll,
        EngineKind::Epoll => O::Epoll(engine::EpollOptions { mode: a.epoll_mode }),
        EngineKind::Pool => O::Pool(engine::PoolOptions { workers: a.workers }),
        EngineKind::Uring => O::Uring(a.uring.options()?),
        EngineKind::Tokio => O::Tokio,
        EngineKind::Monoio => O::Monoio(engine::MonoioOptions {
            ring_entries: a.uring.options()?.ring_entries,
        }),
        EngineKind::Shm => {
            let Some(name) = &a.shm.shm else {
                anyhow::bail!("--engine shm needs --shm NAME (the segment clients attach to)")
            };
            if a.protocol != Protocol::Frame {
                anyhow::bail!("--engine shm carries the frame protocol only");
            }
            if name.is_empty() || name.contains('/') || name.len() > 200 {
                anyhow::bail!("--shm '{name}': a name of up to 200 characters, without '/'");
            }
            O::Shm(engine::ShmOptions {
                name: Some(name.clone()),
                slots: a.shm.shm_slots,
                ring_bytes: usize::try_from(a.shm.shm_ring.0).unwrap_or(usize::MAX),
                spin: a.shm.shm_spin,
            })
        }
        EngineKind::Userspace => {
            let u = &a.userspace;
            O::Userspace(engine::userspace::UserspaceOptions {
                link: link_options(&u.tap, &u.tap_ip, u.tap_mtu, u.tap_buffer)?,
                backlog: u.tap_backlog,
                netns: u.netns.clone(),
            })
        }
    })
}

fn serve(a: ServeArgs, given: &dyn Fn(&str) -> bool) -> anyhow::Result<ExitCode> {
    let mut cfg = ServeConfig::new(a.engine, a.addr);
    cfg.engine = engine_options(&a, given)?;
    cfg.pin = a.pin.map(|c| c.0).unwrap_or_default();
    cfg.threads = a.threads;
    let (chunk_size, max_frame) = a.frame.sizes()?;
    cfg.session = SessionConfig {
        chunk_size,
        max_frame,
        max_spin: a.max_spin.0,
        ..SessionConfig::default()
    };
    match (a.protocol, &a.root) {
        (Protocol::Http, Some(root)) => {
            let files = iolab::sansio::static_files::StaticFiles::load(root, a.cache_limit.0)?;
            let s = files.summary();
            eprintln!(
                "http: {} file(s), {:.1} MiB in memory from {}{}",
                s.files,
                s.bytes as f64 / (1 << 20) as f64,
                root.display(),
                if s.skipped_links > 0 {
                    format!(" ({} link(s) leading outside it left out)", s.skipped_links)
                } else {
                    String::new()
                }
            );
            cfg.session.http = Some(std::sync::Arc::new(files));
        }
        (Protocol::Http, None) => anyhow::bail!("--protocol http needs --root DIR"),
        (Protocol::Frame, Some(_)) => {
            anyhow::bail!("--root serves files over HTTP: add --protocol http")
        }
        (Protocol::Frame, None) => {}
    }
    cfg.drain_timeout = a.drain_timeout.0;
    cfg.log_errors = !a.quiet;
    let budget = match a.memory_budget {
        Some(Size(0)) => anyhow::bail!("--memory-budget must be more than 0 bytes"),
        Some(Size(b)) => usize::try_from(b).unwrap_or(usize::MAX),
        None => MemoryBudget::default_limit(iolab::os::cpu::total_memory()),
    };
    cfg.session.budget = std::sync::Arc::new(MemoryBudget::new(budget));
    if a.request_timeout.0.is_zero() {
        anyhow::bail!(
            "--request-timeout must be more than 0 (a long one, such as 1h, leaves slow clients alone)"
        );
    }
    cfg.session.request_timeout = a.request_timeout.0;
    // Said once the server stands (a server that cannot start says only why).
    let limits = format!(
        "limits: memory budget {} for unfinished requests and unsent replies, beyond {} a \
         connection (--memory-budget); request timeout {} (--request-timeout)",
        Size(budget as u64),
        Size(FLOOR as u64),
        a.request_timeout
    );
    // Signals are routed to a thread of their own before any engine thread exists.
    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    let server = engine::start(cfg)?;
    eprintln!("{limits}");
    println!("listening on {}", server.endpoint);
    // Whoever reads stdout may be gone already; the server serves on regardless.
    let _ = std::io::stdout().flush();
    let shutdown = server.shutdown_handle();
    let handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("iolab: signal {sig}: finishing in-flight replies");
            shutdown.trigger();
        }
    });
    let summary = server.wait()?;
    handle.close();
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

/// A TAP link from the `--tap*` arguments `serve` and `load` both take.
fn link_options(
    tap: &str,
    tap_ip: &str,
    mtu: usize,
    buffer: Size,
) -> anyhow::Result<iolab::os::tap::LinkOptions> {
    let (ip, prefix) = iolab::os::tap::parse_cidr(tap_ip).map_err(anyhow::Error::msg)?;
    Ok(iolab::os::tap::LinkOptions {
        tap: tap.to_string(),
        ip,
        prefix,
        mtu,
        socket_buffer: usize::try_from(buffer.0).unwrap_or(usize::MAX),
    })
}

fn load(a: LoadArgs) -> anyhow::Result<ExitCode> {
    let addr = match (a.transport, a.addr, &a.shm) {
        (Transport::Tcp | Transport::Userspace, Some(addr), None) => addr,
        (Transport::Tcp | Transport::Userspace, _, Some(_)) => anyhow::bail!("--shm is for --transport shm"),
        (Transport::Shm, None, Some(_)) => SocketAddr::from(([0, 0, 0, 0], 0)),
        (Transport::Shm, Some(_), _) => {
            anyhow::bail!("--transport shm reaches the server by --shm NAME, not --addr")
        }
        _ => anyhow::bail!("--addr HOST:PORT (or --transport shm --shm NAME) says which server to load"),
    };
    // With --requests alone, the run ends when they are answered.
    let duration = a.duration.map_or(loadgen::UNBOUNDED, |d| d.0);
    let mut cfg = LoadConfig::new(addr, a.rate.unwrap_or(f64::NAN), duration);
    cfg.closed_loop = a.closed_loop.then_some(a.depth.unwrap_or(1));
    cfg.requests = a.requests;
    cfg.shm = a.shm.clone();
    cfg.netns = a.netns.clone();
    if a.transport == Transport::Userspace {
        if a.netns.is_none() {
            anyhow::bail!(
                "--transport userspace creates a TAP device: name the namespace it goes in with --netns NAME"
            );
        }
        cfg.userspace = Some(link_options(&a.tap, &a.tap_ip, a.tap_mtu, a.tap_buffer)?);
    }
    if a.protocol == Protocol::Http {
        let default = (SizeDist::Fixed(64), ReplyDist::Echo, WorkDist::None);
        if (a.workload.request_size, a.workload.reply, a.workload.work) != default {
            anyhow::bail!("--request-size, --reply and --work shape frame requests; an HTTP load asks for pages (--path, --paths)");
        }
        let host = a.host.clone().unwrap_or_else(|| addr.to_string());
        let pages = match &a.paths {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| anyhow::anyhow!("--paths {}: {e}", file.display()))?;
                loadgen::client::Pages::parse(&host, &text)
                    .map_err(|e| anyhow::anyhow!("--paths {}: {e}", file.display()))?
            }
            None => loadgen::client::Pages::new(&host, vec![(a.path.clone(), None)])
                .map_err(anyhow::Error::msg)?,
        };
        cfg.http = Some(std::sync::Arc::new(pages));
    } else if a.paths.is_some() || a.path != "/" || a.host.is_some() {
        anyhow::bail!("--path, --paths and --host are for --protocol http");
    }
    cfg.warmup = a.warmup.0;
    cfg.connections = a.connections;
    cfg.threads = a.threads;
    cfg.arrival = a.arrival;
    cfg.request_size = a.workload.request_size;
    cfg.reply = a.workload.reply;
    cfg.work = a.workload.work;
    cfg.seed = a.seed;
    cfg.max_in_flight = a.max_in_flight;
    cfg.connect = a.connect;
    cfg.driver = a.driver;
    cfg.idle_connections = a.idle_connections;
    cfg.drain_timeout = a.drain_timeout.0;
    cfg.pin = a.pin.map(|c| c.0).unwrap_or_default();
    if let Some(cpus) = a.watch_cpus {
        cfg.watch_cpus = cpus.0;
    }
    cfg.cpu_idle = a.idle.cpu_idle;
    (cfg.chunk_size, cfg.max_frame) = a.frame.sizes()?;
    cfg.requests_log = a.requests_log.is_some();
    cfg.start_at = a.start_at;
    cfg.agent = a.agent.clone();
    cfg.clock_offset = a.clock_offset;
    if let Some(name) = &a.agent {
        if name.is_empty() || name.chars().any(|c| c.is_control()) {
            anyhow::bail!("--agent NAME must be a non-empty name without control characters");
        }
    }
    // An agent's files for `iolab merge`: beside its JSON unless named.
    let agent_files = match (&a.agent, &a.json) {
        (Some(_), Some(json)) => Some((
            a.hdr_log.clone().unwrap_or_else(|| json.with_extension("hlog")),
            json.with_extension("sends"),
        )),
        _ => None,
    };
    let hdr_log = agent_files.as_ref().map(|f| f.0.clone()).or(a.hdr_log.clone());
    a.arrivals_check.apply(&mut cfg);
    let print_intervals = a.log_interval.is_some();
    cfg.log_interval = a
        .log_interval
        .map(|d| d.0)
        .or(hdr_log.as_ref().map(|_| Duration::from_secs(1)));
    cfg.validate().map_err(anyhow::Error::msg)?;
    if cfg.log_interval.is_some_and(|d| d < Duration::from_millis(1)) {
        anyhow::bail!("--log-interval must be at least 1ms");
    }

    // A terminal sees a start line and a live progress line; a pipe or --quiet sees neither.
    let live = !a.quiet && std::io::stdout().is_terminal();
    if live {
        println!("{}", start_line(&cfg, a.duration.is_some()));
    }
    let mut progress = |p: &loadgen::Progress| {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "{CLEAR_LINE}{}", p.describe());
        let _ = out.flush();
    };
    let mut report = loadgen::run_watched(
        cfg,
        &mut |line| {
            if print_intervals {
                if live {
                    print!("{CLEAR_LINE}");
                }
                println!("{}", line.describe());
            }
        },
        live.then_some(&mut progress as &mut dyn FnMut(&loadgen::Progress)),
    )?;
    if live {
        print!("{CLEAR_LINE}");
    }
    print!("{}", report.table());
    // Partial results are written even when the run failed: they are what was measured.
    if let Some((hlog, sends)) = &agent_files {
        report.write_sends(sends)?;
        // Named as the JSON's folder sees them, so that fetched results stay together.
        let named = |p: &std::path::Path, json: &std::path::Path| {
            let same_dir = p.parent() == json.parent();
            match p.file_name() {
                Some(f) if same_dir => f.to_string_lossy().into_owned(),
                _ => p.display().to_string(),
            }
        };
        let json = a.json.as_deref().unwrap_or(std::path::Path::new("."));
        report.agent_files = Some((named(hlog, json), named(sends, json)));
    }
    if let Some(p) = &a.json {
        report.write_json(p)?;
    }
    if let Some(p) = &a.interarrivals {
        report.write_interarrivals(p, usize::MAX)?;
    }
    if let Some(p) = &hdr_log {
        report.write_hdr_log(p)?;
    }
    if let Some(p) = &a.requests_log {
        report.write_requests_log(p)?;
    }
    match &report.error {
        Some(e) => {
            eprintln!("iolab: error: {e}");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Back to the start of the terminal's line, and the line erased: the progress line is
/// redrawn in place, and cleared before anything else is printed.
const CLEAR_LINE: &str = "\r\x1b[2K";

/// What `iolab load` is about to do, for a terminal: target, rate (or loop), connections,
/// and how long.
fn start_line(cfg: &LoadConfig, timed: bool) -> String {
    let what = match cfg.closed_loop {
        Some(depth) => format!("closed loop, {depth} outstanding per connection"),
        None => format!("{} rps offered", cfg.rate),
    };
    let until = match (timed, cfg.requests) {
        (true, Some(n)) => format!("{:.1}s or {n} requests", cfg.duration.as_secs_f64()),
        (false, Some(n)) => format!("{n} requests"),
        _ => format!("{:.1}s", cfg.duration.as_secs_f64()),
    };
    format!(
        "iolab load -> {}: {what} over {} connection(s), {until} after {:.1}s of warm-up",
        cfg.endpoint(),
        cfg.connections,
        cfg.warmup.as_secs_f64()
    )
}

fn run_demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let engines = if a.engines.is_empty() {
        demo::engines()
    } else {
        a.engines
    };
    let out = a.out.unwrap_or_else(demo::default_out);
    let mut cfg = demo::config(&engines, a.rates.0, out.clone())?;
    cfg.duration = a.duration.0;
    cfg.warmup = a.warmup.0;
    cfg.connections = a.connections;
    cfg.repeat = a.repeat;
    cfg.max_tries = demo::max_tries(a.repeat);
    cfg.budget = Some(a.budget.0);
    cfg.cpu_idle = a.idle.cpu_idle;
    let _awake = hold_cpus_for_sweep(&mut cfg);
    let ladder: Vec<String> = cfg.rates.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "iolab demo: {} engine(s), each point a fresh server process on CPU {:?}, the generator on CPU {:?};\n\
         64 B echo, {} connections, open-loop Poisson at {} rps, {} per point after {} warm-up;\n\
         each point measured until one verdict leads the other by {} (at most {} valid repeats),\n\
         in rounds that interleave the engines (at most {:.0} s of points; a point during which the machine stalled is measured again; idle CPUs {})",
        cfg.engines.len(),
        cfg.server_cpus,
        cfg.load_cpus,
        cfg.connections,
        ladder.join(", "),
        Dur(cfg.duration),
        Dur(cfg.warmup),
        iolab::lab::sweep::SETTLING_LEAD,
        cfg.repeat,
        a.budget.0.as_secs_f64(),
        cfg.cpu_idle.describe()
    );
    run_sweep(&cfg)?;
    let rows = iolab::lab::results::read_points(&out)?;
    println!("{}", iolab::lab::results::knee_table(&rows, cfg.slo));
    let written = iolab::lab::report::write(
        &out,
        &out.join("report.html"),
        &iolab::lab::report::ReportOptions::default(),
    )?;
    println!(
        "Latency runs from each request's scheduled send to its full reply (no coordinated omission).\n\
         report:   {}\nnotebook: {}\ndata:     {}\n\
         Next: `iolab sweep --help` for your own ladder and workload; `iolab serve` and `iolab load` to measure one engine by hand.",
        written.html.display(),
        written.notebook.display(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Holds the CPUs awake for a sweep that asks for it (until the guard drops), and sets what
/// is in force; where that is refused, says why in one line and goes on with them left to
/// the kernel.
fn hold_cpus_for_sweep(cfg: &mut iolab::lab::sweep::SweepConfig) -> Option<iolab::os::cpu::AwakeGuard> {
    let (guard, in_force, refused) = iolab::os::cpu::apply_cpu_idle(cfg.cpu_idle);
    if let Some(why) = refused {
        eprintln!("iolab: cannot hold the CPUs awake ({why}): idle CPUs may halt, and on a VM waking one can take longer than a reply");
    }
    cfg.cpu_idle = in_force;
    guard
}

/// Runs a sweep with a progress bar and one line per point.
fn run_sweep(cfg: &iolab::lab::sweep::SweepConfig) -> anyhow::Result<Vec<iolab::lab::results::Point>> {
    use iolab::lab::sweep::Progress;
    let per_point = cfg.duration + cfg.warmup;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} points, {elapsed} | {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Without a terminal the bar is hidden and would swallow its lines too; a log still
    // gets one line per point.
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    let points = iolab::lab::sweep::run(cfg, |p| match p {
        Progress::Round { round, points } => {
            bar.set_length(bar.position() + points as u64);
            say(format!("round {round}: up to {points} point(s)"));
        }
        Progress::Point {
            engine,
            rate,
            round,
            attempt,
        } => bar.set_message(format!(
            "round {round}: {engine} at {rate} rps, try {attempt} ({:.1}s)",
            per_point.as_secs_f64()
        )),
        Progress::Done(point) => {
            bar.inc(1);
            if point.beyond_reach {
                say(format!(
                    "  {:<12} {:>7.0} rps    {}",
                    point.engine, point.offered_rps, point.invalid_reason
                ));
                return;
            }
            // The reasons in short; points.csv and the report have them in full.
            let why: Vec<&str> = [
                ("machine stalled", "machine stalled"),
                ("send-lag", "send lag"),
                ("busy", "busy"),
                ("Poisson", "K-S"),
            ]
            .into_iter()
            .filter(|(key, _)| point.invalid_reason.contains(key))
            .map(|(_, short)| short)
            .collect();
            let mark = if !point.valid {
                format!("  INVALID ({}: {})", point.blame, why.join(", "))
            } else if point.over_despite_noise {
                format!(
                    "  {} despite the noise (its median waited past the SLO; noise cannot do that)",
                    if point.saturated { "saturated" } else { "over SLO" }
                )
            } else if point.saturated {
                "  saturated".to_string()
            } else if point.over_slo {
                "  over SLO".to_string()
            } else if point.met_despite_lag {
                "  within SLO despite the generator's lag (it only adds: latency is timed from the schedule)"
                    .to_string()
            } else if point.met_despite_stalls {
                format!(
                    "  within SLO despite the machine's stalls (longest {:.1}ms)",
                    point.stall_max_us / 1e3
                )
            } else {
                String::new()
            };
            say(format!(
                "  {:<12} {:>7.0} rps #{}  achieved {:>7.0}  p50 {:>8.1}us  p99 {:>8.1}us  lag99 {:>6.1}us  busy {:>3.0}%  stalls {:>5.1}ms{mark}",
                point.engine, point.offered_rps, point.attempt, point.achieved_rps, point.p50_us, point.p99_us,
                point.send_lag_p99_us, point.generator_busy * 100.0, point.stall_excess_us / 1e3
            ));
        }
        Progress::Skipped { engine, why } => say(format!("  {engine}: skipped, it did not start: {why}")),
        Progress::OutOfTime { unsettled } => say(format!(
            "  time budget spent: {unsettled} point(s) not settled; their knees say so"
        )),
    });
    bar.finish_and_clear();
    let points = points?;
    if let Some(spec) = &cfg.compare_loops {
        println!(
            "open vs closed loop: {}, open loop at {:.0} rps and then closed loop, {:.1} s each, the server stopped for {:.0} ms every {:.0} s",
            spec.join(" "),
            cfg.rates[0],
            (cfg.warmup + iolab::lab::results::LOOPS_DURATION).as_secs_f64(),
            iolab::lab::results::LOOPS_STALL.as_secs_f64() * 1e3,
            iolab::lab::results::LOOPS_STALL_EVERY.as_secs_f64()
        );
        // The lesson is extra: failing it costs the sweep nothing.
        match iolab::lab::sweep::compare_loops(cfg, spec)
            .map(|_| iolab::lab::results::LoopsComparison::read(&cfg.out, &spec.join(" ")))
        {
            Ok(Some(Ok(c))) => {
                for line in c.sentences() {
                    println!("  {line}");
                }
            }
            Ok(Some(Err(e))) | Err(e) => println!("  could not compare the loops: {e:#}"),
            Ok(None) => println!("  could not compare the loops: no results written"),
        }
    }
    if let Some(plan) = &cfg.profile {
        let engines = plan.engines.as_ref().map_or(cfg.engines.len(), |only| {
            cfg.engines.iter().filter(|e| only.contains(&e.join(" "))).count()
        });
        let cells = engines * plan.rates.as_ref().map_or(cfg.rates.len(), Vec::len);
        println!(
            "where the time goes: {cells} profile(s), two {:.1} s loads each on a fresh server (CPU from /proc, then perf stat and perf record)",
            plan.duration.as_secs_f64()
        );
        // Profiles are extra: failing them costs the sweep nothing.
        if let Err(e) = iolab::lab::sweep::profile_cells(cfg, plan, |line| println!("  {line}")) {
            println!("  could not profile: {e:#}");
        }
    }
    Ok(points)
}

fn sweep(a: SweepArgs) -> anyhow::Result<ExitCode> {
    use iolab::lab::sweep::SweepConfig;
    let engines: Vec<Vec<String>> = a
        .engines
        .split(',')
        .map(|e| e.split_whitespace().map(String::from).collect::<Vec<_>>())
        .filter(|e| !e.is_empty())
        .collect();
    for e in &engines {
        <EngineKind as clap::ValueEnum>::from_str(&e[0], false)
            .map_err(|_| anyhow::anyhow!("unknown engine '{}' in --engines", e[0]))?;
    }
    let cpus = iolab::os::cpu::num_cpus();
    let server_cpus = a.server_cpus.map_or_else(|| vec![0], |c| c.0);
    let load_cpus = a
        .load_cpus
        .map_or_else(|| if cpus > 1 { vec![1] } else { vec![0] }, |c| c.0);
    let out = a.out.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("results/sweep-{now}"))
    });
    let mut cfg = SweepConfig::new(engines, a.rates.0, out.clone())?;
    cfg.request_size = a.workload.request_size;
    cfg.reply = a.workload.reply;
    cfg.work = a.workload.work;
    cfg.connections = a.connections;
    cfg.duration = a.duration.0;
    cfg.warmup = a.warmup.0;
    cfg.slo = a.slo.0;
    cfg.max_send_lag = a.max_send_lag.0;
    cfg.min_ks_p = a.min_ks_p;
    cfg.max_ks_d = a.max_ks_d;
    cfg.ks_timescale = a.arrivals_check.ks_timescale.0;
    cfg.ks_resolution = a.arrivals_check.ks_resolution.0;
    cfg.max_generator_busy = a.max_generator_busy;
    cfg.measure_beyond_reach = a.measure_beyond_reach;
    cfg.generator_reach = a.generator_reach;
    cfg.repeat = a.repeat;
    cfg.max_tries = a.max_tries.unwrap_or(2 * a.repeat).max(a.repeat);
    if !(0.0..1.0).contains(&a.max_stall) {
        anyhow::bail!("--max-stall is a fraction of a point's measured time, from 0 to below 1");
    }
    cfg.max_stall_fraction = a.max_stall;
    cfg.quiet.timeout = a.quiet_timeout.0;
    cfg.budget = a.budget.map(|b| b.0);
    cfg.cpu_idle = a.idle.cpu_idle;
    cfg.server_cpus = server_cpus;
    cfg.load_cpus = load_cpus;
    cfg.seed = a.seed;
    cfg.server_addr = a.server_addr.to_string();
    if let Some(file) = &a.agents {
        if a.server_addr.ip().is_loopback() {
            anyhow::bail!(
                "--agents load from other machines, which cannot reach a server on {}: give --server-addr an address they reach",
                a.server_addr.ip()
            );
        }
        let text =
            std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("--agents {}: {e}", file.display()))?;
        let hosts = iolab::lab::agents::parse_agents(&text)
            .map_err(|e| anyhow::anyhow!("--agents {}: {e}", file.display()))?;
        let agents = iolab::lab::agents::Agents::connect(hosts, a.ssh_config.clone(), a.agent_iolab.clone())?;
        for (h, off) in agents.hosts.iter().zip(&agents.offsets) {
            eprintln!(
                "iolab: agent {} reached, its clock {:+.1} ms from ours",
                h.dest,
                off * 1e3
            );
        }
        cfg.agents = Some(agents);
    }
    if let Some(spec) = &a.compare_loops {
        let spec: Vec<String> = spec.split_whitespace().map(String::from).collect();
        match spec.first() {
            Some(name) if <EngineKind as clap::ValueEnum>::from_str(name, false).is_ok() => {}
            _ => anyhow::bail!(
                "--compare-loops takes an engine, as --engines does: not '{}'",
                spec.join(" ")
            ),
        }
        cfg.compare_loops = Some(spec);
    }
    if a.profile || a.profile_at.is_some() {
        let rates = match &a.profile_at {
            Some(list) => {
                Some(iolab::lab::sweep::parse_rates(list).map_err(|e| anyhow::anyhow!("--profile-at: {e}"))?)
            }
            None => None,
        };
        if a.profile_duration.0 < Duration::from_millis(100) {
            anyhow::bail!("--profile-duration must be at least 100ms");
        }
        cfg.profile = Some(iolab::lab::sweep::ProfilePlan {
            rates,
            duration: a.profile_duration.0,
            engines: None,
        });
    }
    let _awake = hold_cpus_for_sweep(&mut cfg);
    println!("iolab sweep: idle CPUs {}", cfg.cpu_idle.describe());
    let points = run_sweep(&cfg)?;
    let rows = iolab::lab::results::read_points(&out)?;
    println!("{}", iolab::lab::results::knee_table(&rows, cfg.slo));
    println!(
        "{} point(s) in {}; `iolab knee {}` prints the table again",
        points.len(),
        out.display(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn corpus(a: CorpusArgs) -> anyhow::Result<ExitCode> {
    let w = iolab::lab::corpus::write(&a.out, a.pages, a.seed)?;
    println!(
        "wrote {} pages, {:.1} MiB (median {:.1} KiB, p90 {:.1} KiB) into {}/pages, a 1 KiB page {}/one-kib.html,\n\
         and the list {}/paths.txt. Serve it: iolab serve --engine epoll --protocol http --root {}\n\
         Load it:  iolab load --protocol http --addr HOST:PORT --paths {}/paths.txt --rate 10000 --duration 10s",
        w.pages,
        w.bytes as f64 / (1 << 20) as f64,
        w.median as f64 / 1024.0,
        w.p90 as f64 / 1024.0,
        a.out.display(),
        a.out.display(),
        a.out.display(),
        a.out.display(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn merge(a: MergeArgs) -> anyhow::Result<ExitCode> {
    let runs = a
        .inputs
        .iter()
        .map(|p| loadgen::merge::AgentRun::read(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report = loadgen::merge::merge(&runs, a.max_skew.0)?;
    print!("{}", report.table());
    let s = report.summary();
    println!("  agents        {} merged:", runs.len());
    for r in s.agents.iter().flatten() {
        println!(
            "    {:<16} offered {:>10.1} rps  completed {:>9}  p99 {:>9.1}us  send lag p99 {:>7.1}us  K-S p={:.3}{}",
            r.name,
            r.offered_rps,
            r.completed,
            r.p99_us,
            r.send_lag_p99_us,
            r.ks_p_value,
            r.error.as_ref().map_or(String::new(), |e| format!("  error: {e}"))
        );
    }
    for w in s.merge_warnings.iter().flatten() {
        eprintln!("iolab: warning: {w}");
    }
    if let Some(p) = &a.json {
        report.write_json(p)?;
    }
    if let Some(p) = &a.hdr_log {
        report.write_hdr_log(p)?;
    }
    if let Some(p) = &a.interarrivals {
        report.write_interarrivals(p, usize::MAX)?;
    }
    Ok(if report.error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn knee(a: KneeArgs) -> anyhow::Result<ExitCode> {
    let rows = iolab::lab::results::read_points(&a.dir)?;
    if a.json {
        let json = iolab::lab::results::knee_json(&rows, a.slo.0);
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", iolab::lab::results::knee_table(&rows, a.slo.0));
    }
    Ok(ExitCode::SUCCESS)
}

fn report(a: ReportArgs) -> anyhow::Result<ExitCode> {
    let html = a.output.unwrap_or_else(|| a.dir.join("report.html"));
    let opts = iolab::lab::report::ReportOptions {
        slo_us: a.slo.map(|s| s.0.as_secs_f64() * 1e6),
        at_rate: a.at,
    };
    if let Some(pair) = &a.diff {
        for path in iolab::lab::profile::write_differences(&a.dir, pair)? {
            println!("differential flamegraph: {}", path.display());
        }
    }
    let w = iolab::lab::report::write(&a.dir, &html, &opts)?;
    println!(
        "report: {} ({} figures)\nnotebook: {}\nfigures: {}",
        w.html.display(),
        w.figures,
        w.notebook.display(),
        w.figures_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every id the refusal table names is one of `serve`'s options (clap panics on an
    /// unknown id), and every engine-specific option of `serve` is in the table.
    #[test]
    fn the_engine_option_table_names_serves_own_options() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("a serve command");
        let ids: Vec<&str> = serve.get_arguments().map(|a| a.get_id().as_str()).collect();
        for (id, engines) in ENGINE_OPTIONS {
            assert!(ids.contains(id), "{id} is not an option of serve");
            assert!(!engines.is_empty(), "{id} belongs to no engine");
        }
        for a in serve.get_arguments() {
            let heading = a.get_help_heading().unwrap_or("");
            if heading.contains("--engine") {
                let id = a.get_id().as_str();
                assert!(
                    ENGINE_OPTIONS.iter().any(|(i, _)| *i == id),
                    "{id} ({heading}) is missing from ENGINE_OPTIONS"
                );
            }
        }
    }
}
