//! Watch streams: replay the retained history from a revision, then follow
//! the live change feed. A watcher that falls behind the feed is cancelled
//! with RESOURCE_EXHAUSTED and told where to resume, never buffered without
//! bound.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::error::Error;
use crate::limits::MAX_WATCHERS;
use crate::proto::watch_event::Kind;
use crate::proto::WatchEvent;
use crate::store::state_machine::{Change, FeedItem};
use crate::store::{KvReader, WatchFeed};
use crate::validate;

pub type WatchStream = ReceiverStream<Result<WatchEvent, Status>>;

/// Events queued per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 64;

/// What watch streams are made of.
#[derive(Clone)]
pub struct Watches {
    pub feed: WatchFeed,
    pub reader: KvReader,
    /// Bounds the open streams.
    pub permits: Arc<Semaphore>,
    /// Cancelled when the node stops serving clients: streams end with
    /// UNAVAILABLE.
    pub closing: CancellationToken,
    /// The streams' tasks, which the node waits for on shutdown.
    pub tasks: TaskTracker,
}

fn event(change: &Change) -> WatchEvent {
    WatchEvent {
        kind: if change.deleted {
            Kind::Delete
        } else {
            Kind::Put
        } as i32,
        kv: Some(change.kv.clone().into()),
        revision: change.revision,
    }
}

impl Watches {
    /// Starts a watch of `prefix` from `start_revision` (0: from now on).
    pub fn start(&self, prefix: Vec<u8>, start_revision: u64) -> Result<WatchStream, Error> {
        validate::key_bound("prefix", &prefix)?;
        let permit =
            self.permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::TooManyWatches {
                    limit: MAX_WATCHERS,
                })?;
        // Subscribe before reading history, so no change falls between the two.
        let mut live = self.feed.subscribe();
        let history = if start_revision > 0 {
            self.reader.history(&prefix, start_revision)?
        } else {
            Vec::new()
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let closing = self.closing.clone();
        let capacity = self.feed.capacity();
        self.tasks.spawn(async move {
            let _permit = permit;
            let mut last_sent = start_revision.saturating_sub(1);
            for change in &history {
                if tx.send(Ok(event(change))).await.is_err() {
                    return;
                }
                last_sent = change.revision;
            }
            loop {
                let item = tokio::select! {
                    item = live.recv() => item,
                    _ = tx.closed() => return,
                    _ = closing.cancelled() => {
                        let _ = tx.send(Err(Error::ShuttingDown.into())).await;
                        return;
                    }
                };
                let change = match item {
                    Ok(FeedItem::Change(change)) => change,
                    Ok(FeedItem::Reset { revision }) => {
                        let _ = tx.send(Err(Error::WatchReset { revision }.into())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let lagged = Error::WatchLagged {
                            capacity,
                            resume_from: last_sent + 1,
                        };
                        let _ = tx.send(Err(lagged.into())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if change.revision <= last_sent || !change.kv.key.starts_with(&prefix) {
                    continue;
                }
                if tx.send(Ok(event(&change))).await.is_err() {
                    return;
                }
                last_sent = change.revision;
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}
