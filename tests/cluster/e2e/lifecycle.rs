//! The StatefulSet's life cycle: first deploy (OrderedReady and Parallel),
//! the visit counter behind a load balancer, a pod deleted, a rolling
//! restart under write load, a PVC deleted, scaling up and down, a DNS
//! outage while pod 0 comes back empty.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::ResponseCode;
use raftset::Client;

use super::nemesis::roll;
use super::workload::{nothing_lost, Writers};
use super::{
    deploy, full_stop_losing_pod_0, members_are_the_pods, secs, statuses_agree, verify_everywhere,
};
use crate::support::http::{self, Reply};
use crate::support::manifest::{Manifest, PodManagement};
use crate::support::statefulset::{exclusive, StatefulSet};
use crate::support::Harness;
use crate::support::{poll, DEADLINE};

/// First deploy as `kubectl apply` does it, then what an operator checks:
/// every pod ready, one cluster, `raftset members` lists three voters.
async fn first_deploy(tag: &str, manifest: Manifest, policy: PodManagement) {
    let _turn = exclusive().await;
    assert_eq!(
        manifest.pod_management, policy,
        "the manifest's podManagementPolicy"
    );
    let replicas = manifest.replicas;
    assert_eq!(replicas, 3, "the manifest asks for three replicas");
    let started = Instant::now();
    let mut set = StatefulSet::with(tag, manifest, &[]).await;
    set.create().await;
    for i in 0..replicas {
        set.probe_ready(i).await.expect("ready");
        set.probe_live(i).await.expect("live");
    }
    set.wait_for_voters(replicas).await;
    let statuses = statuses_agree(&set).await;
    for (i, s) in statuses.iter().enumerate() {
        assert_eq!(
            s["name"],
            set.pod_name(i).as_str(),
            "RAFTSET_NAME is the pod name"
        );
    }
    members_are_the_pods(&set, 0, replicas).await;
    println!(
        "{tag}: {replicas} pods of {} ready and one cluster {} in {}",
        set.manifest.source.display(),
        statuses[0]["cluster_id"],
        secs(started.elapsed())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_deploy_ordered_ready() {
    first_deploy("ordered", Manifest::base(), PodManagement::OrderedReady).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_deploy_parallel() {
    first_deploy(
        "parallel",
        Manifest::overlay("parallel"),
        PodManagement::Parallel,
    )
    .await;
}

/// The visit counter hit through every pod in turn, as a load balancer
/// would: N answers of 200 make the count N on every pod, and the counts
/// the visits saw are exactly 1..=N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visit_counter_agrees_on_every_pod() {
    let _turn = exclusive().await;
    let set = deploy("visits", Manifest::base()).await;
    let pods = set.ordinals();
    let mut seen = BTreeSet::new();
    let mut ok = 0i64;
    let mut refused = Vec::new();
    for n in 0..45 {
        let i = pods[n % pods.len()];
        match http::fetch(&set.http(i), "/", "*/*", Duration::from_secs(10)).await {
            Ok(Reply {
                status: 200, body, ..
            }) => {
                ok += 1;
                let count =
                    http::visits_in(&body).unwrap_or_else(|| panic!("no count in {body:?}"));
                assert!(seen.insert(count), "two visits saw count {count}");
            }
            Ok(Reply { status, body, .. }) => refused.push(format!("{status} {}", body.trim())),
            Err(e) => refused.push(e),
        }
    }
    assert!(ok >= 40, "most visits answered 200: {refused:?}");
    assert_eq!(
        seen,
        (1..=ok).collect::<BTreeSet<_>>(),
        "the visits saw the counts 1..={ok} (refused: {refused:?})"
    );
    for &i in &pods {
        let Reply { status, body, .. } =
            http::fetch(&set.http(i), "/visits", "*/*", Duration::from_secs(10))
                .await
                .unwrap();
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["visits"], ok, "{} counts every 200", set.pod_name(i));
        assert_eq!(json["node"], set.pod_name(i).as_str());
    }
}

/// A pod deleted (`kubectl delete pod`) comes back with the same name and
/// volume: the same Raft node id, in the same cluster, with the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pod_comes_back_with_its_identity() {
    let _turn = exclusive().await;
    let mut set = deploy("delpod", Manifest::base()).await;
    let mut client = set.connect(2, Duration::from_secs(10)).await.unwrap();
    client.put(b"kept", b"across pod deletion").await.unwrap();
    let before: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(set.status(i).await.unwrap());
        }
        v
    };
    // A follower, then whoever leads (its handover runs on SIGTERM).
    let leader = set.leader().await;
    let follower = (leader + 1) % 3;
    for i in [follower, leader] {
        let old_ip = set.ip(i);
        set.delete_pod(i).await;
        assert_ne!(set.ip(i), old_ip, "a new pod gets a new IP");
        set.wait_ready(i).await;
        let after = set.status(i).await.unwrap();
        assert_eq!(
            after.id,
            before[i].id,
            "{} keeps its node id",
            set.pod_name(i)
        );
        assert_eq!(after.name, before[i].name);
        assert_eq!(after.cluster_id, before[i].cluster_id);
        set.wait_for_voters(3).await;
        let mut c = set.connect(i, Duration::from_secs(10)).await.unwrap();
        let kv = c.get(b"kept").await.unwrap().expect("the key survives");
        assert_eq!(kv.value, b"across pod deletion");
    }
    let members = set.wait_for_voters(3).await;
    let ids: BTreeSet<u64> = members
        .members
        .iter()
        .map(|p| p.member.as_ref().unwrap().id)
        .collect();
    let old: BTreeSet<u64> = before.iter().map(|s| s.id).collect();
    assert_eq!(ids, old, "the same three members");
    verify_everywhere(&set).await;
}

