//! The replicated state machine: keys with their revisions, the change
//! history that Watch replays, and remembered request outcomes.
//!
//! Everything lives in one sled tree; a key's first byte says what it is:
//! - `k` + key → the value and its revision counters
//! - `h` + last revision of an entry → the changes that entry made, in
//!   order (Watch history)
//! - `d` + request id → the outcome of that request (deduplication)
//! - `e` + proposed-at ms + log index → the request ids that entry
//!   remembered (when to forget them)
//! - `r` → the current revision, `a` → last applied log id, `m` → last
//!   membership, `c` → highest revision compacted out of the history,
//!   `w` → the last entry's write set (redo record), `v` → the data format
//!
//! A log entry carries a batch of commands. Each command that changes a key
//! takes the next revision. All of an entry's writes, its remembered
//! outcomes and its applied log id reach sled atomically (a redo record,
//! see `EntryWrites::write`), so the tree always reflects a whole prefix of
//! the log. History and request-id expiry are recorded once per entry, not
//! per command: two sled writes per entry instead of four per command.
//! Expiring them happens at the end of each entry, driven only by the entry
//! and the state before it: every replica forgets the same things.
//!
//! Installing a snapshot fills a fresh tree and then switches a pointer to
//! it, so a crash mid-install leaves the old state intact.

use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftLogId, RaftSnapshotBuilder, StorageIOError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::snapshot::{self, SnapshotDir};
use super::{Shared, StoreOptions};
use crate::error::Error;
use crate::types::{
    Command, Digest, Entry, KeyValue, LogId, Op, Outcome, Proposal, Snapshot, SnapshotMeta,
    StorageError, StoredMembership, TypeConfig,
};

const KEY: u8 = b'k';
const HISTORY: u8 = b'h';
const DEDUP: u8 = b'd';
const EXPIRY: u8 = b'e';
const APPLIED: &[u8] = b"a";
const MEMBERSHIP: &[u8] = b"m";
const COMPACTED: &[u8] = b"c";
const REVISION: &[u8] = b"r";
/// The last entry's write set, replayed at start-up (see `EntryWrites::write`).
const REDO: &[u8] = b"w";
/// The data format of the tree's records, [`DATA_FORMAT`].
const FORMAT: &[u8] = b"v";
/// Which layout of records this version reads and writes. Snapshot files
/// carry it too (see `snapshot`). 2: history and expiry records per entry.
pub const DATA_FORMAT: u8 = 2;
const POINTER_TREE: &str = "sm_current";
const POINTER_KEY: &[u8] = b"tree";
/// Most history or expiry records (each one entry's worth) one log entry
/// expires: each entry adds at most one of each, so this drains a backlog,
/// and it bounds the work of one entry.
const EXPIRE_PER_ENTRY: usize = 16;

#[derive(Debug, Serialize, Deserialize)]
struct StoredValue {
    value: Vec<u8>,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
}

/// One change, as Watch reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub revision: u64,
    /// For a delete: the key with an empty value.
    pub kv: KeyValue,
    pub deleted: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Remembered {
    outcome: Outcome,
}

/// What watchers receive live.
#[derive(Debug, Clone)]
pub enum FeedItem {
    Change(Arc<Change>),
    /// The state was replaced by a snapshot: history before this revision
    /// may be missing, so watchers must start over.
    Reset {
        revision: u64,
    },
}

/// The live change feed.
#[derive(Clone)]
pub struct WatchFeed {
    tx: broadcast::Sender<FeedItem>,
    capacity: usize,
}

impl WatchFeed {
    pub fn subscribe(&self) -> broadcast::Receiver<FeedItem> {
        self.tx.subscribe()
    }

    /// How many changes a watcher may fall behind before it is cancelled.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Read access for Get, Scan and Watch. Follows the state machine across
/// snapshot installs.
#[derive(Clone)]
pub struct KvReader {
    current: Arc<RwLock<sled::Tree>>,
}

/// A key range for Scan: `[start, end)` intersected with `prefix`.
#[derive(Debug, Clone, Default)]
pub struct ScanRange {
    pub prefix: Vec<u8>,
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

/// One page of a scan.
#[derive(Debug)]
pub struct ScanPage {
    pub kvs: Vec<KeyValue>,
    /// The first key of the next page, when there is one.
    pub next_key: Option<Vec<u8>>,
}

impl KvReader {
    fn tree(&self) -> sled::Tree {
        self.current.read().expect("state machine lock").clone()
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        let tree = self.tree();
        read_kv(&tree, key).map_err(storage)
    }

