//! The command line as a user meets it: the demo, the help, and the refusals.

mod common;

use std::process::Command;
use std::sync::Mutex;

/// Tests that measure (sweeps, the demo, a CPU hog) take the machine one at a time: two of
/// them at once on two cores would disturb each other's points.
static MACHINE: Mutex<()> = Mutex::new(());

fn machine() -> std::sync::MutexGuard<'static, ()> {
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}

fn iolab(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iolab"))
        .args(args)
        .output()
        .expect("run iolab");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The demo is a short sweep of every engine and a report; here with a tiny ladder.
#[test]
fn demo_sweeps_every_engine_and_writes_the_report() {
    let _machine = machine();
    let dir = std::env::temp_dir().join(format!("iolab-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_string_lossy().into_owned();
    let (ok, out, err) = iolab(&[
        "demo",
        "--rates",
        "300,600",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--connections",
        "4",
        "--repeat",
        "1",
        "--out",
        &dir_arg,
    ]);
    assert!(ok, "demo failed: {err}\n{out}");
    let rows = iolab::lab::results::read_points(&dir).expect("the demo leaves points.csv");
    for engine in iolab::engine::EngineKind::KERNEL_TCP.iter().map(|e| e.name()) {
        let mine: Vec<_> = rows.iter().filter(|r| r.engine == engine).collect();
        assert!(!mine.is_empty(), "no points for {engine}:\n{out}");
        for r in &mine {
            let summary: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join(&r.summary)).unwrap()).unwrap();
            assert_eq!(summary["errors"], 0, "{r:?}");
        }
    }
    // The knee table it prints is the one points.csv gives, engine by engine: the rows after
    // its heading, not any progress line that names an engine and a rate.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let knees = iolab::lab::results::knees(&rows, meta["slo_us"].as_f64().unwrap());
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("highest rate with p99"))
        .skip(1)
        .take(knees.len())
        .collect();
    assert_eq!(table.len(), knees.len(), "no knee table:\n{out}");
    for (line, k) in table.iter().zip(&knees) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], k.engine, "{line}");
        let rate = match (k.rate, k.lower_bound) {
            (Some(r), true) => format!(">= {r:.0} rps"),
            (Some(r), false) => format!("{r:.0} rps"),
            (None, true) => "not measured".into(),
            (None, false) => "none rps".into(),
        };
        assert_eq!(
            fields[1..].join(" ").get(..rate.len()),
            Some(rate.as_str()),
            "{line}"
        );
    }
    for f in ["report.html", "report.ipynb", "figures/latency-cdf.svg"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    // Where the time goes: five engines profiled at the ladder's rate nearest 40k, or the
    // reason there are none (a failure under CI, where .ci/run installs perf).
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(
        html.contains("<h2>Where the time goes</h2>"),
        "no profile section"
    );
    let profiles = iolab::lab::results::read_profiles(&dir).unwrap();
    match &profiles.unavailable {
        Some(why) => common::skip(&format!("the demo's profiles: {why}")),
        None => {
            let profiled: Vec<&str> = profiles.profiles.iter().map(|p| p.engine.as_str()).collect();
            let mut want: Vec<&str> = iolab::lab::demo::PROFILED.iter().map(|e| e.name()).collect();
            want.sort_unstable();
            assert_eq!(profiled, want, "{out}");
            assert!(profiles
                .profiles
                .iter()
                .all(|p| p.offered_rps == 600.0 && !p.flamegraph.is_empty()));
        }
    }
    assert!(
        out.contains(&format!("report:   {}", dir.join("report.html").display())),
        "the demo says where its report is:\n{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_engine_lists_the_real_ones() {
    let (ok, _, err) = iolab(&["serve", "--engine", "warp-drive"]);
    assert!(!ok);
    for engine in iolab::engine::EngineKind::ALL {
        assert!(err.contains(engine.name()), "{err}");
    }
}

#[test]
fn bad_spin_and_watch_lists_are_refused_saying_what_is_taken() {
    let (ok, _, err) = iolab(&["serve", "--engine", "shm", "--shm", "x", "--shm-spin", "soon"]);
    assert!(!ok);
    assert!(err.contains("'auto'"), "{err}");
    let (ok, _, err) = iolab(&[
        "load",
        "--addr",
        "127.0.0.1:9",
        "--rate",
        "1",
        "--duration",
        "1s",
        "--watch-cpus",
        "all",
    ]);
    assert!(!ok);
    assert!(err.contains("'none'"), "{err}");
}

/// A load of a port nothing listens on, with `extra` options: its exit, stderr and the JSON
/// summary it still writes.
fn load_against_nothing(name: &str, extra: &[&str]) -> (bool, String, serde_json::Value) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let json = std::env::temp_dir().join(format!("iolab-{name}-{}.json", std::process::id()));
    let port = port.to_string();
    let json_arg = json.to_string_lossy().into_owned();
    let mut args = vec![
        "load",
        "--addr",
        &port,
        "--rate",
        "10",
        "--duration",
        "1s",
        "--json",
        &json_arg,
    ];
    args.extend_from_slice(extra);
    let (ok, _, err) = iolab(&args);
    let summary = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    (ok, err, summary)
}

