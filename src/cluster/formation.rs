//! Forming or joining the cluster when a node starts, and checking on
//! restart that the cluster still counts this node as a member. The
//! decision is [`super::bootstrap`]'s; this file does the asking, the
//! founding and the joining.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::bootstrap::{decide, Confirmations, Decision, Local, PeerView};
use super::discovery::{discover, Location, Resolver};
use super::identity::ordinal_of;
use super::ClusterContext;
use crate::error::ClusterError;
use crate::proto::{ClusterInfoRequest, JoinRequest};

/// How long one question to a peer may take.
pub(super) const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a join may take: the leader answers once this node caught up,
/// which can mean receiving a large snapshot.
pub(super) const JOIN_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a restarted node keeps asking whether it is still a member.
const MEMBERSHIP_CHECK: Duration = Duration::from_secs(60);

/// Forms or joins the cluster, unless this node already has Raft state.
/// Retries with backoff until done or stopped.
pub async fn run(ctx: &ClusterContext, stop: CancellationToken) {
    match ctx.raft.is_initialized().await {
        Ok(true) => {
            tracing::info!(cluster_id = %ctx.cluster_id.get(), "restarting from existing Raft state");
            check_still_member(ctx, &stop).await;
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
        let peers = discover(&ctx.config, &resolver).await;
        let mut views = Vec::with_capacity(peers.len());
        for (name, location) in &peers {
            let view = match location {
                Location::Absent => PeerView::Absent,
                Location::Unknown => PeerView::Unreachable,
                Location::At(addr) => ask(ctx, addr).await,
            };
            views.push((name.clone(), view));
        }
        let cluster_id = ctx.cluster_id.get();
        let local = Local {
            ordinal: ordinal_of(&ctx.me.name),
            cluster_id: (!cluster_id.is_empty()).then_some(cluster_id),
            has_peers: ctx.config.peer_service.is_some() || !peers.is_empty(),
        };
        let outcome = match confirmations.confirm(decide(&local, &views)) {
            Decision::Bootstrap => bootstrap(ctx)
                .await
                .map_err(|e| format!("founding a cluster failed: {e}")),
            Decision::Join { cluster_id, via } => join_cluster(ctx, &cluster_id, &via)
                .await
                .map_err(|e| format!("join through {via} failed: {e}")),
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

/// A restarted node whose data says it is a member, but whom the cluster
/// removed while it was away (a volume kept after a scale-down), must not
/// serve that stale state: it marks its data directory for discarding and
/// stops, and comes back empty to join under a new id.
async fn check_still_member(ctx: &ClusterContext, stop: &CancellationToken) {
    let deadline = tokio::time::Instant::now() + MEMBERSHIP_CHECK;
    let ours = ctx.cluster_id.get();
    let resolver = Resolver::from_system();
    while tokio::time::Instant::now() < deadline {
        let mine = ctx
            .raft_metrics()
            .membership_config
            .log_id()
            .map_or(0, |l| l.index);
        for (name, location) in discover(&ctx.config, &resolver).await {
            let Location::At(addr) = location else {
                continue;
            };
            let Ok(mut client) = ctx.peer(&addr) else {
                continue;
            };
            let mut request = tonic::Request::new(ClusterInfoRequest { asker_id: ctx.id });
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
                if let Err(e) = ctx.meta.mark_for_discard(&reason) {
                    tracing::error!("cannot mark the data directory for discarding: {e}");
                }
                ctx.stop.stop(reason);
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
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

async fn bootstrap(ctx: &ClusterContext) -> Result<(), ClusterError> {
    let cluster_id = format!("{:032x}", rand::random::<u128>());
    ctx.meta.set_cluster_id(&cluster_id)?;
    ctx.cluster_id.set(&cluster_id);
    let members = std::collections::BTreeMap::from([(ctx.id, ctx.me.clone())]);
    ctx.raft
        .initialize(members)
        .await
        .map_err(|e| ClusterError::Raft(format!("initializing the cluster: {e}")))?;
    tracing::info!(%cluster_id, node_id = ctx.id, "founded a new cluster");
    if ctx.meta.is_restored()? {
        seal_restored_data(ctx).await?;
    }
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
    Ok(())
}
