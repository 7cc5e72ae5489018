//! The event stream: the core's node events as JSON, fanned out to `GET /events`
//! subscribers as Server-Sent Events.
//!
//! The driver publishes every [`NodeEvent`] the core emits into one bounded broadcast
//! buffer ([`EVENT_BUFFER`] events). Each subscriber reads at its own pace; one that falls
//! more than the buffer behind loses the oldest events it had not read and is told so with
//! a `lagged` event carrying how many it missed, then goes on with the oldest event still
//! buffered. Nothing here decides what an event is: the core does.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use chaosnet_proto::NodeEvent;
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast;

/// Events buffered for subscribers; a subscriber further behind loses the oldest.
pub const EVENT_BUFFER: usize = 256;
/// Interval of the SSE keep-alive comment, so idle proxies keep the stream open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One published event: its kind (the SSE event name) and its JSON body.
#[derive(Clone, Debug)]
pub struct Published {
    /// The event's kind, e.g. `peer_connected`.
    pub kind: &'static str,
    /// `{"kind": ..., "at_unix_ms": ..., <fields>}`.
    pub json: Arc<str>,
}

/// The sending side, held by the driver; subscribers come from [`Events::subscribe`].
#[derive(Clone, Debug)]
pub struct Events {
    tx: broadcast::Sender<Published>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new(EVENT_BUFFER)
    }
}

impl Events {
    /// A stream buffering `capacity` events.
    pub fn new(capacity: usize) -> Events {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Events { tx }
    }

    /// Publishes `event`, which happened at `at_unix_ms`. Without subscribers it is
    /// dropped, which is fine: the stream has no history beyond its buffer.
    pub fn publish(&self, at_unix_ms: u64, event: &NodeEvent) {
        let kind = event.kind();
        let mut body = fields(event);
        body["kind"] = json!(kind);
        body["at_unix_ms"] = json!(at_unix_ms);
        let _ = self.tx.send(Published {
            kind,
            json: body.to_string().into(),
        });
    }

    /// A new subscriber, which sees events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.tx.subscribe()
    }
}

/// The event-specific fields.
fn fields(event: &NodeEvent) -> serde_json::Value {
    match event {
        NodeEvent::LocalAddressesUpdated { addrs } => {
            json!({ "addrs": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>() })
        }
        NodeEvent::ReachabilityChanged { reachable } => json!({ "reachable": reachable }),
        NodeEvent::NatTypeChanged { from, to } => {
            json!({ "from": from.as_str(), "to": to.as_str() })
        }
        NodeEvent::PeerConnected { peer, mode } | NodeEvent::PeerDisconnected { peer, mode } => {
            json!({ "peer": peer.to_hex(), "mode": mode.as_str() })
        }
        NodeEvent::ConnectionUpgraded { peer, from, to } => {
            json!({ "peer": peer.to_hex(), "from": from.as_str(), "to": to.as_str() })
        }
        NodeEvent::RelayCircuitOpened { requester, target } => {
            json!({ "requester": requester.to_hex(), "target": target.to_hex() })
        }
        NodeEvent::RelayCircuitClosed { requester } => json!({ "requester": requester.to_hex() }),
        NodeEvent::FaultObserved { impairment } => json!({
            "loss_pct": f64::from(impairment.loss_ppm) / 10_000.0,
            "delay_ms": impairment.delay_ms,
            "jitter_ms": impairment.jitter_ms,
        }),
    }
}

/// The SSE response of one subscriber: every event as `event: <kind>` with its JSON as
/// data, and `event: lagged` with `{"missed": n}` where it fell behind.
pub fn sse(
    rx: broadcast::Receiver<Published>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(p) => Event::default().event(p.kind).data(&*p.json),
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::default()
                .event("lagged")
                .data(json!({ "kind": "lagged", "missed": missed }).to_string()),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaosnet_proto::{ConnMode, NodeId};

    #[tokio::test]
    async fn a_slow_subscriber_loses_the_oldest_events_and_is_told() {
        let events = Events::new(4);
        let mut rx = events.subscribe();
        for i in 0..10u8 {
            events.publish(
                u64::from(i),
                &NodeEvent::PeerConnected {
                    peer: NodeId([i; 32]),
                    mode: ConnMode::Direct,
                },
            );
        }
        // Ten published into a buffer of four: six lost, then the newest four in order.
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(6))
        ));
        let got: Vec<u64> = (0..4)
            .map(|_| {
                let p = rx.try_recv().expect("buffered");
                let v: serde_json::Value = serde_json::from_str(&p.json).expect("json");
                assert_eq!(v["kind"], "peer_connected");
                v["at_unix_ms"].as_u64().expect("time")
            })
            .collect();
        assert_eq!(got, vec![6, 7, 8, 9]);
    }
}
