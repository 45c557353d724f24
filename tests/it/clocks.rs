//! Wall-clock steps on real agents: five agents under libfaketime, each stepping its clock in its
//! own pattern (the one reported in issue 18, days forward and back, several steps per batch
//! interval, a step made while the agent was stopped, a clock that ends wrong), with the hub away
//! for part of it. The test pushes each agent, four times a second, a sample without a timestamp
//! whose value is the real time: the agent stamps it by its faked clock, and the hub must store
//! it at the real time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::agent::{db_query, free_port, http, metric_value, wait_until, Agent};
use crate::sync::{device_record, enrol, libfaketime, Hub};

/// How long each phase of the patterns lasts.
const PHASE: Duration = Duration::from_secs(4);
/// What the test allows between a sample's real time and where the hub stores it: the time from
/// the test's reading of the clock to the agent's, and the network delay by which the hub
/// measures a clock that is wrong when it sends.
const TOLERANCE_MS: i64 = 1_000;

struct Subject {
    device: &'static str,
    /// The clock's offset in each phase, as libfaketime reads it.
    offsets: [&'static str; 6],
    /// The agent is stopped before this phase and started again in it (the step happens while
    /// it is down).
    restart_at: Option<usize>,
    dir: PathBuf,
    clock: PathBuf,
    config: String,
    agent: Option<Agent>,
    pushed: usize,
}

impl Subject {
    fn env<'a>(&'a self, lib: &'a str) -> [(&'a str, &'a str); 4] {
        [
            ("LD_PRELOAD", lib),
            ("FAKETIME_TIMESTAMP_FILE", self.clock.to_str().unwrap()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ]
    }

    fn start(&mut self, lib: &str) {
        let env = self.env(lib);
        self.agent = Some(Agent::start_with_env(&self.dir, &self.config, &[], &env));
    }

    fn set_clock(&self, phase: usize) {
        std::fs::write(&self.clock, format!("{}\n", self.offsets[phase])).unwrap();
    }

