//! Micro-benchmarks of the hot paths every request crosses: the frame codec, one session
//! turn, an HTTP parse, and the queue API's push / pop / wait_next over a transport that
//! costs nothing (so what is measured is the API's own bookkeeping).
//!
//! `cargo bench --bench hot_paths` before and after a change to one of them; `scripts/bench.sh`
//! holds the end-to-end figures. Timings live here, never in tests.

use std::hint::black_box;
use std::io;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iolab::queue::{Backend, Endpoint, LibOs, Outcome, Qd, Queues, State};
use iolab::sansio::frame::{Body, FrameDecoder, OutFrame, ReplySize, RequestHeader};
use iolab::sansio::http::{HttpDecoder, HttpLimits};
use iolab::sansio::session::{ServerSession, SessionConfig};

fn request(id: u64, payload: usize) -> Vec<u8> {
    let header = RequestHeader {
        payload_len: payload as u32,
        id,
        send_ns: 123,
        spin_ns: 0,
        reply: ReplySize::Echo,
    };
    let frame = OutFrame::new(header, Body::Owned(vec![7; payload]));
    let mut out = iolab::sansio::frame::OutQueue::new(4096);
    out.push(frame);
    let mut bytes = Vec::new();
    while let Some(s) = out.front() {
        bytes.extend_from_slice(s);
        let n = s.len();
        out.advance(n);
    }
    bytes
}

fn frame_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode 64 B request", |b| {
        let mut id = 0;
        b.iter(|| {
            id += 1;
            black_box(request(id, 64))
        })
    });
    let bytes = request(1, 64);
    g.bench_function("decode 64 B request", |b| {
        let mut decoder = FrameDecoder::<RequestHeader>::new(1 << 20);
        b.iter(|| {
            let mut at = 0;
            while at < bytes.len() {
                let (used, frame) = decoder.decode(&bytes[at..]).expect("a valid frame");
                at += used;
                black_box(frame);
            }
        })
    });
    g.finish();
}

fn session_turn(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(1));
    let bytes = request(1, 64);
    g.bench_function("64 B echo: receive, reply, write", |b| {
        let mut session = ServerSession::new(&SessionConfig::default());
        b.iter(|| {
            session.receive(&bytes).expect("a valid request");
            while let Some(s) = session.out().front() {
                let n = black_box(s).len();
                session.wrote(n);
            }
        })
    });
    g.finish();
}

fn http_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Elements(1));
    let request =
        b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";
    g.bench_function("parse a wrk GET", |b| {
        let mut decoder = HttpDecoder::new(HttpLimits::default());
        b.iter(|| {
            decoder.push(request);
            black_box(
                decoder
                    .next_request()
                    .expect("one request")
                    .expect("a valid request"),
            )
        })
    });
    // A slow client: the same head arriving one byte per read, as a trickling peer sends it.
    g.bench_function("parse a wrk GET pushed one byte at a time", |b| {
        let mut decoder = HttpDecoder::new(HttpLimits::default());
        b.iter(|| {
            for byte in request.chunks(1) {
                decoder.push(byte);
                if let Some(parsed) = decoder.next_request() {
                    black_box(parsed.expect("a valid request"));
                }
            }
        })
    });
    g.finish();
}

/// A transport that echoes each push straight back into the same queue's inbox.
struct Mirror {
    buf: Vec<u8>,
}

impl Backend for Mirror {
    fn connect(&mut self, qd: Qd, _: &Endpoint, queues: &mut Queues) -> io::Result<()> {
        if let Some(mut q) = queues.get_mut(qd) {
            q.set_state(State::Open);
        }
        Ok(())
    }
    fn listen(&mut self, _: Qd, _: &Endpoint, _: &mut Queues) -> io::Result<()> {
        Ok(())
    }
    fn progress(&mut self, _: &mut Queues, _: Duration) -> io::Result<()> {
        Ok(())
    }
    fn kick(&mut self, qd: Qd, queues: &mut Queues) -> io::Result<()> {
        if let Some(mut q) = queues.get_mut(qd) {
            self.buf.clear();
            self.buf.extend_from_slice(q.pending_out());
            let n = self.buf.len();
            q.sent(n);
            q.deliver(&self.buf);
        }
        Ok(())
    }
    fn close(&mut self, _: Qd) {}
}

fn queue_api(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(1));
    for connections in [1usize, 64, 1024] {
        g.bench_function(format!("push+pop+wait_next, {connections} connections"), |b| {
            let mut os = LibOs::new(Box::new(Mirror { buf: Vec::new() }));
            let qds: Vec<Qd> = (0..connections)
                .map(|_| {
                    let (qd, t) = os.connect(&Endpoint::Shm("bench".into())).expect("connect");
                    os.wait_any(&[t], Duration::ZERO)
                        .expect("wait")
                        .expect("connected");
                    os.pop(qd);
                    qd
                })
                .collect();
            let payload = [7u8; 64];
            let mut next = 0;
            b.iter(|| {
                let qd = qds[next % qds.len()];
                next += 1;
                os.push(qd, &payload).expect("push");
                // The push's completion and the echo's pop.
                for _ in 0..2 {
                    let (_, done) = os.wait_next(Duration::ZERO).expect("wait").expect("a completion");
                    if let Outcome::Popped(data) = done.outcome {
                        os.recycle(black_box(data));
                        os.pop(qd);
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, frame_codec, session_turn, http_parse, queue_api);
criterion_main!(benches);
