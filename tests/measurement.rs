//! The generator's measurement claims, each put under a stall made on purpose.
//!
//! One `iolab load` run is frozen with SIGSTOP for 300 ms once its first interval has been
//! printed: every send scheduled inside the freeze goes out late. A generator that measured
//! from the actual send (coordinated omission) would not see the freeze at all; one that
//! rescheduled after a late send would have sent almost nothing inside it. A second run
//! freezes the server instead: an open-loop generator keeps sending on time into the stall.
//! The first run's logs (`--hdr-log`, `--requests-log`, `--interarrivals`) are read back
//! against its JSON summary, the HdrHistogram log by a second, independent reader too
//! (Python's `hdrhistogram` package).

mod common;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// How long the load is frozen. Every bound below is a fraction of it, not a timing of the
/// machine: the freeze lasts at least this long whatever the machine does.
const FREEZE: Duration = Duration::from_millis(300);
const RATE: f64 = 1000.0;

struct Frozen {
    dir: PathBuf,
    summary: serde_json::Value,
}

impl Frozen {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Which process the freeze stops.
#[derive(Clone, Copy, PartialEq)]
enum Freeze {
    /// The load generator: its sends go late.
    Generator,
    /// The server: replies stop, while an open-loop generator keeps sending on time.
    Server,
    /// The server, under a closed loop: its clients stop sending while it is stopped.
    ServerClosedLoop,
}

/// The run with the generator frozen, shared by the tests here.
fn frozen() -> &'static Frozen {
    static RUN: OnceLock<Frozen> = OnceLock::new();
    RUN.get_or_init(|| run_with(Freeze::Generator))
}

/// The run with the server frozen.
fn server_frozen() -> &'static Frozen {
    static RUN: OnceLock<Frozen> = OnceLock::new();
    RUN.get_or_init(|| run_with(Freeze::Server))
}

/// The server frozen under a closed loop: 8 connections, one request out each, as wrk runs.
fn server_frozen_closed() -> &'static Frozen {
    static RUN: OnceLock<Frozen> = OnceLock::new();
    RUN.get_or_init(|| run_with(Freeze::ServerClosedLoop))
}

fn stop_for(pid: u32, how_long: Duration) {
    let pid = pid as libc::pid_t;
    // SAFETY: kill has no memory preconditions; `pid` is our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    std::thread::sleep(how_long); // the stall itself, not a wait for anything
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
}

