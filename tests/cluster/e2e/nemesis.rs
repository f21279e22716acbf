//! The fault campaign's nemesis: each fault is injected, proven to have
//! happened (a fault that did not happen fails the run), held, healed, and
//! followed by a wait until the cluster has recovered: every pod ready, one
//! leader agreed by all, every pod caught up with the leader's log.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::ResponseCode;
use raftset::proto::StatusResponse;

use super::{full_stop_losing_pod_0, secs};
use crate::support::history::{Recorder, Tally};
use crate::support::http;
use crate::support::statefulset::StatefulSet;
use crate::support::Harness;
use crate::support::{poll, DEADLINE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    LeaderKill,
    RandomKill,
    MinorityPartition,
    LeaderPartition,
    Pause,
    RollingRestart,
    MembershipChange,
    FullStopLostVolume,
    FastScaleDown,
    DnsOutage,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::LeaderKill,
        Fault::RandomKill,
        Fault::MinorityPartition,
        Fault::LeaderPartition,
        Fault::Pause,
        Fault::RollingRestart,
        Fault::MembershipChange,
        Fault::FullStopLostVolume,
        Fault::FastScaleDown,
        Fault::DnsOutage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::LeaderKill => "leader kill + restart",
            Fault::RandomKill => "random kill + restart",
            Fault::MinorityPartition => "minority partition + heal",
            Fault::LeaderPartition => "leader partition + heal",
            Fault::Pause => "pause + resume",
            Fault::RollingRestart => "rolling restart",
            Fault::MembershipChange => "member removed + rejoins",
            Fault::FullStopLostVolume => "full stop, pod 0's volume lost",
            Fault::FastScaleDown => "fast scale-down 3 -> 1, back to 3",
            Fault::DnsOutage => "DNS outage (fast failures)",
        }
    }
}

/// One fault of a schedule.
#[derive(Debug, Clone)]
pub struct Step {
    pub fault: Fault,
    /// Quiet time before the fault.
    pub settle: Duration,
    /// How long the fault lasts once proven.
    pub hold: Duration,
    /// Picks the victim where the fault does not name one.
    pub pick: usize,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "after {}: {} held {}, pick #{}",
            secs(self.settle),
            self.fault.name(),
            secs(self.hold),
            self.pick
        )
    }
}

/// One row of the campaign's summary.
pub struct Row {
    pub scenario: String,
    pub operations: Tally,
    pub faults: String,
    pub proof: String,
    /// From the fault to a new leader, where the fault took the leader.
    pub failover: Option<Duration>,
    /// From the heal to a recovered cluster.
    pub recovery: Duration,
}

/// What an injected fault did, proven.
struct Injected {
    /// The pod the fault hit; none for a fault on every pod.
    victim: Option<usize>,
    proof: String,
    failover: Option<Duration>,
}

/// Runs one step on a three-pod set: inject, prove, hold, heal, recover.
pub async fn run(set: &mut StatefulSet, step: &Step, recorder: &Recorder) -> Row {
    tokio::time::sleep(step.settle).await;
    let from = recorder.now();
    let started = Instant::now();
    let injected = match step.fault {
        Fault::LeaderKill => {
            let (leader, before) = confirmed_leader(set).await;
            kill(set, leader, before).await
        }
        Fault::RandomKill => {
            let victim = step.pick % 3;
            let before = confirmed_leader(set).await;
            kill(set, victim, before.1).await
        }
        Fault::MinorityPartition => {
            let victim = follower(set, step.pick).await;
            cut_off(set, victim).await
        }
        Fault::LeaderPartition => cut_off(set, confirmed_leader(set).await.0).await,
        Fault::Pause => pause(set, step.pick % 3).await,
        Fault::RollingRestart => rolling_restart(set, recorder).await,
        Fault::MembershipChange => remove_member(set, step.pick).await,
        Fault::FullStopLostVolume => full_stop(set).await,
        Fault::FastScaleDown => scale_down_and_back(set, step.hold).await,
        Fault::DnsOutage => dns_outage(set, step.pick).await,
    };
    if !matches!(
        step.fault,
        Fault::RollingRestart | Fault::FullStopLostVolume | Fault::FastScaleDown
    ) {
        tokio::time::sleep(step.hold).await;
    }
    let held = started.elapsed();
    let healing = Instant::now();
    if let Some(victim) = injected.victim {
        heal(set, step.fault, victim).await;
    }
    recovered(set).await;
    let name = match injected.victim {
        Some(victim) => set.pod_name(victim),
        None => "every pod".into(),
    };
    Row {
        scenario: format!("{} ({name})", step.fault.name()),
        operations: recorder.tally_between(from, recorder.now()),
        faults: format!("{name} for {}", secs(held)),
        proof: injected.proof,
        failover: injected.failover,
        recovery: healing.elapsed(),
    }
}

