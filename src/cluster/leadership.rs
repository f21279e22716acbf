//! Moving leadership on purpose: to a chosen voter (`transfer-leader`), or
//! to any follower before this leader stops (a short pause in writes
//! instead of a failover that first has to notice a dead leader).
//!
//! openraft 0.9 has no leadership-transfer call, and followers refuse votes
//! while the leader's lease lasts. So a transfer holds every other voter's
//! election, stops this leader's heartbeats, and lets the target's election
//! timer make it the only candidate once the lease runs out.

use std::time::Duration;

use super::formation::ASK_TIMEOUT;
use super::ClusterContext;
use crate::error::ClusterError;
use crate::grpc::call;
use crate::types::{matched_index, NodeId};

/// How long a transfer waits for the target to have every entry.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Lets a follower take over before this leader stops: it stops sending
/// heartbeats and campaigning, and waits (bounded) until another node has
/// been elected.
pub async fn hand_over(ctx: &ClusterContext) {
    let metrics = ctx.raft_metrics();
    let membership = metrics.membership_config.membership();
    let other_voters = membership.voter_ids().filter(|id| *id != ctx.id).count();
    if metrics.current_leader != Some(ctx.id) || other_voters == 0 {
        return;
    }
    tracing::info!("leader shutting down: handing leadership to a follower");
    ctx.raft.runtime_config().elect(false);
    ctx.raft.runtime_config().heartbeat(false);
    let id = ctx.id;
    match ctx
        .raft
        .wait(Some(hold_time(ctx)))
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

/// Long enough for a few elections.
fn hold_time(ctx: &ClusterContext) -> Duration {
    Duration::from_millis(ctx.config.election_timeout_ms * 6)
}

/// At `from`'s request, keeps this node from campaigning for `hold`, so a
/// leadership transfer goes where it was sent; a zero hold ends an earlier
/// one. Only the current leader may hold an election, and for no longer
/// than a transfer needs: a hold is a window in which a dead leader is not
/// replaced, so nobody else may open one, and nobody may keep it open.
pub fn hold_election(
    ctx: &ClusterContext,
    from: NodeId,
    hold: Duration,
) -> Result<(), ClusterError> {
    if !hold.is_zero() && ctx.leader().map(|(id, _)| id) != Some(from) {
        tracing::warn!(
            from,
            "refused an election hold from a node that does not lead"
        );
        return Err(ClusterError::HoldRefused { from });
    }
    let hold = hold.min(hold_time(ctx));
    ctx.raft.runtime_config().elect(hold.is_zero());
    if !hold.is_zero() {
        let raft = ctx.raft.clone();
        ctx.tasks.spawn(async move {
            tokio::time::sleep(hold).await;
            raft.runtime_config().elect(true);
        });
    }
    Ok(())
}

/// Moves leadership from this leader to `to` (or to the most caught-up
/// voter). Returns the new leader.
pub async fn transfer(ctx: &ClusterContext, to: Option<NodeId>) -> Result<NodeId, ClusterError> {
    let metrics = ctx.raft_metrics();
    if metrics.current_leader != Some(ctx.id) {
        return Err(ClusterError::NotLeader);
    }
    let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
    let target = match to {
        Some(id) if id == ctx.id => return Ok(ctx.id),
        Some(id) if voters.contains(&id) => id,
        Some(id) => return Err(ClusterError::NotVoter { id }),
        None => *voters
            .iter()
            .filter(|id| **id != ctx.id)
            .max_by_key(|id| matched_index(&metrics, **id))
            .ok_or(ClusterError::NoOtherVoter)?,
    };
    let last = metrics.last_log_index.unwrap_or(0);
    let caught_up = ctx
        .raft
        .wait(Some(CATCH_UP_TIMEOUT))
        .metrics(|m| matched_index(m, target) >= last, "target caught up")
        .await;
    if caught_up.is_err() {
        return Err(ClusterError::NotCaughtUp {
            target,
            index: last,
        });
    }
    let hold = hold_time(ctx);
    let others: Vec<String> = metrics
        .membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| **id != ctx.id && **id != target && voters.contains(id))
        .map(|(_, m)| m.peer_addr.clone())
        .collect();
    hold_others(ctx, &others, hold).await;
    ctx.raft.runtime_config().elect(false);
    ctx.raft.runtime_config().heartbeat(false);
    // With no target named, any other voter winning is the transfer done.
    let me = ctx.id;
    let moved = ctx
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
    ctx.raft.runtime_config().heartbeat(true);
    ctx.raft.runtime_config().elect(true);
    hold_others(ctx, &others, Duration::ZERO).await;
    match moved {
        Ok(m) => {
            let leader = m.current_leader.unwrap_or(target);
            tracing::info!(to = leader, "leadership transferred");
            Ok(leader)
        }
        Err(e) => Err(ClusterError::TransferFailed {
            target,
            detail: e.to_string(),
        }),
    }
}

/// Asks each voter at `addrs` to hold its election for `hold` (zero: to
/// campaign again). A voter that cannot be told is logged, not fatal: the
/// transfer may still land where it was sent.
async fn hold_others(ctx: &ClusterContext, addrs: &[String], hold: Duration) {
    let millis = hold.as_millis() as u64;
    for addr in addrs {
        let sent: Result<(), String> = match ctx.peer(addr) {
            Ok(mut client) => call(&ctx.cluster_id, 0, &(ctx.id, millis), ASK_TIMEOUT, |r| {
                client.hold_election(r)
            })
            .await
            .map_err(|s| s.message().to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            tracing::warn!(peer = %addr, "could not hold its election: {e}");
        }
    }
}
