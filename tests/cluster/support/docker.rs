//! A StatefulSet played with real containers: the e2e harness.
//!
//! Kubernetes cannot run on the test machines, but Docker can, and a
//! StatefulSet is a small contract: pods created in order (OrderedReady: the
//! next only once the previous passes its readiness probe; Parallel: all at
//! once), a stable name and DNS name per ordinal, one volume per ordinal that
//! outlives its pod, exec into a pod. [`StatefulSet`] plays that contract
//! with the image built from the real `Dockerfile`, driven by the real
//! `k8s/` manifests as `kubectl kustomize` renders them: container args, env (the downward-API fields filled
//! in), ports, probes, the volume mount path, the security context, the
//! grace period, `podManagementPolicy`, `replicas` and `serviceName` all
//! come from [`Manifest`], so a wrong manifest fails the tests.
//!
//! How the pieces map:
//!
//! | Kubernetes | here |
//! |---|---|
//! | pod `raftset-N` | container `<set id>-raftset-N`, hostname `raftset-N` |
//! | headless Service DNS | network aliases `raftset-N.<service>.<ns>.svc.cluster.local` and `<service>.<ns>.svc.cluster.local` on a private `--internal` network |
//! | PVC `data-raftset-N` | named volume `<set id>-data-raftset-N` at the claim's mount path |
//! | emptyDir | `--tmpfs` (size limit, owned by the pod's user) |
//! | securityContext | `--user`, `--read-only`, `--cap-drop`, `no-new-privileges` |
//! | resources.limits | `--cpus`, `--memory` |
//! | terminationGracePeriodSeconds | `--stop-timeout`, `docker stop -t` |
//! | probes (kubelet) | HTTP GET from the host to the pod's IP on the network |
//! | cluster DNS for names that do not exist | a tiny DNS server on the network's gateway (`--dns`) that answers NXDOMAIN, as CoreDNS does for a pod that does not exist; Docker's embedded DNS answers the aliases and forwards the rest to it |
//! | Kubernetes API (`spec.replicas`) | a tiny HTTP server on the network's gateway, `RAFTSET_KUBE_API` |
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
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kube::FakeKubeApi;
use raftset::proto::StatusResponse;
use raftset::Client;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

const LABEL_OWNER: &str = "raftset-e2e.owner";
const LABEL_SET: &str = "raftset-e2e.set";
/// Kubernetes' default cluster domain: part of every pod's DNS name.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The private networks are /24s carved from this /16 (override with
/// `RAFTSET_E2E_SUBNET_BASE=10.x`); Docker refuses overlapping subnets, so
/// each set takes the first free one.
const SUBNET_BASE: &str = "10.231";
/// How long one `docker` command may take (a graceful stop waits out the
/// grace period at most; this is longer).
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// The manifests

/// `podManagementPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodManagement {
    OrderedReady,
    Parallel,
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    Value(String),
    /// A downward-API `fieldRef.fieldPath`.
    Field(String),
}

/// An `httpGet` probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub path: String,
    pub port: u16,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

/// What the harness takes from the StatefulSet and its Services.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The kustomization it was read from.
    pub source: PathBuf,
    pub set_name: String,
    pub namespace: String,
    /// The headless Service that gives pods their DNS names.
    pub service_name: String,
    pub replicas: usize,
    pub pod_management: PodManagement,
    pub image: String,
    pub args: Vec<String>,
    /// Container ports by name.
    pub ports: BTreeMap<String, u16>,
    pub env: Vec<(String, EnvSource)>,
    pub readiness: HttpProbe,
    pub liveness: HttpProbe,
    pub startup: Option<HttpProbe>,
    /// The volumeClaimTemplate's name (the PVC is `<claim>-<pod>`).
    pub claim_name: String,
    /// Where the claim is mounted.
    pub data_mount: String,
    /// emptyDir mounts: path and Docker size (`64m`).
    pub empty_dirs: Vec<(String, Option<String>)>,
    pub run_as_user: u32,
    pub run_as_group: u32,
    pub read_only_root: bool,
    pub cap_drop: Vec<String>,
    pub no_new_privileges: bool,
    pub grace_period_secs: u64,
    /// Docker units (`--cpus 1`, `--memory 512m`).
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

/// The repository's `k8s/` directory.
pub fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s")
}

