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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use outpost_storage::{StateKey, StateTable, Store, WriteBatch};
use serde::{Deserialize, Serialize};

use super::journal_file::{
    list_files, system_directories, EntryId, JournalFile, JournalFileError, ParsedCursor,
};
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

/// Where the journal's records live in the store: what was counted up to which entry, and how
/// far each journal file was read (when the files are read directly).
pub enum JournalKey {
    Record,
    Files,
}

impl fmt::Display for JournalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JournalKey::Record => "journal",
            JournalKey::Files => "journal/files",
        })
    }
}

impl StateKey for JournalKey {
    const TABLE: StateTable = StateTable::SyncCursor;
    const OWNED: &'static [&'static str] = &["journal"];
}

/// What was counted, up to which entry: written together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// The last entry counted, as journalctl names it: where `journalctl` resumes, and where
    /// the files' reader starts in a journal it has no positions for (after an upgrade from a
    /// version that read through journalctl, or when journalctl read it last).
    pub cursor: Option<String>,
    /// Entries by unit and priority.
    pub entries: BTreeMap<(String, String), u64>,
    /// Entries of units past the bound, and lines that were not entries.
    pub overflow: u64,
    pub malformed: u64,
    /// The patterns' counts, as for files.
    pub patterns: Cursor,
}

/// How far each journal file was read, by the file's id (hex): files are renamed when
/// archived, and several are written at once (the system's and each user's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilePositions {
    pub files: BTreeMap<String, FilePosition>,
}

/// Entries read of one file, and the sequence number of the last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FilePosition {
    pub read: u64,
    pub seqnum: u64,
}

/// How the journal is read (`[logs] journal_reader`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalReader {
    /// The files, where this agent reads every one of them; else journalctl.
    #[default]
    Auto,
    Files,
    Journalctl,
}

/// How the journal is read.
#[derive(Debug, Clone)]
pub struct JournalSource {
    pub journalctl: PathBuf,
    /// Journal files to read instead of the system's.
    pub files: Vec<PathBuf>,
    pub reader: JournalReader,
    pub max_units: usize,
    pub max_series_per_pattern: usize,
    /// How many lines to keep (`[logs] keep_lines`, `keep_bytes`).
    pub keep: KeepBounds,
}

/// What the reader updates and each round saves, under one lock so that a save sees the counts
/// and the positions they were counted to together.
#[derive(Debug, Default)]
struct Counted {
    record: JournalRecord,
    positions: FilePositions,
    /// The newest entry read from the files, in the journal's order (not the order read: an
    /// archived file may be read after the active one), whose cursor each save writes.
    newest: Option<EntryId>,
}

impl Counted {
    /// Takes `id` as the newest entry if it comes after the one the cursor names.
    fn saw(&mut self, id: EntryId) {
        let newer = match (&self.newest, &self.record.cursor) {
            (Some(newest), _) => !id.at_or_before(&newest.parsed()),
            (None, Some(cursor)) => !id.at_or_before(&ParsedCursor::parse(cursor)),
            (None, None) => true,
        };
        if newer {
            self.newest = Some(id);
        }
    }
}

/// One entry's fields that are counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct EntryView<'a> {
    pub unit: Option<&'a str>,
    pub identifier: Option<&'a str>,
    pub priority: Option<&'a str>,
    pub message: Option<&'a str>,
    /// Microseconds since the epoch.
    pub realtime_us: Option<i64>,
}

/// How often the files are looked at again when nothing new was in them.
const FILE_POLL: std::time::Duration = std::time::Duration::from_millis(200);
/// Entries counted under one hold of the lock.
const BATCH: usize = 1024;

/// The state the reader thread updates and each round saves.
pub struct Journal {
    counted: Mutex<Counted>,
    /// Entries to keep with the next save. Locked inside `counted`'s lock, always, so that a save
    /// keeps exactly the entries its record counted.
    candidates: Mutex<Candidates>,
    patterns: Vec<(LogPattern, regex::Regex)>,
    source: JournalSource,
    /// The running `journalctl`, for [`Journal::stop`].
    child: Mutex<Option<u32>>,
    stopping: AtomicBool,
}

/// Where files without a saved position start.
enum Start {
    /// Each file's position is saved; one without is new, read from its start.
    Positions,
    /// Past this entry (the last that journalctl gave).
    Cursor(ParsedCursor),
    /// At the end: the agent's very first start.
    End,
}

