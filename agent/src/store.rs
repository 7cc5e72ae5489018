//! The node graph persisted in RocksDB, so that the graph survives restarts and `kill -9`
//! (DESIGN.md §3.3).
//!
//! # What it does
//!
//! - Writes every [`GraphChange`] the core emits, one call to [`GraphStore::apply`] = one atomic
//!   RocksDB `WriteBatch`: after a crash either the whole batch is there or none of it.
//! - Keeps a "by last seen" index next to the contacts, so the oldest contacts of a bucket are one
//!   prefix scan ([`GraphStore::oldest_in_bucket`]).
//! - Reads everything back at start-up ([`GraphStore::load`]), skipping (and counting) records it
//!   cannot decode and repairing the index where it disagrees with the contacts.
//!
//! # What it does not do
//!
//! - It makes no protocol decisions: which contacts to keep, evict or ping is decided by the core
//!   ([`chaosnet_proto::RoutingTable`]); this module stores what it is told.
//! - It does not interpret [`Time`]: `last_seen` is stored as given. The core's `Time` counts from
//!   an epoch the driver chooses, so making times comparable across restarts (e.g. by using a
//!   wall-clock epoch) is the caller's job.
//! - It does not cap the number of contacts: the routing table is already bounded.
//! - It does not fsync each write by default (see [`StoreOptions::sync`]).
//!
//! # Layout
//!
//! | column family  | key                                            | value                          |
//! |----------------|------------------------------------------------|--------------------------------|
//! | `contacts`     | node id (32 bytes)                             | format byte ‖ postcard(Contact) |
//! | `by_last_seen` | bucket (u8) ‖ last_seen (u64 BE) ‖ node id (32) | empty                          |
//! | `default`      | `me`, `format`                                 | our node id, format byte       |
//! | `default`      | `claim/` ‖ other node id (32 bytes)            | format byte ‖ postcard(Claim)  |
//! | `default`      | `kv/` ‖ tuple key (UTF-8)                      | format byte ‖ postcard(Tuple)  |
//!
//! The bucket is relative to our own node id, so when the id changes (the key was regenerated) the
//! index is rebuilt on [`GraphStore::open`]. Big-endian `last_seen` makes byte order equal time
//! order, so a forward scan of one bucket's prefix yields the oldest contact first.
//!
//! # Durability
//!
//! Writes go through RocksDB's write-ahead log (WAL) without an fsync per write. A `write()` that
//! returned has handed the WAL record to the kernel, so it survives the *process* dying (`kill -9`,
//! panic, OOM kill): the data is in the OS page cache and RocksDB replays it on the next open.
//! A *machine* crash or power loss may lose the writes of the last few seconds (whatever the kernel
//! had not written back yet); RocksDB still recovers to a consistent earlier point
//! ([point-in-time recovery](rocksdb::DBRecoveryMode::PointInTime)). Losing a few recent graph
//! updates is harmless (the node relearns its peers), and an fsync per update would cost far more
//! than it protects. Set [`StoreOptions::sync`] to fsync every batch instead.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chaosnet_proto::NodeId;
use chaosnet_proto::Time;
use chaosnet_proto::kv::tuple::Tuple;
use chaosnet_proto::{Claim, Contact, GraphChange};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    DBRecoveryMode, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};
use tracing::{info, warn};

/// Column family of the contacts: node id → format byte ‖ postcard(Contact).
const CF_CONTACTS: &str = "contacts";
/// Column family of the index: bucket ‖ last_seen BE ‖ node id → empty.
const CF_BY_LAST_SEEN: &str = "by_last_seen";
/// Meta key (default column family): the node id the buckets of the index are relative to.
const META_ME: &[u8] = b"me";
/// Key prefix of the node claims in the default column family (then the other node's id).
const CLAIM_PREFIX: &[u8] = b"claim/";
/// Key prefix of the key-value tuples in the default column family (then the tuple's key).
const TUPLE_PREFIX: &[u8] = b"kv/";
/// Meta key (default column family): the layout format of the whole store.
const META_FORMAT: &[u8] = b"format";

/// Layout format of the store (meta key `format`). Bump it when the key layout changes.
const STORE_FORMAT: u8 = 1;
/// Leading byte of every contact value: the encoding of the rest. Bump it when [`Contact`]'s
/// serialized form changes, and keep decoding the old one.
const VALUE_FORMAT: u8 = 1;

/// Length of a node id.
const ID_LEN: usize = 32;
/// Length of an index key: bucket (1) + last_seen (8) + id (32).
const INDEX_KEY_LEN: usize = 1 + 8 + ID_LEN;

// Memory budget. The agent aims at ≤ 12 MiB RSS when idle, and the graph is small (at most
// 256 buckets × k = 20 contacts of ~100 bytes, i.e. well under 1 MiB), so RocksDB's defaults
// (64 MiB memtables, 8 MiB block cache per column family, unbounded open files) are far too big.

/// Memtable size per column family. RocksDB allocates memtable memory in arena blocks
/// (1/8 of this) as data arrives, so an idle store holds little; 1 MiB holds thousands of
/// updates before a flush.
const WRITE_BUFFER_SIZE: usize = 1 << 20;
/// At most this many memtables per column family (one active, one being flushed).
const MAX_WRITE_BUFFER_NUMBER: i32 = 2;
/// Hard cap on all memtables of all column families together (a write buffer manager).
const DB_WRITE_BUFFER_SIZE: usize = 4 << 20;
/// One LRU block cache shared by all column families, instead of 8 MiB each. Index and filter
/// blocks are charged to it too (see `set_cache_index_and_filter_blocks`), so it bounds all
/// table-reader memory.
const BLOCK_CACHE_SIZE: usize = 1 << 20;
/// Open SST files kept (each holds a file descriptor and a table reader). The store has a
/// handful of files; 64 bounds the worst case. (RocksDB raises values below 20 to 20.)
const MAX_OPEN_FILES: i32 = 64;
/// Once the WAL reaches this size, RocksDB flushes the column families that keep old WAL files
/// alive, so a rarely written column family cannot pin an ever-growing WAL.
const MAX_TOTAL_WAL_SIZE: u64 = 4 << 20;
/// RocksDB's info LOG file rolls at this size...
const MAX_LOG_FILE_SIZE: usize = 256 << 10;
/// ...and this many old LOG files are kept, so the LOG takes at most ~0.75 MiB of disk.
const KEEP_LOG_FILE_NUM: usize = 2;

