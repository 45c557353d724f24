//! Log files on a real agent: a writer appends lines while the agent is killed (SIGKILL) and
//! started again, and the file is rotated while the agent is down; every line must be counted
//! once, and the counters must go on from where they were.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{fail, metric_value, outpost, wait_until, Agent};

const LINES: u64 = 30_000;

fn config(dir: &Path) -> String {
    format!(
        "[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n\
         [containers]\nenabled = false\n[processes]\nenabled = false\n\
         [store]\nflush_interval = \"100ms\"\n\
         [logs]\ninterval = \"200ms\"\nkeep_per_minute = 60000\n\
         [[logs.file]]\nname = \"app\"\npath = \"{}\"\n\
         [[logs.pattern]]\nname = \"errors\"\nregex = 'level=error module=(?P<module>\\w+)'\n",
        dir.join("app.log").display()
    )
}

fn count(agent: &Agent, series: &str) -> f64 {
    metric_value(&agent.metrics(), series).unwrap_or(0.0)
}

#[test]
fn lines_written_across_a_kill_and_a_rotation_are_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let rotated = dir.path().join("app.log.1");
    let agent = Agent::start(dir.path(), &config(dir.path()), &[]);

    // The writer: 20 lines every 2 ms or so, every tenth an error of module a or b.
    let rotate_now = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, rotated, rotate_now) = (log.clone(), rotated.clone(), rotate_now.clone());
        std::thread::spawn(move || {
            let open = |path: &Path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap()
            };
            let mut file = open(&log);
            for i in 0..LINES {
                if rotate_now.swap(false, Ordering::SeqCst) {
                    // As logrotate does: rename, and the writer opens a new file; the line
                    // written between the two lands in the rotated one.
                    std::fs::rename(&log, &rotated).unwrap();
                    writeln!(file, "level=info n={i} after the rename").unwrap();
                    file = open(&log);
                    continue;
                }
                let line = match i % 10 {
                    0 => format!("level=error module=a n={i}"),
                    5 => format!("level=error module=b n={i}"),
                    _ => format!("level=info n={i} some ordinary text to make the line longer"),
                };
                writeln!(file, "{line}").unwrap();
                if i % 20 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    };
    let lines_now = || count(&agent, r#"outpost_log_lines_total{source="app"}"#);
    let durable = wait_until("lines counted", Duration::from_secs(30), || {
        Some(lines_now()).filter(|c| *c > 2_000.0)
    });
    // The record of what was read survives a kill once the store has flushed it (every 100 ms
    // here): two rounds on, the one counted above has been.
    let mut seen = durable;
    for round in 0..2 {
        seen = wait_until(&format!("round {round}"), Duration::from_secs(30), || {
            Some(lines_now()).filter(|c| *c > seen)
        });
    }
    // Killed mid-stream; the file rotated while the agent is down.
    drop(agent);
    rotate_now.store(true, Ordering::SeqCst);
    wait_until("the rotation", Duration::from_secs(30), || {
        (!rotate_now.load(Ordering::SeqCst)).then_some(())
    });
    let before_restart = std::fs::read_to_string(&rotated).unwrap().lines().count();
    let agent = Agent::start(dir.path(), &config(dir.path()), &[]);
    let first = wait_until(
        "the first count after the restart",
        Duration::from_secs(30),
        || Some(count(&agent, r#"outpost_log_lines_total{source="app"}"#)).filter(|c| *c > 0.0),
    );
    writer.join().unwrap();

    // Every line written is counted (the count reaches the total), and none twice (it stays
    // there: a round after, it has not gone past).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut lines = 0.0;
    while lines < LINES as f64 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        lines = count(&agent, r#"outpost_log_lines_total{source="app"}"#);
    }
    std::thread::sleep(Duration::from_millis(500));
    lines = count(&agent, r#"outpost_log_lines_total{source="app"}"#);
    assert_eq!(lines, LINES as f64, "every line counted once");
    assert!(
        first >= durable,
        "the counter went on from where it was: {durable} before the kill, {first} after"
    );
    assert!(before_restart > 0);
    let errors = |module: &str| {
        count(
            &agent,
            &format!(
                r#"outpost_log_pattern_matches_total{{module="{module}",pattern="errors",source="app"}}"#
            ),
        )
    };
    // Counted by the test from the files, not from the writer's plan (one line went to the
    // rotated file in place of a planned one).
    let written: String = [&rotated, &log]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let expected = |module: &str| {
        written
            .lines()
            .filter(|l| l.starts_with(&format!("level=error module={module} ")))
            .count() as f64
    };
    assert_eq!(written.lines().count() as f64, lines);
    assert_eq!(errors("a"), expected("a"));
    assert_eq!(errors("b"), expected("b"));
    // The pattern's hits are kept too, each once across the kill and the rotation: 500
    // (`keep_lines`' default), newest first, down from the newest. At a thousand errors a
    // second, the file's allowance (a thousand a second, the most) may have left some out.
    let (status, body) = crate::agent::http(agent.port, "GET", "/api/logs?limit=1000", "");
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let kept: Vec<&str> = answer["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    let newest_errors: Vec<&str> = written
        .lines()
        .filter(|l| l.starts_with("level=error "))
        .rev()
        .collect();
    assert_eq!(kept.len(), 500);
    assert_eq!(kept[0], newest_errors[0]);
    let not_kept = r#"outpost_log_lines_not_kept_total{source="app"}"#;
    assert!(metric_value(&agent.metrics(), not_kept).is_some());
    let mut older = newest_errors.iter();
    for line in &kept {
        assert!(
            older.any(|written| written == line),
            "{line} kept twice, out of order, or never written"
        );
    }
    let (_, body) = crate::agent::http(agent.port, "GET", "/api/logs?q=MODULE%3Db&limit=3", "");
    let found: serde_json::Value = serde_json::from_str(&body).unwrap();
    let found = found["lines"].as_array().unwrap();
    assert_eq!(found.len(), 3);
    assert!(found
        .iter()
        .all(|l| l["line"].as_str().unwrap().contains("module=b")
            && l["patterns"] == serde_json::json!(["errors"])));
    let too_long = format!("/api/logs?q={}", "x".repeat(2000));
    assert_eq!(crate::agent::http(agent.port, "GET", &too_long, "").0, 400);
    agent.stop();
}

/// A pattern whose program would be huge is refused when the config is loaded, naming the key;
/// a nested repetition that backtracking engines choke on is taken (matching is linear here).
#[test]
fn a_pattern_too_big_to_compile_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let with = |regex: &str| {
        format!(
            "[[logs.file]]\nname = \"app\"\npath = \"{}\"\n[[logs.pattern]]\nname = \"p\"\nregex = '{regex}'\n",
            dir.path().join("app.log").display()
        )
    };
    std::fs::write(&path, with("(a{1000}){1000}")).unwrap();
    let stderr = fail(outpost(&["agent", "--check-config", "--config"]).arg(&path));
    assert!(stderr.contains("logs.pattern[0].regex"), "{stderr}");
    std::fs::write(&path, with("(a+)+$")).unwrap();
    let checked = outpost(&["agent", "--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// Appends `count` entries to a journal file through Debian's `systemd-journal-remote`, which
/// writes real journal files from the journal's export format; every other one an error of
/// module `db`. Returns how many were errors.
fn append_journal(file: &Path, first: usize, count: usize) -> usize {
    let remote = [
        "/lib/systemd/systemd-journal-remote",
        "/usr/lib/systemd/systemd-journal-remote",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("systemd-journal-remote (apt-get install systemd-journal-remote)");
    let mut export = String::new();
    let mut errors = 0;
    for n in first..first + count {
        let error = n % 2 == 0;
        errors += usize::from(error);
        let (priority, message) = if error {
            (3, format!("level=error module=db n={n}"))
        } else {
            (6, format!("served request n={n}"))
        };
        export.push_str(&format!(
            "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n\
             _SYSTEMD_UNIT=app.service\nPRIORITY={priority}\nMESSAGE={message}\n\n",
            1_796_000_000_000_000u64 + n as u64,
            1_000 + n
        ));
    }
    let mut child = std::process::Command::new(remote)
        .arg(format!("--output={}", file.display()))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(export.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    errors
}

/// An agent stopped before any new entry came has still marked where the journal ended when it
/// started: what was written while it was stopped is counted when it is back, not skipped as
/// history. (It used to begin every start without a cursor at the journal's end again.)
#[test]
fn journal_entries_written_while_stopped_before_any_came_are_counted() {
    for reader in READERS {
        entries_written_while_stopped_are_counted(reader);
    }
}

/// The journal's two readers: its files, and `journalctl`.
const READERS: [&str; 2] = ["files", "journalctl"];

fn entries_written_while_stopped_are_counted(reader: &str) {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("system.journal");
    append_journal(&journal, 0, 5);
    let config = journal_config(&journal, reader);
    let errors_series = r#"outpost_journal_entries_total{priority="err",unit="app.service"}"#;
    let agent = Agent::start(dir.path(), &config, &[]);
    wait_until("the first round", Duration::from_secs(30), || {
        metric_value(&agent.metrics(), "outpost_journal_malformed_total")
    });
    // Two more rounds: the record with the journal's end is flushed (every 100 ms here).
    two_journal_rounds(&agent);
    assert_eq!(
        metric_value(&agent.metrics(), errors_series),
        None,
        "the history is not counted"
    );
    drop(agent);
    let errors = append_journal(&journal, 5, 20);
    let agent = Agent::start(dir.path(), &config, &[]);
    // The first round after the start may have counted only some of them.
    wait_until(
        "the entries written meanwhile",
        Duration::from_secs(30),
        || metric_value(&agent.metrics(), errors_series).filter(|c| *c >= errors as f64),
    );
    two_journal_rounds(&agent);
    assert_eq!(
        metric_value(&agent.metrics(), errors_series),
        Some(errors as f64),
        "read by {reader}"
    );
    agent.stop();
}

/// The agent's config for the journal tests: only the journal, read from `journal` (a file or
/// a pattern) by `reader`.
fn journal_config(journal: &Path, reader: &str) -> String {
    format!(
        "[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n\
         [containers]\nenabled = false\n[processes]\nenabled = false\n\
         [agent]\nself_interval = \"200ms\"\n[store]\nflush_interval = \"100ms\"\n\
         [logs]\ninterval = \"200ms\"\njournal = true\njournal_files = [\"{}\"]\n\
         journal_reader = \"{reader}\"\n\
         [[logs.pattern]]\nname = \"errors\"\nregex = 'level=error module=(?P<module>\\w+)'\nsources = [\"journal\"]\n",
        journal.display()
    )
}

/// The journal, followed from a real journal file by each reader: the history before the
/// agent's first start is not counted; entries written while the agent is killed are counted
/// once when it is back (it resumes after its saved cursor, or its files' positions).
#[test]
fn journal_entries_across_a_kill_are_counted_once() {
    for reader in READERS {
        entries_across_a_kill_are_counted_once(reader);
    }
}

fn entries_across_a_kill_are_counted_once(reader: &str) {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("system.journal");
    append_journal(&journal, 0, 5);
    let config = journal_config(&journal, reader);
    let errors_series = r#"outpost_journal_entries_total{priority="err",unit="app.service"}"#;
    let infos_series = r#"outpost_journal_entries_total{priority="info",unit="app.service"}"#;
    let matches_series =
        r#"outpost_log_pattern_matches_total{module="db",pattern="errors",source="journal"}"#;
    let agent = Agent::start(dir.path(), &config, &[]);
    // The history is not counted: the first round says so with a zero.
    wait_until("the first round", Duration::from_secs(30), || {
        metric_value(&agent.metrics(), "outpost_journal_malformed_total")
    });
    let mut errors = append_journal(&journal, 5, 20);
    let durable = wait_until("the new entries", Duration::from_secs(30), || {
        Some(count(&agent, errors_series)).filter(|c| *c == errors as f64)
    });
    // Two more rounds (each times itself anew): the record of the count above has been
    // flushed (every 100 ms here).
    let round_time = r#"node_scrape_collector_duration_seconds{collector="journal"}"#;
    for _ in 0..2 {
        let before = metric_value(&agent.metrics(), round_time);
        wait_until("a round", Duration::from_secs(30), || {
            (metric_value(&agent.metrics(), round_time) != before).then_some(())
        });
    }
    drop(agent);
    errors += append_journal(&journal, 25, 20);
    let agent = Agent::start(dir.path(), &config, &[]);
    let first = wait_until(
        "the counts after the restart",
        Duration::from_secs(30),
        || Some(count(&agent, errors_series)).filter(|c| *c > 0.0),
    );
    assert!(
        first >= durable,
        "{first} after the restart, {durable} before"
    );
    wait_until("every entry counted", Duration::from_secs(30), || {
        Some(count(&agent, errors_series)).filter(|c| *c >= errors as f64)
    });
    let metrics = agent.metrics();
    assert_eq!(metric_value(&metrics, errors_series), Some(errors as f64));
    assert_eq!(
        metric_value(&metrics, infos_series),
        Some((40 - errors) as f64)
    );
    assert_eq!(metric_value(&metrics, matches_series), Some(errors as f64));
    agent.stop();
}

/// Waits for two more of the journal's rounds: what the one before counted is in the store.
fn two_journal_rounds(agent: &Agent) {
    let round_time = r#"node_scrape_collector_duration_seconds{collector="journal"}"#;
    for _ in 0..2 {
        let before = metric_value(&agent.metrics(), round_time);
        wait_until("a round", Duration::from_secs(30), || {
            (metric_value(&agent.metrics(), round_time) != before).then_some(())
        });
    }
}

/// The agent switched between its two readers across restarts (an upgrade from the version
/// that read through journalctl; a journal file that needs journalctl; back), with entries
/// written while it was stopped each time: every entry is counted once.
#[test]
fn journal_entries_are_counted_once_across_a_change_of_reader() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("system.journal");
    append_journal(&journal, 0, 5);
    let errors_series = r#"outpost_journal_entries_total{priority="err",unit="app.service"}"#;
    let mut errors = 0;
    let mut written = 5;
    for reader in ["journalctl", "files", "journalctl", "files"] {
        let agent = Agent::start(dir.path(), &journal_config(&journal, reader), &[]);
        wait_until(
            "the entries written meanwhile",
            Duration::from_secs(30),
            || Some(count(&agent, errors_series)).filter(|c| *c == errors as f64),
        );
        errors += append_journal(&journal, written, 10);
        written += 10;
        wait_until("the new entries", Duration::from_secs(30), || {
            Some(count(&agent, errors_series)).filter(|c| *c == errors as f64)
        });
        two_journal_rounds(&agent);
        drop(agent);
        errors += append_journal(&journal, written, 6);
        written += 6;
    }
    let agent = Agent::start(dir.path(), &journal_config(&journal, "files"), &[]);
    wait_until("the last entries", Duration::from_secs(30), || {
        Some(count(&agent, errors_series)).filter(|c| *c >= errors as f64)
    });
    two_journal_rounds(&agent);
    assert_eq!(count(&agent, errors_series), errors as f64);
    agent.stop();
}

/// A journal file archived (renamed, as journald does when it is full) while the agent reads
/// it, and a new one begun: the files' reader follows both through the pattern it was given,
/// entries written to the old file before the rename and to the new one after are each
/// counted once, across a kill and a change to journalctl too.
#[test]
fn journal_entries_across_a_rotation_are_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("journal");
    std::fs::create_dir(&logs).unwrap();
    let active = logs.join("system.journal");
    append_journal(&active, 0, 4);
    let config = journal_config(&logs.join("system*.journal"), "files");
    let errors_series = r#"outpost_journal_entries_total{priority="err",unit="app.service"}"#;
    let agent = Agent::start(dir.path(), &config, &[]);
    two_journal_rounds(&agent);
    let mut errors = append_journal(&active, 4, 10);
    // Archived, then written on: a new file under the old name.
    std::fs::rename(&active, logs.join("system@0001-0001-0001.journal")).unwrap();
    errors += append_journal(&active, 14, 10);
    wait_until("both files' entries", Duration::from_secs(30), || {
        Some(count(&agent, errors_series)).filter(|c| *c == errors as f64)
    });
    two_journal_rounds(&agent);
    drop(agent);
    // Written to, archived and written on while the agent is away: the archive is read after
    // the new file (the names' order), and holds older entries.
    errors += append_journal(&active, 24, 10);
    std::fs::rename(&active, logs.join("system@0002-0002-0002.journal")).unwrap();
    errors += append_journal(&active, 34, 10);
    let agent = Agent::start(dir.path(), &config, &[]);
    wait_until(
        "the entries after the kill",
        Duration::from_secs(30),
        || Some(count(&agent, errors_series)).filter(|c| *c == errors as f64),
    );
    two_journal_rounds(&agent);
    drop(agent);
    // Then through journalctl, from the cursor the files' reader saved.
    errors += append_journal(&active, 44, 10);
    let journalctl = journal_config(&logs.join("system*.journal"), "journalctl");
    let agent = Agent::start(dir.path(), &journalctl, &[]);
    wait_until(
        "the entries through journalctl",
        Duration::from_secs(30),
        || Some(count(&agent, errors_series)).filter(|c| *c >= errors as f64),
    );
    two_journal_rounds(&agent);
    assert_eq!(count(&agent, errors_series), errors as f64);
    agent.stop();
}

/// A careless or hostile `journal_files`: a named pipe named like a journal file, beside the real
/// journal. The pipe is passed over with a warning; the journal is counted. (Opening the pipe
/// blocked the reader for ever, and nothing was counted.)
#[test]
fn a_named_pipe_among_the_journal_files_does_not_stop_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("system.journal");
    let pipe = dir.path().join("a.journal");
    let made = std::process::Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .unwrap();
    assert!(made.success());
    append_journal(&journal, 0, 4);
    let config = journal_config(&journal, "files").replace(
        &format!("journal_files = [\"{}\"]", journal.display()),
        &format!(
            "journal_files = [\"{}\", \"{}\"]",
            pipe.display(),
            journal.display()
        ),
    );
    assert!(config.contains("a.journal"), "{config}");
    let agent = Agent::start(dir.path(), &config, &[]);
    two_journal_rounds(&agent);
    let errors = append_journal(&journal, 4, 10);
    let errors_series = r#"outpost_journal_entries_total{priority="err",unit="app.service"}"#;
    wait_until("the journal's entries", Duration::from_secs(30), || {
        Some(count(&agent, errors_series)).filter(|c| *c == errors as f64)
    });
    let log = agent.stop();
    assert!(log.contains("not a regular file"), "{log}");
}

/// The kept log lines the hub holds of `device` (`GET /api/devices/{id}/logs`), newest first,
/// those that hold `q`.
pub fn hub_log_lines(port: u16, device: &str, q: &str) -> Vec<String> {
    let (status, body) = crate::agent::http(
        port,
        "GET",
        &format!("/api/devices/{device}/logs?limit=1000&q={q}"),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    answer["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect()
}

/// The lines the agent keeps reach the hub with the batches, those kept while the hub was
/// away included, each once; the hub's API finds them by what they say.
#[test]
fn kept_lines_reach_the_hub_once_even_when_kept_while_it_was_away() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (crate::agent::free_port(), crate::agent::free_port());
    let mqtt = crate::sync::enrol(dir.path(), "dev-l", mqtt_port);
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let log = agent_dir.join("app.log");
    let write = |from: usize, to: usize| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        for n in from..to {
            let module = ["db", "net"][n % 2];
            writeln!(file, "level=info n={n} nothing to see").unwrap();
            writeln!(file, "level=error module={module} n={n} timeout").unwrap();
        }
    };
    let hub_lines = |q: &str| hub_log_lines(http_port, "dev-l", q);
    let hub = crate::sync::Hub::start(dir.path(), http_port, mqtt_port);
    write(0, 3);
    let agent = Agent::start(&agent_dir, &format!("{}{mqtt}", config(&agent_dir)), &[]);
    wait_until(
        "the first lines at the hub",
        Duration::from_secs(30),
        || (hub_lines("").len() == 3).then_some(()),
    );
    hub.stop();
    // Kept while the hub is away: they wait in the agent's store.
    write(3, 7);
    wait_until("the agent to keep them", Duration::from_secs(30), || {
        let (_, body) = crate::agent::http(agent.port, "GET", "/api/logs", "");
        (body.matches("level=error").count() == 7).then_some(())
    });
    let hub = crate::sync::Hub::start(dir.path(), http_port, mqtt_port);
    wait_until("every line at the hub", Duration::from_secs(30), || {
        (hub_lines("").len() >= 7).then_some(())
    });
    let expected: Vec<String> = (0..7)
        .rev()
        .map(|n| format!("level=error module={} n={n} timeout", ["db", "net"][n % 2]))
        .collect();
    assert_eq!(hub_lines(""), expected, "each once, newest first");
    assert_eq!(hub_lines("MODULE%3DNET").len(), 3);
    agent.stop();
    hub.stop();
}

/// Loki's push endpoint as its HTTP API documentation gives it: `POST /loki/api/v1/push` with
/// JSON streams, answered 204, or with `status` while that is set. A stand-in: Grafana Loki is
/// not packaged for Debian, so no real one runs here; each request is checked against the
/// documented format as it comes.
struct LokiPushEndpoint {
    port: u16,
    /// Every line taken: the stream's labels, the time in nanoseconds, the text.
    taken: Arc<std::sync::Mutex<Vec<(serde_json::Value, String, String)>>>,
    status: Arc<std::sync::atomic::AtomicU16>,
}

impl LokiPushEndpoint {
    fn start() -> LokiPushEndpoint {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let taken = Arc::new(std::sync::Mutex::new(Vec::new()));
        let status = Arc::new(std::sync::atomic::AtomicU16::new(204));
        let (kept, answer) = (taken.clone(), status.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(request) = crate::receivers::read_request(&mut stream) else {
                    continue;
                };
                assert_eq!(
                    (request.method.as_str(), request.target.as_str()),
                    ("POST", "/loki/api/v1/push")
                );
                assert_eq!(request.header("content-type"), "application/json");
                assert_eq!(request.header("x-scope-orgid"), "fleet-a");
                let status = answer.load(Ordering::SeqCst);
                if status == 204 {
                    for stream in request.json()["streams"].as_array().unwrap() {
                        for value in stream["values"].as_array().unwrap() {
                            let (nanos, line) = (&value[0], &value[1]);
                            let nanos = nanos.as_str().expect("the time as a string");
                            assert!(nanos.len() == 19 && nanos.bytes().all(|b| b.is_ascii_digit()));
                            kept.lock().unwrap().push((
                                stream["stream"].clone(),
                                nanos.to_string(),
                                line.as_str().unwrap().to_string(),
                            ));
                        }
                    }
                }
                let reason = if status == 204 { "No Content" } else { "Error" };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        LokiPushEndpoint {
            port,
            taken,
            status,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.taken
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, line)| line.clone())
            .collect()
    }

    fn wait_for_lines(&self, n: usize) -> Vec<String> {
        wait_until(
            &format!("{n} lines at Loki"),
            Duration::from_secs(30),
            || {
                let lines = self.lines();
                (lines.len() >= n).then_some(lines)
            },
        )
    }
}

#[test]
fn kept_lines_reach_loki_once_through_its_outage_a_refusal_and_a_hub_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (crate::agent::free_port(), crate::agent::free_port());
    let mqtt = crate::sync::enrol(dir.path(), "dev-l", mqtt_port);
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let log = agent_dir.join("app.log");
    let error_line = |n: usize| format!("level=error module=db n={n} timeout");
    let write = |from: usize, to: usize| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        for n in from..to {
            writeln!(file, "level=info n={n} nothing to see").unwrap();
            writeln!(file, "{}", error_line(n)).unwrap();
        }
    };
    let loki = LokiPushEndpoint::start();
    let hub_config = dir.path().join("hub-loki.toml");
    std::fs::write(
        &hub_config,
        format!(
            "[alerts]\ninterval = \"1s\"\n\
             [loki]\nurl = \"http://127.0.0.1:{}/loki/api/v1/push\"\nevery = \"1s\"\n\
             headers = {{ \"X-Scope-OrgID\" = \"fleet-a\" }}\n",
            loki.port
        ),
    )
    .unwrap();
    let args = ["--config", hub_config.to_str().unwrap()];
    let start_hub = || crate::sync::Hub::start_with(dir.path(), http_port, mqtt_port, &args);
    let hub_counter = |name: &str| {
        let (_, metrics) = crate::agent::http(http_port, "GET", "/metrics", "");
        metric_value(&metrics, name).unwrap_or(0.0)
    };
    let hub_alert = |name: &str| {
        let name = name.to_string();
        wait_until(
            &format!("the hub's alert {name}"),
            Duration::from_secs(30),
            || {
                let (_, alerts) = crate::agent::http(http_port, "GET", "/api/v1/alerts", "");
                alerts.contains(&name).then_some(())
            },
        );
    };
    let hub = start_hub();
    write(0, 3);
    let agent = Agent::start(&agent_dir, &format!("{}{mqtt}", config(&agent_dir)), &[]);
    let first = loki.wait_for_lines(3);
    assert_eq!(first, (0..3).map(error_line).collect::<Vec<_>>());
    let (labels, nanos, _) = loki.taken.lock().unwrap()[0].clone();
    assert_eq!(labels["instance"], "dev-l");
    assert_eq!(labels["source"], "app");
    assert!(
        nanos.ends_with("000000"),
        "milliseconds in nanoseconds: {nanos}"
    );

    // Loki away (503): the lines wait on the hub and go once it is back.
    loki.status.store(503, Ordering::SeqCst);
    write(3, 6);
    wait_until(
        "the hub to count Loki's failure",
        Duration::from_secs(30),
        || (hub_counter("outpost_hub_loki_errors_total") > 0.0).then_some(()),
    );
    hub_alert("loki_forwarding_failing");
    loki.status.store(204, Ordering::SeqCst);
    loki.wait_for_lines(6);

    // A hub restarted goes on after what Loki took.
    hub.stop();
    let hub = start_hub();
    write(6, 7);
    loki.wait_for_lines(7);

    // Refused for good (400): counted, passed, never sent again.
    loki.status.store(400, Ordering::SeqCst);
    write(7, 8);
    wait_until("the refusal counted", Duration::from_secs(30), || {
        (hub_counter("outpost_hub_loki_refused_lines_total") == 1.0).then_some(())
    });
    hub_alert("loki_refusing_lines");
    loki.status.store(204, Ordering::SeqCst);
    write(8, 9);
    let all = loki.wait_for_lines(8);
    let expected: Vec<String> = (0..9).filter(|n| *n != 7).map(error_line).collect();
    assert_eq!(
        all, expected,
        "each line once, in order, the refused one left out"
    );
    // This hub process took lines 6 and 8.
    wait_until("the lines counted", Duration::from_secs(30), || {
        (hub_counter("outpost_hub_loki_lines_total") == 2.0).then_some(())
    });
    agent.stop();
    hub.stop();
}
