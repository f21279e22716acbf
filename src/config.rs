//! Node configuration: one struct, parsed from flags that each have a
//! `RAFTSET_*` environment variable, with defaults that suit a pod.
//!
//! Plain data on the ground floor: what the values mean for the node's
//! identity is `cluster::identity`'s business, and `node` hands each part
//! only the settings it uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Everything a node needs to start.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// This node's name: the pod name (`raftset-2`). Its trailing number is
    /// the ordinal that decides bootstrap (0) or join (others).
    #[arg(long, env = "RAFTSET_NAME", default_value_t = default_name())]
    pub name: String,

    /// Where this node keeps its state (the pod's volume).
    #[arg(long, env = "RAFTSET_DATA_DIR", default_value = "/var/lib/raftset")]
    pub data_dir: PathBuf,

    /// Client gRPC (KV, Admin's Status and Members, health, reflection;
    /// the rest of Admin with --remote-admin).
    #[arg(long, env = "RAFTSET_LISTEN_API", default_value = "0.0.0.0:7000")]
    pub listen_api: SocketAddr,

    /// Admin gRPC for whoever runs on this host (`kubectl exec … raftset
    /// <command>`): every call, no token. Keep it on loopback.
    #[arg(long, env = "RAFTSET_LISTEN_ADMIN", default_value = DEFAULT_ADMIN_ADDR)]
    pub listen_admin: SocketAddr,

    /// Also take Admin calls that change the cluster or read all of it
    /// (membership, leader transfer, snapshot, backup, verify) on the
    /// client port; with --client-tokens-file they need the admin role.
    #[arg(long, env = "RAFTSET_REMOTE_ADMIN")]
    pub remote_admin: bool,

    /// Raft traffic between nodes.
    #[arg(long, env = "RAFTSET_LISTEN_PEER", default_value = "0.0.0.0:7001")]
    pub listen_peer: SocketAddr,

    /// HTTP: visit counter, probes, metrics.
    #[arg(long, env = "RAFTSET_LISTEN_HTTP", default_value = "0.0.0.0:8080")]
    pub listen_http: SocketAddr,

    /// HTTP for the probes alone (`/healthz`, `/readyz`), with connections
    /// of its own: however many visitors hold the HTTP port, the kubelet's
    /// probes are answered here.
    #[arg(long, env = "RAFTSET_LISTEN_PROBES", default_value = "0.0.0.0:8081")]
    pub listen_probes: SocketAddr,

    /// Mutual TLS on the peer port: a directory holding the cluster CA
    /// (`ca.crt`) and this node's certificate and key (`<name>.crt` and
    /// `<name>.key`, or `tls.crt` and `tls.key`), such as a mounted Secret
    /// made by `raftset certs` or cert-manager. Its files are read again
    /// when they change.
    #[arg(long, env = "RAFTSET_PEER_TLS_DIR", conflicts_with = "insecure_peers")]
    pub peer_tls_dir: Option<PathBuf>,

    /// Serves and calls the peer port in plaintext, unauthenticated: whoever
    /// reaches it can join, vote and copy every key. For a network that
    /// only the set's own nodes reach, or a test.
    #[arg(long, env = "RAFTSET_INSECURE_PEERS")]
    pub insecure_peers: bool,

    /// The address other nodes use to reach this node's client port; the
    /// listen address by default (its host replaced by the name when the
    /// listen address is a wildcard).
    #[arg(long, env = "RAFTSET_ADVERTISE_API")]
    pub advertise_api: Option<String>,

    /// The address other nodes use to reach this node's peer port.
    #[arg(long, env = "RAFTSET_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,

    /// The address of this node's HTTP port, as shown to users.
    #[arg(long, env = "RAFTSET_ADVERTISE_HTTP")]
    pub advertise_http: Option<String>,

    /// Every node of the set as `name=host:peer_port`, comma-separated: where
    /// a starting node looks for an existing cluster. This node may be listed.
    /// Outside Kubernetes; in a pod, set --peer-service instead.
    #[arg(
        long,
        env = "RAFTSET_PEERS",
        value_delimiter = ',',
        conflicts_with = "peer_service"
    )]
    pub peers: Vec<String>,

    /// The StatefulSet's headless Service. When set, peer `raftset-<i>` is
    /// found at `raftset-<i>.<service>.<namespace>.svc.<domain>`, and this
    /// node advertises its own name there.
    #[arg(long, env = "RAFTSET_PEER_SERVICE")]
    pub peer_service: Option<String>,

    /// The pod's namespace (from the downward API).
    #[arg(long, env = "RAFTSET_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// The Kubernetes cluster's DNS domain.
    #[arg(long, env = "RAFTSET_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Follow the StatefulSet's `spec.replicas`: the leader removes members
    /// whose ordinal is at or above it, one at a time (needs `get` on the
    /// StatefulSet). Off: scale-down is left to `raftset scale-down`.
    #[arg(long, env = "RAFTSET_FOLLOW_REPLICAS")]
    pub follow_replicas: bool,

    /// The Kubernetes API server; in a pod, found from the environment.
    /// Where there is one, founding goes through the founding record (the
    /// ConfigMap `<statefulset>-cluster`), and `--follow-replicas` reads
    /// the StatefulSet.
    #[arg(long, env = "RAFTSET_KUBE_API")]
    pub kube_api: Option<String>,

    /// How often the leader compares the membership with the replica count.
    #[arg(long, env = "RAFTSET_RECONCILE_SECS", default_value_t = 10)]
    pub reconcile_secs: u64,

    /// Leader heartbeat interval, in milliseconds.
    #[arg(long, env = "RAFTSET_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// Shortest time, in milliseconds, a follower goes without hearing from
    /// its leader before it calls an election; the longest is 1.5 × this.
    #[arg(long, env = "RAFTSET_ELECTION_TIMEOUT_MS", default_value_t = 1000)]
    pub election_timeout_ms: u64,

    /// Take a snapshot (and purge the log below it) after this many entries,
    /// in this member's turn: turns of a third of this many entries go to
    /// ordinals 0, 1 and 2 in rotation, so that members copy their state one
    /// at a time. Past twice this many, at once.
    #[arg(long, env = "RAFTSET_SNAPSHOT_ENTRIES", default_value_t = 10_000)]
    pub snapshot_entries: u64,

    /// Take a snapshot, and purge the log up to it, once the log holds this
    /// many bytes of entries, however few they are: large values would
    /// otherwise fill the volume long before `--snapshot-entries` pass. In
    /// this member's turn, as for `--snapshot-entries`; past twice this many
    /// bytes, at once.
    #[arg(long, env = "RAFTSET_SNAPSHOT_LOG_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub snapshot_log_bytes: u64,

    /// How long a write may wait to commit before its outcome is reported
    /// unknown, in milliseconds (a shorter client deadline wins).
    #[arg(long, env = "RAFTSET_PROPOSAL_TIMEOUT_MS", default_value_t = 5_000)]
    pub proposal_timeout_ms: u64,

    /// Writes in flight on the leader before new ones are refused.
    #[arg(long, env = "RAFTSET_MAX_PENDING_PROPOSALS", default_value_t = 10_000)]
    pub max_pending_proposals: usize,

    /// Revisions of change history kept for Watch.
    #[arg(long, env = "RAFTSET_HISTORY_REVISIONS", default_value_t = 10_000)]
    pub history_revisions: u64,

    /// Bytes of change history kept for Watch (its records, and the values
    /// later changes replaced), whatever the revisions: the oldest
    /// entries' changes go first (the newest entry's always stay).
    #[arg(long, env = "RAFTSET_HISTORY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub history_bytes: u64,

    /// How long a request id's outcome is remembered, in seconds. The
    /// leader's setting travels in each log entry, so members agree.
    #[arg(long, env = "RAFTSET_DEDUP_WINDOW_SECS", default_value_t = 600)]
    pub dedup_window_secs: u64,

    /// The space quota: once the database takes this many bytes on disk,
    /// the leader refuses writes that add data (deletes still pass). The
    /// default leaves half of the manifests' 1 GiB volume for the snapshot
    /// file and for sled's growth past the quota (see the README).
    #[arg(long, env = "RAFTSET_QUOTA_BYTES", default_value_t = DEFAULT_QUOTA_BYTES)]
    pub quota_bytes: u64,

    /// sled's page cache, in MiB. Applying a put reads the key it
    /// replaces: with a cache smaller than the tree's hot part, sled reads
    /// and decodes pages from its file on every apply (the largest share
    /// of a node's CPU in a profile at 8 MiB, 100,000 keys).
    #[arg(long, env = "RAFTSET_CACHE_MB", default_value_t = 64)]
    pub cache_mb: u64,

    /// The state database is copied into a fresh one (compacted) once its
    /// files take more than this many MiB and four times the latest
    /// snapshot (a quarter more per ordinal, three apart, so that members
    /// copy one at a time): sled gives little of its file back on its own.
    #[arg(long, env = "RAFTSET_DEFRAG_MIN_MB", default_value_t = 256)]
    pub defrag_min_mb: u64,

    /// A node is ready only while it is within this many entries of the leader.
    #[arg(long, env = "RAFTSET_READY_MAX_LAG", default_value_t = 1_000)]
    pub ready_max_lag: u64,

    /// HTTP: time a client has to send its request headers, in milliseconds.
    #[arg(long, env = "RAFTSET_HTTP_HEADER_TIMEOUT_MS", default_value_t = 5_000)]
    pub http_header_timeout_ms: u64,

    /// Client gRPC: most connections open at once; past it new ones are
    /// closed (one connection carries up to 1,024 requests at once).
    #[arg(long, env = "RAFTSET_GRPC_MAX_CONNECTIONS", default_value_t = 1_024)]
    pub grpc_max_connections: usize,

    /// `/metrics` requires `Authorization: Bearer <token>` whose SHA-256
    /// this file holds (`sha256:<hex>`); read again when it changes. Without
    /// it `/metrics` is open.
    #[arg(long, env = "RAFTSET_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,

    /// The client gRPC port requires `Authorization: Bearer <token>` with a
    /// role (`read`, `write`, `admin`) from this file: one line per token,
    /// `<role> sha256:<hex>`; read again when it changes. Without it, anyone
    /// who reaches the client port may do anything.
    #[arg(long, env = "RAFTSET_CLIENT_TOKENS_FILE")]
    pub client_tokens_file: Option<PathBuf>,

    /// TLS on the client gRPC port: a directory with `tls.crt` and
    /// `tls.key`, and if it holds `ca.crt` too, callers must present a
    /// certificate from that CA. Re-read when the files change.
    #[arg(long, env = "RAFTSET_CLIENT_TLS_DIR")]
    pub client_tls_dir: Option<PathBuf>,

    /// TLS on the HTTP port (visits, status, metrics; the probes' port
    /// stays plain HTTP for the kubelet): `tls.crt` and `tls.key`, and if
    /// the directory holds `ca.crt`, callers must present a certificate
    /// from that CA. Re-read when the files change.
    #[arg(long, env = "RAFTSET_HTTP_TLS_DIR")]
    pub http_tls_dir: Option<PathBuf>,

    /// HTTP: most connections served at once.
    #[arg(long, env = "RAFTSET_HTTP_MAX_CONNECTIONS", default_value_t = 1_024)]
    pub http_max_connections: usize,

    /// Visits (`GET /`) counted per second from one client address; past
    /// it, 429. Behind a proxy every visit has the proxy's address: raise it.
    #[arg(long, env = "RAFTSET_VISITS_PER_CLIENT", default_value_t = 20)]
    pub visits_per_client: u32,

    /// Visits counted per second on this node, from everyone; past it, 429.
    #[arg(long, env = "RAFTSET_VISITS_PER_SECOND", default_value_t = 1_000)]
    pub visits_per_second: u32,
}

