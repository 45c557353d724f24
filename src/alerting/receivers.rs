//! What each kind of webhook channel sends for one alert: the URL, headers and body that the
//! service's documented API takes (PagerDuty Events v2, Opsgenie, Telegram, ntfy, Gotify, an
//! SMS gateway, Twilio, Alertmanager's webhook payload and its `/api/v2/alerts`), besides the
//! generic formats of `notify::webhook_body`. Pure functions of the channel, the message, the
//! secret and the time, so that each request can be checked byte for byte.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use outpost::alert::engine::{AlertMessage, State};
use outpost::alert::rules::Severity;

use super::config::{WebhookConfig, WebhookFormat};

/// One HTTP request to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The public endpoint of a service, where the channel gives no `url`.
pub fn default_url(format: WebhookFormat) -> Option<&'static str> {
    match format {
        WebhookFormat::Pagerduty => Some("https://events.pagerduty.com/v2/enqueue"),
        WebhookFormat::Opsgenie => Some("https://api.opsgenie.com"),
        WebhookFormat::Telegram => Some("https://api.telegram.org"),
        WebhookFormat::Twilio => Some("https://api.twilio.com"),
        _ => None,
    }
}

/// The channel's base URL: its own, or the service's.
pub fn endpoint(config: &WebhookConfig) -> &str {
    if config.url.is_empty() {
        default_url(config.format).unwrap_or("")
    } else {
        &config.url
    }
}

/// Whether the format needs `secret_file`.
pub fn needs_secret(format: WebhookFormat) -> bool {
    matches!(
        format,
        WebhookFormat::Pagerduty
            | WebhookFormat::Opsgenie
            | WebhookFormat::Telegram
            | WebhookFormat::Gotify
            | WebhookFormat::Twilio
    )
}

/// The settings a format needs besides its URL and secret, as (key, value) to check.
pub fn required_keys(config: &WebhookConfig) -> Vec<(&'static str, &str)> {
    match config.format {
        WebhookFormat::Telegram => vec![("chat_id", &config.chat_id)],
        WebhookFormat::Ntfy => vec![("topic", &config.topic)],
        WebhookFormat::Sms => vec![("to", &config.to)],
        WebhookFormat::Twilio => vec![
            ("account_sid", &config.account_sid),
            ("from", &config.from),
            ("to", &config.to),
        ],
        _ => Vec::new(),
    }
}

fn cut(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

fn json_headers() -> Vec<(String, String)> {
    vec![("content-type".into(), "application/json".into())]
}

/// The alert's title: rule, device and summary, as the chat and paging services show it.
fn title(message: &AlertMessage) -> String {
    let what = if message.state == State::Resolved {
        "RESOLVED"
    } else {
        "FIRING"
    };
    format!(
        "[{what}] {} on {}: {}",
        message.rule, message.device, message.summary
    )
}

/// One alert's identity across its firing and its resolve, for services that pair them.
fn dedup_key(message: &AlertMessage) -> String {
    format!("{}/{}/{}", message.device, message.rule, message.instance)
}

/// The alert's labels as Alertmanager sees them: its own, `alertname`, and the device as
/// `instance` and the severity unless the rule set those.
pub fn alertmanager_labels(message: &AlertMessage) -> BTreeMap<String, String> {
    let mut labels = message.labels.clone();
    labels.insert("alertname".into(), message.rule.clone());
    labels
        .entry("instance".into())
        .or_insert_with(|| message.device.clone());
    labels
        .entry("severity".into())
        .or_insert_with(|| message.severity.to_string());
    labels
}

fn alertmanager_annotations(message: &AlertMessage) -> BTreeMap<String, String> {
    let mut annotations = message.annotations.clone();
    for (key, text) in [
        ("summary", &message.summary),
        ("description", &message.description),
    ] {
        if !text.is_empty() {
            annotations.insert(key.into(), text.clone());
        }
    }
    annotations
}

/// A label set's fingerprint: 16 hex digits of FNV-1a over the sorted pairs.
fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for byte in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

fn rfc3339(ms: i64) -> String {
    outpost::alert::engine::rfc3339(ms)
}

/// Alertmanager's "no end" time.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
/// One alert as `POST /api/v2/alerts` takes it. A firing alert ends four resend intervals
/// (`resend_ms`) after `now_ms` unless sent again, as Prometheus does; a resolved one ends when
/// it resolved.
pub fn alertmanager_alert(message: &AlertMessage, now_ms: i64, resend_ms: i64) -> Value {
    let parse = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
    };
    let starts = parse(&message.fired_at).or(parse(&message.started_at));
    let ends = match message.state {
        State::Resolved => parse(&message.resolved_at).unwrap_or(now_ms),
        _ => now_ms + 4 * resend_ms,
    };
    let mut alert = json!({
        "labels": alertmanager_labels(message),
        "annotations": alertmanager_annotations(message),
        "endsAt": rfc3339(ends),
        "generatorURL": "",
    });
    if let Some(starts) = starts {
        alert["startsAt"] = json!(rfc3339(starts));
    }
    alert
}

