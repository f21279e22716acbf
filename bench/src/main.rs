//! `raftset-bench`: raftset beside etcd on one machine, three members each
//! on loopback, driven by one closed-loop load generator (`driver.rs`)
//! through each store's own tonic client, on connections made alike
//! (`stores.rs`). `bench/run` installs
//! etcd, builds both binaries, runs this and plots what it wrote.
//!
//! Modes: the headline workloads (the default), `--quick` (the test suite's
//! short run) and `--scale` (puts on the fresh cluster, then a million
//! keys, then the same puts on the same cluster). Every repetition
//! starts fresh clusters, one side at a time, alternating etcd and raftset,
//! so a change in the machine's other load falls on both. After the
//! workloads, the headline and quick runs kill the leader of more fresh
//! clusters under load (`failover.rs`), alternating the sides too.

mod driver;
mod failover;
mod procfs;
mod report;
mod servers;
mod stores;

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use driver::{Data, Op, Store};
use procfs::{MachineCpu, Usage};
use report::{ClusterLife, FailoverTrial, Report, Run, ScaleResult, SnapshotRun, Stop};
use servers::{Binaries, Cluster, Side};

#[derive(Debug, Parser)]
#[command(about = "raftset beside etcd: the same load generator against three members of each")]
struct Args {
    /// The test suite's run: 1 s per workload, no warm-up, one repetition,
    /// 1,000 keys. Checks that everything runs, measures nothing.
    #[arg(long, conflicts_with = "scale")]
    quick: bool,
    /// Put at 64 in flight once 100,000 keys are written, write the rest of
    /// 1,000,000 keys through every member (128 in flight), then put at 64
    /// in flight again: time, disk per member, RSS, and the puts at a
    /// million keys against the fresh cluster's. Several minutes a side.
    #[arg(long)]
    scale: bool,
    /// The raftset binary the nodes run.
    #[arg(long, default_value = "target/release/raftset")]
    raftset: PathBuf,
    /// The etcd binary the members run.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Where the members keep their data, one directory each, emptied at
    /// every start and removed at every stop.
    #[arg(long, default_value = "bench/target/clusters")]
    data_dir: PathBuf,
    /// Where the Markdown table and the JSON of every run go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Fresh clusters per side [default: 2; --quick and --scale: 1].
    #[arg(long)]
    repetitions: Option<usize>,
    /// Measured seconds per workload [default: 10; --quick: 1].
    #[arg(long)]
    seconds: Option<f64>,
    /// Keys drawn from (and preloaded) [default: 100,000; --quick: 1,000;
    /// --scale: 1,000,000].
    #[arg(long)]
    keyspace: Option<u64>,
    /// Fresh clusters per side whose leader is killed under load, and as
    /// many whose leader is stopped with SIGTERM [default: 5; --quick: 1;
    /// --scale: 0].
    #[arg(long)]
    failover_trials: Option<usize>,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
}

/// The headline workloads, in the order they run on each cluster.
pub const WORKLOADS: &[Workload] = &[
    Workload::new("put, 1 in flight", Op::Put, 1),
    Workload::new("put, 64 in flight", Op::Put, 64),
    Workload::new("put, 256 in flight", Op::Put, 256),
    Workload::new("linearizable get, 64", Op::Get, 64),
    Workload::new("serializable get, 64", Op::SerializableGet, 64),
    Workload::new("90% get / 10% put, 64", Op::Mix, 64),
    Workload::new("increment one key, 64", Op::Increment, 64),
];

/// `--scale`'s puts on the fresh cluster, once the headline's key space is
/// written: the figure its puts at a million keys are compared with, from
/// the same cluster.
const PUT_FRESH: Workload = Workload::new("put, 64 in flight, fresh cluster", Op::Put, 64);
/// The keys written before [`PUT_FRESH`], and drawn from by it: the
/// headline's key space.
pub const FRESH_KEYS: u64 = 100_000;
/// `--scale`'s puts again, while every raftset member writes a snapshot.
const PUT_DURING_SNAPSHOTS: Workload =
    Workload::new("put, 64 in flight, every member snapshotting", Op::Put, 64);
