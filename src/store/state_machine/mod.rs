//! The replicated state machine: keys with their revisions, the change
//! history that Watch replays, and remembered request outcomes, in one sled
//! tree whose layout is in [`crate::store::keys`].
//!
//! By concern: [`apply`] (what each command does, near-pure over a lookup),
//! [`read`] (the read view for Get, Scan and Watch), [`feed`] (the live
//! change feed), [`digest`] (state digests for `verify`), [`snapshots`]
//! (dump, install, backup import), [`databases`] (which sled database holds
//! the tree), [`defrag`] (copying it into a fresh one beside applying),
//! [`recent`] (where node-made request ids' outcomes are filed);
//! this file opens the tree and implements openraft's state machine trait
//! on top of them.
//!
//! A log entry carries a batch of commands. Each command that changes a key
//! takes the next revision. All of an entry's writes, its remembered
//! outcomes and its applied log id reach sled atomically (a redo record,
//! see `EntryWrites::write`), so the tree always reflects a whole prefix of
//! the log. Applying is not flushed by itself: applied state is recovered by
//! re-applying the durable log.
//!
//! **Every read is one point in time: a lock per applied entry.** sled 0.34
//! has no snapshots, and its own atomicity is per operation: a batch
//! excludes each single `get` and each step of an iterator, but a Get (the
//! key, then the revision) or a Scan (many steps, then the revision) spans
//! several operations, so without more a read could show a key newer than
//! its revision, or half of an entry's writes. So the current tree sits
//! behind one readers/writer lock: every read (Get, a Scan page, Watch's
//! history replay) holds it shared for the whole read, applying holds it
//! alone only while one entry's write set goes into sled (`write_entry`),
//! and a snapshot install holds it to switch trees. A read therefore sees
//! the state after exactly one applied entry, with that state's revision.
//!
//! Why this mechanism: it is small and exact. Applying already collects an
//! entry's whole write set before writing it (its own lookups go through
//! that set), so the exclusive part is only the writes; reads are bounded
//! (a scan page, the retained history), so applying waits only for the
//! reads in progress. sled batches alone would not do (above); a fuzzy view
//! is fine for a snapshot that is repaired by replay (below) but not for a
//! read, which must be exact. Digests need no lock: they are taken on the
//! applying task between entries, when nothing else writes.
//!
//! **A snapshot is copied beside applying, without the lock.** openraft
//! asks for the builder between two entries; from there a copy reads the
//! tree in chunks on a thread of its own. Meanwhile each entry, under the
//! lock before its writes land, keeps the present value of every key it
//! changes that the copy has not marked copied (the key order tells), once
//! per key. The copy takes keys as it finds them unless one was kept, and
//! ends with the kept values: exactly the state when the snapshot began,
//! whatever applied during the copy (see [`snapshots::SnapshotCopy`]). The
//! kept values cost memory for the keys changed during one copy only. A
//! snapshot install waits for a copy in progress, as it replaces the tree.
//! A defrag's copy also reads without the lock (see [`defrag`]).

mod apply;
mod databases;
pub(in crate::store) mod defrag;
mod digest;
mod feed;
pub(super) mod read;
mod recent;
mod snapshots;

use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftLogId, StorageIOError};

