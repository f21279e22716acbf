//! The server half of the peer transport: Raft messages from other nodes,
//! writes and read-index requests forwarded by followers, and the questions
//! a starting node asks ([`crate::cluster`] answers those).

use std::sync::Arc;
use std::time::Duration;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::limits::MAX_PEER_MESSAGE;
use crate::node::NodeCore;
use crate::proto::raft_peer_server::{RaftPeer, RaftPeerServer};
use crate::proto::{
    ClusterInfoRequest, ClusterInfoResponse, JoinRequest, JoinResponse, PeerMessage,
};
use crate::types::{Command, NodeId, TypeConfig};

/// Serves the peer port until `stop` is cancelled.
pub async fn serve(core: Arc<NodeCore>, listener: TcpListener, stop: CancellationToken) {
    let service = RaftPeerServer::new(PeerService { core })
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE);
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(service)
        .serve_with_incoming_shutdown(crate::grpc::nodelay_incoming(listener), stop.cancelled())
        .await;
    if let Err(e) = result {
        tracing::error!("peer server failed: {e}");
    }
}

struct PeerService {
    core: Arc<NodeCore>,
}

impl PeerService {
    /// Decodes a message from a peer of this node's cluster, addressed to
    /// this node. A message from another cluster is refused, and both ids
    /// are logged; so is one meant for another node id.
    fn open<T: DeserializeOwned>(&self, request: Request<PeerMessage>) -> Result<T, Status> {
        Ok(crate::grpc::open(
            &self.core.cluster_id,
            self.core.id,
            request,
        )?)
    }
}

use crate::grpc::{deadline_of, reply};

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.open(request)?;
        Ok(reply(&self.core.raft.append_entries(rpc).await))
    }

    async fn vote(&self, request: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let rpc: VoteRequest<NodeId> = self.open(request)?;
        Ok(reply(&self.core.raft.vote(rpc).await))
    }

    async fn install_snapshot(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.open(request)?;
        Ok(reply(&self.core.raft.install_snapshot(rpc).await))
    }

    async fn propose(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let deadline = deadline_of(&request, self.core.config.proposal_timeout());
        let command: Command = self.open(request)?;
        let outcome = self.core.propose_as_leader(command, deadline).await?;
        Ok(reply(&outcome))
    }

    async fn read_index(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let deadline = deadline_of(&request, self.core.config.proposal_timeout());
        self.open::<()>(request)?;
        let index = self.core.read_index_as_leader(deadline).await?;
        Ok(reply(&index))
    }

    async fn hold_election(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let millis: u64 = self.open(request)?;
        crate::cluster::hold_election(&self.core, Duration::from_millis(millis));
        Ok(reply(&()))
    }

    async fn digest(&self, request: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let index: u64 = self.open(request)?;
        let digest = self
            .core
            .digest_at(index, self.core.config.proposal_timeout())
            .await
            .map_err(Status::failed_precondition)?;
        Ok(reply(&digest))
    }

    async fn cluster_info(
        &self,
        request: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoResponse>, Status> {
        let asker = request.into_inner().asker_id;
        Ok(Response::new(crate::cluster::info(&self.core, asker)))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        crate::cluster::join::handle(&self.core, request.into_inner())
            .await
            .map(Response::new)
    }
}
