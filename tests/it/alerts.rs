//! The alert engine end to end: real agents, a real Mosquitto with the committed config and
//! ACL, Mosquitto's own `mosquitto_sub` as the subscriber, a real SMTP server (Debian's
//! aiosmtpd), real processes killed and restarted.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::agent::{free_port, http, root, wait_until, Agent};
use crate::sync::{enrol, Mosquitto};

const QUIET: &str =
    "[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n";

/// The JSON Schema of the alert payload, from `docs/alerts.md`.
fn payload_schema() -> Value {
    let doc = std::fs::read_to_string(root().join("docs/alerts.md")).unwrap();
    let after = doc.split("### Payload").nth(1).expect("a Payload section");
    let block = after
        .split("```json")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a json block");
    serde_json::from_str(block).expect("the schema is JSON")
}

/// Checks `value` against the subset of JSON Schema the document uses: type (one or a list),
/// enum, required, properties, additionalProperties (false or a schema), minimum.
fn check_schema(schema: &Value, value: &Value, path: &str) {
    if let Some(options) = schema.get("enum") {
        assert!(
            options.as_array().unwrap().contains(value),
            "{path}: {value} not in {options}"
        );
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
            _ => panic!("bad type in schema"),
        };
        let ok = types.iter().any(|t| match *t {
            "string" => value.is_string(),
            "number" => value.is_number(),
            "integer" => value.is_u64() || value.is_i64(),
            "boolean" => value.is_boolean(),
            "object" => value.is_object(),
            "array" => value.is_array(),
            "null" => value.is_null(),
            other => panic!("type {other} not handled"),
        });
        assert!(ok, "{path}: {value} is not {types:?}");
    }
    if let (Some(min), Some(n)) = (schema.get("minimum"), value.as_f64()) {
        assert!(n >= min.as_f64().unwrap(), "{path}: {n} < {min}");
    }
    let Some(object) = value.as_object() else {
        return;
    };
    for key in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        assert!(
            object.contains_key(key.as_str().unwrap()),
            "{path}: {key} missing from {value}"
        );
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    for (key, item) in object {
        match properties.and_then(|p| p.get(key)) {
            Some(sub) => check_schema(sub, item, &format!("{path}.{key}")),
            None => match schema.get("additionalProperties") {
                Some(Value::Bool(false)) => panic!("{path}: {key} is not documented"),
                Some(sub) if sub.is_object() => check_schema(sub, item, &format!("{path}.{key}")),
                _ => {}
            },
        }
    }
}

/// `mosquitto_sub` as the user's own tool: logged in as `outpost-alerts`, QoS 1, and with
/// `persistent` a persistent session (`-c`) that the broker keeps while it is away.
struct Subscriber {
    child: Child,
    out: PathBuf,
}

