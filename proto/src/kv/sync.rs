//! One reconciliation between two replicas, as messages: the initiator asks for windows of
//! the responder's coded symbols until its decoder finishes, then fetches the tuples it
//! lacks and pushes the ones the responder lacks.
//!
//! Versioned tuples make the difference hold both sides of a key (ours at version 2, theirs
//! at 1): both are exchanged and each side keeps the winner, so after one session both hold
//! the same set. A session is bounded in symbols, in items per message and in message size;
//! a responder keeps no state between requests. Sending the messages, choosing the peer and
//! timing the rounds are the caller's.

use serde::{Deserialize, Serialize};

use crate::kv::riblt::{CodedSymbol, DecodeFailure, Decoder, Encoder, Item};
use crate::kv::set::KvSet;
use crate::kv::tuple::{MAX_KEY_LEN, MAX_VALUE_LEN, Tuple, TupleRefusal};

/// Most symbols in one [`KvRequest::Symbols`] answer: 1,024 × 48 bytes fits a frame.
pub const MAX_SYMBOLS_PER_MESSAGE: usize = 1_024;
/// Most items asked for in one [`KvRequest::Fetch`].
pub const MAX_WANT_PER_MESSAGE: usize = 1_024;
/// Budget for the tuples of one message, in encoded bytes: under the 64 KiB frame.
pub const MAX_TUPLE_BYTES_PER_MESSAGE: usize = 48 * 1024;

/// Session limits. Plain data; the defaults are documented per field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// Symbols asked for in the first window. Default 16: a session between replicas a
    /// few writes apart costs one small round trip.
    pub first_window: usize,
    /// Each window doubles up to this many symbols (at most
    /// [`MAX_SYMBOLS_PER_MESSAGE`]). Default 1,024.
    pub max_window: usize,
    /// The session gives up past this many symbols (about 1.4 per difference). Default
    /// 32,768: about 23,000 differences, 1.5 MiB of decoder state.
    pub max_symbols: usize,
}

impl Default for SyncConfig {
    fn default() -> SyncConfig {
        SyncConfig {
            first_window: 16,
            max_window: MAX_SYMBOLS_PER_MESSAGE,
            max_symbols: 32_768,
        }
    }
}

/// A request from the initiator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    /// Symbols `start..start + count` of your set, unless your digest is `digest`.
    Symbols {
        /// The initiator's digest: equal sets skip the exchange.
        digest: Item,
        /// Index of the first symbol.
        start: u64,
        /// At most [`MAX_SYMBOLS_PER_MESSAGE`].
        count: u16,
    },
    /// The tuples with these items, and take these tuples.
    Fetch {
        /// At most [`MAX_WANT_PER_MESSAGE`].
        want: Vec<Item>,
        /// Tuples the responder lacks, within [`MAX_TUPLE_BYTES_PER_MESSAGE`].
        push: Vec<Tuple>,
    },
}

/// The responder's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    /// The asked window; empty when the digests matched.
    Symbols {
        /// The responder's digest.
        digest: Item,
        /// In index order from the asked `start`.
        symbols: Vec<CodedSymbol>,
    },
    /// The asked tuples it still has, within [`MAX_TUPLE_BYTES_PER_MESSAGE`]; the rest are
    /// asked for again.
    Tuples {
        /// In no particular order.
        tuples: Vec<Tuple>,
    },
}

/// Counts from merging a batch of tuples.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeCounts {
    /// Tuples that changed the set (to persist).
    pub changed: Vec<Tuple>,
    /// Equal versions with different tuples.
    pub conflicts: u32,
    /// Refused tuples, by reason.
    pub rejected: Vec<TupleRefusal>,
}

impl MergeCounts {
    fn merge_all(&mut self, set: &mut KvSet, tuples: Vec<Tuple>) {
        for t in tuples {
            match set.merge(t.clone()) {
                Ok(m) => {
                    if m.changed() {
                        self.changed.push(t);
                    }
                    self.conflicts += u32::from(m.conflict());
                }
                Err(r) => self.rejected.push(r),
            }
        }
    }

    fn add(&mut self, other: MergeCounts) {
        self.changed.extend(other.changed);
        self.conflicts += other.conflicts;
        self.rejected.extend(other.rejected);
    }
}

