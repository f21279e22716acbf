//! Storage tests: openraft's conformance suite, the state machine's
//! semantics, snapshots, and reopening a data directory.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::AtomicBool;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};

use super::state_machine::read::ReadError;
use super::state_machine::{Change, FeedItem, ScanRange, SnapshotCopy};
use super::*;
use crate::types::{Command, Entry, KeyValue, LogId, Op, Outcome, Proposal, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), crate::types::StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), &StoreOptions::default()).expect("open store");
        // The suite drives the log with a state machine that applies
        // nothing, and checks that a purge takes effect at once: tell the
        // gate everything is applied, so it checks the log's own purge
        // (the gate has its own test below).
        store
            .log
            .purges
            .applied(u64::MAX)
            .expect("open the purge gate");
        Ok((dir, store.log, store.state_machine))
    }
}

#[test]
fn openraft_storage_conformance_suite() {
    Suite::test_all(Builder).expect("openraft's storage suite");
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 0), index)
}

/// The dedup window the tests' leader would use.
const DEDUP_WINDOW_MS: u64 = 10_000;

fn entry(index: u64, id: impl AsRef<[u8]>, at_ms: u64, op: Op) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Proposal {
            proposed_at_ms: at_ms,
            forget_before_ms: at_ms.saturating_sub(DEDUP_WINDOW_MS),
            commands: vec![Command {
                request_id: id.as_ref().to_vec(),
                op,
            }],
        }),
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn open(dir: &std::path::Path, options: StoreOptions) -> Store {
    when_unlocked(|| Store::open(dir, &options))
}

/// The directory of the one state database in `data_dir`.
fn state_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    let dirs = super::state_machine::state_dirs(data_dir).unwrap();
    assert_eq!(
        dirs.len(),
        1,
        "one state database in {}: {dirs:?}",
        data_dir.display()
    );
    dirs[0].clone()
}

/// Runs `open` until sled's file lock is free: sled's I/O threads may hold
/// it for a moment after the last handle of a database is dropped.
fn when_unlocked<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Ok(value) => return value,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("opening the store: {e}"),
        }
    }
}

/// Opens `dir` again once sled's lock is free and expects it refused as
/// corrupted; returns the path and detail the error names.
fn refused_as_corrupted(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let opened = when_unlocked(|| match Store::open(dir, &StoreOptions::default()) {
        Err(StoreError::Open { source, .. }) if source.to_string().contains("lock") => {
            Err(source.to_string())
        }
        other => Ok(other),
    });
    match opened {
        Err(StoreError::Corrupted { path, detail }) => (path, detail),
        Err(other) => panic!("expected Corrupted, got {other}"),
        Ok(_) => panic!("{} must not open", dir.display()),
    }
}

/// Builds a snapshot; returns its meta and its file's bytes.
async fn build(sm: &mut StateMachine) -> (crate::types::SnapshotMeta, Vec<u8>) {
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let mut file = snapshot.snapshot.into_std().await;
    file.read_to_end(&mut bytes).unwrap();
    (snapshot.meta, bytes)
}

/// Receives a snapshot file's `bytes` as from the leader and installs it.
async fn receive(
    sm: &mut StateMachine,
    meta: &crate::types::SnapshotMeta,
    bytes: &[u8],
) -> Result<(), crate::types::StorageError> {
    let mut receiving = sm.begin_receiving_snapshot().await?;
    tokio::io::AsyncWriteExt::write_all(&mut *receiving, bytes)
        .await
        .unwrap();
    sm.install_snapshot(meta, receiving).await
}

/// Applies ops one per entry from `first_index` on; returns their outcomes.
async fn apply(sm: &mut StateMachine, first_index: u64, ops: Vec<Op>) -> Vec<Outcome> {
    let entries = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| {
            let index = first_index + i as u64;
            entry(index, format!("req-{index}"), 1_000, op)
        })
        .collect::<Vec<_>>();
    sm.apply(entries).await.expect("apply").concat()
}

#[tokio::test]
async fn puts_count_versions_and_keep_the_create_revision() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let reader = store.state_machine.reader();
    let outcomes = apply(
        &mut store.state_machine,
        1,
        vec![
            put("a", "1"),
            Op::PutReturningPrev {
                key: "a".into(),
                value: "2".into(),
            },
        ],
    )
    .await;
    assert_eq!(
        outcomes[0],
        Outcome::Put {
            revision: 1,
            prev: None
        }
    );
    let kv = reader.get(b"a").unwrap().0.unwrap();
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (&b"2"[..], 1, 2, 2)
    );
    assert!(matches!(&outcomes[1], Outcome::Put { revision: 2, prev: Some(p) } if p.value == b"1"));
    assert_eq!(reader.get(b"a").unwrap().1, 2);

    let outcomes = apply(
        &mut store.state_machine,
        3,
        vec![
            Op::Delete { key: "a".into() },
            Op::Delete { key: "a".into() },
        ],
    )
    .await;
    assert!(matches!(
        &outcomes[0],
        Outcome::Deleted {
            revision: 3,
            prev: Some(_)
        }
    ));
    assert_eq!(
        outcomes[1],
        Outcome::Deleted {
            revision: 3,
            prev: None
        }
    );
    assert_eq!(reader.get(b"a").unwrap().0, None);
}

#[tokio::test]
async fn compare_and_swap_succeeds_only_on_the_expected_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let reader = store.state_machine.reader();
    let cas = |expected: Option<&str>, new: Option<&str>| Op::CompareAndSwap {
        key: "k".into(),
        expected: expected.map(Into::into),
        new: new.map(Into::into),
    };
    let outcomes = apply(
        &mut store.state_machine,
        1,
        vec![
            cas(None, Some("a")),      // absent as expected: swapped
            cas(None, Some("b")),      // present now: lost
            cas(Some("x"), Some("b")), // wrong value: lost
            cas(Some("a"), Some("b")), // right value: swapped
            cas(Some("b"), None),      // delete through CAS
        ],
    )
    .await;
    assert_eq!(outcomes[0], Outcome::Swapped { revision: 1 });
    assert!(
        matches!(&outcomes[1], Outcome::CompareFailed { current: Some(kv) } if kv.value == b"a")
    );
    assert!(
        matches!(&outcomes[2], Outcome::CompareFailed { current: Some(kv) } if kv.value == b"a")
    );
    assert_eq!(
        outcomes[3],
        Outcome::Swapped { revision: 2 },
        "lost swaps take no revision"
    );
    assert_eq!(outcomes[4], Outcome::Swapped { revision: 3 });
    assert_eq!(reader.get(b"k").unwrap().0, None);
    let outcomes = apply(&mut store.state_machine, 6, vec![cas(Some("b"), Some("c"))]).await;
    assert_eq!(outcomes[0], Outcome::CompareFailed { current: None });
}

#[tokio::test]
async fn increments_are_results_never_failures() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let reader = store.state_machine.reader();
    let inc = |key: &str, delta| Op::Increment {
        key: key.into(),
        delta,
    };
    let outcomes = apply(
        &mut store.state_machine,
        1,
        vec![
            inc("n", 5),
            inc("n", -7),
            put("s", "abc"),
            inc("s", 1),
            put("m", &i64::MAX.to_string()),
            inc("m", 1),
        ],
    )
    .await;
    assert_eq!(
        outcomes[0],
        Outcome::Incremented {
            revision: 1,
            value: 5
        }
    );
    assert_eq!(
        outcomes[1],
        Outcome::Incremented {
            revision: 2,
            value: -2
        }
    );
    assert_eq!(
        outcomes[3],
        Outcome::NotAnInteger {
            current: b"abc".to_vec()
        }
    );
    assert_eq!(outcomes[5], Outcome::Overflow { current: i64::MAX });
    assert_eq!(reader.get(b"n").unwrap().0.unwrap().value, b"-2");
    assert_eq!(
        reader.get(b"s").unwrap().0.unwrap().value,
        b"abc",
        "a refused increment changes nothing"
    );
    assert_eq!(
        reader.get(b"m").unwrap().0.unwrap().value,
        i64::MAX.to_string().as_bytes()
    );
}

#[tokio::test]
async fn a_repeated_request_id_returns_the_first_outcome_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let reader = store.state_machine.reader();
    let inc = Op::Increment {
        key: "visits".into(),
        delta: 1,
    };
    let first = store
        .state_machine
        .apply([entry(1, "visit-1", 1_000, inc.clone())])
        .await
        .unwrap();
    let again = store
        .state_machine
        .apply([entry(2, "visit-1", 2_000, inc.clone())])
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(
        reader.get(b"visits").unwrap().0.unwrap().value,
        b"1",
        "the retry did not count twice"
    );

    // A later entry, past the window, makes every replica forget the id.
    store
        .state_machine
        .apply([entry(3, "other", 20_000, put("x", "y"))])
        .await
        .unwrap();
    let after = store
        .state_machine
        .apply([entry(4, "visit-1", 21_000, inc)])
        .await
        .unwrap();
    assert_eq!(
        after,
        vec![vec![Outcome::Incremented {
            revision: 3,
            value: 2
        }]]
    );
}

