//! What the dashboard asks of the hub (`outpost_web::Fleet`): the registry, the fleet's alerts
//! as the devices publish them on their alert topics, silences sent to a device as signed
//! commands, and news of ingested data for live charts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_storage::{StateTable, Store, WriteBatch};
use outpost_sync::topic::{DeviceTopics, Kind};
use rumqttc::{AsyncClient, QoS};
use serde_json::{json, Value};

use super::registry::Registry;
use super::Devices;

/// Transitions kept for the alerts page's history.
const HISTORY: usize = 2000;
/// An alert payload larger than this is not an alert.
const MAX_ALERT_PAYLOAD: usize = 64 << 10;
/// How long a silence command waits for its device before it is dropped.
const COMMAND_LIFETIME_MS: i64 = 7 * 86_400_000;

#[derive(Debug, Default)]
pub struct FleetAlerts {
    /// What each device's retained alert topics say is firing, by (device, rule/instance).
    current: BTreeMap<(String, String), Value>,
    /// Firing and resolved transitions from the devices' events topics, oldest first.
    history: VecDeque<Value>,
}

pub struct HubFleet {
    pub registry: Arc<Mutex<Registry>>,
    pub devices: Arc<Devices>,
    pub store: Arc<Store>,
    pub client: AsyncClient,
    pub fleet: String,
    pub offline_after: Duration,
    pub alerts: Mutex<FleetAlerts>,
    pub hub_alerts: Option<Arc<crate::agent::alerts::AlertShared>>,
    pub ingested: tokio::sync::broadcast::Sender<String>,
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
        if self.devices.get().key(device).is_none() {
            self.registry.lock().expect("registry lock").rejected(
                device,
                "alert from an unknown or revoked device",
                false,
            );
            return;
        }
        let mut alerts = self.alerts.lock().expect("alerts lock");
        let key = (device.to_string(), suffix.to_string());
        if payload.is_empty() {
            alerts.current.remove(&key);
            return;
        }
        let parsed = (payload.len() <= MAX_ALERT_PAYLOAD)
            .then(|| serde_json::from_slice::<Value>(payload).ok())
            .flatten()
            .filter(Value::is_object);
        let Some(mut alert) = parsed else {
            drop(alerts);
            self.registry.lock().expect("registry lock").rejected(
                device,
                "an alert message that is not a JSON object",
                true,
            );
            return;
        };
        // The topic, which the broker's ACL ties to the device, says whose it is.
        alert["device"] = device.into();
        alert["source"] = "device".into();
        if suffix == "events" {
            let state = alert["state"].as_str().unwrap_or_default();
            if state != "firing" && state != "resolved" {
                return;
            }
            let seq = alert["event_seq"].as_u64();
            let duplicate = alerts.history.iter().rev().take(200).any(|seen| {
                seen["device"] == device && seen["event_seq"].as_u64() == seq && seq.is_some()
            });
            if !duplicate {
                alerts.history.push_back(alert);
                while alerts.history.len() > HISTORY {
                    alerts.history.pop_front();
                }
            }
        } else {
            alerts.current.insert(key, alert);
        }
    }

    /// Sends a device every command it may have missed: those not yet expired, in order. The
    /// device applies only ids above the last it applied, so resending is harmless.
    pub fn resend_commands(&self, device: &str) {
        let Some(key) = self.devices.get().key(device) else {
            return;
        };
        let now = outpost::timearg::now_ms();
        let prefix = format!("cmd/{device}/");
        let Ok(stored) = self.store.state_list(StateTable::DeviceRegistry, &prefix) else {
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
            if let Err(error) = self.store.write(expired) {
                tracing::warn!(device, "expired commands not removed: {error}");
            }
        }
    }

    fn version_of(&self, device: &str) -> u16 {
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

    fn publish_command(&self, device: &str, frame: &[u8]) {
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

fn matchers(text: &str) -> Result<Vec<outpost_sync::Matcher>, String> {
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
    fn devices(&self) -> Vec<Value> {
        let now = outpost::timearg::now_ms();
        match self
            .registry
            .lock()
            .expect("registry lock")
            .to_json(now, self.offline_after)
        {
            Value::Array(devices) => devices,
            _ => Vec::new(),
        }
    }

    fn alerts(&self) -> Value {
        let alerts = self.alerts.lock().expect("alerts lock");
        let mut current: Vec<Value> = alerts.current.values().cloned().collect();
        if let Some(hub) = &self.hub_alerts {
            let engine = hub.engine.lock().expect("engine lock");
            for record in engine.alerts() {
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
        let history: Vec<Value> = alerts.history.iter().rev().cloned().collect();
        json!({ "alerts": current, "history": history })
    }

    fn silence(
        &self,
        request: outpost_web::SilenceRequest,
        by: &outpost_web::Identity,
    ) -> Result<Value, String> {
        let key = self
            .devices
            .get()
            .key(&request.device)
            .ok_or_else(|| format!("device: {:?} is not enrolled", request.device))?;
        let now = outpost::timearg::now_ms();
        // Ids grow per device and survive restarts: the device refuses any id it has seen.
        let counter = format!("cmd-id/{}", request.device);
        let last = self
            .store
            .state_get(StateTable::DeviceRegistry, &counter)
            .map_err(|e| e.to_string())?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_le_bytes);
        // A fresh hub store must still count above what the device applied: start at the time.
        let id = (last + 1).max(u64::try_from(now).unwrap_or(0));
        let silence_id = format!("hub-{id}");
        let command = outpost_sync::Command {
            device: request.device.clone(),
            id,
            issued_ms: now,
            expires_ms: now + COMMAND_LIFETIME_MS,
            action: outpost_sync::Action::Silence(outpost_sync::Silence {
                id: silence_id.clone(),
                matchers: matchers(&request.matcher)?,
                starts_ms: request.starts_ms.unwrap_or(now),
                ends_ms: request.ends_ms,
                created_by: by.name.clone(),
                comment: request.comment.clone(),
            }),
        };
        let mut write = WriteBatch::default();
        write.put_state(
            StateTable::DeviceRegistry,
            counter,
            id.to_le_bytes().to_vec(),
        );
        write.put_state(
            StateTable::DeviceRegistry,
            format!("cmd/{}/{id:020}", request.device),
            serde_json::to_vec(&command).map_err(|e| e.to_string())?,
        );
        self.store.write(write).map_err(|e| e.to_string())?;
        self.store.sync().map_err(|e| e.to_string())?;
        let version = self.version_of(&request.device);
        self.publish_command(&request.device, &command.encode_as(&key, version));
        tracing::info!(device = request.device, id, by = by.name, "silence sent");
        Ok(json!({
            "device": request.device,
            "command_id": id,
            "silence_id": silence_id,
            "match": request.matcher,
            "starts_ms": request.starts_ms.unwrap_or(now),
            "ends_ms": request.ends_ms,
            "created_by": by.name,
        }))
    }

    fn metrics(&self) -> String {
        let now = outpost::timearg::now_ms();
        self.registry
            .lock()
            .expect("registry lock")
            .metrics(now, self.offline_after)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.ingested.subscribe()
    }

    fn now_ms(&self) -> i64 {
        outpost::timearg::now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn silence_matchers_come_from_a_selector() {
        let parsed = matchers(r#"{alertname="cpu_high",cpu=~"1|2"}"#).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].op, outpost_sync::MatchOp::Regex);
        assert!(matchers("cpu_high").is_err());
        assert!(matchers("{").is_err());
    }
}
