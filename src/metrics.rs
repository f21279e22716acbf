//! Prometheus metrics. The registry lives here, on the ground floor, so
//! every layer can take a handle to the metrics of the events it owns
//! without importing a layer above it: the store gets [`StoreMetrics`]
//! (fsyncs, applies, snapshots, log flushes), the request path
//! [`ProposalMetrics`], the peer transport [`PeerMetrics`], the leader
//! watch a counter. Each handle is recorded into where the event happens;
//! nothing here guesses an event from state.
//!
//! Request counts and latencies are recorded as requests finish; Raft's
//! state (term, indexes, leader) and the disk are read fresh at every
//! scrape. The exposition is OpenMetrics text ([`CONTENT_TYPE`]): that is
//! what prometheus-client writes (`# EOF`, `_total` on counters).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::types::{NodeId, RaftMetrics};

/// The content type of [`Metrics::render`]'s body.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of Prometheus' older text format ([`Format::PrometheusText`]).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition formats `/metrics` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// Prometheus text 0.0.4, for scrapers that do not take OpenMetrics.
    PrometheusText,
}

impl Format {
    /// The format for a request's `Accept` header: OpenMetrics unless the
    /// client names `text/plain` and not OpenMetrics (Prometheus names
    /// both, a browser or curl neither).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let accept = accept.unwrap_or("").to_ascii_lowercase();
        if accept.contains("text/plain") && !accept.contains("application/openmetrics-text") {
            Format::PrometheusText
        } else {
            Format::OpenMetrics
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => CONTENT_TYPE,
            Format::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
        }
    }

    /// `openmetrics` (what [`Metrics::render`] writes) in this format. The
    /// two differ, for what raftset exports, in two places: OpenMetrics
    /// names a counter family without its `_total` in `# HELP` and
    /// `# TYPE`, and ends with `# EOF`.
    pub fn encode(self, openmetrics: String) -> String {
        if self == Format::OpenMetrics {
            return openmetrics;
        }
        let counters: std::collections::HashSet<&str> = openmetrics
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        let mut text = String::with_capacity(openmetrics.len());
        for line in openmetrics.lines().filter(|l| *l != "# EOF") {
            let family = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{prefix}{name}_total {tail}"))
            });
            text.push_str(family.as_deref().unwrap_or(line));
            text.push('\n');
        }
        text
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    endpoint: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    follower: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

/// Why a proposal on the leader failed: the `reason` label of
/// `raftset_proposals_failed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposalFailure {
    /// The node does not serve yet (its founding is not on record).
    NotServing,
    /// The leader has not heard from a quorum for longer than the quorum timeout.
    NoQuorum,
    /// The pending-proposal limit is reached.
    Overloaded,
    /// Not committed before the deadline.
    Timeout,
    /// Leadership moved while the entry was in flight.
    LeaderChanged,
    /// This leader was stepping down, so it sent the write on instead.
    SteppingDown,
    /// Raft never answered the entry (see the proposer's entry timeout).
    Unanswered,
    /// Raft stopped or refused the entry.
    Raft,
    /// The database is at or over the space quota.
    Quota,
}

impl ProposalFailure {
    pub const ALL: [ProposalFailure; 9] = [
        ProposalFailure::NotServing,
        ProposalFailure::NoQuorum,
        ProposalFailure::Overloaded,
        ProposalFailure::Timeout,
        ProposalFailure::LeaderChanged,
        ProposalFailure::SteppingDown,
        ProposalFailure::Unanswered,
        ProposalFailure::Raft,
        ProposalFailure::Quota,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ProposalFailure::NotServing => "not_serving",
            ProposalFailure::NoQuorum => "no_quorum",
            ProposalFailure::Overloaded => "overloaded",
            ProposalFailure::Timeout => "timeout",
            ProposalFailure::LeaderChanged => "leader_changed",
            ProposalFailure::SteppingDown => "stepping_down",
            ProposalFailure::Unanswered => "unanswered",
            ProposalFailure::Raft => "raft",
            ProposalFailure::Quota => "quota",
        }
    }
}

