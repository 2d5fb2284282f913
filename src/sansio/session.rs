//! The server session: one connection's protocol state, with no I/O in it.
//!
//! An engine feeds it whatever bytes the socket produced ([`ServerSession::receive`]) and
//! asks it what to send ([`ServerSession::out`]), then reports how much the socket took
//! ([`ServerSession::wrote`]). Framing, reassembly of partial reads, limits and protocol
//! errors all live here, so every engine differs from the others only in how it waits,
//! reads and writes. Time is never read here except by the workloads that need it (spin,
//! and HTTP's `Date`).
//!
//! A session speaks one of two protocols, chosen by the server's configuration: the binary
//! frames of the design document, or HTTP/1.1 serving static files.
//!
//! The session also owns how its connection ends, so that no engine decides it for itself.
//! An engine tells it what happened (bytes in, bytes out, the peer's end of file, requests
//! handed to other threads, a cut-off at shutdown) and asks [`ServerSession::next`] what to
//! do: serve, only flush, make one last write after a protocol error, or close with a
//! [`Verdict`]. The rules, once:
//!
//! - Input ends when the peer closes, when the session finishes (HTTP's `Connection:
//!   close`), or at a protocol error. After a clean end every reply owed is written, and
//!   every request handed out is answered, before the close.
//! - After a protocol error the replies queued before it get one last write of what the
//!   transport takes at once (an HTTP client is owed the response that refuses it), and the
//!   connection closes: a peer that sent a bad frame is never waited for.
//! - A connection cut off at shutdown (its peer never read its replies) closes at once.
//!
//! And it answers to the server's memory budget ([`crate::sansio::budget`]): a frame that
//! would take the connection past its floor reserves its payload when its header arrives; if
//! the budget refuses, the bytes already read wait in the session
//! ([`ServerSession::awaiting_memory`]), the engine stops reading the socket, and feeding the
//! session no bytes later tries again.

use std::collections::VecDeque;
use std::time::Duration;

use crate::sansio::budget::{MemoryBudget, FLOOR};
use crate::sansio::frame::{
    FrameDecoder, FrameError, OutFrame, OutQueue, ReplySize, RequestHeader, DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_FRAME,
};
use crate::sansio::http::{HttpDecoder, HttpError, HttpLimits};
use crate::sansio::static_files::StaticFiles;
use crate::sansio::workload;
use std::sync::Arc;

/// The default of `serve --request-timeout`: far beyond any request of a working client on
/// loopback, short enough that a thousand idle half-requests do not sit for good.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits and sizes shared by every connection of a server.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest slice handed to one write.
    pub chunk_size: usize,
    /// Largest legal payload, in either direction.
    pub max_frame: usize,
    /// Longest spin a request may ask for.
    pub max_spin: Duration,
    /// Stop reading a connection while this many reply bytes wait to be written, so a client
    /// that sends but never reads cannot make the server buffer without bound.
    pub out_high_water: usize,
    /// Serve HTTP/1.1 from these files instead of the frame protocol.
    pub http: Option<Arc<StaticFiles>>,
    pub http_limits: HttpLimits,
    /// The bound on what every connection of the server together holds.
    pub budget: Arc<MemoryBudget>,
    /// Longest a request (a frame, or an HTTP head) may take to arrive once begun; the
    /// engines keep the clock ([`ServerSession::mid_request`] says when it runs) and call
    /// [`ServerSession::time_out`].
    pub request_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_frame: DEFAULT_MAX_FRAME,
            max_spin: Duration::from_secs(1),
            out_high_water: 4 << 20,
            http: None,
            http_limits: HttpLimits::default(),
            budget: Arc::new(MemoryBudget::new(1 << 30)),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// A protocol violation: the connection is closed, the server goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("request {id} asks for a {asked} B reply, above the {max} B limit (--max-frame)")]
    ReplyTooLarge { id: u64, asked: u64, max: usize },
    #[error("request {id} asks for {asked_ns} ns of spin, above the {max_ns} ns limit")]
    SpinTooLong { id: u64, asked_ns: u64, max_ns: u64 },
    #[error("peer closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// What one connection did, added to the server's totals when it closes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A decoded request, checked against the limits, ready to execute anywhere.
pub type Request = crate::sansio::frame::Frame<RequestHeader>;

