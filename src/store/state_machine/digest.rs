//! State digests for `verify`: a CRC over every key and value, taken on
//! every replica right after applying a checkpoint entry, so replicas are
//! compared at the same log position.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::store::keys::KEY;
use crate::types::Digest;

/// Digests taken at checkpoints, by log index; the latest few are kept in
/// memory (they are only compared while a `verify` runs).
#[derive(Clone, Default)]
pub struct Digests(Arc<Mutex<BTreeMap<u64, Digest>>>);

impl Digests {
    const KEEP: usize = 16;

    pub fn get(&self, index: u64) -> Option<Digest> {
        self.0.lock().expect("digests lock").get(&index).cloned()
    }

    pub(super) fn record(&self, digest: Digest) {
        let mut digests = self.0.lock().expect("digests lock");
        digests.insert(digest.index, digest);
        while digests.len() > Self::KEEP {
            digests.pop_first();
        }
    }
}

/// Digests every key and value, in key order.
pub(super) fn digest(tree: &sled::Tree, index: u64, revision: u64) -> Result<Digest, sled::Error> {
    let mut crc = crc32fast::Hasher::new();
    let mut keys = 0;
    for item in tree.scan_prefix([KEY]) {
        let (key, value) = item?;
        crc.update(&(key.len() as u64).to_be_bytes());
        crc.update(&key);
        crc.update(&(value.len() as u64).to_be_bytes());
        crc.update(&value);
        keys += 1;
    }
    crc.update(&revision.to_be_bytes());
    Ok(Digest {
        index,
        revision,
        keys,
        crc: format!("{:08x}", crc.finalize()),
    })
}