/// An id a node made for a visit is forgotten once its own lifetime has
/// passed, long before the dedup window; a client's id of the same age is
/// still remembered. So anonymous visits leave no long-lived records.
#[tokio::test]
async fn a_node_made_request_id_is_forgotten_after_its_own_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let inc = |id: &[u8], index: u64, at_ms: u64| {
        let op = Op::Increment {
            key: "visits".into(),
            delta: 1,
        };
        entry(index, id, at_ms, op)
    };
    let visit = crate::types::node_request_id(std::time::Duration::from_millis(2_000));
    let client = b"client-1".as_slice();
    store
        .state_machine
        .apply([inc(&visit, 1, 100_000), inc(client, 2, 100_000)])
        .await
        .unwrap();
    // Past the visit id's 2 s, well within the 10 s window: an entry then
    // forgets the visit's id and keeps the client's.
    store
        .state_machine
        .apply([entry(3, "other", 103_000, put("x", "y"))])
        .await
        .unwrap();
    let outcomes = store
        .state_machine
        .apply([inc(&visit, 4, 103_500), inc(client, 5, 103_500)])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            vec![Outcome::Incremented {
                revision: 4,
                value: 3
            }],
            vec![Outcome::Incremented {
                revision: 2,
                value: 2
            }],
        ],
        "the visit's id was forgotten and counts again; the client's was remembered"
    );
}

/// An entry of one increment of `visits` per id, proposed at `at_ms`.
fn visits(index: u64, ids: &[crate::types::RequestId], at_ms: u64) -> Entry {
    let commands = ids
        .iter()
        .map(|id| Command {
            request_id: id.clone(),
            op: Op::Increment {
                key: "visits".into(),
                delta: 1,
            },
        })
        .collect();
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Proposal {
            proposed_at_ms: at_ms,
            forget_before_ms: at_ms.saturating_sub(DEDUP_WINDOW_MS),
            commands,
        }),
    }
}

fn incremented(revision: u64, value: i64) -> Outcome {
    Outcome::Incremented { revision, value }
}

/// How many records of the state tree start with `prefix`.
fn records_under(sm: &StateMachine, prefix: u8) -> usize {
    sm.tree().scan_prefix([prefix]).count()
}

/// An entry files its node-made ids with their outcomes in one record,
/// instead of a record per id and that record's removal later: two sled
/// writes less for every write sent without a client's id. The ids are
/// remembered across a restart and a snapshot install, and forgotten
/// together once their lifetime has passed.
#[tokio::test]
async fn node_made_ids_are_filed_per_entry_and_remembered_across_restarts_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let lifetime = std::time::Duration::from_millis(2_000);
    let ids: Vec<_> = (0..3)
        .map(|_| crate::types::node_request_id(lifetime))
        .collect();
    // The first id twice in the entry: the second is the first's retry.
    let sent = [ids.clone(), vec![ids[0].clone()]].concat();
    let first = store
        .state_machine
        .apply([visits(1, &sent, 100_000)])
        .await
        .unwrap();
    let outcomes = vec![incremented(1, 1), incremented(2, 2), incremented(3, 3)];
    let retried = incremented(1, 1);
    assert_eq!(first, vec![[outcomes.clone(), vec![retried]].concat()]);
    let sm = &store.state_machine;
    assert_eq!(records_under(sm, keys::DEDUP), 0, "no record per id");
    assert_eq!(records_under(sm, keys::EXPIRY), 0);
    assert_eq!(records_under(sm, keys::OUTCOMES), 1, "one for the entry");
    let next = store
        .state_machine
        .apply([visits(2, &ids[..1], 100_500)])
        .await
        .unwrap();
    assert_eq!(next, vec![vec![outcomes[0].clone()]], "in a later entry");

    drop(store);
    let mut store = open(dir.path(), StoreOptions::default());
    let again = store
        .state_machine
        .apply([visits(3, &ids[1..2], 101_000)])
        .await
        .unwrap();
    assert_eq!(again, vec![vec![outcomes[1].clone()]], "after a restart");

    let (meta, bytes) = build(&mut store.state_machine).await;
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = open(other_dir.path(), StoreOptions::default());
    receive(&mut other.state_machine, &meta, &bytes)
        .await
        .unwrap();
    let there = other
        .state_machine
        .apply([visits(4, &ids[2..3], 101_500)])
        .await
        .unwrap();
    assert_eq!(there, vec![vec![outcomes[2].clone()]], "after an install");

    // Past the ids' 2 s: one entry forgets all three.
    other
        .state_machine
        .apply([entry(5, "other", 103_000, put("x", "y"))])
        .await
        .unwrap();
    assert_eq!(records_under(&other.state_machine, keys::OUTCOMES), 0);
    let counted = other
        .state_machine
        .apply([visits(6, &ids[..1], 103_500)])
        .await
        .unwrap();
    assert_eq!(counted, vec![vec![incremented(5, 4)]], "forgotten");
}

/// Versions before per-entry records filed each node-made id in a `d`
/// record of its own, listed in an `e` record. Ids filed so are still
/// remembered after an upgrade, as the replicas not yet upgraded remember
/// them, and forgotten with their `e` record.
#[tokio::test]
async fn node_made_ids_filed_alone_by_an_earlier_version_are_remembered_then_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let id = crate::types::node_request_id(std::time::Duration::from_millis(2_000));
    let ids = [id];
    store
        .state_machine
        .apply([visits(1, &ids, 100_000)])
        .await
        .unwrap();
    // The same state as the earlier version wrote it: a `d` record holds
    // the outcome (a one-field struct, encoded as its field), and an `e`
    // record filed where the `o` record was lists the id. (Without the
    // entry's redo record, which would write the `o` record again.)
    let tree = store.state_machine.tree();
    let (filed, _) = tree.scan_prefix([keys::OUTCOMES]).next().unwrap().unwrap();
    tree.remove(&filed).unwrap();
    tree.remove(keys::REDO).unwrap();
    let outcome = postcard::to_stdvec(&incremented(1, 1)).unwrap();
    tree.insert(keys::dedup_key(&ids[0]), outcome).unwrap();
    let mut listed = filed.to_vec();
    listed[0] = keys::EXPIRY;
    tree.insert(&listed, postcard::to_stdvec(&ids.to_vec()).unwrap())
        .unwrap();
    drop((tree, store));

    let mut store = open(dir.path(), StoreOptions::default());
    let again = store
        .state_machine
        .apply([visits(2, &ids, 101_000)])
        .await
        .unwrap();
    assert_eq!(again, vec![vec![incremented(1, 1)]], "remembered");
    store
        .state_machine
        .apply([entry(3, "other", 103_000, put("x", "y"))])
        .await
        .unwrap();
    let tree = store.state_machine.tree();
    assert_eq!(tree.get(keys::dedup_key(&ids[0])).unwrap(), None);
    assert_eq!(tree.get(&listed).unwrap(), None);
    let counted = store
        .state_machine
        .apply([visits(4, &ids, 103_500)])
        .await
        .unwrap();
    assert_eq!(counted, vec![vec![incremented(3, 2)]], "forgotten");
}

#[tokio::test]
async fn history_replays_changes_and_reports_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        history_revisions: 5,
        ..StoreOptions::default()
    };
    let mut store = open(dir.path(), options);
    let reader = store.state_machine.reader();
    let mut feed = store.state_machine.feed().subscribe();
    let ops = (1..=20)
        .map(|i| put(if i % 2 == 0 { "even" } else { "odd" }, &i.to_string()))
        .collect();
    apply(&mut store.state_machine, 1, ops).await;

    let changes = reader.history_page(b"ev", 16, usize::MAX).unwrap().changes;
    assert_eq!(
        changes.iter().map(|c| c.revision).collect::<Vec<_>>(),
        vec![16, 18, 20]
    );
    match reader.history_page(b"", 1, usize::MAX).map(|p| p.changes) {
        Err(ReadError::Compacted {
            requested: 1,
            oldest,
        }) => assert!(oldest > 1 && oldest <= 16, "oldest {oldest}"),
        other => panic!("expected Compacted, got {other:?}"),
    }
    match feed.recv().await.unwrap() {
        FeedItem::Change(change) => assert_eq!(change.revision, 1),
        other => panic!("expected a change, got {other:?}"),
    }
}

