//! Silences for the fleet: the hub's record of each silence it made (what, for which devices,
//! who, when and why, and the command that carried it to each device), and the signed commands
//! themselves. A fleet-wide silence also goes to each device that comes online while it holds,
//! enrolled later or not; ending one sends every device it reached an `Expire`.

#![allow(clippy::disallowed_methods)] // runs on the blocking pool (outpost_web::Fleet)

use std::collections::BTreeMap;

use outpost_storage::WriteBatch;
use outpost_sync::HubToDevice;
use outpost_web::{Identity, SilenceRequest, SilenceView, WebError};
use serde::{Deserialize, Serialize};

use super::fleet::HubFleet;
use super::keys::RegistryKey;

/// What the hub keeps of a silence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSilence {
    pub id: String,
    /// A device, or `*` for the whole fleet.
    pub device: String,
    #[serde(rename = "match")]
    pub matcher: String,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub created_by: String,
    pub created_ms: i64,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub expired_ms: Option<i64>,
    #[serde(default)]
    pub expired_by: Option<String>,
    /// The command that carried it to each device.
    #[serde(default)]
    pub sent: BTreeMap<String, u64>,
}

impl FleetSilence {
    fn state(&self, now_ms: i64) -> &'static str {
        if self.expired_ms.is_some() || self.ends_ms <= now_ms {
            "expired"
        } else if self.starts_ms > now_ms {
            "pending"
        } else {
            "active"
        }
    }

    fn covers(&self, device: &str) -> bool {
        self.device == "*" || self.device == device
    }
}

/// The next number of `counter`: above the last one given and at least `now` (so that a fresh
/// store still counts above what devices applied from an older one).
fn next_number(fleet: &HubFleet, counter: &RegistryKey, now: i64) -> Result<u64, WebError> {
    let last = fleet
        .store
        .get(counter)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_le_bytes);
    Ok((last + 1).max(u64::try_from(now).unwrap_or(0)))
}

impl HubFleet {
    /// Numbers `action` for `device` and adds the command to `write`; the caller holds
    /// `self.commands`, writes and syncs, then publishes the returned frame.
    pub(super) fn command(
        &self,
        device: &str,
        action: outpost_sync::Action,
        now: i64,
        write: &mut WriteBatch,
    ) -> Result<(u64, Vec<u8>), WebError> {
        let key =
            self.devices.get().key(device).ok_or_else(|| {
                WebError::BadRequest(format!("device: {device:?} is not enrolled"))
            })?;
        let counter = RegistryKey::CommandCounter(device);
        let id = next_number(self, &counter, now)?;
        let command = outpost_sync::Command {
            device: device.to_string(),
            id,
            issued_ms: now,
            expires_ms: now + super::fleet::COMMAND_LIFETIME_MS,
            action,
        };
        write.put(&counter, id.to_le_bytes().to_vec());
        write.put(
            &RegistryKey::Command { device, id },
            serde_json::to_vec(&command).expect("commands serialize"),
        );
        Ok((id, command.encode_as(&key, self.version_of(device))))
    }

    fn silence_action(silence: &FleetSilence) -> Result<outpost_sync::Action, WebError> {
        Ok(outpost_sync::Action::Silence(outpost_sync::Silence {
            id: silence.id.clone(),
            matchers: super::fleet::matchers(&silence.matcher).map_err(WebError::BadRequest)?,
            starts_ms: silence.starts_ms,
            ends_ms: silence.ends_ms,
            created_by: silence.created_by.clone(),
            comment: silence.comment.clone(),
        }))
    }

    /// Stores `silence` with the commands in `write`, durably, then sends the frames.
    fn commit(
        &self,
        silence: Option<&FleetSilence>,
        mut write: WriteBatch,
        frames: Vec<(String, Vec<u8>)>,
    ) -> Result<(), WebError> {
        if let Some(silence) = silence {
            write.put(
                &RegistryKey::Silence(&silence.id),
                serde_json::to_vec(silence).expect("silences serialize"),
            );
        }
        // The hub's own disk failing is its fault (a 500), not the request's.
        self.store.write(write)?;
        self.store.sync()?;
        for (device, frame) in frames {
            self.publish_command(&device, &frame);
        }
        Ok(())
    }

    /// `POST /api/silences`: a silence for one device or the whole fleet.
    pub fn create_silence(
        &self,
        request: SilenceRequest,
        by: &Identity,
    ) -> Result<SilenceView, WebError> {
        let now = outpost::timearg::now_ms();
        let devices: Vec<String> = if request.device == "*" {
            self.devices.get().names()
        } else if self.devices.get().key(&request.device).is_some() {
            vec![request.device.clone()]
        } else {
            return Err(WebError::BadRequest(format!(
                "device: {:?} is not enrolled (use \"*\" for the whole fleet)",
                request.device
            )));
        };
        let _numbering = self.commands.lock().expect("commands lock");
        let mut write = WriteBatch::default();
        let number = next_number(self, &RegistryKey::SilenceCounter, now)?;
        write.put(&RegistryKey::SilenceCounter, number.to_le_bytes().to_vec());
        let mut silence = FleetSilence {
            id: format!("hub-{number}"),
            device: request.device,
            matcher: request.matcher,
            starts_ms: request.starts_ms.unwrap_or(now),
            ends_ms: request.ends_ms,
            created_by: by.name.clone(),
            created_ms: now,
            comment: request.comment,
            expired_ms: None,
            expired_by: None,
            sent: BTreeMap::new(),
        };
        let action = Self::silence_action(&silence)?;
        let mut frames = Vec::new();
        for device in devices {
            let (id, frame) = self.command(&device, action.clone(), now, &mut write)?;
            silence.sent.insert(device.clone(), id);
            frames.push((device, frame));
        }
        self.commit(Some(&silence), write, frames)?;
        tracing::info!(
            silence = silence.id,
            device = silence.device,
            by = by.name,
            "silence sent"
        );
        Ok(view(silence, now, &self.current_alerts()))
    }

