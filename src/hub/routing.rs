//! The hub's routes for the devices' alerts: each new transition a device reports (firing or
//! resolved, each once: the fleet history drops resends) goes down the tree of
//! `[[alerts.route]]`, as in Alertmanager: a route that matches hands the alert to the first of
//! its `routes` that matches (and on past those that say `continue`), or takes it itself when
//! none does; at the top, the first route that matches ends the search unless it says
//! `continue`. Nothing is routed while an inhibiting alert fires (the hub's own
//! `device_offline` over that device's alerts, by the `[[alerts.inhibit]]` rules). The channels
//! then group and deliver as the route (or else the channel) says.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use outpost::alert::engine::{AlertMessage, Inhibition};
use outpost_storage::{Selector, SeriesKey};

use crate::alerting::config::{AlertsSection, RouteConfig};
use crate::alerting::notify::Grouping;

/// A route with what it inherited filled in.
#[derive(Debug, Clone)]
struct Route {
    /// Where it sits in the config (`alerts.route[0].routes[1]`): names its groups.
    path: String,
    /// `None` (`{}`) for every alert.
    matcher: Option<Selector>,
    receivers: Vec<String>,
    continue_: bool,
    grouping: Option<Grouping>,
    repeat: Option<Duration>,
    routes: Vec<Route>,
}

/// Where one route sends an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub channel: String,
    /// The route's place in the config.
    pub route: String,
    /// The route's grouping; `None`: the channel's own.
    pub grouping: Option<Grouping>,
    /// How often the route tells of an alert still firing.
    pub repeat: Option<Duration>,
}

/// The routes and inhibitions of the hub's `[alerts]` section.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
    inhibitions: Vec<Inhibition>,
}

/// An alert as routes and inhibitions see it: its labels with the device's labels over them
/// (the operator's word wins over the device's), `alertname`, `severity`, and the device as
/// `device` and (unless it has one) `instance`.
pub fn routing_key(
    rule: &str,
    severity: &str,
    device: &str,
    labels: &BTreeMap<String, String>,
    device_labels: &BTreeMap<String, String>,
) -> Option<SeriesKey> {
    let mut all = labels.clone();
    all.extend(device_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    all.insert("alertname".into(), rule.to_string());
    all.entry("severity".into())
        .or_insert_with(|| severity.to_string());
    all.insert("device".into(), device.to_string());
    all.entry("instance".into())
        .or_insert_with(|| device.to_string());
    SeriesKey::new("alert", all).ok()
}

/// What a route inherits from its parent.
#[derive(Default, Clone)]
struct Inherited {
    receivers: Vec<String>,
    group_by: Option<Vec<String>>,
    group_wait: Option<Duration>,
    group_interval: Option<Duration>,
    repeat: Option<Duration>,
}

/// Routes deeper than this are refused: a tree that deep is a mistake, and the walk recurses.
const MAX_DEPTH: usize = 16;

fn build(
    config: &RouteConfig,
    path: String,
    parent: &Inherited,
    channels: &[&str],
    depth: usize,
) -> Result<Route> {
    if depth > MAX_DEPTH {
        bail!("{path}: routes nest at most {MAX_DEPTH} deep");
    }
    let text = config.matcher.trim();
    let matcher = if text.is_empty() || text == "{}" {
        None
    } else {
        Some(Selector::parse(text).with_context(|| format!("{path}.match"))?)
    };
    let own = Inherited {
        receivers: if config.receivers.is_empty() {
            parent.receivers.clone()
        } else {
            config.receivers.clone()
        },
        group_by: config.group_by.clone().or_else(|| parent.group_by.clone()),
        group_wait: config.group_wait.map(|i| i.0).or(parent.group_wait),
        group_interval: config.group_interval.map(|i| i.0).or(parent.group_interval),
        repeat: config.repeat_interval.map(|i| i.0).or(parent.repeat),
    };
    if own.receivers.is_empty() {
        bail!("{path}.receivers: name at least one channel (here or on a route above)");
    }
    for receiver in &config.receivers {
        if !channels.contains(&receiver.as_str()) {
            bail!(
                "{path}.receivers: {receiver:?} is none of the hub's channels ({})",
                channels.join(", ")
            );
        }
    }
    if own.repeat.is_some_and(|r| r.is_zero()) {
        bail!("{path}.repeat_interval: above 0 (leave it out for no reminders)");
    }
    let grouping = match &own.group_by {
        None => None,
        Some(by) if by.iter().any(|l| l == "...") => Some(Grouping::alone(&path)),
        Some(by) => Some(Grouping {
            route: path.clone(),
            by: by.clone(),
            wait_ms: own
                .group_wait
                .unwrap_or(Duration::from_secs(30))
                .as_millis() as u64,
            interval_ms: own
                .group_interval
                .unwrap_or(Duration::from_secs(300))
                .as_millis() as u64,
        }),
    };
    let routes = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, child)| {
            build(
                child,
                format!("{path}.routes[{i}]"),
                &own,
                channels,
                depth + 1,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Route {
        path,
        matcher,
        receivers: own.receivers,
        continue_: config.continue_,
        grouping,
        repeat: own.repeat,
        routes,
    })
}

impl Route {
    /// Walks the tree below this route with `key`: whether it matched, adding where it goes.
    fn walk<'a>(&'a self, key: &SeriesKey, out: &mut Vec<&'a Route>) -> bool {
        if self.matcher.as_ref().is_some_and(|m| !m.matches(key)) {
            return false;
        }
        if !walk_list(&self.routes, key, out) {
            out.push(self);
        }
        true
    }
}

