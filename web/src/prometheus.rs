//! Prometheus' HTTP API (`/api/v1/...`) over a store: what Grafana, promtool and other
//! Prometheus clients speak. The hub serves it over the fleet, the agent over its own store.
//! Answers and errors have Prometheus' JSON shapes and status codes
//! ([docs/api.md](../../docs/api.md) lists the endpoints).

#![deny(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use outpost_storage::promql::{self, Answer, Value};
use outpost_storage::Store;

use crate::device_labels::{DeviceLabels, Labelled};
use serde_json::{json, Value as Json};

/// What the API needs from the process that serves it.
pub trait PromContext: Send + Sync + 'static {
    fn store(&self) -> &Arc<Store>;
    /// The wall clock (milliseconds): the default query time.
    fn now_ms(&self) -> i64;
    /// Evaluation settings and bounds.
    fn query_options(&self) -> promql::Options {
        promql::Options::default()
    }
    /// `/api/v1/rules`: `{"groups": [...]}` in Prometheus' shape.
    fn rules(&self) -> Json {
        json!({ "groups": [] })
    }
    /// `/api/v1/alerts`: `{"alerts": [...]}` in Prometheus' shape.
    fn alerts(&self) -> Json {
        json!({ "alerts": [] })
    }
    /// `/api/v1/metadata`: (metric, type, help, unit) for the metrics it knows.
    fn metadata(&self) -> Vec<(String, String, String, String)> {
        Vec::new()
    }
    /// An engine that answers the reads (queries, series, labels, metadata) in the store's
    /// place: the hub whose samples go to remote storage.
    fn engine(&self) -> Option<Arc<dyn QueryEngine>> {
        None
    }
    /// The hub's labels of its devices, put on their series as queries read them.
    fn device_labels(&self) -> Arc<DeviceLabels> {
        Arc::default()
    }
}

/// What a forwarded request came to: the engine's status and JSON body, or why it could not
/// be asked.
pub type Forwarded =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u16, Bytes), String>> + Send>>;

/// An engine that speaks Prometheus' HTTP API.
pub trait QueryEngine: Send + Sync {
    /// Sends a read to the engine: the path with its query string, and for a POST the form
    /// body.
    fn forward(&self, path_and_query: &str, form: Option<Bytes>) -> Forwarded;
}

/// The largest form a forwarded POST may carry (what Grafana sends is a few KiB).
const MAX_FORWARDED_FORM: usize = 1 << 20;

/// The routes, for the caller to merge under its own guard. With an engine (`engine()`), the
/// reads go to it; rules, alerts, build information and formatting stay here.
pub fn routes<C: PromContext>(context: Arc<C>) -> axum::Router<Arc<C>> {
    let reads = axum::Router::new()
        .route("/api/v1/query", get(query::<C>).post(query::<C>))
        .route(
            "/api/v1/query_range",
            get(query_range::<C>).post(query_range::<C>),
        )
        .route("/api/v1/series", get(series::<C>).post(series::<C>))
        .route("/api/v1/labels", get(labels::<C>).post(labels::<C>))
        .route("/api/v1/label/{name}/values", get(label_values::<C>))
        .route("/api/v1/metadata", get(metadata::<C>))
        .route("/api/v1/query_exemplars", get(exemplars).post(exemplars))
        .route_layer(axum::middleware::from_fn_with_state(
            context,
            forward_to_engine::<C>,
        ));
    axum::Router::new()
        .merge(reads)
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/format_query", get(format_query).post(format_query))
        .route("/api/v1/rules", get(rules::<C>))
        .route("/api/v1/alerts", get(alerts::<C>))
}

/// Hands a read to the engine, when there is one, and its answer back as it came.
async fn forward_to_engine<C: PromContext>(
    State(context): State<Arc<C>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(engine) = context.engine() else {
        return next.run(request).await;
    };
    let path = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_string(),
        |p| p.as_str().to_string(),
    );
    let form = if request.method() == axum::http::Method::POST {
        match axum::body::to_bytes(request.into_body(), MAX_FORWARDED_FORM).await {
            Ok(body) => Some(body),
            Err(error) => {
                return ApiError::bad_data(format!("reading the form: {error}")).into_response()
            }
        }
    } else {
        None
    };
    match engine.forward(&path, form).await {
        Ok((status, body)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(message) => ApiError {
            kind: "unavailable",
            message: format!("the remote storage's query API: {message}"),
        }
        .into_response(),
    }
}

