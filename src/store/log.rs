//! The Raft log and vote: entries in segment files ([`super::wal`]) with
//! group-committed syncs; the vote, the commit hint and the purge marker in
//! sled's `raft` tree.

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
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::wal::{LogSize, Wal};
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
/// the state machine has switched to it; a purge made durable in between
/// would leave, after a crash, a log that starts above the state, from
/// which no node can restart. And the applied state is in sled, flushed
/// only now and then (applying is recovered by re-applying the log): so a
/// purge flushes sled, the marker with it, before any segment goes.
pub(super) struct PurgeGate {
    wal: Arc<Wal>,
    shared: Arc<Shared>,
    raft: sled::Tree,
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    /// The last index the state machine wrote as applied.
    applied: u64,
    /// The purge waiting for `applied` to reach it.
    deferred: Option<LogId>,
}

impl PurgeGate {
    pub(super) fn open(
        shared: Arc<Shared>,
        raft: sled::Tree,
        size: LogSize,
    ) -> std::io::Result<PurgeGate> {
        let purged = read_value::<LogId>(&raft, PURGED_KEY).map_err(std::io::Error::other)?;
        let wal = Wal::open(
            &shared.path.join(super::WAL_DIR),
            purged.map(|id| id.index),
            size,
            shared.wal_bytes.clone(),
        )?;
        Ok(PurgeGate {
            wal: Arc::new(wal),
            shared,
            raft,
            state: Mutex::default(),
        })
    }

    /// The state machine has written `index` as applied: a purge that
    /// waited for it runs now.
    pub(super) fn applied(&self, index: u64) -> std::io::Result<()> {
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

    /// How far the log is purged: the state must be applied at least as far,
    /// or what lies between is gone.
    pub(super) fn purged(&self) -> std::io::Result<Option<LogId>> {
        read_value(&self.raft, PURGED_KEY)
    }

    fn request(&self, upto: LogId) -> std::io::Result<()> {
        let mut state = self.state.lock().expect("purge gate lock");
        if upto.index <= state.applied {
            return self.purge_now(upto);
        }
        state.deferred = state.deferred.max(Some(upto));
        Ok(())
    }

    fn purge_now(&self, upto: LogId) -> std::io::Result<()> {
        let marker = postcard::to_stdvec(&upto).map_err(std::io::Error::other)?;
        self.raft
            .insert(PURGED_KEY, marker)
            .map_err(std::io::Error::other)?;
        self.shared.make_durable()?;
        self.wal.purge(upto.index)
    }
}

/// The log store openraft drives. Cheap to clone: clones share one log and
/// one flusher thread.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    /// The gate's log: one `Wal` serves appends, reads and purges.
    pub(super) wal: Arc<Wal>,
    raft: sled::Tree,
    pub(super) purges: Arc<PurgeGate>,
    flusher: Arc<Flusher>,
    stats: Arc<FlushStats>,
}

/// The flusher thread and the queue into it. Dropping the last handle
/// closes the queue and waits for the thread, so the log is closed once
/// every `LogStore` is gone (and can be reopened at once).
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

/// An appended batch waiting for the sync that makes it durable.
struct PendingFlush {
    last_index: u64,
    done: LogFlushed<TypeConfig>,
}