/// How long into the measured window `--scale` asks for the snapshots.
pub const SNAPSHOTS_AFTER: Duration = Duration::from_secs(1);

/// In flight while `--scale` writes its keys.
const SCALE_LOAD_IN_FLIGHT: usize = 128;
/// In flight while the preload writes the key space.
const PRELOAD_IN_FLIGHT: usize = 256;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Workload {
    pub name: &'static str,
    pub op: Op,
    pub in_flight: usize,
}

impl Workload {
    const fn new(name: &'static str, op: Op, in_flight: usize) -> Workload {
        Workload {
            name,
            op,
            in_flight,
        }
    }
}

/// What a run measures; its name is the stem of the files it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Headline,
    Quick,
    Scale,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Headline => "headline",
            Mode::Quick => "quick",
            Mode::Scale => "scale",
        }
    }
}

/// How long and how much, settled from the mode and the flags.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Plan {
    pub mode: Mode,
    pub repetitions: usize,
    pub seconds: f64,
    pub warmup_secs: f64,
    pub keyspace: u64,
    pub value_size: usize,
    pub failover_trials: usize,
}

impl Plan {
    fn of(args: &Args) -> Plan {
        let (mode, repetitions, seconds, warmup_secs, keyspace, failover_trials) = if args.quick {
            (Mode::Quick, 1, 1.0, 0.0, 1_000, 1)
        } else if args.scale {
            (Mode::Scale, 1, 10.0, 1.0, 1_000_000, 0)
        } else {
            (Mode::Headline, 2, 10.0, 1.0, 100_000, 5)
        };
        Plan {
            mode,
            repetitions: args.repetitions.unwrap_or(repetitions),
            seconds: args.seconds.unwrap_or(seconds),
            warmup_secs,
            keyspace: args.keyspace.unwrap_or(keyspace),
            value_size: args.value_size,
            failover_trials: args.failover_trials.unwrap_or(failover_trials),
        }
    }

