//! The `userspace` engine and the queue API outside the conformance suite: namespace
//! hygiene, misuse, real HTTP clients, and each queue backend end to end.
//!
//! Everything that makes a TAP device runs inside a namespace made for the test and deleted
//! after it ([`common::in_private_netns`]); nothing is routed in the host's namespace.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use iolab::engine::{self, EngineKind, EngineOptions, ServeConfig, ShmOptions};
use iolab::queue::{Endpoint, LibOs, Outcome, Qd};
use iolab::sansio::frame::{Header as _, ReplyHeader, ReplySize};

const BOUND: Duration = Duration::from_secs(10);

fn iolab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iolab"))
}

#[test]
fn the_host_namespace_is_refused_in_one_line() {
    let out = iolab()
        .args(["serve", "--engine", "userspace"])
        .output()
        .expect("run iolab");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keeps its TAP device out of the host's network"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_taken_tap_name_is_refused_in_one_line() {
    in_private_netns("taken", || {
        let made = Command::new("ip")
            .args(["tuntap", "add", "dev", "iolab0", "mode", "tap"])
            .status()
            .expect("ip link add");
        assert!(made.success());
        let out = iolab()
            .args(["serve", "--engine", "userspace", "--tap", "iolab0"])
            .output()
            .expect("run iolab");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("TAP name iolab0 is taken"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    });
}

/// `iolab serve --engine userspace --threads 2` in a namespace of its own making, named
/// after `tag`: the namespace's name, the child, its address and its stdout.
fn two_queue_server(tag: &str) -> (String, std::process::Child, SocketAddr, std::process::ChildStdout) {
    let ns = format!("iolab-{tag}-{}", std::process::id());
    let (child, addr, stdout) = spawn_server(&[
        "--engine".into(),
        "userspace".into(),
        "--netns".into(),
        ns.clone(),
        "--threads".into(),
        "2".into(),
    ]);
    (ns, child, addr, stdout)
}

#[test]
fn the_server_makes_its_namespace_and_removes_it_and_the_device() {
    if !netns_available_or_skip() {
        return;
    }
    let (ns, child, addr, stdout) = two_queue_server("own");
    assert_eq!(addr, SocketAddr::from((Ipv4Addr::new(10, 77, 0, 1), 7000)));
    let devices = Command::new("ip")
        .args(["-n", &ns, "-o", "link"])
        .output()
        .unwrap();
    let devices = String::from_utf8_lossy(&devices.stdout).to_string();
    let json = std::env::temp_dir().join(format!("{ns}.json"));
    let load = iolab()
        .args([
            "load",
            "--netns",
            &ns,
            "--addr",
            "10.77.0.1:7000",
            "--rate",
            "2000",
        ])
        .args([
            "--duration",
            "500ms",
            "--connections",
            "8",
            "--connect",
            "concurrent",
        ])
        .args(["--driver", "queue", "--json", json.to_str().unwrap()])
        .output()
        .expect("run the load");
    let (status, rest) = terminate(child, stdout);
    assert!(devices.contains("iolab0"), "{devices}");
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(summary["errors"], 0, "{summary}");
    assert!(summary["completed"].as_u64().unwrap() > 0, "{summary}");
    assert!(status.success(), "{status}");
    assert!(rest.contains("summary: engine=userspace"), "{rest}");
    assert!(
        !std::path::Path::new("/run/netns").join(&ns).exists(),
        "the namespace {ns} outlived the server"
    );
}

/// `--threads 2` runs two queues of one multi-queue TAP device, and the kernel's choice of
/// queue per flow spreads 64 connections over both: each request spins 1 ms on the queue's
/// own loop, so each loop's CPU time is its share of the connections.
#[test]
fn connections_spread_over_the_userspace_queues() {
    if !netns_available_or_skip() {
        return;
    }
    let (ns, child, addr, stdout) = two_queue_server("spread");
    let json = std::env::temp_dir().join(format!("{ns}.json"));
    let load = iolab()
        .args(["load", "--netns", &ns, "--addr", &addr.to_string()])
        .args(["--rate", "400", "--duration", "1s", "--connections", "64"])
        .args(["--work", "fixed:1ms", "--json", json.to_str().unwrap()])
        .output()
        .expect("run the load");
    let ticks = loop_cpu_ticks(child.id(), "userspace");
    let (status, _) = terminate(child, stdout);
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(summary["errors"], 0, "{summary}");
    assert!(status.success());
    // 400 ms of spinning, 40 ticks: each queue's loop has some 20 of them (a loop polls its
    // queue too, so an idle one is not at zero, but far under a serving one's share).
    assert_every_loop_worked(&ticks, 2, 20, 0.2, "userspace");
}

/// `iolab load --transport userspace`: the load's own smoltcp stack on a TAP device it makes
/// in the namespace, against a kernel-socket server there. Every byte checked, nothing lost,
/// and the device gone with the load.
#[test]
fn a_load_through_its_own_user_space_stack_reaches_a_kernel_server() {
    in_named_netns("load-us", |ns| {
        let server =
            engine::start(ServeConfig::new(EngineKind::Epoll, "0.0.0.0:0".parse().unwrap())).unwrap();
        let port = server.addr.port();
        let json = std::env::temp_dir().join(format!("{ns}.json"));
        // Open loop, then closed loop (which must have the same stack under it).
        let closed = iolab()
            .args(["load", "--transport", "userspace", "--netns", ns])
            .args(["--tap", "iolabl0", "--tap-ip", "10.79.0.1/24"])
            .args(["--addr", &format!("10.79.0.2:{port}")])
            .args([
                "--closed-loop",
                "--requests",
                "500",
                "--connections",
                "8",
                "--reply",
                "fixed:5000",
            ])
            .args(["--json", json.to_str().unwrap()])
            .output()
            .expect("run the closed loop");
        assert!(
            closed.status.success(),
            "{}",
            String::from_utf8_lossy(&closed.stderr)
        );
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(
            (summary["mode"].as_str(), summary["completed"].as_u64()),
            (Some("closed"), Some(500)),
            "{summary}"
        );
        assert_eq!(summary["errors"], 0, "{summary}");
        let load = iolab()
            .args(["load", "--transport", "userspace", "--netns", ns])
            .args(["--tap", "iolabl0", "--tap-ip", "10.79.0.1/24"])
            .args(["--addr", &format!("10.79.0.2:{port}")])
            .args(["--rate", "1000", "--duration", "500ms", "--connections", "8"])
            .args(["--request-size", "uniform:1-3000", "--reply", "fixed:5000"])
            .args(["--json", json.to_str().unwrap()])
            .output()
            .expect("run the load");
        assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let _ = std::fs::remove_file(&json);
        assert_eq!(summary["errors"], 0, "{summary}");
        let completed = summary["completed"].as_u64().unwrap();
        assert!(completed > 200, "{summary}");
        assert_eq!(summary["sent"].as_u64(), Some(completed), "{summary}");
        assert_eq!(
            summary["bytes_received"].as_u64(),
            Some(completed * (ReplyHeader::LEN as u64 + 5000)),
            "{summary}"
        );
        let served = server.stop().unwrap();
        assert_eq!((served.connections, served.protocol_errors), (16, 0), "{served}");
        let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(!links.contains("iolabl0"), "the load's TAP outlived it: {links}");
    });
}

#[test]
fn curl_and_wrk_reach_it_unchanged() {
    let root = std::env::temp_dir().join(format!("iolab-us-http-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let page: Vec<u8> = (0..50_000u32).map(|i| b"abcdefghij"[(i % 10) as usize]).collect();
    std::fs::write(root.join("page.html"), &page).unwrap();
    if !tool_or_skip("curl") || !tool_or_skip("wrk") {
        return;
    }
    in_private_netns("http", || {
        let (child, addr, stdout) = spawn_server(&[
            "--engine".into(),
            "userspace".into(),
            "--protocol".into(),
            "http".into(),
            "--root".into(),
            root.display().to_string(),
        ]);
        let url = format!("http://{addr}/page.html");
        let curl = Command::new("curl")
            .args(["-sS", "--max-time", "10", &url])
            .output()
            .expect("curl");
        assert!(curl.status.success(), "{}", String::from_utf8_lossy(&curl.stderr));
        assert!(curl.stdout == page, "curl got {} bytes", curl.stdout.len());
        let wrk = Command::new("wrk")
            .args(["-t1", "-c8", "-d1s", &url])
            .stdout(Stdio::piped())
            .output()
            .expect("wrk");
        let text = String::from_utf8_lossy(&wrk.stdout);
        assert!(wrk.status.success(), "{text}");
        assert!(text.contains("requests in"), "{text}");
        assert!(
            !text.contains("Non-2xx") && !text.contains("Socket errors"),
            "{text}"
        );
        let (status, rest) = terminate(child, stdout);
        assert!(status.success() && rest.contains("protocol_errors=0"), "{rest}");
    });
    let _ = std::fs::remove_dir_all(&root);
}

// ---------------------------------------------------------------------------------------------
// The queue API: one echo exchange per backend, through push/pop tokens and wait_any.

/// Waits for `token`'s completion, bounded.
fn wait(os: &mut LibOs, token: iolab::queue::QToken) -> Outcome {
    os.wait_any(&[token], BOUND)
        .expect("wait_any")
        .expect("completed within the bound")
        .1
        .outcome
}

/// Pops on `qd` until `n` bytes have arrived.
fn pop_exactly(os: &mut LibOs, qd: Qd, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    for _ in 0..10_000 {
        if got.len() >= n {
            break;
        }
        let pop = os.pop(qd);
        match wait(os, pop) {
            Outcome::Popped(bytes) => got.extend(bytes),
            other => panic!("pop ended with {other:?} after {} bytes", got.len()),
        }
    }
    got
}

/// A client queue talks to an iolab server: one echo request out, its reply back.
fn echo_through(os: &mut LibOs, to: &Endpoint) {
    let (qd, connect) = os.connect(to).expect("connect starts");
    assert_eq!(wait(os, connect), Outcome::Connected);
    let req = request(5, 3000, ReplySize::Echo);
    let push = os.push(qd, &req).expect("push");
    assert_eq!(wait(os, push), Outcome::Pushed(req.len()));
    let reply = pop_exactly(os, qd, ReplyHeader::LEN + 3000);
    // Exactly one reply's bytes: a wrong header length leaves a partial frame behind or
    // asks for bytes that never come.
    assert_eq!(reply.len(), ReplyHeader::LEN + 3000);
    let frames = read_replies(&mut &reply[..], 1);
    check_echo(&frames[0], 5, 3000);
    os.close(qd);
}

#[test]
fn queue_api_over_kernel_tcp() {
    let server = engine::start(ServeConfig::new(
        EngineKind::Epoll,
        "127.0.0.1:0".parse().unwrap(),
    ))
    .unwrap();
    let mut os = LibOs::tcp().unwrap();
    echo_through(&mut os, &Endpoint::Tcp(server.addr));
    // Nothing listening: the connect token completes as failed, it does not hang.
    // The port is held (bound, never listening) so no other test can take it meanwhile.
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    held.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let gone = held.local_addr().unwrap().as_socket().unwrap();
    let (_, connect) = os.connect(&Endpoint::Tcp(gone)).unwrap();
    assert!(matches!(wait(&mut os, connect), Outcome::Failed(_)));
    server.stop().unwrap();
}

#[test]
fn queue_api_over_shared_memory_both_ends() {
    let name = format!("qtest-{}", std::process::id());
    // A server of the real engine, reached through the queue API...
    let mut cfg = ServeConfig::new(EngineKind::Shm, "127.0.0.1:0".parse().unwrap());
    cfg.engine = EngineOptions::Shm(ShmOptions {
        name: Some(name.clone()),
        ..ShmOptions::default()
    });
    let server = engine::start(cfg).unwrap();
    let mut os = LibOs::shm();
    echo_through(&mut os, &Endpoint::Shm(name.clone()));
    server.stop().unwrap();
    // ...and both ends on the queue API: listen, accept, pop, push back.
    let mut listener_os = LibOs::shm();
    let listen = listener_os.listen(&Endpoint::Shm(name.clone())).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut os = LibOs::shm();
            let (qd, connect) = os.connect(&Endpoint::Shm(name.clone())).unwrap();
            assert_eq!(wait(&mut os, connect), Outcome::Connected);
            let push = os.push(qd, b"over shared memory").unwrap();
            assert_eq!(wait(&mut os, push), Outcome::Pushed(18));
            assert_eq!(pop_exactly(&mut os, qd, 18), b"over shared memory");
            os.close(qd);
        });
        let accept = listener_os.accept(listen);
        let Outcome::Accepted(qd) = wait(&mut listener_os, accept) else {
            panic!("no connection accepted");
        };
        let got = pop_exactly(&mut listener_os, qd, 18);
        let push = listener_os.push(qd, &got).unwrap();
        assert_eq!(wait(&mut listener_os, push), Outcome::Pushed(18));
    });
}

