//! Defragmenting: copying the live state into a fresh state database and
//! switching to it, so that sled's file follows the live data rather than
//! the writes ever made.
//!
//! sled 0.34 gives little of its file back: while its trees grow it
//! reclaims almost nothing, and under steady overwrites its file settles at
//! 15–30× the live records. A database filled once, in key order, takes
//! two to three times them. So when the state database has grown past
//! [`DefragPolicy`]'s bound (a thread of its own looks every second), it
//! copies the state into a fresh database while entries go on applying:
//! - the copy reads the current tree in chunks without any lock that
//!   applying takes, on a thread below those that serve and apply, writes
//!   each chunk into the fresh tree as it read it, and then moves its mark
//!   (the last key it has written) past the chunk;
//! - meanwhile every applied entry, after its writes reached the current
//!   tree, makes those of keys behind the mark in the fresh tree too (the
//!   mirror), and notes the other keys it changes.
//!
//! Why the fresh tree ends up as the state, key by key:
//! - a key behind the mark was written by the copy before the mark moved
//!   past it, and the mirror makes every later change of it, in order;
//! - a key ahead of the chunk in flight is read by the copy only after
//!   every change noted so far reached the current tree, so moving the
//!   mark drops its notes;
//! - a key inside the chunk in flight may have changed between the copy's
//!   read and its write (the copy then wrote the older value), or been
//!   created after the read (the copy missed it): its note stays until the
//!   switch, which sets each noted key as the current tree holds it. So
//!   the notes hold the keys changed while a chunk was in flight, plus the
//!   handful each entry writes past the copy (the revision, the applied
//!   log id, the redo record), dropped at every chunk.
//!
//! The mirror skips what the copy will read anyway (about half of every
//! entry's writes, on average over a copy), and neither writer reads the
//! fresh tree before writing it.
//!
//! When the copy has reached the end and synced the fresh database, the
//! thread waits for the batch of entries being applied to end (and holds
//! the next), sets each noted key in the fresh tree as the current tree
//! holds it, syncs, points the metadata at the fresh database, swaps it in
//! and removes the old one; an idle node is defragmented too. A crash
//! before the pointer moved leaves the old database current and the fresh
//! one abandoned (removed at start-up); after it, the fresh one is current
//! and durable up to the last applied entry. A snapshot install outdates a
//! copy in progress: it replaces the state itself.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::super::database::{Database, SyncPacer, SYNC_EVERY};
use super::super::snapshot::SnapshotDir;
use super::super::Shared;
use super::apply::{apply_writes, EntryRecords};
use super::{copy_below_serving, databases, records_after};
use crate::stagger::Stagger;

/// When the state database is defragmented: once its files take more than
/// `min_bytes`, more than `ratio` times the latest snapshot (the live
/// records, as of that snapshot), and more than twice what the last
/// defrag left (so that a state that outgrew its snapshot is not
/// copied over and over); that bound raised by the member's `stagger`.
/// Members copying at once slowed every member together (put p99 231 ms
/// at 64 in flight, up from 27, in the headline runs of d84b4fb); the
/// highest raise, 1.5×, stays under the default space quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefragPolicy {
    pub min_bytes: u64,
    pub ratio: u64,
    pub stagger: Stagger,
}

impl Default for DefragPolicy {
    fn default() -> Self {
        DefragPolicy {
            min_bytes: 256 << 20,
            ratio: 4,
            stagger: Stagger::NONE,
        }
    }
}

impl DefragPolicy {
    pub(super) fn due(&self, size: u64, snapshot_bytes: u64, defragged_bytes: u64) -> bool {
        let bound = self
            .min_bytes
            .max(snapshot_bytes.saturating_mul(self.ratio))
            .max(defragged_bytes.saturating_mul(2));
        size > self.stagger.raise(bound)
    }
}

/// How often the defrag thread looks at the state database's size.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// After a defrag, the next waits this many times as long as it took: under
/// a write load that outruns sled's own reclaiming (its file can grow by
/// tens of MB a second), defragmenting takes at most a tenth of the time.
const PAUSE_PER_DEFRAG_TIME: u32 = 9;

/// How many records the copy reads before it writes them. No entry waits
/// for a chunk; the keys an entry changes inside the chunk in flight are
/// noted until the switch, so a chunk is small against the state.
const COPY_CHUNK_RECORDS: usize = 1024;

/// How often a switch that waits for a snapshot copy looks again.
const SNAPSHOT_TURN_POLL: Duration = Duration::from_millis(5);

