//! Batching on a follower: the writes its clients send while earlier ones
//! are on their way to the leader travel together in the next forwarded
//! call, as the leader's proposer packs the writes that queue up into one
//! entry. Two thirds of a Service's writes land on followers; one peer
//! call each cost the follower and the leader a gRPC request apiece.
//!
//! A call carries its writes with their own deadlines, and the leader
//! answers each as soon as it has its outcome, in a stream of answers: a
//! write's outcome may hold a previous value of a megabyte, so the answers
//! of a batch do not fit one message, and none waits for another.
//!
//! Every write gets exactly one answer, whatever happens to the call: an
//! answer of the leader's, or the call's failure classified as it would be
//! for that write alone (a connection never made: not proposed; a broken
//! one: maybe proposed).
//!
//! A write that finds a call free and nobody waiting for one goes out from
//! its caller's own task: alone, it has nothing to wait for, and the hand-
//! offs to the batching task, to the call's task and back are each a
//! wake-up on a core the nodes share (see the README's put timeline).

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::attempt::{classify_forward_failure, remaining, Attempt};
use super::batch;
use super::leader_of;
use super::network::PeerClients;
use crate::error::{Error, WireStatus};
use crate::grpc::{decode, seal};
use crate::types::{Command, NodeId, Outcome, Raft};

/// Calls on their way to the leader at once, at most. A second call lets
/// the writes that arrive while one waits for its entry to commit join the
/// leader's next entry instead of the one after; more would only make the
/// batches smaller.
const CALLS_IN_FLIGHT: usize = 2;

/// One write as a follower forwards it: the command, and how long the
/// leader may take to commit it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedWrite {
    pub command: Command,
    pub timeout_ms: u64,
}

/// The leader's answer to one write of a batch, by its place in the batch.
pub type BatchAnswer = (u32, Result<Outcome, WireStatus>);

/// A write waiting for its batch's call to answer it.
pub struct Waiting {
    pub command: Command,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<Outcome, Attempt>>,
    /// Set by whichever comes first: the batching task taking the write
    /// into a call, or its caller giving up on it. A write its caller gave
    /// up on while it queued was never sent, and must not be.
    settled: Arc<AtomicBool>,
}

impl Waiting {
    /// Whether this call settled the write first.
    fn settle(&self) -> bool {
        !self.settled.swap(true, Ordering::AcqRel)
    }
}

/// Where batches go: the leader over the peer port, or a stand-in in the
/// tests.
pub trait Route: Clone + Send + Sync + 'static {
    /// Sends `batch` to the leader in one call and answers every write in
    /// it; resolves once each has its answer.
    fn deliver(&self, batch: Vec<Waiting>) -> impl Future<Output = ()> + Send;

    /// Resolves once the leader this node knows now is no longer its
    /// leader: a call to it may hang until its deadline, and must not hold
    /// a slot the next leader's writes need.
    fn leader_moved(&self) -> impl Future<Output = ()> + Send + 'static;
}

/// The handle a follower forwards writes through.
#[derive(Clone)]
pub struct Forwarder<R> {
    queue: mpsc::UnboundedSender<Waiting>,
    route: R,
    in_flight: Arc<Semaphore>,
    stop: CancellationToken,
}

impl<R: Route> Forwarder<R> {
    /// Starts the batching task on `tasks`; it ends when `stop` is
    /// cancelled or every handle is dropped.
    pub fn start(route: R, tasks: &TaskTracker, stop: CancellationToken) -> Forwarder<R> {
        let (queue, waiting) = mpsc::unbounded_channel();
        let in_flight = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
        tasks.spawn(run(
            route.clone(),
            waiting,
            in_flight.clone(),
            tasks.clone(),
            stop.clone(),
        ));
        Forwarder {
            queue,
            route,
            in_flight,
            stop,
        }
    }

