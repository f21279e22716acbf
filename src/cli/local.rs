//! `raftset local`: a whole cluster on this machine, one child process per
//! node, with the ports and names the README promises. Children that die
//! are restarted; Ctrl-C stops them all; running it again with the same
//! directory resumes the same cluster.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::Client;

#[derive(Debug, Clone, Args)]
pub struct LocalArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub replicas: u16,
    /// Where the nodes keep their data (one directory each) and logs.
    #[arg(long, default_value = "./raftset-data")]
    pub dir: PathBuf,
    /// Mutual TLS between the nodes, with a throwaway CA made in
    /// `<dir>/peer-tls` on the first run and kept for the next. Without it
    /// the peer ports, on loopback, run with `--insecure-peers`.
    #[arg(long)]
    pub tls: bool,
}

/// Node `i`'s name and addresses.
struct Spec {
    name: String,
    api: String,
    peer: String,
    http: String,
    probes: String,
    admin: String,
    data_dir: PathBuf,
    log: PathBuf,
}

/// tokio's variable for how many worker threads a runtime starts; the nodes'
/// runtimes read it.
const WORKER_THREADS_VAR: &str = "TOKIO_WORKER_THREADS";

/// Each node's share of the machine's cores. The nodes run side by side on
/// them, as pods each get their own under a CPU limit; a node with a worker
/// per core of the whole machine spends its CPU on workers waking each
/// other (three nodes on two cores: a serializable get took 25 µs of CPU
/// with two workers each and 18 µs with one; `bench/FINDINGS.md`).
fn workers_per_node(cores: usize, nodes: usize) -> usize {
    (cores / nodes.max(1)).max(1)
}

fn spec(dir: &std::path::Path, i: u16) -> Spec {
    let name = format!("raftset-{i}");
    Spec {
        api: format!("127.0.0.1:{}", 7000 + i),
        peer: format!("127.0.0.1:{}", 7100 + i),
        http: format!("127.0.0.1:{}", 8080 + i),
        probes: format!("127.0.0.1:{}", 8180 + i),
        admin: format!("127.0.0.1:{}", 7090 + i),
        data_dir: dir.join(&name),
        log: dir.join(format!("{name}.log")),
        name,
    }
}

pub async fn run(args: LocalArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let exe = std::env::current_exe().context("finding the raftset binary")?;
    let specs: Vec<Spec> = (0..args.replicas).map(|i| spec(&args.dir, i)).collect();
    let peers = specs
        .iter()
        .map(|s| format!("{}={}", s.name, s.peer))
        .collect::<Vec<_>>()
        .join(",");

    println!(
        "raftset local: {} nodes, data in {}",
        specs.len(),
        args.dir.display()
    );
    println!(
        "  {:<12}{:<18}{:<25}{:<18}LOG",
        "NAME", "gRPC", "HTTP", "PEER"
    );
    for s in &specs {
        println!(
            "  {:<12}{:<18}{:<25}{:<18}{}",
            s.name,
            s.api,
            format!("http://{}", s.http),
            s.peer,
            s.log.display()
        );
    }
    // One the caller set is theirs to keep; the children inherit it.
    let workers = std::env::var_os(WORKER_THREADS_VAR).is_none().then(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = workers_per_node(cores, specs.len());
        println!(
            "  each node runs {workers} worker thread(s), its share of {cores} cores \
             ({WORKER_THREADS_VAR} overrides)"
        );
        workers
    });
    println!(
        "Try: curl http://{}/   (Ctrl-C stops the cluster)",
        specs[0].http
    );

    let security = if args.tls {
        let dir = args.dir.join("peer-tls");
        throwaway_certificates(&dir, &specs)?;
        println!(
            "  peers speak mutual TLS, certificates in {}",
            dir.display()
        );
        vec!["--peer-tls-dir".into(), dir.into_os_string()]
    } else {
        vec!["--insecure-peers".into()]
    };

    let stop = CancellationToken::new();
    let children = TaskTracker::new();
    for s in specs.iter() {
        let mut command = Command::new(&exe);
        command
            .arg("serve")
            .args(["--name", &s.name])
            .arg("--data-dir")
            .arg(&s.data_dir)
            .args([
                "--listen-api",
                &s.api,
                "--listen-peer",
                &s.peer,
                "--listen-http",
                &s.http,
                "--listen-probes",
                &s.probes,
                "--listen-admin",
                &s.admin,
            ])
            .args(["--peers", &peers])
            .args(&security)
            .stdin(Stdio::null());
        if let Some(workers) = workers {
            command.env(WORKER_THREADS_VAR, workers.to_string());
        }
        children.spawn(supervise(
            s.name.clone(),
            command,
            s.log.clone(),
            stop.clone(),
        ));
    }
    children.close();

    let endpoints: Arc<Vec<String>> = Arc::new(specs.iter().map(|s| s.api.clone()).collect());
    let report = tokio::spawn(report_when_formed(endpoints, specs.len()));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    report.abort();
    println!("stopping {} nodes…", specs.len());
    stop.cancel();
    children.wait().await;
    Ok(ExitCode::SUCCESS)
}

