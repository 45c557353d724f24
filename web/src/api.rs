//! The routes: pages, `/api/...`, `/metrics`; and the guard in front of them (who is asking,
//! may they, security headers).

#![deny(clippy::disallowed_methods)]

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use outpost_storage::{Aggregation, Selector};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Identity, Login, Role, SESSION_COOKIE};
use crate::range::{self, RangeAnswer, RangeQuery};
use crate::samples::blocking;
use crate::{assets, summary, Fleet, SilenceRequest, Web, WebError};

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = match &self {
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::Unauthorized => StatusCode::UNAUTHORIZED,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::Store(_) | WebError::Config(_) | WebError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            WebError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

type Answer<T> = Result<T, WebError>;

/// Every page and endpoint, behind the guard.
pub fn router(web: Arc<Web>) -> axum::Router {
    let page = get(|| async { html(assets::app_html()) });
    axum::Router::new()
        .route("/", get(|| async { html(assets::fleet_html()) }))
        .route("/alerts", page.clone())
        .route("/probes", page.clone())
        .route("/explore", page.clone())
        .route("/compare", page.clone())
        .route("/boards", page.clone())
        .route("/reports", page.clone())
        // The public page asks nothing of what needs a login.
        .route("/status", get(|| async { html(assets::INDEX_HTML) }))
        .route("/boards/{name}", page.clone())
        .route("/login", page.clone())
        .route("/device/{id}", page)
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", assets::APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", assets::APP_CSS) }),
        )
        .route("/api/health", get(health))
        .route("/api/me", get(me))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/devices", get(devices))
        .route("/api/devices/{id}", get(device))
        .route("/api/devices/{id}/logs", get(device_logs))
        .route("/api/series", get(series))
        .route("/api/range", get(range_handler))
        .route("/api/export", get(export))
        .route("/api/alerts", get(alerts))
        .route("/api/alerts/fired", get(alert_firings))
        .route("/api/silences", get(list_silences).post(silence))
        .route("/api/silences/{id}", axum::routing::delete(delete_silence))
        .route("/api/silences/{id}/expire", post(expire_silence))
        .route("/api/status", get(public_status))
        .route("/api/boards", get(list_boards))
        .route(
            "/api/boards/{name}",
            get(get_board).put(put_board).delete(delete_board),
        )
        .route("/api/probes/outages", get(probe_outages))
        .route("/api/probes/outages/note", post(outage_note))
        .route("/api/outages/notes", get(outage_notes))
        .route("/api/outages/note", post(outage_note))
        .route("/api/live", get(live))
        .route("/api/backup", get(backup))
        .route("/metrics", get(metrics))
        .merge(crate::prometheus::routes(web.clone()))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(web.clone(), guard))
        .with_state(web)
}

/// A 404: JSON for API clients, the dashboard (which says the page does not exist) for a browser
/// that asked for a page.
async fn not_found(uri: axum::http::Uri, headers: axum::http::HeaderMap) -> Response {
    let wants_page = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_page && !uri.path().starts_with("/api/") {
        let mut page = html(assets::INDEX_HTML);
        *page.status_mut() = StatusCode::NOT_FOUND;
        return page;
    }
    WebError::NotFound("no such page or endpoint".into()).into_response()
}

fn html(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Endpoints anyone may call: the login itself, whether one is needed, and the public status
/// page's answer (a 404 unless `[web.status]` is on).
const PUBLIC: &[&str] = &[
    "/api/health",
    "/api/me",
    "/api/login",
    "/api/logout",
    "/api/status",
];

async fn guard(State(web): State<Arc<Web>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let from = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    let basic = crate::auth::basic_credentials(request.headers());
    if let Some(refused) = verify_basic_login(&web, basic, from).await {
        return refused;
    }
    let protected =
        (path.starts_with("/api/") || path == "/metrics") && !PUBLIC.contains(&path.as_str());
    // Prometheus' API takes queries by POST too (Grafana's default): those read.
    let changes =
        !matches!(*request.method(), Method::GET | Method::HEAD) && !path.starts_with("/api/v1/");
    let mut response = match check(&web, &request, protected, changes) {
        Ok(identity) => {
            if let Some(identity) = identity {
                request.extensions_mut().insert(identity);
            }
            next.run(request).await
        }
        Err(error) => error.into_response(),
    };
    let status_unauthorized = response.status() == StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    if status_unauthorized && path.starts_with("/api/v1/") {
        // Prometheus clients (curl, scripts) answer this with HTTP basic credentials.
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"outpost\""),
        );
    }
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
             frame-ancestors 'none'; form-action 'self'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if path.starts_with("/api/") {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Verifies an HTTP basic login that is not yet remembered (off the async threads: argon2),
/// so that `check` finds it; the answer when it is throttled.
async fn verify_basic_login(
    web: &Arc<Web>,
    basic: Option<(String, String)>,
    from: Option<std::net::IpAddr>,
) -> Option<Response> {
    let (name, password) = basic?;
    if !web.auth.enabled() || web.auth.basic_cached(&name, &password).is_some() {
        return None;
    }
    let auth = web.clone();
    let checked =
        tokio::task::spawn_blocking(move || auth.auth.basic_login(&name, &password, from)).await;
    match checked {
        Ok(Login::Throttled(wait)) => {
            let seconds = wait.as_secs().max(1);
            Some(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, seconds.to_string())],
                    Json(json!({
                        "error": format!("too many failed logins from this address or for this name: try again in {seconds} s")
                    })),
                )
                    .into_response(),
            )
        }
        _ => None,
    }
}

