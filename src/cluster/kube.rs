//! The Kubernetes API, as far as raftset uses it, with the pod's service
//! account: the StatefulSet's `spec.replicas` (scale-down) and its uid, and
//! the founding record, a ConfigMap named `<statefulset>-cluster`.
//!
//! The founding record is raftset's `initialize` key (as in Patroni): it
//! is created with one POST, so of two pods that both try, exactly one
//! succeeds and the other gets 409 AlreadyExists. Every later change is an
//! update carrying the `resourceVersion` that was read, so a change based on
//! a stale read gets 409 Conflict instead of overwriting. The record is
//! owned by the StatefulSet: deleting the set deletes it. This file only
//! reads and writes it; what it means is [`super::bootstrap`]'s business.
//!
//! Blocking calls (ureq): run them off the async runtime, through [`call`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use super::bootstrap::FoundingRecord;
use super::identity::set_name;
use crate::config::Config;
use crate::error::ClusterError;

#[derive(Deserialize)]
struct StatefulSet {
    metadata: ObjectMeta,
    spec: StatefulSetSpec,
}

#[derive(Deserialize)]
struct ObjectMeta {
    uid: String,
}

#[derive(Deserialize)]
struct StatefulSetSpec {
    replicas: Option<u32>,
}

/// What the founding record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Founding {
    pub cluster_id: String,
    /// The pod that wrote it.
    pub founder: String,
    /// When, in RFC 3339 (UTC).
    pub founded_at: String,
    /// Whether the founder's Raft state was durable when it was written, so
    /// the cluster may hold acknowledged writes.
    pub confirmed: bool,
}

const UNCONFIRMED: &str = "unconfirmed";
const CONFIRMED: &str = "confirmed";

impl Founding {
    /// A founding of `cluster_id` by `founder`, now, not yet confirmed.
    pub fn new(cluster_id: &str, founder: &str) -> Founding {
        Founding {
            cluster_id: cluster_id.into(),
            founder: founder.into(),
            founded_at: rfc3339(SystemTime::now()),
            confirmed: false,
        }
    }

    /// The same founding, confirmed.
    pub fn confirmed(&self) -> Founding {
        Founding {
            confirmed: true,
            ..self.clone()
        }
    }

    pub fn record(&self) -> FoundingRecord {
        if self.confirmed {
            FoundingRecord::Confirmed {
                cluster_id: self.cluster_id.clone(),
            }
        } else {
            FoundingRecord::Unconfirmed {
                cluster_id: self.cluster_id.clone(),
                founder: self.founder.clone(),
            }
        }
    }

    fn data(&self) -> Value {
        json!({
            "clusterId": self.cluster_id,
            "founder": self.founder,
            "foundedAt": self.founded_at,
            "state": if self.confirmed { CONFIRMED } else { UNCONFIRMED },
        })
    }
}

/// The founding record as last read or written: the ConfigMap whole, so an
/// update sends back its metadata (`resourceVersion`, owner) unchanged.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    object: Value,
    pub founding: Founding,
}

impl StoredRecord {
    fn parse(object: Value) -> Result<StoredRecord, ClusterError> {
        let data = &object["data"];
        let field = |name: &str| data[name].as_str().unwrap_or_default().to_string();
        let confirmed = match data["state"].as_str() {
            Some(CONFIRMED) => true,
            Some(UNCONFIRMED) => false,
            other => {
                return Err(ClusterError::BadRecord(format!(
                    "state is {other:?}, neither {CONFIRMED:?} nor {UNCONFIRMED:?}"
                )))
            }
        };
        let founding = Founding {
            cluster_id: field("clusterId"),
            founder: field("founder"),
            founded_at: field("foundedAt"),
            confirmed,
        };
        if founding.cluster_id.is_empty() {
            return Err(ClusterError::BadRecord("clusterId is empty".into()));
        }
        Ok(StoredRecord { object, founding })
    }
}