    fn data(&self) -> Data {
        Data {
            keyspace: self.keyspace,
            value_size: self.value_size,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plan = Plan::of(&args);
    let binaries = Binaries {
        etcd: args.etcd.clone(),
        raftset: args.raftset.clone(),
    };
    let mut report = Report::new(plan, &binaries)?;
    eprintln!(
        "raftset-bench {}: {} repetition(s), {} s per workload, {} keys, {} failover trial(s); \
         etcd {}, raftset {}",
        plan.mode.name(),
        plan.repetitions,
        plan.seconds,
        plan.keyspace,
        plan.failover_trials,
        report.etcd_version,
        report.raftset_version
    );
    for rep in 1..=plan.repetitions {
        for side in [Side::Etcd, Side::Raftset] {
            let dir = args.data_dir.join(side.name());
            let cluster = Cluster::start(side, &binaries, &dir).await?;
            match side {
                Side::Etcd => {
                    let stores = cluster.etcd_stores().await?;
                    one_cluster(&plan, &cluster, &stores, rep, &mut report).await?;
                }
                Side::Raftset => {
                    let stores = cluster.raftset_stores().await?;
                    one_cluster(&plan, &cluster, &stores, rep, &mut report).await?;
                }
            }
        }
    }
    for trial in 1..=plan.failover_trials {
        for stop in [Stop::Kill, Stop::Term] {
            for side in [Side::Etcd, Side::Raftset] {
                let dir = args.data_dir.join(side.name());
                let mut cluster = Cluster::start(side, &binaries, &dir).await?;
                let observed = match side {
                    Side::Etcd => {
                        let stores = cluster.etcd_stores().await?;
                        stop_the_leader(&plan, &mut cluster, &stores, stop).await?
                    }
                    Side::Raftset => {
                        let stores = cluster.raftset_stores().await?;
                        stop_the_leader(&plan, &mut cluster, &stores, stop).await?
                    }
                };
                let trial = FailoverTrial::new(side, trial, stop, observed);
                eprintln!("  {}", trial.summary());
                report.failovers.push(trial);
            }
        }
    }
    report.finish();
    let written = report.write(&args.out)?;
    eprintln!("wrote {}", written.display());
    report.check()
}

/// Everything one fresh cluster runs in this mode.
async fn one_cluster<S: Store>(
    plan: &Plan,
    cluster: &Cluster,
    stores: &[S],
    rep: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let pids = cluster.pids();
    let idle = Usage::of(&pids)?;
    let scale = plan.mode == Mode::Scale;
    let preload_in_flight = if scale {
        SCALE_LOAD_IN_FLIGHT
    } else {
        PRELOAD_IN_FLIGHT
    };
    // At scale the puts are measured twice on the same cluster: with the
    // headline's key space written, then with all of it.
    let fresh_keys = if scale {
        FRESH_KEYS.min(plan.keyspace)
    } else {
        0
    };
    let fresh = Data {
        keyspace: fresh_keys,
        ..plan.data()
    };
    let mut load = Load::default();
    let mut fresh_put = None;
    if fresh_keys > 0 {
        load.add(write_keys(cluster, stores, preload_in_flight, 0..fresh_keys, plan, rep).await);
        let run = measure(plan, cluster, stores, PUT_FRESH, fresh, rep).await?;
        eprintln!("  {}", run.summary());
        fresh_put = Some(run);
    }
    load.add(
        write_keys(
            cluster,
            stores,
            preload_in_flight,
            fresh_keys..plan.keyspace,
            plan,
            rep,
        )
        .await,
    );
    let after_load = Usage::of(&pids)?;
    let disk_after_load = cluster.disk_per_member();
    let workloads: &[Workload] = if scale { &WORKLOADS[1..2] } else { WORKLOADS };
    let mut runs = Vec::new();
    for &workload in workloads {
        let run = measure(plan, cluster, stores, workload, plan.data(), rep).await?;
        eprintln!("  {}", run.summary());
        runs.push(run);
    }
    let life = ClusterLife {
        side: cluster.side,
        rep,
        idle_rss_bytes: idle.rss_bytes,
        idle_anon_bytes: idle.anon_bytes,
        preload_secs: load.took.as_secs_f64(),
        preload_in_flight,
        preload_errors: load.errors,
        preload_max_ms: load.max_ms,
        preload_first_error: load.first_error,
        rss_after_load_bytes: after_load.rss_bytes,
        disk_after_load_per_member: disk_after_load,
        rss_end_bytes: Usage::of(&pids)?.rss_bytes,
        disk_end_per_member: cluster.disk_per_member(),
    };
    if scale {
        let during_snapshots = match cluster.side {
            Side::Raftset => Some(measure_during_snapshots(plan, cluster, stores, rep).await?),
            Side::Etcd => None,
        };
        report.scale.push(ScaleResult {
            life,
            fresh_put: fresh_put.context("the fresh cluster's puts")?,
            put: runs.remove(0),
            during_snapshots,
        });
    } else {
        report.clusters.push(life);
        report.runs.extend(runs);
    }
    Ok(())
}

/// The keys written so far, over one or more calls of [`write_keys`].
#[derive(Default)]
struct Load {
    took: Duration,
    errors: u64,
    max_ms: f64,
    first_error: Option<String>,
}

impl Load {
    fn add(&mut self, (took, outcome): (Duration, driver::Outcome)) {
        self.took += took;
        self.errors += outcome.errors;
        self.max_ms = self.max_ms.max(outcome.max_ms);
        self.first_error = self.first_error.take().or(outcome.first_error);
    }
}

/// Writes the keys of `keys` once, saying so first.
async fn write_keys<S: Store>(
    cluster: &Cluster,
    stores: &[S],
    in_flight: usize,
    keys: Range<u64>,
    plan: &Plan,
    rep: usize,
) -> (Duration, driver::Outcome) {
    eprintln!(
        "{} #{rep}: writing keys {} to {}, {in_flight} in flight",
        cluster.side.name(),
        keys.start,
        keys.end
    );
    driver::preload(stores, in_flight, keys, plan.value_size).await
}

/// The puts of `--scale` again, with every member asked for a snapshot
/// [`SNAPSHOTS_AFTER`] into the measured window: the longest put then,
/// against the p99 of the same puts without one.
async fn measure_during_snapshots<S: Store>(
    plan: &Plan,
    cluster: &Cluster,
    stores: &[S],
    rep: usize,
) -> anyhow::Result<SnapshotRun> {
    let snapshots = async {
        tokio::time::sleep(Duration::from_secs_f64(plan.warmup_secs) + SNAPSHOTS_AFTER).await;
        cluster.snapshot_every_member().await
    };
    let (run, took) = tokio::join!(
        measure(
            plan,
            cluster,
            stores,
            PUT_DURING_SNAPSHOTS,
            plan.data(),
            rep
        ),
        snapshots
    );
    let snapshot = SnapshotRun {
        run: run?,
        snapshots_secs: took?.as_secs_f64(),
    };
    eprintln!(
        "  {}; the snapshots took {:.1} s",
        snapshot.run.summary(),
        snapshot.snapshots_secs
    );
    Ok(snapshot)
}

/// Puts through every member of `cluster` while its leader is stopped.
async fn stop_the_leader<S: Store>(
    plan: &Plan,
    cluster: &mut Cluster,
    stores: &[S],
    stop: Stop,
) -> anyhow::Result<failover::Observed> {
    failover::run(stores, plan.data(), async {
        let leader = cluster.leader().await?;
        let at = match stop {
            Stop::Kill => cluster.kill(leader)?,
            Stop::Term => cluster.terminate(leader)?,
        };
        Ok((leader, at))
    })
    .await
}

/// One workload on one cluster, with the servers' and this process's
/// counters read as the measurement window opens and closes.
async fn measure<S: Store>(
    plan: &Plan,
    cluster: &Cluster,
    stores: &[S],
    workload: Workload,
    data: Data,
    rep: usize,
) -> anyhow::Result<Run> {
    let pids = cluster.pids();
    let leaders_before = cluster.leaders_seen().await?;
    let load_start = procfs::load_average()?;
    let mut readings = Vec::new();
    let outcome = driver::drive(
        stores,
        workload.op,
        workload.in_flight,
        data,
        Duration::from_secs_f64(plan.warmup_secs),
        Duration::from_secs_f64(plan.seconds),
        |_| readings.push(Counters::read(&pids)),
    )
    .await;
    let load_end = procfs::load_average()?;
    let leader_changes = leader_changes(&leaders_before, &cluster.leaders_seen().await?);
    let mut readings = readings.into_iter();
    let (Some(Ok(before)), Some(Ok(after))) = (readings.next(), readings.next()) else {
        anyhow::bail!("cannot read the servers' counters in /proc");
    };
    Ok(Run::new(
        cluster.side,
        rep,
        workload,
        outcome,
        &before.until(&after),
        [load_start, load_end],
        leader_changes,
    ))
}

/// New leaders while a workload ran: the most any member saw, as each
/// member counts each new leader it learns of once (and one cut off from
/// the others may miss some).
fn leader_changes(before: &[u64], after: &[u64]) -> u64 {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| a.saturating_sub(*b))
        .max()
        .unwrap_or(0)
}

/// The counters read at each end of a measurement window.
pub struct Counters {
    /// The three servers together.
    pub servers: Usage,
    /// The load generator.
    pub client: Usage,
    pub machine: MachineCpu,
}

impl Counters {
    fn read(pids: &[u32]) -> anyhow::Result<Counters> {
        Ok(Counters {
            servers: Usage::of(pids).context("the servers")?,
            client: Usage::of_self()?,
            machine: procfs::machine_cpu()?,
        })
    }

    /// What happened from `self` to `later`.
    fn until(&self, later: &Counters) -> Counters {
        Counters {
            servers: later.servers.since(&self.servers),
            client: later.client.since(&self.client),
            machine: later.machine.since(&self.machine),
        }
    }
}
