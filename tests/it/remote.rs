//! The hub as a bridge to remote storage ([remote_write]): real engines (Debian's
//! `victoria-metrics`, and `prometheus` with its remote-write receiver) as separate processes,
//! a real agent replaying a real Jetson log, the engine stopped and restarted mid-stream, and
//! refused samples kept, alerted and resent.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::agent::{db_query, free_port, http, metric_value, wait_for_port, wait_until, Agent};
use crate::sync::{enrol, replaying_agent, wait_until_shipped, Hub, XAVIER};

/// An engine process, killed when dropped.
struct Engine {
    child: Child,
    port: u16,
}

impl Engine {
    fn start(program: &str, args: &[String], port: u16, log: &Path) -> Engine {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} starts (apt-get install it): {e}"));
        wait_for_port(program, &mut child, port, || {
            std::fs::read_to_string(log).unwrap_or_default()
        });
        Engine { child, port }
    }

    /// Stops it cleanly (SIGTERM), so that what it acknowledged is on its disk.
    fn stop(mut self) {
        crate::agent::send_signal(&self.child, "TERM");
        wait_until("the engine to exit", Duration::from_secs(30), || {
            self.child.try_wait().unwrap()
        });
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn victoria_metrics(dir: &Path, port: u16) -> Engine {
    let args = [
        format!("-storageDataPath={}", dir.join("vm").display()),
        format!("-httpListenAddr=127.0.0.1:{port}"),
        "-retentionPeriod=100y".into(),
        "-dedup.minScrapeInterval=1ms".into(),
        // Queries see samples at once, not 30 s later (its default, for scrapes in flight).
        "-search.latencyOffset=0s".into(),
    ];
    Engine::start("victoria-metrics", &args, port, &dir.join("vm.log"))
}

/// A series as a canonical text: its labels, `__name__` among them, sorted.
fn canonical(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    parts.join(",")
}

/// The agent's series of `selector` as the hub names them (`instance` = `device`), with their
/// (timestamp, value) points.
fn agent_series(store: &Path, device: &str, selector: &str) -> BTreeMap<String, Vec<(i64, f64)>> {
    db_query(store, selector, &[])
        .into_iter()
        .map(|(key, points)| {
            let key = outpost_storage::SeriesKey::parse(&key).unwrap();
            let mut labels: BTreeMap<String, String> = key.owned_labels().into_iter().collect();
            labels.insert("__name__".into(), key.name().to_string());
            labels.insert("instance".into(), device.to_string());
            let points = points
                .iter()
                .map(|p| (p[0].as_i64().unwrap(), number(&p[1])))
                .collect();
            (canonical(&labels), points)
        })
        .collect()
}

/// A value as `outpost db query` prints it (a string, to keep every bit) or as a JSON number.
fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .or_else(|| value.as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// Every raw sample VictoriaMetrics holds for `selector`, by series.
fn exported(port: u16, selector: &str) -> BTreeMap<String, Vec<(i64, f64)>> {
    let (status, _) = http(port, "GET", "/internal/force_flush", "");
    assert_eq!(status, 200);
    let query = format!("match[]={}", crate::promql::encode(selector));
    let (status, body) = http(port, "GET", &format!("/api/v1/export?{query}"), "");
    assert_eq!(status, 200, "{body}");
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let row: Value = serde_json::from_str(line).unwrap();
        let labels: BTreeMap<String, String> = row["metric"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let timestamps = row["timestamps"].as_array().unwrap();
        let values = row["values"].as_array().unwrap();
        let points: Vec<(i64, f64)> = timestamps
            .iter()
            .zip(values)
            .map(|(t, v)| (t.as_i64().unwrap(), number(v)))
            .collect();
        out.insert(canonical(&labels), points);
    }
    out
}

fn hub_config(dir: &Path, remote_write: &str) -> String {
    let path = dir.join("hub.toml");
    std::fs::write(&path, format!("[remote_write]\n{remote_write}")).unwrap();
    path.to_str().unwrap().to_string()
}

/// The fleet's samples go to VictoriaMetrics and not into the hub's store; the engine stopped
/// for a while in the middle loses nothing (the hub does not acknowledge what the engine did
/// not take, so the agent keeps it and sends it again) and duplicates nothing.
#[test]
fn samples_reach_victoria_metrics_through_an_engine_outage_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port, vm_port) = (free_port(), free_port(), free_port());
    let mqtt = enrol(dir.path(), "dev-a", mqtt_port);
    let engine = victoria_metrics(dir.path(), vm_port);
    let config = hub_config(
        dir.path(),
        &format!(
            "url = \"http://127.0.0.1:{vm_port}/api/v1/write\"\nretry_for = \"2s\"\n\
             query_url = \"http://127.0.0.1:{vm_port}/\"\n[alerts]\ninterval = \"1s\"\n"
        ),
    );
    let hub = Hub::start_with(dir.path(), http_port, mqtt_port, &["--config", &config]);
    let agent_store = dir.path().join("agent.redb");
    let aged_span = aged_history(&agent_store);
    let agent = replaying_agent(dir.path(), &mqtt, XAVIER, 10);
    wait_until("batches at the hub", Duration::from_secs(30), || {
        (hub.devices()[0]["batches"].as_u64()? > 3).then_some(())
    });
    engine.stop();
    // Nothing is acknowledged while the engine is away: the agent's backlog waits, and the hub
    // counts and alerts.
    wait_until(
        "the hub to give batches back to the agent",
        Duration::from_secs(30),
        || {
            let (_, metrics) = http(hub.http_port, "GET", "/metrics", "");
            (metric_value(&metrics, "outpost_hub_remote_write_errors_total")? > 0.0).then_some(())
        },
    );
    wait_until("the hub's alert", Duration::from_secs(30), || {
        let (_, alerts) = http(hub.http_port, "GET", "/api/v1/alerts", "");
        alerts.contains("remote_storage_failing").then_some(())
    });
    wait_until("unacknowledged batches", Duration::from_secs(30), || {
        let metrics = agent.metrics();
        (metric_value(&metrics, "outpost_sync_batches_resent_total")? > 0.0).then_some(())
    });
    let engine = victoria_metrics(dir.path(), vm_port);
    wait_until_shipped(&agent);
    agent.stop();
    the_hub_answers_prometheus_reads_from_the_engine(hub.http_port, engine.port);
    rollups_reached_the_engine(&agent_store, engine.port, "dev-a");
    the_dashboard_reads_the_engine(
        hub.http_port,
        &agent_store,
        "dev-a",
        (&agent_store, aged_span),
    );
    hub.stop();

    let selector = r#"{__name__=~"jetson_.*"}"#;
    let expected = agent_series(&dir.path().join("agent.redb"), "dev-a", selector);
    let held = exported(engine.port, selector);
    assert!(expected.len() > 10, "{} series", expected.len());
    assert_eq!(
        held.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    let mut points = 0;
    for (series, theirs) in &expected {
        // Equal lists: the same count, no timestamp twice, the same values.
        assert_eq!(&held[series], theirs, "{series}");
        points += theirs.len();
    }
    assert!(points > 3000, "{points} points compared");
    // The hub's own store kept the bookkeeping, not the samples.
    let local: usize = db_query(&dir.path().join("hub.redb"), selector, &[])
        .iter()
        .map(|(_, p)| p.len())
        .sum();
    assert_eq!(local, 0, "samples in the hub's store");
}

/// The series that `aged_history` writes.
const AGED: &str = "app_queue_depth";

/// A device's history whose raw samples aged out before it could ship them: two hours of two
/// series, 40 days old, imported with `outpost db import` into the agent's store before its
/// first start, with one sample of another series stamped now. The import's retention (measured
/// from that sample, as the wall clock allows) drops the old raw windows and keeps their minute
/// and hour rollups; the agent, once started, ships what its store holds, and the hub writes
/// the rollups to the engine as the series docs/scale.md names (`<name>:<figure>_1m`, `_1h`).
/// Returns the hours' span.
fn aged_history(store: &Path) -> (i64, i64) {
    let hour = 3_600_000;
    let now = outpost::timearg::now_ms();
    let start = (now - 40 * 86_400_000) / hour * hour;
    let mut text = String::new();
    for i in 0..720i64 {
        for (queue, scale) in [("a", 1.0), ("b", 2.5)] {
            let value = ((i * 7) % 13) as f64 * scale + 0.25;
            text.push_str(&format!(
                "{AGED}{{queue=\"{queue}\"}} {value} {}\n",
                start + i * 10_000
            ));
        }
    }
    text.push_str(&format!("app_backfill_marker 1 {now}\n"));
    let file = store.with_file_name("aged.prom");
    std::fs::write(&file, text).unwrap();
    crate::agent::succeed(&mut crate::agent::outpost(&[
        "db",
        "import",
        "--db",
        store.to_str().unwrap(),
        file.to_str().unwrap(),
    ]));
    let end = start + 2 * hour - 1;
    let raw: usize = db_query(store, AGED, &[])
        .iter()
        .map(|(_, points)| points.len())
        .sum();
    assert_eq!(raw, 0, "the old raw samples are gone, their rollups stay");
    assert_eq!(agent_steps(store, AGED, "1h", "count").len(), 2);
    (start, end)
}

/// The engine holds every minute and hour rollup of the aged history, figure by figure, as the
/// agent's store has it, labelled with the device; and no raw sample of it.
fn rollups_reached_the_engine(store: &Path, engine: u16, device: &str) {
    let mut compared = 0;
    for tier in ["1m", "1h"] {
        for figure in ["min", "max", "sum", "count", "last"] {
            let theirs = exported(engine, &format!("{AGED}:{figure}_{tier}"));
            let ours: BTreeMap<String, Vec<(i64, f64)>> =
                db_query(store, AGED, &["--step", tier, "--fn", figure])
                    .into_iter()
                    .map(|(key, points)| {
                        let key = outpost_storage::SeriesKey::parse(&key).unwrap();
                        let mut labels: BTreeMap<String, String> =
                            key.owned_labels().into_iter().collect();
                        labels.insert("__name__".into(), format!("{AGED}:{figure}_{tier}"));
                        labels.insert("instance".into(), device.to_string());
                        let points = points_of(&points);
                        compared += points.len();
                        (canonical(&labels), points)
                    })
                    .collect();
            assert_eq!(theirs, ours, "{figure}_{tier}");
        }
    }
    // Two series, 120 minutes and 2 hours each, five figures.
    assert_eq!(compared, 2 * 122 * 5);
    assert!(
        exported(engine, AGED).is_empty(),
        "raw samples of the aged hours"
    );
}

/// VictoriaMetrics shows samples stamped within a second or two of its present partly (what
/// `-search.latencyOffset`, 30 s by default and 0 here, hides in production): a comparison
/// starts once the newest sample is older than that.
fn settle(newest: i64) {
    wait_until(
        "the newest samples to settle in the engine",
        Duration::from_secs(30),
        || (outpost::timearg::now_ms() > newest + 5_000).then_some(()),
    );
}

/// `outpost db query`'s points as (timestamp, value).
fn points_of(points: &[Value]) -> Vec<(i64, f64)> {
    points
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), number(&p[1])))
        .collect()
}

