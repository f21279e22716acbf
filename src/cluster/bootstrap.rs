//! "Found a cluster, or join one?" as a pure function of what the node sees.
//!
//! The rules, in order:
//! 1. A node with Raft state restarts from it and asks nobody (decided
//!    before this function is consulted).
//! 2. If any peer is a member of a cluster, join it through that peer. A
//!    node joins only the cluster the founding record confirms, or else the
//!    one it recorded itself, if any, or the cluster either was re-founded
//!    as by force (`force-new-cluster`).
//! 3. A confirmed founding record means a cluster exists for this
//!    StatefulSet: never found another (a restore is the one deliberate
//!    exception); wait for its members to answer. Meanwhile the node passes
//!    the ordering readiness, so OrderedReady creates the next pods.
//! 4. A node that recorded a cluster id but finds no member waits: it must
//!    never found a second cluster. An unconfirmed record lifts this for
//!    the bootstrapper: it proves nothing was ever acknowledged.
//! 5. The bootstrapper (ordinal 0, or a node that lists no peers) founds a
//!    cluster only when every peer that exists answered and is empty, and
//!    (in Kubernetes) the record is absent, unconfirmed (taken over), or the
//!    data is a restore. A peer that exists but does not answer means wait,
//!    never bootstrap.
//! 6. Everyone else waits for a member to appear.

/// What asking one peer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerView {
    /// The peer does not exist (its name does not resolve).
    Absent,
    /// It exists but did not answer.
    Unreachable,
    /// It answered and belongs to no cluster.
    Empty,
    /// It answered as a member of `cluster_id`, reachable at `peer_addr`;
    /// `refounded_from` names the cluster that `force-new-cluster` made
    /// `cluster_id` of (empty if none).
    Member {
        cluster_id: String,
        peer_addr: String,
        refounded_from: String,
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
    /// Whether the data directory holds a restored backup waiting to be
    /// founded on: the one deliberate re-founding.
    pub restored: bool,
}

/// What the founding record in the Kubernetes API (a ConfigMap named after
/// the StatefulSet) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoundingRecord {
    /// No Kubernetes API (outside a pod): founding rests on the peers alone.
    NotUsed,
    /// Nobody ever founded a cluster for this StatefulSet.
    Absent,
    /// `founder` set out to found `cluster_id` and never confirmed it, so
    /// nothing was acknowledged in that cluster.
    Unconfirmed { cluster_id: String, founder: String },
    /// A cluster was founded, and may hold acknowledged writes.
    Confirmed { cluster_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Found a new single-node cluster.
    Bootstrap,
    /// Join `cluster_id` by asking the member at `via`.
    Join { cluster_id: String, via: String },
    /// The founding record says `cluster_id` exists, but none of its
    /// members answered: wait for them, ready for ordering meanwhile.
    AwaitMembers { cluster_id: String },
    /// Look again later, for this reason.
    Wait(String),
}