/// `kubectl rollout restart` while 8 writers put as fast as they can: the
/// writes go on through the rollout (each pod down in turn, one at a time)
/// and none acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_write_load_loses_nothing() {
    let _turn = exclusive().await;
    let mut set = deploy("rolling", Manifest::base()).await;
    let writers = Writers::start(&set, "roll/", 8, 100);
    writers.until_acknowledged(200).await;
    let before = writers.acknowledged();
    let pods = roll(&mut set).await;
    let during = writers.acknowledged() - before;
    let written = writers.stop().await;
    assert!(during > 0, "no write was acknowledged during the rollout");
    set.wait_for_voters(3).await;
    let present = nothing_lost(&set, "roll/", &written).await;
    verify_everywhere(&set).await;
    println!(
        "rolling restart ({}): {during} writes acknowledged during it, {} in all, {} unknown, {present} present",
        pods.join(", "),
        written.acknowledged.len(),
        written.unknown
    );
}

/// Deletes pod `ordinal`'s PVC (and the pod, so it goes): the pod comes
/// back empty under a new node id, joins the one cluster, replaces its old
/// self in the membership and catches up.
async fn deleted_pvc_rejoins(tag: &str, ordinal: usize) {
    let _turn = exclusive().await;
    let mut set = deploy(tag, Manifest::base()).await;
    let mut client = set
        .connect(1 - ordinal.min(1), Duration::from_secs(10))
        .await
        .unwrap();
    for k in 0..20 {
        client
            .put(format!("pvc/{k}").as_bytes(), format!("v{k}").as_bytes())
            .await
            .unwrap();
    }
    let old = set.status(ordinal).await.unwrap();
    let cluster = old.cluster_id.clone();

    set.delete_pvc(ordinal).await;
    set.wait_ready(ordinal).await;
    let fresh = set.status(ordinal).await.unwrap();
    assert_ne!(fresh.id, old.id, "an empty volume means a new node id");
    assert_eq!(
        fresh.cluster_id,
        cluster,
        "{} joined the cluster instead of founding one",
        set.pod_name(ordinal)
    );

    let members = set.wait_for_voters(3).await;
    let me = members
        .members
        .iter()
        .filter_map(|p| p.member.as_ref())
        .find(|m| m.name == set.pod_name(ordinal))
        .expect("the pod is a member");
    assert_eq!(me.id, fresh.id, "the new id replaced the old one");
    assert!(
        members
            .members
            .iter()
            .all(|p| p.member.as_ref().unwrap().id != old.id),
        "the old id is gone"
    );
    let statuses = statuses_agree(&set).await;
    assert!(statuses.iter().all(|s| s["cluster_id"] == cluster.as_str()));

    // The data is on the new volume: read it from that pod alone.
    let leader_log = set.wait_for_leader().await.1.last_log_index;
    set.wait_for_applied(ordinal, leader_log).await;
    let mut local = set.connect(ordinal, Duration::from_secs(10)).await.unwrap();
    for k in 0..20 {
        let kv = local
            .get_with(
                format!("pvc/{k}").as_bytes(),
                raftset::client::Consistency::Serializable,
            )
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("pvc/{k} missing on {}", set.pod_name(ordinal)));
        assert_eq!(kv.value, format!("v{k}").as_bytes());
    }
    verify_everywhere(&set).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pvc_of_pod_1_rejoins() {
    deleted_pvc_rejoins("pvc1", 1).await;
}