/// What an engine should do with a connection now: asked after every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Read while [`ServerSession::wants_read`], write what [`ServerSession::out`] holds.
    Serve,
    /// Input is over: write what is queued (and wait for requests handed out); then ask again.
    Flush,
    /// A protocol error: write what the transport takes at once of what is queued, tell the
    /// session ([`ServerSession::last_write_tried`]), and ask again.
    LastWrite,
    /// Close the connection now.
    Close(Verdict),
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Cleanly: the peer closed between requests (or the session finished), all answered.
    Done,
    /// A protocol violation (or a peer that closed in the middle of a frame).
    Protocol(SessionError),
    /// Cut off at shutdown with replies still unwritten (its peer was not reading).
    CutOff,
    /// A request took longer than the request timeout to arrive (a slow or stalled client).
    TimedOut,
}

impl Verdict {
    /// Whether the connection closes at once, without waiting for a write in flight.
    pub fn is_abrupt(&self) -> bool {
        matches!(self, Verdict::CutOff | Verdict::TimedOut)
    }
}

/// Where a connection's input stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    Open,
    /// The peer sent its end of file; with an error if that was in the middle of a frame.
    Ended(Option<SessionError>),
    /// A protocol error; nothing after it is read.
    Failed {
        error: SessionError,
        last_write_tried: bool,
    },
}

#[derive(Debug)]
pub struct ServerSession {
    /// Shared by every session of a server: it is read-only, and a copy in each would cost
    /// every open connection its 120 bytes.
    config: Arc<SessionConfig>,
    decoder: Decoder,
    out: OutQueue,
    counters: SessionCounters,
    /// No more requests will be read (see [`ServerSession::finished`]).
    finished: bool,
    input: Input,
    /// Requests handed to other threads whose replies are not queued yet.
    outstanding: usize,
    cut_off: bool,
    timed_out: bool,
    /// Requests decoded so far (a request timeout's clock restarts at each).
    received: u64,
    /// Bytes reserved from the budget: what this connection holds beyond [`FLOOR`].
    charged: usize,
    /// A frame's reservation was refused: the bytes read already wait in `aside.stash`.
    awaiting_memory: bool,
    /// What only some sessions ever need; boxed, so an idle connection does not carry it.
    aside: Option<Box<Aside>>,
}

/// A session's state for the memory budget's refusals and for requests handed to other
/// threads (the pool): made at the first need, and kept.
#[derive(Debug, Default)]
struct Aside {
    /// The bytes of a frame whose reservation was refused, read already, waiting for room.
    stash: Vec<u8>,
    /// Payload sizes of the requests handed out, oldest first, and their sum: the session
    /// answers for them until their replies come back.
    handed_bytes: VecDeque<usize>,
    handed_total: usize,
}

#[derive(Debug)]
enum Decoder {
    Frame(FrameDecoder<RequestHeader>),
    Http {
        decoder: HttpDecoder,
        files: Arc<StaticFiles>,
    },
}

impl ServerSession {
    pub fn new(config: &SessionConfig) -> Self {
        Self::shared(Arc::new(config.clone()))
    }

    /// A session on a configuration its server's other sessions share (see `config`).
    pub fn shared(config: Arc<SessionConfig>) -> Self {
        let decoder = match &config.http {
            Some(files) => Decoder::Http {
                decoder: HttpDecoder::new(config.http_limits),
                files: files.clone(),
            },
            None => Decoder::Frame(FrameDecoder::new(config.max_frame)),
        };
        ServerSession {
            out: OutQueue::new(config.chunk_size),
            config,
            decoder,
            counters: SessionCounters::default(),
            finished: false,
            input: Input::Open,
            outstanding: 0,
            cut_off: false,
            timed_out: false,
            received: 0,
            charged: 0,
            awaiting_memory: false,
            aside: None,
        }
    }

    /// What the engine should do with the connection now (the module's rules).
    pub fn next(&self) -> Next {
        if self.cut_off {
            return Next::Close(Verdict::CutOff);
        }
        if self.timed_out {
            return Next::Close(Verdict::TimedOut);
        }
        let drained = self.out.is_empty();
        match &self.input {
            Input::Failed {
                error,
                last_write_tried,
            } => {
                if drained || *last_write_tried {
                    Next::Close(Verdict::Protocol(error.clone()))
                } else {
                    Next::LastWrite
                }
            }
            Input::Ended(_) | Input::Open if !self.reading() => {
                if drained && self.outstanding == 0 {
                    match &self.input {
                        Input::Ended(Some(e)) => Next::Close(Verdict::Protocol(e.clone())),
                        _ => Next::Close(Verdict::Done),
                    }
                } else {
                    Next::Flush
                }
            }
            _ => Next::Serve,
        }
    }