/// An API error: Prometheus' `errorType` and the status code it goes with.
#[derive(Debug)]
pub struct ApiError {
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn bad_data(message: impl Into<String>) -> ApiError {
        ApiError {
            kind: "bad_data",
            message: message.into(),
        }
    }

    fn parameter(name: &str, reason: impl std::fmt::Display) -> ApiError {
        ApiError::bad_data(format!("invalid parameter {name:?}: {reason}"))
    }
}

impl From<promql::Error> for ApiError {
    fn from(error: promql::Error) -> ApiError {
        let kind = match &error {
            promql::Error::BadData(_) => "bad_data",
            promql::Error::Execution(_) | promql::Error::TooManySamples(_) => "execution",
            promql::Error::Timeout(_) => "timeout",
            promql::Error::Storage(_) => "internal",
        };
        ApiError {
            kind,
            message: error.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.kind {
            "bad_data" => StatusCode::BAD_REQUEST,
            "execution" => StatusCode::UNPROCESSABLE_ENTITY,
            "timeout" | "canceled" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "not_found" => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = json!({ "status": "error", "errorType": self.kind, "error": self.message });
        (status, axum::Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn success(data: &str, warnings: &[String]) -> Response {
    let mut body = String::with_capacity(data.len() + 64);
    body.push_str("{\"status\":\"success\",\"data\":");
    body.push_str(data);
    if !warnings.is_empty() {
        body.push_str(",\"warnings\":");
        body.push_str(&Json::from(warnings.to_vec()).to_string());
    }
    body.push('}');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The request's parameters, from the query string and a form body alike (as Prometheus
/// reads them), in order.
struct Params(Vec<(String, String)>);

/// The most a form body may hold: far more than any query, little enough to read whole.
const MAX_FORM_BYTES: usize = 4 << 20;

impl<S: Send + Sync> axum::extract::FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, _: &S) -> Result<Params, ApiError> {
        let raw = request.uri().query().map(str::to_string);
        let body = axum::body::to_bytes(request.into_body(), MAX_FORM_BYTES)
            .await
            .map_err(|e| ApiError::bad_data(format!("error parsing form values: {e}")))?;
        Ok(Params::of(raw, &body))
    }
}

impl Params {
    fn of(raw: Option<String>, body: &Bytes) -> Params {
        let mut pairs: Vec<(String, String)> = raw
            .as_deref()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        pairs.extend(form_urlencoded::parse(body).into_owned());
        Params(pairs)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|text| parse_time(text).map_err(|reason| ApiError::parameter(name, reason)))
            .transpose()
    }

    fn duration(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|text| parse_duration(text).map_err(|reason| ApiError::parameter(name, reason)))
            .transpose()
    }

    fn limit(&self) -> Result<Option<usize>, ApiError> {
        match self.get("limit") {
            None => Ok(None),
            Some(text) => match text.parse::<i64>() {
                Ok(n) if n > 0 => Ok(Some(n as usize)),
                Ok(_) => Ok(None),
                Err(_) => Err(ApiError::bad_data("limit must be a number")),
            },
        }
    }

    fn expression(&self) -> Result<String, ApiError> {
        self.get("query")
            .map(str::to_string)
            .ok_or_else(|| ApiError::parameter("query", "no query given"))
    }

    /// When to give up: the `timeout` asked for, never more than two minutes.
    fn deadline(&self) -> Result<Instant, ApiError> {
        const MOST: i64 = 120_000;
        let timeout = self.duration("timeout")?.unwrap_or(MOST).clamp(1, MOST);
        Ok(Instant::now() + Duration::from_millis(timeout as u64))
    }
}

/// Unix seconds (with a fraction) or RFC 3339, as Prometheus takes times, in milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    // About 292,000 years either way: past that, millisecond arithmetic could overflow.
    const LIMIT: f64 = 9.2e12;
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds.abs() < LIMIT {
            let whole = seconds.trunc();
            let fraction = ((seconds - whole) * 1000.0).round();
            return Ok(whole as i64 * 1000 + fraction as i64);
        }
        return Err(format!("cannot parse {text:?} to a valid timestamp"));
    }
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| format!("cannot parse {text:?} to a valid timestamp"))
}

