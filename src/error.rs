//! The errors a caller can receive, and the one place where each becomes a
//! gRPC code or an HTTP status: no other module of `src/` builds a
//! `tonic::Status`.
//!
//! Three kinds, by who handles them: [`Error`] is what a client request can
//! end with; [`ClusterError`] what a cluster-control call (join, membership,
//! leadership, snapshot, digest) can end with; [`PeerError`] why a peer
//! message was refused. Storage errors stay in [`crate::store`]: they are
//! fail-stop, and reach callers only as `Error::Storage`.
//!
//! [`Error`] is what a request can end with. Its variants say what a caller
//! can do next: fix the request ([`InvalidRequest`]), accept an expected
//! refusal (a lost compare-and-swap), retry safely (`NoLeader`, `NoQuorum`,
//! `Overloaded`: nothing was proposed), or find out what happened
//! (`OutcomeUnknown`: retry with the same request id). Storage failures are
//! fail-stop: the node shuts down rather than acknowledge what it may not
//! have written.

use tonic::{Code, Status};

use crate::limits::MAX_REQUEST_ID_LEN;
use crate::types::{KeyValue, NodeId, Outcome};

/// A request refused before anything was proposed; it names the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes, over the limit of {max} bytes")]
    TooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("scan limit {limit} is over the maximum of {max}")]
    ScanLimit { limit: u32, max: u32 },
    #[error("request_id is {len} bytes; it must be 1 to {MAX_REQUEST_ID_LEN} bytes when set")]
    RequestId { len: usize },
    #[error("{field} is required")]
    Missing { field: &'static str },
    #[error("request_id was already used for a different kind of request")]
    RequestIdReused,
    #[error("request_id starts with bytes reserved for ids a node makes (0xff \"raftset\")")]
    ReservedRequestId,
    #[error("unknown {field} value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error("compare-and-swap failed: {}", describe_current(.current))]
    CompareFailed { current: Option<KeyValue> },
    /// Says only how long the stored value is: an error never echoes
    /// stored data (a 1 MiB value would not even fit the status header).
    #[error("the key's value ({len} bytes) is not a decimal integer")]
    NotAnInteger { len: usize },
    #[error("incrementing {current} by {delta} would overflow a 64-bit integer")]
    Overflow { current: i64, delta: i64 },
    #[error("no leader is known (no quorum?); the request was not proposed and can be retried")]
    NoLeader,
    #[error("no quorum: the leader has not heard from a majority for {millis} ms; the request was not proposed and can be retried")]
    NoQuorum { millis: u64 },
    #[error("too many proposals in flight (limit {limit}); the request was not proposed and can be retried")]
    Overloaded { limit: usize },
    /// Past the space quota only writes that can free space are taken.
    #[error("space quota exceeded: the database takes {used} bytes on disk, at or over the quota of {quota} bytes (--quota-bytes); the write was not proposed; delete keys, or raise the quota")]
    QuotaExceeded { used: u64, quota: u64 },
    #[error("outcome unknown: {reason}; the write may still be applied, retry with the same request_id to learn its outcome")]
    OutcomeUnknown { reason: String },
    /// The leader's answer to a forwarded write that may have entered its
    /// log before leadership moved: the follower retries with the same id.
    #[error("{reason}")]
    MaybeProposed { reason: String },
    #[error("revision {requested} has been compacted; the oldest revision available is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    #[error("watcher fell behind by more than {capacity} events and was cancelled; watch again from revision {resume_from}")]
    WatchLagged { capacity: usize, resume_from: u64 },
    #[error("this node's state was replaced by a snapshot at revision {revision}; watch again")]
    WatchReset { revision: u64 },
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("this node does not serve writes yet: it is not a member of a cluster, or its founding is not on record yet; the request was not proposed and can be retried")]
    NotServing,
    #[error(
        "cannot connect to the leader ({detail}); the request was not sent and can be retried"
    )]
    LeaderUnreachable { detail: String },
    #[error("no member reported a digest")]
    NoDigest,
    #[error("too many watches on this node (limit {limit})")]
    TooManyWatches { limit: usize },
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("raft failure: {0}")]
    Raft(String),
    /// The leader's own answer to a forwarded request, passed on unchanged.
    #[error("{}", .0.message())]
    Leader(Status),
}

