//! What a Jetson shows in sysfs and procfs but tegrastats does not: the module and its L4T and
//! JetPack release, nvpmodel mode, jetson_clocks, fans, GPU load and clocks, INA3221 rail
//! voltages and currents, thermal zones.
//!
//! Paths follow the kernel's layouts as jetson-stats finds them, per release: fans as hwmon
//! `pwmfan` devices (JetPack 5 on) or the legacy `/sys/devices/pwm-fan` (JetPack 4); INA3221
//! rails as hwmon `inN_label` files (JetPack 5 on) or IIO `rail_name_N` files (JetPack 4); the
//! GPU as the devfreq device whose device-tree node is named `gpu`, `gv11b`, `gp10b`, `ga10b`
//! or `gb10b`. Every path is read under a configurable root, so tests run against copies of
//! real devices' trees. Versions come from the files the device has (`/etc/nv_tegra_release`,
//! dpkg's status file), never from a table of known releases.

use std::path::{Path, PathBuf};

use super::{read_number, read_text, Samples};

const GPU_NODE_NAMES: &[&str] = &["gpu", "gv11b", "gp10b", "ga10b", "gb10b"];
/// The value a thermal zone reports when its sensor is off (jetson-stats treats it as offline).
const THERMAL_OFFLINE_MILLICELSIUS: f64 = -256_000.0;

/// The release and model of a Jetson, read once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub model: String,
    /// `35.4.1` from `# R35 (release), REVISION: 4.1`.
    pub l4t: String,
    /// The `nvidia-jetpack` package's version without its build suffix, when installed.
    pub jetpack: String,
    /// The SoC from the device tree's `compatible` list (`tegra234`).
    pub soc: String,
}

pub struct JetsonCollector {
    root: PathBuf,
    identity: Identity,
}

impl JetsonCollector {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let identity = identity(&root);
        JetsonCollector { root, identity }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    pub fn collect(&mut self, out: &mut Samples) {
        let id = &self.identity;
        out.add(
            "jetson_info",
            &[
                ("model", &id.model),
                ("l4t", &id.l4t),
                ("jetpack", &id.jetpack),
                ("soc", &id.soc),
            ],
            1.0,
        );
        if let Some(mode) = read_text(&self.path("var/lib/nvpmodel/status"))
            .as_deref()
            .and_then(nvpmodel_mode)
        {
            out.add("jetson_nvpmodel_mode", &[], mode);
        }
        let gpus = self.gpus();
        if let Some(active) = self.jetson_clocks_active(&gpus) {
            out.add("jetson_clocks_active", &[], f64::from(active));
        }
        for gpu in &gpus {
            let labels = [("gpu", gpu.name.as_str())];
            if let Some(load) = read_number(&gpu.device.join("load")) {
                // Per mille.
                out.add("jetson_gpu_load_ratio", &labels, load / 1000.0);
            }
            for (file, metric) in [
                ("cur_freq", "jetson_gpu_frequency_hertz"),
                ("min_freq", "jetson_gpu_min_frequency_hertz"),
                ("max_freq", "jetson_gpu_max_frequency_hertz"),
            ] {
                if let Some(hz) = read_number(&gpu.devfreq.join(file)) {
                    out.add(metric, &labels, hz);
                }
            }
        }
        self.fans(out);
        self.rails(out);
        self.thermal_zones(out);
    }

    fn gpus(&self) -> Vec<Gpu> {
        let mut gpus = Vec::new();
        for dir in sorted_entries(&self.path("sys/class/devfreq")) {
            let Some(node) = read_text(&dir.join("device/of_node/name")) else {
                continue;
            };
            if GPU_NODE_NAMES.contains(&node.as_str()) {
                gpus.push(Gpu {
                    name: node,
                    device: dir.join("device"),
                    devfreq: dir,
                });
            }
        }
        gpus
    }