/// Seconds (with a fraction) or Prometheus' duration text (`5m`, `1h30m`), in milliseconds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        let ms = seconds * 1000.0;
        if !ms.is_finite() || ms.abs() > 9.2e18 {
            return Err(format!(
                "cannot parse {text:?} to a valid duration. It overflows int64"
            ));
        }
        return Ok(ms.round() as i64);
    }
    outpost_storage::parse_duration_ms(text)
        .map_err(|_| format!("cannot parse {text:?} to a valid duration"))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError {
            kind: "internal",
            message: format!("query task failed: {e}"),
        })?
}

async fn query<C: PromContext>(State(context): State<Arc<C>>, params: Params) -> ApiResult {
    let expression = params.expression()?;
    let at = params.time("time")?.unwrap_or_else(|| context.now_ms());
    let deadline = params.deadline()?;
    let answer = blocking(move || {
        let options = context.query_options();
        let devices = context.device_labels();
        Ok(promql::instant(
            &Labelled {
                store: context.store(),
                devices: &devices,
            },
            &expression,
            at,
            &options,
            Some(deadline),
        )?)
    })
    .await?;
    Ok(success(&result_json(&answer), &answer.warnings))
}

async fn query_range<C: PromContext>(State(context): State<Arc<C>>, params: Params) -> ApiResult {
    let expression = params.expression()?;
    let start = params
        .time("start")?
        .ok_or_else(|| ApiError::parameter("start", "missing"))?;
    let end = params
        .time("end")?
        .ok_or_else(|| ApiError::parameter("end", "missing"))?;
    let step = params
        .duration("step")?
        .ok_or_else(|| ApiError::parameter("step", "missing"))?;
    let deadline = params.deadline()?;
    let answer = blocking(move || {
        let options = context.query_options();
        let devices = context.device_labels();
        Ok(promql::range(
            &Labelled {
                store: context.store(),
                devices: &devices,
            },
            &expression,
            start,
            end,
            step,
            &options,
            Some(deadline),
        )?)
    })
    .await?;
    Ok(success(&result_json(&answer), &answer.warnings))
}

/// The most `match[]` selectors one lookup takes.
const MAX_MATCHES: usize = 1000;

