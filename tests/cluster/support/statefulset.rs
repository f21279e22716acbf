//! A StatefulSet played with real containers: the e2e harness.
//!
//! Kubernetes cannot run on the test machines, but Docker can, and a
//! StatefulSet is a small contract: pods created in order (OrderedReady: the
//! next only once the previous passes its readiness probe; Parallel: all at
//! once), a stable name and DNS name per ordinal, one volume per ordinal that
//! outlives its pod, exec into a pod. [`StatefulSet`] plays that contract
//! with the image built from the real `Dockerfile`, driven by the real
//! `k8s/` manifests as `kubectl kustomize` renders them: container args,
//! env (the downward-API fields filled in), ports, probes, the volume mount
//! path, the security context, the grace period, `podManagementPolicy`,
//! `replicas` and `serviceName` all come from [`Manifest`], so a wrong
//! manifest fails the tests.
//!
//! How the pieces map:
//!
//! | Kubernetes | here |
//! |---|---|
//! | pod `raftset-N` | container `<set id>-raftset-N`, hostname `raftset-N` |
//! | headless Service DNS | [`ClusterDns`] on the network's gateway, the only server in the pods' `/etc/resolv.conf`: A records for `raftset-N.<service>.<ns>.svc.cluster.local` and `<service>.<ns>.svc.cluster.local` while the pod runs and is on the private `--internal` network (as Docker's aliases were), NXDOMAIN for the rest, and outages on command ([`StatefulSet::dns`]) |
//! | PVC `data-raftset-N` | named volume `<set id>-data-raftset-N` at the claim's mount path |
//! | emptyDir | `--tmpfs` (size limit, owned by the pod's user) |
//! | the peer TLS and client tokens Secrets | `raftset certs --out-dir`, `raftset tokens --out-dir`, bind-mounted read-only, files owned by the pod's user and group, mode 0440; the host's clients send the admin token |
//! | securityContext | `--user`, `--read-only`, `--cap-drop`, `no-new-privileges` |
//! | resources.limits | `--cpus`, `--memory` |
//! | terminationGracePeriodSeconds | `--stop-timeout`, `docker stop -t` |
//! | probes (kubelet) | HTTP GET from the host to the pod's IP on the network |
//! | Kubernetes API (`spec.replicas`, the founding record) | a tiny HTTP server on the network's gateway, `RAFTSET_KUBE_API`; none after [`StatefulSet::without_kube_api`] |
//! | pod IP | fixed per container: kept across a container restart and a partition, new when the pod is re-created |
//!
//! Nothing is published on the host: the host reaches each pod through its
//! IP on the private network. Every container, volume and network carries
//! the labels `raftset-e2e.owner=<pid>` and `raftset-e2e.set=<set id>`; the
//! set's `Drop` removes them all (also when a test panics), and the first
//! set of a test run removes what runs whose process is gone left behind.
//!
//! The e2e tests share two cores with everything else, so they take turns:
//! every test holds [`exclusive`] for its whole run. Names and subnets are
//! still unique per set, so two test binaries can run at once.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftset::Client;
use serde_json::Value;

use super::dns::ClusterDns;
use super::docker::{
    docker, docker_blocking, docker_output, docker_raw, ensure_docker, Output, DOCKER_TIMEOUT,
    LABEL_OWNER, LABEL_SET,
};
use super::harness::Harness;
use super::http::{self, Reply};
use super::image::ensure_image;
use super::kube::FakeKubeApi;
use super::manifest::{EnvSource, HttpProbe, Manifest, PodManagement};
use super::{poll, DEADLINE};

/// The private networks are /24s carved from this /16 (override with
/// `RAFTSET_E2E_SUBNET_BASE=10.x`); Docker refuses overlapping subnets, so
/// each set takes the first free one.
const SUBNET_BASE: &str = "10.231";

/// The e2e tests take turns (see the module docs).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// A container's state as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Docker's container id: a re-created pod has a new one.
    pub id: String,
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub exit_code: i64,
    /// Networks the container is attached to.
    pub networks: Vec<String>,
}

#[derive(Debug, Clone)]
struct Pod {
    container: String,
    ip: String,
    /// The container was killed or exited and not restarted.
    stopped: bool,
    paused: bool,
    partitioned: bool,
}

