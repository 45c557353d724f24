//! The notification services an agent speaks to, each checked on the wire: a local server
//! records every request (method, path, headers, body) and the test compares it with what the
//! service's documented API takes. Alertmanager is the real one (Debian's).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::agent::{free_port, http, wait_until, Agent};

const QUIET: &str =
    "[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n";

const RULE: &str = r#"
[[rule]]
name = "errors"
select = "app_errors"
threshold = 0
severity = "critical"
summary = "{{labels.job}} has {{value}} errors °C"
"#;

/// One recorded request.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: String,
    pub target: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Request {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// An HTTP server that answers every request 200 and keeps it.
struct Recorder {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

pub(crate) fn read_request(stream: &mut std::net::TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header == "\r\n" {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = headers.get("content-length").and_then(|l| l.parse().ok())?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

impl Recorder {
    fn start() -> Recorder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if let Some(request) = read_request(&mut stream) {
                    kept.lock().unwrap().push(request);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                );
            }
        });
        Recorder { port, requests }
    }

    /// Waits for `n` requests whose path starts with `prefix`.
    fn wait_for(&self, prefix: &str, n: usize) -> Vec<Request> {
        wait_until(
            &format!("{n} requests to {prefix}"),
            Duration::from_secs(30),
            || {
                let found: Vec<Request> = self
                    .requests
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| r.target.starts_with(prefix))
                    .cloned()
                    .collect();
                (found.len() >= n).then_some(found)
            },
        )
    }
}

fn secret(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path.display().to_string()
}

fn rules_section(dir: &Path) -> String {
    let path = dir.join("rules.toml");
    std::fs::write(&path, RULE).unwrap();
    format!(
        "[alerts]\ndefault_rules = false\nrules = [\"{}\"]\ninterval = \"200ms\"\n",
        path.display()
    )
}

fn push(agent: &Agent, body: &str) {
    let (status, text) = http(agent.port, "POST", "/api/v1/import/prometheus", body);
    assert_eq!(status, 204, "{text}");
}

/// The agent's transitions of `errors`, oldest first: the firing, then the resolve.
fn transitions(agent: &Agent) -> Vec<Value> {
    wait_until(
        "the firing and the resolve",
        Duration::from_secs(30),
        || {
            let (_, body) = http(agent.port, "GET", "/api/alerts/history?limit=100", "");
            let v: Value = serde_json::from_str(&body).ok()?;
            let mut events: Vec<Value> = v["events"]
                .as_array()?
                .iter()
                .filter(|e| e["state"] == "firing" || e["state"] == "resolved")
                .cloned()
                .collect();
            events.reverse();
            (events.len() >= 2).then_some(events)
        },
    )
}