impl Manifest {
    /// `k8s/base`, as `kubectl apply -k k8s/` deploys it.
    pub fn base() -> Manifest {
        Manifest::load(&k8s_dir().join("base")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `k8s/overlays/<name>`.
    pub fn overlay(name: &str) -> Manifest {
        Manifest::load(&k8s_dir().join("overlays").join(name)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Reads what the kustomization in `dir` renders to.
    pub fn load(dir: &Path) -> Result<Manifest, String> {
        let objects = render(dir)?;
        Manifest::from_objects(dir, &objects)
            .map_err(|e| format!("manifest {}: {e}", dir.display()))
    }

    fn from_objects(dir: &Path, objects: &[Value]) -> Result<Manifest, String> {
        let sts = objects
            .iter()
            .find(|o| o["kind"] == "StatefulSet")
            .ok_or("no StatefulSet")?;
        let set_name = text(sts, "metadata.name")?;
        let namespace = opt_text(sts, "metadata.namespace").unwrap_or_else(|| "default".into());
        let spec = at(sts, "spec")?;
        let service_name = text(spec, "serviceName")?;
        let replicas = at(spec, "replicas").map_or(Ok(1), |_| number(spec, "replicas"))? as usize;
        let pod_management = match opt_text(spec, "podManagementPolicy").as_deref() {
            None | Some("OrderedReady") => PodManagement::OrderedReady,
            Some("Parallel") => PodManagement::Parallel,
            Some(other) => return Err(format!("unknown podManagementPolicy {other}")),
        };
        let template = at(spec, "template")?;
        let labels = at(template, "metadata.labels")?;
        let pod = at(template, "spec")?;
        let containers = at(pod, "containers")?
            .as_array()
            .ok_or("containers is not a list")?;
        if containers.len() != 1 {
            return Err(format!(
                "the harness plays one container per pod, found {}",
                containers.len()
            ));
        }
        let c = &containers[0];
        let image = text(c, "image")?;
        let args = match c.get("args") {
            Some(list) => strings(list, "args")?,
            None => Vec::new(),
        };
        let mut ports = BTreeMap::new();
        for p in at(c, "ports")?.as_array().ok_or("ports is not a list")? {
            let port = number(p, "containerPort")? as u16;
            ports.insert(text(p, "name")?, port);
        }
        let mut env = Vec::new();
        for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            let name = text(e, "name")?;
            let source = if let Some(field) = opt_text(e, "valueFrom.fieldRef.fieldPath") {
                EnvSource::Field(field)
            } else if e.get("valueFrom").is_some() {
                return Err(format!("env {name}: only value and fieldRef are played"));
            } else {
                EnvSource::Value(scalar_text(e.get("value").unwrap_or(&Value::Null)))
            };
            env.push((name, source));
        }
        let probe = |name: &str| -> Result<Option<HttpProbe>, String> {
            let Some(p) = c.get(name) else {
                return Ok(None);
            };
            let port =
                resolve_port(at(p, "httpGet.port")?, &ports).map_err(|e| format!("{name}: {e}"))?;
            let secs =
                |field: &str, default: u64| p.get(field).and_then(Value::as_u64).unwrap_or(default);
            Ok(Some(HttpProbe {
                path: text(p, "httpGet.path")?,
                port,
                period: Duration::from_secs(secs("periodSeconds", 10)),
                timeout: Duration::from_secs(secs("timeoutSeconds", 1)),
                failure_threshold: secs("failureThreshold", 3) as u32,
            }))
        };
        let readiness = probe("readinessProbe")?.ok_or("no readinessProbe")?;
        let liveness = probe("livenessProbe")?.ok_or("no livenessProbe")?;
        let startup = probe("startupProbe")?;

        let claims = at(spec, "volumeClaimTemplates")?
            .as_array()
            .ok_or("volumeClaimTemplates is not a list")?;
        if claims.len() != 1 {
            return Err("the harness plays exactly one volumeClaimTemplate".into());
        }
        let claim_name = text(&claims[0], "metadata.name")?;
        let volumes = pod.get("volumes").and_then(Value::as_array);
        let mut data_mount = None;
        let mut empty_dirs = Vec::new();
        for m in at(c, "volumeMounts")?
            .as_array()
            .ok_or("volumeMounts is not a list")?
        {
            let name = text(m, "name")?;
            let path = text(m, "mountPath")?;
            if name == claim_name {
                data_mount = Some(path);
                continue;
            }
            let volume = volumes
                .into_iter()
                .flatten()
                .find(|v| v["name"] == name.as_str())
                .ok_or_else(|| format!("volumeMount {name} names no volume"))?;
            let empty_dir = volume
                .get("emptyDir")
                .ok_or_else(|| format!("volume {name}: only emptyDir is played"))?;
            let size = opt_text(empty_dir, "sizeLimit")
                .map(|q| memory_quantity(&q))
                .transpose()?;
            empty_dirs.push((path, size));
        }
        let data_mount = data_mount.ok_or_else(|| format!("no volumeMount for {claim_name}"))?;

        // The container's securityContext wins over the pod's.
        let security = |field: &str| {
            c.get("securityContext")
                .and_then(|s| lookup(s, field))
                .or_else(|| pod.get("securityContext").and_then(|s| lookup(s, field)))
                .cloned()
        };
        let run_as_user = security("runAsUser")
            .and_then(|v| v.as_u64())
            .ok_or("no runAsUser: the pod would run as the image's user")?
            as u32;
        let run_as_group = security("runAsGroup")
            .and_then(|v| v.as_u64())
            .unwrap_or(run_as_user as u64) as u32;
        if security("runAsNonRoot") == Some(Value::Bool(true)) && run_as_user == 0 {
            return Err("runAsNonRoot with runAsUser 0".into());
        }
        let read_only_root = security("readOnlyRootFilesystem") == Some(Value::Bool(true));
        let cap_drop = match security("capabilities.drop") {
            Some(list) => strings(&list, "capabilities.drop")?,
            None => Vec::new(),
        };
        let no_new_privileges = security("allowPrivilegeEscalation") == Some(Value::Bool(false));
        let grace_period_secs = pod
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(30);
        let cpu_limit = opt_text(c, "resources.limits.cpu")
            .map(|q| cpu_quantity(&q))
            .transpose()?;
        let memory_limit = opt_text(c, "resources.limits.memory")
            .map(|q| memory_quantity(&q))
            .transpose()?;

        check_services(objects, &service_name, &namespace, labels, &ports)?;

        Ok(Manifest {
            source: dir.to_path_buf(),
            set_name,
            namespace,
            service_name,
            replicas,
            pod_management,
            image,
            args,
            ports,
            env,
            readiness,
            liveness,
            startup,
            claim_name,
            data_mount,
            empty_dirs,
            run_as_user,
            run_as_group,
            read_only_root,
            cap_drop,
            no_new_privileges,
            grace_period_secs,
            cpu_limit,
            memory_limit,
        })
    }

    /// A container port by its name in the manifest.
    pub fn port(&self, name: &str) -> u16 {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("the manifest has no container port named {name}"))
    }

    /// Pod `i`'s name.
    pub fn pod_name(&self, i: usize) -> String {
        format!("{}-{i}", self.set_name)
    }

    /// Pod `i`'s DNS name under the headless Service.
    pub fn pod_fqdn(&self, i: usize) -> String {
        format!(
            "{}.{}.{}.svc.{CLUSTER_DOMAIN}",
            self.pod_name(i),
            self.service_name,
            self.namespace
        )
    }

    /// The headless Service's own DNS name (every pod, ready or not).
    pub fn service_fqdn(&self) -> String {
        format!(
            "{}.{}.svc.{CLUSTER_DOMAIN}",
            self.service_name, self.namespace
        )
    }

    /// The longest a pod may take to start before Kubernetes would restart
    /// it: the startup probe's window, else the liveness probe's.
    pub fn startup_window(&self) -> Duration {
        let p = self.startup.as_ref().unwrap_or(&self.liveness);
        p.period * p.failure_threshold
    }
}

/// The Services the pods rely on: the headless one named by `serviceName`
/// must exist, select the pods and publish unready pods (peers find each
/// other before they are ready); every Service that selects the pods must
/// target ports the container has.
fn check_services(
    objects: &[Value],
    service_name: &str,
    namespace: &str,
    pod_labels: &Value,
    ports: &BTreeMap<String, u16>,
) -> Result<(), String> {
    let selects_pods = |svc: &Value| {
        svc["spec"]["selector"]
            .as_object()
            .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| &pod_labels[k] == v))
    };
    let services: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Service").collect();
    let headless = services
        .iter()
        .find(|s| s["metadata"]["name"] == service_name)
        .ok_or_else(|| format!("serviceName {service_name} names no Service"))?;
    if headless["spec"]["clusterIP"] != "None" {
        return Err(format!("Service {service_name} is not headless"));
    }
    if headless["spec"]["publishNotReadyAddresses"] != true {
        return Err(format!(
            "Service {service_name} does not publish unready pods: peers could not find each other"
        ));
    }
    for svc in &services {
        let name = svc["metadata"]["name"].as_str().unwrap_or("?");
        if opt_text(svc, "metadata.namespace")
            .as_deref()
            .unwrap_or("default")
            != namespace
        {
            return Err(format!("Service {name} is not in namespace {namespace}"));
        }
        if !selects_pods(svc) {
            if *svc == *headless {
                return Err(format!("Service {name} does not select the pods"));
            }
            continue;
        }
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            let target = p.get("targetPort").or_else(|| p.get("port"));
            let target = target.ok_or_else(|| format!("Service {name}: a port without port"))?;
            resolve_port(target, ports).map_err(|e| format!("Service {name}: {e}"))?;
        }
    }
    Ok(())
}

