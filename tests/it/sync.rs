//! Agent and hub as real processes over the hub's embedded MQTT broker: an outage, a paused hub
//! (acks lost, batches resent and discarded as duplicates), a hub killed with SIGKILL in the
//! middle of ingest; at the end the hub holds exactly what the agent holds.

use outpost_sync::HubToDevice;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::agent::{
    db_query, free_port, http, metric_value, root, succeed, tegrastats_log, wait_for_port,
    wait_until, Agent,
};

pub struct Hub {
    pub child: Child,
    pub http_port: u16,
    dir: PathBuf,
}

impl Hub {
    pub fn start(dir: &Path, http_port: u16, mqtt_port: u16) -> Hub {
        Hub::start_with(dir, http_port, mqtt_port, &[])
    }

    pub fn start_with(dir: &Path, http_port: u16, mqtt_port: u16, args: &[&str]) -> Hub {
        Hub::start_with_env(dir, http_port, mqtt_port, args, &[])
    }

    pub fn start_with_env(
        dir: &Path,
        http_port: u16,
        mqtt_port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Hub {
        let ports = (http_port, mqtt_port);
        Hub::start_wrapped(dir, ports, args, env, &dir.join("hub.redb"), &[])
    }

    /// A hub started through `wrapper` (a command that execs its arguments), with its store at
    /// `store`.
    pub fn start_wrapped(
        dir: &Path,
        (http_port, mqtt_port): (u16, u16),
        args: &[&str],
        env: &[(&str, &str)],
        store: &Path,
        wrapper: &[&str],
    ) -> Hub {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("hub.log"))
            .unwrap();
        let child = crate::agent::outpost_through(wrapper)
            .args(["--log", "info", "hub", "--devices-file"])
            .arg(dir.join("devices.toml"))
            .arg("--store")
            .arg(store)
            .args(["--listen", &format!("127.0.0.1:{http_port}")])
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("outpost hub starts");
        let mut hub = Hub {
            child,
            http_port,
            dir: dir.to_path_buf(),
        };
        let log = hub.dir.join("hub.log");
        wait_for_port("hub", &mut hub.child, http_port, || {
            std::fs::read_to_string(&log).unwrap_or_default()
        });
        hub
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("hub.log")).unwrap_or_default()
    }

    pub fn devices(&self) -> Value {
        let (status, body) = http(self.http_port, "GET", "/api/devices", "");
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }

    pub fn signal(&self, signal: &str) {
        crate::agent::send_signal(&self.child, signal);
    }

    pub fn stop(mut self) {
        self.signal("TERM");
        let status = wait_until("the hub to exit", Duration::from_secs(30), || {
            self.child.try_wait().unwrap()
        });
        assert!(
            status.success(),
            "hub exited with {status}: {}",
            self.log_text()
        );
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `outpost hub` on the devices file in `dir`, with `args` (`device add ...`, `reader add ...`).
pub fn devices_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
    command
        .args(["hub", "--devices-file"])
        .arg(dir.join("devices.toml"))
        .args(args);
    command
}

/// Enrols a device with the real command; returns the [mqtt] section for its agent.
pub fn enrol(dir: &Path, device: &str, mqtt_port: u16) -> String {
    succeed(devices_command(dir, &["device", "add", device, "--out"]).arg(dir));
    format!(
        "[mqtt]\nenabled = true\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\ndevice = \"{device}\"\n\
         key_file = \"{key}\"\npassword_file = \"{password}\"\nbatch_interval = \"200ms\"\nack_timeout = \"1s\"\n",
        key = dir.join(format!("{device}.key")).display(),
        password = dir.join(format!("{device}.password")).display(),
    )
}

/// Every series of `selector` in the agent's store, raw and in both rollup tiers, equals the
/// hub's series with `instance` set to the device.
pub fn assert_hub_holds_the_agents(dir: &Path, device: &str, selector: &str) -> usize {
    let (agent, hub) = (dir.join("agent.redb"), dir.join("hub.redb"));
    let mut points = 0;
    for extra in [
        &[][..],
        &["--step", "1m", "--fn", "sum"],
        &["--step", "1m", "--fn", "count"],
        &["--step", "1m", "--fn", "min"],
        &["--step", "1h", "--fn", "max"],
        &["--step", "1h", "--fn", "last"],
    ] {
        let theirs = db_query(&agent, selector, extra);
        let ours = db_query(&hub, selector, extra);
        assert!(!theirs.is_empty());
        assert_eq!(ours.len(), theirs.len(), "series count {extra:?}");
        for ((agent_key, agent_points), (hub_key, hub_points)) in theirs.iter().zip(&ours) {
            let expected_key = if agent_key.ends_with('}') {
                format!(
                    "{},instance=\"{device}\"}}",
                    &agent_key[..agent_key.len() - 1]
                )
            } else {
                format!("{agent_key}{{instance=\"{device}\"}}")
            };
            // Labels sort, and `instance` may not be last: compare the parsed label sets.
            let normalise = |k: &str| {
                let mut parts: Vec<String> = k
                    .replace(['{', '}'], ",")
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect();
                parts.sort();
                parts
            };
            assert_eq!(normalise(hub_key), normalise(&expected_key));
            assert_eq!(hub_points, agent_points, "{agent_key} {extra:?}");
            points += agent_points.len();
        }
    }
    points
}

