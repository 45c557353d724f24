//! A series' label set as PromQL sees it: the metric name is the label `__name__`.

use std::fmt;

use crate::SeriesKey;

pub const METRIC_NAME: &str = "__name__";

/// Labels sorted by name, none with an empty value (an empty label is an absent one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    pub fn new(mut pairs: Vec<(String, String)>) -> Labels {
        pairs.retain(|(_, v)| !v.is_empty());
        pairs.sort();
        pairs.dedup_by(|a, b| a.0 == b.0);
        Labels(pairs)
    }

    pub fn from_key(key: &SeriesKey) -> Labels {
        let mut pairs = Vec::with_capacity(key.label_count() + 1);
        pairs.push((METRIC_NAME.to_string(), key.name().to_string()));
        pairs.extend(key.owned_labels());
        Labels::new(pairs)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, name: &str) -> &str {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .map(|i| self.0[i].1.as_str())
            .unwrap_or("")
    }

    /// Sets `name` to `value`, or removes it when `value` is empty.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].1 = value.to_string(),
            Err(_) if value.is_empty() => {}
            Err(i) => self.0.insert(i, (name.to_string(), value.to_string())),
        }
    }

    pub fn without_name(&self) -> Labels {
        self.without(&[METRIC_NAME])
    }

    pub fn without<S: AsRef<str>>(&self, names: &[S]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|(k, _)| !names.iter().any(|n| n.as_ref() == k))
                .cloned()
                .collect(),
        )
    }

    pub fn only<S: AsRef<str>>(&self, names: &[S]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|(k, _)| names.iter().any(|n| n.as_ref() == k))
                .cloned()
                .collect(),
        )
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        f.write_str("}")
    }
}
