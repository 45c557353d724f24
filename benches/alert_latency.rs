//! Latency from the sample that makes an alert's condition true to its firing event reaching an
//! MQTT subscriber, through a real Mosquitto and a release agent at the default 1 s evaluation
//! interval. `cargo bench --bench alert_latency [-- ROUNDS]`. Target: at most one evaluation
//! interval plus 100 ms. Needs Debian's `mosquitto`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn push(port: u16, body: &str) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST /api/v1/import/prometheus HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let mqtt_port = free_port();
    std::fs::write(
        dir.path().join("mosquitto.conf"),
        format!("listener {mqtt_port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();
    let mut broker = Command::new("mosquitto")
        .arg("-c")
        .arg(dir.path().join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Debian's mosquitto");
    let outpost = env!("CARGO_BIN_EXE_outpost");
    let status = Command::new(outpost)
        .args(["hub", "--devices-file"])
        .arg(dir.path().join("devices.toml"))
        .args(["device", "add", "bench", "--out"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rule]]\nname = \"lat\"\nselect = \"bench_value\"\nthreshold = 0\nwindow = \"1h\"\n",
    )
    .unwrap();
    let http_port = free_port();
    let config = format!(
        "[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n\
         [mqtt]\nenabled = true\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\ndevice = \"bench\"\n\
         key_file = \"{dir}/bench.key\"\npassword_file = \"{dir}/bench.password\"\n\
         [alerts]\ndefault_rules = false\nrules = [\"{dir}/rules.toml\"]\n",
        dir = dir.path().display()
    );
    std::fs::write(dir.path().join("agent.toml"), config).unwrap();
    let mut agent = Command::new(outpost)
        .args(["agent", "--config"])
        .arg(dir.path().join("agent.toml"))
        .args(["--listen", &format!("127.0.0.1:{http_port}"), "--store"])
        .arg(dir.path().join("agent.redb"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", http_port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "agent did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut options = rumqttc::MqttOptions::new("latency-bench", "127.0.0.1", mqtt_port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = rumqttc::Client::new(options, 64);
    client
        .subscribe("outpost/v1/+/+/alerts/events", rumqttc::QoS::AtLeastOnce)
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for event in connection.iter() {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = event {
                let json: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                let _ = tx.send((Instant::now(), json["state"].as_str().unwrap().to_string()));
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut latencies = Vec::new();
    for round in 0..rounds {
        // Off a tick boundary by a different amount each round.
        std::thread::sleep(Duration::from_millis(137 * round as u64 % 1000));
        let t0 = Instant::now();
        push(http_port, "bench_value 1\n");
        let (at, state) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("firing event");
        assert_eq!(state, "firing");
        latencies.push(at - t0);
        push(http_port, "bench_value 0\n");
        let (_, state) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("resolved event");
        assert_eq!(state, "resolved");
    }
    for child in [&mut agent, &mut broker] {
        let _ = child.kill();
        let _ = child.wait();
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "alert latency over {rounds} firings, 1 s interval: min {:.0} ms, p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms (target: max <= 1100 ms)",
        ms(latencies[0]),
        ms(pick(0.5)),
        ms(pick(0.95)),
        ms(*latencies.last().unwrap())
    );
}
