//! "Found a cluster, or join one?" as a pure function of what the node sees.
//!
//! The rules, in order:
//! 1. A node with Raft state restarts from it and asks nobody (decided
//!    before this function is consulted).
//! 2. If any peer is a member of a cluster, join it through that peer. A
//!    node that already recorded a cluster id only joins that cluster.
//! 3. A node that recorded a cluster id but finds no member waits: it must
//!    never found a second cluster.
//! 4. The bootstrapper (ordinal 0, or a node that lists no peers) founds a
//!    cluster only when every peer that exists answered and is empty. A
//!    peer that exists but does not answer means wait, never bootstrap.
//! 5. Everyone else waits for a member to appear.

/// What asking one peer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerView {
    /// The peer does not exist (its name does not resolve).
    Absent,
    /// It exists but did not answer.
    Unreachable,
    /// It answered and belongs to no cluster.
    Empty,
    /// It answered as a member of `cluster_id`, reachable at `peer_addr`.
    Member {
        cluster_id: String,
        peer_addr: String,
    },
}

/// What this node knows about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// The ordinal from the node's name, if it has one.
    pub ordinal: Option<u32>,
    /// The cluster this node's data belongs to, if recorded.
    pub cluster_id: Option<String>,
    /// Whether any peers are configured at all.
    pub has_peers: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Found a new single-node cluster.
    Bootstrap,
    /// Join `cluster_id` by asking the member at `via`.
    Join { cluster_id: String, via: String },
    /// Look again later, for this reason.
    Wait(String),
}

pub fn decide(local: &Local, peers: &[(String, PeerView)]) -> Decision {
    let mut members = peers.iter().filter_map(|(name, view)| match view {
        PeerView::Member {
            cluster_id,
            peer_addr,
        } => {
            let ours = local
                .cluster_id
                .as_ref()
                .is_none_or(|ours| ours == cluster_id);
            ours.then_some((name, cluster_id, peer_addr))
        }
        _ => None,
    });
    if let Some((_, cluster_id, via)) = members.next() {
        if let Some((other, other_id, _)) = members.find(|(_, id, _)| *id != cluster_id) {
            return Decision::Wait(format!(
                "peers belong to different clusters ({cluster_id} and {other_id} at {other}); not choosing"
            ));
        }
        return Decision::Join {
            cluster_id: cluster_id.clone(),
            via: via.clone(),
        };
    }
    if let Some(ours) = &local.cluster_id {
        return Decision::Wait(format!(
            "this node belongs to cluster {ours}, but no member of it answered"
        ));
    }
    let bootstrapper = local.ordinal == Some(0) || !local.has_peers;
    if !bootstrapper {
        return Decision::Wait("waiting for a cluster member to join through".into());
    }
    let unsure: Vec<&str> = peers
        .iter()
        .filter(|(_, view)| !matches!(view, PeerView::Empty | PeerView::Absent))
        .map(|(name, _)| name.as_str())
        .collect();
    if unsure.is_empty() {
        Decision::Bootstrap
    } else {
        Decision::Wait(format!(
            "not bootstrapping while peers {} do not answer (they may hold a cluster)",
            unsure.join(", ")
        ))
    }
}

/// Rounds in a row that must all say "bootstrap" before a node founds a
/// cluster: founding cannot be undone, so one slow DNS answer must not
/// cause it.
pub const BOOTSTRAP_CONFIRMATIONS: u32 = 3;

/// Counts the rounds in a row whose picture said "bootstrap".
#[derive(Debug, Default)]
pub struct Confirmations(u32);

