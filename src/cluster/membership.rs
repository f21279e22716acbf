//! Who is in the cluster: admitting a node that joins, removing members,
//! and scale-down to the StatefulSet's replica count.
//!
//! Joining, on the leader: add the node as a learner, wait until it caught
//! up, then make it a voter in one membership change that also drops any
//! older member of the same name (the same pod with a lost volume).
//! Non-leaders pass the request to the leader.
//!
//! Scale-down: the intent comes from the StatefulSet's `spec.replicas`,
//! never from a timeout. The leader removes members whose ordinal is at or
//! above the replica count, one at a time, and only while the voters that
//! remain would still have a healthy majority. A member whose ordinal is
//! below the count is never removed (it may merely be restarting). A count
//! of 0 is a full stop, not a cluster of no members: nobody is removed, so
//! the set comes back with the voters it had. If the replica count cannot
//! be read, nothing is removed.
//!
//! Healthy means "answered this leader within an election timeout, and not
//! far behind". Lag alone is no sign of life: on an idle cluster a dead
//! follower keeps the matched index it had. Removing a voter while another
//! is dead can leave a membership whose majority is gone for good.
//!
//! The leader's own reconciling runs every `--reconcile-secs`, but the
//! StatefulSet controller stops the pods it scales away within a second or
//! two: 3 → 1 stops two of three voters before the leader looks, and the
//! survivor has no quorum left to remove them with. So each pod leaves
//! while it still runs: its preStop hook ([`leave_if_scaled_away`]) asks
//! the leader to scale down, after handing leadership to a member that
//! stays, and waits until it is out. A pod whose ordinal stays below the
//! count is restarting: it leaves nothing (voters never remove themselves
//! on an ordinary stop).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tokio_util::sync::CancellationToken;

use super::formation::JOIN_TIMEOUT;
use super::identity::{ordinal_of, set_name};
use super::kube::{call, KubeApi};
use super::leadership;
use super::ClusterContext;
use crate::error::{ClusterError, PeerError};
use crate::proto::admin_client::AdminClient;
use crate::proto::{member_of_join, JoinRequest, JoinResponse, ScaleDownRequest};
use crate::tls::Caller;
use crate::types::{matched_index, Member, NodeId};

/// Admits the node that asks, on the leader (others pass it on).
pub async fn join(
    ctx: &ClusterContext,
    caller: &Caller,
    request: JoinRequest,
) -> Result<JoinResponse, ClusterError> {
    let members: Vec<Member> = ctx
        .raft_metrics()
        .membership_config
        .membership()
        .nodes()
        .map(|(_, m)| m.clone())
        .collect();
    check_joiner(caller, &request.name, &request.peer_addr, &members)?;
    let ours = ctx.cluster_id.get();
    if ours.is_empty() || request.cluster_id != ours {
        tracing::warn!(ours = %ours, theirs = %request.cluster_id, node = %request.name, "refused a join for another cluster");
        return Err(PeerError::ClusterMismatch.into());
    }
    let Some((leader_id, leader)) = ctx.leader() else {
        return Err(ClusterError::NoLeader);
    };
    if leader_id == ctx.id && !ctx.formation.is_serving() {
        return Err(ClusterError::FoundingUnconfirmed);
    }
    if leader_id != ctx.id {
        let mut client = ctx.peer(&leader.peer_addr)?;
        let mut forwarded = tonic::Request::new(request);
        forwarded.set_timeout(JOIN_TIMEOUT);
        return client
            .join(forwarded)
            .await
            .map(|r| r.into_inner())
            .map_err(ClusterError::Remote);
    }

    let member = member_of_join(&request);
    let membership = ctx.raft_metrics().membership_config.membership().clone();
    if let Some((id, owner)) = membership
        .nodes()
        .find(|(_, m)| m.peer_addr == member.peer_addr && m.name != member.name)
    {
        return Err(ClusterError::AddressTaken {
            addr: member.peer_addr,
            owner: owner.name.clone(),
            id: *id,
        });
    }
    if membership.voter_ids().any(|id| id == request.node_id) {
        return Ok(JoinResponse { leader_id: ctx.id });
    }
    let stale: BTreeSet<NodeId> = membership
        .nodes()
        .filter(|(id, m)| m.name == request.name && **id != request.node_id)
        .map(|(id, _)| *id)
        .collect();

    tracing::info!(node_id = request.node_id, name = %request.name, replaces = ?stale, "adding a learner");
    add_learner(ctx, request.node_id, member).await?;
    let voters: BTreeSet<NodeId> = membership
        .voter_ids()
        .filter(|id| !stale.contains(id))
        .chain([request.node_id])
        .collect();
    change(ctx, ChangeMembers::ReplaceAllVoters(voters)).await?;
    let stale_learners: BTreeSet<NodeId> = ctx
        .raft_metrics()
        .membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| stale.contains(id))
        .map(|(id, _)| *id)
        .collect();
    if !stale_learners.is_empty() {
        change(ctx, ChangeMembers::RemoveNodes(stale_learners)).await?;
    }
    tracing::info!(node_id = request.node_id, name = %request.name, "promoted to voter");
    Ok(JoinResponse { leader_id: ctx.id })
}

