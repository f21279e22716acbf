//! The HTTP port: the visit counter, probes, metrics, and slow clients.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::http::{fetch, fetch_with, get, visits_in};
use crate::support::openmetrics::{scrape, scrape_prometheus_text, Scrape};
use crate::support::{poll, wait_for, Cluster, Harness};

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
        let count =
            visits_in(&reply.body).unwrap_or_else(|| panic!("no count in {:?}", reply.body));
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

/// `raftset healthcheck ARGS` with `env` set: its exit code and stderr.
async fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
        .arg("healthcheck")
        .args(args)
        .env_remove("RAFTSET_LISTEN_PROBES")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run raftset healthcheck");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        assert_eq!(stderr.lines().count(), 1, "one line on failure: {stderr}");
    }
    (out.status.code(), stderr)
}

/// The exit code `raftset healthcheck` documents for an unhealthy node.
const UNHEALTHY: Option<i32> = Some(8);

/// Docker's HEALTHCHECK: 0 once the node is a member, with or without a
/// leader (so neither a quorum loss nor a node 0 restarted alone marks the
/// cluster unhealthy); 8 for a node that is alive but not a member, for
/// nothing listening, and for no answer in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_for_a_member_and_8_otherwise() {
    let mut cluster = Cluster::spawn(2, &[]).await;
    // Node 1 alone: alive, but not a member until node 0 founds.
    cluster.kill(0).await;
    let http = cluster.nodes[1].probes();
    // The node's own listen setting is where the probe goes.
    let own_env = [("RAFTSET_LISTEN_PROBES", http.as_str())];
    wait_for("node 1 to pass `healthcheck --live`", || async {
        match healthcheck(&["--live"], &own_env).await {
            (Some(0), _) => Ok(()),
            (code, stderr) => Err(format!("{code:?} {stderr}")),
        }
    })
    .await;
    for args in [&["--addr", &http][..], &["--addr", &http, "--leader"]] {
        let (code, stderr) = healthcheck(args, &[]).await;
        assert_eq!(code, UNHEALTHY, "{args:?}: {stderr}");
        assert!(stderr.contains("503 not ready: not a member"), "{stderr}");
    }

    cluster.restart(0);
    cluster.wait_for_voters(2).await;
    cluster.wait_ready(1).await;
    for args in [&[][..], &["--leader"], &["--live"]] {
        let (code, stderr) = healthcheck(args, &own_env).await;
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }

    let leader = cluster.leader().await;
    cluster.kill(leader).await;
    let survivor = cluster.nodes[1 - leader].probes();
    wait_for("the survivor's `healthcheck --leader` to fail", || async {
        match healthcheck(&["--addr", &survivor, "--leader"], &[]).await {
            (UNHEALTHY, stderr) if stderr.contains("no leader") => Ok(()),
            (code, stderr) => Err(format!("{code:?} {stderr}")),
        }
    })
    .await;
    let (code, stderr) = healthcheck(&["--addr", &survivor], &[]).await;
    assert_eq!(
        code,
        Some(0),
        "a member without a leader is healthy: {stderr}"
    );

    cluster.kill(1 - leader).await;
    let (code, stderr) = healthcheck(&["--addr", &survivor], &[]).await;
    assert_eq!(code, UNHEALTHY, "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");

    // Accepted by the kernel, never answered: a hung node.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = listener.local_addr().unwrap().to_string();
    let started = std::time::Instant::now();
    let (code, stderr) = healthcheck(&["--addr", &silent, "--timeout-secs", "1"], &[]).await;
    assert_eq!(code, UNHEALTHY, "{stderr}");
    assert!(stderr.contains("no answer within 1s"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up in time"
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

/// A thousand idle connections on the visitor port, far past its cap,
/// leave the probes answering on their own port: visitors can never make
/// the kubelet restart a node. (The visitor port itself is then full:
/// that is what the cap is for.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_visitor_connections_leave_the_probes_answering() {
    let cluster = Cluster::start_with(1, &["--http-max-connections", "100"]).await;
    let node = &cluster.nodes[0];
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(tokio::net::TcpStream::connect(node.http()).await.unwrap());
    }
    let started = std::time::Instant::now();
    for path in ["/healthz", "/readyz"] {
        let reply = get(&node.probes(), path, "*/*").await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the probes waited"
    );
    // The probe port serves probes only.
    assert_eq!(get(&node.probes(), "/", "*/*").await.status, 404);
    drop(idle);
}