/// Tries `routes` in order: whether any matched.
fn walk_list<'a>(routes: &'a [Route], key: &SeriesKey, out: &mut Vec<&'a Route>) -> bool {
    let mut matched = false;
    for route in routes {
        if route.walk(key, out) {
            matched = true;
            if !route.continue_ {
                break;
            }
        }
    }
    matched
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
        let routes = alerts
            .route
            .iter()
            .enumerate()
            .map(|(i, route)| {
                build(
                    route,
                    format!("alerts.route[{i}]"),
                    &Inherited::default(),
                    &channels,
                    0,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Router {
            routes,
            inhibitions: crate::alerting::pack::inhibitions_from_config(alerts)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Whether any route reminds (`repeat_interval`).
    pub fn reminds(&self) -> bool {
        fn any(routes: &[Route]) -> bool {
            routes.iter().any(|r| r.repeat.is_some() || any(&r.routes))
        }
        any(&self.routes)
    }

    /// Whether an alert firing now (each as its [`routing_key`]) holds back the alert `key`.
    fn inhibited(&self, key: &SeriesKey, firing: &[SeriesKey]) -> bool {
        self.inhibitions.iter().any(|inhibition| {
            inhibition.target.matches(key)
                && firing.iter().any(|source| {
                    source != key
                        && inhibition.source.matches(source)
                        && inhibition
                            .equal
                            .iter()
                            .all(|l| source.label(l) == key.label(l))
                })
        })
    }

    /// Where `message`, of a device labelled `device_labels`, goes, given the alerts firing now
    /// (each as its [`routing_key`]): each channel once, as the first route to name it says;
    /// nowhere while one of those inhibits it.
    pub fn deliveries(
        &self,
        message: &AlertMessage,
        device_labels: &BTreeMap<String, String>,
        firing: &[SeriesKey],
    ) -> Vec<Delivery> {
        let severity = message.severity.to_string();
        let Some(key) = routing_key(
            &message.rule,
            &severity,
            &message.device,
            &message.labels,
            device_labels,
        ) else {
            return Vec::new();
        };
        if self.inhibited(&key, firing) {
            return Vec::new();
        }
        let mut matched = Vec::new();
        walk_list(&self.routes, &key, &mut matched);
        let mut out: Vec<Delivery> = Vec::new();
        for route in matched {
            for receiver in &route.receivers {
                if !out.iter().any(|d| &d.channel == receiver) {
                    out.push(Delivery {
                        channel: receiver.clone(),
                        route: route.path.clone(),
                        grouping: route.grouping.clone(),
                        repeat: route.repeat,
                    });
                }
            }
        }
        out
    }

    /// The channels that hear of `message` (see [`Router::deliveries`]).
    #[cfg(test)]
    pub fn receivers(
        &self,
        message: &AlertMessage,
        device_labels: &BTreeMap<String, String>,
        firing: &[SeriesKey],
    ) -> Vec<String> {
        self.deliveries(message, device_labels, firing)
            .into_iter()
            .map(|d| d.channel)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost::alert::engine::{Reason, State};
    use outpost::alert::rules::Severity;

    fn none() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

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
        assert_eq!(
            router.receivers(&critical, &none(), &[]),
            ["oncall", "chat"]
        );
        let warning = message("warm", Severity::Warning, "lab-1");
        assert_eq!(
            router.receivers(&warning, &none(), &[]),
            ["chat"],
            "the first match ends it"
        );
        let elsewhere = message("warm", Severity::Warning, "site-2");
        assert_eq!(
            router.receivers(&elsewhere, &none(), &[]),
            ["chat", "oncall"]
        );
        // The hub's device_offline for lab-1 holds back lab-1's alerts, not site-2's.
        let offline = routing_key(
            "device_offline",
            "warning",
            "hub",
            &[("instance".to_string(), "lab-1".to_string())].into(),
            &none(),
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
            .receivers(&critical, &none(), std::slice::from_ref(&offline))
            .is_empty());
        assert_eq!(
            router.receivers(&elsewhere, &none(), &[offline]),
            ["chat", "oncall"]
        );
    }

    #[test]
    fn routes_name_real_channels() {
        let alerts: AlertsSection =
            toml::from_str("[[route]]\nmatch = '{}'\nreceivers = [\"nowhere\"]\n").unwrap();
        let error = Router::from_config(&alerts).unwrap_err().to_string();
        assert!(error.contains("alerts.route[0].receivers"), "{error}");
    }

    const TREE: &str = r#"
[[webhook]]
name = "oncall"
url = "http://127.0.0.1/"
[[webhook]]
name = "north"
url = "http://127.0.0.1/"
[[webhook]]
name = "chat"
url = "http://127.0.0.1/"
[[email]]
name = "mail"
server = "smtp://127.0.0.1"
from = "a@example.com"
to = ["b@example.com"]

[[route]]
match = '{site="north"}'
receivers = ["north"]
group_by = ["alertname", "site"]
group_wait = "10s"
repeat_interval = "4h"
  [[route.routes]]
  match = '{severity="critical"}'
  receivers = ["oncall"]
  continue = true
    [[route.routes.routes]]
    match = '{role="camera"}'
    group_by = ["..."]
  [[route.routes]]
  match = '{alertname=~"disk.*"}'
  receivers = ["mail"]
  [[route.routes]]
  match = '{}'
  group_wait = "1m"
[[route]]
receivers = ["chat"]
"#;

    #[test]
    fn a_tree_routes_by_device_labels_and_hands_down_what_a_route_leaves_out() {
        let alerts: AlertsSection = toml::from_str(TREE).unwrap();
        let router = Router::from_config(&alerts).unwrap();
        let north: BTreeMap<String, String> = [("site".to_string(), "north".to_string())].into();
        let camera: BTreeMap<String, String> = [
            ("site".to_string(), "north".to_string()),
            ("role".to_string(), "camera".to_string()),
        ]
        .into();
        let go = |rule: &str, severity, labels: &BTreeMap<String, String>| {
            router.deliveries(&message(rule, severity, "cam-1"), labels, &[])
        };
        // Critical at a camera of the north site: the camera route, under the critical one
        // (receiver inherited, grouping its own), then past `continue` to the catch-all.
        let hot = go("hot", Severity::Critical, &camera);
        let channels: Vec<&str> = hot.iter().map(|d| d.channel.as_str()).collect();
        assert_eq!(channels, ["oncall", "north"]);
        assert_eq!(hot[0].route, "alerts.route[0].routes[0].routes[0]");
        assert_eq!(hot[0].grouping.as_ref().unwrap().by, Vec::<String>::new());
        assert_eq!(hot[0].repeat, Some(Duration::from_secs(4 * 3600)));
        let last = hot[1].grouping.as_ref().unwrap();
        assert_eq!(hot[1].route, "alerts.route[0].routes[2]");
        assert_eq!((last.wait_ms, last.interval_ms), (60_000, 300_000));
        assert_eq!(last.by, ["alertname", "site"]);
        // Critical elsewhere in the north: the critical route itself takes it.
        let hot = go("hot", Severity::Critical, &north);
        assert_eq!(hot[0].route, "alerts.route[0].routes[0]");
        assert_eq!(hot[0].grouping.as_ref().unwrap().wait_ms, 10_000);
        // A disk warning stops at the mail route; the first top route ends the search.
        let disk = go("disk_full", Severity::Warning, &north);
        assert_eq!(disk.len(), 1);
        assert_eq!(disk[0].channel, "mail");
        // Not north: the second top route, no grouping of its own (the channel's).
        let other = go("hot", Severity::Critical, &none());
        assert_eq!(other.len(), 1);
        assert_eq!(
            (other[0].channel.as_str(), &other[0].grouping),
            ("chat", &None)
        );
        // The device's own `site` label cannot steer it into another site's route.
        let mut spoofed = message("hot", Severity::Critical, "cam-1");
        spoofed.labels.insert("site".into(), "north".into());
        let south: BTreeMap<String, String> = [("site".to_string(), "south".to_string())].into();
        let routed = router.deliveries(&spoofed, &south, &[]);
        assert_eq!(routed[0].channel, "chat");
    }

    #[test]
    fn a_route_without_receivers_anywhere_above_it_is_refused_by_its_path() {
        let text = TREE.replace("receivers = [\"north\"]\n", "");
        let alerts: AlertsSection = toml::from_str(&text).unwrap();
        let error = Router::from_config(&alerts).unwrap_err().to_string();
        assert!(error.starts_with("alerts.route[0].receivers"), "{error}");
        let quick = TREE.replace("repeat_interval = \"4h\"", "repeat_interval = \"0s\"");
        let alerts: AlertsSection = toml::from_str(&quick).unwrap();
        let error = Router::from_config(&alerts).unwrap_err().to_string();
        assert!(error.contains("repeat_interval"), "{error}");
        let mut deep = String::from("[[webhook]]\nname = \"a\"\nurl = \"http://127.0.0.1/\"\n");
        for depth in 0..20 {
            let table = format!("route{}", ".routes".repeat(depth));
            deep.push_str(&format!("[[{table}]]\nreceivers = [\"a\"]\n"));
        }
        let alerts: AlertsSection = toml::from_str(&deep).unwrap();
        let error = Router::from_config(&alerts).unwrap_err().to_string();
        assert!(error.contains("nest at most"), "{error}");
    }
}