impl Subscriber {
    fn start(dir: &Path, port: u16, topic: &str, id: &str) -> Subscriber {
        let out = dir.join(format!("{id}.out"));
        let child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-u", "outpost-alerts", "-P", "alerts-secret"])
            .args(["-i", id, "-c", "-q", "1", "-t", topic, "-F", "%p"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (Debian's mosquitto-clients) runs");
        Subscriber { child, out }
    }

    fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The transitions received, duplicates (by `event_seq`) left out, in arrival order.
    fn transitions(&self) -> Vec<(u64, String)> {
        let mut seen = BTreeSet::new();
        self.messages()
            .into_iter()
            .filter(|m| seen.insert(m["event_seq"].as_u64().unwrap()))
            .map(|m| {
                (
                    m["event_seq"].as_u64().unwrap(),
                    m["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What is retained under `topic` now: (topic, payload) pairs, read by a fresh client.
fn retained(port: u16, topic: &str) -> Vec<(String, String)> {
    let output = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-u", "outpost-alerts", "-P", "alerts-secret"])
        .args(["-t", topic, "-v", "--retained-only", "-W", "2"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            let (t, p) = l.split_once(' ')?;
            Some((t.to_string(), p.to_string()))
        })
        .collect()
}

fn push(agent: &Agent, body: &str) {
    let (status, text) = http(agent.port, "POST", "/api/v1/import/prometheus", body);
    assert_eq!(status, 204, "{text}");
}

/// The agent's own record of transitions, newest first.
fn history(agent: &Agent) -> Vec<Value> {
    let (status, body) = http(agent.port, "GET", "/api/alerts/history?limit=1000", "");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["events"].as_array().unwrap().clone()
}

const ERRORS_RULE: &str = r#"
[[rule]]
name = "errors"
select = "app_errors"
window = "1h"
threshold = 0
severity = "critical"
summary = "{{labels.job}} has {{value}} errors"
"#;

fn alert_agent(dir: &Path, mqtt: &str, rules: &str) -> Agent {
    std::fs::write(dir.join("rules.toml"), rules).unwrap();
    let config = format!(
        "{QUIET}{mqtt}[alerts]\ndefault_rules = false\nrules = [\"{}\"]\ninterval = \"200ms\"\n",
        dir.join("rules.toml").display()
    );
    Agent::start(dir, &config, &[])
}

#[test]
fn mosquitto_subscribers_get_every_transition_in_order_across_outages_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mqtt = enrol(dir.path(), "dev-1", port);
    let broker = Mosquitto::start(dir.path(), port, "");
    let events = Subscriber::start(
        dir.path(),
        port,
        "outpost/v1/+/+/alerts/events",
        "alerts-test",
    );
    // The subscription must exist before anything is published.
    std::thread::sleep(Duration::from_millis(500));
    let agent = alert_agent(dir.path(), &mqtt, ERRORS_RULE);
    let schema = payload_schema();

    // Fires: the event and the retained state, exactly as documented.
    push(&agent, "app_errors{job=\"cam/1+#\"} 5\n");
    wait_until("the firing event", Duration::from_secs(20), || {
        (events.transitions() == [(1, "firing".to_string())]).then_some(())
    });
    let firing = &events.messages()[0];
    check_schema(&schema, firing, "event");
    assert_eq!(firing["device"], "dev-1");
    assert_eq!(firing["rule"], "errors");
    assert_eq!(firing["instance"], "job=cam%2F1%2B%23");
    assert_eq!(firing["labels"]["job"], "cam/1+#");
    assert_eq!(firing["severity"], "critical");
    assert_eq!(firing["value"], 5.0);
    assert_eq!(firing["threshold"], 0.0);
    assert_eq!(firing["summary"], "cam/1+# has 5 errors");
    assert_eq!(firing["silenced"], false);
    assert!(firing["resolved_at"].is_null());
    let state_topic = "outpost/v1/default/dev-1/alerts/errors/job=cam%2F1%2B%23";
    let held = retained(port, "outpost/v1/+/+/alerts/+/+");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].0, state_topic);
    let state: Value = serde_json::from_str(&held[0].1).unwrap();
    check_schema(&schema, &state, "state");
    assert_eq!(state["state"], "firing");
    assert_eq!(state["event_seq"], 1);

    // The broker goes away; the alert resolves, fires and resolves again meanwhile.
    broker.stop();
    for (value, count) in [(0, 2), (7, 3), (0, 4)] {
        push(&agent, &format!("app_errors{{job=\"cam/1+#\"}} {value}\n"));
        wait_until("the transition, offline", Duration::from_secs(20), || {
            (history(&agent).len() == count).then_some(())
        });
    }
    // Back: every transition arrives, in order, none lost; resends may repeat one.
    let broker = Mosquitto::start(dir.path(), port, "");
    let expected: Vec<(u64, String)> = [(1, "firing"), (2, "resolved"), (3, "firing"), (4, "resolved")]
        .iter()
        .map(|(s, t)| (*s, t.to_string()))
        .collect();
    wait_until("the offline transitions", Duration::from_secs(60), || {
        (events.transitions() == expected).then_some(())
    });
    for message in events.messages() {
        check_schema(&schema, &message, "event");
    }
    let resolved = &events.messages().into_iter().find(|m| m["event_seq"] == 2).unwrap();
    assert!(resolved["resolved_at"].is_string());
    wait_until("the retained state to clear", Duration::from_secs(20), || {
        retained(port, "outpost/v1/+/+/alerts/+/+")
            .is_empty()
            .then_some(())
    });

    // Killed while firing, restarted: no second firing, and the resolve still comes.
    push(&agent, "app_errors{job=\"cam/1+#\"} 9\n");
    wait_until("firing again", Duration::from_secs(20), || {
        (events.transitions().len() == 5).then_some(())
    });
    let mut agent = agent;
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    drop(agent);
    let agent = alert_agent(dir.path(), &mqtt, ERRORS_RULE);
    // Some evaluations with the alert still firing.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(events.transitions().len(), 5, "no second firing after the restart");
    push(&agent, "app_errors{job=\"cam/1+#\"} 0\n");
    wait_until("the resolve after the restart", Duration::from_secs(20), || {
        (events.transitions().len() == 6).then_some(())
    });
    let all = events.transitions();
    assert_eq!(all[4], (5, "firing".to_string()));
    assert_eq!(all[5], (6, "resolved".to_string()));

    // A rule removed while its alert fires: the next start clears its retained topic.
    push(&agent, "app_errors{job=\"cam/1+#\"} 3\n");
    wait_until("the retained state", Duration::from_secs(20), || {
        (retained(port, "outpost/v1/+/+/alerts/+/+").len() == 1).then_some(())
    });
    agent.stop();
    let other = "[[rule]]\nname = \"other\"\nselect = \"unrelated\"\nthreshold = 1\n";
    let agent = alert_agent(dir.path(), &mqtt, other);
    wait_until("the gone rule's topic to clear", Duration::from_secs(20), || {
        retained(port, "outpost/v1/+/+/alerts/+/+")
            .is_empty()
            .then_some(())
    });
    let metrics = agent.metrics();
    for name in [
        "outpost_alert_notifications_queued{channel=\"mqtt\"}",
        "outpost_alert_notifications_delivered_total{channel=\"mqtt\"}",
        "outpost_alert_notifications_dropped_total{channel=\"mqtt\"} 0",
        "outpost_alert_rules 1",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    agent.stop();
    drop(broker);
}