/// What the store records. Cloning shares the metrics; the default is a
/// set registered nowhere (a store opened outside a node).
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// Each time the database is made durable (flush + fdatasync).
    pub fsync: Histogram,
    /// Applying one log entry to the state machine.
    pub apply: Histogram,
    /// Dumping the state machine into a snapshot file.
    pub snapshot_build: Histogram,
    /// Installing a snapshot received from the leader.
    pub snapshot_install: Histogram,
    /// Copying the state into a fresh database, from start to switch.
    pub defrag: Histogram,
    /// Size of the latest snapshot file, built or installed.
    pub snapshot_bytes: Gauge,
    /// Flushes that made appended log entries durable.
    pub log_flushes: Counter,
    /// Appends those flushes covered.
    pub log_appends: Counter,
    /// Bytes of entries the Raft log holds.
    pub log_bytes: Gauge,
}

fn disk_buckets() -> Histogram {
    // 0.5 ms .. ~8 s, as etcd's fsync histogram.
    Histogram::new(exponential_buckets(0.000_5, 2.0, 15))
}

fn fast_buckets() -> Histogram {
    // 0.1 ms .. ~3 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

fn snapshot_buckets() -> Histogram {
    // 10 ms .. ~160 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            fsync: disk_buckets(),
            apply: fast_buckets(),
            snapshot_build: snapshot_buckets(),
            snapshot_install: snapshot_buckets(),
            defrag: snapshot_buckets(),
            snapshot_bytes: Gauge::default(),
            log_flushes: Counter::default(),
            log_appends: Counter::default(),
            log_bytes: Gauge::default(),
        }
    }
}

/// What the request path records about proposals on the leader.
#[derive(Clone, Debug)]
pub struct ProposalMetrics {
    failed: Family<ReasonLabels, Counter>,
    pending: Gauge,
}

impl Default for ProposalMetrics {
    fn default() -> Self {
        let failed = Family::<ReasonLabels, Counter>::default();
        // Every reason from 0, so `rate()` sees the first failure.
        for reason in ProposalFailure::ALL {
            let _ = failed.get_or_create(&ReasonLabels {
                reason: reason.label(),
            });
        }
        ProposalMetrics {
            failed,
            pending: Gauge::default(),
        }
    }
}

/// Counts one proposal as pending until dropped.
#[must_use]
pub struct PendingProposal(Gauge);

impl Drop for PendingProposal {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ProposalMetrics {
    pub fn failed(&self, reason: ProposalFailure) {
        self.failed
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc();
    }

    /// Marks a proposal pending for as long as the guard lives.
    pub fn pending(&self) -> PendingProposal {
        self.pending.inc();
        PendingProposal(self.pending.clone())
    }
}

/// What the peer transport records.
#[derive(Clone, Debug)]
pub struct PeerMetrics {
    round_trip: Family<PeerLabels, Histogram>,
}

impl Default for PeerMetrics {
    fn default() -> Self {
        PeerMetrics {
            round_trip: Family::new_with_constructor(fast_buckets),
        }
    }
}

impl PeerMetrics {
    /// One answered heartbeat to `peer`, `elapsed` after it was sent.
    pub fn round_trip(&self, peer: NodeId, elapsed: Duration) {
        self.round_trip
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// The node's metric registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    store: StoreMetrics,
    proposals: ProposalMetrics,
    peers: PeerMetrics,
    leader_changes: Counter,
    term: Gauge,
    is_leader: Gauge,
    has_leader: Gauge,
    last_log_index: Gauge,
    applied_index: Gauge,
    snapshot_index: Gauge,
    members: Gauge,
    replication_lag: Family<FollowerLabels, Gauge>,
    disk_bytes: Gauge,
    quota_bytes: Gauge,
    volume_size: Gauge,
    volume_free: Gauge,
    resident_bytes: Gauge,
    auth_failures: Family<AuthLabels, Counter>,
}

/// The volume the data directory is on, as statvfs tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Volume {
    pub size_bytes: u64,
    /// Bytes an unprivileged process may still write.
    pub free_bytes: u64,
}

/// What a scrape reads besides the registry's own metrics.
pub struct Snapshot<'a> {
    pub raft: &'a RaftMetrics,
    /// Bytes the database uses on disk.
    pub disk_bytes: u64,
    /// `None` when statvfs failed.
    pub volume: Option<Volume>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("raftset");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests served, by method and status code",
            requests.clone(),
        );
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Request latency, by method",
            latency.clone(),
        );
        let store = StoreMetrics::default();
        let proposals = ProposalMetrics::default();
        let peers = PeerMetrics::default();
        let leader_changes = Counter::default();
        let metrics = Metrics {
            registry,
            requests,
            latency,
            store,
            proposals,
            peers,
            leader_changes,
            term: Gauge::default(),
            is_leader: Gauge::default(),
            has_leader: Gauge::default(),
            last_log_index: Gauge::default(),
            applied_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            members: Gauge::default(),
            replication_lag: Family::default(),
            disk_bytes: Gauge::default(),
            quota_bytes: Gauge::default(),
            volume_size: Gauge::default(),
            volume_free: Gauge::default(),
            resident_bytes: Gauge::default(),
            auth_failures: Family::default(),
        };
        metrics.register_all()
    }
}

