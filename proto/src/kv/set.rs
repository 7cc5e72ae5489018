//! One node's replica of the key-value set: the winning tuple per key, indexed by item for
//! reconciliation, with an order-independent digest.
//!
//! Every tuple that enters is checked (sizes, signature in this network) and counted by
//! outcome; a refused tuple changes nothing. What this does not do: persist (the agent
//! writes every accepted tuple to RocksDB and loads them back through [`KvSet::merge`]),
//! or talk to peers (the sync session does).

use std::collections::{BTreeMap, HashMap};

use crate::kv::riblt::{ITEM_LEN, Item};
use crate::kv::tuple::{Tuple, TupleRefusal};
use crate::signal::SecretKey;

/// Default for [`KvSet::new`]'s `max_tuples`.
pub const DEFAULT_MAX_TUPLES: usize = 100_000;

/// What [`KvSet::merge`] did with a valid tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merged {
    /// A key we did not have.
    Added,
    /// It superseded our tuple for its key. `conflict`: same version, different tuple.
    Replaced {
        /// Equal versions, resolved by the signature rule.
        conflict: bool,
    },
    /// Ours supersedes it; nothing changed. `conflict` as for `Replaced`.
    Kept {
        /// Equal versions, resolved by the signature rule.
        conflict: bool,
    },
    /// We hold exactly this tuple.
    Duplicate,
}

impl Merged {
    /// Whether the set changed.
    pub fn changed(self) -> bool {
        matches!(self, Merged::Added | Merged::Replaced { .. })
    }

    /// Whether two different tuples met at one version.
    pub fn conflict(self) -> bool {
        matches!(
            self,
            Merged::Replaced { conflict: true } | Merged::Kept { conflict: true }
        )
    }
}

/// The replica.
#[derive(Debug)]
pub struct KvSet {
    network: String,
    max_tuples: usize,
    /// Each tuple with its item, hashed once on entry: every sync request lists the items.
    by_key: BTreeMap<String, (Tuple, Item)>,
    by_item: HashMap<Item, String>,
    digest: Item,
}

impl KvSet {
    /// An empty set for `network` (tuples signed for another network are refused) holding
    /// at most `max_tuples` keys.
    pub fn new(network: &str, max_tuples: usize) -> KvSet {
        KvSet {
            network: network.to_string(),
            max_tuples,
            by_key: BTreeMap::new(),
            by_item: HashMap::new(),
            digest: [0; ITEM_LEN],
        }
    }

    /// The network id tuples are checked against.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// No keys.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// XOR of every tuple's item: equal sets have equal digests whatever the order they
    /// were built in, and any one tuple changes it.
    pub fn digest(&self) -> Item {
        self.digest
    }

    /// The tuple for `key`.
    pub fn get(&self, key: &str) -> Option<&Tuple> {
        self.by_key.get(key).map(|(t, _)| t)
    }

    /// The tuple whose item is `item`.
    pub fn by_item(&self, item: &Item) -> Option<&Tuple> {
        self.by_item.get(item).and_then(|k| self.get(k))
    }

    /// Every item, in key order.
    pub fn items(&self) -> Vec<Item> {
        self.by_key.values().map(|(_, i)| *i).collect()
    }

    /// Every tuple, in key order.
    pub fn tuples(&self) -> impl Iterator<Item = &Tuple> {
        self.by_key.values().map(|(t, _)| t)
    }

    /// Checks `t` and keeps it if it wins its key.
    pub fn merge(&mut self, t: Tuple) -> Result<Merged, TupleRefusal> {
        t.check(&self.network)?;
        match self.get(&t.key) {
            None if self.by_key.len() >= self.max_tuples => Err(TupleRefusal::Full),
            None => {
                self.insert(t);
                Ok(Merged::Added)
            }
            Some(old) if old == &t => Ok(Merged::Duplicate),
            Some(old) => {
                let conflict = t.conflicts_with(old);
                if t.supersedes(old) {
                    self.insert(t);
                    Ok(Merged::Replaced { conflict })
                } else {
                    Ok(Merged::Kept { conflict })
                }
            }
        }
    }