/// The leader every pod agrees on, asked once more right before the fault
/// so that the fault hits the pod that leads at that moment (leadership
/// may move on its own on a busy machine).
pub async fn confirmed_leader(set: &StatefulSet) -> (usize, StatusResponse) {
    poll(
        "a leader that still leads when asked again",
        DEADLINE,
        Duration::from_millis(100),
        || async {
            let (leader, agreed) = set.wait_for_leader().await;
            let now = set.status(leader).await?;
            if now.role == "leader" && now.term == agreed.term {
                Ok((leader, now))
            } else {
                Err(format!(
                    "{} is now {} in term {}",
                    set.pod_name(leader),
                    now.role,
                    now.term
                ))
            }
        },
    )
    .await
}

/// A follower, chosen by `pick`.
async fn follower(set: &StatefulSet, pick: usize) -> usize {
    let (leader, _) = confirmed_leader(set).await;
    let followers: Vec<usize> = set
        .ordinals()
        .into_iter()
        .filter(|&i| i != leader)
        .collect();
    followers[pick % followers.len()]
}

/// The second half of every proof: with `victim` out of the game, the rest
/// went on. If it led, the others elected a new leader in a later term;
/// otherwise the leader commits a write without it. `before` is a status
/// taken right before the fault, at `since`; `what` is the first half.
async fn prove_the_rest_go_on(
    set: &StatefulSet,
    victim: usize,
    before: &StatusResponse,
    since: Instant,
    what: &str,
) -> Injected {
    let others: Vec<usize> = set.running().into_iter().filter(|&i| i != victim).collect();
    if before.leader_name == set.pod_name(victim) {
        let (new_leader, after) = set
            .wait_for_leader_among(&others, before.leader_id, before.term + 1)
            .await;
        let failover = since.elapsed();
        return Injected {
            victim: Some(victim),
            proof: format!(
                "{what}; {} elected in term {} (was {})",
                set.pod_name(new_leader),
                after.term,
                before.term
            ),
            failover: Some(failover),
        };
    }
    let (leader, _) = set.wait_for_leader_among(&others, None, 0).await;
    let mut client = set
        .connect(leader, Duration::from_secs(5))
        .await
        .expect("a client of the leader");
    let name = set.pod_name(victim);
    let revision = poll(
        "a write committed without the victim",
        DEADLINE,
        Duration::from_millis(100),
        || {
            let mut c = client.clone();
            let name = name.clone();
            async move {
                c.put(b"nemesis/last-victim", name.as_bytes())
                    .await
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    client.get(b"nemesis/last-victim").await.expect("read back");
    Injected {
        victim: Some(victim),
        proof: format!(
            "{what}; {} committed revision {revision} without it",
            set.pod_name(leader)
        ),
        failover: None,
    }
}

async fn kill(set: &mut StatefulSet, victim: usize, before: StatusResponse) -> Injected {
    let since = Instant::now();
    set.kill(victim).await;
    let state = set.state(victim).await;
    assert!(
        !state.running && state.exit_code == 137,
        "fault did not happen: {} is not dead by SIGKILL: {state:?}",
        set.pod_name(victim)
    );
    prove_the_rest_go_on(set, victim, &before, since, "exit 137").await
}

async fn cut_off(set: &mut StatefulSet, victim: usize) -> Injected {
    let before = set.status(victim).await.expect("the victim's status");
    let name = set.pod_name(victim);
    let since = Instant::now();
    set.partition(victim).await;
    let state = set.state(victim).await;
    assert!(
        !state.networks.iter().any(|n| n == set.network()),
        "fault did not happen: {name} is still on the network: {state:?}"
    );
    assert!(state.running, "{name} runs on, cut off");
    let unreachable = http::fetch(&set.http(victim), "/healthz", "*/*", Duration::from_secs(1))
        .await
        .map(|reply| reply.status);
    assert!(
        unreachable.is_err(),
        "fault did not happen: {name} still answers: {unreachable:?}"
    );
    prove_the_rest_go_on(set, victim, &before, since, "off the network, unreachable").await
}

async fn pause(set: &mut StatefulSet, victim: usize) -> Injected {
    let before = confirmed_leader(set).await.1;
    let name = set.pod_name(victim);
    let since = Instant::now();
    set.pause(victim).await;
    let state = set.state(victim).await;
    assert!(
        state.paused,
        "fault did not happen: {name} is not paused: {state:?}"
    );
    assert!(
        set.probe_live(victim).await.is_err(),
        "fault did not happen: {name} answered its liveness probe while paused"
    );
    prove_the_rest_go_on(
        set,
        victim,
        &before,
        since,
        "frozen, liveness probe timed out",
    )
    .await
}

/// `kubectl rollout restart` while the workload runs. Proven: see
/// [`roll`], and client writes were acknowledged during the rollout.
async fn rolling_restart(set: &mut StatefulSet, recorder: &Recorder) -> Injected {
    let from = recorder.now();
    let pods = roll(set).await;
    let acknowledged = recorder.acknowledged_writes_between(from, recorder.now());
    assert!(
        acknowledged > 0,
        "no client write was acknowledged during the rolling restart"
    );
    Injected {
        victim: None,
        proof: format!(
            "{} re-created, node ids kept; {acknowledged} client writes acked meanwhile",
            pods.join(", ")
        ),
        failover: None,
    }
}

/// A rolling restart as the StatefulSet controller does it: pods deleted
/// from the highest ordinal down, each only once the one before is ready
/// again. Proven: every pod came back as a new container holding its node
/// id (same volume). Returns the pods in the order they were re-created.
pub async fn roll(set: &mut StatefulSet) -> Vec<String> {
    let mut pods = Vec::new();
    for i in set.ordinals().into_iter().rev() {
        let before = set.status(i).await.expect("status before the restart");
        let container_before = set.state(i).await.id;
        set.delete_pod(i).await;
        set.wait_ready(i).await;
        let after = set.status(i).await.expect("status after the restart");
        assert_ne!(
            set.state(i).await.id,
            container_before,
            "{} was not re-created",
            set.pod_name(i)
        );
        assert_eq!(
            after.id,
            before.id,
            "{} came back with another node id: its volume was not kept",
            set.pod_name(i)
        );
        pods.push(set.pod_name(i));
    }
    pods
}

/// [`full_stop_losing_pod_0`] while the workload runs. Proven: no pod ran,
/// and pod 0 came back under a new node id as a member of the same
/// cluster, never founding another.
async fn full_stop(set: &mut StatefulSet) -> Injected {
    let before = set.status(0).await.expect("pod 0's status");
    let volume = full_stop_losing_pod_0(set).await;
    let after = poll(
        "pod 0 to rejoin its cluster",
        DEADLINE,
        Duration::from_millis(200),
        || async {
            let s = set.status(0).await?;
            if s.cluster_id == before.cluster_id {
                Ok(s)
            } else {
                Err(format!("pod 0 is in cluster {:?}", s.cluster_id))
            }
        },
    )
    .await;
    assert_ne!(after.id, before.id, "pod 0 came back on an empty volume");
    Injected {
        victim: None,
        proof: format!(
            "no pod ran, {volume} deleted; pod 0 rejoined cluster {} as {:016x} (was {:016x})",
            before.cluster_id, after.id, before.id
        ),
        failover: None,
    }
}

/// `kubectl scale --replicas=1` while the workload runs: the controller
/// stops pods 2 and 1 at once after their preStop hooks, long before the
/// leader would look at spec.replicas. Proven: pod 0 is the one voter left
/// and commits a write alone. Held for `hold`, then the claims of pods 1
/// and 2 go (`whenScaled: Delete`) and the set is scaled back to 3: they
/// start empty and join.
async fn scale_down_and_back(set: &mut StatefulSet, hold: Duration) -> Injected {
    let (_, before) = confirmed_leader(set).await;
    let since = Instant::now();
    set.scale(1).await;
    let members = set.wait_for_voters_among(&[0], 1).await;
    let mut client = set
        .connect(0, Duration::from_secs(5))
        .await
        .expect("a client of pod 0");
    client
        .put(b"nemesis/alone", b"1")
        .await
        .unwrap_or_else(|e| panic!("fault did not happen as meant: pod 0 alone cannot write: {e}"));
    let alone = since.elapsed();
    tokio::time::sleep(hold).await;
    for i in [1, 2] {
        set.delete_claim(i).await;
    }
    set.scale(3).await;
    let leader = members.members.first().and_then(|m| m.member.as_ref());
    Injected {
        victim: None,
        proof: format!(
            "pods 1 and 2 stopped; {} the one voter, wrote alone {} after the scale (leader before: {})",
            leader.map_or("?", |m| m.name.as_str()),
            secs(alone),
            before.leader_name
        ),
        failover: None,
    }
}

/// Every DNS query answered at once with SERVFAIL or REFUSED (chosen by
/// `pick`) while the workload runs. The pods keep the connections they
/// hold, so pod `pick` also crashes and is restarted meanwhile: it and its
/// peers must resolve each other anew. Proven: the harness's own lookup of
/// the pod's name gets the failure, and lookups by the pods failed.
async fn dns_outage(set: &mut StatefulSet, pick: usize) -> Injected {
    let code = [ResponseCode::ServFail, ResponseCode::Refused][pick % 2];
    let victim = pick % 3;
    let name = set.manifest.pod_fqdn(victim);
    set.dns().set_outage(Some(code));
    let answer = set.dns().lookup(&name).await;
    assert_eq!(
        answer,
        Err(code.to_string()),
        "fault did not happen: the harness's lookup of {name}"
    );
    set.kill(victim).await;
    set.restart(victim).await;
    let pods: Vec<IpAddr> = set
        .ordinals()
        .into_iter()
        .map(|i| set.ip(i).parse().expect("pod IPs are IP addresses"))
        .collect();
    let failed = poll(
        "lookups by the pods to fail",
        DEADLINE,
        Duration::from_millis(100),
        || async {
            let failed: u64 = set
                .dns()
                .failed_queries()
                .iter()
                .filter(|((from, _), _)| pods.contains(from))
                .map(|(_, f)| f.count)
                .sum();
            if failed > 0 {
                Ok(failed)
            } else {
                Err("no lookup by a pod failed yet".into())
            }
        },
    )
    .await;
    Injected {
        victim: Some(victim),
        proof: format!(
            "every lookup answered {code} at once, the harness's of {name} too; {} crashed \
             and restarted, {failed} lookups by the pods failed",
            set.pod_name(victim)
        ),
        failover: None,
    }
}

/// `raftset remove` of a follower while the workload runs. Proven: the
/// leader reports two voters, without it, and commits a write.
async fn remove_member(set: &mut StatefulSet, pick: usize) -> Injected {
    let victim = follower(set, pick).await;
    let (leader, before) = confirmed_leader(set).await;
    let id = set.status(victim).await.expect("the victim's status").id;
    let id_arg = format!("{id:016x}");
    set.exec_ok(leader, &["raftset", "remove", &id_arg]).await;
    let others: Vec<usize> = set
        .ordinals()
        .into_iter()
        .filter(|&i| i != victim)
        .collect();
    let members = set.wait_for_voters_among(&others, 2).await;
    assert!(
        members
            .members
            .iter()
            .all(|m| m.member.as_ref().is_some_and(|m| m.id != id)),
        "fault did not happen: {id} is still a member: {members:?}"
    );
    let what = format!("node {id:016x} removed, 2 voters");
    prove_the_rest_go_on(set, victim, &before, Instant::now(), &what).await
}

/// Undoes `fault` on `victim` as Kubernetes would.
async fn heal(set: &mut StatefulSet, fault: Fault, victim: usize) {
    match fault {
        // The kubelet restarts the crashed container.
        Fault::LeaderKill | Fault::RandomKill => set.restart(victim).await,
        Fault::MinorityPartition | Fault::LeaderPartition => set.heal(victim).await,
        Fault::Pause => set.unpause(victim).await,
        // DNS answers again; the pod was restarted already.
        Fault::DnsOutage => set.dns().set_outage(None),
        Fault::RollingRestart | Fault::FullStopLostVolume | Fault::FastScaleDown => {
            unreachable!("{fault:?} hits every pod and heals itself")
        }
        // Either path ends with the member back under a new node id:
        // - the pod is deleted; it comes back on its volume, finds itself
        //   removed, marks its data for discarding and exits, and the
        //   kubelet starts it again, empty;
        // - or it noticed first: leaderless for a while, it asked its peers,
        //   marked its data and exited by itself, before or while the pod
        //   was deleted, and its next container starts empty.
        Fault::MembershipChange => {
            let old = set.status(victim).await.map(|s| s.id).ok();
            let name = set.pod_name(victim);
            if set.state(victim).await.running {
                set.delete_pod(victim).await;
            }
            let deadline = Instant::now() + DEADLINE;
            loop {
                let state = set.state(victim).await;
                if !state.running {
                    assert_ne!(state.exit_code, 0, "{name} exits as a failure");
                    set.restart(victim).await;
                    break;
                }
                if set.status(victim).await.is_ok_and(|s| Some(s.id) != old) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} neither exited nor came back under a new id: {state:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            set.wait_ready(victim).await;
            set.wait_for_voters(3).await;
            let new = set.status(victim).await.expect("status after rejoining").id;
            assert_ne!(Some(new), old, "{name} rejoined under a new node id");
        }
    }
}

/// Every pod ready, one leader agreed by all, three voters, every pod
/// caught up with the leader's log.
async fn recovered(set: &StatefulSet) {
    set.wait_all_ready().await;
    let (_, leader) = set.wait_for_leader_among(&set.ordinals(), None, 0).await;
    set.wait_for_voters(3).await;
    for i in set.ordinals() {
        set.wait_for_applied(i, leader.last_log_index).await;
    }
}