fn check(
    web: &Web,
    request: &Request,
    protected: bool,
    changes: bool,
) -> Result<Option<Identity>, WebError> {
    let headers = request.headers();
    if changes {
        // A page on another site can post a form to the hub with the user's cookie; it cannot
        // send JSON without the browser asking the hub first, and it cannot fake Origin.
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return Err(WebError::BadRequest(
                "send the body as application/json".into(),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let same = origin
                .split_once("://")
                .is_some_and(|(_, authority)| authority == host);
            if !same {
                return Err(WebError::Forbidden(format!(
                    "requests from {origin} are not accepted (no cross-origin changes)"
                )));
            }
        }
    }
    if !protected {
        return Ok(web.auth.identify(headers));
    }
    let identity = web.auth.identify(headers).ok_or(WebError::Unauthorized)?;
    if changes && identity.role != Role::Admin {
        return Err(WebError::Forbidden(format!(
            "{} is a viewer; changes need an admin",
            identity.name
        )));
    }
    Ok(Some(identity))
}

/// From memory only: anyone who can reach the port may call it, so it must not wait for the
/// disk. A store that refuses writes makes the hub degraded (503), saying why.
async fn health(State(web): State<Arc<Web>>) -> Response {
    let store = web.store.health();
    let (status, code) = match &store.write_failure {
        None => ("ok", StatusCode::OK),
        Some(_) => ("degraded", StatusCode::SERVICE_UNAVAILABLE),
    };
    let body = json!({
        "status": status,
        "store": {
            "series": store.series,
            "disk_bytes": store.disk_bytes,
            "write_failure": store.write_failure,
        },
    });
    (code, Json(body)).into_response()
}

async fn me(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    Json(json!({
        "auth": web.auth.enabled(),
        "identity": web.auth.identify(&headers),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

async fn login(
    State(web): State<Arc<Web>>,
    extensions: axum::http::Extensions,
    Json(form): Json<LoginForm>,
) -> Response {
    // The address, when the server was started with connection info (the hub's is).
    let from = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    let auth = web.clone();
    let checked =
        tokio::task::spawn_blocking(move || auth.auth.login(&form.name, &form.password, from))
            .await;
    match checked {
        Ok(Login::Accepted(session, identity)) => {
            let cookie = format!(
                "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                web.auth.session_ttl().as_secs()
            );
            (
                [(header::SET_COOKIE, cookie)],
                Json(json!({ "identity": identity })),
            )
                .into_response()
        }
        Ok(Login::Throttled(wait)) => {
            let seconds = wait.as_secs().max(1);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, seconds.to_string())],
                Json(json!({
                    "error": format!("too many failed logins from this address or for this name: try again in {seconds} s")
                })),
            )
                .into_response()
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "wrong name or password"})),
        )
            .into_response(),
    }
}

async fn logout(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    web.auth.logout(&headers);
    (
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Json(json!({})),
    )
        .into_response()
}

fn with_summary(device: crate::DeviceView, summary: &mut summary::Summary) -> Value {
    let found = summary.remove(&device.device).unwrap_or_default();
    let mut device = serde_json::to_value(device).expect("devices serialize");
    device["summary"] = serde_json::to_value(found).expect("summaries serialize");
    device
}

/// How long one fleet list is served. The summary reads an hour of every device's series (a
/// quarter of a second for 1,000 devices, benches/README.md), so that many open dashboards, or a
/// script polling the list, cost one summary a second rather than one per request.
const DEVICE_LIST_MAX_AGE_MS: i64 = 1000;
/// A request for a list at least this old has the next one made in the background, so that
/// under steady requests the list is renewed before it expires and no request waits for a
/// summary; a request for an expired list (nobody asked for a second) waits for a new one.
const DEVICE_LIST_RENEW_AFTER_MS: i64 = 500;

