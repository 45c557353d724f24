//! The hub's side of a batch: turning a verified [`Batch`] into writes to the hub's store,
//! idempotently. Samples are upserted by `(series, timestamp)`, so a batch that arrives twice,
//! or data that the device sends again after a restart, changes nothing; `(epoch, seq)` is
//! tracked per device to count duplicates and gaps, and a batch already stored is acknowledged
//! without being written again.
//!
//! Per-device state lives in the hub store's `DeviceRegistry` state table and is written in the
//! same [`WriteBatch`] as the samples it describes, so that after a crash the two agree.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher as _;

use outpost_storage::codec::{decode_chunk, decode_rollup_chunk, decode_samples_into, samples_in};
use outpost_storage::{bucket_start, SeriesId, SeriesKey, Store, Tier, WriteBatch};

use crate::state_keys::IngestKey;
use serde::{Deserialize, Serialize};

use crate::message::{AckStatus, Batch, ClockStep};

/// The label every series gets at the hub: the device it came from.
pub const INSTANCE: &str = "instance";
/// Where a device's own `instance` label goes, as Prometheus does.
pub const EXPORTED_INSTANCE: &str = "exported_instance";

/// How the hub opens its store. A fleet's head holds many series, each sampled every second: a
/// larger head (8 M samples, about 130 MB) means each chunk is rewritten fewer times as it
/// fills, which is what bounds ingest, and the hub runs where memory is not scarce.
pub fn hub_store_options(budget_bytes: u64) -> outpost_storage::Options {
    outpost_storage::Options {
        budget_bytes: Some(budget_bytes),
        max_head_samples: 8_000_000,
        ..outpost_storage::Options::default()
    }
}

/// Why a batch could not be ingested. The hub answers with [`AckStatus::Rejected`] and counts it.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("series definition {id}: {reason}")]
    BadDefinition { id: u32, reason: String },
    #[error("samples of series {series}: {reason}")]
    BadSamples { series: u32, reason: String },
    #[error("chunk of series {series}: {reason}")]
    BadChunk { series: u32, reason: String },
    // The store's error in the message, not also as `source()`: a chain printed whole says it
    // once.
    #[error("hub store: {0}")]
    Store(outpost_storage::Error),
}

impl From<outpost_storage::Error> for IngestError {
    fn from(e: outpost_storage::Error) -> Self {
        IngestError::Store(e)
    }
}

/// Seen sequence numbers of one (device, epoch): all up to `low`, and some above it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    low: u64,
    above: BTreeSet<u64>,
}

impl Seen {
    fn contains(&self, seq: u64) -> bool {
        seq <= self.low || self.above.contains(&seq)
    }

    /// Records `seq`; returns how many sequence numbers it skipped over (a gap, for metrics).
    fn insert(&mut self, seq: u64) -> u64 {
        let highest = self.above.last().copied().unwrap_or(self.low);
        let gap = seq.saturating_sub(highest.max(self.low) + 1);
        self.above.insert(seq);
        while self.above.remove(&(self.low + 1)) {
            self.low += 1;
        }
        // A device that skipped numbers for good (a crash between numbering and sending) must
        // not grow this without bound: far-behind holes are given up on.
        while self.above.len() > 4096 {
            if let Some(first) = self.above.pop_first() {
                self.low = first;
            }
        }
        gap
    }
}

/// What came of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub status: AckStatus,
    /// Sequence numbers skipped before this batch (0 when in order).
    pub gap: u64,
    /// Timestamps stored corrected for the device's wrong clock.
    pub clock_corrected: u64,
    /// Timestamps stored as they came although they are implausible (before
    /// [`EARLIEST_PLAUSIBLE_MS`], or in the future by the hub's clock) and nothing said by how
    /// much they are off.
    pub implausible: u64,
}

/// A device clock further than this from the hub's (receive time minus the device's wall clock
/// at send) is wrong, and what it wrote is corrected. Under it lie network delays and ordinary
/// clock error, which are left alone.
pub const CLOCK_TOLERANCE_MS: i64 = 60_000;
/// 2024-01-01T00:00:00Z: no agent of this protocol wrote anything before it, so an earlier
/// timestamp is a wrong clock's.
pub const EARLIEST_PLAUSIBLE_MS: i64 = 1_704_067_200_000;

/// One reading of a device's clock as the hub measured it: within boot `boot_id`, while the
/// device's clock put its boot at `boot_wall_ms` (a step moves it), its timestamps were
/// `offset_ms` behind the hub's (0 for a clock within [`CLOCK_TOLERANCE_MS`]). Kept, so that
/// data sent again (after an agent restart) gets the very same correction, and so that the data
/// of an earlier boot gets its last clock's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClockFrame {
    boot_id: String,
    boot_wall_ms: i64,
    offset_ms: i64,
}

/// Clock frames kept per device: a device steps once or twice a boot.
const KEEP_FRAMES: usize = 16;
/// What a step's range is widened by at its start (the agent's noise threshold): a frame that
/// begins at a step may have written this much before the step was seen.
const STEP_MARGIN_MS: i64 = 2_000;

/// A map keyed by a device's series ids. Hashed with foldhash, seeded per process: it is looked
/// up for every series of every batch, where SipHash was a twentieth of the hub's CPU, and a
/// device that picks colliding ids slows only its own look-ups.
type IdMap<V> = HashMap<u32, V, foldhash::fast::RandomState>;

