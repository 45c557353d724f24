//! The alert engine's rules and alerts in the shapes of Prometheus' `/api/v1/rules` and
//! `/api/v1/alerts`, so that Grafana's alert list and other Prometheus clients can read them.

use serde_json::{json, Value};

use outpost::alert::engine::{AlertRecord, Engine, State};
use outpost::alert::rules::{Condition, Expression, Reducer, Rule, Side, Threshold};
use outpost_storage::{MatchOp, Selector};

/// A selector in PromQL's syntax: `name{label="v",...}`.
fn selector_text(selector: &Selector) -> String {
    let name = selector.exact_name();
    let matchers: Vec<String> = selector
        .matchers()
        .filter(|(label, op, value)| {
            !(*label == "__name__" && *op == MatchOp::Equal && Some(*value) == name)
        })
        .map(|(label, op, value)| format!("{label}{op}{value:?}"))
        .collect();
    match (name, matchers.is_empty()) {
        (Some(name), true) => name.to_string(),
        (name, _) => format!("{}{{{}}}", name.unwrap_or(""), matchers.join(",")),
    }
}

fn window(ms: i64) -> String {
    if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms.div_euclid(1000).max(1))
    }
}

/// What a rule computes, written as the PromQL that computes the same.
fn reduced(select: &Selector, reduce: Reducer, window_ms: i64) -> String {
    let selector = selector_text(select);
    let range = window(window_ms);
    match reduce {
        Reducer::Last => selector,
        Reducer::Avg => format!("avg_over_time({selector}[{range}])"),
        Reducer::Min => format!("min_over_time({selector}[{range}])"),
        Reducer::Max => format!("max_over_time({selector}[{range}])"),
        Reducer::Rate => format!("rate({selector}[{range}])"),
        Reducer::Increase => format!("increase({selector}[{range}])"),
        Reducer::Absent => format!("absent_over_time({selector}[{range}])"),
    }
}

pub fn rule_expression(rule: &Rule) -> String {
    match &rule.condition {
        Condition::Threshold(threshold) => threshold_expression(threshold),
        Condition::Expression(e) => e.text.clone(),
    }
}

fn on_clause(on: &Option<Vec<String>>) -> String {
    on.as_ref().map_or(String::new(), |labels| {
        format!(" on({})", labels.join(", "))
    })
}

fn threshold_expression(rule: &Threshold) -> String {
    let mut text = reduced(&rule.select, rule.reduce, rule.window_ms);
    if let Some((
        Side {
            select,
            reduce,
            window_ms,
        },
        on,
    )) = &rule.divide_by
    {
        text = format!(
            "{text} /{} {}",
            on_clause(on),
            reduced(select, *reduce, *window_ms)
        );
    }
    if rule.reduce != Reducer::Absent {
        text = format!("{text} {} {}", rule.op.as_str(), rule.threshold);
    }
    if let Some(gate) = &rule.when {
        let side = reduced(&gate.side.select, gate.side.reduce, gate.side.window_ms);
        text = format!(
            "({text}) and{} ({side} {} {})",
            on_clause(&gate.on),
            gate.op.as_str(),
            gate.threshold
        );
    }
    text
}

/// A YAML double-quoted scalar: JSON's string syntax is a subset of it.
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialize")
}

fn duration_text(ms: i64) -> String {
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Outpost rules as a Prometheus rule file: one group named `group`, each rule's expression,
/// `for`, `keep_firing_for`, labels (its severity among them) and annotations. What Prometheus
/// cannot say (hysteresis, cooldown, reminders, escalation, channels) is left out; the header
/// says so.
pub fn rules_yaml(rules: &[Rule], group: &str, source: &str) -> String {
    let mut out = format!(
        "# The Prometheus form of {source}, written by `outpost rules export`: the same \
         conditions,\n# for Prometheus, vmalert or Outpost itself. Outpost's own form also has \
         what\n# Prometheus rules cannot say: clear thresholds (hysteresis), cooldowns, \
         reminders,\n# escalation and channels.\ngroups:\n  - name: {}\n    rules:\n",
        yaml_string(group)
    );
    for rule in rules {
        out.push_str(&format!(
            "      - alert: {}\n        expr: {}\n",
            rule.name,
            yaml_string(&rule_expression(rule))
        ));
        if rule.for_ms > 0 {
            out.push_str(&format!("        for: {}\n", duration_text(rule.for_ms)));
        }
        if rule.keep_firing_for_ms > 0 {
            out.push_str(&format!(
                "        keep_firing_for: {}\n",
                duration_text(rule.keep_firing_for_ms)
            ));
        }
        let mut labels = rule.labels.clone();
        labels
            .entry("severity".into())
            .or_insert_with(|| rule.severity.to_string());
        out.push_str("        labels:\n");
        for (k, v) in &labels {
            out.push_str(&format!("          {k}: {}\n", yaml_string(v)));
        }
        let threshold = rule.threshold();
        let severity = rule.severity.to_string();
        let annotations: Vec<(&str, String)> = [
            (
                "summary",
                rule.summary.to_prometheus(&rule.name, &severity, threshold),
            ),
            (
                "description",
                rule.description
                    .to_prometheus(&rule.name, &severity, threshold),
            ),
        ]
        .into_iter()
        .filter(|(_, text)| !text.is_empty())
        .collect();
        if !annotations.is_empty() {
            out.push_str("        annotations:\n");
            for (k, v) in annotations {
                out.push_str(&format!("          {k}: {}\n", yaml_string(&v)));
            }
        }
    }
    out
}

fn rfc3339(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| {
        Value::from(outpost_storage::rfc3339_ms(ms))
    })
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Pending => "pending",
        State::Firing => "firing",
        State::Inactive | State::Resolved => "inactive",
    }
}