impl Confirmations {
    /// What to do this round, given what [`decide`] made of it: founding
    /// waits until the same picture was seen [`BOOTSTRAP_CONFIRMATIONS`]
    /// times in a row; any other picture starts the count over.
    pub fn confirm(&mut self, decision: Decision) -> Decision {
        if decision != Decision::Bootstrap {
            self.0 = 0;
            return decision;
        }
        self.0 += 1;
        if self.0 < BOOTSTRAP_CONFIRMATIONS {
            return Decision::Wait(format!(
                "every peer is absent or empty; confirming ({}/{BOOTSTRAP_CONFIRMATIONS})",
                self.0
            ));
        }
        Decision::Bootstrap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(ordinal: u32, cluster_id: Option<&str>) -> Local {
        Local {
            ordinal: Some(ordinal),
            cluster_id: cluster_id.map(String::from),
            has_peers: true,
        }
    }

    fn member(cluster: &str, addr: &str) -> PeerView {
        PeerView::Member {
            cluster_id: cluster.into(),
            peer_addr: addr.into(),
        }
    }

    fn peers(views: Vec<PeerView>) -> Vec<(String, PeerView)> {
        views
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("raftset-{}", i + 1), v))
            .collect()
    }

    #[test]
    fn decisions() {
        use PeerView::*;
        let join = |c: &str, via: &str| Decision::Join {
            cluster_id: c.into(),
            via: via.into(),
        };
        let cases: Vec<(&str, Local, Vec<PeerView>, Option<Decision>)> = vec![
            (
                "first deploy, ordered: pod 0 alone",
                local(0, None),
                vec![Absent, Absent],
                Some(Decision::Bootstrap),
            ),
            (
                "first deploy, parallel: everyone empty",
                local(0, None),
                vec![Empty, Empty],
                Some(Decision::Bootstrap),
            ),
            (
                "pod 0 lost its volume: joins the others",
                local(0, None),
                vec![member("c1", "p1:7001"), Unreachable],
                Some(join("c1", "p1:7001")),
            ),
            (
                "pod 0 unsure: a peer exists but is silent",
                local(0, None),
                vec![Empty, Unreachable],
                None,
            ),
            (
                "pod 1 joins through a member",
                local(1, None),
                vec![member("c1", "p0:7001")],
                Some(join("c1", "p0:7001")),
            ),
            (
                "pod 1 before pod 0 exists",
                local(1, None),
                vec![Absent, Empty],
                None,
            ),
            (
                "pod 2 never bootstraps even if all are empty",
                local(2, None),
                vec![Empty, Empty],
                None,
            ),
            (
                "a node with a cluster id ignores other clusters",
                local(1, Some("c1")),
                vec![member("c2", "p0:7001")],
                None,
            ),
            (
                "a node with a cluster id rejoins it",
                local(1, Some("c1")),
                vec![member("c2", "x"), member("c1", "p2:7001")],
                Some(join("c1", "p2:7001")),
            ),
            (
                "a cluster id and no member: wait, never a second cluster",
                local(0, Some("c1")),
                vec![Empty, Empty],
                None,
            ),
            (
                "peers in two clusters: refuse to choose",
                local(0, None),
                vec![member("c1", "a"), member("c2", "b")],
                None,
            ),
        ];
        for (name, local, views, expected) in cases {
            let decision = decide(&local, &peers(views));
            match expected {
                Some(expected) => assert_eq!(decision, expected, "{name}"),
                None => assert!(
                    matches!(decision, Decision::Wait(_)),
                    "{name}: {decision:?}"
                ),
            }
        }
    }

    #[test]
    fn a_node_without_peers_bootstraps_whatever_its_name() {
        let local = Local {
            ordinal: None,
            cluster_id: None,
            has_peers: false,
        };
        assert_eq!(decide(&local, &[]), Decision::Bootstrap);
    }

    #[test]
    fn founding_needs_the_same_picture_several_rounds_in_a_row() {
        let wait = || Decision::Wait("a peer is silent".into());
        let mut rounds = Confirmations::default();
        for _ in 1..BOOTSTRAP_CONFIRMATIONS {
            assert!(matches!(
                rounds.confirm(Decision::Bootstrap),
                Decision::Wait(_)
            ));
        }
        assert_eq!(rounds.confirm(wait()), wait());
        for _ in 1..BOOTSTRAP_CONFIRMATIONS {
            assert!(matches!(
                rounds.confirm(Decision::Bootstrap),
                Decision::Wait(_)
            ));
        }
        assert_eq!(rounds.confirm(Decision::Bootstrap), Decision::Bootstrap);
        let join = Decision::Join {
            cluster_id: "c1".into(),
            via: "p1".into(),
        };
        assert_eq!(Confirmations::default().confirm(join.clone()), join);
    }
}
