//! The command line as a user meets it: the demo, the help, and the refusals.

mod common;

use std::process::Command;

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
        "--out",
        &dir_arg,
    ]);
    assert!(ok, "demo failed: {err}\n{out}");
    let rows = iolab::results::read_points(&dir).expect("the demo leaves points.csv");
    for engine in iolab::engine::EngineKind::ALL.iter().map(|e| e.name()) {
        let mine: Vec<_> = rows.iter().filter(|r| r.engine == engine).collect();
        assert!(!mine.is_empty(), "no points for {engine}:\n{out}");
        for r in &mine {
            let summary: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join(&r.summary)).unwrap()).unwrap();
            assert_eq!(summary["errors"], 0, "{r:?}");
        }
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(engine) && l.contains("rps")),
            "{engine} missing from the knee table:\n{out}"
        );
    }
    for f in ["report.html", "report.ipynb", "figures/latency-cdf.svg"] {
        assert!(dir.join(f).is_file(), "{f} missing");
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
fn load_against_nothing_fails_in_one_line_and_still_writes_json() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let json = std::env::temp_dir().join(format!("iolab-cli-{}.json", std::process::id()));
    let (ok, _, err) = iolab(&[
        "load",
        "--addr",
        &port.to_string(),
        "--rate",
        "10",
        "--duration",
        "1s",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
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
            // An SLO no run misses: the test checks the folder, not the machine's speed.
            "--slo",
            "60s",
            "--out",
        ])
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
    let rows = iolab::results::read_points(&dir).expect("points.csv reads back");
    // A point the busy test machine made invalid is measured again, so there may be more
    // rows; each (engine, rate) is there once as a first attempt.
    let mut firsts: Vec<(String, u64)> = rows
        .iter()
        .filter(|r| r.attempt == 1)
        .map(|r| (r.engine.clone(), r.offered_rps as u64))
        .collect();
    firsts.sort();
    let want: Vec<(String, u64)> = ["epoll", "uring --register-files"]
        .iter()
        .flat_map(|e| [(e.to_string(), 200), (e.to_string(), 400)])
        .collect();
    assert_eq!(firsts, want, "2 engines x 2 rates: {rows:?}");
    assert!(rows.iter().all(|r| (1..=2).contains(&r.attempt)), "{rows:?}");
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
        assert!((0.0..=1.0).contains(&row.generator_busy), "{row:?}");
    }
    let knee = std::process::Command::new(env!("CARGO_BIN_EXE_iolab"))
        .arg("knee")
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&knee.stdout);
    assert!(knee.status.success());
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

/// An engine that saturates is measured once more at that rate before the sweep gives up on
/// it, and both attempts are kept. An SLO no run can meet makes every point saturated.
#[test]
fn a_saturated_point_is_measured_again_before_the_engine_stops() {
    let dir = std::env::temp_dir().join(format!("iolab-retry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_string_lossy().into_owned();
    let (ok, out, err) = iolab(&[
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
        "--out",
        &dir_arg,
    ]);
    assert!(ok, "{err}");
    let rows = iolab::results::read_points(&dir).unwrap();
    let attempts: Vec<(f64, u32, bool)> = rows
        .iter()
        .map(|r| (r.offered_rps, r.attempt, r.saturated))
        .collect();
    assert_eq!(attempts, vec![(300.0, 1, true), (300.0, 2, true)], "{out}");
    assert!(dir.join("points/epoll-300-attempt2.hlog").is_file());
    assert!(out.contains("saturated at 300 rps, measuring it again"), "{out}");
    assert!(out.contains("on every attempt"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
