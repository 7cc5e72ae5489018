//! Signed key-value-version tuples: what one node asserts about one key.
//!
//! A tuple is signed with its author's Ed25519 node key over a domain-separated encoding
//! that includes the network id, so a tuple from one network is never valid in another and
//! nobody but the author can make one in its name. Its [`Item`] (a SHA-256 of everything,
//! signature included) is what set reconciliation exchanges.
//!
//! Pure: building, checking and ordering tuples. Storing them is the set's and the shell's
//! business.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::id::NodeId;
use crate::kv::riblt::Item;
use crate::signal::{SIGNATURE_LEN, SecretKey, verify};

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Longest value, in bytes.
pub const MAX_VALUE_LEN: usize = 4 * 1024;

const TUPLE_DOMAIN: &[u8] = b"chaosnet/kv/tuple/v1";
const ITEM_DOMAIN: &[u8] = b"chaosnet/kv/item/v1";

/// One signed (key, value, version) assertion by `author`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tuple {
    /// At most [`MAX_KEY_LEN`] bytes, not empty.
    pub key: String,
    /// At most [`MAX_VALUE_LEN`] bytes.
    pub value: String,
    /// Higher wins.
    pub version: u64,
    /// The node whose key signed it.
    pub author: NodeId,
    /// Ed25519 over [`Tuple::signed_bytes`].
    pub signature: Vec<u8>,
}

/// Why a tuple is refused. Each has a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum TupleRefusal {
    /// The key is empty.
    #[error("the key is empty")]
    EmptyKey,
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("the key is longer than {MAX_KEY_LEN} bytes")]
    KeyTooLong,
    /// The value is longer than [`MAX_VALUE_LEN`].
    #[error("the value is longer than {MAX_VALUE_LEN} bytes")]
    ValueTooLong,
    /// The signature does not verify under `author` in this network: forged, altered, or
    /// claiming another author.
    #[error("the signature does not verify under the tuple's author")]
    BadSignature,
    /// The set holds its maximum number of tuples and this one is for a new key.
    #[error("the store is full")]
    Full,
}

impl TupleRefusal {
    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TupleRefusal::EmptyKey => "empty_key",
            TupleRefusal::KeyTooLong => "key_too_long",
            TupleRefusal::ValueTooLong => "value_too_long",
            TupleRefusal::BadSignature => "bad_signature",
            TupleRefusal::Full => "full",
        }
    }
}

impl Tuple {
    /// A tuple for `key` = `value` at `version`, signed by `key_pair` for `network`. Checks
    /// the size limits, so a tuple this returns is one every peer accepts.
    pub fn sign(
        signer: &SecretKey,
        network: &str,
        key: &str,
        value: &str,
        version: u64,
    ) -> Result<Tuple, TupleRefusal> {
        check_sizes(key, value)?;
        let mut t = Tuple {
            key: key.to_string(),
            value: value.to_string(),
            version,
            author: signer.node_id(),
            signature: Vec::new(),
        };
        t.signature = signer.sign(&t.signed_bytes(network));
        Ok(t)
    }

    /// Checks sizes and the signature, for a tuple that came from anywhere.
    pub fn check(&self, network: &str) -> Result<(), TupleRefusal> {
        check_sizes(&self.key, &self.value)?;
        if self.signature.len() != SIGNATURE_LEN
            || !verify(&self.author, &self.signed_bytes(network), &self.signature)
        {
            return Err(TupleRefusal::BadSignature);
        }
        Ok(())
    }

    /// The bytes the author signs: every field length-prefixed after a domain tag and the
    /// network id, so no two different tuples (or networks) share an encoding.
    pub fn signed_bytes(&self, network: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(
            TUPLE_DOMAIN.len() + network.len() + self.key.len() + self.value.len() + 64,
        );
        m.extend_from_slice(TUPLE_DOMAIN);
        put(&mut m, network.as_bytes());
        put(&mut m, self.key.as_bytes());
        m.extend_from_slice(&self.version.to_be_bytes());
        put(&mut m, self.value.as_bytes());
        m.extend_from_slice(&self.author.0);
        m
    }

    /// The tuple's reconciliation item: a hash of every field, signature included.
    pub fn item(&self) -> Item {
        let mut h = Sha256::new();
        h.update(ITEM_DOMAIN);
        h.update((self.key.len() as u64).to_be_bytes());
        h.update(self.key.as_bytes());
        h.update(self.version.to_be_bytes());
        h.update((self.value.len() as u64).to_be_bytes());
        h.update(self.value.as_bytes());
        h.update(self.author.0);
        h.update(&self.signature);
        h.finalize().into()
    }

