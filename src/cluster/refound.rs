//! Forcing a new cluster from one surviving voter's data, when a majority
//! of the voters is lost for good (`raftset force-new-cluster`, as etcd's
//! `--force-new-cluster` and Vault's `peers.json` recovery do).
//!
//! The decision is [`assess`], a pure function of what probing every other
//! voter found; [`force_new_cluster`] does the probing and records the
//! re-founding. It refuses, changing nothing, on a node that is no voter of
//! a cluster, while this node and the voters that answer as members of its
//! cluster make a quorum, while any member that answers follows a leader,
//! and when a voter answers that it re-founded this cluster already (this
//! node then leaves its data and joins that one, see [`super::formation`]). A probe is a `ClusterInfo` question on the peer port: it casts
//! no vote and moves no term, so asking never disturbs a working cluster.
//!
//! What it cannot tell: a voter that does not answer may be dead or cut off
//! from this node only, holding a quorum with others. The operator's part
//! (README, "Losing a majority") is to make sure the lost members are gone.
//!
//! Once the checks pass, the store records the intent durably
//! ([`crate::store::Refounding`]) and the node starts again in place; the
//! store completes the re-founding before openraft starts (a new cluster
//! id; this node the only voter; the whole log kept and committed). In a
//! pod, the restarted sole voter rewrites the founding record for the new
//! cluster ([`super::formation`]), and the lost pods, back on empty
//! volumes, join it.

use std::collections::BTreeSet;

use super::formation::{new_cluster_id, ASK_TIMEOUT};
use super::ClusterContext;
use crate::error::ClusterError;
use crate::proto::ClusterInfoRequest;
use crate::store::Refounding;
use crate::types::{majority_of_each, Member, NodeId};

/// What probing one other voter found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoterView {
    /// It answered as a member of this node's cluster, following `leader`
    /// (its name) if it knows one.
    Member { leader: Option<String> },
    /// It answered, but holds no membership of this cluster (it came back
    /// empty, or belongs to another cluster).
    Elsewhere(String),
    /// It leads or belongs to cluster `.0`, which was already re-founded
    /// by force from this node's cluster.
    Refounded(String),
    /// It did not answer.
    Unreachable(String),
}

/// Whether forcing a new cluster is allowed, given this node's id, the
/// voters of its membership (id, name), the voter sets of its
/// configuration (two while a membership change is in joint consensus:
/// a quorum is then a majority of each) and what probing the others found.
pub fn assess(
    me: NodeId,
    voters: &[(NodeId, String)],
    configs: &[BTreeSet<NodeId>],
    views: &[(NodeId, VoterView)],
) -> Result<(), ClusterError> {
    if !voters.iter().any(|(id, _)| *id == me) {
        return Err(ClusterError::NotAVoterHere { id: me });
    }
    let name = |id: NodeId| {
        voters
            .iter()
            .find(|(v, _)| *v == id)
            .map_or_else(|| format!("{id:016x}"), |(_, name)| name.clone())
    };
    for (id, view) in views {
        match view {
            VoterView::Member {
                leader: Some(leader),
            } => {
                return Err(ClusterError::LeaderReachable {
                    peer: name(*id),
                    leader: leader.clone(),
                })
            }
            VoterView::Refounded(cluster_id) => {
                return Err(ClusterError::AlreadyRefounded {
                    peer: name(*id),
                    cluster_id: cluster_id.clone(),
                })
            }
            _ => {}
        }
    }
    let reachable: BTreeSet<NodeId> = views
        .iter()
        .filter(|(_, view)| matches!(view, VoterView::Member { .. }))
        .map(|(id, _)| *id)
        .chain([me])
        .collect();
    if majority_of_each(configs, &reachable) {
        let reachable = reachable.len();
        let quorum = voters.len() / 2 + 1;
        let seen: Vec<String> = std::iter::once(format!("{} (this node)", name(me)))
            .chain(
                views
                    .iter()
                    .map(|(id, view)| format!("{}: {view}", name(*id))),
            )
            .collect();
        return Err(ClusterError::QuorumReachable {
            reachable,
            voters: voters.len(),
            quorum,
            seen: seen.join("; "),
        });
    }
    Ok(())
}

