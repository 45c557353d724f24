//! The rules and silences of an `[alerts]` section: its rule files with the built-in pack, and its
//! silences and maintenance windows, checked.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use outpost::alert::engine::Inhibition;
use outpost::alert::rules::{self, Rule, RuleSet};
use outpost::alert::schedule::{parse_weekday, Maintenance, Silence, Silences, When};

use super::config::AlertsSection;

/// The rule pack built into the binary.
pub const DEFAULT_RULES: &str = include_str!("../../config/rules.toml");
pub const DEFAULT_RULES_NAME: &str = "config/rules.toml (built in)";
/// The hub's pack: rules over its view of each device.
pub const HUB_RULES: &str = include_str!("../../config/hub-rules.toml");
pub const HUB_RULES_NAME: &str = "config/hub-rules.toml (built in)";

/// A built-in rule pack: its name for messages, and its text.
pub type Pack = (&'static str, &'static str);
pub const AGENT_PACK: Pack = (DEFAULT_RULES_NAME, DEFAULT_RULES);
pub const HUB_PACK: Pack = (HUB_RULES_NAME, HUB_RULES);

pub fn join_errors(errors: &[rules::RuleError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!(
        "{} error{} in the rules:\n  {}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" },
        lines.join("\n  ")
    )
}

pub fn parse_pack((name, text): Pack) -> Result<Vec<Rule>> {
    rules::parse(Path::new(name), text).map_err(|errors| anyhow::anyhow!(join_errors(&errors)))
}

/// The rules of a config: its files, then the built-in pack's rules of other names.
pub fn load_rules(alerts: &AlertsSection, pack: Pack) -> Result<RuleSet> {
    let mut loaded = rules::load(&alerts.rules).map_err(|e| anyhow::anyhow!(join_errors(&e)))?;
    if alerts.default_rules {
        for rule in parse_pack(pack)? {
            if !loaded.alerting.iter().any(|r| r.name == rule.name) {
                loaded.alerting.push(rule);
            }
        }
    }
    Ok(loaded)
}

/// The built-in packs' inhibitions (source, target, equal labels): the critical form of a
/// condition holds back its warning form on the same device (`instance`: at the hub the
/// device, on a device absent from both), and (at the hub) a device offline holds back that
/// device's other alerts, its own and those it reported.
const PACK_INHIBITIONS: &[(&str, &str, &[&str])] = &[
    (
        r#"{alertname="cpu_saturated"}"#,
        r#"{alertname="cpu_high"}"#,
        &["instance"],
    ),
    (
        r#"{alertname="memory_critical"}"#,
        r#"{alertname="memory_high"}"#,
        &["instance"],
    ),
    (
        r#"{alertname="device_offline"}"#,
        r#"{alertname=~".+", alertname!="device_offline"}"#,
        &["instance"],
    ),
];

/// The config's inhibitions, checked, and the built-in pack's when it is on.
pub fn inhibitions_from_config(alerts: &AlertsSection) -> Result<Vec<Inhibition>> {
    let selector =
        |key: String, text: &str| outpost_storage::Selector::parse(text).with_context(|| key);
    let mut out = Vec::new();
    for (i, rule) in alerts.inhibit.iter().enumerate() {
        for label in &rule.equal {
            if !outpost_storage::promql::is_label_name(label) {
                bail!("alerts.inhibit[{i}].equal: {label:?} is not a label name");
            }
        }
        out.push(Inhibition {
            source: selector(format!("alerts.inhibit[{i}].source"), &rule.source)?,
            target: selector(format!("alerts.inhibit[{i}].target"), &rule.target)?,
            equal: rule.equal.clone(),
        });
    }
    if alerts.default_rules {
        for (source, target, equal) in PACK_INHIBITIONS {
            out.push(Inhibition {
                source: selector("pack".into(), source)?,
                target: selector("pack".into(), target)?,
                equal: equal.iter().map(|l| l.to_string()).collect(),
            });
        }
    }
    Ok(out)
}

