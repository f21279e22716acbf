//! The ground floor's domain model, shared by every layer: openraft's type
//! configuration and its aliases, what travels through the Raft log
//! ([`Command`], [`Op`]), what applying it gives ([`Outcome`]), and the
//! values the faces hand out ([`KeyValue`], [`Digest`], [`Consistency`]).
//!
//! It must never depend on anything but openraft, serde and tokio's `watch`
//! (for [`Formation`], which others wait on): every other module builds on
//! it, so it stays free of behaviour beyond small pure helpers. An [`Outcome`] must depend on nothing but the command and the
//! state before it, so every replica reaches the same result: the proposer's
//! clock travels inside the [`Proposal`] for that reason.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The key the HTTP visit counter lives under.
pub const VISITS_KEY: &[u8] = b"visits";

/// How stale a read may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Sees every write acknowledged before the read began.
    #[default]
    Linearizable,
    /// This node's current state, possibly behind the leader.
    Serializable,
}

openraft::declare_raft_types!(
    /// raftset's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Vec<Outcome>,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft node id. It belongs to a node's volume, not to its pod name: an
/// empty data directory always takes a fresh one.
pub type NodeId = u64;

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Member>;
/// Who leads, the vote and the membership: openraft sends these only when
/// they change, where [`RaftMetrics`] goes out on every turn of its core's
/// loop and wakes each task that watches it. A task that waits for a
/// change of leader watches these.
pub type ServerMetrics = openraft::metrics::RaftServerMetrics<NodeId, Member>;
/// The log, applied, snapshot and purge positions, sent when they change.
pub type DataMetrics = openraft::metrics::RaftDataMetrics<NodeId>;

/// What the membership records about each node: its name (the pod name,
/// `raftset-2`) and where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_addr: String,
    pub api_addr: String,
    pub http_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

/// What one log entry carries: the client writes a leader proposed
/// together, so that one append and one flush serve them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The leader's wall clock in milliseconds; when this entry's request
    /// ids are forgotten is counted from it.
    pub proposed_at_ms: u64,
    /// Request ids proposed before this time are forgotten when the entry
    /// applies. The leader's dedup window sets it, so that every replica
    /// forgets the same ids whatever its own configuration.
    pub forget_before_ms: u64,
    pub commands: Vec<Command>,
}

/// One client write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Deduplicates retries: a command whose id was already applied returns
    /// the first outcome again and changes nothing.
    #[serde(with = "serde_bytes")]
    pub request_id: RequestId,
    pub op: Op,
}

impl Command {
    /// Roughly how many bytes the command adds to a log entry.
    pub fn size(&self) -> usize {
        let payload = match &self.op {
            Op::Put { key, value } | Op::PutReturningPrev { key, value } => key.len() + value.len(),
            Op::Delete { key } | Op::Increment { key, .. } => key.len(),
            Op::Checkpoint => 0,
            Op::CompareAndSwap { key, expected, new } => {
                key.len() + expected.as_ref().map_or(0, Vec::len) + new.as_ref().map_or(0, Vec::len)
            }
        };
        payload + self.request_id.len() + 16
    }
}

/// A client-chosen (or node-chosen) request id, 1 to 64 bytes.
pub type RequestId = Vec<u8>;

/// Starts every id a node makes for a write that came without one (a
/// visit, a gRPC write with no id). Clients may not send ids that start
/// with it, so such an id is always a node's.
pub const NODE_ID_MARK: &[u8; 8] = b"\xffraftset";

/// An id for a write that came without one, carrying how long replicas
/// must remember it. Only the node that made it sends that write again,
/// and only until its deadline: remembering it for the whole dedup window
/// would let anonymous visitors fill the volume with ids nobody retries.
pub fn node_request_id(remember_for: Duration) -> RequestId {
    let ms = u32::try_from(remember_for.as_millis()).unwrap_or(u32::MAX);
    [
        NODE_ID_MARK.as_slice(),
        &ms.to_be_bytes(),
        &rand::random::<[u8; 16]>(),
    ]
    .concat()
}

/// How long a node-made id must be remembered, in milliseconds; `None`
/// for a client's id, which is remembered for the whole dedup window.
pub fn node_id_lifetime_ms(id: &[u8]) -> Option<u64> {
    let rest = id.strip_prefix(NODE_ID_MARK.as_slice())?;
    let ms: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    Some(u64::from(u32::from_be_bytes(ms)))
}

/// Logs, snapshots and peers encode an op by its place in this list, so
/// new kinds go at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A put whose writer asked for the value it replaces (`prev_kv`): the
    /// outcome carries it, and so does its remembered copy. First in the
    /// list: every put was one before writers could choose, so logs and
    /// remembered outcomes written then read as this.
    PutReturningPrev {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    CompareAndSwap {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// `None` expects the key to be absent.
        #[serde(with = "serde_bytes")]
        expected: Option<Vec<u8>>,
        /// `None` deletes the key.
        #[serde(with = "serde_bytes")]
        new: Option<Vec<u8>>,
    },
    Increment {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        delta: i64,
    },
    /// Changes nothing; every replica records a digest of its state after
    /// the entry that carries it, so replicas can be compared (`verify`).
    Checkpoint,
    /// A put whose writer did not ask for the value it replaces: neither
    /// the outcome nor its remembered copy holds it, so a put stores its
    /// value once, not twice.
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
}

