//! The hub's device labels (site, customer, role: `outpost hub device label`) on every series of
//! the device, as Prometheus puts a target's labels on what it scrapes, so that PromQL at the hub
//! selects, groups and joins by them: `node_load1{site="north"}`, `sum by (site) (...)`.
//!
//! They are applied as a query reads, with the labels the devices have now: relabelling a device
//! relabels its history too, and nothing is rewritten in the store. A label the series has of its
//! own keeps its value as `exported_<name>`, as Prometheus does without `honor_labels`, so that
//! two series of a device never come to share one label set.

use std::collections::{BTreeMap, BTreeSet};

use outpost_storage::promql::LabelMatchOp as MatchOp;
use outpost_storage::promql::{self, Labels, Matcher, Rollups, Series, Source};
use outpost_storage::{SeriesKey, Store};

/// Each device's labels, by device (the `instance` label of its series).
pub type DeviceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// The label that names a series' device.
const DEVICE_LABEL: &str = "instance";

/// The store seen with the device labels on its series.
pub struct Labelled<'a> {
    pub store: &'a Store,
    pub devices: &'a DeviceLabels,
}

/// A selector's matchers split in two: those the store answers (with, when only some devices can
/// match, a matcher on their names), and those on device labels, checked on the relabelled series.
struct Split {
    store: Vec<Matcher>,
    device: Vec<Matcher>,
}

impl Labelled<'_> {
    /// `None` when no series can match.
    fn split(&self, matchers: &[Matcher]) -> Option<Split> {
        let names: BTreeSet<&str> = self
            .devices
            .values()
            .flat_map(|labels| labels.keys().map(String::as_str))
            .collect();
        let (device, mut store): (Vec<Matcher>, Vec<Matcher>) = matchers
            .iter()
            .cloned()
            .partition(|m| names.contains(m.name.as_str()));
        // A matcher that refuses the empty value matches only series that have the label, so
        // only series of devices given it: the store need read no other device's.
        if device.iter().any(|m| !m.is_match("")) {
            let candidates: Vec<&str> = self
                .devices
                .iter()
                .filter(|(_, labels)| {
                    device
                        .iter()
                        .all(|m| m.is_match(labels.get(&m.name).map_or("", String::as_str)))
                })
                .map(|(name, _)| name.as_str())
                .collect();
            if candidates.is_empty() {
                return None;
            }
            // Past a few hundred names the matcher costs more than it saves; the device
            // matchers are checked on what the store gives either way.
            if candidates.len() <= MAX_NAMED_DEVICES {
                store.extend(any_of(DEVICE_LABEL, &candidates));
            }
        }
        Some(Split { store, device })
    }

    /// The series' labels with its device's on them.
    pub fn relabel(&self, labels: &mut Labels) {
        let Some(extra) = self.devices.get(labels.get(DEVICE_LABEL)) else {
            return;
        };
        for (name, value) in extra {
            let own = labels.get(name).to_string();
            if own == *value {
                continue;
            }
            if !own.is_empty() {
                labels.set(&format!("exported_{name}"), &own);
            }
            labels.set(name, value);
        }
    }

    /// The series key with its device's labels on it.
    pub fn relabel_key(&self, key: SeriesKey) -> SeriesKey {
        if !self.devices.contains_key(key.label(DEVICE_LABEL)) {
            return key;
        }
        let mut labels = Labels::from_key(&key);
        self.relabel(&mut labels);
        let pairs = labels
            .iter()
            .filter(|(name, _)| *name != promql::METRIC_NAME)
            .map(|(name, value)| (name.to_string(), value.to_string()));
        // The names are those of a valid key and of validated device labels.
        SeriesKey::new(key.name(), pairs).unwrap_or(key)
    }

    /// The keys of the series matching `matchers` (read from the store with `list`), relabelled.
    pub fn keys(
        &self,
        matchers: &[Matcher],
        list: impl FnOnce(&[Matcher]) -> promql::Result<Vec<SeriesKey>>,
    ) -> promql::Result<Vec<SeriesKey>> {
        let Some(split) = self.split(matchers) else {
            return Ok(Vec::new());
        };
        let keys = list(&split.store)?;
        Ok(keys
            .into_iter()
            .map(|key| self.relabel_key(key))
            .filter(|key| split.device.iter().all(|m| m.is_match(key.label(&m.name))))
            .collect())
    }
}

/// The most devices named in the store's matcher.
const MAX_NAMED_DEVICES: usize = 500;

/// A matcher of `label` equal to any of `values`; `None` if its regex would be too large.
fn any_of(label: &str, values: &[&str]) -> Option<Matcher> {
    let alternatives: Vec<String> = values.iter().map(|v| regex::escape(v)).collect();
    let pattern = alternatives.join("|");
    let anchored = regex::Regex::new(&format!("^(?:{pattern})$")).ok()?;
    Some(Matcher::new(MatchOp::Re(anchored), label, &pattern))
}

