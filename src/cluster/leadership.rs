//! Moving leadership on purpose: to a chosen voter (`transfer-leader`), or
//! to the most caught-up follower before this leader stops (a short pause
//! in writes instead of a failover that first has to notice a dead leader).
//!
//! openraft 0.9 has no leadership-transfer call, and a voter refuses votes
//! while its leader's lease lasts: its longest election timeout since the
//! voter last heard from the leader, or, on the leader itself, since it
//! was elected. So a leader steps down in order: it shuts the request
//! path's gate ([`StepDown`]: it proposes nothing more, and every
//! AppendEntries would renew its followers' leases), waits until the
//! target has every entry, holds every other voter's election, stops its
//! heartbeats and asks the target to campaign. The leader's own vote and
//! the target's are a majority of three, and a leader elected more than a
//! lease ago grants it, so writes pause for an election round trip. A
//! leader elected less than a lease ago refuses, as its followers do: then
//! the target is asked again once every lease has run out.
//!
//! [`StepDown`]: crate::raft::step_down::StepDown

use std::time::Duration;

use super::formation::ASK_TIMEOUT;
use super::ClusterContext;
use crate::error::ClusterError;
use crate::grpc::call;
use crate::types::{matched_index, NodeId, RaftMetrics};

/// How long a transfer waits for the target to have every entry.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long after a lease the target is asked again: the last
/// AppendEntries, sent before the heartbeats stopped, reaches its voter
/// within this on any network a cluster runs on. Were it later, that voter
/// refuses this campaign too, and the target's own timer campaigns again.
const LEASE_MARGIN: Duration = Duration::from_millis(50);

/// Lets the most caught-up follower take over before this leader stops.
pub async fn hand_over(ctx: &ClusterContext) {
    let metrics = ctx.raft_metrics();
    let membership = metrics.membership_config.membership();
    let other_voters = membership.voter_ids().filter(|id| *id != ctx.id).count();
    if metrics.current_leader != Some(ctx.id) || other_voters == 0 {
        return;
    }
    tracing::info!("leader shutting down: handing leadership to a follower");
    match transfer(ctx, None).await {
        Ok(new_leader) => tracing::info!(new_leader, "leadership handed over"),
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

/// At `from`'s request, campaigns now: the leader stepping down in this
/// node's favour has let the voters' leases run out. Only the current
/// leader may ask, as only it may hold an election.
pub async fn campaign(ctx: &ClusterContext, from: NodeId) -> Result<(), ClusterError> {
    if ctx.leader().map(|(id, _)| id) != Some(from) {
        tracing::warn!(from, "refused to campaign for a node that does not lead");
        return Err(ClusterError::CampaignRefused { from });
    }
    tracing::info!(from, "campaigning: the leader steps down for this node");
    ctx.raft
        .trigger()
        .elect()
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))
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
    let stepping = ctx.step_down.begin();
    // Writes let through before the gate shut may still be on their way
    // into the log. Once they are all answered the log ends where it ends,
    // and the target must have all of it: a voter with more refuses it.
    let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
    let drained = tokio::time::timeout_at(deadline, ctx.step_down.drained()).await;
    let caught_up = match drained {
        Err(_) => false,
        Ok(()) => ctx
            .raft
            .wait(Some(deadline - tokio::time::Instant::now()))
            .metrics(
                |m| {
                    let last = m.last_log_index.unwrap_or(0);
                    applied_index(m) >= last && matched_index(m, target) >= last
                },
                "target caught up",
            )
            .await
            .is_ok(),
    };
    if !caught_up {
        return Err(ClusterError::NotCaughtUp {
            target,
            index: ctx.raft_metrics().last_log_index.unwrap_or(0),
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
    let moved = |m: &RaftMetrics| match to {
        Some(_) => m.current_leader == Some(target),
        None => m.current_leader.is_some_and(|l| l != me),
    };
    let lease = Duration::from_millis(ctx.raft.config().election_timeout_max);
    ask_to_campaign(ctx, &metrics, target).await;
    let mut outcome = ctx
        .raft
        .wait(Some(lease + LEASE_MARGIN))
        .metrics(moved, "the transfer target to lead")
        .await;
    if outcome.is_err() {
        tracing::info!(
            target,
            "the first campaign failed: asking again after the leases"
        );
        // Any successor will do for a hand-over: let the others campaign
        // too, should the target be the one that cannot win.
        if to.is_none() {
            hold_others(ctx, &others, Duration::ZERO).await;
        }
        ask_to_campaign(ctx, &metrics, target).await;
        outcome = ctx
            .raft
            .wait(Some(hold))
            .metrics(moved, "the transfer target to lead")
            .await;
    }
    ctx.raft.runtime_config().heartbeat(true);
    ctx.raft.runtime_config().elect(true);
    hold_others(ctx, &others, Duration::ZERO).await;
    drop(stepping);
    match outcome {
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

fn applied_index(metrics: &RaftMetrics) -> u64 {
    metrics.last_applied.map_or(0, |l| l.index)
}

/// Asks `target` to campaign now. One that cannot be told is logged, not
/// fatal: its own election timer campaigns a moment later.
async fn ask_to_campaign(ctx: &ClusterContext, metrics: &RaftMetrics, target: NodeId) {
    let membership = metrics.membership_config.membership();
    let Some(member) = membership.get_node(&target) else {
        return;
    };
    let sent: Result<(), String> = match ctx.peer(&member.peer_addr) {
        Ok(mut client) => call(&ctx.cluster_id, target, &ctx.id, ASK_TIMEOUT, |r| {
            client.campaign(r)
        })
        .await
        .map_err(|s| s.message().to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = sent {
        tracing::warn!(target, "could not ask it to campaign: {e}");
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