#[test]
fn each_service_gets_the_request_its_api_documents() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start();
    let base = format!("http://127.0.0.1:{}", recorder.port);
    let d = dir.path();
    let config = format!(
        r#"{QUIET}{alerts}
[[alerts.webhook]]
name = "pager"
format = "pagerduty"
url = "{base}/v2/enqueue"
secret_file = "{pd}"
[[alerts.webhook]]
name = "genie"
format = "opsgenie"
url = "{base}/opsgenie"
secret_file = "{og}"
[[alerts.webhook]]
name = "tg"
format = "telegram"
url = "{base}/telegram"
secret_file = "{tg}"
chat_id = "-1001234"
[[alerts.webhook]]
name = "push"
format = "ntfy"
url = "{base}/ntfy/"
topic = "edge-alerts"
secret_file = "{ntfy}"
[[alerts.webhook]]
name = "gotify"
format = "gotify"
url = "{base}/gotify"
secret_file = "{gotify}"
[[alerts.webhook]]
name = "sms"
format = "sms"
url = "{base}/sms"
to = "+15550100"
[[alerts.webhook]]
name = "twilio"
format = "twilio"
url = "{base}/twilio"
account_sid = "AC0123"
secret_file = "{twilio}"
from = "+15550199"
to = "+15550100"
[[alerts.webhook]]
name = "am-hook"
format = "alertmanager"
url = "{base}/am-receiver"
"#,
        alerts = rules_section(d),
        pd = secret(d, "pd.key", "pd-routing-key"),
        og = secret(d, "og.key", "og-api-key"),
        tg = secret(d, "tg.key", "123:bot-token"),
        ntfy = secret(d, "ntfy.key", "tk_ntfy"),
        gotify = secret(d, "gotify.key", "gotify-app-token"),
        twilio = secret(d, "twilio.key", "twilio-auth"),
    );
    // E-mail, through lettre, to Debian's aiosmtpd with STARTTLS required.
    let (cert, key) = crate::alerts::self_signed(d);
    let smtp_port = free_port();
    let smtp = crate::alerts::SmtpServer::start(d, smtp_port, &cert, &key, false);
    let config = format!(
        "{config}[[alerts.email]]\nname = \"mail\"\nserver = \"smtp://localhost:{smtp_port}\"\nfrom = \"outpost@example.com\"\nto = [\"ops@example.com\"]\nca_file = \"{}\"\n",
        cert.display()
    );
    let agent = Agent::start(d, &config, &[]);
    push(&agent, "app_errors{job=\"a\"} 3\n");
    wait_until("the firing", Duration::from_secs(30), || {
        (!recorder.requests.lock().unwrap().is_empty()).then_some(())
    });
    push(&agent, "app_errors{job=\"a\"} 0\n");
    let events = transitions(&agent);
    let (firing, resolved) = (&events[0], &events[1]);
    let device = firing["device"].as_str().unwrap().to_string();
    let fired_at = firing["fired_at"].as_str().unwrap();
    let summary = "a has 3 errors °C";
    let resolved_summary = resolved["summary"].as_str().unwrap();
    let title = |state: &str| {
        let summary = if state == "RESOLVED" {
            resolved_summary
        } else {
            summary
        };
        format!("[{state}] errors on {device}: {summary}")
    };
    let dedup = format!("{device}/errors/job=a");
    assert_eq!(firing["summary"], summary);

    // PagerDuty Events API v2.
    let pd = recorder.wait_for("/v2/enqueue", 2);
    assert_eq!(
        (pd[0].method.as_str(), pd[0].header("content-type")),
        ("POST", "application/json")
    );
    let details = json!({
        "labels": {"job": "a"}, "value": 3.0, "threshold": 0.0, "description": "", "annotations": {},
    });
    assert_eq!(
        pd[0].json(),
        json!({
            "routing_key": "pd-routing-key",
            "event_action": "trigger",
            "dedup_key": dedup,
            "payload": {
                "summary": format!("errors on {device}: {summary}"),
                "source": device,
                "severity": "critical",
                "timestamp": fired_at,
                "class": "errors",
                "custom_details": details,
            },
        })
    );
    assert_eq!(pd[1].json()["event_action"], "resolve");
    assert_eq!(pd[1].json()["dedup_key"], dedup);

    // Opsgenie: create, then close by alias.
    let og = recorder.wait_for("/opsgenie/", 2);
    assert_eq!(og[0].target, "/opsgenie/v2/alerts");
    assert_eq!(og[0].header("authorization"), "GenieKey og-api-key");
    assert_eq!(
        og[0].json(),
        json!({
            "message": format!("errors on {device}: {summary}"),
            "alias": dedup,
            "description": "",
            "priority": "P1",
            "source": device,
            "tags": ["errors", "critical"],
            "details": {"job": "a"},
        })
    );
    let encoded: String = dedup
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    assert_eq!(
        og[1].target,
        format!("/opsgenie/v2/alerts/{encoded}/close?identifierType=alias")
    );
    assert_eq!(og[1].json(), json!({"source": device, "note": "resolved"}));

    // Telegram: the token is in the path, as the Bot API wants it.
    let tg = recorder.wait_for("/telegram/", 2);
    assert_eq!(tg[0].target, "/telegram/bot123:bot-token/sendMessage");
    assert_eq!(
        tg[0].json(),
        json!({"chat_id": "-1001234", "text": title("FIRING")})
    );
    assert_eq!(tg[1].json()["text"], title("RESOLVED"));

    // ntfy, JSON publishing to the server's root.
    let ntfy = recorder.wait_for("/ntfy", 2);
    assert_eq!(ntfy[0].target, "/ntfy");
    assert_eq!(ntfy[0].header("authorization"), "Bearer tk_ntfy");
    assert_eq!(
        ntfy[0].json(),
        json!({
            "topic": "edge-alerts", "title": title("FIRING"), "message": "", "priority": 5,
            "tags": ["rotating_light", "critical"],
        })
    );
    assert_eq!(
        ntfy[1].json()["tags"],
        json!(["white_check_mark", "critical"])
    );

    // Gotify.
    let gotify = recorder.wait_for("/gotify/", 2);
    assert_eq!(gotify[0].target, "/gotify/message");
    assert_eq!(gotify[0].header("x-gotify-key"), "gotify-app-token");
    assert_eq!(
        gotify[0].json(),
        json!({"title": title("FIRING"), "message": title("FIRING"), "priority": 8})
    );

    // A generic SMS gateway.
    let sms = recorder.wait_for("/sms", 2);
    assert_eq!(
        sms[0].json(),
        json!({"to": "+15550100", "text": title("FIRING")})
    );
    assert_eq!(sms[0].header("authorization"), "");

    // Twilio's Messages API: a form, basic auth with the account and its token.
    let twilio = recorder.wait_for("/twilio/", 2);
    assert_eq!(
        twilio[0].target,
        "/twilio/2010-04-01/Accounts/AC0123/Messages.json"
    );
    assert_eq!(
        twilio[0].header("content-type"),
        "application/x-www-form-urlencoded"
    );
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("AC0123:twilio-auth");
    assert_eq!(twilio[0].header("authorization"), format!("Basic {basic}"));
    let form: Vec<(String, String)> = form_urlencoded::parse(twilio[0].body.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(
        form,
        [
            ("To".to_string(), "+15550100".to_string()),
            ("From".to_string(), "+15550199".to_string()),
            ("Body".to_string(), title("FIRING")),
        ]
    );

    // Alertmanager's webhook payload.
    let am = recorder.wait_for("/am-receiver", 2);
    let body = am[0].json();
    assert_eq!(
        (&body["version"], &body["status"]),
        (&json!("4"), &json!("firing"))
    );
    let labels =
        json!({"alertname": "errors", "instance": device, "job": "a", "severity": "critical"});
    assert_eq!(body["alerts"][0]["labels"], labels);
    assert_eq!(body["alerts"][0]["startsAt"], fired_at);
    assert_eq!(
        body["alerts"][0]["annotations"],
        json!({"summary": summary})
    );
    let resolved_body = am[1].json();
    assert_eq!(resolved_body["status"], "resolved");
    assert_eq!(
        resolved_body["alerts"][0]["endsAt"],
        resolved["resolved_at"]
    );

    // The mail's subject, "°C" in it, is encoded as RFC 2047 wants: its headers are ASCII.
    let mail = wait_until("the mail", Duration::from_secs(30), || {
        smtp.mail().into_iter().next()
    });
    let (headers, body) = mail.split_once("\n\n").unwrap();
    assert!(headers.is_ascii(), "{headers}");
    let subject = headers.replace("\n ", " ");
    assert!(
        subject.contains("Subject: [FIRING] errors on") && subject.contains("=?utf-8?"),
        "{headers}"
    );
    assert!(body.contains("rule: errors"), "{body}");

    // No secret reaches the log.
    let log = agent.log_text();
    for token in [
        "pd-routing-key",
        "og-api-key",
        "bot-token",
        "tk_ntfy",
        "gotify-app-token",
        "twilio-auth",
    ] {
        assert!(!log.contains(token), "{token} in the agent's log");
    }
}

