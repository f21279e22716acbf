//! The visit page in a real browser (headless Chromium): what it shows on
//! a follower, and what its refresh shows after the cluster changed under
//! it, without counting a visit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::support::browser::{dom_after, screenshot};
use crate::support::http::{self, get};
use crate::support::{wait_for, Cluster, Harness, DEADLINE};

/// Virtual time a page runs for: a few of its 2 s refreshes.
const BUDGET: Duration = Duration::from_secs(7);

/// The visits counted so far, read from `http` without counting one.
async fn visits(http: &str) -> i64 {
    http::visits(http).await.unwrap()
}

/// The table row of member `name` in `dom`.
fn row<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr data-member=\"{name}\">"))
        .unwrap_or_else(|| panic!("no row for {name} in {dom}"));
    let end = start + dom[start..].find("</tr>").expect("row end");
    &dom[start..end]
}

/// Asserts that `dom` shows `name` with `role` and `health`.
fn assert_member(dom: &str, name: &str, role: &str, health: &str) {
    let row = row(dom, name);
    assert!(
        row.contains(&format!("<td>{role}</td>")),
        "{name} is not {role}: {row}"
    );
    assert!(
        row.contains(&format!("<td class=\"{health}\">{health}</td>")),
        "{name} is not {health}: {row}"
    );
}

/// Asserts that the page's script refreshed `dom` from `node`.
fn assert_refreshed(dom: &str, node: &str) {
    let at = dom.find("id=\"updated\"").expect("no refresh note");
    let note = &dom[at..at + dom[at..].find("</p>").unwrap()];
    assert!(
        note.contains("Refreshed at") && note.contains(&format!("from {node}.")),
        "the script did not refresh the page: {note}"
    );
}

/// A follower's page, as a browser renders it after its refreshes: this
/// visit's count, the pod that served it, the leader, and every member in
/// ordinal order with its role and health. The refreshes count nothing.
/// `/status` serves the same, and not the cluster id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_the_count_the_pods_and_every_members_health() {
    // Health is real: a heartbeat late by more than the election timeout
    // makes a member unhealthy, and on a loaded machine the tests' usual
    // 300 ms timeout is missed now and then.
    let cluster = Cluster::start_with(
        3,
        &["--heartbeat-ms", "100", "--election-timeout-ms", "2000"],
    )
    .await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    for i in 0..2 {
        assert_eq!(get(&cluster.nodes[i].http(), "/", "*/*").await.status, 200);
    }
    let http = cluster.nodes[follower].http();
    let url = format!("http://{http}/");
    let dir = tempfile::tempdir().unwrap();

    let dom = dom_after(&url, BUDGET, dir.path()).await;
    assert_eq!(visits(&http).await, 3, "the page load counted once: {dom}");
    assert!(dom.contains("<h1 id=\"count\">3 visits</h1>"), "{dom}");
    let name = |i: usize| cluster.nodes[i].name.clone();
    assert!(
        dom.contains(&format!("<b id=\"served-by\">{}</b>", name(follower))),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("<b id=\"leader\">{}</b>", name(leader))),
        "{dom}"
    );
    for i in 0..3 {
        let role = if i == leader {
            "voter, leader"
        } else {
            "voter"
        };
        assert_member(&dom, &name(i), role, "healthy");
    }
    let at = |i: usize| dom.find(&format!("data-member=\"{}\"", name(i))).unwrap();
    assert!(at(0) < at(1) && at(1) < at(2), "ordinal order: {dom}");
    assert_refreshed(&dom, &name(follower));

    let file = dir.path().join("visit-page.png");
    screenshot(&url, Duration::from_secs(3), (900, 480), &file).await;
    // A copy for people to look at; the test's own is in its temp dir.
    let kept = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/visit-page.png");
    std::fs::copy(&file, &kept).unwrap();
    assert_eq!(visits(&http).await, 4, "refreshes count no visit");

    let status = get(&http, "/status", "application/json").await;
    assert_eq!(status.status, 200);
    let json: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(json["node"], name(follower).as_str());
    assert_eq!(json["leader"], name(leader).as_str());
    assert_eq!(json["members"].as_array().unwrap().len(), 3);
    assert_eq!(json["members"][leader]["leader"], true);
    assert_eq!(json["members"][follower]["healthy"], true);
    let cluster_id = cluster.status(0).await.unwrap().cluster_id;
    assert!(!cluster_id.is_empty());
    assert!(
        !status.body.contains(&cluster_id),
        "/status gives the cluster id away: {}",
        status.body
    );
    assert_eq!(visits(&http).await, 4, "/status counts no visit");
}

