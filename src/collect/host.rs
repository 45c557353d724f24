//! Host metrics under node_exporter's names, labels and units (`node_cpu_seconds_total`,
//! `node_memory_*_bytes`, `node_filesystem_*`, `node_disk_*`, `node_network_*`, load, pressure,
//! hwmon, thermal zones, uname), read from `/proc` and `/sys` as node_exporter reads them, so
//! that dashboards and alert rules written for node_exporter work unchanged. Outpost's own
//! names (`host_*`) remain only for what node_exporter has not: CPU use as a ratio (from
//! sysinfo), memory and swap in use, uptime, and the watched processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sysinfo::{CpuRefreshKind, RefreshKind, System};

use super::{kernel, Samples};
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
    /// A directory of `*.prom` files to read, as node_exporter's
    /// `--collector.textfile.directory` (see `textfile`); none by default.
    pub textfile_directory: Option<PathBuf>,
    /// How often those files are read: scripts rewrite them every few minutes at most, and
    /// storing their series every second would cost flash for nothing.
    pub textfile_interval: Interval,
}

impl Default for HostSection {
    fn default() -> Self {
        HostSection {
            enabled: true,
            interval: Interval::secs(1),
            processes: Vec::new(),
            ignore_mounts: Vec::new(),
            ignore_interfaces: vec!["lo".into()],
            textfile_directory: None,
            textfile_interval: Interval::secs(15),
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
    config: HostSection,
    proc_root: PathBuf,
    sys_root: PathBuf,
    /// Per watched name, the pids found at the last scan.
    watched: HashMap<String, Vec<u32>>,
    last_scan: Option<Instant>,
    ticks_per_second: f64,
    page_bytes: f64,
    /// `node_uname_info`'s labels: they do not change while the agent runs.
    uname: Vec<(&'static str, String)>,
}

impl HostCollector {
    pub fn new(config: HostSection) -> Self {
        let system = System::new_with_specifics(
            RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing().with_cpu_usage()),
        );
        let uname = rustix::system::uname();
        let text = |s: &std::ffi::CStr| s.to_string_lossy().into_owned();
        HostCollector {
            system,
            config,
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            watched: HashMap::new(),
            last_scan: None,
            ticks_per_second: ticks_per_second(),
            page_bytes: page_bytes(),
            uname: vec![
                ("sysname", text(uname.sysname())),
                ("release", text(uname.release())),
                ("version", text(uname.version())),
                ("machine", text(uname.machine())),
                ("nodename", text(uname.nodename())),
                ("domainname", text(uname.domainname())),
            ],
        }
    }

    /// The collector over other roots (fixture trees in the tests).
    #[cfg(test)]
    pub fn with_roots(config: HostSection, proc_root: &Path, sys_root: &Path) -> Self {
        HostCollector {
            proc_root: proc_root.to_path_buf(),
            sys_root: sys_root.to_path_buf(),
            ..HostCollector::new(config)
        }
    }

    fn read(&self, root: &Path, file: &str) -> Option<String> {
        std::fs::read_to_string(root.join(file)).ok()
    }

    /// One round: node_exporter's figures under node_exporter's names, and Outpost's own where
    /// node_exporter has none (CPU use as a ratio, memory and swap in use, uptime, watched
    /// processes).
    pub fn collect(&mut self, out: &mut Samples) {
        self.cpu_usage(out);
        let proc_root = self.proc_root.clone();
        if let Some(text) = self.read(&proc_root, "stat") {
            proc_stat(&text, self.ticks_per_second, out);
        }
        if let Some(text) = self.read(&proc_root, "meminfo") {
            meminfo(&text, out);
        }
        if let Some(text) = self.read(&proc_root, "loadavg") {
            loadavg(&text, out);
        }
        if let Some(seconds) = self
            .read(&proc_root, "uptime")
            .and_then(|t| t.split_ascii_whitespace().next()?.parse::<f64>().ok())
        {
            out.add("host_uptime_seconds", &[], seconds);
        }
        if let Some(text) = self.read(&proc_root, "diskstats") {
            let block = self.sys_root.join("block");
            diskstats(&text, |device| block.join(device).exists(), out);
        }
        if let Some(text) = self.read(&proc_root, "net/dev") {
            net_dev(&text, &self.config.ignore_interfaces, out);
        }
        for kind in ["cpu", "io", "memory"] {
            if let Some(text) = self.read(&proc_root, &format!("pressure/{kind}")) {
                pressure(kind, &text, out);
            }
        }
        if let Some(text) = self.read(&proc_root, "mounts") {
            self.filesystems(&text, out);
        }
        self.kernel(out);
        cpufreq(&self.sys_root, out);
        hwmon(&self.sys_root.join("class/hwmon"), out);
        thermal_zones(&self.sys_root.join("class/thermal"), out);
        let uname: Vec<(&str, &str)> = self.uname.iter().map(|(k, v)| (*k, v.as_str())).collect();
        out.add("node_uname_info", &uname, 1.0);
        out.add(
            "node_time_seconds",
            &[],
            outpost::timearg::now_ms() as f64 / 1000.0,
        );
        if let Ok(entries) = std::fs::read_dir(&self.proc_root) {
            let count = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_str().is_some_and(is_pid))
                .count();
            out.add("node_processes_pids", &[], count as f64);
        }
        self.watched_processes(out);
    }

    /// The kernel's counters that node_exporter's other default collectors read (see
    /// `kernel`).
    fn kernel(&self, out: &mut Samples) {
        let proc_root = &self.proc_root;
        let read = |file: &str| self.read(proc_root, file);
        if let Some(text) = read("vmstat") {
            kernel::vmstat(&text, out);
        }
        if let Some(text) = read("sys/fs/file-nr") {
            kernel::filefd(&text, out);
        }
        for file in ["net/sockstat", "net/sockstat6"] {
            if let Some(text) = read(file) {
                kernel::sockstat(&text, self.page_bytes, out);
            }
        }
        for file in ["net/netstat", "net/snmp"] {
            if let Some(text) = read(file) {
                kernel::netstat(&text, out);
            }
        }
        if let Some(text) = read("net/snmp6") {
            kernel::snmp6(&text, out);
        }
        for (file, ip) in [("net/udp", "v4"), ("net/udp6", "v6")] {
            if let Some(text) = read(file) {
                kernel::udp_queues(&text, ip, out);
            }
        }
        if let Some(text) = read("net/softnet_stat") {
            kernel::softnet(&text, out);
        }
        if let Some(text) = read("net/arp") {
            kernel::arp(&text, out);
        }
        kernel::sysctls(proc_root, out);
        // Refused only by a seccomp filter; node_exporter then leaves the figures out too.
        if let Ok(clock) = super::timex::read() {
            super::timex::samples(&clock, out);
        }
        kernel::netclass(
            &self.sys_root.join("class/net"),
            &self.config.ignore_interfaces,
            out,
        );
    }

    /// Busy share of each core and of all: Outpost's own (node_exporter leaves the ratio to
    /// PromQL over `node_cpu_seconds_total`).
    fn cpu_usage(&mut self, out: &mut Samples) {
        self.system
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        out.add(
            "host_cpu_usage_ratio",
            &[("cpu", "total")],
            f64::from(self.system.global_cpu_usage()) / 100.0,
        );
        for (index, cpu) in self.system.cpus().iter().enumerate() {
            let index = index.to_string();
            out.add(
                "host_cpu_usage_ratio",
                &[("cpu", index.as_str())],
                f64::from(cpu.cpu_usage()) / 100.0,
            );
        }
    }

    /// Mounted file systems (pseudo ones and `ignore_mounts` left out), as node_exporter's
    /// filesystem collector names them.
    fn filesystems(&self, mounts: &str, out: &mut Samples) {
        for (device, mountpoint, fstype, options) in parse_mounts(mounts) {
            if PSEUDO_FILESYSTEMS.contains(&fstype.as_str())
                || self.config.ignore_mounts.contains(&mountpoint)
            {
                continue;
            }
            let labels = [
                ("device", device.as_str()),
                ("fstype", fstype.as_str()),
                ("mountpoint", mountpoint.as_str()),
            ];
            // A file system that cannot be asked (a dead network mount, a vanished device)
            // is reported, not skipped: its absence would hide the fault.
            let Ok(stat) = rustix::fs::statvfs(Path::new(&mountpoint)) else {
                out.add("node_filesystem_device_error", &labels, 1.0);
                continue;
            };
            out.add("node_filesystem_device_error", &labels, 0.0);
            let block = stat.f_frsize as f64;
            out.add(
                "node_filesystem_size_bytes",
                &labels,
                stat.f_blocks as f64 * block,
            );
            out.add(
                "node_filesystem_free_bytes",
                &labels,
                stat.f_bfree as f64 * block,
            );
            out.add(
                "node_filesystem_avail_bytes",
                &labels,
                stat.f_bavail as f64 * block,
            );
            out.add("node_filesystem_files", &labels, stat.f_files as f64);
            out.add("node_filesystem_files_free", &labels, stat.f_ffree as f64);
            let readonly = options.split(',').any(|o| o == "ro");
            out.add(
                "node_filesystem_readonly",
                &labels,
                f64::from(u8::from(readonly)),
            );
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
                let Some(stat) = std::fs::read_to_string(dir.join("stat"))
                    .ok()
                    .and_then(|stat| super::own_process::parse_stat(&stat))
                else {
                    continue;
                };
                cpu_ticks += stat.cpu_ticks;
                rss_pages += stat.resident_pages;
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

/// `/proc/diskstats`: per whole disk (`is_disk` tells partitions apart), node_exporter's
/// diskstats figures. Sectors are always 512 bytes there, whatever the device's sector size.
pub fn diskstats(text: &str, is_disk: impl Fn(&str) -> bool, out: &mut Samples) {
    // (field, metric, scale): fields counted from 0 after major, minor and name.
    // Discards (kernel 4.18) and flushes (5.5) only where the kernel has them.
    const FIELDS: [(usize, &str, f64); 17] = [
        (0, "node_disk_reads_completed_total", 1.0),
        (1, "node_disk_reads_merged_total", 1.0),
        (2, "node_disk_read_bytes_total", 512.0),
        (3, "node_disk_read_time_seconds_total", 0.001),
        (4, "node_disk_writes_completed_total", 1.0),
        (5, "node_disk_writes_merged_total", 1.0),
        (6, "node_disk_written_bytes_total", 512.0),
        (7, "node_disk_write_time_seconds_total", 0.001),
        (8, "node_disk_io_now", 1.0),
        (9, "node_disk_io_time_seconds_total", 0.001),
        (10, "node_disk_io_time_weighted_seconds_total", 0.001),
        (11, "node_disk_discards_completed_total", 1.0),
        (12, "node_disk_discards_merged_total", 1.0),
        (13, "node_disk_discarded_sectors_total", 1.0),
        (14, "node_disk_discard_time_seconds_total", 0.001),
        (15, "node_disk_flush_requests_total", 1.0),
        (16, "node_disk_flush_requests_time_seconds_total", 0.001),
    ];
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
        for (field, metric, scale) in FIELDS {
            if let Some(Ok(value)) = fields.get(3 + field).map(|f| f.parse::<f64>()) {
                out.add(metric, &[("device", device)], value * scale);
            }
        }
    }
}

/// `/proc/net/dev`: per interface, node_exporter's netdev counters.
pub fn net_dev(text: &str, ignore: &[String], out: &mut Samples) {
    const NAMES: [&str; 16] = [
        "node_network_receive_bytes_total",
        "node_network_receive_packets_total",
        "node_network_receive_errs_total",
        "node_network_receive_drop_total",
        "node_network_receive_fifo_total",
        "node_network_receive_frame_total",
        "node_network_receive_compressed_total",
        "node_network_receive_multicast_total",
        "node_network_transmit_bytes_total",
        "node_network_transmit_packets_total",
        "node_network_transmit_errs_total",
        "node_network_transmit_drop_total",
        "node_network_transmit_fifo_total",
        "node_network_transmit_colls_total",
        "node_network_transmit_carrier_total",
        "node_network_transmit_compressed_total",
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
        if values.len() < NAMES.len() {
            continue;
        }
        for (metric, value) in NAMES.iter().zip(values) {
            out.add(metric, &[("device", name)], value);
        }
    }
}

/// `/proc/stat`: CPU time per core and mode, tasks, context switches, forks, interrupts and
/// the boot time, as node_exporter's cpu and stat collectors name them.
pub fn proc_stat(text: &str, ticks_per_second: f64, out: &mut Samples) {
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    for line in text.lines() {
        let mut parts = line.split_ascii_whitespace();
        let Some(key) = parts.next() else { continue };
        if let Some(cpu) = key.strip_prefix("cpu").filter(|n| !n.is_empty()) {
            for (mode, ticks) in MODES.iter().zip(parts) {
                if let Ok(ticks) = ticks.parse::<f64>() {
                    out.add(
                        "node_cpu_seconds_total",
                        &[("cpu", cpu), ("mode", mode)],
                        ticks / ticks_per_second,
                    );
                }
            }
            continue;
        }
        let Some(value) = parts.next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let name = match key {
            "procs_running" => "node_procs_running",
            "procs_blocked" => "node_procs_blocked",
            "ctxt" => "node_context_switches_total",
            "processes" => "node_forks_total",
            "intr" => "node_intr_total",
            "btime" => "node_boot_time_seconds",
            _ => continue,
        };
        out.add(name, &[], value);
    }
}

/// `/proc/meminfo`: every line as node_exporter names it (`Active(anon)` becomes
/// `node_memory_Active_anon_bytes`; a figure without a unit, such as `HugePages_Total`, keeps
/// no `_bytes`), plus Outpost's memory and swap in use, which node_exporter leaves to PromQL.
pub fn meminfo(text: &str, out: &mut Samples) {
    let mut figures: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_ascii_whitespace();
        let Some(value) = parts.next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let key = key.trim().replace('(', "_").replace(')', "");
        let name = match parts.next() {
            Some("kB") => format!("node_memory_{key}_bytes"),
            _ => format!("node_memory_{key}"),
        };
        let value = if name.ends_with("_bytes") {
            value * 1024.0
        } else {
            value
        };
        out.add(&name, &[], value);
        figures.insert(key, value);
    }
    let get = |k: &str| figures.get(k).copied();
    if let (Some(total), Some(available)) = (get("MemTotal"), get("MemAvailable")) {
        out.add("host_memory_used_bytes", &[], total - available);
    }
    if let (Some(total), Some(free)) = (get("SwapTotal"), get("SwapFree")) {
        out.add("host_swap_used_bytes", &[], total - free);
    }
}

/// `/proc/loadavg`: `node_load1`, `node_load5`, `node_load15`.
pub fn loadavg(text: &str, out: &mut Samples) {
    let fields: Vec<f64> = text
        .split_ascii_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect();
    if let [one, five, fifteen] = fields[..] {
        out.add("node_load1", &[], one);
        out.add("node_load5", &[], five);
        out.add("node_load15", &[], fifteen);
    }
}

/// `/proc/pressure/<kind>` (PSI): the time some (`waiting`) or all (`stalled`) tasks were held
/// up, in seconds, as node_exporter's pressure collector names it.
pub fn pressure(kind: &str, text: &str, out: &mut Samples) {
    for line in text.lines() {
        let mut parts = line.split_ascii_whitespace();
        let which = match parts.next() {
            Some("some") => "waiting",
            Some("full") => "stalled",
            _ => continue,
        };
        let Some(total) = parts
            .find_map(|p| p.strip_prefix("total="))
            .and_then(|t| t.parse::<f64>().ok())
        else {
            continue;
        };
        // node_exporter has no CPU "stalled" figure in its default set; the kernel's is 0.
        if kind == "cpu" && which == "stalled" {
            continue;
        }
        out.add(
            &format!("node_pressure_{kind}_{which}_seconds_total"),
            &[],
            total / 1e6,
        );
    }
}

/// `/proc/mounts`: (device, mount point, type, options), with the octal escapes (`\040` for a
/// space) undone.
pub fn parse_mounts(text: &str) -> Vec<(String, String, String, String)> {
    let unescape = |field: &str| -> String {
        let bytes = field.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let octal = bytes
                .get(i + 1..i + 4)
                .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
            match (bytes[i], octal) {
                (b'\\', Some(digits)) => {
                    let code = digits.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0'));
                    out.push(u8::try_from(code).unwrap_or(b'?'));
                    i += 4;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (device, mountpoint, fstype, options) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            Some((
                unescape(device),
                unescape(mountpoint),
                fstype.to_string(),
                options.to_string(),
            ))
        })
        .collect()
}

/// The numbered entries `prefix<N>` of a sysfs directory, by number.
fn numbered(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let number = name.strip_prefix(prefix)?.parse::<u64>().ok()?;
            Some((number, number.to_string(), e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, n, p)| (n, p)).collect()
}

pub(super) fn read_number(path: &Path) -> Option<f64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `node_cpu_scaling_frequency_hertz`: each core's current clock (cpufreq, in kHz there).
pub fn cpufreq(sys_root: &Path, out: &mut Samples) {
    for (cpu, dir) in numbered(&sys_root.join("devices/system/cpu"), "cpu") {
        if let Some(khz) = read_number(&dir.join("cpufreq/scaling_cur_freq")) {
            out.add(
                "node_cpu_scaling_frequency_hertz",
                &[("cpu", &cpu)],
                khz * 1000.0,
            );
        }
    }
}

/// A name for sysfs text in a label: lower case, anything but letters, digits and `_` made `_`.
fn clean_name(text: &str) -> String {
    let cleaned: String = text
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    cleaned.trim_matches('_').to_string()
}

/// node_exporter's `chip` label of a hwmon directory: from the device it belongs to
/// (`platform_coretemp_0`), else its `name` file, else the directory's own name; so that it
/// does not change when drivers load in another order.
fn hwmon_chip(dir: &Path) -> String {
    if let Ok(device) = std::fs::canonicalize(dir.join("device")) {
        let name = device.file_name().map(|n| clean_name(&n.to_string_lossy()));
        let kind = device
            .parent()
            .and_then(Path::file_name)
            .map(|n| clean_name(&n.to_string_lossy()));
        match (kind, name) {
            (Some(kind), Some(name)) if !kind.is_empty() && !name.is_empty() => {
                return format!("{kind}_{name}")
            }
            (_, Some(name)) if !name.is_empty() => return name,
            _ => {}
        }
    }
    if let Some(name) = std::fs::read_to_string(dir.join("name"))
        .ok()
        .map(|n| clean_name(&n))
        .filter(|n| !n.is_empty())
    {
        return name;
    }
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    clean_name(&real.file_name().unwrap_or_default().to_string_lossy())
}

/// hwmon temperature sensors: `node_hwmon_temp_celsius{chip,sensor}`, with the chips' names
/// (`node_hwmon_chip_names`) and the sensors' labels (`node_hwmon_sensor_label`).
pub fn hwmon(class_dir: &Path, out: &mut Samples) {
    for (_, dir) in numbered(class_dir, "hwmon") {
        let chip = hwmon_chip(&dir);
        if let Ok(name) = std::fs::read_to_string(dir.join("name")) {
            out.add(
                "node_hwmon_chip_names",
                &[("chip", &chip), ("chip_name", name.trim())],
                1.0,
            );
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut sensors: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let sensor = name.strip_suffix("_input")?;
                sensor.starts_with("temp").then(|| sensor.to_string())
            })
            .collect();
        sensors.sort();
        for sensor in sensors {
            let labels = [("chip", chip.as_str()), ("sensor", sensor.as_str())];
            if let Some(milli) = read_number(&dir.join(format!("{sensor}_input"))) {
                out.add("node_hwmon_temp_celsius", &labels, milli / 1000.0);
            }
            if let Ok(label) = std::fs::read_to_string(dir.join(format!("{sensor}_label"))) {
                out.add(
                    "node_hwmon_sensor_label",
                    &[
                        ("chip", &chip),
                        ("sensor", &sensor),
                        ("label", label.trim()),
                    ],
                    1.0,
                );
            }
        }
    }
}

/// `node_thermal_zone_temp{zone,type}`: the kernel's thermal zones, in degrees Celsius.
pub fn thermal_zones(class_dir: &Path, out: &mut Samples) {
    for (zone, dir) in numbered(class_dir, "thermal_zone") {
        let kind = std::fs::read_to_string(dir.join("type")).unwrap_or_default();
        if let Some(milli) = read_number(&dir.join("temp")) {
            out.add(
                "node_thermal_zone_temp",
                &[("zone", &zone), ("type", kind.trim())],
                milli / 1000.0,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::render;

    fn has(got: &[String], line: &str) -> bool {
        got.iter().any(|l| l == line)
    }

    #[test]
    fn parses_proc_files_into_node_exporter_names() {
        let mut out = Samples::new();
        let text = "   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n \
                         179       0 mmcblk0 100 5 2000 30 40 6 800 90 0 120 150 0 0 0 0 0 0\n \
                         179       1 mmcblk0p1 90 5 1800 30 40 6 800 90 0 110 140 0 0 0 0 0 0\n";
        diskstats(text, |d| d == "mmcblk0", &mut out);
        let got = render(out);
        for line in [
            r#"node_disk_read_bytes_total{device="mmcblk0"} 1024000"#,
            r#"node_disk_writes_completed_total{device="mmcblk0"} 40"#,
            r#"node_disk_io_time_seconds_total{device="mmcblk0"} 0.12"#,
            r#"node_disk_io_time_weighted_seconds_total{device="mmcblk0"} 0.15"#,
            r#"node_disk_reads_merged_total{device="mmcblk0"} 5"#,
        ] {
            assert!(has(&got, line), "{line}: {got:?}");
        }
        assert!(!got.iter().any(|l| l.contains("loop0") || l.contains("p1")));

        let mut out = Samples::new();
        let net = "Inter-|   Receive                                                |  Transmit\n \
                   face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                   lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0\n  \
                   eth0: 5000 40 1 2 0 0 0 9 7000 50 3 4 0 0 0 0\n";
        net_dev(net, &["lo".to_string()], &mut out);
        let got = render(out);
        assert_eq!(got.len(), 16, "{got:?}");
        assert!(has(
            &got,
            r#"node_network_receive_drop_total{device="eth0"} 2"#
        ));
        assert!(has(
            &got,
            r#"node_network_receive_multicast_total{device="eth0"} 9"#
        ));
        assert!(has(
            &got,
            r#"node_network_transmit_bytes_total{device="eth0"} 7000"#
        ));

        let mut out = Samples::new();
        let stat = "cpu  10 0 5 100 1 0 0 0 0 0\ncpu0 250 1 50 1000 2 3 4 5 0 0\n\
                    intr 12345 0 0\nctxt 999\nbtime 1700000000\nprocesses 77\n\
                    procs_running 3\nprocs_blocked 1\n";
        proc_stat(stat, 100.0, &mut out);
        let got = render(out);
        for line in [
            r#"node_cpu_seconds_total{cpu="0",mode="user"} 2.5"#,
            r#"node_cpu_seconds_total{cpu="0",mode="steal"} 0.05"#,
            "node_intr_total 12345",
            "node_context_switches_total 999",
            "node_boot_time_seconds 1700000000",
            "node_forks_total 77",
            "node_procs_running 3",
        ] {
            assert!(has(&got, line), "{line}: {got:?}");
        }
        assert!(
            !got.iter().any(|l| l.contains("cpu=\"\"")),
            "the all-cores line is no core"
        );

        let mut out = Samples::new();
        meminfo(
            "MemTotal:       16000 kB\nMemAvailable:    4000 kB\nActive(anon):      12 kB\n\
             HugePages_Total:       0\nSwapTotal: 100 kB\nSwapFree: 40 kB\n",
            &mut out,
        );
        let got = render(out);
        for line in [
            "node_memory_MemTotal_bytes 16384000",
            "node_memory_Active_anon_bytes 12288",
            "node_memory_HugePages_Total 0",
            "host_memory_used_bytes 12288000",
            "host_swap_used_bytes 61440",
        ] {
            assert!(has(&got, line), "{line}: {got:?}");
        }

        let mut out = Samples::new();
        loadavg("0.52 0.40 0.33 2/345 6789\n", &mut out);
        pressure(
            "io",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=2500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n",
            &mut out,
        );
        let got = render(out);
        for line in [
            "node_load1 0.52",
            "node_load15 0.33",
            "node_pressure_io_waiting_seconds_total 2.5",
            "node_pressure_io_stalled_seconds_total 1",
        ] {
            assert!(has(&got, line), "{line}: {got:?}");
        }

        let mounts = parse_mounts("/dev/sda1 /mnt/my\\040disk ext4 rw,relatime 0 0\n");
        assert_eq!(mounts[0].1, "/mnt/my disk");
    }

    /// A sysfs tree as a real machine lays out hwmon, thermal zones and cpufreq.
    #[test]
    fn reads_sysfs_sensors_as_node_exporter_labels_them() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        let device = sys.join("devices/platform/coretemp.0");
        let chip = sys.join("class/hwmon/hwmon3");
        std::fs::create_dir_all(&device).unwrap();
        std::fs::create_dir_all(&chip).unwrap();
        std::os::unix::fs::symlink(&device, chip.join("device")).unwrap();
        std::fs::write(chip.join("name"), "coretemp\n").unwrap();
        std::fs::write(chip.join("temp1_input"), "45000\n").unwrap();
        std::fs::write(chip.join("temp1_label"), "Package id 0\n").unwrap();
        let zone = sys.join("class/thermal/thermal_zone0");
        std::fs::create_dir_all(&zone).unwrap();
        std::fs::write(zone.join("type"), "CPU-therm\n").unwrap();
        std::fs::write(zone.join("temp"), "41500\n").unwrap();
        let freq = sys.join("devices/system/cpu/cpu1/cpufreq");
        std::fs::create_dir_all(&freq).unwrap();
        std::fs::write(freq.join("scaling_cur_freq"), "1420800\n").unwrap();
        let mut out = Samples::new();
        hwmon(&sys.join("class/hwmon"), &mut out);
        thermal_zones(&sys.join("class/thermal"), &mut out);
        cpufreq(sys, &mut out);
        let got = render(out);
        for line in [
            r#"node_hwmon_temp_celsius{chip="platform_coretemp_0",sensor="temp1"} 45"#,
            r#"node_hwmon_chip_names{chip="platform_coretemp_0",chip_name="coretemp"} 1"#,
            r#"node_hwmon_sensor_label{chip="platform_coretemp_0",label="Package id 0",sensor="temp1"} 1"#,
            r#"node_thermal_zone_temp{type="CPU-therm",zone="0"} 41.5"#,
            r#"node_cpu_scaling_frequency_hertz{cpu="1"} 1420800000"#,
        ] {
            assert!(has(&got, line), "{line}: {got:?}");
        }
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
            "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"}",
            "node_memory_MemTotal_bytes",
            "node_load1",
            "node_boot_time_seconds",
            "node_uname_info{",
            "node_time_seconds",
            "host_uptime_seconds",
            "node_processes_pids",
            "node_procs_running",
            "node_filesystem_size_bytes",
            "host_process_count{process=\"definitely-not-running\"} 0",
        ] {
            assert!(
                got.iter().any(|l| l.starts_with(name)),
                "{name} missing: {got:?}"
            );
        }
        // The fixture roots stand in for /proc and /sys.
        let empty = tempfile::tempdir().unwrap();
        let mut collector =
            HostCollector::with_roots(HostSection::default(), empty.path(), empty.path());
        let mut out = Samples::new();
        collector.collect(&mut out);
        assert!(!render(out).iter().any(|l| l.starts_with("node_load1")));
    }
}
