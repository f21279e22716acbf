//! Snapshots of the state machine: copying the state at one entry into a
//! snapshot file while later entries apply, installing one received from
//! the leader, and loading a backup into an empty data directory.
//!
//! Installing fills a fresh state database, copies the snapshot file, and
//! then switches the pointer to the database, so a crash mid-install leaves
//! the old state intact; the log purge that comes with the snapshot waits
//! for the switch (see `store::log::PurgeGate`). A copy is made durable before
//! openraft may purge the log below it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openraft::{RaftSnapshotBuilder, StorageIOError};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::OwnedMutexGuard;

use super::apply::encode;
use super::databases;
use super::feed::FeedItem;
use super::read::{read_revision, read_value};
use super::recent::RecentIds;
use super::{copy_below_serving, records_after, StateMachine};
use crate::store::database::Database;
use crate::store::keys::{is_redo, APPLIED, DATA_FORMAT, FORMAT, KEY, MEMBERSHIP};
use crate::store::snapshot;
use crate::store::snapshot::SnapshotDir;
use crate::store::{Restored, Shared};
use crate::types::{LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

impl StateMachine {
    /// Starts a snapshot of the state as it is now, between two entries.
    /// Entries applied from here on keep what they overwrite ahead of the
    /// copy (see [`Preimages`]), so the copy may run beside them.
    pub(super) fn begin_snapshot(
        &self,
        one_at_a_time: OwnedMutexGuard<()>,
    ) -> std::io::Result<SnapshotCopy> {
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
        *self.copying.lock().expect("snapshot copy lock") = Some(Preimages::default());
        Ok(SnapshotCopy {
            meta,
            tree,
            copying: self.copying.clone(),
            snapshots: self.snapshots.clone(),
            shared: self.shared.clone(),
            _one_at_a_time: one_at_a_time,
        })
    }

    /// Loads a backup's records into an empty state machine, leaving out the
    /// old cluster's applied log id and membership (the new cluster's log
    /// starts over; revisions, history and remembered requests carry on).
    pub(in crate::store) fn import<I>(&mut self, records: I) -> std::io::Result<Restored>
    where
        I: IntoIterator<Item = std::io::Result<(Vec<u8>, Vec<u8>)>>,
    {
        let tree = self.tree();
        let mut batch = sled::Batch::default();
        let mut keys = 0;
        for record in records {
            let (key, value) = record?;
            if key == APPLIED || key == MEMBERSHIP || is_redo(&key) {
                continue;
            }
            keys += u64::from(key.first() == Some(&KEY));
            batch.insert(key, value);
        }
        // A backup in an older format is in this one once loaded.
        batch.insert(FORMAT, &[DATA_FORMAT]);
        tree.apply_batch(batch).map_err(std::io::Error::other)?;
        self.shared.make_durable()?;
        self.recent = RecentIds::load(&tree).map_err(std::io::Error::other)?;
        let revision = read_revision(&tree).map_err(std::io::Error::other)?;
        Ok(Restored {
            keys,
            revision,
            backup_index: 0,
        })
    }

    /// Replaces the state with a snapshot file's records, once the whole
    /// file checked out.
    pub(super) fn install(
        &mut self,
        meta: &SnapshotMeta,
        mut file: std::fs::File,
    ) -> std::io::Result<()> {
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
        let parts = &self.defragger.parts;
        // Holds off a defrag's switch, and outdates its copy.
        let _applying = parts.applying.lock().unwrap_or_else(|e| e.into_inner());
        parts
            .installs
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let fresh = databases::create(&self.shared.path, parts.cache_bytes)
            .map_err(std::io::Error::other)?;
        let filled = fill(&fresh, meta, &mut file).and_then(|tree| {
            let recent = RecentIds::load(&tree).map_err(std::io::Error::other)?;
            fresh.sync()?;
            crate::failpoint::crash_point("snapshot-install-filled");
            // The file first, the switch second: a crash between them leaves a
            // snapshot ahead of the state, which `open` writes again; the other
            // order would leave a log purge with no snapshot that covers it.
            self.snapshots.install_copy(&mut file)?;
            crate::failpoint::crash_point("snapshot-install-copied");
            databases::point_to(&parts.pointer, &self.shared.meta, &fresh)?;
            crate::failpoint::crash_point("snapshot-install-switched");
            Ok((tree, recent))
        });
        let (tree, recent) = match filled {
            Ok(filled) => filled,
            Err(e) => {
                databases::remove(fresh);
                return Err(e);
            }
        };
        let old = parts.replace_state(fresh, tree);
        self.recent = recent;
        let revision = meta.last_log_id.map(|id| id.index).unwrap_or(0);
        // Only now may the purge openraft asked for with this snapshot run.
        self.purges
            .applied(revision)
            .map_err(std::io::Error::other)?;
        databases::remove(old);
        self.feed.send(FeedItem::Reset { revision });
        Ok(())
    }
}

/// Fills the state tree of `fresh` with a snapshot file's records and the
/// snapshot's applied log id and membership.
fn fill(
    fresh: &Database,
    meta: &SnapshotMeta,
    file: &mut std::fs::File,
) -> std::io::Result<sled::Tree> {
    let tree = databases::state_tree(fresh).map_err(std::io::Error::other)?;
    let mut batch = sled::Batch::default();
    let mut pending = 0;
    for record in snapshot::records(file)? {
        let (key, value) = record?;
        batch.insert(key, value);
        pending += 1;
        if pending == 10_000 {
            tree.apply_batch(std::mem::take(&mut batch))
                .map_err(std::io::Error::other)?;
            pending = 0;
        }
    }
    batch.insert(APPLIED, encode(&meta.last_log_id));
    batch.insert(MEMBERSHIP, encode(&meta.last_membership));
    batch.insert(FORMAT, &[DATA_FORMAT]);
    tree.apply_batch(batch).map_err(std::io::Error::other)?;
    Ok(tree)
}

/// The current snapshot file, opened for openraft to send or report.
pub(super) fn current_snapshot(snapshots: &SnapshotDir) -> std::io::Result<Option<Snapshot>> {
    let Some(meta) = snapshots.current_meta()? else {
        return Ok(None);
    };
    let file = std::fs::File::open(snapshots.current_path())?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(tokio::fs::File::from_std(file)),
    }))
}