impl LogStore {
    pub(super) fn open(shared: Arc<Shared>, raft: sled::Tree, purges: Arc<PurgeGate>) -> LogStore {
        let stats = Arc::new(FlushStats {
            flushes: shared.metrics.log_flushes.clone(),
            appends: shared.metrics.log_appends.clone(),
            durable_index: AtomicU64::default(),
        });
        let wal = purges.wal.clone();
        let (queue, pending) = mpsc::channel();
        let (flusher_shared, flusher_wal, flusher_stats) =
            (shared.clone(), wal.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("raftset-log-flush".into())
            .spawn(move || run_flusher(&flusher_shared, &flusher_wal, &flusher_stats, pending))
            .expect("spawning the log flusher thread");
        LogStore {
            shared,
            wal,
            raft,
            purges,
            flusher: Arc::new(Flusher {
                queue: Some(queue),
                thread: Some(thread),
            }),
            stats,
        }
    }

    pub fn stats(&self) -> Arc<FlushStats> {
        self.stats.clone()
    }

    pub fn size(&self) -> LogSize {
        self.wal.size()
    }

    fn read_value<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        read_value(&self.raft, key).map_err(|e| StorageIOError::read(&e).into())
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
    /// itself at once ([`LogStore::stand_down`] runs after this). The entry
    /// is synced here, the vote and the mark are not: the caller flushes
    /// sled next, so neither is ever durable without the entry.
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
        let bytes =
            postcard::to_stdvec(&entry).map_err(|e| StorageIOError::write_log_entry(log_id, &e))?;
        self.wal
            .append(&[(log_id.index, bytes)])
            .and_then(|()| self.wal.sync())
            .map_err(|e| StorageIOError::write_log_entry(log_id, &e))?;
        self.write_value(VOTE_KEY, &Vote::new_committed(term, id))?;
        self.write_value(COMMITTED_KEY, &Some(log_id))?;
        Ok(log_id)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let Some((_, last)) = self.wal.bounds() else {
            return Ok(None);
        };
        let entries = self.read_entries(last, last + 1, usize::MAX)?;
        Ok(entries.last().map(|entry| *entry.get_log_id()))
    }

    fn read_entries(
        &self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let payloads = self
            .wal
            .read(start, end, max_bytes)
            .map_err(|e| StorageIOError::read_logs(&self.shared.io_error("reading the log", e)))?;
        payloads
            .iter()
            .map(|bytes| {
                postcard::from_bytes(bytes).map_err(|e| StorageIOError::read_logs(&e).into())
            })
            .collect()
    }
}

fn read_value<T: DeserializeOwned>(
    raft: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, std::io::Error> {
    let Some(bytes) = raft.get(key).map_err(std::io::Error::other)? else {
        return Ok(None);
    };
    postcard::from_bytes(&bytes)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// Waits for appended batches and syncs once for all that are waiting,
/// then reports each durable. Ends when every `LogStore` is dropped.
fn run_flusher(
    shared: &Shared,
    wal: &Wal,
    stats: &FlushStats,
    pending: mpsc::Receiver<PendingFlush>,
) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        let started = std::time::Instant::now();
        let result = wal.sync();
        if result.is_ok() {
            shared
                .metrics
                .fsync
                .observe(started.elapsed().as_secs_f64());
            let last = batch.iter().map(|p| p.last_index).max().unwrap_or(0);
            stats.durable_index.fetch_max(last, Ordering::SeqCst);
            stats.flushes.inc();
            stats.appends.inc_by(batch.len() as u64);
        }
        for waiting in batch {
            let outcome = match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(shared.io_error("syncing the log", e)),
            };
            waiting.done.log_io_completed(outcome);
        }
    }
}