impl Source for Labelled<'_> {
    fn select(&self, matchers: &[Matcher], from: i64, to: i64) -> promql::Result<Vec<Series>> {
        let Some(split) = self.split(matchers) else {
            return Ok(Vec::new());
        };
        let mut series = self.store.select(&split.store, from, to)?;
        for one in &mut series {
            self.relabel(&mut one.labels);
        }
        series.retain(|s| {
            split
                .device
                .iter()
                .all(|m| m.is_match(s.labels.get(&m.name)))
        });
        Ok(series)
    }

    fn select_rollups(
        &self,
        matchers: &[Matcher],
        from: i64,
        to: i64,
        resolution_ms: i64,
    ) -> promql::Result<Vec<Rollups>> {
        let Some(split) = self.split(matchers) else {
            return Ok(Vec::new());
        };
        let mut rollups = self
            .store
            .select_rollups(&split.store, from, to, resolution_ms)?;
        for one in &mut rollups {
            self.relabel(&mut one.labels);
        }
        rollups.retain(|s| {
            split
                .device
                .iter()
                .all(|m| m.is_match(s.labels.get(&m.name)))
        });
        Ok(rollups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_storage::Options;

    fn store_with(keys: &[&str]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), Options::default()).unwrap();
        let mut batch = outpost_storage::WriteBatch::default();
        for (i, key) in keys.iter().enumerate() {
            let id = store.series_id(&SeriesKey::parse(key).unwrap()).unwrap();
            batch.sample(id, 1_000, i as f64);
        }
        #[allow(clippy::disallowed_methods)] // a test, off any runtime
        store.write(batch).unwrap();
        (dir, store)
    }

    fn fleet() -> DeviceLabels {
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        BTreeMap::from([
            ("a".into(), labels(&[("site", "north"), ("role", "camera")])),
            ("b".into(), labels(&[("site", "south")])),
        ])
    }

    fn answer(source: &dyn Source, query: &str) -> Vec<String> {
        let options = promql::Options::default();
        let answer = promql::instant(source, query, 1_000, &options, None).unwrap();
        let mut out: Vec<String> = match answer.value {
            promql::Value::Vector(samples) => samples
                .into_iter()
                .map(|s| format!("{} {}", s.labels, s.v))
                .collect(),
            other => panic!("{other:?}"),
        };
        out.sort();
        out
    }

    #[test]
    fn queries_select_group_and_join_by_device_labels() {
        let (_dir, store) = store_with(&[
            r#"load{instance="a"}"#,
            r#"load{instance="b"}"#,
            r#"load{instance="c"}"#,
            r#"load"#,
        ]);
        let devices = fleet();
        let labelled = Labelled {
            store: &store,
            devices: &devices,
        };
        assert_eq!(
            answer(&labelled, r#"load{site="north"}"#),
            [r#"{__name__="load", instance="a", role="camera", site="north"} 0"#]
        );
        assert_eq!(
            answer(&labelled, r#"{site=~"north|south"}"#).len(),
            2,
            "a selector of device labels alone"
        );
        assert_eq!(
            answer(&labelled, r#"sum by (site) (load)"#),
            [r#"{site="north"} 0"#, r#"{site="south"} 1"#, "{} 5"]
        );
        // Series of devices without the label, and of no device, match a negative matcher.
        assert_eq!(answer(&labelled, r#"load{site!="north"}"#).len(), 3);
        assert!(answer(&labelled, r#"load{site="east"}"#).is_empty());
        // Without device labels the store answers as it is.
        let none = DeviceLabels::new();
        let plain = Labelled {
            store: &store,
            devices: &none,
        };
        assert!(answer(&plain, r#"load{site="north"}"#).is_empty());
    }

    #[test]
    fn a_fleet_too_large_to_name_in_one_matcher_is_filtered_after_the_store() {
        let (_dir, store) = store_with(&[r#"load{instance="dev-0"}"#, r#"load{instance="dev-1"}"#]);
        let devices: DeviceLabels = (0..MAX_NAMED_DEVICES + 10)
            .map(|i| {
                (
                    format!("dev-{i}"),
                    BTreeMap::from([("site".into(), "north".into())]),
                )
            })
            .collect();
        let labelled = Labelled {
            store: &store,
            devices: &devices,
        };
        assert_eq!(answer(&labelled, r#"count(load{site="north"})"#), ["{} 2"]);
    }

    #[test]
    fn a_label_the_series_has_is_kept_as_exported() {
        let (_dir, store) = store_with(&[
            r#"temp{instance="b",site="lab"}"#,
            r#"temp{instance="b",site="yard"}"#,
        ]);
        let devices = fleet();
        let labelled = Labelled {
            store: &store,
            devices: &devices,
        };
        assert_eq!(
            answer(&labelled, r#"temp"#),
            [
                r#"{__name__="temp", exported_site="lab", instance="b", site="south"} 0"#,
                r#"{__name__="temp", exported_site="yard", instance="b", site="south"} 1"#,
            ]
        );
    }

    #[test]
    fn keys_are_listed_relabelled_and_filtered() {
        let (_dir, store) = store_with(&[r#"load{instance="a"}"#, r#"load{instance="b"}"#]);
        let devices = fleet();
        let labelled = Labelled {
            store: &store,
            devices: &devices,
        };
        let matchers = promql::parse_matchers(r#"{role="camera"}"#).unwrap();
        let keys = labelled
            .keys(&matchers, |m| {
                let selector = promql::store_selector(m)?;
                Ok(store
                    .series(&selector)
                    .into_iter()
                    .map(|(_, k)| k)
                    .collect())
            })
            .unwrap();
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        assert_eq!(keys, [r#"load{instance="a",role="camera",site="north"}"#]);
    }
}
