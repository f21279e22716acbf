//! What one attempt of a request ends with ([`Attempt`]), and how a call
//! forwarded to the leader is made and its failure read: whether another
//! try may follow, and whether the request may have entered the log. The
//! retry loops of [`super::requests`] and the follower's batches of
//! [`super::forwarder`] read failures the same way.

use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::network::PeerClients;
use crate::error::{status_is_peer_refusal, status_says_nothing_proposed, Error};
use crate::grpc::call;
use crate::proto::raft_peer_client::RaftPeerClient;
use crate::proto::PeerMessage;
use crate::types::Member;

/// Why one attempt failed, and whether to try again.
#[derive(Debug, Clone)]
pub enum Attempt {
    /// Worth another try before the deadline. `proposed` is true when the
    /// write may have entered the log.
    Retry {
        proposed: bool,
        why: Error,
    },
    Fail(Error),
}

/// Sends `payload` to `leader`'s peer port with `rpc`; a failure is
/// classified for the retry loop.
pub(super) async fn forward<T, R, F, Fut>(
    peers: &PeerClients,
    leader: &Member,
    payload: &T,
    deadline: Instant,
    rpc: F,
) -> Result<R, Attempt>
where
    T: serde::Serialize,
    R: serde::de::DeserializeOwned,
    F: FnOnce(RaftPeerClient<Channel>, Request<PeerMessage>) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<Response<PeerMessage>, Status>>,
{
    let client = peers
        .client(&leader.peer_addr)
        .map_err(|e| Attempt::Fail(e.into()))?;
    call(peers.cluster_id(), 0, payload, remaining(deadline), |r| {
        rpc(client, r)
    })
    .await
    .map_err(classify_forward_failure)
}

/// A forwarded call failed. The leader's final answers pass through; an
/// unavailable leader (it moved, lost quorum, or the connection broke) is
/// worth another try, and unless it said so the request may have reached it.
/// A node that refused the message itself is not the leader this node
/// believed it was (the address is another node's now): another try, once
/// the leader is known again.
pub(super) fn classify_forward_failure(status: tonic::Status) -> Attempt {
    use tonic::Code;
    if never_sent(&status) || status_is_peer_refusal(&status) {
        return Attempt::Retry {
            proposed: false,
            why: Error::LeaderUnreachable {
                detail: status.message().to_string(),
            },
        };
    }
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted => Attempt::Retry {
            proposed: !status_says_nothing_proposed(&status),
            why: Error::Leader(status),
        },
        _ => Attempt::Fail(Error::Leader(status)),
    }
}

/// Whether a failed call provably never left this node: the connection
/// to the leader could not be made at all.
fn never_sent(status: &tonic::Status) -> bool {
    use std::io::ErrorKind;
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            );
        }
        cause = error.source();
    }
    false
}

impl From<Attempt> for Error {
    /// How the leader answers a forwarded call: a write that may have
    /// entered the log before leadership moved stays retryable for the
    /// follower, without the "not proposed" mark.
    fn from(attempt: Attempt) -> Error {
        match attempt {
            Attempt::Retry {
                proposed: true,
                why,
            } => Error::MaybeProposed {
                reason: why.to_string(),
            },
            Attempt::Retry {
                proposed: false,
                why,
            }
            | Attempt::Fail(why) => why,
        }
    }
}

/// What is left until `deadline`, at least a millisecond (a zero timeout
/// would mean none).
pub(super) fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}
