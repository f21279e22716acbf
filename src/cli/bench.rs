//! `raftset bench`: a closed-loop load generator. It keeps `--in-flight`
//! requests outstanding against the given endpoints for `--seconds`, then
//! prints throughput and latency percentiles.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::conn::{Credentials, Format, Output};
use crate::client::Consistency;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Workload {
    /// Durable writes of keys drawn from the key space.
    Put,
    /// Linearizable reads of keys drawn from the key space.
    Get,
    /// Serializable reads (this node's state, no leader round).
    SerializableGet,
    /// 90% linearizable reads, 10% writes.
    Mix,
    /// Increments of one counter.
    Increment,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Client gRPC addresses, comma-separated; requests rotate over them.
    #[arg(
        long,
        visible_alias = "endpoint",
        env = "RAFTSET_ENDPOINTS",
        value_delimiter = ',',
        default_value = super::conn::DEFAULT_ENDPOINT
    )]
    pub endpoints: Vec<String>,
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,
    /// Requests kept outstanding at once.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Value size in bytes for puts.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Keys are drawn at random from this many (16-byte keys
    /// `bench/00000042…`): a large space spreads writes over the tree, a
    /// small one makes them overwrite.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keyspace: u64,
    /// `-o json|yaml`; `wide` prints as `table`.
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub credentials: Credentials,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let connector = args.credentials.connector()?;
    let mut clients = Vec::new();
    for endpoint in &args.endpoints {
        clients.push(connector.connect(endpoint).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let value = vec![b'x'; args.value_size];
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..args.in_flight {
        let mut client = clients[worker % clients.len()].clone();
        let (stop, errors, done, value) =
            (stop.clone(), errors.clone(), done.clone(), value.clone());
        let (workload, keyspace) = (args.workload, args.keyspace);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut rng = rand::rngs::StdRng::from_os_rng();
            while !stop.load(Ordering::Relaxed) {
                let key = bench_key(rng.random_range(0..keyspace));
                let began = Instant::now();
                let request = match workload {
                    Workload::Put => Request::Write,
                    Workload::Mix if rng.random_range(0..10) == 0 => Request::Write,
                    Workload::Get | Workload::Mix => Request::Read(Consistency::Linearizable),
                    Workload::SerializableGet => Request::Read(Consistency::Serializable),
                    Workload::Increment => Request::Increment,
                };
                let result = match request {
                    Request::Write => client.put(&key, &value).await.map(|_| ()),
                    Request::Read(consistency) => {
                        client.get_with(&key, consistency).await.map(|_| ())
                    }
                    Request::Increment => client.increment(b"bench/counter", 1).await.map(|_| ()),
                };
                match result {
                    Ok(()) => {
                        latencies.push(began.elapsed());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    run_for(Duration::from_secs(args.seconds), &done, &errors).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
        latencies[index].as_secs_f64() * 1000.0
    };
    let ops = latencies.len();
    let errors = errors.load(Ordering::Relaxed);
    let throughput = ops as f64 / elapsed;
    let format = args.output.format();
    if matches!(format, Format::Json | Format::Yaml) {
        super::output::document(
            &json!({
                "workload": format!("{:?}", args.workload).to_lowercase(),
                "keyspace": args.keyspace, "value_size": args.value_size,
                "in_flight": args.in_flight, "seconds": elapsed, "ops": ops, "errors": errors,
                "ops_per_sec": throughput, "p50_ms": percentile(0.5), "p99_ms": percentile(0.99),
                "max_ms": percentile(1.0),
            }),
            format,
        );
    } else {
        println!(
            "{:?}: {ops} ok, {errors} errors in {elapsed:.1} s = {throughput:.0} ops/s at {} in flight; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            args.workload,
            args.in_flight,
            percentile(0.5),
            percentile(0.99),
            percentile(1.0)
        );
    }
    Ok(())
}

/// One request of a workload.
enum Request {
    Write,
    Read(Consistency),
    Increment,
}

/// Key `i` of the key space: 16 bytes, `bench/` and ten digits.
fn bench_key(i: u64) -> Vec<u8> {
    format!("bench/{i:010}").into_bytes()
}

/// Waits out the run. On a terminal, stderr shows the time left and the
/// requests done and failed so far, refreshed a few times a second.
async fn run_for(length: Duration, done: &AtomicU64, errors: &AtomicU64) {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        tokio::time::sleep(length).await;
        return;
    }
    let style =
        indicatif::ProgressStyle::with_template("bench [{bar:30}] {elapsed}/{duration} {msg}")
            .expect("a valid progress template");
    let bar = indicatif::ProgressBar::new(length.as_millis() as u64).with_style(style);
    let started = Instant::now();
    while started.elapsed() < length {
        let ops = done.load(Ordering::Relaxed);
        let failed = errors.load(Ordering::Relaxed);
        let rate = ops as f64 / started.elapsed().as_secs_f64().max(0.001);
        bar.set_message(format!("{ops} ok, {failed} errors, {rate:.0} ops/s"));
        bar.set_position(started.elapsed().as_millis() as u64);
        tokio::time::sleep((length - started.elapsed()).min(Duration::from_millis(200))).await;
    }
    bar.finish_and_clear();
}
