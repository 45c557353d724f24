//! Alert rules: the TOML format of rule files and rule directories, checked at load so that
//! every mistake is reported with the file, the rule and the key it is in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use outpost_storage::Selector;
use serde::Deserialize;

use super::template::Template;
use crate::timearg::parse_duration_ms;

/// How the samples of a window become one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reducer {
    Last,
    Avg,
    Min,
    Max,
    /// Per-second increase of a counter, resets counted as restarts from zero.
    Rate,
    /// Increase of a counter over the window, resets counted as restarts from zero.
    Increase,
    /// True when the series has no sample in the window; the value is the seconds since its
    /// last sample.
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
    Equal,
    NotEqual,
}

impl Op {
    fn parse(text: &str) -> Option<Op> {
        Some(match text {
            ">" => Op::Greater,
            ">=" => Op::GreaterOrEqual,
            "<" => Op::Less,
            "<=" => Op::LessOrEqual,
            "==" => Op::Equal,
            "!=" => Op::NotEqual,
            _ => return None,
        })
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Greater => value > threshold,
            Op::GreaterOrEqual => value >= threshold,
            Op::Less => value < threshold,
            Op::LessOrEqual => value <= threshold,
            Op::Equal => value == threshold,
            Op::NotEqual => value != threshold,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Greater => ">",
            Op::GreaterOrEqual => ">=",
            Op::Less => "<",
            Op::LessOrEqual => "<=",
            Op::Equal => "==",
            Op::NotEqual => "!=",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}

/// The other side of a ratio, as a selector alone (same reducer and window) or a table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDivisor {
    Selector(String),
    Table(RawSide),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSide {
    select: String,
    reduce: Option<Reducer>,
    window: Option<String>,
}

/// A second condition that must hold too, on series with matching labels.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    select: String,
    #[serde(default = "default_reduce")]
    reduce: Reducer,
    window: Option<String>,
    #[serde(default = "default_op")]
    op: String,
    threshold: f64,
    on: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum NeverSeen {
    Fire,
    Ignore,
}

/// One rule as written in a file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    name: String,
    #[serde(default)]
    select: String,
    divide_by: Option<RawDivisor>,
    on: Option<Vec<String>>,
    when: Option<RawWhen>,
    never_seen: Option<NeverSeen>,
    #[serde(default = "default_reduce")]
    reduce: Reducer,
    window: Option<String>,
    #[serde(default = "default_op")]
    op: String,
    threshold: Option<f64>,
    #[serde(rename = "for")]
    for_: Option<String>,
    clear_threshold: Option<f64>,
    keep_firing_for: Option<String>,
    #[serde(default = "default_severity")]
    severity: Severity,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    summary: Option<String>,
    #[serde(default)]
    description: String,
    renotify: Option<String>,
    escalate_after: Option<String>,
    escalate_to: Option<Severity>,
    cooldown: Option<String>,
    notify: Option<Vec<String>>,
}

fn default_reduce() -> Reducer {
    Reducer::Last
}
fn default_op() -> String {
    ">".into()
}
fn default_severity() -> Severity {
    Severity::Warning
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
}

/// A selector with the reducer and window that turn its series' samples into values.
#[derive(Debug, Clone)]
pub struct Side {
    pub select: Selector,
    pub reduce: Reducer,
    pub window_ms: i64,
}

/// A condition on other series that gates a rule: both must hold, on series whose labels agree
/// (`on`: these labels; `None`: all labels but the metric name).
#[derive(Debug, Clone)]
pub struct Gate {
    pub side: Side,
    pub op: Op,
    pub threshold: f64,
    pub on: Option<Vec<String>>,
}

