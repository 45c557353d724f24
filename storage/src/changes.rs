//! The change feed: what a store has accepted that its one subscriber (the sync layer) has not
//! had acknowledged yet, in the order it was written, whatever the samples' timestamps.
//!
//! Two streams, so that live data keeps flowing while a backlog drains:
//! - **live**: samples still in the head, read after a [`HeadMark`] and confirmed with one.
//! - **backlog**: chunks that a seal wrote while some of their samples were unconfirmed, listed
//!   in the `sync.dirty` table (oldest window first) and shipped as the store holds them.
//!
//! At a seal, the unconfirmed tail of the head either moves into the next head (when it is small,
//! as when the subscriber is online and only the last seconds are in flight), so it stays live,
//! or marks its chunks dirty (when the subscriber has been away), so that a long outage costs
//! nothing but a list of chunk keys. Either way it is durable with the seal's commit or the next
//! log frame; nothing the store accepted is ever left out of the feed.

use crate::fasthash::FastMap;
use crate::{SeriesId, SeriesKey, Tier};

/// A position in the live stream: how many samples of each series of one head generation the
/// subscriber has read. Opaque; a mark of an earlier generation reads the current head whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadMark {
    pub(crate) generation: u64,
    /// Sorted by series id.
    pub(crate) lengths: Vec<(u32, u32)>,
}

impl HeadMark {
    pub(crate) fn length(&self, series: u32) -> usize {
        self.lengths
            .binary_search_by_key(&series, |&(id, _)| id)
            .map_or(0, |i| self.lengths[i].1 as usize)
    }
}

/// Live samples read from the head.
#[derive(Debug, Clone, Default)]
pub struct LiveChanges {
    /// Per series, samples in write order (a later one of the same timestamp wins).
    pub series: Vec<(SeriesId, Vec<(i64, f64)>)>,
    /// Where the next read starts; confirm it once the samples are safely elsewhere.
    pub mark: HeadMark,
}

impl LiveChanges {
    pub fn samples(&self) -> usize {
        self.series.iter().map(|(_, s)| s.len()).sum()
    }
}

/// One backlog chunk: a `(series, tier, window)` of the store, as it holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyChunk {
    pub series: SeriesId,
    pub key: SeriesKey,
    pub tier: Tier,
    pub window_start: i64,
    /// The stored chunk, framed and compressed ([`crate::codec::decode_chunk`] or
    /// [`crate::codec::decode_rollup_chunk`] reads it).
    pub bytes: Vec<u8>,
    pub(crate) version: u64,
}

impl DirtyChunk {
    /// What [`crate::Store::confirm_chunks`] takes.
    pub fn receipt(&self) -> ChunkReceipt {
        ChunkReceipt {
            key: (self.window_start, self.tier as u8, self.series.0),
            version: self.version,
        }
    }
}

/// Proof that a backlog chunk was delivered as of one version: if a later seal dirtied the chunk
/// again, confirming the older version leaves it in the backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkReceipt {
    pub(crate) key: (i64, u8, u32),
    pub(crate) version: u64,
}

/// How far behind the subscriber is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    pub live_unconfirmed_samples: u64,
    pub dirty_chunks: u64,
    /// The start of the oldest dirty window, or the oldest unconfirmed live sample's timestamp.
    pub oldest_ms: Option<i64>,
}

/// The store's side of the feed, kept under the head's lock.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pub generation: u64,
    pub confirmed: HeadMark,
    /// Delivered backlog entries, removed from `sync.dirty` by the next seal's commit.
    pub delivered: FastMap<(i64, u8, u32), u64>,
}

impl Tracker {
    pub fn confirm(&mut self, mark: &HeadMark) {
        if mark.generation != self.generation {
            return;
        }
        if self.confirmed.generation != self.generation {
            self.confirmed = HeadMark {
                generation: self.generation,
                lengths: Vec::new(),
            };
        }
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(mark.lengths.len());
        let (mut a, mut b) = (
            self.confirmed.lengths.iter().peekable(),
            mark.lengths.iter().peekable(),
        );
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&(ia, la)), Some(&&(ib, lb))) => {
                    if ia == ib {
                        merged.push((ia, la.max(lb)));
                        a.next();
                        b.next();
                    } else if ia < ib {
                        merged.push((ia, la));
                        a.next();
                    } else {
                        merged.push((ib, lb));
                        b.next();
                    }
                }
                (Some(&&x), None) => {
                    merged.push(x);
                    a.next();
                }
                (None, Some(&&x)) => {
                    merged.push(x);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.confirmed.lengths = merged;
    }

    /// How many samples of `series` (of the current generation) are confirmed.
    pub fn confirmed_length(&self, series: u32) -> usize {
        if self.confirmed.generation == self.generation {
            self.confirmed.length(series)
        } else {
            0
        }
    }
}
