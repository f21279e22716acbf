//! A running node: builds each part's handles, starts the parts in order,
//! and stops them in order. The only module that sees every part.
//!
//! Start-up: open the data directory, start Raft on it, bind every port (so a
//! busy port fails start-up, not a background task), serve, then form or
//! rejoin the cluster in the background ([`crate::cluster`]). Shutdown:
//! stop taking client requests, hand leadership over, stop the peer
//! transport and every background task, stop Raft. Nobody leaves the
//! membership on shutdown: a stopping pod is usually coming back.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{AdminService, AuthorizeLayer, KvService, Watches};
use crate::auth::{ClientAuth, RoleTokens};
use crate::cluster::service::ClusterService;
use crate::cluster::{
    formation, identity, leadership, membership, ClusterContext, Stop, StopSignal,
};
use crate::config::{Config, ConfigError};
use crate::http::limit::VisitLimits;
use crate::http::{HttpSettings, HttpState};
use crate::limits;
use crate::metrics::Metrics;
use crate::proto::admin_server::AdminServer;
use crate::raft::body_limit::PeerRequestLimits;
use crate::raft::compaction::SnapshotBounds;
use crate::raft::network::{Contacts, NetworkFactory, PeerClients};
use crate::raft::requests::{Quota, RequestSettings, Requests};
use crate::raft::service::RaftService;
use crate::stagger::Stagger;
use crate::store::{DefragPolicy, FlushStats, Store, StoreError, StoreOptions};
use crate::tls::client::{ClientPortTls, Protocol};
use crate::tls::PeerTls;
use crate::types::{ClusterId, Formation, NodeId, Raft};

/// How long shutdown waits for the peer transport and the background tasks
/// to end once they are told to, well inside a pod's grace period.
const PEER_DRAIN: Duration = Duration::from_secs(5);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The store's tuning from the node's configuration.
pub fn store_options(config: &Config) -> StoreOptions {
    StoreOptions {
        cache_bytes: config.cache_mb * 1024 * 1024,
        history_revisions: config.history_revisions,
        history_bytes: config.history_bytes,
        defrag: DefragPolicy {
            min_bytes: config.defrag_min_mb.saturating_mul(1024 * 1024),
            stagger: stagger_of(config),
            ..DefragPolicy::default()
        },
        ..StoreOptions::default()
    }
}

/// This member's place in the rota of copies of its state (defrag
/// bounds, snapshot turns), from its ordinal in the set.
fn stagger_of(config: &Config) -> Stagger {
    identity::ordinal_of(&config.name).map_or(Stagger::NONE, Stagger::of_ordinal)
}

/// A running node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    id: NodeId,
    raft: Raft,
    cluster: Arc<ClusterContext>,
    flush_stats: Arc<FlushStats>,
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
    stopped: watch::Receiver<Option<Stop>>,
}

/// How far this node's log is durable and applied, and how its flushes
/// batch: what a test of flush-before-acknowledge reads.
#[derive(Clone)]
pub struct NodeStats {
    raft: Raft,
    flush_stats: Arc<FlushStats>,
}

/// One reading of [`NodeStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    pub applied_index: u64,
    /// Read after `applied_index`, so `applied_index <= durable_index` holds
    /// whenever nothing is applied before it is flushed.
    pub durable_index: u64,
    pub flushes: u64,
    pub appends: u64,
}

impl NodeStats {
    pub fn read(&self) -> Durability {
        let applied_index = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        Durability {
            applied_index,
            durable_index: self.flush_stats.durable_index.load(Ordering::SeqCst),
            flushes: self.flush_stats.flushes.get(),
            appends: self.flush_stats.appends.get(),
        }
    }
}

