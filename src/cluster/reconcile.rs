//! Scale-down: the intent comes from the StatefulSet's `spec.replicas`,
//! never from a timeout. The leader removes members whose ordinal is at or
//! above the replica count, one at a time, and only while the voters that
//! remain would still have a healthy majority. A member whose ordinal is
//! below the count is never removed (it may merely be restarting). If the
//! replica count cannot be read, nothing is removed.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::bootstrap::ordinal_of;
use crate::node::NodeCore;

/// One member as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    pub id: u64,
    pub name: String,
    pub voter: bool,
    /// Replicating and within the lag the readiness probe allows.
    pub healthy: bool,
}

/// The next member to remove so that the membership converges to
/// ordinals `0..replicas` of `set`, or `None` when none may go now.
/// Learners go first, then voters from the highest ordinal down.
pub fn next_removal(set: &str, members: &[MemberState], replicas: u32) -> Option<u64> {
    let beyond = |m: &MemberState| {
        m.name
            .rsplit_once('-')
            .is_some_and(|(prefix, _)| prefix == set)
            && ordinal_of(&m.name).is_some_and(|o| o >= replicas)
    };
    let mut candidates: Vec<&MemberState> = members.iter().filter(|m| beyond(m)).collect();
    candidates.sort_by_key(|m| (m.voter, std::cmp::Reverse(ordinal_of(&m.name))));
    let candidate = candidates.first()?;
    if !candidate.voter {
        return Some(candidate.id);
    }
    let remaining: Vec<&MemberState> = members
        .iter()
        .filter(|m| m.voter && m.id != candidate.id)
        .collect();
    let healthy = remaining.iter().filter(|m| m.healthy).count();
    (!remaining.is_empty() && healthy * 2 > remaining.len()).then_some(candidate.id)
}

/// The members and their health, on the leader.
pub fn member_states(core: &NodeCore) -> Vec<MemberState> {
    let metrics = core.raft_metrics();
    let membership = metrics.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let last = metrics.last_log_index.unwrap_or(0);
    membership
        .nodes()
        .map(|(id, m)| {
            let matched = crate::types::matched_index(&metrics, *id);
            MemberState {
                id: *id,
                name: m.name.clone(),
                voter: voters.contains(id),
                healthy: *id == core.id
                    || last.saturating_sub(matched) <= core.config.ready_max_lag,
            }
        })
        .collect()
}

/// On the leader: removes members beyond `replicas` one at a time, as far
/// as safety allows now. Returns how many were removed.
pub async fn remove_beyond(core: &NodeCore, replicas: u32) -> Result<usize, tonic::Status> {
    let mut removed = 0;
    loop {
        let states = member_states(core);
        let Some(id) = next_removal(core.config.set_name(), &states, replicas) else {
            return Ok(removed);
        };
        let name = states
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        tracing::info!(member = %name, id, replicas, "scale-down: removing a member beyond the replica count");
        super::remove_member(core, id).await?;
        removed += 1;
    }
}

#[derive(Deserialize)]
struct StatefulSet {
    spec: StatefulSetSpec,
}

#[derive(Deserialize)]
struct StatefulSetSpec {
    replicas: Option<u32>,
}