    /// The revision of the last applied change: the revision reads are at.
    pub fn revision(&self) -> Result<u64, Error> {
        read_revision(&self.tree()).map_err(storage)
    }

    /// One page of keys in `range`: at most `limit` keys, and no more once
    /// `max_bytes` of keys and values are collected.
    pub fn scan(
        &self,
        range: &ScanRange,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ScanPage, Error> {
        let mut lower = vec![KEY];
        lower.extend_from_slice(std::cmp::max(&range.start, &range.prefix));
        let prefix_end = prefix_successor(&[&[KEY][..], &range.prefix].concat());
        let upper = match &range.end {
            Some(end) => std::cmp::min([&[KEY][..], end].concat(), prefix_end),
            None => prefix_end,
        };
        let mut kvs = Vec::new();
        let mut next_key = None;
        let mut bytes_so_far = 0;
        if lower < upper {
            for item in self.tree().range(lower..upper) {
                let (raw_key, bytes) = item.map_err(|e| storage(&e))?;
                if kvs.len() == limit || bytes_so_far >= max_bytes {
                    next_key = Some(raw_key[1..].to_vec());
                    break;
                }
                bytes_so_far += raw_key.len() + bytes.len();
                kvs.push(decode_kv(&raw_key[1..], &bytes).map_err(storage)?);
            }
        }
        Ok(ScanPage { kvs, next_key })
    }

    /// Changes under `prefix` from revision `from` on, oldest first.
    pub fn history(&self, prefix: &[u8], from: u64) -> Result<Vec<Change>, Error> {
        let tree = self.tree();
        let compacted = || -> Result<(), Error> {
            let compacted: u64 = read_value(&tree, COMPACTED).map_err(storage)?.unwrap_or(0);
            if from <= compacted {
                return Err(Error::Compacted {
                    requested: from,
                    oldest: compacted + 1,
                });
            }
            Ok(())
        };
        compacted()?;
        let mut changes = Vec::new();
        // Records are keyed by their entry's last revision: the first one
        // at or after `from` holds `from`, if it exists.
        for item in tree.range(history_key(from).as_slice()..[HISTORY + 1].as_slice()) {
            let (_, bytes) = item.map_err(|e| storage(&e))?;
            let entry: Vec<Change> = postcard::from_bytes(&bytes).map_err(storage)?;
            changes.extend(
                entry
                    .into_iter()
                    .filter(|c| c.revision >= from && c.kv.key.starts_with(prefix)),
            );
        }
        // Compaction may have run meanwhile and removed records this scan
        // had not reached: what it found would start after a gap.
        compacted()?;
        Ok(changes)
    }
}

/// The state machine openraft drives.
pub struct StateMachine {
    shared: Arc<Shared>,
    current: Arc<RwLock<sled::Tree>>,
    pointer: sled::Tree,
    snapshots: SnapshotDir,
    history_revisions: u64,
    feed: WatchFeed,
    /// The temporary file a snapshot is being received into.
    receiving: Option<std::path::PathBuf>,
    digests: Digests,
}

/// Digests taken at checkpoints, by log index; the latest few are kept in
/// memory (they are only compared while a `verify` runs).
#[derive(Clone, Default)]
pub struct Digests(Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Digest>>>);

impl Digests {
    const KEEP: usize = 16;

    pub fn get(&self, index: u64) -> Option<Digest> {
        self.0.lock().expect("digests lock").get(&index).cloned()
    }

