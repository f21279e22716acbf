//! The process harness: a cluster of real `raftset serve` processes, each
//! on its own loopback address (127.x.y.N), as a StatefulSet's pods would
//! be, started in parallel or one at a time, with a data directory per
//! node that outlives its process. It plays [`Harness`] like the container
//! harness does.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use raftset::auth::{token_line, Role};
use raftset::proto::StatusResponse;
use raftset::tls::client::{ClientTls, ClientTlsFiles};
use raftset::tls::issue::Authority;
use raftset::Client;
use rustix::process::{kill_process, Pid, Signal};
use tokio::process::{Child, Command};

use super::harness::Harness;
use super::manifest::Manifest;
use super::{http, wait_for, DEADLINE};

/// Each cluster gets its own 127.x.y.0/24 so tests run in parallel without
/// sharing ports; x comes from the process id, y from a counter.
fn next_subnet() -> [u8; 2] {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let x = 10 + (std::process::id() % 200) as u8;
    [x, NEXT.fetch_add(1, Ordering::Relaxed)]
}

pub struct TestNode {
    pub name: String,
    pub ip: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl TestNode {
    pub fn api(&self) -> String {
        format!("{}:7000", self.ip)
    }

    pub fn peer(&self) -> String {
        format!("{}:7001", self.ip)
    }

    pub fn http(&self) -> String {
        format!("{}:8080", self.ip)
    }

    pub fn probes(&self) -> String {
        format!("{}:8081", self.ip)
    }

    /// The admin port, on the node's own loopback address.
    pub fn admin(&self) -> String {
        format!("{}:7090", self.ip)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    pub nodes: Vec<TestNode>,
    /// Extra `serve` flags for every node.
    args: Vec<String>,
    _dir: tempfile::TempDir,
    subnet: [u8; 2],
    /// The CA of a cluster whose peers speak mutual TLS: each node gets a
    /// certificate for its name and address in [`Cluster::tls_dir`]. None:
    /// the nodes run with `--insecure-peers`.
    authority: Option<Authority>,
    /// The admin token of a cluster that requires client tokens, which
    /// the harness's own calls send.
    token: Option<String>,
    /// Whether the client port takes admin calls (`--remote-admin`): the
    /// tests call as remote operators do, unless a test says otherwise.
    remote_admin: bool,
    /// How to reach a client port that speaks TLS: the harness's files,
    /// and them loaded once for its many calls.
    client_tls: Option<(ClientTlsFiles, ClientTls)>,
}

/// The tokens of a cluster started with [`Cluster::start_with_tokens`].
pub const ADMIN_TOKEN: &str = "admin-7b1c2e";
pub const WRITE_TOKEN: &str = "write-93fa07";
pub const READ_TOKEN: &str = "read-4d5e61";

impl Cluster {
    /// Starts `n` nodes that form one cluster, and waits until they have.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[]).await
    }

    pub async fn start_with(n: usize, args: &[&str]) -> Cluster {
        Cluster::spawn(n, args).await.formed().await
    }

    /// Starts `n` nodes with `failpoints` armed on every one (see
    /// `raftset::failpoint`), and waits until they have formed one cluster.
    pub async fn start_armed(n: usize, failpoints: &str) -> Cluster {
        let mut cluster = Cluster::unstarted(n, &[]);
        for i in 0..n {
            cluster.launch_armed(i, failpoints);
        }
        cluster.formed().await
    }

    /// This cluster once every node is a voter and serves.
    async fn formed(self) -> Cluster {
        let n = self.nodes.len();
        self.wait_for_voters(n).await;
        // A joiner is a voter a moment before its formation ends and it
        // serves; tests that start writing at once need it serving.
        for i in 0..n {
            self.wait_ready(i).await;
        }
        self
    }

    /// Starts `n` nodes at once without waiting for anything, as a
    /// StatefulSet with `podManagementPolicy: Parallel` does.
    pub async fn spawn(n: usize, args: &[&str]) -> Cluster {
        let mut cluster = Cluster::unstarted(n, args);
        for i in 0..n {
            cluster.launch(i);
        }
        cluster
    }

    /// `n` nodes with their directories chosen but no process started, so a
    /// test can prepare a volume first; start them with `restart`.
    pub fn unstarted(n: usize, args: &[&str]) -> Cluster {
        let mut cluster = Cluster::empty(args);
        for _ in 0..n {
            cluster.create_node();
        }
        cluster
    }

    /// Creates the nodes one at a time, each only once the previous one is
    /// ready, as an OrderedReady StatefulSet does. A node sees only the
    /// peers that exist when it starts, as it would through DNS.
    pub async fn ordered(n: usize, args: &[&str]) -> Cluster {
        let mut cluster = Cluster::empty(args);
        for _ in 0..n {
            cluster.scale_up().await;
        }
        cluster
    }

    /// Adds the next ordinal and waits until it is ready.
    pub async fn scale_up(&mut self) -> usize {
        let i = self.create_node();
        self.launch(i);
        self.wait_ready(i).await;
        i
    }

    /// Starts `n` nodes whose peers speak mutual TLS, and waits until they
    /// form one cluster.
    pub async fn start_secure(n: usize) -> Cluster {
        let mut cluster = Cluster::empty(&[]);
        cluster.secure();
        cluster.start_nodes(n).await
    }

    /// Creates and starts `n` nodes on this cluster's settings, and waits
    /// until they form one cluster and serve.
    async fn start_nodes(mut self, n: usize) -> Cluster {
        for _ in 0..n {
            self.create_node();
        }
        for i in 0..n {
            self.launch(i);
        }
        self.wait_for_voters(n).await;
        for i in 0..n {
            self.wait_ready(i).await;
        }
        self
    }

    fn empty(args: &[&str]) -> Cluster {
        Cluster {
            nodes: Vec::new(),
            args: args.iter().map(|a| a.to_string()).collect(),
            _dir: tempfile::tempdir().expect("temp dir"),
            subnet: next_subnet(),
            authority: None,
            token: None,
            remote_admin: true,
            client_tls: None,
        }
    }

    /// Starts `n` nodes whose client ports take no admin calls (the
    /// default outside the tests): those go to each node's admin port.
    pub async fn start_without_remote_admin(n: usize) -> Cluster {
        let mut cluster = Cluster::empty(&[]);
        cluster.remote_admin = false;
        cluster.start_nodes(n).await
    }

    /// Starts `n` nodes that require a client token
    /// (`--client-tokens-file`): [`ADMIN_TOKEN`], [`WRITE_TOKEN`] and
    /// [`READ_TOKEN`], one of each role.
    pub async fn start_with_tokens(n: usize) -> Cluster {
        let mut cluster = Cluster::empty(&[]);
        cluster.write_tokens(&[
            (Role::Admin, ADMIN_TOKEN),
            (Role::Write, WRITE_TOKEN),
            (Role::Read, READ_TOKEN),
        ]);
        let file = cluster.tokens_file().to_string_lossy().into_owned();
        cluster.args = vec!["--client-tokens-file".into(), file];
        cluster.token = Some(ADMIN_TOKEN.to_string());
        cluster.start_nodes(n).await
    }

    /// Starts `n` nodes whose client gRPC and HTTP ports speak TLS
    /// (`--client-tls-dir`, `--http-tls-dir`), with one certificate naming
    /// every node's address; with
    /// `require_certs` they also require a client certificate. The
    /// harness's own calls use [`Cluster::client_tls_files`].
    pub async fn start_with_client_tls(n: usize, require_certs: bool) -> Cluster {
        let mut cluster = Cluster::empty(&[]);
        let callers: &[&str] = if require_certs { &["operator"] } else { &[] };
        cluster.client_tls_setup(n, callers);
        cluster.start_nodes(n).await
    }

    /// Starts `n` nodes whose client port requires a client certificate,
    /// and grants roles by the names in them (`<role> cert:<name>` in the
    /// tokens file): `operator` may do anything (the harness calls as
    /// it), `reporter` may read; [`Cluster::caller_files`] has both.
    pub async fn start_with_certificate_roles(n: usize) -> Cluster {
        let mut cluster = Cluster::empty(&[]);
        cluster.client_tls_setup(n, &["operator", "reporter"]);
        std::fs::write(
            cluster.tokens_file(),
            "admin cert:operator\nread cert:reporter\n",
        )
        .unwrap();
        let file = cluster.tokens_file().to_string_lossy().into_owned();
        cluster.args.extend(["--client-tokens-file".into(), file]);
        cluster.start_nodes(n).await
    }

    /// Client TLS for nodes 0 to `n - 1`: one certificate naming every
    /// node's address for the gRPC and HTTP ports, and when `callers` are
    /// named, a CA the nodes require client certificates from and a
    /// certificate for each caller; the harness calls as the first.
    fn client_tls_setup(&mut self, n: usize, callers: &[&str]) {
        let dir = self._dir.path().join("client-tls");
        let callers_dir = self.callers_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&callers_dir).unwrap();
        let ca = Authority::new("client port").expect("a CA");
        let ips: Vec<String> = (0..n).map(|i| self.ip_of(i)).collect();
        let hosts: Vec<&str> = ips.iter().map(String::as_str).collect();
        let served = ca.issue("raftset", &hosts).expect("a certificate");
        std::fs::write(dir.join("tls.crt"), &served.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &served.key_pem).unwrap();
        std::fs::write(callers_dir.join("ca.crt"), ca.cert_pem()).unwrap();
        if !callers.is_empty() {
            std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
        }
        for name in callers {
            let caller = ca.issue(name, &[]).expect("a certificate");
            std::fs::write(callers_dir.join(format!("{name}.crt")), &caller.cert_pem).unwrap();
            std::fs::write(callers_dir.join(format!("{name}.key")), &caller.key_pem).unwrap();
        }
        let files = match callers.first() {
            Some(name) => self.caller_files(name),
            None => ClientTlsFiles {
                ca: callers_dir.join("ca.crt"),
                identity: None,
            },
        };
        let loaded = ClientTls::load(&files).expect("the callers' TLS files");
        self.client_tls = Some((files, loaded));
        let dir = dir.to_string_lossy().into_owned();
        self.args.extend([
            "--client-tls-dir".into(),
            dir.clone(),
            "--http-tls-dir".into(),
            dir,
        ]);
    }

