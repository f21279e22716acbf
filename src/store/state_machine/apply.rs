//! Applying commands: what each [`Op`] does to the keys, as near-pure
//! functions over a [`Lookup`] (the tree, or a map in the tests), collected
//! into one entry's [`EntryWrites`] that reach sled atomically.
//!
//! Applying is total: a lost compare-and-swap or a counter that is not an
//! integer is an [`Outcome`], never an error; only an unreadable tree fails.
//! A command whose request id is remembered changes nothing and returns its
//! first outcome again. History (without the values, which the key
//! records hold, and `p` records once replaced), request-id expiry and the
//! outcomes of node-made ids ([`super::recent`]) are recorded once per entry, and
//! trimmed at the end of each entry by an amount fixed by the entry and the
//! state before it, so every replica forgets the same things.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;
use serde_bytes::{ByteBuf, Bytes};

use super::feed::Change;
use super::read::{
    read_kv, read_revision, read_value, Lookup, ReadError, StoredChange, StoredValue,
};
use super::recent::{made_by_a_node, EntryOutcomes, IndexChanges, RecentIds, Remembered};
use crate::store::keys::{
    dedup_key, history_key, history_key_without_values, history_revision, key_key, outcomes_key,
    prior_key, timed_key, APPLIED, COMPACTED, EXPIRY, HISTORY, HISTORY_BYTES, OUTCOMES, REDO,
    REVISION, WHOLE_REDO,
};
use crate::types::{
    node_id_lifetime_ms, Command, KeyValue, LogId, Op, Outcome, Proposal, RequestId,
};

/// Most history or expiry records (each one entry's worth) one log entry
/// expires: each entry adds at most one of each, so this drains a backlog,
/// and it bounds the work of one entry.
const EXPIRE_PER_ENTRY: usize = 16;

/// Applies one command into the entry's writes: its effect and its
/// remembered outcome, and it adds its change to the entry's history. A
/// command whose request id is remembered (in the tree, as `recent` says
/// for a node-made id, or earlier in this entry) changes nothing.
pub(super) fn execute<L: Lookup>(
    writes: &mut EntryWrites<L>,
    recent: &RecentIds,
    command: &Command,
    revision: &mut u64,
) -> Result<Outcome, ReadError> {
    let id = &command.request_id;
    let by_a_node = made_by_a_node(id);
    let remembered = if by_a_node {
        match writes.made.iter().find(|(made, _)| made == id) {
            Some((_, outcome)) => Some(outcome.clone()),
            None => recent.outcome(writes, id)?,
        }
    } else {
        read_value::<Remembered>(writes, &dedup_key(id))?.map(|r| r.outcome)
    };
    if let Some(outcome) = remembered {
        return Ok(outcome);
    }
    let (current, next) = (*revision, *revision + 1);
    let (outcome, change) = match &command.op {
        Op::Put { key, value } | Op::PutReturningPrev { key, value } => {
            let prev = read_kv(writes, key)?;
            let change = write_kv(writes, key, value, prev.as_ref(), next)?;
            let returning_prev = matches!(command.op, Op::PutReturningPrev { .. });
            (
                Outcome::Put {
                    revision: next,
                    prev: prev.filter(|_| returning_prev),
                },
                Some(change),
            )
        }
        Op::Delete { key } => match read_kv(writes, key)? {
            Some(prev) => {
                let change = delete_kv(writes, &prev, next)?;
                (
                    Outcome::Deleted {
                        revision: next,
                        prev: Some(prev),
                    },
                    Some(change),
                )
            }
            None => (
                Outcome::Deleted {
                    revision: current,
                    prev: None,
                },
                None,
            ),
        },
        Op::CompareAndSwap { key, expected, new } => {
            let found = read_kv(writes, key)?;
            let matches = match (expected, &found) {
                (None, None) => true,
                (Some(expected), Some(found)) => *expected == found.value,
                _ => false,
            };
            match (matches, new, &found) {
                (false, _, _) => (Outcome::CompareFailed { current: found }, None),
                (true, Some(value), _) => {
                    let change = write_kv(writes, key, value, found.as_ref(), next)?;
                    (Outcome::Swapped { revision: next }, Some(change))
                }
                (true, None, Some(prev)) => {
                    let change = delete_kv(writes, prev, next)?;
                    (Outcome::Swapped { revision: next }, Some(change))
                }
                (true, None, None) => (Outcome::Swapped { revision: current }, None),
            }
        }
        Op::Checkpoint => (Outcome::Checkpoint { index: 0 }, None),
        Op::Increment { key, delta } => {
            let prev = read_kv(writes, key)?;
            let counter = match &prev {
                None => Some(0),
                Some(kv) => parse_counter(&kv.value),
            };
            match counter {
                None => {
                    let found = prev.map(|kv| kv.value).unwrap_or_default();
                    (Outcome::NotAnInteger { current: found }, None)
                }
                Some(counter) => match counter.checked_add(*delta) {
                    None => (Outcome::Overflow { current: counter }, None),
                    Some(value) => {
                        let bytes = value.to_string().into_bytes();
                        let change = write_kv(writes, key, &bytes, prev.as_ref(), next)?;
                        (
                            Outcome::Incremented {
                                revision: next,
                                value,
                            },
                            Some(change),
                        )
                    }
                },
            }
        }
    };
    if let Some(change) = change {
        *revision = next;
        writes.history.push(change);
    }
    if by_a_node {
        writes.made.push((id.clone(), outcome.clone()));
    } else {
        writes.insert(
            dedup_key(id),
            encode(&Remembered {
                outcome: outcome.clone(),
            }),
        );
        writes.remembered.push(id.clone());
    }
    Ok(outcome)
}