/// Reads `spec.replicas` of this node's StatefulSet from the Kubernetes API.
struct ReplicaSource {
    agent: ureq::Agent,
    url: String,
    token: Option<String>,
}

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl ReplicaSource {
    fn new(core: &NodeCore) -> Result<ReplicaSource, String> {
        let config = &core.config;
        let api = match &config.kube_api {
            Some(api) => api.trim_end_matches('/').to_string(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST")
                    .map_err(|_| "not in a pod and no --kube-api")?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                format!("https://{host}:{port}")
            }
        };
        let token = std::fs::read_to_string(format!("{SERVICE_ACCOUNT}/token"))
            .ok()
            .map(|t| t.trim().to_string());
        let mut agent_config =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5)));
        if let Ok(pem) = std::fs::read(format!("{SERVICE_ACCOUNT}/ca.crt")) {
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
                    _ => None,
                })
                .collect();
            let tls = ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build();
            agent_config = agent_config.tls_config(tls);
        }
        Ok(ReplicaSource {
            agent: agent_config.build().into(),
            url: format!(
                "{api}/apis/apps/v1/namespaces/{}/statefulsets/{}",
                config.namespace,
                config.set_name()
            ),
            token,
        })
    }

    fn replicas(&self) -> Result<u32, String> {
        let mut request = self.agent.get(&self.url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let mut response = request
            .call()
            .map_err(|e| format!("GET {}: {e}", self.url))?;
        let set: StatefulSet = response
            .body_mut()
            .read_json()
            .map_err(|e| format!("GET {}: {e}", self.url))?;
        set.spec
            .replicas
            .ok_or_else(|| "the StatefulSet has no spec.replicas".into())
    }
}

/// Follows the StatefulSet's replica count while this node leads.
pub async fn follow_replicas(core: Arc<NodeCore>, stop: CancellationToken) {
    let source = match ReplicaSource::new(&core) {
        Ok(source) => Arc::new(source),
        Err(e) => {
            tracing::warn!("not following the replica count: {e}");
            return;
        }
    };
    let period = Duration::from_secs(core.config.reconcile_secs.max(1));
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.cancelled() => return,
        }
        if core.leader().map(|(id, _)| id) != Some(core.id) {
            continue;
        }
        let fetch = source.clone();
        let replicas = match tokio::task::spawn_blocking(move || fetch.replicas()).await {
            Ok(Ok(replicas)) => replicas,
            Ok(Err(e)) => {
                if e != last_error {
                    tracing::warn!("cannot read the replica count, removing nobody: {e}");
                    last_error = e;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!("replica count lookup failed: {e}");
                continue;
            }
        };
        if let Err(e) = remove_beyond(&core, replicas).await {
            tracing::warn!("scale-down to {replicas} paused: {}", e.message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, ordinal: u32, voter: bool, healthy: bool) -> MemberState {
        MemberState {
            id,
            name: format!("raftset-{ordinal}"),
            voter,
            healthy,
        }
    }

    #[test]
    fn removals_follow_the_replica_count_safely() {
        let five = |healthy: [bool; 5]| -> Vec<MemberState> {
            (0..5)
                .map(|i| m(100 + i as u64, i, true, healthy[i as usize]))
                .collect()
        };
        let all = [true; 5];
        let cases: Vec<(&str, Vec<MemberState>, u32, Option<u64>)> = vec![
            ("nothing beyond the count", five(all), 5, None),
            ("highest ordinal first", five(all), 3, Some(104)),
            (
                "learners before voters",
                vec![
                    m(1, 0, true, true),
                    m(2, 1, true, true),
                    m(9, 3, false, false),
                    m(8, 4, true, true),
                ],
                2,
                Some(9),
            ),
            (
                "a restarting voter below the count is never removed",
                five([true, false, true, true, true]),
                5,
                None,
            ),
            (
                "not while the rest lack a healthy majority",
                five([true, false, false, true, true]),
                3,
                None,
            ),
            (
                "fine with a healthy majority left",
                five([true, true, true, false, true]),
                3,
                Some(104),
            ),
            (
                "not when half of the rest are unhealthy",
                five([true, true, false, false, true]),
                3,
                None,
            ),
            ("never the last voter", vec![m(7, 1, true, true)], 0, None),
            (
                "other sets and unnamed members are left alone",
                vec![
                    m(1, 0, true, true),
                    MemberState {
                        id: 5,
                        name: "other-4".into(),
                        voter: true,
                        healthy: true,
                    },
                    MemberState {
                        id: 6,
                        name: "embedded".into(),
                        voter: true,
                        healthy: true,
                    },
                ],
                1,
                None,
            ),
        ];
        for (name, members, replicas, expected) in cases {
            assert_eq!(
                next_removal("raftset", &members, replicas),
                expected,
                "{name}"
            );
        }
    }
}