    fn stored_silences(&self) -> Vec<FleetSilence> {
        let Ok(entries) = self.store.list(&RegistryKey::Silences) else {
            return Vec::new();
        };
        entries
            .into_iter()
            .filter_map(|(_, bytes)| serde_json::from_slice(&bytes).ok())
            .collect()
    }

    /// `GET /api/silences`: every silence, newest first.
    pub fn list_silences(&self) -> Vec<SilenceView> {
        let now = outpost::timearg::now_ms();
        let mut all = self.stored_silences();
        all.sort_by_key(|s| std::cmp::Reverse(s.created_ms));
        let alerts = self.current_alerts();
        all.into_iter().map(|s| view(s, now, &alerts)).collect()
    }

    /// Ends a silence on every device it reached; `delete` also forgets it.
    pub fn end_silence(
        &self,
        id: &str,
        by: &Identity,
        delete: bool,
    ) -> Result<SilenceView, WebError> {
        let now = outpost::timearg::now_ms();
        let _numbering = self.commands.lock().expect("commands lock");
        let mut silence: FleetSilence = self
            .store
            .get(&RegistryKey::Silence(id))?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| WebError::NotFound(format!("no silence {id:?}")))?;
        let mut write = WriteBatch::default();
        let mut frames = Vec::new();
        if silence.state(now) != "expired" {
            let action = outpost_sync::Action::Expire {
                silence_id: silence.id.clone(),
            };
            for device in silence.sent.keys() {
                // A device revoked since has nothing left to end.
                if self.devices.get().key(device).is_some() {
                    let (_, frame) = self.command(device, action.clone(), now, &mut write)?;
                    frames.push((device.clone(), frame));
                }
            }
            silence.expired_ms = Some(now);
            silence.expired_by = Some(by.name.clone());
        }
        if delete {
            write.remove(&RegistryKey::Silence(id));
            self.commit(None, write, frames)?;
        } else {
            self.commit(Some(&silence), write, frames)?;
        }
        tracing::info!(silence = id, by = by.name, delete, "silence ended");
        Ok(view(silence, now, &self.current_alerts()))
    }

    /// A device has come online: every fleet-wide silence still to hold that it has not been
    /// sent (it was enrolled later) goes to it now.
    pub fn silences_for_newcomer(&self, device: &str) {
        let now = outpost::timearg::now_ms();
        let missing: Vec<FleetSilence> = self
            .stored_silences()
            .into_iter()
            .filter(|s| s.covers(device) && !s.sent.contains_key(device))
            .filter(|s| s.state(now) != "expired")
            .collect();
        if missing.is_empty() {
            return;
        }
        let _numbering = self.commands.lock().expect("commands lock");
        for mut silence in missing {
            let mut write = WriteBatch::default();
            let sent = Self::silence_action(&silence)
                .and_then(|action| self.command(device, action, now, &mut write));
            let result = sent.and_then(|(id, frame)| {
                silence.sent.insert(device.to_string(), id);
                self.commit(Some(&silence), write, vec![(device.to_string(), frame)])
            });
            if let Err(error) = result {
                tracing::warn!(
                    device,
                    silence = silence.id,
                    "sending a fleet silence: {error}"
                );
            }
        }
    }

    /// The fleet's alerts now, the devices' and the hub's.
    fn current_alerts(&self) -> Vec<serde_json::Value> {
        outpost_web::Fleet::alerts(self).alerts
    }
}

/// A silence as the API shows it, with the alerts of `alerts` it holds back.
fn view(silence: FleetSilence, now: i64, alerts: &[serde_json::Value]) -> SilenceView {
    let selector = outpost_storage::Selector::parse(&silence.matcher).ok();
    let silencing = alerts
            .iter()
            .filter(|a| a["silenced"] == true && matches!(a["state"].as_str(), Some("firing" | "pending")))
            .filter(|a| a["device"].as_str().is_some_and(|d| silence.covers(d)))
            .filter(|a| {
                let mut labels: Vec<(String, String)> = a["labels"]
                    .as_object()
                    .map(|l| {
                        l.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                labels.push(("alertname".into(), a["rule"].as_str().unwrap_or("").into()));
                let key = outpost_storage::SeriesKey::new("alert", labels);
                matches!((&selector, key), (Some(selector), Ok(key)) if selector.matches(&key))
            })
            .map(|a| serde_json::json!({ "device": a["device"], "rule": a["rule"], "instance": a["instance"] }))
            .collect();
    let command_id = (silence.sent.len() == 1)
        .then(|| silence.sent.values().next().copied())
        .flatten();
    SilenceView {
        state: silence.state(now),
        silence_id: silence.id.clone(),
        command_id,
        silencing,
        id: silence.id,
        device: silence.device,
        matcher: silence.matcher,
        starts_ms: silence.starts_ms,
        ends_ms: silence.ends_ms,
        created_by: silence.created_by,
        created_ms: silence.created_ms,
        comment: silence.comment,
        expired_ms: silence.expired_ms,
        expired_by: silence.expired_by,
        sent: silence.sent,
    }
}
