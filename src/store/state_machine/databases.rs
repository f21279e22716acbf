//! Which sled database holds the current state, and replacing it.
//!
//! The state lives in a database of its own, `<data_dir>/state-<random>/`,
//! so that replacing the state (a snapshot install, a defrag) replaces
//! a whole file, and the old one goes back to the volume. The metadata
//! database's pointer tree names the current one; a state database it does
//! not name is what an install or a defrag left when it stopped half-way,
//! and is removed at start-up. A data directory from before state databases
//! kept the state as a tree of the metadata database: it is moved into a
//! state database of its own when the store opens.

use std::path::{Path, PathBuf};

use super::super::database::Database;
use super::super::keys::{FIRST_TREE, POINTER_KEY, POINTER_TREE};
use super::super::StoreError;

/// Every state database's directory name starts with this.
const STATE_DIR_PREFIX: &str = "state-";

/// The tree of a state database that holds the state.
pub(super) const STATE_TREE: &[u8] = FIRST_TREE;

/// The directories of the state databases in `data_dir`, current or not.
pub(in crate::store) fn state_dirs(data_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry?;
        let named = entry
            .file_name()
            .to_string_lossy()
            .starts_with(STATE_DIR_PREFIX);
        if named && entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Opens the current state database of `data_dir`, creating the first one
/// for a new directory and moving an old directory's state tree into one;
/// removes the state databases and trees nothing names.
pub(in crate::store) fn open_current(
    meta: &Database,
    data_dir: &Path,
    cache_bytes: u64,
) -> Result<Database, StoreError> {
    let sled_err = |source| meta.sled_err(source);
    let pointer = meta.db.open_tree(POINTER_TREE).map_err(sled_err)?;
    let named = pointer.get(POINTER_KEY).map_err(sled_err)?;
    let current = match named {
        Some(name) if name.starts_with(STATE_DIR_PREFIX.as_bytes()) => {
            let dir = data_dir.join(String::from_utf8_lossy(&name).as_ref());
            if !dir.is_dir() {
                return Err(StoreError::Corrupted {
                    path: dir,
                    detail: "the state database the data directory names is missing".into(),
                });
            }
            Database::open(&dir, cache_bytes)?
        }
        old_tree => {
            let old_tree = old_tree.map_or(FIRST_TREE.to_vec(), |name| name.to_vec());
            let fresh = create(data_dir, cache_bytes)?;
            let has_state = meta.db.tree_names().iter().any(|n| n.as_ref() == old_tree);
            if has_state {
                tracing::info!(
                    path = %data_dir.display(),
                    "moving the state into a database of its own"
                );
                let old = meta.db.open_tree(&old_tree).map_err(sled_err)?;
                copy_tree(&old, &state_tree(&fresh)?).map_err(|e| fresh.sled_err(e))?;
            }
            fresh.sync().map_err(|source| StoreError::Io {
                path: fresh.dir.clone(),
                source,
            })?;
            point_to(&pointer, meta, &fresh).map_err(|source| StoreError::Io {
                path: meta.dir.clone(),
                source,
            })?;
            fresh
        }
    };
    remove_abandoned(meta, data_dir, &current)?;
    Ok(current)
}

/// Creates an empty state database with a new name in `data_dir`.
pub(super) fn create(data_dir: &Path, cache_bytes: u64) -> Result<Database, StoreError> {
    let dir = data_dir.join(format!("{STATE_DIR_PREFIX}{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
        path: dir.clone(),
        source,
    })?;
    Database::open(&dir, cache_bytes)
}

/// The tree of `db` that holds the state.
pub(super) fn state_tree(db: &Database) -> Result<sled::Tree, StoreError> {
    db.db.open_tree(STATE_TREE).map_err(|e| db.sled_err(e))
}

/// Makes `db` the current state database, durably. `db` must be durable
/// already: from here a restart opens it.
pub(super) fn point_to(
    pointer: &sled::Tree,
    meta: &Database,
    db: &Database,
) -> std::io::Result<()> {
    let name = db
        .dir
        .file_name()
        .ok_or_else(|| std::io::Error::other("a state database without a directory name"))?;
    pointer
        .insert(POINTER_KEY, name.to_string_lossy().as_bytes())
        .map_err(std::io::Error::other)?;
    meta.sync()
}

/// Removes a state database nothing points to any more. Handles to it
/// that are still open write to files no longer in any directory.
pub(super) fn remove(db: Database) {
    let dir = db.dir.clone();
    drop(db);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(path = %dir.display(), "cannot remove a replaced state database: {e}");
    }
}

/// Copies every record of `from` into `to`.
pub(super) fn copy_tree(from: &sled::Tree, to: &sled::Tree) -> sled::Result<()> {
    for item in from.iter() {
        let (key, value) = item?;
        to.insert(key, value)?;
    }
    Ok(())
}

/// Removes the state databases other than `current`, and the state trees
/// of the metadata database (from before state databases: all moved by
/// now, or left by an install that stopped before its switch).
fn remove_abandoned(
    meta: &Database,
    data_dir: &Path,
    current: &Database,
) -> Result<(), StoreError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    for dir in state_dirs(data_dir).map_err(io_err(data_dir))? {
        if dir != current.dir {
            tracing::info!(path = %dir.display(), "removing an abandoned state database");
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
    }
    for name in meta.db.tree_names() {
        if name.as_ref() == FIRST_TREE || name.starts_with(b"sm-") {
            tracing::info!(
                "dropping the old state tree {}",
                String::from_utf8_lossy(&name)
            );
            meta.db.drop_tree(&name).map_err(|e| meta.sled_err(e))?;
        }
    }
    Ok(())
}
