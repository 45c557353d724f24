//! The hub's fleet dashboard and HTTP API (`docs/api.md`).
//!
//! [`router`] serves the fleet, device and alert pages (bundled from `frontend/` at build time
//! and embedded, so the hub stays one file) and the `/api/...` endpoints, reading the hub's
//! store, or the engine that holds the fleet's samples (`samples`). The crate depends on
//! `outpost-storage` only: what it needs from the hub (the device
//! registry, the fleet's alerts, pushing a silence to a device, news of ingested data) it asks
//! through the [`Fleet`] trait, which the binary implements. It never writes to the store.
//!
//! Every answer is bounded: a request that would return more than `web.max_points` points per
//! series or `web.max_series` series gets a 400 that says so.

mod api;
mod assets;
pub mod auth;
pub mod boards;
pub mod device_labels;
pub mod outages;
pub mod prometheus;
pub mod range;
pub mod samples;
pub mod summary;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use api::router;
pub use auth::{hash_password, sha256_hex, Identity, Role};

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("log in first, or send a bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] outpost_storage::Error),
    #[error("invalid [web] config: {0}")]
    Config(String),
    #[error("{0}")]
    Internal(String),
    /// The remote storage's query API could not answer.
    #[error("{0}")]
    Unavailable(String),
}

/// A dashboard user: `[[web.users]]` in the hub config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// argon2id PHC string (`outpost hub user NAME` makes one).
    pub password_hash: String,
}

/// An API token: `[[web.tokens]]`; the hub keeps only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub name: String,
    pub role: Role,
    pub sha256: String,
}

/// The `[web]` section of the hub config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// The most points one series may have in one answer.
    pub max_points: usize,
    /// The most series one answer may hold.
    pub max_series: usize,
    /// Serve a non-loopback address with no users and no tokens (anyone who reaches it is an
    /// admin). Off: the hub refuses to start that way.
    pub allow_unauthenticated: bool,
    /// How long a browser login lasts.
    pub session_hours: u32,
    /// People who log in to the dashboard: `[[web.users]]`.
    pub users: Vec<User>,
    /// API tokens for scripts and Grafana: `[[web.tokens]]`.
    pub tokens: Vec<Token>,
    /// A public, read-only status page of chosen devices and probes: `[web.status]`.
    pub status: StatusPage,
}

/// `[web.status]`: what `/status` shows to anyone, without a login. Off by default; on, it shows
/// only the devices and probes named here, and of them only whether they are up and how
/// available they were.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusPage {
    pub enabled: bool,
    pub title: String,
    /// Device names.
    pub devices: Vec<String>,
    /// Probes as `device/probe`.
    pub probes: Vec<String>,
}

impl StatusPage {
    /// The most entries a public page lists: each costs a query per visit.
    const MAX_ENTRIES: usize = 100;

    fn check(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.devices.is_empty() && self.probes.is_empty() {
            return Err("web.status: name the devices or probes (device/probe) it shows".into());
        }
        if self.devices.len() + self.probes.len() > Self::MAX_ENTRIES {
            return Err(format!(
                "web.status: at most {} devices and probes",
                Self::MAX_ENTRIES
            ));
        }
        if self.title.chars().count() > 200 {
            return Err("web.status.title: at most 200 characters".into());
        }
        if let Some(bad) = self.probes.iter().find(|p| {
            !p.split_once('/')
                .is_some_and(|(d, n)| !d.is_empty() && !n.is_empty())
        }) {
            return Err(format!("web.status.probes: {bad:?} is not device/probe"));
        }
        Ok(())
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            max_points: 11_000,
            max_series: 500,
            allow_unauthenticated: false,
            session_hours: 12,
            users: Vec::new(),
            tokens: Vec::new(),
            status: StatusPage::default(),
        }
    }
}

