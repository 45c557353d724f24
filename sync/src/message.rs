//! The binary messages: batches (device to hub), acks and commands (hub to device).
//!
//! ```text
//! frame  = "OP" kind:u8 version:u16le header-length:u32le header body mac
//! kind   = 'B' batch | 'A' ack | 'C' command
//! header = postcard of BatchHeader, Ack or Command
//! body   = batches only: one zstd frame of postcard(BatchBody); empty otherwise
//! mac    = HMAC-SHA256(device key, direction label || everything before the mac), 32 bytes
//! ```
//!
//! Every message is authenticated with the device's own key, which only that device and the hub
//! hold, so a device can neither write another's data nor forge the hub's acks or commands,
//! whatever the broker allows. The direction label keeps a hub message from being replayed as
//! a device one and the other way round. Decoders check sizes before allocating, verify the mac
//! before decompressing, and cap the decompressed size: any input gives a value or an [`Error`].

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{Error, Result};

/// The protocol version this build speaks. Version 2 added the device's clock steps to the
/// batch header; version 3 the device's kept log lines to the batch body.
pub const PROTOCOL_VERSION: u16 = 3;
/// Versions this build accepts: the current one and the two before it, so that a fleet can
/// upgrade gradually. The hub answers each device in the version it spoke.
pub const SUPPORTED_VERSIONS: &[u16] = &[1, 2, 3];

const MAGIC: &[u8; 2] = b"OP";
const MAC_LEN: usize = 32;
/// magic, kind, version, header length.
const PREFIX_LEN: usize = 2 + 1 + 2 + 4;
/// No header of any message comes near this; a larger claim is hostile.
const MAX_HEADER: usize = 16 << 10;

/// Who sent a message: part of what the mac covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    DeviceToHub,
    HubToDevice,
}

impl Direction {
    fn label(self) -> &'static [u8] {
        match self {
            Direction::DeviceToHub => b"outpost/v1 device-to-hub\0",
            Direction::HubToDevice => b"outpost/v1 hub-to-device\0",
        }
    }
}

/// A device's secret key, shared with the hub.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceKey(Vec<u8>);

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

impl DeviceKey {
    /// At least 16 bytes: the key is the device's whole identity on a broker without ACLs.
    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        if bytes.len() < 16 {
            return Err(Error::Malformed {
                what: "device key",
                reason: format!("{} bytes, at least 16 are needed", bytes.len()),
            });
        }
        Ok(DeviceKey(bytes))
    }

    /// The key as hex, for key files.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// A key from its hex form, surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Result<Self> {
        let text = text.trim();
        let bad = |reason: &str| Error::Malformed {
            what: "device key",
            reason: reason.to_string(),
        };
        if !text.len().is_multiple_of(2) {
            return Err(bad("odd number of hex digits"));
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<std::result::Result<Vec<u8>, _>>()
            .map_err(|_| bad("not hex"))?;
        DeviceKey::new(bytes)
    }

    fn mac(&self, direction: Direction, signed: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        mac.update(direction.label());
        mac.update(signed);
        mac.finalize().into_bytes().into()
    }

    fn verify(&self, direction: Direction, signed: &[u8], tag: &[u8]) -> Result<()> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        mac.update(direction.label());
        mac.update(signed);
        // Constant-time comparison.
        mac.verify_slice(tag).map_err(|_| Error::BadSignature)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sizes a receiver accepts. The defaults suit the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole MQTT payload. Agents build batches of at most 128 KiB by default.
    pub max_message_bytes: usize,
    /// A batch body after decompression: zstd bombs stop here, before any allocation past it.
    pub max_body_bytes: usize,
    /// Series definitions, live runs and chunks in one batch, each.
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1 << 20,
            max_body_bytes: 16 << 20,
            max_items: 100_000,
        }
    }
}

/// The part of a batch the hub reads before it knows the device's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    pub device: String,
    /// Made durable at each agent start: a sequence number lost in a crash is never reused
    /// within an epoch.
    pub epoch: u64,
    pub seq: u64,
    /// The kernel's boot id, to tell the hub when the device rebooted (its clock may have jumped).
    pub boot_id: String,
    /// The device's wall clock at send, ms since the epoch.
    pub sent_wall_ms: i64,
    /// The device's time since boot at send (CLOCK_BOOTTIME), ms: with `boot_id`, what the hub
    /// corrects a wrong wall clock from.
    pub sent_uptime_ms: u64,
    /// Write time of the oldest data the device has not had acknowledged: the sync lag.
    pub oldest_unacked_ms: Option<i64>,
    /// The body's size after decompression.
    pub body_bytes: u32,
    /// Steps of the device's wall clock that cover timestamps in this batch (version 2 on).
    pub clock_steps: Vec<ClockStep>,
}

/// The batch header of protocol version 1: the same, without clock steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BatchHeaderV1 {
    device: String,
    epoch: u64,
    seq: u64,
    boot_id: String,
    sent_wall_ms: i64,
    sent_uptime_ms: u64,
    oldest_unacked_ms: Option<i64>,
    body_bytes: u32,
}

impl From<BatchHeaderV1> for BatchHeader {
    fn from(v1: BatchHeaderV1) -> BatchHeader {
        BatchHeader {
            device: v1.device,
            epoch: v1.epoch,
            seq: v1.seq,
            boot_id: v1.boot_id,
            sent_wall_ms: v1.sent_wall_ms,
            sent_uptime_ms: v1.sent_uptime_ms,
            oldest_unacked_ms: v1.oldest_unacked_ms,
            body_bytes: v1.body_bytes,
            clock_steps: Vec::new(),
        }
    }
}