    /// Whether input is still being taken: the peer has not closed, no protocol error, and
    /// the session has not finished.
    pub fn reading(&self) -> bool {
        self.input == Input::Open && !self.finished
    }

    /// The engine made the last write that [`Next::LastWrite`] asked for.
    pub fn last_write_tried(&mut self) {
        if let Input::Failed { last_write_tried, .. } = &mut self.input {
            *last_write_tried = true;
        }
    }

    /// The server stops reading (shutdown, on a transport that cannot be half-closed): as if
    /// the peer had closed between requests, every reply owed is still written.
    pub fn end_input(&mut self) {
        if self.input == Input::Open {
            self.input = Input::Ended(None);
        }
    }

    /// Shutdown's drain timeout passed with this connection still writing: it closes now.
    pub fn cut_off(&mut self) {
        self.cut_off = true;
    }

    /// The request being received took longer than the request timeout: the connection
    /// closes now.
    pub fn time_out(&mut self) {
        self.timed_out = true;
    }

    pub fn request_timeout(&self) -> Duration {
        self.config.request_timeout
    }

    /// Requests decoded so far, answered or not.
    pub fn requests_received(&self) -> u64 {
        self.received
    }

    /// `n` more requests were handed to other threads ([`ServerSession::receive_requests`]).
    pub fn handed_out(&mut self, n: usize) {
        self.outstanding += n;
    }

