//! Crash safety with a real process: a child ingests continuously and reports every write the
//! store accepted; the parent kills it with SIGKILL at random moments, reopens the store, and
//! checks that everything accepted more than `flush_interval` before the kill is there.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_storage::{Options, Store, WriteBatch};

use crate::selector;

const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Scheduling noise on a loaded two-core CI machine, on top of the flush interval.
const SLACK: Duration = Duration::from_millis(400);
const SERIES: usize = 4;

fn child_options() -> Options {
    Options {
        flush_interval: FLUSH_INTERVAL,
        sync_interval: Duration::from_millis(500),
        // Seals happen during the run too, so kills land in every phase.
        seal_interval: Duration::from_millis(700),
        max_head_samples: 3_000,
        zstd_level: 3,
        ..Options::default()
    }
}

fn value_of(series: usize, n: i64) -> f64 {
    n as f64 * 0.5 + series as f64
}

#[test]
#[ignore = "the child process of kill_9_loses_at_most_flush_interval"]
fn child() {
    let Ok(path) = std::env::var("OUTPOST_CRASH_STORE") else {
        return;
    };
    let start: i64 = std::env::var("OUTPOST_CRASH_START")
        .unwrap()
        .parse()
        .unwrap();
    let store = Store::open(&path, child_options()).unwrap();
    let ids: Vec<_> = crate::numbered_series(&store, "crash", SERIES);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for n in start.. {
        let mut batch = WriteBatch::default();
        for (series, id) in ids.iter().enumerate() {
            batch.sample(*id, n * 1000, value_of(series, n));
        }
        store.write(batch).unwrap();
        writeln!(out, "ACK {n}").unwrap();
        out.flush().unwrap();
        if n % 8 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn kill_9_loses_at_most_flush_interval() {
    let iterations = std::env::var("OUTPOST_CRASH_ITERATIONS").map_or(Ok(20), |v| v.parse::<u64>());
    let iterations = iterations.expect("OUTPOST_CRASH_ITERATIONS: a number");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let exe = std::env::current_exe().unwrap();
    let mut start = 0i64;
    let mut checked = 0usize;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for iteration in 0..iterations {
        let mut child = Command::new(&exe)
            .args([
                "crash::child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("OUTPOST_CRASH_STORE", &path)
            .env("OUTPOST_CRASH_START", start.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let acks: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
        let reader = {
            let acks = acks.clone();
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // The first one shares its line with the test harness' own output.
                    if let Some(n) = line.split_once("ACK ").and_then(|(_, n)| n.parse().ok()) {
                        acks.lock().unwrap().push((n, Instant::now()));
                    }
                }
            })
        };
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Long enough for the child to open the store and ingest, random so that the kill
        // lands anywhere: in a flush, a sync, a seal or between them.
        let wait = Duration::from_millis(300 + rng % 900);
        std::thread::sleep(wait);
        let killed_at = Instant::now();
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();

        let store = Store::open(&path, child_options()).unwrap();
        let acks = acks.lock().unwrap().clone();
        let must_have: Vec<i64> = acks
            .iter()
            .filter(|(_, at)| *at + FLUSH_INTERVAL + SLACK <= killed_at)
            .map(|(n, _)| *n)
            .collect();
        let mut newest = start - 1;
        for series in 0..SERIES {
            let sel = selector(&format!("crash{{s=\"{series}\"}}"));
            let points = store.query_raw(&sel, i64::MIN, i64::MAX).unwrap();
            let points = points.first().map(|p| p.points.clone()).unwrap_or_default();
            for (ts, v) in &points {
                assert_eq!(
                    *v,
                    value_of(series, ts / 1000),
                    "iteration {iteration}: wrong value at {ts}"
                );
            }
            let stored: std::collections::HashSet<i64> =
                points.iter().map(|p| p.0 / 1000).collect();
            for n in &must_have {
                assert!(
                    stored.contains(n),
                    "iteration {iteration}: write {n} of series {series}, accepted more than \
                     {FLUSH_INTERVAL:?} before the kill, is lost ({} acks, {} stored)",
                    acks.len(),
                    points.len()
                );
            }
            // Rollups agree with the raw samples that survived.
            assert_eq!(
                crate::rollup_count(&store, &sel),
                points.len(),
                "iteration {iteration}: rollup counts"
            );
            newest = newest.max(points.last().map_or(newest, |p| p.0 / 1000));
        }
        checked += must_have.len();
        store.close().unwrap();
        start = newest + 1;
    }
    assert!(
        checked > 100,
        "only {checked} acknowledged writes were old enough to check"
    );
}
