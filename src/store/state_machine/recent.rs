//! Where the outcome of each node-made request id still remembered is
//! filed, indexed in memory.
//!
//! Most writes carry an id their node made (clients send none), which
//! lives only as long as that node may retry the write: seconds. Filing
//! each in a `d` record of its own cost every such write two sled writes,
//! the record and, seconds later, its removal. Instead an entry files its
//! node-made ids with their outcomes in one `o` record, removed whole once
//! they are forgotten, and this index says which record holds an id.
//!
//! The index is rebuilt from the tree whenever the tree changes under it
//! (opening, installing a snapshot), and follows every entry's writes
//! after they are made, so it says exactly what the tree says: every
//! replica dedups the same way. It never holds an outcome (a put's
//! previous value may be a megabyte), only where one is.

use std::collections::HashMap;

use serde_bytes::ByteBuf;

use super::read::{read_value, Lookup, ReadError};
use crate::store::keys::{dedup_key, EXPIRY, OUTCOMES};
use crate::types::{node_id_lifetime_ms, Outcome, RequestId};

/// Where a node-made id's outcome is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Filed {
    /// In the `o` record with this key.
    WithItsEntry([u8; 17]),
    /// In a `d` record of its own, as versions before `o` records filed
    /// every id (listed in an `e` record until forgotten).
    Alone,
}

/// The `o` record of one entry: its node-made ids and their outcomes.
pub(super) type EntryOutcomes = Vec<(ByteBuf, Outcome)>;

/// The outcome of a client's id, in its `d` record.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Remembered {
    pub outcome: Outcome,
}

/// What one entry changed about the index: records it filed (key and the
/// ids in it) and ids it forgot.
#[derive(Debug, Default)]
pub(super) struct IndexChanges {
    pub filed: Vec<([u8; 17], Vec<RequestId>)>,
    pub forgotten: Vec<RequestId>,
}

/// A node-made id lives for four proposal timeouts (20 s by default), so
/// under a steady 10,000 writes per second this holds 200,000 ids, at
/// about 80 bytes each (the id, where its record is, the table's slack).
#[derive(Debug, Default)]
pub(super) struct RecentIds {
    filed: HashMap<Box<[u8]>, Filed>,
}

impl RecentIds {
    /// Indexes the node-made ids `tree` remembers.
    pub(super) fn load(tree: &sled::Tree) -> Result<RecentIds, ReadError> {
        let mut filed = HashMap::new();
        for item in tree.scan_prefix([OUTCOMES]) {
            let (key, record) = item?;
            let key = key
                .as_ref()
                .try_into()
                .map_err(|_| ReadError::MalformedKey {
                    kind: "outcomes",
                    len: key.len(),
                })?;
            let outcomes: EntryOutcomes = postcard::from_bytes(&record)?;
            for (id, _) in outcomes {
                filed.insert(id.into_vec().into(), Filed::WithItsEntry(key));
            }
        }
        for item in tree.scan_prefix([EXPIRY]) {
            let (_, ids) = item?;
            let ids: Vec<RequestId> = postcard::from_bytes(&ids)?;
            for id in ids.into_iter().filter(|id| made_by_a_node(id)) {
                filed.insert(id.into(), Filed::Alone);
            }
        }
        Ok(RecentIds { filed })
    }

    /// The outcome remembered for the node-made `id`, read through `tree`.
    pub(super) fn outcome(
        &self,
        tree: &impl Lookup,
        id: &[u8],
    ) -> Result<Option<Outcome>, ReadError> {
        match self.filed.get(id) {
            None => Ok(None),
            Some(Filed::Alone) => {
                let remembered = read_value::<Remembered>(tree, &dedup_key(id))?;
                Ok(remembered.map(|r| r.outcome))
            }
            Some(Filed::WithItsEntry(key)) => {
                let outcomes = read_value::<EntryOutcomes>(tree, key)?.unwrap_or_default();
                Ok(outcomes
                    .into_iter()
                    .find(|(filed, _)| filed.as_slice() == id)
                    .map(|(_, outcome)| outcome))
            }
        }
    }

    /// Follows an entry's writes, once they are made.
    pub(super) fn update(&mut self, changes: IndexChanges) {
        for id in changes.forgotten {
            self.filed.remove(id.as_slice());
        }
        for (key, ids) in changes.filed {
            for id in ids {
                self.filed.insert(id.into(), Filed::WithItsEntry(key));
            }
        }
    }
}

pub(super) fn made_by_a_node(id: &[u8]) -> bool {
    node_id_lifetime_ms(id).is_some()
}