/// The hub's ingest state for the whole fleet.
#[derive(Debug, Default)]
pub struct Ingestor {
    /// Per device, its series ids to the hub's series and a hash of the definition that
    /// made it ([`UNKNOWN_DEFINITION`] when read back from the store).
    series: HashMap<String, IdMap<(SeriesId, u64)>>,
    /// Hashes definitions: a device behind several hubs defines every series in every batch,
    /// and one it defined before as it does now is neither parsed nor written again. foldhash,
    /// seeded per process: SipHash over a hundred keys a batch was felt in the hub's profile,
    /// and a collision can only mix a device's own series (see `define_series`).
    definitions: foldhash::quality::RandomState,
    seen: HashMap<(String, u64), Seen>,
    /// Per device, the frames measured, oldest first.
    clock_frames: HashMap<String, Vec<ClockFrame>>,
    /// The log lines kept per device.
    lines: crate::lines::HubLines,
}

/// How one batch's timestamps are corrected. Each timestamp was written by one reading of the
/// device's clock, a frame: the one the batch was sent in (from the last step of its boot to
/// now), or one that a recorded step ended. A timestamp of an ended frame gets the delta of
/// that step and of every later step of its boot, which brings it to the boot's last clock, and
/// then that clock's offset as the hub measured it.
struct Correction<'a> {
    /// Every step the device recorded, in the order they happened.
    steps: &'a [ClockStep],
    boot_id: &'a str,
    /// The current frame: where it began by its own clock, and up to where it may have written.
    current: (i64, i64),
    /// The offset of the batch's boot's current clock.
    current_offset_ms: i64,
    /// The last measured offset of each boot's clock.
    boot_offsets: HashMap<String, i64>,
    received_ms: i64,
    corrected: u64,
    implausible: u64,
}

impl Correction<'_> {
    /// By how much `ts` is off.
    fn delta(&self, ts: i64) -> i64 {
        if (self.current.0..=self.current.1).contains(&ts) {
            return self.current_offset_ms;
        }
        // Ranges of frames overlap only where a clock stepped back by less than a frame lasted:
        // the later frame wins (see sync/PROTOCOL.md, Clocks).
        self.steps
            .iter()
            .rposition(|step| step.covers(ts))
            .map_or(0, |ended| self.ended_frame_delta(ended))
    }

    /// By how much the timestamps of the frame that step `ended` ended are off: that step's
    /// delta and every later one's of its boot, then the offset of the boot's last clock.
    fn ended_frame_delta(&self, ended: usize) -> i64 {
        let boot = &self.steps[ended].boot_id;
        let chained = self.steps[ended..]
            .iter()
            .filter(|step| step.boot_id == *boot)
            .fold(0i64, |sum, step| sum.saturating_add(step.delta_ms));
        let last_offset = if boot == self.boot_id {
            self.current_offset_ms
        } else {
            self.boot_offsets.get(boot).copied().unwrap_or(0)
        };
        chained.saturating_add(last_offset)
    }

    /// By how much a rollup bucket `[bucket, bucket + width)` is off: the delta of every frame
    /// that could have written into it, if they agree; `None` when the bucket mixes clocks that
    /// are off by different amounts, which no shift can fix.
    fn bucket_delta(&self, bucket: i64, width: i64) -> Option<i64> {
        let end = bucket.saturating_add(width - 1);
        let overlaps = |from: i64, until: i64| from <= end && bucket <= until;
        let current = overlaps(self.current.0, self.current.1).then_some(self.current_offset_ms);
        let ended = self
            .steps
            .iter()
            .enumerate()
            .filter(|(_, step)| overlaps(step.from_ms, step.until_ms))
            .map(|(i, _)| self.ended_frame_delta(i));
        let mut deltas = current.into_iter().chain(ended);
        let first = deltas.next().unwrap_or(0);
        deltas.all(|delta| delta == first).then_some(first)
    }

    /// The bucket to store for a device's rollup bucket, moved by whole buckets; `None` for a
    /// bucket that mixes clocks (the hub computes its own from the raw samples, which are placed
    /// one by one).
    fn fix_bucket(&mut self, bucket: i64, width: i64) -> Option<i64> {
        let delta = self.bucket_delta(bucket, width)?;
        let fixed = if delta == 0 {
            bucket
        } else {
            bucket.saturating_add(bucket_start(delta.saturating_add(width / 2), width))
        };
        self.count(bucket, fixed);
        Some(fixed)
    }

    fn count(&mut self, ts: i64, fixed: i64) {
        if fixed != ts {
            self.corrected += 1;
        }
        if fixed < EARLIEST_PLAUSIBLE_MS || fixed > self.received_ms + CLOCK_TOLERANCE_MS {
            self.implausible += 1;
        }
    }

    /// The timestamp to store for a sample written at `ts`.
    fn fix(&mut self, ts: i64) -> i64 {
        let fixed = ts.saturating_add(self.delta(ts));
        self.count(ts, fixed);
        fixed
    }
}

/// The hub's key for a device's series: `instance` set to the device, the device's own
/// `instance` kept as `exported_instance`.
pub fn hub_key(device: &str, key: &SeriesKey) -> Result<SeriesKey, outpost_storage::Error> {
    let has_instance = !key.label(INSTANCE).is_empty();
    let mut labels: Vec<(String, String)> = key
        .labels()
        .filter(|&(l, _)| l != EXPORTED_INSTANCE || !has_instance)
        .map(|(l, v)| {
            let l = if l == INSTANCE { EXPORTED_INSTANCE } else { l };
            (l.to_string(), v.to_string())
        })
        .collect();
    labels.push((INSTANCE.to_string(), device.to_string()));
    SeriesKey::new(key.name(), labels)
}

impl Ingestor {
    pub fn new() -> Self {
        Ingestor::default()
    }

