//! HTTP: the visit counter and its page ([`page`]), the cluster's status,
//! health and readiness probes, Prometheus metrics. It holds the request
//! path, the Raft handle and the roster, and never imports the gRPC faces.
//!
//! Served through hyper directly (not `axum::serve`) so every connection
//! has a header-read timeout and the number of connections is capped: a
//! client that trickles its headers cannot hold sockets forever. Visits
//! are rate-limited per client address and overall ([`limit`]).

pub mod limit;
pub mod page;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use openraft::ServerState;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use self::limit::{ClientAddr, VisitLimits};
use crate::auth::{Refusal, TokenFile};
use crate::tls::Acceptor;

use crate::cluster::roster::Roster;
use crate::error::Error;
use crate::metrics::{Format, Metrics, Snapshot};
use crate::raft::leader_of;
use crate::raft::requests::Requests;
use crate::store::Meta;
use crate::types::{
    Consistency, Formation, Member, NodeId, Op, Outcome, Raft, Standing, VISITS_KEY,
};

/// How long a visit may take before it is answered with a timeout.
const VISIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the visit limits forget clients that went quiet.
const FORGET_IDLE_CLIENTS: Duration = Duration::from_secs(60);

/// What the HTTP endpoints use.
pub struct HttpState {
    pub id: NodeId,
    /// How the membership describes this node.
    pub me: Member,
    pub raft: Raft,
    /// The members and their health, for the page and `/status`.
    pub roster: Roster,
    /// The last view of them, reused briefly.
    pub views: page::ViewCache,
    pub requests: Arc<Requests>,
    pub metrics: Arc<Metrics>,
    pub meta: Meta,
    /// Where the node stands in forming its cluster.
    pub formation: Formation,
    /// A node is ready only while it is within this many entries of the leader.
    pub ready_max_lag: u64,
    pub visit_limits: VisitLimits,
    /// The token `/metrics` requires, if any.
    pub metrics_token: Option<TokenFile>,
}

/// How HTTP connections are served.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
}

/// Connections the probe listener serves at once: the kubelet's probes
/// and a few people asking by hand.
const PROBE_CONNECTIONS: usize = 32;

/// Serves HTTP on `listener` and the probes alone on `probes` until `stop`
/// is cancelled, then lets open requests finish. Each listener has its own
/// connection cap, so visitors filling the HTTP port's never fail a probe.
pub async fn serve(
    state: HttpState,
    settings: HttpSettings,
    listener: TcpListener,
    tls: Option<Acceptor>,
    probes: TcpListener,
    stop: CancellationToken,
) {
    let state = Arc::new(state);
    let housekeeping = {
        let state = state.clone();
        let stop = stop.clone();
        async move {
            let mut every = tokio::time::interval(FORGET_IDLE_CLIENTS);
            loop {
                tokio::select! {
                    _ = every.tick() => state.visit_limits.forget_idle(),
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    let probe_settings = HttpSettings {
        max_connections: PROBE_CONNECTIONS,
        ..settings.clone()
    };
    tokio::join!(
        housekeeping,
        serve_app(router(state.clone()), settings, listener, tls, stop.clone()),
        serve_app(probe_router(state), probe_settings, probes, None, stop),
    );
}

/// Serves `app` on `listener` until `stop`, over TLS when `tls` is given,
/// each connection with the header timeout (the TLS handshake has its
/// own), at most `max_connections` at once (beyond, closed at once).
async fn serve_app(
    app: Router,
    settings: HttpSettings,
    listener: TcpListener,
    tls: Option<Acceptor>,
    stop: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let header_timeout = settings.header_timeout;
    let tasks = TaskTracker::new();
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("HTTP accept failed: {e}");
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // Over the cap, close at once rather than queue without bound.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let remote = client;
        let client = ClientAddr(client.ip());
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(client);
                request
            },
        ));
        let stop = stop.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, service, header_timeout, stop).await,
                Some(tls) => {
                    if let Some(stream) = tls.accept(stream, remote).await {
                        serve_connection(stream, service, header_timeout, stop).await;
                    }
                }
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Serves one HTTP/1.1 connection until it ends, or until `stop` and the
/// request in flight is answered.
async fn serve_connection<S, T>(
    stream: T,
    service: S,
    header_timeout: Duration,
    stop: CancellationToken,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// The probe listener: health and readiness only.
fn probe_router(core: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(core)
}

fn router(core: Arc<HttpState>) -> Router {
    Router::new()
        .route("/", get(visit))
        .route("/visits", get(visits))
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(core)
}

fn error_response(err: Error) -> Response {
    let status =
        StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, format!("{err}\n")).into_response()
}

fn leader_name(core: &HttpState) -> String {
    leader_of(&core.raft.metrics().borrow())
        .map(|(_, m)| m.name)
        .unwrap_or_else(|| "unknown".into())
}

impl HttpState {
    fn raft_metrics(&self) -> crate::types::RaftMetrics {
        self.raft.metrics().borrow().clone()
    }
}

/// `GET /`: counts one visit through Raft and says who served it.
async fn visit(
    State(core): State<Arc<HttpState>>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(limited) = core.visit_limits.check(client) {
        let retry_after = limited.retry_after().as_secs_f64().ceil().max(1.0) as u64;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after.to_string())],
            format!("{limited}; not counted, retry in {retry_after} s\n"),
        )
            .into_response();
    }
    let op = Op::Increment {
        key: VISITS_KEY.to_vec(),
        delta: 1,
    };
    let count = match core.requests.write(op, None, Some(VISIT_TIMEOUT)).await {
        Ok(Outcome::Incremented { value, .. }) => value,
        Ok(other) => match Error::refused(1, other) {
            Err(e) => return error_response(e),
            Ok(_) => {
                return error_response(Error::Raft("unexpected outcome for an increment".into()))
            }
        },
        Err(e) => return error_response(e),
    };
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html {
        Html(page::render(count, &cluster_view(&core).await)).into_response()
    } else {
        format!(
            "visits: {count}\nserved by: {}\nleader: {}\n",
            core.me.name,
            leader_name(&core)
        )
        .into_response()
    }
}

