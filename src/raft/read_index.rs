//! A follower's ReadIndex as its own acknowledgement of the leader.
//!
//! A leader answers a read index only once a quorum has acknowledged it
//! after the reads it answers began: normally a heartbeat round. A
//! follower asking for the index has just acknowledged the leader itself:
//! it reads its vote inside its own Raft core after every read of its
//! round arrived, and sends it along. When that vote is the leader's own,
//! the leader and the asker are a quorum in every configuration of the
//! membership, and an entry of the leader's term is committed, the leader's
//! commit index is a safe read index for the asker's reads, without a
//! round.
//!
//! Why: a write acknowledged before those reads began was committed by
//! some leader. One of a later term than ours needed a quorum at that
//! later term before the reads began, and that quorum shares a member with
//! {leader, asker}: the asker, whose vote was still ours after the reads
//! arrived, or the leader, which still holds its term as it answers. Terms
//! never go back, so neither can have been there. So the write's term is at
//! most ours, the write is in this leader's log, and once an entry of its
//! own term is committed the commit index covers it. Anything less (an
//! older vote, a pair that is not a quorum, nothing committed in this
//! term) falls back to the heartbeat round.
//!
//! **The same ask confirms the leader's own reads.** The leader's reads
//! need a quorum's acknowledgement too, given after they began. Each answer
//! carries a [`Stamp`]: the newest round of the leader's own reads opened
//! when it left ([`OwnRounds`]). The asker's next ask returns the stamp it
//! last received, and reads its vote only after. So that vote was read
//! after every read of those rounds arrived (a round opens once its reads
//! are in), and an ask that acknowledges the leader, as above, acknowledges
//! it for those rounds as well: the leader's commit index, read as it
//! answers, is their read index. While followers ask, the leader's reads
//! need no heartbeat round of their own; when none asks in time, the round
//! is a heartbeat round as before. A stamp names the leader's incarnation
//! besides the round, since a restarted leader counts its rounds from the
//! start again and an asker may still hold a stamp from before.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use openraft::{LogId, ServerState, Vote};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::types::{majority_of_each, NodeId};

/// A follower's ReadIndex request: who asks, its vote as its core held it
/// after the reads it asks for arrived, and the stamp of the last answer it
/// had received before it read that vote.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReadIndexAsk {
    pub from: NodeId,
    pub vote: Vote<NodeId>,
    pub seen: Option<Stamp>,
}

/// The leader's answer: the index the asker's reads wait for, and the
/// newest round of the leader's own reads opened before it left.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReadIndexAnswer {
    pub index: u64,
    pub stamp: Stamp,
}

/// A round of a leader's own reads: which incarnation of the leader (a
/// random number drawn at start-up) and which of its rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    pub leader: u64,
    pub round: u64,
}

/// How long the leader's own reads wait for a follower's ReadIndex to
/// acknowledge their round before a heartbeat round does, and how recent
/// such an ask must be for them to wait at all. Under load the followers'
/// rounds follow each other within a millisecond or two; a follower that
/// asks rarely is not waited for.
pub const ACKNOWLEDGEMENT_PATIENCE: Duration = Duration::from_millis(3);
/// The fewest reads the leader's rounds must have answered lately for a
/// round to wait for a follower's acknowledgement. Rounds of a read or two
/// are a lightly loaded leader, whose heartbeat rounds are cheap and whose
/// reads would only wait longer; rounds of many are a leader whose reads
/// queue for the CPU anyway, and the heartbeat rounds it saves are CPU the
/// reads get.
const READS_WORTH_WAITING: f64 = 3.0;

/// A round of the leader's own reads, just opened.
pub struct OpenRound {
    pub round: u64,
    /// The read index, once an ask acknowledged the round.
    pub acknowledged: oneshot::Receiver<u64>,
    /// Whether the round should give the followers' asks
    /// [`ACKNOWLEDGEMENT_PATIENCE`] before its heartbeat round: the leader
    /// is busy and they are asking.
    pub worth_waiting: bool,
}

/// The leader's own read rounds, waiting for an ask to acknowledge them.
pub struct OwnRounds {
    incarnation: u64,
    state: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// The newest round opened.
    opened: u64,
    rounds: Vec<(u64, oneshot::Sender<u64>)>,
    /// When an ask last acknowledged this leader.
    last_acknowledged: Option<Instant>,
    /// How many reads a round answered lately, a moving average.
    reads_per_round: f64,
}

impl Default for OwnRounds {
    fn default() -> Self {
        OwnRounds {
            incarnation: rand::random(),
            state: Mutex::default(),
        }
    }
}

