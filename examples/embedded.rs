//! Embeds a one-node raftset store in a program: start it, use the typed
//! client, stop it. Run with `cargo run --example embedded`.

use std::time::Duration;

use raftset::{Config, Node};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config {
        name: "embedded-0".into(),
        data_dir: std::env::temp_dir().join("raftset-embedded-example"),
        listen_api: "127.0.0.1:0".parse()?,
        listen_peer: "127.0.0.1:0".parse()?,
        listen_http: "127.0.0.1:0".parse()?,
        listen_probes: "127.0.0.1:0".parse()?,
        listen_admin: "127.0.0.1:0".parse()?,
        // One node on loopback has no peers to authenticate; a cluster
        // sets `peer_tls_dir` instead.
        insecure_peers: true,
        ..Config::default()
    };
    let node = Node::start(config).await?;
    node.ready(Duration::from_secs(10))
        .await
        .map_err(anyhow::Error::msg)?;

    let mut client = node.client().await?;
    client.put(b"greeting", b"hello").await?;
    let runs = client.increment(b"runs", 1).await?;
    let greeting = client.get(b"greeting").await?.expect("just written");
    println!(
        "{} (revision {}); this example ran {runs} time(s) on this data directory",
        String::from_utf8_lossy(&greeting.value),
        greeting.mod_revision
    );

    // Expected refusals are errors with a precise code, never a panic.
    let lost = client
        .compare_and_swap(b"greeting", Some(b"goodbye"), Some(b"hi"))
        .await
        .unwrap_err();
    println!(
        "compare-and-swap on a stale value: {:?}: {lost}",
        lost.code()
    );

    node.shutdown().await;
    Ok(())
}
