//! The HTTP request parser and the request-target normalisation, fed arbitrary bytes in
//! arbitrary pieces: no panic; the same requests whatever the split; a bounded buffer; and a
//! target that normalises names a path under the root (no `..`, no NUL, a leading `/`).
#![no_main]

use iolab::sansio::http::{normalize_target, HttpDecoder, HttpLimits};
use libfuzzer_sys::fuzz_target;

fn parse_all(data: &[u8], step: usize) -> Vec<String> {
    let limits = HttpLimits::default();
    let mut d = HttpDecoder::new(limits);
    let mut out = Vec::new();
    for piece in data.chunks(step.max(1)) {
        d.push(piece);
        // Every request is at least a few bytes: the input bounds the loop.
        for _ in 0..=data.len() {
            match d.next_request() {
                None => break,
                Some(Ok(r)) => {
                    if let Ok(path) = normalize_target(&r.target) {
                        assert!(path.starts_with('/'), "{path:?}");
                        assert!(!path.contains('\0'), "{path:?}");
                        assert!(!path.split('/').any(|s| s == ".." || s == "."), "{path:?}");
                    }
                    out.push(format!("{r:?}"));
                }
                Some(Err(e)) => {
                    // A refusal ends the connection: nothing after it is read.
                    out.push(format!("refused {}", e.status.code()));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let whole = parse_all(data, data.len());
    assert_eq!(parse_all(data, step as usize), whole, "the split changed the requests");
});
