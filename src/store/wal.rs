//! The Raft log's entries on disk: append-only segment files, one
//! `fdatasync` per group of appends, as etcd's WAL does it.
//!
//! Why not a sled tree (what the log was until it showed in the benchmark):
//! a sled flush writes whatever pages changed since the last one, the state
//! machine's included, so every acknowledged write paid for rewritten B-tree
//! pages, 100 KB and more per flush at one write in flight. Here a flush
//! writes the appended records and nothing else, and the state machine is
//! flushed only when the log below it is purged (see `PurgeGate`).
//!
//! Layout: `<data_dir>/wal/<first index, 20 digits>.seg`. A record is
//! `len: u32 | crc32(index ‖ payload): u32 | index: u64 | payload`, all
//! little-endian. Indexes run on by one inside a segment; a new segment
//! starts when the current one is past [`SEGMENT_BYTES`], or where the log
//! jumps forward (openraft appends past a received snapshot before the
//! purge below it is allowed to run).
//!
//! What survives a crash: everything before the last completed [`Wal::sync`].
//! A segment is synced before the next one is created, so only the last can
//! end in a torn record; opening cuts it off there. A damaged record
//! anywhere else is corruption, reported, never skipped.
//!
//! This module stores bytes by index; it knows nothing of openraft's
//! entries, votes or purge markers (the log store above it keeps those).

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;

/// A segment past this size gets no more appends. Small enough that a purge
/// frees space soon after a snapshot, large enough that rotating (one extra
/// fdatasync and a directory sync) is rare.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
const HEADER_BYTES: usize = 16;
/// Longer than any entry the node accepts: a header claiming more is torn.
const MAX_RECORD_BYTES: u32 = 1 << 30;
const SUFFIX: &str = ".seg";

/// The bytes of entries the log holds, kept up to date by every append,
/// truncation and purge, so compaction can bound the log by its size as
/// well as by its length (`--snapshot-log-bytes`). It is the exported
/// gauge itself, so the metric and the bound never disagree.
#[derive(Debug, Clone, Default)]
pub struct LogSize(Gauge);

impl From<Gauge> for LogSize {
    fn from(gauge: Gauge) -> Self {
        LogSize(gauge)
    }
}

impl LogSize {
    pub fn bytes(&self) -> u64 {
        u64::try_from(self.0.get()).unwrap_or(0)
    }

