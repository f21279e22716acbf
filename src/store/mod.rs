//! Storage: the Raft log in segment files, the vote and the node's
//! metadata in one sled database, the state machine in another, snapshot
//! files beside them, all under the node's data directory.
//!
//! Layout:
//! - `<data_dir>/wal/`: the log's entries, append-only segment files (see
//!   [`wal`] for the record format)
//! - `<data_dir>/db`, the metadata database:
//!   - tree `raft`: the vote, the committed and purged log ids, this node's
//!     id and the cluster id (and the one before a forced re-founding)
//!   - tree `sm_current`: which state database is current
//! - `<data_dir>/state-<random>/`, the current state database: tree `sm`,
//!   the state machine, see [`keys`] for its key prefixes. A snapshot
//!   install or a defrag fills a fresh one and switches to it, so the
//!   old file goes back to the volume (see `state_machine::defrag`)
//! - `<data_dir>/snapshots/`: the latest snapshot file
//! - `<data_dir>/DISCARD`, `<data_dir>/REFOUND`: what the next start does
//!   to the directory first (empty it; re-found the cluster, see [`refound`])
//!
//! What is made durable when (sled writes to its page cache until flushed):
//! - an appended batch of log entries is reported durable to openraft only
//!   after an fdatasync of its segment. One flusher thread syncs once for
//!   every append that queued up while the previous sync ran (group
//!   commit), so concurrent writes share fsyncs. It syncs nothing but the
//!   appended records;
//! - a vote is flushed (both databases) before `save_vote` returns;
//! - a truncation is synced before it returns;
//! - applying entries is not flushed by itself: applied state is recovered by
//!   re-applying the durable log. sled is flushed when a snapshot is taken
//!   or installed, and again before a purge deletes any segment, so the log
//!   always reaches back to the durable applied state (a state found behind
//!   it, which sled's recovery makes of a damaged record without an error,
//!   is refused at open). The commit hint may
//!   reach disk ahead of the entries; it is read back no further than they;
//! - a snapshot file is fsynced (with its directory) before it is used;
//! - a re-founding is flushed (new cluster id last) before its `REFOUND`
//!   file is removed.
//!
//! A failed write or flush is fatal: it is logged with the data directory and
//! returned to openraft, which stops the node; nothing is acknowledged.

mod database;
pub mod keys;
mod log;
mod refound;
pub mod snapshot;
pub mod state_machine;
mod wal;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use database::Database;
use log::PurgeGate;
pub use log::{FlushStats, LogStore};
pub use refound::Refounding;
pub use state_machine::{DefragPolicy, KvReader, StateMachine, WatchFeed};
pub use wal::LogSize;

use crate::metrics::{StoreMetrics, Volume};
use crate::types::NodeId;

use keys::{CLUSTER_ID_KEY, NODE_ID_KEY, RESTORED_KEY};
/// A file whose presence makes the next start empty the data directory.
const DISCARD_MARKER: &str = "DISCARD";
/// The directory of the Raft log's segment files, see [`wal`].
const WAL_DIR: &str = "wal";
/// The metadata database holds a few small records: a small cache.
const META_CACHE_BYTES: u64 = 4 << 20;

/// Failure to open or use the data directory. Always fatal for the node.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open data directory {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("data directory {path} is corrupted: {detail}")]
    Corrupted { path: PathBuf, detail: String },
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sled on {path}: {source}")]
    Sled { path: PathBuf, source: sled::Error },
}

impl StoreError {
    /// The log store's error (openraft's type) from work done on the data
    /// directory at `path` outside openraft, before it starts.
    fn log(path: &Path, err: openraft::StorageError<crate::types::NodeId>) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(err.to_string()),
        }
    }
}

impl From<StoreError> for crate::error::ClusterError {
    fn from(err: StoreError) -> Self {
        crate::error::ClusterError::Storage(err.to_string())
    }
}

/// Tuning for the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// How much change history Watch can replay: revisions, and bytes of
    /// history records and the values they need (the newest entry's is
    /// always kept).
    pub history_revisions: u64,
    pub history_bytes: u64,
    /// Capacity of the live change feed for watchers.
    pub watch_buffer: usize,
    /// When the state database is copied into a fresh one.
    pub defrag: DefragPolicy,
    /// Where fsyncs, applies, snapshots and log flushes are recorded.
    pub metrics: StoreMetrics,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 64 * 1024 * 1024,
            history_revisions: 10_000,
            history_bytes: 64 * 1024 * 1024,
            watch_buffer: 1024,
            defrag: DefragPolicy::default(),
            metrics: StoreMetrics::default(),
        }
    }
}

