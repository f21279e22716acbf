//! The server half of the peer transport: Raft's own messages from other
//! nodes, and the writes and read-index requests followers forward to this
//! node while it leads. Cluster control (join, digests, leadership
//! hand-over) is a service of its own in `cluster::service`, on the same
//! port; `node` puts both on one server.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, Stream};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::forwarder::ForwardedWrite;
use super::network::to_wire;
use super::read_index::ReadIndexAsk;
use super::requests::Requests;
use crate::error::{Error, PeerError, WireStatus};
use crate::grpc::{deadline_of, reply, reply_message};
use crate::limits::MAX_PEER_MESSAGE;
use crate::proto::raft_peer_server::{RaftPeer, RaftPeerServer};
use crate::proto::PeerMessage;
use crate::tls::Caller;
use crate::types::{ClusterId, Command, NodeId, Outcome, Raft, TypeConfig};
use crate::validate;

/// What the Raft peer service uses.
pub struct RaftService {
    pub id: NodeId,
    pub raft: Raft,
    /// Peer messages are accepted only from this cluster.
    pub cluster_id: ClusterId,
    pub requests: Arc<Requests>,
}

impl RaftService {
    /// The gRPC service, sized for a full AppendEntries of maximal entries.
    pub fn into_server(self) -> RaftPeerServer<RaftService> {
        RaftPeerServer::new(self)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE)
    }

    fn open<T: DeserializeOwned>(&self, request: Request<PeerMessage>) -> Result<T, Status> {
        Ok(crate::grpc::open(&self.cluster_id, self.id, request)?)
    }

    /// Decodes a Raft message sent on behalf of the node `sender` names,
    /// and checks the caller is that node (see [`check_sender`]).
    fn open_from<T: DeserializeOwned>(
        &self,
        mut request: Request<PeerMessage>,
        sender: impl FnOnce(&T) -> Option<NodeId>,
    ) -> Result<T, Status> {
        let caller = Caller::take(&mut request);
        let rpc: T = self.open(request)?;
        if let Some(id) = sender(&rpc) {
            check_sender(&self.raft, &caller, id)?;
        }
        Ok(rpc)
    }

    /// Counts a snapshot chunk from the leader as word from it, as a
    /// heartbeat is. openraft 0.9 resets a follower's election timer only
    /// on AppendEntries and on a finished install, and its leader sends no
    /// heartbeats to a follower while streaming it a snapshot: a snapshot
    /// that takes longer than an election timeout to arrive would make the
    /// follower call an election in the middle of every attempt, never
    /// catching up and deposing a healthy leader each time. An empty
    /// AppendEntries with no log position does only that: it touches the
    /// vote (refused unless it is at least this node's), and with no
    /// previous entry, no entries and no commit index it changes no log
    /// and commits nothing.
    async fn hear_from_leader(&self, vote: openraft::Vote<NodeId>) {
        if !vote.is_committed() {
            return;
        }
        let heartbeat = AppendEntriesRequest {
            vote,
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        // A refusal (a newer vote here) is the snapshot's to report.
        let _ = self.raft.append_entries(heartbeat).await;
    }
}

/// A message on behalf of member `id` must come from that member: its
/// certificate must name the address the membership knows it by, so one
/// member's certificate cannot speak for another. A sender this node does
/// not know yet (the first leader of a node that has just joined, or one
/// elected under a configuration not yet replicated here) passes on its
/// CA-signed certificate alone: it can be no one this node could mistake
/// it for.
pub fn check_sender(raft: &Raft, caller: &Caller, id: NodeId) -> Result<(), PeerError> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    match metrics.membership_config.membership().get_node(&id) {
        Some(member) if !caller.is_at(&member.peer_addr) => {
            tracing::warn!(
                claimed = %member.name,
                "refused a peer message: the caller's certificate is not that member's"
            );
            Err(PeerError::Impostor {
                claimed: member.name.clone(),
            })
        }
        _ => Ok(()),
    }
}

/// The leader's answers to a batch of forwarded writes, in the order their
/// outcomes come.
type BatchAnswers = Pin<Box<dyn Stream<Item = Result<PeerMessage, Status>> + Send>>;

/// One forwarded write, proposed here as the leader.
async fn propose_forwarded(
    requests: &Requests,
    command: Command,
    deadline: Instant,
) -> Result<Outcome, Error> {
    // A follower checked it already; the peer port must not be a way
    // around the limits every replica relies on.
    validate::command(&command)?;
    Ok(requests.propose_as_leader(command, deadline).await?)
}

#[tonic::async_trait]
impl RaftPeer for RaftService {
    async fn append_entries(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self
            .open_from(request, |r: &AppendEntriesRequest<TypeConfig>| {
                r.vote.leader_id().voted_for()
            })?;
        Ok(reply(&to_wire(self.raft.append_entries(rpc).await)))
    }

    async fn vote(&self, request: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let rpc: VoteRequest<NodeId> = self.open_from(request, |r: &VoteRequest<NodeId>| {
            r.vote.leader_id().voted_for()
        })?;
        Ok(reply(&to_wire(self.raft.vote(rpc).await)))
    }

    async fn install_snapshot(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self
            .open_from(request, |r: &InstallSnapshotRequest<TypeConfig>| {
                r.vote.leader_id().voted_for()
            })?;
        self.hear_from_leader(rpc.vote).await;
        Ok(reply(&to_wire(self.raft.install_snapshot(rpc).await)))
    }

    type ProposeStream = BatchAnswers;

    /// A follower's batch: every write proposed at once, each with its own
    /// deadline, and each answered as soon as it has its outcome.
    async fn propose(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<BatchAnswers>, Status> {
        let writes: Vec<ForwardedWrite> = self.open(request)?;
        let cap = self.requests.proposal_timeout();
        let answers: FuturesUnordered<_> = writes
            .into_iter()
            .enumerate()
            .map(|(at, write)| {
                let requests = self.requests.clone();
                async move {
                    let deadline =
                        Instant::now() + Duration::from_millis(write.timeout_ms).min(cap);
                    let answer = propose_forwarded(&requests, write.command, deadline).await;
                    let answer = answer.map_err(|e| WireStatus::from(Status::from(e)));
                    Ok(reply_message(&(at as u32, answer)))
                }
            })
            .collect();
        Ok(Response::new(Box::pin(answers)))
    }

    async fn read_index(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let deadline = deadline_of(&request, self.requests.proposal_timeout());
        let ask: ReadIndexAsk = self.open_from(request, |ask: &ReadIndexAsk| Some(ask.from))?;
        let answer = self
            .requests
            .read_index_for(ask, deadline)
            .await
            .map_err(Error::from)?;
        Ok(reply(&answer))
    }
}
