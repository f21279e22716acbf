//! The live change feed Watch follows: every applied change, in order, and
//! a reset when a snapshot replaced the state. A broadcast channel of fixed
//! capacity, so a slow watcher falls behind and is told so, never buffered
//! without bound.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::types::KeyValue;

/// One change, as Watch reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub revision: u64,
    /// For a delete: the key with an empty value.
    pub kv: KeyValue,
    pub deleted: bool,
}

/// What watchers receive live.
#[derive(Debug, Clone)]
pub enum FeedItem {
    Change(Arc<Change>),
    /// The state was replaced by a snapshot: history before this revision
    /// may be missing, so watchers must start over.
    Reset {
        revision: u64,
    },
}

/// The live change feed.
#[derive(Clone)]
pub struct WatchFeed {
    tx: broadcast::Sender<FeedItem>,
    capacity: usize,
}

impl WatchFeed {
    pub(super) fn new(capacity: usize) -> WatchFeed {
        let (tx, _) = broadcast::channel(capacity);
        WatchFeed { tx, capacity }
    }

    /// Tells every watcher; nobody watching is fine.
    pub(super) fn send(&self, item: FeedItem) {
        let _ = self.tx.send(item);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FeedItem> {
        self.tx.subscribe()
    }

    /// How many changes a watcher may fall behind before it is cancelled.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
