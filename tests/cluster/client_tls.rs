//! TLS on the client gRPC port (`--client-tls-dir`): callers that trust
//! the CA are served, and a node's certificate must name the address
//! dialled; a plaintext caller gets no answer; with a CA in the directory
//! a caller without a certificate from it gets none either. The CLI
//! speaks TLS with `--cacert` (and `--cert`, `--key`). The HTTP port does
//! the same with `--http-tls-dir` (checked with curl), the probes' port
//! stays plain HTTP.

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

/// `--cacert`, `--cert` and `--key` for a caller with a certificate: the
/// CLI's flags, and curl's.
fn identity_args(files: &ClientTlsFiles) -> Vec<String> {
    let (cert, key) = files.identity.clone().expect("a caller certificate");
    [("--cacert", &files.ca), ("--cert", &cert), ("--key", &key)]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.to_string_lossy().into_owned()])
        .collect()
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
    let identity = identity_args(&files);
    let mut args = vec!["get", "k"];
    args.extend(identity.iter().map(String::as_str));
    let out = cli(&args, &api);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"certified");
}

/// `curl` for `https://<node i's HTTP address><path>` with `args`: its exit
/// status and what it printed.
fn curl(cluster: &Cluster, i: usize, scheme: &str, path: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .arg(format!("{scheme}://{}{path}", cluster.nodes[i].http()))
        .output()
        .expect("curl (scripts/test installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_speaks_tls_and_the_probes_port_stays_plain() {
    let cluster = Cluster::start_with_client_tls(1, false).await;
    let ca = cluster.client_tls_files().ca;
    let ca = ca.to_str().unwrap();
    let (ok, visit) = curl(&cluster, 0, "https", "/", &["--cacert", ca]);
    assert!(ok && visit.contains("visits: 1"), "{visit}");
    let (ok, visits) = curl(&cluster, 0, "https", "/visits", &["--cacert", ca]);
    assert!(ok && visits.contains("\"visits\":1"), "{visits}");
    let (ok, plain) = curl(&cluster, 0, "http", "/", &[]);
    assert!(!ok, "plain HTTP was answered: {plain}");
    let (ok, unknown_ca) = curl(&cluster, 0, "https", "/", &[]);
    assert!(
        !ok,
        "a certificate from an unknown CA was trusted: {unknown_ca}"
    );
    cluster.wait_ready(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ca_the_http_port_requires_a_client_certificate() {
    let cluster = Cluster::start_with_client_tls(1, true).await;
    let files = cluster.client_tls_files();
    let ca = files.ca.to_str().unwrap();
    let (ok, refused) = curl(&cluster, 0, "https", "/visits", &["--cacert", ca]);
    assert!(!ok, "no certificate, yet answered: {refused}");
    let identity = identity_args(&files);
    let identity: Vec<&str> = identity.iter().map(String::as_str).collect();
    let (ok, visits) = curl(&cluster, 0, "https", "/visits", &identity);
    assert!(ok && visits.contains("\"visits\":0"), "{visits}");
}

/// With `<role> cert:<name>` lines in the tokens file, a client
/// certificate proves a role without a token: the reporter's reads but
/// cannot write, the operator's may take a backup, and a certificate the
/// file does not name proves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_named_in_the_tokens_file_proves_its_role() {
    let cluster = Cluster::start_with_certificate_roles(3).await;
    let (leader, _) = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let operator = cluster.caller_files("operator");
    let reporter = cluster.caller_files("reporter");
    let mut admin = client_with(&cluster, follower, Some(&operator))
        .await
        .unwrap();
    admin.put(b"k", b"by certificate").await.unwrap();
    let mut backup = admin.backup().await.unwrap();
    assert!(backup.message().await.unwrap().is_some());
    let mut reader = client_with(&cluster, follower, Some(&reporter))
        .await
        .unwrap();
    assert_eq!(
        reader.get(b"k").await.unwrap().unwrap().value,
        b"by certificate"
    );
    let denied = reader.put(b"k", b"no").await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");
    let backup = reader.backup().await.map(|_| ()).unwrap_err();
    assert_eq!(backup.code(), tonic::Code::PermissionDenied, "{backup}");
}
