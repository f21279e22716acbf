//! What a benchmark run found, as JSON (every run, for the plot and for
//! later comparisons) and as the Markdown tables the README quotes:
//! medians over the repetitions, the ratio raftset / etcd, and the issue's
//! goal for each row with whether it is met.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::driver::{Op, Outcome};
use crate::failover::{self, Observed, IN_FLIGHT};
use crate::procfs;
use crate::servers::{Binaries, Side, ELECTION_TIMEOUT_MS};
use crate::{Counters, Plan, Workload, FRESH_KEYS, SNAPSHOTS_AFTER, WORKLOADS};

/// One workload on one cluster.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    pub side: Side,
    pub rep: usize,
    pub workload: &'static str,
    pub op: Op,
    pub in_flight: usize,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub ops_per_sec: f64,
    /// CPU time of the three servers together per completed operation.
    pub server_cpu_us_per_op: f64,
    /// The kernel's share of that CPU time.
    pub server_kernel_share: f64,
    /// Thread switches in the three servers together per operation.
    pub server_switches_per_op: f64,
    /// Bytes the three servers together wrote to disk per operation.
    pub disk_bytes_per_op: f64,
    /// The load generator's own CPU per operation.
    pub client_cpu_us_per_op: f64,
    /// The share of all cores busy during the window (anything's load).
    pub machine_busy: f64,
    /// The share of all cores' time the hypervisor gave elsewhere.
    pub machine_steal: f64,
    /// The three servers' resident memory when the window closed.
    pub rss_after_bytes: u64,
    /// 1-, 5- and 15-minute load averages before and after the run.
    pub load_start: [f64; 3],
    pub load_end: [f64; 3],
    /// New leaders while the workload ran, warm-up included: the issue
    /// asks for none at full load.
    pub leader_changes: u64,
}

impl Run {
    pub fn new(
        side: Side,
        rep: usize,
        workload: Workload,
        outcome: Outcome,
        used: &Counters,
        [load_start, load_end]: [[f64; 3]; 2],
        leader_changes: u64,
    ) -> Run {
        let ops = outcome.ops.max(1) as f64;
        Run {
            side,
            rep,
            workload: workload.name,
            op: workload.op,
            in_flight: workload.in_flight,
            ops_per_sec: outcome.ops_per_sec(),
            server_cpu_us_per_op: used.servers.cpu_secs * 1e6 / ops,
            server_kernel_share: procfs::share(used.servers.kernel_cpu_secs, used.servers.cpu_secs),
            server_switches_per_op: used.servers.switches as f64 / ops,
            disk_bytes_per_op: used.servers.write_bytes as f64 / ops,
            client_cpu_us_per_op: used.client.cpu_secs * 1e6 / ops,
            machine_busy: used.machine.share(used.machine.busy),
            machine_steal: used.machine.share(used.machine.steal),
            rss_after_bytes: used.servers.rss_bytes,
            load_start,
            load_end,
            leader_changes,
            outcome,
        }
    }

    /// One line for the progress output.
    pub fn summary(&self) -> String {
        format!(
            "{:<7} {:<22} {:>8.0} ops/s  p50 {:>6.2} ms  p99 {:>6.2} ms  {} errors  {:.0} µs CPU/op  {} leader changes",
            self.side.name(),
            self.workload,
            self.ops_per_sec,
            self.outcome.p50_ms,
            self.outcome.p99_ms,
            self.outcome.errors,
            self.server_cpu_us_per_op,
            self.leader_changes
        )
    }
}

/// One fresh cluster from start to stop.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterLife {
    pub side: Side,
    pub rep: usize,
    /// The three members together, formed and empty.
    pub idle_rss_bytes: u64,
    /// Of it, their anonymous pages (see [`crate::procfs::Usage`]).
    pub idle_anon_bytes: u64,
    /// Writing every key of the key space once.
    pub preload_secs: f64,
    pub preload_in_flight: usize,
    pub preload_errors: u64,
    /// The longest single write of it (a timed-out one counts its deadline).
    pub preload_max_ms: f64,
    pub preload_first_error: Option<String>,
    pub rss_after_load_bytes: u64,
    pub disk_after_load_per_member: Vec<u64>,
    pub rss_end_bytes: u64,
    pub disk_end_per_member: Vec<u64>,
}

