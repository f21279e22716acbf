//! The Raft log and vote, with group-committed flushes.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    CommittedLeaderId, EntryPayload, Membership, OptionalSend, RaftLogId, RaftLogReader,
    StorageIOError,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Shared;
use crate::limits::MAX_APPEND_BYTES;
use crate::types::{Entry, LogId, Member, NodeId, StorageError, TypeConfig, Vote};

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const PURGED_KEY: &[u8] = b"purged";

/// Counters the flusher keeps: the metrics' own counters (so exported as
/// they are), and what the durability tests check an acknowledgement against.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Completed flushes of appended entries.
    pub flushes: Counter,
    /// Append calls those flushes covered; `appends / flushes` is the batching.
    pub appends: Counter,
    /// The highest log index known to be on disk.
    pub durable_index: AtomicU64,
}

/// Holds back each purge of the log until the state machine has applied
/// what it removes. openraft asks for the purge that a received snapshot
/// covers as soon as it hands the snapshot to the state machine, before
/// the state machine has switched to it; any flush in between would make
/// the purge durable first, and a crash there would leave a log that
/// starts above the state, from which no node can restart. sled keeps
/// writes in order, so a purge written after the state it relies on is
/// never durable without that state.
pub(super) struct PurgeGate {
    log: sled::Tree,
    raft: sled::Tree,
    state: Mutex<GateState>,
    size: LogSize,
}

/// The bytes of entries the log holds, kept up to date by every append,
/// truncation and purge, so compaction can bound the log by its size as
/// well as by its length (`--snapshot-log-bytes`). It is the exported
/// gauge itself, so the metric and the bound never disagree.
#[derive(Debug, Clone, Default)]
pub struct LogSize(Gauge);

impl From<Gauge> for LogSize {
    fn from(gauge: Gauge) -> Self {
        LogSize(gauge)
    }
}

impl LogSize {
    pub fn bytes(&self) -> u64 {
        u64::try_from(self.0.get()).unwrap_or(0)
    }

    fn add(&self, bytes: usize) {
        self.0.inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    fn remove(&self, bytes: usize) {
        self.0.dec_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Removes `entries` (a range of `log`) as one batch and counts their
    /// bytes out.
    fn remove_range(
        &self,
        log: &sled::Tree,
        entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    ) -> sled::Result<()> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for item in entries {
            let (key, value) = item?;
            removed += value.len();
            batch.remove(key);
        }
        log.apply_batch(batch)?;
        self.remove(removed);
        Ok(())
    }

    /// Inserts one entry and counts it in (and the one it replaced out).
    fn insert(&self, log: &sled::Tree, index: u64, bytes: Vec<u8>) -> sled::Result<()> {
        let added = bytes.len();
        let replaced = log.insert(index_key(index), bytes)?;
        self.add(added);
        self.remove(replaced.map_or(0, |old| old.len()));
        Ok(())
    }
}

#[derive(Default)]
struct GateState {
    /// The last index the state machine wrote as applied.
    applied: u64,
    /// The purge waiting for `applied` to reach it.
    deferred: Option<LogId>,
}

impl PurgeGate {
    pub(super) fn open(db: &sled::Db, raft: sled::Tree, size: LogSize) -> sled::Result<PurgeGate> {
        let log = db.open_tree("log")?;
        size.0.set(0);
        for item in log.iter().values() {
            size.add(item?.len());
        }
        Ok(PurgeGate {
            log,
            raft,
            state: Mutex::default(),
            size,
        })
    }

    /// The state machine has written `index` as applied: a purge that
    /// waited for it runs now.
    pub(super) fn applied(&self, index: u64) -> sled::Result<()> {
        let mut state = self.state.lock().expect("purge gate lock");
        state.applied = index;
        match state.deferred {
            Some(upto) if upto.index <= index => {
                state.deferred = None;
                self.purge_now(upto)
            }
            _ => Ok(()),
        }
    }

    fn request(&self, upto: LogId) -> sled::Result<()> {
        let mut state = self.state.lock().expect("purge gate lock");
        if upto.index <= state.applied {
            return self.purge_now(upto);
        }
        state.deferred = state.deferred.max(Some(upto));
        Ok(())
    }