/// History comes in pages of whole entries that stop once they hold the
/// byte budget, and the pages together are the whole history, in order.
#[tokio::test]
async fn history_pages_are_bounded_in_bytes_and_add_up_to_the_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let value = "v".repeat(99);
    for index in 1..=10 {
        apply(&mut store.state_machine, index, vec![put("k", &value)]).await;
    }
    let reader = store.state_machine.reader();
    let (mut from, mut seen, mut pages) = (1, Vec::new(), 0);
    loop {
        let page = reader.history_page(b"", from, 250).unwrap();
        // Each change is 100 bytes: three reach the budget.
        assert!(
            page.changes.len() <= 3,
            "{} changes in a page",
            page.changes.len()
        );
        seen.extend(page.changes.iter().map(|c| c.revision));
        pages += 1;
        match page.next {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    assert_eq!(pages, 4);
    let all = reader.history_page(b"", 1, usize::MAX).unwrap();
    assert_eq!((all.changes.len(), all.next), (10, None));
}

/// The bytes the history's records and the values it kept take.
fn history_bytes_kept(tree: &sled::Tree) -> usize {
    [b'h', b'p']
        .into_iter()
        .flat_map(|prefix| tree.scan_prefix([prefix]))
        .map(|item| item.unwrap().1.len())
        .sum()
}

/// History is also bounded in bytes: the oldest entries' records, with the
/// replaced values they need, go once they take more than the budget,
/// whatever the revision count, the newest always stays, and a replay from
/// before says where history starts now.
#[tokio::test]
async fn history_is_bounded_in_bytes_as_well_as_in_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        history_bytes: 1_000,
        ..StoreOptions::default()
    };
    let mut store = open(dir.path(), options);
    let value = "v".repeat(200);
    for index in 1..=20 {
        apply(&mut store.state_machine, index, vec![put("k", &value)]).await;
    }
    let tree = store.state_machine.tree();
    let kept = history_bytes_kept(&tree);
    assert!(kept <= 1_000, "{kept} bytes of history kept");
    assert!(kept > 600, "only {kept} bytes kept: more than needed went");
    let counted: u64 = postcard::from_bytes(&tree.get(b"b").unwrap().unwrap()).unwrap();
    assert_eq!(counted, kept as u64, "the count is what the records take");
    let reader = store.state_machine.reader();
    match reader.history_page(b"", 1, usize::MAX) {
        Err(ReadError::Compacted { oldest, .. }) => {
            let page = reader.history_page(b"", oldest, usize::MAX).unwrap();
            assert_eq!(page.changes.last().unwrap().revision, 20);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // An entry that replaces more than the budget is kept alone.
    let large = "v".repeat(5_000);
    apply(&mut store.state_machine, 21, vec![put("k", &large)]).await;
    apply(&mut store.state_machine, 22, vec![put("k", "small")]).await;
    let records: Vec<u64> = tree
        .scan_prefix([b'h'])
        .keys()
        .map(|k| u64::from_be_bytes(k.unwrap()[1..9].try_into().unwrap()))
        .collect();
    assert_eq!(records, [22]);
    let page = reader.history_page(b"", 22, usize::MAX).unwrap();
    assert_eq!(page.changes[0].kv.value, b"small");
}

/// The history holds each change without its value: the key's record
/// gives it while the change is the key's latest, and a record of its own
/// once a later change replaced it. Watch replays every value as it was,
/// overwritten, deleted and written again alike.
#[tokio::test]
async fn history_replays_values_since_replaced_without_holding_them_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    // One entry each.
    let entries = [
        vec![put("k", "first-value"), put("j", "other-value")],
        vec![put("k", "second-value")],
        vec![Op::Delete { key: b"k".to_vec() }],
        vec![put("k", "third-value"), put("k", "fourth-value")],
    ];
    apply(&mut store.state_machine, 1, entries.concat()).await;
    let changes = store
        .state_machine
        .reader()
        .history_page(b"", 1, usize::MAX)
        .unwrap()
        .changes;
    let replayed: Vec<(u64, &[u8], &[u8], bool)> = changes
        .iter()
        .map(|c| (c.revision, &c.kv.key[..], &c.kv.value[..], c.deleted))
        .collect();
    let expected: [(u64, &[u8], &[u8], bool); 6] = [
        (1, b"k", b"first-value", false),
        (2, b"j", b"other-value", false),
        (3, b"k", b"second-value", false),
        (4, b"k", b"", true),
        (5, b"k", b"third-value", false),
        (6, b"k", b"fourth-value", false),
    ];
    assert_eq!(replayed, expected);
    let tree = store.state_machine.tree();
    for item in tree.scan_prefix([b'h']) {
        let record = item.unwrap().1;
        assert!(
            !record.windows(6).any(|w| w == b"-value"),
            "a history record holds a value"
        );
    }
}

/// A history record as the version before wrote it (with the values,
/// under a key one byte shorter) is replayed beside this version's.
#[tokio::test]
async fn history_records_with_their_values_are_still_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let old = vec![Change {
        revision: 1,
        kv: KeyValue {
            key: b"k".to_vec(),
            value: b"from-format-3".to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
        },
        deleted: false,
    }];
    let tree = store.state_machine.tree();
    tree.insert(keys::history_key(1), postcard::to_stdvec(&old).unwrap())
        .unwrap();
    tree.insert(b"r", postcard::to_stdvec(&1u64).unwrap())
        .unwrap();
    apply(&mut store.state_machine, 1, vec![put("k", "now")]).await;
    let values: Vec<Vec<u8>> = (store.state_machine.reader())
        .history_page(b"", 1, usize::MAX)
        .unwrap()
        .changes
        .into_iter()
        .map(|c| c.kv.value)
        .collect();
    assert_eq!(values, [b"from-format-3".to_vec(), b"now".to_vec()]);
}

/// Entries carrying many commands each (the leader batches writes) must
/// not outgrow the trimming: history stays within its window and request
/// ids past the dedup window are forgotten, however large the entries.
#[tokio::test]
async fn trimming_keeps_up_with_entries_of_many_commands() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        history_revisions: 10,
        ..StoreOptions::default()
    };
    let mut store = open(dir.path(), options);
    for index in 1..=20u64 {
        let commands = (0..50)
            .map(|c| Command {
                request_id: format!("req-{index}-{c}").into_bytes(),
                op: put(&format!("k{c}"), &index.to_string()),
            })
            .collect();
        let entry = Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(Proposal {
                // Each entry comes 2 s after the previous one: every request
                // id of the entry before is past the window.
                proposed_at_ms: index * 2_000,
                forget_before_ms: index * 2_000 - 1_000,
                commands,
            }),
        };
        store.state_machine.apply([entry]).await.unwrap();
    }
    let tree = store.state_machine.tree();
    let count = |prefix: u8| tree.scan_prefix([prefix]).count();
    // One history record per entry; the window's 10 revisions are in the
    // last entry's.
    assert!(count(b'h') <= 2, "{} history records kept", count(b'h'));
    let reader = store.state_machine.reader();
    let window = reader.history_page(b"", 991, usize::MAX).unwrap().changes;
    assert_eq!(
        window.iter().map(|c| c.revision).collect::<Vec<_>>(),
        (991..=1000).collect::<Vec<_>>()
    );
    assert_eq!(
        count(b'd'),
        50,
        "only the last entry's request ids remembered"
    );
    assert_eq!(count(b'e'), 1, "one expiry record, the last entry's");
}

#[tokio::test]
async fn scan_pages_by_prefix_range_limit_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let reader = store.state_machine.reader();
    let ops = ["a/1", "a/2", "a/3", "b/1", "a\u{7f}"]
        .iter()
        .map(|k| put(k, "v"))
        .collect();
    apply(&mut store.state_machine, 1, ops).await;
    let keys = |page: &state_machine::ScanPage| {
        page.kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
            .collect::<Vec<_>>()
    };

    let prefix = ScanRange {
        prefix: b"a/".to_vec(),
        ..Default::default()
    };
    let page = reader.scan(&prefix, 2, usize::MAX).unwrap();
    assert_eq!(keys(&page), ["a/1", "a/2"]);
    assert_eq!(page.next_key.as_deref(), Some(&b"a/3"[..]));
    let rest = ScanRange {
        start: page.next_key.unwrap(),
        ..prefix.clone()
    };
    let page = reader.scan(&rest, 2, usize::MAX).unwrap();
    assert_eq!(keys(&page), ["a/3"]);
    assert_eq!(page.next_key, None);

    let range = ScanRange {
        start: b"a/2".to_vec(),
        end: Some(b"b".to_vec()),
        ..Default::default()
    };
    assert_eq!(
        keys(&reader.scan(&range, 10, usize::MAX).unwrap()),
        ["a/2", "a/3", "a\u{7f}"]
    );
    let everything = ScanRange::default();
    assert_eq!(
        reader.scan(&everything, 10, usize::MAX).unwrap().kvs.len(),
        5
    );
    let page = reader.scan(&everything, 10, 1).unwrap();
    assert_eq!(
        keys(&page),
        ["a/1"],
        "the byte budget stops the page after one key"
    );
    let empty = ScanRange {
        start: b"z".to_vec(),
        end: Some(b"a".to_vec()),
        ..Default::default()
    };
    assert!(reader.scan(&empty, 10, usize::MAX).unwrap().kvs.is_empty());
}

