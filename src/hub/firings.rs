//! Every alert firing the hub has recorded, keyed by its time, so that a report counts the
//! firings of any range: the alerts page's history keeps only the last transitions.
//!
//! One entry per firing, under its time, device, source (the device's engine or the hub's),
//! rule, instance and sequence number: a firing sent again lands on its own key, so that it is
//! counted once however often it arrives. A device may add at most [`PER_DEVICE_HOUR`] entries
//! an hour; what a device sends beyond that is counted in `uncounted` and said in the reports,
//! so that a flood from one device neither fills the store nor passes unseen.

#![deny(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use outpost_storage::{StateKey, StateTable, Store, WriteBatch};
use outpost_web::AlertFirings;
use serde_json::Value;

/// How long entries are kept, by the hub's clock.
pub const KEEP_MS: i64 = 400 * 86_400_000;
/// Firings of one device counted per hour of the hub's clock at most (one every 5 s), whatever
/// times they claim.
pub const PER_DEVICE_HOUR: u32 = 720;
/// How far ahead of the hub's clock an event's time is believed.
const AHEAD_MS: i64 = 3_600_000;
const HOUR_MS: i64 = 3_600_000;

/// An entry of the firing log, in `AlertState` beside the fleet history.
#[derive(Debug, Clone, Copy)]
pub enum FiringKey<'a> {
    Entry {
        at_ms: i64,
        device: &'a str,
        source: &'a str,
        rule: &'a str,
        instance: &'a str,
        seq: u64,
    },
    /// Where the entries of `at_ms` and later begin: a bound of a range.
    From(i64),
}

impl fmt::Display for FiringKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The time first, zero-padded, so that keys sort by time; the rest as JSON, which
            // holds any character a name may have.
            FiringKey::Entry {
                at_ms,
                device,
                source,
                rule,
                instance,
                seq,
            } => write!(
                f,
                "fe/{:015}/{}",
                at_ms.max(&0),
                serde_json::json!([device, source, rule, instance, seq])
            ),
            FiringKey::From(at_ms) => write!(f, "fe/{:015}", at_ms.max(&0)),
        }
    }
}

impl StateKey for FiringKey<'_> {
    const TABLE: StateTable = StateTable::AlertState;
    const OWNED: &'static [&'static str] = &["fe/"];
}

/// What the hub keeps in memory for the log: how many entries each device added this hour of
/// the hub's clock, and how many it sent beyond the bound.
#[derive(Debug, Default)]
pub struct FiringLog {
    /// Entries added per device in the hour `this_hour` (hub clock).
    this_hour: i64,
    added: HashMap<String, u32>,
    /// Firings beyond [`PER_DEVICE_HOUR`], by device and the hour of their own time: kept as
    /// long as the entries, so that a report of that hour says so.
    uncounted: BTreeMap<(String, i64), u64>,
}

impl FiringLog {
    /// Adds `event` (a transition as the history keeps it, with `device` and `source` set) to
    /// `write` if it is a firing. Its time is the event's `at`, or the hub's `now_ms` where that
    /// is missing, unreadable, older than the log keeps or more than an hour ahead.
    pub fn record(&mut self, event: &Value, now_ms: i64, write: &mut WriteBatch) {
        if event["state"] != "firing" {
            return;
        }
        let text = |name: &str| event[name].as_str().unwrap_or_default().to_string();
        let at_ms = event["at"]
            .as_str()
            .and_then(|at| at.parse::<jiff::Timestamp>().ok())
            .map(|at| at.as_millisecond())
            .filter(|at| (now_ms - KEEP_MS..=now_ms + AHEAD_MS).contains(at))
            .unwrap_or(now_ms);
        let device = text("device");
        let arrival_hour = now_ms.div_euclid(HOUR_MS);
        if arrival_hour != self.this_hour {
            self.this_hour = arrival_hour;
            self.added.clear();
        }
        let added = self.added.entry(device.clone()).or_default();
        if *added >= PER_DEVICE_HOUR {
            let hour = at_ms.div_euclid(HOUR_MS);
            *self.uncounted.entry((device, hour)).or_default() += 1;
            return;
        }
        *added += 1;
        let value = serde_json::json!({ "rule": text("rule"), "severity": text("severity") });
        write.put(
            &FiringKey::Entry {
                at_ms,
                device: &device,
                source: &text("source"),
                rule: &text("rule"),
                instance: &text("instance"),
                seq: event["event_seq"].as_u64().unwrap_or_default(),
            },
            value.to_string().into_bytes(),
        );
    }