    fn record(&self, digest: Digest) {
        let mut digests = self.0.lock().expect("digests lock");
        digests.insert(digest.index, digest);
        while digests.len() > Self::KEEP {
            digests.pop_first();
        }
    }
}

impl StateMachine {
    pub(super) fn open(
        shared: Arc<Shared>,
        options: &StoreOptions,
    ) -> Result<StateMachine, String> {
        let pointer = shared
            .db
            .open_tree(POINTER_TREE)
            .map_err(|e| e.to_string())?;
        let name = match pointer.get(POINTER_KEY).map_err(|e| e.to_string())? {
            Some(name) => name.to_vec(),
            None => b"sm".to_vec(),
        };
        let tree = shared.db.open_tree(name).map_err(|e| e.to_string())?;
        match tree.get(FORMAT).map_err(|e| e.to_string())? {
            Some(format) if format.as_ref() == [DATA_FORMAT] => {}
            None if tree.is_empty() => {
                tree.insert(FORMAT, &[DATA_FORMAT])
                    .map_err(|e| e.to_string())?;
            }
            found => {
                let found = found.map_or(1, |f| f.first().copied().unwrap_or(0));
                return Err(format!(
                    "its state is in data format {found}, this raftset reads format {DATA_FORMAT}: \
                     start this node on an empty volume (it rejoins), or restore a backup taken by this version"
                ));
            }
        }
        if let Some(redo) = tree.get(REDO).map_err(|e| e.to_string())? {
            let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                postcard::from_bytes(&redo).map_err(|e| format!("undecodable redo record: {e}"))?;
            apply_writes(&tree, writes).map_err(|e| e.to_string())?;
        }
        let snapshots =
            SnapshotDir::open(shared.path.join("snapshots")).map_err(|e| e.to_string())?;
        let (tx, _) = broadcast::channel(options.watch_buffer);
        Ok(StateMachine {
            shared,
            current: Arc::new(RwLock::new(tree)),
            pointer,
            snapshots,
            history_revisions: options.history_revisions,
            feed: WatchFeed {
                tx,
                capacity: options.watch_buffer,
            },
            receiving: None,
            digests: Digests::default(),
        })
    }

    pub fn reader(&self) -> KvReader {
        KvReader {
            current: self.current.clone(),
        }
    }

    pub fn feed(&self) -> WatchFeed {
        self.feed.clone()
    }

    pub fn digests(&self) -> Digests {
        self.digests.clone()
    }

    pub(super) fn tree(&self) -> sled::Tree {
        self.current.read().expect("state machine lock").clone()
    }

    /// Applies one command into the entry's writes: its effect and its
    /// remembered outcome, and it adds its change to the entry's history. A
    /// command whose request id is remembered changes nothing.
    fn execute(
        &self,
        writes: &mut EntryWrites,
        command: &Command,
        revision: &mut u64,
    ) -> Result<Outcome, StorageError> {
        let dedup_key = [&[DEDUP][..], &command.request_id].concat();
        if let Some(remembered) = read_value::<Remembered>(writes, &dedup_key).map_err(read_err)? {
            return Ok(remembered.outcome);
        }
        let (current, next) = (*revision, *revision + 1);
        let (outcome, change) = match &command.op {
            Op::Put { key, value } => {
                let prev = read_kv(writes, key).map_err(read_err)?;
                let change = write_kv(writes, key, value, prev.as_ref(), next)?;
                (
                    Outcome::Put {
                        revision: next,
                        prev,
                    },
                    Some(change),
                )
            }
            Op::Delete { key } => match read_kv(writes, key).map_err(read_err)? {
                Some(prev) => {
                    let change = delete_kv(writes, &prev, next);
                    (
                        Outcome::Deleted {
                            revision: next,
                            prev: Some(prev),
                        },
                        Some(change),
                    )
                }
                None => (
                    Outcome::Deleted {
                        revision: current,
                        prev: None,
                    },
                    None,
                ),
            },
            Op::CompareAndSwap { key, expected, new } => {
                let found = read_kv(writes, key).map_err(read_err)?;
                let matches = match (expected, &found) {
                    (None, None) => true,
                    (Some(expected), Some(found)) => *expected == found.value,
                    _ => false,
                };
                match (matches, new, &found) {
                    (false, _, _) => (Outcome::CompareFailed { current: found }, None),
                    (true, Some(value), _) => {
                        let change = write_kv(writes, key, value, found.as_ref(), next)?;
                        (Outcome::Swapped { revision: next }, Some(change))
                    }
                    (true, None, Some(prev)) => {
                        let change = delete_kv(writes, prev, next);
                        (Outcome::Swapped { revision: next }, Some(change))
                    }
                    (true, None, None) => (Outcome::Swapped { revision: current }, None),
                }
            }
            Op::Checkpoint => (Outcome::Checkpoint { index: 0 }, None),
            Op::Increment { key, delta } => {
                let prev = read_kv(writes, key).map_err(read_err)?;
                let counter = match &prev {
                    None => Some(0),
                    Some(kv) => parse_counter(&kv.value),
                };
                match counter {
                    None => {
                        let found = prev.map(|kv| kv.value).unwrap_or_default();
                        (Outcome::NotAnInteger { current: found }, None)
                    }
                    Some(counter) => match counter.checked_add(*delta) {
                        None => (Outcome::Overflow { current: counter }, None),
                        Some(value) => {
                            let bytes = value.to_string().into_bytes();
                            let change = write_kv(writes, key, &bytes, prev.as_ref(), next)?;
                            (
                                Outcome::Incremented {
                                    revision: next,
                                    value,
                                },
                                Some(change),
                            )
                        }
                    },
                }
            }
        };
        if let Some(change) = change {
            *revision = next;
            writes.history.push(change);
        }
        writes.insert(
            dedup_key,
            encode(&Remembered {
                outcome: outcome.clone(),
            })?,
        );
        writes.remembered.push(command.request_id.clone());
        Ok(outcome)
    }

