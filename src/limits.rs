//! Every size limit in one place. Error messages quote these, and requests
//! are checked against them before anything is proposed: a committed entry
//! must always apply.

/// Longest key, in bytes (etcd-like: keys are names, not payloads).
pub const MAX_KEY_LEN: usize = 4 * 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 1024 * 1024;
/// Longest request id, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 64;
/// Most keys one Scan returns.
pub const MAX_SCAN_LIMIT: u32 = 10_000;
/// Keys a Scan returns when it names no limit.
pub const DEFAULT_SCAN_LIMIT: u32 = 1_000;
/// Largest client message: one maximal key and value plus framing.
pub const MAX_CLIENT_MESSAGE: usize = MAX_KEY_LEN + MAX_VALUE_LEN + 64 * 1024;
/// Most entries in one AppendEntries message.
pub const MAX_ENTRIES_PER_APPEND: u64 = 32;
/// Largest log entry: a full batch of writes plus one maximal write
/// ([`crate::raft::batch::MAX_BATCH_BYTES`]).
pub const MAX_ENTRY: usize = 1024 * 1024 + MAX_CLIENT_MESSAGE;
/// An AppendEntries stops growing past this many bytes of entries (it
/// always holds at least one entry).
pub const MAX_APPEND_BYTES: usize = 1024 * 1024;
/// Largest peer message: an AppendEntries of [`MAX_APPEND_BYTES`] and one
/// more maximal entry, plus framing.
pub const MAX_PEER_MESSAGE: usize = MAX_APPEND_BYTES + MAX_ENTRY + 1024 * 1024;
/// Snapshot chunk size when catching a follower up.
pub const SNAPSHOT_CHUNK: u64 = 1024 * 1024;
/// A Scan page stops growing past this many bytes of keys and values (it
/// always holds at least one key), so a response always fits the transport.
pub const MAX_SCAN_BYTES: usize = 4 * 1024 * 1024;
/// Largest client response: a full scan page plus one maximal entry.
pub const MAX_CLIENT_RESPONSE: usize = MAX_SCAN_BYTES + MAX_CLIENT_MESSAGE;
/// Watch streams one node serves at once.
pub const MAX_WATCHERS: usize = 1_000;
/// Bytes of keys and values queued for one watcher's client before the
/// watch waits for it to read (one larger event waits for an empty queue).
pub const WATCH_QUEUE_BYTES: usize = 1024 * 1024;
/// Bytes of keys and values a watch's replay reads from the history at a
/// time (at least one entry's changes).
pub const WATCH_REPLAY_PAGE_BYTES: usize = 1024 * 1024;

/// Peer connections open at once on one node: members keep one each way,
/// the rest are members' CLI calls passed on; past it, new ones are closed.
pub const MAX_PEER_CONNECTIONS: usize = 256;
/// Most connections open at once on the loopback admin port: operators'
/// commands and a preStop hook, never a crowd.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// Concurrent requests on one peer connection: a follower forwards every
/// write its clients have in flight over one.
pub const MAX_PEER_STREAMS: u32 = 4096;
/// Concurrent requests on one client connection.
pub const MAX_CLIENT_STREAMS: u32 = 1024;
/// Cluster-control requests (ClusterInfo, Join, HoldElection, Digest) are
/// a few hundred bytes: the peer port takes no more for them.
pub const MAX_CLUSTER_CONTROL_MESSAGE: usize = 64 * 1024;

/// The largest request body a peer may send to the peer port's method at
/// `path` (`/package.Service/Method`): replication and forwarded writes
/// carry entries, every other call (votes, read-index requests, cluster
/// control, Admin calls members pass on) a few hundred bytes.
pub fn max_peer_request(path: &str) -> usize {
    match path.rsplit('/').next() {
        Some("AppendEntries" | "InstallSnapshot" | "Propose") => MAX_PEER_MESSAGE,
        _ => MAX_CLUSTER_CONTROL_MESSAGE,
    }
}
