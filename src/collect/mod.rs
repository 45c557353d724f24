//! The agent's collectors. Each one turns a source (tegrastats, sysfs, /proc, NVML, probes,
//! application endpoints) into [`Samples`] named as in `docs/metrics.md`; the agent's sink
//! stores them and shows the latest in `/metrics`.

pub mod containers;
pub mod host;
pub mod jetson;
pub mod journal;
pub mod journal_file;
pub mod kept;
pub mod kernel;
pub mod logs;
pub mod nvml;
pub mod own_process;
pub mod probes;
pub mod processes;
pub mod scrape;
pub mod tegrastats;
pub mod textfile;
pub mod timex;

use outpost_storage::SeriesKey;

/// Samples of one collection round, all taken at the same time.
#[derive(Debug, Default)]
pub struct Samples {
    pub values: Vec<(SeriesKey, f64)>,
}

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sample. Names and labels come from the collectors' own constants and from device
    /// names; a name the store would refuse is a bug in a collector, and a label value that is
    /// not valid text cannot happen because it is a `&str`.
    pub fn add(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels = labels
            .iter()
            .map(|(label, value)| (label.to_string(), value.to_string()));
        match SeriesKey::new(name, labels) {
            Ok(key) => self.values.push((key, value)),
            Err(error) => {
                debug_assert!(false, "collector emitted an invalid series: {error}");
                tracing::warn!(%error, "dropped a sample with an invalid series name");
            }
        }
    }
}

/// Reads a small sysfs or procfs file as trimmed text (device-tree strings end with NUL).
pub fn read_text(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string(),
    )
}

/// Reads a file holding one number.
pub fn read_number(path: &std::path::Path) -> Option<f64> {
    read_text(path)?.parse::<f64>().ok()
}

/// A round's samples as `name{labels} value` lines, for the collectors' tests.
#[cfg(test)]
pub fn render(samples: Samples) -> Vec<String> {
    samples
        .values
        .into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect()
}