/// After a failed defrag, the next waits this long.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// The pause after a defrag ends early once the file holds this many times
/// what the defrag left. At a million keys a copy took 11 to 17 s, so its
/// pause lasted minutes, and under full load the file grew from 0.43 to 3.4
/// GB meanwhile (the scale run of 420c12a; etcd's 0.85 GB). Past this
/// bound copies take more than a tenth of the time, and the disk still
/// follows the live data.
const PAUSE_OUTGROWN_AT: u64 = 4;

/// When the next defrag may run.
struct Pacing {
    policy: DefragPolicy,
    /// What the last defrag left, in bytes.
    defragged_bytes: u64,
    pause: Option<Pause>,
}

/// A wait before the next defrag.
struct Pause {
    until: Instant,
    /// The wait ends early once the file is larger than this.
    unless_past: u64,
}

impl Pacing {
    fn new(policy: DefragPolicy) -> Pacing {
        Pacing {
            policy,
            defragged_bytes: 0,
            pause: None,
        }
    }

    fn due(&self, size: u64, snapshot_bytes: u64) -> bool {
        let paused = self
            .pause
            .as_ref()
            .is_some_and(|pause| Instant::now() < pause.until && size <= pause.unless_past);
        !paused && self.policy.due(size, snapshot_bytes, self.defragged_bytes)
    }

    fn finished(&mut self, defragged_bytes: u64, took: Duration) {
        self.defragged_bytes = defragged_bytes;
        self.pause = Some(Pause {
            until: Instant::now() + took * PAUSE_PER_DEFRAG_TIME,
            unless_past: defragged_bytes.saturating_mul(PAUSE_OUTGROWN_AT),
        });
    }

    /// A failure waits its whole pause, however large the file: another
    /// try could fail the same way (a full volume) at once.
    fn failed(&mut self) {
        self.pause = Some(Pause {
            until: Instant::now() + PAUSE_AFTER_FAILURE,
            unless_past: u64::MAX,
        });
    }
}

/// What defragmenting shares with the state machine.
#[derive(Clone)]
pub(in crate::store) struct Parts {
    pub(super) current: Arc<RwLock<sled::Tree>>,
    pub(super) shared: Arc<Shared>,
    pub(super) pointer: sled::Tree,
    pub(super) snapshots: SnapshotDir,
    pub(super) cache_bytes: u64,
    /// Held by applying for a whole batch of entries and by an install; a
    /// switch takes it, so it never lands inside either.
    pub(super) applying: Arc<Mutex<()>>,
    /// Counts installs: a copy begun before one is stale.
    pub(super) installs: Arc<AtomicU64>,
    /// The fresh tree every applied entry also writes to while a copy runs;
    /// set and cleared under the state lock held alone, so an entry writes
    /// either to both trees or only to one that no copy has read yet.
    pub(super) mirror: Arc<Mutex<Option<Arc<Mirror>>>>,
    /// A switch that failed half-way, which applying reports (fatal).
    pub(super) failed: Arc<Mutex<Option<String>>>,
    /// A snapshot copy's turn: a switch waits for the copy in progress,
    /// which reads the tree it began with.
    pub(super) snapshot_turn: Arc<tokio::sync::Mutex<()>>,
}

/// The fresh tree a copy fills, which applying writes to as well (see the
/// module doc).
pub(in crate::store) struct Mirror {
    pub(in crate::store) tree: sled::Tree,
    pub(in crate::store) progress: Mutex<Progress>,
}

#[derive(Default)]
pub(in crate::store) struct Progress {
    /// The last key the copy has written, `None` before its first chunk.
    copied_through: Option<sled::IVec>,
    /// Keys changed past `copied_through` that the copy may have read
    /// before their change, or missed; the switch sets each as the current
    /// tree holds it.
    changed: BTreeSet<Vec<u8>>,
}

impl Mirror {
    /// Makes the changes of an entry that has reached the current tree to
    /// the keys the copy has written past, and notes the others.
    pub(super) fn write(&self, entry: &EntryRecords) -> sled::Result<()> {
        let mut behind = Vec::new();
        {
            let mut progress = self.progress.lock().expect("mirror lock");
            let Progress {
                copied_through,
                changed,
            } = &mut *progress;
            for (key, value) in entry.records() {
                match copied_through {
                    Some(mark) if key <= mark.as_ref() => behind.push((key, value)),
                    _ => {
                        changed.insert(key.to_vec());
                    }
                }
            }
        }
        // Outside the lock: the copy writes only keys past the mark it
        // read, so it never writes one of these.
        apply_writes(&self.tree, &behind)
    }
}

