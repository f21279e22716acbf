//! The generated protobuf and gRPC code for `proto/raftset/v1`, and every
//! conversion between its messages and the domain model ([`crate::types`]),
//! each written once.
//!
//! Nothing here decides anything: a conversion that can fail (an enum
//! value this version does not know) returns the request error that names
//! the field, and the caller passes it on.

#![allow(clippy::all)]

tonic::include_proto!("raftset.v1");

use openraft::ServerState;

use crate::error::InvalidRequest;
use crate::types;

/// The client services' descriptors, for gRPC server reflection.
pub const CLIENT_DESCRIPTOR: &[u8] =
    tonic::include_file_descriptor_set!("raftset_client_descriptor");

impl From<types::KeyValue> for KeyValue {
    fn from(kv: types::KeyValue) -> KeyValue {
        KeyValue {
            key: kv.key.into(),
            value: kv.value.into(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
        }
    }
}

impl From<KeyValue> for types::KeyValue {
    fn from(kv: KeyValue) -> types::KeyValue {
        types::KeyValue {
            key: kv.key.to_vec(),
            value: kv.value.to_vec(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
        }
    }
}

impl From<types::Consistency> for Consistency {
    fn from(consistency: types::Consistency) -> Consistency {
        match consistency {
            types::Consistency::Linearizable => Consistency::Linearizable,
            types::Consistency::Serializable => Consistency::Serializable,
        }
    }
}

/// A request's `consistency` field; a value this version does not know is
/// refused, not guessed.
pub fn consistency(value: i32) -> Result<types::Consistency, InvalidRequest> {
    match Consistency::try_from(value) {
        Ok(Consistency::Linearizable) => Ok(types::Consistency::Linearizable),
        Ok(Consistency::Serializable) => Ok(types::Consistency::Serializable),
        Err(_) => Err(InvalidRequest::UnknownEnum {
            field: "consistency",
            value,
        }),
    }
}

/// The write a `Put` asks for.
pub fn put_op(request: &PutRequest) -> types::Op {
    let (key, value) = (request.key.to_vec(), request.value.to_vec());
    if request.prev_kv {
        types::Op::PutReturningPrev { key, value }
    } else {
        types::Op::Put { key, value }
    }
}

/// The write a `Delete` asks for.
pub fn delete_op(request: &DeleteRequest) -> types::Op {
    types::Op::Delete {
        key: request.key.to_vec(),
    }
}

/// The write an `Increment` asks for.
pub fn increment_op(request: &IncrementRequest) -> types::Op {
    types::Op::Increment {
        key: request.key.to_vec(),
        delta: request.delta,
    }
}

/// The write a `CompareAndSwap` asks for: each of its two `oneof`s must
/// say something (`expect_absent` and `delete` only when true).
pub fn compare_and_swap_op(request: &CompareAndSwapRequest) -> Result<types::Op, InvalidRequest> {
    use compare_and_swap_request::{Expected, New};
    let expected = match &request.expected {
        Some(Expected::ExpectedValue(value)) => Some(value.to_vec()),
        Some(Expected::ExpectAbsent(true)) => None,
        Some(Expected::ExpectAbsent(false)) | None => {
            return Err(InvalidRequest::Missing {
                field: "expected_value or expect_absent",
            })
        }
    };
    let new = match &request.new {
        Some(New::NewValue(value)) => Some(value.to_vec()),
        Some(New::Delete(true)) => None,
        Some(New::Delete(false)) | None => {
            return Err(InvalidRequest::Missing {
                field: "new_value or delete",
            })
        }
    };
    Ok(types::Op::CompareAndSwap {
        key: request.key.to_vec(),
        expected,
        new,
    })
}

/// A Scan's `end`: empty means none (to the end of the prefix).
pub fn scan_end(request: &ScanRequest) -> Option<Vec<u8>> {
    (!request.end.is_empty()).then(|| request.end.to_vec())
}

/// A membership entry as the Admin service shows it.
pub fn member(id: types::NodeId, member: &types::Member, voter: bool) -> Member {
    Member {
        id,
        name: member.name.clone(),
        peer_addr: member.peer_addr.clone(),
        api_addr: member.api_addr.clone(),
        http_addr: member.http_addr.clone(),
        voter,
    }
}

/// The member a `Join` names.
pub fn member_of_join(request: &JoinRequest) -> types::Member {
    types::Member {
        name: request.name.clone(),
        peer_addr: request.peer_addr.clone(),
        api_addr: request.api_addr.clone(),
        http_addr: request.http_addr.clone(),
    }
}

/// The member an `AddLearner` names.
pub fn member_of_learner(request: AddLearnerRequest) -> types::Member {
    types::Member {
        name: request.name,
        peer_addr: request.peer_addr,
        api_addr: request.api_addr,
        http_addr: request.http_addr,
    }
}

/// What a node is doing in Raft, as `status` reports it.
pub fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => ROLE_LEADER,
        ServerState::Follower => ROLE_FOLLOWER,
        ServerState::Candidate => "candidate",
        ServerState::Learner => ROLE_LEARNER,
        ServerState::Shutdown => "shutdown",
    }
}

