//! The frame decoder, both directions, fed arbitrary bytes in arbitrary pieces: it never
//! panics, never takes more than it is given, always makes progress, and decodes the same
//! frames whatever the split (the first byte of the input chooses the split).
#![no_main]

use iolab::sansio::frame::{FrameDecoder, Header, ReplyHeader, RequestHeader};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 64 << 10;

fn decode_all<H: Header>(data: &[u8], step: usize) -> (Vec<(String, Vec<u8>)>, bool) {
    let mut d = FrameDecoder::<H>::new(MAX_FRAME);
    let mut frames = Vec::new();
    for piece in data.chunks(step.max(1)) {
        let mut rest = piece;
        while !rest.is_empty() {
            match d.decode(rest) {
                Ok((used, frame)) => {
                    assert!(used <= rest.len(), "took {used} of {}", rest.len());
                    assert!(used > 0 || frame.is_some(), "no progress on {} bytes", rest.len());
                    rest = &rest[used..];
                    if let Some(f) = frame {
                        assert!(f.payload.len() <= MAX_FRAME);
                        frames.push((format!("{:?}", f.header), f.payload.to_vec()));
                    }
                }
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let whole = decode_all::<RequestHeader>(data, data.len());
    assert_eq!(decode_all::<RequestHeader>(data, step as usize), whole, "the split changed the frames");
    let whole = decode_all::<ReplyHeader>(data, data.len());
    assert_eq!(decode_all::<ReplyHeader>(data, step as usize), whole, "the split changed the frames");
});
