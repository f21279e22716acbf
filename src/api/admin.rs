//! The Admin gRPC service: what operators ask of the cluster, modelled on
//! `etcdctl member`/`snapshot` and `vault operator raft`. Calls that only
//! the leader can answer are passed to it, so any node accepts them.

use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::observed;
use crate::cluster::join::membership_error;
use crate::error::Error;
use crate::node::NodeCore;
use crate::proto;
use crate::proto::admin_client::AdminClient;
use crate::types::{Member, Op, Outcome};

pub struct AdminService {
    pub core: Arc<NodeCore>,
}

/// Bytes per backup chunk.
const BACKUP_CHUNK: usize = 256 * 1024;

impl AdminService {
    /// `None` when this node leads; otherwise a client of the leader.
    async fn leader_admin(&self) -> Result<Option<AdminClient<Channel>>, Status> {
        match self.core.leader() {
            Some((id, _)) if id == self.core.id => Ok(None),
            Some((_, leader)) => {
                let client = AdminClient::connect(format!("http://{}", leader.api_addr))
                    .await
                    .map_err(|e| {
                        Status::unavailable(format!(
                            "cannot reach the leader at {}: {e}",
                            leader.api_addr
                        ))
                    })?;
                Ok(Some(client))
            }
            None => Err(Error::NoLeader.into()),
        }
    }

    fn members_view(&self) -> proto::MembersResponse {
        let metrics = self.core.raft_metrics();
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let last = metrics.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, m)| {
                let matched = crate::types::matched_index(&metrics, *id);
                proto::MemberProgress {
                    member: Some(proto::member(*id, m, voters.contains(id))),
                    match_index: matched,
                    lag: last.saturating_sub(matched),
                    is_leader: metrics.current_leader == Some(*id),
                }
            })
            .collect();
        proto::MembersResponse {
            members,
            leader_id: metrics.current_leader.unwrap_or(0),
            last_log_index: last,
        }
    }
}

