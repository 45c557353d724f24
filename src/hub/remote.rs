//! Remote storage: the fleet's samples written to an engine that takes Prometheus remote_write
//! 1.0 (protobuf and snappy), such as VictoriaMetrics, Mimir, Thanos Receive, Cortex or
//! Prometheus' receiver, instead of the hub's own store, which then keeps only its bookkeeping.
//!
//! A batch is acknowledged only after the engine answered 2xx for its samples. A 5xx, a 429 or
//! a connection error is retried with backoff for `retry_for`; after that the batch is left
//! unacknowledged and its device sends it again. Samples the engine refuses for good (another
//! 4xx: out of order, too old) are isolated by splitting the request, kept in a dead-letter
//! table of the hub's store in the same write as the batch's bookkeeping, counted per device,
//! and sent again every `resend_every` or by `outpost hub resend-refused`. When that table is
//! full, batches with refused samples are not acknowledged: the devices keep them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outpost_storage::{Rollup, SeriesId, SeriesKey, StateKey, StateTable, Store, Tier, WriteBatch};
use serde::{Deserialize, Serialize};
use tokio_rustls::rustls;

use crate::config_values::{ByteSize, Interval};
use crate::http_client::{self, Target};

/// The hub's `[remote_write]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteSection {
    /// The engine's remote_write URL; empty keeps the samples in the hub's own store.
    pub url: String,
    /// The root of the engine's Prometheus query API (`/api/v1/query` is under it), which
    /// then answers the hub's `/api/v1` reads and its dashboard's; empty: the hub's own store
    /// answers them.
    pub query_url: String,
    /// Extra request headers: a tenant (`X-Scope-OrgID` for Mimir and Cortex, `THANOS-TENANT`
    /// for Thanos Receive).
    pub headers: BTreeMap<String, String>,
    /// HTTP basic auth: the user, and a file holding the password.
    pub username: String,
    pub password_file: PathBuf,
    /// A file holding a bearer token.
    pub bearer_token_file: PathBuf,
    /// For `https://`: the engine's CA (else the system's roots).
    pub ca_file: PathBuf,
    /// One request's time limit.
    pub timeout: Interval,
    /// How long 5xx, 429 and connection errors are retried before the batch is left to its
    /// device to send again.
    pub retry_for: Interval,
    /// Samples per request.
    pub max_samples_per_request: usize,
    /// Room for refused samples in the hub's store.
    pub dead_letter_budget: ByteSize,
    /// How often the hub sends refused samples again by itself.
    pub resend_every: Interval,
}

impl Default for RemoteWriteSection {
    fn default() -> Self {
        RemoteWriteSection {
            url: String::new(),
            query_url: String::new(),
            headers: BTreeMap::new(),
            username: String::new(),
            password_file: PathBuf::new(),
            bearer_token_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            timeout: Interval::secs(30),
            retry_for: Interval::secs(60),
            max_samples_per_request: 10_000,
            dead_letter_budget: ByteSize(64 << 20),
            resend_every: Interval::secs(3600),
        }
    }
}

impl RemoteWriteSection {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    fn identity(&self) -> Identity<'_> {
        Identity {
            section: "remote_write",
            headers: &self.headers,
            username: &self.username,
            password_file: &self.password_file,
            bearer_token_file: &self.bearer_token_file,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !self.query_url.is_empty() {
            Target::parse(&self.query_url).context("remote_write.query_url")?;
        }
        if !self.enabled() {
            return Ok(());
        }
        Target::parse(&self.url).context("remote_write.url")?;
        self.identity().validate()?;
        if !(1..=1_000_000).contains(&self.max_samples_per_request) {
            bail!("remote_write.max_samples_per_request: must be from 1 to 1000000");
        }
        if self.timeout.0 < Duration::from_secs(1) {
            bail!("remote_write.timeout: must be at least 1s");
        }
        if self.dead_letter_budget.0 < 1 << 20 {
            bail!("remote_write.dead_letter_budget: must be at least 1MiB");
        }
        if self.resend_every.0 < Duration::from_secs(10) {
            bail!("remote_write.resend_every: must be at least 10s");
        }
        Ok(())
    }
}

/// The tenant and credentials every request to the engine carries, writes and reads alike.
/// Who the hub is to a service it writes to (the engine, Loki): extra headers such as a
/// tenant, and HTTP basic auth or a bearer token, read from files.
pub(super) struct Identity<'a> {
    /// The config section, for messages.
    pub section: &'static str,
    pub headers: &'a BTreeMap<String, String>,
    pub username: &'a str,
    pub password_file: &'a std::path::Path,
    pub bearer_token_file: &'a std::path::Path,
}

impl Identity<'_> {
    /// Checks what can be checked at load: header names and values, one kind of auth.
    pub fn validate(&self) -> Result<()> {
        let section = self.section;
        for (name, value) in self.headers {
            let valid = hyper::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && hyper::header::HeaderValue::from_str(value).is_ok();
            if !valid {
                bail!("{section}.headers: {name:?} is not a valid HTTP header");
            }
        }
        if !self.username.is_empty() && !self.bearer_token_file.as_os_str().is_empty() {
            bail!("{section}: username and bearer_token_file exclude each other");
        }
        Ok(())
    }

    /// The headers, with the secrets read from their files.
    pub fn headers(&self) -> Result<Vec<(String, String)>> {
        let section = self.section;
        let mut headers: Vec<(String, String)> = self.headers.clone().into_iter().collect();
        if !self.username.is_empty() {
            let password = crate::sysinfo_ids::read_secret(
                self.password_file,
                &format!("{section} password ({section}.password_file)"),
            )?;
            use base64::Engine as _;
            let pair = format!("{}:{}", self.username, password.trim_end());
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            headers.push(("authorization".into(), format!("Basic {encoded}")));
        } else if !self.bearer_token_file.as_os_str().is_empty() {
            let token = crate::sysinfo_ids::read_secret(
                self.bearer_token_file,
                &format!("{section} token ({section}.bearer_token_file)"),
            )?;
            headers.push(("authorization".into(), format!("Bearer {}", token.trim())));
        }
        Ok(headers)
    }
}

