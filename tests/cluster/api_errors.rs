//! Every limit and error code of the client API, through a follower (so
//! forwarding passes them on) and the leader.

use raftset::limits::{MAX_KEY_LEN, MAX_SCAN_LIMIT, MAX_VALUE_LEN};
use raftset::proto::kv_client::KvClient;
use raftset::proto::{GetRequest, PutRequest, ScanRequest};
use std::time::Duration;

use tonic::Code;

use crate::support::{http, Cluster, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_documented_codes_and_change_nothing() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    for node in [leader, (leader + 1) % 3] {
        let mut client = cluster.client(node).await;
        client.put(b"counter", b"not a number").await.unwrap();
        let cases: Vec<(&str, Result<_, raftset::ClientError>, Code, &str)> = vec![
            (
                "empty key",
                client.put(b"", b"v").await.map(|_| ()),
                Code::InvalidArgument,
                "key must not be empty",
            ),
            (
                "key over 4 KiB",
                client
                    .put(&vec![b'k'; MAX_KEY_LEN + 1], b"v")
                    .await
                    .map(|_| ()),
                Code::InvalidArgument,
                "4096",
            ),
            (
                "value over 1 MiB",
                client
                    .put(b"big", &vec![0; MAX_VALUE_LEN + 1])
                    .await
                    .map(|_| ()),
                Code::InvalidArgument,
                "1048576",
            ),
            (
                "scan limit over the maximum",
                client
                    .scan(b"", b"", MAX_SCAN_LIMIT + 1, Default::default())
                    .await
                    .map(|_| ()),
                Code::InvalidArgument,
                "10000",
            ),
            (
                "lost compare-and-swap",
                client
                    .compare_and_swap(b"counter", Some(b"other"), Some(b"x"))
                    .await
                    .map(|_| ()),
                Code::FailedPrecondition,
                "compare-and-swap failed",
            ),
            (
                "expected absence of a present key",
                client
                    .compare_and_swap(b"counter", None, Some(b"x"))
                    .await
                    .map(|_| ()),
                Code::FailedPrecondition,
                "compare-and-swap failed",
            ),
            (
                "incrementing a non-integer",
                client.increment(b"counter", 1).await.map(|_| ()),
                Code::FailedPrecondition,
                "not a decimal integer",
            ),
            (
                "empty key on get",
                client.get(b"").await.map(|_| ()),
                Code::InvalidArgument,
                "key must not be empty",
            ),
        ];
        for (case, result, code, message) in cases {
            let err = result.expect_err(case);
            assert_eq!(err.code(), code, "{case} via node {node}: {err}");
            assert!(
                err.to_string().contains(message),
                "{case}: {err:?} should mention {message:?}"
            );
        }
        assert_eq!(
            client.get(b"counter").await.unwrap().unwrap().value,
            b"not a number"
        );
        assert_eq!(client.get(b"big").await.unwrap(), None);
    }
}