#[tokio::test]
async fn a_snapshot_moves_the_whole_state_and_a_corrupted_one_changes_nothing() {
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = open(leader_dir.path(), StoreOptions::default());
    apply(
        &mut leader.state_machine,
        1,
        vec![put("a", "1"), put("b", "2"), Op::Delete { key: "a".into() }],
    )
    .await;
    let (meta, bytes) = build(&mut leader.state_machine).await;
    assert_eq!(meta.last_log_id, Some(log_id(3)));

    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = open(follower_dir.path(), StoreOptions::default());
    apply(&mut follower.state_machine, 1, vec![put("old", "x")]).await;
    let reader = follower.state_machine.reader();

    // Corrupt one byte in the middle: refused, the old state stays.
    let mut corrupted = bytes.clone();
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0xff;
    assert!(receive(&mut follower.state_machine, &meta, &corrupted)
        .await
        .is_err());
    assert_eq!(reader.get(b"old").unwrap().0.unwrap().value, b"x");

    receive(&mut follower.state_machine, &meta, &bytes)
        .await
        .unwrap();
    assert_eq!(reader.get(b"old").unwrap().0, None);
    assert_eq!(reader.get(b"a").unwrap().0, None);
    assert_eq!(reader.get(b"b").unwrap().0.unwrap().value, b"2");
    assert_eq!(
        follower.state_machine.applied_state().await.unwrap().0,
        Some(log_id(3))
    );

    // The installed state and snapshot survive a restart.
    drop((follower, reader));
    let mut reopened = open(follower_dir.path(), StoreOptions::default());
    assert_eq!(
        reopened
            .state_machine
            .reader()
            .get(b"b")
            .unwrap()
            .0
            .unwrap()
            .value,
        b"2"
    );
    let current = reopened
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.meta, meta);
}

/// Every record of the state tree but the redo record, by key.
fn state_records(sm: &StateMachine) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    sm.tree()
        .iter()
        .map(|item| item.expect("read the state tree"))
        .filter(|(key, _)| !keys::is_redo(key))
        .map(|(key, value)| (key.to_vec(), value.to_vec()))
        .collect()
}

/// `key-NNNNN` for the tests of copies with many chunks.
fn numbered(i: u32) -> String {
    format!("key-{i:05}")
}

/// Applies 3,000 puts to `sm` and begins a snapshot copy; returns the copy
/// and the state it began at.
async fn copy_of_3000_keys(
    sm: &mut StateMachine,
) -> (SnapshotCopy, std::collections::BTreeMap<Vec<u8>, Vec<u8>>) {
    apply(
        sm,
        1,
        (0..3_000).map(|i| put(&numbered(i), "before")).collect(),
    )
    .await;
    let began = state_records(sm);
    let mut builder = sm.get_snapshot_builder().await;
    let copy = builder.copy.take().expect("a copy").expect("begun");
    (copy, began)
}

/// The copy runs beside applying, and reads each chunk without the state
/// lock: entries that overwrite, delete and create keys behind it, ahead
/// of it, and inside a chunk it has read but not yet marked copied land
/// between its steps, and the copy still holds exactly the state when it
/// began, each key once.
#[tokio::test]
async fn a_snapshot_copied_while_entries_apply_is_the_state_when_it_began() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let sm = &mut store.state_machine;
    let (copy, began) = copy_of_3000_keys(sm).await;

    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut next_index = 3_001;
    let mut copied = Vec::new();
    while let Some(chunk) = copy.read_chunk().expect("read a chunk") {
        apply(sm, next_index, random_changes(&mut rng, 300)).await;
        copied.extend(copy.mark_copied(chunk));
        apply(sm, next_index + 300, random_changes(&mut rng, 25)).await;
        next_index += 325;
    }
    copied.extend(copy.kept_values());
    assert_ne!(state_records(sm), began, "entries changed the state");
    let copied_records = copied.len();
    let copied: std::collections::BTreeMap<_, _> = copied.into_iter().collect();
    assert_eq!(copied.len(), copied_records, "each key once");
    assert!(copied == began, "the copy is the state when it began");
}

/// `entries` random puts and deletes over `key-00000` to `key-03999`.
fn random_changes(rng: &mut rand::rngs::StdRng, entries: usize) -> Vec<Op> {
    use rand::Rng;
    (0..entries)
        .map(|_| {
            let key = numbered(rng.random_range(0..4_000));
            if rng.random_bool(0.3) {
                Op::Delete { key: key.into() }
            } else {
                put(&key, "after")
            }
        })
        .collect()
}

/// An install replaces the state tree under a copy, so it waits for the
/// copy in progress to end; the copy is still the state when it began.
#[tokio::test]
async fn an_install_waits_for_the_snapshot_copy_in_progress() {
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = open(other_dir.path(), StoreOptions::default());
    apply(&mut other.state_machine, 1, vec![put("other", "x")]).await;
    let (meta, bytes) = build(&mut other.state_machine).await;

    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let sm = &mut store.state_machine;
    let (copy, began) = copy_of_3000_keys(sm).await;
    let mut records = copy.records();
    let mut copied = vec![records.next().expect("a record").expect("copied")];

    {
        let mut install = std::pin::pin!(receive(sm, &meta, &bytes));
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(300), &mut install).await;
        assert!(waited.is_err(), "the install waits for the copy");
        copied.extend(records.map(|record| record.expect("copied")));
        drop(copy);
        install.await.expect("installed once the copy ended");
    }
    assert!(
        copied
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
            == began
    );
    assert_eq!(
        store
            .state_machine
            .reader()
            .get(b"other")
            .unwrap()
            .0
            .unwrap()
            .value,
        b"x"
    );
}

/// A batch of many commands applies off the runtime's worker: while it
/// waits (here for a lock another thread holds), the worker runs the
/// node's other tasks, as a follower answering the leader's appends must.
#[test]
fn a_long_batch_leaves_the_runtimes_worker_to_other_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let preimages = store.state_machine.snapshot_preimages();
    let (held, lock_held) = std::sync::mpsc::channel();
    let (ran, other_task_ran) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _held = preimages.lock().unwrap();
        held.send(()).unwrap();
        // The deadline only ends a test that fails: the other task never runs.
        other_task_ran
            .recv_timeout(std::time::Duration::from_secs(10))
            .is_ok()
    });
    lock_held.recv().unwrap();
    let puts = (0..16).map(|i| put(&numbered(i), "v")).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let outcomes = runtime.block_on(async move {
        let applying = tokio::spawn(async move {
            // Queued on the only worker, behind the apply.
            tokio::spawn(async move { ran.send(()) });
            apply(&mut store.state_machine, 1, puts).await
        });
        applying.await.unwrap()
    });
    assert!(
        holder.join().unwrap(),
        "another task ran while the batch waited"
    );
    assert_eq!(outcomes.len(), 16);
}

/// A node that led when it stopped starts as a follower, its vote for
/// itself no longer committed but in the same term; a vote for another
/// leader is kept as it was.
#[tokio::test]
async fn a_node_that_led_reopens_standing_down_in_its_term() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let node_id = store.node_id;
    let led = crate::types::Vote::new_committed(4, node_id);
    store.log.save_vote(&led).await.unwrap();
    drop(store);
    let mut store = open(dir.path(), StoreOptions::default());
    assert_eq!(
        store.log.read_vote().await.unwrap(),
        Some(crate::types::Vote::new(4, node_id))
    );
    let followed = crate::types::Vote::new_committed(5, node_id ^ 2);
    store.log.save_vote(&followed).await.unwrap();
    drop(store);
    let mut store = open(dir.path(), StoreOptions::default());
    assert_eq!(store.log.read_vote().await.unwrap(), Some(followed));
}

#[tokio::test]
async fn a_reopened_directory_keeps_its_id_log_vote_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let node_id = store.node_id;
    store.meta.set_cluster_id("c1").unwrap();
    let vote = crate::types::Vote::new(3, node_id);
    store.log.save_vote(&vote).await.unwrap();
    apply(&mut store.state_machine, 1, vec![put("k", "v")]).await;
    drop(store);

    let mut store = open(dir.path(), StoreOptions::default());
    assert_eq!(
        store.node_id, node_id,
        "the node id belongs to the data directory"
    );
    assert_eq!(store.meta.cluster_id().unwrap().as_deref(), Some("c1"));
    assert_eq!(store.log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(
        store
            .state_machine
            .reader()
            .get(b"k")
            .unwrap()
            .0
            .unwrap()
            .value,
        b"v"
    );
    assert_eq!(
        store.state_machine.applied_state().await.unwrap().0,
        Some(log_id(1))
    );
    let fresh = tempfile::tempdir().unwrap();
    assert_ne!(
        open(fresh.path(), StoreOptions::default()).node_id,
        node_id,
        "an empty directory gets a new id"
    );
    let reader_entries = store.log.try_get_log_entries(0..10).await.unwrap();
    assert!(reader_entries.is_empty());
}

#[test]
fn a_corrupted_database_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), StoreOptions::default()));
    // Overwrite the database's files with garbage.
    for entry in std::fs::read_dir(dir.path().join("db")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.seek(SeekFrom::Start(0)).unwrap();
            file.write_all(&[0xAB; 4096]).unwrap();
        }
    }
    let Err(err) = Store::open(dir.path(), &StoreOptions::default()) else {
        panic!("a corrupted store must not open");
    };
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