impl OwnRounds {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.state.lock().expect("own read rounds lock")
    }

    /// Opens a round for the `reads` that arrived before this call: every
    /// answer that leaves from now on carries it. The round's receiver gets
    /// the read index once an ask acknowledges it.
    pub fn open(&self, reads: usize) -> OpenRound {
        let (acknowledged, wait) = oneshot::channel();
        let mut state = self.lock();
        // Over about the last eight rounds.
        state.reads_per_round += (reads as f64 - state.reads_per_round) / 8.0;
        state.opened += 1;
        let round = state.opened;
        state.rounds.push((round, acknowledged));
        let followers_asking = state
            .last_acknowledged
            .is_some_and(|at| at.elapsed() <= ACKNOWLEDGEMENT_PATIENCE);
        OpenRound {
            round,
            acknowledged: wait,
            worth_waiting: followers_asking && state.reads_per_round >= READS_WORTH_WAITING,
        }
    }

    /// Stops waiting for `round`: a heartbeat round answered it.
    pub fn close(&self, round: u64) {
        let mut state = self.lock();
        state.rounds.retain(|(r, _)| *r != round);
    }

    /// What an answer leaving now carries.
    pub fn stamp(&self) -> Stamp {
        self.stamp_of(&self.lock())
    }

    fn stamp_of(&self, state: &Waiting) -> Stamp {
        Stamp {
            leader: self.incarnation,
            round: state.opened,
        }
    }

    /// An ask that had seen `seen` acknowledged this leader, whose commit
    /// index as it checked was `index`: the rounds the stamp covers read
    /// at `index`. Returns what the answer to that ask carries.
    pub fn acknowledged(&self, seen: Option<Stamp>, index: u64) -> Stamp {
        let mut state = self.lock();
        state.last_acknowledged = Some(Instant::now());
        let stamp = self.stamp_of(&state);
        let Some(seen) = seen.filter(|s| s.leader == self.incarnation) else {
            return stamp;
        };
        let (covered, waiting) = std::mem::take(&mut state.rounds)
            .into_iter()
            .partition(|(round, _)| *round <= seen.round);
        state.rounds = waiting;
        drop(state);
        for (_, round) in covered {
            let _ = round.send(index);
        }
        stamp
    }
}

/// This leader's state as its core holds it, at the moment it answers.
pub struct LeaderState<'a> {
    pub me: NodeId,
    pub server_state: ServerState,
    pub vote: &'a Vote<NodeId>,
    pub committed: Option<LogId<NodeId>>,
    pub configs: &'a [BTreeSet<NodeId>],
}

