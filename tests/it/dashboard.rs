//! The hub's dashboard and API with real agents sending real data over the embedded broker:
//! the API's bounds and guards over HTTP, a silence pushed from the API to a device, and the
//! pages in Debian's headless Chromium (driven by `tests/browser/dashboard.mjs` with
//! playwright-core). `outpost demo` end to end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::{
    fail, free_port, http_with, named_fields, outpost, succeed, tegrastats_log, wait_until, Agent,
};
use crate::sync::{enrol, Hub};

const PASSWORD: &str = "correct horse battery";
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef0123456789abcdef";
const VIEWER_TOKEN: &str = "viewer-token-0123456789abcdef0123456789abcdef";

/// A GET whose body is bytes, sent with a Content-Length.
pub fn http_bytes(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let response = crate::agent::exchange(port, "GET", path, headers, "");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response[split + 4..].to_vec())
}

/// A query string with the characters of selectors that may not appear raw in a URL escaped.
fn url_safe(query: &str) -> String {
    query
        .replace('"', "%22")
        .replace('{', "%7B")
        .replace('}', "%7D")
        .replace('+', "%2B")
}

/// GET `path` with `authorization` (a whole header value): status, head and body.
fn get_as(port: u16, path: &str, authorization: &str) -> (u16, String, String) {
    http_with(port, "GET", path, &[("Authorization", authorization)], "")
}

