//! What the dashboard asks of the hub (`outpost_web::Fleet`): the registry, the fleet's alerts
//! as the devices publish them on their alert topics, silences sent to a device as signed
//! commands, and news of ingested data for live charts.

#![deny(clippy::disallowed_methods)]

use outpost::alert::engine::{AlertMessage, Engine, State};
use outpost_sync::HubToDevice;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_storage::{SeriesKey, StateTable, Store, WriteBatch};
use outpost_sync::topic::{DeviceTopics, Kind};
use rumqttc::{AsyncClient, QoS};
use serde_json::Value;

use super::keys::{FleetHistoryKey, RegistryKey};
use super::registry::Registry;
use super::routing::Delivery;
use super::Devices;

/// Transitions kept for the alerts page's history.
const HISTORY: usize = 2000;
/// Of those, one device's at most: a noisy or hostile device cannot push the others' out.
const HISTORY_PER_DEVICE: usize = HISTORY / 4;
/// Alert instances one device may show as firing at once.
const INSTANCES_PER_DEVICE: usize = 1000;
/// An alert payload larger than this is not an alert.
const MAX_ALERT_PAYLOAD: usize = 64 << 10;
/// How long a silence command waits for its device before it is dropped.
pub(super) const COMMAND_LIFETIME_MS: i64 = 7 * 86_400_000;

#[derive(Debug, Default)]
pub struct FleetAlerts {
    /// What each device's retained alert topics say is firing, by (device, rule/instance).
    /// Not stored: the devices republish it on every connect.
    current: BTreeMap<(String, String), Value>,
    /// Firing and resolved transitions from the devices' events topics, oldest first, with the
    /// sequence number each is stored under. Events are sent once, so this is kept in the store.
    history: VecDeque<(u64, Value)>,
    /// Every firing by its time, for counts over any range.
    pub(super) firings: super::firings::FiringLog,
}

impl FleetAlerts {
    /// The history a previous run stored. An entry that does not parse is dropped with a
    /// warning rather than stopping the hub.
    pub fn load(store: &Store) -> FleetAlerts {
        let mut alerts = FleetAlerts::default();
        let stored = match store.list(&FleetHistoryKey::All) {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!("the fleet's alert history could not be read: {error}");
                return alerts;
            }
        };
        for (key, bytes) in stored {
            let seq = key[FleetHistoryKey::All.to_string().len()..].parse::<u64>();
            match (seq, serde_json::from_slice::<Value>(&bytes)) {
                (Ok(seq), Ok(event)) => alerts.history.push_back((seq, event)),
                _ => tracing::warn!(key, "an unreadable entry in the fleet's alert history"),
            }
        }
        alerts
    }

    /// Takes one alert message of `device` (the topic says whose): verified with the device's
    /// key when it carries a mac (and refused unsigned if `signs`: once the device has signed
    /// one), a retained state older than the one shown refused as a replay, and at most
    /// [`INSTANCES_PER_DEVICE`] shown per device. Returns what came of it and whether it was
    /// signed.
    pub(super) fn admit(
        &mut self,
        (device, device_key, signs): (&str, &outpost_sync::DeviceKey, bool),
        suffix: &str,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<(Admitted, bool), &'static str> {
        let key = (device.to_string(), suffix.to_string());
        if payload.is_empty() {
            self.current.remove(&key);
            return Ok((Admitted::Cleared, false));
        }
        let text = (payload.len() <= MAX_ALERT_PAYLOAD)
            .then(|| std::str::from_utf8(payload).ok())
            .flatten()
            .ok_or("an alert message that is too large or not text")?;
        let verified = outpost_sync::verify_json(text, device_key).ok();
        let signed = verified.is_some();
        let mut alert = serde_json::from_str::<Value>(verified.as_deref().unwrap_or(text))
            .ok()
            .filter(Value::is_object)
            .ok_or("an alert message that is not a JSON object")?;
        // Unsigned is an agent from before alerts were signed: taken until the device signs.
        if !signed && (alert.get("mac").is_some() || signs) {
            return Err("an alert message whose signature does not verify");
        }
        alert["signed"] = signed.into();
        // The topic, which the broker ties to the device's login, says whose it is.
        alert["device"] = device.into();
        alert["source"] = "device".into();
        if suffix == "events" {
            let state = alert["state"].as_str().unwrap_or_default();
            if state != "firing" && state != "resolved" {
                return Ok((Admitted::Ignored, signed));
            }
            let admitted = self
                .record_event(alert.clone(), now_ms)
                .map_or(Admitted::Ignored, |write| {
                    Admitted::Event(write, Box::new(alert))
                });
            return Ok((admitted, signed));
        }
        if let Some(shown) = self.current.get(&key) {
            if shown["event_seq"].as_u64() > alert["event_seq"].as_u64() {
                return Err("an alert state older than the one shown (a replay)");
            }
        } else {
            let shown = self
                .current
                .range((device.to_string(), String::new())..(format!("{device}\0"), String::new()))
                .count();
            if shown >= INSTANCES_PER_DEVICE {
                return Err("more alert instances than a device may show at once");
            }
        }
        self.current.insert(key, alert);
        Ok((Admitted::Shown, signed))
    }

    /// Adds a device's transition to the history unless it is a resend of one already there;
    /// the oldest entries beyond [`HISTORY`] go, and a firing goes to the firing log too.
    /// Returns what to store, if it was new.
    fn record_event(&mut self, event: Value, now_ms: i64) -> Option<WriteBatch> {
        let seq = event["event_seq"].as_u64();
        let device = &event["device"];
        // The hub's own engine numbers its events apart from each device's.
        let source = &event["source"];
        let duplicate = seq.is_some()
            && self.history.iter().rev().take(HISTORY).any(|(_, seen)| {
                &seen["device"] == device
                    && &seen["source"] == source
                    && seen["event_seq"].as_u64() == seq
            });
        if duplicate {
            return None;
        }
        let next = self.history.back().map_or(0, |(last, _)| last + 1);
        let mut write = WriteBatch::default();
        let mine = self
            .history
            .iter()
            .filter(|(_, seen)| &seen["device"] == device)
            .count();
        if mine >= HISTORY_PER_DEVICE {
            let oldest = self
                .history
                .iter()
                .position(|(_, seen)| &seen["device"] == device);
            if let Some((old, _)) = oldest.and_then(|index| self.history.remove(index)) {
                write.remove(&FleetHistoryKey::Entry(old));
            }
        }
        write.put(
            &FleetHistoryKey::Entry(next),
            event.to_string().into_bytes(),
        );
        self.firings.record(&event, now_ms, &mut write);
        self.history.push_back((next, event));
        while self.history.len() > HISTORY {
            if let Some((old, _)) = self.history.pop_front() {
                write.remove(&FleetHistoryKey::Entry(old));
            }
        }
        Some(write)
    }
}