/// The labels every map of `maps` has with the same value.
fn common(maps: &[BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let Some((first, rest)) = maps.split_first() else {
        return BTreeMap::new();
    };
    first
        .iter()
        .filter(|(k, v)| rest.iter().all(|m| m.get(*k) == Some(v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The channel's resend interval in milliseconds.
pub fn resend_ms(config: &WebhookConfig) -> i64 {
    i64::try_from(config.resend_every.0.as_millis()).unwrap_or(i64::MAX / 8)
}

/// The body Alertmanager posts to a webhook receiver, for one alert or a group of them (all in
/// one state), grouped by `group_by`.
pub fn alertmanager_webhook(
    config: &WebhookConfig,
    messages: &[AlertMessage],
    group_by: &[String],
) -> Value {
    let status = if messages.first().is_some_and(|m| m.state == State::Resolved) {
        "resolved"
    } else {
        "firing"
    };
    let labels: Vec<BTreeMap<String, String>> = messages.iter().map(alertmanager_labels).collect();
    let annotations: Vec<BTreeMap<String, String>> =
        messages.iter().map(alertmanager_annotations).collect();
    let by: Vec<String> = if group_by.is_empty() {
        vec!["alertname".into()]
    } else {
        group_by.to_vec()
    };
    let group: BTreeMap<String, String> = common(&labels)
        .into_iter()
        .filter(|(k, _)| by.contains(k))
        .collect();
    let alerts: Vec<Value> = messages
        .iter()
        .zip(labels.iter().zip(&annotations))
        .map(|(message, (labels, annotations))| {
            json!({
                "status": status,
                "labels": labels,
                "annotations": annotations,
                "startsAt": message.fired_at.as_deref().or(message.started_at.as_deref()).unwrap_or(ZERO_TIME),
                "endsAt": message.resolved_at.as_deref().filter(|_| status == "resolved").unwrap_or(ZERO_TIME),
                "generatorURL": "",
                "fingerprint": fingerprint(labels),
            })
        })
        .collect();
    let key: Vec<String> = group.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{{}}}", key.join(", ")),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": config.name,
        "groupLabels": group,
        "commonLabels": common(&labels),
        "commonAnnotations": common(&annotations),
        "externalURL": "",
        "alerts": alerts,
    })
}

/// One message standing for a group, for the services that show text: the first alert's
/// fields, the count and instances as its summary, each alert's summary as a line below.
pub fn digest(messages: &[AlertMessage]) -> AlertMessage {
    let mut first = messages[0].clone();
    if messages.len() == 1 {
        return first;
    }
    let names: Vec<&str> = messages.iter().map(|m| m.instance.as_str()).collect();
    let shown = if names.len() > 8 {
        format!("{}, and {} more", names[..8].join(", "), names.len() - 8)
    } else {
        names.join(", ")
    };
    first.summary = format!("{} alerts: {shown}", messages.len());
    first.description = messages
        .iter()
        .map(|m| format!("- {} ({}): {}", m.rule, m.instance, m.summary))
        .collect::<Vec<_>>()
        .join("\n");
    first.labels = common(
        &messages
            .iter()
            .map(|m| m.labels.clone())
            .collect::<Vec<_>>(),
    );
    first.instance = "group".into();
    first.value = None;
    first
}

/// Whether a format can carry a group in one request.
pub fn groups(format: WebhookFormat) -> bool {
    !matches!(
        format,
        WebhookFormat::Template | WebhookFormat::Pagerduty | WebhookFormat::Opsgenie
    )
}

/// The request for a group of two or more alerts, gathered by the labels `group_by`:
/// Alertmanager's formats and the JSON format carry every alert; the text services get the
/// digest.
pub fn group_outgoing(
    config: &WebhookConfig,
    (messages, group_by): (&[AlertMessage], &[String]),
    secret: &str,
    now_ms: i64,
) -> Result<Option<Outgoing>> {
    let base = endpoint(config);
    let json_body = |body: Value| Outgoing {
        url: base.to_string(),
        headers: json_headers(),
        body: body.to_string().into_bytes(),
    };
    match config.format {
        WebhookFormat::Json => {
            let labels = common(
                &messages
                    .iter()
                    .map(|m| m.labels.clone())
                    .collect::<Vec<_>>(),
            );
            Ok(Some(json_body(json!({
                "group": labels,
                "state": messages[0].state,
                "alerts": messages,
            }))))
        }
        WebhookFormat::Alertmanager => Ok(Some(json_body(alertmanager_webhook(
            config, messages, group_by,
        )))),
        WebhookFormat::AlertmanagerApi => {
            let alerts: Vec<Value> = messages
                .iter()
                .map(|m| alertmanager_alert(m, now_ms, resend_ms(config)))
                .collect();
            Ok(Some(Outgoing {
                url: join(base, "api/v2/alerts"),
                headers: json_headers(),
                body: Value::from(alerts).to_string().into_bytes(),
            }))
        }
        _ => outgoing(config, &digest(messages), secret, now_ms),
    }
}

fn pagerduty(message: &AlertMessage, routing_key: &str) -> Value {
    let action = if message.state == State::Resolved {
        "resolve"
    } else {
        "trigger"
    };
    let severity = match message.severity {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    };
    json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": cut(&dedup_key(message), 255),
        "payload": {
            "summary": cut(&format!("{} on {}: {}", message.rule, message.device, message.summary), 1024),
            "source": message.device,
            "severity": severity,
            "timestamp": message.fired_at.as_deref().unwrap_or(&message.at),
            "class": message.rule,
            "custom_details": {
                "labels": message.labels,
                "value": message.value,
                "threshold": message.threshold,
                "description": message.description,
                "annotations": message.annotations,
            },
        },
    })
}

