//! Decides when this node snapshots and purges its log; openraft's own
//! snapshot policy is off. A snapshot copies the whole state, so where the
//! members copy at once (they apply the same entries and reach a bound at
//! the same index) every member slows together, and at a million keys the
//! three copies took what the puts needed.
//!
//! So the log index is dealt out in turns: turns of a third of
//! `--snapshot-entries` entries, to ordinals 0, 1 and 2 in rotation (see
//! `stagger.rs`). A node whose log has passed a bound (`--snapshot-entries`
//! entries since its snapshot, or `--snapshot-log-bytes`) snapshots in its
//! own turn, and at once when it has passed twice the bound, so the log
//! stays bounded whatever the turns. Under steady load each member then
//! snapshots every `--snapshot-entries` entries at the start of its turn.
//! Past the bytes bound it asks openraft for a purge up to the snapshot
//! too. It never asks for more: openraft purges only what a snapshot covers
//! and what no replication still reads, and the store's purge gate waits
//! until the state machine has applied it. Followers that fall behind the
//! purge catch up by snapshot.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stagger::Stagger;
use crate::store::LogSize;
use crate::types::{DataMetrics, LogId, Raft};

/// How long an asked-for step may take before it is asked for again (a
/// snapshot build can fail, and openraft drops a repeated ask meanwhile).
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// How far past its bounds a log may grow while its node waits for its
/// turn to snapshot.
const PAST_THE_BOUND_AT_MOST: u64 = 2;

/// When this node snapshots: the bounds of its log and its turns.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotBounds {
    /// Entries since the latest snapshot.
    pub entries: u64,
    /// Bytes of entries the log holds.
    pub log_bytes: u64,
    pub stagger: Stagger,
}

impl SnapshotBounds {
    /// How many entries each turn lasts: a snapshot at a million keys
    /// (seconds of copying) fits in a third of the default bound's entries
    /// under full load, so the next member's turn finds it done.
    fn turn(&self) -> u64 {
        (self.entries / 3).max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Nothing,
    Snapshot,
    Purge(u64),
}

/// What the log asks for, given its size and how far this node applied,
/// snapshotted and purged.
fn next_step(
    log_bytes: u64,
    bounds: &SnapshotBounds,
    applied: Option<LogId>,
    snapshot: Option<LogId>,
    purged: Option<LogId>,
) -> Step {
    let index = |id: Option<LogId>| id.map(|id| id.index);
    if let Some(taken) = snapshot {
        if log_bytes > bounds.log_bytes && index(snapshot) > index(purged) {
            return Step::Purge(taken.index);
        }
    }
    let Some(applied) = applied.filter(|a| Some(a.index) > index(snapshot)) else {
        return Step::Nothing;
    };
    // With no snapshot yet, the log starts at index 0.
    let since = applied.index - index(snapshot).unwrap_or(0);
    let past = |times: u64| {
        since >= bounds.entries.saturating_mul(times)
            || log_bytes > bounds.log_bytes.saturating_mul(times)
    };
    let in_turn = bounds.stagger.has_turn(applied.index, bounds.turn());
    if past(PAST_THE_BOUND_AT_MOST) || (past(1) && in_turn) {
        Step::Snapshot
    } else {
        Step::Nothing
    }
}

/// Runs until `stop`: after every change of this node's Raft state, and
/// once a second, compares the log with `bounds` and asks openraft for the
/// next step.
pub async fn bound_the_log(
    raft: Raft,
    size: LogSize,
    bounds: SnapshotBounds,
    stop: CancellationToken,
) {
    let mut metrics: watch::Receiver<DataMetrics> = raft.data_metrics();
    let mut asked: Option<(Step, Instant)> = None;
    loop {
        let step = {
            let m = metrics.borrow_and_update();
            next_step(size.bytes(), &bounds, m.last_applied, m.snapshot, m.purged)
        };
        let fresh = asked.is_some_and(|(last, at)| last == step && at.elapsed() < ASK_AGAIN_AFTER);
        if step != Step::Nothing && !fresh {
            tracing::info!(
                log_bytes = size.bytes(),
                ?bounds,
                ?step,
                "the log is past its bound"
            );
            let result = match step {
                Step::Snapshot => raft.trigger().snapshot().await,
                Step::Purge(upto) => raft.trigger().purge_log(upto).await,
                Step::Nothing => Ok(()),
            };
            if result.is_err() {
                return;
            }
            asked = Some((step, Instant::now()));
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(ASK_AGAIN_AFTER) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn at(index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(1, 0), index))
    }

    fn bounds(stagger: Stagger) -> SnapshotBounds {
        SnapshotBounds {
            entries: 30,
            log_bytes: 100,
            stagger,
        }
    }

    #[test]
    fn past_the_bytes_bound_a_snapshot_then_a_purge_up_to_it() {
        let alone = bounds(Stagger::NONE);
        // (log bytes, applied, snapshot, purged) -> step
        let table = [
            (100, at(20), None, None, Step::Nothing),
            (101, at(20), None, None, Step::Snapshot),
            (101, at(50), at(20), None, Step::Purge(20)),
            (101, at(50), at(20), at(20), Step::Snapshot),
            (101, at(50), at(50), at(20), Step::Purge(50)),
            // Everything applied is snapshotted and purged: what is left
            // is not applied yet, and only applying can make room.
            (101, at(50), at(50), at(50), Step::Nothing),
            (101, None, None, None, Step::Nothing),
        ];
        for (bytes, applied, snapshot, purged, expected) in table {
            assert_eq!(
                next_step(bytes, &alone, applied, snapshot, purged),
                expected,
                "{bytes} bytes, applied {applied:?}, snapshot {snapshot:?}, purged {purged:?}"
            );
        }
    }

    #[test]
    fn each_ordinal_snapshots_in_its_own_turn_and_at_twice_the_bound_in_any() {
        // Turns of 10 entries: 0-9 ordinal 0's, 10-19 ordinal 1's, 20-29
        // ordinal 2's, 30-39 ordinal 0's again.
        // (ordinal, log bytes, applied, snapshot) -> step
        let table = [
            // Past the entries bound, in its turn or not.
            (0, 0, 30, None, Step::Snapshot),
            (1, 0, 30, None, Step::Nothing),
            (1, 0, 40, at(10), Step::Snapshot),
            (2, 0, 40, at(10), Step::Nothing),
            (2, 0, 50, at(20), Step::Snapshot),
            (0, 0, 50, at(20), Step::Nothing),
            // Past the bytes bound likewise.
            (2, 101, 25, at(20), Step::Snapshot),
            (1, 101, 25, at(20), Step::Nothing),
            // Within the bounds, in its turn: nothing to do.
            (0, 100, 31, at(20), Step::Nothing),
            // Twice the bound, out of turn.
            (1, 0, 60, None, Step::Snapshot),
            (1, 201, 25, at(20), Step::Snapshot),
        ];
        for (ordinal, bytes, applied, snapshot, expected) in table {
            let member = bounds(Stagger::of_ordinal(ordinal));
            // A snapshot is purged up to as soon as it is taken.
            assert_eq!(
                next_step(bytes, &member, at(applied), snapshot, snapshot),
                expected,
                "ordinal {ordinal}, {bytes} bytes, applied {applied}, snapshot {snapshot:?}"
            );
        }
    }
}
