//! Entry points for the fuzz targets in `fuzz/` (`cargo fuzz`): each takes
//! arbitrary bytes and drives the code that meets untrusted input the way
//! a node does. Compiled only for fuzzing (`--cfg fuzzing`, which `cargo
//! fuzz` passes) and for this crate's own tests, which run every target on
//! its seeds; never part of the library a user builds.
//!
//! - [`client_request`]: a KV request as the client port decodes it
//!   (prost), converted ([`crate::proto`]) and validated
//!   ([`crate::validate`]).
//! - [`peer_message`]: a peer envelope opened ([`crate::grpc::open`]) as
//!   every payload the peer port and its callers decode.
//! - [`snapshot_file`]: a snapshot file received from a leader, installed
//!   into a state machine on a temporary data directory.
//!
//! A target panics only when the code under test does what it must not:
//! panic, allocate without bound, accept what a limit in
//! [`crate::limits`] forbids, open a message meant for someone else, or
//! decode a payload to something other than what was sealed.

use std::cell::RefCell;
use std::time::Duration;

use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Request;

use crate::error::{Error, InvalidRequest, PeerError};
use crate::grpc;
use crate::limits::{
    MAX_KEY_LEN, MAX_REQUEST_ID_LEN, MAX_SCAN_BYTES, MAX_SCAN_LIMIT, MAX_VALUE_LEN,
};
use crate::proto::{self, PeerMessage};
use crate::raft::forwarder::{BatchAnswer, ForwardedWrite};
use crate::raft::network::RaftReply;
use crate::raft::read_index::{ReadIndexAnswer, ReadIndexAsk};
use crate::store::state_machine::ScanRange;
use crate::store::{snapshot, Store, StoreOptions};
use crate::types::{
    ClusterId, Command, Digest, Entry, LogId, NodeId, Op, Proposal, SnapshotMeta, TypeConfig,
};
use crate::validate;

/// Decodes `data` as one of the KV service's requests (its first byte
/// picks which) and checks it as the server does. What validation accepts
/// must be within the limits; what it refuses must become
/// `INVALID_ARGUMENT` with a short message that echoes no key or value.
pub fn client_request(data: &[u8]) {
    let Some((&kind, message)) = data.split_first() else {
        return;
    };
    match kind % 7 {
        0 => {
            let Ok(request) = proto::GetRequest::decode(message) else {
                return;
            };
            refused_or(validate::key("key", &request.key), |()| {
                assert_key(&request.key)
            });
            refused_or(proto::consistency(request.consistency), |_| {});
        }
        1 => {
            if let Ok(request) = proto::PutRequest::decode(message) {
                write(proto::put_op(&request), &request.request_id);
            }
        }
        2 => {
            if let Ok(request) = proto::DeleteRequest::decode(message) {
                write(proto::delete_op(&request), &request.request_id);
            }
        }
        3 => {
            if let Ok(request) = proto::IncrementRequest::decode(message) {
                write(proto::increment_op(&request), &request.request_id);
            }
        }
        4 => {
            if let Ok(request) = proto::CompareAndSwapRequest::decode(message) {
                refused_or(proto::compare_and_swap_op(&request), |op| {
                    write(op, &request.request_id)
                });
            }
        }
        5 => {
            let Ok(request) = proto::ScanRequest::decode(message) else {
                return;
            };
            let end = proto::scan_end(&request);
            let checked = validate::scan(
                &request.prefix,
                &request.start,
                end.as_deref(),
                request.limit,
            );
            refused_or(checked, |limit| {
                assert!((1..=MAX_SCAN_LIMIT).contains(&limit), "scan limit {limit}");
                assert!(request.limit == 0 || limit == request.limit);
                for bound in [
                    &request.prefix[..],
                    &request.start,
                    end.as_deref().unwrap_or(&[]),
                ] {
                    assert!(bound.len() <= MAX_KEY_LEN, "a {} byte bound", bound.len());
                }
            });
            refused_or(proto::consistency(request.consistency), |_| {});
        }
        _ => {
            if let Ok(request) = proto::WatchRequest::decode(message) {
                refused_or(validate::key_bound("prefix", &request.prefix), |()| {
                    assert!(request.prefix.len() <= MAX_KEY_LEN)
                });
            }
        }
    }
}