/// Outpost's own condition: a selector reduced over a window and compared with a threshold.
#[derive(Debug, Clone)]
pub struct Threshold {
    /// The series the rule watches.
    pub select: Selector,
    /// The denominator of a ratio rule, and the labels both sides must agree on (`None`: all
    /// labels but the metric name).
    pub divide_by: Option<(Side, Option<Vec<String>>)>,
    /// A second condition that must hold too (`when = ...` in the file).
    pub when: Option<Gate>,
    /// For `absent` rules: whether a selector that never matched anything fires.
    pub fire_if_never_seen: bool,
    /// How a window of samples becomes the value compared.
    pub reduce: Reducer,
    /// The window `reduce` runs over; 0 for the latest sample.
    pub window_ms: i64,
    pub op: Op,
    pub threshold: f64,
    /// Hysteresis: once firing, it resolves only past this threshold.
    pub clear_threshold: Option<f64>,
}

impl Threshold {
    /// Whether the firing condition holds for `value`; while firing, the clear threshold (if
    /// any) takes the threshold's place, so that a value hovering at the line does not flap.
    pub fn condition(&self, value: f64, firing: bool) -> bool {
        let threshold = match (firing, self.clear_threshold) {
            (true, Some(clear)) => clear,
            _ => self.threshold,
        };
        self.op.holds(value, threshold)
    }

    /// The selectors it reads and the window each needs: the rule's own first, then the
    /// divisor's and the gate's.
    pub fn watches(&self) -> Vec<(Selector, i64)> {
        let mut out = vec![(self.select.clone(), self.window_ms)];
        if let Some((side, _)) = &self.divide_by {
            out.push((side.select.clone(), side.window_ms));
        }
        if let Some(gate) = &self.when {
            out.push((gate.side.select.clone(), gate.side.window_ms));
        }
        out
    }
}

/// A PromQL expression with what evaluating it from recent samples needs.
#[derive(Debug, Clone)]
pub struct Expression {
    pub text: String,
    pub expr: std::sync::Arc<outpost_storage::promql::Expr>,
    /// Its selectors, each with how far back it reads.
    pub selectors: Vec<Watch>,
    /// The rule group's name and evaluation interval (`None`: at every evaluation).
    pub group: String,
    pub interval_ms: Option<i64>,
    /// The group's `limit`: more series than this is an evaluation error (0: no limit).
    pub limit: usize,
}

/// One selector of an expression: how the evaluator will ask for it (its matchers as
/// [`outpost_storage::promql::matchers_key`] writes them), the store's selector for it, and how
/// far back it reads.
#[derive(Debug, Clone)]
pub struct Watch {
    pub key: String,
    pub selector: Selector,
    pub reach_ms: i64,
}

impl Expression {
    /// Its selectors and the window each needs. PromQL's ranges are closed (Prometheus 2.x):
    /// a sample exactly `reach` old still counts, so one millisecond more is kept.
    pub fn watches(&self) -> Vec<(Selector, i64)> {
        self.selectors
            .iter()
            .map(|w| (w.selector.clone(), w.reach_ms + 1))
            .collect()
    }
}

/// What makes a rule's alerts hold.
#[derive(Debug, Clone)]
pub enum Condition {
    Threshold(Threshold),
    /// A Prometheus alerting rule: every series the expression returns is an alert that
    /// holds, with the series' value.
    Expression(Expression),
}

/// A Prometheus recording rule: the expression's result stored as series named `record`.
#[derive(Debug, Clone)]
pub struct Recording {
    pub record: String,
    pub file: PathBuf,
    pub expression: Expression,
    pub labels: BTreeMap<String, String>,
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// The file it came from, for messages.
    pub file: PathBuf,
    pub condition: Condition,
    /// How long the condition must hold before pending becomes firing.
    pub for_ms: i64,
    /// How long it keeps firing after the condition stops holding.
    pub keep_firing_for_ms: i64,
    pub severity: Severity,
    /// Labels added to every instance's alert.
    pub labels: BTreeMap<String, String>,
    pub summary: Template,
    pub description: Template,
    /// Annotations other than the summary and description (Prometheus rules).
    pub annotations: BTreeMap<String, Template>,
    /// While firing, the channels are reminded this often.
    pub renotify_ms: Option<i64>,
    /// Firing this long raises the severity to `escalate_to`.
    pub escalate_after_ms: Option<i64>,
    pub escalate_to: Severity,
    /// A firing this soon after a resolve waits this long before the channels hear of it.
    pub cooldown_ms: i64,
    /// Notification channels by name; `None` for all of them.
    pub notify: Option<Vec<String>>,
}

