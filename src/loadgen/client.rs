//! The client side of the `frame` protocol, without I/O: one connection's requests in flight.
//!
//! The driver queues a request when its scheduled time comes, writes what [`ClientConn::out`]
//! offers, and feeds whatever the socket returns to [`ClientConn::receive`], which matches
//! each reply with the oldest request in flight (the protocol answers in order), checks its id,
//! length and every payload byte, and reports the completion with its timestamps.

use std::collections::VecDeque;

use crate::frame::{
    pattern_matches, Body, FrameDecoder, FrameError, OutFrame, OutQueue, ReplyHeader, ReplySize,
    RequestHeader,
};

/// A request sent and not yet answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub id: u64,
    pub scheduled_ns: u64,
    pub sent_ns: u64,
    pub request_bytes: u32,
    pub reply_bytes: u32,
    /// Scheduled inside the measurement window (not warm-up).
    pub measured: bool,
}

/// One answered request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub request: InFlight,
    pub done_ns: u64,
    /// The reply's id, length and payload were all as expected.
    pub ok: bool,
}

/// The reply stream cannot be trusted any more: the connection is lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("server sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("server sent a reply with no request in flight (id {0})")]
    Unsolicited(u64),
    #[error("reply id {got} arrived while {expected} was the oldest in flight (out of order)")]
    OutOfOrder { expected: u64, got: u64 },
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSpec {
    pub request_bytes: u32,
    pub reply: ReplySize,
    pub spin_ns: u64,
}

#[derive(Debug)]
pub struct ClientConn {
    out: OutQueue,
    decoder: FrameDecoder<ReplyHeader>,
    in_flight: VecDeque<InFlight>,
    max_in_flight: usize,
}

