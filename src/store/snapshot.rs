//! Snapshot files: a state machine tree written out record by record, so a
//! snapshot of any size streams to disk and to followers in chunks.
//!
//! Format: `RAFTSET` and the data format byte (`keys::DATA_FORMAT`),
//! a length-prefixed postcard [`SnapshotMeta`], then
//! records (`1`, key length, key, value length, value; lengths as big-endian
//! u32), then `0` and a CRC-32 of every byte before it. A file is checked
//! whole before anything is installed from it.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use super::database::{SyncPacer, SYNC_EVERY};
use super::keys::{readable_format, DATA_FORMAT, OLDEST_READABLE_FORMAT};
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 7] = b"RAFTSET";
const RECORD: u8 = 1;
const END: u8 = 0;
const CURRENT: &str = "current.snap";

/// The directory that holds the latest snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    pub fn open(dir: PathBuf) -> io::Result<SnapshotDir> {
        std::fs::create_dir_all(&dir)?;
        // Leftovers of an interrupted write or transfer.
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(SnapshotDir { dir })
    }

    pub fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    /// A fresh temporary file in this directory, for a snapshot being
    /// written or received.
    pub fn temp_file(&self) -> io::Result<(PathBuf, File)> {
        let path = self
            .dir
            .join(format!("incoming-{:016x}.tmp", rand::random::<u64>()));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, file))
    }

    /// Writes a snapshot of `records` and makes it the current one, durably.
    pub fn write<I>(&self, meta: &SnapshotMeta, records: I) -> io::Result<()>
    where
        I: IntoIterator<Item = io::Result<(Vec<u8>, Vec<u8>)>>,
    {
        crate::failpoint::stall_point("snapshot-write");
        let (path, file) = self.temp_file()?;
        let mut out = Crc32Writer::new(BufWriter::new(SyncedEvery::new(file, SYNC_EVERY)));
        out.write_all(MAGIC)?;
        out.write_all(&[DATA_FORMAT])?;
        let meta_bytes = postcard::to_stdvec(meta).map_err(io::Error::other)?;
        write_chunk(&mut out, &meta_bytes)?;
        for record in records {
            let (key, value) = record?;
            out.write_all(&[RECORD])?;
            write_chunk(&mut out, &key)?;
            write_chunk(&mut out, &value)?;
        }
        out.write_all(&[END])?;
        let crc = out.hasher.clone().finalize();
        out.inner.write_all(&crc.to_be_bytes())?;
        let file = out.inner.into_inner().map_err(|e| e.into_error())?.file;
        crate::failpoint::crash_point("snapshot-build-before-publish");
        self.publish(path, file)
    }

    /// Copies a received snapshot, already checked with [`verify`], into
    /// this directory as the current one, durably.
    pub fn install_copy(&self, received: &mut File) -> io::Result<()> {
        let (path, mut file) = self.temp_file()?;
        received.seek(SeekFrom::Start(0))?;
        io::copy(received, &mut file)?;
        self.publish(path, file)
    }

    fn publish(&self, path: PathBuf, file: File) -> io::Result<()> {
        file.sync_all()?;
        drop(file);
        std::fs::rename(&path, self.current_path())?;
        File::open(&self.dir)?.sync_all()
    }

    /// The current snapshot's meta, if there is one.
    pub fn current_meta(&self) -> io::Result<Option<SnapshotMeta>> {
        match File::open(self.current_path()) {
            Ok(file) => Ok(Some(read_meta(&mut BufReader::new(file))?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Checks a whole snapshot file (magic, framing, CRC) and returns its meta.
pub fn verify(file: &mut File) -> io::Result<SnapshotMeta> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = Crc32Reader::new(BufReader::new(&mut *file));
    let meta = read_meta(&mut reader)?;
    while read_record(&mut reader)?.is_some() {}
    let computed = reader.hasher.clone().finalize();
    let mut stored = [0u8; 4];
    reader.inner.read_exact(&mut stored)?;
    if u32::from_be_bytes(stored) != computed {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(meta)
}

/// Reads the records of a file that [`verify`] accepted.
pub fn records(
    file: &mut File,
) -> io::Result<impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>> + '_> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(file);
    read_meta(&mut reader)?;
    Ok(std::iter::from_fn(move || {
        read_record(&mut reader).transpose()
    }))
}

fn read_meta(reader: &mut impl Read) -> io::Result<SnapshotMeta> {
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic)?;
    if &magic[..7] != MAGIC {
        return Err(corrupt("not a raftset snapshot (bad magic)"));
    }
    if !readable_format(magic[7]) {
        return Err(corrupt(&format!(
            "snapshot in data format {}, this raftset reads formats {OLDEST_READABLE_FORMAT} to {DATA_FORMAT}",
            magic[7]
        )));
    }
    let bytes = read_chunk(reader)?;
    postcard::from_bytes(&bytes).map_err(|e| corrupt(&format!("bad snapshot meta: {e}")))
}

fn read_record(reader: &mut impl Read) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut tag = [0u8; 1];
    reader.read_exact(&mut tag)?;
    match tag[0] {
        END => Ok(None),
        RECORD => Ok(Some((read_chunk(reader)?, read_chunk(reader)?))),
        other => Err(corrupt(&format!("bad record tag {other}"))),
    }
}

fn write_chunk(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| corrupt("record over 4 GiB"))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(bytes)
}

/// Longest chunk a reader accepts: far above any key or value limit, low
/// enough that a corrupted length cannot make it allocate gigabytes.
const MAX_CHUNK: usize = 64 * 1024 * 1024;

fn read_chunk(reader: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CHUNK {
        return Err(corrupt(&format!("record length {len} over {MAX_CHUNK}")));
    }
    let mut bytes = vec![0u8; len];
    reader.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn corrupt(detail: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot: {detail}"))
}

/// A file written front to back, synced every `every` bytes.
struct SyncedEvery {
    file: File,
    pacer: SyncPacer,
}

impl SyncedEvery {
    fn new(file: File, every: u64) -> SyncedEvery {
        SyncedEvery {
            file,
            pacer: SyncPacer::new(every),
        }
    }
}

impl Write for SyncedEvery {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        if self.pacer.wrote(n as u64) {
            self.file.sync_data()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

struct Crc32Writer<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Crc32Writer<W> {
    fn new(inner: W) -> Self {
        Crc32Writer {
            inner,
            hasher: crc32fast::Hasher::new(),
        }
    }
}

impl<W: Write> Write for Crc32Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Crc32Reader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
}

impl<R: Read> Crc32Reader<R> {
    fn new(inner: R) -> Self {
        Crc32Reader {
            inner,
            hasher: crc32fast::Hasher::new(),
        }
    }
}

impl<R: Read> Read for Crc32Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes written through a `SyncedEvery` since its last sync.
    fn unsynced_after(writes: usize, every: u64) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let mut out = SyncedEvery::new(file, every);
        for _ in 0..writes {
            out.write_all(&[7; 1000]).unwrap();
        }
        out.pacer.unsynced
    }

    #[test]
    fn a_snapshot_file_is_synced_every_so_many_bytes() {
        assert_eq!(unsynced_after(2, 4096), 2000);
        assert_eq!(unsynced_after(5, 4096), 0, "synced at 5,000 bytes");
        assert_eq!(unsynced_after(9, 4096), 4000);
        assert_eq!(
            unsynced_after(10, 4096),
            0,
            "synced at 5,000 and 10,000 bytes"
        );
    }
}
