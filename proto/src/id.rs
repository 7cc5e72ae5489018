//! Node identities and the XOR metric.
//!
//! A [`NodeId`] is the 32-byte Ed25519 public key of a node. This module only treats it as
//! bytes: signing and verification live in the agent shell.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A node's identity: its Ed25519 public key. Shown as lowercase hex (64 chars); parsing
/// also accepts unpadded base32 (RFC 4648, 52 chars, any case).
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The id as four big-endian words: they compare like the bytes do.
    fn words(&self) -> impl Iterator<Item = u64> + '_ {
        self.0
            .as_chunks::<8>()
            .0
            .iter()
            .map(|w| u64::from_be_bytes(*w))
    }
}

// Ordered by hand rather than derived: ids are ordered in every map lookup, and the derived
// order calls `memcmp` on 32 bytes. Same order as the bytes' lexicographic one; equality
// stays the bytes' (the compiler inlines that one).
impl PartialEq for NodeId {
    fn eq(&self, other: &NodeId) -> bool {
        self.0 == other.0
    }
}

impl Eq for NodeId {}

impl std::hash::Hash for NodeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &NodeId) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeId {
    fn cmp(&self, other: &NodeId) -> std::cmp::Ordering {
        self.words().cmp(other.words())
    }
}

/// Why a string is not a [`NodeId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseNodeIdError {
    /// Neither 64 hex characters nor 52 base32 characters.
    #[error("node id must be 64 hex or 52 base32 characters, got {0} characters")]
    Length(usize),
    /// Right length, wrong alphabet.
    #[error("node id has characters outside its encoding: {0}")]
    Encoding(String),
}

impl NodeId {
    /// The XOR distance to `other`, as a big-endian 256-bit number.
    pub fn distance(&self, other: &NodeId) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        d
    }

    /// Kademlia bucket index of `other` relative to `self`: 255 minus the number of leading
    /// zero bits of the XOR distance, so bucket 255 holds the far half of the id space.
    /// `None` for `self`.
    pub fn bucket_of(&self, other: &NodeId) -> Option<usize> {
        let mut zeros = 0usize;
        for (x, y) in self.words().zip(other.words()) {
            let w = x ^ y;
            if w == 0 {
                zeros += 64;
            } else {
                zeros += w.leading_zeros() as usize;
                return Some(255 - zeros);
            }
        }
        None
    }

    /// A uniformly random id whose bucket relative to `self` is `bucket` (0..=255).
    pub fn random_in_bucket(&self, bucket: usize, rng: &mut impl rand::Rng) -> NodeId {
        let bucket = bucket.min(255);
        let mut d = [0u8; 32];
        rng.fill_bytes(&mut d);
        // Distance has its highest set bit at position `bucket` (counting from the LSB).
        let top = 255 - bucket; // index of that bit counting from the MSB
        let (byte, bit) = (top / 8, top % 8);
        for b in d.iter_mut().take(byte) {
            *b = 0;
        }
        let mask_keep = 0xffu8 >> bit; // bits at and below the top bit
        d[byte] &= mask_keep;
        d[byte] |= 0x80u8 >> bit;
        let mut out = [0u8; 32];
        for i in 0..32 {
            out[i] = self.0[i] ^ d[i];
        }
        NodeId(out)
    }

    /// Lowercase hex, the canonical text form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Unpadded lowercase base32, a shorter text form.
    pub fn to_base32(&self) -> String {
        data_encoding::BASE32_NOPAD
            .encode(&self.0)
            .to_ascii_lowercase()
    }

    /// The first 8 hex characters, for logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bytes = match s.len() {
            64 => hex::decode(s).map_err(|e| ParseNodeIdError::Encoding(e.to_string()))?,
            52 => data_encoding::BASE32_NOPAD
                .decode(s.to_ascii_uppercase().as_bytes())
                .map_err(|e| ParseNodeIdError::Encoding(e.to_string()))?,
            n => return Err(ParseNodeIdError::Length(n)),
        };
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|v: Vec<u8>| ParseNodeIdError::Length(v.len()))?;
        Ok(NodeId(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn order_and_equality_follow_the_bytes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut ids: Vec<NodeId> = (0..200)
            .map(|i| {
                let mut b: [u8; 32] = std::array::from_fn(|_| rand::RngExt::random(&mut rng));
                // Long shared prefixes, so every word gets compared.
                b[..(i % 32)].fill(0);
                NodeId(b)
            })
            .collect();
        ids.push(ids[5]);
        for a in &ids {
            for b in &ids {
                assert_eq!(a.cmp(b), a.0.cmp(&b.0));
                assert_eq!(a == b, a.0 == b.0);
            }
        }
    }

    #[test]
    fn text_forms_round_trip() {
        let id = NodeId([7u8; 32]);
        assert_eq!(id.to_hex().parse::<NodeId>(), Ok(id));
        assert_eq!(id.to_base32().parse::<NodeId>(), Ok(id));
        assert_eq!(id.to_base32().to_uppercase().parse::<NodeId>(), Ok(id));
        assert_eq!("abc".parse::<NodeId>(), Err(ParseNodeIdError::Length(3)));
        assert!(matches!(
            "zz".repeat(32).parse::<NodeId>(),
            Err(ParseNodeIdError::Encoding(_))
        ));
    }

    #[test]
    fn buckets_follow_the_highest_differing_bit() {
        let a = NodeId([0u8; 32]);
        let mut b = [0u8; 32];
        b[0] = 0x80;
        assert_eq!(a.bucket_of(&NodeId(b)), Some(255));
        let mut c = [0u8; 32];
        c[31] = 1;
        assert_eq!(a.bucket_of(&NodeId(c)), Some(0));
        assert_eq!(a.bucket_of(&a), None);
    }

    #[test]
    fn random_in_bucket_lands_in_that_bucket() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let me = NodeId([0x5a; 32]);
        for bucket in [0usize, 1, 7, 8, 100, 254, 255] {
            for _ in 0..20 {
                let id = me.random_in_bucket(bucket, &mut rng);
                assert_eq!(me.bucket_of(&id), Some(bucket));
            }
        }
    }
}
