//! Minimal HTTP/1.1 message framing shared by the load client and the upstream server.
//!
//! Only what a load generator needs: find the end of a head, read the status or request
//! line, learn how the body is delimited, and skip the body (Content-Length or chunked)
//! without copying it.

use std::fmt;

/// Largest message head (start line plus headers) accepted, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;

/// Why a message could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The head is larger than [`MAX_HEAD`].
    HeadTooLarge,
    /// The bytes are not valid HTTP/1.x; the text says which part.
    Invalid(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::HeadTooLarge => write!(f, "message head larger than {MAX_HEAD} bytes"),
            ParseError::Invalid(what) => write!(f, "invalid HTTP/1.x: {what}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes the connection (responses only).
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code (100..=999).
    pub status: u16,
    /// How the body is delimited.
    pub body: BodyKind,
    /// Whether the connection may be reused after this response.
    pub keep_alive: bool,
    /// Length of the head in bytes, including the final empty line.
    pub len: usize,
}

impl ResponseHead {
    /// True for interim 1xx responses that are followed by the final response.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// A parsed request head, borrowing from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead<'a> {
    /// Request method, e.g. `GET`.
    pub method: &'a [u8],
    /// Request target, e.g. `/path?q`.
    pub target: &'a [u8],
    /// Minor HTTP version (0 or 1).
    pub minor: u8,
    /// How the body is delimited.
    pub body: BodyKind,
    /// Whether the client wants the connection kept open.
    pub keep_alive: bool,
    /// Whether the client sent `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The raw head bytes, including the final empty line.
    pub raw: &'a [u8],
}

/// What the framing headers of a message say.
#[derive(Debug, Default, Clone, Copy)]
struct Framing {
    content_length: Option<u64>,
    chunked: bool,
    transfer_encoding: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

/// A complete head: its start line and what its headers say about framing.
struct Head<'a> {
    start: &'a [u8],
    framing: Framing,
    len: usize,
}

/// Reads a head from the front of `buf`; `Ok(None)` until its final empty line has arrived.
///
/// Lines end in CRLF; a bare LF is tolerated.
fn read_head(buf: &[u8]) -> Result<Option<Head<'_>>, ParseError> {
    let mut pos = 0;
    let mut start: Option<&[u8]> = None;
    let mut framing = Framing::default();
    loop {
        let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
            return if buf.len() > MAX_HEAD {
                Err(ParseError::HeadTooLarge)
            } else {
                Ok(None)
            };
        };
        let line = &buf[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if pos > MAX_HEAD {
            return Err(ParseError::HeadTooLarge);
        }
        match start {
            None if line.is_empty() => return Err(ParseError::Invalid("empty start line")),
            None => start = Some(line),
            Some(start) if line.is_empty() => {
                return Ok(Some(Head {
                    start,
                    framing,
                    len: pos,
                }))
            }
            Some(_) => scan_header(line, &mut framing)?,
        }
    }
}

/// Notes what one header line says about framing; other headers are only checked for ':'.
fn scan_header(line: &[u8], f: &mut Framing) -> Result<(), ParseError> {
    let colon = memchr::memchr(b':', line).ok_or(ParseError::Invalid("header line without ':'"))?;
    let name = &line[..colon];
    match (name.first(), name.last()) {
        (Some(first), Some(last))
            if !first.is_ascii_whitespace() && !last.is_ascii_whitespace() => {}
        _ => return Err(ParseError::Invalid("bad header name")),
    }
    let value = || line[colon + 1..].trim_ascii();
    // Compare lengths first: most headers are none of these.
    match name.len() {
        14 if name.eq_ignore_ascii_case(b"content-length") => {
            let n = parse_decimal(value()).ok_or(ParseError::Invalid("bad content-length"))?;
            if f.content_length.is_some_and(|old| old != n) {
                return Err(ParseError::Invalid("conflicting content-length headers"));
            }
            f.content_length = Some(n);
        }
        17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
            // The last coding decides; anything but chunked last is read until close.
            f.transfer_encoding = true;
            f.chunked = value()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !f.chunked {
                f.close = true;
            }
        }
        10 if name.eq_ignore_ascii_case(b"connection") => {
            for token in value().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    f.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    f.keep_alive = true;
                }
            }
        }
        6 if name.eq_ignore_ascii_case(b"expect") => {
            f.expect_continue = value().eq_ignore_ascii_case(b"100-continue");
        }
        _ => {}
    }
    Ok(())
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

