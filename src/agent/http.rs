//! The agent's HTTP endpoints: `/metrics`, `/api/health`, `/api/query` (the store, which
//! `outpost db query` cannot open while the agent holds it) and
//! `POST /api/v1/import/prometheus` (VictoriaMetrics' path and format, so existing clients work).

#![deny(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use outpost_storage::{Aggregation, Selector};

use super::config::ImportSection;
use super::sink::Sink;
use crate::collect::scrape::{accepted_window, parse_exposition};
use crate::results::{write_results, Format};
use outpost::timearg::{now_ms, parse_duration_ms, parse_time};

pub struct HttpState {
    pub sink: Arc<Sink>,
    /// Replaced on SIGHUP.
    pub import: std::sync::RwLock<ImportSection>,
    pub started: Instant,
    pub alerts: Option<Arc<crate::alerting::runtime::AlertShared>>,
    pub tasks: Arc<crate::supervise::Tasks>,
    /// `[[agent.tokens]]`: with any, every request but `/api/health` needs one.
    pub tokens: Vec<super::config::AgentToken>,
}

pub fn router(state: Arc<HttpState>) -> Router {
    let max_body = state.import.read().expect("import config lock").max_body.0;
    let body_limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let alert_routes = match &state.alerts {
        Some(alerts) => {
            use crate::alerting::runtime as a;
            Router::new()
                .route("/api/alerts", get(a::list_alerts))
                .route("/api/alerts/history", get(a::history))
                .route("/api/silences", get(a::list_silences).post(a::add_silence))
                .route(
                    "/api/silences/{id}",
                    axum::routing::delete(a::delete_silence),
                )
                .with_state(alerts.clone())
        }
        None => Router::new(),
    };
    Router::new()
        .merge(alert_routes)
        .route("/metrics", get(metrics))
        .route("/api/health", get(health))
        .route("/api/query", get(query))
        .route("/api/logs", get(kept_logs))
        .merge(outpost_web::prometheus::routes(state.clone()))
        .route(
            "/api/v1/import/prometheus",
            post(import).layer(DefaultBodyLimit::max(body_limit)),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Who may do what: with tokens, every request but `/api/health` must carry one; without,
/// reads are open to whoever reaches the listener (loopback unless the config says otherwise)
/// and changes come from this machine only. The import endpoint has its own rule
/// (`[import] allow_remote`).
async fn guard(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    match access(
        &state.tokens,
        peer,
        request.method(),
        path,
        request.headers(),
    ) {
        Ok(()) => next.run(request).await,
        Err((status, message)) => (status, message).into_response(),
    }
}

fn access(
    tokens: &[super::config::AgentToken],
    peer: SocketAddr,
    method: &axum::http::Method,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> Result<(), (StatusCode, &'static str)> {
    if path == "/api/health" {
        return Ok(());
    }
    if !tokens.is_empty() {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| outpost_web::sha256_hex(token.trim()));
        let known = presented.is_some_and(|digest| {
            tokens
                .iter()
                .any(|t| constant_time_eq(t.sha256.as_bytes(), digest.as_bytes()))
        });
        return if known {
            Ok(())
        } else {
            Err((
                StatusCode::UNAUTHORIZED,
                "this agent's API needs a bearer token (Authorization: Bearer ..., [[agent.tokens]])\n",
            ))
        };
    }
    // Prometheus' API takes queries by POST too (Grafana's default): those read.
    let prometheus_read = path.starts_with("/api/v1/") && path != "/api/v1/import/prometheus";
    let change =
        !matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD) && !prometheus_read;
    if change && !peer.ip().is_loopback() && path != "/api/v1/import/prometheus" {
        return Err((
            StatusCode::FORBIDDEN,
            "changes are taken from this machine only unless the agent has [[agent.tokens]]\n",
        ));
    }
    Ok(())
}

impl outpost_web::prometheus::PromContext for HttpState {
    fn store(&self) -> &Arc<outpost_storage::Store> {
        &self.sink.store
    }

    fn now_ms(&self) -> i64 {
        now_ms()
    }

    /// A quarter of the hub's bound on held samples: a Jetson Nano has 4 GB for everything.
    fn query_options(&self) -> outpost_storage::promql::Options {
        outpost_storage::promql::Options {
            max_samples: 5_000_000,
            ..outpost_storage::promql::Options::default()
        }
    }

    fn rules(&self) -> serde_json::Value {
        match &self.alerts {
            Some(alerts) => {
                crate::alerting::prometheus::rules(&alerts.engine.lock().expect("engine lock"))
            }
            None => serde_json::json!({ "groups": [] }),
        }
    }

    fn alerts(&self) -> serde_json::Value {
        match &self.alerts {
            Some(alerts) => {
                crate::alerting::prometheus::alerts(&alerts.engine.lock().expect("engine lock"))
            }
            None => serde_json::json!({ "alerts": [] }),
        }
    }

    fn metadata(&self) -> Vec<(String, String, String, String)> {
        crate::catalogue::prometheus_metadata()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.sink.render_metrics(now_ms()),
    )
        .into_response()
}

async fn health(State(state): State<Arc<HttpState>>) -> Response {
    let now = now_ms();
    let collectors: serde_json::Map<String, serde_json::Value> = state
        .sink
        .collector_stats()
        .into_iter()
        .map(|(name, stats)| {
            (
                name,
                serde_json::json!({
                    "rounds": stats.rounds,
                    "errors": stats.errors,
                    "seconds_since_success": stats.last_success_ms.map(|at| (now - at) as f64 / 1000.0),
                }),
            )
        })
        .collect();
    // From memory only: a health check must not wait for the disk.
    let store = state.sink.store.health();
    let crash_looping = state.tasks.crash_looping(Instant::now());
    let (status, code) = if store.write_failure.is_none() && crash_looping.is_empty() {
        ("ok", StatusCode::OK)
    } else {
        ("degraded", StatusCode::SERVICE_UNAVAILABLE)
    };
    let tasks: serde_json::Map<String, serde_json::Value> = state
        .tasks
        .restarts()
        .into_iter()
        .map(|(name, restarts)| {
            let failing = crash_looping
                .iter()
                .find(|(looping, _)| *looping == name)
                .map(|(_, why)| why.clone());
            let value = serde_json::json!({"restarts": restarts, "crash_loop": failing});
            (name, value)
        })
        .collect();
    let store_json = serde_json::json!({
        "series": store.series,
        "disk_bytes": store.disk_bytes,
        "write_failure": store.write_failure,
        "write_errors": state.sink.write_errors.load(std::sync::atomic::Ordering::Relaxed),
    });
    let body = serde_json::json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "store": store_json,
        "collectors": collectors,
        "tasks": tasks,
    });
    (code, axum::Json(body)).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", message.into())).into_response()
}

