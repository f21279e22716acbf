//! Defragmenting: copying the live state into a fresh state database and
//! switching to it, so that sled's file follows the live data rather than
//! the writes ever made.
//!
//! sled 0.34 gives little of its file back: while its trees grow it
//! reclaims almost nothing, and under steady overwrites its file settles at
//! 15–30× the live records. A database filled once, in key order, takes
//! two to three times them. So when the state database has grown past
//! [`DefragPolicy`]'s bound, a thread copies the state into a fresh
//! database while entries go on applying:
//! - the copy reads the current tree in chunks, each under the state lock
//!   held shared, and writes each chunk into the fresh tree before it lets
//!   go, so no entry lands between reading a record and copying it;
//! - meanwhile every applied entry writes its whole write set to the fresh
//!   tree too (the mirror), after the current one.
//!
//! A record the copy reaches after an entry changed it is copied as changed;
//! one it copied before is changed again by the mirror. When the copy has
//! reached the end and synced the fresh database, the next call to apply
//! (nothing is applying then) syncs the entries mirrored since, points the
//! metadata at the fresh database, swaps it in and removes the old one. A
//! crash before the pointer moved leaves the old database current and the
//! fresh one abandoned (removed at start-up); after it, the fresh one is
//! current and durable up to the last applied entry. A snapshot install
//! cancels a defrag: it replaces the state itself.

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::super::database::Database;
use super::databases;
use super::snapshots::CHUNK_RECORDS;
use crate::store::StoreError;

/// When the state database is defragmented: once its files take more than
/// `min_bytes`, more than `ratio` times the latest snapshot (the live
/// records, as of that snapshot), and more than twice what the last
/// defrag left (so that a state that outgrew its snapshot is not
/// copied over and over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefragPolicy {
    pub min_bytes: u64,
    pub ratio: u64,
}

impl Default for DefragPolicy {
    fn default() -> Self {
        DefragPolicy {
            min_bytes: 256 << 20,
            ratio: 4,
        }
    }
}

impl DefragPolicy {
    pub(super) fn due(&self, size: u64, snapshot_bytes: u64, defragged_bytes: u64) -> bool {
        let bound = self
            .min_bytes
            .max(snapshot_bytes.saturating_mul(self.ratio))
            .max(defragged_bytes.saturating_mul(2));
        size > bound
    }
}

/// How often applying looks at the state database's size.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// After a defrag, the next waits this many times as long as it took: under
/// a write load that outruns sled's own reclaiming (its file can grow by
/// tens of MB a second), defragmenting takes at most a tenth of the time.
const PAUSE_PER_DEFRAG_TIME: u32 = 9;

/// After a failed defrag, the next waits this long.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// The defrags of one state machine: at most one at a time.
pub(super) struct Defragger {
    pub(super) policy: DefragPolicy,
    /// No size check, and so no defrag, before this.
    next_check: Option<Instant>,
    /// What the last defrag left, in bytes.
    defragged_bytes: u64,
    running: Option<Running>,
    /// The fresh tree every applied entry also writes to while a copy runs.
    pub(super) mirror: Arc<Mutex<Option<sled::Tree>>>,
}

/// A defrag under way.
pub(super) struct Running {
    pub(super) fresh: Database,
    pub(super) tree: sled::Tree,
    pub(super) started: Instant,
    pub(super) size_before: u64,
    cancel: Arc<AtomicBool>,
    /// The copy's result, once it has ended.
    copied: tokio::sync::oneshot::Receiver<std::io::Result<()>>,
}

/// What [`Defragger::poll`] found.
pub(super) enum Polled {
    Nothing,
    /// The copy is complete and durable: switch to it.
    Copied(Running),
    /// The copy failed; its database is to be removed.
    Failed(Running, std::io::Error),
}

impl Defragger {
    pub(super) fn new(policy: DefragPolicy) -> Defragger {
        Defragger {
            policy,
            next_check: None,
            defragged_bytes: 0,
            running: None,
            mirror: Arc::default(),
        }
    }

    /// Whether a defrag should start now: none is running, the size was
    /// not looked at within [`CHECK_EVERY`], the pause after the last one
    /// is over, and the size is past the bound.
    pub(super) fn due(&mut self, size: impl FnOnce() -> (u64, u64)) -> bool {
        let now = Instant::now();
        if self.running.is_some() || self.next_check.is_some_and(|at| now < at) {
            return false;
        }
        self.next_check = Some(now + CHECK_EVERY);
        let (size, snapshot_bytes) = size();
        self.policy.due(size, snapshot_bytes, self.defragged_bytes)
    }

