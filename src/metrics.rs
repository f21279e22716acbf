//! Prometheus metrics: request counts and latencies recorded as requests
//! finish, Raft and storage state read fresh at every scrape.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::types::RaftMetrics;

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

/// The node's metric registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    term: Gauge,
    is_leader: Gauge,
    last_log_index: Gauge,
    applied_index: Gauge,
    snapshot_index: Gauge,
    members: Gauge,
    replication_lag: Family<FollowerLabels, Gauge>,
    log_flushes: Gauge,
    log_appends: Gauge,
    disk_bytes: Gauge,
    resident_bytes: Gauge,
}

/// What a scrape reads besides the registry's own counters.
pub struct Snapshot<'a> {
    pub raft: &'a RaftMetrics,
    /// Log flushes so far, and the appends they made durable.
    pub flushes: u64,
    pub appends: u64,
    pub disk_bytes: u64,
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
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let term = gauge(&mut registry, "raft_term", "Current Raft term");
        let is_leader = gauge(
            &mut registry,
            "raft_is_leader",
            "1 when this node is the leader",
        );
        let last_log_index = gauge(
            &mut registry,
            "raft_last_log_index",
            "Index of the last log entry",
        );
        let applied_index = gauge(
            &mut registry,
            "raft_applied_index",
            "Index of the last applied entry",
        );
        let snapshot_index = gauge(
            &mut registry,
            "raft_snapshot_index",
            "Last index in the latest snapshot",
        );
        let members = gauge(
            &mut registry,
            "raft_members",
            "Members (voters and learners) in the configuration",
        );
        let replication_lag = Family::<FollowerLabels, Gauge>::default();
        registry.register(
            "raft_replication_lag_entries",
            "On the leader: entries each follower is behind the leader's log",
            replication_lag.clone(),
        );
        let log_flushes = gauge(
            &mut registry,
            "log_flushes",
            "Flushes that made appended log entries durable",
        );
        let log_appends = gauge(
            &mut registry,
            "log_appends",
            "Log appends made durable; appends/flushes is the group-commit batch size",
        );
        let disk_bytes = gauge(
            &mut registry,
            "disk_bytes",
            "Bytes the database uses on disk",
        );
        let resident_bytes = gauge(
            &mut registry,
            "resident_memory_bytes",
            "Resident set size of the process",
        );
        Metrics {
            registry,
            requests,
            latency,
            term,
            is_leader,
            last_log_index,
            applied_index,
            snapshot_index,
            members,
            replication_lag,
            log_flushes,
            log_appends,
            disk_bytes,
            resident_bytes,
        }
    }
}

impl Metrics {
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

    /// The Prometheus text exposition, with state read now.
    pub fn render(&self, now: Snapshot<'_>) -> String {
        let raft = now.raft;
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.term.set(as_i64(raft.current_term));
        self.is_leader
            .set(i64::from(raft.current_leader == Some(raft.id)));
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
        self.log_flushes.set(as_i64(now.flushes));
        self.log_appends.set(as_i64(now.appends));
        self.disk_bytes.set(as_i64(now.disk_bytes));
        self.resident_bytes.set(as_i64(resident_bytes()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
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