impl Rule {
    /// The threshold its alerts are compared with, where it has one.
    pub fn threshold(&self) -> Option<f64> {
        match &self.condition {
            Condition::Threshold(t) => Some(t.threshold),
            Condition::Expression(_) => None,
        }
    }

    /// The selectors it reads and the window each needs.
    pub fn watches(&self) -> Vec<(Selector, i64)> {
        match &self.condition {
            Condition::Threshold(t) => t.watches(),
            Condition::Expression(e) => e.watches(),
        }
    }

    /// Whether `labels` are those of one of its alerts: rules of one name (Prometheus allows
    /// several, told apart by their labels) each own the alerts that carry all their labels.
    pub fn owns(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A rule loading error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub file: PathBuf,
    /// The rule's name, or its position when it has none yet.
    pub rule: Option<String>,
    pub key: Option<&'static str>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(rule) = &self.rule {
            write!(f, ": rule {rule}")?;
        }
        if let Some(key) = self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for RuleError {}

/// The rules of some files: alerting rules (Outpost's and Prometheus') and Prometheus'
/// recording rules.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub alerting: Vec<Rule>,
    pub recording: Vec<Recording>,
}

impl From<Vec<Rule>> for RuleSet {
    fn from(alerting: Vec<Rule>) -> Self {
        RuleSet {
            alerting,
            recording: Vec::new(),
        }
    }
}

impl RuleSet {
    /// Adds `rule` unless its name is taken: an Outpost rule's name is its own, while
    /// Prometheus rules may share a name when their labels tell their alerts apart.
    pub fn add(&mut self, rule: Rule) -> Result<(), RuleError> {
        let clash = self.alerting.iter().find(|other| {
            other.name == rule.name
                && (matches!(other.condition, Condition::Threshold(_))
                    || matches!(rule.condition, Condition::Threshold(_))
                    || other.labels == rule.labels)
        });
        if let Some(other) = clash {
            return Err(RuleError {
                file: rule.file.clone(),
                rule: Some(rule.name.clone()),
                key: Some("name"),
                message: if other.file == rule.file {
                    "defined twice in this file".into()
                } else {
                    format!("also defined in {}", other.file.display())
                },
            });
        }
        self.alerting.push(rule);
        Ok(())
    }
}

/// The rule files of `paths`: files as they are, directories for their `*.toml`, `*.yml` and
/// `*.yaml` files in name order (YAML files are Prometheus rule files). Every error of every
/// file is returned, not only the first.
pub fn load(paths: &[PathBuf]) -> Result<RuleSet, Vec<RuleError>> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            (p.extension().is_some_and(|e| e == "toml")
                                || super::promrules::is_prometheus_file(p))
                                && p.is_file()
                        })
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(error) => errors.push(file_error(path, format!("cannot list: {error}"))),
            }
        } else {
            files.push(path.clone());
        }
    }
    let mut set = RuleSet::default();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) => {
                errors.push(file_error(&file, format!("cannot read: {error}")));
                continue;
            }
        };
        let parsed = if super::promrules::is_prometheus_file(&file) {
            super::promrules::parse(&file, &text).map(|p| (p.rules, p.recordings))
        } else {
            parse(&file, &text).map(|rules| (rules, Vec::new()))
        };
        match parsed {
            Ok((rules, recordings)) => {
                for rule in rules {
                    if let Err(error) = set.add(rule) {
                        errors.push(error);
                    }
                }
                set.recording.extend(recordings);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

fn file_error(file: &Path, message: String) -> RuleError {
    RuleError {
        file: file.to_path_buf(),
        rule: None,
        key: None,
        message,
    }
}

/// Parses one file's text.
pub fn parse(file: &Path, text: &str) -> Result<Vec<Rule>, Vec<RuleError>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        vec![file_error(
            file,
            e.to_string().trim_end().replace('\n', "\n  "),
        )]
    })?;
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, raw) in raw.rule.into_iter().enumerate() {
        let label = if raw.name.is_empty() {
            format!("#{}", index + 1)
        } else {
            raw.name.clone()
        };
        match check(file, raw) {
            Ok(rule) => {
                if !seen.insert(rule.name.clone()) {
                    errors.push(RuleError {
                        file: file.to_path_buf(),
                        rule: Some(label),
                        key: Some("name"),
                        message: "defined twice in this file".into(),
                    });
                } else {
                    rules.push(rule);
                }
            }
            Err((key, message)) => errors.push(RuleError {
                file: file.to_path_buf(),
                rule: Some(label),
                key: Some(key),
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

/// A rule name is one MQTT topic level and a file-name-safe word.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters long".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "{name:?}: only letters, digits, '_' and '-' are allowed (it is an MQTT topic level)"
        ));
    }
    if name == "events" {
        return Err("\"events\" is reserved: alerts/events is the transitions topic".into());
    }
    Ok(())
}

