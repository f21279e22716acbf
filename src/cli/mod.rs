//! The `raftset` command line: `serve` runs a node, `local` a whole cluster
//! of child processes, and the rest are client commands that talk to a
//! node over gRPC. Human-readable output by default, `--json` for scripts;
//! a failure prints one line and exits non-zero.

mod bench;
mod local;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{Client, ClientError, Consistency};
use crate::config::Config;
use crate::node::{Node, StartError};
use crate::store::StoreError;
use crate::types::VISITS_KEY;

#[derive(Debug, Parser)]
#[command(
    name = "raftset",
    version,
    about = "A replicated key-value store that runs as a StatefulSet"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log as JSON lines (level from RUST_LOG).
    #[arg(long, global = true, env = "RAFTSET_LOG_JSON")]
    pub log_json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node.
    Serve(Box<Config>),
    /// Run a cluster on this machine, one child process per node.
    Local(local::LocalArgs),
    /// Print a key's value.
    Get {
        key: String,
        /// Read this node's state without asking the leader (may be stale).
        #[arg(long)]
        serializable: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Write a key.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a key.
    Delete {
        key: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List keys in order.
    Scan {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Start at this key (the previous page's next key).
        #[arg(long, default_value = "")]
        start: String,
        /// Most keys to print (0: the server's default page).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[arg(long)]
        serializable: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the visit counter without counting a visit.
    Visits {
        #[command(flatten)]
        conn: Conn,
    },
    /// This node's id, role, term, leader, indexes and the members.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Every member with its replication progress.
    Members {
        #[command(flatten)]
        conn: Conn,
    },
    /// Add a node as a non-voting learner.
    AddLearner {
        /// The node's id (hex, as `status` prints it).
        #[arg(value_parser = parse_id)]
        id: u64,
        #[arg(long)]
        name: String,
        #[arg(long)]
        peer_addr: String,
        #[arg(long, default_value = "")]
        api_addr: String,
        #[arg(long, default_value = "")]
        http_addr: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make a learner a voter.
    Promote {
        #[arg(value_parser = parse_id)]
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a member from the cluster.
    Remove {
        #[arg(value_parser = parse_id)]
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove the members whose ordinal is at or above REPLICAS (after
    /// `kubectl scale`, where raftset may not read the StatefulSet).
    ScaleDown {
        replicas: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// A pod's preStop hook: if the StatefulSet scaled this pod away (its
    /// ordinal is at or above spec.replicas), leave the cluster before the
    /// pod stops, handing leadership over first; on any other stop, stay a
    /// member. Waits at most --timeout-secs (keep it well inside the pod's
    /// terminationGracePeriodSeconds).
    PreStop {
        /// Act on this replica count instead of reading the StatefulSet.
        #[arg(long)]
        replicas: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Move leadership to a voter (by default the most caught-up one).
    TransferLeader {
        #[arg(long, value_parser = parse_id)]
        to: Option<u64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Take a snapshot on the node now.
    Snapshot {
        #[command(flatten)]
        conn: Conn,
    },
    /// Save a consistent snapshot of the whole store to a file or stdout.
    Backup {
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Check that every member holds the same data.
    Verify {
        #[command(flatten)]
        conn: Conn,
    },
    /// Re-found the cluster on this node's data after losing a majority of
    /// its voters for good.
    ///
    /// Like etcd's --force-new-cluster: a new cluster id, this node the
    /// only voter, every entry of its log kept and committed. Refused,
    /// changing nothing, while this node and the voters that answer make a
    /// quorum, while an answering member follows a leader, when another
    /// voter re-founded the cluster already, or on a node that is no voter; it cannot tell a dead member from one it cannot
    /// reach, so first make sure the lost ones are gone. The node starts
    /// again in place and the command waits until it leads the new
    /// cluster; then bring the lost members back on empty volumes and they
    /// join (one on an old volume discards it and joins). See the README's
    /// "Losing a majority".
    ForceNewCluster {
        /// How long to wait for the node to serve the new cluster.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Seed an empty data directory from a backup; a node started on it
    /// founds a new cluster holding that data (see the README's restore steps).
    Restore {
        /// The backup file (`raftset backup --out FILE`); `-` reads stdin.
        #[arg(long)]
        from: std::path::PathBuf,
        /// The empty data directory to fill (the new pod 0's volume).
        #[arg(long, env = "RAFTSET_DATA_DIR", default_value = "/var/lib/raftset")]
        data_dir: std::path::PathBuf,
    },
    /// Load a cluster and report throughput and latency.
    Bench(bench::BenchArgs),
}

/// A node id as `status` and `members` print it: hex, with or without 0x.
fn parse_id(text: &str) -> Result<u64, String> {
    let hex = text.trim_start_matches("0x");
    u64::from_str_radix(hex, 16).map_err(|e| format!("{text:?} is not a hex node id: {e}"))
}

/// How client commands reach a node.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// A node's client gRPC address.
    #[arg(long, env = "RAFTSET_ENDPOINT", default_value = "127.0.0.1:7000")]
    pub endpoint: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
}

impl Conn {
    async fn connect(&self) -> Result<Client, ClientError> {
        Ok(Client::connect(&self.endpoint)
            .await?
            .with_timeout(Duration::from_secs(self.timeout_secs)))
    }
}

fn consistency(serializable: bool) -> Consistency {
    if serializable {
        Consistency::Serializable
    } else {
        Consistency::Linearizable
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(config) => serve(*config).await,
        Command::Local(args) => local::run(args).await,
        Command::Get {
            key,
            serializable,
            conn,
        } => {
            let kv = conn
                .connect()
                .await?
                .get_with(key.as_bytes(), consistency(serializable))
                .await?;
            match kv {
                Some(kv) => {
                    output::key_value(&kv, conn.json);
                    Ok(ExitCode::SUCCESS)
                }
                None => anyhow::bail!("key not found: {key}"),
            }
        }
        Command::Put { key, value, conn } => {
            let revision = conn
                .connect()
                .await?
                .put(key.as_bytes(), value.as_bytes())
                .await?;
            output::revision(revision, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete { key, conn } => {
            let deleted = conn.connect().await?.delete(key.as_bytes()).await?;
            output::deleted(deleted, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Scan {
            prefix,
            start,
            limit,
            serializable,
            conn,
        } => {
            let page = conn
                .connect()
                .await?
                .scan(
                    prefix.as_bytes(),
                    start.as_bytes(),
                    limit,
                    consistency(serializable),
                )
                .await?;
            output::scan(&page, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Visits { conn } => {
            let visits = match conn.connect().await?.get(VISITS_KEY).await? {
                Some(kv) => String::from_utf8_lossy(&kv.value).parse::<i64>()?,
                None => 0,
            };
            output::visits(visits, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { conn } => {
            let status = conn.connect().await?.status().await?;
            output::status(&status, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Members { conn } => {
            let members = conn.connect().await?.members().await?;
            output::members(&members, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::AddLearner {
            id,
            name,
            peer_addr,
            api_addr,
            http_addr,
            conn,
        } => {
            let request = crate::proto::AddLearnerRequest {
                id,
                name,
                peer_addr,
                api_addr,
                http_addr,
            };
            let members = conn.connect().await?.add_learner(request).await?;
            output::members(&members, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Promote { id, conn } => {
            let members = conn.connect().await?.promote(id).await?;
            output::members(&members, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Remove { id, conn } => {
            let members = conn.connect().await?.remove(id).await?;
            output::members(&members, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::ScaleDown { replicas, conn } => {
            let members = conn.connect().await?.scale_down(replicas).await?;
            output::members(&members, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::PreStop { replicas, conn } => {
            let wait = Duration::from_secs(conn.timeout_secs);
            let response = conn.connect().await?.prepare_stop(replicas, wait).await?;
            output::prepare_stop(&response, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::TransferLeader { to, conn } => {
            let status = conn.connect().await?.transfer_leader(to).await?;
            output::status(&status, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot { conn } => {
            let index = conn.connect().await?.snapshot().await?;
            output::snapshot(index, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { out, conn } => {
            backup(&conn, out.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { conn } => {
            let report = conn.connect().await?.verify().await?;
            output::verify(&report, conn.json);
            Ok(if report.agree {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::ForceNewCluster { wait_secs, conn } => {
            let forced = conn.connect().await?.force_new_cluster().await?;
            serving_as(&conn, &forced, Duration::from_secs(wait_secs)).await?;
            output::forced(&forced, conn.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { from, data_dir } => {
            let options = crate::node::store_options(&Config::default());
            let restored = if from.as_os_str() == "-" {
                crate::store::restore_from_stream(&data_dir, std::io::stdin().lock(), &options)?
            } else {
                crate::store::restore(&data_dir, &from, &options)?
            };
            println!(
                "restored {} keys at revision {} (backup of index {}) into {}; start pod 0 on it to found the new cluster",
                restored.keys,
                restored.revision,
                restored.backup_index,
                data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            bench::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Streams a backup to a file (written whole, then renamed) or stdout.
async fn backup(conn: &Conn, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stream = conn.connect().await?.backup().await?;
    let mut bytes = 0usize;
    let mut sink: Box<dyn Write> = match out {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(
            path.with_extension("partial"),
        )?)),
        None => Box::new(std::io::stdout().lock()),
    };
    while let Some(chunk) = stream.message().await? {
        sink.write_all(&chunk.data)?;
        bytes += chunk.data.len();
    }
    sink.flush()?;
    drop(sink);
    if let Some(path) = out {
        std::fs::rename(path.with_extension("partial"), path)?;
        eprintln!("backup: {bytes} bytes written to {}", path.display());
    }
    Ok(())
}

/// Waits until the node that was forced into a new cluster starts again
/// and leads it.
async fn serving_as(
    conn: &Conn,
    forced: &crate::proto::ForceNewClusterResponse,
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = String::from("not asked yet");
    while tokio::time::Instant::now() < deadline {
        match conn.connect().await {
            Ok(mut client) => match client.status().await {
                Ok(s) if s.cluster_id == forced.cluster_id && s.leader_id == Some(forced.id) => {
                    return Ok(())
                }
                Ok(s) => last = format!("cluster {:?}, leader {:?}", s.cluster_id, s.leader_id),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!(
        "the re-founding of cluster {} is recorded, but the node does not lead it after {wait:?} (last seen: {last}); \
         it completes on the node's next start: read its log",
        forced.cluster_id
    )
}

/// How long a node that failed may take to shut down before it just exits.
const FATAL_SHUTDOWN: Duration = Duration::from_secs(10);

/// Runs one node until SIGTERM or Ctrl-C, then shuts it down in order. A
/// node that stops by itself (a storage failure) exits non-zero; one that
/// stops to start again (a forced re-founding) is started again in place.
async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(e @ StartError::Store(StoreError::Corrupted { .. })) => anyhow::bail!(
            "{e}\nthis node cannot start from its volume; the README's \"A node that will not start\" says how to bring it back"
        ),
        Err(e) => return Err(e.into()),
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM; shutting down"),
        stop = node.stopped() => {
            if stop.restart {
                tracing::warn!("starting again: {}", stop.reason);
            } else {
                tracing::error!("stopping: {}", stop.reason);
            }
            // After a storage failure a part of the node may be stuck in
            // I/O that never returns; the process must still end, so that
            // the kubelet restarts it. What is durable is already on disk.
            if tokio::time::timeout(FATAL_SHUTDOWN, node.shutdown()).await.is_err() {
                tracing::error!("shutdown did not finish within {FATAL_SHUTDOWN:?}; exiting");
            }
            if stop.restart {
                return Err(start_again());
            }
            std::process::exit(1);
        }
    }
    node.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Replaces this process with a fresh `raftset` on the same command line
/// and environment: the same process id, so a pod's container, an `exec`
/// session in it and a supervisor all stay; every file (sled's lock too)
/// is closed first. Returns only if that failed.
fn start_again() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return anyhow::anyhow!("cannot find this program to start it again: {e}"),
    };
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::anyhow!("cannot start {} again: {err}", exe.display())
}
