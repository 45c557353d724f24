//! tegrastats as a metric source: running it (restarted with backoff when it dies) or replaying
//! a recorded log at its own pace, and mapping each parsed line to metrics.
//!
//! The mapping drops what tegrastats prints but does not measure: the `-256C` sentinel of a
//! sensor that is off, and the `PMIC` sensor, a constant placeholder (100 C on most modules,
//! 50 C on Xavier NX). Both are documented in `docs/metrics.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::AsyncBufReadExt;

use outpost::tegrastats::{self, Engine, Tegrastats};

use super::Samples;

/// A sensor that prints this is off or absent.
const SENTINEL_CELSIUS: f64 = -256.0;

/// Turns one parsed line into samples.
pub fn to_samples(line: &Tegrastats<'_>, out: &mut Samples) {
    const MHZ: f64 = 1e6;
    if let Some(ram) = line.ram {
        out.add("jetson_ram_used_bytes", &[], ram.used_bytes as f64);
        out.add("jetson_ram_total_bytes", &[], ram.total_bytes as f64);
        out.add("jetson_ram_lfb_blocks", &[], ram.lfb_blocks as f64);
        out.add(
            "jetson_ram_lfb_block_bytes",
            &[],
            ram.lfb_block_bytes as f64,
        );
    }
    if let Some(swap) = line.swap {
        out.add("jetson_swap_used_bytes", &[], swap.used_bytes as f64);
        out.add("jetson_swap_total_bytes", &[], swap.total_bytes as f64);
        out.add("jetson_swap_cached_bytes", &[], swap.cached_bytes as f64);
    }
    if let Some(iram) = line.iram {
        out.add("jetson_iram_used_bytes", &[], iram.used_bytes as f64);
        out.add("jetson_iram_total_bytes", &[], iram.total_bytes as f64);
        out.add("jetson_iram_lfb_bytes", &[], iram.lfb_bytes as f64);
    }
    if let Some(cpus) = &line.cpus {
        for (index, cpu) in cpus.iter().enumerate() {
            let index = index.to_string();
            let labels = [("cpu", index.as_str())];
            out.add("jetson_cpu_online", &labels, f64::from(cpu.is_some()));
            if let Some(cpu) = cpu {
                out.add(
                    "jetson_cpu_load_ratio",
                    &labels,
                    cpu.load_percent as f64 / 100.0,
                );
                if let Some(mhz) = cpu.freq_mhz {
                    out.add("jetson_cpu_frequency_hertz", &labels, mhz as f64 * MHZ);
                }
            }
        }
    }
    if let Some(mts) = line.mts {
        out.add("jetson_mts_fg_ratio", &[], mts.fg_percent as f64 / 100.0);
        out.add("jetson_mts_bg_ratio", &[], mts.bg_percent as f64 / 100.0);
    }
    for (name, engine) in &line.engines {
        let labels = [("engine", *name)];
        match engine {
            Engine::Off => out.add("jetson_engine_online", &labels, 0.0),
            Engine::On {
                load_percent,
                freq_mhz,
                gpc_freq_mhz,
            } => {
                out.add("jetson_engine_online", &labels, 1.0);
                if let Some(load) = load_percent {
                    out.add("jetson_engine_load_ratio", &labels, *load as f64 / 100.0);
                }
                if let Some(mhz) = freq_mhz {
                    out.add("jetson_engine_frequency_hertz", &labels, *mhz as f64 * MHZ);
                }
                for (gpc, mhz) in gpc_freq_mhz.iter().flatten().enumerate() {
                    let gpc = gpc.to_string();
                    out.add(
                        "jetson_engine_gpc_frequency_hertz",
                        &[("engine", name), ("gpc", &gpc)],
                        *mhz as f64 * MHZ,
                    );
                }
            }
        }
    }
    for temperature in &line.temperatures {
        let placeholder = temperature.sensor.eq_ignore_ascii_case("PMIC");
        if placeholder || temperature.celsius == SENTINEL_CELSIUS {
            continue;
        }
        out.add(
            "jetson_temperature_celsius",
            &[("sensor", temperature.sensor)],
            temperature.celsius,
        );
    }
    for rail in &line.rails {
        let labels = [("rail", rail.name)];
        out.add(
            "jetson_rail_power_watts",
            &labels,
            rail.current_mw as f64 / 1000.0,
        );
        out.add(
            "jetson_rail_average_power_watts",
            &labels,
            rail.average_mw as f64 / 1000.0,
        );
    }
}

/// Where lines come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Run `tegrastats --interval <ms>`.
    Spawn { path: PathBuf, interval: Duration },
    /// Replay a recorded log; `speed` 0 means as fast as possible.
    Replay { path: PathBuf, speed: f64 },
}

/// Whether a tegrastats binary can be found (for `enabled = "auto"`).
pub fn installed(path: &Path) -> bool {
    if path.components().count() > 1 {
        return path.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|dirs| std::env::split_paths(&dirs).any(|dir| dir.join(path).is_file()))
}

