//! Log files turned into signals: lines per file, and matches of operators' patterns (regexes
//! whose named captures become labels) as counters that rules alert on like any metric.
//!
//! Each file is followed across rotation: a file renamed away (`app.log` to `app.log.1`) is
//! read to its end, found again by its inode in the same directory, before the new file is read
//! from its start; a file truncated in place (`copytruncate`) is read again from its start.
//! What was read and what it counted are one record per file in the store, written after each
//! round, so that an agent restarted (or killed) resumes where the record says: no line is
//! counted twice or missed, and the counters go on from where they were.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use outpost_storage::{StateKey, StateTable, Store, WriteBatch};
use serde::{Deserialize, Serialize};

use super::kept::{kept_line, Candidates, KeepBounds, Keeper};
use super::Samples;
use crate::config_values::{ByteSize, Interval, Toggle};

/// The agent's `[logs]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsSection {
    pub interval: Interval,
    #[serde(rename = "file")]
    pub files: Vec<LogFile>,
    #[serde(rename = "pattern")]
    pub patterns: Vec<LogPattern>,
    /// The most label sets one pattern counts; lines that would add more are counted in
    /// `outpost_log_pattern_overflow_total`.
    pub max_series_per_pattern: usize,
    /// Follow the systemd journal: `auto` where systemd runs the machine.
    pub journal: Toggle,
    /// Journal files to read instead of the system's journal.
    pub journal_files: Vec<PathBuf>,
    /// How: the files themselves, or through `journalctl` (`auto`: the files where this agent
    /// reads every one).
    pub journal_reader: super::journal::JournalReader,
    pub journalctl: PathBuf,
    /// The most units the journal's counters name; entries of others are counted apart.
    pub max_units: usize,
    /// The most recent lines kept in the store (pattern hits, and the journal's entries at
    /// `err` or worse): at most this many, and this many bytes. 0 keeps none.
    pub keep_lines: usize,
    pub keep_bytes: ByteSize,
    /// Once a source has kept a burst of `keep_lines`, the most lines it keeps a minute; the
    /// rest are counted in `outpost_log_lines_not_kept_total`.
    pub keep_per_minute: u32,
}

impl Default for LogsSection {
    fn default() -> Self {
        LogsSection {
            interval: Interval::secs(1),
            files: Vec::new(),
            patterns: Vec::new(),
            max_series_per_pattern: 100,
            journal: Toggle::Auto,
            journal_files: Vec::new(),
            journal_reader: Default::default(),
            journalctl: PathBuf::from("journalctl"),
            max_units: 200,
            keep_lines: 500,
            keep_bytes: ByteSize(256 << 10),
            keep_per_minute: 60,
        }
    }
}

/// `[[logs.file]]`: a plain log file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// The `source` label of its counters.
    pub name: String,
    pub path: PathBuf,
}

/// `[[logs.pattern]]`: lines that match `regex` (in the files named in `sources`, or all) are
/// counted, by the values of its named captures.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogPattern {
    pub name: String,
    pub regex: String,
    #[serde(default)]
    pub sources: Vec<String>,
}

/// The most named captures (labels) a pattern may have.
const MAX_CAPTURES: usize = 5;
/// The most bytes a pattern's compiled program may take. Matching is linear in the line
/// whatever the pattern (the `regex` crate does not backtrack), so what a hostile or careless
/// pattern can blow up is its size: `(a{1000}){1000}` compiles to a million states.
const MAX_PATTERN_BYTES: usize = 1 << 20;
/// The longest line matched; the rest of a longer one is counted with it but not matched.
const MAX_LINE: usize = 64 << 10;
/// The most bytes read from one file in a round, so that a huge backlog is worked through over
/// several rounds without holding the agent up.
const MAX_READ: u64 = 8 << 20;
/// The most bytes of a capture kept as a label's value (a capture may span a whole line).
const MAX_LABEL_VALUE: usize = 128;
/// Labels a capture may not take: the counters' own and the hub's.
const RESERVED: [&str; 4] = ["pattern", "source", "instance", "device"];

/// The most kept lines, and bytes of them, a config may ask for.
const MAX_KEEP_LINES: usize = 100_000;
const MAX_KEEP_BYTES: u64 = 64 << 20;
/// The most lines a minute a source may keep: a thousand a second.
const MAX_KEEP_PER_MINUTE: u32 = 60_000;

