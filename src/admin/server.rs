//! The admin HTTP server of one node (axum), started by `node::start`
//! beside the ring listener and stopped with the node.
//!
//! Routes, bodies and errors are listed in `openapi.yaml` (served at
//! `GET /v1/openapi.yaml`; a test checks every route here is in it).
//!
//! What the server may not do: slow the particle. It reads the node
//! through a status request to the owner task (one message, answered
//! between visits), the deploy agent's request channel, the kv store and
//! inboxes (short locks), the event bus (a broadcast: a slow reader loses
//! events, it never blocks the sender) and the metrics (atomics).
//!
//! # `GET /v1/ring`
//! The members' reports are gathered over the members' **ring ports**
//! (the status request members already answer each other), concurrently,
//! each within [`GATHER_TIMEOUT`]. Not from their admin APIs: every
//! member's ring address is in the enumeration every node holds, while an
//! admin address is each node's own choice, may be off, and is loopback
//! by default, so on a real fleet another host cannot reach it. (The
//! ring port's status request must therefore stay as member-to-member
//! traffic when the operator requests move off the ring port.)
//!
//! Concurrent requests share one gather in flight, and a view gathered
//! less than [`RING_FRESH`] (500 ms) ago is served again: a node runs at
//! most one ring-wide gather at a time. A member's own report comes from
//! its status snapshot (at most about one report built per 200 ms).
//!
//! A member that answers is `live`. One that does not is `dead` if this
//! server has ever seen it up (it answered a gather, this node linked to
//! it or spliced it back in, or a member reports having linked to it as
//! its successor), else `not-started`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::api::{
    ConfigBody, DeployAnswer, ErrorBody, InboxAnswer, KV_LIST_MAX, KvEntry, KvListing, Liveness,
    MemberView, PrefixQuery, RingView, RollbackBody, is_healthy, push_request,
};
use super::dashboard::{self, RingOrigins};
use super::listen;
use crate::config::{AdminConfig, RingLayout};
use crate::deploy::agent::{DeployMsg, DeployView};
use crate::deploy::release::{Reply, Request as DeployRequest};
use crate::metrics::{FetchLabels, Metrics, RequestLabels};
use crate::observe::{Bus, EventKind};
use crate::station::sets::{SetEvent, check_name};
use crate::station::{Inboxes, KvStore, SetStore, unix_ms};
use crate::status::{self, Report};
use prometheus_client::metrics::{counter::Counter, family::Family};

/// Bound on one member's status answer while gathering `GET /v1/ring`.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(1);

/// How old a gathered `GET /v1/ring` view may be and still be served.
pub const RING_FRESH: Duration = Duration::from_millis(500);

pub use super::api::{BODY_LIMIT, CONFIG_BODY_LIMIT, PUSH_BODY_LIMIT};

/// Bound on a deploy request's answer (a push compiles and runs `init`).
pub const DEPLOY_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long open requests (an event stream, a push) get to finish once
/// the node stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The OpenAPI description of this server.
pub const OPENAPI_YAML: &str = include_str!("openapi.yaml");

/// Asks the node's owner task for its status report; `None` when the node
/// is stopping.
pub type StatusFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<Arc<Report>>> + Send>> + Send + Sync>;

/// What the server needs of its node.
pub struct AdminContext {
    /// The settings (token, whether it is required).
    pub config: AdminConfig,
    /// The node's index in the ring.
    pub index: usize,
    /// The ring enumeration.
    pub ring: RingLayout,
    /// The node's status report.
    pub status: StatusFn,
    /// The deploy agent's request channel.
    pub deploy_tx: mpsc::Sender<DeployMsg>,
    /// The deploy agent's published state.
    pub deploy_view: watch::Receiver<DeployView>,
    /// The node's kv store.
    pub kv: KvStore,
    /// The stations' inboxes (those that run later too).
    pub inboxes: Inboxes,
    /// The sets the node's stations publish.
    pub sets: SetStore,
    /// The node's event bus (and through it, its metrics).
    pub bus: Arc<Bus>,
    /// The cluster keys members are asked with (see `crate::secure`).
    pub cluster_keys: Option<crate::secure::ClusterKeys>,
}

