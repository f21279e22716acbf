//! Files read again when they change, so that a mounted Secret rotated in
//! place (certificates, token hashes) takes effect without a restart.
//!
//! Owns: telling a changed file (modification time and size, checked each
//! time the value is used, as etcd re-reads its certificates on each new
//! connection), and keeping the last good value when changed files do not
//! load (half-written, mismatched), with a warning.
//!
//! Never: knows what the files mean (the caller's loader does), nor runs
//! anything in the background.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

type Stamp = Vec<Option<(SystemTime, u64)>>;
type Loader<T, E> = Box<dyn Fn() -> Result<T, E> + Send + Sync>;

/// A value loaded from `paths`, loaded again when one of them changes.
pub struct Reloading<T, E> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Loader<T, E>,
    current: Mutex<(Stamp, Arc<T>)>,
}

impl<T, E: std::fmt::Display> Reloading<T, E> {
    /// Loads the value once; an error here is a start-up error. `what`
    /// names the value in the warnings of a later failed reload.
    pub fn open(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Reloading<T, E>, E> {
        let stamp = stamp(&paths);
        let value = load()?;
        Ok(Reloading {
            what,
            paths,
            load: Box::new(load),
            current: Mutex::new((stamp, Arc::new(value))),
        })
    }

    /// The value from the files as they are now.
    pub fn get(&self) -> Arc<T> {
        let mut current = self.current.lock().expect("reloading lock");
        let now = stamp(&self.paths);
        if now != current.0 {
            match (self.load)() {
                Ok(value) => {
                    tracing::info!(what = self.what, "files changed: using the new ones");
                    current.1 = Arc::new(value);
                }
                Err(e) => tracing::warn!(
                    what = self.what,
                    "files changed but cannot be used, keeping the previous ones: {e}"
                ),
            }
            // Either way, not again until the files change again.
            current.0 = now;
        }
        current.1.clone()
    }
}

fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_loaded_again_and_a_broken_one_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "1").unwrap();
        let read = path.clone();
        let value = Reloading::open("number", vec![path.clone()], move || {
            std::fs::read_to_string(&read)
                .map_err(|e| e.to_string())?
                .trim()
                .parse::<u32>()
                .map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(*value.get(), 1);
        // Longer each time, so the size differs within one tick of the
        // file system's clock.
        std::fs::write(&path, "22").unwrap();
        assert_eq!(*value.get(), 22);
        std::fs::write(&path, "not a number").unwrap();
        assert_eq!(*value.get(), 22);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(*value.get(), 22);
    }

    #[test]
    fn a_file_that_does_not_load_at_first_is_an_error() {
        let opened = Reloading::open("number", vec![PathBuf::from("/nonexistent")], || {
            Err::<u32, _>("missing")
        });
        assert!(opened.is_err());
    }
}