#[test]
fn queue_api_over_the_user_space_stack_both_ways() {
    in_private_netns("queue", || {
        let options = iolab::os::tap::LinkOptions {
            tap: "iolabq0".into(),
            ip: Ipv4Addr::new(10, 79, 0, 1),
            prefix: 24,
            mtu: 1500,
            socket_buffer: 64 << 10,
        };
        let mut os = LibOs::smoltcp(&options).expect("a stack on a TAP device");
        // Outward: to an iolab server on kernel sockets at the link's kernel side.
        let server = engine::start(ServeConfig::new(
            EngineKind::Epoll,
            "10.79.0.2:0".parse().unwrap(),
        ))
        .unwrap();
        echo_through(&mut os, &Endpoint::Tcp(server.addr));
        server.stop().unwrap();
        // Inward: a kernel client connects to the stack's address; accept, pop, push back.
        let listen = os
            .listen(&Endpoint::Tcp("10.79.0.1:7100".parse().unwrap()))
            .unwrap();
        let client = std::thread::spawn(|| {
            let mut s = TcpStream::connect_timeout(&"10.79.0.1:7100".parse().unwrap(), BOUND).unwrap();
            s.set_read_timeout(Some(BOUND)).unwrap();
            s.write_all(b"over smoltcp").unwrap();
            let mut back = [0u8; 12];
            s.read_exact(&mut back).unwrap();
            back
        });
        let accept = os.accept(listen);
        let Outcome::Accepted(qd) = wait(&mut os, accept) else {
            panic!("no connection accepted");
        };
        let got = pop_exactly(&mut os, qd, 12);
        let push = os.push(qd, &got).unwrap();
        assert_eq!(wait(&mut os, push), Outcome::Pushed(12));
        assert_eq!(&client.join().unwrap(), b"over smoltcp");
    });
}
