//! NVIDIA dGPU metrics through NVML, loaded at run time so that one binary runs with and without
//! a driver. What NVIDIA's dcgm-exporter also exports carries its names, units and labels
//! (`DCGM_FI_DEV_GPU_UTIL{gpu,UUID,device,modelName}` in percent, memory in MiB, clocks in MHz),
//! so that NVIDIA's GPU dashboards work against the hub; the rest keeps Outpost's `nvml_*`. A field the device does not support (most of them on a Jetson's NVML, JetPack 6
//! on) is skipped silently for that device after its first failure, so each metric comes from
//! whichever source works there: tegrastats and sysfs cover the Jetson's GPU.

use std::collections::HashSet;
use std::ffi::OsStr;

use anyhow::{Context, Result};

use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PcieUtilCounter, TemperatureSensor,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::Samples;

pub struct NvmlCollector {
    nvml: Nvml,
    /// (device index, metric) pairs that failed once: not asked again.
    unsupported: HashSet<(u32, &'static str)>,
}

impl NvmlCollector {
    /// Loads the library and initialises NVML. The error says why, in one line, for the log.
    pub fn open(library: &std::path::Path) -> Result<Self> {
        let nvml = Nvml::builder()
            .lib_path(OsStr::new(library.as_os_str()))
            .init()
            .map_err(|error| {
                // libloading's message already names the library and the reason, once.
                let reason = match &error {
                    nvml_wrapper::error::NvmlError::LibloadingError(e) => e.to_string(),
                    other => other.to_string(),
                };
                anyhow::anyhow!("NVML unavailable ({}): {reason}", library.display())
            })?;
        Ok(NvmlCollector {
            nvml,
            unsupported: HashSet::new(),
        })
    }

    /// Driver version and the GPUs found, for the start-up log line.
    pub fn describe(&self) -> String {
        let driver = self.nvml.sys_driver_version().unwrap_or_default();
        let count = self.nvml.device_count().unwrap_or(0);
        let names: Vec<String> = (0..count)
            .filter_map(|i| self.nvml.device_by_index(i).ok()?.name().ok())
            .collect();
        format!("driver {driver}, {count} GPU(s): {}", names.join(", "))
    }

    pub fn collect(&mut self, out: &mut Samples) -> Result<()> {
        let count = self.nvml.device_count().context("NVML device count")?;
        for index in 0..count {
            let device = self.nvml.device_by_index(index).context("NVML device")?;
            let gpu = index.to_string();
            let name = device.name().unwrap_or_default();
            let uuid = device.uuid().unwrap_or_default();
            out.add(
                "nvml_gpu_info",
                &[("gpu", &gpu), ("name", &name), ("uuid", &uuid)],
                1.0,
            );
            // dcgm-exporter's labels: the index, the UUID, the device node, the product.
            let node = device
                .minor_number()
                .map(|n| format!("nvidia{n}"))
                .unwrap_or_default();
            let dcgm = [
                ("gpu", gpu.as_str()),
                ("UUID", uuid.as_str()),
                ("device", node.as_str()),
                ("modelName", name.as_str()),
            ];
            let mut fields = Fields {
                unsupported: &mut self.unsupported,
                index,
                out,
            };
            read_activity(&device, &dcgm, &mut fields);
            read_power_and_clocks(&device, &dcgm, &mut fields);
            read_health(&device, &gpu, &mut fields);
        }
        Ok(())
    }
}

/// Reads the fields of one GPU, and remembers those it does not support so that they are not
/// asked again.
struct Fields<'a> {
    unsupported: &'a mut HashSet<(u32, &'static str)>,
    index: u32,
    out: &'a mut Samples,
}

impl Fields<'_> {
    fn read(
        &mut self,
        metric: &'static str,
        read: impl FnOnce(&mut Samples) -> Result<(), NvmlError>,
    ) {
        if self.unsupported.contains(&(self.index, metric)) {
            return;
        }
        if let Err(error) = read(self.out) {
            tracing::debug!(gpu = self.index, metric, %error, "NVML field not available");
            self.unsupported.insert((self.index, metric));
        }
    }
}

/// The fields that are one number each: the field, its metric, and how to read it.
type Gauge = (
    &'static str,
    &'static str,
    fn(&Device) -> Result<f64, NvmlError>,
);

// One line a field, so that the table reads as one.
#[rustfmt::skip]
const GAUGES: [Gauge; 7] = [
    ("encoder", "DCGM_FI_DEV_ENC_UTIL", |d| Ok(f64::from(d.encoder_utilization()?.utilization))), // percent
    ("decoder", "DCGM_FI_DEV_DEC_UTIL", |d| Ok(f64::from(d.decoder_utilization()?.utilization))),
    ("temperature", "DCGM_FI_DEV_GPU_TEMP", |d| Ok(f64::from(d.temperature(TemperatureSensor::Gpu)?))),
    ("power", "DCGM_FI_DEV_POWER_USAGE", |d| Ok(f64::from(d.power_usage()?) / 1000.0)), // from mW
    ("power_limit", "DCGM_FI_DEV_POWER_MGMT_LIMIT", |d| Ok(f64::from(d.enforced_power_limit()?) / 1000.0)),
    ("sm_clock", "DCGM_FI_DEV_SM_CLOCK", |d| Ok(f64::from(d.clock_info(Clock::SM)?))), // MHz
    ("memory_clock", "DCGM_FI_DEV_MEM_CLOCK", |d| Ok(f64::from(d.clock_info(Clock::Memory)?))),
];