/// Where Admin listens unless told otherwise: loopback, and a port that
/// none of `raftset local`'s nodes takes.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:7090";

/// 512 MiB: see [`Config::quota_bytes`].
pub const DEFAULT_QUOTA_BYTES: u64 = 512 * 1024 * 1024;

fn default_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "raftset-0".to_string())
}

/// A configuration that cannot work, found before anything starts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "--election-timeout-ms ({election}) must be more than 4 × --heartbeat-ms ({heartbeat})"
    )]
    ElectionTimeout { election: u64, heartbeat: u64 },
    #[error("--peers entry {0:?} is not name=host:port")]
    BadPeer(String),
    #[error("--peers lists {name} at {listed}, but this node advertises {advertised}")]
    SelfAddress {
        name: String,
        listed: String,
        advertised: String,
    },
    #[error("--peers lists {0} twice")]
    DuplicatePeer(String),
    #[error("{field} must be greater than 0")]
    Zero { field: &'static str },
    #[error(
        "the peer port needs mutual TLS (--peer-tls-dir DIR, see `raftset certs`) \
         or an explicit --insecure-peers"
    )]
    PeerSecurityUnset,
}

/// A peer from `--peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub peer_addr: String,
}

impl Default for Config {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            config: Config,
        }
        <Defaults as clap::Parser>::parse_from(["raftset"]).config
    }
}