/// With `OUTPOST_OUTAGE_SECONDS=600` this is the ten-minute outage of the sync bench
/// (benches/README.md): the hub stays away that long while the agent replays the 44-minute TX2
/// log, sped up to end within the outage.
#[test]
fn an_outage_a_paused_hub_and_a_killed_hub_lose_and_duplicate_nothing() {
    let outage = std::env::var("OUTPOST_OUTAGE_SECONDS").map_or(Ok(0), |s| s.parse::<u64>());
    let outage = outage.expect("OUTPOST_OUTAGE_SECONDS: a number of seconds");
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt = enrol(dir.path(), "dev-1", mqtt_port);
    // Seals every two seconds with a small carry limit, so that the outage becomes backlog.
    let store = format!(
        "[store]\nflush_interval = \"100ms\"\nsync_interval = \"200ms\"\nseal_interval = \"2s\"\nmax_head_samples = 400\n{mqtt}"
    );
    // The broker is down: the agent collects into its store.
    let agent = if outage > 0 {
        let speed = 2660 / outage as u32 + 2;
        replaying_agent(dir.path(), &store, "tx2-jetpack4-2660s.log.zst", speed)
    } else {
        replaying_agent(dir.path(), &store, XAVIER, 8)
    };
    wait_until(
        "a seal to turn the outage into backlog",
        Duration::from_secs(20),
        || metric_value(&agent.metrics(), "outpost_sync_backlog_chunks").filter(|n| *n > 0.0),
    );
    std::thread::sleep(Duration::from_secs(outage));
    assert_eq!(
        metric_value(&agent.metrics(), "outpost_sync_connected"),
        Some(0.0)
    );
    let hub = Hub::start(dir.path(), http_port, mqtt_port);
    wait_until(
        "the device online at the hub",
        Duration::from_secs(30),
        || (hub.devices()[0]["batches"].as_u64()? > 0).then_some(()),
    );
    // Paused past the agent's ack timeout: the agent resends, and the hub later sees each
    // batch twice.
    hub.signal("STOP");
    std::thread::sleep(Duration::from_secs(3));
    hub.signal("CONT");
    wait_until("duplicates discarded", Duration::from_secs(30), || {
        (hub.devices()[0]["duplicate_batches"].as_u64()? > 0).then_some(())
    });
    // Killed in the middle of ingest, then back.
    let mut hub = hub;
    hub.signal("KILL");
    let _ = hub.child.wait();
    drop(hub);
    std::thread::sleep(Duration::from_millis(1500));
    let hub = Hub::start(dir.path(), http_port, mqtt_port);
    wait_until_shipped(&agent);
    let metrics = agent.metrics();
    assert!(metric_value(&metrics, "outpost_sync_batches_resent_total").unwrap() > 0.0);
    assert!(metric_value(&metrics, "outpost_sync_connects_total").unwrap() >= 2.0);
    let devices = hub.devices();
    assert_eq!(devices[0]["device"], "dev-1");
    assert_eq!(devices[0]["state"], "online");
    assert_eq!(devices[0]["rejected"], 0);
    agent.stop();
    wait_until(
        "the device offline (its status)",
        Duration::from_secs(10),
        || (hub.devices()[0]["state"] == "offline").then_some(()),
    );
    hub.stop();
    let points = assert_hub_holds_the_agents(dir.path(), "dev-1", r#"{__name__=~"jetson_.*"}"#);
    assert!(points > 3000, "{points} points compared");
}

/// The Xavier NX log: 103 lines, a second apart.
pub const XAVIER: &str = "xavier-nx-jp5-nonroot-103s.log.zst";

/// An agent with only tegrastats (a replay of `log` at `speed`) and self-metrics every second,
/// plus `extra` config (its [mqtt] section).
pub fn replaying_agent(dir: &Path, extra: &str, log: &str, speed: u32) -> Agent {
    let config = format!(
        "[agent]\nself_interval = \"1s\"\n[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n{extra}"
    );
    let log = tegrastats_log(log);
    let speed = speed.to_string();
    Agent::start(
        dir,
        &config,
        &[
            "--tegrastats-replay",
            log.to_str().unwrap(),
            "--replay-speed",
            &speed,
        ],
    )
}

/// Waits until the replay has ended and the hub has confirmed every sample the agent took
/// until then and a little after, so that the last tegrastats samples are at the hub.
///
/// Not "nothing in flight": the agent's own figures come every second, so with acks that
/// take a while there is nearly always a batch in flight, and a wait for none timed out now
/// and then. The agent's lag (from its last self-metrics round to its oldest unconfirmed
/// sample) tells instead: once it is shorter than the time since the replay ended, by more
/// than a round's age can be, everything of the replay is confirmed.
pub fn wait_until_shipped(agent: &Agent) {
    const MARGIN_SECONDS: f64 = 5.0;
    wait_until("the replay to end", Duration::from_secs(60), || {
        agent
            .log_text()
            .contains("tegrastats replay finished")
            .then_some(())
    });
    let ended = std::time::Instant::now();
    // Not `wait_until`: a timeout says where the agent's feed stood and what its log said.
    let deadline = ended + Duration::from_secs(90);
    loop {
        let metrics = agent.metrics();
        let lag = metric_value(&metrics, "outpost_sync_lag_seconds");
        if metric_value(&metrics, "outpost_sync_backlog_chunks") == Some(0.0)
            && metric_value(&metrics, "outpost_sync_connected") == Some(1.0)
            && lag.is_some_and(|lag| lag + MARGIN_SECONDS < ended.elapsed().as_secs_f64())
        {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let sync: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("outpost_sync"))
                .collect();
            let log = agent.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "timed out waiting for the agent to have nothing left to ship:\n{}\nits log, newest first:\n{}",
                sync.join("\n"),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn device_record<'a>(devices: &'a Value, device: &str) -> Option<&'a Value> {
    devices.as_array()?.iter().find(|d| d["device"] == device)
}

/// `mosquitto_pub` with a file as the payload: an MQTT client that is not Outpost's, with the
/// client id that the login owns (the embedded broker refuses any other).
pub fn publish(
    port: u16,
    user: &str,
    password: &str,
    topic: &str,
    payload: &[u8],
    dir: &Path,
) -> bool {
    let client_id = format!("outpost-default-{user}");
    publish_as(port, (user, password, &client_id), topic, payload, dir)
}

/// The same with a client id of the caller's choosing.
pub fn publish_as(
    port: u16,
    (user, password, client_id): (&str, &str, &str),
    topic: &str,
    payload: &[u8],
    dir: &Path,
) -> bool {
    let file = dir.join("payload.bin");
    std::fs::write(&file, payload).unwrap();
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            user,
            "-P",
            password,
            "-i",
            client_id,
            "-q",
            "1",
        ])
        .args(["-t", topic, "-f"])
        .arg(&file)
        .status()
        .expect("mosquitto_pub (Debian's mosquitto-clients) runs")
        .success()
}

fn password(dir: &Path, device: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{device}.password")))
        .unwrap()
        .trim()
        .to_string()
}

pub fn key(dir: &Path, device: &str) -> outpost_sync::DeviceKey {
    outpost_sync::DeviceKey::from_hex(
        &std::fs::read_to_string(dir.join(format!("{device}.key"))).unwrap(),
    )
    .unwrap()
}

/// A batch of one made-up sample, signed with `key`, claiming to come from `device`.
fn forged_batch(device: &str, key: &outpost_sync::DeviceKey) -> Vec<u8> {
    let header = outpost_sync::BatchHeader {
        device: device.into(),
        epoch: 1,
        seq: 1,
        boot_id: "forged".into(),
        sent_wall_ms: 0,
        sent_uptime_ms: 0,
        oldest_unacked_ms: None,
        body_bytes: 0,
        clock_steps: Vec::new(),
    };
    one_sample_batch(header, key, "forged_metric", (1_000, 666.0))
}

/// A signed batch of one sample `(at, value)` of `metric`, which it defines.
fn one_sample_batch(
    header: outpost_sync::BatchHeader,
    key: &outpost_sync::DeviceKey,
    metric: &str,
    (at, value): (i64, f64),
) -> Vec<u8> {
    outpost_sync::Batch {
        header,
        body: outpost_sync::BatchBody {
            defs: [outpost_sync::SeriesDef { id: 0, key: metric }]
                .into_iter()
                .collect(),
            live: [outpost_sync::LiveSamples {
                series: 0,
                samples: &outpost_storage::codec::encode_samples(&[at], &[value]),
            }]
            .into_iter()
            .collect(),
            chunks: vec![],
            lines: vec![],
        },
        version: outpost_sync::PROTOCOL_VERSION,
    }
    .encode(key, 3)
}

/// What an attacker's login and key try on a victim's topics: a batch, garbage, the victim's
/// own batch with a changed byte, a command, a forged retained alert, an empty retained message
/// (which would clear the victim's alert), a forged event, a status.
fn attacks_on(
    victim: &str,
    attacker_key: &outpost_sync::DeviceKey,
    victim_key: &outpost_sync::DeviceKey,
) -> Vec<(String, Vec<u8>)> {
    let (a_key, b_key) = (attacker_key, victim_key);
    let b_topic = format!("outpost/v1/default/{victim}");
    let mut tampered = forged_batch(victim, b_key);
    tampered[20] ^= 1;
    let command = outpost_sync::Command {
        device: victim.into(),
        id: 1,
        issued_ms: 0,
        expires_ms: i64::MAX,
        action: outpost_sync::Action::Expire {
            silence_id: "x".into(),
        },
    };
    let forged_alert = br#"{"alertname":"disk_full","state":"firing","summary":"FORGED"}"#;
    vec![
        (format!("{b_topic}/batch"), forged_batch(victim, a_key)),
        (format!("{b_topic}/batch"), b"\x00garbage".to_vec()),
        (format!("{b_topic}/batch"), tampered),
        (format!("{b_topic}/cmd"), command.encode(a_key)),
        (
            format!("{b_topic}/alerts/disk_full/_"),
            forged_alert.to_vec(),
        ),
        (format!("{b_topic}/alerts/disk_full/_"), Vec::new()),
        (format!("{b_topic}/alerts/events"), forged_alert.to_vec()),
        (
            format!("{b_topic}/status"),
            b"{\"state\":\"offline\"}".to_vec(),
        ),
    ]
}

