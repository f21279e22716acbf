//! Leader loss, restarts and catching up.

use std::time::Duration;

use raftset::client::Consistency;
use tonic::Code;

use crate::support::openmetrics::scrape;
use crate::support::{wait_for, Cluster, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_continue_under_a_new_leader_after_the_leader_is_killed() {
    let mut cluster = Cluster::start(3).await;
    let old = cluster.leader().await;
    cluster
        .client(old)
        .await
        .put(b"before", b"1")
        .await
        .unwrap();
    cluster.kill(old).await;

    let new = cluster.leader().await;
    assert_ne!(new, old);
    for i in (0..3).filter(|i| *i != old) {
        let mut client = cluster.client(i).await;
        client
            .put(format!("after-{i}").as_bytes(), b"2")
            .await
            .unwrap();
        assert_eq!(client.get(b"before").await.unwrap().unwrap().value, b"1");
    }

    cluster.restart(old);
    let leader_status = cluster.status(new).await.unwrap();
    cluster
        .wait_for_applied(old, leader_status.applied_index)
        .await;
    let mut client = cluster.client(old).await;
    for i in (0..3).filter(|i| *i != old) {
        let kv = client
            .get_with(format!("after-{i}").as_bytes(), Consistency::Serializable)
            .await
            .unwrap();
        assert!(kv.is_some(), "the restarted node has the writes it missed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_catches_up_by_snapshot_when_restarted() {
    let mut cluster = Cluster::start_with(3, &["--snapshot-entries", "20"]).await;
    let leader = cluster.leader().await;
    let away = (leader + 1) % 3;
    let applied_before = cluster.status(away).await.unwrap().applied_index;
    cluster.stop(away).await;

    let mut client = cluster.client(leader).await;
    for i in 0..150 {
        client
            .put(format!("k{i:03}").as_bytes(), format!("v{i}").as_bytes())
            .await
            .unwrap();
    }
    let status = wait_for("the leader to purge its log past the stopped node", || {
        let cluster = &cluster;
        async move {
            let status = cluster.status(leader).await?;
            if status.purged_index > applied_before {
                Ok(status)
            } else {
                Err(format!(
                    "purged {} applied_before {applied_before}",
                    status.purged_index
                ))
            }
        }
    })
    .await;

    let (caught_up, page) = rejoin(&mut cluster, away, status.applied_index, b"k", 1000).await;
    assert!(
        caught_up.snapshot_index > applied_before,
        "caught up through a snapshot: {caught_up:?}"
    );
    assert_eq!(page.kvs.len(), 150);
    assert_eq!(page.kvs[149].value, b"v149");
}

/// A follower behind by many large values catches up through the log:
/// each AppendEntries must fit the time openraft gives it (one heartbeat
/// interval, the follower's flush included), so batches are bounded by
/// bytes and the default heartbeat leaves room for one maximal entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_large_values_catches_up_by_log() {
    let timing = production_timing();
    let mut args: Vec<&str> = timing.iter().map(String::as_str).collect();
    args.extend(["--snapshot-entries", "100000"]);
    let (mut cluster, away, status) = large_values_while_a_follower_is_away(&args, 48).await;
    assert_eq!(
        status.snapshot_index, 0,
        "catching up must go through the log"
    );

    let (caught_up, page) = rejoin(&mut cluster, away, status.applied_index, b"big", 2).await;
    assert_eq!(
        caught_up.snapshot_index, 0,
        "caught up by log: {caught_up:?}"
    );
    assert_eq!(page.kvs[0].value.len(), raftset::limits::MAX_VALUE_LEN);
}

/// A follower catches up by a snapshot that takes many election timeouts
/// to stream: the leader sends it no heartbeats meanwhile, so each chunk
/// has to count as one, or the follower calls an election in the middle
/// of every attempt and never catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_slower_than_an_election_timeout_catches_a_follower_up() {
    let args = ["--snapshot-entries", "10"];
    let (mut cluster, away, status) = large_values_while_a_follower_is_away(&args, 24).await;
    assert!(status.purged_index > 0, "the log was purged: {status:?}");
    let (caught_up, page) = rejoin(&mut cluster, away, status.applied_index, b"big23", 1).await;
    assert!(caught_up.snapshot_index > 0, "by snapshot: {caught_up:?}");
    assert_eq!(page.kvs[0].value.len(), raftset::limits::MAX_VALUE_LEN);
}

/// Large values fill the log long before `--snapshot-entries` entries
/// pass: past `--snapshot-log-bytes` every node snapshots and purges its
/// log, and a follower that was away meanwhile catches up by snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_bounded_by_bytes_as_well_as_by_entries() {
    const LIMIT: usize = 4 * 1024 * 1024;
    let limit = LIMIT.to_string();
    let timing = production_timing();
    let mut args: Vec<&str> = timing.iter().map(String::as_str).collect();
    args.extend([
        "--snapshot-entries",
        "100000",
        "--snapshot-log-bytes",
        &limit,
    ]);
    let (mut cluster, away, status) = large_values_while_a_follower_is_away(&args, 24).await;
    let (caught_up, page) = rejoin(&mut cluster, away, status.applied_index, b"big23", 1).await;
    assert!(
        caught_up.snapshot_index > 0,
        "the leader purged what the follower lacked: {caught_up:?}"
    );
    assert_eq!(page.kvs[0].value.len(), raftset::limits::MAX_VALUE_LEN);

    // The snapshot the away node installed may cover every entry there
    // was, leaving its log empty; an entry written now is in every log.
    let leader = cluster.leader().await;
    cluster
        .client(leader)
        .await
        .put(b"after-rejoin", b"1")
        .await
        .unwrap();
    let written = cluster.status(leader).await.unwrap().applied_index;
    for i in 0..3 {
        cluster.wait_for_applied(i, written).await;
    }

    // Twice the bound holds on every node once the purges have run (openraft
    // waits for replication to move past what it purges); past the bound a
    // node snapshots in its turn of the log, and the writes may have stopped
    // before it came. One entry may pass it, since the bound is checked
    // after each append.
    let bound = (2 * LIMIT + 2 * raftset::limits::MAX_VALUE_LEN) as f64;
    for i in 0..3 {
        let http = cluster.nodes[i].http();
        let size = wait_for("the log within its bound", || {
            let http = http.clone();
            async move {
                let bytes = scrape(&http).await.sum("raftset_log_size_bytes", &[]);
                if bytes <= bound {
                    Ok(bytes)
                } else {
                    Err(format!("node {i}'s log holds {bytes} bytes"))
                }
            }
        })
        .await;
        assert!(size > 0.0, "node {i} still holds the latest entries");
    }
}