    /// What an entry's commands leave to do once: the revision counter, the
    /// entry's history and expiry records, and trimming old ones (the trims
    /// scan the tree, which the entry's own writes do not change yet).
    /// Returns the entry's changes, for watchers.
    fn finish_entry(
        &self,
        writes: &mut EntryWrites,
        log_index: u64,
        proposal: &Proposal,
        revision: u64,
    ) -> Result<Vec<Change>, StorageError> {
        let tree = writes.tree.clone();
        let history = std::mem::take(&mut writes.history);
        if !history.is_empty() {
            writes.insert(REVISION, encode(&revision)?);
            writes.insert(history_key(revision), encode(&history)?);
            self.compact_history(&tree, writes, revision)?;
        }
        if !writes.remembered.is_empty() {
            let remembered = std::mem::take(&mut writes.remembered);
            let key = expiry_key(proposal.proposed_at_ms, &log_index.to_be_bytes());
            writes.insert(key, encode(&remembered)?);
        }
        self.expire_request_ids(&tree, writes, proposal.forget_before_ms)?;
        Ok(history)
    }

    /// Forgets the request ids of up to [`EXPIRE_PER_ENTRY`] entries
    /// proposed before `forget_before_ms`.
    fn expire_request_ids(
        &self,
        tree: &sled::Tree,
        batch: &mut EntryWrites,
        forget_before_ms: u64,
    ) -> Result<(), StorageError> {
        let end = expiry_key(forget_before_ms, &[]);
        for item in tree
            .range([EXPIRY].as_slice()..end.as_slice())
            .take(EXPIRE_PER_ENTRY)
        {
            let (key, ids) = item.map_err(read_err)?;
            let ids: Vec<Vec<u8>> = postcard::from_bytes(&ids).map_err(read_err)?;
            for id in ids {
                batch.remove([&[DEDUP][..], &id].concat());
            }
            batch.remove(key);
        }
        Ok(())
    }

    /// Drops up to [`EXPIRE_PER_ENTRY`] entries' history records wholly
    /// older than the retained window, and records how far.
    fn compact_history(
        &self,
        tree: &sled::Tree,
        batch: &mut EntryWrites,
        revision: u64,
    ) -> Result<(), StorageError> {
        let cutoff = revision.saturating_sub(self.history_revisions);
        if cutoff == 0 {
            return Ok(());
        }
        let mut highest = None;
        for key in tree
            .range([HISTORY].as_slice()..history_key(cutoff).as_slice())
            .keys()
            .take(EXPIRE_PER_ENTRY)
        {
            let key = key.map_err(read_err)?;
            highest = Some(u64::from_be_bytes(
                key[1..9].try_into().expect("history key"),
            ));
            batch.remove(key);
        }
        if let Some(highest) = highest {
            batch.insert(COMPACTED, encode(&highest)?);
        }
        Ok(())
    }

