//! Consensus: the peer transport that carries openraft's messages between
//! nodes over gRPC (`network` is the client half, `service` the server
//! half), group commit on the leader (`proposer`), and the request path
//! every client entry point shares (`requests`: writes proposed here or
//! forwarded to the leader, reads behind a linearizable barrier).
//!
//! Raft knows nothing of clusters being formed, of clients or of HTTP: it
//! imports only the ground floor and the store. Whoever needs it receives
//! a handle ([`requests::Requests`], the openraft handle), never the node.

pub mod network;
pub mod proposer;
pub mod requests;
pub mod service;

use crate::types::{Member, NodeId, RaftMetrics};

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
