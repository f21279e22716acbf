//! The Kubernetes API, as far as raftset reads it: the StatefulSet's
//! `spec.replicas`, with the pod's service account (a Role allowing `get`
//! on this one StatefulSet). Blocking calls: run them off the async runtime.

use std::time::Duration;

use serde::Deserialize;

use super::identity::set_name;
use crate::config::Config;
use crate::error::ClusterError;

#[derive(Deserialize)]
struct StatefulSet {
    spec: StatefulSetSpec,
}

#[derive(Deserialize)]
struct StatefulSetSpec {
    replicas: Option<u32>,
}

/// Reads `spec.replicas` of this node's StatefulSet from the Kubernetes API.
pub struct ReplicaSource {
    agent: ureq::Agent,
    url: String,
    token: Option<String>,
}

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl ReplicaSource {
    pub fn new(config: &Config) -> Result<ReplicaSource, ClusterError> {
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
        let mut agent_config =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5)));
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
        Ok(ReplicaSource {
            agent: agent_config.build().into(),
            url: format!(
                "{api}/apis/apps/v1/namespaces/{}/statefulsets/{}",
                config.namespace,
                set_name(&config.name)
            ),
            token,
        })
    }

    pub fn replicas(&self) -> Result<u32, ClusterError> {
        let mut request = self.agent.get(&self.url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let mut response = request
            .call()
            .map_err(|e| ClusterError::KubeApi(format!("GET {}: {e}", self.url)))?;
        let set: StatefulSet = response
            .body_mut()
            .read_json()
            .map_err(|e| ClusterError::KubeApi(format!("GET {}: {e}", self.url)))?;
        set.spec
            .replicas
            .ok_or_else(|| ClusterError::KubeApi("the StatefulSet has no spec.replicas".into()))
    }
}