/// An opened data directory: the parts openraft takes over, and the handle
/// the node keeps to the rest.
pub struct Store {
    pub node_id: NodeId,
    pub log: LogStore,
    pub state_machine: StateMachine,
    pub meta: Meta,
}

impl Store {
    /// Opens (or creates) the data directory. An empty directory gets a fresh
    /// random node id, stored before anything else. A directory marked for
    /// discarding (see [`Meta::mark_for_discard`]) is emptied first; one
    /// marked for re-founding ([`Meta::mark_for_refounding`]) is re-founded
    /// before openraft sees it.
    pub fn open(data_dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let path = data_dir.to_path_buf();
        let db_path = path.join("db");
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        let marker = path.join(DISCARD_MARKER);
        if let Ok(reason) = std::fs::read_to_string(&marker) {
            tracing::warn!(path = %path.display(), "discarding the data directory: {}", reason.trim());
            let state_dirs = state_machine::state_dirs(&path).map_err(io_err(&path))?;
            let dirs = [db_path.clone(), path.join(WAL_DIR), path.join("snapshots")];
            for dir in dirs.into_iter().chain(state_dirs) {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
                }
            }
            std::fs::remove_file(&marker).map_err(io_err(&marker))?;
        }
        let meta_db = Database::open(&db_path, META_CACHE_BYTES)?;
        let state_db = state_machine::open_current(&meta_db, &path, options.cache_bytes)?;
        let sled_err = |source| meta_db.sled_err(source);
        let raft_tree = meta_db.db.open_tree("raft").map_err(sled_err)?;
        let shared = Arc::new(Shared {
            meta: meta_db.clone(),
            state: Mutex::new(state_db),
            path: path.clone(),
            metrics: options.metrics.clone(),
            measured: Arc::default(),
            wal_bytes: Arc::default(),
        });
        let meta = Meta {
            shared: shared.clone(),
            raft_tree: raft_tree.clone(),
        };
        let node_id = match raft_tree.get(NODE_ID_KEY).map_err(sled_err)? {
            Some(bytes) => decode_u64(&bytes).ok_or_else(|| StoreError::Corrupted {
                path: db_path.clone(),
                detail: "node id is not 8 bytes".into(),
            })?,
            None => {
                // Never 0, so an id printed anywhere is obviously assigned.
                let id = (rand::random::<u64>() >> 1) | 1;
                raft_tree
                    .insert(NODE_ID_KEY, &id.to_be_bytes())
                    .map_err(sled_err)?;
                meta.make_durable()?;
                id
            }
        };
        let log_size = LogSize::from(options.metrics.log_bytes.clone());
        let purges = Arc::new(
            PurgeGate::open(shared.clone(), raft_tree.clone(), log_size).map_err(|source| {
                StoreError::Io {
                    path: path.join(WAL_DIR),
                    source,
                }
            })?,
        );
        let state_machine = StateMachine::open(shared.clone(), options, purges.clone())?;
        let log = LogStore::open(shared, raft_tree, purges);
        refound::finish(node_id, &log, &meta)?;
        log.stand_down(node_id)
            .map_err(|e| StoreError::log(&path, e))?;
        Ok(Store {
            node_id,
            log,
            state_machine,
            meta,
        })
    }
}

/// What a restore put into a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub keys: u64,
    pub revision: u64,
    /// The log index the backup was taken at, in the old cluster.
    pub backup_index: u64,
}

/// Seeds an empty data directory with a backup (a snapshot file from
/// `raftset backup`), for a node that then founds a new cluster holding
/// that data. The backup is checked whole first; the old cluster's
/// membership and log position are left behind.
pub fn restore(
    data_dir: &Path,
    backup: &Path,
    options: &StoreOptions,
) -> Result<Restored, StoreError> {
    ensure_empty(data_dir)?;
    restore_checked(data_dir, backup, options)
}

/// Reads a backup file whole (framing and checksum) without restoring it
/// and gives the log index it was taken at: a backup that would not
/// restore is refused while it can still be taken again.
pub fn check_backup(file: &mut std::fs::File) -> std::io::Result<u64> {
    Ok(snapshot::verify(file)?.last_log_id.map_or(0, |l| l.index))
}