    /// Whether `self` replaces `other` (a tuple for the same key): the higher version
    /// wins, and at equal versions the higher signature bytes, a rule every node applies
    /// alike so that they converge. A tuple never supersedes itself.
    pub fn supersedes(&self, other: &Tuple) -> bool {
        (self.version, &self.signature) > (other.version, &other.signature)
    }

    /// Two different tuples for one key at one version: a conflict to count.
    pub fn conflicts_with(&self, other: &Tuple) -> bool {
        self.version == other.version && self != other
    }
}

fn check_sizes(key: &str, value: &str) -> Result<(), TupleRefusal> {
    if key.is_empty() {
        return Err(TupleRefusal::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(TupleRefusal::KeyTooLong);
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(TupleRefusal::ValueTooLong);
    }
    Ok(())
}

fn put(m: &mut Vec<u8>, field: &[u8]) {
    m.extend_from_slice(&(field.len() as u32).to_be_bytes());
    m.extend_from_slice(field);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; 32])
    }

    #[test]
    fn a_signed_tuple_checks_only_in_its_network() {
        let t = Tuple::sign(&key(1), "testnet", "score/a", "0.5", 1).expect("sign");
        assert_eq!(t.check("testnet"), Ok(()));
        assert_eq!(t.check("mainnet"), Err(TupleRefusal::BadSignature));
    }

    #[test]
    fn altering_any_field_or_claiming_another_author_breaks_the_signature() {
        let t = Tuple::sign(&key(1), "n", "k", "v", 3).expect("sign");
        let mut other_author = t.clone();
        other_author.author = key(2).node_id();
        let mut value = t.clone();
        value.value = "w".into();
        let mut version = t.clone();
        version.version = 4;
        let mut k = t.clone();
        k.key = "k2".into();
        let mut short = t.clone();
        short.signature.pop();
        for bad in [other_author, value, version, k, short] {
            assert_eq!(bad.check("n"), Err(TupleRefusal::BadSignature), "{bad:?}");
        }
        // A hostile node re-signing someone else's tuple in its own name is a different,
        // valid tuple by a different author, never the original author's.
        let resigned = Tuple::sign(&key(2), "n", "k", "v", 3).expect("sign");
        assert_ne!(resigned.author, t.author);
        assert_ne!(resigned.item(), t.item());
    }

    #[test]
    fn size_limits_are_enforced_on_both_sides() {
        let long_key = "k".repeat(MAX_KEY_LEN + 1);
        let long_value = "v".repeat(MAX_VALUE_LEN + 1);
        assert_eq!(
            Tuple::sign(&key(1), "n", &long_key, "v", 1),
            Err(TupleRefusal::KeyTooLong)
        );
        assert_eq!(
            Tuple::sign(&key(1), "n", "k", &long_value, 1),
            Err(TupleRefusal::ValueTooLong)
        );
        assert_eq!(
            Tuple::sign(&key(1), "n", "", "v", 1),
            Err(TupleRefusal::EmptyKey)
        );
        let max = Tuple::sign(
            &key(1),
            "n",
            &"k".repeat(MAX_KEY_LEN),
            &"v".repeat(MAX_VALUE_LEN),
            1,
        );
        assert!(max.is_ok());
        let mut t = Tuple::sign(&key(1), "n", "k", "v", 1).expect("sign");
        t.value = long_value;
        assert_eq!(t.check("n"), Err(TupleRefusal::ValueTooLong));
    }

    #[test]
    fn higher_version_wins_then_higher_signature() {
        let a1 = Tuple::sign(&key(1), "n", "k", "x", 1).expect("sign");
        let b2 = Tuple::sign(&key(2), "n", "k", "y", 2).expect("sign");
        assert!(b2.supersedes(&a1));
        assert!(!a1.supersedes(&b2));
        let b1 = Tuple::sign(&key(2), "n", "k", "y", 1).expect("sign");
        assert!(a1.conflicts_with(&b1));
        // Exactly one of two conflicting tuples wins, whichever node compares them.
        assert_ne!(a1.supersedes(&b1), b1.supersedes(&a1));
        assert!(!a1.supersedes(&a1));
        assert!(!a1.conflicts_with(&a1));
    }
}
