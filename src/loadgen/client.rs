//! The client side of the protocols, without I/O: one connection's requests in flight.
//!
//! The driver queues a request when its scheduled time comes, writes what [`ClientConn::out`]
//! offers, and feeds whatever the socket returns to [`ClientConn::receive`], which matches
//! each reply with the oldest request in flight (both protocols answer in order) and reports
//! the completion with its timestamps. Frame replies are checked by id, length and every
//! payload byte; HTTP responses by status (200) and body length (the page's size, when the
//! paths file gives it, and always the response's own Content-Length).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::sansio::frame::{
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
    /// The HTTP status (0 for the frame protocol).
    pub status: u16,
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
    #[error("server sent a bad HTTP response: {0}")]
    Http(String),
}

/// The pages an HTTP load asks for: each one's request, ready to send, and its size where
/// the paths file gives it.
#[derive(Debug)]
pub struct Pages {
    paths: Vec<String>,
    requests: Vec<Arc<[u8]>>,
    sizes: Vec<Option<u64>>,
}

impl Pages {
    /// Pages from `(path, size)` pairs; `host` goes into each request's Host field.
    pub fn new(host: &str, pages: Vec<(String, Option<u64>)>) -> Result<Self, String> {
        if pages.is_empty() {
            return Err("no pages to request".into());
        }
        let mut out = Pages {
            paths: Vec::new(),
            requests: Vec::new(),
            sizes: Vec::new(),
        };
        for (path, size) in pages {
            if !path.starts_with('/')
                || path
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(format!(
                    "'{path}' is not a request path (it must start with / and hold no spaces)"
                ));
            }
            let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: iolab\r\n\r\n");
            out.requests.push(request.into_bytes().into());
            out.paths.push(path);
            out.sizes.push(size);
        }
        Ok(out)
    }

    /// Reads a paths file: one page per line, `PATH [BYTES]`; `#` starts a comment.
    pub fn parse(host: &str, text: &str) -> Result<Self, String> {
        let mut pages = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let path = fields.next().unwrap_or_default().to_string();
            let size = match fields.next() {
                Some(s) => Some(
                    s.parse::<u64>()
                        .map_err(|_| format!("line {}: '{s}' is not a size in bytes", i + 1))?,
                ),
                None => None,
            };
            pages.push((path, size));
        }
        Pages::new(host, pages)
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Mean page size, where every size is known.
    pub fn mean_size(&self) -> Option<f64> {
        let sizes: Option<Vec<u64>> = self.sizes.iter().copied().collect();
        sizes.map(|s| s.iter().sum::<u64>() as f64 / s.len().max(1) as f64)
    }
}

/// How a connection reads its replies.
#[derive(Debug)]
enum Codec {
    Frame(FrameDecoder<ReplyHeader>),
    Http(HttpReader),
}

/// An HTTP response stream, read incrementally.
#[derive(Debug)]
struct HttpReader {
    pages: Arc<Pages>,
    /// A response head that has not fully arrived.
    head: Vec<u8>,
    /// The response whose body is arriving: its status, Content-Length, and bytes still due.
    body: Option<(u16, u64, u64)>,
}

/// Longest response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 << 10;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSpec {
    pub request_bytes: u32,
    pub reply: ReplySize,
    pub spin_ns: u64,
    /// HTTP: the index of the page to ask for.
    pub page: u32,
}

#[derive(Debug)]
pub struct ClientConn {
    out: OutQueue,
    codec: Codec,
    in_flight: VecDeque<InFlight>,
    max_in_flight: usize,
}