/// An error never echoes stored data: incrementing a 1 MiB value that is
/// no number put the whole value into the status message, which does not
/// fit gRPC's header limit, so the client got a broken response instead of
/// FAILED_PRECONDITION.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_increment_does_not_echo_the_stored_value() {
    let cluster = Cluster::start(1).await;
    let mut client = cluster.client(0).await;
    let value = vec![b'x'; MAX_VALUE_LEN];
    client.put(b"big", &value).await.unwrap();
    let err = client.increment(b"big", 1).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.to_string().contains("not a decimal integer") && err.to_string().len() < 1024,
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_refused_and_the_node_keeps_serving() {
    let cluster = Cluster::start(1).await;
    let api = format!("http://{}", cluster.nodes[0].api());
    let mut raw = KvClient::connect(api.clone())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);

    let oversized = raw
        .put(PutRequest {
            key: b"k".to_vec().into(),
            value: vec![0u8; 8 << 20].into(),
            request_id: Default::default(),
            prev_kv: false,
        })
        .await
        .unwrap_err();
    assert_eq!(oversized.code(), Code::OutOfRange, "{oversized}");

    let bad_enum = raw
        .get(GetRequest {
            key: b"k".to_vec().into(),
            consistency: 7,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_enum.code(), Code::InvalidArgument, "{bad_enum}");

    let reused = {
        let id = b"same-id".to_vec();
        raw.put(PutRequest {
            key: b"k".to_vec().into(),
            value: b"v".to_vec().into(),
            request_id: id.clone().into(),
            prev_kv: false,
        })
        .await
        .unwrap();
        let mut client = cluster.client(0).await;
        let _ = client.get(b"k").await.unwrap();
        raftset::proto::kv_client::KvClient::connect(api.clone())
            .await
            .unwrap()
            .delete(raftset::proto::DeleteRequest {
                key: b"k".to_vec().into(),
                request_id: id.into(),
            })
            .await
            .unwrap_err()
    };
    assert_eq!(reused.code(), Code::InvalidArgument, "{reused}");

    // Ids a node makes live briefly; a client may not pass one off as its own.
    let reserved = raw
        .put(PutRequest {
            key: b"k".to_vec().into(),
            value: b"v".to_vec().into(),
            request_id: b"\xffraftset-mine".to_vec().into(),
            prev_kv: false,
        })
        .await
        .unwrap_err();
    assert_eq!(reserved.code(), Code::InvalidArgument, "{reserved}");
    assert!(reserved.message().contains("reserved"), "{reserved}");

    // Garbage on the gRPC port: the connection fails, the server does not.
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(cluster.nodes[0].api())
        .await
        .unwrap();
    stream
        .write_all(b"\x00\xffnot http/2 at all\r\n\r\n")
        .await
        .unwrap();
    drop(stream);
    let mut stream = tokio::net::TcpStream::connect(cluster.nodes[0].peer())
        .await
        .unwrap();
    stream
        .write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(1000))
        .await
        .unwrap();
    drop(stream);

    let page = raw
        .scan(ScanRequest {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.kvs.len(), 1, "the node still serves and kept its data");
}

/// etcd's `prev_kv`: a put returns the value it replaced only when asked,
/// and a retry with the same request id returns what the first attempt did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_value_comes_back_only_when_asked() {
    use raftset::proto::DeleteRequest;

    let cluster = Cluster::start(1).await;
    let mut raw = KvClient::connect(format!("http://{}", cluster.nodes[0].api()))
        .await
        .unwrap();
    let put = |value: &str, request_id: &str, prev_kv: bool| PutRequest {
        key: b"k".to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        request_id: request_id.as_bytes().to_vec().into(),
        prev_kv,
    };
    let prev_value = |kv: Option<raftset::proto::KeyValue>| kv.map(|kv| kv.value.to_vec());

    raw.put(put("1", "a", false)).await.unwrap();
    let unasked = raw.put(put("2", "b", false)).await.unwrap().into_inner();
    assert_eq!(unasked.prev_kv, None, "not asked for");
    let asked = raw.put(put("3", "c", true)).await.unwrap().into_inner();
    assert_eq!(prev_value(asked.prev_kv), Some(b"2".to_vec()));
    raw.put(put("4", "d", false)).await.unwrap();
    let retried = raw.put(put("3", "c", true)).await.unwrap().into_inner();
    assert_eq!(
        (retried.revision, prev_value(retried.prev_kv)),
        (asked.revision, Some(b"2".to_vec())),
        "a retry returns the first attempt's outcome"
    );

    // A delete always returns what it deleted.
    let deleted = raw
        .delete(DeleteRequest {
            key: b"k".to_vec().into(),
            request_id: b"e".to_vec().into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted, "{deleted:?}");
    assert_eq!(prev_value(deleted.prev_kv), Some(b"4".to_vec()));
}