/// The Kubernetes API of this node's StatefulSet.
pub struct KubeApi {
    agent: ureq::Agent,
    token: Option<String>,
    set_url: String,
    configmaps_url: String,
    set: String,
    namespace: String,
}

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl KubeApi {
    /// The API at `--kube-api`, or in a pod the one its environment names.
    /// Fails outside a pod without `--kube-api`: then no record is kept.
    pub fn new(config: &Config) -> Result<KubeApi, ClusterError> {
        let api = match &config.kube_api {
            Some(api) => api.trim_end_matches('/').to_string(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST")
                    .map_err(|_| ClusterError::KubeApi("not in a pod and no --kube-api".into()))?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                format!("https://{host}:{port}")
            }
        };
        let token = std::fs::read_to_string(format!("{SERVICE_ACCOUNT}/token"))
            .ok()
            .map(|t| t.trim().to_string());
        // Statuses are read, not turned into errors: 404 and 409 are answers.
        let mut agent_config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false);
        if let Ok(pem) = std::fs::read(format!("{SERVICE_ACCOUNT}/ca.crt")) {
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
                    _ => None,
                })
                .collect();
            let tls = ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build();
            agent_config = agent_config.tls_config(tls);
        }
        let set = set_name(&config.name).to_string();
        let namespace = config.namespace.clone();
        Ok(KubeApi {
            agent: agent_config.build().into(),
            token,
            set_url: format!("{api}/apis/apps/v1/namespaces/{namespace}/statefulsets/{set}"),
            configmaps_url: format!("{api}/api/v1/namespaces/{namespace}/configmaps"),
            set,
            namespace,
        })
    }

    /// The founding record's name: `<statefulset>-cluster`.
    pub fn record_name(&self) -> String {
        format!("{}-cluster", self.set)
    }

    fn record_url(&self) -> String {
        format!("{}/{}", self.configmaps_url, self.record_name())
    }

    /// Sends one request; the status and the JSON body, whatever the status.
    fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClusterError> {
        let what = || format!("{method} {url}");
        let mut request = ureq::http::Request::builder().method(method).uri(url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let sent = match body {
            Some(body) => request
                .header("Content-Type", "application/json")
                .body(body.to_string().into_bytes())
                .map(|r| self.agent.run(r)),
            None => request.body(()).map(|r| self.agent.run(r)),
        };
        let mut response = sent
            .map_err(|e| ClusterError::KubeApi(format!("{}: {e}", what())))?
            .map_err(|e| ClusterError::KubeApi(format!("{}: {e}", what())))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| ClusterError::KubeApi(format!("{}: {e}", what())))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// [`Self::send`], for a request that must answer 2xx.
    fn expect_ok(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClusterError> {
        match self.send(method, url, body)? {
            (200..=299, value) => Ok(value),
            (409, _) => Err(ClusterError::RecordTaken {
                name: self.record_name(),
            }),
            (status, value) => Err(ClusterError::KubeStatus {
                request: format!("{method} {url}"),
                status,
                detail: value["message"]
                    .as_str()
                    .map_or_else(|| value.to_string(), String::from),
            }),
        }
    }

    fn statefulset(&self) -> Result<StatefulSet, ClusterError> {
        let value = self.expect_ok("GET", &self.set_url, None)?;
        serde_json::from_value(value)
            .map_err(|e| ClusterError::KubeApi(format!("GET {}: {e}", self.set_url)))
    }

    /// The StatefulSet's `spec.replicas`.
    pub fn replicas(&self) -> Result<u32, ClusterError> {
        self.statefulset()?
            .spec
            .replicas
            .ok_or_else(|| ClusterError::KubeApi("the StatefulSet has no spec.replicas".into()))
    }

    /// The founding record, or `None` when there is none.
    pub fn record(&self) -> Result<Option<StoredRecord>, ClusterError> {
        let url = self.record_url();
        match self.send("GET", &url, None)? {
            (404, _) => Ok(None),
            (200, object) => StoredRecord::parse(object).map(Some),
            (status, value) => Err(ClusterError::KubeStatus {
                request: format!("GET {url}"),
                status,
                detail: value.to_string(),
            }),
        }
    }

    /// Creates the founding record. [`ClusterError::RecordTaken`] when it
    /// exists: someone founded first.
    pub fn create_record(&self, founding: &Founding) -> Result<StoredRecord, ClusterError> {
        let uid = self.statefulset()?.metadata.uid;
        let object = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.record_name(),
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/name": "raftset", "app.kubernetes.io/instance": self.set},
                "ownerReferences": [{
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": self.set,
                    "uid": uid,
                }],
            },
            "data": founding.data(),
        });
        let created = self.expect_ok("POST", &self.configmaps_url, Some(&object))?;
        StoredRecord::parse(created)
    }

    /// Replaces what `stored` holds with `founding`, only if the record has
    /// not changed since `stored` was read ([`ClusterError::RecordTaken`]
    /// otherwise).
    pub fn replace_record(
        &self,
        stored: &StoredRecord,
        founding: &Founding,
    ) -> Result<StoredRecord, ClusterError> {
        let mut object = stored.object.clone();
        object["data"] = founding.data();
        let replaced = self.expect_ok("PUT", &self.record_url(), Some(&object))?;
        StoredRecord::parse(replaced)
    }
}

/// Runs a blocking API call on tokio's blocking pool.
pub async fn call<T, F>(api: &Arc<KubeApi>, f: F) -> Result<T, ClusterError>
where
    T: Send + 'static,
    F: FnOnce(&KubeApi) -> Result<T, ClusterError> + Send + 'static,
{
    let api = api.clone();
    tokio::task::spawn_blocking(move || f(&api))
        .await
        .map_err(|e| ClusterError::KubeApi(format!("the API call did not finish: {e}")))?
}

/// `time` as RFC 3339 in UTC, to the second.
fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (mut days, rest) = (secs / 86_400, secs % 86_400);
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let mut year = 1970;
    while days >= if leap(year) { 366 } else { 365 } {
        days -= if leap(year) { 366 } else { 365 };
        year += 1;
    }
    let february = if leap(year) { 29 } else { 28 };
    let lengths = [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 0;
    while days >= lengths[month] {
        days -= lengths[month];
        month += 1;
    }
    format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        month + 1,
        days + 1,
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn founding_times_are_rfc3339_in_utc() {
        let at = |secs| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(1_798_761_600), "2027-01-01T00:00:00Z");
    }

    #[test]
    fn a_record_reads_back_as_written_and_a_garbled_one_is_refused() {
        let founding = Founding::new("c1", "raftset-0");
        let object = json!({"metadata": {"resourceVersion": "7"}, "data": founding.data()});
        let stored = StoredRecord::parse(object).unwrap();
        assert_eq!(stored.founding, founding);
        assert_eq!(
            stored.founding.record(),
            FoundingRecord::Unconfirmed {
                cluster_id: "c1".into(),
                founder: "raftset-0".into()
            }
        );
        assert_eq!(
            founding.confirmed().record(),
            FoundingRecord::Confirmed {
                cluster_id: "c1".into()
            }
        );
        for data in [
            json!({"clusterId": "c1", "state": "maybe"}),
            json!({"clusterId": "", "state": "confirmed"}),
        ] {
            let garbled = StoredRecord::parse(json!({ "data": data }));
            assert!(matches!(garbled, Err(ClusterError::BadRecord(_))));
        }
    }
}