impl LogsSection {
    /// How many lines, and bytes, to keep.
    pub fn keep_bounds(&self) -> KeepBounds {
        KeepBounds {
            lines: self.keep_lines,
            bytes: usize::try_from(self.keep_bytes.0).unwrap_or(usize::MAX),
            per_minute: self.keep_per_minute,
        }
    }
}

/// Patterns with their compiled programs.
pub type Patterns = Vec<(LogPattern, regex::Regex)>;

/// The patterns compiled, checked at config load: the error names the key.
pub fn compile(section: &LogsSection) -> Result<Patterns> {
    if section.keep_lines > MAX_KEEP_LINES {
        bail!(
            "logs.keep_lines: {} is more than {MAX_KEEP_LINES}",
            section.keep_lines
        );
    }
    if section.keep_bytes.0 > MAX_KEEP_BYTES {
        bail!("logs.keep_bytes: at most 64MiB");
    }
    if !(1..=MAX_KEEP_PER_MINUTE).contains(&section.keep_per_minute) {
        bail!(
            "logs.keep_per_minute: {} is not between 1 and {MAX_KEEP_PER_MINUTE} \
             (keep_lines = 0 keeps none)",
            section.keep_per_minute
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, file) in section.files.iter().enumerate() {
        if file.name.is_empty() || !names.insert(file.name.as_str()) {
            bail!(
                "logs.file[{i}].name: {:?} is empty or used twice",
                file.name
            );
        }
        if file.name == super::journal::SOURCE {
            bail!("logs.file[{i}].name: \"journal\" is the journal's, for patterns' sources");
        }
    }
    let mut compiled = Vec::new();
    for (i, pattern) in section.patterns.iter().enumerate() {
        let key = format!("logs.pattern[{i}]");
        let regex = regex::RegexBuilder::new(&pattern.regex)
            .size_limit(MAX_PATTERN_BYTES)
            .dfa_size_limit(MAX_PATTERN_BYTES)
            .build()
            .with_context(|| format!("{key}.regex"))?;
        let captures: Vec<&str> = regex.capture_names().flatten().collect();
        if captures.len() > MAX_CAPTURES {
            bail!(
                "{key}.regex: {} named captures; at most {MAX_CAPTURES} (each is a label)",
                captures.len()
            );
        }
        for capture in captures {
            if !outpost_storage::promql::is_label_name(capture)
                || capture.starts_with("__")
                || RESERVED.contains(&capture)
            {
                bail!("{key}.regex: the capture name {capture:?} cannot be a label (reserved: {RESERVED:?})");
            }
        }
        for source in &pattern.sources {
            if !names.contains(source.as_str()) && source != super::journal::SOURCE {
                bail!(
                    "{key}.sources: {source:?} is not the name of a [[logs.file]] or \"journal\""
                );
            }
        }
        compiled.push((pattern.clone(), regex));
    }
    Ok(compiled)
}

/// Where a file's record lives in the store.
pub struct LogKey<'a>(pub &'a str);

impl fmt::Display for LogKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "log/{}", self.0)
    }
}

impl StateKey for LogKey<'_> {
    const TABLE: StateTable = StateTable::SyncCursor;
    const OWNED: &'static [&'static str] = &["log/"];
}

/// What was read of one file and what it counted: written together, so that they agree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The file being read: its device and inode, and the offset after the last whole line.
    pub dev: u64,
    pub inode: u64,
    pub offset: u64,
    pub lines: u64,
    /// Per pattern, per label values (in capture order): matches.
    pub matches: BTreeMap<String, BTreeMap<Vec<String>, u64>>,
    /// Per pattern: matches not counted because the pattern had all its label sets.
    pub overflow: BTreeMap<String, u64>,
}

pub struct LogsCollector {
    section: LogsSection,
    patterns: Vec<(LogPattern, regex::Regex)>,
    cursors: BTreeMap<String, Cursor>,
    /// Pattern hits of this round, kept with the cursors that counted them.
    candidates: Candidates,
}

impl LogsCollector {
    /// The collector, with each file's record from the store; `patterns` are the section's,
    /// compiled.
    pub fn open(section: LogsSection, patterns: Patterns, store: &Store) -> Result<LogsCollector> {
        let mut cursors = BTreeMap::new();
        for file in &section.files {
            let cursor = store
                .get(&LogKey(&file.name))?
                .and_then(|bytes| postcard::from_bytes(&bytes).ok())
                .unwrap_or_default();
            cursors.insert(file.name.clone(), cursor);
        }
        Ok(LogsCollector {
            section,
            patterns,
            cursors,
            candidates: Candidates::default(),
        })
    }

