//! Reads of the applied state: Get, Scan and Watch's history replay. A
//! [`KvReader`] follows the state machine across snapshot installs, and
//! never writes. Each read runs inside one [`KvReader::view`], so it sees
//! the state after one applied entry (see the state machine's design note).

use std::borrow::Cow;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::feed::Change;
use crate::error::Error;
use crate::store::keys::{
    history_key, key_key, prefix_successor, prior_key, COMPACTED, HISTORY, KEY, REVISION,
};
use crate::types::KeyValue;

/// A key's record: written from a borrowed value when an entry applies,
/// read back into an owned one.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StoredValue<'a> {
    #[serde(with = "serde_bytes", borrow)]
    pub value: Cow<'a, [u8]>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

/// A change as an entry's history record holds it (format 4): without its
/// value, which is the key's record's while the change is the key's latest
/// and a `p` record's after a later change replaced it (see
/// `apply::EntryWrites::keep_prior`). While the history held the values
/// too, sled's rewrites of the leaves at the history's end wrote each one
/// several times over: without them a put writes 12% fewer bytes
/// (`bench/FINDINGS.md`). Written from borrowed keys (`K` = `&Bytes`),
/// read back into owned ones.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StoredChange<K> {
    pub revision: u64,
    pub key: K,
    pub create_revision: u64,
    pub version: u64,
    pub deleted: bool,
}

impl StoredChange<serde_bytes::ByteBuf> {
    /// The change with its value, from the view it was read in.
    fn with_value(self, view: &impl Lookup) -> Result<Change, ReadError> {
        let value = if self.deleted {
            Vec::new()
        } else if let Some(prior) = view.lookup(&prior_key(self.revision, &self.key))? {
            prior.to_vec()
        } else {
            match read_kv(view, &self.key)? {
                Some(latest) if latest.mod_revision == self.revision => latest.value,
                _ => {
                    return Err(ReadError::HistoryValueMissing {
                        revision: self.revision,
                    })
                }
            }
        };
        Ok(Change {
            revision: self.revision,
            kv: KeyValue {
                key: self.key.into_vec(),
                value,
                create_revision: self.create_revision,
                mod_revision: self.revision,
                version: self.version,
            },
            deleted: self.deleted,
        })
    }
}

/// Read access for Get, Scan and Watch. Follows the state machine across
/// snapshot installs.
#[derive(Clone)]
pub struct KvReader {
    /// The current state tree; readers share its lock for a whole read,
    /// applying takes it alone for each entry's writes.
    pub(super) current: Arc<RwLock<sled::Tree>>,
}

/// A key range for Scan: `[start, end)` intersected with `prefix`.
#[derive(Debug, Clone, Default)]
pub struct ScanRange {
    pub prefix: Vec<u8>,
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

/// One page of a scan.
#[derive(Debug)]
pub struct ScanPage {
    pub kvs: Vec<KeyValue>,
    /// The first key of the next page, when there is one.
    pub next_key: Option<Vec<u8>>,
    /// The revision the scan is at.
    pub revision: u64,
}

impl KvReader {
    /// The state after one applied entry, until the view is dropped: no
    /// entry's writes land while it is held, so hold it for one bounded
    /// read only (applying waits).
    fn view(&self) -> RwLockReadGuard<'_, sled::Tree> {
        self.current.read().expect("state machine lock")
    }

