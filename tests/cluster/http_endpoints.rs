//! The HTTP port: the visit counter, probes, metrics, and slow clients.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::http::get;
use crate::support::{Cluster, Harness};

/// The visit counter is an anonymous write through Raft: one client must
/// not take the cluster's whole write capacity. Past its allowance a visit
/// is answered 429 with Retry-After and counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_visits_too_fast_is_turned_away_and_not_counted() {
    let cluster = Cluster::start_with(1, &["--visits-per-client", "1"]).await;
    let http = cluster.nodes[0].http();
    let visits = (0..10).map(|_| {
        let http = http.clone();
        tokio::spawn(async move { get(&http, "/", "*/*").await })
    });
    let replies: Vec<_> = futures::future::join_all(visits)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let counted = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(counted + refused.len(), 10, "only 200 or 429");
    assert!(!refused.is_empty(), "no visit was limited");
    for reply in &refused {
        assert!(reply.header("retry-after").is_some(), "{}", reply.body);
        assert!(reply.body.contains("too many visits"), "{}", reply.body);
    }
    let total = get(&http, "/visits", "application/json").await;
    let json: serde_json::Value = serde_json::from_str(&total.body).unwrap();
    assert_eq!(
        json["visits"], counted as i64,
        "a refused visit counts nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pod_counts_the_same_visits() {
    let cluster = Cluster::start(3).await;
    const VISITS: usize = 30;
    let mut last = 0;
    for i in 0..VISITS {
        // Spread like a load balancer would.
        let node = &cluster.nodes[i % 3];
        let reply = get(&node.http(), "/", "*/*").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let count: i64 = reply
            .body
            .lines()
            .find_map(|l| l.strip_prefix("visits: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no count in {:?}", reply.body));
        assert_eq!(count, last + 1, "each 200 counts exactly one visit");
        assert!(
            reply.body.contains(&format!("served by: {}", node.name)),
            "{}",
            reply.body
        );
        last = count;
    }
    for node in &cluster.nodes {
        let reply = get(&node.http(), "/visits", "application/json").await;
        assert_eq!(reply.status, 200);
        let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(json["visits"], VISITS as i64);
        assert_eq!(json["node"], node.name.as_str());
    }
    let page = get(
        &cluster.nodes[1].http(),
        "/",
        "text/html,application/xhtml+xml",
    )
    .await;
    assert!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    assert!(
        page.body.contains(&format!("{} visits", VISITS + 1)),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("raftset-2"),
        "the page lists the members: {}",
        page.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics() {
    let mut cluster = Cluster::spawn(2, &[]).await;
    // Node 1 alone: alive, but not ready until it joined a cluster.
    cluster.kill(0).await;
    let http = cluster.nodes[1].http();
    crate::support::wait_for("node 1 to serve HTTP", || {
        let http = http.clone();
        async move {
            tokio::net::TcpStream::connect(&http)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(
        get(&http, "/healthz", "*/*").await.status,
        200,
        "liveness never needs a leader"
    );
    let ready = get(&http, "/readyz", "*/*").await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("not a member"), "{}", ready.body);

    cluster.restart(0);
    cluster.wait_for_voters(2).await;
    crate::support::wait_for("node 1 to be ready", || {
        let http = http.clone();
        async move {
            let reply = get(&http, "/readyz", "*/*").await;
            if reply.status == 200 {
                Ok(())
            } else {
                Err(reply.body)
            }
        }
    })
    .await;
    get(&http, "/", "*/*").await;

    // A member that lost its quorum: not ready, but ready for start-up
    // ordering (the StatefulSet's probe), so a full restart is not stuck.
    let leader = cluster.leader().await;
    cluster.kill(leader).await;
    let survivor = &cluster.nodes[1 - leader];
    crate::support::wait_for("the survivor to lose its leader", || async {
        let reply = get(&survivor.http(), "/readyz", "*/*").await;
        if reply.status == 503 && reply.body.contains("no leader") {
            Ok(())
        } else {
            Err(reply.body)
        }
    })
    .await;
    assert_eq!(
        get(&survivor.http(), "/readyz?noleader", "*/*")
            .await
            .status,
        200
    );
    cluster.restart(leader);
    cluster.wait_ready(leader).await;
    cluster.wait_ready(1 - leader).await;

    let metrics = get(&http, "/metrics", "*/*").await;
    assert_eq!(metrics.status, 200);
    for name in [
        "raftset_raft_term",
        "raftset_raft_is_leader",
        "raftset_raft_applied_index",
        "raftset_log_flushes",
        "raftset_resident_memory_bytes",
    ] {
        assert!(
            metrics.body.contains(name),
            "{name} missing from:\n{}",
            metrics.body
        );
    }
    let leader_metrics = get(
        &cluster.nodes[cluster.leader().await].http(),
        "/metrics",
        "*/*",
    )
    .await;
    assert!(
        leader_metrics
            .body
            .contains("raftset_raft_replication_lag_entries{follower="),
        "{}",
        leader_metrics.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_headers_is_cut_off() {
    let cluster = Cluster::start_with(1, &["--http-header-timeout-ms", "300"]).await;
    let mut stream = tokio::net::TcpStream::connect(cluster.nodes[0].http())
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the server closed the connection after its header timeout"
    );
    // A well-behaved client is still served.
    assert_eq!(
        get(&cluster.nodes[0].http(), "/healthz", "*/*")
            .await
            .status,
        200
    );
}
