//! The systemd journal turned into signals: entries per unit and priority, and the `[logs]`
//! patterns matched on their messages, as counters.
//!
//! The agent follows `journalctl -o export --follow` (the export format, which journalctl
//! writes at twice the rate of JSON), and keeps the cursor of the last entry it counted in its
//! store together with the counts, written each round: a restarted agent asks
//! for the entries after that cursor (`--after-cursor`), so none is counted twice or missed. On
//! its very first start it begins at the journal's end rather than counting the whole history.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use outpost_storage::{StateKey, StateTable, Store, WriteBatch};
use serde::{Deserialize, Serialize};

use super::kept::{kept_line, Candidates, KeepBounds, Keeper};
use super::logs::{count_match, Cursor, LogPattern};
use super::Samples;

/// The source label of the journal's pattern counters, and the name patterns' `sources` use.
pub const SOURCE: &str = "journal";
/// The longest entry (one JSON line) taken; a longer one is counted as malformed.
const MAX_ENTRY: usize = 1 << 20;
/// The syslog priorities' names, by number.
const PRIORITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// Where the journal's record lives in the store.
pub struct JournalKey;

impl fmt::Display for JournalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("journal")
    }
}

impl StateKey for JournalKey {
    const TABLE: StateTable = StateTable::SyncCursor;
    const OWNED: &'static [&'static str] = &["journal"];
}

/// What was counted, up to which entry: written together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    pub cursor: Option<String>,
    /// Entries by unit and priority.
    pub entries: BTreeMap<(String, String), u64>,
    /// Entries of units past the bound, and lines that were not entries.
    pub overflow: u64,
    pub malformed: u64,
    /// The patterns' counts, as for files.
    pub patterns: Cursor,
}

/// How the journal is read.
#[derive(Debug, Clone)]
pub struct JournalSource {
    pub journalctl: PathBuf,
    /// Journal files to read instead of the system's.
    pub files: Vec<PathBuf>,
    pub max_units: usize,
    pub max_series_per_pattern: usize,
    /// How many lines to keep (`[logs] keep_lines`, `keep_bytes`).
    pub keep: KeepBounds,
}

/// The state the reader thread updates and each round saves.
pub struct Journal {
    record: Mutex<JournalRecord>,
    /// Entries to keep with the next save. Locked inside `record`'s lock, always, so that a save
    /// keeps exactly the entries its record counted.
    candidates: Mutex<Candidates>,
    patterns: Vec<(LogPattern, regex::Regex)>,
    source: JournalSource,
    /// The running `journalctl`, for [`Journal::stop`].
    child: Mutex<Option<u32>>,
}

impl Journal {
    pub fn open(
        store: &Store,
        source: JournalSource,
        patterns: Vec<(LogPattern, regex::Regex)>,
    ) -> Result<Arc<Journal>> {
        let record = store
            .get(&JournalKey)?
            .and_then(|bytes| postcard::from_bytes(&bytes).ok())
            .unwrap_or_default();
        let patterns = patterns
            .into_iter()
            .filter(|(p, _)| p.sources.is_empty() || p.sources.iter().any(|s| s == SOURCE))
            .collect();
        Ok(Arc::new(Journal {
            record: Mutex::new(record),
            candidates: Mutex::new(Candidates::default()),
            patterns,
            source,
            child: Mutex::new(None),
        }))
    }

    /// Ends the running `journalctl`, so that [`Journal::follow`] returns: the task that follows
    /// is stopped (a config reload, the agent's stop) and its thread must not outlive it.
    pub fn stop(&self) {
        if let Some(pid) = self.child.lock().expect("journal child").take() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }

    /// Runs `journalctl` from the saved cursor and counts what it prints, until it ends (an
    /// error: the caller's supervisor starts it again). Blocking.
    pub fn follow(&self) -> Result<()> {
        let mut cursor = self.record.lock().expect("journal record").cursor.clone();
        if cursor.is_none() {
            // The first start: the history is not counted. The end is marked by its last entry's
            // cursor, kept with the (empty) counts, so that what comes while the agent is
            // stopped, even before any entry came to it, is counted when it is back.
            cursor = self.last_cursor()?;
            self.record.lock().expect("journal record").cursor = cursor.clone();
        }
        let mut command = self.journalctl("export");
        // Only the fields counted (journalctl adds the cursor and the times), in the export
        // format: formatting the two dozen fields of a real entry, and JSON's escaping, are
        // most of what reading the journal costs (benches/log-throughput.sh). Needs systemd 236
        // or later (JetPack 4 has 237).
        command.args([
            "--follow",
            "--output-fields=_SYSTEMD_UNIT,SYSLOG_IDENTIFIER,PRIORITY,MESSAGE",
        ]);
        match cursor {
            Some(cursor) => command.arg(format!("--after-cursor={cursor}")),
            // An empty journal: everything in it is new.
            None => command.arg("--lines=all"),
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.source.journalctl.display()))?;
        *self.child.lock().expect("journal child") = Some(child.id());
        let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = Vec::new();
        loop {
            match read_export_entry(&mut reader, &mut line)? {
                ExportEntry::Fields(fields) => self.entry(Some(&fields)),
                ExportEntry::Malformed => self.entry(None),
                ExportEntry::End => break,
            }
        }
        let mut stderr = String::new();
        if let Some(pipe) = child.stderr.take() {
            let _ = pipe.take(4096).read_to_string(&mut stderr);
        }
        let status = child.wait()?;
        self.child.lock().expect("journal child").take();
        anyhow::bail!("journalctl ended ({status}): {}", stderr.trim())
    }

    /// `journalctl` in `output` format on the configured files (or the system's journal).
    fn journalctl(&self, output: &str) -> Command {
        let mut command = Command::new(&self.source.journalctl);
        command.args(["-o", output, "--no-pager", "--quiet"]);
        for file in &self.source.files {
            command.arg(format!("--file={}", file.display()));
        }
        command
    }

    /// The cursor of the journal's last entry; `None` for an empty journal.
    fn last_cursor(&self) -> Result<Option<String>> {
        let output = self
            .journalctl("json")
            .args(["--lines=1", "--output-fields=__CURSOR"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.source.journalctl.display()))?;
        if !output.status.success() {
            anyhow::bail!(
                "journalctl could not read the journal's end ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let last = output
            .stdout
            .split(|b| *b == b'\n')
            .rfind(|line| !line.is_empty());
        match last {
            None => Ok(None),
            Some(line) => {
                let entry: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(line).context("journalctl's last entry")?;
                field_text(entry.get("__CURSOR"))
                    .map(Some)
                    .context("journalctl's last entry has no cursor")
            }
        }
    }

    /// Counts one entry of `journalctl -o export`; `None` for one that did not read.
    fn entry(&self, fields: Option<&EntryFields>) {
        let mut record = self.record.lock().expect("journal record");
        let Some(fields) = fields else {
            record.malformed += 1;
            return;
        };
        let text = |key: &str| fields.get(key).cloned();
        let Some(cursor) = text("__CURSOR") else {
            record.malformed += 1;
            return;
        };
        let unit = text("_SYSTEMD_UNIT")
            .or_else(|| text("SYSLOG_IDENTIFIER"))
            .unwrap_or_default();
        let priority = text("PRIORITY")
            .and_then(|p| p.parse::<usize>().ok())
            .and_then(|p| PRIORITIES.get(p))
            .map_or_else(String::new, |p| p.to_string());
        let key = (unit, priority);
        if let Some(count) = record.entries.get_mut(&key) {
            *count += 1;
        } else {
            // A new pair: rare, so the units are counted only here.
            let units: std::collections::BTreeSet<&String> =
                record.entries.keys().map(|(u, _)| u).collect();
            if units.contains(&key.0) || units.len() < self.source.max_units {
                record.entries.insert(key.clone(), 1);
            } else {
                record.overflow += 1;
            }
        }
        let mut matched = Vec::new();
        let message = text("MESSAGE");
        if let Some(message) = &message {
            let limit = self.source.max_series_per_pattern;
            for (pattern, regex) in &self.patterns {
                if count_match(&mut record.patterns, pattern, regex, message, limit) {
                    matched.push(pattern.name.clone());
                }
            }
        }
        // Kept: what a pattern matched, and everything at `err` or worse (0 to 3).
        let serious = PRIORITIES[..4].contains(&key.1.as_str());
        if !matched.is_empty() || serious {
            // The entry's own time (microseconds), or none known.
            let at_ms = text("__REALTIME_TIMESTAMP")
                .and_then(|us| us.parse::<i64>().ok())
                .map_or(0, |us| us / 1000);
            let mut kept = kept_line(at_ms, SOURCE, message.as_deref().unwrap_or_default());
            kept.unit = key.0.clone();
            kept.priority = key.1.clone();
            kept.patterns = matched;
            let keep = self.source.keep;
            self.candidates
                .lock()
                .expect("journal candidates")
                .push(kept, keep);
        }
        record.cursor = Some(cursor);
    }

    /// Saves the record (what was counted and the cursor it came to) and gives the counters.
    /// Blocking: a store write.
    pub fn save(&self, (store, keeper): (&Store, &Keeper), out: &mut Samples) -> Result<()> {
        let (record, mut candidates) = {
            let record = self.record.lock().expect("journal record");
            let mut candidates = self.candidates.lock().expect("journal candidates");
            (record.clone(), std::mem::take(&mut *candidates))
        };
        let mut write = WriteBatch::default();
        write.put(
            &JournalKey,
            postcard::to_allocvec(&record).expect("postcard serializes the journal record"),
        );
        if !candidates.is_empty() {
            keeper.keep(store, &mut candidates, self.source.keep, &mut write)?;
        }
        #[allow(clippy::disallowed_methods)] // the caller runs this on the blocking pool
        store.write(write)?;
        for ((unit, priority), count) in &record.entries {
            let labels = [("unit", unit.as_str()), ("priority", priority.as_str())];
            out.add("outpost_journal_entries_total", &labels, *count as f64);
        }
        out.add(
            "outpost_journal_overflow_total",
            &[],
            record.overflow as f64,
        );
        out.add(
            "outpost_journal_malformed_total",
            &[],
            record.malformed as f64,
        );
        super::logs::emit_patterns(SOURCE, &record.patterns, &self.patterns, out);
        Ok(())
    }
}

/// The fields of an entry that the agent reads, as text (a binary field's bytes read as
/// UTF-8, lossily).
pub type EntryFields = std::collections::HashMap<&'static str, String>;

/// The fields [`EntryFields`] holds; the others are skipped.
const READ_FIELDS: [&str; 6] = [
    "__CURSOR",
    "__REALTIME_TIMESTAMP",
    "_SYSTEMD_UNIT",
    "SYSLOG_IDENTIFIER",
    "PRIORITY",
    "MESSAGE",
];

/// What [`read_export_entry`] read.
#[derive(Debug, PartialEq)]
pub enum ExportEntry {
    Fields(EntryFields),
    /// An entry that broke the format or its bounds: counted, and skipped to its end.
    Malformed,
    /// The end of the stream.
    End,
}

/// Reads one entry of the journal's export format (`journalctl -o export`): fields
/// `NAME=value` on a line each, or, where a value holds a newline or is binary, `NAME` on its
/// line, the value's length as 64-bit little endian, the value and a newline; an empty line
/// after each entry. Bounded: no line, value or entry is held past [`MAX_ENTRY`] bytes (a larger
/// one is read through and the entry counted as malformed). `line` is scratch space.
pub fn read_export_entry(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
) -> std::io::Result<ExportEntry> {
    let mut fields = EntryFields::new();
    let (mut started, mut broken, mut size) = (false, false, 0usize);
    loop {
        line.clear();
        let read = (&mut *reader)
            .take(MAX_ENTRY as u64 + 1)
            .read_until(b'\n', line)?;
        if read == 0 {
            // The stream ended, in an entry or between two.
            return Ok(match (started, broken) {
                (false, _) => ExportEntry::End,
                (true, true) => ExportEntry::Malformed,
                (true, false) => ExportEntry::Fields(fields),
            });
        }
        if line.last() != Some(&b'\n') {
            // A line past the bound: read through to its end.
            reader.skip_until(b'\n')?;
            (started, broken) = (true, true);
            continue;
        }
        line.pop();
        if line.is_empty() {
            if !started {
                continue;
            }
            return Ok(if broken {
                ExportEntry::Malformed
            } else {
                ExportEntry::Fields(fields)
            });
        }
        started = true;
        let eq = line.iter().position(|b| *b == b'=');
        let name = &line[..eq.unwrap_or(line.len())];
        let wanted = READ_FIELDS.iter().find(|f| f.as_bytes() == name).copied();
        // Only the fields read are copied out; the others are passed over.
        let value = match eq {
            Some(eq) => {
                size += line.len() - eq - 1;
                wanted.map(|_| String::from_utf8_lossy(&line[eq + 1..]).into_owned())
            }
            None => {
                let mut length = [0u8; 8];
                reader.read_exact(&mut length)?;
                let length = u64::from_le_bytes(length);
                let held = wanted.is_some() && length <= MAX_ENTRY as u64;
                let mut value = Vec::new();
                if held {
                    (&mut *reader).take(length).read_to_end(&mut value)?;
                } else {
                    std::io::copy(&mut (&mut *reader).take(length), &mut std::io::sink())?;
                    broken |= wanted.is_some();
                }
                let mut newline = [0u8; 1];
                reader.read_exact(&mut newline)?;
                broken |= newline[0] != b'\n';
                size += value.len();
                held.then(|| String::from_utf8_lossy(&value).into_owned())
            }
        };
        broken |= size > MAX_ENTRY;
        if let (Some(name), Some(value)) = (wanted, value) {
            fields.insert(name, value);
        }
    }
}

/// A field of `journalctl -o json`: a string, or an array of bytes where the value is not UTF-8
/// (or is large), or `null`.
fn field_text(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Array(bytes) => {
            let bytes: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(max_units: usize) -> (tempfile::TempDir, Store, Arc<Journal>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), Default::default()).unwrap();
        let pattern = LogPattern {
            name: "errors".into(),
            regex: r"module=(?P<module>\w+)".into(),
            sources: vec![SOURCE.into()],
        };
        let regex = regex::Regex::new(&pattern.regex).unwrap();
        let source = JournalSource {
            journalctl: "journalctl".into(),
            files: Vec::new(),
            max_units,
            max_series_per_pattern: 10,
            keep: KeepBounds {
                lines: 100,
                bytes: 1 << 20,
            },
        };
        let journal = Journal::open(&store, source, vec![(pattern, regex)]).unwrap();
        (dir, store, journal)
    }

    /// A binary field of the export format: name, length (64-bit little endian), bytes.
    fn binary(name: &str, value: &[u8]) -> Vec<u8> {
        let mut out = format!("{name}\n").into_bytes();
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
        out
    }

    /// Every entry `bytes` holds, as the follower reads them.
    fn read_all(bytes: &[u8]) -> Vec<ExportEntry> {
        let mut reader = std::io::BufReader::new(bytes);
        let mut line = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_export_entry(&mut reader, &mut line) {
                Ok(ExportEntry::End) | Err(_) => return out,
                Ok(entry) => out.push(entry),
            }
        }
    }

    #[test]
    fn entries_of_any_shape_are_counted_or_refused_without_a_panic() {
        let (_dir, store, journal) = journal(2);
        let mut stream =
            b"__CURSOR=c1\n__REALTIME_TIMESTAMP=1796000000000000\n_SYSTEMD_UNIT=a.service\n\
PRIORITY=3\nMESSAGE=module=db down\n\n"
                .to_vec();
        // A message that is not UTF-8 comes as a binary field; fields not read are skipped.
        stream.extend_from_slice(b"__CURSOR=c2\nSYSLOG_IDENTIFIER=kernel\nPRIORITY=6\n");
        stream.extend(binary("_CMDLINE", b"a\nb"));
        stream.extend(binary(
            "MESSAGE",
            &[109, 111, 100, 117, 108, 101, 61, 255, 120],
        ));
        stream.extend_from_slice(b"\n");
        stream.extend_from_slice(b"__CURSOR=c3\n_SYSTEMD_UNIT=b.service\nPRIORITY=99\n\n");
        stream.extend_from_slice(b"_SYSTEMD_UNIT=no-cursor\n\n");
        // A binary message longer than an entry may be: read through, the entry malformed.
        stream.extend_from_slice(b"__CURSOR=c4\n");
        stream.extend(binary("MESSAGE", &vec![b'x'; MAX_ENTRY + 1]));
        stream.extend_from_slice(b"\n");
        let entries = read_all(&stream);
        assert_eq!(entries.len(), 5, "{entries:?}");
        for entry in &entries {
            match entry {
                ExportEntry::Fields(fields) => journal.entry(Some(fields)),
                _ => journal.entry(None),
            }
        }
        let record = journal.record.lock().unwrap().clone();
        assert_eq!(record.cursor.as_deref(), Some("c3"));
        assert_eq!(record.entries[&("a.service".into(), "err".into())], 1);
        assert_eq!(record.entries[&("kernel".into(), "info".into())], 1);
        assert_eq!(record.overflow, 1, "a third unit is past the bound of two");
        assert_eq!(record.malformed, 2, "no cursor, and the oversized entry");
        let mut out = Samples::new();
        journal
            .save((&store, &Keeper::default()), &mut out)
            .unwrap();
        let lines = crate::collect::render(out);
        assert!(lines.contains(&r#"outpost_log_pattern_matches_total{module="db",pattern="errors",source="journal"} 1"#.to_string()), "{lines:?}");
        // Kept: the entry at err that the pattern matched; not the info one, nor those without
        // a message or a priority.
        let kept = crate::collect::kept::newest(&store, "", 10).unwrap();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(
            (
                kept[0].line.as_str(),
                kept[0].unit.as_str(),
                kept[0].priority.as_str()
            ),
            ("module=db down", "a.service", "err")
        );
        assert_eq!(kept[0].patterns, ["errors"]);
        assert_eq!(kept[0].at_ms, 1_796_000_000_000);
    }

    proptest::proptest! {
        /// Any bytes: entries or malformed ones or an error, never a panic, and an end.
        #[test]
        fn the_export_reader_takes_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
            let entries = read_all(&bytes);
            proptest::prop_assert!(entries.len() <= bytes.len());
        }

        /// Entries written in the format, text or binary, read back as written.
        #[test]
        fn the_export_reader_reads_what_the_format_writes(
            messages in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100), 1..10)
        ) {
            let mut stream = Vec::new();
            for (n, message) in messages.iter().enumerate() {
                stream.extend(format!("__CURSOR=c{n}\nPRIORITY=3\n").into_bytes());
                if message.contains(&b'\n') || std::str::from_utf8(message).is_err() {
                    stream.extend(binary("MESSAGE", message));
                } else {
                    stream.extend(b"MESSAGE=".iter().chain(message).chain(b"\n"));
                }
                stream.push(b'\n');
            }
            let entries = read_all(&stream);
            proptest::prop_assert_eq!(entries.len(), messages.len());
            for (n, (entry, message)) in entries.iter().zip(&messages).enumerate() {
                let ExportEntry::Fields(fields) = entry else {
                    return Err(proptest::test_runner::TestCaseError::fail(format!("{entry:?}")));
                };
                proptest::prop_assert_eq!(fields["__CURSOR"].clone(), format!("c{n}"));
                proptest::prop_assert_eq!(fields["MESSAGE"].clone(), String::from_utf8_lossy(message).into_owned());
            }
        }
    }
}
