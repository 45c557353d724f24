//! The devices' kept log lines forwarded to Loki's push API (`[loki]`), for people who search
//! their logs there: the hub sends each device's lines after the last one Loki took, as JSON
//! streams labelled with the device (`instance`), the line's source, unit and priority.
//!
//! What Loki took is remembered per device in the hub's store, written after Loki's 2xx, so a
//! hub that restarts goes on where it was. A crash between the two sends some lines twice; Loki
//! keeps one of two entries with the same stream, time and text. A 429, a 5xx or a connection
//! error leaves the lines for the next round. A line Loki refuses for good (another 4xx: too
//! old, a stream limit) is counted and logged, and the hub goes past it: it stays on the hub's
//! device page. Lines the hub's own quota pushed out before they were sent are counted too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use outpost_storage::{Store, WriteBatch};
use outpost_sync::state_keys::IngestKey;
use outpost_sync::LogLine;
use serde::Deserialize;

use super::keys::RegistryKey;
use super::remote::Identity;
use crate::config_values::Interval;
use crate::http_client::{self, Target};

/// The hub's `[loki]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LokiSection {
    /// Loki's push URL (`http://loki:3100/loki/api/v1/push`); empty: no forwarding.
    pub url: String,
    /// Extra request headers: a tenant (`X-Scope-OrgID`).
    pub headers: BTreeMap<String, String>,
    /// HTTP basic auth: the user, and a file holding the password.
    pub username: String,
    pub password_file: PathBuf,
    /// A file holding a bearer token.
    pub bearer_token_file: PathBuf,
    /// For `https://`: Loki's CA (else the system's roots).
    pub ca_file: PathBuf,
    /// One request's time limit.
    pub timeout: Interval,
    /// How often new lines go out.
    pub every: Interval,
    /// Lines per request.
    pub max_lines_per_request: usize,
}

impl Default for LokiSection {
    fn default() -> Self {
        LokiSection {
            url: String::new(),
            headers: BTreeMap::new(),
            username: String::new(),
            password_file: PathBuf::new(),
            bearer_token_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            timeout: Interval::secs(10),
            every: Interval::secs(5),
            max_lines_per_request: 1000,
        }
    }
}

impl LokiSection {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    fn identity(&self) -> Identity<'_> {
        Identity {
            section: "loki",
            headers: &self.headers,
            username: &self.username,
            password_file: &self.password_file,
            bearer_token_file: &self.bearer_token_file,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        Target::parse(&self.url).context("loki.url")?;
        self.identity().validate()?;
        if !(1..=100_000).contains(&self.max_lines_per_request) {
            bail!("loki.max_lines_per_request: must be from 1 to 100000");
        }
        if self.timeout.0 < Duration::from_secs(1) {
            bail!("loki.timeout: must be at least 1s");
        }
        if self.every.0 < Duration::from_secs(1) {
            bail!("loki.every: must be at least 1s");
        }
        Ok(())
    }
}

/// What forwarding came to, for the hub's `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LokiCounts {
    /// Lines Loki took.
    pub sent: u64,
    /// Lines Loki refused for good.
    pub refused: u64,
    /// Lines pushed out of the hub's quota before they could be sent.
    pub missed: u64,
    /// Requests that failed for now (connection, timeout, 429, 5xx).
    pub errors: u64,
}

