//! Admitting a node: on the leader, add it as a learner, wait until it
//! caught up, then make it a voter in one membership change that also drops
//! any older member of the same name (the same pod with a lost volume).
//! Non-leaders pass the request to the leader.

use std::collections::BTreeSet;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tonic::Status;

use super::JOIN_TIMEOUT;
use crate::node::NodeCore;
use crate::proto::{JoinRequest, JoinResponse};
use crate::types::Member;

pub async fn handle(core: &NodeCore, request: JoinRequest) -> Result<JoinResponse, Status> {
    let ours = core.cluster_id.get();
    if ours.is_empty() || request.cluster_id != ours {
        tracing::warn!(ours = %ours, theirs = %request.cluster_id, node = %request.name, "refused a join for another cluster");
        return Err(Status::failed_precondition(format!(
            "cluster id mismatch: this node belongs to {ours:?}, the joiner to {:?}",
            request.cluster_id
        )));
    }
    let Some((leader_id, leader)) = core.leader() else {
        return Err(Status::unavailable("no leader is known; try again"));
    };
    if leader_id != core.id {
        let mut client = core.peers.client(&leader.peer_addr)?;
        let mut forwarded = tonic::Request::new(request);
        forwarded.set_timeout(JOIN_TIMEOUT);
        return client.join(forwarded).await.map(|r| r.into_inner());
    }

    let member = Member {
        name: request.name.clone(),
        peer_addr: request.peer_addr.clone(),
        api_addr: request.api_addr.clone(),
        http_addr: request.http_addr.clone(),
    };
    let membership = core.raft_metrics().membership_config.membership().clone();
    if let Some((id, owner)) = membership
        .nodes()
        .find(|(_, m)| m.peer_addr == member.peer_addr && m.name != member.name)
    {
        return Err(Status::invalid_argument(format!(
            "peer address {} already belongs to member {} (id {id})",
            member.peer_addr, owner.name
        )));
    }
    if membership.voter_ids().any(|id| id == request.node_id) {
        return Ok(JoinResponse { leader_id: core.id });
    }
    let stale: BTreeSet<u64> = membership
        .nodes()
        .filter(|(id, m)| m.name == request.name && **id != request.node_id)
        .map(|(id, _)| *id)
        .collect();

    tracing::info!(node_id = request.node_id, name = %request.name, replaces = ?stale, "adding a learner");
    core.raft
        .add_learner(request.node_id, member, true)
        .await
        .map_err(membership_error)?;
    let voters: BTreeSet<u64> = membership
        .voter_ids()
        .filter(|id| !stale.contains(id))
        .chain([request.node_id])
        .collect();
    core.raft
        .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
        .await
        .map_err(membership_error)?;
    let stale_learners: BTreeSet<u64> = core
        .raft_metrics()
        .membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| stale.contains(id))
        .map(|(id, _)| *id)
        .collect();
    if !stale_learners.is_empty() {
        core.raft
            .change_membership(ChangeMembers::RemoveNodes(stale_learners), false)
            .await
            .map_err(membership_error)?;
    }
    tracing::info!(node_id = request.node_id, name = %request.name, "promoted to voter");
    Ok(JoinResponse { leader_id: core.id })
}

pub(crate) fn membership_error(e: RaftError<u64, ClientWriteError<u64, Member>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Status::unavailable("leadership moved during the join; try again")
        }
        // Another membership change is in progress: retry once it finished.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::unavailable(format!("membership change refused for now: {e}"))
        }
        RaftError::Fatal(e) => Status::internal(e.to_string()),
    }
}
