//! `raftset backup`: the whole store as one snapshot file, taken after a
//! read barrier (every write acknowledged before the call is in it), to
//! stdout, to a file, or as a new file in a directory of backups.
//!
//! `--dir DIR --keep N` is what a scheduled backup (a CronJob) runs. The
//! image has no shell, so naming and retention live here, and they must
//! never leave a torn file nor lose a good backup for a bad one: the new
//! backup is written under a hidden temporary name, fsynced, read back
//! whole (one that would not restore is refused), renamed to
//! `raftset-<UTC time>.backup` without replacing any file, and the
//! directory fsynced. Only then are the oldest backups beyond N removed,
//! and only files named exactly so: anything else in the directory (the
//! volume's `lost+found`, a copy someone kept, a temporary file of a run
//! that was killed) is left alone. "Oldest" is the time in the name, which
//! a copy or a restored volume does not change as it may a file's mtime.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};

use super::conn::Conn;
use super::exit::{CliError, Op};
use super::output;

const PREFIX: &str = "raftset-";
const SUFFIX: &str = ".backup";
/// Basic ISO 8601 in UTC with milliseconds: names sort as they read, and
/// two runs in the same second still get two names.
const TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";

/// `backup` without `--dir`: to stdout, or to `out` with the same care as
/// into a directory (durable and read back before it replaces `out`).
pub async fn to_file_or_stdout(conn: &Conn, out: Option<&Path>) -> Result<(), CliError> {
    let Some(path) = out else {
        receive(conn, &mut std::io::stdout().lock()).await?;
        return Ok(());
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let temp = temp_in(dir)?;
    let mut sink = std::io::BufWriter::new(temp.as_file());
    receive(conn, &mut sink).await?;
    drop(sink);
    let bytes = put_in_place(dir, temp, path, true)?.bytes;
    eprintln!("backup: {bytes} bytes written to {}", path.display());
    Ok(())
}

/// A hidden temporary file in `dir` for a backup on its way in; dropping it
/// on any failure removes it.
fn temp_in(dir: &Path) -> Result<tempfile::NamedTempFile, CliError> {
    tempfile::Builder::new()
        .prefix(".raftset-")
        .suffix(".backup.partial")
        .tempfile_in(dir)
        .map_err(|source| CliError::BackupDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// `backup --dir DIR [--keep N]`: a new backup in `dir`, then the oldest
/// beyond the newest `keep` removed (all kept without `keep`).
pub async fn into_dir(conn: &Conn, dir: &Path, keep: Option<usize>) -> Result<(), CliError> {
    let temp = temp_in(dir)?;
    let mut sink = std::io::BufWriter::new(temp.as_file());
    receive(conn, &mut sink).await?;
    drop(sink);
    let published = publish(dir, temp, keep, Utc::now())?;
    output::backup_published(
        &published.file,
        published.bytes,
        published.index,
        &published.removed,
        conn.format(),
    );
    Ok(())
}

/// Streams a backup from the cluster into `sink`; returns its size.
async fn receive(conn: &Conn, sink: &mut dyn Write) -> Result<usize, CliError> {
    let mut stream = conn
        .call(Op::Read, |mut c| async move { c.backup().await })
        .await?;
    let mut bytes = 0usize;
    let progress = super::transfer_progress("backing up");
    let read = |source: tonic::Status| CliError::Call {
        op: Op::Read,
        source: source.into(),
    };
    while let Some(chunk) = stream.message().await.map_err(read)? {
        sink.write_all(&chunk.data).map_err(CliError::Output)?;
        bytes += chunk.data.len();
        progress.inc(chunk.data.len() as u64);
    }
    progress.finish_and_clear();
    sink.flush().map_err(CliError::Output)?;
    Ok(bytes)
}

/// A backup renamed into place, and the old ones retention removed.
#[derive(Debug)]
struct Published {
    file: PathBuf,
    bytes: u64,
    index: u64,
    removed: Vec<PathBuf>,
}

/// A backup checked and in place.
#[derive(Debug)]
struct Checked {
    bytes: u64,
    /// The log index it was taken at.
    index: u64,
}

/// Makes the received backup in `temp` durable and checks that it reads
/// back whole; only then renames it to `file` (replacing it, or never, as
/// `replace` says) and makes the rename durable.
fn put_in_place(
    dir: &Path,
    mut temp: tempfile::NamedTempFile,
    file: &Path,
    replace: bool,
) -> Result<Checked, CliError> {
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CliError::BackupDir { path, source }
    };
    let temp_path = temp.path().to_path_buf();
    temp.as_file().sync_all().map_err(at(&temp_path))?;
    let index = crate::store::check_backup(temp.as_file_mut()).map_err(CliError::BadBackup)?;
    let bytes = temp.as_file().metadata().map_err(at(&temp_path))?.len();
    let persisted = if replace {
        temp.persist(file)
    } else {
        temp.persist_noclobber(file)
    };
    persisted.map_err(|e| CliError::BackupDir {
        path: file.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir)?;
    Ok(Checked { bytes, index })
}

/// Puts the received backup in `temp` in place under the name for `now`
/// (see [`put_in_place`]), and only then removes the backups beyond the
/// newest `keep`.
fn publish(
    dir: &Path,
    temp: tempfile::NamedTempFile,
    keep: Option<usize>,
    now: DateTime<Utc>,
) -> Result<Published, CliError> {
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CliError::BackupDir { path, source }
    };
    let file = dir.join(name_at(now));
    let Checked { bytes, index } = put_in_place(dir, temp, &file, false)?;
    let mut removed = Vec::new();
    if let Some(keep) = keep {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(at(dir))? {
            let entry = entry.map_err(at(dir))?;
            if entry.file_type().map_err(at(dir))?.is_file() {
                names.extend(entry.file_name().into_string());
            }
        }
        for name in beyond_newest(names, keep) {
            let path = dir.join(name);
            std::fs::remove_file(&path).map_err(at(&path))?;
            removed.push(path);
        }
        if !removed.is_empty() {
            sync_dir(dir)?;
        }
    }
    Ok(Published {
        file,
        bytes,
        index,
        removed,
    })
}

fn sync_dir(dir: &Path) -> Result<(), CliError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CliError::BackupDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// The name of a backup taken at `time`.
fn name_at(time: DateTime<Utc>) -> String {
    format!("{PREFIX}{}{SUFFIX}", time.format(TIME_FORMAT))
}

/// The time in a backup's name; `None` for any name `name_at` would not
/// have written.
fn time_of(name: &str) -> Option<NaiveDateTime> {
    let text = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let time = NaiveDateTime::parse_from_str(text, TIME_FORMAT).ok()?;
    (time.format(TIME_FORMAT).to_string() == text).then_some(time)
}

/// Among `names`, the backups beyond the newest `keep`, oldest first.
fn beyond_newest(names: impl IntoIterator<Item = String>, keep: usize) -> Vec<String> {
    let mut backups: Vec<(NaiveDateTime, String)> = names
        .into_iter()
        .filter_map(|name| time_of(&name).map(|time| (time, name)))
        .collect();
    backups.sort();
    let excess = backups.len().saturating_sub(keep);
    backups.into_iter().take(excess).map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn names_carry_the_utc_time_and_only_exact_names_are_backups() {
        let name = name_at(at("2025-03-04T05:06:07.089+02:00"));
        assert_eq!(name, "raftset-20250304T030607.089Z.backup");
        assert!(time_of(&name).is_some());
        for other in [
            "notes.txt",
            "lost+found",
            "raftset-latest.backup",
            "raftset-20250304T030607Z.backup",
            "raftset-20250304T030607.089Z.backup.bak",
            "copy-raftset-20250304T030607.089Z.backup",
            ".raftset-20250304T030607.089Z.backup.partial",
            ".raftset-x1Yz.backup.partial",
            "raftset-20251304T030607.089Z.backup",
        ] {
            assert_eq!(time_of(other), None, "{other} is not a backup's name");
        }
    }

    #[test]
    fn retention_removes_the_oldest_backups_beyond_keep_and_nothing_else() {
        let names = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let dir = names(&[
            "raftset-20250102T000000.000Z.backup",
            "notes.txt",
            "raftset-20241231T235959.999Z.backup",
            "raftset-20250101T120000.000Z.backup",
            "raftset-latest.backup",
        ]);
        let table: [(usize, &[&str]); 4] = [
            (
                1,
                &[
                    "raftset-20241231T235959.999Z.backup",
                    "raftset-20250101T120000.000Z.backup",
                ],
            ),
            (2, &["raftset-20241231T235959.999Z.backup"]),
            (3, &[]),
            (10, &[]),
        ];
        for (keep, want) in table {
            assert_eq!(beyond_newest(dir.clone(), keep), names(want), "keep {keep}");
        }
    }

    #[test]
    fn a_backup_that_does_not_read_back_is_neither_kept_nor_replaces_any() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("raftset-20000101T000000.000Z.backup");
        std::fs::write(&old, b"an older backup").unwrap();
        let mut temp = tempfile::Builder::new()
            .prefix(".raftset-")
            .tempfile_in(dir.path())
            .unwrap();
        temp.write_all(b"RAFTSET\x03 and then not a snapshot")
            .unwrap();

        let err = publish(dir.path(), temp, Some(1), Utc::now()).unwrap_err();
        assert!(matches!(err, CliError::BadBackup(_)), "{err:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(
            left,
            [old],
            "the old backup stays, the temporary file is gone"
        );
    }

    #[test]
    fn a_backup_to_a_named_file_that_does_not_read_back_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("last-night.backup");
        std::fs::write(&out, b"last night's backup").unwrap();
        let mut temp = temp_in(dir.path()).unwrap();
        temp.write_all(b"RAFTSET\x03 and then not a snapshot")
            .unwrap();

        let err = put_in_place(dir.path(), temp, &out, true).unwrap_err();
        assert!(matches!(err, CliError::BadBackup(_)), "{err:?}");
        assert_eq!(std::fs::read(&out).unwrap(), b"last night's backup");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no file left behind"
        );
    }
}