async fn devices(State(web): State<Arc<Web>>) -> Answer<Response> {
    let now = web.fleet.now_ms();
    let body = match cached_device_list(&web, now) {
        Some((age, body)) => {
            if age >= DEVICE_LIST_RENEW_AFTER_MS {
                if let Ok(maker) = web.device_list_maker.clone().try_lock_owned() {
                    let web = web.clone();
                    tokio::spawn(async move {
                        if let Err(error) = make_device_list(&web, now).await {
                            tracing::warn!("the fleet list was not made anew: {error:?}");
                        }
                        drop(maker);
                    });
                }
            }
            body
        }
        None => {
            let _maker = web.device_list_maker.lock().await;
            // Whoever held the lock before may have just made one.
            let now = web.fleet.now_ms();
            match cached_device_list(&web, now) {
                Some((_, body)) => body,
                None => make_device_list(&web, now).await?,
            }
        }
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// The last list made and its age, if it has not expired. A list from the future (the hub's
/// clock was stepped back) has, so that it does not stay for as long as the step.
fn cached_device_list(web: &Web, now: i64) -> Option<(i64, axum::body::Bytes)> {
    let cached = web.device_list.lock().expect("device list lock");
    let (made_at, body) = cached.as_ref()?;
    let age = now - made_at;
    (0..DEVICE_LIST_MAX_AGE_MS)
        .contains(&age)
        .then(|| (age, body.clone()))
}

async fn make_device_list(web: &Arc<Web>, now: i64) -> Result<axum::body::Bytes, WebError> {
    let mut summary = summary::summarize(&web.samples(), now, None).await?;
    let devices: Vec<Value> = web
        .fleet
        .devices()
        .into_iter()
        .map(|d| with_summary(d, &mut summary))
        .collect();
    let body =
        axum::body::Bytes::from(serde_json::to_vec(&devices).expect("device lists serialize"));
    *web.device_list.lock().expect("device list lock") = Some((now, body.clone()));
    Ok(body)
}

async fn device(State(web): State<Arc<Web>>, Path(id): Path<String>) -> Answer<Response> {
    let found = web
        .fleet
        .devices()
        .into_iter()
        .find(|d| d.device == id)
        .ok_or_else(|| WebError::NotFound(format!("no device {id:?}")))?;
    let now = web.fleet.now_ms();
    let mut summary = summary::summarize(&web.samples(), now, Some(&id)).await?;
    Ok(Json(with_summary(found, &mut summary)).into_response())
}

#[derive(Deserialize)]
struct LogParams {
    #[serde(default)]
    q: String,
    limit: Option<usize>,
}

/// The log lines a device kept and sent, newest first: those holding `q` (ignoring case), at
/// most `limit` (100 by default, 1,000 at most).
async fn device_logs(
    State(web): State<Arc<Web>>,
    Path(id): Path<String>,
    Query(params): Query<LogParams>,
) -> Answer<Response> {
    if params.q.len() > 1024 {
        return Err(WebError::BadRequest("q: at most 1024 bytes".into()));
    }
    let limit = params.limit.unwrap_or(100).min(1000);
    let fleet = web.fleet.clone();
    let lines = tokio::task::spawn_blocking(move || fleet.device_logs(&id, &params.q, limit))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))??;
    Ok(Json(json!({ "lines": lines })).into_response())
}

#[derive(Deserialize)]
struct SeriesParams {
    device: Option<String>,
    #[serde(rename = "match")]
    matcher: Option<String>,
    start: Option<String>,
    end: Option<String>,
}

/// How far back a series listing from remote storage looks when no `start` is given. The
/// store lists every series it holds; an engine is asked for a window, as its API wants.
const ENGINE_SERIES_LOOKBACK_MS: i64 = 30 * 86_400_000;

/// The selector of a request: `match` narrowed to `device`, or all of `device`'s series.
fn selector(device: Option<&str>, matcher: Option<&str>) -> Answer<Selector> {
    let device = device.filter(|d| !d.is_empty());
    let matcher = matcher.filter(|m| !m.trim().is_empty());
    let selector = match (matcher, device) {
        (Some(text), _) => {
            Selector::parse(text).map_err(|e| WebError::BadRequest(format!("match: {e}")))?
        }
        (None, Some(device)) => Selector::parse(&format!("{{instance={device:?}}}"))
            .map_err(|e| WebError::BadRequest(format!("device: {e}")))?,
        (None, None) => {
            return Err(WebError::BadRequest(
                "give match (a selector such as jetson_temperature_celsius{zone=\"GPU\"}) or \
                 device"
                    .into(),
            ))
        }
    };
    Ok(match device {
        Some(device) => selector.and_equal("instance", device),
        None => selector,
    })
}

