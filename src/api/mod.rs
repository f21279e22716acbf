//! The client port: the KV and Admin gRPC services, plus the standard
//! health and reflection services, so `grpcurl` and any generated client
//! work from `proto/` alone.
//!
//! The services are thin: they convert protobuf to the domain model
//! ([`crate::proto`]) and call the request path ([`crate::raft::requests`])
//! or, for Admin, the cluster layer. They never import `http` or `node`.

mod admin;
mod authorize;
mod kv;
mod observe;
mod watch;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use self::admin::AdminService;
pub use self::authorize::AuthorizeLayer;
pub use self::kv::KvService;
pub use self::watch::Watches;
use crate::limits::{MAX_CLIENT_MESSAGE, MAX_CLIENT_RESPONSE};
use crate::proto::admin_server::AdminServer;
use crate::proto::kv_server::KvServer;
use crate::tls::Acceptor;

/// Serves a client port until `stop` is cancelled, every call through the
/// `gate`, over TLS when `tls` is given.
pub async fn serve(
    kv: KvService,
    admin: AdminService,
    gate: AuthorizeLayer,
    tls: Option<Acceptor>,
    listener: TcpListener,
    max_connections: usize,
    stop: CancellationToken,
) {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<KvServer<KvService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::CLIENT_DESCRIPTOR)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the compiled-in descriptors are valid");
    let kv = KvServer::new(kv)
        .max_decoding_message_size(MAX_CLIENT_MESSAGE)
        .max_encoding_message_size(MAX_CLIENT_RESPONSE);
    let incoming = crate::tls::incoming(listener, tls, max_connections, stop.clone());
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(crate::limits::MAX_CLIENT_STREAMS)
        .layer(gate)
        .add_service(health)
        .add_service(reflection)
        .add_service(kv)
        .add_service(AdminServer::new(admin))
        .serve_with_incoming_shutdown(incoming, stop.cancelled())
        .await;
    if let Err(e) = result {
        tracing::error!("client gRPC server failed: {e}");
    }
}