/// A write as `api::kv` and `Requests::write` check it. What a follower
/// accepts, the leader's check of the forwarded command must accept too.
fn write(op: Op, request_id: &[u8]) {
    let request_id = match validate::request_id(request_id) {
        Ok(id) => id,
        Err(e) => return refused(e),
    };
    if let Err(e) = validate::op(&op) {
        return refused(e);
    }
    assert_op(&op);
    if let Some(id) = &request_id {
        assert!((1..=MAX_REQUEST_ID_LEN).contains(&id.len()));
    }
    let command = Command {
        request_id: request_id.unwrap_or_else(new_request_id),
        op,
    };
    assert_eq!(validate::command(&command), Ok(()));
}

fn refused_or<T>(checked: Result<T, InvalidRequest>, accepted: impl FnOnce(T)) {
    match checked {
        Ok(value) => accepted(value),
        Err(e) => refused(e),
    }
}

/// A refusal as the client sees it.
fn refused(e: InvalidRequest) {
    let status = tonic::Status::from(Error::from(e));
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().len() < 256, "{status:?}");
}

fn assert_key(key: &[u8]) {
    assert!(
        (1..=MAX_KEY_LEN).contains(&key.len()),
        "a {} byte key",
        key.len()
    );
}

fn assert_value(value: &[u8]) {
    assert!(value.len() <= MAX_VALUE_LEN, "a {} byte value", value.len());
}

/// Every key and value of an accepted op is within the limits.
fn assert_op(op: &Op) {
    match op {
        Op::Put { key, value } | Op::PutReturningPrev { key, value } => {
            assert_key(key);
            assert_value(value);
        }
        Op::Delete { key } | Op::Increment { key, .. } => assert_key(key),
        Op::CompareAndSwap { key, expected, new } => {
            assert_key(key);
            expected.iter().chain(new).for_each(|v| assert_value(v));
        }
        Op::Checkpoint => {}
    }
}

/// The cluster id the peer target's node belongs to.
const CLUSTER: &str = "fuzz-cluster";
/// The peer target's node id.
const ME: NodeId = 1;

/// Opens `data` as every payload a node decodes from a peer: first as the
/// envelope tonic decodes (prost), then as the payload of an envelope
/// addressed to this node. A message for another cluster or node never
/// opens; a payload that opens seals and opens again to the same value.
pub fn peer_message(data: &[u8]) {
    let ours = ClusterId::default();
    ours.set(CLUSTER);
    if let Ok(message) = PeerMessage::decode(data) {
        open_every_payload(&ours, &message);
    }
    open_every_payload(
        &ours,
        &PeerMessage {
            cluster_id: CLUSTER.into(),
            payload: data.to_vec().into(),
            target_id: ME,
        },
    );
}

fn open_every_payload(ours: &ClusterId, message: &PeerMessage) {
    // RaftPeer.
    opens::<AppendEntriesRequest<TypeConfig>>(ours, message);
    opens::<VoteRequest<NodeId>>(ours, message);
    opens::<InstallSnapshotRequest<TypeConfig>>(ours, message);
    if let Some(writes) = opens::<Vec<ForwardedWrite>>(ours, message) {
        // Propose checks each forwarded write again.
        for write in writes {
            if validate::command(&write.command).is_ok() {
                assert_op(&write.command.op);
            }
        }
    }
    // ReadIndex.
    opens::<ReadIndexAsk>(ours, message);
    // ClusterPeer: HoldElection, Digest.
    opens::<(NodeId, u64)>(ours, message);
    opens::<u64>(ours, message);
    // The replies their callers open.
    opens::<RaftReply<AppendEntriesResponse<NodeId>>>(ours, message);
    opens::<RaftReply<VoteResponse<NodeId>>>(ours, message);
    opens::<RaftReply<InstallSnapshotResponse<NodeId>, InstallSnapshotError>>(ours, message);
    opens::<BatchAnswer>(ours, message);
    opens::<ReadIndexAnswer>(ours, message);
    opens::<Digest>(ours, message);
}

/// Opens `message` as a `T`, checks the envelope's verdict, and seals what
/// opened to check it comes back the same.
fn opens<T: Serialize + DeserializeOwned>(ours: &ClusterId, message: &PeerMessage) -> Option<T> {
    let addressed =
        message.cluster_id == CLUSTER && (message.target_id == 0 || message.target_id == ME);
    match grpc::open::<T>(ours, ME, Request::new(message.clone())) {
        Ok(value) => {
            assert!(addressed, "opened a message for {:?}", message.cluster_id);
            assert_round_trip(ours, &value);
            Some(value)
        }
        Err(PeerError::Undecodable(_)) => {
            assert!(addressed, "decoded before checking the envelope");
            None
        }
        Err(PeerError::ClusterMismatch | PeerError::WrongTarget { .. }) => {
            assert!(!addressed, "refused a message for this node");
            None
        }
        Err(other) => panic!("opening gave {other}"),
    }
}