/// A jump of the device's wall clock seen by the device itself: within boot `boot_id`, the wall
/// clock minus the time since boot changed by `delta_ms` (NTP setting a clock that booted
/// wrong, say). Timestamps the device wrote from `from_ms` to `until_ms` by the clock before
/// the jump are `delta_ms` off: the hub adds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockStep {
    pub boot_id: String,
    pub from_ms: i64,
    pub until_ms: i64,
    pub delta_ms: i64,
}

impl ClockStep {
    pub fn covers(&self, ts: i64) -> bool {
        (self.from_ms..=self.until_ms).contains(&ts)
    }
}
/// A series the batch refers to by the device's number for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesDef<'a> {
    pub id: u32,
    /// The canonical key, `name{a="x",b="y"}`.
    pub key: &'a str,
}

/// A batch's series definitions. On the wire a sequence of (id, key) pairs, as a derived
/// `Vec` of structs with an owned key was; in memory one string for all the keys. A batch
/// that carries its definitions (`self_contained`) has a hundred of them, and a string each
/// was a twentieth of a hub's CPU in its allocator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesDefs {
    keys: String,
    /// Each definition's id and where its key ends in `keys`.
    defs: Vec<(u32, usize)>,
}

impl SeriesDefs {
    pub fn push(&mut self, def: SeriesDef<'_>) {
        self.keys.push_str(def.key);
        self.defs.push((def.id, self.keys.len()));
    }

    pub fn len(&self) -> usize {
        self.defs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.defs.clear();
    }

    pub fn get(&self, index: usize) -> Option<SeriesDef<'_>> {
        let &(id, end) = self.defs.get(index)?;
        let start = index.checked_sub(1).map_or(0, |before| self.defs[before].1);
        Some(SeriesDef {
            id,
            key: &self.keys[start..end],
        })
    }

    pub fn iter(&self) -> SeriesDefsIter<'_> {
        SeriesDefsIter {
            defs: self.defs.iter(),
            keys: &self.keys,
            start: 0,
        }
    }
}

pub struct SeriesDefsIter<'a> {
    defs: std::slice::Iter<'a, (u32, usize)>,
    keys: &'a str,
    start: usize,
}

impl<'a> Iterator for SeriesDefsIter<'a> {
    type Item = SeriesDef<'a>;

    fn next(&mut self) -> Option<SeriesDef<'a>> {
        let &(id, end) = self.defs.next()?;
        let key = &self.keys[self.start..end];
        self.start = end;
        Some(SeriesDef { id, key })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.defs.size_hint()
    }
}

impl ExactSizeIterator for SeriesDefsIter<'_> {}

impl<'a> IntoIterator for &'a SeriesDefs {
    type Item = SeriesDef<'a>;
    type IntoIter = SeriesDefsIter<'a>;

    fn into_iter(self) -> SeriesDefsIter<'a> {
        self.iter()
    }
}

impl<'a> FromIterator<SeriesDef<'a>> for SeriesDefs {
    fn from_iter<I: IntoIterator<Item = SeriesDef<'a>>>(defs: I) -> SeriesDefs {
        let mut all = SeriesDefs::default();
        for def in defs {
            all.push(def);
        }
        all
    }
}

impl Serialize for SeriesDefs {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter().map(|def| (def.id, def.key)))
    }
}

impl<'de> Deserialize<'de> for SeriesDefs {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<SeriesDefs, D::Error> {
        deserializer.deserialize_seq(SeriesDefsVisitor)
    }
}

struct SeriesDefsVisitor;

impl<'de> serde::de::Visitor<'de> for SeriesDefsVisitor {
    type Value = SeriesDefs;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a sequence of series definitions")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<SeriesDefs, A::Error> {
        let mut all = SeriesDefs::default();
        // The length is the sender's word: capped, so that a claim alone allocates little.
        all.defs.reserve(seq.size_hint().unwrap_or(0).min(1024));
        while seq.next_element_seed(DefInto(&mut all))?.is_some() {}
        Ok(all)
    }
}

/// One (id, key) pair, its key appended to the batch's string.
struct DefInto<'d>(&'d mut SeriesDefs);

impl<'de> serde::de::DeserializeSeed<'de> for DefInto<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_tuple(2, self)
    }
}

impl<'de> serde::de::Visitor<'de> for DefInto<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a series definition: an id and a key")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        use serde::de::Error as _;
        let id: u32 = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(0, &"an id and a key"))?;
        seq.next_element_seed(StrInto(&mut self.0.keys))?
            .ok_or_else(|| A::Error::invalid_length(1, &"an id and a key"))?;
        self.0.defs.push((id, self.0.keys.len()));
        Ok(())
    }
}

/// Text appended to a string as it is read, never held on its own.
struct StrInto<'s>(&'s mut String);

impl<'de> serde::de::DeserializeSeed<'de> for StrInto<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StrInto<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> std::result::Result<(), E> {
        self.0.push_str(text);
        Ok(())
    }
}

/// New samples of one series, in the store's raw chunk body encoding
/// ([`outpost_storage::codec::encode_samples`]): one run of a batch's [`LiveRuns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSamples<'a> {
    pub series: u32,
    pub samples: &'a [u8],
}

/// A batch's live runs. On the wire a sequence of (series, bytes) pairs, as a derived
/// `Vec<LiveSamples>` of owned bytes was; in memory one buffer for all of a batch's runs: a
/// hub decodes a hundred runs from each batch of a thousand devices, and a vector per run
/// was a twentieth of its CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveRuns {
    bytes: Vec<u8>,
    /// Each run's series and where its bytes end in `bytes`.
    runs: Vec<(u32, usize)>,
}

impl LiveRuns {
    pub fn push(&mut self, run: LiveSamples<'_>) {
        self.bytes.extend_from_slice(run.samples);
        self.runs.push((run.series, self.bytes.len()));
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<LiveSamples<'_>> {
        let &(series, end) = self.runs.get(index)?;
        let start = index.checked_sub(1).map_or(0, |before| self.runs[before].1);
        Some(LiveSamples {
            series,
            samples: &self.bytes[start..end],
        })
    }