/// State written in another data format is refused with a message that
/// says so, rather than misread.
#[tokio::test]
async fn state_in_another_data_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    apply(&mut store.state_machine, 1, vec![put("a", "1")]).await;
    let tree = store.state_machine.tree();
    tree.insert(b"v", &[1u8]).unwrap();
    store.meta.make_durable().unwrap();
    drop((tree, store));

    let (_, detail) = refused_as_corrupted(dir.path());
    assert!(detail.contains("data format 1"), "{detail}");
}

/// State and snapshots in formats 2 and 3 are read (format 3 only added
/// `o` records to format 2, and format 4 history records without values
/// and `p` records, which this version reads beside format 3's history
/// records), and state is marked format 4 once opened or installed, so
/// that a version reading only older formats refuses it afterwards.
#[tokio::test]
async fn state_and_snapshots_in_formats_2_and_3_are_read_and_become_format_4() {
    let format_of = |sm: &StateMachine| sm.tree().get(keys::FORMAT).unwrap().unwrap().to_vec();
    for older in [2u8, 3] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), StoreOptions::default());
        apply(&mut store.state_machine, 1, vec![put("a", "1")]).await;
        assert_eq!(format_of(&store.state_machine), [4]);
        store
            .state_machine
            .tree()
            .insert(keys::FORMAT, &[older])
            .unwrap();
        store.meta.make_durable().unwrap();
        drop(store);

        let mut store = open(dir.path(), StoreOptions::default());
        assert_eq!(format_of(&store.state_machine), [4]);
        let (meta, mut bytes) = build(&mut store.state_machine).await;
        // The same snapshot as the older format wrote it: its format byte,
        // and the file's checksum over every byte before it.
        bytes[7] = older;
        let body = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_be_bytes());
        let other_dir = tempfile::tempdir().unwrap();
        let mut other = open(other_dir.path(), StoreOptions::default());
        receive(&mut other.state_machine, &meta, &bytes)
            .await
            .unwrap();
        let value = other.state_machine.reader().get(b"a").unwrap().0.unwrap();
        assert_eq!(value.value, b"1");
        assert_eq!(format_of(&other.state_machine), [4]);
    }
}

/// Applies 4,000 puts of 1 KB, one entry each, and purges the log up to the
/// last, as a snapshot lets a node do (a purge makes the state durable).
async fn fill_and_purge(store: &mut Store) {
    let value = "v".repeat(1000);
    for batch in 0..40u64 {
        let ops = (0..100)
            .map(|k| put(&format!("k{batch}-{k}"), &value))
            .collect();
        apply(&mut store.state_machine, batch * 100 + 1, ops).await;
    }
    store.log.purge(log_id(4000)).await.unwrap();
}

/// Damage inside the state's file makes sled's recovery either panic (the
/// panic must become an error naming the directory, not a crash without
/// one) or stop at the damaged record and open the state as it was before
/// it (which, with the log purged, must be refused too: see the next test).
#[tokio::test]
async fn damage_inside_the_database_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    fill_and_purge(&mut store).await;
    drop(store);

    let file = state_dir(dir.path()).join("db");
    let len = std::fs::metadata(&file).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    for sixteenth in 1..16 {
        f.seek(SeekFrom::Start(len * sixteenth / 16)).unwrap();
        f.write_all(&[0x5A; 64]).unwrap();
    }
    drop(f);

    let (path, detail) = refused_as_corrupted(dir.path());
    assert!(path.starts_with(dir.path()), "{path:?}");
    assert!(
        detail.contains("sled could not recover") || detail.contains("lost writes"),
        "{detail}"
    );
}

/// A state database that comes back older than it was (what sled's recovery
/// makes of a damaged record) while the log no longer holds the entries
/// in between is refused: openraft could not re-apply them, and the node
/// would serve a state that silently lost acknowledged writes.
#[tokio::test]
async fn a_state_older_than_the_purged_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    apply(&mut store.state_machine, 1, vec![put("early", "1")]).await;
    store.meta.make_durable().unwrap();
    let state = state_dir(dir.path());
    let early = tempfile::tempdir().unwrap();
    copy_dir(&state, early.path());
    fill_and_purge(&mut store).await;
    drop(store);
    std::fs::remove_dir_all(&state).unwrap();
    copy_dir(early.path(), &state);

    let (path, detail) = refused_as_corrupted(dir.path());
    assert_eq!(path, state);
    assert!(
        detail.contains("applied up to log index 1, but the log was purged up to 4000"),
        "{detail}"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn commands_in_one_entry_apply_in_order_and_reapplying_the_entry_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let reader = store.state_machine.reader();
    let command = |id: &str, op: Op| Command {
        request_id: id.as_bytes().to_vec(),
        op,
    };
    let inc = Op::Increment {
        key: "visits".into(),
        delta: 1,
    };
    let batch = Entry {
        log_id: log_id(1),
        payload: EntryPayload::Normal(Proposal {
            proposed_at_ms: 1_000,
            forget_before_ms: 0,
            commands: vec![
                command("a", inc.clone()),
                command("b", inc),
                command("c", put("x", "y")),
            ],
        }),
    };
    let first = store.state_machine.apply([batch.clone()]).await.unwrap();
    assert_eq!(
        first,
        vec![vec![
            Outcome::Incremented {
                revision: 1,
                value: 1
            },
            Outcome::Incremented {
                revision: 2,
                value: 2
            },
            Outcome::Put {
                revision: 3,
                prev: None
            },
        ]]
    );
    // As after a crash between the commands and the entry's applied mark.
    let again = store.state_machine.apply([batch]).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(reader.get(b"visits").unwrap().0.unwrap().value, b"2");
    assert_eq!(
        reader
            .scan(&Default::default(), 1, usize::MAX)
            .unwrap()
            .revision,
        3
    );
}

#[tokio::test]
async fn an_entry_whose_writes_were_cut_short_is_completed_from_its_redo_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    apply(
        &mut store.state_machine,
        1,
        vec![put("x", "1"), put("y", "2")],
    )
    .await;
    drop(store);

    // As after a crash that kept the last entry's redo record but lost one
    // of the writes after it.
    {
        let db = when_unlocked(|| sled::open(state_dir(dir.path())));
        let tree = db.open_tree("sm").unwrap();
        assert!(tree.remove(b"ky").unwrap().is_some());
        db.flush().unwrap();
    }

    let store = open(dir.path(), StoreOptions::default());
    let reader = store.state_machine.reader();
    assert_eq!(reader.get(b"y").unwrap().0.unwrap().value, b"2");
    assert_eq!(reader.get(b"x").unwrap().0.unwrap().value, b"1");
    assert_eq!(reader.get(b"a").unwrap().1, 2);
}