/// Debian's Alertmanager on a free port, routing everything to `webhook` at once.
struct Alertmanager {
    child: Child,
    port: u16,
}

impl Alertmanager {
    fn start(dir: &Path, webhook: &str) -> Alertmanager {
        let port = free_port();
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: hook\n  group_by: [alertname, instance]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: {webhook}\n        send_resolved: true\n"
            ),
        )
        .unwrap();
        let binary = std::env::var("OUTPOST_ALERTMANAGER")
            .unwrap_or_else(|_| "prometheus-alertmanager".into());
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary}: {e} (Debian's prometheus-alertmanager)"));
        wait_until("Alertmanager ready", Duration::from_secs(30), || {
            let (status, _) =
                std::panic::catch_unwind(|| http(port, "GET", "/-/ready", "")).ok()?;
            (status == 200).then_some(())
        });
        Alertmanager { child, port }
    }

    fn alerts(&self) -> Vec<Value> {
        let (status, body) = http(self.port, "GET", "/api/v2/alerts", "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn alerts_reach_a_real_alertmanager_and_its_receivers() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start();
    let manager = Alertmanager::start(
        dir.path(),
        &format!("http://127.0.0.1:{}/from-alertmanager", recorder.port),
    );
    let config = format!(
        "{QUIET}{}\n[[alerts.webhook]]\nname = \"am\"\nformat = \"alertmanager-api\"\nurl = \"http://127.0.0.1:{}\"\n[[alerts.webhook]]\nname = \"ours\"\nformat = \"alertmanager\"\nurl = \"http://127.0.0.1:{}/ours\"\n",
        rules_section(dir.path()),
        manager.port,
        recorder.port
    );
    let agent = Agent::start(dir.path(), &config, &[]);
    push(&agent, "app_errors{job=\"a\"} 3\n");
    let active = wait_until("the alert in Alertmanager", Duration::from_secs(30), || {
        let alerts = manager.alerts();
        (alerts.len() == 1).then(|| alerts[0].clone())
    });
    assert_eq!(active["labels"]["alertname"], "errors", "{active}");
    assert_eq!(active["labels"]["job"], "a");
    assert_eq!(active["labels"]["severity"], "critical");
    assert_eq!(active["annotations"]["summary"], "a has 3 errors °C");
    assert_eq!(active["status"]["state"], "active");
    // Alertmanager told its receiver; its payload has exactly the fields of ours.
    let from_am = recorder.wait_for("/from-alertmanager", 1)[0].json();
    let ours = recorder.wait_for("/ours", 1)[0].json();
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let (mut am_keys, mut our_keys) = (keys(&from_am), keys(&ours));
    am_keys.sort();
    our_keys.sort();
    assert_eq!(am_keys, our_keys, "{from_am}\n{ours}");
    let (mut am_alert, mut our_alert) = (keys(&from_am["alerts"][0]), keys(&ours["alerts"][0]));
    am_alert.sort();
    our_alert.sort();
    assert_eq!(am_alert, our_alert);
    assert_eq!(from_am["alerts"][0]["labels"], ours["alerts"][0]["labels"]);
    assert_eq!(
        from_am["alerts"][0]["startsAt"],
        ours["alerts"][0]["startsAt"]
    );
    // The resolve ends it there too, and Alertmanager says so to its receiver.
    push(&agent, "app_errors{job=\"a\"} 0\n");
    let resolved = recorder.wait_for("/from-alertmanager", 2);
    let last = resolved.last().unwrap().json();
    assert_eq!(last["status"], "resolved", "{last}");
    wait_until(
        "no active alert in Alertmanager",
        Duration::from_secs(30),
        || {
            manager
                .alerts()
                .iter()
                .all(|a| a["status"]["state"] != "active")
                .then_some(())
        },
    );
}

/// The recorded Xavier NX burn (four cores at 100 %) with a rule per core: a channel that groups
/// by rule gets one message carrying the four alerts, where one that does not gets four.
#[test]
fn a_burn_over_every_core_is_one_grouped_notification() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"core_busy\"\nselect = \"jetson_cpu_load_ratio\"\nthreshold = 0.9\n",
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{}", recorder.port);
    let config = format!(
        r#"{QUIET}[alerts]
default_rules = false
rules = ["{rules}"]
interval = "200ms"
[[alerts.webhook]]
name = "each"
url = "{base}/each"
on = ["firing"]
[[alerts.webhook]]
name = "grouped"
url = "{base}/grouped"
group_by = ["alertname"]
group_wait = "2s"
on = ["firing"]
[[alerts.webhook]]
name = "chat"
format = "slack"
url = "{base}/chat"
group_by = ["alertname", "device"]
group_wait = "2s"
on = ["firing"]
[[alerts.webhook]]
name = "am"
format = "alertmanager"
url = "{base}/am"
group_by = ["alertname"]
group_wait = "2s"
on = ["firing"]
"#,
        rules = rules.display()
    );
    let log = crate::agent::root().join("tests/data/tegrastats/xavier-nx-jp5-nonroot-103s.log.zst");
    let agent = Agent::start(
        dir.path(),
        &config,
        &[
            "--tegrastats-replay",
            log.to_str().unwrap(),
            "--replay-speed",
            "0",
        ],
    );
    let each = recorder.wait_for("/each", 4);
    let cores: std::collections::BTreeSet<String> = each
        .iter()
        .map(|r| r.json()["labels"]["cpu"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        cores.len(),
        4,
        "one message per core without grouping: {cores:?}"
    );
    let grouped = recorder.wait_for("/grouped", 1);
    let body = grouped[0].json();
    assert_eq!(body["alerts"].as_array().unwrap().len(), 4, "{body}");
    assert_eq!(body["state"], "firing");
    let chat = recorder.wait_for("/chat", 1)[0].json();
    let text = chat["text"].as_str().unwrap();
    assert!(text.contains("4 alerts"), "{text}");
    let am = recorder.wait_for("/am", 1)[0].json();
    assert_eq!(am["alerts"].as_array().unwrap().len(), 4, "{am}");
    assert_eq!(am["groupLabels"], json!({"alertname": "core_busy"}));
    // Nothing more came: every channel delivered its four notifications, and emptied its queue.
    wait_until("every queue delivered", Duration::from_secs(60), || {
        let metrics = agent.metrics();
        ["each", "grouped", "chat", "am"]
            .iter()
            .all(|c| {
                metrics.contains(&format!(
                    "outpost_alert_notifications_delivered_total{{channel=\"{c}\"}} 4\n"
                )) && metrics.contains(&format!(
                    "outpost_alert_notifications_queued{{channel=\"{c}\"}} 0\n"
                ))
            })
            .then_some(())
    });
    let all = recorder.requests.lock().unwrap().clone();
    let count = |prefix: &str| all.iter().filter(|r| r.target.starts_with(prefix)).count();
    assert_eq!(
        (
            count("/each"),
            count("/grouped"),
            count("/chat"),
            count("/am")
        ),
        (4, 1, 1, 1),
        "{}",
        agent.log_text()
    );
}

/// The hub routes the devices' alerts: critical ones to `oncall` (grouped by rule) and, going
/// on, everything to `chat`; a device's burn over four cores is one message on `oncall`, and
/// the hub's silence of one core mutes it on every route.
#[test]
fn the_hub_routes_device_alerts_to_its_channels() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start();
    let base = format!("http://127.0.0.1:{}", recorder.port);
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt = crate::sync::enrol(dir.path(), "dev-r", mqtt_port);
    let _hub = crate::dashboard::hub_with_config(
        dir.path(),
        (http_port, mqtt_port),
        &format!(
            r#"[alerts]
[[alerts.webhook]]
name = "oncall"
url = "{base}/oncall"
group_by = ["alertname", "device"]
group_wait = "2s"
on = ["firing"]
[[alerts.webhook]]
name = "chat"
url = "{base}/chat"
on = ["firing"]
[[alerts.silence]]
match = '{{alertname="core_busy", cpu="0", device="dev-r"}}'
ends = "2099-01-01T00:00:00Z"
comment = "core 0 is known to run hot"
[[alerts.route]]
match = '{{severity="critical"}}'
receivers = ["oncall"]
continue = true
[[alerts.route]]
match = "{{}}"
receivers = ["chat"]
"#
        ),
    );
    let agent_dir = dir.path().join("r");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let rules = agent_dir.join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"core_busy\"\nselect = \"jetson_cpu_load_ratio\"\nthreshold = 0.9\nseverity = \"critical\"\n\
         [[rule]]\nname = \"ram_used\"\nselect = \"jetson_ram_used_bytes\"\nthreshold = 1\n",
    )
    .unwrap();
    let config = format!(
        "{QUIET}{mqtt}[alerts]\ndefault_rules = false\nrules = [\"{}\"]\ninterval = \"200ms\"\n",
        rules.display()
    );
    let log = crate::agent::root().join("tests/data/tegrastats/xavier-nx-jp5-nonroot-103s.log.zst");
    let _agent = Agent::start(
        &agent_dir,
        &config,
        &[
            "--tegrastats-replay",
            log.to_str().unwrap(),
            "--replay-speed",
            "0",
        ],
    );
    // The hub's silence mutes core 0 on every route.
    let oncall = recorder.wait_for("/oncall", 1);
    let body = oncall[0].json();
    let cores: Vec<&str> = body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["labels"]["cpu"].as_str().unwrap())
        .collect();
    assert_eq!(cores, ["1", "2", "3"], "{body}");
    let chat = recorder.wait_for("/chat", 4);
    let rules_told: Vec<String> = chat
        .iter()
        .map(|r| r.json()["rule"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        rules_told.iter().filter(|r| *r == "core_busy").count(),
        3,
        "{rules_told:?}"
    );
    assert!(rules_told.contains(&"ram_used".to_string()));
    assert!(body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["rule"] == "core_busy" && a["device"] == "dev-r"));
    assert_eq!(
        recorder.wait_for("/oncall", 1).len(),
        1,
        "the warning is not on-call's"
    );
}