pub fn decide(local: &Local, record: &FoundingRecord, peers: &[(String, PeerView)]) -> Decision {
    // A confirmed record names the set's cluster; the id a node without
    // Raft state recorded is only a join it once started.
    let wanted = match record {
        FoundingRecord::Confirmed { cluster_id } => Some(cluster_id),
        _ => local.cluster_id.as_ref(),
    };
    let mut members = peers.iter().filter_map(|(name, view)| match view {
        PeerView::Member {
            cluster_id,
            peer_addr,
            refounded_from,
        } => wanted
            .is_none_or(|wanted| wanted == cluster_id || wanted == refounded_from)
            .then_some((name, cluster_id, peer_addr)),
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
    match record {
        FoundingRecord::Confirmed { cluster_id } if !local.restored => {
            return Decision::AwaitMembers {
                cluster_id: cluster_id.clone(),
            }
        }
        FoundingRecord::Unconfirmed { .. } => {}
        _ => {
            if let Some(ours) = &local.cluster_id {
                return Decision::Wait(format!(
                    "this node belongs to cluster {ours}, but no member of it answered"
                ));
            }
        }
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
            restored: false,
        }
    }

    fn restored(ordinal: u32) -> Local {
        Local {
            restored: true,
            ..local(ordinal, None)
        }
    }

    fn unconfirmed(cluster: &str) -> FoundingRecord {
        FoundingRecord::Unconfirmed {
            cluster_id: cluster.into(),
            founder: "raftset-0".into(),
        }
    }

    fn confirmed(cluster: &str) -> FoundingRecord {
        FoundingRecord::Confirmed {
            cluster_id: cluster.into(),
        }
    }

    fn join(cluster: &str, via: &str) -> Decision {
        Decision::Join {
            cluster_id: cluster.into(),
            via: via.into(),
        }
    }

    fn await_members(cluster: &str) -> Decision {
        Decision::AwaitMembers {
            cluster_id: cluster.into(),
        }
    }

    fn member(cluster: &str, addr: &str) -> PeerView {
        PeerView::Member {
            cluster_id: cluster.into(),
            peer_addr: addr.into(),
            refounded_from: String::new(),
        }
    }

    /// A member of `cluster`, which was re-founded by force from `from`.
    fn refounded(cluster: &str, from: &str, addr: &str) -> PeerView {
        PeerView::Member {
            cluster_id: cluster.into(),
            peer_addr: addr.into(),
            refounded_from: from.into(),
        }
    }

    fn peers(views: Vec<PeerView>) -> Vec<(String, PeerView)> {
        views
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("raftset-{}", i + 1), v))
            .collect()
    }

    /// A named situation and the decision expected (`None`: some wait).
    type Case = (
        &'static str,
        Local,
        FoundingRecord,
        Vec<PeerView>,
        Option<Decision>,
    );

    fn check(cases: Vec<Case>) {
        for (name, local, record, views, expected) in cases {
            let decision = decide(&local, &record, &peers(views));
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
    fn decisions_outside_kubernetes_rest_on_the_peers() {
        use PeerView::*;
        let cases = vec![
            (
                "first deploy, ordered: pod 0 alone",
                local(0, None),
                FoundingRecord::NotUsed,
                vec![Absent, Absent],
                Some(Decision::Bootstrap),
            ),
            (
                "first deploy, parallel: everyone empty",
                local(0, None),
                FoundingRecord::NotUsed,
                vec![Empty, Empty],
                Some(Decision::Bootstrap),
            ),
            (
                "pod 0 lost its volume: joins the others",
                local(0, None),
                FoundingRecord::NotUsed,
                vec![member("c1", "p1:7001"), Unreachable],
                Some(join("c1", "p1:7001")),
            ),
            (
                "pod 0 unsure: a peer exists but is silent",
                local(0, None),
                FoundingRecord::NotUsed,
                vec![Empty, Unreachable],
                None,
            ),
            (
                "pod 1 joins through a member",
                local(1, None),
                FoundingRecord::NotUsed,
                vec![member("c1", "p0:7001")],
                Some(join("c1", "p0:7001")),
            ),
            (
                "pod 1 before pod 0 exists",
                local(1, None),
                FoundingRecord::NotUsed,
                vec![Absent, Empty],
                None,
            ),
            (
                "pod 2 never bootstraps even if all are empty",
                local(2, None),
                FoundingRecord::NotUsed,
                vec![Empty, Empty],
                None,
            ),
            (
                "a node with a cluster id ignores other clusters",
                local(1, Some("c1")),
                FoundingRecord::NotUsed,
                vec![member("c2", "p0:7001")],
                None,
            ),
            (
                "a node with a cluster id rejoins it",
                local(1, Some("c1")),
                FoundingRecord::NotUsed,
                vec![member("c2", "x"), member("c1", "p2:7001")],
                Some(join("c1", "p2:7001")),
            ),
            (
                "a cluster id and no member: wait, never a second cluster",
                local(0, Some("c1")),
                FoundingRecord::NotUsed,
                vec![Empty, Empty],
                None,
            ),
            (
                "a node that once asked to join a cluster joins it re-founded by force",
                local(1, Some("c1")),
                FoundingRecord::NotUsed,
                vec![refounded("c2", "c1", "p0:7001"), Empty],
                Some(join("c2", "p0:7001")),
            ),
            (
                "peers in two clusters: refuse to choose",
                local(0, None),
                FoundingRecord::NotUsed,
                vec![member("c1", "a"), member("c2", "b")],
                None,
            ),
        ];
        check(cases);
    }

    #[test]
    fn decisions_in_kubernetes_follow_the_founding_record() {
        use PeerView::*;
        let cases = vec![
            // No record: nobody ever founded, but the peers must agree.
            (
                "first deploy: no record, pod 0 alone",
                local(0, None),
                FoundingRecord::Absent,
                vec![Absent, Absent],
                Some(Decision::Bootstrap),
            ),
            (
                "no record, a peer silent: wait",
                local(0, None),
                FoundingRecord::Absent,
                vec![Empty, Unreachable],
                None,
            ),
            (
                "no record, but a member answers (a set older than records): join",
                local(0, None),
                FoundingRecord::Absent,
                vec![member("c1", "p1:7001")],
                Some(join("c1", "p1:7001")),
            ),
            (
                "no record, a recorded cluster id: wait",
                local(0, Some("c1")),
                FoundingRecord::Absent,
                vec![Empty, Empty],
                None,
            ),
            (
                "no record: pod 1 never founds",
                local(1, None),
                FoundingRecord::Absent,
                vec![Empty, Empty],
                None,
            ),
            // Confirmed: a cluster exists; never found another.
            (
                "full stop, pod 0 lost its volume, peers not created yet",
                local(0, None),
                confirmed("c1"),
                vec![Absent, Absent],
                Some(await_members("c1")),
            ),
            (
                "confirmed, peers silent (DNS down, Pending pods)",
                local(0, None),
                confirmed("c1"),
                vec![Unreachable, Unreachable],
                Some(await_members("c1")),
            ),
            (
                "confirmed, peers empty",
                local(0, None),
                confirmed("c1"),
                vec![Empty, Empty],
                Some(await_members("c1")),
            ),
            (
                "confirmed: join its member",
                local(0, None),
                confirmed("c1"),
                vec![Unreachable, member("c1", "p2:7001")],
                Some(join("c1", "p2:7001")),
            ),
            (
                "confirmed: members of another cluster are ignored",
                local(0, None),
                confirmed("c1"),
                vec![member("c2", "p1:7001"), member("c1", "p2:7001")],
                Some(join("c1", "p2:7001")),
            ),
            (
                "confirmed, not yet rewritten: join the cluster re-founded from it",
                local(1, None),
                confirmed("c1"),
                vec![refounded("c2", "c1", "p0:7001"), Absent],
                Some(join("c2", "p0:7001")),
            ),
            (
                "confirmed: only another cluster answers",
                local(0, None),
                confirmed("c1"),
                vec![member("c2", "p1:7001")],
                Some(await_members("c1")),
            ),
            (
                "confirmed overrides a join once started to an abandoned founding",
                local(1, Some("c0")),
                confirmed("c1"),
                vec![member("c1", "p0:7001")],
                Some(join("c1", "p0:7001")),
            ),
            (
                "confirmed: pod 1 waits, ready for ordering",
                local(1, None),
                confirmed("c1"),
                vec![Absent, Absent],
                Some(await_members("c1")),
            ),
            (
                "confirmed, restored data, peers gone: the deliberate re-founding",
                restored(0),
                confirmed("c1"),
                vec![Absent, Absent],
                Some(Decision::Bootstrap),
            ),
            (
                "confirmed, restored data, a peer silent: wait",
                restored(0),
                confirmed("c1"),
                vec![Unreachable, Absent],
                None,
            ),
            (
                "confirmed, restored data on pod 1: never founds",
                restored(1),
                confirmed("c1"),
                vec![Absent, Absent],
                None,
            ),
            // Unconfirmed: nothing was acknowledged; take it over once no
            // peer can be a member.
            (
                "pod 0 died between recording and confirming, volume lost",
                local(0, None),
                unconfirmed("c1"),
                vec![Empty, Empty],
                Some(Decision::Bootstrap),
            ),
            (
                "pod 0 died before initialising, volume kept (its id recorded)",
                local(0, Some("c1")),
                unconfirmed("c1"),
                vec![Absent, Absent],
                Some(Decision::Bootstrap),
            ),
            (
                "unconfirmed, a peer silent: wait",
                local(0, None),
                unconfirmed("c1"),
                vec![Empty, Unreachable],
                None,
            ),
            (
                "unconfirmed, but a member answers: join, never take over",
                local(0, None),
                unconfirmed("c1"),
                vec![member("c1", "p1:7001")],
                Some(join("c1", "p1:7001")),
            ),
            (
                "unconfirmed: pod 1 never founds",
                local(1, None),
                unconfirmed("c1"),
                vec![Empty, Empty],
                None,
            ),
            (
                "unconfirmed: pod 1 that tried to join another founding waits",
                local(1, Some("c0")),
                unconfirmed("c1"),
                vec![member("c1", "p0:7001")],
                None,
            ),
        ];
        check(cases);
    }

    #[test]
    fn a_node_without_peers_bootstraps_whatever_its_name() {
        let local = Local {
            ordinal: None,
            cluster_id: None,
            has_peers: false,
            restored: false,
        };
        assert_eq!(
            decide(&local, &FoundingRecord::NotUsed, &[]),
            Decision::Bootstrap
        );
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
