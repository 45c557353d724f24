//! A device whose wall clock steps, simulated end to end with the real parts: the agent's store,
//! its clock watch (which records steps) and outbox, the hub's ingestor and store. Time is
//! simulated; each sample's value is the true time it was written at, so that the hub's placing
//! of it can be checked exactly. Steps come in any order and size (minutes to days, forward and
//! back, several per batch interval), while the hub is reachable or not, and across agent
//! restarts; every sample must land at its true time.

use std::time::{Duration, Instant};

use outpost_storage::{Options, Selector, SeriesKey, Store, WriteBatch};
use outpost_sync::clock::ClockWatch;
use outpost_sync::ingest::Ingestor;
use outpost_sync::outbox::{Outbox, OutboxOptions};
use outpost_sync::{Ack, Batch, DeviceKey, Limits};
use proptest::prelude::*;

/// The real time at which the simulated device booted: 2026-12-01.
const BOOT_TRUE_MS: i64 = 1_796_083_200_000;
const SAMPLE_EVERY_MS: i64 = 250;
/// What the network takes from device to hub: the hub measures a wrong clock only this well.
const TRANSIT_MS: i64 = 40;

/// One stretch of the simulation.
#[derive(Debug, Clone)]
struct Phase {
    /// The device's clock minus true time during this phase.
    offset_ms: i64,
    duration_ms: i64,
    /// Whether batches reach the hub.
    online: bool,
    /// Whether the agent restarts at the start of the phase (the clock steps while it is down).
    restart: bool,
}

struct Device {
    dir: tempfile::TempDir,
    store: Store,
    watch: ClockWatch,
    outbox: Outbox,
    key: DeviceKey,
}

fn agent_options() -> Options {
    Options {
        track_changes: true,
        // A small head: seals while the hub is away make backlog chunks.
        max_head_samples: 400,
        ..Options::default()
    }
}

impl Device {
    fn start(true_ms: i64, offset_ms: i64) -> Device {
        let key = DeviceKey::new(vec![9; 32]).unwrap();
        Device::open(tempfile::tempdir().unwrap(), key, true_ms, offset_ms)
    }

    /// The agent stops and starts again (same boot), its clock now `offset_ms` off.
    fn restart(self, true_ms: i64, offset_ms: i64) -> Device {
        let Device {
            dir, store, key, ..
        } = self;
        store.close().unwrap();
        Device::open(dir, key, true_ms, offset_ms)
    }

    /// The agent's start: its store, its record of the clock (which finds a step made while it
    /// was stopped) and a new outbox epoch.
    fn open(dir: tempfile::TempDir, key: DeviceKey, true_ms: i64, offset_ms: i64) -> Device {
        let store = Store::open(dir.path().join("agent.redb"), agent_options()).unwrap();
        let (wall, uptime) = clocks(true_ms, offset_ms);
        let watch = ClockWatch::open(&store, "boot-1", wall, uptime).unwrap();
        let options = OutboxOptions::default();
        let outbox = Outbox::open(&store, "dev", key.clone(), "boot-1", options).unwrap();
        Device {
            dir,
            store,
            watch,
            outbox,
            key,
        }
    }
}

/// The device's wall clock and time since boot at true time `true_ms`.
fn clocks(true_ms: i64, offset_ms: i64) -> (i64, u64) {
    (true_ms + offset_ms, (true_ms - BOOT_TRUE_MS) as u64)
}

struct Hub {
    store: Store,
    ingestor: Ingestor,
    implausible: u64,
}

impl Hub {
    fn receive(&mut self, payload: &[u8], key: &DeviceKey, true_ms: i64) -> Ack {
        let batch = Batch::decode(payload, "dev", key, &Limits::default()).unwrap();
        let ingested = self
            .ingestor
            .ingest(&self.store, &batch, true_ms + TRANSIT_MS)
            .unwrap();
        self.implausible += ingested.implausible;
        Ack {
            device: "dev".into(),
            epoch: batch.header.epoch,
            seq: batch.header.seq,
            status: ingested.status,
        }
    }
}