/// What came of an admitted alert message.
#[derive(Debug)]
pub(super) enum Admitted {
    /// A retained state, now shown.
    Shown,
    /// A resolved alert's retained state cleared.
    Cleared,
    /// A new transition for the history, to store, and the transition.
    Event(WriteBatch, Box<Value>),
    /// Nothing to do: a pending or inactive transition, or an event already recorded.
    Ignored,
}

pub struct HubFleet {
    /// Every device's record: state, counters, its status order.
    pub registry: Arc<Mutex<Registry>>,
    /// The enrolled devices and their keys.
    pub devices: Arc<Devices>,
    /// The fleet's time series.
    pub store: Arc<Store>,
    /// The hub's MQTT client: commands and silences go to devices through it.
    pub client: AsyncClient,
    /// The fleet's name: the topic prefix.
    pub fleet: String,
    /// A device not heard from for this long is shown offline.
    pub offline_after: Duration,
    pub alerts: Mutex<FleetAlerts>,
    /// Held while a command is numbered and stored: silences arrive on the blocking pool, in
    /// parallel, and each must get its own id.
    pub commands: Mutex<()>,
    pub hub_alerts: Option<Arc<crate::alerting::runtime::AlertShared>>,
    pub ingested: tokio::sync::broadcast::Sender<String>,
    /// What the embedded broker's gate refused, per login.
    pub refusals: Arc<super::gate::Refusals>,
    /// The routes of device alerts to the hub's channels.
    pub router: super::routing::Router,
    pub reminders: Mutex<Reminders>,
    /// `[remote_write] query_url`: the engine that answers the Prometheus API's reads.
    pub query_engine: Option<Arc<dyn outpost_web::prometheus::QueryEngine>>,
}

/// A device alert's labels as the hub's silences see them: with `device`, and `instance`
/// unless it has one.
fn route_labels(message: &AlertMessage) -> BTreeMap<String, String> {
    let mut labels = message.labels.clone();
    labels.insert("device".into(), message.device.clone());
    labels
        .entry("instance".into())
        .or_insert_with(|| message.device.clone());
    labels
}

/// `message` as the hub's routes and receivers see it: with the operators' labels of its
/// device over its own.
fn with_device_labels(
    mut message: AlertMessage,
    device_labels: &BTreeMap<String, String>,
) -> AlertMessage {
    message.labels.extend(
        device_labels
            .iter()
            .map(|(name, value)| (name.clone(), value.clone())),
    );
    message
}

/// When each routed alert was last told of, per channel and route: for `repeat_interval`.
/// Keyed by (channel, route, device, rule, instance); in memory, so a restart of the hub only
/// puts the next reminder off.
pub type Reminders = HashMap<(String, String, String, String, String), i64>;

fn reminder_key(
    delivery: &Delivery,
    message: &AlertMessage,
) -> (String, String, String, String, String) {
    (
        delivery.channel.clone(),
        delivery.route.clone(),
        message.device.clone(),
        message.rule.clone(),
        message.instance.clone(),
    )
}

