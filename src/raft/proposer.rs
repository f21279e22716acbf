//! Group commit on the leader: writes that arrive while earlier ones are
//! being committed travel together in one log entry.
//!
//! openraft appends and flushes each proposed entry before it takes the
//! next one, so one entry per write would cost one fsync per write. The
//! proposer instead keeps one entry in flight and packs everything that
//! queued up meanwhile into the next one: the busier the leader, the larger
//! its batches, and one flush serves them all.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::batch;
use crate::types::{Command, Outcome, Proposal, Raft};

/// Entries proposed but not yet committed, at most. More split the same
/// queued writes into smaller entries, each appended and flushed on its own
/// (raftset bench at 64 in flight: ~30 writes per entry with 1, ~5 with 4,
/// at about the same throughput).
const ENTRIES_IN_FLIGHT: usize = 1;

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
    /// Raft gave no answer in time; the entry may still commit.
    #[error("raft did not answer within {} ms", .0.as_millis())]
    Unanswered(Duration),
}

/// Where the proposer puts its entries: openraft's log, or a stand-in in
/// the tests.
pub trait Log: Clone + Send + Sync + 'static {
    /// Proposes one entry and waits for the outcomes of its commands.
    fn append(
        &self,
        proposal: Proposal,
    ) -> impl Future<Output = Result<Vec<Outcome>, ProposeError>> + Send;

    /// Resolves once this node no longer leads in the term it leads now.
    fn leadership_lost(&self) -> impl Future<Output = ()> + Send + 'static;
}

impl Log for Raft {
    async fn append(&self, proposal: Proposal) -> Result<Vec<Outcome>, ProposeError> {
        match self.client_write(proposal).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(ProposeError::NotLeader)
            }
            Err(other) => Err(ProposeError::Raft(other.to_string())),
        }
    }

    fn leadership_lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut metrics = self.server_metrics();
        let (id, term) = {
            let now = metrics.borrow();
            (now.id, now.vote.leader_id().term)
        };
        async move {
            loop {
                {
                    let now = metrics.borrow_and_update();
                    if now.vote.leader_id().term != term || now.current_leader != Some(id) {
                        return;
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        }
    }
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
    /// `dedup_window_ms`. An entry's slot is freed when the log answers,
    /// when this node stops leading, or after `entry_timeout`, whichever
    /// comes first: openraft 0.9 leaves some entries unanswered for good
    /// (one a snapshot install skipped on a deposed leader), and a slot held
    /// by one would stop every later write.
    pub fn start<L: Log>(
        log: L,
        dedup_window_ms: u64,
        entry_timeout: Duration,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Proposer {
        let (queue, pending) = mpsc::unbounded_channel();
        let settings = Settings {
            dedup_window_ms,
            entry_timeout,
        };
        tasks.spawn(run(log, pending, settings, tasks.clone(), stop));
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

#[derive(Clone, Copy)]
struct Settings {
    dedup_window_ms: u64,
    entry_timeout: Duration,
}

async fn run<L: Log>(
    log: L,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    settings: Settings,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(ENTRIES_IN_FLIGHT));
    loop {
        let Some(first) = batch::first(&mut queue, &stop).await else {
            return;
        };
        // Wait for a free slot first: whatever queues meanwhile joins this entry.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let batch = batch::gather(first, &mut queue, |p| p.command.size(), |_| true);
        let log = log.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let (commands, replies): (Vec<Command>, Vec<_>) =
                batch.into_iter().map(|p| (p.command, p.reply)).unzip();
            let proposed_at_ms = now_ms();
            let proposal = Proposal {
                proposed_at_ms,
                forget_before_ms: proposed_at_ms.saturating_sub(settings.dedup_window_ms),
                commands,
            };
            let lost = log.leadership_lost();
            let answer = tokio::select! {
                answer = log.append(proposal) => answer,
                _ = lost => Err(ProposeError::NotLeader),
                _ = tokio::time::sleep(settings.entry_timeout) => {
                    Err(ProposeError::Unanswered(settings.entry_timeout))
                }
            };
            match answer {
                Ok(outcomes) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(error) => {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;
    use crate::types::Op;

    /// A log whose first entry is never answered, as openraft leaves an
    /// entry a snapshot install skipped; later entries commit at once.
    #[derive(Clone, Default)]
    struct FirstUnanswered {
        appends: Arc<AtomicUsize>,
        /// Resolves `leadership_lost` when notified.
        deposed: Arc<Notify>,
    }

    impl Log for FirstUnanswered {
        async fn append(&self, proposal: Proposal) -> Result<Vec<Outcome>, ProposeError> {
            if self.appends.fetch_add(1, Ordering::SeqCst) == 0 {
                std::future::pending::<()>().await;
            }
            Ok(proposal
                .commands
                .iter()
                .map(|_| Outcome::Deleted {
                    revision: 1,
                    prev: None,
                })
                .collect())
        }

        fn leadership_lost(&self) -> impl Future<Output = ()> + Send + 'static {
            let deposed = self.deposed.clone();
            async move { deposed.notified().await }
        }
    }

    fn delete(id: u8) -> Command {
        Command {
            request_id: vec![id],
            op: Op::Delete { key: vec![id] },
        }
    }

    const ENTRY_TIMEOUT: Duration = Duration::from_secs(5);
    /// Far longer than anything here should take (time is paused).
    const PATIENCE: Duration = Duration::from_secs(600);

    fn proposer(log: FirstUnanswered) -> Proposer {
        Proposer::start(
            log,
            60_000,
            ENTRY_TIMEOUT,
            &TaskTracker::new(),
            CancellationToken::new(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_never_answered_frees_its_slot_after_the_entry_timeout() {
        let proposer = proposer(FirstUnanswered::default());
        let first = tokio::time::timeout(PATIENCE, proposer.propose(delete(1)))
            .await
            .expect("the stranded entry is given up");
        assert!(
            matches!(first, Err(ProposeError::Unanswered(_))),
            "{first:?}"
        );
        let second = tokio::time::timeout(PATIENCE, proposer.propose(delete(2)))
            .await
            .expect("the next entry gets the slot");
        assert!(second.is_ok(), "{second:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn losing_leadership_frees_the_slot_at_once() {
        let log = FirstUnanswered::default();
        let proposer = proposer(log.clone());
        let first = tokio::spawn({
            let proposer = proposer.clone();
            async move { proposer.propose(delete(1)).await }
        });
        tokio::task::yield_now().await;
        log.deposed.notify_one();
        let first = tokio::time::timeout(ENTRY_TIMEOUT / 2, first)
            .await
            .expect("answered before the entry timeout")
            .unwrap();
        assert!(matches!(first, Err(ProposeError::NotLeader)), "{first:?}");
    }
}
