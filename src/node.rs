//! A running node: wires storage, Raft, the peer and client servers, HTTP and
//! cluster formation together, and stops them in order.
//!
//! Start-up: open the data directory, start Raft on it, bind every port (so a
//! busy port fails start-up, not a background task), serve, then form or
//! rejoin the cluster in the background ([`crate::cluster`]). Shutdown:
//! stop taking client requests, hand leadership over, stop the peer
//! transport, stop Raft. Nobody leaves the membership on shutdown: a
//! stopping pod is usually coming back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::raft::network::{NetworkFactory, PeerClients};
use crate::raft::proposer::Proposer;
use crate::store::state_machine::Digests;
use crate::store::{FlushStats, KvReader, Meta, Store, StoreError, WatchFeed};
use crate::types::{ClusterId, Member, NodeId, Raft, RaftMetrics};

/// How long building a snapshot may take before a caller gives up.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What every part of a running node shares.
pub struct NodeCore {
    pub id: NodeId,
    pub config: Config,
    /// How the membership describes this node.
    pub me: Member,
    pub raft: Raft,
    pub cluster_id: ClusterId,
    pub meta: Meta,
    pub reader: KvReader,
    pub feed: WatchFeed,
    pub peers: PeerClients,
    /// Bounds the writes waiting to commit on this node.
    pub proposals: Arc<Semaphore>,
    /// Batches this node's proposals while it leads.
    pub proposer: Proposer,
    pub metrics: Metrics,
    pub flush_stats: Arc<FlushStats>,
    /// Bounds the open Watch streams.
    pub watchers: Arc<Semaphore>,
    /// State digests taken at checkpoints, for `verify`.
    pub digests: Digests,
    /// Cancelled when the node stops serving clients.
    pub shutdown: CancellationToken,
    /// Set when the node must stop by itself, with the reason.
    stop_reason: watch::Sender<Option<String>>,
}

impl NodeCore {
    /// Stops serving clients at once and asks the node's owner to shut it
    /// down ([`Node::stopped`] returns the reason).
    pub fn stop(&self, reason: String) {
        self.shutdown.cancel();
        self.stop_reason.send_replace(Some(reason));
    }

    pub fn raft_metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The current leader's id and membership entry, if one is known.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let member = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .clone();
        Some((leader, member))
    }

    /// A member's name by id, for display.
    pub fn member_name(&self, id: NodeId) -> String {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| id.to_string())
    }

    /// Waits until this node applied the entry at `index`, then returns
    /// the digest taken there.
    pub async fn digest_at(
        &self,
        index: u64,
        timeout: Duration,
    ) -> Result<crate::types::Digest, String> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "checkpoint")
            .await
            .map_err(|e| format!("did not apply index {index}: {e}"))?;
        self.digests.get(index).ok_or_else(|| {
            format!("no digest at index {index} (installed a snapshot past it, or restarted)")
        })
    }

    /// Builds a snapshot that covers at least `index` and returns its index.
    pub async fn take_snapshot(&self, index: u64) -> Result<u64, tonic::Status> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        self.raft
            .wait(Some(SNAPSHOT_TIMEOUT))
            .metrics(|m| m.snapshot.is_some_and(|s| s.index >= index), "snapshot")
            .await
            .map(|m| m.snapshot.map_or(0, |s| s.index))
            .map_err(|e| {
                tonic::Status::deadline_exceeded(format!("snapshot not built in time: {e}"))
            })
    }

    /// Renders the Prometheus exposition.
    pub fn render_metrics(&self) -> String {
        let raft = self.raft_metrics();
        self.metrics.render(crate::metrics::Snapshot {
            raft: &raft,
            flush: &self.flush_stats,
            disk_bytes: self.meta.size_on_disk(),
        })
    }
}

/// A running node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    core: Arc<NodeCore>,
    api_addr: SocketAddr,
    peer_addr: SocketAddr,
    http_addr: SocketAddr,
    /// Cancelled to stop serving clients (gRPC API and HTTP).
    stop_clients: CancellationToken,
    /// Cancelled to stop the peer transport and background tasks.
    stop_peers: CancellationToken,
    client_tasks: TaskTracker,
    peer_tasks: TaskTracker,
    /// Set when the node stopped by itself, with the reason.
    stopped: watch::Receiver<Option<String>>,
}

