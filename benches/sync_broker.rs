//! Sync figures through a real broker and hub: `outpost hub` runs as its own process with its
//! embedded MQTT broker, and this bench plays the devices over real MQTT connections (rumqttc,
//! as the agent does), through a TCP proxy that counts every byte in both directions. The hub
//! acknowledges each batch only after its store has made it durable, as in production.
//!
//! - wire: the hour of host data written 10 s at a time; after each write the batches the
//!   outbox builds are published and the hub's acks awaited. Every byte of the TCP streams
//!   (CONNECT, SUBSCRIBE, batch PUBLISH, PUBACK, ack PUBLISH, PUBACK, keepalives) over the
//!   samples; IP and TCP headers are not counted.
//! - backfill: 24 h of 315 series (27 M samples) that accumulated while the hub was away, shipped
//!   with the agent's window of 8 batches in flight, until the last ack.
//! - ingest: 100 devices, each its own MQTT connection with its own credentials and key,
//!   publishing the hour as 10 s batches (8 in flight each); from the first publish to the last
//!   ack.
//!
//! - remote: the hub with `[remote_write]` to VictoriaMetrics against vmagent forwarding the
//!   same samples, CPU per million samples and peak RSS (`fn remote`). Needs Debian's
//!   `victoria-metrics` (with `vmagent`); not in the default run.
//!
//! `cargo bench --bench sync_broker -- [wire] [backfill] [ingest] [remote]`

mod common;

use outpost_sync::HubToDevice;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_storage::Store;
use outpost_sync::outbox::Outbox;
use outpost_sync::{Ack, AckStatus, Batch, DeviceKey, Limits};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `outpost hub` with its embedded broker, and the devices enrolled in it.
struct Hub(Child);

/// The hub's command: `outpost`, or `outpost` run by the command in `HUB_WRAPPER` (split at
/// spaces, for example `heaptrack -o /tmp/hub`), to profile the hub during a bench. The CPU and
/// RSS figures are then the wrapper's process', not the hub's.
fn hub_command() -> Command {
    let outpost = env!("CARGO_BIN_EXE_outpost");
    match std::env::var("HUB_WRAPPER") {
        Ok(wrapper) if !wrapper.trim().is_empty() => {
            let mut words = wrapper.split_whitespace();
            let mut command = Command::new(words.next().expect("a word"));
            command.args(words).arg(outpost);
            command
        }
        _ => Command::new(outpost),
    }
}

impl Hub {
    fn start(dir: &Path, devices: &[String]) -> (Hub, u16) {
        Hub::start_with(dir, devices, &[])
    }

    /// With `args` after `hub` (`--config FILE`).
    fn start_with(dir: &Path, devices: &[String], args: &[&str]) -> (Hub, u16) {
        let devices_file = enrol(dir, devices);
        let (http, mqtt) = (free_port(), free_port());
        let mut child = hub_command()
            .args(["--log", "warn", "hub", "--devices-file"])
            .arg(&devices_file)
            .arg("--store")
            .arg(dir.join("hub.redb"))
            .args(["--listen", &format!("127.0.0.1:{http}")])
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("hub.log")).unwrap())
            .spawn()
            .expect("outpost hub starts");
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", mqtt)).is_ok() {
                return (Hub(child), mqtt);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the hub's broker did not come up");
    }
}

/// Enrols `devices` in `dir/devices.toml` (their keys and passwords beside it).
fn enrol(dir: &Path, devices: &[String]) -> std::path::PathBuf {
    let devices_file = dir.join("devices.toml");
    for device in devices {
        let status = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["hub", "--devices-file"])
            .arg(&devices_file)
            .args(["device", "add", device, "--out"])
            .arg(dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "enrolling {device}");
    }
    devices_file
}