impl ClientConn {
    /// A frame-protocol connection.
    pub fn new(chunk_size: usize, max_frame: usize, max_in_flight: usize) -> Self {
        ClientConn {
            out: OutQueue::new(chunk_size),
            codec: Codec::Frame(FrameDecoder::new(max_frame)),
            in_flight: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// An HTTP/1.1 connection asking for `pages`.
    pub fn http(chunk_size: usize, pages: Arc<Pages>, max_in_flight: usize) -> Self {
        ClientConn {
            out: OutQueue::new(chunk_size),
            codec: Codec::Http(HttpReader {
                pages,
                head: Vec::new(),
                body: None,
            }),
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
        if let Codec::Http(http) = &self.codec {
            let page = spec.page as usize % http.pages.len();
            let request = http.pages.requests[page].clone();
            let request_bytes = request.len() as u32;
            self.out.push(OutFrame::raw(Vec::new(), Body::Shared(request)));
            self.in_flight.push_back(InFlight {
                id,
                scheduled_ns,
                sent_ns: now_ns,
                request_bytes,
                reply_bytes: http.pages.sizes[page].map_or(u32::MAX, |s| s.min(u32::MAX as u64 - 1) as u32),
                measured,
            });
            return;
        }
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
        if matches!(self.codec, Codec::Http(_)) {
            return self.receive_http(data, now_ns, &mut done);
        }
        while !data.is_empty() {
            let Codec::Frame(decoder) = &mut self.codec else {
                return Ok(());
            };
            let (used, frame) = decoder.decode(data)?;
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
                status: 0,
            });
        }
        Ok(())
    }

    fn receive_http(
        &mut self,
        mut data: &[u8],
        now_ns: u64,
        done: &mut impl FnMut(Completion),
    ) -> Result<(), ClientError> {
        let Codec::Http(http) = &mut self.codec else {
            return Ok(());
        };
        loop {
            if let Some((status, length, left)) = &mut http.body {
                let take = (*left).min(data.len() as u64);
                *left -= take;
                data = &data[take as usize..];
                if *left > 0 {
                    return Ok(());
                }
                let (status, length) = (*status, *length);
                http.body = None;
                let request = self
                    .in_flight
                    .pop_front()
                    .ok_or_else(|| ClientError::Http("a response with no request in flight".into()))?;
                let size_ok = request.reply_bytes == u32::MAX || u64::from(request.reply_bytes) == length;
                done(Completion {
                    request,
                    done_ns: now_ns,
                    ok: status == 200 && size_ok,
                    status,
                });
                continue;
            }
            if data.is_empty() {
                return Ok(());
            }
            // A head arrives whole in `data` almost always; otherwise it gathers in `head`.
            let gathered;
            let bytes = if http.head.is_empty() {
                data
            } else {
                http.head.extend_from_slice(data);
                gathered = std::mem::take(&mut http.head);
                data = &[];
                &gathered[..]
            };
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut fields);
            let head_len = match response.parse(bytes) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => {
                    if bytes.len() > MAX_RESPONSE_HEAD {
                        return Err(ClientError::Http(format!(
                            "a response head over {MAX_RESPONSE_HEAD} bytes"
                        )));
                    }
                    http.head = bytes.to_vec();
                    return Ok(());
                }
                Err(e) => return Err(ClientError::Http(e.to_string())),
            };
            let status = response.code.unwrap_or(0);
            let mut length = None;
            for h in response.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    length = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok());
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(ClientError::Http(
                        "a chunked response (the load generator reads Content-Length bodies)".into(),
                    ));
                }
            }
            let length = length
                .ok_or_else(|| ClientError::Http(format!("a {status} response without Content-Length")))?;
            http.body = Some((status, length, length));
            if data.is_empty() && bytes.len() > head_len {
                // The head came from `head`: what followed it is in the same gathered buffer.
                let rest = bytes[head_len..].to_vec();
                return self.receive_http(&rest, now_ns, done);
            }
            data = &data[head_len.min(data.len())..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request with no payload, asking for page `page` (HTTP) or an empty echo (frames).
    fn empty_request(page: u32) -> RequestSpec {
        RequestSpec {
            request_bytes: 0,
            reply: ReplySize::Echo,
            spin_ns: 0,
            page,
        }
    }
    use crate::sansio::session::{ServerSession, SessionConfig};
    use crate::sansio::workload;

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
            empty_request(0),
            RequestSpec {
                request_bytes: 5000,
                reply: ReplySize::Echo,
                spin_ns: 0,
                page: 0,
            },
            RequestSpec {
                request_bytes: 10,
                reply: ReplySize::Bytes(70_000),
                spin_ns: 1000,
                page: 0,
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
            page: 0,
        };
        client.queue(5, 1, 2, spec, true);
        // A server that flips one byte of the echo.
        let mut payload = crate::sansio::frame::pattern_vec(5, 100);
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
            q.push(workload::execute(crate::sansio::frame::Frame {
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
        client.queue(2, 0, 0, empty_request(0), true);
        assert!(!client.can_send());
        assert_eq!(
            client.receive(&frame(3), 0, |_| {}),
            Err(ClientError::OutOfOrder { expected: 2, got: 3 })
        );
    }

    fn http_pair(dir: &std::path::Path) -> (ClientConn, ServerSession) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("a.html"), "x".repeat(5000)).unwrap();
        std::fs::write(dir.join("b.txt"), "").unwrap();
        let files = crate::sansio::static_files::StaticFiles::load(dir, 1 << 20).unwrap();
        let server = ServerSession::new(&SessionConfig {
            http: Some(Arc::new(files)),
            ..SessionConfig::default()
        });
        let pages = Pages::parse(
            "h",
            "/a.html 5000\n/b.txt 0  # an empty page\n/missing\n/a.html 4999\n",
        )
        .unwrap();
        (ClientConn::http(4096, Arc::new(pages), 64), server)
    }

    proptest::proptest! {
        /// Any split of the response stream gives the same verdicts: 200 with the right
        /// size, an empty 200, a 404 counted by status, and a size mismatch caught.
        #[test]
        fn http_responses_are_read_whatever_the_split(step in 1usize..6000) {
            let dir = std::env::temp_dir().join(format!("iolab-client-http-{}-{step}", std::process::id()));
            let (mut client, mut server) = http_pair(&dir);
            for (id, page) in [0u32, 1, 2, 3, 0].into_iter().enumerate() {
                let spec = RequestSpec { request_bytes: 0, reply: ReplySize::Echo, spin_ns: 0, page };
                client.queue(id as u64, 0, 0, spec, true);
            }
            let done = pump(&mut client, &mut server, step);
            let verdicts: Vec<(u16, bool)> = done.iter().map(|c| (c.status, c.ok)).collect();
            proptest::prop_assert_eq!(verdicts, vec![(200, true), (200, true), (404, false), (200, false), (200, true)]);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn a_paths_file_is_checked_line_by_line() {
        assert!(Pages::parse("h", "# only a comment\n").is_err());
        let e = Pages::parse("h", "/a 12\n/b twelve\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(Pages::parse("h", "no-slash\n").is_err());
        let p = Pages::parse("h", "/a 10\n/b 30\n").unwrap();
        assert_eq!((p.len(), p.mean_size()), (2, Some(20.0)));
        assert_eq!(Pages::parse("h", "/a\n/b 30\n").unwrap().mean_size(), None);
    }

    #[test]
    fn a_chunked_or_lengthless_response_is_refused() {
        let pages = Arc::new(Pages::new("h", vec![("/".into(), None)]).unwrap());
        for response in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
        ] {
            let mut c = ClientConn::http(4096, pages.clone(), 4);
            c.queue(1, 0, 0, empty_request(0), true);
            assert!(matches!(
                c.receive(response.as_bytes(), 0, |_| {}),
                Err(ClientError::Http(_))
            ));
        }
    }
}
