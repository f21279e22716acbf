//! Fresh three-member clusters of either side on loopback: etcd members on
//! 127.0.3.1–3, raftset nodes on 127.0.4.1–3 (so nothing collides with the
//! tests on 127.0.0.1 and 127.0.0.2), each member's data in a directory of
//! its own under one parent on one disk, and its output in a log file
//! beside it. Both run with a 100 ms heartbeat and a 1 s election timeout.
//! A cluster is killed (SIGKILL) and its data removed when dropped: the
//! data is throwaway, and every repetition starts from nothing.
//!
//! Each member's Prometheus metrics are read for the leaders it has seen:
//! etcd serves them on its client port, raftset on its HTTP port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stores::{Etcd, Raftset};

/// Both sides' election timeout; the hand-over's goal is a write pause
/// shorter than one.
pub const ELECTION_TIMEOUT_MS: u64 = 1000;

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Etcd,
    Raftset,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Etcd => "etcd",
            Side::Raftset => "raftset",
        }
    }

    /// The counter a member exports of the leaders it has seen. Both count
    /// the first leader after start-up too, and neither a spell without one.
    fn leader_changes_metric(self) -> &'static str {
        match self {
            Side::Etcd => "etcd_server_leader_changes_seen_total",
            Side::Raftset => "raftset_leader_changes_total",
        }
    }
}

/// How long a fresh cluster may take to elect a leader with every member.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long reading a member's metrics may take.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);
/// How long a raftset member may take to write a snapshot it was asked for.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(120);

/// Space quotas, raised on both sides so that neither refuses the writes of
/// a run: etcd's largest recommended backend, and raftset's equivalent.
const ETCD_QUOTA: &str = "8589934592";
const RAFTSET_QUOTA: &str = "68719476736";

/// The servers' binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub raftset: PathBuf,
}

/// Three running members.
pub struct Cluster {
    pub side: Side,
    children: Vec<Child>,
    /// Each member's client address, `host:port`.
    pub endpoints: Vec<String>,
    /// Each member's `/metrics` address, `host:port`.
    metrics: Vec<String>,
    /// Each member's data directory.
    pub data_dirs: Vec<PathBuf>,
    dir: PathBuf,
}

