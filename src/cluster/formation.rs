//! Forming or joining the cluster when a node starts, and checking on
//! restart that the cluster still counts this node as a member. The
//! decision is [`super::bootstrap`]'s; this file does the asking, the
//! founding and the joining, and moves the node's
//! [`Formation`](crate::types::Formation).
//!
//! In a pod, founding goes through the founding record ([`super::kube`]):
//! create it (unconfirmed) → initialise Raft → wait until the founding entry
//! is durable → update it to confirmed → serve. The node serves (becomes
//! ready, admits joiners, acknowledges writes) only after the last step, so
//! a record left unconfirmed proves that nothing was ever acknowledged, and
//! the next pod 0 on an empty volume may take it over.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::bootstrap::{decide, Confirmations, Decision, FoundingRecord, Local, PeerView};
use super::discovery::{discover, Location, Resolver};
use super::identity::ordinal_of;
use super::kube::{call, Founding, KubeApi, StoredRecord};
use super::ClusterContext;
use crate::error::ClusterError;
use crate::proto::{ClusterInfoRequest, ClusterInfoResponse, JoinRequest};
use crate::types::Standing;

/// How long one question to a peer may take.
pub(super) const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a join may take: the leader answers once this node caught up,
/// which can mean receiving a large snapshot.
pub(super) const JOIN_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a founder waits for its founding entry to be durable (it
/// leads alone, so this is one local flush).
const FOUNDING_DURABLE: Duration = Duration::from_secs(30);

/// Forms or joins the cluster, unless this node already has Raft state.
/// Retries with backoff until done or stopped.
pub async fn run(ctx: &ClusterContext, stop: CancellationToken) {
    let kube = KubeApi::new(&ctx.config).ok().map(Arc::new);
    match ctx.raft.is_initialized().await {
        Ok(true) => {
            tracing::info!(cluster_id = %ctx.cluster_id.get(), "restarting from existing Raft state");
            restart(ctx, kube.as_ref(), &stop).await;
            return;
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!("cannot read Raft state: {e}");
            return;
        }
    }
    let resolver = Resolver::from_system();
    let mut backoff = Duration::from_millis(100);
    let mut last_reason = String::new();
    let mut confirmations = Confirmations::default();
    loop {
        if is_voter(ctx) {
            // Made a voter by an operator's membership change, or a founding
            // whose last steps failed: what is left is a restart's. (A
            // learner goes on joining: the join promotes it.)
            restart(ctx, kube.as_ref(), &stop).await;
            return;
        }
        let outcome = match read_record(kube.as_ref()).await {
            Ok((record, stored)) => {
                let views = views(ctx, &resolver).await;
                let local = local(ctx, !views.is_empty());
                let decision = decide(&local, &record, &views);
                match confirmations.confirm(decision) {
                    Decision::Bootstrap => found(ctx, kube.as_ref(), stored, &stop).await,
                    Decision::Join { cluster_id, via } => join_cluster(ctx, &cluster_id, &via)
                        .await
                        .map_err(|e| format!("join through {via} failed: {e}")),
                    Decision::AwaitMembers { cluster_id } => {
                        ctx.formation.set(Standing::AwaitingMembers);
                        Err(format!(
                            "the founding record says cluster {cluster_id} exists; waiting for its members \
                             to answer (ready for ordering, unavailable to clients)"
                        ))
                    }
                    Decision::Wait(reason) => {
                        ctx.formation.set(Standing::Forming);
                        Err(reason)
                    }
                }
            }
            Err(e) => Err(format!("cannot read the founding record, waiting: {e}")),
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
        if !pause(&stop, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sleeps for `time`; false when stopped meanwhile.
async fn pause(stop: &CancellationToken, time: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(time) => true,
        _ = stop.cancelled() => false,
    }
}

fn is_voter(ctx: &ClusterContext) -> bool {
    ctx.raft_metrics()
        .membership_config
        .membership()
        .voter_ids()
        .any(|id| id == ctx.id)
}

/// What this node knows about itself, for [`decide`]; `found_peers` says
/// whether discovery listed any.
fn local(ctx: &ClusterContext, found_peers: bool) -> Local {
    let cluster_id = ctx.cluster_id.get();
    Local {
        ordinal: ordinal_of(&ctx.me.name),
        cluster_id: (!cluster_id.is_empty()).then_some(cluster_id),
        has_peers: ctx.config.peer_service.is_some() || found_peers,
        restored: ctx.meta.is_restored().unwrap_or(false),
    }
}

/// What every peer that discovery finds says about itself.
async fn views(ctx: &ClusterContext, resolver: &Resolver) -> Vec<(String, PeerView)> {
    let peers = discover(&ctx.config, resolver).await;
    let mut views = Vec::with_capacity(peers.len());
    for (name, location) in peers {
        let view = match location {
            Location::Absent => PeerView::Absent,
            Location::Unknown => PeerView::Unreachable,
            Location::At(addr) => ask(ctx, &addr).await,
        };
        views.push((name, view));
    }
    views
}

/// The founding record, as [`decide`] reads it, and as stored (for an
/// update based on this read).
async fn read_record(
    kube: Option<&Arc<KubeApi>>,
) -> Result<(FoundingRecord, Option<StoredRecord>), ClusterError> {
    let Some(kube) = kube else {
        return Ok((FoundingRecord::NotUsed, None));
    };
    Ok(match call(kube, |api| api.record()).await? {
        None => (FoundingRecord::Absent, None),
        Some(stored) => (stored.founding.record(), Some(stored)),
    })
}

/// A node with Raft state serves it. In a pod it also makes sure the
/// founding record names its cluster: a sole voter may be a founder that
/// stopped before confirming, and confirms before it serves; any other
/// member records a cluster founded before records were kept.
async fn restart(ctx: &ClusterContext, kube: Option<&Arc<KubeApi>>, stop: &CancellationToken) {
    let voters: Vec<_> = ctx
        .raft_metrics()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    let sole_voter = voters == [ctx.id];
    // A member serves its data whatever the record says (a record of
    // another cluster is logged): the record guards founding, not restarts.
    if let (Some(kube), true) = (kube, sole_voter) {
        settle_record(ctx, kube, stop).await;
    }
    if !seal_if_restored(ctx, stop).await {
        return;
    }
    ctx.formation.set(Standing::Serving);
    if let (Some(kube), false) = (kube, sole_voter) {
        settle_record(ctx, kube, stop).await;
    }
}

/// Makes the founding record name this node's cluster, confirmed; retries
/// until done or stopped. A record of another cluster is left alone, unless
/// this node re-founded its data away from that cluster by force
/// ([`super::refound`]): then it is rewritten, as a restore rewrites it.
/// True once the record names this node's cluster, confirmed.
async fn settle_record(
    ctx: &ClusterContext,
    kube: &Arc<KubeApi>,
    stop: &CancellationToken,
) -> bool {
    let ours = ctx.cluster_id.get();
    let mut backoff = Duration::from_millis(100);
    loop {
        let founding = Founding::new(&ours, &ctx.me.name).confirmed();
        let settled = match call(kube, |api| api.record()).await {
            Ok(None) => call(kube, move |api| api.create_record(&founding))
                .await
                .map(|_| tracing::info!(cluster_id = %ours, "recorded this cluster's founding")),
            Ok(Some(stored)) if refounded_from(ctx, &stored) => {
                let cluster_id = ours.clone();
                call(kube, move |api| api.replace_record(&stored, &founding))
                    .await
                    .map(|_| tracing::info!(%cluster_id, "founding record rewritten for the re-founded cluster"))
            }
            Ok(Some(stored)) if stored.founding.cluster_id != ours => {
                tracing::error!(
                    recorded = %stored.founding.cluster_id, ours = %ours,
                    "the founding record names another cluster than this node's; leaving it alone"
                );
                return false;
            }
            Ok(Some(stored)) if stored.founding.confirmed => Ok(()),
            Ok(Some(stored)) => confirm(kube, stored).await,
            Err(e) => Err(e),
        };
        match settled {
            Ok(()) => return true,
            Err(e) => tracing::warn!("cannot settle the founding record yet: {e}"),
        }
        if !pause(stop, backoff).await {
            return false;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Whether `stored` names the cluster this node's data left when it was
/// re-founded by force: the one record a member may rewrite for its own.
fn refounded_from(ctx: &ClusterContext, stored: &StoredRecord) -> bool {
    match ctx.meta.refounded_from() {
        Ok(previous) => previous.as_deref() == Some(stored.founding.cluster_id.as_str()),
        Err(e) => {
            tracing::warn!("cannot read the re-founding mark: {e}");
            false
        }
    }
}

/// Marks `stored` confirmed.
async fn confirm(kube: &Arc<KubeApi>, stored: StoredRecord) -> Result<(), ClusterError> {
    let cluster_id = stored.founding.cluster_id.clone();
    call(kube, move |api| {
        api.replace_record(&stored, &stored.founding.confirmed())
    })
    .await?;
    tracing::info!(%cluster_id, "founding record confirmed");
    Ok(())
}

/// How many election timeouts a serving member may know no leader before
/// it asks its peers whether it still belongs: an election takes less.
const LEADERLESS_ELECTIONS: u32 = 2;

/// A member whom the cluster removed while it could not hear (down, or cut
/// off), or whose cluster was re-founded by force without it
/// ([`super::refound`]), must not serve its stale state, nor stay Ready as
/// a zombie: nothing tells such a node, and its own log still lists it. It
/// loses its leader (it campaigns, and nobody answers), so whenever this
/// node has known no leader for a while it asks its peers:
/// - a committed, newer membership of its cluster without it marks its
///   data directory for discarding and stops the node, which comes back
///   empty and joins under a new id;
/// - a cluster re-founded from its own marks the data for discarding and
///   starts the node again in place, empty, to join the new one.
pub async fn watch_membership(ctx: Arc<ClusterContext>, stop: CancellationToken) {
    let resolver = Resolver::from_system();
    let patience = Duration::from_millis(ctx.config.election_timeout_ms) * LEADERLESS_ELECTIONS;
    let mut leader_seen = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
        if ctx.formation.get() != Standing::Serving || ctx.leader().is_some() {
            leader_seen = tokio::time::Instant::now();
            continue;
        }
        if leader_seen.elapsed() < patience {
            continue;
        }
        let ours = ctx.cluster_id.get();
        let mine = ctx
            .raft_metrics()
            .membership_config
            .log_id()
            .map_or(0, |l| l.index);
        for (name, info) in peer_infos(&ctx, &resolver).await {
            if leave_if_refounded(&ctx, &name, &info) {
                return;
            }
            if removed_while_away(&ours, mine, &info) {
                let reason = format!(
                    "removed from cluster {ours} while away ({name} has a committed membership at index {} \
                     without this node); discarding this data directory and restarting empty",
                    info.membership_index
                );
                tracing::error!("{reason}");
                if let Err(e) = ctx.meta.mark_for_discard(&reason) {
                    tracing::error!("cannot mark the data directory for discarding: {e}");
                }
                ctx.stop.stop(reason);
                return;
            }
        }
    }
}

/// What every peer that discovery finds and that answers says about itself.
async fn peer_infos(
    ctx: &ClusterContext,
    resolver: &Resolver,
) -> Vec<(String, ClusterInfoResponse)> {
    let mut infos = Vec::new();
    for (name, location) in discover(&ctx.config, resolver).await {
        let Location::At(addr) = location else {
            continue;
        };
        let Ok(mut client) = ctx.peer(&addr) else {
            continue;
        };
        let mut request = tonic::Request::new(ClusterInfoRequest { asker_id: ctx.id });
        request.set_timeout(ASK_TIMEOUT);
        if let Ok(info) = client.cluster_info(request).await {
            infos.push((name, info.into_inner()));
        }
    }
    infos
}

/// Whether a peer's answer proves that this node, whose own membership is
/// at index `mine` of cluster `ours`, was removed while it was away: the
/// peer is in the same cluster, and its membership is newer, committed and
/// without this node. An uncommitted membership may still be replaced by a
/// new leader, so it proves nothing, and discarding a volume is for good.
fn removed_while_away(ours: &str, mine: u64, info: &ClusterInfoResponse) -> bool {
    info.cluster_id == ours
        && !info.asker_is_member
        && info.membership_committed
        && info.membership_index > mine
}

/// When peer `name` says its cluster was re-founded by force from this
/// node's cluster, this node's data belongs to a cluster that is gone: it
/// marks the data for discarding and starts again in place, empty, to join
/// the new one. True when it did.
fn leave_if_refounded(ctx: &ClusterContext, name: &str, info: &ClusterInfoResponse) -> bool {
    let ours = ctx.cluster_id.get();
    if ours.is_empty() || info.refounded_from != ours {
        return false;
    }
    let reason = format!(
        "cluster {ours} was re-founded by force as cluster {} ({name} holds it); \
         discarding this data directory and starting again empty to join it",
        info.cluster_id
    );
    tracing::error!("{reason}");
    if let Err(e) = ctx.meta.mark_for_discard(&reason) {
        tracing::error!("cannot mark the data directory for discarding: {e}");
        return false;
    }
    ctx.stop.restart(reason);
    true
}

async fn ask(ctx: &ClusterContext, peer_addr: &str) -> PeerView {
    let Ok(mut client) = ctx.peer(peer_addr) else {
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
                refounded_from: info.refounded_from,
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

/// Founds a cluster. In a pod the founding record is written first (a
/// create, or an update of the record that was read when taking over an
/// unconfirmed one or re-founding on restored data); losing that race means
/// someone else founded, and nothing happened here. Once Raft is
/// initialised there is no way back: the record is confirmed, retrying
/// until done or stopped, before this node serves; a founder whose record
/// was meanwhile rewritten for another cluster never serves.
async fn found(
    ctx: &ClusterContext,
    kube: Option<&Arc<KubeApi>>,
    read: Option<StoredRecord>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let cluster_id = new_cluster_id();
    let founding = Founding::new(&cluster_id, &ctx.me.name);
    if let Some(kube) = kube {
        call(kube, move |api| match &read {
            None => api.create_record(&founding),
            Some(stored) => api.replace_record(stored, &founding),
        })
        .await
        .map_err(|e| format!("not founding: {e}"))?;
        tracing::info!(%cluster_id, record = %kube.record_name(), "recorded the founding, unconfirmed");
    }
    initialize(ctx, &cluster_id)
        .await
        .map_err(|e| format!("founding a cluster failed: {e}"))?;
    tracing::info!(%cluster_id, node_id = ctx.id, "founded a new cluster");
    if let Some(kube) = kube {
        if !settle_record(ctx, kube, stop).await {
            return Ok(());
        }
    }
    crate::failpoint::crash_point("restore-founded-before-seal");
    if !seal_if_restored(ctx, stop).await {
        return Ok(());
    }
    ctx.formation.set(Standing::Serving);
    Ok(())
}

/// A fresh cluster id: 128 random bits in hex.
pub(super) fn new_cluster_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Seals restored data that is not sealed yet, retrying until done or
/// stopped; true once nothing is left unsealed. Runs on every start, so a
/// founder that stopped between founding and sealing seals before it
/// serves or admits anyone.
async fn seal_if_restored(ctx: &ClusterContext, stop: &CancellationToken) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        let sealed = match ctx.meta.is_restored() {
            Ok(false) => return true,
            Ok(true) => seal_restored_data(ctx).await,
            Err(e) => Err(e.into()),
        };
        match sealed {
            Ok(()) => return true,
            Err(e) => tracing::warn!("sealing the restored data failed, retrying: {e}"),
        }
        if !pause(stop, backoff).await {
            return false;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Initialises Raft with this node as the only voter and waits until the
/// founding entry is durable: this node leads and applied it.
async fn initialize(ctx: &ClusterContext, cluster_id: &str) -> Result<(), ClusterError> {
    ctx.meta.set_cluster_id(cluster_id)?;
    ctx.cluster_id.set(cluster_id);
    let members = std::collections::BTreeMap::from([(ctx.id, ctx.me.clone())]);
    ctx.raft
        .initialize(members)
        .await
        .map_err(|e| ClusterError::Raft(format!("initializing the cluster: {e}")))?;
    let id = ctx.id;
    ctx.raft
        .wait(Some(FOUNDING_DURABLE))
        .metrics(
            |m| m.current_leader == Some(id) && m.last_applied.is_some(),
            "the founding entry applied",
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
    Ok(())
}

/// Restored data entered the state machine without going through the log,
/// so nodes that join must receive it as a snapshot: take one and purge the
/// log below it before anyone can join.
async fn seal_restored_data(ctx: &ClusterContext) -> Result<(), ClusterError> {
    let id = ctx.id;
    let metrics = ctx
        .raft
        .wait(Some(Duration::from_secs(30)))
        .metrics(
            |m| m.current_leader == Some(id) && m.last_applied.is_some(),
            "leading the restored cluster",
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
    let applied = metrics.last_applied.map_or(0, |l| l.index);
    let index = ctx.take_snapshot(applied).await?;
    ctx.raft
        .trigger()
        .purge_log(index)
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
    ctx.meta.clear_restored()?;
    tracing::info!(
        snapshot_index = index,
        "restored data sealed into the first snapshot"
    );
    Ok(())
}

async fn join_cluster(
    ctx: &ClusterContext,
    cluster_id: &str,
    via: &str,
) -> Result<(), ClusterError> {
    // Accept the cluster's messages before asking to be added.
    if ctx.cluster_id.get() != cluster_id {
        ctx.meta.set_cluster_id(cluster_id)?;
        ctx.cluster_id.set(cluster_id);
    }
    let mut client = ctx.peer(via)?;
    let mut request = tonic::Request::new(JoinRequest {
        cluster_id: cluster_id.to_string(),
        node_id: ctx.id,
        name: ctx.me.name.clone(),
        peer_addr: ctx.me.peer_addr.clone(),
        api_addr: ctx.me.api_addr.clone(),
        http_addr: ctx.me.http_addr.clone(),
    });
    request.set_timeout(JOIN_TIMEOUT);
    client.join(request).await.map_err(ClusterError::Remote)?;
    tracing::info!(%cluster_id, node_id = ctx.id, "joined the cluster as a voter");
    ctx.formation.set(Standing::Serving);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_newer_committed_membership_without_this_node_removes_it() {
        let answer =
            |cluster_id: &str, member: bool, index: u64, committed: bool| ClusterInfoResponse {
                cluster_id: cluster_id.into(),
                asker_is_member: member,
                membership_index: index,
                membership_committed: committed,
                ..Default::default()
            };
        let cases = [
            (
                "removed, committed, newer",
                answer("c", false, 9, true),
                true,
            ),
            (
                "removed by a membership not yet committed",
                answer("c", false, 9, false),
                false,
            ),
            ("still a member", answer("c", true, 9, true), false),
            ("an older membership", answer("c", false, 4, true), false),
            ("the same membership", answer("c", false, 5, true), false),
            ("another cluster", answer("d", false, 9, true), false),
            ("a peer in no cluster", answer("", false, 0, true), false),
        ];
        for (name, info, expected) in cases {
            assert_eq!(removed_while_away("c", 5, &info), expected, "{name}");
        }
    }
}
