//! The one closed-loop load generator both sides run through. A side is a
//! [`Store`]: how to put, get and increment with its own client. Everything
//! else — the workers, the keys, the values, the measurement window, the
//! latency percentiles — is this file's, so neither side is favoured.
//!
//! `in_flight` workers each keep one request outstanding; worker `w` uses
//! connection `w % connections`, one connection per member, so requests
//! spread over every member as a Service spreads clients (2/3 of them land
//! on followers).

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

/// What one side must offer the driver. Each call is one request as that
/// side's users would make it; an error counts as a failed operation.
pub trait Store: Clone + Send + Sync + 'static {
    fn put(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// A read of `key`: linearizable, or `serializable` (the member's own
    /// state, possibly stale).
    fn get(
        &mut self,
        key: Vec<u8>,
        serializable: bool,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Adds one to the decimal counter at `key`. Returns how many attempts
    /// lost a race and were made again (a compare-and-swap loop's retries).
    fn increment(&mut self, key: Vec<u8>) -> impl Future<Output = anyhow::Result<u64>> + Send;
}

/// What a worker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Put,
    Get,
    SerializableGet,
    /// 90% linearizable gets, 10% puts.
    Mix,
    /// One counter, incremented by every worker.
    Increment,
}

/// The key and value shape every workload uses.
#[derive(Debug, Clone, Copy)]
pub struct Data {
    /// Keys are drawn uniformly from this many.
    pub keyspace: u64,
    pub value_size: usize,
}

/// Key `i`: 16 bytes, `bench/` and ten digits.
pub fn key(i: u64) -> Vec<u8> {
    format!("bench/{i:010}").into_bytes()
}

/// The counter the increment workload raises.
pub const COUNTER_KEY: &[u8] = b"bench/counter";

/// One measured run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    /// Length of the measurement window.
    pub seconds: f64,
    /// Operations completed in the window.
    pub ops: u64,
    pub errors: u64,
    /// The first error seen, to say why a run failed.
    pub first_error: Option<String>,
    /// Compare-and-swap attempts that lost and were made again.
    pub retries: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Outcome {
    pub fn ops_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Runs `op` from `in_flight` workers over `stores` for `warmup` (not
/// counted) and then `length` (counted). Calls `on_window(true)` when the
/// window opens and `on_window(false)` when it closes, so the caller reads
/// its counters at the instants the driver starts and stops counting.
pub async fn drive<S: Store>(
    stores: &[S],
    op: Op,
    in_flight: usize,
    data: Data,
    warmup: Duration,
    length: Duration,
    mut on_window: impl FnMut(bool),
) -> Outcome {
    let shared = Arc::new(Shared::default());
    let value = vec![b'x'; data.value_size];
    let mut workers = Vec::with_capacity(in_flight);
    for w in 0..in_flight {
        let mut store = stores[w % stores.len()].clone();
        let (shared, value) = (shared.clone(), value.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut rng = rand::rngs::StdRng::from_os_rng();
            while !shared.stop.load(Ordering::Relaxed) {
                let k = key(rng.random_range(0..data.keyspace));
                let write = op == Op::Put || (op == Op::Mix && rng.random_range(0..10) == 0);
                let began = Instant::now();
                let result = match op {
                    Op::Increment => store.increment(COUNTER_KEY.to_vec()).await,
                    _ if write => store.put(k, value.clone()).await.map(|()| 0),
                    _ => store.get(k, op == Op::SerializableGet).await.map(|()| 0),
                };
                if !shared.measuring.load(Ordering::Relaxed) {
                    continue;
                }
                match result {
                    Ok(retries) => {
                        latencies_us.push(began.elapsed().as_micros() as u32);
                        shared.retries.fetch_add(retries, Ordering::Relaxed);
                    }
                    Err(e) => shared.failures.record(e),
                }
            }
            latencies_us
        }));
    }
    tokio::time::sleep(warmup).await;
    on_window(true);
    shared.measuring.store(true, Ordering::Relaxed);
    let opened = Instant::now();
    tokio::time::sleep(length).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let seconds = opened.elapsed().as_secs_f64();
    on_window(false);
    shared.stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap_or_default());
    }
    latencies.sort_unstable();
    let percentile = |p: f64| match latencies.len() {
        0 => 0.0,
        n => latencies[((n as f64 * p) as usize).min(n - 1)] as f64 / 1000.0,
    };
    let (errors, first_error) = shared.failures.take();
    Outcome {
        seconds,
        ops: latencies.len() as u64,
        errors,
        first_error,
        retries: shared.retries.load(Ordering::Relaxed),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        max_ms: percentile(1.0),
    }
}

