//! Taking a batch off a queue, as the proposer (writes into one log entry),
//! the forwarder (writes into one call to the leader) and read-index rounds
//! (reads into one round) do: wait for the first item, then take whatever
//! else queued meanwhile, without waiting for more.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most commands in one entry, and in one batch a follower forwards.
pub const MAX_BATCH_COMMANDS: usize = 1024;
/// A batch of commands stops growing past this many bytes (it holds at
/// least one command, so it can reach this plus one maximal command).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// The next item, once one queues; `None` once `stop` is cancelled or
/// every sender is gone.
pub async fn first<T>(
    queue: &mut mpsc::UnboundedReceiver<T>,
    stop: &CancellationToken,
) -> Option<T> {
    tokio::select! {
        first = queue.recv() => first,
        _ = stop.cancelled() => None,
    }
}

/// `first` and the commands already queued behind it, up to
/// [`MAX_BATCH_COMMANDS`] and [`MAX_BATCH_BYTES`] (`size` measures one),
/// keeping only those `keep` takes.
pub fn gather<T>(
    first: T,
    queue: &mut mpsc::UnboundedReceiver<T>,
    size: impl Fn(&T) -> usize,
    mut keep: impl FnMut(&T) -> bool,
) -> Vec<T> {
    let mut bytes = 0;
    let mut batch = Vec::new();
    let mut next = Some(first);
    while let Some(item) = next.take() {
        if keep(&item) {
            bytes += size(&item);
            batch.push(item);
        }
        if batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            next = queue.try_recv().ok();
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_stops_at_its_byte_limit_and_leaves_the_rest_queued() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..4 {
            tx.send(MAX_BATCH_BYTES / 2).unwrap();
        }
        let batch = gather(1, &mut rx, |n| *n, |_| true);
        assert_eq!(batch, vec![1, MAX_BATCH_BYTES / 2, MAX_BATCH_BYTES / 2]);
        assert_eq!(rx.len(), 2, "the rest waits for the next batch");
    }

    #[test]
    fn a_batch_stops_at_its_count_limit_and_skips_what_keep_refuses() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 1..=2 * MAX_BATCH_COMMANDS {
            tx.send(i).unwrap();
        }
        let batch = gather(0, &mut rx, |_| 1, |i| i % 2 == 0);
        assert_eq!(batch.len(), MAX_BATCH_COMMANDS);
        assert!(batch.iter().all(|i| i % 2 == 0));
    }
}