/// Alert topics below a device: `alerts/events` or `alerts/<rule>/<instance>`; the part after
/// `alerts/`.
pub fn alert_topic<'a>(fleet: &str, topic: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = topic.strip_prefix("outpost/v1/")?;
    let (topic_fleet, rest) = rest.split_once('/')?;
    let (device, rest) = rest.split_once('/')?;
    let suffix = rest.strip_prefix("alerts/")?;
    (topic_fleet == fleet && !device.is_empty() && !suffix.is_empty()).then_some((device, suffix))
}

impl HubFleet {
    /// An alert message from a device: the retained state of one alert, or an event.
    pub fn alert_message(&self, device: &str, suffix: &str, payload: &[u8]) {
        let Some(device_key) = self.devices.get().key(device) else {
            self.registry.lock().expect("registry lock").rejected(
                device,
                "alert from an unknown or revoked device",
                false,
            );
            return;
        };
        let signs = self
            .registry
            .lock()
            .expect("registry lock")
            .signs_alerts(device);
        let admitted = (self.alerts.lock().expect("alerts lock")).admit(
            (device, &device_key, signs),
            suffix,
            payload,
            outpost::timearg::now_ms(),
        );
        let event = {
            let mut registry = self.registry.lock().expect("registry lock");
            match admitted {
                Ok((admitted, signed)) => {
                    if signed {
                        registry.mark_signs_alerts(device);
                    }
                    match admitted {
                        Admitted::Event(write, event) => Some((write, event)),
                        _ => None,
                    }
                }
                Err(reason) => {
                    registry.rejected(device, reason, true);
                    None
                }
            }
        };
        if let Some((mut write, event)) = event {
            let routed = self.route(&event, &mut write);
            // Kept in memory all the same: the page shows it even if the write fails.
            self.store_then_wake(write, routed, "an alert event");
        }
    }

    /// Stores `write` in the background and then wakes `channels`, whose queue entries it
    /// holds: a channel woken before they are stored would find nothing to deliver.
    pub fn store_then_wake(&self, write: WriteBatch, channels: Vec<String>, what: &'static str) {
        let (store, hub) = (self.store.clone(), self.hub_alerts.clone());
        tokio::spawn(async move {
            if let Err(error) = store.write_async(write).await {
                tracing::warn!("{what} not stored: {error}");
                return;
            }
            if let Some(hub) = hub {
                for channel in channels {
                    hub.wake(&channel);
                }
            }
        });
    }

    /// Adds the hub's own firing and resolved transitions (a device offline, lagging, ...) to
    /// the fleet's history, under the device they are about, and stores them.
    pub fn record_hub_transitions(&self, transitions: &[AlertMessage]) {
        let mut write = WriteBatch::default();
        {
            let mut alerts = self.alerts.lock().expect("alerts lock");
            for message in transitions {
                if !matches!(message.state, State::Firing | State::Resolved) {
                    continue;
                }
                let Ok(mut event) = serde_json::to_value(message) else {
                    continue;
                };
                event["device"] = message
                    .labels
                    .get("instance")
                    .cloned()
                    .unwrap_or_else(|| "hub".into())
                    .into();
                event["source"] = "hub".into();
                if let Some(recorded) = alerts.record_event(event, outpost::timearg::now_ms()) {
                    write.extend(recorded);
                }
            }
        }
        if !write.is_empty() {
            super::write_in_background(&self.store, write, "the hub's alert history");
        }
    }

    /// Forgets alert firings older than the firing log keeps; blocks.
    #[allow(clippy::disallowed_methods)] // called on the blocking pool
    pub fn prune_firings(&self) {
        let mut write = WriteBatch::default();
        self.alerts.lock().expect("alerts lock").firings.prune(
            &self.store,
            outpost::timearg::now_ms(),
            &mut write,
        );
        if !write.is_empty() {
            if let Err(error) = self.store.write(write) {
                tracing::warn!("old alert firings not deleted: {error}");
            }
        }
    }

    /// The operators' labels of `device`.
    fn device_labels(&self, device: &str) -> BTreeMap<String, String> {
        self.devices
            .get()
            .labels(device)
            .cloned()
            .unwrap_or_default()
    }

    /// Where the routes send `message` now (none while an inhibition, the device's silences or
    /// the hub's silences and maintenance windows hold it back), and the message as they see it.
    fn deliveries(
        &self,
        message: AlertMessage,
        firing: &[SeriesKey],
        engine: &Engine,
    ) -> (Vec<Delivery>, AlertMessage) {
        let device_labels = self.device_labels(&message.device);
        let message = with_device_labels(message, &device_labels);
        // The device's own silences hold for the hub's routes too; a silence beginning is an
        // event of its own (state unchanged) that must not notify again.
        let muted = message.silenced
            || engine.silences.silenced(
                &message.rule,
                &route_labels(&message),
                outpost::timearg::now_ms(),
            );
        if muted {
            return (Vec::new(), message);
        }
        let deliveries = self.router.deliveries(&message, &BTreeMap::new(), firing);
        (deliveries, message)
    }

