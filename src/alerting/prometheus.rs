//! The alert engine's rules and alerts in the shapes of Prometheus' `/api/v1/rules` and
//! `/api/v1/alerts`, so that Grafana's alert list and other Prometheus clients can read them.

use serde_json::{json, Value};

use outpost::alert::engine::{AlertRecord, Engine, State};
use outpost::alert::rules::{Reducer, Rule, Side};
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
    let mut text = reduced(&rule.select, rule.reduce, rule.window_ms);
    if let Some((
        Side {
            select,
            reduce,
            window_ms,
        },
        _,
    )) = &rule.divide_by
    {
        text = format!("{text} / {}", reduced(select, *reduce, *window_ms));
    }
    if rule.reduce == Reducer::Absent {
        return text;
    }
    format!("{text} {} {}", rule.op.as_str(), rule.threshold)
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
    labels.insert("severity".into(), record.severity.to_string());
    json!({
        "labels": labels,
        "annotations": { "summary": record.summary, "description": record.description },
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
    for (label, field) in [
        ("alertname", "rule"),
        ("instance", "device"),
        ("severity", "severity"),
    ] {
        if let Some(value) = event[field].as_str() {
            labels.insert(label.into(), value.into());
        }
    }
    Some(json!({
        "labels": labels,
        "annotations": { "summary": event["summary"], "description": event["description"] },
        "state": state,
        "activeAt": event["started_at"],
        "value": go_exponent(event["value"].as_f64().unwrap_or(f64::NAN)),
    }))
}

/// `/api/v1/rules`' data: one group per rule file, each rule with its active alerts.
pub fn rules(engine: &Engine) -> Value {
    let mut groups: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for rule in engine.rules() {
        let active: Vec<&AlertRecord> = engine
            .alerts()
            .filter(|a| a.rule == rule.name && is_active(a))
            .collect();
        let state = if active.iter().any(|a| a.state == State::Firing) {
            "firing"
        } else if active.is_empty() {
            "inactive"
        } else {
            "pending"
        };
        let mut labels = rule.labels.clone();
        labels.insert("severity".into(), rule.severity.to_string());
        groups
            .entry(rule.file.display().to_string())
            .or_default()
            .push(json!({
                "name": rule.name,
                "query": rule_expression(rule),
                "duration": rule.for_ms as f64 / 1000.0,
                "labels": labels,
                "annotations": {},
                "alerts": active.into_iter().map(alert_json).collect::<Vec<_>>(),
                "health": "ok",
                "state": state,
                "type": "alerting",
            }));
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(file, rules)| json!({ "name": file, "file": file, "rules": rules }))
        .collect();
    json!({ "groups": groups })
}