    fn set(&self, bytes: u64) {
        self.0.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    fn add(&self, bytes: usize) {
        self.0.inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    fn remove(&self, bytes: usize) {
        self.0.dec_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// The log's entries on disk. All methods take `&self`; appends, truncations
/// and purges are serialized by one lock, and reads copy out where entries
/// are under it and read the files after.
pub(super) struct Wal {
    dir: PathBuf,
    state: Mutex<State>,
    size: LogSize,
    /// Bytes of every segment file, for the disk quota.
    disk_bytes: Arc<AtomicU64>,
}

struct State {
    /// Every segment file, by the index its name gives.
    segments: BTreeMap<u64, Segment>,
    /// Index of `locations[0]`.
    first: u64,
    /// Where each entry the log holds is, contiguous from `first`.
    locations: VecDeque<Location>,
    /// Segments written since their last sync (at most a few).
    unsynced: Vec<u64>,
}

struct Segment {
    file: Arc<File>,
    len: u64,
    /// The highest index written into it, if any.
    last: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Location {
    segment: u64,
    /// Of the record's header.
    offset: u64,
    payload: u32,
}

impl Wal {
    /// Opens `dir` (creating it), reading every segment to find the entries.
    /// Entries at or below `purged` are gone as far as the log is concerned,
    /// even where their segment is still on disk.
    pub(super) fn open(
        dir: &Path,
        purged: Option<u64>,
        size: LogSize,
        disk_bytes: Arc<AtomicU64>,
    ) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let mut names = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let name = item?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name.strip_suffix(SUFFIX) {
                let first = first
                    .parse::<u64>()
                    .map_err(|_| corrupt(dir, format!("a segment file with a bad name: {name}")))?;
                names.push(first);
            }
        }
        names.sort_unstable();
        let mut state = State {
            segments: BTreeMap::new(),
            first: 0,
            locations: VecDeque::new(),
            unsynced: Vec::new(),
        };
        let last_segment = names.last().copied();
        for name in names {
            let path = segment_path(dir, name);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let scan = scan_segment(&file)?;
            if let Some(problem) = &scan.damage {
                if Some(name) != last_segment {
                    return Err(corrupt(
                        &path,
                        format!("{problem}, before the last segment"),
                    ));
                }
                tracing::warn!(path = %path.display(), valid_bytes = scan.valid_len,
                    "the log ends in a torn record ({problem}): cutting it off, as a crash before a sync leaves it");
                file.set_len(scan.valid_len)?;
                file.sync_data()?;
            }
            let mut last = None;
            for (index, offset, payload) in scan.records {
                if last.is_some_and(|l: u64| index != l + 1) {
                    return Err(corrupt(
                        &path,
                        format!("index {index} follows {}", last.unwrap_or_default()),
                    ));
                }
                last = Some(index);
                if purged.is_some_and(|p| index <= p) {
                    continue;
                }
                state.place(
                    index,
                    Location {
                        segment: name,
                        offset,
                        payload,
                    },
                );
            }
            state.segments.insert(
                name,
                Segment {
                    file: Arc::new(file),
                    len: scan.valid_len,
                    last,
                },
            );
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
            size,
            disk_bytes,
        };
        let state = wal.lock();
        wal.size
            .set(state.locations.iter().map(|l| l.payload as u64).sum());
        wal.disk_bytes.store(state.disk_bytes(), Ordering::Relaxed);
        drop(state);
        Ok(wal)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bytes of the entries the log holds, as a live gauge.
    pub(super) fn size(&self) -> LogSize {
        self.size.clone()
    }

    /// The first and last index the log holds, if it holds any.
    pub(super) fn bounds(&self) -> Option<(u64, u64)> {
        let state = self.lock();
        state.last().map(|last| (state.first, last))
    }

    /// Writes `entries` (index, payload), in order, after the log: an index
    /// at or below the last replaces it and everything after it; one past
    /// the next drops the entries before it (they lie below a snapshot).
    /// Not durable until [`Wal::sync`].
    pub(super) fn append(&self, entries: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let mut state = self.lock();
        let mut start = 0;
        while start < entries.len() {
            let index = entries[start].0;
            match state.last() {
                Some(last) if index <= last => self.truncate_locked(&mut state, index)?,
                Some(last) if index > last + 1 => {
                    self.forget_all(&mut state);
                    self.start_segment(&mut state, index)?;
                }
                None => self.start_segment(&mut state, index)?,
                Some(_) => {}
            }
            if state.current().1 >= SEGMENT_BYTES {
                self.start_segment(&mut state, index)?;
            }
            // One write for the run of entries that follow on by one and
            // fit in the segment.
            let (segment, base) = state.current();
            let mut buf = Vec::new();
            let mut end = start;
            while end < entries.len()
                && entries[end].0 == index + (end - start) as u64
                && (end == start || base + (buf.len() as u64) < SEGMENT_BYTES)
            {
                let (at, payload) = &entries[end];
                let offset = base + buf.len() as u64;
                encode_record(&mut buf, *at, payload)?;
                state.place(
                    *at,
                    Location {
                        segment,
                        offset,
                        payload: payload.len() as u32,
                    },
                );
                self.size.add(payload.len());
                end += 1;
            }
            let file = state.segments[&segment].file.clone();
            file.write_all_at(&buf, base)?;
            let written = state.segments.get_mut(&segment).expect("the segment");
            written.len += buf.len() as u64;
            written.last = Some(entries[end - 1].0);
            self.disk_bytes
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            if !state.unsynced.contains(&segment) {
                state.unsynced.push(segment);
            }
            start = end;
        }
        Ok(())
    }

    /// Makes every append so far durable.
    pub(super) fn sync(&self) -> io::Result<()> {
        let files: Vec<Arc<File>> = {
            let mut state = self.lock();
            let unsynced = std::mem::take(&mut state.unsynced);
            unsynced
                .iter()
                .filter_map(|s| state.segments.get(s).map(|seg| seg.file.clone()))
                .collect()
        };
        for file in files {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Removes the entries from `index` on, durably.
    pub(super) fn truncate(&self, index: u64) -> io::Result<()> {
        let mut state = self.lock();
        self.truncate_locked(&mut state, index)
    }

    fn truncate_locked(&self, state: &mut State, index: u64) -> io::Result<()> {
        let Some(last) = state.last() else {
            return Ok(());
        };
        if index > last {
            return Ok(());
        }
        let from = index.max(state.first);
        let cut = state.locations[(from - state.first) as usize];
        for removed in state.locations.drain((from - state.first) as usize..) {
            self.size.remove(removed.payload as usize);
        }
        // Later segments go whole, newest first, so a crash part-way leaves
        // a log that still runs on by one; the one holding `from` is cut.
        let later: Vec<u64> = state
            .segments
            .range(cut.segment + 1..)
            .map(|(first, _)| *first)
            .rev()
            .collect();
        for first in later {
            self.remove_segment(state, first)?;
        }
        let segment = state
            .segments
            .get_mut(&cut.segment)
            .expect("the cut segment");
        self.disk_bytes
            .fetch_sub(segment.len - cut.offset, Ordering::Relaxed);
        segment.file.set_len(cut.offset)?;
        segment.file.sync_data()?;
        segment.len = cut.offset;
        segment.last = (cut.offset > 0).then(|| from - 1);
        sync_dir(&self.dir)
    }

    /// Drops the entries up to `upto` and deletes the segments that hold
    /// nothing else. The caller has made durable whatever replaces them.
    pub(super) fn purge(&self, upto: u64) -> io::Result<()> {
        let mut state = self.lock();
        match state.last() {
            Some(last) if upto >= last => self.forget_all(&mut state),
            Some(_) if upto >= state.first => {
                let drop = (upto + 1 - state.first) as usize;
                for removed in state.locations.drain(..drop) {
                    self.size.remove(removed.payload as usize);
                }
                state.first = upto + 1;
            }
            _ => {}
        }
        let doomed: Vec<u64> = state
            .segments
            .iter()
            .filter(|(_, segment)| segment.last.is_none_or(|l| l <= upto))
            .map(|(first, _)| *first)
            .filter(|first| *first <= upto)
            .collect();
        for first in doomed {
            self.remove_segment(&mut state, first)?;
        }
        Ok(())
    }

    /// The payloads of the entries in `start..end` that the log holds, in
    /// order; past `max_bytes` it stops, after at least one.
    pub(super) fn read(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<Vec<u8>>> {
        let runs = {
            let state = self.lock();
            let Some(last) = state.last() else {
                return Ok(Vec::new());
            };
            let start = start.max(state.first);
            let end = end.min(last + 1);
            let mut runs: Vec<(Arc<File>, Vec<Location>)> = Vec::new();
            let mut bytes = 0usize;
            for index in start..end {
                let location = state.locations[(index - state.first) as usize];
                if bytes > 0 && bytes + location.payload as usize > max_bytes {
                    break;
                }
                bytes += location.payload as usize;
                match runs.last_mut() {
                    Some((_, run)) if run[0].segment == location.segment => run.push(location),
                    _ => runs.push((
                        state.segments[&location.segment].file.clone(),
                        vec![location],
                    )),
                }
            }
            runs
        };
        let mut payloads = Vec::new();
        for (file, run) in runs {
            let (first, last) = (run[0], run[run.len() - 1]);
            let span = last.offset + HEADER_BYTES as u64 + last.payload as u64 - first.offset;
            let mut buf = vec![0; span as usize];
            file.read_exact_at(&mut buf, first.offset)?;
            for location in run {
                let at = (location.offset - first.offset) as usize + HEADER_BYTES;
                payloads.push(buf[at..at + location.payload as usize].to_vec());
            }
        }
        Ok(payloads)
    }

    /// Starts a new segment for entries from `index`, after syncing the
    /// current one, so that only the last segment can be torn.
    fn start_segment(&self, state: &mut State, index: u64) -> io::Result<()> {
        if let Some((&current, segment)) = state.segments.iter().next_back() {
            if segment.len == 0 {
                self.remove_segment(state, current)?;
            } else if state.unsynced.contains(&current) {
                segment.file.sync_data()?;
                state.unsynced.retain(|s| *s != current);
            }
        }
        let path = segment_path(&self.dir, index);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        state.segments.insert(
            index,
            Segment {
                file: Arc::new(file),
                len: 0,
                last: None,
            },
        );
        Ok(())
    }

    fn remove_segment(&self, state: &mut State, first: u64) -> io::Result<()> {
        if let Some(segment) = state.segments.remove(&first) {
            state.unsynced.retain(|s| *s != first);
            std::fs::remove_file(segment_path(&self.dir, first))?;
            self.disk_bytes.fetch_sub(segment.len, Ordering::Relaxed);
        }
        Ok(())
    }

    fn forget_all(&self, state: &mut State) {
        for removed in state.locations.drain(..) {
            self.size.remove(removed.payload as usize);
        }
    }
}

impl State {
    /// The segment appends go to (the last one, which the callers have
    /// made sure exists) and its length.
    fn current(&self) -> (u64, u64) {
        let (first, segment) = self.segments.iter().next_back().expect("a segment");
        (*first, segment.len)
    }

    fn last(&self) -> Option<u64> {
        (!self.locations.is_empty()).then(|| self.first + self.locations.len() as u64 - 1)
    }

    /// Records where entry `index` is; an index that does not follow on
    /// starts the log afresh from it (only a jump forward gets here).
    fn place(&mut self, index: u64, location: Location) {
        if self.last().is_none_or(|last| index != last + 1) {
            self.locations.clear();
            self.first = index;
        }
        self.locations.push_back(location);
    }

    fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SUFFIX}"))
}

fn encode_record(buf: &mut Vec<u8>, index: u64, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_RECORD_BYTES)
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "a log entry over 1 GiB"))?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&checksum(index, payload).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// What a segment holds: its whole records (index, offset, payload length)
/// and, if it ends in anything else, where and why.
struct Scan {
    records: Vec<(u64, u64, u32)>,
    valid_len: u64,
    damage: Option<String>,
}

fn scan_segment(file: &File) -> io::Result<Scan> {
    let bytes = {
        let len = file.metadata()?.len();
        let mut bytes = vec![0; len as usize];
        file.read_exact_at(&mut bytes, 0)?;
        bytes
    };
    let mut records = Vec::new();
    let mut at = 0usize;
    let damage = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break None;
        }
        if rest.len() < HEADER_BYTES {
            break Some(format!("a partial header at byte {at}"));
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(rest[8..16].try_into().expect("8 bytes"));
        if len > MAX_RECORD_BYTES || rest.len() - HEADER_BYTES < len as usize {
            break Some(format!("a partial record at byte {at}"));
        }
        let payload = &rest[HEADER_BYTES..HEADER_BYTES + len as usize];
        if checksum(index, payload) != crc {
            break Some(format!("a checksum mismatch at byte {at}"));
        }
        records.push((index, at as u64, len));
        at += HEADER_BYTES + len as usize;
    };
    Ok(Scan {
        records,
        valid_len: at as u64,
        damage,
    })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn corrupt(path: &Path, detail: String) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("the log segment {} is damaged: {detail}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, purged: Option<u64>) -> Wal {
        Wal::open(dir, purged, LogSize::default(), Arc::default()).unwrap()
    }

    /// A payload that names its index, `len` bytes long.
    fn payload(index: u64, len: usize) -> Vec<u8> {
        let mut bytes = index.to_le_bytes().to_vec();
        bytes.resize(len, index as u8);
        bytes
    }

    fn append(wal: &Wal, indexes: impl IntoIterator<Item = u64>, len: usize) {
        let entries: Vec<_> = indexes.into_iter().map(|i| (i, payload(i, len))).collect();
        wal.append(&entries).unwrap();
        wal.sync().unwrap();
    }

    fn indexes(wal: &Wal) -> Vec<u64> {
        wal.read(0, u64::MAX, usize::MAX)
            .unwrap()
            .iter()
            .map(|p| u64::from_le_bytes(p[..8].try_into().unwrap()))
            .collect()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        paths
    }

    const BIG: usize = 3 * 1024 * 1024;

    #[test]
    fn entries_survive_reopening_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path(), None);
        append(&wal, 1..=3, 100);
        append(&wal, 4..=8, BIG);
        drop(wal);

        assert!(segments(dir.path()).len() >= 2, "rotated past 8 MiB");
        let wal = open(dir.path(), None);
        assert_eq!(indexes(&wal), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(wal.read(4, 5, usize::MAX).unwrap(), [payload(4, BIG)]);
        assert_eq!(wal.read(2, 6, BIG).unwrap().len(), 2, "bounded in bytes");
        assert_eq!(wal.read(7, 100, 1).unwrap().len(), 1, "always one");
        assert_eq!(wal.size.bytes(), 300 + 5 * BIG as u64);
    }

    /// What a crash in the middle of an unsynced append leaves: the last
    /// record half written. Opening cuts it off, and the log goes on.
    #[test]
    fn a_torn_record_at_the_end_is_cut_off_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path(), None);
        append(&wal, 1..=3, 100);
        drop(wal);
        let path = segments(dir.path()).pop().unwrap();
        let valid = std::fs::metadata(&path).unwrap().len();
        let mut record = Vec::new();
        encode_record(&mut record, 4, &payload(4, 100)).unwrap();
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut &file, &record[..60]).unwrap();
        drop(file);