/// The engine's Prometheus query API, answering the hub's `/api/v1` reads.
pub struct RemoteQuery {
    root: Target,
    tls: Arc<rustls::ClientConfig>,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

/// The largest answer relayed from the engine (held whole in memory while relayed): about
/// 11,000 points of 200 series, which is more than a Grafana panel draws.
const MAX_ANSWER: usize = 64 << 20;

impl RemoteQuery {
    pub fn from_config(config: &RemoteWriteSection) -> Result<Option<RemoteQuery>> {
        if config.query_url.is_empty() {
            return Ok(None);
        }
        let mut root = Target::parse(&config.query_url).context("remote_write.query_url")?;
        root.path = root.path.trim_end_matches('/').to_string();
        let tls = Arc::new(
            crate::tls::client_config(&config.ca_file, &PathBuf::new(), &PathBuf::new())
                .context("remote_write.ca_file")?,
        );
        Ok(Some(RemoteQuery {
            root,
            tls,
            headers: config.identity().headers()?,
            // A query may take as long as the hub would let its own run.
            timeout: config.timeout.0.max(Duration::from_secs(120)),
        }))
    }
}

impl outpost_web::prometheus::QueryEngine for RemoteQuery {
    fn forward(
        &self,
        path_and_query: &str,
        form: Option<hyper::body::Bytes>,
    ) -> outpost_web::prometheus::Forwarded {
        let mut target = self.root.clone();
        target.path = format!("{}{path_and_query}", self.root.path);
        let mut headers = self.headers.clone();
        let method = if form.is_some() {
            headers.push((
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
            "POST"
        } else {
            "GET"
        };
        let (tls, timeout) = (self.tls.clone(), self.timeout);
        Box::pin(async move {
            let request = http_client::Request {
                method,
                headers: &headers,
                body: form.unwrap_or_default(),
            };
            http_client::send(&target, request, tls, timeout, MAX_ANSWER)
                .await
                .map(|response| (response.status, response.body))
                .map_err(|e| format!("{e:#}"))
        })
    }
}

use outpost::prompb::{KeyedSeries, Sample, WriteRequest};

/// How a rollup bucket reaches the engine: one series per figure, named
/// `<name>:<figure>_<tier>` (`node_load1:max_1h`), as Prometheus names recorded aggregates, at
/// the bucket's start. docs/scale.md lists them.
pub fn rollup_series(
    key: &Arc<outpost_storage::SeriesKey>,
    tier: Tier,
    bucket: i64,
    rollup: &Rollup,
) -> Vec<KeyedSeries> {
    let width = match tier {
        Tier::Hour => "1h",
        _ => "1m",
    };
    [
        ("min", rollup.min),
        ("max", rollup.max),
        ("sum", rollup.sum),
        ("count", rollup.count as f64),
        ("last", rollup.last),
    ]
    .into_iter()
    .map(|(figure, value)| KeyedSeries {
        key: key.clone(),
        name: Some(format!("{}:{figure}_{width}", key.name()).into()),
        samples: vec![Sample {
            value,
            timestamp: bucket,
        }],
    })
    .collect()
}

/// What sending the dead letters again came to, in samples.
pub struct Resent {
    pub taken: u64,
    pub refused: u64,
    pub waiting: BTreeMap<String, u64>,
    /// Dead letters that cannot be read (a damaged store): kept, and named in the log.
    pub unreadable: u64,
}

/// The samples that dead letters hold, per device.
fn waiting_per_device(letters: &[(String, Vec<u8>)]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (_, value) in letters {
        if let Ok(letter) = postcard::from_bytes::<DeadLetter>(value) {
            *out.entry(letter.device).or_default() += letter.samples;
        }
    }
    out
}

/// A dead letter and its series, as stored.
fn read_letter(value: &[u8]) -> std::result::Result<(DeadLetter, Vec<KeyedSeries>), String> {
    let letter = postcard::from_bytes::<DeadLetter>(value).map_err(|e| e.to_string())?;
    let request = <WriteRequest as prost::Message>::decode(letter.request.as_slice())
        .map_err(|e| e.to_string())?;
    let series = request
        .timeseries
        .into_iter()
        .map(KeyedSeries::from_time_series)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((letter, series))
}

/// What one request came to.
#[derive(Debug)]
enum Answer {
    Accepted,
    /// A 4xx other than 429: sending it again changes nothing until the engine changes.
    Refused(String),
}

/// A refused part of a request: the samples, and the engine's words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub device: String,
    pub reason: String,
    pub refused_ms: i64,
    pub samples: u64,
    /// The request as protobuf (not compressed).
    pub request: Vec<u8>,
}

/// The dead-letter table's keys, in `DeviceRegistry` beside the registry's.
#[derive(Debug, Clone, Copy)]
pub enum DeadLetterKey {
    Entry(u64),
    All,
}

impl fmt::Display for DeadLetterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterKey::Entry(n) => write!(f, "refused/{n:020}"),
            DeadLetterKey::All => f.write_str("refused/"),
        }
    }
}

impl StateKey for DeadLetterKey {
    const TABLE: StateTable = StateTable::DeviceRegistry;
    const OWNED: &'static [&'static str] = &["refused/"];
}

/// Refused parts smaller than this are not split further: a backlog refused whole (days
/// offline, an engine without an out-of-order window) costs a request per this many samples,
/// not one per sample.
const SMALLEST_SPLIT: usize = 64;

/// The connection to the engine, and what the hub knows of its dead letters.
pub struct RemoteWriter {
    /// One connection to the engine, kept open between requests.
    connection: tokio::sync::Mutex<http_client::KeptAlive>,
    headers: Vec<(String, String)>,
    config: RemoteWriteSection,
    runtime: tokio::runtime::Handle,
    /// The next dead letter's number, and the bytes the table holds.
    next_letter: u64,
    letter_bytes: u64,
    /// The last group's buffers, for the next.
    spare: Grouped,
}

/// What became of a group of batches sent to the engine.
pub struct Delivered {
    /// The group's writes (bookkeeping and dead letters) to write and sync before any ack.
    pub write: WriteBatch,
    /// Samples refused for good and kept as dead letters, per device.
    pub refused: BTreeMap<String, u64>,
    /// Devices whose refused samples did not fit in the dead-letter table: none of their
    /// batches of the group may be acknowledged (nor their bookkeeping written); the rest of the
    /// fleet's are.
    pub held_back: BTreeSet<String>,
}