    fn resolve(
        &mut self,
        store: &Store,
        device: &str,
        id: u32,
    ) -> Result<Option<SeriesId>, IngestError> {
        if let Some((hub, _)) = self.series.get(device).and_then(|ids| ids.get(&id)) {
            return Ok(Some(*hub));
        }
        let Some(stored) = store.get(&IngestKey::Series { device, id })? else {
            return Ok(None);
        };
        let Some(hub) = stored_series(store, device, &stored)? else {
            return Ok(None);
        };
        self.remember(device, id, hub, UNKNOWN_DEFINITION);
        Ok(Some(hub))
    }

    fn remember(&mut self, device: &str, id: u32, hub: SeriesId, definition: u64) {
        self.remember_all(device, [(id, hub, definition)]);
    }

    /// Remembers series of one device, which is looked up once.
    fn remember_all(
        &mut self,
        device: &str,
        series: impl IntoIterator<Item = (u32, SeriesId, u64)>,
    ) {
        if !self.series.contains_key(device) {
            self.series.insert(device.to_string(), IdMap::default());
        }
        if let Some(ids) = self.series.get_mut(device) {
            ids.extend(
                series
                    .into_iter()
                    .map(|(id, hub, definition)| (id, (hub, definition))),
            );
        }
    }

    fn seen(&mut self, store: &Store, device: &str, epoch: u64) -> Result<&mut Seen, IngestError> {
        let key = (device.to_string(), epoch);
        if !self.seen.contains_key(&key) {
            let seen = store
                .get(&IngestKey::Seen { device, epoch })?
                .and_then(|bytes| postcard::from_bytes(&bytes).ok())
                .unwrap_or_default();
            self.seen.insert(key.clone(), seen);
        }
        Ok(self.seen.get_mut(&key).expect("inserted above"))
    }

    /// The device's clock frames as stored, loaded once. A store of an earlier version holds
    /// one frame, not a list.
    fn frames(&mut self, store: &Store, device: &str) -> Result<&mut Vec<ClockFrame>, IngestError> {
        if !self.clock_frames.contains_key(device) {
            let stored = store.get(&IngestKey::Clock { device })?;
            let frames = stored
                .map(|bytes| {
                    postcard::from_bytes::<Vec<ClockFrame>>(&bytes)
                        .or_else(|_| postcard::from_bytes::<ClockFrame>(&bytes).map(|f| vec![f]))
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            self.clock_frames.insert(device.to_string(), frames);
        }
        Ok(self.clock_frames.get_mut(device).expect("inserted above"))
    }

    /// The offset of the clock this batch was sent by: the one stored for its frame, or measured
    /// now (the receive time minus the send time; 0 within [`CLOCK_TOLERANCE_MS`]), with the
    /// frame list to store when the frame is new.
    fn clock_frame(
        &mut self,
        store: &Store,
        batch: &Batch,
        received_ms: i64,
    ) -> Result<(i64, Option<Vec<ClockFrame>>), IngestError> {
        let header = &batch.header;
        let boot_wall_ms = header
            .sent_wall_ms
            .saturating_sub(i64::try_from(header.sent_uptime_ms).unwrap_or(i64::MAX));
        let frames = self.frames(store, &header.device)?;
        if let Some(known) = frames.iter().rev().find(|frame| {
            frame.boot_id == header.boot_id && frame.boot_wall_ms.abs_diff(boot_wall_ms) <= 5_000
        }) {
            return Ok((known.offset_ms, None));
        }
        let measured = received_ms.saturating_sub(header.sent_wall_ms);
        let offset_ms = if measured.abs() <= CLOCK_TOLERANCE_MS {
            0
        } else {
            measured
        };
        let mut updated = frames.clone();
        updated.push(ClockFrame {
            boot_id: header.boot_id.clone(),
            boot_wall_ms,
            offset_ms,
        });
        if updated.len() > KEEP_FRAMES {
            updated.remove(0);
        }
        Ok((offset_ms, Some(updated)))
    }

    /// The correction of one batch's timestamps.
    fn correction<'a>(
        &self,
        batch: &'a Batch,
        current_offset_ms: i64,
        frames: &[ClockFrame],
        received_ms: i64,
    ) -> Correction<'a> {
        let header = &batch.header;
        let steps = &header.clock_steps;
        let since = match steps.iter().rfind(|step| step.boot_id == header.boot_id) {
            // The new clock's reading when the step was seen, less what it may have written
            // before.
            Some(last) => last
                .until_ms
                .saturating_add(last.delta_ms)
                .saturating_sub(STEP_MARGIN_MS),
            None => header
                .sent_wall_ms
                .saturating_sub(i64::try_from(header.sent_uptime_ms).unwrap_or(i64::MAX)),
        };
        let mut boot_offsets = HashMap::new();
        for frame in frames {
            boot_offsets.insert(frame.boot_id.clone(), frame.offset_ms);
        }
        Correction {
            steps,
            boot_id: &header.boot_id,
            current: (
                since,
                header.sent_wall_ms.saturating_add(CLOCK_TOLERANCE_MS),
            ),
            current_offset_ms,
            boot_offsets,
            received_ms,
            corrected: 0,
            implausible: 0,
        }
    }

    /// Writes a verified batch into `store` (accepted, not yet durable: the caller syncs the
    /// store before it sends the returned acknowledgement). `received_ms` is the hub's clock
    /// when the batch came: what a device's wrong clock is measured against.
    pub fn ingest(
        &mut self,
        store: &Store,
        batch: &Batch,
        received_ms: i64,
    ) -> Result<Ingested, IngestError> {
        self.ingest_via(store, batch, received_ms, &mut |_, _| {})
    }

