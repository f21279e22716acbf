//! The Admin gRPC service: what operators ask of the cluster, modelled on
//! `etcdctl member`/`snapshot` and `vault operator raft`. Calls that only
//! the leader can answer are passed to it over the peer port (the pooled
//! peer connection, where the same service is served), so any node accepts
//! them.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::cluster::{leadership, membership, refound, ClusterContext};
use crate::error::{ClusterError, Error, InvalidRequest};
use crate::grpc::call;
use crate::proto;
use crate::proto::admin_client::AdminClient;
use crate::raft::requests::Requests;
use crate::types::{member_name, Digest, Op, Outcome};

/// Bytes per backup chunk.
const BACKUP_CHUNK: usize = 256 * 1024;

#[derive(Clone)]
pub struct AdminService {
    pub requests: Arc<Requests>,
    pub cluster: Arc<ClusterContext>,
}

impl AdminService {
    /// `None` when this node leads; otherwise a client of the leader's
    /// Admin service on its peer port.
    fn leader_admin(&self) -> Result<Option<AdminClient<Channel>>, Status> {
        match self.cluster.leader() {
            Some((id, _)) if id == self.cluster.id => Ok(None),
            Some((_, leader)) => {
                let channel = self
                    .cluster
                    .peers
                    .channel(&leader.peer_addr)
                    .map_err(ClusterError::from)?;
                Ok(Some(AdminClient::new(channel)))
            }
            None => Err(ClusterError::NoLeader.into()),
        }
    }

    fn members_view(&self) -> proto::MembersResponse {
        self.cluster.roster().view()
    }

