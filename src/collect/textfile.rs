//! node_exporter's textfile collector: the `*.prom` files that cron jobs and scripts leave in a
//! directory (pending package updates, backup ages, RAID state), read every `textfile_interval`
//! (15 s by default) and stored as the device's series, with `node_textfile_mtime_seconds{file}`
//! and `node_textfile_scrape_error` as node_exporter gives them, so that the rules written for
//! them keep working.
//!
//! Unlike node_exporter, a file with a bad line keeps its good lines (the error flag still goes
//! to 1 and the log names the line): a script that prints one malformed line should not blank
//! its other figures. A line with a timestamp is refused, as node_exporter refuses it: the file's
//! figures are taken at the round's time.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use outpost_storage::text::TimeWindow;
use outpost_storage::SeriesKey;

use super::scrape::parse_exposition;
use super::Samples;

/// The largest file read; a bigger one is skipped and flagged (a runaway script's output would
/// otherwise be parsed every second).
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The most series taken from all the files together in one round; the rest are left out and
/// flagged.
pub const MAX_SERIES: usize = 10_000;
/// The most files read in one round, and the most bytes in all: each file is a
/// `node_textfile_mtime_seconds` series and a read every round, so a directory that filled up
/// (a script that never deletes its output) must not cost without bound.
pub const MAX_FILES: usize = 1_000;
pub const MAX_TOTAL_BYTES: u64 = 16 << 20;

/// The collector as the agent runs it: [`collect`], with what went wrong logged only when it
/// changes, not every round.
pub struct TextfileCollector {
    directory: PathBuf,
    problems: Vec<String>,
}

impl TextfileCollector {
    pub fn new(directory: PathBuf) -> Self {
        TextfileCollector {
            directory,
            problems: Vec::new(),
        }
    }

    pub fn collect(&mut self, out: &mut Samples) {
        let problems = collect(&self.directory, out);
        if problems != self.problems {
            for problem in &problems {
                tracing::warn!("textfile collector: {problem}");
            }
            if problems.is_empty() {
                tracing::info!("textfile collector: every file reads again");
            }
            self.problems = problems;
        }
    }
}

/// Reads the directory's files into `out`. Returns what went wrong, one message per file (empty
/// when nothing did), for the caller to log once per change.
pub fn collect(directory: &Path, out: &mut Samples) -> Vec<String> {
    let mut problems = Vec::new();
    let files = match prom_files(directory) {
        Ok(files) => files,
        Err(error) => {
            problems.push(format!("{}: {error}", directory.display()));
            out.add("node_textfile_scrape_error", &[], 1.0);
            return problems;
        }
    };
    let mut files = files.into_iter();
    let mut seen = HashSet::new();
    let mut budget = MAX_TOTAL_BYTES;
    for path in files.by_ref().take(MAX_FILES) {
        match read_file(&path, &mut seen, &mut budget, out) {
            Ok(mtime) => {
                let file = path.to_string_lossy();
                out.add("node_textfile_mtime_seconds", &[("file", &file)], mtime);
            }
            Err(problem) => problems.push(format!("{}: {problem}", path.display())),
        }
    }
    let left = files.count();
    if left > 0 {
        problems.push(format!(
            "{}: {left} more files past the {MAX_FILES} read each round; left out",
            directory.display()
        ));
    }
    let error = f64::from(u8::from(!problems.is_empty()));
    out.add("node_textfile_scrape_error", &[], error);
    problems
}

