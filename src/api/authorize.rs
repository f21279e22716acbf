//! The client port's gate: every call passes [`crate::auth::ClientAuth`]
//! before any service sees it, so a new RPC cannot forget the check (the
//! table asks the admin role of any RPC it does not name), and is counted
//! ([`super::observe`]), refused or not.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::Status;

use super::observe::Observation;
use crate::auth::{ClientAuth, Credentials};
use crate::metrics::Metrics;
use crate::tls::ConnInfo;

/// Wraps the client port's services in the gate.
#[derive(Clone)]
pub struct AuthorizeLayer {
    pub auth: Arc<ClientAuth>,
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            gate: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    gate: AuthorizeLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let observation = Observation::start(&self.gate.metrics, request.uri());
        let conn = request.extensions().get::<ConnInfo>();
        let remote = conn.and_then(|c| c.remote);
        let credentials = Credentials {
            authorization: request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            certificate: conn.and_then(|c| c.certificate.as_ref()),
        };
        match self.gate.auth.check(request.uri().path(), credentials) {
            Ok(()) => {
                let response = self.inner.call(request);
                Box::pin(async move {
                    let response = response.await?;
                    observation.finish(&response);
                    Ok(response)
                })
            }
            Err(refusal) => {
                let reason = refusal.reason();
                tracing::warn!(
                    client = ?remote,
                    method = request.uri().path(),
                    reason,
                    "refused a client call"
                );
                self.gate.metrics.auth_failed("grpc", reason);
                let response = Status::from(refusal).into_http();
                observation.finish(&response);
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::auth::{needed_role, Role};

    #[test]
    fn every_client_rpc_in_the_protos_has_the_role_the_readme_gives_it() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::proto::CLIENT_DESCRIPTOR).unwrap();
        let mut read_only = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    if needed_role(&path) == Some(Role::Read) {
                        read_only.push(path);
                    }
                }
            }
        }
        read_only.sort();
        assert_eq!(
            read_only,
            [
                "/raftset.v1.Admin/Members",
                "/raftset.v1.Admin/Status",
                "/raftset.v1.KV/Get",
                "/raftset.v1.KV/Scan",
                "/raftset.v1.KV/Watch",
            ]
        );
    }
}
