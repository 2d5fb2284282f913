//! The generator's HTTP response reader, fed arbitrary bytes in arbitrary pieces with
//! requests in flight: no panic, never more completions than requests, and an error (not a
//! hang or a guess) for what is not a response.
#![no_main]

use std::sync::Arc;

use iolab::loadgen::client::{ClientConn, Pages, RequestSpec};
use iolab::sansio::frame::ReplySize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let pages = Pages::new("fuzz", vec![("/".to_string(), None), ("/a".to_string(), Some(3))]).unwrap();
    let mut conn = ClientConn::http(16 << 10, Arc::new(pages), 8);
    let spec = |page| RequestSpec {
        request_bytes: 0,
        reply: ReplySize::Echo,
        spin_ns: 0,
        page,
    };
    for id in 0..8u64 {
        conn.queue(id, id, id, spec((id % 2) as u32), true);
    }
    let mut completions = 0;
    for piece in data.chunks((step as usize).max(1)) {
        match conn.receive(piece, 0, |_| completions += 1) {
            Ok(()) => {}
            Err(_) => break,
        }
        assert!(completions <= 8, "{completions} completions for 8 requests");
    }
});