    /// Forgets the uncounted firings of hours no longer kept and, in `write`, the entries older than
    /// [`KEEP_MS`] by the hub's clock: an event's own time never deletes anything.
    #[allow(clippy::disallowed_methods)] // called on the blocking pool
    pub fn prune(&mut self, store: &Store, now_ms: i64, write: &mut WriteBatch) {
        let oldest_kept = (now_ms - KEEP_MS).div_euclid(HOUR_MS);
        self.uncounted.retain(|(_, hour), _| *hour >= oldest_kept);
        match store.range(&FiringKey::From(0), &FiringKey::From(now_ms - KEEP_MS)) {
            Ok(old) => {
                for (key, _) in old {
                    write.delete_state(StateTable::AlertState, key);
                }
            }
            Err(error) => tracing::warn!("the alert firings could not be pruned: {error}"),
        }
    }

    /// The firings from `start` to `end` (ms, both included) by device, rule and severity, with
    /// the firings left uncounted in those hours.
    #[allow(clippy::disallowed_methods)] // called on the blocking pool
    pub fn count(
        &self,
        store: &Store,
        (start, end): (i64, i64),
    ) -> outpost_storage::Result<AlertFirings> {
        let entries = store.range(
            &FiringKey::From(start),
            &FiringKey::From(end.saturating_add(1)),
        )?;
        let mut counts: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        for (key, value) in entries {
            let named = key
                .splitn(3, '/')
                .nth(2)
                .and_then(|names| serde_json::from_str::<Value>(names).ok());
            let kept = serde_json::from_slice::<Value>(&value).ok();
            let (Some(named), Some(kept)) = (named, kept) else {
                tracing::warn!(key, "an unreadable alert firing");
                continue;
            };
            let field = |v: &Value| v.as_str().unwrap_or_default().to_string();
            *counts
                .entry((
                    field(&named[0]),
                    field(&kept["rule"]),
                    field(&kept["severity"]),
                ))
                .or_default() += 1;
        }
        let (first_hour, last_hour) = (start.div_euclid(HOUR_MS), end.div_euclid(HOUR_MS));
        let mut uncounted: BTreeMap<String, u64> = BTreeMap::new();
        for ((device, hour), n) in &self.uncounted {
            if (first_hour..=last_hour).contains(hour) {
                *uncounted.entry(device.clone()).or_default() += n;
            }
        }
        Ok(AlertFirings {
            fired: counts
                .into_iter()
                .map(
                    |((device, rule, severity), fired)| outpost_web::AlertFiringCount {
                        device,
                        rule,
                        severity,
                        fired,
                    },
                )
                .collect(),
            uncounted,
        })
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests, not on an async thread
mod tests {
    use super::*;
    use outpost_storage::Options;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000_000;

    fn firing(device: &str, rule: &str, seq: u64, at: &str) -> Value {
        json!({ "device": device, "source": "device", "rule": rule, "instance": "_",
                "severity": "warning", "state": "firing", "event_seq": seq, "at": at })
    }

    fn at(ms: i64) -> String {
        outpost::alert::engine::rfc3339(ms)
    }

    fn fired(log: &FiringLog, store: &Store, range: (i64, i64)) -> Vec<(String, String, u64)> {
        log.count(store, range)
            .unwrap()
            .fired
            .into_iter()
            .map(|c| (c.device, c.rule, c.fired))
            .collect()
    }

    #[test]
    fn firings_are_counted_by_their_time_once_however_often_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), Options::default()).unwrap();
        let mut log = FiringLog::default();
        let mut write = WriteBatch::default();
        let day = 86_400_000;
        for (seq, ms) in [(1, NOW - 40 * day), (2, NOW - 2 * day), (3, NOW - 1000)] {
            let event = firing("a", "disk_full", seq, &at(ms));
            log.record(&event, NOW, &mut write);
            // Sent again, as after a hub crash before the ack: the same key.
            log.record(&event, NOW, &mut write);
        }
        let mut resolved = firing("a", "disk_full", 4, &at(NOW - 500));
        resolved["state"] = "resolved".into();
        log.record(&resolved, NOW, &mut write);
        log.record(&firing("b", "hot", 1, &at(NOW - 3 * day)), NOW, &mut write);
        store.write(write).unwrap();
        let a = |n| ("a".to_string(), "disk_full".to_string(), n);
        let b = ("b".to_string(), "hot".to_string(), 1);
        assert_eq!(
            fired(&log, &store, (NOW - 30 * day, NOW)),
            [a(2), b.clone()]
        );
        assert_eq!(fired(&log, &store, (NOW - 60 * day, NOW)), [a(3), b]);
        // Both ends are in the range.
        assert_eq!(fired(&log, &store, (NOW - 2 * day, NOW - 1000)), [a(2)]);
        assert!(fired(&log, &store, (NOW - day, NOW - 2000)).is_empty());
    }

    #[test]
    fn an_absurd_time_is_counted_now_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), Options::default()).unwrap();
        let mut log = FiringLog::default();
        let mut write = WriteBatch::default();
        log.record(&firing("a", "old", 1, &at(NOW - 3000)), NOW, &mut write);
        for (seq, time) in [
            (2, "9999-01-01T00:00:00Z"),
            (3, "1970-01-01T00:00:00Z"),
            (4, "x"),
        ] {
            log.record(&firing("z", "absurd", seq, time), NOW, &mut write);
        }
        store.write(write).unwrap();
        let mut prune = WriteBatch::default();
        log.prune(&store, NOW, &mut prune);
        assert!(prune.is_empty(), "nothing is older than the log keeps");
        store.write(prune).unwrap();
        let counts = fired(&log, &store, (NOW - 5000, NOW));
        assert_eq!(
            counts,
            [
                ("a".to_string(), "old".to_string(), 1),
                ("z".to_string(), "absurd".to_string(), 3)
            ]
        );
        // A year and more later, by the hub's clock, the entries go.
        let later = NOW + KEEP_MS + 1;
        let mut prune = WriteBatch::default();
        log.prune(&store, later, &mut prune);
        store.write(prune).unwrap();
        assert!(fired(&log, &store, (0, later)).is_empty());
    }

    #[test]
    fn a_flooding_device_is_bounded_and_what_it_sent_beyond_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), Options::default()).unwrap();
        let mut log = FiringLog::default();
        let mut write = WriteBatch::default();
        let hour_start = NOW - NOW.rem_euclid(HOUR_MS);
        for seq in 0..u64::from(PER_DEVICE_HOUR) + 30 {
            let event = firing("flood", "r", seq, &at(hour_start + seq as i64));
            log.record(&event, hour_start + 3_000_000, &mut write);
        }
        log.record(&firing("quiet", "r", 1, &at(hour_start)), NOW, &mut write);
        store.write(write).unwrap();
        let counts = log
            .count(&store, (hour_start, hour_start + HOUR_MS))
            .unwrap();
        let of = |device: &str| {
            counts
                .fired
                .iter()
                .find(|c| c.device == device)
                .unwrap()
                .fired
        };
        assert_eq!(of("flood"), u64::from(PER_DEVICE_HOUR));
        assert_eq!(of("quiet"), 1);
        assert_eq!(counts.uncounted.get("flood"), Some(&30));
        assert_eq!(counts.uncounted.get("quiet"), None);
        // The bound is on what a device sends in an hour, whatever times its firings claim:
        // spread over a year's hours, they are bounded the same.
        let mut log = FiringLog::default();
        let mut write = WriteBatch::default();
        for seq in 0..2000u64 {
            let claimed = NOW - seq as i64 * HOUR_MS;
            log.record(&firing("spread", "r", seq, &at(claimed)), NOW, &mut write);
        }
        store.write(write).unwrap();
        let year = log.count(&store, (NOW - 400 * 86_400_000, NOW)).unwrap();
        let spread = year.fired.iter().find(|c| c.device == "spread").unwrap();
        assert_eq!(spread.fired, u64::from(PER_DEVICE_HOUR));
        assert_eq!(
            year.uncounted.get("spread"),
            Some(&(2000 - u64::from(PER_DEVICE_HOUR)))
        );
    }
}