    /// Writes `key` = `value` as `signer`, one version above whatever the key holds (from
    /// any author), and returns the new tuple.
    pub fn write(
        &mut self,
        signer: &SecretKey,
        key: &str,
        value: &str,
    ) -> Result<Tuple, TupleRefusal> {
        let version = self.get(key).map_or(1, |t| t.version.saturating_add(1));
        let t = Tuple::sign(signer, &self.network, key, value, version)?;
        self.merge(t.clone())?;
        Ok(t)
    }

    fn insert(&mut self, t: Tuple) {
        let item = t.item();
        if let Some((_, old_item)) = self.by_key.remove(&t.key) {
            self.by_item.remove(&old_item);
            xor(&mut self.digest, &old_item);
        }
        xor(&mut self.digest, &item);
        self.by_item.insert(item, t.key.clone());
        self.by_key.insert(t.key.clone(), (t, item));
    }
}

fn xor(acc: &mut Item, item: &Item) {
    for (a, b) in acc.iter_mut().zip(item) {
        *a ^= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; 32])
    }

    #[test]
    fn writes_bump_the_version_and_the_digest_is_order_independent() {
        let mut a = KvSet::new("n", 10);
        let t1 = a.write(&key(1), "x", "1").expect("write");
        let t2 = a.write(&key(1), "x", "2").expect("write");
        assert_eq!((t1.version, t2.version), (1, 2));
        let t3 = a.write(&key(1), "y", "3").expect("write");
        assert_eq!(a.len(), 2);
        assert_eq!(a.get("x"), Some(&t2));

        // Another replica receiving the same tuples in another order, old ones included.
        let mut b = KvSet::new("n", 10);
        assert_eq!(b.merge(t3.clone()), Ok(Merged::Added));
        assert_eq!(b.merge(t2.clone()), Ok(Merged::Added));
        assert_eq!(b.merge(t1.clone()), Ok(Merged::Kept { conflict: false }));
        assert_eq!(b.merge(t2.clone()), Ok(Merged::Duplicate));
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), KvSet::new("n", 10).digest());
        assert_eq!(b.by_item(&t2.item()), Some(&t2));
        assert_eq!(
            b.by_item(&t1.item()),
            None,
            "a superseded tuple leaves the index"
        );
    }

    #[test]
    fn conflicts_resolve_the_same_way_on_every_replica() {
        let a = Tuple::sign(&key(1), "n", "k", "from-a", 5).expect("sign");
        let b = Tuple::sign(&key(2), "n", "k", "from-b", 5).expect("sign");
        let mut one = KvSet::new("n", 10);
        let mut two = KvSet::new("n", 10);
        one.merge(a.clone()).expect("valid");
        let m1 = one.merge(b.clone()).expect("valid");
        two.merge(b).expect("valid");
        let m2 = two.merge(a).expect("valid");
        assert!(m1.conflict() && m2.conflict());
        assert_eq!(one.digest(), two.digest());
        assert_eq!(one.get("k"), two.get("k"));
    }

    #[test]
    fn refused_tuples_change_nothing() {
        let mut s = KvSet::new("n", 1);
        let good = s.write(&key(1), "a", "1").expect("write");
        let digest = s.digest();
        let mut forged = Tuple::sign(&key(2), "n", "a", "evil", 9).expect("sign");
        forged.author = key(1).node_id();
        assert_eq!(s.merge(forged), Err(TupleRefusal::BadSignature));
        let other_net = Tuple::sign(&key(2), "m", "a", "x", 9).expect("sign");
        assert_eq!(s.merge(other_net), Err(TupleRefusal::BadSignature));
        assert_eq!(s.write(&key(1), "b", "2"), Err(TupleRefusal::Full));
        assert_eq!(s.digest(), digest);
        assert_eq!(s.get("a"), Some(&good));
        assert_eq!(s.len(), 1);
        // A full set still takes a newer tuple for a key it has.
        assert!(s.write(&key(1), "a", "3").is_ok());
    }
}