/// Members apply the same entries, so with one bound they all reached it
/// at the same index and copied their state at once. Each ordinal
/// snapshots in turns of the log of its own, so the members snapshot at
/// indexes of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_snapshots_at_an_index_of_its_own() {
    const ENTRIES: usize = 40;
    let entries = ENTRIES.to_string();
    let cluster = Cluster::start_with(3, &["--snapshot-entries", &entries]).await;
    let leader = cluster.leader().await;
    let mut client = cluster.client(leader).await;
    for i in 0..2 * ENTRIES {
        client.put(format!("k{i}").as_bytes(), b"v").await.unwrap();
    }
    let written = cluster.status(leader).await.unwrap().applied_index;
    let mut taken = Vec::new();
    for i in 0..3 {
        cluster.wait_for_applied(i, written).await;
        let status = wait_for("a snapshot on every node", || {
            let cluster = &cluster;
            async move {
                let status = cluster.status(i).await?;
                if status.snapshot_index > 0 {
                    Ok(status)
                } else {
                    Err(format!("node {i} has no snapshot yet"))
                }
            }
        })
        .await;
        taken.push(status.snapshot_index);
    }
    assert!(
        taken[0] != taken[1] && taken[1] != taken[2] && taken[0] != taken[2],
        "snapshot indexes by ordinal: {taken:?}"
    );
}

/// The default heartbeat and election timeout, which leave room for one
/// maximal entry in each AppendEntries (the harness's are shorter).
fn production_timing() -> [String; 4] {
    let defaults = raftset::Config::default();
    [
        "--heartbeat-ms".into(),
        defaults.heartbeat_ms.to_string(),
        "--election-timeout-ms".into(),
        defaults.election_timeout_ms.to_string(),
    ]
}

