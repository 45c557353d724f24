//! The agent's side of the alert engine: builds it from `[alerts]`, feeds it every sample the
//! sink stores, evaluates it every `interval`, makes each evaluation's writes durable before
//! anything is delivered, applies the hub's silence commands, and serves `/api/alerts` and
//! `/api/silences`.

#![deny(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use outpost_storage::{StateTable, Store, WriteBatch};
use tokio::task::JoinSet;

use super::config::AlertsSection;
use super::notify::{self, AlertMailbox, Sender, Stats};
use super::pack::{self, Pack};
use outpost::alert::engine::{Channel, Engine, EngineOptions};
use outpost::alert::schedule::Silence;
use outpost::timearg::now_ms;

/// The last hub command applied, so that a recorded one cannot be replayed.
/// The last hub command applied, in the store's `AlertState` table.
#[derive(Debug, Clone, Copy)]
pub struct LastCommandKey;

impl std::fmt::Display for LastCommandKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("~last_command_id")
    }
}

impl outpost_storage::StateKey for LastCommandKey {
    const TABLE: StateTable = StateTable::AlertState;
    const OWNED: &'static [&'static str] = &["~last_command_id"];
}

/// What the HTTP handlers, the self-metrics and the uplink share.
/// The firing alerts another part routes to a channel (the hub's routes of the devices'
/// alerts), by channel name.
pub type Routed = Arc<dyn Fn(&str) -> Vec<outpost::alert::engine::AlertMessage> + Send + Sync>;

pub struct AlertShared {
    pub engine: Arc<Mutex<Engine>>,
    /// Set by the hub: the device alerts its routes send to each channel, so that a channel
    /// that resends what fires (Alertmanager) resends those too.
    pub routed: std::sync::OnceLock<Routed>,
    pub mailbox: Option<Arc<AlertMailbox>>,
    wakers: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    pub stats: Stats,
    pub last_evaluation: Mutex<std::time::Duration>,
    store: Arc<Store>,
}

/// The engine and its delivery tasks, owned by the agent's main loop.
pub struct AlertRuntime {
    pub shared: Arc<AlertShared>,
    channels: JoinSet<()>,
    tasks: Arc<crate::supervise::Tasks>,
    device: String,
    pack: Pack,
}

impl AlertRuntime {
    /// `mqtt_base` is the device's topic prefix when the agent has an MQTT connection.
    /// `pack` is the built-in rule pack: the agent's, or the hub's.
    pub fn start(
        section: &AlertsSection,
        pack: Pack,
        store: Arc<Store>,
        device: String,
        mqtt_base: Option<String>,
        tasks: Arc<crate::supervise::Tasks>,
    ) -> Result<AlertRuntime> {
        let now = now_ms();
        let rules = pack::load_rules(section, pack)?;
        let mut silences = pack::silences_from_config(section, now)?;
        silences.load(&store)?;
        let senders = senders(section);
        let options = EngineOptions {
            device: device.clone(),
            mqtt_base: mqtt_base.clone(),
            channels: senders.iter().map(|s| s.name().to_string()).collect(),
            max_queued: section.max_queued,
        };
        let mut engine = Engine::open(&store, rules, options, silences, now)
            .context("loading the alert state")?;
        engine.set_inhibitions(pack::inhibitions_from_config(section)?);
        engine
            .backfill(&store, now)
            .context("reading recent samples")?;
        tracing::info!(
            rules = engine.rules().len(),
            channels = senders.len(),
            mqtt = mqtt_base.is_some(),
            "alert engine on"
        );
        let engine = Arc::new(Mutex::new(engine));
        let stats: Stats = Default::default();
        let mailbox = mqtt_base
            .is_some()
            .then(|| AlertMailbox::new(store.clone(), engine.clone(), stats.clone()));
        let mut runtime = AlertRuntime {
            shared: Arc::new(AlertShared {
                engine,
                routed: std::sync::OnceLock::new(),
                mailbox,
                wakers: Mutex::new(HashMap::new()),
                stats,
                last_evaluation: Mutex::new(std::time::Duration::ZERO),
                store,
            }),
            channels: JoinSet::new(),
            tasks,
            device,
            pack,
        };
        runtime.start_channels(senders);
        Ok(runtime)
    }