/// A redo record of an earlier version (every write of the entry, values
/// included, under `w`) is replayed at start-up and then removed: entries
/// applied after it must never be set back by replaying it again.
#[tokio::test]
async fn a_whole_redo_record_of_an_earlier_version_is_replayed_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    apply(&mut store.state_machine, 1, vec![put("x", "1")]).await;
    let tree = store.state_machine.tree();
    let x = tree.get(b"kx").unwrap().unwrap();
    drop((tree, store));

    // As after a crash of the earlier version between the redo record of
    // its entry 2 and that entry's writes.
    {
        let db = when_unlocked(|| sled::open(state_dir(dir.path())));
        let tree = db.open_tree("sm").unwrap();
        let applied = postcard::to_stdvec(&Some(log_id(2))).unwrap();
        let whole: Vec<(&[u8], Option<&[u8]>)> = vec![
            (keys::APPLIED, Some(&applied)),
            (b"ky", Some(&x)),
            (b"kx", None),
        ];
        tree.insert(keys::WHOLE_REDO, postcard::to_stdvec(&whole).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let mut store = open(dir.path(), StoreOptions::default());
    {
        let reader = store.state_machine.reader();
        assert_eq!(reader.get(b"y").unwrap().0.unwrap().value, b"1");
        assert_eq!(reader.get(b"x").unwrap().0, None);
    }
    assert_eq!(
        store.state_machine.tree().get(keys::WHOLE_REDO).unwrap(),
        None
    );

    apply(&mut store.state_machine, 3, vec![put("y", "2")]).await;
    drop(store);
    let store = open(dir.path(), StoreOptions::default());
    let reader = store.state_machine.reader();
    assert_eq!(reader.get(b"y").unwrap().0.unwrap().value, b"2");
}

/// Every read is one point in time. A writer applies entries that each put
/// one value to the same [`KEYS_PER_ENTRY`] keys while readers Get and Scan
/// on other threads: no read may return a key newer than the revision it
/// reports, and a scan shows every key of the entry at that revision, never
/// part of one entry and part of the one before. History replays, while
/// compaction trims a short window, are gapless runs of whole entries or
/// refused as compacted.
#[test]
fn reads_while_entries_apply_see_whole_entries_at_their_revision() {
    const KEYS_PER_ENTRY: u64 = 16;
    const ENTRIES: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        history_revisions: 4 * KEYS_PER_ENTRY,
        ..StoreOptions::default()
    };
    let mut store = open(dir.path(), options);
    let reader = store.state_machine.reader();
    let entry_of = |index: u64| Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Proposal {
            proposed_at_ms: 1_000,
            forget_before_ms: 0,
            commands: (0..KEYS_PER_ENTRY)
                .map(|k| Command {
                    request_id: format!("req-{index}-{k}").into_bytes(),
                    op: put(&format!("k/{k:02}"), &index.to_string()),
                })
                .collect(),
        }),
    };
    futures::executor::block_on(store.state_machine.apply([entry_of(1)])).unwrap();

    // What a read returned that no single applied entry explains, by kind:
    // a key newer than the read's revision, a scan mixing two entries, or a
    // whole entry other than the one at the read's revision.
    let check_scan = |page: &state_machine::ScanPage| -> Result<(), (&str, String)> {
        let seen = || {
            let seen: Vec<_> = page
                .kvs
                .iter()
                .map(|kv| (String::from_utf8_lossy(&kv.value), kv.mod_revision))
                .collect();
            format!(
                "scan at revision {} saw (value, mod_revision) {seen:?}",
                page.revision
            )
        };
        let entry = (page.revision / KEYS_PER_ENTRY).to_string();
        if page.kvs.iter().any(|kv| kv.mod_revision > page.revision) {
            Err(("scan: a key newer than its revision", seen()))
        } else if page.kvs.iter().any(|kv| kv.value != page.kvs[0].value) {
            Err(("scan: part of an entry", seen()))
        } else if page.kvs.len() as u64 != KEYS_PER_ENTRY || page.kvs[0].value != entry.as_bytes() {
            Err(("scan: another entry than its revision's", seen()))
        } else {
            Ok(())
        }
    };
    let check_get = |(kv, revision): (Option<KeyValue>, u64)| -> Result<(), (&str, String)> {
        match kv {
            Some(kv) if kv.mod_revision <= revision => Ok(()),
            other => Err((
                "get: the key newer than its revision",
                format!("get at revision {revision} saw {other:?}"),
            )),
        }
    };
    type Replayed = Result<Vec<state_machine::Change>, ReadError>;
    let check_history = |from: u64, replayed: Replayed| -> Result<(), (&str, String)> {
        let revisions: Vec<u64> = match replayed {
            Ok(changes) => changes.iter().map(|c| c.revision).collect(),
            Err(ReadError::Compacted { .. }) => return Ok(()),
            Err(e) => panic!("history: {e}"),
        };
        let last = revisions.last().copied().unwrap_or(from - 1);
        if revisions == (from..=last).collect::<Vec<_>>() && last % KEYS_PER_ENTRY == 0 {
            return Ok(());
        }
        Err((
            "history: a gap or part of an entry",
            format!("history from {from} replayed revisions {revisions:?}"),
        ))
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let prefix = ScanRange {
        prefix: b"k/".to_vec(),
        ..Default::default()
    };
    let (reads, wrong) = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (reader, done, prefix) = (reader.clone(), &done, &prefix);
                scope.spawn(move || {
                    let (mut reads, mut wrong) = (0u64, Vec::new());
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        let page = reader.scan(prefix, 100, usize::MAX).unwrap();
                        let got = reader.get(b"k/07").unwrap();
                        wrong.extend(check_scan(&page).err());
                        wrong.extend(check_get(got).err());
                        let from = page.revision.saturating_sub(2 * KEYS_PER_ENTRY).max(1);
                        wrong.extend(
                            check_history(
                                from,
                                reader
                                    .history_page(b"", from, usize::MAX)
                                    .map(|p| p.changes),
                            )
                            .err(),
                        );
                        reads += 3;
                    }
                    (reads, wrong)
                })
            })
            .collect();
        let applied = futures::executor::block_on(async {
            for index in 2..=ENTRIES {
                store.state_machine.apply([entry_of(index)]).await?;
            }
            Ok::<_, crate::types::StorageError>(())
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        applied.expect("apply");
        readers
            .into_iter()
            .map(|r| r.join().expect("reader thread"))
            .fold((0, Vec::new()), |(n, mut all), (reads, wrong)| {
                all.extend(wrong);
                (n + reads, all)
            })
    });
    let mut kinds = std::collections::BTreeMap::new();
    for (kind, read) in &wrong {
        kinds.entry(*kind).or_insert((0, read)).0 += 1;
    }
    assert!(
        kinds.is_empty(),
        "{} of {reads} reads were not one point in time: {kinds:#?}",
        wrong.len()
    );
    assert!(reads > 0);
}

/// A re-founding recorded by the running node is completed on the next
/// open: the whole log kept, then a membership entry with this node alone
/// in a new term, under a committed vote for it, marked committed; the new
/// cluster id and the old one recorded; the record removed. Opening again
/// changes nothing more, and only one re-founding can be recorded.
#[tokio::test]
async fn a_recorded_refounding_makes_this_node_the_only_voter_after_the_whole_log() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions::default();
    let store = open(dir.path(), options.clone());
    let id = store.node_id;
    store.meta.set_cluster_id("old").unwrap();
    let entries: Vec<_> = (1..=3)
        .map(|index| {
            let bytes = postcard::to_stdvec(&entry(index, "r", 0, put("k", "v"))).unwrap();
            (index, bytes)
        })
        .collect();
    store.log.wal.append(&entries).unwrap();
    store.log.wal.sync().unwrap();
    let refounding = |cluster_id: &str| Refounding {
        cluster_id: cluster_id.into(),
        previous_cluster_id: "old".into(),
        member: crate::types::Member {
            name: "raftset-1".into(),
            ..Default::default()
        },
    };
    assert!(store.meta.mark_for_refounding(&refounding("new")).unwrap());
    assert!(
        !store
            .meta
            .mark_for_refounding(&refounding("other"))
            .unwrap(),
        "one re-founding at a time"
    );
    drop(store);

    for _ in 0..2 {
        let mut store = open(dir.path(), options.clone());
        assert_eq!(store.meta.cluster_id().unwrap().as_deref(), Some("new"));
        assert_eq!(store.meta.refounded_from().unwrap().as_deref(), Some("old"));
        assert!(!dir.path().join("REFOUND").exists());
        let entries = store.log.try_get_log_entries(0..).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(
            indexes,
            [1, 2, 3, 4],
            "the whole log, then the new membership"
        );
        let last = entries[3].log_id;
        let EntryPayload::Membership(membership) = &entries[3].payload else {
            panic!("not a membership entry: {:?}", entries[3]);
        };
        assert_eq!(membership.voter_ids().collect::<Vec<_>>(), [id]);
        assert_eq!(membership.get_node(&id).unwrap().name, "raftset-1");
        assert!(last.leader_id.term > 1, "a term above the old log's");
        let vote = store.log.read_vote().await.unwrap().unwrap();
        assert!(
            !vote.is_committed(),
            "stood down: it elects itself at start"
        );
        assert_eq!(vote.leader_id().voted_for(), Some(id));
        assert_eq!(vote.leader_id().term, last.leader_id.term);
        assert_eq!(store.log.read_committed().await.unwrap(), Some(last));
    }
}

/// The value of the sample `name` (labels included) in a scrape.
fn sample(metrics: &crate::metrics::Metrics, name: &str) -> f64 {
    let text = metrics.render(crate::metrics::Snapshot {
        raft: &crate::types::RaftMetrics::new_initial(1),
        disk_bytes: 0,
        volume: None,
    });
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test]
async fn the_store_records_its_fsyncs_applies_and_snapshots() {
    let leader_metrics = crate::metrics::Metrics::default();
    let leader_dir = tempfile::tempdir().unwrap();
    let options = |metrics: &crate::metrics::Metrics| StoreOptions {
        metrics: metrics.store(),
        ..StoreOptions::default()
    };
    let mut leader = open(leader_dir.path(), options(&leader_metrics));
    let fsyncs_at_open = sample(&leader_metrics, "raftset_fsync_duration_seconds_count");
    apply(
        &mut leader.state_machine,
        1,
        vec![put("a", "1"), put("b", "2")],
    )
    .await;
    assert_eq!(
        sample(&leader_metrics, "raftset_apply_duration_seconds_count"),
        2.0,
        "one observation per applied entry"
    );
    let (meta, bytes) = build(&mut leader.state_machine).await;
    assert_eq!(
        sample(
            &leader_metrics,
            "raftset_snapshot_build_duration_seconds_count"
        ),
        1.0
    );
    assert_eq!(
        sample(&leader_metrics, "raftset_snapshot_size_bytes"),
        bytes.len() as f64
    );
    assert!(
        sample(&leader_metrics, "raftset_fsync_duration_seconds_count") > fsyncs_at_open,
        "a snapshot is made durable, and every fsync is timed"
    );

    let follower_metrics = crate::metrics::Metrics::default();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = open(follower_dir.path(), options(&follower_metrics));
    receive(&mut follower.state_machine, &meta, &bytes)
        .await
        .unwrap();
    assert_eq!(
        sample(
            &follower_metrics,
            "raftset_snapshot_install_duration_seconds_count"
        ),
        1.0
    );
    assert_eq!(
        sample(&follower_metrics, "raftset_snapshot_size_bytes"),
        bytes.len() as f64
    );
    assert_eq!(
        sample(
            &follower_metrics,
            "raftset_snapshot_build_duration_seconds_count"
        ),
        0.0
    );
}

