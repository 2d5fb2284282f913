//! The `frame` wire protocol: length-prefixed binary frames, little-endian, no I/O.
//!
//! A request carries an id, the client's scheduled send time, the work to do (spin time), the
//! reply size wanted and a payload; a reply carries the id, the echoed send time and the reply
//! payload. Every frame starts with the same 8 bytes: payload length (u32), kind, version and
//! two reserved bytes, so a receiver can reject garbage and oversized frames after reading
//! 8 bytes, before it allocates anything.
//!
//! ```text
//! request (40 B header)                       reply (24 B header)
//!  0 u32 payload_len   4 u8 'Q'  5 u8 ver=1    0 u32 payload_len   4 u8 'R'  5 u8 ver=1
//!  6 u16 reserved=0    8 u64 id               6 u16 reserved=0    8 u64 id
//! 16 u64 send_ns      24 u64 spin_ns         16 u64 send_ns (echoed)
//! 32 u32 reply_size (u32::MAX = echo)  36 u32 reserved=0
//! ```
//!
//! Two halves, as in smoltcp: [`FrameDecoder`] turns any split of a byte stream (down to one
//! byte at a time) back into frames; [`OutQueue`] hands queued frames out as slices of at most
//! `chunk_size` bytes, borrowing payloads rather than copying them. Payloads the server makes
//! up (and every payload the load generator sends) are a [`Body::Pattern`]: a seeded byte
//! pattern served from one static table, so a 1 MiB reply costs no allocation and the client
//! can verify every byte.

use std::collections::VecDeque;
use std::io::IoSlice;

/// Default largest slice handed to one write: the classic MSG_SIZE_BYTES.
pub const DEFAULT_CHUNK_SIZE: usize = 4096;
/// Default largest legal payload.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

const KIND_REQUEST: u8 = b'Q';
const KIND_REPLY: u8 = b'R';
const VERSION: u8 = 1;
const REPLY_SIZE_ECHO: u32 = u32::MAX;
/// The largest header of any frame kind.
pub const MAX_HEADER_LEN: usize = RequestHeader::LEN;

/// Why a byte stream is not a valid frame stream. Every variant closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame announces a {announced} B payload, above the {max} B limit (--max-frame)")]
    TooLarge { announced: u64, max: usize },
    #[error("not a {expected} frame: kind byte 0x{found:02x}")]
    BadKind { expected: &'static str, found: u8 },
    #[error("unsupported frame version {0} (this build speaks version 1)")]
    BadVersion(u8),
    #[error("reserved header bytes are not zero")]
    Reserved,
}

/// How large a reply the client wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplySize {
    /// The reply payload is the request payload.
    Echo,
    /// A payload of exactly this many bytes.
    Bytes(u32),
}

/// A parsed request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub payload_len: u32,
    pub id: u64,
    /// The client's *scheduled* send time, in ns on the client's clock; echoed back untouched.
    pub send_ns: u64,
    /// Busy CPU time the server should spend before replying.
    pub spin_ns: u64,
    pub reply: ReplySize,
}

/// A parsed reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHeader {
    pub payload_len: u32,
    pub id: u64,
    pub send_ns: u64,
}

/// What both header kinds share: a fixed length, a kind byte, a payload length.
pub trait Header: Sized + Copy + std::fmt::Debug {
    const LEN: usize;
    const KIND: u8;
    const NAME: &'static str;
    fn payload_len(&self) -> usize;
    fn set_payload_len(&mut self, len: u32);
    /// Reads the kind-specific fields; the common prefix is already checked.
    fn parse_fields(bytes: &[u8], payload_len: u32) -> Result<Self, FrameError>;
    /// Writes the kind-specific fields after the common prefix.
    fn emit_fields(&self, out: &mut [u8]);

    /// Checks the common prefix (length, kind, version, reserved) and parses the rest.
    /// `bytes` must hold exactly `Self::LEN` bytes.
    fn parse(bytes: &[u8], max_frame: usize) -> Result<Self, FrameError> {
        let payload_len = u32_at(bytes, 0);
        if bytes[4] != Self::KIND {
            return Err(FrameError::BadKind {
                expected: Self::NAME,
                found: bytes[4],
            });
        }
        if bytes[5] != VERSION {
            return Err(FrameError::BadVersion(bytes[5]));
        }
        if bytes[6] != 0 || bytes[7] != 0 {
            return Err(FrameError::Reserved);
        }
        if payload_len as u64 > max_frame as u64 {
            return Err(FrameError::TooLarge {
                announced: payload_len as u64,
                max: max_frame,
            });
        }
        Self::parse_fields(bytes, payload_len)
    }