fn status_of(core: &NodeCore) -> proto::StatusResponse {
    let metrics = core.raft_metrics();
    let membership = metrics.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    proto::StatusResponse {
        id: core.id,
        name: core.me.name.clone(),
        cluster_id: core.cluster_id.get(),
        role: proto::state_name(metrics.state).to_string(),
        term: metrics.current_term,
        leader_id: metrics.current_leader,
        leader_name: metrics
            .current_leader
            .map(|id| core.member_name(id))
            .unwrap_or_default(),
        last_log_index: metrics.last_log_index.unwrap_or(0),
        applied_index: metrics.last_applied.map_or(0, |l| l.index),
        snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
        members: membership
            .nodes()
            .map(|(id, m)| proto::member(*id, m, voters.contains(id)))
            .collect(),
        purged_index: metrics.purged.map_or(0, |l| l.index),
    }
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    type BackupStream = ReceiverStream<Result<proto::BackupChunk, Status>>;

    async fn status(
        &self,
        _: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        observed(&self.core, "Status", async {
            Ok(Response::new(status_of(&self.core)))
        })
        .await
    }

    async fn members(
        &self,
        request: Request<proto::MembersRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        observed(&self.core, "Members", async {
            match self.leader_admin().await? {
                Some(mut leader) => leader.members(request.into_inner()).await,
                None => Ok(Response::new(self.members_view())),
            }
        })
        .await
    }

    async fn add_learner(
        &self,
        request: Request<proto::AddLearnerRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        observed(&self.core, "AddLearner", async {
            let request = request.into_inner();
            if let Some(mut leader) = self.leader_admin().await? {
                return leader.add_learner(request).await;
            }
            if request.id == 0 || request.peer_addr.is_empty() {
                return Err(Status::invalid_argument("id and peer_addr are required"));
            }
            let member = Member {
                name: request.name,
                peer_addr: request.peer_addr,
                api_addr: request.api_addr,
                http_addr: request.http_addr,
            };
            self.core
                .raft
                .add_learner(request.id, member, true)
                .await
                .map_err(membership_error)?;
            Ok(Response::new(self.members_view()))
        })
        .await
    }

    async fn promote(
        &self,
        request: Request<proto::MemberRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        observed(&self.core, "Promote", async {
            let request = request.into_inner();
            if let Some(mut leader) = self.leader_admin().await? {
                return leader.promote(request).await;
            }
            let ids = [request.id].into_iter().collect();
            self.core
                .raft
                .change_membership(ChangeMembers::AddVoterIds(ids), false)
                .await
                .map_err(membership_error)?;
            Ok(Response::new(self.members_view()))
        })
        .await
    }

    async fn remove(
        &self,
        request: Request<proto::MemberRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        observed(&self.core, "Remove", async {
            let request = request.into_inner();
            if let Some(mut leader) = self.leader_admin().await? {
                return leader.remove(request).await;
            }
            crate::cluster::remove_member(&self.core, request.id).await?;
            Ok(Response::new(self.members_view()))
        })
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<proto::TransferLeaderRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        observed(&self.core, "TransferLeader", async {
            let request = request.into_inner();
            if let Some(mut leader) = self.leader_admin().await? {
                return leader.transfer_leader(request).await;
            }
            let to = (request.to != 0).then_some(request.to);
            crate::cluster::transfer_leadership(&self.core, to).await?;
            Ok(Response::new(status_of(&self.core)))
        })
        .await
    }

    async fn scale_down(
        &self,
        request: Request<proto::ScaleDownRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        observed(&self.core, "ScaleDown", async {
            let request = request.into_inner();
            if let Some(mut leader) = self.leader_admin().await? {
                return leader.scale_down(request).await;
            }
            crate::cluster::reconcile::remove_beyond(&self.core, request.replicas).await?;
            Ok(Response::new(self.members_view()))
        })
        .await
    }

    async fn snapshot(
        &self,
        _: Request<proto::SnapshotRequest>,
    ) -> Result<Response<proto::SnapshotResponse>, Status> {
        observed(&self.core, "Snapshot", async {
            let applied = self.core.raft_metrics().last_applied.map_or(0, |l| l.index);
            let index = self.core.take_snapshot(applied).await?;
            Ok(Response::new(proto::SnapshotResponse {
                snapshot_index: index,
            }))
        })
        .await
    }

    async fn backup(
        &self,
        _: Request<proto::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        observed(&self.core, "Backup", async {
            // Everything acknowledged before the call is applied here first.
            let index = self.core.read_barrier(None).await?;
            self.core.take_snapshot(index).await?;
            let snapshot = self
                .core
                .raft
                .get_snapshot()
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| Status::internal("no snapshot after taking one"))?;
            let (tx, rx) = mpsc::channel(4);
            let mut file = snapshot.snapshot;
            tokio::spawn(async move {
                let mut buf = vec![0u8; BACKUP_CHUNK];
                loop {
                    match file.read(&mut buf).await {
                        Ok(0) => return,
                        Ok(n) => {
                            let chunk = proto::BackupChunk {
                                data: buf[..n].to_vec().into(),
                            };
                            if tx.send(Ok(chunk)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx
                                .send(Err(Status::internal(format!("reading the snapshot: {e}"))))
                                .await;
                            return;
                        }
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })
        .await
    }

    async fn verify(
        &self,
        _: Request<proto::VerifyRequest>,
    ) -> Result<Response<proto::VerifyResponse>, Status> {
        observed(&self.core, "Verify", async {
            let index = match self.core.write(Op::Checkpoint, None, None).await? {
                Outcome::Checkpoint { index } => index,
                other => return Err(Status::internal(format!("unexpected outcome {other:?}"))),
            };
            let timeout = self.core.config.proposal_timeout();
            let membership = self
                .core
                .raft_metrics()
                .membership_config
                .membership()
                .clone();
            let mut members = Vec::new();
            let mut reference = None;
            for (id, member) in membership.nodes() {
                let digest = if *id == self.core.id {
                    self.core.digest_at(index, timeout).await
                } else {
                    ask_digest(&self.core, &member.peer_addr, index, timeout).await
                };
                let (digest, error) = match digest {
                    Ok(d) => {
                        reference.get_or_insert(d.clone());
                        (d.crc, String::new())
                    }
                    Err(e) => (String::new(), e),
                };
                members.push(proto::MemberDigest {
                    id: *id,
                    name: member.name.clone(),
                    digest,
                    error,
                });
            }
            let reference =
                reference.ok_or_else(|| Status::unavailable("no member reported a digest"))?;
            let agree = members.iter().all(|m| m.digest == reference.crc);
            Ok(Response::new(proto::VerifyResponse {
                index,
                revision: reference.revision,
                keys: reference.keys,
                members,
                agree,
            }))
        })
        .await
    }
}

async fn ask_digest(
    core: &NodeCore,
    peer_addr: &str,
    index: u64,
    timeout: Duration,
) -> Result<crate::types::Digest, String> {
    let mut client = core.peers.client(peer_addr).map_err(|e| e.to_string())?;
    let reply = client
        .digest(core.peers.request(0, &index, timeout))
        .await
        .map_err(|s| s.message().to_string())?;
    crate::grpc::unseal(&reply).map_err(|e| e.to_string())
}