    fn start_channels(&mut self, senders: Vec<Sender>) {
        let shared = &self.shared;
        let mut wakers = shared.wakers.lock().expect("wakers lock");
        wakers.clear();
        for sender in senders {
            if let Sender::Webhook(config) = &sender {
                if config.format == super::config::WebhookFormat::AlertmanagerApi {
                    let (config, firing_now) = (config.clone(), shared.clone());
                    let name = format!("channel:{}:resend", config.name);
                    crate::supervise::spawn(&mut self.channels, &self.tasks, &name, move || {
                        let shared = firing_now.clone();
                        let channel = config.name.clone();
                        let firing = move || {
                            let mut all = shared
                                .engine
                                .lock()
                                .expect("engine lock")
                                .firing_for(&channel);
                            if let Some(routed) = shared.routed.get() {
                                all.extend(routed(&channel));
                            }
                            all
                        };
                        let resend = notify::resend_to_alertmanager(config.clone(), firing);
                        async move {
                            resend.await;
                            Ok(())
                        }
                    });
                }
            }
            let wake = Arc::new(tokio::sync::Notify::new());
            wakers.insert(sender.name().to_string(), wake.clone());
            let name = format!("channel:{}", sender.name());
            let (store, engine, stats) = (
                shared.store.clone(),
                shared.engine.clone(),
                shared.stats.clone(),
            );
            crate::supervise::spawn(&mut self.channels, &self.tasks, &name, move || {
                let run = notify::run_channel(
                    sender.clone(),
                    store.clone(),
                    engine.clone(),
                    wake.clone(),
                    stats.clone(),
                );
                async move {
                    run.await;
                    Ok(())
                }
            });
        }
    }

    /// Rebuilds the engine and the channels from a reloaded config (SIGHUP).
    pub async fn reload(&mut self, section: &AlertsSection) -> Result<()> {
        let now = now_ms();
        let rules = pack::load_rules(section, self.pack)?;
        let mut silences = pack::silences_from_config(section, now)?;
        silences.load(&self.shared.store)?;
        let senders = senders(section);
        let shared = self.shared.clone();
        let mqtt_base = shared
            .engine
            .lock()
            .expect("engine lock")
            .options()
            .mqtt_base
            .clone();
        let options = EngineOptions {
            device: self.device.clone(),
            mqtt_base,
            channels: senders.iter().map(|s| s.name().to_string()).collect(),
            max_queued: section.max_queued,
        };
        let mut engine = Engine::open(&shared.store, rules, options, silences, now)?;
        engine.set_inhibitions(pack::inhibitions_from_config(section)?);
        engine.backfill(&shared.store, now)?;
        self.channels.shutdown().await;
        *shared.engine.lock().expect("engine lock") = engine;
        self.start_channels(senders);
        shared.wake_all();
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        self.channels.shutdown().await;
    }
}

impl AlertShared {
    /// Wakes the named channel's delivery task.
    pub fn wake(&self, channel: &str) {
        if let Some(wake) = self.wakers.lock().expect("wakers lock").get(channel) {
            wake.notify_one();
        }
    }

    fn wake_all(&self) {
        for wake in self.wakers.lock().expect("wakers lock").values() {
            wake.notify_one();
        }
        if let Some(mailbox) = &self.mailbox {
            outpost_sync::uplink::Mailbox::wake(mailbox.as_ref()).notify_one();
        }
    }