    /// A key's value, and the revision of the last applied change (the
    /// revision the read is at), both from the same view: the key's
    /// `mod_revision` is never above that revision.
    pub fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, u64), ReadError> {
        let view = self.view();
        Ok((read_kv(&*view, key)?, read_revision(&view)?))
    }

    /// One page of keys in `range`: at most `limit` keys, and no more once
    /// `max_bytes` of keys and values are collected, and the revision they
    /// are at, all from one view: a page holds all of an entry's writes in
    /// its range or none of them.
    pub fn scan(
        &self,
        range: &ScanRange,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ScanPage, ReadError> {
        let mut lower = vec![KEY];
        lower.extend_from_slice(std::cmp::max(&range.start, &range.prefix));
        let prefix_end = prefix_successor(&[&[KEY][..], &range.prefix].concat());
        let upper = match &range.end {
            Some(end) => std::cmp::min([&[KEY][..], end].concat(), prefix_end),
            None => prefix_end,
        };
        let view = self.view();
        let mut kvs = Vec::new();
        let mut next_key = None;
        let mut bytes_so_far = 0;
        if lower < upper {
            for item in view.range(lower..upper) {
                let (raw_key, bytes) = item?;
                if kvs.len() == limit || bytes_so_far >= max_bytes {
                    next_key = Some(raw_key[1..].to_vec());
                    break;
                }
                bytes_so_far += raw_key.len() + bytes.len();
                kvs.push(decode_kv(&raw_key[1..], &bytes)?);
            }
        }
        Ok(ScanPage {
            kvs,
            next_key,
            revision: read_revision(&view)?,
        })
    }

    /// Changes under `prefix` from revision `from` on, oldest first: whole
    /// entries' changes until they hold `max_bytes` of keys and values (at
    /// least one entry's), and where the next page starts, if the history
    /// goes on. All from one view: no compaction can run between the check
    /// and the records it vouches for. A Watch replays page by page, so
    /// what it holds at once is one page, whatever the history holds.
    pub fn history_page(
        &self,
        prefix: &[u8],
        from: u64,
        max_bytes: usize,
    ) -> Result<HistoryPage, ReadError> {
        let view = self.view();
        let compacted: u64 = read_value(&*view, COMPACTED)?.unwrap_or(0);
        if from <= compacted {
            return Err(ReadError::Compacted {
                requested: from,
                oldest: compacted + 1,
            });
        }
        let mut changes = Vec::new();
        let mut bytes_so_far = 0;
        let mut resume = from;
        // Records are keyed by their entry's last revision: the first one
        // at or after `from` holds `from`, if it exists.
        for item in view.range(history_key(from).as_slice()..[HISTORY + 1].as_slice()) {
            if bytes_so_far >= max_bytes {
                return Ok(HistoryPage {
                    changes,
                    next: Some(resume),
                });
            }
            let (key, bytes) = item?;
            let mut replay = |change: Change| {
                bytes_so_far += change.kv.key.len() + change.kv.value.len();
                changes.push(change);
            };
            if key.len() == history_key(0).len() {
                // A record of format 3, with the values.
                let entry: Vec<Change> = postcard::from_bytes(&bytes)?;
                resume = entry.last().map_or(resume, |c| c.revision + 1);
                let wanted = |c: &Change| c.revision >= from && c.kv.key.starts_with(prefix);
                entry.into_iter().filter(wanted).for_each(replay);
            } else {
                let entry: Vec<StoredChange<serde_bytes::ByteBuf>> = postcard::from_bytes(&bytes)?;
                resume = entry.last().map_or(resume, |c| c.revision + 1);
                for change in entry {
                    if change.revision >= from && change.key.starts_with(prefix) {
                        replay(change.with_value(&*view)?);
                    }
                }
            }
        }
        Ok(HistoryPage {
            changes,
            next: None,
        })
    }
}

/// One page of [`KvReader::history_page`].
#[derive(Debug)]
pub struct HistoryPage {
    pub changes: Vec<Change>,
    /// Where the next page starts; none when this one reached the end.
    pub next: Option<u64>,
}

/// Point reads, from the tree or through an entry's pending writes.
pub(super) trait Lookup {
    fn lookup(&self, key: &[u8]) -> sled::Result<Option<sled::IVec>>;
}

impl Lookup for sled::Tree {
    fn lookup(&self, key: &[u8]) -> sled::Result<Option<sled::IVec>> {
        self.get(key)
    }
}

pub(super) fn read_kv(tree: &impl Lookup, key: &[u8]) -> Result<Option<KeyValue>, ReadError> {
    match tree.lookup(&key_key(key))? {
        None => Ok(None),
        Some(bytes) => Ok(Some(decode_kv(key, &bytes)?)),
    }
}

pub(super) fn decode_kv(key: &[u8], bytes: &[u8]) -> Result<KeyValue, ReadError> {
    let stored: StoredValue = postcard::from_bytes(bytes)?;
    Ok(KeyValue {
        key: key.to_vec(),
        value: stored.value.into_owned(),
        create_revision: stored.create_revision,
        mod_revision: stored.mod_revision,
        version: stored.version,
    })
}

pub(super) fn read_value<T: DeserializeOwned>(
    tree: &impl Lookup,
    key: &[u8],
) -> Result<Option<T>, ReadError> {
    match tree.lookup(key)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
    }
}

pub(super) fn read_revision(tree: &sled::Tree) -> Result<u64, ReadError> {
    Ok(read_value(tree, REVISION)?.unwrap_or(0))
}

/// A state machine read failed: the tree is unreadable or holds bytes this
/// version cannot decode.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("undecodable record: {0}")]
    Decode(#[from] postcard::Error),
    #[error("revision {requested} has been compacted; the oldest revision available is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    /// A key of the state's layout ([`crate::store::keys`]) that is not
    /// the length its prefix says.
    #[error("malformed {kind} key of {len} bytes")]
    MalformedKey { kind: &'static str, len: usize },
    /// A history record names a change whose value neither its key's
    /// record nor a `p` record holds: the state is damaged.
    #[error("the value of the change at revision {revision} is missing")]
    HistoryValueMissing { revision: u64 },
}

impl From<ReadError> for Error {
    fn from(err: ReadError) -> Error {
        match err {
            ReadError::Compacted { requested, oldest } => Error::Compacted { requested, oldest },
            err => Error::Storage(err.to_string()),
        }
    }
}
