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
pub mod reconcile;

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
/// Rounds in a row that must all say "bootstrap" before a node founds a cluster.
const BOOTSTRAP_CONFIRMATIONS: u32 = 3;
/// How long one DNS lookup may take before the peer counts as unknown.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Ordinals past the last one found that are still looked up: a
/// StatefulSet's pods are numbered without gaps, so two misses (names that
/// do not exist or do not resolve in time) end the scan.
const ORDINALS_PAST_LAST: u32 = 2;

/// Where a peer is, as far as discovery can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// Its name does not exist (the pod does not).
    Absent,
    /// Its name could not be resolved just now.
    Unknown,
    At(String),
}

/// The other members of the set: from `--peers`, or in a pod by looking up
/// each ordinal's DNS name under the headless Service until they run out.
async fn discover(core: &NodeCore) -> Vec<(String, Location)> {
    let config = &core.config;
    if config.peer_service.is_none() {
        return config
            .peer_list()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.name != core.me.name)
            .map(|p| (p.name, Location::At(p.peer_addr)))
            .collect();
    }
    let own = ordinal_of(&config.name).unwrap_or(0);
    let port = config.listen_peer.port();
    let mut peers = Vec::new();
    let mut misses = 0;
    let mut ordinal = 0;
    while ordinal <= own || misses < ORDINALS_PAST_LAST {
        let name = format!("{}-{ordinal}", config.set_name());
        ordinal += 1;
        if name == config.name {
            misses = 0;
            continue;
        }
        let host = config.pod_dns_name(&name).expect("peer service is set");
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        let location = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(mut addrs)) => match addrs.next() {
                Some(_) => Location::At(format!("{host}:{port}")),
                None => Location::Absent,
            },
            Ok(Err(_)) => Location::Absent,
            Err(_) => Location::Unknown,
        };
        // An unanswered lookup ends the scan as a missing name does (it is
        // still reported as unknown, so pod 0 waits rather than founds).
        misses = if matches!(location, Location::At(_)) {
            0
        } else {
            misses + 1
        };
        peers.push((name, location));
    }
    // The trailing misses are ordinals past the end of the set, not peers.
    while peers.last().is_some_and(|(_, l)| *l == Location::Absent) {
        peers.pop();
    }
    peers
}

/// Lets a follower take over before this leader stops: it stops sending
/// heartbeats and campaigning, and waits (bounded) until another node has
/// been elected. openraft 0.9 has no leadership-transfer call and followers
/// refuse votes while the leader's lease lasts, so the handover takes about
/// one election timeout: a short pause in writes instead of a failover that
/// first has to notice a dead leader.
pub async fn hand_over_leadership(core: &NodeCore) {
    let metrics = core.raft_metrics();
    let membership = metrics.membership_config.membership();
    let other_voters = membership.voter_ids().filter(|id| *id != core.id).count();
    if metrics.current_leader != Some(core.id) || other_voters == 0 {
        return;
    }
    tracing::info!("leader shutting down: handing leadership to a follower");
    core.raft.runtime_config().elect(false);
    core.raft.runtime_config().heartbeat(false);
    let id = core.id;
    let timeout = Duration::from_millis(core.config.election_timeout_ms * 6);
    match core
        .raft
        .wait(Some(timeout))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != id),
            "a new leader",
        )
        .await
    {
        Ok(m) => tracing::info!(new_leader = ?m.current_leader, "leadership handed over"),
        Err(e) => tracing::warn!("no new leader before shutting down: {e}"),
    }
}

/// On the leader: removes a member, voter or learner, from the cluster.
pub async fn remove_member(core: &NodeCore, id: u64) -> Result<(), tonic::Status> {
    use openraft::ChangeMembers;
    let ids: std::collections::BTreeSet<u64> = [id].into_iter().collect();
    let listed = |core: &NodeCore| {
        let metrics = core.raft_metrics();
        let membership = metrics.membership_config.membership();
        (
            membership.get_node(&id).is_some(),
            membership.voter_ids().any(|v| v == id),
        )
    };
    let (member, voter) = listed(core);
    if !member {
        return Err(tonic::Status::not_found(format!(
            "{id:016x} is not a member"
        )));
    }
    if voter {
        core.raft
            .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
            .await
            .map_err(join::membership_error)?;
    }
    // A voter removed without `retain` is gone; a learner needs its own step.
    if listed(core).0 {
        core.raft
            .change_membership(ChangeMembers::RemoveNodes(ids), false)
            .await
            .map_err(join::membership_error)?;
    }
    Ok(())
}

