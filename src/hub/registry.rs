//! The hub's view of its fleet: when each device was first and last seen, whether it is online
//! (its retained `status`, its last will, and silence past `offline_after`), its metadata, how
//! far behind its data is, how far its clock is off, and what was rejected from it.

#![deny(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outpost_storage::{Store, WriteBatch};

use super::keys::RegistryKey;
use outpost_sync::topic::Kind;
use outpost_sync::{AckStatus, BatchHeader};
use outpost_web::DeviceState;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// When the hub first heard of the device (its clock).
    pub first_seen_ms: i64,
    /// When the hub last heard anything from the device: a batch, a status, meta or an alert.
    pub last_seen_ms: i64,
    /// From the retained `status`.
    pub status: Option<outpost_sync::State>,
    /// When that status came (the hub's clock).
    #[serde(default)]
    pub status_ms: Option<i64>,
    /// The device's last retained `meta`, as it sent it.
    pub meta: Option<serde_json::Value>,
    /// Batches taken into the store.
    pub batches: u64,
    /// Batches that came again (a resend after a lost ack) and were discarded.
    pub duplicate_batches: u64,
    /// Samples stored from its batches.
    pub samples: u64,
    /// Messages refused: a bad signature, a wrong addressee, a malformed frame.
    pub rejected: u64,
    /// Why the last refused message was refused.
    pub last_rejection: Option<String>,
    /// Hub receive time minus the device's wall clock at send, ms.
    pub clock_offset_ms: Option<i64>,
    /// Age of the oldest data the device has not had acknowledged, as of its last batch, ms.
    pub sync_lag_ms: Option<i64>,
    /// The outbox epoch of its last batch: a new one when the device's store starts over.
    pub epoch: u64,
    /// The sequence number of its last batch within that epoch.
    pub last_seq: u64,
    /// Timestamps stored corrected for the device's wrong clock.
    #[serde(default)]
    pub clock_corrected_samples: u64,
    /// Timestamps stored as they came although implausible (nothing said how far off).
    #[serde(default)]
    pub implausible_samples: u64,
    /// The protocol version of its last batch.
    #[serde(default)]
    pub protocol: u16,
    /// When its last batch came.
    #[serde(default)]
    pub last_data_ms: Option<i64>,
    /// The boot and number of its last status taken, so that an older one is refused.
    #[serde(default)]
    pub status_order: outpost_sync::StatusOrder,
    /// Statuses refused as older than one taken: a last will that came late, or an old
    /// status published again. Not counted as rejected: a flaky link makes them too.
    #[serde(default)]
    pub stale_statuses: u64,
    /// Its alert messages have come signed: from then on an unsigned one is refused. (Agents
    /// from before alerts were signed send them unsigned.) Kept here so that a restart of the
    /// hub does not forget it.
    #[serde(default)]
    pub signs_alerts: bool,
    /// Its samples that the remote storage refused for good, waiting in the hub's
    /// dead-letter table to be sent again.
    #[serde(default)]
    pub refused_samples: u64,
}

/// What came of a verified `status` or `meta` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// A status saying the device is online: it may have missed commands.
    Online,
    /// Any other status, or meta.
    Other,
    /// Nothing new: the same status again, or an older one (counted as stale).
    Nothing,
}

#[derive(Debug, Default)]
pub struct Registry {
    devices: BTreeMap<String, DeviceRecord>,
    /// A connected device whose last batch is older than this is `stale`.
    pub stale_after: Duration,
    changed: bool,
    /// Rejections are logged once a minute per device, not once per message.
    last_logged: BTreeMap<String, Instant>,
    /// Batches the hub could not store (its own disk full or failing): the hub's fault, not the
    /// device's, so not counted as rejected; the device resends them.
    store_write_errors: u64,
    /// Batches the remote storage did not take within `retry_for`: left to their devices.
    remote_write_errors: u64,
    /// What forwarding the kept log lines to Loki came to (`[loki]`).
    pub loki: super::loki::LokiCounts,
    /// Batches this hub took itself, of any device: its share of a shared group's load.
    taken_batches: u64,
    /// Hubs on a shared subscription count batches from the acks that all of them read, not
    /// from the batches each one took, so that every hub shows the fleet's counts.
    pub counts_from_acks: bool,
    /// Per device, the acks already counted (epoch, sequence number, duplicate), so that an
    /// ack delivered twice counts once: the recent ones only (`COUNTED_ACKS_KEPT`).
    counted_acks: BTreeMap<String, (u64, std::collections::BTreeSet<(u64, bool)>)>,
}