/// Answers one request against `set`. Keeps no state: each window is encoded afresh, at
/// about `2 ln(start)` steps per tuple. Pushed tuples are checked and merged.
pub fn respond(set: &mut KvSet, req: KvRequest, cfg: &SyncConfig) -> (KvResponse, MergeCounts) {
    let mut counts = MergeCounts::default();
    let resp = match req {
        KvRequest::Symbols {
            digest,
            start,
            count,
        } => {
            let count = usize::from(count).min(MAX_SYMBOLS_PER_MESSAGE);
            // A window past the session bound is one no honest initiator asks for.
            let symbols = if digest == set.digest() || start >= cfg.max_symbols as u64 {
                Vec::new()
            } else {
                Encoder::starting_at(set.items(), start).take(count)
            };
            KvResponse::Symbols {
                digest: set.digest(),
                symbols,
            }
        }
        KvRequest::Fetch { want, push } => {
            let mut tuples = Vec::new();
            let mut bytes = 0;
            for item in want.iter().take(MAX_WANT_PER_MESSAGE) {
                if let Some(t) = set.by_item(item) {
                    let size = tuple_size(t);
                    if bytes + size > MAX_TUPLE_BYTES_PER_MESSAGE {
                        break;
                    }
                    bytes += size;
                    tuples.push(t.clone());
                }
            }
            counts.merge_all(set, push);
            KvResponse::Tuples { tuples }
        }
    };
    (resp, counts)
}

/// An upper bound on a tuple's encoded size, for the message budget.
pub(crate) fn tuple_size(t: &Tuple) -> usize {
    t.key.len() + t.value.len() + t.signature.len() + 64
}

// The budget must hold at least one largest tuple, or a large tuple could never move.
const _: () = assert!(MAX_KEY_LEN + MAX_VALUE_LEN + 64 + 64 <= MAX_TUPLE_BYTES_PER_MESSAGE);

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncOutcome {
    /// The digests matched at the first request.
    InSync,
    /// Differences were exchanged.
    Reconciled,
    /// The decoder did not finish within [`SyncConfig::max_symbols`], or the symbols were
    /// inconsistent (a set that changed mid-session, or a hostile peer).
    GaveUp,
    /// The peer answered with the wrong kind of message.
    Protocol,
    /// A request failed or timed out (the shell's transport said so).
    Failed,
}

impl SyncOutcome {
    /// Every outcome, for label enumeration.
    pub const ALL: [SyncOutcome; 5] = [
        SyncOutcome::InSync,
        SyncOutcome::Reconciled,
        SyncOutcome::GaveUp,
        SyncOutcome::Protocol,
        SyncOutcome::Failed,
    ];

    /// Bounded metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            SyncOutcome::InSync => "in_sync",
            SyncOutcome::Reconciled => "reconciled",
            SyncOutcome::GaveUp => "gave_up",
            SyncOutcome::Protocol => "protocol",
            SyncOutcome::Failed => "failed",
        }
    }
}

/// What a finished session did.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SyncReport {
    /// How it ended.
    pub outcome: SyncOutcome,
    /// Coded symbols received (on the wire: the last window's surplus included).
    pub symbols: usize,
    /// Differences the decoder found (both sides).
    pub differences: usize,
    /// Requests sent.
    pub rounds: u32,
    /// Fetched tuples that changed our set.
    pub merged: usize,
    /// Fetched tuples refused (each also in [`SyncSession::take_merged`]).
    pub rejected: usize,
    /// Tuples pushed to the peer.
    pub pushed: usize,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this request and feed the answer to [`SyncSession::on_response`].
    Send(KvRequest),
    /// The session is over.
    Done(SyncReport),
}

#[derive(Debug)]
enum Phase {
    Symbols,
    Exchange,
}

/// The initiator's side of one session.
#[derive(Debug)]
pub struct SyncSession {
    cfg: SyncConfig,
    decoder: Decoder,
    /// Our items at the start, until the first symbols arrive: building the decoder hashes
    /// every one of them, and a session between equal replicas (the usual one) ends at the
    /// first answer without needing it.
    local: Option<Vec<Item>>,
    window: usize,
    phase: Phase,
    want: Vec<Item>,
    push: Vec<Item>,
    /// Items asked for in the last fetch, not answered yet.
    asked: Vec<Item>,
    /// Merges since the last [`SyncSession::take_merged`].
    merged: MergeCounts,
    report: SyncReport,
}

