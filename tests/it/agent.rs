//! `outpost agent` as a real process: replaying real tegrastats logs into a real store, serving
//! its endpoints, probing real sockets, scraped by a real Prometheus, stopped by SIGTERM.

use std::collections::BTreeSet;
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn tegrastats_log(name: &str) -> PathBuf {
    root().join("tests/data/tegrastats").join(name)
}

/// A port that nothing listens on now, and that this process has not been given before: the
/// kernel may give a port just closed to the next caller, and a test that took two that way
/// started its hub's broker and HTTP server on one port.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A minimal HTTP/1.1 exchange over std, so that the tests do not share the agent's client.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_with(port, method, path, &[], body);
    (status, body)
}

/// Sends one HTTP/1.1 request on a new connection to 127.0.0.1 and reads the whole response.
pub fn exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let length = body.len();
    request.push_str(&format!(
        "Connection: close\r\nContent-Length: {length}\r\n\r\n{body}"
    ));
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    response
}

/// The same with extra headers; returns the status, the head and the body (chunked bodies
/// joined back together).
pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let response = exchange(port, method, path, headers, body);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 || tail.len() < size {
                break;
            }
            out.push_str(&tail[..size]);
            rest = tail[size..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until a daemon that `outpost` started listens on `port`; if it exits first, fails with
/// its log.
pub fn wait_for_port(what: &str, child: &mut Child, port: u16, log: impl Fn() -> String) {
    wait_until(
        &format!("the {what} to listen on {port}"),
        Duration::from_secs(30),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{what} exited with {status}: {}", log());
            }
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        },
    );
}

pub struct Agent {
    pub child: Child,
    pub port: u16,
    log: PathBuf,
}

/// Runs `command` and returns what it wrote; a failure fails the test with its stderr.
pub fn succeed(command: &mut Command) -> std::process::Output {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a command that must fail as `outpost` fails on an error (exit status 1, not a crash);
/// its standard error.
pub fn fail(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

/// From a JSON array of objects: each object's `name` (a string) and its `field`.
pub fn named_fields(items: &Value, name: &str, field: &str) -> Vec<(String, Value)> {
    let items = items.as_array().expect("an array");
    let name_of = |item: &Value| item[name].as_str().expect("a name").to_string();
    items
        .iter()
        .map(|item| (name_of(item), item[field].clone()))
        .collect()
}

/// Sends `signal` (`TERM`, `KILL`, `HUP`...) to a child process.
pub fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `outpost` with `args`.
pub fn outpost(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
    command.args(args);
    command
}

/// The `outpost` binary, run through `wrapper` (a command that execs its arguments) if any.
pub fn outpost_through(wrapper: &[&str]) -> Command {
    match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut command = Command::new(program);
            command
                .args(wrapper_args)
                .arg(env!("CARGO_BIN_EXE_outpost"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_outpost")),
    }
}

impl Agent {
    pub fn start(dir: &Path, config: &str, args: &[&str]) -> Agent {
        Agent::start_with_env(dir, config, args, &[])
    }

    pub fn start_with_env(dir: &Path, config: &str, args: &[&str], env: &[(&str, &str)]) -> Agent {
        Agent::start_wrapped(dir, config, args, env, &dir.join("agent.redb"), &[])
    }

    /// An agent started through `wrapper` (a command that execs its arguments), with its store
    /// at `store`.
    pub fn start_wrapped(
        dir: &Path,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
        store: &Path,
        wrapper: &[&str],
    ) -> Agent {
        let port = free_port();
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("agent.log");
        let child = outpost_through(wrapper)
            .args(["--log", "info", "agent", "--config"])
            .arg(&config_path)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--store")
            .arg(store)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("outpost agent starts");
        let mut agent = Agent { child, port, log };
        let log = agent.log.clone();
        wait_for_port("agent", &mut agent.child, port, || {
            std::fs::read_to_string(&log).unwrap_or_default()
        });
        agent
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        let (status, body) = http(self.port, "GET", "/metrics", "");
        assert_eq!(status, 200);
        body
    }

    pub fn signal(&self, signal: &str) {
        send_signal(&self.child, signal);
    }

    /// SIGTERM, then the exit status must be success within a few seconds.
    pub fn stop(mut self) -> String {
        self.signal("TERM");
        let status = wait_until("the agent to exit", Duration::from_secs(30), || {
            self.child.try_wait().unwrap()
        });
        let log = self.log_text();
        assert!(status.success(), "agent exited with {status}: {log}");
        log
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one exposition line, `name{labels} value`.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == series).then(|| value.parse().ok())?
    })
}

const QUIET: &str =
    "[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n";

#[test]
fn replays_a_whole_log_into_the_store_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let log = tegrastats_log("tx2-jetpack4-2660s.log.zst");
    let mut agent = Agent::start(
        dir.path(),
        QUIET,
        &[
            "--tegrastats-replay",
            log.to_str().unwrap(),
            "--replay-speed",
            "0",
            "--exit-after-replay",
        ],
    );
    let status = wait_until("the replay to finish", Duration::from_secs(120), || {
        agent.child.try_wait().unwrap()
    });
    assert!(status.success(), "{}", agent.log_text());

    // What the parser says about each line, through the command a user would run.
    let parsed = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["tegrastats", "parse"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(parsed.status.success());
    let expected: Vec<f64> = String::from_utf8(parsed.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let json: Value = serde_json::from_str(line).unwrap();
            json["engines"]["GR3D"]["load_percent"]
                .as_f64()
                .map(|p| p / 100.0)
        })
        .collect();
    assert_eq!(expected.len(), 2240, "GR3D lines in the TX2 log");

    // At full speed the replay runs ahead of the wall clock by a millisecond a line.
    let an_hour_ahead = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000)
        .to_string();
    let result = db_query(
        &dir.path().join("agent.redb"),
        r#"jetson_engine_load_ratio{engine="GR3D"}"#,
        &["--to", &an_hour_ahead],
    );
    assert_eq!(result.len(), 1, "one series");
    let points = &result[0].1;
    let stored: Vec<f64> = points
        .iter()
        .map(|p| p[1].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        stored.len(),
        expected.len(),
        "one stored sample per GR3D line"
    );
    assert!(stored == expected, "every replayed GR3D load, in order");
    let stamps: Vec<i64> = points.iter().map(|p| p[0].as_i64().unwrap()).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing stamps"
    );
}