    /// One sample whose value is the real time, stamped by the agent's clock.
    fn push(&mut self) {
        let Some(agent) = &self.agent else { return };
        let body = format!("truth {}\n", outpost::timearg::now_ms());
        let (status, text) = http(agent.port, "POST", "/api/v1/import/prometheus", &body);
        assert_eq!(status, 204, "{}: {text}", self.device);
        self.pushed += 1;
    }
}

fn subjects(root: &Path, mqtt_port: u16) -> Vec<Subject> {
    let patterns: [(&str, [&str; 6], Option<usize>); 5] = [
        ("dev-1", ["-3h", "+0", "+2h", "-1h", "+0", "+0"], None),
        ("dev-2", ["+2d", "-1d", "+3d", "-2d", "+0", "+0"], None),
        // Batches every 10 s: two or three steps in each.
        ("dev-3", ["+10m", "-20m", "+1h", "-2h", "+30m", "+0"], None),
        ("dev-4", ["+1d", "+1d", "-3h", "-3h", "+0", "+0"], Some(2)),
        (
            "dev-5",
            ["-400d", "-400d", "+2h", "+5h", "+5h", "+5h"],
            None,
        ),
    ];
    patterns
        .into_iter()
        .map(|(device, offsets, restart_at)| {
            let dir = root.join(device);
            std::fs::create_dir(&dir).unwrap();
            let mut mqtt = enrol(root, device, mqtt_port);
            if device == "dev-3" {
                mqtt = mqtt.replace("batch_interval = \"200ms\"", "batch_interval = \"10s\"");
            }
            let config = format!(
                "[agent]\nself_interval = \"1s\"\n[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n[alerts]\nenabled = false\n{mqtt}"
            );
            Subject {
                device,
                offsets,
                restart_at,
                clock: dir.join("faketime"),
                dir,
                config,
                agent: None,
                pushed: 0,
            }
        })
        .collect()
}

#[test]
fn five_step_patterns_under_libfaketime_land_every_sample_at_its_real_time() {
    let root = tempfile::tempdir().unwrap();
    let started_ms = outpost::timearg::now_ms();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mut subjects = subjects(root.path(), mqtt_port);
    let lib = libfaketime();
    let lib = lib.to_str().unwrap();
    let mut hub = Some(Hub::start(root.path(), http_port, mqtt_port));
    for subject in &mut subjects {
        subject.set_clock(0);
        subject.start(lib);
    }
    for phase in 0..6 {
        // The hub is away for phases 2 and 3: the agents keep what they collect.
        if phase == 2 {
            hub.take().unwrap().stop();
        }
        if phase == 4 {
            hub = Some(Hub::start(root.path(), http_port, mqtt_port));
        }
        for subject in &mut subjects {
            if subject.restart_at == Some(phase) {
                subject.agent.take().unwrap().stop();
                subject.set_clock(phase);
                subject.start(lib);
            } else {
                subject.set_clock(phase);
            }
        }
        // Time passing is what is tested here: a sample from every agent each 250 ms.
        for _ in 0..PHASE.as_millis() / 250 {
            for subject in &mut subjects {
                subject.push();
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    // Two batches acknowledged after the last push: the later was built after it, so holds it.
    let acked = |agent: &Agent| {
        metric_value(&agent.metrics(), "outpost_sync_batches_acked_total").unwrap_or(0.0)
    };
    let acked_at_end: Vec<f64> = subjects
        .iter()
        .map(|s| acked(s.agent.as_ref().unwrap()))
        .collect();
    for (subject, before) in subjects.iter().zip(acked_at_end) {
        let agent = subject.agent.as_ref().unwrap();
        wait_until(
            &format!("{} to ship everything", subject.device),
            Duration::from_secs(60),
            || {
                let metrics = agent.metrics();
                (metric_value(&metrics, "outpost_sync_batches_acked_total")? >= before + 2.0
                    && metric_value(&metrics, "outpost_sync_backlog_chunks") == Some(0.0)
                    && metric_value(&metrics, "outpost_sync_in_flight_batches") == Some(0.0))
                .then_some(())
            },
        );
    }
    for subject in &subjects {
        check_last_step_reported(subject, started_ms);
    }
    let hub = hub.unwrap();
    let devices = hub.devices();
    for subject in &mut subjects {
        subject.agent.take().unwrap().stop();
    }
    hub.stop();

    let stored = db_query(&root.path().join("hub.redb"), "truth", &[]);
    for subject in &subjects {
        let points: Vec<&Value> = stored
            .iter()
            .filter(|(key, _)| key.contains(&format!("instance=\"{}\"", subject.device)))
            .flat_map(|(_, points)| points)
            .collect();
        assert_eq!(
            points.len(),
            subject.pushed,
            "{}: every sample at the hub",
            subject.device
        );
        for point in points {
            let ts = point[0].as_i64().unwrap();
            let real: f64 = point[1].as_str().unwrap().parse().unwrap();
            if (ts - real as i64).abs() > TOLERANCE_MS {
                // What the agent saw of its clock, for whoever reads the failure.
                let log = std::fs::read_to_string(subject.dir.join("agent.log"));
                eprintln!("{}'s log:\n{}", subject.device, log.unwrap_or_default());
            }
            assert!(
                (ts - real as i64).abs() <= TOLERANCE_MS,
                "{} (clocks {:?}): a sample taken at {real} is stored at {ts}, {} ms off",
                subject.device,
                subject.offsets,
                ts - real as i64
            );
        }
        let record = device_record(&devices, subject.device).unwrap();
        assert_eq!(record["implausible_samples"], 0, "{record}");
    }
}

/// A libfaketime offset ("+2h", "-400d") in seconds.
fn offset_seconds(offset: &str) -> f64 {
    let (number, unit) = offset.split_at(offset.len() - 1);
    let scale = match unit {
        "d" => 86_400.0,
        "h" => 3_600.0,
        "m" => 60.0,
        _ => return offset.parse().unwrap(),
    };
    number.parse::<f64>().unwrap() * scale
}

/// The agent's self-metrics name its clock's last step (the dashboard marks it on the charts):
/// by how much, and when by the clock corrected.
fn check_last_step_reported(subject: &Subject, started_ms: i64) {
    let seconds: Vec<f64> = subject.offsets.iter().map(|o| offset_seconds(o)).collect();
    let last_step = seconds
        .windows(2)
        .filter(|pair| pair[0] != pair[1])
        .map(|pair| pair[1] - pair[0])
        .next_back()
        .unwrap();
    let metrics = subject.agent.as_ref().unwrap().metrics();
    let reported = metric_value(&metrics, "outpost_clock_last_step_seconds");
    assert!(
        reported.is_some_and(|r| (r - last_step).abs() <= 2.0),
        "{}: last step {last_step} s, reported {reported:?}",
        subject.device
    );
    if seconds[5] == 0.0 {
        let at = metric_value(&metrics, "outpost_clock_last_step_timestamp_seconds").unwrap();
        let at_ms = (at * 1000.0) as i64;
        assert!(
            (started_ms..=outpost::timearg::now_ms()).contains(&at_ms),
            "{}: the last step is reported at {at_ms}, outside the test's run",
            subject.device
        );
    }
}