fn run_with(freeze: Freeze) -> Frozen {
    let tag = match freeze {
        Freeze::Generator => "load",
        Freeze::Server => "server",
        Freeze::ServerClosedLoop => "closed",
    };
    let rate = RATE.to_string();
    let shape: &[&str] = match freeze {
        Freeze::ServerClosedLoop => &["--closed-loop", "--depth", "1", "--connections", "8"],
        _ => &["--rate", &rate, "--connections", "4"],
    };
    let dir = common::scratch_dir(&format!("frozen-{tag}"));
    let (server, addr, server_out) = common::spawn_server(&["--engine".into(), "epoll".into()]);
    let mut load = Command::new(env!("CARGO_BIN_EXE_iolab"))
        .arg("load")
        .args(["--addr", &addr.to_string()])
        .args(shape)
        .args(["--duration", "2s", "--warmup", "200ms"])
        .args(["--log-interval", "100ms", "--watch-cpus", "none"])
        .arg("--json")
        .arg(dir.join("summary.json"))
        .arg("--hdr-log")
        .arg(dir.join("latency.hlog"))
        .arg("--requests-log")
        .arg(dir.join("requests.csv"))
        .arg("--interarrivals")
        .arg(dir.join("gaps.txt"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start iolab load");
    let mut lines = std::io::BufReader::new(load.stdout.take().unwrap()).lines();
    // The first interval line: connected, past the warm-up, sending on schedule.
    let first = lines.by_ref().map_while(Result::ok).find(|l| l.starts_with('['));
    assert!(first.is_some(), "the load printed no interval line");
    match freeze {
        Freeze::Generator => stop_for(load.id(), FREEZE),
        Freeze::Server | Freeze::ServerClosedLoop => stop_for(server.id(), FREEZE),
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = load.wait_with_output().expect("the load ends");
    assert!(
        out.status.success(),
        "{}\n{}",
        rest.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = common::terminate(server, server_out);
    assert!(status.success());
    let summary = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    Frozen { dir, summary }
}

fn us(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Latency runs from the scheduled send: the freeze is in it, whole, while the latency from
/// the actual send (what a closed-loop tool reports) hides it.
#[test]
fn latency_counts_from_the_scheduled_send_so_a_frozen_generator_shows() {
    let run = frozen();
    let s = &run.summary;
    let freeze_us = FREEZE.as_secs_f64() * 1e6;
    assert_eq!(s["errors"], 0, "{s}");
    // About a seventh of the run was scheduled inside the freeze, so the p99 lands in it.
    let p99 = us(&s["latency_us"]["p99"]);
    assert!(p99 >= 0.5 * freeze_us, "corrected p99 {p99} us misses the freeze");
    assert!(us(&s["latency_us"]["max"]) >= 0.8 * freeze_us, "{s}");
    assert!(us(&s["send_lag_us"]["max"]) >= 0.8 * freeze_us, "{s}");
    let uncorrected = us(&s["latency_uncorrected_us"]["p99"]);
    assert!(
        2.0 * uncorrected < p99,
        "from the actual send the freeze is hidden: uncorrected p99 {uncorrected} us, corrected {p99} us"
    );
}

/// A stalled server, an open-loop generator: sends keep to their schedule through the stall
/// (no waiting for replies, no send skipped), and the stall is in the latency of every request
/// sent into it.
#[test]
fn a_stalled_server_does_not_slow_the_sends() {
    let run = server_frozen();
    let s = &run.summary;
    let freeze_us = FREEZE.as_secs_f64() * 1e6;
    assert_eq!(s["errors"], 0, "{s}");
    assert!(us(&s["latency_us"]["max"]) >= 0.8 * freeze_us, "{s}");
    assert!(us(&s["latency_uncorrected_us"]["max"]) >= 0.8 * freeze_us, "{s}");
    let rows = requests(run);
    // The requests sent into the stall: replies at least a third of it late.
    let stalled: Vec<&Request> = rows
        .iter()
        .filter(|r| r.done_ns - r.sent_ns >= FREEZE.as_nanos() as u64 / 3)
        .collect();
    assert!(
        stalled.len() >= 50,
        "only {} requests met the stall",
        stalled.len()
    );
    // Each of them was sent when scheduled: the generator did not wait for the server. (The
    // bound is a tenth of the stall, far above the generator's own lag on any machine that
    // can run the stall at all.)
    let worst = stalled.iter().map(|r| r.sent_ns - r.scheduled_ns).max().unwrap();
    assert!(
        worst < FREEZE.as_nanos() as u64 / 10,
        "a send into the stall was {} us late",
        worst / 1000
    );
    assert_eq!(s["error_kinds"]["overflow"], 0, "{s}");
    // About 300 of its 2,000 requests met the stall: the p99 is in it.
    assert!(us(&s["latency_us"]["p99"]) >= 0.5 * freeze_us, "{s}");
}

/// The lesson: the same stall under a closed loop (8 connections, one request out each)
/// leaves the p99 alone, because only 8 requests met it; the open loop's p99 above is in it.
#[test]
fn a_closed_loop_hides_the_stall_the_open_loop_shows() {
    let closed = &server_frozen_closed().summary;
    let open = &server_frozen().summary;
    let freeze_us = FREEZE.as_secs_f64() * 1e6;
    assert_eq!(
        (closed["mode"].as_str(), closed["errors"].as_u64()),
        (Some("closed"), Some(0)),
        "{closed}"
    );
    assert_eq!(closed["offered_rps"], serde_json::Value::Null);
    // The stall is there, in the few requests that met it...
    assert!(us(&closed["latency_us"]["max"]) >= 0.8 * freeze_us, "{closed}");
    // ... and nowhere near the p99, which the open loop's is.
    let (closed_p99, open_p99) = (us(&closed["latency_us"]["p99"]), us(&open["latency_us"]["p99"]));
    assert!(open_p99 >= 0.5 * freeze_us, "open p99 {open_p99} us");
    assert!(closed_p99 < 0.5 * freeze_us, "closed p99 {closed_p99} us");
    assert!(closed["achieved_rps"].as_f64().unwrap() > 0.0);
}

#[derive(Debug, serde::Deserialize)]
struct Request {
    scheduled_ns: u64,
    sent_ns: u64,
    done_ns: u64,
    ok: bool,
}

fn requests(run: &Frozen) -> Vec<Request> {
    csv::Reader::from_path(run.file("requests.csv"))
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .expect("the requests log reads back")
}

/// A late send never shifts the ones after it: the sends scheduled inside the freeze all stay
/// scheduled there (and go late), rather than one late send per connection pushing every
/// later one past it.
#[test]
fn a_late_send_never_shifts_the_ones_after_it() {
    let run = frozen();
    let rows = requests(run);
    assert_eq!(rows.len() as u64, run.summary["sent"].as_u64().unwrap());
    for r in &rows {
        assert!(
            r.ok && r.scheduled_ns <= r.sent_ns && r.sent_ns <= r.done_ns,
            "{r:?}"
        );
    }
    let late = rows
        .iter()
        .filter(|r| r.sent_ns - r.scheduled_ns >= FREEZE.as_nanos() as u64 / 3)
        .count();
    // Poisson at 1000 rps: about 200 sends fall in the freeze's first two thirds. A shifting
    // schedule leaves at most one per connection (4) there.
    assert!(late >= 50, "only {late} sends were held up by the freeze");
    // And the schedule still spans the measured window at the offered rate.
    let measured: Vec<&Request> = rows.iter().filter(|r| r.scheduled_ns >= 200_000_000).collect();
    let span_s = (measured.last().unwrap().scheduled_ns - measured[0].scheduled_ns) as f64 / 1e9;
    assert!(span_s > 1.9, "the schedule ended early: {span_s} s");
    let rate = measured.len() as f64 / 2.0;
    assert!((rate - RATE).abs() < 0.15 * RATE, "scheduled {rate} rps");
}

/// `--interarrivals` holds every gap between actual sends, the freeze among them.
#[test]
fn the_interarrivals_file_holds_every_gap_and_the_freeze() {
    let run = frozen();
    let gaps: Vec<f64> = std::fs::read_to_string(run.file("gaps.txt"))
        .unwrap()
        .lines()
        .map(|l| l.parse().expect("a gap in microseconds"))
        .collect();
    assert_eq!(gaps.len() as u64 + 1, run.summary["sent"].as_u64().unwrap());
    assert!(gaps.iter().all(|g| *g >= 0.0));
    let longest = gaps.iter().copied().fold(0.0, f64::max);
    assert!(
        longest >= 0.8 * FREEZE.as_secs_f64() * 1e6,
        "longest gap {longest} us"
    );
    // The gaps add up to the span of the actual sends.
    let rows = requests(run);
    let first = rows.iter().map(|r| r.sent_ns).min().unwrap();
    let last = rows.iter().map(|r| r.sent_ns).max().unwrap();
    let total_us: f64 = gaps.iter().sum();
    assert!(
        (total_us - (last - first) as f64 / 1e3).abs() < 1.0 + gaps.len() as f64 * 0.001,
        "{total_us} us of gaps for {} us of sends",
        (last - first) / 1000
    );
}

/// Every recorded bucket of a histogram: (highest equivalent value, count).
fn buckets(h: &hdrhistogram::Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// The HdrHistogram log is the summary's histogram, interval by interval: merged back, its
/// count and p99 are the summary's.
#[test]
fn the_hdr_log_reads_back_as_the_summary() {
    let run = frozen();
    let merged = iolab::lab::report::read_hlog(&run.file("latency.hlog")).expect("the log reads back");
    assert_eq!(merged.len(), run.summary["completed"].as_u64().unwrap());
    let p99_us = merged.value_at_quantile(0.99) as f64 / 1e3;
    assert!(
        (p99_us - us(&run.summary["latency_us"]["p99"])).abs() < 1e-3,
        "log p99 {p99_us} us, summary {}",
        run.summary["latency_us"]["p99"]
    );
    assert_eq!(
        merged.max() as f64 / 1e3,
        us(&run.summary["latency_us"]["max"]).max(0.0)
    );

    // A reader no one here wrote must see the same buckets: in the untagged intervals added
    // up, and in the whole window's histogram tagged "latency" (what `iolab merge` reads).
    let script = "import sys\n\
                  from hdrh.histogram import HdrHistogram\n\
                  from hdrh.log import HistogramLogReader\n\
                  new = lambda: HdrHistogram(1, 3600 * 10**9, 3)\n\
                  reader, total, whole, n = HistogramLogReader(sys.argv[1], new()), new(), new(), 0\n\
                  while True:\n\
                  \x20   h = reader.get_next_interval_histogram()\n\
                  \x20   if h is None: break\n\
                  \x20   tag = h.get_tag()\n\
                  \x20   if tag == 'latency': whole.add(h)\n\
                  \x20   if not tag: total.add(h); n += 1\n\
                  print('intervals', n)\n\
                  same = [(v.value_iterated_to, v.count_at_value_iterated_to) for v in total.get_recorded_iterator()] \\\n\
                  \x20   == [(v.value_iterated_to, v.count_at_value_iterated_to) for v in whole.get_recorded_iterator()]\n\
                  print('whole', 'same' if same else 'differs')\n\
                  for v in total.get_recorded_iterator():\n\
                  \x20   print(v.value_iterated_to, v.count_at_value_iterated_to)\n";
    let out = match Command::new("python3")
        .args(["-c", script])
        .arg(run.file("latency.hlog"))
        .output()
    {
        Ok(out) => out,
        Err(_) => return common::skip("python3 is not installed here"),
    };
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No module named 'hdrh'") {
        return common::skip("Python's hdrhistogram package is not installed here");
    }
    assert!(out.status.success(), "python's reader failed: {err}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let intervals: usize = lines
        .next()
        .unwrap()
        .trim_start_matches("intervals ")
        .parse()
        .unwrap();
    assert!(intervals >= 20, "2 s in 100 ms intervals: {intervals}");
    assert_eq!(
        lines.next(),
        Some("whole same"),
        "the tagged whole-window histogram is the intervals' sum"
    );
    let theirs: Vec<(u64, u64)> = lines
        .map(|l| {
            let (v, c) = l.split_once(' ').unwrap();
            (v.parse().unwrap(), c.parse().unwrap())
        })
        .collect();
    assert_eq!(theirs, buckets(&merged), "the two readers disagree");
}