#[test]
fn one_devices_credentials_cannot_write_anothers_data_or_command_it() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    enrol(dir.path(), "dev-a", mqtt_port);
    let mqtt_b = enrol(dir.path(), "dev-b", mqtt_port);
    let hub = Hub::start(dir.path(), http_port, mqtt_port);
    let agent_b = replaying_agent(dir.path(), &mqtt_b, XAVIER, 5);
    wait_until("dev-b online", Duration::from_secs(30), || {
        (device_record(&hub.devices(), "dev-b")?["batches"].as_u64()? > 0).then_some(())
    });
    let (a_password, a_key, b_key) = (
        password(dir.path(), "dev-a"),
        key(dir.path(), "dev-a"),
        key(dir.path(), "dev-b"),
    );
    // With A's login and key, on B's topics: a batch, garbage, B's own batch with a changed
    // byte, a command, a forged retained alert, an empty retained message (which would clear
    // B's alert), a replayed status. The broker's gate refuses every one: nothing reaches the
    // hub or B, and the refusals count against A, not B.
    let b_topic = "outpost/v1/default/dev-b";
    let attacks = attacks_on("dev-b", &a_key, &b_key);
    for (topic, payload) in &attacks {
        assert!(
            !publish(mqtt_port, "dev-a", &a_password, topic, payload, dir.path()),
            "{topic} was let through"
        );
    }
    // Reading B's data with A's login: the subscription closes the connection.
    let subscribed = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &mqtt_port.to_string()])
        .args([
            "-u",
            "dev-a",
            "-P",
            &a_password,
            "-i",
            "outpost-default-dev-a",
        ])
        .args(["-t", &format!("{b_topic}/batch"), "-C", "1", "-W", "5"])
        .output()
        .unwrap();
    assert!(
        subscribed.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&subscribed.stdout)
    );
    // A reader's login, for people's tools: the fleet's status and alert topics, nothing else.
    let reader_password = add_reader(dir.path(), "ops-tool");
    let read = |topic: &str| read_one(mqtt_port, ("ops-tool", &reader_password), topic);
    let status = read("outpost/v1/default/+/status");
    assert!(
        status.contains("\"online\""),
        "the reader sees status: {status}"
    );
    assert!(
        read(&format!("{b_topic}/batch")).is_empty(),
        "but no batches"
    );
    assert!(!publish_as(
        mqtt_port,
        ("ops-tool", &reader_password, "ops-tool-1"),
        "outpost/v1/default/ops-tool/status",
        b"x",
        dir.path()
    ));
    // Nor may it take a device's session.
    assert!(!publish_as(
        mqtt_port,
        ("ops-tool", &reader_password, "outpost-default-dev-b"),
        "outpost/v1/default/dev-b/status",
        b"x",
        dir.path()
    ));
    // On A's own topic, a batch claiming to be B: the gate lets it through (A may publish
    // there), the hub's signature check refuses it, against A.
    assert!(publish(
        mqtt_port,
        "dev-a",
        &a_password,
        "outpost/v1/default/dev-a/batch",
        &forged_batch("dev-b", &a_key),
        dir.path()
    ));
    let refusals = |login: &str| {
        let (_, body) = http(http_port, "GET", "/metrics", "");
        metric_value(
            &body,
            &format!("outpost_hub_broker_refusals_total{{login=\"{login}\"}}"),
        )
    };
    wait_until(
        "the refusals counted against A",
        Duration::from_secs(20),
        || {
            let devices = hub.devices();
            (refusals("dev-a")? >= 8.0
                && refusals("ops-tool")? >= 2.0
                && device_record(&devices, "dev-a")?["rejected"].as_u64()? >= 1)
                .then_some(())
        },
    );
    let devices = hub.devices();
    assert_eq!(device_record(&devices, "dev-b").unwrap()["rejected"], 0);
    assert_eq!(device_record(&devices, "dev-b").unwrap()["state"], "online");
    let (_, alerts) = http(http_port, "GET", "/api/alerts", "");
    assert!(!alerts.contains("FORGED"), "{alerts}");
    // A's login with B's client id (B's session): refused at connect, so B is never evicted.
    let connects = || metric_value(&agent_b.metrics(), "outpost_sync_connects_total");
    let connected_before = wait_until("B's connection counted", Duration::from_secs(20), || {
        connects().filter(|n| *n >= 1.0)
    });
    for _ in 0..3 {
        assert!(!publish_as(
            mqtt_port,
            ("dev-a", &a_password, "outpost-default-dev-b"),
            "outpost/v1/default/dev-a/status",
            b"x",
            dir.path()
        ));
    }
    // An eviction would show as a reconnect within the agent's first backoff (0.5 s).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(connects(), Some(connected_before), "B kept its connection");
    assert_eq!(
        metric_value(&agent_b.metrics(), "outpost_sync_connected"),
        Some(1.0)
    );
    // A wrong password does not even get a connection.
    assert!(!publish(
        mqtt_port,
        "dev-a",
        "wrong",
        "outpost/v1/default/dev-a/batch",
        b"x",
        dir.path()
    ));
    assert!(
        !agent_b
            .log_text()
            .contains("ignoring a command that does not verify"),
        "the forged command never reached B"
    );
    // Revoking B takes effect at the running hub: its batches stop being stored.
    let loads = hub.log_text().matches("devices file (re)loaded").count();
    succeed(&mut devices_command(
        dir.path(),
        &["device", "revoke", "dev-b"],
    ));
    wait_until(
        "the hub to re-read the devices file",
        Duration::from_secs(20),
        || (hub.log_text().matches("devices file (re)loaded").count() > loads).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(1));
    let batches = |hub: &Hub| {
        device_record(&hub.devices(), "dev-b").unwrap()["batches"]
            .as_u64()
            .unwrap()
    };
    let before = batches(&hub);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        before,
        batches(&hub),
        "a revoked device's batches are not stored"
    );
    assert!(metric_value(&agent_b.metrics(), "outpost_sync_in_flight_batches").unwrap() > 0.0);
    agent_b.stop();
    hub.stop();
    let forged = db_query(&dir.path().join("hub.redb"), "forged_metric", &[]);
    assert!(
        forged.is_empty(),
        "forged data reached the store: {forged:?}"
    );
}

/// A reader's login (`outpost hub reader add NAME`); its password.
fn add_reader(dir: &Path, name: &str) -> String {
    succeed(devices_command(dir, &["reader", "add", name, "--out"]).arg(dir));
    password(dir, name)
}

