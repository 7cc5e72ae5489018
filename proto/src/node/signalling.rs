//! Signals for others: carrying one a hop closer to its target (coalescing duplicates,
//! within rate and hop limits), and acting on one addressed to this node.

use std::net::SocketAddr;

use crate::id::NodeId;
use crate::reach::ConnMode;
use crate::signal::{self, Countersign, Signal, SignalRefusal, Strategy};
use crate::time::Time;
use crate::wire::{ErrorCode, MAX_ADDRS_PER_PEER, Request, Response};

use super::{Activity, Event, Failure, InboundId, Node, Output, PunchPlan, Purpose, SignalOutcome};

/// A signal we are carrying, and everyone waiting for its answer.
#[derive(Clone, Debug)]
pub(super) struct Forward {
    pub(super) key: (NodeId, NodeId),
    pub(super) inbounds: Vec<InboundId>,
    /// We deliver it to the target ourselves (so we fill in its address).
    pub(super) last_hop: bool,
    pub(super) target: NodeId,
}

/// Requesters waiting on one carried signal; more are refused as busy.
const MAX_COALESCED: usize = 4;

/// Signals carried at once.
const MAX_FORWARDS: usize = 256;

impl Node {
    /// A signal arrived from `from`. Returns the immediate answer, or `None` when it was
    /// carried on and the answer will come later.
    pub(super) fn on_signal(
        &mut self,
        now: Time,
        from: NodeId,
        inbound: InboundId,
        signal: Signal,
        hops: Vec<Countersign>,
    ) -> Option<Response> {
        let refuse = |this: &mut Node, outcome: SignalOutcome, code: ErrorCode| {
            this.emit(Event::Signal { outcome });
            Some(Response::Error { code })
        };
        if !self.limiter.allow(now, from) {
            return refuse(self, SignalOutcome::RateLimited, ErrorCode::RateLimited);
        }
        match signal::check_chain(&signal, &hops, &from) {
            Ok(()) => {}
            Err(SignalRefusal::TooManyHops) => {
                return refuse(self, SignalOutcome::NoRoute, ErrorCode::NoRoute);
            }
            Err(_) => return refuse(self, SignalOutcome::Forged, ErrorCode::Forbidden),
        }
        if signal.to == self.cfg.id {
            if self.replays.check_and_insert(now, &signal).is_err() {
                return refuse(self, SignalOutcome::Replayed, ErrorCode::Forbidden);
            }
            // The requester's address as the first carrier saw it; if it came straight from
            // the requester, as we see it.
            let first = hops
                .first()
                .map(|h| h.observed)
                .or_else(|| self.direct_remote(&signal.from));
            // The requester's own public claim first (the first carrier may share its LAN and
            // see a private address), then what the first carrier saw.
            let mut peer_addrs: Vec<SocketAddr> = Vec::new();
            for a in signal.from_addrs.iter().copied().chain(first) {
                if !peer_addrs.contains(&a) && peer_addrs.len() < MAX_ADDRS_PER_PEER {
                    peer_addrs.push(a);
                }
            }
            if let Some(c) = self.table.get(&signal.from) {
                for a in &c.addrs {
                    if !peer_addrs.contains(a) && peer_addrs.len() < MAX_ADDRS_PER_PEER {
                        peer_addrs.push(*a);
                    }
                }
            }
            if let Strategy::Punch { birthday } = signal::strategy(self.nat_type(), signal.from_nat)
                && !peer_addrs.is_empty()
            {
                self.emit(Event::PunchStarted {
                    birthday: birthday.is_some(),
                });
                self.outputs.push_back(Output::Punch {
                    peer: signal.from,
                    plan: PunchPlan {
                        peer_addrs,
                        token: signal.nonce,
                        birthday,
                        birthday_sockets: self.cfg.birthday_sockets,
                        birthday_probes: self.cfg.birthday_probes,
                        timeout_ms: self.cfg.punch_timeout_ms,
                    },
                    parent: Some(Activity::Inbound(inbound)),
                });
            }
            self.emit(Event::Signal {
                outcome: SignalOutcome::Accepted,
            });
            return Some(Response::SignalAnswer {
                target_nat: self.nat_type(),
                target_addr: None,
                target_addrs: self.self_addrs(),
                via: None,
            });
        }
        // Carry it one hop further.
        let key = (signal.from, signal.to);
        if let Some(fid) = self.forward_keys.get(&key).copied()
            && let Some(f) = self.forwards.get_mut(&fid)
        {
            if f.inbounds.len() >= MAX_COALESCED {
                return refuse(self, SignalOutcome::RateLimited, ErrorCode::Busy);
            }
            f.inbounds.push(inbound);
            self.emit(Event::Signal {
                outcome: SignalOutcome::Coalesced,
            });
            return None;
        }
        let Some(observed) = self.direct_remote(&from) else {
            return refuse(self, SignalOutcome::NoRoute, ErrorCode::NoRoute);
        };
        if hops.len() + 1 > signal::MAX_SIGNAL_HOPS || self.forwards.len() >= MAX_FORWARDS {
            return refuse(self, SignalOutcome::NoRoute, ErrorCode::NoRoute);
        }
        let last_hop = self.direct_remote(&signal.to).is_some();
        let next = if last_hop {
            Some(signal.to)
        } else {
            // Greedy: the connected peer closest to the target that is closer than we are
            // and not already on the path.
            let mine = self.cfg.id.distance(&signal.to);
            self.conns
                .iter()
                .filter(|(id, c)| {
                    c.mode != ConnMode::Relayed
                        && **id != from
                        && **id != signal.from
                        && !hops.iter().any(|h| h.by == **id)
                        && id.distance(&signal.to) < mine
                })
                .map(|(id, _)| *id)
                .min_by_key(|id| id.distance(&signal.to))
        };
        let Some(next) = next else {
            return refuse(self, SignalOutcome::NoRoute, ErrorCode::NoRoute);
        };
        let mut hops = hops;
        let index = hops.len();
        hops.push(Countersign::new(&self.cfg.key, &signal, index, observed));
        let fid = self.fresh_id();
        self.forwards.insert(
            fid,
            Forward {
                key,
                inbounds: vec![inbound],
                last_hop,
                target: signal.to,
            },
        );
        self.forward_keys.insert(key, fid);
        self.emit(Event::Signal {
            outcome: SignalOutcome::Forwarded,
        });
        self.send_request(
            now,
            next,
            Vec::new(),
            Request::Signal {
                signal,
                hops,
                trace: None,
            },
            Purpose::Forward(fid),
        );
        None
    }

