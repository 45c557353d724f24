//! Delivery of the notification queue that the engine writes into the store: the MQTT topics
//! through the agent's one MQTT connection, and one task per webhook, e-mail or exec channel.
//! Each channel delivers its queue in order and removes an entry only once it is delivered (or
//! refused for good), so an outage of days ends with everything sent, with its original times.

#![deny(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use outpost_storage::{StateTable, Store, WriteBatch};
use serde::{Deserialize, Serialize};

use super::config::{EmailConfig, ExecConfig, NotifyOn, WebhookConfig, WebhookFormat};
use super::receivers::{self, Outgoing};
use outpost::alert::engine::{AlertMessage, Channel, Engine, Mail, QueueKey, State};
use outpost::alert::template::{Context, Template};

/// The exec channel's records of the commands it ran, in the store's `AlertState` table (so
/// that a command runs at most once, `run_exec`).
#[derive(Debug, Clone, Copy)]
pub enum ExecKey<'a> {
    /// The record of the queue entry `key`.
    Record(&'a str),
    All,
}

impl std::fmt::Display for ExecKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecKey::Record(key) => write!(f, "x/{key}"),
            ExecKey::All => f.write_str("x/"),
        }
    }
}

impl outpost_storage::StateKey for ExecKey<'_> {
    const TABLE: StateTable = StateTable::AlertState;
    const OWNED: &'static [&'static str] = &["x/"];
}

/// Per-channel counters for the agent's self-metrics.
#[derive(Debug, Default, Clone)]
pub struct ChannelStats {
    pub delivered: u64,
    pub failed: u64,
    pub queued: usize,
}

pub type Stats = Arc<Mutex<HashMap<String, ChannelStats>>>;

fn bump(stats: &Stats, channel: &str, f: impl FnOnce(&mut ChannelStats)) {
    f(stats
        .lock()
        .expect("channel stats lock")
        .entry(channel.to_string())
        .or_default());
}

/// The engine's MQTT queue, as the uplink's [`outpost_sync::uplink::Mailbox`].
pub struct AlertMailbox {
    store: Arc<Store>,
    engine: Arc<Mutex<Engine>>,
    /// Queue keys handed to the MQTT client, and when.
    handed: Arc<Mutex<HashMap<String, Instant>>>,
    wake: Arc<tokio::sync::Notify>,
    stats: Stats,
}

impl AlertMailbox {
    pub fn new(store: Arc<Store>, engine: Arc<Mutex<Engine>>, stats: Stats) -> Arc<Self> {
        Arc::new(AlertMailbox {
            store,
            engine,
            handed: Arc::default(),
            wake: Arc::new(tokio::sync::Notify::new()),
            stats,
        })
    }
}

/// A handed message still unacknowledged this long after a reconnect is offered again: the
/// client normally resends it itself, this is for when it did not.
const REOFFER_AFTER: Duration = Duration::from_secs(60);

impl outpost_sync::uplink::Mailbox for AlertMailbox {
    fn pending(&self, max: usize) -> Vec<outpost_sync::uplink::Mail> {
        let entries = match self.store.list(&QueueKey::Channel(&Channel::Mqtt)) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!("reading the alert queue: {error}");
                return Vec::new();
            }
        };
        let handed = self.handed.lock().expect("handed lock");
        entries
            .into_iter()
            .filter(|(key, _)| !handed.contains_key(key))
            .filter_map(|(key, value)| {
                let mail: Mail = serde_json::from_slice(&value).ok()?;
                Some(outpost_sync::uplink::Mail {
                    id: key,
                    topic: mail.topic,
                    payload: mail.payload.into_bytes(),
                    retain: mail.retain,
                })
            })
            .take(max)
            .collect()
    }

    fn handed(&self, id: &str) {
        self.handed
            .lock()
            .expect("handed lock")
            .insert(id.to_string(), Instant::now());
    }

    fn delivered(&self, id: &str) {
        // Off the uplink's thread, and durable at once (an fsync, milliseconds): a crash after
        // the broker's PUBACK publishes the message again only within that window. Until the
        // removal is done the key stays handed, so it is not offered again meanwhile.
        let (store, engine, stats, handed) = (
            self.store.clone(),
            self.engine.clone(),
            self.stats.clone(),
            self.handed.clone(),
        );
        let id = id.to_string();
        let remove = async move {
            let mut write = WriteBatch::default();
            write.delete_state(StateTable::NotificationQueue, id.clone());
            let removed = durably(&store, write).await;
            handed.lock().expect("handed lock").remove(&id);
            if let Err(error) = removed {
                tracing::error!("removing a delivered alert message from the queue: {error}");
                return;
            }
            let mut engine = engine.lock().expect("engine lock");
            engine.dequeued(&Channel::Mqtt, &id);
            let queued = engine.queued(&Channel::Mqtt);
            drop(engine);
            bump(&stats, "mqtt", |s| {
                s.delivered += 1;
                s.queued = queued;
            });
        };
        // The uplink calls this from its task, inside the agent's runtime.
        tokio::spawn(remove);
    }

    fn reconnected(&self) -> Vec<outpost_sync::uplink::Mail> {
        let now = Instant::now();
        self.handed
            .lock()
            .expect("handed lock")
            .retain(|_, at| now.duration_since(*at) < REOFFER_AFTER);
        self.engine
            .lock()
            .expect("engine lock")
            .retained_now()
            .into_iter()
            .map(|mail| outpost_sync::uplink::Mail {
                id: String::new(),
                topic: mail.topic,
                payload: mail.payload.into_bytes(),
                retain: mail.retain,
            })
            .collect()
    }

    fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }
}

