//! The fault campaign (Jepsen-style): concurrent clients (`workload`) run
//! register reads, writes and compare-and-swaps, counter increments and set
//! adds against every pod while the nemesis (`nemesis`) injects, one after
//! the other, in an order and with timings drawn from a printed seed: leader
//! kill, random kill, minority partition, leader partition, pause, rolling
//! restart, a membership change, a full stop in which pod 0's volume is
//! lost, and a DNS outage (every lookup failing fast with SERVFAIL or
//! REFUSED) while a pod restarts. Every fault is proven to have happened.
//!
//! Pass criteria: the register history is linearizable
//! (`linearizability::check`), no acknowledged add is missing and no failed
//! one present, the counter lies between the acknowledged increments and
//! those plus the unknown ones, the cluster recovers after every fault, and
//! every member's `raftset verify` agrees.
//!
//! `RAFTSET_E2E_SEED=<n>` replays a schedule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::nemesis::{self, Fault, Step};
use super::workload::{Workload, REGISTERS};
use super::{secs, table, verify_everywhere};
use crate::support::history::Recorder;
use crate::support::linearizability::{self, OkValue, Op, Verdict};
use crate::support::statefulset::{exclusive, StatefulSet};
use crate::support::Harness;
use crate::support::{poll, DEADLINE};

const CLIENTS: u64 = 4;

fn seed() -> u64 {
    match std::env::var("RAFTSET_E2E_SEED") {
        Ok(s) => s.parse().expect("RAFTSET_E2E_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// Every fault once, in an order and with timings drawn from `seed`.
fn schedule(seed: u64) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Fault::ALL.to_vec();
    faults.shuffle(&mut rng);
    faults
        .into_iter()
        .map(|fault| Step {
            fault,
            settle: Duration::from_millis(rng.random_range(500..=1500)),
            hold: Duration::from_millis(rng.random_range(1500..=3000)),
            pick: rng.random_range(0..3),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_campaign_is_linearizable() {
    let _turn = exclusive().await;
    let seed = seed();
    let schedule = schedule(seed);
    println!("fault campaign: seed {seed} (replay with RAFTSET_E2E_SEED={seed})");
    for (n, step) in schedule.iter().enumerate() {
        println!("  {}. {step}", n + 1);
    }

    let started = Instant::now();
    let mut set = StatefulSet::new("faults").await;
    set.create().await;
    set.wait_for_voters(3).await;
    let deployed = started.elapsed();

    let recorder = Arc::new(Recorder::new());
    let workload = Workload::start(CLIENTS, set.endpoints(), recorder.clone(), seed);
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
        let row = nemesis::run(&mut set, step, &recorder).await;
        println!("  done: {} — {}", row.scenario, row.proof);
        rows.push(row);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ledger = workload.stop().await;

    let leader = set.leader().await;
    let mut reader = set.connect(leader, Duration::from_secs(10)).await.unwrap();
    // Final linearizable reads join the history.
    for key in REGISTERS {
        let invoke = recorder.now();
        let result = reader.get(key).await;
        assert!(result.is_ok(), "final read of {key:?}: {result:?}");
        recorder.record_result(CLIENTS + 100, key, Op::Read, invoke, &result, |kv| {
            OkValue::Read(kv.as_ref().map(|kv| kv.value.clone()))
        });
    }
    let ledger_check = ledger.check(&mut reader).await;
    let verify = verify_everywhere(&set).await;

    let history = recorder.history();
    let check_started = Instant::now();
    let verdict = tokio::task::spawn_blocking(move || {
        linearizability::check(&history, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let check_time = check_started.elapsed();

    let total = recorder.tally();
    let recovery_max = rows.iter().map(|r| r.recovery).max().unwrap_or_default();
    let mut cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let failover = r
                .failover
                .map(|f| format!("leader in {}, ", secs(f)))
                .unwrap_or_default();
            vec![
                r.scenario.clone(),
                r.operations.to_string(),
                r.faults.clone(),
                r.proof.clone(),
                format!("{failover}healed in {}", secs(r.recovery)),
            ]
        })
        .collect();
    let verdict_text = match &verdict {
        Verdict::Linearizable => format!("linearizable (checked in {})", secs(check_time)),
        Verdict::NotLinearizable { key, .. } => {
            format!("NOT linearizable on {}", String::from_utf8_lossy(key))
        }
        Verdict::Inconclusive { key, .. } => {
            format!("inconclusive on {}", String::from_utf8_lossy(key))
        }
    };
    let ledger_text = match &ledger_check {
        Ok(summary) => summary.clone(),
        Err(problem) => format!("FAILED: {problem}"),
    };
    cells.push(vec![
        format!("campaign (seed {seed})"),
        total.to_string(),
        format!("{} faults", rows.len()),
        format!(
            "{verdict_text}; {ledger_text}; verify agrees at index {}",
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
                "result (proof)",
                "recovery time"
            ],
            &cells
        )
    );

    assert_eq!(
        verdict,
        Verdict::Linearizable,
        "the history (seed {seed}) is not linearizable"
    );
    if let Err(problem) = ledger_check {
        panic!("seed {seed}: {problem}");
    }
    for row in &rows {
        assert!(
            row.operations.ok > 0,
            "the workload made no progress during {}: {}",
            row.scenario,
            row.operations
        );
    }
    assert!(
        !ledger.adds_acknowledged.is_empty() && ledger.increments_acknowledged > 0,
        "some adds and increments were acknowledged: {ledger:?}"
    );
}
