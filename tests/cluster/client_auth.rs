//! The client port with `--client-tokens-file`: nobody without a token
//! reads, writes or administers; each token does what its role allows and
//! no more; the CLI sends its token from a file and exits 9 when refused;
//! a rotated file is used without a restart.

use std::time::Duration;

use raftset::auth::Role;
use raftset::{Client, ClientError};
use tonic::Code;

use crate::support::http::get;
use crate::support::process::{ADMIN_TOKEN, READ_TOKEN, WRITE_TOKEN};
use crate::support::{Cluster, Harness};

async fn client_as(cluster: &Cluster, i: usize, token: Option<&str>) -> Client {
    let client = Client::connect(&cluster.nodes[i].api())
        .await
        .expect("a connection")
        .with_timeout(Duration::from_secs(10));
    match token {
        Some(token) => client.with_token(token).expect("a valid token"),
        None => client,
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Code {
    match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(e) => e.code(),
    }
}

/// No token, or one the file does not hold: a Put, a Backup and a Remove
/// are refused as UNAUTHENTICATED, through a follower as well as the
/// leader, and nothing changed; each refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_token_are_refused_and_change_nothing() {
    let cluster = Cluster::start_with_tokens(3).await;
    let (leader, _) = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let before = cluster.client(leader).await.members().await.unwrap();
    for i in [leader, follower] {
        for token in [None, Some("guessed")] {
            let mut anonymous = client_as(&cluster, i, token).await;
            assert_eq!(
                code(anonymous.put(b"stolen", b"x").await),
                Code::Unauthenticated
            );
            assert_eq!(code(anonymous.get(b"stolen").await), Code::Unauthenticated);
            let backup = anonymous.backup().await;
            assert_eq!(code(backup.map(|_| ())), Code::Unauthenticated);
            let victim = before.members[follower].member.as_ref().unwrap().id;
            assert_eq!(code(anonymous.remove(victim).await), Code::Unauthenticated);
        }
    }
    let mut admin = cluster.client(leader).await;
    assert_eq!(admin.members().await.unwrap().members.len(), 3);
    assert_eq!(admin.get(b"stolen").await.unwrap(), None);
    let metrics = get(&cluster.nodes[leader].http(), "/metrics", "*/*").await;
    assert!(
        metrics
            .body
            .contains(r#"raftset_auth_failures_total{endpoint="grpc",reason="missing"} 4"#)
            && metrics
                .body
                .contains(r#"raftset_auth_failures_total{endpoint="grpc",reason="wrong"} 4"#),
        "{}",
        metrics.body
    );
    assert!(!metrics.body.contains("guessed"));
    // The standard health service stays open, for probes and balancers.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.nodes[leader].api()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert!(health.is_ok(), "{health:?}");
}

/// A read token reads but cannot write; a write token writes but cannot
/// remove a member or take a backup; the admin token can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_does_what_its_role_allows_and_no_more() {
    let cluster = Cluster::start_with_tokens(3).await;
    let (leader, _) = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut writer = client_as(&cluster, follower, Some(WRITE_TOKEN)).await;
    writer.put(b"k", b"written").await.unwrap();
    assert_eq!(writer.increment(b"n", 2).await.unwrap(), 2);
    let mut reader = client_as(&cluster, follower, Some(READ_TOKEN)).await;
    assert_eq!(reader.get(b"k").await.unwrap().unwrap().value, b"written");
    assert_eq!(reader.status().await.unwrap().members.len(), 3);
    assert_eq!(
        code(reader.put(b"k", b"overwritten").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(reader.increment(b"n", 1).await),
        Code::PermissionDenied
    );
    let victim = reader.status().await.unwrap().members[follower].id;
    assert_eq!(code(writer.remove(victim).await), Code::PermissionDenied);
    assert_eq!(
        code(writer.backup().await.map(|_| ())),
        Code::PermissionDenied
    );
    assert_eq!(
        code(writer.transfer_leader(None).await),
        Code::PermissionDenied
    );
    let mut admin = client_as(&cluster, follower, Some(ADMIN_TOKEN)).await;
    assert_eq!(admin.get(b"k").await.unwrap().unwrap().value, b"written");
    let mut backup = admin.backup().await.unwrap();
    assert!(backup.message().await.unwrap().is_some());
    assert_eq!(admin.members().await.unwrap().members.len(), 3);
}

/// The CLI sends the token of `--token-file` (or `RAFTSET_TOKEN_FILE`), and
/// exits 9 without one or with one whose role is too low; a tokens file
/// rotated in place takes over on the next call, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_its_token_file_and_a_rotated_tokens_file_takes_over() {
    let cluster = Cluster::start_with_tokens(1).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = |name: &str, token: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path
    };
    let writer = token_file("writer", WRITE_TOKEN);
    let reader = token_file("reader", READ_TOKEN);
    let api = cluster.nodes[0].api();
    let cli = |args: &[&str], token: Option<&std::path::Path>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_raftset"));
        command
            .args(args)
            .args(["--endpoints", &api])
            .env_remove("RAFTSET_TOKEN_FILE");
        if let Some(path) = token {
            command.env("RAFTSET_TOKEN_FILE", path);
        }
        command.output().unwrap()
    };
    let out = cli(&["put", "k", "v"], None);
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bearer token"), "{stderr}");
    let out = cli(&["put", "k", "v"], Some(&reader));
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("write role"));
    assert!(cli(&["put", "k", "v"], Some(&writer)).status.success());
    let out = cli(&["get", "k"], Some(&reader));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"v");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
        .args(["get", "k", "--endpoints", &api, "--token-file"])
        .arg(&writer)
        .env_remove("RAFTSET_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "--token-file: {out:?}");

    // Rotated: the write token replaced by a new one, in place.
    cluster.write_tokens(&[
        (Role::Admin, ADMIN_TOKEN),
        (Role::Write, "write-rotated-0b9c"),
        (Role::Read, READ_TOKEN),
    ]);
    let out = cli(&["put", "k", "v2"], Some(&writer));
    assert_eq!(out.status.code(), Some(9), "the old token: {out:?}");
    let rotated = token_file("rotated", "write-rotated-0b9c");
    assert!(cli(&["put", "k", "v2"], Some(&rotated)).status.success());
}

