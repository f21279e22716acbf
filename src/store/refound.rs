//! Re-founding a cluster on this node's data after a majority of its
//! voters is lost for good (`raftset force-new-cluster`): this node becomes
//! the only voter of a new cluster, with a new cluster id, and keeps its
//! whole durable log.
//!
//! Two steps, each crash-safe:
//! 1. The running node, once the cluster layer checked that no quorum is
//!    reachable, writes the intent into the file `REFOUND` in the data
//!    directory (written aside, fsynced, linked into place, the directory
//!    fsynced), then restarts. Before the link the node is the old one;
//!    after it, every start completes the re-founding.
//! 2. [`finish`], on the next open and before openraft reads anything,
//!    appends a membership entry with this node alone after the last entry,
//!    under a committed vote of a new term (see `LogStore::append_sole_voter`),
//!    records the previous cluster id, and the new cluster id last; flushes;
//!    then removes `REFOUND`. sled recovers writes in order, so the new
//!    cluster id on disk means everything before it is too: a start that
//!    finds `REFOUND` and the new id only removes the file, and one that
//!    finds the old id does step 2 again (a half-written attempt leaves at
//!    most an entry that the next attempt's entry supersedes).
//!
//! The whole log is kept, not only what is known committed: an entry past
//! the commit index this node knew may have been committed (and its write
//! acknowledged) by a leader that is gone; one that was not was never
//! acknowledged, so committing it only settles a write whose client was
//! told the outcome is unknown.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::keys::{CLUSTER_ID_KEY, REFOUNDED_FROM_KEY};
use super::{LogStore, Meta, StoreError};
use crate::types::{Member, NodeId};

/// The file that records a re-founding under way.
const MARKER: &str = "REFOUND";

/// What a re-founding makes of this node's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refounding {
    /// The new cluster's id.
    pub cluster_id: String,
    /// The cluster the data belonged to.
    pub previous_cluster_id: String,
    /// This node, as the new membership lists it.
    pub member: Member,
}

impl Meta {
    /// Records, durably, that the next start re-founds the cluster on this
    /// data; false, changing nothing, when a re-founding is recorded
    /// already (one marker, placed by a link that fails if it exists, so two
    /// calls at once cannot both win). Once this returns true the
    /// re-founding cannot be undone.
    pub fn mark_for_refounding(&self, refounding: &Refounding) -> Result<bool, StoreError> {
        use std::io::Write;
        let dir = self.path();
        let path = dir.join(MARKER);
        let aside = dir.join(format!("{MARKER}.partial"));
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        let json = serde_json::to_vec(refounding).map_err(std::io::Error::other);
        let mut file = std::fs::File::create(&aside).map_err(io_err(&aside))?;
        file.write_all(&json.map_err(io_err(&aside))?)
            .and_then(|_| file.sync_all())
            .map_err(io_err(&aside))?;
        let placed = match std::fs::hard_link(&aside, &path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        std::fs::remove_file(&aside).map_err(io_err(&aside))?;
        sync_dir(dir)?;
        Ok(placed)
    }

    /// The re-founding recorded and not yet completed, if any.
    pub fn pending_refounding(&self) -> Result<Option<Refounding>, StoreError> {
        read_marker(&self.path().join(MARKER))
    }

    /// The cluster this data belonged to before a forced re-founding.
    pub fn refounded_from(&self) -> Result<Option<String>, StoreError> {
        self.text(REFOUNDED_FROM_KEY)
    }
}

/// Completes a re-founding recorded by [`Meta::mark_for_refounding`], if
/// any: called on open, before openraft reads the log.
pub(super) fn finish(
    node_id: NodeId,
    log: &LogStore,
    meta: &Meta,
) -> Result<Option<Refounding>, StoreError> {
    let path = meta.path().join(MARKER);
    let Some(refounding) = read_marker(&path)? else {
        return Ok(None);
    };
    if meta.cluster_id()?.as_deref() != Some(refounding.cluster_id.as_str()) {
        let entry = log
            .append_sole_voter(node_id, &refounding.member)
            .map_err(|e| StoreError::log(meta.path(), e))?;
        let sled_err = |e| meta.sled_err(e);
        meta.raft_tree
            .insert(
                REFOUNDED_FROM_KEY,
                refounding.previous_cluster_id.as_bytes(),
            )
            .map_err(sled_err)?;
        crate::failpoint::crash_point("refound-before-cluster-id");
        meta.raft_tree
            .insert(CLUSTER_ID_KEY, refounding.cluster_id.as_bytes())
            .map_err(sled_err)?;
        meta.make_durable()?;
        tracing::warn!(
            cluster_id = %refounding.cluster_id,
            previous_cluster_id = %refounding.previous_cluster_id,
            node_id, entry_index = entry.index,
            "re-founded: this node is the only voter of a new cluster, holding its whole log"
        );
    }
    crate::failpoint::crash_point("refound-before-marker-removed");
    std::fs::remove_file(&path).map_err(|source| StoreError::Io {
        path: path.clone(),
        source,
    })?;
    sync_dir(meta.path())?;
    Ok(Some(refounding))
}

fn read_marker(path: &Path) -> Result<Option<Refounding>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupted {
            path: path.to_path_buf(),
            detail: format!("unreadable re-founding record: {e}"),
        })
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })
}