/// The first message on `topic` (a retained one at once), as `mosquitto_sub -v` prints it: the
/// topic, a space, the payload; empty if none came within 5 s.
fn read_one(port: u16, (user, password): (&str, &str), topic: &str) -> String {
    let output = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-u", user, "-P", password, "-i", &format!("{user}-1")])
        .args(["-t", topic, "-C", "1", "-W", "5", "-v"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A device's own status, captured from the broker and published again later with the
/// device's own login (a stolen password, or anyone the broker lets publish there): the hub
/// takes statuses only in order, so an old `online` cannot hide that the device has stopped.
#[test]
fn a_devices_old_status_published_again_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt_b = enrol(dir.path(), "dev-b", mqtt_port);
    let hub = Hub::start(dir.path(), http_port, mqtt_port);
    let agent_b = replaying_agent(dir.path(), &mqtt_b, XAVIER, 5);
    let state = |hub: &Hub| {
        device_record(&hub.devices(), "dev-b").and_then(|r| r["state"].as_str().map(str::to_string))
    };
    wait_until("dev-b online", Duration::from_secs(30), || {
        (state(&hub)? == "online").then_some(())
    });
    let reader = add_reader(dir.path(), "ops-tool");
    let topic = "outpost/v1/default/dev-b/status";
    let captured = read_one(mqtt_port, ("ops-tool", &reader), topic);
    let online = captured
        .strip_prefix(&format!("{topic} "))
        .unwrap_or_else(|| panic!("the retained status: {captured:?}"))
        .trim_end()
        .to_string();
    assert!(online.contains("\"online\""), "{online}");
    agent_b.stop();
    wait_until("dev-b offline", Duration::from_secs(30), || {
        (state(&hub)? == "offline").then_some(())
    });
    assert!(publish(
        mqtt_port,
        "dev-b",
        &password(dir.path(), "dev-b"),
        topic,
        online.as_bytes(),
        dir.path()
    ));
    wait_until("the replay refused", Duration::from_secs(20), || {
        let devices = hub.devices();
        (device_record(&devices, "dev-b")?["stale_statuses"].as_u64()? >= 1).then_some(())
    });
    assert_eq!(state(&hub).as_deref(), Some("offline"));
    let (_, metrics) = http(http_port, "GET", "/metrics", "");
    assert_eq!(
        metric_value(
            &metrics,
            "outpost_hub_stale_statuses_total{instance=\"dev-b\"}"
        ),
        Some(1.0)
    );
    hub.stop();
}

#[test]
fn through_mosquitto_with_the_committed_config_and_acls() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt = enrol(dir.path(), "dev-a", mqtt_port);
    enrol(dir.path(), "dev-b", mqtt_port);
    let _broker = Mosquitto::start(dir.path(), mqtt_port, "");
    write_hub_config(
        dir.path(),
        &format!("url = \"mqtt://127.0.0.1:{mqtt_port}\"\n"),
    );
    run_agent_and_compare(dir.path(), http_port, &mqtt, |hub, agent| {
        // Mosquitto's ACL drops B's publishes on A's topics before the hub sees them (and
        // answers them as if taken: MQTT 3.1.1 has no way to say no).
        let (b_password, b_key) = (password(dir.path(), "dev-b"), key(dir.path(), "dev-b"));
        for (topic, payload) in attacks_on("dev-a", &b_key, &key(dir.path(), "dev-a")) {
            publish(
                mqtt_port,
                "dev-b",
                &b_password,
                &topic,
                &payload,
                dir.path(),
            );
        }
        // Nor may B read A's topics: the retained status and meta would come at once.
        assert_eq!(
            read_one(
                mqtt_port,
                ("dev-b", &b_password),
                "outpost/v1/default/dev-a/#"
            ),
            ""
        );
        // A reader's login (`outpost-alerts` in the committed ACL) sees status and alert
        // topics, and neither batches nor commands; what it publishes is dropped.
        let reader = ("outpost-alerts", "alerts-secret");
        let status = read_one(mqtt_port, reader, "outpost/v1/default/+/status");
        assert!(status.contains("\"online\""), "{status}");
        assert!(read_one(mqtt_port, reader, "outpost/v1/default/+/batch").is_empty());
        publish_as(
            mqtt_port,
            (reader.0, reader.1, reader.0),
            "outpost/v1/default/dev-a/alerts/disk_full/_",
            br#"{"alertname":"disk_full","state":"firing","summary":"FORGED"}"#,
            dir.path(),
        );
        // A's own signed event, published after the attacks (by the unused second hub's
        // login: A's own would take over A's session): once it is at the hub, the attacks would
        // have been too.
        let marker = outpost_sync::sign_json(
            r#"{"alertname":"marker","state":"resolved","event_seq":0}"#,
            &key(dir.path(), "dev-a"),
        );
        publish_as(
            mqtt_port,
            ("outpost-hub-2", "hub-2-secret", "outpost-hub-2"),
            "outpost/v1/default/dev-a/alerts/events",
            marker.as_bytes(),
            dir.path(),
        );
        wait_until(
            "the marker event at the hub",
            Duration::from_secs(20),
            || {
                let (_, alerts) = http(http_port, "GET", "/api/alerts", "");
                alerts.contains("marker").then_some(())
            },
        );
        let (_, alerts) = http(http_port, "GET", "/api/alerts", "");
        assert!(!alerts.contains("FORGED"), "{alerts}");
        let devices = hub.devices();
        assert!(
            device_record(&devices, "dev-b").is_none(),
            "nothing of dev-b reached the hub: {devices}"
        );
        let a = device_record(&devices, "dev-a").unwrap();
        assert_eq!(a["rejected"], 0, "{a}");
        assert_eq!(a["state"], "online", "{a}");
        // B's login with A's client id: the broker uses B's login as the client id, so A's
        // session is not taken over.
        let connects = || metric_value(&agent.metrics(), "outpost_sync_connects_total");
        let before = wait_until("A's connection counted", Duration::from_secs(20), || {
            connects().filter(|n| *n >= 1.0)
        });
        publish_as(
            mqtt_port,
            (
                "dev-b",
                &password(dir.path(), "dev-b"),
                "outpost-default-dev-a",
            ),
            "outpost/v1/default/dev-b/status",
            b"x",
            dir.path(),
        );
        // A takeover would show as a reconnect within the agent's first backoff (0.5 s).
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(connects(), Some(before), "A kept its session");
    });
}

/// A TCP proxy between the agent and the broker that cuts every connection `cuts` times, at
/// staggered moments, so that some cuts fall in the middle of a publish.
struct CuttingProxy {
    port: u16,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CuttingProxy {
    fn start(upstream: u16, cuts_wanted: usize) -> CuttingProxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cuts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        {
            let live = live.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    live.lock().unwrap().push(client.try_clone().unwrap());
                    live.lock().unwrap().push(server.try_clone().unwrap());
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Both);
                            let _ = from.shutdown(Shutdown::Both);
                        });
                    }
                }
            });
        }
        {
            let (cuts, stop) = (cuts.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut step = 0u64;
                while !stop.load(Ordering::Relaxed) && cuts.load(Ordering::Relaxed) < cuts_wanted {
                    // 150 to 450 ms apart: the agent publishes every 200 ms.
                    step += 1;
                    std::thread::sleep(Duration::from_millis(150 + (step * 97) % 300));
                    let streams: Vec<TcpStream> = live.lock().unwrap().drain(..).collect();
                    if !streams.is_empty() {
                        for stream in streams {
                            let _ = stream.shutdown(Shutdown::Both);
                        }
                        cuts.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        CuttingProxy { port, cuts, stop }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn fifty_connection_cuts_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let hub = Hub::start(dir.path(), http_port, mqtt_port);
    let proxy = CuttingProxy::start(mqtt_port, 50);
    let mqtt = enrol(dir.path(), "dev-1", proxy.port);
    let store = format!(
        "[store]\nflush_interval = \"100ms\"\nsync_interval = \"200ms\"\nseal_interval = \"3s\"\nmax_head_samples = 2000\n{mqtt}"
    );
    let agent = replaying_agent(dir.path(), &store, XAVIER, 5);
    wait_until("fifty cuts", Duration::from_secs(120), || {
        (proxy.cuts.load(std::sync::atomic::Ordering::Relaxed) >= 50).then_some(())
    });
    wait_until_shipped(&agent);
    let connects = metric_value(&agent.metrics(), "outpost_sync_connects_total").unwrap();
    assert!(connects >= 40.0, "{connects} connections");
    assert_eq!(
        device_record(&hub.devices(), "dev-1").unwrap()["rejected"],
        0
    );
    agent.stop();
    hub.stop();
    let points = assert_hub_holds_the_agents(dir.path(), "dev-1", r#"{__name__=~"jetson_.*"}"#);
    assert!(points > 3000, "{points} points compared");
}

/// Mosquitto with the committed config and ACL, on this test's port and paths, with logins for
/// the hub (`hub-secret`) and every enrolled device; `extra` adds lines (TLS).
pub struct Mosquitto(Child);

impl Mosquitto {
    pub fn start(dir: &Path, port: u16, extra: &str) -> Mosquitto {
        let mosquitto = std::env::var("OUTPOST_MOSQUITTO").unwrap_or_else(|_| "mosquitto".into());
        let root = crate::agent::root();
        let conf = std::fs::read_to_string(root.join("config/mosquitto.conf"))
            .unwrap()
            .replace("listener 1883", &format!("listener {port} 127.0.0.1"))
            .replace(
                "/etc/mosquitto/outpost.passwd",
                &dir.join("passwd").display().to_string(),
            )
            .replace(
                "/etc/mosquitto/outpost.acl",
                &dir.join("outpost.acl").display().to_string(),
            )
            .replace("/var/lib/mosquitto/", &format!("{}/", dir.display()));
        // Started as root, Mosquitto drops to its own user, who cannot read this test's files.
        let me = Command::new("id").arg("-un").output().unwrap();
        let conf = format!(
            "{conf}\nuser {}\n{extra}",
            String::from_utf8_lossy(&me.stdout).trim()
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        // The committed ACL, with the second hub's login that it describes.
        let acl = std::fs::read_to_string(root.join("config/mosquitto.acl")).unwrap();
        std::fs::write(
            dir.join("outpost.acl"),
            acl.replace(
                "# user outpost-hub-2\n# topic readwrite outpost/v1/#",
                "user outpost-hub-2\ntopic readwrite outpost/v1/#\n\
                 user outpost-hub-3\ntopic readwrite outpost/v1/#",
            ),
        )
        .unwrap();
        let passwd = dir.join("passwd");
        let devices = std::fs::read_to_string(dir.join("devices.toml")).unwrap_or_default();
        let mut logins = vec![
            ("outpost-hub".to_string(), "hub-secret".to_string()),
            ("outpost-hub-2".to_string(), "hub-2-secret".to_string()),
            ("outpost-hub-3".to_string(), "hub-3-secret".to_string()),
            ("outpost-alerts".to_string(), "alerts-secret".to_string()),
        ];
        for id in ["dev-a", "dev-b", "dev-c", "dev-1"] {
            if devices.contains(&format!("[device.{id}]")) {
                logins.push((id.to_string(), password(dir, id)));
            }
        }
        for (i, (user, pass)) in logins.iter().enumerate() {
            let mut command = Command::new("mosquitto_passwd");
            if i == 0 {
                command.arg("-c");
            }
            let status = command
                .arg("-b")
                .arg(&passwd)
                .args([user, pass])
                .status()
                .unwrap();
            assert!(status.success(), "mosquitto_passwd");
        }
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).unwrap();
        let child = Command::new(&mosquitto)
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mosquitto.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {mosquitto} ({e}): install Debian's mosquitto, or set OUTPOST_MOSQUITTO"));
        wait_until("Mosquitto", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Mosquitto(child)
    }
}

impl Mosquitto {
    /// SIGTERM, as a service manager stops it: Mosquitto saves its persistent sessions.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A hub config for an external broker, logged in as `outpost-hub`; `extra` adds [mqtt] keys.
fn write_hub_config(dir: &Path, extra: &str) {
    std::fs::write(dir.join("hub.password"), "hub-secret\n").unwrap();
    std::fs::set_permissions(
        dir.join("hub.password"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(
        dir.join("hub.toml"),
        format!(
            "[mqtt]\nembedded = false\nusername = \"outpost-hub\"\npassword_file = \"{}\"\n{extra}",
            dir.join("hub.password").display()
        ),
    )
    .unwrap();
}

/// Runs a hub (on `hub.toml`) and an agent replaying the Xavier NX log until everything is
/// shipped, then `check`, then stops both and compares the stores.
fn run_agent_and_compare(dir: &Path, http_port: u16, mqtt: &str, check: impl FnOnce(&Hub, &Agent)) {
    let config_path = dir.join("hub.toml");
    let hub = Hub::start_with(
        dir,
        http_port,
        free_port(),
        &["--config", config_path.to_str().unwrap()],
    );
    let agent = replaying_agent(dir, mqtt, XAVIER, 20);
    wait_until_shipped(&agent);
    check(&hub, &agent);
    agent.stop();
    hub.stop();
    let points = assert_hub_holds_the_agents(dir, "dev-a", r#"{__name__=~"jetson_.*"}"#);
    assert!(points > 3000, "{points} points compared");
}

#[test]
fn tls_with_client_certificates_through_mosquitto() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt = enrol(dir.path(), "dev-a", mqtt_port);
    // A CA, the broker's certificate, and a client certificate each for the hub and the device.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Outpost test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let issue = |name: &str, sans: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
        let key_path = dir.path().join(format!("{name}.key.pem"));
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    issue("broker", vec!["localhost".into(), "127.0.0.1".into()]);
    issue("outpost-hub", vec![]);
    issue("dev-a", vec![]);
    let path = |name: &str| dir.path().join(name).display().to_string();
    let _broker = Mosquitto::start(
        dir.path(),
        mqtt_port,
        &format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            path("ca.pem"),
            path("broker.pem"),
            path("broker.key.pem")
        ),
    );
    // Without a client certificate, the broker refuses the connection, password or not.
    let refused = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt_port.to_string(),
            "--cafile",
            &path("ca.pem"),
        ])
        .args([
            "-u",
            "dev-a",
            "-P",
            &password(dir.path(), "dev-a"),
            "-t",
            "outpost/v1/default/dev-a/status",
            "-m",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    write_hub_config(
        dir.path(),
        &format!(
            "url = \"mqtts://127.0.0.1:{mqtt_port}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            path("ca.pem"),
            path("outpost-hub.pem"),
            path("outpost-hub.key.pem")
        ),
    );
    let mqtt = mqtt.replace("mqtt://", "mqtts://")
        + &format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            path("ca.pem"),
            path("dev-a.pem"),
            path("dev-a.key.pem")
        );
    run_agent_and_compare(dir.path(), http_port, &mqtt, |_, _| {});
}

#[test]
fn the_hub_alerts_on_a_device_that_goes_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt = enrol(dir.path(), "dev-a", mqtt_port);
    // The built-in hub pack waits 5 minutes; this one does not.
    std::fs::write(
        dir.path().join("hub-rules.toml"),
        "[[rule]]\nname = \"device_offline\"\nselect = \"outpost_hub_device_online\"\nop = \"==\"\nthreshold = 0\nsummary = \"{{labels.instance}} is offline\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("hub.toml"),
        format!(
            "[alerts]\nrules = [\"{}\"]\ninterval = \"200ms\"\n",
            dir.path().join("hub-rules.toml").display()
        ),
    )
    .unwrap();
    let config = dir.path().join("hub.toml");
    let hub = Hub::start_with(
        dir.path(),
        http_port,
        mqtt_port,
        &["--config", config.to_str().unwrap()],
    );
    let alerts = || -> Vec<Value> {
        let (status, body) = http(hub.http_port, "GET", "/api/alerts", "");
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["alerts"].as_array().unwrap().clone()
    };
    let agent = replaying_agent(dir.path(), &mqtt, XAVIER, 1);
    wait_until("the device online", Duration::from_secs(20), || {
        let devices = hub.devices();
        (device_record(&devices, "dev-a")?["state"] == "online").then_some(())
    });
    assert!(alerts().is_empty());
    agent.stop();
    let firing = wait_until("the offline alert", Duration::from_secs(20), || {
        alerts().into_iter().find(|a| a["state"] == "firing")
    });
    assert_eq!(firing["rule"], "device_offline");
    assert_eq!(firing["labels"]["instance"], "dev-a");
    assert_eq!(firing["summary"], "dev-a is offline");
    let history = |state: &str| -> Option<Value> {
        let (_, body) = http(hub.http_port, "GET", "/api/alerts", "");
        let v: Value = serde_json::from_str(&body).ok()?;
        v["history"]
            .as_array()?
            .iter()
            .find(|e| {
                e["source"] == "hub"
                    && e["device"] == "dev-a"
                    && e["rule"] == "device_offline"
                    && e["state"] == state
            })
            .cloned()
    };
    wait_until(
        "the hub's alert in the history",
        Duration::from_secs(20),
        || history("firing"),
    );
    // Back online: the hub's alert resolves, leaves what fires now and joins the history.
    let agent = replaying_agent(dir.path(), &mqtt, XAVIER, 1);
    let resolved = wait_until(
        "the resolve in the history",
        Duration::from_secs(30),
        || history("resolved"),
    );
    assert!(resolved["resolved_at"].is_string(), "{resolved}");
    let left: Vec<Value> = alerts();
    assert!(
        left.iter()
            .all(|a| a["state"] == "firing" || a["state"] == "pending"),
        "a resolved alert is not current: {left:?}"
    );
    agent.stop();
    // Every metric the hub's built-in pack selects is one the hub has.
    let (_, metrics) = http(hub.http_port, "GET", "/metrics", "");
    assert!(metrics.contains("outpost_hub_device_online{instance=\"dev-a\"} 0"));
    let documented = crate::agent::documented_metrics();
    for line in metrics.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(documented.contains(name), "{name}: not in docs/metrics.md");
    }
    let pack: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("config/hub-rules.toml")).unwrap())
            .unwrap();
    for rule in pack["rule"].as_array().unwrap() {
        let metric = rule["select"].as_str().unwrap().split('{').next().unwrap();
        assert!(
            metrics.contains(&format!("# TYPE {metric} ")),
            "{metric} (config/hub-rules.toml) is not a hub metric"
        );
    }
    hub.stop();
}

/// Debian's libfaketime, which shifts a process's wall clock (and leaves its monotonic clocks
/// alone with `FAKETIME_DONT_FAKE_MONOTONIC`).
pub fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("faketime/libfaketime.so.1"))
        .find(|path| path.exists())
        .expect("libfaketime: install Debian's faketime package")
}

