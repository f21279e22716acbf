//! Cluster membership over the node's life: founding or joining a cluster
//! when a node starts with an empty data directory, admitting nodes that
//! join, following the StatefulSet's replica count, and handing leadership
//! over.
//!
//! Node identity follows the volume, not the name: the Raft node id is made
//! when a data directory is first opened ([`crate::store`]), the name (pod
//! name) and addresses travel in the membership ([`identity`]). A node that
//! comes back empty under an old name gets a new id, and joining replaces
//! the old member of that name ([`membership`]).
//!
//! The start-up algorithm ([`formation`], deciding in [`bootstrap`]):
//! 1. A data directory with Raft state restarts from it and initialises
//!    nothing. Like every member, whenever it knows no leader for a while
//!    it asks its peers whether the cluster removed it (a committed, newer
//!    membership without it): then it discards its data and rejoins.
//! 2. Otherwise the node looks up every other ordinal ([`discovery`]) and
//!    asks each what it belongs to.
//! 3. A member anywhere: join through it. The cluster the founding record
//!    confirms, else the node's own recorded cluster, is the only one it
//!    joins.
//! 4. In a pod, a confirmed founding record ([`kube`]) says a cluster
//!    exists: wait for its members, passing the ordering readiness.
//! 5. Ordinal 0 founds a cluster only when every peer that exists answered
//!    and is empty, seen so several rounds in a row, and in a pod only once
//!    it created (or took over an unconfirmed) founding record. It serves
//!    only after confirming that record.
//! 6. Anything else: wait and ask again, with backoff.
//!
//! After a majority of the voters is lost for good, [`refound`] re-founds
//! the cluster on one survivor's data (`raftset force-new-cluster`); the
//! survivor then rewrites the founding record, and members of the old
//! cluster that come back discard their data and join.
//!
//! Only the leader knows which members are alive; [`roster`] tells any
//! node the leader's view.
//!
//! It must never import the faces or the node: it receives a
//! [`ClusterContext`] with exactly the handles it uses.

pub mod bootstrap;
pub mod discovery;
pub mod formation;
pub mod identity;
pub mod kube;
pub mod leadership;
pub mod membership;
pub mod refound;
pub mod roster;
pub mod service;

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use tonic::transport::Channel;

use crate::error::{ClusterError, PeerError};
use crate::proto::cluster_peer_client::ClusterPeerClient;
use crate::raft::leader_of;
use crate::raft::network::{Contacts, PeerClients};
use crate::raft::step_down::StepDown;
use crate::store::state_machine::Digests;
use crate::store::Meta;
use crate::types::{ClusterId, DataMetrics, Digest, Formation, Member, NodeId, Raft, RaftMetrics};

use self::roster::Roster;

/// How long building a snapshot may take before a caller gives up.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Asks the node's owner to stop the node, saying why.
#[derive(Clone)]
pub struct StopSignal {
    /// Cancelled at once: the node stops serving clients.
    serving: CancellationToken,
    reason: watch::Sender<Option<Stop>>,
}

/// Why a node asked to be stopped, and whether it must start again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub reason: String,
    /// The node stops only to start again on its data (after recording a
    /// forced re-founding): its owner restarts it at once, in place.
    pub restart: bool,
}

impl StopSignal {
    /// A signal, and the receiver its owner waits on.
    pub fn new(serving: CancellationToken) -> (StopSignal, watch::Receiver<Option<Stop>>) {
        let (reason, stopped) = watch::channel(None);
        (StopSignal { serving, reason }, stopped)
    }

    /// Stops serving clients at once and asks for the node to be shut down.
    pub fn stop(&self, reason: String) {
        self.send(reason, false);
    }

    /// Stops serving clients at once and asks for the node to be shut down
    /// and started again on its data.
    pub fn restart(&self, reason: String) {
        self.send(reason, true);
    }

    fn send(&self, reason: String, restart: bool) {
        self.serving.cancel();
        self.reason.send_replace(Some(Stop { reason, restart }));
    }
}

/// What the cluster layer works with.
pub struct ClusterContext {
    pub id: NodeId,
    /// How the membership describes this node.
    pub me: Member,
    pub config: Config,
    pub raft: Raft,
    pub cluster_id: ClusterId,
    /// Where this node stands in forming its cluster; only
    /// [`formation`] moves it.
    pub formation: Formation,
    pub meta: Meta,
    pub peers: PeerClients,
    /// When each peer last answered this node's Raft messages.
    pub contacts: Contacts,
    /// State digests taken at checkpoints, for `verify`.
    pub digests: Digests,
    pub stop: StopSignal,
    /// Shut while this leader steps down, so that nothing renews the
    /// followers' leases (see [`leadership`]).
    pub step_down: StepDown,
    /// Background work the node waits for on shutdown.
    pub tasks: TaskTracker,
}

impl ClusterContext {
    pub fn raft_metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The current leader's id and membership entry, if one is known.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        leader_of(&self.raft.metrics().borrow())
    }

    /// A client of the cluster-control service of the peer at `addr`, on
    /// the pooled peer connection.
    pub fn peer(&self, addr: &str) -> Result<ClusterPeerClient<Channel>, PeerError> {
        Ok(ClusterPeerClient::new(self.peers.channel(addr)?))
    }

    /// What tells the members' health, from this node's handles.
    pub fn roster(&self) -> Roster {
        Roster {
            id: self.id,
            raft: self.raft.clone(),
            peers: self.peers.clone(),
            contacts: self.contacts.clone(),
            window: Duration::from_millis(self.config.election_timeout_ms),
            max_lag: self.config.ready_max_lag,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Waits until this node applied the entry at `index`, then returns
    /// the digest taken there.
    pub async fn digest_at(&self, index: u64, timeout: Duration) -> Result<Digest, ClusterError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "checkpoint")
            .await
            .map_err(|e| ClusterError::NotApplied {
                index,
                detail: e.to_string(),
            })?;
        self.digests
            .get(index)
            .ok_or(ClusterError::NoDigest { index })
    }

    /// Builds a snapshot that covers at least `index` and returns its index.
    pub async fn take_snapshot(&self, index: u64) -> Result<u64, ClusterError> {
        let covering = |m: &DataMetrics| m.snapshot.filter(|s| s.index >= index);
        let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
        // The snapshot position is in the data metrics, sent only when a
        // position changes.
        let mut data = self.raft.data_metrics();
        loop {
            // openraft drops the request while a snapshot is being built,
            // and that one may end short of `index`: when a snapshot ends
            // without covering it, ask again.
            let before = data.borrow_and_update().snapshot;
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
            let ended = data.wait_for(|m| m.snapshot != before || covering(m).is_some());
            let now = match timeout_at(deadline, ended).await {
                Ok(Ok(now)) => covering(&now),
                Ok(Err(_)) => return Err(ClusterError::SnapshotTimeout("raft stopped".into())),
                Err(_) => {
                    return Err(ClusterError::SnapshotTimeout(format!(
                        "no snapshot at index {index} or beyond after {SNAPSHOT_TIMEOUT:?}"
                    )))
                }
            };
            if let Some(taken) = now {
                return Ok(taken.index);
            }
        }
    }
}
