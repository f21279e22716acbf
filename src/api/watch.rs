//! Watch streams: replay the retained history from a revision, then follow
//! the live change feed. A watcher that falls behind the feed is cancelled
//! with RESOURCE_EXHAUSTED and told where to resume, never buffered without
//! bound.
//!
//! What one watcher holds is bounded in bytes, whatever the history holds
//! and however slowly its client reads: the replay reads the history a
//! page at a time ([`WATCH_REPLAY_PAGE_BYTES`]), and the events queued for
//! the client hold at most [`WATCH_QUEUE_BYTES`] (one larger event waits
//! for an empty queue).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::error::Error;
use crate::limits::{MAX_WATCHERS, WATCH_QUEUE_BYTES, WATCH_REPLAY_PAGE_BYTES};
use crate::proto::watch_event::Kind;
use crate::proto::WatchEvent;
use crate::store::state_machine::{Change, FeedItem};
use crate::store::{KvReader, WatchFeed};
use crate::validate;

/// Events queued per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 64;

type Item = Result<WatchEvent, Status>;

/// The events of one watch, as the client takes them; an event's bytes
/// leave the queue's budget when the client's side takes it.
pub struct WatchStream {
    queued: mpsc::Receiver<(Item, Option<OwnedSemaphorePermit>)>,
}

impl Stream for WatchStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.queued
            .poll_recv(cx)
            .map(|next| next.map(|(item, _bytes)| item))
    }
}

/// The sending side: waits for room in events and in bytes.
struct Queue {
    events: mpsc::Sender<(Item, Option<OwnedSemaphorePermit>)>,
    bytes: Arc<Semaphore>,
}

impl Queue {
    fn new() -> (Queue, WatchStream) {
        let (events, queued) = mpsc::channel(STREAM_BUFFER);
        let bytes = Arc::new(Semaphore::new(WATCH_QUEUE_BYTES));
        (Queue { events, bytes }, WatchStream { queued })
    }

    /// Queues `item`; false once the client is gone.
    async fn send(&self, item: Item) -> bool {
        let size = match &item {
            Ok(event) => event
                .kv
                .as_ref()
                .map_or(0, |kv| kv.key.len() + kv.value.len()),
            Err(_) => 0,
        };
        let wanted = size.min(WATCH_QUEUE_BYTES) as u32;
        let bytes = tokio::select! {
            permit = self.bytes.clone().acquire_many_owned(wanted) => permit.ok(),
            _ = self.events.closed() => return false,
        };
        self.events.send((item, bytes)).await.is_ok()
    }

    async fn closed(&self) {
        self.events.closed().await
    }
}

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
        // Subscribe before reading history, so no change falls between the
        // two. The first page is read here, so that a start revision the
        // history no longer holds is this call's error.
        let mut live = self.feed.subscribe();
        let first_page = if start_revision > 0 {
            Some(
                self.reader
                    .history_page(&prefix, start_revision, WATCH_REPLAY_PAGE_BYTES)?,
            )
        } else {
            None
        };
        let (queue, stream) = Queue::new();
        let closing = self.closing.clone();
        let capacity = self.feed.capacity();
        let reader = self.reader.clone();
        self.tasks.spawn(async move {
            let _permit = permit;
            let mut last_sent = start_revision.saturating_sub(1);
            if let Some(mut page) = first_page {
                loop {
                    for change in &page.changes {
                        if !queue.send(Ok(event(change))).await {
                            return;
                        }
                        last_sent = change.revision;
                    }
                    let Some(next) = page.next else { break };
                    page = match reader.history_page(&prefix, next, WATCH_REPLAY_PAGE_BYTES) {
                        Ok(more) => more,
                        Err(e) => {
                            queue.send(Err(Error::from(e).into())).await;
                            return;
                        }
                    };
                }
            }
            loop {
                let item = tokio::select! {
                    item = live.recv() => item,
                    _ = queue.closed() => return,
                    _ = closing.cancelled() => {
                        queue.send(Err(Error::ShuttingDown.into())).await;
                        return;
                    }
                };
                let change = match item {
                    Ok(FeedItem::Change(change)) => change,
                    Ok(FeedItem::Reset { revision }) => {
                        queue.send(Err(Error::WatchReset { revision }.into())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let lagged = Error::WatchLagged {
                            capacity,
                            resume_from: last_sent + 1,
                        };
                        queue.send(Err(lagged.into())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if change.revision <= last_sent || !change.kv.key.starts_with(&prefix) {
                    continue;
                }
                if !queue.send(Ok(event(&change))).await {
                    return;
                }
                last_sent = change.revision;
            }
        });
        Ok(stream)
    }
}
