//! A crash at any point of an append, an apply, a snapshot build, a
//! snapshot install, a defrag or a forced re-founding leaves a node that starts and
//! catches up (or completes the re-founding); so does a failing disk, which
//! stops the node. Each test
//! starts one node with a crash point armed (the test binary is built with
//! the `failpoints` feature), lets it die there, restarts it plainly and
//! checks that it serves every write the cluster acknowledged.

use raftset::Consistency;

use crate::support::{wait_for, Cluster, Harness};

/// Writes `count` keys `{prefix}NNN` through node `via`.
async fn write_keys(cluster: &Cluster, via: usize, prefix: &str, count: usize) {
    let mut client = cluster.client(via).await;
    for i in 0..count {
        client
            .put(format!("{prefix}{i:03}").as_bytes(), b"acknowledged")
            .await
            .unwrap();
    }
}

/// Waits until node `i`, armed with `point`, killed itself there.
async fn dies_at(cluster: &mut Cluster, i: usize, point: &str) {
    let code = cluster.wait_exit(i).await;
    assert_eq!(
        code,
        None,
        "{} must die by SIGKILL at {point}",
        cluster.name(i)
    );
    let log = cluster.log_of(i);
    assert!(
        log.contains(&format!("failpoint {point}")),
        "{} did not reach {point}:\n{log}",
        cluster.name(i)
    );
}

/// Restarts node `i` without crash points, writes once more through the
/// leader, and checks that `i` catches up and serves every key it missed.
async fn restarts_and_catches_up(cluster: &mut Cluster, i: usize, prefix: &str, count: usize) {
    cluster.restart(i);
    let leader = cluster.leader().await;
    write_keys(cluster, leader, "after-restart-", 1).await;
    let index = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_for_applied(i, index).await;
    serves_keys(cluster, i, prefix, count).await;
}

/// Node `i` serves `count` keys under `prefix` from its own state.
async fn serves_keys(cluster: &Cluster, i: usize, prefix: &str, count: usize) {
    let page = cluster
        .client(i)
        .await
        .scan(prefix.as_bytes(), b"", 1000, Consistency::Serializable)
        .await
        .unwrap();
    assert_eq!(
        page.kvs.len(),
        count,
        "{} serves every acknowledged write",
        cluster.name(i)
    );
}