/// What an entry's commands leave to do once: the revision counter, the
/// entry's history and expiry records, and trimming old ones (the trims
/// scan the tree, which the entry's own writes do not change yet).
/// Returns the entry's changes, for watchers.
pub(super) fn finish_entry(
    writes: &mut EntryWrites<sled::Tree>,
    log_index: u64,
    proposal: &Proposal,
    revision: u64,
    retention: HistoryRetention,
) -> Result<Vec<Change>, ReadError> {
    let tree = writes.base.clone();
    let history = std::mem::take(&mut writes.history);
    if !history.is_empty() {
        writes.insert(REVISION, encode(&revision));
        let record: Vec<StoredChange<&Bytes>> = history.iter().map(stored_change).collect();
        let record = encode(&record);
        let priors = std::mem::take(&mut writes.priors);
        compact_history(
            &tree,
            writes,
            revision,
            retention,
            record.len() as u64,
            priors,
        )?;
        let key = history_key_without_values(revision);
        writes.insert(key, record);
        writes.history_record = Some(key);
    }
    for (at_ms, ids) in by_filing_time(proposal, std::mem::take(&mut writes.remembered), |id| id) {
        writes.insert(
            timed_key(EXPIRY, at_ms, &log_index.to_be_bytes()),
            encode(&ids),
        );
    }
    let made = std::mem::take(&mut writes.made);
    for (at_ms, made) in by_filing_time(proposal, made, |(id, _)| id) {
        let key = outcomes_key(at_ms, log_index);
        // Encoded as an `EntryOutcomes` is, from borrows, so the ids move on.
        let record: Vec<(&Bytes, &Outcome)> = made
            .iter()
            .map(|(id, outcome)| (Bytes::new(id), outcome))
            .collect();
        writes.insert(key, encode(&record));
        let ids = made.into_iter().map(|(id, _)| id).collect();
        writes.index.filed.push((key, ids));
    }
    let forget_before_ms = proposal.forget_before_ms;
    expire(&tree, writes, EXPIRY, forget_before_ms, |writes, ids| {
        let ids: Vec<RequestId> = postcard::from_bytes(ids)?;
        for id in ids {
            writes.remove(dedup_key(&id));
            // Ids a version before `o` records filed alone.
            if made_by_a_node(&id) {
                writes.index.forgotten.push(id);
            }
        }
        Ok(())
    })?;
    expire(
        &tree,
        writes,
        OUTCOMES,
        forget_before_ms,
        |writes, record| {
            let outcomes: EntryOutcomes = postcard::from_bytes(record)?;
            let ids = outcomes.into_iter().map(|(id, _)| id.into_vec());
            writes.index.forgotten.extend(ids);
            Ok(())
        },
    )?;
    Ok(history)
}

/// Groups an entry's ids, or ids with outcomes, by the time each is filed
/// under, in a fixed order.
fn by_filing_time<T>(
    proposal: &Proposal,
    items: Vec<T>,
    id_of: impl Fn(&T) -> &[u8],
) -> BTreeMap<u64, Vec<T>> {
    let mut by_time: BTreeMap<u64, Vec<T>> = BTreeMap::new();
    for item in items {
        by_time
            .entry(forget_at(proposal, id_of(&item)))
            .or_default()
            .push(item);
    }
    by_time
}

/// The time an id's expiry record is filed under: an entry forgets the
/// records filed before its `forget_before_ms`, which trails its own time
/// by the dedup window. A client's id is filed under its entry's time, so
/// it is remembered for the whole window; a node's id under the time that
/// makes it forgotten once its own lifetime has passed (never later than
/// a client's). Both come from the entry alone, so every replica agrees.
fn forget_at(proposal: &Proposal, id: &[u8]) -> u64 {
    match node_id_lifetime_ms(id) {
        Some(lifetime) => proposal
            .forget_before_ms
            .saturating_add(lifetime)
            .min(proposal.proposed_at_ms),
        None => proposal.proposed_at_ms,
    }
}

/// Removes up to [`EXPIRE_PER_ENTRY`] records under `prefix` filed before
/// `forget_before_ms`, after `forget` has seen each one's value.
fn expire(
    tree: &sled::Tree,
    writes: &mut EntryWrites<sled::Tree>,
    prefix: u8,
    forget_before_ms: u64,
    mut forget: impl FnMut(&mut EntryWrites<sled::Tree>, &[u8]) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let end = timed_key(prefix, forget_before_ms, &[]);
    for item in tree
        .range([prefix].as_slice()..end.as_slice())
        .take(EXPIRE_PER_ENTRY)
    {
        let (key, value) = item?;
        forget(writes, &value)?;
        writes.remove(key);
    }
    Ok(())
}

