//! The alert engine end to end: real agents, a real Mosquitto with the committed config and
//! ACL, Mosquitto's own `mosquitto_sub` as the subscriber, a real SMTP server (Debian's
//! aiosmtpd), real processes killed and restarted.

use outpost_sync::HubToDevice;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::agent::{
    fail, free_port, http, metric_value, outpost, root, succeed, wait_until, Agent,
};
use crate::sync::{enrol, Mosquitto};

const QUIET: &str =
    "[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n";

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

/// `/api/v1/alerts` and `/api/v1/rules` show the firing `errors` rule as Prometheus would, and
/// the rule's query is PromQL that the agent answers.
fn prometheus_clients_see_the_firing_rule(port: u16) {
    let get = |path: &str| -> Value {
        let (status, body) = http(port, "GET", path, "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let alerts = get("/api/v1/alerts");
    let alert = &alerts["data"]["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "errors", "{alerts}");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["state"], "firing");
    assert!(
        alert["activeAt"].as_str().unwrap().ends_with('Z'),
        "{alert}"
    );
    let rules = get("/api/v1/rules");
    let rule = &rules["data"]["groups"][0]["rules"][0];
    assert_eq!(
        (&rule["name"], &rule["state"], &rule["type"]),
        (&"errors".into(), &"firing".into(), &"alerting".into()),
        "{rules}"
    );
    let query = rule["query"].as_str().unwrap();
    assert!(query.contains("app_errors"), "{query}");
    let encoded = crate::promql::encode(query);
    let answer = get(&format!("/api/v1/query?query={encoded}"));
    assert_eq!(answer["status"], "success", "{query}: {answer}");
    assert!(
        !answer["data"]["result"].as_array().unwrap().is_empty(),
        "{query}: {answer}"
    );
}

/// Writes `rules` to `rules.toml` in `dir`; the `[alerts]` section that evaluates just them,
/// every `interval`.
fn alerts_section(dir: &Path, rules: &str, interval: &str) -> String {
    let path = dir.join("rules.toml");
    std::fs::write(&path, rules).unwrap();
    let path = path.display();
    format!("[alerts]\ndefault_rules = false\nrules = [\"{path}\"]\ninterval = \"{interval}\"\n")
}

fn alert_agent(dir: &Path, mqtt: &str, rules: &str) -> Agent {
    let alerts = alerts_section(dir, rules, "200ms");
    Agent::start(dir, &format!("{QUIET}{mqtt}{alerts}"), &[])
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
    let expected: Vec<(u64, String)> = [
        (1, "firing"),
        (2, "resolved"),
        (3, "firing"),
        (4, "resolved"),
    ]
    .iter()
    .map(|(s, t)| (*s, t.to_string()))
    .collect();
    wait_until("the offline transitions", Duration::from_secs(60), || {
        (events.transitions() == expected).then_some(())
    });
    for message in events.messages() {
        check_schema(&schema, &message, "event");
    }
    let resolved = &events
        .messages()
        .into_iter()
        .find(|m| m["event_seq"] == 2)
        .unwrap();
    assert!(resolved["resolved_at"].is_string());
    wait_until(
        "the retained state to clear",
        Duration::from_secs(20),
        || {
            retained(port, "outpost/v1/+/+/alerts/+/+")
                .is_empty()
                .then_some(())
        },
    );

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
    assert_eq!(
        events.transitions().len(),
        5,
        "no second firing after the restart"
    );
    push(&agent, "app_errors{job=\"cam/1+#\"} 0\n");
    wait_until(
        "the resolve after the restart",
        Duration::from_secs(20),
        || (events.transitions().len() == 6).then_some(()),
    );
    let all = events.transitions();
    assert_eq!(all[4], (5, "firing".to_string()));
    assert_eq!(all[5], (6, "resolved".to_string()));

    // A rule removed while its alert fires: the next start clears its retained topic.
    push(&agent, "app_errors{job=\"cam/1+#\"} 3\n");
    wait_until("the retained state", Duration::from_secs(20), || {
        (retained(port, "outpost/v1/+/+/alerts/+/+").len() == 1).then_some(())
    });
    // A broker that forgets retained messages (the embedded one, or Mosquitto without its
    // persistence file): the agent publishes the firing state again when it reconnects.
    broker.stop();
    std::fs::remove_file(dir.path().join("mosquitto.db")).unwrap();
    let broker = Mosquitto::start(dir.path(), port, "");
    wait_until(
        "the retained state republished",
        Duration::from_secs(30),
        || (retained(port, "outpost/v1/+/+/alerts/+/+").len() == 1).then_some(()),
    );
    agent.stop();
    let other = "[[rule]]\nname = \"other\"\nselect = \"unrelated\"\nthreshold = 1\n";
    let agent = alert_agent(dir.path(), &mqtt, other);
    wait_until(
        "the gone rule's topic to clear",
        Duration::from_secs(20),
        || {
            retained(port, "outpost/v1/+/+/alerts/+/+")
                .is_empty()
                .then_some(())
        },
    );
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

#[test]
fn past_the_daily_byte_budget_batches_wait_and_alerts_still_go() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Nothing acknowledges the batches here (no hub): they are published all the same, which is
    // what the budget counts.
    let mqtt = format!(
        "{}daily_budget = \"6KiB\"\n[agent]\nself_interval = \"200ms\"\n",
        enrol(dir.path(), "dev-1", port)
    );
    let _broker = Mosquitto::start(dir.path(), port, "");
    let events = Subscriber::start(
        dir.path(),
        port,
        "outpost/v1/+/+/alerts/events",
        "budget-test",
    );
    let metric = |agent: &Agent, name: &str| metric_value(&agent.metrics(), name).unwrap_or(-1.0);
    let agent = alert_agent(dir.path(), &mqtt, ERRORS_RULE);
    wait_until("the budget used up", Duration::from_secs(60), || {
        (metric(&agent, "outpost_sync_daily_budget_exhausted") == 1.0).then_some(())
    });
    let sent_today = metric(&agent, "outpost_sync_sent_today_bytes");
    assert!(sent_today >= 6144.0, "{sent_today}");
    // At most the batch that crossed the line went over.
    assert!(sent_today < 6144.0 + 128.0 * 1024.0, "{sent_today}");
    let batches = |agent: &Agent| {
        metric(agent, "outpost_sync_batches_sent_total")
            + metric(agent, "outpost_sync_batches_resent_total")
    };
    let before = batches(&agent);
    // An alert still goes out, and counts.
    push(&agent, "app_errors{job=\"cam/1\"} 5\n");
    wait_until("the alert's event", Duration::from_secs(20), || {
        (events.transitions() == [(1, "firing".to_string())]).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(batches(&agent), before, "no batch past the budget");
    assert!(metric(&agent, "outpost_sync_sent_today_bytes") > sent_today);
    // The day's count survives a restart: no batch from the new process either.
    agent.stop();
    let agent = alert_agent(dir.path(), &mqtt, ERRORS_RULE);
    wait_until("the budget still used up", Duration::from_secs(20), || {
        (metric(&agent, "outpost_sync_daily_budget_exhausted") == 1.0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(batches(&agent), 0.0);
    assert!(metric(&agent, "outpost_sync_sent_today_bytes") > sent_today);
    agent.stop();
}

/// A webhook receiver: answers the first `failures` requests with 503, the rest with 200, and
/// keeps every request's body. With a certificate and key it speaks HTTPS only.
struct Receiver {
    port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    keys: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Reads one HTTP request from `stream`, returns its body and its `Idempotency-Key`, and
/// answers with `status`.
fn answer_one<S: std::io::Read + std::io::Write>(
    stream: S,
    status: impl FnOnce() -> &'static str,
) -> Option<(String, Option<String>)> {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    let mut key = None;
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
            if name.eq_ignore_ascii_case("idempotency-key") {
                key = Some(value.trim().to_string());
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let status = status();
    let stream = reader.get_mut();
    let _ = stream.write_all(
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
    );
    let _ = stream.flush();
    Some((String::from_utf8_lossy(&body).into_owned(), key))
}

impl Receiver {
    fn start(failures: usize) -> Receiver {
        Receiver::serve(failures, None)
    }

    fn start_https(cert: &Path, key: &Path) -> Receiver {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        Receiver::serve(0, Some(std::sync::Arc::new(config)))
    }

    fn serve(
        failures: usize,
        tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let keys = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (b, r, c, k) = (
            bodies.clone(),
            requests.clone(),
            connections.clone(),
            keys.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let accepted = std::cell::Cell::new(false);
                let status = || {
                    let n = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    accepted.set(n >= failures);
                    if n < failures {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    }
                };
                let answered = match &tls {
                    // A failed handshake (an untrusting client) reads as no request at all.
                    Some(config) => tokio_rustls::rustls::ServerConnection::new(config.clone())
                        .ok()
                        .and_then(|connection| {
                            answer_one(
                                tokio_rustls::rustls::StreamOwned::new(connection, stream),
                                status,
                            )
                        }),
                    None => answer_one(stream, status),
                };
                if let (Some((body, key)), true) = (answered, accepted.get()) {
                    b.lock().unwrap().push(body);
                    k.lock().unwrap().push(key.unwrap_or_default());
                }
            }
        });
        Receiver {
            port,
            bodies,
            keys,
            requests,
            connections,
        }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }

    /// The `Idempotency-Key` of each accepted request, in order.
    fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }
}

/// Debian's aiosmtpd, with STARTTLS required, saving mail into a maildir.
pub struct SmtpServer {
    child: Child,
    maildir: PathBuf,
}

impl SmtpServer {
    /// STARTTLS required, or with `smtps` TLS from the first byte.
    pub fn start(dir: &Path, port: u16, cert: &Path, key: &Path, smtps: bool) -> SmtpServer {
        let python = std::env::var("OUTPOST_PYTHON").unwrap_or_else(|_| {
            if Path::new("/usr/bin/python3").exists() {
                "/usr/bin/python3".into()
            } else {
                "python3".into()
            }
        });
        let maildir = dir.join(format!("maildir-{port}"));
        let (cert_flag, key_flag) = if smtps {
            ("--smtpscert", "--smtpskey")
        } else {
            ("--tlscert", "--tlskey")
        };
        let child = Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .arg(cert_flag)
            .arg(cert)
            .arg(key_flag)
            .arg(key)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("smtp-{port}.log"))).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{python} -m aiosmtpd ({e}): install Debian's python3-aiosmtpd")
            });
        wait_until("the SMTP server", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        SmtpServer { child, maildir }
    }

    /// The messages received, as text.
    pub fn mail(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                let mut files: Vec<PathBuf> =
                    entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
                out.extend(files.iter().map(|f| std::fs::read_to_string(f).unwrap()));
            }
        }
        out
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("smtp.pem"), dir.join("smtp.key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[test]
fn webhooks_mail_commands_and_silences() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mqtt = enrol(dir.path(), "dev-1", port);
    let _broker = Mosquitto::start(dir.path(), port, "");
    let hook = Receiver::start(2);
    let (cert, key) = self_signed(dir.path());
    let smtp_port = free_port();
    let smtp = SmtpServer::start(dir.path(), smtp_port, &cert, &key, false);
    let smtps_port = free_port();
    let smtps = SmtpServer::start(dir.path(), smtps_port, &cert, &key, true);
    // HTTPS: one receiver trusted through `ca_file`, one with the same certificate that the
    // public roots do not vouch for, so the agent must refuse to talk to it.
    let secure_hook = Receiver::start_https(&cert, &key);
    let untrusted_hook = Receiver::start_https(&cert, &key);
    let exec_out = dir.path().join("exec.env");
    let alerts = alerts_section(dir.path(), ERRORS_RULE, "200ms");
    let config = format!(
        r#"{QUIET}{mqtt}{alerts}
[[alerts.webhook]]
name = "chat"
url = "http://127.0.0.1:{hook}/hooks/abc"
format = "slack"
[[alerts.webhook]]
name = "secure"
url = "https://localhost:{secure}/in"
ca_file = "{cert}"
[[alerts.webhook]]
name = "untrusted"
url = "https://localhost:{untrusted}/in"
[[alerts.email]]
name = "mail"
server = "smtp://localhost:{smtp_port}"
from = "outpost@example.com"
to = ["ops@example.com", "oncall@example.com"]
ca_file = "{cert}"
[[alerts.email]]
name = "mail-tls"
server = "smtps://localhost:{smtps_port}"
from = "outpost@example.com"
to = ["ops@example.com"]
ca_file = "{cert}"
[[alerts.exec]]
name = "fix"
command = ["sh", "-c", "env | grep ^OUTPOST_ALERT_ | sort > {exec}; exit 3"]
"#,
        hook = hook.port,
        secure = secure_hook.port,
        untrusted = untrusted_hook.port,
        cert = cert.display(),
        exec = exec_out.display(),
    );
    let agent = Agent::start(dir.path(), &config, &[]);

    // Firing: the webhook after two 503s, the mail over STARTTLS, the command once.
    push(&agent, "app_errors{job=\"cam/1\"} 5\n");
    wait_until("the webhook", Duration::from_secs(30), || {
        (hook.bodies().len() == 1).then_some(())
    });
    assert_eq!(
        hook.requests.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "two retries"
    );
    let slack: Value = serde_json::from_str(&hook.bodies()[0]).unwrap();
    assert_eq!(
        slack["text"],
        "[FIRING] errors on dev-1 (critical): cam/1 has 5 errors"
    );
    wait_until("the mail", Duration::from_secs(30), || {
        (smtp.mail().len() == 1).then_some(())
    });
    let mail = &smtp.mail()[0];
    assert!(
        mail.contains("Subject: [FIRING] errors on dev-1 (critical): cam/1 has 5 errors"),
        "{mail}"
    );
    assert!(
        mail.contains("To: ops@example.com, oncall@example.com"),
        "{mail}"
    );
    assert!(mail.contains("rule: errors"), "{mail}");
    wait_until("the mail over SMTPS", Duration::from_secs(30), || {
        (smtps.mail().len() == 1).then_some(())
    });
    assert!(
        smtps.mail()[0].contains("Subject: [FIRING] errors on dev-1"),
        "{}",
        smtps.mail()[0]
    );
    wait_until("the HTTPS webhook", Duration::from_secs(30), || {
        (secure_hook.bodies().len() == 1).then_some(())
    });
    let json: Value = serde_json::from_str(&secure_hook.bodies()[0]).unwrap();
    assert_eq!(
        (&json["rule"], &json["state"]),
        (&"errors".into(), &"firing".into())
    );
    // The untrusted server was tried (and retried) but never got a request through.
    wait_until(
        "a retry to the untrusted server",
        Duration::from_secs(30),
        || {
            (untrusted_hook
                .connections
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 2)
                .then_some(())
        },
    );
    assert_eq!(
        untrusted_hook
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    wait_until("the command", Duration::from_secs(30), || {
        std::fs::read_to_string(&exec_out)
            .ok()
            .filter(|t| t.contains("OUTPOST_ALERT_STATE"))
    });
    let env = std::fs::read_to_string(&exec_out).unwrap();
    for line in [
        "OUTPOST_ALERT_RULE=errors",
        "OUTPOST_ALERT_STATE=firing",
        "OUTPOST_ALERT_SEVERITY=critical",
        "OUTPOST_ALERT_VALUE=5",
        "OUTPOST_ALERT_LABEL_JOB=cam/1",
        "OUTPOST_ALERT_DEVICE=dev-1",
        "OUTPOST_ALERT_EVENT_SEQ=1",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing from\n{env}");
    }
    wait_until(
        "the command's failure counted",
        Duration::from_secs(30),
        || {
            agent
                .metrics()
                .contains("outpost_alert_notifications_failed_total{channel=\"fix\"} 1")
                .then_some(())
        },
    );

    // Resolved: webhook and mail hear of it; the command (firing only) does not run again.
    std::fs::remove_file(&exec_out).unwrap();
    push(&agent, "app_errors{job=\"cam/1\"} 0\n");
    wait_until("the resolve", Duration::from_secs(30), || {
        (hook.bodies().len() == 2 && smtp.mail().len() == 2).then_some(())
    });
    assert!(hook.bodies()[1].contains("[RESOLVED] errors on dev-1"));
    assert!(!exec_out.exists(), "exec runs on firing only");

    // A silence from the HTTP API: the alert fires, visibly silenced, and the channels wait
    // until the silence is deleted.
    let (status, body) = http(
        agent.port,
        "POST",
        "/api/silences",
        r#"{"match": "{alertname=\"errors\"}", "duration": "1h", "comment": "maintenance"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let silence: Value = serde_json::from_str(&body).unwrap();
    push(&agent, "app_errors{job=\"cam/1\"} 6\n");
    wait_until("the silenced firing", Duration::from_secs(20), || {
        let (_, body) = http(agent.port, "GET", "/api/alerts", "");
        let v: Value = serde_json::from_str(&body).ok()?;
        let alert = v["alerts"].as_array()?.first()?.clone();
        (alert["state"] == "firing" && alert["silenced"] == true).then_some(())
    });
    prometheus_clients_see_the_firing_rule(agent.port);
    let retained_silenced = || {
        let held = retained(port, "outpost/v1/+/dev-1/alerts/errors/+");
        let state: Value = serde_json::from_str(&held.first()?.1).ok()?;
        state["silenced"].as_bool()
    };
    wait_until(
        "the silenced state retained",
        Duration::from_secs(20),
        || (retained_silenced() == Some(true)).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(hook.bodies().len(), 2, "held while silenced");
    let (status, _) = http(
        agent.port,
        "DELETE",
        &format!("/api/silences/{}", silence["id"].as_str().unwrap()),
        "",
    );
    assert_eq!(status, 204);
    wait_until("the held firing", Duration::from_secs(20), || {
        (hook.bodies().len() == 3).then_some(())
    });
    assert!(hook.bodies()[2].contains("[FIRING]"));
    // Whoever shows the alert from MQTT (the hub) learns that the silence is over.
    wait_until(
        "the unsilenced state retained",
        Duration::from_secs(20),
        || (retained_silenced() == Some(false)).then_some(()),
    );

    // A silence from the hub: a signed command on the device's cmd topic; a replay of it, or
    // one signed with another key, is ignored.
    let device_key = crate::sync::key(dir.path(), "dev-1");
    let command = |id: u64, action: outpost_sync::Action| outpost_sync::Command {
        device: "dev-1".into(),
        id,
        issued_ms: 0,
        expires_ms: i64::MAX,
        action,
    };
    let silence = outpost_sync::Action::Silence(outpost_sync::Silence {
        id: "hub-1".into(),
        matchers: vec![outpost_sync::Matcher {
            label: "job".into(),
            op: outpost_sync::MatchOp::Regex,
            value: "cam/.*".into(),
        }],
        starts_ms: 0,
        ends_ms: i64::MAX / 2,
        created_by: "ops".into(),
        comment: "hub".into(),
    });
    let topic = "outpost/v1/default/dev-1/cmd";
    let publish = |payload: &[u8]| {
        assert!(crate::sync::publish(
            port,
            "outpost-hub",
            "hub-secret",
            topic,
            payload,
            dir.path()
        ));
    };
    publish(&command(7, silence.clone()).encode(&device_key));
    let silences = || {
        let (_, body) = http(agent.port, "GET", "/api/silences", "");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["silences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    wait_until("the hub's silence", Duration::from_secs(20), || {
        (silences() == ["hub-1"]).then_some(())
    });
    // Expire it, then replay the old command: it stays expired.
    publish(
        &command(
            8,
            outpost_sync::Action::Expire {
                silence_id: "hub-1".into(),
            },
        )
        .encode(&device_key),
    );
    wait_until("the expiry", Duration::from_secs(20), || {
        silences().is_empty().then_some(())
    });
    publish(&command(7, silence).encode(&device_key));
    wait_until("the replay refused", Duration::from_secs(20), || {
        agent
            .log_text()
            .contains("ignoring a replayed or reordered hub command")
            .then_some(())
    });
    assert!(silences().is_empty());
    agent.stop();
}

#[test]
fn rule_mistakes_are_named_and_the_pack_uses_documented_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nname = \"x\"\nselect = \"up\"\n\n[[rule]]\nname = \"y\"\nselect = \"up{\"\nthreshold = 1\n",
    )
    .unwrap();
    let stderr = fail(&mut outpost(&["rules", "check", bad.to_str().unwrap()]));
    assert!(stderr.contains("2 errors"), "{stderr}");
    assert!(
        stderr.contains("bad.toml: rule x: threshold: missing"),
        "{stderr}"
    );
    assert!(stderr.contains("bad.toml: rule y: select:"), "{stderr}");
    for files in [
        vec!["default"],
        vec!["config/rules.toml"],
        vec!["tests/data/alerts/replay-rules.toml"],
    ] {
        let mut args = vec!["rules", "check"];
        args.extend(files.iter().copied());
        succeed(outpost(&args).current_dir(root()));
    }

    // Every metric the pack selects is one the agent documents (and so emits).
    let doc = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let pack: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("config/rules.toml")).unwrap())
            .unwrap();
    let rules = pack["rule"].as_array().unwrap();
    assert!(rules.len() >= 10);
    let mut names = Vec::new();
    for rule in rules {
        names.push(rule["select"].as_str().unwrap().to_string());
        match rule.get("divide_by") {
            Some(toml::Value::String(s)) => names.push(s.clone()),
            Some(toml::Value::Table(t)) => names.push(t["select"].as_str().unwrap().to_string()),
            _ => {}
        }
        if let Some(when) = rule.get("when") {
            names.push(when["select"].as_str().unwrap().to_string());
        }
    }
    for selector in names {
        let metric = selector.split('{').next().unwrap();
        assert!(
            doc.contains(&format!("| `{metric}` |")) || crate::agent::is_documented(metric),
            "{metric} (in config/rules.toml) is not in docs/metrics.md"
        );
    }
}

#[test]
fn replaying_the_recorded_logs_fires_exactly_the_committed_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let data = root().join("tests/data/alerts");
    for log in ["tx2-jetpack4-2660s", "xavier-nx-jp5-nonroot-103s"] {
        let db = dir.path().join(format!("{log}.redb"));
        let path = root().join(format!("tests/data/tegrastats/{log}.log.zst"));
        let (path, db_path) = (path.to_str().unwrap(), db.to_str().unwrap());
        succeed(&mut outpost(&[
            "tegrastats",
            "import",
            path,
            "--db",
            db_path,
        ]));
        for (rules, suffix) in [
            ("default".to_string(), "default"),
            (
                data.join("replay-rules.toml").display().to_string(),
                "replay",
            ),
        ] {
            let out = succeed(&mut outpost(&[
                "rules",
                "test",
                &rules,
                "--db",
                db_path,
                "--from",
                "start",
                "--transitions",
            ]));
            let got = String::from_utf8(out.stdout).unwrap();
            let expected_path = data.join(format!("{log}.{suffix}.txt"));
            if std::env::var_os("OUTPOST_BLESS").is_some() {
                std::fs::write(&expected_path, &got).unwrap();
            }
            let expected = std::fs::read_to_string(&expected_path).unwrap();
            if got != expected {
                let first = got
                    .lines()
                    .zip(expected.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.lines().count().min(expected.lines().count()));
                panic!(
                    "{log} with {suffix} rules: transitions differ from {} at line {}:\n got: {:?}\nwant: {:?}",
                    expected_path.display(),
                    first + 1,
                    got.lines().nth(first),
                    expected.lines().nth(first)
                );
            }
            if suffix == "replay" {
                assert!(
                    got.lines().count() > 20,
                    "the replay rules exercise the engine"
                );
            }
        }
    }
    // --at without --transitions: what is active at the end.
    let db = dir.path().join("xavier-nx-jp5-nonroot-103s.redb");
    let out = outpost(&[
        "rules",
        "test",
        data.join("replay-rules.toml").to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--from",
        "start",
    ])
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("at 2025-10-01T20:07:40Z: 13 active alert(s) after 106 evaluations"),
        "{text}"
    );
    assert!(text.contains("firing core_offline{cpu=\"4\"}"), "{text}");
}

#[test]
fn sighup_reloads_the_rules_and_a_broken_file_keeps_the_running_ones() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    let alerts = alerts_section(dir.path(), ERRORS_RULE, "200ms");
    let config = format!("{QUIET}[agent]\nself_interval = \"200ms\"\n{alerts}");
    let agent = Agent::start(dir.path(), &config, &[]);
    let rule_count = |agent: &Agent, n: u32| {
        wait_until(&format!("{n} rules"), Duration::from_secs(20), || {
            agent
                .metrics()
                .contains(&format!("outpost_alert_rules {n}\n"))
                .then_some(())
        })
    };
    rule_count(&agent, 1);
    push(&agent, "app_errors{job=\"a\"} 1\n");
    let firing = |agent: &Agent| {
        let (_, body) = http(agent.port, "GET", "/api/alerts", "");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["alerts"].as_array().unwrap().len()
    };
    wait_until("firing", Duration::from_secs(20), || {
        (firing(&agent) == 1).then_some(())
    });
    std::fs::write(
        &rules,
        format!(
            "{ERRORS_RULE}\n[[rule]]\nname = \"more\"\nselect = \"app_errors\"\nthreshold = 100\n"
        ),
    )
    .unwrap();
    agent.signal("HUP");
    rule_count(&agent, 2);
    assert_eq!(firing(&agent), 1, "the firing alert survives the reload");
    std::fs::write(&rules, "[[rule]]\nname = \"broken\"\n").unwrap();
    agent.signal("HUP");
    wait_until("the refusal", Duration::from_secs(20), || {
        agent
            .log_text()
            .contains("alert rules not reloaded")
            .then_some(())
    });
    rule_count(&agent, 2);
    let log = agent.stop();
    assert!(log.contains("rules.toml: rule broken: select"), "{log}");
}

