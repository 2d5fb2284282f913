//! The command line as a user meets it: the demo, the help, and the refusals.

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

#[test]
fn demo_prints_one_row_per_engine() {
    let (ok, out, err) = iolab(&["demo", "--duration", "300ms", "--rate", "500"]);
    assert!(ok, "demo failed: {err}");
    for engine in iolab::engine::EngineKind::ALL.iter().map(|e| e.name()) {
        let row = out
            .lines()
            .find(|l| l.starts_with(engine) && l.contains("us"))
            .unwrap_or_else(|| panic!("no row for {engine} in:\n{out}"));
        // The errors column is the last one.
        assert_eq!(row.split_whitespace().last(), Some("0"), "{row}");
    }
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