/// On the leader: adds a learner and waits until it caught up.
pub async fn add_learner(
    ctx: &ClusterContext,
    id: NodeId,
    member: Member,
) -> Result<(), ClusterError> {
    ctx.raft
        .add_learner(id, member, true)
        .await
        .map(|_| ())
        .map_err(membership_error)
}

/// On the leader: makes learners voters.
pub async fn promote(ctx: &ClusterContext, id: NodeId) -> Result<(), ClusterError> {
    change(ctx, ChangeMembers::AddVoterIds([id].into_iter().collect())).await
}

async fn change(
    ctx: &ClusterContext,
    change: ChangeMembers<NodeId, Member>,
) -> Result<(), ClusterError> {
    ctx.raft
        .change_membership(change, false)
        .await
        .map(|_| ())
        .map_err(membership_error)
}

/// On the leader: removes a member, voter or learner, from the cluster.
pub async fn remove(ctx: &ClusterContext, id: NodeId) -> Result<(), ClusterError> {
    let ids: BTreeSet<NodeId> = [id].into_iter().collect();
    let listed = |ctx: &ClusterContext| {
        let metrics = ctx.raft_metrics();
        let membership = metrics.membership_config.membership();
        (
            membership.get_node(&id).is_some(),
            membership.voter_ids().any(|v| v == id),
        )
    };
    let (member, voter) = listed(ctx);
    if !member {
        return Err(ClusterError::NotMember { id });
    }
    if voter {
        change(ctx, ChangeMembers::RemoveVoters(ids.clone())).await?;
    }
    // A voter removed without `retain` is gone; a learner needs its own step.
    if listed(ctx).0 {
        change(ctx, ChangeMembers::RemoveNodes(ids)).await?;
    }
    Ok(())
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ClusterError::LeadershipMoved,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ClusterError::MembershipBusy(e.to_string())
        }
        RaftError::Fatal(e) => ClusterError::Raft(e.to_string()),
    }
}

/// One member as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    pub id: u64,
    pub name: String,
    pub voter: bool,
    /// Answered this node recently and is not far behind: see
    /// [`is_healthy`].
    pub healthy: bool,
}

/// Whether a member can be counted on for a quorum now: it answered within
/// `window` and is at most `max_lag` entries behind.
pub fn is_healthy(
    last_contact: Option<Duration>,
    lag: u64,
    window: Duration,
    max_lag: u64,
) -> bool {
    last_contact.is_some_and(|age| age <= window) && lag <= max_lag
}

