//! Many connections at once: select's hard limit, C10K on the scalable engines, and running
//! out of descriptors.
//!
//! The server runs as its own process, so its descriptors and the client's do not share one
//! table (or one open-file limit). C10K needs an open-file hard limit above 10,100 on both
//! sides (20,000 on the project's machines); it takes a few seconds and runs with the rest:
//!
//!     cargo test --release --test scale

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;
use iolab::sansio::frame::ReplySize;

/// Opens `n` connections, sends one request on each, then reads every reply. Returns the
/// connections that were answered and those the server closed without an answer.
fn one_request_each(addr: std::net::SocketAddr, n: usize) -> (usize, usize) {
    let mut conns: Vec<TcpStream> = (0..n).map(|_| connect(addr)).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        // A refused connection may already be closed: a failed write is counted below.
        let _ = s.write_all(&request(i as u64, 32, ReplySize::Echo));
    }
    let (mut answered, mut refused) = (0, 0);
    let mut buf = [0u8; 256];
    for (i, s) in conns.iter_mut().enumerate() {
        match s.peek(&mut buf) {
            Ok(0) | Err(_) => refused += 1,
            Ok(_) => {
                check_echo(&read_replies(s, 1)[0], i as u64, 32);
                answered += 1;
            }
        }
    }
    (answered, refused)
}

#[test]
fn select_refuses_what_it_cannot_watch_and_keeps_serving() {
    iolab::os::cpu::raise_fd_limit();
    let (child, addr, stdout) = spawn_server(&["--engine".into(), "select".into()]);
    let mut early = connect(addr);
    early.write_all(&request(1, 10, ReplySize::Echo)).unwrap();
    check_echo(&read_replies(&mut early, 1)[0], 1, 10);

    let (answered, refused) = one_request_each(addr, 1100);
    // Descriptors 0..1023 fit FD_SETSIZE; a few are taken by the server's own files.
    assert!(answered >= 1000, "answered {answered}");
    assert!(refused >= 70, "refused {refused}");
    assert_eq!(answered + refused, 1100);

    // The loop survived: the first connection is still served.
    early.write_all(&request(2, 5000, ReplySize::Echo)).unwrap();
    check_echo(&read_replies(&mut early, 1)[0], 2, 5000);
    drop(early);
    let (status, summary) = terminate(child, stdout);
    assert!(status.success());
    assert!(summary.contains(&format!("accept_errors={refused}")), "{summary}");
}

fn c10k(engine: &str) {
    let limit = iolab::os::cpu::raise_fd_limit();
    assert!(
        limit > 10_100,
        "this test needs an open-file limit above 10100 (have {limit}): ulimit -Hn"
    );
    let (child, addr, stdout) = spawn_server(&["--engine".into(), engine.into()]);
    let (answered, refused) = one_request_each(addr, 10_000);
    assert_eq!((answered, refused), (10_000, 0));
    let (status, summary) = terminate(child, stdout);
    assert!(status.success());
    assert!(
        summary.contains("connections=10000") && summary.contains("requests=10000"),
        "{summary}"
    );
}

/// One test, engines in turn: 10,000 client sockets at a time fit the test's own limit,
/// 20,000 would not.
#[test]
fn c10k_on_the_scalable_engines() {
    for engine in ["poll", "epoll", "uring", "tokio", "monoio"] {
        c10k(engine);
    }
}

/// Out of descriptors, the server says so once, closes the connections it cannot hold (no
/// hang, no busy loop), and keeps serving the ones it has.
/// (The tokio and monoio baselines do what servers on those runtimes do: back off and retry,
/// leaving the connection in the backlog, so they are not held to this.)
#[test]
fn running_out_of_descriptors_is_reported_and_survived() {
    for engine in ["epoll", "uring"] {
        out_of_descriptors(engine);
    }
}

fn out_of_descriptors(engine: &str) {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;

    let mut cmd = serve_command(std::path::Path::new(env!("CARGO_BIN_EXE_iolab")), engine);
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn iolab serve");
    let mut stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let first = read_line(&mut stdout);
    let addr: std::net::SocketAddr = first
        .strip_prefix("listening on ")
        .expect(&first)
        .parse()
        .unwrap();

    let (answered, refused) = one_request_each(addr, 100);
    assert!(
        answered >= 30 && refused >= 30,
        "{engine}: answered {answered}, refused {refused}"
    );
    assert_eq!(answered + refused, 100);

    let (status, summary) = terminate(child, stdout);
    assert!(status.success());
    assert!(summary.contains(&format!("connections={answered} ")), "{summary}");
    assert!(summary.contains(&format!("accept_errors={refused}")), "{summary}");
    let warnings: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains("out of file descriptors"))
        .collect();
    assert_eq!(warnings.len(), 1, "said once, not per connection: {warnings:?}");
    assert!(warnings[0].contains("ulimit -Hn"), "{}", warnings[0]);
}

/// `--threads 2`: both loops serve. The kernel spreads 64 connections over the two
/// SO_REUSEPORT listeners, and each request spins 1 ms on the loop that has its connection, so
/// each loop's CPU time is its share of the connections (all on one loop: once in 2^63).
#[test]
fn connections_spread_over_every_loop() {
    use iolab::loadgen::{self, LoadConfig};
    for engine in ["select", "poll", "epoll", "uring", "tokio", "monoio"] {
        let args = ["--engine", engine, "--threads", "2"].map(String::from);
        let (child, addr, stdout) = spawn_server(&args);
        let mut cfg = LoadConfig::new(addr, 400.0, std::time::Duration::from_secs(1));
        cfg.connections = 64;
        cfg.work = "fixed:1ms".parse().unwrap();
        let r = loadgen::run(cfg, &mut |_| {}).unwrap();
        assert_eq!((r.error.as_deref(), r.errors()), (None, 0), "{engine}");
        let ticks = loop_cpu_ticks(child.id(), engine);
        let (status, _) = terminate(child, stdout);
        assert!(status.success());
        // 400 ms of spinning: 40 ticks at 100 Hz, about 20 a loop.
        assert_every_loop_worked(&ticks, 2, 20, 0.15, engine);
    }
}