/// Pod 0 founds the cluster on first deploy; with an empty volume it must
/// join the existing one instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pvc_of_pod_0_rejoins_without_founding() {
    deleted_pvc_rejoins("pvc0", 0).await;
}

/// `kubectl scale --replicas 5`, then back to 3: pods 3 and 4 are created
/// in order and join as voters; scaling down removes pod 4 then pod 3, and
/// the leader, reading `spec.replicas` from the (fake) API, removes them
/// from the membership. Their volumes stay (whenScaled: Retain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_3_to_5_to_3() {
    let _turn = exclusive().await;
    // Reconcile every second instead of every 10 s, to keep the test short.
    let mut set = StatefulSet::with(
        "scale",
        Manifest::base(),
        &[("RAFTSET_RECONCILE_SECS", "1")],
    )
    .await;
    set.create().await;
    set.wait_for_voters(3).await;
    let mut client = set.connect(0, Duration::from_secs(10)).await.unwrap();
    client.put(b"scale", b"before").await.unwrap();

    set.scale(5).await;
    set.wait_for_voters(5).await;
    members_are_the_pods(&set, 4, 5).await;
    let mut c4 = set.connect(4, Duration::from_secs(10)).await.unwrap();
    assert_eq!(c4.get(b"scale").await.unwrap().unwrap().value, b"before");

    set.scale(3).await;
    assert_eq!(set.ordinals(), vec![0, 1, 2]);
    set.wait_for_voters(3).await;
    members_are_the_pods(&set, 0, 3).await;
    for i in [3, 4] {
        let volume = set.volume(i);
        crate::support::docker::docker(&["volume", "inspect", &volume])
            .await
            .unwrap_or_else(|e| panic!("the PVC of {} is kept: {e}", set.pod_name(i)));
    }
    let mut client: Client = poll(
        "a write after the scale-down",
        DEADLINE,
        Duration::from_millis(200),
        || async {
            let mut c = set.connect(1, Duration::from_secs(5)).await?;
            c.put(b"scale", b"after").await.map_err(|e| e.to_string())?;
            Ok(c)
        },
    )
    .await;
    assert_eq!(client.get(b"scale").await.unwrap().unwrap().value, b"after");
    verify_everywhere(&set).await;
}