fn resolve_port(port: &Value, ports: &BTreeMap<String, u16>) -> Result<u16, String> {
    match port {
        Value::Number(n) => {
            let n = n.as_u64().ok_or("bad port number")? as u16;
            if ports.values().any(|&p| p == n) {
                Ok(n)
            } else {
                Err(format!("port {n} is not a container port"))
            }
        }
        Value::String(name) => ports
            .get(name)
            .copied()
            .ok_or_else(|| format!("port {name} names no container port")),
        other => Err(format!("bad port {other}")),
    }
}

/// `512Mi` → `512m` (Docker's binary units).
fn memory_quantity(q: &str) -> Result<String, String> {
    let units = [("Ki", "k"), ("Mi", "m"), ("Gi", "g")];
    for (k8s, docker) in units {
        if let Some(n) = q.strip_suffix(k8s) {
            n.parse::<u64>().map_err(|_| format!("bad quantity {q}"))?;
            return Ok(format!("{n}{docker}"));
        }
    }
    q.parse::<u64>()
        .map(|n| n.to_string())
        .map_err(|_| format!("quantity {q}: only Ki, Mi, Gi or bytes are played"))
}

/// `1` → `1`, `500m` → `0.5`.
fn cpu_quantity(q: &str) -> Result<String, String> {
    if let Some(milli) = q.strip_suffix('m') {
        let milli: u64 = milli.parse().map_err(|_| format!("bad cpu {q}"))?;
        return Ok(format!("{}", milli as f64 / 1000.0));
    }
    q.parse::<f64>()
        .map(|c| c.to_string())
        .map_err(|_| format!("bad cpu {q}"))
}

