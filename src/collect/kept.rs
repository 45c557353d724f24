//! The most recent log lines worth a look, kept in the agent's store beside the counters: the
//! journal's entries at priority `err` or worse, and every line (of a file or the journal) that
//! a pattern matched. Bounded in count and in bytes, oldest out first, each line cut at
//! [`MAX_LINE_BYTES`]. A line is kept in the same store write as the position it was read up to,
//! so that a restart keeps it once, like the counters.
//!
//! A backlog (a file that grew by gigabytes while the agent was stopped) cannot fill memory: a
//! round holds at most the bound's worth of candidates, the newest, as the store would.
//!
//! Nor can a storm wear the flash: each source keeps at most a burst of `lines` and then
//! `per_minute` lines a minute (a token bucket). A pattern that matches every line of a busy
//! application otherwise rewrote the whole bound every second, and sent it to the hub; now
//! the rest is counted in `outpost_log_lines_not_kept_total`, and a quiet source's lines stay
//! in the store while a loud one's are rationed.

#![deny(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use outpost_storage::{Store, WriteBatch};

/// The longest line kept, in bytes; a longer one is cut (at a character boundary) and marked.
pub const MAX_LINE_BYTES: usize = 1024;

/// One kept line: the form the batches carry it in (protocol version 3).
pub type KeptLine = outpost_sync::LogLine;
pub use outpost_sync::state_keys::KeptKey;

/// A line to keep, cut to [`MAX_LINE_BYTES`] (at a character boundary).
pub fn kept_line(at_ms: i64, source: &str, line: &str) -> KeptLine {
    let (line, cut) = outpost_sync::lines::cut(line, MAX_LINE_BYTES);
    KeptLine {
        seq: 0,
        at_ms,
        source: source.to_string(),
        unit: String::new(),
        priority: String::new(),
        patterns: Vec::new(),
        line,
        cut,
    }
}

/// How many lines, and how many bytes of them, are kept; and how many a source may keep a
/// minute once it has kept a burst of `lines`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepBounds {
    pub lines: usize,
    pub bytes: usize,
    pub per_minute: u32,
}

/// Lines waiting to be kept with their source's next save: the newest within the bounds.
#[derive(Debug, Default)]
pub struct Candidates {
    lines: VecDeque<KeptLine>,
    bytes: usize,
}

impl Candidates {
    pub fn push(&mut self, line: KeptLine, bounds: KeepBounds) {
        if bounds.lines == 0 {
            return;
        }
        self.bytes += line.weight();
        self.lines.push_back(line);
        while self.lines.len() > bounds.lines || self.bytes > bounds.bytes {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.weight(),
                None => break,
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn take(&mut self) -> VecDeque<KeptLine> {
        self.bytes = 0;
        std::mem::take(&mut self.lines)
    }

    /// Leaves the newest lines that `allowed` lets through (asked newest first), and gives how
    /// many of each source it took out.
    fn ration(&mut self, mut allowed: impl FnMut(&str) -> bool) -> BTreeMap<String, u64> {
        let mut left_out: BTreeMap<String, u64> = BTreeMap::new();
        let mut kept = VecDeque::with_capacity(self.lines.len());
        for line in self.take().into_iter().rev() {
            if allowed(&line.source) {
                self.bytes += line.weight();
                kept.push_front(line);
            } else {
                *left_out.entry(line.source).or_default() += 1;
            }
        }
        self.lines = kept;
        left_out
    }
}

/// What one source may still keep: a bucket of `KeepBounds::lines` tokens, refilled at
/// `per_minute`. Counted on the monotonic clock: a wall clock set back must not stop the
/// keeping, nor one set forward refill it.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    tokens: f64,
    at: Instant,
}

impl Allowance {
    fn refilled(self, bounds: KeepBounds, now: Instant) -> Allowance {
        let minutes = now.saturating_duration_since(self.at).as_secs_f64() / 60.0;
        Allowance {
            tokens: (self.tokens + minutes * f64::from(bounds.per_minute)).min(bounds.lines as f64),
            at: now.max(self.at),
        }
    }
}

/// The kept lines' index: their numbers and weights, oldest first.
#[derive(Debug, Default)]
pub struct KeptLines {
    index: VecDeque<(u64, usize)>,
    bytes: usize,
    next_seq: u64,
}

impl KeptLines {
    /// The index of what the store keeps.
    #[allow(clippy::disallowed_methods)] // called on the blocking pool
    pub fn load(store: &Store) -> Result<KeptLines, outpost_storage::Error> {
        let mut kept = KeptLines::default();
        for (key, value) in store.list(&KeptKey::All)? {
            let seq = key[KeptKey::All.to_string().len()..].parse::<u64>();
            let line = serde_json::from_slice::<KeptLine>(&value);
            match (seq, line) {
                (Ok(seq), Ok(line)) => {
                    kept.bytes += line.weight();
                    kept.index.push_back((seq, line.weight()));
                    kept.next_seq = seq + 1;
                }
                _ => tracing::warn!(key, "an unreadable kept log line"),
            }
        }
        Ok(kept)
    }