/// How much Watch history is kept: the last `revisions` revisions, and
/// at most `bytes` of history and `p` records (the newest entry's always).
#[derive(Debug, Clone, Copy)]
pub(super) struct HistoryRetention {
    pub revisions: u64,
    pub bytes: u64,
}

/// Drops up to [`EXPIRE_PER_ENTRY`] of the oldest entries' history records,
/// with the `p` records of their changes, while they lie wholly outside the
/// retained revisions or the records take more than the retained bytes
/// (`added` of them this entry's history record, and `priors` its `p`
/// records), writes the entry's `p` records that stay, and records how far.
/// Every replica applies the same entries with the same records, so every
/// replica keeps the same history.
fn compact_history(
    tree: &sled::Tree,
    batch: &mut EntryWrites<sled::Tree>,
    revision: u64,
    retention: HistoryRetention,
    added: u64,
    priors: Vec<Prior>,
) -> Result<(), ReadError> {
    let cutoff = revision.saturating_sub(retention.revisions);
    let prior_bytes: u64 = priors.iter().map(|prior| prior.value.len() as u64).sum();
    let mut retained = read_value::<u64>(tree, HISTORY_BYTES)?
        .unwrap_or(0)
        .saturating_add(added)
        .saturating_add(prior_bytes);
    let mut highest = None;
    let mut priors_from = 0;
    // This entry's own record is not in the tree yet: it is never dropped.
    for item in tree
        .range([HISTORY].as_slice()..history_key(revision).as_slice())
        .take(EXPIRE_PER_ENTRY)
    {
        let (key, record) = item?;
        let last = history_revision(&key).ok_or(ReadError::MalformedKey {
            kind: "history",
            len: key.len(),
        })?;
        if last >= cutoff && retained <= retention.bytes {
            break;
        }
        retained = retained.saturating_sub(record.len() as u64);
        let dropped_priors = prior_key(priors_from, &[])..prior_key(last.saturating_add(1), &[]);
        for item in tree.range(dropped_priors) {
            let (key, value) = item?;
            retained = retained.saturating_sub(value.len() as u64);
            batch.remove(key);
        }
        priors_from = last.saturating_add(1);
        highest = Some(last);
        batch.remove(key);
    }
    for prior in priors {
        if highest.is_some_and(|highest| prior.revision <= highest) {
            retained = retained.saturating_sub(prior.value.len() as u64);
        } else {
            batch.insert(prior_key(prior.revision, &prior.key), prior.value);
        }
    }
    batch.insert(HISTORY_BYTES, encode(&retained));
    if let Some(highest) = highest {
        batch.insert(COMPACTED, encode(&highest));
    }
    Ok(())
}

/// The writes of one log entry, kept here until the entry is done (reads
/// during the entry see them), then written atomically by [`Self::write`].
pub(super) struct EntryWrites<L> {
    /// What the entry reads through to; its writes go there in the end.
    base: L,
    pending: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The entry's changes and remembered request ids, written as one
    /// record each by [`finish_entry`].
    history: Vec<Change>,
    /// The key of the entry's history record, once written into `pending`.
    history_record: Option<[u8; 10]>,
    /// The values the entry's changes replace that the history still
    /// needs, written as `p` records by [`finish_entry`].
    priors: Vec<Prior>,
    /// The highest revision compacted out of the history, once read.
    compacted: Option<u64>,
    remembered: Vec<RequestId>,
    /// The entry's node-made ids and their outcomes, filed in one record.
    made: Vec<(RequestId, Outcome)>,
    /// What the entry changes about the index of node-made ids, for
    /// [`RecentIds::update`] once its writes are made.
    index: IndexChanges,
}

impl<L: Lookup> EntryWrites<L> {
    pub(super) fn new(base: L) -> EntryWrites<L> {
        EntryWrites {
            base,
            pending: Default::default(),
            history: Vec::new(),
            history_record: None,
            priors: Vec::new(),
            compacted: None,
            remembered: Vec::new(),
            made: Vec::new(),
            index: IndexChanges::default(),
        }
    }

    /// What the entry changes about the index of node-made ids.
    pub(super) fn take_index_changes(&mut self) -> IndexChanges {
        std::mem::take(&mut self.index)
    }

    pub(super) fn insert(&mut self, key: impl AsRef<[u8]>, value: Vec<u8>) {
        self.pending.insert(key.as_ref().to_vec(), Some(value));
    }

    fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.pending.insert(key.as_ref().to_vec(), None);
    }

    /// Writes a key's new value, or its removal, as `change` says.
    fn write_change(&mut self, change: &Change) {
        let (key, value) = kv_write(change);
        self.pending.insert(key, value);
    }

    /// Keeps the value a change replaces (`prev`, the key as it was) for
    /// Watch, if the history still holds the change that set it: the
    /// history record names that change without its value.
    fn keep_prior(&mut self, prev: &KeyValue) -> Result<(), ReadError> {
        let compacted = match self.compacted {
            Some(compacted) => compacted,
            None => *self
                .compacted
                .insert(read_value(&self.base, COMPACTED)?.unwrap_or(0)),
        };
        if prev.mod_revision > compacted {
            self.priors.push(Prior {
                revision: prev.mod_revision,
                key: prev.key.clone(),
                value: prev.value.clone(),
            });
        }
        Ok(())
    }
}

