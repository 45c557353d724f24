//! The alert lifecycle: inactive → pending → firing → resolved, per rule and series, with the
//! transitions, the notifications they cause and the engine's own state written to the store
//! together, so that a crash or restart neither repeats a notification nor loses one.
//!
//! The engine reads no clock: every call takes `now_ms`, so that `outpost rules test` can run
//! it over a stored history exactly as the agent runs it live.

use std::collections::{BTreeMap, HashMap};

use outpost_storage::{SeriesKey, StateTable, Store, WriteBatch};
use serde::{Deserialize, Serialize};

use outpost_storage::promql;

use super::rules::{Condition, Expression, Recording, Rule, RuleSet, Severity};
use super::schedule::Silences;
use super::template::Context;
use super::window::Windows;

/// The engine's keys in the store's `AlertState` table: each alert's record, the transition
/// history and the two counters.
#[derive(Debug, Clone, Copy)]
pub enum EngineKey<'a> {
    Alert(&'a (String, String)),
    Alerts,
    History(u64),
    AllHistory,
    EventSeq,
    QueueSeq,
}

impl std::fmt::Display for EngineKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineKey::Alert((rule, instance)) => write!(f, "a/{rule}/{instance}"),
            EngineKey::Alerts => f.write_str("a/"),
            EngineKey::History(seq) => write!(f, "h/{seq:020}"),
            EngineKey::AllHistory => f.write_str("h/"),
            EngineKey::EventSeq => f.write_str("~event_seq"),
            EngineKey::QueueSeq => f.write_str("~queue_seq"),
        }
    }
}

impl outpost_storage::StateKey for EngineKey<'_> {
    const TABLE: StateTable = StateTable::AlertState;
    const OWNED: &'static [&'static str] = &["a/", "h/", "~event_seq", "~queue_seq"];
}

/// The notification queues' keys in the store's `NotificationQueue` table: one run of keys per
/// channel, in the order the entries were queued.
#[derive(Debug, Clone, Copy)]
pub enum QueueKey<'a> {
    Entry(&'a Channel, u64),
    Channel(&'a Channel),
}

impl std::fmt::Display for QueueKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (channel, seq) = match self {
            QueueKey::Entry(channel, seq) => (channel, Some(seq)),
            QueueKey::Channel(channel) => (channel, None),
        };
        match channel {
            Channel::Mqtt => f.write_str("m/")?,
            Channel::Named(name) => write!(f, "n/{name}/")?,
        }
        match seq {
            Some(seq) => write!(f, "{seq:020}"),
            None => Ok(()),
        }
    }
}

impl outpost_storage::StateKey for QueueKey<'_> {
    const TABLE: StateTable = StateTable::NotificationQueue;
    const OWNED: &'static [&'static str] = &["m/", "n/"];
}
/// Transitions kept in the history.
const HISTORY_LEN: u64 = 1000;
/// How long a resolved alert is remembered (for its cooldown) when nothing happens to it.
const FORGET_RESOLVED_MS: i64 = 24 * 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Inactive,
    Pending,
    Firing,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Inactive => "inactive",
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }
}

/// What the engine keeps of one alert instance, in the store between runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// The rule's name.
    pub rule: String,
    /// Which of the rule's series this is: its labels as text.
    pub instance: String,
    /// The series' labels and the rule's own.
    pub labels: BTreeMap<String, String>,
    pub state: State,
    pub severity: Severity,
    /// The value at the last evaluation; `None` when the series had no data.
    pub value: Option<f64>,
    /// The rule's threshold, as it was when the state changed; none for a PromQL rule.
    pub threshold: Option<f64>,
    /// When the condition began to hold (the start of `pending`).
    pub started_ms: Option<i64>,
    /// When it began to fire.
    pub fired_ms: Option<i64>,
    /// When it last resolved.
    pub resolved_ms: Option<i64>,
    /// The last evaluation at which the (hysteresis) condition held, for `keep_firing_for`.
    pub last_true_ms: Option<i64>,
    /// The first evaluation of a firing alert at which the condition stopped holding: a PromQL
    /// rule's `keep_firing_for` counts from there, as in Prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_ms: Option<i64>,
    /// A firing within the rule's cooldown of the previous resolve waits until then before
    /// the notification channels hear of it.
    pub cooldown_until_ms: Option<i64>,
    /// Its severity was raised by the rule's `escalate_after`.
    pub escalated: bool,
    /// A silence or maintenance window covers it: the channels are not told.
    pub silenced: bool,
    /// Whether the notification channels were told of this firing.
    pub notified: bool,
    /// When the channels were last told (firing, resolve or reminder).
    pub last_notified_ms: Option<i64>,
    /// The event sequence number and time of its last transition.
    pub event_seq: u64,
    pub changed_ms: i64,
    /// The rule's summary, rendered for this instance.
    pub summary: String,
    /// The rule's description, rendered for this instance.
    pub description: String,
    /// A Prometheus rule's other annotations, rendered for this instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The JSON of an alert as every channel sees it: the MQTT state and event topics, webhooks,
/// the history. `docs/alerts.md` documents each field and its JSON Schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertMessage {
    /// The device the alert is on.
    pub device: String,
    pub rule: String,
    pub instance: String,
    pub severity: Severity,
    pub state: State,
    pub value: Option<f64>,
    /// Null for a PromQL rule, whose condition is its expression.
    pub threshold: Option<f64>,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 times of those moments; absent when not yet reached.
    pub started_at: Option<String>,
    pub fired_at: Option<String>,
    pub resolved_at: Option<String>,
    /// When this transition (or reminder) happened.
    pub at: String,
    pub summary: String,
    pub description: String,
    /// A Prometheus rule's annotations other than summary and description.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Per device, one more for every transition; reminders repeat the last one's.
    pub event_seq: u64,
    /// A silence or maintenance window covers it.
    pub silenced: bool,
    /// Its severity was raised by the rule's `escalate_after`.
    pub escalated: bool,
    /// `transition`, `renotify` (a reminder of a long-firing alert) or `escalation`.
    pub reason: Reason,
    /// Notifications of this channel dropped, queue full, since the previous one delivered.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_before: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    Transition,
    Renotify,
    Escalation,
    /// The alert's `silenced` changed (a silence began, ended or was deleted); its state did
    /// not.
    Silence,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Transition => "transition",
            Reason::Renotify => "renotify",
            Reason::Escalation => "escalation",
            Reason::Silence => "silence",
        }
    }
}

/// Where a notification goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// The MQTT topics: retained state and events.
    Mqtt,
    /// A configured webhook, e-mail or exec channel, by name.
    Named(String),
}

impl Channel {
    fn queue_prefix(&self) -> String {
        QueueKey::Channel(self).to_string()
    }
}

/// One queued MQTT publication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mail {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

/// The engine's settings that are not rules.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub device: String,
    /// `outpost/v1/<fleet>/<device>`; `None` when the agent has no MQTT connection.
    pub mqtt_base: Option<String>,
    /// Named notification channels and the states each wants (firing, resolved).
    pub channels: Vec<String>,
    /// Entries each channel's queue may hold; beyond it the oldest are dropped and counted.
    pub max_queued: usize,
}

/// What one evaluation changed, for the agent to act on after the write is durable.
#[derive(Debug, Default)]
pub struct Outcome {
    pub transitions: Vec<AlertMessage>,
    /// Samples of recording rules, for the caller to store with the rest.
    pub recorded: Vec<(SeriesKey, i64, f64)>,
    /// Channels that got new queue entries.
    pub woken: Vec<Channel>,
}

#[derive(Debug, Default, Clone)]
struct QueueStats {
    len: usize,
    /// Keys of the entries, oldest first, to drop from when full.
    keys: std::collections::VecDeque<String>,
    dropped_pending: u64,
    dropped_total: u64,
}

/// While an alert matching `source` fires, the alerts matching `target` whose `equal` labels
/// have its values are held back from the notification channels, as silenced ones are (a
/// critical over the warning of the same thing, a probe down over the service behind it).
/// Selectors see an alert's labels with `alertname` (the rule) and `severity`.
#[derive(Debug, Clone)]
pub struct Inhibition {
    pub source: outpost_storage::Selector,
    pub target: outpost_storage::Selector,
    pub equal: Vec<String>,
}