#[test]
fn a_device_clock_that_boots_wrong_and_then_steps_is_corrected_at_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt = enrol(dir.path(), "dev-1", mqtt_port);
    let clock = dir.path().join("faketime");
    // A Jetson whose clock came up 400 days behind, past the store's 30 days of raw retention.
    std::fs::write(&clock, "-400d\n").unwrap();
    let lib = libfaketime();
    let env = [
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", clock.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let config = format!(
        "[agent]\nself_interval = \"1s\"\n[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n{mqtt}"
    );
    let real_start = outpost::timearg::now_ms();
    let hub = Hub::start(dir.path(), http_port, mqtt_port);
    let agent = Agent::start_with_env(dir.path(), &config, &[], &env);

    // While the clock is wrong and the hub reachable, the hub measures the offset itself.
    wait_until(
        "corrected samples at the hub",
        Duration::from_secs(30),
        || {
            let devices = hub.devices();
            (device_record(&devices, "dev-1")?["clock_corrected_samples"].as_u64()? >= 20)
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    // Then the hub is away while NTP sets the device's clock: only the device can tell how far
    // off the samples of those seconds are.
    hub.stop();
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(&clock, "+0d\n").unwrap();
    wait_until("the agent to see the step", Duration::from_secs(20), || {
        agent
            .log_text()
            .contains("the wall clock stepped")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let hub = Hub::start(dir.path(), http_port, mqtt_port);
    wait_until("everything shipped", Duration::from_secs(60), || {
        let metrics = agent.metrics();
        (metric_value(&metrics, "outpost_sync_backlog_chunks") == Some(0.0)
            && metric_value(&metrics, "outpost_sync_in_flight_batches") == Some(0.0)
            && metric_value(&metrics, "outpost_sync_connected") == Some(1.0))
        .then_some(())
    });
    // What the agent holds now, by its own clock (its store drops shipped data past retention
    // when it closes, so it is read through its API while it runs).
    let series = "outpost_uptime_seconds";
    let parse = |json: &Value| -> Vec<(i64, String)> {
        let found = json.as_array().unwrap();
        assert_eq!(found.len(), 1, "{json}");
        found[0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), p[1].as_str().unwrap().to_string()))
            .collect()
    };
    let (status, body) = http(
        agent.port,
        "GET",
        &format!("/api/query?match={series}&from=0&to=now"),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let agents = parse(&serde_json::from_str(&body).unwrap());
    std::thread::sleep(Duration::from_secs(3));
    agent.stop();
    let devices = hub.devices();
    let record = device_record(&devices, "dev-1").unwrap().clone();
    hub.stop();
    let real_end = outpost::timearg::now_ms();
    let found = db_query(&dir.path().join("hub.redb"), series, &[]);
    let hubs = parse(&serde_json::json!(found
        .iter()
        .map(|(s, p)| serde_json::json!({"series": s, "points": p}))
        .collect::<Vec<_>>()));

    let year = 365 * 86_400_000;
    assert!(
        agents.iter().filter(|p| p.0 < real_start - year).count() >= 6,
        "the agent wrote by its wrong clock: {agents:?}"
    );
    // Everything the agent had is at the hub, with the same values in the same order; values
    // (the agent's uptime) only grow, so a sample stored twice would show.
    let values = |points: &[(i64, String)]| points.iter().map(|p| p.1.clone()).collect::<Vec<_>>();
    assert!(hubs.len() >= agents.len());
    assert_eq!(values(&hubs[..agents.len()]), values(&agents));
    let numbers: Vec<f64> = hubs.iter().map(|p| p.1.parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{hubs:?}");
    for (ts, value) in &hubs {
        assert!(
            (real_start - 2_000..=real_end + 2_000).contains(ts),
            "uptime {value} stored at {ts}, outside the test's real time {real_start}..{real_end}"
        );
    }
    assert_eq!(record["implausible_samples"], 0, "{record}");
    assert!(record["clock_corrected_samples"].as_u64().unwrap() >= 20);
}

/// Raw points of `selector` in a store, by series without its `instance` label, as exact text.
fn raw_points_by_series(
    store: &Path,
    selector: &str,
) -> std::collections::BTreeMap<Vec<String>, std::collections::BTreeMap<String, String>> {
    db_query(store, selector, &[])
        .into_iter()
        .map(|(key, points)| {
            let mut labels: Vec<String> = key
                .replace(['{', '}'], ",")
                .split(',')
                .filter(|part| !part.is_empty() && !part.starts_with("instance="))
                .map(str::to_string)
                .collect();
            labels.sort();
            let points = points
                .iter()
                .map(|point| (point[0].to_string(), point[1].to_string()))
                .collect();
            (labels, points)
        })
        .collect()
}

/// Two hubs in one MQTT shared-subscription group (`[mqtt] shared_group`) on Mosquitto, and an
/// agent with `shared_hubs`: the broker hands each batch to one of them, each stores and
/// acknowledges what it got, and together they hold every sample the agent holds. Both still
/// see every device's status.
#[test]
fn two_hubs_in_a_shared_group_split_the_batches_and_together_hold_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    let mqtt_port = free_port();
    let mqtt = enrol(&first, "dev-a", mqtt_port) + "shared_hubs = true\n";
    let _broker = Mosquitto::start(&first, mqtt_port, "");
    write_hub_config(
        &first,
        &format!("url = \"mqtt://127.0.0.1:{mqtt_port}\"\nshared_group = \"hubs\"\n"),
    );
    std::fs::copy(first.join("devices.toml"), second.join("devices.toml")).unwrap();
    // Each hub logs in as itself: the broker uses the login as the client id.
    write_hub_config(
        &second,
        &format!("url = \"mqtt://127.0.0.1:{mqtt_port}\"\nshared_group = \"hubs\"\n"),
    );
    std::fs::write(second.join("hub.password"), "hub-2-secret\n").unwrap();
    let second_config = std::fs::read_to_string(second.join("hub.toml")).unwrap();
    std::fs::write(
        second.join("hub.toml"),
        second_config.replace("username = \"outpost-hub\"", "username = \"outpost-hub-2\""),
    )
    .unwrap();
    let hubs: Vec<Hub> = [&first, &second]
        .into_iter()
        .map(|dir| {
            let config = dir.join("hub.toml");
            Hub::start_with(
                dir,
                free_port(),
                free_port(),
                &["--config", config.to_str().unwrap()],
            )
        })
        .collect();
    let agent = replaying_agent(&first, &mqtt, XAVIER, 20);
    wait_until_shipped(&agent);
    let acked = metric_value(&agent.metrics(), "outpost_sync_batches_acked_total").unwrap();
    let batches: Vec<f64> = hubs
        .iter()
        .map(|hub| {
            let (status, metrics) = http(hub.http_port, "GET", "/metrics", "");
            assert_eq!(status, 200);
            metric_value(&metrics, "outpost_hub_taken_batches_total").unwrap_or(0.0)
        })
        .collect();
    for hub in &hubs {
        let devices = hub.devices();
        assert_eq!(
            device_record(&devices, "dev-a").unwrap()["state"],
            "online",
            "each hub sees the device's status: {devices}"
        );
    }
    let agent_log = agent.log_text();
    agent.stop();
    for hub in hubs {
        hub.stop();
    }
    assert!(
        batches.iter().all(|&n| n >= 1.0),
        "the broker shares the batches between both hubs: {batches:?}"
    );
    // Without the group each hub would receive, and acknowledge, every batch; without
    // `shared_hubs` a hub would ask for definitions it missed and batches would go round again.
    assert!(
        batches.iter().sum::<f64>() < 1.5 * acked,
        "each batch went to one hub: {batches:?} received, {acked} acknowledged"
    );
    assert!(
        !agent_log.contains("asked for series definitions again"),
        "every batch carried its definitions: {agent_log}"
    );

    let selector = r#"{__name__=~"jetson_.*"}"#;
    let agent_points = raw_points_by_series(&first.join("agent.redb"), selector);
    let mut together = raw_points_by_series(&first.join("hub.redb"), selector);
    for (series, points) in raw_points_by_series(&second.join("hub.redb"), selector) {
        let merged = together.entry(series.clone()).or_default();
        for (at, value) in points {
            if let Some(other) = merged.insert(at.clone(), value.clone()) {
                assert_eq!(other, value, "{series:?} at {at}: the two hubs disagree");
            }
        }
    }
    assert_eq!(together.len(), agent_points.len(), "series count");
    let mut compared = 0;
    for (series, points) in &agent_points {
        assert_eq!(together.get(series), Some(points), "{series:?}");
        compared += points.len();
    }
    assert!(compared > 3000, "{compared} points compared");
}

/// A burst of batches far beyond what the hub keeps queued (a fleet's backlog arriving at
/// once) is acknowledged batch by batch, none sent twice. The hub's acks wait for room in its
/// MQTT client's queue: they were dropped when it was full, and each dropped ack made its
/// device send the batch again after its ack timeout, more load on a hub already behind.
#[test]
fn a_hub_behind_a_burst_of_batches_acknowledges_every_one() {
    const BURST: u64 = 6_000;
    let dir = tempfile::tempdir().unwrap();
    let mqtt_port = free_port();
    enrol(dir.path(), "dev-a", mqtt_port);
    let _broker = Mosquitto::start(dir.path(), mqtt_port, "");
    write_hub_config(
        dir.path(),
        &format!("url = \"mqtt://127.0.0.1:{mqtt_port}\"\n"),
    );
    let config = dir.path().join("hub.toml");
    let hub = Hub::start_with(
        dir.path(),
        free_port(),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );
    let key = key(dir.path(), "dev-a");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let acked = runtime.block_on(async {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let mut options = MqttOptions::new("dev-a", "127.0.0.1", mqtt_port);
        options.set_credentials("dev-a", password(dir.path(), "dev-a"));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 1024);
        client
            .subscribe("outpost/v1/default/dev-a/ack", QoS::AtLeastOnce)
            .await
            .unwrap();
        let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
        let verify = key.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let ack = outpost_sync::Ack::decode(&publish.payload, "dev-a", &verify);
                        let _ = acks_tx.send(ack.expect("a valid ack").seq);
                    }
                    Ok(_) => {}
                    Err(error) => panic!("the device's MQTT connection: {error}"),
                }
            }
        });
        let publish = |seq: u64| {
            let (client, key) = (client.clone(), key.clone());
            async move {
                let payload = counted_batch("dev-a", &key, seq);
                let topic = "outpost/v1/default/dev-a/batch";
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
        };
        // The first batch again until it is acknowledged: the hub has subscribed.
        loop {
            publish(1).await;
            let answer = tokio::time::timeout(Duration::from_secs(1), acks.recv()).await;
            if let Ok(Some(1)) = answer {
                break;
            }
        }
        for seq in 2..=BURST + 1 {
            publish(seq).await;
        }
        let mut acked = std::collections::BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while (acked.len() as u64) < BURST {
            match tokio::time::timeout_at(deadline, acks.recv()).await {
                Ok(Some(seq)) if seq > 1 => {
                    acked.insert(seq);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        acked
    });
    let (status, metrics) = http(hub.http_port, "GET", "/metrics", "");
    assert_eq!(status, 200);
    let taken = metric_value(&metrics, "outpost_hub_taken_batches_total").unwrap_or(0.0);
    hub.stop();
    assert_eq!(
        acked.len() as u64,
        BURST,
        "every batch of the burst acknowledged once it was taken ({taken} taken, sent once each); \
         the first missing: {:?}",
        (2..=BURST + 1).find(|seq| !acked.contains(seq))
    );
}

/// A signed batch numbered `seq`, defining its one series.
fn counted_batch(device: &str, key: &outpost_sync::DeviceKey, seq: u64) -> Vec<u8> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let header = outpost_sync::BatchHeader {
        device: device.into(),
        epoch: 1,
        seq,
        boot_id: "burst".into(),
        sent_wall_ms: now_ms,
        sent_uptime_ms: 60_000,
        oldest_unacked_ms: None,
        body_bytes: 0,
        clock_steps: Vec::new(),
    };
    let at = now_ms - 60_000 + seq as i64;
    one_sample_batch(header, key, "burst_sample", (at, seq as f64))
}

