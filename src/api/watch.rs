//! Watch streams: replay the retained history from a revision, then follow
//! the live change feed. A watcher that falls behind the feed is cancelled
//! with RESOURCE_EXHAUSTED and told where to resume, never buffered without
//! bound.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::validate;
use crate::error::Error;
use crate::limits::MAX_WATCHERS;
use crate::node::NodeCore;
use crate::proto::watch_event::Kind;
use crate::proto::WatchEvent;
use crate::store::state_machine::{Change, FeedItem};

pub type WatchStream = ReceiverStream<Result<WatchEvent, Status>>;

/// Events queued per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 64;

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

/// Starts a watch of `prefix` from `start_revision` (0: from now on).
pub fn start(
    core: Arc<NodeCore>,
    prefix: Vec<u8>,
    start_revision: u64,
) -> Result<WatchStream, Error> {
    validate::key_bound("prefix", &prefix)?;
    let permit = core
        .watchers
        .clone()
        .try_acquire_owned()
        .map_err(|_| Error::TooManyWatches {
            limit: MAX_WATCHERS,
        })?;
    // Subscribe before reading history, so no change falls between the two.
    let mut live = core.feed.subscribe();
    let history = if start_revision > 0 {
        core.reader.history(&prefix, start_revision)?
    } else {
        Vec::new()
    };
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
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
                _ = core.shutdown.cancelled() => {
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
                        capacity: core.feed.capacity(),
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
