//! The log lines that devices keep and send with their batches (protocol version 3), as the hub
//! keeps them: per device the newest [`HUB_LINES`], at most [`HUB_LINE_BYTES`] of them, each
//! line once per number however often it comes. A device's lines are bounded by its own
//! quota, so that one device sending a flood pushes out only its own lines; a field longer than
//! any agent sends is cut, not refused, so that one odd line does not stop a device's batches.

use std::collections::{HashMap, VecDeque};

use outpost_storage::{Store, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::message::LogLine;
use crate::state_keys::IngestKey;

/// The most lines the hub keeps per device.
pub const HUB_LINES: usize = 2000;
/// The most bytes of lines the hub keeps per device.
pub const HUB_LINE_BYTES: usize = 1 << 20;
/// The longest line text kept (agents cut theirs at 1 KiB).
const MAX_TEXT: usize = 4096;
/// The longest source, unit, priority or pattern name kept.
const MAX_NAME: usize = 256;
/// The most pattern names kept on one line.
const MAX_PATTERNS: usize = 16;

impl LogLine {
    /// What the line weighs against a bound in bytes: its text and names, and a little for the
    /// rest. The agent's and the hub's bounds both count this way.
    pub fn weight(&self) -> usize {
        self.line.len()
            + self.source.len()
            + self.unit.len()
            + self.patterns.iter().map(String::len).sum::<usize>()
            + 64
    }

    /// Whether its text, source, unit, priority or a pattern's name holds `search`, which is
    /// in lower case (ignoring case; the empty search is held by every line).
    pub fn holds(&self, search: &str) -> bool {
        search.is_empty()
            || [&self.line, &self.source, &self.unit, &self.priority]
                .into_iter()
                .chain(&self.patterns)
                .any(|text| text.to_lowercase().contains(search))
    }
}

/// `text` cut to at most `max` bytes, at a character boundary, and whether it was cut.
pub fn cut(text: &str, max: usize) -> (String, bool) {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_string(), end < text.len())
}

/// Of `entries` (stored lines as JSON, oldest first), the newest that hold `search` (see
/// [`LogLine::holds`]; ignoring case), at most `limit`. An entry that does not read is skipped.
pub fn newest_holding(entries: Vec<(String, Vec<u8>)>, search: &str, limit: usize) -> Vec<LogLine> {
    let search = search.to_lowercase();
    entries
        .into_iter()
        .rev()
        .filter_map(|(_, value)| serde_json::from_slice::<LogLine>(&value).ok())
        .filter(|line| line.holds(&search))
        .take(limit)
        .collect()
}

/// The line as the hub keeps it: every field within its bound.
fn bounded(line: &LogLine) -> LogLine {
    let (text, text_cut) = cut(&line.line, MAX_TEXT);
    let name = |text: &str| cut(text, MAX_NAME).0;
    LogLine {
        seq: line.seq,
        at_ms: line.at_ms,
        source: name(&line.source),
        unit: name(&line.unit),
        priority: name(&line.priority),
        patterns: line
            .patterns
            .iter()
            .take(MAX_PATTERNS)
            .map(|p| name(p))
            .collect(),
        line: text,
        cut: line.cut || text_cut,
    }
}

/// The numbers and weights of the lines the hub keeps of each device, read from the store on a
/// device's first batch with lines.
#[derive(Debug, Default)]
pub struct HubLines {
    devices: HashMap<String, DeviceLines>,
}

#[derive(Debug, Default)]
struct DeviceLines {
    /// Oldest first, by number.
    seqs: VecDeque<(u64, usize)>,
    bytes: usize,
    numbering: Option<Numbering>,
}

/// Which life of the device's store its lines come from. A store that starts over (the device
/// flashed again) numbers its lines from 0 again, under a new random epoch (`outbox.rs`); the
/// hub files them after the lines it holds, by adding `offset` to their numbers, so that they
/// are neither taken for lines already kept nor pushed out at once as the oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Numbering {
    /// The newest epoch that brought lines of this life.
    epoch: u64,
    offset: u64,
}

