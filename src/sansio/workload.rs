//! Workloads: the application logic every engine runs, as pure functions from a request to
//! its reply. No sockets here: an engine decides *when* and *where* (which thread) a request
//! runs; the workload decides only *what* the reply is.
//!
//! - echo: the reply payload is the request payload, moved, not copied;
//! - payload: a reply of the requested size, the id-seeded verification pattern;
//! - spin: busy CPU for the requested time before replying (any request may ask for it).

use std::time::{Duration, Instant};

use crate::sansio::frame::{Body, Frame, OutFrame, ReplyHeader, ReplySize, RequestHeader};

/// Runs one request to completion and returns the reply frame.
pub fn execute(request: Frame<RequestHeader>) -> OutFrame {
    let header = request.header;
    if header.spin_ns > 0 {
        spin(Duration::from_nanos(header.spin_ns));
    }
    let body = match header.reply {
        ReplySize::Echo => Body::Owned(request.payload),
        ReplySize::Bytes(len) => Body::Pattern {
            seed: header.id,
            len: len as usize,
        },
    };
    OutFrame::new(
        ReplyHeader {
            payload_len: 0,
            id: header.id,
            send_ns: header.send_ns,
        },
        body,
    )
}

/// Keeps this core busy for `duration`, measured on the monotonic clock.
///
/// Polling the clock itself (a vDSO call of ~20 ns) rather than counting loop iterations
/// calibrated once keeps the spin honest when the CPU changes frequency; it never returns
/// early, and it overshoots by one clock read plus whatever preemption adds.
pub fn spin(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sansio::frame::{pattern_matches, Header};

    fn req(reply: ReplySize, payload: Vec<u8>, spin_ns: u64) -> Frame<RequestHeader> {
        Frame {
            header: RequestHeader {
                payload_len: payload.len() as u32,
                id: 77,
                send_ns: 123,
                spin_ns,
                reply,
            },
            payload,
        }
    }

    #[test]
    fn echo_moves_the_payload() {
        let payload = vec![1, 2, 3, 4];
        let ptr = payload.as_ptr();
        let reply = execute(req(ReplySize::Echo, payload, 0));
        assert_eq!(reply.len(), ReplyHeader::LEN + 4);
        let mut q = crate::sansio::frame::OutQueue::new(4096);
        q.push(reply);
        // The header slice, then the payload slice that still lives where the request put it.
        let mut s = [std::io::IoSlice::new(&[]); 4];
        assert_eq!(q.fill(&mut s), 2);
        assert_eq!(&*s[1], &[1, 2, 3, 4]);
        assert_eq!(s[1].as_ptr(), ptr);
    }

    #[test]
    fn payload_reply_has_the_requested_size_and_pattern() {
        let reply = execute(req(ReplySize::Bytes(100_000), vec![9; 10], 0));
        assert_eq!(reply.len(), ReplyHeader::LEN + 100_000);
        let mut q = crate::sansio::frame::OutQueue::new(4096);
        q.push(reply);
        let mut body = Vec::new();
        while let Some(s) = q.front() {
            body.extend_from_slice(s);
            let n = s.len();
            q.advance(n);
        }
        assert!(pattern_matches(77, 0, &body[ReplyHeader::LEN..]));
    }

    #[test]
    fn spin_never_returns_early() {
        for us in [0u64, 1, 10, 50] {
            let want = Duration::from_micros(us);
            let t = Instant::now();
            spin(want);
            assert!(t.elapsed() >= want);
        }
        let t = Instant::now();
        execute(req(ReplySize::Echo, vec![], 20_000));
        assert!(t.elapsed() >= Duration::from_micros(20));
    }

    /// Accuracy of the spin at 10 us, as the median over many runs. A measurement, not a CI
    /// assertion (timings never are): `cargo test --release -- --ignored spin_accuracy --nocapture`.
    #[test]
    #[ignore]
    fn spin_accuracy() {
        let want = Duration::from_micros(10);
        let mut errors: Vec<i64> = (0..20_000)
            .map(|_| {
                let t = Instant::now();
                spin(want);
                t.elapsed().as_nanos() as i64 - want.as_nanos() as i64
            })
            .collect();
        errors.sort_unstable();
        let at = |q: f64| errors[((errors.len() - 1) as f64 * q) as usize];
        println!(
            "spin(10us) error: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
            at(0.5),
            at(0.99),
            at(0.999),
            at(1.0)
        );
        assert!(at(0.5).abs() <= 2_000, "median error {} ns", at(0.5));
    }
}