impl Node {
    /// Opens the data directory, starts Raft and every server, and begins
    /// forming or rejoining the cluster. Returns once all ports are bound.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        config.validate()?;
        identity::check_peers(&config)?;
        let metrics = Arc::new(Metrics::default());
        metrics.set_quota_bytes(config.quota_bytes);
        let options = StoreOptions {
            metrics: metrics.store(),
            ..store_options(&config)
        };
        let store = Store::open(&config.data_dir, &options)?;
        let cluster_id = ClusterId::default();
        let formation = Formation::default();
        if let Some(id) = store.meta.cluster_id()? {
            cluster_id.set(&id);
        }
        let raft_config = openraft::Config {
            cluster_name: "raftset".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms(),
            election_timeout_max: config.election_timeout_max_ms(),
            // `raft::compaction` decides, in this member's turns.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: config.snapshot_entries / 10,
            max_payload_entries: crate::limits::MAX_ENTRIES_PER_APPEND,
            snapshot_max_chunk_size: crate::limits::SNAPSHOT_CHUNK,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let id = store.node_id;
        let peer_tls = match &config.peer_tls_dir {
            Some(dir) => Some(PeerTls::load(dir, &config.name)?),
            None => None,
        };
        let peers = PeerClients::new(cluster_id.clone(), peer_tls.clone());
        let metrics_token = match &config.metrics_token_file {
            Some(path) => Some(crate::auth::TokenFile::open(path)?),
            None => None,
        };
        let tokens = match &config.client_tokens_file {
            Some(path) => Some(RoleTokens::open(path)?),
            None => {
                tracing::warn!(
                    "no --client-tokens-file: anyone who reaches the client port may read and write"
                );
                None
            }
        };
        let client_auth = Arc::new(ClientAuth::client_port(tokens, config.remote_admin));
        let client_tls = match &config.client_tls_dir {
            Some(dir) => Some(ClientPortTls::load(dir, Protocol::Grpc)?.acceptor()),
            None => None,
        };
        let http_tls = match &config.http_tls_dir {
            Some(dir) => Some(ClientPortTls::load(dir, Protocol::Http)?.acceptor()),
            None => None,
        };
        let contacts = Contacts::default();
        let reader = store.state_machine.reader();
        let feed = store.state_machine.feed();
        let flush_stats = store.log.stats();
        let log_size = store.log.size();
        let digests = store.state_machine.digests();
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            NetworkFactory {
                clients: peers.clone(),
                contacts: contacts.clone(),
                metrics: metrics.peers(),
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
        let probe_listener = bind("probes", config.listen_probes).await?;
        let admin_listener = bind("admin", config.listen_admin).await?;
        let local = |l: &TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| StartError::Listen { what, addr, source })
        };
        let peer_addr = local(&peer_listener, "peer", config.listen_peer)?;
        let api_addr = local(&api_listener, "client gRPC", config.listen_api)?;
        let http_addr = local(&http_listener, "HTTP", config.listen_http)?;

        let stop_clients = CancellationToken::new();
        let stop_peers = CancellationToken::new();
        let client_tasks = TaskTracker::new();
        let peer_tasks = TaskTracker::new();
        let (stop, stopped) = StopSignal::new(stop_clients.clone());
        let me = identity::member(&config);

        let requests = Arc::new(Requests::new(
            raft.clone(),
            reader.clone(),
            peers.clone(),
            RequestSettings {
                proposal_timeout: config.proposal_timeout(),
                quorum_timeout: config.quorum_timeout(),
                max_pending_proposals: config.max_pending_proposals,
                dedup_window_ms: config.dedup_window_secs * 1000,
                quota: Quota {
                    bytes: config.quota_bytes,
                    usage: store.meta.disk_usage(),
                },
            },
            formation.clone(),
            metrics.proposals(),
            &peer_tasks,
            stop_peers.clone(),
        ));
        let http_settings = HttpSettings {
            header_timeout: Duration::from_millis(config.http_header_timeout_ms),
            max_connections: config.http_max_connections,
        };
        let follow_replicas = config.follow_replicas;
        let cluster = Arc::new(ClusterContext {
            id,
            me,
            config,
            raft: raft.clone(),
            cluster_id: cluster_id.clone(),
            formation,
            meta: store.meta,
            peers,
            contacts,
            digests,
            stop: stop.clone(),
            step_down: requests.step_down(),
            tasks: peer_tasks.clone(),
        });
        let http = HttpState {
            id,
            me: cluster.me.clone(),
            raft: raft.clone(),
            roster: cluster.roster(),
            views: Default::default(),
            requests: requests.clone(),
            metrics: metrics.clone(),
            meta: cluster.meta.clone(),
            formation: cluster.formation.clone(),
            ready_max_lag: cluster.config.ready_max_lag,
            metrics_token,
            visit_limits: VisitLimits::new(
                cluster.config.visits_per_client,
                cluster.config.visits_per_second,
            ),
        };
        let admin = AdminService {
            requests: requests.clone(),
            cluster: cluster.clone(),
        };
        let kv = KvService {
            requests: requests.clone(),
            watches: Watches {
                feed,
                reader,
                permits: Arc::new(Semaphore::new(crate::limits::MAX_WATCHERS)),
                closing: stop_clients.clone(),
                tasks: client_tasks.clone(),
            },
        };
        tracing::info!(
            node_id = id,
            name = %cluster.me.name,
            data_dir = %cluster.meta.path().display(),
            %api_addr, %peer_addr, %http_addr,
            "node started"
        );