impl WebConfig {
    /// Checks the section; `loopback` says whether the hub listens on a loopback address only.
    pub fn validate(&self, loopback: bool) -> Result<(), WebError> {
        let bad = |message: String| Err(WebError::Config(message));
        if self.max_points == 0 || self.max_points > 1_000_000 {
            return bad("web.max_points: must be between 1 and 1000000".into());
        }
        if self.max_series == 0 || self.max_series > 100_000 {
            return bad("web.max_series: must be between 1 and 100000".into());
        }
        if self.session_hours == 0 {
            return bad("web.session_hours: must be at least 1".into());
        }
        self.status.check().map_err(WebError::Config)?;
        for (i, user) in self.users.iter().enumerate() {
            if user.name.is_empty() {
                return bad(format!("web.users[{i}].name: must not be empty"));
            }
            if let Err(reason) = auth::check_hash(&user.password_hash) {
                return bad(format!("web.users[{i}].password_hash: {reason}"));
            }
            if self.users[..i].iter().any(|u| u.name == user.name) {
                return bad(format!(
                    "web.users[{i}].name: {:?} is there twice",
                    user.name
                ));
            }
        }
        for (i, token) in self.tokens.iter().enumerate() {
            if token.sha256.len() != 64 || !token.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!(
                    "web.tokens[{i}].sha256: must be 64 hex digits (`outpost hub token NAME` prints it)"
                ));
            }
        }
        if !loopback
            && self.users.is_empty()
            && self.tokens.is_empty()
            && !self.allow_unauthenticated
        {
            return bad(
                "hub.listen is not a loopback address and [web] has no users or tokens: anyone \
                 who reaches it could read and change everything. Add [[web.users]] \
                 (`outpost hub user NAME`), or set web.allow_unauthenticated = true"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A silence to push to devices: `POST /api/silences`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceRequest {
    /// One device, or `*` for the whole fleet (devices enrolled later too); `*` when left out
    /// and `device_match` is given.
    #[serde(default)]
    pub device: String,
    /// A selector over the devices' labels (`outpost hub device label`) and `device`: the
    /// silence holds on the devices it matches, as their labels change.
    #[serde(default)]
    pub device_match: String,
    /// A selector over the alert's labels plus `alertname`, e.g. `{alertname="cpu_high"}`.
    #[serde(rename = "match")]
    pub matcher: String,
    /// Defaults to now.
    #[serde(default)]
    pub starts_ms: Option<i64>,
    pub ends_ms: i64,
    #[serde(default)]
    pub comment: String,
}

/// Where a device stands, as the fleet page shows it: `online`, `stale` (connected, but its
/// data stopped) or `offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    Online,
    Stale,
    Offline,
}

/// One device as the hub knows it: its name and standing, typed, and the rest of its record
/// (what `GET /api/devices` shows, docs/api.md) as the hub gives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceView {
    pub device: String,
    pub state: DeviceState,
    #[serde(flatten)]
    pub record: serde_json::Map<String, serde_json::Value>,
}

/// The fleet's alerts, as `GET /api/alerts` answers: what fires now (each alert as its device,
/// or the hub's own engine, published it) and the transitions, newest first.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct FleetAlerts {
    pub alerts: Vec<serde_json::Value>,
    pub history: Vec<serde_json::Value>,
}

/// The alert firings of a range, as `GET /api/alerts/fired` answers: how often each rule fired
/// on each device, and how many firings each device sent beyond what the hub counts.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct AlertFirings {
    pub fired: Vec<AlertFiringCount>,
    pub uncounted: std::collections::BTreeMap<String, u64>,
}

/// How often one rule fired on one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertFiringCount {
    pub device: String,
    pub rule: String,
    pub severity: String,
    pub fired: u64,
}

/// A silence the hub made, as `/api/silences` shows it: what, for whom, who made it and why,
/// where it went, and the alerts it holds back now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SilenceView {
    pub id: String,
    /// The device, or `*` for the whole fleet.
    pub device: String,
    /// The devices' labels it is for; empty: any.
    pub device_match: String,
    #[serde(rename = "match")]
    pub matcher: String,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub created_by: String,
    pub created_ms: i64,
    pub comment: String,
    /// When and by whom it was ended early.
    pub expired_ms: Option<i64>,
    pub expired_by: Option<String>,
    /// `pending` (not begun), `active` or `expired`.
    pub state: &'static str,
    /// The signed command that carried it to each device, by device.
    pub sent: std::collections::BTreeMap<String, u64>,
    /// The alerts it silences now: `{"device", "rule", "instance"}`.
    pub silencing: Vec<serde_json::Value>,
    /// As answers before fleet silences gave them: the id again, and the command's number when
    /// it went to one device.
    pub silence_id: String,
    pub command_id: Option<u64>,
}

