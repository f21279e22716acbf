//! The state machine's key layout and the data format that names it.
//!
//! Everything lives in one sled tree; a key's first byte says what it is:
//! - `k` + key → the value and its revision counters
//! - `h` + last revision of an entry + `0` → the changes that entry made,
//!   in order, without their values (Watch history); a key one byte
//!   shorter, as format 3 wrote it, holds the values too
//! - `p` + revision + key → the value a change set at that revision, once
//!   a later change replaced it while the history still holds the change
//! - `d` + request id → the outcome of that request (deduplication), for
//!   ids of clients
//! - `e` + filing time (ms) + log index → the client request ids that entry
//!   remembered (an entry forgets the records filed before its
//!   `forget_before_ms`)
//! - `o` + filing time (ms) + log index → the node-made request ids of that
//!   entry with their outcomes (see `state_machine::recent`)
//! - `r` → the current revision, `a` → last applied log id, `m` → last
//!   membership, `c` → highest revision compacted out of the history,
//!   `b` → bytes the retained history records take, `x` → the last
//!   entry's redo record, `w` → the redo record of earlier versions (read
//!   once at start-up, then removed), `v` → the data format
//!
//! Snapshot files carry the same records and the same format byte, so
//! both the state machine and [`super::snapshot`] read it from here.

pub const KEY: u8 = b'k';
pub const HISTORY: u8 = b'h';
pub const PRIOR: u8 = b'p';
pub const DEDUP: u8 = b'd';
pub const EXPIRY: u8 = b'e';
pub const OUTCOMES: u8 = b'o';
pub const APPLIED: &[u8] = b"a";
pub const MEMBERSHIP: &[u8] = b"m";
pub const COMPACTED: &[u8] = b"c";
/// Bytes of the history records and `p` records kept (absent in trees from
/// before it was counted: their older records then count for nothing until
/// compacted).
pub const HISTORY_BYTES: &[u8] = b"b";
pub const REVISION: &[u8] = b"r";
/// The last entry's redo record: its log index and its writes (format 3
/// left out the values and named its history record, whose changes gave
/// them). Replayed at start-up (see `EntryWrites::write`).
pub const REDO: &[u8] = b"x";
/// The redo record of versions before the `x` record: the last entry's
/// whole write set, values included. Replayed at start-up and removed, so
/// a stale one is never replayed after later entries.
pub const WHOLE_REDO: &[u8] = b"w";
/// Whether `key` is a redo record, of either kind: never part of a
/// snapshot or a restored backup, which carry no half-written entry.
pub fn is_redo(key: &[u8]) -> bool {
    key == REDO || key == WHOLE_REDO
}
/// The data format of the tree's records, [`DATA_FORMAT`].
pub const FORMAT: &[u8] = b"v";
/// Which layout of records this version writes. Snapshot files carry it
/// too. 2: history and expiry records per entry; 3: the outcomes of
/// node-made request ids per entry (`o`), where format 2 filed each in a
/// `d` record of its own; 4: history records without values, and `p`
/// records.
pub const DATA_FORMAT: u8 = 4;
/// The oldest format this version reads: format 2 is format 3 without `o`
/// records, and format 3 is format 4 with the values in the history
/// records, which this version reads too; so state in either is read as it
/// is and marked format 4, and a version that reads only older formats
/// refuses it from then on.
pub const OLDEST_READABLE_FORMAT: u8 = 2;

/// Whether this version reads state or a snapshot in `format`.
pub fn readable_format(format: u8) -> bool {
    (OLDEST_READABLE_FORMAT..=DATA_FORMAT).contains(&format)
}

/// The tree that names the current state machine tree (switched when a
/// snapshot is installed).
pub const POINTER_TREE: &str = "sm_current";
pub const POINTER_KEY: &[u8] = b"tree";
/// The state machine tree of a data directory that never installed a snapshot.
pub const FIRST_TREE: &[u8] = b"sm";

/// Keys of the `raft` tree that are not openraft's.
pub const NODE_ID_KEY: &[u8] = b"node_id";
pub const CLUSTER_ID_KEY: &[u8] = b"cluster_id";
/// Set by a restore; cleared once the new cluster made the data its snapshot.
pub const RESTORED_KEY: &[u8] = b"restored";
/// The cluster this data belonged to before a forced re-founding
/// (`raftset force-new-cluster`), so the founding record naming it may be
/// rewritten for the new one.
pub const REFOUNDED_FROM_KEY: &[u8] = b"refounded_from";

pub fn key_key(key: &[u8]) -> Vec<u8> {
    [&[KEY][..], key].concat()
}

pub fn dedup_key(request_id: &[u8]) -> Vec<u8> {
    [&[DEDUP][..], request_id].concat()
}

pub fn history_key(revision: u64) -> [u8; 9] {
    let mut key = [HISTORY; 9];
    key[1..].copy_from_slice(&revision.to_be_bytes());
    key
}

/// The key of an entry's history record as this version writes it (format
/// 4): one byte longer than the [`history_key`] of a record that holds the
/// values, so the length tells them apart and both sort by revision.
pub fn history_key_without_values(revision: u64) -> [u8; 10] {
    let mut key = [0; 10];
    key[..9].copy_from_slice(&history_key(revision));
    key
}

/// The key of the `p` record of the change at `revision` to `key`.
pub fn prior_key(revision: u64, key: &[u8]) -> Vec<u8> {
    [&[PRIOR][..], &revision.to_be_bytes(), key].concat()
}

/// The revision a [`history_key`] (of either length) names; `None` for a
/// key too short.
pub fn history_revision(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

/// The key of the `o` record of the entry at `log_index`, filed under `at_ms`.
pub fn outcomes_key(at_ms: u64, log_index: u64) -> [u8; 17] {
    let mut key = [OUTCOMES; 17];
    key[1..9].copy_from_slice(&at_ms.to_be_bytes());
    key[9..].copy_from_slice(&log_index.to_be_bytes());
    key
}

/// The key of an `e` or `o` record (`prefix`), filed under `at_ms`;
/// `suffix` is a log index, or nothing for the end of a range.
pub fn timed_key(prefix: u8, at_ms: u64, suffix: &[u8]) -> Vec<u8> {
    [&[prefix][..], &at_ms.to_be_bytes(), suffix].concat()
}

/// The smallest key greater than every key that starts with `prefix`.
pub fn prefix_successor(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}
