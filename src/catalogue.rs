//! The metric catalogue, read from `docs/metrics.md` at build time: the document is the single
//! list of what the agent (and, in its last section, the hub) emits; the agent's `/metrics`
//! takes its `# HELP` and `# TYPE` lines from it, both roles' `/api/v1/metadata` its rows, and a
//! test checks that the collectors emit nothing it does not describe.

use std::collections::HashMap;
use std::sync::OnceLock;

pub const DOCUMENT: &str = include_str!("../docs/metrics.md");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricDoc {
    pub name: &'static str,
    /// `gauge` or `counter`.
    pub kind: &'static str,
    pub unit: &'static str,
    pub labels: &'static str,
    pub description: &'static str,
}

/// Parses the tables' rows: `| `name` | type | unit | labels | description |`.
pub fn parse(document: &'static str) -> Vec<MetricDoc> {
    let mut metrics = Vec::new();
    for line in document.lines() {
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        // Four cells, then the description, which may itself hold `|`; a cell may be empty.
        let cells: Vec<&'static str> = row.splitn(5, '|').map(str::trim).collect();
        if cells.len() < 5 {
            continue;
        }
        let Some(name) = cells[0].strip_suffix('`') else {
            continue;
        };
        metrics.push(MetricDoc {
            name,
            kind: cells[1],
            unit: cells[2],
            labels: cells[3],
            description: cells[4].trim_end_matches('|').trim(),
        });
    }
    metrics
}

/// Every documented metric as `/api/v1/metadata` lists it: (name, type, help, unit); a family
/// row (`node_memory_<Field>_bytes`) is left out, as it names no metric.
pub fn prometheus_metadata() -> Vec<(String, String, String, String)> {
    parse(DOCUMENT)
        .into_iter()
        .filter(|m| !m.name.contains('<'))
        .map(|m| {
            (
                m.name.to_string(),
                m.kind.to_string(),
                m.description.to_string(),
                m.unit.trim_matches('`').to_string(),
            )
        })
        .collect()
}

pub fn lookup(name: &str) -> Option<&'static MetricDoc> {
    /// The rows by name, and apart the few family rows, which the agent's scrapes and pushes
    /// try for every application series that is not the agent's own.
    type Index = (HashMap<&'static str, MetricDoc>, Vec<MetricDoc>);
    static INDEX: OnceLock<Index> = OnceLock::new();
    let (by_name, families) = INDEX.get_or_init(|| {
        let rows = parse(DOCUMENT);
        let families = rows.iter().filter(|m| m.name.contains('<')).cloned();
        let families = families.collect();
        (rows.into_iter().map(|m| (m.name, m)).collect(), families)
    });
    by_name.get(name).or_else(|| {
        // A family row such as `node_memory_<Field>_bytes`; the longest pattern that fits.
        families
            .iter()
            .filter(|m| pattern_matches(m.name, name))
            .max_by_key(|m| m.name.len())
    })
}

/// Whether `name` fits a documented name with one `<placeholder>` (a run of letters, digits
/// and `_`).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (Some(open), Some(close)) = (pattern.find('<'), pattern.find('>')) else {
        return false;
    };
    let (prefix, suffix) = (&pattern[..open], &pattern[close + 1..]);
    name.len() > prefix.len() + suffix.len()
        && name.starts_with(prefix)
        && name.ends_with(suffix)
        && name[prefix.len()..name.len() - suffix.len()]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_rows_describe_the_names_they_stand_for() {
        assert_eq!(
            lookup("node_memory_Active_anon_bytes").map(|m| m.name),
            Some("node_memory_<Field>_bytes")
        );
        assert_eq!(
            lookup("node_memory_HugePages_Total").map(|m| m.name),
            Some("node_memory_<Field>")
        );
        assert!(lookup("node_memory_").is_none());
        assert!(lookup("node_memory_a{b}").is_none());
        assert!(lookup("node_load1").is_some_and(|m| m.name == "node_load1"));
    }

    #[test]
    fn every_documented_metric_is_well_formed() {
        let metrics = parse(DOCUMENT);
        assert!(metrics.len() > 70, "only {} metrics parsed", metrics.len());
        let mut seen = std::collections::HashSet::new();
        for metric in &metrics {
            assert!(seen.insert(metric.name), "{} documented twice", metric.name);
            assert!(
                matches!(metric.kind, "gauge" | "counter"),
                "{}: type {:?}",
                metric.name,
                metric.kind
            );
            // cAdvisor's name, kept as it is for the container dashboards that use it.
            let named_by_others = metric.name == "container_memory_failcnt";
            assert_eq!(
                metric.kind == "counter",
                metric.name.ends_with("_total") || named_by_others,
                "{}: counters and only counters end in _total",
                metric.name
            );
            assert!(
                !metric.description.is_empty(),
                "{} has no description",
                metric.name
            );
            for (suffix, unit) in [
                ("_bytes", "bytes"),
                ("_seconds", "seconds"),
                ("_hertz", "hertz"),
                ("_celsius", "celsius"),
                ("_watts", "watts"),
                ("_ratio", "ratio"),
                ("_volts", "volts"),
                ("_amperes", "amperes"),
            ] {
                if metric.name.trim_end_matches("_total").ends_with(suffix) {
                    assert_eq!(metric.unit, unit, "{}: unit", metric.name);
                }
            }
            // The hub's own metrics name the device in `instance`, as the hub's store does.
            assert!(
                metric.name.starts_with("outpost_hub_")
                    || !metric
                        .labels
                        .split(", ")
                        .any(|l| l.trim_matches('`') == "instance"),
                "{}: the label instance is reserved for the hub",
                metric.name
            );
        }
    }
}
