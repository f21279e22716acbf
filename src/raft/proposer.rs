//! Group commit on the leader: writes that arrive while earlier ones are
//! being committed travel together in one log entry.
//!
//! openraft appends and flushes each proposed entry before it takes the
//! next one, so one entry per write would cost one fsync per write. The
//! proposer instead keeps one entry in flight and packs everything that
//! queued up meanwhile into the next one: the busier the leader, the larger
//! its batches, and one flush serves them all.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::types::{Command, Outcome, Proposal, Raft};

/// Entries proposed but not yet committed, at most. More split the same
/// queued writes into smaller entries, each appended and flushed on its own
/// (raftset bench at 64 in flight: ~30 writes per entry with 1, ~5 with 4,
/// at about the same throughput).
const ENTRIES_IN_FLIGHT: usize = 1;
/// Most commands in one entry.
const MAX_BATCH_COMMANDS: usize = 1024;
/// An entry stops growing past this many bytes (it holds at least one
/// command, so it can reach this plus one maximal command).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Why a proposal did not produce an outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// This node does not lead (any more); the entry may have been appended
    /// before it lost leadership.
    #[error("this node is not the leader")]
    NotLeader,
    /// Raft stopped, or refused the entry.
    #[error("{0}")]
    Raft(String),
    #[error("the proposer stopped")]
    Stopped,
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

/// The handle writes are proposed through.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    /// Starts the batching task on `tasks`; it ends when `stop` is
    /// cancelled or every handle is dropped. Request ids are remembered for
    /// `dedup_window_ms`.
    pub fn start(
        raft: Raft,
        dedup_window_ms: u64,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Proposer {
        let (queue, pending) = mpsc::unbounded_channel();
        tasks.spawn(run(raft, pending, dedup_window_ms, tasks.clone(), stop));
        Proposer { queue }
    }

    /// Proposes one command and waits for its outcome. Callers bound how
    /// many commands wait here (the node's pending-proposal limit).
    pub async fn propose(&self, command: Command) -> Result<Outcome, ProposeError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Pending { command, reply })
            .map_err(|_| ProposeError::Stopped)?;
        outcome.await.unwrap_or(Err(ProposeError::Stopped))
    }
}

async fn run(
    raft: Raft,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    dedup_window_ms: u64,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(ENTRIES_IN_FLIGHT));
    loop {
        let first = tokio::select! {
            first = queue.recv() => match first {
                Some(first) => first,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        // Wait for a free slot first: whatever queues meanwhile joins this entry.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.command.size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.command.size();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let (commands, replies): (Vec<Command>, Vec<_>) =
                batch.into_iter().map(|p| (p.command, p.reply)).unzip();
            let proposed_at_ms = now_ms();
            let proposal = Proposal {
                proposed_at_ms,
                forget_before_ms: proposed_at_ms.saturating_sub(dedup_window_ms),
                commands,
            };
            match raft.client_write(proposal).await {
                Ok(response) => {
                    for (reply, outcome) in replies.into_iter().zip(response.data) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    let error = match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                            ProposeError::NotLeader
                        }
                        other => ProposeError::Raft(other.to_string()),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
