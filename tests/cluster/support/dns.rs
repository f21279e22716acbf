//! The pods' cluster DNS, as CoreDNS serves a headless Service: an A record
//! for each pod's name (and the Service's own name with every pod's
//! address), an authoritative NXDOMAIN for every other name, and, on
//! command, an outage that answers every query at once with SERVFAIL or
//! REFUSED.
//!
//! The pods ask it directly: their `/etc/resolv.conf` names it and nothing
//! else. Docker's embedded DNS is kept out of the way because it answers
//! network aliases itself, so it could never make a pod's name fail, and
//! on an internal network it times out on names it does not know instead
//! of saying "no such name".
//!
//! Messages are read and written with hickory-proto, the resolver's own
//! message types.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// Answers are not to be cached: pods come and go within a test.
const TTL: u32 = 0;

/// What the server answers from.
#[derive(Default)]
struct Zone {
    /// Addresses by lower-case name, without the final dot.
    records: BTreeMap<String, Vec<Ipv4Addr>>,
    /// While set, every query is answered with this code.
    outage: Option<ResponseCode>,
    /// Queries an outage failed, by the address that asked and the name
    /// asked for (lower case, without the final dot).
    failed: BTreeMap<(IpAddr, String), Failures>,
}

/// The queries for one name from one address that outages failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    pub count: u64,
    pub first: Instant,
    pub last: Instant,
}

/// The DNS server on a set's network; see the module docs. Dropping it
/// stops it.
pub struct ClusterDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    server: tokio::task::JoinHandle<()>,
}

impl ClusterDns {
    /// Serves DNS on `gateway:53`, the address the pods' resolv.conf names.
    pub async fn start(gateway: &str) -> Result<ClusterDns, String> {
        ClusterDns::serve(gateway, 53).await.map_err(|e| {
            format!("cannot serve DNS on {gateway}:53 (the e2e tests run as root): {e}")
        })
    }

