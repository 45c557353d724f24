//! PromQL and the Prometheus HTTP API, checked against a real Prometheus: the same samples (the
//! host hour in `tests/data/host/`, a replayed Jetson TX2 log, a generated classic histogram)
//! go into an Outpost store served by `outpost hub` and, through `promtool tsdb
//! create-blocks-from openmetrics`, into a `prometheus` process; every expression of
//! `tests/data/promql/corpus.promql` is asked of both, at several instants and over several
//! ranges, and the answers must be the same.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::agent::{free_port, http, outpost, root, succeed, tegrastats_log, wait_until};
use crate::sync::Hub;

/// The host hour's first and last sample as recorded (Unix milliseconds).
const RECORDED_HOST_START: i64 = 1_795_257_761_024;
const RECORDED_HOST_END: i64 = 1_795_261_360_024;
/// Lines in the TX2 log, replayed one a second.
const JETSON_LINES: i64 = 2660;

/// Where the data sets lie in time (Unix seconds). The store keeps raw samples for 30 days, so
/// the data is moved by whole days to end two days before the test runs.
#[derive(Clone, Copy)]
struct Times {
    shift_ms: i64,
    host_start: f64,
    host_end: f64,
    jetson_start: f64,
    jetson_end: f64,
}

impl Times {
    fn now() -> Times {
        const DAY: i64 = 86_400_000;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let shift_ms = (now - 2 * DAY - RECORDED_HOST_END).div_euclid(DAY) * DAY;
        let host_start = (RECORDED_HOST_START + shift_ms) as f64 / 1000.0;
        // The Jetson log plays the day before, from a whole hour.
        let jetson_start = ((RECORDED_HOST_START + shift_ms - DAY) / 3_600_000 * 3600) as f64;
        Times {
            shift_ms,
            host_start,
            host_end: (RECORDED_HOST_END + shift_ms) as f64 / 1000.0,
            jetson_start,
            jetson_end: jetson_start + (JETSON_LINES - 1) as f64,
        }
    }
}

/// Every sample of the three data sets as Prometheus text with millisecond timestamps.
fn samples_text(dir: &Path, times: Times) -> String {
    let mut text = samples_text_host_only(times);
    let jetson = dir.join("jetson.redb");
    succeed(
        outpost(&["tegrastats", "import", "--db"])
            .arg(&jetson)
            .arg("--start")
            .arg(((times.jetson_start * 1000.0) as i64).to_string())
            .arg(tegrastats_log("tx2-jetpack4-2660s.log.zst")),
    );
    let csv = succeed(
        outpost(&[
            "db",
            "query",
            "--from",
            "0",
            "--to",
            "2000000000000",
            "--db",
        ])
        .arg(&jetson)
        .arg("{__name__=~\"jetson_.+\"}"),
    );
    for line in String::from_utf8(csv.stdout).unwrap().lines().skip(1) {
        // `"name{a=""x""}",timestamp,value`, or `name,timestamp,value`
        let (rest, value) = line.rsplit_once(',').unwrap();
        let (series, timestamp) = rest.rsplit_once(',').unwrap();
        let series = series.trim_matches('"').replace("\"\"", "\"");
        writeln!(text, "{series} {value} {timestamp}").unwrap();
    }
    text.push_str(&histogram_text(times));
    text
}

