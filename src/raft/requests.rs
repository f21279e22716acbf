//! The request path every client entry point shares (gRPC, HTTP, embedded):
//! writes proposed on the leader or forwarded to it over the peer port, and
//! reads behind a linearizable barrier. [`Requests`] holds exactly what that
//! path uses, and nothing of clusters being formed or of the faces.
//!
//! Retries: a write carries a request id that the state machine remembers,
//! so re-sending it after an ambiguous failure (a lost connection, a leader
//! change) returns the first outcome instead of applying twice. A write that
//! still has no answer at its deadline is reported as "outcome unknown";
//! one that provably was never proposed (no leader, no quorum, overload) as
//! safe to retry.
//!
//! The space quota is the leader's to enforce, before proposing: it alone
//! decides for every write, forwarded or not, so a refusal is certain to
//! be "not proposed". Members' databases grow alike, so the leader's size
//! stands for theirs.
//!
//! Writes are refused, as never proposed, until the node's [`Formation`]
//! says it serves: the path need not know why (a founder whose founding is
//! not on record yet, a node that is not a member), only that nothing may
//! be acknowledged before.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::RaftError;
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::attempt::{forward, remaining, Attempt};
use super::forwarder::{Forwarder, ToLeader};
use super::leader_of;
use super::network::PeerClients;
use super::proposer::{ProposeError, Proposer};
use super::read_index::{
    acknowledged_index, LeaderState, OpenRound, OwnRounds, ReadIndexAnswer, ReadIndexAsk, Stamp,
    ACKNOWLEDGEMENT_PATIENCE,
};
use super::rounds::Rounds;
use super::step_down::StepDown;
use crate::error::{Error, Result};
use crate::metrics::{ProposalFailure, ProposalMetrics};
use crate::store::state_machine::{ScanPage, ScanRange};
use crate::store::{DiskUsage, KvReader};
use crate::types::{
    node_request_id, Command, Consistency, Formation, KeyValue, Member, NodeId, Op, Outcome, Raft,
};
use crate::validate;

/// Pause between attempts while a leader is elected or found.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// The least time a retried attempt is given before the deadline.
const ATTEMPT_TIME: Duration = Duration::from_millis(100);
/// How long before the caller's deadline a request is answered, at most
/// (a tenth of the deadline when that is shorter).
const ANSWER_MARGIN: Duration = Duration::from_millis(200);

/// The request path's timing and limits.
#[derive(Debug, Clone)]
pub struct RequestSettings {
    /// How long a write may wait to commit; a shorter client deadline wins.
    pub proposal_timeout: Duration,
    /// How long a leader may go without hearing from a quorum before it
    /// refuses requests as "no quorum", and how long a write waits for a
    /// leader to appear.
    pub quorum_timeout: Duration,
    /// Writes waiting to commit on this node, at most.
    pub max_pending_proposals: usize,
    /// How long request ids are remembered (`--dedup-window-secs`).
    pub dedup_window_ms: u64,
    pub quota: Quota,
}

/// The space quota (`--quota-bytes`) and what it is measured against.
#[derive(Debug, Clone)]
pub struct Quota {
    pub bytes: u64,
    pub usage: DiskUsage,
}

/// The request path of one node.
pub struct Requests {
    id: NodeId,
    raft: Raft,
    /// Batches this node's proposals while it leads.
    proposer: Proposer,
    /// Batches the writes this node forwards while it follows.
    forwarder: Forwarder<ToLeader>,
    /// Bounds the writes waiting to commit on this node.
    proposals: Arc<Semaphore>,
    reader: KvReader,
    settings: RequestSettings,
    /// Writes are taken only while this says the node serves.
    formation: Formation,
    /// Every proposal and read round passes it; shut while this leader
    /// steps down.
    step_down: StepDown,
    /// Failed and pending proposals on this node as leader.
    metrics: ProposalMetrics,
    /// One leadership check for all the reads waiting, while this leads.
    leader_reads: Rounds<Result<u64, Attempt>>,
    /// The rounds of `leader_reads` that followers' asks may acknowledge.
    own_rounds: Arc<OwnRounds>,
    /// One ReadIndex to the leader for all the reads waiting, as a follower.
    forwarded_reads: Rounds<Result<u64, Attempt>>,
}

