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

use std::collections::BTreeSet;

use openraft::{LogId, ServerState, Vote};

use crate::types::{majority_of_each, NodeId};

/// A follower's ReadIndex request: who asks, and its vote as its core held
/// it after the reads it asks for arrived.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReadIndexAsk {
    pub from: NodeId,
    pub vote: Vote<NodeId>,
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
        }
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