/// An alert as inhibition selectors see it.
fn inhibition_key(
    rule: &str,
    severity: Severity,
    labels: &BTreeMap<String, String>,
) -> Option<SeriesKey> {
    let mut all: BTreeMap<String, String> = labels.clone();
    all.insert("alertname".into(), rule.to_string());
    all.entry("severity".into())
        .or_insert_with(|| severity.to_string());
    SeriesKey::new("alert", all).ok()
}

pub struct Engine {
    rules: Vec<Rule>,
    inhibitions: Vec<Inhibition>,
    recordings: Vec<Recording>,
    /// When each rule, then each recording, was last evaluated (for group intervals).
    last_round_ms: Vec<Option<i64>>,
    /// Each rule's, then each recording's, last evaluation error (PromQL rules).
    last_error: Vec<Option<String>>,
    windows: Windows,
    alerts: BTreeMap<(String, String), AlertRecord>,
    event_seq: u64,
    queue_seq: u64,
    running_since_ms: i64,
    options: EngineOptions,
    queues: HashMap<Channel, QueueStats>,
    pub silences: Silences,
    pub evaluations: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.rules.len())
            .field("alerts", &self.alerts.len())
            .field("event_seq", &self.event_seq)
            .finish()
    }
}

/// A topic-safe, stable name for a label set: `k=v` pairs in label order, joined by `,`, every
/// byte outside `A-Za-z0-9_.-` percent-encoded (so `/`, `+`, `#`, `,` and `=` inside values
/// cannot break the topic or the pairs); `_` for no labels.
pub fn instance_name(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "_".into();
    }
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        encode_into(&mut out, k);
        out.push('=');
        encode_into(&mut out, v);
    }
    out
}

fn encode_into(out: &mut String, text: &str) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A PromQL result's labels as a rule's output: the metric name dropped, the rule's labels
/// set over the series'.
fn output_labels(
    labels: &promql::Labels,
    rule_labels: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| *k != promql::METRIC_NAME)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    out.extend(rule_labels.clone());
    out
}

/// What one evaluation saw of an alert instance.
struct Observed {
    labels: BTreeMap<String, String>,
    value: Option<f64>,
    /// Whether the rule's condition holds.
    holds: bool,
}

/// What one evaluation does to an alert's state.
#[derive(Debug, PartialEq)]
enum Next {
    /// Nothing: an inactive alert stays so.
    Unchanged,
    /// A resolved alert old enough to be forgotten.
    Forget,
    /// Its bookkeeping moved on, and it may change state (escalation is a `Firing` again).
    Step(Option<State>, Reason),
}