    /// Forwards `command` to the leader and waits for its outcome, until
    /// `deadline`. Callers bound how many writes wait here (the clients'
    /// concurrency; the leader bounds what it takes).
    pub async fn forward(&self, command: Command, deadline: Instant) -> Result<Outcome, Attempt> {
        // A free permit means no batch waits for one: the semaphore hands
        // a released permit to its waiters before anyone may take it.
        if !self.stop.is_cancelled() {
            if let Ok(slot) = self.in_flight.clone().try_acquire_owned() {
                return self.forward_alone(command, deadline, slot).await;
            }
        }
        let (reply, answer) = oneshot::channel();
        let settled = Arc::new(AtomicBool::new(false));
        let waiting = Waiting {
            command,
            deadline,
            reply,
            settled: settled.clone(),
        };
        if self.queue.send(waiting).is_err() {
            return Err(Attempt::Fail(Error::ShuttingDown));
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Attempt::Fail(Error::ShuttingDown)),
            // Both calls are out to a leader that does not answer them.
            Err(_) if !settled.swap(true, Ordering::AcqRel) => Err(Attempt::Retry {
                proposed: false,
                why: Error::LeaderUnreachable {
                    detail: "no call to it was free before the deadline".into(),
                },
            }),
            // It may have been sent: only the leader knows.
            Err(_) => Err(unanswered()),
        }
    }

    /// Sends `command` in a call of its own from this task, holding `slot`.
    async fn forward_alone(
        &self,
        command: Command,
        deadline: Instant,
        slot: OwnedSemaphorePermit,
    ) -> Result<Outcome, Attempt> {
        let (reply, mut answer) = oneshot::channel();
        let write = Waiting {
            command,
            deadline,
            reply,
            settled: Arc::new(AtomicBool::new(true)),
        };
        let call = deliver_in_slot(&self.route, vec![write], slot);
        if tokio::time::timeout_at(deadline, call).await.is_err() {
            // Dropping the call does not take back what the leader may
            // already have proposed.
            return Err(unanswered());
        }
        answer
            .try_recv()
            .unwrap_or(Err(Attempt::Fail(Error::ShuttingDown)))
    }
}

/// A write in a call to the leader that got no answer by its deadline.
fn unanswered() -> Attempt {
    Attempt::Fail(Error::OutcomeUnknown {
        reason: "the leader did not answer the forwarded write in time".into(),
    })
}

/// Delivers `batch` holding a call's `slot`, which it lets go as soon as
/// the leader moves: a call to the old leader may hang until its deadline.
async fn deliver_in_slot<R: Route>(route: &R, batch: Vec<Waiting>, slot: OwnedSemaphorePermit) {
    let moved = route.leader_moved();
    let delivery = route.deliver(batch);
    tokio::pin!(delivery);
    tokio::select! {
        () = &mut delivery => return,
        () = moved => {}
    }
    drop(slot);
    delivery.await;
}

async fn run<R: Route>(
    route: R,
    mut waiting: mpsc::UnboundedReceiver<Waiting>,
    in_flight: Arc<Semaphore>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let Some(first) = batch::first(&mut waiting, &stop).await else {
            return;
        };
        // Wait for a free slot first: whatever queues meanwhile joins this call.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let batch = batch::gather(first, &mut waiting, |w| w.command.size(), Waiting::settle);
        if batch.is_empty() {
            continue;
        }
        let route = route.clone();
        tasks.spawn(async move { deliver_in_slot(&route, batch, slot).await });
    }
}

/// The leader over the peer port: the route of a follower's batches.
#[derive(Clone)]
pub struct ToLeader {
    pub me: NodeId,
    pub raft: Raft,
    pub peers: PeerClients,
}