/// A full disk at the hub: its store on a 16 MiB tmpfs of its own (a user and mount namespace,
/// no privilege needed) that the test fills through `/proc/PID/root` while an agent syncs. The
/// hub says it is degraded and counts its own failures, never blaming the device; once the
/// space is back it heals by itself, and in the end holds exactly what the agent holds.
#[test]
fn a_full_disk_at_the_hub_is_the_hubs_fault_and_it_resumes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt = enrol(dir.path(), "dev-1", mqtt_port);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let wrapper = crate::agent::tmpfs_wrapper(&data, "16m");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let hub = Hub::start_wrapped(
        dir.path(),
        (http_port, mqtt_port),
        &[],
        &[],
        &data.join("hub.redb"),
        &wrapper,
    );
    let inside = crate::agent::as_seen_by(hub.child.id(), &data);
    assert!(
        inside.join("hub.redb").exists(),
        "the hub's store is on the tmpfs"
    );
    let agent = replaying_agent(dir.path(), &mqtt, XAVIER, 4);
    wait_until("batches at the hub", Duration::from_secs(30), || {
        (hub.devices()[0]["batches"].as_u64()? > 0).then_some(())
    });

    let filler_path = crate::agent::fill(&inside);
    let hub_metric = |name: &str| {
        let (status, body) = http(http_port, "GET", "/metrics", "");
        assert_eq!(status, 200);
        metric_value(&body, name)
    };
    let health = wait_until("the hub degraded", Duration::from_secs(60), || {
        let (status, body) = http(http_port, "GET", "/api/health", "");
        (status == 503).then_some(body)
    });
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "degraded");
    assert!(health["store"]["write_failure"].is_string(), "{health}");
    wait_until(
        "the hub's own failures counted",
        Duration::from_secs(60),
        || hub_metric("outpost_hub_store_write_errors_total").filter(|n| *n > 0.0),
    );
    assert_eq!(
        hub_metric(r#"outpost_hub_rejected_total{instance="dev-1"}"#),
        Some(0.0),
        "the device is not blamed"
    );

    std::fs::remove_file(&filler_path).unwrap();
    wait_until("the hub healthy again", Duration::from_secs(60), || {
        let (status, _) = http(http_port, "GET", "/api/health", "");
        (status == 200).then_some(())
    });
    wait_until_shipped(&agent);
    assert_eq!(
        device_record(&hub.devices(), "dev-1").unwrap()["rejected"],
        0
    );
    // The hub's store lives and dies with its namespace: compare a backup of it.
    let (status, copy) = crate::dashboard::http_bytes(http_port, "/api/backup", &[]);
    assert_eq!(status, 200);
    std::fs::write(dir.path().join("hub.redb"), copy).unwrap();
    agent.stop();
    hub.stop();
    let points = assert_hub_holds_the_agents(dir.path(), "dev-1", r#"{__name__=~"jetson_.*"}"#);
    assert!(points > 1000, "{points} points compared");
}

/// Item 5 of issue 19: one device's login floods the embedded broker with 1 MB payloads on its
/// own batch topic (the gate lets them through; the hub refuses them as unsigned). The hub's
/// memory stays bounded, and another device's data keeps flowing. Before the broker's logs
/// were bounded, the same flood grew the hub by about 1 MB a payload, for good.
#[test]
fn a_flood_from_one_login_leaves_the_hubs_memory_bounded_and_others_data_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    enrol(dir.path(), "dev-a", mqtt_port);
    let mqtt_b = enrol(dir.path(), "dev-b", mqtt_port);
    let hub = Hub::start(dir.path(), http_port, mqtt_port);
    let agent_b = replaying_agent(dir.path(), &mqtt_b, XAVIER, 1);
    let batches_of_b = || {
        device_record(&hub.devices(), "dev-b")
            .and_then(|d| d["batches"].as_u64())
            .unwrap_or(0)
    };
    wait_until("dev-b online", Duration::from_secs(30), || {
        (batches_of_b() > 0).then_some(())
    });
    let resident = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", hub.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    let before = (resident(), batches_of_b());
    let payload = dir.path().join("flood.bin");
    let bytes: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&payload, bytes).unwrap();
    let password = password(dir.path(), "dev-a");
    let flooded = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &mqtt_port.to_string()])
        .args([
            "-u",
            "dev-a",
            "-P",
            &password,
            "-i",
            "outpost-default-dev-a",
            "-q",
            "1",
        ])
        .args(["-t", "outpost/v1/default/dev-a/batch", "-f"])
        .arg(&payload)
        .args(["--repeat", "300"])
        .status()
        .unwrap();
    assert!(
        flooded.success(),
        "the gate lets a login publish on its own topic"
    );
    let grown = resident().saturating_sub(before.0);
    assert!(
        grown < 100 << 20,
        "300 MB of flood grew the hub by {} MiB",
        grown >> 20
    );
    wait_until(
        "dev-b's batches still stored",
        Duration::from_secs(20),
        || (batches_of_b() > before.1 + 3).then_some(()),
    );
    agent_b.stop();
    hub.stop();
}