    fn emit(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&(self.payload_len() as u32).to_le_bytes());
        out[4] = Self::KIND;
        out[5] = VERSION;
        out[6] = 0;
        out[7] = 0;
        self.emit_fields(out);
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Header for RequestHeader {
    const LEN: usize = 40;
    const KIND: u8 = KIND_REQUEST;
    const NAME: &'static str = "request";

    fn payload_len(&self) -> usize {
        self.payload_len as usize
    }
    fn set_payload_len(&mut self, len: u32) {
        self.payload_len = len;
    }
    fn parse_fields(b: &[u8], payload_len: u32) -> Result<Self, FrameError> {
        if u32_at(b, 36) != 0 {
            return Err(FrameError::Reserved);
        }
        let reply = match u32_at(b, 32) {
            REPLY_SIZE_ECHO => ReplySize::Echo,
            n => ReplySize::Bytes(n),
        };
        Ok(RequestHeader {
            payload_len,
            id: u64_at(b, 8),
            send_ns: u64_at(b, 16),
            spin_ns: u64_at(b, 24),
            reply,
        })
    }
    fn emit_fields(&self, out: &mut [u8]) {
        out[8..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..24].copy_from_slice(&self.send_ns.to_le_bytes());
        out[24..32].copy_from_slice(&self.spin_ns.to_le_bytes());
        let reply = match self.reply {
            ReplySize::Echo => REPLY_SIZE_ECHO,
            ReplySize::Bytes(n) => n,
        };
        out[32..36].copy_from_slice(&reply.to_le_bytes());
        out[36..40].copy_from_slice(&0u32.to_le_bytes());
    }
}

impl Header for ReplyHeader {
    const LEN: usize = 24;
    const KIND: u8 = KIND_REPLY;
    const NAME: &'static str = "reply";

    fn payload_len(&self) -> usize {
        self.payload_len as usize
    }
    fn set_payload_len(&mut self, len: u32) {
        self.payload_len = len;
    }
    fn parse_fields(b: &[u8], payload_len: u32) -> Result<Self, FrameError> {
        Ok(ReplyHeader {
            payload_len,
            id: u64_at(b, 8),
            send_ns: u64_at(b, 16),
        })
    }
    fn emit_fields(&self, out: &mut [u8]) {
        out[8..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..24].copy_from_slice(&self.send_ns.to_le_bytes());
    }
}

/// A complete frame as decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<H> {
    pub header: H,
    pub payload: Vec<u8>,
}

/// Incremental decoder: feed it whatever the socket gave, get frames back as they complete.
#[derive(Debug)]
pub struct FrameDecoder<H: Header> {
    max_frame: usize,
    head: [u8; MAX_HEADER_LEN],
    head_have: usize,
    body: Option<(H, Vec<u8>)>,
}