/// The quota asks for the size on every write that adds data, and a
/// measurement stats every file: one stands for a tenth of a second, for
/// every handle.
#[tokio::test(start_paused = true)]
async fn the_size_on_disk_is_measured_at_most_every_tenth_of_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), StoreOptions::default());
    let usage = store.meta.disk_usage();
    let before = usage.bytes();
    let tree = store.meta.shared.meta.db.open_tree("grow").unwrap();
    for i in 0..64u32 {
        tree.insert(i.to_be_bytes(), vec![7u8; 64 * 1024]).unwrap();
    }
    store.meta.shared.meta.db.flush().unwrap();
    assert_eq!(
        store.meta.disk_usage().bytes(),
        before,
        "measured a moment ago, by another handle"
    );
    tokio::time::advance(super::MEASURE_EVERY).await;
    assert!(usage.bytes() > before, "measured again once it is old");
}

/// The state's records, as the tree holds them.
fn records(sm: &StateMachine) -> Vec<(sled::IVec, sled::IVec)> {
    sm.tree().iter().map(Result::unwrap).collect()
}

/// Puts of 200 B over 5,000 keys, 100 to an entry, the same for every
/// store that is given the same `round`.
fn overwrites(round: u64) -> Vec<Op> {
    let value = format!("{round:0>200}");
    (0..100u64)
        .map(|k| put(&format!("k{:05}", (round * 37 + k * 101) % 5_000), &value))
        .collect()
}

/// A store and a reference store that never defragments, given the same
/// entries.
struct Twins {
    dir: tempfile::TempDir,
    store: Store,
    _reference_dir: tempfile::TempDir,
    reference: Store,
    /// The last round applied; round `n` is entry `n`.
    round: u64,
}

impl Twins {
    /// Both opened with `options` (the reference never defragments), and
    /// given `rounds` entries.
    async fn new(options: StoreOptions, rounds: u64) -> Twins {
        let dir = tempfile::tempdir().unwrap();
        let reference_dir = tempfile::tempdir().unwrap();
        let never = DefragPolicy {
            min_bytes: u64::MAX,
            ..DefragPolicy::default()
        };
        let mut twins = Twins {
            store: open(dir.path(), options.clone()),
            reference: open(
                reference_dir.path(),
                StoreOptions {
                    defrag: never,
                    ..options
                },
            ),
            dir,
            _reference_dir: reference_dir,
            round: 0,
        };
        for _ in 0..rounds {
            twins.next_round().await;
        }
        twins
    }

    /// One entry of [`overwrites`] to each store. Each put carries a request
    /// id of its own, remembered for good, in no order: the pattern under
    /// which sled's file grows fastest past the live records.
    async fn next_round(&mut self) {
        self.round += 1;
        let round = self.round;
        let entry = || Entry {
            log_id: log_id(round),
            payload: EntryPayload::Normal(Proposal {
                proposed_at_ms: 1_000,
                forget_before_ms: 0,
                commands: overwrites(round)
                    .into_iter()
                    .enumerate()
                    .map(|(k, op)| Command {
                        request_id: (round * 100 + k as u64)
                            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                            .to_be_bytes()
                            .to_vec(),
                        op,
                    })
                    .collect(),
            }),
        };
        self.store
            .state_machine
            .apply([entry()])
            .await
            .expect("apply");
        (self.reference.state_machine.apply([entry()]).await).expect("apply");
    }

    /// The store closed and opened again.
    fn reopen(self, options: StoreOptions) -> Twins {
        let Twins {
            dir,
            store,
            _reference_dir,
            reference,
            round,
        } = self;
        drop(store);
        Twins {
            store: open(dir.path(), options),
            dir,
            _reference_dir,
            reference,
            round,
        }
    }

    /// Whether both hold the same records.
    fn agree(&self) -> bool {
        records(&self.store.state_machine) == records(&self.reference.state_machine)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grown_state_is_copied_into_a_fresh_database_beside_applying_and_the_old_file_goes() {
    let options = StoreOptions {
        defrag: DefragPolicy {
            min_bytes: 32 << 20,
            ..DefragPolicy::default()
        },
        history_revisions: 100,
        ..StoreOptions::default()
    };
    let mut twins = Twins::new(options.clone(), 0).await;
    let reader = twins.store.state_machine.reader();
    let first = state_dir(twins.dir.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    // Apply until the state has moved to a fresh database and the old one
    // is gone; entries apply all along, the copy's included.
    loop {
        twins.next_round().await;
        let dirs = super::state_machine::state_dirs(twins.dir.path()).unwrap();
        if dirs.len() == 1 && dirs[0] != first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no defrag after {} entries; {dirs:?}",
            twins.round
        );
    }
    // A few entries more on the fresh database, then it must hold exactly
    // what the database that was never defragmented holds.
    for _ in 0..5 {
        twins.next_round().await;
    }
    assert!(twins.agree());
    let round = twins.round;
    let key = format!("k{:05}", (round * 37) % 5_000);
    assert_eq!(
        reader.get(key.as_bytes()).unwrap().0.unwrap().value,
        format!("{round:0>200}").as_bytes(),
        "a reader taken before the switch reads the fresh database"
    );

    drop(reader);
    assert!(twins.reopen(options).agree(), "the same after a restart");
}

#[tokio::test]
async fn a_defrag_cut_short_before_its_switch_leaves_the_state_where_it_was() {
    let mut twins = Twins::new(StoreOptions::default(), 20).await;
    let first = state_dir(twins.dir.path());
    let parts = twins.store.state_machine.defrag_parts();
    let copied = parts.copy(0, &AtomicBool::new(false)).unwrap();
    twins.next_round().await;
    // As when the node stops or crashes before the switch.
    drop((copied, parts));
    let twins = twins.reopen(StoreOptions::default());
    let dir = twins.dir.path();
    assert_eq!(state_dir(dir), first, "the copy's database is removed");
    assert!(twins.agree());
}

/// The copy's writeback is synced in steps, not left dirty for one sync
/// at the end that would hold up the log's fdatasync behind it.
#[tokio::test]
async fn a_defrag_copy_syncs_its_database_every_few_megabytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    // Values of 8 KiB: a chunk of the copy (1,024 records) is about the
    // bytes between two syncs, so the copy may sync after every chunk.
    let value = "v".repeat(8 << 10);
    let puts = (0..3_200)
        .map(|k| put(&format!("k{k:05}"), &value))
        .collect();
    apply(&mut store.state_machine, 1, puts).await;

    let parts = store.state_machine.defrag_parts();
    let copied = parts.copy(0, &AtomicBool::new(false)).unwrap().unwrap();
    let copied_bytes = 3_200 * (8 << 10);
    assert!(
        copied.syncs >= copied_bytes / (super::database::SYNC_EVERY as u32) - 1,
        "{} syncs while copying {copied_bytes} bytes",
        copied.syncs
    );
    parts.switch(copied).unwrap();
}

/// The copy runs on a thread of its own below those that serve and apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_copied_on_a_thread_below_those_that_serve() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let sm = &mut store.state_machine;
    apply(sm, 1, vec![put("k", "v")]).await;
    let mut builder = sm.get_snapshot_builder().await;
    let preimages = sm.snapshot_preimages();
    // The copy's first chunk waits for this lock: the thread stays put.
    let held = preimages.lock().unwrap();
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    let nice = nice_once_asleep("raftset-snapsho");
    drop(held);
    assert_eq!(nice, 10);
    build.await.unwrap().expect("built");
}

/// A defrag's copy runs on a thread of its own below those that serve.
#[tokio::test]
async fn a_defrag_is_copied_on_a_thread_below_those_that_serve() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    apply(&mut store.state_machine, 1, vec![put("k", "v")]).await;
    let parts = store.state_machine.defrag_parts();
    let copy = parts.begin_copy(0).unwrap();
    let mirror = copy.mirror.clone();
    // The copy's first chunk waits for this lock: the thread stays put.
    let held = mirror.progress.lock().unwrap();
    let fill = std::thread::spawn(move || parts.fill_below_serving(copy, &AtomicBool::new(false)));
    let nice = nice_once_asleep("raftset-defcopy");
    drop(held);
    assert_eq!(nice, 10);
    assert!(fill.join().unwrap().unwrap().is_some(), "copied");
}

