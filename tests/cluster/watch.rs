//! Watch: live changes under a prefix, replay from a revision, compaction.

use std::time::Duration;

use raftset::proto::watch_event::Kind;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::support::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_under_a_prefix_and_replays_from_a_revision() {
    let cluster = Cluster::start(3).await;
    let mut client = cluster.client(1).await;
    let mut live = client.watch(b"app/", 0).await.unwrap();

    let first = client.put(b"app/a", b"1").await.unwrap();
    client.put(b"other", b"x").await.unwrap();
    client.put(b"app/b", b"2").await.unwrap();
    client.delete(b"app/a").await.unwrap();

    let mut events = Vec::new();
    while events.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(30), live.next())
            .await
            .expect("an event within 30 s")
            .expect("stream open")
            .expect("event");
        events.push(event);
    }
    let summary: Vec<(Kind, Vec<u8>)> = events
        .iter()
        .map(|e| (e.kind(), e.kv.as_ref().unwrap().key.to_vec()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (Kind::Put, b"app/a".to_vec()),
            (Kind::Put, b"app/b".to_vec()),
            (Kind::Delete, b"app/a".to_vec())
        ]
    );
    assert!(
        events.windows(2).all(|w| w[0].revision < w[1].revision),
        "revisions increase"
    );

    // Replay from the first write: the same three events, from history.
    let mut replay = client.watch(b"app/", first).await.unwrap();
    for expected in &events {
        let event = replay.next().await.unwrap().unwrap();
        assert_eq!(&event, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_from_a_compacted_revision_is_out_of_range() {
    let cluster = Cluster::start_with(1, &["--history-revisions", "5"]).await;
    let mut client = cluster.client(0).await;
    for i in 0..40 {
        client.put(b"k", i.to_string().as_bytes()).await.unwrap();
    }
    let Err(status) = client.watch(b"", 1).await else {
        panic!("revision 1 is compacted");
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status}");
    assert!(
        status.to_string().contains("oldest revision available"),
        "{status}"
    );
}

/// The node's resident memory, as its `/metrics` says.
async fn resident_bytes(cluster: &Cluster) -> u64 {
    let metrics = crate::support::http::get(&cluster.nodes[0].http(), "/metrics", "*/*").await;
    metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("raftset_resident_memory_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("raftset_resident_memory_bytes") as u64
}

/// Watchers whose clients never read hold a bounded number of bytes each
/// (the README's budget: a 1 MiB queue and a 1 MiB replay page, plus what
/// the connection buffers), however much history they replay: ten of
/// them from revision 1 over 40 MiB of history. Before, each collected
/// its whole replay in memory and queued 64 events of any size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_that_never_read_hold_a_bounded_number_of_bytes_each() {
    const MIB: u64 = 1024 * 1024;
    // A small sled cache, so that what grows is the watchers' own memory
    // and not the cache filling with the history they replay.
    let args = ["--quota-bytes", "16000000000", "--cache-mb", "8"];
    let cluster = Cluster::start_with(1, &args).await;
    let mut client = cluster.client(0).await;
    let value = vec![b'x'; raftset::limits::MAX_VALUE_LEN - 1024];
    for i in 0..40 {
        client
            .put(format!("big/{i}").as_bytes(), &value)
            .await
            .unwrap();
    }
    let before = resident_bytes(&cluster).await;
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut watcher = cluster.client(0).await;
        stalled.push(watcher.watch(b"big/", 1).await.unwrap());
    }
    // The replays run until their queues and connections are full; the
    // peak of a few seconds' samples is what they took.
    let mut peak = before;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(resident_bytes(&cluster).await);
    }
    let grown = peak.saturating_sub(before);
    println!(
        "ten stalled watchers over 40 MiB of history: resident {} MiB before, peak {} MiB (+{} MiB)",
        before / MIB,
        peak / MIB,
        grown / MIB
    );
    assert!(
        grown < 100 * MIB,
        "ten stalled watchers took {} MiB",
        grown / MIB
    );
    drop(stalled);
}