    fn status(&self) -> proto::StatusResponse {
        let ctx = &self.cluster;
        let metrics = ctx.raft_metrics();
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        proto::StatusResponse {
            id: ctx.id,
            name: ctx.me.name.clone(),
            cluster_id: ctx.cluster_id.get(),
            role: proto::state_name(metrics.state).to_string(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            leader_name: metrics
                .current_leader
                .map(|id| member_name(&metrics, id))
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

    /// The digest of member `id` (at `peer_addr`) at checkpoint `index`.
    async fn digest_of(
        &self,
        id: u64,
        peer_addr: &str,
        index: u64,
        timeout: Duration,
    ) -> Result<Digest, ClusterError> {
        let ctx = &self.cluster;
        if id == ctx.id {
            return ctx.digest_at(index, timeout).await;
        }
        let mut client = ctx.peer(peer_addr)?;
        call(&ctx.cluster_id, 0, &index, timeout, |r| client.digest(r))
            .await
            .map_err(ClusterError::Remote)
    }
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    type BackupStream = ReceiverStream<Result<proto::BackupChunk, Status>>;

    async fn status(
        &self,
        _: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        Ok(Response::new(self.status()))
    }

    async fn members(
        &self,
        request: Request<proto::MembersRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        match self.leader_admin()? {
            Some(mut leader) => leader.members(request.into_inner()).await,
            None => Ok(Response::new(self.members_view())),
        }
    }

    async fn add_learner(
        &self,
        request: Request<proto::AddLearnerRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        let request = request.into_inner();
        if let Some(mut leader) = self.leader_admin()? {
            return leader.add_learner(request).await;
        }
        if request.id == 0 || request.peer_addr.is_empty() {
            return Err(ClusterError::from(InvalidRequest::Missing {
                field: "id and peer_addr",
            })
            .into());
        }
        let id = request.id;
        membership::add_learner(&self.cluster, id, proto::member_of_learner(request)).await?;
        Ok(Response::new(self.members_view()))
    }

    async fn promote(
        &self,
        request: Request<proto::MemberRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        let request = request.into_inner();
        if let Some(mut leader) = self.leader_admin()? {
            return leader.promote(request).await;
        }
        membership::promote(&self.cluster, request.id).await?;
        Ok(Response::new(self.members_view()))
    }

    async fn remove(
        &self,
        request: Request<proto::MemberRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        let request = request.into_inner();
        if let Some(mut leader) = self.leader_admin()? {
            return leader.remove(request).await;
        }
        membership::remove(&self.cluster, request.id).await?;
        Ok(Response::new(self.members_view()))
    }

    async fn transfer_leader(
        &self,
        request: Request<proto::TransferLeaderRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let request = request.into_inner();
        if let Some(mut leader) = self.leader_admin()? {
            return leader.transfer_leader(request).await;
        }
        let to = (request.to != 0).then_some(request.to);
        leadership::transfer(&self.cluster, to).await?;
        Ok(Response::new(self.status()))
    }

    async fn scale_down(
        &self,
        request: Request<proto::ScaleDownRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        let request = request.into_inner();
        if let Some(mut leader) = self.leader_admin()? {
            return leader.scale_down(request).await;
        }
        membership::remove_beyond(&self.cluster, request.replicas).await?;
        Ok(Response::new(self.members_view()))
    }

    async fn prepare_stop(
        &self,
        request: Request<proto::PrepareStopRequest>,
    ) -> Result<Response<proto::PrepareStopResponse>, Status> {
        let request = request.into_inner();
        let deadline = Duration::from_millis(request.timeout_ms);
        let departure =
            membership::leave_if_scaled_away(&self.cluster, request.replicas, deadline).await?;
        Ok(Response::new(match departure {
            membership::Departure::Left => proto::PrepareStopResponse {
                left: true,
                reason: String::new(),
            },
            membership::Departure::Stayed(reason) => proto::PrepareStopResponse {
                left: false,
                reason,
            },
        }))
    }

    async fn snapshot(
        &self,
        _: Request<proto::SnapshotRequest>,
    ) -> Result<Response<proto::SnapshotResponse>, Status> {
        let applied = self
            .cluster
            .raft_metrics()
            .last_applied
            .map_or(0, |l| l.index);
        let index = self.cluster.take_snapshot(applied).await?;
        Ok(Response::new(proto::SnapshotResponse {
            snapshot_index: index,
        }))
    }

    async fn backup(
        &self,
        _: Request<proto::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        // Everything acknowledged before the call is applied here first.
        let index = self.requests.read_barrier(None).await?;
        self.cluster.take_snapshot(index).await?;
        let snapshot = self
            .cluster
            .raft
            .get_snapshot()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?
            .ok_or_else(|| ClusterError::Raft("no snapshot after taking one".into()))?;
        let (tx, rx) = mpsc::channel(4);
        let mut file = snapshot.snapshot;
        self.cluster.tasks.spawn(async move {
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
                        let error = Error::Storage(format!("reading the snapshot: {e}"));
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn force_new_cluster(
        &self,
        _: Request<proto::ForceNewClusterRequest>,
    ) -> Result<Response<proto::ForceNewClusterResponse>, Status> {
        // Never passed to a leader: it is about this node's data.
        let forced = refound::force_new_cluster(&self.cluster).await?;
        Ok(Response::new(proto::ForceNewClusterResponse {
            id: forced.node_id,
            name: forced.refounding.member.name.clone(),
            cluster_id: forced.refounding.cluster_id,
            previous_cluster_id: forced.refounding.previous_cluster_id,
            last_log_index: forced.last_log_index,
            applied_index: forced.applied_index,
            lost: forced
                .lost
                .into_iter()
                .map(|(id, member, seen)| proto::LostVoter {
                    member: Some(proto::member(id, &member, true)),
                    seen: seen.to_string(),
                })
                .collect(),
        }))
    }

    async fn verify(
        &self,
        _: Request<proto::VerifyRequest>,
    ) -> Result<Response<proto::VerifyResponse>, Status> {
        let index = match self.requests.write(Op::Checkpoint, None, None).await? {
            Outcome::Checkpoint { index } => index,
            other => {
                let unexpected = format!("unexpected outcome {other:?} for a checkpoint");
                return Err(Error::Raft(unexpected).into());
            }
        };
        let timeout = self.requests.proposal_timeout();
        let membership = self
            .cluster
            .raft_metrics()
            .membership_config
            .membership()
            .clone();
        let mut members = Vec::new();
        let mut reference = None;
        for (id, member) in membership.nodes() {
            let digest = self.digest_of(*id, &member.peer_addr, index, timeout).await;
            let (digest, error) = match digest {
                Ok(d) => {
                    reference.get_or_insert(d.clone());
                    (d.crc, String::new())
                }
                Err(e) => (String::new(), e.to_string()),
            };
            members.push(proto::MemberDigest {
                id: *id,
                name: member.name.clone(),
                digest,
                error,
            });
        }
        let reference = reference.ok_or(Error::NoDigest)?;
        let agree = members.iter().all(|m| m.digest == reference.crc);
        Ok(Response::new(proto::VerifyResponse {
            index,
            revision: reference.revision,
            keys: reference.keys,
            members,
            agree,
        }))
    }
}