impl SyncSession {
    /// Starts a session from our `set`; returns the first request.
    pub fn start(set: &KvSet, cfg: SyncConfig) -> (SyncSession, KvRequest) {
        let window = cfg.first_window.clamp(1, MAX_SYMBOLS_PER_MESSAGE);
        let max_differences = cfg.max_symbols;
        let mut s = SyncSession {
            decoder: Decoder::new(Vec::new(), max_differences),
            local: Some(set.items()),
            window,
            cfg,
            phase: Phase::Symbols,
            want: Vec::new(),
            push: Vec::new(),
            asked: Vec::new(),
            merged: MergeCounts::default(),
            report: SyncReport {
                outcome: SyncOutcome::Reconciled,
                symbols: 0,
                differences: 0,
                rounds: 0,
                merged: 0,
                rejected: 0,
                pushed: 0,
            },
        };
        let req = s.symbols_request(set);
        (s, req)
    }

    fn symbols_request(&mut self, set: &KvSet) -> KvRequest {
        self.report.rounds += 1;
        let left = self.cfg.max_symbols.saturating_sub(self.decoder.received());
        let count = self
            .window
            .min(self.cfg.max_window.min(MAX_SYMBOLS_PER_MESSAGE))
            .min(left)
            .max(1);
        KvRequest::Symbols {
            digest: set.digest(),
            start: self.decoder.received() as u64,
            // `count` ≤ MAX_SYMBOLS_PER_MESSAGE, which fits in u16.
            count: u16::try_from(count).unwrap_or(u16::MAX),
        }
    }

    /// Ends the session from outside (a request failed, or the answer was of the wrong
    /// kind); the report says how far it got.
    pub fn abort(&mut self, outcome: SyncOutcome) -> SyncReport {
        self.report.outcome = outcome;
        self.report.clone()
    }

    fn done(&mut self, outcome: SyncOutcome) -> Step {
        self.report.outcome = outcome;
        Step::Done(self.report.clone())
    }

    /// What merging fetched tuples did since the last call: the changed tuples to persist,
    /// conflicts and refusals to count.
    pub fn take_merged(&mut self) -> MergeCounts {
        std::mem::take(&mut self.merged)
    }

    /// Feeds the peer's answer; `set` is ours, and takes the fetched tuples.
    pub fn on_response(&mut self, set: &mut KvSet, resp: KvResponse) -> Step {
        match (&self.phase, resp) {
            (Phase::Symbols, KvResponse::Symbols { digest, symbols }) => {
                if symbols.is_empty() {
                    return if digest == set.digest() && self.decoder.received() == 0 {
                        self.done(SyncOutcome::InSync)
                    } else {
                        // The peer stopped answering windows (or changed its set to ours).
                        self.done(SyncOutcome::GaveUp)
                    };
                }
                self.report.symbols += symbols.len();
                if let Some(local) = self.local.take() {
                    self.decoder = Decoder::new(local, self.cfg.max_symbols);
                }
                let room = self.cfg.max_symbols.saturating_sub(self.decoder.received());
                for s in symbols.into_iter().take(room) {
                    self.decoder.add_symbol(s);
                    if self.decoder.is_decoded() || self.decoder.failure().is_some() {
                        break;
                    }
                }
                if matches!(
                    self.decoder.failure(),
                    Some(DecodeFailure::Inconsistent | DecodeFailure::TooManyDifferences(_))
                ) {
                    return self.done(SyncOutcome::GaveUp);
                }
                if !self.decoder.is_decoded() {
                    if self.decoder.received() >= self.cfg.max_symbols {
                        return self.done(SyncOutcome::GaveUp);
                    }
                    self.window = self.window.saturating_mul(2);
                    return Step::Send(self.symbols_request(set));
                }
                self.want = self.decoder.remote_only().to_vec();
                self.push = self.decoder.local_only().to_vec();
                self.report.differences = self.want.len() + self.push.len();
                self.phase = Phase::Exchange;
                self.exchange(set)
            }
            (Phase::Exchange, KvResponse::Tuples { tuples }) => {
                // Only what was asked for counts; anything else from the peer is ignored.
                let asked = std::mem::take(&mut self.asked);
                let (mut answered, mut unanswered): (Vec<Tuple>, Vec<Item>) =
                    (Vec::new(), Vec::new());
                let mut returned: Vec<Item> = Vec::with_capacity(tuples.len());
                for t in tuples {
                    let item = t.item();
                    if asked.contains(&item) && !returned.contains(&item) {
                        returned.push(item);
                        answered.push(t);
                    }
                }
                for item in asked {
                    if !returned.contains(&item) {
                        unanswered.push(item);
                    }
                }
                let mut counts = MergeCounts::default();
                counts.merge_all(set, answered);
                self.report.merged += counts.changed.len();
                self.report.rejected += counts.rejected.len();
                self.merged.add(counts);
                // An answer that brought nothing means the peer no longer has the rest.
                if !returned.is_empty() {
                    self.want.splice(0..0, unanswered);
                }
                self.exchange(set)
            }
            _ => self.done(SyncOutcome::Protocol),
        }
    }

