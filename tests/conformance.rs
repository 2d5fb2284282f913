//! The conformance suite: every engine, the same cases, through real sockets on loopback.
//!
//! The session core's own tests already cover framing; these check what is each engine's own:
//! waiting, partial I/O, back-pressure, error isolation and shutdown. Adding an engine to the
//! suite is one line in the `conformance!` list at the bottom.
//!
//! Every blocking read here has a timeout, as a bound on a broken engine, never as a way to
//! wait for something to happen.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use common::*;

use iolab::engine::{self, EngineKind, EngineOptions, EpollMode, RecvMode, RunningServer, ServeConfig};
use iolab::loadgen::spec::{ReplyDist, SizeDist};
use iolab::loadgen::{self, LoadConfig};
use iolab::sansio::budget::MemoryBudget;
use iolab::sansio::frame::{pattern_matches, Header, ReplySize, RequestHeader, DEFAULT_CHUNK_SIZE};

const CHUNK: usize = DEFAULT_CHUNK_SIZE;

/// An engine as the suite runs it: which one, and with which options.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    kind: EngineKind,
    epoll_mode: EpollMode,
    threads: usize,
    recv: RecvMode,
    register_files: bool,
    zero_copy_threshold: Option<usize>,
    sqpoll: bool,
}

/// A fresh shared-memory segment name for each server the suite starts.
fn shm_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("conf-{}-{n}", std::process::id())
}

const fn setup(kind: EngineKind) -> Setup {
    Setup {
        kind,
        epoll_mode: EpollMode::Edge,
        threads: 1,
        recv: RecvMode::Auto,
        register_files: false,
        zero_copy_threshold: None,
        sqpoll: false,
    }
}

impl Setup {
    const fn level(mut self) -> Self {
        self.epoll_mode = EpollMode::Level;
        self
    }
    const fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }
    const fn recv(mut self, mode: RecvMode) -> Self {
        self.recv = mode;
        self
    }
    const fn register_files(mut self) -> Self {
        self.register_files = true;
        self
    }
    const fn zero_copy_from(mut self, bytes: usize) -> Self {
        self.zero_copy_threshold = Some(bytes);
        self
    }
    const fn sqpoll(mut self) -> Self {
        self.sqpoll = true;
        self
    }
    /// The same options as `iolab serve` arguments.
    fn args(&self) -> Vec<String> {
        let mode = match self.epoll_mode {
            EpollMode::Edge => "edge",
            EpollMode::Level => "level",
        };
        let recv = match self.recv {
            RecvMode::Auto => "auto",
            RecvMode::Multishot => "multishot",
            RecvMode::Single => "single",
        };
        let mut args = [
            "--engine",
            self.kind.name(),
            "--threads",
            &self.threads.to_string(),
        ]
        .map(String::from)
        .to_vec();
        // Each engine's own options go to that engine only (serve refuses them elsewhere).
        match self.kind {
            EngineKind::Epoll => args.extend(["--epoll-mode".into(), mode.into()]),
            EngineKind::Uring => args.extend(["--recv".into(), recv.into()]),
            _ => {}
        }
        if self.register_files {
            args.push("--register-files".into());
        }
        if self.sqpoll {
            args.push("--sqpoll".into());
        }
        if let Some(t) = self.zero_copy_threshold {
            args.extend(["--zero-copy-threshold".into(), t.to_string()]);
        }
        args
    }

    fn config(&self) -> ServeConfig {
        let mut cfg = ServeConfig::new(self.kind, "127.0.0.1:0".parse().unwrap());
        cfg.threads = self.threads;
        match &mut cfg.engine {
            EngineOptions::Epoll(o) => o.mode = self.epoll_mode,
            EngineOptions::Uring(o) => {
                o.recv = self.recv;
                o.register_files = self.register_files;
                o.zero_copy_threshold = self.zero_copy_threshold;
                o.sqpoll = self.sqpoll;
            }
            EngineOptions::Shm(o) => {
                o.name = Some(shm_name());
                o.ring_bytes = 64 << 10;
            }
            _ => {}
        }
        cfg
    }
}