    /// Requests handed out whose replies have not come back.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Queues the reply to a request handed out earlier.
    pub fn queue_handed_back(&mut self, reply: OutFrame) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if let Some(aside) = self.aside.as_mut() {
            if let Some(n) = aside.handed_bytes.pop_front() {
                aside.handed_total -= n;
            }
        }
        self.queue_reply(reply);
        self.settle();
    }

    /// Whether a frame waits for the memory budget (the engine is not reading this socket).
    pub fn awaiting_memory(&self) -> bool {
        self.awaiting_memory
    }

    /// Whether the budget has room for the frame waiting now (then feed the session no bytes,
    /// and it goes on).
    pub fn memory_room(&self) -> bool {
        let needed = self.holding(true).saturating_sub(FLOOR);
        self.awaiting_memory && self.config.budget.has_room(needed.saturating_sub(self.charged))
    }

    /// Tries again a frame that waits for memory, if the budget has room now, its requests run
    /// at once (as [`ServerSession::receive`]); returns whether it went on.
    pub fn retry_memory(&mut self) -> bool {
        if !self.memory_room() {
            return false;
        }
        let _ = self.receive(&[]); // an error is the session's to remember, as ever
        !self.awaiting_memory
    }

    /// Whether a request is partly received (its head or its body), the clock a request
    /// timeout runs on. A frame waiting for memory does not count: the wait is the server's.
    pub fn mid_request(&self) -> bool {
        if self.awaiting_memory || !self.reading() {
            return false;
        }
        match &self.decoder {
            Decoder::Frame(d) => !d.is_idle(),
            Decoder::Http { decoder, .. } => !decoder.is_idle(),
        }
    }

    /// Bytes this connection holds: the payload being read (reserved whole, once granted),
    /// the payloads handed out, the replies queued that own their bytes.
    ///
    /// The bytes waiting while a frame is refused are not charged: they are what the engine
    /// had read when it learned of the refusal (one read, or the few buffers a multishot
    /// receive fills before its cancel lands), and charging them would let the waiting
    /// connections together fill the budget that they wait on.
    fn holding(&self, granted: bool) -> usize {
        let reading = match &self.decoder {
            Decoder::Frame(d) if granted => d.pending_payload(),
            Decoder::Frame(_) | Decoder::Http { .. } => 0, // an HTTP head is bounded by its limits
        };
        let handed = self.aside.as_ref().map_or(0, |a| a.handed_total);
        reading + handed + self.out.owned_bytes()
    }

    /// What the budget should hold for this connection now.
    fn memory_needed(&self) -> usize {
        self.holding(!self.awaiting_memory).saturating_sub(FLOOR)
    }

    /// Reserves what the connection needs beyond what it has, the payload being read
    /// included; false if refused.
    fn reserve(&mut self) -> bool {
        let needed = self.holding(true).saturating_sub(FLOOR);
        if needed <= self.charged {
            return true;
        }
        if self.config.budget.try_reserve(needed - self.charged) {
            self.charged = needed;
            return true;
        }
        false
    }

    /// Brings the reservation to what the connection holds (after replies left, or a
    /// worker's reply came back).
    fn settle(&mut self) {
        let needed = self.memory_needed();
        if needed > self.charged {
            self.config.budget.take(needed - self.charged);
        } else if needed < self.charged {
            self.config.budget.release(self.charged - needed);
        }
        self.charged = needed;
    }

    fn fail(&mut self, error: &SessionError) {
        if !matches!(self.input, Input::Failed { .. }) {
            self.input = Input::Failed {
                error: error.clone(),
                last_write_tried: false,
            };
        }
    }

    /// Whether the session takes no more requests: the engine should stop reading and close
    /// the connection once the queued output is written.
    pub fn finished(&self) -> bool {
        self.finished
    }

    pub fn chunk_size(&self) -> usize {
        self.config.chunk_size
    }

    /// Feeds received bytes. Each request they complete runs at once, its reply queued.
    /// Returns how many requests completed. Feeding no bytes retries a frame that waits for
    /// memory.
    ///
    /// An error is also the session's state: [`ServerSession::next`] says what follows it.
    pub fn receive(&mut self, data: &[u8]) -> Result<usize, SessionError> {
        if !self.reading() {
            return Ok(0); // bytes after input ended: not ours to read
        }
        let result = if matches!(self.decoder, Decoder::Http { .. }) {
            self.receive_http(data)
        } else {
            let mut done = 0;
            self.decode(data, |this, request| {
                this.queue_reply(workload::execute(request));
                done += 1;
            })
            .map(|()| done)
        };
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }

    /// Feeds received bytes and hands back the requests they complete, without running them:
    /// for engines that execute requests on other threads. Replies must come back through
    /// [`ServerSession::queue_reply`] in the order the requests were handed out.
    ///
    /// HTTP requests are answered at once (a cache lookup gains nothing from another thread).
    ///
    /// On an error the requests before it are still in `requests`, theirs to hand out or drop.
    pub fn receive_requests(&mut self, data: &[u8], requests: &mut Vec<Request>) -> Result<(), SessionError> {
        if !self.reading() {
            return Ok(());
        }
        let result = if matches!(self.decoder, Decoder::Http { .. }) {
            self.receive_http(data).map(|_| ())
        } else {
            self.decode(data, |this, request| {
                let n = request.payload.len();
                let aside = this.aside.get_or_insert_with(Box::default);
                aside.handed_bytes.push_back(n);
                aside.handed_total += n;
                requests.push(request);
            })
        };
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }

    fn receive_http(&mut self, data: &[u8]) -> Result<usize, SessionError> {
        let Decoder::Http { decoder, files } = &mut self.decoder else {
            return Ok(0);
        };
        if self.finished {
            return Ok(0); // bytes after the last request we answer: not ours to read
        }
        self.counters.bytes_in += data.len() as u64;
        decoder.push(data);
        let mut done = 0;
        while let Some(parsed) = decoder.next_request() {
            match parsed {
                Ok(request) => {
                    self.received += 1;
                    self.out.push(files.respond(&request));
                    self.counters.requests += 1;
                    done += 1;
                    if !request.keep_alive {
                        self.finished = true;
                        break;
                    }
                }
                Err(e) => {
                    self.out.push(files.refuse(&e));
                    self.finished = true;
                    return Err(e.into());
                }
            }
        }
        Ok(done)
    }

    fn decode(
        &mut self,
        data: &[u8],
        on_request: impl FnMut(&mut Self, Request),
    ) -> Result<(), SessionError> {
        self.counters.bytes_in += data.len() as u64;
        let waited = self
            .aside
            .as_mut()
            .map(|a| std::mem::take(&mut a.stash))
            .filter(|stash| !stash.is_empty());
        let result = match waited {
            None => self.decode_bytes(data, on_request),
            Some(mut waited) => {
                waited.extend_from_slice(data);
                self.decode_bytes(&waited, on_request)
            }
        };
        self.settle();
        result
    }

    fn decode_bytes(
        &mut self,
        mut data: &[u8],
        mut on_request: impl FnMut(&mut Self, Request),
    ) -> Result<(), SessionError> {
        loop {
            // A header just read announced more than the floor allows: its payload is read
            // only once reserved.
            self.awaiting_memory = !self.reserve();
            if self.awaiting_memory {
                self.aside
                    .get_or_insert_with(Box::default)
                    .stash
                    .extend_from_slice(data);
                return Ok(());
            }
            let Decoder::Frame(decoder) = &mut self.decoder else {
                return Ok(());
            };
            if data.is_empty() {
                return Ok(());
            }
            // No further than the end of a header, so that its length is known before any of
            // its payload is taken.
            let take = decoder.header_missing().map_or(data.len(), |n| n.min(data.len()));
            let (used, frame) = decoder.decode(&data[..take])?;
            data = &data[used..];
            if let Some(request) = frame {
                self.received += 1;
                self.check_limits(&request.header)?;
                on_request(self, request);
            }
        }
    }

    fn check_limits(&self, h: &RequestHeader) -> Result<(), SessionError> {
        if let ReplySize::Bytes(n) = h.reply {
            if n as usize > self.config.max_frame {
                return Err(SessionError::ReplyTooLarge {
                    id: h.id,
                    asked: n as u64,
                    max: self.config.max_frame,
                });
            }
        }
        let max_ns = self.config.max_spin.as_nanos() as u64;
        if h.spin_ns > max_ns {
            return Err(SessionError::SpinTooLong {
                id: h.id,
                asked_ns: h.spin_ns,
                max_ns,
            });
        }
        Ok(())
    }

    /// Queues a reply produced by [`crate::sansio::workload::execute`].
    pub fn queue_reply(&mut self, reply: OutFrame) {
        self.counters.requests += 1;
        self.out.push(reply);
    }

    /// What is waiting to be written.
    pub fn out(&self) -> &OutQueue {
        &self.out
    }

    /// What is waiting to be written, held in place until the next [`ServerSession::wrote`]:
    /// for engines that hand the kernel the slices' addresses and learn later how much it
    /// took (see [`OutQueue::hold`]).
    pub fn hold_out(&mut self) -> &OutQueue {
        self.out.hold();
        &self.out
    }

    /// The socket accepted `n` bytes of what [`ServerSession::out`] offered (and releases a
    /// hold).
    pub fn wrote(&mut self, n: usize) {
        self.counters.bytes_out += n as u64;
        self.out.advance(n);
        if self.charged > 0 {
            self.settle();
        }
    }

    /// Whether the engine should read more from this connection now: input still open, and
    /// not too many reply bytes waiting (back-pressure).
    pub fn wants_read(&self) -> bool {
        self.reading() && !self.awaiting_memory && self.out.queued_bytes() < self.config.out_high_water
    }

    /// The peer closed its sending side. Fine between frames; an error inside one (the
    /// verdict [`ServerSession::next`] gives once the replies owed are written).
    pub fn peer_closed(&mut self) {
        if self.input != Input::Open {
            return;
        }
        let idle = match &self.decoder {
            Decoder::Frame(d) => d.is_idle(),
            Decoder::Http { decoder, .. } => self.finished || decoder.is_idle(),
        };
        self.input = Input::Ended((!idle).then_some(SessionError::Truncated));
    }

    pub fn counters(&self) -> SessionCounters {
        self.counters
    }
}

