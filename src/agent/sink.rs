//! Where every collector's samples go: the store, and the latest value of each series for
//! `/metrics`. Also keeps the per-collector figures that become self-metrics.

#![deny(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use outpost_storage::{SeriesKey, Store, WriteBatch};

use crate::catalogue;
use crate::collect::Samples;

/// The latest values of one source.
#[derive(Debug, Default)]
struct Latest {
    values: HashMap<SeriesKey, f64>,
    updated_ms: i64,
    /// The gap between a collector's last two rounds: how often it is expected again.
    interval_ms: Option<i64>,
}

impl Latest {
    /// Whether its values still stand for now: a collector that missed three rounds (tegrastats
    /// stopped, a GPU gone) leaves `/metrics` rather than show its last values as current;
    /// pushed and scraped sources, which come irregularly, stand [`STALE_MS`].
    fn fresh(&self, now_ms: i64) -> bool {
        let allowed = self.interval_ms.map_or(STALE_MS, |interval| {
            interval.saturating_mul(3).max(MIN_STALE_MS)
        });
        now_ms - self.updated_ms < allowed
    }
}

#[derive(Debug, Default, Clone)]
pub struct CollectorStats {
    pub last_duration: Duration,
    pub errors: u64,
    pub rounds: u64,
    pub last_success_ms: Option<i64>,
    pub last_succeeded: bool,
}

pub struct Sink {
    pub store: std::sync::Arc<Store>,
    pub uplink: std::sync::Arc<Mutex<outpost_sync::uplink::UplinkState>>,
    latest: Mutex<BTreeMap<String, Latest>>,
    collectors: Mutex<BTreeMap<String, CollectorStats>>,
    pub samples_written: AtomicU64,
    pub write_errors: AtomicU64,
    /// The alert engine, which sees every sample stored.
    pub alerts: std::sync::OnceLock<std::sync::Arc<Mutex<outpost::alert::engine::Engine>>>,
    /// What SIGHUP did, for the self-metrics (the dashboard marks reloads on the charts).
    pub config_reloads: Mutex<ConfigReloads>,
    /// The kept log lines' index, shared by the log files and the journal.
    pub kept: crate::collect::kept::Keeper,
}

/// The config reloads since the agent started.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfigReloads {
    /// When the config was last reloaded and taken, by the wall clock.
    pub last_success_ms: Option<i64>,
    /// The last SIGHUP's config did not load (the running one was kept).
    pub last_failed: bool,
}

/// How long a pushed or scraped series stays in `/metrics` without a new value.
const STALE_MS: i64 = 5 * 60_000;
/// However often a collector runs, its values stand this long (a slow round is not an outage).
const MIN_STALE_MS: i64 = 10_000;

impl Sink {
    pub fn new(store: Store) -> Self {
        Sink {
            store: std::sync::Arc::new(store),
            uplink: Default::default(),
            latest: Mutex::new(BTreeMap::new()),
            collectors: Mutex::new(BTreeMap::new()),
            samples_written: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            alerts: std::sync::OnceLock::new(),
            config_reloads: Mutex::new(ConfigReloads::default()),
            kept: Default::default(),
        }
    }

    /// Stores a round of samples taken at `at_ms`. The source's previous values leave
    /// `/metrics` (a core that went offline stops being shown), unless `merge` is set, as for
    /// pushed application metrics that arrive a few series at a time.
    pub async fn write(
        &self,
        source: &str,
        at_ms: i64,
        samples: Samples,
        merge: bool,
    ) -> Result<()> {
        let timestamped = samples
            .values
            .into_iter()
            .map(|(key, value)| (key, value, at_ms))
            .collect();
        self.write_timestamped(source, at_ms, timestamped, merge)
            .await
    }