impl Metrics {
    fn register_all(mut self) -> Self {
        let r = &mut self.registry;
        let s = &self.store;
        r.register(
            "auth_failures",
            "Requests refused for a missing or wrong credential, by endpoint and reason",
            self.auth_failures.clone(),
        );
        r.register(
            "has_leader",
            "1 when this node knows a leader (and is not campaigning)",
            self.has_leader.clone(),
        );
        r.register(
            "leader_changes",
            "Times this node saw a new leader",
            self.leader_changes.clone(),
        );
        r.register(
            "proposals_failed",
            "Proposals that failed on this node as leader, by reason",
            self.proposals.failed.clone(),
        );
        r.register(
            "proposals_pending",
            "Proposals waiting to commit on this node as leader",
            self.proposals.pending.clone(),
        );
        r.register(
            "fsync_duration_seconds",
            "Time to sync appended log entries, or to flush the database (fdatasync)",
            s.fsync.clone(),
        );
        r.register(
            "apply_duration_seconds",
            "Time to apply one log entry to the state machine",
            s.apply.clone(),
        );
        r.register(
            "snapshot_build_duration_seconds",
            "Time to write a snapshot of the state machine",
            s.snapshot_build.clone(),
        );
        r.register(
            "snapshot_install_duration_seconds",
            "Time to install a snapshot received from the leader",
            s.snapshot_install.clone(),
        );
        r.register(
            "defrag_duration_seconds",
            "Time to copy the state into a fresh database and switch to it",
            s.defrag.clone(),
        );
        r.register(
            "snapshot_size_bytes",
            "Size of the latest snapshot file, built or installed",
            s.snapshot_bytes.clone(),
        );
        r.register(
            "log_flushes",
            "Flushes that made appended log entries durable",
            s.log_flushes.clone(),
        );
        r.register(
            "log_appends",
            "Log appends made durable; appends/flushes is the group-commit batch size",
            s.log_appends.clone(),
        );
        r.register(
            "log_size_bytes",
            "Bytes of entries the Raft log holds; a snapshot and a purge follow past --snapshot-log-bytes",
            s.log_bytes.clone(),
        );
        r.register(
            "peer_round_trip_seconds",
            "Round trip of a heartbeat to each peer, answer included",
            self.peers.round_trip.clone(),
        );
        r.register("raft_term", "Current Raft term", self.term.clone());
        r.register(
            "raft_is_leader",
            "1 when this node is the leader",
            self.is_leader.clone(),
        );
        r.register(
            "raft_last_log_index",
            "Index of the last log entry",
            self.last_log_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Index of the last applied entry",
            self.applied_index.clone(),
        );
        r.register(
            "raft_snapshot_index",
            "Last index in the latest snapshot",
            self.snapshot_index.clone(),
        );
        r.register(
            "raft_members",
            "Members (voters and learners) in the configuration",
            self.members.clone(),
        );
        r.register(
            "raft_replication_lag_entries",
            "On the leader: entries each follower is behind the leader's log",
            self.replication_lag.clone(),
        );
        r.register(
            "disk_bytes",
            "Bytes the log segments and the database use on disk",
            self.disk_bytes.clone(),
        );
        r.register(
            "quota_bytes",
            "The space quota (--quota-bytes): past it, writes that add data are refused",
            self.quota_bytes.clone(),
        );
        r.register(
            "volume_size_bytes",
            "Size of the volume holding the data directory",
            self.volume_size.clone(),
        );
        r.register(
            "volume_free_bytes",
            "Bytes still free for this node on the volume holding the data directory",
            self.volume_free.clone(),
        );
        r.register(
            "resident_memory_bytes",
            "Resident set size of the process",
            self.resident_bytes.clone(),
        );
        self
    }