/// A one-thread HTTP server for probes and scrapes: `/ok` answers "service ok", `/metrics` an
/// application's exposition, anything else 404.
fn serve_http() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                    break;
                }
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/ok" => ("200 OK", "service ok\n".to_string()),
                "/metrics" => (
                    "200 OK",
                    "# TYPE inference_fps gauge\ninference_fps{stream=\"0\",instance=\"cam\"} 29.5\nqueue_length 3\n\
                     process_cpu_seconds_total 4242.5\n"
                        .to_string(),
                ),
                _ => ("404 Not Found", "no\n".to_string()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn collectors_probes_pushes_and_the_catalogue_agree() {
    // A UDP service that echoes what it gets, for the UDP probe.
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let server = serve_http();
    let closed = free_port();
    // Every era of tegrastats line in one replay, so every tegrastats metric appears.
    let samples = std::fs::read_to_string(tegrastats_log("samples.tsv")).unwrap();
    let replay: String = samples
        .lines()
        .skip(1)
        .map(|l| format!("{}\n", l.split('\t').nth(3).unwrap()))
        .collect();
    let replay_path = dir.path().join("replay.log");
    std::fs::write(&replay_path, replay).unwrap();
    let fixture = root().join("tests/data/sysfs/orin-nano-jp6");
    // What a cron job leaves for node_exporter's textfile collector, one of its names the
    // agent's own.
    let textfiles = dir.path().join("textfile");
    std::fs::create_dir(&textfiles).unwrap();
    std::fs::write(
        textfiles.join("apt.prom"),
        "apt_upgrades_pending{origin=\"Debian\"} 7\nnode_load1 1234\n",
    )
    .unwrap();
    let config = format!(
        r#"
[agent]
self_interval = "200ms"
[host]
interval = "200ms"
processes = ["outpost"]
textfile_directory = "{textfiles}"
[processes]
interval = "200ms"
[jetson]
enabled = "on"
root = "{fixture}"
interval = "200ms"
[nvml]
enabled = "auto"
[tegrastats]
replay = "{replay}"
replay_speed = 0
[import]
max_series_per_source = 3

[[scrape]]
name = "app"
url = "http://127.0.0.1:{server}/metrics"
interval = "200ms"
labels = {{ app = "detector" }}

[[probe]]
name = "web"
kind = "http"
url = "http://127.0.0.1:{server}/ok"
body_pattern = "service ok"
interval = "200ms"

[[probe]]
name = "web-wrong-body"
kind = "http"
url = "http://127.0.0.1:{server}/ok"
body_pattern = "^never$"
interval = "200ms"

[[probe]]
name = "web-missing"
kind = "http"
url = "http://127.0.0.1:{server}/missing"
interval = "200ms"

[[probe]]
name = "closed-port"
kind = "tcp"
address = "127.0.0.1:{closed}"
interval = "200ms"
failures_before_down = 2

[[probe]]
name = "open-port"
kind = "tcp"
address = "127.0.0.1:{server}"
interval = "200ms"

[[probe]]
name = "echo"
kind = "udp"
address = "127.0.0.1:{udp_port}"
payload = "ping"
expect = "^ping$"
interval = "200ms"

[[probe]]
name = "resolver"
kind = "dns"
hots = "localhost"
interval = "200ms"

[[probe]]
name = "loopback"
kind = "ping"
host = "127.0.0.1"
count = 1
interval = "200ms"

[[probe]]
name = "self"
kind = "process"
process = "outpost"
interval = "200ms"

[[probe]]
name = "scratch"
kind = "filesystem"
path = "{scratch}"
min_free = "1MiB"
interval = "200ms"
"#,
        fixture = fixture.display(),
        replay = replay_path.display(),
        scratch = dir.path().display(),
        textfiles = textfiles.display(),
    );
    // `hots` is a typo: the agent must refuse the config and name the key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, &config).unwrap();
    let stderr = fail(outpost(&["agent", "--check-config", "--config"]).arg(&bad));
    assert!(stderr.contains("hots"), "{stderr}");
    let config = config.replace("hots = ", "host = ");
    let agent = Agent::start(dir.path(), &config, &[]);

    // An application pushes its own numbers; the fourth new series is over the cap of three.
    let push = |body: &str| {
        let path = "/api/v1/import/prometheus?source=detector&extra_label=site%3Dlab";
        http(agent.port, "POST", path, body)
    };
    let (status, body) = push("detections_total{class=\"person\"} 17\nconfidence 0.93\nbad line\n");
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("stored 2 samples") && body.contains("line 3"),
        "{body}"
    );
    let (status, body) = push("queue_depth 4\nlatency_seconds 0.02\nconfidence 0.95\n");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("stored 2 samples; refused 1"), "{body}");
    let (status, _) = push("confidence 0.97\n");
    assert_eq!(status, 204, "a known series is always accepted");
    // A nanosecond timestamp (which once made retention delete the whole store) is refused,
    // named, with the window it missed.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let (status, body) = push(&format!("confidence 0.5 {nanos}\n"));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("stored 0 samples")
            && body.contains(&format!(
                "confidence: timestamp {nanos} is outside the accepted window"
            ))
            && body.contains("like nanoseconds"),
        "{body}"
    );

    let expectations = [
        r#"probe_success{kind="http",probe="web"} 1"#,
        r#"probe_success{kind="http",probe="web-wrong-body"} 0"#,
        r#"probe_success{kind="http",probe="web-missing"} 0"#,
        r#"probe_http_status_code{kind="http",probe="web-missing"} 404"#,
        r#"probe_success{kind="tcp",probe="closed-port"} 0"#,
        r#"probe_up{kind="tcp",probe="closed-port"} 0"#,
        r#"probe_success{kind="tcp",probe="open-port"} 1"#,
        r#"probe_up{kind="tcp",probe="open-port"} 1"#,
        r#"probe_success{kind="process",probe="self"} 1"#,
        r#"probe_success{kind="filesystem",probe="scratch"} 1"#,
        r#"inference_fps{app="detector",exported_instance="cam",stream="0"} 29.5"#,
        r#"outpost_scrape_up{scrape="app"} 1"#,
        r#"confidence{site="lab"} 0.97"#,
        r#"jetson_nvpmodel_mode 2"#,
        // Named as the agent's own figures, and kept apart from them.
        r#"process_cpu_seconds_total{app="detector",outpost_source="scrape:app"} 4242.5"#,
        r#"node_load1{outpost_source="textfile:apt.prom"} 1234"#,
        r#"apt_upgrades_pending{origin="Debian"} 7"#,
        "node_textfile_scrape_error 0",
        r#"node_scrape_collector_success{collector="host"} 1"#,
    ];
    let metrics = wait_until(
        "every probe, scrape and collector",
        Duration::from_secs(30),
        || {
            let metrics = agent.metrics();
            let complete = expectations
                .iter()
                .all(|line| metrics.lines().any(|l| l == *line))
                && metrics.contains("node_scrape_collector_duration_seconds{collector=\"jetson\"}")
                && metrics.contains("outpost_store_disk_bytes")
                // Only after a second of uptime, which a loaded machine may not have reached yet.
                && metrics.contains("outpost_disk_write_bytes_per_day")
                && metrics.contains("probe_success{kind=\"dns\",probe=\"resolver\"}")
                && metrics.contains("probe_success{kind=\"ping\",probe=\"loopback\"}")
                && metrics.contains("outpost_tegrastats_lines_total 48")
                // Other Outposts may run beside the tests: at least this one.
                && metric_value(&metrics, r#"host_process_count{process="outpost"}"#)
                    .is_some_and(|n| n >= 1.0);
            complete.then_some(metrics)
        },
    );
    assert!(metric_value(&metrics, r#"detections_total{class="person",site="lab"}"#) == Some(17.0));
    let own_cpu = metric_value(&metrics, "process_cpu_seconds_total");
    assert!(own_cpu.is_some_and(|s| s < 4242.5), "{metrics}");
    assert!(
        metric_value(&metrics, "node_load1").is_some_and(|load| load < 1234.0),
        "{metrics}"
    );
    assert!(metric_value(&metrics, r#"queue_depth{site="lab"}"#) == Some(4.0));
    assert!(
        !metrics.contains("latency_seconds"),
        "over the cap: {metrics}"
    );

    for line in metrics.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(is_documented(name), "{name} typed but undocumented");
    }

    // The store has what /metrics showed, queried through the agent (the file is locked).
    let (status, body) = http(
        agent.port,
        "GET",
        "/api/query?match=probe_success%7Bprobe%3D%22web%22%7D&from=-5m&format=json",
        "",
    );
    assert_eq!(status, 200, "{body}");
    let result: Value = serde_json::from_str(&body).unwrap();
    assert!(!result[0]["points"].as_array().unwrap().is_empty());
    let (status, body) = http(agent.port, "GET", "/api/query?match=cpu%7B", "");
    assert_eq!(status, 400);
    assert!(body.starts_with("match:"), "{body}");
    let locked = fail(outpost(&["db", "stats", "--db"]).arg(dir.path().join("agent.redb")));
    assert!(locked.contains("/api/query"), "{locked}");

    let (status, body) = http(agent.port, "GET", "/api/health", "");
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert!(health["collectors"]["jetson"]["rounds"].as_u64().unwrap() > 0);

    let log = agent.stop();
    assert!(log.contains("agent stopped"), "{log}");
    assert!(log.contains("NVIDIA dGPU collector off") || log.contains("NVML collector on"));

    // The catalogue, against everything the collectors stored (not only the latest round that
    // /metrics shows): nothing stored that docs/metrics.md does not describe...
    let stored = stored_series(&dir.path().join("agent.redb"));
    let emitted: BTreeSet<String> = stored
        .iter()
        .map(|s| s.split('{').next().unwrap().to_string())
        .collect();
    let documented = documented_metrics();
    let application: BTreeSet<&str> = [
        "inference_fps",
        "queue_length",
        "detections_total",
        "queue_depth",
        "confidence",
        "apt_upgrades_pending",
    ]
    .into();
    // A family row (`node_memory_<Field>_bytes`) stands for every name that fits it.
    for name in &emitted {
        assert!(
            is_documented(name) || application.contains(name.as_str()),
            "{name} is emitted but not in docs/metrics.md"
        );
    }
    // ...and nothing described that no collector emits, except what needs hardware or a
    // network this machine does not have.
    let icmp_refused = log.contains("ICMP is not allowed");
    let needs_hardware = |name: &str| {
        name.starts_with("nvml_") || name.starts_with("DCGM_") // an NVIDIA driver
            || name.starts_with("outpost_sync_") // [mqtt] on: the sync tests check these
            || name.starts_with("outpost_hub_") // the hub's: the hub alert test checks these
            || name.starts_with("outpost_alert_notifications_") // a channel: the alert tests
            || name == "outpost_task_restarts_total" // a task that failed: the supervision tests
            || name.starts_with("outpost_clock_last_step") // a step of the clock: clocks::
            || name == "outpost_config_last_reload_success_timestamp_seconds" // a SIGHUP: agent::sighup_*
            || name.starts_with("container_") || name.starts_with("outpost_container") // running containers: containers::
            || name.starts_with("jetson_process_gpu_memory") // a Jetson's nvmap, read as root
            || name.starts_with("outpost_log_") || name.starts_with("outpost_journal_") // logs::
            || (icmp_refused && name.starts_with("probe_icmp_")) // neither sysctl nor CAP_NET_RAW
            || name.starts_with("node_hwmon_") // hwmon sensors (absent in VMs)
            || name == "node_thermal_zone_temp" // thermal zones (absent in VMs)
            || name == "node_cpu_scaling_frequency_hertz" // cpufreq (absent in some VMs)
            || name.starts_with("node_pressure_") // PSI (kernels from 4.20, when enabled)
            || name == "node_memory_<Field>" // unitless meminfo lines (kernel-dependent)
            || name.starts_with("node_nf_conntrack_") // the netfilter module, where loaded
            || name == "node_arp_entries" // an empty neighbour table
            || name.starts_with("node_network_carrier") // a link with a carrier (not in every sandbox)
            || name == "node_network_speed_bytes" // a driver that reports a speed
            || name.starts_with("node_disk_flush_requests") // kernels from 5.5
            || name == "probe_ssl_earliest_cert_expiry" // a TLS server with a real certificate
    };
    for name in &documented {
        let seen = emitted.contains(name) || emitted.iter().any(|e| fits(name, e));
        assert!(
            seen || needs_hardware(name),
            "{name} is in docs/metrics.md but no collector emitted it"
        );
    }
    // The agent drops what tegrastats prints but does not measure.
    assert!(
        !stored.iter().any(|s| s.contains(r#"sensor="PMIC""#)),
        "the PMIC placeholder is dropped"
    );
}

/// Whether `name` fits a documented name with a `<placeholder>` (`node_memory_<Field>_bytes`).
pub fn fits(pattern: &str, name: &str) -> bool {
    let Some((prefix, rest)) = pattern.split_once('<') else {
        return false;
    };
    let suffix = rest.split_once('>').map_or("", |(_, s)| s);
    name.len() > prefix.len() + suffix.len() && name.starts_with(prefix) && name.ends_with(suffix)
}

/// Whether docs/metrics.md describes `name`, by its own row or a family's.
pub fn is_documented(name: &str) -> bool {
    let documented = documented_metrics();
    documented.contains(name) || documented.iter().any(|pattern| fits(pattern, name))
}

pub fn documented_metrics() -> BTreeSet<String> {
    let document = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    document
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next().map(str::to_string))
        .collect()
}

/// `outpost db query` on a store that no process holds, as (series, points) from its JSON; from
/// the epoch to now unless `extra` says otherwise.
pub fn db_query(store: &Path, selector: &str, extra: &[&str]) -> Vec<(String, Vec<Value>)> {
    let output = succeed(
        Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["db", "query", "--db"])
            .arg(store)
            .args([selector, "--from", "0", "--format", "json"])
            .args(if extra.contains(&"--to") {
                &[][..]
            } else {
                &["--to", "now"]
            })
            .args(extra),
    );
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    named_fields(&json, "series", "points")
        .into_iter()
        .map(|(series, points)| (series, points.as_array().unwrap().clone()))
        .collect()
}

/// Every series in a store that no process holds.
fn stored_series(store: &Path) -> Vec<String> {
    db_query(store, r#"{__name__=~".+"}"#, &[])
        .into_iter()
        .map(|(series, _)| series)
        .collect()
}

#[test]
fn sighup_reloads_the_config_and_a_bad_one_is_kept_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_http();
    let agent = Agent::start(dir.path(), QUIET, &[]);
    assert!(!agent.metrics().contains("probe_success"));

    std::fs::write(dir.path().join("agent.toml"), "[host]\nintervl = \"1s\"\n").unwrap();
    agent.signal("HUP");
    wait_until("the reload error", Duration::from_secs(10), || {
        agent
            .log_text()
            .contains("config not reloaded")
            .then_some(())
    });
    assert!(agent.log_text().contains("intervl"));
    wait_until(
        "the failed reload in the metrics",
        Duration::from_secs(20),
        || {
            metric_value(&agent.metrics(), "outpost_config_last_reload_successful")
                .filter(|v| *v == 0.0)
        },
    );
    assert!(!agent
        .metrics()
        .contains("outpost_config_last_reload_success_timestamp_seconds"));

    let config = format!(
        "{QUIET}\n[[probe]]\nname = \"web\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{server}/ok\"\ninterval = \"200ms\"\n"
    );
    std::fs::write(dir.path().join("agent.toml"), config).unwrap();
    let reloaded_after_ms = outpost::timearg::now_ms();
    agent.signal("HUP");
    wait_until("the new probe", Duration::from_secs(10), || {
        metric_value(
            &agent.metrics(),
            r#"probe_success{kind="http",probe="web"}"#,
        )
        .filter(|v| *v == 1.0)
    });
    let reloaded = wait_until("the reload in the metrics", Duration::from_secs(10), || {
        let metrics = agent.metrics();
        (metric_value(&metrics, "outpost_config_last_reload_successful") == Some(1.0))
            .then(|| {
                metric_value(
                    &metrics,
                    "outpost_config_last_reload_success_timestamp_seconds",
                )
            })
            .flatten()
    });
    let reloaded_ms = (reloaded * 1000.0) as i64;
    assert!((reloaded_after_ms..=outpost::timearg::now_ms()).contains(&reloaded_ms));
    agent.stop();
}

#[test]
fn prometheus_scrapes_the_agent() {
    let prometheus = std::env::var("OUTPOST_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let dir = tempfile::tempdir().unwrap();
    let log = tegrastats_log("xavier-nx-jp5-nonroot-103s.log.zst");
    let agent = Agent::start(
        dir.path(),
        "[agent]\nself_interval = \"1s\"\n",
        &[
            "--tegrastats-replay",
            log.to_str().unwrap(),
            "--replay-speed",
            "1",
        ],
    );
    let prometheus_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: outpost\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            agent.port
        ),
    )
    .unwrap();
    let mut server = Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {prometheus} ({e}): install Debian's prometheus package, or set OUTPOST_PROMETHEUS")
        });
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut server);
    let query = |expr: &str| -> Option<Value> {
        let stream = TcpStream::connect(("127.0.0.1", prometheus_port)).ok()?;
        drop(stream);
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http(
            prometheus_port,
            "GET",
            &format!("/api/v1/query?query={encoded}"),
            "",
        );
        if status != 200 {
            return None;
        }
        let json: Value = serde_json::from_str(&body).ok()?;
        let result = json["data"]["result"].as_array()?.clone();
        (!result.is_empty()).then(|| Value::Array(result))
    };
    let up = wait_until(
        "Prometheus to scrape the agent",
        Duration::from_secs(60),
        || query("up{job=\"outpost\"} == 1"),
    );
    assert_eq!(up[0]["value"][1], "1");
    let total = wait_until(
        "tegrastats series in Prometheus",
        Duration::from_secs(30),
        || query("jetson_ram_total_bytes"),
    );
    assert_eq!(total[0]["value"][1], (6834u64 * 1024 * 1024).to_string());
    // Prometheus accepted every sample: nothing refused as malformed or duplicated.
    let scraped = query("scrape_samples_scraped{job=\"outpost\"}").unwrap();
    let scraped: f64 = scraped[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(scraped > 100.0, "{scraped} samples per scrape");
    let types = query("count(jetson_engine_load_ratio)").unwrap();
    assert!(
        types[0]["value"][1]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 2.0
    );
    agent.stop();
}