/// `kubectl scale` down as the controller does it: the pods scaled away
/// stop within seconds, long before the leader's next look at
/// spec.replicas (every 10 s, the default here). Each one's preStop hook
/// takes it out of the cluster while it still runs (the highest ordinal
/// leads, so its hook hands leadership over first), so the pods that stay
/// keep a quorum, go on taking writes, and lose none acknowledged.
async fn fast_scale_down(tag: &str, mut manifest: Manifest, from: usize, to: usize) {
    let _turn = exclusive().await;
    manifest.replicas = from;
    let mut set = deploy(tag, manifest).await;
    set.make_leader(from - 1).await;
    let prefix = format!("{tag}/");
    let writers = Writers::start(&set, &prefix, 4, 100);
    writers.until_acknowledged(100).await;

    set.scale(to).await;
    assert_eq!(set.ordinals(), (0..to).collect::<Vec<_>>());
    let before = writers.acknowledged();
    writers.until_acknowledged(before + 100).await;
    set.wait_for_voters(to).await;
    members_are_the_pods(&set, 0, to).await;
    let written = writers.stop().await;
    let present = nothing_lost(&set, &prefix, &written).await;
    verify_everywhere(&set).await;
    println!(
        "fast scale-down {from} -> {to}: {} writes acknowledged, {} unknown, {present} present",
        written.acknowledged.len(),
        written.unknown
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_scale_down_3_to_1_ordered_ready() {
    fast_scale_down("down31", Manifest::base(), 3, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_scale_down_5_to_2_parallel() {
    fast_scale_down("down52", Manifest::overlay("parallel"), 5, 2).await;
}

/// A full stop in which pod 0's volume is lost ([`full_stop_losing_pod_0`]):
/// pod 0 comes back empty before pods 1 and 2. The founding record says a
/// cluster exists, so pod 0 waits rather than founds, passes the ordering
/// probe, and joins once pods 1 and 2 are back: one cluster, the first one,
/// with every acknowledged write.
async fn full_stop_with_a_lost_pod_0_volume(tag: &str, manifest: Manifest) {
    let _turn = exclusive().await;
    let mut set = deploy(tag, manifest).await;
    let cluster_id = statuses_agree(&set).await[0]["cluster_id"].clone();
    let mut client = set.connect(1, Duration::from_secs(10)).await.unwrap();
    let acked: Vec<(String, String)> = (0..20)
        .map(|k| (format!("stop/{k}"), format!("v{k}")))
        .collect();
    for (key, value) in &acked {
        client.put(key.as_bytes(), value.as_bytes()).await.unwrap();
    }

    full_stop_losing_pod_0(&mut set).await;
    set.wait_for_voters(3).await;
    let statuses = statuses_agree(&set).await;
    assert_eq!(
        statuses[0]["cluster_id"], cluster_id,
        "one cluster, the one founded at first deploy"
    );
    let mut client = set.connect(0, Duration::from_secs(10)).await.unwrap();
    for (key, value) in &acked {
        let kv = client.get(key.as_bytes()).await.unwrap();
        assert_eq!(
            kv.map(|kv| kv.value),
            Some(value.as_bytes().to_vec()),
            "acknowledged write {key}"
        );
    }
    verify_everywhere(&set).await;
    assert!(
        !set.logs(0, 200).await.contains("founded a new cluster"),
        "pod 0 did not found again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_stop_with_a_lost_pod_0_volume_ordered_ready() {
    full_stop_with_a_lost_pod_0_volume("stop-ordered", Manifest::base()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_stop_with_a_lost_pod_0_volume_parallel() {
    full_stop_with_a_lost_pod_0_volume("stop-parallel", Manifest::overlay("parallel")).await;
}

/// DNS fails fast (every lookup answered `code` at once) while pod 0 comes
/// back on an empty volume, pods 1 and 2 running. Pod 0 cannot tell whether
/// its peers exist, so it waits through round after round of failed
/// lookups, more than founding needs in a row; once DNS answers again it
/// joins the one cluster under a new node id, and no second cluster id
/// appears.
///
/// With the founding record (`kube_api`), the record alone keeps pod 0 from
/// founding. Without a Kubernetes API (a set whose pods may not read it, or
/// pods outside Kubernetes) nothing but the DNS rule does: only NXDOMAIN
/// makes a peer absent. That variant is the end-to-end proof of the rule;
/// had pod 0 read the failures as "absent", it would have founded a second
/// cluster there.
async fn dns_outage_while_pod_0_restarts_empty(tag: &str, kube_api: bool, code: ResponseCode) {
    let _turn = exclusive().await;
    let mut set = StatefulSet::new(tag).await;
    if !kube_api {
        set.without_kube_api();
    }
    set.create().await;
    set.wait_for_voters(3).await;
    let cluster_id = statuses_agree(&set).await[0]["cluster_id"].clone();
    let old_id = set.status(0).await.unwrap().id;
    let mut client = set.connect(1, Duration::from_secs(10)).await.unwrap();
    client.put(b"dns/before", b"the outage").await.unwrap();
    // Pods 1 and 2 go on leading through the outage on the connections
    // they hold; an election with pod 0 gone could need a new one.
    lead_elsewhere_than(&set, 0).await;

    set.dns().set_outage(Some(code));
    let peer = set.manifest.pod_fqdn(1);
    let answer = set.dns().lookup(&peer).await;
    assert_eq!(
        answer,
        Err(code.to_string()),
        "fault did not happen: {peer} still resolves"
    );
    let started = Instant::now();
    set.delete_pvc(0).await;
    let pod_0: std::net::IpAddr = set.ip(0).parse().unwrap();

    // Every round looks up pod 1's name. Founding takes three rounds in a
    // row (`BOOTSTRAP_CONFIRMATIONS`), and the rounds start 100 ms apart,
    // doubling: a lookup this long after the first is from the sixth round
    // or later.
    let asking = Duration::from_secs(2);
    let reason = if kube_api {
        "the founding record says cluster"
    } else {
        "not bootstrapping while peers"
    };
    let (failed, span) = poll(
        "pod 0 to wait through rounds of failed lookups of its peers",
        DEADLINE,
        Duration::from_millis(250),
        || async {
            let failures = set
                .dns()
                .failed_queries()
                .get(&(pod_0, peer.clone()))
                .copied();
            let (failed, span) =
                failures.map_or((0, Duration::ZERO), |f| (f.count, f.last - f.first));
            let log = set.logs(0, 100).await;
            assert!(
                !log.contains("founded a new cluster"),
                "pod 0 founded a second cluster during the outage, after {failed} failed \
                 lookups of {peer}; its log:\n{log}"
            );
            if span >= asking && log.contains(reason) {
                Ok((failed, span))
            } else {
                let last = log.lines().last().unwrap_or_default().to_string();
                Err(format!(
                    "{failed} failed lookups of {peer} over {span:?}; last log line: {last}"
                ))
            }
        },
    )
    .await;
    let waiting = set.status(0).await.expect("pod 0 answers while waiting");
    assert!(
        waiting.cluster_id.is_empty() && waiting.role != "leader",
        "pod 0 waits, in no cluster: {waiting:?}"
    );
    let (_, leader) = set.wait_for_leader_among(&[1, 2], None, 0).await;
    assert_eq!(leader.cluster_id, cluster_id.as_str().unwrap());
    let outage = started.elapsed();

    set.dns().set_outage(None);
    let healed = Instant::now();
    set.wait_ready(0).await;
    set.wait_for_voters(3).await;
    let statuses = statuses_agree(&set).await;
    assert!(
        statuses.iter().all(|s| s["cluster_id"] == cluster_id),
        "one cluster, the first: {statuses:?}"
    );
    let fresh = set.status(0).await.unwrap();
    assert_ne!(fresh.id, old_id, "an empty volume means a new node id");
    let mut client = set.connect(0, Duration::from_secs(10)).await.unwrap();
    let kv = client.get(b"dns/before").await.unwrap();
    assert_eq!(kv.map(|kv| kv.value), Some(b"the outage".to_vec()));
    verify_everywhere(&set).await;
    assert!(
        !set.logs(0, 500).await.contains("founded a new cluster"),
        "pod 0 did not found again"
    );
    println!(
        "{tag}: DNS answered {code}; pod 0 waited {} ({failed} failed lookups of {peer} over {}; \
         {}), then joined cluster {cluster_id} as {:016x} in {}",
        secs(outage),
        secs(span),
        if kube_api {
            "founding record present"
        } else {
            "no Kubernetes API: DNS alone"
        },
        fresh.id,
        secs(healed.elapsed())
    );
}

/// Moves leadership off pod `i` if it leads, and waits for the new leader.
async fn lead_elsewhere_than(set: &StatefulSet, i: usize) {
    let (leader, status) = set.wait_for_leader().await;
    if leader != i {
        return;
    }
    let to = (i + 1) % 3;
    let to_id = format!("{:x}", set.status(to).await.unwrap().id);
    set.exec_ok(i, &["raftset", "transfer-leader", "--to", &to_id])
        .await;
    set.wait_for_leader_among(&set.ordinals(), status.leader_id, status.term + 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_outage_while_pod_0_restarts_empty_without_kube_api() {
    dns_outage_while_pod_0_restarts_empty("dns-nokube", false, ResponseCode::ServFail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_outage_while_pod_0_restarts_empty_with_founding_record() {
    dns_outage_while_pod_0_restarts_empty("dns-record", true, ResponseCode::Refused).await;
}
