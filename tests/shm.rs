//! The `shm` engine as a client process meets it: frames through the rings and back, a bad
//! frame ending the connection from the server's side, a client that dies mid-frame, and
//! clear refusals for segments that are missing or taken.

mod common;

use std::process::{Child, ChildStdout, Command};
use std::time::{Duration, Instant};

use iolab::loadgen::client::{ClientConn, Completion, RequestSpec};
use iolab::sansio::frame::{pattern_vec, ReplySize};
use iolab::shm::{segment_path, Connection, Segment, FREE};

fn unique(tag: &str) -> String {
    format!("t-{tag}-{}", std::process::id())
}

/// A server child that is killed if the test fails before it stops it.
struct Served {
    name: String,
    child: Option<Child>,
    stdout: Option<ChildStdout>,
}

impl Served {
    /// SIGTERM, then the summary line.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        common::terminate(self.child.take().unwrap(), self.stdout.take().unwrap())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // Killed, the server could not remove its segment.
            let _ = std::fs::remove_file(segment_path(&self.name));
        }
    }
}

fn start(name: &str) -> Served {
    start_with(name, &[])
}

fn start_with(name: &str, extra: &[&str]) -> Served {
    let args: Vec<String> = ["--engine", "shm", "--shm", name, "--shm-ring", "64KiB"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_iolab"))
        .arg("serve")
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let first = common::read_line(&mut stdout);
    assert_eq!(first.trim(), format!("listening on shm:{name}"));
    Served {
        name: name.to_string(),
        child: Some(child),
        stdout: Some(stdout),
    }
}

/// `iolab load` through segment `name` at `rate` for `duration`.
fn shm_load(name: &str, rate: &str, duration: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iolab"));
    cmd.args([
        "load",
        "--transport",
        "shm",
        "--shm",
        name,
        "--rate",
        rate,
        "--duration",
        duration,
    ]);
    cmd
}

/// Sends every request queued in `client` and collects `want` completions (bounded in time).
fn exchange(conn: &Connection, client: &mut ClientConn, want: usize) -> Vec<Completion> {
    let mut done = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(10);
    while done.len() < want {
        assert!(Instant::now() < deadline, "only {} of {want} replies", done.len());
        if let Some(s) = client.out().front() {
            let n = conn.up.push(s).unwrap();
            client.wrote(n);
        }
        let n = conn.down.pop(&mut buf).unwrap();
        client.receive(&buf[..n], 0, |c| done.push(c)).unwrap();
    }
    done
}

#[test]
fn frames_go_through_shared_memory_and_back() {
    let name = unique("echo");
    let server = start(&name);
    let conn = Connection::connect(&name).unwrap();
    let mut client = ClientConn::new(1 << 20, 1 << 20, 64);
    // Pipelined, and one reply larger than the 64 KiB ring (it must flow in pieces).
    let specs = [
        (0, ReplySize::Echo),
        (64, ReplySize::Echo),
        (5000, ReplySize::Bytes(300_000)),
        (1, ReplySize::Echo),
    ];
    for (id, (len, reply)) in specs.into_iter().enumerate() {
        let spec = RequestSpec {
            request_bytes: len,
            reply,
            spin_ns: 0,
            page: 0,
        };
        client.queue(id as u64, id as u64, 0, spec, true);
    }
    let done = exchange(&conn, &mut client, 4);
    assert!(done.iter().all(|c| c.ok), "{done:?}");
    assert_eq!(
        done.iter().map(|c| c.request.id).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    drop(conn);
    let (status, summary) = server.stop();
    assert!(status.success());
    assert!(summary.contains("connections=1 requests=4"), "{summary}");
    assert!(!segment_path(&name).exists(), "the server removes its segment");
}

#[test]
fn a_bad_frame_ends_the_connection_from_the_server_side() {
    let name = unique("bad");
    let server = start(&name);
    let conn = Connection::connect(&name).unwrap();
    // A frame header announcing a 4 GiB payload: over any --max-frame.
    let mut bad = vec![0u8; 64];
    bad[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    conn.up.push(&bad).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !conn.server_gone() {
        assert!(Instant::now() < deadline, "the server did not end the connection");
        std::thread::sleep(Duration::from_millis(5));
    }
    let slot = conn.slot();
    drop(conn); // the client frees a slot the server ended
    let seg = Segment::attach(&name).unwrap();
    assert_eq!(seg.slot_state(slot).0, FREE);
    let (_, summary) = server.stop();
    assert!(summary.contains("protocol_errors=1"), "{summary}");
}

/// Run as a child process by the next test: claims a slot, writes half a frame, and dies
/// without closing anything.
#[test]
fn child_that_dies_mid_frame() {
    let Ok(name) = std::env::var("IOLAB_SHM_DIE") else {
        return; // only as the child of the test below
    };
    let conn = Connection::connect(&name).unwrap();
    conn.up.push(&pattern_vec(1, 10)).unwrap();
    println!("slot {}", conn.slot());
    std::process::exit(0); // no Drop: the slot stays claimed by a dead process
}

#[test]
fn a_client_that_dies_mid_frame_is_noticed_and_its_slot_freed() {
    let name = unique("die");
    let server = start(&name);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_that_dies_mid_frame",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("IOLAB_SHM_DIE", &name)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let slot: u32 = text
        .lines()
        .find_map(|l| l.split("slot ").nth(1).and_then(|n| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("the child said: {text}"));
    let seg = Segment::attach(&name).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seg.slot_state(slot).0 != FREE {
        assert!(
            Instant::now() < deadline,
            "the dead client's slot was never freed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, summary) = server.stop();
    assert!(
        summary.contains("connections=1") && summary.contains("io_errors=1"),
        "{summary}"
    );
}

#[test]
fn missing_and_taken_segments_are_refused_in_one_line() {
    let name = unique("absent");
    let e = Connection::connect(&name).unwrap_err().to_string();
    assert!(e.contains(&name) && e.contains("iolab serve --engine shm"), "{e}");

    let name = unique("taken");
    let server = start(&name);
    let out = Command::new(env!("CARGO_BIN_EXE_iolab"))
        .args(["serve", "--engine", "shm", "--shm", &name])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("in use by a running server"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    server.stop();
}

#[test]
fn iolab_load_drives_the_shm_engine_and_stops_at_its_slot_count() {
    let name = unique("load");
    let server = start(&name);
    let json = std::env::temp_dir().join(format!("iolab-shm-load-{}.json", std::process::id()));
    let out = shm_load(&name, "600", "0.4s")
        .args(["--connections", "3", "--request-size", "uniform:0-3000", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(summary["errors"], 0, "{summary}");
    assert!(summary["completed"].as_u64().unwrap() > 100, "{summary}");
    assert_eq!(summary["config"]["addr"], format!("shm:{name}"));
    assert_eq!(
        summary["config"]["driver"], "queue",
        "shm goes through the queue-API driver"
    );
    let _ = std::fs::remove_file(&json);
    server.stop();

    // More connections than the segment has slots: one clear line, no hang.
    let name = unique("full");
    let server = start_with(&name, &["--shm-slots", "2"]);
    let out = shm_load(&name, "100", "0.2s")
        .args(["--connections", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("every one of the 2 connection slots"), "{err}");
    server.stop();
}
