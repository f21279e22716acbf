//! The visit page a browser gets on `/`, and `GET /status`, the cluster's
//! state that the page refreshes itself from.
//!
//! A visit is a page load: the count on the page is the one this visit
//! made, counted once by the visit. The page's script refreshes only the
//! cluster's state, from `/status`, which writes nothing and reads nothing
//! through Raft, so a tab left open never inflates the counter.
//!
//! The page is one self-contained document (no external assets), rendered
//! on the server from the same [`ClusterView`] that `/status` serves, so it
//! reads the same without its script. Everything that comes from data is
//! escaped here, and the script writes only text. `/status` holds what any
//! visitor may see (names, ids, roles, health), never the cluster id or an
//! address.
//!
//! It owns only the last view, which it reuses for a moment, and never
//! writes.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::cluster::roster::{self, Roster};
use crate::proto::MemberProgress;
use crate::raft::leader_of;

/// How long the page and `/status` wait for the leader's view of the
/// members before they show their health as unknown.
const LEADER_VIEW_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a view is served again instead of asked anew.
const VIEW_REUSE: Duration = Duration::from_secs(1);

/// The last [`ClusterView`], served again for [`VIEW_REUSE`]. Every open
/// page asks every 2 s, and on a follower each fresh view costs the leader
/// an Admin call; so however many requests come in, a node asks the
/// leader at most once a second, and requests that arrive while it asks
/// wait for that answer instead of asking too.
#[derive(Default)]
pub struct ViewCache(tokio::sync::Mutex<Option<(Instant, ClusterView)>>);

impl ViewCache {
    /// The last view if it is recent enough, else the one `ask` gives.
    pub async fn get<F>(&self, ask: impl FnOnce() -> F) -> ClusterView
    where
        F: Future<Output = ClusterView>,
    {
        let mut last = self.0.lock().await;
        match &*last {
            Some((at, view)) if at.elapsed() < VIEW_REUSE => view.clone(),
            _ => {
                let view = ask().await;
                *last = Some((Instant::now(), view.clone()));
                view
            }
        }
    }
}

/// The cluster as one node and its leader see it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// The member that answered.
    pub node: String,
    /// The leader that member knows, if any.
    pub leader: Option<String>,
    pub term: u64,
    /// In ordinal order.
    pub members: Vec<MemberView>,
    /// Why the members' health is unknown (no leader, or it did not
    /// answer), when it is.
    pub health_unknown: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub name: String,
    /// The Raft node id, in hex as `raftset members` shows it.
    pub id: String,
    pub voter: bool,
    pub leader: bool,
    /// The leader's judgement ([`crate::cluster::membership::is_healthy`]);
    /// `None` when no leader answered.
    pub healthy: Option<bool>,
    /// Milliseconds since it last answered the leader; `None` for the
    /// leader itself, when unknown, or when it never answered this leader.
    pub last_contact_ms: Option<u64>,
    /// Entries behind the leader's log; `None` when unknown.
    pub lag: Option<u64>,
}

impl MemberView {
    fn of_progress(progress: MemberProgress) -> Option<MemberView> {
        let member = progress.member?;
        Some(MemberView {
            name: member.name,
            id: format!("{:016x}", member.id),
            voter: member.voter,
            leader: progress.is_leader,
            healthy: Some(progress.healthy),
            last_contact_ms: progress.last_contact_ms,
            lag: Some(progress.lag),
        })
    }

    fn role(&self) -> String {
        let kind = if self.voter { "voter" } else { "learner" };
        if self.leader {
            format!("{kind}, leader")
        } else {
            kind.to_string()
        }
    }

    fn health(&self) -> &'static str {
        match self.healthy {
            None => "unknown",
            Some(true) => "healthy",
            Some(false) => "unhealthy",
        }
    }

    fn contact(&self) -> String {
        match (self.leader || self.healthy.is_none(), self.last_contact_ms) {
            (true, _) => "—".into(),
            (false, None) => "never".into(),
            (false, Some(ms)) => format!("{ms} ms ago"),
        }
    }

    fn lag(&self) -> String {
        self.lag.map_or("—".into(), |lag| lag.to_string())
    }
}