/// The read index `ask` may use without a heartbeat round, if the asker's
/// vote acknowledges this leader (see the module doc); `None` when a round
/// is needed.
pub fn acknowledged_index(leader: &LeaderState<'_>, ask: &ReadIndexAsk) -> Option<u64> {
    let leads = leader.server_state == ServerState::Leader
        && leader.vote.is_committed()
        && leader.vote.leader_id().voted_for() == Some(leader.me);
    if !leads || ask.vote != *leader.vote || ask.from == leader.me {
        return None;
    }
    let pair = BTreeSet::from([leader.me, ask.from]);
    if leader.configs.is_empty() || !majority_of_each(leader.configs, &pair) {
        return None;
    }
    let committed = leader.committed?;
    (committed.leader_id == *leader.vote.leader_id()).then_some(committed.index)
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    const LEADER: NodeId = 1;
    const FOLLOWER: NodeId = 2;

    fn three() -> Vec<BTreeSet<NodeId>> {
        vec![BTreeSet::from([1, 2, 3])]
    }

    fn committed(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, LEADER), index))
    }

    fn answer(
        vote: Vote<NodeId>,
        server_state: ServerState,
        committed: Option<LogId<NodeId>>,
        configs: &[BTreeSet<NodeId>],
        ask: ReadIndexAsk,
    ) -> Option<u64> {
        acknowledged_index(
            &LeaderState {
                me: LEADER,
                server_state,
                vote: &vote,
                committed,
                configs,
            },
            &ask,
        )
    }

    fn ask_with(vote: Vote<NodeId>) -> ReadIndexAsk {
        ReadIndexAsk {
            from: FOLLOWER,
            vote,
            seen: None,
        }
    }

    /// A round is answered only by an ask whose stamp came from an answer
    /// that left after the round opened, from this incarnation.
    #[tokio::test]
    async fn a_round_is_acknowledged_only_by_an_ask_that_had_seen_it() {
        let own = OwnRounds::default();
        let before = own.stamp();
        let OpenRound {
            round,
            mut acknowledged,
            ..
        } = own.open(1);
        let after = own.stamp();
        assert_eq!(after.round, round);
        assert!(before.round < round);

        // Asks that had seen nothing, or only answers from before the round,
        // or a stamp of another incarnation of the leader, leave it waiting.
        own.acknowledged(None, 7);
        own.acknowledged(Some(before), 7);
        let restarted = Stamp {
            leader: after.leader.wrapping_add(1),
            round: after.round + 10,
        };
        own.acknowledged(Some(restarted), 7);
        assert!(acknowledged.try_recv().is_err());

        // One that had seen an answer from after it answers it, and every
        // round before.
        let later = own.open(1);
        assert!(later.round > round);
        let mut later_acknowledged = later.acknowledged;
        let stamp = own.acknowledged(Some(after), 9);
        assert_eq!(acknowledged.await, Ok(9));
        assert!(later_acknowledged.try_recv().is_err());
        // The answer to that ask carries the later round.
        assert_eq!(stamp.round, later.round);
        own.acknowledged(Some(stamp), 11);
        assert_eq!(later_acknowledged.await, Ok(11));
    }

    #[tokio::test]
    async fn a_closed_round_is_answered_by_no_ask() {
        let own = OwnRounds::default();
        let opened = own.open(1);
        own.close(opened.round);
        own.acknowledged(Some(own.stamp()), 3);
        assert!(opened.acknowledged.await.is_err());
    }

    /// A round is worth waiting for only while the leader's rounds answer
    /// many reads (an average over the recent ones) and followers ask.
    #[tokio::test(start_paused = true)]
    async fn rounds_wait_only_while_busy_and_while_followers_keep_asking() {
        let own = OwnRounds::default();
        for _ in 0..40 {
            assert!(!own.open(10).worth_waiting, "no follower asked yet");
        }
        // Any acknowledging ask counts, whatever it had seen.
        own.acknowledged(None, 1);
        assert!(own.open(10).worth_waiting);
        // A few light rounds do not undo a busy average at once...
        assert!(own.open(1).worth_waiting);
        // ...but a run of them does.
        for _ in 0..40 {
            own.open(1);
        }
        assert!(!own.open(1).worth_waiting);
        for _ in 0..40 {
            own.open(10);
        }
        own.acknowledged(None, 1);
        assert!(own.open(10).worth_waiting);
        tokio::time::advance(ACKNOWLEDGEMENT_PATIENCE + Duration::from_millis(1)).await;
        assert!(!own.open(10).worth_waiting, "the asks stopped");
    }

    #[test]
    fn a_follower_holding_the_leaders_vote_gets_the_commit_index() {
        let vote = Vote::new_committed(5, LEADER);
        assert_eq!(
            answer(
                vote,
                ServerState::Leader,
                committed(5, 40),
                &three(),
                ask_with(vote)
            ),
            Some(40)
        );
    }

    #[test]
    fn anything_short_of_an_acknowledgement_needs_a_round() {
        let vote = Vote::new_committed(5, LEADER);
        let ok = |configs: &[BTreeSet<NodeId>], ask: ReadIndexAsk| {
            answer(vote, ServerState::Leader, committed(5, 40), configs, ask)
        };
        // The asker's vote is of an older term, or a newer one.
        assert_eq!(ok(&three(), ask_with(Vote::new_committed(4, LEADER))), None);
        assert_eq!(ok(&three(), ask_with(Vote::new_committed(6, 3))), None);
        // The asker voted in this term but has not seen the leader win.
        assert_eq!(ok(&three(), ask_with(Vote::new(5, LEADER))), None);
        // The leader asking itself is no second member.
        let mut itself = ask_with(vote);
        itself.from = LEADER;
        assert_eq!(ok(&three(), itself), None);
        // Two of five are no quorum; a learner's word counts for nothing.
        let five = vec![BTreeSet::from([1, 2, 3, 4, 5])];
        assert_eq!(ok(&five, ask_with(vote)), None);
        let without_asker = vec![BTreeSet::from([1, 3, 4])];
        assert_eq!(ok(&without_asker, ask_with(vote)), None);
        // In a joint configuration the pair must be a quorum in both.
        let joint = vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 3, 4])];
        assert_eq!(ok(&joint, ask_with(vote)), None);
        let both = vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 2, 4])];
        assert_eq!(ok(&both, ask_with(vote)), Some(40));
        assert_eq!(ok(&[], ask_with(vote)), None);
    }

    #[test]
    fn a_leader_that_is_not_leading_or_has_not_committed_in_its_term_needs_a_round() {
        let vote = Vote::new_committed(5, LEADER);
        let ask = || ask_with(vote);
        // Its commit index is still of the term before: the first entry of
        // this term, which may cover more, is not committed yet.
        assert_eq!(
            answer(vote, ServerState::Leader, committed(4, 40), &three(), ask()),
            None
        );
        assert_eq!(
            answer(vote, ServerState::Leader, None, &three(), ask()),
            None
        );
        assert_eq!(
            answer(
                vote,
                ServerState::Follower,
                committed(5, 40),
                &three(),
                ask()
            ),
            None
        );
        // A vote for another node is not leadership, whatever the state says.
        let other = Vote::new_committed(5, 3);
        assert_eq!(
            answer(
                other,
                ServerState::Leader,
                committed(5, 40),
                &three(),
                ask_with(other)
            ),
            None
        );
        // Voted for itself, not yet elected.
        let campaigning = Vote::new(5, LEADER);
        assert_eq!(
            answer(
                campaigning,
                ServerState::Leader,
                committed(5, 40),
                &three(),
                ask_with(campaigning)
            ),
            None
        );
    }
}
