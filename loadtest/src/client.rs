//! A small HTTP/1.1 keep-alive client connection: write a prepared request, read one response.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http1::{self, BodySkipper, ParseError, MAX_HEAD};
use crate::stats::ErrorKind;

const INITIAL_BUFFER: usize = 16 * 1024;

/// Why a request on an open connection failed.
#[derive(Debug)]
pub enum ClientError {
    /// The peer closed the connection before the response was complete.
    Closed(&'static str),
    /// The response was malformed.
    Parse(ParseError),
    /// An I/O error.
    Io(io::Error),
}

impl ClientError {
    /// The report category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Closed(_) => ErrorKind::Closed,
            ClientError::Parse(_) => ErrorKind::Parse,
            ClientError::Io(e) => io_error_kind(e),
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Closed(what) => f.write_str(what),
            ClientError::Parse(e) => write!(f, "{e}"),
            ClientError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<ParseError> for ClientError {
    fn from(e: ParseError) -> Self {
        ClientError::Parse(e)
    }
}

/// Maps an I/O error to a report category.
pub fn io_error_kind(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::NotConnected => ErrorKind::Closed,
        io::ErrorKind::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    }
}

/// A complete response, body already skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Bytes read for this response (head and body).
    pub bytes: u64,
    /// Whether the connection may carry another request.
    pub keep_alive: bool,
}

/// One client connection with its read buffer.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Connection {
    /// Opens a connection with `TCP_NODELAY` set.
    pub async fn connect(addr: SocketAddr) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
        })
    }

    /// Sends one prepared request and reads its response, skipping the body.
    ///
    /// On error the connection must not be reused.
    pub async fn send(
        &mut self,
        request: &[u8],
        head_request: bool,
    ) -> Result<Response, ClientError> {
        if self.start != self.end {
            return Err(ClientError::Parse(ParseError::Invalid(
                "unsolicited bytes before the response",
            )));
        }
        self.start = 0;
        self.end = 0;
        self.stream
            .write_all(request)
            .await
            .map_err(ClientError::Io)?;
        let mut bytes = 0u64;
        let head = loop {
            match http1::parse_response_head(&self.buf[self.start..self.end], head_request)? {
                Some(h) if h.is_interim() => {
                    self.start += h.len;
                    bytes += h.len as u64;
                }
                Some(h) => break h,
                None => {
                    if self.fill().await? == 0 {
                        return Err(ClientError::Closed("connection closed before the response"));
                    }
                }
            }
        };
        self.start += head.len;
        bytes += head.len as u64;
        let mut body = BodySkipper::new(head.body);
        while !body.is_done() {
            if self.start == self.end && self.fill().await? == 0 {
                if body.until_close() {
                    break;
                }
                return Err(ClientError::Closed(
                    "connection closed in the response body",
                ));
            }
            let used = body.consume(&self.buf[self.start..self.end])?;
            self.start += used;
            bytes += used as u64;
        }
        Ok(Response {
            status: head.status,
            bytes,
            keep_alive: head.keep_alive && !body.until_close(),
        })
    }

    /// Reads more bytes into the buffer; returns 0 at end of stream.
    async fn fill(&mut self) -> Result<usize, ClientError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_HEAD + 1 {
                let len = (self.buf.len() * 2).min(MAX_HEAD + 1);
                self.buf.resize(len, 0);
            } else {
                return Err(ClientError::Parse(ParseError::HeadTooLarge));
            }
        }
        let n = self
            .stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(ClientError::Io)?;
        self.end += n;
        Ok(n)
    }
}
