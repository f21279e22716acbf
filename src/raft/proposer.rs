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
use super::step_down::Pass;
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
    /// Held until the log answers the entry, whether or not the caller
    /// still waits: a leader stepping down waits for every command it let
    /// through to be in the log or refused.
    pass: Pass,
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

    /// Proposes one command, let through by `pass`, and waits for its
    /// outcome. Callers bound how many commands wait here (the node's
    /// pending-proposal limit).
    pub async fn propose(&self, command: Command, pass: Pass) -> Result<Outcome, ProposeError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Pending {
                command,
                reply,
                pass,
            })
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
            let mut commands = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            let mut _passes = Vec::with_capacity(batch.len());
            for pending in batch {
                commands.push(pending.command);
                replies.push(pending.reply);
                _passes.push(pending.pass);
            }
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
    use crate::raft::step_down::StepDown;
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

    fn pass() -> Pass {
        StepDown::default().pass().expect("an open gate")
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
        let first = tokio::time::timeout(PATIENCE, proposer.propose(delete(1), pass()))
            .await
            .expect("the stranded entry is given up");
        assert!(
            matches!(first, Err(ProposeError::Unanswered(_))),
            "{first:?}"
        );
        let second = tokio::time::timeout(PATIENCE, proposer.propose(delete(2), pass()))
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
            async move { proposer.propose(delete(1), pass()).await }
        });
        tokio::task::yield_now().await;
        log.deposed.notify_one();
        let first = tokio::time::timeout(ENTRY_TIMEOUT / 2, first)
            .await
            .expect("answered before the entry timeout")
            .unwrap();
        assert!(matches!(first, Err(ProposeError::NotLeader)), "{first:?}");
    }

    /// A command whose caller gave up is still on its way into the log: a
    /// leader stepping down must not take its log as final until the log
    /// has answered it, so the command's pass is held until then.
    #[tokio::test(start_paused = true)]
    async fn a_command_holds_its_pass_until_the_log_answers_though_its_caller_gave_up() {
        let log = FirstUnanswered::default();
        let proposer = proposer(log.clone());
        let gate = StepDown::default();
        let caller = tokio::time::timeout(
            Duration::from_millis(10),
            proposer.propose(delete(1), gate.pass().expect("an open gate")),
        )
        .await;
        assert!(caller.is_err(), "the caller gave up: {caller:?}");

        let _stepping = gate.begin();
        let drained = tokio::spawn({
            let gate = gate.clone();
            async move { gate.drained().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!drained.is_finished(), "the entry is not answered yet");
        log.deposed.notify_waiters();
        tokio::time::timeout(PATIENCE, drained)
            .await
            .expect("the pass comes back once the log answers")
            .unwrap();
    }
}
