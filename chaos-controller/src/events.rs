//! `chaosnet events`: the fleet's node events, as each agent streams them on `GET /events`.
//!
//! One thread per agent follows its stream over the agent's unix socket and sends each
//! event's JSON, tagged with the agent, to one printer. An agent that is down or restarts
//! is retried once a second, so the command follows the fleet through faults. It reads only;
//! it does not decide anything about the agents.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Why a stream ended with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Could not connect, write or read (agent not up yet, or gone).
    #[error("cannot reach agent API at {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The answer is not a 200 HTTP stream, or a line is too long.
    #[error("bad event stream from agent API at {path}: {detail}")]
    Protocol {
        /// The socket.
        path: String,
        /// What was wrong.
        detail: String,
    },
}

// The controller's one HTTP client (`crate::http`) reads whole answers; an event stream
// never ends, so it is read here, line by line, as it comes.
/// Longest line [`stream`] hands on; a longer one ends the stream as a protocol error.
const MAX_LINE: usize = 64 * 1024;

/// `GET path` on an agent's unix socket and hands each line of the (chunked) body to `on_line` as it arrives, until
/// the agent ends the stream, `on_line` returns `false`, or nothing arrives for `idle` (the
/// agent's event stream sends a keep-alive comment every 15 s). For `GET /events`.
pub fn stream(
    socket: &Path,
    path: &str,
    idle: Duration,
    mut on_line: impl FnMut(&str) -> bool,
) -> Result<(), StreamError> {
    let p = socket.display().to_string();
    let io = |source| StreamError::Io {
        path: p.clone(),
        source,
    };
    let bad = |detail: String| StreamError::Protocol {
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
    let read_line = |r: &mut BufReader<_>, line: &mut String| -> Result<usize, StreamError> {
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

/// How long a stream may be silent before it is reopened (the agent's keep-alive comes
/// every 15 s).
const IDLE: Duration = Duration::from_secs(40);
/// Events queued for the printer; a follower blocks when the printer falls behind.
const QUEUE: usize = 1024;

/// One event of one agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Tagged {
    /// The agent's name.
    pub agent: String,
    /// The event's JSON (`kind`, `at_unix_ms` and its fields).
    pub event: serde_json::Value,
}

/// The JSON of an SSE `data:` line, if it is one.
pub fn data_of(line: &str) -> Option<serde_json::Value> {
    serde_json::from_str(line.strip_prefix("data:")?.trim_start()).ok()
}

/// Follows `agents` (name, API socket) for `duration` (forever if `None`), handing every
/// event to `print` in arrival order.
pub fn follow(
    agents: Vec<(String, PathBuf)>,
    duration: Option<Duration>,
    mut print: impl FnMut(&Tagged) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let (tx, rx) = mpsc::sync_channel::<Tagged>(QUEUE);
    for (agent, socket) in agents {
        let tx = tx.clone();
        std::thread::spawn(move || {
            loop {
                let r = stream(&socket, "/events", IDLE, |line| match data_of(line) {
                    Some(event) => tx
                        .send(Tagged {
                            agent: agent.clone(),
                            event,
                        })
                        .is_ok(),
                    None => true,
                });
                if matches!(r, Ok(()))
                    && tx
                        .send(Tagged {
                            agent: agent.clone(),
                            event: serde_json::json!({"kind": "stream_ended"}),
                        })
                        .is_err()
                {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    }
    drop(tx);
    let end = duration.map(|d| Instant::now() + d);
    loop {
        let next = match end {
            Some(end) => match end.checked_duration_since(Instant::now()) {
                Some(left) => rx.recv_timeout(left).ok(),
                None => None,
            },
            None => rx.recv().ok(),
        };
        let Some(t) = next else {
            return Ok(());
        };
        print(&t)?;
    }
}

/// The text form of one event: time, agent, kind, then its fields.
pub fn render(t: &Tagged) -> String {
    let kind = t.event["kind"].as_str().unwrap_or("?");
    let at = t.event["at_unix_ms"].as_u64().unwrap_or(0);
    let mut fields = t.event.clone();
    if let Some(o) = fields.as_object_mut() {
        o.remove("kind");
        o.remove("at_unix_ms");
    }
    format!("{at:>13} {:<16} {kind:<24} {fields}", t.agent)
}

/// Writes one line per event to `out`: [`render`]ed, or as JSON with the agent added.
pub fn write(out: &mut impl Write, t: &Tagged, json: bool) -> std::io::Result<()> {
    if json {
        let mut v = t.event.clone();
        v["agent"] = serde_json::json!(t.agent);
        writeln!(out, "{v}")
    } else {
        writeln!(out, "{}", render(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_data_lines_become_events_and_render_in_one_line() {
        assert_eq!(data_of("event: peer_connected"), None);
        assert_eq!(data_of(": keep-alive"), None);
        let v = data_of(
            r#"data: {"kind":"peer_connected","at_unix_ms":5,"peer":"ab","mode":"direct"}"#,
        )
        .expect("json");
        let t = Tagged {
            agent: "home1-0".into(),
            event: v,
        };
        let line = render(&t);
        assert!(
            line.contains("home1-0") && line.contains("peer_connected"),
            "{line}"
        );
        assert!(
            line.contains(r#""mode":"direct""#) && !line.contains("at_unix_ms"),
            "{line}"
        );
        let mut out = Vec::new();
        write(&mut out, &t, true).expect("write");
        let back: serde_json::Value = serde_json::from_slice(&out).expect("json line");
        assert_eq!(
            (back["agent"].as_str(), back["kind"].as_str()),
            (Some("home1-0"), Some("peer_connected"))
        );
    }
}