impl RemoteWriter {
    /// The writer, and the samples waiting in the dead-letter table per device (read once).
    pub fn new(
        config: &RemoteWriteSection,
        store: &Store,
        runtime: tokio::runtime::Handle,
    ) -> Result<(Self, BTreeMap<String, u64>)> {
        let target = Target::parse(&config.url).context("remote_write.url")?;
        let tls = Arc::new(
            crate::tls::client_config(&config.ca_file, &PathBuf::new(), &PathBuf::new())
                .context("remote_write.ca_file")?,
        );
        let mut headers = vec![
            ("content-type".into(), "application/x-protobuf".into()),
            ("content-encoding".into(), "snappy".into()),
            (
                "x-prometheus-remote-write-version".into(),
                "0.1.0".to_string(),
            ),
        ];
        headers.extend(config.identity().headers()?);
        let letters =
            store.state_list(StateTable::DeviceRegistry, &DeadLetterKey::All.to_string())?;
        let next_letter = letters
            .last()
            .and_then(|(key, _)| key.rsplit('/').next()?.parse::<u64>().ok())
            .map_or(0, |n| n + 1);
        let letter_bytes = letters.iter().map(|(_, v)| v.len() as u64).sum();
        let writer = RemoteWriter {
            connection: tokio::sync::Mutex::new(http_client::KeptAlive::new(target, tls)),
            headers,
            config: config.clone(),
            runtime,
            next_letter,
            letter_bytes,
            spare: Grouped::default(),
        };
        Ok((writer, waiting_per_device(&letters)))
    }

    /// Sends the points of a group of batches (taken out of each device's writes) to the
    /// engine, and keeps the parts it refuses for good as dead letters. An error when the
    /// engine could not be reached within `retry_for`: then nothing of the group may be
    /// written or acknowledged.
    pub fn deliver_group(
        &mut self,
        store: &Store,
        mut per_device: BTreeMap<String, WriteBatch>,
        now_ms: i64,
    ) -> std::result::Result<Delivered, String> {
        let (mut samples, mut rollups) = (Vec::new(), Vec::new());
        for write in per_device.values_mut() {
            let points = write.take_points();
            samples.push(points.samples);
            rollups.extend(points.rollups);
        }
        let mut grouped = std::mem::take(&mut self.spare);
        grouped.fill(&samples);
        drop(samples);
        let mut group = GroupEncoder::new(store, grouped, rollups);
        let refused = self.send_group(store, &mut group);
        self.spare = group.grouped;
        self.spare.clear();
        let refused = refused?;
        // Per device: its letters, their bytes, their samples.
        let mut letters: BTreeMap<String, (Vec<Vec<u8>>, u64, u64)> = BTreeMap::new();
        let mut held_back = BTreeSet::new();
        let mut letter_bytes = self.letter_bytes;
        for (series, reason) in refused {
            let samples: u64 = series.iter().map(|s| s.samples.len() as u64).sum();
            // A refused part is one series (halving splits any request of several), and
            // `instance` is the device the hub set.
            let device = series
                .first()
                .map(|s| s.key.label("instance").to_string())
                .unwrap_or_default();
            if held_back.contains(&device) {
                continue;
            }
            let letter = DeadLetter {
                device: device.clone(),
                reason,
                refused_ms: now_ms,
                samples,
                request: prost::Message::encode_to_vec(&WriteRequest {
                    timeseries: series.iter().map(KeyedSeries::to_time_series).collect(),
                }),
            };
            let bytes = postcard::to_allocvec(&letter).map_err(|e| e.to_string())?;
            if letter_bytes + bytes.len() as u64 > self.config.dead_letter_budget.0 {
                // This device keeps its batches until there is room; the others go on.
                tracing::error!(
                    device,
                    "the engine refused samples ({}) and the dead-letter table is full \
                     (remote_write.dead_letter_budget): the device's batches are not \
                     acknowledged, it keeps them",
                    letter.reason
                );
                if let Some((_, bytes, _)) = letters.remove(&device) {
                    letter_bytes -= bytes;
                }
                held_back.insert(device);
                continue;
            }
            letter_bytes += bytes.len() as u64;
            let entry = letters.entry(device).or_default();
            entry.1 += bytes.len() as u64;
            entry.2 += samples;
            entry.0.push(bytes);
        }
        let mut write = WriteBatch::default();
        for (device, writes) in per_device {
            if !held_back.contains(&device) {
                write.extend(writes);
            }
        }
        let mut refused = BTreeMap::new();
        for (device, (bytes, _, samples)) in letters {
            for letter in bytes {
                write.put(&DeadLetterKey::Entry(self.next_letter), letter);
                self.next_letter += 1;
            }
            refused.insert(device, samples);
        }
        self.letter_bytes = letter_bytes;
        Ok(Delivered {
            write,
            refused,
            held_back,
        })
    }

    /// Sends every dead letter again; those the engine takes now are deleted. Returns (samples
    /// taken, samples still refused, and those per device, letters unreadable); an error when
    /// the engine cannot be reached. A letter that cannot be read is kept and passed over: it
    /// must not stop the others from being sent.
    #[allow(clippy::disallowed_methods)] // on the ingest thread or the command's: off the async loop
    pub fn resend_refused(&mut self, store: &Store) -> std::result::Result<Resent, String> {
        let letters = store
            .state_list(StateTable::DeviceRegistry, &DeadLetterKey::All.to_string())
            .map_err(|e| e.to_string())?;
        let (mut taken, mut kept, mut unreadable) = (0, Vec::new(), 0);
        for (key, value) in letters {
            let (letter, series) = match read_letter(&value) {
                Ok(read) => read,
                Err(error) => {
                    tracing::error!("dead letter {key} cannot be read, kept as it is: {error}");
                    unreadable += 1;
                    continue;
                }
            };
            let refused = self.send_group(store, &mut GroupEncoder::keyed(series))?;
            if refused.is_empty() {
                let mut write = WriteBatch::default();
                write.delete_state(StateTable::DeviceRegistry, key);
                store.write(write).map_err(|e| e.to_string())?;
                self.letter_bytes = self.letter_bytes.saturating_sub(value.len() as u64);
                taken += letter.samples;
            } else {
                kept.push((key, value));
            }
        }
        store.sync().map_err(|e| e.to_string())?;
        let waiting = waiting_per_device(&kept);
        Ok(Resent {
            taken,
            refused: waiting.values().sum(),
            waiting,
            unreadable,
        })
    }

    /// Sends a group in requests of at most `max_samples_per_request`; returns the parts
    /// refused for good, each with the engine's reason.
    fn send_group(
        &self,
        store: &Store,
        group: &mut GroupEncoder,
    ) -> std::result::Result<Vec<(Vec<KeyedSeries>, String)>, String> {
        let mut refused = Vec::new();
        while let Some(request) = group.next_request(store, self.config.max_samples_per_request) {
            refused.extend(self.runtime.block_on(self.send_encoded(request))?);
        }
        Ok(refused)
    }