/// How a trial stops the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Stop {
    /// `kill -9`: a crash, which the followers notice by silence.
    #[serde(rename = "kill -9")]
    Kill,
    /// SIGTERM, as a rolling restart stops a pod: the leader hands over.
    #[serde(rename = "SIGTERM")]
    Term,
}

impl Stop {
    pub fn name(self) -> &'static str {
        match self {
            Stop::Kill => "`kill -9`",
            Stop::Term => "SIGTERM",
        }
    }
}

/// A fresh cluster whose leader was stopped under load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailoverTrial {
    pub side: Side,
    pub trial: usize,
    pub stop: Stop,
    pub in_flight: usize,
    #[serde(flatten)]
    pub observed: Observed,
}

impl FailoverTrial {
    pub fn new(side: Side, trial: usize, stop: Stop, observed: Observed) -> FailoverTrial {
        FailoverTrial {
            side,
            trial,
            stop,
            in_flight: IN_FLIGHT,
            observed,
        }
    }

    /// One line for the progress output.
    pub fn summary(&self) -> String {
        let r = &self.observed.recovery;
        format!(
            "{:<7} failover #{}: {} to member {}, first put acknowledged {}, longest pause {}, steady {}, {} failed puts, {} missed deadlines",
            self.side.name(),
            self.trial,
            self.stop.name(),
            self.observed.killed,
            after_kill(r.first_ack_ms),
            after_kill(r.longest_pause_ms),
            after_kill(r.steady_ms),
            self.observed.errors,
            self.observed.missed_deadlines
        )
    }
}

/// `--scale`: the keys written, then puts on top of them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScaleResult {
    #[serde(flatten)]
    pub life: ClusterLife,
    /// The same puts as `put`, on the same cluster before most keys were
    /// written: the fresh figure `put` is compared with.
    pub fresh_put: Run,
    pub put: Run,
    /// raftset's puts again, while every member writes a snapshot.
    pub during_snapshots: Option<SnapshotRun>,
}

/// A workload run while every member wrote a snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotRun {
    pub run: Run,
    /// From asking for the snapshots to the last one written.
    pub snapshots_secs: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub plan: Plan,
    pub command: String,
    pub machine: String,
    pub started: String,
    pub finished: String,
    pub etcd_version: String,
    pub raftset_version: String,
    pub workloads: &'static [Workload],
    pub runs: Vec<Run>,
    pub clusters: Vec<ClusterLife>,
    pub scale: Vec<ScaleResult>,
    pub failovers: Vec<FailoverTrial>,
}