/// A classic histogram of request durations for two handlers over the host hour, every 15 s,
/// with a counter reset half-way for one of them (a restarted process).
fn histogram_text(times: Times) -> String {
    const BOUNDS: [&str; 6] = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"];
    let mut text = String::new();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for handler in ["api", "static"] {
        let mut buckets = [0u64; 6];
        let mut sum = 0.0f64;
        let mut t = (times.host_start * 1000.0) as i64;
        while t <= (times.host_end * 1000.0) as i64 {
            if handler == "static" && t > ((times.host_start + 1800.0) * 1000.0) as i64 && sum > 0.0
            {
                buckets = [0; 6];
                sum = 0.0;
            }
            for _ in 0..(state % 7) {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let duration = (state >> 40) as f64 / (1u64 << 24) as f64 * 1.5;
                sum += duration;
                for (i, bound) in BOUNDS.iter().enumerate() {
                    if *bound == "+Inf" || duration <= bound.parse::<f64>().unwrap() {
                        buckets[i] += 1;
                    }
                }
            }
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            for (i, bound) in BOUNDS.iter().enumerate() {
                writeln!(
                    text,
                    "demo_request_duration_seconds_bucket{{handler=\"{handler}\",le=\"{bound}\"}} {} {t}",
                    buckets[i]
                )
                .unwrap();
            }
            writeln!(
                text,
                "demo_request_duration_seconds_sum{{handler=\"{handler}\"}} {sum} {t}"
            )
            .unwrap();
            writeln!(
                text,
                "demo_request_duration_seconds_count{{handler=\"{handler}\"}} {} {t}",
                buckets[5]
            )
            .unwrap();
            t += 15_000;
        }
    }
    text
}

/// The same samples in OpenMetrics, which promtool reads: timestamps in seconds, `# EOF`.
fn openmetrics(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (rest, timestamp) = line.rsplit_once(' ').unwrap();
        let ms: i64 = timestamp.parse().unwrap();
        writeln!(
            out,
            "{rest} {}.{:03}",
            ms.div_euclid(1000),
            ms.rem_euclid(1000)
        )
        .unwrap();
    }
    out.push_str("# EOF\n");
    out
}