fn duration(key: &'static str, text: Option<&str>) -> Result<Option<i64>, (&'static str, String)> {
    text.map(|t| parse_duration_ms(t).map_err(|e| (key, format!("{e:#}"))))
        .transpose()
}

/// A selector on the side of a rule (its divisor, its gate): its reducer and window default
/// to the rule's.
fn side(
    key: &'static str,
    (select, reduce, window): (&str, Option<Reducer>, Option<&str>),
    (rule_reduce, rule_window_ms): (Reducer, i64),
) -> Result<Side, (&'static str, String)> {
    let select = Selector::parse(select).map_err(|e| (key, e.to_string()))?;
    let window_ms = duration(key, window)?.unwrap_or(rule_window_ms);
    if window_ms <= 0 {
        return Err((key, "window: must be longer than 0".to_string()));
    }
    let reduce = reduce.unwrap_or(rule_reduce);
    if reduce == Reducer::Absent {
        return Err((
            key,
            "reduce: absent works only as the rule's own reducer".to_string(),
        ));
    }
    Ok(Side {
        select,
        reduce,
        window_ms,
    })
}

/// `divide_by` (and the `on` labels it matches by), for a ratio rule.
#[allow(clippy::type_complexity)] // the rule's own field type
fn check_divisor(
    raw: &RawRule,
    window_ms: i64,
) -> Result<Option<(Side, Option<Vec<String>>)>, (&'static str, String)> {
    let defaults = (raw.reduce, window_ms);
    Ok(match &raw.divide_by {
        Some(RawDivisor::Selector(text)) => Some((
            side("divide_by", (text, None, None), defaults)?,
            raw.on.clone(),
        )),
        Some(RawDivisor::Table(t)) => Some((
            side(
                "divide_by",
                (&t.select, t.reduce, t.window.as_deref()),
                defaults,
            )?,
            raw.on.clone(),
        )),
        None if raw.on.is_some() => {
            return Err((
                "on",
                "only a ratio rule (with divide_by) matches labels".into(),
            ))
        }
        None => None,
    })
}

/// `when`: a second condition that must hold too.
fn check_gate(raw: &RawRule, window_ms: i64) -> Result<Option<Gate>, (&'static str, String)> {
    let Some(w) = &raw.when else {
        return Ok(None);
    };
    if !w.threshold.is_finite() {
        return Err(("when", "threshold: must be a finite number".into()));
    }
    let selected = (w.select.as_str(), Some(w.reduce), w.window.as_deref());
    Ok(Some(Gate {
        side: side("when", selected, (raw.reduce, window_ms))?,
        op: Op::parse(&w.op).ok_or((
            "when",
            format!("op: {:?}: use >, >=, <, <=, == or !=", w.op),
        ))?,
        threshold: w.threshold,
        on: w.on.clone(),
    }))
}

