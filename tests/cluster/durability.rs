//! Acknowledged writes are durable: flushed before the acknowledgement, and
//! present after every node is killed with SIGKILL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftset::{Config, Node};

use crate::support::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_of_every_node() {
    let mut cluster = Cluster::start(3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for node in 0..3 {
        let mut client = cluster
            .client(node)
            .await
            .with_timeout(Duration::from_secs(5));
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{node}-{n}");
                n += 1;
                match client.put(key.as_bytes(), b"durable").await {
                    Ok(_) => acked.push(key),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    // Kill mid-load, once a fair number of writes were acknowledged.
    let leader = cluster.leader().await;
    cluster.wait_for_applied(leader, 300).await;
    for node in 0..3 {
        cluster.kill(node).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    assert!(
        acked.len() >= 100,
        "only {} writes were acknowledged",
        acked.len()
    );

    for node in 0..3 {
        cluster.restart(node);
    }
    cluster.leader().await;
    let mut client = cluster.client(0).await;
    for key in &acked {
        let kv = client.get(key.as_bytes()).await.unwrap();
        assert!(kv.is_some(), "acknowledged write {key} was lost");
    }
}

/// One node is a whole cluster (pod 0 before anyone joins): each write must
/// still be on disk before it is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_cluster_acknowledges_only_flushed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        name: "solo-0".into(),
        data_dir: dir.path().to_path_buf(),
        listen_api: "127.0.0.1:0".parse().unwrap(),
        listen_peer: "127.0.0.1:0".parse().unwrap(),
        listen_http: "127.0.0.1:0".parse().unwrap(),
        listen_probes: "127.0.0.1:0".parse().unwrap(),
        listen_admin: "127.0.0.1:0".parse().unwrap(),
        insecure_peers: true,
        ..Config::default()
    };
    let node = Node::start(config).await.unwrap();
    node.ready(Duration::from_secs(30)).await.unwrap();
    let stats = node.stats();
    // While writes run, sample the applied index and then the durable index:
    // an entry is applied only once committed, and on a one-node cluster that
    // must mean flushed, so applied can never be ahead of durable.
    let done = Arc::new(AtomicBool::new(false));
    let checker = {
        let (stats, done) = (stats.clone(), done.clone());
        tokio::spawn(async move {
            let mut samples = 0u64;
            while !done.load(Ordering::Relaxed) {
                let now = stats.read();
                assert!(
                    now.applied_index <= now.durable_index,
                    "index {} applied with only {} flushed",
                    now.applied_index,
                    now.durable_index
                );
                samples += 1;
                tokio::task::yield_now().await;
            }
            samples
        })
    };
    let client = node.client().await.unwrap();
    let mut writes = Vec::new();
    for i in 0..256 {
        let mut client = client.clone();
        writes.push(tokio::spawn(async move {
            client
                .put(format!("k{i}").as_bytes(), b"v")
                .await
                .expect("write")
        }));
    }
    for write in writes {
        write.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    assert!(checker.await.unwrap() > 0);
    let flushes = stats.read().flushes;
    assert!(
        flushes < 256,
        "concurrent writes share flushes ({flushes} flushes for 256 writes)"
    );
    node.shutdown().await;
}