/// Every object the kustomization in `dir` produces, as JSON: rendered by
/// `kubectl kustomize` (the kustomize that `kubectl apply -k` runs), then
/// printed as JSON by an empty `kubectl patch --local`, which reads the
/// objects from its standard input and talks to no API server.
pub fn render(dir: &Path) -> Result<Vec<Value>, String> {
    let dir = dir.to_str().ok_or("the k8s/ path is not UTF-8")?;
    let yaml = kubectl(&["kustomize", dir], None)?;
    let json = kubectl(
        &["patch", "--local", "-f", "-", "-p", "{}", "-o", "json"],
        Some(yaml),
    )?;
    serde_json::Deserializer::from_slice(&json)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("kubectl printed no JSON for {dir}: {e}"))
}

/// Runs `kubectl args...` with `stdin` on its standard input; its stdout.
/// A missing kubectl is an error that says what to install.
fn kubectl(args: &[&str], stdin: Option<Vec<u8>>) -> Result<Vec<u8>, String> {
    let mut child = std::process::Command::new("kubectl")
        .args(args)
        // No kubeconfig: rendering must never reach a cluster.
        .env("KUBECONFIG", "/dev/null")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "kubectl is not installed: these tests render k8s/ \
                 with `kubectl kustomize`; install kubectl (with kustomize 5, as in kubectl 1.32) \
                 or leave the e2e tests out with `cargo test --test cluster -- --skip e2e`"
                .to_string(),
            _ => format!("cannot run kubectl: {e}"),
        })?;
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        // Written alongside reading the output, so neither pipe fills up.
        std::thread::spawn(move || std::io::Write::write_all(&mut pipe, &bytes));
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("kubectl: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`kubectl {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(output.stdout)
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

fn at<'a>(value: &'a Value, path: &str) -> Result<&'a Value, String> {
    lookup(value, path).ok_or_else(|| format!("{path} is missing"))
}

fn text(value: &Value, path: &str) -> Result<String, String> {
    at(value, path).map(scalar_text)
}

fn opt_text(value: &Value, path: &str) -> Option<String> {
    lookup(value, path).map(scalar_text)
}

fn number(value: &Value, path: &str) -> Result<u64, String> {
    at(value, path)?
        .as_u64()
        .ok_or_else(|| format!("{path} is not a number"))
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn strings(list: &Value, what: &str) -> Result<Vec<String>, String> {
    list.as_array()
        .ok_or_else(|| format!("{what} is not a list"))
        .map(|items| items.iter().map(scalar_text).collect())
}

// ---------------------------------------------------------------------------
// Docker

/// The e2e tests take turns (see the module docs).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `docker args...` and returns what it printed, whatever its exit
/// code; `Err` only if it could not run or took longer than `timeout`.
pub async fn docker_output(args: &[&str], timeout: Duration) -> Result<Output, String> {
    let mut command = Command::new("docker");
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let run = command.output();
    let output = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("`docker {}` took longer than {timeout:?}", args.join(" ")))?
        .map_err(|e| format!("cannot run docker: {e}"))?;
    Ok(Output {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Runs `docker args...` with `stdin` on its standard input; raw output.
async fn docker_raw(args: &[&str], stdin: Option<&[u8]>) -> Result<std::process::Output, String> {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let bytes = bytes.to_vec();
        // Written alongside reading the output, so neither pipe fills up.
        tokio::spawn(async move {
            let _ = pipe.write_all(&bytes).await;
        });
    }
    tokio::time::timeout(DOCKER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "`docker {}` took longer than {DOCKER_TIMEOUT:?}",
                args.join(" ")
            )
        })?
        .map_err(|e| format!("docker: {e}"))
}

/// Runs `docker args...`; its trimmed stdout, or an error naming the
/// command and what it printed on stderr.
pub async fn docker(args: &[&str]) -> Result<String, String> {
    let output = docker_output(args, DOCKER_TIMEOUT).await?;
    if output.success() {
        Ok(output.stdout.trim().to_string())
    } else {
        Err(format!(
            "`docker {}` failed ({:?}): {}",
            args.join(" "),
            output.code,
            output.stderr.trim()
        ))
    }
}

