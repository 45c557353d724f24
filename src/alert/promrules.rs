//! Prometheus rule files, taken unchanged: YAML `groups` of alerting and recording rules with
//! PromQL expressions, checked at load as `promtool check rules` checks them, and turned into
//! the engine's [`Rule`]s and [`Recording`]s so that they share the lifecycle, state, history,
//! queues and topics of Outpost's own rules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use super::rules::{Condition, Expression, Recording, Rule, RuleError, Severity, Watch};
use super::template::Template;
use outpost_storage::promql;

/// The longest reach of a rule's selectors: the engine keeps that much of each selected series
/// in memory, so a month-long range would hold a month of samples.
pub const MAX_REACH_MS: i64 = 24 * 3_600_000;
/// The largest rule file taken: far beyond any real one, small enough that a hostile one
/// cannot exhaust memory.
pub const MAX_FILE_BYTES: usize = 4 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    groups: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    interval: Option<String>,
    #[serde(default)]
    limit: usize,
    query_offset: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    alert: Option<String>,
    record: Option<String>,
    expr: Option<String>,
    #[serde(rename = "for")]
    for_: Option<String>,
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// What one file holds.
#[derive(Debug, Default)]
pub struct Parsed {
    pub rules: Vec<Rule>,
    pub recordings: Vec<Recording>,
}

/// Whether `path` is a Prometheus rule file rather than an Outpost one.
pub fn is_prometheus_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yml" || e == "yaml")
}

/// Prometheus' duration syntax: units from `ms` to `y`, or a bare `0`.
fn duration_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
    if let Some(years) = text.strip_suffix('y').and_then(|n| n.parse::<i64>().ok()) {
        return years
            .checked_mul(365 * 86_400_000)
            .ok_or_else(|| format!("{text:?} is too long"));
    }
    outpost_storage::parse_duration_ms(text).map_err(|e| e.to_string())
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn check_label_names(labels: &BTreeMap<String, String>) -> Result<(), String> {
    for name in labels.keys() {
        if !promql::is_label_name(name) || name.starts_with("__") {
            return Err(format!("{name:?} is not a label name"));
        }
    }
    Ok(())
}

/// Where an alert's severity comes from: its `severity` label, read the ways people write it.
fn severity_of(labels: &BTreeMap<String, String>) -> Severity {
    match labels
        .get("severity")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        Some("critical" | "page" | "error" | "high" | "emergency" | "alert") => Severity::Critical,
        Some("info" | "informational" | "low" | "none" | "notice") => Severity::Info,
        _ => Severity::Warning,
    }
}