/// A configured channel other than MQTT.
#[derive(Debug, Clone)]
pub enum Sender {
    Webhook(WebhookConfig),
    Exec(ExecConfig),
    Email(EmailConfig),
}

impl Sender {
    pub fn name(&self) -> &str {
        match self {
            Sender::Webhook(c) => &c.name,
            Sender::Exec(c) => &c.name,
            Sender::Email(c) => &c.name,
        }
    }

    /// How a channel that groups its notifications groups them.
    fn grouping(&self) -> Option<Grouping> {
        let (by, wait, interval) = match self {
            Sender::Webhook(c) => (&c.group_by, c.group_wait.0, c.group_interval.0),
            Sender::Email(c) => (&c.group_by, c.group_wait.0, c.group_interval.0),
            Sender::Exec(_) => return None,
        };
        (!by.is_empty()).then(|| Grouping {
            route: String::new(),
            by: by.clone(),
            wait_ms: wait.as_millis() as u64,
            interval_ms: interval.as_millis() as u64,
        })
    }

    fn wants(&self, message: &AlertMessage) -> bool {
        let on = match self {
            Sender::Webhook(c) => &c.on,
            Sender::Exec(c) => &c.on,
            Sender::Email(c) => &c.on,
        };
        match message.state {
            State::Firing => on.contains(&NotifyOn::Firing),
            State::Resolved => on.contains(&NotifyOn::Resolved),
            _ => false,
        }
    }
}

/// How a delivery attempt ended.
enum Attempt {
    Delivered,
    /// Worth trying again later (network down, server busy).
    Retry(String),
    /// Never going to work for this message (the server refused it); dropped and counted.
    Refused(String),
}

/// How the notifications of one hub route are grouped on a channel, carried in each of its
/// queue entries (a channel's own grouping has no route).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grouping {
    /// The route's place in the config; empty for the channel's own.
    pub route: String,
    /// Gather alerts that agree on these labels; none: each alert alone.
    pub by: Vec<String>,
    pub wait_ms: u64,
    pub interval_ms: u64,
}

impl Grouping {
    /// Each alert of `route` alone (`group_by = ["..."]`).
    pub fn alone(route: &str) -> Grouping {
        Grouping {
            route: route.to_string(),
            by: Vec::new(),
            wait_ms: 0,
            interval_ms: 0,
        }
    }
}

/// A queue entry: the message, and the grouping of the hub route that queued it.
#[derive(Deserialize)]
struct Queued {
    #[serde(flatten)]
    message: AlertMessage,
    #[serde(default)]
    grouping: Option<Grouping>,
}

/// The field of a queue entry that carries its route's [`Grouping`].
pub fn grouping_field(grouping: &Grouping) -> (&'static str, serde_json::Value) {
    (
        "grouping",
        serde_json::to_value(grouping).expect("groupings serialize"),
    )
}

/// The most notifications one grouped message carries.
const MAX_GROUP: usize = 100;

/// What a grouped notification is gathered by: its route, its state and the values of the
/// route's labels (`alertname` the rule; `device` or `instance` the device unless the alert has
/// that label).
type GroupKey = (String, State, Vec<String>);

fn group_key(message: &AlertMessage, grouping: &Grouping) -> GroupKey {
    let values = grouping
        .by
        .iter()
        .map(|label| match (label.as_str(), message.labels.get(label)) {
            ("alertname", _) => message.rule.clone(),
            (_, Some(value)) => value.clone(),
            ("device" | "instance", None) => message.device.clone(),
            (_, None) => String::new(),
        })
        .collect();
    (grouping.route.clone(), message.state, values)
}

/// What one turn of a channel's loop does with the head of its queue.
enum Turn {
    /// Wait this long (a group still gathering), or until woken.
    Wait(Duration),
    /// These entries were handled (delivered, refused or not wanted) or are to be retried;
    /// the group they were, if grouped.
    Done(Vec<String>, Attempt, Option<GroupKey>),
}

/// A queue entry's message and the grouping that holds for it: its route's, or else the
/// channel's.
fn read_entry(
    sender: &Sender,
    value: &[u8],
) -> serde_json::Result<(AlertMessage, Option<Grouping>)> {
    let queued = serde_json::from_slice::<Queued>(value)?;
    let grouping = queued.grouping.or_else(|| sender.grouping());
    Ok((queued.message, grouping.filter(|g| !g.by.is_empty())))
}

