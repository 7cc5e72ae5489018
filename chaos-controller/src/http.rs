//! The controller's one HTTP/1.1 implementation: a client for agents' control APIs (over
//! their unix sockets) and for Prometheus (over TCP), and the two halves of a server the
//! scrape proxy and the controller's own `/metrics` need.
//!
//! Client: one request per connection (`Connection: close`), a timeout on every read and
//! write, a bounded answer ([`MAX_RESPONSE`]), plain or chunked bodies. Server: a bounded
//! request line and headers ([`read_request`], no request bodies), and a complete answer
//! with its length ([`write_response`]).
//!
//! What it does not do: TLS, keep-alive, redirects, or any knowledge of what the bodies
//! mean (see [`crate::agentapi`] for the agents' typed API).

use std::fmt;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Largest answer read (metrics of a busy agent are well under this).
pub const MAX_RESPONSE: usize = 8 << 20;
/// Longest request line or header line a server half reads.
pub const MAX_REQUEST_LINE: u64 = 8192;
/// Most header lines a server half reads before it gives up on a request.
const MAX_HEADERS: usize = 100;

/// Where a server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket (agents' control APIs in a lab).
    Unix(PathBuf),
    /// TCP (Prometheus, an agent's API on `<ip:port>`).
    Tcp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Could not connect, write or read (the server is not up yet, or gone, or slow).
    #[error("cannot reach {endpoint}: {source}")]
    Io {
        /// The server.
        endpoint: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The answer is not HTTP, or too large.
    #[error("bad answer from {endpoint}: {detail}")]
    Protocol {
        /// The server.
        endpoint: String,
        /// What was wrong.
        detail: String,
    },
}

impl HttpError {
    /// True when the server did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, HttpError::Io { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    }
}

/// A request: method, path (with its query) and an optional JSON body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// `GET`, `POST`, `PUT`.
    pub method: &'a str,
    /// Path and query, e.g. `/status`.
    pub path: &'a str,
    /// JSON body.
    pub body: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// `GET path`.
    pub fn get(path: &'a str) -> Request<'a> {
        Request {
            method: "GET",
            path,
            body: None,
        }
    }
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body (lossy UTF-8).
    pub body: String,
}

/// Sends one request to `ep` and reads the whole answer, each read and write bounded by
/// `timeout`.
pub fn call(ep: &Endpoint, req: &Request<'_>, timeout: Duration) -> Result<Response, HttpError> {
    let endpoint = ep.to_string();
    let io = |source| HttpError::Io {
        endpoint: endpoint.clone(),
        source,
    };
    let host = match ep {
        Endpoint::Unix(_) => "agent".to_string(),
        Endpoint::Tcp(a) => a.to_string(),
    };
    let body = req.body.unwrap_or("");
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        req.method,
        req.path,
        body.len()
    );
    let raw = match ep {
        Endpoint::Unix(path) => {
            let s = UnixStream::connect(path).map_err(io)?;
            s.set_read_timeout(Some(timeout)).map_err(io)?;
            s.set_write_timeout(Some(timeout)).map_err(io)?;
            exchange(s, &head).map_err(io)?
        }
        Endpoint::Tcp(addr) => {
            let s = TcpStream::connect_timeout(addr, timeout).map_err(io)?;
            s.set_read_timeout(Some(timeout)).map_err(io)?;
            s.set_write_timeout(Some(timeout)).map_err(io)?;
            exchange(s, &head).map_err(io)?
        }
    };
    parse_response(&raw).map_err(|detail| HttpError::Protocol { endpoint, detail })
}

/// Writes the request and reads the answer until the server closes, at most one byte over
/// [`MAX_RESPONSE`] (which [`parse_response`] then refuses).
fn exchange(mut s: impl Read + Write, request: &str) -> std::io::Result<Vec<u8>> {
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE as u64 + 1).read_to_end(&mut raw)?;
    Ok(raw)
}

/// Parses a complete answer (status line, headers, plain or chunked body).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    if raw.len() > MAX_RESPONSE {
        return Err(format!("response over {MAX_RESPONSE} bytes"));
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header end")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "header is not UTF-8")?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or("no status line")?;
    let mut body = raw[split + 4..].to_vec();
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk header")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters stay).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request line of a request a server half read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: String,
    /// Path and query.
    pub path: String,
}

/// Reads a request's line and headers (each line at most [`MAX_REQUEST_LINE`] bytes, at
/// most 100 headers); the body, if any, is not read.
///
/// # Errors
/// I/O errors, and `InvalidData` for a request that is not HTTP or too large.
pub fn read_request(r: &mut impl BufRead) -> std::io::Result<RequestHead> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    r.by_ref().take(MAX_REQUEST_LINE).read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(bad("not an HTTP request line"));
    };
    let head = RequestHead {
        method: method.to_string(),
        path: path.to_string(),
    };
    for _ in 0..MAX_HEADERS {
        let mut h = String::new();
        if r.by_ref().take(MAX_REQUEST_LINE).read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            return Ok(head);
        }
    }
    Err(bad("too many header lines"))
}

/// Writes a complete answer with its length, then flushes.
///
/// # Errors
/// I/O errors.
pub fn write_response(
    w: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        502 => "Bad Gateway",
        _ => "X",
    };
    write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").expect("plain");
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .expect("chunked");
        assert_eq!((r.status, r.body.as_str()), (404, "abcde"));
        assert!(parse_response(b"garbage").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn a_server_half_and_the_client_talk_over_a_unix_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
            let head = read_request(&mut r).expect("request");
            let mut w = s;
            write_response(&mut w, 200, "application/json", "{\"ok\":true}").expect("write");
            head
        });
        let r = call(
            &Endpoint::Unix(path),
            &Request {
                method: "PUT",
                path: "/impairment",
                body: Some("{}"),
            },
            Duration::from_secs(5),
        )
        .expect("call");
        assert_eq!((r.status, r.body.as_str()), (200, "{\"ok\":true}"));
        let head = server.join().expect("server");
        assert_eq!(
            (head.method.as_str(), head.path.as_str()),
            ("PUT", "/impairment")
        );
        let e = call(
            &Endpoint::Unix(dir.path().join("nobody.sock")),
            &Request::get("/status"),
            Duration::from_secs(1),
        )
        .expect_err("no server");
        assert!(matches!(e, HttpError::Io { .. }) && !e.is_timeout(), "{e}");
    }

    #[test]
    fn requests_that_are_not_http_or_too_long_are_refused() {
        let mut r = std::io::Cursor::new(b"\r\n".to_vec());
        assert!(read_request(&mut r).is_err());
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..200 {
            many.extend_from_slice(b"X: y\r\n");
        }
        assert!(read_request(&mut std::io::Cursor::new(many)).is_err());
        assert_eq!(url_encode("a b{c}"), "a%20b%7Bc%7D");
    }
}
