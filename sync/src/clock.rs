//! Steps of the device's wall clock, seen from the device. A Jetson without a charged RTC
//! battery boots with a clock that is wrong (1970, or the time the image was built) until NTP
//! sets it; the samples written before that carry wrong timestamps.
//!
//! The wall clock minus the time since boot is the wall time of the boot: constant while the
//! clock only runs (NTP slews it by at most 500 ppm), and it moves by the size of any step. So
//! the device notices a step by watching that one number, and records which of its own
//! timestamps were written by the clock before the step, and by how much they are off. The
//! steps go to the hub in the batch headers that carry such timestamps, and the hub corrects
//! them. The record is kept in the store, so that a step made while the agent was not running
//! is noticed at its next start within the same boot.

use outpost_storage::{Store, WriteBatch};

use crate::state_keys::AgentKey;
use serde::{Deserialize, Serialize};

use crate::message::ClockStep;

/// A change of the boot's wall time under this is noise: the two clocks are read one after the
/// other, and the time since boot has a resolution of 10 ms.
const STEP_THRESHOLD_MS: i64 = 2_000;
/// What slewing may move the boot's wall time by, per time since it was last seen: twice the
/// most NTP slews.
const SLEW_PPM: i64 = 1_000;
/// Steps kept: each is a few dozen bytes, and a device steps once or twice a boot.
const KEEP_STEPS: usize = 32;
/// How often the boot's wall time is saved while nothing happens, so that a restart compares
/// with something recent.
const SAVE_EVERY_MS: u64 = 10 * 60_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    boot_id: String,
    /// Wall time of the boot by the clock as last seen.
    boot_wall_ms: i64,
    /// Time since boot when it was last seen.
    seen_uptime_ms: u64,
    /// Time since boot when the clock's current reading began (0, or the last step).
    frame_start_uptime_ms: u64,
    steps: Vec<ClockStep>,
}

/// The device's record of its clock's steps.
#[derive(Debug)]
pub struct ClockWatch {
    saved: Saved,
    saved_at_uptime_ms: u64,
}

impl ClockWatch {
    /// Loads the record and compares it with the clocks now: a step made while the agent was
    /// not running, in the same boot, is recorded here.
    pub fn open(
        store: &Store,
        boot_id: &str,
        wall_ms: i64,
        uptime_ms: u64,
    ) -> Result<ClockWatch, outpost_storage::Error> {
        let saved: Saved = store
            .get(&AgentKey::Clock)?
            .and_then(|bytes| postcard::from_bytes(&bytes).ok())
            .unwrap_or_default();
        let boot_wall_ms = wall_ms - uptime_ms as i64;
        let mut watch = ClockWatch {
            saved_at_uptime_ms: uptime_ms,
            saved: Saved {
                boot_id: boot_id.to_string(),
                boot_wall_ms,
                seen_uptime_ms: uptime_ms,
                frame_start_uptime_ms: 0,
                steps: saved.steps.clone(),
            },
        };
        if saved.boot_id == boot_id && uptime_ms >= saved.seen_uptime_ms {
            watch.saved.frame_start_uptime_ms = saved.frame_start_uptime_ms;
            let elapsed = (uptime_ms - saved.seen_uptime_ms) as i64;
            let threshold = STEP_THRESHOLD_MS + elapsed * SLEW_PPM / 1_000_000;
            if (boot_wall_ms - saved.boot_wall_ms).abs() > threshold {
                // The old clock's writes ended somewhere before now; up to now is the bound.
                watch.step(&saved, boot_wall_ms, uptime_ms);
            }
        }
        watch.save(store)?;
        Ok(watch)
    }

    fn step(&mut self, before: &Saved, boot_wall_ms: i64, uptime_ms: u64) {
        // Slewing moved the boot's wall time a little during the frame: start the range early
        // by what counts as noise, which no step is smaller than.
        let step = ClockStep {
            boot_id: before.boot_id.clone(),
            from_ms: before.boot_wall_ms + before.frame_start_uptime_ms as i64 - STEP_THRESHOLD_MS,
            until_ms: before.boot_wall_ms + uptime_ms as i64,
            delta_ms: boot_wall_ms - before.boot_wall_ms,
        };
        tracing::warn!(
            delta_ms = step.delta_ms,
            "the wall clock stepped; timestamps written before will be corrected at the hub"
        );
        self.saved.steps.push(step);
        if self.saved.steps.len() > KEEP_STEPS {
            self.saved.steps.remove(0);
        }
        self.saved.frame_start_uptime_ms = uptime_ms;
    }

