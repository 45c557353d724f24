//! Host metrics: CPU, memory, load, file systems and temperatures from sysinfo; disk I/O,
//! network counters, process counts and watched processes from `/proc`, which has what sysinfo
//! leaves out (I/O operations, drops) at the cost of a few small reads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sysinfo::{Components, CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

use super::Samples;
use serde::Deserialize;

use crate::config_values::Interval;

/// The agent's `[host]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostSection {
    /// Collect host metrics (CPU, memory, disks, network, processes).
    pub enabled: bool,
    /// How often they are sampled.
    pub interval: Interval,
    /// Process names (as in `ps -o comm`) whose CPU and memory are recorded.
    pub processes: Vec<String>,
    /// Mount points whose file systems are left out (pseudo file systems are always left out).
    pub ignore_mounts: Vec<String>,
    /// Network interfaces left out, by exact name.
    pub ignore_interfaces: Vec<String>,
}

impl Default for HostSection {
    fn default() -> Self {
        HostSection {
            enabled: true,
            interval: Interval::secs(1),
            processes: Vec::new(),
            ignore_mounts: Vec::new(),
            ignore_interfaces: vec!["lo".into()],
        }
    }
}

/// Pseudo and virtual file systems: their sizes say nothing about the device's storage.
const PSEUDO_FILESYSTEMS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
    "ramfs",
];

/// Processes are looked up by name this often; their counters are read every round.
const PROCESS_RESCAN: Duration = Duration::from_secs(30);

/// `/proc`'s clock ticks per second (USER_HZ), from the kernel's auxiliary vector.
pub fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// The page size that `/proc` counts memory in: 4 KiB on x86, 4 or 64 KiB on arm64 kernels.
pub fn page_bytes() -> f64 {
    rustix::param::page_size() as f64
}

pub struct HostCollector {
    system: System,
    disks: Disks,
    components: Components,
    config: HostSection,
    proc_root: PathBuf,
    /// Per watched name, the pids found at the last scan.
    watched: HashMap<String, Vec<u32>>,
    last_scan: Option<Instant>,
    ticks_per_second: f64,
    page_bytes: f64,
}

