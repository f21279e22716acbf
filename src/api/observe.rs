//! Every call on a client port is counted by its method and gRPC status,
//! and timed. The gate ([`super::authorize`]) observes each call it sees,
//! so refused calls count too and a new RPC cannot forget it; a service
//! never records its own calls.

use std::sync::Arc;
use std::time::Instant;

use tonic::codegen::http;

use crate::metrics::Metrics;

/// One call being timed. It keeps the call's URI (a shared buffer, not
/// a copy) to name the method when the call is counted.
pub(super) struct Observation {
    metrics: Arc<Metrics>,
    uri: http::Uri,
    started: Instant,
}

impl Observation {
    pub(super) fn start(metrics: &Arc<Metrics>, uri: &http::Uri) -> Observation {
        Observation {
            metrics: metrics.clone(),
            uri: uri.clone(),
            started: Instant::now(),
        }
    }

    /// Counts the call, as its answer's headers leave; calls that are not
    /// raftset's own (health checks, reflection) are not counted.
    pub(super) fn finish<B>(self, response: &http::Response<B>) {
        if let Some(method) = counted_method(self.uri.path()) {
            self.metrics
                .observe(method, code_of(response), self.started.elapsed());
        }
    }
}

/// The method of a call to raftset's own services (`/raftset.v1.KV/Get`
/// is `Get`).
fn counted_method(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix("/raftset.")?.rsplit_once('/')?;
    (!service.is_empty() && !method.is_empty()).then_some(method)
}

/// A call's status as its response headers carry it. A handler's error,
/// the gate's refusal and tonic's own (an undecodable or oversized
/// message) all answer with `grpc-status` in the headers, without a body;
/// a response without it is the handler's success, whose `OK` comes in the
/// trailers (or, for a stream, the stream started).
fn code_of<B>(response: &http::Response<B>) -> tonic::Code {
    match tonic::Status::from_header_map(response.headers()) {
        Some(status) => status.code(),
        None => tonic::Code::Ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_raftsets_own_methods_are_counted_by_their_name() {
        assert_eq!(counted_method("/raftset.v1.KV/Get"), Some("Get"));
        assert_eq!(
            counted_method("/raftset.v1.Admin/ForceNewCluster"),
            Some("ForceNewCluster")
        );
        assert_eq!(counted_method("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            counted_method("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(counted_method("/raftset.v1.KV/"), None);
        assert_eq!(counted_method("/"), None);
    }

    #[test]
    fn the_code_is_the_headers_status_or_ok_without_one() {
        let refused = tonic::Status::permission_denied("no").into_http::<()>();
        assert_eq!(code_of(&refused), tonic::Code::PermissionDenied);
        let answered = http::Response::new(());
        assert_eq!(code_of(&answered), tonic::Code::Ok);
    }
}