    pub fn iter(&self) -> LiveRunsIter<'_> {
        LiveRunsIter {
            runs: self.runs.iter(),
            bytes: &self.bytes,
            start: 0,
        }
    }
}

pub struct LiveRunsIter<'a> {
    runs: std::slice::Iter<'a, (u32, usize)>,
    bytes: &'a [u8],
    start: usize,
}

impl<'a> Iterator for LiveRunsIter<'a> {
    type Item = LiveSamples<'a>;

    fn next(&mut self) -> Option<LiveSamples<'a>> {
        let &(series, end) = self.runs.next()?;
        let samples = &self.bytes[self.start..end];
        self.start = end;
        Some(LiveSamples { series, samples })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.runs.size_hint()
    }
}

impl ExactSizeIterator for LiveRunsIter<'_> {}

impl<'a> IntoIterator for &'a LiveRuns {
    type Item = LiveSamples<'a>;
    type IntoIter = LiveRunsIter<'a>;

    fn into_iter(self) -> LiveRunsIter<'a> {
        self.iter()
    }
}

impl<'a> FromIterator<LiveSamples<'a>> for LiveRuns {
    fn from_iter<I: IntoIterator<Item = LiveSamples<'a>>>(runs: I) -> LiveRuns {
        let mut all = LiveRuns::default();
        for run in runs {
            all.push(run);
        }
        all
    }
}

impl Serialize for LiveRuns {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.iter()
                .map(|run| (run.series, serde_bytes::Bytes::new(run.samples))),
        )
    }
}

impl<'de> Deserialize<'de> for LiveRuns {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<LiveRuns, D::Error> {
        deserializer.deserialize_seq(LiveRunsVisitor)
    }
}

struct LiveRunsVisitor;

impl<'de> serde::de::Visitor<'de> for LiveRunsVisitor {
    type Value = LiveRuns;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a sequence of live runs")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<LiveRuns, A::Error> {
        let mut all = LiveRuns::default();
        // The length is the sender's word: capped, so that a claim alone allocates little.
        all.runs.reserve(seq.size_hint().unwrap_or(0).min(1024));
        while seq.next_element_seed(RunInto(&mut all))?.is_some() {}
        Ok(all)
    }
}

/// One (series, bytes) pair, its bytes appended to the batch's buffer.
struct RunInto<'r>(&'r mut LiveRuns);

impl<'de> serde::de::DeserializeSeed<'de> for RunInto<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_tuple(2, self)
    }
}

impl<'de> serde::de::Visitor<'de> for RunInto<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a live run: a series and its samples' bytes")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        use serde::de::Error as _;
        let series: u32 = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(0, &"a series and its samples"))?;
        seq.next_element_seed(BytesInto(&mut self.0.bytes))?
            .ok_or_else(|| A::Error::invalid_length(1, &"a series and its samples"))?;
        self.0.runs.push((series, self.0.bytes.len()));
        Ok(())
    }
}

/// Bytes appended to a buffer as they are read, never held on their own.
struct BytesInto<'b>(&'b mut Vec<u8>);

impl<'de> serde::de::DeserializeSeed<'de> for BytesInto<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_bytes(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BytesInto<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> std::result::Result<(), E> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// A sealed chunk as the device's store holds it (framed, compressed, checksummed): backfill
/// ships these without re-encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChunk {
    pub series: u32,
    /// 0 raw, 1 one-minute rollups, 2 one-hour rollups.
    pub tier: u8,
    pub window_start: i64,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchBody {
    /// Definitions of the series the hub has not acknowledged yet.
    pub defs: SeriesDefs,
    pub live: LiveRuns,
    pub chunks: Vec<StoredChunk>,
    /// Log lines the device kept (version 3 on).
    pub lines: Vec<LogLine>,
}

/// The body of versions 1 and 2: no log lines.
#[derive(Serialize, Deserialize)]
struct BatchBodyV2 {
    defs: SeriesDefs,
    live: LiveRuns,
    chunks: Vec<StoredChunk>,
}

/// A log line the device kept (`[logs] keep_lines`): a pattern's hit or a serious journal
/// entry. The agent's store keeps it in this form (as JSON) and batches carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its number among the device's kept lines, in the order kept: the hub keeps a line once
    /// per number however often it comes.
    pub seq: u64,
    /// The journal entry's time, or when the agent read the file's line (the device's clock).
    pub at_ms: i64,
    /// The file's name (`[[logs.file]]`) or `journal`.
    pub source: String,
    /// The journal's unit (or syslog identifier) and priority by name; empty for a file.
    pub unit: String,
    pub priority: String,
    /// The patterns that matched it.
    pub patterns: Vec<String>,
    pub line: String,
    /// Cut to the agent's longest kept line.
    pub cut: bool,
}

#[cfg(test)]
impl LogLine {
    /// A pattern's hit in the file `app`, numbered `seq` and stamped `seq` ms: for tests.
    pub(crate) fn hit(seq: u64, text: &str) -> LogLine {
        LogLine {
            seq,
            at_ms: seq as i64,
            source: "app".into(),
            unit: String::new(),
            priority: String::new(),
            patterns: vec!["errors".into()],
            line: text.into(),
            cut: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub header: BatchHeader,
    pub body: BatchBody,
    /// The protocol version it came in, or goes out in: [`PROTOCOL_VERSION`], or the one
    /// before it for a hub that has not been upgraded yet (which then hears of no clock steps).
    pub version: u16,
}

/// What the hub says about a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckStatus {
    /// Stored durably (or already stored: `duplicate`); the device may forget it.
    Stored { samples: u64, duplicate: bool },
    /// The batch refers to series the hub has no definition of: resend with their definitions.
    UnknownSeries { ids: Vec<u32> },
    /// The device speaks a version the hub does not accept.
    UnsupportedVersion { supported: Vec<u16> },
    /// Refused for good (malformed content); the device logs it and moves on.
    Rejected { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub device: String,
    pub epoch: u64,
    pub seq: u64,
    pub status: AckStatus,
}

/// A label matcher of a silence, with the operators of the store's selectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matcher {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub created_by: String,
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Silence(Silence),
    /// Ends a silence before its end time.
    Expire {
        silence_id: String,
    },
}

/// A command from the hub. `id` grows per device: a device applies a command only when its id
/// is above the last one it applied, so a recorded command cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub device: String,
    pub id: u64,
    pub issued_ms: i64,
    /// A command still undelivered at this time is dropped by the device.
    pub expires_ms: i64,
    pub action: Action,
}

