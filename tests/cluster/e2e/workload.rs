//! The fault campaign's clients: each runs reads, writes and
//! compare-and-swaps on a few registers (every written value unique, so the
//! history can be checked), increments of one counter and adds of unique
//! members to a set, on one pod at a time, moving to the next pod after an
//! error as a client with an endpoint list does.
//!
//! Register operations go to the history [`Recorder`]; what the counter and
//! the set must hold at the end is tallied in [`Ledger`] and checked by
//! [`Ledger::check`].
//!
//! [`Writers`] is a plainer load for crash and restart tests: unique keys as
//! fast as the cluster takes them, every acknowledged one checked at the end.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftset::client::Consistency;
use raftset::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::history::{classify, ErrorClass, Recorder};
use crate::support::linearizability::{OkValue, Op, Outcome};
use crate::support::statefulset::{Endpoints, StatefulSet};
use crate::support::Harness;
use crate::support::{poll, DEADLINE};

pub const REGISTERS: [&[u8]; 3] = [b"reg/a", b"reg/b", b"reg/c"];
const SET_PREFIX: &str = "set/";
const COUNTER: &[u8] = b"counter";
/// A client's deadline per call: past it, a write's outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);

/// What the clients learned about the operations the history does not hold.
#[derive(Debug, Default)]
pub struct Ledger {
    pub adds_acknowledged: Vec<String>,
    pub adds_failed: Vec<String>,
    pub adds_unknown: usize,
    pub increments_acknowledged: i64,
    pub increments_failed: i64,
    pub increments_unknown: i64,
}

impl Ledger {
    fn merge(&mut self, other: Ledger) {
        self.adds_acknowledged.extend(other.adds_acknowledged);
        self.adds_failed.extend(other.adds_failed);
        self.adds_unknown += other.adds_unknown;
        self.increments_acknowledged += other.increments_acknowledged;
        self.increments_failed += other.increments_failed;
        self.increments_unknown += other.increments_unknown;
    }

    /// Reads the set and the counter through `reader` (linearizably) and
    /// says what is wrong: an acknowledged add missing, a definitely failed
    /// add present, or a counter outside `[acknowledged, acknowledged +
    /// unknown]` increments.
    pub async fn check(&self, reader: &mut Client) -> Result<String, String> {
        let present = keys_under(reader, SET_PREFIX).await?;
        let counter = match reader.get(COUNTER).await {
            Ok(Some(kv)) => String::from_utf8_lossy(&kv.value)
                .parse::<i64>()
                .map_err(|e| format!("the counter is not a number: {e}"))?,
            Ok(None) => 0,
            Err(e) => return Err(format!("reading the counter: {e}")),
        };
        let lost: Vec<&String> = self
            .adds_acknowledged
            .iter()
            .filter(|k| !present.contains(*k))
            .collect();
        let resurrected: Vec<&String> = self
            .adds_failed
            .iter()
            .filter(|k| present.contains(*k))
            .collect();
        let low = self.increments_acknowledged;
        let high = low + self.increments_unknown;
        let summary = format!(
            "set: {} adds acked, {} lost, {} failed-but-present, {} unknown; counter {counter} in [{low}, {high}]",
            self.adds_acknowledged.len(),
            lost.len(),
            resurrected.len(),
            self.adds_unknown,
        );
        if !lost.is_empty() || !resurrected.is_empty() || counter < low || counter > high {
            return Err(format!(
                "{summary}; lost {lost:?}; present though failed {resurrected:?}"
            ));
        }
        Ok(summary)
    }
}

/// Every key under `prefix`, read linearizably page by page.
async fn keys_under(reader: &mut Client, prefix: &str) -> Result<BTreeSet<String>, String> {
    let mut keys = BTreeSet::new();
    let mut start = prefix.as_bytes().to_vec();
    loop {
        let page = reader
            .scan(prefix.as_bytes(), &start, 1000, Consistency::Linearizable)
            .await
            .map_err(|e| format!("scanning {prefix}: {e}"))?;
        keys.extend(
            page.kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned()),
        );
        match page.next_key {
            Some(next) => start = next,
            None => return Ok(keys),
        }
    }
}

/// Runs `clients` clients against `endpoints` until [`Workload::stop`].
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Ledger>>,
}