impl Route for ToLeader {
    async fn deliver(&self, batch: Vec<Waiting>) {
        let leader = leader_of(&self.raft.metrics().borrow()).filter(|(id, _)| *id != self.me);
        let Some((_, leader)) = leader else {
            // Leadership moved here or away meanwhile: the writes look again.
            return answer_all(
                batch.into_iter().map(|w| w.reply),
                Attempt::Retry {
                    proposed: false,
                    why: Error::NoLeader,
                },
            );
        };
        let timeout = batch
            .iter()
            .map(|w| remaining(w.deadline))
            .max()
            .unwrap_or_default();
        let mut replies = Vec::with_capacity(batch.len());
        let writes: Vec<ForwardedWrite> = batch
            .into_iter()
            .map(|w| {
                replies.push(Some(w.reply));
                ForwardedWrite {
                    command: w.command,
                    timeout_ms: remaining(w.deadline).as_millis() as u64,
                }
            })
            .collect();
        let mut client = match self.peers.client(&leader.peer_addr) {
            Ok(client) => client,
            Err(e) => return answer_all(replies.into_iter().flatten(), Attempt::Fail(e.into())),
        };
        let request = seal(self.peers.cluster_id(), 0, &writes, timeout);
        drop(writes);
        let mut answers = match client.propose(request).await {
            Ok(answers) => answers.into_inner(),
            Err(status) => {
                let failure = classify_forward_failure(status);
                return answer_all(replies.into_iter().flatten(), failure);
            }
        };
        // Whatever ends the stream answers the writes it did not: they may
        // have been proposed.
        let failure = loop {
            let message = match answers.message().await {
                Ok(Some(message)) => message,
                Ok(None) => {
                    break Attempt::Fail(Error::OutcomeUnknown {
                        reason: "the leader's answers ended without this write's".into(),
                    })
                }
                Err(status) => break classify_forward_failure(status),
            };
            let (at, answer) = match decode::<BatchAnswer>(&message.payload) {
                Ok(answer) => answer,
                Err(e) => {
                    break Attempt::Fail(Error::OutcomeUnknown {
                        reason: format!("the leader's answer does not decode: {e}"),
                    })
                }
            };
            if let Some(reply) = replies.get_mut(at as usize).and_then(Option::take) {
                let answer = answer.map_err(|wire| classify_forward_failure(wire.into()));
                let _ = reply.send(answer);
            }
        };
        answer_all(replies.into_iter().flatten(), failure);
    }