/// The series that `match[]` selects (every series without it, when `required` is false), with
/// data between `start` and `end` when either is given.
fn matching_series(
    store: &Store,
    devices: &DeviceLabels,
    params: &Params,
    required: bool,
) -> Result<Vec<outpost_storage::SeriesKey>, ApiError> {
    let (start, end) = (params.time("start")?, params.time("end")?);
    let mut matches = params.all("match[]");
    if matches.is_empty() && required {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    // Each selector scans the catalogue: a bound keeps one request from scanning it endlessly.
    if matches.len() > MAX_MATCHES {
        return Err(ApiError::bad_data(format!(
            "{} match[] parameters; at most {MAX_MATCHES} are taken",
            matches.len()
        )));
    }
    if matches.is_empty() {
        matches.push("{__name__=~\".+\"}");
    }
    let mut selectors = Vec::with_capacity(matches.len());
    for text in matches {
        selectors
            .push(promql::parse_matchers(text).map_err(|e| ApiError::parameter("match[]", e))?);
    }
    let labelled = Labelled { store, devices };
    let list = |matchers: &[promql::Matcher]| {
        let selector = promql::store_selector(matchers)?;
        Ok(match (start, end) {
            (None, None) => store.series(&selector),
            (start, end) => {
                #[allow(clippy::disallowed_methods)] // called on the blocking pool
                let between = store.series_between(
                    &selector,
                    start.unwrap_or(i64::MIN / 2),
                    end.unwrap_or(i64::MAX / 2),
                );
                between?
            }
        }
        .into_iter()
        .map(|(_, key)| key)
        .collect())
    };
    let mut found = BTreeSet::new();
    for matchers in &selectors {
        let keys = labelled.keys(matchers, list).map_err(|e| match e {
            promql::Error::BadData(message) => ApiError::parameter("match[]", message),
            other => ApiError {
                kind: "internal",
                message: other.to_string(),
            },
        })?;
        found.extend(keys);
    }
    Ok(found.into_iter().collect())
}

fn label_set_json(key: &outpost_storage::SeriesKey) -> String {
    let mut out = String::from("{\"__name__\":");
    out.push_str(&Json::from(key.name()).to_string());
    for (name, value) in key.labels() {
        let _ = write!(out, ",{}:{}", Json::from(name), Json::from(value));
    }
    out.push('}');
    out
}

async fn series<C: PromContext>(State(context): State<Arc<C>>, params: Params) -> ApiResult {
    let limit = params.limit()?;
    let mut keys =
        blocking(move || matching_series(context.store(), &context.device_labels(), &params, true))
            .await?;
    let warnings = truncate(&mut keys, limit);
    let items: Vec<String> = keys.iter().map(label_set_json).collect();
    Ok(success(&format!("[{}]", items.join(",")), &warnings))
}

fn truncate<T>(items: &mut Vec<T>, limit: Option<usize>) -> Vec<String> {
    match limit {
        Some(limit) if items.len() > limit => {
            items.truncate(limit);
            vec!["results truncated due to limit".to_string()]
        }
        _ => Vec::new(),
    }
}

fn strings_json(items: &[String]) -> String {
    Json::from(items.to_vec()).to_string()
}

async fn labels<C: PromContext>(State(context): State<Arc<C>>, params: Params) -> ApiResult {
    let limit = params.limit()?;
    let keys = blocking(move || {
        matching_series(context.store(), &context.device_labels(), &params, false)
    })
    .await?;
    let mut names: BTreeSet<String> = BTreeSet::new();
    for key in &keys {
        names.insert("__name__".to_string());
        names.extend(key.labels().map(|(name, _)| name.to_string()));
    }
    let mut names: Vec<String> = names.into_iter().collect();
    let warnings = truncate(&mut names, limit);
    Ok(success(&strings_json(&names), &warnings))
}

async fn label_values<C: PromContext>(
    State(context): State<Arc<C>>,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult {
    let valid = promql::is_label_name(&name);
    if !valid {
        return Err(ApiError::bad_data(format!("invalid label name: {name:?}")));
    }
    let limit = params.limit()?;
    let keys = blocking(move || {
        matching_series(context.store(), &context.device_labels(), &params, false)
    })
    .await?;
    let values: BTreeSet<String> = keys
        .iter()
        .map(|key| key.label(&name).to_string())
        .filter(|v| !v.is_empty())
        .collect();
    let mut values: Vec<String> = values.into_iter().collect();
    let warnings = truncate(&mut values, limit);
    Ok(success(&strings_json(&values), &warnings))
}

async fn metadata<C: PromContext>(State(context): State<Arc<C>>, params: Params) -> ApiResult {
    let limit = params.limit()?;
    let metric = params.get("metric");
    let mut out = serde_json::Map::new();
    for (name, kind, help, unit) in context.metadata() {
        if metric.is_some_and(|m| m != name) {
            continue;
        }
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        out.insert(name, json!([{ "type": kind, "help": help, "unit": unit }]));
    }
    Ok(success(&Json::Object(out).to_string(), &[]))
}

/// The Prometheus version whose API and PromQL this one answers as.
pub const PROMETHEUS_VERSION: &str = "2.42.0";

async fn buildinfo() -> ApiResult {
    let data = json!({
        "version": PROMETHEUS_VERSION,
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
        "application": format!("outpost {}", env!("CARGO_PKG_VERSION")),
    });
    Ok(success(&data.to_string(), &[]))
}

async fn exemplars(params: Params) -> ApiResult {
    promql::parse(&params.expression()?)?;
    Ok(success("[]", &[]))
}

async fn format_query(params: Params) -> ApiResult {
    let pretty = promql::prettify(&params.expression()?)?;
    Ok(success(&Json::from(pretty).to_string(), &[]))
}

async fn rules<C: PromContext>(State(context): State<Arc<C>>) -> ApiResult {
    Ok(success(&context.rules().to_string(), &[]))
}

async fn alerts<C: PromContext>(State(context): State<Arc<C>>) -> ApiResult {
    Ok(success(&context.alerts().to_string(), &[]))
}

/// `data` of a query answer, written directly (values as Prometheus spells them, timestamps
/// as seconds with at most three decimals).
pub fn result_json(answer: &Answer) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"resultType\":\"{}\",\"result\":",
        answer.value.type_name()
    );
    match &answer.value {
        Value::Scalar { t, v } => point(&mut out, *t, &promql::format_value(*v)),
        Value::String { t, v } => point(&mut out, *t, v),
        Value::Vector(samples) => list(&mut out, samples, |out, sample| {
            out.push_str("{\"metric\":");
            labels_json(out, &sample.labels);
            out.push_str(",\"value\":");
            point(out, sample.t, &promql::format_value(sample.v));
            out.push('}');
        }),
        Value::Matrix(series) => list(&mut out, series, |out, s| {
            out.push_str("{\"metric\":");
            labels_json(out, &s.labels);
            out.push_str(",\"values\":");
            list(out, &s.points, |out, (t, v)| {
                point(out, *t, &promql::format_value(*v))
            });
            out.push('}');
        }),
    }
    out.push('}');
    out
}