/// Most series one listing returns.
const MAX_LISTED_SERIES: usize = 20_000;

async fn series(
    State(web): State<Arc<Web>>,
    Query(params): Query<SeriesParams>,
) -> Answer<Response> {
    let selector = selector(params.device.as_deref(), params.matcher.as_deref())?;
    let (start, end) = window(
        params.start.as_deref(),
        params.end.as_deref(),
        web.fleet.now_ms(),
        ENGINE_SERIES_LOOKBACK_MS,
    )?;
    let found = web.samples().series(&selector, start, end).await?;
    if found.len() > MAX_LISTED_SERIES {
        return Err(WebError::BadRequest(format!(
            "the selector matches {} series, more than {MAX_LISTED_SERIES}; narrow it",
            found.len()
        )));
    }
    let list: Vec<Value> = found
        .iter()
        .map(|key| {
            json!({
                "series": key.to_string(),
                "name": key.name(),
                "labels": key.owned_labels().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "series": list })).into_response())
}

#[derive(Deserialize)]
struct RangeParams {
    device: Option<String>,
    #[serde(rename = "match")]
    matcher: Option<String>,
    start: Option<String>,
    end: Option<String>,
    step: Option<String>,
    #[serde(rename = "fn")]
    aggregation: Option<String>,
    max_points: Option<usize>,
    format: Option<String>,
}

/// A request's `start` and `end`: `end` defaults to now, `start` to `span` before `end`.
fn window(start: Option<&str>, end: Option<&str>, now: i64, span: i64) -> Answer<(i64, i64)> {
    let bad = |key: &str, e: String| WebError::BadRequest(format!("{key}: {e}"));
    let end = match end {
        Some(text) => parse_time(text, now).map_err(|e| bad("end", e))?,
        None => now,
    };
    let start = match start {
        Some(text) => parse_time(text, now).map_err(|e| bad("start", e))?,
        None => end.saturating_sub(span),
    };
    Ok((start, end))
}

/// A time in a request: milliseconds since the epoch, `now`, or `now-15m` (s, m, h, d).
pub fn parse_time(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if text == "now" {
        return Ok(now);
    }
    if let Some(ago) = text.strip_prefix("now-") {
        return Ok(now - parse_duration(ago)?);
    }
    Err(format!(
        "{text:?} is not a time: use milliseconds since 1970, now, or now-15m"
    ))
}

/// A duration in the grammar of the command line and the configs (`500ms`, `30s`, `1h30m`,
/// `2w`; `outpost_storage::parse_duration_ms`), or, as this API always took, plain milliseconds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("{text:?} is too long"));
    }
    outpost_storage::parse_duration_ms(text).map_err(|e| e.to_string())
}

async fn range_answer(web: &Arc<Web>, params: RangeParams) -> Answer<RangeAnswer> {
    let selector = selector(params.device.as_deref(), params.matcher.as_deref())?;
    let (start, end) = window(
        params.start.as_deref(),
        params.end.as_deref(),
        web.fleet.now_ms(),
        3_600_000,
    )?;
    let bad = |key: &str, e: String| WebError::BadRequest(format!("{key}: {e}"));
    let step_ms = match &params.step {
        Some(text) if !text.is_empty() => Some(parse_duration(text).map_err(|e| bad("step", e))?),
        _ => None,
    };
    let aggregation: Aggregation = params
        .aggregation
        .as_deref()
        .unwrap_or("avg")
        .parse()
        .map_err(|e| bad("fn", e))?;
    range::answer(
        &web.samples(),
        &RangeQuery {
            selector: &selector,
            start_ms: start,
            end_ms: end,
            step_ms,
            max_points: params.max_points.unwrap_or(1000),
            aggregation,
            limit_points: web.config.max_points,
            limit_series: web.config.max_series,
        },
    )
    .await
}

async fn range_handler(
    State(web): State<Arc<Web>>,
    Query(params): Query<RangeParams>,
) -> Answer<Response> {
    Ok(Json(range_answer(&web, params).await?).into_response())
}

async fn export(
    State(web): State<Arc<Web>>,
    Query(params): Query<RangeParams>,
) -> Answer<Response> {
    let format = params.format.clone().unwrap_or_else(|| "csv".into());
    let answer = range_answer(&web, params).await?;
    match format.as_str() {
        "json" => Ok((
            [(
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"outpost-export.json\"",
            )],
            Json(answer),
        )
            .into_response()),
        "csv" => Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"outpost-export.csv\"",
                ),
            ],
            to_csv(&answer),
        )
            .into_response()),
        other => Err(WebError::BadRequest(format!(
            "format: {other:?} is not csv or json"
        ))),
    }
}