    /// One evaluation: transitions and queue entries are durable before anyone is woken to
    /// deliver them, so that a crash right after a publish cannot make the next start publish
    /// the same transition again. Returns the transitions once they are durable.
    pub async fn evaluate(
        &self,
        commands: Vec<outpost_sync::Command>,
    ) -> Vec<outpost::alert::engine::AlertMessage> {
        let started = Instant::now();
        let now = now_ms();
        let mut write = WriteBatch::default();
        let outcome = {
            let mut engine = self.engine.lock().expect("engine lock");
            apply_commands(&mut engine, &self.store, commands, now, &mut write);
            engine.silences.expire_ended(now, &mut write);
            engine.evaluate(now, &mut write)
        };
        *self.last_evaluation.lock().expect("evaluation time lock") = started.elapsed();
        // Recording rules' samples become durable with the state, like collected samples.
        for (key, at, value) in &outcome.recorded {
            match self.store.series_id(key) {
                Ok(id) => write.sample(id, *at, *value),
                Err(error) => tracing::warn!(series = %key, "storing a recorded sample: {error}"),
            }
        }
        if write.is_empty() {
            return Vec::new();
        }
        let durable = async {
            self.store.write_async(write).await?;
            self.store.sync_async().await
        };
        if let Err(error) = durable.await {
            tracing::error!("storing alert state: {error}");
            return Vec::new();
        }
        for message in &outcome.transitions {
            tracing::info!(rule = %message.rule, instance = %message.instance, state = message.state.as_str(), value = ?message.value, "alert");
        }
        for channel in outcome.woken {
            match channel {
                Channel::Mqtt => {
                    if let Some(mailbox) = &self.mailbox {
                        outpost_sync::uplink::Mailbox::wake(mailbox.as_ref()).notify_one();
                    }
                }
                Channel::Named(name) => {
                    if let Some(wake) = self.wakers.lock().expect("wakers lock").get(&name) {
                        wake.notify_one();
                    }
                }
            }
        }
        outcome.transitions
    }
}

fn senders(section: &AlertsSection) -> Vec<Sender> {
    section
        .webhook
        .iter()
        .cloned()
        .map(Sender::Webhook)
        .chain(section.exec.iter().cloned().map(Sender::Exec))
        .chain(section.email.iter().cloned().map(Sender::Email))
        .collect()
}

/// A silence the hub sent, as the engine keeps it: its matchers written as a selector, in the
/// selector's own grammar; `None` for matchers no selector can hold (a label that is not a
/// label name, a regular expression that does not compile).
fn silence_from_hub(s: outpost_sync::Silence) -> Option<Silence> {
    use outpost_storage::MatchOp;
    let matchers = s.matchers.iter().map(|m| {
        let op = match m.op {
            outpost_sync::MatchOp::Equal => MatchOp::Equal,
            outpost_sync::MatchOp::NotEqual => MatchOp::NotEqual,
            outpost_sync::MatchOp::Regex => MatchOp::Regex,
            outpost_sync::MatchOp::NotRegex => MatchOp::NotRegex,
        };
        (m.label.as_str(), op, m.value.as_str())
    });
    let selector = match outpost_storage::Selector::from_matchers(matchers) {
        Ok(selector) => selector,
        Err(error) => {
            tracing::warn!(
                id = s.id,
                "ignoring a hub silence whose matchers do not parse: {error}"
            );
            return None;
        }
    };
    Some(Silence {
        id: s.id,
        matcher: selector.to_string(),
        starts_ms: s.starts_ms,
        ends_ms: s.ends_ms,
        created_by: if s.created_by.is_empty() {
            "hub".into()
        } else {
            s.created_by
        },
        comment: s.comment,
    })
}

/// Applies the hub's silence commands whose id is above the last one applied and that have not
/// expired.
fn apply_commands(
    engine: &mut Engine,
    store: &Store,
    commands: Vec<outpost_sync::Command>,
    now: i64,
    write: &mut WriteBatch,
) {
    if commands.is_empty() {
        return;
    }
    let mut last = store
        .get(&LastCommandKey)
        .ok()
        .flatten()
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_le_bytes);
    for command in commands {
        if command.id <= last {
            tracing::warn!(
                id = command.id,
                last,
                "ignoring a replayed or reordered hub command"
            );
            continue;
        }
        last = command.id;
        if command.expires_ms <= now {
            tracing::warn!(id = command.id, "ignoring an expired hub command");
            continue;
        }
        match command.action {
            outpost_sync::Action::Silence(s) => {
                let Some(silence) = silence_from_hub(s) else {
                    continue;
                };
                if let Err(error) = engine.silences.add(silence, write) {
                    tracing::warn!(id = command.id, "hub silence not applied: {error}");
                }
            }
            outpost_sync::Action::Expire { silence_id } => {
                engine.silences.expire(&silence_id, write);
            }
        }
    }
    write.put(&LastCommandKey, last.to_le_bytes().to_vec());
}

// ---- HTTP ----------------------------------------------------------------------------------

pub async fn list_alerts(State(runtime): State<Arc<AlertShared>>) -> Response {
    let engine = runtime.engine.lock().expect("engine lock");
    let alerts: Vec<&outpost::alert::engine::AlertRecord> = engine.alerts().collect();
    Json(serde_json::json!({ "alerts": alerts })).into_response()
}