    fn leader_moved(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut metrics = self.raft.server_metrics();
        let leader = metrics.borrow().current_leader;
        async move {
            while metrics.borrow_and_update().current_leader == leader {
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Gives each of `replies` the same answer.
fn answer_all(
    replies: impl IntoIterator<Item = oneshot::Sender<Result<Outcome, Attempt>>>,
    failure: Attempt,
) {
    for reply in replies {
        let _ = reply.send(Err(failure.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use std::time::Duration;

    use super::*;
    use crate::types::Op;

    /// A leader that answers every write with its batch's size, and holds
    /// each call until the test lets it go.
    #[derive(Clone, Default)]
    struct HeldLeader {
        calls: Arc<Mutex<Vec<usize>>>,
        release: Arc<tokio::sync::Notify>,
        moved: Arc<tokio::sync::Notify>,
    }

    impl Route for HeldLeader {
        async fn deliver(&self, batch: Vec<Waiting>) {
            self.calls.lock().unwrap().push(batch.len());
            self.release.notified().await;
            for write in batch {
                let _ = write.reply.send(Ok(Outcome::Put {
                    revision: 1,
                    prev: None,
                }));
            }
        }

        fn leader_moved(&self) -> impl Future<Output = ()> + Send + 'static {
            let moved = self.moved.clone();
            async move { moved.notified().await }
        }
    }

    fn put(i: usize) -> Command {
        Command {
            request_id: vec![b'r'; i + 1],
            op: Op::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
        }
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    /// A forwarder to a held leader, and `n` writes sent through it one
    /// after another.
    async fn sending(
        n: usize,
        deadline: Instant,
    ) -> (
        HeldLeader,
        Forwarder<HeldLeader>,
        tokio::task::JoinSet<Result<Outcome, Attempt>>,
    ) {
        let leader = HeldLeader::default();
        let forwarder = Forwarder::start(
            leader.clone(),
            &TaskTracker::new(),
            CancellationToken::new(),
        );
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..n {
            let forwarder = forwarder.clone();
            writes.spawn(async move { forwarder.forward(put(i), deadline).await });
            settle().await;
        }
        (leader, forwarder, writes)
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn writes_that_queue_while_calls_are_out_travel_in_one_call() {
        // Two calls go out at once, one write each; the next ten wait.
        let (leader, _, mut writes) = sending(12, Instant::now() + Duration::from_secs(10)).await;
        assert_eq!(*leader.calls.lock().unwrap(), vec![1, 1]);
        leader.release.notify_waiters();
        settle().await;
        assert_eq!(*leader.calls.lock().unwrap(), vec![1, 1, 10]);
        leader.release.notify_waiters();
        let mut answered = 0;
        while let Some(answer) = writes.join_next().await {
            assert!(matches!(answer.unwrap(), Ok(Outcome::Put { .. })));
            answered += 1;
        }
        assert_eq!(answered, 12, "every write answered once");
    }

    /// A leader that answers at once and notes the task each call was
    /// made from.
    #[derive(Clone, Default)]
    struct TaskNotingLeader {
        callers: Arc<Mutex<Vec<Option<tokio::task::Id>>>>,
    }

    impl Route for TaskNotingLeader {
        async fn deliver(&self, batch: Vec<Waiting>) {
            self.callers.lock().unwrap().push(tokio::task::try_id());
            for write in batch {
                let _ = write.reply.send(Ok(Outcome::Put {
                    revision: 1,
                    prev: None,
                }));
            }
        }

        fn leader_moved(&self) -> impl Future<Output = ()> + Send + 'static {
            std::future::pending()
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_write_that_finds_a_call_free_is_sent_from_its_own_task() {
        let leader = TaskNotingLeader::default();
        let forwarder = Forwarder::start(
            leader.clone(),
            &TaskTracker::new(),
            CancellationToken::new(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let write = tokio::spawn(async move {
            let answer = forwarder.forward(put(0), deadline).await;
            (tokio::task::id(), answer)
        });
        let (caller, answer) = write.await.unwrap();
        assert!(matches!(answer, Ok(Outcome::Put { .. })), "{answer:?}");
        assert_eq!(*leader.callers.lock().unwrap(), vec![Some(caller)]);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_call_to_a_leader_that_moved_frees_its_slot() {
        let (leader, _forwarder, _writes) =
            sending(3, Instant::now() + Duration::from_secs(10)).await;
        assert_eq!(*leader.calls.lock().unwrap(), vec![1, 1], "both slots held");
        leader.moved.notify_waiters();
        settle().await;
        assert_eq!(
            *leader.calls.lock().unwrap(),
            vec![1, 1, 1],
            "the waiting write goes out without waiting for the hung calls"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_write_still_queued_at_its_deadline_was_not_sent_and_never_is() {
        let (leader, forwarder, _writes) =
            sending(2, Instant::now() + Duration::from_secs(10)).await;
        let soon = Instant::now() + Duration::from_millis(100);
        let answer = forwarder.forward(put(2), soon).await;
        assert!(
            matches!(
                answer,
                Err(Attempt::Retry {
                    proposed: false,
                    why: Error::LeaderUnreachable { .. }
                })
            ),
            "{answer:?}"
        );
        leader.release.notify_waiters();
        settle().await;
        assert_eq!(
            *leader.calls.lock().unwrap(),
            vec![1, 1],
            "the write given up on is not sent once a slot frees"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_write_without_an_answer_by_its_deadline_is_unknown() {
        let (_, forwarder, _) = sending(0, Instant::now()).await;
        let answer = forwarder
            .forward(put(0), Instant::now() + Duration::from_millis(100))
            .await;
        assert!(
            matches!(answer, Err(Attempt::Fail(Error::OutcomeUnknown { .. }))),
            "{answer:?}"
        );
    }
}