/// A copy of the state into a fresh database, mirrored until its switch.
pub(in crate::store) struct FreshCopy {
    fresh: Database,
    pub(in crate::store) mirror: Arc<Mirror>,
    /// The current tree when the copy began: only an install (which
    /// outdates the copy) or this copy's switch replaces it.
    from: sled::Tree,
    installs: u64,
    started: Instant,
    size_before: u64,
    /// How often the copy synced the fresh database before its end.
    pub(in crate::store) syncs: u32,
}

/// Records the copy read past its mark, not yet written.
pub(in crate::store) struct Chunk(Vec<(sled::IVec, sled::IVec)>);

impl FreshCopy {
    /// The next chunk of records after what the copy has written, read
    /// without a lock that applying takes; `None` past the last key.
    pub(in crate::store) fn read_chunk(&self) -> std::io::Result<Option<Chunk>> {
        let after = self.progress().copied_through.clone();
        let read = records_after(&self.from, after, COPY_CHUNK_RECORDS)?;
        Ok((!read.is_empty()).then_some(Chunk(read)))
    }

    /// Writes `chunk`'s records into the fresh tree as they were read, and
    /// moves the mark past them; gives the bytes read.
    pub(in crate::store) fn write_chunk(&self, Chunk(read): Chunk) -> std::io::Result<u64> {
        let last = read.last().map(|(key, _)| key.clone());
        let mut bytes = 0;
        for (key, value) in read {
            bytes += (key.len() + value.len()) as u64;
            (self.mirror.tree)
                .insert(key, value)
                .map_err(std::io::Error::other)?;
        }
        let mut progress = self.progress();
        if let Some(last) = &last {
            // Keys past the chunk: the copy reads them after their change.
            progress
                .changed
                .retain(|key| key.as_slice() <= last.as_ref());
        }
        progress.copied_through = last;
        Ok(bytes)
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.mirror.progress.lock().expect("mirror lock")
    }

    /// Sets each key an entry changed where the copy may have missed it
    /// as `from` holds it; between batches of entries, when `from` is
    /// still.
    fn settle_changed_keys(&self) -> sled::Result<()> {
        let changed = std::mem::take(&mut self.progress().changed);
        for key in changed {
            match self.from.get(&key)? {
                Some(value) => self.mirror.tree.insert(key, value)?,
                None => self.mirror.tree.remove(key)?,
            };
        }
        Ok(())
    }
}

impl Parts {
    /// Copies the state into a fresh database while entries go on applying
    /// (mirrored into it), on a thread below those that serve and apply;
    /// `None` when `stop` was set or an install came.
    pub(in crate::store) fn copy(
        &self,
        size_before: u64,
        stop: &AtomicBool,
    ) -> std::io::Result<Option<FreshCopy>> {
        let copy = self.begin_copy(size_before)?;
        self.fill_below_serving(copy, stop)
    }

    /// Fills `copy` on a thread of its own below those that serve and
    /// apply; `None` when `stop` was set or an install came (the fresh
    /// database is removed).
    pub(in crate::store) fn fill_below_serving(
        &self,
        mut copy: FreshCopy,
        stop: &AtomicBool,
    ) -> std::io::Result<Option<FreshCopy>> {
        let copied = std::thread::scope(|scope| {
            let fill = || {
                copy_below_serving();
                self.fill(&mut copy, stop)
            };
            std::thread::Builder::new()
                .name("raftset-defcopy".into())
                .spawn_scoped(scope, fill)?
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the defrag copy thread panicked")))
        });
        match copied {
            Ok(true) => Ok(Some(copy)),
            stopped_or_failed => {
                self.mirror.lock().expect("mirror lock").take();
                databases::remove(copy.fresh);
                stopped_or_failed.map(|_| None)
            }
        }
    }