fn describe_current(current: &Option<KeyValue>) -> String {
    match current {
        None => "the key is absent".to_string(),
        Some(kv) => format!(
            "the key holds another value (mod_revision {})",
            kv.mod_revision
        ),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code for each error: the single mapping the API uses.
    pub fn code(&self) -> Code {
        match self {
            Error::Invalid(_) => Code::InvalidArgument,
            Error::CompareFailed { .. } | Error::NotAnInteger { .. } => Code::FailedPrecondition,
            Error::Overflow { .. } | Error::Compacted { .. } => Code::OutOfRange,
            Error::NoLeader
            | Error::NoQuorum { .. }
            | Error::ShuttingDown
            | Error::NotServing
            | Error::MaybeProposed { .. }
            | Error::LeaderUnreachable { .. }
            | Error::NoDigest => Code::Unavailable,
            Error::WatchReset { .. } => Code::Aborted,
            Error::Overloaded { .. }
            | Error::QuotaExceeded { .. }
            | Error::WatchLagged { .. }
            | Error::TooManyWatches { .. } => Code::ResourceExhausted,
            Error::OutcomeUnknown { .. } => Code::DeadlineExceeded,
            Error::Storage(_) | Error::Raft(_) => Code::Internal,
            Error::Leader(status) => status.code(),
        }
    }

    /// The HTTP status for each error, derived from its gRPC code, except
    /// a full quota: 507 Insufficient Storage, not 429, since waiting does
    /// not help. A follower knows its leader's refusal by its mark.
    pub fn http_status(&self) -> u16 {
        let over_quota = match self {
            Error::QuotaExceeded { .. } => true,
            Error::Leader(status) => status.metadata().contains_key(QUOTA_HEADER),
            _ => false,
        };
        if over_quota {
            return 507;
        }
        match self.code() {
            Code::InvalidArgument | Code::OutOfRange => 400,
            Code::FailedPrecondition | Code::Aborted => 409,
            Code::ResourceExhausted => 429,
            Code::Unavailable => 503,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            _ => 500,
        }
    }
}

/// Metadata on a status that says the request was never proposed, so a
/// forwarding follower knows a retry cannot apply it twice.
pub const NOT_PROPOSED_HEADER: &str = "raftset-not-proposed";

/// Metadata on a status that says the space quota refused the write, so a
/// follower that passes the leader's answer on maps it as the leader would.
const QUOTA_HEADER: &str = "raftset-quota-exceeded";

impl Error {
    /// True when the request certainly did not enter the log.
    pub fn nothing_proposed(&self) -> bool {
        matches!(
            self,
            Error::Invalid(_)
                | Error::NoLeader
                | Error::NoQuorum { .. }
                | Error::Overloaded { .. }
                | Error::QuotaExceeded { .. }
                | Error::ShuttingDown
                | Error::NotServing
                | Error::LeaderUnreachable { .. }
        )
    }
}

/// Puts the mark `header` on `status`.
fn mark(status: &mut Status, header: &'static str) {
    status
        .metadata_mut()
        .insert(header, tonic::metadata::MetadataValue::from_static("1"));
}

/// Whether a status (maybe from another node) says nothing was proposed.
pub fn status_says_nothing_proposed(status: &Status) -> bool {
    status.metadata().contains_key(NOT_PROPOSED_HEADER)
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        if let Error::Leader(status) = err {
            return status;
        }
        let mut status = Status::new(err.code(), err.to_string());
        if err.nothing_proposed() {
            mark(&mut status, NOT_PROPOSED_HEADER);
        }
        if matches!(err, Error::QuotaExceeded { .. }) {
            mark(&mut status, QUOTA_HEADER);
        }
        status
    }
}

/// A forwarded write's failure as it travels back in the leader's stream of
/// answers: the status's code and message, and the marks a follower
/// classifies it by and passes on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WireStatus {
    code: i32,
    message: String,
    not_proposed: bool,
    quota: bool,
}

impl From<Status> for WireStatus {
    fn from(status: Status) -> WireStatus {
        let marked = |header| status.metadata().contains_key(header);
        WireStatus {
            code: status.code() as i32,
            not_proposed: marked(NOT_PROPOSED_HEADER),
            quota: marked(QUOTA_HEADER),
            message: status.message().to_string(),
        }
    }
}

impl From<WireStatus> for Status {
    fn from(wire: WireStatus) -> Status {
        let mut status = Status::new(Code::from_i32(wire.code), wire.message);
        for (marked, header) in [
            (wire.not_proposed, NOT_PROPOSED_HEADER),
            (wire.quota, QUOTA_HEADER),
        ] {
            if marked {
                mark(&mut status, header);
            }
        }
        status
    }
}

