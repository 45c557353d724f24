//! Silences and maintenance windows: while one covers an alert, its state is still tracked and
//! published (marked `silenced`), but the notification channels are not told; if it is still
//! firing when the silence ends, they are told then.
//!
//! Silences come from the agent config, the agent's HTTP API and the hub's signed commands;
//! the last two are kept in the store, so they hold across restarts and while offline.

use std::collections::BTreeMap;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use outpost_storage::{Selector, SeriesKey, StateTable, Store, WriteBatch};
use serde::{Deserialize, Serialize};

/// The silences' keys in the store's `AlertState` table.
#[derive(Debug, Clone, Copy)]
pub enum SilenceKey<'a> {
    Silence(&'a str),
    All,
}

impl std::fmt::Display for SilenceKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SilenceKey::Silence(id) => write!(f, "s/{id}"),
            SilenceKey::All => f.write_str("s/"),
        }
    }
}

impl outpost_storage::StateKey for SilenceKey<'_> {
    const TABLE: StateTable = StateTable::AlertState;
    const OWNED: &'static [&'static str] = &["s/"];
}
/// The pseudo-label that carries the rule's name when silences match.
pub const RULE_LABEL: &str = "alertname";

/// A silence as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    /// A selector over the alert's labels plus `alertname`, e.g. `{alertname="cpu_high"}`.
    #[serde(rename = "match")]
    pub matcher: String,
    pub starts_ms: i64,
    pub ends_ms: i64,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
}

/// A recurring window in a named time zone, or a fixed one.
#[derive(Debug, Clone)]
pub enum When {
    Fixed {
        starts_ms: i64,
        ends_ms: i64,
    },
    Weekly {
        days: Vec<Weekday>,
        start: Time,
        duration_ms: i64,
        zone: TimeZone,
    },
}

#[derive(Debug, Clone)]
pub struct Maintenance {
    pub name: String,
    /// `None`: every alert of the device.
    pub matcher: Option<Selector>,
    pub when: When,
}

#[derive(Debug, Clone, Default)]
pub struct Silences {
    silences: Vec<(Silence, Selector)>,
    maintenance: Vec<Maintenance>,
}

/// Parses a weekday as people write it: `sun`, `Sunday`, `mon`...
pub fn parse_weekday(text: &str) -> Option<Weekday> {
    let lower = text.trim().to_ascii_lowercase();
    let day = match lower.get(..3)? {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    };
    let full = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    (lower.len() == 3 || full.contains(&lower.as_str())).then_some(day)
}

impl When {
    pub fn covers(&self, now_ms: i64) -> bool {
        match self {
            When::Fixed { starts_ms, ends_ms } => *starts_ms <= now_ms && now_ms < *ends_ms,
            When::Weekly {
                days,
                start,
                duration_ms,
                zone,
            } => {
                let Ok(now) = jiff::Timestamp::from_millisecond(now_ms) else {
                    return false;
                };
                let today = now.to_zoned(zone.clone()).date();
                // A window that began on an earlier day may still be open.
                let back = duration_ms / 86_400_000 + 1;
                let mut date = today;
                for _ in 0..=back {
                    if days.contains(&date.weekday()) {
                        if let Ok(begin) = date.to_datetime(*start).to_zoned(zone.clone()) {
                            let begin = begin.timestamp().as_millisecond();
                            if begin <= now_ms && now_ms < begin + duration_ms {
                                return true;
                            }
                        }
                    }
                    match date.yesterday() {
                        Ok(d) => date = d,
                        Err(_) => break,
                    }
                }
                false
            }
        }
    }
}

impl Silences {
    pub fn new(config: Vec<Silence>, maintenance: Vec<Maintenance>) -> Result<Silences, String> {
        let mut silences = Silences {
            silences: Vec::new(),
            maintenance,
        };
        for silence in config {
            silences.insert(silence)?;
        }
        Ok(silences)
    }

    /// The silences kept in the store (set through the API or by the hub), added to these.
    pub fn load(&mut self, store: &Store) -> Result<(), outpost_storage::Error> {
        for (key, value) in store.list(&SilenceKey::All)? {
            match serde_json::from_slice::<Silence>(&value) {
                Ok(silence) => {
                    if let Err(error) = self.insert(silence) {
                        tracing::warn!(key, "dropping a stored silence: {error}");
                    }
                }
                Err(error) => tracing::warn!(key, "dropping a stored silence: {error}"),
            }
        }
        Ok(())
    }

    fn insert(&mut self, silence: Silence) -> Result<(), String> {
        let selector = Selector::parse(&silence.matcher)
            .map_err(|e| format!("silence {}: match: {e}", silence.id))?;
        if silence.ends_ms <= silence.starts_ms {
            return Err(format!("silence {}: it ends before it starts", silence.id));
        }
        self.silences.retain(|(s, _)| s.id != silence.id);
        self.silences.push((silence, selector));
        Ok(())
    }