/// Runs the phases, then stays online two more minutes with the clock `final_offset_ms` off and
/// ships everything. Returns the hub's samples as (stored timestamp, true time written) and the
/// hub's implausible count.
fn run(phases: &[Phase], final_offset_ms: i64, batch_every_ms: i64) -> (Vec<(i64, i64)>, u64) {
    let mut true_ms = BOOT_TRUE_MS + 3_600_000;
    let mut device = Device::start(true_ms, phases[0].offset_ms);
    let hub_dir = tempfile::tempdir().unwrap();
    let mut hub = Hub {
        store: Store::open(hub_dir.path().join("hub.redb"), Options::default()).unwrap(),
        ingestor: Ingestor::new(),
        implausible: 0,
    };
    let settle = Phase {
        offset_ms: final_offset_ms,
        duration_ms: 120_000,
        online: true,
        restart: false,
    };
    let mut resend_clock = Instant::now();
    let probe = SeriesKey::parse("probe").unwrap();
    for phase in phases.iter().chain(std::iter::once(&settle)) {
        if phase.restart {
            device = device.restart(true_ms, phase.offset_ms);
        }
        let end = true_ms + phase.duration_ms;
        let mut next_observe = true_ms;
        let mut next_batch = true_ms;
        while true_ms < end {
            let (wall, uptime) = clocks(true_ms, phase.offset_ms);
            if true_ms >= next_observe {
                device.watch.observe(&device.store, wall, uptime).unwrap();
                next_observe += 1_000;
            }
            // The sample: stamped by the device's clock, its value the true time.
            let id = device.store.series_id(&probe).unwrap();
            let mut write = WriteBatch::default();
            write.sample(id, wall, true_ms as f64);
            device.store.write(write).unwrap();
            if true_ms >= next_batch {
                next_batch += batch_every_ms;
                if phase.online {
                    device.watch.observe(&device.store, wall, uptime).unwrap();
                    resend_clock += Duration::from_millis(batch_every_ms as u64);
                    let steps = device.watch.steps().to_vec();
                    let mut payloads: Vec<Vec<u8>> = device
                        .outbox
                        .due_resends(
                            resend_clock,
                            Duration::from_secs(30),
                            (wall, uptime, &steps),
                        )
                        .into_iter()
                        .map(|(_, p)| p.to_vec())
                        .collect();
                    while let Some((_, payload)) = device
                        .outbox
                        .next_batch(&device.store, wall, uptime, &steps)
                        .unwrap()
                    {
                        payloads.push(payload.to_vec());
                    }
                    for payload in payloads {
                        let ack = hub.receive(&payload, &device.key, true_ms);
                        device.outbox.on_ack(&device.store, &ack);
                    }
                } else {
                    // Offline long enough for seals: what waits becomes backlog chunks.
                    device.store.seal().unwrap();
                }
            }
            true_ms += SAMPLE_EVERY_MS;
        }
    }
    device.store.seal().unwrap();
    let (wall, uptime) = clocks(true_ms, final_offset_ms);
    for _ in 0..1000 {
        let steps = device.watch.steps().to_vec();
        let Some((_, payload)) = device
            .outbox
            .next_batch(&device.store, wall, uptime, &steps)
            .unwrap()
        else {
            break;
        };
        let ack = hub.receive(&payload, &device.key, true_ms);
        device.outbox.on_ack(&device.store, &ack);
    }
    assert_eq!(device.outbox.in_flight(), 0);
    let stored = hub
        .store
        .query_raw(&Selector::parse("probe").unwrap(), i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.points)
        .map(|(ts, value)| (ts, value as i64))
        .collect();
    (stored, hub.implausible)
}

/// Every sample written is at the hub, at its true time within `tolerance_ms`.
fn assert_placed(phases: &[Phase], stored: &[(i64, i64)], tolerance_ms: i64) {
    let written: i64 = phases.iter().map(|p| p.duration_ms).sum::<i64>() + 120_000;
    let expected = written / SAMPLE_EVERY_MS;
    assert!(
        stored.len() as i64 >= expected,
        "{} of {expected} samples at the hub ({phases:?})",
        stored.len()
    );
    for &(ts, true_ms) in stored {
        assert!(
            (ts - true_ms).abs() <= tolerance_ms,
            "a sample written at {true_ms} stored at {ts}, {} ms off ({phases:?})",
            ts - true_ms
        );
    }
}