impl Error {
    /// Turns an outcome that refused the write (a lost compare-and-swap, a
    /// counter that is not an integer or would overflow) into its error.
    pub fn refused(delta: i64, outcome: Outcome) -> Result<Outcome> {
        match outcome {
            Outcome::CompareFailed { current } => Err(Error::CompareFailed { current }),
            Outcome::NotAnInteger { current } => Err(Error::NotAnInteger { len: current.len() }),
            Outcome::Overflow { current } => Err(Error::Overflow { current, delta }),
            outcome => Ok(outcome),
        }
    }
}

/// Why a peer message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The ids themselves go to this node's log only: the cluster id is
    /// the check on peer messages, and a refusal must not hand it out.
    #[error("cluster id mismatch: the sender belongs to another cluster (both ids are in this node's log)")]
    ClusterMismatch,
    #[error("this is node {this:016x}, not {target:016x}: that member's volume was replaced")]
    WrongTarget { this: NodeId, target: NodeId },
    #[error("undecodable peer payload: {0}")]
    Undecodable(String),
    #[error("bad peer address {addr:?}: {detail}")]
    BadAddress { addr: String, detail: String },
    /// The caller's certificate is the cluster CA's, but not for whom it
    /// claims to be.
    #[error("the caller's certificate does not name {claimed}")]
    Impostor { claimed: String },
}

impl PeerError {
    pub fn code(&self) -> Code {
        match self {
            PeerError::ClusterMismatch | PeerError::WrongTarget { .. } => Code::FailedPrecondition,
            PeerError::Undecodable(_) | PeerError::BadAddress { .. } => Code::InvalidArgument,
            PeerError::Impostor { .. } => Code::PermissionDenied,
        }
    }
}

impl From<PeerError> for Status {
    /// Marked as a refusal of the message itself: the node at that address
    /// handled nothing, whatever the code (see [`status_is_peer_refusal`]).
    fn from(err: PeerError) -> Status {
        let mut status = Status::new(err.code(), err.to_string());
        for header in [PEER_REFUSAL_HEADER, NOT_PROPOSED_HEADER] {
            mark(&mut status, header);
        }
        status
    }
}

impl From<crate::auth::Refusal> for Status {
    /// `UNAUTHENTICATED` without a valid token, `PERMISSION_DENIED` for a
    /// token whose role is too low; marked not proposed, as nothing was.
    fn from(refusal: crate::auth::Refusal) -> Status {
        use crate::auth::Refusal;
        let mut status = match refusal {
            Refusal::Missing => Status::unauthenticated(
                "this call needs a bearer token (raftset --token-file, RAFTSET_TOKEN_FILE)",
            ),
            Refusal::Wrong => Status::unauthenticated("the bearer token is not valid"),
            Refusal::Forbidden { needs } => Status::permission_denied(format!(
                "this call needs the {} role, which the token does not have",
                needs.name()
            )),
            Refusal::AdminElsewhere => Status::permission_denied(
                "admin calls are taken on the node's loopback admin port \
                 (kubectl exec <pod> -- raftset <command>); on this port only if the node \
                 runs with --remote-admin",
            ),
        };
        mark(&mut status, NOT_PROPOSED_HEADER);
        status
    }
}

/// Metadata on a status that says the peer refused the message itself
/// (another cluster, another node id): it is no answer to the request.
const PEER_REFUSAL_HEADER: &str = "raftset-peer-refused";

/// Whether a status from a peer is its refusal of the message, not an
/// answer: a follower that forwarded to where it believed the leader was
/// must not pass that on as the leader's verdict.
pub fn status_is_peer_refusal(status: &Status) -> bool {
    status.metadata().contains_key(PEER_REFUSAL_HEADER)
}