/// Appends `n` as a postcard varint.
fn varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A forwarded write as the peer protocol carries it (postcard): a
/// request id, then `Op::PutReturningPrev` (variant 0) with its key and
/// value, then the write's timeout in milliseconds.
fn postcard_put(out: &mut Vec<u8>, request_id: &[u8], key: &[u8], value: &[u8]) {
    varint(out, request_id.len());
    out.extend_from_slice(request_id);
    out.push(0);
    varint(out, key.len());
    out.extend_from_slice(key);
    varint(out, value.len());
    out.extend_from_slice(value);
    varint(out, 5_000);
}

/// The leader, its status, and a client of its (plaintext) peer port that
/// sends messages of any size, as a rogue peer would.
async fn leader_peer_port(
    cluster: &Cluster,
) -> (
    usize,
    raftset::proto::StatusResponse,
    raftset::proto::raft_peer_client::RaftPeerClient<tonic::transport::Channel>,
) {
    let leader = cluster.leader().await;
    let status = cluster.status(leader).await.unwrap();
    let peer = raftset::proto::raft_peer_client::RaftPeerClient::connect(format!(
        "http://{}",
        cluster.nodes[leader].peer()
    ))
    .await
    .unwrap()
    .max_encoding_message_size(8 * MAX_VALUE_LEN);
    (leader, status, peer)
}

/// The peer port must not let a sender put into the log what the client
/// API refuses: an entry no follower can take, or one that breaks a limit
/// every replica relies on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_refuses_forwarded_writes_that_break_a_limit() {
    use raftset::proto::PeerMessage;

    let cluster = Cluster::start(3).await;
    let (leader, status, mut peer) = leader_peer_port(&cluster).await;
    // (what is wrong, request id, key, value)
    type Case = (&'static str, Vec<u8>, Vec<u8>, Vec<u8>);
    let cases: Vec<Case> = vec![
        (
            "value over the limit",
            b"r1".to_vec(),
            b"big".to_vec(),
            vec![0; MAX_VALUE_LEN + 1],
        ),
        (
            "key over the limit",
            b"r2".to_vec(),
            vec![b'k'; MAX_KEY_LEN + 1],
            b"v".to_vec(),
        ),
        ("empty key", b"r3".to_vec(), Vec::new(), b"v".to_vec()),
        (
            "request id over the limit",
            vec![7; 65],
            b"k".to_vec(),
            b"v".to_vec(),
        ),
    ];
    // One batch of them all, as a follower forwards the writes it holds.
    let mut batch = Vec::new();
    varint(&mut batch, cases.len());
    for (_, request_id, key, value) in &cases {
        postcard_put(&mut batch, request_id, key, value);
    }
    let message = PeerMessage {
        cluster_id: status.cluster_id.clone(),
        payload: batch.into(),
        target_id: 0,
    };
    let mut answers = peer.propose(message).await.unwrap().into_inner();
    let mut refused = vec![None; cases.len()];
    while let Some(answer) = answers.message().await.unwrap() {
        // (place in the batch, Err(WireStatus { code, message, marks }))
        type Answer = (u32, Result<(), (i32, String, bool, bool)>);
        let (at, answer): Answer = postcard::from_bytes(&answer.payload).unwrap();
        refused[at as usize] = Some(answer.unwrap_err());
    }
    for ((name, ..), refusal) in cases.iter().zip(refused) {
        let (code, message, not_proposed, _) =
            refusal.unwrap_or_else(|| panic!("{name}: no answer"));
        assert_eq!(
            Code::from_i32(code),
            Code::InvalidArgument,
            "{name}: {message}"
        );
        assert!(not_proposed, "{name}: {message}");
    }
    let mut client = cluster.client(leader).await;
    assert_eq!(
        client.get(b"big").await.unwrap(),
        None,
        "nothing was applied"
    );
    let after = cluster.status(leader).await.unwrap();
    assert_eq!(
        after.last_log_index, status.last_log_index,
        "nothing entered the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_messages_from_another_cluster_or_for_another_node_are_refused() {
    use raftset::proto::raft_peer_client::RaftPeerClient;
    use raftset::proto::PeerMessage;

    let cluster = Cluster::start(3).await;
    let status = cluster.status(1).await.unwrap();
    let mut peer = RaftPeerClient::connect(format!("http://{}", cluster.nodes[1].peer()))
        .await
        .unwrap();
    let message = |cluster_id: &str, target_id: u64| PeerMessage {
        cluster_id: cluster_id.into(),
        payload: vec![0xff; 16].into(),
        target_id,
    };

    let foreign = peer
        .append_entries(message("another-cluster", status.id))
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::FailedPrecondition, "{foreign}");
    assert!(
        foreign.message().contains("cluster id mismatch"),
        "{foreign}"
    );
    // The cluster id is the only check on peer messages until peers
    // authenticate: a refusal must not hand it to whoever asked.
    assert!(
        !foreign.message().contains(&status.cluster_id),
        "the refusal echoes the cluster id: {foreign}"
    );

    // What a leader still sends to a member whose pod came back empty.
    let misaddressed = peer
        .append_entries(message(&status.cluster_id, status.id ^ 1))
        .await
        .unwrap_err();
    assert_eq!(
        misaddressed.code(),
        Code::FailedPrecondition,
        "{misaddressed}"
    );
    assert!(misaddressed.message().contains("not"), "{misaddressed}");

    let garbage = peer
        .vote(message(&status.cluster_id, status.id))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage}");

    let after = cluster.status(1).await.unwrap();
    assert_eq!(
        (after.term, after.cluster_id),
        (status.term, status.cluster_id),
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_health_and_reflection_services_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let cluster = Cluster::start(1).await;
    let endpoint = format!("http://{}", cluster.nodes[0].api());
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let reply = health
        .check(HealthCheckRequest {
            service: "raftset.v1.KV".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status(), ServingStatus::Serving);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in ["raftset.v1.KV", "raftset.v1.Admin", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n == "raftset.v1.RaftPeer"),
        "the peer service stays off the client port"
    );
}