/// Keeps this node from campaigning for `hold` (a zero hold ends an
/// earlier one), so a leadership transfer goes where it was sent.
pub fn hold_election(core: &NodeCore, hold: Duration) {
    core.raft.runtime_config().elect(hold.is_zero());
    if !hold.is_zero() {
        let raft = core.raft.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            raft.runtime_config().elect(true);
        });
    }
}

/// Moves leadership from this leader to `to` (or to the most caught-up
/// voter): every other voter holds its election, this leader stops its
/// heartbeats, and once the leader lease runs out the target's election
/// timer makes it the only candidate. Returns the new leader.
pub async fn transfer_leadership(core: &NodeCore, to: Option<u64>) -> Result<u64, tonic::Status> {
    use tonic::Status;
    let metrics = core.raft_metrics();
    if metrics.current_leader != Some(core.id) {
        return Err(Status::failed_precondition("this node is not the leader"));
    }
    let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
    let matched = |id: u64| crate::types::matched_index(&metrics, id);
    let target = match to {
        Some(id) if id == core.id => return Ok(core.id),
        Some(id) if voters.contains(&id) => id,
        Some(id) => {
            return Err(Status::invalid_argument(format!(
                "{id:016x} is not a voter"
            )))
        }
        None => *voters
            .iter()
            .filter(|id| **id != core.id)
            .max_by_key(|id| matched(**id))
            .ok_or_else(|| Status::failed_precondition("there is no other voter"))?,
    };
    let last = metrics.last_log_index.unwrap_or(0);
    let caught_up = core
        .raft
        .wait(Some(Duration::from_secs(5)))
        .metrics(
            |m| crate::types::matched_index(m, target) >= last,
            "target caught up",
        )
        .await;
    if caught_up.is_err() {
        return Err(Status::failed_precondition(format!(
            "{target:016x} did not catch up with index {last}; not transferring"
        )));
    }
    let hold = Duration::from_millis(core.config.election_timeout_ms * 6);
    let members = metrics.membership_config.membership().clone();
    let others: Vec<_> = members
        .nodes()
        .filter(|(id, _)| **id != core.id && **id != target && voters.contains(id))
        .map(|(_, m)| m.peer_addr.clone())
        .collect();
    let hold_others = |millis: u64| {
        let others = others.clone();
        async move {
            for addr in &others {
                let sent = match core.peers.client(addr) {
                    Ok(mut client) => client
                        .hold_election(core.peers.request(0, &millis, ASK_TIMEOUT))
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = sent {
                    tracing::warn!(peer = %addr, "could not hold its election: {}", e.message());
                }
            }
        }
    };
    hold_others(hold.as_millis() as u64).await;
    core.raft.runtime_config().elect(false);
    core.raft.runtime_config().heartbeat(false);
    // With no target named, any other voter winning is the transfer done.
    let me = core.id;
    let moved = core
        .raft
        .wait(Some(hold))
        .metrics(
            |m| match to {
                Some(_) => m.current_leader == Some(target),
                None => m.current_leader.is_some_and(|l| l != me),
            },
            "the transfer target to lead",
        )
        .await;
    core.raft.runtime_config().heartbeat(true);
    core.raft.runtime_config().elect(true);
    hold_others(0).await;
    match moved {
        Ok(m) => {
            let leader = m.current_leader.unwrap_or(target);
            tracing::info!(to = leader, "leadership transferred");
            Ok(leader)
        }
        Err(e) => Err(Status::unavailable(format!(
            "leadership did not move to {target:016x}: {e}"
        ))),
    }
}

/// What this node tells a starting peer about itself.
pub fn info(core: &NodeCore, asker_id: u64) -> ClusterInfoResponse {
    let metrics = core.raft_metrics();
    let membership = metrics.membership_config.membership();
    let is_member = membership.get_node(&core.id).is_some();
    let leader = metrics.current_leader;
    ClusterInfoResponse {
        asker_is_member: membership.get_node(&asker_id).is_some(),
        membership_index: metrics.membership_config.log_id().map_or(0, |l| l.index),
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
            check_still_member(&core, &stop).await;
            return;
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!("cannot read Raft state: {e}");
            return;
        }
    }
    let mut backoff = Duration::from_millis(100);
    let mut last_reason = String::new();
    let mut bootstrap_votes = 0;
    loop {
        let peers = discover(&core).await;
        let mut views = Vec::with_capacity(peers.len());
        for (name, location) in &peers {
            let view = match location {
                Location::Absent => PeerView::Absent,
                Location::Unknown => PeerView::Unreachable,
                Location::At(addr) => ask(&core, addr).await,
            };
            views.push((name.clone(), view));
        }
        let cluster_id = core.cluster_id.get();
        let local = Local {
            ordinal: ordinal_of(&core.me.name),
            cluster_id: (!cluster_id.is_empty()).then_some(cluster_id),
            has_peers: core.config.peer_service.is_some() || !peers.is_empty(),
        };
        let decision = decide(&local, &views);
        // Founding a cluster cannot be undone: see the same picture a few
        // times in a row first, so one slow DNS answer cannot cause it.
        bootstrap_votes = if decision == Decision::Bootstrap {
            bootstrap_votes + 1
        } else {
            0
        };
        let outcome = match decision {
            Decision::Bootstrap if bootstrap_votes < BOOTSTRAP_CONFIRMATIONS => {
                Err(format!("every peer is absent or empty; confirming ({bootstrap_votes}/{BOOTSTRAP_CONFIRMATIONS})"))
            }
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

/// How long a restarted node keeps asking whether it is still a member.
const MEMBERSHIP_CHECK: Duration = Duration::from_secs(60);

/// A restarted node whose data says it is a member, but whom the cluster
/// removed while it was away (a volume kept after a scale-down), must not
/// serve that stale state: it marks its data directory for discarding and
/// stops, and comes back empty to join under a new id.
async fn check_still_member(core: &NodeCore, stop: &CancellationToken) {
    let deadline = tokio::time::Instant::now() + MEMBERSHIP_CHECK;
    let ours = core.cluster_id.get();
    while tokio::time::Instant::now() < deadline {
        let mine = core
            .raft_metrics()
            .membership_config
            .log_id()
            .map_or(0, |l| l.index);
        for (name, location) in discover(core).await {
            let Location::At(addr) = location else {
                continue;
            };
            let Ok(mut client) = core.peers.client(&addr) else {
                continue;
            };
            let mut request = tonic::Request::new(ClusterInfoRequest { asker_id: core.id });
            request.set_timeout(ASK_TIMEOUT);
            let Ok(info) = client.cluster_info(request).await.map(|r| r.into_inner()) else {
                continue;
            };
            if info.cluster_id != ours {
                continue;
            }
            if info.asker_is_member {
                return;
            }
            if info.membership_index > mine {
                let reason = format!(
                    "removed from cluster {ours} while away ({name} has membership at index {} without this node); \
                     discarding this data directory and restarting empty",
                    info.membership_index
                );
                tracing::error!("{reason}");
                if let Err(e) = core.meta.mark_for_discard(&reason) {
                    tracing::error!("cannot mark the data directory for discarding: {e}");
                }
                core.stop(reason);
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn ask(core: &NodeCore, peer_addr: &str) -> PeerView {
    let Ok(mut client) = core.peers.client(peer_addr) else {
        return PeerView::Absent;
    };
    let mut request = tonic::Request::new(ClusterInfoRequest { asker_id: 0 });
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
    if core.meta.is_restored().map_err(|e| e.to_string())? {
        seal_restored_data(core).await?;
    }
    Ok(())
}

/// Restored data entered the state machine without going through the log,
/// so nodes that join must receive it as a snapshot: take one and purge the
/// log below it before anyone can join.
async fn seal_restored_data(core: &NodeCore) -> Result<(), String> {
    let id = core.id;
    let metrics = core
        .raft
        .wait(Some(Duration::from_secs(30)))
        .metrics(
            |m| m.current_leader == Some(id) && m.last_applied.is_some(),
            "leading the restored cluster",
        )
        .await
        .map_err(|e| e.to_string())?;
    let applied = metrics.last_applied.map_or(0, |l| l.index);
    let index = core
        .take_snapshot(applied)
        .await
        .map_err(|s| s.message().to_string())?;
    core.raft
        .trigger()
        .purge_log(index)
        .await
        .map_err(|e| e.to_string())?;
    core.meta.clear_restored().map_err(|e| e.to_string())?;
    tracing::info!(
        snapshot_index = index,
        "restored data sealed into the first snapshot"
    );
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