/// What a cluster-control call (join, membership change, leadership
/// transfer, snapshot, digest) can end with.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("this node is not the leader")]
    NotLeader,
    #[error("no leader is known; try again")]
    NoLeader,
    #[error("{id:016x} is not a member")]
    NotMember { id: NodeId },
    #[error("{id:016x} is not a voter")]
    NotVoter { id: NodeId },
    #[error("there is no other voter")]
    NoOtherVoter,
    #[error("{target:016x} did not catch up with index {index}; not transferring")]
    NotCaughtUp { target: NodeId, index: u64 },
    #[error("leadership did not move to {target:016x}: {detail}")]
    TransferFailed { target: NodeId, detail: String },
    #[error("leadership moved during the change; try again")]
    LeadershipMoved,
    /// An election hold from a node that does not lead here.
    #[error("only the current leader may hold an election (asked by {from:016x})")]
    HoldRefused { from: NodeId },
    /// A request to campaign from a node that does not lead here.
    #[error("only the current leader may ask for a campaign (asked by {from:016x})")]
    CampaignRefused { from: NodeId },
    /// Another membership change is in progress: retry once it finished.
    #[error("membership change refused for now: {0}")]
    MembershipBusy(String),
    #[error("peer address {addr} already belongs to member {owner} (id {id})")]
    AddressTaken {
        addr: String,
        owner: String,
        id: NodeId,
    },
    #[error("did not apply index {index}: {detail}")]
    NotApplied { index: u64, detail: String },
    #[error("no digest at index {index} (installed a snapshot past it, or restarted)")]
    NoDigest { index: u64 },
    #[error("snapshot not built in time: {0}")]
    SnapshotTimeout(String),
    /// A pod scaled away was still a member when its stop could wait no
    /// longer; the leader's own reconciling removes it later.
    #[error("still a member after {waited_ms} ms (last: {last})")]
    LeaveTimedOut { waited_ms: u64, last: String },
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// Another node's own answer, passed on unchanged.
    #[error("{}", .0.message())]
    Remote(Status),
    #[error("Kubernetes API: {0}")]
    KubeApi(String),
    #[error("Kubernetes API: {request} answered {status}: {detail}")]
    KubeStatus {
        request: String,
        status: u16,
        detail: String,
    },
    /// A create of the founding record found it there, or an update found
    /// it changed since it was read: another pod wrote first.
    #[error("the founding record {name} was written by someone else first")]
    RecordTaken { name: String },
    #[error("the founding record is unreadable: {0}")]
    BadRecord(String),
    /// Joins wait until the founder confirmed its founding record.
    #[error("this cluster's founding is not on record yet; try again")]
    FoundingUnconfirmed,
    /// `force-new-cluster` asked of a node that is no voter of a cluster.
    #[error(
        "this node ({id:016x}) is not a voter of a cluster; run force-new-cluster on a surviving voter"
    )]
    NotAVoterHere { id: NodeId },
    /// `force-new-cluster` while a quorum of the membership answers:
    /// nothing changed.
    #[error(
        "refusing to force a new cluster: {reachable} of {voters} voters are reachable and {quorum} make a quorum ({seen}); \
         the cluster can still commit, so replace the lost members instead"
    )]
    QuorumReachable {
        reachable: usize,
        voters: usize,
        quorum: usize,
        seen: String,
    },
    /// `force-new-cluster` again before the node started again to
    /// complete the first one.
    #[error("a re-founding is already recorded; the node is starting again to complete it")]
    RefoundingUnderWay,
    /// `force-new-cluster` on a member of a cluster that another voter
    /// re-founded by force already: two survivors must not both found one.
    #[error(
        "refusing to force a new cluster: {peer} re-founded this cluster already, as {cluster_id}; this node will join it"
    )]
    AlreadyRefounded { peer: String, cluster_id: String },
    /// `force-new-cluster` while a reachable member follows a leader.
    #[error("refusing to force a new cluster: {peer} reports leader {leader}, so a quorum exists")]
    LeaderReachable { peer: String, leader: String },
    #[error("raft failure: {0}")]
    Raft(String),
    #[error("storage failure: {0}")]
    Storage(String),
}

impl ClusterError {
    pub fn code(&self) -> Code {
        match self {
            ClusterError::NotLeader
            | ClusterError::NoLeader
            | ClusterError::TransferFailed { .. }
            | ClusterError::LeadershipMoved
            | ClusterError::MembershipBusy(_)
            | ClusterError::FoundingUnconfirmed
            | ClusterError::RefoundingUnderWay => Code::Unavailable,
            ClusterError::NotMember { .. } => Code::NotFound,
            ClusterError::NotVoter { .. }
            | ClusterError::AddressTaken { .. }
            | ClusterError::Invalid(_) => Code::InvalidArgument,
            ClusterError::NoOtherVoter
            | ClusterError::HoldRefused { .. }
            | ClusterError::CampaignRefused { .. }
            | ClusterError::NotCaughtUp { .. }
            | ClusterError::NotApplied { .. }
            | ClusterError::NoDigest { .. }
            | ClusterError::NotAVoterHere { .. }
            | ClusterError::QuorumReachable { .. }
            | ClusterError::LeaderReachable { .. }
            | ClusterError::AlreadyRefounded { .. } => Code::FailedPrecondition,
            ClusterError::SnapshotTimeout(_) | ClusterError::LeaveTimedOut { .. } => {
                Code::DeadlineExceeded
            }
            ClusterError::RecordTaken { .. } => Code::Aborted,
            ClusterError::Peer(e) => e.code(),
            ClusterError::Remote(status) => status.code(),
            ClusterError::Raft(_)
            | ClusterError::Storage(_)
            | ClusterError::KubeApi(_)
            | ClusterError::KubeStatus { .. }
            | ClusterError::BadRecord(_) => Code::Internal,
        }
    }
}

