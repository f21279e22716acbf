//! Request limits, checked before anything is proposed: a committed entry
//! must always apply, so nothing that breaks a limit may enter the log.

use crate::error::InvalidRequest;
use crate::limits::{MAX_KEY_LEN, MAX_REQUEST_ID_LEN, MAX_SCAN_LIMIT, MAX_VALUE_LEN};
use crate::types::{Command, Op, NODE_ID_MARK};

pub fn key(field: &'static str, key: &[u8]) -> Result<(), InvalidRequest> {
    if key.is_empty() {
        return Err(InvalidRequest::Empty { field });
    }
    bounded(field, key, MAX_KEY_LEN)
}

/// A prefix or range bound: may be empty, never longer than a key.
pub fn key_bound(field: &'static str, bound: &[u8]) -> Result<(), InvalidRequest> {
    bounded(field, bound, MAX_KEY_LEN)
}

pub fn value(value: &[u8]) -> Result<(), InvalidRequest> {
    bounded("value", value, MAX_VALUE_LEN)
}

fn bounded(field: &'static str, bytes: &[u8], max: usize) -> Result<(), InvalidRequest> {
    if bytes.len() > max {
        return Err(InvalidRequest::TooLarge {
            field,
            len: bytes.len(),
            max,
        });
    }
    Ok(())
}

/// An empty id means "none": the node assigns one.
pub fn request_id(id: &[u8]) -> Result<Option<Vec<u8>>, InvalidRequest> {
    match id.len() {
        0 => Ok(None),
        len if len > MAX_REQUEST_ID_LEN => Err(InvalidRequest::RequestId { len }),
        _ if id.starts_with(NODE_ID_MARK) => Err(InvalidRequest::ReservedRequestId),
        _ => Ok(Some(id.to_vec())),
    }
}

pub fn scan_limit(limit: u32) -> Result<u32, InvalidRequest> {
    match limit {
        0 => Ok(crate::limits::DEFAULT_SCAN_LIMIT),
        limit if limit > MAX_SCAN_LIMIT => Err(InvalidRequest::ScanLimit {
            limit,
            max: MAX_SCAN_LIMIT,
        }),
        limit => Ok(limit),
    }
}

/// A Scan's range (`end`: `None` when the request sets none) and page
/// size; gives the page size to use.
pub fn scan(
    prefix: &[u8],
    start: &[u8],
    end: Option<&[u8]>,
    limit: u32,
) -> Result<u32, InvalidRequest> {
    key_bound("prefix", prefix)?;
    key_bound("start", start)?;
    if let Some(end) = end {
        key_bound("end", end)?;
    }
    scan_limit(limit)
}

/// A command as it will enter the log: its op, and a request id of 1 to
/// [`MAX_REQUEST_ID_LEN`] bytes.
pub fn command(command: &Command) -> Result<(), InvalidRequest> {
    let len = command.request_id.len();
    if len == 0 || len > MAX_REQUEST_ID_LEN {
        return Err(InvalidRequest::RequestId { len });
    }
    op(&command.op)
}

pub fn op(op: &Op) -> Result<(), InvalidRequest> {
    match op {
        Op::Put { key: k, value: v } | Op::PutReturningPrev { key: k, value: v } => {
            key("key", k)?;
            value(v)
        }
        Op::Delete { key: k } | Op::Increment { key: k, .. } => key("key", k),
        Op::Checkpoint => Ok(()),
        Op::CompareAndSwap {
            key: k,
            expected,
            new,
        } => {
            key("key", k)?;
            if let Some(expected) = expected {
                bounded("expected_value", expected, MAX_VALUE_LEN)?;
            }
            if let Some(new) = new {
                value(new)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_non_empty_and_at_most_4_kib() {
        assert_eq!(key("key", b""), Err(InvalidRequest::Empty { field: "key" }));
        assert_eq!(key("key", &[b'a'; MAX_KEY_LEN]), Ok(()));
        assert_eq!(
            key("key", &[b'a'; MAX_KEY_LEN + 1]),
            Err(InvalidRequest::TooLarge {
                field: "key",
                len: MAX_KEY_LEN + 1,
                max: MAX_KEY_LEN
            })
        );
    }

    #[test]
    fn values_may_be_empty_and_at_most_1_mib() {
        assert_eq!(value(b""), Ok(()));
        assert_eq!(value(&vec![0; MAX_VALUE_LEN]), Ok(()));
        assert!(matches!(
            value(&vec![0; MAX_VALUE_LEN + 1]),
            Err(InvalidRequest::TooLarge { field: "value", .. })
        ));
    }

    #[test]
    fn request_ids_are_optional_and_bounded() {
        assert_eq!(request_id(b""), Ok(None));
        assert_eq!(request_id(b"abc"), Ok(Some(b"abc".to_vec())));
        let made_by_a_node = crate::types::node_request_id(std::time::Duration::from_secs(1));
        assert_eq!(
            request_id(&made_by_a_node),
            Err(InvalidRequest::ReservedRequestId)
        );
        assert_eq!(
            request_id(&[1; 65]),
            Err(InvalidRequest::RequestId { len: 65 })
        );
    }

    #[test]
    fn scan_limit_zero_means_default_and_the_maximum_is_enforced() {
        assert_eq!(scan_limit(0), Ok(crate::limits::DEFAULT_SCAN_LIMIT));
        assert_eq!(scan_limit(MAX_SCAN_LIMIT), Ok(MAX_SCAN_LIMIT));
        assert_eq!(
            scan_limit(MAX_SCAN_LIMIT + 1),
            Err(InvalidRequest::ScanLimit {
                limit: MAX_SCAN_LIMIT + 1,
                max: MAX_SCAN_LIMIT
            })
        );
    }

    #[test]
    fn every_op_checks_its_key_and_values() {
        let big = vec![0; MAX_VALUE_LEN + 1];
        assert!(op(&Op::Put {
            key: vec![],
            value: vec![]
        })
        .is_err());
        assert!(op(&Op::Put {
            key: b"k".to_vec(),
            value: big.clone()
        })
        .is_err());
        assert!(op(&Op::Delete { key: vec![] }).is_err());
        assert!(op(&Op::Increment {
            key: vec![],
            delta: 1
        })
        .is_err());
        assert!(op(&Op::CompareAndSwap {
            key: b"k".to_vec(),
            expected: Some(big.clone()),
            new: None
        })
        .is_err());
        assert!(op(&Op::CompareAndSwap {
            key: b"k".to_vec(),
            expected: None,
            new: Some(big)
        })
        .is_err());
        assert!(op(&Op::CompareAndSwap {
            key: b"k".to_vec(),
            expected: None,
            new: None
        })
        .is_ok());
    }

    #[test]
    fn a_command_needs_a_request_id_within_the_limit_and_a_valid_op() {
        let delete = |request_id: Vec<u8>, key: &[u8]| Command {
            request_id,
            op: Op::Delete { key: key.to_vec() },
        };
        assert_eq!(command(&delete(vec![1], b"k")), Ok(()));
        assert_eq!(
            command(&delete(vec![], b"k")),
            Err(InvalidRequest::RequestId { len: 0 })
        );
        assert_eq!(
            command(&delete(vec![1; 65], b"k")),
            Err(InvalidRequest::RequestId { len: 65 })
        );
        assert!(command(&delete(vec![1], b"")).is_err());
    }
}