/// A journal file being followed.
struct Followed {
    file: JournalFile,
    key: String,
    inode: u64,
    /// Polls in a row at which the next entry of a file being written did not read: journald
    /// may not have finished it. Past a few, it is damaged and passed over.
    stuck: u32,
}

impl Journal {
    pub fn open(
        store: &Store,
        source: JournalSource,
        patterns: Vec<(LogPattern, regex::Regex)>,
    ) -> Result<Arc<Journal>> {
        let record = store
            .get(&JournalKey::Record)?
            .and_then(|bytes| postcard::from_bytes(&bytes).ok())
            .unwrap_or_default();
        let positions = store
            .get(&JournalKey::Files)?
            .and_then(|bytes| postcard::from_bytes(&bytes).ok())
            .unwrap_or_default();
        let patterns = patterns
            .into_iter()
            .filter(|(p, _)| p.sources.is_empty() || p.sources.iter().any(|s| s == SOURCE))
            .collect();
        Ok(Arc::new(Journal {
            counted: Mutex::new(Counted {
                record,
                positions,
                newest: None,
            }),
            candidates: Mutex::new(Candidates::default()),
            patterns,
            source,
            child: Mutex::new(None),
            stopping: AtomicBool::new(false),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counted> {
        self.counted.lock().expect("journal record")
    }

    /// Ends the following, so that [`Journal::follow`] returns: the task that follows is
    /// stopped (a config reload, the agent's stop) and its thread must not outlive it.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(pid) = self.child.lock().expect("journal child").take() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }

    /// Follows the journal, through its files or through journalctl, until stopped or an error
    /// (the caller's supervisor starts it again). Blocking.
    pub fn follow(&self) -> Result<()> {
        let paths = self.journal_paths();
        let use_files = match self.source.reader {
            JournalReader::Journalctl => false,
            JournalReader::Files => true,
            JournalReader::Auto => match unreadable_file(&list_files(&paths)) {
                None => true,
                Some((path, error)) => {
                    tracing::info!(
                        "reading the journal through journalctl: {} {error}",
                        path.display()
                    );
                    false
                }
            },
        };
        if use_files {
            self.follow_files(&paths)
        } else {
            self.follow_journalctl()
        }
    }

    /// The configured journal files, or the system's journal directories.
    fn journal_paths(&self) -> Vec<PathBuf> {
        if self.source.files.is_empty() {
            system_directories()
        } else {
            self.source.files.clone()
        }
    }

    /// Reads the journal files themselves, polling them for new entries; each file is resumed
    /// where it was left, by its id.
    fn follow_files(&self, paths: &[PathBuf]) -> Result<()> {
        let mut followed: Vec<Followed> = Vec::new();
        let mut start = {
            let counted = self.lock();
            match (&counted.record.cursor, counted.positions.files.is_empty()) {
                (_, false) => Start::Positions,
                (Some(cursor), true) => Start::Cursor(ParsedCursor::parse(cursor)),
                (None, true) => Start::End,
            }
        };
        let mut first_poll = true;
        let mut warned = std::collections::HashSet::new();
        while !self.stopping.load(Ordering::Relaxed) {
            let listed = list_files(paths);
            if listed.is_empty() && warned.insert(PathBuf::new()) {
                tracing::warn!("no journal file found in {paths:?}");
            }
            self.open_new_files(&listed, &mut followed, (first_poll, &start), &mut warned)?;
            if first_poll && !followed.is_empty() {
                // Files that come later are new: read whole.
                first_poll = false;
                start = Start::Positions;
            }
            let mut read = 0;
            for one in &mut followed {
                read += self.read_file(one)?;
            }
            if read == 0 {
                std::thread::sleep(FILE_POLL);
            }
        }
        Ok(())
    }

    /// Opens the files in `listed` not followed yet (a file renamed when archived is the same
    /// file: found by its id), places each where reading resumes, and drops those gone.
    fn open_new_files(
        &self,
        listed: &[PathBuf],
        followed: &mut Vec<Followed>,
        (first_poll, start): (bool, &Start),
        warned: &mut std::collections::HashSet<PathBuf>,
    ) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let mut present = std::collections::HashSet::new();
        for path in listed {
            let meta = match std::fs::metadata(path) {
                Ok(meta) => meta,
                Err(error) => {
                    if warned.insert(path.clone()) {
                        tracing::warn!("not reading the journal file {}: {error}", path.display());
                    }
                    continue;
                }
            };
            if !meta.is_file() {
                // A named pipe would block the reader for ever, a device file feed it without
                // end: only regular files are journals.
                if warned.insert(path.clone()) {
                    tracing::warn!("not reading {}: not a regular file", path.display());
                }
                continue;
            }
            present.insert(meta.ino());
            if followed.iter().any(|f| f.inode == meta.ino()) {
                continue;
            }
            let file = match JournalFile::open(path) {
                Ok(file) => file,
                Err(JournalFileError::Unsupported(flags)) => anyhow::bail!(
                    "{} needs journalctl (incompatible flags {flags:#x})",
                    path.display()
                ),
                Err(error) => {
                    // Once a file: a journal the agent may not read (not in the
                    // `systemd-journal` group) stays so, and is polled again and again.
                    if warned.insert(path.clone()) {
                        tracing::warn!("not reading the journal file {}: {error}", path.display());
                    }
                    continue;
                }
            };
            let key = hex::encode(file.header().file_id);
            let mut one = Followed {
                file,
                key,
                inode: meta.ino(),
                stuck: 0,
            };
            self.place(&mut one, start)
                .with_context(|| format!("finding where to resume {}", path.display()))?;
            followed.push(one);
        }
        followed.retain(|f| present.contains(&f.inode));
        if first_poll && !listed.is_empty() {
            // Positions of files deleted while the agent was stopped.
            let ids: std::collections::HashSet<&str> =
                followed.iter().map(|f| f.key.as_str()).collect();
            self.lock()
                .positions
                .files
                .retain(|id, _| ids.contains(id.as_str()));
        }
        Ok(())
    }

    /// Places a newly opened file where its counting resumes: after its saved position; on
    /// the first poll of a journal with no positions, past the last entry counted through
    /// journalctl, or at its end on the very first start (the history is not counted); at its
    /// start if it is new.
    fn place(&self, one: &mut Followed, start: &Start) -> Result<()> {
        let mut counted = self.lock();
        if let Some(position) = counted.positions.files.get(&one.key) {
            one.file.resume(position.read, position.seqnum)?;
            return Ok(());
        }
        match start {
            Start::Positions => {}
            Start::Cursor(cursor) => one.file.skip_while(|id| id.at_or_before(cursor))?,
            Start::End => one.file.seek_end()?,
        }
        let last = one.file.last_id()?;
        if let (Start::End, Some(id)) = (start, last) {
            // The end is marked, so that a restart before any entry came counts what came
            // meanwhile.
            counted.saw(id);
        }
        let position = FilePosition {
            read: one.file.read(),
            seqnum: last.map_or(0, |id| id.seqnum),
        };
        counted.positions.files.insert(one.key.clone(), position);
        Ok(())
    }

    /// Counts the entries written to one file since it was last read; how many.
    fn read_file(&self, one: &mut Followed) -> Result<usize> {
        if let Err(error) = one.file.refresh() {
            tracing::debug!("reading {}: {error}", one.file.path().display());
            return Ok(0);
        }
        let mut read = 0;
        while one.file.unread() > 0 && !self.stopping.load(Ordering::Relaxed) {
            let mut counted = self.lock();
            let mut batch = 0;
            while batch < BATCH {
                match one.file.next_entry() {
                    Ok(Some((id, fields))) => {
                        let view = EntryView {
                            unit: fields.unit.as_deref(),
                            identifier: fields.identifier.as_deref(),
                            priority: fields.priority.as_deref(),
                            message: fields.message.as_deref(),
                            realtime_us: i64::try_from(id.realtime).ok(),
                        };
                        self.count(&mut counted, (!fields.oversized).then_some(view));
                        counted.saw(id);
                        let position = FilePosition {
                            read: one.file.read(),
                            seqnum: id.seqnum,
                        };
                        counted.positions.files.insert(one.key.clone(), position);
                        one.stuck = 0;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        // Being written: wait for journald to finish it, a few polls.
                        if one.file.header().online() && one.stuck < 5 {
                            one.stuck += 1;
                            return Ok(read);
                        }
                        tracing::warn!(
                            "passing over a damaged entry of {}: {error}",
                            one.file.path().display()
                        );
                        counted.record.malformed += 1;
                        one.stuck = 0;
                        if !one.file.skip() {
                            // Nothing after it can be found: the rest is counted malformed.
                            counted.record.malformed += one.file.unread();
                            one.file.abandon();
                        }
                        let position = FilePosition {
                            read: one.file.read(),
                            seqnum: counted
                                .positions
                                .files
                                .get(&one.key)
                                .map_or(0, |p| p.seqnum),
                        };
                        counted.positions.files.insert(one.key.clone(), position);
                    }
                }
                batch += 1;
            }
            read += batch;
            if batch < BATCH {
                break;
            }
        }
        if one.file.unread() == 0 && !one.file.header().online() {
            one.file.rest();
        }
        Ok(read)
    }

    /// Runs `journalctl` from the saved cursor and counts what it prints, until it ends (an
    /// error: the caller's supervisor starts it again). Blocking.
    fn follow_journalctl(&self) -> Result<()> {
        let mut cursor = {
            let mut counted = self.lock();
            // Positions in files are of a reading that the cursor now continues.
            counted.positions.files.clear();
            if let Some(id) = counted.newest.take() {
                counted.record.cursor = Some(id.cursor());
            }
            counted.record.cursor.clone()
        };
        if cursor.is_none() {
            // The first start: the history is not counted. The end is marked by its last entry's
            // cursor, kept with the (empty) counts, so that what comes while the agent is
            // stopped, even before any entry came to it, is counted when it is back.
            cursor = self.last_cursor()?;
            self.lock().record.cursor = cursor.clone();
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
        if self.stopping.load(Ordering::Relaxed) {
            let _ = child.kill();
        }
        let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = Vec::new();
        loop {
            match read_export_entry(&mut reader, &mut line)? {
                ExportEntry::Fields(fields) => self.export_entry(Some(&fields)),
                ExportEntry::Malformed => self.export_entry(None),
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
    fn export_entry(&self, fields: Option<&EntryFields>) {
        let mut counted = self.lock();
        let Some(fields) = fields else {
            counted.record.malformed += 1;
            return;
        };
        let text = |key: &str| fields.get(key).map(String::as_str);
        let Some(cursor) = text("__CURSOR") else {
            counted.record.malformed += 1;
            return;
        };
        let view = EntryView {
            unit: text("_SYSTEMD_UNIT"),
            identifier: text("SYSLOG_IDENTIFIER"),
            priority: text("PRIORITY"),
            message: text("MESSAGE"),
            realtime_us: text("__REALTIME_TIMESTAMP").and_then(|us| us.parse().ok()),
        };
        self.count(&mut counted, Some(view));
        counted.record.cursor = Some(cursor.to_string());
    }

    /// Counts one entry (`None`: one that did not read) and keeps it where it is worth keeping.
    fn count(&self, counted: &mut Counted, view: Option<EntryView<'_>>) {
        let record = &mut counted.record;
        let Some(view) = view else {
            record.malformed += 1;
            return;
        };
        let unit = view.unit.or(view.identifier).unwrap_or_default();
        let priority = view
            .priority
            .and_then(|p| p.parse::<usize>().ok())
            .and_then(|p| PRIORITIES.get(p).copied())
            .unwrap_or_default();
        let serious = PRIORITIES[..4].contains(&priority);
        if let Some(count) = record
            .entries
            .get_mut(&(unit.to_string(), priority.to_string()))
        {
            *count += 1;
        } else {
            // A new pair: rare, so the units are counted only here.
            let units: std::collections::BTreeSet<&String> =
                record.entries.keys().map(|(u, _)| u).collect();
            if units.iter().any(|u| u.as_str() == unit) || units.len() < self.source.max_units {
                record
                    .entries
                    .insert((unit.to_string(), priority.to_string()), 1);
            } else {
                record.overflow += 1;
            }
        }
        let mut matched = Vec::new();
        if let Some(message) = view.message {
            let limit = self.source.max_series_per_pattern;
            for (pattern, regex) in &self.patterns {
                if count_match(&mut record.patterns, pattern, regex, message, limit) {
                    matched.push(pattern.name.clone());
                }
            }
        }
        // Kept: what a pattern matched, and everything at `err` or worse (0 to 3).
        if !matched.is_empty() || serious {
            // The entry's own time (milliseconds), or none known.
            let at_ms = view.realtime_us.map_or(0, |us| us / 1000);
            let mut kept = kept_line(at_ms, SOURCE, view.message.unwrap_or_default());
            kept.unit = unit.to_string();
            kept.priority = priority.to_string();
            kept.patterns = matched;
            let keep = self.source.keep;
            self.candidates
                .lock()
                .expect("journal candidates")
                .push(kept, keep);
        }
    }

    /// Saves the record (what was counted and the cursor it came to, and the files' positions)
    /// and gives the counters. Blocking: a store write.
    pub fn save(
        &self,
        (store, keeper): (&Store, &Keeper),
        now: Instant,
        out: &mut Samples,
    ) -> Result<()> {
        let (record, positions, mut candidates) = {
            let mut counted = self.lock();
            if let Some(id) = counted.newest {
                counted.record.cursor = Some(id.cursor());
            }
            let mut candidates = self.candidates.lock().expect("journal candidates");
            (
                counted.record.clone(),
                counted.positions.clone(),
                std::mem::take(&mut *candidates),
            )
        };
        let mut write = WriteBatch::default();
        write.put(
            &JournalKey::Record,
            postcard::to_allocvec(&record).expect("postcard serializes the journal record"),
        );
        write.put(
            &JournalKey::Files,
            postcard::to_allocvec(&positions).expect("postcard serializes the positions"),
        );
        if !candidates.is_empty() {
            keeper.keep(store, &mut candidates, self.source.keep, now, &mut write)?;
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
        out.add(
            "outpost_log_lines_not_kept_total",
            &[("source", SOURCE)],
            keeper.not_kept(SOURCE) as f64,
        );
        super::logs::emit_patterns(SOURCE, &record.patterns, &self.patterns, out);
        Ok(())
    }
}

/// The first of `files` that this agent's reader cannot read, and why.
fn unreadable_file(files: &[PathBuf]) -> Option<(PathBuf, JournalFileError)> {
    files.iter().find_map(|path| match JournalFile::open(path) {
        Err(error @ JournalFileError::Unsupported(_)) => Some((path.clone(), error)),
        _ => None,
    })
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
            reader: JournalReader::Journalctl,
            max_units,
            max_series_per_pattern: 10,
            keep: KeepBounds {
                lines: 100,
                bytes: 1 << 20,
                per_minute: 60,
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
                ExportEntry::Fields(fields) => journal.export_entry(Some(fields)),
                _ => journal.export_entry(None),
            }
        }
        let record = journal.lock().record.clone();
        assert_eq!(record.cursor.as_deref(), Some("c3"));
        assert_eq!(record.entries[&("a.service".into(), "err".into())], 1);
        assert_eq!(record.entries[&("kernel".into(), "info".into())], 1);
        assert_eq!(record.overflow, 1, "a third unit is past the bound of two");
        assert_eq!(record.malformed, 2, "no cursor, and the oversized entry");
        let mut out = Samples::new();
        journal
            .save((&store, &Keeper::default()), Instant::now(), &mut out)
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

    /// The files are read one after the other, an archive after the active file: the cursor
    /// saved (where journalctl resumes) is the newest entry's, never one read later but older.
    /// (It was the last read: after a rotation, journalctl then counted the active file's
    /// entries again, benches/log-throughput.sh.)
    #[test]
    fn the_cursor_saved_is_the_newest_entrys_whatever_order_the_files_are_read_in() {
        let id = |seqnum: u64| EntryId {
            seqnum_id: [1; 16],
            seqnum,
            boot_id: [2; 16],
            monotonic: seqnum * 10,
            realtime: 1_000 + seqnum,
            xor_hash: seqnum,
        };
        let mut counted = Counted::default();
        for seqnum in [20, 21, 11, 12] {
            counted.saw(id(seqnum));
        }
        assert_eq!(counted.newest, Some(id(21)));
        // Nothing newer than the cursor of the run before: that cursor stands.
        let mut counted = Counted::default();
        counted.record.cursor = Some(id(30).cursor());
        counted.saw(id(25));
        assert_eq!(counted.newest, None);
        counted.saw(id(31));
        assert_eq!(counted.newest, Some(id(31)));
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