impl HubLines {
    /// Puts `lines` of `device` in `write` (those not kept already), and takes out its oldest
    /// beyond the bounds. Returns how many were new.
    /// `epoch` is the batch's: it tells when the device's store started over.
    pub fn keep(
        &mut self,
        store: &Store,
        device: &str,
        epoch: u64,
        lines: &[LogLine],
        write: &mut WriteBatch,
    ) -> Result<usize, outpost_storage::Error> {
        if lines.is_empty() {
            return Ok(0);
        }
        if !self.devices.contains_key(device) {
            let mut kept = DeviceLines::default();
            for (_, value) in store.list(&IngestKey::Lines { device })? {
                if let Ok(line) = serde_json::from_slice::<LogLine>(&value) {
                    kept.bytes += line.weight();
                    kept.seqs.push_back((line.seq, line.weight()));
                }
            }
            kept.numbering = store
                .get(&IngestKey::LineNumbering { device })?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            self.devices.insert(device.to_string(), kept);
        }
        let kept = self.devices.get_mut(device).expect("inserted above");
        let numbering = kept.numbering_for(epoch);
        if kept.numbering != Some(numbering) {
            kept.numbering = Some(numbering);
            write.put(
                &IngestKey::LineNumbering { device },
                serde_json::to_vec(&numbering).expect("numbering serializes"),
            );
        }
        let mut new = 0;
        for line in lines {
            let mut line = bounded(line);
            line.seq = line.seq.saturating_add(numbering.offset);
            let at = kept.seqs.partition_point(|(seq, _)| *seq < line.seq);
            if kept.seqs.get(at).is_some_and(|(seq, _)| *seq == line.seq) {
                continue;
            }
            // Older than every line kept, with the quota full: it would go at once.
            if at == 0 && kept.seqs.len() >= HUB_LINES {
                continue;
            }
            let bytes = line.weight();
            kept.seqs.insert(at, (line.seq, bytes));
            kept.bytes += bytes;
            write.put(
                &IngestKey::Line {
                    device,
                    seq: line.seq,
                },
                serde_json::to_vec(&line).expect("log lines serialize"),
            );
            new += 1;
        }
        while kept.seqs.len() > HUB_LINES || kept.bytes > HUB_LINE_BYTES {
            let Some((seq, bytes)) = kept.seqs.pop_front() else {
                break;
            };
            kept.bytes -= bytes;
            write.remove(&IngestKey::Line { device, seq });
        }
        Ok(new)
    }
}

impl DeviceLines {
    /// The numbering for a batch of `epoch`: the current one (its epoch moved on if newer),
    /// or, for an epoch too far from it to be a restart of the same store, a new one that files
    /// the lines after every line kept.
    fn numbering_for(&self, epoch: u64) -> Numbering {
        match self.numbering {
            None => Numbering { epoch, offset: 0 },
            Some(current) if current.epoch.abs_diff(epoch) <= crate::outbox::SAME_STORE_EPOCHS => {
                Numbering {
                    epoch: current.epoch.max(epoch),
                    offset: current.offset,
                }
            }
            Some(_) => Numbering {
                epoch,
                offset: self.seqs.back().map_or(0, |(seq, _)| seq.saturating_add(1)),
            },
        }
    }
}