    /// One encoded request. A refused one is halved by series, and a refused lone series is
    /// read back and halved by its samples (see [`halve`]); returns the parts refused for good.
    async fn send_encoded(
        &self,
        encoded: &Encoded,
    ) -> std::result::Result<Vec<(Vec<KeyedSeries>, String)>, String> {
        let mut refused = Vec::new();
        // Nothing to send when every key of the request was gone from the catalogue.
        let mut pending: Vec<std::ops::Range<usize>> = Vec::new();
        if !encoded.entries.is_empty() {
            pending.push(0..encoded.entries.len());
        }
        while let Some(entries) = pending.pop() {
            let body = snap::raw::Encoder::new()
                .compress_vec(encoded.bytes(entries.clone()))
                .map_err(|e| format!("snappy: {e}"))?;
            let Answer::Refused(reason) = self.post_body(body).await? else {
                continue;
            };
            if entries.len() > 1 {
                let middle = entries.start + entries.len() / 2;
                pending.push(middle..entries.end);
                pending.push(entries.start..middle);
                continue;
            }
            let series = encoded.series(entries.start)?;
            match halve(vec![series]) {
                Ok((first, second)) => {
                    self.send_requests(vec![first, second], &mut refused)
                        .await?
                }
                Err(small) => refused.push((small, reason)),
            }
        }
        Ok(refused)
    }

    /// Sends these requests, halving each refused one until the parts the engine refuses
    /// are found; those go to `refused`.
    async fn send_requests(
        &self,
        requests: Vec<Vec<KeyedSeries>>,
        refused: &mut Vec<(Vec<KeyedSeries>, String)>,
    ) -> std::result::Result<(), String> {
        let mut pending = requests;
        pending.reverse();
        while let Some(request) = pending.pop() {
            let body =
                outpost::prompb::encode_keyed(&request).map_err(|e| format!("snappy: {e}"))?;
            let Answer::Refused(reason) = self.post_body(body).await? else {
                continue;
            };
            // Engines refuse a whole request for one bad sample (Prometheus rolls it back):
            // halves find the samples it refuses and let the rest through.
            match halve(request) {
                Ok((first, second)) => {
                    pending.push(second);
                    pending.push(first);
                }
                Err(small) => refused.push((small, reason)),
            }
        }
        Ok(())
    }