impl Report {
    pub fn new(plan: Plan, binaries: &Binaries) -> anyhow::Result<Report> {
        let etcd_version = first_line_of(&binaries.etcd, &["--version"])
            .context("etcd --version: is etcd-server installed?")?
            .replace("etcd Version: ", "");
        let raftset_version = format!(
            "{}, commit {}, `{}`",
            first_line_of(&binaries.raftset, &["--version"])
                .context("raftset --version: is it built?")?,
            first_line_of(Path::new("git"), &["describe", "--always", "--dirty"])
                .unwrap_or_else(|_| "unknown".into()),
            binaries.raftset.display()
        );
        Ok(Report {
            plan,
            command: std::env::var("RAFTSET_BENCH_COMMAND")
                .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" ")),
            machine: crate::procfs::machine(),
            started: now(),
            finished: String::new(),
            etcd_version,
            raftset_version,
            workloads: WORKLOADS,
            runs: Vec::new(),
            clusters: Vec::new(),
            scale: Vec::new(),
            failovers: Vec::new(),
        })
    }

    pub fn finish(&mut self) {
        self.finished = now();
    }

    /// Writes `<mode>.json` and `<mode>.md` into `dir`; returns the latter.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join(format!("{}.json", self.plan.mode.name()));
        std::fs::write(&json, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let markdown = dir.join(format!("{}.md", self.plan.mode.name()));
        std::fs::write(&markdown, self.markdown())
            .with_context(|| format!("writing {}", markdown.display()))?;
        Ok(markdown)
    }

    /// Fails unless every run completed operations without an error and
    /// every cluster whose leader was killed took puts again.
    pub fn check(&self) -> anyhow::Result<()> {
        let lives = self
            .clusters
            .iter()
            .chain(self.scale.iter().map(|s| &s.life));
        let mut problems = Vec::new();
        for run in self.all_runs() {
            if run.outcome.ops == 0 || run.outcome.errors > 0 {
                problems.push(format!(
                    "{} #{} {}: {} ops, {} errors (first: {})",
                    run.side.name(),
                    run.rep,
                    run.workload,
                    run.outcome.ops,
                    run.outcome.errors,
                    run.outcome.first_error.as_deref().unwrap_or("none")
                ));
            }
        }
        for life in lives.filter(|l| l.preload_errors > 0) {
            problems.push(format!(
                "{} #{}: {} writes of the preload failed (first: {})",
                life.side.name(),
                life.rep,
                life.preload_errors,
                life.preload_first_error.as_deref().unwrap_or("none")
            ));
        }
        for f in &self.failovers {
            let r = &f.observed.recovery;
            if r.puts_per_sec_before == 0.0 || r.first_ack_ms.is_none() {
                problems.push(format!(
                    "{} failover #{}: {:.0} puts/s before the kill, first put after it {} \
                     (first error: {})",
                    f.side.name(),
                    f.trial,
                    r.puts_per_sec_before,
                    after_kill(r.first_ack_ms),
                    f.observed.first_error.as_deref().unwrap_or("none")
                ));
            }
        }
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
        Ok(())
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let plan = &self.plan;
        let _ = writeln!(md, "# raftset beside etcd: {} mode\n", plan.mode.name());
        let _ = writeln!(
            md,
            "`{}`, {} to {}.\n\n\
             - Machine: {}; the six servers and the load generator share its cores.\n\
             - etcd {}, Debian's `etcd-server`. {}.\n\
             - Three members of each on loopback, data on one disk, heartbeat 100 ms, election \
             timeout 1 s. One side runs at a time, on fresh clusters, alternating etcd and \
             raftset; {} repetition(s) each.\n\
             - Closed loop, one load generator (`bench/src/driver.rs`) over each side's own \
             tonic client, on connections made the same way for both (raftset's `tls::Dial`: \
             Nagle off, writes gathered), one connection per member, workers spread over them \
             (2/3 of the requests land on followers). 16 B keys over {} keys, written once before the \
             workloads; {} B values; {} s measured per workload after {} s of warm-up.\n\
             - CPU and disk per operation: the three servers' utime + stime and `write_bytes` \
             from `/proc/<pid>/stat` and `/proc/<pid>/io` over the measured window, divided by \
             the operations completed. Figures are medians over the repetitions.\n\
             - Leader changes: each member's `etcd_server_leader_changes_seen_total` or \
             `raftset_leader_changes_total` before and after each workload (warm-up \
             included); the most any member saw.\n",
            self.command,
            self.started,
            self.finished,
            self.machine,
            self.etcd_version,
            self.raftset_version,
            plan.repetitions,
            thousands(plan.keyspace as f64),
            plan.value_size,
            plan.seconds,
            plan.warmup_secs,
        );
        if !self.runs.is_empty() {
            self.headline_tables(&mut md);
        }
        if !self.scale.is_empty() {
            self.scale_table(&mut md);
        }
        self.failover_tables(&mut md);
        self.every_run(&mut md);
        if !self.failovers.is_empty() {
            self.every_failover(&mut md);
        }
        md
    }

    /// Runs of one side and workload.
    fn of<'a>(&'a self, side: Side, workload: &'a str) -> impl Iterator<Item = &'a Run> + 'a {
        self.runs
            .iter()
            .filter(move |r| r.side == side && r.workload == workload)
    }

    /// The median of `f` over one side's runs of a workload.
    fn median(&self, side: Side, workload: &str, f: impl Fn(&Run) -> f64) -> f64 {
        median(self.of(side, workload).map(f).collect())
    }

    fn headline_tables(&self, md: &mut String) {
        md.push_str(
            "| workload | etcd ops/s (p50, p99 ms) | raftset ops/s (p50, p99 ms) | raftset / etcd | goal | met |\n\
             |---|---|---|---|---|---|\n",
        );
        let cell = |side, w: &str| {
            format!(
                "{} ({:.2}, {:.1})",
                thousands(self.median(side, w, |r| r.ops_per_sec)),
                self.median(side, w, |r| r.outcome.p50_ms),
                self.median(side, w, |r| r.outcome.p99_ms),
            )
        };
        for w in WORKLOADS {
            let ops = |side| self.median(side, w.name, |r| r.ops_per_sec);
            let ratio = ops(Side::Raftset) / ops(Side::Etcd);
            let (goal, met) = self.goal(w, ratio);
            let etcd = match w.op {
                Op::Increment => format!(
                    "{} (CAS loop, {:.1} retries per op)",
                    cell(Side::Etcd, w.name),
                    self.median(Side::Etcd, w.name, |r| r.outcome.retries as f64
                        / r.outcome.ops.max(1) as f64)
                ),
                _ => cell(Side::Etcd, w.name),
            };
            let _ = writeln!(
                md,
                "| {} | {etcd} | {} | {} | {goal} | {} |",
                w.name,
                cell(Side::Raftset, w.name),
                times(ratio),
                yes_no(met)
            );
        }

        let put64 = WORKLOADS[1].name;
        let cpu = |side| self.median(side, put64, |r| r.server_cpu_us_per_op);
        let disk = |side| self.median(side, put64, |r| r.disk_bytes_per_op);
        let life = |side, f: fn(&ClusterLife) -> f64| {
            median(
                self.clusters
                    .iter()
                    .filter(|l| l.side == side)
                    .map(f)
                    .collect(),
            )
        };
        let idle = |side| life(side, |l| l.idle_rss_bytes as f64);
        let idle_anon = |side| life(side, |l| l.idle_anon_bytes as f64);
        let end_rss = |side| life(side, |l| l.rss_end_bytes as f64);
        let end_disk = |side| {
            life(side, |l| {
                l.disk_end_per_member.iter().sum::<u64>() as f64
                    / l.disk_end_per_member.len() as f64
            })
        };
        let preload = |side| life(side, |l| l.preload_secs);
        md.push_str(
            "\nPer operation, all three servers together:\n\n\
             | measure | etcd | raftset | raftset / etcd | goal | met |\n\
             |---|---|---|---|---|---|\n",
        );
        // The measure, its value for a side, how to show it, the goal, and
        // the largest ratio raftset / etcd that meets it.
        type Row<'a> = (
            &'a str,
            &'a dyn Fn(Side) -> f64,
            fn(f64) -> String,
            &'a str,
            Option<f64>,
        );
        let rows: [Row; 7] = [
            (
                "server CPU per put, 64 in flight",
                &cpu,
                micros,
                "≤ 0.4× etcd's",
                Some(0.4),
            ),
            (
                "disk bytes written per put, 64 in flight",
                &disk,
                bytes,
                "≤ etcd's",
                Some(1.0),
            ),
            (
                "idle RSS, 3 members",
                &idle,
                bytes,
                "≤ ½ of etcd's",
                Some(0.5),
            ),
            (
                "of it anonymous (heap, stacks; the rest is mostly code pages)",
                &idle_anon,
                bytes,
                "",
                None,
            ),
            (
                "RSS after the workloads, 3 members",
                &end_rss,
                bytes,
                "",
                None,
            ),
            (
                "disk per member after the workloads",
                &end_disk,
                bytes,
                "",
                None,
            ),
            (
                "time to write the key space once, 256 in flight",
                &preload,
                secs,
                "",
                None,
            ),
        ];
        for (name, value, show, goal, most) in rows {
            let (etcd, raftset) = (value(Side::Etcd), value(Side::Raftset));
            let ratio = raftset / etcd;
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {goal} | {} |",
                show(etcd),
                show(raftset),
                times(ratio),
                most.map_or("", |most| yes_no(ratio <= most))
            );
        }

        md.push_str(
            "\nEvery workload per operation (servers' CPU, the kernel's share of it, their \
             thread switches and disk writes, the load generator's CPU) and the machine's busy \
             and stolen shares:\n\n\
             | workload | server CPU µs/op etcd / raftset | of it in the kernel | thread switches/op | disk B/op etcd / raftset | load generator CPU µs/op etcd / raftset | cores busy etcd / raftset | stolen |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        for w in WORKLOADS {
            let pair = |f: fn(&Run) -> f64, show: fn(f64) -> String| {
                format!(
                    "{} / {}",
                    show(self.median(Side::Etcd, w.name, f)),
                    show(self.median(Side::Raftset, w.name, f))
                )
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                w.name,
                pair(|r| r.server_cpu_us_per_op, |v| format!("{v:.0}")),
                pair(|r| r.server_kernel_share, percent),
                pair(|r| r.server_switches_per_op, |v| format!("{v:.1}")),
                pair(|r| r.disk_bytes_per_op, |v| format!("{v:.0}")),
                pair(|r| r.client_cpu_us_per_op, |v| format!("{v:.0}")),
                pair(|r| r.machine_busy, percent),
                pair(|r| r.machine_steal, percent),
            );
        }
    }

    /// The goal for a workload, and whether the medians meet it.
    fn goal(&self, w: &Workload, ratio: f64) -> (&'static str, bool) {
        let p = |side, f: fn(&Run) -> f64| self.median(side, w.name, f);
        let p50 = |side| p(side, |r| r.outcome.p50_ms);
        let p99 = |side| p(side, |r| r.outcome.p99_ms);
        match (w.op, w.in_flight) {
            (Op::Put, 1) => (
                "p50 ≤ 0.7× etcd's",
                p50(Side::Raftset) <= 0.7 * p50(Side::Etcd),
            ),
            (Op::Put, _) => (
                "≥ 2×, p99 below etcd's",
                ratio >= 2.0 && p99(Side::Raftset) < p99(Side::Etcd),
            ),
            (Op::Get | Op::SerializableGet, _) => ("≥ 3×", ratio >= 3.0),
            (Op::Mix, _) => ("≥ 2×", ratio >= 2.0),
            (Op::Increment, _) => {
                let etcd_puts = self.median(Side::Etcd, WORKLOADS[1].name, |r| r.ops_per_sec);
                let increments = self.median(Side::Raftset, w.name, |r| r.ops_per_sec);
                ("≥ 2× etcd's put rate at 64", increments >= 2.0 * etcd_puts)
            }
        }
    }

    fn scale_table(&self, md: &mut String) {
        let by = |side| self.scale.iter().filter(move |s| s.life.side == side);
        let col = |f: &dyn Fn(&ScaleResult) -> String| {
            [Side::Etcd, Side::Raftset].map(|side| by(side).map(f).collect::<Vec<_>>().join(" / "))
        };
        let puts = |run: &Run| {
            format!(
                "{} ({:.0}, {:.0})",
                thousands(run.ops_per_sec),
                run.outcome.p99_ms,
                run.outcome.max_ms
            )
        };
        let rows: [(String, [String; 2]); 8] = [
            (
                format!(
                    "puts/s at 64 in flight on the fresh cluster, {} keys written (p99, max ms)",
                    thousands(FRESH_KEYS.min(self.plan.keyspace) as f64)
                ),
                col(&|s| puts(&s.fresh_put)),
            ),
            (
                format!(
                    "time to write {} keys ({} in flight)",
                    thousands(self.plan.keyspace as f64),
                    self.scale.first().map_or(0, |s| s.life.preload_in_flight)
                ),
                col(&|s| secs(s.life.preload_secs)),
            ),
            (
                "writes that failed while writing them (longest write)".into(),
                col(&|s| {
                    format!(
                        "{} ({})",
                        s.life.preload_errors,
                        secs(s.life.preload_max_ms / 1000.0)
                    )
                }),
            ),
            (
                "disk per member after writing them".into(),
                col(&|s| {
                    let per = &s.life.disk_after_load_per_member;
                    bytes(per.iter().sum::<u64>() as f64 / per.len().max(1) as f64)
                }),
            ),
            (
                "RSS, three members together, after writing them".into(),
                col(&|s| bytes(s.life.rss_after_load_bytes as f64)),
            ),
            (
                "puts/s at 64 in flight afterwards (p99, max ms)".into(),
                col(&|s| puts(&s.put)),
            ),
            (
                "puts/s afterwards / on the fresh cluster".into(),
                col(&|s| format!("{:.2}×", s.put.ops_per_sec / s.fresh_put.ops_per_sec)),
            ),
            (
                format!(
                    "the same while every member writes a snapshot, asked for {} s into the \
                     window (p99, max ms; the snapshots took)",
                    SNAPSHOTS_AFTER.as_secs()
                ),
                col(&|s| match &s.during_snapshots {
                    Some(d) => format!(
                        "{} ({:.0}, {:.0}; {})",
                        thousands(d.run.ops_per_sec),
                        d.run.outcome.p99_ms,
                        d.run.outcome.max_ms,
                        secs(d.snapshots_secs)
                    ),
                    None => "no such call".into(),
                }),
            ),
        ];
        md.push_str("| | etcd | raftset |\n|---|---|---|\n");
        for (name, [etcd, raftset]) in rows {
            let _ = writeln!(md, "| {name} | {etcd} | {raftset} |");
        }
    }

    /// Every workload run of any mode.
    fn all_runs(&self) -> impl Iterator<Item = &Run> {
        let during_snapshots = self
            .scale
            .iter()
            .filter_map(|s| s.during_snapshots.as_ref());
        (self.runs.iter())
            .chain(self.scale.iter().flat_map(|s| [&s.fresh_put, &s.put]))
            .chain(during_snapshots.map(|d| &d.run))
    }

    fn failover_tables(&self, md: &mut String) {
        let changes = |side| {
            self.all_runs()
                .filter(|r| r.side == side)
                .map(|r| r.leader_changes)
                .sum::<u64>()
        };
        md.push_str("\nLeader changes and failover.");
        if !self.failovers.is_empty() {
            let _ = write!(
                md,
                " Failover: on {} fresh cluster(s) per side, {IN_FLIGHT} puts in flight over \
                 all three members, `kill -9` of the leader after {} ms; each put has a {} ms \
                 deadline, and after a failure or a missed deadline its worker moves to the next \
                 member. The first put counted is the first one sent after the kill and \
                 acknowledged; steady is the first {} ms from then on in which every {} ms \
                 acknowledges at least {:.0}% of what it did before the kill. Hand-over: as many \
                 fresh clusters per side again, the same load, the leader stopped with SIGTERM \
                 as a rolling restart stops it (both sides hand leadership over then); the pause \
                 is the longest time from the signal until the steady window ends in which no \
                 put was acknowledged. Median (max) over the trials (`failover.rs`).",
                self.plan.failover_trials,
                failover::BEFORE_KILL.as_millis(),
                failover::PUT_DEADLINE.as_millis(),
                failover::RATE_WINDOW.as_millis(),
                failover::SLICE.as_millis(),
                failover::STEADY_SHARE * 100.0,
            );
        }
        md.push_str(
            "\n\n| measure | etcd | raftset | raftset / etcd | goal | met |\n\
             |---|---|---|---|---|---|\n",
        );
        if !self.failovers.is_empty() {
            let first =
                |side| self.failover_times(side, Stop::Kill, |f| f.observed.recovery.first_ack_ms);
            let steady =
                |side| self.failover_times(side, Stop::Kill, |f| f.observed.recovery.steady_ms);
            let (etcd, raftset) = (first(Side::Etcd), first(Side::Raftset));
            let ratio = raftset.median / etcd.median;
            let _ = writeln!(
                md,
                "| `kill -9` of the leader → first put acknowledged | {etcd} | {raftset} | {} | \
                 ≤ etcd's | {} |",
                times(ratio),
                yes_no(raftset.median <= etcd.median)
            );
            let (etcd, raftset) = (steady(Side::Etcd), steady(Side::Raftset));
            let _ = writeln!(
                md,
                "| `kill -9` of the leader → steady put rate again | {etcd} | {raftset} | {} |  |  |",
                times(raftset.median / etcd.median)
            );
            let pause = |side| {
                self.failover_times(side, Stop::Term, |f| f.observed.recovery.longest_pause_ms)
            };
            let (etcd, raftset) = (pause(Side::Etcd), pause(Side::Raftset));
            let _ = writeln!(
                md,
                "| SIGTERM of the leader (hand-over) → longest pause in acknowledged puts | \
                 {etcd} | {raftset} | {} | < one election timeout ({} ms), every trial | {} |",
                times(raftset.median / etcd.median),
                thousands(ELECTION_TIMEOUT_MS as f64),
                yes_no(raftset.missing == 0 && raftset.max < ELECTION_TIMEOUT_MS as f64)
            );
        }
        let (etcd, raftset) = (changes(Side::Etcd), changes(Side::Raftset));
        let _ = writeln!(
            md,
            "| leader changes during the workloads, every run | {etcd} | {raftset} |  | none | {} |",
            yes_no(raftset == 0)
        );
    }

    /// The median and max of a time the failover trials of `side` measured,
    /// and how many trials it is missing from.
    fn failover_times(
        &self,
        side: Side,
        stop: Stop,
        f: impl Fn(&FailoverTrial) -> Option<f64>,
    ) -> FailoverTimes {
        let trials: Vec<_> = (self.failovers.iter())
            .filter(|t| t.side == side && t.stop == stop)
            .collect();
        let values: Vec<f64> = trials.iter().filter_map(|t| f(t)).collect();
        FailoverTimes {
            median: median(values.clone()),
            max: values.iter().copied().fold(f64::NAN, f64::max),
            missing: trials.len() - values.len(),
        }
    }

    fn every_failover(&self, md: &mut String) {
        md.push_str(
            "\nEvery failover and hand-over trial, in the order it ran (times after the signal):\n\n\
             | side | trial | leader stopped | first put acknowledged | longest pause | steady again | puts/s before → steady | failed puts | missed deadlines |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for f in &self.failovers {
            let r = &f.observed.recovery;
            let _ = writeln!(
                md,
                "| {} | {} | member {}, {} | {} | {} | {} | {} → {} | {} | {} |",
                f.side.name(),
                f.trial,
                f.observed.killed,
                f.stop.name(),
                after_kill(r.first_ack_ms),
                after_kill(r.longest_pause_ms),
                after_kill(r.steady_ms),
                thousands(r.puts_per_sec_before),
                r.puts_per_sec_after.map_or("–".into(), thousands),
                f.observed.errors,
                f.observed.missed_deadlines,
            );
        }
    }

    fn every_run(&self, md: &mut String) {
        md.push_str(
            "\nEvery run, in the order it ran (load average: 1 min at start → 1 min at end, \
             with 5 and 15 min at the end):\n\n\
             | side | rep | workload | ops/s | p50 ms | p99 ms | max ms | errors | leader changes | server CPU µs/op | disk B/op | cores busy | load average |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in self.all_runs() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {} | {} | {:.0} | {:.0} | {:.0}% | {:.2} → {:.2} ({:.2}, {:.2}) |",
                r.side.name(),
                r.rep,
                r.workload,
                thousands(r.ops_per_sec),
                r.outcome.p50_ms,
                r.outcome.p99_ms,
                r.outcome.max_ms,
                r.outcome.errors,
                r.leader_changes,
                r.server_cpu_us_per_op,
                r.disk_bytes_per_op,
                r.machine_busy * 100.0,
                r.load_start[0],
                r.load_end[0],
                r.load_end[1],
                r.load_end[2],
            );
        }
    }
}