    /// The next hop answered a signal we carried: pass the answer to everyone waiting.
    pub(super) fn forward_answer(
        &mut self,
        _now: Time,
        fid: u64,
        _next: NodeId,
        result: Result<Response, Failure>,
    ) {
        let Some(f) = self.forwards.remove(&fid) else {
            return;
        };
        if self.forward_keys.get(&f.key) == Some(&fid) {
            self.forward_keys.remove(&f.key);
        }
        let response = match result {
            Ok(Response::SignalAnswer {
                target_nat,
                target_addr,
                target_addrs,
                via,
            }) => {
                if f.last_hop {
                    Response::SignalAnswer {
                        target_nat,
                        target_addr: self.direct_remote(&f.target),
                        target_addrs,
                        via: Some(self.cfg.id),
                    }
                } else {
                    Response::SignalAnswer {
                        target_nat,
                        target_addr,
                        target_addrs,
                        via,
                    }
                }
            }
            Ok(Response::Error { code }) => Response::Error { code },
            Ok(_) => Response::Error {
                code: ErrorCode::BadRequest,
            },
            Err(Failure::Busy) => Response::Error {
                code: ErrorCode::Busy,
            },
            Err(_) => Response::Error {
                code: ErrorCode::NoRoute,
            },
        };
        for inbound in f.inbounds {
            self.outputs.push_back(Output::Respond {
                inbound,
                response: response.clone(),
            });
        }
    }
}