impl std::fmt::Display for VoterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VoterView::Member { .. } => write!(f, "a member, answering"),
            VoterView::Elsewhere(what) => write!(f, "answers, {what}"),
            VoterView::Refounded(cluster_id) => {
                write!(f, "answers, re-founded from this cluster as {cluster_id}")
            }
            VoterView::Unreachable(why) => write!(f, "unreachable ({why})"),
        }
    }
}

/// What a forced re-founding will make of this node.
#[derive(Debug, Clone)]
pub struct Forced {
    pub refounding: Refounding,
    pub node_id: NodeId,
    /// The last entry of the log, all of which the new cluster keeps.
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Every other voter and what probing it found.
    pub lost: Vec<(NodeId, Member, VoterView)>,
}

/// Asks the voter `id` (`member`) what it belongs to and whom it follows.
/// Another node answering at its address (its volume was replaced, the
/// new node may even be joining) is not that voter. A leader that is this
/// node does not count: it may be a leader that lost its quorum, which
/// openraft does not step down (nor does a restart on its data).
async fn probe(ctx: &ClusterContext, ours: &str, id: NodeId, member: &Member) -> VoterView {
    let mut client = match ctx.peer(&member.peer_addr) {
        Ok(client) => client,
        Err(e) => return VoterView::Unreachable(e.to_string()),
    };
    let mut request = tonic::Request::new(ClusterInfoRequest { asker_id: ctx.id });
    request.set_timeout(ASK_TIMEOUT);
    match client.cluster_info(request).await {
        Ok(info) => {
            let info = info.into_inner();
            if info.node_id != id {
                return VoterView::Elsewhere(format!(
                    "but as another node ({:016x}): this member's volume was replaced",
                    info.node_id
                ));
            }
            if info.refounded_from == ours {
                return VoterView::Refounded(info.cluster_id);
            }
            if info.cluster_id != ours {
                let what = if info.cluster_id.is_empty() {
                    "holding no membership of this cluster".to_string()
                } else {
                    format!("a member of another cluster {}", info.cluster_id)
                };
                return VoterView::Elsewhere(what);
            }
            let leader = info.leader_id.filter(|id| *id != ctx.id).map(|id| {
                let membership = ctx.raft_metrics().membership_config.membership().clone();
                membership
                    .get_node(&id)
                    .map_or_else(|| format!("{id:016x}"), |m| m.name.clone())
            });
            VoterView::Member { leader }
        }
        Err(status) => VoterView::Unreachable(status.message().to_string()),
    }
}