struct Inner {
    ctx: AdminContext,
    /// Members this server has seen up (see the module docs).
    ever_up: Mutex<HashSet<usize>>,
    /// The last `/v1/ring` view and when its gather ended; held during a
    /// gather, so concurrent requests share the one in flight.
    gathered: tokio::sync::Mutex<Option<(Instant, RingView)>>,
    cancel: CancellationToken,
}

#[derive(Clone)]
struct App(Arc<Inner>);

impl std::ops::Deref for App {
    type Target = AdminContext;
    fn deref(&self) -> &AdminContext {
        &self.0.ctx
    }
}

/// An error answer: a status and a one-line reason, sent as [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub(super) fn new(code: StatusCode, why: impl Into<String>) -> Self {
        Self(code, why.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl ApiError {
    /// 413, naming the limits (the rejection does not say which endpoint).
    fn too_large() -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, listen::body_too_large())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let code = r.status();
        if code == StatusCode::PAYLOAD_TOO_LARGE {
            Self::too_large()
        } else {
            Self::new(code, format!("reading the request body: {}", r.body_text()))
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let code = r.status();
        if code == StatusCode::PAYLOAD_TOO_LARGE {
            Self::too_large()
        } else {
            Self::new(code, r.body_text())
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Binds the admin listener.
///
/// # Errors
/// A [`crate::BindError`] naming the admin address.
pub async fn bind(config: &AdminConfig) -> Result<TcpListener, crate::BindError> {
    TcpListener::bind(&config.listen)
        .await
        .map_err(|cause| crate::BindError {
            what: "admin address",
            addr: config.listen.clone(),
            cause,
        })
}

/// Serves the admin API on `listener` until `cancel`, then gives open
/// requests [`STOP_GRACE`] to end.
pub async fn serve(listener: TcpListener, ctx: AdminContext, cancel: CancellationToken) {
    let mut ever_up = HashSet::from([ctx.index]);
    ever_up.shrink_to_fit();
    let app = App(Arc::new(Inner {
        ctx,
        ever_up: Mutex::new(ever_up),
        gathered: tokio::sync::Mutex::new(None),
        cancel: cancel.clone(),
    }));
    let watcher = tokio::spawn(watch_members(app.clone(), cancel.clone()));
    let limits = app.config.limits;
    let metrics = Arc::clone(app.bus.metrics());
    let router = router(app);
    listen::serve(listener, router, limits, cancel, STOP_GRACE, metrics).await;
    watcher.abort();
}

/// Records members seen up from the node's events.
async fn watch_members(app: App, cancel: CancellationToken) {
    let mut rx = app.bus.subscribe();
    loop {
        let ev = tokio::select! {
            () = cancel.cancelled() => return,
            ev = rx.recv() => ev,
        };
        match ev {
            Ok(ev) => match ev.kind {
                EventKind::MemberUp { peer } => app.saw_up(peer),
                EventKind::SuccessorLinked { successor } => app.saw_up(successor),
                EventKind::MemberDown {
                    peer, left: true, ..
                } => app.saw_up(peer),
                _ => {}
            },
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The router: every route of the API (also used by the route test).
fn router(app: App) -> Router {
    let origins = Arc::new(RingOrigins::new(&app.ring, &app.config.listen));
    let events = get(events).layer(middleware::from_fn_with_state(
        origins,
        dashboard::allow_ring_origins,
    ));
    Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .route("/v1/status", get(status))
        .route("/v1/ring", get(ring))
        .route("/v1/events", events)
        .route("/v1/stations/{name}/kv", get(kv_list))
        .route("/v1/stations/{name}/kv/{key}", get(kv_get))
        .route("/v1/stations/{name}/inbox", axum::routing::post(inbox_post))
        .route(
            "/v1/stations/{name}/sets/{set}",
            get(super::sets::list).with_state(app.sets.clone()),
        )
        .route("/v1/stations/{name}/sets/{set}/events", get(set_events))
        .route(
            "/v1/stations/{name}/sets/{set}/{key}",
            get(super::sets::lookup).with_state(app.sets.clone()),
        )
        .route(
            "/v1/push",
            axum::routing::post(push).layer(DefaultBodyLimit::max(PUSH_BODY_LIMIT)),
        )
        .route("/v1/rollback", axum::routing::post(rollback))
        .route(
            "/v1/config/{key}",
            get(config_get)
                .put(config_put)
                .delete(config_delete)
                .layer(DefaultBodyLimit::max(CONFIG_BODY_LIMIT)),
        )
        .route("/v1/openapi.yaml", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            app.config.limits.body_timeout,
            listen::read_body_in_time,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .layer(middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

/// Every route pattern the router serves, for the OpenAPI test.
pub const ROUTES: &[&str] = &[
    "/",
    "/dashboard.js",
    "/dashboard.css",
    "/v1/status",
    "/v1/ring",
    "/v1/events",
    "/v1/stations/{name}/kv",
    "/v1/stations/{name}/kv/{key}",
    "/v1/stations/{name}/inbox",
    "/v1/stations/{name}/sets/{set}",
    "/v1/stations/{name}/sets/{set}/events",
    "/v1/stations/{name}/sets/{set}/{key}",
    "/v1/push",
    "/v1/rollback",
    "/v1/config/{key}",
    "/v1/openapi.yaml",
    "/metrics",
];

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} (see /v1/openapi.yaml)",
            req.uri().path()
        ),
    )
}

async fn wrong_method(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Counts every request by route and status.
async fn count(State(app): State<App>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let response = next.run(req).await;
    let labels = RequestLabels {
        route,
        code: response.status().as_u16(),
    };
    app.bus
        .metrics()
        .admin_requests
        .get_or_create(&labels)
        .inc();
    response
}

/// Mutating requests carry the bearer token when it is required.
async fn authorize(State(app): State<App>, req: Request, next: Next) -> Response {
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD);
    if mutating && app.config.require_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        let ok = match (&app.config.token, given) {
            (Some(token), Some(given)) => same_secret(token.as_bytes(), given.trim().as_bytes()),
            _ => false,
        };
        if !ok {
            let mut refused = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this admin API is not on a loopback address: a mutating request needs \
                 `Authorization: Bearer <token>` with the node's --admin-token-file token",
            )
            .into_response();
            refused.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ringhost admin\""),
            );
            return refused;
        }
    }
    next.run(req).await
}

/// The token of an `Authorization: Bearer <token>` value (the scheme
/// name is case-insensitive, RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Compares two secrets in time that depends on their lengths only.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl App {
    fn saw_up(&self, member: usize) {
        self.0.ever_up.lock().expect("ever_up lock").insert(member);
    }

    async fn report(&self) -> ApiResult<Arc<Report>> {
        match tokio::time::timeout(Duration::from_secs(5), (self.status)()).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node is stopping",
            )),
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node did not answer a status request within 5 s",
            )),
        }
    }

    /// Whether this node runs (or has a release of) station `name`.
    fn station_known(&self, name: &str) -> ApiResult<()> {
        let known = self.inboxes.contains(name)
            || self
                .deploy_view
                .borrow()
                .stations
                .iter()
                .any(|s| s.name == name);
        if known {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("this node runs no station named {name:?}"),
            ))
        }
    }

    /// One request to the deploy agent.
    async fn deploy(&self, req: DeployRequest, blob: Bytes) -> ApiResult<Reply> {
        let (tx, rx) = oneshot::channel();
        let msg = DeployMsg::Request {
            req,
            blob,
            reply: tx,
        };
        let stopping = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping");
        self.deploy_tx.send(msg).await.map_err(|_| stopping())?;
        let (reply, _) = tokio::select! {
            () = self.0.cancel.cancelled() => return Err(stopping()),
            r = tokio::time::timeout(DEPLOY_ANSWER_TIMEOUT, rx) => match r {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => return Err(stopping()),
                Err(_) => return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("the deploy agent did not answer within {DEPLOY_ANSWER_TIMEOUT:?}"),
                )),
            },
        };
        match reply.error {
            Some(e) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e)),
            None => Ok(reply),
        }
    }
}

