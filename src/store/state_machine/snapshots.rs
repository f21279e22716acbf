//! Snapshots of the state machine: dumping the whole tree into a snapshot
//! file, installing one received from the leader, and loading a backup
//! into an empty data directory.
//!
//! Installing fills a fresh tree, copies the snapshot file, and then
//! switches the pointer to the tree, so a crash mid-install leaves the old
//! state intact; the log purge that comes with the snapshot waits for the
//! switch (see `store::log::PurgeGate`). A dump is made durable before
//! openraft may purge the log below it.

use openraft::{RaftSnapshotBuilder, StorageIOError};

use super::apply::encode;
use super::feed::FeedItem;
use super::read::{read_revision, read_value};
use super::StateMachine;
use crate::store::keys::{APPLIED, KEY, MEMBERSHIP, POINTER_KEY, REDO};
use crate::store::snapshot;
use crate::store::Restored;
use crate::types::{LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

impl StateMachine {
    /// Writes the whole tree to a new current snapshot file.
    pub(super) fn dump(&self) -> std::io::Result<()> {
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

    pub(super) fn current_snapshot(&self) -> std::io::Result<Option<Snapshot>> {
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
    pub(in crate::store) fn import<I>(&self, records: I) -> std::io::Result<Restored>
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
        batch.insert(APPLIED, encode(&meta.last_log_id));
        batch.insert(MEMBERSHIP, encode(&meta.last_membership));
        fresh.apply_batch(batch).map_err(std::io::Error::other)?;
        self.shared.make_durable()?;
        crate::failpoint::crash_point("snapshot-install-filled");
        // The file first, the switch second: a crash between them leaves a
        // snapshot ahead of the state, which `open` writes again; the other
        // order would leave a log purge with no snapshot that covers it.
        self.snapshots.install_copy(&mut file)?;
        crate::failpoint::crash_point("snapshot-install-copied");
        self.pointer
            .insert(POINTER_KEY, name.as_bytes())
            .map_err(std::io::Error::other)?;
        self.shared.make_durable()?;
        crate::failpoint::crash_point("snapshot-install-switched");
        let old = std::mem::replace(
            &mut *self.current.write().expect("state machine lock"),
            fresh,
        );
        let revision = meta.last_log_id.map(|id| id.index).unwrap_or(0);
        // Only now may the purge openraft asked for with this snapshot run.
        self.purges
            .applied(revision)
            .map_err(std::io::Error::other)?;
        self.shared
            .db
            .drop_tree(old.name())
            .map_err(std::io::Error::other)?;
        self.feed.send(FeedItem::Reset { revision });
        Ok(())
    }
}

/// Snapshots are written when the builder is made, while the state machine
/// is not applying, so the file is one consistent point in the log.
pub struct SnapshotBuilder {
    pub(super) written: std::io::Result<Option<Snapshot>>,
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