/// The hub's `/api/range` answer: series text (without `instance`) and its non-null points.
fn dashboard_range(hub: u16, query: &str) -> BTreeMap<String, Vec<(i64, f64)>> {
    let (status, body) = http(hub, "GET", &format!("/api/range?{query}"), "");
    assert_eq!(status, 200, "{query}: {body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|series| {
            let mut labels: BTreeMap<String, String> =
                serde_json::from_value(series["labels"].clone()).unwrap();
            labels.remove("instance");
            labels.insert("__name__".into(), series["name"].as_str().unwrap().into());
            let points = series["points"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| !p[1].is_null())
                .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
                .collect();
            (canonical(&labels), points)
        })
        .collect()
}

/// The agent's own step answer (`outpost db query --step --fn`), keyed as `dashboard_range`.
fn agent_steps(
    store: &Path,
    selector: &str,
    step: &str,
    function: &str,
) -> BTreeMap<String, Vec<(i64, f64)>> {
    db_query(store, selector, &["--step", step, "--fn", function])
        .into_iter()
        .map(|(key, points)| {
            let key = outpost_storage::SeriesKey::parse(&key).unwrap();
            let mut labels: BTreeMap<String, String> = key.owned_labels().into_iter().collect();
            labels.insert("__name__".into(), key.name().to_string());
            (canonical(&labels), points_of(&points))
        })
        .collect()
}