fn parse_version(v: &[u8]) -> Result<u8, ParseError> {
    match v {
        b"HTTP/1.1" => Ok(1),
        b"HTTP/1.0" => Ok(0),
        _ => Err(ParseError::Invalid("unsupported HTTP version")),
    }
}

/// Parses a response head from the start of `buf`; `Ok(None)` means more bytes are needed.
///
/// `head_request` says the request was `HEAD`, whose response never has a body.
pub fn parse_response_head(
    buf: &[u8],
    head_request: bool,
) -> Result<Option<ResponseHead>, ParseError> {
    let Some(Head {
        start: line,
        framing: f,
        len,
    }) = read_head(buf)?
    else {
        return Ok(None);
    };
    // "HTTP/1.1 200 OK"
    if line.len() < 12 || line[8] != b' ' {
        return Err(ParseError::Invalid("bad status line"));
    }
    let minor = parse_version(&line[..8])?;
    let code = &line[9..12];
    if !code.iter().all(u8::is_ascii_digit) || line.get(12).is_some_and(|&b| b != b' ') {
        return Err(ParseError::Invalid("bad status code"));
    }
    let status = code
        .iter()
        .fold(0u16, |acc, &b| acc * 10 + u16::from(b - b'0'));
    if status < 100 {
        return Err(ParseError::Invalid("bad status code"));
    }
    let mut keep_alive = if minor == 1 {
        !f.close
    } else {
        f.keep_alive && !f.close
    };
    let body = if head_request || status < 200 || status == 204 || status == 304 {
        BodyKind::Empty
    } else if f.chunked {
        BodyKind::Chunked
    } else if let Some(n) = f.content_length {
        BodyKind::Length(n)
    } else {
        keep_alive = false;
        BodyKind::UntilClose
    };
    if status == 101 {
        keep_alive = false;
    }
    Ok(Some(ResponseHead {
        status,
        body,
        keep_alive,
        len,
    }))
}

/// Parses a request head from the start of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead<'_>>, ParseError> {
    let Some(Head {
        start: line,
        framing: f,
        len,
    }) = read_head(buf)?
    else {
        return Ok(None);
    };
    let raw = &buf[..len];
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Invalid("bad request line"));
    };
    if method.is_empty() || target.is_empty() {
        return Err(ParseError::Invalid("bad request line"));
    }
    let minor = parse_version(version)?;
    let body = if f.chunked {
        BodyKind::Chunked
    } else if f.transfer_encoding {
        return Err(ParseError::Invalid(
            "request transfer-encoding is not chunked",
        ));
    } else {
        match f.content_length {
            None | Some(0) => BodyKind::Empty,
            Some(n) => BodyKind::Length(n),
        }
    };
    // A request with both framings is suspicious (smuggling); serve it, then close.
    let both = f.chunked && f.content_length.is_some();
    let keep_alive = !both
        && if minor == 1 {
            !f.close
        } else {
            f.keep_alive && !f.close
        };
    Ok(Some(RequestHead {
        method,
        target,
        minor,
        body,
        keep_alive,
        expect_continue: f.expect_continue,
        raw,
    }))
}

/// Skips a message body as it arrives, without copying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodySkipper {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Done,
    Length(u64),
    UntilClose,
    ChunkSize { size: u64, digits: u8 },
    ChunkExt { size: u64 },
    ChunkSizeLf { size: u64 },
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    Trailer { line_empty: bool },
}