/// `[a,b,...]`, each item written by `write`.
fn list<T>(out: &mut String, items: &[T], write: impl Fn(&mut String, &T)) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write(out, item);
    }
    out.push(']');
}

fn labels_json(out: &mut String, labels: &promql::Labels) {
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}:{}", Json::from(name), Json::from(value));
    }
    out.push('}');
}

fn point(out: &mut String, t: i64, value: &str) {
    out.push('[');
    if t < 0 {
        out.push('-');
    }
    let t = t.unsigned_abs();
    let _ = write!(out, "{}", t / 1000);
    let fraction = t % 1000;
    if fraction != 0 {
        let digits = format!("{fraction:03}");
        let _ = write!(out, ".{}", digits.trim_end_matches('0'));
    }
    let _ = write!(out, ",{}]", Json::from(value));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tower::ServiceExt as _;

    /// A store with one counter, at a fixed time.
    struct Context {
        store: Arc<Store>,
        devices: Arc<DeviceLabels>,
        _dir: tempfile::TempDir,
    }

    impl PromContext for Context {
        fn store(&self) -> &Arc<Store> {
            &self.store
        }
        fn now_ms(&self) -> i64 {
            600_000
        }
        fn device_labels(&self) -> Arc<DeviceLabels> {
            self.devices.clone()
        }
    }

    fn context() -> Arc<Context> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), Default::default()).unwrap();
        let key = outpost_storage::SeriesKey::new(
            "requests_total",
            [("instance".to_string(), "a".to_string())],
        )
        .unwrap();
        let id = store.series_id(&key).unwrap();
        let mut batch = outpost_storage::WriteBatch::default();
        for i in 0..40 {
            batch.sample(id, i * 15_000, i as f64);
        }
        #[allow(clippy::disallowed_methods)] // a test, not an async thread
        store.write(batch).unwrap();
        Arc::new(Context {
            store: Arc::new(store),
            devices: Arc::default(),
            _dir: dir,
        })
    }

    fn ask(context: &Arc<Context>, method: &str, uri: &str, body: &str) -> (StatusCode, Json) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let app = routes(context.clone()).with_state(context.clone());
        runtime.block_on(async {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, serde_json::from_slice(&bytes).unwrap_or(Json::Null))
        })
    }

    #[test]
    fn answers_and_errors_in_prometheus_shapes() {
        let context = context();
        let (status, body) = ask(
            &context,
            "POST",
            "/api/v1/query",
            "query=sum(requests_total)",
        );
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["data"]["result"][0]["value"], json!([600, "39"]));
        let (status, body) = ask(&context, "GET", "/api/v1/query?query=sum(", "");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errorType"], "bad_data");
        let (status, body) = ask(
            &context,
            "GET",
            "/api/v1/query?query=requests_total%2Bon()%20group_left%20requests_total%20or%20label_replace(requests_total,%22x%22,%22y%22,%22%22,%22%22)",
            "",
        );
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = ask(
            &context,
            "GET",
            "/api/v1/query?query=label_replace(requests_total,%22x%22,%22y%22,%22%22,%22(%22)",
            "",
        );
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["errorType"], "execution");
        let (status, body) = ask(
            &context,
            "GET",
            "/api/v1/query_range?query=1&start=10&end=0&step=1",
            "",
        );
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"].as_str().unwrap().contains("end timestamp"),
            "{body}"
        );
        let (status, body) = ask(&context, "GET", "/api/v1/series", "");
        assert_eq!(
            (status, body["error"].as_str()),
            (
                StatusCode::BAD_REQUEST,
                Some("no match[] parameter provided")
            )
        );
        let (_, body) = ask(&context, "GET", "/api/v1/label/instance/values", "");
        assert_eq!(body["data"], json!(["a"]));
        // Only series with data between start and end.
        let many = "match[]=requests_total&".repeat(MAX_MATCHES + 1);
        let (status, body) = ask(&context, "POST", "/api/v1/series", &many);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        for (path, expected) in [
            (
                "/api/v1/series?match[]=requests_total&start=100&end=200",
                json!([{"__name__": "requests_total", "instance": "a"}]),
            ),
            (
                "/api/v1/series?match[]=requests_total&start=100000",
                json!([]),
            ),
            ("/api/v1/label/instance/values?end=-100", json!([])),
        ] {
            assert_eq!(ask(&context, "GET", path, "").1["data"], expected, "{path}");
        }
        let (_, body) = ask(
            &context,
            "POST",
            "/api/v1/format_query",
            "query=sum(rate(x[5m]))by(a)",
        );
        assert_eq!(body["data"], "sum by (a) (rate(x[5m]))");
    }

    #[test]
    fn device_labels_reach_queries_series_and_label_lists() {
        let mut context = Arc::into_inner(context()).unwrap();
        let labels = [("site".to_string(), "north".to_string())];
        context.devices = Arc::new([("a".to_string(), labels.into())].into());
        let context = Arc::new(context);
        let (_, body) = ask(
            &context,
            "GET",
            "/api/v1/query?query=sum%20by%20(site)%20(requests_total%7Bsite%3D%22north%22%7D)",
            "",
        );
        assert_eq!(
            body["data"]["result"][0]["metric"],
            json!({"site": "north"})
        );
        let (_, body) = ask(
            &context,
            "GET",
            "/api/v1/series?match[]=%7Bsite%3D%22north%22%7D",
            "",
        );
        let expected = json!([{"__name__": "requests_total", "instance": "a", "site": "north"}]);
        assert_eq!(body["data"], expected);
        let (_, body) = ask(
            &context,
            "GET",
            "/api/v1/series?match[]=%7Bsite%3D%22south%22%7D",
            "",
        );
        assert_eq!(body["data"], json!([]));
        let (_, body) = ask(&context, "GET", "/api/v1/labels", "");
        assert_eq!(body["data"], json!(["__name__", "instance", "site"]));
        let (_, body) = ask(&context, "GET", "/api/v1/label/site/values", "");
        assert_eq!(body["data"], json!(["north"]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever the parameters, the answer is Prometheus' JSON: success, or an error with
        /// its type; never a panic or another shape.
        #[test]
        fn any_parameters_get_a_prometheus_answer(
            path in prop::sample::select(vec![
                "/api/v1/query", "/api/v1/query_range", "/api/v1/series", "/api/v1/labels",
                "/api/v1/label/instance/values", "/api/v1/format_query", "/api/v1/metadata",
            ]),
            pairs in prop::collection::vec(
                (prop::sample::select(vec!["query", "time", "start", "end", "step", "timeout",
                    "limit", "match[]", "metric"]),
                 prop_oneof![
                    Just("requests_total".to_string()), Just("rate(requests_total[1m])".to_string()),
                    Just("1e308".to_string()), Just("-1".to_string()), Just("NaN".to_string()),
                    Just("2026-01-01T00:00:00Z".to_string()), Just("1m".to_string()),
                    Just("0".to_string()), Just("0.001".to_string()), ".{0,12}",
                 ]),
                0..6),
            post in any::<bool>(),
        ) {
            let context = context();
            let encoded: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
                .finish();
            // Prometheus takes these two by GET only.
            let post = post && !path.contains("/label/") && !path.ends_with("metadata");
            let (status, body) = if post {
                ask(&context, "POST", path, &encoded)
            } else {
                ask(&context, "GET", &format!("{path}?{encoded}"), "")
            };
            let shaped = body["status"] == "success"
                || (body["status"] == "error" && body["errorType"].is_string());
            prop_assert!(shaped, "{status} {body}");
            prop_assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        }
    }

    #[test]
    fn times_and_durations_as_prometheus_reads_them() {
        assert_eq!(parse_time("1700000000.123"), Ok(1_700_000_000_123));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("-1.5"), Ok(-1_500));
        assert!(parse_time("soon").is_err());
        assert!(parse_time("1e300").is_err());
        assert!(parse_time("NaN").is_err());
        assert_eq!(parse_duration("15"), Ok(15_000));
        assert_eq!(parse_duration("0.5"), Ok(500));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert!(parse_duration("1e30").is_err());
    }

    #[test]
    fn points_keep_milliseconds_without_float_noise() {
        let mut out = String::new();
        point(&mut out, 1_795_257_761_024, "1");
        assert_eq!(out, "[1795257761.024,\"1\"]");
        out.clear();
        point(&mut out, 1_795_257_761_100, "NaN");
        assert_eq!(out, "[1795257761.1,\"NaN\"]");
        out.clear();
        point(&mut out, -1_500, "2");
        assert_eq!(out, "[-1.5,\"2\"]");
    }
}