impl HostCollector {
    pub fn new(config: HostSection) -> Self {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage().with_frequency())
                .with_memory(MemoryRefreshKind::everything()),
        );
        HostCollector {
            system,
            disks: Disks::new_with_refreshed_list(),
            components: Components::new_with_refreshed_list(),
            config,
            proc_root: PathBuf::from("/proc"),
            watched: HashMap::new(),
            last_scan: None,
            ticks_per_second: ticks_per_second(),
            page_bytes: page_bytes(),
        }
    }

    pub fn collect(&mut self, out: &mut Samples) {
        self.cpu_and_memory(out);
        self.filesystems_and_temperatures(out);
        if let Ok(text) = std::fs::read_to_string(self.proc_root.join("diskstats")) {
            diskstats(
                &text,
                |device| Path::new("/sys/block").join(device).exists(),
                out,
            );
        }
        if let Ok(text) = std::fs::read_to_string(self.proc_root.join("net/dev")) {
            net_dev(&text, &self.config.ignore_interfaces, out);
        }
        if let Ok(text) = std::fs::read_to_string(self.proc_root.join("stat")) {
            proc_stat(&text, out);
        }
        if let Ok(entries) = std::fs::read_dir(&self.proc_root) {
            let count = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_str().is_some_and(is_pid))
                .count();
            out.add("host_processes", &[], count as f64);
        }
        self.watched_processes(out);
    }

    /// CPU use and frequency, load, memory, swap, uptime: from sysinfo.
    fn cpu_and_memory(&mut self, out: &mut Samples) {
        self.system
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage().with_frequency());
        self.system.refresh_memory();
        let total = [("cpu", "total")];
        out.add(
            "host_cpu_usage_ratio",
            &total,
            f64::from(self.system.global_cpu_usage()) / 100.0,
        );
        for (index, cpu) in self.system.cpus().iter().enumerate() {
            let index = index.to_string();
            let labels = [("cpu", index.as_str())];
            out.add(
                "host_cpu_usage_ratio",
                &labels,
                f64::from(cpu.cpu_usage()) / 100.0,
            );
            if cpu.frequency() > 0 {
                out.add(
                    "host_cpu_frequency_hertz",
                    &labels,
                    cpu.frequency() as f64 * 1e6,
                );
            }
        }
        let load = System::load_average();
        out.add("host_load1", &[], load.one);
        out.add("host_load5", &[], load.five);
        out.add("host_load15", &[], load.fifteen);
        let memory = &self.system;
        out.add("host_memory_total_bytes", &[], memory.total_memory() as f64);
        out.add(
            "host_memory_available_bytes",
            &[],
            memory.available_memory() as f64,
        );
        out.add("host_memory_used_bytes", &[], memory.used_memory() as f64);
        out.add("host_swap_total_bytes", &[], memory.total_swap() as f64);
        out.add("host_swap_used_bytes", &[], memory.used_swap() as f64);
        out.add("host_uptime_seconds", &[], System::uptime() as f64);
        out.add("host_boot_time_seconds", &[], System::boot_time() as f64);
    }

    /// File systems (pseudo ones and `ignore_mounts` left out) and temperature sensors.
    fn filesystems_and_temperatures(&mut self, out: &mut Samples) {
        self.disks.refresh(true);
        for disk in self.disks.list() {
            let fstype = disk.file_system().to_string_lossy();
            let mount = disk.mount_point().to_string_lossy();
            if PSEUDO_FILESYSTEMS.contains(&fstype.as_ref())
                || self.config.ignore_mounts.iter().any(|m| *m == mount)
            {
                continue;
            }
            let device = disk.name().to_string_lossy();
            let labels = [
                ("mountpoint", mount.as_ref()),
                ("device", device.as_ref()),
                ("fstype", fstype.as_ref()),
            ];
            out.add(
                "host_filesystem_size_bytes",
                &labels,
                disk.total_space() as f64,
            );
            out.add(
                "host_filesystem_avail_bytes",
                &labels,
                disk.available_space() as f64,
            );
        }

        self.components.refresh(true);
        for component in self.components.list() {
            if let Some(celsius) = component.temperature().filter(|t| t.is_finite()) {
                out.add(
                    "host_temperature_celsius",
                    &[("sensor", component.label())],
                    f64::from(celsius),
                );
            }
        }
    }

    fn watched_processes(&mut self, out: &mut Samples) {
        if self.config.processes.is_empty() {
            return;
        }
        if self
            .last_scan
            .is_none_or(|at| at.elapsed() >= PROCESS_RESCAN)
        {
            self.watched = find_processes(&self.proc_root, &self.config.processes);
            self.last_scan = Some(Instant::now());
        }
        for name in &self.config.processes {
            let pids = self.watched.get(name).map(Vec::as_slice).unwrap_or(&[]);
            let (mut cpu_ticks, mut rss_pages, mut alive) = (0.0, 0.0, 0usize);
            for pid in pids {
                let dir = self.proc_root.join(pid.to_string());
                let Some((ticks, rss)) = std::fs::read_to_string(dir.join("stat"))
                    .ok()
                    .and_then(|stat| process_stat(&stat))
                else {
                    continue;
                };
                cpu_ticks += ticks;
                rss_pages += rss;
                alive += 1;
            }
            let labels = [("process", name.as_str())];
            out.add("host_process_count", &labels, alive as f64);
            if alive > 0 {
                out.add(
                    "host_process_cpu_seconds_total",
                    &labels,
                    cpu_ticks / self.ticks_per_second,
                );
                out.add(
                    "host_process_resident_memory_bytes",
                    &labels,
                    rss_pages * self.page_bytes,
                );
            }
        }
    }
}

fn is_pid(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

/// Finds the pids of processes by their `comm` name.
pub fn find_processes(proc_root: &Path, names: &[String]) -> HashMap<String, Vec<u32>> {
    let mut found: HashMap<String, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return found;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .filter(|n| is_pid(n))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim_end();
        if let Some(name) = names.iter().find(|n| *n == comm) {
            found.entry(name.clone()).or_default().push(pid);
        }
    }
    found
}

/// User plus system CPU ticks and resident pages from `/proc/<pid>/stat`. The command name in
/// parentheses may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn process_stat(stat: &str) -> Option<(f64, f64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_ascii_whitespace().collect();
    // After the name: state is field 3 of the man page, utime 14, stime 15, rss 24.
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    Some((field(14)? + field(15)?, field(24)?))
}

/// `/proc/diskstats`: per whole disk (`is_disk` tells partitions apart), bytes and operations.
pub fn diskstats(text: &str, is_disk: impl Fn(&str) -> bool, out: &mut Samples) {
    for line in text.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() < 14 {
            continue;
        }
        let device = fields[2];
        if device.starts_with("loop") || device.starts_with("ram") || device.starts_with("zram") {
            continue;
        }
        if !is_disk(device) {
            continue;
        }
        let number = |i: usize| fields[i].parse::<f64>().unwrap_or(0.0);
        let labels = [("device", device)];
        // Sectors in diskstats are always 512 bytes, whatever the device's sector size.
        out.add("host_disk_reads_completed_total", &labels, number(3));
        out.add("host_disk_read_bytes_total", &labels, number(5) * 512.0);
        out.add("host_disk_writes_completed_total", &labels, number(7));
        out.add("host_disk_written_bytes_total", &labels, number(9) * 512.0);
        out.add(
            "host_disk_io_time_seconds_total",
            &labels,
            number(12) / 1000.0,
        );
    }
}