/// `start..end` of a range of log indexes.
fn index_range(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    /// At most [`MAX_APPEND_BYTES`] of entries, and always at least one:
    /// openraft gives each AppendEntries one heartbeat interval, the
    /// follower's sync included, so a batch is bounded by its size, not
    /// only by its count.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(start, end, MAX_APPEND_BYTES)
    }

    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = index_range(&range);
        self.read_entries(start, end, usize::MAX)
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

    /// Never past the log's last entry: the hint reaches disk with any sled
    /// flush, the entries only with the log's own sync, and a crash between
    /// the two must not leave openraft a commit index with nothing under it.
    /// Every entry up to the last durable one is committed if the hint is
    /// beyond it: the hint was written when the log held the committed
    /// entry, and what a crash keeps of the log is a prefix of that.
    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self.read_value::<Option<LogId>>(COMMITTED_KEY)?.flatten();
        let last = self.last_entry_log_id()?;
        Ok(match (committed, last) {
            (Some(committed), Some(last)) if last.index < committed.index => Some(last),
            (Some(_), None) => self.read_value(PURGED_KEY)?,
            _ => committed,
        })
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
        let mut records = Vec::new();
        for entry in entries {
            let log_id = *entry.get_log_id();
            let bytes = postcard::to_stdvec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(log_id, &e))?;
            records.push((log_id.index, bytes));
        }
        let Some(&(last_index, _)) = records.last() else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        crate::failpoint::io_error_point("log-append-io-error")
            .and_then(|()| self.wal.append(&records))
            .map_err(|e| {
                StorageIOError::write_logs(&self.shared.io_error("appending to the log", e))
            })?;
        crate::failpoint::crash_point("log-append-before-flush");
        self.flusher
            .queue
            .as_ref()
            .expect("the queue lives as long as the flusher")
            .send(PendingFlush {
                last_index,
                done: callback,
            })
            .map_err(|_| {
                StorageIOError::write_logs(&std::io::Error::other("log flusher stopped"))
            })?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wal.truncate(log_id.index).map_err(|e| {
            StorageIOError::write_logs(&self.shared.io_error("truncating the log", e)).into()
        })
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.purges.request(log_id).map_err(|e| {
            StorageIOError::write_logs(&self.shared.io_error("purging the log", e)).into()
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::store::{Store, StoreOptions};

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 0), index)
    }

    fn bounds(gate: &PurgeGate) -> Option<(u64, u64)> {
        gate.wal.bounds()
    }

    /// openraft purges the log a received snapshot covers before the state
    /// machine has switched to it: the purge waits until the state machine
    /// has applied that far, so no crash can leave a log that starts above
    /// the state.
    #[test]
    fn a_purge_waits_until_the_state_machine_has_applied_what_it_removes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let gate = &store.log.purges;
        let entries: Vec<_> = (1..=6).map(|i| (i, b"entry".to_vec())).collect();
        gate.wal.append(&entries).unwrap();
        gate.applied(2).unwrap();

        gate.request(log_id(2)).unwrap();
        assert_eq!(
            gate.purged().unwrap(),
            Some(log_id(2)),
            "applied, so purged at once"
        );
        assert_eq!(bounds(gate), Some((3, 6)));

        gate.request(log_id(5)).unwrap();
        assert_eq!(
            gate.purged().unwrap(),
            Some(log_id(2)),
            "5 is not applied yet"
        );
        assert_eq!(bounds(gate), Some((3, 6)));
        gate.applied(4).unwrap();
        assert_eq!(bounds(gate), Some((3, 6)), "applied 4 of the 5 it removes");

        gate.applied(5).unwrap();
        assert_eq!(gate.purged().unwrap(), Some(log_id(5)));
        assert_eq!(bounds(gate), Some((6, 6)));
        gate.applied(6).unwrap();
        assert_eq!(gate.purged().unwrap(), Some(log_id(5)), "a purge runs once");
    }

    /// The size the log reports is the bytes of the entries it holds,
    /// through appends that replace entries, truncations and purges, and
    /// the same when the store is opened again.
    #[tokio::test]
    async fn the_log_size_follows_appends_truncations_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let (wal, size) = (&store.log.wal, store.log.size());
        let entries: Vec<_> = (1..=10).map(|i| (i, vec![0; 100])).collect();
        wal.append(&entries).unwrap();
        assert_eq!(size.bytes(), 1_000);
        wal.append(&[(10, vec![0; 300])]).unwrap();
        assert_eq!(size.bytes(), 1_200, "a replaced entry counts once");

        wal.truncate(9).unwrap();
        assert_eq!(size.bytes(), 800, "truncated from 9 on");
        // A purge waits for the state machine (and a reopened store refuses
        // a state behind its purged log).
        let blanks = (1..=8).map(|index| Entry {
            log_id: log_id(index),
            payload: openraft::EntryPayload::Blank,
        });
        store.state_machine.apply(blanks).await.unwrap();
        store.log.purges.request(log_id(3)).unwrap();
        assert_eq!(size.bytes(), 500, "purged up to 3");
        wal.sync().unwrap();
        drop(store);

        let options = StoreOptions::default();
        let store = Store::open(dir.path(), &options).unwrap();
        assert_eq!(store.log.size().bytes(), 500, "counted again on opening");
    }
}