/// The threshold, and the clear threshold on its near side; an absent rule takes neither
/// (nor a ratio).
fn check_threshold(raw: &RawRule, op: Op, ratio: bool) -> Result<f64, (&'static str, String)> {
    let threshold = match (raw.reduce, raw.threshold) {
        (Reducer::Absent, Some(_)) => {
            return Err((
                "threshold",
                "an absent rule fires when the window has no sample; it takes no threshold".into(),
            ))
        }
        (Reducer::Absent, None) => 0.0,
        (_, Some(t)) if t.is_finite() => t,
        (_, Some(_)) => return Err(("threshold", "must be a finite number".into())),
        (_, None) => {
            return Err((
                "threshold",
                "missing (every rule but absent needs one)".into(),
            ))
        }
    };
    if raw.reduce == Reducer::Absent && ratio {
        return Err(("divide_by", "an absent rule has no ratio".into()));
    }
    if let Some(clear) = raw.clear_threshold {
        let on_the_right_side = match op {
            Op::Greater | Op::GreaterOrEqual => clear <= threshold,
            Op::Less | Op::LessOrEqual => clear >= threshold,
            Op::Equal | Op::NotEqual => false,
        };
        if raw.reduce == Reducer::Absent || !on_the_right_side || !clear.is_finite() {
            return Err((
                "clear_threshold",
                format!(
                    "{clear} cannot clear `{} {threshold}`: it must be on the near side of the threshold (for > a lower value, for < a higher one)",
                    op.as_str()
                ),
            ));
        }
    }
    Ok(threshold)
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), (&'static str, String)> {
    for name in labels.keys() {
        if name.is_empty()
            || name.starts_with("__")
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err((
                "labels",
                format!(
                    "{name:?} is not a label name (letters, digits, '_', not starting with __)"
                ),
            ));
        }
    }
    Ok(())
}