impl Hub {
    /// Hub number `n` on an external broker at `mqtt`, one of a shared group when `shared`,
    /// with `remote_write` in its config: once it has subscribed to the fleet's topics.
    fn on_broker(dir: &Path, n: usize, mqtt: u16, shared: bool, remote_write: &str) -> Hub {
        let config = dir.join(format!("hub-{n}.toml"));
        let group = if shared {
            "shared_group = \"hubs\"\n"
        } else {
            ""
        };
        std::fs::write(
            &config,
            format!(
                "[mqtt]\nembedded = false\nurl = \"mqtt://127.0.0.1:{mqtt}\"\n\
                 username = \"outpost-hub-{n}\"\n{group}[remote_write]\n{remote_write}"
            ),
        )
        .unwrap();
        let child = hub_command()
            .args(["--log", "info", "hub", "--devices-file"])
            .arg(dir.join("devices.toml"))
            .arg("--store")
            .arg(dir.join(format!("hub-{n}.redb")))
            .args([
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--config",
            ])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("hub-{n}.log"))).unwrap())
            .spawn()
            .expect("outpost hub starts");
        let hub = Hub(child);
        let log = dir.join(format!("hub-{n}.log"));
        for _ in 0..400 {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("subscribed to the fleet's topics") {
                return hub;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("hub {n} did not subscribe: {}", log.display());
    }
}

/// Mosquitto for hubs that share the batches: anonymous on loopback (the bench measures the
/// data path, not the ACL, which tests/it/sync.rs checks), with the queue that
/// config/mosquitto.conf gives a hub, so that its share of thousands of batches in flight waits
/// rather than drops.
fn mosquitto(dir: &Path) -> (Peer, u16) {
    let port = free_port();
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 100000\n"
        ),
    )
    .unwrap();
    let args = ["-c".to_string(), config.to_str().unwrap().to_string()];
    (
        Peer::start("mosquitto", &args, port, &dir.join("mosquitto.log")),
        port,
    )
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Forwards connections on its port to `target`, counting the bytes in both directions.
struct Proxy {
    port: u16,
    bytes: Arc<AtomicU64>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = Arc::new(AtomicU64::new(0));
        let counted = bytes.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let upstream = TcpStream::connect(("127.0.0.1", target)).unwrap();
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    let counted = counted.clone();
                    std::thread::spawn(move || {
                        let mut buffer = vec![0u8; 64 << 10];
                        while let Ok(n) = from.read(&mut buffer) {
                            if n == 0 || to.write_all(&buffer[..n]).is_err() {
                                break;
                            }
                            counted.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Proxy { port, bytes }
    }
}

/// One device's MQTT connection: batches out, the hub's acks in.
struct Device {
    name: String,
    key: DeviceKey,
    client: AsyncClient,
    acks: tokio::sync::mpsc::UnboundedReceiver<Ack>,
}

impl Device {
    async fn connect(dir: &Path, name: &str, port: u16) -> Device {
        let key =
            DeviceKey::from_hex(&std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap())
                .unwrap();
        let password = std::fs::read_to_string(dir.join(format!("{name}.password"))).unwrap();
        let mut options = MqttOptions::new(format!("outpost-default-{name}"), "127.0.0.1", port);
        options.set_credentials(name, password.trim());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 64);
        let ack_topic = format!("outpost/v1/default/{name}/ack");
        client
            .subscribe(&ack_topic, QoS::AtLeastOnce)
            .await
            .unwrap();
        let (sender, acks) = tokio::sync::mpsc::unbounded_channel();
        let (device, verify) = (name.to_string(), key.clone());
        let (subscribed, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut subscribed = Some(subscribed);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(ready) = subscribed.take() {
                            let _ = ready.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        if let Ok(ack) = Ack::decode(&publish.payload, &device, &verify) {
                            let _ = sender.send(ack);
                        }
                    }
                    Ok(_) => {}
                    Err(error) => panic!("{device}: MQTT connection: {error}"),
                }
            }
        });
        ready.await.unwrap();
        Device {
            name: name.to_string(),
            key,
            client,
            acks,
        }
    }

    async fn publish(&self, payload: Vec<u8>) {
        self.client
            .publish(
                format!("outpost/v1/default/{}/batch", self.name),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }
}

/// Publishes the payloads `next` gives, at most 8 unacknowledged (as the agent does), handing
/// each ack to `acked`, until `next` has no more and every ack is in. Returns the batches sent.
async fn ship<S>(
    device: &mut Device,
    state: &mut S,
    mut next: impl FnMut(&mut S) -> Option<Vec<u8>>,
    mut acked: impl FnMut(&mut S, Ack),
) -> usize {
    let (mut pending, mut batches) = (0, 0);
    loop {
        while pending < 8 {
            let Some(payload) = next(state) else { break };
            device.publish(payload).await;
            pending += 1;
            batches += 1;
        }
        if pending == 0 {
            return batches;
        }
        let ack = tokio::time::timeout(Duration::from_secs(120), device.acks.recv())
            .await
            .expect("an ack within two minutes")
            .unwrap();
        acked(state, ack);
        pending -= 1;
    }
}