        let wal = open(dir.path(), None);
        assert_eq!(indexes(&wal), [1, 2, 3]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), valid, "cut off");
        append(&wal, 4..=5, 100);
        drop(wal);
        assert_eq!(indexes(&open(dir.path(), None)), [1, 2, 3, 4, 5]);
    }

    /// Only the last segment can be torn: damage anywhere before it is
    /// reported, never skipped.
    #[test]
    fn damage_before_the_last_segment_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path(), None);
        append(&wal, 1..=4, BIG);
        drop(wal);
        let first = segments(dir.path()).remove(0);
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[HEADER_BYTES + 1000] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();

        let err = Wal::open(dir.path(), None, LogSize::default(), Arc::default())
            .err()
            .expect("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(
            err.to_string().contains(&first.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_truncation_across_segments_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path(), None);
        append(&wal, 1..=6, BIG);
        assert!(segments(dir.path()).len() >= 2);
        wal.truncate(2).unwrap();
        assert_eq!(indexes(&wal), [1]);
        assert_eq!(segments(dir.path()).len(), 1, "later segments removed");
        append(&wal, 2..=3, 100);
        drop(wal);

        let wal = open(dir.path(), None);
        assert_eq!(indexes(&wal), [1, 2, 3]);
        assert_eq!(wal.read(2, 3, usize::MAX).unwrap(), [payload(2, 100)]);
        assert_eq!(wal.size.bytes(), BIG as u64 + 200);
        assert_eq!(
            wal.disk_bytes.load(Ordering::Relaxed),
            std::fs::metadata(&segments(dir.path())[0]).unwrap().len()
        );
    }

    /// A purge deletes the segments it empties; entries it dropped from a
    /// segment that stays are skipped when the purge's index is given back
    /// on opening (the log store keeps it).
    #[test]
    fn a_purge_deletes_the_segments_it_empties() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path(), None);
        append(&wal, 1..=8, BIG);
        let before = segments(dir.path()).len();
        wal.purge(4).unwrap();
        assert_eq!(indexes(&wal), [5, 6, 7, 8]);
        assert_eq!(segments(dir.path()).len(), before - 1);
        drop(wal);

        let wal = open(dir.path(), Some(4));
        assert_eq!(indexes(&wal), [5, 6, 7, 8]);
        wal.purge(8).unwrap();
        assert_eq!(wal.bounds(), None);
        assert!(segments(dir.path()).is_empty());
        append(&wal, 9..=9, 100);
        drop(wal);
        assert_eq!(indexes(&open(dir.path(), Some(8))), [9]);
    }

    /// openraft appends past a received snapshot before the purge below it
    /// may run: the entries before the jump are gone from the log at once,
    /// on opening too.
    #[test]
    fn a_jump_forward_starts_the_log_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path(), None);
        append(&wal, 1..=3, 100);
        append(&wal, 10..=11, 100);
        assert_eq!(indexes(&wal), [10, 11]);
        assert_eq!(wal.size.bytes(), 200);
        drop(wal);
        let wal = open(dir.path(), None);
        assert_eq!(indexes(&wal), [10, 11]);
        wal.purge(9).unwrap();
        assert_eq!(segments(dir.path()).len(), 1, "the old segment went");
    }
}