fn check(file: &Path, raw: RawRule) -> Result<Rule, (&'static str, String)> {
    check_name(&raw.name).map_err(|e| ("name", e))?;
    if raw.select.is_empty() {
        return Err((
            "select",
            "missing (a series selector such as cpu_usage{core=\"0\"})".into(),
        ));
    }
    let select = Selector::parse(&raw.select).map_err(|e| ("select", e.to_string()))?;
    let op =
        Op::parse(&raw.op).ok_or(("op", format!("{:?}: use >, >=, <, <=, == or !=", raw.op)))?;
    let window_ms = duration("window", raw.window.as_deref())?.unwrap_or(60_000);
    if window_ms <= 0 {
        return Err(("window", "must be longer than 0".into()));
    }
    let divide_by = check_divisor(&raw, window_ms)?;
    let when = check_gate(&raw, window_ms)?;
    if raw.never_seen.is_some() && raw.reduce != Reducer::Absent {
        return Err(("never_seen", "only for absent rules".into()));
    }
    let threshold = check_threshold(&raw, op, divide_by.is_some())?;
    let summary = Template::parse(
        raw.summary
            .as_deref()
            .unwrap_or("{{rule}}: {{value}} {{labels}}"),
    )
    .map_err(|e| ("summary", e))?;
    let description = Template::parse(&raw.description).map_err(|e| ("description", e))?;
    check_labels(&raw.labels)?;
    if raw.escalate_to.is_some() && raw.escalate_after.is_none() {
        return Err(("escalate_to", "needs escalate_after".into()));
    }
    let renotify_ms = duration("renotify", raw.renotify.as_deref())?;
    if renotify_ms.is_some_and(|ms| ms < 60_000) {
        return Err(("renotify", "must be at least 1m".into()));
    }
    Ok(Rule {
        name: raw.name,
        file: file.to_path_buf(),
        condition: Condition::Threshold(Threshold {
            select,
            divide_by,
            when,
            fire_if_never_seen: raw.never_seen != Some(NeverSeen::Ignore),
            reduce: raw.reduce,
            window_ms,
            op,
            threshold,
            clear_threshold: raw.clear_threshold,
        }),
        for_ms: duration("for", raw.for_.as_deref())?.unwrap_or(0),
        keep_firing_for_ms: duration("keep_firing_for", raw.keep_firing_for.as_deref())?
            .unwrap_or(0),
        severity: raw.severity,
        labels: raw.labels,
        summary,
        description,
        annotations: BTreeMap::new(),
        renotify_ms,
        escalate_after_ms: duration("escalate_after", raw.escalate_after.as_deref())?,
        escalate_to: raw.escalate_to.unwrap_or(Severity::Critical),
        cooldown_ms: duration("cooldown", raw.cooldown.as_deref())?.unwrap_or(0),
        notify: raw.notify,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(Path::new("rules.toml"), text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_full_rule_loads() {
        let rules = parse(
            Path::new("r.toml"),
            r#"
[[rule]]
name = "memory_high"
select = "host_memory_used_bytes"
divide_by = "node_memory_MemTotal_bytes"
reduce = "avg"
window = "5m"
threshold = 0.85
clear_threshold = 0.8
for = "5m"
severity = "warning"
labels = { team = "edge" }
summary = "memory at {{value|percent}}"
renotify = "4h"
escalate_after = "1h"
cooldown = "10m"
notify = ["ops"]
"#,
        )
        .unwrap();
        let rule = &rules[0];
        let Condition::Threshold(threshold) = &rule.condition else {
            panic!("a threshold rule");
        };
        assert_eq!(threshold.window_ms, 300_000);
        assert_eq!(rule.for_ms, 300_000);
        assert_eq!(rule.escalate_to, Severity::Critical);
        assert!(threshold.condition(0.86, false));
        assert!(!threshold.condition(0.84, false));
        assert!(threshold.condition(0.84, true), "hysteresis while firing");
        assert!(!threshold.condition(0.79, true));
    }

    #[test]
    fn mistakes_name_the_file_rule_and_key() {
        let all = errors(
            r#"
[[rule]]
name = "a"
select = "x"
[[rule]]
name = "b"
select = "x{"
threshold = 1
[[rule]]
name = "c"
select = "x"
threshold = 1
op = "=>"
[[rule]]
name = "d"
select = "x"
reduce = "absent"
threshold = 2
[[rule]]
name = "e"
select = "x"
threshold = 0.8
clear_threshold = 0.9
[[rule]]
name = "bad/name"
select = "x"
threshold = 1
[[rule]]
name = "g"
select = "x"
threshold = 1
summary = "{{valu}}"
[[rule]]
name = "h"
select = "x"
threshold = 1
for = "5 minutes"
[[rule]]
name = "a"
select = "x"
threshold = 1
"#,
        );
        let expect = [
            "rules.toml: rule a: threshold: missing",
            "rules.toml: rule b: select:",
            "rules.toml: rule c: op: \"=>\"",
            "rules.toml: rule d: threshold: an absent rule",
            "rules.toml: rule e: clear_threshold:",
            "rules.toml: rule bad/name: name:",
            "rules.toml: rule g: summary: unknown placeholder {{valu}}",
            "rules.toml: rule h: for:",
        ];
        for (got, want) in all.iter().zip(expect) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
        assert_eq!(all.len(), expect.len(), "{all:#?}");
        let unknown =
            errors("[[rule]]\nname = \"x\"\nselect = \"x\"\nthreshold = 1\nthresold = 2\n");
        assert!(unknown[0].contains("thresold"), "{unknown:?}");
        assert!(unknown[0].contains("line 5"), "{unknown:?}");
    }

    #[test]
    fn directories_load_in_name_order_and_names_stay_unique() {
        let dir = tempfile::tempdir().unwrap();
        let rule =
            |name: &str| format!("[[rule]]\nname = \"{name}\"\nselect = \"x\"\nthreshold = 1\n");
        std::fs::write(dir.path().join("b.toml"), rule("two")).unwrap();
        std::fs::write(dir.path().join("a.toml"), rule("one")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not rules").unwrap();
        let rules = load(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<&str> = rules.alerting.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        std::fs::write(dir.path().join("c.toml"), rule("one")).unwrap();
        let errors = load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(
            errors[0].to_string().contains("also defined in"),
            "{errors:?}"
        );
        let missing = load(&[dir.path().join("nope.toml")]).unwrap_err();
        assert!(missing[0].to_string().contains("cannot read"));
    }
}
