//! HTTP/1.1, the web half of the protocol layer, with no I/O in it: an incremental request
//! parser over a bounded buffer (`httparse` does the grammar), request-target normalisation,
//! and response heads.
//!
//! The parser accepts any split of the byte stream, like the frame decoder. Everything a
//! peer controls is bounded: the head (431), the number of header fields (431), a request
//! body (413; bodies are read and dropped, a static server has no use for them). A request
//! this server will not serve as asked (a bad request line, another method, a chunked body)
//! gets its status and `Connection: close`: the stream cannot be trusted past it.

use std::fmt::Write as _;

/// What one parse of a head found.
enum Parsed {
    /// A whole head: its request, or its refusal.
    Complete(Result<HttpRequest, HttpError>),
    Partial,
    /// Bytes that are not a request head.
    Refused(HttpError),
}

/// Limits on what one request may carry.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Request line plus header fields, in bytes.
    pub max_head: usize,
    /// Header fields per request (at most [`MAX_HEADER_FIELDS`]).
    pub max_headers: usize,
    /// A request body (Content-Length), read and dropped.
    pub max_body: usize,
}

/// The first bytes of a head are parsed as they arrive: a TLS hello or a binary protocol sent
/// to the HTTP port is refused at once, not when (if ever) it ends a line.
const PROBE: usize = 16;

/// The most header fields a request may ever carry: the parser's fields live on the stack,
/// so parsing a request allocates nothing.
pub const MAX_HEADER_FIELDS: usize = 64;

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head: 8 << 10,
            max_headers: MAX_HEADER_FIELDS,
            max_body: 64 << 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    HeaderFieldsTooLarge,
    NotImplemented,
    VersionNotSupported,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::PayloadTooLarge => 413,
            Status::HeaderFieldsTooLarge => 431,
            Status::NotImplemented => 501,
            Status::VersionNotSupported => 505,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::PayloadTooLarge => "Payload Too Large",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::NotImplemented => "Not Implemented",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// A request the server refuses; the connection closes after the response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {}: {detail}", .status.code())]
pub struct HttpError {
    pub status: Status,
    pub detail: String,
}