/// A door in front of a node's HTTP port that holds every `/status`
/// request until it is opened: the page's refresh waits (and the browser's
/// virtual time with it) while the test changes the cluster.
struct Door {
    addr: SocketAddr,
    /// Notified when a `/status` request waits at the door.
    knocked: Arc<Notify>,
    open: watch::Sender<bool>,
}

impl Door {
    async fn before(upstream: String) -> Door {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let knocked = Arc::new(Notify::new());
        let (open, opened) = watch::channel(false);
        let knocks = knocked.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(pass(
                    client,
                    upstream.clone(),
                    knocks.clone(),
                    opened.clone(),
                ));
            }
        });
        Door {
            addr,
            knocked,
            open,
        }
    }
}

/// Passes one connection's bytes on; a request for `/status` waits until
/// the door is open.
async fn pass(
    client: TcpStream,
    upstream: String,
    knocked: Arc<Notify>,
    mut opened: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(&upstream).await?;
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = from_client.read(&mut buf).await?;
        if n == 0 {
            return to_server.shutdown().await;
        }
        let status = buf[..n].windows(12).any(|w| w == b"GET /status ");
        if status && !*opened.borrow() {
            knocked.notify_one();
            let _ = opened.wait_for(|open| *open).await;
        }
        to_server.write_all(&buf[..n]).await?;
    }
}

/// A page loaded while all three members are healthy; its leader is then
/// killed before the page's first refresh. The refreshed page shows the
/// new leader and the old one unhealthy, and the count stays the one the
/// page load made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_refreshes_to_a_new_leader_without_counting_a_visit() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let http = cluster.nodes[follower].http();
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let door = Door::before(http.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", door.addr);
    let browser = tokio::spawn({
        let dir = dir.path().to_path_buf();
        async move { dom_after(&url, BUDGET, &dir).await }
    });

    tokio::time::timeout(DEADLINE, door.knocked.notified())
        .await
        .expect("the page never refreshed");
    assert_eq!(visits(&http).await, 1, "the page load counted once");
    let old = names[leader].clone();
    cluster.kill(leader).await;
    let new = wait_for(
        "the follower to see a new leader and the old one unhealthy",
        || {
            let http = http.clone();
            let old = old.clone();
            async move {
                let reply = get(&http, "/status", "application/json").await;
                let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
                let old_health = json["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["name"] == old.as_str())
                    .map(|m| m["healthy"].clone());
                match json["leader"].as_str() {
                    Some(new) if new != old && old_health == Some(false.into()) => {
                        Ok(new.to_string())
                    }
                    _ => Err(reply.body),
                }
            }
        },
    )
    .await;
    door.open.send_replace(true);
    let dom = browser.await.unwrap();

    assert!(dom.contains("<h1 id=\"count\">1 visit</h1>"), "{dom}");
    assert!(
        dom.contains(&format!("<b id=\"served-by\">{}</b>", names[follower])),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("<b id=\"leader\">{new}</b>")),
        "the refresh shows the new leader: {dom}"
    );
    assert_member(&dom, &old, "voter", "unhealthy");
    assert_member(&dom, &new, "voter, leader", "healthy");
    assert_refreshed(&dom, &names[follower]);
    assert_eq!(visits(&http).await, 1, "refreshes count no visit");
}
