//! One interface for both harnesses: [`Cluster`](super::Cluster), real
//! `raftset serve` processes on loopback addresses, and
//! [`StatefulSet`](super::statefulset::StatefulSet), pods played by
//! containers. A test says the same thing to either: which members exist
//! and which run, stop, kill or restart member `i`, wait until it is ready,
//! wait for a leader, for `n` voters (the leader's member list), for an
//! applied index. Each harness says how to reach and run its
//! members; every wait is written once, here, on top of that, and has a
//! deadline ([`DEADLINE`]) and fails with the last state it saw.
//!
//! How a harness is set up differs (`Cluster::start(n)` with `serve` flags;
//! `StatefulSet::with(tag, manifest, env)` then `create()`), so starting
//! one is not part of the trait.

use std::time::Duration;

use raftset::proto::{MembersResponse, StatusResponse};
use raftset::tls::client::ClientTls;
use raftset::Client;

use super::{poll, DEADLINE};

/// How often a wait looks again.
const EVERY: Duration = Duration::from_millis(100);

/// A set of raftset members that a test can run, break and wait on.
pub trait Harness {
    /// Member `i`'s name (`raftset-<i>`).
    fn name(&self, i: usize) -> String;

    /// Member `i`'s client gRPC address, from the test.
    fn api(&self, i: usize) -> String;

    /// The ordinals of the members that exist.
    fn ordinals(&self) -> Vec<usize>;

    /// The ordinals of the members that run and can be reached.
    fn running(&self) -> Vec<usize>;

    /// Stops member `i` with SIGTERM and waits until it exited cleanly.
    async fn stop(&mut self, i: usize);

    /// Kills member `i` with SIGKILL: no shutdown, no flush.
    async fn kill(&mut self, i: usize);

    /// Starts a stopped or killed member again on its data. Does not wait
    /// for it to be ready.
    async fn restart(&mut self, i: usize);

    /// Waits until member `i` answers its readiness probe with 200.
    async fn wait_ready(&self, i: usize);

    /// The admin token the members require of clients, if they do.
    fn token(&self) -> Option<String> {
        None
    }

    /// How to reach the members' client ports if they speak TLS.
    fn client_tls(&self) -> Option<ClientTls> {
        None
    }

    /// A client of member `i` whose calls give up after `timeout`;
    /// connecting gives up after 3 s. It sends the harness's token, over
    /// the harness's TLS.
    async fn connect(&self, i: usize, timeout: Duration) -> Result<Client, String> {
        let api = self.api(i);
        let tls = self.client_tls();
        let connect = Client::connect_with(&api, tls.as_ref());
        match tokio::time::timeout(Duration::from_secs(3), connect).await {
            Ok(Ok(client)) => match self.token() {
                Some(token) => client.with_token(&token).map_err(|e| e.to_string()),
                None => Ok(client),
            }
            .map(|client| client.with_timeout(timeout)),
            Ok(Err(e)) => Err(format!("{}: {e}", self.name(i))),
            Err(_) => Err(format!("{}: connect {api}: timed out", self.name(i))),
        }
    }

    /// Member `i`'s status (a few seconds at most).
    async fn status(&self, i: usize) -> Result<StatusResponse, String> {
        let mut client = self.connect(i, Duration::from_secs(2)).await?;
        tokio::time::timeout(Duration::from_secs(3), client.status())
            .await
            .map_err(|_| format!("{}: status timed out", self.name(i)))?
            .map_err(|e| format!("{}: {e}", self.name(i)))
    }