/// A time parameter: RFC 3339, milliseconds, `now`, or a negative duration relative to now
/// (`-1h`).
fn time_param(text: &str, now: i64) -> anyhow::Result<i64> {
    match text.strip_prefix('-') {
        Some(ago)
            if ago.starts_with(|c: char| c.is_ascii_digit())
                && !ago.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok(now - parse_duration_ms(ago)?)
        }
        _ => parse_time(text, now),
    }
}

async fn query(State(state): State<Arc<HttpState>>, RawQuery(raw): RawQuery) -> Response {
    let params = query_pairs(raw.as_deref().unwrap_or(""));
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let now = now_ms();
    let Some(selector) = param("match") else {
        return bad_request("missing match= (a selector such as node_load1 or cpu{core=\"0\"})");
    };
    let selector = match Selector::parse(selector) {
        Ok(s) => s,
        Err(e) => return bad_request(format!("match: {e}")),
    };
    let from = match time_param(param("from").unwrap_or("-1h"), now) {
        Ok(t) => t,
        Err(e) => return bad_request(format!("from: {e:#}")),
    };
    let to = match time_param(param("to").unwrap_or("now"), now) {
        Ok(t) => t,
        Err(e) => return bad_request(format!("to: {e:#}")),
    };
    if from > to {
        return bad_request("from is after to");
    }
    let step = match param("step").map(parse_duration_ms).transpose() {
        Ok(step) => step,
        Err(e) => return bad_request(format!("step: {e:#}")),
    };
    if step.is_some_and(|s| s <= 0) {
        return bad_request("step: must be positive");
    }
    let function = match param("fn").unwrap_or("avg").parse::<Aggregation>() {
        Ok(f) => f,
        Err(e) => return bad_request(format!("fn: {e}")),
    };
    let format = match param("format").unwrap_or("json") {
        "json" => Format::Json,
        "csv" => Format::Csv,
        other => return bad_request(format!("format: {other:?} is not csv or json")),
    };
    let sink = state.sink.clone();
    #[allow(clippy::disallowed_methods)] // on the blocking pool
    let result = tokio::task::spawn_blocking(move || match step {
        None => sink.store.query_raw(&selector, from, to),
        Some(step) => sink.store.query_step(&selector, from, to, step, function),
    })
    .await;
    let results = match result {
        Ok(Ok(results)) => results,
        Ok(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let mut body = Vec::new();
    if let Err(e) = write_results(&mut body, &results, format) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
    }
    let content_type = match format {
        Format::Json => "application/json",
        Format::Csv => "text/csv; charset=utf-8",
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `POST /api/v1/import/prometheus[?source=NAME][&extra_label=name=value...]`: the body is the
/// Prometheus text format. Good lines are stored even when others are bad; the response says
/// which were refused and why.
async fn import(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let config = state.import.read().expect("import config lock").clone();
    if !config.enabled {
        return (
            StatusCode::NOT_FOUND,
            "import is disabled in the agent's config ([import] enabled)\n",
        )
            .into_response();
    }
    if !config.allow_remote && !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "imports are accepted from this host only ([import] allow_remote)\n",
        )
            .into_response();
    }
    let params = query_pairs(raw.as_deref().unwrap_or(""));
    let mut extra = BTreeMap::new();
    let mut source = format!("import:{}", peer.ip());
    for (key, value) in &params {
        match key.as_str() {
            "source" => source = format!("import:{value}"),
            "extra_label" => {
                let Some((label, value)) = value.split_once('=') else {
                    return bad_request(format!("extra_label {value:?}: expected name=value"));
                };
                if label == "instance" {
                    return bad_request("extra_label: `instance` is reserved for the hub");
                }
                extra.insert(label.to_string(), value.to_string());
            }
            _ => {}
        }
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad_request("the body is not UTF-8 text");
    };
    let now = now_ms();
    let parsed = parse_exposition(text, &source, &extra, accepted_window(now));
    let cap = config.max_series_per_source;
    let mut known = state.sink.source_series(&source);
    let mut refused = 0usize;
    let mut accepted = Vec::with_capacity(parsed.samples.len());
    let mut new_in_request = std::collections::HashSet::new();
    for (key, value, timestamp) in parsed.samples {
        let is_new = !state.sink.source_has(&source, &key) && !new_in_request.contains(&key);
        if is_new {
            if known >= cap {
                refused += 1;
                continue;
            }
            known += 1;
            new_in_request.insert(key.clone());
        }
        accepted.push((key, value, timestamp.unwrap_or(now)));
    }
    let stored = accepted.len();
    if let Err(e) = state
        .sink
        .write_timestamped(&source, now, accepted, true)
        .await
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store refused the samples: {e:#}\n"),
        )
            .into_response();
    }
    if refused > 0 {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "stored {stored} samples; refused {refused} samples of new series: source {:?} \
                 is at its limit of {cap} series ([import] max_series_per_source)\n",
                source.trim_start_matches("import:")
            ),
        )
            .into_response();
    }
    if parsed.bad_lines > 0 {
        return bad_request(format!(
            "stored {stored} samples; {} lines refused: {}",
            parsed.bad_lines,
            parsed.errors.join("; ")
        ));
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Splits and percent-decodes a query string.
pub fn query_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_asks_for_a_token_when_it_has_any_and_takes_changes_from_loopback_otherwise() {
        use axum::http::{HeaderMap, Method};
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let none = HeaderMap::new();
        // No tokens: reads from anywhere, changes from loopback only, pushes by [import].
        assert!(access(&[], remote, &Method::GET, "/api/query", &none).is_ok());
        assert!(access(&[], local, &Method::POST, "/api/silences", &none).is_ok());
        let refused = access(&[], remote, &Method::POST, "/api/silences", &none);
        assert_eq!(refused.unwrap_err().0, StatusCode::FORBIDDEN);
        assert!(access(&[], remote, &Method::DELETE, "/api/silences/x", &none).is_err());
        assert!(access(
            &[],
            remote,
            &Method::POST,
            "/api/v1/import/prometheus",
            &none
        )
        .is_ok());
        // With a token: every request but health carries it, any case of the scheme.
        let tokens = [super::super::config::AgentToken {
            name: "grafana".into(),
            sha256: outpost_web::sha256_hex("s3cret"),
        }];
        assert!(access(&tokens, local, &Method::GET, "/api/health", &none).is_ok());
        let missing = access(&tokens, local, &Method::GET, "/metrics", &none);
        assert_eq!(missing.unwrap_err().0, StatusCode::UNAUTHORIZED);
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        for good in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret"] {
            assert!(
                access(&tokens, remote, &Method::POST, "/api/silences", &with(good)).is_ok(),
                "{good}"
            );
        }
        for bad in ["Bearer s3cre", "Basic s3cret", "s3cret", "Bearer"] {
            assert!(
                access(&tokens, remote, &Method::GET, "/api/query", &with(bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn decodes_query_strings() {
        assert_eq!(
            query_pairs("match=cpu%7Bcore%3D%220%22%7D&from=-1h&x"),
            [
                ("match".to_string(), r#"cpu{core="0"}"#.to_string()),
                ("from".to_string(), "-1h".to_string()),
                ("x".to_string(), String::new())
            ]
        );
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz+b"), "%zz b");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(
            time_param("-1h", 10_000_000).unwrap(),
            10_000_000 - 3_600_000
        );
        assert_eq!(time_param("5000", 0).unwrap(), 5000);
    }
}

#[derive(serde::Deserialize)]
struct KeptLogsParams {
    #[serde(default)]
    q: String,
    limit: Option<usize>,
}

/// The kept log lines (`[logs] keep_lines`), newest first: those holding `q` (ignoring case),
/// at most `limit` (100 by default, 1,000 at most).
async fn kept_logs(
    State(state): State<Arc<HttpState>>,
    axum::extract::Query(params): axum::extract::Query<KeptLogsParams>,
) -> Response {
    if params.q.len() > 1024 {
        return (StatusCode::BAD_REQUEST, "q: at most 1024 bytes").into_response();
    }
    let store = state.sink.store.clone();
    let limit = params.limit.unwrap_or(100).min(1000);
    let found =
        tokio::task::spawn_blocking(move || crate::collect::kept::newest(&store, &params.q, limit))
            .await;
    match found {
        Ok(Ok(lines)) => axum::Json(serde_json::json!({ "lines": lines })).into_response(),
        Ok(Err(error)) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}
