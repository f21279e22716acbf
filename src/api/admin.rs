//! The Admin gRPC service: what operators ask a node about the cluster.

use std::sync::Arc;

use openraft::ServerState;
use tonic::{Request, Response, Status};

use super::observed;
use crate::node::NodeCore;
use crate::proto;

pub struct AdminService {
    pub core: Arc<NodeCore>,
}

pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    async fn status(
        &self,
        _: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        observed(&self.core, "Status", async {
            let metrics = self.core.raft_metrics();
            let membership = metrics.membership_config.membership();
            let voters: Vec<u64> = membership.voter_ids().collect();
            let members = membership
                .nodes()
                .map(|(id, m)| proto::Member {
                    id: *id,
                    name: m.name.clone(),
                    peer_addr: m.peer_addr.clone(),
                    api_addr: m.api_addr.clone(),
                    http_addr: m.http_addr.clone(),
                    voter: voters.contains(id),
                })
                .collect();
            Ok(Response::new(proto::StatusResponse {
                id: self.core.id,
                name: self.core.me.name.clone(),
                cluster_id: self.core.cluster_id.get(),
                role: role_name(metrics.state).to_string(),
                term: metrics.current_term,
                leader_id: metrics.current_leader,
                leader_name: metrics
                    .current_leader
                    .map(|id| self.core.member_name(id))
                    .unwrap_or_default(),
                last_log_index: metrics.last_log_index.unwrap_or(0),
                applied_index: metrics.last_applied.map_or(0, |l| l.index),
                snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
                purged_index: metrics.purged.map_or(0, |l| l.index),
                members,
            }))
        })
        .await
    }
}