/// What `fuzz/fuzz_targets/alert_rules.rs` does to each input, over its seeds and corpus.
#[test]
fn the_rule_fuzzers_inputs_load_or_fail_cleanly() {
    use outpost::alert::template::{Context, Template};
    use outpost::alert::window::Windows;
    let fuzz = root().join("fuzz");
    let mut loaded = 0;
    let mut inputs = 0;
    for kind in ["seeds", "corpus"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join("alert_rules")) else {
            continue;
        };
        for entry in entries {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            inputs += 1;
            if let Ok(template) = Template::parse(&text) {
                let _ = template.render(&Context::default());
            }
            let Ok(rules) = outpost::alert::rules::parse(Path::new("fuzz.toml"), &text) else {
                continue;
            };
            loaded += 1;
            let mut windows = Windows::new(&rules, &[]);
            let key = outpost_storage::SeriesKey::parse("up").unwrap();
            for t in 0..20 {
                windows.observe(&key, t * 1000, t as f64);
            }
            for (r, rule) in rules.iter().enumerate() {
                if let outpost::alert::rules::Condition::Threshold(threshold) = &rule.condition {
                    let _ = windows.evaluate(r, threshold, 20_000, 0);
                }
            }
        }
    }
    assert!(
        inputs >= 2 && loaded >= 2,
        "{inputs} inputs, {loaded} loaded"
    );
}