/// What the dashboard needs from the hub beyond its store.
pub trait Fleet: Send + Sync + 'static {
    /// Every device the hub knows.
    fn devices(&self) -> Vec<DeviceView>;
    /// Alerts across the fleet.
    fn alerts(&self) -> FleetAlerts;
    /// Sends a silence to its devices; what was sent, or why not. It makes the commands durable
    /// first, so it blocks: the handler calls it on the blocking pool.
    fn silence(&self, request: SilenceRequest, by: &Identity) -> Result<SilenceView, WebError>;
    /// The labels the hub gives its devices (`outpost hub device label`), by device.
    fn device_labels(&self) -> Arc<device_labels::DeviceLabels> {
        Arc::default()
    }
    /// The boards the hub keeps, by name.
    fn boards(&self) -> Vec<boards::Board> {
        Vec::new()
    }
    /// Keeps `board` (replacing one of its name); blocks, as `silence` does.
    fn put_board(&self, board: boards::Board) -> Result<(), WebError> {
        let _ = board;
        Err(WebError::BadRequest("this server keeps no boards".into()))
    }
    /// Forgets board `name`; whether there was one. Blocks, as `silence` does.
    fn delete_board(&self, name: &str) -> Result<bool, WebError> {
        let _ = name;
        Ok(false)
    }
    /// The alert firings from `start` to `end` (ms, both included), whenever they arrived.
    /// Blocks, as `silence` does.
    fn alert_firings(&self, start: i64, end: i64) -> Result<AlertFirings, WebError> {
        let _ = (start, end);
        Ok(AlertFirings::default())
    }
    /// The log lines `device` kept and sent, newest first: those holding `search` (ignoring
    /// case), at most `limit`, each as JSON. Blocks, as `silence` does.
    fn device_logs(
        &self,
        device: &str,
        search: &str,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, WebError> {
        let _ = (device, search, limit);
        Ok(Vec::new())
    }
    /// Operators' notes on outages: of probes, and of devices (an empty `probe`).
    fn outage_notes(&self) -> Vec<outages::OutageNote> {
        Vec::new()
    }
    /// Keeps a note on an outage (replacing an earlier one); blocks, as `silence` does.
    fn set_outage_note(&self, note: outages::OutageNote) -> Result<(), WebError> {
        let _ = note;
        Err(WebError::BadRequest("this server keeps no notes".into()))
    }
    /// The silences the hub made, newest first.
    fn silences(&self) -> Vec<SilenceView> {
        Vec::new()
    }
    /// Ends silence `id` on every device it went to (and forgets it, with `delete`). Blocks,
    /// as `silence` does.
    fn expire_silence(
        &self,
        id: &str,
        by: &Identity,
        delete: bool,
    ) -> Result<SilenceView, WebError> {
        let _ = (by, delete);
        Err(WebError::NotFound(format!("no silence {id:?}")))
    }
    /// The hub's own metrics, Prometheus text format.
    fn metrics(&self) -> String;
    /// The names of devices as their data arrives (for live charts).
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String>;
    /// The wall clock, milliseconds since 1970 (this crate never reads it itself).
    fn now_ms(&self) -> i64;
    /// Pending and firing alerts in Prometheus' `/api/v1/alerts` shape.
    fn prometheus_alerts(&self) -> serde_json::Value {
        serde_json::json!({ "alerts": [] })
    }
    /// (metric, type, help, unit) for `/api/v1/metadata`.
    fn metadata(&self) -> Vec<(String, String, String, String)> {
        Vec::new()
    }
    /// The hub's rules in Prometheus' `/api/v1/rules` shape.
    fn prometheus_rules(&self) -> serde_json::Value {
        serde_json::json!({ "groups": [] })
    }
    /// The engine that holds the fleet's samples, when it is not the hub's store.
    fn query_engine(&self) -> Option<Arc<dyn prometheus::QueryEngine>> {
        None
    }
}

/// What the handlers share.
pub struct Web {
    pub store: Arc<outpost_storage::Store>,
    pub fleet: Arc<dyn Fleet>,
    pub config: WebConfig,
    auth: auth::Auth,
    /// The last fleet list made, with the hub time it was made at: see `api::devices`.
    pub(crate) device_list: std::sync::Mutex<Option<(i64, axum::body::Bytes)>>,
    /// Held by whoever is making a new fleet list, so that one is made at a time.
    pub(crate) device_list_maker: Arc<tokio::sync::Mutex<()>>,
    /// The public status page's last answer and when it was made: anyone may ask for it, so it
    /// is made at most every `api::STATUS_MAX_AGE_MS`, one at a time.
    pub(crate) status_answer: tokio::sync::Mutex<Option<(i64, axum::body::Bytes)>>,
}

impl Web {
    pub fn new(
        store: Arc<outpost_storage::Store>,
        fleet: Arc<dyn Fleet>,
        config: WebConfig,
    ) -> Arc<Web> {
        let auth = auth::Auth::new(&config);
        Arc::new(Web {
            store,
            fleet,
            config,
            auth,
            device_list: std::sync::Mutex::new(None),
            device_list_maker: Arc::default(),
            status_answer: tokio::sync::Mutex::new(None),
        })
    }
}

impl Web {
    /// Where the dashboard reads samples: the engine that holds the fleet's, or the store.
    pub fn samples(&self) -> samples::Samples {
        match self.fleet.query_engine() {
            Some(api) => samples::Samples::Engine(samples::Engine {
                api,
                now_ms: self.fleet.now_ms(),
            }),
            None => samples::Samples::Store(self.store.clone()),
        }
    }
}

impl prometheus::PromContext for Web {
    fn store(&self) -> &Arc<outpost_storage::Store> {
        &self.store
    }

    fn now_ms(&self) -> i64 {
        self.fleet.now_ms()
    }

    fn rules(&self) -> serde_json::Value {
        self.fleet.prometheus_rules()
    }

    fn metadata(&self) -> Vec<(String, String, String, String)> {
        self.fleet.metadata()
    }

    fn alerts(&self) -> serde_json::Value {
        self.fleet.prometheus_alerts()
    }

    fn engine(&self) -> Option<Arc<dyn prometheus::QueryEngine>> {
        self.fleet.query_engine()
    }

    fn device_labels(&self) -> Arc<device_labels::DeviceLabels> {
        self.fleet.device_labels()
    }
}