/// Without `--remote-admin` the client port refuses the calls that need
/// the admin role (PERMISSION_DENIED, the CLI exits 9) and still serves
/// everything else; the loopback admin port serves them without a token,
/// and admin commands go there by default (`RAFTSET_LISTEN_ADMIN`, as in
/// the node's own container). A follower's admin port passes a leader
/// transfer on to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_are_taken_on_the_admin_port_and_refused_on_the_client_port() {
    let cluster = Cluster::start_without_remote_admin(3).await;
    let (leader, before) = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut client = client_as(&cluster, follower, None).await;
    client.put(b"k", b"v").await.unwrap();
    assert_eq!(client.status().await.unwrap().members.len(), 3);
    assert_eq!(
        code(client.backup().await.map(|_| ())),
        Code::PermissionDenied
    );
    assert_eq!(code(client.snapshot().await), Code::PermissionDenied);
    assert_eq!(
        code(client.transfer_leader(None).await),
        Code::PermissionDenied
    );
    let mut admin = Client::connect(&cluster.nodes[follower].admin())
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(10));
    let mut backup = admin.backup().await.unwrap();
    assert!(backup.message().await.unwrap().is_some());

    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
            .args(args)
            .env_remove("RAFTSET_ENDPOINTS")
            .env_remove("RAFTSET_ENDPOINT")
            .env_remove("RAFTSET_TOKEN_FILE")
            .env("RAFTSET_LISTEN_ADMIN", cluster.nodes[follower].admin())
            .output()
            .unwrap()
    };
    let api = cluster.nodes[follower].api();
    let out = cli(&["transfer-leader", "--endpoints", &api]);
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loopback admin port"), "{stderr}");
    let out = cli(&["transfer-leader"]);
    assert!(out.status.success(), "{out:?}");
    let (now, _) = cluster
        .wait_for_leader_among(&[0, 1, 2], None, before.term + 1)
        .await;
    assert_ne!(now, leader, "leadership moved");
}