    /// Writes the whole tree to a new current snapshot file.
    fn dump(&self) -> std::io::Result<()> {
        let tree = self.tree();
        let applied: Option<LogId> = read_value::<Option<LogId>>(&tree, APPLIED)
            .map_err(std::io::Error::other)?
            .flatten();
        let membership: StoredMembership = read_value(&tree, MEMBERSHIP)
            .map_err(std::io::Error::other)?
            .unwrap_or_default();
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: format!(
                "{}-{:08x}",
                applied.map(|id| id.index).unwrap_or(0),
                rand::random::<u32>()
            ),
        };
        let records = tree
            .iter()
            .filter(|item| !matches!(item, Ok((k, _)) if k == REDO))
            .map(|item| {
                item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(std::io::Error::other)
            });
        self.snapshots.write(&meta, records)?;
        // The state machine must be durable at least up to the snapshot
        // before openraft purges the log below it.
        self.shared.make_durable()?;
        Ok(())
    }

    fn current_snapshot(&self) -> std::io::Result<Option<Snapshot>> {
        let Some(meta) = self.snapshots.current_meta()? else {
            return Ok(None);
        };
        let file = std::fs::File::open(self.snapshots.current_path())?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }

    /// Loads a backup's records into an empty state machine, leaving out the
    /// old cluster's applied log id and membership (the new cluster's log
    /// starts over; revisions, history and remembered requests carry on).
    pub(super) fn import<I>(&self, records: I) -> std::io::Result<super::Restored>
    where
        I: IntoIterator<Item = std::io::Result<(Vec<u8>, Vec<u8>)>>,
    {
        let tree = self.tree();
        let mut batch = sled::Batch::default();
        let mut keys = 0;
        for record in records {
            let (key, value) = record?;
            if key == APPLIED || key == MEMBERSHIP || key == REDO {
                continue;
            }
            keys += u64::from(key.first() == Some(&KEY));
            batch.insert(key, value);
        }
        tree.apply_batch(batch).map_err(std::io::Error::other)?;
        self.shared.make_durable()?;
        let revision = read_revision(&tree).map_err(std::io::Error::other)?;
        Ok(super::Restored {
            keys,
            revision,
            backup_index: 0,
        })
    }

    /// Replaces the state with a snapshot file's records, once the whole
    /// file checked out.
    fn install(&mut self, meta: &SnapshotMeta, mut file: std::fs::File) -> std::io::Result<()> {
        let file_meta = snapshot::verify(&mut file)?;
        if file_meta.last_log_id != meta.last_log_id {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "snapshot file is at {:?}, expected {:?}",
                    file_meta.last_log_id, meta.last_log_id
                ),
            ));
        }
        let name = format!(
            "sm-{}-{:08x}",
            meta.last_log_id.map(|id| id.index).unwrap_or(0),
            rand::random::<u32>()
        );
        let fresh = self
            .shared
            .db
            .open_tree(&name)
            .map_err(std::io::Error::other)?;
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for record in snapshot::records(&mut file)? {
            let (key, value) = record?;
            batch.insert(key, value);
            pending += 1;
            if pending == 10_000 {
                fresh
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(std::io::Error::other)?;
                pending = 0;
            }
        }
        batch.insert(
            APPLIED,
            encode(&meta.last_log_id).map_err(std::io::Error::other)?,
        );
        batch.insert(
            MEMBERSHIP,
            encode(&meta.last_membership).map_err(std::io::Error::other)?,
        );
        fresh.apply_batch(batch).map_err(std::io::Error::other)?;
        self.shared.make_durable()?;
        self.pointer
            .insert(POINTER_KEY, name.as_bytes())
            .map_err(std::io::Error::other)?;
        self.shared.make_durable()?;
        let old = std::mem::replace(
            &mut *self.current.write().expect("state machine lock"),
            fresh,
        );
        self.shared
            .db
            .drop_tree(old.name())
            .map_err(std::io::Error::other)?;
        self.snapshots.install_copy(&mut file)?;
        let revision = meta.last_log_id.map(|id| id.index).unwrap_or(0);
        let _ = self.feed.tx.send(FeedItem::Reset { revision });
        Ok(())
    }
}