    async fn serve(host: &str, port: u16) -> std::io::Result<ClusterDns> {
        let socket = UdpSocket::bind((host, port)).await?;
        let addr = socket.local_addr()?;
        let zone = Arc::new(Mutex::new(Zone::default()));
        let shared = zone.clone();
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let (n, from) = match socket.recv_from(&mut buf).await {
                    Ok(received) => received,
                    // An ICMP error from an earlier reply: nothing to answer.
                    Err(_) => continue,
                };
                let reply = respond(&mut shared.lock().unwrap(), from.ip(), &buf[..n]);
                if let Some(reply) = reply {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        Ok(ClusterDns { addr, zone, server })
    }

    /// Replaces every record: each name with its addresses.
    pub fn set_records(&self, records: BTreeMap<String, Vec<Ipv4Addr>>) {
        self.zone.lock().unwrap().records = records
            .into_iter()
            .map(|(name, addrs)| (name.to_ascii_lowercase(), addrs))
            .collect();
    }

    /// From now on every query is answered at once with `code` (SERVFAIL,
    /// REFUSED); `None` ends the outage.
    pub fn set_outage(&self, code: Option<ResponseCode>) {
        self.zone.lock().unwrap().outage = code;
    }

    /// How many queries outages failed so far, by the address that asked
    /// and the name asked for (lower case, without the final dot).
    pub fn failed_queries(&self) -> BTreeMap<(IpAddr, String), Failures> {
        self.zone.lock().unwrap().failed.clone()
    }

    /// Asks the server for `name`'s addresses over UDP, as a pod does:
    /// `Ok` with the addresses (none for a name without A records), `Err`
    /// with the response code of a failure or with why no answer came.
    pub async fn lookup(&self, name: &str) -> Result<Vec<Ipv4Addr>, String> {
        let fqdn = Name::from_ascii(format!("{name}.")).map_err(|e| format!("{name}: {e}"))?;
        let mut query = Message::new(0x5e7f, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(fqdn, RecordType::A));
        let bytes = query.to_vec().map_err(|e| e.to_string())?;
        let socket = UdpSocket::bind((self.addr.ip(), 0))
            .await
            .map_err(|e| e.to_string())?;
        socket
            .send_to(&bytes, self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1500];
        let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
            .await
            .map_err(|_| format!("no answer for {name} within 2 s"))?
            .map_err(|e| e.to_string())?;
        let reply = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
        match reply.metadata.response_code {
            ResponseCode::NoError => Ok(reply
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect()),
            code => Err(code.to_string()),
        }
    }
}

impl Drop for ClusterDns {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The reply to one query from `from`, or `None` for anything that is not
/// a one-question query.
fn respond(zone: &mut Zone, from: IpAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(bytes).ok()?;
    if query.metadata.message_type != MessageType::Query || query.queries.len() != 1 {
        return None;
    }
    let question = query.queries[0].clone();
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(question.clone());
    let name = question.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    if let Some(code) = zone.outage {
        let now = Instant::now();
        let failures = zone
            .failed
            .entry((from, name.to_string()))
            .or_insert(Failures {
                count: 0,
                first: now,
                last: now,
            });
        failures.count += 1;
        failures.last = now;
        reply.metadata.response_code = code;
        return reply.to_vec().ok();
    }
    reply.metadata.authoritative = true;
    match zone.records.get(name) {
        None => reply.metadata.response_code = ResponseCode::NXDomain,
        Some(addrs) if question.query_type() == RecordType::A => {
            for ip in addrs {
                let record = Record::from_rdata(question.name().clone(), TTL, RData::A(A(*ip)));
                reply.add_answer(record);
            }
        }
        // The name exists, with no records of this type (AAAA): NOERROR
        // and no answer, or the resolver would take the name for absent.
        Some(_) => {}
    }
    reply.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_pod_names_and_fails_on_command() {
        let dns = ClusterDns::serve("127.0.0.1", 0).await.unwrap();
        let pod = "raftset-0.raftset-peers.raftset.svc.cluster.local";
        let ip = Ipv4Addr::new(10, 233, 7, 10);
        dns.set_records(BTreeMap::from([(pod.to_uppercase(), vec![ip])]));
        assert_eq!(dns.lookup(pod).await, Ok(vec![ip]), "a pod's name");
        let other = "raftset-1.raftset-peers.raftset.svc.cluster.local";
        assert_eq!(
            dns.lookup(other).await,
            Err(ResponseCode::NXDomain.to_string()),
            "a pod that does not exist"
        );

        for code in [ResponseCode::ServFail, ResponseCode::Refused] {
            dns.set_outage(Some(code));
            assert_eq!(dns.lookup(pod).await, Err(code.to_string()), "{code}");
        }
        let failed = dns.failed_queries();
        let from = (IpAddr::from([127, 0, 0, 1]), pod.to_string());
        assert_eq!(failed[&from].count, 2);
        dns.set_outage(None);
        assert_eq!(dns.lookup(pod).await, Ok(vec![ip]), "after the outage");
    }

    #[test]
    fn a_name_without_a_records_is_not_absent() {
        let pod = "raftset-0.raftset-peers.raftset.svc.cluster.local";
        let mut zone = Zone::default();
        zone.records
            .insert(pod.into(), vec![Ipv4Addr::new(10, 0, 0, 1)]);
        let mut query = Message::new(7, MessageType::Query, OpCode::Query);
        let name = Name::from_ascii(format!("{pod}.")).unwrap();
        query.add_query(Query::query(name, RecordType::AAAA));
        let from = IpAddr::from([10, 0, 0, 2]);
        let reply = respond(&mut zone, from, &query.to_vec().unwrap()).unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.id, 7);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        assert!(
            respond(&mut zone, from, &reply.to_vec().unwrap()).is_none(),
            "responses are not answered"
        );
    }
}
