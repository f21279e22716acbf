//! Crash safety and bad conditions on one node, in containers: `kill -9` of
//! every pod under heavy write load, a volume that fills up, a data file
//! that is damaged. A node in trouble must stop with a clear error in its
//! log while the others go on serving, and the README's recovery steps
//! ("A node that will not start") must bring it back with every
//! acknowledged write.

use std::time::Duration;

use super::workload::{nothing_lost, Writers, Written};
use super::{deploy, verify_everywhere};
use crate::support::manifest::Manifest;
use crate::support::statefulset::{exclusive, ContainerState, StatefulSet};
use crate::support::Harness;

/// Waits until pod `i`'s container has stopped by itself, and checks that
/// it failed with every one of `clues` in its log.
async fn failed_saying(set: &StatefulSet, i: usize, clues: &[&str]) -> ContainerState {
    let state = set.wait_exited(i).await;
    let name = set.pod_name(i);
    assert_ne!(state.exit_code, 0, "{name} exits as a failure: {state:?}");
    let log = set.logs(i, 200).await;
    let missing: Vec<&&str> = clues.iter().filter(|c| !log.contains(*c)).collect();
    assert!(
        missing.is_empty(),
        "{name}'s log does not say {missing:?}:\n{log}"
    );
    state
}

/// The two pods other than `i` still serve: a write and a linearizable
/// read through each of them.
async fn the_others_serve(set: &StatefulSet, i: usize) {
    for other in set.ordinals().into_iter().filter(|&o| o != i) {
        let mut client = set.connect(other, Duration::from_secs(10)).await.unwrap();
        let key = format!("still-serving/{}", set.pod_name(other));
        client
            .put(key.as_bytes(), b"yes")
            .await
            .unwrap_or_else(|e| panic!("{} refused a write: {e}", set.pod_name(other)));
        let read = client.get(key.as_bytes()).await.expect("read back");
        assert_eq!(read.map(|kv| kv.value), Some(b"yes".to_vec()));
    }
}

/// With pod `i` down, the others serve; then the README's recovery steps
/// (`kubectl delete pvc` + `kubectl delete pod`) bring it back on an empty
/// volume, under a new node id, with the data: all members agree and no
/// acknowledged write under `prefix` is lost. Returns the keys present.
async fn brought_back(set: &mut StatefulSet, i: usize, prefix: &str, written: &Written) -> usize {
    the_others_serve(set, i).await;
    set.delete_pvc(i).await;
    set.wait_ready(i).await;
    set.wait_for_voters(3).await;
    verify_everywhere(set).await;
    nothing_lost(set, prefix, written).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_every_pod_under_heavy_load_loses_no_acknowledged_write() {
    let _turn = exclusive().await;
    let mut set = deploy("kill9", Manifest::base()).await;
    let writers = Writers::start(&set, "load/", 32, 256);
    writers.until_acknowledged(1000).await;

    // Every pod at once, mid-write.
    let ordinals = set.ordinals();
    for &i in &ordinals {
        set.kill(i).await;
    }
    for &i in &ordinals {
        let state = set.state(i).await;
        assert_eq!(
            (state.running, state.exit_code),
            (false, 137),
            "{} was not killed by SIGKILL",
            set.pod_name(i)
        );
    }
    let written = writers.stop().await;

    for &i in &ordinals {
        set.restart(i).await;
    }
    set.wait_all_ready().await;
    set.wait_for_voters(3).await;
    let present = nothing_lost(&set, "load/", &written).await;
    verify_everywhere(&set).await;
    println!(
        "kill -9 of every pod: {} writes acknowledged, {} failed, {} unknown; {present} keys present after restart",
        written.acknowledged.len(),
        written.failed.len(),
        written.unknown
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_volume_stops_its_pod_with_a_clear_error_and_the_others_serve() {
    let _turn = exclusive().await;
    let mut set = StatefulSet::new("diskfull").await;
    set.provision_small_claim(2, 24 * 1024 * 1024).await;
    set.create().await;
    set.wait_for_voters(3).await;

    // 256 KiB values until pod 2's 24 MiB are gone.
    let writers = Writers::start(&set, "big/", 4, 256 * 1024);
    let state = failed_saying(&set, 2, &["No space left on device", "bytes free"]).await;
    let written = writers.stop().await;
    let present = brought_back(&mut set, 2, "big/", &written).await;
    println!(
        "full volume: pod 2 exited {} after {} writes were acknowledged; recovered with {present} keys",
        state.exit_code,
        written.acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_file_stops_its_pod_with_a_clear_error_and_the_others_serve() {
    let _turn = exclusive().await;
    let mut set = deploy("damaged", Manifest::base()).await;
    // A few MiB, so that the middle of the file holds data.
    let writers = Writers::start(&set, "data/", 8, 1024);
    writers.until_acknowledged(4000).await;
    let written = writers.stop().await;

    // Damage pod 1's state database file while it is down: 64 bytes at each
    // 512th of it, so that some land where sled's recovery reads. Much of
    // the file may be segments sled has freed or pages it reads only when
    // asked for, and damage there goes unnoticed: seven places were once
    // not enough, and 63 once missed under the whole suite's load.
    set.kill(1).await;
    let claim = set.claim_path(1).await;
    let state = std::fs::read_dir(&claim)
        .unwrap_or_else(|e| panic!("cannot list {} on this host: {e}", claim.display()))
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("state-"))
        })
        .unwrap_or_else(|| panic!("no state database in {}", claim.display()));
    let file = state.join("db");
    let mut bytes = std::fs::read(&file)
        .unwrap_or_else(|e| panic!("cannot read {} on this host: {e}", file.display()));
    for part in 1..512 {
        let at = bytes.len() * part / 512;
        bytes[at..at + 64].fill(0x5A);
    }
    std::fs::write(&file, &bytes).expect("write the damage");

    set.restart(1).await;
    let state = failed_saying(&set, 1, &["is corrupted", "A node that will not start"]).await;
    let present = brought_back(&mut set, 1, "data/", &written).await;
    println!(
        "damaged data file: pod 1 exited {}; recovered with {present} keys",
        state.exit_code
    );
}
