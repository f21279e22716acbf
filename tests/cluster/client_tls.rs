//! TLS on the client gRPC port (`--client-tls-dir`): callers that trust
//! the CA are served, and a node's certificate must name the address
//! dialled; a plaintext caller gets no answer; with a CA in the directory
//! a caller without a certificate from it gets none either. The CLI
//! speaks TLS with `--cacert` (and `--cert`, `--key`).

use std::time::Duration;

use raftset::tls::client::{ClientTls, ClientTlsFiles};
use raftset::Client;

use crate::support::{Cluster, Harness};

async fn client_with(
    cluster: &Cluster,
    i: usize,
    files: Option<&ClientTlsFiles>,
) -> Result<Client, String> {
    let tls = files.map(|f| ClientTls::load(f).expect("the callers' files"));
    Client::connect_with(&cluster.nodes[i].api(), tls.as_ref())
        .await
        .map(|c| c.with_timeout(Duration::from_secs(10)))
        .map_err(|e| e.to_string())
}

/// A Put through node `i` as a caller with `files`: connecting, or the
/// call, may fail.
async fn put_as(
    cluster: &Cluster,
    i: usize,
    files: Option<&ClientTlsFiles>,
    value: &[u8],
) -> Result<(), String> {
    let mut client = client_with(cluster, i, files).await?;
    client
        .put(b"k", value)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn cli(args: &[&str], endpoint: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
        .args(args)
        .args(["--endpoints", endpoint])
        .env_remove("RAFTSET_CACERT")
        .env_remove("RAFTSET_CERT")
        .env_remove("RAFTSET_KEY")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_speaks_tls_and_a_plaintext_caller_gets_no_answer() {
    let cluster = Cluster::start_with_client_tls(3, false).await;
    let (leader, _) = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let files = cluster.client_tls_files();
    let mut writer = client_with(&cluster, follower, Some(&files)).await.unwrap();
    writer.put(b"k", b"over tls").await.unwrap();
    let mut reader = client_with(&cluster, leader, Some(&files)).await.unwrap();
    assert_eq!(reader.get(b"k").await.unwrap().unwrap().value, b"over tls");

    // Plaintext: no connection, or no answer on it.
    let plain = put_as(&cluster, follower, None, b"plaintext").await;
    assert!(plain.is_err(), "a plaintext caller was answered");
    assert_eq!(reader.get(b"k").await.unwrap().unwrap().value, b"over tls");

    // The node's certificate names its own address only: dialled as
    // `localhost`, it is not the host the caller asked for.
    let port = cluster.nodes[leader]
        .api()
        .rsplit_once(':')
        .unwrap()
        .1
        .to_string();
    let tls = ClientTls::load(&files).unwrap();
    let misnamed = Client::connect_with(&format!("localhost:{port}"), Some(&tls)).await;
    assert!(
        misnamed.is_err(),
        "a certificate for another name was accepted"
    );

    let api = cluster.nodes[follower].api();
    let ca = files.ca.to_str().unwrap();
    let out = cli(&["get", "k", "--cacert", ca], &api);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"over tls");
    let out = cli(&["get", "k"], &api);
    assert!(!out.status.success(), "plaintext CLI: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ca_in_its_directory_the_node_requires_a_client_certificate() {
    let cluster = Cluster::start_with_client_tls(1, true).await;
    let files = cluster.client_tls_files();
    let (cert, key) = files.identity.clone().expect("a caller certificate");
    let anonymous = ClientTlsFiles {
        ca: files.ca.clone(),
        identity: None,
    };
    let refused = put_as(&cluster, 0, Some(&anonymous), b"no cert").await;
    assert!(
        refused.is_err(),
        "a caller without a certificate was answered"
    );
    let mut client = client_with(&cluster, 0, Some(&files)).await.unwrap();
    client.put(b"k", b"certified").await.unwrap();

    let api = cluster.nodes[0].api();
    let ca = files.ca.to_str().unwrap();
    let out = cli(&["get", "k", "--cacert", ca], &api);
    assert_ne!(out.status.code(), Some(0), "no certificate: {out:?}");
    let out = cli(
        &[
            "get",
            "k",
            "--cacert",
            ca,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &api,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"certified");
}