async fn status(State(app): State<App>) -> ApiResult<Json<Report>> {
    app.report().await.map(|r| Json(Report::clone(&r)))
}

/// `GET /v1/ring`. Concurrent requests share one gather in flight, and a
/// view gathered less than [`RING_FRESH`] ago is served again, so a node
/// runs at most one ring-wide gather at a time however many come.
async fn ring(State(app): State<App>) -> ApiResult<Json<RingView>> {
    let since = Instant::now();
    let mut gathered = app.0.gathered.lock().await;
    if let Some((at, view)) = gathered.as_ref()
        && (at.elapsed() < RING_FRESH || *at >= since)
    {
        return Ok(Json(view.clone()));
    }
    let view = gather(&app).await?;
    *gathered = Some((Instant::now(), view.clone()));
    Ok(Json(view))
}

/// Asks every member for its report (see the module docs).
async fn gather(app: &App) -> ApiResult<RingView> {
    let me = app.report().await?;
    let members = app.ring.members();
    let asks = members.iter().enumerate().map(|(i, m)| {
        let mine = (i == app.index).then(|| Report::clone(&me));
        async move {
            match mine {
                Some(r) => Ok(r),
                None => status::query(&m.addr, app.cluster_keys.as_ref(), GATHER_TIMEOUT).await,
            }
        }
    });
    let answers = futures::future::join_all(asks).await;
    let mut views = Vec::with_capacity(members.len());
    {
        let mut ever_up = app.0.ever_up.lock().expect("ever_up lock");
        for r in answers.iter().flatten() {
            ever_up.insert(r.node.index);
            if let Some(s) = r.successor.filter(|_| r.successor_up) {
                ever_up.insert(s);
            }
            ever_up.extend(r.linked_ever.iter().copied());
        }
        for (i, (m, answer)) in members.iter().zip(answers).enumerate() {
            let in_view = me.members.get(i).is_some_and(|s| s.live);
            views.push(match answer {
                // A member answering for another index (a changed ring) is
                // not that member.
                Ok(r) if r.node.index == i => MemberView::from_report(in_view, r),
                other => {
                    let error = match other {
                        Ok(r) => format!("answered as member {}", r.node.index),
                        Err(e) => format!("{e:#}"),
                    };
                    MemberView {
                        index: i,
                        name: m.name.clone(),
                        addr: m.addr.clone(),
                        liveness: if ever_up.contains(&i) {
                            Liveness::Dead
                        } else {
                            Liveness::NotStarted
                        },
                        in_view,
                        error: Some(error),
                        admin: None,
                        pid: None,
                        uptime_s: None,
                        stations: Vec::new(),
                        lap_p50_ms: None,
                        lap_p99_ms: None,
                        faults: 0,
                        config_version: None,
                        report: None,
                    }
                }
            });
        }
    }
    Ok(RingView {
        node: app.index,
        ring_size: members.len(),
        ring_hash: app.ring.hash().to_string(),
        healthy: is_healthy(&views),
        members: views,
    })
}

