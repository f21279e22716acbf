//! The `k8s/` manifests as the container harness reads them: each
//! kustomization rendered once by the kustomize built into kubectl (the one
//! `kubectl kustomize` and `kubectl apply -k` run), read as JSON with
//! `serde_json`, and boiled down to a [`Manifest`]: what a StatefulSet controller and a kubelet would take
//! from the StatefulSet and its Services. A field the harness cannot play is
//! an error, never silently ignored.
//!
//! Without kubectl the tests that read a manifest stop with a message that
//! says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

/// Kubernetes' default cluster domain: part of every pod's DNS name.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

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
    /// Secret mounts: the Secret's name and the mount path.
    pub secrets: Vec<(String, String)>,
    pub run_as_user: u32,
    pub run_as_group: u32,
    pub read_only_root: bool,
    pub cap_drop: Vec<String>,
    pub no_new_privileges: bool,
    pub grace_period_secs: u64,
    /// The container's preStop exec command, run before SIGTERM on every
    /// pod deletion (a scale-down, a rollout, `kubectl delete pod`).
    pub pre_stop: Option<Vec<String>>,
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
        let mut secrets = Vec::new();
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
            if let Some(secret) = volume.get("secret") {
                secrets.push((text(secret, "secretName")?, path));
                continue;
            }
            let empty_dir = volume
                .get("emptyDir")
                .ok_or_else(|| format!("volume {name}: only emptyDir and secret are played"))?;
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
        let pre_stop = match c.get("lifecycle").and_then(|l| l.get("preStop")) {
            Some(hook) => Some(strings(at(hook, "exec.command")?, "preStop.exec.command")?),
            None => None,
        };
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
            secrets,
            run_as_user,
            run_as_group,
            read_only_root,
            cap_drop,
            no_new_privileges,
            grace_period_secs,
            pre_stop,
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

/// Every object the kustomization in `dir` produces, as JSON:
/// `kubectl patch --local -k <dir> -p {} --type merge -o json` renders
/// `dir` with the kustomize built into kubectl (the one `kubectl kustomize`
/// and `kubectl apply -k` run) and prints each object, unpatched, as JSON,
/// talking to no API server. A merge patch, because kubectl cannot apply a
/// strategic one locally to a custom resource (an overlay with the
/// monitoring component has two).
pub fn render(dir: &Path) -> Result<Vec<Value>, String> {
    let dir = dir.to_str().ok_or("the k8s/ path is not UTF-8")?;
    let args = [
        "patch", "--local", "-k", dir, "-p", "{}", "--type", "merge", "-o", "json",
    ];
    let output = std::process::Command::new("kubectl")
        .args(args)
        // No kubeconfig: rendering must never reach a cluster.
        .env("KUBECONFIG", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "kubectl is not installed: these tests render k8s/ \
                 with `kubectl kustomize`; install kubectl (with kustomize 5, as in kubectl 1.32) \
                 or leave the e2e tests out with `cargo test --test cluster -- --skip e2e`"
                .to_string(),
            _ => format!("cannot run kubectl: {e}"),
        })?;
    if !output.status.success() {
        return Err(format!(
            "`kubectl {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    serde_json::Deserializer::from_slice(&output.stdout)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("kubectl printed no JSON for {dir}: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_are_read() {
        let m = Manifest::base();
        assert_eq!(m.set_name, "raftset");
        assert_eq!(m.service_name, "raftset-peers");
        assert_eq!(m.pod_management, PodManagement::OrderedReady);
        assert_eq!(m.args, ["serve"]);
        assert_eq!(m.port("grpc"), 7000);
        assert_eq!(m.readiness.path, "/readyz?noleader");
        assert_eq!(m.readiness.port, m.port("probes"));
        assert_eq!(m.liveness.port, m.port("probes"));
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
