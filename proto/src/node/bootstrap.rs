//! Bootstrap and peer exchange: pinging seeds and restored contacts, the self-lookup that
//! marks the node joined, and verifying the peers an `Introduce` answer names.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;

use crate::graph::Contact;
use crate::id::NodeId;
use crate::time::Time;
use crate::wire::{PeerInfo, Request, Response};

use super::lookup::LookupPurpose;
use super::{Event, Failure, Node, Purpose, Timer};

/// Peers from one `Introduce` answer that get verified with a ping.
const INTRODUCE_VERIFY: usize = 3;

/// Cap of the bootstrap retry backoff.
const BOOTSTRAP_BACKOFF_CAP: Duration = Duration::from_secs(30);

impl Node {
    pub(super) fn bootstrap(&mut self, now: Time) {
        let seeds: Vec<(NodeId, SocketAddr)> = self
            .cfg
            .seeds
            .iter()
            .copied()
            .filter(|(id, _)| *id != self.cfg.id)
            .collect();
        // Restored contacts most recently seen first: they are the likeliest to be alive.
        let mut restored: Vec<Contact> = self.table.iter().cloned().collect();
        restored.sort_by_key(|c| std::cmp::Reverse(c.last_seen));
        restored.truncate(8);
        if seeds.is_empty() && restored.is_empty() {
            self.mark_joined();
            return;
        }
        self.bootstrapping = true;
        for (id, addr) in seeds {
            let mut addrs = self.addrs_of(&id);
            if !addrs.contains(&addr) {
                addrs.insert(0, addr);
            }
            let nonce = self.rng.next_u64();
            self.send_request(now, id, addrs, Request::Ping { nonce }, Purpose::Bootstrap);
        }
        for c in restored {
            if self.cfg.seeds.iter().any(|(id, _)| *id == c.id) {
                continue;
            }
            let nonce = self.rng.next_u64();
            self.send_request(
                now,
                c.id,
                c.addrs.clone(),
                Request::Ping { nonce },
                Purpose::Bootstrap,
            );
        }
    }

    pub(super) fn bootstrap_answer(&mut self, now: Time, peer: NodeId, ok: bool) {
        if ok && self.bootstrapping {
            self.bootstrapping = false;
            let addrs = self.addrs_of(&peer);
            self.send_request(
                now,
                peer,
                addrs,
                Request::Introduce { max: 16 },
                Purpose::Introduce,
            );
            self.start_lookup(now, self.cfg.id, LookupPurpose::Bootstrap);
            return;
        }
        let still_waiting = self
            .pending
            .values()
            .any(|p| matches!(p.purpose, Purpose::Bootstrap));
        if self.bootstrapping && !still_waiting {
            self.retry_bootstrap(now);
        }
    }

    pub(super) fn retry_bootstrap(&mut self, now: Time) {
        self.bootstrapping = false;
        let delay = self.bootstrap_backoff;
        self.bootstrap_backoff = (delay * 2).min(BOOTSTRAP_BACKOFF_CAP);
        self.set_timer(now + delay, Timer::Bootstrap);
    }

    pub(super) fn mark_joined(&mut self) {
        if !self.joined {
            self.joined = true;
            self.emit(Event::Joined);
        }
    }

    pub(super) fn introduce_answer(&mut self, now: Time, result: Result<Response, Failure>) {
        let Ok(Response::Nodes { peers }) = result else {
            return;
        };
        let fresh: Vec<PeerInfo> = peers
            .into_iter()
            .filter(|p| {
                p.id != self.cfg.id && self.table.get(&p.id).is_none() && !p.addrs.is_empty()
            })
            .take(INTRODUCE_VERIFY)
            .collect();
        for p in fresh {
            let nonce = self.rng.next_u64();
            self.send_request(now, p.id, p.addrs, Request::Ping { nonce }, Purpose::Verify);
        }
    }
}