/// A key and its value as the tree holds them.
type Record = (Vec<u8>, Vec<u8>);

/// How many records a copy reads before it marks them copied.
pub(super) const CHUNK_RECORDS: usize = 1024;

/// What a snapshot copy in progress needs from applying: the value each
/// key had when the snapshot began, for the keys that entries change
/// before the copy has marked them copied. Keys marked copied need
/// nothing: the copy read them before anything changed them.
#[derive(Default)]
pub(in crate::store) struct Preimages {
    /// The last key the copy has marked copied, `None` before its first
    /// chunk.
    copied_through: Option<Vec<u8>>,
    /// Key → its value when the snapshot began (`None`: it did not exist).
    before: HashMap<Vec<u8>, Option<sled::IVec>>,
}

impl Preimages {
    /// Keeps the present value of each of `keys` that the copy has not
    /// marked copied and that no earlier entry kept. Called with the state
    /// lock held alone, before an entry's writes reach `tree`.
    pub(super) fn keep<'k>(
        &mut self,
        tree: &sled::Tree,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> sled::Result<()> {
        for key in keys {
            let copied = self.copied_through.as_deref().is_some_and(|c| key <= c);
            if !copied && !self.before.contains_key(key) {
                self.before.insert(key.to_vec(), tree.get(key)?);
            }
        }
        Ok(())
    }
}

/// A snapshot of the state at one applied entry, copied into a snapshot
/// file while later entries apply, then the kept values of the keys they
/// changed first.
///
/// The copy reads a chunk of keys without any lock that applying takes,
/// so a copy thread that is preempted mid-chunk holds up no entry (at a
/// million keys, chunks read under the state lock held entries up for
/// 20 to 50 ms). Entries may land while it reads: it then marks the chunk
/// copied under the preimages' lock and drops every key that an entry
/// kept meanwhile, whatever value it read for it. Why that is the state
/// when the snapshot began, key by key: an entry that changed a key before
/// the mark kept its value first; one that changes it after the mark
/// writes after the copy read it.
pub(in crate::store) struct SnapshotCopy {
    meta: SnapshotMeta,
    /// The state tree when the copy began. Neither an install nor a
    /// defrag's switch replaces it while the copy holds its turn.
    tree: sled::Tree,
    copying: Arc<Mutex<Option<Preimages>>>,
    snapshots: SnapshotDir,
    shared: Arc<Shared>,
    /// Held until the copy ends: an install and a defrag's switch, which
    /// replace the tree, and the next snapshot wait for it.
    _one_at_a_time: OwnedMutexGuard<()>,
}

/// Records read past the copy's mark, not yet marked copied.
pub(in crate::store) struct Chunk(Vec<(sled::IVec, sled::IVec)>);

impl SnapshotCopy {
    /// Writes the snapshot file, makes it current and the state machine
    /// durable at least up to it (openraft purges the log below it next).
    pub(super) fn write(&self) -> std::io::Result<()> {
        self.snapshots.write(&self.meta, self.records())?;
        self.shared.make_durable()
    }