/// One row per point: `time,timestamp_ms,series,value`, an empty value where the series has a
/// gap. The series is quoted as CSV quotes (its label values may hold commas and quotes).
pub fn to_csv(answer: &RangeAnswer) -> String {
    let mut out = String::from("time,timestamp_ms,series,value\n");
    for series in &answer.series {
        let quoted = format!("\"{}\"", series.series.replace('"', "\"\""));
        for (timestamp, value) in &series.points {
            let value = value.map(|v| v.to_string()).unwrap_or_default();
            out.push_str(&format!(
                "{},{timestamp},{quoted},{value}\n",
                rfc3339(*timestamp)
            ));
        }
    }
    out
}

/// UTC, millisecond precision.
pub use outpost_storage::rfc3339_ms as rfc3339;

async fn alerts(State(web): State<Arc<Web>>) -> Response {
    Json(web.fleet.alerts()).into_response()
}

#[derive(Deserialize)]
struct FiringParams {
    start: Option<String>,
    end: Option<String>,
}

/// How often each rule fired on each device from `start` to `end` (the last day by default),
/// counted from every firing the hub recorded, not only the history's last transitions.
async fn alert_firings(
    State(web): State<Arc<Web>>,
    Query(params): Query<FiringParams>,
) -> Answer<Response> {
    let now = web.fleet.now_ms();
    let (start, end) = window(
        params.start.as_deref(),
        params.end.as_deref(),
        now,
        86_400_000,
    )?;
    if end < start {
        return Err(WebError::BadRequest("end must not be before start".into()));
    }
    let fleet = web.fleet.clone();
    let firings = tokio::task::spawn_blocking(move || fleet.alert_firings(start, end))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))??;
    Ok(Json(json!({ "start": start, "end": end, "fired": firings.fired, "uncounted": firings.uncounted })).into_response())
}

async fn silence(
    State(web): State<Arc<Web>>,
    Extension(identity): Extension<Identity>,
    Json(request): Json<SilenceRequest>,
) -> Answer<Response> {
    if request.ends_ms <= request.starts_ms.unwrap_or_else(|| web.fleet.now_ms()) {
        return Err(WebError::BadRequest(
            "ends_ms must be after the start".into(),
        ));
    }
    Selector::parse(&request.matcher).map_err(|e| WebError::BadRequest(format!("match: {e}")))?;
    let fleet = web.fleet.clone();
    let sent = tokio::task::spawn_blocking(move || fleet.silence(request, &identity))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    Ok((StatusCode::CREATED, Json(sent?)).into_response())
}

#[derive(Deserialize)]
struct OutageParams {
    device: Option<String>,
    probe: Option<String>,
    start: Option<String>,
    end: Option<String>,
}

/// Each probe's outages and availability over a range (a day by default).
async fn probe_outages(
    State(web): State<Arc<Web>>,
    Query(params): Query<OutageParams>,
) -> Answer<Response> {
    let now = web.fleet.now_ms();
    let (start, end) = window(
        params.start.as_deref(),
        params.end.as_deref(),
        now,
        86_400_000,
    )?;
    if end <= start {
        return Err(WebError::BadRequest("end must be after start".into()));
    }
    let step = crate::outages::step_for(start, end);
    let fleet = web.fleet.clone();
    let notes = tokio::task::spawn_blocking(move || fleet.outage_notes())
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    let device = params.device.unwrap_or_default();
    let probe = params.probe.unwrap_or_default();
    let probes = crate::outages::report(
        &web.samples(),
        &notes,
        (&device, &probe),
        (start, end, step),
    )
    .await?;
    Ok(
        Json(json!({ "start": start, "end": end, "step_ms": step, "probes": probes }))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteRequest {
    device: String,
    #[serde(default)]
    probe: String,
    start_ms: i64,
    /// The resolution the outage was seen at: its start is within this of the real one.
    #[serde(default)]
    step_ms: i64,
    note: String,
}

/// Every operator's note on an outage, of probes and devices, or of one `device`.
async fn outage_notes(
    State(web): State<Arc<Web>>,
    Query(params): Query<OutageParams>,
) -> Answer<Response> {
    let fleet = web.fleet.clone();
    let mut notes = tokio::task::spawn_blocking(move || fleet.outage_notes())
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    if let Some(device) = params.device.filter(|d| !d.is_empty()) {
        notes.retain(|n| n.device == device);
    }
    Ok(Json(json!({ "notes": notes })).into_response())
}

/// An operator's note on an outage ("resolved by replacing the switch").
async fn outage_note(
    State(web): State<Arc<Web>>,
    Extension(identity): Extension<Identity>,
    Json(request): Json<NoteRequest>,
) -> Answer<Response> {
    if request.note.len() > 4096 {
        return Err(WebError::BadRequest("note: at most 4096 bytes".into()));
    }
    // They name a store key: a device's or probe's name, not a document. No probe: the
    // device's own outage.
    if request.device.is_empty() || request.device.len() > 256 {
        return Err(WebError::BadRequest("device: 1 to 256 bytes".into()));
    }
    if request.probe.len() > 256 {
        return Err(WebError::BadRequest("probe: at most 256 bytes".into()));
    }
    let note = crate::outages::OutageNote {
        device: request.device,
        probe: request.probe,
        start_ms: request.start_ms,
        step_ms: request.step_ms.clamp(0, 366 * 86_400_000),
        note: request.note,
        by: identity.name.clone(),
        at_ms: web.fleet.now_ms(),
    };
    let fleet = web.fleet.clone();
    let kept = note.clone();
    tokio::task::spawn_blocking(move || fleet.set_outage_note(kept))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))??;
    Ok(Json(note).into_response())
}