fn start(s: Setup) -> RunningServer {
    let mut cfg = s.config();
    cfg.log_errors = std::env::var_os("IOLAB_TEST_LOG").is_some();
    engine::start(cfg).expect("server starts")
}

fn run_load(endpoint: &str, request_size: &str, reply: &str, rate: f64) -> loadgen::LoadReport {
    run_load_with(endpoint, request_size, reply, rate, None)
}

/// As [`run_load`]; `closed`: a closed loop with this many requests out per connection.
fn run_load_with(
    endpoint: &str,
    request_size: &str,
    reply: &str,
    rate: f64,
    closed: Option<usize>,
) -> loadgen::LoadReport {
    let (addr, shm) = match endpoint.strip_prefix("shm:") {
        Some(name) => (SocketAddr::from(([0, 0, 0, 0], 0)), Some(name.to_string())),
        None => (endpoint.parse().expect("an address"), None),
    };
    let mut cfg = LoadConfig::new(addr, rate, Duration::from_secs(1));
    cfg.shm = shm;
    cfg.connections = 8;
    cfg.request_size = request_size.parse::<SizeDist>().unwrap();
    cfg.reply = reply.parse::<ReplyDist>().unwrap();
    cfg.seed = 42;
    cfg.closed_loop = closed;
    if closed.is_some() {
        cfg.duration = Duration::from_millis(300);
    }
    let report = loadgen::run(cfg, &mut |_| {}).expect("load runs");
    assert_eq!(report.error, None);
    assert!(report.m.sent > 0);
    assert_eq!(
        report.errors(),
        0,
        "bad {} overflow {} lost {}",
        report.m.bad_replies,
        report.m.overflow,
        report.m.lost
    );
    assert_eq!(
        report.m.completed, report.m.sent,
        "every request answered and verified"
    );
    report
}

// ---------------------------------------------------------------------------------------------
// The cases

pub fn load_with_mixed_payloads(engine: Setup) {
    let server = start(engine);
    let echo = run_load(&server.endpoint, "uniform:0-64KiB", "echo", 400.0);
    let big = run_load(&server.endpoint, "uniform:0-64KiB", "uniform:0-1MiB", 150.0);
    let summary = server.stop().unwrap();
    assert!(summary.requests >= echo.m.completed + big.m.completed);
    assert_eq!(summary.protocol_errors, 0);
}

/// A closed loop (as wrk runs: a reply, then the next request) with two requests out per
/// connection: it reaches a rate, and every reply is verified byte for byte.
pub fn a_closed_loop_is_answered_in_full(engine: Setup) {
    let server = start(engine);
    let r = run_load_with(
        &server.endpoint,
        "uniform:0-8KiB",
        "uniform:0-64KiB",
        f64::NAN,
        Some(2),
    );
    let s = r.summary();
    assert_eq!((s.mode, s.depth, s.offered_rps), ("closed", Some(2), None));
    assert!(s.achieved_rps > 0.0 && r.m.completed > 100, "{}", r.table());
    let summary = server.stop().unwrap();
    assert_eq!(summary.protocol_errors, 0);
}

pub fn echo_at_the_edges(engine: Setup) {
    let server = start(engine);
    let mut s = connect_to(&server.endpoint);
    for (id, len) in [
        (1u64, 0usize),
        (2, 1),
        (3, CHUNK - 1),
        (4, CHUNK),
        (5, CHUNK + 1),
        (6, 1 << 20),
    ] {
        s.write_all(&request(id, len, ReplySize::Echo)).unwrap();
        let r = read_replies(&mut s, 1);
        check_echo(&r[0], id, len);
    }
    drop(s);
    server.stop().unwrap();
}

pub fn pipelined_replies_stay_in_order(engine: Setup) {
    let server = start(engine);
    let mut s = connect_to(&server.endpoint);
    let mut all = Vec::new();
    for id in 0..100u64 {
        // Varied work, so that engines running requests in parallel finish them out of order.
        let spin_ns = (id % 5) * 50_000;
        all.extend(request_with_spin(
            id,
            (id as usize * 37) % 5000,
            ReplySize::Echo,
            spin_ns,
        ));
    }
    s.write_all(&all).unwrap();
    let replies = read_replies(&mut s, 100);
    for (i, r) in replies.iter().enumerate() {
        check_echo(r, i as u64, (i * 37) % 5000);
    }
    drop(s);
    server.stop().unwrap();
}