/// Starts three nodes with `args`, stops a follower, and writes `count`
/// values of the largest size without it. Returns the cluster, the
/// stopped node and the leader's status after the writes. sled takes
/// about ten times the values written, so the quota is lifted: it is not
/// what these tests are about.
async fn large_values_while_a_follower_is_away(
    args: &[&str],
    count: usize,
) -> (Cluster, usize, raftset::proto::StatusResponse) {
    let mut args = args.to_vec();
    args.extend(["--quota-bytes", "8589934592"]);
    let mut cluster = Cluster::start_with(3, &args).await;
    let leader = cluster.leader().await;
    let away = (leader + 1) % 3;
    cluster.stop(away).await;
    put_large_values(&cluster.client(leader).await, count).await;
    let status = cluster.status(leader).await.unwrap();
    (cluster, away, status)
}

/// Writes `count` values of the largest size, `big00`, `big01`, ...,
/// sending again each write refused before it was proposed (a busy
/// two-node majority can miss a heartbeat while it flushes them).
async fn put_large_values(client: &raftset::Client, count: usize) {
    let value = vec![b'x'; raftset::limits::MAX_VALUE_LEN];
    for i in 0..count {
        let key = format!("big{i:02}");
        wait_for(&format!("{key} written"), || {
            let (mut client, value, key) = (client.clone(), &value, &key);
            async move {
                match client.put(key.as_bytes(), value).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.not_proposed() => Err(e.to_string()),
                    Err(e) => panic!("{key}: {e}"),
                }
            }
        })
        .await;
    }
}

/// Restarts the stopped node `away`, waits until it applied `index`, and
/// reads up to `limit` keys under `prefix` from it alone.
async fn rejoin(
    cluster: &mut Cluster,
    away: usize,
    index: u64,
    prefix: &[u8],
    limit: u32,
) -> (raftset::proto::StatusResponse, raftset::client::ScanPage) {
    cluster.restart(away);
    let caught_up = cluster.wait_for_applied(away, index).await;
    let page = cluster
        .client(away)
        .await
        .scan(prefix, b"", limit, Consistency::Serializable)
        .await
        .unwrap();
    (caught_up, page)
}