/// The space quota, decided on the leader for a write that reached a
/// follower: past it, writes that add data are refused as never proposed
/// (RESOURCE_EXHAUSTED naming the quota; 507 for a visit), while reads,
/// deletes and the nodes' service go on; a larger quota takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_quota_writes_are_refused_while_reads_and_deletes_go_on() {
    const QUOTA: &str = "16777216";
    let mut cluster = Cluster::start_with(3, &["--quota-bytes", QUOTA]).await;
    let follower = (cluster.leader().await + 1) % 3;
    let mut client = cluster.client(follower).await;
    let value = vec![b'v'; 256 * 1024];
    let mut acked = Vec::new();
    // A loaded machine may elect a new leader meanwhile: a write whose
    // outcome is unknown counts neither as acknowledged nor as refused.
    let mut attempts = 0;
    let (refused_key, refusal) = loop {
        attempts += 1;
        assert!(attempts < 400, "still no refusal after {attempts} writes");
        let key = format!("fill-{attempts}");
        match client.put(key.as_bytes(), &value).await {
            Ok(_) => acked.push(key),
            Err(e) if e.code() == Code::ResourceExhausted => break (key, e),
            Err(e) => eprintln!("{key}: {e}"),
        }
    };
    assert!(!acked.is_empty(), "the first write was refused: {refusal}");
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal}");
    let message = refusal.to_string();
    assert!(
        message.contains("quota") && message.contains(QUOTA) && message.contains("not proposed"),
        "{message}"
    );

    let increment = client.increment(b"n", 1).await.unwrap_err();
    assert_eq!(increment.code(), Code::ResourceExhausted, "{increment}");
    let cas = client.compare_and_swap(b"c", None, Some(b"v")).await;
    assert_eq!(cas.unwrap_err().code(), Code::ResourceExhausted);
    let visit = http::get(&cluster.nodes[follower].http(), "/", "text/plain").await;
    assert_eq!(visit.status, 507, "{}", visit.body);
    assert!(visit.body.contains("quota"), "{}", visit.body);

    for i in 0..3 {
        let mut reader = cluster.client(i).await;
        for key in &acked {
            let kv = reader.get(key.as_bytes()).await.unwrap();
            assert_eq!(kv.map(|kv| kv.value), Some(value.clone()), "{key} on {i}");
        }
        let refused = reader.get(refused_key.as_bytes()).await.unwrap();
        assert_eq!(refused, None, "a refused write was applied on {i}");
    }

    // Counted by whichever node led when it refused.
    let mut refusals = 0.0;
    for node in &cluster.nodes {
        let metrics = http::get(&node.http(), "/metrics", "*/*").await;
        let sample = |name: &str| {
            let line = metrics.body.lines().find(|l| l.starts_with(name));
            line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        assert_eq!(sample("raftset_quota_bytes "), QUOTA.parse().ok());
        refusals += sample("raftset_proposals_failed_total{reason=\"quota\"}").unwrap();
    }
    assert!(refusals >= 4.0, "{refusals}");

    for key in &acked {
        assert!(client.delete(key.as_bytes()).await.unwrap(), "{key}");
    }
    assert_eq!(client.get(acked[0].as_bytes()).await.unwrap(), None);

    cluster.set_args(&["--quota-bytes", "1073741824"]);
    for i in 0..3 {
        cluster.kill(i).await;
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
    let mut client = cluster.client(follower).await;
    client.put(refused_key.as_bytes(), &value).await.unwrap();
    assert_eq!(client.increment(b"n", 1).await.unwrap(), 1);
}

/// Connections past `--grpc-max-connections` are closed at once, and a
/// place frees when one closes: a flood of connections costs a node no
/// more than its cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_grpc_cap_are_closed_and_places_free_again() {
    let cluster = Cluster::start_with(1, &["--grpc-max-connections", "4"]).await;
    let api = cluster.nodes[0].api();
    let one_read = || {
        let api = api.clone();
        async move {
            let mut client = raftset::Client::connect(&api)
                .await
                .map_err(|e| e.to_string())?;
            client.get(b"k").await.map_err(|e| e.to_string())?;
            Ok::<_, String>(client)
        }
    };
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(one_read().await.expect("a connection under the cap"));
    }
    let fifth = tokio::time::timeout(Duration::from_secs(20), one_read())
        .await
        .expect("an answer, not a hang");
    assert!(fifth.is_err(), "a fifth connection was served");
    drop(held.pop());
    crate::support::wait_for("a place to free up", || async {
        one_read().await.map(drop)
    })
    .await;
}

/// Each peer method takes bodies of its own size: a vote or a read-index
/// request of 1 MiB is cut off while it is read, before anything decodes
/// it; an AppendEntries of the same size is read whole (and then refused
/// for what it says); the cluster goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_methods_that_carry_no_entries_take_no_large_bodies() {
    use raftset::proto::PeerMessage;

    let cluster = Cluster::start(3).await;
    let (leader, status, mut peer) = leader_peer_port(&cluster).await;
    let large = || PeerMessage {
        cluster_id: status.cluster_id.clone(),
        payload: vec![0xff; MAX_VALUE_LEN].into(),
        target_id: status.id,
    };
    let vote = peer.vote(large()).await.unwrap_err();
    let read_index = peer.read_index(large()).await.unwrap_err();
    for (what, refused) in [("vote", &vote), ("read index", &read_index)] {
        assert!(
            refused.message().contains("length limit exceeded"),
            "{what}: {refused}"
        );
    }
    let append = peer.append_entries(large()).await.unwrap_err();
    assert!(
        !append.message().contains("length limit exceeded"),
        "an AppendEntries may be large: {append}"
    );
    let mut client = cluster.client(leader).await;
    client.put(b"after", b"large bodies").await.unwrap();
}