    /// Starts copying `current` into a fresh database in `data_dir` on a
    /// thread of its own; entries from now on are mirrored into it. Called
    /// between entries.
    pub(super) fn start(
        &mut self,
        current: &Arc<RwLock<sled::Tree>>,
        data_dir: &std::path::Path,
        cache_bytes: u64,
        size_before: u64,
    ) -> Result<(), StoreError> {
        let fresh = databases::create(data_dir, cache_bytes)?;
        let tree = databases::state_tree(&fresh)?;
        let cancel = Arc::new(AtomicBool::new(false));
        let (done, copied) = tokio::sync::oneshot::channel();
        *self.mirror.lock().expect("mirror lock") = Some(tree.clone());
        let copy = Copy {
            current: current.clone(),
            fresh: fresh.clone(),
            tree: tree.clone(),
            cancel: cancel.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("raftset-defrag".into())
            .spawn(move || {
                let _ = done.send(copy.run());
            });
        if let Err(source) = spawned {
            self.mirror.lock().expect("mirror lock").take();
            databases::remove(fresh);
            return Err(StoreError::Io {
                path: data_dir.to_path_buf(),
                source,
            });
        }
        tracing::info!(
            size_before,
            path = %fresh.dir.display(),
            "defragmenting the state database"
        );
        self.running = Some(Running {
            fresh,
            tree,
            started: Instant::now(),
            size_before,
            cancel,
            copied,
        });
        Ok(())
    }

    /// Takes a defrag whose copy has ended, and stops mirroring into
    /// it: the caller switches to it or removes it before the next entry.
    pub(super) fn poll(&mut self) -> Polled {
        let Some(running) = self.running.as_mut() else {
            return Polled::Nothing;
        };
        let ended = match running.copied.try_recv() {
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return Polled::Nothing,
            Ok(result) => result,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Err(std::io::Error::other(
                "the defrag thread ended without a word",
            )),
        };
        let running = self.running.take().expect("a running defrag");
        self.mirror.lock().expect("mirror lock").take();
        match ended {
            Ok(()) => Polled::Copied(running),
            Err(e) => {
                self.next_check = Some(Instant::now() + PAUSE_AFTER_FAILURE);
                Polled::Failed(running, e)
            }
        }
    }

    /// Records what a finished defrag left, and how long it took.
    pub(super) fn finished(&mut self, defragged_bytes: u64, took: Duration) {
        self.defragged_bytes = defragged_bytes;
        self.next_check = Some(Instant::now() + took * PAUSE_PER_DEFRAG_TIME);
    }

    /// Stops a defrag in progress, waits for its thread to let go of
    /// the state, and removes its database.
    pub(super) async fn cancel(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        self.mirror.lock().expect("mirror lock").take();
        running.cancel.store(true, Ordering::Relaxed);
        let _ = running.copied.await;
        tracing::info!("defrag cancelled");
        databases::remove(running.fresh);
    }
}

impl Drop for Defragger {
    /// A node that stops ends its copy at the next chunk; the fresh
    /// database is removed at the next start.
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.cancel.store(true, Ordering::Relaxed);
        }
    }
}

/// The copying thread's part.
struct Copy {
    current: Arc<RwLock<sled::Tree>>,
    fresh: Database,
    tree: sled::Tree,
    cancel: Arc<AtomicBool>,
}

impl Copy {
    fn run(self) -> std::io::Result<()> {
        // Below the threads that serve and apply: the copy is never urgent.
        let _ = rustix::process::setpriority_process(None, 10);
        let mut after: Option<sled::IVec> = None;
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("defrag cancelled"));
            }
            let current = self.current.read().expect("state machine lock");
            let range = match after.take() {
                Some(last) => {
                    current.range::<sled::IVec, _>((Bound::Excluded(last), Bound::Unbounded))
                }
                None => current.iter(),
            };
            let mut copied = 0;
            for item in range.take(CHUNK_RECORDS) {
                let (key, value) = item.map_err(std::io::Error::other)?;
                self.tree
                    .insert(key.clone(), value)
                    .map_err(std::io::Error::other)?;
                after = Some(key);
                copied += 1;
            }
            drop(current);
            if copied == 0 {
                break;
            }
        }
        self.fresh.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::{DefragPolicy, Defragger};
    use std::time::Duration;

    #[test]
    fn after_a_defrag_the_next_waits_nine_times_as_long_as_it_took() {
        let policy = DefragPolicy {
            min_bytes: 0,
            ratio: 1,
        };
        let grown = || (1 << 40, 0);
        let mut defragger = Defragger::new(policy);
        assert!(defragger.due(grown), "nothing ran yet");
        let mut defragger = Defragger::new(policy);
        defragger.finished(1, Duration::from_secs(10));
        assert!(!defragger.due(grown), "within 90 s of a defrag of 10 s");
        let mut defragger = Defragger::new(policy);
        defragger.finished(1, Duration::ZERO);
        assert!(defragger.due(grown), "a pause of nothing is over");
    }

    #[test]
    fn a_defrag_is_due_past_every_bound() {
        let policy = DefragPolicy {
            min_bytes: 100,
            ratio: 4,
        };
        let cases = [
            // (size, snapshot, last defragmented, due)
            (100, 0, 0, false),
            (101, 0, 0, true),
            (101, 30, 0, false),
            (121, 30, 0, true),
            (121, 30, 70, false),
            (141, 30, 70, true),
            (u64::MAX, u64::MAX, u64::MAX, false),
        ];
        for (size, snapshot, defragged, due) in cases {
            assert_eq!(
                policy.due(size, snapshot, defragged),
                due,
                "size {size}, snapshot {snapshot}, last defrag {defragged}"
            );
        }
    }
}