/// The next member to remove so that the membership converges to
/// ordinals `0..replicas` of `set`, or `None` when none may go now.
/// Learners go first, then voters from the highest ordinal down.
pub fn next_removal(set: &str, members: &[MemberState], replicas: u32) -> Option<u64> {
    if replicas == 0 {
        return None;
    }
    let beyond = |m: &MemberState| {
        m.name.contains('-')
            && set_name(&m.name) == set
            && ordinal_of(&m.name).is_some_and(|o| o >= replicas)
    };
    let mut candidates: Vec<&MemberState> = members.iter().filter(|m| beyond(m)).collect();
    candidates.sort_by_key(|m| (m.voter, std::cmp::Reverse(ordinal_of(&m.name))));
    let candidate = candidates.first()?;
    if !candidate.voter {
        return Some(candidate.id);
    }
    let remaining: Vec<&MemberState> = members
        .iter()
        .filter(|m| m.voter && m.id != candidate.id)
        .collect();
    let healthy = remaining.iter().filter(|m| m.healthy).count();
    (!remaining.is_empty() && healthy * 2 > remaining.len()).then_some(candidate.id)
}

/// The members and their health, on the leader.
pub fn member_states(ctx: &ClusterContext) -> Vec<MemberState> {
    ctx.roster()
        .view()
        .members
        .into_iter()
        .filter_map(|progress| {
            let member = progress.member?;
            Some(MemberState {
                id: member.id,
                name: member.name,
                voter: member.voter,
                healthy: progress.healthy,
            })
        })
        .collect()
}

/// A join's claims must be the caller's own, or the join must come from a
/// member passing it on (which checked its joiner first): the caller's
/// certificate must name the peer address the joiner asks to be replicated
/// at, and its name, either as a name of the certificate's own or as the
/// first label of that address (`raftset-2` of
/// `raftset-2.raftset-peers.ns.svc.cluster.local`). So a certificate for
/// one pod cannot take another pod's place.
pub fn check_joiner(
    caller: &Caller,
    name: &str,
    peer_addr: &str,
    members: &[Member],
) -> Result<(), PeerError> {
    let host = crate::tls::host_of(peer_addr);
    let first_label = host.split('.').next().unwrap_or_default();
    let is_joiner = caller.is(host)
        && (caller.is(name) || (first_label == name && host.parse::<std::net::IpAddr>().is_err()));
    let is_member = members.iter().any(|m| caller.is_at(&m.peer_addr));
    if is_joiner || is_member {
        return Ok(());
    }
    tracing::warn!(
        name,
        peer_addr,
        "refused a join: the caller's certificate is not the joiner's"
    );
    Err(PeerError::Impostor {
        claimed: format!("{name} at {peer_addr}"),
    })
}

/// On the leader: removes members beyond `replicas` one at a time, as far
/// as safety allows now. Returns how many were removed.
pub async fn remove_beyond(ctx: &ClusterContext, replicas: u32) -> Result<usize, ClusterError> {
    let mut removed = 0;
    loop {
        let states = member_states(ctx);
        let Some(id) = next_removal(set_name(&ctx.config.name), &states, replicas) else {
            return Ok(removed);
        };
        let name = states
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        tracing::info!(member = %name, id, replicas, "scale-down: removing a member beyond the replica count");
        remove(ctx, id).await?;
        removed += 1;
    }
}

/// The StatefulSet's `spec.replicas`, read through the Kubernetes API.
async fn read_replicas(api: &Arc<KubeApi>) -> Result<u32, ClusterError> {
    call(api, |api| api.replicas()).await
}

/// Follows the StatefulSet's replica count while this node leads.
pub async fn follow_replicas(ctx: Arc<ClusterContext>, stop: CancellationToken) {
    let api = match KubeApi::new(&ctx.config) {
        Ok(api) => Arc::new(api),
        Err(e) => {
            tracing::warn!("not following the replica count: {e}");
            return;
        }
    };
    let period = Duration::from_secs(ctx.config.reconcile_secs.max(1));
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.cancelled() => return,
        }
        if !ctx.is_leader() {
            continue;
        }
        let replicas = match read_replicas(&api).await {
            Ok(replicas) => replicas,
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!("cannot read the replica count, removing nobody: {e}");
                    last_error = e;
                }
                continue;
            }
        };
        if let Err(e) = remove_beyond(&ctx, replicas).await {
            tracing::warn!("scale-down to {replicas} paused: {e}");
        }
    }
}

/// What a pod about to stop does about its membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopPlan {
    /// An ordinary stop (a restart, a full stop, or nobody can tell): stay
    /// a member, for the reason given.
    Stay(String),
    /// The StatefulSet no longer counts this pod: leave first.
    Leave { replicas: u32 },
}