    pub(in crate::store) fn records(&self) -> impl Iterator<Item = std::io::Result<Record>> + '_ {
        let mut chunk = std::collections::VecDeque::new();
        let mut copied_all = false;
        std::iter::from_fn(move || loop {
            if let Some(record) = chunk.pop_front() {
                return Some(Ok(record));
            }
            if copied_all {
                return None;
            }
            match self.read_chunk() {
                Ok(Some(read)) => chunk.extend(self.mark_copied(read)),
                Ok(None) => {
                    copied_all = true;
                    chunk.extend(self.kept_values());
                }
                Err(e) => return Some(Err(e)),
            }
        })
    }

    /// The next chunk of keys after the copy's mark, read without a lock
    /// that applying takes; `None` past the last key.
    pub(in crate::store) fn read_chunk(&self) -> std::io::Result<Option<Chunk>> {
        let after = self
            .copying
            .lock()
            .expect("snapshot copy lock")
            .as_ref()
            .expect("a copy in progress has its preimages")
            .copied_through
            .clone();
        let read = records_after(&self.tree, after.map(sled::IVec::from), CHUNK_RECORDS)?;
        // Past the last key the mark stays put: keys created after it are
        // new since the snapshot began and kept as absent.
        Ok((!read.is_empty()).then_some(Chunk(read)))
    }

    /// Marks `chunk` copied; gives its records less those an entry changed
    /// since the snapshot began, whose kept values come at the end.
    pub(in crate::store) fn mark_copied(&self, Chunk(mut read): Chunk) -> Vec<Record> {
        let last = read.last().map(|(key, _)| key.to_vec());
        {
            let mut copying = self.copying.lock().expect("snapshot copy lock");
            let preimages = copying
                .as_mut()
                .expect("a copy in progress has its preimages");
            read.retain(|(key, _)| !is_redo(key) && !preimages.before.contains_key(key.as_ref()));
            preimages.copied_through = last;
        }
        read.into_iter()
            .map(|(key, value)| (key.to_vec(), value.to_vec()))
            .collect()
    }

    /// Ends the copy: the kept values of the keys that existed when the
    /// snapshot began.
    pub(in crate::store) fn kept_values(&self) -> Vec<Record> {
        let kept = self.copying.lock().expect("snapshot copy lock").take();
        kept.into_iter()
            .flat_map(|preimages| preimages.before)
            .filter_map(|(key, value)| Some((key, value?.to_vec())))
            .collect()
    }
}

impl Drop for SnapshotCopy {
    /// A copy that failed half-way stops applying from keeping values.
    fn drop(&mut self) {
        self.copying.lock().expect("snapshot copy lock").take();
    }
}

/// Copies the state into a snapshot file on a thread of its own, while the
/// state machine goes on applying.
pub struct SnapshotBuilder {
    pub(in crate::store) copy: Option<std::io::Result<SnapshotCopy>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let copy = self
            .copy
            .take()
            .unwrap_or_else(|| Err(std::io::Error::other("snapshot already taken")));
        let (done, written) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("raftset-snapshot".into())
            .spawn(move || {
                copy_below_serving();
                let _ = done.send(copy.and_then(write_and_open));
            });
        let written = match spawned {
            Ok(_) => written
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("the snapshot thread ended"))),
            Err(e) => Err(e),
        };
        written.map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

/// Writes `copy` out and opens the snapshot file it made current.
fn write_and_open(copy: SnapshotCopy) -> std::io::Result<Snapshot> {
    let started = std::time::Instant::now();
    copy.write()?;
    let (snapshots, shared) = (&copy.snapshots, &copy.shared);
    snapshot_taken(&shared.metrics.snapshot_build, started, snapshots, shared);
    current_snapshot(snapshots)?
        .ok_or_else(|| std::io::Error::other("the snapshot written is gone"))
}

/// Records how long a snapshot took to build or install (`took`), and its
/// size.
pub(super) fn snapshot_taken(
    took: &Histogram,
    started: std::time::Instant,
    snapshots: &SnapshotDir,
    shared: &Shared,
) {
    took.observe(started.elapsed().as_secs_f64());
    record_snapshot_size(snapshots, shared);
}

/// Sets the snapshot-size metric to the current snapshot file's size.
pub(super) fn record_snapshot_size(snapshots: &SnapshotDir, shared: &Shared) {
    if let Ok(file) = std::fs::metadata(snapshots.current_path()) {
        let bytes = i64::try_from(file.len()).unwrap_or(i64::MAX);
        shared.metrics.snapshot_bytes.set(bytes);
    }
}
