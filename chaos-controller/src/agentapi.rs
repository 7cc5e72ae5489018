//! A minimal HTTP/1.1 client for agents' control APIs over their unix sockets.
//!
//! Agents in the lab serve their API on a unix socket in the run directory, so the
//! controller (in the root namespace) reaches them through the file system and never
//! through the emulated internet. This client speaks just enough HTTP for that: one request
//! per connection, `Connection: close`, a bounded response size and a timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Largest response read (metrics of a busy agent are well under this).
const MAX_RESPONSE: usize = 8 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Could not connect, write or read (agent not up yet, or gone).
    #[error("cannot reach agent API at {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The answer is not HTTP, or too large.
    #[error("bad answer from agent API at {path}: {detail}")]
    Protocol {
        /// The socket.
        path: String,
        /// What was wrong.
        detail: String,
    },
}

/// An HTTP response.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
}

/// Sends one request and reads the whole response.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let p = socket.display().to_string();
    let io = |source| ApiError::Io {
        path: p.clone(),
        source,
    };
    let mut s = UnixStream::connect(socket).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(io)?;
    parse(&raw).map_err(|detail| ApiError::Protocol { path: p, detail })
}

/// `GET path` returning the body of a 200 answer.
pub fn get(socket: &Path, path: &str, timeout: Duration) -> Result<Response, ApiError> {
    call(socket, "GET", path, None, timeout)
}

/// Longest line [`stream`] hands on; a longer one ends the stream as a protocol error.
const MAX_LINE: usize = 64 * 1024;

/// `GET path` and hands each line of the (chunked) body to `on_line` as it arrives, until
/// the agent ends the stream, `on_line` returns `false`, or nothing arrives for `idle` (the
/// agent's event stream sends a keep-alive comment every 15 s). For `GET /events`.
pub fn stream(
    socket: &Path,
    path: &str,
    idle: Duration,
    mut on_line: impl FnMut(&str) -> bool,
) -> Result<(), ApiError> {
    let p = socket.display().to_string();
    let io = |source| ApiError::Io {
        path: p.clone(),
        source,
    };
    let bad = |detail: String| ApiError::Protocol {
        path: p.clone(),
        detail,
    };
    let mut s = UnixStream::connect(socket).map_err(io)?;
    s.set_read_timeout(Some(idle)).map_err(io)?;
    s.set_write_timeout(Some(idle)).map_err(io)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut r = BufReader::new(s.take(u64::MAX));
    let mut line = String::new();
    let read_line = |r: &mut BufReader<_>, line: &mut String| -> Result<usize, ApiError> {
        line.clear();
        let n = r
            .by_ref()
            .take(MAX_LINE as u64 + 2)
            .read_line(line)
            .map_err(io)?;
        if n > MAX_LINE {
            return Err(bad(format!("a line over {MAX_LINE} bytes")));
        }
        Ok(n)
    };
    read_line(&mut r, &mut line)?;
    let status = line.split_whitespace().nth(1).unwrap_or("").to_string();
    if status != "200" {
        return Err(bad(format!("status {status}")));
    }
    let mut chunked = false;
    loop {
        if read_line(&mut r, &mut line)? == 0 {
            return Ok(());
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
    }
    let mut pending = String::new();
    loop {
        let data = if chunked {
            if read_line(&mut r, &mut line)? == 0 {
                return Ok(());
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size {:?}", line.trim())))?;
            if size == 0 {
                return Ok(());
            }
            if size > MAX_LINE {
                return Err(bad(format!("a chunk of {size} bytes")));
            }
            let mut buf = vec![0u8; size + 2];
            r.read_exact(&mut buf).map_err(io)?;
            buf.truncate(size);
            String::from_utf8_lossy(&buf).into_owned()
        } else {
            if read_line(&mut r, &mut line)? == 0 {
                return Ok(());
            }
            line.clone()
        };
        pending.push_str(&data);
        while let Some(i) = pending.find('\n') {
            let l: String = pending.drain(..=i).collect();
            if !on_line(l.trim_end_matches(['\r', '\n'])) {
                return Ok(());
            }
        }
        if pending.len() > MAX_LINE {
            return Err(bad(format!("a line over {MAX_LINE} bytes")));
        }
    }
}

fn parse(raw: &[u8]) -> Result<Response, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").expect("plain");
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let r = parse(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .expect("chunked");
        assert_eq!((r.status, r.body.as_str()), (404, "abcde"));
        assert!(parse(b"garbage").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err());
    }
}
