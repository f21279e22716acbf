//! Cluster membership: founding or joining a cluster when a node starts
//! with an empty data directory, and admitting nodes that join.
//!
//! Node identity follows the volume, not the name: the Raft node id is made
//! when a data directory is first opened ([`crate::store`]), the name (pod
//! name) and addresses travel in the membership. A node that comes back
//! empty under an old name gets a new id, and joining replaces the old
//! member of that name ([`join`]).

pub mod bootstrap;
pub mod join;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use self::bootstrap::{decide, ordinal_of, Decision, Local, PeerView};
use crate::node::NodeCore;
use crate::proto::{ClusterInfoRequest, ClusterInfoResponse, JoinRequest};

/// How long one question to a peer may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a join may take: the leader answers once this node caught up,
/// which can mean receiving a large snapshot.
const JOIN_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What this node tells a starting peer about itself.
pub fn info(core: &NodeCore) -> ClusterInfoResponse {
    let metrics = core.raft_metrics();
    let membership = metrics.membership_config.membership();
    let is_member = membership.get_node(&core.id).is_some();
    let leader = metrics.current_leader;
    ClusterInfoResponse {
        cluster_id: if is_member {
            core.cluster_id.get()
        } else {
            String::new()
        },
        node_id: core.id,
        leader_id: leader,
        leader_peer_addr: leader
            .and_then(|id| membership.get_node(&id))
            .map(|m| m.peer_addr.clone())
            .unwrap_or_default(),
    }
}

/// Forms or joins the cluster, unless this node already has Raft state.
/// Retries with backoff until done or stopped.
pub async fn run(core: Arc<NodeCore>, stop: CancellationToken) {
    match core.raft.is_initialized().await {
        Ok(true) => {
            tracing::info!(cluster_id = %core.cluster_id.get(), "restarting from existing Raft state");
            return;
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!("cannot read Raft state: {e}");
            return;
        }
    }
    let peers = match core.config.peer_list() {
        Ok(peers) => peers
            .into_iter()
            .filter(|p| p.name != core.me.name)
            .collect::<Vec<_>>(),
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    let mut last_reason = String::new();
    loop {
        let mut views = Vec::with_capacity(peers.len());
        for peer in &peers {
            views.push((peer.name.clone(), ask(&core, &peer.peer_addr).await));
        }
        let cluster_id = core.cluster_id.get();
        let local = Local {
            ordinal: ordinal_of(&core.me.name),
            cluster_id: (!cluster_id.is_empty()).then_some(cluster_id),
            has_peers: !peers.is_empty(),
        };
        let outcome = match decide(&local, &views) {
            Decision::Bootstrap => bootstrap(&core).await,
            Decision::Join { cluster_id, via } => join_cluster(&core, &cluster_id, &via).await,
            Decision::Wait(reason) => Err(reason),
        };
        match outcome {
            Ok(()) => return,
            Err(reason) => {
                if reason != last_reason {
                    tracing::info!("not a member yet: {reason}");
                    last_reason = reason;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn ask(core: &NodeCore, peer_addr: &str) -> PeerView {
    let Ok(mut client) = core.peers.client(peer_addr) else {
        return PeerView::Absent;
    };
    let mut request = tonic::Request::new(ClusterInfoRequest {});
    request.set_timeout(ASK_TIMEOUT);
    match client.cluster_info(request).await {
        Ok(info) if info.get_ref().cluster_id.is_empty() => PeerView::Empty,
        Ok(info) => {
            let info = info.into_inner();
            PeerView::Member {
                cluster_id: info.cluster_id,
                peer_addr: if info.leader_peer_addr.is_empty() {
                    peer_addr.to_string()
                } else {
                    info.leader_peer_addr
                },
            }
        }
        Err(_) => PeerView::Unreachable,
    }
}

async fn bootstrap(core: &NodeCore) -> Result<(), String> {
    let cluster_id = format!("{:032x}", rand::random::<u128>());
    core.meta
        .set_cluster_id(&cluster_id)
        .map_err(|e| e.to_string())?;
    core.cluster_id.set(&cluster_id);
    let members = std::collections::BTreeMap::from([(core.id, core.me.clone())]);
    core.raft
        .initialize(members)
        .await
        .map_err(|e| format!("initializing the cluster: {e}"))?;
    tracing::info!(%cluster_id, node_id = core.id, "founded a new cluster");
    Ok(())
}

async fn join_cluster(core: &NodeCore, cluster_id: &str, via: &str) -> Result<(), String> {
    // Accept the cluster's messages before asking to be added.
    if core.cluster_id.get() != cluster_id {
        core.meta
            .set_cluster_id(cluster_id)
            .map_err(|e| e.to_string())?;
        core.cluster_id.set(cluster_id);
    }
    let mut client = core.peers.client(via).map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(JoinRequest {
        cluster_id: cluster_id.to_string(),
        node_id: core.id,
        name: core.me.name.clone(),
        peer_addr: core.me.peer_addr.clone(),
        api_addr: core.me.api_addr.clone(),
        http_addr: core.me.http_addr.clone(),
    });
    request.set_timeout(JOIN_TIMEOUT);
    client
        .join(request)
        .await
        .map_err(|s| format!("join through {via} failed: {}", s.message()))?;
    tracing::info!(%cluster_id, node_id = core.id, "joined the cluster as a voter");
    Ok(())
}