impl<H: Header> FrameDecoder<H> {
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            max_frame,
            head: [0; MAX_HEADER_LEN],
            head_have: 0,
            body: None,
        }
    }

    /// Consumes a prefix of `input`. Returns how many bytes were used and the frame they
    /// completed, if any; call again with the rest. After an error the stream is lost: the
    /// caller closes the connection.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Frame<H>>), FrameError> {
        let mut used = 0;
        if self.body.is_none() {
            let take = (H::LEN - self.head_have).min(input.len());
            self.head[self.head_have..self.head_have + take].copy_from_slice(&input[..take]);
            self.head_have += take;
            used = take;
            if self.head_have < H::LEN {
                return Ok((used, None));
            }
            // The length is validated before any allocation: an announced 4 GiB costs nothing.
            let header = H::parse(&self.head[..H::LEN], self.max_frame)?;
            self.head_have = 0;
            if header.payload_len() == 0 {
                return Ok((
                    used,
                    Some(Frame {
                        header,
                        payload: Vec::new(),
                    }),
                ));
            }
            // Exact capacity: large allocations are mmap-backed, so pages that a slow sender
            // has not filled yet are not resident.
            self.body = Some((header, Vec::with_capacity(header.payload_len())));
        }
        if let Some((header, payload)) = self.body.as_mut() {
            let take = (header.payload_len() - payload.len()).min(input.len() - used);
            payload.extend_from_slice(&input[used..used + take]);
            used += take;
            if payload.len() == header.payload_len() {
                if let Some((header, payload)) = self.body.take() {
                    return Ok((used, Some(Frame { header, payload })));
                }
            }
        }
        Ok((used, None))
    }

    /// How many header bytes the next [`FrameDecoder::decode`] still needs before it knows the
    /// frame's length, or `None` while a payload is being read: a caller that must decide on
    /// the length before taking the payload (the memory budget) feeds no more than this.
    pub fn header_missing(&self) -> Option<usize> {
        self.body.is_none().then(|| H::LEN - self.head_have)
    }

    /// The announced length of the payload being read (0 between frames): what the frame
    /// will hold once complete.
    pub fn pending_payload(&self) -> usize {
        self.body.as_ref().map_or(0, |(h, _)| h.payload_len())
    }

    /// True when no frame is partly received: the peer may close here without losing data.
    pub fn is_idle(&self) -> bool {
        self.head_have == 0 && self.body.is_none()
    }
}

// ---------------------------------------------------------------------------------------------
// Payload pattern

/// Period of the verification pattern: prime, so it never lines up with power-of-two chunks.
const PATTERN_PERIOD: usize = 251;
/// The pattern table: long enough that any slice of up to 64 KiB starts anywhere in one period.
const PATTERN_TABLE_LEN: usize = PATTERN_PERIOD * 262;
static PATTERN: [u8; PATTERN_TABLE_LEN] = make_pattern();

const fn make_pattern() -> [u8; PATTERN_TABLE_LEN] {
    let mut table = [0u8; PATTERN_TABLE_LEN];
    let mut i = 0;
    while i < PATTERN_TABLE_LEN {
        table[i] = (i % PATTERN_PERIOD) as u8;
        i += 1;
    }
    table
}

/// The pattern byte at `offset` of the payload seeded with `seed` (the request id).
pub fn pattern_byte(seed: u64, offset: usize) -> u8 {
    (((seed % PATTERN_PERIOD as u64) as usize + offset % PATTERN_PERIOD) % PATTERN_PERIOD) as u8
}

/// The longest run of the pattern starting at `offset` that the table serves in one slice.
fn pattern_slice(seed: u64, offset: usize, max_len: usize) -> &'static [u8] {
    let start = ((seed % PATTERN_PERIOD as u64) as usize + offset) % PATTERN_PERIOD;
    let len = max_len.min(PATTERN_TABLE_LEN - start);
    &PATTERN[start..start + len]
}

/// Whether `data` equals the pattern seeded `seed`, starting at payload offset `offset`.
pub fn pattern_matches(seed: u64, offset: usize, data: &[u8]) -> bool {
    let mut done = 0;
    while done < data.len() {
        let expect = pattern_slice(seed, offset + done, data.len() - done);
        if data[done..done + expect.len()] != *expect {
            return false;
        }
        done += expect.len();
    }
    true
}

/// Copies the pattern into a new vector (for tests and tools; the hot paths borrow).
pub fn pattern_vec(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let s = pattern_slice(seed, v.len(), len - v.len());
        v.extend_from_slice(s);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Encoder

/// A frame's payload as the sender holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Bytes the sender owns (an echoed request payload is moved here, not copied).
    Owned(Vec<u8>),
    /// `len` bytes of the verification pattern seeded with `seed`, served from a static table.
    Pattern { seed: u64, len: usize },
    /// Bytes shared with others, never copied: a cached file that many responses send.
    Shared(std::sync::Arc<[u8]>),
}