/// A value an entry replaced, and the revision that set it: a `p` record.
pub(super) struct Prior {
    revision: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl EntryWrites<sled::Tree> {
    /// The keys the entry writes or removes.
    pub(super) fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.pending.keys().map(Vec::as_slice)
    }

    /// Writes the entry atomically without a sled batch (which costs two
    /// synced writes). sled recovers writes in order, so the entry writes
    /// first its history record, then its redo record, then everything
    /// else. The redo record holds the entry's log index and every other
    /// write; the history record holds no value, so a value goes into sled
    /// twice (its key's record and the redo record), not three times.
    /// After a crash either the redo record is the previous entry's, and of
    /// this entry at most its history record is there (applying the entry
    /// again writes the same one), or `StateMachine::open` replays it
    /// (harmless: the writes set final values). Gives the records written,
    /// for a defrag's fresh tree to get the same writes after.
    pub(super) fn write(self, log_index: u64) -> Result<EntryRecords, sled::Error> {
        let entry = self.into_records(log_index);
        entry.write_to(&entry.base)?;
        Ok(entry)
    }

    fn into_records(mut self, log_index: u64) -> EntryRecords {
        let history = self.history_record.and_then(|key| {
            let record = self.pending.remove(key.as_slice()).flatten()?;
            Some((key, record))
        });
        let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = self.pending.into_iter().collect();
        let redo = redo_record(log_index, &writes);
        EntryRecords {
            base: self.base,
            history,
            redo,
            writes,
        }
    }
}

