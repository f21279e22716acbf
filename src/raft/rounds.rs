//! Rounds: many callers, one call. The linearizable read path asks "what
//! index must a read wait for?" once per read; under load most of those
//! questions are asked at the same moment, and each answer costs a
//! heartbeat to a quorum (on the leader) or a peer RPC (on a follower).
//! [`Rounds`] answers every caller waiting when a round starts with that
//! round's one answer, as etcd batches ReadIndex requests.
//!
//! Why it is safe for a read index: a round starts only after every caller
//! it answers has arrived, so its leadership check and the commit index it
//! reads are taken after each of those reads began, exactly as if each had
//! asked alone at that moment. A caller that arrives while a round is in
//! flight waits for the next one: the round in flight may have read the
//! index before the caller's read began.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::batch;

/// The handle callers join rounds through.
pub struct Rounds<T> {
    queue: mpsc::UnboundedSender<oneshot::Sender<T>>,
}

impl<T: Clone + Send + 'static> Rounds<T> {
    /// Runs rounds of `round` on `tasks`, one at a time, until `stop` or
    /// until every handle is dropped. `round` is told how many callers the
    /// round answers.
    pub fn start<F, Fut>(round: F, tasks: &TaskTracker, stop: CancellationToken) -> Rounds<T>
    where
        F: Fn(usize) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send,
    {
        let (queue, mut waiting) = mpsc::unbounded_channel::<oneshot::Sender<T>>();
        tasks.spawn(async move {
            loop {
                let Some(first) = batch::first(&mut waiting, &stop).await else {
                    return;
                };
                // Reads that arrive together are made ready in one turn of
                // the scheduler, but tokio runs a task just woken next, so
                // the first of them would start a round alone and the rest
                // wait for the next. Yielding lets everything ready run
                // first, and the I/O that has arrived be read, before the
                // round gathers: one round where there were two. Batches of
                // writes do without: they queue behind the entry or call in
                // flight, and the same yield there gained nothing
                // (bench/FINDINGS.md).
                tokio::task::yield_now().await;
                // Everyone who arrived before the round starts is in it.
                let mut callers = vec![first];
                while let Ok(next) = waiting.try_recv() {
                    callers.push(next);
                }
                let answer = round(callers.len()).await;
                for caller in callers {
                    let _ = caller.send(answer.clone());
                }
            }
        });
        Rounds { queue }
    }

    /// The answer of the next round to start; none once the rounds stopped.
    pub async fn join(&self) -> Option<T> {
        let (answer, wait) = oneshot::channel();
        self.queue.send(answer).ok()?;
        wait.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// Every answer is read after its caller arrived, and callers that
    /// arrive together share rounds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_answer_is_taken_after_its_caller_arrived_and_concurrent_callers_share_rounds() {
        // The "index": how many callers have arrived so far. A round reads
        // it when it starts; a caller notes it on arrival. A safe answer is
        // never below what its caller noted.
        let arrived = Arc::new(AtomicU64::new(0));
        let rounds_run = Arc::new(AtomicU64::new(0));
        let tasks = TaskTracker::new();
        let rounds = {
            let arrived = arrived.clone();
            let rounds_run = rounds_run.clone();
            Arc::new(Rounds::start(
                move |_| {
                    let index = arrived.load(Ordering::SeqCst);
                    rounds_run.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        index
                    }
                },
                &tasks,
                CancellationToken::new(),
            ))
        };
        let callers: Vec<_> = (0..200)
            .map(|i| {
                let rounds = rounds.clone();
                let arrived = arrived.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(i * 150)).await;
                    let noted = arrived.fetch_add(1, Ordering::SeqCst) + 1;
                    let answer = rounds.join().await.expect("an answer");
                    assert!(answer >= noted, "answered {answer}, arrived as {noted}");
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        let rounds_run = rounds_run.load(Ordering::SeqCst);
        assert!(rounds_run < 200, "{rounds_run} rounds for 200 callers");
    }

    /// Callers made ready in the same turn of the scheduler share one
    /// round, although the first of them wakes the rounds at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn callers_ready_in_the_same_turn_share_one_round() {
        const CALLERS: usize = 8;
        let tasks = TaskTracker::new();
        // Each round answers how many callers it had.
        let rounds = Arc::new(Rounds::start(
            |callers| async move { callers },
            &tasks,
            CancellationToken::new(),
        ));
        // Spawned from the worker, so that all of them are queued on it
        // before any runs, as requests read in one turn are.
        let answers = tokio::spawn(async move {
            let callers: Vec<_> = (0..CALLERS)
                .map(|_| {
                    let rounds = rounds.clone();
                    tokio::spawn(async move { rounds.join().await })
                })
                .collect();
            let mut answers = Vec::new();
            for caller in callers {
                answers.push(caller.await.unwrap());
            }
            answers
        })
        .await
        .unwrap();
        assert_eq!(answers, vec![Some(CALLERS); CALLERS]);
    }
}