/// Three thousand pipelined requests on one connection: past any engine's cap on requests
/// in flight per connection (pool hands at most 1,024 to its workers, then stops reading
/// until replies go out), so the connection must be picked up again each time it had to stop.
pub fn thousands_of_pipelined_requests_stay_in_order(engine: Setup) {
    const N: u64 = 3000;
    let server = start(engine);
    let mut s = connect(server.addr);
    let mut reader = s.try_clone().unwrap();
    std::thread::scope(|scope| {
        let replies = scope.spawn(move || read_replies(&mut reader, N as usize));
        let mut all = Vec::new();
        for id in 0..N {
            // A little work each, so that requests pile up at an engine's workers.
            all.extend(request_with_spin(
                id,
                (id % 7) as usize * 11,
                ReplySize::Echo,
                10_000,
            ));
        }
        s.write_all(&all).unwrap();
        for (i, r) in replies.join().unwrap().iter().enumerate() {
            check_echo(r, i as u64, (i % 7) * 11);
        }
    });
    drop(s);
    let summary = server.stop().unwrap();
    assert_eq!(summary.requests, N, "{summary}");
}

pub fn one_byte_at_a_time(engine: Setup) {
    let server = start(engine);
    let mut s = connect_to(&server.endpoint);
    s.set_nodelay();
    let bytes = [
        request(1, 300, ReplySize::Echo),
        request(2, 0, ReplySize::Bytes(5000)),
    ]
    .concat();
    for b in &bytes {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
    let r = read_replies(&mut s, 2);
    check_echo(&r[0], 1, 300);
    assert_eq!(r[1].payload.len(), 5000);
    assert!(pattern_matches(2, 0, &r[1].payload));
    drop(s);
    server.stop().unwrap();
}

pub fn half_close_after_last_request(engine: Setup) {
    let server = start(engine);
    let mut s = connect_to(&server.endpoint);
    s.write_all(
        &[
            request(7, 10_000, ReplySize::Echo),
            request(8, 3, ReplySize::Echo),
        ]
        .concat(),
    )
    .unwrap();
    let Client::Tcp(tcp) = &s else {
        panic!("half-close is a TCP case");
    };
    tcp.shutdown(Shutdown::Write).unwrap();
    let r = read_replies(&mut s, 2);
    check_echo(&r[0], 7, 10_000);
    check_echo(&r[1], 8, 3);
    assert_closed_by_server(&mut s);
    server.stop().unwrap();
}

pub fn a_client_that_never_reads_does_not_stall_others(engine: Setup) {
    let server = start(engine);
    // Ask for far more reply bytes than the socket buffers hold, and never read them.
    let mut lazy = connect_to(&server.endpoint);
    let mut asks = Vec::new();
    for id in 0..64u64 {
        asks.extend(request(id, 0, ReplySize::Bytes(1 << 20)));
    }
    lazy.write_all(&asks).unwrap();
    run_load(&server.endpoint, "64", "echo", 500.0);
    let mut s = connect_to(&server.endpoint);
    s.write_all(&request(99, 10, ReplySize::Echo)).unwrap();
    check_echo(&read_replies(&mut s, 1)[0], 99, 10);
    drop((lazy, s));
    server.stop().unwrap();
}

pub fn bad_frames_close_only_their_connection(engine: Setup) {
    let server = start(engine);
    let mut good = connect_to(&server.endpoint);
    good.write_all(&request(1, 100, ReplySize::Echo)).unwrap();
    check_echo(&read_replies(&mut good, 1)[0], 1, 100);

    let mut garbage = connect_to(&server.endpoint);
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n and some more bytes")
        .unwrap();
    assert_closed_by_server(&mut garbage);

    let mut oversized = connect_to(&server.endpoint);
    let mut head = request(2, 0, ReplySize::Echo);
    head[..4].copy_from_slice(&(1u32 << 30).to_le_bytes()); // announces 1 GiB
    oversized.write_all(&head[..RequestHeader::LEN]).unwrap();
    assert_closed_by_server(&mut oversized);

    // The well-behaved connection opened before is still served, and new ones are too.
    good.write_all(&request(3, 5000, ReplySize::Echo)).unwrap();
    check_echo(&read_replies(&mut good, 1)[0], 3, 5000);
    run_load(&server.endpoint, "64", "echo", 300.0);
    drop(good);
    let summary = server.stop().unwrap();
    assert_eq!(summary.protocol_errors, 2, "{summary}");
}

/// A bad frame after many requests: their replies get one last write and the server closes
/// the connection without waiting on a peer that never reads them; and the requests before
/// the bad frame reach no other connection (the pool once handed them out with the next
/// connection's token).
pub fn a_bad_frame_is_not_waited_on_and_its_requests_reach_no_one_else(engine: Setup) {
    let server = start(engine);
    let mut good = connect_to(&server.endpoint);
    good.write_all(&request(1, 10, ReplySize::Echo)).unwrap();
    check_echo(&read_replies(&mut good, 1)[0], 1, 10);
    let mut bad = connect_to(&server.endpoint);
    let mut asks = Vec::new();
    for id in 100..164u64 {
        asks.extend(request(id, 0, ReplySize::Bytes(1 << 20)));
    }
    asks.extend_from_slice(&[0xff; RequestHeader::LEN]); // announces a 4 GiB payload
    bad.write_all(&asks).unwrap();
    // 64 MiB of replies owed, none read: the close must not wait for them. The counter is
    // the server's own word that the connection is gone.
    let errors = &server.ctx.stats.protocol_errors;
    let start = std::time::Instant::now();
    while errors.load(std::sync::atomic::Ordering::Relaxed) == 0 && start.elapsed() < BOUND {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        errors.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the connection with the bad frame was still open after {BOUND:?}"
    );
    good.write_all(&request(2, 10, ReplySize::Echo)).unwrap();
    good.write_all(&request(3, 20, ReplySize::Echo)).unwrap();
    let replies = read_replies(&mut good, 2);
    check_echo(&replies[0], 2, 10);
    check_echo(&replies[1], 3, 20);
    drop((good, bad));
    let summary = server.stop().unwrap();
    assert_eq!(summary.protocol_errors, 1, "{summary}");
}

/// Clients that vanish mid-request, as a killed process does (the kernel closes its socket:
/// a FIN, or a reset when replies sat unread), free their connections: the server's open
/// count returns to where it started, and it goes on serving.
pub fn clients_gone_mid_request_free_their_connections(engine: Setup) {
    let server = start(engine);
    let open = || {
        let st = &server.ctx.stats;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        get(&st.accepted) - get(&st.closed)
    };
    for id in 0..8u64 {
        let mut c = connect_to(&server.endpoint);
        let bytes = request(id, 1000, ReplySize::Echo);
        if id % 2 == 1 {
            // Replies owed and never read, then gone: a reset where the kernel sends one.
            c.write_all(&request(100 + id, 0, ReplySize::Bytes(1 << 20)))
                .unwrap();
            if let Client::Tcp(s) = &c {
                socket2::SockRef::from(s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
        }
        // Half a request, then the process is gone.
        c.write_all(&bytes[..bytes.len() / 2]).unwrap();
        drop(c);
    }
    let began = std::time::Instant::now();
    while open() > 0 && began.elapsed() < BOUND {
        std::thread::sleep(Duration::from_millis(2));
    }
    let st = &server.ctx.stats;
    assert_eq!(
        open(),
        0,
        "connections of vanished clients still open after {BOUND:?} \
         (accepted {}, closed {}, accept errors {}, I/O errors {})",
        st.accepted.load(std::sync::atomic::Ordering::Relaxed),
        st.closed.load(std::sync::atomic::Ordering::Relaxed),
        st.accept_errors.load(std::sync::atomic::Ordering::Relaxed),
        st.io_errors.load(std::sync::atomic::Ordering::Relaxed),
    );
    let mut s = connect_to(&server.endpoint);
    s.write_all(&request(7, 10, ReplySize::Echo)).unwrap();
    check_echo(&read_replies(&mut s, 1)[0], 7, 10);
    drop(s);
    server.stop().unwrap();
}

/// Large frames from many clients at once, far past the memory budget: the frames the budget
/// cannot hold wait, unread, and go on as replies give memory back. Every client gets every
/// reply, intact; nothing is closed; the budget never held more than its limit.
pub fn large_frames_past_the_memory_budget_wait_and_all_complete(engine: Setup) {
    const CLIENTS: u64 = 8;
    const ROUNDS: u64 = 3;
    const SIZE: usize = 1 << 20;
    let mut cfg = engine.config();
    cfg.log_errors = std::env::var_os("IOLAB_TEST_LOG").is_some();
    // Room for two of the eight clients' frames at a time.
    let budget = std::sync::Arc::new(MemoryBudget::new(2 * SIZE));
    cfg.session.budget = budget.clone();
    let server = engine::start(cfg).expect("server starts");
    let endpoint = server.endpoint.clone();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || {
                let mut s = connect_to(&endpoint);
                for round in 0..ROUNDS {
                    let id = c * 100 + round;
                    s.write_all(&request(id, SIZE, ReplySize::Echo)).unwrap();
                    check_echo(&read_replies(&mut s, 1)[0], id, SIZE);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client of the flood failed");
    }
    assert!(
        budget.refusals() > 0,
        "eight 1 MiB frames at once never met a 2 MiB budget"
    );
    assert!(
        budget.peak() <= budget.limit(),
        "peak {} over the limit",
        budget.peak()
    );
    let summary = server.stop().unwrap();
    assert_eq!(budget.held(), 0, "closed connections keep nothing reserved");
    assert_eq!(summary.requests, CLIENTS * ROUNDS, "{summary}");
    assert_eq!((summary.protocol_errors, summary.io_errors), (0, 0), "{summary}");
    assert_eq!(summary.memory_waits, budget.refusals(), "{summary}");
}

/// Requests that take longer than the request timeout to arrive close their connections: one
/// client stalls half-way through a frame, one trickles a header a byte at a time. A client
/// idle between requests for longer than the timeout is left alone, and served.
pub fn slow_requests_are_timed_out_and_idle_clients_are_not(engine: Setup) {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let mut cfg = engine.config();
    cfg.log_errors = std::env::var_os("IOLAB_TEST_LOG").is_some();
    cfg.session.request_timeout = TIMEOUT;
    let server = engine::start(cfg).expect("server starts");
    let mut idle = connect_to(&server.endpoint);
    idle.write_all(&request(1, 10, ReplySize::Echo)).unwrap();
    check_echo(&read_replies(&mut idle, 1)[0], 1, 10);
    let frame = request(2, 1000, ReplySize::Echo);
    let mut stalled = connect_to(&server.endpoint);
    stalled.write_all(&frame[..600]).unwrap();
    let mut trickler = connect_to(&server.endpoint);
    // Closed by the server: reading ends (end of file or reset), with no reply.
    let closed = |c: &mut Client| {
        let mut buf = [0u8; 64];
        matches!(std::io::Read::read(c, &mut buf), Ok(0) | Err(_))
    };
    let began = std::time::Instant::now();
    let mut trickled = 0;
    while trickled < frame.len() && began.elapsed() < BOUND {
        if trickler.write_all(&frame[trickled..trickled + 1]).is_err() {
            break; // the server closed it
        }
        trickled += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        trickled < frame.len(),
        "a {}-byte frame trickled in over {:?} was never timed out",
        frame.len(),
        began.elapsed()
    );
    assert!(
        closed(&mut trickler),
        "the trickling client's connection is still open"
    );
    assert!(
        closed(&mut stalled),
        "the stalled client's connection is still open"
    );
    // Idle for well over the timeout (what is under test is a span of time), then a
    // request: answered.
    std::thread::sleep((2 * TIMEOUT).saturating_sub(began.elapsed()));
    idle.write_all(&request(3, 10, ReplySize::Echo)).unwrap();
    check_echo(&read_replies(&mut idle, 1)[0], 3, 10);
    drop(idle);
    let summary = server.stop().unwrap();
    assert_eq!(summary.request_timeouts, 2, "{summary}");
    assert_eq!(summary.protocol_errors, 0, "{summary}");
}

/// The real binary: `listening on` first, SIGTERM answers what is in flight, a summary, exit 0.
pub fn sigterm_answers_requests_in_flight(engine: Setup) {
    let (child, addr, stdout) = spawn_server(&engine.args());
    let mut s = connect(addr);
    // One round trip first: the connection is then accepted and served, not in the backlog.
    s.write_all(&request(1000, 1, ReplySize::Echo)).unwrap();
    check_echo(&read_replies(&mut s, 1)[0], 1000, 1);
    // Each request spins 2 ms, so most are still queued or running when the signal lands.
    let mut all = Vec::new();
    for id in 0..50u64 {
        all.extend(request_with_spin(id, 100, ReplySize::Echo, 2_000_000));
    }
    s.write_all(&all).unwrap();
    let (status, rest) = std::thread::scope(|scope| {
        let replies = scope.spawn(|| read_replies(&mut s, 50));
        let (status, rest) = terminate(child, stdout);
        for (i, r) in replies.join().unwrap().iter().enumerate() {
            check_echo(r, i as u64, 100);
        }
        (status, rest)
    });
    assert!(status.success(), "exit status {status}");
    assert!(
        rest.contains("summary: engine=") && rest.contains("requests=51"),
        "{rest}"
    );
}

/// SIGTERM while megabytes of replies are still to be written (the client has read none
/// yet): the drain delivers every one of them, whole and in order.
pub fn sigterm_delivers_large_replies_in_flight(engine: Setup) {
    const REPLY: usize = 1 << 20;
    let (child, addr, stdout) = spawn_server(&engine.args());
    let mut s = connect(addr);
    let mut asks = Vec::new();
    for id in 0..16u64 {
        asks.extend(request(id, 0, ReplySize::Bytes(REPLY as u32)));
    }
    s.write_all(&asks).unwrap();
    // The server has started writing (16 MiB cannot fit the socket buffers, so most of it is
    // still in the server when the signal lands).
    s.peek(&mut [0u8; 1]).expect("a first reply byte");
    let (status, rest) = std::thread::scope(|scope| {
        let replies = scope.spawn(|| read_replies(&mut s, 16));
        let (status, rest) = terminate(child, stdout);
        for (i, r) in replies.join().unwrap().iter().enumerate() {
            assert_eq!((r.header.id, r.payload.len()), (i as u64, REPLY));
            assert!(pattern_matches(i as u64, 0, &r.payload), "reply {i} content");
        }
        (status, rest)
    });
    assert!(status.success(), "exit status {status}");
    assert!(rest.contains("requests=16"), "{rest}");
}

/// A client that never reads cannot hold a stopping server: after `--drain-timeout` its
/// connection is cut off, the server says so, and exits cleanly.
pub fn the_drain_cuts_off_a_client_that_never_reads(engine: Setup) {
    let mut args = engine.args();
    args.extend(["--drain-timeout".into(), "200ms".into()]);
    let (child, addr, stdout) = spawn_server_with_stderr(&args);
    let mut lazy = connect(addr);
    let mut asks = Vec::new();
    for id in 0..64u64 {
        asks.extend(request(id, 0, ReplySize::Bytes(1 << 20)));
    }
    lazy.write_all(&asks).unwrap();
    lazy.peek(&mut [0u8; 1]).expect("a first reply byte");
    let (status, rest, err) = terminate_within(child, stdout, BOUND);
    assert!(status.success(), "exit status {status}: {err}");
    assert!(
        err.contains("still writing after 200ms; cutting them off"),
        "{err}"
    );
    assert!(rest.contains("summary: engine="), "{rest}");
    // What was written before the cut is readable, then the connection ends, short of the
    // 64 MiB asked for.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match std::io::Read::read(&mut lazy, &mut buf) {
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the cut-off connection was never ended ({e}) after {got} bytes"),
            Ok(n) => got += n,
        }
        assert!(got < 64 << 20, "the whole 64 MiB arrived: nothing was cut off");
    }
}

macro_rules! conformance {
    ($($name:ident => $engine:expr),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test] fn load_with_mixed_payloads() { super::load_with_mixed_payloads($engine) }
            #[test] fn a_closed_loop_is_answered_in_full() { super::a_closed_loop_is_answered_in_full($engine) }
            #[test] fn echo_at_the_edges() { super::echo_at_the_edges($engine) }
            #[test] fn pipelined_replies_stay_in_order() { super::pipelined_replies_stay_in_order($engine) }
            #[test] fn thousands_of_pipelined_requests_stay_in_order() { super::thousands_of_pipelined_requests_stay_in_order($engine) }
            #[test] fn one_byte_at_a_time() { super::one_byte_at_a_time($engine) }
            #[test] fn half_close_after_last_request() { super::half_close_after_last_request($engine) }
            #[test] fn a_client_that_never_reads_does_not_stall_others() { super::a_client_that_never_reads_does_not_stall_others($engine) }
            #[test] fn bad_frames_close_only_their_connection() { super::bad_frames_close_only_their_connection($engine) }
            #[test] fn a_bad_frame_is_not_waited_on() { super::a_bad_frame_is_not_waited_on_and_its_requests_reach_no_one_else($engine) }
            #[test] fn clients_gone_mid_request_free_their_connections() { super::clients_gone_mid_request_free_their_connections($engine) }
            #[test] fn large_frames_past_the_memory_budget_wait() { super::large_frames_past_the_memory_budget_wait_and_all_complete($engine) }
            #[test] fn slow_requests_are_timed_out() { super::slow_requests_are_timed_out_and_idle_clients_are_not($engine) }
            #[test] fn sigterm_answers_requests_in_flight() { super::sigterm_answers_requests_in_flight($engine) }
            #[test] fn sigterm_delivers_large_replies_in_flight() { super::sigterm_delivers_large_replies_in_flight($engine) }
            #[test] fn the_drain_cuts_off_a_client_that_never_reads() { super::the_drain_cuts_off_a_client_that_never_reads($engine) }
        }
    )*};
}