impl Config {
    /// Checks the configuration as a whole.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let must_be_positive = [
            ("--heartbeat-ms", self.heartbeat_ms),
            ("--snapshot-entries", self.snapshot_entries),
            ("--snapshot-log-bytes", self.snapshot_log_bytes),
            ("--defrag-min-mb", self.defrag_min_mb),
            ("--max-pending-proposals", self.max_pending_proposals as u64),
            ("--grpc-max-connections", self.grpc_max_connections as u64),
            // No "off": with no quota a full volume stops every member at
            // once; whoever wants none sets it above the volume size.
            ("--quota-bytes", self.quota_bytes),
            ("--visits-per-client", u64::from(self.visits_per_client)),
            ("--visits-per-second", u64::from(self.visits_per_second)),
        ];
        if let Some((field, _)) = must_be_positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Zero { field });
        }
        if self.peer_tls_dir.is_none() && !self.insecure_peers {
            return Err(ConfigError::PeerSecurityUnset);
        }
        if self.election_timeout_ms <= 4 * self.heartbeat_ms {
            return Err(ConfigError::ElectionTimeout {
                election: self.election_timeout_ms,
                heartbeat: self.heartbeat_ms,
            });
        }
        let peers = self.peer_list()?;
        for (i, peer) in peers.iter().enumerate() {
            if peers[..i].iter().any(|p| p.name == peer.name) {
                return Err(ConfigError::DuplicatePeer(peer.name.clone()));
            }
        }
        Ok(())
    }

    /// `--peers`, parsed.
    pub fn peer_list(&self) -> Result<Vec<Peer>, ConfigError> {
        self.peers
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|entry| {
                let (name, addr) = entry
                    .split_once('=')
                    .filter(|(n, a)| !n.is_empty() && a.contains(':'))
                    .ok_or_else(|| ConfigError::BadPeer(entry.clone()))?;
                Ok(Peer {
                    name: name.trim().to_string(),
                    peer_addr: addr.trim().to_string(),
                })
            })
            .collect()
    }

    pub fn proposal_timeout(&self) -> Duration {
        Duration::from_millis(self.proposal_timeout_ms)
    }

    /// openraft 0.9's election timeouts for `--election-timeout-ms`. A
    /// follower that has heard from a leader first waits out the leader's
    /// lease, which openraft sets to the longest timeout, then its own
    /// timeout, drawn once from the range: silence of lease + draw before
    /// it campaigns, and it refuses others' votes during the lease. Taking
    /// the flag as both ends (as raftset did) made that 3 to 4 timeouts,
    /// and failover 3.5 s against etcd's 1.5 s at the same settings. A
    /// quarter and three quarters make it 1 to 1.5 timeouts: the shortest
    /// silence is the flag, as in etcd, and the draws still spread over
    /// half a timeout, so two followers rarely campaign together.
    pub fn election_timeout_min_ms(&self) -> u64 {
        self.election_timeout_ms / 4
    }

    pub fn election_timeout_max_ms(&self) -> u64 {
        self.election_timeout_ms * 3 / 4
    }

    /// How long a leader may go without hearing from a quorum before it
    /// refuses new writes as "no quorum" instead of letting them time out.
    pub fn quorum_timeout(&self) -> Duration {
        Duration::from_millis(2 * self.election_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_once_the_peer_port_is_secured_and_match_the_documented_ports() {
        let mut config = Config::default();
        assert_eq!(config.validate(), Err(ConfigError::PeerSecurityUnset));
        config.peer_tls_dir = Some("/etc/raftset/peer-tls".into());
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.listen_api.port(), 7000);
        assert_eq!(config.listen_peer.port(), 7001);
        assert_eq!(config.listen_http.port(), 8080);
        assert_eq!(config.listen_probes.port(), 8081);
        assert!(config.listen_admin.ip().is_loopback());
        assert!(!config.remote_admin);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/raftset"));
    }

    #[test]
    fn peers_are_listed_once_each_as_name_and_address() {
        let mut config = Config {
            peers: vec![
                "raftset-1=127.0.0.1:7101".into(),
                "raftset-1=127.0.0.1:7102".into(),
            ],
            insecure_peers: true,
            ..Config::default()
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::DuplicatePeer("raftset-1".into()))
        );

        config.peers = vec!["garbage".into()];
        assert_eq!(
            config.validate(),
            Err(ConfigError::BadPeer("garbage".into()))
        );
    }

    #[test]
    fn election_timeout_must_leave_room_for_heartbeats() {
        let config = Config {
            heartbeat_ms: 100,
            election_timeout_ms: 400,
            insecure_peers: true,
            ..Config::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::ElectionTimeout { .. })
        ));
        let config = Config {
            election_timeout_ms: 500,
            ..config
        };
        assert_eq!(config.validate(), Ok(()));
        assert!(
            config.election_timeout_min_ms() > config.heartbeat_ms,
            "openraft needs its shortest timeout above the heartbeat"
        );
    }

    /// A follower waits out the lease (openraft's longest timeout), then its
    /// own draw: the flag is the shortest silence before an election, and
    /// 1.5 × it the longest.
    #[test]
    fn the_election_timeout_is_the_shortest_silence_before_an_election() {
        let config = Config::default();
        let (min, max) = (
            config.election_timeout_min_ms(),
            config.election_timeout_max_ms(),
        );
        assert_eq!(max + min, config.election_timeout_ms);
        assert_eq!(max + max, config.election_timeout_ms * 3 / 2);
    }
}
