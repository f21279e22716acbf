//! The StatefulSet life cycle with processes standing in for pods and data
//! directories for their volumes: ordered and parallel first deploys,
//! restarts, lost volumes, scaling up.

use std::collections::BTreeSet;

use crate::support::kube::FakeKubeApi;
use crate::support::{wait_for, Cluster, Harness};

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