/// How many sequence numbers back an ack is still recognised as counted. An ack delivered
/// again comes with the broker's in-flight window, far fewer.
const COUNTED_ACKS_KEPT: u64 = 4096;

/// A metric family of `/metrics`: name, type, help, and the value per device.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&DeviceRecord) -> Option<f64>,
);

impl Registry {
    /// The registry as the store last held it.
    pub fn load(store: &Store) -> Registry {
        let mut registry = Registry::default();
        if let Ok(Some(index)) = store.get(&RegistryKey::Index) {
            let names: Vec<String> = serde_json::from_slice(&index).unwrap_or_default();
            for name in names {
                if let Ok(Some(bytes)) = store.get(&RegistryKey::Device(&name)) {
                    if let Ok(record) = serde_json::from_slice(&bytes) {
                        registry.devices.insert(name, record);
                    }
                }
            }
        }
        registry
    }

    /// The devices with a record.
    pub fn names(&self) -> Vec<String> {
        self.devices.keys().cloned().collect()
    }

    /// The protocol version of the device's last batch (0 before its first).
    pub fn protocol(&self, device: &str) -> u16 {
        self.devices.get(device).map_or(0, |r| r.protocol)
    }

    pub fn persist_if_changed(&mut self, store: &std::sync::Arc<Store>) {
        if !self.changed {
            return;
        }
        let mut write = WriteBatch::default();
        let names: Vec<&String> = self.devices.keys().collect();
        write.put(
            &RegistryKey::Index,
            serde_json::to_vec(&names).expect("names serialize"),
        );
        for (name, record) in &self.devices {
            write.put(
                &RegistryKey::Device(name),
                serde_json::to_vec(record).expect("records serialize"),
            );
        }
        // Every record goes each time, so a write that fails is made good by the next one.
        self.changed = false;
        super::write_in_background(store, write, "the device registry");
    }

    fn record(&mut self, device: &str) -> &mut DeviceRecord {
        let now = outpost::timearg::now_ms();
        self.changed = true;
        let record = self
            .devices
            .entry(device.to_string())
            .or_insert_with(|| DeviceRecord {
                first_seen_ms: now,
                ..DeviceRecord::default()
            });
        record.last_seen_ms = now;
        record
    }

    /// A batch stored (or refused) for `device`, received at `now` (the hub's clock).
    pub fn batch(
        &mut self,
        device: &str,
        (header, status, (clock_corrected, implausible), protocol): (
            &BatchHeader,
            &AckStatus,
            (u64, u64),
            u16,
        ),
        now: i64,
    ) {
        let counts_from_acks = self.counts_from_acks;
        self.taken_batches += 1;
        let record = self.record(device);
        record.last_data_ms = Some(now);
        record.clock_corrected_samples += clock_corrected;
        record.implausible_samples += implausible;
        record.protocol = protocol;
        record.epoch = header.epoch;
        record.last_seq = record.last_seq.max(header.seq);
        record.clock_offset_ms = Some(now - header.sent_wall_ms);
        record.sync_lag_ms = header
            .oldest_unacked_ms
            .map(|oldest| (header.sent_wall_ms - oldest).max(0));
        if !counts_from_acks {
            record.batches += 1;
            if let AckStatus::Stored { samples, duplicate } = status {
                record.samples += samples;
                if *duplicate {
                    record.duplicate_batches += 1;
                }
            }
        }
    }

