//! The agent's side: building batches from the store's change feed, keeping them until the hub
//! acknowledges them, resending them (same epoch and sequence number, so the hub can tell) when
//! no acknowledgement comes, and confirming to the store only what the hub has made durable, in
//! send order. No network here: [`crate::uplink`] moves the payloads.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_storage::codec::encode_samples;
use outpost_storage::{ChunkReceipt, HeadMark, Store, WriteBatch};

use crate::state_keys::{AgentKey, KeptKey};

use crate::message::{
    Ack, AckStatus, Batch, BatchBody, BatchHeader, ClockStep, DeviceKey, LiveSamples, LogLine,
    SeriesDef, StoredChunk, PROTOCOL_VERSION,
};

/// A batch ready to publish: its sequence number and payload.
pub type Outgoing = (u64, Arc<Vec<u8>>);

/// Settings of the outbox.
#[derive(Debug, Clone)]
pub struct OutboxOptions {
    /// The largest payload published (the broker's and client's packet limits are set above it).
    pub max_batch_bytes: usize,
    /// Batches sent and not yet acknowledged, at most.
    pub max_in_flight: usize,
    pub zstd_level: i32,
    /// Every batch carries the definitions of all the series it names, not only of those no hub
    /// has acknowledged: for several hubs splitting the fleet through a shared subscription,
    /// where each batch may reach a hub that has not seen the ones before it.
    pub self_contained: bool,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            max_batch_bytes: 128 << 10,
            max_in_flight: 8,
            zstd_level: 3,
            self_contained: false,
        }
    }
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    /// Kept to be sent again with the clock of the moment (`sent_wall_ms`, `sent_uptime_ms`
    /// and the steps recorded by then): the hub measures the device's clock by the send time,
    /// and a batch sent again minutes later with its first send time would read as a clock
    /// minutes behind.
    batch: Batch,
    /// Where the live stream stood before and after this batch.
    start_mark: Option<HeadMark>,
    end_mark: HeadMark,
    receipts: Vec<ChunkReceipt>,
    defs: Vec<u32>,
    /// The number after the last kept log line it carries, if it carries any.
    lines_end: Option<u64>,
    sent_at: Instant,
    acked: bool,
    samples: usize,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Stored at the hub; `confirmed` batches are now confirmed to the store.
    Stored { confirmed: usize },
    /// For a batch no longer in flight (an old epoch, a resend acknowledged twice).
    Stale,
    /// The hub lacked series definitions: the batches in flight are rebuilt with them.
    Rewound,
    /// The hub refused the batch for good; it is dropped from the feed's view, logged by the caller.
    Rejected(String),
    /// The hub does not accept this protocol version.
    UnsupportedVersion(Vec<u16>),
}

/// Counters for the agent's self-metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub batches_sent: u64,
    pub batches_resent: u64,
    pub batches_acked: u64,
    pub bytes_sent: u64,
    pub samples_confirmed: u64,
}

pub struct Outbox {
    device: String,
    key: DeviceKey,
    boot_id: String,
    epoch: u64,
    next_seq: u64,
    mark: Option<HeadMark>,
    in_flight: VecDeque<InFlight>,
    /// Series the hub has acknowledged a definition of in this process's lifetime.
    known: HashSet<u32>,
    /// The first kept log line the hub has not acknowledged, and whether that moved since it
    /// was last saved.
    lines_next: u64,
    lines_moved: bool,
    options: OutboxOptions,
    pub stats: OutboxStats,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("device", &self.device)
            .field("epoch", &self.epoch)
            .field("next_seq", &self.next_seq)
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

/// How far apart two epochs of one store can be told to be: one a start, so a thousand
/// restarts. An epoch further from the last one seen is a store that started over (the hub's
/// line numbering and ack counts go by it).
pub const SAME_STORE_EPOCHS: u64 = 1000;

/// The first epoch of a store that holds none: random in `[2^32, 2^62)`, not 1. A store that
/// starts over (the device flashed again, a damaged store replaced) would otherwise number its
/// batches as its predecessor did, and the hub, which has seen those `(epoch, seq)`, would take
/// them for resends and drop them. Random, not the clock's: a Jetson without a battery for its
/// clock boots at the same time every time. The numbers still grow by one a start from there.
fn first_epoch() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    // Keyed from the operating system's randomness, as std seeds its hash maps.
    let random = RandomState::new().hash_one(std::time::Instant::now());
    const LOW: u64 = 1 << 32;
    LOW + random % ((1 << 62) - LOW)
}