impl From<ClusterError> for Status {
    fn from(err: ClusterError) -> Status {
        match err {
            ClusterError::Remote(status) => status,
            err => Status::new(err.code(), err.to_string()),
        }
    }
}

impl From<PeerError> for Error {
    /// A leader's reply that does not decode, or a leader that cannot be
    /// addressed: the request's fate is unknown to this node.
    fn from(err: PeerError) -> Error {
        Error::Leader(err.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_code_and_http_status() {
        let cases: Vec<(Error, Code, u16)> = vec![
            (
                InvalidRequest::Empty { field: "key" }.into(),
                Code::InvalidArgument,
                400,
            ),
            (
                Error::CompareFailed { current: None },
                Code::FailedPrecondition,
                409,
            ),
            (
                Error::NotAnInteger { len: 1 },
                Code::FailedPrecondition,
                409,
            ),
            (
                Error::Overflow {
                    current: i64::MAX,
                    delta: 1,
                },
                Code::OutOfRange,
                400,
            ),
            (Error::NoLeader, Code::Unavailable, 503),
            (Error::NoQuorum { millis: 5 }, Code::Unavailable, 503),
            (Error::Overloaded { limit: 1 }, Code::ResourceExhausted, 429),
            (
                Error::QuotaExceeded { used: 9, quota: 8 },
                Code::ResourceExhausted,
                507,
            ),
            // A follower passing on its leader's refusals.
            (
                Error::Leader(Error::QuotaExceeded { used: 9, quota: 8 }.into()),
                Code::ResourceExhausted,
                507,
            ),
            (
                Error::Leader(Error::Overloaded { limit: 1 }.into()),
                Code::ResourceExhausted,
                429,
            ),
            (
                Error::OutcomeUnknown { reason: "t".into() },
                Code::DeadlineExceeded,
                504,
            ),
            (
                Error::Compacted {
                    requested: 1,
                    oldest: 5,
                },
                Code::OutOfRange,
                400,
            ),
            (
                Error::WatchLagged {
                    capacity: 1,
                    resume_from: 2,
                },
                Code::ResourceExhausted,
                429,
            ),
            (Error::WatchReset { revision: 3 }, Code::Aborted, 409),
            (Error::ShuttingDown, Code::Unavailable, 503),
            (Error::NotServing, Code::Unavailable, 503),
            (
                Error::MaybeProposed { reason: "m".into() },
                Code::Unavailable,
                503,
            ),
            (
                Error::TooManyWatches { limit: 1 },
                Code::ResourceExhausted,
                429,
            ),
            (Error::NoDigest, Code::Unavailable, 503),
            (
                Error::LeaderUnreachable { detail: "d".into() },
                Code::Unavailable,
                503,
            ),
            (Error::Storage("disk".into()), Code::Internal, 500),
            (Error::Leader(Status::not_found("x")), Code::NotFound, 404),
        ];
        for (err, code, http) in cases {
            assert_eq!(err.code(), code, "{err}");
            assert_eq!(err.http_status(), http, "{err}");
            let message = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
        }
    }

    /// A forwarded write's failure, carried back in a batch's answers, is
    /// what the follower would have received as the call's own status:
    /// same code and message, same marks, same HTTP status once passed on.
    #[test]
    fn a_status_carried_in_a_batch_keeps_its_code_message_and_marks() {
        let errors = [
            Error::QuotaExceeded { used: 9, quota: 8 },
            Error::Overloaded { limit: 1 },
            Error::NoLeader,
            Error::MaybeProposed { reason: "m".into() },
            Error::OutcomeUnknown { reason: "t".into() },
            Error::from(InvalidRequest::Empty { field: "key" }),
        ];
        for err in errors {
            let sent = Status::from(err.clone());
            let wire = WireStatus::from(sent.clone());
            let bytes = postcard::to_stdvec(&wire).unwrap();
            let received = Status::from(postcard::from_bytes::<WireStatus>(&bytes).unwrap());
            assert_eq!(received.code(), sent.code(), "{err}");
            assert_eq!(received.message(), sent.message(), "{err}");
            assert_eq!(
                status_says_nothing_proposed(&received),
                err.nothing_proposed(),
                "{err}"
            );
            assert_eq!(
                Error::Leader(received).http_status(),
                err.http_status(),
                "{err}"
            );
        }
    }

    #[test]
    fn every_cluster_and_peer_error_maps_to_its_code() {
        let mismatch = PeerError::ClusterMismatch;
        let cases: Vec<(ClusterError, Code)> = vec![
            (ClusterError::NotLeader, Code::Unavailable),
            (ClusterError::NoLeader, Code::Unavailable),
            (ClusterError::NotMember { id: 1 }, Code::NotFound),
            (ClusterError::NotVoter { id: 1 }, Code::InvalidArgument),
            (ClusterError::NoOtherVoter, Code::FailedPrecondition),
            (
                ClusterError::HoldRefused { from: 1 },
                Code::FailedPrecondition,
            ),
            (
                ClusterError::CampaignRefused { from: 1 },
                Code::FailedPrecondition,
            ),
            (
                ClusterError::NotCaughtUp {
                    target: 1,
                    index: 2,
                },
                Code::FailedPrecondition,
            ),
            (
                ClusterError::TransferFailed {
                    target: 1,
                    detail: "d".into(),
                },
                Code::Unavailable,
            ),
            (ClusterError::LeadershipMoved, Code::Unavailable),
            (ClusterError::MembershipBusy("m".into()), Code::Unavailable),
            (
                ClusterError::AddressTaken {
                    addr: "a".into(),
                    owner: "o".into(),
                    id: 1,
                },
                Code::InvalidArgument,
            ),
            (
                ClusterError::NotApplied {
                    index: 1,
                    detail: "d".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                ClusterError::NoDigest { index: 1 },
                Code::FailedPrecondition,
            ),
            (
                ClusterError::LeaveTimedOut {
                    waited_ms: 1,
                    last: "l".into(),
                },
                Code::DeadlineExceeded,
            ),
            (
                ClusterError::SnapshotTimeout("t".into()),
                Code::DeadlineExceeded,
            ),
            (
                InvalidRequest::Missing { field: "id" }.into(),
                Code::InvalidArgument,
            ),
            (mismatch.clone().into(), Code::FailedPrecondition),
            (
                PeerError::WrongTarget { this: 1, target: 2 }.into(),
                Code::FailedPrecondition,
            ),
            (
                PeerError::Undecodable("x".into()).into(),
                Code::InvalidArgument,
            ),
            (ClusterError::Remote(Status::aborted("a")), Code::Aborted),
            (ClusterError::KubeApi("k".into()), Code::Internal),
            (
                ClusterError::KubeStatus {
                    request: "GET /".into(),
                    status: 403,
                    detail: "forbidden".into(),
                },
                Code::Internal,
            ),
            (
                ClusterError::RecordTaken {
                    name: "raftset-cluster".into(),
                },
                Code::Aborted,
            ),
            (ClusterError::BadRecord("b".into()), Code::Internal),
            (ClusterError::FoundingUnconfirmed, Code::Unavailable),
            (ClusterError::RefoundingUnderWay, Code::Unavailable),
            (
                ClusterError::AlreadyRefounded {
                    peer: "p".into(),
                    cluster_id: "c".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                ClusterError::NotAVoterHere { id: 1 },
                Code::FailedPrecondition,
            ),
            (
                ClusterError::QuorumReachable {
                    reachable: 2,
                    voters: 3,
                    quorum: 2,
                    seen: "s".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                ClusterError::LeaderReachable {
                    peer: "p".into(),
                    leader: "l".into(),
                },
                Code::FailedPrecondition,
            ),
            (ClusterError::Raft("r".into()), Code::Internal),
            (ClusterError::Storage("s".into()), Code::Internal),
        ];
        for (err, code) in cases {
            let message = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
        assert!(mismatch.to_string().contains("cluster id mismatch"));
    }

    #[test]
    fn limit_errors_name_the_limit_and_the_value() {
        let err = InvalidRequest::TooLarge {
            field: "value",
            len: 2_000_000,
            max: 1_048_576,
        };
        assert_eq!(
            err.to_string(),
            "value is 2000000 bytes, over the limit of 1048576 bytes"
        );
    }
}