/// Open-time settings of a [`GraphStore`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// fsync the WAL on every [`GraphStore::apply`]. Off by default: without it a batch survives
    /// the process being killed but may be lost if the machine crashes or loses power within a
    /// few seconds of the write (see the module docs). On, every batch costs an fsync.
    pub sync: bool,
}

/// Why the store cannot be opened, read or written. Every variant names the store directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another [`GraphStore`] in this process) holds RocksDB's `LOCK` file.
    #[error(
        "node graph store {} is locked (it is already open): is another chaosnet-agent running \
         with this --data-dir? ({detail})",
        path.display()
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
        /// RocksDB's message.
        detail: String,
    },
    /// The directory cannot be created, read or written: permissions, a read-only file system,
    /// or a path component that is not a directory.
    #[error(
        "cannot create, read or write the node graph store directory {}: {detail} (check that \
         it is a directory the agent's user can write)",
        path.display()
    )]
    Permission {
        /// The store directory.
        path: PathBuf,
        /// The underlying message.
        detail: String,
    },
    /// RocksDB reports corruption (bad CURRENT/MANIFEST/SST/WAL, checksum mismatch).
    #[error(
        "node graph store {} is corrupt: {detail}. To recover, stop the agent and move the \
         directory aside (e.g. `mv {0} {0}.corrupt`); the agent then starts with an empty graph \
         and relearns its peers from the network",
        path.display()
    )]
    Corrupt {
        /// The store directory.
        path: PathBuf,
        /// RocksDB's message.
        detail: String,
    },
    /// Any other I/O failure (disk full, I/O error, missing file).
    #[error("I/O error on node graph store {}: {detail}", path.display())]
    Io {
        /// The store directory.
        path: PathBuf,
        /// The underlying message.
        detail: String,
    },
    /// Everything else: unsupported store format, unexpected RocksDB status, encoding failure.
    #[error("node graph store {}: {detail}", path.display())]
    Other {
        /// The store directory.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

impl StoreError {
    /// Classifies a RocksDB error. RocksDB only gives us a status string ("IO error: While lock
    /// file: …/LOCK: Resource temporarily unavailable"), so this inspects its kind and text.
    fn from_rocksdb(path: &Path, e: &rocksdb::Error) -> StoreError {
        let detail = e.to_string();
        let lower = detail.to_ascii_lowercase();
        let path = path.to_path_buf();
        // Permission problems first: "While open a file for lock: …: Permission denied" mentions
        // "lock" too but is not a held lock.
        if lower.contains("permission denied")
            || lower.contains("operation not permitted")
            || lower.contains("read-only file system")
            || lower.contains("not a directory")
        {
            return StoreError::Permission { path, detail };
        }
        // Another process: flock() fails with EAGAIN ("Resource temporarily unavailable").
        // Same process: RocksDB's own table of held locks says "lock hold by current process"
        // (ENOLCK, "No locks available").
        if lower.contains("resource temporarily unavailable")
            || lower.contains("lock hold by current process")
            || lower.contains("no locks available")
            || lower.contains("while lock file")
        {
            return StoreError::Locked { path, detail };
        }
        // A file the store's metadata refers to is gone (e.g. CURRENT names a MANIFEST that does
        // not exist, or an SST was deleted): the store is as unusable as a corrupt one.
        let missing_store_file = lower.contains("no such file or directory")
            && (lower.contains("manifest-") || lower.contains(".sst") || lower.contains(".log"));
        match e.kind() {
            rocksdb::ErrorKind::Corruption => StoreError::Corrupt { path, detail },
            rocksdb::ErrorKind::IOError if missing_store_file => {
                StoreError::Corrupt { path, detail }
            }
            rocksdb::ErrorKind::IOError => StoreError::Io { path, detail },
            _ => StoreError::Other { path, detail },
        }
    }

    /// Classifies an I/O error from our own file-system calls (creating the directory).
    fn from_io(path: &Path, e: &io::Error) -> StoreError {
        let path = path.to_path_buf();
        let detail = e.to_string();
        match e.kind() {
            io::ErrorKind::PermissionDenied
            | io::ErrorKind::ReadOnlyFilesystem
            | io::ErrorKind::NotADirectory
            // create_dir_all on a path that exists but is not a directory.
            | io::ErrorKind::AlreadyExists => StoreError::Permission { path, detail },
            _ => StoreError::Io { path, detail },
        }
    }

    fn other(path: &Path, detail: impl Into<String>) -> StoreError {
        StoreError::Other {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}

/// What [`GraphStore::load`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Every contact that decoded, in node-id order.
    pub contacts: Vec<Contact>,
    /// Contact records that could not be decoded (bad key length, unknown format byte, bad
    /// postcard, or an id that differs from the key). They were logged with their key and left
    /// in place untouched (they may come from a newer agent); the rest loaded normally.
    pub skipped_corrupt: usize,
    /// Index entries deleted or written because they disagreed with the contacts (an index entry
    /// without a contact, a contact without its entry, or an entry with the wrong bucket or time).
    pub repaired_index_entries: usize,
}

/// The persisted node graph: contacts plus a by-last-seen index per bucket.
///
/// Methods take `&self`; writes are serialized internally, so the store can be shared between
/// threads (e.g. in an `Arc`). Calls block on disk I/O: from async code, call them from
/// `spawn_blocking` or a dedicated thread.
pub struct GraphStore {
    db: DB,
    path: PathBuf,
    me: NodeId,
    write_opts: WriteOptions,
    /// Serializes read-modify-write sequences ([`GraphStore::apply`] reads the old record to find
    /// its index entry; [`GraphStore::load`] compares both column families). It guards no data,
    /// so a poisoned lock is simply taken over.
    write_lock: Mutex<()>,
}

impl std::fmt::Debug for GraphStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphStore")
            .field("path", &self.path)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl GraphStore {
    /// Opens (creating if missing) the store in `dir` for node `me`, with default
    /// [`StoreOptions`] (no fsync per write).
    pub fn open(dir: &Path, me: NodeId) -> Result<GraphStore, StoreError> {
        GraphStore::open_with(dir, me, StoreOptions::default())
    }

    /// Opens (creating if missing) the store in `dir` for node `me`.
    ///
    /// If the store was last used by a different node id, the by-last-seen index is rebuilt for
    /// `me` (buckets are relative to our id) in one atomic batch, and that is logged.
    pub fn open_with(dir: &Path, me: NodeId, opts: StoreOptions) -> Result<GraphStore, StoreError> {
        // RocksDB creates only the last path component; create parents too.
        std::fs::create_dir_all(dir).map_err(|e| StoreError::from_io(dir, &e))?;
        let rerr = |e: rocksdb::Error| StoreError::from_rocksdb(dir, &e);

        let db_opts = db_options();
        // Open every column family the store has, ours plus any a newer agent may have added:
        // RocksDB refuses to open a store without naming all of them.
        let mut names: Vec<String> = vec![CF_CONTACTS.into(), CF_BY_LAST_SEEN.into()];
        if dir.join("CURRENT").exists() {
            for name in DB::list_cf(&db_opts, dir).map_err(rerr)? {
                if name != "default" && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let cache = Cache::new_lru_cache(BLOCK_CACHE_SIZE);
        let cfs = names
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(n, cf_options(&cache)));
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs).map_err(rerr)?;

        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(opts.sync);
        // The WAL is what makes writes survive kill -9; never turn it off.
        write_opts.disable_wal(false);

        let store = GraphStore {
            db,
            path: dir.to_path_buf(),
            me,
            write_opts,
            write_lock: Mutex::new(()),
        };
        store.check_meta()?;
        Ok(store)
    }

    /// Our node id, which the buckets of the index are relative to.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `changes` as one atomic batch: after a crash either all of them are in the store or
    /// none. An upsert replaces the contact and moves its index entry; a remove deletes both.
    /// Several changes to the same node in one call are applied in order.
    ///
    /// An upsert of our own id is ignored (with a warning): we are not a contact of ourselves and
    /// have no bucket.
    pub fn apply(&self, changes: &[GraphChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let contacts = self.cf(CF_CONTACTS)?;
        let index = self.cf(CF_BY_LAST_SEEN)?;
        let mut batch = WriteBatch::default();
        // The index entries each touched node has once the batch so far is applied. Needed
        // because the database does not see the batch's earlier changes.
        let mut current: HashMap<NodeId, Vec<[u8; INDEX_KEY_LEN]>> = HashMap::new();
        for change in changes {
            let id = match change {
                GraphChange::Upsert(c) => c.id,
                GraphChange::Remove(id) => *id,
            };
            let Some(bucket) = self.bucket(&id) else {
                warn!(store = %self.path.display(), "ignoring a graph change for our own id");
                continue;
            };
            let old = match current.remove(&id) {
                Some(keys) => keys,
                None => self.stored_index_keys(&id, bucket)?,
            };
            for key in &old {
                batch.delete_cf(index, key);
            }
            match change {
                GraphChange::Upsert(c) => {
                    let key = index_key(bucket, c.last_seen, &id);
                    batch.put_cf(contacts, id.0, self.encode(c)?);
                    batch.put_cf(index, key, []);
                    current.insert(id, vec![key]);
                }
                GraphChange::Remove(_) => {
                    batch.delete_cf(contacts, id.0);
                    current.insert(id, Vec::new());
                }
            }
        }
        self.write(batch)
    }

    /// Reads every contact and checks the index against them, repairing it in one atomic batch:
    /// index entries without a contact (or with a stale bucket or time) are deleted, missing ones
    /// written. A record that cannot be decoded is logged with its key, counted in
    /// [`LoadReport::skipped_corrupt`] and left alone; it does not stop the others from loading.
    pub fn load(&self) -> Result<LoadReport, StoreError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.reconcile(false)
    }

    /// Keeps a doubly signed claim, replacing the one with the same other node. A claim
    /// that does not involve us is ignored.
    pub fn put_claim(&self, claim: &Claim) -> Result<(), StoreError> {
        let Some(other) = claim.other(&self.me) else {
            return Ok(());
        };
        self.put_record(CLAIM_PREFIX, &other.0, claim)
    }

    /// Every stored claim that decodes (the core checks their signatures on restore).
    pub fn load_claims(&self) -> Result<Vec<Claim>, StoreError> {
        self.load_records(CLAIM_PREFIX, "claim")
    }

    /// Keeps a key-value tuple, replacing the one stored for its key.
    pub fn put_tuple(&self, tuple: &Tuple) -> Result<(), StoreError> {
        self.put_record(TUPLE_PREFIX, tuple.key.as_bytes(), tuple)
    }

    /// Every stored tuple that decodes (the core checks their signatures on restore).
    pub fn load_tuples(&self) -> Result<Vec<Tuple>, StoreError> {
        self.load_records(TUPLE_PREFIX, "tuple")
    }

    /// Writes `prefix ‖ id` → format byte ‖ postcard(record) in the default column family.
    fn put_record<T: serde::Serialize>(
        &self,
        prefix: &[u8],
        id: &[u8],
        record: &T,
    ) -> Result<(), StoreError> {
        let mut key = prefix.to_vec();
        key.extend_from_slice(id);
        let mut value = vec![STORE_FORMAT];
        value.extend(
            postcard::to_allocvec(record)
                .map_err(|e| StoreError::other(&self.path, e.to_string()))?,
        );
        let mut batch = WriteBatch::default();
        batch.put(key, value);
        self.write(batch)
    }

    /// Every record under `prefix` that decodes; the others are logged and skipped.
    fn load_records<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        what: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator(prefix) {
            let (key, value) = item.map_err(|e| self.rerr(&e))?;
            if !key.starts_with(prefix) {
                break;
            }
            match value.split_first() {
                Some((&STORE_FORMAT, body)) => match postcard::from_bytes::<T>(body) {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        warn!(store = %self.path.display(), error = %e, "skipping a corrupt {what}")
                    }
                },
                _ => warn!(store = %self.path.display(), "skipping a {what} of an unknown format"),
            }
        }
        Ok(out)
    }

    /// Up to `n` contacts of `bucket` (relative to [`GraphStore::me`]), oldest `last_seen`
    /// first, read from the index with one prefix scan.
    pub fn oldest_in_bucket(
        &self,
        bucket: u8,
        n: usize,
    ) -> Result<Vec<(NodeId, Time)>, StoreError> {
        let mut out = Vec::new();
        if n == 0 {
            return Ok(out);
        }
        let index = self.cf(CF_BY_LAST_SEEN)?;
        let mut ro = ReadOptions::default();
        // Stop at the end of the bucket's prefix instead of reading the next buckets.
        if let Some(next) = bucket.checked_add(1) {
            ro.set_iterate_upper_bound([next]);
        }
        let prefix = [bucket];
        let iter =
            self.db
                .iterator_cf_opt(index, ro, IteratorMode::From(&prefix, Direction::Forward));
        for item in iter {
            let (key, _) = item.map_err(|e| self.rerr(&e))?;
            if key.first() != Some(&bucket) {
                break;
            }
            match parse_index_key(&key) {
                Some((_, t, id)) => out.push((id, t)),
                // A malformed key is not ours to interpret; load() deletes it.
                None => warn!(store = %self.path.display(), key = %hex_key(&key),
                    "skipping a malformed by_last_seen key"),
            }
            if out.len() >= n {
                break;
            }
        }
        Ok(out)
    }

    /// Number of contact records, including ones that cannot be decoded. Exact: it counts the
    /// keys (no values are decoded), which is cheap for a routing table of a few thousand
    /// contacts.
    pub fn len(&self) -> Result<usize, StoreError> {
        let contacts = self.cf(CF_CONTACTS)?;
        let mut n = 0;
        let mut it = self.db.raw_iterator_cf(contacts);
        it.seek_to_first();
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status().map_err(|e| self.rerr(&e))?;
        Ok(n)
    }

    /// True when the store holds no contact record.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        let contacts = self.cf(CF_CONTACTS)?;
        let mut it = self.db.raw_iterator_cf(contacts);
        it.seek_to_first();
        it.status().map_err(|e| self.rerr(&e))?;
        Ok(!it.valid())
    }

    // ---- internals ----

    /// Checks the store format and the recorded node id; rebuilds the index if the id changed.
    fn check_meta(&self) -> Result<(), StoreError> {
        let format = self.db.get(META_FORMAT).map_err(|e| self.rerr(&e))?;
        if let Some(f) = format.as_deref()
            && f != [STORE_FORMAT]
        {
            return Err(StoreError::other(
                &self.path,
                format!(
                    "store format {} is not the supported format {STORE_FORMAT} (written by a \
                     newer chaosnet-agent?); move the directory aside to start afresh",
                    hex_key(f)
                ),
            ));
        }
        let stored_me = self.db.get(META_ME).map_err(|e| self.rerr(&e))?;
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        match stored_me.as_deref() {
            Some(b) if b == self.me.0 => {
                if format.is_none() {
                    self.write_meta()?;
                }
            }
            Some(b) => {
                let old = <[u8; ID_LEN]>::try_from(b)
                    .map(|a| NodeId(a).to_hex())
                    .unwrap_or_else(|_| format!("(malformed: {})", hex_key(b)));
                info!(store = %self.path.display(), old_id = %old, new_id = %self.me,
                    "node id changed; rebuilding the by_last_seen index for the new id");
                let report = self.reconcile(true)?;
                info!(store = %self.path.display(), contacts = report.contacts.len(),
                    index_entries_rewritten = report.repaired_index_entries,
                    "by_last_seen index rebuilt");
            }
            None => {
                // A new store, or one whose meta key was lost: an index built for an unknown
                // id cannot be trusted, so rebuild it (a no-op on an empty store).
                if !self.is_empty()? {
                    info!(store = %self.path.display(), new_id = %self.me,
                        "store has no recorded node id; rebuilding the by_last_seen index");
                }
                self.reconcile(true)?;
            }
        }
        Ok(())
    }

    fn write_meta(&self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put(META_ME, self.me.0);
        batch.put(META_FORMAT, [STORE_FORMAT]);
        self.write(batch)
    }

    /// Reads all contacts, compares the index with what they imply and fixes the difference in one
    /// batch (which also records `me` when `write_meta`). Caller holds `write_lock`.
    fn reconcile(&self, write_meta: bool) -> Result<LoadReport, StoreError> {
        let contacts_cf = self.cf(CF_CONTACTS)?;
        let index_cf = self.cf(CF_BY_LAST_SEEN)?;
        let mut batch = WriteBatch::default();
        let mut report = LoadReport::default();
        // Index entry each decodable contact needs.
        let mut expected: HashMap<NodeId, [u8; INDEX_KEY_LEN]> = HashMap::new();
        // Contacts that exist but cannot be decoded: their index entries are left alone, since
        // we cannot tell whether they are right.
        let mut undecodable: HashSet<NodeId> = HashSet::new();

        for item in self.db.iterator_cf(contacts_cf, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| self.rerr(&e))?;
            match decode_contact(&key, &value) {
                Ok(c) => match self.bucket(&c.id) {
                    Some(b) => {
                        expected.insert(c.id, index_key(b, c.last_seen, &c.id));
                        report.contacts.push(c);
                    }
                    None => {
                        // Only possible if our new id equals a stored contact's id.
                        warn!(store = %self.path.display(), key = %hex_key(&key),
                            "deleting a stored contact that has our own id");
                        batch.delete_cf(contacts_cf, &key);
                    }
                },
                Err(why) => {
                    warn!(store = %self.path.display(), key = %hex_key(&key), %why,
                        "skipping a contact record that cannot be decoded");
                    report.skipped_corrupt += 1;
                    if let Ok(id) = <[u8; ID_LEN]>::try_from(&key[..]) {
                        undecodable.insert(NodeId(id));
                    }
                }
            }
        }

        let mut present: HashSet<NodeId> = HashSet::new();
        for item in self.db.iterator_cf(index_cf, IteratorMode::Start) {
            let (key, _) = item.map_err(|e| self.rerr(&e))?;
            let keep = match parse_index_key(&key) {
                None => false,
                Some((_, _, id)) if undecodable.contains(&id) => true,
                Some((_, _, id)) => {
                    let ok = expected.get(&id).is_some_and(|k| k[..] == key[..]);
                    if ok {
                        present.insert(id);
                    }
                    ok
                }
            };
            if !keep {
                batch.delete_cf(index_cf, &key);
                report.repaired_index_entries += 1;
            }
        }
        for (id, key) in &expected {
            if !present.contains(id) {
                batch.put_cf(index_cf, key, []);
                report.repaired_index_entries += 1;
            }
        }
        if report.repaired_index_entries > 0 && !write_meta {
            info!(store = %self.path.display(), entries = report.repaired_index_entries,
                "repaired the by_last_seen index");
        }
        if write_meta {
            batch.put(META_ME, self.me.0);
            batch.put(META_FORMAT, [STORE_FORMAT]);
        }
        if !batch.is_empty() {
            self.write(batch)?;
        }
        Ok(report)
    }

    /// The index keys `id` has in the database, from its stored record. If the record cannot be
    /// decoded, the bucket's prefix is scanned for entries of `id` instead (a bucket holds about
    /// k entries, so this stays cheap).
    fn stored_index_keys(
        &self,
        id: &NodeId,
        bucket: u8,
    ) -> Result<Vec<[u8; INDEX_KEY_LEN]>, StoreError> {
        let contacts = self.cf(CF_CONTACTS)?;
        let Some(value) = self
            .db
            .get_pinned_cf(contacts, id.0)
            .map_err(|e| self.rerr(&e))?
        else {
            return Ok(Vec::new());
        };
        if let Ok(old) = decode_contact(&id.0, &value) {
            return Ok(vec![index_key(bucket, old.last_seen, id)]);
        }
        let index = self.cf(CF_BY_LAST_SEEN)?;
        let mut ro = ReadOptions::default();
        if let Some(next) = bucket.checked_add(1) {
            ro.set_iterate_upper_bound([next]);
        }
        let prefix = [bucket];
        let mut keys = Vec::new();
        for item in
            self.db
                .iterator_cf_opt(index, ro, IteratorMode::From(&prefix, Direction::Forward))
        {
            let (key, _) = item.map_err(|e| self.rerr(&e))?;
            if key.first() != Some(&bucket) {
                break;
            }
            if let Ok(k) = <[u8; INDEX_KEY_LEN]>::try_from(&key[..])
                && k[9..] == id.0
            {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    fn encode(&self, c: &Contact) -> Result<Vec<u8>, StoreError> {
        postcard::to_extend(c, vec![VALUE_FORMAT]).map_err(|e| {
            StoreError::other(&self.path, format!("cannot encode contact {}: {e}", c.id))
        })
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.db
            .write_opt(batch, &self.write_opts)
            .map_err(|e| self.rerr(&e))
    }

    fn bucket(&self, id: &NodeId) -> Option<u8> {
        // bucket_of returns 0..=255 by construction; try_from only guards against a change there.
        self.me.bucket_of(id).and_then(|b| u8::try_from(b).ok())
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StoreError> {
        // Both column families are created by open(); a missing one means a broken library.
        self.db.cf_handle(name).ok_or_else(|| {
            StoreError::other(&self.path, format!("column family {name} is missing"))
        })
    }

    fn rerr(&self, e: &rocksdb::Error) -> StoreError {
        StoreError::from_rocksdb(&self.path, e)
    }
}

/// Database-wide options; each departure from RocksDB's defaults says why.
fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_max_open_files(MAX_OPEN_FILES);
    o.set_db_write_buffer_size(DB_WRITE_BUFFER_SIZE);
    o.set_max_total_wal_size(MAX_TOTAL_WAL_SIZE);
    o.set_keep_log_file_num(KEEP_LOG_FILE_NUM);
    o.set_max_log_file_size(MAX_LOG_FILE_SIZE);
    // No periodic statistics dump into the LOG, and no in-memory stats history.
    o.set_stats_dump_period_sec(0);
    o.set_stats_persist_period_sec(0);
    // Don't read every SST's properties at open just to refresh size statistics.
    o.set_skip_stats_update_on_db_open(true);
    // Two background threads (one flush, one compaction) is RocksDB's default; stated here
    // because each thread is memory too.
    o.set_max_background_jobs(2);
    // Replay the WAL up to the first damaged record and stop: a torn tail from kill -9 or a
    // machine crash recovers to the last complete batch instead of failing to open.
    o.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    // The WAL must reach the kernel at each write for kill -9 safety (RocksDB's default).
    o.set_manual_wal_flush(false);
    o
}

/// Per-column-family options: small memtables, a shared small block cache, no compression.
fn cf_options(cache: &Cache) -> Options {
    let mut o = Options::default();
    o.set_write_buffer_size(WRITE_BUFFER_SIZE);
    o.set_max_write_buffer_number(MAX_WRITE_BUFFER_NUMBER);
    // The data is tiny; compression would save nothing and adds codec buffers.
    o.set_compression_type(DBCompressionType::None);
    let mut t = BlockBasedOptions::default();
    t.set_block_cache(cache);
    t.set_cache_index_and_filter_blocks(true);
    o.set_block_based_table_factory(&t);
    o
}

/// The index key of a contact of node `id` in `bucket`, last seen at `t`.
fn index_key(bucket: u8, t: Time, id: &NodeId) -> [u8; INDEX_KEY_LEN] {
    let mut k = [0u8; INDEX_KEY_LEN];
    k[0] = bucket;
    k[1..9].copy_from_slice(&t.0.to_be_bytes());
    k[9..].copy_from_slice(&id.0);
    k
}

/// Splits an index key; `None` if it has the wrong length.
fn parse_index_key(key: &[u8]) -> Option<(u8, Time, NodeId)> {
    let k = <&[u8; INDEX_KEY_LEN]>::try_from(key).ok()?;
    let t = u64::from_be_bytes(<[u8; 8]>::try_from(&k[1..9]).ok()?);
    let id = <[u8; ID_LEN]>::try_from(&k[9..]).ok()?;
    Some((k[0], Time(t), NodeId(id)))
}

/// Decodes a contact record, checking it against its key.
fn decode_contact(key: &[u8], value: &[u8]) -> Result<Contact, String> {
    if key.len() != ID_LEN {
        return Err(format!("key is {} bytes, not {ID_LEN}", key.len()));
    }
    let Some((&format, body)) = value.split_first() else {
        return Err("empty value".into());
    };
    if format != VALUE_FORMAT {
        return Err(format!("unknown value format {format}"));
    }
    let (c, rest) =
        postcard::take_from_bytes::<Contact>(body).map_err(|e| format!("postcard: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    if c.id.0[..] != key[..] {
        return Err(format!("record is for {}, not for its key", c.id));
    }
    Ok(c)
}

/// Hex of a key for logs, truncated so a huge garbage key cannot flood them.
fn hex_key(key: &[u8]) -> String {
    const MAX: usize = 64;
    if key.len() <= MAX {
        hex::encode(key)
    } else {
        format!("{}…({} bytes)", hex::encode(&key[..MAX]), key.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader};
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};

    use chaosnet_proto::{ConnMode, NatType};

    use super::*;

    const ME: NodeId = NodeId([0; 32]);

    /// A node id in bucket `255 - (n % 8)` relative to [`ME`], unique per `n`.
    fn id(n: u32) -> NodeId {
        let mut b = [0u8; 32];
        b[0] = 0x80 >> (n % 8);
        b[28..].copy_from_slice(&n.to_be_bytes());
        NodeId(b)
    }

    fn contact(id: NodeId, last_seen: u64) -> Contact {
        let mut c = Contact::new(id, Some(SocketAddr::from(([10, 0, 0, 1], 4433))), Time(1));
        c.last_seen = Time(last_seen);
        c.note_addr("[2001:db8::1]:9000".parse().unwrap());
        c.mode = ConnMode::Punched;
        c.nat = NatType::PortRestrictedCone;
        c.srtt_us = Some(12_345);
        c.successes = 7;
        c.failures = 2;
        c
    }

    impl GraphStore {
        /// Every index entry, parsed, in key order (tests check consistency with it).
        fn raw_index(&self) -> Vec<(u8, Time, NodeId)> {
            let index = self.cf(CF_BY_LAST_SEEN).unwrap();
            self.db
                .iterator_cf(index, IteratorMode::Start)
                .map(|item| parse_index_key(&item.unwrap().0).expect("well-formed index key"))
                .collect()
        }
    }

    fn sorted(mut v: Vec<Contact>) -> Vec<Contact> {
        v.sort_by_key(|c| c.id);
        v
    }

    /// Asserts one index entry per decodable contact, with its bucket and last_seen, and nothing
    /// else.
    fn assert_index_consistent(store: &GraphStore, contacts: &[Contact]) {
        let mut want: Vec<(u8, Time, NodeId)> = contacts
            .iter()
            .map(|c| (store.bucket(&c.id).unwrap(), c.last_seen, c.id))
            .collect();
        want.sort();
        assert_eq!(store.raw_index(), want);
    }

    #[test]
    fn upsert_update_remove_and_oldest_in_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let store = GraphStore::open(dir.path(), ME).unwrap();
        assert!(store.is_empty().unwrap());
        // Bucket 255: ids 0, 8, 16, 24; bucket 254: ids 1, 9.
        let cs = vec![
            contact(id(0), 500),
            contact(id(8), 100),
            contact(id(16), 300),
            contact(id(24), 200),
            contact(id(1), 50),
            contact(id(9), 40),
        ];
        store
            .apply(
                &cs.iter()
                    .cloned()
                    .map(GraphChange::Upsert)
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let report = store.load().unwrap();
        assert_eq!(report.contacts, sorted(cs.clone()));
        assert_eq!(report.skipped_corrupt, 0);
        assert_eq!(report.repaired_index_entries, 0);
        assert_eq!(store.len().unwrap(), 6);
        assert_index_consistent(&store, &report.contacts);

        assert_eq!(
            store.oldest_in_bucket(255, 3).unwrap(),
            vec![(id(8), Time(100)), (id(24), Time(200)), (id(16), Time(300))]
        );
        assert_eq!(
            store.oldest_in_bucket(254, 10).unwrap(),
            vec![(id(9), Time(40)), (id(1), Time(50))]
        );
        assert!(store.oldest_in_bucket(0, 10).unwrap().is_empty());
        assert!(store.oldest_in_bucket(255, 0).unwrap().is_empty());

        // Seeing id(8) again moves its index entry; the old one is gone.
        let mut seen = contact(id(8), 900);
        seen.successes = 8;
        store.apply(&[GraphChange::Upsert(seen.clone())]).unwrap();
        assert_eq!(
            store.oldest_in_bucket(255, 10).unwrap(),
            vec![
                (id(24), Time(200)),
                (id(16), Time(300)),
                (id(0), Time(500)),
                (id(8), Time(900))
            ]
        );
        // Removing deletes both the record and its entry.
        store
            .apply(&[GraphChange::Remove(id(16)), GraphChange::Remove(id(77))])
            .unwrap();
        let report = store.load().unwrap();
        assert_eq!(report.repaired_index_entries, 0);
        assert_eq!(report.contacts.len(), 5);
        assert!(report.contacts.contains(&seen));
        assert!(!report.contacts.iter().any(|c| c.id == id(16)));
        assert_index_consistent(&store, &report.contacts);

        // Several changes to one node in one batch apply in order, leaving one index entry.
        store
            .apply(&[
                GraphChange::Upsert(contact(id(24), 1000)),
                GraphChange::Upsert(contact(id(24), 1100)),
                GraphChange::Remove(id(0)),
                GraphChange::Upsert(contact(id(0), 1200)),
                GraphChange::Upsert(contact(id(1), 60)),
                GraphChange::Remove(id(1)),
            ])
            .unwrap();
        let report = store.load().unwrap();
        assert_eq!(report.repaired_index_entries, 0);
        assert_index_consistent(&store, &report.contacts);
        assert_eq!(
            store.oldest_in_bucket(255, 10).unwrap(),
            vec![
                (id(8), Time(900)),
                (id(24), Time(1100)),
                (id(0), Time(1200))
            ]
        );
        assert!(!report.contacts.iter().any(|c| c.id == id(1)));

        // Our own id has no bucket: ignored, not a panic.
        store.apply(&[GraphChange::Upsert(contact(ME, 1))]).unwrap();
        assert_eq!(store.len().unwrap(), 4);
    }

    #[test]
    fn contacts_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cs: Vec<Contact> = (0..40)
            .map(|n| contact(id(n), 1000 + u64::from(n) * 7 % 13))
            .collect();
        {
            let store = GraphStore::open(dir.path(), ME).unwrap();
            store
                .apply(
                    &cs.iter()
                        .cloned()
                        .map(GraphChange::Upsert)
                        .collect::<Vec<_>>(),
                )
                .unwrap();
        }
        let store = GraphStore::open_with(dir.path(), ME, StoreOptions { sync: true }).unwrap();
        let report = store.load().unwrap();
        assert_eq!(report.contacts, sorted(cs.clone()));
        assert_eq!(report.skipped_corrupt, 0);
        assert_eq!(report.repaired_index_entries, 0);
        // Same again through a synced write.
        let mut cs = cs;
        cs[5].last_seen = Time(5_000);
        store.apply(&[GraphChange::Upsert(cs[5].clone())]).unwrap();
        drop(store);
        let store = GraphStore::open(dir.path(), ME).unwrap();
        let report = store.load().unwrap();
        assert_eq!(report.contacts, sorted(cs));
        assert_eq!(report.skipped_corrupt, 0);
        assert_eq!(report.repaired_index_entries, 0);
        assert_index_consistent(&store, &report.contacts);
    }

    #[test]
    fn second_open_of_the_same_dir_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = GraphStore::open(dir.path(), ME).unwrap();
        let err = GraphStore::open(dir.path(), ME).unwrap_err();
        eprintln!("{err}");
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("is another chaosnet-agent running with this --data-dir?"),
            "{msg}"
        );
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }

    #[test]
    fn unusable_directory_is_a_permission_error() {
        // Tests run as root, which ignores permission bits, so "cannot create the directory" is
        // produced with a parent that is a regular file (ENOTDIR) rather than with chmod 000.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let path = file.join("graph");
        let err = GraphStore::open(&path, ME).unwrap_err();
        eprintln!("{err}");
        assert!(matches!(err, StoreError::Permission { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        // The directory itself being a regular file.
        let err = GraphStore::open(&file, ME).unwrap_err();
        assert!(matches!(err, StoreError::Permission { .. }), "{err:?}");
    }

    #[test]
    fn corrupt_current_file_is_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = GraphStore::open(dir.path(), ME).unwrap();
            store
                .apply(&[GraphChange::Upsert(contact(id(3), 3))])
                .unwrap();
        }
        // Garbage, and a well-formed name of a MANIFEST that does not exist.
        for garbage in [&b"\x00\xffgarbage"[..], b"MANIFEST-999999\n"] {
            std::fs::write(dir.path().join("CURRENT"), garbage).unwrap();
            let err = GraphStore::open(dir.path(), ME).unwrap_err();
            eprintln!("{err}");
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
            assert!(msg.contains("move the directory aside"), "{msg}");
        }
    }

    #[test]
    fn corrupt_manifest_is_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = GraphStore::open(dir.path(), ME).unwrap();
            store
                .apply(&[GraphChange::Upsert(contact(id(3), 3))])
                .unwrap();
        }
        let current = std::fs::read_to_string(dir.path().join("CURRENT")).unwrap();
        let manifest = dir.path().join(current.trim());
        let len = std::fs::metadata(&manifest).unwrap().len();
        let garbage: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
        std::fs::write(&manifest, garbage).unwrap();
        let err = GraphStore::open(dir.path(), ME).unwrap_err();
        eprintln!("{err}");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn undecodable_records_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = GraphStore::open(dir.path(), ME).unwrap();
        let cs: Vec<Contact> = (0..10).map(|n| contact(id(n), u64::from(n))).collect();
        store
            .apply(
                &cs.iter()
                    .cloned()
                    .map(GraphChange::Upsert)
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let contacts = store.cf(CF_CONTACTS).unwrap();
        // Garbage body, unknown format byte, wrong key length, record under another id's key.
        store
            .db
            .put_cf(
                contacts,
                id(100).0,
                b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            )
            .unwrap();
        store
            .db
            .put_cf(contacts, id(101).0, b"\x09whatever")
            .unwrap();
        store.db.put_cf(contacts, b"short", b"").unwrap();
        store
            .db
            .put_cf(contacts, id(102).0, store.encode(&cs[0]).unwrap())
            .unwrap();
        let report = store.load().unwrap();
        assert_eq!(report.skipped_corrupt, 4);
        assert_eq!(report.contacts, sorted(cs.clone()));
        assert_index_consistent(&store, &report.contacts);
        // An upsert over an undecodable record works and leaves one index entry.
        store
            .apply(&[GraphChange::Upsert(contact(id(100), 5))])
            .unwrap();
        let report = store.load().unwrap();
        assert_eq!(report.skipped_corrupt, 3);
        assert_eq!(report.contacts.len(), 11);
        assert_index_consistent(&store, &report.contacts);
    }

    #[test]
    fn load_repairs_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = GraphStore::open(dir.path(), ME).unwrap();
        let cs: Vec<Contact> = (0..6).map(|n| contact(id(n), 10 + u64::from(n))).collect();
        store
            .apply(
                &cs.iter()
                    .cloned()
                    .map(GraphChange::Upsert)
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let index = store.cf(CF_BY_LAST_SEEN).unwrap();
        // An entry without a contact, a contact without its entry, a stale time, garbage.
        store
            .db
            .put_cf(index, index_key(255, Time(1), &id(200)), [])
            .unwrap();
        store
            .db
            .delete_cf(index, index_key(255, Time(10), &id(0)))
            .unwrap();
        store
            .db
            .put_cf(index, index_key(254, Time(2), &id(1)), [])
            .unwrap();
        store.db.put_cf(index, [254u8, 1, 2], []).unwrap();
        let report = store.load().unwrap();
        assert_eq!(report.repaired_index_entries, 4);
        assert_index_consistent(&store, &report.contacts);
        assert_eq!(store.load().unwrap().repaired_index_entries, 0);
    }

    #[test]
    fn new_node_id_rebuilds_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let cs: Vec<Contact> = (0..16)
            .map(|n| contact(id(n), 100 - u64::from(n)))
            .collect();
        {
            let store = GraphStore::open(dir.path(), ME).unwrap();
            store
                .apply(
                    &cs.iter()
                        .cloned()
                        .map(GraphChange::Upsert)
                        .collect::<Vec<_>>(),
                )
                .unwrap();
            assert_eq!(store.oldest_in_bucket(255, 100).unwrap().len(), 2);
        }
        // Relative to a new id whose first byte is 0x80, ids starting 0x80 are near (buckets
        // below 248) and all others are in bucket 255.
        let mut new_me = [0u8; 32];
        new_me[0] = 0x80;
        new_me[31] = 0xff;
        let new_me = NodeId(new_me);
        let store = GraphStore::open(dir.path(), new_me).unwrap();
        assert_eq!(store.me(), new_me);
        let report = store.load().unwrap();
        assert_eq!(
            report.repaired_index_entries, 0,
            "open already rebuilt the index"
        );
        assert_eq!(report.contacts, sorted(cs.clone()));
        assert_index_consistent(&store, &report.contacts);

        let mut far: Vec<(NodeId, Time)> = cs
            .iter()
            .filter(|c| new_me.bucket_of(&c.id) == Some(255))
            .map(|c| (c.id, c.last_seen))
            .collect();
        far.sort_by_key(|&(_, t)| t);
        assert_eq!(far.len(), 14);
        assert_eq!(store.oldest_in_bucket(255, 100).unwrap(), far);
        let near: Vec<&Contact> = cs.iter().filter(|c| c.id.0[0] == 0x80).collect();
        assert_eq!(near.len(), 2);
        for c in near {
            let b = u8::try_from(new_me.bucket_of(&c.id).unwrap()).unwrap();
            assert!(b < 248);
            let mut want: Vec<(NodeId, Time)> = cs
                .iter()
                .filter(|o| new_me.bucket_of(&o.id) == Some(usize::from(b)))
                .map(|o| (o.id, o.last_seen))
                .collect();
            want.sort_by_key(|&(_, t)| t);
            assert_eq!(store.oldest_in_bucket(b, 100).unwrap(), want);
        }
        drop(store);
        // Reopening with the same new id keeps the index as it is.
        let store = GraphStore::open(dir.path(), new_me).unwrap();
        assert_eq!(store.load().unwrap().repaired_index_entries, 0);
    }

    // ---- kill -9 mid-write ----

    /// Env var naming the directory the writer child writes to.
    const WRITER_DIR_ENV: &str = "CHAOSNET_STORE_WRITER_DIR";
    /// Printed by the child after each committed batch, followed by the batch number.
    const COMMITTED: &str = "CHAOSNET-COMMITTED ";
    /// Id of the contact whose `successes` holds the number of the last applied batch.
    const MARKER: NodeId = NodeId([0xff; 32]);

    /// The changes of batch `i` (1-based): upserts of three nodes out of 64 (one of them twice),
    /// a remove, a remove-then-upsert of the same node, and the marker.
    fn batch(i: u64) -> Vec<GraphChange> {
        let n = |x: u64| id((x % 64) as u32);
        let c = |x: u64, t: u64| {
            let mut c = contact(n(x), t);
            c.successes = (i % 1000) as u32;
            c
        };
        let mut marker = contact(MARKER, i);
        marker.successes = u32::try_from(i).unwrap();
        vec![
            GraphChange::Upsert(c(i * 7, i * 10)),
            GraphChange::Upsert(c(i * 7 + 13, i * 10 + 1)),
            GraphChange::Upsert(c(i * 7, i * 10 + 2)),
            GraphChange::Remove(n(i * 5 + 3)),
            GraphChange::Remove(n(i * 11 + 1)),
            GraphChange::Upsert(c(i * 11 + 1, i * 10 + 3)),
            GraphChange::Upsert(c(i * 3 + 29, i * 10 + 4)),
            GraphChange::Upsert(marker),
        ]
    }

    /// The store's contents after batches 1..=j.
    fn state_after(j: u64) -> Vec<Contact> {
        let mut m = BTreeMap::new();
        for i in 1..=j {
            for ch in batch(i) {
                match ch {
                    GraphChange::Upsert(c) => {
                        m.insert(c.id, c);
                    }
                    GraphChange::Remove(id) => {
                        m.remove(&id);
                    }
                }
            }
        }
        m.into_values().collect()
    }

    /// Not a test on its own: the child process of `kill_9_mid_write_loses_nothing_committed`.
    /// Applies batches forever, printing a line after each commit; returns at once when the env
    /// var is missing (e.g. under `cargo test -- --ignored`).
    #[test]
    #[ignore = "child process of kill_9_mid_write_loses_nothing_committed"]
    fn writer_child() {
        let Some(dir) = std::env::var_os(WRITER_DIR_ENV) else {
            return;
        };
        let store = GraphStore::open(Path::new(&dir), ME).unwrap();
        let report = store.load().unwrap();
        let mut i = report
            .contacts
            .iter()
            .find(|c| c.id == MARKER)
            .map_or(0, |c| u64::from(c.successes));
        loop {
            i += 1;
            store.apply(&batch(i)).unwrap();
            // A write error (the parent closed the pipe) panics and ends the child.
            println!("{COMMITTED}{i}");
        }
    }

    /// Kills the child if the test fails before it does.
    struct KillOnDrop(Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn kill_9_mid_write_loses_nothing_committed() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut confirmed = 0u64;
        for round in 0..3 {
            let child = Command::new(&exe)
                .args([
                    "store::tests::writer_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                ])
                .env(WRITER_DIR_ENV, dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let mut child = KillOnDrop(child);
            let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
            let mut seen = 0;
            while seen < 200 {
                let line = lines
                    .next()
                    .unwrap_or_else(|| panic!("round {round}: child exited after {seen} batches"))
                    .unwrap();
                // libtest may print "test … ... " in front of the first line.
                if let Some(pos) = line.find(COMMITTED) {
                    let i: u64 = line[pos + COMMITTED.len()..].trim().parse().unwrap();
                    assert!(i > confirmed, "round {round}: batch {i} after {confirmed}");
                    confirmed = i;
                    seen += 1;
                }
            }
            // While the child runs, another process cannot open the store.
            let err = GraphStore::open(dir.path(), ME).unwrap_err();
            if round == 0 {
                eprintln!("{err}");
            }
            assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");

            child.0.kill().unwrap(); // SIGKILL on Unix
            let status = child.0.wait().unwrap();
            assert!(!status.success());
            drop(lines);

            let store = GraphStore::open(dir.path(), ME).unwrap();
            let report = store.load().unwrap();
            assert_eq!(report.skipped_corrupt, 0, "round {round}");
            let applied = report
                .contacts
                .iter()
                .find(|c| c.id == MARKER)
                .map(|c| u64::from(c.successes))
                .unwrap();
            // Every confirmed batch is there; later ones may be too, but only whole.
            assert!(
                applied >= confirmed,
                "round {round}: {applied} < {confirmed}"
            );
            assert_eq!(report.contacts, state_after(applied), "round {round}");
            assert_eq!(
                report.repaired_index_entries, 0,
                "round {round}: index was inconsistent"
            );
            assert_index_consistent(&store, &report.contacts);
            assert_eq!(store.len().unwrap(), report.contacts.len());
            eprintln!(
                "round {round}: {confirmed} batches confirmed, {applied} on disk after kill -9"
            );
            confirmed = applied;
        }
    }
}
