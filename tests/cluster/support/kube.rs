//! A stand-in for the Kubernetes API paths raftset uses: its StatefulSet
//! (with a uid, and a `spec.replicas` the test changes) and ConfigMaps in
//! its namespace, where the founding record lives. ConfigMaps behave as
//! the API server's do where raftset depends on it: a create of a name that
//! exists is 409 AlreadyExists, an update whose `resourceVersion` is not the
//! stored one is 409 Conflict, and every write bumps the version. Used by
//! the process tests on loopback and by the container harness on its
//! network's gateway.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The uid the fake StatefulSet reports.
pub const SET_UID: &str = "5e7f0000-0000-4000-8000-000000000001";

/// What the fake API server holds.
struct Objects {
    namespace: String,
    set: String,
    replicas: Arc<AtomicU32>,
    /// ConfigMaps by name.
    configmaps: BTreeMap<String, Value>,
    /// The last `resourceVersion` handed out.
    version: u64,
    /// While set, ConfigMap updates fail with 500, as an API server that is
    /// going away would answer them.
    refuse_updates: Arc<AtomicBool>,
}

pub struct FakeKubeApi {
    pub url: String,
    replicas: Arc<AtomicU32>,
    objects: Arc<Mutex<Objects>>,
    refuse_updates: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeKubeApi {
    /// Serves StatefulSet `raftset` in namespace `default` on loopback.
    pub async fn start(replicas: u32) -> FakeKubeApi {
        let replicas = Arc::new(AtomicU32::new(replicas));
        FakeKubeApi::serve("127.0.0.1", "default", "raftset", replicas)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Serves `namespace/set` and the namespace's ConfigMaps on `host` (any
    /// free port), answering with the current value of `replicas`.
    pub async fn serve(
        host: &str,
        namespace: &str,
        set: &str,
        replicas: Arc<AtomicU32>,
    ) -> Result<FakeKubeApi, String> {
        let listener = TcpListener::bind((host, 0))
            .await
            .map_err(|e| format!("cannot listen on {host} for the fake API: {e}"))?;
        let url = format!("http://{}", listener.local_addr().unwrap());
        let refuse_updates = Arc::new(AtomicBool::new(false));
        let objects = Arc::new(Mutex::new(Objects {
            namespace: namespace.into(),
            set: set.into(),
            replicas: replicas.clone(),
            configmaps: BTreeMap::new(),
            version: 0,
            refuse_updates: refuse_updates.clone(),
        }));
        let shared = objects.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, shared.clone()));
            }
        });
        Ok(FakeKubeApi {
            url,
            replicas,
            objects,
            refuse_updates,
            server,
        })
    }

    pub fn set_replicas(&self, replicas: u32) {
        self.replicas.store(replicas, Ordering::SeqCst);
    }

    /// ConfigMap `name` as the API server would return it, if it exists.
    pub fn configmap(&self, name: &str) -> Option<Value> {
        self.objects.lock().unwrap().configmaps.get(name).cloned()
    }

    /// While `refuse` holds, every ConfigMap update fails (creates still
    /// succeed): a founder can record its founding but not confirm it.
    pub fn refuse_updates(&self, refuse: bool) {
        self.refuse_updates.store(refuse, Ordering::SeqCst);
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Reads one request, answers it, closes the connection.
async fn answer(mut stream: TcpStream, objects: Arc<Mutex<Objects>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let body = serde_json::from_slice(&request[head_end..head_end + length]).unwrap_or(Value::Null);
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default();
    let path = words.next().unwrap_or_default();
    let (status, reply) = objects.lock().unwrap().handle(method, path, body);
    let reply = reply.to_string();
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let _ = stream.write_all(text.as_bytes()).await;
}

/// A `Status` object, as the API server explains a refusal.
fn refusal(code: u16, reason: &str) -> (String, Value) {
    let line = match code {
        404 => "404 Not Found",
        409 => "409 Conflict",
        _ => "500 Internal Server Error",
    };
    (
        line.into(),
        json!({"kind": "Status", "status": "Failure", "reason": reason, "code": code}),
    )
}

impl Objects {
    fn handle(&mut self, method: &str, path: &str, body: Value) -> (String, Value) {
        let set_path = format!(
            "/apis/apps/v1/namespaces/{}/statefulsets/{}",
            self.namespace, self.set
        );
        let configmaps = format!("/api/v1/namespaces/{}/configmaps", self.namespace);
        if path == set_path && method == "GET" {
            return ("200 OK".into(), self.statefulset());
        }
        if path == configmaps && method == "POST" {
            return self.create(body);
        }
        let Some(name) = path
            .strip_prefix(&configmaps)
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            return refusal(404, "NotFound");
        };
        match method {
            "GET" => match self.configmaps.get(name) {
                Some(map) => ("200 OK".into(), map.clone()),
                None => refusal(404, "NotFound"),
            },
            "PUT" => self.update(name, body),
            "DELETE" => match self.configmaps.remove(name) {
                Some(_) => (
                    "200 OK".into(),
                    json!({"kind": "Status", "status": "Success"}),
                ),
                None => refusal(404, "NotFound"),
            },
            _ => refusal(404, "NotFound"),
        }
    }

    fn statefulset(&self) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": self.set, "namespace": self.namespace, "uid": SET_UID},
            "spec": {"replicas": self.replicas.load(Ordering::SeqCst)},
        })
    }

    /// Stores `map` as the newest version of its name.
    fn store(&mut self, mut map: Value) -> Value {
        self.version += 1;
        map["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let name = map["metadata"]["name"].as_str().unwrap_or_default();
        self.configmaps.insert(name.to_string(), map.clone());
        map
    }

    fn create(&mut self, map: Value) -> (String, Value) {
        let name = map["metadata"]["name"].as_str().unwrap_or_default();
        if self.configmaps.contains_key(name) {
            return refusal(409, "AlreadyExists");
        }
        ("201 Created".into(), self.store(map))
    }

    fn update(&mut self, name: &str, map: Value) -> (String, Value) {
        if self.refuse_updates.load(Ordering::SeqCst) {
            return refusal(500, "InternalError");
        }
        let Some(current) = self.configmaps.get(name) else {
            return refusal(404, "NotFound");
        };
        if map["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
            return refusal(409, "Conflict");
        }
        ("200 OK".into(), self.store(map))
    }
}