/// `shm`, with the cases that apply. Three do not: `half_close_after_last_request` (a slot
/// has no half-close: a client that closes is done, and the server drains and frees the
/// slot), `sigterm_answers_requests_in_flight`, which reads the TCP address the binary prints
/// (tests/shm.rs runs the shm binary, SIGTERM included), and `slow_requests_are_timed_out`
/// (shm has no request timeout: its clients are local processes, watched for liveness).
mod shm {
    use super::*;
    const SHM: Setup = setup(EngineKind::Shm);
    #[test]
    fn load_with_mixed_payloads() {
        super::load_with_mixed_payloads(SHM)
    }
    #[test]
    fn echo_at_the_edges() {
        super::echo_at_the_edges(SHM)
    }
    #[test]
    fn a_closed_loop_is_answered_in_full() {
        super::a_closed_loop_is_answered_in_full(SHM)
    }
    #[test]
    fn pipelined_replies_stay_in_order() {
        super::pipelined_replies_stay_in_order(SHM)
    }
    #[test]
    fn a_bad_frame_is_not_waited_on() {
        super::a_bad_frame_is_not_waited_on_and_its_requests_reach_no_one_else(SHM)
    }
    #[test]
    fn clients_gone_mid_request_free_their_connections() {
        super::clients_gone_mid_request_free_their_connections(SHM)
    }
    #[test]
    fn one_byte_at_a_time() {
        super::one_byte_at_a_time(SHM)
    }
    #[test]
    fn large_frames_past_the_memory_budget_wait() {
        super::large_frames_past_the_memory_budget_wait_and_all_complete(SHM)
    }
    #[test]
    fn a_client_that_never_reads_does_not_stall_others() {
        super::a_client_that_never_reads_does_not_stall_others(SHM)
    }
    #[test]
    fn bad_frames_close_only_their_connection() {
        super::bad_frames_close_only_their_connection(SHM)
    }
}