    fn purge_now(&self, upto: LogId) -> sled::Result<()> {
        // The marker goes first: sled recovers writes in order, so a crash
        // never leaves removed entries without the marker that explains them.
        let marker = postcard::to_stdvec(&upto).map_err(|e| {
            sled::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        self.raft.insert(PURGED_KEY, marker)?;
        self.size
            .remove_range(&self.log, self.log.range(..=index_key(upto.index)))
    }
}

/// The log store openraft drives. Cheap to clone: clones share one database
/// and one flusher thread.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    log: sled::Tree,
    raft: sled::Tree,
    pub(super) purges: Arc<PurgeGate>,
    flusher: Arc<Flusher>,
    stats: Arc<FlushStats>,
}

/// The flusher thread and the queue into it. Dropping the last handle
/// closes the queue and waits for the thread, so the database is closed
/// once every `LogStore` is gone (and can be reopened at once).
struct Flusher {
    queue: Option<mpsc::Sender<PendingFlush>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An appended batch waiting for the flush that makes it durable.
struct PendingFlush {
    last_index: u64,
    done: LogFlushed<TypeConfig>,
}

impl LogStore {
    pub(super) fn open(
        shared: Arc<Shared>,
        raft: sled::Tree,
        purges: Arc<PurgeGate>,
    ) -> sled::Result<LogStore> {
        let log = shared.db.open_tree("log")?;
        let stats = Arc::new(FlushStats {
            flushes: shared.metrics.log_flushes.clone(),
            appends: shared.metrics.log_appends.clone(),
            durable_index: AtomicU64::default(),
        });
        let (queue, pending) = mpsc::channel();
        let flusher_shared = shared.clone();
        let flusher_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("raftset-log-flush".into())
            .spawn(move || run_flusher(&flusher_shared, &flusher_stats, pending))
            .expect("spawning the log flusher thread");
        Ok(LogStore {
            shared,
            log,
            raft,
            purges,
            flusher: Arc::new(Flusher {
                queue: Some(queue),
                thread: Some(thread),
            }),
            stats,
        })
    }

    pub fn stats(&self) -> Arc<FlushStats> {
        self.stats.clone()
    }

    pub fn size(&self) -> LogSize {
        self.purges.size.clone()
    }

    fn read_value<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self.raft.get(key).map_err(|e| StorageIOError::read(&e))? else {
            return Ok(None);
        };
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| StorageIOError::read(&e).into())
    }

    fn write_value<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = postcard::to_stdvec(value).map_err(|e| StorageIOError::write(&e))?;
        self.raft
            .insert(key, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn flush_now(&self) -> Result<(), StorageError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            shared
                .make_durable()
                .map_err(|e| shared.io_error("flush", e))
        })
        .await
        .map_err(|e| StorageIOError::write(&std::io::Error::other(e)))?
        .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    /// Turns a committed vote for `id` itself, the mark of a leader, into an
    /// uncommitted one in the same term, before openraft starts: openraft
    /// 0.9 starts a node holding such a vote as the leader again at once,
    /// in that term, with only the commit index it last wrote down (a hint,
    /// never flushed on its own). Its first read index could then miss
    /// writes it had acknowledged before it stopped. Standing down, it must
    /// win an election in a later term first, whose first entry every read
    /// waits for (Raft's own rule, as etcd restarts every node a follower).
    /// The vote still holds the term, so nobody else gets this node's vote
    /// in it. Nothing is flushed here: a crash before the next flush finds
    /// the old vote and stands down again.
    pub(super) fn stand_down(&self, id: NodeId) -> Result<(), StorageError> {
        let Some(vote) = self.read_value::<Vote>(VOTE_KEY)? else {
            return Ok(());
        };
        if vote.is_committed() && vote.leader_id().voted_for() == Some(id) {
            tracing::info!(
                term = vote.leader_id().term,
                "led before it stopped: starting as a follower, to be elected again"
            );
            self.write_value(VOTE_KEY, &Vote::new(vote.leader_id().term, id))?;
        }
        Ok(())
    }