    /// The next fetch (with pushes), or the end.
    fn exchange(&mut self, set: &KvSet) -> Step {
        if self.want.is_empty() && self.push.is_empty() {
            return self.done(SyncOutcome::Reconciled);
        }
        let n = self.want.len().min(MAX_WANT_PER_MESSAGE);
        let want: Vec<Item> = self.want.drain(..n).collect();
        let mut push = Vec::new();
        let mut bytes = 0;
        while let Some(item) = self.push.last() {
            // A tuple superseded here since decoding is no longer worth sending.
            let Some(t) = set.by_item(item) else {
                self.push.pop();
                continue;
            };
            let size = tuple_size(t);
            if bytes + size > MAX_TUPLE_BYTES_PER_MESSAGE {
                break;
            }
            bytes += size;
            push.push(t.clone());
            self.push.pop();
        }
        if want.is_empty() && push.is_empty() {
            return self.done(SyncOutcome::Reconciled);
        }
        self.report.pushed += push.len();
        self.report.rounds += 1;
        self.asked = want.clone();
        Step::Send(KvRequest::Fetch { want, push })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::SecretKey;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; 32])
    }

    /// Runs a whole session between two local replicas.
    fn sync(a: &mut KvSet, b: &mut KvSet, cfg: &SyncConfig) -> (SyncReport, MergeCounts) {
        let (mut s, mut req) = SyncSession::start(a, cfg.clone());
        let mut at_b = MergeCounts::default();
        for _ in 0..10_000 {
            let (resp, counts) = respond(b, req, cfg);
            at_b.add(counts);
            match s.on_response(a, resp) {
                Step::Send(r) => req = r,
                Step::Done(rep) => return (rep, at_b),
            }
        }
        panic!("session did not end");
    }

    fn replicas(shared: usize, only_a: usize, only_b: usize) -> (KvSet, KvSet) {
        let mut a = KvSet::new("n", 100_000);
        let mut b = KvSet::new("n", 100_000);
        for i in 0..shared {
            let t = a
                .write(&key(1), &format!("shared/{i}"), "v")
                .expect("write");
            b.merge(t).expect("valid");
        }
        for i in 0..only_a {
            a.write(&key(1), &format!("a/{i}"), "v").expect("write");
        }
        for i in 0..only_b {
            b.write(&key(2), &format!("b/{i}"), "v").expect("write");
        }
        (a, b)
    }

    #[test]
    fn equal_replicas_need_one_round_and_no_symbols() {
        let (mut a, mut b) = replicas(200, 0, 0);
        let (rep, _) = sync(&mut a, &mut b, &SyncConfig::default());
        assert_eq!(rep.outcome, SyncOutcome::InSync);
        assert_eq!((rep.rounds, rep.symbols), (1, 0));
    }

    #[test]
    fn one_session_makes_both_replicas_equal() {
        let (mut a, mut b) = replicas(300, 120, 250);
        // And a key both hold at different versions: the newer (b's) must win on both.
        let old = a.write(&key(1), "shared/0", "older").expect("write");
        let newer = Tuple::sign(&key(2), "n", "shared/0", "newer", old.version + 1).expect("sign");
        b.merge(newer.clone()).expect("valid");
        let (rep, at_b) = sync(&mut a, &mut b, &SyncConfig::default());
        assert_eq!(rep.outcome, SyncOutcome::Reconciled);
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.len(), 300 + 120 + 250);
        assert_eq!(a.get("shared/0"), Some(&newer));
        assert_eq!(rep.differences, 120 + 250 + 2);
        assert_eq!(rep.rejected, 0);
        assert!(at_b.rejected.is_empty());
        assert!(
            rep.symbols as f64 <= 2.0 * rep.differences as f64,
            "{rep:?}"
        );
    }

    #[test]
    fn large_tuples_move_in_several_fetches() {
        let mut a = KvSet::new("n", 1_000);
        let mut b = KvSet::new("n", 1_000);
        let big = "x".repeat(MAX_VALUE_LEN);
        for i in 0..40 {
            b.write(&key(2), &format!("big/{i}"), &big).expect("write");
        }
        let (rep, _) = sync(&mut a, &mut b, &SyncConfig::default());
        assert_eq!(a.digest(), b.digest());
        assert!(
            rep.rounds > 3,
            "40 × 4 KiB cannot fit one 48 KiB message: {rep:?}"
        );
    }

    #[test]
    fn a_hostile_responder_cannot_plant_forged_or_unasked_tuples() {
        let (mut a, b) = replicas(10, 0, 2);
        // The hostile peer's set holds a forgery in another node's name: its symbols carry
        // the forgery's item, so the decoder finds it and we ask for it.
        let mut forged = Tuple::sign(&key(9), "n", "k", "evil", 1).expect("sign");
        forged.author = key(1).node_id();
        let unasked = Tuple::sign(&key(9), "n", "unasked", "x", 1).expect("sign");
        let mut items = b.items();
        items.push(forged.item());
        let (mut s, mut req) = SyncSession::start(&a, SyncConfig::default());
        let rep = loop {
            let resp = match req {
                KvRequest::Symbols { start, count, .. } => KvResponse::Symbols {
                    digest: [1; 32],
                    symbols: Encoder::starting_at(items.clone(), start).take(usize::from(count)),
                },
                KvRequest::Fetch { want, .. } => {
                    let mut tuples: Vec<Tuple> =
                        want.iter().filter_map(|i| b.by_item(i).cloned()).collect();
                    if want.contains(&forged.item()) {
                        tuples.push(forged.clone());
                    }
                    tuples.push(unasked.clone());
                    KvResponse::Tuples { tuples }
                }
            };
            match s.on_response(&mut a, resp) {
                Step::Send(r) => req = r,
                Step::Done(rep) => break rep,
            }
        };
        assert_eq!(rep.outcome, SyncOutcome::Reconciled);
        assert_eq!(rep.rejected, 1);
        assert_eq!(rep.merged, 2);
        let merged = s.take_merged();
        assert_eq!(merged.rejected, vec![TupleRefusal::BadSignature]);
        assert_eq!(merged.changed.len(), 2);
        assert!(a.get("k").is_none() && a.get("unasked").is_none());
        assert_eq!(a.len(), 12);
    }

    #[test]
    fn a_pushed_forgery_is_refused_and_counted_by_the_responder() {
        let mut b = KvSet::new("n", 10);
        let mut forged = Tuple::sign(&key(9), "n", "k", "evil", 1).expect("sign");
        forged.author = key(1).node_id();
        let (_, counts) = respond(
            &mut b,
            KvRequest::Fetch {
                want: vec![],
                push: vec![forged],
            },
            &SyncConfig::default(),
        );
        assert_eq!(counts.rejected, vec![TupleRefusal::BadSignature]);
        assert!(b.is_empty());
    }

    #[test]
    fn windows_past_the_bound_are_not_encoded() {
        let (_, mut b) = replicas(10, 0, 5);
        let cfg = SyncConfig::default();
        let (resp, _) = respond(
            &mut b,
            KvRequest::Symbols {
                digest: [7; 32],
                start: u64::MAX,
                count: u16::MAX,
            },
            &cfg,
        );
        assert!(matches!(resp, KvResponse::Symbols { symbols, .. } if symbols.is_empty()));
    }

    #[test]
    fn too_many_differences_give_up_within_the_bound() {
        let (mut a, mut b) = replicas(0, 0, 300);
        let cfg = SyncConfig {
            max_symbols: 64,
            ..SyncConfig::default()
        };
        let (rep, _) = sync(&mut a, &mut b, &cfg);
        assert_eq!(rep.outcome, SyncOutcome::GaveUp);
        assert!(rep.symbols <= 64, "{rep:?}");
        assert!(a.is_empty(), "nothing merged from an undecoded session");
    }
}