/// A StatefulSet of containers; see the module docs. Dropping it removes
/// every container, volume and network it made.
pub struct StatefulSet {
    pub manifest: Manifest,
    /// Prefix of every Docker object of this set.
    pub id: String,
    image: String,
    network: String,
    /// The /24's first three octets.
    subnet: String,
    next_host: u8,
    /// Index = ordinal; `None`: no pod (never created, or scaled away).
    pods: Vec<Option<Pod>>,
    /// `spec.replicas` as the fake API reports it.
    replicas: Arc<AtomicU32>,
    kube: Option<FakeKubeApi>,
    dns: Option<ClusterDns>,
    /// The pods' `/etc/resolv.conf`: the set's DNS server and nothing else.
    resolv_conf: PathBuf,
    /// The Secrets the pods mount, one directory each (see
    /// [`StatefulSet::make_secrets`]).
    secrets_dir: PathBuf,
    /// Environment added to (or replacing) the manifest's, for every pod.
    extra_env: Vec<(String, String)>,
    endpoints: Endpoints,
}

/// The client addresses of a set's pods, kept current by the set, and
/// the token its clients send (the set's own too).
#[derive(Clone, Default)]
pub struct Endpoints {
    addrs: Arc<std::sync::RwLock<Vec<String>>>,
    token: Option<String>,
}

impl Endpoints {
    /// The `n`th address, counting round the pods that exist now.
    pub fn nth(&self, n: usize) -> Option<String> {
        let all = self.addrs.read().unwrap();
        (!all.is_empty()).then(|| all[n % all.len()].clone())
    }

    /// A client of `endpoint` that sends the set's token.
    pub async fn connect(&self, endpoint: &str) -> Result<Client, raftset::ClientError> {
        let client = Client::connect(endpoint).await?;
        match &self.token {
            Some(token) => client.with_token(token),
            None => Ok(client),
        }
    }
}

impl StatefulSet {
    /// A set for the base manifest; `tag` names the test in Docker names.
    /// No pod exists until [`StatefulSet::create`].
    pub async fn new(tag: &str) -> StatefulSet {
        StatefulSet::with(tag, Manifest::base(), &[]).await
    }