/// The user-space stack: every case, each inside a network namespace made for it (the TAP
/// device, its addresses, the server and every client live there; nothing touches the host's
/// network). The server is at the TAP's address, reached with plain kernel TCP.
macro_rules! conformance_in_netns {
    ($($name:ident => $engine:expr),* $(,)?) => {$(
        mod $name {
            use super::*;
            fn run(case: fn(Setup)) {
                in_private_netns(stringify!($name), || case($engine));
            }
            #[test] fn load_with_mixed_payloads() { run(super::load_with_mixed_payloads) }
            #[test] fn a_closed_loop_is_answered_in_full() { run(super::a_closed_loop_is_answered_in_full) }
            #[test] fn echo_at_the_edges() { run(super::echo_at_the_edges) }
            #[test] fn pipelined_replies_stay_in_order() { run(super::pipelined_replies_stay_in_order) }
            #[test] fn thousands_of_pipelined_requests_stay_in_order() { run(super::thousands_of_pipelined_requests_stay_in_order) }
            #[test] fn one_byte_at_a_time() { run(super::one_byte_at_a_time) }
            #[test] fn half_close_after_last_request() { run(super::half_close_after_last_request) }
            #[test] fn a_client_that_never_reads_does_not_stall_others() { run(super::a_client_that_never_reads_does_not_stall_others) }
            #[test] fn bad_frames_close_only_their_connection() { run(super::bad_frames_close_only_their_connection) }
            #[test] fn a_bad_frame_is_not_waited_on() { run(super::a_bad_frame_is_not_waited_on_and_its_requests_reach_no_one_else) }
            #[test] fn clients_gone_mid_request_free_their_connections() { run(super::clients_gone_mid_request_free_their_connections) }
            #[test] fn large_frames_past_the_memory_budget_wait() { run(super::large_frames_past_the_memory_budget_wait_and_all_complete) }
            #[test] fn slow_requests_are_timed_out() { run(super::slow_requests_are_timed_out_and_idle_clients_are_not) }
            #[test] fn sigterm_answers_requests_in_flight() { run(super::sigterm_answers_requests_in_flight) }
            #[test] fn sigterm_delivers_large_replies_in_flight() { run(super::sigterm_delivers_large_replies_in_flight) }
            #[test] fn the_drain_cuts_off_a_client_that_never_reads() { run(super::the_drain_cuts_off_a_client_that_never_reads) }
        }
    )*};
}