/// A CA and a certificate per node in `dir`, unless it holds them from an
/// earlier run (the nodes' data is kept too, so is their trust). A node's
/// certificate names it and 127.0.0.1; on one address the names cannot
/// tell the nodes apart, which is why this is for trying raftset out.
fn throwaway_certificates(dir: &std::path::Path, specs: &[Spec]) -> anyhow::Result<()> {
    use crate::tls::issue::Authority;
    let missing = |s: &&Spec| !dir.join(format!("{}.crt", s.name)).exists();
    if dir.join(crate::tls::CA_FILE).exists() && !specs.iter().any(|s| missing(&s)) {
        return Ok(());
    }
    let ca = Authority::new("local")?;
    let issued = specs
        .iter()
        .map(|s| {
            Ok((
                s.name.clone(),
                ca.issue(&s.name, &["127.0.0.1", "localhost"])?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ca.write_dir(dir, &issued)?;
    Ok(())
}

/// Runs one node, restarting it whenever it exits until `stop`.
async fn supervise(name: String, mut command: Command, log: PathBuf, stop: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let child = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|file| {
                command.stdout(file.try_clone()?).stderr(file);
                command.spawn()
            });
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                eprintln!("{name}: cannot start: {e}");
                return;
            }
        };
        let status = tokio::select! {
            status = child.wait() => status,
            _ = stop.cancelled() => {
                if let Some(pid) = child.id().and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
                    // SIGTERM, so the node hands over leadership and stops in order.
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
                if tokio::time::timeout(Duration::from_secs(20), child.wait()).await.is_err() {
                    eprintln!("{name}: did not stop within 20 s; killing it");
                    let _ = child.kill().await;
                }
                return;
            }
        };
        match status {
            Ok(status) => eprintln!(
                "{name} exited ({status}); restarting in {}s — see {}",
                backoff.as_secs(),
                log.display()
            ),
            Err(e) => eprintln!("{name}: {e}; restarting in {}s", backoff.as_secs()),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Prints the leader once every node is a member.
async fn report_when_formed(endpoints: Arc<Vec<String>>, replicas: usize) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(client) = Client::connect(&endpoints[0]).await else {
            continue;
        };
        let Ok(status) = client.with_timeout(Duration::from_secs(2)).status().await else {
            continue;
        };
        let voters = status.members.iter().filter(|m| m.voter).count();
        if status.leader_id.is_some() && voters == replicas {
            println!(
                "cluster ready: {voters} voters, leader {}",
                status.leader_name
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::workers_per_node;

    #[test]
    fn each_node_gets_its_share_of_the_cores_and_at_least_one() {
        for (cores, nodes, workers) in [(2, 3, 1), (8, 3, 2), (16, 3, 5), (4, 1, 4), (1, 5, 1)] {
            assert_eq!(
                workers_per_node(cores, nodes),
                workers,
                "{nodes} nodes on {cores} cores"
            );
        }
    }
}