/// What is sealed opens to the same value, and so does its reply: one
/// peer call, answered by echoing what the "peer" opened.
fn assert_round_trip<T: Serialize + DeserializeOwned>(ours: &ClusterId, value: &T) {
    let echoed: T = futures::executor::block_on(grpc::call(
        ours,
        ME,
        value,
        Duration::from_secs(1),
        |request| async move {
            let opened: T = grpc::open(ours, ME, request)?;
            Ok(grpc::reply(&opened))
        },
    ))
    .expect("a sealed payload opens, and so does its reply");
    assert_eq!(grpc::encode(&echoed), grpc::encode(value));
}

/// Receives `data` as a snapshot file from the leader and installs it,
/// then the same bytes with a valid checksum appended (so that mutations
/// reach past the checksum). An install either fails, leaving the state
/// as it was, or leaves exactly the snapshot's state, which then reads
/// and applies without a panic.
pub fn snapshot_file(data: &[u8]) {
    install(data);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&crc32fast::hash(data).to_be_bytes());
    install(&sealed);
}

/// A store on a temporary data directory, opened once per process.
struct Installer {
    store: Store,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

thread_local! {
    static INSTALLER: RefCell<Option<Installer>> = const { RefCell::new(None) };
}

fn open_installer() -> Installer {
    // In memory where there is a /dev/shm: installs flush.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory");
    let store = Store::open(dir.path(), &StoreOptions::default()).expect("a fresh store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    Installer {
        store,
        runtime,
        _dir: dir,
    }
}

/// Installs `bytes` as openraft does (received into the state machine's
/// own file); says whether it installed.
fn install(bytes: &[u8]) -> bool {
    INSTALLER.with_borrow_mut(|installer| {
        let Installer { store, runtime, .. } = installer.get_or_insert_with(open_installer);
        runtime.block_on(install_into(store, bytes))
    })
}

async fn install_into(store: &mut Store, bytes: &[u8]) -> bool {
    use std::io::Write;
    let sm = &mut store.state_machine;
    // The leader sends the file's own meta; any other is refused before a
    // record is read.
    let mut file = tempfile::tempfile().expect("a temporary file");
    file.write_all(bytes).expect("write the snapshot");
    let meta = snapshot::verify(&mut file).ok();
    let before = sm.applied_state().await.expect("the applied state");
    let mut receiving = sm.begin_receiving_snapshot().await.expect("receive");
    tokio::io::AsyncWriteExt::write_all(&mut *receiving, bytes)
        .await
        .expect("write the snapshot");
    let installed = sm
        .install_snapshot(&meta.clone().unwrap_or_default(), receiving)
        .await;
    let after = sm.applied_state().await;
    if installed.is_err() {
        assert_eq!(
            after.ok(),
            Some(before),
            "a refused install changed the state"
        );
        return false;
    }
    let meta = meta.expect("installed a file that does not verify");
    let (applied, membership) = after.expect("the installed state");
    assert_eq!(applied, meta.last_log_id);
    assert_eq!(membership, meta.last_membership);
    read_and_apply(sm, &meta).await;
    true
}

/// 16 random bytes: unique enough that two requests never share one.
fn new_request_id() -> Vec<u8> {
    rand::random::<[u8; 16]>().to_vec()
}

/// Reads the installed state whole and applies an entry on top of it:
/// errors are fine (the records are the leader's), panics are not.
async fn read_and_apply(sm: &mut crate::store::StateMachine, meta: &SnapshotMeta) {
    let reader = sm.reader();
    let _ = reader.scan(
        &ScanRange::default(),
        MAX_SCAN_LIMIT as usize,
        MAX_SCAN_BYTES,
    );
    let _ = reader.get(b"k");
    let index = meta.last_log_id.map_or(0, |l| l.index).saturating_add(1);
    let command = |op| Command {
        request_id: new_request_id(),
        op,
    };
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(u64::MAX, ME), index),
        payload: EntryPayload::Normal(Proposal {
            proposed_at_ms: 1,
            forget_before_ms: 0,
            commands: vec![
                command(Op::Increment {
                    key: b"k".to_vec(),
                    delta: 1,
                }),
                command(Op::Checkpoint),
            ],
        }),
    };
    let _ = sm.apply([entry]).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::read_index::Stamp;
    use crate::types::{Member, Outcome};
    use openraft::{Membership, Vote};
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::Read;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(3, ME), index)
    }

    fn membership() -> openraft::Membership<NodeId, Member> {
        let member = Member {
            name: "raftset-0".into(),
            peer_addr: "raftset-0.raftset-peers:7001".into(),
            api_addr: "raftset-0.raftset-peers:7000".into(),
            http_addr: "raftset-0.raftset-peers:8080".into(),
        };
        Membership::new(vec![BTreeSet::from([ME])], BTreeMap::from([(ME, member)]))
    }

    fn ops() -> Vec<Op> {
        let key = b"greeting".to_vec();
        vec![
            Op::Put {
                key: key.clone(),
                value: b"hello".to_vec(),
            },
            Op::PutReturningPrev {
                key: key.clone(),
                value: b"hi".to_vec(),
            },
            Op::CompareAndSwap {
                key: key.clone(),
                expected: Some(b"hello".to_vec()),
                new: Some(b"hi".to_vec()),
            },
            Op::Increment {
                key: b"visits".to_vec(),
                delta: 3,
            },
            Op::Delete { key },
            Op::Checkpoint,
        ]
    }

    fn entries() -> Vec<Entry> {
        let commands = ops()
            .into_iter()
            .enumerate()
            .map(|(i, op)| Command {
                request_id: format!("r{i}").into_bytes(),
                op,
            })
            .collect();
        vec![
            Entry {
                log_id: log_id(1),
                payload: EntryPayload::Membership(membership()),
            },
            Entry {
                log_id: log_id(2),
                payload: EntryPayload::Normal(Proposal {
                    proposed_at_ms: 1_000,
                    forget_before_ms: 0,
                    commands,
                }),
            },
        ]
    }

    /// One valid request of each kind, prefixed with the byte that picks it.
    fn client_request_seeds() -> Vec<Vec<u8>> {
        let key = || b"greeting".to_vec().into();
        let id = || b"request-1".to_vec().into();
        let messages = [
            proto::GetRequest {
                key: key(),
                consistency: 1,
            }
            .encode_to_vec(),
            proto::PutRequest {
                key: key(),
                value: b"hello".to_vec().into(),
                request_id: id(),
                prev_kv: true,
            }
            .encode_to_vec(),
            proto::DeleteRequest {
                key: key(),
                request_id: id(),
            }
            .encode_to_vec(),
            proto::IncrementRequest {
                key: key(),
                delta: -2,
                request_id: id(),
            }
            .encode_to_vec(),
            proto::CompareAndSwapRequest {
                key: key(),
                expected: Some(proto::compare_and_swap_request::Expected::ExpectedValue(
                    b"hello".to_vec().into(),
                )),
                new: Some(proto::compare_and_swap_request::New::Delete(true)),
                request_id: id(),
            }
            .encode_to_vec(),
            proto::ScanRequest {
                prefix: b"g".to_vec().into(),
                start: b"ga".to_vec().into(),
                end: b"gz".to_vec().into(),
                limit: 10,
                consistency: 0,
            }
            .encode_to_vec(),
            proto::WatchRequest {
                prefix: b"g".to_vec().into(),
                start_revision: 4,
            }
            .encode_to_vec(),
        ];
        messages
            .into_iter()
            .zip(0u8..)
            .map(|(message, kind)| [vec![kind], message].concat())
            .collect()
    }

    /// Every payload kind the peer port and its callers decode, each both
    /// bare and in an envelope for the target's node.
    fn peer_message_seeds() -> Vec<Vec<u8>> {
        let vote = Vote::new_committed(3, ME);
        let [first, second] = <[Entry; 2]>::try_from(entries()).expect("two entries");
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(2)),
            last_membership: crate::types::StoredMembership::new(Some(log_id(1)), membership()),
            snapshot_id: "2-0000abcd".into(),
        };
        let ops = ops();
        let stamp = Stamp {
            leader: 0x5eed,
            round: 12,
        };
        let payloads = [
            grpc::encode(&AppendEntriesRequest::<TypeConfig> {
                vote,
                prev_log_id: Some(log_id(1)),
                entries: vec![second],
                leader_commit: Some(log_id(1)),
            }),
            grpc::encode(&AppendEntriesRequest::<TypeConfig> {
                vote,
                prev_log_id: None,
                entries: vec![first],
                leader_commit: None,
            }),
            grpc::encode(&VoteRequest::new(vote, Some(log_id(2)))),
            grpc::encode(&InstallSnapshotRequest::<TypeConfig> {
                vote,
                meta,
                offset: 0,
                data: b"RAFTSET".to_vec(),
                done: false,
            }),
            grpc::encode(&vec![ForwardedWrite {
                command: Command {
                    request_id: b"request-1".to_vec(),
                    op: ops[1].clone(),
                },
                timeout_ms: 2_000,
            }]),
            grpc::encode(&(ME, 500u64)),
            grpc::encode(&ReadIndexAsk {
                from: ME,
                vote,
                seen: Some(stamp),
            }),
            grpc::encode(&ReadIndexAnswer { index: 7, stamp }),
            grpc::encode(&RaftReply::<_>::Ok(
                AppendEntriesResponse::<NodeId>::Success,
            )),
            grpc::encode::<BatchAnswer>(&(
                0,
                Ok(Outcome::Incremented {
                    revision: 3,
                    value: 3,
                }),
            )),
            grpc::encode::<BatchAnswer>(&(
                1,
                Err(tonic::Status::from(Error::Overloaded { limit: 1 }).into()),
            )),
            grpc::encode(&Digest {
                index: 2,
                revision: 3,
                keys: 1,
                crc: "0badf00d".into(),
            }),
        ];
        payloads
            .iter()
            .flat_map(|payload| {
                let envelope = PeerMessage {
                    cluster_id: CLUSTER.into(),
                    payload: payload.clone().into(),
                    target_id: ME,
                };
                [payload.clone(), envelope.encode_to_vec()]
            })
            .collect()
    }

    /// A snapshot of a state machine that applied [`entries`], whole and
    /// without its checksum (which the target appends).
    fn snapshot_file_seeds() -> Vec<Vec<u8>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), &StoreOptions::default()).expect("open store");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let file = runtime.block_on(async {
            let sm = &mut store.state_machine;
            sm.apply(entries()).await.expect("apply");
            let mut builder = sm.get_snapshot_builder().await;
            let snapshot = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
                .await
                .expect("build");
            let mut bytes = Vec::new();
            snapshot
                .snapshot
                .into_std()
                .await
                .read_to_end(&mut bytes)
                .expect("read");
            bytes
        });
        let body = file[..file.len() - 4].to_vec();
        vec![file, body]
    }

    /// A target's name, entry point and seeds.
    type Target = (&'static str, fn(&[u8]), Vec<Vec<u8>>);

    fn seeds() -> [Target; 3] {
        [
            ("client_request", client_request, client_request_seeds()),
            ("peer_message", peer_message, peer_message_seeds()),
            ("snapshot_file", snapshot_file, snapshot_file_seeds()),
        ]
    }

    #[test]
    fn every_target_passes_its_seeds() {
        for (_, target, seeds) in seeds() {
            for seed in seeds {
                target(&seed);
            }
        }
    }

    #[test]
    fn the_snapshot_seeds_install() {
        for seed in snapshot_file_seeds() {
            let sealed = [&seed[..], &crc32fast::hash(&seed).to_be_bytes()].concat();
            assert!(install(&seed) || install(&sealed));
        }
    }

    #[test]
    fn the_peer_seeds_open_as_what_they_carry() {
        let ours = ClusterId::default();
        ours.set(CLUSTER);
        let seeds = peer_message_seeds();
        let envelope = PeerMessage::decode(&seeds[1][..]).expect("an envelope");
        assert!(opens::<AppendEntriesRequest<TypeConfig>>(&ours, &envelope).is_some());
        let mut stranger = envelope.clone();
        stranger.cluster_id = "another".into();
        assert!(opens::<AppendEntriesRequest<TypeConfig>>(&ours, &stranger).is_none());
    }

    /// Writes the seeds to `fuzz/seeds/<target>/`:
    /// `cargo test --lib fuzzing::tests::write_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/seeds/; run by hand when a format changes"]
    fn write_seeds() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        for (name, _, seeds) in seeds() {
            let dir = root.join(name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).expect("clear the old seeds");
            }
            std::fs::create_dir_all(&dir).expect("seed dir");
            for (i, seed) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write seed");
            }
        }
    }
}