/// A member's place in the membership, as every face shows it.
pub fn member_role(leader: bool, voter: bool) -> &'static str {
    match (leader, voter) {
        (true, _) => ROLE_LEADER,
        (false, true) => ROLE_FOLLOWER,
        (false, false) => ROLE_LEARNER,
    }
}

const ROLE_LEADER: &str = "leader";
const ROLE_FOLLOWER: &str = "follower";
const ROLE_LEARNER: &str = "learner";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_survive_the_round_trip() {
        let kv = types::KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 3,
        };
        assert_eq!(types::KeyValue::from(KeyValue::from(kv.clone())), kv);
    }

    #[test]
    fn unknown_consistency_values_are_refused() {
        assert_eq!(consistency(0), Ok(types::Consistency::Linearizable));
        assert_eq!(consistency(1), Ok(types::Consistency::Serializable));
        assert_eq!(
            consistency(7),
            Err(InvalidRequest::UnknownEnum {
                field: "consistency",
                value: 7
            })
        );
    }

    #[test]
    fn a_compare_and_swap_must_say_what_it_expects_and_what_it_writes() {
        use compare_and_swap_request::{Expected, New};
        let request = |expected, new| CompareAndSwapRequest {
            key: b"k".to_vec().into(),
            expected,
            new,
            request_id: Default::default(),
        };
        let cas = |expected: Option<&[u8]>, new: Option<&[u8]>| {
            Ok(types::Op::CompareAndSwap {
                key: b"k".to_vec(),
                expected: expected.map(<[u8]>::to_vec),
                new: new.map(<[u8]>::to_vec),
            })
        };
        let value = |v: &[u8]| v.to_vec().into();
        let missing_expected = Err(InvalidRequest::Missing {
            field: "expected_value or expect_absent",
        });
        let missing_new = Err(InvalidRequest::Missing {
            field: "new_value or delete",
        });
        let table = [
            (
                Some(Expected::ExpectedValue(value(b"a"))),
                Some(New::NewValue(value(b"b"))),
                cas(Some(b"a"), Some(b"b")),
            ),
            (
                Some(Expected::ExpectAbsent(true)),
                Some(New::Delete(true)),
                cas(None, None),
            ),
            (
                Some(Expected::ExpectAbsent(false)),
                Some(New::Delete(true)),
                missing_expected.clone(),
            ),
            (None, Some(New::Delete(true)), missing_expected),
            (
                Some(Expected::ExpectAbsent(true)),
                Some(New::Delete(false)),
                missing_new.clone(),
            ),
            (Some(Expected::ExpectAbsent(true)), None, missing_new),
        ];
        for (expected, new, want) in table {
            assert_eq!(compare_and_swap_op(&request(expected, new)), want);
        }
    }

    #[test]
    fn roles_agree_with_raft_states() {
        assert_eq!(member_role(true, true), state_name(ServerState::Leader));
        assert_eq!(member_role(false, true), state_name(ServerState::Follower));
        assert_eq!(member_role(false, false), state_name(ServerState::Learner));
    }
}