/// The frame's kind byte: a frame of one kind never decodes as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Batch = b'B' as isize,
    Ack = b'A' as isize,
    Command = b'C' as isize,
}

fn frame(
    kind: FrameKind,
    version: u16,
    header: &[u8],
    body: &[u8],
    key: &DeviceKey,
    direction: Direction,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + header.len() + body.len() + MAC_LEN);
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(body);
    let mac = key.mac(direction, &out);
    out.extend_from_slice(&mac);
    out
}

/// A frame split into its parts, not yet authenticated.
struct RawFrame<'a> {
    version: u16,
    header: &'a [u8],
    body: &'a [u8],
    signed: &'a [u8],
    mac: &'a [u8],
}

fn split<'a>(bytes: &'a [u8], kind: FrameKind, limits: &Limits) -> Result<RawFrame<'a>> {
    if bytes.len() > limits.max_message_bytes {
        return Err(Error::TooLarge {
            len: bytes.len(),
            limit: limits.max_message_bytes,
        });
    }
    if bytes.len() < PREFIX_LEN + MAC_LEN {
        return Err(Error::Truncated("shorter than the fixed fields"));
    }
    if &bytes[..2] != MAGIC || bytes[2] != kind as u8 {
        return Err(Error::NotOutpost);
    }
    let version = u16::from_le_bytes([bytes[3], bytes[4]]);
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: SUPPORTED_VERSIONS.to_vec(),
        });
    }
    let header_len = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
    if header_len > MAX_HEADER {
        return Err(Error::Malformed {
            what: "frame",
            reason: format!("header of {header_len} bytes"),
        });
    }
    let mac_at = bytes.len() - MAC_LEN;
    let header_end = PREFIX_LEN
        .checked_add(header_len)
        .filter(|end| *end <= mac_at)
        .ok_or(Error::Truncated("header runs past the end"))?;
    Ok(RawFrame {
        version,
        header: &bytes[PREFIX_LEN..header_end],
        body: &bytes[header_end..mac_at],
        signed: &bytes[..mac_at],
        mac: &bytes[mac_at..],
    })
}

/// One zstd frame into a buffer of exactly `capacity` bytes (an error past it). A
/// decompression context is a few hundred KiB to set up, which cost as much as decoding a
/// whole batch: each thread keeps one.
fn decompress(compressed: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(decompressor) => decompressor,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress(compressed, capacity)
    })
}

fn from_postcard<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Malformed {
        what,
        reason: e.to_string(),
    })
}

fn to_postcard<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard serializes every value of these types")
}

/// The protocol version a payload claims, if it has the fixed prefix at all: what the hub
/// answers an unsupported device with.
pub fn claimed_version(bytes: &[u8]) -> Option<u16> {
    (bytes.len() >= PREFIX_LEN && &bytes[..2] == MAGIC)
        .then(|| u16::from_le_bytes([bytes[3], bytes[4]]))
}

impl Batch {
    /// Encodes and signs a batch; `header.body_bytes` is set here.
    pub fn encode(&self, key: &DeviceKey, zstd_level: i32) -> Vec<u8> {
        let body = if self.version >= 3 {
            to_postcard(&self.body)
        } else {
            to_postcard(&BatchBodyV2 {
                defs: self.body.defs.clone(),
                live: self.body.live.clone(),
                chunks: self.body.chunks.clone(),
            })
        };
        let mut header = self.header.clone();
        header.body_bytes = u32::try_from(body.len()).unwrap_or(u32::MAX);
        // Live batches are a few KiB, where a high level costs little and saves bytes on the
        // link; backfill batches are mostly chunks that are compressed already.
        let level = if body.len() <= 32 << 10 {
            zstd_level.max(19)
        } else {
            zstd_level
        };
        let compressed = zstd::bulk::compress(&body, level).expect("zstd compresses any input");
        let header = if self.version == 1 {
            to_postcard(&BatchHeaderV1 {
                device: header.device,
                epoch: header.epoch,
                seq: header.seq,
                boot_id: header.boot_id,
                sent_wall_ms: header.sent_wall_ms,
                sent_uptime_ms: header.sent_uptime_ms,
                oldest_unacked_ms: header.oldest_unacked_ms,
                body_bytes: header.body_bytes,
            })
        } else {
            to_postcard(&header)
        };
        frame(
            FrameKind::Batch,
            self.version,
            &header,
            &compressed,
            key,
            Direction::DeviceToHub,
        )
    }

    /// The unauthenticated header, to find the sender's key. Trust nothing in it until
    /// [`Batch::decode`] has verified the mac.
    pub fn peek_header(bytes: &[u8], limits: &Limits) -> Result<BatchHeader> {
        let raw = split(bytes, FrameKind::Batch, limits)?;
        batch_header(&raw)
    }