    /// Reads what the files gained, saves the records with the lines kept, and gives the
    /// counters. `now_ms` is when the lines were read: what a kept line is dated; `now`, the
    /// same on the monotonic clock, what the sources' allowances count by. Blocking: file and
    /// store I/O.
    pub fn collect(
        &mut self,
        (store, keeper): (&Store, &Keeper),
        (now_ms, now): (i64, Instant),
        out: &mut Samples,
    ) -> Result<()> {
        let mut write = WriteBatch::default();
        let bounds = self.section.keep_bounds();
        for file in &self.section.files {
            let cursor = self.cursors.entry(file.name.clone()).or_default();
            let before = cursor.clone();
            let patterns: Vec<&(LogPattern, regex::Regex)> = self
                .patterns
                .iter()
                .filter(|(p, _)| p.sources.is_empty() || p.sources.contains(&file.name))
                .collect();
            let limit = self.section.max_series_per_pattern;
            let candidates = &mut self.candidates;
            let mut keep = |line: &str, matched: Vec<String>| {
                let mut kept = kept_line(now_ms, &file.name, line);
                kept.patterns = matched;
                candidates.push(kept, bounds);
            };
            if let Err(error) = follow(&file.path, cursor, &patterns, (limit, &mut keep)) {
                tracing::debug!(file = %file.path.display(), "reading the log: {error:#}");
            }
            if *cursor != before {
                let bytes = postcard::to_allocvec(&*cursor).expect("postcard serializes a cursor");
                write.put(&LogKey(&file.name), bytes);
            }
        }
        if !self.candidates.is_empty() {
            keeper.keep(store, &mut self.candidates, bounds, now, &mut write)?;
        }
        #[allow(clippy::disallowed_methods)] // the caller runs this on the blocking pool
        store.write(write)?;
        self.emit(keeper, out);
        Ok(())
    }

    fn emit(&self, keeper: &Keeper, out: &mut Samples) {
        for (source, cursor) in &self.cursors {
            let source_label = [("source", source.as_str())];
            out.add(
                "outpost_log_lines_total",
                &source_label,
                cursor.lines as f64,
            );
            out.add(
                "outpost_log_lines_not_kept_total",
                &source_label,
                keeper.not_kept(source) as f64,
            );
            emit_patterns(source, cursor, &self.patterns, out);
        }
    }
}

/// The patterns' counters of one source.
pub fn emit_patterns(
    source: &str,
    cursor: &Cursor,
    patterns: &[(LogPattern, regex::Regex)],
    out: &mut Samples,
) {
    for (pattern, regex) in patterns {
        let names: Vec<&str> = regex.capture_names().flatten().collect();
        for (values, count) in cursor.matches.get(&pattern.name).into_iter().flatten() {
            let mut labels = vec![("pattern", pattern.name.as_str()), ("source", source)];
            labels.extend(names.iter().copied().zip(values.iter().map(String::as_str)));
            out.add("outpost_log_pattern_matches_total", &labels, *count as f64);
        }
        if let Some(overflow) = cursor.overflow.get(&pattern.name) {
            let labels = [("pattern", pattern.name.as_str()), ("source", source)];
            out.add(
                "outpost_log_pattern_overflow_total",
                &labels,
                *overflow as f64,
            );
        }
    }
}

/// What to do with a line that a pattern matched: given the line and the patterns' names.
type Keep<'a> = &'a mut dyn FnMut(&str, Vec<String>);

/// Reads `path` from the cursor on, through a rotation if there was one, counting whole lines
/// (each pattern at most `limit` label sets) and handing the matched ones to `keep`.
fn follow(
    path: &Path,
    cursor: &mut Cursor,
    patterns: &[&(LogPattern, regex::Regex)],
    (limit, keep): (usize, Keep),
) -> Result<()> {
    let metadata = std::fs::metadata(path).with_context(|| path.display().to_string())?;
    let same_file = metadata.dev() == cursor.dev && metadata.ino() == cursor.inode;
    if !same_file {
        if cursor.inode != 0 {
            // Rotated: the rest of the old file, wherever it was renamed to in the directory.
            if let Some(old) = find_inode(path, cursor.dev, cursor.inode) {
                read_lines(&old, cursor, patterns, (limit, &mut *keep), u64::MAX)?;
            }
        }
        cursor.dev = metadata.dev();
        cursor.inode = metadata.ino();
        cursor.offset = 0;
    } else if metadata.len() < cursor.offset {
        // Truncated in place.
        cursor.offset = 0;
    }
    read_lines(path, cursor, patterns, (limit, keep), MAX_READ)
}