    /// Queues `message` on each of `deliveries`, with its route's grouping, in `write`; the
    /// channels it went to.
    fn enqueue(
        engine: &mut Engine,
        deliveries: &[Delivery],
        message: &AlertMessage,
        write: &mut WriteBatch,
    ) -> Vec<String> {
        deliveries
            .iter()
            .filter(|delivery| {
                let extra: Vec<_> = delivery
                    .grouping
                    .iter()
                    .map(crate::alerting::notify::grouping_field)
                    .collect();
                engine.enqueue_for(&delivery.channel, message, &extra, write)
            })
            .map(|delivery| delivery.channel.clone())
            .collect()
    }

    /// Queues a device's new transition for the hub channels its routes name, in `write`;
    /// the channels it went to.
    fn route(&self, event: &Value, write: &mut WriteBatch) -> Vec<String> {
        let Some(hub) = &self.hub_alerts else {
            return Vec::new();
        };
        if self.router.is_empty() {
            return Vec::new();
        }
        let Ok(message) = serde_json::from_value::<AlertMessage>(event.clone()) else {
            return Vec::new();
        };
        let firing = self.firing_keys();
        let mut engine = hub.engine.lock().expect("engine lock");
        let (deliveries, message) = self.deliveries(message, &firing, &engine);
        let now = outpost::timearg::now_ms();
        let mut reminders = self.reminders.lock().expect("reminders lock");
        for delivery in &deliveries {
            let key = reminder_key(delivery, &message);
            match (message.state, delivery.repeat) {
                (State::Firing, Some(_)) => {
                    reminders.insert(key, now);
                }
                _ => {
                    reminders.remove(&key);
                }
            }
        }
        Self::enqueue(&mut engine, &deliveries, &message, write)
    }

    /// Reminds the routes' channels of the devices' alerts still firing `repeat_interval` after
    /// they last heard of them; returns the write to store and the channels to wake.
    pub fn reminders_due(&self) -> Option<(WriteBatch, Vec<String>)> {
        let hub = self.hub_alerts.as_ref()?;
        if !self.router.reminds() {
            return None;
        }
        let firing = self.firing_keys();
        let current = self.firing_device_alerts();
        let now = outpost::timearg::now_ms();
        let mut engine = hub.engine.lock().expect("engine lock");
        let mut reminders = self.reminders.lock().expect("reminders lock");
        let mut write = WriteBatch::default();
        let mut woken = Vec::new();
        let mut live = std::collections::HashSet::new();
        for message in current {
            let (deliveries, mut message) = self.deliveries(message, &firing, &engine);
            let mut due = Vec::new();
            for delivery in deliveries {
                let Some(repeat) = delivery.repeat else {
                    continue;
                };
                let key = reminder_key(&delivery, &message);
                let last = *reminders.entry(key.clone()).or_insert(now);
                live.insert(key.clone());
                if now - last >= i64::try_from(repeat.as_millis()).unwrap_or(i64::MAX) {
                    reminders.insert(key, now);
                    due.push(delivery);
                }
            }
            if due.is_empty() {
                continue;
            }
            message.reason = outpost::alert::engine::Reason::Renotify;
            message.at = outpost::alert::engine::rfc3339(now);
            woken.extend(Self::enqueue(&mut engine, &due, &message, &mut write));
        }
        // Alerts that stopped firing, or that no route repeats any more, need no reminder.
        reminders.retain(|key, _| live.contains(key));
        (!write.is_empty()).then_some((write, woken))
    }

    /// The devices' alerts firing now, as their last messages.
    fn firing_device_alerts(&self) -> Vec<AlertMessage> {
        let current: Vec<Value> = self
            .alerts
            .lock()
            .expect("alerts lock")
            .current
            .values()
            .filter(|a| a["state"] == "firing")
            .cloned()
            .collect();
        current
            .into_iter()
            .filter_map(|a| serde_json::from_value::<AlertMessage>(a).ok())
            .collect()
    }

    /// The devices' alerts firing now that the routes send to `channel` (not held back by an
    /// inhibition or the hub's silences): what an Alertmanager channel resends every minute.
    pub fn routed_firing(&self, channel: &str) -> Vec<AlertMessage> {
        let Some(hub) = &self.hub_alerts else {
            return Vec::new();
        };
        let firing = self.firing_keys();
        let current = self.firing_device_alerts();
        let engine = hub.engine.lock().expect("engine lock");
        current
            .into_iter()
            .filter_map(|message| {
                let (deliveries, message) = self.deliveries(message, &firing, &engine);
                deliveries
                    .iter()
                    .any(|d| d.channel == channel)
                    .then_some(message)
            })
            .collect()
    }