fn get_json(port: u16, path: &str, token: &str) -> Value {
    let (status, _, body) = get_as(port, path, &format!("Bearer {token}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn sha256_hex(text: &str) -> String {
    outpost_web::sha256_hex(text)
}

/// `POST /api/login` with a name and password: the status and the head (with its cookie).
fn log_in(port: u16, name: &str, password: &str) -> (u16, String) {
    let body = serde_json::json!({ "name": name, "password": password }).to_string();
    let json = [("Content-Type", "application/json")];
    let (status, head, _) = http_with(port, "POST", "/api/login", &json, &body);
    (status, head)
}

/// A `[[web.tokens]]` entry for `token`.
fn token_entry(name: &str, role: &str, token: &str) -> String {
    let sha256 = sha256_hex(token);
    format!("\n[[web.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{sha256}\"\n")
}

/// A hub started with `config` as its `hub.toml`.
pub fn hub_with_config(dir: &Path, (http_port, mqtt_port): (u16, u16), config: &str) -> Hub {
    let path = dir.join("hub.toml");
    std::fs::write(&path, config).unwrap();
    Hub::start_with(
        dir,
        http_port,
        mqtt_port,
        &["--config", path.to_str().unwrap()],
    )
}

/// The `[[web.users]]` entry that `outpost hub user` prints, from the password on stdin.
pub fn user_entry(name: &str, role: &str, password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["hub", "user", name, "--role", role, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains(password), "the password is not printed back");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// playwright-core installed once per target directory from `tests/browser`'s lock file.
fn browser_dir() -> PathBuf {
    let source = crate::agent::root().join("tests/browser");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::read(source.join("package-lock.json")).unwrap();
    let fresh = std::fs::read(dir.join("package-lock.json")).ok().as_deref() != Some(&lock[..])
        || !dir.join("node_modules/playwright-core").exists();
    for name in [
        "package.json",
        "package-lock.json",
        "dashboard.mjs",
        "probes.mjs",
    ] {
        std::fs::copy(source.join(name), dir.join(name)).unwrap();
    }
    if fresh {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm runs (Node.js and npm are needed for the browser test)");
        assert!(status.success(), "npm ci in {}", dir.display());
    }
    dir
}

fn agent_config(mqtt: &str) -> String {
    format!(
        "[agent]\nself_interval = \"1s\"\n[host]\ninterval = \"1s\"\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n{mqtt}"
    )
}

fn start_agent(dir: &Path, mqtt: &str) -> Agent {
    let log = tegrastats_log("xavier-nx-jp5-nonroot-103s.log.zst");
    Agent::start(
        dir,
        &agent_config(mqtt),
        &[
            "--tegrastats-replay",
            log.to_str().unwrap(),
            "--replay-speed",
            "1",
        ],
    )
}

fn states(port: u16) -> Vec<(String, String)> {
    let devices = get_json(port, "/api/devices", VIEWER_TOKEN);
    named_fields(&devices, "device", "state")
        .into_iter()
        .map(|(device, state)| (device, state.as_str().unwrap().to_string()))
        .collect()
}

fn samples_of(port: u16, device: &str) -> u64 {
    get_json(port, "/api/devices", VIEWER_TOKEN)
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == device)
        .and_then(|d| d["samples"].as_u64())
        .unwrap_or(0)
}

#[test]
fn the_dashboard_and_its_api_over_a_real_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt: Vec<String> = ["dev-a", "dev-b", "dev-c"]
        .iter()
        .map(|d| enrol(dir.path(), d, mqtt_port))
        .collect();
    let config = format!(
        "[hub]\nstale_after = \"3s\"\n\n[web]\nmax_series = 100\n\n{}{}{}",
        user_entry("ada", "admin", PASSWORD),
        token_entry("ops", "admin", ADMIN_TOKEN),
        token_entry("grafana", "viewer", VIEWER_TOKEN),
    );
    let hub = hub_with_config(dir.path(), (http_port, mqtt_port), &config);

    // dev-a sends, goes away for a while, and comes back: an outage in its history.
    let a_dir = dir.path().join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    // dev-a also has an alert firing, which it publishes on its alert topics.
    std::fs::write(
        a_dir.join("rules.toml"),
        "[[rule]]\nname = \"ram_in_use\"\nselect = \"jetson_ram_used_bytes\"\nreduce = \"last\"\n\
         window = \"5s\"\nthreshold = 1\nseverity = \"warning\"\nsummary = \"RAM in use\"\n",
    )
    .unwrap();
    // And a log whose errors it keeps and ships: the device page lists and searches them.
    let log_lines: String = (0..12)
        .map(|n| {
            format!(
                "level=info n={n}\nlevel=error module={} n={n} timeout\n",
                ["db", "net"][n % 2]
            )
        })
        .collect();
    std::fs::write(a_dir.join("app.log"), log_lines).unwrap();
    let mqtt_a = format!(
        "{}[alerts]\nrules = [\"{}\"]\ninterval = \"1s\"\n\
         [logs]\n[[logs.file]]\nname = \"app\"\npath = \"{}\"\n\
         [[logs.pattern]]\nname = \"errors\"\nregex = 'level=error module=(?P<module>\\w+)'\n",
        mqtt[0],
        a_dir.join("rules.toml").display(),
        a_dir.join("app.log").display()
    );
    let range_start = outpost::timearg::now_ms() - 2_000;
    let agent_a = start_agent(&a_dir, &mqtt_a);
    wait_until("dev-a's data at the hub", Duration::from_secs(30), || {
        (samples_of(http_port, "dev-a") > 500).then_some(())
    });
    std::thread::sleep(Duration::from_secs(6));
    drop(agent_a.stop());
    std::thread::sleep(Duration::from_secs(15));
    let agent_a = start_agent(&a_dir, &mqtt_a);
    // dev-b sends and stops: offline. dev-c connects but sends no batch for an hour: stale.
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    let agent_b = start_agent(&b_dir, &mqtt[1]);
    wait_until("dev-b's data at the hub", Duration::from_secs(30), || {
        (samples_of(http_port, "dev-b") > 100).then_some(())
    });
    drop(agent_b.stop());
    let c_dir = dir.path().join("c");
    std::fs::create_dir_all(&c_dir).unwrap();
    let agent_c = Agent::start(
        &c_dir,
        &agent_config(&mqtt[2].replace("batch_interval = \"200ms\"", "batch_interval = \"1h\"")),
        &[],
    );
    let expected = vec![
        ("dev-a".to_string(), "online".to_string()),
        ("dev-b".to_string(), "offline".to_string()),
        ("dev-c".to_string(), "stale".to_string()),
    ];
    wait_until(
        "online, offline and stale devices",
        Duration::from_secs(40),
        || (states(http_port) == expected).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(6));
    let range_end = outpost::timearg::now_ms();

    // The device's alert, from its MQTT alert topics, is the fleet's.
    let firing = wait_until("dev-a's alert at the hub", Duration::from_secs(20), || {
        let alerts = get_json(http_port, "/api/alerts", VIEWER_TOKEN);
        alerts["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["rule"] == "ram_in_use" && a["state"] == "firing")
            .cloned()
    });
    assert_eq!(firing["device"], "dev-a");
    assert_eq!(firing["source"], "device");
    assert_eq!(firing["severity"], "warning");
    assert_eq!(
        firing["signed"], true,
        "signed by the device, verified by the hub"
    );
    assert!(firing.get("mac").is_none());
    // Its transition, from the events topic, is in the history.
    let alerts = get_json(http_port, "/api/alerts", VIEWER_TOKEN);
    let history = alerts["history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .any(|e| e["device"] == "dev-a" && e["rule"] == "ram_in_use" && e["state"] == "firing"),
        "{history:?}"
    );

    // Who may do what.
    let (status, _, _) = http_with(http_port, "GET", "/api/devices", &[], "");
    assert_eq!(status, 401, "the API needs a login");
    let (status, _, _) = http_with(http_port, "GET", "/api/health", &[], "");
    assert_eq!(status, 200, "health is public");
    let (status, _, _) = http_with(http_port, "GET", "/api/status", &[], "");
    assert_eq!(
        status, 404,
        "no public status page unless [web.status] says so"
    );
    let (status, head, page) = http_with(http_port, "GET", "/", &[], "");
    assert_eq!(status, 200);
    assert!(page.contains("/app.js"));
    let head = head.to_ascii_lowercase();
    for header in [
        "x-content-type-options: nosniff",
        "x-frame-options: deny",
        "content-security-policy: default-src 'self'",
    ] {
        assert!(head.contains(header), "{header} missing: {head}");
    }
    assert!(
        !head.contains("access-control-allow-origin"),
        "no CORS by default"
    );
    let now = outpost::timearg::now_ms();
    let silence = format!(
        r#"{{"device":"dev-a","match":"{{alertname=\"jetson_hot\"}}","ends_ms":{},"comment":"maintenance"}}"#,
        now + 3_600_000
    );
    let json = ("Content-Type", "application/json");
    let viewer = format!("Bearer {VIEWER_TOKEN}");
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let post_silence = |headers: &[(&str, &str)]| {
        let (status, _, body) = http_with(http_port, "POST", "/api/silences", headers, &silence);
        (status, body)
    };
    let (status, body) = post_silence(&[("Authorization", &viewer), json]);
    assert_eq!(status, 403, "a viewer cannot silence: {body}");
    let (status, _) = post_silence(&[("Authorization", &admin), ("Content-Type", "text/plain")]);
    assert_eq!(status, 400, "a change must come as JSON");
    let evil = ("Origin", "http://evil.example");
    let (status, _) = post_silence(&[("Authorization", &admin), json, evil]);
    assert_eq!(status, 403, "no changes from another origin");
    // A silence from the API reaches the device over MQTT as a signed command.
    let (status, body) = post_silence(&[("Authorization", &admin), json]);
    assert_eq!(status, 201, "{body}");
    let sent: Value = serde_json::from_str(&body).unwrap();
    let silence_id = sent["silence_id"].as_str().unwrap().to_string();
    wait_until("the silence on dev-a", Duration::from_secs(20), || {
        let (_, body) = crate::agent::http(agent_a.port, "GET", "/api/silences", "");
        body.contains(&silence_id).then_some(())
    });
    fleet_silences(http_port, agent_a.port, (&b_dir, &mqtt[1]));

    // The API's answers and bounds.
    let range = |query: &str| -> (u16, String) {
        let (status, _, body) = get_as(
            http_port,
            &format!("/api/range?{}", url_safe(query)),
            &viewer,
        );
        (status, body)
    };
    let window = format!("start={range_start}&end={range_end}");
    let (status, body) = range(&format!(
        "device=dev-a&match=jetson_ram_used_bytes&{window}&max_points=2000"
    ));
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let points = answer["series"][0]["points"].as_array().unwrap().clone();
    assert!(points.len() >= 10, "{body}");
    assert_eq!(answer["tier"], "raw");
    let nulls = points.iter().filter(|p| p[1].is_null()).count();
    assert_eq!(nulls, 1, "one gap where dev-a was away: {body}");
    assert!(
        points
            .iter()
            .all(|p| p[0].as_i64().unwrap() >= range_start - 1_000
                && p[0].as_i64().unwrap() <= range_end),
        "only the asked window"
    );
    // The whole window in at most 10 points: a coarser step, still the same device only.
    let (_, body) = range(&format!(
        "device=dev-a&match=jetson_ram_used_bytes&{window}&max_points=10"
    ));
    let coarse: Value = serde_json::from_str(&body).unwrap();
    assert!(coarse["series"][0]["points"].as_array().unwrap().len() <= 11);
    assert!(coarse["step_ms"].as_i64().unwrap() >= (range_end - range_start) / 10);
    for (query, expect) in [
        (
            format!("device=dev-a&match=jetson_ram_used_bytes&{window}&max_points=999999"),
            "web.max_points",
        ),
        (
            format!("device=dev-a&match=jetson_ram_used_bytes&start=0&end={range_end}&step=1s"),
            "web.max_points",
        ),
        (format!("device=dev-a&match=jetson_ram{{&{window}"), "match"),
        (
            format!("match={{__name__=~\".+\"}}&{window}"),
            "web.max_series",
        ),
        (
            format!("device=dev-a&match=jetson_ram_used_bytes&{window}&fn=median"),
            "fn",
        ),
        (window.clone(), "give match"),
    ] {
        let (status, body) = range(&query);
        let body: String = body.chars().take(500).collect();
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(expect), "{query}: {body}");
    }
    let (status, head, csv) = get_as(http_port, &format!("/api/export?format=csv&device=dev-a&match=jetson_ram_used_bytes&{window}&max_points=2000"), &viewer);
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("text/csv"));
    assert_eq!(csv.lines().next(), Some("time,timestamp_ms,series,value"));
    assert_eq!(csv.lines().count(), points.len() + 1, "one row per point");
    let series = get_json(http_port, "/api/series?device=dev-b", VIEWER_TOKEN);
    let names: Vec<&str> = series["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["series"].as_str().unwrap())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("jetson_ram_used_bytes")));
    assert!(names.iter().all(|n| n.contains("instance=\"dev-b\"")));
    let device = get_json(http_port, "/api/devices/dev-a", VIEWER_TOKEN);
    assert!(device["summary"]["ram"]["current"].as_f64().unwrap() > 0.0);
    assert_eq!(
        device["summary"]["ram"]["sparkline"]
            .as_array()
            .unwrap()
            .len(),
        60
    );
    let (status, _, _) = get_as(http_port, "/api/devices/nobody", &viewer);
    assert_eq!(status, 404);
    let (_, _, metrics) = get_as(http_port, "/metrics", &viewer);
    assert!(metrics.contains("outpost_hub_device_online{instance=\"dev-c\"} 1"));
    assert!(metrics.contains("outpost_hub_device_online{instance=\"dev-b\"} 0"));

    // A consistent copy of the running hub's store, for admins only.
    let (status, _) = http_bytes(http_port, "/api/backup", &[("Authorization", &viewer)]);
    assert_eq!(status, 403, "a viewer cannot take the whole store");
    let (status, copy) = http_bytes(http_port, "/api/backup", &[("Authorization", &admin)]);
    assert_eq!(status, 200);
    let copy_path = dir.path().join("backup.redb");
    std::fs::write(&copy_path, &copy).unwrap();
    let backup = outpost_storage::Store::open(&copy_path, outpost_storage::Options::default())
        .expect("the backup opens as a store");
    let selector =
        outpost_storage::Selector::parse(r#"jetson_ram_used_bytes{instance="dev-a"}"#).unwrap();
    let held = backup.query_raw(&selector, range_start, range_end).unwrap()[0]
        .points
        .len();
    assert!(
        held + 1 >= points.len() - nulls,
        "the backup holds dev-a's data: {held}"
    );
    backup.close().unwrap();

    // The pages, in a real browser.
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let browser = browser_dir();
    let output = Command::new("node")
        .arg(browser.join("dashboard.mjs"))
        .current_dir(&browser)
        .env("HUB_URL", format!("http://127.0.0.1:{http_port}"))
        .env("HUB_USER", "ada")
        .env("HUB_PASSWORD", PASSWORD)
        .env(
            "EXPECT_STATES",
            serde_json::to_string(
                &expected
                    .iter()
                    .cloned()
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
            .unwrap(),
        )
        .env("DEVICE", "dev-a")
        .env("RANGE_START", range_start.to_string())
        .env("RANGE_END", range_end.to_string())
        .env("SCREENSHOTS", &screenshots)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\nscreenshots in {}", screenshots.display());
    assert!(
        output.status.success(),
        "browser test failed:\n{stdout}\n{stderr}\nhub log:\n{}",
        hub.log_text()
    );
    for shot in [
        "login.png",
        "fleet.png",
        "device.png",
        "zoomed.png",
        "alerts.png",
    ] {
        assert!(screenshots.join(shot).exists(), "{shot} kept");
    }
    drop(agent_c.stop());
    drop(agent_a.stop());
    hub.stop();
}

/// The ids of the silences an agent holds now.
pub fn agent_silences(port: u16) -> Vec<String> {
    let (_, body) = crate::agent::http(port, "GET", "/api/silences", "");
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["silences"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A fleet-wide silence: every enrolled device gets it (one offline when it was made, once it
/// is back), the hub lists it with who made it and the alert it holds back, and ending it ends
/// it on the devices.
fn fleet_silences(http_port: u16, agent_a: u16, (b_dir, mqtt_b): (&Path, &str)) {
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let json = ("Content-Type", "application/json");
    let request = |method: &str, path: &str, body: &str| -> (u16, Value) {
        let (status, _, text) = http_with(
            http_port,
            method,
            path,
            &[("Authorization", &admin), json],
            body,
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    };
    let ends = outpost::timearg::now_ms() + 3_600_000;
    let (status, made) = request(
        "POST",
        "/api/silences",
        &format!(
            r#"{{"device":"*","match":"{{alertname=\"ram_in_use\"}}","ends_ms":{ends},"comment":"site visit"}}"#
        ),
    );
    assert_eq!(status, 201, "{made}");
    let id = made["id"].as_str().unwrap().to_string();
    let sent: Vec<&String> = made["sent"].as_object().unwrap().keys().collect();
    assert_eq!(
        sent,
        ["dev-a", "dev-b", "dev-c"],
        "every enrolled device: {made}"
    );
    assert_eq!(
        (&made["created_by"], &made["state"]),
        (&"ops".into(), &"active".into())
    );
    wait_until(
        "the fleet silence on dev-a",
        Duration::from_secs(20),
        || agent_silences(agent_a).contains(&id).then_some(()),
    );
    // The hub lists it, with the alert it now holds back (dev-a says so on its alert topic).
    let listed = wait_until(
        "the silenced alert in the list",
        Duration::from_secs(20),
        || {
            let list = get_json(http_port, "/api/silences", VIEWER_TOKEN);
            let found = list["silences"]
                .as_array()?
                .iter()
                .find(|s| s["id"] == id.as_str())?
                .clone();
            (found["silencing"].as_array()?.len() == 1).then_some(found)
        },
    );
    assert_eq!(listed["silencing"][0]["device"], "dev-a", "{listed}");
    assert_eq!(listed["comment"], "site visit");
    // dev-b was offline: it gets the silence when it comes back.
    let agent_b = start_agent(b_dir, mqtt_b);
    wait_until(
        "the fleet silence on dev-b, back online",
        Duration::from_secs(30),
        || agent_silences(agent_b.port).contains(&id).then_some(()),
    );
    // Ended early: every device drops it, and the hub keeps the record, marked.
    let (status, ended) = request("POST", &format!("/api/silences/{id}/expire"), "");
    assert_eq!(status, 200, "{ended}");
    assert_eq!(
        (&ended["state"], &ended["expired_by"]),
        (&"expired".into(), &"ops".into())
    );
    for port in [agent_a, agent_b.port] {
        wait_until(
            "the silence gone from the device",
            Duration::from_secs(20),
            || (!agent_silences(port).contains(&id)).then_some(()),
        );
    }
    let (status, _) = request("DELETE", &format!("/api/silences/{id}"), "");
    assert_eq!(status, 200);
    let list = get_json(http_port, "/api/silences", VIEWER_TOKEN);
    assert!(!list.to_string().contains(&format!("\"{id}\"")), "{list}");
    let (status, _) = request("DELETE", &format!("/api/silences/{id}"), "");
    assert_eq!(status, 404);
    let (status, refused) = request(
        "POST",
        "/api/silences",
        &format!(r#"{{"device":"nobody","match":"{{alertname=\"x\"}}","ends_ms":{ends}}}"#),
    );
    assert_eq!(status, 400, "{refused}");
    drop(agent_b.stop());
    wait_until("dev-b offline again", Duration::from_secs(30), || {
        let (_, _, metrics) = get_as(http_port, "/metrics", &admin);
        metrics
            .contains("outpost_hub_device_online{instance=\"dev-b\"} 0")
            .then_some(())
    });
}

#[test]
fn a_hub_on_a_public_address_needs_users_or_tokens() {
    let stderr = fail(&mut outpost(&[
        "hub",
        "--listen",
        "0.0.0.0:9820",
        "--check-config",
    ]));
    assert!(stderr.contains("allow_unauthenticated"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, "[web]\nallow_unauthenticated = true\n").unwrap();
    succeed(
        Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args([
                "hub",
                "--listen",
                "0.0.0.0:9820",
                "--check-config",
                "--config",
            ])
            .arg(&config),
    );
    std::fs::write(
        &config,
        "[[web.users]]\nname = \"ada\"\nrole = \"admin\"\npassword_hash = \"hunter2\"\n",
    )
    .unwrap();
    let stderr = fail(outpost(&["hub", "--check-config", "--config"]).arg(&config));
    assert!(stderr.contains("web.users[0].password_hash"), "{stderr}");
}

#[test]
fn the_demo_runs_a_hub_and_an_agent_and_cleans_up() {
    let (http_port, mqtt_port, agent_port) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["demo", "--duration", "40", "--replay-speed", "10"])
        .args(["--listen", &format!("127.0.0.1:{http_port}")])
        .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
        .args(["--agent-listen", &format!("127.0.0.1:{agent_port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // The banner comes once both are up.
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buffer = [0u8; 4096];
    while !banner.contains("Ctrl-C") && Instant::now() < deadline {
        let n = stdout.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        banner.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    assert!(
        banner.contains(&format!("http://127.0.0.1:{http_port}/")),
        "{banner}"
    );
    let password = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("login      admin / "))
        .expect("a login is printed")
        .to_string();
    let data_dir = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("data       "))
        .and_then(|l| l.strip_suffix(" (removed at exit)"))
        .map(PathBuf::from)
        .expect("the data directory is printed");
    assert!(data_dir.exists());
    let (status, head) = log_in(http_port, "admin", &password);
    assert_eq!(status, 200);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let device = wait_until(
        "the demo device with host and Jetson data",
        Duration::from_secs(30),
        || {
            let (status, _, body) =
                http_with(http_port, "GET", "/api/devices", &[("Cookie", &cookie)], "");
            assert_eq!(status, 200, "{body}");
            let devices: Value = serde_json::from_str(&body).unwrap();
            let device = devices.as_array()?.first()?.clone();
            (device["state"] == "online"
                && device["summary"]["power"]["current"].is_number()
                && device["summary"]["cpu"]["current"].is_number())
            .then_some(device)
        },
    );
    assert_eq!(device["device"], "demo-jetson");
    let status = wait_until(
        "the demo to stop by itself",
        Duration::from_secs(60),
        || child.try_wait().unwrap(),
    );
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    assert!(!data_dir.exists(), "the temporary data is removed");
    assert!(
        TcpStream::connect(("127.0.0.1", http_port)).is_err(),
        "the hub is gone"
    );
}

/// Logins against a real hub: the token scheme in any case; an unknown name costs the same
/// argon2 work as a known one (so names cannot be probed by timing); and after five failures
/// from one address, attempts from it are refused with 429 and Retry-After, even with the right
/// password, without checking it.
#[test]
fn logins_are_throttled_and_do_not_tell_names_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let config = user_entry("ada", "admin", PASSWORD) + &token_entry("ops", "admin", ADMIN_TOKEN);
    let hub = hub_with_config(dir.path(), (http_port, mqtt_port), &config);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {ADMIN_TOKEN}");
        let (status, _, body) = get_as(http_port, "/api/devices", &auth);
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    let login = |name: &str, password: &str| {
        let started = Instant::now();
        let (status, head) = log_in(http_port, name, password);
        (status, head, started.elapsed())
    };
    // Two tries each, within the five free failures.
    let unknown: Vec<Duration> = (0..2).map(|_| login("nobody", "guess").2).collect();
    let known: Vec<Duration> = (0..2).map(|_| login("ada", "guess").2).collect();
    let (unknown, known) = (unknown.iter().min().unwrap(), known.iter().min().unwrap());
    assert!(
        *unknown * 4 >= *known,
        "an unknown name answered in {unknown:?}, a known one in {known:?}"
    );
    let (status, _, _) = login("ada", "guess");
    assert_eq!(status, 401, "the fifth failure is still answered");
    let (status, head, took) = login("ada", PASSWORD);
    assert_eq!(status, 429, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    assert!(took < *known, "refused without an argon2 check: {took:?}");
    hub.stop();
}

/// `[web.status]` on: anyone, without a login, sees dev-p's state and its probe's availability,
/// and nothing else; the rest of the API still needs a login.
fn public_status(http_port: u16) {
    let (status, _, body) = http_with(http_port, "GET", "/api/status", &[], "");
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["title"], "Gate");
    assert_eq!(answer["devices"][0]["device"], "dev-p");
    assert!(answer["devices"][0]["state"].is_string(), "{answer}");
    let probe = &answer["probes"][0];
    assert_eq!(
        (&probe["device"], &probe["probe"]),
        (&serde_json::json!("dev-p"), &serde_json::json!("svc"))
    );
    let day = probe["availability_24h"].as_f64().unwrap();
    assert!(day > 0.0 && day < 100.0, "the outage counts: {answer}");
    assert_eq!(probe["up"], true, "the service is back: {answer}");
    for private in ["note", "labels", "meta", "last_rejection", "resolved by"] {
        assert!(!body.contains(private), "{private} is not public: {body}");
    }
    let (status, _, _) = http_with(http_port, "GET", "/api/devices", &[], "");
    assert_eq!(status, 401, "the rest still needs a login");
    let (status, _, page) = http_with(http_port, "GET", "/status", &[], "");
    assert_eq!(status, 200);
    assert!(page.contains("/app.js"));
}

/// The availability page shows dev-p's probe `svc`, its outage noted, as the API gives it, at
/// desktop and phone width.
fn probes_page_in_a_browser(http_port: u16) {
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let browser = browser_dir();
    let output = Command::new("node")
        .arg(browser.join("probes.mjs"))
        .current_dir(&browser)
        .env("HUB_URL", format!("http://127.0.0.1:{http_port}"))
        .env("TOKEN", VIEWER_TOKEN)
        .env("PROBE", "dev-p/svc")
        .env("NOTE", "resolved by restarting the service")
        .env("SCREENSHOTS", &screenshots)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the availability page:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A TCP probe whose service goes away and comes back: the hub lists the outage (ongoing, then
/// ended) with its severity and duration, the probe's availability over the range, and an
/// operator's note on it; a viewer cannot write one.
#[test]
fn probe_outages_availability_and_notes() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt = enrol(dir.path(), "dev-p", mqtt_port);
    let config = format!(
        "{}{}\n[web.status]\nenabled = true\ntitle = \"Gate\"\ndevices = [\"dev-p\"]\nprobes = [\"dev-p/svc\"]\n",
        token_entry("ops", "admin", ADMIN_TOKEN),
        token_entry("grafana", "viewer", VIEWER_TOKEN)
    );
    let _hub = hub_with_config(dir.path(), (http_port, mqtt_port), &config);
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    let agent_dir = dir.path().join("p");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let probe = format!(
        "[[probe]]\nname = \"svc\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{port}\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfailures_before_down = 2\n"
    );
    let _agent = Agent::start(&agent_dir, &format!("{}{probe}", agent_config(&mqtt)), &[]);
    let since = outpost::timearg::now_ms() - 60_000;
    let report = || -> Value {
        let all = get_json(
            http_port,
            &format!("/api/probes/outages?device=dev-p&start={since}&end=now"),
            VIEWER_TOKEN,
        );
        all["probes"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["probe"] == "svc").cloned())
            .unwrap_or(Value::Null)
    };
    wait_until("the probe up at the hub", Duration::from_secs(30), || {
        (report()["availability"] == 100.0).then_some(())
    });
    drop(service);
    let ongoing = wait_until("an ongoing outage", Duration::from_secs(30), || {
        let r = report();
        let outage = r["outages"]
            .as_array()?
            .iter()
            .find(|o| o["severity"] == "critical")?
            .clone();
        outage["end_ms"].is_null().then_some(outage)
    });
    let start_ms = ongoing["start_ms"].as_i64().unwrap();
    let _back = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let ended = wait_until("the outage over", Duration::from_secs(60), || {
        let r = report();
        let outage = r["outages"]
            .as_array()?
            .iter()
            .find(|o| o["start_ms"] == start_ms)?
            .clone();
        outage["end_ms"].as_i64().map(|_| (r, outage))
    });
    let (probe_report, outage) = ended;
    assert_eq!(probe_report["kind"], "tcp");
    let availability = probe_report["availability"].as_f64().unwrap();
    assert!(availability > 0.0 && availability < 100.0, "{probe_report}");
    assert!(
        outage["duration_seconds"].as_f64().unwrap() > 0.0,
        "{outage}"
    );
    // An operator's note, kept and shown with the outage.
    let note = format!(
        r#"{{"device":"dev-p","probe":"svc","start_ms":{start_ms},"note":"resolved by restarting the service"}}"#
    );
    let json = ("Content-Type", "application/json");
    let viewer = format!("Bearer {VIEWER_TOKEN}");
    let (status, _, _) = http_with(
        http_port,
        "POST",
        "/api/probes/outages/note",
        &[("Authorization", &viewer), json],
        &note,
    );
    assert_eq!(status, 403, "a viewer cannot annotate");
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let (status, _, body) = http_with(
        http_port,
        "POST",
        "/api/probes/outages/note",
        &[("Authorization", &admin), json],
        &note,
    );
    assert_eq!(status, 200, "{body}");
    let noted = report();
    let outage = noted["outages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["start_ms"] == start_ms)
        .unwrap()
        .clone();
    assert_eq!(
        outage["note"]["note"], "resolved by restarting the service",
        "{outage}"
    );
    assert_eq!(outage["note"]["by"], "ops");
    public_status(http_port);
    probes_page_in_a_browser(http_port);
    // Hostile input: the widest range there is, a reversed one, a huge probe name.
    let widest = get_json(
        http_port,
        &format!("/api/probes/outages?start={}&end={}", i64::MIN, i64::MAX),
        VIEWER_TOKEN,
    );
    assert!(widest["probes"].is_array(), "{widest}");
    let (status, _, _) = get_as(
        http_port,
        "/api/probes/outages?start=now&end=now-1h",
        &viewer,
    );
    assert_eq!(status, 400);
    let huge = format!(
        r#"{{"device":"dev-p","probe":"{}","start_ms":1,"note":"x"}}"#,
        "p".repeat(100_000)
    );
    let headers = [("Authorization", admin.as_str()), json];
    let (status, _, _) = http_with(
        http_port,
        "POST",
        "/api/probes/outages/note",
        &headers,
        &huge,
    );
    assert_eq!(status, 400, "a probe name is not a document");
}

/// The dashboard the binary embeds (`web/dist/`, kept in the repository so that building needs
/// neither Node.js nor the network) is exactly what its sources build to.
#[test]
fn the_committed_dashboard_bundle_is_what_its_sources_build_to() {
    let frontend = crate::agent::root().join("web/frontend");
    let tools = Path::new(env!("CARGO_TARGET_TMPDIR")).join("frontend-bundle");
    std::fs::create_dir_all(&tools).unwrap();
    let lock = std::fs::read(frontend.join("package-lock.json")).unwrap();
    let fresh = std::fs::read(tools.join("package-lock.json"))
        .ok()
        .as_deref()
        != Some(&lock[..])
        || !tools.join("node_modules/esbuild").exists();
    for name in ["package.json", "package-lock.json", "build.mjs"] {
        std::fs::copy(frontend.join(name), tools.join(name)).unwrap();
    }
    if fresh {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&tools)
            .status()
            .expect("npm runs (Node.js and npm are needed to check the bundle)");
        assert!(status.success(), "npm ci in {}", tools.display());
    }
    let out = tempfile::tempdir().unwrap();
    let status = Command::new("node")
        .arg(tools.join("build.mjs"))
        .arg(&frontend)
        .arg(out.path())
        .status()
        .expect("node runs");
    assert!(status.success(), "bundling the front-end");
    let committed = crate::agent::root().join("web/dist");
    for name in ["app.js", "app.css", "index.html"] {
        let built = std::fs::read(out.path().join(name)).unwrap();
        let kept = std::fs::read(committed.join(name)).unwrap_or_default();
        assert!(
            built == kept,
            "web/dist/{name} is not what web/frontend builds to: run `npm ci && npm run bundle` \
             in web/frontend and commit web/dist"
        );
    }
}