async fn events(State(app): State<App>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = app.bus.subscribe();
    let stream = futures::stream::unfold((rx, 0u64), |(mut rx, last)| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let Ok(json) = serde_json::to_value(&ev) else {
                        continue;
                    };
                    let kind = json["type"].as_str().unwrap_or("event").to_string();
                    let event = Event::default()
                        .id(ev.id.to_string())
                        .event(kind)
                        .data(json.to_string());
                    return Some((Ok(event), (rx, ev.id)));
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    // The id stays the last one delivered.
                    let data = serde_json::json!({ "type": "lagged", "skipped": skipped });
                    let event = Event::default()
                        .id(last.to_string())
                        .event("lagged")
                        .data(data.to_string());
                    return Some((Ok(event), (rx, last)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let stream = stream.take_until(app.0.cancel.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `GET /v1/stations/{name}/sets/{set}/events`: the set's live entries as
/// `put` events, a `synced` event, then every change (`put`, `remove`,
/// `expire`, `clear`) as it happens; a reader too slow for
/// [`crate::station::sets::EVENTS_BUFFER`] changes gets `lagged` (with
/// how many it missed: it should reconnect for a fresh snapshot).
async fn set_events(
    State(app): State<App>,
    Path((name, set)): Path<(String, String)>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    check_name(&set).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let (entries, rx) = app
        .sets
        .subscribe(&name, &set, unix_ms())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let snapshot = futures::stream::iter(
        entries
            .into_iter()
            .map(SetEvent::Put)
            .map(|e| Ok(set_event(&e)))
            .chain(std::iter::once(Ok(Event::default()
                .event("synced")
                .data("{}")))),
    );
    let live = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(ev) => Some((Ok(set_event(&ev)), rx)),
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                let data = serde_json::json!({ "type": "lagged", "skipped": skipped });
                Some((
                    Ok(Event::default().event("lagged").data(data.to_string())),
                    rx,
                ))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    let stream = snapshot
        .chain(live)
        .take_until(app.0.cancel.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn set_event(ev: &SetEvent) -> Event {
    let data = serde_json::to_string(ev).unwrap_or_else(|_| "{}".into());
    Event::default().event(ev.name()).data(data)
}

async fn kv_list(
    State(app): State<App>,
    Path(name): Path<String>,
    query: Result<Query<PrefixQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<KvListing>> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    app.station_known(&name)?;
    let keys: Vec<String> = app
        .kv
        .keys(&name)
        .into_iter()
        .filter(|k| k.starts_with(&q.prefix))
        .collect();
    let truncated = keys.len() > KV_LIST_MAX;
    let entries = keys
        .into_iter()
        .take(KV_LIST_MAX)
        .filter_map(|k| app.kv.get(&name, &k).map(|v| KvEntry::new(k, v)))
        .collect();
    Ok(Json(KvListing {
        station: name,
        entries,
        truncated,
    }))
}

async fn kv_get(
    State(app): State<App>,
    Path((name, key)): Path<(String, String)>,
) -> ApiResult<Json<KvEntry>> {
    app.station_known(&name)?;
    match app.kv.get(&name, &key) {
        Some(v) => Ok(Json(KvEntry::new(key, v))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("station {name} has no key {key:?}"),
        )),
    }
}

async fn inbox_post(
    State(app): State<App>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<InboxAnswer>)> {
    let body = body?;
    app.station_known(&name)?;
    let Some(inbox) = app.inboxes.get(&name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("station {name} has not run on this node (no inbox)"),
        ));
    };
    inbox
        .push(body.to_vec())
        .map_err(|e| ApiError::new(StatusCode::TOO_MANY_REQUESTS, e))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(InboxAnswer {
            pending: inbox.len(),
        }),
    ))
}

/// `POST /v1/push?name=NAME&config=KEY=VALUE&signer=HEX&signature=HEX&local=true`.
async fn push(
    State(app): State<App>,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<DeployAnswer>> {
    let body = body?;
    let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, why);
    let req = push_request(query.as_deref().unwrap_or("")).map_err(bad)?;
    if body.is_empty() {
        return Err(bad(
            "the body must be the module's bytes (a .wasm component)".into(),
        ));
    }
    let local = matches!(req, DeployRequest::Push { local: true, .. });
    let reply = app.deploy(req, body).await?;
    if local {
        // A module run here only: no release to name.
        return match reply.error {
            Some(e) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e)),
            None => Ok(Json(DeployAnswer {
                release: None,
                local: true,
                unchanged: false,
            })),
        };
    }
    deploy_answer(reply)
}