conformance_in_netns! {
    userspace => setup(EngineKind::Userspace),
    userspace_threads2 => setup(EngineKind::Userspace).threads(2),
}

conformance! {
    threads => setup(EngineKind::Threads),
    iovec => setup(EngineKind::Iovec),
    select => setup(EngineKind::Select),
    poll => setup(EngineKind::Poll),
    select_threads2 => setup(EngineKind::Select).threads(2),
    poll_threads2 => setup(EngineKind::Poll).threads(2),
    epoll_edge => setup(EngineKind::Epoll),
    epoll_level => setup(EngineKind::Epoll).level(),
    epoll_threads2 => setup(EngineKind::Epoll).threads(2),
    pool => setup(EngineKind::Pool),
    uring => setup(EngineKind::Uring),
    uring_single_recv => setup(EngineKind::Uring).recv(RecvMode::Single),
    uring_registered_files => setup(EngineKind::Uring).register_files(),
    uring_zero_copy => setup(EngineKind::Uring).zero_copy_from(1),
    uring_sqpoll => setup(EngineKind::Uring).sqpoll(),
    uring_threads2 => setup(EngineKind::Uring).threads(2),
    tokio => setup(EngineKind::Tokio),
    tokio_threads2 => setup(EngineKind::Tokio).threads(2),
    monoio => setup(EngineKind::Monoio),
    monoio_threads2 => setup(EngineKind::Monoio).threads(2),
}