/// Decides [`StopPlan`] for the pod `name` from the replica count, or from
/// why it could not be read.
pub fn stop_plan(name: &str, replicas: Result<u32, String>) -> StopPlan {
    let Some(ordinal) = ordinal_of(name) else {
        return StopPlan::Stay(format!("{name} has no ordinal"));
    };
    match replicas {
        Err(e) => StopPlan::Stay(format!("the replica count is unknown ({e})")),
        Ok(0) => StopPlan::Stay("scaled to 0: a full stop".into()),
        Ok(replicas) if ordinal < replicas => StopPlan::Stay(format!(
            "ordinal {ordinal} is below the replica count {replicas}: a restart"
        )),
        Ok(replicas) => StopPlan::Leave { replicas },
    }
}

/// How a pod's preStop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure {
    /// Still a member, on purpose, for this reason.
    Stayed(String),
    /// No longer a member.
    Left,
}

/// How long one scale-down request to the leader may take.
const SCALE_DOWN_CALL: Duration = Duration::from_secs(5);
/// How long to wait before asking again while this member may not go yet.
const LEAVE_RETRY: Duration = Duration::from_millis(200);

/// A pod's preStop: if the StatefulSet scaled this pod away (its ordinal is
/// at or above `spec.replicas`, read from the Kubernetes API unless
/// `replicas` is given), leaves the membership before the pod stops, within
/// `deadline`. A leader hands leadership to a member that stays first.
pub async fn leave_if_scaled_away(
    ctx: &ClusterContext,
    replicas: Option<u32>,
    deadline: Duration,
) -> Result<Departure, ClusterError> {
    let replicas = match replicas {
        Some(replicas) => Ok(replicas),
        None if !ctx.config.follow_replicas => {
            Err("--follow-replicas is off: scale-down is left to `raftset scale-down`".into())
        }
        None => match KubeApi::new(&ctx.config) {
            Ok(api) => read_replicas(&Arc::new(api))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
    };
    let replicas = match stop_plan(&ctx.me.name, replicas) {
        StopPlan::Stay(why) => {
            tracing::info!("stopping as a member: {why}");
            return Ok(Departure::Stayed(why));
        }
        StopPlan::Leave { replicas } => replicas,
    };
    tracing::info!(replicas, "scaled away: leaving the cluster before stopping");
    let started = tokio::time::Instant::now();
    let mut last = String::from("no leader known yet");
    while started.elapsed() < deadline {
        let metrics = ctx.raft_metrics();
        if metrics
            .membership_config
            .membership()
            .get_node(&ctx.id)
            .is_none()
        {
            return Ok(Departure::Left);
        }
        match ctx.leader() {
            Some((leader, _)) if leader == ctx.id => {
                let staying = staying_voter(ctx, replicas);
                match leadership::transfer(ctx, staying).await {
                    Ok(to) => tracing::info!(to, "handed leadership to a member that stays"),
                    Err(e) => last = format!("handing over leadership: {e}"),
                }
                continue;
            }
            Some((_, leader)) => match ask_to_scale_down(ctx, &leader.peer_addr, replicas).await {
                Ok(members) if !members.contains(&ctx.id) => {
                    tracing::info!("removed from the cluster");
                    return Ok(Departure::Left);
                }
                Ok(_) => last = "the leader may not remove this member yet".into(),
                Err(e) => last = format!("asking the leader: {e}"),
            },
            None => {}
        }
        tokio::time::sleep(LEAVE_RETRY).await;
    }
    Err(ClusterError::LeaveTimedOut {
        waited_ms: started.elapsed().as_millis() as u64,
        last,
    })
}

/// The most caught-up voter whose ordinal stays below `replicas`, if any.
fn staying_voter(ctx: &ClusterContext, replicas: u32) -> Option<NodeId> {
    let metrics = ctx.raft_metrics();
    let membership = metrics.membership_config.membership();
    let staying: Vec<NodeId> = membership
        .nodes()
        .filter(|(id, m)| **id != ctx.id && ordinal_of(&m.name).is_some_and(|o| o < replicas))
        .map(|(id, _)| *id)
        .filter(|id| membership.voter_ids().any(|v| v == *id))
        .collect();
    staying
        .into_iter()
        .max_by_key(|id| matched_index(&metrics, *id))
}

/// Asks the leader to remove the members beyond `replicas` (as far as it
/// safely can now); returns the ids of the members it has then.
async fn ask_to_scale_down(
    ctx: &ClusterContext,
    leader_addr: &str,
    replicas: u32,
) -> Result<Vec<NodeId>, ClusterError> {
    let mut admin = AdminClient::new(ctx.peers.channel(leader_addr)?);
    let mut request = tonic::Request::new(ScaleDownRequest { replicas });
    request.set_timeout(SCALE_DOWN_CALL);
    let members = admin
        .scale_down(request)
        .await
        .map_err(ClusterError::Remote)?
        .into_inner();
    Ok(members
        .members
        .iter()
        .filter_map(|m| m.member.as_ref().map(|m| m.id))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_is_taken_only_from_the_joiner_or_a_member_passing_it_on() {
        use crate::tls::issue::Authority;
        use rustls::pki_types::pem::PemObject;
        let ca = Authority::new("test").unwrap();
        let caller = |name: &str, hosts: &[&str]| {
            let issued = ca.issue(name, hosts).unwrap();
            Caller::Certified(
                rustls::pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
                    .unwrap(),
            )
        };
        let fqdn = |n: u32| format!("raftset-{n}.raftset-peers.ns.svc.cluster.local");
        let at = |host: &str| format!("{host}:7001");
        let members = vec![Member {
            name: "raftset-0".into(),
            peer_addr: at(&fqdn(0)),
            api_addr: String::new(),
            http_addr: String::new(),
        }];
        let pod2 = caller("raftset-2", &[&fqdn(2)]);
        let pod3 = caller("raftset-3", &[&fqdn(3)]);
        // cert-manager style: the DNS name only, no bare pod name.
        let fqdn_only = Caller::Certified(
            rustls::pki_types::CertificateDer::from_pem_slice(
                ca.issue(&fqdn(2), &[]).unwrap().cert_pem.as_bytes(),
            )
            .unwrap(),
        );
        let local = caller("node-a", &["127.0.0.5"]);
        let member = caller("raftset-0", &[&fqdn(0)]);
        // (case, caller, claimed name, claimed peer address, accepted)
        let cases: Vec<(&str, &Caller, &str, String, bool)> = vec![
            (
                "its own name and address",
                &pod2,
                "raftset-2",
                at(&fqdn(2)),
                true,
            ),
            (
                "the name from the address's first label",
                &fqdn_only,
                "raftset-2",
                at(&fqdn(2)),
                true,
            ),
            (
                "another pod's name",
                &pod3,
                "raftset-2",
                at(&fqdn(2)),
                false,
            ),
            (
                "another pod's name at its own address",
                &pod3,
                "raftset-2",
                at(&fqdn(3)),
                false,
            ),
            (
                "its name, someone else's address",
                &pod2,
                "raftset-2",
                at(&fqdn(3)),
                false,
            ),
            (
                "an address by IP with its name",
                &local,
                "node-a",
                at("127.0.0.5"),
                true,
            ),
            ("an IP is no name", &local, "127", at("127.0.0.5"), false),
            (
                "a member passing a join on",
                &member,
                "raftset-2",
                at(&fqdn(2)),
                true,
            ),
            (
                "plaintext peers check nothing",
                &Caller::Unchecked,
                "x",
                at("y"),
                true,
            ),
        ];
        for (case, caller, name, addr, accepted) in cases {
            let result = check_joiner(caller, name, &addr, &members);
            assert_eq!(result.is_ok(), accepted, "{case}: {result:?}");
        }
    }

    fn m(id: u64, ordinal: u32, voter: bool, healthy: bool) -> MemberState {
        MemberState {
            id,
            name: format!("raftset-{ordinal}"),
            voter,
            healthy,
        }
    }

    #[test]
    fn removals_follow_the_replica_count_safely() {
        let five = |healthy: [bool; 5]| -> Vec<MemberState> {
            (0..5)
                .map(|i| m(100 + i as u64, i, true, healthy[i as usize]))
                .collect()
        };
        let all = [true; 5];
        let cases: Vec<(&str, Vec<MemberState>, u32, Option<u64>)> = vec![
            ("nothing beyond the count", five(all), 5, None),
            ("highest ordinal first", five(all), 3, Some(104)),
            (
                "learners before voters",
                vec![
                    m(1, 0, true, true),
                    m(2, 1, true, true),
                    m(9, 3, false, false),
                    m(8, 4, true, true),
                ],
                2,
                Some(9),
            ),
            (
                "a restarting voter below the count is never removed",
                five([true, false, true, true, true]),
                5,
                None,
            ),
            (
                "not while the rest lack a healthy majority",
                five([true, false, false, true, true]),
                3,
                None,
            ),
            (
                "fine with a healthy majority left",
                five([true, true, true, false, true]),
                3,
                Some(104),
            ),
            (
                "not when half of the rest are unhealthy",
                five([true, true, false, false, true]),
                3,
                None,
            ),
            ("never the last voter", vec![m(7, 1, true, true)], 1, None),
            (
                "a full stop (scaled to 0) removes nobody",
                five(all),
                0,
                None,
            ),
            (
                "other sets and unnamed members are left alone",
                vec![
                    m(1, 0, true, true),
                    MemberState {
                        id: 5,
                        name: "other-4".into(),
                        voter: true,
                        healthy: true,
                    },
                    MemberState {
                        id: 6,
                        name: "embedded".into(),
                        voter: true,
                        healthy: true,
                    },
                ],
                1,
                None,
            ),
        ];
        for (name, members, replicas, expected) in cases {
            assert_eq!(
                next_removal("raftset", &members, replicas),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn health_needs_a_recent_answer_not_only_a_small_lag() {
        let window = Duration::from_millis(1000);
        let ms = Duration::from_millis;
        let cases = [
            ("answered just now, caught up", Some(ms(50)), 0, true),
            (
                "answered at the edge of the window",
                Some(ms(1000)),
                0,
                true,
            ),
            (
                "silent for longer than the window, lag 0",
                Some(ms(1001)),
                0,
                false,
            ),
            ("never answered this leader", None, 0, false),
            ("answering but far behind", Some(ms(50)), 1001, false),
            (
                "answering, behind within the limit",
                Some(ms(50)),
                1000,
                true,
            ),
        ];
        for (name, contact, lag, expected) in cases {
            assert_eq!(is_healthy(contact, lag, window, 1000), expected, "{name}");
        }
    }

    #[test]
    fn a_pod_leaves_only_when_the_statefulset_no_longer_counts_it() {
        let leave = |replicas| StopPlan::Leave { replicas };
        /// What the case is, the pod, the replica count read, the plan
        /// (`None`: any `Stay`).
        type Case = (
            &'static str,
            &'static str,
            Result<u32, String>,
            Option<StopPlan>,
        );
        let cases: Vec<Case> = vec![
            (
                "scaled 3 to 1: pod 2 leaves",
                "raftset-2",
                Ok(1),
                Some(leave(1)),
            ),
            (
                "scaled 3 to 1: pod 1 leaves",
                "raftset-1",
                Ok(1),
                Some(leave(1)),
            ),
            ("at the count exactly", "raftset-3", Ok(3), Some(leave(3))),
            ("a restart below the count stays", "raftset-1", Ok(3), None),
            ("pod 0 always stays", "raftset-0", Ok(1), None),
            ("a full stop (0) stays", "raftset-2", Ok(0), None),
            (
                "an unreadable count stays",
                "raftset-2",
                Err("403".into()),
                None,
            ),
            ("a name without an ordinal stays", "embedded", Ok(1), None),
        ];
        for (name, pod, replicas, expected) in cases {
            let plan = stop_plan(pod, replicas);
            match expected {
                Some(expected) => assert_eq!(plan, expected, "{name}"),
                None => assert!(matches!(plan, StopPlan::Stay(_)), "{name}: {plan:?}"),
            }
        }
    }
}
