//! Node claims: two nodes each sign one statement linking their NodeIds (as Polykey's
//! `claimNode` does), so anyone can later check that both agreed.
//!
//! The initiator A signs `(A, B, issued_ms)` and offers the claim to B; B checks A's
//! signature, countersigns the same bytes and returns it; both keep the doubly signed
//! claim. A claim is valid only with both signatures over the same fields: a claim that is
//! forged (a signature that does not verify) or singly signed (B's missing) is refused.
//!
//! Pure: signing and checking only. When to claim, and who stores what, is the node's
//! business (`node/claims.rs`).

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::signal::{SIGNATURE_LEN, SecretKey, verify};

const CLAIM_DOMAIN: &[u8] = b"chaosnet/claim/v1";

/// A claim linking two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claim {
    /// The node that initiated it.
    pub a: NodeId,
    /// The node it claims.
    pub b: NodeId,
    /// When `a` issued it, in its clock's milliseconds.
    pub issued_ms: u64,
    /// `a`'s signature.
    pub sig_a: Vec<u8>,
    /// `b`'s signature; empty in an offer.
    pub sig_b: Vec<u8>,
}

/// Why a claim was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClaimRefusal {
    /// A signature does not verify, or the claim names the wrong nodes.
    Forged,
    /// One signature is missing.
    SinglySigned,
}

impl ClaimRefusal {
    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimRefusal::Forged => "forged",
            ClaimRefusal::SinglySigned => "singly_signed",
        }
    }
}

impl Claim {
    /// An offer by the holder of `key` to `b`: signed by the initiator only.
    pub fn offer(key: &SecretKey, b: NodeId, issued_ms: u64) -> Claim {
        let mut c = Claim {
            a: key.node_id(),
            b,
            issued_ms,
            sig_a: Vec::new(),
            sig_b: Vec::new(),
        };
        c.sig_a = key.sign(&c.signed_bytes());
        c
    }

    /// `b`'s countersignature, with `key` (whose id must be `b`).
    pub fn countersign(&mut self, key: &SecretKey) {
        self.sig_b = key.sign(&self.signed_bytes());
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(CLAIM_DOMAIN.len() + 72);
        m.extend_from_slice(CLAIM_DOMAIN);
        m.extend_from_slice(&self.a.0);
        m.extend_from_slice(&self.b.0);
        m.extend_from_slice(&self.issued_ms.to_be_bytes());
        m
    }

    /// Checks an offer: the initiator's signature, and no countersignature yet.
    pub fn check_offer(&self) -> Result<(), ClaimRefusal> {
        if !self.sig_b.is_empty() || self.a == self.b {
            return Err(ClaimRefusal::Forged);
        }
        if !verify(&self.a, &self.signed_bytes(), &self.sig_a) {
            return Err(ClaimRefusal::Forged);
        }
        Ok(())
    }

    /// Checks a complete claim: both signatures present and valid.
    pub fn check(&self) -> Result<(), ClaimRefusal> {
        if self.sig_a.is_empty() || self.sig_b.is_empty() {
            return Err(ClaimRefusal::SinglySigned);
        }
        let bytes = self.signed_bytes();
        if self.a == self.b
            || !verify(&self.a, &bytes, &self.sig_a)
            || !verify(&self.b, &bytes, &self.sig_b)
        {
            return Err(ClaimRefusal::Forged);
        }
        Ok(())
    }

    /// The node it links `me` to, if `me` is one of its two.
    pub fn other(&self, me: &NodeId) -> Option<NodeId> {
        if self.a == *me {
            Some(self.b)
        } else if self.b == *me {
            Some(self.a)
        } else {
            None
        }
    }

    /// Whether its signature fields have possible lengths (empty or one signature).
    pub fn well_formed(&self) -> bool {
        [&self.sig_a, &self.sig_b]
            .iter()
            .all(|s| s.is_empty() || s.len() == SIGNATURE_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_doubly_signed_untampered_claim_checks() {
        let (a, b, c) = (
            SecretKey::from_bytes([1; 32]),
            SecretKey::from_bytes([2; 32]),
            SecretKey::from_bytes([3; 32]),
        );
        let offer = Claim::offer(&a, b.node_id(), 1_000);
        assert_eq!(offer.check_offer(), Ok(()));
        assert_eq!(offer.check(), Err(ClaimRefusal::SinglySigned));
        let mut claim = offer.clone();
        claim.countersign(&b);
        assert_eq!(claim.check(), Ok(()));
        assert_eq!(
            claim.check_offer(),
            Err(ClaimRefusal::Forged),
            "already countersigned"
        );
        assert_eq!(claim.other(&a.node_id()), Some(b.node_id()));
        assert_eq!(claim.other(&c.node_id()), None);
        // Countersigned by someone else than b.
        let mut wrong = offer.clone();
        wrong.countersign(&c);
        assert_eq!(wrong.check(), Err(ClaimRefusal::Forged));
        // Any changed field breaks both signatures.
        let mut later = claim.clone();
        later.issued_ms += 1;
        assert_eq!(later.check(), Err(ClaimRefusal::Forged));
        let mut swapped = claim.clone();
        swapped.b = c.node_id();
        assert_eq!(swapped.check(), Err(ClaimRefusal::Forged));
        // Garbage signature bytes are a refusal, not a panic.
        let mut short = claim;
        short.sig_b.truncate(3);
        assert_eq!(short.check(), Err(ClaimRefusal::Forged));
        assert!(!short.well_formed());
    }
}