/// The lines the hub keeps of `device`, newest first: those whose text, source, unit, priority
/// or pattern names hold `search` (ignoring case; all when empty), at most `limit`.
pub fn newest(
    store: &Store,
    device: &str,
    search: &str,
    limit: usize,
) -> Result<Vec<LogLine>, outpost_storage::Error> {
    let entries = store.list(&IngestKey::Lines { device })?;
    Ok(newest_holding(entries, search, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, text: &str) -> LogLine {
        LogLine::hit(seq, text)
    }

    #[test]
    fn each_device_keeps_its_newest_lines_once_within_its_own_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("h.redb"), Default::default()).unwrap();
        let mut hub = HubLines::default();
        let keep = |hub: &mut HubLines, device: &str, lines: &[LogLine]| {
            let mut write = WriteBatch::default();
            let new = hub
                .keep(&store, device, 1 << 40, lines, &mut write)
                .unwrap();
            store.write(write).unwrap();
            new
        };
        assert_eq!(keep(&mut hub, "quiet", &[line(0, "ERROR disk")]), 1);
        // A flood from another device: its own oldest go, the quiet device's line stays.
        let flood: Vec<LogLine> = (0..HUB_LINES as u64 + 50)
            .map(|n| line(n, &format!("ERROR flood {n}")))
            .collect();
        assert_eq!(keep(&mut hub, "loud", &flood), HUB_LINES + 50);
        // Sent again (a new epoch after a restart): nothing new.
        assert_eq!(keep(&mut hub, "loud", &flood[HUB_LINES..]), 0);
        let loud = newest(&store, "loud", "", usize::MAX).unwrap();
        assert_eq!(loud.len(), HUB_LINES);
        assert_eq!(loud[0].line, format!("ERROR flood {}", HUB_LINES + 49));
        assert_eq!(newest(&store, "quiet", "disk", 10).unwrap().len(), 1);
        // A new hub process reads what is kept, and still takes a line once.
        let mut again = HubLines::default();
        assert_eq!(keep(&mut again, "quiet", &[line(0, "ERROR disk")]), 0);
        assert_eq!(keep(&mut again, "quiet", &[line(1, "ERROR net")]), 1);
    }

    #[test]
    fn a_store_that_starts_over_has_its_lines_filed_after_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("h.redb"), Default::default()).unwrap();
        let keep = |hub: &mut HubLines, epoch: u64, lines: &[LogLine]| {
            let mut write = WriteBatch::default();
            let new = hub.keep(&store, "d", epoch, lines, &mut write).unwrap();
            store.write(write).unwrap();
            new
        };
        let old_life = 7 << 40;
        let full: Vec<LogLine> = (0..HUB_LINES as u64)
            .map(|n| line(n, &format!("old {n}")))
            .collect();
        let mut hub = HubLines::default();
        assert_eq!(keep(&mut hub, old_life, &full), HUB_LINES);
        // Restarts of the same store go on numbering as before.
        assert_eq!(keep(&mut hub, old_life + 3, &[line(2, "resent")]), 0);
        // Flashed again: a new random epoch, lines from 0. Neither taken for kept lines nor
        // pushed out as the oldest, on this hub and on one started afresh.
        let new_life = 3 << 33;
        assert_eq!(
            keep(&mut hub, new_life, &[line(0, "new 0"), line(1, "new 1")]),
            2
        );
        let mut restarted = HubLines::default();
        assert_eq!(keep(&mut restarted, new_life + 1, &[line(1, "new 1")]), 0);
        assert_eq!(keep(&mut restarted, new_life + 1, &[line(2, "new 2")]), 1);
        let newest: Vec<String> = newest(&store, "d", "", 4)
            .unwrap()
            .into_iter()
            .map(|l| l.line)
            .collect();
        assert_eq!(
            newest,
            ["new 2", "new 1", "new 0", &format!("old {}", HUB_LINES - 1)]
        );
    }

    #[test]
    fn hostile_fields_are_cut_to_their_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("h.redb"), Default::default()).unwrap();
        let mut hostile = line(9, &"é".repeat(10_000));
        hostile.source = "s".repeat(10_000);
        hostile.patterns = vec!["p".repeat(1000); 1000];
        let mut write = WriteBatch::default();
        HubLines::default()
            .keep(&store, "d", 1 << 40, &[hostile], &mut write)
            .unwrap();
        store.write(write).unwrap();
        let kept = &newest(&store, "d", "", 1).unwrap()[0];
        assert!(kept.cut && kept.line.len() <= MAX_TEXT && kept.source.len() <= MAX_NAME);
        assert_eq!(kept.patterns.len(), MAX_PATTERNS);
        assert!(kept.patterns.iter().all(|p| p.len() <= MAX_NAME));
    }
}
