//! Node claims in the node: the cross-signing exchange (as initiator and as the claimed
//! node), the claims this node holds, and fetching and checking another node's claims.
//!
//! Claiming and fetching first connect to the peer (any way: direct, punched, relayed),
//! then send one request on that connection. A claim is stored only doubly signed and
//! checked; anything else is refused and counted ([`ClaimOutcome`]).

use std::collections::BTreeMap;

use crate::claim::{Claim, ClaimRefusal};
use crate::id::NodeId;
use crate::time::Time;
use crate::wire::{ErrorCode, MAX_CLAIMS_PER_RESPONSE, Request, Response};

use super::{ClaimOutcome, Event, Failure, Node, OpId, Output, Purpose, TaskOutcome};

/// Claims kept, one per other node; beyond this the oldest issued goes.
pub(super) const MAX_CLAIMS: usize = 1024;

/// What an operation does once its connect succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Then {
    /// Offer a claim to the peer.
    Claim,
    /// Fetch and check the peer's claims.
    FetchClaims,
}

/// The claims a node holds, by the other node of each.
pub(super) type Claims = BTreeMap<NodeId, Claim>;

impl Node {
    /// The doubly signed claims this node holds, by the other node's id.
    pub fn claims(&self) -> impl Iterator<Item = &Claim> {
        self.claims.values()
    }

    /// Puts back claims read from storage; ones that do not check, or do not involve this
    /// node, are dropped. Call before [`Node::start`].
    pub fn restore_claims(&mut self, claims: Vec<Claim>) {
        for c in claims {
            if c.check().is_ok()
                && let Some(other) = c.other(&self.cfg.id)
            {
                self.keep_claim(other, c);
            }
        }
    }

    fn keep_claim(&mut self, other: NodeId, claim: Claim) {
        if !self.claims.contains_key(&other) && self.claims.len() >= MAX_CLAIMS {
            let oldest = self
                .claims
                .iter()
                .min_by_key(|(id, c)| (c.issued_ms, **id))
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.claims.remove(&id);
            }
        }
        self.claims.insert(other, claim);
    }

    fn claim_event(&mut self, outcome: ClaimOutcome) {
        self.emit(Event::Claim { outcome });
    }

    fn refused(&mut self, r: ClaimRefusal) {
        self.claim_event(match r {
            ClaimRefusal::Forged => ClaimOutcome::Forged,
            ClaimRefusal::SinglySigned => ClaimOutcome::SinglySigned,
        });
    }

    /// Starts a claim of `peer` (`fetch`: a fetch of its claims) for operation `op`.
    pub(super) fn start_claim(&mut self, now: Time, op: OpId, peer: NodeId, then: Then) {
        if let Some(o) = self.ops.get_mut(&op) {
            o.then = Some(then);
            o.peer = Some(peer);
        }
        if peer != self.cfg.id && self.conns.contains_key(&peer) {
            self.claim_connected(now, op, peer, then);
        } else {
            self.start_connect(now, op, peer, false);
        }
    }

    /// The connect of a claim or fetch succeeded: send its request.
    pub(super) fn claim_connected(&mut self, now: Time, op: OpId, peer: NodeId, then: Then) {
        let request = match then {
            Then::Claim => Request::Claim {
                claim: Claim::offer(&self.cfg.key, peer, now.as_millis()),
            },
            Then::FetchClaims => Request::GetClaims,
        };
        let addrs = self.addrs_of(&peer);
        self.send_request(now, peer, addrs, request, Purpose::Op(op));
    }

    /// The peer answered our claim or fetch.
    pub(super) fn claim_answer(
        &mut self,
        now: Time,
        op: OpId,
        then: Then,
        result: Result<Response, Failure>,
    ) {
        let Some(peer) = self.ops.get(&op).and_then(|o| o.peer) else {
            return;
        };
        let outcome = match (then, result) {
            (Then::Claim, Ok(Response::Claimed { claim })) => {
                let mine = claim.a == self.cfg.id && claim.b == peer;
                match claim.check() {
                    Ok(()) if mine => {
                        self.outputs.push_back(Output::StoreClaim(claim.clone()));
                        self.keep_claim(peer, claim.clone());
                        self.claim_event(ClaimOutcome::Stored);
                        if let Some(o) = self.ops.get_mut(&op) {
                            o.claims = vec![claim];
                        }
                        TaskOutcome::Ok
                    }
                    Ok(()) => {
                        self.refused(ClaimRefusal::Forged);
                        TaskOutcome::Failed(Failure::Protocol)
                    }
                    Err(r) => {
                        self.refused(r);
                        TaskOutcome::Failed(Failure::Protocol)
                    }
                }
            }
            (Then::FetchClaims, Ok(Response::Claims { claims })) => {
                let mut good = Vec::new();
                for c in claims {
                    match c.check() {
                        Ok(()) if c.other(&peer).is_some() => {
                            self.claim_event(ClaimOutcome::Verified);
                            good.push(c);
                        }
                        Ok(()) => self.refused(ClaimRefusal::Forged),
                        Err(r) => self.refused(r),
                    }
                }
                if let Some(o) = self.ops.get_mut(&op) {
                    o.claims = good;
                }
                TaskOutcome::Ok
            }
            (_, Ok(Response::Error { .. })) => TaskOutcome::Failed(Failure::Refused),
            (_, Ok(_)) => TaskOutcome::Failed(Failure::Protocol),
            (_, Err(f)) => TaskOutcome::Failed(f),
        };
        self.finish_op(now, op, outcome, None, Vec::new());
    }

    /// `from` offers a claim of us.
    pub(super) fn on_claim(&mut self, now: Time, from: NodeId, claim: Claim) -> Response {
        let fresh = now.as_millis().abs_diff(claim.issued_ms) <= self.cfg.signal_max_age_ms;
        let refusal = if claim.a != from || claim.b != self.cfg.id || !fresh {
            Some(ClaimRefusal::Forged)
        } else {
            claim.check_offer().err()
        };
        if let Some(r) = refusal {
            self.refused(r);
            return Response::Error {
                code: ErrorCode::Forbidden,
            };
        }
        let mut claim = claim;
        claim.countersign(&self.cfg.key);
        self.outputs.push_back(Output::StoreClaim(claim.clone()));
        self.keep_claim(from, claim.clone());
        self.claim_event(ClaimOutcome::Stored);
        Response::Claimed { claim }
    }

    /// The claims we hold, newest first, as many as one answer carries.
    pub(super) fn on_get_claims(&self) -> Response {
        let mut claims: Vec<Claim> = self.claims.values().cloned().collect();
        claims.sort_by_key(|c| std::cmp::Reverse(c.issued_ms));
        claims.truncate(MAX_CLAIMS_PER_RESPONSE);
        Response::Claims { claims }
    }
}