/// The push request's body: one stream per distinct label set, lines oldest first, times in
/// nanoseconds as strings, as Loki's JSON push format has them.
pub fn push_body(device: &str, lines: &[LogLine]) -> String {
    let mut streams: BTreeMap<Vec<(&str, &str)>, Vec<&LogLine>> = BTreeMap::new();
    for line in lines {
        let labels: Vec<(&str, &str)> = [
            ("instance", device),
            ("job", "outpost"),
            ("priority", line.priority.as_str()),
            ("source", line.source.as_str()),
            ("unit", line.unit.as_str()),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect();
        streams.entry(labels).or_default().push(line);
    }
    let streams: Vec<serde_json::Value> = streams
        .into_iter()
        .map(|(labels, lines)| {
            let labels: serde_json::Map<String, serde_json::Value> = labels
                .into_iter()
                .map(|(name, value)| (name.to_string(), value.into()))
                .collect();
            let values: Vec<serde_json::Value> = lines
                .into_iter()
                .map(|line| {
                    let nanos = i128::from(line.at_ms) * 1_000_000;
                    serde_json::json!([nanos.to_string(), line.line])
                })
                .collect();
            serde_json::json!({ "stream": labels, "values": values })
        })
        .collect();
    serde_json::json!({ "streams": streams }).to_string()
}

/// How Loki answered one push.
#[derive(Debug, PartialEq, Eq)]
enum Pushed {
    Taken,
    /// For good: the lines are gone past, counted.
    Refused(String),
    /// For now: the lines wait for the next round.
    Failed(String),
}

fn judge(status: u16, body: &[u8]) -> Pushed {
    let text = || {
        let mut text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        if text.is_empty() {
            let _ = write!(text, "status {status}");
        }
        text
    };
    match status {
        200..=299 => Pushed::Taken,
        429 | 500..=599 => Pushed::Failed(format!("{status}: {}", text())),
        _ => Pushed::Refused(format!("{status}: {}", text())),
    }
}

/// The forwarder: one kept-alive connection, and the counts.
pub struct LokiForwarder {
    connection: http_client::KeptAlive,
    headers: Vec<(String, String)>,
    config: LokiSection,
    pub counts: LokiCounts,
}

/// The largest answer read from Loki (its errors are short).
const MAX_ANSWER: usize = 64 << 10;

impl LokiForwarder {
    pub fn new(config: &LokiSection) -> Result<Self> {
        let target = Target::parse(&config.url).context("loki.url")?;
        let tls = Arc::new(
            crate::tls::client_config(&config.ca_file, &PathBuf::new(), &PathBuf::new())
                .context("loki.ca_file")?,
        );
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        headers.extend(config.identity().headers()?);
        Ok(LokiForwarder {
            connection: http_client::KeptAlive::new(target, tls),
            headers,
            config: config.clone(),
            counts: LokiCounts::default(),
        })
    }

    /// One round over `devices`: each one's lines after the last that Loki took, in requests
    /// of up to `max_lines_per_request`, until none is left or Loki fails for now.
    pub async fn round(&mut self, store: &Arc<Store>, devices: &[String]) {
        for device in devices {
            loop {
                match self.device_once(store, device).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(error) => {
                        self.counts.errors += 1;
                        // The log layer limits a repeating failure to ten lines a minute.
                        tracing::warn!("forwarding log lines to Loki: {error}; trying again");
                        return;
                    }
                }
            }
        }
    }

    /// Sends the next request's worth of one device's lines; whether there may be more.
    async fn device_once(&mut self, store: &Arc<Store>, device: &str) -> Result<bool, String> {
        let limit = self.config.max_lines_per_request;
        let read_store = store.clone();
        let owned = device.to_string();
        #[allow(clippy::disallowed_methods)] // on the blocking pool
        let read = tokio::task::spawn_blocking(move || next_lines(&read_store, &owned, limit))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let (cursor, lines) = read;
        let Some(last) = lines.last() else {
            return Ok(false);
        };
        let after = last.seq + 1;
        // Without a cursor yet (forwarding just turned on), the lines the hub no longer holds
        // were never meant for Loki.
        if let Some(next) = cursor {
            self.counts.missed += lines[0].seq.saturating_sub(next);
        }
        let body = hyper::body::Bytes::from(push_body(device, &lines));
        let request = http_client::Request {
            method: "POST",
            headers: &self.headers,
            body,
        };
        let answer = self
            .connection
            .send(request, self.config.timeout.0, MAX_ANSWER)
            .await;
        let pushed = match answer {
            Ok((status, body)) => judge(status, &body),
            Err(error) => Pushed::Failed(format!("{error:#}")),
        };
        match pushed {
            Pushed::Failed(why) => return Err(why),
            Pushed::Taken => self.counts.sent += lines.len() as u64,
            Pushed::Refused(why) => {
                self.counts.refused += lines.len() as u64;
                tracing::warn!(
                    device,
                    "Loki refused {} log lines ({why}); they stay on the hub's device page",
                    lines.len()
                );
            }
        }
        let mut write = WriteBatch::default();
        write.put(&RegistryKey::LokiSent(device), after.to_le_bytes().to_vec());
        let store = store.clone();
        store.write_async(write).await.map_err(|e| e.to_string())?;
        Ok(lines.len() == limit)
    }
}

