//! The peer port's request sizes, per method: a body larger than its
//! method may carry ([`crate::limits::max_peer_request`]) is cut off while
//! it is read, before anything decodes it. So a vote or a cluster-control
//! call costs at most a few kilobytes, however large a message a peer
//! sends; only replication and forwarded writes may be megabytes.

use std::task::{Context, Poll};

use tonic::codegen::http;

use crate::limits::max_peer_request;

/// Wraps the peer server's services.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerRequestLimits;

impl<S> tower::Layer<S> for PeerRequestLimits {
    type Service = LimitBody<S>;
    fn layer(&self, inner: S) -> LimitBody<S> {
        LimitBody { inner }
    }
}

#[derive(Debug, Clone)]
pub struct LimitBody<S> {
    inner: S,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for LimitBody<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> S::Future {
        let limit = max_peer_request(request.uri().path());
        self.inner.call(
            request.map(|body| tonic::body::Body::new(http_body_util::Limited::new(body, limit))),
        )
    }
}