    /// Creates the fresh database and has applying mirror every entry into
    /// it from here on.
    pub(in crate::store) fn begin_copy(&self, size_before: u64) -> std::io::Result<FreshCopy> {
        let installs = self.installs.load(Ordering::SeqCst);
        let started = Instant::now();
        let fresh = databases::create(&self.shared.path, self.cache_bytes)
            .map_err(std::io::Error::other)?;
        tracing::info!(size_before, path = %fresh.dir.display(), "defragmenting the state database");
        let tree = match databases::state_tree(&fresh) {
            Ok(tree) => tree,
            Err(e) => {
                databases::remove(fresh);
                return Err(std::io::Error::other(e));
            }
        };
        let mirror = Arc::new(Mirror {
            tree,
            progress: Mutex::default(),
        });
        let current = self.current.write().expect("state machine lock");
        *self.mirror.lock().expect("mirror lock") = Some(mirror.clone());
        Ok(FreshCopy {
            fresh,
            mirror,
            from: current.clone(),
            installs,
            started,
            size_before,
            syncs: 0,
        })
    }

    /// Copies every record of `copy`'s tree and syncs the fresh database,
    /// also every [`SYNC_EVERY`] bytes on the way, so that the copy's
    /// writeback never holds up the log's fdatasync for long. `false` when
    /// stopped or outdated by an install.
    fn fill(&self, copy: &mut FreshCopy, stop: &AtomicBool) -> std::io::Result<bool> {
        let mut pacer = SyncPacer::new(SYNC_EVERY);
        loop {
            if stop.load(Ordering::SeqCst) || self.installs.load(Ordering::SeqCst) != copy.installs
            {
                return Ok(false);
            }
            let Some(chunk) = copy.read_chunk()? else {
                copy.fresh.sync()?;
                return Ok(true);
            };
            if pacer.wrote(copy.write_chunk(chunk)?) {
                copy.fresh.sync()?;
                copy.syncs += 1;
            }
        }
    }

    /// Switches to `copied` between two batches of entries: settles the
    /// keys changed during the copy, syncs what was mirrored since, moves
    /// the pointer, swaps the database in and removes the old one. Gives
    /// the size left, or `None` when an install came since the copy began
    /// (the copy is removed). A failure once the switch has begun is kept
    /// for applying to report.
    pub(in crate::store) fn switch(&self, copied: FreshCopy) -> std::io::Result<Option<u64>> {
        let _no_snapshot_copy = self.snapshot_turn();
        let applying = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        let held_from = Instant::now();
        if self.installs.load(Ordering::SeqCst) != copied.installs {
            drop(applying);
            databases::remove(copied.fresh);
            return Ok(None);
        }
        let settled = copied.settle_changed_keys().map_err(std::io::Error::other);
        let switched = settled.and_then(|()| copied.fresh.sync()).and_then(|()| {
            crate::failpoint::crash_point("defrag-before-switch");
            databases::point_to(&self.pointer, &self.shared.meta, &copied.fresh)
        });
        if let Err(e) = switched {
            let failure = format!("switching to a defragmented state database failed: {e}");
            *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
            return Err(e);
        }
        crate::failpoint::crash_point("defrag-switched");
        let size_after = copied.fresh.size_on_disk();
        let old = self.replace_state(copied.fresh, copied.mirror.tree.clone());
        drop(applying);
        let applying_held = held_from.elapsed();
        databases::remove(old);
        let took = copied.started.elapsed();
        self.shared.metrics.defrag.observe(took.as_secs_f64());
        tracing::info!(
            size_before = copied.size_before,
            size_after,
            took_ms = took.as_millis() as u64,
            syncs_while_copying = copied.syncs,
            applying_held_ms = applying_held.as_millis() as u64,
            "defragmented the state database"
        );
        Ok(Some(size_after))
    }

    /// Holds a snapshot copy's turn, once the copy in progress, if any,
    /// has ended. Polled rather than awaited: the switch runs on the
    /// defrag's own thread, and in tests inside the runtime, where
    /// tokio's blocking lock would panic.
    fn snapshot_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        loop {
            if let Ok(turn) = self.snapshot_turn.try_lock() {
                return turn;
            }
            std::thread::sleep(SNAPSHOT_TURN_POLL);
        }
    }

    /// Makes `db` (holding `tree`) the state and stops any mirroring;
    /// returns the database it replaces. Waits for reads in progress, as
    /// applying an entry does.
    pub(super) fn replace_state(&self, db: Database, tree: sled::Tree) -> Database {
        let mut current = self.current.write().expect("state machine lock");
        *current = tree;
        self.mirror.lock().expect("mirror lock").take();
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *state, db)
    }
}