impl Requests {
    /// The request path of the node `raft` runs, its proposer and read
    /// rounds running on `tasks` until `stop`.
    pub fn new(
        raft: Raft,
        reader: KvReader,
        peers: PeerClients,
        settings: RequestSettings,
        formation: Formation,
        metrics: ProposalMetrics,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Requests {
        let id = raft.metrics().borrow().id;
        let proposer = Proposer::start(
            raft.clone(),
            settings.dedup_window_ms,
            settings.proposal_timeout,
            tasks,
            stop.clone(),
        );
        let forwarder = Forwarder::start(
            ToLeader {
                me: id,
                raft: raft.clone(),
                peers: peers.clone(),
            },
            tasks,
            stop.clone(),
        );
        let own_rounds = Arc::new(OwnRounds::default());
        let leader_reads = {
            let raft = raft.clone();
            let own_rounds = own_rounds.clone();
            let timeout = settings.proposal_timeout;
            Rounds::start(
                move |reads| confirm_leadership(raft.clone(), own_rounds.clone(), reads, timeout),
                tasks,
                stop.clone(),
            )
        };
        let forwarded_reads = {
            let raft = raft.clone();
            let seen = Arc::new(Mutex::new(None));
            let timeout = settings.proposal_timeout;
            Rounds::start(
                move |_| ask_the_leader(id, raft.clone(), peers.clone(), seen.clone(), timeout),
                tasks,
                stop,
            )
        };
        Requests {
            id,
            raft,
            proposer,
            forwarder,
            proposals: Arc::new(Semaphore::new(settings.max_pending_proposals)),
            reader,
            settings,
            formation,
            step_down: StepDown::default(),
            metrics,
            leader_reads,
            own_rounds,
            forwarded_reads,
        }
    }

    /// The gate that holds this path's writes and read rounds, for whoever
    /// steps this leader down.
    pub fn step_down(&self) -> StepDown {
        self.step_down.clone()
    }

    /// The longest any request waits.
    pub fn proposal_timeout(&self) -> Duration {
        self.settings.proposal_timeout
    }

    /// How long replicas remember an id this node made: the retries of its
    /// write end at the proposal timeout, and an entry of an earlier try
    /// still commits, if ever, within an election or two after it. Four
    /// proposal timeouts cover both with room to spare.
    fn node_id_lifetime(&self) -> Duration {
        self.settings.proposal_timeout * 4
    }

    /// The current leader's id and membership entry, if one is known.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        leader_of(&self.raft.metrics().borrow())
    }