fn phase(offset_ms: i64, duration_ms: i64) -> Phase {
    Phase {
        offset_ms,
        duration_ms,
        online: true,
        restart: false,
    }
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The steps that misplaced samples on the agent in issue 18: -3 h, +0, +2 h, -1 h, +0 a minute
/// apart. The final clock is right, so everything is placed exactly.
#[test]
fn the_reported_pattern_places_every_sample_at_its_true_time() {
    let phases: Vec<Phase> = [-3 * HOUR, 0, 2 * HOUR, -HOUR, 0]
        .into_iter()
        .map(|offset| phase(offset, MINUTE))
        .collect();
    let (stored, implausible) = run(&phases, 0, 10_000);
    assert_placed(&phases, &stored, TRANSIT_MS);
    assert_eq!(implausible, 0);
}

/// A clock that ends wrong: the hub measures the last clock by the send time, so what every
/// earlier clock wrote is placed within the network's delay.
#[test]
fn a_clock_that_ends_wrong_is_measured_by_the_hub() {
    let phases: Vec<Phase> = [-400 * DAY, 2 * HOUR, -5 * MINUTE, 3 * DAY]
        .into_iter()
        .map(|offset| phase(offset, 30_000))
        .collect();
    // The run ends on the last phase's clock, still three days ahead.
    let (stored, implausible) = run(&phases, 3 * DAY, 10_000);
    assert_placed(&phases, &stored, TRANSIT_MS);
    assert_eq!(implausible, 0);
}

/// Clocks off by multiples of ten minutes, from ten minutes to days: any two different ones are
/// further apart than a whole run lasts, so that no two clocks write the same timestamps (see
/// `a_small_step_back_misplaces_only_what_both_clocks_wrote` for when they do).
fn offsets() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        (-3i64..=3).prop_map(|d| d * DAY),
        (-12i64..=12).prop_map(|h| h * HOUR),
        (-5i64..=5).prop_map(|m| m * 10 * MINUTE),
    ]
}

fn phases() -> impl Strategy<Value = Vec<Phase>> {
    proptest::collection::vec(
        (
            offsets(),
            // Several steps per batch interval, up to a few batches per step.
            (500i64..40_000).prop_map(|ms| ms / SAMPLE_EVERY_MS * SAMPLE_EVERY_MS),
            prop::bool::weighted(0.75),
            prop::bool::weighted(0.15),
        )
            .prop_map(|(offset_ms, duration_ms, online, restart)| Phase {
                offset_ms,
                duration_ms: duration_ms.max(SAMPLE_EVERY_MS),
                online,
                restart,
            }),
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any sequence of steps, several per batch interval or one in several batches, with
    /// outages and restarts anywhere: every sample at its true time (the hub measures a clock
    /// that was wrong while it sent within the network's delay).
    #[test]
    fn any_steps_outages_and_restarts_place_every_sample(phases in phases()) {
        let (stored, implausible) = run(&phases, 0, 10_000);
        assert_placed(&phases, &stored, TRANSIT_MS);
        prop_assert_eq!(implausible, 0);
    }
}

/// A clock stepped back by less than it had run writes again timestamps it wrote before: those
/// of the last 90 s before the step (and of the second before the step was seen). Which clock
/// wrote such a timestamp cannot be told from it; the hub takes the later clock, so samples of
/// the old one in those 90 s land up to 90 s off. Everything else lands exactly.
#[test]
fn a_small_step_back_misplaces_only_what_both_clocks_wrote() {
    // Not a whole number of sampling intervals: a timestamp written twice to one series would
    // keep only the later sample, in the agent's store as in any other.
    // More than the hub's 60 s tolerance, under which a clock counts as right.
    let back = 90_125;
    let phases = [phase(back, 2 * MINUTE), phase(0, 2 * MINUTE)];
    let (stored, implausible) = run(&phases, 0, 10_000);
    assert_placed(&phases, &stored, back + TRANSIT_MS);
    let step_at = BOOT_TRUE_MS + 3_600_000 + 2 * MINUTE;
    for &(ts, true_ms) in &stored {
        let ambiguous = (step_at - back - 1_000..step_at).contains(&true_ms);
        assert!(
            ambiguous || (ts - true_ms).abs() <= TRANSIT_MS,
            "written at {true_ms}, stored at {ts}"
        );
    }
    assert_eq!(implausible, 0);
}