    /// Waits until every member in `among` names the same leader, that
    /// leader is one of them and says it leads, its term is at least
    /// `min_term` and its id is not `not_id`. Returns its ordinal and status.
    async fn wait_for_leader_among(
        &self,
        among: &[usize],
        not_id: Option<u64>,
        min_term: u64,
    ) -> (usize, StatusResponse) {
        poll(
            &format!("one leader agreed by {among:?}"),
            DEADLINE,
            EVERY,
            move || async move {
                let mut seen = Vec::new();
                for &i in among {
                    let s = self.status(i).await?;
                    seen.push((i, s));
                }
                let views: Vec<String> = seen
                    .iter()
                    .map(|(i, s)| {
                        format!(
                            "{}: {} term {} leader {:?}",
                            self.name(*i),
                            s.role,
                            s.term,
                            s.leader_name
                        )
                    })
                    .collect();
                let leader_id = seen.first().and_then(|(_, s)| s.leader_id);
                let agreed =
                    leader_id.is_some() && seen.iter().all(|(_, s)| s.leader_id == leader_id);
                let leader = seen
                    .iter()
                    .find(|(_, s)| Some(s.id) == leader_id && s.role == "leader");
                match leader {
                    Some((i, s)) if agreed && s.term >= min_term && Some(s.id) != not_id => {
                        Ok((*i, s.clone()))
                    }
                    _ => Err(views.join("; ")),
                }
            },
        )
        .await
    }

    /// The leader every running member agrees on: its ordinal and status.
    async fn wait_for_leader(&self) -> (usize, StatusResponse) {
        self.wait_for_leader_among(&self.running(), None, 0).await
    }

    /// The ordinal of the leader every running member agrees on.
    async fn leader(&self) -> usize {
        self.wait_for_leader().await.0
    }

    /// Asks member `at` to move leadership to the member with id `to`, as
    /// an operator does: here through its client port, which takes admin
    /// calls in the process harness.
    async fn transfer_leader(&self, at: usize, to: u64) -> Result<(), String> {
        let mut client = self.connect(at, Duration::from_secs(30)).await?;
        client
            .transfer_leader(Some(to))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Makes member `to` the leader (`transfer-leader`), wherever
    /// leadership is now, and waits until every running member agrees.
    async fn make_leader(&self, to: usize) {
        let (leader, status) = self.wait_for_leader().await;
        if leader == to {
            return;
        }
        let target = self.status(to).await.unwrap_or_else(|e| panic!("{e}")).id;
        self.transfer_leader(leader, target)
            .await
            .unwrap_or_else(|e| panic!("transfer-leader to {}: {e}", self.name(to)));
        let (now, _) = self
            .wait_for_leader_among(&self.running(), None, status.term + 1)
            .await;
        assert_eq!(now, to, "leadership went to {}", self.name(now));
    }

    /// Waits until the leader reports exactly `n` members, all voters and
    /// caught up. Returns that member list.
    async fn wait_for_voters(&self, n: usize) -> MembersResponse {
        self.wait_for_voters_among(&self.running(), n).await
    }

    /// [`Self::wait_for_voters`] with the leader agreed by the members
    /// `among` only (a removed member that still runs knows no leader).
    async fn wait_for_voters_among(&self, among: &[usize], n: usize) -> MembersResponse {
        poll(
            &format!("{n} voters, caught up"),
            DEADLINE,
            EVERY,
            move || async move {
                let (leader, _) = self.wait_for_leader_among(among, None, 0).await;
                let mut client = self.connect(leader, Duration::from_secs(2)).await?;
                let members = client.members().await.map_err(|e| e.to_string())?;
                let voters = members
                    .members
                    .iter()
                    .filter(|p| p.member.as_ref().is_some_and(|m| m.voter))
                    .count();
                let lagging = members.members.iter().filter(|p| p.lag > 0).count();
                if voters == n && members.members.len() == n && lagging == 0 {
                    Ok(members)
                } else {
                    Err(format!(
                        "{} members, {voters} voters, {lagging} lagging",
                        members.members.len()
                    ))
                }
            },
        )
        .await
    }

    /// Waits until member `i` applied at least `index`; its status then.
    async fn wait_for_applied(&self, i: usize, index: u64) -> StatusResponse {
        poll(
            &format!("{} to apply index {index}", self.name(i)),
            DEADLINE,
            EVERY,
            move || async move {
                let s = self.status(i).await?;
                if s.applied_index >= index {
                    Ok(s)
                } else {
                    Err(format!("applied {}", s.applied_index))
                }
            },
        )
        .await
    }
}
