//! Finding the other members of the set: from `--peers`, or in a pod by
//! looking up each ordinal's DNS name under the headless Service until the
//! names run out.
//!
//! Only a definite "no such name" (NXDOMAIN) says a pod is absent. Every
//! other failure (SERVFAIL, REFUSED, no answer, no resolver) says nothing:
//! the peer is unknown, and pod 0 waits rather than founds a cluster. So
//! lookups go through hickory, which tells the cases apart, not the
//! system's `getaddrinfo`, which does not.

use std::time::Duration;

use hickory_resolver::TokioResolver;

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

/// Looks up pod names.
pub struct Resolver(Option<TokioResolver>);

impl Resolver {
    /// The pod's resolver (`/etc/resolv.conf`). Without one every name is
    /// unknown, which makes a pod wait, never found.
    pub fn from_system() -> Resolver {
        let built = TokioResolver::builder_tokio().and_then(|mut builder| {
            Self::tune(builder.options_mut());
            builder.build()
        });
        match built {
            Ok(resolver) => Resolver(Some(resolver)),
            Err(e) => {
                tracing::error!("no DNS resolver ({e}); every peer counts as unknown");
                Resolver(None)
            }
        }
    }

    /// A resolver that asks only the server at `addr` (UDP).
    #[cfg(test)]
    pub fn at(addr: std::net::SocketAddr) -> Resolver {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let mut udp = hickory_resolver::config::ConnectionConfig::udp();
        udp.port = addr.port();
        let server = NameServerConfig::new(addr.ip(), true, vec![udp]);
        let config = ResolverConfig::from_parts(None, Vec::new(), vec![server]);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        Self::tune(builder.options_mut());
        Resolver(builder.build().ok())
    }

    fn tune(options: &mut hickory_resolver::config::ResolverOpts) {
        // A pod that was just created must be seen at once: no caching of
        // answers, negative ones least of all.
        options.cache_size = 0;
        options.timeout = LOOKUP_TIMEOUT;
        options.attempts = 1;
    }

    /// Where the pod named by the fully qualified `host` is.
    pub async fn locate(&self, host: &str, port: u16) -> Location {
        let Some(resolver) = &self.0 else {
            return Location::Unknown;
        };
        // The trailing dot keeps the search list out: only this exact name
        // answers for the pod.
        let lookup = resolver.lookup_ip(format!("{host}."));
        match tokio::time::timeout(LOOKUP_TIMEOUT * 2, lookup).await {
            Ok(Ok(addrs)) if addrs.iter().next().is_some() => {
                Location::At(format!("{host}:{port}"))
            }
            Ok(Err(e)) if e.is_nx_domain() => Location::Absent,
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => Location::Unknown,
        }
    }
}

/// The other members of the set, by name.
pub async fn discover(config: &Config, resolver: &Resolver) -> Vec<(String, Location)> {
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
        let location = resolver.locate(&host, port).await;
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use tokio::net::UdpSocket;

    use super::*;

    /// How the fake name server answers every query.
    #[derive(Clone, Copy)]
    enum Answer {
        Address(Ipv4Addr),
        Code(u8),
    }

    const NXDOMAIN: u8 = 3;
    const SERVFAIL: u8 = 2;
    const REFUSED: u8 = 5;

    /// A name server on loopback that answers every query the same way.
    async fn name_server(answer: Answer) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let _ = socket.send_to(&reply(&buf[..len], answer), from).await;
            }
        });
        addr
    }

    /// A response to `query`: its id and question, with `answer`.
    fn reply(query: &[u8], answer: Answer) -> Vec<u8> {
        // The question: the name's labels, then type and class.
        let mut end = 12;
        while query[end] != 0 {
            end += 1 + query[end] as usize;
        }
        let question = &query[12..end + 5];
        let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
        let (code, record) = match answer {
            Answer::Code(code) => (code, None),
            // A for A queries; an empty NOERROR for AAAA and the rest.
            Answer::Address(ip) => (0, (qtype == 1).then_some(ip)),
        };
        let mut out = vec![query[0], query[1], 0x81, 0x80 | code, 0, 1];
        out.extend_from_slice(&[0, u8::from(record.is_some()), 0, 0, 0, 0]);
        out.extend_from_slice(question);
        if let Some(ip) = record {
            out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
            out.extend_from_slice(&ip.octets());
        }
        out
    }

    #[tokio::test]
    async fn only_nxdomain_makes_a_peer_absent() {
        let host = "raftset-1.raftset-peers.default.svc.cluster.local";
        let cases = [
            (
                "an address",
                Answer::Address(Ipv4Addr::new(10, 0, 0, 7)),
                Location::At(format!("{host}:7001")),
            ),
            ("no such name", Answer::Code(NXDOMAIN), Location::Absent),
            (
                "a server failure",
                Answer::Code(SERVFAIL),
                Location::Unknown,
            ),
            ("a refusal", Answer::Code(REFUSED), Location::Unknown),
        ];
        for (name, answer, expected) in cases {
            let resolver = Resolver::at(name_server(answer).await);
            assert_eq!(resolver.locate(host, 7001).await, expected, "{name}");
        }
    }

    #[tokio::test]
    async fn no_name_server_or_no_resolver_makes_a_peer_unknown() {
        // A bound, silent socket: the query goes unanswered.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let resolver = Resolver::at(silent.local_addr().unwrap());
        assert_eq!(resolver.locate("p.example", 7001).await, Location::Unknown);
        assert_eq!(
            Resolver(None).locate("p.example", 7001).await,
            Location::Unknown
        );
    }
}