/// The same, blocking: for `Drop`, which cannot await.
fn docker_blocking(args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "`docker {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Docker answers (or the test fails here, saying so), and what earlier
/// runs whose process is gone left behind is removed. Once per test binary.
pub async fn ensure_docker() {
    static CHECKED: tokio::sync::OnceCell<Result<String, String>> =
        tokio::sync::OnceCell::const_new();
    let result = CHECKED
        .get_or_init(|| async {
            let info = docker_output(
                &["info", "--format", "{{.ServerVersion}}"],
                Duration::from_secs(30),
            )
            .await;
            let version = match info {
                Ok(out) if out.success() && !out.stdout.trim().is_empty() => {
                    out.stdout.trim().to_string()
                }
                Ok(out) => {
                    return Err(format!(
                        "the Docker daemon does not answer (`docker info` exited {:?}: {})",
                        out.code,
                        out.stderr.trim()
                    ))
                }
                Err(e) => return Err(e),
            };
            tokio::task::spawn_blocking(sweep_orphans)
                .await
                .map_err(|e| e.to_string())?;
            Ok(version)
        })
        .await;
    if let Err(e) = result {
        panic!(
            "the e2e tests need a running Docker daemon and cannot run without one: {e}. \
             Start Docker, or leave these tests out with `cargo test --test cluster -- --skip e2e`."
        );
    }
}

/// Removes containers, volumes and networks labelled by a test process
/// that no longer exists (a run that was killed before its `Drop`).
fn sweep_orphans() {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    let filter = format!("label={LABEL_OWNER}");
    let format = format!("{{{{.ID}}}} {{{{.Label \"{LABEL_OWNER}\"}}}}");
    let orphans = |kind: &[&str]| -> Vec<String> {
        let mut args = kind.to_vec();
        args.extend(["--filter", &filter, "--format", &format]);
        docker_blocking(&args)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, pid)| !alive(pid))
            .map(|(id, _)| id.to_string())
            .collect()
    };
    let remove = |what: &[&str], ids: Vec<String>| {
        if !ids.is_empty() {
            eprintln!(
                "e2e: removing {} left by dead test runs: {ids:?}",
                what.join(" ")
            );
            let mut args = what.to_vec();
            args.extend(ids.iter().map(String::as_str));
            let _ = docker_blocking(&args);
        }
    };
    remove(&["rm", "-f", "-v"], orphans(&["ps", "-a"]));
    // `docker volume ls` and `network ls` have no Label template function
    // in every client version, so ask for the label with inspect instead.
    for (list, inspect, rm) in [
        (&["volume", "ls", "-q"][..], "volume", &["volume", "rm"][..]),
        (
            &["network", "ls", "-q"][..],
            "network",
            &["network", "rm"][..],
        ),
    ] {
        let mut args = list.to_vec();
        args.extend(["--filter", &filter]);
        let ids: Vec<String> = docker_blocking(&args)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        let dead = ids
            .into_iter()
            .filter(|id| {
                let label = format!("{{{{index .Labels \"{LABEL_OWNER}\"}}}}");
                docker_blocking(&[inspect, "inspect", "--format", &label, id])
                    .is_ok_and(|pid| !pid.is_empty() && !alive(&pid))
            })
            .collect();
        remove(rm, dead);
    }
}

/// The image, built once per test binary: `scripts/build-image` (the real
/// Dockerfile, with the host's release binary), tagged with the manifest's
/// image name so the pods run what the manifest names.
/// `RAFTSET_E2E_IMAGE=<tag>` uses an existing image instead.
pub async fn ensure_image(manifest_image: &str) -> String {
    static IMAGE: tokio::sync::OnceCell<Result<String, String>> =
        tokio::sync::OnceCell::const_new();
    let result = IMAGE
        .get_or_init(|| async {
            if let Ok(image) = std::env::var("RAFTSET_E2E_IMAGE") {
                docker(&["image", "inspect", "--format", "{{.Id}}", &image])
                    .await
                    .map_err(|e| format!("RAFTSET_E2E_IMAGE={image}: {e}"))?;
                return Ok(image);
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-image");
            let started = Instant::now();
            let run = Command::new(&script)
                .arg("--no-smoke")
                .env("IMAGE", manifest_image)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output();
            // A missing release binary is built first: minutes on two cores.
            let output = tokio::time::timeout(Duration::from_secs(1200), run)
                .await
                .map_err(|_| format!("{} took longer than 20 minutes", script.display()))?
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !output.status.success() {
                let stdout = String::from_utf8_lossy(&output.stdout);
                let tail: Vec<&str> = stdout.lines().rev().take(20).collect();
                return Err(format!(
                    "{} failed: {}\n{}",
                    script.display(),
                    stderr.trim(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            for line in stderr.lines().filter(|l| l.contains("warning")) {
                eprintln!("e2e: {line}");
            }
            eprintln!(
                "e2e: built {manifest_image} with scripts/build-image in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(manifest_image.to_string())
        })
        .await;
    match result {
        Ok(image) => image.clone(),
        Err(e) => panic!("cannot build the image for the e2e tests: {e}"),
    }
}

// ---------------------------------------------------------------------------
// The fake Kubernetes API

// ---------------------------------------------------------------------------
// Cluster DNS for names that do not exist

/// Answers every DNS query on `gateway:53` with an authoritative NXDOMAIN.
///
/// Pods find each other by looking up every ordinal's name until two in a
/// row do not exist. In a cluster, CoreDNS says so at once. Docker's
/// embedded DNS resolves the network aliases itself and, on an internal
/// network, has nowhere to forward other names to: the lookup times out
/// (2 s with `timeout:1`) instead of failing. With `--dns <gateway>` it
/// forwards them here, from the pod's own network, and gets a fast "no
/// such name".
async fn start_dns(gateway: &str) -> Result<tokio::task::JoinHandle<()>, String> {
    let socket = tokio::net::UdpSocket::bind((gateway, 53))
        .await
        .map_err(|e| {
            format!("cannot serve DNS on {gateway}:53 (the e2e tests run as root): {e}")
        })?;
    Ok(tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                // An ICMP error from an earlier reply: nothing to answer.
                Err(_) => continue,
            };
            if let Some(reply) = nxdomain(&buf[..n]) {
                let _ = socket.send_to(&reply, from).await;
            }
        }
    }))
}

/// The NXDOMAIN reply to a one-question DNS query, or `None` for anything
/// that is not one.
fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    let flags = u16::from_be_bytes([*query.get(2)?, *query.get(3)?]);
    let questions = u16::from_be_bytes([*query.get(4)?, *query.get(5)?]);
    if flags & 0x8000 != 0 || questions != 1 {
        return None;
    }
    let mut pos = 12;
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        pos += len;
    }
    let end = pos + 4;
    if end > query.len() {
        return None;
    }
    // QR, the query's opcode and RD, AA, RA, rcode 3 (NXDOMAIN).
    let reply_flags = 0x8000 | (flags & 0x7900) | 0x0400 | 0x0080 | 3;
    let mut reply = Vec::with_capacity(end);
    reply.extend_from_slice(&query[..2]);
    reply.extend_from_slice(&u16::to_be_bytes(reply_flags));
    reply.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    reply.extend_from_slice(&query[12..end]);
    Some(reply)
}