    /// jetson_clocks pins every CPU's and the GPU's minimum clock to its maximum: that is what
    /// it leaves behind to read, whoever ran it.
    fn jetson_clocks_active(&self, gpus: &[Gpu]) -> Option<bool> {
        let mut seen = false;
        for dir in sorted_entries(&self.path("sys/devices/system/cpu")) {
            let name = dir.file_name()?.to_str()?.to_string();
            if !name
                .strip_prefix("cpu")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let (Some(min), Some(max)) = (
                read_number(&dir.join("cpufreq/scaling_min_freq")),
                read_number(&dir.join("cpufreq/scaling_max_freq")),
            ) else {
                continue;
            };
            seen = true;
            if min != max {
                return Some(false);
            }
        }
        for gpu in gpus {
            if let (Some(min), Some(max)) = (
                read_number(&gpu.devfreq.join("min_freq")),
                read_number(&gpu.devfreq.join("max_freq")),
            ) {
                seen = true;
                if min != max {
                    return Some(false);
                }
            }
        }
        seen.then_some(true)
    }

    fn fans(&self, out: &mut Samples) {
        for dir in sorted_entries(&self.path("sys/class/hwmon")) {
            let Some(name) = read_text(&dir.join("name")) else {
                continue;
            };
            if name.contains("fan") {
                if let Some(pwm) = read_number(&dir.join("pwm1")) {
                    out.add("jetson_fan_speed_ratio", &[("fan", &name)], pwm / 255.0);
                }
            }
            if name.contains("fan") || name.contains("tach") {
                for file in ["rpm", "fan1_input"] {
                    if let Some(rpm) = read_number(&dir.join(file)) {
                        out.add("jetson_fan_rpm", &[("fan", &name)], rpm);
                        break;
                    }
                }
            }
        }
        // JetPack 4 and older expose the fan outside hwmon.
        let legacy = self.path("sys/devices/pwm-fan");
        if !legacy.join("hwmon").exists() {
            if let Some(pwm) = read_number(&legacy.join("target_pwm")) {
                out.add("jetson_fan_speed_ratio", &[("fan", "pwm-fan")], pwm / 255.0);
            }
            for file in ["rpm_measured", "rpm", "fan1_input"] {
                if let Some(rpm) = read_number(&legacy.join(file)) {
                    out.add("jetson_fan_rpm", &[("fan", "pwm-fan")], rpm);
                    break;
                }
            }
        }
    }

    fn rails(&self, out: &mut Samples) {
        for device in sorted_entries(&self.path("sys/bus/i2c/devices")) {
            for hwmon in sorted_entries(&device.join("hwmon")) {
                rails_hwmon(&hwmon, out);
            }
            for iio in sorted_entries(&device) {
                let is_iio = iio
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("iio:device"));
                if is_iio {
                    rails_iio(&iio, out);
                }
            }
        }
    }

    fn thermal_zones(&self, out: &mut Samples) {
        for zone in sorted_entries(&self.path("sys/class/thermal")) {
            let is_zone = zone
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("thermal_zone"));
            if !is_zone {
                continue;
            }
            let (Some(kind), Some(millicelsius)) = (
                read_text(&zone.join("type")),
                read_number(&zone.join("temp")),
            ) else {
                continue;
            };
            // PMIC-Die reports a constant 100 C placeholder, as tegrastats' PMIC sensor does.
            if millicelsius == THERMAL_OFFLINE_MILLICELSIUS || kind.starts_with("PMIC") {
                continue;
            }
            out.add(
                "jetson_thermal_zone_celsius",
                &[("zone", &kind)],
                millicelsius / 1000.0,
            );
        }
    }
}

struct Gpu {
    name: String,
    /// The devfreq directory (clocks).
    devfreq: PathBuf,
    /// The GPU device directory (`load`).
    device: PathBuf,
}