    fn callers_dir(&self) -> PathBuf {
        self._dir.path().join("callers")
    }

    /// The CA and the certificate of caller `name` of a cluster started
    /// with client certificates.
    pub fn caller_files(&self, name: &str) -> ClientTlsFiles {
        let dir = self.callers_dir();
        ClientTlsFiles {
            ca: dir.join("ca.crt"),
            identity: Some((
                dir.join(format!("{name}.crt")),
                dir.join(format!("{name}.key")),
            )),
        }
    }

    /// What a caller of a cluster started with
    /// [`Cluster::start_with_client_tls`] needs.
    pub fn client_tls_files(&self) -> ClientTlsFiles {
        let (files, _) = self.client_tls.as_ref().expect("a cluster with client TLS");
        files.clone()
    }

    /// Where the client tokens' hashes are (`--client-tokens-file`).
    pub fn tokens_file(&self) -> PathBuf {
        self._dir.path().join("client-tokens")
    }

    /// Replaces the client tokens file with these tokens, in place.
    pub fn write_tokens(&self, tokens: &[(Role, &str)]) {
        let lines: String = tokens
            .iter()
            .map(|(role, token)| format!("{}\n", token_line(*role, token)))
            .collect();
        std::fs::write(self.tokens_file(), lines).expect("the tokens file");
    }