/// Checks that no quorum of this node's cluster is reachable, then records
/// the re-founding durably and asks for the node to start again, which
/// completes it. On any refusal nothing has changed.
pub async fn force_new_cluster(ctx: &ClusterContext) -> Result<Forced, ClusterError> {
    let metrics = ctx.raft_metrics();
    let membership = metrics.membership_config.membership().clone();
    let ours = ctx.cluster_id.get();
    let voters: Vec<(NodeId, Member)> = membership
        .voter_ids()
        .filter_map(|id| membership.get_node(&id).map(|m| (id, m.clone())))
        .collect();
    if ours.is_empty() {
        return Err(ClusterError::NotAVoterHere { id: ctx.id });
    }
    // All at once: each unreachable voter costs a whole ASK_TIMEOUT.
    let others: Vec<&(NodeId, Member)> = voters.iter().filter(|(id, _)| *id != ctx.id).collect();
    let probes = others
        .iter()
        .map(|(id, member)| probe(ctx, &ours, *id, member));
    let found = futures::future::join_all(probes).await;
    let mut views = Vec::new();
    let mut lost = Vec::new();
    for ((id, member), view) in others.into_iter().zip(found) {
        views.push((*id, view.clone()));
        lost.push((*id, member.clone(), view));
    }
    let names: Vec<(NodeId, String)> = voters.iter().map(|(id, m)| (*id, m.name.clone())).collect();
    assess(ctx.id, &names, membership.get_joint_config(), &views)?;
    let refounding = Refounding {
        cluster_id: new_cluster_id(),
        previous_cluster_id: ours,
        member: ctx.me.clone(),
    };
    if !ctx.meta.mark_for_refounding(&refounding)? {
        return Err(ClusterError::RefoundingUnderWay);
    }
    let forced = Forced {
        refounding,
        node_id: ctx.id,
        last_log_index: metrics.last_log_index.unwrap_or(0),
        applied_index: metrics.last_applied.map_or(0, |l| l.index),
        lost,
    };
    let reason = format!(
        "forcing a new cluster {} from cluster {} on this node's data (log up to index {})",
        forced.refounding.cluster_id, forced.refounding.previous_cluster_id, forced.last_log_index
    );
    tracing::warn!("{reason}");
    ctx.stop.restart(reason);
    Ok(forced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(n: u64) -> Vec<(NodeId, String)> {
        (1..=n)
            .map(|id| (id, format!("raftset-{}", id - 1)))
            .collect()
    }

    fn member() -> VoterView {
        VoterView::Member { leader: None }
    }

    fn following(leader: &str) -> VoterView {
        VoterView::Member {
            leader: Some(leader.into()),
        }
    }

    fn gone() -> VoterView {
        VoterView::Unreachable("connection refused".into())
    }

    fn empty() -> VoterView {
        VoterView::Elsewhere("holding no membership of this cluster".into())
    }

    #[test]
    fn forcing_is_allowed_only_when_no_quorum_and_no_leader_answers() {
        // (name, voters, this node, what the others answered, allowed?)
        let cases: Vec<(&str, u64, NodeId, Vec<VoterView>, bool)> = vec![
            (
                "3 voters, both others gone",
                3,
                1,
                vec![gone(), gone()],
                true,
            ),
            (
                "3 voters, others back empty",
                3,
                1,
                vec![empty(), gone()],
                true,
            ),
            (
                "3 voters, one other answers: a quorum",
                3,
                1,
                vec![member(), gone()],
                false,
            ),
            (
                "5 voters, one other answers: no quorum",
                5,
                1,
                vec![member(), gone(), gone(), gone()],
                true,
            ),
            (
                "5 voters, two others answer: a quorum",
                5,
                1,
                vec![member(), member(), gone(), gone()],
                false,
            ),
            (
                "5 voters, one answers and follows a leader",
                5,
                1,
                vec![following("raftset-3"), gone(), gone(), gone()],
                false,
            ),
            ("the only voter already", 1, 1, vec![], false),
            (
                "another survivor re-founded this cluster already",
                5,
                1,
                vec![VoterView::Refounded("c2".into()), gone(), gone(), gone()],
                false,
            ),
            ("2 voters, the other gone", 2, 1, vec![gone()], true),
            (
                "not a voter of its membership",
                3,
                9,
                vec![gone(), gone(), gone()],
                false,
            ),
        ];
        for (name, n, me, answers, allowed) in cases {
            let voters = voters(n);
            let views: Vec<(NodeId, VoterView)> = voters
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| *id != me)
                .zip(answers)
                .collect();
            let config: BTreeSet<NodeId> = voters.iter().map(|(id, _)| *id).collect();
            let outcome = assess(me, &voters, &[config], &views);
            assert_eq!(outcome.is_ok(), allowed, "{name}: {outcome:?}");
        }
    }

    /// Every voter in one configuration.
    fn one(n: u64) -> Vec<BTreeSet<NodeId>> {
        vec![(1..=n).collect()]
    }

    #[test]
    fn in_joint_consensus_a_quorum_is_a_majority_of_each_configuration() {
        // {1,2,3} → {1,2,4}: 1 and 2 are a majority of both.
        let voters = voters(4);
        let joint = vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 2, 4])];
        let views = [(2, member()), (3, gone()), (4, gone())];
        assert!(matches!(
            assess(1, &voters, &joint, &views),
            Err(ClusterError::QuorumReachable { .. })
        ));
        // 1 and 3 are a majority of the old one only: nothing can commit.
        let views = [(2, gone()), (3, member()), (4, gone())];
        assert!(assess(1, &voters, &joint, &views).is_ok());
    }

    #[test]
    fn a_refusal_says_who_answered_and_who_did_not() {
        let err = assess(1, &voters(3), &one(3), &[(2, member()), (3, gone())]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("2 of 3 voters are reachable"), "{text}");
        assert!(text.contains("raftset-0 (this node)"), "{text}");
        assert!(
            text.contains("raftset-2: unreachable (connection refused)"),
            "{text}"
        );
        let err = assess(1, &voters(5), &one(5), &[(2, following("raftset-3"))]).unwrap_err();
        assert!(matches!(err, ClusterError::LeaderReachable { .. }), "{err}");
        let err = assess(9, &voters(3), &one(3), &[]).unwrap_err();
        assert!(
            matches!(err, ClusterError::NotAVoterHere { id: 9 }),
            "{err}"
        );
    }
}