/// Parses one file's text; every error is returned with its group and rule.
pub fn parse(file: &Path, text: &str) -> Result<Parsed, Vec<RuleError>> {
    let error = |rule: Option<String>, key: Option<&'static str>, message: String| RuleError {
        file: file.to_path_buf(),
        rule,
        key,
        message,
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(vec![error(
            None,
            None,
            format!(
                "{} bytes: rule files of at most {MAX_FILE_BYTES} are taken",
                text.len()
            ),
        )]);
    }
    let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| {
        vec![error(
            None,
            None,
            e.to_string().trim_end().replace('\n', "\n  "),
        )]
    })?;
    let mut parsed = Parsed::default();
    let mut errors = Vec::new();
    let mut groups = BTreeSet::new();
    for group in raw.groups {
        let where_ = |index: usize, rule: &RawRule| {
            let name = rule
                .alert
                .as_deref()
                .or(rule.record.as_deref())
                .unwrap_or("");
            format!("group {:?}, rule #{} {name}", group.name, index + 1)
                .trim_end()
                .to_string()
        };
        if group.name.is_empty() {
            errors.push(error(None, Some("name"), "a group needs a name".into()));
            continue;
        }
        if !groups.insert(group.name.clone()) {
            errors.push(error(
                Some(format!("group {:?}", group.name)),
                Some("name"),
                "two groups of this name in the file".into(),
            ));
        }
        let settings = match group_settings(&group) {
            Ok(settings) => settings,
            Err((key, message)) => {
                errors.push(error(
                    Some(format!("group {:?}", group.name)),
                    Some(key),
                    message,
                ));
                continue;
            }
        };
        for (index, raw) in group.rules.iter().enumerate() {
            match check(file, &group, settings, raw) {
                Ok(Checked::Alert(rule)) => parsed.rules.push(*rule),
                Ok(Checked::Record(recording)) => parsed.recordings.push(recording),
                Err((key, message)) => {
                    errors.push(error(Some(where_(index, raw)), Some(key), message))
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

fn group_settings(group: &RawGroup) -> Result<Option<i64>, (&'static str, String)> {
    let interval_ms = match &group.interval {
        Some(text) => Some(duration_ms(text).map_err(|e| ("interval", e))?),
        None => None,
    };
    if interval_ms.is_some_and(|ms| ms <= 0) {
        return Err(("interval", "must be longer than 0".into()));
    }
    if let Some(offset) = &group.query_offset {
        // Outpost evaluates its own samples as they arrive: no ingestion delay to wait for.
        if duration_ms(offset).map_err(|e| ("query_offset", e))? != 0 {
            return Err((
                "query_offset",
                "not supported: the agent evaluates its own samples, which are never late".into(),
            ));
        }
    }
    check_label_names(&group.labels).map_err(|e| ("labels", e))?;
    Ok(interval_ms)
}

enum Checked {
    Alert(Box<Rule>),
    Record(Recording),
}

fn expression(
    group: &RawGroup,
    interval_ms: Option<i64>,
    text: &str,
) -> Result<Expression, (&'static str, String)> {
    let expr = promql::parse(text).map_err(|e| ("expr", e.to_string()))?;
    let reaches = promql::selector_reaches(&expr, promql::Options::default().lookback_ms)
        .map_err(|e| ("expr", e.to_string()))?;
    let mut selectors = Vec::with_capacity(reaches.len());
    for reach in reaches {
        selectors.push(Watch {
            key: promql::matchers_key(&reach.matchers),
            selector: promql::store_selector(&reach.matchers)
                .map_err(|e| ("expr", e.to_string()))?,
            reach_ms: reach.reach_ms,
        });
    }
    if let Some(far) = selectors.iter().map(|s| s.reach_ms).max() {
        if far > MAX_REACH_MS {
            return Err((
                "expr",
                format!(
                    "reads {} hours back; rules on the device may read at most {} (their samples \
                     are kept in memory)",
                    far / 3_600_000,
                    MAX_REACH_MS / 3_600_000
                ),
            ));
        }
    }
    Ok(Expression {
        text: text.to_string(),
        expr: std::sync::Arc::new(expr),
        selectors,
        group: group.name.clone(),
        interval_ms,
        limit: group.limit,
    })
}

fn check(
    file: &Path,
    group: &RawGroup,
    interval_ms: Option<i64>,
    raw: &RawRule,
) -> Result<Checked, (&'static str, String)> {
    let text = raw
        .expr
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .ok_or(("expr", "missing".to_string()))?;
    let mut labels = group.labels.clone();
    labels.extend(raw.labels.clone());
    check_label_names(&raw.labels).map_err(|e| ("labels", e))?;
    if labels.values().any(|v| v.contains("{{")) {
        return Err((
            "labels",
            "templates in label values are not supported: an alert's labels name it".into(),
        ));
    }
    match (&raw.alert, &raw.record) {
        (Some(_), Some(_)) => Err(("alert", "a rule is either alert or record, not both".into())),
        (None, None) => Err(("alert", "a rule needs alert or record".into())),
        (None, Some(record)) => {
            if !is_metric_name(record) {
                return Err(("record", format!("{record:?} is not a metric name")));
            }
            for (key, set) in [
                ("for", raw.for_.is_some()),
                ("keep_firing_for", raw.keep_firing_for.is_some()),
                ("annotations", !raw.annotations.is_empty()),
            ] {
                if set {
                    return Err((key, "only alerting rules take it".into()));
                }
            }
            Ok(Checked::Record(Recording {
                record: record.clone(),
                file: file.to_path_buf(),
                expression: expression(group, interval_ms, text)?,
                labels,
            }))
        }
        (Some(alert), None) => {
            super::rules::check_name(alert).map_err(|e| ("alert", e))?;
            let optional = |key: &'static str, text: &Option<String>| {
                text.as_deref()
                    .map(|t| duration_ms(t).map_err(|e| (key, e)))
                    .transpose()
                    .map(|d| d.unwrap_or(0))
            };
            let template = |key: &str| -> Result<Template, (&'static str, String)> {
                Template::parse_prometheus(raw.annotations.get(key).map_or("", String::as_str))
                    .map_err(|e| ("annotations", format!("{key}: {e}")))
            };
            let mut annotations = BTreeMap::new();
            for (key, value) in &raw.annotations {
                if key != "summary" && key != "description" {
                    let parsed = Template::parse_prometheus(value)
                        .map_err(|e| ("annotations", format!("{key}: {e}")))?;
                    annotations.insert(key.clone(), parsed);
                }
            }
            Ok(Checked::Alert(Box::new(Rule {
                name: alert.clone(),
                file: file.to_path_buf(),
                condition: Condition::Expression(expression(group, interval_ms, text)?),
                for_ms: optional("for", &raw.for_)?,
                keep_firing_for_ms: optional("keep_firing_for", &raw.keep_firing_for)?,
                severity: severity_of(&labels),
                labels,
                summary: template("summary")?,
                description: template("description")?,
                annotations,
                renotify_ms: None,
                escalate_after_ms: None,
                escalate_to: Severity::Critical,
                cooldown_ms: 0,
                notify: None,
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
groups:
  - name: host
    interval: 30s
    rules:
      - record: instance:cpu_busy:ratio
        expr: 1 - avg without (cpu, mode) (rate(node_cpu_seconds_total{mode="idle"}[1m]))
      - alert: HostHighCpu
        expr: instance:cpu_busy:ratio > 0.9
        for: 5m
        keep_firing_for: 1m
        labels:
          severity: page
        annotations:
          summary: "CPU at {{ $value | humanizePercentage }} on {{ $labels.instance }}"
          runbook_url: https://example.com/{{ $labels.alertname }}
      - alert: HostHighCpu
        expr: instance:cpu_busy:ratio > 0.8
        labels: {severity: warning}
"#;

    #[test]
    fn a_prometheus_file_loads_unchanged() {
        let parsed = parse(Path::new("host.yml"), FILE).unwrap();
        assert_eq!(parsed.recordings.len(), 1);
        assert_eq!(parsed.recordings[0].record, "instance:cpu_busy:ratio");
        assert_eq!(parsed.rules.len(), 2);
        let rule = &parsed.rules[0];
        assert_eq!((rule.for_ms, rule.keep_firing_for_ms), (300_000, 60_000));
        assert_eq!(rule.severity, Severity::Critical);
        assert_eq!(parsed.rules[1].severity, Severity::Warning);
        let Condition::Expression(e) = &rule.condition else {
            panic!("a PromQL rule");
        };
        assert_eq!((e.group.as_str(), e.interval_ms), ("host", Some(30_000)));
        assert!(rule.annotations.contains_key("runbook_url"));
    }

    fn errors(text: &str) -> Vec<String> {
        parse(Path::new("bad.yml"), text)
            .map(|_| Vec::new())
            .unwrap_or_else(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn mistakes_name_the_group_rule_and_key() {
        let bad = r#"
groups:
  - name: g
    rules:
      - alert: A
        expr: rate(x[5m]
      - record: "not a name"
        expr: up
      - alert: B
        record: b
        expr: up
      - alert: C
        expr: up
        annotations: {summary: "{{ if gt $value 1.0 }}high{{ end }}"}
      - record: d
        expr: up
        for: 5m
      - alert: E
        expr: up @ 100
      - alert: F
        expr: max_over_time(up[30d])
"#;
        let found = errors(bad);
        assert_eq!(found.len(), 7, "{found:#?}");
        assert!(
            found[0].contains("rule #1 A") && found[0].contains("expr"),
            "{}",
            found[0]
        );
        assert!(found[1].contains("record") && found[1].contains("metric name"));
        assert!(found[3].contains("\"if\""), "{}", found[3]);
        assert!(found[4].contains("for") && found[4].contains("only alerting"));
        assert!(found[5].contains("@"), "{}", found[5]);
        assert!(found[6].contains("720 hours"), "{}", found[6]);
        let unknown = errors("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        fro: 5m\n");
        assert!(unknown[0].contains("fro"), "{unknown:?}");
        let twice = errors("groups:\n  - name: g\n    rules: []\n  - name: g\n    rules: []\n");
        assert!(twice[0].contains("two groups"), "{twice:?}");
    }

    #[test]
    fn hostile_yaml_is_an_error_not_a_crash() {
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
        assert!(!errors(bomb).is_empty());
        for text in ["groups: [", "\u{0}\u{1}", "groups: {a: 1}", "- - - - -", ""] {
            let _ = parse(Path::new("x.yml"), text);
        }
        let deep = format!("groups: {}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(!errors(&deep).is_empty());
    }
}