        peer_tasks.spawn(serve_peers(
            RaftService {
                id,
                raft: raft.clone(),
                cluster_id,
                requests: requests.clone(),
            },
            ClusterService {
                ctx: cluster.clone(),
                digest_timeout: requests.proposal_timeout(),
            },
            admin.clone(),
            peer_listener,
            peer_tls,
            stop_peers.clone(),
        ));
        client_tasks.spawn(crate::api::serve(
            kv.clone(),
            admin.clone(),
            AuthorizeLayer {
                auth: client_auth,
                metrics: metrics.clone(),
            },
            client_tls,
            api_listener,
            cluster.config.grpc_max_connections,
            stop_clients.clone(),
        ));
        client_tasks.spawn(crate::api::serve(
            kv,
            admin,
            AuthorizeLayer {
                auth: Arc::new(ClientAuth::loopback()),
                metrics: metrics.clone(),
            },
            None,
            admin_listener,
            crate::limits::MAX_ADMIN_CONNECTIONS,
            stop_clients.clone(),
        ));
        client_tasks.spawn(crate::http::serve(
            http,
            http_settings,
            http_listener,
            http_tls,
            probe_listener,
            stop_clients.clone(),
        ));
        let formation_ctx = cluster.clone();
        let formation_stop = stop_peers.clone();
        peer_tasks.spawn(async move { formation::run(&formation_ctx, formation_stop).await });
        peer_tasks.spawn(formation::watch_membership(
            cluster.clone(),
            stop_peers.clone(),
        ));
        if follow_replicas {
            peer_tasks.spawn(membership::follow_replicas(
                cluster.clone(),
                stop_peers.clone(),
            ));
        }
        peer_tasks.spawn(crate::raft::count_leader_changes(
            raft.server_metrics(),
            metrics.leader_changes(),
            stop_peers.clone(),
        ));
        peer_tasks.spawn(crate::raft::compaction::bound_the_log(
            raft.clone(),
            log_size,
            SnapshotBounds {
                entries: cluster.config.snapshot_entries,
                log_bytes: cluster.config.snapshot_log_bytes,
                stagger: stagger_of(&cluster.config),
            },
            stop_peers.clone(),
        ));
        peer_tasks.spawn(watch_for_fatal(
            raft.clone(),
            cluster.clone(),
            stop_peers.clone(),
        ));

        Ok(Node {
            id,
            raft,
            cluster,
            flush_stats,
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
        self.id
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

    /// How far this node's log is durable and applied.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            raft: self.raft.clone(),
            flush_stats: self.flush_stats.clone(),
        }
    }