use self::apply::{encode, finish_last_entry, EntryWrites, ReplayError};
pub(super) use self::databases::{open_current, state_dirs};
pub use self::defrag::DefragPolicy;
pub use self::digest::Digests;
pub use self::feed::{Change, FeedItem, WatchFeed};
use self::read::{read_revision, read_value, ReadError};
pub use self::read::{KvReader, ScanPage, ScanRange};
use self::recent::RecentIds;
pub use self::snapshots::SnapshotBuilder;
#[cfg(test)]
pub(in crate::store) use self::snapshots::SnapshotCopy;
use self::snapshots::{current_snapshot, record_snapshot_size, snapshot_taken, Preimages};
use super::keys::{
    readable_format, APPLIED, DATA_FORMAT, FORMAT, MEMBERSHIP, OLDEST_READABLE_FORMAT, POINTER_TREE,
};
use super::snapshot::SnapshotDir;
use super::{PurgeGate, Shared, StoreError, StoreOptions};
use crate::types::{
    Entry, LogId, Outcome, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// The state machine openraft drives.
pub struct StateMachine {
    shared: Arc<Shared>,
    current: Arc<RwLock<sled::Tree>>,
    snapshots: SnapshotDir,
    history: apply::HistoryRetention,
    feed: WatchFeed,
    /// The temporary file a snapshot is being received into.
    receiving: Option<std::path::PathBuf>,
    digests: Digests,
    /// Where the node-made request ids the tree remembers are filed.
    recent: RecentIds,
    /// Told each applied index, so a log purge never gets ahead of it.
    purges: Arc<PurgeGate>,
    /// What applying keeps for a snapshot being copied beside it.
    copying: Arc<Mutex<Option<Preimages>>>,
    /// Taken by a snapshot copy for its whole run: an install and a
    /// defrag's switch wait for it.
    snapshot_turn: Arc<tokio::sync::Mutex<()>>,
    /// The defrag thread, and the handles it shares (see [`defrag`]).
    defragger: defrag::Defragger,
}

impl StateMachine {
    pub(super) fn open(
        shared: Arc<Shared>,
        options: &StoreOptions,
        purges: Arc<PurgeGate>,
    ) -> Result<StateMachine, StoreError> {
        let state_db = shared.state_db();
        let path = state_db.dir.clone();
        let sled_err = |source| state_db.sled_err(source);
        let corrupted = |detail: String| StoreError::Corrupted {
            path: path.clone(),
            detail,
        };
        let pointer = shared.meta.db.open_tree(POINTER_TREE).map_err(sled_err)?;
        let tree = databases::state_tree(&state_db)?;
        let format = tree.get(FORMAT).map_err(sled_err)?;
        // An empty tree is a new node's; a tree without the mark, format 1's.
        let found = match format.as_deref() {
            Some(&[found]) => found,
            Some(_) => 0,
            None if tree.is_empty() => DATA_FORMAT,
            None => 1,
        };
        if !readable_format(found) {
            return Err(corrupted(format!(
                "its state is in data format {found}, this raftset reads formats \
                 {OLDEST_READABLE_FORMAT} to {DATA_FORMAT}: start this node on an empty volume \
                 (it rejoins), or restore a backup taken by this version"
            )));
        }
        if format.as_deref() != Some(&[DATA_FORMAT]) {
            tree.insert(FORMAT, &[DATA_FORMAT]).map_err(sled_err)?;
        }
        finish_last_entry(&tree).map_err(|e| match e {
            ReplayError::Sled(e) | ReplayError::Read(ReadError::Sled(e)) => sled_err(e),
            unreadable => corrupted(unreadable.to_string()),
        })?;
        let snapshots_path = shared.path.join("snapshots");
        let snapshots =
            SnapshotDir::open(snapshots_path.clone()).map_err(|source| StoreError::Io {
                path: snapshots_path,
                source,
            })?;
        let applied: Option<LogId> = read_value::<Option<LogId>>(&tree, APPLIED)
            .map_err(|e| corrupted(format!("unreadable applied log id: {e}")))?
            .flatten();
        // sled's recovery takes a damaged record for the torn end of its log
        // and opens the state as it was before that record, without a word.
        // openraft re-applies what the log still holds after it; once the log
        // is purged past the state, those writes are lost, so say so.
        let purged = purges.purged().map_err(|source| StoreError::Io {
            path: shared.meta.dir.clone(),
            source,
        })?;
        let index = |id: Option<LogId>| id.map_or(0, |id| id.index);
        if index(purged) > index(applied) {
            return Err(corrupted(format!(
                "its state is applied up to log index {}, but the log was purged up to {}: \
                 the state database lost writes it had made durable (its file is damaged); \
                 start this node on an empty volume (it rejoins), or restore a backup",
                index(applied),
                index(purged)
            )));
        }
        let recent = RecentIds::load(&tree)
            .map_err(|e| corrupted(format!("unreadable request id records: {e}")))?;
        let current = Arc::new(RwLock::new(tree));
        let snapshot_turn = Arc::<tokio::sync::Mutex<()>>::default();
        let parts = defrag::Parts {
            current: current.clone(),
            shared: shared.clone(),
            pointer,
            snapshots: snapshots.clone(),
            cache_bytes: options.cache_bytes,
            applying: Arc::default(),
            installs: Arc::default(),
            mirror: Arc::default(),
            failed: Arc::default(),
            snapshot_turn: snapshot_turn.clone(),
        };
        let defragger =
            defrag::Defragger::start(parts, options.defrag).map_err(|source| StoreError::Io {
                path: shared.path.clone(),
                source,
            })?;
        let state_machine = StateMachine {
            shared,
            current,
            snapshots,
            history: apply::HistoryRetention {
                revisions: options.history_revisions,
                bytes: options.history_bytes,
            },
            feed: WatchFeed::new(options.watch_buffer),
            receiving: None,
            digests: Digests::default(),
            recent,
            purges,
            copying: Arc::default(),
            snapshot_turn,
            defragger,
        };
        // An install that stopped after copying its snapshot file but before
        // switching to its data leaves a snapshot ahead of the state, which
        // openraft must never be shown: make the snapshot the state again.
        let snapshot_io = |source| StoreError::Io {
            path: state_machine.snapshots.current_path(),
            source,
        };
        let snapshot = state_machine
            .snapshots
            .current_meta()
            .map_err(snapshot_io)?;
        if snapshot.is_some_and(|meta| meta.last_log_id > applied) {
            tracing::warn!("the snapshot file is ahead of the applied state: writing it again");
            let turn = (state_machine.snapshot_turn.clone().try_lock_owned())
                .expect("nothing else copies a snapshot while the store opens");
            (state_machine.begin_snapshot(turn))
                .and_then(|copy| copy.write())
                .map_err(snapshot_io)?;
        }
        record_snapshot_size(&state_machine.snapshots, &state_machine.shared);
        state_machine
            .purges
            .applied(applied.map_or(0, |id| id.index))
            .map_err(snapshot_io)?;
        Ok(state_machine)
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

    /// The handles a defrag works with, for tests that drive one by hand.
    #[cfg(test)]
    pub(in crate::store) fn defrag_parts(&self) -> defrag::Parts {
        self.defragger.parts.clone()
    }

    /// What applying keeps for a snapshot copy, for tests that hold a copy
    /// up.
    #[cfg(test)]
    pub(in crate::store) fn snapshot_preimages(&self) -> Arc<Mutex<Option<Preimages>>> {
        self.copying.clone()
    }

    pub(super) fn tree(&self) -> sled::Tree {
        self.current.read().expect("state machine lock").clone()
    }

    /// Writes one entry's write set while no read is in progress, so every
    /// read sees the state before the entry or after it, never part of it.
    /// A snapshot being copied meanwhile keeps what the entry overwrites.
    /// A defrag in progress gets those behind its copy (see [`defrag`]).
    fn write_entry(
        &self,
        log_index: u64,
        writes: EntryWrites<sled::Tree>,
    ) -> Result<(), sled::Error> {
        let tree = self.current.write().expect("state machine lock");
        if let Some(preimages) = self.copying.lock().expect("snapshot copy lock").as_mut() {
            preimages.keep(&tree, writes.keys())?;
        }
        let mirror = self
            .defragger
            .parts
            .mirror
            .lock()
            .expect("mirror lock")
            .clone();
        let entry = writes.write(log_index)?;
        match mirror {
            Some(mirror) => mirror.write(&entry),
            None => Ok(()),
        }
    }

    /// Applies a batch of entries: sled's writes and lookups, and waits on
    /// the state lock, all blocking.
    fn apply_entries<I>(&mut self, entries: I) -> Result<Vec<Vec<Outcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        // A defrag's switch waits for this batch to end.
        let applying = self.defragger.parts.applying.clone();
        let _applying = applying.lock().unwrap_or_else(|e| e.into_inner());
        let failed = self.defragger.parts.failed.lock();
        if let Some(failure) = failed.unwrap_or_else(|e| e.into_inner()).clone() {
            let err = self.shared.io_error("applying", failure);
            return Err(StorageIOError::apply(LogId::default(), &err).into());
        }
        let tree = self.tree();
        let mut revision = read_revision(&tree).map_err(read_err)?;
        let mut outcomes = Vec::new();
        let mut changes = Vec::new();
        let mut last_applied = None;
        for entry in entries {
            let started = std::time::Instant::now();
            let log_id = *entry.get_log_id();
            last_applied = Some(log_id.index);
            let mut batch = EntryWrites::new(tree.clone());
            let mut entry_outcomes = Vec::new();
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(membership) => {
                    batch.insert(
                        MEMBERSHIP,
                        encode(&StoredMembership::new(Some(log_id), membership)),
                    );
                }
                EntryPayload::Normal(proposal) => {
                    for command in &proposal.commands {
                        let outcome =
                            apply::execute(&mut batch, &self.recent, command, &mut revision)
                                .map_err(read_err)?;
                        entry_outcomes.push(match outcome {
                            Outcome::Checkpoint { .. } => Outcome::Checkpoint {
                                index: log_id.index,
                            },
                            other => other,
                        });
                    }
                    changes.extend(
                        apply::finish_entry(
                            &mut batch,
                            log_id.index,
                            &proposal,
                            revision,
                            self.history,
                        )
                        .map_err(read_err)?,
                    );
                }
            }
            batch.insert(APPLIED, encode(&Some(log_id)));
            let index_changes = batch.take_index_changes();
            self.write_entry(log_id.index, batch)
                .map_err(|e| StorageIOError::apply(log_id, &self.shared.io_error("applying", e)))?;
            self.recent.update(index_changes);
            self.shared
                .metrics
                .apply
                .observe(started.elapsed().as_secs_f64());
            if entry_outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Checkpoint { .. }))
            {
                let digest = digest::digest(&tree, log_id.index, revision).map_err(read_err)?;
                self.digests.record(digest);
            }
            outcomes.push(entry_outcomes);
        }
        if let Some(last) = last_applied {
            self.purges
                .applied(last)
                .map_err(|e| StorageIOError::apply(LogId::default(), &e))?;
        }
        for change in changes {
            self.feed.send(FeedItem::Change(Arc::new(change)));
        }
        Ok(outcomes)
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        if blocks_long(&entries) {
            off_the_workers(|| self.apply_entries(entries))
        } else {
            self.apply_entries(entries)
        }
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let turn = self.snapshot_turn.clone().lock_owned().await;
        SnapshotBuilder {
            copy: Some(self.begin_snapshot(turn)),
        }
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
        let _copy_done = self.snapshot_turn.clone().lock_owned().await;
        let started = std::time::Instant::now();
        let installed = off_the_workers(|| self.install(meta, file));
        if installed.is_ok() {
            let took = &self.shared.metrics.snapshot_install;
            snapshot_taken(took, started, &self.snapshots, &self.shared);
        }
        if let Some(received) = self.receiving.take() {
            let _ = std::fs::remove_file(received);
        }
        installed.map_err(|e| {
            tracing::error!(path = %self.shared.path.display(), "installing snapshot {} failed: {e}", meta.snapshot_id);
            StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        current_snapshot(&self.snapshots)
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

/// Commands a batch of entries may carry and still be applied in place.
/// Handing the worker's queue to another thread costs a thread wake-up on
/// each node: done for every batch, one put at a time took 1.55–1.59 ms
/// instead of 1.39–1.42 (p50 over the three nodes, two fresh clusters
/// each, alternating), while a batch this small applies in well under a
/// millisecond even with a million keys.
const APPLIED_IN_PLACE_UP_TO: usize = 8;

/// Whether applying `entries` may hold a thread long enough to be moved
/// off the runtime's workers: past [`APPLIED_IN_PLACE_UP_TO`] commands.
fn blocks_long(entries: &[Entry]) -> bool {
    let commands: usize = entries
        .iter()
        .map(|entry| match &entry.payload {
            EntryPayload::Normal(proposal) => proposal.commands.len(),
            EntryPayload::Blank | EntryPayload::Membership(_) => 1,
        })
        .sum();
    commands > APPLIED_IN_PLACE_UP_TO
}

/// Runs storage work that blocks (sled's writes and its lookups that miss
/// the cache, waits on the state lock, filling a database from a snapshot)
/// without holding up the runtime's other tasks. Run in place, it held up
/// the worker that also answers the leader: with 750,000 keys an entry of
/// about 23 puts took 1.5 ms to apply on average and up to 200 ms (while
/// a defrag mirrored it), and openraft 0.9 waits for an AppendEntries
/// answer only as long as the heartbeat interval (100 ms). Under puts at
/// 64 in flight the leader's appends timed out 60 to 210 times a minute,
/// writes stalled for up to 1.2 s while two members were busy, and once
/// the followers held an election; with this, 1 to 3 times a minute, and
/// the longest write took 0.27 to 0.53 s (`bench/FINDINGS.md`). On a
/// multi-thread runtime the worker first hands its queue to another
/// thread; a current-thread runtime (an embedder's, a test's) has no
/// other thread to hand it to.
fn off_the_workers<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|runtime| runtime.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// A copy of the whole state (a snapshot's, a defrag's) runs on a thread
/// of its own below those that serve and apply. At a million keys, with
/// every member copying a snapshot, puts at 64 in flight had a median p99
/// of 64 ms at nice 0, 48 ms at 10 and 47 ms at 19 (24 ms without a
/// snapshot; four runs each). Neither copy holds a lock that applying
/// waits for except briefly per chunk, so it can be preempted without
/// holding entries up, the mistake an early defrag made at nice 10 under
/// the state lock (writes waited up to 0.9 s behind it). 10 rather than
/// 19: under full load a copy still ends (a snapshot's in 4 s at nice 0,
/// 6 to 10 s at 10), and the log it lets openraft purge stays bounded.
const COPY_NICE: i32 = 10;

/// Lowers the calling thread to [`COPY_NICE`] for good: a thread that
/// lowered its priority may not raise it again without privilege, so a
/// copy runs on a thread of its own, not tokio's blocking pool.
fn copy_below_serving() {
    let _ = rustix::process::setpriority_process(None, COPY_NICE);
}

/// Up to `records` records of `tree` after the key `after` (from the
/// first without one), each read on its own: a copy's chunk.
fn records_after(
    tree: &sled::Tree,
    after: Option<sled::IVec>,
    records: usize,
) -> std::io::Result<Vec<(sled::IVec, sled::IVec)>> {
    let range = match after {
        Some(last) => tree.range((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded)),
        None => tree.iter(),
    };
    range
        .take(records)
        .collect::<sled::Result<Vec<_>>>()
        .map_err(std::io::Error::other)
}

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}
