//! `chaosnet events`: the fleet's node events, as each agent streams them on `GET /events`.
//!
//! One thread per agent follows its stream over the agent's unix socket and sends each
//! event's JSON, tagged with the agent, to one printer. An agent that is down or restarts
//! is retried once a second, so the command follows the fleet through faults. It reads only;
//! it does not decide anything about the agents.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::agentapi;

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
                let r = agentapi::stream(&socket, "/events", IDLE, |line| match data_of(line) {
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