    /// Compares the clocks now with when they were last seen; call it every second or so.
    /// Returns the step, if there was one.
    pub fn observe(
        &mut self,
        store: &Store,
        wall_ms: i64,
        uptime_ms: u64,
    ) -> Result<Option<ClockStep>, outpost_storage::Error> {
        let boot_wall_ms = wall_ms - uptime_ms as i64;
        let elapsed = uptime_ms.saturating_sub(self.saved.seen_uptime_ms) as i64;
        let threshold = STEP_THRESHOLD_MS + elapsed * SLEW_PPM / 1_000_000;
        let stepped = (boot_wall_ms - self.saved.boot_wall_ms).abs() > threshold;
        if stepped {
            let before = self.saved.clone();
            self.step(&before, boot_wall_ms, uptime_ms);
        }
        self.saved.boot_wall_ms = boot_wall_ms;
        self.saved.seen_uptime_ms = uptime_ms;
        if stepped || uptime_ms.saturating_sub(self.saved_at_uptime_ms) >= SAVE_EVERY_MS {
            self.save(store)?;
            self.saved_at_uptime_ms = uptime_ms;
        }
        Ok(stepped.then(|| self.saved.steps.last().cloned()).flatten())
    }

    fn save(&self, store: &Store) -> Result<(), outpost_storage::Error> {
        let mut write = WriteBatch::default();
        write.put(
            &AgentKey::Clock,
            postcard::to_allocvec(&self.saved).expect("postcard serializes the clock record"),
        );
        store.write(write)
    }

    pub fn steps(&self) -> &[ClockStep] {
        &self.saved.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(
            dir.path().join("s.redb"),
            outpost_storage::Options::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_step_is_recorded_with_the_range_the_old_clock_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        // Booted at "2022-01-01" by a clock 4 years behind; NTP fixes it at 60 s of uptime.
        let wrong_boot = 1_640_995_200_000;
        let delta = 126_230_400_000;
        let mut watch = ClockWatch::open(&store, "b1", wrong_boot + 5_000, 5_000).unwrap();
        for uptime in (6_000..60_000).step_by(1_000) {
            // Slewing by 300 ppm is not a step.
            let slew = (uptime as i64 - 5_000) * 3 / 10_000;
            let step = watch
                .observe(&store, wrong_boot + uptime as i64 + slew, uptime)
                .unwrap();
            assert_eq!(step, None, "at {uptime}");
        }
        let step = watch
            .observe(&store, wrong_boot + delta + 60_000, 60_000)
            .unwrap()
            .expect("a step");
        assert_eq!(step.boot_id, "b1");
        assert!((step.delta_ms - delta).abs() < 100, "{}", step.delta_ms);
        assert!((wrong_boot - 2_100..wrong_boot).contains(&step.from_ms));
        assert!(step.covers(wrong_boot + 5_000) && step.covers(wrong_boot + 59_000));
        assert!(!step.covers(wrong_boot + delta + 60_000));
        // Kept across a restart; no new step when the clock did not move meanwhile.
        drop(watch);
        let watch = ClockWatch::open(&store, "b1", wrong_boot + delta + 90_000, 90_000).unwrap();
        assert_eq!(watch.steps(), std::slice::from_ref(&step));
    }

    #[test]
    fn a_step_made_while_the_agent_was_stopped_is_found_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let boot = 1_790_000_000_000;
        let mut watch = ClockWatch::open(&store, "b1", boot + 1_000, 1_000).unwrap();
        watch.observe(&store, boot + 2_000, 2_000).unwrap();
        drop(watch);
        // Stopped at 2 s; the clock was set back by an hour; started again at 100 s.
        let watch = ClockWatch::open(&store, "b1", boot - 3_600_000 + 100_000, 100_000).unwrap();
        let step = &watch.steps()[0];
        assert_eq!(
            (step.from_ms, step.until_ms),
            (boot - 2_000, boot + 100_000)
        );
        assert_eq!(step.delta_ms, -3_600_000);
        // Another boot starts a new record of its clock but keeps the old steps: their data may
        // still be on its way.
        let watch = ClockWatch::open(&store, "b2", boot + 5_000, 5_000).unwrap();
        assert_eq!(watch.steps().len(), 1);
    }

    #[test]
    fn a_long_stop_with_slewing_is_not_a_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let boot = 1_790_000_000_000;
        drop(ClockWatch::open(&store, "b1", boot + 1_000, 1_000).unwrap());
        // A day later, slewed by 40 s (460 ppm).
        let day = 86_400_000u64;
        let watch = ClockWatch::open(&store, "b1", boot + day as i64 + 40_000, day).unwrap();
        assert!(watch.steps().is_empty());
    }
}