    /// One request's body (protobuf, snappy), retried with backoff through 5xx, 429 and
    /// connection errors for `retry_for`.
    async fn post_body(&self, body: Vec<u8>) -> std::result::Result<Answer, String> {
        let body = hyper::body::Bytes::from(body);
        let started = Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            let request = http_client::Request {
                method: "POST",
                headers: &self.headers,
                body: body.clone(),
            };
            let sent = self
                .connection
                .lock()
                .await
                .send(request, self.config.timeout.0, 64 << 10)
                .await;
            let failure = match sent {
                Ok((status, _)) if (200..300).contains(&status) => return Ok(Answer::Accepted),
                Ok((status, body)) if status != 429 && (400..500).contains(&status) => {
                    let text = String::from_utf8_lossy(&body);
                    return Ok(Answer::Refused(format!(
                        "{status}: {}",
                        text.trim().chars().take(500).collect::<String>()
                    )));
                }
                Ok((status, body)) => format!(
                    "{} answered {status}: {}",
                    self.config.url,
                    String::from_utf8_lossy(&body).trim()
                ),
                Err(error) => format!("{}: {error:#}", self.config.url),
            };
            if started.elapsed() + backoff > self.config.retry_for.0 {
                return Err(failure);
            }
            tracing::debug!("remote storage, retrying in {backoff:?}: {failure}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

/// A request's series encoded for remote_write: `WriteRequest.timeseries` fields one after the
/// other. Their keys are borrowed under the catalogue's lock, not held by `Arc`: a count
/// raised and dropped per key was two more writes to memory the encoding does not need.
#[derive(Debug, Default)]
struct Encoded {
    wire: Vec<u8>,
    /// Where each entry (a series, or a part of a long one) ends in `wire`, and its samples.
    entries: Vec<(usize, usize)>,
}

impl Encoded {
    /// The bytes of these entries, which follow one another in `wire`.
    fn bytes(&self, entries: std::ops::Range<usize>) -> &[u8] {
        let start = match entries.start {
            0 => 0,
            n => self.entries[n - 1].0,
        };
        let end = match entries.end {
            0 => 0,
            n => self.entries[n - 1].0,
        };
        &self.wire[start..end]
    }

    /// An entry read back as a series: the slow path, for a refused one.
    fn series(&self, entry: usize) -> std::result::Result<KeyedSeries, String> {
        let request = <WriteRequest as prost::Message>::decode(self.bytes(entry..entry + 1))
            .map_err(|e| format!("reading back an encoded series: {e}"))?;
        let series = request
            .timeseries
            .into_iter()
            .next()
            .ok_or("reading back an encoded series: none")?;
        KeyedSeries::from_time_series(series)
    }
}

/// A group's points as remote_write requests, encoded one request at a time: each hub
/// series' samples in time order, then series already keyed (each rollup bucket as its
/// figures' series, or dead letters read back); a series longer than a request is cut across
/// requests.
struct GroupEncoder {
    grouped: Grouped,
    keyed: Vec<KeyedSeries>,
    /// The next series to encode (grouped, then keyed) and how far into its samples.
    next: usize,
    offset: usize,
    /// The request being sent, its buffer kept for the next.
    encoded: Encoded,
}

impl GroupEncoder {
    fn new(
        store: &Store,
        grouped: Grouped,
        rollups: Vec<(SeriesId, Tier, i64, Rollup)>,
    ) -> GroupEncoder {
        let mut figures = Vec::new();
        for (series, tier, bucket, rollup) in rollups {
            if let Some(key) = store.shared_series_key(series) {
                figures.extend(rollup_series(&key, tier, bucket, &rollup));
            }
        }
        GroupEncoder {
            grouped,
            ..GroupEncoder::keyed(figures)
        }
    }

    /// Series that carry their keys, sent as they are.
    fn keyed(series: Vec<KeyedSeries>) -> GroupEncoder {
        GroupEncoder {
            grouped: Grouped::default(),
            keyed: series,
            next: 0,
            offset: 0,
            encoded: Encoded::default(),
        }
    }

    /// Series `index`'s samples: grouped series first, then keyed ones.
    fn samples(&self, index: usize) -> Option<&[Sample]> {
        match self.grouped.get(index) {
            Some((_, points)) => Some(points),
            None => Some(&self.keyed.get(index - self.grouped.len())?.samples),
        }
    }

    /// The parts (series, range of its samples) of the next request of at most `max`
    /// samples, from the counts alone.
    fn plan(&mut self, max: usize) -> Vec<(usize, std::ops::Range<usize>)> {
        let mut parts = Vec::new();
        let mut room = max;
        while room > 0 {
            let Some(samples) = self.samples(self.next) else {
                break;
            };
            let end = samples.len().min(self.offset + room);
            parts.push((self.next, self.offset..end));
            room -= end - self.offset;
            if end == samples.len() {
                (self.next, self.offset) = (self.next + 1, 0);
            } else {
                self.offset = end;
            }
        }
        parts
    }

    /// The next request of at most `max` samples; `None` once all are encoded. The catalogue
    /// is read for one request at a time, never across the engine's answer.
    fn next_request(&mut self, store: &Store, max: usize) -> Option<&Encoded> {
        let plan = self.plan(max);
        if plan.is_empty() {
            return None;
        }
        let keys = store.series_keys();
        let request_keys: Vec<Option<&SeriesKey>> = plan
            .iter()
            .map(|(index, _)| match self.grouped.get(*index) {
                Some((series, _)) => keys.get(series),
                None => Some(&*self.keyed[index - self.grouped.len()].key),
            })
            .collect();
        warm(&request_keys);
        let encoded = &mut self.encoded;
        encoded.wire.clear();
        encoded.entries.clear();
        for ((index, range), key) in plan.into_iter().zip(request_keys) {
            let Some(key) = key else {
                continue;
            };
            let (name, samples) = match self.grouped.get(index) {
                Some((_, points)) => (key.name(), points),
                None => {
                    let series = &self.keyed[index - self.grouped.len()];
                    (series.name(), &series.samples[..])
                }
            };
            let part = &samples[range];
            if !part.is_empty() {
                outpost::prompb::put_time_series(&mut encoded.wire, key, name, part);
                encoded.entries.push((encoded.wire.len(), part.len()));
            }
        }
        Some(&*encoded)
    }
}

/// Reads each key before any is encoded: first the keys themselves, then the first and the
/// last byte of their text. A fleet's catalogue is far larger than the caches, and a key is a
/// chain of loads (the key, then its text and where its labels end); one key after the other
/// in the encoding, each load waited for the memory, where in these loops, whose loads do not
/// depend on one another, many are under way at once.
fn warm(keys: &[Option<&SeriesKey>]) {
    let mut touched = 0usize;
    for key in keys.iter().flatten() {
        touched ^= key.label_count();
    }
    for key in keys.iter().flatten() {
        let first = key.name().as_bytes().first().copied().unwrap_or(0);
        let last = key
            .labels()
            .next_back()
            .and_then(|(_, value)| value.as_bytes().last().copied())
            .unwrap_or(0);
        touched ^= usize::from(first ^ last);
    }
    std::hint::black_box(touched);
}

/// A sample as a write holds it: series, time, value.
type Point = (SeriesId, i64, f64);

/// The points of several writes per hub series, in time order; of two writes of one
/// timestamp the later wins, as in the store. Filled again for every group, keeping its
/// buffers: a group's points are megabytes, and new ones for every group were page faults for
/// a twentieth of the hub's CPU.
#[derive(Default)]
struct Grouped {
    /// Each series' samples after the one before's.
    points: Vec<Sample>,
    series: Vec<(SeriesId, std::ops::Range<usize>)>,
    scratch: GroupScratch,
}

/// What [`Grouped::fill`] works with, kept with its room.
#[derive(Default)]
struct GroupScratch {
    /// Per series, its chain in `chains`.
    slots: HashMap<u32, usize, foldhash::fast::RandomState>,
    chains: Vec<Chain>,
    /// Each run: (write, start, end) in the writes, and the next run of its series.
    runs: Vec<((usize, usize, usize), usize)>,
}

/// One series' runs, as a chain through [`GroupScratch::runs`].
struct Chain {
    series: SeriesId,
    first: usize,
    last: usize,
    samples: usize,
}

/// Samples a [`Grouped`] keeps room for between groups (a typical group of 256 batches
/// holds about 270,000); what a larger group (a backlog) took is given back.
const GROUPED_KEEPS: usize = 1 << 19;

impl Grouped {
    #[cfg(test)]
    fn new(writes: &[Vec<Point>]) -> Grouped {
        let mut grouped = Grouped::default();
        grouped.fill(writes);
        grouped
    }

    /// Groups these writes, replacing what it held.
    fn fill(&mut self, writes: &[Vec<Point>]) {
        // One buffer for all series, not one per series: at 1,000 devices a group holds
        // 100,000 series, and growing a vector for each was a twentieth of the hub's CPU. The
        // buffer is filled series by series, following each series' runs in write order.
        const LAST: usize = usize::MAX;
        let GroupScratch {
            slots,
            chains,
            runs,
        } = &mut self.scratch;
        slots.clear();
        chains.clear();
        runs.clear();
        for (write, part) in writes.iter().enumerate() {
            let mut start = 0;
            // A batch writes each series' samples together: one look-up per run, not per
            // sample.
            for run in part.chunk_by(|a, b| a.0 == b.0) {
                let index = runs.len();
                runs.push(((write, start, start + run.len()), LAST));
                start += run.len();
                match slots.entry(run[0].0 .0) {
                    std::collections::hash_map::Entry::Occupied(slot) => {
                        let chain = &mut chains[*slot.get()];
                        runs[chain.last].1 = index;
                        chain.last = index;
                        chain.samples += run.len();
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(chains.len());
                        chains.push(Chain {
                            series: run[0].0,
                            first: index,
                            last: index,
                            samples: run.len(),
                        });
                    }
                }
            }
        }
        self.points.clear();
        self.series.clear();
        self.points
            .reserve(chains.iter().map(|chain| chain.samples).sum());
        self.series.reserve(chains.len());
        for chain in chains.iter() {
            let start = self.points.len();
            let mut at = chain.first;
            while at != LAST {
                let ((write, from, to), next) = runs[at];
                self.points.extend(
                    writes[write][from..to]
                        .iter()
                        .map(|&(_, timestamp, value)| Sample { value, timestamp }),
                );
                at = next;
            }
            let kept = in_time_order(&mut self.points[start..]);
            self.points.truncate(start + kept);
            self.series.push((chain.series, start..self.points.len()));
        }
    }

    /// Empties it, keeping room for a typical group.
    fn clear(&mut self) {
        self.points.clear();
        self.series.clear();
        self.points.shrink_to(GROUPED_KEEPS);
        self.series.shrink_to(GROUPED_KEEPS / 8);
        let scratch = &mut self.scratch;
        scratch.slots.clear();
        scratch.slots.shrink_to(GROUPED_KEEPS / 8);
        scratch.chains.clear();
        scratch.chains.shrink_to(GROUPED_KEEPS / 8);
        scratch.runs.clear();
        scratch.runs.shrink_to(GROUPED_KEEPS / 8);
    }

    fn len(&self) -> usize {
        self.series.len()
    }

    fn get(&self, index: usize) -> Option<(SeriesId, &[Sample])> {
        let (series, range) = self.series.get(index)?;
        Some((*series, &self.points[range.clone()]))
    }
}

/// Sorts one series' samples by time, the later of two of one time replacing the earlier, and
/// says how many are left at the front.
fn in_time_order(points: &mut [Sample]) -> usize {
    if points.is_sorted_by(|a, b| a.timestamp < b.timestamp) {
        return points.len();
    }
    // Stable: of two writes of one timestamp, the later stays behind the earlier...
    points.sort_by_key(|s| s.timestamp);
    let mut kept = 0usize;
    for at in 0..points.len() {
        match kept.checked_sub(1) {
            // ...and replaces it, as in the store.
            Some(last) if points[last].timestamp == points[at].timestamp => {
                points[last].value = points[at].value;
            }
            _ => {
                points[kept] = points[at];
                kept += 1;
            }
        }
    }
    kept
}

/// A refused request in two halves (by series, or a lone series by its samples); the request
/// itself when it is too small to be worth splitting.
fn halve(
    mut request: Vec<KeyedSeries>,
) -> std::result::Result<(Vec<KeyedSeries>, Vec<KeyedSeries>), Vec<KeyedSeries>> {
    if request.len() > 1 {
        let second = request.split_off(request.len() / 2);
        return Ok((request, second));
    }
    let Some(only) = request.first_mut() else {
        return Err(request);
    };
    if only.samples.len() <= SMALLEST_SPLIT {
        return Err(request);
    }
    let later = only.samples.split_off(only.samples.len() / 2);
    let second = vec![KeyedSeries {
        samples: later,
        ..only.clone_labels()
    }];
    Ok((request, second))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost::prompb::{labels_of, TimeSeries};

    fn series(name: &str, timestamps: std::ops::Range<i64>) -> KeyedSeries {
        KeyedSeries {
            key: Arc::new(outpost_storage::SeriesKey::parse(name).unwrap()),
            name: None,
            samples: timestamps
                .map(|timestamp| Sample {
                    value: timestamp as f64,
                    timestamp,
                })
                .collect(),
        }
    }

    fn count(requests: &[Vec<KeyedSeries>]) -> usize {
        requests.iter().flatten().map(|s| s.samples.len()).sum()
    }

    fn store_in(dir: &tempfile::TempDir) -> Store {
        Store::open(dir.path().join("s.redb"), Default::default()).unwrap()
    }

    fn id(store: &Store, key: &str) -> SeriesId {
        store
            .series_id(&outpost_storage::SeriesKey::parse(key).unwrap())
            .unwrap()
    }

    /// Every request of the group, read back as the engine reads it.
    fn sent(store: &Store, mut group: GroupEncoder, max: usize) -> Vec<Vec<KeyedSeries>> {
        let mut requests = Vec::new();
        while let Some(encoded) = group.next_request(store, max) {
            let all = encoded.bytes(0..encoded.entries.len());
            assert_eq!(all.len(), encoded.wire.len());
            let request = <WriteRequest as prost::Message>::decode(all).unwrap();
            let series: Vec<KeyedSeries> = request
                .timeseries
                .into_iter()
                .map(|s| KeyedSeries::from_time_series(s).unwrap())
                .collect();
            // Each entry reads back alone too, as a refused one is.
            for (entry, one) in series.iter().enumerate() {
                assert_eq!(&encoded.series(entry).unwrap(), one);
            }
            requests.push(series);
        }
        requests
    }

    #[test]
    fn requests_are_cut_at_the_sample_limit_without_losing_or_reordering_any() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir);
        let all = vec![series("a", 0..25), series("b", 0..3), series("c", 100..140)];
        let requests = sent(&store, GroupEncoder::keyed(all.clone()), 10);
        assert_eq!(count(&requests), 68);
        assert!(requests
            .iter()
            .all(|r| r.iter().map(|s| s.samples.len()).sum::<usize>() <= 10));
        assert_eq!(requests.len(), 7);
        // Put back together, each series is what it was.
        for original in &all {
            let joined: Vec<Sample> = requests
                .iter()
                .flatten()
                .filter(|s| s.key == original.key)
                .flat_map(|s| s.samples.clone())
                .collect();
            assert_eq!(joined, original.samples);
        }
    }

    #[test]
    fn halving_stops_at_small_single_series() {
        let (a, b) = halve(vec![
            series("a", 0..5),
            series("b", 0..5),
            series("c", 0..5),
        ])
        .unwrap();
        assert_eq!((a.len(), b.len()), (1, 2));
        let (a, b) = halve(vec![series("a", 0..200)]).unwrap();
        assert_eq!((a[0].samples.len(), b[0].samples.len()), (100, 100));
        assert_eq!(b[0].samples[0].timestamp, 100);
        assert!(halve(vec![series("a", 0..64)]).is_err());
        assert!(halve(Vec::new()).is_err());
    }

    #[test]
    fn labels_are_sorted_with_the_name_among_them() {
        let key = outpost_storage::SeriesKey::parse(
            r#"DCGM_FI_DEV_GPU_UTIL{UUID="GPU-1",gpu="0",instance="d"}"#,
        )
        .unwrap();
        let labels = labels_of(&key, key.name());
        let names: Vec<&str> = labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["UUID", "__name__", "gpu", "instance"]);
        let rollup = Rollup {
            min: 1.0,
            max: 3.0,
            sum: 4.0,
            count: 2,
            last: 3.0,
        };
        let figures = rollup_series(&Arc::new(key), Tier::Hour, 3_600_000, &rollup);
        let named: Vec<(String, f64)> = figures
            .iter()
            .map(|s| (s.name().to_string(), s.samples[0].value))
            .collect();
        assert!(named.contains(&("DCGM_FI_DEV_GPU_UTIL:max_1h".into(), 3.0)));
        assert!(named.contains(&("DCGM_FI_DEV_GPU_UTIL:count_1h".into(), 2.0)));
        assert!(figures.iter().all(|s| s.samples[0].timestamp == 3_600_000));
    }

