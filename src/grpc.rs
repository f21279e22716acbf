//! The tonic plumbing every gRPC service shares: the caller's `grpc-timeout`, and the peer envelope (a
//! [`PeerMessage`] that names its cluster and target and carries a postcard
//! payload).
//!
//! The envelope's payload is openraft's and raftset's own serde types,
//! private to raftset and versioned with the binary: no wire compatibility
//! between versions is kept before 1.0. Opening an envelope is where a
//! message from another cluster, or for a replaced member, is refused.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::error::PeerError;
use crate::proto::PeerMessage;
use crate::types::{ClusterId, NodeId};

/// The caller's deadline, from the `grpc-timeout` header.
pub fn request_timeout<T>(request: &Request<T>) -> Option<Duration> {
    request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

/// The caller's deadline, never later than `cap` from now.
pub fn deadline_of<T>(request: &Request<T>, cap: Duration) -> tokio::time::Instant {
    let timeout = request_timeout(request).map_or(cap, |t| t.min(cap));
    tokio::time::Instant::now() + timeout
}

/// Parses a `grpc-timeout` header value (`100m`, `5S`, ...).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encoding an in-memory value with postcard cannot fail")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PeerError> {
    postcard::from_bytes(bytes).map_err(|e| PeerError::Undecodable(e.to_string()))
}

/// A peer request carrying `payload` for node `target` (0: whichever node
/// serves the address), stamped with the sender's cluster id.
pub fn seal<T: Serialize>(
    cluster_id: &ClusterId,
    target: NodeId,
    payload: &T,
    timeout: Duration,
) -> Request<PeerMessage> {
    let mut request = Request::new(PeerMessage {
        cluster_id: cluster_id.get(),
        payload: encode(payload).into(),
        target_id: target,
    });
    request.set_timeout(timeout);
    request
}

/// Decodes a message from a peer of this node's cluster, addressed to node
/// `me`. A message from another cluster is refused, and both ids are
/// logged; so is one meant for another node id.
pub fn open<T: DeserializeOwned>(
    cluster_id: &ClusterId,
    me: NodeId,
    request: Request<PeerMessage>,
) -> Result<T, PeerError> {
    let ours = cluster_id.get();
    let message = request.into_inner();
    if ours.is_empty() || message.cluster_id != ours {
        tracing::warn!(
            ours = %ours,
            theirs = %message.cluster_id,
            "refused a peer message from another cluster"
        );
        return Err(PeerError::ClusterMismatch);
    }
    if message.target_id != 0 && message.target_id != me {
        return Err(PeerError::WrongTarget {
            this: me,
            target: message.target_id,
        });
    }
    decode(&message.payload)
}

/// A peer's reply: the payload alone (the receiver trusts the connection
/// it asked on).
pub fn reply<T: Serialize>(value: &T) -> Response<PeerMessage> {
    Response::new(reply_message(value))
}

/// One message of a peer's reply, alone or in a stream.
pub fn reply_message<T: Serialize>(value: &T) -> PeerMessage {
    PeerMessage {
        cluster_id: String::new(),
        payload: encode(value).into(),
        target_id: 0,
    }
}

/// Unpacks a peer's reply.
fn unseal<T: DeserializeOwned>(response: &Response<PeerMessage>) -> Result<T, PeerError> {
    decode(&response.get_ref().payload)
}

/// One peer call: seals `payload` for `target`, sends it with `rpc`, and
/// opens the reply. A reply that does not decode counts as the peer's
/// refusal (INVALID_ARGUMENT), so callers classify one kind of failure.
pub async fn call<T, R, F, Fut>(
    cluster_id: &ClusterId,
    target: NodeId,
    payload: &T,
    timeout: Duration,
    rpc: F,
) -> Result<R, Status>
where
    T: Serialize,
    R: DeserializeOwned,
    F: FnOnce(Request<PeerMessage>) -> Fut,
    Fut: Future<Output = Result<Response<PeerMessage>, Status>>,
{
    let response = rpc(seal(cluster_id, target, payload, timeout)).await?;
    Ok(unseal(&response)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn envelopes_open_only_for_their_cluster_and_target() {
        let ours = ClusterId::default();
        ours.set("c1");
        let theirs = ClusterId::default();
        theirs.set("c2");
        let timeout = Duration::from_secs(1);
        let opened: u64 = open(&ours, 7, seal(&ours, 7, &42u64, timeout)).unwrap();
        assert_eq!(opened, 42);
        let opened: u64 = open(&ours, 7, seal(&ours, 0, &43u64, timeout)).unwrap();
        assert_eq!(opened, 43);
        assert!(matches!(
            open::<u64>(&ours, 7, seal(&theirs, 7, &1u64, timeout)),
            Err(PeerError::ClusterMismatch)
        ));
        assert!(matches!(
            open::<u64>(&ours, 7, seal(&ours, 8, &1u64, timeout)),
            Err(PeerError::WrongTarget { this: 7, target: 8 })
        ));
        assert!(matches!(
            open::<String>(&ours, 7, seal(&ours, 7, &[0xffu8; 3], timeout)),
            Err(PeerError::Undecodable(_))
        ));
    }
}
