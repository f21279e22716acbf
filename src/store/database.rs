//! One sled database on disk: opened the same way for the node's metadata
//! and for each state database, and made durable the way sled alone does
//! not. Knows nothing of what the trees hold.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::StoreError;

/// Bytes written in bulk (a snapshot file, a database being filled) between
/// two syncs. A copy of a large state otherwise leaves hundreds of MB dirty
/// until its final sync, and their writeback holds up the log's own
/// fdatasync on the same disk: with 300,000 keys and every member copying a
/// snapshot, the longest put took 169–190 ms without these syncs and
/// 101–108 ms with them (`bench/` `--scale`).
pub(super) const SYNC_EVERY: u64 = 8 << 20;

/// Counts bytes written in bulk and says when `every` of them are due a
/// sync: the snapshot file's writer and a defrag's copy both pace theirs
/// with it.
pub(super) struct SyncPacer {
    every: u64,
    /// Bytes written since the last sync.
    pub(super) unsynced: u64,
}

impl SyncPacer {
    pub(super) fn new(every: u64) -> SyncPacer {
        SyncPacer { every, unsynced: 0 }
    }

    /// Counts `bytes` more; whether a sync is due now (the count then
    /// starts again).
    pub(super) fn wrote(&mut self, bytes: u64) -> bool {
        self.unsynced += bytes;
        if self.unsynced < self.every {
            return false;
        }
        self.unsynced = 0;
        true
    }
}

/// An open sled database and the directory it lives in.
#[derive(Clone)]
pub(super) struct Database {
    pub(super) db: sled::Db,
    /// sled's data file, opened again only to fdatasync it.
    file: Arc<std::fs::File>,
    pub(super) dir: PathBuf,
}

impl Database {
    /// Opens (or creates) the database in `dir`, with `cache_bytes` of page
    /// cache and no flusher thread: the store decides when it is flushed.
    pub(super) fn open(dir: &Path, cache_bytes: u64) -> Result<Database, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None);
        // sled 0.34 panics, instead of failing, on many kinds of damage to
        // its files; a damaged volume must give an error that names it.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
            .map_err(|panic| StoreError::Corrupted {
                path: dir.to_path_buf(),
                detail: format!(
                    "sled could not recover its files: {}",
                    panic_message(panic.as_ref())
                ),
            })?;
        let db = opened.map_err(|source| match source {
            sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => StoreError::Corrupted {
                path: dir.to_path_buf(),
                detail: source.to_string(),
            },
            source => StoreError::Open {
                path: dir.to_path_buf(),
                source,
            },
        })?;
        let data_file = dir.join("db");
        let file = std::fs::File::open(&data_file).map_err(|source| StoreError::Io {
            path: data_file,
            source,
        })?;
        Ok(Database {
            db,
            file: Arc::new(file),
            dir: dir.to_path_buf(),
        })
    }

    /// Makes every write so far durable. sled's flush writes its buffers
    /// but syncs them with `sync_file_range`, which neither flushes the
    /// device's write cache nor covers values sled keeps in separate blob
    /// files; an fdatasync of its data file (and a sync of the whole file
    /// system while blob files exist) closes both gaps.
    pub(super) fn sync(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        self.file.sync_data()?;
        let blobs = self.dir.join("blobs");
        let has_blobs = std::fs::read_dir(&blobs).is_ok_and(|mut entries| entries.next().is_some());
        if has_blobs {
            rustix::fs::syncfs(&*self.file)?;
        }
        Ok(())
    }

    /// Bytes sled's files take (0 when they cannot be read).
    pub(super) fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    pub(super) fn sled_err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.dir.clone(),
            source,
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