    /// Puts `candidates` in `write` under the next numbers, and takes out the oldest lines
    /// beyond `bounds`.
    pub fn keep(
        &mut self,
        candidates: &mut Candidates,
        bounds: KeepBounds,
        write: &mut WriteBatch,
    ) {
        for mut line in candidates.take() {
            line.seq = self.next_seq;
            self.next_seq += 1;
            let bytes = line.weight();
            write.put(
                &KeptKey::Line(line.seq),
                serde_json::to_vec(&line).expect("kept lines serialize"),
            );
            self.index.push_back((line.seq, bytes));
            self.bytes += bytes;
        }
        while self.index.len() > bounds.lines || self.bytes > bounds.bytes {
            let Some((seq, bytes)) = self.index.pop_front() else {
                break;
            };
            self.bytes -= bytes;
            write.remove(&KeptKey::Line(seq));
        }
    }
}

/// The kept lines' index, shared by the sources that keep lines (the files, the journal),
/// read from the store on first use; and each source's allowance.
#[derive(Debug, Default)]
pub struct Keeper(std::sync::Mutex<KeeperState>);

#[derive(Debug, Default)]
struct KeeperState {
    index: Option<KeptLines>,
    allowances: HashMap<String, Allowance>,
    /// Lines worth keeping that a source's allowance left out, since the agent started.
    not_kept: BTreeMap<String, u64>,
}

impl Keeper {
    /// [`KeptLines::keep`] of what each source's allowance lets through at `now`, with the
    /// index loaded first if it is not yet. Blocking: a store read the first time.
    pub fn keep(
        &self,
        store: &Store,
        candidates: &mut Candidates,
        bounds: KeepBounds,
        now: Instant,
        write: &mut WriteBatch,
    ) -> Result<(), outpost_storage::Error> {
        let mut state = self.0.lock().expect("kept lines lock");
        if state.index.is_none() {
            state.index = Some(KeptLines::load(store)?);
        }
        let KeeperState {
            index,
            allowances,
            not_kept,
        } = &mut *state;
        let left_out = candidates.ration(|source| {
            // Asked once a line: the source's name is copied only the first time.
            if !allowances.contains_key(source) {
                let full = Allowance {
                    tokens: bounds.lines as f64,
                    at: now,
                };
                allowances.insert(source.to_string(), full);
            }
            let Some(allowance) = allowances.get_mut(source) else {
                return false;
            };
            *allowance = allowance.refilled(bounds, now);
            let allowed = allowance.tokens >= 1.0;
            if allowed {
                allowance.tokens -= 1.0;
            }
            allowed
        });
        for (source, count) in left_out {
            *not_kept.entry(source).or_default() += count;
        }
        if let Some(index) = index.as_mut() {
            index.keep(candidates, bounds, write);
        }
        Ok(())
    }

