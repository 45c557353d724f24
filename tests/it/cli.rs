//! `outpost db ...` as a user runs it.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn outpost(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .env_remove("OUTPOST_DB")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("outpost runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `outpost db import` of `input` on stdin into `store`.
fn import(store: &str, input: &[u8]) -> Output {
    outpost(&["db", "import", "--db", store, "-"], Some(input))
}

fn db(dir: &Path) -> String {
    dir.join("store.redb").to_string_lossy().into_owned()
}

const SAMPLE_INPUT: &str = "# HELP temp a temperature\n\
# TYPE temp gauge\n\
temp{zone=\"cpu\"} 52.968 1000\n\
temp{zone=\"cpu\"} 53.5 2000\n\
temp{zone=\"cpu\" oops\n\
temp{zone=\"gpu\"} -0 1000\n\
temp{zone=\"gpu\"} NaN 2000\n\
temp{zone=\"gpu\"} +Inf 3000\n\
not a number line\n\
temp{zone=\"cpu\"} 54 3000\n";

#[test]
fn import_reports_bad_lines_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = db(dir.path());
    let out = import(&store, SAMPLE_INPUT.as_bytes());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("line 5:"), "{stderr}");
    assert!(stderr.contains("line 9:"), "{stderr}");
    assert!(stderr.contains("2 lines skipped (malformed"), "{stderr}");

    let out = outpost(
        &[
            "db", "query", "--db", &store, "temp", "--from", "0", "--to", "10000",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "series,timestamp_ms,value\n\
         \"temp{zone=\"\"cpu\"\"}\",1000,52.968\n\
         \"temp{zone=\"\"cpu\"\"}\",2000,53.5\n\
         \"temp{zone=\"\"cpu\"\"}\",3000,54.0\n\
         \"temp{zone=\"\"gpu\"\"}\",1000,-0.0\n\
         \"temp{zone=\"\"gpu\"\"}\",2000,NaN\n\
         \"temp{zone=\"\"gpu\"\"}\",3000,+Inf\n"
    );
}

#[test]
fn stepped_queries_json_stats_and_compact() {
    let dir = tempfile::tempdir().unwrap();
    let store = db(dir.path());
    let mut input = String::new();
    for i in 0..600 {
        input.push_str(&format!(
            "cpu_load{{core=\"0\"}} {} {}\n",
            i % 10,
            1_700_000_000_000i64 + i * 1000
        ));
        input.push_str(&format!(
            "counter_total {} {}\n",
            i * 3,
            1_700_000_000_000i64 + i * 1000
        ));
    }
    let out = import(&store, input.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));

    let query = |extra: &[&str]| {
        let mut args = vec![
            "db",
            "query",
            "--db",
            &store,
            "--from",
            "2023-11-14T22:13:20Z",
            "--to",
            "1700000599999",
        ];
        args.extend_from_slice(extra);
        let out = outpost(&args, None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let avg = query(&["cpu_load", "--step", "5m", "--fn", "avg"]);
    assert_eq!(avg, "series,timestamp_ms,value\n\"cpu_load{core=\"\"0\"\"}\",1699999800000,4.5\n\"cpu_load{core=\"\"0\"\"}\",1700000100000,4.5\n\"cpu_load{core=\"\"0\"\"}\",1700000400000,4.5\n");
    let rate = query(&[
        "counter_total",
        "--step",
        "1m",
        "--fn",
        "rate",
        "--format",
        "json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&rate).unwrap();
    let points = json[0]["points"].as_array().unwrap();
    assert_eq!(json[0]["series"], "counter_total");
    // Three per second in every whole minute; the last minute holds only 20 of its 60 seconds.
    let (last, whole) = points.split_last().unwrap();
    assert!(whole.iter().all(|p| p[1] == "3.0"), "{rate}");
    assert_eq!(last[1], "1.0", "{rate}");

    let out = outpost(&["db", "stats", "--db", &store, "--json"], None);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["series"], 2);
    assert_eq!(stats["raw_samples"], 1200);
    assert!(stats["disk_bytes"].as_u64().unwrap() > 0);

    let out = outpost(&["db", "compact", "--db", &store], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("compacted:"));
    assert_eq!(query(&["cpu_load", "--step", "5m", "--fn", "avg"]), avg);
}

#[test]
fn the_real_host_hour_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = db(dir.path());
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/host/host-1h.prom.zst"
    );
    let out = outpost(&["db", "import", "--db", &store, data], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("imported 378000 samples into 105 series"),
        "{}",
        text(&out.stderr)
    );

    let source = zstd::decode_all(std::fs::File::open(data).unwrap()).unwrap();
    let wanted = r#"node_cpu_seconds_total{cpu="1",mode="user"}"#;
    let expected: Vec<(i64, f64)> = text(&source)
        .lines()
        .filter(|l| l.starts_with(wanted))
        .map(|l| {
            let mut fields = l.rsplitn(3, ' ');
            let ts = fields.next().unwrap().parse().unwrap();
            let value = fields.next().unwrap().parse().unwrap();
            (ts, value)
        })
        .collect();
    assert_eq!(expected.len(), 3600);
    let out = outpost(
        &[
            "db", "query", "--db", &store, wanted, "--from", "0", "--to", "now",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: Vec<(i64, f64)> = text(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| {
            let mut fields = l.rsplitn(3, ',');
            let value: f64 = fields.next().unwrap().parse().unwrap();
            let ts = fields.next().unwrap().parse().unwrap();
            (ts, value)
        })
        .collect();
    let bits = |v: &[(i64, f64)]| v.iter().map(|(t, x)| (*t, x.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&expected));
}

#[test]
fn errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.redb");
    let refused = |args: &[&str], message: &str| {
        let out = outpost(args, None);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(message),
            "{args:?}: {stderr}"
        );
    };
    refused(
        &["db", "stats", "--db", missing.to_str().unwrap()],
        "no store at",
    );
    assert!(!missing.exists(), "a query must not create a store");

    let store = db(dir.path());
    import(&store, b"up 1 1\n");
    let query = ["db", "query", "--db", &store];
    refused(
        &[&query[..], &["up{job=", "--from", "0"]].concat(),
        "invalid selector",
    );
    refused(
        &[&query[..], &["up", "--from", "yesterday"]].concat(),
        "--from",
    );
    refused(
        &[&query[..], &["up", "--from", "0", "--step", "5"]].concat(),
        "needs a unit",
    );
}