/// A `prometheus` process serving a TSDB made by promtool from `text`.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, text: &str) -> Prometheus {
        let prometheus =
            std::env::var("OUTPOST_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let promtool = std::env::var("OUTPOST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
        let input = dir.join("samples.om");
        std::fs::write(&input, openmetrics(text)).unwrap();
        let tsdb = dir.join("tsdb");
        let made = Command::new(&promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&input)
            .arg(&tsdb)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {promtool} ({e}): install Debian's prometheus package")
            });
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 1h\n").unwrap();
        let port = free_port();
        let child = Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg("--storage.tsdb.retention.time=100y")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {prometheus} ({e})"));
        let server = Prometheus { child, port };
        wait_until("Prometheus to be ready", Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            (http(port, "GET", "/-/ready", "").0 == 200).then_some(())
        });
        server
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One question asked of both servers: the endpoint and its parameters.
#[derive(Clone)]
struct Ask {
    path: &'static str,
    params: Vec<(&'static str, String)>,
}

impl Ask {
    fn query_string(&self) -> String {
        self.params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    fn get(&self, port: u16) -> Value {
        let (status, body) = http(
            port,
            "GET",
            &format!("{}?{}", self.path, self.query_string()),
            "",
        );
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("status {status}, not JSON ({e}): {body}"))
    }
}

fn questions(expression: &str, times: Times) -> Vec<Ask> {
    let Times {
        host_start,
        host_end,
        jetson_start,
        jetson_end,
        ..
    } = times;
    let mut asks = Vec::new();
    let instants = [
        host_start + 30.0,
        host_start + 299.5,
        host_start + 1800.0,
        host_end - 0.5,
        host_end + 120.0,
        host_end + 301.0,
        jetson_start + 600.0,
        jetson_end + 100.0,
    ];
    for t in instants {
        asks.push(Ask {
            path: "/api/v1/query",
            params: vec![
                ("query", expression.to_string()),
                ("time", format!("{t:.3}")),
            ],
        });
    }
    let ranges = [
        (host_start, host_end, "60"),
        (host_start + 120.0, host_start + 1320.0, "15"),
        (host_start + 61.7, host_end + 600.0, "137.5"),
        (jetson_start - 300.0, jetson_end + 400.0, "1m"),
    ];
    for (start, end, step) in ranges {
        asks.push(Ask {
            path: "/api/v1/query_range",
            params: vec![
                ("query", expression.to_string()),
                ("start", format!("{start:.3}")),
                ("end", format!("{end:.3}")),
                ("step", step.to_string()),
            ],
        });
    }
    asks
}

fn number(value: &Value) -> f64 {
    match value.as_str() {
        Some("NaN") => f64::NAN,
        Some("+Inf") => f64::INFINITY,
        Some("-Inf") => f64::NEG_INFINITY,
        Some(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {text}")),
        None => value.as_f64().expect("a number"),
    }
}

fn same_number(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Equal within the tolerance, and spelled alike where equal exactly.
fn same_value(a: f64, b: f64, a_text: &str, b_text: &str) -> bool {
    same_number(a, b) && (a.to_bits() != b.to_bits() || a_text == b_text)
}

/// Points as (timestamp, value, value as written) per label set.
type Points = Vec<(f64, f64, String)>;

fn by_labels(result: &Value, key: &str) -> BTreeMap<String, Points> {
    let mut out = BTreeMap::new();
    for item in result.as_array().expect("a result list") {
        let labels = item["metric"].to_string();
        let points = match key {
            "value" => vec![&item["value"]],
            _ => item["values"].as_array().unwrap().iter().collect(),
        };
        let points = points
            .into_iter()
            .map(|p| (p[0].as_f64().unwrap(), number(&p[1]), p[1].to_string()))
            .collect();
        assert!(
            out.insert(labels, points).is_none(),
            "a label set twice: {result}"
        );
    }
    out
}

/// Why two answers differ, or nothing when they agree.
fn difference(expression: &str, ours: &Value, theirs: &Value) -> Option<String> {
    if theirs["status"] != ours["status"] {
        return Some(format!("Prometheus: {theirs}\nOutpost:    {ours}"));
    }
    if theirs["status"] == "error" {
        return (theirs["errorType"] != ours["errorType"])
            .then(|| format!("error types differ: {theirs} / {ours}"));
    }
    let (data, ours_data) = (&theirs["data"], &ours["data"]);
    if data["resultType"] != ours_data["resultType"] {
        return Some(format!("result types differ: {theirs} / {ours}"));
    }
    let kind = data["resultType"].as_str().unwrap();
    let agree = match kind {
        "scalar" | "string" => {
            let (a, b) = (&data["result"], &ours_data["result"]);
            a[0] == b[0]
                && if kind == "scalar" {
                    same_number(number(&a[1]), number(&b[1]))
                } else {
                    a[1] == b[1]
                }
        }
        _ => {
            let key = if kind == "vector" { "value" } else { "values" };
            let (a, b) = (
                by_labels(&data["result"], key),
                by_labels(&ours_data["result"], key),
            );
            let same_series = a.len() == b.len()
                && a.iter().zip(&b).all(|((la, pa), (lb, pb))| {
                    la == lb
                        && pa.len() == pb.len()
                        && pa
                            .iter()
                            .zip(pb)
                            .all(|(x, y)| x.0 == y.0 && same_value(x.1, y.1, &x.2, &y.2))
                });
            let ordered = !expression.starts_with("sort") || {
                let order = |r: &Value| -> Vec<String> {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i["value"][1].to_string())
                        .collect()
                };
                order(&data["result"]) == order(&ours_data["result"])
            };
            same_series && ordered
        }
    };
    (!agree).then(|| format!("Prometheus: {theirs}\nOutpost:    {ours}"))
}

/// `series`, `labels` and `label/<name>/values`, with and without a time range, on both servers:
/// the same sets (as JSON values, in any order).
fn lookups_differ(hub: u16, prometheus: u16, times: Times) -> Vec<String> {
    let range = format!("&start={:.3}&end={:.3}", times.host_start, times.host_end);
    let paths = [
        "/api/v1/series?match[]=node_cpu_seconds_total".to_string(),
        format!(
            "/api/v1/series?match[]=node_load1&match[]={}{range}",
            encode("{__name__=~\"jetson_rail.*\",rail=\"VDD_IN\"}")
        ),
        // The day after the data: nothing, though the store's chunk windows reach into it.
        format!(
            "/api/v1/series?match[]=node_load1&match[]=jetson_ram_used_bytes&start={:.3}&end={:.3}",
            times.host_end + 0.001,
            times.host_end + 86_400.0
        ),
        "/api/v1/labels".to_string(),
        format!("/api/v1/labels?match[]=node_network_receive_bytes_total{range}"),
        "/api/v1/label/__name__/values".to_string(),
        format!(
            "/api/v1/label/device/values?match[]={}",
            encode("{__name__=~\"node_disk.*\"}")
        ),
        "/api/v1/label/le/values".to_string(),
    ];
    let mut differ = Vec::new();
    for path in paths {
        let path = path.replace("match[]", "match%5B%5D");
        let set = |port: u16| -> Vec<String> {
            let (_, body) = http(port, "GET", &path, "");
            let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let mut items: Vec<String> = value["data"]
                .as_array()
                .map(|a| a.iter().map(Value::to_string).collect())
                .unwrap_or_else(|| vec![format!("no list: {body}")]);
            items.sort();
            items
        };
        let (ours, theirs) = (set(hub), set(prometheus));
        if ours != theirs {
            differ.push(format!(
                "{path}\nPrometheus: {theirs:?}\nOutpost:    {ours:?}"
            ));
        }
    }
    differ
}

/// The corpus, and every panel query of the Grafana dashboards (the data here has no
/// `instance` label: the device variable matches its absence).
fn corpus() -> Vec<String> {
    let mut corpus: Vec<String> =
        std::fs::read_to_string(root().join("tests/data/promql/corpus.promql"))
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
    for (_, _, expr) in dashboard_queries() {
        let query = substitute(&expr.replace("=~\"$instance\"", "=~\".*\""), "");
        if !corpus.contains(&query) {
            corpus.push(query);
        }
    }
    corpus
}

/// The hub and Prometheus, both loaded with the same samples.
fn servers(dir: &Path, times: Times) -> (Hub, Prometheus) {
    let text = samples_text(dir, times);
    let file: PathBuf = dir.join("samples.prom");
    std::fs::write(&file, &text).unwrap();
    succeed(
        outpost(&["db", "import", "--db"])
            .arg(dir.join("hub.redb"))
            .arg(&file),
    );
    let prometheus = Prometheus::start(dir, &text);
    let hub = Hub::start(dir, free_port(), free_port());
    (hub, prometheus)
}

#[test]
fn answers_as_prometheus_does() {
    let dir = tempfile::tempdir().unwrap();
    let times = Times::now();
    let (hub, prometheus) = servers(dir.path(), times);
    let corpus = corpus();
    assert!(corpus.len() >= 300, "{} expressions", corpus.len());
    let work: Vec<(String, Ask)> = corpus
        .iter()
        .flat_map(|e| questions(e, times).into_iter().map(move |a| (e.clone(), a)))
        .collect();
    let chunks: Vec<Vec<(String, Ask)>> = work
        .chunks(work.len().div_ceil(4))
        .map(<[_]>::to_vec)
        .collect();
    let (hub_port, prometheus_port) = (hub.http_port, prometheus.port);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    for (expression, ask) in chunk {
                        let theirs = ask.get(prometheus_port);
                        let ours = ask.get(hub_port);
                        if let Some(why) = difference(&expression, &ours, &theirs) {
                            failures.push(format!("{} {}\n{why}", ask.path, ask.query_string()));
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let lookups = lookups_differ(hub_port, prometheus_port, times);
    assert!(
        lookups.is_empty(),
        "series and label lookups differ:\n{}",
        lookups.join("\n")
    );
    let asked = work.len();
    assert!(
        failures.is_empty(),
        "{} of {asked} answers differ from Prometheus'; the first:\n\n{}",
        failures.len(),
        failures
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    drop(hub);
}

/// Only the host hour, moved as [`Times`] says, in a store served by a hub started with `args`.
fn host_hub(dir: &Path, times: Times, args: &[&str]) -> Hub {
    let text = samples_text_host_only(times);
    let file = dir.join("host.prom");
    std::fs::write(&file, text).unwrap();
    succeed(
        outpost(&["db", "import", "--db"])
            .arg(dir.join("hub.redb"))
            .arg(&file),
    );
    Hub::start_with(dir, free_port(), free_port(), args)
}

fn samples_text_host_only(times: Times) -> String {
    let mut recorded = String::new();
    zstd::stream::read::Decoder::new(
        std::fs::File::open(root().join("tests/data/host/host-1h.prom.zst")).unwrap(),
    )
    .unwrap()
    .read_to_string(&mut recorded)
    .unwrap();
    let mut text = String::with_capacity(recorded.len());
    for line in recorded.lines().filter(|l| !l.starts_with('#')) {
        let (rest, timestamp) = line.rsplit_once(' ').unwrap();
        let ms: i64 = timestamp.parse().unwrap();
        writeln!(text, "{rest} {}", ms + times.shift_ms).unwrap();
    }
    text
}

fn promtool(args: &[&str]) -> String {
    let promtool = std::env::var("OUTPOST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let output = Command::new(&promtool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {promtool} ({e})"));
    assert!(
        output.status.success(),
        "promtool {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn promtool_queries_the_hub_and_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let times = Times::now();
    let hub = host_hub(dir.path(), times, &[]);
    let server = format!("http://127.0.0.1:{}", hub.http_port);
    let at = format!("{:.3}", times.host_end);
    let instant = promtool(&[
        "query",
        "instant",
        "--time",
        &at,
        &server,
        "sum by (mode) (rate(node_cpu_seconds_total[1m]))",
    ]);
    assert_eq!(instant.lines().count(), 8, "{instant}");
    assert!(instant.contains("{mode=\"idle\"} =>"), "{instant}");
    let range = promtool(&[
        "query",
        "range",
        "--start",
        &format!("{:.3}", times.host_end - 600.0),
        "--end",
        &at,
        "--step",
        "1m",
        &server,
        "node_load1",
    ]);
    assert!(range.starts_with("node_load1 =>"), "{range}");
    assert_eq!(range.matches(" @[").count(), 11, "{range}");
    let series = promtool(&["query", "series", "--match", "node_load1", &server]);
    assert_eq!(series.trim(), "{__name__=\"node_load1\"}");
    let labels = promtool(&["query", "labels", &server, "mode"]);
    assert!(labels.lines().any(|l| l == "iowait"), "{labels}");
    drop(hub);

    // The agent answers the same API over its own store.
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let log = tegrastats_log("xavier-nx-jp5-nonroot-103s.log.zst");
    let agent = crate::agent::Agent::start(
        &agent_dir,
        "",
        &[
            "--tegrastats-replay",
            log.to_str().unwrap(),
            "--replay-speed",
            "1",
        ],
    );
    let server = format!("http://127.0.0.1:{}", agent.port);
    let total = wait_until(
        "tegrastats samples in the agent",
        Duration::from_secs(30),
        || {
            let text = promtool(&["query", "instant", &server, "jetson_ram_total_bytes"]);
            (!text.trim().is_empty()).then_some(text)
        },
    );
    assert!(
        total.contains(&format!("=> {} @[", 6834u64 * 1024 * 1024)),
        "{total}"
    );
    let labels = promtool(&["query", "labels", &server, "__name__"]);
    assert!(
        labels.lines().any(|l| l == "jetson_ram_total_bytes"),
        "{labels}"
    );
    agent.stop();
}

/// What Grafana sends to a Prometheus data source: the "Save & test" check (`1+1` by POST form,
/// then the build information), the query editor's lookups, and a panel's range query by POST
/// form with float seconds.
fn grafana_session(port: u16, auth: &[(&str, &str)], times: Times) -> Vec<(u16, Value)> {
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let headers: Vec<(&str, &str)> = auth.iter().chain(form.iter()).copied().collect();
    let (start, end) = (times.host_end - 3600.0, times.host_end);
    let requests: Vec<(&str, String, String)> = vec![
        (
            "POST",
            "/api/v1/query".into(),
            format!("query=1%2B1&time={end}"),
        ),
        ("GET", "/api/v1/status/buildinfo".into(), String::new()),
        (
            "GET",
            format!("/api/v1/label/__name__/values?start={start}&end={end}"),
            String::new(),
        ),
        ("GET", "/api/v1/metadata".into(), String::new()),
        (
            "GET",
            format!("/api/v1/labels?start={start}&end={end}"),
            String::new(),
        ),
        (
            "GET",
            format!("/api/v1/series?match%5B%5D=node_load1&start={start}&end={end}&limit=40000"),
            String::new(),
        ),
        (
            "POST",
            "/api/v1/query_range".into(),
            format!(
                "query={}&start={start}&end={end}&step=15",
                encode("sum by (mode) (rate(node_cpu_seconds_total[1m]))")
            ),
        ),
    ];
    requests
        .into_iter()
        .map(|(method, path, body)| {
            let (status, _, text) = crate::agent::http_with(port, method, &path, &headers, &body);
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        })
        .collect()
}

#[test]
fn grafana_reads_the_hub_with_a_password_or_a_token_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let times = Times::now();
    let token_text = succeed(&mut outpost(&["hub", "token", "grafana"])).stdout;
    let token_text = String::from_utf8(token_text).unwrap();
    let token = token_text
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .to_string();
    let entries: String = token_text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let config = format!(
        "{}\n{entries}\n",
        crate::dashboard::user_entry("grafana-reader", "viewer", "correct horse")
    );
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, config).unwrap();
    let hub = host_hub(dir.path(), times, &["--config", path.to_str().unwrap()]);
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("grafana-reader:correct horse")
    );
    let bearer = format!("Bearer {token}");
    for auth in [basic.as_str(), bearer.as_str()] {
        let answers = grafana_session(hub.http_port, &[("Authorization", auth)], times);
        for (status, body) in &answers {
            assert_eq!(*status, 200, "{auth}: {body}");
            assert_eq!(body["status"], "success", "{body}");
        }
        assert_eq!(answers[0].1["data"]["resultType"], "scalar");
        assert_eq!(answers[0].1["data"]["result"][1], "2");
        assert!(answers[1].1["data"]["version"]
            .as_str()
            .unwrap()
            .starts_with("2."));
        let names = answers[2].1["data"].as_array().unwrap();
        assert!(names.iter().any(|n| n == "node_load1"), "{names:?}");
        let metadata = &answers[3].1["data"];
        assert_eq!(metadata["node_load1"][0]["type"], "gauge", "{metadata}");
        assert_eq!(metadata["node_cpu_seconds_total"][0]["type"], "counter");
        let labels = answers[4].1["data"].as_array().unwrap();
        assert!(labels.iter().any(|n| n == "mode"), "{labels:?}");
        assert_eq!(
            answers[5].1["data"],
            serde_json::json!([{"__name__": "node_load1"}])
        );
        let panel = answers[6].1["data"]["result"].as_array().unwrap();
        assert_eq!(panel.len(), 8);
        // 241 steps, the first a second before the hour's first sample.
        assert_eq!(panel[0]["values"].as_array().unwrap().len(), 240);
    }
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("grafana-reader:wrong")
    );
    for auth in [&[][..], &[("Authorization", wrong.as_str())][..]] {
        let answers = grafana_session(hub.http_port, auth, times);
        // Refused; past a few wrong passwords, refused without checking (429).
        assert!(
            answers
                .iter()
                .all(|(status, _)| *status == 401 || *status == 429),
            "{answers:?}"
        );
        assert_eq!(answers[0].0, 401);
    }
}

/// Every panel query of `config/grafana/dashboards/*.json`: (dashboard, panel title, expression).
fn dashboard_queries() -> Vec<(String, String, String)> {
    fn walk(panels: &Value, file: &str, out: &mut Vec<(String, String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    let title = panel["title"].as_str().unwrap_or_default().to_string();
                    out.push((file.to_string(), title, expr.to_string()));
                }
            }
            walk(&panel["panels"], file, out);
        }
    }
    let mut out = Vec::new();
    let dir = root().join("config/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for path in files {
        let board: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        walk(&board["panels"], &file, &mut out);
    }
    assert!(out.len() > 40, "only {} panel queries", out.len());
    out
}

