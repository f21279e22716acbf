//! Consensus: the peer transport that carries openraft's messages between
//! nodes over gRPC (`network` is the client half, `service` the server
//! half), group commit on the leader (`proposer`), batches of forwarded
//! writes on a follower (`forwarder`), both taken off their queues as
//! `batch` does, and the request path
//! every client entry point shares (`requests`: writes proposed here or
//! forwarded to the leader, reads behind a linearizable barrier), and the
//! gate that holds it while a leader steps down (`step_down`).
//!
//! Raft knows nothing of clusters being formed, of clients or of HTTP: it
//! imports only the ground floor and the store. Whoever needs it receives
//! a handle ([`requests::Requests`], the openraft handle), never the node.

pub mod attempt;
pub mod batch;
pub mod body_limit;
pub mod compaction;
pub mod forwarder;
pub mod network;
pub mod proposer;
pub mod read_index;
pub mod requests;
pub mod rounds;
pub mod service;
pub mod step_down;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::types::{Member, NodeId, RaftMetrics, ServerMetrics};

/// The current leader's id and membership entry, as this node's Raft
/// metrics know them.
pub fn leader_of(metrics: &RaftMetrics) -> Option<(NodeId, Member)> {
    let leader = metrics.current_leader?;
    let member = metrics
        .membership_config
        .membership()
        .get_node(&leader)?
        .clone();
    Some((leader, member))
}

/// Counts every new leader this node sees into `changes` (etcd's
/// `leader_changes_seen_total`). Ends when `stop` is cancelled or Raft
/// stops.
pub async fn count_leader_changes(
    mut metrics: watch::Receiver<ServerMetrics>,
    changes: Counter,
    stop: CancellationToken,
) {
    let mut seen = LeaderSeen::default();
    loop {
        if seen.is_new(metrics.borrow_and_update().current_leader) {
            changes.inc();
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// The last leader this node knew.
#[derive(Debug, Default)]
struct LeaderSeen {
    last: Option<NodeId>,
}

impl LeaderSeen {
    /// Whether `leader` is a change: the first leader known after start-up,
    /// and each later one that differs from the last one known. A spell
    /// without a leader before the same leader returns is not a change.
    fn is_new(&mut self, leader: Option<NodeId>) -> bool {
        let new = leader.is_some() && leader != self.last;
        if new {
            self.last = leader;
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_new_leader_counts_once() {
        let mut seen = LeaderSeen::default();
        // (leader known now, is it a change)
        let steps = [
            (None, false),
            (Some(2), true),
            (Some(2), false),
            (None, false),
            (Some(2), false),
            (Some(3), true),
            (None, false),
            (Some(1), true),
        ];
        for (i, (leader, change)) in steps.into_iter().enumerate() {
            assert_eq!(seen.is_new(leader), change, "step {i}: leader {leader:?}");
        }
    }
}