    /// A hub of the shared group (this one too) stored a batch of `device` and acknowledged
    /// it: counted once however often the broker hands the ack over (`counts_from_acks`).
    pub fn ack_counted(&mut self, device: &str, ack: &outpost_sync::Ack) {
        let AckStatus::Stored { samples, duplicate } = ack.status else {
            return;
        };
        if !self.counts_from_acks {
            return;
        }
        let (epoch, seen) = self.counted_acks.entry(device.to_string()).or_default();
        if *epoch != ack.epoch {
            // A late ack of one of the store's recent starts (its epochs grow by one a start)
            // is not counted; any other epoch is the device's store starting over, at a
            // random epoch that may lie below.
            if ack.epoch < *epoch && *epoch - ack.epoch <= outpost_sync::outbox::SAME_STORE_EPOCHS {
                return;
            }
            *epoch = ack.epoch;
            seen.clear();
        }
        if seen
            .first()
            .is_some_and(|(oldest, _)| ack.seq < *oldest && seen.len() as u64 >= COUNTED_ACKS_KEPT)
            || !seen.insert((ack.seq, duplicate))
        {
            return;
        }
        while seen.len() as u64 > COUNTED_ACKS_KEPT {
            seen.pop_first();
        }
        let record = self.record(device);
        record.batches += 1;
        record.samples += samples;
        if duplicate {
            record.duplicate_batches += 1;
        }
    }

