//! The members and their health as the leader sees them, from any node:
//! what `raftset members` and the visit page show.
//!
//! Only the leader can tell whether a member is alive: it alone hears from
//! every member (when each last answered, how far behind it is). A follower
//! knows when it heard from the leader, nothing of the others. So another
//! node asks the leader's Admin service on the peer port, where members
//! already pass admin calls, instead of guessing from its own view.
//!
//! It owns no state and never changes the membership.

use std::time::Duration;

use super::identity::ordinal_of;
use super::membership::is_healthy;
use crate::error::ClusterError;
use crate::proto::admin_client::AdminClient;
use crate::proto::{self, MemberProgress, MembersRequest, MembersResponse};
use crate::raft::leader_of;
use crate::raft::network::{Contacts, PeerClients};
use crate::types::{matched_index, NodeId, Raft, RaftMetrics};

/// The handles a node needs to tell its members' health, or to ask the
/// leader for it.
#[derive(Clone)]
pub struct Roster {
    pub id: NodeId,
    pub raft: Raft,
    /// The pooled peer connections, to reach the leader's Admin service.
    pub peers: PeerClients,
    /// When each peer last answered this node's Raft messages.
    pub contacts: Contacts,
    /// A member that answered within this long is alive: the election
    /// timeout, after which a silent leader would be replaced too.
    pub window: Duration,
    /// Most entries a healthy member may be behind (`--ready-max-lag`).
    pub max_lag: u64,
}

impl Roster {
    /// This node's view of every member and its progress, in ordinal
    /// order. Health and contact mean something only on the leader.
    pub fn view(&self) -> MembersResponse {
        let metrics = self.raft.metrics().borrow().clone();
        let last = metrics.last_log_index.unwrap_or(0);
        let leading = metrics.current_leader == Some(self.id);
        let members = members(&metrics)
            .into_iter()
            .map(|member| {
                let matched = matched_index(&metrics, member.id);
                let lag = last.saturating_sub(matched);
                let contact = self.contacts.since(member.id);
                MemberProgress {
                    match_index: matched,
                    lag,
                    is_leader: metrics.current_leader == Some(member.id),
                    last_contact_ms: leading
                        .then(|| contact.map(|c| c.as_millis() as u64))
                        .flatten(),
                    healthy: member.id == self.id
                        || is_healthy(contact, lag, self.window, self.max_lag),
                    member: Some(member),
                }
            })
            .collect();
        MembersResponse {
            members,
            leader_id: metrics.current_leader.unwrap_or(0),
            last_log_index: last,
        }
    }

    /// The leader's view, from any node: this node's own when it leads,
    /// else the leader's answer, which must come within `timeout`.
    pub async fn leaders_view(&self, timeout: Duration) -> Result<MembersResponse, ClusterError> {
        let leader = leader_of(&self.raft.metrics().borrow());
        match leader {
            None => Err(ClusterError::NoLeader),
            Some((id, _)) if id == self.id => Ok(self.view()),
            Some((_, leader)) => {
                let mut admin = AdminClient::new(self.peers.channel(&leader.peer_addr)?);
                let mut request = tonic::Request::new(MembersRequest {});
                request.set_timeout(timeout);
                admin
                    .members(request)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(ClusterError::Remote)
            }
        }
    }
}

/// Every member in `metrics`' membership, in ordinal order (names without
/// an ordinal last).
pub fn members(metrics: &RaftMetrics) -> Vec<proto::Member> {
    let membership = metrics.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let mut members: Vec<proto::Member> = membership
        .nodes()
        .map(|(id, m)| proto::member(*id, m, voters.contains(id)))
        .collect();
    members.sort_by_key(|m| {
        let ordinal = ordinal_of(&m.name);
        (ordinal.is_none(), ordinal, m.name.clone())
    });
    members
}
