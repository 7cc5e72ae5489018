//! Signals for others: carrying one a hop closer to its target (coalescing duplicates,
//! within rate and hop limits), and acting on one addressed to this node.
//!
//! A signal is signed by its requester, so it proves who asked, not where the requester
//! is: its claimed addresses may name anyone. Punching sends datagrams to whoever the plan
//! names, up to thousands for birthday probing, so a plan aims its costly paths only at the
//! address a carrier observed ([`punch_addrs`]), and what punches for others cost is
//! budgeted per requester and per destination IP ([`PunchLimits`](super::PunchLimits)).

use std::net::{IpAddr, SocketAddr};

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

/// Whether `ip` is reached across the internet: not private, shared (CGNAT), loopback,
/// link-local or unspecified. (The lab's emulated internet, 198.18.0.0/15, is public here.)
pub(super) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// The addresses a punch towards a peer probes, and whether birthday probing may aim at the
/// first. `observed` is where a carrier (or we) saw the peer; `claims` are addresses the
/// peer, or anyone, says it has; `vouched` is an IP we saw ourselves that the peer's public
/// address must have (see the callers). The costly paths aim only at the first address:
/// - a public observation comes first, with the claims on its IP (other ports of the host);
/// - a private observation means the carrier shares the peer's LAN: then a claim on the
///   vouched IP comes first, if there is one, then the observation;
/// - other claims get plain probes only, and only without a public observation or a vouched
///   claim: a claim may name a victim, and must never earn it more than a few probes.
pub(super) fn punch_addrs(
    observed: Option<SocketAddr>,
    vouched: Option<IpAddr>,
    claims: impl IntoIterator<Item = SocketAddr>,
) -> (Vec<SocketAddr>, bool) {
    let claims: Vec<SocketAddr> = claims.into_iter().collect();
    let public = observed.filter(|o| is_public(o.ip()));
    let trusted_ip = public.map(|o| o.ip()).or(vouched);
    let first = public.or_else(|| claims.iter().copied().find(|a| Some(a.ip()) == trusted_ip));
    let mut out: Vec<SocketAddr> = Vec::new();
    let candidates = first.into_iter().chain(observed).chain(claims);
    for a in candidates {
        let allowed = match trusted_ip {
            Some(ip) => a.ip() == ip || Some(a) == observed,
            None => true,
        };
        if allowed && !out.contains(&a) && out.len() < MAX_ADDRS_PER_PEER {
            out.push(a);
        }
    }
    (out, first.or(observed).is_some())
}

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
            let observed = hops
                .first()
                .map(|h| h.observed)
                .or_else(|| self.direct_remote(&signal.from));
            // A first carrier that saw a private address shares the requester's LAN and so
            // its NAT: when it is connected to us, the IP we see it at is the requester's
            // public IP as well.
            let vouched = hops
                .first()
                .filter(|h| !is_public(h.observed.ip()))
                .and_then(|h| self.direct_remote(&h.by))
                .map(|a| a.ip());
            let known = self.table.get(&signal.from).map(|c| c.addrs.clone());
            let claims = signal
                .from_addrs
                .iter()
                .copied()
                .chain(known.into_iter().flatten());
            let (peer_addrs, observed_first) = punch_addrs(observed, vouched, claims);
            if let Strategy::Punch { birthday } = signal::strategy(self.nat_type(), signal.from_nat)
                && !peer_addrs.is_empty()
            {
                let plan = PunchPlan {
                    peer_addrs,
                    token: signal.nonce,
                    birthday: birthday.filter(|_| observed_first),
                    birthday_sockets: self.cfg.birthday_sockets,
                    birthday_probes: self.cfg.birthday_probes,
                    timeout_ms: self.cfg.punch_timeout_ms,
                };
                // Both budgets must cover the whole plan; the first IP takes its cost (the
                // others are the same host, or plain probes to one claim).
                let cost = f64::from(plan.probe_cost());
                let ip = plan.peer_addrs[0].ip();
                if !self.punch_requesters.allow_n(now, signal.from, cost)
                    || !self.punch_ips.allow_n(now, ip, cost)
                {
                    return refuse(self, SignalOutcome::RateLimited, ErrorCode::RateLimited);
                }
                self.emit(Event::PunchStarted {
                    birthday: plan.birthday.is_some(),
                });
                self.outputs.push_back(Output::Punch {
                    peer: signal.from,
                    plan,
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