    /// Verifies, decompresses and decodes a batch published on `topic_device`'s topic.
    pub fn decode(
        bytes: &[u8],
        topic_device: &str,
        key: &DeviceKey,
        limits: &Limits,
    ) -> Result<Batch> {
        let raw = split(bytes, FrameKind::Batch, limits)?;
        debug_assert!(SUPPORTED_VERSIONS.contains(&raw.version));
        key.verify(Direction::DeviceToHub, raw.signed, raw.mac)?;
        let header = batch_header(&raw)?;
        if header.device != topic_device {
            return Err(Error::DeviceMismatch {
                topic: topic_device.to_string(),
                payload: header.device,
            });
        }
        let declared = header.body_bytes as usize;
        if declared > limits.max_body_bytes {
            return Err(Error::BodyTooLarge {
                limit: limits.max_body_bytes,
            });
        }
        // The decompressor allocates exactly the capacity it is given and fails past it.
        let body = decompress(raw.body, declared).map_err(|e| Error::Malformed {
            what: "batch body",
            reason: format!("zstd: {e}"),
        })?;
        if body.len() != declared {
            return Err(Error::Malformed {
                what: "batch body",
                reason: format!("{} bytes where the header says {declared}", body.len()),
            });
        }
        let body: BatchBody = if raw.version >= 3 {
            from_postcard("batch body", &body)?
        } else {
            let old: BatchBodyV2 = from_postcard("batch body", &body)?;
            BatchBody {
                defs: old.defs,
                live: old.live,
                chunks: old.chunks,
                lines: Vec::new(),
            }
        };
        for (what, count) in [
            ("series definitions", body.defs.len()),
            ("live runs", body.live.len()),
            ("chunks", body.chunks.len()),
            ("log lines", body.lines.len()),
        ] {
            if count > limits.max_items {
                return Err(Error::OverLimit {
                    what,
                    count,
                    limit: limits.max_items,
                });
            }
        }
        Ok(Batch {
            header,
            body,
            version: raw.version,
        })
    }
}

fn batch_header(raw: &RawFrame<'_>) -> Result<BatchHeader> {
    if raw.version == 1 {
        Ok(from_postcard::<BatchHeaderV1>("batch header", raw.header)?.into())
    } else {
        from_postcard("batch header", raw.header)
    }
}

/// A message the hub sends one device: signed with that device's key, addressed to it by name,
/// its frame carrying the message in the header and no body.
pub trait HubToDevice: Serialize + serde::de::DeserializeOwned {
    const KIND: FrameKind;
    const WHAT: &'static str;

    /// The device the message is for.
    fn addressee(&self) -> &str;

    fn encode(&self, key: &DeviceKey) -> Vec<u8> {
        self.encode_as(key, PROTOCOL_VERSION)
    }

    /// In protocol `version`: the one the device last spoke.
    fn encode_as(&self, key: &DeviceKey, version: u16) -> Vec<u8> {
        to_device(Self::KIND, version, self, key)
    }

    /// Verified with the device's key, and addressed to `device`.
    fn decode(bytes: &[u8], device: &str, key: &DeviceKey) -> Result<Self> {
        from_hub(bytes, device, key)
    }
}

impl HubToDevice for Ack {
    const KIND: FrameKind = FrameKind::Ack;
    const WHAT: &'static str = "ack";

    fn addressee(&self) -> &str {
        &self.device
    }
}

impl HubToDevice for Command {
    const KIND: FrameKind = FrameKind::Command;
    const WHAT: &'static str = "command";

    fn addressee(&self) -> &str {
        &self.device
    }
}

/// A hub-to-device frame: the message in the header, no body.
fn to_device<T: Serialize>(kind: FrameKind, version: u16, message: &T, key: &DeviceKey) -> Vec<u8> {
    frame(
        kind,
        version,
        &to_postcard(message),
        &[],
        key,
        Direction::HubToDevice,
    )
}

/// Reads a hub-to-device frame, verified with the device's key, that is addressed to
/// `device` and has no body.
fn from_hub<T: HubToDevice>(bytes: &[u8], device: &str, key: &DeviceKey) -> Result<T> {
    let raw = split(bytes, T::KIND, &Limits::default())?;
    key.verify(Direction::HubToDevice, raw.signed, raw.mac)?;
    let message: T = from_postcard(T::WHAT, raw.header)?;
    let to = message.addressee();
    if to != device || !raw.body.is_empty() {
        return Err(Error::DeviceMismatch {
            topic: device.to_string(),
            payload: to.to_string(),
        });
    }
    Ok(message)
}

/// Signs a JSON object for the retained `status` and `meta` topics, which people read with
/// their own tools: the mac goes in as a last key, `"mac":"<hex>"`, over the object's text
/// without it, so that the text stays plain JSON.
pub fn sign_json(json: &str, key: &DeviceKey) -> String {
    let object = json.trim_end();
    let inner = object.strip_suffix('}').unwrap_or(object);
    let mac = hex(&key.mac(Direction::DeviceToHub, object.as_bytes()));
    let separator = if inner.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    format!("{inner}{separator}\"mac\":\"{mac}\"}}")
}