    /// The store's handle.
    pub fn store(&self) -> StoreMetrics {
        self.store.clone()
    }

    /// The request path's handle.
    pub fn proposals(&self) -> ProposalMetrics {
        self.proposals.clone()
    }

    /// The peer transport's handle.
    pub fn peers(&self) -> PeerMetrics {
        self.peers.clone()
    }

    /// Exports the space quota, which is fixed for the process's life.
    /// Counts a request to `endpoint` refused for `reason` (`missing`,
    /// `wrong`).
    pub fn auth_failed(&self, endpoint: &str, reason: &str) {
        self.auth_failures
            .get_or_create(&AuthLabels {
                endpoint: endpoint.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn set_quota_bytes(&self, bytes: u64) {
        self.quota_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The counter of leaders seen, for whoever watches Raft.
    pub fn leader_changes(&self) -> Counter {
        self.leader_changes.clone()
    }

    /// Records one finished request.
    pub fn observe(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let code = format!("{code:?}");
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                code,
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]), with state read now.
    pub fn render(&self, now: Snapshot<'_>) -> String {
        let raft = now.raft;
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.term.set(as_i64(raft.current_term));
        self.is_leader
            .set(i64::from(raft.current_leader == Some(raft.id)));
        self.has_leader.set(i64::from(has_leader(raft)));
        let last_log = raft.last_log_index.unwrap_or(0);
        self.last_log_index.set(as_i64(last_log));
        self.applied_index
            .set(as_i64(raft.last_applied.map_or(0, |l| l.index)));
        self.snapshot_index
            .set(as_i64(raft.snapshot.map_or(0, |l| l.index)));
        self.members
            .set(raft.membership_config.nodes().count() as i64);
        self.replication_lag.clear();
        for (follower, matched) in raft.replication.iter().flatten() {
            if *follower == raft.id {
                continue;
            }
            let matched = matched.map_or(0, |l| l.index);
            self.replication_lag
                .get_or_create(&FollowerLabels {
                    follower: follower.to_string(),
                })
                .set(as_i64(last_log.saturating_sub(matched)));
        }
        self.disk_bytes.set(as_i64(now.disk_bytes));
        if let Some(volume) = now.volume {
            self.volume_size.set(as_i64(volume.size_bytes));
            self.volume_free.set(as_i64(volume.free_bytes));
        }
        self.resident_bytes.set(as_i64(resident_bytes()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Whether this node knows a leader: a candidate's last leader is gone.
fn has_leader(raft: &RaftMetrics) -> bool {
    raft.current_leader.is_some() && raft.state != openraft::ServerState::Candidate
}

/// Resident set size from /proc (0 where there is none).
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(metrics: &Metrics, raft: &RaftMetrics) -> String {
        metrics.render(Snapshot {
            raft,
            disk_bytes: 7,
            volume: Some(Volume {
                size_bytes: 1000,
                free_bytes: 250,
            }),
        })
    }

    /// The value of the sample `name` (with its labels), or panics.
    fn sample<'t>(text: &'t str, name: &str) -> &'t str {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    }

    #[test]
    fn counters_are_counters_and_the_body_is_openmetrics() {
        let metrics = Metrics::default();
        let store = metrics.store();
        store.log_flushes.inc();
        store.log_appends.inc_by(3);
        let text = scrape(&metrics, &RaftMetrics::new_initial(1));
        assert!(
            text.contains("# TYPE raftset_log_flushes counter"),
            "{text}"
        );
        assert_eq!(sample(&text, "raftset_log_flushes_total"), "1");
        assert_eq!(sample(&text, "raftset_log_appends_total"), "3");
        assert!(
            text.contains("# TYPE raftset_leader_changes counter"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
        assert!(CONTENT_TYPE.starts_with("application/openmetrics-text"));

        let old = Format::PrometheusText.encode(text);
        assert!(
            old.contains("# TYPE raftset_log_flushes_total counter\n"),
            "{old}"
        );
        assert!(
            old.contains("# HELP raftset_log_flushes_total Flushes"),
            "{old}"
        );
        assert!(old.contains("# TYPE raftset_has_leader gauge\n"), "{old}");
        assert!(!old.contains("# EOF"), "{old}");
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        let prometheus = "application/openmetrics-text;version=1.0.0,\
             application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        // (Accept, format served)
        let cases = [
            (None, Format::OpenMetrics),
            (Some("*/*"), Format::OpenMetrics),
            (Some(prometheus), Format::OpenMetrics),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("text/plain;version=0.0.4;q=1,*/*;q=0.1"),
                Format::PrometheusText,
            ),
            (Some("Text/Plain"), Format::PrometheusText),
        ];
        for (accept, format) in cases {
            assert_eq!(Format::negotiate(accept), format, "{accept:?}");
        }
    }

    #[test]
    fn has_leader_follows_the_known_leader() {
        let metrics = Metrics::default();
        let mut raft = RaftMetrics::new_initial(1);
        let text = scrape(&metrics, &raft);
        assert_eq!(sample(&text, "raftset_has_leader"), "0");
        raft.current_leader = Some(2);
        let text = scrape(&metrics, &raft);
        assert_eq!(sample(&text, "raftset_has_leader"), "1");
        raft.state = openraft::ServerState::Candidate;
        let text = scrape(&metrics, &raft);
        assert_eq!(
            sample(&text, "raftset_has_leader"),
            "0",
            "a candidate has no leader"
        );
    }

    #[test]
    fn every_failure_reason_starts_at_zero_and_pending_proposals_are_released() {
        let metrics = Metrics::default();
        let proposals = metrics.proposals();
        let text = scrape(&metrics, &RaftMetrics::new_initial(1));
        for reason in ProposalFailure::ALL {
            let name = format!(
                "raftset_proposals_failed_total{{reason=\"{}\"}}",
                reason.label()
            );
            assert_eq!(sample(&text, &name), "0");
        }
        proposals.failed(ProposalFailure::NoQuorum);
        let first = proposals.pending();
        let second = proposals.pending();
        let text = scrape(&metrics, &RaftMetrics::new_initial(1));
        let failed = "raftset_proposals_failed_total{reason=\"no_quorum\"}";
        assert_eq!(sample(&text, failed), "1");
        assert_eq!(sample(&text, "raftset_proposals_pending"), "2");
        drop(first);
        drop(second);
        let text = scrape(&metrics, &RaftMetrics::new_initial(1));
        assert_eq!(sample(&text, "raftset_proposals_pending"), "0");
    }

    #[test]
    fn the_volume_and_peer_round_trips_are_exported() {
        let metrics = Metrics::default();
        metrics.peers().round_trip(5, Duration::from_millis(3));
        metrics.set_quota_bytes(600);
        let text = scrape(&metrics, &RaftMetrics::new_initial(1));
        assert_eq!(sample(&text, "raftset_quota_bytes"), "600");
        assert_eq!(sample(&text, "raftset_volume_size_bytes"), "1000");
        assert_eq!(sample(&text, "raftset_volume_free_bytes"), "250");
        assert_eq!(
            sample(&text, "raftset_peer_round_trip_seconds_count{peer=\"5\"}"),
            "1"
        );
    }

    #[test]
    fn the_readme_lists_exactly_the_exported_metrics() {
        // A family with labels shows only once it has a sample.
        let metrics = Metrics::default();
        metrics.observe("Get", tonic::Code::Ok, Duration::from_millis(1));
        metrics.peers().round_trip(2, Duration::from_millis(1));
        metrics.auth_failed("metrics", "missing");
        let mut raft = RaftMetrics::new_initial(1);
        raft.replication = Some([(2, None)].into_iter().collect());
        let text = scrape(&metrics, &raft);
        let exported: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| match l.split_once(' ') {
                Some((name, "counter")) => format!("{name}_total"),
                Some((name, _)) => name.to_string(),
                None => l.to_string(),
            })
            .collect();
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let listed: std::collections::BTreeSet<String> = readme
            .lines()
            .filter(|l| l.starts_with("| `raftset_"))
            .flat_map(|l| l.split('`').skip(1).step_by(2))
            .filter(|name| name.starts_with("raftset_"))
            .map(|name| name.split('{').next().unwrap_or(name).to_string())
            .collect();
        assert_eq!(
            listed, exported,
            "README's metrics table against the registry"
        );
    }
}