/// Decides on the head of the queue `entries`: one message alone, or with the rest of its
/// group once the group's wait is over (and its interval, when `sent` says it went lately).
async fn turn(
    sender: &Sender,
    entries: &[(String, Vec<u8>)],
    store: &Store,
    sent: &HashMap<GroupKey, i64>,
) -> Turn {
    let (key, value) = &entries[0];
    let (head, grouping) = match read_entry(sender, value) {
        Ok(entry) => entry,
        Err(error) => {
            let refused = Attempt::Refused(format!("unreadable queue entry: {error}"));
            return Turn::Done(vec![key.clone()], refused, None);
        }
    };
    if !sender.wants(&head) {
        return Turn::Done(vec![key.clone()], Attempt::Delivered, None);
    }
    let Some(grouping) = grouping else {
        return Turn::Done(
            vec![key.clone()],
            deliver(sender, &head, store, key).await,
            None,
        );
    };
    let at = head
        .at
        .parse::<jiff::Timestamp>()
        .map_or(0, |t| t.as_millisecond());
    let wanted = group_key(&head, &grouping);
    let interval = i64::try_from(grouping.interval_ms).unwrap_or(i64::MAX);
    let again = sent
        .get(&wanted)
        .map_or(i64::MIN, |last| last.saturating_add(interval));
    let wait = i64::try_from(grouping.wait_ms).unwrap_or(i64::MAX);
    let due = at.saturating_add(wait).max(again);
    let now = outpost::timearg::now_ms();
    if now < due {
        return Turn::Wait(Duration::from_millis((due - now) as u64));
    }
    let group: Vec<(String, AlertMessage)> = entries
        .iter()
        .filter_map(|(k, v)| {
            let (message, grouping) = read_entry(sender, v).ok()?;
            let same = grouping.is_some_and(|g| group_key(&message, &g) == wanted);
            (same && sender.wants(&message)).then(|| (k.clone(), message))
        })
        .take(MAX_GROUP)
        .collect();
    let (keys, messages): (Vec<String>, Vec<AlertMessage>) = group.into_iter().unzip();
    let attempt = deliver_group(sender, (&messages, &grouping.by), store, key).await;
    Turn::Done(keys, attempt, Some(wanted))
}