impl ClientConn {
    pub fn new(chunk_size: usize, max_frame: usize, max_in_flight: usize) -> Self {
        ClientConn {
            out: OutQueue::new(chunk_size),
            decoder: FrameDecoder::new(max_frame),
            in_flight: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Whether one more request fits under the in-flight cap.
    pub fn can_send(&self) -> bool {
        self.in_flight.len() < self.max_in_flight
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Requests in flight that were scheduled inside the measurement window.
    pub fn measured_in_flight(&self) -> usize {
        self.in_flight.iter().filter(|r| r.measured).count()
    }

    /// Queues a request. Its payload is the pattern seeded with its id, so the echo can be
    /// verified without keeping a copy.
    pub fn queue(&mut self, id: u64, scheduled_ns: u64, now_ns: u64, spec: RequestSpec, measured: bool) {
        let reply_bytes = match spec.reply {
            ReplySize::Echo => spec.request_bytes,
            ReplySize::Bytes(n) => n,
        };
        self.out.push(OutFrame::new(
            RequestHeader {
                payload_len: 0,
                id,
                send_ns: scheduled_ns,
                spin_ns: spec.spin_ns,
                reply: spec.reply,
            },
            Body::Pattern {
                seed: id,
                len: spec.request_bytes as usize,
            },
        ));
        self.in_flight.push_back(InFlight {
            id,
            scheduled_ns,
            sent_ns: now_ns,
            request_bytes: spec.request_bytes,
            reply_bytes,
            measured,
        });
    }

    pub fn out(&self) -> &OutQueue {
        &self.out
    }

    /// [`ClientConn::out`], held in place until the next [`ClientConn::wrote`] (for sends the
    /// kernel completes later; see [`OutQueue::hold`]).
    pub fn hold_out(&mut self) -> &OutQueue {
        self.out.hold();
        &self.out
    }

    pub fn wrote(&mut self, n: usize) {
        self.out.advance(n);
    }

    /// Feeds bytes from the socket; calls `done` for each reply they complete.
    pub fn receive(
        &mut self,
        mut data: &[u8],
        now_ns: u64,
        mut done: impl FnMut(Completion),
    ) -> Result<(), ClientError> {
        while !data.is_empty() {
            let (used, frame) = self.decoder.decode(data)?;
            data = &data[used..];
            let Some(frame) = frame else { continue };
            let h = frame.header;
            let request = self.in_flight.pop_front().ok_or(ClientError::Unsolicited(h.id))?;
            if request.id != h.id {
                return Err(ClientError::OutOfOrder {
                    expected: request.id,
                    got: h.id,
                });
            }
            let ok = h.send_ns == request.scheduled_ns
                && frame.payload.len() == request.reply_bytes as usize
                && pattern_matches(h.id, 0, &frame.payload);
            done(Completion {
                request,
                done_ns: now_ns,
                ok,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{ServerSession, SessionConfig};
    use crate::workload;

    /// Moves every queued byte from one side to the other in `step`-sized pieces.
    fn pump(client: &mut ClientConn, server: &mut ServerSession, step: usize) -> Vec<Completion> {
        let mut done = Vec::new();
        for _ in 0..100_000 {
            if let Some(s) = client.out().front() {
                let n = s.len().min(step);
                server.receive(&s[..n]).unwrap();
                client.wrote(n);
            } else if let Some(s) = server.out().front() {
                let n = s.len().min(step);
                let bytes = s[..n].to_vec();
                server.wrote(n);
                client.receive(&bytes, 99, |c| done.push(c)).unwrap();
            } else {
                return done;
            }
        }
        panic!("did not settle");
    }

    #[test]
    fn client_and_server_sessions_agree() {
        let mut client = ClientConn::new(4096, 1 << 20, 8);
        let mut server = ServerSession::new(&SessionConfig::default());
        let specs = [
            RequestSpec {
                request_bytes: 0,
                reply: ReplySize::Echo,
                spin_ns: 0,
            },
            RequestSpec {
                request_bytes: 5000,
                reply: ReplySize::Echo,
                spin_ns: 0,
            },
            RequestSpec {
                request_bytes: 10,
                reply: ReplySize::Bytes(70_000),
                spin_ns: 1000,
            },
        ];
        for (i, spec) in specs.iter().enumerate() {
            assert!(client.can_send());
            client.queue(i as u64 + 1, 10 * i as u64, 10 * i as u64 + 1, *spec, i > 0);
        }
        let done = pump(&mut client, &mut server, 333);
        assert_eq!(done.len(), 3);
        assert!(done.iter().all(|c| c.ok));
        assert_eq!(done[2].request.reply_bytes, 70_000);
        assert!(!done[0].request.measured && done[1].request.measured);
        assert_eq!(client.in_flight(), 0);
    }

    #[test]
    fn a_corrupted_payload_is_counted_not_trusted() {
        let mut client = ClientConn::new(4096, 1 << 20, 8);
        let spec = RequestSpec {
            request_bytes: 100,
            reply: ReplySize::Echo,
            spin_ns: 0,
        };
        client.queue(5, 1, 2, spec, true);
        // A server that flips one byte of the echo.
        let mut payload = crate::frame::pattern_vec(5, 100);
        payload[50] ^= 0xff;
        let mut reply = OutQueue::new(4096);
        reply.push(OutFrame::new(
            ReplyHeader {
                payload_len: 0,
                id: 5,
                send_ns: 1,
            },
            Body::Owned(payload),
        ));
        let mut bytes = Vec::new();
        while let Some(s) = reply.front() {
            bytes.extend_from_slice(s);
            let n = s.len();
            reply.advance(n);
        }
        let mut done = Vec::new();
        client.receive(&bytes, 3, |c| done.push(c)).unwrap();
        assert_eq!(done.len(), 1);
        assert!(!done[0].ok);
    }

    #[test]
    fn out_of_order_and_unsolicited_replies_are_errors() {
        let frame = |id| {
            let mut q = OutQueue::new(4096);
            q.push(workload::execute(crate::frame::Frame {
                header: RequestHeader {
                    payload_len: 0,
                    id,
                    send_ns: 0,
                    spin_ns: 0,
                    reply: ReplySize::Echo,
                },
                payload: vec![],
            }));
            q.front().unwrap().to_vec()
        };
        let mut client = ClientConn::new(4096, 1 << 20, 1);
        assert_eq!(
            client.receive(&frame(1), 0, |_| {}),
            Err(ClientError::Unsolicited(1))
        );
        let mut client = ClientConn::new(4096, 1 << 20, 1);
        client.queue(
            2,
            0,
            0,
            RequestSpec {
                request_bytes: 0,
                reply: ReplySize::Echo,
                spin_ns: 0,
            },
            true,
        );
        assert!(!client.can_send());
        assert_eq!(
            client.receive(&frame(3), 0, |_| {}),
            Err(ClientError::OutOfOrder { expected: 2, got: 3 })
        );
    }
}