/// `--metrics-token-file`: a scrape without the bearer token gets 401, with
/// a wrong one 403, each counted and logged without the token; the right
/// one is served; a rotated file takes over without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_behind_a_token_refuse_scrapes_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics-token");
    let hash_line = |token: &str| {
        let out = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(token.as_bytes())?;
                child.wait_with_output()
            })
            .expect("sha256sum");
        let text = String::from_utf8(out.stdout).unwrap();
        format!("sha256:{}\n", text.split_whitespace().next().unwrap())
    };
    std::fs::write(&file, hash_line("first-token")).unwrap();
    let path = file.to_str().unwrap();
    let cluster = Cluster::start_with(1, &["--metrics-token-file", path]).await;
    let addr = cluster.nodes[0].http();
    let scrape = |token: Option<&str>| {
        let addr = addr.clone();
        let bearer = token.map(|t| format!("Bearer {t}"));
        async move {
            let mut headers = vec![("Accept", "*/*")];
            if let Some(bearer) = &bearer {
                headers.push(("Authorization", bearer.as_str()));
            }
            fetch_with(&addr, "/metrics", &headers, Duration::from_secs(10))
                .await
                .unwrap()
        }
    };
    let missing = scrape(None).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(scrape(Some("guess")).await.status, 403);
    let served = scrape(Some("first-token")).await;
    assert_eq!(served.status, 200);
    assert!(
        served
            .body
            .contains(r#"raftset_auth_failures_total{endpoint="metrics",reason="missing"} 1"#),
        "{}",
        served.body
    );
    assert!(!served.body.contains("guess"));
    // The rest of HTTP stays open.
    assert_eq!(get(&addr, "/healthz", "*/*").await.status, 200);
    // Rotated in place (a file of another size, as a new Secret is).
    std::fs::write(&file, format!("{}\n", hash_line("second-token"))).unwrap();
    assert_eq!(scrape(Some("first-token")).await.status, 403);
    assert_eq!(scrape(Some("second-token")).await.status, 200);
}

/// Every `raftset_…` metric name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.match_indices("raftset_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

/// Scrapes a 3-node cluster that served writes, as Prometheus would, with
/// the Python OpenMetrics parser; checks each new metric's type and that it
/// moved; then that every metric the alerts and the dashboard of
/// `k8s/monitoring/` name is among the samples the nodes export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_cover_the_rules_and_the_dashboard() {
    let cluster = Cluster::start(3).await;
    for i in 0..9 {
        let reply = get(&cluster.nodes[i % 3].http(), "/", "*/*").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let leader = cluster.leader().await;
    let leader_http = cluster.nodes[leader].http();
    // The leader times a heartbeat to each follower.
    wait_for("heartbeat round trips to both followers", || async {
        let scrape = scrape(&leader_http).await;
        let peers: Vec<_> = scrape
            .0
            .values()
            .flat_map(|f| &f.samples)
            .filter(|s| s.0 == "raftset_peer_round_trip_seconds_count" && s.2 > 0.0)
            .map(|s| s.1["peer"].clone())
            .collect();
        if peers.len() == 2 {
            Ok(())
        } else {
            Err(format!("timed peers: {peers:?}"))
        }
    })
    .await;

    let mut exported = std::collections::BTreeSet::new();
    for node in &cluster.nodes {
        let scrape: Scrape = scrape(&node.http()).await;
        for (family, kind) in [
            ("raftset_log_flushes", "counter"),
            ("raftset_log_appends", "counter"),
            ("raftset_leader_changes", "counter"),
            ("raftset_proposals_failed", "counter"),
            ("raftset_requests", "counter"),
            ("raftset_has_leader", "gauge"),
            ("raftset_proposals_pending", "gauge"),
            ("raftset_volume_size_bytes", "gauge"),
            ("raftset_volume_free_bytes", "gauge"),
            ("raftset_snapshot_size_bytes", "gauge"),
            ("raftset_fsync_duration_seconds", "histogram"),
            ("raftset_apply_duration_seconds", "histogram"),
            ("raftset_snapshot_build_duration_seconds", "histogram"),
            ("raftset_snapshot_install_duration_seconds", "histogram"),
        ] {
            assert_eq!(
                scrape.family(family).kind,
                kind,
                "{family} on {}",
                node.name
            );
        }
        let at_least_one = |name: &str| {
            let value = scrape.sum(name, &[]);
            assert!(value >= 1.0, "{name} is {value} on {}", node.name);
        };
        at_least_one("raftset_has_leader");
        at_least_one("raftset_leader_changes_total");
        at_least_one("raftset_log_flushes_total");
        at_least_one("raftset_log_appends_total");
        at_least_one("raftset_fsync_duration_seconds_count");
        at_least_one("raftset_apply_duration_seconds_count");
        at_least_one("raftset_volume_size_bytes");
        let free = scrape.sum("raftset_volume_free_bytes", &[]);
        assert!(free <= scrape.sum("raftset_volume_size_bytes", &[]));
        exported.extend(scrape.sample_names());
    }
    // A scraper that takes only the older text format gets it, and
    // promtool's parser and lint accept it.
    scrape_prometheus_text(&leader_http).await;
    // Only a leader sends heartbeats, so only it has samples of round trips.
    let leader_scrape = scrape(&leader_http).await;
    assert_eq!(
        leader_scrape.family("raftset_peer_round_trip_seconds").kind,
        "histogram"
    );

    let monitoring = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/monitoring");
    for file in ["prometheusrule.yaml", "dashboard.json"] {
        let text = std::fs::read_to_string(monitoring.join(file)).unwrap();
        let named = metric_names(&text);
        assert!(named.len() >= 5, "{file} names {named:?}");
        let missing: Vec<_> = named.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics no node exports: {missing:?}\nexported: {exported:?}"
        );
    }
}