impl Workload {
    pub fn start(clients: u64, endpoints: Endpoints, recorder: Arc<Recorder>, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
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
        Workload { stop, tasks }
    }

    /// Stops every client after its current operation; their ledgers, merged.
    pub async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        let mut ledger = Ledger::default();
        for task in self.tasks {
            ledger.merge(task.await.expect("a client task"));
        }
        ledger
    }
}

async fn client_loop(
    id: u64,
    endpoints: Endpoints,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> Ledger {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(id.wrapping_mul(0x9e37_79b9)));
    let mut pod = PodClient::new(endpoints, id as usize, OP_TIMEOUT);
    let mut seq = 0u64;
    // The last value this client saw per register: what its CAS expects.
    let mut last: HashMap<&[u8], Option<Vec<u8>>> = HashMap::new();
    let mut ledger = Ledger::default();
    let guard = OP_TIMEOUT + Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        let Some(c) = pod.client().await else {
            continue;
        };
        seq += 1;
        let key = REGISTERS[rng.random_range(0..REGISTERS.len())];
        let value = format!("c{id}-{seq}").into_bytes();
        let roll = rng.random_range(0..100);
        let invoke = recorder.now();
        let outcome = if roll < 35 {
            let result = within(guard, c.get(key)).await;
            if let Ok(kv) = &result {
                last.insert(key, kv.as_ref().map(|kv| kv.value.clone()));
            }
            recorder.record_result(id, key, Op::Read, invoke, &result, |kv| {
                OkValue::Read(kv.as_ref().map(|kv| kv.value.clone()))
            })
        } else if roll < 55 {
            let result = within(guard, c.put(key, &value)).await;
            if result.is_ok() {
                last.insert(key, Some(value.clone()));
            }
            let op = Op::Write(value.clone());
            recorder.record_result(id, key, op, invoke, &result, |_| OkValue::Written)
        } else if roll < 75 {
            let expected = last.get(key).cloned().flatten();
            let result = within(
                guard,
                c.compare_and_swap(key, expected.as_deref(), Some(&value)),
            )
            .await;
            if result.is_ok() {
                last.insert(key, Some(value.clone()));
            }
            let op = Op::Cas {
                expected,
                new: value.clone(),
            };
            recorder.record_result(id, key, op, invoke, &result, |_| OkValue::CasResult(true))
        } else if roll < 88 {
            let member = format!("{SET_PREFIX}c{id}-{seq}");
            let outcome = outcome_of(&within(guard, c.put(member.as_bytes(), b"1")).await);
            match outcome {
                Outcome::Ok(_) => ledger.adds_acknowledged.push(member),
                Outcome::Fail => ledger.adds_failed.push(member),
                Outcome::Unknown => ledger.adds_unknown += 1,
            }
            outcome
        } else {
            let outcome = outcome_of(&within(guard, c.increment(COUNTER, 1)).await);
            match outcome {
                Outcome::Ok(_) => ledger.increments_acknowledged += 1,
                Outcome::Fail => ledger.increments_failed += 1,
                Outcome::Unknown => ledger.increments_unknown += 1,
            }
            outcome
        };
        if !matches!(outcome, Outcome::Ok(_)) {
            pod.move_on();
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..=5))).await;
    }
    ledger
}

/// Writers that put unique keys under `prefix` as fast as the cluster takes
/// them, each on one pod, moving on after an error.
pub struct Writers {
    stop: Arc<AtomicBool>,
    /// Writes acknowledged so far, by all writers.
    acknowledged: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Written>>,
}

/// What the writers learned.
#[derive(Debug, Default)]
pub struct Written {
    pub acknowledged: BTreeSet<String>,
    pub failed: BTreeSet<String>,
    pub unknown: usize,
}

