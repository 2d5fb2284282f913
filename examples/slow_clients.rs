//! Slow clients (slowloris) at a small cost of their own: N connections, each sending one byte
//! a second of a request it never finishes in time, against a running `iolab serve`.
//!
//!     cargo run --release --example slow_clients -- PORT http|frame [CONNECTIONS] [SECONDS] [READY_FILE] [hold]
//!
//! `hold` opens the connections and sends nothing: what idle connections alone cost, the
//! control for what their trickling costs.
//!
//! The same attack as `scripts/slow_clients.py` (sends spread evenly over each second, a
//! connection the server closes is counted and opened again), for measuring what the attack
//! does to a server on a two-core machine, where the attacker must share a core: the Python
//! attacker spends tens of microseconds of interpreter per byte, this one a send and a read.
//! SIGTERM ends it; it then prints one JSON object: connections, bytes trickled, closes by
//! the server, connections refused.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use iolab::sansio::frame::{Header as _, ReplySize, RequestHeader};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn frame_head() -> Vec<u8> {
    // The header of a 64-byte echo frame, as the generator would send it.
    let header = RequestHeader {
        payload_len: 64,
        id: 7,
        send_ns: 70,
        spin_ns: 0,
        reply: ReplySize::Echo,
    };
    let mut h = vec![0; RequestHeader::LEN];
    header.emit(&mut h);
    h
}

fn http_head() -> Vec<u8> {
    let mut h = b"GET /index.html HTTP/1.1\r\nHost: slow\r\n".to_vec();
    for i in 0..40 {
        h.extend_from_slice(format!("X-Slow-{i}: {}\r\n", "y".repeat(40)).as_bytes());
    }
    h.extend_from_slice(b"\r\n");
    h
}

fn open(addr: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: slow_clients PORT http|frame [CONNECTIONS] [SECONDS] [READY_FILE] [hold]";
    let (Some(port), Some(kind)) = (args.first().and_then(|p| p.parse::<u16>().ok()), args.get(1)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let head = match kind.as_str() {
        "http" => http_head(),
        "frame" => frame_head(),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000).max(1);
    let seconds: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20.0);
    let hold = args.get(5).is_some_and(|a| a == "hold");
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_term as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // Connections arrive over one second, as an attacker's would, not all at once.
    let (mut conns, mut offsets) = (Vec::with_capacity(n), vec![0usize; n]);
    let mut refused = 0u64;
    let opened = Instant::now();
    for i in 0..n {
        let due = opened + Duration::from_secs_f64(i as f64 / n as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let s = open(addr);
        refused += u64::from(s.is_none());
        conns.push(s);
    }
    if let Some(ready) = args.get(4) {
        if let Err(e) = std::fs::write(ready, b"") {
            eprintln!("slow_clients: cannot write {ready}: {e}");
        }
    }
    let (mut sent, mut closed_by_server) = (0u64, 0u64);
    let began = Instant::now();
    let mut buf = [0u8; 1 << 16];
    let mut tick = 0u64;
    while hold && began.elapsed().as_secs_f64() < seconds && !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    while !hold && began.elapsed().as_secs_f64() < seconds && !STOP.load(Ordering::Relaxed) {
        // Connection i sends at i/n of every second.
        let i = (tick % n as u64) as usize;
        let due = began + Duration::from_secs_f64(tick as f64 / n as f64);
        tick += 1;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let mut reopen = |conn: &mut Option<TcpStream>, offset: &mut usize| {
            *conn = open(addr);
            *offset = 0;
            refused += u64::from(conn.is_none());
        };
        let Some(s) = conns[i].as_mut() else {
            reopen(&mut conns[i], &mut offsets[i]);
            continue;
        };
        // Anything to read means the server answered or closed: a close is what we count.
        let gone = match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        };
        let gone = gone || s.write(&head[offsets[i] % head.len()..][..1]).is_err();
        if gone {
            closed_by_server += 1;
            reopen(&mut conns[i], &mut offsets[i]);
        } else {
            offsets[i] += 1;
            sent += 1;
        }
    }
    println!(
        "{{\"kind\": \"{kind}\", \"connections\": {n}, \"bytes_trickled\": {sent}, \
         \"closed_by_server\": {closed_by_server}, \"refused\": {refused}}}"
    );
}