/// A follower that cannot even connect to the leader it knows sent
/// nothing: the write ends UNAVAILABLE (safe to retry), not "outcome
/// unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_never_reached_the_leader_is_unavailable_not_unknown() {
    // A long election timeout keeps the followers believing in the dead
    // leader for the whole write.
    let args = ["--heartbeat-ms", "100", "--election-timeout-ms", "5000"];
    let mut cluster = Cluster::start_with(3, &args).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut client = cluster
        .client(follower)
        .await
        .with_timeout(Duration::from_millis(1500));
    client.put(b"before", b"1").await.unwrap();
    let leader_id = cluster.status(leader).await.unwrap().id;
    cluster.kill(leader).await;
    // The follower's open connection to the leader may not have seen the
    // kill yet: a request written into it is one the follower cannot know
    // was not delivered ("maybe proposed", rightly). A read spends that
    // connection first, so the write below can only meet a refused connect.
    let _ = client.get(b"before").await;

    let failed = client.put(b"k", b"v").await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed}");
    let status = cluster.status(follower).await.unwrap();
    assert_eq!(
        status.leader_id,
        Some(leader_id),
        "the follower still followed the dead leader"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_and_reads_fail_fast_with_unavailable() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    for i in (0..3).filter(|i| *i != leader) {
        cluster.kill(i).await;
    }
    let client = cluster
        .client(leader)
        .await
        .with_timeout(Duration::from_secs(60));
    // A write proposed just before the leader noticed may end "unknown"
    // (DEADLINE_EXCEEDED); once it noticed, nothing is proposed.
    let error = wait_for("a write refused for lack of quorum", || {
        let mut client = client.clone();
        async move {
            match client.put(b"k", b"v").await {
                Err(e) if e.code() == Code::Unavailable => Ok(e),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(error.to_string().contains("quorum"), "{error}");
    let read = client.clone().get(b"k").await.unwrap_err();
    assert_eq!(read.code(), Code::Unavailable, "{read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_over_and_writes_continue() {
    let mut cluster = Cluster::start(3).await;
    let old = cluster.leader().await;
    let follower = (old + 1) % 3;
    let mut client = cluster.client(follower).await;
    client.put(b"before", b"1").await.unwrap();

    cluster.stop(old).await;
    assert!(
        cluster.log_of(old).contains("leadership handed over"),
        "the leader waited for a successor before exiting:\n{}",
        cluster.log_of(old)
    );
    let new = cluster.leader().await;
    assert_ne!(new, old);
    client.put(b"after", b"2").await.unwrap();
    assert_eq!(client.get(b"before").await.unwrap().unwrap().value, b"1");
}

/// A leader stopped while its followers forward it writes still hands
/// over. The hand-over used to stop only the heartbeats: every forwarded
/// write's AppendEntries renewed the followers' leases, so no follower
/// campaigned, and the leader gave up after six election timeouts and
/// exited into a failover. Then, with the request path's gate shut, a
/// write let through just before it could still enter the log after the
/// successor was found caught up: the successor campaigned a log short,
/// the other voters refused it, and nobody led for six election timeouts
/// (in 3 of 5 hand-overs of `bench/`, 8 writes in flight). Now the leader
/// waits for the writes it let through, and then for its successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_while_followers_forward_it_writes_hands_over() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let mut cluster = Cluster::start(3).await;
    let old = cluster.leader().await;
    let writing = Arc::new(AtomicBool::new(true));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for (i, w) in (0..3)
        .filter(|i| *i != old)
        .flat_map(|i| (0..8).map(move |w| (i, w)))
    {
        let mut client = cluster.client(i).await;
        let (writing, acknowledged) = (writing.clone(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while writing.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("w{i}-{w}-{n}");
                if client.put(key.as_bytes(), b"v").await.is_ok() {
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    wait_for("writes forwarded through both followers", || {
        let acknowledged = acknowledged.load(Ordering::Relaxed);
        async move {
            (acknowledged >= 50)
                .then_some(())
                .ok_or(format!("{acknowledged} so far"))
        }
    })
    .await;

    cluster.stop(old).await;
    let before = acknowledged.load(Ordering::Relaxed);
    wait_for("writes acknowledged under the new leader", || {
        let acknowledged = acknowledged.load(Ordering::Relaxed);
        async move {
            (acknowledged >= before + 20)
                .then_some(())
                .ok_or(format!("{acknowledged} so far"))
        }
    })
    .await;
    writing.store(false, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let log = cluster.log_of(old);
    assert!(
        log.contains("leadership handed over"),
        "the leader handed over under forwarded writes:\n{log}"
    );
}

/// Election holds are how a leadership transfer steers the next election,
/// and a window in which a dead leader is not replaced. Anyone who reached
/// the peer port could open one for ever: holds naming a huge duration,
/// then the leader dies, and no election came. Now only the current leader
/// may hold an election, and no hold outlasts six election timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_holds_cannot_keep_a_dead_leader_unreplaced() {
    use raftset::proto::cluster_peer_client::ClusterPeerClient;
    use raftset::proto::PeerMessage;

    let mut cluster = Cluster::start(3).await;
    let (leader, status) = cluster.wait_for_leader().await;
    let leader_id = status.id;
    let hold = |from: u64| PeerMessage {
        cluster_id: status.cluster_id.clone(),
        payload: postcard::to_allocvec(&(from, u64::MAX / 4)).unwrap().into(),
        target_id: 0,
    };
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &followers {
        let mut peer = ClusterPeerClient::connect(format!("http://{}", cluster.nodes[i].peer()))
            .await
            .unwrap();
        let refused = peer.hold_election(hold(12345)).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::FailedPrecondition,
            "a hold from a node that does not lead: {refused}"
        );
        // Claiming the leader's id still passes: who sent it is only known
        // once peers authenticate. The bound is what holds then.
        peer.hold_election(hold(leader_id)).await.unwrap();
    }
    cluster.kill(leader).await;
    let (_, new) = cluster
        .wait_for_leader_among(&followers, Some(leader_id), status.term + 1)
        .await;
    assert_ne!(new.id, leader_id);
}

/// Asking a voter to campaign now is the last step of a leader stepping
/// down. Only the leader may ask: from anyone else it would be a way to
/// depose a healthy leader at will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_may_ask_a_voter_to_campaign() {
    use raftset::proto::cluster_peer_client::ClusterPeerClient;
    use raftset::proto::PeerMessage;

    let cluster = Cluster::start(3).await;
    let (leader, status) = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut peer = ClusterPeerClient::connect(format!("http://{}", cluster.nodes[follower].peer()))
        .await
        .unwrap();
    let refused = peer
        .campaign(PeerMessage {
            cluster_id: status.cluster_id.clone(),
            payload: postcard::to_allocvec(&12345u64).unwrap().into(),
            target_id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "a campaign asked by a node that does not lead: {refused}"
    );
    let (_, after) = cluster.wait_for_leader().await;
    assert_eq!(
        (after.id, after.term),
        (status.id, status.term),
        "the leader stayed"
    );
}
