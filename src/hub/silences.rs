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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetSilence {
    pub id: String,
    /// A device, or `*` for the whole fleet.
    pub device: String,
    /// A selector over the devices' labels and `device`; empty: every device `device` names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_match: String,
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

    /// Whether it is for `device`, labelled `labels` (`None`: not enrolled).
    fn covers(&self, device: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        if self.device != "*" && self.device != device {
            return false;
        }
        let text = self.device_match.trim();
        if text.is_empty() || text == "{}" {
            return true;
        }
        let Some(labels) = labels else {
            return false;
        };
        let mut all = labels.clone();
        all.insert("device".into(), device.to_string());
        match (
            outpost_storage::Selector::parse(text),
            outpost_storage::SeriesKey::new("device", all),
        ) {
            (Ok(selector), Ok(key)) => selector.matches(&key),
            _ => false,
        }
    }
}

/// Checks a silence request's device and selectors; the devices it covers now.
fn covered_devices(
    request: &mut SilenceRequest,
    devices: &super::devices::DevicesFile,
) -> Result<Vec<String>, WebError> {
    let bad = |what: String| Err(WebError::BadRequest(what));
    let device_match = request.device_match.trim();
    if !device_match.is_empty() {
        if let Err(error) = outpost_storage::Selector::parse(device_match) {
            return bad(format!("device_match: {error}"));
        }
    }
    if request.device.is_empty() {
        if device_match.is_empty() {
            return bad(
                "device: name one, or \"*\" for the whole fleet, or give device_match".into(),
            );
        }
        request.device = "*".into();
    }
    if request.device != "*" && devices.key(&request.device).is_none() {
        return bad(format!(
            "device: {:?} is not enrolled (use \"*\" for the whole fleet)",
            request.device
        ));
    }
    // The devices do not know the labels the hub gives them: a matcher on one would never hold.
    let matchers = super::fleet::matchers(&request.matcher).map_err(WebError::BadRequest)?;
    for matcher in &matchers {
        let name = &matcher.label;
        if devices.device.values().any(|d| d.labels.contains_key(name)) {
            return bad(format!(
                "match: {name:?} is a label the hub gives devices; select them with \
                 device_match, e.g. {{{name}=\"...\"}}"
            ));
        }
    }
    let probe = FleetSilence {
        device: request.device.clone(),
        device_match: device_match.to_string(),
        ..FleetSilence::default()
    };
    Ok(devices
        .names()
        .into_iter()
        .filter(|name| probe.covers(name, devices.labels(name)))
        .collect())
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
        let mut request = request;
        let devices = covered_devices(&mut request, &self.devices.get())?;
        let _numbering = self.commands.lock().expect("commands lock");
        let mut write = WriteBatch::default();
        let number = next_number(self, &RegistryKey::SilenceCounter, now)?;
        write.put(&RegistryKey::SilenceCounter, number.to_le_bytes().to_vec());
        let mut silence = FleetSilence {
            id: format!("hub-{number}"),
            device: request.device,
            device_match: request.device_match.trim().to_string(),
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
        Ok(view(
            silence,
            now,
            &self.current_alerts(),
            &self.devices.get(),
        ))
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
        let devices = self.devices.get();
        all.into_iter()
            .map(|s| view(s, now, &alerts, &devices))
            .collect()
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
        Ok(view(
            silence,
            now,
            &self.current_alerts(),
            &self.devices.get(),
        ))
    }

    /// A device has come online: every silence still to hold that covers it and that it has not
    /// been sent (it was enrolled or labelled later) goes to it now.
    pub fn silences_for_newcomer(&self, device: &str) {
        let now = outpost::timearg::now_ms();
        let devices = self.devices.get();
        let missing: Vec<FleetSilence> = self
            .stored_silences()
            .into_iter()
            .filter(|s| s.covers(device, devices.labels(device)) && !s.sent.contains_key(device))
            .filter(|s| s.state(now) != "expired")
            .collect();
        if missing.is_empty() {
            return;
        }
        let _numbering = self.commands.lock().expect("commands lock");
        for silence in missing {
            self.resend(silence, &[device.to_string()], &[], now);
        }
    }

    /// The devices file changed: each silence still to hold goes to the devices its
    /// `device_match` now covers and ends on those it no longer does.
    pub fn reconcile_silences(&self) {
        let now = outpost::timearg::now_ms();
        let devices = self.devices.get();
        let _numbering = self.commands.lock().expect("commands lock");
        for silence in self.stored_silences() {
            if silence.state(now) == "expired" {
                continue;
            }
            let covered: Vec<String> = devices
                .names()
                .into_iter()
                .filter(|d| silence.covers(d, devices.labels(d)))
                .collect();
            let gained: Vec<String> = covered
                .iter()
                .filter(|d| !silence.sent.contains_key(*d))
                .cloned()
                .collect();
            let lost: Vec<String> = silence
                .sent
                .keys()
                .filter(|d| !covered.contains(d) && devices.key(d).is_some())
                .cloned()
                .collect();
            if !gained.is_empty() || !lost.is_empty() {
                self.resend(silence, &gained, &lost, now);
            }
        }
    }

    /// Sends `silence` to the devices `gained` and an `Expire` of it to those `lost`, and stores
    /// what it reached; the caller holds `self.commands`.
    fn resend(&self, mut silence: FleetSilence, gained: &[String], lost: &[String], now: i64) {
        let mut write = WriteBatch::default();
        let mut frames = Vec::new();
        let result = (|| {
            let action = Self::silence_action(&silence)?;
            for device in gained {
                let (id, frame) = self.command(device, action.clone(), now, &mut write)?;
                silence.sent.insert(device.clone(), id);
                frames.push((device.clone(), frame));
            }
            let expire = outpost_sync::Action::Expire {
                silence_id: silence.id.clone(),
            };
            for device in lost {
                let (_, frame) = self.command(device, expire.clone(), now, &mut write)?;
                silence.sent.remove(device);
                frames.push((device.clone(), frame));
            }
            self.commit(Some(&silence), write, frames)
        })();
        match result {
            Ok(()) => tracing::info!(
                silence = silence.id,
                gained = gained.len(),
                lost = lost.len(),
                "silence follows its devices"
            ),
            Err(error) => tracing::warn!(silence = silence.id, "sending a silence: {error}"),
        }
    }

    /// The fleet's alerts now, the devices' and the hub's.
    fn current_alerts(&self) -> Vec<serde_json::Value> {
        outpost_web::Fleet::alerts(self).alerts
    }
}

/// A silence as the API shows it, with the alerts of `alerts` it holds back.
fn view(
    silence: FleetSilence,
    now: i64,
    alerts: &[serde_json::Value],
    devices: &super::devices::DevicesFile,
) -> SilenceView {
    let selector = outpost_storage::Selector::parse(&silence.matcher).ok();
    let silencing = alerts
            .iter()
            .filter(|a| a["silenced"] == true && matches!(a["state"].as_str(), Some("firing" | "pending")))
            .filter(|a| a["device"].as_str().is_some_and(|d| silence.covers(d, devices.labels(d))))
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
        device_match: silence.device_match,
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