impl Outbox {
    /// Starts a new epoch, made durable before any batch of it is built: a sequence number that
    /// a crash lost is never reused within an epoch.
    pub fn open(
        store: &Store,
        device: &str,
        key: DeviceKey,
        boot_id: &str,
        options: OutboxOptions,
    ) -> Result<Outbox, outpost_storage::Error> {
        let epoch = store
            .get(&AgentKey::Epoch)?
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map_or_else(first_epoch, |previous| u64::from_le_bytes(previous) + 1);
        let lines_next = store
            .get(&AgentKey::LinesShipped)?
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map_or(0, u64::from_le_bytes);
        let mut write = WriteBatch::default();
        write.put(&AgentKey::Epoch, epoch.to_le_bytes().to_vec());
        store.write(write)?;
        store.sync()?;
        Ok(Outbox {
            device: device.to_string(),
            key,
            boot_id: boot_id.to_string(),
            epoch,
            next_seq: 1,
            mark: None,
            in_flight: VecDeque::new(),
            known: HashSet::new(),
            lines_next,
            lines_moved: false,
            options,
            stats: OutboxStats::default(),
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Builds the next batch from what the store holds that is neither confirmed nor in flight:
    /// live samples first, backlog chunks in the rest of the room. `None` when there is nothing
    /// to send or the in-flight window is full.
    /// `clock_steps`: the device's record of its clock's steps, which the batch carries whole:
    /// the hub corrects a timestamp of an earlier clock by every step after it, not only by
    /// the one whose range holds it.
    pub fn next_batch(
        &mut self,
        store: &Store,
        wall_ms: i64,
        uptime_ms: u64,
        clock_steps: &[ClockStep],
    ) -> Result<Option<Outgoing>, outpost_storage::Error> {
        if self.in_flight.len() >= self.options.max_in_flight {
            return Ok(None);
        }
        let in_flight_chunks: HashSet<ChunkReceipt> = self
            .in_flight
            .iter()
            .flat_map(|b| b.receipts.iter().copied())
            .collect();
        let pending_defs: HashSet<u32> = self
            .in_flight
            .iter()
            .flat_map(|b| b.defs.iter().copied())
            .collect();
        let lines_from = self
            .in_flight
            .iter()
            .filter_map(|b| b.lines_end)
            .max()
            .unwrap_or(0)
            .max(self.lines_next);
        // A batch that comes out too large is rebuilt from less: reading the feed is idempotent.
        let mut room = self.options.max_batch_bytes;
        loop {
            let live = store.live_since(self.mark.as_ref(), room / 2);
            let chunks = store.dirty_chunks(room / 2, &in_flight_chunks)?;
            let lines = kept_lines_from(store, lines_from, room / 4)?;
            if live.samples() == 0 && chunks.is_empty() && lines.is_empty() {
                if live.mark != self.mark.clone().unwrap_or_default() {
                    // Only the mark moved (a seal started a new head): nothing to ship.
                    self.mark = Some(live.mark);
                }
                return Ok(None);
            }
            let (mut body, defs, samples) = self.batch_body(store, &live, &chunks, &pending_defs);
            let lines_end = lines.last().map(|line| line.seq + 1);
            body.lines = lines;
            let backlog = store.backlog()?;
            let batch = Batch {
                header: BatchHeader {
                    device: self.device.clone(),
                    epoch: self.epoch,
                    seq: self.next_seq,
                    boot_id: self.boot_id.clone(),
                    sent_wall_ms: wall_ms,
                    sent_uptime_ms: uptime_ms,
                    oldest_unacked_ms: backlog.oldest_ms,
                    body_bytes: 0,
                    clock_steps: clock_steps.to_vec(),
                },
                body,
                version: PROTOCOL_VERSION,
            };
            let payload = batch.encode(&self.key, self.options.zstd_level);
            if payload.len() > self.options.max_batch_bytes && room > 1024 {
                room /= 2;
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let payload = Arc::new(payload);
            self.stats.batches_sent += 1;
            self.stats.bytes_sent += payload.len() as u64;
            self.in_flight.push_back(InFlight {
                seq,
                batch,
                start_mark: self.mark.clone(),
                end_mark: live.mark.clone(),
                receipts: chunks.iter().map(|c| c.receipt()).collect(),
                defs,
                lines_end,
                sent_at: Instant::now(),
                acked: false,
                samples,
            });
            self.mark = Some(live.mark);
            return Ok(Some((seq, payload)));
        }
    }

    /// The body of a batch from `live` samples and backlog `chunks`, with the definitions of the
    /// series the hub may not have; the ids defined, and how many live samples it holds.
    fn batch_body(
        &self,
        store: &Store,
        live: &outpost_storage::LiveChanges,
        chunks: &[outpost_storage::DirtyChunk],
        pending_defs: &HashSet<u32>,
    ) -> (BatchBody, Vec<u32>, usize) {
        let self_contained = self.options.self_contained;
        let mut body = BatchBody::default();
        let mut defs = Vec::new();
        let mut samples = 0;
        let mut define = |id: u32, key: &outpost_storage::SeriesKey, body: &mut BatchBody| {
            let hub_has_it = self.known.contains(&id) || pending_defs.contains(&id);
            if (self_contained || !hub_has_it) && !defs.contains(&id) {
                defs.push(id);
                body.defs.push(SeriesDef {
                    id,
                    key: &key.to_string(),
                });
            }
        };
        for (id, points) in &live.series {
            let Some(key) = store.series_key(*id) else {
                continue;
            };
            define(id.0, &key, &mut body);
            let mut sorted = points.clone();
            // Write order has the last write of a timestamp last; keep that one.
            sorted.reverse();
            sorted.sort_by_key(|p| p.0);
            sorted.dedup_by_key(|p| p.0);
            let (timestamps, values): (Vec<i64>, Vec<f64>) = sorted.into_iter().unzip();
            samples += timestamps.len();
            body.live.push(LiveSamples {
                series: id.0,
                samples: &encode_samples(&timestamps, &values),
            });
        }
        for chunk in chunks {
            define(chunk.series.0, &chunk.key, &mut body);
            body.chunks.push(StoredChunk {
                series: chunk.series.0,
                tier: chunk.tier as u8,
                window_start: chunk.window_start,
                bytes: chunk.bytes.clone(),
            });
        }
        (body, defs, samples)
    }

    /// Applies the hub's answer to one batch.
    pub fn on_ack(&mut self, store: &Store, ack: &Ack) -> AckOutcome {
        if ack.epoch != self.epoch {
            return AckOutcome::Stale;
        }
        let Some(index) = self.in_flight.iter().position(|b| b.seq == ack.seq) else {
            return AckOutcome::Stale;
        };
        match &ack.status {
            // A refused batch is confirmed too: nothing the device can change makes the hub
            // take it, and one bad sample must not stop the whole feed. The caller logs it.
            AckStatus::Stored { .. } | AckStatus::Rejected { .. } => {
                self.in_flight[index].acked = true;
                self.stats.batches_acked += 1;
                let mut confirmed = 0;
                while self.in_flight.front().is_some_and(|b| b.acked) {
                    let batch = self.in_flight.pop_front().expect("front exists");
                    store.confirm_live(&batch.end_mark);
                    store.confirm_chunks(&batch.receipts);
                    self.known.extend(batch.defs.iter().copied());
                    self.stats.samples_confirmed += batch.samples as u64;
                    if let Some(end) = batch.lines_end {
                        self.lines_next = self.lines_next.max(end);
                        self.lines_moved = true;
                    }
                    confirmed += 1;
                }
                match &ack.status {
                    AckStatus::Rejected { reason } => AckOutcome::Rejected(reason.clone()),
                    _ => AckOutcome::Stored { confirmed },
                }
            }
            AckStatus::UnknownSeries { ids } => {
                for id in ids {
                    self.known.remove(id);
                }
                self.rewind();
                AckOutcome::Rewound
            }
            AckStatus::UnsupportedVersion { supported } => {
                AckOutcome::UnsupportedVersion(supported.clone())
            }
        }
    }

    /// The write that records how far the hub has acknowledged the kept log lines, when that
    /// moved: saved so that a restarted agent does not send them again (if it is lost, the
    /// hub keeps a line once per number anyway).
    pub fn lines_shipped_write(&mut self) -> Option<WriteBatch> {
        if !std::mem::take(&mut self.lines_moved) {
            return None;
        }
        let mut write = WriteBatch::default();
        write.put(
            &AgentKey::LinesShipped,
            self.lines_next.to_le_bytes().to_vec(),
        );
        Some(write)
    }

    /// Forgets what is in flight and reads it again from the store, with fresh definitions.
    fn rewind(&mut self) {
        if let Some(first) = self.in_flight.front() {
            self.mark = first.start_mark.clone();
        }
        self.in_flight.clear();
    }

    /// Batches whose acknowledgement is overdue, to publish again: the same content, epoch and
    /// sequence number (so that the hub counts and discards a duplicate), stamped with the
    /// clock of now (`clock`: wall, uptime and the steps recorded so far) and signed again.
    pub fn due_resends(
        &mut self,
        now: Instant,
        timeout: Duration,
        clock: (i64, u64, &[ClockStep]),
    ) -> Vec<Outgoing> {
        let (wall_ms, uptime_ms, steps) = clock;
        let mut out = Vec::new();
        for in_flight in self.in_flight.iter_mut().filter(|b| !b.acked) {
            if now.duration_since(in_flight.sent_at) >= timeout {
                in_flight.sent_at = now;
                let header = &mut in_flight.batch.header;
                header.sent_wall_ms = wall_ms;
                header.sent_uptime_ms = uptime_ms;
                header.clock_steps = steps.to_vec();
                let payload = in_flight.batch.encode(&self.key, self.options.zstd_level);
                self.stats.batches_resent += 1;
                self.stats.bytes_sent += payload.len() as u64;
                out.push((in_flight.seq, Arc::new(payload)));
            }
        }
        out
    }

    /// Every unacknowledged batch, to publish again after a reconnect.
    pub fn all_unacked(&mut self, clock: (i64, u64, &[ClockStep])) -> Vec<Outgoing> {
        self.due_resends(Instant::now(), Duration::ZERO, clock)
    }
}

/// The most kept log lines one batch carries.
const MAX_LINES: usize = 500;

/// The kept log lines from number `from` on, oldest first, up to about `budget` bytes of text
/// (at least one, if there is one). A line that does not read is skipped with a warning.
fn kept_lines_from(
    store: &Store,
    from: u64,
    budget: usize,
) -> Result<Vec<LogLine>, outpost_storage::Error> {
    let mut lines = Vec::new();
    let mut bytes = 0;
    let first = store.range_first(&KeptKey::Line(from), &KeptKey::Line(u64::MAX), MAX_LINES)?;
    for (key, value) in first {
        match serde_json::from_slice::<LogLine>(&value) {
            Ok(line) => {
                bytes += line.weight();
                lines.push(line);
            }
            Err(error) => tracing::warn!(key, %error, "an unreadable kept log line"),
        }
        if bytes >= budget {
            break;
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_storage::{Options, SeriesKey};

    fn write(store: &Store, from: i64, to: i64) {
        let id = store.series_id(&SeriesKey::parse("m").unwrap()).unwrap();
        let mut batch = WriteBatch::default();
        for ts in from..to {
            batch.sample(id, ts * 1000, ts as f64);
        }
        store.write(batch).unwrap();
    }

    fn stored(seq: u64, epoch: u64) -> Ack {
        Ack {
            device: "d".into(),
            epoch,
            seq,
            status: AckStatus::Stored {
                samples: 0,
                duplicate: false,
            },
        }
    }

    fn keep_lines(store: &Store, seqs: std::ops::Range<u64>) {
        let mut write = WriteBatch::default();
        for seq in seqs {
            let line = LogLine::hit(seq, &format!("ERROR {seq}"));
            write.put(&KeptKey::Line(seq), serde_json::to_vec(&line).unwrap());
        }
        store.write(write).unwrap();
    }

    fn lines_of(payload: &[u8], key: &DeviceKey) -> Vec<u64> {
        let batch = Batch::decode(payload, "d", key, &crate::Limits::default()).unwrap();
        batch.body.lines.iter().map(|l| l.seq).collect()
    }

    /// Kept lines go out with the batches, samples or not, each once while in flight; an ack
    /// moves past them, and a restarted outbox starts after what was acknowledged.
    #[test]
    fn kept_lines_ship_once_and_resume_after_the_acknowledged_ones() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            track_changes: true,
            ..Options::default()
        };
        let store = Store::open(dir.path().join("a.redb"), options).unwrap();
        let key = DeviceKey::new(vec![1; 16]).unwrap();
        let mut outbox =
            Outbox::open(&store, "d", key.clone(), "b", OutboxOptions::default()).unwrap();
        keep_lines(&store, 3..6);
        let (first, payload) = outbox.next_batch(&store, 0, 0, &[]).unwrap().unwrap();
        assert_eq!(lines_of(&payload, &key), [3, 4, 5], "lines without samples");
        keep_lines(&store, 6..8);
        write(&store, 0, 2);
        let (second, payload) = outbox.next_batch(&store, 0, 0, &[]).unwrap().unwrap();
        assert_eq!(lines_of(&payload, &key), [6, 7], "not those in flight");
        assert!(outbox.next_batch(&store, 0, 0, &[]).unwrap().is_none());
        assert!(
            outbox.lines_shipped_write().is_none(),
            "nothing acknowledged"
        );
        outbox.on_ack(&store, &stored(first, outbox.epoch()));
        let save = outbox
            .lines_shipped_write()
            .expect("the first batch's lines are acknowledged");
        store.write(save).unwrap();
        drop(outbox);
        // Restarted with the second batch unacknowledged: its lines go again, the first's not.
        let mut outbox =
            Outbox::open(&store, "d", key.clone(), "b", OutboxOptions::default()).unwrap();
        let (_, payload) = outbox.next_batch(&store, 0, 0, &[]).unwrap().unwrap();
        assert_eq!(lines_of(&payload, &key), [6, 7]);
        let _ = second;
    }

    #[test]
    fn acks_confirm_in_send_order_only_and_epochs_grow() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            track_changes: true,
            ..Options::default()
        };
        let store = Store::open(dir.path().join("a.redb"), options.clone()).unwrap();
        let key = DeviceKey::new(vec![1; 16]).unwrap();
        let mut outbox =
            Outbox::open(&store, "d", key.clone(), "b", OutboxOptions::default()).unwrap();
        let epoch = outbox.epoch();
        assert!((1 << 32..1 << 62).contains(&epoch), "{epoch}");
        write(&store, 0, 5);
        let (first, _) = outbox.next_batch(&store, 0, 0, &[]).unwrap().unwrap();
        write(&store, 5, 10);
        let (second, _) = outbox.next_batch(&store, 0, 0, &[]).unwrap().unwrap();
        assert!(
            outbox.next_batch(&store, 0, 0, &[]).unwrap().is_none(),
            "nothing new to send"
        );
        // The second batch is stored, the first was lost: nothing may be confirmed yet.
        assert_eq!(
            outbox.on_ack(&store, &stored(second, epoch)),
            AckOutcome::Stored { confirmed: 0 }
        );
        assert_eq!(store.backlog().unwrap().live_unconfirmed_samples, 10);
        assert_eq!(
            outbox.on_ack(&store, &stored(second, epoch + 1)),
            AckOutcome::Stale,
            "another epoch"
        );
        assert_eq!(
            outbox.on_ack(&store, &stored(first, epoch)),
            AckOutcome::Stored { confirmed: 2 }
        );
        assert_eq!(store.backlog().unwrap().live_unconfirmed_samples, 0);
        assert_eq!(outbox.in_flight(), 0);
        drop(outbox);
        let outbox = Outbox::open(&store, "d", key.clone(), "b", OutboxOptions::default()).unwrap();
        assert_eq!(outbox.epoch(), epoch + 1, "each start is a new epoch");
        store.close().unwrap();

        // A store that starts over does not start where its predecessor did.
        let fresh = Store::open(dir.path().join("b.redb"), options).unwrap();
        let again = Outbox::open(&fresh, "d", key, "b", OutboxOptions::default()).unwrap();
        assert_ne!(again.epoch(), epoch);
        assert!((1 << 32..1 << 62).contains(&again.epoch()));
    }
}