async fn rollback(
    State(app): State<App>,
    body: Result<Json<RollbackBody>, JsonRejection>,
) -> ApiResult<Json<DeployAnswer>> {
    let Json(body) = body?;
    app.station_known(&body.name)?;
    let reply = app
        .deploy(DeployRequest::Rollback { name: body.name }, Bytes::new())
        .await?;
    deploy_answer(reply)
}

fn deploy_answer(reply: Reply) -> ApiResult<Json<DeployAnswer>> {
    let release = reply.release.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the deploy agent answered without a release",
        )
    })?;
    Ok(Json(DeployAnswer {
        release: Some(release),
        local: false,
        unchanged: reply.unchanged,
    }))
}

async fn config_get(
    State(app): State<App>,
    Path(key): Path<String>,
) -> ApiResult<Json<crate::deploy::release::ConfigEntry>> {
    let reply = app
        .deploy(DeployRequest::ConfigGet { key }, Bytes::new())
        .await?;
    reply.config.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the deploy agent answered without an entry",
        )
    })
}

async fn config_put(
    State(app): State<App>,
    Path(key): Path<String>,
    body: Result<Json<ConfigBody>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let Json(body) = body?;
    let req = DeployRequest::ConfigSet {
        key,
        value: Some(body.value),
    };
    app.deploy(req, Bytes::new()).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn config_delete(State(app): State<App>, Path(key): Path<String>) -> ApiResult<StatusCode> {
    let req = DeployRequest::ConfigSet { key, value: None };
    app.deploy(req, Bytes::new()).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn openapi() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        )],
        OPENAPI_YAML,
    )
}