    /// Appends, before openraft starts and outside it, one membership entry
    /// that makes `id` (at `member`'s addresses) the only voter, after every
    /// entry the log holds, in a term above any it has seen; writes a vote
    /// for `id` in that term, committed, and marks that entry committed. So
    /// the whole log up to that entry is committed and applied (nothing
    /// durable in the log is dropped), and the node, the only voter, elects
    /// itself at once ([`LogStore::stand_down`] runs after this). Nothing
    /// is flushed here; sled keeps the order.
    pub(super) fn append_sole_voter(
        &self,
        id: NodeId,
        member: &Member,
    ) -> Result<LogId, StorageError> {
        let purged: Option<LogId> = self.read_value(PURGED_KEY)?;
        let last = self.last_entry_log_id()?.or(purged);
        let vote: Vote = self.read_value(VOTE_KEY)?.unwrap_or_default();
        let term = vote
            .leader_id()
            .term
            .max(last.map_or(0, |l| l.leader_id.term))
            + 1;
        let log_id = LogId::new(
            CommittedLeaderId::new(term, id),
            last.map_or(0, |l| l.index + 1),
        );
        let membership = Membership::new(
            vec![BTreeSet::from([id])],
            BTreeMap::from([(id, member.clone())]),
        );
        let entry = Entry {
            log_id,
            payload: EntryPayload::Membership(membership),
        };
        self.write_value(VOTE_KEY, &Vote::new_committed(term, id))?;
        let bytes =
            postcard::to_stdvec(&entry).map_err(|e| StorageIOError::write_log_entry(log_id, &e))?;
        self.purges
            .size
            .insert(&self.log, log_id.index, bytes)
            .map_err(|e| StorageIOError::write_log_entry(log_id, &e))?;
        self.write_value(COMMITTED_KEY, &Some(log_id))?;
        Ok(log_id)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let Some((_, bytes)) = self.log.last().map_err(|e| StorageIOError::read_logs(&e))? else {
            return Ok(None);
        };
        let entry: Entry =
            postcard::from_bytes(&bytes).map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(Some(*entry.get_log_id()))
    }
}