/// The copy reads and writes each chunk without a lock that applying
/// takes: entries that overwrite, delete and create keys behind it, ahead
/// of it, and inside a chunk it has read but not yet written land between
/// its steps, and after the switch the state is exactly what it was before.
#[tokio::test]
async fn a_defrag_copied_while_entries_apply_switches_to_the_state_they_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let sm = &mut store.state_machine;
    let keys = (0..3_000).map(|i| put(&numbered(i), "before")).collect();
    apply(sm, 1, keys).await;

    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut next_index = 3_001;
    let before = state_dir(dir.path());
    let parts = sm.defrag_parts();
    let copy = parts.begin_copy(0).unwrap();
    while let Some(chunk) = copy.read_chunk().expect("read a chunk") {
        apply(sm, next_index, random_changes(&mut rng, 300)).await;
        copy.write_chunk(chunk).expect("write a chunk");
        apply(sm, next_index + 300, random_changes(&mut rng, 25)).await;
        next_index += 325;
    }
    let state = state_records(sm);
    assert!(parts.switch(copy).unwrap().is_some(), "switched");
    assert_ne!(state_dir(dir.path()), before, "a fresh database");
    assert!(state_records(sm) == state, "the state the entries left");
}

/// The mirror writes only what the copy has passed: entries applied before
/// the copy's first chunk leave the fresh tree empty, since the copy reads
/// their keys afterwards.
#[tokio::test]
async fn a_defrag_mirrors_only_the_keys_its_copy_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let sm = &mut store.state_machine;
    let keys = (0..3_000).map(|i| put(&numbered(i), "before")).collect();
    apply(sm, 1, keys).await;
    let parts = sm.defrag_parts();
    let copy = parts.begin_copy(0).unwrap();

    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    apply(sm, 3_001, random_changes(&mut rng, 300)).await;
    assert!(
        copy.mirror.tree.is_empty(),
        "nothing mirrored ahead of the copy"
    );
    while let Some(chunk) = copy.read_chunk().expect("read a chunk") {
        copy.write_chunk(chunk).expect("write a chunk");
    }
    let state = state_records(sm);
    assert!(parts.switch(copy).unwrap().is_some(), "switched");
    assert!(state_records(sm) == state, "the state the entries left");
}

/// The nice value of the thread named `comm` once it is asleep: waiting
/// for a lock the test holds, it has set its priority by then.
fn nice_once_asleep(comm: &str) -> i64 {
    loop {
        if let Some(('S', nice)) = state_and_nice_of_thread(comm) {
            return nice;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The state and nice value of a thread of this process named `comm` (as
/// the kernel truncates it: 15 bytes), if one runs.
fn state_and_nice_of_thread(comm: &str) -> Option<(char, i64)> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|task| {
        let task = task.ok()?.path();
        let name = std::fs::read_to_string(task.join("comm")).ok()?;
        if name.trim_end() != comm {
            return None;
        }
        let stat = std::fs::read_to_string(task.join("stat")).ok()?;
        // After the name in parentheses: state is field 3, nice field 19.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let state = fields.first()?.chars().next()?;
        Some((state, fields.get(16)?.parse().ok()?))
    })
}

/// A defrag's switch replaces the tree that a snapshot copy reads without
/// the state lock, so it waits for the copy in progress to end.
#[tokio::test]
async fn a_defrag_switch_waits_for_the_snapshot_copy_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    let sm = &mut store.state_machine;
    let (copy, began) = copy_of_3000_keys(sm).await;
    let parts = sm.defrag_parts();
    let defragged = parts.copy(0, &AtomicBool::new(false)).unwrap().unwrap();

    let (switched, switch_ended) = std::sync::mpsc::channel();
    let switch = std::thread::spawn(move || {
        let size = parts.switch(defragged);
        switched.send(()).unwrap();
        size
    });
    let waited = switch_ended.recv_timeout(std::time::Duration::from_millis(300));
    assert!(waited.is_err(), "the switch waits for the copy");
    let copied = copy.records().map(|record| record.expect("copied"));
    assert!(copied.collect::<std::collections::BTreeMap<_, _>>() == began);
    drop(copy);
    let size = switch.join().unwrap().unwrap();
    assert!(size.is_some(), "switched once the copy ended");
    assert_eq!(state_records(sm), began);
}

#[tokio::test]
async fn a_snapshot_installed_during_a_defrag_outdates_its_copy() {
    let Twins {
        dir,
        mut store,
        _reference_dir,
        mut reference,
        ..
    } = Twins::new(StoreOptions::default(), 20).await;
    let only = vec![put("only", "in the snapshot")];
    apply(&mut reference.state_machine, 21, only).await;
    let (meta, bytes) = build(&mut reference.state_machine).await;
    let parts = store.state_machine.defrag_parts();
    let copied = parts.copy(0, &AtomicBool::new(false)).unwrap().unwrap();
    receive(&mut store.state_machine, &meta, &bytes)
        .await
        .unwrap();
    assert_eq!(parts.switch(copied).unwrap(), None, "the copy is outdated");
    drop(parts);
    for sm in [&mut store.state_machine, &mut reference.state_machine] {
        apply(sm, 22, vec![put("after", "it")]).await;
    }

    assert_eq!(
        super::state_machine::state_dirs(dir.path()).unwrap().len(),
        1
    );
    let reader = store.state_machine.reader();
    assert_eq!(
        reader.get(b"only").unwrap().0.unwrap().value,
        b"in the snapshot"
    );
    let keys = |sm: &StateMachine| -> Vec<_> {
        records(sm)
            .into_iter()
            .filter(|(key, _)| key.first() == Some(&keys::KEY))
            .collect()
    };
    assert_eq!(keys(&store.state_machine), keys(&reference.state_machine));
}

/// Before state databases the state was a tree of the metadata database;
/// such a directory opens with its state moved into a database of its own.
#[tokio::test]
async fn a_state_tree_in_the_metadata_database_moves_into_a_state_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), StoreOptions::default());
    apply(
        &mut store.state_machine,
        1,
        vec![put("a", "1"), put("b", "2")],
    )
    .await;
    let before = records(&store.state_machine);
    drop(store);
    // The old layout: the state in tree `sm` of `db`, no pointer.
    let state = state_dir(dir.path());
    {
        let old = when_unlocked(|| sled::open(&state));
        let meta = when_unlocked(|| sled::open(dir.path().join("db")));
        let tree = meta.open_tree(keys::FIRST_TREE).unwrap();
        for item in old.open_tree(keys::FIRST_TREE).unwrap().iter() {
            let (key, value) = item.unwrap();
            tree.insert(key, value).unwrap();
        }
        meta.drop_tree(keys::POINTER_TREE).unwrap();
        meta.flush().unwrap();
    }
    std::fs::remove_dir_all(&state).unwrap();

    let store = open(dir.path(), StoreOptions::default());
    assert_eq!(records(&store.state_machine), before);
    state_dir(dir.path());
    let names = store.meta.shared.meta.db.tree_names();
    assert!(
        !names.iter().any(|name| name.as_ref() == keys::FIRST_TREE),
        "the old tree is dropped"
    );
}

/// A defrag that comes due while a snapshot is copied begins once the
/// copy has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_defrag_waits_for_the_snapshot_copy_in_progress_to_begin() {
    let twins = Twins::new(StoreOptions::default(), 300).await;
    let first = state_dir(twins.dir.path());
    let mut twins = twins.reopen(StoreOptions {
        defrag: DEFRAG_AT_ONCE,
        ..StoreOptions::default()
    });
    let copy = twins.store.state_machine.get_snapshot_builder().await;
    // More than two of the defrag's checks, each due.
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    let dirs = super::state_machine::state_dirs(twins.dir.path()).unwrap();
    assert_eq!(dirs, vec![first.clone()], "no defrag beside the copy");
    drop(copy);
    wait_for_a_defrag(twins.dir.path(), &first);
}

/// Defragments whenever the defrag thread looks.
const DEFRAG_AT_ONCE: DefragPolicy = DefragPolicy {
    min_bytes: 1,
    ratio: 1,
    stagger: crate::stagger::Stagger::NONE,
};

/// Waits until `data_dir` holds one state database, not `first`.
fn wait_for_a_defrag(data_dir: &std::path::Path, first: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let dirs = super::state_machine::state_dirs(data_dir).unwrap();
        if dirs.len() == 1 && dirs[0] != first {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not defragmented: {dirs:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A node that takes no writes is defragmented too (nothing waits for an
/// entry to switch), and the file it is left with is a fraction of the
/// grown one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_grown_state_is_defragmented_into_a_fraction_of_its_file() {
    let options = StoreOptions {
        history_revisions: 100,
        ..StoreOptions::default()
    };
    let twins = Twins::new(options.clone(), 300).await;
    let first = state_dir(twins.dir.path());
    let grown = twins.store.meta.shared.state_db().size_on_disk();
    let twins = twins.reopen(StoreOptions {
        defrag: DEFRAG_AT_ONCE,
        ..options
    });
    wait_for_a_defrag(twins.dir.path(), &first);
    assert!(twins.agree());
    let defragged = twins.store.meta.shared.state_db().size_on_disk();
    assert!(
        defragged < grown / 2,
        "{defragged} bytes after the defrag, {grown} before"
    );
}