/// [`restore`] from a stream (standard input). The stream is spooled into
/// the data directory itself, the one place a read-only container can
/// write, and removed once restored.
pub fn restore_from_stream(
    data_dir: &Path,
    mut stream: impl std::io::Read,
    options: &StoreOptions,
) -> Result<Restored, StoreError> {
    ensure_empty(data_dir)?;
    let spool = data_dir.join(RESTORE_SPOOL);
    let io_err = |source| StoreError::Io {
        path: spool.clone(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io_err)?;
    let mut file = std::fs::File::create(&spool).map_err(io_err)?;
    std::io::copy(&mut stream, &mut file).map_err(io_err)?;
    drop(file);
    let restored = restore_checked(data_dir, &spool, options);
    let _ = std::fs::remove_file(&spool);
    restored
}

/// Where [`restore_from_stream`] spools the backup.
const RESTORE_SPOOL: &str = "restore-spool.db";

fn ensure_empty(data_dir: &Path) -> Result<(), StoreError> {
    if std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(StoreError::Io {
            path: data_dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the data directory is not empty; restore only into an empty one",
            ),
        });
    }
    Ok(())
}

fn restore_checked(
    data_dir: &Path,
    backup: &Path,
    options: &StoreOptions,
) -> Result<Restored, StoreError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    let mut file = std::fs::File::open(backup).map_err(io_err(backup))?;
    let meta = snapshot::verify(&mut file).map_err(io_err(backup))?;
    let mut store = Store::open(data_dir, options)?;
    let restored = store
        .state_machine
        .import(snapshot::records(&mut file).map_err(io_err(backup))?)
        .map_err(io_err(backup))?;
    store
        .meta
        .raft_tree
        .insert(RESTORED_KEY, &[1u8])
        .map_err(|e| store.meta.sled_err(e))?;
    store.meta.make_durable()?;
    Ok(Restored {
        backup_index: meta.last_log_id.map_or(0, |l| l.index),
        ..restored
    })
}

/// The node's handle on its data directory once openraft owns the log and
/// the state machine.
#[derive(Clone)]
pub struct Meta {
    shared: Arc<Shared>,
    raft_tree: sled::Tree,
}

impl Meta {
    /// The cluster this data belongs to, once the node founded or joined one.
    pub fn cluster_id(&self) -> Result<Option<String>, StoreError> {
        self.text(CLUSTER_ID_KEY)
    }

    /// A text value of the `raft` tree.
    fn text(&self, key: &[u8]) -> Result<Option<String>, StoreError> {
        let value = self.raft_tree.get(key).map_err(|e| self.sled_err(e))?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records (durably) the cluster this data belongs to.
    pub fn set_cluster_id(&self, cluster_id: &str) -> Result<(), StoreError> {
        self.raft_tree
            .insert(CLUSTER_ID_KEY, cluster_id.as_bytes())
            .map_err(|e| self.sled_err(e))?;
        self.make_durable()
    }

    /// Whether this directory was restored from a backup and the new
    /// cluster has not yet made that data its first snapshot.
    pub fn is_restored(&self) -> Result<bool, StoreError> {
        Ok(self
            .raft_tree
            .get(RESTORED_KEY)
            .map_err(|e| self.sled_err(e))?
            .is_some())
    }

    /// Records that the restored data is now in a snapshot.
    pub fn clear_restored(&self) -> Result<(), StoreError> {
        self.raft_tree
            .remove(RESTORED_KEY)
            .map_err(|e| self.sled_err(e))?;
        self.make_durable()
    }

    /// Makes the next start discard this directory's state (the node was
    /// removed from its cluster while away), durably, saying why.
    pub fn mark_for_discard(&self, reason: &str) -> Result<(), StoreError> {
        use std::io::Write;
        let path = self.shared.path.join(DISCARD_MARKER);
        let io_err = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::create(&path).map_err(io_err)?;
        writeln!(file, "{reason}").map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        std::fs::File::open(&self.shared.path)
            .and_then(|dir| dir.sync_all())
            .map_err(io_err)
    }

    fn make_durable(&self) -> Result<(), StoreError> {
        self.shared.make_durable().map_err(|source| StoreError::Io {
            path: self.shared.path.clone(),
            source,
        })
    }

    /// Gives up the database after a failed write: it is never dropped, so
    /// never flushed again. sled's drop flushes, and a flush after a failed
    /// one (a full disk) blocks forever, which would keep a dead node's
    /// process from exiting. What is on disk is what the last successful
    /// flush made durable, exactly what a crash leaves.
    pub fn abandon(&self) {
        std::mem::forget(self.shared.clone());
    }

    /// The size of the data directory's volume and the bytes free on it.
    pub fn volume(&self) -> std::io::Result<Volume> {
        let stat = rustix::fs::statvfs(&self.shared.path)?;
        Ok(Volume {
            size_bytes: stat.f_blocks.saturating_mul(stat.f_frsize),
            free_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
        })
    }

    /// Bytes the log's segments and sled use on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.disk_usage().bytes()
    }