    /// Every alert firing now, the devices' and the hub's own, as routes see them.
    fn firing_keys(&self) -> Vec<outpost_storage::SeriesKey> {
        let mut out: Vec<outpost_storage::SeriesKey> = Vec::new();
        for alert in self.alerts.lock().expect("alerts lock").current.values() {
            if alert["state"] != "firing" {
                continue;
            }
            let labels: BTreeMap<String, String> = alert["labels"]
                .as_object()
                .map(|l| {
                    l.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            let text = |field: &str| alert[field].as_str().unwrap_or("").to_string();
            out.extend(super::routing::routing_key(
                &text("rule"),
                &text("severity"),
                &text("device"),
                &labels,
                &self.device_labels(&text("device")),
            ));
        }
        if let Some(hub) = &self.hub_alerts {
            let engine = hub.engine.lock().expect("engine lock");
            for record in engine.alerts().filter(|r| r.state == State::Firing) {
                out.extend(super::routing::routing_key(
                    &record.rule,
                    &record.severity.to_string(),
                    "hub",
                    &record.labels,
                    &BTreeMap::new(),
                ));
            }
        }
        out
    }

    /// Sends a device every command it may have missed: those not yet expired, in order. The
    /// device applies only ids above the last it applied, so resending is harmless.
    pub fn resend_commands(&self, device: &str) {
        let Some(key) = self.devices.get().key(device) else {
            return;
        };
        let now = outpost::timearg::now_ms();
        let Ok(stored) = self.store.list(&RegistryKey::Commands(device)) else {
            return;
        };
        let version = self.version_of(device);
        let mut expired = WriteBatch::default();
        for (name, bytes) in stored {
            match serde_json::from_slice::<outpost_sync::Command>(&bytes) {
                Ok(command) if command.expires_ms > now => {
                    self.publish_command(device, &command.encode_as(&key, version));
                }
                _ => expired.delete_state(StateTable::DeviceRegistry, name),
            }
        }
        if !expired.is_empty() {
            super::write_in_background(&self.store, expired, "the removal of expired commands");
        }
        self.silences_for_newcomer(device);
    }

    pub(super) fn version_of(&self, device: &str) -> u16 {
        let protocol = self
            .registry
            .lock()
            .expect("registry lock")
            .protocol(device);
        if outpost_sync::SUPPORTED_VERSIONS.contains(&protocol) {
            protocol
        } else {
            outpost_sync::PROTOCOL_VERSION
        }
    }

    pub(super) fn publish_command(&self, device: &str, frame: &[u8]) {
        let topics = DeviceTopics {
            fleet: self.fleet.clone(),
            device: device.to_string(),
        };
        if let Err(error) = self.client.try_publish(
            topics.topic(Kind::Cmd),
            QoS::AtLeastOnce,
            false,
            frame.to_vec(),
        ) {
            tracing::warn!(device, "command not queued for the broker: {error}");
        }
    }
}

pub(super) fn matchers(text: &str) -> Result<Vec<outpost_sync::Matcher>, String> {
    use outpost_storage::MatchOp as Op;
    let selector = outpost_storage::Selector::parse(text).map_err(|e| format!("match: {e}"))?;
    selector
        .matchers()
        .map(|(label, op, value)| {
            if label == "__name__" {
                return Err(
                    "match: a silence selects alerts by their labels: {alertname=\"...\"}, not a metric name"
                        .to_string(),
                );
            }
            Ok(outpost_sync::Matcher {
                label: label.to_string(),
                op: match op {
                    Op::Equal => outpost_sync::MatchOp::Equal,
                    Op::NotEqual => outpost_sync::MatchOp::NotEqual,
                    Op::Regex => outpost_sync::MatchOp::Regex,
                    Op::NotRegex => outpost_sync::MatchOp::NotRegex,
                },
                value: value.to_string(),
            })
        })
        .collect()
}

impl outpost_web::Fleet for HubFleet {
    fn devices(&self) -> Vec<outpost_web::DeviceView> {
        let now = outpost::timearg::now_ms();
        let mut views = {
            let registry = self.registry.lock().expect("registry lock");
            registry.views(now, self.offline_after)
        };
        let devices = self.devices.get();
        for view in &mut views {
            if let Some(labels) = devices.labels(&view.device).filter(|l| !l.is_empty()) {
                view.record
                    .insert("labels".into(), serde_json::json!(labels));
            }
        }
        views
    }

    fn device_labels(&self) -> Arc<outpost_web::device_labels::DeviceLabels> {
        // Revoked devices keep theirs: their history stays queryable by them.
        let devices = self.devices.get();
        let labelled = devices
            .device
            .iter()
            .filter(|(_, entry)| !entry.labels.is_empty())
            .map(|(name, entry)| (name.clone(), entry.labels.clone()));
        Arc::new(labelled.collect())
    }

    fn alerts(&self) -> outpost_web::FleetAlerts {
        let alerts = self.alerts.lock().expect("alerts lock");
        let mut current: Vec<Value> = alerts.current.values().cloned().collect();
        if let Some(hub) = &self.hub_alerts {
            let engine = hub.engine.lock().expect("engine lock");
            // What holds now: a resolved or inactive record is history, not a current alert.
            let holding = engine
                .alerts()
                .filter(|r| matches!(r.state, State::Pending | State::Firing));
            for record in holding {
                let mut value = serde_json::to_value(record).unwrap_or_default();
                value["device"] = record
                    .labels
                    .get("instance")
                    .cloned()
                    .unwrap_or_else(|| "hub".into())
                    .into();
                value["source"] = "hub".into();
                value["started_at"] = record
                    .started_ms
                    .map(outpost::alert::engine::rfc3339)
                    .into();
                current.push(value);
            }
        }
        let history: Vec<Value> = alerts
            .history
            .iter()
            .rev()
            .map(|(_, e)| e.clone())
            .collect();
        outpost_web::FleetAlerts {
            alerts: current,
            history,
        }
    }

    fn prometheus_alerts(&self) -> Value {
        let mut alerts: Vec<Value> = {
            let alerts = self.alerts.lock().expect("alerts lock");
            alerts
                .current
                .values()
                .filter_map(crate::alerting::prometheus::device_alert)
                .collect()
        };
        if let Some(hub) = &self.hub_alerts {
            let engine = hub.engine.lock().expect("engine lock");
            if let Some(own) = crate::alerting::prometheus::alerts(&engine)["alerts"].as_array() {
                alerts.extend(own.iter().cloned());
            }
        }
        serde_json::json!({ "alerts": alerts })
    }

    fn metadata(&self) -> Vec<(String, String, String, String)> {
        crate::catalogue::prometheus_metadata()
    }

    fn query_engine(&self) -> Option<Arc<dyn outpost_web::prometheus::QueryEngine>> {
        self.query_engine.clone()
    }

    fn prometheus_rules(&self) -> Value {
        match &self.hub_alerts {
            Some(hub) => {
                crate::alerting::prometheus::rules(&hub.engine.lock().expect("engine lock"))
            }
            None => serde_json::json!({ "groups": [] }),
        }
    }

    fn silence(
        &self,
        request: outpost_web::SilenceRequest,
        by: &outpost_web::Identity,
    ) -> Result<outpost_web::SilenceView, outpost_web::WebError> {
        self.create_silence(request, by)
    }

    #[allow(clippy::disallowed_methods)] // called on the blocking pool (outpost_web::Fleet)
    fn alert_firings(
        &self,
        start: i64,
        end: i64,
    ) -> Result<outpost_web::AlertFirings, outpost_web::WebError> {
        let alerts = self.alerts.lock().expect("alerts lock");
        Ok(alerts.firings.count(&self.store, (start, end))?)
    }

    #[allow(clippy::disallowed_methods)] // called on the blocking pool (outpost_web::Fleet)
    fn device_logs(
        &self,
        device: &str,
        search: &str,
        limit: usize,
    ) -> Result<Vec<Value>, outpost_web::WebError> {
        let lines = outpost_sync::lines::newest(&self.store, device, search, limit)?;
        Ok(lines
            .into_iter()
            .filter_map(|line| serde_json::to_value(line).ok())
            .collect())
    }

    fn outage_notes(&self) -> Vec<outpost_web::outages::OutageNote> {
        self.store
            .list(&RegistryKey::OutageNotes)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, bytes)| serde_json::from_slice(&bytes).ok())
            .collect()
    }