impl AlertRecord {
    fn new(rule: &Rule, instance: String, labels: BTreeMap<String, String>, now_ms: i64) -> Self {
        AlertRecord {
            rule: rule.name.clone(),
            instance,
            labels,
            state: State::Inactive,
            severity: rule.severity,
            value: None,
            threshold: rule.threshold(),
            started_ms: None,
            fired_ms: None,
            resolved_ms: None,
            last_true_ms: None,
            stopped_ms: None,
            cooldown_until_ms: None,
            escalated: false,
            silenced: false,
            notified: false,
            last_notified_ms: None,
            event_seq: 0,
            changed_ms: now_ms,
            summary: String::new(),
            description: String::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// The lifecycle: a pure function of the record (its bookkeeping updated here), the rule,
/// whether the condition holds, and the time. The record's `state` itself is left for the
/// caller to set from the result.
fn next_state(record: &mut AlertRecord, rule: &Rule, holds: bool, now_ms: i64) -> Next {
    let mut transition = None;
    let mut reason = Reason::Transition;
    match record.state {
        State::Inactive | State::Resolved if holds => {
            // A firing soon after the previous resolve is a flap: the channels hear of it only
            // if it is still firing when the cooldown ends.
            record.cooldown_until_ms = record
                .resolved_ms
                .map(|at| at + rule.cooldown_ms)
                .filter(|until| rule.cooldown_ms > 0 && *until > now_ms);
            record.started_ms = Some(now_ms);
            record.fired_ms = None;
            record.resolved_ms = None;
            record.escalated = false;
            record.notified = false;
            record.severity = rule.severity;
            record.last_true_ms = Some(now_ms);
            record.stopped_ms = None;
            transition = Some(if rule.for_ms == 0 {
                State::Firing
            } else {
                State::Pending
            });
        }
        State::Inactive => return Next::Unchanged,
        State::Resolved => {
            let forget_after = FORGET_RESOLVED_MS.max(rule.cooldown_ms);
            let old = record
                .resolved_ms
                .is_none_or(|at| now_ms - at > forget_after);
            return if old { Next::Forget } else { Next::Unchanged };
        }
        State::Pending if holds => {
            record.last_true_ms = Some(now_ms);
            if now_ms - record.started_ms.unwrap_or(now_ms) >= rule.for_ms {
                transition = Some(State::Firing);
            }
        }
        State::Pending => transition = Some(State::Inactive),
        State::Firing => {
            if holds {
                record.last_true_ms = Some(now_ms);
                record.stopped_ms = None;
            } else if record.stopped_ms.is_none() {
                record.stopped_ms = Some(now_ms);
            }
            let kept_since = match rule.condition {
                Condition::Threshold(_) => record.last_true_ms,
                Condition::Expression(_) => record.stopped_ms,
            };
            let kept = kept_since.is_some_and(|t| now_ms - t < rule.keep_firing_for_ms);
            if !holds && !kept {
                transition = Some(State::Resolved);
            } else if !record.silenced
                && !record.escalated
                && rule
                    .escalate_after_ms
                    .is_some_and(|after| now_ms - record.fired_ms.unwrap_or(now_ms) >= after)
            {
                record.escalated = true;
                record.severity = record.severity.max(rule.escalate_to);
                transition = Some(State::Firing);
                reason = Reason::Escalation;
            }
        }
    }
    Next::Step(transition, reason)
}

/// Whether the notification channels hear of `record` now, and why: firings (once not
/// silenced and past any cooldown, which may be later than the transition), escalations,
/// reminders, and the resolve of what they were told.
fn notification(
    record: &AlertRecord,
    rule: &Rule,
    (transition, reason): (Option<State>, Reason),
    now_ms: i64,
) -> Option<Reason> {
    match record.state {
        State::Firing if record.silenced => None,
        State::Firing if reason == Reason::Escalation && transition.is_some() => {
            Some(Reason::Escalation)
        }
        State::Firing if !record.notified => record
            .cooldown_until_ms
            .is_none_or(|until| now_ms >= until)
            .then_some(Reason::Transition),
        State::Firing => rule
            .renotify_ms
            .filter(|every| now_ms - record.last_notified_ms.unwrap_or(now_ms) >= *every)
            .map(|_| Reason::Renotify),
        State::Resolved if transition.is_some() && record.notified => Some(Reason::Transition),
        _ => None,
    }
}

pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

impl Engine {
    /// Loads the engine's state from `store`. Alerts of rules that no longer exist are dropped,
    /// and their retained MQTT topics queued for clearing.
    pub fn open(
        store: &Store,
        rules: impl Into<RuleSet>,
        options: EngineOptions,
        silences: Silences,
        now_ms: i64,
    ) -> Result<Engine, outpost_storage::Error> {
        let counter = |key: EngineKey| -> Result<u64, outpost_storage::Error> {
            Ok(store
                .get(&key)?
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_le_bytes))
        };
        let RuleSet {
            alerting: rules,
            recording: recordings,
        } = rules.into();
        let items = rules.len() + recordings.len();
        let mut engine = Engine {
            windows: Windows::new(&rules, &recordings),
            inhibitions: Vec::new(),
            rules,
            recordings,
            last_round_ms: vec![None; items],
            last_error: vec![None; items],
            alerts: BTreeMap::new(),
            event_seq: counter(EngineKey::EventSeq)?,
            queue_seq: counter(EngineKey::QueueSeq)?,
            running_since_ms: now_ms,
            options,
            queues: HashMap::new(),
            silences,
            evaluations: 0,
        };
        let mut write = WriteBatch::default();
        for (key, value) in store.list(&EngineKey::Alerts)? {
            let Ok(record) = serde_json::from_slice::<AlertRecord>(&value) else {
                tracing::warn!(key, "dropping an alert state entry that does not parse");
                write.delete_state(StateTable::AlertState, key);
                continue;
            };
            if engine.rules.iter().any(|r| r.name == record.rule) {
                engine
                    .alerts
                    .insert((record.rule.clone(), record.instance.clone()), record);
            } else {
                // The rule is gone: nobody will resolve this alert, so clear its topic now.
                write.delete_state(StateTable::AlertState, key);
                if record.state == State::Firing {
                    if let Some(topic) = engine.state_topic(&record) {
                        engine.enqueue_mail(
                            &mut write,
                            Mail {
                                topic,
                                payload: String::new(),
                                retain: true,
                            },
                        );
                    }
                }
            }
        }
        let mut channels: Vec<Channel> = engine
            .options
            .channels
            .iter()
            .cloned()
            .map(Channel::Named)
            .collect();
        if engine.options.mqtt_base.is_some() {
            channels.push(Channel::Mqtt);
        }
        for channel in channels {
            let entries =
                store.state_list(StateTable::NotificationQueue, &channel.queue_prefix())?;
            let stats = engine.queues.entry(channel).or_default();
            stats.len += entries.len();
            for (key, _) in entries {
                stats.keys.push_back(key);
            }
        }
        if !write.is_empty() {
            store.write(write)?;
            store.sync()?;
        }
        Ok(engine)
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn set_inhibitions(&mut self, inhibitions: Vec<Inhibition>) {
        self.inhibitions = inhibitions;
    }

    /// Whether a firing alert other than `id` inhibits the alert `id` with these labels.
    fn inhibited(
        &self,
        id: &(String, String),
        severity: Severity,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        if self.inhibitions.is_empty() {
            return false;
        }
        let Some(target) = inhibition_key(&id.0, severity, labels) else {
            return false;
        };
        self.inhibitions
            .iter()
            .filter(|i| i.target.matches(&target))
            .any(|inhibition| {
                self.alerts.iter().any(|(other, record)| {
                    other != id
                        && record.state == State::Firing
                        && inhibition_key(&record.rule, record.severity, &record.labels)
                            .is_some_and(|source| {
                                inhibition.source.matches(&source)
                                    && inhibition
                                        .equal
                                        .iter()
                                        .all(|l| source.label(l) == target.label(l))
                            })
                })
            })
    }

    /// Whether an alert could inhibit others: such alerts are stepped first in a round, so
    /// that a critical and its warning that start together never let the warning through.
    fn may_inhibit(&self, rule: &Rule, labels: &BTreeMap<String, String>) -> bool {
        !self.inhibitions.is_empty()
            && inhibition_key(&rule.name, rule.severity, labels)
                .is_some_and(|key| self.inhibitions.iter().any(|i| i.source.matches(&key)))
    }

    pub fn recordings(&self) -> &[Recording] {
        &self.recordings
    }

    /// Rule `index`'s (rules, then recordings) last evaluation error, if it failed.
    pub fn last_error(&self, index: usize) -> Option<&str> {
        self.last_error.get(index)?.as_deref()
    }

    pub fn alerts(&self) -> impl Iterator<Item = &AlertRecord> {
        self.alerts.values()
    }

    pub fn dropped_total(&self) -> Vec<(Channel, u64)> {
        let mut out: Vec<(Channel, u64)> = self
            .queues
            .iter()
            .map(|(c, q)| (c.clone(), q.dropped_total))
            .collect();
        out.sort();
        out
    }

    pub fn queued(&self, channel: &Channel) -> usize {
        self.queues.get(channel).map_or(0, |q| q.len)
    }

    /// A delivered queue entry leaves the engine's count.
    pub fn dequeued(&mut self, channel: &Channel, key: &str) {
        if let Some(q) = self.queues.get_mut(channel) {
            if let Some(at) = q.keys.iter().position(|k| k == key) {
                q.keys.remove(at);
                q.len = q.len.saturating_sub(1);
            }
        }
    }

    pub fn observe(&mut self, key: &SeriesKey, ts: i64, value: f64) {
        self.windows.observe(key, ts, value);
    }

    /// Fills the windows from what the store holds, so that a restart does not forget the
    /// last minutes of data (a `for` in progress, an `absent` window).
    pub fn backfill(&mut self, store: &Store, now_ms: i64) -> Result<(), outpost_storage::Error> {
        let from = now_ms - self.windows.longest_window_ms();
        let selectors: Vec<outpost_storage::Selector> = self.windows.selectors().cloned().collect();
        let mut seen = std::collections::HashSet::new();
        for selector in selectors {
            for series in store.query_raw(&selector, from, now_ms)? {
                if !seen.insert(series.series.clone()) {
                    continue;
                }
                for (ts, v) in series.points {
                    self.windows.observe(&series.series, ts, v);
                }
            }
        }
        Ok(())
    }

    /// Where `data_start_ms` is the time from which data has been watched (the first sample of a
    /// replayed history, say), `absent` rules may judge windows that begin there.
    pub fn set_running_since(&mut self, data_start_ms: i64) {
        self.running_since_ms = data_start_ms;
    }

    fn state_topic(&self, record: &AlertRecord) -> Option<String> {
        self.options
            .mqtt_base
            .as_ref()
            .map(|base| format!("{base}/alerts/{}/{}", record.rule, record.instance))
    }

    fn events_topic(&self) -> Option<String> {
        self.options
            .mqtt_base
            .as_ref()
            .map(|base| format!("{base}/alerts/events"))
    }

    fn next_queue_key(&mut self, channel: &Channel) -> String {
        self.queue_seq += 1;
        QueueKey::Entry(channel, self.queue_seq).to_string()
    }

    /// Adds a queue entry, dropping the channel's oldest when it is full. Returns how many were
    /// dropped before this one since the last entry was added.
    fn enqueue(&mut self, write: &mut WriteBatch, channel: Channel, value: Vec<u8>, key: String) {
        let max = self.options.max_queued.max(1);
        let stats = self.queues.entry(channel.clone()).or_default();
        while stats.len >= max {
            let Some(oldest) = stats.keys.pop_front() else {
                break;
            };
            write.delete_state(StateTable::NotificationQueue, oldest);
            stats.len -= 1;
            stats.dropped_pending += 1;
            stats.dropped_total += 1;
            tracing::error!(
                ?channel,
                "notification queue full: dropped its oldest entry"
            );
        }
        stats.len += 1;
        stats.keys.push_back(key.clone());
        write.put_state(StateTable::NotificationQueue, key, value);
    }

    fn enqueue_mail(&mut self, write: &mut WriteBatch, mail: Mail) {
        let key = self.next_queue_key(&Channel::Mqtt);
        let value = serde_json::to_vec(&mail).expect("mail serializes");
        self.enqueue(write, Channel::Mqtt, value, key);
    }

    fn take_dropped(&mut self, channel: &Channel) -> u64 {
        self.queues
            .get_mut(channel)
            .map_or(0, |q| std::mem::take(&mut q.dropped_pending))
    }

    fn message(&self, record: &AlertRecord, reason: Reason) -> AlertMessage {
        AlertMessage {
            device: self.options.device.clone(),
            rule: record.rule.clone(),
            instance: record.instance.clone(),
            severity: record.severity,
            state: record.state,
            value: record.value,
            threshold: record.threshold,
            labels: record.labels.clone(),
            annotations: record.annotations.clone(),
            started_at: record.started_ms.map(rfc3339),
            fired_at: record.fired_ms.map(rfc3339),
            resolved_at: record.resolved_ms.map(rfc3339),
            at: rfc3339(record.changed_ms),
            summary: record.summary.clone(),
            description: record.description.clone(),
            event_seq: record.event_seq,
            silenced: record.silenced,
            escalated: record.escalated,
            reason,
            dropped_before: 0,
        }
    }

    /// Evaluates every rule at `now_ms` and applies the transitions. The caller writes `write`
    /// (state, history and queue entries together) and makes it durable before delivering,
    /// with the recorded samples of `Outcome::recorded`.
    pub fn evaluate(&mut self, now_ms: i64, write: &mut WriteBatch) -> Outcome {
        self.evaluations += 1;
        let mut outcome = Outcome::default();
        // Recordings first, so that alerts on recorded series see this round's values.
        let recordings = std::mem::take(&mut self.recordings);
        for (k, recording) in recordings.iter().enumerate() {
            let item = self.rules.len() + k;
            if self.due(item, &recording.expression, now_ms) {
                self.record(item, recording, now_ms, &mut outcome);
            }
        }
        self.recordings = recordings;
        let rules = std::mem::take(&mut self.rules);
        let mut present: std::collections::HashSet<(String, String)> = Default::default();
        let mut steps: Vec<(usize, (String, String), Observed)> = Vec::new();
        for (r, rule) in rules.iter().enumerate() {
            let observed = match &rule.condition {
                Condition::Threshold(_) => self.threshold_alerts(r, rule, now_ms),
                Condition::Expression(e) if self.due(r, e, now_ms) => {
                    self.expression_alerts(r, rule, e, now_ms)
                }
                Condition::Expression(_) => None,
            };
            let Some(observed) = observed else {
                // Not evaluated this round (a group interval, or an error): its alerts stay as
                // they are, as in Prometheus.
                present.extend(
                    self.alerts
                        .iter()
                        .filter(|(id, a)| id.0 == rule.name && rule.owns(&a.labels))
                        .map(|(id, _)| id.clone()),
                );
                continue;
            };
            for observed in observed {
                let id = (rule.name.clone(), instance_name(&observed.labels));
                present.insert(id.clone());
                steps.push((r, id, observed));
            }
        }
        // Possible inhibitors first (a stable sort keeps the rules' order otherwise). Each
        // step's answer is worked out once: it builds a key, and a hub steps every device.
        steps
            .sort_by_cached_key(|(r, _, observed)| !self.may_inhibit(&rules[*r], &observed.labels));
        for (r, id, observed) in steps {
            self.step(&rules[r], id, observed, now_ms, (write, &mut outcome));
        }
        // Alerts whose series left every window: their condition no longer holds.
        let gone: Vec<(String, String)> = self
            .alerts
            .keys()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            let record = &self.alerts[&id];
            let Some(rule) = rules
                .iter()
                .find(|rule| rule.name == id.0 && rule.owns(&record.labels))
            else {
                continue;
            };
            let observed = Observed {
                labels: record.labels.clone(),
                value: record.value,
                holds: false,
            };
            self.step(rule, id, observed, now_ms, (write, &mut outcome));
        }
        self.rules = rules;
        outcome.woken.sort();
        outcome.woken.dedup();
        outcome
    }

    /// Whether an expression's group interval has come round since its last evaluation
    /// (evaluations fall on the first round at or after each multiple of the interval).
    fn due(&mut self, item: usize, expression: &Expression, now_ms: i64) -> bool {
        let last = self.last_round_ms[item];
        let due = match (expression.interval_ms, last) {
            (None, _) | (_, None) => true,
            (Some(every), Some(last)) => now_ms.div_euclid(every) > last.div_euclid(every),
        };
        if due {
            self.last_round_ms[item] = Some(now_ms);
        }
        due
    }

    /// A threshold rule's alert instances at `now_ms`.
    fn threshold_alerts(&self, r: usize, rule: &Rule, now_ms: i64) -> Option<Vec<Observed>> {
        let Condition::Threshold(condition) = &rule.condition else {
            return None;
        };
        let evaluations = self
            .windows
            .evaluate(r, condition, now_ms, self.running_since_ms);
        let mut out = Vec::with_capacity(evaluations.len());
        for evaluation in evaluations {
            let mut labels = evaluation.labels;
            for (k, v) in &rule.labels {
                labels.insert(k.clone(), v.clone());
            }
            let firing = self
                .alerts
                .get(&(rule.name.clone(), instance_name(&labels)))
                .is_some_and(|a| a.state == State::Firing);
            let holds = if condition.reduce == super::rules::Reducer::Absent {
                evaluation.absent
            } else {
                evaluation.gate
                    && evaluation
                        .value
                        .is_some_and(|v| condition.condition(v, firing))
            };
            out.push(Observed {
                labels,
                value: evaluation.value,
                holds,
            });
        }
        Some(out)
    }

    /// Evaluates item `item`'s expression at `now_ms` over the windows; an error is kept for
    /// the rules API and logged when it first appears or changes.
    fn run_expression(
        &mut self,
        item: usize,
        name: &str,
        expression: &Expression,
        now_ms: i64,
    ) -> Option<Vec<promql::Sample>> {
        let result = promql::instant_expr(
            &self.windows.source(item),
            &expression.expr,
            now_ms,
            &promql::Options::default(),
            None,
        )
        .and_then(|answer| match answer.value {
            promql::Value::Vector(samples) => Ok(samples),
            promql::Value::Scalar { t, v } => Ok(vec![promql::Sample {
                labels: promql::Labels::default(),
                t,
                v,
            }]),
            other => Err(promql::Error::Execution(format!(
                "the expression gives a {}, not a vector",
                other.type_name()
            ))),
        })
        .and_then(|samples| {
            if expression.limit > 0 && samples.len() > expression.limit {
                return Err(promql::Error::Execution(format!(
                    "{} series, more than the group's limit of {}",
                    samples.len(),
                    expression.limit
                )));
            }
            Ok(samples)
        });
        match result {
            Ok(samples) => {
                self.last_error[item] = None;
                Some(samples)
            }
            Err(error) => {
                let text = error.to_string();
                if self.last_error[item].as_deref() != Some(text.as_str()) {
                    tracing::warn!(rule = name, "evaluating {:?}: {text}", expression.text);
                }
                self.last_error[item] = Some(text);
                None
            }
        }
    }

    /// A PromQL rule's alert instances: every series of the result holds, with its labels
    /// (less the metric name) and the rule's.
    fn expression_alerts(
        &mut self,
        r: usize,
        rule: &Rule,
        expression: &Expression,
        now_ms: i64,
    ) -> Option<Vec<Observed>> {
        let samples = self.run_expression(r, &rule.name, expression, now_ms)?;
        let mut out = Vec::with_capacity(samples.len());
        let mut seen = std::collections::HashSet::new();
        for sample in samples {
            let labels = output_labels(&sample.labels, &rule.labels);
            if !seen.insert(instance_name(&labels)) {
                let text =
                    "vector contains metrics with the same labelset after applying alert labels";
                if self.last_error[r].as_deref() != Some(text) {
                    tracing::warn!(rule = %rule.name, "{text}");
                }
                self.last_error[r] = Some(text.into());
                return None;
            }
            out.push(Observed {
                labels,
                value: Some(sample.v),
                holds: true,
            });
        }
        Some(out)
    }

    /// A recording rule: its result becomes samples of `record` at `now_ms`, seen at once by
    /// the rules after it and written by the caller with the alert state.
    fn record(&mut self, item: usize, recording: &Recording, now_ms: i64, outcome: &mut Outcome) {
        let Some(samples) =
            self.run_expression(item, &recording.record, &recording.expression, now_ms)
        else {
            return;
        };
        for sample in samples {
            let labels = output_labels(&sample.labels, &recording.labels);
            match SeriesKey::new(recording.record.clone(), labels) {
                Ok(key) => {
                    self.windows.observe(&key, now_ms, sample.v);
                    outcome.recorded.push((key, now_ms, sample.v));
                }
                Err(error) => {
                    tracing::warn!(record = %recording.record, "{error}");
                }
            }
        }
    }

    /// Records a transition (or a change of `silenced`) of `record`: a new event number, the
    /// history, the retained state and the events topic.
    fn publish(
        &mut self,
        rule: &Rule,
        record: &mut AlertRecord,
        reason: Reason,
        now_ms: i64,
        write: &mut WriteBatch,
        outcome: &mut Outcome,
    ) {
        let state = record.state;
        self.event_seq += 1;
        record.event_seq = self.event_seq;
        record.changed_ms = now_ms;
        let severity = record.severity.to_string();
        // A Prometheus rule's templates see the series' labels, as in Prometheus.
        let series_labels: BTreeMap<String, String>;
        let labels = match rule.condition {
            Condition::Expression(_) => {
                series_labels = record
                    .labels
                    .iter()
                    .filter(|(k, _)| !rule.labels.contains_key(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                &series_labels
            }
            Condition::Threshold(_) => &record.labels,
        };
        let context = Context {
            value: record.value,
            threshold: rule.threshold(),
            rule: &rule.name,
            severity: &severity,
            device: &self.options.device,
            state: state.as_str(),
            labels,
            ..Context::default()
        };
        // The default summary ends in the labels, which may be none.
        record.summary = rule.summary.render(&context).trim_end().to_string();
        record.description = rule.description.render(&context);
        record.annotations = rule
            .annotations
            .iter()
            .map(|(k, t)| (k.clone(), t.render(&context)))
            .collect();
        let mut message = self.message(record, reason);
        let json = serde_json::to_string(&message).expect("message serializes");
        write.put(
            &EngineKey::History(self.event_seq),
            json.clone().into_bytes(),
        );
        if self.event_seq > HISTORY_LEN {
            write.remove(&EngineKey::History(self.event_seq - HISTORY_LEN));
        }
        write.put(&EngineKey::EventSeq, self.event_seq.to_le_bytes().to_vec());
        if let (Some(events), Some(topic)) = (self.events_topic(), self.state_topic(record)) {
            // The retained state: present while firing, cleared when it ends.
            let retained = match state {
                State::Firing => Some(json.clone()),
                State::Resolved => Some(String::new()),
                _ => None,
            };
            if let Some(payload) = retained {
                self.enqueue_mail(
                    write,
                    Mail {
                        topic,
                        payload,
                        retain: true,
                    },
                );
            }
            message.dropped_before = self.take_dropped(&Channel::Mqtt);
            let payload = serde_json::to_string(&message).expect("message serializes");
            self.enqueue_mail(
                write,
                Mail {
                    topic: events,
                    payload,
                    retain: false,
                },
            );
            outcome.woken.push(Channel::Mqtt);
        }
        outcome.transitions.push(message);
    }

    /// One evaluation of one alert instance: its next state (`next_state`), what is
    /// published and told (`notification`), and what is stored.
    fn step(
        &mut self,
        rule: &Rule,
        (id, labels): (String, String),
        observed: Observed,
        now_ms: i64,
        (write, outcome): (&mut WriteBatch, &mut Outcome),
    ) {
        let id = (id, labels);
        let mut record = match self.alerts.get(&id) {
            Some(record) => record.clone(),
            None if !observed.holds => return,
            None => AlertRecord::new(rule, id.1.clone(), observed.labels.clone(), now_ms),
        };
        let before = record.clone();
        record.value = observed.value;
        record.threshold = rule.threshold();
        record.silenced = self.silences.silenced(&rule.name, &record.labels, now_ms)
            || self.inhibited(&id, record.severity, &record.labels);
        let (transition, reason) = match next_state(&mut record, rule, observed.holds, now_ms) {
            Next::Unchanged => return,
            Next::Forget => {
                self.alerts.remove(&id);
                write.remove(&EngineKey::Alert(&id));
                return;
            }
            Next::Step(transition, reason) => (transition, reason),
        };
        // A silence beginning or ending is news to whoever shows the alert (the retained state
        // and the hub), though the state itself did not change.
        let silence_changed = transition.is_none()
            && record.silenced != before.silenced
            && matches!(record.state, State::Pending | State::Firing);
        if let Some(state) = transition {
            record.state = state;
            match state {
                State::Firing if before.state != State::Firing => record.fired_ms = Some(now_ms),
                State::Resolved => record.resolved_ms = Some(now_ms),
                _ => {}
            }
        }
        if transition.is_some() || silence_changed {
            let reason = if silence_changed {
                Reason::Silence
            } else {
                reason
            };
            self.publish(rule, &mut record, reason, now_ms, write, outcome);
        }
        if let Some(reason) = notification(&record, rule, (transition, reason), now_ms) {
            self.notify(rule, &mut record, reason, now_ms, (write, outcome));
        }
        if record.state == State::Inactive {
            self.alerts.remove(&id);
            write.remove(&EngineKey::Alert(&id));
            return;
        }
        self.store_record(&id, &record, before, write);
        self.alerts.insert(id, record);
    }

    /// Queues a notification of `record` for every channel the rule names.
    fn notify(
        &mut self,
        rule: &Rule,
        record: &mut AlertRecord,
        reason: Reason,
        now_ms: i64,
        (write, outcome): (&mut WriteBatch, &mut Outcome),
    ) {
        record.notified = record.state == State::Firing;
        record.last_notified_ms = Some(now_ms);
        let channels: Vec<String> = self
            .options
            .channels
            .iter()
            .filter(|c| rule.notify.as_ref().is_none_or(|n| n.contains(c)))
            .cloned()
            .collect();
        for name in channels {
            let channel = Channel::Named(name);
            let mut message = self.message(record, reason);
            // A reminder happens now; a firing or resolve told late (after a cooldown or a
            // silence) keeps the time it happened, as on MQTT.
            message.at = rfc3339(match (reason, record.state) {
                (Reason::Transition, State::Firing) => record.fired_ms.unwrap_or(now_ms),
                (Reason::Transition, State::Resolved) => record.resolved_ms.unwrap_or(now_ms),
                _ => now_ms,
            });
            message.dropped_before = self.take_dropped(&channel);
            let key = self.next_queue_key(&channel);
            let value = serde_json::to_vec(&message).expect("message serializes");
            self.enqueue(write, channel.clone(), value, key);
            outcome.woken.push(channel);
        }
    }

    /// Writes `record` unless only its value and last true evaluation changed: those change
    /// every tick and alone are not worth a write each second.
    fn store_record(
        &self,
        id: &(String, String),
        record: &AlertRecord,
        before: AlertRecord,
        write: &mut WriteBatch,
    ) {
        let unchanged = {
            let mut a = record.clone();
            let mut b = before;
            (a.value, a.last_true_ms) = (None, None);
            (b.value, b.last_true_ms) = (None, None);
            a == b
        };
        if !unchanged {
            let value = serde_json::to_vec(record).expect("record serializes");
            write.put(&EngineKey::Alert(id), value);
            write.put(&EngineKey::QueueSeq, self.queue_seq.to_le_bytes().to_vec());
        }
    }

    /// Queues `message` (another engine's: a device's alert at the hub) for the named channel,
    /// in `write`, with `extra` fields for the channel beside the message's; false when the
    /// engine has no such channel.
    pub fn enqueue_for(
        &mut self,
        channel: &str,
        message: &AlertMessage,
        extra: &[(&str, serde_json::Value)],
        write: &mut WriteBatch,
    ) -> bool {
        if !self.options.channels.iter().any(|c| c == channel) {
            return false;
        }
        let channel = Channel::Named(channel.to_string());
        let mut message = message.clone();
        message.dropped_before = self.take_dropped(&channel);
        let key = self.next_queue_key(&channel);
        let mut entry = serde_json::to_value(&message).expect("message serializes");
        for (name, value) in extra {
            entry[*name] = value.clone();
        }
        let value = serde_json::to_vec(&entry).expect("message serializes");
        self.enqueue(write, channel, value, key);
        write.put(&EngineKey::QueueSeq, self.queue_seq.to_le_bytes().to_vec());
        true
    }

    /// Every firing alert that channel `channel` would be told of (not silenced, of a rule
    /// that notifies it), as its last message: what a receiver that forgets alerts not sent
    /// again (Alertmanager) is sent every minute.
    pub fn firing_for(&self, channel: &str) -> Vec<AlertMessage> {
        self.alerts
            .values()
            .filter(|r| r.state == State::Firing && !r.silenced && r.notified)
            .filter(|r| {
                self.rules.iter().any(|rule| {
                    rule.name == r.rule
                        && rule.owns(&r.labels)
                        && rule
                            .notify
                            .as_ref()
                            .is_none_or(|n| n.iter().any(|c| c == channel))
                })
            })
            .map(|r| self.message(r, Reason::Renotify))
            .collect()
    }

    /// The retained state of every firing alert, to publish again after each connect (some
    /// brokers lose retained messages when they restart).
    pub fn retained_now(&self) -> Vec<Mail> {
        let mut out = Vec::new();
        for record in self.alerts.values().filter(|r| r.state == State::Firing) {
            if let Some(topic) = self.state_topic(record) {
                let message = self.message(record, Reason::Transition);
                out.push(Mail {
                    topic,
                    payload: serde_json::to_string(&message).expect("message serializes"),
                    retain: true,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::rules::parse;
    use outpost_storage::Options;
    use std::path::Path;

    /// The lifecycle alone, without a store: pending for `for`, firing, kept firing for
    /// `keep_firing_for`, resolved, and a flap within the cooldown told only after it.
    #[test]
    fn the_lifecycle_is_a_function_of_record_rule_and_time() {
        let rules = parse(
            Path::new("t.toml"),
            "[[rule]]\nname = \"r\"\nselect = 'm'\nthreshold = 1.0\nfor = \"10s\"\nkeep_firing_for = \"5s\"\ncooldown = \"1m\"\n",
        )
        .unwrap();
        let rule = &rules[0];
        let mut record = AlertRecord::new(rule, "_".into(), BTreeMap::new(), 0);
        let at = |record: &mut AlertRecord, holds: bool, now: i64| {
            let next = next_state(record, rule, holds, now);
            if let Next::Step(Some(state), _) = next {
                record.state = state;
                match state {
                    State::Firing => record.fired_ms = Some(now),
                    State::Resolved => record.resolved_ms = Some(now),
                    _ => {}
                }
            }
            next
        };
        assert_eq!(at(&mut record, false, 0), Next::Unchanged);
        assert_eq!(
            at(&mut record, true, 1_000),
            Next::Step(Some(State::Pending), Reason::Transition)
        );
        assert_eq!(
            at(&mut record, true, 10_999),
            Next::Step(None, Reason::Transition)
        );
        assert_eq!(
            at(&mut record, true, 11_000),
            Next::Step(Some(State::Firing), Reason::Transition)
        );
        assert_eq!(
            notification(
                &record,
                rule,
                (Some(State::Firing), Reason::Transition),
                11_000
            ),
            Some(Reason::Transition)
        );
        record.notified = true;
        // Kept firing for 5 s after the condition stops holding.
        assert_eq!(
            at(&mut record, false, 15_000),
            Next::Step(None, Reason::Transition)
        );
        assert_eq!(
            at(&mut record, false, 16_000),
            Next::Step(Some(State::Resolved), Reason::Transition)
        );
        // Firing again within the cooldown: not told until it ends, still firing.
        at(&mut record, true, 20_000);
        at(&mut record, true, 30_000);
        assert_eq!(record.state, State::Firing);
        record.notified = false;
        assert_eq!(
            notification(&record, rule, (None, Reason::Transition), 30_000),
            None
        );
        assert_eq!(
            notification(&record, rule, (None, Reason::Transition), 76_000),
            Some(Reason::Transition)
        );
        // A resolved alert is forgotten once old enough.
        at(&mut record, false, 100_000);
        assert_eq!(record.state, State::Resolved);
        assert_eq!(
            at(
                &mut record,
                false,
                100_000 + FORGET_RESOLVED_MS.max(60_000) + 1
            ),
            Next::Forget
        );
    }

    struct Rig {
        _dir: tempfile::TempDir,
        store: Store,
        engine: Engine,
    }

    fn options() -> EngineOptions {
        EngineOptions {
            device: "dev-1".into(),
            mqtt_base: Some("outpost/v1/lab/dev-1".into()),
            channels: vec!["hook".into()],
            max_queued: 100,
        }
    }

    fn rig(rules: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("a.redb"), Options::default()).unwrap();
        let rules = parse(Path::new("t.toml"), rules).unwrap();
        let engine = Engine::open(&store, rules, options(), Silences::default(), 0).unwrap();
        Rig {
            _dir: dir,
            store,
            engine,
        }
    }

    impl Rig {
        /// One second: a sample of `value` for each key, then an evaluation.
        fn tick(&mut self, t: i64, samples: &[(&str, f64)]) -> Vec<(String, State, Reason)> {
            for (key, value) in samples {
                self.engine
                    .observe(&SeriesKey::parse(key).unwrap(), t * 1000, *value);
            }
            let mut write = WriteBatch::default();
            let outcome = self.engine.evaluate(t * 1000, &mut write);
            self.store.write(write).unwrap();
            outcome
                .transitions
                .into_iter()
                .map(|m| (m.instance, m.state, m.reason))
                .collect()
        }

        /// A silence of rule `up` from the epoch to `ends_ms`, stored.
        fn silence_up_until(&mut self, ends_ms: i64) {
            let mut write = WriteBatch::default();
            self.engine
                .silences
                .add(
                    super::super::schedule::Silence {
                        id: "s1".into(),
                        matcher: r#"{alertname="up"}"#.into(),
                        starts_ms: 0,
                        ends_ms,
                        created_by: "test".into(),
                        comment: String::new(),
                    },
                    &mut write,
                )
                .unwrap();
            self.store.write(write).unwrap();
        }

        fn queue(&self, prefix: &str) -> Vec<serde_json::Value> {
            self.store
                .state_list(StateTable::NotificationQueue, prefix)
                .unwrap()
                .into_iter()
                .map(|(_, v)| serde_json::from_slice(&v).unwrap())
                .collect()
        }

        fn reopen(self) -> Rig {
            let Rig {
                _dir,
                store,
                engine,
                ..
            } = self;
            let rules = engine.rules.clone();
            let path = store.path().to_path_buf();
            store.close().unwrap();
            let store = Store::open(path, Options::default()).unwrap();
            let engine = Engine::open(&store, rules, options(), Silences::default(), 0).unwrap();
            Rig {
                _dir,
                store,
                engine,
            }
        }
    }

    const HOT: &str = r#"
[[rule]]
name = "hot"
select = "temp"
threshold = 80
clear_threshold = 75
for = "3s"
summary = "{{labels.zone}} at {{value}}"
"#;

    #[test]
    fn pending_fires_after_for_and_resolves_with_hysteresis() {
        let mut rig = rig(HOT);
        let key = r#"temp{zone="gpu"}"#;
        assert!(rig.tick(1, &[(key, 70.0)]).is_empty());
        let t = rig.tick(2, &[(key, 85.0)]);
        assert_eq!(
            t,
            vec![("zone=gpu".into(), State::Pending, Reason::Transition)]
        );
        assert!(rig.tick(3, &[(key, 85.0)]).is_empty());
        assert!(rig.tick(4, &[(key, 85.0)]).is_empty());
        let t = rig.tick(5, &[(key, 81.0)]);
        assert_eq!(t[0].1, State::Firing, "3 s after pending began");
        assert!(
            rig.tick(6, &[(key, 78.0)]).is_empty(),
            "above the clear threshold"
        );
        assert_eq!(rig.tick(7, &[(key, 74.0)])[0].1, State::Resolved);
        // A pending that never fires ends quietly as inactive.
        assert_eq!(rig.tick(8, &[(key, 90.0)])[0].1, State::Pending);
        assert_eq!(rig.tick(9, &[(key, 60.0)])[0].1, State::Inactive);

        let mqtt = rig.queue("m/");
        let topics: Vec<(String, bool, bool)> = mqtt
            .iter()
            .map(|m| {
                (
                    m["topic"].as_str().unwrap().to_string(),
                    m["retain"].as_bool().unwrap(),
                    m["payload"].as_str().unwrap().is_empty(),
                )
            })
            .collect();
        let state = "outpost/v1/lab/dev-1/alerts/hot/zone=gpu".to_string();
        let events = "outpost/v1/lab/dev-1/alerts/events".to_string();
        assert_eq!(
            topics,
            vec![
                (events.clone(), false, false), // pending
                (state.clone(), true, false),   // firing, retained
                (events.clone(), false, false),
                (state.clone(), true, true), // resolved: retained cleared
                (events.clone(), false, false),
                (events.clone(), false, false), // pending
                (events.clone(), false, false), // inactive
            ]
        );
        let seqs: Vec<u64> = mqtt
            .iter()
            .filter(|m| !m["retain"].as_bool().unwrap())
            .map(|m| {
                let payload: serde_json::Value =
                    serde_json::from_str(m["payload"].as_str().unwrap()).unwrap();
                payload["event_seq"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        let firing: serde_json::Value =
            serde_json::from_str(mqtt[1]["payload"].as_str().unwrap()).unwrap();
        assert_eq!(firing["summary"], "gpu at 81");
        assert_eq!(firing["state"], "firing");
        assert_eq!(firing["value"], 81.0);
        assert_eq!(firing["started_at"], "1970-01-01T00:00:02Z");
        // The channel heard of the firing and its resolve, not of the pending ones.
        let hook: Vec<String> = rig
            .queue("n/hook/")
            .iter()
            .map(|m| m["state"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(hook, ["firing", "resolved"]);
    }

    #[test]
    fn a_restart_keeps_a_firing_alert_without_a_second_firing_and_still_resolves() {
        let mut rig = rig(HOT);
        let key = r#"temp{zone="cpu"}"#;
        for t in 1..=5 {
            rig.tick(t, &[(key, 90.0)]);
        }
        assert_eq!(rig.engine.alerts().next().unwrap().state, State::Firing);
        let mut rig = rig.reopen();
        assert!(
            rig.tick(6, &[(key, 90.0)]).is_empty(),
            "still firing, no new event"
        );
        let t = rig.tick(7, &[(key, 50.0)]);
        assert_eq!(t[0].1, State::Resolved);
        let events: Vec<u64> = rig
            .queue("m/")
            .iter()
            .filter(|m| !m["retain"].as_bool().unwrap())
            .map(|m| {
                serde_json::from_str::<serde_json::Value>(m["payload"].as_str().unwrap()).unwrap()
                    ["event_seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            events,
            vec![1, 2, 3],
            "pending, firing, resolved: numbering went on"
        );
    }

    #[test]
    fn gone_rules_clear_their_retained_topics_at_start() {
        let mut rig = rig(HOT);
        for t in 1..=5 {
            rig.tick(t, &[("temp", 90.0)]);
        }
        let Rig {
            _dir,
            store,
            engine,
            ..
        } = rig;
        drop(engine);
        let other = parse(
            Path::new("t.toml"),
            "[[rule]]\nname = \"other\"\nselect = \"x\"\nthreshold = 1\n",
        )
        .unwrap();
        let before = store
            .state_list(StateTable::NotificationQueue, "m/")
            .unwrap()
            .len();
        let engine = Engine::open(&store, other, options(), Silences::default(), 0).unwrap();
        assert_eq!(engine.alerts().count(), 0);
        let queue = store
            .state_list(StateTable::NotificationQueue, "m/")
            .unwrap();
        assert_eq!(queue.len(), before + 1);
        let last: Mail = serde_json::from_slice(&queue.last().unwrap().1).unwrap();
        assert_eq!(last.topic, "outpost/v1/lab/dev-1/alerts/hot/_");
        assert!(last.retain && last.payload.is_empty());
    }

    const PROMETHEUS_RULES: &str = r#"
groups:
  - name: busy
    rules:
      - record: job:busy:max
        expr: max without (core) (busy)
      - alert: Busy
        expr: job:busy:max > 0.8
        for: 2s
        keep_firing_for: 2s
        labels: {severity: page}
        annotations:
          summary: "busy at {{ $value | humanizePercentage }}"
          runbook_url: "https://runbooks.example/{{ \"Busy\" | toLower }}"
      - alert: Twice
        expr: '{__name__=~"busy|idle", core="0"}'
  - name: slow
    interval: 10s
    rules:
      - alert: Slow
        expr: busy{core="0"} > 0.5
"#;

    #[test]
    fn prometheus_rules_share_the_lifecycle_with_their_own_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("a.redb"), Options::default()).unwrap();
        let parsed = super::super::promrules::parse(Path::new("t.yml"), PROMETHEUS_RULES).unwrap();
        let set = RuleSet {
            alerting: parsed.rules,
            recording: parsed.recordings,
        };
        let mut engine = Engine::open(&store, set, options(), Silences::default(), 0).unwrap();
        let mut recorded = Vec::new();
        let mut tick = |t: i64, core0: f64| {
            for (key, v) in [
                (r#"busy{core="0"}"#, core0),
                (r#"busy{core="1"}"#, 0.1),
                (r#"idle{core="0"}"#, 1.0 - core0),
            ] {
                engine.observe(&SeriesKey::parse(key).unwrap(), t * 1000, v);
            }
            let mut write = WriteBatch::default();
            let outcome = engine.evaluate(t * 1000, &mut write);
            store.write(write).unwrap();
            recorded.extend(outcome.recorded);
            outcome
                .transitions
                .into_iter()
                .map(|m| (t, m.rule.clone(), m.state, m))
                .collect::<Vec<_>>()
        };
        let first = tick(1, 0.9);
        let states: Vec<(&str, State)> = first.iter().map(|m| (m.1.as_str(), m.2)).collect();
        assert_eq!(states, [("Busy", State::Pending), ("Slow", State::Firing)]);
        assert!(tick(2, 0.9).is_empty());
        let fired = tick(3, 0.95);
        assert_eq!((fired[0].1.as_str(), fired[0].2), ("Busy", State::Firing));
        let message = &fired[0].3;
        assert_eq!(message.summary, "busy at 95%");
        assert_eq!(message.threshold, None);
        assert_eq!(message.severity, Severity::Critical);
        assert_eq!(
            message.labels.get("severity").map(String::as_str),
            Some("page")
        );
        assert_eq!(
            message.annotations.get("runbook_url").map(String::as_str),
            Some("https://runbooks.example/busy")
        );
        // keep_firing_for counts from the first evaluation without a result (4 s), as in
        // Prometheus; Slow's group is not due again before 10 s.
        assert!(tick(4, 0.1).is_empty());
        assert!(tick(5, 0.1).is_empty());
        let resolved = tick(6, 0.1);
        assert_eq!(
            (resolved[0].1.as_str(), resolved[0].2),
            ("Busy", State::Resolved)
        );
        for t in 7..10 {
            assert!(tick(t, 0.1).is_empty());
        }
        let slow = tick(10, 0.1);
        assert_eq!((slow[0].1.as_str(), slow[0].2), ("Slow", State::Resolved));
        // The recording wrote one sample a round, named and labelled as Prometheus would.
        assert_eq!(recorded.len(), 10);
        assert_eq!(recorded[0].0.to_string(), "job:busy:max");
        assert_eq!((recorded[2].1, recorded[2].2), (3000, 0.95));
        // Two series with one label set once the name is gone: an error, no alert.
        let twice = engine
            .rules()
            .iter()
            .position(|r| r.name == "Twice")
            .unwrap();
        assert!(engine.last_error(twice).unwrap().contains("same labelset"));
        assert!(!engine.alerts().any(|a| a.rule == "Twice"));
    }

    #[test]
    fn a_critical_holds_back_the_warning_of_the_same_thing_until_it_resolves() {
        let mut rig = rig(r#"
[[rule]]
name = "hot"
select = "temp"
threshold = 80
[[rule]]
name = "very_hot"
select = "temp"
threshold = 90
severity = "critical"
"#);
        let selector = |t: &str| outpost_storage::Selector::parse(t).unwrap();
        rig.engine.set_inhibitions(vec![Inhibition {
            source: selector(r#"{severity="critical"}"#),
            target: selector(r#"{severity="warning"}"#),
            equal: vec!["zone".into()],
        }]);
        let told = |rig: &Rig| -> Vec<(String, String)> {
            rig.queue("n/hook/")
                .iter()
                .map(|m| {
                    (
                        m["rule"].as_str().unwrap().into(),
                        m["state"].as_str().unwrap().into(),
                    )
                })
                .collect()
        };
        // Both start in one round (the warning is a later rule): the warning is held back.
        let gpu = r#"temp{zone="gpu"}"#;
        let states = rig.tick(1, &[(gpu, 95.0)]);
        assert_eq!(states.len(), 2, "both fire, visibly: {states:?}");
        assert_eq!(told(&rig), [("very_hot".to_string(), "firing".to_string())]);
        // Another zone's warning is not under that critical.
        rig.tick(2, &[(gpu, 95.0), (r#"temp{zone="cpu"}"#, 85.0)]);
        assert_eq!(told(&rig).len(), 2);
        assert_eq!(told(&rig)[1].0, "hot");
        // The critical resolves with the warning still firing: now the warning is told.
        rig.tick(3, &[(gpu, 85.0), (r#"temp{zone="cpu"}"#, 85.0)]);
        let after: Vec<(String, String)> = told(&rig).into_iter().skip(2).collect();
        assert_eq!(
            after,
            [
                ("very_hot".to_string(), "resolved".to_string()),
                ("hot".to_string(), "firing".to_string())
            ]
        );
    }

    #[test]
    fn keep_firing_for_cooldown_renotify_and_escalation() {
        let mut rig = rig(r#"
[[rule]]
name = "flappy"
select = "v"
threshold = 1
keep_firing_for = "2s"
cooldown = "10s"
renotify = "1m"
escalate_after = "2m"
"#);
        let hook = |rig: &Rig| -> Vec<(String, String, String)> {
            rig.queue("n/hook/")
                .iter()
                .map(|m| {
                    (
                        m["state"].as_str().unwrap().to_string(),
                        m["reason"].as_str().unwrap().to_string(),
                        m["severity"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        };
        assert_eq!(rig.tick(1, &[("v", 5.0)])[0].1, State::Firing);
        let t = rig.tick(2, &[("v", 0.0)]);
        assert!(t.is_empty(), "kept firing: {t:?}");
        assert_eq!(
            rig.tick(3, &[("v", 0.0)])[0].1,
            State::Resolved,
            "2 s after it last held"
        );
        // A flap within the cooldown: published on MQTT, not sent to the channel...
        assert_eq!(rig.tick(6, &[("v", 5.0)])[0].1, State::Firing);
        assert_eq!(hook(&rig).len(), 2);
        for t in 7..13 {
            rig.tick(t, &[("v", 5.0)]);
        }
        assert_eq!(hook(&rig).len(), 2);
        // ...until the cooldown (resolve at 3 s + 10 s) ends with it still firing.
        rig.tick(13, &[("v", 5.0)]);
        assert_eq!(hook(&rig).len(), 3);
        for t in 14..=73 {
            rig.tick(t, &[("v", 5.0)]);
        }
        assert_eq!(hook(&rig)[3].1, "renotify", "a minute after 13 s");
        for t in 74..=126 {
            rig.tick(t, &[("v", 5.0)]);
        }
        let all = hook(&rig);
        let escalation = all.iter().find(|h| h.1 == "escalation").expect("escalated");
        assert_eq!(escalation.2, "critical");
        assert_eq!(
            all.iter().map(|h| h.1.as_str()).collect::<Vec<_>>(),
            [
                "transition",
                "transition",
                "transition",
                "renotify",
                "escalation"
            ]
        );
    }

    #[test]
    fn silences_hold_notifications_but_not_the_state() {
        let mut rig = rig("[[rule]]\nname = \"up\"\nselect = \"v\"\nthreshold = 1\n");
        rig.silence_up_until(5_000);
        assert_eq!(rig.tick(1, &[("v", 5.0)])[0].1, State::Firing);
        let retained: serde_json::Value =
            serde_json::from_str(rig.queue("m/")[0]["payload"].as_str().unwrap()).unwrap();
        assert_eq!(retained["silenced"], true);
        rig.tick(2, &[("v", 5.0)]);
        assert!(rig.queue("n/").is_empty(), "held while silenced");
        let transitions = rig.tick(5, &[("v", 5.0)]);
        assert_eq!(rig.queue("n/").len(), 1, "told once the silence ended");
        let told = &rig.queue("n/")[0];
        assert_eq!(told["silenced"], false);
        assert_eq!(
            told["at"], told["fired_at"],
            "a deferred notification is stamped with the transition it tells of"
        );
        // The end of the silence is news on MQTT too: the retained state and an event.
        assert_eq!(
            transitions,
            vec![("_".into(), State::Firing, Reason::Silence)]
        );
        let mqtt = rig.queue("m/");
        let (retained, events): (Vec<_>, Vec<_>) = mqtt.iter().partition(|m| m["retain"] == true);
        let last_retained: serde_json::Value =
            serde_json::from_str(retained.last().unwrap()["payload"].as_str().unwrap()).unwrap();
        assert_eq!(last_retained["silenced"], false);
        let last_event: serde_json::Value =
            serde_json::from_str(events.last().unwrap()["payload"].as_str().unwrap()).unwrap();
        assert_eq!(last_event["silenced"], false);
        assert_eq!(last_event["reason"], "silence");
        assert!(last_event["event_seq"].as_u64() > retained_first_seq(&retained));
    }

    fn retained_first_seq(retained: &[&serde_json::Value]) -> Option<u64> {
        let first: serde_json::Value =
            serde_json::from_str(retained[0]["payload"].as_str().unwrap()).unwrap();
        first["event_seq"].as_u64()
    }

    #[test]
    fn a_silence_added_to_a_firing_alert_is_published() {
        let mut rig = rig("[[rule]]\nname = \"up\"\nselect = \"v\"\nthreshold = 1\n");
        assert_eq!(rig.tick(1, &[("v", 5.0)])[0].1, State::Firing);
        rig.silence_up_until(60_000);
        assert_eq!(
            rig.tick(2, &[("v", 5.0)]),
            vec![("_".into(), State::Firing, Reason::Silence)]
        );
        assert!(rig.tick(3, &[("v", 5.0)]).is_empty(), "published once");
        let retained: Vec<serde_json::Value> = rig
            .queue("m/")
            .into_iter()
            .filter(|m| m["retain"] == true)
            .collect();
        let last: serde_json::Value =
            serde_json::from_str(retained.last().unwrap()["payload"].as_str().unwrap()).unwrap();
        assert_eq!(last["silenced"], true);
        assert_eq!(
            last["summary"], "up: 5",
            "the default summary, without labels"
        );
        assert_eq!(
            rig.queue("n/").len(),
            1,
            "the firing told before the silence, nothing more"
        );
    }

    #[test]
    fn full_queues_drop_the_oldest_and_say_so() {
        let mut rig = rig("[[rule]]\nname = \"up\"\nselect = \"v\"\nthreshold = 1\n");
        rig.engine.options.max_queued = 4;
        for t in 0..10 {
            rig.tick(t, &[("v", if t % 2 == 0 { 5.0 } else { 0.0 })]);
        }
        let hook = rig.queue("n/hook/");
        assert_eq!(hook.len(), 4);
        assert!(hook
            .iter()
            .any(|m| m["dropped_before"].as_u64().unwrap_or(0) > 0));
        let dropped: u64 = rig.engine.dropped_total().iter().map(|d| d.1).sum();
        assert!(dropped > 0);
    }

    #[test]
    fn instance_names_are_topic_safe_and_distinct() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let a = instance_name(&labels(&[("mount", "/data/+#"), ("x", "a,b=c")]));
        assert_eq!(a, "mount=%2Fdata%2F%2B%23,x=a%2Cb%3Dc");
        assert!(!a.contains(['/', '+', '#']));
        assert_ne!(
            instance_name(&labels(&[("a", "1,b=2")])),
            instance_name(&labels(&[("a", "1"), ("b", "2")]))
        );
        assert_eq!(instance_name(&labels(&[])), "_");
    }
}