/// With no canaries the summary still has its machine_stalls, empty, naming no CPU.
#[test]
fn load_watch_cpus_none_runs_no_canaries() {
    let (ok, _, summary) = load_against_nothing("nowatch", &["--watch-cpus", "none"]);
    assert!(!ok, "nothing listens there");
    assert_eq!(summary["machine_stalls"]["cpus"], serde_json::json!([]));
}

#[test]
fn load_against_nothing_fails_in_one_line_and_still_writes_json() {
    let (ok, err, summary) = load_against_nothing("cli", &[]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert!(summary["error"].as_str().unwrap().contains("refused"));
    for key in [
        "offered_rps",
        "achieved_rps",
        "duration_s",
        "sent",
        "completed",
        "errors",
        "latency_us",
        "latency_uncorrected_us",
        "send_lag_us",
        "interarrival",
    ] {
        assert!(summary.get(key).is_some(), "missing {key}");
    }
}

#[test]
fn impossible_options_exit_with_a_reason() {
    let (ok, _, err) = iolab(&["load", "--addr", "127.0.0.1:9", "--rate", "0", "--duration", "1s"]);
    assert!(!ok);
    assert!(err.contains("--rate"), "{err}");
    let (ok, _, err) = iolab(&[
        "load",
        "--addr",
        "127.0.0.1:9",
        "--rate",
        "5",
        "--duration",
        "soon",
    ]);
    assert!(!ok);
    assert!(err.contains("duration"), "{err}");
}

/// A tiny sweep writes a complete results folder, and `knee` reads it back.
#[test]
fn sweep_writes_a_results_folder_that_knee_reads() {
    let _machine = machine();
    let dir = std::env::temp_dir().join(format!("iolab-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iolab"))
        .args([
            "sweep",
            "--engines",
            "epoll,uring --register-files",
            "--rates",
            "200..400:2",
        ])
        .args([
            "--duration",
            "0.4s",
            "--warmup",
            "0.1s",
            "--connections",
            "4",
            // An SLO no run misses: the test checks the folder and the schedule.
            "--slo",
            "60s",
        ])
        .args(common::CHECKS_NOISE_CANNOT_FAIL)
        .args(["--repeat", "2", "--out"])
        .arg(&dir)
        .output()
        .expect("run iolab sweep");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("highest rate with p99"), "{stdout}");
    for f in [
        "meta.json",
        "points.csv",
        "epoll.server.log",
        "uring___register_files.server.log",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["engines"][1], "uring --register-files");
    assert!(meta["kernel"].as_str().is_some_and(|k| !k.is_empty()));
    let rows = iolab::lab::results::read_points(&dir).expect("points.csv reads back");
    // Round 1 measures every engine at every rate, rates rising, engines in order; a
    // point the test machine made invalid is measured again in a later round.
    let first_round: Vec<(String, u64, u32)> = rows
        .iter()
        .filter(|r| r.round == 1)
        .map(|r| (r.engine.clone(), r.offered_rps as u64, r.attempt))
        .collect();
    let e = |n: &str, rate: u64| (n.to_string(), rate, 1);
    assert_eq!(
        first_round,
        vec![
            e("epoll", 200),
            e("uring --register-files", 200),
            e("epoll", 400),
            e("uring --register-files", 400)
        ],
        "{rows:?}"
    );
    // Round 2 starts with the other engine: the order rotates.
    let second: Vec<&str> = rows
        .iter()
        .filter(|r| r.round == 2)
        .map(|r| r.engine.as_str())
        .collect();
    assert_eq!(second.first(), Some(&"uring --register-files"), "{rows:?}");
    // --repeat 2: every cell has two valid repeats, tries numbered 1, 2, ... in order.
    for engine in ["epoll", "uring --register-files"] {
        for rate in [200.0, 400.0] {
            let mine: Vec<_> = rows
                .iter()
                .filter(|r| r.engine == engine && r.offered_rps == rate)
                .collect();
            assert_eq!(
                mine.iter().filter(|r| r.valid).count(),
                2,
                "{engine} {rate}: {mine:?}"
            );
            let tries: Vec<u32> = mine.iter().map(|r| r.attempt).collect();
            assert_eq!(tries, (1..=mine.len() as u32).collect::<Vec<_>>());
        }
    }
    for row in &rows {
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(&row.summary)).unwrap()).unwrap();
        assert_eq!(summary["errors"], 0, "{row:?}");
        assert!(dir.join(&row.hdr_log).is_file());
        let gaps = std::fs::read_to_string(dir.join(&row.gaps)).unwrap();
        assert!(
            gaps.lines().count() > 10 && gaps.lines().all(|l| l.parse::<f64>().is_ok()),
            "{row:?}"
        );
        // The CSV's intervals are the summary's, and bracket the percentile.
        let ci = &summary["latency_us"]["p99_ci"];
        assert_eq!(ci[0].as_f64(), Some(row.p99_ci_low_us), "{row:?}");
        // (An upper end too few samples can bound is NaN, read as unbounded.)
        assert!(
            row.p99_ci_low_us <= row.p99_us
                && (row.p99_ci_high_us.is_nan() || row.p99_us <= row.p99_ci_high_us),
            "{row:?}"
        );
        assert_eq!(summary["mode"], "open");
    }
    let dir_arg = dir.to_string_lossy().into_owned();
    let (ok, knee_json, err) = iolab(&["knee", "--json", "--slo", "60s", &dir_arg]);
    assert!(ok, "{err}");
    let k: serde_json::Value = serde_json::from_str(&knee_json).expect("knee --json is JSON");
    assert_eq!(k["engines"].as_array().map(Vec::len), Some(2), "{k}");
    for row in k["engines"].as_array().unwrap() {
        // Within a 60 s SLO everything is good: the knee is the top of the ladder, and that
        // is a lower bound.
        assert_eq!(row["knee_rps"], 400.0, "{row}");
        assert_eq!(row["lower_bound"], true, "{row}");
        assert!(row["p99_us"]["median"].as_f64().is_some_and(|p| p > 0.0), "{row}");
        assert_eq!(
            row["indistinguishable_from"].as_array().map(Vec::len),
            Some(1),
            "{row}"
        );
    }
    let (ok, text, err) = iolab(&["knee", &dir_arg]);
    assert!(ok, "{err}");
    assert!(
        text.contains("epoll") && text.contains("uring --register-files"),
        "{text}"
    );
    // tests/report.rs covers `iolab report` on such a folder.
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--pin` takes a CPU list (it once panicked in the argument parser).
#[test]
fn serve_accepts_a_cpu_list() {
    let (child, _, stdout) =
        common::spawn_server(&["--engine".into(), "epoll".into(), "--pin".into(), "0".into()]);
    let (status, summary) = common::terminate(child, stdout);
    assert!(status.success());
    assert!(summary.contains("summary: engine=epoll"), "{summary}");
}

/// A point over the SLO is measured again before the engine's walk stops there: two of
/// three repeats over settle it, and nothing above it runs. An SLO no run can meet makes every
/// point over it, while the server keeps up (not saturated).
#[test]
fn a_point_over_the_slo_is_measured_again_before_the_walk_stops() {
    let _machine = machine();
    let dir = std::env::temp_dir().join(format!("iolab-retry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_string_lossy().into_owned();
    let mut args = vec![
        "sweep",
        "--engines",
        "epoll",
        "--rates",
        "300,600",
        "--duration",
        "0.3s",
        "--warmup",
        "0.1s",
        "--connections",
        "2",
        "--slo",
        "1ns",
    ];
    // Nothing but a stall longer than most of the run could invalidate a point here.
    args.extend(common::CHECKS_NOISE_CANNOT_FAIL);
    args.extend(["--out", &dir_arg]);
    let (ok, out, err) = iolab(&args);
    assert!(ok, "{err}");
    let rows = iolab::lab::results::read_points(&dir).unwrap();
    let tries: Vec<(f64, u32, u32, bool, bool)> = rows
        .iter()
        .map(|r| (r.offered_rps, r.attempt, r.round, r.over_slo, r.saturated))
        .collect();
    assert_eq!(
        tries,
        vec![(300.0, 1, 1, true, false), (300.0, 2, 2, true, false)],
        "{out}"
    );
    assert!(dir.join("points/epoll-300-t2.hlog").is_file());
    assert!(out.contains("over SLO"), "{out}");
    assert!(
        out.contains("none rps") && out.contains("p99 over 0 us at 300 rps"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// CPU contention on the load core while a point runs makes that point invalid (the
/// generator could not keep its schedule), never "saturated", and the point is measured
/// again in a later round. The contention is a busy process at the highest nice level pinned
/// to the load CPU, ended as soon as the sweep reports its first point.
#[test]
fn contention_on_the_load_core_invalidates_a_point_that_is_then_measured_again() {
    let _machine = machine();
    if iolab::loadgen::canary::online_cpus().len() < 2 {
        return common::skip("one CPU: the test needs the server and the load apart");
    }
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("iolab-contention-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut hog = Command::new("taskset")
        .args(["-c", "1", "nice", "-n", "-20", "sh", "-c", "while :; do :; done"])
        .spawn()
        .expect("start a CPU hog");
    let mut sweep = Command::new(env!("CARGO_BIN_EXE_iolab"))
        .args(["sweep", "--engines", "epoll", "--rates", "5000", "--repeat", "2"])
        .args(["--duration", "0.5s", "--warmup", "0.2s", "--connections", "8"])
        .args([
            "--server-cpus",
            "0",
            "--load-cpus",
            "1",
            "--quiet-timeout",
            "200ms",
            "--out",
        ])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run iolab sweep");
    let mut lines = std::io::BufReader::new(sweep.stdout.take().unwrap()).lines();
    let mut out = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap_or_default();
        out += &line;
        out.push('\n');
        if line.contains("rps #1") {
            break;
        }
    }
    let _ = hog.kill();
    let _ = hog.wait();
    for line in lines {
        out += &line.unwrap_or_default();
        out.push('\n');
    }
    assert!(sweep.wait().unwrap().success(), "{out}");
    let rows = iolab::lab::results::read_points(&dir).unwrap();
    let first = &rows[0];
    assert!(!first.valid, "the disturbed point is invalid: {first:?}\n{out}");
    assert!(!first.saturated, "and not the server's fault: {first:?}");
    assert!(
        first.invalid_reason.contains("send-lag") || first.invalid_reason.contains("busy"),
        "{first:?}"
    );
    // Measured again, in a later round (whether the machine lets that one be valid is its
    // own business; with a hog gone, the generator has its core back).
    assert!(rows.len() >= 2, "measured again after it: {rows:?}\n{out}");
    assert!(rows[1].round > first.round, "in a later round: {rows:?}");
    assert!(
        rows[1..]
            .iter()
            .all(|r| !r.invalid_reason.contains("load generator was the bottleneck")),
        "without the hog the generator keeps its schedule: {rows:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `iolab sweep ARGS --out DIR` into a fresh folder named after `name`, then `iolab knee
