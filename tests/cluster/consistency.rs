//! Replication and consistency through every node.

use raftset::client::Consistency;
use raftset::proto::kv_client::KvClient;
use raftset::proto::IncrementRequest;

use crate::support::{wait_for, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_are_read_from_every_node() {
    let cluster = Cluster::start(3).await;
    for i in 0..3 {
        let mut client = cluster.client(i).await;
        client
            .put(
                format!("key-{i}").as_bytes(),
                format!("from node {i}").as_bytes(),
            )
            .await
            .unwrap();
    }
    for reader in 0..3 {
        let mut client = cluster.client(reader).await;
        for i in 0..3 {
            let kv = client
                .get(format!("key-{i}").as_bytes())
                .await
                .unwrap()
                .expect("key present");
            assert_eq!(
                kv.value,
                format!("from node {i}").as_bytes(),
                "read through node {reader}"
            );
        }
    }
    // Serializable reads are local: every node gets there once it applied.
    for reader in 0..3 {
        let mut client = cluster.client(reader).await;
        wait_for("a serializable read to see the last write", || {
            let mut client = client.clone();
            async move {
                match client.get_with(b"key-2", Consistency::Serializable).await {
                    Ok(Some(_)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        client.get(b"key-0").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_read_sees_a_write_made_through_another_node() {
    let cluster = Cluster::start(3).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(cluster.client(i).await);
    }
    for round in 0..30usize {
        let (writer, reader) = (round % 3, (round + 1) % 3);
        let value = format!("round {round}");
        clients[writer]
            .put(b"register", value.as_bytes())
            .await
            .unwrap();
        let kv = clients[reader]
            .get(b"register")
            .await
            .unwrap()
            .expect("present");
        assert_eq!(
            kv.value,
            value.as_bytes(),
            "round {round}: written via {writer}, read via {reader}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_through_all_nodes_reach_the_exact_total() {
    let cluster = Cluster::start(3).await;
    const TASKS_PER_NODE: usize = 3;
    const INCREMENTS: usize = 40;
    let mut tasks = Vec::new();
    for node in 0..3 {
        for _ in 0..TASKS_PER_NODE {
            let mut client = cluster.client(node).await;
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..INCREMENTS {
                    seen.push(client.increment(b"counter", 1).await.expect("increment"));
                }
                seen
            }));
        }
    }
    let mut values = Vec::new();
    for task in tasks {
        values.extend(task.await.unwrap());
    }
    let total = (3 * TASKS_PER_NODE * INCREMENTS) as i64;
    values.sort_unstable();
    assert_eq!(
        values,
        (1..=total).collect::<Vec<_>>(),
        "every increment got its own value"
    );
    for node in 0..3 {
        let kv = cluster
            .client(node)
            .await
            .get(b"counter")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kv.value, total.to_string().as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_with_the_same_request_id_applies_once() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    for (node, id) in [
        (leader, "retry-on-leader"),
        (follower, "retry-via-follower"),
    ] {
        let mut kv = KvClient::connect(format!("http://{}", cluster.nodes[node].api()))
            .await
            .unwrap();
        let request = || IncrementRequest {
            key: id.as_bytes().to_vec().into(),
            delta: 1,
            request_id: id.as_bytes().to_vec().into(),
        };
        let first = kv.increment(request()).await.unwrap().into_inner();
        let retry = kv.increment(request()).await.unwrap().into_inner();
        assert_eq!(first, retry, "the retry returns the first outcome");
        assert_eq!(first.value, 1);
    }
}
