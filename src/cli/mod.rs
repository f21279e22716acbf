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
use crate::http::VISITS_KEY;
use crate::node::Node;

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
    /// Load a cluster and report throughput and latency.
    Bench(bench::BenchArgs),
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
        Command::Bench(args) => {
            bench::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs one node until SIGTERM or Ctrl-C, then shuts it down in order. A
/// node that stops by itself (a storage failure) exits non-zero.
async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let node = Node::start(config).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM; shutting down"),
        reason = node.stopped() => {
            tracing::error!("stopping: {reason}");
            node.shutdown().await;
            return Ok(ExitCode::FAILURE);
        }
    }
    node.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
