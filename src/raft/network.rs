//! The client half of the peer transport: openraft's messages to other nodes,
//! and the pool of peer connections that every service on the peer port
//! shares (Raft, forwarding, cluster control, admin calls passed to the
//! leader).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::error::PeerError;
use crate::grpc::call;
use crate::limits::MAX_PEER_MESSAGE;
use crate::metrics::PeerMetrics;
use crate::proto::raft_peer_client::RaftPeerClient;
use crate::proto::PeerMessage;
use crate::tls::PeerTls;
use crate::types::{ClusterId, Member, NodeId, TypeConfig};

/// How long a peer connection attempt may take before the peer counts as
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections to peers by address, made lazily and reused; over mutual
/// TLS unless the node runs with `--insecure-peers`.
#[derive(Clone)]
pub struct PeerClients {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    cluster_id: ClusterId,
    tls: Option<PeerTls>,
}

impl PeerClients {
    pub fn new(cluster_id: ClusterId, tls: Option<PeerTls>) -> PeerClients {
        PeerClients {
            channels: Arc::default(),
            cluster_id,
            tls,
        }
    }

    /// The pooled connection to the peer at `addr` (`host:port`), shared by
    /// every service on the peer port.
    pub fn channel(&self, addr: &str) -> Result<Channel, PeerError> {
        let mut channels = self.channels.lock().expect("peer channel lock");
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| PeerError::BadAddress {
                addr: addr.to_string(),
                detail: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = match &self.tls {
            None => endpoint.connect_lazy(),
            Some(tls) => tls.connect_lazy(endpoint),
        };
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// A Raft peer client for the peer at `addr`.
    pub fn client(&self, addr: &str) -> Result<RaftPeerClient<Channel>, PeerError> {
        Ok(RaftPeerClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE))
    }

    /// The cluster id this node stamps on what it sends.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }
}

/// When each peer last answered one of this node's Raft messages. On a
/// leader it tells which followers are alive now, which their replication
/// lag cannot: on an idle cluster a dead follower keeps the matched index
/// it had, and looks caught up forever.
#[derive(Clone, Default)]
pub struct Contacts {
    last: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Contacts {
    fn record(&self, peer: NodeId) {
        let mut last = self.last.lock().expect("contacts lock");
        last.insert(peer, Instant::now());
    }

    /// How long ago `peer` last answered, or `None` if it never has since
    /// this node started.
    pub fn since(&self, peer: NodeId) -> Option<Duration> {
        let last = self.last.lock().expect("contacts lock");
        last.get(&peer).map(Instant::elapsed)
    }
}

/// openraft's factory of per-target connections.
pub struct NetworkFactory {
    pub clients: PeerClients,
    pub contacts: Contacts,
    /// Where heartbeat round trips are recorded.
    pub metrics: PeerMetrics,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.peer_addr.clone(),
            clients: self.clients.clone(),
            contacts: self.contacts.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// openraft's connection to one target.
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    clients: PeerClients,
    contacts: Contacts,
    metrics: PeerMetrics,
}

type RpcResult<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, Member, E>>;

impl PeerConnection {
    /// Sends `rpc` to the target with `send`; the payload of the reply is
    /// the remote call's own result.
    async fn send<Req, T, E, F, Fut>(
        &self,
        rpc: &Req,
        option: RPCOption,
        send: F,
    ) -> RpcResult<T, E>
    where
        Req: Serialize,
        T: DeserializeOwned,
        E: StdError + DeserializeOwned,
        F: FnOnce(RaftPeerClient<Channel>, Request<PeerMessage>) -> Fut,
        Fut: Future<Output = Result<Response<PeerMessage>, Status>>,
    {
        let client = self
            .clients
            .client(&self.addr)
            .map_err(|s| RPCError::Unreachable(Unreachable::new(&s)))?;
        let cluster_id = self.clients.cluster_id();
        let response: Result<Result<T, E>, Status> =
            call(cluster_id, self.target, rpc, option.hard_ttl(), |r| {
                send(client, r)
            })
            .await;
        let result = response.map_err(|status| match status.code() {
            // Nothing reached the peer, or it is not serving: back off.
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        // The peer's Raft handled the message, whatever it answered.
        self.contacts.record(self.target);
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        // A heartbeat carries no entries, so the follower answers without
        // touching its disk: its answer times the network and the peer.
        let heartbeat = rpc.entries.is_empty();
        let sent = Instant::now();
        let answer = self
            .send(
                &rpc,
                option,
                |mut c, r| async move { c.append_entries(r).await },
            )
            .await;
        if heartbeat && answer.is_ok() {
            self.metrics.round_trip(self.target, sent.elapsed());
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.send(&rpc, option, |mut c, r| async move {
            c.install_snapshot(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.send(&rpc, option, |mut c, r| async move { c.vote(r).await })
            .await
    }
}