/// What `node` and its leader know of the cluster now. Never fails: when
/// the leader cannot tell, the members come from this node's membership
/// with their health unknown, and the reason.
pub async fn cluster_view(roster: &Roster, node: &str) -> ClusterView {
    let metrics = roster.raft.metrics().borrow().clone();
    let asked = tokio::time::timeout(
        LEADER_VIEW_TIMEOUT,
        roster.leaders_view(LEADER_VIEW_TIMEOUT),
    )
    .await;
    let unknown = || {
        roster::members(&metrics)
            .into_iter()
            .map(|member| MemberView {
                leader: metrics.current_leader == Some(member.id),
                id: format!("{:016x}", member.id),
                name: member.name,
                voter: member.voter,
                healthy: None,
                last_contact_ms: None,
                lag: None,
            })
            .collect()
    };
    let (members, health_unknown) = match asked {
        Ok(Ok(view)) => (
            view.members
                .into_iter()
                .filter_map(MemberView::of_progress)
                .collect(),
            None,
        ),
        Ok(Err(e)) => (unknown(), Some(e.to_string())),
        Err(_) => (
            unknown(),
            Some(format!(
                "the leader did not answer within {} s",
                LEADER_VIEW_TIMEOUT.as_secs()
            )),
        ),
    };
    ClusterView {
        node: node.to_string(),
        leader: leader_of(&metrics).map(|(_, m)| m.name),
        term: metrics.current_term,
        members,
        health_unknown,
    }
}

/// The page for a visit that made the count `count`.
pub fn render(count: i64, view: &ClusterView) -> String {
    let rows: String = view
        .members
        .iter()
        .map(|m| {
            let health = m.health();
            format!(
                "<tr data-member=\"{name}\"><td>{name}</td><td>{role}</td>\
                 <td class=\"{health}\">{health}</td><td>{contact}</td><td>{lag}</td></tr>",
                name = escape(&m.name),
                role = m.role(),
                contact = m.contact(),
                lag = m.lag(),
            )
        })
        .collect();
    let unknown = view
        .health_unknown
        .as_deref()
        .map(|why| format!("Health unknown: {}", escape(why)))
        .unwrap_or_default();
    let noun = if count == 1 { "visit" } else { "visits" };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>raftset: {count} {noun}</title><style>{STYLE}</style></head><body>\
         <main data-refresh-ms=\"{refresh_ms}\">\
         <h1 id=\"count\">{count} {noun}</h1>\
         <p>This visit was counted by <b id=\"served-by\">{served_by}</b>. \
         The leader is <b id=\"leader\">{leader}</b>.</p>\
         <p class=\"note\">Every pod answers the same count: it is one value, replicated with \
         Raft, and each page load counts one visit. The members below refresh every \
         {refresh_s} s without counting any.</p>\
         <table id=\"members\"><thead><tr><th>member</th><th>role</th><th>health</th>\
         <th>last contact</th><th>lag</th></tr></thead><tbody>{rows}</tbody></table>\
         <p id=\"unknown\" class=\"stale\">{unknown}</p>\
         <p id=\"updated\" class=\"note\">As {served_by} saw it on this visit.</p>\
         </main><script>{SCRIPT}</script></body></html>",
        served_by = escape(&view.node),
        leader = escape(view.leader.as_deref().unwrap_or("none known")),
        refresh_s = REFRESH.as_secs(),
        refresh_ms = REFRESH.as_millis(),
    )
}

