//! The StatefulSet life cycle with processes standing in for pods and data
//! directories for their volumes: ordered and parallel first deploys,
//! restarts, lost volumes, scaling up, and the founding record in the
//! (fake) Kubernetes API after a full stop.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::kube::{FakeKubeApi, SET_UID};
use crate::support::process::TestNode;
use crate::support::{http, wait_for, Cluster, Harness};

/// The founding record of StatefulSet `raftset`.
const RECORD: &str = "raftset-cluster";

/// Waits until every running node reports the same cluster id, `voters`
/// voters, and returns (cluster id, member id of each node by index).
async fn one_cluster(cluster: &Cluster, voters: usize) -> (String, Vec<u64>) {
    wait_for(&format!("one cluster of {voters} voters"), || async {
        let mut ids = Vec::new();
        let mut clusters = BTreeSet::new();
        for (i, node) in cluster.nodes.iter().enumerate() {
            if !node.is_running() {
                continue;
            }
            let status = cluster.status(i).await?;
            let count = status.members.iter().filter(|m| m.voter).count();
            if count != voters || status.leader_id.is_none() {
                return Err(format!("{} sees {count} voters", node.name));
            }
            clusters.insert(status.cluster_id.clone());
            ids.push(status.id);
        }
        if clusters.len() == 1 {
            Ok((clusters.into_iter().next().unwrap(), ids))
        } else {
            Err(format!("several clusters: {clusters:?}"))
        }
    })
    .await
}