impl Node {
    /// Opens the data directory, starts Raft and every server, and begins
    /// forming or rejoining the cluster. Returns once all ports are bound.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        config.validate()?;
        let store = Store::open(&config.data_dir, &config.store_options())?;
        let cluster_id = ClusterId::default();
        if let Some(id) = store.meta.cluster_id()? {
            cluster_id.set(&id);
        }
        let raft_config = openraft::Config {
            cluster_name: "raftset".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms,
            election_timeout_max: config.election_timeout_ms * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_entries),
            max_in_snapshot_log_to_keep: config.snapshot_entries / 10,
            max_payload_entries: crate::limits::MAX_ENTRIES_PER_APPEND,
            snapshot_max_chunk_size: crate::limits::SNAPSHOT_CHUNK,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let peers = PeerClients::new(cluster_id.clone());
        let reader = store.state_machine.reader();
        let feed = store.state_machine.feed();
        let flush_stats = store.log.stats();
        let digests = store.state_machine.digests();
        let raft = Raft::new(
            store.node_id,
            Arc::new(raft_config),
            NetworkFactory {
                clients: peers.clone(),
            },
            store.log,
            store.state_machine,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen { what, addr, source })
        };
        let peer_listener = bind("peer", config.listen_peer).await?;
        let api_listener = bind("client gRPC", config.listen_api).await?;
        let http_listener = bind("HTTP", config.listen_http).await?;
        let local = |l: &TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| StartError::Listen { what, addr, source })
        };
        let peer_addr = local(&peer_listener, "peer", config.listen_peer)?;
        let api_addr = local(&api_listener, "client gRPC", config.listen_api)?;
        let http_addr = local(&http_listener, "HTTP", config.listen_http)?;

        let stop_clients = CancellationToken::new();
        let (stop_reason, stopped) = watch::channel(None);
        let core = Arc::new(NodeCore {
            id: store.node_id,
            me: Member {
                name: config.name.clone(),
                peer_addr: config.peer_addr(),
                api_addr: config.api_addr(),
                http_addr: config.http_addr(),
            },
            proposals: Arc::new(Semaphore::new(config.max_pending_proposals)),
            proposer: Proposer::start(raft.clone(), config.dedup_window_secs * 1000),
            config,
            raft,
            cluster_id,
            meta: store.meta,
            reader,
            feed,
            peers,
            metrics: Metrics::default(),
            flush_stats,
            watchers: Arc::new(Semaphore::new(crate::limits::MAX_WATCHERS)),
            digests,
            shutdown: stop_clients.clone(),
            stop_reason,
        });
        tracing::info!(
            node_id = core.id,
            name = %core.me.name,
            data_dir = %core.meta.path().display(),
            %api_addr, %peer_addr, %http_addr,
            "node started"
        );

        let stop_peers = CancellationToken::new();
        let client_tasks = TaskTracker::new();
        let peer_tasks = TaskTracker::new();

        peer_tasks.spawn(crate::raft::service::serve(
            core.clone(),
            peer_listener,
            stop_peers.clone(),
        ));
        client_tasks.spawn(crate::api::serve(
            core.clone(),
            api_listener,
            stop_clients.clone(),
        ));
        client_tasks.spawn(crate::http::serve(
            core.clone(),
            http_listener,
            stop_clients.clone(),
        ));
        peer_tasks.spawn(crate::cluster::run(core.clone(), stop_peers.clone()));
        if core.config.follow_replicas {
            peer_tasks.spawn(crate::cluster::reconcile::follow_replicas(
                core.clone(),
                stop_peers.clone(),
            ));
        }
        peer_tasks.spawn(watch_for_fatal(core.clone(), stop_peers.clone()));

        Ok(Node {
            core,
            api_addr,
            peer_addr,
            http_addr,
            stop_clients,
            stop_peers,
            client_tasks,
            peer_tasks,
            stopped,
        })
    }

    pub fn id(&self) -> NodeId {
        self.core.id
    }

    /// The bound client gRPC address (useful with port 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn core(&self) -> &Arc<NodeCore> {
        &self.core
    }

    /// Waits until this node is a member of a cluster with a known leader.
    pub async fn ready(&self, timeout: Duration) -> Result<(), String> {
        let id = self.core.id;
        self.core
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    m.current_leader.is_some()
                        && m.membership_config.membership().get_node(&id).is_some()
                },
                "member with a leader",
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A client connected to this node's gRPC port.
    pub async fn client(&self) -> Result<crate::client::Client, crate::client::ClientError> {
        let host = if self.api_addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], self.api_addr.port()))
        } else {
            self.api_addr
        };
        crate::client::Client::connect(&host.to_string()).await
    }

    /// Resolves when the node must stop by itself (a fatal storage or Raft
    /// error, or it found itself removed from its cluster), with the reason.
    /// The owner then calls [`Node::shutdown`].
    pub async fn stopped(&self) -> String {
        let mut stopped = self.stopped.clone();
        loop {
            if let Some(reason) = stopped.borrow_and_update().clone() {
                return reason;
            }
            if stopped.changed().await.is_err() {
                return "node dropped".into();
            }
        }
    }

    /// Stops the node in order: clients first, then leadership is handed
    /// to a follower, then the peer transport and Raft stop.
    pub async fn shutdown(self) {
        self.stop_clients.cancel();
        self.client_tasks.close();
        self.client_tasks.wait().await;
        crate::cluster::hand_over_leadership(&self.core).await;
        self.stop_peers.cancel();
        self.peer_tasks.close();
        self.peer_tasks.wait().await;
        if let Err(e) = self.core.raft.shutdown().await {
            tracing::warn!("raft did not stop cleanly: {e}");
        }
        tracing::info!(node_id = self.core.id, "node stopped");
    }
}

/// Stops the node when Raft stops by itself: a storage failure must never
/// leave a node answering clients.
async fn watch_for_fatal(core: Arc<NodeCore>, stop: CancellationToken) {
    let mut metrics = core.raft.metrics();
    loop {
        let running = metrics.borrow_and_update().running_state.clone();
        if let Err(fatal) = running {
            core.meta.abandon();
            let free = match core.meta.free_bytes() {
                Ok(bytes) => format!("{bytes} bytes free"),
                Err(e) => format!("free space unknown: {e}"),
            };
            let reason = format!(
                "raft stopped: {fatal} (data directory {}, {free})",
                core.meta.path().display()
            );
            tracing::error!("{reason}");
            core.stop(reason);
            return;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}