/// A stand-in `tegrastats` (a real process the agent spawns): it records its arguments, prints
/// two real Orin lines and dies, so the agent must restart it, with backoff.
#[test]
fn spawns_tegrastats_and_restarts_it_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tegrastats");
    let line = "RAM 2391/7620MB (lfb 23x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@729,off] \
                EMC_FREQ 0%@2133 GR3D_FREQ 12%@[1300,1290] cpu@52.5C VDD_IN 5139mW/5139mW";
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{args}'\necho '{line}'\necho '{line}'\nexit 3\n",
            args = dir.path().join("args").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n\
         [tegrastats]\nenabled = \"on\"\npath = \"{}\"\ninterval = \"500ms\"\n",
        script.display()
    );
    let agent = Agent::start(dir.path(), &config, &[]);
    // Runs at 0 s, then after 1 s and 2 s of backoff: three runs, six lines, within seconds.
    wait_until("three runs of tegrastats", Duration::from_secs(20), || {
        metric_value(&agent.metrics(), "outpost_tegrastats_lines_total").filter(|n| *n >= 6.0)
    });
    let metrics = agent.metrics();
    assert_eq!(
        metric_value(&metrics, r#"jetson_engine_frequency_hertz{engine="GR3D"}"#),
        Some(1300e6)
    );
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert!(args.lines().count() >= 3, "{args}");
    assert!(args.lines().all(|a| a == "--interval 500"), "{args}");
    let log = agent.stop();
    assert!(log.contains("restarting in 1s"), "{log}");
    assert!(log.contains("restarting in 2s"), "{log}");
}

