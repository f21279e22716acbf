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