    /// A verified `status` or `meta` message of `device`. A status is taken only if it is
    /// newer than the last one taken ([`outpost_sync::StatusOrder`]); an older one is counted
    /// in `stale_statuses`. Returns whether it was taken, or why it is malformed.
    pub fn retained(
        &mut self,
        device: &str,
        kind: Kind,
        json: &str,
    ) -> Result<Taken, &'static str> {
        let value = serde_json::from_str::<serde_json::Value>(json)
            .map_err(|_| "a status or meta message that is not JSON")?;
        if kind != Kind::Status {
            self.record(device).meta = Some(value);
            return Ok(Taken::Other);
        }
        let status = serde_json::from_value::<outpost_sync::Status>(value)
            .map_err(|_| "a status message without the status fields")?;
        // Judged before the record is touched: a refused status does not make the device look
        // alive.
        let mut order = self
            .devices
            .get(device)
            .map(|record| record.status_order.clone())
            .unwrap_or_default();
        match order.admit(&status) {
            outpost_sync::StatusVerdict::Take => {
                let record = self.record(device);
                record.status_order = order;
                let taken = match status.state {
                    outpost_sync::State::Online => Taken::Online,
                    outpost_sync::State::Offline => Taken::Other,
                };
                record.status = Some(status.state);
                record.status_ms = Some(outpost::timearg::now_ms());
                Ok(taken)
            }
            outpost_sync::StatusVerdict::Again => Ok(Taken::Nothing),
            outpost_sync::StatusVerdict::Malformed(reason) => Err(reason),
            outpost_sync::StatusVerdict::Replay(reason) => {
                tracing::debug!(device, reason, "a status refused");
                if let Some(record) = self.devices.get_mut(device) {
                    record.stale_statuses += 1;
                    self.changed = true;
                }
                Ok(Taken::Nothing)
            }
        }
    }

    pub fn signs_alerts(&self, device: &str) -> bool {
        self.devices.get(device).is_some_and(|r| r.signs_alerts)
    }

    /// `device` has sent a signed alert message.
    pub fn mark_signs_alerts(&mut self, device: &str) {
        if !self.signs_alerts(device) {
            self.record(device).signs_alerts = true;
        }
    }

    /// Another hub of the shared group took a batch of `device` at `now`: its data flows, as
    /// this hub would know had the broker handed the batch here. (Its counts: `ack_counted`.)
    pub fn data_arrived(&mut self, device: &str, now: i64) {
        let record = self.record(device);
        record.last_data_ms = Some(record.last_data_ms.map_or(now, |at| at.max(now)));
    }

    /// `samples` of `device` went to the dead-letter table.
    pub fn refused(&mut self, device: &str, samples: u64) {
        self.record(device).refused_samples += samples;
        let log_key = format!("refused/{device}");
        let log = self
            .last_logged
            .get(&log_key)
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
        if log {
            self.last_logged.insert(log_key, Instant::now());
            tracing::warn!(
                device,
                samples,
                "the remote storage refused samples for good; kept in the hub's dead-letter table \
                 (docs/scale.md says which engine settings take them)"
            );
        }
    }

    /// The dead-letter table's counts per device, as the table holds them now.
    pub fn set_refused(&mut self, waiting: &BTreeMap<String, u64>) {
        let names: Vec<String> = self.devices.keys().cloned().collect();
        for name in names {
            let now = waiting.get(&name).copied().unwrap_or(0);
            if self.devices[&name].refused_samples != now {
                self.record(&name).refused_samples = now;
            }
        }
        for (name, samples) in waiting {
            if !self.devices.contains_key(name) {
                self.record(name).refused_samples = *samples;
            }
        }
    }

    /// Counts a rejected message. Only enrolled devices get a record: a flood of made-up ids
    /// must not grow the registry.
    /// A batch that the hub's own store refused: counted for the hub, the device not blamed.
    pub fn store_failed(&mut self, device: &str, error: &str) {
        self.store_write_errors += 1;
        tracing::error!(
            device,
            "the hub's store refused a batch, not acknowledged (the device resends it): {error}"
        );
    }

    /// A batch the remote storage did not take: the hub's (or the engine's) fault, not the
    /// device's; the device keeps it and sends it again.
    pub fn remote_failed(&mut self, device: &str, error: &str) {
        self.remote_write_errors += 1;
        let log = self
            .last_logged
            .get("remote")
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
        if log {
            self.last_logged.insert("remote".into(), Instant::now());
            tracing::error!(
                device,
                failures = self.remote_write_errors,
                "the remote storage did not take a batch, not acknowledged (the device keeps it \
                 and sends it again): {error}"
            );
        }
    }

    pub fn rejected(&mut self, device: &str, reason: &str, enrolled: bool) {
        // Names that are not enrolled share one line a minute: anyone may make up any number
        // of them, and none may grow this map.
        let log_key = if enrolled { device } else { "" };
        let log = self
            .last_logged
            .get(log_key)
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
        if log {
            if enrolled {
                tracing::warn!(
                    device,
                    reason,
                    "rejected a message (further ones this minute are only counted)"
                );
            } else {
                tracing::warn!(
                    device,
                    reason,
                    "rejected a message for a device that is not enrolled (further ones this minute, for any such name, are dropped)"
                );
            }
            self.last_logged.insert(log_key.to_string(), Instant::now());
        }
        if enrolled {
            // A rejected message does not make the device look alive.
            self.changed = true;
            let record = self.devices.entry(device.to_string()).or_default();
            record.rejected += 1;
            record.last_rejection = Some(reason.to_string());
        }
    }

    /// `online` when its status says so and it was heard from within `offline_after`.
    /// and `stale` when it is connected but its data stopped more than `stale_after` ago.
    fn state(&self, record: &DeviceRecord, now: i64, offline_after: Duration) -> DeviceState {
        let silent = now - record.last_seen_ms > offline_after.as_millis() as i64;
        let no_data = record
            .last_data_ms
            .is_none_or(|at| now - at > self.stale_after.as_millis() as i64);
        // Data that came after an `offline` status says the device is connected after all (an
        // old status sent again, or its last will delivered late).
        let data_since_status = record
            .last_data_ms
            .zip(record.status_ms)
            .is_some_and(|(data, status)| data > status);
        match record.status {
            Some(outpost_sync::State::Offline) if !data_since_status => DeviceState::Offline,
            _ if silent => DeviceState::Offline,
            _ if no_data => DeviceState::Stale,
            _ => DeviceState::Online,
        }
    }

    /// Every device, as the dashboard shows it.
    pub fn views(&self, now: i64, offline_after: Duration) -> Vec<outpost_web::DeviceView> {
        self.devices
            .iter()
            .map(|(name, record)| {
                let mut fields = match serde_json::to_value(record) {
                    Ok(serde_json::Value::Object(fields)) => fields,
                    _ => serde_json::Map::new(),
                };
                // Bookkeeping for replays, not for people.
                fields.remove("status_order");
                outpost_web::DeviceView {
                    device: name.clone(),
                    state: self.state(record, now, offline_after),
                    record: fields,
                }
            })
            .collect()
    }

    /// Every family's value per device: (family index, device, value).
    fn values(&self, now: i64, offline_after: Duration) -> Vec<(usize, &str, f64)> {
        let mut out = Vec::new();
        for (i, (name, _, _, value)) in Self::families().into_iter().enumerate() {
            for (device, record) in &self.devices {
                let value = if name == "outpost_hub_device_online" {
                    Some(f64::from(
                        self.state(record, now, offline_after) != DeviceState::Offline,
                    ))
                } else {
                    value(record)
                };
                if let Some(value) = value {
                    out.push((i, device.as_str(), value));
                }
            }
        }
        out
    }

    /// The per-device figures as samples (`instance` = device), for the hub's alert rules.
    pub fn samples(
        &self,
        now: i64,
        offline_after: Duration,
    ) -> Vec<(outpost_storage::SeriesKey, f64)> {
        let families = Self::families();
        let hub_wide = [
            (
                "outpost_hub_store_write_errors_total",
                self.store_write_errors,
            ),
            (
                "outpost_hub_remote_write_errors_total",
                self.remote_write_errors,
            ),
            ("outpost_hub_taken_batches_total", self.taken_batches),
            ("outpost_hub_loki_lines_total", self.loki.sent),
            ("outpost_hub_loki_refused_lines_total", self.loki.refused),
            ("outpost_hub_loki_missed_lines_total", self.loki.missed),
            ("outpost_hub_loki_errors_total", self.loki.errors),
        ]
        .into_iter()
        .filter_map(|(name, value)| {
            Some((
                outpost_storage::SeriesKey::new(name, Vec::new()).ok()?,
                value as f64,
            ))
        });
        self.values(now, offline_after)
            .into_iter()
            .filter_map(|(i, device, value)| {
                let labels = [("instance".to_string(), device.to_string())];
                Some((
                    outpost_storage::SeriesKey::new(families[i].0, labels).ok()?,
                    value,
                ))
            })
            .chain(hub_wide)
            .collect()
    }

    pub fn metrics(&self, now: i64, offline_after: Duration) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        let values = self.values(now, offline_after);
        for (i, (name, kind, help, _)) in Self::families().into_iter().enumerate() {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (_, device, value) in values.iter().filter(|v| v.0 == i) {
                let _ = writeln!(text, "{name}{{instance=\"{device}\"}} {value}");
            }
        }
        let _ = writeln!(
            text,
            "# HELP outpost_hub_store_write_errors_total Batches the hub's own store refused (full disk, I/O error); not acknowledged, so the devices resend them.\n# TYPE outpost_hub_store_write_errors_total counter\noutpost_hub_store_write_errors_total {}",
            self.store_write_errors
        );
        let _ = writeln!(
            text,
            "# HELP outpost_hub_remote_write_errors_total Batches the remote storage did not take within remote_write.retry_for; not acknowledged, so the devices resend them.\n# TYPE outpost_hub_remote_write_errors_total counter\noutpost_hub_remote_write_errors_total {}",
            self.remote_write_errors
        );
        let _ = writeln!(
            text,
            "# HELP outpost_hub_taken_batches_total Batches this hub took itself, of every device (with a shared group, its share; the per-device counts are the group's).\n# TYPE outpost_hub_taken_batches_total counter\noutpost_hub_taken_batches_total {}",
            self.taken_batches
        );
        let loki = [
            ("outpost_hub_loki_lines_total", "Kept log lines Loki took ([loki]).", self.loki.sent),
            ("outpost_hub_loki_refused_lines_total", "Kept log lines Loki refused for good (too old, a limit); they stay on the hub.", self.loki.refused),
            ("outpost_hub_loki_missed_lines_total", "Kept log lines the hub's per-device quota pushed out before Loki took them.", self.loki.missed),
            ("outpost_hub_loki_errors_total", "Pushes to Loki that failed for now (connection, 429, 5xx); their lines go in a later round.", self.loki.errors),
        ];
        for (name, help, value) in loki {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        text
    }

    /// The per-device families: name, type, help, and the value from the device's record. One
    /// line a family, so that the table reads as one.
    #[rustfmt::skip]
    fn families() -> [Family; 10] {
        [
            ("outpost_hub_device_online", "gauge", "1 when the device is online.", |_| None),
            ("outpost_hub_batches_total", "counter", "Batches received from the device.", |r| Some(r.batches as f64)),
            ("outpost_hub_duplicate_batches_total", "counter", "Batches received again (resends) and discarded.", |r| Some(r.duplicate_batches as f64)),
            ("outpost_hub_samples_total", "counter", "Samples ingested from the device.", |r| Some(r.samples as f64)),
            ("outpost_hub_rejected_total", "counter", "Messages from the device that were rejected.", |r| Some(r.rejected as f64)),
            ("outpost_hub_stale_statuses_total", "counter", "Status messages refused as older than one already taken (a late last will, or a replay).", |r| Some(r.stale_statuses as f64)),
            ("outpost_hub_sync_lag_seconds", "gauge", "Age of the device's oldest unacknowledged data at its last batch.", |r| r.sync_lag_ms.map(|ms| ms as f64 / 1000.0)),
            ("outpost_hub_clock_corrected_samples_total", "counter", "Timestamps from the device stored corrected for its wrong clock.", |r| Some(r.clock_corrected_samples as f64)),
            ("outpost_hub_implausible_samples_total", "counter", "Timestamps from the device stored as they came although implausible (before 2024, or in the future), with nothing to correct them by.", |r| Some(r.implausible_samples as f64)),
            ("outpost_hub_remote_refused_samples", "gauge", "Samples of the device that the remote storage refused for good, waiting in the hub's dead-letter table to be sent again.", |r| Some(r.refused_samples as f64)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_hubs_count_each_acknowledged_batch_once() {
        let ack = |epoch, seq, samples, duplicate| outpost_sync::Ack {
            device: "d".into(),
            epoch,
            seq,
            status: AckStatus::Stored { samples, duplicate },
        };
        let mut registry = Registry {
            counts_from_acks: true,
            ..Registry::default()
        };
        // Epochs start at random: a store that starts over may start below the last.
        const E: u64 = 7 << 40;
        const OVER: u64 = 5 << 32;
        for (epoch, seq, samples, duplicate) in [
            (E, 1, 10, false),
            (E, 2, 20, false),
            (E, 1, 10, false), // the broker handed it over again
            (E, 2, 0, true),   // a resend, acknowledged as a duplicate
            (E, 2, 0, true),
            (E - 1, 9, 5, false), // an earlier start's, late
            (OVER, 1, 7, false),  // the device's store started over
        ] {
            registry.ack_counted("d", &ack(epoch, seq, samples, duplicate));
        }
        let record = &registry.devices["d"];
        assert_eq!(
            (record.batches, record.samples, record.duplicate_batches),
            (4, 37, 1)
        );
        // A batch this hub took itself is counted from its ack, not twice.
        let header = BatchHeader {
            device: "d".into(),
            epoch: OVER,
            seq: 2,
            boot_id: String::new(),
            sent_wall_ms: 0,
            sent_uptime_ms: 0,
            oldest_unacked_ms: None,
            body_bytes: 0,
            clock_steps: Vec::new(),
        };
        let stored = AckStatus::Stored {
            samples: 3,
            duplicate: false,
        };
        registry.batch("d", (&header, &stored, (0, 0), 2), 1_000);
        registry.ack_counted("d", &ack(OVER, 2, 3, false));
        assert_eq!(registry.devices["d"].batches, 5);
        assert_eq!(registry.devices["d"].samples, 40);
        // A hub alone counts the batches it takes, and no acks.
        let mut alone = Registry::default();
        alone.batch("d", (&header, &stored, (0, 0), 2), 1_000);
        alone.ack_counted("d", &ack(2, 3, 3, false));
        assert_eq!(alone.devices["d"].batches, 1);
        assert_eq!(alone.devices["d"].samples, 3);
        // However many acks, the memory of them is bounded.
        for seq in 10..10 + 2 * COUNTED_ACKS_KEPT {
            registry.ack_counted("d", &ack(2, seq, 1, false));
        }
        assert_eq!(registry.counted_acks["d"].1.len() as u64, COUNTED_ACKS_KEPT);
    }

    #[test]
    fn an_offline_status_followed_by_data_does_not_hide_a_connected_device() {
        let mut registry = Registry {
            stale_after: Duration::from_secs(60),
            ..Registry::default()
        };
        let offline_after = Duration::from_secs(300);
        let record = registry.record("dev-b");
        record.last_seen_ms = 10_000;
        record.last_data_ms = Some(9_000);
        record.status = Some(outpost_sync::State::Offline);
        record.status_ms = Some(10_000);
        let state =
            |registry: &Registry| registry.state(&registry.devices["dev-b"], 20_000, offline_after);
        assert_eq!(state(&registry), DeviceState::Offline);
        // A batch after the status: the device is there.
        registry.record("dev-b").last_data_ms = Some(11_000);
        assert_eq!(state(&registry), DeviceState::Online);
    }

    /// A hub of a shared group that takes none of a device's batches for a while hears of them
    /// through the other hubs' acks: the device stays online there, not stale; and an ack
    /// never moves the last data back in time or counts as this hub's batch.
    #[test]
    fn data_taken_by_another_hub_keeps_the_device_online_here() {
        let mut registry = Registry {
            stale_after: Duration::from_secs(30),
            ..Registry::default()
        };
        let offline_after = Duration::from_secs(120);
        let record = registry.record("dev-a");
        record.last_data_ms = Some(1_000);
        record.status = Some(outpost_sync::State::Online);
        record.status_ms = Some(500);
        let now = outpost::timearg::now_ms();
        registry.record("dev-a").last_seen_ms = now;
        let state =
            |registry: &Registry| registry.state(&registry.devices["dev-a"], now, offline_after);
        assert_eq!(state(&registry), DeviceState::Stale);
        registry.data_arrived("dev-a", now - 1_000);
        assert_eq!(state(&registry), DeviceState::Online);
        registry.data_arrived("dev-a", 2_000);
        assert_eq!(registry.devices["dev-a"].last_data_ms, Some(now - 1_000));
        assert_eq!(registry.devices["dev-a"].batches, 0);
    }

    proptest::proptest! {
        /// Statuses with any numbers and boots in any order: never a panic, and the one taken
        /// is the one shown.
        #[test]
        fn statuses_with_any_numbers_and_boots(
            statuses in proptest::collection::vec(
                (0..3u8, proptest::option::of(proptest::prelude::any::<u64>()), proptest::prelude::any::<bool>()),
                0..30,
            ),
        ) {
            let mut registry = Registry::default();
            for (boot, seq, online) in statuses {
                let seq = seq.map_or(String::new(), |seq| format!(r#","seq":{seq}"#));
                let (state, typed) = if online {
                    ("online", outpost_sync::State::Online)
                } else {
                    ("offline", outpost_sync::State::Offline)
                };
                let json = format!(
                    r#"{{"device":"d","state":"{state}","boot_id":"b{boot}","agent_version":"0","protocol":2,"at_ms":0{seq}}}"#
                );
                if let Ok(Taken::Online | Taken::Other) = registry.retained("d", Kind::Status, &json) {
                    proptest::prop_assert_eq!(registry.devices["d"].status, Some(typed));
                }
            }
        }
    }

    #[test]
    fn made_up_device_names_neither_grow_the_registry_nor_flood_the_log() {
        let mut registry = Registry::default();
        for i in 0..200 {
            registry.rejected(&format!("made-up-{i}"), "unknown or revoked device", false);
        }
        assert!(registry.devices.is_empty());
        assert_eq!(registry.last_logged.len(), 1);
        registry.rejected("enrolled", "bad signature", true);
        assert_eq!(registry.devices["enrolled"].rejected, 1);
    }

    /// What keeps old messages out must outlive a restart of the hub: the status order and
    /// whether the device signs its alerts come back from the store.
    #[tokio::test(flavor = "current_thread")]
    async fn replay_protection_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let store =
            std::sync::Arc::new(Store::open(&path, outpost_storage::Options::default()).unwrap());
        let status = |seq: u64| {
            format!(
                r#"{{"device":"d","state":"online","boot_id":"b","agent_version":"0","protocol":2,"at_ms":0,"seq":{seq}}}"#
            )
        };
        let mut registry = Registry::default();
        assert_eq!(
            registry.retained("d", Kind::Status, &status(10)),
            Ok(Taken::Online)
        );
        registry.mark_signs_alerts("d");
        registry.persist_if_changed(&store);
        let mut tries = 0;
        let mut loaded = loop {
            let loaded = Registry::load(&store);
            if loaded.signs_alerts("d") {
                break loaded;
            }
            tries += 1;
            assert!(tries < 100_000, "the registry was never stored");
            tokio::task::yield_now().await;
        };
        assert_eq!(
            loaded.retained("d", Kind::Status, &status(8)),
            Ok(Taken::Nothing)
        );
        assert_eq!(loaded.devices["d"].stale_statuses, 1);
        assert_eq!(
            loaded.devices["d"].status,
            Some(outpost_sync::State::Online)
        );
        assert_eq!(
            loaded.retained("d", Kind::Status, &status(12)),
            Ok(Taken::Online)
        );
        // A signed message without a status's fields is malformed, not stale.
        assert!(loaded
            .retained("d", Kind::Status, r#"{"state":"offline"}"#)
            .is_err());
    }
}