fn alert_json(record: &AlertRecord) -> Value {
    let mut labels = record.labels.clone();
    labels.insert("alertname".into(), record.rule.clone());
    labels
        .entry("severity".into())
        .or_insert_with(|| record.severity.to_string());
    let mut annotations = record.annotations.clone();
    annotations.insert("summary".into(), record.summary.clone());
    annotations.insert("description".into(), record.description.clone());
    json!({
        "labels": labels,
        "annotations": annotations,
        "state": state_name(record.state),
        "activeAt": rfc3339(record.started_ms),
        "value": go_exponent(record.value.unwrap_or(f64::NAN)),
    })
}

/// Go's `%e`-style value text that Prometheus gives an alert's value (`1e+00`).
fn go_exponent(v: f64) -> String {
    if v.is_finite() {
        outpost_storage::promql::format_exponent(v)
    } else {
        outpost_storage::promql::format_value(v)
    }
}

fn is_active(record: &AlertRecord) -> bool {
    matches!(record.state, State::Pending | State::Firing)
}

/// `/api/v1/alerts`' data: every pending and firing alert.
pub fn alerts(engine: &Engine) -> Value {
    let alerts: Vec<Value> = engine
        .alerts()
        .filter(|a| is_active(a))
        .map(alert_json)
        .collect();
    json!({ "alerts": alerts })
}

/// A device's alert as the hub received it (the engine's event JSON) in Prometheus' shape, if
/// it is pending or firing.
pub fn device_alert(event: &Value) -> Option<Value> {
    let state = event["state"].as_str()?;
    if state != "firing" && state != "pending" {
        return None;
    }
    let mut labels = event["labels"].as_object().cloned().unwrap_or_default();
    for (label, field) in [("alertname", "rule"), ("instance", "device")] {
        if let Some(value) = event[field].as_str() {
            labels.insert(label.into(), value.into());
        }
    }
    if let Some(severity) = event["severity"].as_str() {
        labels.entry("severity").or_insert_with(|| severity.into());
    }
    let mut annotations = event["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    annotations.insert("summary".into(), event["summary"].clone());
    annotations.insert("description".into(), event["description"].clone());
    Some(json!({
        "labels": labels,
        "annotations": annotations,
        "state": state,
        "activeAt": event["started_at"],
        "value": go_exponent(event["value"].as_f64().unwrap_or(f64::NAN)),
    }))
}

/// A rule's group: a Prometheus rule's own, else its file (with the interval, if any).
fn group_of(file: &std::path::Path, condition: Option<&Expression>) -> (String, String, f64) {
    let file = file.display().to_string();
    match condition {
        Some(e) => (
            file,
            e.group.clone(),
            e.interval_ms.map_or(0.0, |ms| ms as f64 / 1000.0),
        ),
        None => (file.clone(), file, 0.0),
    }
}

fn health(error: Option<&str>) -> (&'static str, &str) {
    match error {
        Some(error) => ("err", error),
        None => ("ok", ""),
    }
}

/// `/api/v1/rules`' data: the groups of Prometheus rule files as they are, and one group per
/// Outpost rule file; each rule with its active alerts and health.
pub fn rules(engine: &Engine) -> Value {
    type Group = (String, String, f64);
    let mut groups: Vec<(Group, Vec<Value>)> = Vec::new();
    let mut push = |group: Group, rule: Value| match groups.iter_mut().find(|g| g.0 == group) {
        Some(found) => found.1.push(rule),
        None => groups.push((group, vec![rule])),
    };
    let rules = engine.rules();
    for (index, recording) in engine.recordings().iter().enumerate() {
        let (health, error) = health(engine.last_error(rules.len() + index));
        let group = group_of(&recording.file, Some(&recording.expression));
        push(
            group,
            json!({
                "name": recording.record,
                "query": recording.expression.text,
                "labels": recording.labels,
                "health": health,
                "lastError": error,
                "type": "recording",
            }),
        );
    }
    for (index, rule) in rules.iter().enumerate() {
        let active: Vec<&AlertRecord> = engine
            .alerts()
            .filter(|a| a.rule == rule.name && rule.owns(&a.labels) && is_active(a))
            .collect();
        let state = if active.iter().any(|a| a.state == State::Firing) {
            "firing"
        } else if active.is_empty() {
            "inactive"
        } else {
            "pending"
        };
        let mut labels = rule.labels.clone();
        labels
            .entry("severity".into())
            .or_insert_with(|| rule.severity.to_string());
        let expression = match &rule.condition {
            Condition::Expression(e) => Some(e),
            Condition::Threshold(_) => None,
        };
        let (health, error) = health(engine.last_error(index));
        push(
            group_of(&rule.file, expression),
            json!({
                "name": rule.name,
                "query": rule_expression(rule),
                "duration": rule.for_ms as f64 / 1000.0,
                "keepFiringFor": rule.keep_firing_for_ms as f64 / 1000.0,
                "labels": labels,
                "annotations": {},
                "alerts": active.into_iter().map(alert_json).collect::<Vec<_>>(),
                "health": health,
                "lastError": error,
                "state": state,
                "type": "alerting",
            }),
        );
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|((file, name, interval), rules)| {
            json!({ "name": name, "file": file, "interval": interval, "rules": rules })
        })
        .collect();
    json!({ "groups": groups })
}