#[test]
fn help_and_version_explain_themselves() {
    let out = outpost(&["--version"], None);
    assert_eq!(
        text(&out.stdout).trim(),
        format!("outpost {}", env!("CARGO_PKG_VERSION"))
    );
    let out = outpost(&["db", "import", "--help"], None);
    let help = text(&out.stdout);
    assert!(help.contains("Prometheus text exposition format"), "{help}");
    assert!(help.contains("--db <PATH>"), "{help}");
    let out = outpost(&["db", "query", "--help"], None);
    assert!(text(&out.stdout).contains("=~"), "{}", text(&out.stdout));
}

fn raw_samples(store: &str) -> u64 {
    let out = outpost(&["db", "stats", "--db", store, "--json"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    stats["raw_samples"].as_u64().unwrap()
}

/// One absurd timestamp used to make every other window "expired" at the next seal.
#[test]
fn a_far_future_timestamp_is_refused_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = db(dir.path());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut history = String::new();
    for series in 0..10 {
        for i in 0..2_000i64 {
            let at = now - 20_000_000 + i * 10_000;
            history.push_str(&format!("temp{{zone=\"{series}\"}} {i} {at}\n"));
        }
    }
    let out = import(&store, history.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(raw_samples(&store), 20_000);

    let out = import(&store, b"evil 1 9223372036854775807\n");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .contains("line 1: evil: timestamp 9223372036854775807 is outside the accepted window"),
        "{stderr}"
    );
    assert_eq!(raw_samples(&store), 20_000);

    // Let through on purpose, a nanosecond timestamp still cannot drive retention.
    let nanos = format!("app_latency_seconds 0.25 {}\n", now * 1_000_000);
    let out = outpost(
        &[
            "db",
            "import",
            "--db",
            &store,
            "--max-future",
            "100000000000d",
            "-",
        ],
        Some(nanos.as_bytes()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(raw_samples(&store), 20_001);
    // Old history stays importable.
    let out = import(&store, b"old 1 1000\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Runs `outpost` and kills it if it has not finished within `limit`: a damaged file must give
/// an error, never a hang.
fn outpost_within(args: &[&str], limit: std::time::Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .env_remove("OUTPOST_DB")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        // Not read while waiting: a pipe would fill and stall the child.
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("outpost runs");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("outpost {args:?} hung on a damaged store");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A store of the real host hour at `path`, imported with the real command; its bytes.
fn imported_host_hour(path: &Path) -> Vec<u8> {
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/host/host-1h.prom.zst"
    );
    let out = outpost(
        &["db", "import", "--db", path.to_str().unwrap(), data],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::read(path).unwrap()
}

/// Six damaged copies of a store, from `seed`: 200 random bytes flipped past the first 64 KiB,
/// or (every third) a zeroed 4 KiB page.
fn damaged_copies(bytes: &[u8], seed: u64) -> Vec<Vec<u8>> {
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng as usize
    };
    (0..6)
        .map(|case| {
            let mut damaged = bytes.to_vec();
            if case % 3 == 2 {
                let page = 16 + next() % ((damaged.len() - 65_536) / 4096);
                damaged[page * 4096..(page + 1) * 4096].fill(0);
            } else {
                for _ in 0..200 {
                    let at = 65_536 + next() % (damaged.len() - 65_536);
                    damaged[at] ^= 1 << (next() % 8);
                }
            }
            damaged
        })
        .collect()
}

/// A real store damaged as flash wears out or a copy goes wrong: random bytes flipped past the
/// first 64 KiB, or a zeroed 4 KiB page. Every command fails cleanly or reads what it can, and
/// salvage copies what is readable into a store that opens.
#[test]
fn damaged_store_files_give_errors_not_panics_or_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine.redb");
    let bytes = imported_host_hour(&pristine);
    let limit = std::time::Duration::from_secs(60);
    for (case, damaged) in damaged_copies(&bytes, 0x2545_f491_4f6c_dd1d)
        .into_iter()
        .enumerate()
    {
        let path = dir.path().join(format!("damaged-{case}.redb"));
        std::fs::write(&path, &damaged).unwrap();
        let store = path.to_str().unwrap();
        for args in [
            vec!["db", "stats", "--db", store],
            vec!["db", "check", "--db", store],
            vec!["db", "query", "--db", store, "node_load1", "--from", "0"],
        ] {
            let out = outpost_within(&args, limit);
            let stderr = text(&out.stderr);
            assert_ne!(
                out.status.code(),
                Some(101),
                "case {case} {args:?}: {stderr}"
            );
            assert!(
                out.status.code().is_some(),
                "case {case} {args:?} killed: {stderr}"
            );
            if !out.status.success() {
                assert!(
                    stderr.contains("error:") || stderr.contains("damaged:"),
                    "case {case} {args:?} failed without saying why: {stderr}"
                );
            }
        }
        let salvaged = dir.path().join(format!("salvaged-{case}.redb"));
        let out = outpost_within(
            &[
                "db",
                "salvage",
                "--db",
                store,
                "--to",
                salvaged.to_str().unwrap(),
            ],
            limit,
        );
        assert_ne!(
            out.status.code(),
            Some(101),
            "case {case}: {}",
            text(&out.stderr)
        );
        if salvaged.exists() {
            let out = outpost(&["db", "check", "--db", salvaged.to_str().unwrap()], None);
            assert!(out.status.success(), "case {case}: {}", text(&out.stderr));
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            damaged,
            "case {case}: reading changed it"
        );
    }
}

#[test]
fn check_and_salvage_of_an_intact_store_keep_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = db(dir.path());
    import(&store, SAMPLE_INPUT.as_bytes());
    let out = outpost(&["db", "check", "--db", &store], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no damage found"),
        "{}",
        text(&out.stderr)
    );
    let copy = dir.path().join("copy.redb");
    let out = outpost(
        &[
            "db",
            "salvage",
            "--db",
            &store,
            "--to",
            copy.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let query = |path: &str| {
        let out = outpost(
            &[
                "db", "query", "--db", path, "temp", "--from", "0", "--to", "10000",
            ],
            None,
        );
        text(&out.stdout)
    };
    assert_eq!(query(&store), query(copy.to_str().unwrap()));
    assert!(query(&store).lines().count() > 3);
}

#[test]
fn stats_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let store = db(dir.path());
    import(&store, b"up 1 1\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["db", "stats", "--db", &store])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

/// The agent on a damaged store (the same damage as above): it exits at once, non-zero and
/// saying why, or it serves and stops cleanly at SIGTERM; never a panic, never a hang.
#[test]
fn an_agent_on_a_damaged_store_fails_cleanly_or_serves_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine.redb");
    let bytes = imported_host_hour(&pristine);
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n",
    )
    .unwrap();
    let limit = std::time::Duration::from_secs(30);
    for (case, damaged) in damaged_copies(&bytes, 0x9e37_79b9_7f4a_7c15)
        .into_iter()
        .enumerate()
    {
        let store = dir.path().join(format!("agent-{case}.redb"));
        std::fs::write(&store, &damaged).unwrap();
        let log_path = dir.path().join(format!("agent-{case}.log"));
        let port = crate::agent::free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["--log", "info", "agent", "--config"])
            .arg(&config)
            .arg("--store")
            .arg(&store)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("outpost agent runs");
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = std::time::Instant::now() + limit;
        let exited = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break None;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "case {case}: neither serving nor exited: {}",
                log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let status = match exited {
            Some(status) => {
                assert!(
                    log().contains("rror"),
                    "case {case}: exited {status} without saying why: {}",
                    log()
                );
                status
            }
            None => {
                let killed = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status()
                    .unwrap();
                assert!(killed.success());
                let deadline = std::time::Instant::now() + limit;
                loop {
                    if let Some(status) = child.try_wait().unwrap() {
                        break status;
                    }
                    if std::time::Instant::now() > deadline {
                        child.kill().unwrap();
                        panic!("case {case}: ignored SIGTERM: {}", log());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        };
        assert_ne!(status.code(), Some(101), "case {case} panicked: {}", log());
        assert!(!log().contains("panicked at"), "case {case}: {}", log());
    }
}
