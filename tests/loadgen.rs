//! The load generator's own promises, against a real server on loopback.

use std::time::Duration;

use iolab::engine::{self, EngineKind, ServeConfig};
use iolab::loadgen::{self, ArrivalKind, ConnectMode, DriverKind, LoadConfig};

fn server() -> engine::RunningServer {
    engine::start(ServeConfig::new(
        EngineKind::Iovec,
        "127.0.0.1:0".parse().unwrap(),
    ))
    .unwrap()
}

#[test]
fn concurrent_connects_over_several_threads_and_intervals_add_up() {
    for driver in [DriverKind::Epoll, DriverKind::Uring] {
        concurrent_connects_with(driver);
    }
}

fn concurrent_connects_with(driver: DriverKind) {
    let server = server();
    let mut cfg = LoadConfig::new(server.addr, 2000.0, Duration::from_secs(1));
    cfg.connections = 32;
    cfg.threads = 3;
    cfg.driver = driver;
    cfg.connect = ConnectMode::Concurrent;
    cfg.log_interval = Some(Duration::from_millis(250));
    cfg.warmup = Duration::from_millis(200);
    let mut printed = 0;
    let r = loadgen::run(cfg, &mut |_| printed += 1).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.errors(), 0);
    assert!(r.m.sent > 0 && r.m.completed == r.m.sent);
    // Every measured completion lands in exactly one interval.
    assert_eq!(
        r.intervals.iter().map(|i| i.completed).sum::<u64>(),
        r.m.completed
    );
    assert_eq!(printed, r.intervals.len());
    assert!(r.intervals.len() >= 4, "{} intervals", r.intervals.len());
    // The schedule itself is Poisson at the offered rate (deterministic for a seed).
    assert!(r.arrivals.scheduled.p_value > 0.01, "{:?}", r.arrivals.scheduled);
    let summary = server.stop().unwrap();
    assert_eq!(summary.connections, 32);
}

#[test]
fn a_rate_below_the_thread_count_still_runs() {
    let server = server();
    let mut cfg = LoadConfig::new(server.addr, 3.0, Duration::from_secs(2));
    cfg.connections = 8;
    cfg.threads = 4;
    let r = loadgen::run(cfg, &mut |_| {}).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.errors(), 0);
    // The schedule is the seed's (7 sends for seed 1): each thread's share is under one send
    // a second, and a run of nothing would pass the checks above too.
    assert!(r.m.sent >= 2, "sent {}", r.m.sent);
    assert_eq!(r.m.completed, r.m.sent);
    server.stop().unwrap();
}

#[test]
fn constant_arrivals_are_evenly_spaced() {
    let server = server();
    let mut cfg = LoadConfig::new(server.addr, 200.0, Duration::from_secs(1));
    cfg.arrival = ArrivalKind::Constant;
    cfg.connections = 4;
    let r = loadgen::run(cfg, &mut |_| {}).unwrap();
    assert_eq!(r.error, None);
    assert!((199..=201).contains(&r.m.sent), "sent {}", r.m.sent);
    assert!(
        r.arrivals.scheduled.p_value < 1e-6,
        "constant gaps must fail the exponential test"
    );
    // What was sent follows the schedule: most gaps sit near the 5 ms mean. A machine stall
    // bunches the sends behind it (one long gap, then several short ones), so the share of
    // gaps, not their spread, is the claim; a Poisson stream puts only 15% of its gaps within
    // 20% of the mean, an even one on a quiet machine all of them.
    let mean_gap_ns = 1e9 / 200.0;
    let near = r
        .arrivals
        .gaps_ns
        .iter()
        .filter(|&&g| (g - mean_gap_ns).abs() <= 0.2 * mean_gap_ns)
        .count();
    assert!(
        near * 2 >= r.arrivals.gaps_ns.len(),
        "only {near} of {} gaps within 20% of the mean",
        r.arrivals.gaps_ns.len()
    );
    server.stop().unwrap();
}

#[test]
fn the_in_flight_cap_counts_overflow_instead_of_hiding_it() {
    // One connection, one request in flight at a time, each taking 5 ms of server CPU, offered
    // at 1000 rps: most sends find the connection busy and must show up as overflow.
    let server = server();
    let mut cfg = LoadConfig::new(server.addr, 1000.0, Duration::from_millis(500));
    cfg.connections = 1;
    cfg.max_in_flight = 1;
    cfg.work = "fixed:5ms".parse().unwrap();
    let r = loadgen::run(cfg, &mut |_| {}).unwrap();
    assert_eq!(r.error, None);
    assert!(r.m.overflow > 0, "no overflow counted");
    assert_eq!(r.errors(), r.m.overflow + r.m.bad_replies + r.m.lost);
    assert_eq!(r.summary().error_kinds.overflow, r.m.overflow);
    server.stop().unwrap();
}