/// config/vernemq/vernemq.conf (not runnable here: VerneMQ is not packaged for Debian) turns on
/// the password and ACL plugins on the files it names, refuses anonymous logins, takes the
/// agents' batches, and reads config/mosquitto.acl (which Mosquitto runs in these tests) in the
/// form VerneMQ's parser needs: a newline at the end, no spaces at the end of a line.
#[test]
fn the_vernemq_config_confines_devices_with_the_mosquitto_acl() {
    let root = crate::agent::root();
    let conf = std::fs::read_to_string(root.join("config/vernemq/vernemq.conf")).unwrap();
    let settings: std::collections::BTreeMap<&str, &str> = conf
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l
                .split_once(" = ")
                .unwrap_or_else(|| panic!("not key = value: {l}"));
            (key.trim(), value.trim())
        })
        .collect();
    for (key, value) in [
        ("allow_anonymous", "off"),
        ("plugins.vmq_passwd", "on"),
        ("plugins.vmq_acl", "on"),
        ("vmq_acl.acl_file", "/etc/vernemq/vmq.acl"),
    ] {
        assert_eq!(settings.get(key), Some(&value), "{key}");
    }
    let max_message: usize = settings["max_message_size"].parse().unwrap();
    assert!(max_message > outpost_sync::outbox::OutboxOptions::default().max_batch_bytes);
    let acl = std::fs::read_to_string(root.join("config/mosquitto.acl")).unwrap();
    assert!(acl.ends_with('\n'));
    assert!(
        acl.lines().all(|l| l == l.trim_end()),
        "a line ends with spaces"
    );
}