/// INA3221 through hwmon (JetPack 5 on): `inN_label`, `inN_input` in mV, `currN_input` in mA.
fn rails_hwmon(hwmon: &Path, out: &mut Samples) {
    for entry in sorted_entries(hwmon) {
        let Some(file) = entry.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(channel) = file
            .strip_prefix("in")
            .and_then(|f| f.strip_suffix("_label"))
        else {
            continue;
        };
        let Some(label) = read_text(&entry) else {
            continue;
        };
        // Channel 7 is the sum of shunt voltages, and `NC` channels are not connected.
        if channel == "7" || label.split_whitespace().any(|w| w == "NC") || label.starts_with("NC")
        {
            continue;
        }
        let millivolts = read_number(&hwmon.join(format!("in{channel}_input")));
        let milliamperes = read_number(&hwmon.join(format!("curr{channel}_input")));
        add_rail(out, &label, millivolts, milliamperes);
    }
}

/// INA3221 through IIO (JetPack 4): `rail_name_N`, `in_voltageN_input` in mV,
/// `in_currentN_input` in mA.
fn rails_iio(iio: &Path, out: &mut Samples) {
    for entry in sorted_entries(iio) {
        let Some(channel) = entry
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("rail_name_"))
            .map(str::to_owned)
        else {
            continue;
        };
        let Some(label) = read_text(&entry) else {
            continue;
        };
        let millivolts = read_number(&iio.join(format!("in_voltage{channel}_input")));
        let milliamperes = read_number(&iio.join(format!("in_current{channel}_input")));
        add_rail(out, &label, millivolts, milliamperes);
    }
}

/// One INA3221 rail's voltage and current, as the driver gives them (mV, mA).
fn add_rail(out: &mut Samples, rail: &str, millivolts: Option<f64>, milliamperes: Option<f64>) {
    let labels = [("rail", rail)];
    if let Some(mv) = millivolts {
        out.add("jetson_rail_voltage_volts", &labels, mv / 1000.0);
    }
    if let Some(ma) = milliamperes {
        out.add("jetson_rail_current_amperes", &labels, ma / 1000.0);
    }
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    entries
}

/// `pmode:0002 fmode:quiet` → 2.
fn nvpmodel_mode(status: &str) -> Option<f64> {
    status
        .split_whitespace()
        .find_map(|part| part.strip_prefix("pmode:"))?
        .parse::<f64>()
        .ok()
}

/// Whether the tree under `root` is a Jetson's (for `enabled = "auto"`).
pub fn is_jetson(root: &Path) -> bool {
    let compatible = std::fs::read(root.join("proc/device-tree/compatible")).unwrap_or_default();
    String::from_utf8_lossy(&compatible).contains("nvidia,tegra")
        || root.join("etc/nv_tegra_release").is_file()
}

pub fn identity(root: &Path) -> Identity {
    let model = read_text(&root.join("proc/device-tree/model"))
        .or_else(|| read_text(&root.join("sys/firmware/devicetree/base/model")))
        .unwrap_or_default();
    let compatible = std::fs::read(root.join("proc/device-tree/compatible")).unwrap_or_default();
    let soc = String::from_utf8_lossy(&compatible)
        .split('\0')
        .filter_map(|entry| entry.strip_prefix("nvidia,"))
        .find(|chip| chip.starts_with("tegra"))
        .unwrap_or_default()
        .to_string();
    let l4t = read_text(&root.join("etc/nv_tegra_release"))
        .as_deref()
        .and_then(l4t_release)
        .unwrap_or_default();
    let jetpack = std::fs::read_to_string(root.join("var/lib/dpkg/status"))
        .ok()
        .and_then(|status| {
            dpkg_version(&status, "nvidia-jetpack")
                .or_else(|| dpkg_version(&status, "nvidia-jetpack-core"))
        })
        .unwrap_or_default();
    Identity {
        model,
        l4t,
        jetpack,
        soc,
    }
}