    /// [`Ingestor::ingest`], with `deliver` handed the batch's writes just before they are
    /// written: a hub that keeps the fleet's samples in another engine may take them all (and
    /// write them itself once the engine took the samples; this ingestor's memory then runs
    /// ahead of the store, so if they are never written the caller must start a new
    /// ingestor, which reads its state from the store again).
    pub fn ingest_via(
        &mut self,
        store: &Store,
        batch: &Batch,
        received_ms: i64,
        deliver: &mut dyn FnMut(&str, &mut WriteBatch),
    ) -> Result<Ingested, IngestError> {
        let device = batch.header.device.as_str();
        let (epoch, seq) = (batch.header.epoch, batch.header.seq);
        if self.seen(store, device, epoch)?.contains(seq) {
            return Ok(Ingested {
                status: AckStatus::Stored {
                    samples: 0,
                    duplicate: true,
                },
                gap: 0,
                clock_corrected: 0,
                implausible: 0,
            });
        }
        let mut write = WriteBatch::default();
        let (current_offset_ms, new_frames) = self.clock_frame(store, batch, received_ms)?;
        let frames = new_frames
            .clone()
            .unwrap_or_else(|| self.clock_frames[device].clone());
        let mut correction = self.correction(batch, current_offset_ms, &frames, received_ms);
        let new_series = self.define_series(store, device, &batch.body.defs, &mut write)?;
        let lookup = match self.lookup(store, device, batch, &new_series)? {
            Ok(lookup) => lookup,
            Err(unknown) => {
                return Ok(Ingested {
                    status: AckStatus::UnknownSeries { ids: unknown },
                    gap: 0,
                    clock_corrected: 0,
                    implausible: 0,
                })
            }
        };
        let samples = write_batch_body(store, batch, &lookup, &mut correction, &mut write)?;
        self.lines
            .keep(store, device, epoch, &batch.body.lines, &mut write)?;
        let seen = self.seen(store, device, epoch)?;
        let mut updated = seen.clone();
        let gap = updated.insert(seq);
        write.put(
            &IngestKey::Seen { device, epoch },
            postcard::to_allocvec(&updated).expect("postcard serializes sequence sets"),
        );
        if let Some(frames) = &new_frames {
            write.put(
                &IngestKey::Clock { device },
                postcard::to_allocvec(frames).expect("postcard serializes clock frames"),
            );
        }
        deliver(device, &mut write);
        if !write.is_empty() {
            store.write(write)?;
        }
        if let Some(frames) = new_frames {
            if current_offset_ms != 0 {
                tracing::warn!(
                    device,
                    offset_ms = current_offset_ms,
                    boot_id = %batch.header.boot_id,
                    "the device's clock is off; its timestamps are stored corrected"
                );
            }
            self.clock_frames.insert(device.to_string(), frames);
        }
        *self.seen(store, device, epoch)? = updated;
        self.remember_all(device, new_series);
        Ok(Ingested {
            status: AckStatus::Stored {
                samples,
                duplicate: false,
            },
            gap,
            clock_corrected: correction.corrected,
            implausible: correction.implausible,
        })
    }
}

impl Ingestor {
    /// The hub's series for every device series the batch names; the ids it cannot resolve
    /// (definitions the hub never got) as the error.
    fn lookup(
        &mut self,
        store: &Store,
        device: &str,
        batch: &Batch,
        new_series: &[(u32, SeriesId, u64)],
    ) -> Result<Result<IdMap<SeriesId>, Vec<u32>>, IngestError> {
        let mut referenced: Vec<u32> = batch
            .body
            .live
            .iter()
            .map(|l| l.series)
            .chain(batch.body.chunks.iter().map(|c| c.series))
            .collect();
        referenced.sort_unstable();
        referenced.dedup();
        // Sized once and the device's series found once: this runs for every batch.
        let mut lookup: IdMap<SeriesId> = IdMap::with_capacity_and_hasher(
            new_series.len() + referenced.len(),
            Default::default(),
        );
        lookup.extend(new_series.iter().map(|&(id, hub, _)| (id, hub)));
        let known = self.series.get(device);
        referenced.retain(|id| {
            if lookup.contains_key(id) {
                return false;
            }
            match known.and_then(|ids| ids.get(id)) {
                Some(&(hub, _)) => {
                    lookup.insert(*id, hub);
                    false
                }
                None => true,
            }
        });
        let mut unknown = Vec::new();
        for id in referenced {
            match self.resolve(store, device, id)? {
                Some(hub) => {
                    lookup.insert(id, hub);
                }
                None => unknown.push(id),
            }
        }
        Ok(if unknown.is_empty() {
            Ok(lookup)
        } else {
            Err(unknown)
        })
    }
}

/// What a definition read back from the store hashes to: matches no definition's hash.
const UNKNOWN_DEFINITION: u64 = 0;

impl Ingestor {
    /// The batch's series definitions that the hub did not know so, as hub series (relabelled
    /// with the device) with their definitions' hashes, recorded in `write`. Those defined so
    /// before are left out: a device behind several hubs defines every series in every batch.
    fn define_series(
        &self,
        store: &Store,
        device: &str,
        defs: &crate::message::SeriesDefs,
        write: &mut WriteBatch,
    ) -> Result<Vec<(u32, SeriesId, u64)>, IngestError> {
        let known = self.series.get(device);
        let mut new_series = Vec::with_capacity(defs.len());
        for def in defs {
            // A collision (keyed per process, 64 bits) could at worst file a device's samples
            // under another of its own series: every hub series carries its device's instance.
            let definition = self.definitions.hash_one(def.key).max(1);
            if let Some(&(_, same)) = known.and_then(|ids| ids.get(&def.id)) {
                if same == definition {
                    continue;
                }
            }
            let bad = |reason: String| IngestError::BadDefinition { id: def.id, reason };
            let key = SeriesKey::parse(def.key).map_err(|e| bad(e.to_string()))?;
            let key = hub_key(device, &key).map_err(|e| bad(e.to_string()))?;
            let hub = store.series_id(&key)?;
            write.put(
                &IngestKey::Series { device, id: def.id },
                series_record(hub),
            );
            new_series.push((def.id, hub, definition));
        }
        Ok(new_series)
    }
}