/// SIGKILL at random moments around deliveries, many times over: an exec command never runs
/// twice for one notification; the webhook gets every notification that the agent decided on,
/// each repeat carrying the same `Idempotency-Key`, and at most one repeat per kill.
#[test]
fn sigkills_around_deliveries_never_run_a_command_twice_or_lose_a_notification() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start(0);
    let exec_log = dir.path().join("exec.log");
    let alerts = alerts_section(dir.path(), ERRORS_RULE, "100ms");
    let config = format!(
        r#"{QUIET}{alerts}
[[alerts.webhook]]
name = "hook"
url = "http://127.0.0.1:{port}/in"
[[alerts.exec]]
name = "fix"
command = ["sh", "-c", "echo \"$OUTPOST_ALERT_ID\" >> {log}; sleep 0.3"]
"#,
        port = hook.port,
        log = exec_log.display(),
    );
    // A fixed seed: the kill moments differ from round to round, the same on every run.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next_delay = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        Duration::from_millis(rng % 900)
    };
    let kills = 16;
    for round in 0..kills {
        let mut agent = Agent::start(dir.path(), &config, &[]);
        let value = if round % 2 == 0 { 5 } else { 0 };
        push(&agent, &format!("app_errors{{job=\"cam\"}} {value}\n"));
        std::thread::sleep(next_delay());
        agent.signal("KILL");
        agent.child.wait().unwrap();
    }
    let agent = Agent::start(dir.path(), &config, &[]);
    wait_until("the queues drained", Duration::from_secs(60), || {
        let metrics = agent.metrics();
        (metric_value(
            &metrics,
            r#"outpost_alert_notifications_queued{channel="hook"}"#,
        ) == Some(0.0)
            && metric_value(
                &metrics,
                r#"outpost_alert_notifications_queued{channel="fix"}"#,
            ) == Some(0.0))
        .then_some(())
    });
    let decided: Vec<Value> = history(&agent)
        .into_iter()
        .filter(|e| e["state"] == "firing" || e["state"] == "resolved")
        .collect();
    agent.stop();
    assert!(
        decided.len() >= 4,
        "too few transitions to mean anything: {decided:?}"
    );

    let ran = std::fs::read_to_string(&exec_log).unwrap_or_default();
    let ran: Vec<&str> = ran.lines().collect();
    let distinct: BTreeSet<&str> = ran.iter().copied().collect();
    assert_eq!(distinct.len(), ran.len(), "a command ran twice: {ran:?}");
    let firings = decided.iter().filter(|e| e["state"] == "firing").count();
    assert!(ran.len() <= firings, "{ran:?} for {firings} firings");

    let keys = hook.keys();
    let received: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    let expected: BTreeSet<String> = decided
        .iter()
        .map(|e| {
            let at: String = e["at"]
                .as_str()
                .unwrap()
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            format!(
                "{}.{}.transition.{at}",
                e["device"].as_str().unwrap(),
                e["event_seq"]
            )
        })
        .collect();
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(
        received, expected,
        "every decided notification, nothing else"
    );
    let repeats = keys.len() - received.len();
    assert!(repeats <= kills, "{repeats} repeats for {kills} kills");
}