/// Delivers channel `sender`'s queue, in order, until the task is dropped.
pub async fn run_channel(
    sender: Sender,
    store: Arc<Store>,
    engine: Arc<Mutex<Engine>>,
    wake: Arc<tokio::sync::Notify>,
    stats: Stats,
) {
    let name = sender.name().to_string();
    let channel = Channel::Named(name.clone());
    let prefix = QueueKey::Channel(&channel).to_string();
    let mut backoff = Duration::from_secs(1);
    // When each group's last message went (in memory: a restart may send one sooner).
    let mut sent: HashMap<GroupKey, i64> = HashMap::new();
    loop {
        let entries = match store.state_list(StateTable::NotificationQueue, &prefix) {
            Ok(entries) if entries.is_empty() => {
                wake.notified().await;
                continue;
            }
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(channel = name, "reading the notification queue: {error}");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        let (keys, attempt) = match turn(&sender, &entries, &store, &sent).await {
            Turn::Wait(wait) => {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = wake.notified() => {}
                }
                continue;
            }
            Turn::Done(keys, attempt, group) => {
                if let (Some(group), Attempt::Delivered) = (group, &attempt) {
                    let now = outpost::timearg::now_ms();
                    sent.retain(|_, at| now - *at < 86_400_000);
                    sent.insert(group, now);
                }
                (keys, attempt)
            }
        };
        let count = keys.len() as u64;
        match attempt {
            Attempt::Retry(error) => {
                tracing::warn!(
                    channel = name,
                    "notification not delivered: {error}; retrying in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(300));
                continue;
            }
            Attempt::Refused(error) => {
                tracing::error!(channel = name, "notification refused, dropped: {error}");
                bump(&stats, &name, |s| s.failed += count);
            }
            Attempt::Delivered => bump(&stats, &name, |s| s.delivered += count),
        }
        backoff = Duration::from_secs(1);
        let mut write = WriteBatch::default();
        for key in &keys {
            write.delete_state(StateTable::NotificationQueue, key.clone());
        }
        // Durable at once (an fsync of the log, milliseconds): a crash after this cannot make the
        // next start deliver the message again; only one between the receiver's answer and here
        // can.
        let removed = async {
            store.write_async(write).await?;
            store.sync_async().await
        };
        if let Err(error) = removed.await {
            tracing::error!(channel = name, "removing a delivered notification: {error}");
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        let mut engine = engine.lock().expect("engine lock");
        for key in &keys {
            engine.dequeued(&channel, key);
        }
        let queued = engine.queued(&channel);
        drop(engine);
        bump(&stats, &name, |s| s.queued = queued);
    }
}

/// Delivers a group of notifications as one message, in the group's shape even when it holds
/// one alert (so that a grouped JSON receiver always gets one kind of body).
async fn deliver_group(
    sender: &Sender,
    (messages, group_by): (&[AlertMessage], &[String]),
    store: &Store,
    key: &str,
) -> Attempt {
    match sender {
        Sender::Webhook(config) => {
            let secret = match webhook_secret(config) {
                Ok(secret) => secret,
                Err(error) => return Attempt::Refused(format!("{error:#}")),
            };
            let now = outpost::timearg::now_ms();
            match receivers::group_outgoing(config, (messages, group_by), &secret, now) {
                Ok(Some(outgoing)) => {
                    let mut headers = outgoing.headers;
                    headers.push(("idempotency-key".into(), notification_id(&messages[0])));
                    post(config, headers, outgoing.url, outgoing.body).await
                }
                Ok(None) => webhook(config, &receivers::digest(messages)).await,
                Err(error) => Attempt::Refused(format!("{error:#}")),
            }
        }
        Sender::Email(_) | Sender::Exec(_) => {
            deliver(sender, &receivers::digest(messages), store, key).await
        }
    }
}

async fn deliver(sender: &Sender, message: &AlertMessage, store: &Store, key: &str) -> Attempt {
    match sender {
        Sender::Webhook(config) => webhook(config, message).await,
        Sender::Exec(config) => run_exec_once(config, message, store, key).await,
        Sender::Email(config) => match send_email(config, message).await {
            Ok(()) => Attempt::Delivered,
            Err(SmtpError::Permanent(e)) => Attempt::Refused(e),
            Err(SmtpError::Transient(e)) => Attempt::Retry(e),
        },
    }
}

fn headline(message: &AlertMessage) -> String {
    let what = match (message.state, message.reason) {
        (State::Resolved, _) => "RESOLVED",
        (_, outpost::alert::engine::Reason::Escalation) => "ESCALATED",
        (_, outpost::alert::engine::Reason::Renotify) => "STILL FIRING",
        _ => "FIRING",
    };
    format!(
        "[{what}] {} on {} ({}): {}",
        message.rule, message.device, message.severity, message.summary
    )
}

/// The webhook's body for one message.
pub fn webhook_body(config: &WebhookConfig, message: &AlertMessage) -> Result<String> {
    let text = headline(message);
    Ok(match config.format {
        WebhookFormat::Json => serde_json::to_string(message)?,
        WebhookFormat::Slack => serde_json::json!({ "text": text }).to_string(),
        WebhookFormat::Discord => {
            let content: String = text.chars().take(2000).collect();
            serde_json::json!({ "content": content }).to_string()
        }
        WebhookFormat::Teams => {
            let colour = match (message.state, message.severity) {
                (State::Resolved, _) => "2eb886",
                (_, outpost::alert::rules::Severity::Critical) => "d63333",
                (_, outpost::alert::rules::Severity::Warning) => "e8a317",
                _ => "439fe0",
            };
            serde_json::json!({
                "@type": "MessageCard",
                "@context": "https://schema.org/extensions",
                "summary": text,
                "themeColor": colour,
                "title": text,
                "text": message.description,
            })
            .to_string()
        }
        WebhookFormat::Template => {
            let template = Template::parse(&config.template).map_err(anyhow::Error::msg)?;
            let severity = message.severity.to_string();
            template.render(&Context {
                value: message.value,
                threshold: message.threshold,
                rule: &message.rule,
                severity: &severity,
                device: &message.device,
                state: message.state.as_str(),
                summary: &message.summary,
                description: &message.description,
                labels: &message.labels,
            })
        }
        other => bail!("{other:?} channels build their own requests (receivers.rs)"),
    })
}

/// Runs an exec channel's command at most once per queued notification: that it is starting is
/// made durable before it starts, so that after a crash while it ran (or before its result was
/// recorded) the next start reports it instead of running it again. Its outcome is kept beside
/// the alert history (`x/<queue key>`, the last 1,000).
async fn run_exec_once(
    config: &ExecConfig,
    message: &AlertMessage,
    store: &Store,
    key: &str,
) -> Attempt {
    let record_key = ExecKey::Record(key).to_string();
    let record = |status: &str, exit_code: Option<i32>, error: Option<String>| {
        serde_json::json!({
            "channel": config.name,
            "rule": message.rule,
            "instance": message.instance,
            "event_seq": message.event_seq,
            "state": message.state,
            "at": outpost::alert::engine::rfc3339(outpost::timearg::now_ms()),
            "status": status,
            "exit_code": exit_code,
            "error": error,
        })
    };
    match store.state_get(StateTable::AlertState, &record_key) {
        Ok(Some(earlier)) => {
            return earlier_exec_outcome(config, &earlier, store, &record_key, &record).await
        }
        Ok(None) => {}
        Err(error) => return Attempt::Retry(format!("reading the exec record: {error}")),
    }
    let mut starting = WriteBatch::default();
    starting.put_state(
        StateTable::AlertState,
        record_key.clone(),
        record("started", None, None).to_string().into_bytes(),
    );
    // The history keeps its last 1,000 transitions; the command records as many.
    if let Ok(old) = store.list(&ExecKey::All) {
        for (old_key, _) in old.iter().take(old.len().saturating_sub(999)) {
            starting.delete_state(StateTable::AlertState, old_key.clone());
        }
    }
    if let Err(error) = durably(store, starting).await {
        return Attempt::Retry(format!(
            "recording that {:?} starts: {error}",
            config.command[0]
        ));
    }
    let result = exec(config, message).await;
    let finished = record(
        "finished",
        result.as_ref().ok().copied().flatten(),
        result.as_ref().err().map(|e| format!("{e:#}")),
    );
    let mut write = WriteBatch::default();
    write.put_state(
        StateTable::AlertState,
        record_key,
        finished.to_string().into_bytes(),
    );
    if let Err(error) = durably(store, write).await {
        tracing::error!("recording an exec result: {error}");
    }
    match result {
        Ok(Some(0)) => Attempt::Delivered,
        Ok(code) => Attempt::Refused(format!(
            "{:?} exited with {}",
            config.command[0],
            code.map_or("a signal".to_string(), |c| format!("status {c}"))
        )),
        Err(error) => Attempt::Refused(format!("{error:#}")),
    }
}

/// Makes an exec record: status, exit code, error.
type ExecRecord<'a> = dyn Fn(&str, Option<i32>, Option<String>) -> serde_json::Value + Sync + 'a;

/// A queued exec notification that already has a record: it started before a restart. Never
/// run again; a run whose end was not recorded is recorded as interrupted.
async fn earlier_exec_outcome(
    config: &ExecConfig,
    earlier: &[u8],
    store: &Store,
    record_key: &str,
    record: &ExecRecord<'_>,
) -> Attempt {
    let earlier: serde_json::Value = serde_json::from_slice(earlier).unwrap_or_default();
    if earlier["status"] == "finished" {
        return match (earlier["exit_code"].as_i64(), earlier["error"].as_str()) {
            (Some(0), _) => Attempt::Delivered,
            (_, Some(error)) => Attempt::Refused(error.to_string()),
            (code, None) => Attempt::Refused(format!(
                "{:?} exited with {}",
                config.command[0],
                code.map_or("a signal".to_string(), |c| format!("status {c}"))
            )),
        };
    }
    let why = format!(
        "{:?} was running when the agent stopped; not run again",
        config.command[0]
    );
    let mut write = WriteBatch::default();
    write.put_state(
        StateTable::AlertState,
        record_key.to_string(),
        record("interrupted", None, Some(why.clone()))
            .to_string()
            .into_bytes(),
    );
    if let Err(error) = durably(store, write).await {
        tracing::error!("recording an interrupted exec: {error}");
    }
    Attempt::Refused(why)
}

async fn durably(store: &Store, write: WriteBatch) -> Result<(), outpost_storage::Error> {
    store.write_async(write).await?;
    store.sync_async().await
}

/// A notification's idempotency key, the same at every attempt to deliver it, across restarts:
/// the device, the event number, why it was sent and when (a reminder repeats its alert's event
/// number, not its time). Webhooks get it as `Idempotency-Key`, mail in its `Message-ID`, exec
/// commands as `OUTPOST_ALERT_ID`: a receiver that has seen it can drop a repeat.
pub fn notification_id(message: &AlertMessage) -> String {
    let device: String = message
        .device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let at: String = message.at.chars().filter(char::is_ascii_digit).collect();
    format!(
        "{device}.{}.{}.{at}",
        message.event_seq,
        message.reason.as_str()
    )
}

/// The request a webhook channel makes for `message`: a service's (`receivers`), or the
/// generic formats' POST of `webhook_body` to the channel's URL.
fn webhook_secret(config: &WebhookConfig) -> Result<String> {
    if config.secret_file.as_os_str().is_empty() {
        Ok(String::new())
    } else {
        crate::sysinfo_ids::read_secret(&config.secret_file, "channel secret (secret_file)")
    }
}

fn webhook_request(config: &WebhookConfig, message: &AlertMessage) -> Result<Outgoing> {
    let secret = webhook_secret(config)?;
    let now = outpost::timearg::now_ms();
    Ok(match receivers::outgoing(config, message, &secret, now)? {
        Some(outgoing) => outgoing,
        None => Outgoing {
            url: config.url.clone(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: webhook_body(config, message)?.into_bytes(),
        },
    })
}

async fn webhook(config: &WebhookConfig, message: &AlertMessage) -> Attempt {
    let outgoing = match webhook_request(config, message) {
        Ok(outgoing) => outgoing,
        Err(error) => return Attempt::Refused(format!("{error:#}")),
    };
    let mut headers = outgoing.headers;
    headers.push(("idempotency-key".into(), notification_id(message)));
    post(config, headers, outgoing.url, outgoing.body).await
}

/// POSTs `body` to `url` (which may hold a token: messages name the channel's endpoint only).
async fn post(
    config: &WebhookConfig,
    mut headers: Vec<(String, String)>,
    url: String,
    body: Vec<u8>,
) -> Attempt {
    let shown = receivers::endpoint(config).to_string();
    let target = match crate::http_client::Target::parse(&url) {
        Ok(target) => target,
        Err(error) => return Attempt::Refused(format!("{shown}: {error:#}")),
    };
    for (name, value) in &config.headers {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        headers.push((name.clone(), value.clone()));
    }
    let request = crate::http_client::Request {
        method: "POST",
        headers: &headers,
        body: body.into(),
    };
    let tls = match crate::tls::client_config(&config.ca_file, Path::new(""), Path::new("")) {
        Ok(tls) => Arc::new(tls),
        Err(error) => return Attempt::Retry(format!("{error:#}")),
    };
    match crate::http_client::send(&target, request, tls, config.timeout.0, 64 << 10).await {
        Ok(response) if (200..300).contains(&response.status) => Attempt::Delivered,
        // Rate limits and server trouble pass; other refusals will not.
        Ok(response) if matches!(response.status, 408 | 429) || response.status >= 500 => {
            Attempt::Retry(format!("{shown} answered {}", response.status))
        }
        Ok(response) => Attempt::Refused(format!(
            "{shown} answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
                .chars()
                .take(200)
                .collect::<String>()
        )),
        Err(error) => Attempt::Retry(format!("{error:#}")),
    }
}

/// For an `alertmanager-api` channel: every minute, the firing alerts it was told of again,
/// as Prometheus resends them, so that Alertmanager does not end them while they fire.
pub async fn resend_to_alertmanager(
    config: WebhookConfig,
    firing_now: impl Fn() -> Vec<AlertMessage>,
) {
    let every = config.resend_every.0;
    loop {
        tokio::time::sleep(every).await;
        let firing = firing_now();
        if firing.is_empty() {
            continue;
        }
        let now = outpost::timearg::now_ms();
        let alerts: Vec<serde_json::Value> = firing
            .iter()
            .map(|m| receivers::alertmanager_alert(m, now, receivers::resend_ms(&config)))
            .collect();
        let url = format!(
            "{}/api/v2/alerts",
            receivers::endpoint(&config).trim_end_matches('/')
        );
        let headers = vec![("content-type".into(), "application/json".into())];
        let body = serde_json::Value::from(alerts).to_string().into_bytes();
        match post(&config, headers, url, body).await {
            Attempt::Delivered => {}
            Attempt::Retry(error) | Attempt::Refused(error) => {
                tracing::warn!(channel = config.name, "resending firing alerts: {error}");
            }
        }
    }
}

/// Runs the exec channel's command with the alert in its environment. `Ok(None)`: killed by a
/// signal or the timeout.
async fn exec(config: &ExecConfig, message: &AlertMessage) -> Result<Option<i32>> {
    let mut command = tokio::process::Command::new(&config.command[0]);
    command
        .args(&config.command[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (name, value) in exec_environment(message) {
        command.env(name, value);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run {:?}", config.command[0]))?;
    match tokio::time::timeout(config.timeout.0, child.wait()).await {
        Ok(status) => Ok(status?.code()),
        Err(_) => {
            let _ = child.kill().await;
            bail!(
                "{:?} still ran after {:?}: killed",
                config.command[0],
                config.timeout.0
            )
        }
    }
}

/// The `OUTPOST_ALERT_*` variables an exec channel's command sees.
pub fn exec_environment(message: &AlertMessage) -> Vec<(String, String)> {
    let mut env = vec![
        ("OUTPOST_ALERT_RULE".to_string(), message.rule.clone()),
        ("OUTPOST_ALERT_STATE".into(), message.state.as_str().into()),
        (
            "OUTPOST_ALERT_SEVERITY".into(),
            message.severity.to_string(),
        ),
        (
            "OUTPOST_ALERT_VALUE".into(),
            message.value.map(|v| v.to_string()).unwrap_or_default(),
        ),
        (
            "OUTPOST_ALERT_THRESHOLD".into(),
            message.threshold.map(|v| v.to_string()).unwrap_or_default(),
        ),
        ("OUTPOST_ALERT_SUMMARY".into(), message.summary.clone()),
        ("OUTPOST_ALERT_DEVICE".into(), message.device.clone()),
        (
            "OUTPOST_ALERT_EVENT_SEQ".into(),
            message.event_seq.to_string(),
        ),
        ("OUTPOST_ALERT_AT".into(), message.at.clone()),
        ("OUTPOST_ALERT_ID".into(), notification_id(message)),
        (
            "OUTPOST_ALERT_LABELS".into(),
            serde_json::to_string(&message.labels).expect("labels serialize"),
        ),
        (
            "OUTPOST_ALERT_JSON".into(),
            serde_json::to_string(message).expect("message serializes"),
        ),
    ];
    for (name, value) in &message.labels {
        env.push((
            format!("OUTPOST_ALERT_LABEL_{}", name.to_ascii_uppercase()),
            value.clone(),
        ));
    }
    env
}

/// Where an e-mail channel sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpServer {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtps://`: TLS from the first byte.
    Tls,
    /// `smtp://`: STARTTLS, required.
    StartTls,
    /// `smtp://` with `insecure_plaintext`: no TLS at all.
    Plain,
}

impl SmtpServer {
    pub fn parse(url: &str, insecure_plaintext: bool) -> Result<SmtpServer> {
        let (security, rest, default_port) = if let Some(rest) = url.strip_prefix("smtps://") {
            (SmtpSecurity::Tls, rest, 465)
        } else if let Some(rest) = url.strip_prefix("smtp://") {
            let security = if insecure_plaintext {
                SmtpSecurity::Plain
            } else {
                SmtpSecurity::StartTls
            };
            (security, rest, 587)
        } else {
            bail!("{url:?}: use smtps://host:465 or smtp://host:587");
        };
        let (host, port) =
            crate::netaddr::host_port(url, rest.trim_end_matches('/'), default_port)?;
        Ok(SmtpServer {
            host,
            port,
            security,
        })
    }
}

#[derive(Debug)]
enum SmtpError {
    /// A 5xx answer: this message will never be accepted.
    Permanent(String),
    /// Connection trouble or a 4xx answer.
    Transient(String),
}

/// The mail for one message: the headline as its subject (encoded as RFC 2047 wants when it is
/// not ASCII, "°C" say), the alert's fields as plain UTF-8 text.
pub fn email_message(config: &EmailConfig, message: &AlertMessage) -> Result<lettre::Message> {
    use lettre::message::{header::ContentType, Mailbox};
    let text = format!(
        "{}\n\n{}\n\nrule: {}\nstate: {}\nseverity: {}\nvalue: {}\nthreshold: {}\nlabels: {}\nstarted: {}\nat: {}\nevent: {}\n",
        message.summary,
        message.description,
        message.rule,
        message.state.as_str(),
        message.severity,
        message.value.map_or("none".into(), outpost::alert::template::format_number),
        message
            .threshold
            .map_or("none".into(), outpost::alert::template::format_number),
        serde_json::to_string(&message.labels).expect("labels serialize"),
        message.started_at.as_deref().unwrap_or("-"),
        message.at,
        message.event_seq,
    );
    let from: Mailbox = config.from.parse().context("from")?;
    let domain = config.from.rsplit('@').next().unwrap_or("localhost");
    let mut builder = lettre::Message::builder()
        .from(from)
        .subject(headline(message).replace(['\r', '\n'], " "))
        .message_id(Some(format!(
            "<outpost.{}@{domain}>",
            notification_id(message)
        )))
        .header(ContentType::TEXT_PLAIN);
    for to in &config.to {
        builder = builder.to(to
            .parse::<Mailbox>()
            .with_context(|| format!("to {to:?}"))?);
    }
    builder.body(text).context("composing the mail")
}

async fn send_email(config: &EmailConfig, message: &AlertMessage) -> Result<(), SmtpError> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
    use lettre::transport::smtp::extension::ClientId;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
    let permanent = |e: anyhow::Error| SmtpError::Permanent(format!("{e:#}"));
    let server = SmtpServer::parse(&config.server, config.insecure_plaintext).map_err(permanent)?;
    let password = if config.password_file.as_os_str().is_empty() {
        String::new()
    } else {
        crate::sysinfo_ids::read_secret(&config.password_file, "SMTP password (password_file)")
            .map_err(permanent)?
    };
    let mail = email_message(config, message).map_err(permanent)?;
    // The public roots built in, or the configured CA alone.
    let mut tls = TlsParameters::builder(server.host.clone());
    tls = if config.ca_file.as_os_str().is_empty() {
        tls.certificate_store(CertificateStore::WebpkiRoots)
    } else {
        let pem = std::fs::read(&config.ca_file)
            .with_context(|| format!("reading {}", config.ca_file.display()))
            .map_err(permanent)?;
        let ca = Certificate::from_pem(&pem)
            .with_context(|| format!("{} holds no certificate", config.ca_file.display()))
            .map_err(permanent)?;
        tls.certificate_store(CertificateStore::None)
            .add_root_certificate(ca)
    };
    let tls = tls
        .build_rustls()
        .context("TLS settings")
        .map_err(permanent)?;
    let mode = match server.security {
        SmtpSecurity::Tls => Tls::Wrapper(tls),
        SmtpSecurity::StartTls => Tls::Required(tls),
        SmtpSecurity::Plain => Tls::None,
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&server.host)
        .port(server.port)
        .tls(mode)
        .hello_name(ClientId::Domain("outpost".into()))
        .timeout(Some(config.timeout.0));
    if !config.username.is_empty() {
        transport = transport.credentials(Credentials::new(config.username.clone(), password));
    }
    let shown = format!("{}:{}", server.host, server.port);
    let sent = tokio::time::timeout(config.timeout.0, transport.build().send(mail)).await;
    match sent {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) if error.is_permanent() => Err(SmtpError::Permanent(format!(
            "{shown}: {:#}",
            anyhow::Error::from(error)
        ))),
        Ok(Err(error)) => Err(SmtpError::Transient(format!(
            "{shown}: {:#}",
            anyhow::Error::from(error)
        ))),
        Err(_) => Err(SmtpError::Transient(format!(
            "{shown}: no answer within {:?}",
            config.timeout.0
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> AlertMessage {
        AlertMessage {
            device: "orin-1".into(),
            rule: "gpu_hot".into(),
            instance: "gpu=0".into(),
            severity: outpost::alert::rules::Severity::Critical,
            state: State::Firing,
            value: Some(91.5),
            threshold: Some(80.0),
            labels: [("gpu".to_string(), "0\"".to_string())]
                .into_iter()
                .collect(),
            started_at: Some("2026-12-01T10:00:00Z".into()),
            fired_at: Some("2026-12-01T10:02:00Z".into()),
            resolved_at: None,
            at: "2026-12-01T10:02:00Z".into(),
            summary: "GPU at 91.5 °C".into(),
            description: "check the fan".into(),
            annotations: Default::default(),
            event_seq: 4,
            silenced: false,
            escalated: false,
            reason: outpost::alert::engine::Reason::Transition,
            dropped_before: 0,
        }
    }

    fn hook(format: WebhookFormat, template: &str) -> WebhookConfig {
        WebhookConfig {
            name: "h".into(),
            url: "http://127.0.0.1/".into(),
            format,
            template: template.into(),
            headers: Default::default(),
            ca_file: Default::default(),
            timeout: crate::config_values::Interval::secs(1),
            on: vec![NotifyOn::Firing],
            secret_file: Default::default(),
            chat_id: String::new(),
            topic: String::new(),
            to: String::new(),
            from: String::new(),
            account_sid: String::new(),
            group_by: Vec::new(),
            group_wait: crate::config_values::Interval::secs(30),
            group_interval: crate::config_values::Interval::secs(300),
            resend_every: crate::config_values::Interval::secs(60),
        }
    }

    #[test]
    fn webhook_bodies_for_each_service() {
        let m = message();
        let body = |format, template: &str| -> serde_json::Value {
            serde_json::from_str(&webhook_body(&hook(format, template), &m).unwrap()).unwrap()
        };
        let json = body(WebhookFormat::Json, "");
        assert_eq!(json["rule"], "gpu_hot");
        assert_eq!(json["event_seq"], 4);
        let headline = "[FIRING] gpu_hot on orin-1 (critical): GPU at 91.5 °C";
        assert_eq!(body(WebhookFormat::Slack, "")["text"], headline);
        assert_eq!(body(WebhookFormat::Discord, "")["content"], headline);
        let teams = body(WebhookFormat::Teams, "");
        assert_eq!(teams["@type"], "MessageCard");
        assert_eq!(teams["themeColor"], "d63333");
        assert_eq!(teams["text"], "check the fan");
        let custom = body(
            WebhookFormat::Template,
            r#"{"alert": "{{rule}}", "gpu": "{{labels.gpu|json}}", "v": {{value}}}"#,
        );
        assert_eq!(custom["gpu"], "0\"");
        assert_eq!(custom["v"], 91.5);
    }

    #[test]
    fn exec_sees_the_alert_in_its_environment() {
        let env = exec_environment(&message());
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("OUTPOST_ALERT_STATE"), Some("firing"));
        assert_eq!(get("OUTPOST_ALERT_VALUE"), Some("91.5"));
        assert_eq!(get("OUTPOST_ALERT_LABEL_GPU"), Some("0\""));
        assert!(get("OUTPOST_ALERT_JSON")
            .unwrap()
            .contains("\"event_seq\":4"));
    }

    #[test]
    fn mail_subjects_out_of_ascii_are_encoded() {
        let mut m = message();
        m.description = ".hidden line\nnext".into();
        let config = EmailConfig {
            name: "m".into(),
            server: "smtp://x".into(),
            username: String::new(),
            password_file: Default::default(),
            from: "a@example.com".into(),
            to: vec!["b@example.com".into(), "c@example.com".into()],
            insecure_plaintext: false,
            ca_file: Default::default(),
            timeout: crate::config_values::Interval::secs(1),
            on: vec![NotifyOn::Firing],
            group_by: Vec::new(),
            group_wait: crate::config_values::Interval::secs(30),
            group_interval: crate::config_values::Interval::secs(300),
        };
        let mail = email_message(&config, &m).unwrap();
        let text = String::from_utf8(mail.formatted()).unwrap();
        let (headers, _) = text.split_once("\r\n\r\n").unwrap();
        assert!(headers.is_ascii(), "{headers}");
        // Long headers are folded onto lines that begin with white space.
        let headers = headers.replace("\r\n ", " ").replace("\r\n\t", " ");
        let subject = headers
            .lines()
            .find(|l| l.starts_with("Subject: "))
            .unwrap();
        assert!(subject.contains("=?utf-8?"), "{subject}");
        assert!(
            headers.contains("To: b@example.com, c@example.com"),
            "{headers}"
        );
        assert!(headers.contains("Message-ID: <outpost."), "{headers}");
        let mut bad = config.clone();
        bad.to = vec!["not an address".into()];
        assert!(email_message(&bad, &m).is_err());
    }

    #[test]
    fn smtp_urls() {
        let s = SmtpServer::parse("smtps://mail.example.com", false).unwrap();
        assert_eq!((s.port, s.security), (465, SmtpSecurity::Tls));
        let s = SmtpServer::parse("smtp://127.0.0.1:2525", true).unwrap();
        assert_eq!((s.port, s.security), (2525, SmtpSecurity::Plain));
        assert_eq!(
            SmtpServer::parse("smtp://x", false).unwrap().security,
            SmtpSecurity::StartTls
        );
        assert!(SmtpServer::parse("http://x", false).is_err());
        assert!(SmtpServer::parse("smtp://:25", false).is_err());
        // An IPv6 literal, with and without a port.
        let s = SmtpServer::parse("smtp://[::1]", false).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 587));
        let s = SmtpServer::parse("smtps://[2001:db8::25]:2465", false).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("2001:db8::25", 2465));
    }
}