/// The first byte of a device series' record that names the hub series by its catalogue id; a
/// record of an earlier version is the key's text, and no UTF-8 text starts with it.
const SERIES_BY_ID: u8 = 0xFF;

/// A device series' record: the hub series by its id in the store's catalogue, which holds the
/// key durably already. Five bytes, not the key's hundred: a fleet's first batches write one
/// for every series of every device.
fn series_record(hub: SeriesId) -> Vec<u8> {
    let mut record = Vec::with_capacity(5);
    record.push(SERIES_BY_ID);
    record.extend_from_slice(&hub.0.to_le_bytes());
    record
}

/// The hub series a device series' record names. `None` for a damaged record (an id not in the
/// catalogue, text that is no key, another device's series): the device is then asked to
/// define the series again, rather than its batches refused for good or its samples filed
/// under someone else's series.
fn stored_series(
    store: &Store,
    device: &str,
    stored: &[u8],
) -> Result<Option<SeriesId>, IngestError> {
    if let [SERIES_BY_ID, id @ ..] = stored {
        let Ok(id) = <[u8; 4]>::try_from(id) else {
            return Ok(None);
        };
        let hub = SeriesId(u32::from_le_bytes(id));
        let owned = store
            .shared_series_key(hub)
            .is_some_and(|key| key.label(INSTANCE) == device);
        return Ok(owned.then_some(hub));
    }
    let Ok(key) = SeriesKey::parse(&String::from_utf8_lossy(stored)) else {
        return Ok(None);
    };
    if key.label(INSTANCE) != device {
        return Ok(None);
    }
    Ok(Some(store.series_id(&key)?))
}

/// A rollup chunk from the device, its buckets corrected: hub series, tier, buckets, rollups.
type RollupChunk = (SeriesId, Tier, Vec<i64>, Vec<outpost_storage::Rollup>);

/// Writes the batch's live samples and chunks into `write`, timestamps corrected; returns how
/// many raw samples it held.
fn write_batch_body(
    store: &Store,
    batch: &Batch,
    lookup: &IdMap<SeriesId>,
    correction: &mut Correction,
    write: &mut WriteBatch,
) -> Result<u64, IngestError> {
    let mut samples = 0u64;
    // Buckets with raw samples in this batch, per hub series: rollups from the device do not
    // override what the hub can compute from raw data.
    // Noted only when the batch carries rollups (a backlog); a live batch carries none.
    let mut raw_buckets: HashMap<(SeriesId, u8), BTreeSet<i64>> = HashMap::new();
    let carries_rollups = batch.body.chunks.iter().any(|chunk| chunk.tier != 0);
    // The batch's samples sized once: a hub holds each device's write until the engine takes
    // it, and one grown by doubling held up to twice the room. Each count is bounded as
    // decoding bounds it (a sample per two bytes of its run), so a batch whose runs then
    // fail to decode reserved at most what a valid batch of its size holds.
    write.reserve(
        batch
            .body
            .live
            .iter()
            .filter_map(|live| samples_in(live.samples).ok())
            .sum(),
    );
    let mut write_raw = |hub: SeriesId, timestamps: &mut [i64], values: &[f64]| {
        for ts in timestamps.iter_mut() {
            *ts = correction.fix(*ts);
        }
        samples += timestamps.len() as u64;
        if carries_rollups {
            note_buckets(&mut raw_buckets, hub, timestamps);
        }
        for (&ts, &value) in timestamps.iter().zip(values) {
            write.sample(hub, ts, value);
        }
    };
    // One pair of buffers for every run of the batch.
    let (mut timestamps, mut values) = (Vec::new(), Vec::new());
    for live in &batch.body.live {
        decode_samples_into(live.samples, &mut timestamps, &mut values).map_err(|e| {
            IngestError::BadSamples {
                series: live.series,
                reason: e.to_string(),
            }
        })?;
        write_raw(lookup[&live.series], &mut timestamps, &values);
    }
    let mut rollup_chunks: Vec<RollupChunk> = Vec::new();
    for chunk in &batch.body.chunks {
        let hub = lookup[&chunk.series];
        let bad = |reason: String| IngestError::BadChunk {
            series: chunk.series,
            reason,
        };
        let tier = match chunk.tier {
            0 => {
                let (mut timestamps, values) =
                    decode_chunk(&chunk.bytes).map_err(|e| bad(e.to_string()))?;
                write_raw(hub, &mut timestamps, &values);
                continue;
            }
            1 => Tier::Minute,
            2 => Tier::Hour,
            other => return Err(bad(format!("unknown tier {other}"))),
        };
        let (buckets, rollups) =
            decode_rollup_chunk(&chunk.bytes).map_err(|e| bad(e.to_string()))?;
        rollup_chunks.push((hub, tier, buckets, rollups));
    }
    for (hub, tier, buckets, rollups) in rollup_chunks {
        let width = tier.resolution_ms();
        let mut fixed: Vec<(i64, _)> = buckets
            .into_iter()
            .zip(rollups)
            .filter_map(|(bucket, rollup)| Some((correction.fix_bucket(bucket, width)?, rollup)))
            .collect();
        fixed.sort_by_key(|(bucket, _)| *bucket);
        let (Some(&(first, _)), Some(&(last, _))) = (fixed.first(), fixed.last()) else {
            continue;
        };
        let covered = hub_raw_buckets(store, hub, first, last.saturating_add(width), width)?;
        let in_batch = raw_buckets.get(&(hub, tier as u8));
        for (bucket, rollup) in fixed {
            if !covered.contains(&bucket) && !in_batch.is_some_and(|b| b.contains(&bucket)) {
                write.rollup(hub, tier, bucket, rollup);
            }
        }
    }
    Ok(samples)
}

