//! The first fault campaign (Jepsen-style): concurrent clients run reads,
//! writes and compare-and-swaps on three keys (every written value unique)
//! plus adds to a set of keys, recording a history, while a nemesis kills
//! the leader, cuts the leader off the network and pauses a follower, one
//! after the other in an order and with timings drawn from a printed seed.
//!
//! Every fault is proven to have happened (a run whose fault did not happen
//! fails): the killed container exited with SIGKILL and the others elected
//! a new leader; the partitioned leader was off the network, unreachable,
//! and the others elected a new leader in a later term; the paused follower
//! was frozen (its liveness probe timed out) while the leader went on
//! committing.
//!
//! Pass criteria: the history is linearizable (`linearizability::check`),
//! no acknowledged add is missing and no failed one present, every member's
//! `raftset verify` agrees, and the cluster recovers from each fault.
//!
//! `RAFTSET_E2E_SEED=<n>` replays a schedule.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftset::client::Consistency;
use raftset::Client;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{secs, table, verify_everywhere};
use crate::support::docker::{exclusive, http_get, poll, StatefulSet, DEADLINE};
use crate::support::history::{Recorder, Tally};
use crate::support::linearizability::{self, OkValue, Op, Outcome, Verdict};

const KEYS: [&[u8]; 3] = [b"reg/a", b"reg/b", b"reg/c"];
const SET_PREFIX: &str = "set/";
const CLIENTS: u64 = 4;
/// A client's deadline per call: past it, a write's outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    LeaderKill,
    LeaderPartition,
    FollowerPause,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::LeaderKill => "leader kill + restart",
            Fault::LeaderPartition => "leader partition + heal",
            Fault::FollowerPause => "follower pause + resume",
        }
    }
}

#[derive(Debug, Clone)]
struct Step {
    fault: Fault,
    /// Quiet time before the fault.
    settle: Duration,
    /// How long the fault lasts once proven.
    hold: Duration,
    /// Picks the follower to pause.
    pick: usize,
}

/// One row of the summary.
struct Row {
    scenario: String,
    operations: Tally,
    faults: String,
    result: String,
    failover: Option<Duration>,
    recovery: Duration,
}