/// The file in `path`'s directory with this inode (the rotated file).
fn find_inode(path: &Path, dev: u64, inode: u64) -> Option<PathBuf> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|entry| {
            entry
                .metadata()
                .is_ok_and(|m| m.is_file() && m.dev() == dev && m.ino() == inode)
        })
        .map(|entry| entry.path())
}

/// Counts the whole lines from the cursor's offset on (at most `budget` bytes), moving the
/// offset past them; a partial last line waits for its end.
fn read_lines(
    path: &Path,
    cursor: &mut Cursor,
    patterns: &[&(LogPattern, regex::Regex)],
    (limit, keep): (usize, Keep),
    budget: u64,
) -> Result<()> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(cursor.offset))?;
    let mut bytes = Vec::new();
    file.take(budget).read_to_end(&mut bytes)?;
    let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
        return Ok(());
    };
    for line in bytes[..end].split(|b| *b == b'\n') {
        cursor.lines += 1;
        let line = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]);
        let mut matched = Vec::new();
        for (pattern, regex) in patterns {
            if count_match(cursor, pattern, regex, &line, limit) {
                matched.push(pattern.name.clone());
            }
        }
        if !matched.is_empty() {
            keep(&line, matched);
        }
    }
    cursor.offset += end as u64 + 1;
    Ok(())
}