    /// Adds or replaces a silence and queues its durable record into `write`.
    pub fn add(&mut self, silence: Silence, write: &mut WriteBatch) -> Result<(), String> {
        let value = serde_json::to_vec(&silence).expect("silence serializes");
        let key = SilenceKey::Silence(&silence.id).to_string();
        self.insert(silence)?;
        write.put_state(StateTable::AlertState, key, value);
        Ok(())
    }

    /// Ends a silence now. Returns whether there was one of that id.
    pub fn expire(&mut self, id: &str, write: &mut WriteBatch) -> bool {
        let before = self.silences.len();
        self.silences.retain(|(s, _)| s.id != id);
        write.remove(&SilenceKey::Silence(id));
        self.silences.len() != before
    }

    /// Drops silences that ended before `now_ms`, from memory and from the store.
    pub fn expire_ended(&mut self, now_ms: i64, write: &mut WriteBatch) {
        let ended: Vec<String> = self
            .silences
            .iter()
            .filter(|(s, _)| s.ends_ms <= now_ms)
            .map(|(s, _)| s.id.clone())
            .collect();
        for id in ended {
            self.expire(&id, write);
        }
    }

    pub fn list(&self) -> Vec<Silence> {
        self.silences.iter().map(|(s, _)| s.clone()).collect()
    }

    pub fn maintenance(&self) -> &[Maintenance] {
        &self.maintenance
    }

    pub fn is_empty(&self) -> bool {
        self.silences.is_empty() && self.maintenance.is_empty()
    }

    /// Whether an alert of `rule` with `labels` is silenced at `now_ms`.
    pub fn silenced(&self, rule: &str, labels: &BTreeMap<String, String>, now_ms: i64) -> bool {
        if self.is_empty() {
            return false;
        }
        let mut all: Vec<(String, String)> = labels
            .iter()
            .filter(|(k, _)| k.as_str() != RULE_LABEL)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.push((RULE_LABEL.to_string(), rule.to_string()));
        let Ok(key) = SeriesKey::new("alert", all) else {
            return false;
        };
        self.silences.iter().any(|(s, selector)| {
            s.starts_ms <= now_ms && now_ms < s.ends_ms && selector.matches(&key)
        }) || self.maintenance.iter().any(|m| {
            m.when.covers(now_ms) && m.matcher.as_ref().is_none_or(|sel| sel.matches(&key))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn weekly_windows_follow_the_zone_across_midnight_and_daylight_saving() {
        let window = When::Weekly {
            days: vec![Weekday::Sunday],
            start: "23:00".parse().unwrap(),
            duration_ms: 3 * 3_600_000,
            zone: TimeZone::get("Europe/Berlin").unwrap(),
        };
        // Sunday 2026-03-29 is the day Berlin moves to summer time (UTC+2).
        assert!(!window.covers(ms("2026-03-29T20:59:00Z")));
        assert!(window.covers(ms("2026-03-29T21:00:00Z")), "23:00 CEST");
        assert!(
            window.covers(ms("2026-03-29T23:59:00Z")),
            "Monday 01:59 still in it"
        );
        assert!(!window.covers(ms("2026-03-30T00:00:00Z")));
        // A winter Sunday: 23:00 CET is 22:00 UTC.
        assert!(!window.covers(ms("2026-01-04T21:59:00Z")));
        assert!(window.covers(ms("2026-01-04T22:00:00Z")));
        assert!(!window.covers(ms("2026-01-05T22:00:00Z")), "a Monday");
    }

    #[test]
    fn silences_match_labels_and_the_rule_name_within_their_time() {
        let mut silences = Silences::new(
            vec![Silence {
                id: "one".into(),
                matcher: r#"{alertname="cpu_high",cpu=~"[0-3]"}"#.into(),
                starts_ms: 1_000,
                ends_ms: 5_000,
                created_by: String::new(),
                comment: String::new(),
            }],
            Vec::new(),
        )
        .unwrap();
        let labels = |cpu: &str| -> BTreeMap<String, String> {
            [("cpu".to_string(), cpu.to_string())].into_iter().collect()
        };
        assert!(silences.silenced("cpu_high", &labels("2"), 2_000));
        assert!(!silences.silenced("cpu_high", &labels("5"), 2_000));
        assert!(!silences.silenced("disk_full", &labels("2"), 2_000));
        assert!(!silences.silenced("cpu_high", &labels("2"), 5_000), "ended");
        let mut write = WriteBatch::default();
        silences.expire_ended(6_000, &mut write);
        assert!(silences.list().is_empty());
        assert!(parse_weekday("Sunday") == Some(Weekday::Sunday));
        assert!(parse_weekday("sundae").is_none());
    }
}