impl Cluster {
    /// Starts three members of `side` with their data under `dir`, which is
    /// emptied first, and waits until every member knows the leader.
    pub async fn start(side: Side, binaries: &Binaries, dir: &Path) -> anyhow::Result<Cluster> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cluster = Cluster {
            side,
            children: Vec::new(),
            endpoints: Vec::new(),
            metrics: Vec::new(),
            data_dirs: Vec::new(),
            dir: dir.to_path_buf(),
        };
        for i in 0..3 {
            let data_dir = dir.join(format!("{}-{i}", side.name()));
            let (command, endpoint, metrics) = match side {
                Side::Etcd => etcd_member(&binaries.etcd, i, &data_dir),
                Side::Raftset => raftset_node(&binaries.raftset, i, &data_dir),
            };
            let log = dir.join(format!("{}-{i}.log", side.name()));
            cluster.spawn(command, &log)?;
            cluster.endpoints.push(endpoint);
            cluster.metrics.push(metrics);
            cluster.data_dirs.push(data_dir);
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    fn spawn(&mut self, mut command: Command, log: &Path) -> anyhow::Result<()> {
        let out = std::fs::File::create(log)?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        self.children.push(child);
        Ok(())
    }

    /// The members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Bytes each member's data directory takes on disk.
    pub fn disk_per_member(&self) -> Vec<u64> {
        self.data_dirs
            .iter()
            .map(|d| crate::procfs::disk_usage(d))
            .collect()
    }

    /// The member that leads now, by its own word: the one whose id is the
    /// leader id it reports.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let (id, leader) = match self.side {
                Side::Etcd => {
                    let mut client =
                        etcd_client::Client::connect([format!("http://{endpoint}")], None).await?;
                    let status = client.status().await?;
                    let id = status
                        .header()
                        .context("a status without header")?
                        .member_id();
                    (id, Some(status.leader()))
                }
                Side::Raftset => {
                    let client = raftset::Client::connect(endpoint).await?;
                    let status = client.with_timeout(Duration::from_secs(2)).status().await?;
                    (status.id, status.leader_id)
                }
            };
            if leader == Some(id) {
                return Ok(i);
            }
        }
        anyhow::bail!("no {} member says it leads", self.side.name())
    }

    /// Kills member `i` with SIGKILL (`kill -9`); returns the instant just
    /// before the signal went.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<Instant> {
        let child = &mut self.children[i];
        let at = Instant::now();
        child
            .kill()
            .with_context(|| format!("killing {} member {i}", self.side.name()))?;
        Ok(at)
    }

    /// Asks member `i` to stop with SIGTERM, as a rolling restart does;
    /// returns the instant just before the signal went. Both sides hand
    /// leadership over when a leader is stopped this way.
    pub fn terminate(&mut self, i: usize) -> anyhow::Result<Instant> {
        let child = &self.children[i];
        let pid = rustix::process::Pid::from_raw(child.id() as i32)
            .with_context(|| format!("{} member {i} has no pid", self.side.name()))?;
        let at = Instant::now();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .with_context(|| format!("stopping {} member {i}", self.side.name()))?;
        Ok(at)
    }

    /// The leaders each member has seen since it started, from its metrics.
    pub async fn leaders_seen(&self) -> anyhow::Result<Vec<u64>> {
        let name = self.side.leader_changes_metric();
        let mut seen = Vec::new();
        for addr in &self.metrics {
            let text = tokio::time::timeout(SCRAPE_DEADLINE, scrape(addr))
                .await
                .with_context(|| format!("no metrics from {addr} in {SCRAPE_DEADLINE:?}"))??;
            let value =
                metric(&text, name).with_context(|| format!("{addr}/metrics has no {name}"))?;
            seen.push(value as u64);
        }
        Ok(seen)
    }

    pub async fn raftset_stores(&self) -> anyhow::Result<Vec<Raftset>> {
        let mut stores = Vec::new();
        for endpoint in &self.endpoints {
            stores.push(Raftset::connect(endpoint).await?);
        }
        Ok(stores)
    }

    /// Asks every raftset member at once for a snapshot, through its
    /// loopback admin port, and returns when the last one is written. etcd
    /// has no such call: it snapshots on its own schedule.
    pub async fn snapshot_every_member(&self) -> anyhow::Result<Duration> {
        anyhow::ensure!(
            self.side == Side::Raftset,
            "only raftset snapshots when asked"
        );
        let started = Instant::now();
        let mut snapshots = tokio::task::JoinSet::new();
        for i in 0..self.endpoints.len() {
            snapshots.spawn(async move {
                let admin = raftset_admin(i);
                let mut client = raftset::Client::connect(&admin)
                    .await
                    .with_context(|| format!("connecting to {admin}"))?
                    .with_timeout(SNAPSHOT_DEADLINE);
                client
                    .snapshot()
                    .await
                    .with_context(|| format!("a snapshot of {admin}"))
            });
        }
        while let Some(taken) = snapshots.join_next().await {
            taken??;
        }
        Ok(started.elapsed())
    }

    pub async fn etcd_stores(&self) -> anyhow::Result<Vec<Etcd>> {
        let mut stores = Vec::new();
        for endpoint in &self.endpoints {
            stores.push(Etcd::connect(endpoint).await?);
        }
        Ok(stores)
    }

    /// Waits until every member answers and names a leader, failing at the
    /// deadline with the last thing a member said.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            for (i, child) in self.children.iter_mut().enumerate() {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!(
                        "{} member {i} exited ({status}); see {}",
                        self.side.name(),
                        self.dir.display()
                    );
                }
            }
            let last = match self.all_know_the_leader().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if started.elapsed() > READY_DEADLINE {
                anyhow::bail!(
                    "{} not ready after {READY_DEADLINE:?}: {last:#}; logs in {}",
                    self.side.name(),
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn all_know_the_leader(&self) -> anyhow::Result<()> {
        for endpoint in &self.endpoints {
            match self.side {
                Side::Etcd => {
                    let mut client =
                        etcd_client::Client::connect([format!("http://{endpoint}")], None).await?;
                    let status = client.status().await?;
                    anyhow::ensure!(status.leader() != 0, "{endpoint} knows no leader");
                }
                Side::Raftset => {
                    let client = raftset::Client::connect(endpoint).await?;
                    let status = client.with_timeout(Duration::from_secs(2)).status().await?;
                    let voters = status.members.iter().filter(|m| m.voter).count();
                    anyhow::ensure!(
                        status.leader_id.is_some() && voters == 3,
                        "{endpoint} sees {voters} voters, leader {:?}",
                        status.leader_id
                    );
                }
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// etcd member `i`: client port 2379 (which serves `/metrics` too) and
/// peer port 2380 on 127.0.3.<i+1>. Returns the command, the client address
/// and the metrics address.
fn etcd_member(etcd: &Path, i: usize, data_dir: &Path) -> (Command, String, String) {
    let host = |i: usize| format!("127.0.3.{}", i + 1);
    let client = format!("{}:2379", host(i));
    let peer_url = |i: usize| format!("http://{}:2380", host(i));
    let initial_cluster = (0..3)
        .map(|j| format!("etcd-{j}={}", peer_url(j)))
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new(etcd);
    command
        .args(["--name", &format!("etcd-{i}")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-client-urls", &format!("http://{client}")])
        .args(["--advertise-client-urls", &format!("http://{client}")])
        .args(["--listen-peer-urls", &peer_url(i)])
        .args(["--initial-advertise-peer-urls", &peer_url(i)])
        .args(["--initial-cluster", &initial_cluster])
        .args(["--initial-cluster-state", "new"])
        .args(["--initial-cluster-token", "raftset-bench"])
        .args(["--heartbeat-interval", "100", "--election-timeout"])
        .arg(ELECTION_TIMEOUT_MS.to_string())
        .args(["--quota-backend-bytes", ETCD_QUOTA])
        .args(["--logger", "zap", "--log-level", "warn"]);
    (command, client.clone(), client)
}

/// raftset node `i` (`raftset-<i>`; 0 founds the cluster, the others join):
/// every port on 127.0.4.<i+1>, peers in plaintext on loopback as
/// `raftset local` runs them. Returns the command, the API address and the
/// HTTP address (which serves `/metrics`).
fn raftset_node(raftset: &Path, i: usize, data_dir: &Path) -> (Command, String, String) {
    let peers = (0..3)
        .map(|j| format!("raftset-{j}={}:7001", raftset_host(j)))
        .collect::<Vec<_>>()
        .join(",");
    let api = format!("{}:7000", raftset_host(i));
    let http = format!("{}:8080", raftset_host(i));
    let mut command = Command::new(raftset);
    command
        .arg("serve")
        .args(["--name", &format!("raftset-{i}")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-api", &api])
        .args(["--listen-peer", &format!("{}:7001", raftset_host(i))])
        .args(["--listen-http", &http])
        .args(["--listen-probes", &format!("{}:8081", raftset_host(i))])
        .args(["--listen-admin", &raftset_admin(i)])
        .args(["--peers", &peers, "--insecure-peers"])
        .args(["--heartbeat-ms", "100", "--election-timeout-ms"])
        .arg(ELECTION_TIMEOUT_MS.to_string())
        .args(["--quota-bytes", RAFTSET_QUOTA])
        .env("RUST_LOG", "warn");
    (command, api, http)
}

fn raftset_host(i: usize) -> String {
    format!("127.0.4.{}", i + 1)
}

/// Node `i`'s admin port, which takes Admin calls from anyone on the host.
fn raftset_admin(i: usize) -> String {
    format!("{}:7090", raftset_host(i))
}

/// The body of `GET http://<addr>/metrics`. HTTP/1.0, so that the server
/// sends the body whole (not chunked) and closes the connection: one
/// request a run needs no HTTP client crate.
async fn scrape(addr: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr}/metrics: no end of the headers"))?;
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "{addr}/metrics answered {status}"
    );
    Ok(body.to_string())
}

/// The value of the unlabelled sample `name` in Prometheus or OpenMetrics
/// text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_unlabelled_sample() {
        let text = "# HELP etcd_server_leader_changes_seen_total x\n\
                    # TYPE etcd_server_leader_changes_seen_total counter\n\
                    etcd_server_leader_changes_seen_total_extra 9\n\
                    etcd_server_leader_changes_seen_total 2\n";
        assert_eq!(
            metric(text, "etcd_server_leader_changes_seen_total"),
            Some(2.0)
        );
        assert_eq!(
            metric(
                "raftset_leader_changes_total 1\n# EOF\n",
                "raftset_leader_changes_total"
            ),
            Some(1.0)
        );
        assert_eq!(metric(text, "raftset_leader_changes_total"), None);
    }
}