/// Checks what [`sign_json`] made and returns the object's text without the mac.
pub fn verify_json(payload: &str, key: &DeviceKey) -> Result<String> {
    const TAIL: usize = "\"mac\":\"\"}".len() + 2 * MAC_LEN;
    let start = payload.len().checked_sub(TAIL).ok_or(Error::BadSignature)?;
    let (head, tail) = (
        payload.get(..start).ok_or(Error::BadSignature)?,
        payload.get(start..).ok_or(Error::BadSignature)?,
    );
    let mac_hex = tail
        .strip_prefix("\"mac\":\"")
        .and_then(|t| t.strip_suffix("\"}"))
        .ok_or(Error::BadSignature)?;
    let object = format!("{}}}", head.strip_suffix(',').unwrap_or(head));
    let tag = (0..mac_hex.len())
        .step_by(2)
        .map(|i| {
            mac_hex
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or(Error::BadSignature)?;
    key.verify(Direction::DeviceToHub, object.as_bytes(), &tag)?;
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(byte: u8) -> DeviceKey {
        DeviceKey::new(vec![byte; 32]).unwrap()
    }

    fn header(device: &str) -> BatchHeader {
        BatchHeader {
            device: device.into(),
            epoch: 2,
            seq: 41,
            boot_id: "5f1c2b0e".into(),
            sent_wall_ms: 1_790_000_000_000,
            sent_uptime_ms: 12_345,
            oldest_unacked_ms: Some(1_789_999_990_000),
            body_bytes: 0,
            clock_steps: vec![ClockStep {
                boot_id: "5f1c2b0e".into(),
                from_ms: 1_600_000_000_000,
                until_ms: 1_600_000_100_000,
                delta_ms: 189_999_900_000,
            }],
        }
    }

    fn body_strategy() -> impl Strategy<Value = BatchBody> {
        let defs = prop::collection::vec((any::<u32>(), ".{0,40}"), 0..5).prop_map(|d| {
            d.iter()
                .map(|(id, key)| SeriesDef { id: *id, key })
                .collect()
        });
        let live = prop::collection::vec(
            (
                any::<u32>(),
                prop::collection::vec((any::<i64>(), any::<f64>()), 0..20),
            ),
            0..5,
        )
        .prop_map(|runs| {
            let encoded: Vec<(u32, Vec<u8>)> = runs
                .into_iter()
                .map(|(series, mut points)| {
                    points.sort_by_key(|p| p.0);
                    points.dedup_by_key(|p| p.0);
                    let (ts, vs): (Vec<i64>, Vec<f64>) = points.into_iter().unzip();
                    (series, outpost_storage::codec::encode_samples(&ts, &vs))
                })
                .collect();
            encoded
                .iter()
                .map(|(series, samples)| LiveSamples {
                    series: *series,
                    samples,
                })
                .collect::<LiveRuns>()
        });
        let chunks = prop::collection::vec(
            (
                any::<u32>(),
                0u8..3,
                any::<i64>(),
                prop::collection::vec(any::<u8>(), 0..64),
            ),
            0..4,
        )
        .prop_map(|c| {
            c.into_iter()
                .map(|(series, tier, window_start, bytes)| StoredChunk {
                    series,
                    tier,
                    window_start,
                    bytes,
                })
                .collect()
        });
        let lines = prop::collection::vec(
            (
                any::<u64>(),
                any::<i64>(),
                ".{0,20}",
                ".{0,60}",
                any::<bool>(),
            ),
            0..4,
        )
        .prop_map(|l| {
            l.into_iter()
                .map(|(seq, at_ms, source, line, cut)| LogLine {
                    seq,
                    at_ms,
                    source,
                    unit: "app.service".into(),
                    priority: "err".into(),
                    patterns: vec!["errors".into()],
                    line,
                    cut,
                })
                .collect()
        });
        (defs, live, chunks, lines).prop_map(|(defs, live, chunks, lines)| BatchBody {
            defs,
            live,
            chunks,
            lines,
        })
    }

    proptest! {
        #[test]
        fn batches_round_trip_and_only_with_the_right_key(body in body_strategy()) {
            let batch = Batch { header: header("dev-a"), body, version: PROTOCOL_VERSION };
            let payload = batch.encode(&key(1), 3);
            let decoded = Batch::decode(&payload, "dev-a", &key(1), &Limits::default()).unwrap();
            prop_assert_eq!(&decoded.body, &batch.body);
            prop_assert_eq!(decoded.header.seq, 41);
            prop_assert_eq!(Batch::peek_header(&payload, &Limits::default()).unwrap().device, "dev-a");
            prop_assert_eq!(
                Batch::decode(&payload, "dev-a", &key(2), &Limits::default()),
                Err(Error::BadSignature)
            );
            let mismatch = matches!(
                Batch::decode(&payload, "dev-b", &key(1), &Limits::default()),
                Err(Error::DeviceMismatch { .. })
            );
            prop_assert!(mismatch);
        }

        /// The wire form of live runs is that of the owned runs they replaced, both ways, and
        /// anything that is not one is an error.
        #[test]
        fn live_runs_are_the_wire_form_of_a_vector_of_owned_runs(
            runs in prop::collection::vec(
                (any::<u32>(), prop::collection::vec(any::<u8>(), 0..40)),
                0..20,
            ),
            cut in any::<prop::sample::Index>(),
        ) {
            #[derive(Debug, PartialEq, Serialize, Deserialize)]
            struct OwnedRun {
                series: u32,
                #[serde(with = "serde_bytes")]
                samples: Vec<u8>,
            }
            let owned: Vec<OwnedRun> = runs
                .iter()
                .map(|(series, samples)| OwnedRun { series: *series, samples: samples.clone() })
                .collect();
            let live: LiveRuns = runs
                .iter()
                .map(|(series, samples)| LiveSamples { series: *series, samples })
                .collect();
            let wire = to_postcard(&owned);
            prop_assert_eq!(to_postcard(&live), wire.clone());
            prop_assert_eq!(&from_postcard::<LiveRuns>("runs", &wire).unwrap(), &live);
            let read: Vec<(u32, &[u8])> = live.iter().map(|r| (r.series, r.samples)).collect();
            let expected: Vec<(u32, &[u8])> = runs.iter().map(|(s, b)| (*s, &b[..])).collect();
            prop_assert_eq!(read, expected);
            prop_assert_eq!(live.len(), runs.len());
            for (index, run) in live.iter().enumerate() {
                prop_assert_eq!(live.get(index), Some(run));
            }
            prop_assert_eq!(live.get(runs.len()), None);
            // Cut short anywhere, it is an error as the owned runs are.
            let short = &wire[..cut.index(wire.len())];
            prop_assert_eq!(
                from_postcard::<LiveRuns>("runs", short).is_ok(),
                from_postcard::<Vec<OwnedRun>>("runs", short).is_ok()
            );
        }

        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let limits = Limits::default();
            let _ = Batch::peek_header(&bytes, &limits);
            let _ = Batch::decode(&bytes, "dev-a", &key(1), &limits);
            let _ = Ack::decode(&bytes, "dev-a", &key(1));
            let _ = Command::decode(&bytes, "dev-a", &key(1));
            let _ = verify_json(&String::from_utf8_lossy(&bytes), &key(1));
            let _ = claimed_version(&bytes);
        }

        #[test]
        fn any_changed_byte_is_refused(index in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let batch = Batch { header: header("dev-a"), body: BatchBody::default(), version: PROTOCOL_VERSION };
            let mut payload = batch.encode(&key(1), 3);
            let at = index.index(payload.len());
            payload[at] ^= flip;
            prop_assert!(Batch::decode(&payload, "dev-a", &key(1), &Limits::default()).is_err());
        }
    }

    #[test]
    fn zstd_bombs_and_lying_headers_are_refused_before_allocating() {
        // A device with a valid key can sign anything: the caps must hold on signed input too.
        let zeros = vec![0u8; 64 << 20];
        let bomb = zstd::bulk::compress(&zeros, 19).unwrap();
        assert!(bomb.len() < 64 << 10, "a small payload");
        let signed = |header: &BatchHeader| {
            let header = to_postcard(header);
            frame(
                FrameKind::Batch,
                PROTOCOL_VERSION,
                &header,
                &bomb,
                &key(1),
                Direction::DeviceToHub,
            )
        };
        let mut header = header("dev-a");
        header.body_bytes = 1024;
        let lying = signed(&header);
        assert!(matches!(
            Batch::decode(&lying, "dev-a", &key(1), &Limits::default()),
            Err(Error::Malformed {
                what: "batch body",
                ..
            })
        ));
        header.body_bytes = 64 << 20;
        let honest = signed(&header);
        assert_eq!(
            Batch::decode(&honest, "dev-a", &key(1), &Limits::default()),
            Err(Error::BodyTooLarge { limit: 16 << 20 })
        );
        let limits = Limits {
            max_message_bytes: 100,
            ..Limits::default()
        };
        assert!(matches!(
            Batch::decode(&honest, "dev-a", &key(1), &limits),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn versions_outside_the_supported_ones_are_named() {
        let batch = Batch {
            header: header("dev-a"),
            body: BatchBody::default(),
            version: PROTOCOL_VERSION,
        };
        let mut payload = batch.encode(&key(1), 3);
        payload[3..5].copy_from_slice(&7u16.to_le_bytes());
        assert_eq!(claimed_version(&payload), Some(7));
        assert_eq!(
            Batch::decode(&payload, "dev-a", &key(1), &Limits::default()),
            Err(Error::UnsupportedVersion {
                found: 7,
                supported: vec![1, 2, 3]
            })
        );
    }

    /// Version 3 carries the kept log lines; a batch that goes out in version 2 (to a hub not
    /// yet upgraded) leaves them out, and a version 2 body decodes with none.
    #[test]
    fn log_lines_travel_from_version_3_on() {
        let line = LogLine {
            seq: 7,
            at_ms: 1_790_000_000_000,
            source: "journal".into(),
            unit: "app.service".into(),
            priority: "err".into(),
            patterns: vec!["errors".into()],
            line: "level=error module=db timeout".into(),
            cut: false,
        };
        let mut batch = Batch {
            header: header("dev-a"),
            body: BatchBody {
                lines: vec![line.clone()],
                ..BatchBody::default()
            },
            version: 3,
        };
        let decoded = Batch::decode(
            &batch.encode(&key(1), 3),
            "dev-a",
            &key(1),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(decoded.body.lines, [line]);
        batch.version = 2;
        let decoded = Batch::decode(
            &batch.encode(&key(1), 3),
            "dev-a",
            &key(1),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!((decoded.version, decoded.body.lines.len()), (2, 0));
    }

    /// A definition as batches carried it before the keys shared one string.
    #[derive(Serialize, Deserialize)]
    struct OwnedDef {
        id: u32,
        key: String,
    }

    proptest! {
        #[test]
        fn series_definitions_keep_the_wire_form_of_owned_ones(
            defs in prop::collection::vec((any::<u32>(), ".{0,40}"), 0..8),
        ) {
            let owned: Vec<OwnedDef> = defs
                .iter()
                .map(|(id, key)| OwnedDef { id: *id, key: key.clone() })
                .collect();
            let shared: SeriesDefs =
                defs.iter().map(|(id, key)| SeriesDef { id: *id, key }).collect();
            let wire = postcard::to_allocvec(&owned).unwrap();
            prop_assert_eq!(postcard::to_allocvec(&shared).unwrap(), wire.clone());
            let read: SeriesDefs = postcard::from_bytes(&wire).unwrap();
            prop_assert_eq!(&read, &shared);
            let pairs: Vec<(u32, &str)> = read.iter().map(|d| (d.id, d.key)).collect();
            let expected: Vec<(u32, &str)> = defs.iter().map(|(i, k)| (*i, k.as_str())).collect();
            prop_assert_eq!(pairs, expected);
            for (index, (id, key)) in defs.iter().enumerate() {
                prop_assert_eq!(read.get(index), Some(SeriesDef { id: *id, key }));
            }
            prop_assert_eq!(read.get(defs.len()), None);
            // Every cut of the bytes reads as the owned form reads it: the same definitions or
            // an error.
            for end in 0..wire.len() {
                let cut = &wire[..end];
                let as_owned = postcard::from_bytes::<Vec<OwnedDef>>(cut).ok().map(|defs| {
                    defs.into_iter().map(|d| (d.id, d.key)).collect::<Vec<_>>()
                });
                let as_shared = postcard::from_bytes::<SeriesDefs>(cut).ok().map(|defs| {
                    defs.iter().map(|d| (d.id, d.key.to_string())).collect::<Vec<_>>()
                });
                prop_assert_eq!(as_shared, as_owned, "cut at {}", end);
            }
        }

        #[test]
        fn series_definitions_refuse_a_key_that_is_not_utf8(id in any::<u32>(), bad in 0x80u8..=0xFF) {
            // One definition: count, id, a key of one byte that no UTF-8 text starts with.
            let mut wire = postcard::to_allocvec(&vec![OwnedDef { id, key: "k".into() }]).unwrap();
            *wire.last_mut().unwrap() = bad;
            prop_assert!(postcard::from_bytes::<SeriesDefs>(&wire).is_err());
        }
    }

    /// `tests/data/batch-v1.bin` was written by the last build that spoke only version 1.
    #[test]
    fn the_previous_version_still_decodes() {
        let v1 = include_bytes!("../tests/data/batch-v1.bin");
        assert_eq!(claimed_version(v1), Some(1));
        let batch = Batch::decode(v1, "dev-a", &key(1), &Limits::default()).unwrap();
        assert_eq!(batch.version, 1);
        assert_eq!(
            (batch.header.seq, batch.header.sent_uptime_ms),
            (41, 12_345)
        );
        assert!(batch.header.clock_steps.is_empty());
        assert_eq!(
            batch.body.defs.get(0).unwrap().key,
            "cpu_usage_percent{core=\"0\"}"
        );
        let (ts, values) =
            outpost_storage::codec::decode_samples(batch.body.live.get(0).unwrap().samples)
                .unwrap();
        assert_eq!(
            ts,
            [1_789_999_998_000, 1_789_999_999_000, 1_790_000_000_000]
        );
        assert_eq!(values, [12.5, 13.0, 99.25]);
        // Re-encoded as version 1 it is the same bytes: what an agent not yet upgraded sends.
        assert_eq!(batch.encode(&key(1), 3), v1);
        // The current version carries the clock steps; version 1 drops them.
        let mut current = batch.clone();
        current.version = PROTOCOL_VERSION;
        current.header.clock_steps = header("dev-a").clock_steps;
        let decoded = Batch::decode(
            &current.encode(&key(1), 3),
            "dev-a",
            &key(1),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(decoded.header.clock_steps, current.header.clock_steps);
        assert_eq!(decoded.version, PROTOCOL_VERSION);
        // Acks go back in the version the device spoke.
        let ack = Ack {
            device: "dev-a".into(),
            epoch: 2,
            seq: 41,
            status: AckStatus::Stored {
                samples: 3,
                duplicate: false,
            },
        };
        let old = ack.encode_as(&key(1), 1);
        assert_eq!(claimed_version(&old), Some(1));
        assert_eq!(Ack::decode(&old, "dev-a", &key(1)).unwrap(), ack);
    }

    #[test]
    fn acks_and_commands_are_the_hubs_alone() {
        let ack = Ack {
            device: "dev-a".into(),
            epoch: 2,
            seq: 41,
            status: AckStatus::Stored {
                samples: 1050,
                duplicate: false,
            },
        };
        let payload = ack.encode(&key(1));
        assert_eq!(Ack::decode(&payload, "dev-a", &key(1)).unwrap(), ack);
        // Device B's key cannot make an ack for A, nor can A's ack be replayed on B's topic.
        assert_eq!(
            Ack::decode(&ack.encode(&key(2)), "dev-a", &key(1)),
            Err(Error::BadSignature)
        );
        assert!(Ack::decode(&payload, "dev-b", &key(1)).is_err());
        // A batch frame is not an ack, even under the same key.
        let batch = Batch {
            header: header("dev-a"),
            body: BatchBody::default(),
            version: PROTOCOL_VERSION,
        }
        .encode(&key(1), 3);
        assert_eq!(
            Ack::decode(&batch, "dev-a", &key(1)),
            Err(Error::NotOutpost)
        );

        let command = Command {
            device: "dev-a".into(),
            id: 9,
            issued_ms: 1,
            expires_ms: 2,
            action: Action::Silence(Silence {
                id: "s1".into(),
                matchers: vec![Matcher {
                    label: "rule".into(),
                    op: MatchOp::Regex,
                    value: "cpu.*".into(),
                }],
                starts_ms: 1,
                ends_ms: 2,
                created_by: "admin".into(),
                comment: "maintenance".into(),
            }),
        };
        let payload = command.encode(&key(1));
        assert_eq!(
            Command::decode(&payload, "dev-a", &key(1)).unwrap(),
            command
        );
        assert_eq!(
            Command::decode(&command.encode(&key(2)), "dev-a", &key(1)),
            Err(Error::BadSignature)
        );
    }

    #[test]
    fn signed_json_stays_json_and_refuses_tampering() {
        for object in [r#"{"state":"online","device":"dev-a"}"#, "{}"] {
            let signed = sign_json(object, &key(1));
            let parsed: serde_json::Value = serde_json::from_str(&signed).unwrap();
            assert_eq!(parsed["mac"].as_str().unwrap().len(), 64);
            assert_eq!(verify_json(&signed, &key(1)).unwrap(), object);
            assert_eq!(verify_json(&signed, &key(2)), Err(Error::BadSignature));
            let tampered = signed.replacen("online", "offline", 1);
            if tampered != signed {
                assert_eq!(verify_json(&tampered, &key(1)), Err(Error::BadSignature));
            }
        }
    }

    #[test]
    fn keys_need_sixteen_bytes_and_read_back_from_hex() {
        assert!(DeviceKey::new(vec![1; 15]).is_err());
        let key = key(0xab);
        assert_eq!(
            DeviceKey::from_hex(&format!("{}\n", key.to_hex())).unwrap(),
            key
        );
        assert!(DeviceKey::from_hex("abc").is_err());
        assert!(DeviceKey::from_hex(&"zz".repeat(16)).is_err());
        assert_eq!(format!("{key:?}"), "DeviceKey(..)");
    }
}