impl Writers {
    pub fn start(set: &StatefulSet, prefix: &str, writers: usize, value_size: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let endpoints = set.endpoints();
        let tasks = (0..writers)
            .map(|w| {
                let stop = stop.clone();
                let acknowledged = acknowledged.clone();
                let endpoints = endpoints.clone();
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let value = vec![b'x'; value_size];
                    let mut written = Written::default();
                    let mut pod = PodClient::new(endpoints, w, Duration::from_secs(3));
                    let mut seq = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let Some(c) = pod.client().await else {
                            continue;
                        };
                        seq += 1;
                        let key = format!("{prefix}{w:02}-{seq:08}");
                        let result =
                            within(Duration::from_secs(4), c.put(key.as_bytes(), &value)).await;
                        match outcome_of(&result) {
                            Outcome::Ok(_) => {
                                acknowledged.fetch_add(1, Ordering::SeqCst);
                                written.acknowledged.insert(key);
                            }
                            Outcome::Fail => {
                                written.failed.insert(key);
                            }
                            Outcome::Unknown => written.unknown += 1,
                        }
                        if result.is_err() {
                            pod.move_on();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    written
                })
            })
            .collect();
        Writers {
            stop,
            acknowledged,
            tasks,
        }
    }

    /// Waits until the writers got `n` writes acknowledged in all.
    pub async fn until_acknowledged(&self, n: usize) {
        poll(
            &format!("{n} acknowledged writes"),
            DEADLINE,
            Duration::from_millis(100),
            || async {
                let got = self.acknowledged();
                if got >= n {
                    Ok(())
                } else {
                    Err(format!("{got}"))
                }
            },
        )
        .await
    }

    /// Writes acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::SeqCst)
    }

    pub async fn stop(self) -> Written {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Written::default();
        for task in self.tasks {
            let w = task.await.expect("a writer");
            all.acknowledged.extend(w.acknowledged);
            all.failed.extend(w.failed);
            all.unknown += w.unknown;
        }
        all
    }
}

/// Every acknowledged write present, no definitely failed one, read
/// through the leader.
pub async fn nothing_lost(set: &StatefulSet, prefix: &str, written: &Written) -> usize {
    let leader = set.leader().await;
    let mut reader = set.connect(leader, Duration::from_secs(20)).await.unwrap();
    let present = keys_under(&mut reader, prefix).await.expect("scan");
    let lost: Vec<&String> = written.acknowledged.difference(&present).collect();
    let resurrected: Vec<&String> = written.failed.intersection(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        resurrected.is_empty(),
        "writes that failed definitely are present: {resurrected:?}"
    );
    present.len()
}

/// A client of one pod at a time, as a client with an endpoint list is:
/// after an error it moves on to the next pod, on a fresh connection.
struct PodClient {
    endpoints: Endpoints,
    target: usize,
    client: Option<Client>,
    timeout: Duration,
}

impl PodClient {
    /// Starts at the `first`th pod; calls give up after `timeout`.
    fn new(endpoints: Endpoints, first: usize, timeout: Duration) -> PodClient {
        PodClient {
            endpoints,
            target: first,
            client: None,
            timeout,
        }
    }

    /// The connected client, connecting first if needed; none (after a
    /// pause, with the next pod lined up) if the pod cannot be reached.
    async fn client(&mut self) -> Option<&mut Client> {
        if self.client.is_none() {
            let endpoint = self.endpoints.nth(self.target).unwrap_or_default();
            let connect = self.endpoints.connect(&endpoint);
            match tokio::time::timeout(Duration::from_secs(2), connect).await {
                Ok(Ok(c)) => self.client = Some(c.with_timeout(self.timeout)),
                _ => {
                    self.target += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return None;
                }
            }
        }
        self.client.as_mut()
    }

    fn move_on(&mut self) {
        self.client = None;
        self.target += 1;
    }
}

/// A call bounded by the client's own guard: a call that outlives it has an
/// unknown outcome, like one past its gRPC deadline.
async fn within<T>(
    guard: Duration,
    call: impl std::future::Future<Output = Result<T, raftset::ClientError>>,
) -> Result<T, raftset::ClientError> {
    tokio::time::timeout(guard, call).await.unwrap_or_else(|_| {
        Err(raftset::ClientError::Status(
            tonic::Status::deadline_exceeded("no answer within the client's guard"),
        ))
    })
}

fn outcome_of<T>(result: &Result<T, raftset::ClientError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok(OkValue::Written),
        Err(e) => match classify(e) {
            ErrorClass::Failed => Outcome::Fail,
            ErrorClass::Unknown => Outcome::Unknown,
        },
    }
}