    /// A set for `manifest`, with `env` added to every pod's environment.
    pub async fn with(tag: &str, manifest: Manifest, env: &[(&str, &str)]) -> StatefulSet {
        ensure_docker().await;
        let image = ensure_image(&manifest.image).await;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(20)
            .collect();
        let id = format!("rse2e-{}-{n}-{tag}", std::process::id());
        let mut set = StatefulSet {
            manifest,
            id,
            image,
            network: String::new(),
            subnet: String::new(),
            next_host: 10,
            pods: Vec::new(),
            replicas: Arc::new(AtomicU32::new(0)),
            kube: None,
            dns: None,
            resolv_conf: PathBuf::new(),
            secrets_dir: PathBuf::new(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            endpoints: Endpoints::default(),
        };
        // From here on, Drop cleans up whatever exists.
        set.create_network(n)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let gateway = format!("{}.1", set.subnet);
        let kube = FakeKubeApi::serve(
            &gateway,
            &set.manifest.namespace,
            &set.manifest.set_name,
            set.replicas.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        set.kube = Some(kube);
        set.dns = Some(
            ClusterDns::start(&gateway)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
        set.resolv_conf = std::env::temp_dir().join(format!("{}-resolv.conf", set.id));
        write_resolv_conf(&set.resolv_conf, &gateway)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", set.resolv_conf.display()));
        set.secrets_dir = std::env::temp_dir().join(format!("{}-secrets", set.id));
        set.make_secrets().unwrap_or_else(|e| panic!("{e}"));
        set.endpoints.token = set.admin_token();
        set
    }

    /// Pods created from now on find no Kubernetes API (no
    /// `RAFTSET_KUBE_API`): founding rests on the peers alone, as outside
    /// Kubernetes or without the API permissions.
    pub fn without_kube_api(&mut self) {
        drop(self.kube.take());
    }

    /// The pods' DNS server, to break it ([`ClusterDns::set_outage`]) or
    /// ask it.
    pub fn dns(&self) -> &ClusterDns {
        self.dns.as_ref().expect("the set's DNS server runs")
    }

    fn labels(&self) -> [String; 2] {
        [
            format!("{LABEL_OWNER}={}", std::process::id()),
            format!("{LABEL_SET}={}", self.id),
        ]
    }

    async fn create_network(&mut self, n: u32) -> Result<(), String> {
        let base = std::env::var("RAFTSET_E2E_SUBNET_BASE").unwrap_or_else(|_| SUBNET_BASE.into());
        let name = format!("{}-net", self.id);
        let [owner, set] = self.labels();
        let start = (std::process::id() as usize * 7 + n as usize * 13) % 250;
        for k in 0..250 {
            let third = (start + k) % 250 + 1;
            let subnet = format!("{base}.{third}");
            let cidr = format!("{subnet}.0/24");
            let gateway = format!("{subnet}.1");
            let result = docker(&[
                "network",
                "create",
                "--driver",
                "bridge",
                // No route out: pods reach each other and the host only.
                "--internal",
                "--subnet",
                &cidr,
                "--gateway",
                &gateway,
                "--label",
                &owner,
                "--label",
                &set,
                &name,
            ])
            .await;
            match result {
                Ok(_) => {
                    self.network = name;
                    self.subnet = subnet;
                    return Ok(());
                }
                Err(e) if e.contains("overlap") => continue,
                Err(e) => return Err(e),
            }
        }
        Err(format!("no free /24 in {base}.0.0/16 for a test network"))
    }

    // --- names and addresses ----------------------------------------------

    pub fn replicas(&self) -> usize {
        self.replicas.load(Ordering::SeqCst) as usize
    }

    pub fn pod_name(&self, i: usize) -> String {
        self.manifest.pod_name(i)
    }

    /// The Docker container of pod `i`.
    pub fn container(&self, i: usize) -> String {
        format!("{}-{}", self.id, self.pod_name(i))
    }

    /// The Docker volume playing pod `i`'s PVC.
    pub fn volume(&self, i: usize) -> String {
        format!(
            "{}-{}-{}",
            self.id,
            self.manifest.claim_name,
            self.pod_name(i)
        )
    }

    fn pod(&self, i: usize) -> &Pod {
        self.pods
            .get(i)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("{} does not exist", self.pod_name(i)))
    }

    fn pod_mut(&mut self, i: usize) -> &mut Pod {
        let name = self.pod_name(i);
        self.pods
            .get_mut(i)
            .and_then(Option::as_mut)
            .unwrap_or_else(|| panic!("{name} does not exist"))
    }

    pub fn exists(&self, i: usize) -> bool {
        self.pods.get(i).is_some_and(Option::is_some)
    }

    pub fn ip(&self, i: usize) -> String {
        self.pod(i).ip.clone()
    }

    /// HTTP address of pod `i`, from the host.
    pub fn http(&self, i: usize) -> String {
        format!("{}:{}", self.ip(i), self.manifest.port("http"))
    }

    /// The ordinal of a pod name (`raftset-2` → 2).
    pub fn ordinal_of(&self, pod_name: &str) -> Option<usize> {
        pod_name
            .strip_prefix(&format!("{}-", self.manifest.set_name))
            .and_then(|n| n.parse().ok())
    }

    // --- the controller -----------------------------------------------------

    /// Creates the manifest's `replicas` pods as the StatefulSet controller
    /// does for its `podManagementPolicy`, and waits until all are ready.
    pub async fn create(&mut self) {
        let n = self.manifest.replicas;
        self.scale(n).await;
    }

    /// Changes `spec.replicas` to `n`. Up: creates the missing ordinals,
    /// lowest first; OrderedReady waits for each to be ready before the
    /// next, Parallel creates all then waits. Down: terminates the highest
    /// ordinal first, each fully gone before the next (OrderedReady) or all
    /// at once (Parallel); their volumes stay (whenScaled: Retain).
    pub async fn scale(&mut self, n: usize) {
        let current = self.pods.len();
        self.replicas.store(n as u32, Ordering::SeqCst);
        let ordered = self.manifest.pod_management == PodManagement::OrderedReady;
        if n > current {
            for i in current..n {
                self.pods.push(None);
                self.run_pod(i).await;
                if ordered {
                    self.wait_ready(i).await;
                }
            }
            for i in current..n {
                self.wait_ready(i).await;
            }
        } else if ordered {
            for i in (n..current).rev() {
                self.terminate(i).await;
            }
        } else {
            let hooks = (n..current).map(|i| self.run_pre_stop(i));
            let left = futures::future::join_all(hooks).await;
            let grace = left.into_iter().min().unwrap_or_default().to_string();
            let names: Vec<String> = (n..current).map(|i| self.container(i)).collect();
            let mut args = vec!["stop", "-t", &grace];
            args.extend(names.iter().map(String::as_str));
            docker(&args).await.unwrap_or_else(|e| panic!("{e}"));
            for i in n..current {
                self.remove_container(i).await;
            }
        }
        self.pods.truncate(n);
    }

    /// `docker run` for pod `i`, with a fresh IP, on its volume (made if
    /// missing, as the controller makes a PVC from the claim template).
    async fn run_pod(&mut self, i: usize) {
        if self.next_host > 250 {
            panic!("{}: out of IP addresses in {}.0/24", self.id, self.subnet);
        }
        let ip = format!("{}.{}", self.subnet, self.next_host);
        self.next_host += 1;
        let m = &self.manifest;
        let pod_name = self.pod_name(i);
        let container = self.container(i);
        self.ensure_claim(i, &[]).await;

        let mut env: Vec<(String, String)> = Vec::new();
        for (name, source) in &m.env {
            if self.extra_env.iter().any(|(k, _)| k == name) {
                continue;
            }
            let value = match source {
                EnvSource::Value(v) => v.clone(),
                EnvSource::Field(field) => match field.as_str() {
                    "metadata.name" => pod_name.clone(),
                    "metadata.namespace" => m.namespace.clone(),
                    "status.podIP" => ip.clone(),
                    other => panic!("env {name}: fieldRef {other} is not played"),
                },
            };
            env.push((name.clone(), value));
        }
        // In a cluster the API server is found from the service-account
        // environment; here it is the fake on the gateway, if the set has one.
        if let Some(kube) = &self.kube {
            env.push(("RAFTSET_KUBE_API".into(), kube.url.clone()));
        }
        env.extend(self.extra_env.iter().cloned());

        let grace = m.grace_period_secs.to_string();
        let resolv_conf = format!("{}:/etc/resolv.conf:ro", self.resolv_conf.display());
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &container,
            "--hostname",
            &pod_name,
            "--network",
            &self.network,
            "--ip",
            &ip,
            // Docker's embedded DNS is left out: see `ClusterDns`.
            "--volume",
            &resolv_conf,
            "--stop-timeout",
            &grace,
            // The kubelet ignores the image's HEALTHCHECK; running it here
            // would only add load the pods in a cluster do not have.
            "--no-healthcheck",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.claim_run_args(i));
        for (secret, path) in &m.secrets {
            let dir = self.secrets_dir.join(secret);
            args.extend(["--volume".into(), format!("{}:{path}:ro", dir.display())]);
        }
        for (path, size) in &m.empty_dirs {
            let mut options = format!(
                "{path}:uid={},gid={},mode=0770",
                m.run_as_user, m.run_as_group
            );
            if let Some(size) = size {
                options.push_str(&format!(",size={size}"));
            }
            args.extend(["--tmpfs".into(), options]);
        }
        if m.no_new_privileges {
            args.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        if let Some(cpu) = &m.cpu_limit {
            args.extend(["--cpus".into(), cpu.clone()]);
        }
        if let Some(memory) = &m.memory_limit {
            args.extend(["--memory".into(), memory.clone()]);
        }
        for (k, v) in env {
            args.extend(["--env".into(), format!("{k}={v}")]);
        }
        args.push(self.image.clone());
        args.extend(m.args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Its names resolve as soon as it starts, as Docker's aliases did.
        self.pods[i] = Some(Pod {
            container,
            ip,
            stopped: false,
            paused: false,
            partitioned: false,
        });
        self.publish();
        docker(&args).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// The `docker run` flags of every container on pod `i`'s claim, pod or
    /// one-off: the set's labels, the pod's user, the claim at its mount
    /// path, a read-only root and the dropped capabilities.
    fn claim_run_args(&self, i: usize) -> Vec<String> {
        let m = &self.manifest;
        let [owner, set] = self.labels();
        let mut args = vec![
            "--label".to_string(),
            owner,
            "--label".into(),
            set,
            "--user".into(),
            format!("{}:{}", m.run_as_user, m.run_as_group),
            "--volume".into(),
            format!("{}:{}", self.volume(i), m.data_mount),
        ];
        if m.read_only_root {
            args.push("--read-only".into());
        }
        for cap in &m.cap_drop {
            args.extend(["--cap-drop".into(), cap.clone()]);
        }
        args
    }

    /// Tells every [`Endpoints`] handed out where the pods are now, and
    /// the DNS server which names resolve: a pod's name and the Service's
    /// while the pod runs and is on the network.
    fn publish(&self) {
        let current = self
            .pods
            .iter()
            .enumerate()
            .filter(|(_, pod)| pod.is_some())
            .map(|(i, _)| self.api(i))
            .collect();
        *self.endpoints.addrs.write().unwrap() = current;

        let mut records = BTreeMap::new();
        let mut service = Vec::new();
        for (i, pod) in self.pods.iter().enumerate() {
            let Some(pod) = pod.as_ref().filter(|p| !p.stopped && !p.partitioned) else {
                continue;
            };
            let ip: Ipv4Addr = pod.ip.parse().expect("pod IPs are IPv4");
            records.insert(self.manifest.pod_fqdn(i), vec![ip]);
            service.push(ip);
        }
        if !service.is_empty() {
            records.insert(self.manifest.service_fqdn(), service);
        }
        if let Some(dns) = &self.dns {
            dns.set_records(records);
        }
    }

    /// The client addresses of the pods as they come and go (a re-created
    /// pod has a new IP), as a client resolving the Service would see them.
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints.clone()
    }

    /// Deletes pod `i` as `kubectl delete pod` does: the preStop hook, then
    /// SIGTERM, within the grace period, then the container is gone.
    async fn terminate(&mut self, i: usize) {
        let container = self.pod(i).container.clone();
        if self.pod(i).paused {
            self.unpause(i).await;
        }
        if self.pod(i).partitioned {
            self.heal(i).await;
        }
        let grace = self.run_pre_stop(i).await.to_string();
        docker(&["stop", "-t", &grace, &container])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.remove_container(i).await;
    }

    /// Runs pod `i`'s preStop hook as the kubelet does, within the grace
    /// period, and returns the seconds of the grace period left for SIGTERM
    /// (at least 2, as the kubelet grants after a hook that ran over). A
    /// hook that fails or runs over is logged, not fatal: the pod stops
    /// either way.
    async fn run_pre_stop(&self, i: usize) -> u64 {
        let grace = self.manifest.grace_period_secs;
        let Some(hook) = &self.manifest.pre_stop else {
            return grace;
        };
        let started = std::time::Instant::now();
        let container = self.pod(i).container.clone();
        let mut args = vec!["exec", container.as_str()];
        args.extend(hook.iter().map(String::as_str));
        let outcome = match docker_output(&args, Duration::from_secs(grace)).await {
            Ok(out) if out.success() => out.stdout,
            Ok(out) => format!("exited {:?}: {}{}", out.code, out.stdout, out.stderr),
            Err(e) => e,
        };
        let took = started.elapsed();
        eprintln!(
            "{}: preStop took {:.1} s: {}",
            self.pod_name(i),
            took.as_secs_f64(),
            outcome.trim()
        );
        grace.saturating_sub(took.as_secs()).max(2)
    }

    async fn remove_container(&mut self, i: usize) {
        let container = self.pod(i).container.clone();
        docker(&["rm", "-f", &container])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.pods[i] = None;
        self.publish();
    }

    /// Makes pod `i`'s PVC, with `options` for `docker volume create`,
    /// unless it exists: a claim is made once and outlives its pods.
    async fn ensure_claim(&self, i: usize, options: &[&str]) {
        let volume = self.volume(i);
        let exists = docker_output(&["volume", "inspect", &volume], DOCKER_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .success();
        if exists {
            return;
        }
        let [owner, set] = self.labels();
        let mut args = vec!["volume", "create", "--label", &owner, "--label", &set];
        args.extend_from_slice(options);
        args.push(&volume);
        docker(&args).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Provisions pod `i`'s PVC with room for only `bytes`, to be filled up:
    /// a tmpfs owned by the pod's user, whose contents go when its container
    /// stops. Call it before the pod is first created.
    pub async fn provision_small_claim(&mut self, i: usize, bytes: u64) {
        assert!(
            !self.exists(i),
            "{} already has its claim",
            self.pod_name(i)
        );
        let m = &self.manifest;
        let mount = format!(
            "o=size={bytes},uid={},gid={},mode=0700",
            m.run_as_user, m.run_as_group
        );
        let options = [
            "--driver",
            "local",
            "--opt",
            "type=tmpfs",
            "--opt",
            "device=tmpfs",
            "--opt",
            &mount,
        ];
        self.ensure_claim(i, &options).await;
    }

    /// Where pod `i`'s PVC lives on this host, for tests that damage it.
    pub async fn claim_path(&self, i: usize) -> PathBuf {
        let volume = self.volume(i);
        let out = docker(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        PathBuf::from(out.trim())
    }

    /// `kubectl delete pod`: the pod terminates and the controller creates
    /// it again with the same name and volume (and a new IP). Does not wait
    /// for it to be ready.
    pub async fn delete_pod(&mut self, i: usize) {
        self.terminate(i).await;
        self.run_pod(i).await;
    }

    /// `kubectl delete pvc` then `kubectl delete pod` (a PVC in use is only
    /// removed once its pod is gone): the pod comes back on a new, empty
    /// volume. Does not wait for it to be ready.
    pub async fn delete_pvc(&mut self, i: usize) {
        if self.exists(i) {
            self.terminate(i).await;
        }
        let volume = self.volume(i);
        docker(&["volume", "rm", &volume])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.run_pod(i).await;
    }

    /// `kubectl delete pvc` of a pod that does not run (scaled away, with
    /// `whenScaled: Delete` the controller does it): its next pod starts
    /// empty.
    pub async fn delete_claim(&mut self, i: usize) {
        assert!(!self.exists(i), "{} still runs", self.pod_name(i));
        let volume = self.volume(i);
        docker(&["volume", "rm", &volume])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    // --- faults ----------------------------------------------------------

    /// Freezes every process of the pod (cgroup freezer, like SIGSTOP).
    pub async fn pause(&mut self, i: usize) {
        self.on_container(i, &["pause"]).await;
        self.pod_mut(i).paused = true;
    }

    pub async fn unpause(&mut self, i: usize) {
        self.on_container(i, &["unpause"]).await;
        self.pod_mut(i).paused = false;
    }

    /// Runs `docker <command…> <pod i's container>`; a failure fails the test.
    async fn on_container(&self, i: usize, command: &[&str]) {
        let container = self.pod(i).container.clone();
        let mut args = command.to_vec();
        args.push(&container);
        docker(&args).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Cuts the pod off the network: peers' and clients' packets to it are
    /// dropped (TCP hangs, no reset), and its DNS names vanish.
    pub async fn partition(&mut self, i: usize) {
        let container = self.pod(i).container.clone();
        let network = self.network.clone();
        docker(&["network", "disconnect", &network, &container])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.pod_mut(i).partitioned = true;
        self.publish();
    }

    /// Reconnects a partitioned pod with its IP and DNS names.
    pub async fn heal(&mut self, i: usize) {
        let Pod { container, ip, .. } = self.pod(i).clone();
        let network = self.network.clone();
        docker(&["network", "connect", "--ip", &ip, &network, &container])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.pod_mut(i).partitioned = false;
        self.publish();
    }

    /// What Docker says about pod `i`'s container.
    pub async fn state(&self, i: usize) -> ContainerState {
        let container = self.pod(i).container.clone();
        let json = docker(&["inspect", &container])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let v: Value = serde_json::from_str(&json).expect("docker inspect prints JSON");
        let c = &v[0];
        ContainerState {
            id: c["Id"].as_str().unwrap_or_default().to_string(),
            status: c["State"]["Status"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            running: c["State"]["Running"] == true,
            paused: c["State"]["Paused"] == true,
            exit_code: c["State"]["ExitCode"].as_i64().unwrap_or(-1),
            networks: c["NetworkSettings"]["Networks"]
                .as_object()
                .map(|n| n.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// Waits until pod `i`'s container has stopped by itself (before the
    /// kubelet would restart it); its state then.
    pub async fn wait_exited(&self, i: usize) -> ContainerState {
        poll(
            &format!("{} to exit", self.pod_name(i)),
            DEADLINE,
            Duration::from_millis(200),
            || async {
                let state = self.state(i).await;
                if state.running {
                    Err(format!("{state:?}"))
                } else {
                    Ok(state)
                }
            },
        )
        .await
    }

    /// The network's name (for checking [`ContainerState::networks`]).
    pub fn network(&self) -> &str {
        &self.network
    }

    // --- exec, logs, probes -----------------------------------------------

    /// `kubectl exec raftset-i -- args...` (the image has no shell: the
    /// first arg is a program, e.g. `raftset`).
    pub async fn exec(&self, i: usize, args: &[&str]) -> Output {
        let container = self.pod(i).container.clone();
        let mut full = vec!["exec", container.as_str()];
        full.extend_from_slice(args);
        docker_output(&full, DOCKER_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::exec`] that must succeed; its stdout.
    pub async fn exec_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.exec(i, args).await;
        if !out.success() {
            panic!(
                "`kubectl exec {} -- {}` exited {:?}\nstdout: {}\nstderr: {}",
                self.pod_name(i),
                args.join(" "),
                out.code,
                out.stdout.trim(),
                out.stderr.trim()
            );
        }
        out.stdout
    }

    /// [`Self::exec`] that must succeed; its stdout as bytes (a backup).
    pub async fn exec_bytes(&self, i: usize, args: &[&str]) -> Vec<u8> {
        let container = self.pod(i).container.clone();
        let mut full = vec!["exec", container.as_str()];
        full.extend_from_slice(args);
        let output = docker_raw(&full, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if !output.status.success() {
            panic!(
                "`kubectl exec {} -- {}` failed: {}",
                self.pod_name(i),
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        output.stdout
    }

    /// A one-off pod on pod `i`'s PVC (made if missing), as `kubectl run
    /// --rm -i` with the claim mounted: the image with `args`, `stdin` on
    /// its standard input, each `(host file, path)` of `files` mounted
    /// read-only, the pod's user and security settings, no network. Pod `i`
    /// must not exist (the claim is ReadWriteOnce).
    pub async fn run_on_claim(
        &self,
        i: usize,
        args: &[&str],
        stdin: &[u8],
        files: &[(&Path, &str)],
    ) -> Output {
        assert!(!self.exists(i), "{} still uses its claim", self.pod_name(i));
        self.ensure_claim(i, &[]).await;
        let name = format!("{}-oneoff-{i}", self.id);
        let claim_args = self.claim_run_args(i);
        let binds: Vec<String> = files
            .iter()
            .map(|(host, path)| format!("--volume={}:{path}:ro", host.display()))
            .collect();
        let mut full = vec!["run", "--rm", "-i", "--name", &name, "--network", "none"];
        full.extend(claim_args.iter().map(String::as_str));
        full.extend(binds.iter().map(String::as_str));
        full.push(&self.image);
        full.extend_from_slice(args);
        let output = docker_raw(&full, Some(stdin))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Output {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// [`Self::exec_ok`] of a command with `--json`, parsed.
    pub async fn exec_json(&self, i: usize, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.exec_ok(i, &args).await;
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("`{}` printed no JSON ({e}): {out}", args.join(" ")))
    }

    /// The last `lines` lines pod `i` logged.
    pub async fn logs(&self, i: usize, lines: usize) -> String {
        let container = self.pod(i).container.clone();
        let tail = lines.to_string();
        docker_output(&["logs", "--tail", &tail, &container], DOCKER_TIMEOUT)
            .await
            .map(|o| format!("{}{}", o.stdout, o.stderr))
            .unwrap_or_else(|e| e)
    }

    /// One readiness probe, as the kubelet sends it.
    pub async fn probe_ready(&self, i: usize) -> Result<(), String> {
        self.probe(i, &self.manifest.readiness).await
    }

    /// One liveness probe.
    pub async fn probe_live(&self, i: usize) -> Result<(), String> {
        self.probe(i, &self.manifest.liveness).await
    }

    /// One `httpGet` probe of pod `i`: `Ok` for a 200 within its timeout.
    async fn probe(&self, i: usize, p: &HttpProbe) -> Result<(), String> {
        let addr = format!("{}:{}", self.ip(i), p.port);
        match http::fetch(&addr, &p.path, "*/*", p.timeout).await? {
            Reply { status: 200, .. } => Ok(()),
            Reply { status, body, .. } => Err(format!("{status} {}", body.trim())),
        }
    }

    /// Waits until every pod that exists and runs is ready.
    pub async fn wait_all_ready(&self) {
        for i in self.running() {
            self.wait_ready(i).await;
        }
    }
}

impl Harness for StatefulSet {
    fn name(&self, i: usize) -> String {
        self.pod_name(i)
    }

    /// `kubectl exec <pod> -- raftset transfer-leader`: admin calls reach a
    /// pod's loopback admin port only.
    async fn transfer_leader(&self, at: usize, to: u64) -> Result<(), String> {
        let to = format!("{to:x}");
        let out = self
            .exec(
                at,
                &[
                    "raftset",
                    "transfer-leader",
                    "--to",
                    &to,
                    "--timeout-secs",
                    "30",
                ],
            )
            .await;
        if out.success() {
            Ok(())
        } else {
            Err(format!("exited {:?}: {}", out.code, out.stderr.trim()))
        }
    }

    fn token(&self) -> Option<String> {
        self.endpoints.token.clone()
    }

    /// Client gRPC address of pod `i`, from the host.
    fn api(&self, i: usize) -> String {
        format!("{}:{}", self.ip(i), self.manifest.port("grpc"))
    }

    /// Ordinals of the pods that exist.
    fn ordinals(&self) -> Vec<usize> {
        (0..self.pods.len()).filter(|&i| self.exists(i)).collect()
    }

    /// Pods that exist, run, are not paused and are on the network.
    fn running(&self) -> Vec<usize> {
        self.ordinals()
            .into_iter()
            .filter(|&i| {
                let p = self.pod(i);
                !p.stopped && !p.paused && !p.partitioned
            })
            .collect()
    }

    /// `docker stop` with the grace period: SIGTERM, then SIGKILL once the
    /// grace period is over. The container stays, as [`Self::kill`] leaves
    /// it, until [`Self::restart`]; its exit must be clean.
    async fn stop(&mut self, i: usize) {
        let grace = self.manifest.grace_period_secs.to_string();
        self.on_container(i, &["stop", "-t", &grace]).await;
        self.pod_mut(i).stopped = true;
        self.publish();
        let state = self.state(i).await;
        assert_eq!(
            state.exit_code,
            0,
            "{} exited uncleanly; its log:\n{}",
            self.pod_name(i),
            self.logs(i, 40).await
        );
    }

    /// SIGKILL to the pod's process: no shutdown, no flush. The container
    /// stays (as a crashed container in its pod) until [`Self::restart`].
    async fn kill(&mut self, i: usize) {
        self.on_container(i, &["kill", "--signal", "KILL"]).await;
        self.pod_mut(i).stopped = true;
        self.publish();
    }

    /// Starts the pod's container again, as the kubelet restarts a crashed
    /// container: same pod, IP and volume. Does not wait for readiness.
    async fn restart(&mut self, i: usize) {
        self.pod_mut(i).stopped = false;
        self.publish();
        self.on_container(i, &["start"]).await;
    }

    /// Waits until pod `i` passes its readiness probe; fails at once,
    /// with its log, if its container exits.
    async fn wait_ready(&self, i: usize) {
        let deadline = DEADLINE.min(self.manifest.startup_window());
        let mut polls = 0u32;
        poll(
            &format!("{} to pass its readiness probe", self.pod_name(i)),
            deadline,
            Duration::from_millis(200),
            || {
                polls += 1;
                let check_state = polls.is_multiple_of(10);
                async move {
                    let result = self.probe_ready(i).await;
                    if result.is_err() && check_state {
                        let state = self.state(i).await;
                        if !state.running {
                            panic!(
                                "{} exited (code {}) before it was ready; its log:\n{}",
                                self.pod_name(i),
                                state.exit_code,
                                self.logs(i, 40).await
                            );
                        }
                    }
                    result
                }
            },
        )
        .await
    }
}

impl Drop for StatefulSet {
    fn drop(&mut self) {
        drop(self.kube.take());
        drop(self.dns.take());
        let filter = format!("label={LABEL_SET}={}", self.id);
        let containers = docker_blocking(&["ps", "-aq", "--filter", &filter]).unwrap_or_default();
        if std::thread::panicking() {
            for (i, pod) in self.pods.iter().enumerate() {
                let Some(pod) = pod else { continue };
                let logs = std::process::Command::new("docker")
                    .args(["logs", "--tail", "30", &pod.container])
                    .output()
                    .map(|o| {
                        format!(
                            "{}{}",
                            String::from_utf8_lossy(&o.stdout),
                            String::from_utf8_lossy(&o.stderr)
                        )
                    })
                    .unwrap_or_default();
                eprintln!(
                    "--- last lines of {} ({}) ---\n{logs}",
                    self.pod_name(i),
                    pod.container
                );
            }
        }
        let mut errors = Vec::new();
        let ids: Vec<&str> = containers.lines().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            errors.extend(docker_blocking(&args).err());
        }
        let volumes =
            docker_blocking(&["volume", "ls", "-q", "--filter", &filter]).unwrap_or_default();
        let ids: Vec<&str> = volumes.lines().collect();
        if !ids.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(ids);
            errors.extend(docker_blocking(&args).err());
        }
        if !self.network.is_empty() {
            errors.extend(docker_blocking(&["network", "rm", &self.network]).err());
        }
        if !self.secrets_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.secrets_dir);
        }
        if !self.resolv_conf.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.resolv_conf);
        }
        for e in errors {
            eprintln!("e2e cleanup of {}: {e}", self.id);
        }
    }
}

/// Writes the pods' `/etc/resolv.conf`: the set's DNS server on `gateway`
/// and nothing else, readable by the pods' user.
/// Ordinals the harness's peer certificates cover: more than any test
/// scales to.
const CERTIFIED_ORDINALS: u32 = 10;

impl StatefulSet {
    /// Makes the Secrets the manifest mounts, as an operator would before
    /// deploying: the peer TLS Secret with `raftset certs`, for this set's
    /// names, and the client tokens with `raftset tokens`; their files
    /// owned by the pods' group and readable by it only (the manifest's
    /// `fsGroup` and `defaultMode: 0440`). Every file of a Secret is
    /// mounted, whatever `items` the manifest picks.
    /// The admin token of the client tokens Secret, when the manifest
    /// mounts one: what the harness's clients send.
    fn admin_token(&self) -> Option<String> {
        let (secret, _) = self
            .manifest
            .secrets
            .iter()
            .find(|(secret, _)| secret.ends_with("client-tokens"))?;
        let path = self.secrets_dir.join(secret).join("admin.token");
        let token =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Some(token.trim().to_string())
    }

    fn make_secrets(&self) -> Result<(), String> {
        let m = &self.manifest;
        for (secret, _) in &m.secrets {
            let dir = self.secrets_dir.join(secret);
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_raftset"));
            if secret.ends_with("peer-tls") {
                command
                    .arg("certs")
                    .args(["--replicas", &CERTIFIED_ORDINALS.to_string()])
                    .args(["--statefulset", &m.set_name])
                    .args(["--service", &m.service_name])
                    .args(["--namespace", &m.namespace]);
            } else if secret.ends_with("client-tokens") {
                command.arg("tokens");
            } else {
                return Err(format!(
                    "the harness plays only the peer TLS and client tokens Secrets, not {secret}"
                ));
            }
            let out = command
                .arg("--out-dir")
                .arg(&dir)
                .output()
                .map_err(|e| format!("raftset for {secret}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "making {secret} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            use std::os::unix::fs::PermissionsExt;
            let files = std::fs::read_dir(&dir).map_err(|e| e.to_string())?;
            for file in files {
                let path = file.map_err(|e| e.to_string())?.path();
                std::os::unix::fs::chown(&path, Some(m.run_as_user), Some(m.run_as_group))
                    .and_then(|_| {
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440))
                    })
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        Ok(())
    }
}

fn write_resolv_conf(path: &Path, gateway: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("nameserver {gateway}\noptions timeout:1\n"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}