/// Counts `line` if `pattern` matches it; whether it did.
pub fn count_match(
    cursor: &mut Cursor,
    pattern: &LogPattern,
    regex: &regex::Regex,
    line: &str,
    limit: usize,
) -> bool {
    let Some(captures) = regex.captures(line) else {
        return false;
    };
    let values: Vec<String> = regex
        .capture_names()
        .flatten()
        .map(|name| {
            let value = captures.name(name).map_or("", |m| m.as_str());
            let mut end = value.len().min(MAX_LABEL_VALUE);
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value[..end].to_string()
        })
        .collect();
    let counts = cursor.matches.entry(pattern.name.clone()).or_default();
    if let Some(count) = counts.get_mut(&values) {
        *count += 1;
    } else if counts.len() < limit {
        counts.insert(values, 1);
    } else {
        *cursor.overflow.entry(pattern.name.clone()).or_default() += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(dir: &Path, patterns: &[(&str, &str)]) -> LogsSection {
        LogsSection {
            files: vec![LogFile {
                name: "app".into(),
                path: dir.join("app.log"),
            }],
            patterns: patterns
                .iter()
                .map(|(name, regex)| LogPattern {
                    name: name.to_string(),
                    regex: regex.to_string(),
                    sources: Vec::new(),
                })
                .collect(),
            ..LogsSection::default()
        }
    }

    fn append(path: &Path, text: &str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    fn counters(collector: &mut LogsCollector, store: &Store) -> Vec<String> {
        let mut out = Samples::new();
        collector
            .collect((store, &Keeper::default()), (0, Instant::now()), &mut out)
            .unwrap();
        let mut lines = crate::collect::render(out);
        lines.sort();
        lines
    }

    #[test]
    fn lines_and_matches_through_rotation_truncation_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), Default::default()).unwrap();
        let log = dir.path().join("app.log");
        let config = section(dir.path(), &[("errors", r"ERROR (?P<module>\w+)")]);
        append(
            &log,
            "INFO start\nERROR db timeout\nERROR db again\nERROR net down\npartial",
        );
        let mut collector =
            LogsCollector::open(config.clone(), compile(&config).unwrap(), &store).unwrap();
        let first = counters(&mut collector, &store);
        assert!(
            first.contains(&r#"outpost_log_lines_total{source="app"} 4"#.to_string()),
            "{first:?}"
        );
        assert!(first.contains(&r#"outpost_log_pattern_matches_total{module="db",pattern="errors",source="app"} 2"#.to_string()), "{first:?}");
        // The partial line's end, then a rotation by rename with lines in both files.
        append(&log, " line\nERROR net again\n");
        std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
        append(&dir.path().join("app.log.1"), "ERROR db late\n");
        append(&log, "ERROR disk full\n");
        let rotated = counters(&mut collector, &store);
        assert!(
            rotated.contains(&r#"outpost_log_lines_total{source="app"} 8"#.to_string()),
            "{rotated:?}"
        );
        assert!(rotated.contains(&r#"outpost_log_pattern_matches_total{module="db",pattern="errors",source="app"} 3"#.to_string()), "{rotated:?}");
        // A restart: a new collector from the store's records counts nothing twice.
        drop(collector);
        append(&log, "ERROR disk again\n");
        let mut restarted =
            LogsCollector::open(config.clone(), compile(&config).unwrap(), &store).unwrap();
        let resumed = counters(&mut restarted, &store);
        assert!(
            resumed.contains(&r#"outpost_log_lines_total{source="app"} 9"#.to_string()),
            "{resumed:?}"
        );
        assert!(resumed.contains(&r#"outpost_log_pattern_matches_total{module="disk",pattern="errors",source="app"} 2"#.to_string()), "{resumed:?}");
        // Truncated in place (copytruncate), then written again.
        std::fs::write(&log, "").unwrap();
        append(&log, "ERROR cpu hot\n");
        let truncated = counters(&mut restarted, &store);
        assert!(
            truncated.contains(&r#"outpost_log_lines_total{source="app"} 10"#.to_string()),
            "{truncated:?}"
        );
    }

    #[test]
    fn label_sets_past_the_bound_are_counted_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), Default::default()).unwrap();
        let mut config = section(dir.path(), &[("users", r"login (?P<user>\S+)")]);
        config.max_series_per_pattern = 2;
        append(
            &dir.path().join("app.log"),
            "login a\nlogin b\nlogin c\nlogin a\nlogin d\n",
        );
        let mut collector =
            LogsCollector::open(config.clone(), compile(&config).unwrap(), &store).unwrap();
        let out = counters(&mut collector, &store);
        let sets = out
            .iter()
            .filter(|l| l.starts_with("outpost_log_pattern_matches_total"))
            .count();
        assert_eq!(sets, 2, "{out:?}");
        assert!(
            out.contains(
                &r#"outpost_log_pattern_overflow_total{pattern="users",source="app"} 2"#
                    .to_string()
            ),
            "{out:?}"
        );
    }

    #[test]
    fn a_capture_as_long_as_a_line_is_a_label_of_bounded_length() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), Default::default()).unwrap();
        let config = section(dir.path(), &[("users", r"login (?P<user>\S+)")]);
        append(
            &dir.path().join("app.log"),
            &format!("login {}\n", "é".repeat(300)),
        );
        let mut collector =
            LogsCollector::open(config.clone(), compile(&config).unwrap(), &store).unwrap();
        let out = counters(&mut collector, &store);
        let line = out.iter().find(|l| l.contains("user=")).unwrap();
        let value = line
            .split("user=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(
            !value.is_empty() && value.len() <= MAX_LABEL_VALUE,
            "{}",
            value.len()
        );
    }

    #[test]
    fn keep_bounds_past_the_limits_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = section(dir.path(), &[]);
        config.keep_lines = MAX_KEEP_LINES + 1;
        let error = format!("{:#}", compile(&config).unwrap_err());
        assert!(error.starts_with("logs.keep_lines"), "{error}");
        config.keep_lines = 0;
        config.keep_bytes = ByteSize(MAX_KEEP_BYTES + 1);
        let error = format!("{:#}", compile(&config).unwrap_err());
        assert!(error.starts_with("logs.keep_bytes"), "{error}");
        config.keep_bytes = ByteSize(MAX_KEEP_BYTES);
        assert!(compile(&config).is_ok());
        for per_minute in [0, MAX_KEEP_PER_MINUTE + 1] {
            config.keep_per_minute = per_minute;
            let error = format!("{:#}", compile(&config).unwrap_err());
            assert!(error.starts_with("logs.keep_per_minute"), "{error}");
        }
    }

    #[test]
    fn patterns_are_checked_at_load_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = |regex: &str| {
            let config = section(dir.path(), &[("p", regex)]);
            format!("{:#}", compile(&config).expect_err(regex))
        };
        // A program of a million states: refused, not compiled.
        assert!(error("(a{1000}){1000}").starts_with("logs.pattern[0].regex"));
        assert!(error("(?P<instance>x)").contains("cannot be a label"));
        assert!(error("(?P<a>x)(?P<b>x)(?P<c>x)(?P<d>x)(?P<e>x)(?P<f>x)").contains("at most 5"));
        assert!(error("(unclosed").starts_with("logs.pattern[0].regex"));
        // Nested repetition backtracks catastrophically elsewhere; here it is linear and taken.
        let config = section(dir.path(), &[("nested", "(a+)+$")]);
        let (_, regex) = &compile(&config).unwrap()[0];
        let hostile = format!("{}b", "a".repeat(MAX_LINE));
        assert!(!regex.is_match(&hostile));
    }
}