/// The defrag thread of one state machine: at most one defrag at a time.
pub(super) struct Defragger {
    pub(super) parts: Parts,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Defragger {
    /// Starts the thread that looks at the state database's size every
    /// [`CHECK_EVERY`] and defragments it when `policy` says so.
    pub(super) fn start(parts: Parts, policy: DefragPolicy) -> std::io::Result<Defragger> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("raftset-defrag".into())
            .spawn({
                let (parts, stop) = (parts.clone(), stop.clone());
                move || run(parts, policy, stop)
            })?;
        Ok(Defragger {
            parts,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Defragger {
    /// Stops the thread (a copy in progress ends at its next chunk, its
    /// database is removed) and waits for it to let go of the state.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn run(parts: Parts, policy: DefragPolicy, stop: Arc<AtomicBool>) {
    let mut pacing = Pacing::new(policy);
    loop {
        std::thread::park_timeout(CHECK_EVERY);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let size = parts.shared.state_db().size_on_disk();
        let snapshot = std::fs::metadata(parts.snapshots.current_path()).map_or(0, |m| m.len());
        // Not beside a snapshot copy: two copies of the whole state at
        // once took the longest put from about 100 to 530-620 ms at a
        // million keys. A snapshot that begins during a defrag's copy
        // still runs beside it (openraft asks for it).
        if !pacing.due(size, snapshot) || parts.snapshot_turn.try_lock().is_err() {
            continue;
        }
        let started = Instant::now();
        let done = parts.copy(size, &stop).and_then(|copied| match copied {
            Some(copied) => parts.switch(copied),
            None => Ok(None),
        });
        match done {
            Ok(Some(size_after)) => pacing.finished(size_after, started.elapsed()),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("defragmenting the state database failed: {e}");
                pacing.failed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{DefragPolicy, Pacing, Stagger};
    use std::time::Duration;

    fn policy_of(min_bytes: u64, ratio: u64) -> DefragPolicy {
        DefragPolicy {
            min_bytes,
            ratio,
            ..DefragPolicy::default()
        }
    }

    #[test]
    fn after_a_defrag_the_next_waits_nine_times_as_long_as_it_took() {
        // Past twice what the defrag left, not past four times.
        let (left, grown) = (300, 1000);
        let mut pacing = Pacing::new(policy_of(0, 1));
        assert!(pacing.due(grown, 0), "nothing ran yet");
        pacing.finished(left, Duration::from_secs(10));
        assert!(!pacing.due(grown, 0), "within 90 s of a defrag of 10 s");
        pacing.finished(left, Duration::ZERO);
        assert!(pacing.due(grown, 0), "a pause of nothing is over");
        pacing.failed();
        assert!(!pacing.due(grown, 0), "within a minute of a failure");
    }

    #[test]
    fn a_pause_ends_once_the_file_holds_four_times_what_the_defrag_left() {
        let mut pacing = Pacing::new(policy_of(0, 1));
        pacing.finished(100, Duration::from_secs(3600));
        assert!(!pacing.due(400, 0), "paused, and grown only to four times");
        assert!(pacing.due(401, 0), "grown past four times what it left");
        pacing.failed();
        assert!(
            !pacing.due(u64::MAX, 0),
            "a failure's pause holds at any size"
        );
    }

    #[test]
    fn a_defrag_is_due_past_every_bound() {
        let policy = policy_of(100, 4);
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

    #[test]
    fn each_ordinal_of_a_set_defragments_a_quarter_of_the_bound_later() {
        let policy = policy_of(400, 4);
        // (ordinal, the largest size not yet due with nothing else known,
        // and with a snapshot of 200)
        let cases = [
            (0, 400, 800),
            (1, 500, 1000),
            (2, 600, 1200),
            (3, 400, 800),
            (4, 500, 1000),
        ];
        for (ordinal, bound, bound_of_snapshot) in cases {
            let member = DefragPolicy {
                stagger: Stagger::of_ordinal(ordinal),
                ..policy
            };
            assert!(!member.due(bound, 0, 0), "ordinal {ordinal} at {bound}");
            assert!(
                member.due(bound + 1, 0, 0),
                "ordinal {ordinal} past {bound}"
            );
            assert!(!member.due(bound_of_snapshot, 200, 0), "ordinal {ordinal}");
            assert!(
                member.due(bound_of_snapshot + 1, 200, 0),
                "ordinal {ordinal}"
            );
        }
        let last = DefragPolicy {
            stagger: Stagger::of_ordinal(2),
            ..policy
        };
        assert!(!last.due(u64::MAX, u64::MAX, 0), "saturates");
    }
}