fn assert_close(
    ours: &BTreeMap<String, Vec<(i64, f64)>>,
    theirs: &BTreeMap<String, Vec<(i64, f64)>>,
    what: &str,
) {
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (series, expected) in theirs {
        let found = &ours[series];
        assert_eq!(
            found.len(),
            expected.len(),
            "{what} {series}: {found:?} vs {expected:?}"
        );
        for (a, b) in found.iter().zip(expected) {
            assert_eq!(a.0, b.0, "{what} {series}");
            assert!(
                (a.1 - b.1).abs() <= 1e-9 * b.1.abs().max(1.0),
                "{what} {series}: {a:?} vs {b:?} in {found:?} vs {expected:?}"
            );
        }
    }
}

/// With remote storage, the dashboard's reads come from the engine: the hub's store holds no
/// samples, yet its charts (`/api/range`, raw and from rollups), series listing and fleet
/// summary equal what the agent's own store answers.
fn the_dashboard_reads_the_engine(
    hub: u16,
    agent: &Path,
    device: &str,
    (aged, (start, end)): (&Path, (i64, i64)),
) {
    let selector = "jetson_temperature_celsius";
    let raw: Vec<(i64, f64)> = db_query(agent, selector, &[])
        .iter()
        .flat_map(|(_, points)| points_of(points))
        .collect();
    let first = raw.iter().map(|p| p.0).min().unwrap();
    let last = raw.iter().map(|p| p.0).max().unwrap();
    settle(last);
    for (step, function) in [
        ("10s", "max"),
        ("10s", "count"),
        ("10s", "avg"),
        ("1m", "last"),
        ("1m", "min"),
    ] {
        let query = format!(
            "device={device}&match={selector}&start={first}&end={last}&step={step}&fn={function}"
        );
        let theirs = agent_steps(agent, selector, step, function);
        assert!(theirs.len() > 3, "{theirs:?}");
        assert_close(&dashboard_range(hub, &query), &theirs, &query);
    }
    // A counter's rate, per 10 s and per minute, worked out from each bucket's last value.
    let counter = "outpost_tegrastats_lines_total";
    let counter_first = db_query(agent, counter, &[])
        .iter()
        .flat_map(|(_, points)| points_of(points))
        .map(|p| p.0)
        .min()
        .unwrap();
    for step in ["10s", "1m"] {
        let query =
            format!("device={device}&match={counter}&start={first}&end={last}&step={step}&fn=rate");
        let mut theirs = agent_steps(agent, counter, step, "rate");
        if step == "10s" {
            // The store counts the increases within a counter's first bucket too; the engine's
            // rate needs the bucket before, which holds nothing. (That bucket has no point at
            // all where the counter's first sample is alone in it.) And the chart starts at the
            // first step from `first`, which may come after the counter's first bucket.
            let counter_bucket = counter_first.div_euclid(10_000) * 10_000;
            let first_step = (first + 9_999).div_euclid(10_000) * 10_000;
            for points in theirs.values_mut() {
                points.retain(|p| p.0 != counter_bucket && p.0 >= first_step);
            }
        }
        assert!(theirs.values().all(|p| !p.is_empty()), "{theirs:?}");
        assert_close(&dashboard_range(hub, &query), &theirs, &query);
    }
    // Rollups only: the engine holds `app_queue_depth:<figure>_1m` and `_1h`, and a chart of
    // app_queue_depth over those hours reads them.
    for (step, function) in [
        ("1m", "max"),
        ("1m", "avg"),
        ("1m", "count"),
        ("5m", "min"),
        ("1h", "last"),
        ("1h", "sum"),
    ] {
        let query = format!(
            "device={device}&match={AGED}&start={start}&end={end}&step={step}&fn={function}"
        );
        let theirs = agent_steps(aged, AGED, step, function);
        assert_eq!(theirs.len(), 2, "{theirs:?}");
        assert_close(&dashboard_range(hub, &query), &theirs, &query);
    }
    // Without a step, the dashboard's default: raw is empty, the minute rollups answer.
    let query =
        format!("device={device}&match={AGED}&start={start}&end={end}&max_points=1000&fn=max");
    assert_close(
        &dashboard_range(hub, &query),
        &agent_steps(aged, AGED, "1m", "max"),
        &query,
    );
    // The listing has the aged series (known from their rollups) and the live ones, and no
    // rollup series of its own.
    let (status, body) = http(
        hub,
        "GET",
        &format!("/api/series?device={device}&start=0"),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    let names: std::collections::BTreeSet<&str> = listed["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(AGED) && names.contains(selector),
        "{names:?}"
    );
    assert!(names.iter().all(|n| !n.contains(':')), "{names:?}");
    let mut agent_names: std::collections::BTreeSet<String> =
        db_query(agent, r#"{__name__=~".+"}"#, &[])
            .into_iter()
            .map(|(key, _)| {
                outpost_storage::SeriesKey::parse(&key)
                    .unwrap()
                    .name()
                    .to_string()
            })
            .collect();
    agent_names.insert(AGED.to_string());
    assert_eq!(
        names
            .iter()
            .map(|n| n.to_string())
            .collect::<std::collections::BTreeSet<_>>(),
        agent_names
    );
    // The fleet table's temperature now: the hottest zone's newest sample (read from the engine
    // with `last_over_time`), not a minute's mean.
    let raw = agent_steps(agent, selector, "1s", "last");
    let newest = raw
        .values()
        .filter_map(|p| p.last())
        .map(|p| p.0)
        .max()
        .unwrap();
    let hottest = raw
        .values()
        .filter_map(|p| p.last())
        .filter(|(t, _)| newest - *t < 60_000)
        .map(|(_, v)| *v)
        .fold(f64::MIN, f64::max);
    let (_, body) = http(hub, "GET", &format!("/api/devices/{device}"), "");
    let record: Value = serde_json::from_str(&body).unwrap();
    let current = record["summary"]["temperature"]["current"]
        .as_f64()
        .unwrap_or_else(|| panic!("{record}"));
    assert!((current - hottest).abs() < 1e-9, "{current} vs {hottest}");
}

/// The hub's `/api/v1` reads, GET and POST, answered by the engine (`query_url`) after the
/// hub's own checks: the same data as asking the engine directly.
fn the_hub_answers_prometheus_reads_from_the_engine(hub: u16, engine: u16) {
    let (status, _) = http(engine, "GET", "/internal/force_flush", "");
    assert_eq!(status, 200);
    let data = |port: u16, method: &str, path: &str, body: &str| -> Value {
        let headers = [("Content-Type", "application/x-www-form-urlencoded")];
        let (status, _, text) = crate::agent::http_with(port, method, path, &headers, body);
        assert_eq!(status, 200, "{path}: {text}");
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["status"], "success", "{text}");
        json["data"].clone()
    };
    // At one time for both: without it each answers at its own "now", a second apart at times.
    let count = format!(
        "query={}&time={}",
        crate::promql::encode(r#"count(count_over_time({__name__=~"jetson_.*"}[10m]))"#),
        outpost::timearg::now_ms() / 1000
    );
    let asked = data(hub, "GET", &format!("/api/v1/query?{count}"), "");
    assert_eq!(
        asked["result"],
        data(engine, "GET", &format!("/api/v1/query?{count}"), "")["result"]
    );
    let counted = asked["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok());
    assert!(counted.is_some_and(|n| n > 10.0), "{asked}");
    let series = format!(
        "match[]={}",
        crate::promql::encode(r#"{__name__=~"jetson_.*"}"#)
    );
    let listed = data(hub, "POST", "/api/v1/series", &series);
    assert_eq!(listed, data(engine, "POST", "/api/v1/series", &series));
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["instance"] == "dev-a"));
    // The hub's own parts stay the hub's.
    let (status, body) = http(hub, "GET", "/api/v1/status/buildinfo", "");
    assert!(status == 200 && body.contains("outpost"), "{body}");
}

fn prometheus(dir: &Path, port: u16, out_of_order_window: Option<&str>) -> Engine {
    let config = dir.join("prometheus.yml");
    let storage = out_of_order_window
        .map(|w| format!("storage:\n  tsdb:\n    out_of_order_time_window: {w}\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1h\n{storage}"),
    )
    .unwrap();
    let args = [
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.join("prometheus").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--web.enable-remote-write-receiver".into(),
    ];
    Engine::start("prometheus", &args, port, &dir.join("prometheus.log"))
}

/// Points of `selector` in Prometheus over the last `hours`, by timestamp.
fn prometheus_points(port: u16, selector: &str, hours: u32) -> Vec<(i64, String)> {
    let query = format!(
        "query={}",
        crate::promql::encode(&format!("{selector}[{hours}h]"))
    );
    let (status, body) = http(port, "GET", &format!("/api/v1/query?{query}"), "");
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    json["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|series| series["values"].as_array().unwrap().clone())
        .map(|p| {
            (
                (p[0].as_f64().unwrap() * 1000.0) as i64,
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Prometheus without an out-of-order window refuses a device's older sample: the hub keeps
/// it in its dead-letter table, counts it against the device and alerts, lets the rest of the
/// batch through, and `outpost hub resend-refused` lands it once Prometheus takes late samples.
#[test]
fn samples_prometheus_refuses_wait_in_the_dead_letter_table_until_it_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port, prom_port) = (free_port(), free_port(), free_port());
    let mqtt = enrol(dir.path(), "dev-a", mqtt_port);
    let engine = prometheus(dir.path(), prom_port, None);
    let config = hub_config(
        dir.path(),
        &format!(
            "url = \"http://127.0.0.1:{prom_port}/api/v1/write\"\nretry_for = \"2s\"\n\
             [alerts]\ninterval = \"1s\"\n"
        ),
    );
    let hub = Hub::start_with(dir.path(), http_port, mqtt_port, &["--config", &config]);
    let agent_config = format!(
        "[agent]\nself_interval = \"1s\"\n[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n\
         [nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n{mqtt}"
    );
    let agent = Agent::start(dir.path(), &agent_config, &[]);
    let now_ms = outpost::timearg::now_ms();
    let push = |value: u32, ts: i64| {
        let body = format!("backfill_probe {value} {ts}\n");
        let (status, body) = http(agent.port, "POST", "/api/v1/import/prometheus", &body);
        assert!((200..300).contains(&status), "{status} {body}");
    };
    push(1, now_ms - 60_000);
    wait_until(
        "the newer sample in Prometheus",
        Duration::from_secs(30),
        || (prometheus_points(engine.port, "backfill_probe", 3).len() == 1).then_some(()),
    );
    // An older sample of the same series: out of order for an engine without a window.
    push(2, now_ms - 2 * 3_600_000);
    wait_until(
        "the refused sample counted against the device",
        Duration::from_secs(30),
        || {
            let (_, metrics) = http(hub.http_port, "GET", "/metrics", "");
            let line = metrics.lines().find(|l| {
                l.starts_with("outpost_hub_remote_refused_samples{instance=\"dev-a\"}")
            })?;
            (line.ends_with(" 1")).then_some(())
        },
    );
    wait_until("the hub's alert", Duration::from_secs(30), || {
        let (_, alerts) = http(hub.http_port, "GET", "/api/v1/alerts", "");
        alerts
            .contains("remote_storage_refused_samples")
            .then_some(())
    });
    // The agent's own figures went on arriving: one refused sample holds back nothing else.
    let before = prometheus_points(engine.port, "outpost_uptime_seconds", 1).len();
    wait_until(
        "later samples in Prometheus",
        Duration::from_secs(30),
        || {
            (prometheus_points(engine.port, "outpost_uptime_seconds", 1).len() > before)
                .then_some(())
        },
    );
    assert_eq!(prometheus_points(engine.port, "backfill_probe", 3).len(), 1);
    agent.stop();
    hub.stop();
    engine.stop();

    // Still refused: the command says so and keeps it.
    let engine = prometheus(dir.path(), prom_port, None);
    let resend = || {
        Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["hub", "resend-refused", "--config", &config, "--store"])
            .arg(dir.path().join("hub.redb"))
            .output()
            .unwrap()
    };
    let output = resend();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("1 still refused"), "{text}");
    engine.stop();
    // With a window, it lands, and leaves the table.
    let engine = prometheus(dir.path(), prom_port, Some("1d"));
    let output = resend();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("1 samples taken"), "{text}");
    let points = prometheus_points(engine.port, "backfill_probe", 3);
    assert_eq!(
        points,
        [
            (now_ms - 2 * 3_600_000, "2".to_string()),
            (now_ms - 60_000, "1".to_string())
        ]
    );
    let output = resend();
    assert!(String::from_utf8_lossy(&output.stdout)
        .contains("0 samples taken by the engine; 0 still refused"));
}

/// Three hubs on one Mosquitto shared subscription, writing to one VictoriaMetrics, and three
/// agents replaying real Jetson logs (one of them also collecting this host, and offline at
/// first so that it backfills). One hub is killed with SIGKILL mid-stream and the engine is
/// stopped and restarted: in the end the engine holds every agent's samples exactly once, and
/// the hubs left agree on every device's state.
#[test]
fn three_hubs_share_a_fleet_into_one_engine_through_a_killed_hub_and_an_engine_outage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mqtt_port, vm_port) = (free_port(), free_port());
    let devices = ["dev-a", "dev-b", "dev-c"];
    let sections: Vec<String> = devices
        .iter()
        .map(|d| enrol(root, d, mqtt_port) + "shared_hubs = true\n")
        .collect();
    let engine = victoria_metrics(root, vm_port);
    // dev-c starts before the broker: it collects offline, then backfills.
    let agent_dir = |name: &str| {
        let path = root.join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let replay = |name: &str, section: &str, log: &str, speed: u32, host: bool| {
        let agent = if host {
            // This machine's host metrics too, every second.
            let config = format!(
                "[agent]\nself_interval = \"1s\"\n[host]\ninterval = \"1s\"\n\
                 [jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n{section}"
            );
            let log = crate::agent::tegrastats_log(log);
            let speed = speed.to_string();
            let args = [
                "--tegrastats-replay",
                log.to_str().unwrap(),
                "--replay-speed",
                &speed,
            ];
            Agent::start(&agent_dir(name), &config, &args)
        } else {
            replaying_agent(&agent_dir(name), section, log, speed)
        };
        (name.to_string(), agent)
    };
    let late = replay("dev-c", &sections[2], XAVIER, 4, false);
    wait_until("dev-c to hold a backlog", Duration::from_secs(30), || {
        let metrics = late.1.metrics();
        (metric_value(&metrics, "outpost_sync_connected")? == 0.0
            && metric_value(&metrics, "outpost_store_samples_written_total")? > 500.0)
            .then_some(())
    });
    let _broker = crate::sync::Mosquitto::start(root, mqtt_port, "");
    let mut hubs: Vec<Hub> = (1..=3)
        .map(|n| {
            let hub_dir = agent_dir(&format!("hub-{n}"));
            std::fs::copy(root.join("devices.toml"), hub_dir.join("devices.toml")).unwrap();
            let (login, secret) = match n {
                1 => ("outpost-hub".to_string(), "hub-secret".to_string()),
                n => (format!("outpost-hub-{n}"), format!("hub-{n}-secret")),
            };
            let password = hub_dir.join("hub.password");
            std::fs::write(&password, format!("{secret}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
            let config = hub_dir.join("hub.toml");
            std::fs::write(
                &config,
                format!(
                    "[mqtt]\nembedded = false\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\n\
                     username = \"{login}\"\npassword_file = \"{}\"\nshared_group = \"hubs\"\n\
                     [remote_write]\nurl = \"http://127.0.0.1:{vm_port}/api/v1/write\"\n\
                     retry_for = \"2s\"\nquery_url = \"http://127.0.0.1:{vm_port}\"\n",
                    password.display()
                ),
            )
            .unwrap();
            Hub::start_with(
                &hub_dir,
                free_port(),
                free_port(),
                &["--config", config.to_str().unwrap()],
            )
        })
        .collect();
    let mut agents = vec![
        replay("dev-a", &sections[0], XAVIER, 4, false),
        replay(
            "dev-b",
            &sections[1],
            "tx2-jetpack4-2660s.log.zst",
            100,
            true,
        ),
        late,
    ];
    let batches = |hub: &Hub| -> f64 {
        let (_, metrics) = http(hub.http_port, "GET", "/metrics", "");
        metrics
            .lines()
            .filter(|l| l.starts_with("outpost_hub_batches_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    wait_until("every hub to take batches", Duration::from_secs(60), || {
        hubs.iter().all(|hub| batches(hub) > 2.0).then_some(())
    });
    // SIGKILL: what it had not acknowledged goes to the others.
    let mut killed = hubs.remove(0);
    killed.signal("KILL");
    let _ = killed.child.wait();
    engine.stop();
    wait_until(
        "batches left unacknowledged",
        Duration::from_secs(30),
        || {
            agents
                .iter()
                .any(|(_, a)| {
                    metric_value(&a.metrics(), "outpost_sync_batches_resent_total")
                        .is_some_and(|n| n > 0.0)
                })
                .then_some(())
        },
    );
    let engine = victoria_metrics(root, vm_port);
    for (_, agent) in &agents {
        wait_until_shipped(agent);
    }
    // Every hub left knows every device, in the same state (the device online: its data flows,
    // though each hub takes only its share of the batches).
    for hub in &hubs {
        let listed = hub.devices();
        for device in devices {
            let record = crate::sync::device_record(&listed, device)
                .unwrap_or_else(|| panic!("{device} missing: {listed}"));
            assert_eq!(record["state"], "online", "{device}: {listed}");
        }
    }
    // And with the same counts: each hub counts the batches from the acks that all of them
    // read, its own among them, so the fleet's totals, not its share.
    let counts = |hub: &Hub| -> Vec<(u64, u64, u64)> {
        let listed = hub.devices();
        devices
            .iter()
            .map(|device| {
                let record = crate::sync::device_record(&listed, device).unwrap();
                let count = |field: &str| record[field].as_u64().unwrap();
                (
                    count("batches"),
                    count("samples"),
                    count("duplicate_batches"),
                )
            })
            .collect()
    };
    let agreed = wait_until("the hubs to count alike", Duration::from_secs(30), || {
        let all: Vec<_> = hubs.iter().map(counts).collect();
        all.windows(2).all(|w| w[0] == w[1]).then(|| all[0].clone())
    });
    for ((name, agent), (batches, samples, _)) in agents.iter().zip(&agreed) {
        let metrics = agent.metrics();
        let confirmed = metric_value(&metrics, "outpost_sync_confirmed_samples_total").unwrap();
        // At least what the device had confirmed: a batch that the killed hub stored and
        // acknowledged, whose ack the device never got, was stored again by another hub.
        assert!(
            *samples as f64 >= confirmed,
            "{name}: {agreed:?} {confirmed}"
        );
        assert!(*batches > 0, "{name}");
    }
    let selector = r#"{__name__=~"jetson_.*"}"#;
    let held = exported(engine.port, selector);
    let mut points = 0;
    let mut series = 0;
    for (name, agent) in agents.drain(..) {
        agent.stop();
        let expected = agent_series(&root.join(&name).join("agent.redb"), &name, selector);
        assert!(!expected.is_empty(), "{name}");
        for (key, theirs) in &expected {
            assert_eq!(held.get(key), Some(theirs), "{key}");
            points += theirs.len();
            series += 1;
        }
    }
    assert_eq!(held.len(), series, "series in the engine that no agent has");
    assert!(points > 5000, "{points} points compared");
    // dev-b's host metrics went the same way.
    let host = exported(engine.port, r#"node_cpu_seconds_total{instance="dev-b"}"#);
    assert!(!host.is_empty());
    // Every hub's charts show every device's whole history, though each hub took a share.
    let selector = "jetson_temperature_celsius";
    for device in devices {
        let store = root.join(device).join("agent.redb");
        let theirs = agent_steps(&store, selector, "1m", "max");
        let buckets = || theirs.values().flatten().map(|p| p.0);
        let (first, last) = (buckets().min().unwrap(), buckets().max().unwrap());
        let newest = db_query(&store, selector, &[])
            .iter()
            .flat_map(|(_, points)| points_of(points))
            .map(|p| p.0)
            .max()
            .unwrap();
        settle(newest);
        let query =
            format!("device={device}&match={selector}&start={first}&end={last}&step=1m&fn=max");
        for hub in &hubs {
            assert_close(&dashboard_range(hub.http_port, &query), &theirs, &query);
        }
    }
    for hub in hubs {
        hub.stop();
    }
}