impl HttpError {
    fn new(status: Status, detail: impl Into<String>) -> Self {
        HttpError {
            status,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

/// A parsed request: what a static server needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    /// The request target as sent (origin-form or absolute-form).
    pub target: String,
    /// Whether the connection stays open after the response (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
}

/// Splits a byte stream into requests.
#[derive(Debug)]
pub struct HttpDecoder {
    limits: HttpLimits,
    buf: Vec<u8>,
    /// Start of the unparsed bytes in `buf`.
    start: usize,
    /// Body bytes of the last request still to drop.
    skip: usize,
    /// How many pending bytes the last unfinished parse saw. A head is parsed only up to
    /// its latest checkpoint (see [`HttpDecoder::checkpoint`]), not after every push: a head
    /// trickled a byte at a time is parsed a few times instead of once per byte (which is
    /// quadratic in the head), and what is parsed does not depend on how the stream was split.
    seen: usize,
    /// How many pending bytes have been looked at for checkpoints.
    scanned: usize,
    /// Whether the pending bytes have ended a line yet.
    line_ended: bool,
    /// Calls to the grammar, for the test that a trickled head is not parsed per byte.
    #[cfg(test)]
    parses: usize,
}

impl HttpDecoder {
    pub fn new(limits: HttpLimits) -> Self {
        HttpDecoder {
            limits,
            buf: Vec::new(),
            start: 0,
            skip: 0,
            seen: 0,
            scanned: 0,
            line_ended: false,
            #[cfg(test)]
            parses: 0,
        }
    }

    /// Whether a request is half-received (the peer closing now cuts it off).
    pub fn is_idle(&self) -> bool {
        self.start == self.buf.len() && self.skip == 0
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete request in what was pushed, if there is one.
    pub fn next_request(&mut self) -> Option<Result<HttpRequest, HttpError>> {
        if self.skip > 0 {
            let n = self.skip.min(self.buf.len() - self.start);
            self.start += n;
            self.skip -= n;
            if self.skip > 0 {
                return None;
            }
        }
        let pending = &self.buf[self.start..];
        if pending.is_empty() {
            return None;
        }
        // Most heads arrive whole: the first look at a head parses all that was pushed and
        // keeps the result if the head is complete, as a parse up to the checkpoint (the
        // head's end) would find it too. Anything else is judged at the checkpoint (which,
        // for the first bytes, is all of them).
        if self.scanned == 0 && pending.len() > PROBE {
            if let Parsed::Complete(request) = self.parse(pending.len()) {
                return Some(request);
            }
        }
        let upto = self.checkpoint();
        if upto <= self.seen {
            return self.unfinished_head();
        }
        match self.parse(upto) {
            Parsed::Complete(request) => Some(request),
            Parsed::Partial => {
                self.seen = upto;
                self.unfinished_head()
            }
            Parsed::Refused(e) => Some(Err(e)),
        }
    }

    /// Parses the first `upto` pending bytes. A complete head is consumed (and its request
    /// interpreted, or refused for what it says); an unfinished one or a malformed one leaves
    /// the decoder as it was.
    fn parse(&mut self, upto: usize) -> Parsed {
        let pending = &self.buf[self.start..self.start + upto];
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADER_FIELDS];
        let max_fields = self.limits.max_headers.min(MAX_HEADER_FIELDS);
        let mut req = httparse::Request::new(&mut fields[..max_fields]);
        #[cfg(test)]
        {
            self.parses += 1;
        }
        let head_len = match req.parse(pending) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(httparse::Error::TooManyHeaders) => {
                return Parsed::Refused(HttpError::new(
                    Status::HeaderFieldsTooLarge,
                    format!("more than {} header fields", max_fields),
                ))
            }
            Err(e) => {
                return Parsed::Refused(HttpError::new(
                    Status::BadRequest,
                    format!("malformed request: {e}"),
                ))
            }
        };
        if head_len > self.limits.max_head {
            return Parsed::Complete(Err(HttpError::new(
                Status::HeaderFieldsTooLarge,
                format!("request head of {head_len} bytes, over {}", self.limits.max_head),
            )));
        }
        let parsed = interpret(&req, &self.limits);
        self.start += head_len;
        (self.seen, self.scanned, self.line_ended) = (0, 0, false);
        Parsed::Complete(parsed.map(|(request, body)| {
            self.skip = body;
            request
        }))
    }

    /// How much of the pending bytes to parse: up to the latest checkpoint. The checkpoints
    /// are every one of the first [`PROBE`] bytes, the end of the first line, and the end of
    /// every empty line (where a head ends). So what is not HTTP at all is refused on its
    /// first bytes, a bad request line when it ends, the rest of a head when it is complete;
    /// and the checkpoints, being a property of the bytes, fall in the same places however
    /// the stream was split. Each pending byte is looked at once.
    fn checkpoint(&mut self) -> usize {
        let pending = &self.buf[self.start..];
        let mut last = pending.len().min(PROBE);
        for i in memchr::memchr_iter(b'\n', &pending[self.scanned..]) {
            let i = self.scanned + i;
            let ends_empty_line = i >= 1
                && (pending[i - 1] == b'\n'
                    || (i >= 2 && pending[i - 1] == b'\r' && pending[i - 2] == b'\n'));
            if !self.line_ended || ends_empty_line {
                last = last.max(i + 1);
            }
            self.line_ended = true;
        }
        self.scanned = pending.len();
        last
    }

    /// No complete head yet: refuse one that has outgrown its limit, else wait for more.
    fn unfinished_head(&mut self) -> Option<Result<HttpRequest, HttpError>> {
        if self.buf.len() - self.start > self.limits.max_head {
            return Some(Err(HttpError::new(
                Status::HeaderFieldsTooLarge,
                format!("request head over {} bytes", self.limits.max_head),
            )));
        }
        // Compact now and then so a long keep-alive connection does not grow `buf`.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        None
    }
}

/// The request's meaning and the length of its body.
fn interpret(
    req: &httparse::Request<'_, '_>,
    limits: &HttpLimits,
) -> Result<(HttpRequest, usize), HttpError> {
    let version = req.version.unwrap_or(1);
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        other => {
            return Err(HttpError::new(
                Status::MethodNotAllowed,
                format!("method {other} (this server answers GET and HEAD)"),
            ))
        }
    };
    let mut keep_alive = version == 1;
    let mut body = 0usize;
    let (mut hosts, mut lengths, mut chunked) = (0usize, Vec::new(), false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
        if h.name.eq_ignore_ascii_case("connection") {
            let value = String::from_utf8_lossy(h.value);
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // A list (`5, 5`) is one value sent twice; digits only, as RFC 9110 8.6 has it.
            for v in std::str::from_utf8(h.value).unwrap_or("x").split(',') {
                let v = v.trim();
                let n: usize = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| v.parse().ok())
                    .flatten()
                    .ok_or_else(|| {
                        HttpError::new(Status::BadRequest, "a Content-Length that is not a number")
                    })?;
                lengths.push(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    // RFC 9112 3.2: an HTTP/1.1 request names its host exactly once.
    if version == 1 && hosts == 0 {
        return Err(HttpError::new(
            Status::BadRequest,
            "an HTTP/1.1 request without Host",
        ));
    }
    if hosts > 1 {
        return Err(HttpError::new(Status::BadRequest, "more than one Host field"));
    }
    // RFC 9112 6.3: both framings at once, or lengths that disagree, are how requests are
    // smuggled past a proxy: refused, and the connection closed.
    if chunked && !lengths.is_empty() {
        return Err(HttpError::new(
            Status::BadRequest,
            "both Content-Length and Transfer-Encoding (request smuggling)",
        ));
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Err(HttpError::new(
            Status::BadRequest,
            "Content-Length values that disagree (request smuggling)",
        ));
    }
    if chunked {
        return Err(HttpError::new(
            Status::NotImplemented,
            "a request body with Transfer-Encoding",
        ));
    }
    if let Some(&n) = lengths.first() {
        if n > limits.max_body {
            return Err(HttpError::new(
                Status::PayloadTooLarge,
                format!("a {n}-byte body, over {}", limits.max_body),
            ));
        }
        body = n;
    }
    let target = req.path.unwrap_or("").to_string();
    Ok((
        HttpRequest {
            method,
            target,
            keep_alive,
        },
        body,
    ))
}

/// The path a request target names, decoded and checked: `/a/b.html`, never with `.` or
/// `..` segments, NUL, or anything before the first `/` but a scheme and authority. A target
/// ending in `/` names its `index.html`.
pub fn normalize_target(target: &str) -> Result<String, HttpError> {
    let mut path = target;
    // Absolute-form (`http://host/x`), which a server must accept.
    for scheme in ["http://", "https://"] {
        if let Some(rest) = path.strip_prefix(scheme) {
            path = rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    if !path.starts_with('/') {
        return Err(HttpError::new(
            Status::BadRequest,
            "a request target that is not a path",
        ));
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path)?;
    if decoded.contains(&0) {
        return Err(HttpError::new(Status::BadRequest, "a NUL byte in the path"));
    }
    let decoded = String::from_utf8(decoded)
        .map_err(|_| HttpError::new(Status::BadRequest, "a path that is not UTF-8"))?;
    let mut out = String::with_capacity(decoded.len() + 10);
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(HttpError::new(Status::BadRequest, "a '..' segment in the path")),
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if out.is_empty() || decoded.ends_with('/') {
        out.push_str("/index.html");
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<Vec<u8>, HttpError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| HttpError::new(Status::BadRequest, "a bad percent-escape in the path"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The head of a response: status line, `Server`, `Date`, the given fields (each ending in
/// CRLF), `Connection: close` if the connection ends, and the blank line.
pub fn response_head(status: Status, date: &str, fields: &str, keep_alive: bool) -> Vec<u8> {
    let mut head = String::with_capacity(128 + fields.len());
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\nServer: iolab\r\nDate: {date}\r\n{fields}",
        status.code(),
        status.reason()
    );
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// A date as HTTP writes it (IMF-fixdate): `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let secs = unix_seconds % 86_400;
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let (year, month, day) = civil_from_days(days as i64);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {month} {year} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Year, month (1..=12) and day of `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(d: &mut HttpDecoder) -> Vec<Result<HttpRequest, HttpError>> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            match d.next_request() {
                Some(r) => {
                    let stop = r.is_err();
                    out.push(r);
                    if stop {
                        break;
                    }
                }
                None => break,
            }
        }
        out
    }

    fn get(path: &str) -> HttpRequest {
        HttpRequest {
            method: Method::Get,
            target: path.into(),
            keep_alive: true,
        }
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let mut d = HttpDecoder::new(HttpLimits::default());
        d.push(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let got = all(&mut d);
        assert_eq!(got[0], Ok(get("/a")));
        assert_eq!(got[1].as_ref().unwrap().method, Method::Head);
        assert!(!got[2].as_ref().unwrap().keep_alive);
        assert!(d.is_idle());
    }

    #[test]
    fn http_1_0_closes_unless_asked_to_keep_alive() {
        let mut d = HttpDecoder::new(HttpLimits::default());
        d.push(b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        let got = all(&mut d);
        assert!(!got[0].as_ref().unwrap().keep_alive);
        assert!(got[1].as_ref().unwrap().keep_alive);
    }

    /// RFC 9112: a Host is required of HTTP/1.1 and allowed once; two framings at once, or
    /// lengths that disagree, are request smuggling; obsolete line folding is malformed.
    #[test]
    fn what_rfc_9112_refuses_is_a_400() {
        let l = HttpLimits::default();
        for (bad, why) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], "without Host"),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                "more than one Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                "smuggling",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                "smuggling",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                "disagree",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n",
                "disagree",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
                "not a number",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n",
                "malformed",
            ),
        ] {
            let mut d = HttpDecoder::new(l);
            d.push(bad);
            let e = d.next_request().expect("a verdict").expect_err("refused");
            assert_eq!(e.status, Status::BadRequest, "{}", String::from_utf8_lossy(bad));
            assert!(
                e.detail.contains(why),
                "{}: {}",
                String::from_utf8_lossy(bad),
                e.detail
            );
        }
        // What stays legal: HTTP/1.0 without Host, one length sent twice, a bare chunked body
        // (not implemented: 501).
        let mut d = HttpDecoder::new(l);
        d.push(b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nok");
        assert!(d.next_request().unwrap().is_ok());
        assert!(d.next_request().unwrap().is_ok());
        let mut d = HttpDecoder::new(l);
        d.push(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            d.next_request().unwrap().unwrap_err().status,
            Status::NotImplemented
        );
    }

    #[test]
    fn refusals_carry_their_status() {
        let status = |bytes: &[u8], limits: HttpLimits| {
            let mut d = HttpDecoder::new(limits);
            d.push(bytes);
            d.next_request().unwrap().unwrap_err().status
        };
        let l = HttpLimits::default();
        assert_eq!(status(b"GARBAGE\r\n\r\n", l), Status::BadRequest);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", l),
            Status::MethodNotAllowed
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n", l),
            Status::PayloadTooLarge
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", l),
            Status::BadRequest
        );
        assert_eq!(
            status(
                b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                l
            ),
            Status::NotImplemented
        );
        let few = HttpLimits { max_headers: 2, ..l };
        assert_eq!(
            status(b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n", few),
            Status::HeaderFieldsTooLarge
        );
        let small = HttpLimits { max_head: 64, ..l };
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "y".repeat(100));
        assert_eq!(status(long.as_bytes(), small), Status::HeaderFieldsTooLarge);
    }

    #[test]
    fn a_trickled_head_is_parsed_a_few_times_not_once_per_byte() {
        let fields: String = (0..40)
            .map(|i| format!("X-Field-{i}: {}\r\n", "v".repeat(20)))
            .collect();
        let head = format!("GET /a HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
        let mut d = HttpDecoder::new(HttpLimits::default());
        let mut got = None;
        for byte in head.as_bytes().chunks(1) {
            d.push(byte);
            if let Some(r) = d.next_request() {
                got = Some(r);
            }
        }
        assert_eq!(got, Some(Ok(get("/a"))));
        // The first bytes one by one, the request line's end, the head's end: not one parse
        // per byte (1,378) or per line (43).
        assert_eq!(d.parses, PROBE + 2, "a {}-byte head", head.len());
    }

    #[test]
    fn a_checkpoint_never_moves_back() {
        // Found by the fuzzer: "\n>" whole was parsed up to the newline (unfinished), but
        // pushed a byte at a time, in full (refused). The first bytes count as a checkpoint
        // even after a line ended among them.
        let whole = {
            let mut d = HttpDecoder::new(HttpLimits::default());
            d.push(b"\n>");
            d.next_request()
        };
        let mut d = HttpDecoder::new(HttpLimits::default());
        d.push(b"\n");
        assert_eq!(d.next_request(), None);
        d.push(b">");
        assert_eq!(d.next_request(), whole);
        assert!(matches!(whole, Some(Err(_))), "{whole:?}");
    }

    #[test]
    fn what_is_not_http_is_refused_on_its_first_bytes() {
        let mut d = HttpDecoder::new(HttpLimits::default());
        d.push(&[0x16, 0x03, 0x01, 0x02, 0x00]); // a TLS ClientHello's record header
        let e = d.next_request().expect("a verdict").expect_err("not HTTP");
        assert_eq!(e.status, Status::BadRequest);
    }

    #[test]
    fn an_error_in_a_header_field_is_found_when_the_head_ends() {
        let mut d = HttpDecoder::new(HttpLimits::default());
        d.push(b"GET / HTTP/1.1\r\nBad\x01Name: x");
        assert_eq!(d.next_request(), None, "the line has not ended");
        d.push(b"\r\nHost: x\r\n");
        assert_eq!(d.next_request(), None, "the head has not ended");
        d.push(b"\r\n");
        let e = d
            .next_request()
            .expect("a verdict")
            .expect_err("a bad field name");
        assert_eq!(e.status, Status::BadRequest);
        // A head that never ends is still bounded.
        let mut d = HttpDecoder::new(HttpLimits {
            max_head: 64,
            ..HttpLimits::default()
        });
        d.push(&[b'G'; 65]);
        let e = d.next_request().expect("a verdict").expect_err("too long");
        assert_eq!(e.status, Status::HeaderFieldsTooLarge);
    }

    #[test]
    fn a_small_body_is_dropped_and_the_next_request_read() {
        let mut d = HttpDecoder::new(HttpLimits::default());
        d.push(b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel");
        assert_eq!(d.next_request(), Some(Ok(get("/a"))));
        assert_eq!(d.next_request(), None);
        assert!(!d.is_idle());
        d.push(b"loGET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(d.next_request(), Some(Ok(get("/b"))));
    }

    #[test]
    fn targets_normalise_and_escapes_are_refused() {
        assert_eq!(normalize_target("/").unwrap(), "/index.html");
        assert_eq!(normalize_target("/a//./b.html?x=1#f").unwrap(), "/a/b.html");
        assert_eq!(normalize_target("/dir/").unwrap(), "/dir/index.html");
        assert_eq!(normalize_target("http://example.org/a%20b").unwrap(), "/a b");
        assert_eq!(normalize_target("http://example.org").unwrap(), "/index.html");
        for bad in [
            "/../etc/passwd",
            "/a/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2Fetc%2Fpasswd",
            "/a%2f..%2f..%2fetc",
            "/a%00.html",
            "*",
            "etc/passwd",
            "/%zz",
            "/%ff%fe",
        ] {
            let e = normalize_target(bad).expect_err(bad);
            assert_eq!(e.status, Status::BadRequest, "{bad}");
        }
    }

    #[test]
    fn dates_are_imf_fixdate() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(1_709_164_800), "Thu, 29 Feb 2024 00:00:00 GMT");
    }

    #[test]
    fn response_heads_say_close_when_closing() {
        let h = response_head(Status::NotFound, "D", "Content-Length: 0\r\n", false);
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "HTTP/1.1 404 Not Found\r\nServer: iolab\r\nDate: D\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }

    proptest! {
        /// Any split of a pipelined stream yields the same requests.
        #[test]
        fn any_split_of_the_stream_parses_the_same(cuts in proptest::collection::vec(0usize..200, 0..12)) {
            let stream: &[u8] = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nHEAD /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /three?q HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % stream.len()).collect();
            points.sort_unstable();
            let mut d = HttpDecoder::new(HttpLimits::default());
            let mut got = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([stream.len()]) {
                d.push(&stream[last..p]);
                last = p;
                while let Some(r) = d.next_request() {
                    got.push(r.unwrap().target);
                }
            }
            prop_assert_eq!(got, vec!["/one", "/two", "/three?q"]);
            prop_assert!(d.is_idle());
        }
    }
}