/// The config's silences and maintenance windows, checked.
pub fn silences_from_config(alerts: &AlertsSection, now_ms: i64) -> Result<Silences> {
    let time = |key: String, text: &str| {
        outpost::timearg::parse_time(text, now_ms).with_context(|| key.clone())
    };
    let mut silences = Vec::new();
    for (i, s) in alerts.silence.iter().enumerate() {
        let starts_ms = match &s.starts {
            Some(text) => time(format!("alerts.silence[{i}].starts"), text)?,
            // "Always": the epoch, which every API prints as a real time (no sample is older
            // than it, and it shows as 1970-01-01T00:00:00Z rather than an absurd number).
            None => 0,
        };
        let ends_ms = time(format!("alerts.silence[{i}].ends"), &s.ends)?;
        outpost_storage::Selector::parse(&s.matcher)
            .with_context(|| format!("alerts.silence[{i}].match"))?;
        if ends_ms <= starts_ms {
            bail!("alerts.silence[{i}].ends: must be after starts");
        }
        silences.push(Silence {
            id: format!("config-{i}"),
            matcher: s.matcher.clone(),
            starts_ms,
            ends_ms,
            created_by: "config".into(),
            comment: s.comment.clone(),
        });
    }
    let mut windows = Vec::new();
    for (i, m) in alerts.maintenance.iter().enumerate() {
        let key = |k: &str| format!("alerts.maintenance[{i}].{k}");
        let matcher = match &m.matcher {
            Some(text) => {
                Some(outpost_storage::Selector::parse(text).with_context(|| key("match"))?)
            }
            None => None,
        };
        let when = match (&m.starts, &m.ends, m.days.is_empty()) {
            (Some(starts), Some(ends), true) => {
                if m.at.is_some() || m.duration.is_some() {
                    bail!("{}: a fixed window (starts, ends) takes no at or duration", key("at"));
                }
                let (starts_ms, ends_ms) = (time(key("starts"), starts)?, time(key("ends"), ends)?);
                if ends_ms <= starts_ms {
                    bail!("{}: must be after starts", key("ends"));
                }
                When::Fixed { starts_ms, ends_ms }
            }
            (None, None, false) => {
                let mut days = Vec::new();
                for day in &m.days {
                    days.push(parse_weekday(day).with_context(|| {
                        format!("{}: {day:?} is not a weekday (mon, tue, ... or monday, ...)", key("days"))
                    })?);
                }
                let at = m.at.as_deref().with_context(|| format!("{}: missing (HH:MM)", key("at")))?;
                let start: jiff::civil::Time = at
                    .parse()
                    .with_context(|| format!("{}: {at:?} is not a time of day like 02:00", key("at")))?;
                let duration = m
                    .duration
                    .with_context(|| format!("{}: missing (like 2h)", key("duration")))?;
                let zone = match &m.timezone {
                    Some(name) => jiff::tz::TimeZone::get(name)
                        .with_context(|| format!("{}: unknown time zone {name:?}", key("timezone")))?,
                    None => jiff::tz::TimeZone::UTC,
                };
                When::Weekly {
                    days,
                    start,
                    duration_ms: duration.0.as_millis() as i64,
                    zone,
                }
            }
            _ => bail!(
                "{}: give either starts and ends (a fixed window) or days, at and duration (a weekly one)",
                key("name")
            ),
        };
        windows.push(Maintenance {
            name: m.name.clone(),
            matcher,
            when,
        });
    }
    Silences::new(silences, windows).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn silences_and_maintenance_windows_from_the_config() {
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(default)]
            alerts: AlertsSection,
        }
        let config: Config = toml::from_str(
            r#"
[[alerts.silence]]
match = '{alertname="disk_full"}'
ends = "2026-12-24T00:00:00Z"

[[alerts.maintenance]]
name = "sunday"
days = ["sun"]
at = "02:00"
duration = "2h"
timezone = "America/New_York"

[[alerts.maintenance]]
name = "move"
match = '{alertname=~"probe_.*"}'
starts = "2026-12-05T08:00:00Z"
ends = "2026-12-05T12:00:00Z"
"#,
        )
        .unwrap();
        let silences = silences_from_config(&config.alerts, 0).unwrap();
        let labels = BTreeMap::new();
        let at = |t: &str| t.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        assert!(silences.silenced("disk_full", &labels, at("2026-12-01T00:00:00Z")));
        assert!(!silences.silenced("disk_full", &labels, at("2026-12-24T00:00:00Z")));
        // A silence without `starts` holds from the epoch, not from an absurd negative time.
        assert_eq!(silences.list()[0].starts_ms, 0);
        // Sunday 2026-12-06, 02:00 to 04:00 in New York (UTC-5): every alert.
        assert!(silences.silenced("cpu_high", &labels, at("2026-12-06T07:30:00Z")));
        assert!(!silences.silenced("cpu_high", &labels, at("2026-12-06T09:00:00Z")));
        assert!(silences.silenced("probe_down", &labels, at("2026-12-05T09:00:00Z")));
        assert!(!silences.silenced("cpu_high", &labels, at("2026-12-05T09:00:00Z")));

        for (bad, key) in [
            ("[[alerts.silence]]\nmatch = '{x=\"1\"}'\nends = \"soon\"\n", "alerts.silence[0].ends"),
            ("[[alerts.maintenance]]\nname = \"m\"\ndays = [\"someday\"]\nat = \"02:00\"\nduration = \"1h\"\n", "alerts.maintenance[0].days"),
            ("[[alerts.maintenance]]\nname = \"m\"\ndays = [\"sun\"]\nat = \"02:00\"\nduration = \"1h\"\ntimezone = \"Mars/Olympus\"\n", "alerts.maintenance[0].timezone"),
            ("[[alerts.maintenance]]\nname = \"m\"\n", "alerts.maintenance[0].name"),
            ("[[alerts.webhook]]\nname = \"w\"\nurl = \"ftp://x\"\n", "alerts.webhook[0].url"),
            ("[[alerts.exec]]\nname = \"x\"\ncommand = []\n", "alerts.exec[0].command"),
            ("[[alerts.webhook]]\nname = \"w\"\n", "alerts.webhook[0].url"),
            ("[[alerts.inhibit]]\nsource = '{'\ntarget = '{x=\"1\"}'\n", "alerts.inhibit[0].source"),
            ("[[alerts.inhibit]]\nsource = '{x=\"1\"}'\ntarget = '{x=\"2\"}'\nequal = [\"a b\"]\n", "alerts.inhibit[0].equal"),
            ("[[alerts.webhook]]\nname = \"p\"\nformat = \"template\"\nurl = \"http://x/\"\ngroup_by = [\"alertname\"]\n", "alerts.webhook[0].group_by"),
            ("[[alerts.webhook]]\nname = \"p\"\nformat = \"pagerduty\"\n", "alerts.webhook[0].secret_file"),
            ("[[alerts.webhook]]\nname = \"p\"\nformat = \"pagerduty\"\nsecret_file = \"/nonexistent/key\"\n", "alerts.webhook[0].secret_file"),
            ("[[alerts.webhook]]\nname = \"n\"\nformat = \"ntfy\"\nurl = \"https://ntfy.sh\"\n", "alerts.webhook[0].topic"),
            ("[[alerts.webhook]]\nname = \"t\"\nformat = \"twilio\"\nsecret_file = \"/etc/hostname\"\n", "alerts.webhook[0].account_sid"),
        ] {
            let config: Config = toml::from_str(bad).unwrap();
            let error = format!("{:#}", config.alerts.validate().unwrap_err());
            assert!(error.contains(key), "{key} not named in {error}");
        }
    }
}