    /// From now on, nodes get certificates from a fresh CA and speak mutual
    /// TLS.
    fn secure(&mut self) {
        let ca = Authority::new("test").expect("a CA");
        ca.write_dir(&self.tls_dir(), &[]).expect("the CA file");
        self.authority = Some(ca);
    }

    /// Replaces the CA and every node's certificate with new ones, in
    /// place, as a rotated Secret does; nodes started later get theirs
    /// from the new CA.
    pub fn rotate_authority(&mut self) {
        let ca = Authority::new("rotated").expect("a CA");
        let issued: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    ca.issue(&n.name, &[&n.ip]).expect("a certificate"),
                )
            })
            .collect();
        ca.write_dir(&self.tls_dir(), &issued)
            .expect("the rotated files");
        self.authority = Some(ca);
    }

    /// Where the nodes' peer certificates are (`--peer-tls-dir`).
    pub fn tls_dir(&self) -> PathBuf {
        self._dir.path().join("peer-tls")
    }

    /// The CA of a secure cluster.
    pub fn authority(&self) -> &Authority {
        self.authority.as_ref().expect("a cluster started secure")
    }

    /// Gives node `name` at `ip` a certificate from `ca` in `dir`, naming
    /// both.
    pub fn certify(ca: &Authority, dir: &std::path::Path, name: &str, ip: &str) {
        let issued = ca.issue(name, &[ip]).expect("a certificate");
        ca.write_dir(dir, &[(name.to_string(), issued)])
            .expect("the certificate files");
    }

    /// Node `i`'s address, whether or not it exists yet.
    fn ip_of(&self, i: usize) -> String {
        let [x, y] = self.subnet;
        format!("127.{x}.{y}.{}", i + 1)
    }

    fn create_node(&mut self) -> usize {
        let i = self.nodes.len();
        self.nodes.push(TestNode {
            name: format!("raftset-{i}"),
            ip: self.ip_of(i),
            data_dir: self._dir.path().join(format!("raftset-{i}")),
            log: self._dir.path().join(format!("raftset-{i}.log")),
            child: None,
        });
        if let Some(ca) = &self.authority {
            let node = &self.nodes[i];
            Cluster::certify(ca, &self.tls_dir(), &node.name, &node.ip);
        }
        i
    }

    /// Deletes node `i`'s data directory (its PVC); the node must be stopped.
    pub fn delete_volume(&mut self, i: usize) {
        assert!(
            !self.nodes[i].is_running(),
            "stop {} first",
            self.nodes[i].name
        );
        std::fs::remove_dir_all(&self.nodes[i].data_dir).expect("delete the data directory");
    }

    fn launch(&mut self, i: usize) {
        self.launch_armed(i, "");
    }

    /// Starts node `i` with the crash points `failpoints` armed (the `fail`
    /// crate's `FAILPOINTS` syntax; the test binary is built with them).
    fn launch_armed(&mut self, i: usize, failpoints: &str) {
        let peers = self
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.name, n.peer()))
            .collect::<Vec<_>>()
            .join(",");
        let security: Vec<std::ffi::OsString> = match &self.authority {
            Some(_) => vec!["--peer-tls-dir".into(), self.tls_dir().into_os_string()],
            None => vec!["--insecure-peers".into()],
        };
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} is already running", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_raftset"))
            .arg("serve")
            .args(["--name", &node.name])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args([
                "--listen-api",
                &node.api(),
                "--listen-peer",
                &node.peer(),
                "--listen-http",
                &node.http(),
                "--listen-probes",
                &node.probes(),
                "--listen-admin",
                &node.admin(),
            ])
            .args(self.remote_admin.then_some("--remote-admin"))
            .args(["--peers", &peers])
            .args(security)
            // Short timeouts keep failover tests quick, unless the test sets
            // its own (the defaults suit pods).
            .args(if self.args.iter().any(|a| a == "--heartbeat-ms") {
                &[][..]
            } else {
                &["--heartbeat-ms", "50", "--election-timeout-ms", "800"][..]
            })
            .args(&self.args)
            .env("RUST_LOG", "info,openraft=warn")
            .env("FAILPOINTS", failpoints)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("starting raftset serve");
        node.child = Some(child);
    }

    pub async fn client(&self, i: usize) -> Client {
        let api = self.nodes[i].api();
        wait_for(&format!("a connection to {api}"), || async {
            self.connect(i, raftset::client::DEFAULT_TIMEOUT).await
        })
        .await
    }

    /// Forces a new cluster on node `i`'s data; it answers, then starts
    /// again in place.
    pub async fn force_new_cluster(&self, i: usize) -> raftset::proto::ForceNewClusterResponse {
        self.client(i)
            .await
            .force_new_cluster()
            .await
            .unwrap_or_else(|e| panic!("force-new-cluster on {}: {e}", self.nodes[i].name))
    }

    /// Asks node `i` to force a new cluster, which it must refuse with
    /// FAILED_PRECONDITION; returns the refusal's text.
    pub async fn force_new_cluster_refused(&self, i: usize) -> String {
        let refused = match self.client(i).await.force_new_cluster().await {
            Ok(forced) => panic!("{} forced a new cluster: {forced:?}", self.nodes[i].name),
            Err(e) => e,
        };
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
        refused.to_string()
    }

    /// Kills a node with SIGKILL: no shutdown, no flush.
    pub async fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().expect("node is running");
        child.kill().await.expect("kill");
    }

    /// Deletes node `i` as the kubelet deletes its pod: the preStop hook
    /// that `k8s/` gives the container, within the grace period, then
    /// SIGTERM. The hook's output is returned.
    pub async fn terminate(&mut self, i: usize) -> String {
        let manifest = Manifest::base();
        let hook = manifest
            .pre_stop
            .expect("k8s/ gives the container a preStop hook");
        assert_eq!(hook[0], "raftset", "the hook runs the raftset binary");
        let run = Command::new(env!("CARGO_BIN_EXE_raftset"))
            .args(&hook[1..])
            .env("RAFTSET_ENDPOINT", self.nodes[i].api())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let grace = Duration::from_secs(manifest.grace_period_secs);
        let output = match tokio::time::timeout(grace, run).await {
            Ok(output) => output.expect("running the preStop hook"),
            Err(_) => panic!(
                "{}'s preStop hook outlasted the grace period",
                self.nodes[i].name
            ),
        };
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "{}'s preStop hook failed: {said}",
            self.nodes[i].name
        );
        Harness::stop(self, i).await;
        said
    }

    /// Replaces the extra `serve` flags of the nodes started from now on.
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Starts node `i` again on its data directory. Synchronous: a
    /// process needs no wait to be started ([`Harness::restart`] wraps it).
    pub fn restart(&mut self, i: usize) {
        self.launch(i);
    }

    /// Starts node `i` again with crash points armed: it kills itself when
    /// it reaches one (see `raftset::failpoint`).
    pub fn restart_armed(&mut self, i: usize, failpoints: &str) {
        self.launch_armed(i, failpoints);
    }

    /// [`Harness::leader`], callable without importing the trait (as
    /// `durability.rs` does).
    pub async fn leader(&self) -> usize {
        Harness::leader(self).await
    }

    /// [`Harness::wait_for_applied`], callable without importing the trait.
    pub async fn wait_for_applied(&self, i: usize, index: u64) -> StatusResponse {
        Harness::wait_for_applied(self, i, index).await
    }

    /// Waits until node `i` exits by itself, as a container whose process
    /// ended, and returns its exit code.
    pub async fn wait_exit(&mut self, i: usize) -> Option<i32> {
        let mut child = self.nodes[i].child.take().expect("node is running");
        let status = tokio::time::timeout(DEADLINE, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit by itself", self.nodes[i].name))
            .expect("wait");
        status.code()
    }
}

