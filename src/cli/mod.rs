//! The `raftset` command line: `serve` runs a node, `local` a whole cluster
//! of child processes, and the rest are client commands that talk to a
//! node over gRPC (`conn`: endpoints and failover). Tables by default,
//! `-o json|yaml` for scripts (`output`); a failure prints one line and
//! exits with a code that says what the caller can do (`exit`).

mod backup;
mod bench;
mod certs;
mod conn;
mod endpoint;
mod exit;
mod healthcheck;
mod local;
mod output;
mod tokens;

use std::ffi::{OsStr, OsString};
use std::io::{IsTerminal, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

pub use conn::{Conn, Format};
pub use exit::{CliError, Exit, EXIT_CODES_HELP};

use crate::client::Consistency;
use crate::config::Config;
use crate::node::{Node, StartError};
use crate::store::StoreError;
use crate::types::VISITS_KEY;
use exit::Op;

#[derive(Debug, Parser)]
#[command(
    name = "raftset",
    version,
    about = "A replicated key-value store that runs as a StatefulSet",
    after_help = EXIT_CODES_HELP
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
    /// Make the peer port's CA and per-pod certificates: print them as the
    /// Secret `k8s/` mounts (`raftset certs | kubectl apply -f -`), or
    /// write them to a directory (--out-dir).
    Certs(certs::CertsArgs),
    /// Make the client port's tokens, one per role (read, write, admin):
    /// print them and their hashes as the Secret `k8s/` mounts (`raftset
    /// tokens | kubectl apply -f -`), or write them to a directory
    /// (--out-dir).
    Tokens(tokens::TokensArgs),
    /// Print a key's value: its raw bytes (a newline added only on a
    /// terminal), or with -o json|yaml the key-value with base64 fields.
    Get {
        key: OsString,
        /// Read this node's state without asking the leader (may be stale).
        #[arg(long)]
        serializable: bool,
        /// A missing key prints nothing (JSON: null) and exits 0, not 3.
        #[arg(long)]
        allow_missing: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Write a key. The value is the argument, or stdin when it is omitted
    /// or `-`, or the bytes of --file.
    Put {
        key: OsString,
        value: Option<OsString>,
        /// Read the value from this file.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a key, or with --prefix every key that starts with it (a
    /// scan and a delete per key, page by page: not atomic).
    Delete {
        #[arg(required_unless_present = "prefix")]
        key: Option<OsString>,
        /// Delete every key with this prefix and print how many.
        #[arg(long, conflicts_with = "key")]
        prefix: Option<OsString>,
        /// Keys per scan page with --prefix.
        #[arg(long, default_value_t = crate::limits::DEFAULT_SCAN_LIMIT,
              value_parser = clap::value_parser!(u32).range(1..=crate::limits::MAX_SCAN_LIMIT as i64))]
        page_size: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Compare-and-swap: write NEW (or delete, --delete) only if the key
    /// holds --expect V, or is absent (--expect-absent). A lost comparison
    /// exits 4 and changes nothing.
    Cas {
        key: OsString,
        #[arg(required_unless_present = "delete")]
        new: Option<OsString>,
        /// The value the key must hold.
        #[arg(long, required_unless_present = "expect_absent")]
        expect: Option<OsString>,
        /// The key must not exist.
        #[arg(long, conflicts_with = "expect")]
        expect_absent: bool,
        /// Delete the key instead of writing NEW.
        #[arg(long, conflicts_with = "new")]
        delete: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Add to a decimal counter (a missing key counts as 0) and print the
    /// new value. A key holding anything else exits 4, unchanged.
    Incr {
        key: OsString,
        /// How much to add (may be negative).
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print every change under a prefix until Ctrl-C, one line per event
    /// (`REVISION PUT|DELETE KEY VALUE`, tab-separated; JSON lines with -o
    /// json).
    Watch {
        /// Only keys starting with this (all keys when omitted).
        #[arg(default_value = "")]
        prefix: OsString,
        /// Replay history from this revision first (0: only new changes).
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// List keys in order.
    Scan {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: OsString,
        /// Start at this key (the previous page's next key).
        #[arg(long, default_value = "")]
        start: OsString,
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
        /// Then wait, at most this many seconds, until the learner has
        /// every entry of the leader's log (a progress bar on a terminal,
        /// a line a second otherwise); exit 1 if it has not by then.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
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
    /// Save a consistent snapshot of the whole store to a file or stdout,
    /// or as a new `raftset-<UTC time>.backup` in a directory (--dir),
    /// keeping the newest N there (--keep).
    Backup {
        /// Write here instead of stdout.
        #[arg(long, conflicts_with = "dir")]
        out: Option<std::path::PathBuf>,
        /// Write a new `raftset-<UTC time>.backup` into this directory: a
        /// hidden temporary file, fsynced and read back whole, then renamed
        /// (never over an existing file).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// With --dir: then remove the oldest `raftset-<UTC time>.backup`
        /// files beyond the newest N. No other file is touched.
        #[arg(long, requires = "dir", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
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
    /// Every member at once: `endpoint status`, `endpoint health`.
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCommand),
    /// Ask the local node's HTTP probe and exit 0 if it is healthy, 8 if
    /// not (for Docker's HEALTHCHECK and docker-compose). By default the
    /// StatefulSet's readiness probe, `/readyz?noleader`: a member, caught
    /// up, with or without a leader.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Print a shell completion script: `source <(raftset completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The command tree, every subcommand's `--help` ending with the exit codes.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().mut_subcommands(|sub| sub.after_help(EXIT_CODES_HELP))
}

/// Parses the process's arguments; bad usage exits with code 2 (clap's).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
}

/// A node id as `status` and `members` print it: hex, with or without 0x.
fn parse_id(text: &str) -> Result<u64, String> {
    let hex = text.trim_start_matches("0x");
    u64::from_str_radix(hex, 16).map_err(|e| format!("{text:?} is not a hex node id: {e}"))
}

fn consistency(serializable: bool) -> Consistency {
    if serializable {
        Consistency::Serializable
    } else {
        Consistency::Linearizable
    }
}

/// An argument's bytes as the shell passed them (any bytes, not only UTF-8).
fn bytes(arg: &OsStr) -> &[u8] {
    arg.as_bytes()
}

/// `put`'s value: the argument, or stdin when it is omitted or `-`, or the
/// file's bytes.
fn read_value(value: Option<&OsStr>, file: Option<&Path>) -> Result<Vec<u8>, CliError> {
    if let Some(path) = file {
        return std::fs::read(path).map_err(|source| CliError::Input {
            what: path.display().to_string(),
            source,
        });
    }
    match value {
        Some(value) if value != "-" => Ok(bytes(value).to_vec()),
        _ => {
            let mut value = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut value)
                .map_err(|source| CliError::Input {
                    what: "the value from stdin".to_string(),
                    source,
                })?;
            Ok(value)
        }
    }
}

/// Prints a failed command's error on one line and gives its exit code.
pub fn report_failure(err: &anyhow::Error) -> ExitCode {
    let exit = exit::exit_of(err);
    let mut line = exit::one_line(err.as_ref());
    if exit == Exit::OutcomeUnknown && !line.contains("outcome unknown") {
        // A client-side timeout or a dropped connection says only that.
        line.push_str(" (outcome unknown: the write may still apply; read before retrying)");
    }
    eprintln!("error: {line}");
    exit.into()
}

impl Command {
    /// The connection of a command whose calls need the admin role: such a
    /// command goes to the node's loopback admin port unless told where.
    fn admin_conn(&mut self) -> Option<&mut Conn> {
        match self {
            Command::ForceNewCluster { conn, .. }
            | Command::AddLearner { conn, .. }
            | Command::Promote { conn, .. }
            | Command::Remove { conn, .. }
            | Command::ScaleDown { conn, .. }
            | Command::PreStop { conn, .. }
            | Command::TransferLeader { conn, .. }
            | Command::Snapshot { conn }
            | Command::Backup { conn, .. }
            | Command::Verify { conn } => Some(conn),
            _ => None,
        }
    }
}

/// Runs a parsed command line.
pub async fn run(mut cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(conn) = cli.command.admin_conn() {
        conn.admin = true;
    }
    match cli.command {
        Command::Serve(config) => serve(*config).await,
        Command::Local(args) => local::run(args).await,
        Command::Certs(args) => {
            certs::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tokens(args) => {
            tokens::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ForceNewCluster { wait_secs, conn } => {
            let forced = conn
                .call_first(
                    Op::Write,
                    |mut c| async move { c.force_new_cluster().await },
                )
                .await?;
            serving_as(&conn, &forced, Duration::from_secs(wait_secs)).await?;
            output::forced(&forced, conn.format());
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { from, data_dir } => {
            let options = crate::node::store_options(&Config::default());
            let restored = if from.as_os_str() == "-" {
                // The bytes read from stdin so far, on a terminal.
                let progress = transfer_progress("reading the backup");
                let stdin = progress.wrap_read(std::io::stdin().lock());
                let restored = crate::store::restore_from_stream(&data_dir, stdin, &options);
                progress.finish_and_clear();
                restored?
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
        Command::Healthcheck(args) => {
            healthcheck::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut command(), "raftset", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        command => Ok(client_command(command).await?.into()),
    }
}

/// Runs a command that talks to the cluster as a client.
async fn client_command(command: Command) -> Result<Exit, CliError> {
    match command {
        Command::Get {
            key,
            serializable,
            allow_missing,
            conn,
        } => {
            let key = bytes(&key);
            let found = conn
                .call(Op::Read, |mut c| async move {
                    c.get_with(key, consistency(serializable)).await
                })
                .await?;
            match found {
                Some(kv) => {
                    let terminal = std::io::stdout().is_terminal();
                    output::key_value(&kv, conn.format(), terminal).map_err(CliError::Output)?;
                }
                None if allow_missing => {
                    if matches!(conn.format(), Format::Json | Format::Yaml) {
                        output::document(&serde_json::Value::Null, conn.format());
                    }
                }
                None => {
                    return Err(CliError::KeyNotFound {
                        key: output::shown(key),
                    })
                }
            }
        }
        Command::Put {
            key,
            value,
            file,
            conn,
        } => {
            let value = read_value(value.as_deref(), file.as_deref())?;
            let (key, value) = (bytes(&key), &value);
            let revision = conn
                .call(Op::Write, |mut c| async move { c.put(key, value).await })
                .await?;
            output::revision(revision, conn.format());
        }
        Command::Delete {
            key,
            prefix,
            page_size,
            conn,
        } => match (key, prefix) {
            (_, Some(prefix)) => {
                let count = delete_prefix(&conn, bytes(&prefix), page_size).await?;
                output::deleted_count(count, conn.format());
            }
            (Some(key), None) => {
                let key = bytes(&key);
                let deleted = conn
                    .call(Op::Write, |mut c| async move { c.delete(key).await })
                    .await?;
                output::deleted(deleted, conn.format());
            }
            (None, None) => unreachable!("clap requires KEY or --prefix"),
        },
        Command::Cas {
            key,
            new,
            expect,
            expect_absent: _,
            delete: _,
            conn,
        } => {
            let key = bytes(&key);
            let (expect, new) = (expect.as_deref().map(bytes), new.as_deref().map(bytes));
            let revision = conn
                .call(Op::Write, |mut c| async move {
                    c.compare_and_swap(key, expect, new).await
                })
                .await?;
            output::revision(revision, conn.format());
        }
        Command::Incr { key, by, conn } => {
            let key = bytes(&key);
            let value = conn
                .call(Op::Write, |mut c| async move { c.increment(key, by).await })
                .await?;
            output::counter(value, conn.format());
        }
        Command::Watch {
            prefix,
            from_revision,
            conn,
        } => watch(&conn, bytes(&prefix), from_revision).await?,
        Command::Scan {
            prefix,
            start,
            limit,
            serializable,
            conn,
        } => {
            let (prefix, start) = (bytes(&prefix), bytes(&start));
            let page = conn
                .call(Op::Read, |mut c| async move {
                    c.scan(prefix, start, limit, consistency(serializable))
                        .await
                })
                .await?;
            output::scan(&page, conn.format());
        }
        Command::Visits { conn } => {
            let kv = conn
                .call(Op::Read, |mut c| async move { c.get(VISITS_KEY).await })
                .await?;
            let visits = match kv {
                None => 0,
                Some(kv) => std::str::from_utf8(&kv.value)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                    .ok_or_else(|| CliError::NotACounter {
                        value: output::shown(&kv.value),
                    })?,
            };
            output::visits(visits, conn.format());
        }
        Command::Status { conn } => {
            let status = conn
                .call(Op::Read, |mut c| async move { c.status().await })
                .await?;
            output::status(&status, conn.format());
        }
        Command::Members { conn } => {
            let members = conn
                .call(Op::Read, |mut c| async move { c.members().await })
                .await?;
            output::members(&members, conn.format());
        }
        Command::AddLearner {
            id,
            name,
            peer_addr,
            api_addr,
            http_addr,
            wait,
            conn,
        } => {
            let request = crate::proto::AddLearnerRequest {
                id,
                name,
                peer_addr,
                api_addr,
                http_addr,
            };
            let request = &request;
            let members = conn
                .call(Op::Write, |mut c| async move {
                    c.add_learner(request.clone()).await
                })
                .await?;
            let members = match wait {
                Some(secs) => wait_for_catch_up(&conn, id, Duration::from_secs(secs)).await?,
                None => members,
            };
            output::members(&members, conn.format());
        }
        Command::Promote { id, conn } => {
            let members = conn
                .call(Op::Write, |mut c| async move { c.promote(id).await })
                .await?;
            output::members(&members, conn.format());
        }
        Command::Remove { id, conn } => {
            let members = conn
                .call(Op::Write, |mut c| async move { c.remove(id).await })
                .await?;
            output::members(&members, conn.format());
        }
        Command::ScaleDown { replicas, conn } => {
            let members = conn
                .call(
                    Op::Write,
                    |mut c| async move { c.scale_down(replicas).await },
                )
                .await?;
            output::members(&members, conn.format());
        }
        Command::PreStop { replicas, conn } => {
            let wait = Duration::from_secs(conn.timeout_secs);
            let response = conn
                .call_first(Op::Write, |mut c| async move {
                    c.prepare_stop(replicas, wait).await
                })
                .await?;
            output::prepare_stop(&response, conn.format());
        }
        Command::TransferLeader { to, conn } => {
            let status = conn
                .call(
                    Op::Write,
                    |mut c| async move { c.transfer_leader(to).await },
                )
                .await?;
            output::status(&status, conn.format());
        }
        Command::Snapshot { conn } => {
            let index = conn
                .call_first(Op::Write, |mut c| async move { c.snapshot().await })
                .await?;
            output::snapshot(index, conn.format());
        }
        Command::Backup {
            dir: Some(dir),
            keep,
            conn,
            ..
        } => backup::into_dir(&conn, &dir, keep.map(|n| n as usize)).await?,
        Command::Backup {
            out,
            dir: None,
            conn,
            ..
        } => backup::to_file_or_stdout(&conn, out.as_deref()).await?,
        Command::Verify { conn } => {
            let report = conn
                .call(Op::Read, |mut c| async move { c.verify().await })
                .await?;
            output::verify(&report, conn.format());
            if !report.agree {
                return Ok(Exit::Disagree);
            }
        }
        Command::Endpoint(command) => return endpoint::run(command).await,
        Command::Serve(_)
        | Command::Local(_)
        | Command::Certs(_)
        | Command::Tokens(_)
        | Command::Restore { .. }
        | Command::Bench(_)
        | Command::ForceNewCluster { .. }
        | Command::Healthcheck(_)
        | Command::Completion { .. } => {
            unreachable!("run() handles the commands that are not a client's")
        }
    }
    Ok(Exit::Success)
}

/// `delete --prefix`: scans a page, deletes each key, and goes on from the
/// page's next key; returns how many keys it deleted. Each delete is its
/// own write, so a failure part-way says how many went before it.
async fn delete_prefix(conn: &Conn, prefix: &[u8], page_size: u32) -> Result<u64, CliError> {
    let mut deleted = 0;
    let mut start = Vec::new();
    let partial = |deleted, source| CliError::Partial {
        deleted,
        source: Box::new(source),
    };
    loop {
        let from = &start;
        let page = conn
            .call(Op::Read, |mut c| async move {
                c.scan(prefix, from, page_size, Consistency::Linearizable)
                    .await
            })
            .await
            .map_err(|e| partial(deleted, e))?;
        for kv in &page.kvs {
            let key = &kv.key;
            let existed = conn
                .call(Op::Write, |mut c| async move { c.delete(key).await })
                .await
                .map_err(|e| partial(deleted, e))?;
            deleted += u64::from(existed);
        }
        match page.next_key {
            Some(next) => start = next,
            None => return Ok(deleted),
        }
    }
}

/// `watch`: prints each event as it comes, until Ctrl-C or SIGTERM (exit
/// 0) or until the node ends the stream (an error, or exit 5).
async fn watch(conn: &Conn, prefix: &[u8], from_revision: u64) -> Result<(), CliError> {
    let mut stream = conn
        .call(Op::Read, |mut c| async move {
            c.watch(prefix, from_revision).await
        })
        .await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(CliError::Output)?;
    loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            event = stream.message() => event,
        };
        match event {
            Ok(Some(event)) => {
                output::watch_event(&event, conn.format()).map_err(CliError::Output)?
            }
            Ok(None) => return Err(CliError::WatchEnded),
            Err(status) => {
                return Err(CliError::Call {
                    op: Op::Read,
                    source: status.into(),
                })
            }
        }
    }
}

/// `add-learner --wait`: polls the leader's view until learner `id` has
/// every entry of its log, showing how far it is.
async fn wait_for_catch_up(
    conn: &Conn,
    id: u64,
    wait: Duration,
) -> Result<crate::proto::MembersResponse, CliError> {
    let deadline = tokio::time::Instant::now() + wait;
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        let style = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} entries ({elapsed})",
        )
        .expect("a valid progress template");
        indicatif::ProgressBar::new(0)
            .with_style(style)
            .with_message(format!("learner {id:016x}"))
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut last_line = tokio::time::Instant::now();
    loop {
        let members = conn
            .call(Op::Read, |mut c| async move { c.members().await })
            .await?;
        let progress = members
            .members
            .iter()
            .find(|p| p.member.as_ref().is_some_and(|m| m.id == id));
        let Some(progress) = progress else {
            return Err(CliError::NotCaughtUp {
                id,
                why: "it is no longer a member".to_string(),
            });
        };
        bar.set_length(members.last_log_index);
        bar.set_position(progress.match_index);
        if progress.lag == 0 && progress.match_index > 0 {
            bar.finish_and_clear();
            eprintln!(
                "learner {id:016x} caught up at index {}",
                progress.match_index
            );
            return Ok(members);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            bar.abandon();
            return Err(CliError::NotCaughtUp {
                id,
                why: format!("{} entries behind after {wait:?}", progress.lag),
            });
        }
        if !terminal && now.duration_since(last_line) >= Duration::from_secs(1) {
            eprintln!(
                "learner {id:016x}: {} of {} entries",
                progress.match_index, members.last_log_index
            );
            last_line = now;
        }
        tokio::time::sleep(Duration::from_millis(200).min(deadline - now)).await;
    }
}

/// A running count of bytes, their rate and the time taken, on stderr
/// while a transfer runs, when stderr is a terminal; nothing otherwise
/// (the command's one closing line is what a log or a pipe gets).
fn transfer_progress(what: &'static str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} {msg}: {bytes} ({bytes_per_sec}, {elapsed})",
    )
    .expect("a valid progress template");
    let bar = indicatif::ProgressBar::new_spinner()
        .with_style(style)
        .with_message(what);
    // Drawn at once (a short backup may end before the first steady tick).
    bar.tick();
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
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
        let status = conn
            .call_first(Op::Read, |mut c| async move { c.status().await })
            .await;
        match status {
            Ok(s) if s.cluster_id == forced.cluster_id && s.leader_id == Some(forced.id) => {
                return Ok(())
            }
            Ok(s) => last = format!("cluster {:?}, leader {:?}", s.cluster_id, s.leader_id),
            Err(e) => last = exit::one_line(&e),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        let args = std::iter::once("raftset").chain(args.iter().copied());
        use clap::FromArgMatches;
        let matches = command().try_get_matches_from(args).unwrap();
        Cli::from_arg_matches(&matches).unwrap().command
    }

    fn conn_of(command: Command) -> Conn {
        match command {
            Command::Get { conn, .. } | Command::Status { conn } => conn,
            other => panic!("not a get or status: {other:?}"),
        }
    }

    #[test]
    fn every_spelling_of_the_output_format_and_the_endpoints_parses() {
        for (args, format) in [
            (&["status"][..], Format::Table),
            (&["status", "-o", "wide"], Format::Wide),
            (&["status", "--output", "yaml"], Format::Yaml),
            (&["status", "-w", "json"], Format::Json),
            (&["status", "--json"], Format::Json),
        ] {
            assert_eq!(conn_of(parse(args)).format(), format, "{args:?}");
        }
        let conn = conn_of(parse(&["get", "k", "--endpoint", "a:1,b:2"]));
        assert_eq!(conn.endpoints, ["a:1", "b:2"]);
        let conn = conn_of(parse(&[
            "get",
            "k",
            "--endpoints",
            "a:1",
            "--endpoints",
            "c:3",
        ]));
        assert_eq!(conn.endpoints, ["a:1", "c:3"]);
        match parse(&["bench", "-o", "yaml", "--endpoint", "a:1"]) {
            Command::Bench(args) => {
                assert_eq!(args.output.format(), Format::Yaml);
                assert_eq!(args.endpoints, ["a:1"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backup_keeps_only_with_a_dir_and_at_least_one() {
        let refused = |args: &[&str]| {
            let args = std::iter::once("raftset").chain(args.iter().copied());
            command().try_get_matches_from(args).is_err()
        };
        assert!(refused(&["backup", "--keep", "2"]), "--keep needs --dir");
        assert!(refused(&["backup", "--dir", "d", "--keep", "0"]));
        assert!(refused(&["backup", "--dir", "d", "--out", "f"]));
        match parse(&["backup", "--dir", "d", "--keep", "2"]) {
            Command::Backup { dir, keep, .. } => {
                assert_eq!((dir.as_deref(), keep), (Some(Path::new("d")), Some(2)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_subcommand_help_ends_with_the_exit_codes() {
        for sub in command().get_subcommands() {
            let help = sub.clone().render_long_help().to_string();
            assert!(help.contains("6  outcome unknown"), "{}", sub.get_name());
        }
    }
}