/// config/emqx/acl.conf (not runnable here: EMQX is not packaged for Debian) gives each device
/// exactly the topics config/mosquitto.acl gives it, and every hub login the whole tree.
#[test]
fn the_emqx_acl_grants_devices_what_the_mosquitto_acl_grants() {
    let root = crate::agent::root();
    let mosquitto = std::fs::read_to_string(root.join("config/mosquitto.acl")).unwrap();
    let mut expected = std::collections::BTreeSet::new();
    for line in mosquitto.lines().filter(|l| l.starts_with("pattern ")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let topic = parts[2].replace("%u", "${username}");
        if parts[1].contains("write") {
            expected.insert(("publish", topic.clone()));
        }
        if parts[1].contains("read") {
            expected.insert(("subscribe", topic));
        }
    }
    let emqx = std::fs::read_to_string(root.join("config/emqx/acl.conf")).unwrap();
    let rules: Vec<String> = emqx
        .lines()
        .filter(|l| !l.trim_start().starts_with("%%"))
        .collect::<Vec<_>>()
        .join(" ")
        .split("}.")
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    let mut granted = std::collections::BTreeSet::new();
    for rule in &rules {
        for action in ["publish", "subscribe"] {
            if rule.starts_with(&format!("{{allow, all, {action},")) {
                for topic in rule.split('"').skip(1).step_by(2) {
                    granted.insert((action, topic.to_string()));
                }
            }
        }
    }
    assert_eq!(granted, expected);
    assert!(rules
        .iter()
        .any(|r| r.contains("^outpost-hub(-[0-9]+)?$") && r.contains("\"outpost/v1/#\"")));
    assert_eq!(rules.last().map(String::as_str), Some("{deny, all"));
}

/// A stored value's bits: a number, or a string such as "NaN".
fn value_bits(value: &Value) -> u64 {
    value
        .as_f64()
        .or_else(|| value.as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {value}"))
        .to_bits()
}

/// A device whose store starts over (flashed again, or a damaged store replaced by a new one)
/// numbers its batches from the start again. The hub must store them, not take them for
/// resends of the batches it saw from the old store and drop them.
#[test]
fn a_device_whose_store_starts_over_is_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mqtt = enrol(dir.path(), "dev-1", mqtt_port);
    let hub = Hub::start(dir.path(), http_port, mqtt_port);
    // Kept log lines too: each life numbers them from 0.
    let log = dir.path().join("app.log");
    let logs = format!(
        "[logs]\ninterval = \"200ms\"\n[[logs.file]]\nname = \"app\"\npath = \"{}\"\n\
         [[logs.pattern]]\nname = \"errors\"\nregex = 'level=error'\n",
        log.display()
    );
    let hub_lines = || crate::logs::hub_log_lines(http_port, "dev-1", "");
    let life = |name: &str| {
        let text: String = (0..3)
            .map(|n| format!("level=error {name} {n}\n"))
            .collect();
        std::fs::write(&log, text).unwrap();
        let agent = replaying_agent(dir.path(), &format!("{mqtt}{logs}"), XAVIER, 20);
        wait_until(
            "the life's lines at the hub",
            Duration::from_secs(30),
            || (hub_lines().iter().filter(|l| l.contains(name)).count() == 3).then_some(()),
        );
        wait_until_shipped(&agent);
        agent.stop();
    };
    life("first");
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("agent.redb") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    life("second");
    assert_eq!(
        hub_lines(),
        [
            "level=error second 2",
            "level=error second 1",
            "level=error second 0",
            "level=error first 2",
            "level=error first 1",
            "level=error first 0"
        ],
        "both lives' lines, newest first"
    );
    hub.stop();
    let selector = r#"{__name__=~"jetson_.*"}"#;
    let hub_points: std::collections::BTreeMap<String, std::collections::BTreeSet<(i64, u64)>> =
        db_query(&dir.path().join("hub.redb"), selector, &[])
            .into_iter()
            .map(|(key, points)| {
                let key = outpost_storage::SeriesKey::parse(&key).unwrap();
                let points = points
                    .iter()
                    .map(|p| (p[0].as_i64().unwrap(), value_bits(&p[1])))
                    .collect();
                (
                    key.name().to_string() + &format!("{:?}", key.labels()),
                    points,
                )
            })
            .collect();
    let mut compared = 0;
    for (key, points) in db_query(&dir.path().join("agent.redb"), selector, &[]) {
        let key = outpost_storage::SeriesKey::parse(&key).unwrap();
        let mut labels = key.owned_labels();
        labels.push(("instance".to_string(), "dev-1".to_string()));
        labels.sort();
        let at_hub = &hub_points[&(key.name().to_string() + &format!("{labels:?}"))];
        for point in &points {
            let point = (point[0].as_i64().unwrap(), value_bits(&point[1]));
            assert!(
                at_hub.contains(&point),
                "{key}: {point:?} missing at the hub"
            );
            compared += 1;
        }
    }
    assert!(compared > 1000, "{compared} points compared");
}
