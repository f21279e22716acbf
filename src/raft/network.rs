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
    Fatal, Infallible, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::error::PeerError;
use crate::grpc::call;
use crate::limits::MAX_PEER_MESSAGE;
use crate::metrics::PeerMetrics;
use crate::proto::raft_peer_client::RaftPeerClient;
use crate::proto::PeerMessage;
use crate::tls::{Dial, PeerTls};
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
    /// How connections to the peers are made.
    dial: Dial,
}

impl PeerClients {
    pub fn new(cluster_id: ClusterId, tls: Option<PeerTls>) -> PeerClients {
        PeerClients {
            channels: Arc::default(),
            cluster_id,
            dial: tls.map_or(Dial::Plain, Dial::Peer),
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
        let channel = self.dial.lazy_channel(endpoint);
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

/// A Raft call's result as it crosses the wire: the reply's payload.
pub type RaftReply<T, E = Infallible> = Result<T, WireError<E>>;

/// A Raft call's error on the wire. openraft's own `RaftError` nests
/// `AnyError`s without bound (each may carry its `source`), which postcard
/// decodes by recursion: a reply nesting them a few hundred thousand deep,
/// far below the peer message limit, overflowed the decoding task's stack
/// and aborted the node. So a fatal error crosses as its message, which
/// the caller logs; an API error (the snapshot mismatch that restarts a
/// transfer) crosses as itself, and has no nesting.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireError<E> {
    Api(E),
    Fatal(String),
}

/// What the peer port answers a Raft call with.
pub fn to_wire<T, E>(result: Result<T, RaftError<NodeId, E>>) -> RaftReply<T, E> {
    result.map_err(|e| match e {
        RaftError::APIError(e) => WireError::Api(e),
        RaftError::Fatal(fatal) => WireError::Fatal(fatal.to_string()),
    })
}

impl PeerConnection {
    /// Sends `rpc` to the target with `send`; the payload of the reply is
    /// the remote call's own result.
    async fn send<Req, T, E, F, Fut>(
        &self,
        rpc: &Req,
        option: RPCOption,
        send: F,
    ) -> RpcResult<T, RaftError<NodeId, E>>
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
        let response: Result<RaftReply<T, E>, Status> =
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
        result.map_err(|e| {
            let e = match e {
                WireError::Api(e) => RaftError::APIError(e),
                WireError::Fatal(message) => {
                    tracing::warn!(peer = self.target, "the peer's Raft stopped: {message}");
                    RaftError::Fatal(Fatal::Stopped)
                }
            };
            RPCError::RemoteError(RemoteError::new(self.target, e))
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply that nests errors 200 000 deep (1 MB, a fifth of
    /// `MAX_PEER_MESSAGE`): `Err(Fatal(StorageError(IO { Store, Read,
    /// AnyError { source: Some(AnyError { source: Some(…) }) } })))` as
    /// openraft's own error type encodes it. Decoding it as that type, as
    /// the replies were, overflows a tokio worker's 2 MiB stack and aborts
    /// the process (found writing the `peer_message` fuzz target, whose
    /// binary reports it as a stack overflow).
    #[test]
    fn a_deeply_nested_reply_does_not_overflow_the_stack() {
        const DEPTH: usize = 200_000;
        let mut bytes = vec![1, 1, 0, 1, 0, 0];
        for _ in 0..DEPTH {
            bytes.extend([0, 0, 1]); // no type, empty message, a source:
        }
        bytes.extend([0, 0, 0, 0, 0]); // the innermost: no source, context or backtrace
        for _ in 0..DEPTH {
            bytes.extend([0, 0]); // each outer error's context and backtrace
        }
        bytes.push(0);
        let decoded = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                crate::grpc::decode::<RaftReply<AppendEntriesResponse<NodeId>>>(&bytes).is_ok()
            })
            .expect("a thread")
            .join();
        assert!(decoded.is_ok(), "decoding panicked");
    }

    #[test]
    fn errors_cross_the_wire_as_api_errors_or_messages() {
        let api: RaftReply<(), InstallSnapshotError> = to_wire(Err(RaftError::APIError(
            InstallSnapshotError::SnapshotMismatch(openraft::error::SnapshotMismatch {
                expect: openraft::SnapshotSegmentId {
                    id: "a".into(),
                    offset: 0,
                },
                got: openraft::SnapshotSegmentId {
                    id: "b".into(),
                    offset: 7,
                },
            }),
        )));
        assert!(matches!(
            api,
            Err(WireError::Api(InstallSnapshotError::SnapshotMismatch(_)))
        ));
        let fatal: RaftReply<()> = to_wire(Err(RaftError::Fatal(Fatal::Panicked)));
        assert!(matches!(fatal, Err(WireError::Fatal(m)) if m == "panicked"));
    }
}