/// Waits for appended batches and flushes once for all that are waiting,
/// then reports each durable. Ends when every `LogStore` is dropped.
fn run_flusher(shared: &Shared, stats: &FlushStats, pending: mpsc::Receiver<PendingFlush>) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        let result = shared.make_durable();
        if result.is_ok() {
            let last = batch.iter().map(|p| p.last_index).max().unwrap_or(0);
            stats.durable_index.fetch_max(last, Ordering::SeqCst);
            stats.flushes.inc();
            stats.appends.inc_by(batch.len() as u64);
        }
        for waiting in batch {
            let outcome = match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(shared.io_error("flushing the log", e)),
            };
            waiting.done.log_io_completed(outcome);
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    /// At most [`MAX_APPEND_BYTES`] of entries, and always at least one:
    /// openraft gives each AppendEntries one heartbeat interval, the
    /// follower's flush included, so a batch is bounded by its size, not
    /// only by its count.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut entries = Vec::new();
        let mut bytes = 0;
        for item in self.log.range(index_key(start)..index_key(end)) {
            let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            if !entries.is_empty() && bytes + value.len() > MAX_APPEND_BYTES {
                break;
            }
            bytes += value.len();
            entries.push(postcard::from_bytes(&value).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(entries)
    }

    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.log
            .range::<[u8; 8], _>((start, end))
            .map(|item| {
                let (_, bytes) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                postcard::from_bytes(&bytes).map_err(|e| StorageIOError::read_logs(&e).into())
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_value(PURGED_KEY)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_value(VOTE_KEY, vote)?;
        self.flush_now().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_value(VOTE_KEY)
    }

    // The committed id is a hint that lets a restarted node apply sooner; it
    // needs no flush of its own (losing it only delays applying).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_value(COMMITTED_KEY, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_value::<Option<LogId>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Plain inserts, not a sled batch: a batch costs sled two synced
        // writes of its own, and the flush below makes these durable anyway.
        // sled recovers writes in order, so a crash keeps a prefix of them.
        let mut last_index = None;
        for entry in entries {
            let log_id = *entry.get_log_id();
            let bytes = postcard::to_stdvec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(log_id, &e))?;
            self.purges
                .size
                .insert(&self.log, log_id.index, bytes)
                .map_err(|e| {
                    StorageIOError::write_logs(&self.shared.io_error("appending to the log", e))
                })?;
            last_index = Some(log_id.index);
        }
        crate::failpoint::crash_point("log-append-before-flush");
        match last_index {
            Some(last_index) => self
                .flusher
                .queue
                .as_ref()
                .expect("the queue lives as long as the flusher")
                .send(PendingFlush {
                    last_index,
                    done: callback,
                })
                .map_err(|_| {
                    StorageIOError::write_logs(&std::io::Error::other("log flusher stopped"))
                })?,
            None => callback.log_io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.purges
            .size
            .remove_range(&self.log, self.log.range(index_key(log_id.index)..))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush_now().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.purges
            .request(log_id)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 0), index)
    }

    fn indexes(gate: &PurgeGate) -> Vec<u64> {
        gate.log
            .iter()
            .keys()
            .map(|k| u64::from_be_bytes(k.unwrap().as_ref().try_into().unwrap()))
            .collect()
    }

    fn purged(gate: &PurgeGate) -> Option<LogId> {
        let bytes = gate.raft.get(PURGED_KEY).unwrap()?;
        Some(postcard::from_bytes(&bytes).unwrap())
    }

    /// openraft purges the log a received snapshot covers before the state
    /// machine has switched to it: the purge waits until the state machine
    /// has applied that far, so no crash can leave a log that starts above
    /// the state.
    #[test]
    fn a_purge_waits_until_the_state_machine_has_applied_what_it_removes() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let gate = PurgeGate::open(&db, db.open_tree("raft").unwrap(), LogSize::default()).unwrap();
        for index in 1..=6 {
            gate.log.insert(index_key(index), b"entry").unwrap();
        }
        gate.applied(2).unwrap();

        gate.request(log_id(2)).unwrap();
        assert_eq!(purged(&gate), Some(log_id(2)), "applied, so purged at once");
        assert_eq!(indexes(&gate), [3, 4, 5, 6]);

        gate.request(log_id(5)).unwrap();
        assert_eq!(purged(&gate), Some(log_id(2)), "5 is not applied yet");
        assert_eq!(indexes(&gate), [3, 4, 5, 6]);
        gate.applied(4).unwrap();
        assert_eq!(
            indexes(&gate),
            [3, 4, 5, 6],
            "applied 4 of the 5 it removes"
        );

        gate.applied(5).unwrap();
        assert_eq!(purged(&gate), Some(log_id(5)));
        assert_eq!(indexes(&gate), [6]);
        gate.applied(6).unwrap();
        assert_eq!(purged(&gate), Some(log_id(5)), "a purge runs once");
    }

    /// The size the log reports is the bytes of the entries it holds,
    /// through appends that replace entries, truncations and purges, and
    /// the same when the store is opened again.
    #[test]
    fn the_log_size_follows_appends_truncations_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let raft = db.open_tree("raft").unwrap();
        let size = LogSize::default();
        let gate = PurgeGate::open(&db, raft.clone(), size.clone()).unwrap();
        for index in 1..=10 {
            size.insert(&gate.log, index, vec![0; 100]).unwrap();
        }
        assert_eq!(size.bytes(), 1_000);
        size.insert(&gate.log, 10, vec![0; 300]).unwrap();
        assert_eq!(size.bytes(), 1_200, "a replaced entry counts once");

        size.remove_range(&gate.log, gate.log.range(index_key(9)..))
            .unwrap();
        assert_eq!(size.bytes(), 800, "truncated from 9 on");
        gate.applied(8).unwrap();
        gate.request(log_id(3)).unwrap();
        assert_eq!(size.bytes(), 500, "purged up to 3");

        let reopened = LogSize::default();
        let _gate = PurgeGate::open(&db, raft, reopened.clone()).unwrap();
        assert_eq!(reopened.bytes(), 500, "counted again on opening");
    }
}
