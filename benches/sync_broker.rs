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
//! `cargo bench --bench sync_broker -- [wire] [backfill] [ingest]`

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

impl Hub {
    fn start(dir: &Path, devices: &[String]) -> (Hub, u16) {
        let outpost = env!("CARGO_BIN_EXE_outpost");
        let devices_file = dir.join("devices.toml");
        for device in devices {
            let status = Command::new(outpost)
                .args(["hub", "--devices-file"])
                .arg(&devices_file)
                .args(["device", "add", device, "--out"])
                .arg(dir)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "enrolling {device}");
        }
        let (http, mqtt) = (free_port(), free_port());
        let mut child = Command::new(outpost)
            .args(["--log", "warn", "hub", "--devices-file"])
            .arg(&devices_file)
            .arg("--store")
            .arg(dir.join("hub.redb"))
            .args(["--listen", &format!("127.0.0.1:{http}")])
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
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
    // The hour as 10 s batches once, then re-signed under each device's id and key: building
    // 100 agents' stores here would only time the agents.
    let template_key = DeviceKey::new(vec![7; 32]).unwrap();
    let agent = Store::open(dir.path().join("agent.redb"), common::agent_options()).unwrap();
    let mut outbox = common::outbox(&agent, "template", &template_key);
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
    let runtime = runtime();
    let devices: Vec<Device> = runtime.block_on(async {
        let mut devices = Vec::new();
        for name in &names {
            devices.push(Device::connect(dir.path(), name, mqtt).await);
        }
        devices
    });
    let payloads: Vec<Vec<Vec<u8>>> = devices
        .iter()
        .map(|device| {
            template
                .iter()
                .map(|batch| {
                    let mut batch = batch.clone();
                    batch.header.device = device.name.clone();
                    batch.encode(&device.key, 3)
                })
                .collect()
        })
        .collect();
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
    let elapsed = began.elapsed().as_secs_f64();
    println!(
        "ingest: {count} devices over their own MQTT connections, {} batches, {samples} samples stored and acknowledged in {elapsed:.1} s: {:.2} M samples/s",
        template.len() * count,
        samples as f64 / elapsed / 1e6
    );
}

fn main() {
    common::run_selected(&[("wire", wire), ("backfill", backfill), ("ingest", ingest)]);
}