impl Drop for ServerSession {
    /// A closed connection gives back what it reserved, whatever state it ended in.
    fn drop(&mut self) {
        if self.charged > 0 {
            self.config.budget.release(self.charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sansio::frame::{pattern_matches, Body, FrameDecoder, ReplyHeader};
    use std::io::IoSlice;

    #[test]
    fn a_servers_sessions_share_one_configuration_and_stay_small() {
        let config = Arc::new(SessionConfig::default());
        let sessions: Vec<ServerSession> = (0..3).map(|_| ServerSession::shared(config.clone())).collect();
        assert_eq!(Arc::strong_count(&config), 1 + sessions.len());
        // Every open connection holds one: an idle connection's memory is mostly this. It
        // is 336 bytes: 480 with a copy of the configuration inside and the budget's and the
        // pool's state unboxed, 312 before the budget and the request timeout came. bench's
        // rss_idle_* figures watch the whole.
        let size = std::mem::size_of::<ServerSession>();
        assert!(size <= 344, "a session is {size} bytes");
    }

    fn request_bytes(id: u64, payload: usize, reply: ReplySize, spin_ns: u64) -> Vec<u8> {
        let mut q = OutQueue::new(1 << 20);
        q.push(OutFrame::new(
            RequestHeader {
                payload_len: 0,
                id,
                send_ns: id + 1000,
                spin_ns,
                reply,
            },
            Body::Pattern {
                seed: id,
                len: payload,
            },
        ));
        let mut out = Vec::new();
        while let Some(s) = q.front() {
            out.extend_from_slice(s);
            let n = s.len();
            q.advance(n);
        }
        out
    }

    /// Drains the session as a socket that accepts at most `per_write` bytes per call would.
    fn written(s: &mut ServerSession, per_write: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..1_000_000 {
            let mut slices = [IoSlice::new(&[]); 16];
            let n = s.out().fill(&mut slices);
            if n == 0 {
                return out;
            }
            let mut left = per_write;
            let mut took = 0;
            for sl in &slices[..n] {
                let t = sl.len().min(left);
                out.extend_from_slice(&sl[..t]);
                took += t;
                left -= t;
            }
            s.wrote(took);
        }
        panic!("session output never drained");
    }

    #[test]
    fn pipelined_requests_in_one_byte_steps_come_back_in_order() {
        let mut s = ServerSession::new(&SessionConfig::default());
        let mut input = Vec::new();
        for id in 0..20u64 {
            let reply = if id % 2 == 0 {
                ReplySize::Echo
            } else {
                ReplySize::Bytes(id as u32 * 1000)
            };
            input.extend(request_bytes(id, id as usize * 300, reply, 0));
        }
        let mut done = 0;
        for b in &input {
            done += s.receive(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(done, 20);
        let out = written(&mut s, 777);
        let mut dec = FrameDecoder::<ReplyHeader>::new(DEFAULT_MAX_FRAME);
        let mut rest = &out[..];
        let mut ids = Vec::new();
        while !rest.is_empty() {
            let (used, frame) = dec.decode(rest).unwrap();
            rest = &rest[used..];
            if let Some(f) = frame {
                let id = f.header.id;
                let len = if id % 2 == 0 {
                    id as usize * 300
                } else {
                    id as usize * 1000
                };
                assert_eq!(f.payload.len(), len);
                assert_eq!(f.header.send_ns, id + 1000);
                assert!(pattern_matches(id, 0, &f.payload));
                ids.push(id);
            }
        }
        assert_eq!(ids, (0..20).collect::<Vec<_>>());
        assert_eq!(s.counters().requests, 20);
        assert_eq!(s.counters().bytes_in, input.len() as u64);
        assert_eq!(s.counters().bytes_out, out.len() as u64);
        s.peer_closed();
        assert_eq!(s.next(), Next::Close(Verdict::Done));
    }

    /// Replies' ids and payload lengths, from the bytes a session wrote.
    fn replies(out: &[u8]) -> Vec<(u64, usize)> {
        let mut dec = FrameDecoder::<ReplyHeader>::new(DEFAULT_MAX_FRAME);
        let mut rest = out;
        let mut got = Vec::new();
        while !rest.is_empty() {
            let (used, frame) = dec.decode(rest).unwrap();
            rest = &rest[used..];
            if let Some(f) = frame {
                assert!(
                    pattern_matches(f.header.id, 0, &f.payload),
                    "reply {} corrupt",
                    f.header.id
                );
                got.push((f.header.id, f.payload.len()));
            }
        }
        got
    }

    /// A session configuration whose memory budget (returned beside it) holds `limit` bytes.
    fn budgeted(limit: usize) -> (Arc<MemoryBudget>, SessionConfig) {
        let budget = Arc::new(MemoryBudget::new(limit));
        let cfg = SessionConfig {
            budget: budget.clone(),
            ..SessionConfig::default()
        };
        (budget, cfg)
    }

    #[test]
    fn a_frame_the_budget_cannot_hold_waits_and_then_completes() {
        // Room for one 800 KiB frame beyond the floors, not two.
        let (budget, cfg) = budgeted(1 << 20);
        let size = 800 << 10;
        let (mut a, mut b) = (ServerSession::new(&cfg), ServerSession::new(&cfg));
        let (fa, fb) = (
            request_bytes(1, size, ReplySize::Echo, 0),
            request_bytes(2, size, ReplySize::Echo, 0),
        );
        assert_eq!(a.receive(&fa[..1000]).unwrap(), 0);
        assert_eq!(
            budget.held(),
            size - FLOOR,
            "a reserves its whole payload at the header"
        );
        assert_eq!(b.receive(&fb[..1000]).unwrap(), 0);
        assert!(b.awaiting_memory() && !b.wants_read() && !b.memory_room());
        assert!(!b.mid_request(), "the wait is the server's, not the client's");
        assert_eq!(budget.refusals(), 1);
        // No more than a header's worth of b's payload was taken before the refusal.
        assert_eq!(budget.held(), size - FLOOR);
        // a completes; its reply (the echoed payload) still holds the memory until written.
        assert_eq!(a.receive(&fa[1000..]).unwrap(), 1);
        assert_eq!(b.receive(&[]).unwrap(), 0);
        assert!(b.awaiting_memory());
        let out_a = written(&mut a, 100_000);
        assert_eq!(replies(&out_a), vec![(1, size)]);
        assert_eq!(budget.held(), 0, "written replies give their memory back");
        // Now b goes on, with the bytes it had waiting and the rest.
        assert!(b.memory_room());
        assert_eq!(b.receive(&[]).unwrap(), 0);
        assert!(!b.awaiting_memory() && b.wants_read());
        assert_eq!(b.receive(&fb[1000..]).unwrap(), 1);
        assert_eq!(replies(&written(&mut b, 100_000)), vec![(2, size)]);
        assert_eq!(b.counters().bytes_in, fb.len() as u64);
        assert_eq!(budget.held(), 0);
        assert!(budget.peak() <= budget.limit());
    }

    #[test]
    fn small_requests_stay_within_the_floor_and_a_closed_connection_gives_back() {
        let (budget, cfg) = budgeted(1 << 20);
        let mut s = ServerSession::new(&cfg);
        for id in 0..500 {
            s.receive(&request_bytes(id, 64, ReplySize::Echo, 0)).unwrap();
        }
        assert_eq!(
            budget.peak(),
            0,
            "500 small replies queued never reach the budget"
        );
        let big = request_bytes(9, 500 << 10, ReplySize::Echo, 0);
        s.receive(&big[..100_000]).unwrap();
        assert!(budget.held() > 0);
        drop(s);
        assert_eq!(
            budget.held(),
            0,
            "a connection closed mid-frame keeps nothing reserved"
        );
    }

    #[test]
    fn requests_handed_out_are_held_until_their_replies_come_back() {
        let (budget, cfg) = budgeted(1 << 20);
        let mut s = ServerSession::new(&cfg);
        let mut requests = Vec::new();
        s.receive_requests(
            &request_bytes(1, 300 << 10, ReplySize::Bytes(8), 0),
            &mut requests,
        )
        .unwrap();
        s.handed_out(requests.len());
        assert_eq!(budget.held(), (300 << 10) - FLOOR);
        for r in requests.drain(..) {
            s.queue_handed_back(workload::execute(r));
        }
        assert_eq!(budget.held(), 0, "a pattern reply owns no memory");
        assert_eq!(replies(&written(&mut s, 1000)), vec![(1, 8)]);
    }

    #[test]
    fn limits_are_enforced() {
        let cfg = SessionConfig {
            max_frame: 1000,
            max_spin: Duration::from_micros(5),
            ..SessionConfig::default()
        };
        let mut s = ServerSession::new(&cfg);
        let err = s.receive(&request_bytes(1, 0, ReplySize::Bytes(1001), 0));
        assert!(matches!(
            err,
            Err(SessionError::ReplyTooLarge { asked: 1001, .. })
        ));
        let mut s = ServerSession::new(&cfg);
        let err = s.receive(&request_bytes(1, 0, ReplySize::Echo, 6_000));
        assert!(matches!(err, Err(SessionError::SpinTooLong { .. })));
        let mut s = ServerSession::new(&cfg);
        let err = s.receive(&request_bytes(1, 1001, ReplySize::Echo, 0));
        assert!(matches!(
            err,
            Err(SessionError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    #[test]
    fn truncated_frame_is_reported_at_close() {
        let mut s = ServerSession::new(&SessionConfig::default());
        let bytes = request_bytes(1, 100, ReplySize::Echo, 0);
        s.receive(&bytes[..50]).unwrap();
        s.peer_closed();
        assert_eq!(s.next(), Next::Close(Verdict::Protocol(SessionError::Truncated)));
    }

    /// After a clean end of input, every reply owed is written and every request handed out
    /// answered before the session says close.
    #[test]
    fn the_close_waits_for_every_reply_owed_after_the_peer_hangs_up() {
        let mut s = ServerSession::new(&SessionConfig::default());
        assert_eq!(s.next(), Next::Serve);
        let mut handed = Vec::new();
        s.receive_requests(&request_bytes(1, 10, ReplySize::Echo, 0), &mut handed)
            .unwrap();
        s.handed_out(handed.len());
        s.receive(&request_bytes(2, 10, ReplySize::Echo, 0)).unwrap();
        s.peer_closed();
        assert!(!s.reading() && !s.wants_read());
        assert_eq!(s.next(), Next::Flush, "a reply is queued");
        written(&mut s, 7);
        assert_eq!(
            s.next(),
            Next::Flush,
            "a request is still out with another thread"
        );
        assert_eq!(s.outstanding(), 1);
        s.queue_handed_back(workload::execute(handed.remove(0)));
        assert_eq!(s.outstanding(), 0);
        assert_eq!(s.next(), Next::Flush);
        written(&mut s, 7);
        assert_eq!(s.next(), Next::Close(Verdict::Done));
        assert_eq!(s.counters().requests, 2);
    }

    /// A protocol error: input stops there, the replies before it get one last write, and
    /// then the session closes whether or not they all left.
    #[test]
    fn a_protocol_error_gets_one_last_write_then_closes() {
        let mut s = ServerSession::new(&SessionConfig::default());
        let mut bytes = request_bytes(1, 0, ReplySize::Bytes(5000), 0);
        bytes.extend_from_slice(&[0xff; 64]); // a header no frame has
        assert!(s.receive(&bytes).is_err());
        assert!(!s.reading());
        assert_eq!(
            s.receive(&request_bytes(2, 0, ReplySize::Echo, 0)),
            Ok(0),
            "nothing after the error is read"
        );
        assert_eq!(s.next(), Next::LastWrite);
        s.wrote(100); // the transport took part of it at once
        assert_eq!(s.next(), Next::LastWrite, "the engine has not said it tried");
        s.last_write_tried();
        assert!(matches!(
            s.next(),
            Next::Close(Verdict::Protocol(SessionError::Frame(_)))
        ));
        // With nothing queued there is nothing to write: close at once.
        let mut t = ServerSession::new(&SessionConfig::default());
        assert!(t.receive(&[0xff; 64]).is_err());
        assert!(matches!(t.next(), Next::Close(Verdict::Protocol(_))));
    }

    #[test]
    fn a_cut_off_closes_at_once_whatever_is_queued() {
        let mut s = ServerSession::new(&SessionConfig::default());
        s.receive(&request_bytes(1, 0, ReplySize::Bytes(5000), 0))
            .unwrap();
        assert_eq!(s.next(), Next::Serve);
        s.cut_off();
        assert_eq!(s.next(), Next::Close(Verdict::CutOff));
    }

    /// HTTP's `Connection: close` ends input like a hang-up: the response goes out, then close.
    #[test]
    fn a_finished_session_flushes_then_closes() {
        let cfg = SessionConfig {
            http: Some(Arc::new(StaticFiles::default())),
            ..SessionConfig::default()
        };
        let mut s = ServerSession::new(&cfg);
        s.receive(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n")
            .unwrap();
        assert!(s.finished() && !s.reading());
        assert_eq!(s.next(), Next::Flush);
        let out = written(&mut s, 10);
        assert!(
            out.starts_with(b"HTTP/1.1 404"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(out.windows(4).filter(|w| w == b"HTTP").count(), 1, "one response");
        assert_eq!(s.next(), Next::Close(Verdict::Done));
    }

    #[test]
    fn back_pressure_stops_reading_until_replies_drain() {
        let cfg = SessionConfig {
            out_high_water: 10_000,
            ..SessionConfig::default()
        };
        let mut s = ServerSession::new(&cfg);
        s.receive(&request_bytes(1, 0, ReplySize::Bytes(20_000), 0))
            .unwrap();
        assert!(!s.wants_read());
        written(&mut s, 4096);
        assert!(s.wants_read());
    }
}