/// How often the page refreshes the members.
const REFRESH: Duration = Duration::from_secs(2);

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}\
main{max-width:44rem;margin:2rem auto;padding:1.5rem 2rem;background:#fff;\
border-radius:.5rem;box-shadow:0 1px 3px #0002}\
h1{font-size:2.6rem;margin:0 0 .5rem}\
table{border-collapse:collapse;width:100%;margin-top:1rem}\
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #e3e5ea}\
th{font-size:.8rem;text-transform:uppercase;color:#5b6270}\
.healthy{color:#17803d;font-weight:600}.unhealthy{color:#c3271b;font-weight:600}\
.unknown{color:#8a6d00}.note{color:#5b6270;font-size:.9rem}.stale{color:#c3271b}";

/// Rewrites the leader and the members from `/status` every [`REFRESH`]
/// (from the page's `data-refresh-ms`), as text, the way [`render`] writes
/// them.
const SCRIPT: &str = r##""use strict";
const REFRESH_MS = Number(document.querySelector("main").dataset.refreshMs);
function health(m) { return m.healthy === null ? "unknown" : m.healthy ? "healthy" : "unhealthy"; }
function addCell(row, text, className) {
  const cell = row.insertCell();
  cell.textContent = text;
  if (className) cell.className = className;
}
function addRow(body, m) {
  const row = body.insertRow();
  row.dataset.member = m.name;
  addCell(row, m.name);
  addCell(row, (m.voter ? "voter" : "learner") + (m.leader ? ", leader" : ""));
  addCell(row, health(m), health(m));
  addCell(row, m.leader || m.healthy === null ? "—"
    : m.last_contact_ms === null ? "never" : m.last_contact_ms + " ms ago");
  addCell(row, m.lag === null ? "—" : String(m.lag));
}
async function refresh() {
  const note = document.getElementById("updated");
  try {
    const reply = await fetch("/status", { cache: "no-store", headers: { Accept: "application/json" } });
    if (!reply.ok) throw new Error("HTTP " + reply.status);
    const view = await reply.json();
    document.getElementById("leader").textContent = view.leader ?? "none known";
    const body = document.createElement("tbody");
    view.members.forEach((m) => addRow(body, m));
    document.querySelector("#members tbody").replaceWith(body);
    document.getElementById("unknown").textContent =
      view.health_unknown ? "Health unknown: " + view.health_unknown : "";
    note.textContent = "Refreshed at " + new Date().toLocaleTimeString() + " from " + view.node + ".";
    note.className = "note";
  } catch (e) {
    note.textContent = "Could not refresh (" + e.message + "); trying again.";
    note.className = "stale";
  }
  setTimeout(refresh, REFRESH_MS);
}
setTimeout(refresh, REFRESH_MS);
"##;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, leader: bool, healthy: Option<bool>) -> MemberView {
        MemberView {
            name: name.into(),
            id: "00000000000000aa".into(),
            voter: true,
            leader,
            healthy,
            last_contact_ms: healthy.map(|_| 12),
            lag: healthy.map(|_| 0),
        }
    }

    /// However many requests want a view, the leader is asked once while
    /// an answer is in flight and once a second at most; after that the
    /// next request asks anew.
    #[tokio::test(start_paused = true)]
    async fn a_view_is_asked_for_once_a_second_however_many_want_it() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;

        let cache = Arc::new(ViewCache::default());
        let asked = Arc::new(AtomicU64::new(0));
        let get = |cache: Arc<ViewCache>, asked: Arc<AtomicU64>| async move {
            let view = cache
                .get(|| async {
                    let term = asked.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    ClusterView {
                        node: "raftset-1".into(),
                        leader: None,
                        term,
                        members: vec![],
                        health_unknown: None,
                    }
                })
                .await;
            view.term
        };
        let mut waiting = tokio::task::JoinSet::new();
        for _ in 0..20 {
            waiting.spawn(get(cache.clone(), asked.clone()));
        }
        while let Some(term) = waiting.join_next().await {
            assert_eq!(term.unwrap(), 1, "every waiting request got the one answer");
        }
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(get(cache.clone(), asked.clone()).await, 1, "reused");
        tokio::time::advance(VIEW_REUSE).await;
        assert_eq!(get(cache.clone(), asked.clone()).await, 2, "asked anew");
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn names_from_data_are_escaped() {
        let view = ClusterView {
            node: "<script>alert(1)</script>".into(),
            leader: Some("a&b\"c".into()),
            term: 1,
            members: vec![member("x'<img>", false, Some(true))],
            health_unknown: None,
        };
        let page = render(7, &view);
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("a&amp;b&quot;c"));
        assert!(page.contains("data-member=\"x&#39;&lt;img&gt;\""));
    }

    #[test]
    fn each_member_shows_its_role_and_health() {
        let view = ClusterView {
            node: "raftset-1".into(),
            leader: Some("raftset-0".into()),
            term: 3,
            members: vec![
                member("raftset-0", true, Some(true)),
                member("raftset-1", false, Some(true)),
                MemberView {
                    voter: false,
                    last_contact_ms: None,
                    ..member("raftset-2", false, Some(false))
                },
            ],
            health_unknown: None,
        };
        let page = render(1, &view);
        assert!(page.contains("<h1 id=\"count\">1 visit</h1>"), "{page}");
        for row in [
            "<td>raftset-0</td><td>voter, leader</td><td class=\"healthy\">healthy</td><td>—</td><td>0</td>",
            "<td>raftset-1</td><td>voter</td><td class=\"healthy\">healthy</td><td>12 ms ago</td>",
            "<td>raftset-2</td><td>learner</td><td class=\"unhealthy\">unhealthy</td><td>never</td>",
        ] {
            assert!(page.contains(row), "{row} missing from {page}");
        }
    }

    #[test]
    fn health_the_leader_could_not_tell_is_unknown() {
        let view = ClusterView {
            node: "raftset-1".into(),
            leader: None,
            term: 4,
            members: vec![member("raftset-0", false, None)],
            health_unknown: Some("no leader is known; try again".into()),
        };
        let page = render(5, &view);
        assert!(page.contains("<b id=\"leader\">none known</b>"), "{page}");
        assert!(page.contains("<td class=\"unknown\">unknown</td><td>—</td><td>—</td>"));
        assert!(page.contains("Health unknown: no leader is known; try again"));
        let json = serde_json::to_value(&view).unwrap();
        assert!(json.get("cluster_id").is_none());
        assert_eq!(json["members"][0]["healthy"], serde_json::Value::Null);
    }
}