/// --json` on it; returns the points, the first engine's knee and the sweep's output, the
/// folder removed.
fn sweep_and_knee(name: &str, args: &[&str]) -> (Vec<iolab::lab::results::Point>, serde_json::Value, String) {
    let dir = std::env::temp_dir().join(format!("iolab-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_string_lossy().into_owned();
    let mut all = vec!["sweep"];
    all.extend_from_slice(args);
    all.extend(["--out", &dir_arg]);
    let (ok, out, err) = iolab(&all);
    assert!(ok, "{err}\n{out}");
    let (ok, knee, err) = iolab(&["knee", "--json", &dir_arg]);
    assert!(ok, "{err}");
    let k: serde_json::Value = serde_json::from_str(&knee).expect("knee --json is JSON");
    let rows = iolab::lab::results::read_points(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (rows, k["engines"][0].clone(), out)
}

/// A rung the generator cannot reach, judged from its cost one rung below, is not measured:
/// it leaves a row that says why, and the knee below it is a lower bound. Made on purpose
/// with a reach (1% busy) that the generator at 1,000 rps, scaled to twice the rate, cannot
/// keep;
/// `--measure-beyond-reach` measures it all the same.
#[test]
fn a_rung_beyond_the_generators_reach_is_not_measured_unless_asked() {
    let _machine = machine();
    let sweep = |name: &str, extra: &[&str]| {
        let common = [
            "--engines",
            "epoll",
            "--rates",
            "1000,2000",
            "--repeat",
            "1",
            "--duration",
            "0.3s",
            "--warmup",
            "0.1s",
            "--connections",
            "2",
            "--generator-reach",
            "0.01",
            // Nothing else may stop the walk at the first rung, however busy the machine:
            // no SLO to miss, no lag or arrivals check to fail.
            "--slo",
            "10s",
            "--max-send-lag",
            "10s",
            "--max-ks-d",
            "1",
        ];
        sweep_and_knee(name, &[&common[..], extra].concat())
    };
    let (rows, knee, out) = sweep("beyond-reach", &[]);
    let at = |rows: &[iolab::lab::results::Point], rate: f64| {
        rows.iter()
            .filter(|r| r.offered_rps == rate)
            .cloned()
            .collect::<Vec<_>>()
    };
    let above = at(&rows, 2_000.0);
    assert_eq!(above.len(), 1, "one row, not measured: {rows:?}\n{out}");
    assert!(
        above[0].beyond_reach && !above[0].valid && above[0].hdr_log.is_empty(),
        "{above:?}"
    );
    assert!(
        above[0]
            .invalid_reason
            .contains("beyond the generator's reach over tcp"),
        "{above:?}"
    );
    assert!(
        out.contains("not measured: beyond the generator's reach"),
        "{out}"
    );
    assert_eq!(knee["knee_rps"], 1000.0, "{knee}");
    assert_eq!(knee["lower_bound"], true, "{knee}");
    assert!(
        knee["why"]
            .as_str()
            .unwrap_or("")
            .contains("2000 rps is beyond the generator's reach"),
        "{knee}"
    );

    let (rows, _, out) = sweep("beyond-reach-measured", &["--measure-beyond-reach"]);
    let above = at(&rows, 2_000.0);
    assert!(
        !above.is_empty() && above.iter().all(|r| !r.beyond_reach),
        "measured: {rows:?}\n{out}"
    );
}

/// Invalid and saturated points made on purpose, through the whole sweep: arrivals that can
/// never pass the Poisson check (`--min-ks-p 2 --max-ks-d 0`, a failing the sweep never excuses,
/// unlike a late generator within the SLO) leave only lower bounds, and a
/// server given 5 ms of work per request on one connection at twice what it can serve is
/// saturated, so no rate meets the SLO.
#[test]
fn points_made_invalid_or_saturated_on_purpose_give_lower_bounds_and_no_knee() {
    let _machine = machine();
    let sweep = |name: &str, extra: &[&str]| {
        let common = ["--engines", "epoll", "--duration", "0.3s", "--warmup", "0.1s"];
        sweep_and_knee(name, &[&common[..], extra].concat())
    };

    let (rows, knee, out) = sweep(
        "never-valid",
        &[
            "--rates",
            "1000,2000",
            "--connections",
            "2",
            "--min-ks-p",
            "2",
            "--max-ks-d",
            "0",
            // A stall that could explain the failure would move it to the machine, and a
            // point within the SLO despite the machine's stalls counts: no stall may.
            "--max-send-lag",
            "10s",
            "--max-stall",
            "0.99",
        ],
    );
    let tries: Vec<(f64, u32, u32, bool, &str)> = rows
        .iter()
        .map(|r| (r.offered_rps, r.attempt, r.round, r.valid, r.blame.as_str()))
        .collect();
    // Two of three repeats the generator's limit settle the cell; nothing above it runs.
    assert_eq!(
        tries,
        [
            (1000.0, 1, 1, false, "generator"),
            (1000.0, 2, 2, false, "generator")
        ],
        "{out}"
    );
    assert!(
        rows.iter().all(|r| r.invalid_reason.contains("Poisson check")),
        "{rows:?}"
    );
    assert_eq!(knee["knee_rps"], serde_json::Value::Null, "{knee}");
    assert_eq!(knee["lower_bound"], true, "{knee}");
    assert!(out.contains("not measured"), "{out}");

    let (rows, knee, out) = sweep(
        "saturated",
        &[
            &common::CHECKS_NOISE_CANNOT_FAIL[..],
            &["--rates", "400", "--connections", "1", "--work", "fixed:5ms"],
        ]
        .concat(),
    );
    let valid: Vec<_> = rows.iter().filter(|r| r.valid).collect();
    assert_eq!(valid.len(), 2, "two saturated repeats settle it: {rows:?}");
    for r in &valid {
        assert!(r.saturated && r.over_slo, "{r:?}");
        // A queue the server never catches up with, left when the window closed.
        assert!(r.backlog_at_end > 50, "{r:?}");
    }
    // Only a stall over most of a point (CI once saw 406 ms in a 300 ms window) makes one
    // invalid here: it is the machine's, never "saturated", and is measured again.
    for r in rows.iter().filter(|r| !r.valid) {
        assert!(r.blame == "machine" && !r.saturated, "{r:?}");
    }
    assert_eq!(knee["knee_rps"], serde_json::Value::Null, "{knee}");
    assert_eq!(knee["lower_bound"], false, "{knee}");
    assert!(
        out.contains("none rps") && out.contains("saturated at 400 rps"),
        "{out}"
    );
}

/// Runs `iolab ARGS` with stdout on a new pseudo-terminal; what it wrote there.
fn iolab_on_a_terminal(args: &[&str]) -> String {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc calls on a descriptor this function owns; the name buffer is ours.
    let (master, slave_path) = unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        (std::fs::File::from_raw_fd(master), path)
    };
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave_path)
        .expect("open the terminal's other end");
    let mut child = Command::new(env!("CARGO_BIN_EXE_iolab"))
        .args(args)
        .stdout(std::process::Stdio::from(slave))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run iolab");
    // The child holds the only other end now: reads end (EIO) when it exits.
    let reader = std::thread::spawn(move || {
        let mut master = master;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    assert!(child.wait().unwrap().success());
    reader.join().unwrap()
}

/// `iolab load` on a terminal says what it starts and keeps a progress line alive (refreshed
/// in place, four times a second); in a pipe or with --quiet it prints the summary alone.
#[test]
fn the_progress_line_shows_on_a_terminal_only() {
    let (child, addr, stdout) = common::spawn_server(&["--engine".into(), "epoll".into()]);
    let addr = addr.to_string();
    let args = [
        "load",
        "--addr",
        &addr,
        "--rate",
        "500",
        "--duration",
        "1500ms",
        "--connections",
        "4",
        "--watch-cpus",
        "none",
    ];
    let on_tty = iolab_on_a_terminal(&args);
    assert!(
        on_tty.contains(&format!(
            "iolab load -> {addr}: 500 rps offered over 4 connection(s), 1.5s"
        )),
        "{on_tty}"
    );
    let refreshes = on_tty.matches("\r\x1b[2K[").count();
    assert!(
        refreshes >= 3,
        "{refreshes} progress refreshes in 1.5 s:\n{on_tty:?}"
    );
    let last = on_tty.rsplit("\r\x1b[2K[").nth(1).unwrap_or_default();
    for field in [
        "/ 1.5s]",
        "sent ",
        "done ",
        "rps)",
        "p50 ",
        "p99 ",
        "errors 0",
        "send lag p99 ",
    ] {
        assert!(
            last.contains(field),
            "{field} missing from the progress line {last:?}"
        );
    }
    assert!(on_tty.contains("load done ->"), "the summary follows:\n{on_tty}");

    let quiet = iolab_on_a_terminal(&[&args[..], &["--quiet"]].concat());
    assert!(
        !quiet.contains("iolab load ->") && !quiet.contains('\x1b'),
        "{quiet:?}"
    );
    let (ok, piped, err) = iolab(&args);
    assert!(ok, "{err}");
    assert!(
        piped.starts_with("load done ->") && !piped.contains('\x1b'),
        "{piped:?}"
    );
    let (status, _) = common::terminate(child, stdout);
    assert!(status.success());
}

/// An option of one engine given to another would be silently ignored: it is refused, in one
/// line naming the engine it belongs to.
#[test]
fn an_option_of_another_engine_is_refused() {
    for (args, says) in [
        (
            &["--engine", "epoll", "--workers", "8"][..],
            "--workers is an option of --engine pool, not of epoll",
        ),
        (
            &["--engine", "uring", "--epoll-mode", "level"][..],
            "--epoll-mode is an option of --engine epoll, not of uring",
        ),
        (
            &["--engine", "threads", "--ring-entries", "64"][..],
            "--ring-entries is an option of --engine uring and monoio, not of threads",
        ),
        (
            &["--engine", "poll", "--shm-slots", "2"][..],
            "--shm-slots is an option of --engine shm, not of poll",
        ),
        (
            &["--engine", "tokio", "--tap-mtu", "9000"][..],
            "--tap-mtu is an option of --engine userspace, not of tokio",
        ),
    ] {
        let mut argv = vec!["serve", "--addr", "127.0.0.1:0"];
        argv.extend(args);
        let (ok, _, err) = iolab(&argv);
        assert!(!ok, "{args:?} was accepted");
        assert_eq!(err.trim(), format!("iolab: error: {says}"), "{args:?}");
    }
}

/// `iolab ARGS` as a child, stdout and stderr piped.
fn spawn_piped(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_iolab"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The load the pipe and fault tests run: 500 rps at `addr` for `duration`, an interval line
/// every `interval`, its JSON into `json`.
fn spawn_load(
    addr: std::net::SocketAddr,
    duration: &str,
    interval: &str,
    json: &std::path::Path,
) -> std::process::Child {
    let addr = addr.to_string();
    let json = json.to_string_lossy().into_owned();
    spawn_piped(&[
        "load",
        "--addr",
        &addr,
        "--rate",
        "500",
        "--duration",
        duration,
        "--warmup",
        "100ms",
        "--watch-cpus",
        "none",
        "--log-interval",
        interval,
        "--json",
        &json,
    ])
}

/// Reads the child's first line of stdout and then lets both of its pipes go, as `head -1`.
fn read_one_line_and_go(child: &mut std::process::Child) -> String {
    let mut out = child.stdout.take().unwrap();
    let line = common::read_line(&mut out);
    drop((out, child.stderr.take()));
    line
}

/// A server whose stdout and stderr readers have gone (`iolab serve ... 2>&1 | head -1`)
/// still shuts down on SIGTERM, and exits 0: printing its last lines fails quietly instead of
/// killing the thread that handles the signal.
#[test]
fn a_server_whose_pipes_closed_still_exits_0_on_sigterm() {
    let mut child = spawn_piped(&["serve", "--engine", "epoll", "--addr", "127.0.0.1:0"]);
    let first = read_one_line_and_go(&mut child);
    assert!(first.starts_with("listening on "), "{first}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let began = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if began.elapsed() > common::BOUND {
            let _ = child.kill();
            panic!("the server ignored SIGTERM with its pipes closed");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
}

/// `iolab load ... | head -1`: the generator's output pipe closes after one line; the run
/// still finishes, writes its JSON, and exits 0, never panicking on EPIPE.
#[test]
fn load_into_a_closed_pipe_still_writes_its_json() {
    let _machine = machine();
    let (server, addr, server_out) = common::spawn_server(&["--engine".into(), "epoll".into()]);
    let json = std::env::temp_dir().join(format!("iolab-epipe-{}.json", std::process::id()));
    let mut load = spawn_load(addr, "500ms", "50ms", &json);
    read_one_line_and_go(&mut load);
    let status = load.wait().unwrap();
    assert!(status.success(), "{status}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(summary["completed"].as_u64().unwrap() > 0, "{summary}");
    let _ = std::fs::remove_file(&json);
    common::terminate(server, server_out);
}

/// The server killed in the middle of a run: `load` exits non-zero with one line saying what
/// happened, and still writes what it measured until then.
#[test]
fn load_exits_non_zero_when_the_server_dies_and_keeps_what_it_measured() {
    let _machine = machine();
    let (mut server, addr, _server_out) = common::spawn_server(&["--engine".into(), "epoll".into()]);
    let json = std::env::temp_dir().join(format!("iolab-killed-{}.json", std::process::id()));
    let mut load = spawn_load(addr, "3s", "100ms", &json);
    let mut load_out = load.stdout.take().unwrap();
    // The first interval line: the run is under way, replies have come back.
    let line = common::read_line(&mut load_out);
    assert!(line.contains("rps"), "{line}");
    server.kill().unwrap();
    let _ = server.wait();
    let rest = std::io::read_to_string(&mut load_out).unwrap();
    let err = std::io::read_to_string(load.stderr.take().unwrap()).unwrap();
    let status = load.wait().unwrap();
    assert!(!status.success(), "load exited 0 with its server gone");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {err}");
    // A killed server closes its connections, or resets those with requests unread.
    assert!(
        lines[0].starts_with("iolab: error: the server closed connection")
            || lines[0].starts_with("iolab: error: the server reset connection"),
        "{err}"
    );
    assert!(rest.contains("error"), "the table says so too: {rest}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(summary["completed"].as_u64().unwrap() > 0, "{summary}");
    assert!(
        summary["error"]
            .as_str()
            .is_some_and(|e| e.contains("closed") || e.contains("reset")),
        "{summary}"
    );
    let _ = std::fs::remove_file(&json);
}

/// `sweep` and `report` into a pipe whose reader has gone (`| head -1`, a closed pager):
/// both finish their work and exit 0 instead of panicking on EPIPE.
#[test]
fn sweep_and_report_into_a_closed_pipe_finish_their_work() {
    let _machine = machine();
    let dir = std::env::temp_dir().join(format!("iolab-epipe-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_string_lossy().into_owned();
    let closed_pipe = |args: &[&str]| {
        let mut child = spawn_piped(args);
        read_one_line_and_go(&mut child);
        child.wait().unwrap()
    };
    let status = closed_pipe(&[
        "sweep",
        "--engines",
        "epoll",
        "--rates",
        "500",
        "--duration",
        "200ms",
        "--warmup",
        "50ms",
        "--repeat",
        "1",
        "--max-tries",
        "1",
        "--quiet-timeout",
        "100ms",
        "--out",
        &dir_arg,
    ]);
    assert!(status.success(), "sweep: {status}");
    assert!(dir.join("points.csv").is_file());
    let status = closed_pipe(&["report", &dir_arg]);
    assert!(status.success(), "report: {status}");
    assert!(dir.join("report.html").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}
