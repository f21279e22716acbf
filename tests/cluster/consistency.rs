//! Replication and consistency through every node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use raftset::client::Consistency;
use raftset::proto::kv_client::KvClient;
use raftset::proto::{GetRequest, IncrementRequest};
use raftset::KeyValue;

use crate::support::{wait_for, Cluster, Harness};

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

/// One read of [`reads_during_writes_show_the_state_at_their_header_revision`].
struct Read {
    what: String,
    /// The response's header revision.
    revision: u64,
    /// The key a Get asked for; `None` for a scan, which covers every key.
    covers: Option<Vec<u8>>,
    kvs: Vec<KeyValue>,
}

/// Every read is one point in time, through the whole path. Writers on
/// every node put to their own keys at once, so the leader packs their
/// puts into shared entries, while readers on every node Scan all the keys
/// and Get one. Each acknowledged put names its revision, so the state at
/// any revision is known: a read at header revision R must show, for each
/// key, exactly the last put at or below R. A key newer than R, or part of
/// one entry's puts without the rest, fails that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_writes_show_the_state_at_their_header_revision() {
    const WRITERS_PER_NODE: usize = 3;
    const PUTS: usize = 40;
    let cluster = Cluster::start(3).await;
    let writing = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for node in 0..3 {
        for w in 0..WRITERS_PER_NODE {
            let mut client = cluster.client(node).await;
            let key = format!("w/{node}-{w}");
            writers.push(tokio::spawn(async move {
                let mut puts = Vec::new();
                for n in 0..PUTS {
                    let value = format!("{key}#{n}");
                    let revision = client.put(key.as_bytes(), value.as_bytes()).await;
                    puts.push((revision.expect("put"), value.into_bytes()));
                }
                (key.into_bytes(), puts)
            }));
        }
    }
    let mut readers = Vec::new();
    for node in 0..3 {
        let mut client = cluster.client(node).await;
        let mut kv = KvClient::connect(format!("http://{}", cluster.nodes[node].api()))
            .await
            .unwrap();
        let writing = writing.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = Vec::new();
            let mut n = 0;
            while writing.load(Ordering::Relaxed) {
                let page = client
                    .scan(b"w/", b"", 100, Consistency::Serializable)
                    .await
                    .expect("scan");
                reads.push(Read {
                    what: format!("scan via {node}"),
                    revision: page.revision,
                    covers: None,
                    kvs: page.kvs,
                });
                let key = format!("w/{}-{}", n % 3, (n / 3) % WRITERS_PER_NODE);
                let got = kv
                    .get(GetRequest {
                        key: key.clone().into_bytes().into(),
                        consistency: raftset::proto::Consistency::Serializable as i32,
                    })
                    .await
                    .expect("get")
                    .into_inner();
                let kvs = got.kv.map(KeyValue::from).into_iter().collect();
                reads.push(Read {
                    what: format!("get via {node}"),
                    revision: got.revision,
                    covers: Some(key.into_bytes()),
                    kvs,
                });
                n += 1;
            }
            reads
        }));
    }
    let mut puts: BTreeMap<Vec<u8>, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for writer in writers {
        let (key, key_puts) = writer.await.unwrap();
        puts.insert(key, key_puts);
    }
    writing.store(false, Ordering::Relaxed);
    let mut reads = Vec::new();
    for reader in readers {
        reads.extend(reader.await.unwrap());
    }

    // The (value, mod_revision) of `key` at `revision`: its last put at or
    // below it.
    let state_at = |key: &[u8], revision: u64| {
        puts[key]
            .iter()
            .rev()
            .find(|(put, _)| *put <= revision)
            .map(|(put, value)| (value.clone(), *put))
    };
    let mut wrong = Vec::new();
    for Read {
        what,
        revision,
        covers,
        kvs,
    } in &reads
    {
        let shown: BTreeMap<_, _> = kvs
            .iter()
            .map(|kv| (kv.key.clone(), (kv.value.clone(), kv.mod_revision)))
            .collect();
        let text = |at: Option<(Vec<u8>, u64)>| {
            at.map(|(value, put)| format!("{} (put at {put})", String::from_utf8_lossy(&value)))
        };
        // A scan covers every key; a Get its own.
        let keys: Vec<&Vec<u8>> = match covers {
            Some(key) => vec![key],
            None => puts.keys().collect(),
        };
        for key in keys {
            let expected = state_at(key, *revision);
            let found = shown.get(key).cloned();
            if found != expected {
                wrong.push(format!(
                    "{what} at revision {revision}: {} is {:?}, expected {:?}",
                    String::from_utf8_lossy(key),
                    text(found),
                    text(expected),
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} keys in {} reads were not as at the read's revision, first: {:#?}",
        wrong.len(),
        reads.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(!reads.is_empty());
}

/// A leader killed (`-9`) and started again before the others elect
/// anyone serves no stale linearizable read, through itself or a
/// follower. openraft 0.9 starts a node whose stored vote is its own
/// committed one as the leader again at once, in the same term, knowing
/// only the commit index it last wrote down (a hint the kill may have
/// lost); a read index taken from that would miss writes it had
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_before_an_election_serves_no_stale_read() {
    // Elections slow enough that the killed leader is back before one.
    let args = ["--heartbeat-ms", "100", "--election-timeout-ms", "4000"];
    let mut cluster = Cluster::start_with(3, &args).await;
    let (leader, before) = cluster.wait_for_leader().await;
    let mut writer = cluster.client(leader).await;
    let mut last = 0;
    for i in 1..=300 {
        writer.put(b"k", i.to_string().as_bytes()).await.unwrap();
        last = i;
    }
    cluster.kill(leader).await;
    cluster.restart(leader);
    for i in [leader, (leader + 1) % 3] {
        let read = wait_for("a linearizable read", || {
            let cluster = &cluster;
            async move {
                let mut client = cluster.client(i).await;
                client
                    .get(b"k")
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "no value".to_string())
            }
        })
        .await;
        assert_eq!(
            read.value,
            last.to_string().as_bytes(),
            "read through node {i} after the leader's restart"
        );
    }
    // It served only once elected again, in a later term.
    let after = cluster.status(leader).await.unwrap();
    assert!(after.term > before.term, "{after:?}");
}

/// While the followers keep asking for read indexes, their asks confirm
/// the leader's own linearizable reads: with every heartbeat round for
/// reads left unanswered, reads through the leader still see the latest
/// write, and once the followers stop asking they cannot be confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_followers_asks_confirm_the_leaders_own_reads() {
    let cluster = Cluster::start_armed(3, "read-heartbeat-round-unanswered=return").await;
    let (leader, _) = cluster.wait_for_leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut through_leader = cluster.client(leader).await;
    through_leader.put(b"k", b"0").await.unwrap();

    let asking = Arc::new(AtomicBool::new(true));
    let mut readers = Vec::new();
    for &follower in &followers {
        let mut client = cluster.client(follower).await;
        let asking = asking.clone();
        readers.push(tokio::spawn(async move {
            while asking.load(Ordering::SeqCst) {
                client.get(b"k").await.expect("a read through a follower");
            }
        }));
    }
    for i in 1..=20 {
        let value = i.to_string();
        through_leader.put(b"k", value.as_bytes()).await.unwrap();
        let read = through_leader.get(b"k").await.unwrap().expect("k is there");
        assert_eq!(read.value, value.as_bytes(), "read {i} through the leader");
    }

    asking.store(false, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    // The point is armed: without the followers' asks nothing confirms it.
    let alone = through_leader
        .with_timeout(std::time::Duration::from_secs(2))
        .get(b"k")
        .await;
    assert!(alone.is_err(), "{alone:?}");
}