/// The public status page's answer: for the devices and probes `[web.status]` names, whether
/// each is up now and how available it was over the last day and 30 days; nothing else (no
/// labels, addresses, metadata or alert texts).
async fn public_status(State(web): State<Arc<Web>>) -> Answer<Response> {
    if !web.config.status.enabled {
        return Err(WebError::NotFound(
            "no status page ([web.status] is off)".into(),
        ));
    }
    let now = web.fleet.now_ms();
    // Held while a new answer is made: a crowd of visitors costs one answer per interval.
    let mut kept = web.status_answer.lock().await;
    let fresh = kept
        .as_ref()
        .filter(|(at, _)| (0..STATUS_MAX_AGE_MS).contains(&(now - at)));
    let body = match fresh {
        Some((_, body)) => body.clone(),
        None => {
            let answer = make_status(&web, now).await?;
            let body = axum::body::Bytes::from(answer.to_string());
            *kept = Some((now, body.clone()));
            body
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// How long the public status page's answer is served before it is made again.
const STATUS_MAX_AGE_MS: i64 = 30_000;

async fn make_status(web: &Arc<Web>, now: i64) -> Result<Value, WebError> {
    let status = &web.config.status;
    let states = on_fleet(web, |fleet| Ok(fleet.devices())).await?;
    let devices: Vec<Value> = status
        .devices
        .iter()
        .map(|name| {
            let state = states.iter().find(|d| &d.device == name).map(|d| d.state);
            json!({ "device": name, "state": state })
        })
        .collect();
    let mut probes = Vec::new();
    for entry in &status.probes {
        let (device, probe) = entry.split_once('/').unwrap_or((entry, ""));
        let mut availability = Vec::new();
        let mut up = None;
        for span in [86_400_000_i64, 30 * 86_400_000] {
            let (start, end) = (now - span, now);
            let step = crate::outages::step_for(start, end);
            let found =
                crate::outages::report(&web.samples(), &[], (device, probe), (start, end, step))
                    .await?;
            let report = found.into_iter().next();
            if span == 86_400_000 {
                up = report.as_ref().map(|r| {
                    r.outages
                        .iter()
                        .rfind(|o| o.severity == "critical")
                        .is_none_or(|o| o.end_ms.is_some())
                });
            }
            availability.push(report.and_then(|r| r.availability));
        }
        probes.push(json!({ "device": device, "probe": probe, "up": up,
                            "availability_24h": availability[0], "availability_30d": availability[1] }));
    }
    Ok(json!({ "title": status.title, "at_ms": now, "devices": devices, "probes": probes }))
}

/// Runs a blocking call of the hub's on the blocking pool.
async fn on_fleet<T: Send + 'static>(
    web: &Web,
    work: impl FnOnce(&dyn Fleet) -> Result<T, WebError> + Send + 'static,
) -> Result<T, WebError> {
    let fleet = web.fleet.clone();
    tokio::task::spawn_blocking(move || work(fleet.as_ref()))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?
}

/// Every board: its name, how many panels, who changed it last and when.
async fn list_boards(State(web): State<Arc<Web>>) -> Answer<Response> {
    let boards = on_fleet(&web, |fleet| Ok(fleet.boards())).await?;
    let listed: Vec<Value> = boards
        .iter()
        .map(|b| {
            json!({ "name": b.name, "panels": b.panels.len(), "updated_ms": b.updated_ms,
                    "updated_by": b.updated_by })
        })
        .collect();
    Ok(Json(json!({ "boards": listed })).into_response())
}

/// One board, as it exports (and imports again).
async fn get_board(State(web): State<Arc<Web>>, Path(name): Path<String>) -> Answer<Response> {
    let boards = on_fleet(&web, |fleet| Ok(fleet.boards())).await?;
    let board = boards
        .into_iter()
        .find(|b| b.name == name)
        .ok_or_else(|| WebError::NotFound(format!("no board {name:?}")))?;
    Ok(Json(board).into_response())
}

async fn put_board(
    State(web): State<Arc<Web>>,
    Path(name): Path<String>,
    Extension(identity): Extension<Identity>,
    Json(request): Json<crate::boards::BoardRequest>,
) -> Answer<Response> {
    let board = crate::boards::board(&name, request, &identity.name, web.fleet.now_ms())?;
    let kept = board.clone();
    on_fleet(&web, move |fleet| {
        let boards = fleet.boards();
        let new = !boards.iter().any(|b| b.name == kept.name);
        if new && boards.len() >= crate::boards::MAX_BOARDS {
            return Err(WebError::BadRequest(format!(
                "the hub keeps at most {} boards",
                crate::boards::MAX_BOARDS
            )));
        }
        fleet.put_board(kept)
    })
    .await?;
    Ok(Json(board).into_response())
}

async fn delete_board(State(web): State<Arc<Web>>, Path(name): Path<String>) -> Answer<Response> {
    let lookup = name.clone();
    if !on_fleet(&web, move |fleet| fleet.delete_board(&lookup)).await? {
        return Err(WebError::NotFound(format!("no board {name:?}")));
    }
    Ok(Json(json!({ "deleted": name })).into_response())
}

async fn list_silences(State(web): State<Arc<Web>>) -> Answer<Response> {
    let fleet = web.fleet.clone();
    let silences = tokio::task::spawn_blocking(move || fleet.silences())
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(Json(serde_json::json!({ "silences": silences })).into_response())
}

async fn end_silence(
    web: Arc<Web>,
    id: String,
    identity: Identity,
    delete: bool,
) -> Answer<Response> {
    let fleet = web.fleet.clone();
    let ended = tokio::task::spawn_blocking(move || fleet.expire_silence(&id, &identity, delete))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(Json(ended?).into_response())
}

/// Ends a silence now and keeps its record.
async fn expire_silence(
    State(web): State<Arc<Web>>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Answer<Response> {
    end_silence(web, id, identity, false).await
}

/// Ends a silence now and forgets it.
async fn delete_silence(
    State(web): State<Arc<Web>>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Answer<Response> {
    end_silence(web, id, identity, true).await
}

#[derive(Deserialize)]
struct LiveParams {
    device: Option<String>,
}

async fn live(State(web): State<Arc<Web>>, Query(params): Query<LiveParams>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt;
    let wanted = params.device.filter(|d| !d.is_empty());
    let stream = tokio_stream::wrappers::BroadcastStream::new(web.fleet.subscribe()).filter_map(
        move |device| {
            let event = match device {
                Ok(device) if wanted.as_ref().is_none_or(|w| *w == device) => {
                    Some(Ok::<_, std::convert::Infallible>(
                        Event::default().event("ingested").data(device),
                    ))
                }
                _ => None,
            };
            std::future::ready(event)
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A consistent copy of the hub's store, streamed as it is read from a temporary file beside the
/// store (same file system, so there is room for it), which is unlinked at once.
async fn backup(
    State(web): State<Arc<Web>>,
    Extension(identity): Extension<Identity>,
) -> Answer<Response> {
    use futures_util::StreamExt;
    use std::io::Read;
    if identity.role != Role::Admin {
        return Err(WebError::Forbidden(format!(
            "{} is a viewer; a backup needs an admin",
            identity.name
        )));
    }
    let store = web.store.clone();
    let file = blocking(move || {
        let name = format!(
            ".{}.backup-{}",
            store
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            crate::auth::random_hex(8)?
        );
        let path = store.path().with_file_name(name);
        #[allow(clippy::disallowed_methods)] // on the blocking pool
        let bytes = store.backup(&path)?;
        let file = std::fs::File::open(&path)
            .map_err(|e| WebError::Internal(format!("reading the backup: {e}")));
        let _ = std::fs::remove_file(&path);
        Ok((file?, bytes))
    })
    .await?;
    let (file, bytes) = file;
    let file = Arc::new(std::sync::Mutex::new(file));
    let chunks = futures_util::stream::unfold(file, |file| async move {
        let reader = file.clone();
        let chunk = tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0u8; 1 << 20];
            let n = reader.lock().expect("backup file lock").read(&mut buffer)?;
            buffer.truncate(n);
            Ok::<_, std::io::Error>(buffer)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match chunk {
            Ok(buffer) if buffer.is_empty() => None,
            Ok(buffer) => Some((Ok(axum::body::Bytes::from(buffer)), file)),
            Err(error) => Some((Err(error), file)),
        }
    })
    .boxed();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, bytes.to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"outpost-hub-backup.redb\"".to_string(),
            ),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response())
}

async fn metrics(State(web): State<Arc<Web>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        web.fleet.metrics(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations() {
        assert_eq!(parse_time("1700000000000", 5), Ok(1_700_000_000_000));
        assert_eq!(parse_time("now", 5_000_000), Ok(5_000_000));
        assert_eq!(parse_time("now-15m", 5_000_000), Ok(5_000_000 - 900_000));
        assert!(parse_time("yesterday", 0).is_err());
        assert_eq!(parse_duration("7d"), Ok(604_800_000));
        assert_eq!(parse_duration("2w"), Ok(14 * 86_400_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(
            parse_duration("1500"),
            Ok(1_500),
            "plain milliseconds, as before"
        );
        assert!(parse_duration("99999999999999999d").is_err());
    }

    /// A fleet whose clock the test sets, and which counts how often it is asked for devices.
    struct CountingFleet {
        now_ms: std::sync::atomic::AtomicI64,
        asked: std::sync::atomic::AtomicUsize,
        events: tokio::sync::broadcast::Sender<String>,
    }

    impl crate::Fleet for CountingFleet {
        fn devices(&self) -> Vec<crate::DeviceView> {
            let asked = self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut record = serde_json::Map::new();
            record.insert("asked".into(), asked.into());
            vec![crate::DeviceView {
                device: "orin-01".into(),
                state: crate::DeviceState::Online,
                record,
            }]
        }
        fn alerts(&self) -> crate::FleetAlerts {
            crate::FleetAlerts::default()
        }
        fn silence(&self, _: SilenceRequest, _: &Identity) -> Result<crate::SilenceView, WebError> {
            Err(WebError::BadRequest("not here".into()))
        }
        fn metrics(&self) -> String {
            String::new()
        }
        fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
            self.events.subscribe()
        }
        fn now_ms(&self) -> i64 {
            self.now_ms.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn the_fleet_list_is_made_once_a_second_however_often_it_is_asked_for() {
        use http_body_util::BodyExt;
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let store =
            outpost_storage::Store::open(dir.path().join("hub.redb"), Default::default()).unwrap();
        let fleet = Arc::new(CountingFleet {
            now_ms: 1_800_000_000_000.into(),
            asked: 0.into(),
            events: tokio::sync::broadcast::channel(1).0,
        });
        let web = Web::new(Arc::new(store), fleet.clone(), crate::WebConfig::default());
        let asked = |web: Arc<Web>| async move {
            let response = devices(State(web)).await.unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&bytes).unwrap()[0]["asked"].clone()
        };
        assert_eq!(asked(web.clone()).await, json!(0), "the first list");
        fleet
            .now_ms
            .fetch_add(DEVICE_LIST_RENEW_AFTER_MS - 1, SeqCst);
        assert_eq!(asked(web.clone()).await, json!(0), "served again");
        assert_eq!(fleet.asked.load(SeqCst), 1, "and not renewed yet");

        fleet.now_ms.fetch_add(1, SeqCst);
        assert_eq!(
            asked(web.clone()).await,
            json!(0),
            "half a second old: served while the next one is made"
        );
        let made_at = fleet.now_ms.load(SeqCst);
        for _ in 0..1000 {
            if web.device_list.lock().unwrap().as_ref().unwrap().0 == made_at {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            asked(web.clone()).await,
            json!(1),
            "the next one, made once"
        );
        assert_eq!(fleet.asked.load(SeqCst), 2);

        fleet.now_ms.fetch_add(DEVICE_LIST_MAX_AGE_MS, SeqCst);
        assert_eq!(
            asked(web.clone()).await,
            json!(2),
            "expired: the request waits for a new one"
        );
        // A clock stepped back (the hub's wall clock corrected) does not pin an old list.
        fleet.now_ms.fetch_sub(60_000, SeqCst);
        assert_eq!(asked(web).await, json!(3));
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }
}