/// A key's value with its history counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

/// What applying a command did. Expected refusals (a lost compare-and-swap,
/// a non-integer counter) are outcomes too: applying never fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Put {
        revision: u64,
        prev: Option<KeyValue>,
    },
    Deleted {
        revision: u64,
        prev: Option<KeyValue>,
    },
    Swapped {
        revision: u64,
    },
    /// The compare-and-swap lost: the key held something else (`None`: absent).
    CompareFailed {
        current: Option<KeyValue>,
    },
    Incremented {
        revision: u64,
        value: i64,
    },
    /// The counter's current value is not a decimal integer.
    NotAnInteger {
        #[serde(with = "serde_bytes")]
        current: Vec<u8>,
    },
    /// Adding the delta would leave the i64 range.
    Overflow {
        current: i64,
    },
    /// Digests were taken after the entry at this log index.
    Checkpoint {
        index: u64,
    },
}

/// A summary of a replica's keys and values at one log position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub index: u64,
    pub revision: u64,
    pub keys: u64,
    /// CRC-32 over every key and value in order, as hex.
    pub crc: String,
}

/// On the leader: the highest log index known to be on `id` (0 if none).
pub fn matched_index(metrics: &RaftMetrics, id: NodeId) -> u64 {
    metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map_or(0, |l| l.index)
}

/// A member's name by id, for display (the id when it is not a member).
pub fn member_name(metrics: &RaftMetrics, id: NodeId) -> String {
    metrics
        .membership_config
        .membership()
        .get_node(&id)
        .map(|m| m.name.clone())
        .unwrap_or_else(|| id.to_string())
}

/// The id of the cluster this node belongs to, shared by everything that
/// sends or accepts peer messages. Empty until the node founds or joins one.
#[derive(Debug, Clone, Default)]
pub struct ClusterId(Arc<RwLock<String>>);

impl ClusterId {
    pub fn get(&self) -> String {
        self.0.read().expect("cluster id lock").clone()
    }

    pub fn set(&self, id: &str) {
        *self.0.write().expect("cluster id lock") = id.to_string();
    }
}

/// Where this node stands in forming its cluster, shared by the cluster
/// layer (which moves it), the request path and the probes (which read it).
/// A node acknowledges writes and admits joiners only once it is
/// [`Standing::Serving`]: a founder gets there only after its founding is on
/// record, so an unconfirmed record proves nothing was acknowledged.
#[derive(Debug, Clone)]
pub struct Formation(Arc<tokio::sync::watch::Sender<Standing>>);

/// The stages of [`Formation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Not a member yet, or a founder whose founding is not on record yet.
    Forming,
    /// Not a member; the founding record says the set's cluster exists, and
    /// this node waits for its members to answer, then joins.
    AwaitingMembers,
    /// A member whose cluster is on record (or needs no record).
    Serving,
}

impl Default for Formation {
    fn default() -> Formation {
        Formation(Arc::new(tokio::sync::watch::Sender::new(Standing::Forming)))
    }
}

impl Formation {
    pub fn get(&self) -> Standing {
        *self.0.borrow()
    }

    pub fn set(&self, standing: Standing) {
        self.0.send_replace(standing);
    }

    pub fn is_serving(&self) -> bool {
        self.get() == Standing::Serving
    }

    /// Waits until the node serves; false if `timeout` passed first.
    pub async fn serving(&self, timeout: Duration) -> bool {
        let mut standing = self.0.subscribe();
        let serving = tokio::time::timeout(timeout, standing.wait_for(|s| *s == Standing::Serving))
            .await
            .is_ok_and(|r| r.is_ok());
        serving
    }
}

/// Whether `nodes` hold a majority of each voter set of a membership's
/// configuration (two while a change is in joint consensus).
pub fn majority_of_each(configs: &[BTreeSet<NodeId>], nodes: &BTreeSet<NodeId>) -> bool {
    configs
        .iter()
        .all(|config| 2 * config.intersection(nodes).count() > config.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_fields_keep_the_format_that_is_on_disk_and_on_the_wire() {
        // serde_bytes changes how a field reaches postcard (one slice, not
        // one call per byte), not the bytes postcard writes: logs,
        // snapshots and peers of earlier builds read the same. Their puts
        // all returned the previous value, and read as the op that does.
        #[derive(Serialize)]
        enum PlainOp {
            Put { key: Vec<u8>, value: Vec<u8> },
        }
        let (key, value) = (b"key".to_vec(), (0..=255u8).collect::<Vec<u8>>());
        let ours = postcard::to_stdvec(&Op::PutReturningPrev {
            key: key.clone(),
            value: value.clone(),
        })
        .unwrap();
        let plain = postcard::to_stdvec(&PlainOp::Put { key, value }).unwrap();
        assert_eq!(ours, plain);
    }
}