/// Reads a recorded log whole (plain or zstd-compressed) and splits it into lines.
pub fn read_log(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = if crate::input::is_zstd(&bytes) {
        zstd::decode_all(bytes.as_slice())
            .with_context(|| format!("{} is not valid zstd", path.display()))?
    } else {
        bytes
    };
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

/// How long to wait before emitting the next replayed line: the gap between the two lines'
/// own stamps when both have one, else the configured interval, divided by the speed.
/// A line's `MM-DD-YYYY HH:MM:SS` stamp in milliseconds since the epoch, read as UTC.
pub fn stamp_ms(stamp: &outpost::tegrastats::Stamp) -> Option<i64> {
    let at = jiff::civil::DateTime::new(
        i16::try_from(stamp.year).ok()?,
        i8::try_from(stamp.month).ok()?,
        i8::try_from(stamp.day).ok()?,
        i8::try_from(stamp.hour).ok()?,
        i8::try_from(stamp.minute).ok()?,
        i8::try_from(stamp.second).ok()?,
        0,
    )
    .ok()?;
    let at = at.to_zoned(jiff::tz::TimeZone::UTC).ok()?;
    Some(at.timestamp().as_millisecond())
}

pub fn replay_gap(previous: &str, next: &str, interval: Duration, speed: f64) -> Duration {
    if speed == 0.0 {
        return Duration::ZERO;
    }
    let stamp_seconds = |line: &str| Some(stamp_ms(&tegrastats::parse(line).timestamp?)? / 1000);
    let gap = match (stamp_seconds(previous), stamp_seconds(next)) {
        // A log stitched from several runs can jump; keep a replay moving.
        (Some(a), Some(b)) if b >= a && b - a <= 60 => Duration::from_secs((b - a) as u64),
        _ => interval,
    };
    gap.div_f64(speed)
}

/// Spawns tegrastats and yields its lines through `lines`. Returns when tegrastats exits or the
/// receiver is gone.
pub async fn run_tegrastats(
    path: &Path,
    interval: Duration,
    lines: &tokio::sync::mpsc::Sender<String>,
) -> Result<()> {
    let mut child = tokio::process::Command::new(path)
        .arg("--interval")
        .arg(interval.as_millis().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", path.display()))?;
    let stdout = child.stdout.take().context("tegrastats has no stdout")?;
    let mut reader = tokio::io::BufReader::new(stdout).lines();
    while let Some(line) = reader.next_line().await.context("reading tegrastats")? {
        if lines.send(line).await.is_err() {
            return Ok(());
        }
    }
    let status = child.wait().await?;
    anyhow::bail!("tegrastats exited ({status})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(line: &str) -> Vec<(String, f64)> {
        let mut out = Samples::new();
        to_samples(&tegrastats::parse(line), &mut out);
        out.values
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect()
    }

    #[test]
    fn maps_an_orin_line() {
        let line =
            "RAM 2391/7620MB (lfb 23x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@729,off,0%@729] \
                    EMC_FREQ 0%@2133 GR3D_FREQ 12%@[1300,1290] NVDLA0 off cpu@52.5C PMIC@100C \
                    CV0@-256C VDD_IN 5139mW/5139mW/5139mW";
        let got = samples(line);
        let value = |key: &str| {
            got.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{key} missing from {got:?}"))
        };
        assert_eq!(value("jetson_ram_used_bytes"), 2391.0 * 1048576.0);
        assert_eq!(value("jetson_ram_lfb_block_bytes"), 4.0 * 1048576.0);
        assert_eq!(value(r#"jetson_cpu_online{cpu="1"}"#), 0.0);
        assert_eq!(value(r#"jetson_cpu_load_ratio{cpu="0"}"#), 0.01);
        assert_eq!(value(r#"jetson_cpu_frequency_hertz{cpu="2"}"#), 729e6);
        assert_eq!(value(r#"jetson_engine_load_ratio{engine="GR3D"}"#), 0.12);
        assert_eq!(
            value(r#"jetson_engine_frequency_hertz{engine="GR3D"}"#),
            1300e6
        );
        assert_eq!(
            value(r#"jetson_engine_gpc_frequency_hertz{engine="GR3D",gpc="1"}"#),
            1290e6
        );
        assert_eq!(value(r#"jetson_engine_online{engine="NVDLA0"}"#), 0.0);
        assert_eq!(value(r#"jetson_temperature_celsius{sensor="cpu"}"#), 52.5);
        assert_eq!(value(r#"jetson_rail_power_watts{rail="VDD_IN"}"#), 5.139);
        assert!(!got
            .iter()
            .any(|(k, _)| k.contains("PMIC") || k.contains("CV0")));
        assert!(!got
            .iter()
            .any(|(k, _)| k.contains(r#"cpu="1""#) && k.contains("load")));
    }

    #[test]
    fn replay_follows_the_log_pace() {
        let a = "07-25-2026 09:08:28 RAM 1/2MB";
        let b = "07-25-2026 09:08:30 RAM 1/2MB";
        let second = Duration::from_secs(1);
        assert_eq!(replay_gap(a, b, second, 1.0), Duration::from_secs(2));
        assert_eq!(replay_gap(a, b, second, 4.0), Duration::from_millis(500));
        assert_eq!(replay_gap(a, b, second, 0.0), Duration::ZERO);
        assert_eq!(replay_gap("RAM 1/2MB", "RAM 1/2MB", second, 1.0), second);
        assert_eq!(replay_gap(b, a, second, 1.0), second);
    }
}
