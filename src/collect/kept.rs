//! The most recent log lines worth a look, kept in the agent's store beside the counters: the
//! journal's entries at priority `err` or worse, and every line (of a file or the journal) that
//! a pattern matched. Bounded in count and in bytes, oldest out first, each line cut at
//! [`MAX_LINE_BYTES`]. A line is kept in the same store write as the position it was read up to,
//! so that a restart keeps it once, like the counters.
//!
//! A backlog (a file that grew by gigabytes while the agent was stopped) cannot fill memory: a
//! round holds at most the bound's worth of candidates, the newest, as the store would.

#![deny(clippy::disallowed_methods)]

use std::collections::VecDeque;

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

/// How many lines, and how many bytes of them, are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepBounds {
    pub lines: usize,
    pub bytes: usize,
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
/// read from the store on first use.
#[derive(Debug, Default)]
pub struct Keeper(std::sync::Mutex<Option<KeptLines>>);

impl Keeper {
    /// [`KeptLines::keep`], with the index loaded first if it is not yet. Blocking: a store read
    /// the first time.
    pub fn keep(
        &self,
        store: &Store,
        candidates: &mut Candidates,
        bounds: KeepBounds,
        write: &mut WriteBatch,
    ) -> Result<(), outpost_storage::Error> {
        let mut index = self.0.lock().expect("kept lines lock");
        if index.is_none() {
            *index = Some(KeptLines::load(store)?);
        }
        if let Some(index) = index.as_mut() {
            index.keep(candidates, bounds, write);
        }
        Ok(())
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
        none.push(line(0, "x"), KeepBounds { lines: 0, bytes: 0 });
        assert!(none.is_empty());
    }
}
