//! A server session fed arbitrary bytes in arbitrary pieces, its replies drained as a socket
//! that takes a few bytes at a time would: no panic; a reply only for a complete request, in
//! order (checked against a reference decode of the same bytes); nothing read after a
//! protocol error; output bounded while the engine respects back-pressure.
//!
//! And the memory budget: frames may announce more than a connection's floor, against a
//! budget that another (phantom) connection holds full for the first half of the input, so
//! reservations are refused, wait, and go on once it lets go. Nothing is lost by the wait
//! (the replies are still the reference's prefix), the budget never holds more than its
//! limit beyond the phantom, and a dropped session gives back all it reserved.
#![no_main]

use std::io::IoSlice;
use std::sync::Arc;

use iolab::sansio::budget::MemoryBudget;
use iolab::sansio::frame::{FrameDecoder, ReplyHeader, RequestHeader};
use iolab::sansio::session::{Next, ServerSession, SessionConfig};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 256 << 10;
const BUDGET: usize = 300 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let budget = Arc::new(MemoryBudget::new(BUDGET));
    // The phantom: another connection holding the whole budget until half the input is fed.
    budget.take(BUDGET);
    let mut phantom = true;
    let config = SessionConfig {
        budget: budget.clone(),
        max_frame: MAX_FRAME,
        out_high_water: 64 << 10,
        // A request may ask the server to spin; a fuzzer would ask for the limit every time.
        max_spin: std::time::Duration::from_micros(20),
        ..SessionConfig::default()
    };
    let mut s = ServerSession::new(&config);
    let mut written = Vec::new();
    // Writes start at a few bytes and double, as a socket's free space comes and goes: short
    // writes at every point of a frame, without draining a 256 KiB reply byte by byte (that
    // made the target a hundred times slower).
    let drain = |s: &mut ServerSession, written: &mut Vec<u8>| {
        let mut chunk = 1 + step as usize * 7;
        for _ in 0..1_000_000 {
            let mut slices = [IoSlice::new(&[]); 8];
            let n = s.out().fill(&mut slices);
            if n == 0 {
                return;
            }
            let take = slices[0].len().min(chunk);
            written.extend_from_slice(&slices[0][..take]);
            s.wrote(take);
            chunk = (chunk * 2).min(64 << 10);
        }
        panic!("the output never drained");
    };
    let mut fed = 0usize;
    for piece in data.chunks((step as usize).max(1)) {
        if phantom && fed >= data.len() / 2 {
            budget.release(BUDGET);
            phantom = false;
            let _ = s.receive(&[]); // what an engine does when the budget has room again
        }
        if s.next() != Next::Serve {
            break;
        }
        if !s.wants_read() {
            drain(&mut s, &mut written);
        }
        // An engine does not read a connection whose frame waits for memory; this one feeds
        // on regardless, to check that the session keeps the bytes in order.
        let _ = s.receive(piece);
        fed += piece.len();
        // What one piece can make the session hold: the high-water mark, plus the replies
        // to the requests the piece completed (each at most a header and MAX_FRAME).
        let bound = (64 << 10) + (piece.len() / RequestHeader_LEN + 1) * (MAX_FRAME + 64);
        assert!(s.out().queued_bytes() <= bound, "{} queued", s.out().queued_bytes());
    }
    if phantom {
        budget.release(BUDGET);
        let _ = s.receive(&[]);
    }
    drain(&mut s, &mut written);
    assert!(budget.peak() <= 2 * BUDGET, "the budget held {} B", budget.peak());
    // Reference: the requests the same bytes hold, in order, up to the first bad one.
    let mut reference = FrameDecoder::<RequestHeader>::new(MAX_FRAME);
    let mut ids = Vec::new();
    let mut rest = &data[..fed];
    while !rest.is_empty() {
        match reference.decode(rest) {
            Ok((used, frame)) => {
                rest = &rest[used..];
                if let Some(f) = frame {
                    ids.push(f.header.id);
                }
            }
            Err(_) => break,
        }
    }
    let mut replies = FrameDecoder::<ReplyHeader>::new(usize::MAX >> 1);
    let mut got = Vec::new();
    let mut rest = &written[..];
    while !rest.is_empty() {
        let (used, frame) = replies.decode(rest).expect("the session writes well-formed replies");
        rest = &rest[used..];
        if let Some(f) = frame {
            got.push(f.header.id);
        }
    }
    // A request over a limit (spin, reply size) is refused, not answered: the replies are a
    // prefix of the requests, in order.
    assert!(got.len() <= ids.len() && got[..] == ids[..got.len()], "{got:?} for {ids:?}");
    assert_eq!(s.counters().requests as usize, got.len());
    drop(s);
    assert_eq!(budget.held(), 0, "a dropped session keeps {} B reserved", budget.held());
});

#[allow(non_upper_case_globals)]
const RequestHeader_LEN: usize = <RequestHeader as iolab::sansio::frame::Header>::LEN;