/// The alert names of a Prometheus rule file, in order.
fn alert_names(rules: &Path) -> Vec<String> {
    std::fs::read_to_string(rules)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: ").map(str::to_string))
        .collect()
}

/// A promtool unit-test file whose input is every `jetson_*` series of `db` (1 s apart from its
/// first sample) and whose expectations are the alerts firing at every evaluation in Outpost's
/// `transitions` (JSON lines of `rules test --transitions --json`).
fn promtool_expectations(
    db: &Path,
    rules: &Path,
    transitions: &str,
    step_s: i64,
) -> (String, usize) {
    let csv = succeed(&mut outpost(&[
        "db",
        "query",
        "--db",
        db.to_str().unwrap(),
        "--from",
        "0",
        r#"{__name__=~"jetson_.+"}"#,
    ]));
    let mut series: std::collections::BTreeMap<String, Vec<(i64, String)>> = Default::default();
    for line in String::from_utf8(csv.stdout).unwrap().lines().skip(1) {
        // CSV: a series with labels is quoted, its quotes doubled.
        let (key, rest) = match line.strip_prefix('"') {
            Some(quoted) => quoted.rsplit_once("\",").unwrap(),
            None => line.split_once(',').unwrap(),
        };
        let (ts, value) = rest.split_once(',').unwrap();
        let key = key.replace("\"\"", "\"");
        series
            .entry(key)
            .or_default()
            .push((ts.parse().unwrap(), value.to_string()));
    }
    let start = series.values().map(|p| p[0].0).min().unwrap();
    let end = series.values().map(|p| p.last().unwrap().0).max().unwrap();
    let mut yaml = format!(
        "rule_files: [{:?}]\nevaluation_interval: {step_s}s\ntests:\n  - interval: 1s\n    input_series:\n",
        rules.display().to_string()
    );
    for (key, points) in &series {
        let mut values = vec!["_".to_string(); ((end - start) / 1000 + 1) as usize];
        for (ts, value) in points {
            assert_eq!(
                (ts - start) % 1000,
                0,
                "the import's samples lie on a 1 s grid"
            );
            values[((ts - start) / 1000) as usize] = value.clone();
        }
        yaml.push_str(&format!(
            "      - series: {}\n        values: \"{}\"\n",
            serde_json::to_string(key).unwrap(),
            values.join(" ")
        ));
    }
    let events: Vec<Value> = transitions
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at_ms = |v: &Value| {
        v["at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond()
    };
    yaml.push_str("    alert_rule_test:\n");
    let mut firing_checked = 0;
    let names = alert_names(rules);
    let mut t = start;
    while t <= end {
        // The state of every alert after the evaluation at t.
        let mut latest: std::collections::BTreeMap<(String, String), &Value> = Default::default();
        for event in events.iter().filter(|e| at_ms(e) <= t) {
            latest.insert(
                (
                    event["rule"].as_str().unwrap().to_string(),
                    event["instance"].as_str().unwrap().to_string(),
                ),
                event,
            );
        }
        for name in &names {
            yaml.push_str(&format!(
                "      - eval_time: {}s\n        alertname: {name}\n        exp_alerts:\n",
                (t - start) / 1000
            ));
            let firing: Vec<&&Value> = latest
                .iter()
                .filter(|((rule, _), e)| rule == name && e["state"] == "firing")
                .map(|(_, e)| e)
                .collect();
            if firing.is_empty() {
                yaml.truncate(yaml.len() - 1);
                yaml.push_str(" []\n");
            }
            for alert in firing {
                firing_checked += 1;
                let mut annotations = alert["annotations"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                for field in ["summary", "description"] {
                    if alert[field].as_str().is_some_and(|s| !s.is_empty()) {
                        annotations.insert(field.into(), alert[field].clone());
                    }
                }
                yaml.push_str(&format!(
                    "          - exp_labels: {}\n            exp_annotations: {}\n",
                    alert["labels"],
                    Value::Object(annotations)
                ));
            }
        }
        t += step_s * 1000;
    }
    (yaml, firing_checked)
}

#[test]
fn prometheus_rules_fire_exactly_when_prometheus_fires_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tx2.redb");
    let log = root().join("tests/data/tegrastats/tx2-jetpack4-2660s.log.zst");
    succeed(&mut outpost(&[
        "tegrastats",
        "import",
        log.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]));
    let rules = root().join("tests/data/alerts/replay-rules.yml");
    let step_s = 10;
    let out = succeed(&mut outpost(&[
        "rules",
        "test",
        rules.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--from",
        "start",
        "--step",
        &format!("{step_s}s"),
        "--transitions",
        "--json",
    ]));
    let transitions = String::from_utf8(out.stdout).unwrap();
    let (tests, firing_checked) = promtool_expectations(&db, &rules, &transitions, step_s);
    // Every alert of the file fires at least once, so none passes by never firing.
    for name in alert_names(&rules) {
        assert!(
            transitions.contains(&format!("\"rule\":\"{name}\","))
                && tests.contains(&format!(
                    "alertname: {name}\n        exp_alerts:\n          - "
                )),
            "{name} never fires on the replayed log"
        );
    }
    assert!(
        firing_checked > 500,
        "{firing_checked} firing alerts compared"
    );
    let file = dir.path().join("outpost-expectations.yml");
    std::fs::write(&file, tests).unwrap();
    let promtool = std::env::var("OUTPOST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let checked = Command::new(&promtool)
        .args(["test", "rules", file.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("{promtool}: {e} (Debian's prometheus package has it)"));
    assert!(
        checked.status.success(),
        "Prometheus disagrees with Outpost's transitions:\n{}{}",
        String::from_utf8_lossy(&checked.stdout)
            .chars()
            .take(6000)
            .collect::<String>(),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn promtool_accepts_every_prometheus_rule_file_outpost_accepts() {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["config", "tests/data/alerts"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yml" || e == "yaml")
                && path.file_name().is_some_and(|n| n != "outpost.yaml")
            {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    let names: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    let mut args = vec!["rules", "check"];
    args.extend(&names);
    succeed(&mut outpost(&args));
    let promtool = std::env::var("OUTPOST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let checked = Command::new(&promtool)
        .args(["check", "rules"])
        .args(&names)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // The shipped Prometheus forms are what `rules export` writes from the TOML packs.
    for (pack, file, group) in [
        ("default", "config/rules.yml", "outpost"),
        ("hub", "config/hub-rules.yml", "outpost-hub"),
    ] {
        let exported = succeed(&mut outpost(&["rules", "export", pack, "--group", group]));
        assert_eq!(
            String::from_utf8(exported.stdout).unwrap(),
            std::fs::read_to_string(root().join(file)).unwrap(),
            "{file} is stale: outpost rules export {pack} --group {group} > {file}"
        );
    }
}