    /// A handle that measures the database's size, for the space quota.
    pub fn disk_usage(&self) -> DiskUsage {
        DiskUsage {
            path: self.shared.path.clone(),
            measured: self.shared.measured.clone(),
            wal_bytes: self.shared.wal_bytes.clone(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn sled_err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.shared.path.clone(),
            source,
        }
    }
}

/// Measures the log's segment files and the sled databases on disk (the
/// vote; the state machine with its watch history and request ids, and a
/// defragmented copy of it while one is made). Snapshot files beside them are
/// not counted.
#[derive(Clone, Debug)]
pub struct DiskUsage {
    path: PathBuf,
    measured: Arc<Mutex<Option<Measured>>>,
    wal_bytes: Arc<AtomicU64>,
}

/// The last measurement, and when it was taken.
type Measured = (tokio::time::Instant, u64);

/// How long a measurement stands for the size. The quota asks on every
/// write that adds data, and measuring stats the data file and every blob
/// file: at most ten measurements a second, whatever the write rate, for at
/// most a tenth of a second's writes past the quota.
const MEASURE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl DiskUsage {
    /// Bytes the log's segments take, plus sled's files as measured within
    /// the last [`MEASURE_EVERY`] (0 when they cannot be read).
    pub fn bytes(&self) -> u64 {
        let mut measured = self.measured.lock().unwrap_or_else(|e| e.into_inner());
        let sled = match *measured {
            Some((at, bytes)) if at.elapsed() < MEASURE_EVERY => bytes,
            _ => {
                let bytes = sled_bytes(&self.path);
                *measured = Some((tokio::time::Instant::now(), bytes));
                bytes
            }
        };
        sled + self.wal_bytes.load(Ordering::Relaxed)
    }
}

/// What the log and the state machine share: the databases and where
/// they are.
struct Shared {
    /// The vote, the log's markers, the node and cluster ids, and which
    /// state database is current.
    meta: Database,
    /// The state machine's current database: replaced when a snapshot is
    /// installed or the state is defragmented.
    state: Mutex<Database>,
    path: PathBuf,
    metrics: StoreMetrics,
    /// [`DiskUsage`]'s last measurement, shared by every handle.
    measured: Arc<Mutex<Option<Measured>>>,
    /// Bytes of the log's segment files, kept by [`wal::Wal`].
    wal_bytes: Arc<AtomicU64>,
}

impl Shared {
    /// Makes every write so far durable, in the state and the metadata.
    fn make_durable(&self) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        self.state_db().sync()?;
        self.meta.sync()?;
        self.metrics.fsync.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn state_db(&self) -> Database {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn io_error(&self, what: &str, err: impl std::fmt::Display) -> std::io::Error {
        tracing::error!(path = %self.path.display(), "{what} failed: {err}");
        std::io::Error::other(format!("{what} on {}: {err}", self.path.display()))
    }
}

/// Bytes of the files of the metadata database and of every state database
/// in `data_dir` (with their blob files).
fn sled_bytes(data_dir: &Path) -> u64 {
    let files_in = |dir: &Path| -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter_map(|entry| entry.metadata().ok())
            .filter(|meta| meta.is_file())
            .map(|meta| meta.len())
            .sum()
    };
    let state_dirs = state_machine::state_dirs(data_dir).unwrap_or_default();
    std::iter::once(data_dir.join("db"))
        .chain(state_dirs)
        .map(|dir| files_in(&dir) + files_in(&dir.join("blobs")))
        .sum()
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests;