    /// How many of `source`'s lines worth keeping its allowance left out.
    pub fn not_kept(&self, source: &str) -> u64 {
        let state = self.0.lock().expect("kept lines lock");
        state.not_kept.get(source).copied().unwrap_or(0)
    }
}

/// The kept lines, newest first: those whose text, source, unit, priority or pattern names hold
/// `search` (ignoring case; every line when empty), at most `limit`.
#[allow(clippy::disallowed_methods)] // called on the blocking pool
pub fn newest(
    store: &Store,
    search: &str,
    limit: usize,
) -> Result<Vec<KeptLine>, outpost_storage::Error> {
    let entries = store.list(&KeptKey::All)?;
    Ok(outpost_sync::lines::newest_holding(entries, search, limit))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests, not on an async thread
mod tests {
    use super::*;

    fn line(n: usize, text: &str) -> KeptLine {
        let mut line = kept_line(n as i64, "app", text);
        line.patterns = vec!["errors".into()];
        line
    }

    #[test]
    fn lines_are_kept_newest_within_the_bounds_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let bounds = KeepBounds {
            lines: 3,
            bytes: 1 << 20,
            per_minute: 60,
        };
        {
            let store = Store::open(&path, Default::default()).unwrap();
            let mut kept = KeptLines::load(&store).unwrap();
            let mut candidates = Candidates::default();
            for n in 0..5 {
                candidates.push(line(n, &format!("ERROR db timeout {n}")), bounds);
            }
            let mut write = WriteBatch::default();
            kept.keep(&mut candidates, bounds, &mut write);
            store.write(write).unwrap();
            candidates.push(line(5, "ERROR net down"), bounds);
            let mut write = WriteBatch::default();
            kept.keep(&mut candidates, bounds, &mut write);
            store.write(write).unwrap();
            store.close().unwrap();
        }
        let store = Store::open(&path, Default::default()).unwrap();
        let texts = |found: Vec<KeptLine>| found.into_iter().map(|l| l.line).collect::<Vec<_>>();
        assert_eq!(
            texts(newest(&store, "", 10).unwrap()),
            ["ERROR net down", "ERROR db timeout 4", "ERROR db timeout 3"]
        );
        assert_eq!(
            texts(newest(&store, "DB TIMEOUT", 1).unwrap()),
            ["ERROR db timeout 4"]
        );
        // Numbering goes on after the reopen, and the bound holds across it.
        let mut kept = KeptLines::load(&store).unwrap();
        let mut candidates = Candidates::default();
        candidates.push(line(6, "ERROR disk full"), bounds);
        let mut write = WriteBatch::default();
        kept.keep(&mut candidates, bounds, &mut write);
        store.write(write).unwrap();
        let found = newest(&store, "", 10).unwrap();
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].seq, found[1].seq + 1);
        assert_eq!(found[0].line, "ERROR disk full");
    }

    #[test]
    fn the_byte_bound_and_the_cut_hold_for_any_line() {
        let bounds = KeepBounds {
            lines: 1000,
            bytes: 4096,
            per_minute: 60,
        };
        let mut candidates = Candidates::default();
        // Multi-byte characters across the cut, and lines far over it.
        for n in 0..100 {
            candidates.push(line(n, &"é".repeat(5000)), bounds);
        }
        assert!(candidates.bytes <= bounds.bytes);
        let kept: Vec<KeptLine> = candidates.take().into_iter().collect();
        assert!(!kept.is_empty() && kept.len() < 5);
        for line in &kept {
            assert!(line.cut && line.line.len() <= MAX_LINE_BYTES);
        }
        // No bound, nothing kept.
        let mut none = Candidates::default();
        let nothing = KeepBounds {
            lines: 0,
            bytes: 0,
            per_minute: 60,
        };
        none.push(line(0, "x"), nothing);
        assert!(none.is_empty());
    }

    #[test]
    fn a_loud_source_keeps_a_burst_then_its_rate_and_a_quiet_ones_lines_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), Default::default()).unwrap();
        let bounds = KeepBounds {
            lines: 10,
            bytes: 1 << 20,
            per_minute: 60,
        };
        let keeper = Keeper::default();
        let start = std::time::Instant::now();
        let mut n = 0;
        // One round of `count` lines from `source`, at `secs` after the start.
        let mut round = |source: &str, count: usize, secs: u64| {
            let mut candidates = Candidates::default();
            for _ in 0..count {
                let mut kept = kept_line(n, source, &format!("{source} {n}"));
                kept.patterns = vec!["any".into()];
                candidates.push(kept, bounds);
                n += 1;
            }
            let at = start + std::time::Duration::from_secs(secs);
            let mut write = WriteBatch::default();
            keeper
                .keep(&store, &mut candidates, bounds, at, &mut write)
                .unwrap();
            store.write(write).unwrap();
        };
        // The burst: the round's newest ten.
        round("loud", 10, 0);
        assert_eq!(keeper.not_kept("loud"), 0);
        round("loud", 10, 0);
        assert_eq!(keeper.not_kept("loud"), 10);
        // Then a line a second, the newest of its round.
        round("loud", 10, 1);
        assert_eq!(keeper.not_kept("loud"), 19);
        round("quiet", 3, 1);
        round("loud", 10, 2);
        round("loud", 10, 3);
        assert_eq!(keeper.not_kept("quiet"), 0);
        let found = newest(&store, "", 100).unwrap();
        let texts: Vec<&str> = found.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(
            texts,
            [
                "loud 52", "loud 42", "quiet 32", "quiet 31", "quiet 30", "loud 29", "loud 9",
                "loud 8", "loud 7", "loud 6"
            ]
        );
        assert_eq!(keeper.not_kept("loud"), 37);
        // A minute refills the burst, no more.
        round("loud", 10, 63);
        assert_eq!(keeper.not_kept("loud"), 37);
        round("loud", 10, 64);
        assert_eq!(keeper.not_kept("loud"), 37 + 9);
        // The monotonic clock cannot go back, but an earlier `now` must not refill either.
        round("loud", 5, 10);
        assert_eq!(keeper.not_kept("loud"), 37 + 9 + 5);
    }
}