/// A command that runs its arguments with a tmpfs of `size` mounted on `dir`, in a user and
/// mount namespace of its own (no privilege needed): for `Agent::start_wrapped` and
/// `Hub::start_wrapped`.
pub fn tmpfs_wrapper(dir: &Path, size: &str) -> Vec<String> {
    let mount = format!("mount -t tmpfs -o size={size} tmpfs \"$0\" && exec \"$@\"");
    [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
    ]
    .into_iter()
    .map(str::to_string)
    .chain([mount, dir.to_str().unwrap().to_string()])
    .collect()
}

/// `dir` as process `pid` sees it (through its mount namespace).
pub fn as_seen_by(pid: u32, dir: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{}", dir.display()))
}

/// Fills the file system of `dir` to the last byte; returns the filler file, to free it.
pub fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut filler = std::fs::File::create(&path).unwrap();
    let block = vec![0xa5u8; 64 << 10];
    while filler.write_all(&block).is_ok() {}
    while filler.write_all(&[0x5a]).is_ok() {}
    path
}

/// A full disk: the agent's store on a 4 MiB tmpfs (mounted in a user and mount namespace of its
/// own, so no privilege is needed) that the test fills and then frees through
/// `/proc/PID/root`. While full: writes are refused with an error, `/api/health` is 503 and says
/// why, the error counter counts and the log stays small. Once freed: the agent heals by itself
/// and holds every sample it acknowledged, before and after.
#[test]
fn a_full_disk_degrades_health_and_the_agent_resumes_by_itself_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let wrapper = tmpfs_wrapper(&data, "4m");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = Agent::start_wrapped(
        dir.path(),
        QUIET,
        &[],
        &[],
        &data.join("agent.redb"),
        &wrapper,
    );
    // The store's directory as the agent sees it: the tmpfs.
    let inside = as_seen_by(agent.child.id(), &data);
    assert!(
        inside.join("agent.redb").exists(),
        "the store is on the tmpfs"
    );
    assert!(!data.join("agent.redb").exists(), "and only there");

    let mut acknowledged: Vec<i64> = Vec::new();
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut next = 0i64;
    // A hundred samples a push, so that the log needs new pages of the file system often.
    let mut push = |acknowledged: &mut Vec<i64>| -> (u16, String) {
        let values: Vec<i64> = (next + 1..=next + 100).collect();
        next += 100;
        // Values and timestamps that do not compress: the integer part is the sample's number.
        let scramble = |v: i64| (v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
        let body: String = values
            .iter()
            .map(|&v| {
                let noise = (scramble(v) % 1_000_000) as f64 / 1e6;
                let ts = start_ms + 2 * v + (scramble(v) % 2) as i64;
                format!("full_disk_probe {} {ts}\n", v as f64 + noise)
            })
            .collect();
        let (status, text) = http(agent.port, "POST", "/api/v1/import/prometheus", &body);
        if status == 204 {
            acknowledged.extend(values);
        }
        (status, text)
    };
    for _ in 0..50 {
        assert_eq!(push(&mut acknowledged).0, 204);
    }

    let filler_path = fill(&inside);

    let refused = wait_until("a refused write", Duration::from_secs(30), || {
        let (status, body) = push(&mut acknowledged);
        (status != 204).then_some((status, body))
    });
    assert_eq!(refused.0, 503, "{}", refused.1);
    assert!(refused.1.contains("store"), "{}", refused.1);
    let (status, body) = http(agent.port, "GET", "/api/health", "");
    assert_eq!(status, 503, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "degraded");
    let failure = health["store"]["write_failure"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        failure.contains("No space left") || failure.contains("space"),
        "{failure}"
    );
    // Hammer it: every refusal is counted, few are logged.
    for _ in 0..300 {
        push(&mut acknowledged);
    }
    // Counted in the self-metrics, which the next self-metrics round shows although the store
    // refuses to keep them.
    wait_until("the write errors counted", Duration::from_secs(30), || {
        metric_value(&agent.metrics(), "outpost_store_write_errors_total")
            .filter(|errors| *errors >= 300.0)
    });
    let log = agent.log_text();
    assert!(
        log.len() < 64 << 10,
        "the log grew by {} bytes: {}",
        log.len(),
        &log[log.len().saturating_sub(2000)..]
    );

    // Space returns: the agent heals by itself.
    std::fs::remove_file(&filler_path).unwrap();
    wait_until("health ok again", Duration::from_secs(60), || {
        let (status, _) = http(agent.port, "GET", "/api/health", "");
        (status == 200).then_some(())
    });
    for _ in 0..20 {
        assert_eq!(push(&mut acknowledged).0, 204);
    }
    let (status, body) = http(
        agent.port,
        "GET",
        &format!(
            "/api/query?match=full_disk_probe&from={}&to={}&format=json",
            start_ms,
            start_ms + 2 * next + 2
        ),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let result: Value = serde_json::from_str(&body).unwrap();
    let stored: Vec<i64> = result[0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_str().unwrap().parse::<f64>().unwrap().floor() as i64)
        .collect();
    assert_eq!(
        stored, acknowledged,
        "every acknowledged sample, nothing else"
    );
    agent.stop();
}

/// Supervision: the host collector panics on its first run and the uplink's first run returns an
/// error; both are logged, counted and started again, and the host collector's samples keep
/// coming. Before, a panicked collector stopped for good while the agent looked healthy.
#[test]
fn a_collector_that_panics_and_an_uplink_that_fails_are_started_again() {
    let dir = tempfile::tempdir().unwrap();
    // An uplink with nowhere to connect: it keeps trying, which is a healthy run.
    let mqtt = crate::sync::enrol(dir.path(), "dev-1", free_port());
    let config = format!(
        "[agent]\nself_interval = \"1s\"\n[host]\nenabled = true\ninterval = \"1s\"\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n{mqtt}"
    );
    let agent = Agent::start_with_env(
        dir.path(),
        &config,
        &[],
        &[
            ("OUTPOST_FAULT", "panic:host,fail:uplink"),
            ("RUST_BACKTRACE", "0"),
        ],
    );
    wait_until("both restarts counted", Duration::from_secs(30), || {
        let metrics = agent.metrics();
        (metric_value(&metrics, r#"outpost_task_restarts_total{task="host"}"#) == Some(1.0)
            && metric_value(&metrics, r#"outpost_task_restarts_total{task="uplink"}"#) == Some(1.0))
        .then_some(())
    });
    wait_until(
        "host samples after the restart",
        Duration::from_secs(30),
        || metric_value(&agent.metrics(), "node_load1"),
    );
    let (status, body) = http(agent.port, "GET", "/api/health", "");
    assert_eq!(status, 200, "one failure is not a crash loop: {body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["tasks"]["host"]["restarts"], 1);
    let log = agent.stop();
    assert!(log.contains("task failed"), "{log}");
    assert!(log.contains("panicked: fault injected"), "{log}");
}

/// The agent's API on the network: an address other machines can reach is refused without
/// tokens unless the config says it may be open; with a token, every request but health needs
/// it (the scheme in any case).
#[test]
fn the_agents_api_needs_a_token_or_an_explicit_opt_in_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("open.toml");
    std::fs::write(&config, QUIET).unwrap();
    let port = free_port();
    let stderr = fail(
        outpost(&["agent", "--config"])
            .arg(&config)
            .args(["--listen", &format!("0.0.0.0:{port}"), "--store"])
            .arg(dir.path().join("open.redb")),
    );
    assert!(
        stderr.contains("agent.listen") && stderr.contains("agent.allow_unauthenticated"),
        "{stderr}"
    );

    // Opted in: it starts on every address, says so, and serves reads.
    std::fs::write(
        &config,
        format!("{QUIET}[agent]\nallow_unauthenticated = true\n"),
    )
    .unwrap();
    let log_path = dir.path().join("open.log");
    let mut open = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["--log", "info", "agent", "--config"])
        .arg(&config)
        .args(["--listen", &format!("0.0.0.0:{port}"), "--store"])
        .arg(dir.path().join("open.redb"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_for_port("the open agent", &mut open, port, || {
        std::fs::read_to_string(&log_path).unwrap_or_default()
    });
    let (status, _) = http(port, "GET", "/api/query?match=up", "");
    assert_eq!(status, 200);
    let stopped = Command::new("kill")
        .args(["-TERM", &open.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(open.wait().unwrap().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("the API is open to every machine"), "{log}");

    // With a token (on loopback here; the rule is the same anywhere).
    let token = "agent-token-0123456789abcdef";
    let secured_dir = dir.path().join("secured");
    std::fs::create_dir(&secured_dir).unwrap();
    let secured = Agent::start(
        &secured_dir,
        &format!(
            "{QUIET}[[agent.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\n",
            outpost_web::sha256_hex(token)
        ),
        &[],
    );
    let (status, _) = http(secured.port, "GET", "/api/health", "");
    assert_eq!(status, 200, "health stays open");
    for path in ["/metrics", "/api/query?match=up", "/api/silences"] {
        let (status, body) = http(secured.port, "GET", path, "");
        assert_eq!(status, 401, "{path}: {body}");
    }
    let silence = r#"{"match": "{alertname=\"x\"}", "duration": "1h"}"#;
    let (status, _) = http(secured.port, "POST", "/api/silences", silence);
    assert_eq!(status, 401);
    for scheme in ["Bearer", "bearer"] {
        let auth = format!("{scheme} {token}");
        let (status, _, body) = http_with(
            secured.port,
            "GET",
            "/api/query?match=up",
            &[("Authorization", &auth)],
            "",
        );
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    let (status, _, body) = http_with(
        secured.port,
        "POST",
        "/api/silences",
        &[("Authorization", &format!("Bearer {token}"))],
        silence,
    );
    assert_eq!(status, 201, "{body}");
    secured.stop();
}

/// The kernel's clock discipline (`node_timex_*`), side by side with Debian's node_exporter on
/// the same kernel: the same names and, read between two of the agent's rounds, the same values
/// in the same units (the error bounds and the offset may move a little between the reads).
#[test]
fn the_clock_discipline_figures_are_node_exporters() {
    const NAMES: [(&str, f64); 17] = [
        ("node_timex_sync_status", 0.0),
        ("node_timex_offset_seconds", 0.01),
        ("node_timex_frequency_adjustment_ratio", 1e-7),
        ("node_timex_maxerror_seconds", 0.01),
        ("node_timex_estimated_error_seconds", 0.01),
        ("node_timex_status", 0.0),
        ("node_timex_loop_time_constant", 0.0),
        ("node_timex_tick_seconds", 0.0),
        ("node_timex_tai_offset_seconds", 0.0),
        ("node_timex_pps_frequency_hertz", 0.0),
        ("node_timex_pps_jitter_seconds", 0.0),
        ("node_timex_pps_shift_seconds", 0.0),
        ("node_timex_pps_stability_hertz", 0.0),
        ("node_timex_pps_jitter_total", 0.0),
        ("node_timex_pps_calibration_total", 0.0),
        ("node_timex_pps_error_total", 0.0),
        ("node_timex_pps_stability_exceeded_total", 0.0),
    ];
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    struct Exporter(Child);
    impl Drop for Exporter {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let exporter = Exporter(
        Command::new("prometheus-node-exporter")
            .args([
                &format!("--web.listen-address=127.0.0.1:{port}"),
                "--collector.disable-defaults",
                "--collector.timex",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Debian's prometheus-node-exporter (.ci/run installs it)"),
    );
    let config = QUIET.replace("[host]\nenabled = false", "[host]\ninterval = \"200ms\"");
    let agent = Agent::start(dir.path(), &config, &[]);
    wait_until("the agent's clock figures", Duration::from_secs(20), || {
        metric_value(&agent.metrics(), "node_timex_tick_seconds")
    });
    wait_until("node_exporter", Duration::from_secs(20), || {
        let (status, body) = http(port, "GET", "/metrics", "");
        (status == 200 && body.contains("node_timex_tick_seconds")).then_some(())
    });
    let before = agent.metrics();
    let (_, theirs) = http(port, "GET", "/metrics", "");
    // After the agent's next round, so that its two readings bracket node_exporter's.
    let round = metric_value(&before, "node_time_seconds");
    let after = wait_until("the agent's next round", Duration::from_secs(10), || {
        let text = agent.metrics();
        (metric_value(&text, "node_time_seconds") != round).then_some(text)
    });
    for (name, tolerance) in NAMES {
        let value = |text: &str, who: &str| {
            metric_value(text, name).unwrap_or_else(|| panic!("{who} has no {name}"))
        };
        let (a, b, theirs) = (
            value(&before, "the agent"),
            value(&after, "the agent"),
            value(&theirs, "node_exporter"),
        );
        assert!(
            theirs >= a.min(b) - tolerance && theirs <= a.max(b) + tolerance,
            "{name}: node_exporter {theirs}, the agent {a} then {b}"
        );
    }
    drop(exporter);
}

/// A Jetson whose thermal zone never answers (here a named pipe with no writer, which blocks its
/// reader as a hung device's sysfs file does): the Jetson collector is stuck, and says so in the
/// log, but the host collector goes on, `/metrics` answers, and the agent stops when asked.
/// (Collectors ran on the runtime's one thread: one stuck read stopped the whole agent.)
#[test]
fn a_collector_stuck_on_a_device_file_holds_up_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("device");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(root().join("tests/data/sysfs/orin-nano-jp6"))
        .arg(&device)
        .status()
        .unwrap();
    assert!(copied.success());
    let zone = device.join("sys/devices/virtual/thermal/thermal_zone3/temp");
    std::fs::remove_file(&zone).unwrap();
    let made = Command::new("mkfifo").arg(&zone).status().unwrap();
    assert!(made.success());
    let config = format!(
        "[agent]\nself_interval = \"200ms\"\n[host]\ninterval = \"200ms\"\n\
         [jetson]\nenabled = \"on\"\nroot = \"{}\"\ninterval = \"200ms\"\n\
         [nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n",
        device.display()
    );
    let agent = Agent::start(dir.path(), &config, &[]);
    let host_round = r#"node_scrape_collector_duration_seconds{collector="host"}"#;
    for _ in 0..5 {
        let before = metric_value(&agent.metrics(), host_round);
        wait_until("a host round", Duration::from_secs(30), || {
            (metric_value(&agent.metrics(), host_round) != before).then_some(())
        });
    }
    wait_until(
        "the stuck collector named in the log",
        Duration::from_secs(60),
        || {
            agent
                .log_text()
                .lines()
                .find(|l| l.contains("has not returned") && l.contains("jetson"))
                .map(str::to_string)
        },
    );
    assert_eq!(
        metric_value(
            &agent.metrics(),
            r#"node_scrape_collector_duration_seconds{collector="jetson"}"#
        ),
        None,
        "no Jetson round ended"
    );
    agent.stop();
}