impl Harness for Cluster {
    fn name(&self, i: usize) -> String {
        self.nodes[i].name.clone()
    }

    fn token(&self) -> Option<String> {
        self.token.clone()
    }

    fn client_tls(&self) -> Option<ClientTls> {
        self.client_tls.as_ref().map(|(_, loaded)| loaded.clone())
    }

    fn api(&self, i: usize) -> String {
        self.nodes[i].api()
    }

    fn ordinals(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    async fn stop(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().expect("node is running");
        if let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) {
            kill_process(pid, Signal::TERM).expect("SIGTERM");
        }
        let status = tokio::time::timeout(DEADLINE, child.wait())
            .await
            .expect("node stops on SIGTERM");
        assert!(
            status.expect("wait").success(),
            "{} exited uncleanly",
            self.nodes[i].name
        );
    }

    async fn kill(&mut self, i: usize) {
        Cluster::kill(self, i).await
    }

    async fn restart(&mut self, i: usize) {
        Cluster::restart(self, i)
    }

    /// Asks the probes' port, as the kubelet does.
    async fn wait_ready(&self, i: usize) {
        let http = self.nodes[i].probes();
        wait_for(&format!("{} to be ready", self.nodes[i].name), || {
            let http = http.clone();
            async move {
                let reply = http::fetch(&http, "/readyz", "*/*", Duration::from_secs(5)).await?;
                if reply.status == 200 {
                    Ok(())
                } else {
                    Err(reply.body)
                }
            }
        })
        .await;
    }
}

impl Cluster {
    /// What node `i` logged so far.
    pub fn log_of(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Waits until node `i` logged `text` past the first `after` bytes of
    /// its log (which spans its restarts).
    pub async fn wait_for_log(&self, i: usize, after: usize, text: &str) {
        wait_for(
            &format!("{} to log {text:?}", self.nodes[i].name),
            || async {
                let log = self.log_of(i);
                if log.get(after..).is_some_and(|new| new.contains(text)) {
                    Ok(())
                } else {
                    Err(log.lines().last().unwrap_or_default().to_string())
                }
            },
        )
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- last lines of {} ---", node.name);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
    }
}