/// Snapshots are written when the builder is made, while the state machine
/// is not applying, so the file is one consistent point in the log.
pub struct SnapshotBuilder {
    written: std::io::Result<Option<Snapshot>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let written = std::mem::replace(&mut self.written, Ok(None));
        match written {
            Ok(Some(snapshot)) => Ok(snapshot),
            Ok(None) => Err(StorageIOError::write_snapshot(
                None,
                &std::io::Error::other("snapshot already taken"),
            )
            .into()),
            Err(e) => Err(StorageIOError::write_snapshot(None, &e).into()),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let tree = self.tree();
        let applied = read_value::<Option<LogId>>(&tree, APPLIED)
            .map_err(read_err)?
            .flatten();
        let membership = read_value(&tree, MEMBERSHIP)
            .map_err(read_err)?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Outcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let tree = self.tree();
        let mut revision = read_revision(&tree).map_err(read_err)?;
        let mut outcomes = Vec::new();
        let mut changes = Vec::new();
        for entry in entries {
            let log_id = *entry.get_log_id();
            let mut batch = EntryWrites::new(tree.clone());
            let mut entry_outcomes = Vec::new();
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(membership) => {
                    batch.insert(
                        MEMBERSHIP,
                        encode(&StoredMembership::new(Some(log_id), membership))?,
                    );
                }
                EntryPayload::Normal(proposal) => {
                    for command in &proposal.commands {
                        let outcome = self.execute(&mut batch, command, &mut revision)?;
                        entry_outcomes.push(match outcome {
                            Outcome::Checkpoint { .. } => Outcome::Checkpoint {
                                index: log_id.index,
                            },
                            other => other,
                        });
                    }
                    changes.extend(self.finish_entry(
                        &mut batch,
                        log_id.index,
                        &proposal,
                        revision,
                    )?);
                }
            }
            batch.insert(APPLIED, encode(&Some(log_id))?);
            batch
                .write(&tree)
                .map_err(|e| StorageIOError::apply(log_id, &self.shared.io_error("applying", e)))?;
            if entry_outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Checkpoint { .. }))
            {
                let digest = digest(&tree, log_id.index, revision).map_err(read_err)?;
                self.digests.record(digest);
            }
            outcomes.push(entry_outcomes);
        }
        for change in changes {
            // No receivers is fine: nobody is watching.
            let _ = self.feed.tx.send(FeedItem::Change(Arc::new(change)));
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let written = self.dump().and_then(|_| self.current_snapshot());
        SnapshotBuilder { written }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let (path, file) = self
            .snapshots
            .temp_file()
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        if let Some(abandoned) = self.receiving.replace(path) {
            let _ = std::fs::remove_file(abandoned);
        }
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        // tokio may still hold buffered writes: into_std() waits for them.
        let file = snapshot.into_std().await;
        let installed = self.install(meta, file);
        if let Some(received) = self.receiving.take() {
            let _ = std::fs::remove_file(received);
        }
        installed.map_err(|e| {
            tracing::error!(path = %self.shared.path.display(), "installing snapshot {} failed: {e}", meta.snapshot_id);
            StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.current_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

/// Point reads, from the tree or through an entry's pending writes.
trait Lookup {
    fn lookup(&self, key: &[u8]) -> sled::Result<Option<sled::IVec>>;
}

impl Lookup for sled::Tree {
    fn lookup(&self, key: &[u8]) -> sled::Result<Option<sled::IVec>> {
        self.get(key)
    }
}

/// The writes of one log entry, kept here until the entry is done (reads
/// during the entry see them), then written atomically by [`Self::write`].
struct EntryWrites {
    tree: sled::Tree,
    pending: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The entry's changes and remembered request ids, written as one
    /// record each by [`StateMachine::finish_entry`].
    history: Vec<Change>,
    remembered: Vec<Vec<u8>>,
}

impl EntryWrites {
    fn new(tree: sled::Tree) -> EntryWrites {
        EntryWrites {
            tree,
            pending: Default::default(),
            history: Vec::new(),
            remembered: Vec::new(),
        }
    }

    fn insert(&mut self, key: impl AsRef<[u8]>, value: Vec<u8>) {
        self.pending.insert(key.as_ref().to_vec(), Some(value));
    }

    fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.pending.insert(key.as_ref().to_vec(), None);
    }

    /// Writes the entry atomically without a sled batch (which costs two
    /// synced writes): first the whole write set as one redo record, then
    /// each write. sled recovers writes in order, so after a crash either
    /// the redo record is missing and so is every write after it, or it is
    /// there and [`StateMachine::open`] replays it (replaying is harmless:
    /// the writes set final values).
    fn write(self, tree: &sled::Tree) -> Result<(), sled::Error> {
        let pending: Vec<(Vec<u8>, Option<Vec<u8>>)> = self.pending.into_iter().collect();
        let redo = postcard::to_stdvec(&pending).expect("encoding in-memory writes cannot fail");
        tree.insert(REDO, redo)?;
        apply_writes(tree, pending)
    }
}

fn apply_writes(
    tree: &sled::Tree,
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
) -> Result<(), sled::Error> {
    for (key, value) in writes {
        match value {
            Some(value) => tree.insert(key, value)?,
            None => tree.remove(key)?,
        };
    }
    Ok(())
}

impl Lookup for EntryWrites {
    fn lookup(&self, key: &[u8]) -> sled::Result<Option<sled::IVec>> {
        match self.pending.get(key) {
            Some(value) => Ok(value.as_deref().map(sled::IVec::from)),
            None => self.tree.get(key),
        }
    }
}

/// Digests every key and value, in key order.
fn digest(tree: &sled::Tree, index: u64, revision: u64) -> Result<Digest, sled::Error> {
    let mut crc = crc32fast::Hasher::new();
    let mut keys = 0;
    for item in tree.scan_prefix([KEY]) {
        let (key, value) = item?;
        crc.update(&(key.len() as u64).to_be_bytes());
        crc.update(&key);
        crc.update(&(value.len() as u64).to_be_bytes());
        crc.update(&value);
        keys += 1;
    }
    crc.update(&revision.to_be_bytes());
    Ok(Digest {
        index,
        revision,
        keys,
        crc: format!("{:08x}", crc.finalize()),
    })
}

fn parse_counter(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn write_kv(
    batch: &mut EntryWrites,
    key: &[u8],
    value: &[u8],
    prev: Option<&KeyValue>,
    revision: u64,
) -> Result<Change, StorageError> {
    let stored = StoredValue {
        value: value.to_vec(),
        create_revision: prev.map_or(revision, |p| p.create_revision),
        mod_revision: revision,
        version: prev.map_or(1, |p| p.version + 1),
    };
    batch.insert([&[KEY][..], key].concat(), encode(&stored)?);
    Ok(Change {
        revision,
        kv: KeyValue {
            key: key.to_vec(),
            value: stored.value,
            create_revision: stored.create_revision,
            mod_revision: revision,
            version: stored.version,
        },
        deleted: false,
    })
}

fn delete_kv(batch: &mut EntryWrites, prev: &KeyValue, revision: u64) -> Change {
    batch.remove([&[KEY][..], &prev.key].concat());
    Change {
        revision,
        kv: KeyValue {
            key: prev.key.clone(),
            value: Vec::new(),
            create_revision: prev.create_revision,
            mod_revision: revision,
            version: prev.version,
        },
        deleted: true,
    }
}

fn read_kv(tree: &impl Lookup, key: &[u8]) -> Result<Option<KeyValue>, ReadError> {
    match tree.lookup(&[&[KEY][..], key].concat())? {
        None => Ok(None),
        Some(bytes) => Ok(Some(decode_kv(key, &bytes)?)),
    }
}

fn decode_kv(key: &[u8], bytes: &[u8]) -> Result<KeyValue, ReadError> {
    let stored: StoredValue = postcard::from_bytes(bytes)?;
    Ok(KeyValue {
        key: key.to_vec(),
        value: stored.value,
        create_revision: stored.create_revision,
        mod_revision: stored.mod_revision,
        version: stored.version,
    })
}

fn read_value<T: DeserializeOwned>(tree: &impl Lookup, key: &[u8]) -> Result<Option<T>, ReadError> {
    match tree.lookup(key)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
    }
}

fn read_revision(tree: &sled::Tree) -> Result<u64, ReadError> {
    Ok(read_value(tree, REVISION)?.unwrap_or(0))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(value).map_err(|e| StorageIOError::write_state_machine(&e).into())
}

fn history_key(revision: u64) -> [u8; 9] {
    let mut key = [HISTORY; 9];
    key[1..].copy_from_slice(&revision.to_be_bytes());
    key
}

/// `suffix` is a log index, or nothing for the end of a range.
fn expiry_key(at_ms: u64, suffix: &[u8]) -> Vec<u8> {
    [&[EXPIRY][..], &at_ms.to_be_bytes(), suffix].concat()
}

/// The smallest key greater than every key that starts with `prefix`.
fn prefix_successor(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

/// A state machine read failed: the tree is unreadable or holds bytes this
/// version cannot decode.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("undecodable record: {0}")]
    Decode(#[from] postcard::Error),
}

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}