/// `GET /visits`: the count, read linearizably, without counting a visit.
async fn visits(State(core): State<Arc<HttpState>>) -> Response {
    match core
        .requests
        .get(VISITS_KEY, Consistency::Linearizable, Some(VISIT_TIMEOUT))
        .await
    {
        Ok((kv, _)) => {
            let visits = kv
                .and_then(|kv| String::from_utf8(kv.value).ok())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            Json(serde_json::json!({
                "visits": visits,
                "node": core.me.name,
                "leader": leader_name(&core),
            }))
            .into_response()
        }
        Err(e) => error_response(e),
    }
}

/// `GET /status`: the cluster as this node and its leader see it (see
/// [`page`]). Counts no visit and reads nothing through Raft.
async fn status(State(core): State<Arc<HttpState>>) -> Response {
    Json(cluster_view(&core).await).into_response()
}

async fn cluster_view(core: &HttpState) -> page::ClusterView {
    core.views
        .get(|| page::cluster_view(&core.roster, &core.me.name))
        .await
}

/// `GET /healthz`: the process runs and Raft has not stopped. Never depends
/// on a leader or a peer, so a partition or an ordered start-up does not get
/// the pod restarted.
async fn healthz(State(core): State<Arc<HttpState>>) -> Response {
    match core.raft_metrics().running_state {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(fatal) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft stopped: {fatal}\n"),
        )
            .into_response(),
    }
}

/// `GET /readyz`: a member with a known leader, caught up to within the
/// configured lag. Says why when it is not.
///
/// `GET /readyz?noleader` leaves out the leader: the StatefulSet's probe.
/// After every pod stopped, pod 0 restarts alone and can elect nobody; if
/// its readiness waited for a leader, OrderedReady would never create pod 1
/// and the cluster would never come back. For the same reason it passes
/// while a node that is not a member yet waits for the members of the
/// cluster the founding record names (pod 0 back on an empty volume): they
/// are the pods OrderedReady creates next. Clients get 503 from it
/// meanwhile, as it serves nothing.
async fn readyz(State(core): State<Arc<HttpState>>, Query(query): Query<ReadyQuery>) -> Response {
    match readiness(&core, query.noleader.is_some()) {
        Ok(()) if core.formation.get() == Standing::AwaitingMembers => (
            StatusCode::OK,
            "ready for ordering only: not a member yet, waiting for the members of the recorded cluster\n",
        )
            .into_response(),
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

#[derive(Debug, serde::Deserialize)]
struct ReadyQuery {
    noleader: Option<String>,
}

/// Why this node should not receive client traffic, if it should not.
fn readiness(core: &HttpState, without_leader: bool) -> Result<(), String> {
    let metrics = core.raft_metrics();
    if let Err(fatal) = &metrics.running_state {
        return Err(format!("raft stopped: {fatal}"));
    }
    match core.formation.get() {
        Standing::AwaitingMembers if without_leader => return Ok(()),
        Standing::AwaitingMembers => {
            return Err("not a member yet: waiting for the members of the recorded cluster".into())
        }
        Standing::Forming => {
            return Err(
                "not a member of a cluster yet (or its founding is not on record yet)".into(),
            )
        }
        Standing::Serving => {}
    }
    if metrics
        .membership_config
        .membership()
        .get_node(&core.id)
        .is_none()
    {
        return Err("not a member of a cluster yet".into());
    }
    let leaderless = metrics.current_leader.is_none() || metrics.state == ServerState::Candidate;
    if leaderless && !without_leader {
        return Err("no leader known".into());
    }
    let applied = metrics.last_applied.map_or(0, |l| l.index);
    let lag = metrics.last_log_index.unwrap_or(0).saturating_sub(applied);
    if lag > core.ready_max_lag {
        return Err(format!("catching up: {lag} entries not yet applied"));
    }
    Ok(())
}

/// `GET /metrics`: OpenMetrics text, labelled as such; Prometheus text
/// 0.0.4 for a client whose `Accept` asks for `text/plain` and not for
/// OpenMetrics (see [`Format::negotiate`]).
async fn metrics(
    State(core): State<Arc<HttpState>>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = &core.metrics_token {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(refusal) = token.check(authorization) {
            let reason = refusal.reason();
            tracing::warn!(%client, reason, "refused a /metrics scrape: bearer token {reason}");
            core.metrics.auth_failed("metrics", reason);
            return match refusal {
                Refusal::Missing => (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "/metrics needs a bearer token\n",
                )
                    .into_response(),
                Refusal::Wrong | Refusal::Forbidden { .. } | Refusal::AdminElsewhere => {
                    (StatusCode::FORBIDDEN, "wrong bearer token\n").into_response()
                }
            };
        }
    }
    let raft = core.raft_metrics();
    let text = core.metrics.render(Snapshot {
        raft: &raft,
        disk_bytes: core.meta.size_on_disk(),
        volume: core.meta.volume().ok(),
    });
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        format.encode(text),
    )
        .into_response()
}