/// Bytes in DCGM's unit for frame-buffer memory, the MiB it calls MB.
fn mebibytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A percentage as a ratio.
fn percent(value: u32) -> f64 {
    f64::from(value) / 100.0
}

/// How busy the GPU and its memory are (percent), and its memory (MiB), as DCGM names them.
fn read_activity(device: &Device, labels: &[(&str, &str)], fields: &mut Fields) {
    fields.read("utilization", |out| {
        let u = device.utilization_rates()?;
        out.add("DCGM_FI_DEV_GPU_UTIL", labels, f64::from(u.gpu));
        out.add("DCGM_FI_DEV_MEM_COPY_UTIL", labels, f64::from(u.memory));
        Ok(())
    });
    fields.read("memory", |out| {
        let m = device.memory_info()?;
        out.add("DCGM_FI_DEV_FB_USED", labels, mebibytes(m.used));
        out.add("DCGM_FI_DEV_FB_FREE", labels, mebibytes(m.free));
        out.add("DCGM_FI_DEV_FB_TOTAL", labels, mebibytes(m.total));
        Ok(())
    });
}

/// Encoders, temperature, power, clocks ([`GAUGES`]) and fans.
fn read_power_and_clocks(device: &Device, labels: &[(&str, &str)], fields: &mut Fields) {
    for (field, metric, read) in GAUGES {
        fields.read(field, |out| {
            out.add(metric, labels, read(device)?);
            Ok(())
        });
    }
    let gpu = labels[0].1;
    fields.read("fan", |out| {
        let fans = device.num_fans()?;
        for fan in 0..fans {
            let speed = device.fan_speed(fan)?;
            let fan = fan.to_string();
            out.add(
                "nvml_fan_speed_ratio",
                &[("gpu", gpu), ("fan", &fan)],
                percent(speed),
            );
        }
        Ok(())
    });
}

/// PCIe traffic, ECC errors, what holds the clocks down, and the processes on the GPU.
fn read_health(device: &Device, gpu: &str, fields: &mut Fields) {
    let labels = [("gpu", gpu)];
    fields.read("pcie", |out| {
        // NVML reports KB/s over a 20 ms sample.
        let tx = device.pcie_throughput(PcieUtilCounter::Send)?;
        let rx = device.pcie_throughput(PcieUtilCounter::Receive)?;
        out.add(
            "nvml_pcie_transmit_bytes_per_second",
            &labels,
            f64::from(tx) * 1024.0,
        );
        out.add(
            "nvml_pcie_receive_bytes_per_second",
            &labels,
            f64::from(rx) * 1024.0,
        );
        Ok(())
    });
    fields.read("ecc", |out| {
        let corrected = device.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)?;
        let uncorrected =
            device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)?;
        out.add("nvml_ecc_corrected_errors_total", &labels, corrected as f64);
        out.add(
            "nvml_ecc_uncorrected_errors_total",
            &labels,
            uncorrected as f64,
        );
        Ok(())
    });
    fields.read("clock_events", |out| {
        let reasons = device.current_throttle_reasons()?;
        for (reason, flag) in nvml_wrapper::bitmasks::device::ThrottleReasons::all().iter_names() {
            out.add(
                "nvml_clock_event_active",
                &[("gpu", gpu), ("reason", &reason.to_ascii_lowercase())],
                f64::from(reasons.contains(flag)),
            );
        }
        Ok(())
    });
    fields.read("processes", |out| {
        let mut processes = device.running_compute_processes()?;
        processes.extend(device.running_graphics_processes().unwrap_or_default());
        let mut pids = HashSet::new();
        let mut memory = 0u64;
        for process in &processes {
            pids.insert(process.pid);
            if let UsedGpuMemory::Used(bytes) = process.used_gpu_memory {
                memory += bytes;
            }
        }
        out.add("nvml_processes", &labels, pids.len() as f64);
        out.add("nvml_process_memory_used_bytes", &labels, memory as f64);
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_clear_error() {
        let error = NvmlCollector::open(std::path::Path::new("libnvidia-ml-not-here.so.1"))
            .err()
            .expect("loading a missing library cannot succeed");
        let message = format!("{error:#}");
        assert!(
            message.starts_with("NVML unavailable (libnvidia-ml-not-here.so.1)"),
            "{message}"
        );
    }
}