    /// Stores samples that carry their own timestamps.
    pub async fn write_timestamped(
        &self,
        source: &str,
        now_ms: i64,
        samples: Vec<(SeriesKey, f64, i64)>,
        merge: bool,
    ) -> Result<()> {
        let mut batch = WriteBatch::with_capacity(samples.len());
        let count = samples.len() as u64;
        let ids: Result<(), outpost_storage::Error> =
            samples.iter().try_for_each(|(key, value, at)| {
                batch.sample(self.store.series_id(key)?, *at, *value);
                Ok(())
            });
        let written = match ids {
            Ok(()) => self.store.write_async(batch).await,
            Err(error) => Err(error),
        };
        if written.is_ok() {
            self.samples_written.fetch_add(count, Ordering::Relaxed);
        } else {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        // Samples the store refused still reach the alert engine and `/metrics`: a full disk
        // must not blind the rules (`store_write_errors` among them) or hide the counter that
        // says the store is failing.
        if let Some(engine) = self.alerts.get() {
            let mut engine = engine.lock().expect("engine lock");
            for (key, value, at) in &samples {
                engine.observe(key, *at, *value);
            }
        }
        let mut latest = self.latest.lock().expect("latest values lock");
        let entry = latest.entry(source.to_string()).or_default();
        if !merge {
            entry.values.clear();
            if entry.updated_ms > 0 && now_ms > entry.updated_ms {
                entry.interval_ms = Some(now_ms - entry.updated_ms);
            }
        }
        for (key, value, _) in samples {
            entry.values.insert(key, value);
        }
        entry.updated_ms = now_ms;
        Ok(written?)
    }

    /// Series a source has shown in `/metrics`, to enforce per-source caps on pushes.
    pub fn source_series(&self, source: &str) -> usize {
        let latest = self.latest.lock().expect("latest values lock");
        latest.get(source).map_or(0, |l| l.values.len())
    }

    pub fn source_has(&self, source: &str, key: &SeriesKey) -> bool {
        let latest = self.latest.lock().expect("latest values lock");
        latest
            .get(source)
            .is_some_and(|l| l.values.contains_key(key))
    }

    pub fn collector_round(&self, name: &str, duration: Duration, ok: bool, now_ms: i64) {
        let mut collectors = self.collectors.lock().expect("collector stats lock");
        let stats = collectors.entry(name.to_string()).or_default();
        stats.last_duration = duration;
        stats.rounds += 1;
        stats.last_succeeded = ok;
        if ok {
            stats.last_success_ms = Some(now_ms);
        } else {
            stats.errors += 1;
        }
    }

    pub fn collector_stats(&self) -> BTreeMap<String, CollectorStats> {
        self.collectors
            .lock()
            .expect("collector stats lock")
            .clone()
    }

    /// Forgets sources that have not written for a while (a pushing application that stopped).
    pub fn drop_stale(&self, now_ms: i64) {
        let mut latest = self.latest.lock().expect("latest values lock");
        latest.retain(|_, l| l.fresh(now_ms));
    }

    /// The Prometheus text exposition of the latest values that still stand at `now_ms`.
    pub fn render_metrics(&self, now_ms: i64) -> String {
        let latest = self.latest.lock().expect("latest values lock");
        let mut families: BTreeMap<&str, Vec<(&SeriesKey, f64)>> = BTreeMap::new();
        for source in latest.values().filter(|l| l.fresh(now_ms)) {
            for (key, value) in &source.values {
                families.entry(key.name()).or_default().push((key, *value));
            }
        }
        let mut text = String::with_capacity(64 * 1024);
        for (name, mut series) in families {
            series.sort_by(|a, b| a.0.cmp(b.0));
            // Two sources can name the same series (a scraped endpoint that re-exports one of
            // ours): Prometheus refuses a whole scrape with a duplicate, so one value is shown.
            series.dedup_by(|a, b| a.0 == b.0);
            if let Some(doc) = catalogue::lookup(name) {
                let _ = writeln!(
                    text,
                    "# HELP {name} {}",
                    doc.description.replace('\\', "\\\\")
                );
                let _ = writeln!(text, "# TYPE {name} {}", doc.kind);
            }
            for (key, value) in series {
                let _ = writeln!(text, "{key} {}", format_value(value));
            }
        }
        text
    }
}

fn format_value(value: f64) -> String {
    // Rust's shortest round-trip form; Prometheus parses it back exactly.
    crate::results::special_value(value).map_or_else(|| format!("{value}"), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, value: f64) -> Samples {
        Samples {
            values: vec![(SeriesKey::new(name, Vec::new()).unwrap(), value)],
        }
    }

    #[tokio::test]
    async fn a_collector_that_stops_leaves_metrics_and_a_push_stays_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::new(Store::open(dir.path().join("s.redb"), Default::default()).unwrap());
        let t0 = 1_800_000_000_000;
        for round in 0..3 {
            let at = t0 + round * 1000;
            sink.write("jetson", at, one("jetson_gpu_load_ratio", 0.99), false)
                .await
                .unwrap();
        }
        sink.write("push", t0, one("app_fps", 30.0), true)
            .await
            .unwrap();
        let last = t0 + 2000;
        assert!(sink
            .render_metrics(last + 5_000)
            .contains("jetson_gpu_load_ratio 0.99"));
        let later = sink.render_metrics(last + 11_000);
        assert!(
            !later.contains("jetson_gpu_load_ratio"),
            "tegrastats silent for 11 s is not at 99 % now"
        );
        assert!(later.contains("app_fps 30"), "a push stands five minutes");
        sink.drop_stale(t0 + STALE_MS + 1);
        assert_eq!(sink.source_series("push"), 0);
        assert!(!sink.render_metrics(t0 + STALE_MS + 1).contains("app_fps"));
    }
}