const LABELLED_RULES: &str = "[[rule]]\nname = \"core_busy\"\nselect = \"app_busy\"\nthreshold = 0.9\nseverity = \"critical\"\n\
     [[rule]]\nname = \"ram_used\"\nselect = \"app_ram\"\nthreshold = 1\n";

const BUSY: &str =
    "app_busy{cpu=\"0\"} 1\napp_busy{cpu=\"1\"} 1\napp_busy{cpu=\"2\"} 1\napp_busy{cpu=\"3\"} 1\napp_ram 5\n";

/// Routes on the labels operators give devices, through a tree: the north site's alerts go to
/// `north`, grouped by rule and site (the RAM alert alone, by a child route), reminded while they
/// fire; the rest to `rest`. A fleet silence by device label reaches only the south device, and
/// the hub does not route what that device silenced. Relabelled north, the device loses the
/// silence and its RAM alert, firing all along, reaches `north`.
#[test]
fn the_hub_routes_by_device_labels_through_a_tree_and_silences_follow_the_labels() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start();
    let base = format!("http://127.0.0.1:{}", recorder.port);
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt_n = crate::sync::enrol(dir.path(), "dev-n", mqtt_port);
    let mqtt_s = crate::sync::enrol(dir.path(), "dev-s", mqtt_port);
    let label = |args: &[&str]| {
        let mut all = vec!["device", "label"];
        all.extend_from_slice(args);
        crate::agent::succeed(&mut crate::sync::devices_command(dir.path(), &all))
    };
    label(&["dev-n", "site=north", "role=camera"]);
    label(&["dev-s", "site=south"]);
    let refused =
        crate::sync::devices_command(dir.path(), &["device", "label", "dev-s", "device=x"])
            .output()
            .unwrap();
    assert!(
        !refused.status.success(),
        "an operator's label cannot pose as the hub's"
    );
    let _hub = crate::dashboard::hub_with_config(
        dir.path(),
        (http_port, mqtt_port),
        &format!(
            r#"[alerts]
[[alerts.webhook]]
name = "north"
url = "{base}/north"
on = ["firing"]
[[alerts.webhook]]
name = "rest"
url = "{base}/rest"
on = ["firing"]
[[alerts.route]]
match = '{{site="north"}}'
receivers = ["north"]
group_by = ["alertname", "site"]
group_wait = "1s"
group_interval = "2s"
repeat_interval = "3s"
  [[alerts.route.routes]]
  match = '{{alertname="ram_used"}}'
  group_by = ["..."]
[[alerts.route]]
receivers = ["rest"]
"#
        ),
    );
    let ends = outpost::timearg::now_ms() + 3_600_000;
    let silence = json!({
        "device_match": "{site=\"south\"}",
        "match": "{alertname=\"ram_used\"}",
        "ends_ms": ends,
        "comment": "south's RAM is known",
    });
    let post_json = |path: &str, body: &Value| {
        let json = [("Content-Type", "application/json")];
        let (status, _, text) =
            crate::agent::http_with(http_port, "POST", path, &json, &body.to_string());
        (status, text)
    };
    let (status, made) = post_json("/api/silences", &silence);
    assert_eq!(status, 201, "{made}");
    let made: Value = serde_json::from_str(&made).unwrap();
    let sent: Vec<&String> = made["sent"].as_object().unwrap().keys().collect();
    assert_eq!(sent, ["dev-s"], "only the south device: {made}");
    let id = made["id"].as_str().unwrap().to_string();
    let on_site = json!({"device_match": "{}", "match": "{site=\"north\"}", "ends_ms": ends});
    let (status, refused) = post_json("/api/silences", &on_site);
    assert_eq!(
        status, 400,
        "a device label in match would never hold: {refused}"
    );
    assert!(refused.contains("device_match"), "{refused}");

    let start = |name: &str, mqtt: &str| {
        let agent_dir = dir.path().join(name);
        std::fs::create_dir_all(&agent_dir).unwrap();
        let rules = agent_dir.join("rules.toml");
        std::fs::write(&rules, LABELLED_RULES).unwrap();
        let config = format!(
            "{QUIET}{mqtt}[alerts]\ndefault_rules = false\nrules = [\"{}\"]\ninterval = \"200ms\"\n",
            rules.display()
        );
        Agent::start(&agent_dir, &config, &[])
    };
    let (north, south) = (start("n", &mqtt_n), start("s", &mqtt_s));
    wait_until("the silence on dev-s", Duration::from_secs(30), || {
        crate::dashboard::agent_silences(south.port)
            .contains(&id)
            .then_some(())
    });
    assert!(crate::dashboard::agent_silences(north.port).is_empty());
    // The fleet list shows the labels (the dashboard's filter matches `site=north` on them).
    let labels = wait_until("dev-n listed", Duration::from_secs(30), || {
        let (_, body) = crate::agent::http(http_port, "GET", "/api/devices", "");
        let devices: Value = serde_json::from_str(&body).ok()?;
        let found = devices
            .as_array()?
            .iter()
            .find(|d| d["device"] == "dev-n")?;
        Some(found["labels"].clone())
    });
    assert_eq!(labels, json!({"role": "camera", "site": "north"}));
    push(&north, BUSY);
    push(&south, BUSY);

    // North: one message for the four cores, with the device's labels; the RAM alert alone.
    let told = recorder.wait_for("/north", 2);
    let (grouped, alone): (Vec<&Request>, Vec<&Request>) =
        told.iter().partition(|r| r.json().get("alerts").is_some());
    assert_eq!((grouped.len(), alone.len()), (1, 1), "{told:?}");
    let group = grouped[0].json();
    let alerts = group["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 4, "{group}");
    assert!(alerts.iter().all(|a| a["device"] == "dev-n"
        && a["rule"] == "core_busy"
        && a["labels"]["site"] == "north"
        && a["labels"]["role"] == "camera"));
    assert_eq!(alone[0].json()["rule"], "ram_used");
    // The rest: the south device's four cores, each alone; its RAM alert is silenced on the
    // device and so not routed at all.
    let rest = recorder.wait_for("/rest", 4);
    assert!(
        rest.iter().all(|r| {
            let body = r.json();
            body["device"] == "dev-s"
                && body["rule"] == "core_busy"
                && body["labels"]["site"] == "south"
        }),
        "{rest:?}"
    );
    // Still firing three seconds on: north is reminded, grouped as before.
    let reminded = wait_until("a reminder on north", Duration::from_secs(30), || {
        let requests = recorder.requests.lock().unwrap().clone();
        requests
            .iter()
            .filter(|r| r.target.starts_with("/north"))
            .map(Request::json)
            .find(|body| body["alerts"][0]["reason"] == "renotify")
    });
    assert_eq!(
        reminded["alerts"].as_array().unwrap().len(),
        4,
        "{reminded}"
    );

    // PromQL at the hub sees the device labels on every series of the device.
    let devices_by_site = || {
        let query = "count by (site) (count by (instance, site) ({instance=~\"dev-.+\"}))";
        let path = format!("/api/v1/query?query={}", crate::promql::encode(query));
        let body: Value =
            serde_json::from_str(&crate::agent::http(http_port, "GET", &path, "").1).ok()?;
        let mut sites: Vec<(String, String)> = body["data"]["result"]
            .as_array()?
            .iter()
            .map(|r| {
                (
                    r["metric"]["site"].as_str().unwrap_or("").to_string(),
                    r["value"][1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        sites.sort();
        Some(sites)
    };
    let pair = |site: &str, count: &str| (site.to_string(), count.to_string());
    wait_until("the devices' data by site", Duration::from_secs(30), || {
        devices_by_site().filter(|s| *s == [pair("north", "1"), pair("south", "1")])
    });

    // Relabelled north: the silence ends on dev-s, and its RAM alert reaches north.
    label(&["dev-s", "site=north"]);
    wait_until(
        "the silence gone from dev-s",
        Duration::from_secs(30),
        || (!crate::dashboard::agent_silences(south.port).contains(&id)).then_some(()),
    );
    wait_until(
        "dev-s's RAM alert on north",
        Duration::from_secs(30),
        || {
            let requests = recorder.requests.lock().unwrap().clone();
            requests
                .iter()
                .filter(|r| r.target.starts_with("/north"))
                .map(Request::json)
                .find(|body| body["device"] == "dev-s" && body["rule"] == "ram_used")
        },
    );
    let requests = recorder.requests.lock().unwrap().clone();
    assert!(
        !requests
            .iter()
            .filter(|r| r.target.starts_with("/rest"))
            .any(|r| r.json()["rule"] == "ram_used"),
        "the silenced alert was never routed"
    );
    // The history of dev-s is queried by its labels of now.
    wait_until("both devices north", Duration::from_secs(30), || {
        devices_by_site().filter(|s| *s == [pair("north", "2")])
    });
    let listed = crate::agent::http(http_port, "GET", "/api/silences", "").1;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["silences"][0]["device_match"], "{site=\"south\"}");
    assert!(
        listed["silences"][0]["sent"]
            .as_object()
            .unwrap()
            .is_empty(),
        "{listed}"
    );
}

/// Two devices, the hub routing to a webhook and to a real Alertmanager: one device's alert is
/// told at once; while the hub (and its broker) is down, the other's alert fires and resolves;
/// once the hub is back, both transitions are delivered, once each and in order; the alert that
/// still fires is sent to Alertmanager again and again, so that it stays active there.
#[test]
fn a_device_offline_while_its_alert_fires_and_resolves_is_told_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start();
    let manager = Alertmanager::start(
        dir.path(),
        &format!("http://127.0.0.1:{}/from-alertmanager", recorder.port),
    );
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt: Vec<String> = ["dev-x", "dev-y"]
        .iter()
        .map(|d| crate::sync::enrol(dir.path(), d, mqtt_port))
        .collect();
    let hub_config = dir.path().join("hub.toml");
    std::fs::write(
        &hub_config,
        format!(
            "[alerts]\n[[alerts.webhook]]\nname = \"hook\"\nurl = \"http://127.0.0.1:{}/hook\"\n\
             [[alerts.webhook]]\nname = \"am\"\nformat = \"alertmanager-api\"\nurl = \"http://127.0.0.1:{}\"\nresend_every = \"1s\"\n\
             [[alerts.route]]\nreceivers = [\"hook\", \"am\"]\n",
            recorder.port, manager.port
        ),
    )
    .unwrap();
    let start_hub = || {
        crate::sync::Hub::start_with(
            dir.path(),
            http_port,
            mqtt_port,
            &["--config", hub_config.to_str().unwrap()],
        )
    };
    let hub = start_hub();
    let agents: Vec<Agent> = ["dev-x", "dev-y"]
        .iter()
        .zip(&mqtt)
        .map(|(device, mqtt)| {
            let agent_dir = dir.path().join(device);
            std::fs::create_dir_all(&agent_dir).unwrap();
            let config = format!("{QUIET}{mqtt}{}", rules_section(&agent_dir));
            Agent::start(&agent_dir, &config, &[])
        })
        .collect();
    let (x, y) = (&agents[0], &agents[1]);
    push(y, "app_errors{job=\"y\"} 1\n");
    recorder.wait_for("/hook", 1);
    hub.stop();
    // Offline: dev-x's alert fires and resolves on the device alone.
    push(x, "app_errors{job=\"x\"} 2\n");
    wait_until("dev-x firing", Duration::from_secs(30), || {
        let (_, body) = http(x.port, "GET", "/api/alerts", "");
        body.contains("\"firing\"").then_some(())
    });
    push(x, "app_errors{job=\"x\"} 0\n");
    transitions(x);
    let _hub = start_hub();
    let told = wait_until(
        "dev-x's transitions at the webhook",
        Duration::from_secs(90),
        || {
            let states: Vec<String> = recorder
                .wait_for("/hook", 1)
                .iter()
                .map(|r| r.json())
                .filter(|m| m["device"] == "dev-x")
                .map(|m| m["state"].as_str().unwrap().to_string())
                .collect();
            (states.len() >= 2).then_some(states)
        },
    );
    assert_eq!(told, ["firing", "resolved"], "once each, in order");
    let hook = recorder.wait_for("/hook", 3);
    let y_told = hook
        .iter()
        .filter(|r| r.json()["device"] == "dev-y")
        .count();
    assert_eq!(
        y_told, 1,
        "dev-y's firing was told once, not again after the restart"
    );
    // Alertmanager holds dev-y's alert, and dev-x's is over there too.
    wait_until("Alertmanager's view", Duration::from_secs(30), || {
        let active: Vec<String> = manager
            .alerts()
            .iter()
            .filter(|a| a["status"]["state"] == "active")
            .map(|a| a["labels"]["instance"].as_str().unwrap_or("").to_string())
            .collect();
        (active == ["dev-y"]).then_some(())
    });
    // The hub sends the routed alert that still fires again, so Alertmanager keeps it.
    let ends = || -> Option<i64> {
        let alerts = manager.alerts();
        let alert = alerts.iter().find(|a| a["labels"]["instance"] == "dev-y")?;
        Some(
            alert["endsAt"]
                .as_str()?
                .parse::<jiff::Timestamp>()
                .ok()?
                .as_millisecond(),
        )
    };
    let first = ends().unwrap();
    wait_until(
        "the hub resending dev-y's alert",
        Duration::from_secs(30),
        || (ends()? > first).then_some(()),
    );
}

/// After a group's message, alerts that join the group wait for `group_interval` and go
/// together, rather than one message each as they come.
#[test]
fn alerts_joining_a_group_wait_for_its_interval_and_go_together() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start();
    let config = format!(
        "{QUIET}{}[[alerts.webhook]]\nname = \"grouped\"\nurl = \"http://127.0.0.1:{}/grouped\"\n\
         group_by = [\"alertname\"]\ngroup_wait = \"1s\"\ngroup_interval = \"4s\"\non = [\"firing\"]\n",
        rules_section(dir.path()),
        recorder.port
    );
    let agent = Agent::start(dir.path(), &config, &[]);
    push(&agent, "app_errors{job=\"a\"} 1\n");
    let first = recorder.wait_for("/grouped", 1);
    // A group of one has the group's shape too.
    let jobs = |r: &Request| -> Vec<String> {
        r.json()["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["labels"]["job"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(jobs(&first[0]), ["a"]);
    let sent_first = std::time::Instant::now();
    push(&agent, "app_errors{job=\"b\"} 1\n");
    // Longer than group_wait: without the interval, b would go alone before c fires.
    std::thread::sleep(Duration::from_millis(1500));
    push(&agent, "app_errors{job=\"c\"} 1\n");
    let both = recorder.wait_for("/grouped", 2);
    assert!(
        sent_first.elapsed() >= Duration::from_millis(3500),
        "the interval was kept"
    );
    assert_eq!(jobs(&both[1]), ["b", "c"]);
}
