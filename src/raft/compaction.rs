//! Bounds the Raft log by its size as well as by its length. openraft 0.9
//! snapshots only after a number of entries (`--snapshot-entries`), so a
//! few thousand large values could fill the volume first. Past
//! `--snapshot-log-bytes` this asks openraft for a snapshot, then for a
//! purge of the log up to it. It never asks for more: openraft purges only
//! what a snapshot covers and what no replication still reads, and the
//! store's purge gate waits until the state machine has applied it.
//! Followers that fall behind the purge catch up by snapshot, as they do
//! after an entry-count compaction.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::LogSize;
use crate::types::{DataMetrics, LogId, Raft};

/// How long an asked-for step may take before it is asked for again (a
/// snapshot build can fail, and openraft drops a repeated ask meanwhile).
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Nothing,
    Snapshot,
    Purge(u64),
}

/// What the log's size asks for, given how far this node applied,
/// snapshotted and purged.
fn next_step(
    log_bytes: u64,
    limit: u64,
    applied: Option<LogId>,
    snapshot: Option<LogId>,
    purged: Option<LogId>,
) -> Step {
    if log_bytes <= limit {
        return Step::Nothing;
    }
    let index = |id: Option<LogId>| id.map(|id| id.index);
    match snapshot {
        Some(taken) if index(snapshot) > index(purged) => Step::Purge(taken.index),
        _ if index(applied) > index(snapshot) => Step::Snapshot,
        _ => Step::Nothing,
    }
}

/// Runs until `stop`: after every change of this node's Raft state, and
/// once a second, compares the log's size with `limit` and asks openraft
/// for the next step.
pub async fn bound_log_size(raft: Raft, size: LogSize, limit: u64, stop: CancellationToken) {
    let mut metrics: watch::Receiver<DataMetrics> = raft.data_metrics();
    let mut asked: Option<(Step, Instant)> = None;
    loop {
        let step = {
            let m = metrics.borrow_and_update();
            next_step(size.bytes(), limit, m.last_applied, m.snapshot, m.purged)
        };
        let fresh = asked.is_some_and(|(last, at)| last == step && at.elapsed() < ASK_AGAIN_AFTER);
        if step != Step::Nothing && !fresh {
            tracing::info!(
                log_bytes = size.bytes(),
                limit,
                ?step,
                "the log is past its size bound"
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

    #[test]
    fn past_the_bound_a_snapshot_then_a_purge_up_to_it() {
        let limit = 100;
        // (log bytes, applied, snapshot, purged) -> step
        let table = [
            (100, at(50), None, None, Step::Nothing),
            (101, at(50), None, None, Step::Snapshot),
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
                next_step(bytes, limit, applied, snapshot, purged),
                expected,
                "{bytes} bytes, applied {applied:?}, snapshot {snapshot:?}, purged {purged:?}"
            );
        }
    }
}
