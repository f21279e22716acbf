//! `raftset bench`: a closed-loop load generator. It keeps `--in-flight`
//! requests outstanding against the given endpoints for `--seconds`, then
//! prints throughput and latency percentiles.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::json;

use super::conn::{Format, Output};
use crate::client::{Client, Consistency};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Workload {
    /// Durable writes of distinct keys.
    Put,
    /// Linearizable reads of one key.
    Get,
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
    /// `-o json|yaml`; `wide` prints as `table`.
    #[command(flatten)]
    pub output: Output,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for endpoint in &args.endpoints {
        clients.push(Client::connect(endpoint).await?);
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
        let workload = args.workload;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let result = match workload {
                    Workload::Put => {
                        let key = format!("bench/{worker}/{n}");
                        client.put(key.as_bytes(), &value).await.map(|_| ())
                    }
                    Workload::Get => client
                        .get_with(b"bench/get", Consistency::Linearizable)
                        .await
                        .map(|_| ()),
                    Workload::Increment => client.increment(b"bench/counter", 1).await.map(|_| ()),
                };
                n += 1;
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