    /// Waits until this node is a member of a cluster with a known leader,
    /// and serves (a founder: once its founding is on record).
    pub async fn ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = self.id;
        self.raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    m.current_leader.is_some()
                        && m.membership_config.membership().get_node(&id).is_some()
                },
                "member with a leader",
            )
            .await
            .map_err(|e| e.to_string())?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if self.cluster.formation.serving(left).await {
            Ok(())
        } else {
            Err(format!(
                "a member, but not serving after {timeout:?} (its founding is not on record yet)"
            ))
        }
    }

    /// A client connected to this node's gRPC port. A node that requires
    /// client tokens needs one: `node.client().await?.with_token(token)`.
    pub async fn client(&self) -> Result<crate::client::Client, crate::client::ClientError> {
        let host = if self.api_addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], self.api_addr.port()))
        } else {
            self.api_addr
        };
        crate::client::Client::connect(&host.to_string()).await
    }

    /// Resolves when the node must stop by itself (a fatal storage or Raft
    /// error, it found itself removed from its cluster, or it recorded a
    /// forced re-founding and must start again), with the reason. The
    /// owner then calls [`Node::shutdown`], and starts the node again on
    /// the same configuration when [`Stop::restart`] says so.
    pub async fn stopped(&self) -> Stop {
        let mut stopped = self.stopped.clone();
        loop {
            if let Some(stop) = stopped.borrow_and_update().clone() {
                return stop;
            }
            if stopped.changed().await.is_err() {
                return Stop {
                    reason: "node dropped".into(),
                    restart: false,
                };
            }
        }
    }

    /// Stops the node in order: clients first, then leadership is handed
    /// to a follower, then the peer transport, every background task and
    /// Raft stop. The peer tasks get [`PEER_DRAIN`] to end: a peer cut off
    /// the network never closes its connection, and the peer server's
    /// graceful shutdown would wait for it past the pod's grace period.
    pub async fn shutdown(self) {
        self.stop_clients.cancel();
        self.client_tasks.close();
        self.client_tasks.wait().await;
        leadership::hand_over(&self.cluster).await;
        self.stop_peers.cancel();
        self.peer_tasks.close();
        if tokio::time::timeout(PEER_DRAIN, self.peer_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "peer tasks still running after {PEER_DRAIN:?} (a peer that does not answer); \
                 stopping Raft without them"
            );
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft did not stop cleanly: {e}");
        }
        tracing::info!(node_id = self.id, "node stopped");
    }
}

/// Serves the peer port: Raft and forwarding, cluster control, and the
/// Admin service that other members pass admin calls to.
async fn serve_peers(
    raft: RaftService,
    cluster: ClusterService,
    admin: AdminService,
    listener: TcpListener,
    tls: Option<PeerTls>,
    stop: CancellationToken,
) {
    let acceptor = tls.as_ref().map(PeerTls::acceptor);
    let incoming = crate::tls::incoming(
        listener,
        acceptor,
        limits::MAX_PEER_CONNECTIONS,
        stop.clone(),
    );
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(limits::MAX_PEER_STREAMS)
        .layer(PeerRequestLimits)
        .add_service(raft.into_server())
        .add_service(cluster.into_server())
        .add_service(AdminServer::new(admin))
        .serve_with_incoming_shutdown(incoming, stop.cancelled())
        .await;
    if let Err(e) = result {
        tracing::error!("peer server failed: {e}");
    }
}

/// Stops the node when Raft stops by itself: a storage failure must never
/// leave a node answering clients.
async fn watch_for_fatal(raft: Raft, cluster: Arc<ClusterContext>, stop: CancellationToken) {
    // Raft's core records why it stopped in its full metrics, then drops
    // every metrics sender. The full metrics go out on every turn of the
    // core's loop, so the end is watched on the server metrics, which are
    // sent only when they change.
    let mut server = raft.server_metrics();
    loop {
        tokio::select! {
            changed = server.changed() => if changed.is_err() { break },
            _ = stop.cancelled() => return,
        }
    }
    let Err(fatal) = raft.metrics().borrow().running_state.clone() else {
        return;
    };
    let meta = &cluster.meta;
    meta.abandon();
    let free = match meta.volume() {
        Ok(volume) => format!("{} bytes free", volume.free_bytes),
        Err(e) => format!("free space unknown: {e}"),
    };
    let reason = format!(
        "raft stopped: {fatal} (data directory {}, {free})",
        meta.path().display()
    );
    tracing::error!("{reason}");
    cluster.stop.stop(reason);
}

#[cfg(test)]
mod tests {
    use super::{stagger_of, store_options, Config};

    #[test]
    fn each_ordinal_of_a_set_copies_its_state_at_bounds_of_its_own() {
        let stagger = |name: &str| {
            let config = Config {
                name: name.into(),
                ..Config::default()
            };
            assert_eq!(store_options(&config).defrag.stagger, stagger_of(&config));
            stagger_of(&config).raise(100)
        };
        assert_eq!(stagger("raftset-0"), 100);
        assert_eq!(stagger("raftset-1"), 125);
        assert_eq!(stagger("raftset-2"), 150);
        assert_eq!(stagger("raftset-3"), 100);
        assert_eq!(stagger("standalone"), 100);
    }
}