/// Grafana's variables as Grafana fills them in for a panel over the last hour.
fn substitute(expr: &str, instance: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$__interval", "15s")
        .replace("$__range", "1h")
        .replace("$instance", instance)
}

/// Metric names an expression selects (`name{` ...), for telling which panels need hardware.
fn selected_metrics(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        if *b != b'{' {
            continue;
        }
        let start = bytes[..i]
            .iter()
            .rposition(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b':'))
            .map_or(0, |p| p + 1);
        if start < i {
            names.push(expr[start..i].to_string());
        }
    }
    names
}

#[test]
fn every_grafana_panel_answers_over_a_real_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt = crate::sync::enrol(dir.path(), "jetson-1", mqtt_port);
    let hub = Hub::start(dir.path(), http_port, mqtt_port);
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let log = tegrastats_log("xavier-nx-jp5-nonroot-103s.log.zst");
    let agent = crate::agent::Agent::start(
        &agent_dir,
        &format!("[agent]\nself_interval = \"1s\"\n[host]\ninterval = \"1s\"\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n{mqtt}"),
        &["--tegrastats-replay", log.to_str().unwrap(), "--replay-speed", "1"],
    );
    let get = |path: String| -> Value {
        let (_, body) = http(http_port, "GET", &path, "");
        serde_json::from_str(&body).unwrap_or(Value::Null)
    };
    // Enough history for the rate windows: 30 s of the device's samples at the hub.
    wait_until(
        "30 s of the device's samples at the hub",
        Duration::from_secs(90),
        || {
            let answer = get(format!(
                "/api/v1/query?query={}",
                encode("count_over_time(jetson_ram_total_bytes{instance=\"jetson-1\"}[1m]) >= 30")
            ));
            (!answer["data"]["result"].as_array()?.is_empty()).then_some(())
        },
    );
    // The dashboards' device variable finds it.
    let devices = get(format!(
        "/api/v1/label/instance/values?match%5B%5D={}",
        encode("jetson_ram_total_bytes")
    ));
    assert_eq!(
        devices["data"],
        serde_json::json!(["jetson-1"]),
        "{devices}"
    );
    let names: Vec<String> = get("/api/v1/label/__name__/values".into())["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    let end = outpost::timearg::now_ms() as f64 / 1000.0;
    let mut failures = Vec::new();
    let mut answered = 0;
    for (file, title, expr) in dashboard_queries() {
        let query = substitute(&expr, "jetson-1");
        let answer = get(format!(
            "/api/v1/query_range?query={}&start={:.3}&end={end:.3}&step=15",
            encode(&query),
            end - 300.0
        ));
        let emitted = selected_metrics(&query).iter().all(|m| names.contains(m));
        let empty = answer["data"]["result"]
            .as_array()
            .is_none_or(Vec::is_empty);
        if answer["status"] != "success" || (emitted && empty) {
            failures.push(format!("{file} / {title}: {query}\n{answer}"));
        } else if !empty {
            answered += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(answered > 30, "only {answered} panel queries had data");
    agent.stop();
    drop(hub);
}
