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
//! frames of the design document, or HTTP/1.1 serving static files. A session can finish
//! before its peer does (HTTP's `Connection: close`, or a refused request): from then on
//! it takes no more input, and the engine closes the connection once
//! [`ServerSession::finished`] and the queued output is written.

use std::time::Duration;

use crate::sansio::frame::{
    FrameDecoder, FrameError, OutFrame, OutQueue, ReplySize, RequestHeader, DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_FRAME,
};
use crate::sansio::http::{HttpDecoder, HttpError, HttpLimits};
use crate::sansio::static_files::StaticFiles;
use crate::sansio::workload;
use std::sync::Arc;

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

#[derive(Debug)]
pub struct ServerSession {
    config: SessionConfig,
    decoder: Decoder,
    out: OutQueue,
    counters: SessionCounters,
    /// No more requests will be read (see [`ServerSession::finished`]).
    finished: bool,
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
        let decoder = match &config.http {
            Some(files) => Decoder::Http {
                decoder: HttpDecoder::new(config.http_limits),
                files: files.clone(),
            },
            None => Decoder::Frame(FrameDecoder::new(config.max_frame)),
        };
        ServerSession {
            config: config.clone(),
            decoder,
            out: OutQueue::new(config.chunk_size),
            counters: SessionCounters::default(),
            finished: false,
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
    /// Returns how many requests completed.
    pub fn receive(&mut self, data: &[u8]) -> Result<usize, SessionError> {
        if matches!(self.decoder, Decoder::Http { .. }) {
            return self.receive_http(data);
        }
        let mut done = 0;
        self.decode(data, |this, request| {
            this.queue_reply(workload::execute(request));
            done += 1;
        })?;
        Ok(done)
    }

    /// Feeds received bytes and hands back the requests they complete, without running them:
    /// for engines that execute requests on other threads. Replies must come back through
    /// [`ServerSession::queue_reply`] in the order the requests were handed out.
    ///
    /// HTTP requests are answered at once (a cache lookup gains nothing from another thread).
    pub fn receive_requests(&mut self, data: &[u8], requests: &mut Vec<Request>) -> Result<(), SessionError> {
        if matches!(self.decoder, Decoder::Http { .. }) {
            return self.receive_http(data).map(|_| ());
        }
        self.decode(data, |_, request| requests.push(request))
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
        mut data: &[u8],
        mut on_request: impl FnMut(&mut Self, Request),
    ) -> Result<(), SessionError> {
        self.counters.bytes_in += data.len() as u64;
        while !data.is_empty() {
            let Decoder::Frame(decoder) = &mut self.decoder else {
                return Ok(());
            };
            let (used, frame) = decoder.decode(data)?;
            data = &data[used..];
            if let Some(request) = frame {
                self.check_limits(&request.header)?;
                on_request(self, request);
            }
        }
        Ok(())
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
    }

    /// Whether the engine should read more from this connection now (back-pressure).
    pub fn wants_read(&self) -> bool {
        self.out.queued_bytes() < self.config.out_high_water
    }

    /// The peer closed its sending side. Fine between frames; an error inside one.
    pub fn peer_closed(&self) -> Result<(), SessionError> {
        let idle = match &self.decoder {
            Decoder::Frame(d) => d.is_idle(),
            Decoder::Http { decoder, .. } => self.finished || decoder.is_idle(),
        };
        if idle {
            Ok(())
        } else {
            Err(SessionError::Truncated)
        }
    }

    pub fn counters(&self) -> SessionCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sansio::frame::{pattern_matches, Body, FrameDecoder, ReplyHeader};
    use std::io::IoSlice;

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
        assert!(s.peer_closed().is_ok());
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
        assert_eq!(s.peer_closed(), Err(SessionError::Truncated));
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