impl BodySkipper {
    /// Starts skipping a body of the given kind.
    pub fn new(kind: BodyKind) -> Self {
        let state = match kind {
            BodyKind::Empty | BodyKind::Length(0) => State::Done,
            BodyKind::Length(n) => State::Length(n),
            BodyKind::Chunked => State::ChunkSize { size: 0, digits: 0 },
            BodyKind::UntilClose => State::UntilClose,
        };
        BodySkipper { state }
    }

    /// True once the whole body has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True when the body ends only when the peer closes the connection.
    pub fn until_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// Consumes body bytes from the front of `buf` and returns how many it used.
    ///
    /// It stops at the end of the body, so bytes of a following message are left alone.
    pub fn consume(&mut self, buf: &[u8]) -> Result<usize, ParseError> {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Done => break,
                State::UntilClose => return Ok(buf.len()),
                State::Length(n) | State::ChunkData(n) => {
                    let take = n.min((buf.len() - i) as u64);
                    i += take as usize;
                    let left = n - take;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), _) => State::Length(left),
                        (_, 0) => State::ChunkDataCr,
                        _ => State::ChunkData(left),
                    };
                }
                State::ChunkSize { size, digits } => {
                    let b = buf[i];
                    i += 1;
                    if let Some(d) = (b as char).to_digit(16) {
                        if digits >= 15 {
                            return Err(ParseError::Invalid("chunk size too large"));
                        }
                        self.state = State::ChunkSize {
                            size: size * 16 + u64::from(d),
                            digits: digits + 1,
                        };
                    } else if digits == 0 {
                        return Err(ParseError::Invalid("bad chunk size"));
                    } else {
                        self.state = match b {
                            b';' | b' ' | b'\t' => State::ChunkExt { size },
                            b'\r' => State::ChunkSizeLf { size },
                            b'\n' => Self::after_size(size),
                            _ => return Err(ParseError::Invalid("bad chunk size")),
                        };
                    }
                }
                State::ChunkExt { size } => {
                    if buf[i] == b'\n' {
                        self.state = Self::after_size(size);
                    }
                    i += 1;
                }
                State::ChunkSizeLf { size } => {
                    if buf[i] != b'\n' {
                        return Err(ParseError::Invalid("bad chunk size line"));
                    }
                    i += 1;
                    self.state = Self::after_size(size);
                }
                State::ChunkDataCr => {
                    self.state = match buf[i] {
                        b'\r' => State::ChunkDataLf,
                        b'\n' => State::ChunkSize { size: 0, digits: 0 },
                        _ => return Err(ParseError::Invalid("chunk data not followed by CRLF")),
                    };
                    i += 1;
                }
                State::ChunkDataLf => {
                    if buf[i] != b'\n' {
                        return Err(ParseError::Invalid("chunk data not followed by CRLF"));
                    }
                    i += 1;
                    self.state = State::ChunkSize { size: 0, digits: 0 };
                }
                State::Trailer { line_empty } => {
                    self.state = match buf[i] {
                        b'\r' => State::Trailer { line_empty },
                        b'\n' if line_empty => State::Done,
                        b'\n' => State::Trailer { line_empty: true },
                        _ => State::Trailer { line_empty: false },
                    };
                    i += 1;
                }
            }
        }
        Ok(i)
    }

    fn after_size(size: u64) -> State {
        if size == 0 {
            State::Trailer { line_empty: true }
        } else {
            State::ChunkData(size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` to a skipper in pieces of `step` bytes; returns bytes used.
    fn skip_in_steps(kind: BodyKind, body: &[u8], step: usize) -> Result<usize, ParseError> {
        let mut s = BodySkipper::new(kind);
        let mut used = 0;
        for piece in body.chunks(step) {
            let mut off = 0;
            while off < piece.len() && !s.is_done() {
                let n = s.consume(&piece[off..])?;
                off += n;
                used += n;
            }
            if s.is_done() {
                break;
            }
        }
        assert!(s.is_done(), "body not finished");
        Ok(used)
    }

    #[test]
    fn chunked_body_split_at_every_position() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let expected = body.len() - 4;
        for step in 1..=body.len() {
            assert_eq!(skip_in_steps(BodyKind::Chunked, body, step), Ok(expected));
        }
    }

    #[test]
    fn chunked_without_trailers_and_uppercase_hex() {
        let body = b"A\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(skip_in_steps(BodyKind::Chunked, body, 3), Ok(body.len()));
    }

    #[test]
    fn chunked_errors() {
        let mut s = BodySkipper::new(BodyKind::Chunked);
        assert!(s.consume(b"zz\r\n").is_err());
        let mut s = BodySkipper::new(BodyKind::Chunked);
        assert!(s.consume(b"3\r\nabcX").is_err());
        let mut s = BodySkipper::new(BodyKind::Chunked);
        assert!(s.consume(b"ffffffffffffffff\r\n").is_err());
    }

    #[test]
    fn length_body_stops_at_end() {
        let mut s = BodySkipper::new(BodyKind::Length(3));
        assert_eq!(s.consume(b"ab"), Ok(2));
        assert_eq!(s.consume(b"cdef"), Ok(1));
        assert!(s.is_done());
    }

    #[test]
    fn response_heads() {
        let h = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false)
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.body, h.keep_alive, h.len),
            (200, BodyKind::Length(5), true, 38)
        );
        let h = parse_response_head(
            b"HTTP/1.1 503 Busy\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (h.status, h.body, h.keep_alive),
            (503, BodyKind::Chunked, false)
        );
        let h = parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((h.body, h.keep_alive), (BodyKind::UntilClose, false));
        let h = parse_response_head(b"HTTP/1.1 204\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.body), (204, BodyKind::Empty));
        let h = parse_response_head(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyKind::Empty);
        assert!(parse_response_head(b"HTTP/1.1 100 Continue\r\n\r\n", false)
            .unwrap()
            .unwrap()
            .is_interim());
        assert_eq!(parse_response_head(b"HTTP/1.1 200 OK\r\n", false), Ok(None));
        assert!(parse_response_head(b"HTTP/2 200 OK\r\n\r\n", false).is_err());
        assert!(parse_response_head(b"HTTP/1.1 2x0 OK\r\n\r\n", false).is_err());
        assert!(parse_response_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            false
        )
        .is_err());
        let big = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(
            parse_response_head(&big, false),
            Err(ParseError::HeadTooLarge)
        );
    }

    #[test]
    fn incomplete_heads_wait_for_more_bytes() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: b\r\n\r\n";
        for end in 0..full.len() {
            assert_eq!(parse_response_head(&full[..end], false), Ok(None), "{end}");
        }
        assert!(parse_response_head(full, false).unwrap().is_some());
        let bare_lf = parse_response_head(b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok", false)
            .unwrap()
            .unwrap();
        assert_eq!((bare_lf.body, bare_lf.len), (BodyKind::Length(2), 35));
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nBad : x\r\n\r\n", false).is_err());
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n", false).is_err());
    }

    #[test]
    fn request_heads() {
        let raw = b"POST /echo?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let r = parse_request_head(raw).unwrap().unwrap();
        assert_eq!(r.method, b"POST");
        assert_eq!(r.target, b"/echo?x=1");
        assert_eq!(r.body, BodyKind::Length(3));
        assert!(r.keep_alive);
        assert_eq!(r.raw.len(), raw.len() - 3);
        let r = parse_request_head(b"GET / HTTP/1.0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
        let r = parse_request_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
        let r = parse_request_head(
            b"PUT / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.body, r.keep_alive), (BodyKind::Chunked, false));
        assert!(parse_request_head(b"GET /\r\n\r\n").is_err());
        assert!(parse_request_head(b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n").is_err());
    }
}