// ---------------------------------------------------------------------------
// HTTP from the host

/// `GET path` with a deadline for the whole exchange: status and body.
pub async fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: raftset-e2e\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("incomplete reply from {addr}: {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("GET http://{addr}{path}: no answer within {timeout:?}"))?
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

pub use super::{poll, DEADLINE};

// ---------------------------------------------------------------------------
// The StatefulSet

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
    dns: Option<tokio::task::JoinHandle<()>>,
    /// Environment added to (or replacing) the manifest's, for every pod.
    extra_env: Vec<(String, String)>,
    endpoints: Endpoints,
}

/// The client addresses of a set's pods, kept current by the set.
#[derive(Clone, Default)]
pub struct Endpoints(Arc<std::sync::RwLock<Vec<String>>>);

impl Endpoints {
    /// The `n`th address, counting round the pods that exist now.
    pub fn nth(&self, n: usize) -> Option<String> {
        let all = self.0.read().unwrap();
        (!all.is_empty()).then(|| all[n % all.len()].clone())
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
        set.dns = Some(start_dns(&gateway).await.unwrap_or_else(|e| panic!("{e}")));
        set
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

    /// Ordinals of the pods that exist.
    pub fn ordinals(&self) -> Vec<usize> {
        (0..self.pods.len()).filter(|&i| self.exists(i)).collect()
    }

    /// Pods that exist, run, are not paused and are on the network.
    pub fn reachable(&self) -> Vec<usize> {
        self.ordinals()
            .into_iter()
            .filter(|&i| {
                let p = self.pod(i);
                !p.stopped && !p.paused && !p.partitioned
            })
            .collect()
    }

    pub fn ip(&self, i: usize) -> String {
        self.pod(i).ip.clone()
    }

    /// Client gRPC address of pod `i`, from the host.
    pub fn api(&self, i: usize) -> String {
        format!("{}:{}", self.ip(i), self.manifest.port("grpc"))
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
            let names: Vec<String> = (n..current).map(|i| self.container(i)).collect();
            let grace = self.manifest.grace_period_secs.to_string();
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
        let volume = self.volume(i);
        let [owner, set] = self.labels();
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
        // environment; here it is the fake on the gateway.
        let kube = self
            .kube
            .as_ref()
            .map(|k| k.url.clone())
            .unwrap_or_default();
        env.push(("RAFTSET_KUBE_API".into(), kube));
        env.extend(self.extra_env.iter().cloned());

        let user = format!("{}:{}", m.run_as_user, m.run_as_group);
        let alias = m.pod_fqdn(i);
        let service = m.service_fqdn();
        let mount = format!("{volume}:{}", m.data_mount);
        let grace = m.grace_period_secs.to_string();
        let gateway = format!("{}.1", self.subnet);
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
            "--network-alias",
            &alias,
            "--network-alias",
            &service,
            "--dns",
            &gateway,
            "--dns-option",
            "timeout:1",
            "--label",
            &owner,
            "--label",
            &set,
            "--user",
            &user,
            "--stop-timeout",
            &grace,
            "--volume",
            &mount,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if m.read_only_root {
            args.push("--read-only".into());
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
        for cap in &m.cap_drop {
            args.extend(["--cap-drop".into(), cap.clone()]);
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
        docker(&args).await.unwrap_or_else(|e| panic!("{e}"));
        self.pods[i] = Some(Pod {
            container,
            ip,
            stopped: false,
            paused: false,
            partitioned: false,
        });
        self.publish_endpoints();
    }

    /// Tells every [`Endpoints`] handed out where the pods are now.
    fn publish_endpoints(&self) {
        let current = self
            .pods
            .iter()
            .enumerate()
            .filter(|(_, pod)| pod.is_some())
            .map(|(i, _)| self.api(i))
            .collect();
        *self.endpoints.0.write().unwrap() = current;
    }

    /// The client addresses of the pods as they come and go (a re-created
    /// pod has a new IP), as a client resolving the Service would see them.
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints.clone()
    }

    /// Deletes pod `i` as `kubectl delete pod` does: SIGTERM, up to the
    /// grace period, then the container is gone.
    async fn terminate(&mut self, i: usize) {
        let container = self.pod(i).container.clone();
        if self.pod(i).paused {
            self.unpause(i).await;
        }
        if self.pod(i).partitioned {
            self.heal(i).await;
        }
        let grace = self.manifest.grace_period_secs.to_string();
        docker(&["stop", "-t", &grace, &container])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.remove_container(i).await;
    }

    async fn remove_container(&mut self, i: usize) {
        let container = self.pod(i).container.clone();
        docker(&["rm", "-f", &container])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.pods[i] = None;
        self.publish_endpoints();
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

    // --- faults ----------------------------------------------------------

    /// SIGKILL to the pod's process: no shutdown, no flush. The container
    /// stays (as a crashed container in its pod) until [`Self::restart`].
    pub async fn kill(&mut self, i: usize) {
        self.on_container(i, &["kill", "--signal", "KILL"]).await;
        self.pod_mut(i).stopped = true;
    }

    /// Starts the pod's container again, as the kubelet restarts a crashed
    /// container: same pod, IP and volume. Does not wait for readiness.
    pub async fn restart(&mut self, i: usize) {
        self.on_container(i, &["start"]).await;
        self.pod_mut(i).stopped = false;
    }

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
    }

    /// Reconnects a partitioned pod with its IP and DNS names.
    pub async fn heal(&mut self, i: usize) {
        let Pod { container, ip, .. } = self.pod(i).clone();
        let network = self.network.clone();
        let alias = self.manifest.pod_fqdn(i);
        let service = self.manifest.service_fqdn();
        docker(&[
            "network", "connect", "--ip", &ip, "--alias", &alias, "--alias", &service, &network,
            &container,
        ])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        self.pod_mut(i).partitioned = false;
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
        let m = &self.manifest;
        let volume = self.volume(i);
        let [owner, set] = self.labels();
        self.ensure_claim(i, &[]).await;
        let name = format!("{}-oneoff-{i}", self.id);
        let user = format!("{}:{}", m.run_as_user, m.run_as_group);
        let mount = format!("{volume}:{}", m.data_mount);
        let mut full = vec![
            "run",
            "--rm",
            "-i",
            "--name",
            &name,
            "--network",
            "none",
            "--label",
            &owner,
            "--label",
            &set,
            "--user",
            &user,
            "--volume",
            &mount,
        ];
        if m.read_only_root {
            full.push("--read-only");
        }
        let binds: Vec<String> = files
            .iter()
            .map(|(host, path)| format!("--volume={}:{path}:ro", host.display()))
            .collect();
        full.extend(binds.iter().map(String::as_str));
        let caps: Vec<String> = m
            .cap_drop
            .iter()
            .map(|c| format!("--cap-drop={c}"))
            .collect();
        full.extend(caps.iter().map(String::as_str));
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
        let p = &self.manifest.readiness;
        let addr = format!("{}:{}", self.ip(i), p.port);
        match http_get(&addr, &p.path, p.timeout).await? {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {}", body.trim())),
        }
    }

    /// One liveness probe.
    pub async fn probe_live(&self, i: usize) -> Result<(), String> {
        let p = &self.manifest.liveness;
        let addr = format!("{}:{}", self.ip(i), p.port);
        match http_get(&addr, &p.path, p.timeout).await? {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {}", body.trim())),
        }
    }

    /// Waits until pod `i` passes its readiness probe; fails at once,
    /// with its log, if its container exits.
    pub async fn wait_ready(&self, i: usize) {
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

    /// Waits until every pod that exists and runs is ready.
    pub async fn wait_all_ready(&self) {
        for i in self.reachable() {
            self.wait_ready(i).await;
        }
    }

    // --- the cluster, through the client API ------------------------------

    /// A client of pod `i` whose calls give up after `timeout`.
    pub async fn client(&self, i: usize, timeout: Duration) -> Result<Client, String> {
        let api = self.api(i);
        let connect = Client::connect(&api);
        match tokio::time::timeout(Duration::from_secs(3), connect).await {
            Ok(Ok(client)) => Ok(client.with_timeout(timeout)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("connect {api}: timed out")),
        }
    }

    /// Pod `i`'s status (2 s at most).
    pub async fn status(&self, i: usize) -> Result<StatusResponse, String> {
        let mut client = self.client(i, Duration::from_secs(2)).await?;
        tokio::time::timeout(Duration::from_secs(3), client.status())
            .await
            .map_err(|_| format!("{}: status timed out", self.pod_name(i)))?
            .map_err(|e| format!("{}: {e}", self.pod_name(i)))
    }

    /// Waits until every pod in `among` names the same leader, that leader
    /// is one of them and says it leads, its term is at least `min_term`
    /// and it is not `not_id`. Returns its ordinal and status.
    pub async fn wait_leader(
        &self,
        among: &[usize],
        not_id: Option<u64>,
        min_term: u64,
    ) -> (usize, StatusResponse) {
        poll(
            &format!("one leader agreed by {among:?}"),
            DEADLINE,
            Duration::from_millis(100),
            move || async move {
                let mut seen = Vec::new();
                for &i in among {
                    let s = self.status(i).await?;
                    seen.push((i, s));
                }
                let views: Vec<String> = seen
                    .iter()
                    .map(|(i, s)| {
                        format!(
                            "{}: {} term {} leader {:?}",
                            self.pod_name(*i),
                            s.role,
                            s.term,
                            s.leader_name
                        )
                    })
                    .collect();
                let leader_id = seen[0].1.leader_id;
                let agreed =
                    leader_id.is_some() && seen.iter().all(|(_, s)| s.leader_id == leader_id);
                let leader = seen
                    .iter()
                    .find(|(_, s)| Some(s.id) == leader_id && s.role == "leader");
                match leader {
                    Some((i, s)) if agreed && s.term >= min_term && Some(s.id) != not_id => {
                        Ok((*i, s.clone()))
                    }
                    _ => Err(views.join("; ")),
                }
            },
        )
        .await
    }

    /// The leader every reachable pod agrees on.
    pub async fn leader(&self) -> (usize, StatusResponse) {
        let among = self.reachable();
        self.wait_leader(&among, None, 0).await
    }

    /// Waits until the leader reports exactly `n` voters, all caught up.
    pub async fn wait_voters(&self, n: usize) -> raftset::proto::MembersResponse {
        self.wait_voters_among(&self.reachable(), n).await
    }

    /// [`Self::wait_voters`] with the leader agreed by the pods `among` only
    /// (a removed member that still runs does not know the leader).
    pub async fn wait_voters_among(
        &self,
        among: &[usize],
        n: usize,
    ) -> raftset::proto::MembersResponse {
        poll(
            &format!("{n} voters, caught up"),
            DEADLINE,
            Duration::from_millis(200),
            move || async move {
                let (leader, _) = self.wait_leader(among, None, 0).await;
                let mut client = self.client(leader, Duration::from_secs(2)).await?;
                let members = client.members().await.map_err(|e| e.to_string())?;
                let voters = members
                    .members
                    .iter()
                    .filter(|p| p.member.as_ref().is_some_and(|m| m.voter))
                    .count();
                let lagging = members.members.iter().filter(|p| p.lag > 0).count();
                if voters == n && members.members.len() == n && lagging == 0 {
                    Ok(members)
                } else {
                    Err(format!(
                        "{} members, {voters} voters, {lagging} lagging",
                        members.members.len()
                    ))
                }
            },
        )
        .await
    }

    /// Waits until pod `i` applied at least `index`.
    pub async fn wait_applied(&self, i: usize, index: u64) -> StatusResponse {
        poll(
            &format!("{} to apply index {index}", self.pod_name(i)),
            DEADLINE,
            Duration::from_millis(100),
            move || async move {
                let s = self.status(i).await?;
                if s.applied_index >= index {
                    Ok(s)
                } else {
                    Err(format!("applied {}", s.applied_index))
                }
            },
        )
        .await
    }
}

impl Drop for StatefulSet {
    fn drop(&mut self) {
        drop(self.kube.take());
        if let Some(dns) = self.dns.take() {
            dns.abort();
        }
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
        for e in errors {
            eprintln!("e2e cleanup of {}: {e}", self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_answers_no_such_name() {
        // A query for "a.b", type A, class IN, with an EDNS record after it.
        let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        query.extend_from_slice(b"\x01a\x01b\x00\x00\x01\x00\x01");
        query.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        let reply = nxdomain(&query).unwrap();
        assert_eq!(&reply[..2], &[0x12, 0x34], "same id");
        assert_eq!(reply[3] & 0x0f, 3, "NXDOMAIN");
        assert_ne!(reply[2] & 0x80, 0, "a response");
        assert_ne!(reply[2] & 0x01, 0, "recursion desired is echoed");
        assert_eq!(&reply[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&reply[12..], b"\x01a\x01b\x00\x00\x01\x00\x01");
        assert!(nxdomain(&reply).is_none(), "responses are not answered");
        assert!(nxdomain(&query[..14]).is_none(), "truncated");
    }

    #[test]
    fn the_manifests_are_read() {
        let m = Manifest::base();
        assert_eq!(m.set_name, "raftset");
        assert_eq!(m.service_name, "raftset-peers");
        assert_eq!(m.pod_management, PodManagement::OrderedReady);
        assert_eq!(m.args, ["serve"]);
        assert_eq!(m.port("grpc"), 7000);
        assert_eq!(m.readiness.path, "/readyz?noleader");
        assert_eq!(m.readiness.port, m.port("http"));
        assert!(m.env.contains(&(
            "RAFTSET_NAME".into(),
            EnvSource::Field("metadata.name".into())
        )));
        assert_eq!(
            m.pod_fqdn(2),
            "raftset-2.raftset-peers.raftset.svc.cluster.local"
        );
        let parallel = Manifest::overlay("parallel");
        assert_eq!(parallel.pod_management, PodManagement::Parallel);
        assert_eq!(parallel.image, m.image);
    }
}