fn seed() -> u64 {
    match std::env::var("RAFTSET_E2E_SEED") {
        Ok(s) => s.parse().expect("RAFTSET_E2E_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// What one client learned about its adds to the set.
#[derive(Default)]
struct Adds {
    acknowledged: Vec<String>,
    failed: Vec<String>,
    unknown: usize,
}

/// One client: runs operations until `stop`, on one pod at a time, moving
/// to the next pod after an error (as a client with an endpoint list does).
async fn client_loop(
    id: u64,
    endpoints: Vec<String>,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> Adds {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(id.wrapping_mul(0x9e37_79b9)));
    let mut target = id as usize % endpoints.len();
    let mut client: Option<Client> = None;
    let mut seq = 0u64;
    // The last value this client saw per key: what its CAS expects.
    let mut last: HashMap<&[u8], Option<Vec<u8>>> = HashMap::new();
    let mut adds = Adds::default();
    while !stop.load(Ordering::SeqCst) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => {
                let connect = Client::connect(&endpoints[target]);
                match tokio::time::timeout(Duration::from_secs(2), connect).await {
                    Ok(Ok(c)) => client.insert(c.with_timeout(OP_TIMEOUT)),
                    _ => {
                        target = (target + 1) % endpoints.len();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
        };
        seq += 1;
        let key = KEYS[rng.random_range(0..KEYS.len())];
        let value = format!("c{id}-{seq}").into_bytes();
        let roll = rng.random_range(0..100);
        let guard = OP_TIMEOUT + Duration::from_secs(1);
        let invoke = recorder.now();
        let outcome = if roll < 40 {
            let result = tokio::time::timeout(guard, c.get(key)).await;
            let result = result.unwrap_or_else(|_| Err(timeout_error()));
            if let Ok(kv) = &result {
                last.insert(key, kv.as_ref().map(|kv| kv.value.clone()));
            }
            recorder.record_result(id, key, Op::Read, invoke, &result, |kv| {
                OkValue::Read(kv.as_ref().map(|kv| kv.value.clone()))
            })
        } else if roll < 65 {
            let result = tokio::time::timeout(guard, c.put(key, &value)).await;
            let result = result.unwrap_or_else(|_| Err(timeout_error()));
            if result.is_ok() {
                last.insert(key, Some(value.clone()));
            }
            let op = Op::Write(value.clone());
            recorder.record_result(id, key, op, invoke, &result, |_| OkValue::Written)
        } else if roll < 85 {
            let expected = last.get(key).cloned().flatten();
            let call = c.compare_and_swap(key, expected.as_deref(), Some(&value));
            let result = tokio::time::timeout(guard, call).await;
            let result = result.unwrap_or_else(|_| Err(timeout_error()));
            if result.is_ok() {
                last.insert(key, Some(value.clone()));
            }
            let op = Op::Cas {
                expected,
                new: value.clone(),
            };
            recorder.record_result(id, key, op, invoke, &result, |_| OkValue::CasResult(true))
        } else {
            let member = format!("{SET_PREFIX}c{id}-{seq}");
            let result = tokio::time::timeout(guard, c.put(member.as_bytes(), b"1")).await;
            let result = result.unwrap_or_else(|_| Err(timeout_error()));
            let outcome = match &result {
                Ok(_) => Outcome::Ok(OkValue::Written),
                Err(e) => match crate::support::history::classify(e) {
                    crate::support::history::ErrorClass::Failed => Outcome::Fail,
                    crate::support::history::ErrorClass::Unknown => Outcome::Unknown,
                },
            };
            match outcome {
                Outcome::Ok(_) => adds.acknowledged.push(member),
                Outcome::Fail => adds.failed.push(member),
                Outcome::Unknown => adds.unknown += 1,
            }
            outcome
        };
        if !matches!(outcome, Outcome::Ok(_)) {
            // Try another pod, on a fresh connection.
            client = None;
            target = (target + 1) % endpoints.len();
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..=5))).await;
    }
    adds
}

fn timeout_error() -> raftset::ClientError {
    raftset::ClientError::Status(tonic::Status::deadline_exceeded(
        "no answer within the client's guard",
    ))
}

/// Kills the leader with SIGKILL, proves it, restarts it.
async fn leader_kill(set: &mut StatefulSet, step: &Step, recorder: &Recorder) -> Row {
    let (leader, before) = confirmed_leader(set).await;
    let name = set.pod_name(leader);
    let from = recorder.now();
    let t0 = Instant::now();
    set.kill(leader).await;

    let state = set.state(leader).await;
    assert!(
        !state.running && state.exit_code == 137,
        "fault did not happen: {name} is not dead by SIGKILL: {state:?}"
    );
    let others: Vec<usize> = set.reachable();
    let (new_leader, after) = set
        .wait_leader(&others, Some(before.id), before.term + 1)
        .await;
    let failover = t0.elapsed();
    tokio::time::sleep(step.hold).await;

    let t1 = Instant::now();
    set.restart(leader).await;
    set.wait_ready(leader).await;
    let (_, healed) = set.wait_leader(&[0, 1, 2], None, after.term).await;
    catch_up(set, leader, healed.last_log_index).await;
    let recovery = t1.elapsed();
    Row {
        scenario: format!("{} ({name})", step.fault.name()),
        operations: recorder.tally_between(from, recorder.now()),
        faults: format!("SIGKILL {name} for {}", secs(step.hold + failover)),
        result: format!(
            "proven: exit 137, {} elected in term {} (was {})",
            set.pod_name(new_leader),
            after.term,
            before.term
        ),
        failover: Some(failover),
        recovery,
    }
}

/// Disconnects the leader from the network, proves the others went on
/// without it, reconnects it.
async fn leader_partition(set: &mut StatefulSet, step: &Step, recorder: &Recorder) -> Row {
    let (leader, before) = confirmed_leader(set).await;
    let name = set.pod_name(leader);
    let from = recorder.now();
    let t0 = Instant::now();
    set.partition(leader).await;

    let state = set.state(leader).await;
    assert!(
        !state.networks.iter().any(|n| n == set.network()),
        "fault did not happen: {name} is still on the network: {state:?}"
    );
    assert!(state.running, "{name} runs on, cut off");
    let unreachable = http_get(&set.http(leader), "/healthz", Duration::from_secs(1)).await;
    assert!(
        unreachable.is_err(),
        "fault did not happen: {name} still answers: {unreachable:?}"
    );
    let others = set.reachable();
    let (new_leader, after) = set
        .wait_leader(&others, Some(before.id), before.term + 1)
        .await;
    let failover = t0.elapsed();
    tokio::time::sleep(step.hold).await;

    let t1 = Instant::now();
    set.heal(leader).await;
    set.wait_ready(leader).await;
    let (_, healed) = set.wait_leader(&[0, 1, 2], None, after.term).await;
    catch_up(set, leader, healed.last_log_index).await;
    let recovery = t1.elapsed();
    Row {
        scenario: format!("{} ({name})", step.fault.name()),
        operations: recorder.tally_between(from, recorder.now()),
        faults: format!("{name} cut off for {}", secs(step.hold + failover)),
        result: format!(
            "proven: off the network, unreachable; {} elected in term {} (was {})",
            set.pod_name(new_leader),
            after.term,
            before.term
        ),
        failover: Some(failover),
        recovery,
    }
}

/// Freezes a follower, proves it is frozen while the leader commits
/// without it, resumes it.
async fn follower_pause(set: &mut StatefulSet, step: &Step, recorder: &Recorder) -> Row {
    let (leader, _) = set.leader().await;
    let followers: Vec<usize> = set
        .reachable()
        .into_iter()
        .filter(|&i| i != leader)
        .collect();
    let follower = followers[step.pick % followers.len()];
    let name = set.pod_name(follower);
    let from = recorder.now();
    set.pause(follower).await;

    let state = set.state(follower).await;
    assert!(
        state.paused,
        "fault did not happen: {name} is not paused: {state:?}"
    );
    let probe = set.probe_live(follower).await;
    assert!(
        probe.is_err(),
        "fault did not happen: {name} answered its liveness probe while paused"
    );
    // The leader commits without it: a write through the leader succeeds.
    let mut client = set
        .client(leader, Duration::from_secs(5))
        .await
        .expect("a client of the leader");
    let probe_started = Instant::now();
    let committed = poll(
        "a write committed while a follower is paused",
        DEADLINE,
        Duration::from_millis(100),
        || {
            let mut c = client.clone();
            let name = name.clone();
            async move {
                c.put(b"nemesis/pause", name.as_bytes())
                    .await
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    let commit_time = probe_started.elapsed();
    client.get(b"nemesis/pause").await.expect("read back");
    tokio::time::sleep(step.hold).await;
    let acknowledged_while_paused = recorder.acknowledged_writes_between(from, recorder.now());

    let t1 = Instant::now();
    let target = set
        .status(leader)
        .await
        .map(|s| s.last_log_index)
        .unwrap_or(0);
    set.unpause(follower).await;
    set.wait_ready(follower).await;
    catch_up(set, follower, target).await;
    set.wait_leader(&[0, 1, 2], None, 0).await;
    let recovery = t1.elapsed();
    Row {
        scenario: format!("{} ({name})", step.fault.name()),
        operations: recorder.tally_between(from, recorder.now()),
        faults: format!("{name} frozen for {}", secs(step.hold + commit_time)),
        result: format!(
            "proven: paused, probe timed out; leader committed (revision {committed}), {acknowledged_while_paused} client writes acked meanwhile"
        ),
        failover: None,
        recovery,
    }
}

/// The leader every pod agrees on, asked once more right before the fault
/// so that the fault hits the pod that leads at that moment (leadership
/// may move on its own on a busy machine).
async fn confirmed_leader(set: &StatefulSet) -> (usize, raftset::proto::StatusResponse) {
    poll(
        "a leader that still leads when asked again",
        DEADLINE,
        Duration::from_millis(100),
        || async {
            let (leader, agreed) = set.leader().await;
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

/// Waits until pod `i` applied `index`.
async fn catch_up(set: &StatefulSet, i: usize, index: u64) {
    set.wait_applied(i, index).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_campaign_is_linearizable() {
    let _turn = exclusive().await;
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = vec![
        Fault::LeaderKill,
        Fault::LeaderPartition,
        Fault::FollowerPause,
    ];
    faults.shuffle(&mut rng);
    let schedule: Vec<Step> = faults
        .into_iter()
        .map(|fault| Step {
            fault,
            settle: Duration::from_millis(rng.random_range(1000..=2000)),
            hold: Duration::from_millis(rng.random_range(2000..=4000)),
            pick: rng.random_range(0..2),
        })
        .collect();
    println!("fault campaign: seed {seed} (replay with RAFTSET_E2E_SEED={seed})");
    for (n, s) in schedule.iter().enumerate() {
        println!(
            "  {}. after {}: {} held {}{}",
            n + 1,
            secs(s.settle),
            s.fault.name(),
            secs(s.hold),
            if s.fault == Fault::FollowerPause {
                format!(", follower #{}", s.pick)
            } else {
                String::new()
            }
        );
    }

    let started = Instant::now();
    let mut set = StatefulSet::new("faults").await;
    set.create().await;
    set.wait_voters(3).await;
    let deployed = started.elapsed();

    let recorder = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let endpoints: Vec<String> = (0..3).map(|i| set.api(i)).collect();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client_loop(
                id,
                endpoints.clone(),
                recorder.clone(),
                stop.clone(),
                seed,
            ))
        })
        .collect();
    // Until the workload runs.
    poll(
        "the workload to get going",
        DEADLINE,
        Duration::from_millis(100),
        || {
            let recorder = recorder.clone();
            async move {
                let ok = recorder.tally().ok;
                if ok >= 50 {
                    Ok(())
                } else {
                    Err(format!("{ok} operations acknowledged"))
                }
            }
        },
    )
    .await;

    let mut rows = Vec::new();
    for step in &schedule {
        tokio::time::sleep(step.settle).await;
        let row = match step.fault {
            Fault::LeaderKill => leader_kill(&mut set, step, &recorder).await,
            Fault::LeaderPartition => leader_partition(&mut set, step, &recorder).await,
            Fault::FollowerPause => follower_pause(&mut set, step, &recorder).await,
        };
        println!("  done: {} — {}", row.scenario, row.result);
        rows.push(row);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let mut adds = Adds::default();
    for w in workers {
        let a = w.await.expect("a client task");
        adds.acknowledged.extend(a.acknowledged);
        adds.failed.extend(a.failed);
        adds.unknown += a.unknown;
    }

    // The end state: all pods ready, one leader, three voters.
    set.wait_all_ready().await;
    set.wait_voters(3).await;
    let (leader, _) = set.leader().await;
    let mut reader = set.client(leader, Duration::from_secs(10)).await.unwrap();

    // Final linearizable reads join the history.
    for key in KEYS {
        let invoke = recorder.now();
        let result = reader.get(key).await;
        assert!(result.is_ok(), "final read of {key:?}: {result:?}");
        recorder.record_result(CLIENTS + 100, key, Op::Read, invoke, &result, |kv| {
            OkValue::Read(kv.as_ref().map(|kv| kv.value.clone()))
        });
    }

    // No acknowledged add lost, no failed add present.
    let mut present = BTreeSet::new();
    let mut start = SET_PREFIX.as_bytes().to_vec();
    loop {
        let page = reader
            .scan(
                SET_PREFIX.as_bytes(),
                &start,
                1000,
                Consistency::Linearizable,
            )
            .await
            .expect("scan the set");
        present.extend(
            page.kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned()),
        );
        match page.next_key {
            Some(next) => start = next,
            None => break,
        }
    }
    let lost: Vec<&String> = adds
        .acknowledged
        .iter()
        .filter(|k| !present.contains(*k))
        .collect();
    let resurrected: Vec<&String> = adds
        .failed
        .iter()
        .filter(|k| present.contains(*k))
        .collect();

    // Every member holds the same state.
    let verify = verify_everywhere(&set).await;

    // The history, checked off the async runtime.
    let history = recorder.history();
    let check_started = Instant::now();
    let verdict = tokio::task::spawn_blocking(move || {
        linearizability::check(&history, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let check_time = check_started.elapsed();

    let total = recorder.tally();
    let linearizable = verdict == Verdict::Linearizable;
    let recovery_max = rows.iter().map(|r| r.recovery).max().unwrap_or_default();
    let mut cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.scenario.clone(),
                r.operations.to_string(),
                r.faults.clone(),
                r.result.clone(),
                format!(
                    "{}{}",
                    r.failover
                        .map(|f| format!("leader in {}, ", secs(f)))
                        .unwrap_or_default(),
                    format!("healed in {}", secs(r.recovery))
                ),
            ]
        })
        .collect();
    cells.push(vec![
        format!("campaign (seed {seed})"),
        total.to_string(),
        format!("{} faults", rows.len()),
        format!(
            "{}; adds {} acked, {} lost, {} failed-but-present, {} unknown; verify agrees at index {}",
            match &verdict {
                Verdict::Linearizable => format!("linearizable (checked in {})", secs(check_time)),
                Verdict::NotLinearizable { key, .. } =>
                    format!("NOT linearizable on {}", String::from_utf8_lossy(key)),
                Verdict::Inconclusive { key, .. } =>
                    format!("inconclusive on {}", String::from_utf8_lossy(key)),
            },
            adds.acknowledged.len(),
            lost.len(),
            resurrected.len(),
            adds.unknown,
            verify["index"]
        ),
        format!("worst {}", secs(recovery_max)),
    ]);
    println!(
        "\nfault campaign summary (deployed in {}, whole run {}):\n{}\n",
        secs(deployed),
        secs(started.elapsed()),
        table(
            &[
                "scenario",
                "operations",
                "faults",
                "result",
                "recovery time"
            ],
            &cells
        )
    );

    assert!(
        linearizable,
        "the history (seed {seed}) is not linearizable: {verdict:?}"
    );
    assert!(lost.is_empty(), "acknowledged adds lost: {lost:?}");
    assert!(
        resurrected.is_empty(),
        "adds that failed definitely are present: {resurrected:?}"
    );
    assert!(total.ok > 200, "the workload made progress: {total}");
    assert!(!adds.acknowledged.is_empty(), "some adds were acknowledged");
}