fn foundings(cluster: &Cluster, i: usize) -> usize {
    cluster.log_of(i).matches("founded a new cluster").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_first_deploy_pod_0_founds_and_the_others_join_in_turn() {
    let cluster = Cluster::ordered(3, &[]).await;
    one_cluster(&cluster, 3).await;
    assert_eq!(foundings(&cluster, 0), 1);
    assert_eq!(
        foundings(&cluster, 1) + foundings(&cluster, 2),
        0,
        "only pod 0 founds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_first_deploy_forms_exactly_one_cluster() {
    let cluster = Cluster::spawn(3, &[]).await;
    one_cluster(&cluster, 3).await;
    let founders: usize = (0..3).map(|i| foundings(&cluster, i)).sum();
    assert_eq!(founders, 1);
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_pod_keeps_its_identity_and_never_founds_again() {
    let mut cluster = Cluster::start(3).await;
    let (cluster_id, ids) = one_cluster(&cluster, 3).await;
    for i in [0, 2] {
        cluster.stop(i).await;
        cluster
            .client(1)
            .await
            .put(format!("while-{i}-was-away").as_bytes(), b"v")
            .await
            .unwrap();
        cluster.restart(i);
        cluster.wait_ready(i).await;
    }
    let (again, ids_after) = one_cluster(&cluster, 3).await;
    assert_eq!(again, cluster_id);
    assert_eq!(
        ids_after, ids,
        "node ids belong to the volumes, which were kept"
    );
    assert_eq!(
        foundings(&cluster, 0),
        1,
        "pod 0 founded once, at first deploy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_lost_its_volume_rejoins_under_a_new_id_and_replaces_its_old_self() {
    for lost in [1, 0] {
        let mut cluster = Cluster::start(3).await;
        let (cluster_id, ids) = one_cluster(&cluster, 3).await;
        let survivor = (lost + 1) % 3;
        let mut client = cluster.client(survivor).await;
        client.put(b"before", b"1").await.unwrap();

        cluster.kill(lost).await;
        cluster.delete_volume(lost);
        // Pod `lost` may have led: the write waits for the others to elect,
        // as a client retries "not proposed" (an election can outlast the
        // request's own wait on a loaded machine).
        let others: Vec<usize> = (0..3).filter(|&i| i != lost).collect();
        cluster
            .wait_for_leader_among(&others, Some(ids[lost]), 0)
            .await;
        client.put(b"while-away", b"2").await.unwrap();
        cluster.restart(lost);
        cluster.wait_ready(lost).await;

        let (after, ids_after) = one_cluster(&cluster, 3).await;
        assert_eq!(after, cluster_id, "pod {lost} joined the existing cluster");
        assert_ne!(ids_after[lost], ids[lost], "an empty volume gets a new id");
        let status = cluster.status(survivor).await.unwrap();
        assert!(
            status.members.iter().all(|m| m.id != ids[lost]),
            "the old id of pod {lost} is gone"
        );
        assert_eq!(
            foundings(&cluster, lost),
            usize::from(lost == 0),
            "no second founding"
        );
        let mut client = cluster.client(lost).await;
        assert_eq!(
            client.get(b"while-away").await.unwrap().unwrap().value,
            b"2"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_up_adds_voters_that_join_by_themselves() {
    let mut cluster = Cluster::ordered(3, &[]).await;
    cluster.client(0).await.put(b"k", b"v").await.unwrap();
    cluster.scale_up().await;
    cluster.scale_up().await;
    one_cluster(&cluster, 5).await;
    let mut client = cluster.client(4).await;
    assert_eq!(client.get(b"k").await.unwrap().unwrap().value, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_3_to_5_to_3_follows_the_statefulset_and_retained_volumes_rejoin_fresh() {
    let api = FakeKubeApi::start(3).await;
    let args = [
        "--follow-replicas",
        "--kube-api",
        &api.url,
        "--reconcile-secs",
        "1",
    ];
    let mut cluster = Cluster::ordered(3, &args).await;
    api.set_replicas(5);
    cluster.scale_up().await;
    cluster.scale_up().await;
    let (_, five) = one_cluster(&cluster, 5).await;

    // kubectl scale --replicas=3: the count drops, then pods 4 and 3 go.
    api.set_replicas(3);
    cluster.stop(4).await;
    cluster.stop(3).await;
    one_cluster(&cluster, 3).await;
    let status = cluster.status(0).await.unwrap();
    let names: BTreeSet<_> = status.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["raftset-0", "raftset-1", "raftset-2"])
    );
    cluster
        .client(2)
        .await
        .put(b"after-scale-down", b"v")
        .await
        .unwrap();

    // Scale up again with the volumes retained: pods 3 and 4 hold the state
    // of members that were removed. Each notices, discards it, stops, and
    // (restarted as a container would be) joins under a new id.
    api.set_replicas(5);
    for i in [3, 4] {
        cluster.restart(i);
        assert_eq!(
            cluster.wait_exit(i).await,
            Some(1),
            "{} stops instead of serving stale state",
            cluster.nodes[i].name
        );
        assert!(
            cluster.log_of(i).contains("removed from cluster"),
            "{}",
            cluster.log_of(i)
        );
        cluster.restart(i);
        cluster.wait_ready(i).await;
    }
    let (_, again) = one_cluster(&cluster, 5).await;
    assert_ne!(again[3], five[3]);
    assert_ne!(again[4], five[4]);
    let mut client = cluster.client(4).await;
    assert_eq!(
        client
            .get(b"after-scale-down")
            .await
            .unwrap()
            .unwrap()
            .value,
        b"v"
    );
}

/// kubectl scale 3 -> 1: the controller stops pods 2 and 1 within a second
/// or two, long before the leader looks at spec.replicas again (every 10 s
/// by default), and pod 0 alone has no quorum to remove them with. Each
/// pod's preStop hook takes it out of the cluster while it still runs; a
/// leader among them hands leadership to pod 0 first.
/// Without the hooks (stop only) pod 0 is left with three voters, two of
/// them gone, and no write ever succeeds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_scale_down_from_3_to_1_leaves_a_serving_cluster() {
    let api = FakeKubeApi::start(3).await;
    let args = ["--follow-replicas", "--kube-api", &api.url];
    let mut cluster = Cluster::ordered(3, &args).await;
    let mut client = cluster.client(1).await;
    for i in 0..20u32 {
        client.put(format!("k{i}").as_bytes(), b"v").await.unwrap();
    }
    cluster.make_leader(2).await;

    api.set_replicas(1);
    let said = cluster.terminate(2).await;
    assert!(said.contains("left the cluster"), "{said}");
    let said = cluster.terminate(1).await;
    assert!(said.contains("left the cluster"), "{said}");

    let (_, ids) = one_cluster(&cluster, 1).await;
    let status = cluster.status(0).await.unwrap();
    assert_eq!(status.members.len(), 1, "{:?}", status.members);
    assert_eq!(status.leader_id, Some(ids[0]));
    let mut client = cluster.client(0).await;
    client.put(b"after", b"scale-down").await.unwrap();
    for i in 0..20u32 {
        let key = format!("k{i}");
        assert!(client.get(key.as_bytes()).await.unwrap().is_some(), "{key}");
    }

    // A stop that is no scale-down leaves nobody: pod 0's own hook on a
    // restart returns at once and it stays the one voter.
    let said = cluster.terminate(0).await;
    assert!(said.contains("staying a member"), "{said}");
    cluster.restart(0);
    one_cluster(&cluster, 1).await;
}

/// On an idle cluster a dead follower keeps the matched index it had, so by
/// its lag it looks caught up. Removing raftset-2 while raftset-1 is dead
/// would leave {0, 1}, whose majority is gone with raftset-1: the change
/// never commits and the cluster stops taking writes. Health comes from
/// the last answer the leader had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_never_counts_a_dead_follower_as_healthy() {
    let mut cluster = Cluster::start(3).await;
    let mut client = cluster.client(0).await;
    client.put(b"k", b"v").await.unwrap();
    cluster.make_leader(0).await;
    cluster.kill(1).await;
    let dead = cluster.status(0).await.unwrap().members[..]
        .iter()
        .find(|m| m.name == "raftset-1")
        .map(|m| m.id)
        .unwrap();
    wait_for("the leader to see raftset-1 as unhealthy", || async {
        let members = cluster
            .client(0)
            .await
            .members()
            .await
            .map_err(|e| e.to_string())?;
        match members
            .members
            .iter()
            .find(|m| m.member.as_ref().unwrap().id == dead)
        {
            Some(m) if !m.healthy => Ok(()),
            Some(m) => Err(format!("healthy, last contact {:?} ms", m.last_contact_ms)),
            None => Err("not listed".into()),
        }
    })
    .await;

    let mut client = cluster.client(0).await;
    let members = client.scale_down(2).await.expect("scale-down answers");
    let voters: Vec<&str> = members
        .members
        .iter()
        .filter_map(|m| m.member.as_ref())
        .filter(|m| m.voter)
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(
        voters.len(),
        3,
        "nobody removed while a voter is dead: {voters:?}"
    );
    client.put(b"k", b"still writable").await.unwrap();

    // Once raftset-1 is back, the scale-down goes ahead.
    cluster.restart(1);
    cluster.wait_ready(1).await;
    wait_for("raftset-2 removed", || async {
        let members = cluster
            .client(0)
            .await
            .scale_down(2)
            .await
            .map_err(|e| e.to_string())?;
        match members.members.len() {
            2 => Ok(()),
            n => Err(format!("{n} members")),
        }
    })
    .await;
    cluster.client(1).await.put(b"k", b"after").await.unwrap();
}

/// Waits until node `i` passes the StatefulSet's readiness probe
/// (`/readyz?noleader`), the one OrderedReady waits on before it creates
/// the next pod.
async fn wait_ordering_ready(cluster: &Cluster, i: usize) {
    let addr = cluster.nodes[i].http();
    wait_for(
        &format!("{} to pass /readyz?noleader", cluster.nodes[i].name),
        || {
            let addr = addr.clone();
            async move {
                let reply =
                    http::fetch(&addr, "/readyz?noleader", "*/*", Duration::from_secs(5)).await?;
                if reply.status == 200 {
                    Ok(())
                } else {
                    Err(reply.body)
                }
            }
        },
    )
    .await;
}

/// Writes `n` keys through every node in turn; returns what was acknowledged.
async fn acknowledged_writes(cluster: &Cluster, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut acked = Vec::new();
    for k in 0..n {
        let (key, value) = (
            format!("key-{k}").into_bytes(),
            format!("value-{k}").into_bytes(),
        );
        let mut client = cluster.client(k % cluster.nodes.len()).await;
        client.put(&key, &value).await.expect("write acknowledged");
        acked.push((key, value));
    }
    acked
}

/// Every acknowledged write is there, read through node `i`, and every
/// member's state digest agrees.
async fn every_write_present(cluster: &Cluster, i: usize, acked: &[(Vec<u8>, Vec<u8>)]) {
    let mut client = cluster.client(i).await;
    for (key, value) in acked {
        let kv =
            client.get(key).await.expect("read").unwrap_or_else(|| {
                panic!("acknowledged write {} lost", String::from_utf8_lossy(key))
            });
        assert_eq!(&kv.value, value);
    }
    let verify = client.verify().await.expect("verify");
    assert!(verify.agree, "members disagree: {verify:?}");
}

/// The set formed one new cluster (not `before`), every pod is ready, and
/// the founding record names the new cluster, confirmed.
async fn refounded(cluster: &Cluster, api: &FakeKubeApi, before: &str) {
    let (cluster_id, _) = one_cluster(cluster, 3).await;
    assert_ne!(cluster_id, before, "a fresh founding");
    assert_eq!(record_field(api, "clusterId"), cluster_id);
    assert_eq!(record_field(api, "state"), "confirmed");
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
}

/// A data field of the founding record.
fn record_field(api: &FakeKubeApi, field: &str) -> String {
    let record = api.configmap(RECORD).expect("the founding record exists");
    record["data"][field]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Writes to a serving cluster of three, then stops every node (highest
/// ordinal first, as `kubectl scale --replicas=0` does) and deletes pod 0's
/// volume. Returns the cluster id and the acknowledged writes.
async fn full_stop_losing_pod_0(cluster: &mut Cluster) -> (String, Vec<(Vec<u8>, Vec<u8>)>) {
    let (cluster_id, _) = one_cluster(cluster, 3).await;
    let acked = acknowledged_writes(cluster, 12).await;
    for i in (0..cluster.nodes.len()).rev() {
        cluster.stop(i).await;
    }
    cluster.delete_volume(0);
    (cluster_id, acked)
}

/// The set is back as the one cluster `cluster_id`, founded once, holding
/// every acknowledged write.
async fn back_as_one(cluster: &Cluster, cluster_id: &str, acked: &[(Vec<u8>, Vec<u8>)]) {
    let (after, _) = one_cluster(cluster, 3).await;
    assert_eq!(after, cluster_id, "one cluster, the one that was founded");
    assert_eq!(
        foundings(cluster, 0),
        1,
        "pod 0 founded once, at first deploy"
    );
    cluster.wait_ready(0).await;
    every_write_present(cluster, 0, acked).await;
}

/// Node `i` refuses a write at once as unavailable: it serves nothing yet.
async fn refuses_writes(cluster: &Cluster, i: usize) {
    let mut client = cluster
        .client(i)
        .await
        .with_timeout(Duration::from_secs(10));
    let refused = client.put(b"too-early", b"x").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_stop_then_pod_0_on_an_empty_volume_rejoins_under_ordered_ready() {
    let api = FakeKubeApi::start(3).await;
    let mut cluster = Cluster::ordered(3, &["--kube-api", &api.url]).await;
    let (cluster_id, acked) = full_stop_losing_pod_0(&mut cluster).await;

    // OrderedReady: pod n+1 is created only once pod n passes the probe.
    // Pod 0 cannot join anyone yet; the record says a cluster exists, so it
    // waits, passes the ordering probe, and pods 1 and 2 come back.
    cluster.restart(0);
    wait_ordering_ready(&cluster, 0).await;
    refuses_writes(&cluster, 0).await;
    for i in [1, 2] {
        cluster.restart(i);
        wait_ordering_ready(&cluster, i).await;
    }
    back_as_one(&cluster, &cluster_id, &acked).await;
    assert_eq!(record_field(&api, "clusterId"), cluster_id);
}

/// After a full stop that lost pod 0's volume, pods 1 and 2 restart still
/// following the old pod 0, and forward writes to its address, where the
/// new pod 0 has joined nothing yet and refuses them. A compare-and-swap
/// sent meanwhile must never be answered as lost (FAILED_PRECONDITION): the
/// refusal says nothing about the data. Each attempt creates a key of its
/// own, so no answer but success or "try again" is ever right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_the_node_that_replaced_the_leader_is_no_answer_to_a_write() {
    let api = FakeKubeApi::start(3).await;
    // A long election timeout keeps the restarted pods on the old leader.
    let args = [
        "--kube-api",
        &api.url,
        "--heartbeat-ms",
        "100",
        "--election-timeout-ms",
        "5000",
    ];
    let mut cluster = Cluster::ordered(3, &args).await;
    full_stop_losing_pod_0(&mut cluster).await;
    cluster.restart(0);
    wait_ordering_ready(&cluster, 0).await;
    for i in [1, 2] {
        cluster.restart(i);
    }
    let mut client = cluster.client(1).await.with_timeout(Duration::from_secs(2));
    let started = std::time::Instant::now();
    for attempt in 0.. {
        let key = format!("cas/{attempt}");
        match client
            .compare_and_swap(key.as_bytes(), None, Some(b"created"))
            .await
        {
            Ok(_) => break,
            Err(e) => assert_ne!(
                e.code(),
                tonic::Code::FailedPrecondition,
                "attempt {attempt}, {:?} after the restart: a compare-and-swap on a new key \
                 was answered as lost: {e}",
                started.elapsed()
            ),
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no write went through"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_stop_then_pod_0_on_an_empty_volume_never_founds_a_second_cluster_in_parallel() {
    let api = FakeKubeApi::start(3).await;
    let mut cluster = Cluster::spawn(3, &["--kube-api", &api.url]).await;
    let (cluster_id, acked) = full_stop_losing_pod_0(&mut cluster).await;

    // Parallel: all three pods are created at once, but pods 1 and 2 are
    // still Pending when pod 0 starts, so their names do not resolve: pod 0
    // sees no peer at all. A node's --peers lists the nodes the harness
    // holds when it starts, so 1 and 2 are set aside meanwhile.
    let pending: Vec<TestNode> = cluster.nodes.drain(1..).collect();
    cluster.restart(0);
    wait_ordering_ready(&cluster, 0).await;
    refuses_writes(&cluster, 0).await;
    cluster.nodes.extend(pending);
    cluster.restart(1);
    cluster.restart(2);
    one_cluster_among(&cluster, &[1, 2], &cluster_id).await;
    assert_eq!(
        foundings(&cluster, 0),
        1,
        "pod 0 founded once, at first deploy"
    );

    // A pod looks its peers up again every round; --peers is read once, so
    // pod 0 is restarted (it holds no state) to see the names that resolve now.
    cluster.stop(0).await;
    cluster.restart(0);
    back_as_one(&cluster, &cluster_id, &acked).await;
}

/// Waits until nodes `among` are members of `cluster_id` with a leader.
async fn one_cluster_among(cluster: &Cluster, among: &[usize], cluster_id: &str) {
    wait_for(
        &format!("{among:?} serving cluster {cluster_id}"),
        || async {
            for &i in among {
                let status = cluster.status(i).await?;
                if status.cluster_id != cluster_id || status.leader_id.is_none() {
                    return Err(format!(
                        "{} is in cluster {:?}, leader {:?}",
                        cluster.nodes[i].name, status.cluster_id, status.leader_id
                    ));
                }
            }
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_0_that_died_between_recording_and_confirming_its_founding_is_not_stuck() {
    let api = FakeKubeApi::start(3).await;
    // The API server takes the record's creation, then fails every update:
    // pod 0 founds but cannot confirm.
    api.refuse_updates(true);
    let mut cluster = Cluster::spawn(3, &["--kube-api", &api.url]).await;
    wait_for("pod 0 to record its founding", || async {
        api.configmap(RECORD)
            .map(|_| ())
            .ok_or_else(|| "no record yet".to_string())
    })
    .await;
    wait_for("pod 0 to found", || async {
        let status = cluster.status(0).await?;
        match status.leader_id {
            Some(leader) if leader == status.id => Ok(()),
            _ => Err(format!("leader {:?}", status.leader_id)),
        }
    })
    .await;
    assert_eq!(record_field(&api, "state"), "unconfirmed");
    assert_eq!(record_field(&api, "founder"), "raftset-0");
    let first = record_field(&api, "clusterId");
    let owner = &api.configmap(RECORD).unwrap()["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "StatefulSet");
    assert_eq!(owner["name"], "raftset");
    assert_eq!(owner["uid"], SET_UID);

    // Unconfirmed, it is not ready, acknowledges no write, admits nobody.
    let reply = http::get(&cluster.nodes[0].http(), "/readyz?noleader", "*/*").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    refuses_writes(&cluster, 0).await;
    cluster.wait_for_log(1, 0, "not on record yet").await;
    let status = cluster.status(0).await.unwrap();
    assert_eq!(
        status.members.len(),
        1,
        "nobody joined an unconfirmed founder"
    );

    // It dies with its volume; the API recovers. Pod 0 takes the record over.
    cluster.kill(0).await;
    cluster.delete_volume(0);
    api.refuse_updates(false);
    cluster.restart(0);
    refounded(&cluster, &api, &first).await;
    cluster.client(1).await.put(b"k", b"v").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founder_that_stopped_before_confirming_confirms_on_restart_before_serving() {
    let api = FakeKubeApi::start(1).await;
    api.refuse_updates(true);
    let mut cluster = Cluster::spawn(1, &["--kube-api", &api.url]).await;
    cluster.wait_for_log(0, 0, "founded a new cluster").await;
    let founded = record_field(&api, "clusterId");

    // Back on its data while the API still refuses: it serves nothing.
    cluster.kill(0).await;
    let before_restart = cluster.log_of(0).len();
    cluster.restart(0);
    cluster
        .wait_for_log(0, before_restart, "cannot settle the founding record yet")
        .await;
    let reply = http::get(&cluster.nodes[0].http(), "/readyz?noleader", "*/*").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    refuses_writes(&cluster, 0).await;

    api.refuse_updates(false);
    cluster.wait_ready(0).await;
    assert_eq!(record_field(&api, "state"), "confirmed");
    assert_eq!(record_field(&api, "clusterId"), founded, "its own founding");
    cluster.client(0).await.put(b"k", b"v").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_in_place_refounds_the_set_and_rewrites_the_founding_record() {
    let api = FakeKubeApi::start(3).await;
    let mut cluster = Cluster::start_with(3, &["--kube-api", &api.url]).await;
    let (old_id, _) = one_cluster(&cluster, 3).await;
    let acked = acknowledged_writes(&cluster, 6).await;
    let mut stream = cluster.client(0).await.backup().await.unwrap();
    let mut backup = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        backup.extend_from_slice(&chunk.data);
    }

    // The README's restore, but the record is left in place: pod 0 on
    // restored data replaces it.
    for i in (0..3).rev() {
        cluster.stop(i).await;
        cluster.delete_volume(i);
    }
    let restore = std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
        .arg("restore")
        .args(["--from", "-", "--data-dir"])
        .arg(&cluster.nodes[0].data_dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&backup)?;
            child.wait()
        })
        .unwrap();
    assert!(restore.success(), "{restore:?}");
    for i in 0..3 {
        cluster.restart(i);
    }

    refounded(&cluster, &api, &old_id).await;
    every_write_present(&cluster, 2, &acked).await;
}

/// Loses two of three nodes (killed; volumes deleted, but with `stale` the
/// second keeps its volume, as a node that was only cut off) right after
/// acknowledged writes, forces a new cluster on the survivor through the
/// command line, and brings the lost nodes back. Returns the old and the
/// new cluster ids and what was acknowledged.
async fn lose_a_majority_then_force_a_new_cluster(
    cluster: &mut Cluster,
    stale: bool,
) -> (String, String, Vec<(Vec<u8>, Vec<u8>)>) {
    let (old_id, _) = one_cluster(cluster, 3).await;
    let acked = acknowledged_writes(cluster, 24).await;
    // The survivor is a follower, so its log, not its leadership, is what
    // keeps the writes: wait until every acknowledged entry is in its log
    // (not necessarily applied), then lose the other two at once.
    let leader = cluster.leader().await;
    let survivor = (leader + 1) % 3;
    let last = cluster.status(leader).await.unwrap().last_log_index;
    wait_for("the survivor to hold every acknowledged entry", || async {
        let status = cluster.status(survivor).await?;
        if status.last_log_index >= last {
            Ok(())
        } else {
            Err(format!("last log index {}", status.last_log_index))
        }
    })
    .await;
    let lost: Vec<usize> = (0..3).filter(|&i| i != survivor).collect();
    for &i in &lost {
        cluster.kill(i).await;
        if !(stale && i == lost[1]) {
            cluster.delete_volume(i);
        }
    }

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
        .args(["force-new-cluster", "--json", "--endpoint"])
        .arg(cluster.nodes[survivor].api())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let forced: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_id = forced["cluster_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, old_id);
    assert_eq!(forced["previous_cluster_id"], old_id.as_str());
    assert_eq!(forced["lost"].as_array().unwrap().len(), 2, "{forced}");

    // Alone, the survivor holds every acknowledged write and takes new ones.
    let status = cluster.status(survivor).await.unwrap();
    assert_eq!(status.cluster_id, new_id);
    assert_eq!(status.members.len(), 1);
    cluster.wait_ready(survivor).await;
    let mut client = cluster.client(survivor).await;
    for (key, value) in &acked {
        let kv = client.get(key).await.unwrap();
        assert_eq!(kv.map(|kv| kv.value).as_ref(), Some(value));
    }
    client.put(b"after-forcing", b"v").await.unwrap();

    for &i in &lost {
        cluster.restart(i);
    }
    if stale {
        cluster
            .wait_for_log(lost[1], 0, "was re-founded by force")
            .await;
    }
    (old_id, new_id, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forcing_a_new_cluster_on_the_survivor_of_a_lost_majority_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::start(3).await;
    let (_, new_id, acked) = lose_a_majority_then_force_a_new_cluster(&mut cluster, false).await;
    let (after, _) = one_cluster(&cluster, 3).await;
    assert_eq!(after, new_id, "the lost nodes joined the new cluster");
    every_write_present(&cluster, 0, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forcing_a_new_cluster_in_a_pod_rewrites_the_founding_record_and_stale_pods_rejoin() {
    let api = FakeKubeApi::start(3).await;
    let mut cluster = Cluster::start_with(3, &["--kube-api", &api.url]).await;
    // One lost pod comes back on its volume of the old cluster: it learns
    // that its cluster was re-founded, discards its data and joins.
    let (old_id, new_id, acked) =
        lose_a_majority_then_force_a_new_cluster(&mut cluster, true).await;
    refounded(&cluster, &api, &old_id).await;
    assert_eq!(record_field(&api, "clusterId"), new_id);
    every_write_present(&cluster, 2, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_nodes_back_on_empty_volumes_before_the_command_join_the_new_cluster() {
    let mut cluster = Cluster::start(3).await;
    let (old_id, _) = one_cluster(&cluster, 3).await;
    let acked = acknowledged_writes(&cluster, 12).await;
    // The survivor is the leader, which openraft keeps leading without a
    // quorum: the wiped nodes, back at once under their old addresses,
    // start joining the old cluster through it (and record its id).
    let survivor = cluster.leader().await;
    let lost: Vec<usize> = (0..3).filter(|&i| i != survivor).collect();
    for &i in &lost {
        cluster.kill(i).await;
        cluster.delete_volume(i);
    }
    for &i in &lost {
        cluster.restart(i);
    }
    for &i in &lost {
        wait_for("a lost node to try joining the old cluster", || async {
            let status = cluster.status(i).await?;
            if status.cluster_id == old_id {
                Ok(())
            } else {
                Err(format!("cluster {:?}", status.cluster_id))
            }
        })
        .await;
    }

    // Their answers at the old members' addresses come from other nodes:
    // no quorum, so the command goes ahead, and they join the new cluster.
    let forced = cluster.force_new_cluster(survivor).await;
    let (after, _) = one_cluster(&cluster, 3).await;
    assert_eq!(after, forced.cluster_id);
    every_write_present(&cluster, lost[0], &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_survivors_cannot_both_force_a_new_cluster() {
    let mut cluster = Cluster::start(5).await;
    let acked = acknowledged_writes(&cluster, 10).await;
    let leader = cluster.leader().await;
    let last = cluster.status(leader).await.unwrap().last_log_index;
    cluster.wait_for_applied(0, last).await;
    // Three of five lost: 0 and 1 reach each other, but are no quorum.
    for i in [2, 3, 4] {
        cluster.kill(i).await;
        cluster.delete_volume(i);
    }
    // A survivor that has not noticed yet that a lost node led (an
    // election timeout) still reports it, and forcing is rightly refused:
    // wait until neither follows a lost leader.
    let survivors = [
        cluster.status(0).await.unwrap().id,
        cluster.status(1).await.unwrap().id,
    ];
    for i in [0, 1] {
        wait_for(&format!("node {i} to follow no lost leader"), || async {
            match cluster.status(i).await?.leader_id {
                Some(leader) if !survivors.contains(&leader) => {
                    Err(format!("leader {leader:016x}"))
                }
                _ => Ok(()),
            }
        })
        .await;
    }
    let first = cluster.force_new_cluster(0).await;
    // Node 0 has recorded its re-founding (it may still be starting again):
    // node 1 must not found a second cluster beside it.
    let refused = cluster.force_new_cluster_refused(1).await;
    assert!(
        refused.contains("re-founded this cluster already"),
        "{refused}"
    );

    // Node 1 leaves the old cluster by itself and joins; so do the others.
    for i in [2, 3, 4] {
        cluster.restart(i);
    }
    let (after, _) = one_cluster(&cluster, 5).await;
    assert_eq!(after, first.cluster_id);
    every_write_present(&cluster, 1, &acked).await;
}