/// Prometheus metrics, in the text format the `Accept` header asks for
/// (see [`crate::metrics::Format::negotiate`]: OpenMetrics by default, the 0.0.4 text for
/// `text/plain`). Figures kept elsewhere are copied in first.
async fn metrics(State(app): State<App>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    // Several Accept headers are one list (RFC 9110, 5.3).
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let format = crate::metrics::Format::negotiate(
        (!accept.is_empty()).then(|| accept.join(",")).as_deref(),
    );
    let m: &Metrics = app.bus.metrics();
    {
        let view = app.deploy_view.borrow();
        let set = |family: &Family<FetchLabels, Counter>, kind, n| {
            family
                .get_or_create(&FetchLabels { kind })
                .inner()
                .store(n, std::sync::atomic::Ordering::Relaxed);
        };
        set(&m.fetches, "whole", view.fetched_full);
        set(&m.fetches, "delta", view.fetched_delta);
        set(&m.fetched_bytes, "whole", view.fetched_bytes_full);
        set(&m.fetched_bytes, "delta", view.fetched_bytes_delta);
    }
    m.config_version
        .set(i64::try_from(status::config_version(&app.kv)).unwrap_or(i64::MAX));
    for (station, set, entries, changes) in app.sets.stats() {
        let labels = crate::metrics::SetLabels { station, set };
        m.set_entries
            .get_or_create(&labels)
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        m.set_changes
            .get_or_create(&labels)
            .inner()
            .store(changes, std::sync::atomic::Ordering::Relaxed);
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            ),
            // Caches must not hand one format to a client of the other.
            (header::VARY, HeaderValue::from_static("accept")),
        ],
        m.encode_as(format),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("BEARER s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("Basic czNjcmV0"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"x"));
    }

    #[test]
    fn every_route_is_in_the_openapi_file() {
        let doc = OPENAPI_YAML;
        for route in ROUTES {
            assert!(
                doc.contains(&format!("\n  {route}:")),
                "{route} is not in openapi.yaml"
            );
        }
        // And nothing is documented that is not served.
        let documented = doc
            .lines()
            .filter(|l| l.starts_with("  /") && l.ends_with(':'))
            .count();
        assert_eq!(documented, ROUTES.len(), "openapi.yaml lists other paths");
    }
}