fn opsgenie(base: &str, message: &AlertMessage, key: &str) -> Outgoing {
    let alias = cut(&dedup_key(message), 512);
    let mut headers = json_headers();
    headers.push(("authorization".into(), format!("GenieKey {key}")));
    if message.state == State::Resolved {
        let path: String =
            percent_encoding::utf8_percent_encode(&alias, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        return Outgoing {
            url: join(
                base,
                &format!("v2/alerts/{path}/close?identifierType=alias"),
            ),
            headers,
            body: json!({ "source": message.device, "note": "resolved" })
                .to_string()
                .into_bytes(),
        };
    }
    let priority = match message.severity {
        Severity::Critical => "P1",
        Severity::Warning => "P3",
        Severity::Info => "P5",
    };
    let body = json!({
        "message": cut(&format!("{} on {}: {}", message.rule, message.device, message.summary), 130),
        "alias": alias,
        "description": cut(&message.description, 15_000),
        "priority": priority,
        "source": message.device,
        "tags": [message.rule, message.severity.to_string()],
        "details": message.labels,
    });
    Outgoing {
        url: join(base, "v2/alerts"),
        headers,
        body: body.to_string().into_bytes(),
    }
}

/// The text of chat and SMS services: the title, then the description.
fn text(message: &AlertMessage) -> String {
    if message.description.is_empty() {
        title(message)
    } else {
        format!("{}\n{}", title(message), message.description)
    }
}

fn chat_priority(
    message: &AlertMessage,
    (critical, warning, info, resolved): (u8, u8, u8, u8),
) -> u8 {
    match (message.state, message.severity) {
        (State::Resolved, _) => resolved,
        (_, Severity::Critical) => critical,
        (_, Severity::Warning) => warning,
        (_, Severity::Info) => info,
    }
}

fn bearer(headers: &mut Vec<(String, String)>, secret: &str) {
    if !secret.is_empty() {
        headers.push(("authorization".into(), format!("Bearer {secret}")));
    }
}

/// The request a service channel makes for `message`; `None` for the generic formats.
pub fn outgoing(
    config: &WebhookConfig,
    message: &AlertMessage,
    secret: &str,
    now_ms: i64,
) -> Result<Option<Outgoing>> {
    let base = endpoint(config);
    let json_to = |url: String, body: Value, headers: Vec<(String, String)>| Outgoing {
        url,
        headers,
        body: body.to_string().into_bytes(),
    };
    Ok(Some(match config.format {
        WebhookFormat::Json
        | WebhookFormat::Slack
        | WebhookFormat::Teams
        | WebhookFormat::Discord
        | WebhookFormat::Template => return Ok(None),
        WebhookFormat::Alertmanager => json_to(
            base.to_string(),
            alertmanager_webhook(config, std::slice::from_ref(message), &config.group_by),
            json_headers(),
        ),
        WebhookFormat::AlertmanagerApi => json_to(
            join(base, "api/v2/alerts"),
            json!([alertmanager_alert(message, now_ms, resend_ms(config))]),
            json_headers(),
        ),
        WebhookFormat::Pagerduty => {
            json_to(base.to_string(), pagerduty(message, secret), json_headers())
        }
        WebhookFormat::Opsgenie => opsgenie(base, message, secret),
        WebhookFormat::Telegram => json_to(
            join(base, &format!("bot{secret}/sendMessage")),
            json!({ "chat_id": config.chat_id, "text": cut(&text(message), 4096) }),
            json_headers(),
        ),
        WebhookFormat::Ntfy => {
            let mut headers = json_headers();
            bearer(&mut headers, secret);
            let tag = if message.state == State::Resolved {
                "white_check_mark"
            } else {
                "rotating_light"
            };
            json_to(
                base.trim_end_matches('/').to_string(),
                json!({
                    "topic": config.topic,
                    "title": cut(&title(message), 250),
                    "message": cut(&message.description, 4096),
                    "priority": chat_priority(message, (5, 4, 3, 3)),
                    "tags": [tag, message.severity.to_string()],
                }),
                headers,
            )
        }
        WebhookFormat::Gotify => {
            let mut headers = json_headers();
            headers.push(("x-gotify-key".into(), secret.to_string()));
            json_to(
                join(base, "message"),
                json!({
                    "title": title(message),
                    "message": if message.description.is_empty() { title(message) } else { message.description.clone() },
                    "priority": chat_priority(message, (8, 5, 2, 2)),
                }),
                headers,
            )
        }
        WebhookFormat::Sms => {
            let mut headers = json_headers();
            bearer(&mut headers, secret);
            let mut body = json!({ "to": config.to, "text": cut(&title(message), 160) });
            if !config.from.is_empty() {
                body["from"] = json!(config.from);
            }
            json_to(base.to_string(), body, headers)
        }
        WebhookFormat::Twilio => {
            if config.account_sid.is_empty() {
                bail!("account_sid is empty");
            }
            let body: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("To", &config.to)
                .append_pair("From", &config.from)
                .append_pair("Body", &cut(&title(message), 1600))
                .finish();
            use base64::Engine as _;
            let credentials = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{secret}", config.account_sid));
            Outgoing {
                url: join(
                    base,
                    &format!("2010-04-01/Accounts/{}/Messages.json", config.account_sid),
                ),
                headers: vec![
                    (
                        "content-type".into(),
                        "application/x-www-form-urlencoded".into(),
                    ),
                    ("authorization".into(), format!("Basic {credentials}")),
                ],
                body: body.into_bytes(),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost::alert::engine::Reason;

    fn message(state: State) -> AlertMessage {
        AlertMessage {
            device: "orin-1".into(),
            rule: "gpu_hot".into(),
            instance: "gpu=0".into(),
            severity: Severity::Warning,
            state,
            value: Some(91.5),
            threshold: Some(80.0),
            labels: [("gpu".to_string(), "0".to_string())].into_iter().collect(),
            started_at: Some("2026-12-01T10:00:00Z".into()),
            fired_at: Some("2026-12-01T10:02:00Z".into()),
            resolved_at: (state == State::Resolved).then(|| "2026-12-01T10:09:00Z".into()),
            at: "2026-12-01T10:02:00Z".into(),
            summary: "GPU at 91.5 °C".into(),
            description: String::new(),
            annotations: BTreeMap::new(),
            event_seq: 4,
            silenced: false,
            escalated: false,
            reason: Reason::Transition,
            dropped_before: 0,
        }
    }

    #[test]
    fn alertmanager_gets_its_times_and_stable_fingerprints() {
        let now = "2026-12-01T10:05:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        let firing = alertmanager_alert(&message(State::Firing), now, 60_000);
        assert_eq!(firing["startsAt"], "2026-12-01T10:02:00Z");
        assert_eq!(firing["endsAt"], "2026-12-01T10:09:00Z", "four minutes on");
        assert_eq!(firing["labels"]["instance"], "orin-1");
        let resolved = alertmanager_alert(&message(State::Resolved), now, 60_000);
        assert_eq!(resolved["endsAt"], "2026-12-01T10:09:00Z");
        let labels = alertmanager_labels(&message(State::Firing));
        assert_eq!(fingerprint(&labels), fingerprint(&labels.clone()));
        let mut other = labels.clone();
        other.insert("gpu".into(), "1".into());
        assert_ne!(fingerprint(&labels), fingerprint(&other));
    }

    #[test]
    fn texts_fit_the_services_limits() {
        let mut long = message(State::Firing);
        long.summary = "é".repeat(5000);
        let config = WebhookConfig {
            format: WebhookFormat::Sms,
            to: "+1".into(),
            ..serde_json::from_value(json!({"name": "s", "url": "http://127.0.0.1/"})).unwrap()
        };
        let sms = outgoing(&config, &long, "", 0).unwrap().unwrap();
        let body: Value = serde_json::from_slice(&sms.body).unwrap();
        assert_eq!(body["text"].as_str().unwrap().chars().count(), 160);
        let paged = pagerduty(&long, "k");
        assert_eq!(
            paged["payload"]["summary"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            1024
        );
    }
}