#[derive(serde::Deserialize)]
pub struct HistoryQuery {
    limit: Option<usize>,
}

pub async fn history(
    State(runtime): State<Arc<AlertShared>>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(100).min(1000);
    let newest =
        |prefix: &dyn std::fmt::Display| -> Result<Vec<serde_json::Value>, outpost_storage::Error> {
            Ok(runtime
                .store
                .state_list(StateTable::AlertState, &prefix.to_string())?
                .iter()
                .rev()
                .take(limit)
                .filter_map(|(_, v)| serde_json::from_slice(v).ok())
                .collect())
        };
    match (
        newest(&outpost::alert::engine::EngineKey::AllHistory),
        newest(&super::notify::ExecKey::All),
    ) {
        (Ok(events), Ok(commands)) => {
            Json(serde_json::json!({ "events": events, "commands": commands })).into_response()
        }
        (Err(error), _) | (_, Err(error)) => {
            (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
        }
    }
}

pub async fn list_silences(State(runtime): State<Arc<AlertShared>>) -> Response {
    let engine = runtime.engine.lock().expect("engine lock");
    let now = now_ms();
    let maintenance: Vec<serde_json::Value> = engine
        .silences
        .maintenance()
        .iter()
        .map(|m| serde_json::json!({ "name": m.name, "active": m.when.covers(now) }))
        .collect();
    Json(serde_json::json!({
        "silences": engine.silences.list(),
        "maintenance": maintenance,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    #[serde(rename = "match")]
    matcher: String,
    /// RFC 3339 or milliseconds; default now.
    starts: Option<String>,
    /// RFC 3339 or milliseconds; or give `duration`.
    ends: Option<String>,
    duration: Option<String>,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    created_by: String,
}

/// Takes the JSON whatever the request's content type says: `curl -d` sends form encoding.
pub async fn add_silence(
    State(runtime): State<Arc<AlertShared>>,
    body: axum::body::Bytes,
) -> Response {
    let new: NewSilence = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("a silence is JSON with match and duration (or ends): {error}\n"),
            )
                .into_response()
        }
    };
    let now = now_ms();
    let parsed = (|| -> Result<Silence> {
        let starts_ms = match &new.starts {
            Some(t) => outpost::timearg::parse_time(t, now).context("starts")?,
            None => now,
        };
        let ends_ms = match (&new.ends, &new.duration) {
            (Some(t), None) => outpost::timearg::parse_time(t, now).context("ends")?,
            (None, Some(d)) => {
                starts_ms + outpost::timearg::parse_duration_ms(d).context("duration")?
            }
            _ => anyhow::bail!("give ends or duration"),
        };
        let id = format!(
            "api-{}",
            crate::sysinfo_ids::random_bytes(6)?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Ok(Silence {
            id,
            matcher: new.matcher.clone(),
            starts_ms,
            ends_ms,
            created_by: if new.created_by.is_empty() {
                "api".into()
            } else {
                new.created_by.clone()
            },
            comment: new.comment.clone(),
        })
    })();
    let silence = match parsed {
        Ok(s) => s,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error:#}\n")).into_response(),
    };
    let (added, write) = change_silences(&runtime, |silences, write| {
        silences.add(silence.clone(), write)
    });
    if let Err(error) = added {
        return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response();
    }
    match store_durably(&runtime, write).await {
        Ok(()) => (StatusCode::CREATED, Json(silence)).into_response(),
        Err(error) => error,
    }
}

/// Changes the engine's silences: the change's answer, and what it would store.
fn change_silences<T>(
    runtime: &AlertShared,
    change: impl FnOnce(&mut outpost::alert::schedule::Silences, &mut WriteBatch) -> T,
) -> (T, WriteBatch) {
    let mut write = WriteBatch::default();
    let mut engine = runtime.engine.lock().expect("engine lock");
    let answer = change(&mut engine.silences, &mut write);
    (answer, write)
}

/// Stores a change of the silences before the API answers that it is made.
async fn store_durably(runtime: &AlertShared, write: WriteBatch) -> Result<(), Response> {
    let stored = async {
        runtime.store.write_async(write).await?;
        runtime.store.sync_async().await
    };
    stored
        .await
        .map_err(|error| (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response())
}

pub async fn delete_silence(
    State(runtime): State<Arc<AlertShared>>,
    Path(id): Path<String>,
) -> Response {
    let (existed, write) = change_silences(&runtime, |silences, write| silences.expire(&id, write));
    if !existed {
        return (StatusCode::NOT_FOUND, format!("no silence {id:?}\n")).into_response();
    }
    match store_durably(&runtime, write).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error,
    }
}

/// The engine's self-metrics, added to the agent's own round.
pub fn self_metrics(runtime: &AlertShared, out: &mut crate::collect::Samples) {
    let engine = runtime.engine.lock().expect("engine lock");
    out.add("outpost_alert_rules", &[], engine.rules().len() as f64);
    for state in ["pending", "firing"] {
        let count = engine
            .alerts()
            .filter(|a| a.state.as_str() == state)
            .count();
        out.add("outpost_alerts", &[("state", state)], count as f64);
    }
    let channels: Vec<(String, usize, u64)> = engine
        .dropped_total()
        .into_iter()
        .map(|(channel, dropped)| {
            let queued = engine.queued(&channel);
            let name = match channel {
                Channel::Mqtt => "mqtt".to_string(),
                Channel::Named(n) => n,
            };
            (name, queued, dropped)
        })
        .collect();
    drop(engine);
    out.add(
        "outpost_alert_evaluation_duration_seconds",
        &[],
        runtime
            .last_evaluation
            .lock()
            .expect("evaluation time lock")
            .as_secs_f64(),
    );
    let stats = runtime.stats.lock().expect("channel stats lock").clone();
    for (name, queued, dropped) in &channels {
        let labels = [("channel", name.as_str())];
        let s = stats.get(name).cloned().unwrap_or_default();
        out.add(
            "outpost_alert_notifications_queued",
            &labels,
            *queued as f64,
        );
        out.add(
            "outpost_alert_notifications_delivered_total",
            &labels,
            s.delivered as f64,
        );
        out.add(
            "outpost_alert_notifications_failed_total",
            &labels,
            s.failed as f64,
        );
        out.add(
            "outpost_alert_notifications_dropped_total",
            &labels,
            *dropped as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the hub matched on is what the device silences, whatever the values hold: the
    /// matchers go through the selector's own text, not another language's escaping.
    #[test]
    fn a_silence_from_the_hub_matches_what_the_hub_asked() {
        let matchers = [
            ("alertname", outpost_sync::MatchOp::Equal, "disk_full"),
            (
                "mountpoint",
                outpost_sync::MatchOp::Equal,
                "/mnt/a\tb \"quoted\"\\",
            ),
            (
                "note",
                outpost_sync::MatchOp::NotEqual,
                "tab\there\nnewline\rcr",
            ),
            ("device", outpost_sync::MatchOp::Regex, r"sd[a-z]\d+"),
            ("path", outpost_sync::MatchOp::NotRegex, "ünïcode/ä"),
        ];
        let silence = silence_from_hub(outpost_sync::Silence {
            id: "hub-1".into(),
            matchers: matchers
                .iter()
                .map(|(label, op, value)| outpost_sync::Matcher {
                    label: (*label).into(),
                    op: *op,
                    value: (*value).into(),
                })
                .collect(),
            starts_ms: 0,
            ends_ms: 1,
            created_by: String::new(),
            comment: String::new(),
        })
        .unwrap();
        let selector = outpost_storage::Selector::parse(&silence.matcher).unwrap();
        let parsed: Vec<(&str, outpost_storage::MatchOp, &str)> = selector.matchers().collect();
        let wanted: Vec<(&str, outpost_storage::MatchOp, &str)> = matchers
            .iter()
            .map(|(label, op, value)| {
                let op = match op {
                    outpost_sync::MatchOp::Equal => outpost_storage::MatchOp::Equal,
                    outpost_sync::MatchOp::NotEqual => outpost_storage::MatchOp::NotEqual,
                    outpost_sync::MatchOp::Regex => outpost_storage::MatchOp::Regex,
                    outpost_sync::MatchOp::NotRegex => outpost_storage::MatchOp::NotRegex,
                };
                (*label, op, *value)
            })
            .collect();
        assert_eq!(parsed, wanted, "{}", silence.matcher);
        assert_eq!(silence.created_by, "hub");
    }
}
