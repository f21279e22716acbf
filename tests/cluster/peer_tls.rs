//! Mutual TLS on the peer port: a secure cluster works as a plain one, and
//! nobody who merely reaches the port, or holds another member's
//! certificate, can join in a member's place, vote, append or hold an
//! election. Rotated certificates are used without a restart.

use std::time::Duration;

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{CommittedLeaderId, LogId, Vote};
use raftset::proto::cluster_peer_client::ClusterPeerClient;
use raftset::proto::raft_peer_client::RaftPeerClient;
use raftset::proto::{ClusterInfoRequest, JoinRequest, PeerMessage};
use raftset::tls::issue::Authority;
use raftset::tls::{Dial, PeerTls};
use tonic::transport::{Channel, Endpoint};

use crate::support::{Cluster, Harness};

// Raft messages as an impostor builds them. The entries' type is not
// raftset's, but an append of none encodes the same.
openraft::declare_raft_types!(Impostor: D = (), R = (), SnapshotData = std::io::Cursor<Vec<u8>>);

/// What the impostor tests need to know of the cluster under attack.
struct Victim {
    cluster_id: String,
    leader: usize,
    term: u64,
    /// Every member's id, by node index.
    ids: Vec<u64>,
}

async fn victim(cluster: &Cluster) -> Victim {
    let (leader, status) = cluster.wait_for_leader().await;
    let mut ids = Vec::new();
    for i in 0..cluster.nodes.len() {
        ids.push(cluster.status(i).await.expect("a status").id);
    }
    Victim {
        cluster_id: status.cluster_id,
        leader,
        term: status.term,
        ids,
    }
}

/// A peer-port channel to node `i` as `name`, with a certificate from `ca`
/// naming `name` at `ip`.
fn channel_as(cluster: &Cluster, ca: &Authority, name: &str, ip: &str, i: usize) -> Channel {
    let dir = tempfile::tempdir().expect("a temp dir").keep();
    Cluster::certify(ca, &dir, name, ip);
    let tls = PeerTls::load(&dir, name).expect("the impostor's certificate");
    let endpoint = Endpoint::from_shared(format!("http://{}", cluster.nodes[i].peer())).unwrap();
    Dial::Peer(tls).lazy_channel(endpoint)
}

fn envelope<T: serde::Serialize>(cluster_id: &str, target: u64, payload: &T) -> PeerMessage {
    PeerMessage {
        cluster_id: cluster_id.to_string(),
        payload: postcard::to_stdvec(payload).unwrap().into(),
        target_id: target,
    }
}

/// The impostor's address: one no member has, in the cluster's subnet.
fn stranger_ip(cluster: &Cluster) -> String {
    let ip = &cluster.nodes[0].ip;
    format!("{}.200", &ip[..ip.rfind('.').unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_cluster_forms_forwards_and_reads_as_a_plain_one() {
    let cluster = Cluster::start_secure(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut client = cluster.client(follower).await;
    let revision = client.put(b"k", b"over mutual TLS").await.unwrap();
    let mut other = cluster.client((leader + 2) % 3).await;
    let kv = other.get(b"k").await.unwrap().expect("the key");
    assert_eq!(kv.value, b"over mutual TLS");
    assert_eq!(kv.mod_revision, revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_of_the_cluster_ca_the_peer_port_answers_nothing() {
    let cluster = Cluster::start_secure(3).await;
    let peer = cluster.nodes[0].peer();
    // Plaintext, as `raftset serve --insecure-peers` would call.
    let plain = Endpoint::from_shared(format!("http://{peer}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let asked = ClusterPeerClient::new(plain)
        .cluster_info(ClusterInfoRequest { asker_id: 7 })
        .await;
    assert!(asked.is_err(), "a plaintext caller got {asked:?}");
    // TLS with a certificate for the right name, from another CA.
    let rogue = Authority::new("rogue").unwrap();
    let channel = channel_as(&cluster, &rogue, "raftset-2", &cluster.nodes[2].ip, 0);
    let asked = ClusterPeerClient::new(channel)
        .cluster_info(ClusterInfoRequest { asker_id: 7 })
        .await;
    assert!(
        asked.is_err(),
        "a caller with a rogue CA's certificate got {asked:?}"
    );
}

/// The impostor holds a real certificate of the cluster's CA, but for a
/// name that is not the member it claims to be (as a pod of a larger
/// replica count would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_members_certificate_cannot_join_vote_append_or_hold_elections() {
    let cluster = Cluster::start_secure(3).await;
    let before = victim(&cluster).await;
    let impostor_ip = stranger_ip(&cluster);
    let target = (before.leader + 1) % 3;
    let channel = channel_as(
        &cluster,
        cluster.authority(),
        "raftset-3",
        &impostor_ip,
        target,
    );
    let mut raft = RaftPeerClient::new(channel.clone());
    let mut control = ClusterPeerClient::new(channel);
    let denied =
        |what: &str, result: Result<tonic::Response<PeerMessage>, tonic::Status>| match result {
            Err(status) => assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{what}: {status}"
            ),
            Ok(_) => panic!("{what} was accepted"),
        };
    // Taking raftset-2's place: its name, at the impostor's address.
    let joined = control
        .join(JoinRequest {
            cluster_id: before.cluster_id.clone(),
            node_id: 0xbad,
            name: "raftset-2".into(),
            peer_addr: format!("{impostor_ip}:7001"),
            api_addr: format!("{impostor_ip}:7000"),
            http_addr: format!("{impostor_ip}:8080"),
        })
        .await;
    let status = joined.expect_err("the impostor joined as raftset-2");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    // Speaking for the leader's own id, in a higher term.
    let leader_id = before.ids[before.leader];
    let term = before.term + 10;
    let vote = VoteRequest::new(Vote::new(term, leader_id), None::<LogId<u64>>);
    denied(
        "a vote request in the leader's name",
        raft.vote(envelope(&before.cluster_id, before.ids[target], &vote))
            .await,
    );
    let append = AppendEntriesRequest::<Impostor> {
        vote: Vote::new_committed(term, leader_id),
        prev_log_id: Some(LogId::new(CommittedLeaderId::new(term, leader_id), 0)),
        entries: vec![],
        leader_commit: None,
    };
    denied(
        "an append in the leader's name",
        raft.append_entries(envelope(&before.cluster_id, before.ids[target], &append))
            .await,
    );
    denied(
        "an election hold in the leader's name",
        control
            .hold_election(envelope(
                &before.cluster_id,
                before.ids[target],
                &(leader_id, 60_000u64),
            ))
            .await,
    );
    // Nothing moved: the same members, the same leader, the same term.
    let after = victim(&cluster).await;
    assert_eq!(after.ids, before.ids, "a member was replaced");
    assert_eq!((after.leader, after.term), (before.leader, before.term));
    let members = cluster.wait_for_voters(3).await;
    assert!(
        members
            .members
            .iter()
            .all(|p| p.member.as_ref().is_some_and(|m| m.id != 0xbad)),
        "{members:?}"
    );
}

/// Every member's files are replaced by certificates of a new CA while the
/// cluster runs; a member added afterwards holds only the new ones. It can
/// join only if the running members picked up the new CA and certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_used_without_a_restart() {
    let mut cluster = Cluster::start_secure(3).await;
    cluster.rotate_authority();
    let added = cluster.scale_up().await;
    cluster.wait_for_voters(4).await;
    let mut client = cluster.client(added).await;
    client.put(b"after rotation", b"1").await.unwrap();
}