/// An entry's writes in the order [`EntryWrites::write`] makes them.
pub(super) struct EntryRecords {
    base: sled::Tree,
    history: Option<([u8; 10], Vec<u8>)>,
    redo: Vec<u8>,
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl EntryRecords {
    /// Writes the entry to `tree` in the order that makes it atomic.
    pub(super) fn write_to(&self, tree: &sled::Tree) -> Result<(), sled::Error> {
        self.write_redo(tree)?;
        crate::failpoint::crash_point("apply-mid-entry");
        apply_writes(tree, &self.writes)
    }

    /// Every record the entry writes, with its value, or removes (`None`).
    pub(super) fn records(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        let history = (self.history.iter()).map(|(key, record)| (&key[..], Some(&record[..])));
        let redo = std::iter::once((REDO, Some(self.redo.as_slice())));
        let writes = (self.writes.iter()).map(|(key, value)| (key.as_slice(), value.as_deref()));
        history.chain(redo).chain(writes)
    }

    /// The history record, then the redo record: what a crash right after
    /// leaves for `StateMachine::open` to replay.
    fn write_redo(&self, tree: &sled::Tree) -> Result<(), sled::Error> {
        if let Some((key, record)) = &self.history {
            tree.insert(key, record.as_slice())?;
        }
        tree.insert(REDO, self.redo.as_slice())?;
        Ok(())
    }
}

/// The redo record of the entry at `log_index` (see [`EntryWrites::write`]):
/// `writes`, each a key and its value or `None` for a removal. Each key and
/// value goes in as one byte string, which postcard writes exactly as it
/// writes a `Vec<u8>` (its length, then its bytes) but copied whole.
fn redo_record(log_index: u64, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<u8> {
    let writes: Vec<(&Bytes, Option<&Bytes>)> = writes
        .iter()
        .map(|(key, value)| (Bytes::new(key), value.as_deref().map(Bytes::new)))
        .collect();
    encode(&(log_index, None::<&Bytes>, writes))
}

/// A redo record as [`redo_record`] encodes it. Format 3 left out the
/// writes of key records and named its history record (the middle field),
/// whose changes gave them.
type Redo = (u64, Option<ByteBuf>, Vec<(ByteBuf, Option<ByteBuf>)>);

/// Finishes, at start-up, the last entry written before the node stopped
/// (see [`EntryWrites::write`]), in case a crash cut it short: replays a
/// redo record of an earlier version and removes it, then this version's,
/// and removes a history record beyond the state's revision (an entry cut
/// short before its redo record wrote it; applied again, the entry writes
/// it anew), so Watch never reports a change the state does not hold.
pub(super) fn finish_last_entry(tree: &sled::Tree) -> Result<(), ReplayError> {
    if let Some(whole) = tree.get(WHOLE_REDO)? {
        replay_whole_redo_record(tree, &whole)?;
        tree.remove(WHOLE_REDO)?;
    }
    if let Some(redo) = tree.get(REDO)? {
        let applied = read_value::<Option<LogId>>(tree, APPLIED)?.flatten();
        replay_redo_record(tree, &redo, applied.map(|id| id.index))?;
    }
    let beyond = history_key(read_revision(tree)?.saturating_add(1));
    for item in tree.range(beyond.as_slice()..[HISTORY + 1].as_slice()) {
        tree.remove(item?.0)?;
    }
    Ok(())
}

/// Finishes the entry a redo record was written for, unless the state has
/// applied a later entry: a version before this one writes no such record,
/// so one it left standing is stale.
fn replay_redo_record(
    tree: &sled::Tree,
    record: &[u8],
    applied: Option<u64>,
) -> Result<(), ReplayError> {
    let (log_index, history, writes): Redo = postcard::from_bytes(record)?;
    if applied.is_some_and(|applied| applied > log_index) {
        return Ok(());
    }
    if let Some(key) = history {
        let record = tree.get(&key)?.ok_or(ReplayError::HistoryMissing)?;
        let changes: Vec<Change> = postcard::from_bytes(&record)?;
        let values: Vec<_> = changes.iter().map(kv_write).collect();
        apply_writes(tree, &values)?;
    }
    Ok(apply_writes(tree, &writes)?)
}

/// Finishes the entry a redo record of an earlier version was written for:
/// every write of the entry, values included.
fn replay_whole_redo_record(tree: &sled::Tree, record: &[u8]) -> Result<(), ReplayError> {
    let writes: Vec<(ByteBuf, Option<ByteBuf>)> = postcard::from_bytes(record)?;
    Ok(apply_writes(tree, &writes)?)
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ReplayError {
    #[error("undecodable record while finishing the last entry: {0}")]
    Undecodable(#[from] postcard::Error),
    #[error("the history record the redo record names is missing")]
    HistoryMissing,
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Sled(#[from] sled::Error),
}

/// Writes each key's value, or removes the key (`None`), in order.
pub(super) fn apply_writes<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    tree: &sled::Tree,
    writes: &[(K, Option<V>)],
) -> Result<(), sled::Error> {
    for (key, value) in writes {
        match value {
            Some(value) => tree.insert(key.as_ref(), value.as_ref())?,
            None => tree.remove(key.as_ref())?,
        };
    }
    Ok(())
}

impl<L: Lookup> Lookup for EntryWrites<L> {
    fn lookup(&self, key: &[u8]) -> sled::Result<Option<sled::IVec>> {
        match self.pending.get(key) {
            Some(value) => Ok(value.as_deref().map(sled::IVec::from)),
            None => self.base.lookup(key),
        }
    }
}

fn parse_counter(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn write_kv<L: Lookup>(
    batch: &mut EntryWrites<L>,
    key: &[u8],
    value: &[u8],
    prev: Option<&KeyValue>,
    revision: u64,
) -> Result<Change, ReadError> {
    if let Some(prev) = prev {
        batch.keep_prior(prev)?;
    }
    let change = Change {
        revision,
        kv: KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: prev.map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.map_or(1, |p| p.version + 1),
        },
        deleted: false,
    };
    batch.write_change(&change);
    Ok(change)
}

fn delete_kv<L: Lookup>(
    batch: &mut EntryWrites<L>,
    prev: &KeyValue,
    revision: u64,
) -> Result<Change, ReadError> {
    batch.keep_prior(prev)?;
    let change = Change {
        revision,
        kv: KeyValue {
            key: prev.key.clone(),
            value: Vec::new(),
            create_revision: prev.create_revision,
            mod_revision: revision,
            version: prev.version,
        },
        deleted: true,
    };
    batch.write_change(&change);
    Ok(change)
}

/// `change` as the entry's history record holds it, without its value.
fn stored_change(change: &Change) -> StoredChange<&Bytes> {
    StoredChange {
        revision: change.revision,
        key: Bytes::new(&change.kv.key),
        create_revision: change.kv.create_revision,
        version: change.kv.version,
        deleted: change.deleted,
    }
}

/// The write `change` makes to its key's record: the one place a change
/// becomes a write, both when it is applied and when the history record a
/// format 3 redo record names is replayed, so the two cannot differ.
fn kv_write(change: &Change) -> (Vec<u8>, Option<Vec<u8>>) {
    let kv = &change.kv;
    let record = (!change.deleted).then(|| {
        encode(&StoredValue {
            value: Cow::Borrowed(&kv.value),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
        })
    });
    (key_key(&kv.key), record)
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encoding an in-memory record with postcard cannot fail")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::keys::{KEY, PRIOR};

    /// A state before the command, as a plain map: applying needs nothing
    /// of sled but point reads.
    struct Map(BTreeMap<Vec<u8>, Vec<u8>>);

    impl Lookup for Map {
        fn lookup(&self, key: &[u8]) -> sled::Result<Option<sled::IVec>> {
            Ok(self.0.get(key).map(|v| sled::IVec::from(v.as_slice())))
        }
    }

    fn state(keys: &[(&str, &str)]) -> Map {
        let mut writes = EntryWrites::new(Map(BTreeMap::new()));
        for (i, (key, value)) in keys.iter().enumerate() {
            write_kv(
                &mut writes,
                key.as_bytes(),
                value.as_bytes(),
                None,
                i as u64 + 1,
            )
            .unwrap();
        }
        Map(writes
            .pending
            .into_iter()
            .map(|(k, v)| (k, v.unwrap()))
            .collect())
    }

    fn run(before: Map, op: Op) -> (Outcome, u64, EntryWrites<Map>) {
        let mut writes = EntryWrites::new(before);
        let mut revision = 5;
        let command = Command {
            request_id: b"r1".to_vec(),
            op,
        };
        let outcome = execute(&mut writes, &RecentIds::default(), &command, &mut revision).unwrap();
        (outcome, revision, writes)
    }

    fn value_of(writes: &EntryWrites<Map>, key: &str) -> Option<Vec<u8>> {
        read_kv(writes, key.as_bytes()).unwrap().map(|kv| kv.value)
    }

    #[test]
    fn a_put_returns_and_remembers_the_value_it_replaced_only_when_asked() {
        let old = "x".repeat(1000);
        let (key, value) = (b"k".to_vec(), b"v".to_vec());
        let puts = [
            (Op::Put { key, value }, false),
            (
                Op::PutReturningPrev {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                },
                true,
            ),
        ];
        for (put, asked) in puts {
            let (outcome, revision, writes) = run(state(&[("k", &old)]), put);
            let Outcome::Put { prev, .. } = &outcome else {
                panic!("{outcome:?}");
            };
            let prev = prev.as_ref().map(|kv| kv.value.as_slice());
            assert_eq!(prev, asked.then_some(old.as_bytes()), "{outcome:?}");
            assert_eq!(revision, 6, "the put applied either way");
            assert_eq!(value_of(&writes, "k"), Some(b"v".to_vec()));
            let remembered = writes.pending[&dedup_key(b"r1")].as_ref().unwrap();
            assert_eq!(
                remembered.len() > old.len(),
                asked,
                "the remembered outcome holds the old value only when asked: {outcome:?}"
            );
        }
    }

    #[test]
    fn every_op_gives_its_outcome_and_only_changes_take_a_revision() {
        let bytes = |s: &str| s.as_bytes().to_vec();
        let put = |k: &str, v: &str| Op::Put {
            key: bytes(k),
            value: bytes(v),
        };
        let cas = |k: &str, expected: Option<&str>, new: Option<&str>| Op::CompareAndSwap {
            key: bytes(k),
            expected: expected.map(bytes),
            new: new.map(bytes),
        };
        let inc = |k: &str, delta: i64| Op::Increment {
            key: bytes(k),
            delta,
        };
        // (case, state before, op, changes something, value of `k` after)
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Op, bool, Option<&'a str>);
        let cases: Vec<Case> = vec![
            ("put a new key", vec![], put("k", "v"), true, Some("v")),
            (
                "put over a value",
                vec![("k", "a")],
                put("k", "b"),
                true,
                Some("b"),
            ),
            (
                "delete a key",
                vec![("k", "a")],
                Op::Delete { key: bytes("k") },
                true,
                None,
            ),
            (
                "delete nothing",
                vec![],
                Op::Delete { key: bytes("k") },
                false,
                None,
            ),
            (
                "cas that wins",
                vec![("k", "a")],
                cas("k", Some("a"), Some("b")),
                true,
                Some("b"),
            ),
            (
                "cas that loses",
                vec![("k", "a")],
                cas("k", Some("x"), Some("b")),
                false,
                Some("a"),
            ),
            (
                "cas expecting absence",
                vec![],
                cas("k", None, Some("b")),
                true,
                Some("b"),
            ),
            (
                "cas that deletes",
                vec![("k", "a")],
                cas("k", Some("a"), None),
                true,
                None,
            ),
            (
                "increment from nothing",
                vec![],
                inc("k", 3),
                true,
                Some("3"),
            ),
            (
                "increment a counter",
                vec![("k", "40")],
                inc("k", 2),
                true,
                Some("42"),
            ),
            (
                "increment a non-number",
                vec![("k", "x")],
                inc("k", 1),
                false,
                Some("x"),
            ),
            (
                "increment past i64",
                vec![("k", "9223372036854775807")],
                inc("k", 1),
                false,
                Some("9223372036854775807"),
            ),
            (
                "checkpoint",
                vec![("k", "a")],
                Op::Checkpoint,
                false,
                Some("a"),
            ),
        ];
        for (name, before, op, changes, after) in cases {
            let (outcome, revision, writes) = run(state(&before), op);
            assert_eq!(revision, if changes { 6 } else { 5 }, "{name}: {outcome:?}");
            assert_eq!(writes.history.len(), usize::from(changes), "{name}");
            assert_eq!(value_of(&writes, "k"), after.map(bytes), "{name}");
            let refused = matches!(
                outcome,
                Outcome::CompareFailed { .. }
                    | Outcome::NotAnInteger { .. }
                    | Outcome::Overflow { .. }
            );
            assert_eq!(
                refused,
                !changes && !name.starts_with("delete") && name != "checkpoint",
                "{name}: {outcome:?}"
            );
        }
    }

    #[test]
    fn a_remembered_request_id_returns_its_first_outcome_and_changes_nothing() {
        let (first, _, writes) = run(
            state(&[]),
            Op::Increment {
                key: b"k".to_vec(),
                delta: 1,
            },
        );
        let remembered = Map(writes
            .pending
            .into_iter()
            .map(|(k, v)| (k, v.unwrap()))
            .collect());
        let (again, revision, writes) = run(
            remembered,
            Op::Increment {
                key: b"k".to_vec(),
                delta: 1,
            },
        );
        assert_eq!(again, first);
        assert_eq!(revision, 5);
        assert!(writes.history.is_empty());
        assert_eq!(value_of(&writes, "k"), Some(b"1".to_vec()));
    }

    /// A state tree with `records`, as a snapshot install leaves it.
    fn installed(records: &[(&[u8], Vec<u8>)]) -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("state").unwrap();
        for (key, value) in records {
            tree.insert(key, value.as_slice()).unwrap();
        }
        tree
    }

    /// The `snapshot_file` fuzz target's input: a snapshot (valid checksum)
    /// whose history record's key is `h` alone, its revision cut off. The
    /// next entry's history compaction sliced `key[1..9]` and panicked, on
    /// every replica that installed it; now the entry fails with an error.
    #[test]
    fn a_history_key_without_its_revision_fails_the_entry_without_a_panic() {
        let tree = installed(&[(&[HISTORY], b"C".to_vec())]);
        let retention = HistoryRetention {
            revisions: 1,
            bytes: 0,
        };
        let compacted = compact_history(
            &tree,
            &mut EntryWrites::new(tree.clone()),
            5,
            retention,
            10,
            Vec::new(),
        );
        assert!(matches!(
            compacted,
            Err(ReadError::MalformedKey {
                kind: "history",
                len: 1
            })
        ));
    }

    /// Found fixing the above: a history byte count near `u64::MAX` (any
    /// 8 bytes a snapshot carries) overflowed when the entry's record was
    /// added.
    #[test]
    fn a_huge_history_byte_count_does_not_overflow() {
        let tree = installed(&[(HISTORY_BYTES, encode(&u64::MAX))]);
        let retention = HistoryRetention {
            revisions: 1,
            bytes: 0,
        };
        let mut writes = EntryWrites::new(tree.clone());
        compact_history(&tree, &mut writes, 5, retention, 10, Vec::new()).unwrap();
        let retained: u64 = read_value(&writes, HISTORY_BYTES).unwrap().unwrap();
        assert_eq!(retained, u64::MAX);
    }

    /// A redo record left by a node of an earlier version (the whole write
    /// set, each key and value a `Vec<u8>`) is replayed by this one.
    #[test]
    fn a_whole_redo_record_of_an_earlier_version_is_replayed() {
        let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
            (b"k1".to_vec(), Some(vec![0, 1, 255, 128])),
            (b"k2".to_vec(), None),
            (vec![7; 300], Some(vec![9; 1000])),
        ];
        let as_vectors = encode(&writes);
        let tree = installed(&[(b"k2", b"gone".to_vec())]);
        replay_whole_redo_record(&tree, &as_vectors).unwrap();
        assert_eq!(tree.get(b"k1").unwrap().unwrap().as_ref(), [0, 1, 255, 128]);
        assert_eq!(tree.get(b"k2").unwrap(), None);
        assert_eq!(tree.get(vec![7; 300]).unwrap().unwrap().as_ref(), [9; 1000]);
        assert!(matches!(
            replay_whole_redo_record(&tree, &as_vectors[..as_vectors.len() - 1]),
            Err(ReplayError::Undecodable(_))
        ));
    }

    /// Every record of `tree`, by key.
    fn records(tree: &sled::Tree) -> BTreeMap<Vec<u8>, Vec<u8>> {
        tree.iter()
            .map(|item| item.unwrap())
            .map(|(key, value)| (key.to_vec(), value.to_vec()))
            .collect()
    }

    /// One entry of puts (one key twice), an increment, a delete and a
    /// compare-and-swap, over state with history to compact, ready to write.
    fn an_entry(tree: &sled::Tree, log_index: u64) -> EntryRecords {
        let put = |key: &str, value: &str| Op::Put {
            key: key.into(),
            value: value.into(),
        };
        let ops = [
            put("a", "1"),
            put("b", "2"),
            put("a", "3"),
            Op::Increment {
                key: b"n".to_vec(),
                delta: 5,
            },
            Op::Delete {
                key: b"old".to_vec(),
            },
            Op::CompareAndSwap {
                key: b"b".to_vec(),
                expected: Some(b"2".to_vec()),
                new: Some(b"4".to_vec()),
            },
        ];
        let mut writes = EntryWrites::new(tree.clone());
        let mut revision = read_value::<u64>(tree, REVISION).unwrap().unwrap_or(0);
        let proposal = Proposal {
            proposed_at_ms: 1_000_000,
            forget_before_ms: 400_000,
            commands: Vec::new(),
        };
        for (i, op) in ops.into_iter().enumerate() {
            let command = Command {
                request_id: format!("client-{log_index}-{i}").into_bytes(),
                op,
            };
            execute(&mut writes, &RecentIds::default(), &command, &mut revision).unwrap();
        }
        let retention = HistoryRetention {
            revisions: 2,
            bytes: u64::MAX,
        };
        finish_entry(&mut writes, log_index, &proposal, revision, retention).unwrap();
        writes.into_records(log_index)
    }

    /// State two entries in: keys to delete and overwrite, and history.
    fn two_entries_in() -> (sled::Tree, sled::Tree) {
        let (a, b) = (installed(&[]), installed(&[]));
        for tree in [&a, &b] {
            let mut writes = EntryWrites::new(tree.clone());
            write_kv(&mut writes, b"old", b"x", None, 1).unwrap();
            writes.insert(REVISION, encode(&1u64));
            writes.write(1).unwrap();
            let entry = an_entry(tree, 2);
            entry.write_redo(tree).unwrap();
            apply_writes(tree, &entry.writes).unwrap();
        }
        (a, b)
    }

    /// The redo record holds the values, which the history record does not:
    /// a crash right after it leaves the entry to be finished from it.
    /// Replaying it gives every record a whole write gives (the values of a
    /// key written twice, a delete, an increment, replaced values, a
    /// compacted history), and replaying it again changes nothing.
    #[test]
    fn a_crash_after_the_redo_record_is_finished_from_it() {
        let (crashed, whole) = two_entries_in();
        let entry = an_entry(&crashed, 3);
        entry.write_redo(&crashed).unwrap();
        let redo = crashed.get(REDO).unwrap().unwrap();
        let (_, history, redone): Redo = postcard::from_bytes(&redo).unwrap();
        assert_eq!(history, None);
        let written = |prefix: u8| redone.iter().filter(|(key, _)| key[0] == prefix).count();
        assert_eq!(written(KEY), 3, "a, b and n (old went in the entry before)");
        assert!(written(PRIOR) > 0, "the replaced values the history needs");
        let entry = an_entry(&whole, 3);
        entry.write_redo(&whole).unwrap();
        apply_writes(&whole, &entry.writes).unwrap();
        assert_ne!(records(&crashed), records(&whole));

        finish_last_entry(&crashed).unwrap();
        assert_eq!(records(&crashed), records(&whole));
        finish_last_entry(&whole).unwrap();
        assert_eq!(records(&crashed), records(&whole));
        assert_eq!(read_kv(&whole, b"a").unwrap().unwrap().value, b"3");
        assert_eq!(read_kv(&whole, b"b").unwrap().unwrap().value, b"4");
        assert_eq!(read_kv(&whole, b"old").unwrap(), None);
    }

    /// A crash after an entry's history record but before its redo record
    /// leaves a history record beyond the state's revision: it goes, so
    /// Watch never reports a change the state does not hold yet.
    #[test]
    fn a_crash_before_the_redo_record_leaves_no_history_beyond_the_state() {
        let (crashed, before) = two_entries_in();
        let entry = an_entry(&crashed, 3);
        let (key, record) = entry.history.as_ref().unwrap();
        crashed.insert(key, record.as_slice()).unwrap();
        assert_ne!(records(&crashed), records(&before));
        finish_last_entry(&crashed).unwrap();
        assert_eq!(records(&crashed), records(&before));
    }

    /// A redo record older than the applied entry (left standing by this
    /// version before an earlier one, which writes `w` records, applied
    /// more) is not replayed: it would set values back.
    #[test]
    fn a_redo_record_behind_the_applied_entry_is_not_replayed() {
        let (tree, _) = two_entries_in();
        let stale = tree.get(REDO).unwrap().unwrap();
        let mut writes = EntryWrites::new(tree.clone());
        write_kv(&mut writes, b"a", b"later", None, 9).unwrap();
        writes.write(3).unwrap();
        let applied = LogId::new(openraft::CommittedLeaderId::new(1, 0), 3);
        tree.insert(APPLIED, encode(&Some(applied))).unwrap();
        tree.insert(REDO, stale).unwrap();
        let before = records(&tree);
        finish_last_entry(&tree).unwrap();
        assert_eq!(records(&tree), before);
        assert_eq!(read_kv(&tree, b"a").unwrap().unwrap().value, b"later");
    }

    /// A redo record as format 3 wrote it: the writes but the key
    /// records', and the key of the history record whose changes (with
    /// their values) give those.
    fn a_format_3_redo_record(log_index: u64, history: [u8; 9]) -> Vec<u8> {
        let writes = vec![(Bytes::new(REVISION), Some(Bytes::new(&[2])))];
        encode(&(log_index, Some(Bytes::new(&history)), writes))
    }

    /// A node of the version before stopped right after an entry's redo
    /// record: this one finishes the entry from the history record it
    /// names, values and removals included.
    #[test]
    fn a_redo_record_of_format_3_is_finished_from_its_history_record() {
        let change = |revision, key: &str, value: &str, deleted| Change {
            revision,
            kv: KeyValue {
                key: key.into(),
                value: value.into(),
                create_revision: 1,
                mod_revision: revision,
                version: revision,
            },
            deleted,
        };
        let changes = vec![change(1, "a", "1", false), change(2, "gone", "", true)];
        let tree = installed(&[
            (key_key(b"gone").as_slice(), b"left".to_vec()),
            (&history_key(2)[..], encode(&changes)),
            (REDO, a_format_3_redo_record(1, history_key(2))),
        ]);
        finish_last_entry(&tree).unwrap();
        let a = read_kv(&tree, b"a").unwrap().unwrap();
        assert_eq!((a.value.as_slice(), a.mod_revision), (&b"1"[..], 1));
        assert_eq!(read_kv(&tree, b"gone").unwrap(), None);
        assert_eq!(read_revision(&tree).unwrap(), 2);
    }

    /// A format 3 redo record naming a history record that is not there is
    /// corruption, not an entry silently left half-written.
    #[test]
    fn a_redo_record_whose_history_record_is_missing_is_an_error() {
        let tree = installed(&[(REDO, a_format_3_redo_record(1, history_key(2)))]);
        assert!(matches!(
            finish_last_entry(&tree),
            Err(ReplayError::HistoryMissing)
        ));
    }
}