/// `/proc/net/dev`: per interface, bytes, packets, errors and drops in both directions.
pub fn net_dev(text: &str, ignore: &[String], out: &mut Samples) {
    const NAMES: [(usize, &str); 8] = [
        (0, "host_network_receive_bytes_total"),
        (1, "host_network_receive_packets_total"),
        (2, "host_network_receive_errs_total"),
        (3, "host_network_receive_drop_total"),
        (8, "host_network_transmit_bytes_total"),
        (9, "host_network_transmit_packets_total"),
        (10, "host_network_transmit_errs_total"),
        (11, "host_network_transmit_drop_total"),
    ];
    for line in text.lines() {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || ignore.iter().any(|i| i == name) {
            continue;
        }
        let values: Vec<f64> = counters
            .split_ascii_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        if values.len() < 16 {
            continue;
        }
        for (index, metric) in NAMES {
            out.add(metric, &[("interface", name)], values[index]);
        }
    }
}

/// `/proc/stat`: runnable and blocked tasks, context switches, forks.
pub fn proc_stat(text: &str, out: &mut Samples) {
    for line in text.lines() {
        let mut parts = line.split_ascii_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = match key {
            "procs_running" => "host_procs_running",
            "procs_blocked" => "host_procs_blocked",
            "ctxt" => "host_context_switches_total",
            "processes" => "host_forks_total",
            _ => continue,
        };
        out.add(name, &[], value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(samples: Samples) -> Vec<String> {
        samples
            .values
            .into_iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect()
    }

    #[test]
    fn parses_proc_files() {
        let mut out = Samples::new();
        let text = "   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n \
                         179       0 mmcblk0 100 5 2000 30 40 6 800 90 0 120 150 0 0 0 0 0 0\n \
                         179       1 mmcblk0p1 90 5 1800 30 40 6 800 90 0 110 140 0 0 0 0 0 0\n";
        diskstats(text, |d| d == "mmcblk0", &mut out);
        let got = render(out);
        assert!(
            got.contains(&r#"host_disk_read_bytes_total{device="mmcblk0"} 1024000"#.to_string()),
            "{got:?}"
        );
        assert!(
            got.contains(&r#"host_disk_writes_completed_total{device="mmcblk0"} 40"#.to_string())
        );
        assert!(
            got.contains(&r#"host_disk_io_time_seconds_total{device="mmcblk0"} 0.12"#.to_string())
        );
        assert!(!got.iter().any(|l| l.contains("loop0") || l.contains("p1")));

        let mut out = Samples::new();
        let net = "Inter-|   Receive                                                |  Transmit\n \
                   face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                   lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0\n  \
                   eth0: 5000 40 1 2 0 0 0 0 7000 50 3 4 0 0 0 0\n";
        net_dev(net, &["lo".to_string()], &mut out);
        let got = render(out);
        assert_eq!(got.len(), 8, "{got:?}");
        assert!(got.contains(&r#"host_network_receive_drop_total{interface="eth0"} 2"#.to_string()));
        assert!(got
            .contains(&r#"host_network_transmit_bytes_total{interface="eth0"} 7000"#.to_string()));
        assert!(
            got.contains(&r#"host_network_transmit_drop_total{interface="eth0"} 4"#.to_string())
        );

        let stat = "4321 (my (odd) app) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100 200000 1234 18446744073709551615";
        assert_eq!(process_stat(stat), Some((300.0, 1234.0)));
        assert_eq!(process_stat("garbage"), None);
    }

    #[test]
    fn collects_this_host() {
        let mut collector = HostCollector::new(HostSection {
            processes: vec!["definitely-not-running".into()],
            ..HostSection::default()
        });
        let mut out = Samples::new();
        collector.collect(&mut out);
        let got = render(out);
        for name in [
            "host_cpu_usage_ratio{cpu=\"total\"}",
            "host_memory_total_bytes",
            "host_load1",
            "host_uptime_seconds",
            "host_processes",
            "host_procs_running",
            "host_process_count{process=\"definitely-not-running\"} 0",
        ] {
            assert!(
                got.iter().any(|l| l.starts_with(name)),
                "{name} missing: {got:?}"
            );
        }
        assert!(
            got.iter()
                .any(|l| l.starts_with("host_filesystem_size_bytes")),
            "{got:?}"
        );
    }
}