#[test]
fn idle_connections_are_held_open_for_the_whole_run() {
    let server = engine::start(ServeConfig::new(EngineKind::Poll, "127.0.0.1:0".parse().unwrap())).unwrap();
    let mut cfg = LoadConfig::new(server.addr, 500.0, Duration::from_millis(500));
    cfg.connections = 4;
    cfg.idle_connections = 200;
    let r = loadgen::run(cfg, &mut |_| {}).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.errors(), 0);
    assert_eq!(r.summary().config.idle_connections, 200);
    let summary = server.stop().unwrap();
    assert_eq!(summary.connections, 204);
    assert_eq!(
        summary.protocol_errors, 0,
        "idle connections closing between frames are clean"
    );
}

/// Both drivers verify every byte of large replies that arrive in many pieces, over
/// sequential and concurrent connects alike.
#[test]
fn both_drivers_carry_large_replies_intact() {
    for driver in [DriverKind::Epoll, DriverKind::Uring] {
        for connect in [ConnectMode::Sequential, ConnectMode::Concurrent] {
            let server = server();
            let mut cfg = LoadConfig::new(server.addr, 300.0, Duration::from_millis(500));
            cfg.connections = 4;
            cfg.driver = driver;
            cfg.connect = connect;
            cfg.request_size = "64KiB".parse().unwrap();
            cfg.reply = "fixed:256KiB".parse().unwrap();
            let r = loadgen::run(cfg, &mut |_| {}).unwrap();
            assert_eq!(r.error, None, "{driver:?} {connect:?}");
            assert_eq!(r.errors(), 0, "{driver:?} {connect:?}");
            assert!(r.m.completed > 50, "{driver:?}: {}", r.m.completed);
            assert_eq!(
                r.m.bytes_received,
                r.m.completed * (24 + 256 * 1024),
                "{driver:?}"
            );
            server.stop().unwrap();
        }
    }
}

/// A server that goes away mid-run is reported, not waited on, with either driver. It is
/// stopped once the load's first interval has ended, so the load is connected and sending.
#[test]
fn a_vanishing_server_is_reported_by_both_drivers() {
    for driver in [DriverKind::Epoll, DriverKind::Uring] {
        let mut server = Some(server());
        let addr = server.as_ref().unwrap().addr;
        let mut cfg = LoadConfig::new(addr, 1000.0, Duration::from_secs(3));
        cfg.driver = driver;
        cfg.log_interval = Some(Duration::from_millis(100));
        let mut completed_before_stop = None;
        let r = loadgen::run(cfg, &mut |line| {
            if let Some(s) = server.take() {
                completed_before_stop = Some(line.completed);
                s.stop().unwrap();
            }
        })
        .unwrap();
        assert!(
            server.is_none(),
            "{driver:?}: no interval ended before the run did"
        );
        assert!(
            completed_before_stop.is_some_and(|c| c > 0),
            "{driver:?}: the load was answered before the stop"
        );
        let e = r.error.expect("the run reports the lost server");
        assert!(e.contains("closed connection"), "{driver:?}: {e}");
    }
}

/// `--requests N` stops after exactly N measured requests, answered, in either loop with
/// either driver, long before `--duration` would have.
#[test]
fn requests_n_completes_exactly_n_in_either_loop() {
    for driver in [DriverKind::Epoll, DriverKind::Uring] {
        for closed in [None, Some(3)] {
            let server = server();
            let mut cfg = LoadConfig::new(server.addr, 5000.0, Duration::from_secs(60));
            cfg.connections = 8;
            cfg.threads = 2;
            cfg.driver = driver;
            cfg.closed_loop = closed;
            cfg.requests = Some(777);
            cfg.warmup = Duration::from_millis(100);
            let r = loadgen::run(cfg, &mut |_| {}).unwrap();
            let what = format!("{driver:?}, closed {closed:?}");
            assert_eq!((r.error.as_deref(), r.errors()), (None, 0), "{what}");
            assert_eq!((r.m.sent, r.m.completed), (777, 777), "{what}");
            let s = r.summary();
            assert!(s.duration_s < 59.0, "{what}: the run waited for --duration");
            assert!(s.achieved_rps > 0.0, "{what}");
            server.stop().unwrap();
        }
    }
}

/// A rate so low that no send falls inside the window still runs the window's length (it
/// used to end at once, its generator "busy NaN%").
#[test]
fn a_window_without_a_send_still_lasts_its_duration() {
    let server = server();
    let cfg = LoadConfig::new(server.addr, 0.01, Duration::from_millis(400));
    let r = loadgen::run(cfg, &mut |_| {}).unwrap();
    assert_eq!((r.error.as_deref(), r.m.sent), (None, 0));
    assert!(
        r.wall >= Duration::from_millis(400),
        "the run ended after {:?}",
        r.wall
    );
    assert!(r.generator_busy.is_finite(), "busy {}", r.generator_busy);
    server.stop().unwrap();
}