fn note_buckets(
    out: &mut HashMap<(SeriesId, u8), BTreeSet<i64>>,
    hub: SeriesId,
    timestamps: &[i64],
) {
    for (tier, width) in [(Tier::Minute, 60_000i64), (Tier::Hour, 3_600_000)] {
        let set = out.entry((hub, tier as u8)).or_default();
        set.extend(timestamps.iter().map(|ts| bucket_start(*ts, width)));
    }
}

/// Buckets of `width` in `[from, to)` where the hub store holds raw samples of `series`.
fn hub_raw_buckets(
    store: &Store,
    series: SeriesId,
    from: i64,
    to: i64,
    width: i64,
) -> Result<BTreeSet<i64>, IngestError> {
    let Some(key) = store.series_key(series) else {
        return Ok(BTreeSet::new());
    };
    let selector = outpost_storage::Selector::parse(&key.to_string())?;
    let points = store.query_raw(&selector, from, to.saturating_sub(1))?;
    Ok(points
        .into_iter()
        .filter(|s| s.series == key)
        .flat_map(|s| {
            s.points
                .into_iter()
                .map(move |(ts, _)| bucket_start(ts, width))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_are_tracked_with_gaps() {
        let mut seen = Seen::default();
        assert_eq!(seen.insert(1), 0);
        assert_eq!(seen.insert(2), 0);
        assert_eq!(seen.insert(5), 2);
        assert!(seen.contains(2) && seen.contains(5) && !seen.contains(3));
        assert_eq!(seen.insert(3), 0);
        assert_eq!(seen.insert(4), 0);
        assert_eq!(seen.low, 5);
        assert!(seen.above.is_empty());
    }

    #[test]
    fn instance_is_the_device_and_the_devices_own_is_kept() {
        let key = SeriesKey::parse(r#"fps{instance="cam",stream="0"}"#).unwrap();
        assert_eq!(
            hub_key("orin-01", &key).unwrap().to_string(),
            r#"fps{exported_instance="cam",instance="orin-01",stream="0"}"#
        );
        let plain = SeriesKey::parse("node_load1").unwrap();
        assert_eq!(
            hub_key("orin-01", &plain).unwrap().to_string(),
            r#"node_load1{instance="orin-01"}"#
        );
    }

    const DAY: i64 = 86_400_000;
    /// The hub's clock in these tests: 2026-12-01.
    const NOW: i64 = 1_796_083_200_000;

    fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(dir.path().join("hub.redb"), hub_store_options(1 << 30)).unwrap()
    }

    /// A batch of `value` at each of `timestamps` for series `cpu`, and an hour-tier rollup
    /// chunk at `bucket` when given.
    fn batch(
        epoch: u64,
        sent_wall_ms: i64,
        timestamps: &[i64],
        rollup_bucket: Option<i64>,
        clock_steps: Vec<ClockStep>,
    ) -> Batch {
        use crate::message::{BatchBody, BatchHeader, LiveSamples, SeriesDef, StoredChunk};
        let values: Vec<f64> = timestamps.iter().map(|&t| (t % 1000) as f64).collect();
        Batch {
            header: BatchHeader {
                device: "jetson".into(),
                epoch,
                seq: 1,
                boot_id: "boot-1".into(),
                sent_wall_ms,
                sent_uptime_ms: 600_000,
                oldest_unacked_ms: None,
                body_bytes: 0,
                clock_steps,
            },
            body: BatchBody {
                defs: [SeriesDef { id: 1, key: "cpu" }].into_iter().collect(),
                live: [LiveSamples {
                    series: 1,
                    samples: &outpost_storage::codec::encode_samples(timestamps, &values),
                }]
                .into_iter()
                .collect(),
                chunks: rollup_bucket
                    .map(|bucket| StoredChunk {
                        series: 1,
                        tier: 2,
                        window_start: bucket,
                        bytes: outpost_storage::codec::encode_rollup_chunk(
                            &[bucket],
                            &[outpost_storage::codec::Rollup::of(1.0)],
                            3,
                        ),
                    })
                    .into_iter()
                    .collect(),
                lines: Vec::new(),
            },
            version: crate::PROTOCOL_VERSION,
        }
    }

    fn stored(store: &Store) -> Vec<i64> {
        let selector = outpost_storage::Selector::parse("cpu").unwrap();
        store
            .query_raw(&selector, 0, i64::MAX)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.points.into_iter().map(|(ts, _)| ts))
            .collect()
    }

    fn stored_hour_buckets(store: &Store) -> Vec<i64> {
        let selector = outpost_storage::Selector::parse("cpu").unwrap();
        store
            .query_rollups(&selector, Tier::Hour, 0, i64::MAX)
            .unwrap()
            .into_iter()
            .flat_map(|(_, points)| points.into_iter().map(|(bucket, _)| bucket))
            .collect()
    }

    #[test]
    fn series_are_found_from_the_batch_then_memory_then_the_store_and_unknown_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let hub = store(&dir);
        let send = |ingestor: &mut Ingestor, seq: u64, defined: bool, ids: &[u32]| {
            let mut batch = batch(1, NOW, &[NOW - 10_000 + seq as i64], None, vec![]);
            batch.header.seq = seq;
            if !defined {
                batch.body.defs.clear();
            }
            let run = batch.body.live.get(0).unwrap().samples.to_vec();
            batch.body.live = ids
                .iter()
                .map(|&series| crate::LiveSamples {
                    series,
                    samples: &run,
                })
                .collect();
            ingestor.ingest(&hub, &batch, NOW).unwrap().status
        };
        let taken = |status: AckStatus| matches!(status, AckStatus::Stored { .. });
        let mut ingestor = Ingestor::new();
        assert!(taken(send(&mut ingestor, 1, true, &[1])));
        assert!(taken(send(&mut ingestor, 2, false, &[1, 1])));
        // Named twice among unknown ones, each unknown id once.
        assert_eq!(
            send(&mut ingestor, 3, false, &[7, 1, 9, 7]),
            AckStatus::UnknownSeries { ids: vec![7, 9] }
        );
        let mut restarted = Ingestor::new();
        assert!(taken(send(&mut restarted, 4, false, &[1])));
        assert_eq!(
            send(&mut restarted, 5, false, &[1, 8]),
            AckStatus::UnknownSeries { ids: vec![8] }
        );
        let base = NOW - 10_000;
        assert_eq!(stored(&hub), [base + 1, base + 2, base + 4]);
    }

    #[test]
    fn a_series_record_names_the_hub_series_by_id_and_one_of_an_earlier_version_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let hub = store(&dir);
        let send = |seq: u64, defined: bool| {
            let mut batch = batch(1, NOW, &[NOW - 10_000 + seq as i64], None, vec![]);
            batch.header.seq = seq;
            if !defined {
                batch.body.defs.clear();
            }
            // A restarted hub each time: the record is all it knows of series 1.
            Ingestor::new().ingest(&hub, &batch, NOW).unwrap().status
        };
        let record = IngestKey::Series {
            device: "jetson",
            id: 1,
        };
        let overwrite = |value: Vec<u8>| {
            let mut write = WriteBatch::default();
            write.put(&record, value);
            hub.write(write).unwrap();
        };
        let taken = |status: AckStatus| matches!(status, AckStatus::Stored { .. });
        assert!(taken(send(1, true)));
        let cpu = hub
            .series_id(&SeriesKey::parse(r#"cpu{instance="jetson"}"#).unwrap())
            .unwrap();
        assert_eq!(hub.get(&record).unwrap(), Some(series_record(cpu)));
        assert!(taken(send(2, false)));
        // As an earlier version wrote it: the key's text.
        overwrite(br#"cpu{instance="jetson"}"#.to_vec());
        assert!(taken(send(3, false)));
        assert_eq!(stored(&hub), [NOW - 9_999, NOW - 9_998, NOW - 9_997]);
        // Damaged: another device's series, an id past the catalogue, a cut record, and in the
        // earlier form another device's key and text that is no key. The device is asked to
        // define the series again; nothing is filed elsewhere.
        let other = hub
            .series_id(&SeriesKey::parse(r#"cpu{instance="other"}"#).unwrap())
            .unwrap();
        let unknown = AckStatus::UnknownSeries { ids: vec![1] };
        for damaged in [
            series_record(other),
            series_record(SeriesId(1_000_000)),
            vec![SERIES_BY_ID, 0],
            br#"cpu{instance="other"}"#.to_vec(),
            b"cpu{".to_vec(),
        ] {
            overwrite(damaged);
            assert_eq!(send(4, false), unknown);
        }
        assert!(taken(send(4, true)));
        assert_eq!(hub.get(&record).unwrap(), Some(series_record(cpu)));
        let other_selector = outpost_storage::Selector::parse(r#"cpu{instance="other"}"#).unwrap();
        assert!(hub
            .query_raw(&other_selector, 0, i64::MAX)
            .unwrap()
            .iter()
            .all(|s| s.points.is_empty()));
    }

    #[test]
    fn a_series_id_defined_anew_names_the_new_series_defined_again_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let hub = store(&dir);
        let selected = |selector: &str| -> Vec<i64> {
            let selector = outpost_storage::Selector::parse(selector).unwrap();
            let series = hub.query_raw(&selector, 0, i64::MAX).unwrap();
            series
                .into_iter()
                .flat_map(|s| s.points)
                .map(|(ts, _)| ts)
                .collect()
        };
        let mut ingestor = Ingestor::new();
        let send = |ingestor: &mut Ingestor, seq: u64, key: &str, at: i64| {
            let mut batch = batch(1, NOW, &[at], None, vec![]);
            batch.header.seq = seq;
            batch.body.defs = [crate::message::SeriesDef { id: 1, key }]
                .into_iter()
                .collect();
            let ingested = ingestor.ingest(&hub, &batch, NOW).unwrap();
            assert!(matches!(ingested.status, AckStatus::Stored { .. }));
        };
        // Every batch defines its series, as for hubs sharing the batches.
        send(&mut ingestor, 1, "cpu", NOW - 3_000);
        send(&mut ingestor, 2, "cpu", NOW - 2_000);
        send(&mut ingestor, 3, "mem", NOW - 1_000);
        assert_eq!(selected("cpu"), [NOW - 3_000, NOW - 2_000]);
        assert_eq!(selected("mem"), [NOW - 1_000]);
        // A restarted hub knows the id from its store, and the definition by name only.
        let mut restarted = Ingestor::new();
        send(&mut restarted, 4, "mem", NOW - 500);
        send(&mut restarted, 5, "cpu", NOW - 100);
        assert_eq!(selected("cpu"), [NOW - 3_000, NOW - 2_000, NOW - 100]);
        assert_eq!(selected("mem"), [NOW - 1_000, NOW - 500]);
    }

    #[test]
    fn a_clock_that_is_off_now_is_corrected_by_the_receive_time_the_same_way_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let hub = store(&dir);
        // The device's clock is 400 days behind; it sends at what it thinks is NOW - 400 d.
        let off = 400 * DAY;
        let sent = NOW - off;
        let written = [sent - 20_000, sent - 10_000, sent];
        let mut ingestor = Ingestor::new();
        let first = ingestor
            .ingest(&hub, &batch(1, sent, &written, None, vec![]), NOW + 150)
            .unwrap();
        assert_eq!((first.clock_corrected, first.implausible), (3, 0));
        let expected: Vec<i64> = written.iter().map(|t| t + off + 150).collect();
        assert_eq!(stored(&hub), expected);
        // After a hub restart, the agent sends the same data again in a new epoch, later and
        // with another network delay: the same correction, so nothing is stored twice.
        let mut restarted = Ingestor::new();
        let again = restarted
            .ingest(
                &hub,
                &batch(2, sent + 5_000, &written, None, vec![]),
                NOW + 5_900,
            )
            .unwrap();
        assert_eq!(again.clock_corrected, 3);
        assert_eq!(stored(&hub), expected);
        // A right clock is left alone: 30 s of delay is not a wrong clock.
        let fine = [NOW + 40_000];
        let dir2 = tempfile::tempdir().unwrap();
        let hub2 = store(&dir2);
        let ok = Ingestor::new()
            .ingest(
                &hub2,
                &batch(1, NOW + 40_000, &fine, None, vec![]),
                NOW + 70_000,
            )
            .unwrap();
        assert_eq!((ok.clock_corrected, ok.implausible), (0, 0));
        assert_eq!(stored(&hub2), fine);
    }

    #[test]
    fn clock_steps_from_the_device_correct_what_the_old_clock_wrote_rollups_included() {
        let dir = tempfile::tempdir().unwrap();
        let hub = store(&dir);
        // Booted believing it was 2022-01-01; NTP set the clock 4 years forward at 60 s. The
        // clock is right now, so only the step says what is off.
        let wrong_boot = 1_640_995_200_000;
        let delta = 1_796_000_000_000 - wrong_boot;
        let step = ClockStep {
            boot_id: "boot-1".into(),
            from_ms: wrong_boot - 2_000,
            until_ms: wrong_boot + 60_000,
            delta_ms: delta,
        };
        let old = [wrong_boot + 30_000, wrong_boot + 59_000];
        let new = [wrong_boot + delta + 61_000];
        let all: Vec<i64> = old.iter().chain(&new).copied().collect();
        let bucket = wrong_boot; // an hour bucket of the old clock's
        let ingested = Ingestor::new()
            .ingest(
                &hub,
                &batch(1, NOW, &all, Some(bucket), vec![step]),
                NOW + 100,
            )
            .unwrap();
        assert_eq!((ingested.clock_corrected, ingested.implausible), (3, 0));
        assert_eq!(
            stored(&hub),
            [old[0] + delta, old[1] + delta, new[0]],
            "the new clock's sample is not moved"
        );
        // The hub's own hour of the raw samples, and the device's rollup moved by whole hours.
        let buckets = stored_hour_buckets(&hub);
        assert!(buckets.iter().all(|b| b % 3_600_000 == 0), "still aligned");
        assert!(buckets.iter().all(|b| *b > NOW - 2 * DAY), "{buckets:?}");
        assert!(buckets
            .iter()
            .any(|b| (b - (bucket + delta)).abs() <= 1_800_000));
    }

    /// A signed batch with absurd timestamps used to erase the whole fleet's data at the hub's
    /// next seal: they are stored and counted, and cannot drive retention.
    #[test]
    fn absurd_timestamps_in_a_signed_batch_delete_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let options = outpost_storage::Options {
            wall_clock: Some(std::sync::Arc::new(outpost_storage::ManualWallClock::new(
                NOW,
            ))),
            ..hub_store_options(1 << 30)
        };
        let hub = Store::open(dir.path().join("hub.redb"), options).unwrap();
        let history: Vec<i64> = (0..1_000).map(|i| NOW - DAY + i * 60_000).collect();
        let mut ingestor = Ingestor::new();
        ingestor
            .ingest(&hub, &batch(1, NOW, &history, None, vec![]), NOW)
            .unwrap();
        hub.seal().unwrap();
        let absurd = [i64::MIN, 0, i64::MAX];
        let ingested = ingestor
            .ingest(&hub, &batch(2, NOW, &absurd, None, vec![]), NOW)
            .unwrap();
        assert_eq!(ingested.implausible, 3);
        hub.seal().unwrap();
        let kept: Vec<i64> = stored(&hub)
            .into_iter()
            .filter(|t| (NOW - DAY..=NOW).contains(t))
            .collect();
        assert_eq!(kept, history);
    }

    #[test]
    fn implausible_timestamps_with_nothing_to_correct_them_are_kept_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let hub = store(&dir);
        // A right clock now, old data from a boot whose clock nobody measured.
        let stale = [1_600_000_000_000, NOW - 1_000];
        let ingested = Ingestor::new()
            .ingest(&hub, &batch(1, NOW, &stale, None, vec![]), NOW)
            .unwrap();
        assert_eq!((ingested.clock_corrected, ingested.implausible), (0, 1));
        assert_eq!(stored(&hub), stale);
    }
}
