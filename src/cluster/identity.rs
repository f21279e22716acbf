//! Who this node is in its StatefulSet: the ordinal in its pod name, the
//! set's name, the stable DNS names under the headless Service, and the
//! addresses it advertises in the membership.
//!
//! The ordinal names the pod, never the Raft member: the Raft node id
//! belongs to the volume ([`crate::store`]), so a pod that comes back empty
//! under an old name is a new member.

use crate::config::{Config, ConfigError};
use crate::types::Member;

/// The ordinal at the end of a StatefulSet pod name: `raftset-2` → 2.
pub fn ordinal_of(name: &str) -> Option<u32> {
    let (_, digits) = name.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The StatefulSet's name: the pod name without its ordinal.
pub fn set_name(name: &str) -> &str {
    name.rsplit_once('-').map_or(name, |(set, _)| set)
}

/// The stable DNS name of pod `name` under the peer Service, if one is set.
pub fn pod_dns_name(config: &Config, name: &str) -> Option<String> {
    let service = config.peer_service.as_ref()?;
    Some(format!(
        "{name}.{service}.{}.svc.{}",
        config.namespace, config.cluster_domain
    ))
}

/// How the membership describes this node.
pub fn member(config: &Config) -> Member {
    Member {
        name: config.name.clone(),
        peer_addr: advertised(config, &config.advertise_peer, config.listen_peer),
        api_addr: advertised(config, &config.advertise_api, config.listen_api),
        http_addr: advertised(config, &config.advertise_http, config.listen_http),
    }
}

/// An explicit address wins; then the pod's DNS name; then the listen
/// address (with the node's name for a wildcard host).
fn advertised(config: &Config, explicit: &Option<String>, listen: std::net::SocketAddr) -> String {
    if let Some(addr) = explicit {
        return addr.clone();
    }
    if let Some(host) = pod_dns_name(config, &config.name) {
        return format!("{host}:{}", listen.port());
    }
    if listen.ip().is_unspecified() {
        format!("{}:{}", config.name, listen.port())
    } else {
        listen.to_string()
    }
}

/// A node must never claim another node's address, nor be listed at an
/// address it does not serve.
pub fn check_peers(config: &Config) -> Result<(), ConfigError> {
    let advertised = member(config).peer_addr;
    for peer in config.peer_list()? {
        let same_name = peer.name == config.name;
        let same_addr = peer.peer_addr == advertised;
        if same_name != same_addr {
            return Err(ConfigError::SelfAddress {
                name: peer.name,
                listed: peer.peer_addr,
                advertised,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(name: &str, peer: &str) -> Config {
        Config {
            name: name.into(),
            listen_peer: peer.parse().unwrap(),
            ..Config::default()
        }
    }

    #[test]
    fn ordinals_come_from_the_pod_name() {
        assert_eq!(ordinal_of("raftset-0"), Some(0));
        assert_eq!(ordinal_of("my-store-12"), Some(12));
        assert_eq!(ordinal_of("raftset"), None);
        assert_eq!(ordinal_of("raftset-"), None);
        assert_eq!(ordinal_of("raftset-x1"), None);
        assert_eq!(set_name("my-store-12"), "my-store");
    }

    #[test]
    fn a_wildcard_listen_address_advertises_the_name() {
        let config = Config {
            name: "raftset-1".into(),
            ..Config::default()
        };
        assert_eq!(member(&config).peer_addr, "raftset-1:7001");
        let config = local("raftset-1", "127.0.0.1:7101");
        assert_eq!(member(&config).peer_addr, "127.0.0.1:7101");
    }

    #[test]
    fn peers_must_not_give_this_node_another_address_or_its_address_to_another() {
        let mut config = local("raftset-0", "127.0.0.1:7100");
        config.peers = vec![
            "raftset-0=127.0.0.1:7100".into(),
            "raftset-1=127.0.0.1:7101".into(),
        ];
        assert_eq!(check_peers(&config), Ok(()));

        config.peers = vec!["raftset-0=127.0.0.1:7199".into()];
        assert!(matches!(
            check_peers(&config),
            Err(ConfigError::SelfAddress { .. })
        ));

        config.peers = vec!["raftset-1=127.0.0.1:7100".into()];
        assert!(matches!(
            check_peers(&config),
            Err(ConfigError::SelfAddress { .. })
        ));
    }

    #[test]
    fn in_a_pod_peers_and_this_node_are_named_by_the_headless_service() {
        let config = Config {
            name: "raftset-2".into(),
            peer_service: Some("raftset-peers".into()),
            namespace: "prod".into(),
            ..Config::default()
        };
        let me = member(&config);
        assert_eq!(
            me.peer_addr,
            "raftset-2.raftset-peers.prod.svc.cluster.local:7001"
        );
        assert_eq!(
            me.api_addr,
            "raftset-2.raftset-peers.prod.svc.cluster.local:7000"
        );
        assert_eq!(
            pod_dns_name(&config, "raftset-0").as_deref(),
            Some("raftset-0.raftset-peers.prod.svc.cluster.local")
        );
    }
}