/// The directory's `*.prom` files, in name order (so that, of two files with the same series,
/// the same one wins every round).
fn prom_files(directory: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "prom") && path.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// One file's series into `out`, skipping those another file gave already. `Ok` holds the
/// file's modification time; `Err` says what was wrong (its good lines are still in `out`).
fn read_file(
    path: &Path,
    seen: &mut HashSet<SeriesKey>,
    budget: &mut u64,
    out: &mut Samples,
) -> Result<f64, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let metadata = file.metadata().map_err(|e| e.to_string())?;
    if metadata.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_FILE_BYTES} read; skipped",
            metadata.len()
        ));
    }
    if metadata.len() > *budget {
        return Err(format!(
            "past the {MAX_TOTAL_BYTES} bytes read from all files each round; skipped"
        ));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // Bounded again in case the file grows while it is read.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES.min(*budget) {
        return Err("grew past the bytes allowed while it was read; skipped".to_string());
    }
    *budget -= bytes.len() as u64;
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text; skipped".to_string())?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let source = format!("textfile:{name}");
    let parsed = parse_exposition(&text, &source, &BTreeMap::new(), TimeWindow::ANY);
    let mut problems = Vec::new();
    if parsed.bad_lines > 0 {
        let (count, first) = (parsed.bad_lines, parsed.errors.join("; "));
        problems.push(format!("{count} bad lines ({first}); left out"));
    }
    let (mut timestamped, mut duplicates, mut over) = (0usize, 0usize, 0usize);
    for (key, value, timestamp) in parsed.samples {
        if timestamp.is_some() {
            timestamped += 1;
        } else if seen.len() >= MAX_SERIES {
            over += 1;
        } else if !seen.insert(key.clone()) {
            duplicates += 1;
        } else {
            out.values.push((key, value));
        }
    }
    for (count, what) in [
        (timestamped, "carry a timestamp, which a text file may not"),
        (duplicates, "repeat a series already read"),
        (over, "are past the limit of series from all files"),
    ] {
        if count > 0 {
            problems.push(format!("{count} lines {what}; left out"));
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let modified = metadata.modified().map_err(|e| e.to_string())?;
    Ok(modified
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::render;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn every_prom_file_is_read_and_the_error_flag_says_whether_one_was_bad() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "apt.prom",
            "# HELP apt_upgrades_pending Pending upgrades.\n# TYPE apt_upgrades_pending gauge\n\
             apt_upgrades_pending{origin=\"Debian\"} 4\n",
        );
        write(dir.path(), "backup.prom", "backup_age_seconds 3600\n");
        write(dir.path(), "notes.txt", "not_read 1\n");
        let mut out = Samples::new();
        assert!(collect(dir.path(), &mut out).is_empty());
        let got = render(out);
        let apt = dir.path().join("apt.prom");
        let mtime = std::fs::metadata(&apt)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        for line in [
            r#"apt_upgrades_pending{origin="Debian"} 4"#.to_string(),
            "backup_age_seconds 3600".to_string(),
            format!(
                "node_textfile_mtime_seconds{{file=\"{}\"}} {mtime}",
                apt.display()
            ),
            "node_textfile_scrape_error 0".to_string(),
        ] {
            assert!(got.contains(&line), "{line}: {got:?}");
        }
        assert!(!got.iter().any(|l| l.contains("not_read")), "{got:?}");

        // A bad line, a timestamp, a series another file gave, a name of the agent's own.
        write(
            dir.path(),
            "broken.prom",
            "backup_age_seconds 1\nthis is not a sample\nraid_ok 1 1700000000000\n\
             raid_disks 2\nnode_load1 99\n",
        );
        let mut out = Samples::new();
        let problems = collect(dir.path(), &mut out);
        assert_eq!(problems.len(), 1, "{problems:?}");
        for part in ["line 2", "1 lines carry a timestamp", "1 lines repeat"] {
            assert!(problems[0].contains(part), "{part}: {problems:?}");
        }
        let got = render(out);
        assert!(
            got.contains(&"backup_age_seconds 3600".to_string()),
            "{got:?}"
        );
        assert!(got.contains(&"raid_disks 2".to_string()), "{got:?}");
        assert!(
            got.contains(&r#"node_load1{outpost_source="textfile:broken.prom"} 99"#.to_string()),
            "{got:?}"
        );
        assert!(!got.iter().any(|l| l.starts_with("raid_ok")), "{got:?}");
        let mtimes = got
            .iter()
            .filter(|l| l.starts_with("node_textfile_mtime_seconds"));
        assert_eq!(mtimes.count(), 2, "no time for the bad file: {got:?}");
        assert!(got.contains(&"node_textfile_scrape_error 1".to_string()));
    }

    #[test]
    fn a_missing_directory_or_an_oversized_file_is_flagged_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Samples::new();
        assert_eq!(collect(&dir.path().join("absent"), &mut out).len(), 1);
        assert_eq!(render(out), ["node_textfile_scrape_error 1"]);

        // A named pipe would block the round on its open: it is not a file to read.
        let pipe = dir.path().join("pipe.prom");
        let made = std::process::Command::new("mkfifo").arg(&pipe).status();
        assert!(made.is_ok_and(|status| status.success()));
        let mut out = Samples::new();
        assert!(collect(dir.path(), &mut out).is_empty());
        assert_eq!(render(out), ["node_textfile_scrape_error 0"]);

        let line = "big_series 1\n";
        let big = line.repeat(MAX_FILE_BYTES as usize / line.len() + 1);
        write(dir.path(), "big.prom", &big);
        let mut out = Samples::new();
        let problems = collect(dir.path(), &mut out);
        assert!(problems[0].contains("skipped"), "{problems:?}");
        assert_eq!(render(out), ["node_textfile_scrape_error 1"]);
    }

    #[test]
    fn series_past_the_limit_are_left_out_and_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..MAX_SERIES + 5)
            .map(|i| format!("many{{i=\"{i}\"}} 1\n"))
            .collect();
        write(dir.path(), "many.prom", &text);
        let mut out = Samples::new();
        let problems = collect(dir.path(), &mut out);
        assert!(
            problems[0].contains("5 lines are past the limit"),
            "{problems:?}"
        );
        let kept = out
            .values
            .iter()
            .filter(|(key, _)| key.name() == "many")
            .count();
        assert_eq!(kept, MAX_SERIES);
    }

    #[test]
    fn files_past_the_limit_are_left_out_and_flagged() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..MAX_FILES + 3 {
            write(
                dir.path(),
                &format!("f{i:05}.prom"),
                &format!("f{{i=\"{i}\"}} 1\n"),
            );
        }
        let mut out = Samples::new();
        let problems = collect(dir.path(), &mut out);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("3 more files"), "{problems:?}");
        let mtimes = out
            .values
            .iter()
            .filter(|(key, _)| key.name() == "node_textfile_mtime_seconds")
            .count();
        assert_eq!(mtimes, MAX_FILES);

        // Files that fit one by one, but not all together.
        let dir = tempfile::tempdir().unwrap();
        let comment = "# padding\n".repeat(MAX_FILE_BYTES as usize / 10 - 1);
        let fit = (MAX_TOTAL_BYTES / comment.len() as u64) as usize;
        for i in 0..fit + 2 {
            write(dir.path(), &format!("p{i:03}.prom"), &comment);
        }
        let mut out = Samples::new();
        let problems = collect(dir.path(), &mut out);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems
            .iter()
            .all(|p| p.contains("bytes read from all files")));
    }
}