impl Body {
    pub fn len(&self) -> usize {
        match self {
            Body::Owned(v) => v.len(),
            Body::Pattern { len, .. } => *len,
            Body::Shared(b) => b.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes this body alone keeps in memory (a pattern or a shared file keeps none).
    pub fn owned_len(&self) -> usize {
        match self {
            Body::Owned(v) => v.len(),
            Body::Pattern { .. } | Body::Shared(_) => 0,
        }
    }
    /// The slice of at most `max` bytes that starts at `offset`.
    fn slice_at(&self, offset: usize, max: usize) -> &[u8] {
        let max = max.min(self.len() - offset);
        match self {
            Body::Owned(v) => &v[offset..offset + max],
            Body::Pattern { seed, .. } => pattern_slice(*seed, offset, max),
            Body::Shared(b) => &b[offset..offset + max],
        }
    }
}

/// One frame ready to send: its encoded header and its body.
#[derive(Debug, Clone)]
pub struct OutFrame {
    head: Head,
    body: Body,
}

/// A frame's header bytes: a binary header inline, or a text protocol's head (HTTP) that has
/// no fixed size.
#[derive(Debug, Clone)]
enum Head {
    Inline { bytes: [u8; MAX_HEADER_LEN], len: usize },
    Text(Vec<u8>),
}

impl Head {
    fn as_slice(&self) -> &[u8] {
        match self {
            Head::Inline { bytes, len } => &bytes[..*len],
            Head::Text(v) => v,
        }
    }
}

impl OutFrame {
    /// Encodes `header` with its payload length taken from `body`.
    ///
    /// The body must be shorter than 4 GiB; callers check sizes against `--max-frame` first.
    pub fn new<H: Header>(mut header: H, body: Body) -> Self {
        debug_assert!(body.len() <= u32::MAX as usize);
        header.set_payload_len(body.len() as u32);
        let mut bytes = [0u8; MAX_HEADER_LEN];
        header.emit(&mut bytes[..H::LEN]);
        OutFrame {
            head: Head::Inline { bytes, len: H::LEN },
            body,
        }
    }

    /// A message whose head is already encoded (an HTTP status line and headers).
    pub fn raw(head: Vec<u8>, body: Body) -> Self {
        OutFrame {
            head: Head::Text(head),
            body,
        }
    }

    pub fn len(&self) -> usize {
        self.head.as_slice().len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes of memory this frame alone holds (see [`Body::owned_len`]).
    pub fn owned_len(&self) -> usize {
        self.body.owned_len()
    }

    /// The slice of at most `chunk` bytes at `offset` within the encoded frame. Header and
    /// body never share a slice, so a writev sends the header from here and the payload from
    /// wherever it lives.
    fn slice_at(&self, offset: usize, chunk: usize) -> &[u8] {
        let head = self.head.as_slice();
        if offset < head.len() {
            let end = head.len().min(offset + chunk);
            &head[offset..end]
        } else {
            self.body.slice_at(offset - head.len(), chunk)
        }
    }
}

/// Frames waiting to be written, handed out as slices of at most `chunk_size` bytes.
///
/// An engine whose writes complete later (io_uring) gives the kernel the slices' addresses,
/// not a copy, so those bytes must not move until the write completes. [`OutQueue::hold`]
/// promises that: until the next [`OutQueue::advance`], frames pushed meanwhile wait aside
/// instead of growing (and perhaps moving) the queue the slices point into.
#[derive(Debug)]
pub struct OutQueue {
    frames: VecDeque<OutFrame>,
    /// Frames pushed while held, appended at the next advance.
    waiting: Vec<OutFrame>,
    held: bool,
    /// Bytes of the front frame already written.
    offset: usize,
    queued_bytes: usize,
    /// Bytes of memory the queued frames own (echoed payloads), released as each one leaves.
    owned_bytes: usize,
    chunk_size: usize,
}

impl OutQueue {
    pub fn new(chunk_size: usize) -> Self {
        OutQueue {
            frames: VecDeque::new(),
            waiting: Vec::new(),
            held: false,
            offset: 0,
            queued_bytes: 0,
            owned_bytes: 0,
            chunk_size: chunk_size.max(1),
        }
    }

    pub fn push(&mut self, frame: OutFrame) {
        self.queued_bytes += frame.len();
        self.owned_bytes += frame.owned_len();
        if self.held {
            self.waiting.push(frame);
        } else {
            self.frames.push_back(frame);
        }
    }

    /// Pins what is queued now in memory until the next [`OutQueue::advance`]: slices that
    /// [`OutQueue::fill`] hands out meanwhile keep their addresses whatever is pushed. Frames
    /// pushed while held are not offered by `fill` until then.
    pub fn hold(&mut self) {
        self.held = true;
    }

    pub fn is_held(&self) -> bool {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.waiting.is_empty()
    }

    /// Bytes not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Bytes of memory the frames not yet completely written own.
    pub fn owned_bytes(&self) -> usize {
        self.owned_bytes
    }

    /// Frames not yet completely written.
    pub fn queued_frames(&self) -> usize {
        self.frames.len() + self.waiting.len()
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// The next slice to write, at most `chunk_size` bytes.
    pub fn front(&self) -> Option<&[u8]> {
        self.frames
            .front()
            .map(|f| f.slice_at(self.offset, self.chunk_size))
    }

    /// Fills `dst` with the next slices in order and returns how many it filled. The slices
    /// borrow from the queued frames: nothing is copied.
    pub fn fill<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut offset = self.offset;
        for frame in &self.frames {
            while offset < frame.len() {
                if n == dst.len() {
                    return n;
                }
                let s = frame.slice_at(offset, self.chunk_size);
                offset += s.len();
                dst[n] = IoSlice::new(s);
                n += 1;
            }
            offset = 0;
        }
        n
    }

    /// Marks `n` bytes as written and releases a [`OutQueue::hold`]; returns how many frames
    /// that completed.
    pub fn advance(&mut self, mut n: usize) -> usize {
        debug_assert!(n <= self.queued_bytes);
        if self.held {
            // Nothing is lent out any more: the frames that waited aside join the queue.
            self.held = false;
            self.frames.extend(self.waiting.drain(..));
        }
        self.queued_bytes -= n.min(self.queued_bytes);
        let mut completed = 0;
        while n > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.len() - self.offset;
            if n >= left {
                n -= left;
                if let Some(done) = self.frames.pop_front() {
                    self.owned_bytes -= done.owned_len();
                }
                self.offset = 0;
                completed += 1;
            } else {
                self.offset += n;
                n = 0;
            }
        }
        completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CHUNK: usize = DEFAULT_CHUNK_SIZE;

    fn request(id: u64, payload: Body, reply: ReplySize) -> OutFrame {
        OutFrame::new(
            RequestHeader {
                payload_len: 0,
                id,
                send_ns: id * 1000 + 7,
                spin_ns: 5,
                reply,
            },
            payload,
        )
    }

    /// Everything an OutQueue would write, checking the chunk bound on the way.
    fn drain(q: &mut OutQueue) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rounds = 0;
        while !q.is_empty() {
            rounds += 1;
            assert!(rounds < 1_000_000, "queue does not drain");
            let mut slices = [IoSlice::new(&[]); 64];
            let n = q.fill(&mut slices);
            assert!(n > 0);
            let mut written = 0;
            for s in &slices[..n] {
                assert!(!s.is_empty() && s.len() <= q.chunk_size(), "slice of {}", s.len());
                out.extend_from_slice(s);
                written += s.len();
            }
            q.advance(written);
        }
        assert_eq!(q.queued_bytes(), 0);
        out
    }

    fn decode_all<H: Header>(stream: &[u8], splits: &[usize], max: usize) -> Vec<Frame<H>> {
        let mut dec = FrameDecoder::<H>::new(max);
        let mut frames = Vec::new();
        let mut pos = 0;
        let mut split = splits.iter().cycle();
        while pos < stream.len() {
            let step = split.next().copied().unwrap_or(stream.len()).max(1);
            let mut piece = &stream[pos..(pos + step).min(stream.len())];
            pos += piece.len();
            while !piece.is_empty() {
                let (used, frame) = dec.decode(piece).expect("valid stream");
                assert!(used > 0 || frame.is_some());
                piece = &piece[used..];
                frames.extend(frame);
            }
        }
        assert!(dec.is_idle());
        frames
    }

    #[test]
    fn round_trip_at_the_interesting_sizes() {
        let max = DEFAULT_MAX_FRAME;
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7, 1 << 20, max] {
            let mut q = OutQueue::new(CHUNK);
            q.push(request(
                size as u64,
                Body::Pattern { seed: 3, len: size },
                ReplySize::Echo,
            ));
            q.push(request(
                9,
                Body::Owned(pattern_vec(9, size)),
                ReplySize::Bytes(77),
            ));
            let bytes = drain(&mut q);
            assert_eq!(bytes.len(), 2 * (RequestHeader::LEN + size));
            let frames = decode_all::<RequestHeader>(&bytes, &[bytes.len()], max);
            assert_eq!(frames.len(), 2);
            assert_eq!(frames[0].header.id, size as u64);
            assert_eq!(frames[0].header.reply, ReplySize::Echo);
            assert_eq!(frames[0].header.send_ns, size as u64 * 1000 + 7);
            assert_eq!(frames[0].payload.len(), size);
            assert!(pattern_matches(3, 0, &frames[0].payload));
            assert_eq!(frames[1].header.reply, ReplySize::Bytes(77));
            assert_eq!(frames[1].payload, pattern_vec(9, size));
        }
    }

    #[test]
    fn held_slices_keep_their_addresses_while_frames_are_pushed() {
        let mut q = OutQueue::new(16);
        let reply = |id: u64, len: usize| {
            OutFrame::new(
                ReplyHeader {
                    payload_len: 0,
                    id,
                    send_ns: 0,
                },
                Body::Owned(pattern_vec(id, len)),
            )
        };
        q.push(reply(0, 40));
        q.hold();
        let lent: Vec<(usize, Vec<u8>)> = {
            let mut slices = [IoSlice::new(&[]); 64];
            let n = q.fill(&mut slices);
            slices[..n]
                .iter()
                .map(|s| (s.as_ptr() as usize, s.to_vec()))
                .collect()
        };
        // Enough pushes to grow any VecDeque several times over.
        for id in 1..200 {
            q.push(reply(id, 3));
        }
        let mut slices = [IoSlice::new(&[]); 64];
        let n = q.fill(&mut slices);
        assert_eq!(n, lent.len(), "frames pushed while held are not offered yet");
        for (s, (addr, bytes)) in slices[..n].iter().zip(&lent) {
            assert_eq!(s.as_ptr() as usize, *addr);
            assert_eq!(&s[..], &bytes[..]);
        }
        // A partial write releases the hold; the waiting frames follow in order.
        q.advance(5);
        assert!(!q.is_held());
        let bytes = drain(&mut q);
        let frames = decode_all::<ReplyHeader>(&bytes[ReplyHeader::LEN + 40 - 5..], &[7], DEFAULT_MAX_FRAME);
        let ids: Vec<u64> = frames.iter().map(|f| f.header.id).collect();
        assert_eq!(ids, (1..200).collect::<Vec<_>>());
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut q = OutQueue::new(CHUNK);
        for (id, size) in [(1u64, 0usize), (2, 1), (3, CHUNK + 1), (4, 17)] {
            q.push(OutFrame::new(
                ReplyHeader {
                    payload_len: 0,
                    id,
                    send_ns: 42,
                },
                Body::Pattern { seed: id, len: size },
            ));
        }
        let bytes = drain(&mut q);
        let frames = decode_all::<ReplyHeader>(&bytes, &[1], DEFAULT_MAX_FRAME);
        let ids: Vec<u64> = frames.iter().map(|f| f.header.id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        for f in &frames {
            assert!(pattern_matches(f.header.id, 0, &f.payload));
        }
    }

    #[test]
    fn oversized_announcement_is_refused_before_allocating() {
        let mut head = [0u8; RequestHeader::LEN];
        RequestHeader {
            payload_len: u32::MAX,
            id: 1,
            send_ns: 0,
            spin_ns: 0,
            reply: ReplySize::Echo,
        }
        .emit(&mut head);
        let mut dec = FrameDecoder::<RequestHeader>::new(DEFAULT_MAX_FRAME);
        let err = dec.decode(&head).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                announced: u32::MAX as u64,
                max: DEFAULT_MAX_FRAME
            }
        );
        // One byte over the limit is refused too; exactly the limit is legal.
        let mut dec = FrameDecoder::<RequestHeader>::new(1000);
        head[..4].copy_from_slice(&1001u32.to_le_bytes());
        assert!(matches!(dec.decode(&head), Err(FrameError::TooLarge { .. })));
        let mut dec = FrameDecoder::<RequestHeader>::new(1000);
        head[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(dec.decode(&head), Ok((RequestHeader::LEN, None)));
    }

    #[test]
    fn garbage_is_refused() {
        let mut dec = FrameDecoder::<RequestHeader>::new(DEFAULT_MAX_FRAME);
        let http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        assert!(matches!(dec.decode(http), Err(FrameError::BadKind { .. })));
        // A reply is not a request.
        let mut q = OutQueue::new(CHUNK);
        q.push(OutFrame::new(
            ReplyHeader {
                payload_len: 0,
                id: 1,
                send_ns: 0,
            },
            Body::Owned(vec![0; 30]),
        ));
        let bytes = drain(&mut q);
        let mut dec = FrameDecoder::<RequestHeader>::new(DEFAULT_MAX_FRAME);
        assert!(dec.decode(&bytes).is_err());
        let mut bad_version = bytes.clone();
        bad_version[5] = 9;
        let mut dec = FrameDecoder::<ReplyHeader>::new(DEFAULT_MAX_FRAME);
        assert_eq!(dec.decode(&bad_version), Err(FrameError::BadVersion(9)));
        let mut reserved = bytes;
        reserved[7] = 1;
        let mut dec = FrameDecoder::<ReplyHeader>::new(DEFAULT_MAX_FRAME);
        assert_eq!(dec.decode(&reserved), Err(FrameError::Reserved));
    }

    #[test]
    fn pattern_agrees_with_itself() {
        for seed in [0u64, 1, 250, 251, 1 << 40] {
            let v = pattern_vec(seed, 70_000);
            for (i, b) in v.iter().enumerate().step_by(97) {
                assert_eq!(*b, pattern_byte(seed, i));
            }
            assert!(pattern_matches(seed, 0, &v));
            assert!(pattern_matches(seed, 1000, &v[1000..]));
            assert!(!pattern_matches(seed + 1, 0, &v));
            let mut broken = v.clone();
            broken[65_000] ^= 1;
            assert!(!pattern_matches(seed, 0, &broken));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_sizes_any_splits_any_chunk(
            sizes in proptest::collection::vec(0usize..70_000, 1..6),
            splits in proptest::collection::vec(1usize..9_000, 1..20),
            chunk in 1usize..20_000,
        ) {
            let mut q = OutQueue::new(chunk);
            for (i, &size) in sizes.iter().enumerate() {
                let body = if i % 2 == 0 {
                    Body::Pattern { seed: i as u64, len: size }
                } else {
                    Body::Owned(pattern_vec(i as u64, size))
                };
                q.push(request(i as u64, body, ReplySize::Bytes(size as u32)));
            }
            let bytes = drain(&mut q);
            let frames = decode_all::<RequestHeader>(&bytes, &splits, 1 << 20);
            prop_assert_eq!(frames.len(), sizes.len());
            for (i, f) in frames.iter().enumerate() {
                prop_assert_eq!(f.header.id, i as u64);
                prop_assert_eq!(f.header.reply, ReplySize::Bytes(sizes[i] as u32));
                prop_assert_eq!(f.payload.len(), sizes[i]);
                prop_assert!(pattern_matches(i as u64, 0, &f.payload));
            }
        }

        #[test]
        fn partial_writes_resume_exactly(
            size in 0usize..50_000,
            writes in proptest::collection::vec(1usize..5_000, 1..50),
        ) {
            // A socket may take any prefix of what was offered; the queue must resume there.
            let mut q = OutQueue::new(CHUNK);
            q.push(request(5, Body::Pattern { seed: 5, len: size }, ReplySize::Echo));
            q.push(request(6, Body::Pattern { seed: 6, len: size / 2 }, ReplySize::Echo));
            let mut out = Vec::new();
            let mut budget = writes.iter().cycle();
            let mut rounds = 0;
            while !q.is_empty() {
                rounds += 1;
                prop_assert!(rounds < 100_000);
                let mut slices = [IoSlice::new(&[]); 8];
                let n = q.fill(&mut slices);
                let mut allowed = *budget.next().unwrap_or(&1);
                let mut written = 0;
                for s in &slices[..n] {
                    let take = s.len().min(allowed);
                    out.extend_from_slice(&s[..take]);
                    written += take;
                    allowed -= take;
                    if allowed == 0 { break; }
                }
                q.advance(written);
            }
            let frames = decode_all::<RequestHeader>(&out, &[out.len().max(1)], 1 << 20);
            prop_assert_eq!(frames.len(), 2);
            prop_assert!(pattern_matches(5, 0, &frames[0].payload));
            prop_assert_eq!(frames[1].payload.len(), size / 2);
        }
    }
}
