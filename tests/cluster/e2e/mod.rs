//! End-to-end tests on containers: the StatefulSet's life cycle and a fault
//! campaign, played by `support::statefulset` with the image built from the
//! `Dockerfile` and the pods described by `k8s/`; and `docker-compose.yml`
//! run by Compose with the same image (`compose`).
//!
//! Needs a running Docker daemon (the tests fail, saying so, without one).
//! Run them alone with `cargo test --test cluster e2e`; add
//! `-- --nocapture` to see the fault campaign's seed, schedule and summary.
//! The tests take turns (`statefulset::exclusive`): each runs a whole cluster on
//! the machine's two cores.

mod admin;
mod compose;
mod crash;
mod faults;
mod image;
mod lifecycle;
mod nemesis;
mod workload;

use std::time::Duration;

use serde_json::Value;

use crate::support::manifest::Manifest;
use crate::support::statefulset::StatefulSet;
use crate::support::Harness;
use crate::support::{poll, DEADLINE};

/// A set for `manifest`, created and formed: every pod ready and the
/// leader reporting `replicas` voters.
pub async fn deploy(tag: &str, manifest: Manifest) -> StatefulSet {
    let mut set = StatefulSet::with(tag, manifest, &[]).await;
    set.create().await;
    set.wait_for_voters(set.replicas()).await;
    set
}

/// `kubectl scale --replicas=0`, pod 0's PVC deleted meanwhile (a local
/// PV whose node died), then back to `replicas` with pod 0 created first:
/// OrderedReady always does that, Parallel does when pods 1.. are Pending,
/// so their names do not resolve yet. Returns the deleted volume's name.
pub async fn full_stop_losing_pod_0(set: &mut StatefulSet) -> String {
    let replicas = set.replicas();
    set.scale(0).await;
    assert!(
        set.running().is_empty(),
        "pods {:?} still run",
        set.running()
    );
    let volume = set.volume(0);
    crate::support::docker::docker(&["volume", "rm", &volume])
        .await
        .unwrap_or_else(|e| panic!("{volume} not deleted: {e}"));
    set.scale(1).await;
    set.scale(replicas).await;
    volume
}

/// `raftset status --json` in every pod: they name one cluster and one
/// leader. Returns the statuses by ordinal.
pub async fn statuses_agree(set: &StatefulSet) -> Vec<Value> {
    poll(
        "every pod's `raftset status` to name one cluster and one leader",
        DEADLINE,
        Duration::from_millis(250),
        || async {
            let mut all = Vec::new();
            for i in set.ordinals() {
                all.push(set.exec_json(i, &["raftset", "status"]).await);
            }
            let cluster = &all[0]["cluster_id"];
            let leader = &all[0]["leader_id"];
            let one = all
                .iter()
                .all(|s| &s["cluster_id"] == cluster && &s["leader_id"] == leader);
            if one && !leader.is_null() && cluster.as_str().is_some_and(|c| !c.is_empty()) {
                Ok(all)
            } else {
                let views: Vec<String> = all
                    .iter()
                    .map(|s| format!("{} {} {}", s["name"], s["cluster_id"], s["leader_name"]))
                    .collect();
                Err(views.join("; "))
            }
        },
    )
    .await
}

/// `raftset members --json` in pod `i`, checked: `n` voters named after
/// the ordinals `0..n`, each advertising its DNS name under the headless
/// Service, exactly one leader.
pub async fn members_are_the_pods(set: &StatefulSet, i: usize, n: usize) -> Value {
    let members = set.exec_json(i, &["raftset", "members"]).await;
    let list = members["members"].as_array().expect("a members list");
    let mut names: Vec<String> = list
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    let expected: Vec<String> = (0..n).map(|o| set.pod_name(o)).collect();
    assert_eq!(names, expected, "members: {members}");
    assert!(
        list.iter().all(|m| m["voter"] == true),
        "every member is a voter: {members}"
    );
    assert_eq!(
        list.iter().filter(|m| m["leader"] == true).count(),
        1,
        "one leader: {members}"
    );
    for m in list {
        let name = m["name"].as_str().unwrap();
        let ordinal = set.ordinal_of(name).expect("an ordinal");
        let peer = format!(
            "{}:{}",
            set.manifest.pod_fqdn(ordinal),
            set.manifest.port("peer")
        );
        assert_eq!(
            m["peer_addr"],
            peer.as_str(),
            "{name} advertises its DNS name"
        );
    }
    members
}

/// `raftset verify --json` in every pod: each says the members agree, and
/// all report the same digests and revision. (Each verify takes its digests
/// at a new log index of its own, so the indexes differ; with no writes in
/// between, the state and so the digests must not.)
pub async fn verify_everywhere(set: &StatefulSet) -> Value {
    poll(
        "every pod's `raftset verify` to agree",
        DEADLINE,
        Duration::from_millis(300),
        || async {
            let mut reports = Vec::new();
            for i in set.ordinals() {
                let out = set.exec(i, &["raftset", "verify", "--json"]).await;
                let report: Value = serde_json::from_str(out.stdout.trim()).map_err(|e| {
                    format!(
                        "{}: no JSON ({e}): {} {}",
                        set.pod_name(i),
                        out.stdout,
                        out.stderr
                    )
                })?;
                if report["agree"] != true {
                    return Err(format!("{} says: {report}", set.pod_name(i)));
                }
                reports.push(report);
            }
            let digests = |r: &Value| -> Vec<(String, String)> {
                let mut d: Vec<(String, String)> = r["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| (m["name"].to_string(), m["digest"].to_string()))
                    .collect();
                d.sort();
                d
            };
            let first = &reports[0];
            let same = reports
                .iter()
                .all(|r| r["revision"] == first["revision"] && digests(r) == digests(first));
            let members = digests(first).len();
            if same && members == set.ordinals().len() {
                Ok(first.clone())
            } else {
                Err(format!("reports differ: {reports:?}"))
            }
        },
    )
    .await
}

/// A plain-text table with a header row.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |", padded.join(" | "))
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.push(format!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    ));
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