/// A failover time over one side's trials, shown as `1234 ms (1500 ms)`.
struct FailoverTimes {
    median: f64,
    max: f64,
    /// Trials that never reached it.
    missing: usize,
}

impl std::fmt::Display for FailoverTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} ms ({:.0} ms)", self.median, self.max)?;
        if self.missing > 0 {
            write!(f, ", not reached in {}", self.missing)?;
        }
        Ok(())
    }
}

/// `1234 ms`, or what the trial did not see.
fn after_kill(ms: Option<f64>) -> String {
    ms.map_or("not seen".into(), |ms| format!("{ms:.0} ms"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

fn yes_no(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "no"
    }
}

/// `12,345`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn times(ratio: f64) -> String {
    format!("{ratio:.2}×")
}

fn micros(value: f64) -> String {
    format!("{value:.0} µs")
}

fn secs(value: f64) -> String {
    format!("{value:.1} s")
}

/// Bytes in KiB, MB or GB, as the issue writes them.
fn bytes(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.2} GB", v / 1e9),
        v if v >= 1e6 => format!("{:.1} MB", v / 1e6),
        v => format!("{:.1} KiB", v / 1024.0),
    }
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string()
}

/// The first line `program args` prints.
fn first_line_of(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new(program).args(args).output()?;
    anyhow::ensure!(output.status.success(), "{} failed", program.display());
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_numbers() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert!(median(vec![]).is_nan());
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(bytes(3481.6), "3.4 KiB");
        assert_eq!(bytes(80_500_000.0), "80.5 MB");
    }
}