    /// Applies a write through Raft from any node and returns its outcome.
    /// `timeout` is the caller's deadline; the proposal timeout caps it.
    pub async fn write(
        &self,
        op: Op,
        request_id: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Outcome> {
        validate::op(&op)?;
        if !self.formation.is_serving() {
            return Err(Error::NotServing);
        }
        let command = Command {
            request_id: request_id.unwrap_or_else(|| node_request_id(self.node_id_lifetime())),
            op,
        };
        let deadline = self.deadline(timeout);
        // Without a leader, give up well before a long client deadline.
        let leaderless_deadline = Instant::now() + self.settings.quorum_timeout;
        with_retries(deadline, leaderless_deadline, || async {
            match self.leader() {
                Some((id, _)) if id == self.id => {
                    self.propose_as_leader(command.clone(), deadline).await
                }
                Some(_) => self.forwarder.forward(command.clone(), deadline).await,
                None => Err(Attempt::Retry {
                    proposed: false,
                    why: Error::NoLeader,
                }),
            }
        })
        .await
    }

    /// Proposes on this node, which believes it leads. Called for local
    /// writes and for writes forwarded by followers. Each failure counts in
    /// `raftset_proposals_failed_total` with its reason, and the write is
    /// in `raftset_proposals_pending` while it holds a pending slot.
    pub async fn propose_as_leader(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<Outcome, Attempt> {
        let proposed = self.try_propose_as_leader(command, deadline).await;
        if let Err((reason, _)) = &proposed {
            self.metrics.failed(*reason);
        }
        proposed.map_err(|(_, attempt)| attempt)
    }

    /// [`Requests::propose_as_leader`], with why it failed for the metrics.
    async fn try_propose_as_leader(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<Outcome, (ProposalFailure, Attempt)> {
        use ProposalFailure as Why;
        if !self.formation.is_serving() {
            return Err((Why::NotServing, Attempt::Fail(Error::NotServing)));
        }
        let Some(pass) = self.step_down.pass() else {
            return Err((Why::SteppingDown, self.wait_out_step_down(deadline).await));
        };
        if let Some(millis) = self.millis_without_quorum() {
            return Err((Why::NoQuorum, Attempt::Fail(Error::NoQuorum { millis })));
        }
        let quota = &self.settings.quota;
        if let Err(e) = check_quota(&command.op, quota.bytes, || quota.usage.bytes()) {
            return Err((Why::Quota, Attempt::Fail(e)));
        }
        let Ok(_permit) = self.proposals.try_acquire() else {
            return Err((
                Why::Overloaded,
                Attempt::Fail(Error::Overloaded {
                    limit: self.settings.max_pending_proposals,
                }),
            ));
        };
        let _pending = self.metrics.pending();
        match timeout_at(deadline, self.proposer.propose(command, pass)).await {
            Err(_) => Err((
                Why::Timeout,
                Attempt::Fail(Error::OutcomeUnknown {
                    reason: format!(
                        "not committed within {} ms (is a quorum reachable?)",
                        self.settings.proposal_timeout.as_millis()
                    ),
                }),
            )),
            Ok(Ok(outcome)) => Ok(outcome),
            // Leadership moved, possibly after the entry was appended.
            Ok(Err(ProposeError::NotLeader)) => Err((
                Why::LeaderChanged,
                Attempt::Retry {
                    proposed: true,
                    why: Error::NoLeader,
                },
            )),
            Ok(Err(e @ ProposeError::Unanswered(_))) => Err((
                Why::Unanswered,
                Attempt::Fail(Error::OutcomeUnknown {
                    reason: e.to_string(),
                }),
            )),
            Ok(Err(e)) => Err((Why::Raft, Attempt::Fail(Error::Raft(e.to_string())))),
        }
    }

    /// Waits until a read on this node would be linearizable: the leader
    /// confirms it still leads and names its commit index, and this node
    /// applies up to it. Returns that index.
    pub async fn read_barrier(&self, timeout: Option<Duration>) -> Result<u64> {
        let deadline = self.deadline(timeout);
        loop {
            let attempt = match self.leader() {
                Some((id, _)) if id == self.id => self.read_index_as_leader(deadline).await,
                Some(_) => self.forward_read_index(deadline).await,
                None => Err(Attempt::Retry {
                    proposed: false,
                    why: Error::NoLeader,
                }),
            };
            let why = match attempt {
                Ok(index) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok(index);
                }
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry { why, .. }) => why,
            };
            if !pause_for_another_attempt(deadline).await {
                return Err(why);
            }
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the
    /// index a linearizable read must wait for. Reads waiting together
    /// share one confirmation round (see [`super::rounds`]).
    pub async fn read_index_as_leader(&self, deadline: Instant) -> Result<u64, Attempt> {
        let Some(_pass) = self.step_down.pass() else {
            return Err(self.wait_out_step_down(deadline).await);
        };
        if let Some(millis) = self.millis_without_quorum() {
            return Err(Attempt::Fail(Error::NoQuorum { millis }));
        }
        self.join(&self.leader_reads, deadline).await
    }

    /// As the leader, for a follower's round: the index its reads must
    /// wait for, without a heartbeat round when its request acknowledges
    /// this leader ([`super::read_index`]), else as for a read here. An
    /// acknowledgement answers the rounds of this leader's own reads the
    /// asker had seen too.
    pub async fn read_index_for(
        &self,
        ask: ReadIndexAsk,
        deadline: Instant,
    ) -> Result<ReadIndexAnswer, Attempt> {
        let me = self.id;
        let seen = ask.seen;
        let acknowledged = self
            .raft
            .with_raft_state(move |state| {
                let membership = state.membership_state.effective().membership();
                acknowledged_index(
                    &LeaderState {
                        me,
                        server_state: state.server_state,
                        vote: state.vote_ref(),
                        committed: state.committed,
                        configs: membership.get_joint_config(),
                    },
                    &ask,
                )
            })
            .await;
        let (index, stamp) = match acknowledged {
            Ok(Some(index)) => (index, self.own_rounds.acknowledged(seen, index)),
            _ => {
                let index = self.read_index_as_leader(deadline).await?;
                (index, self.own_rounds.stamp())
            }
        };
        Ok(ReadIndexAnswer { index, stamp })
    }

    /// While this leader steps down: waits until another node leads or it
    /// leads on (at most until `deadline`), and has the request sent round
    /// again, to whoever leads by then. Nothing was proposed.
    async fn wait_out_step_down(&self, deadline: Instant) -> Attempt {
        let me = self.id;
        let mut metrics = self.raft.metrics();
        let moved = async move {
            // A closed channel means Raft stopped: nothing to wait for.
            let _ = metrics.wait_for(|m| m.current_leader != Some(me)).await;
        };
        let _ = timeout_at(deadline, async {
            tokio::select! {
                () = moved => {}
                () = self.step_down.over() => {}
            }
        })
        .await;
        Attempt::Retry {
            proposed: false,
            why: Error::NoLeader,
        }
    }

    /// As a follower: the leader's read index, one ReadIndex request for
    /// all the reads waiting together.
    async fn forward_read_index(&self, deadline: Instant) -> Result<u64, Attempt> {
        self.join(&self.forwarded_reads, deadline).await
    }

    async fn join(
        &self,
        rounds: &Rounds<Result<u64, Attempt>>,
        deadline: Instant,
    ) -> Result<u64, Attempt> {
        match timeout_at(deadline, rounds.join()).await {
            Err(_) => Err(Attempt::Fail(Error::NoQuorum {
                millis: self.settings.proposal_timeout.as_millis() as u64,
            })),
            Ok(None) => Err(Attempt::Fail(Error::ShuttingDown)),
            Ok(Some(answer)) => answer,
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<()> {
        // Mostly this node applied that far already. openraft's wait would
        // find out by cloning its whole metrics, once per read.
        let applied = self.raft.metrics().borrow().last_applied;
        if applied.is_some_and(|applied| applied.index >= index) {
            return Ok(());
        }
        self.raft
            .wait(Some(remaining(deadline)))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|e| Error::OutcomeUnknown {
                reason: format!("this node did not catch up in time: {e}"),
            })
    }

    pub async fn get(
        &self,
        key: &[u8],
        consistency: Consistency,
        timeout: Option<Duration>,
    ) -> Result<(Option<KeyValue>, u64)> {
        validate::key("key", key)?;
        self.barrier(consistency, timeout).await?;
        Ok(self.reader.get(key)?)
    }

    pub async fn scan(
        &self,
        range: &ScanRange,
        limit: u32,
        consistency: Consistency,
        timeout: Option<Duration>,
    ) -> Result<ScanPage> {
        let limit = validate::scan(&range.prefix, &range.start, range.end.as_deref(), limit)?;
        self.barrier(consistency, timeout).await?;
        Ok(self
            .reader
            .scan(range, limit as usize, crate::limits::MAX_SCAN_BYTES)?)
    }

    async fn barrier(&self, consistency: Consistency, timeout: Option<Duration>) -> Result<()> {
        match consistency {
            Consistency::Linearizable => self.read_barrier(timeout).await.map(|_| ()),
            Consistency::Serializable => Ok(()),
        }
    }

    /// `Some(ms)` when this leader has not heard from a quorum for longer
    /// than the quorum timeout.
    fn millis_without_quorum(&self) -> Option<u64> {
        let millis = self.raft.metrics().borrow().millis_since_quorum_ack?;
        (millis > self.settings.quorum_timeout.as_millis() as u64).then_some(millis)
    }

    /// When to answer: by the proposal timeout, and a little before the
    /// caller's own deadline, so that the caller hears why instead of
    /// timing out itself.
    fn deadline(&self, timeout: Option<Duration>) -> Instant {
        let limit = self.settings.proposal_timeout;
        let caller = timeout.map(|t| t.saturating_sub((t / 10).min(ANSWER_MARGIN)));
        Instant::now() + caller.map_or(limit, |t| t.min(limit))
    }
}

/// One leadership confirmation for the `reads` waiting on the leader: the
/// first follower ReadIndex that had seen this round and acknowledges the
/// leader ([`super::read_index`]), or else a heartbeat round to a quorum.
/// That round starts at once, unless the round is worth waiting for
/// ([`OpenRound::worth_waiting`]): then only after
/// [`ACKNOWLEDGEMENT_PATIENCE`]. Returns the index the reads wait for.
async fn confirm_leadership(
    raft: Raft,
    own_rounds: Arc<OwnRounds>,
    reads: usize,
    timeout: Duration,
) -> Result<u64, Attempt> {
    let OpenRound {
        round,
        acknowledged,
        worth_waiting,
    } = own_rounds.open(reads);
    let heartbeat_round = async {
        if worth_waiting {
            tokio::time::sleep(ACKNOWLEDGEMENT_PATIENCE).await;
        }
        heartbeat_round(raft, timeout).await
    };
    let answer = tokio::select! {
        Ok(index) = acknowledged => Ok(index),
        answer = heartbeat_round => answer,
    };
    own_rounds.close(round);
    answer
}

/// A heartbeat round to a quorum, then the index reads must wait for (once
/// this leader applied it).
async fn heartbeat_round(raft: Raft, timeout: Duration) -> Result<u64, Attempt> {
    if crate::failpoint::unanswered_point("read-heartbeat-round-unanswered") {
        std::future::pending::<()>().await;
    }
    match tokio::time::timeout(timeout, raft.ensure_linearizable()).await {
        Err(_) => Err(Attempt::Fail(Error::NoQuorum {
            millis: timeout.as_millis() as u64,
        })),
        Ok(Ok(read_log_id)) => Ok(read_log_id.map_or(0, |id| id.index)),
        Ok(Err(RaftError::APIError(_))) => Err(Attempt::Retry {
            proposed: false,
            why: Error::NoLeader,
        }),
        Ok(Err(RaftError::Fatal(e))) => Err(Attempt::Fail(Error::Raft(e.to_string()))),
    }
}

/// One ReadIndex request to the leader this node knows when it is sent,
/// with this node's vote as its core holds it now, after the reads of the
/// round arrived (the metrics may lag behind a vote just granted), and the
/// stamp of the last answer, `seen`, taken before that vote: see
/// [`super::read_index`].
async fn ask_the_leader(
    me: NodeId,
    raft: Raft,
    peers: PeerClients,
    seen: Arc<Mutex<Option<Stamp>>>,
    timeout: Duration,
) -> Result<u64, Attempt> {
    let leader = leader_of(&raft.metrics().borrow());
    match leader {
        Some((id, leader)) if id != me => {
            let deadline = Instant::now() + timeout;
            let last_stamp = *seen.lock().expect("read stamp lock");
            let vote = raft
                .with_raft_state(|state| *state.vote_ref())
                .await
                .map_err(|e| Attempt::Fail(Error::Raft(e.to_string())))?;
            let ask = ReadIndexAsk {
                from: me,
                vote,
                seen: last_stamp,
            };
            let answer: ReadIndexAnswer = forward(
                &peers,
                &leader,
                &ask,
                deadline,
                |mut client, r| async move { client.read_index(r).await },
            )
            .await?;
            *seen.lock().expect("read stamp lock") = Some(answer.stamp);
            Ok(answer.index)
        }
        // Leadership moved here or away meanwhile: the caller looks again.
        _ => Err(Attempt::Retry {
            proposed: false,
            why: Error::NoLeader,
        }),
    }
}

/// The quota's decision: at or past `quota` bytes (`used` measures them,
/// and only for a write that needs it), a write that may add data is
/// refused; deletes pass so that space can be freed, and checkpoints add
/// nothing to the state.
fn check_quota(op: &Op, quota: u64, used: impl FnOnce() -> u64) -> Result<()> {
    let adds_data = match op {
        Op::Put { .. } | Op::PutReturningPrev { .. } | Op::Increment { .. } => true,
        Op::CompareAndSwap { new, .. } => new.is_some(),
        Op::Delete { .. } | Op::Checkpoint => false,
    };
    if !adds_data {
        return Ok(());
    }
    let used = used();
    if used >= quota {
        return Err(Error::QuotaExceeded { used, quota });
    }
    Ok(())
}

/// Makes a write's attempts until one succeeds or `after_failure` gives
/// up, pausing between them.
async fn with_retries<F, A>(
    deadline: Instant,
    leaderless_deadline: Instant,
    attempt: F,
) -> Result<Outcome>
where
    F: Fn() -> A,
    A: Future<Output = Result<Outcome, Attempt>>,
{
    let mut maybe_proposed = false;
    loop {
        let failure = match attempt().await {
            Ok(outcome) => return Ok(outcome),
            Err(failure) => failure,
        };
        let another_fits = match failure {
            Attempt::Retry { .. } => pause_for_another_attempt(deadline).await,
            Attempt::Fail(_) => attempt_fits(Instant::now(), deadline),
        };
        let clock = Clock {
            past_deadline: !another_fits,
            past_leaderless_deadline: Instant::now() >= leaderless_deadline,
        };
        match after_failure(maybe_proposed, failure, clock) {
            Next::GiveUp(e) => return Err(e),
            Next::Retry { maybe_proposed: m } => maybe_proposed = m,
        }
    }
}

/// Pauses before another attempt, never past `deadline`, and says whether
/// that attempt fits before it. The time is read after the pause: on a
/// loaded machine a pause can overrun and leave the attempt too little.
async fn pause_for_another_attempt(deadline: Instant) -> bool {
    tokio::time::sleep_until((Instant::now() + RETRY_PAUSE).min(deadline)).await;
    attempt_fits(Instant::now(), deadline)
}

/// Whether an attempt starting `now` still has `ATTEMPT_TIME` before
/// `deadline`. A forwarded write cut off by the deadline is "outcome
/// unknown" although the attempts before it provably sent nothing, and
/// under load even a refused connection takes a while to be heard (a flaky
/// cluster test,
/// `a_write_that_never_reached_the_leader_is_unavailable_not_unknown`,
/// caught both).
fn attempt_fits(now: Instant, deadline: Instant) -> bool {
    now + ATTEMPT_TIME < deadline
}

/// Where a write's deadlines stand after a failed attempt.
#[derive(Debug, Clone, Copy)]
struct Clock {
    past_deadline: bool,
    /// Without a leader a write gives up well before a long client deadline.
    past_leaderless_deadline: bool,
}

/// What a write does after a failed attempt.
#[derive(Debug)]
enum Next {
    Retry { maybe_proposed: bool },
    GiveUp(Error),
}

/// The give-up decision. "Maybe proposed" is sticky: once any attempt may
/// have entered the log, every later failure is reported as "outcome
/// unknown", never as a refusal that invites a retry without the id.
fn after_failure(maybe_proposed: bool, failure: Attempt, clock: Clock) -> Next {
    match failure {
        Attempt::Fail(e @ Error::OutcomeUnknown { .. }) => Next::GiveUp(e),
        Attempt::Fail(e) if maybe_proposed => Next::GiveUp(Error::OutcomeUnknown {
            reason: format!("an earlier attempt may have been proposed, then: {e}"),
        }),
        Attempt::Fail(e) => Next::GiveUp(e),
        Attempt::Retry { proposed, why } => {
            let maybe_proposed = maybe_proposed || proposed;
            // A write never proposed gives up early, unless its leader is
            // merely unreachable: then an election is coming.
            let election_coming = matches!(why, Error::LeaderUnreachable { .. });
            let give_up = clock.past_deadline
                || (!election_coming && !maybe_proposed && clock.past_leaderless_deadline);
            if give_up {
                Next::GiveUp(if maybe_proposed {
                    Error::OutcomeUnknown {
                        reason: why.to_string(),
                    }
                } else {
                    why
                })
            } else {
                Next::Retry { maybe_proposed }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::attempt::classify_forward_failure;
    use super::*;
    use crate::error::status_says_nothing_proposed;

    fn retry(proposed: bool) -> Attempt {
        Attempt::Retry {
            proposed,
            why: Error::NoLeader,
        }
    }

    #[test]
    fn past_the_quota_only_writes_that_cannot_add_data_pass() {
        let key = || b"k".to_vec();
        let put = Op::Put {
            key: key(),
            value: b"v".to_vec(),
        };
        let increment = Op::Increment {
            key: key(),
            delta: 1,
        };
        let cas = |new: Option<&[u8]>| Op::CompareAndSwap {
            key: key(),
            expected: None,
            new: new.map(<[u8]>::to_vec),
        };
        let delete = Op::Delete { key: key() };
        // (op, bytes used, refused at a quota of 100)
        let cases = [
            (&put, 99, false),
            (&put, 100, true),
            (&put, 150, true),
            (&increment, 100, true),
            (&cas(Some(b"n")), 100, true),
            (&cas(Some(b"n")), 99, false),
            (&cas(None), 150, false),
            (&delete, 150, false),
            (&Op::Checkpoint, 150, false),
        ];
        for (op, used, refused) in cases {
            match check_quota(op, 100, || used) {
                Err(Error::QuotaExceeded {
                    used: u,
                    quota: 100,
                }) if refused => {
                    assert_eq!(u, used, "{op:?}")
                }
                Ok(()) if !refused => {}
                other => panic!("{op:?} at {used}: {other:?}"),
            }
        }
        // A refusal is final and safe to retry: nothing was proposed.
        let refusal = Error::QuotaExceeded { used: 1, quota: 1 };
        assert!(refusal.nothing_proposed());
        let never = Clock {
            past_deadline: false,
            past_leaderless_deadline: false,
        };
        match after_failure(false, Attempt::Fail(refusal), never) {
            Next::GiveUp(e) => assert!(e.nothing_proposed(), "{e}"),
            next => panic!("{next:?}"),
        }
        let from_leader =
            classify_forward_failure(Error::QuotaExceeded { used: 1, quota: 1 }.into());
        match after_failure(false, from_leader, never) {
            Next::GiveUp(e) => {
                let said_so = matches!(&e, Error::Leader(s) if status_says_nothing_proposed(s));
                assert!(said_so, "{e}");
                assert_eq!(e.http_status(), 507);
            }
            next => panic!("{next:?}"),
        }
    }

    /// After a full stop that lost pod 0's volume, its peers restart still
    /// following the old pod 0 and forward to its address, where the new,
    /// empty pod 0 refuses messages of a cluster it has not joined. That
    /// refusal (FAILED_PRECONDITION on the peer port) used to reach the
    /// client as its own answer, the code of a lost compare-and-swap: a
    /// claim about the data that nobody had checked.
    #[test]
    fn a_node_that_refuses_a_forwarded_message_is_not_the_leader_answering() {
        use crate::error::PeerError;
        let refusals = [
            PeerError::ClusterMismatch,
            PeerError::WrongTarget { this: 1, target: 2 },
        ];
        for refusal in refusals {
            let said = refusal.to_string();
            match classify_forward_failure(refusal.into()) {
                Attempt::Retry {
                    proposed: false,
                    why: Error::LeaderUnreachable { .. },
                } => {}
                Attempt::Retry { proposed, why } => {
                    panic!("{said}: retried as {why} (proposed: {proposed})")
                }
                Attempt::Fail(e) => panic!("{said}: passed on as {} ({e})", e.code()),
            }
        }
        // Past the deadline it ends as "not proposed", never as an answer.
        let late = Clock {
            past_deadline: true,
            past_leaderless_deadline: true,
        };
        let refused = classify_forward_failure(PeerError::ClusterMismatch.into());
        match after_failure(false, refused, late) {
            Next::GiveUp(e) => {
                assert!(e.nothing_proposed(), "{e}");
                assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
            }
            next => panic!("{next:?}"),
        }
    }

    /// No attempt starts so near the deadline that it could only end
    /// unanswered.
    #[test]
    fn a_retry_is_made_only_when_it_has_time_before_the_deadline() {
        let now = Instant::now();
        assert!(attempt_fits(now, now + ATTEMPT_TIME * 2));
        assert!(!attempt_fits(now, now + ATTEMPT_TIME));
        assert!(!attempt_fits(now, now + ATTEMPT_TIME / 2));
        assert!(!attempt_fits(now, now));
    }

    /// Attempts that each take 70 ms to hear a refused connection, as on a
    /// loaded machine: the last one used to start 40 ms before the
    /// deadline, get cut off there, and turn the write "outcome unknown".
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_write_whose_every_attempt_was_refused_ends_unavailable() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(400);
        let refused_slowly = || async {
            let connect = tokio::time::sleep(Duration::from_millis(70));
            match tokio::time::timeout_at(deadline, connect).await {
                Ok(()) => Err(Attempt::Retry {
                    proposed: false,
                    why: Error::LeaderUnreachable {
                        detail: "connection refused".into(),
                    },
                }),
                Err(_) => Err(Attempt::Fail(Error::OutcomeUnknown {
                    reason: "unanswered".into(),
                })),
            }
        };
        let far = start + Duration::from_secs(60);
        let failed = with_retries(deadline, far, refused_slowly)
            .await
            .unwrap_err();
        assert!(failed.nothing_proposed(), "{failed}");
        assert_eq!(tonic::Status::from(failed).code(), tonic::Code::Unavailable);
        assert!(Instant::now() <= deadline);
    }

    #[test]
    fn a_write_that_may_have_been_proposed_never_ends_as_safe_to_retry() {
        let early = Clock {
            past_deadline: false,
            past_leaderless_deadline: false,
        };
        let leaderless = Clock {
            past_deadline: false,
            past_leaderless_deadline: true,
        };
        let late = Clock {
            past_deadline: true,
            past_leaderless_deadline: true,
        };
        let overloaded = || Attempt::Fail(Error::Overloaded { limit: 1 });
        // What a follower makes of a leader's UNAVAILABLE "no quorum".
        let refused_by_leader =
            || classify_forward_failure(tonic::Status::from(Error::NoQuorum { millis: 9 }));
        let unreachable = || Attempt::Retry {
            proposed: false,
            why: Error::LeaderUnreachable {
                detail: "refused".into(),
            },
        };
        let no_quorum = || Attempt::Fail(Error::NoQuorum { millis: 9 });
        enum Expect {
            Retry(bool),
            NotProposed,
            Unknown,
        }
        // (case, maybe proposed before, this attempt, clock, expected)
        let cases: Vec<(&str, bool, Attempt, Clock, Expect)> = vec![
            (
                "no leader yet: retry",
                false,
                retry(false),
                early,
                Expect::Retry(false),
            ),
            (
                "leader moved after appending: retry, remembered",
                false,
                retry(true),
                early,
                Expect::Retry(true),
            ),
            (
                "proposed once, then no leader: still maybe",
                true,
                retry(false),
                early,
                Expect::Retry(true),
            ),
            (
                "no leader for long: not proposed",
                false,
                retry(false),
                leaderless,
                Expect::NotProposed,
            ),
            (
                "the leader refused, not proposed, for long: give up",
                false,
                refused_by_leader(),
                leaderless,
                Expect::NotProposed,
            ),
            (
                "leader unreachable for long: wait for the election",
                false,
                unreachable(),
                leaderless,
                Expect::Retry(false),
            ),
            (
                "deadline, leader never reached: not proposed",
                false,
                unreachable(),
                late,
                Expect::NotProposed,
            ),
            (
                "proposed once, no leader for long: keep trying",
                true,
                retry(false),
                leaderless,
                Expect::Retry(true),
            ),
            (
                "deadline, never proposed: not proposed",
                false,
                retry(false),
                late,
                Expect::NotProposed,
            ),
            (
                "deadline after a proposal: unknown",
                true,
                retry(false),
                late,
                Expect::Unknown,
            ),
            (
                "overloaded, never proposed: not proposed",
                false,
                overloaded(),
                early,
                Expect::NotProposed,
            ),
            (
                "overloaded after a proposal: unknown",
                true,
                overloaded(),
                early,
                Expect::Unknown,
            ),
            (
                "no quorum after a proposal: unknown",
                true,
                no_quorum(),
                early,
                Expect::Unknown,
            ),
        ];
        for (name, before, attempt, clock, expect) in cases {
            let next = after_failure(before, attempt, clock);
            match (expect, &next) {
                (Expect::Retry(m), Next::Retry { maybe_proposed }) => {
                    assert_eq!(*maybe_proposed, m, "{name}")
                }
                (Expect::NotProposed, Next::GiveUp(e)) => {
                    let said_so = matches!(e, Error::Leader(s) if status_says_nothing_proposed(s));
                    assert!(e.nothing_proposed() || said_so, "{name}: {e}")
                }
                (Expect::Unknown, Next::GiveUp(e)) => {
                    assert!(matches!(e, Error::OutcomeUnknown { .. }), "{name}: {e}")
                }
                (_, next) => panic!("{name}: {next:?}"),
            }
        }
    }
}
