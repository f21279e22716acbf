//! The cluster-control service on the peer port: what a starting node asks
//! its peers, joining, holding an election for a leadership transfer, and
//! state digests for `verify`.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{leadership, membership, ClusterContext};
use crate::grpc::{open, reply};
use crate::proto::cluster_peer_server::{ClusterPeer, ClusterPeerServer};
use crate::proto::{
    ClusterInfoRequest, ClusterInfoResponse, JoinRequest, JoinResponse, PeerMessage,
};
use crate::raft::service::check_sender;
use crate::tls::Caller;
use crate::types::NodeId;

pub struct ClusterService {
    pub ctx: Arc<ClusterContext>,
    /// How long a digest waits for this node to apply the checkpoint.
    pub digest_timeout: Duration,
}

impl ClusterService {
    /// The gRPC service; its requests are small, and larger ones refused.
    pub fn into_server(self) -> ClusterPeerServer<ClusterService> {
        ClusterPeerServer::new(self)
            .max_decoding_message_size(crate::limits::MAX_CLUSTER_CONTROL_MESSAGE)
    }
}

/// What this node tells a starting peer about itself.
fn info(ctx: &ClusterContext, asker_id: u64) -> ClusterInfoResponse {
    let metrics = ctx.raft_metrics();
    let membership = metrics.membership_config.membership();
    let is_member = membership.get_node(&ctx.id).is_some();
    let leader = metrics.current_leader;
    // A re-founding recorded but not yet completed (the node is starting
    // again) already speaks for the new cluster: no second survivor may
    // take this node for a member of the old one meanwhile.
    let (cluster_id, refounded_from) = match ctx.meta.pending_refounding() {
        Ok(Some(pending)) => (pending.cluster_id, pending.previous_cluster_id),
        _ if is_member => (
            ctx.cluster_id.get(),
            ctx.meta.refounded_from().ok().flatten().unwrap_or_default(),
        ),
        _ => (String::new(), String::new()),
    };
    let membership_index = metrics.membership_config.log_id().map_or(0, |l| l.index);
    let applied = metrics.last_applied.map_or(0, |l| l.index);
    ClusterInfoResponse {
        asker_is_member: membership.get_node(&asker_id).is_some(),
        membership_index,
        membership_committed: applied >= membership_index,
        cluster_id,
        node_id: ctx.id,
        refounded_from,
        leader_id: leader,
        leader_peer_addr: leader
            .and_then(|id| membership.get_node(&id))
            .map(|m| m.peer_addr.clone())
            .unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl ClusterPeer for ClusterService {
    async fn hold_election(
        &self,
        mut request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let caller = Caller::take(&mut request);
        let (from, millis): (NodeId, u64) = open(&self.ctx.cluster_id, self.ctx.id, request)?;
        check_sender(&self.ctx.raft, &caller, from)?;
        leadership::hold_election(&self.ctx, from, Duration::from_millis(millis))?;
        Ok(reply(&()))
    }

    async fn campaign(
        &self,
        mut request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let caller = Caller::take(&mut request);
        let from: NodeId = open(&self.ctx.cluster_id, self.ctx.id, request)?;
        check_sender(&self.ctx.raft, &caller, from)?;
        leadership::campaign(&self.ctx, from).await?;
        Ok(reply(&()))
    }

    async fn digest(&self, request: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let index: u64 = open(&self.ctx.cluster_id, self.ctx.id, request)?;
        let digest = self.ctx.digest_at(index, self.digest_timeout).await?;
        Ok(reply(&digest))
    }

    async fn cluster_info(
        &self,
        request: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoResponse>, Status> {
        let asker = request.into_inner().asker_id;
        Ok(Response::new(info(&self.ctx, asker)))
    }

    async fn join(
        &self,
        mut request: Request<JoinRequest>,
    ) -> Result<Response<JoinResponse>, Status> {
        let caller = Caller::take(&mut request);
        Ok(Response::new(
            membership::join(&self.ctx, &caller, request.into_inner()).await?,
        ))
    }
}