/// A follower that was away while the leader snapshotted and purged its
/// log catches up by installing the leader's snapshot; it dies at `point`
/// of that install.
async fn crash_while_installing_a_snapshot(point: &str) {
    let mut cluster = Cluster::start_with(3, &["--snapshot-entries", "20"]).await;
    let leader = cluster.leader().await;
    let away = (leader + 1) % 3;
    let applied_before = cluster.status(away).await.unwrap().applied_index;
    cluster.stop(away).await;
    write_keys(&cluster, leader, "k", 100).await;
    wait_for("the leader to purge its log past the stopped node", || {
        let cluster = &cluster;
        async move {
            let purged = cluster.status(leader).await?.purged_index;
            if purged > applied_before {
                Ok(())
            } else {
                Err(format!(
                    "purged {purged}, the stopped node applied {applied_before}"
                ))
            }
        }
    })
    .await;

    cluster.restart_armed(away, &format!("{point}=return"));
    dies_at(&mut cluster, away, point).await;
    restarts_and_catches_up(&mut cluster, away, "k", 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_received_snapshot_is_filled_in_leaves_a_node_that_restarts() {
    crash_while_installing_a_snapshot("snapshot-install-filled").await;
}

/// A follower that dies at `point` while the cluster takes writes. Node 0
/// is restarted armed; the writes go through node 1, which stays up with
/// node 2 as the quorum.
async fn crash_while_writing(point: &str) {
    let mut cluster = Cluster::start_with(3, &["--snapshot-entries", "20"]).await;
    let armed = 0;
    cluster.stop(armed).await;
    cluster.restart_armed(armed, &format!("{point}=return"));
    write_keys(&cluster, 1, "w", 100).await;
    // The snapshot policy may not have started one yet; asking makes sure
    // (unless the node already died at its point).
    if let Ok(mut client) = raftset::Client::connect(&cluster.api(armed)).await {
        let _ = client.snapshot().await;
    }
    dies_at(&mut cluster, armed, point).await;
    restarts_and_catches_up(&mut cluster, armed, "w", 100).await;
}

/// A follower whose log append fails, as on a failing disk, stops with the
/// error in its log and exit code 1 (the kubelet restarts it), rather
/// than answer clients while its Raft no longer runs; the other two go on,
/// and on a sound disk it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_error_stops_the_node_which_restarts_and_catches_up() {
    let mut cluster = Cluster::start_with(3, &[]).await;
    let armed = 0;
    cluster.stop(armed).await;
    cluster.restart_armed(armed, "log-append-io-error=return");
    write_keys(&cluster, 1, "w", 20).await;
    let code = cluster.wait_exit(armed).await;
    let log = cluster.log_of(armed);
    assert_eq!(
        code,
        Some(1),
        "{} must stop with an error:\n{log}",
        cluster.name(armed)
    );
    assert!(
        log.contains("failpoint log-append-io-error") && log.contains("raft stopped"),
        "{} must say that Raft stopped on the failed append:\n{log}",
        cluster.name(armed)
    );
    restarts_and_catches_up(&mut cluster, armed, "w", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_appending_and_flushing_leaves_a_node_that_restarts() {
    crash_while_writing("log-append-before-flush").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_applying_an_entry_leaves_a_node_that_restarts() {
    crash_while_writing("apply-mid-entry").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_building_a_snapshot_leaves_a_node_that_restarts() {
    crash_while_writing("snapshot-build-before-publish").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_received_snapshot_file_is_kept_leaves_a_node_that_restarts() {
    crash_while_installing_a_snapshot("snapshot-install-copied").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_switching_to_a_received_snapshot_leaves_a_node_that_restarts() {
    crash_while_installing_a_snapshot("snapshot-install-switched").await;
}

/// Restored data reaches joiners only through the snapshot the founder
/// seals it into; a founder killed between founding and sealing seals on
/// its next start, before anyone joins, so every member holds the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founder_killed_before_sealing_restored_data_seals_it_on_restart() {
    let point = "restore-founded-before-seal";
    let old = Cluster::start(1).await;
    write_keys(&old, 0, "r", 30).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    crate::support::backup_into(&mut old.client(0).await, &file).await;
    drop(old);

    let mut new = Cluster::unstarted(3, &[]);
    let out = crate::support::restore_from(&file, &new.nodes[0].data_dir);
    assert!(out.status.success(), "{out:?}");
    // Pod 0 founds only once every peer answered, empty.
    new.restart_armed(0, &format!("{point}=return"));
    new.restart(1);
    new.restart(2);
    dies_at(&mut new, 0, point).await;
    new.restart(0);
    new.wait_for_voters(3).await;
    // The leader counts a joiner a voter a moment before the joiner has
    // its answer and serves: ask the members themselves.
    for i in 0..3 {
        new.wait_ready(i).await;
    }
    let report = new.client(2).await.verify().await.unwrap();
    assert!(
        report.agree,
        "every member holds the restored data: {report:?}"
    );
    for i in 0..3 {
        serves_keys(&new, i, "r", 30).await;
    }
}

/// The survivor of a lost majority, forced into a new cluster, dies at
/// `point` of completing the re-founding (in the start that follows the
/// command). Started again plainly, it completes it: it leads the cluster
/// the command named, alone, and serves every acknowledged write.
async fn crash_while_refounding(point: &str) {
    let mut cluster = Cluster::start(3).await;
    let survivor = 0;
    write_keys(&cluster, survivor, "f", 30).await;
    let leader = cluster.leader().await;
    let last = cluster.status(leader).await.unwrap().last_log_index;
    cluster.wait_for_applied(survivor, last).await;
    for i in [1, 2] {
        cluster.stop(i).await;
    }
    cluster.stop(survivor).await;
    cluster.restart_armed(survivor, &format!("{point}=return"));
    let forced = cluster.force_new_cluster(survivor).await;
    dies_at(&mut cluster, survivor, point).await;

    cluster.restart(survivor);
    let status = wait_for("the survivor to lead the new cluster", || async {
        let status = cluster.status(survivor).await?;
        if status.cluster_id == forced.cluster_id && status.leader_id == Some(forced.id) {
            Ok(status)
        } else {
            Err(format!(
                "cluster {:?}, leader {:?}",
                status.cluster_id, status.leader_id
            ))
        }
    })
    .await;
    assert_eq!(status.members.len(), 1);
    serves_keys(&cluster, survivor, "f", 30).await;
    write_keys(&cluster, survivor, "after-", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_a_refounding_is_flushed_leaves_a_node_that_completes_it() {
    crash_while_refounding("refound-before-cluster-id").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_a_refounding_mark_is_removed_leaves_a_node_that_completes_it() {
    crash_while_refounding("refound-before-marker-removed").await;
}

/// A node that dies at `point` of defragmenting its state database while
/// the cluster takes writes through another member. With no snapshot yet
/// and `--defrag-min-mb 1`, values of 16 KiB take its state database past
/// the bound within the first writes; writing goes on until it died.
async fn crash_while_defragmenting(point: &str) {
    let mut cluster = Cluster::start_with(3, &["--defrag-min-mb", "1"]).await;
    let armed = 0;
    cluster.stop(armed).await;
    cluster.restart_armed(armed, &format!("{point}=return"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut client = cluster.client(1).await;
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut written = 0;
            while written < 900 && !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let value = vec![b'v'; 16 * 1024];
                let key = format!("x{written:03}");
                client.put(key.as_bytes(), &value).await.unwrap();
                written += 1;
            }
            written
        }
    });
    dies_at(&mut cluster, armed, point).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let count = writer.await.unwrap();
    restarts_and_catches_up(&mut cluster, armed, "x", count).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_switching_to_a_defragmented_database_leaves_a_node_that_restarts() {
    crash_while_defragmenting("defrag-before-switch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_switching_to_a_defragmented_database_leaves_a_node_that_restarts() {
    crash_while_defragmenting("defrag-switched").await;
}
