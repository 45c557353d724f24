//! The hub's routes for the devices' alerts: each new transition a device reports (firing or
//! resolved, each once: the fleet history drops resends) goes to the hub channels of the routes
//! it matches, the first match ending the search unless it says `continue`, and not at all while
//! an inhibiting alert fires (the hub's own `device_offline` over that device's alerts, by the
//! `[[alerts.inhibit]]` rules). The channels then group and deliver as on a device.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _, Result};
use outpost::alert::engine::{AlertMessage, Inhibition};
use outpost_storage::{Selector, SeriesKey};

use crate::alerting::config::AlertsSection;

#[derive(Debug, Clone)]
struct Route {
    /// `None` (`{}`) for every alert.
    matcher: Option<Selector>,
    receivers: Vec<String>,
    continue_: bool,
}

/// The routes and inhibitions of the hub's `[alerts]` section.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
    inhibitions: Vec<Inhibition>,
}

/// An alert as routes and inhibitions see it: its labels with `alertname`, `severity`, and the
/// device as `device` and (unless it has one) `instance`.
pub fn routing_key(
    rule: &str,
    severity: &str,
    device: &str,
    labels: &BTreeMap<String, String>,
) -> Option<SeriesKey> {
    let mut all = labels.clone();
    all.insert("alertname".into(), rule.to_string());
    all.entry("severity".into())
        .or_insert_with(|| severity.to_string());
    all.insert("device".into(), device.to_string());
    all.entry("instance".into())
        .or_insert_with(|| device.to_string());
    SeriesKey::new("alert", all).ok()
}

impl Router {
    /// Checks the routes against the hub's channels.
    pub fn from_config(alerts: &AlertsSection) -> Result<Router> {
        let channels: Vec<&str> = alerts
            .webhook
            .iter()
            .map(|c| c.name.as_str())
            .chain(alerts.email.iter().map(|c| c.name.as_str()))
            .chain(alerts.exec.iter().map(|c| c.name.as_str()))
            .collect();
        let mut routes = Vec::new();
        for (i, route) in alerts.route.iter().enumerate() {
            let text = route.matcher.trim();
            let matcher = if text.is_empty() || text == "{}" {
                None
            } else {
                Some(Selector::parse(text).with_context(|| format!("alerts.route[{i}].match"))?)
            };
            if route.receivers.is_empty() {
                bail!("alerts.route[{i}].receivers: name at least one channel");
            }
            for receiver in &route.receivers {
                if !channels.contains(&receiver.as_str()) {
                    bail!(
                        "alerts.route[{i}].receivers: {receiver:?} is none of the hub's channels \
                         ({})",
                        channels.join(", ")
                    );
                }
            }
            routes.push(Route {
                matcher,
                receivers: route.receivers.clone(),
                continue_: route.continue_,
            });
        }
        Ok(Router {
            routes,
            inhibitions: crate::alerting::pack::inhibitions_from_config(alerts)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The channels that hear of `message`, given the alerts firing now (each as its
    /// [`routing_key`]); none while one of those inhibits it.
    pub fn receivers(&self, message: &AlertMessage, firing: &[SeriesKey]) -> Vec<String> {
        let severity = message.severity.to_string();
        let Some(key) = routing_key(&message.rule, &severity, &message.device, &message.labels)
        else {
            return Vec::new();
        };
        let inhibited = self.inhibitions.iter().any(|inhibition| {
            inhibition.target.matches(&key)
                && firing.iter().any(|source| {
                    source != &key
                        && inhibition.source.matches(source)
                        && inhibition
                            .equal
                            .iter()
                            .all(|l| source.label(l) == key.label(l))
                })
        });
        if inhibited {
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::new();
        for route in &self.routes {
            if route.matcher.as_ref().is_some_and(|m| !m.matches(&key)) {
                continue;
            }
            for receiver in &route.receivers {
                if !out.contains(receiver) {
                    out.push(receiver.clone());
                }
            }
            if !route.continue_ {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost::alert::engine::{Reason, State};
    use outpost::alert::rules::Severity;

    fn message(rule: &str, severity: Severity, device: &str) -> AlertMessage {
        AlertMessage {
            device: device.into(),
            rule: rule.into(),
            instance: "cpu=0".into(),
            severity,
            state: State::Firing,
            value: Some(1.0),
            threshold: Some(0.0),
            labels: [("cpu".to_string(), "0".to_string())].into(),
            started_at: None,
            fired_at: None,
            resolved_at: None,
            at: "2026-12-01T10:00:00Z".into(),
            summary: String::new(),
            description: String::new(),
            annotations: BTreeMap::new(),
            event_seq: 1,
            silenced: false,
            escalated: false,
            reason: Reason::Transition,
            dropped_before: 0,
        }
    }

    #[test]
    fn routes_match_in_order_and_a_device_offline_holds_back_its_alerts() {
        let alerts: AlertsSection = toml::from_str(
            r#"
[[webhook]]
name = "oncall"
url = "http://127.0.0.1/"
[[webhook]]
name = "chat"
url = "http://127.0.0.1/"
[[route]]
match = '{severity="critical"}'
receivers = ["oncall"]
continue = true
[[route]]
match = '{device=~"lab-.*"}'
receivers = ["chat"]
[[route]]
match = '{}'
receivers = ["chat", "oncall"]
"#,
        )
        .unwrap();
        let router = Router::from_config(&alerts).unwrap();
        let critical = message("hot", Severity::Critical, "lab-1");
        assert_eq!(router.receivers(&critical, &[]), ["oncall", "chat"]);
        let warning = message("warm", Severity::Warning, "lab-1");
        assert_eq!(
            router.receivers(&warning, &[]),
            ["chat"],
            "the first match ends it"
        );
        let elsewhere = message("warm", Severity::Warning, "site-2");
        assert_eq!(router.receivers(&elsewhere, &[]), ["chat", "oncall"]);
        // The hub's device_offline for lab-1 holds back lab-1's alerts, not site-2's.
        let offline = routing_key(
            "device_offline",
            "warning",
            "hub",
            &[("instance".to_string(), "lab-1".to_string())].into(),
        )
        .unwrap();
        let offline_inhibits = AlertsSection {
            inhibit: vec![crate::alerting::config::InhibitConfig {
                source: r#"{alertname="device_offline"}"#.into(),
                target: r#"{alertname=~".+",alertname!="device_offline"}"#.into(),
                equal: vec!["instance".into()],
            }],
            ..alerts
        };
        let router = Router::from_config(&offline_inhibits).unwrap();
        assert!(router
            .receivers(&critical, std::slice::from_ref(&offline))
            .is_empty());
        assert_eq!(router.receivers(&elsewhere, &[offline]), ["chat", "oncall"]);
    }

    #[test]
    fn routes_name_real_channels() {
        let alerts: AlertsSection =
            toml::from_str("[[route]]\nmatch = '{}'\nreceivers = [\"nowhere\"]\n").unwrap();
        let error = Router::from_config(&alerts).unwrap_err().to_string();
        assert!(error.contains("alerts.route[0].receivers"), "{error}");
    }
}