/// The number of the first line of `device` not yet sent (none before the first push), and
/// up to `limit` lines from it on.
fn next_lines(
    store: &Store,
    device: &str,
    limit: usize,
) -> Result<(Option<u64>, Vec<LogLine>), outpost_storage::Error> {
    let cursor = store
        .get(&RegistryKey::LokiSent(device))?
        .and_then(|bytes| Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)));
    let entries = store.range_first(
        &IngestKey::Line {
            device,
            seq: cursor.unwrap_or(0),
        },
        &IngestKey::Line {
            device,
            seq: u64::MAX,
        },
        limit,
    )?;
    let lines = entries
        .into_iter()
        .filter_map(|(_, value)| serde_json::from_slice::<LogLine>(&value).ok())
        .collect();
    Ok((cursor, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, unit: &str, text: &str) -> LogLine {
        LogLine {
            seq,
            at_ms: 1_796_000_000_000 + seq as i64,
            source: "journal".into(),
            unit: unit.into(),
            priority: "err".into(),
            patterns: vec![],
            line: text.into(),
            cut: false,
        }
    }

    #[test]
    fn lines_go_as_one_stream_per_label_set_in_nanoseconds() {
        let body: serde_json::Value = serde_json::from_str(&push_body(
            "jetson-7",
            &[
                line(1, "camera.service", "frame \"dropped\"\n"),
                line(2, "", "no unit"),
                line(3, "camera.service", "again"),
            ],
        ))
        .unwrap();
        let streams = body["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 2);
        let camera = streams
            .iter()
            .find(|s| s["stream"]["unit"] == "camera.service")
            .unwrap();
        assert_eq!(camera["stream"]["instance"], "jetson-7");
        assert_eq!(camera["stream"]["priority"], "err");
        assert_eq!(
            camera["values"][0],
            serde_json::json!(["1796000000001000000", "frame \"dropped\"\n"])
        );
        assert_eq!(camera["values"][1][1], "again");
        let bare = streams
            .iter()
            .find(|s| s["stream"]["unit"].is_null())
            .unwrap();
        assert_eq!(bare["values"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn only_429_and_5xx_are_tried_again() {
        assert_eq!(judge(204, b""), Pushed::Taken);
        assert!(matches!(judge(429, b"slow down"), Pushed::Failed(_)));
        assert!(matches!(judge(503, b""), Pushed::Failed(_)));
        assert!(
            matches!(judge(400, b"entry too far behind"), Pushed::Refused(why) if why.contains("too far"))
        );
    }

    #[test]
    fn the_section_is_checked_at_load() {
        let ok = LokiSection {
            url: "http://loki:3100/loki/api/v1/push".into(),
            ..LokiSection::default()
        };
        assert!(ok.validate().is_ok());
        let bad = LokiSection {
            headers: [("bad header".to_string(), "x".to_string())].into(),
            ..ok.clone()
        };
        assert!(format!("{:#}", bad.validate().unwrap_err()).contains("loki.headers"));
        let bad = LokiSection {
            max_lines_per_request: 0,
            ..ok
        };
        assert!(format!("{:#}", bad.validate().unwrap_err()).contains("max_lines_per_request"));
    }
}