/// `# R35 (release), REVISION: 4.1, GCID: ...` → `35.4.1`.
fn l4t_release(text: &str) -> Option<String> {
    let first = text.lines().next()?;
    let release = first
        .trim_start_matches('#')
        .trim()
        .strip_prefix('R')?
        .split_whitespace()
        .next()?;
    let revision = first
        .split(',')
        .find_map(|part| part.trim().strip_prefix("REVISION:"))?
        .trim();
    Some(format!("{release}.{revision}"))
}

/// The installed version of a package in dpkg's status file, without the `-b123` build suffix
/// (`5.1.2-b104` → `5.1.2`).
fn dpkg_version(status: &str, package: &str) -> Option<String> {
    for stanza in status.split("\n\n") {
        let mut lines = stanza.lines();
        let is_package = lines
            .clone()
            .any(|l| l.strip_prefix("Package: ") == Some(package));
        let installed = lines
            .clone()
            .any(|l| l.starts_with("Status:") && l.ends_with(" installed"));
        if !is_package || !installed {
            continue;
        }
        let version = lines.find_map(|l| l.strip_prefix("Version: "))?.trim();
        let version = version.split_once('-').map_or(version, |(v, _)| v);
        return Some(version.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(fixture: &str) -> (Identity, Vec<String>) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/sysfs")
            .join(fixture);
        assert!(is_jetson(&root));
        let mut collector = JetsonCollector::new(&root);
        let mut out = Samples::new();
        collector.collect(&mut out);
        let lines = out.values.iter().map(|(k, v)| format!("{k} {v}")).collect();
        (collector.identity().clone(), lines)
    }

    /// What a fixture's collection must give, one sample a line, beside the fixture.
    fn expected(fixture: &str) -> Vec<String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/sysfs")
            .join(format!("{fixture}.expected.prom"));
        let text = std::fs::read_to_string(&path).expect("the expected samples");
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn orin_nano_on_jetpack_6() {
        let (identity, lines) = collect("orin-nano-jp6");
        assert_eq!(
            identity,
            Identity {
                model: "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super".into(),
                l4t: "36.4.3".into(),
                jetpack: "6.2".into(),
                soc: "tegra234".into(),
            }
        );
        assert_eq!(lines, expected("orin-nano-jp6"));
    }

    #[test]
    fn tx2_on_jetpack_4() {
        let (identity, lines) = collect("tx2-jp4");
        assert_eq!(
            (
                identity.l4t.as_str(),
                identity.jetpack.as_str(),
                identity.soc.as_str()
            ),
            ("32.7.4", "4.6.4", "tegra186")
        );
        assert_eq!(lines, expected("tx2-jp4"));
    }

    #[test]
    fn an_x86_host_is_not_a_jetson() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_jetson(dir.path()));
        let mut collector = JetsonCollector::new(dir.path());
        let mut out = Samples::new();
        collector.collect(&mut out);
        assert_eq!(out.values.len(), 1, "only jetson_info, empty");
    }

    #[test]
    fn versions() {
        assert_eq!(
            l4t_release("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023").as_deref(),
            Some("35.4.1")
        );
        assert_eq!(l4t_release("garbage"), None);
        let status =
            "Package: nvidia-jetpack\nStatus: install ok installed\nVersion: 5.1.2-b104\n\n\
                      Package: other\nStatus: install ok installed\nVersion: 1\n";
        assert_eq!(
            dpkg_version(status, "nvidia-jetpack").as_deref(),
            Some("5.1.2")
        );
        assert_eq!(dpkg_version(status, "nvidia-jetpack-core"), None);
        let removed =
            "Package: nvidia-jetpack\nStatus: deinstall ok config-files\nVersion: 5.1.2-b104\n";
        assert_eq!(dpkg_version(removed, "nvidia-jetpack"), None);
        assert_eq!(nvpmodel_mode("pmode:0002 fmode:quiet"), Some(2.0));
        assert_eq!(nvpmodel_mode("nothing"), None);
    }
}
