//! Relay admission: circuits through this node within its advertised limits.

use crate::id::NodeId;
use crate::wire::{ErrorCode, Response};

use super::{Event, Node, NodeEvent, RelayEvent};

impl Node {
    pub(super) fn relay_accepted(&self) -> Response {
        Response::RelayAccepted {
            max_bytes: self.cfg.relay.max_bytes,
            max_duration_ms: self.cfg.relay.max_duration_ms,
        }
    }

    /// Admission of a circuit from `from` to `target` through us.
    pub(super) fn on_relay_open(&mut self, from: NodeId, target: NodeId) -> Response {
        let limits = self.cfg.relay;
        let code = if !limits.enabled {
            Some(ErrorCode::Refused)
        } else if target == from
            || target == self.cfg.id
            || self.direct_remote(&target).is_none()
            || self.direct_remote(&from).is_none()
        {
            // No circuits over circuits: both legs must be real connections.
            Some(ErrorCode::NoRoute)
        } else if self.circuits_total >= limits.max_circuits
            || self.circuits.get(&from).copied().unwrap_or(0) >= limits.max_circuits_per_peer
        {
            Some(ErrorCode::Refused)
        } else {
            None
        };
        if let Some(code) = code {
            self.emit(Event::Relay {
                event: RelayEvent::Refused,
            });
            return Response::Error { code };
        }
        *self.circuits.entry(from).or_insert(0) += 1;
        self.circuits_total += 1;
        self.emit(Event::Relay {
            event: RelayEvent::Opened,
        });
        self.emit(Event::Node(NodeEvent::RelayCircuitOpened {
            requester: from,
            target,
        }));
        self.relay_accepted()
    }
}