    #[allow(clippy::disallowed_methods)] // called on the blocking pool (outpost_web::Fleet)
    fn set_outage_note(
        &self,
        note: outpost_web::outages::OutageNote,
    ) -> Result<(), outpost_web::WebError> {
        let mut write = WriteBatch::default();
        let key = RegistryKey::OutageNote(&note.device, &note.probe, note.start_ms);
        write.put(&key, serde_json::to_vec(&note).expect("notes serialize"));
        self.store.write(write)?;
        self.store.sync()?;
        Ok(())
    }

    fn silences(&self) -> Vec<outpost_web::SilenceView> {
        self.list_silences()
    }

    fn boards(&self) -> Vec<outpost_web::boards::Board> {
        self.store
            .list(&RegistryKey::Boards)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, bytes)| serde_json::from_slice(&bytes).ok())
            .collect()
    }

    #[allow(clippy::disallowed_methods)] // called on the blocking pool (outpost_web::Fleet)
    fn put_board(&self, board: outpost_web::boards::Board) -> Result<(), outpost_web::WebError> {
        let mut write = WriteBatch::default();
        let value = serde_json::to_vec(&board).expect("boards serialize");
        write.put(&RegistryKey::Board(&board.name), value);
        self.store.write(write)?;
        self.store.sync()?;
        Ok(())
    }

    #[allow(clippy::disallowed_methods)] // called on the blocking pool (outpost_web::Fleet)
    fn delete_board(&self, name: &str) -> Result<bool, outpost_web::WebError> {
        if self.store.get(&RegistryKey::Board(name))?.is_none() {
            return Ok(false);
        }
        let mut write = WriteBatch::default();
        write.remove(&RegistryKey::Board(name));
        self.store.write(write)?;
        self.store.sync()?;
        Ok(true)
    }

    fn expire_silence(
        &self,
        id: &str,
        by: &outpost_web::Identity,
        delete: bool,
    ) -> Result<outpost_web::SilenceView, outpost_web::WebError> {
        self.end_silence(id, by, delete)
    }

    fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let now = outpost::timearg::now_ms();
        let mut text = self
            .registry
            .lock()
            .expect("registry lock")
            .metrics(now, self.offline_after);
        let _ = writeln!(
            text,
            "# HELP outpost_hub_broker_refusals_total Connections the embedded broker's gate closed for a packet outside the login's rights (another's topic, too large, malformed), per login.\n# TYPE outpost_hub_broker_refusals_total counter"
        );
        for (login, count) in self.refusals.snapshot() {
            let login = login
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(
                text,
                "outpost_hub_broker_refusals_total{{login=\"{login}\"}} {count}"
            );
        }
        text
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.ingested.subscribe()
    }

    fn now_ms(&self) -> i64 {
        outpost::timearg::now_ms()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests, not on an async thread
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeSet;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn alert_topics_are_recognised() {
        assert_eq!(
            alert_topic("f", "outpost/v1/f/dev/alerts/events"),
            Some(("dev", "events"))
        );
        assert_eq!(
            alert_topic("f", "outpost/v1/f/dev/alerts/cpu_high/cpu=3"),
            Some(("dev", "cpu_high/cpu=3"))
        );
        assert_eq!(alert_topic("f", "outpost/v1/g/dev/alerts/events"), None);
        assert_eq!(alert_topic("f", "outpost/v1/f/dev/batch"), None);
        assert_eq!(alert_topic("f", "outpost/v1/f/dev/alerts/"), None);
    }

    /// The fleet's alerts with what the hub keeps around `admit`: which devices have signed
    /// (the registry's `signs_alerts`). Every device's key is `key`.
    struct Admitting {
        alerts: FleetAlerts,
        signing: BTreeSet<String>,
        key: outpost_sync::DeviceKey,
    }

    impl Admitting {
        fn admit(&mut self, device: &str, suffix: &str, payload: &[u8]) -> Result<Admitted, &str> {
            let signs = self.signing.contains(device);
            let (admitted, signed) =
                self.alerts
                    .admit((device, &self.key, signs), suffix, payload, NOW)?;
            if signed {
                self.signing.insert(device.to_string());
            }
            Ok(admitted)
        }
    }

    #[test]
    fn alert_messages_are_verified_and_replays_refused() {
        let key = outpost_sync::DeviceKey::new(vec![3; 32]).unwrap();
        let other = outpost_sync::DeviceKey::new(vec![4; 32]).unwrap();
        let state = |seq: u64| {
            format!(r#"{{"rule":"disk_full","state":"firing","event_seq":{seq},"summary":"x"}}"#)
        };
        let signed = |seq: u64, key: &outpost_sync::DeviceKey| {
            outpost_sync::sign_json(&state(seq), key).into_bytes()
        };
        let mut hub = Admitting {
            alerts: FleetAlerts::default(),
            signing: BTreeSet::new(),
            key: key.clone(),
        };
        let topic = "disk_full/_";
        // Before the device has signed anything, an unsigned state is taken (an older agent).
        assert!(matches!(
            hub.admit("b", topic, state(1).as_bytes()),
            Ok(Admitted::Shown)
        ));
        assert_eq!(
            hub.alerts.current[&("b".into(), topic.into())]["signed"],
            false
        );
        assert!(matches!(
            hub.admit("b", topic, &signed(2, &key)),
            Ok(Admitted::Shown)
        ));
        let shown = &hub.alerts.current[&("b".into(), topic.into())];
        assert_eq!(shown["signed"], true);
        assert!(shown.get("mac").is_none(), "the mac is not shown");
        // From then on: unsigned, signed with another key, or an older state are refused.
        assert!(hub.admit("b", topic, state(3).as_bytes()).is_err());
        assert!(hub.admit("b", topic, &signed(3, &other)).is_err());
        assert!(hub.admit("b", topic, &signed(1, &key)).is_err());
        assert_eq!(
            hub.alerts.current[&("b".into(), topic.into())]["event_seq"],
            2
        );
        // A forged event with the device's next number does not take the real one's place.
        let event = |seq: u64, key: &outpost_sync::DeviceKey| {
            outpost_sync::sign_json(
                &format!(r#"{{"rule":"r","state":"firing","event_seq":{seq}}}"#),
                key,
            )
            .into_bytes()
        };
        assert!(hub.admit("b", "events", &event(5, &other)).is_err());
        assert!(matches!(
            hub.admit("b", "events", &event(5, &key)),
            Ok(Admitted::Event(..))
        ));
        // An older agent's unsigned alert whose text happens to say "mac" is still taken.
        let old = br#"{"rule":"r","state":"firing","event_seq":1,"summary":"mac"}"#;
        assert!(matches!(hub.admit("old", topic, old), Ok(Admitted::Shown)));
        // Garbage of any kind is an error, never a panic.
        for bytes in [&b"\xff\xfe"[..], b"[1,2]", b"{", b"{\"mac\":\"00\"}"] {
            assert!(hub.admit("c", topic, bytes).is_err(), "{bytes:?}");
        }
    }

    /// Records an event and stores it at once; whether it was new.
    fn record(store: &Store, alerts: &mut FleetAlerts, event: Value) -> bool {
        alerts
            .record_event(event, NOW)
            .map(|write| store.write(write).unwrap())
            .is_some()
    }

    #[test]
    fn the_fleet_alert_history_survives_a_restart_without_resends_or_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let event = |device: &str, seq: u64| json!({ "device": device, "event_seq": seq, "state": "firing" });
        {
            let store = Store::open(&path, outpost_storage::Options::default()).unwrap();
            let mut alerts = FleetAlerts::load(&store);
            assert!(record(&store, &mut alerts, event("a", 1)));
            assert!(
                record(&store, &mut alerts, event("b", 1)),
                "another device's first event"
            );
            assert!(!record(&store, &mut alerts, event("a", 1)), "a resend");
        }
        let store = Store::open(&path, outpost_storage::Options::default()).unwrap();
        let mut alerts = FleetAlerts::load(&store);
        let devices = |alerts: &FleetAlerts| -> Vec<(String, u64)> {
            alerts
                .history
                .iter()
                .map(|(_, e)| {
                    (
                        e["device"].as_str().unwrap().to_string(),
                        e["event_seq"].as_u64().unwrap(),
                    )
                })
                .collect()
        };
        assert_eq!(devices(&alerts), [("a".into(), 1), ("b".into(), 1)]);
        assert!(
            !record(&store, &mut alerts, event("b", 1)),
            "a resend after the restart"
        );
        // A flood from one device keeps its newest quarter of the history, and the others'.
        for seq in 2..HISTORY as u64 + 10 {
            assert!(record(&store, &mut alerts, event("a", seq)));
        }
        drop(alerts);
        drop(store);
        let store = Store::open(&path, outpost_storage::Options::default()).unwrap();
        let alerts = FleetAlerts::load(&store);
        let history = devices(&alerts);
        assert_eq!(history.len(), HISTORY_PER_DEVICE + 1);
        assert_eq!(history[0], ("b".into(), 1), "B's transition stays");
        let first_a = HISTORY as u64 + 10 - HISTORY_PER_DEVICE as u64;
        assert_eq!(history[1], ("a".into(), first_a), "A's oldest went");
        assert_eq!(
            history[HISTORY_PER_DEVICE],
            ("a".into(), HISTORY as u64 + 9)
        );
        let stored = store.list(&FleetHistoryKey::All).unwrap();
        assert_eq!(stored.len(), HISTORY_PER_DEVICE + 1, "and left the store");
    }

    /// The report's counts come from the firing log: every firing of a range, where the history
    /// keeps a device's last [`HISTORY_PER_DEVICE`] transitions.
    #[test]
    fn firings_beyond_the_history_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path().join("hub.redb"),
            outpost_storage::Options::default(),
        )
        .unwrap();
        let mut alerts = FleetAlerts::load(&store);
        let total = HISTORY as u64 + 10;
        for seq in 1..=total {
            // One a minute, over a day and a half, each arriving as it happens.
            let at_ms = NOW - (total - seq) as i64 * 60_000;
            let at = outpost::alert::engine::rfc3339(at_ms);
            let event = json!({ "device": "a", "source": "device", "rule": "hot", "instance": "_",
                "severity": "warning", "state": "firing", "event_seq": seq, "at": at });
            let mut resolved = event.clone();
            resolved["state"] = "resolved".into();
            resolved["event_seq"] = (seq + 1_000_000).into();
            for event in [event, resolved] {
                let write = alerts.record_event(event, at_ms).expect("a new transition");
                store.write(write).unwrap();
            }
        }
        assert_eq!(alerts.history.len(), HISTORY_PER_DEVICE);
        let counted = alerts.firings.count(&store, (0, NOW)).unwrap();
        assert_eq!(counted.fired.len(), 1);
        assert_eq!(counted.fired[0].fired, total);
        assert!(counted.uncounted.is_empty());
        // The last hour's only.
        let hour = alerts
            .firings
            .count(&store, (NOW - 3_599_999, NOW))
            .unwrap();
        assert_eq!(hour.fired[0].fired, 60);
    }

    #[test]
    fn silence_matchers_come_from_a_selector() {
        let parsed = matchers(r#"{alertname="cpu_high",cpu=~"1|2"}"#).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].op, outpost_sync::MatchOp::Regex);
        assert!(matchers("cpu_high").is_err());
        assert!(matchers("{").is_err());
    }
}