/// Ships what the outbox builds and confirms the acks to the store, until nothing is left.
async fn drain(device: &mut Device, agent: &Store, outbox: &mut Outbox) -> usize {
    ship(
        device,
        outbox,
        |outbox| {
            outbox
                .next_batch(agent, 0, 0, &[])
                .unwrap()
                .map(|(_, payload)| payload.to_vec())
        },
        |outbox, ack| {
            outbox.on_ack(agent, &ack);
        },
    )
    .await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn wire() {
    let dir = tempfile::tempdir().unwrap();
    let name = "wire".to_string();
    let (_hub, mqtt) = Hub::start(dir.path(), std::slice::from_ref(&name));
    let proxy = Proxy::start(mqtt);
    let runtime = runtime();
    let mut device = runtime.block_on(Device::connect(dir.path(), &name, proxy.port));
    let agent = Store::open(dir.path().join("agent.redb"), common::agent_options()).unwrap();
    let mut outbox = common::outbox(&agent, &name, &device.key);
    let rows = common::host_rows();
    let mut batches = 0;
    common::write_in_slices(&agent, &rows, 10_000, || {
        batches += runtime.block_on(drain(&mut device, &agent, &mut outbox));
    });
    // Let the last PUBACKs through the proxy before counting.
    std::thread::sleep(Duration::from_millis(500));
    let bytes = proxy.bytes.load(Ordering::Relaxed);
    println!(
        "wire: {} samples in {batches} batches of 10 s through the hub's broker: {bytes} TCP bytes in both directions, {:.3} bytes/sample",
        rows.len(),
        bytes as f64 / rows.len() as f64
    );
    agent.close().unwrap();
}

fn backfill() {
    let dir = tempfile::tempdir().unwrap();
    let agent = common::backlog_store(&dir.path().join("agent.redb"));
    let name = "backfill".to_string();
    let (_hub, mqtt) = Hub::start(dir.path(), std::slice::from_ref(&name));
    let runtime = runtime();
    let mut device = runtime.block_on(Device::connect(dir.path(), &name, mqtt));
    let mut outbox = common::outbox(&agent, &name, &device.key);
    let samples = agent.stats().unwrap().raw_samples;
    let began = Instant::now();
    let batches = runtime.block_on(drain(&mut device, &agent, &mut outbox));
    let elapsed = began.elapsed().as_secs_f64();
    println!(
        "backfill: {samples} samples in {batches} batches through the hub's broker, all acknowledged in {elapsed:.1} s ({:.2} M samples/s)",
        samples as f64 / elapsed / 1e6
    );
    agent.close().unwrap();
}

fn ingest() {
    let dir = tempfile::tempdir().unwrap();
    let count = 100;
    let names: Vec<String> = (0..count).map(|d| format!("dev-{d:03}")).collect();
    let (_hub, mqtt) = Hub::start(dir.path(), &names);
    let template = hour_batches(dir.path(), usize::MAX, false);
    let (batches, samples, elapsed) = ship_fleet(dir.path(), &names, mqtt, &template);
    println!(
        "ingest: {count} devices over their own MQTT connections, {batches} batches, {samples} samples stored and acknowledged in {elapsed:.1} s: {:.2} M samples/s",
        samples as f64 / elapsed / 1e6
    );
}

/// The hour of host data as 10 s batches (at most `limit`), once: each device re-signs them
/// under its own id and key, as building a store per device would only time the agents.
fn hour_batches(dir: &Path, limit: usize, self_contained: bool) -> Vec<Batch> {
    let template_key = DeviceKey::new(vec![7; 32]).unwrap();
    let agent = Store::open(dir.join("agent.redb"), common::agent_options()).unwrap();
    let mut outbox = if self_contained {
        let options = outpost_sync::outbox::OutboxOptions {
            self_contained: true,
            ..Default::default()
        };
        Outbox::open(&agent, "template", template_key.clone(), "boot", options).unwrap()
    } else {
        common::outbox(&agent, "template", &template_key)
    };
    let mut template = Vec::new();
    let rows = common::host_rows();
    common::write_in_slices(&agent, &rows, 10_000, || {
        while let Some((seq, payload)) = outbox.next_batch(&agent, 0, 0, &[]).unwrap() {
            let batch =
                Batch::decode(&payload, "template", &template_key, &Limits::default()).unwrap();
            outbox.on_ack(
                &agent,
                &Ack {
                    device: "template".into(),
                    epoch: batch.header.epoch,
                    seq,
                    status: AckStatus::Stored {
                        samples: 0,
                        duplicate: false,
                    },
                },
            );
            template.push(batch);
        }
    });
    agent.close().unwrap();
    template.truncate(limit);
    template
}

/// Every device publishes the template's batches (8 in flight each) until each is
/// acknowledged: (batches, samples acknowledged, seconds).
fn ship_fleet(dir: &Path, names: &[String], mqtt: u16, template: &[Batch]) -> (usize, u64, f64) {
    let (batches, samples, elapsed, ()) = ship_fleet_then(dir, names, mqtt, template, || ());
    (batches, samples, elapsed)
}

/// [`ship_fleet`], calling `at_start` once the devices are connected and their payloads
/// signed, just before the first is published.
fn ship_fleet_then<T>(
    dir: &Path,
    names: &[String],
    mqtt: u16,
    template: &[Batch],
    at_start: impl FnOnce() -> T,
) -> (usize, u64, f64, T) {
    // Encoded before the devices connect: the runtime has one thread, so their connections
    // get no keep-alive while this runs, and at 1,000 devices it can take longer than the
    // broker waits (1.5 times the keep-alive) before it drops a silent client.
    let payloads: Vec<Vec<Vec<u8>>> = names
        .iter()
        .map(|name| {
            let key = std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap();
            let key = DeviceKey::from_hex(&key).unwrap();
            template
                .iter()
                .map(|batch| {
                    let mut batch = batch.clone();
                    batch.header.device = name.clone();
                    batch.encode(&key, 3)
                })
                .collect()
        })
        .collect();
    let runtime = runtime();
    let devices: Vec<Device> = runtime.block_on(async {
        let mut devices = Vec::new();
        for name in names {
            devices.push(Device::connect(dir, name, mqtt).await);
        }
        devices
    });
    let started = at_start();
    let began = Instant::now();
    let samples: u64 = runtime.block_on(async {
        let mut tasks = Vec::new();
        for (mut device, payloads) in devices.into_iter().zip(payloads) {
            tasks.push(tokio::spawn(async move {
                let mut samples = 0u64;
                let mut payloads = payloads.into_iter();
                ship(
                    &mut device,
                    &mut samples,
                    |_| payloads.next(),
                    |samples, ack| {
                        if let AckStatus::Stored { samples: n, .. } = ack.status {
                            *samples += n;
                        }
                    },
                )
                .await;
                samples
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        total
    });
    (
        template.len() * names.len(),
        samples,
        began.elapsed().as_secs_f64(),
        started,
    )
}

/// A process of the engine's side (VictoriaMetrics, vmagent), killed when dropped.
struct Peer(Child);

impl Peer {
    fn start(program: &str, args: &[String], port: u16, log: &Path) -> Peer {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} ({e}): apt-get install victoria-metrics"));
        let peer = Peer(child);
        for _ in 0..400 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return peer;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{program} did not come up");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process's CPU seconds so far (user and system) and its peak resident memory, MiB.
fn cpu_and_peak(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    (ticks / 100.0, peak / 1024.0)
}

/// A counter of VictoriaMetrics' own `/metrics`, summed over its label sets.
fn vm_counter(port: u16, name: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, &[], &[])
}

/// One HTTP/1.1 exchange on a connection of its own.
fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The hub as a bridge to remote storage, against vmagent forwarding the same samples: DEVICES
/// devices (default 100) publish the first MINUTES (default 20) of the host hour as 10 s
/// batches to a hub with `[remote_write]` to VictoriaMetrics; each batch is acknowledged only
/// after the engine's 2xx. Then vmagent receives the same samples as remote_write requests (one
/// per batch, 8 devices' worth at a time) and forwards them to the same engine. Each side's CPU
/// seconds per million samples and its peak RSS.
fn remote() {
    let dir = tempfile::tempdir().unwrap();
    let count: usize = std::env::var("DEVICES").map_or(100, |v| v.parse().unwrap());
    let minutes: usize = std::env::var("MINUTES").map_or(20, |v| v.parse().unwrap());
    let names: Vec<String> = (0..count).map(|d| format!("dev-{d:04}")).collect();
    let vm_port = free_port();
    let _engine = Peer::start(
        "victoria-metrics",
        &[
            format!("-storageDataPath={}", dir.path().join("vm").display()),
            format!("-httpListenAddr=127.0.0.1:{vm_port}"),
            "-retentionPeriod=100y".into(),
            "-dedup.minScrapeInterval=1ms".into(),
        ],
        vm_port,
        &dir.path().join("vm.log"),
    );
    let remote_write = format!("url = \"http://127.0.0.1:{vm_port}/api/v1/write\"\n");
    let hub_count: usize = std::env::var("HUBS").map_or(1, |v| v.parse().unwrap());
    let on_mosquitto = hub_count > 1 || std::env::var("BROKER").is_ok_and(|b| b == "mosquitto");
    let (broker, hubs, mqtt) = if on_mosquitto {
        enrol(dir.path(), &names);
        let (broker, port) = mosquitto(dir.path());
        let hubs: Vec<Hub> = (1..=hub_count)
            .map(|n| Hub::on_broker(dir.path(), n, port, hub_count > 1, &remote_write))
            .collect();
        (Some(broker), hubs, port)
    } else {
        let config = dir.path().join("hub.toml");
        std::fs::write(&config, format!("[remote_write]\n{remote_write}")).unwrap();
        let (hub, port) =
            Hub::start_with(dir.path(), &names, &["--config", config.to_str().unwrap()]);
        (None, vec![hub], port)
    };
    // Hubs sharing the batches cannot rely on an earlier batch's series definitions: agents
    // set to `shared_hubs` define every series in every batch (SELF_CONTAINED=1 with one hub,
    // to compare one hub with two on the same batches).
    let self_contained = hub_count > 1 || std::env::var("SELF_CONTAINED").is_ok_and(|v| v == "1");
    let template = hour_batches(dir.path(), minutes * 6, self_contained);
    let inserted = |port| vm_counter(port, "vm_rows_inserted_total{type=\"promremotewrite\"}");
    let cpu_of = |hubs: &[Hub]| -> (f64, Vec<f64>) {
        let each: Vec<(f64, f64)> = hubs.iter().map(|hub| cpu_and_peak(hub.0.id())).collect();
        (
            each.iter().map(|e| e.0).sum(),
            each.iter().map(|e| e.1).collect(),
        )
    };
    // CPU seconds from the first publish on; the devices and the engine share the cores.
    let cpu_now = |hubs: &[Hub], broker: &Option<Peer>| {
        (
            cpu_of(hubs).0,
            broker.as_ref().map(|b| cpu_and_peak(b.0.id()).0),
            cpu_and_peak(_engine.0.id()).0,
            cpu_and_peak(std::process::id()).0,
        )
    };
    let (batches, samples, elapsed, before) =
        ship_fleet_then(dir.path(), &names, mqtt, &template, || {
            cpu_now(&hubs, &broker)
        });
    let (cpu_before, broker_before, engine_before, devices_before) = before;
    let (cpu_after, hub_peaks) = cpu_of(&hubs);
    let engine_cpu = cpu_and_peak(_engine.0.id()).0 - engine_before;
    let devices_cpu = cpu_and_peak(std::process::id()).0 - devices_before;
    let broker_cpu = broker
        .as_ref()
        .zip(broker_before)
        .map(|(b, before)| cpu_and_peak(b.0.id()).0 - before);
    let hub_cpu = cpu_after - cpu_before;
    let hub_peak = hub_peaks.iter().copied().fold(0.0, f64::max);
    assert!(
        inserted(vm_port) >= samples as f64,
        "the engine has fewer rows than were acknowledged"
    );
    drop(hubs);
    drop(broker);

    // The same samples as remote_write requests, under the same `instance` labels.
    // Series are defined in the first batch that carries them.
    let keys: std::collections::HashMap<u32, String> = template
        .iter()
        .flat_map(|batch| batch.body.defs.iter().map(|d| (d.id, d.key.to_string())))
        .collect();
    let requests: Vec<Vec<u8>> = names
        .iter()
        .flat_map(|name| template.iter().map(move |batch| (name, batch)))
        .map(|(name, batch)| {
            outpost::prompb::encode_request(&batch_request(batch, &keys, name)).unwrap()
        })
        .collect();
    let agent_port = free_port();
    let vmagent = Peer::start(
        "vmagent",
        &[
            format!("-httpListenAddr=127.0.0.1:{agent_port}"),
            format!("-remoteWrite.url=http://127.0.0.1:{vm_port}/api/v1/write"),
            format!(
                "-remoteWrite.tmpDataPath={}",
                dir.path().join("vmagent").display()
            ),
        ],
        agent_port,
        &dir.path().join("vmagent.log"),
    );
    let before = inserted(vm_port);
    let (cpu_before, _) = cpu_and_peak(vmagent.0.id());
    let began = Instant::now();
    let next = std::sync::Mutex::new(requests.iter());
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| loop {
                let Some(body) = next.lock().unwrap().next() else {
                    break;
                };
                let headers = [
                    "Content-Encoding: snappy",
                    "Content-Type: application/x-protobuf",
                ];
                let (status, text) =
                    http_request(agent_port, "POST", "/api/v1/write", &headers, body);
                assert!((200..300).contains(&status), "vmagent: {status} {text}");
            });
        }
    });
    while inserted(vm_port) < before + samples as f64 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let vmagent_elapsed = began.elapsed().as_secs_f64();
    let (cpu_after, vmagent_peak) = cpu_and_peak(vmagent.0.id());
    let vmagent_cpu = cpu_after - cpu_before;
    let millions = samples as f64 / 1e6;
    let through = if on_mosquitto {
        format!("{hub_count} hub(s) on Mosquitto")
    } else {
        "one hub, its embedded broker".into()
    };
    println!(
        "remote: {count} devices, {batches} batches, {samples} samples from MQTT to the engine's \
         2xx, {through}; peak RSS is the largest hub's"
    );
    println!(
        "while the hubs ran: the engine {engine_cpu:.1} CPU s, the devices (this bench) \
         {devices_cpu:.1} CPU s, in {elapsed:.1} s on {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if let Some(cpu) = broker_cpu {
        println!(
            "Mosquitto: {cpu:.1} CPU s ({:.2} per M samples)",
            cpu / (samples as f64 / 1e6)
        );
    }
    println!("| forwarder | wall s | M samples/s | CPU s | CPU s per M samples | peak RSS MiB |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| outpost hub | {elapsed:.1} | {:.2} | {hub_cpu:.1} | {:.2} | {hub_peak:.0} |",
        millions / elapsed,
        hub_cpu / millions
    );
    println!(
        "| vmagent | {vmagent_elapsed:.1} | {:.2} | {vmagent_cpu:.1} | {:.2} | {vmagent_peak:.0} |",
        millions / vmagent_elapsed,
        vmagent_cpu / millions
    );
    println!(
        "hub CPU per sample / vmagent's: {:.2}",
        hub_cpu / vmagent_cpu
    );
}

/// A batch's samples as a remote_write request, its series named as the hub names them.
fn batch_request(
    batch: &Batch,
    keys: &std::collections::HashMap<u32, String>,
    device: &str,
) -> outpost::prompb::WriteRequest {
    use outpost::prompb::{Sample, TimeSeries, WriteRequest};
    assert!(
        batch.body.chunks.is_empty(),
        "the template is live data only"
    );
    let mut timeseries = Vec::new();
    for live in &batch.body.live {
        let key = outpost_storage::SeriesKey::parse(&keys[&live.series]).unwrap();
        // As the hub names it: `instance` is the device.
        let key = outpost_sync::ingest::hub_key(device, &key).unwrap();
        let (timestamps, values) = outpost_storage::codec::decode_samples(live.samples).unwrap();
        let labels = outpost::prompb::labels_of(&key, key.name());
        let samples = timestamps
            .into_iter()
            .zip(values)
            .map(|(timestamp, value)| Sample { value, timestamp })
            .collect();
        timeseries.push(TimeSeries { labels, samples });
    }
    WriteRequest { timeseries }
}

fn main() {
    common::run_selected(&[("wire", wire), ("backfill", backfill), ("ingest", ingest)]);
    // Only when named: it needs VictoriaMetrics and vmagent.
    if std::env::args().skip(1).any(|a| a == "remote") {
        remote();
    }
}
