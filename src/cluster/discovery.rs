//! Finding the other members of the set: from `--peers`, or in a pod by
//! looking up each ordinal's DNS name under the headless Service until the
//! names run out.

use std::time::Duration;

use super::identity::{ordinal_of, pod_dns_name, set_name};
use crate::config::Config;

/// How long one DNS lookup may take before the peer counts as unknown.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Ordinals past the last one found that are still looked up: a
/// StatefulSet's pods are numbered without gaps, so two misses (names that
/// do not exist or do not resolve in time) end the scan.
const ORDINALS_PAST_LAST: u32 = 2;

/// Where a peer is, as far as discovery can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Its name does not exist (the pod does not).
    Absent,
    /// Its name could not be resolved just now.
    Unknown,
    At(String),
}

/// The other members of the set, by name.
pub async fn discover(config: &Config) -> Vec<(String, Location)> {
    if config.peer_service.is_none() {
        return config
            .peer_list()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.name != config.name)
            .map(|p| (p.name, Location::At(p.peer_addr)))
            .collect();
    }
    let own = ordinal_of(&config.name).unwrap_or(0);
    let port = config.listen_peer.port();
    let mut peers = Vec::new();
    let mut misses = 0;
    let mut ordinal = 0;
    while ordinal <= own || misses < ORDINALS_PAST_LAST {
        let name = format!("{}-{ordinal}", set_name(&config.name));
        ordinal += 1;
        if name == config.name {
            misses = 0;
            continue;
        }
        let host = pod_dns_name(config, &name).expect("peer service is set");
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        let location = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(mut addrs)) => match addrs.next() {
                Some(_) => Location::At(format!("{host}:{port}")),
                None => Location::Absent,
            },
            Ok(Err(_)) => Location::Absent,
            Err(_) => Location::Unknown,
        };
        // An unanswered lookup ends the scan as a missing name does (it is
        // still reported as unknown, so pod 0 waits rather than founds).
        misses = if matches!(location, Location::At(_)) {
            0
        } else {
            misses + 1
        };
        peers.push((name, location));
    }
    // The trailing misses are ordinals past the end of the set, not peers.
    while peers.last().is_some_and(|(_, l)| *l == Location::Absent) {
        peers.pop();
    }
    peers
}