    #[test]
    fn the_request_is_prometheus_wire_format() {
        // Field numbers and types as prompb's: a decoder that knows only the .proto's layout
        // (prost over the same tags) and snappy's block format give back what was sent.
        let key = |text: &str| Arc::new(outpost_storage::SeriesKey::parse(text).unwrap());
        let gpu = key(r#"DCGM_FI_DEV_GPU_UTIL{UUID="GPU-1",gpu="0",instance="d"}"#);
        let long_value = format!(r#"m{{a="{}"}}"#, "v".repeat(300));
        let values = [0.0, -0.5, 1e300, f64::INFINITY, 3.0];
        let timestamps = [0, 1, -1, 127, 128, 1_700_000_000_000, i64::MAX, i64::MIN];
        let sent = vec![
            series("up", 1_700_000_000_000..1_700_000_000_003),
            KeyedSeries {
                key: gpu.clone(),
                name: Some("DCGM_FI_DEV_GPU_UTIL:max_1h".into()),
                samples: vec![Sample {
                    value: 2.0,
                    timestamp: 3_600_000,
                }],
            },
            KeyedSeries {
                key: key(&long_value),
                name: None,
                samples: timestamps
                    .iter()
                    .zip(values.iter().cycle())
                    .map(|(&timestamp, &value)| Sample { value, timestamp })
                    .collect(),
            },
            KeyedSeries {
                key: gpu,
                name: None,
                samples: (0..200)
                    .map(|t| Sample {
                        value: t as f64,
                        timestamp: t,
                    })
                    .collect(),
            },
        ];
        let request = WriteRequest {
            timeseries: sent.iter().map(KeyedSeries::to_time_series).collect(),
        };
        let bytes = prost::Message::encode_to_vec(&request);
        // What the writer sends, encoded from the keys by hand, is prost's encoding.
        let wire = outpost::prompb::encode_keyed(&sent).unwrap();
        let wire = snap::raw::Decoder::new().decompress_vec(&wire).unwrap();
        assert_eq!(wire, bytes);
        // timeseries (1, length-delimited) > labels (1, length-delimited) > name (1) "__name__".
        assert_eq!(bytes[0], 0x0a);
        assert_eq!(&bytes[4..6], &[0x0a, 0x08]);
        assert_eq!(&bytes[6..14], b"__name__");
        let back = <WriteRequest as prost::Message>::decode(wire.as_slice()).unwrap();
        assert_eq!(back, request);
        // And back into keyed series, as a dead letter is sent again.
        let keyed: Vec<KeyedSeries> = back
            .timeseries
            .into_iter()
            .map(|s| KeyedSeries::from_time_series(s).unwrap())
            .collect();
        let names: Vec<&str> = keyed.iter().map(KeyedSeries::name).collect();
        assert_eq!(
            names,
            [
                "up",
                "DCGM_FI_DEV_GPU_UTIL:max_1h",
                "m",
                "DCGM_FI_DEV_GPU_UTIL"
            ]
        );
        assert_eq!(keyed[1].key.label("UUID"), "GPU-1");
        let again = outpost::prompb::encode_keyed(&keyed).unwrap();
        assert_eq!(
            snap::raw::Decoder::new().decompress_vec(&again).unwrap(),
            bytes
        );
        assert!(KeyedSeries::from_time_series(TimeSeries::default()).is_err());
    }

    #[test]
    fn points_are_grouped_per_series_in_time_order_the_later_write_of_a_time_winning() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir);
        let (a, b) = (
            id(&store, r#"a{instance="x"}"#),
            id(&store, r#"b{instance="y"}"#),
        );
        // Two devices' writes interleaved, out of time order, one time written twice.
        let (c, d) = (
            id(&store, r#"c{instance="y"}"#),
            id(&store, r#"d{instance="x"}"#),
        );
        let device_x = vec![
            (a, 30, 1.0),
            (a, 10, 2.0),
            (d, 10, 9.0),
            (a, 30, 4.0),
            (a, 20, 5.0),
            (d, 20, 8.0),
        ];
        let device_y = vec![(b, 20, 1.0), (b, 10, 3.0), (c, 10, 7.0)];
        let group = GroupEncoder::new(&store, Grouped::new(&[device_x, device_y]), Vec::new());
        // As the engine reads the group: one request of every series.
        let requests = sent(&store, group, 100);
        assert_eq!(requests.len(), 1);
        let grouped = &requests[0];
        let points = |id: SeriesId| -> Vec<(i64, f64)> {
            let key = store.series_key(id).unwrap();
            let series: Vec<_> = grouped.iter().filter(|s| *s.key == key).collect();
            assert_eq!(series.len(), 1, "{key} once");
            series[0]
                .samples
                .iter()
                .map(|s| (s.timestamp, s.value))
                .collect()
        };
        assert_eq!(grouped.len(), 4);
        assert_eq!(points(a), [(10, 2.0), (20, 5.0), (30, 4.0)]);
        assert_eq!(points(b), [(10, 3.0), (20, 1.0)]);
        assert_eq!(points(c), [(10, 7.0)]);
        assert_eq!(points(d), [(10, 9.0), (20, 8.0)]);
    }

    proptest::proptest! {
        /// Against a model: each series once, its times in order, each time's last write.
        #[test]
        fn grouped_points_are_each_series_last_write_of_each_time(
            earlier in proptest::collection::vec((0u32..5, -3i64..9, -100i32..100), 0..30),
            writes in proptest::collection::vec(
                proptest::collection::vec((0u32..5, -3i64..9, -100i32..100), 0..30),
                0..5,
            )
        ) {
            let writes: Vec<Vec<(SeriesId, i64, f64)>> = writes
                .iter()
                .map(|part| part.iter().map(|&(s, t, v)| (SeriesId(s), t, v.into())).collect())
                .collect();
            let mut model: BTreeMap<u32, BTreeMap<i64, f64>> = BTreeMap::new();
            for &(series, timestamp, value) in writes.iter().flatten() {
                model.entry(series.0).or_default().insert(timestamp, value);
            }
            // Filled where an earlier group was: nothing of that one may be left in it.
            let earlier: Vec<(SeriesId, i64, f64)> =
                earlier.iter().map(|&(s, t, v)| (SeriesId(s), t, f64::from(v) + 0.5)).collect();
            let mut grouped = Grouped::new(&[earlier]);
            grouped.clear();
            grouped.fill(&writes);
            let mut seen = BTreeMap::new();
            for index in 0..grouped.len() {
                let (series, points) = grouped.get(index).unwrap();
                let points: BTreeMap<i64, f64> =
                    points.iter().map(|s| (s.timestamp, s.value)).collect();
                proptest::prop_assert_eq!(points.len(), grouped.get(index).unwrap().1.len());
                proptest::prop_assert!(grouped.get(index).unwrap().1.is_sorted_by_key(|s| s.timestamp));
                proptest::prop_assert!(seen.insert(series.0, points).is_none(), "{:?} twice", series);
            }
            proptest::prop_assert_eq!(seen, model);
        }
    }

    #[test]
    fn a_group_of_series_and_rollups_is_cut_at_the_sample_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir);
        let (a, b, c) = (
            id(&store, "a"),
            id(&store, r#"b{instance="x"}"#),
            id(&store, "c"),
        );
        let run = |series: SeriesId, times: std::ops::Range<i64>| {
            times
                .map(move |t| (series, t, t as f64))
                .collect::<Vec<_>>()
        };
        let writes = vec![[run(a, 0..25), run(b, 0..3), run(c, 100..140)].concat()];
        let rollup = Rollup {
            min: 1.0,
            max: 2.0,
            sum: 3.0,
            count: 2,
            last: 2.0,
        };
        let rollups = vec![(c, Tier::Minute, 60_000, rollup)];
        let requests = sent(
            &store,
            GroupEncoder::new(&store, Grouped::new(&writes), rollups),
            10,
        );
        assert!(requests
            .iter()
            .all(|r| (1..=10).contains(&r.iter().map(|s| s.samples.len()).sum::<usize>())));
        let series: Vec<&KeyedSeries> = requests.iter().flatten().collect();
        // Put back together, each series is what it was, in time order.
        for (key, times) in [("a", 0..25), (r#"b{instance="x"}"#, 0..3), ("c", 100..140)] {
            let key = outpost_storage::SeriesKey::parse(key).unwrap();
            let joined: Vec<i64> = series
                .iter()
                .filter(|s| *s.key == key)
                .flat_map(|s| s.samples.iter().map(|s| s.timestamp))
                .collect();
            assert_eq!(joined, times.collect::<Vec<_>>(), "{key}");
        }
        // Packed: 68 raw samples and the rollup's figures, ten to a request, the figures last.
        let key = Arc::new(store.series_key(c).unwrap());
        let figures = rollup_series(&key, Tier::Minute, 60_000, &rollup);
        assert_eq!(requests.len(), (68 + figures.len()).div_ceil(10));
        let tail = &series[series.len() - figures.len()..];
        for (sent, figure) in tail.iter().zip(&figures) {
            assert_eq!(sent.name(), figure.name());
            assert_eq!(sent.samples, figure.samples);
        }
    }

    /// An engine that takes every request (204), counting the requests.
    fn accepting_engine() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut reader = BufReader::new(stream.unwrap());
                loop {
                    let mut length = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(value) = lower.strip_prefix("content-length:") {
                            length = value.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    if line != "\r\n" {
                        break;
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let answer = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
                    reader.get_mut().write_all(answer).unwrap();
                }
            }
        });
        (port, requests)
    }

    /// A damaged dead letter (unreadable as a letter, or as the request it holds) is kept and
    /// counted, and the letters after it are still sent: one bad entry hides nothing else.
    #[test]
    #[allow(clippy::disallowed_methods)] // no async loop here to keep from waiting
    fn an_unreadable_dead_letter_is_kept_and_does_not_stop_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("hub.redb"), Default::default()).unwrap();
        let good = DeadLetter {
            device: "dev-a".into(),
            reason: "400: out of order".into(),
            refused_ms: 1,
            samples: 3,
            request: prost::Message::encode_to_vec(&WriteRequest {
                timeseries: vec![series(r#"m{instance="dev-a"}"#, 10..13).to_time_series()],
            }),
        };
        let bad_request = DeadLetter {
            request: vec![0xff; 7],
            ..good.clone()
        };
        let mut write = WriteBatch::default();
        write.put(
            &DeadLetterKey::Entry(0),
            postcard::to_allocvec(&bad_request).unwrap(),
        );
        write.put(&DeadLetterKey::Entry(1), b"\xff\xfe not a letter".to_vec());
        write.put(
            &DeadLetterKey::Entry(2),
            postcard::to_allocvec(&good).unwrap(),
        );
        store.write(write).unwrap();
        let (port, requests) = accepting_engine();
        let config = RemoteWriteSection {
            url: format!("http://127.0.0.1:{port}/api/v1/write"),
            retry_for: Interval::secs(5),
            ..Default::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (mut writer, _) = RemoteWriter::new(&config, &store, runtime.handle().clone()).unwrap();
        // As `outpost hub resend-refused`: the writer blocks on the runtime from a thread of
        // its own while this one drives the runtime's I/O.
        let store = Arc::new(store);
        let resending = store.clone();
        let resent = runtime
            .block_on(runtime.spawn_blocking(move || writer.resend_refused(&resending)))
            .unwrap()
            .unwrap();
        assert_eq!((resent.taken, resent.refused, resent.unreadable), (3, 0, 2));
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
        let left: Vec<String> = store
            .state_list(StateTable::DeviceRegistry, &DeadLetterKey::All.to_string())
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(
            left,
            [DeadLetterKey::Entry(0), DeadLetterKey::Entry(1)].map(|k| k.to_string())
        );
    }

    #[test]
    fn dead_letter_keys_sort_in_arrival_order() {
        assert_eq!(
            DeadLetterKey::Entry(7).to_string(),
            "refused/00000000000000000007"
        );
        assert!(DeadLetterKey::Entry(10).to_string() > DeadLetterKey::Entry(9).to_string());
    }
}