/// A leader that lost its quorum holds a write as pending, then counts it
/// as failed; a follower counts the new leader after the old one dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_proposals_and_leader_changes_are_counted() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let http = cluster.nodes[leader].http();
    let failed = |scrape: &Scrape| scrape.sum("raftset_proposals_failed_total", &[]);
    let failed_before = failed(&scrape(&http).await);
    // Both followers die: the leader's next write cannot commit.
    for follower in &followers {
        cluster.kill(*follower).await;
    }
    let visit = tokio::spawn({
        let http = http.clone();
        async move { fetch(&http, "/", "*/*", Duration::from_secs(30)).await }
    });
    poll(
        "the write to be pending on the leader",
        Duration::from_secs(4),
        Duration::from_millis(20),
        || async {
            let pending = scrape(&http).await.sum("raftset_proposals_pending", &[]);
            if pending == 1.0 {
                Ok(())
            } else {
                Err(format!("{pending} pending"))
            }
        },
    )
    .await;
    let reply = visit.await.unwrap().unwrap();
    assert!(reply.status >= 500, "{} {}", reply.status, reply.body);
    let after = scrape(&http).await;
    assert!(
        failed(&after) > failed_before,
        "the failed write is counted: {:?}",
        after.family("raftset_proposals_failed")
    );
    assert_eq!(after.sum("raftset_proposals_pending", &[]), 0.0);

    // The followers come back; then the leader dies.
    for follower in &followers {
        cluster.restart(*follower);
    }
    for follower in &followers {
        cluster.wait_ready(*follower).await;
    }
    let watcher_http = cluster.nodes[followers[0]].http();
    let seen = scrape(&watcher_http)
        .await
        .sum("raftset_leader_changes_total", &[]);
    assert!(seen >= 1.0, "the first leader known counts: {seen}");
    cluster.kill(leader).await;
    wait_for("the follower to count the new leader", || async {
        let now = scrape(&watcher_http)
            .await
            .sum("raftset_leader_changes_total", &[]);
        if now > seen {
            Ok(())
        } else {
            Err(format!("{now} leader changes"))
        }
    })
    .await;
}

/// Every call on the client port is counted by its method and status: an
/// answered one, one its handler refused, and one the token gate refused
/// before any handler saw it; health checks are not raftset's calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_calls_are_counted_by_method_and_status_refused_ones_too() {
    let cluster = Cluster::start_with_tokens(1).await;
    let http = cluster.nodes[0].http();
    let count = |scrape: &Scrape, method: &str, code: &str| {
        scrape.sum(
            "raftset_requests_total",
            &[("method", method), ("code", code)],
        )
    };
    let mut admin = cluster.client(0).await;
    admin.put(b"counted", b"1").await.unwrap();
    let too_long = vec![b'k'; raftset::limits::MAX_KEY_LEN + 1];
    let refused = admin.get(&too_long).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let mut anonymous = raftset::Client::connect(&cluster.nodes[0].api())
        .await
        .unwrap();
    let gated = anonymous.get(b"counted").await.unwrap_err();
    assert_eq!(gated.code(), tonic::Code::Unauthenticated, "{gated:?}");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.nodes[0].api()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();

    let after = scrape(&http).await;
    assert_eq!(count(&after, "Put", "Ok"), 1.0);
    assert_eq!(count(&after, "Get", "InvalidArgument"), 1.0);
    assert_eq!(count(&after, "Get", "Unauthenticated"), 1.0);
    assert_eq!(count(&after, "Check", "Ok"), 0.0);
    assert_eq!(
        after.sum(
            "raftset_request_duration_seconds_count",
            &[("method", "Get")]
        ),
        2.0
    );
}