/// Writes each key of `keys` once, values of `value_size` bytes, from
/// `in_flight` workers; returns how long it took, the operations that
/// failed and the longest write.
pub async fn preload<S: Store>(
    stores: &[S],
    in_flight: usize,
    keys: Range<u64>,
    value_size: usize,
) -> (Duration, Outcome) {
    let started = Instant::now();
    let shared = Arc::new(Shared::default());
    let next = Arc::new(AtomicU64::new(keys.start));
    let end = keys.end;
    let value = vec![b'x'; value_size];
    let mut workers = Vec::with_capacity(in_flight);
    for w in 0..in_flight {
        let mut store = stores[w % stores.len()].clone();
        let (shared, next, value) = (shared.clone(), next.clone(), value.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return;
                }
                let began = Instant::now();
                if let Err(e) = store.put(key(i), value.clone()).await {
                    shared.failures.record(e);
                }
                let took = began.elapsed().as_micros() as u64;
                shared.longest_us.fetch_max(took, Ordering::Relaxed);
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let took = started.elapsed();
    let (errors, first_error) = shared.failures.take();
    let outcome = Outcome {
        seconds: took.as_secs_f64(),
        ops: keys.end.saturating_sub(keys.start) - errors,
        errors,
        first_error,
        max_ms: shared.longest_us.load(Ordering::Relaxed) as f64 / 1000.0,
        ..Outcome::default()
    };
    (took, outcome)
}

/// What the workers share.
#[derive(Default)]
struct Shared {
    /// Set while the window is open: only then are results counted.
    measuring: AtomicBool,
    stop: AtomicBool,
    failures: Failures,
    retries: AtomicU64,
    /// The longest write of a preload, failed or not, in microseconds.
    longest_us: AtomicU64,
}

/// Requests that failed, counted by every worker of a load: how many, and
/// the first one's error.
#[derive(Default)]
pub struct Failures {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Failures {
    pub fn record(&self, error: anyhow::Error) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().expect("not poisoned");
        first.get_or_insert_with(|| format!("{error:#}"));
    }

    /// How many failed, and the first error; once the load is over.
    pub fn take(&self) -> (u64, Option<String>) {
        let first = self.first.lock().expect("not poisoned").take();
        (self.count.load(Ordering::Relaxed), first)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A store in memory that fails every seventh put.
    #[derive(Clone, Default)]
    struct Fake {
        calls: Arc<AtomicU64>,
        written: Arc<Mutex<BTreeSet<Vec<u8>>>>,
    }

    impl Store for Fake {
        async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
            assert_eq!((key.len(), value.len()), (16, 8));
            self.written.lock().unwrap().insert(key);
            let n = self.calls.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
            anyhow::ensure!(n % 7 != 6, "the seventh put fails");
            Ok(())
        }
        async fn get(&mut self, _: Vec<u8>, _: bool) -> anyhow::Result<()> {
            tokio::task::yield_now().await;
            Ok(())
        }
        async fn increment(&mut self, key: Vec<u8>) -> anyhow::Result<u64> {
            assert_eq!(key, COUNTER_KEY);
            tokio::task::yield_now().await;
            Ok(2)
        }
    }

    const DATA: Data = Data {
        keyspace: 100,
        value_size: 8,
    };

    #[tokio::test]
    async fn counts_only_inside_the_window() {
        let stores = [Fake::default(), Fake::default()];
        let mut opened = Vec::new();
        let ms = Duration::from_millis;
        let outcome = drive(&stores, Op::Increment, 4, DATA, ms(20), ms(50), |on| {
            opened.push(on)
        })
        .await;
        assert_eq!(opened, [true, false]);
        assert!(outcome.ops > 0 && outcome.errors == 0);
        assert_eq!(outcome.retries, 2 * outcome.ops);
        assert!(outcome.seconds >= 0.05 && outcome.p50_ms <= outcome.max_ms);
    }

    #[tokio::test]
    async fn preload_writes_each_key_once_and_counts_failures() {
        let stores = [Fake::default()];
        let (_, outcome) = preload(&stores, 3, 0..100, 8).await;
        assert_eq!(stores[0].calls.load(Ordering::Relaxed), 100);
        assert_eq!((outcome.ops, outcome.errors), (86, 14));
        assert!(outcome.first_error.unwrap().contains("seventh"));
        assert!(outcome.max_ms > 0.0);
    }

    /// `--scale` writes the key space in two parts, with a measurement
    /// between them: the second part starts where the first ended.
    #[tokio::test]
    async fn preload_writes_only_the_keys_of_its_range() {
        let stores = [Fake::default(), Fake::default()];
        let (_, outcome) = preload(&stores, 3, 40..100, 8).await;
        let written: BTreeSet<Vec<u8>> = stores
            .iter()
            .flat_map(|s| s.written.lock().unwrap().clone())
            .collect();
        assert_eq!(written, (40..100).map(key).collect());
        assert_eq!(outcome.ops + outcome.errors, 60);
    }

    #[test]
    fn keys_are_sixteen_bytes() {
        assert_eq!(key(42), b"bench/0000000042");
    }
}
