//! What runs on the device: the processes that use the most CPU and memory, each attributed to
//! its container, and on a Jetson the GPU memory each process holds. A Jetson's GPU shares the
//! RAM, and the kernel's nvmap allocator accounts what each process allocated for it in debugfs
//! (`/sys/kernel/debug/nvmap/iovmm/clients`, as jtop reads it), which only root can read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Samples;
use crate::config_values::Interval;

/// The agent's `[processes]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessesSection {
    pub enabled: bool,
    pub interval: Interval,
    /// How many processes are recorded by CPU, and how many by memory (the two lists overlap).
    pub top: usize,
    /// The nvmap accounting of a Jetson's GPU memory (needs root).
    pub nvmap_clients: PathBuf,
}

impl Default for ProcessesSection {
    fn default() -> Self {
        ProcessesSection {
            enabled: true,
            interval: Interval::secs(10),
            top: 5,
            nvmap_clients: PathBuf::from("/sys/kernel/debug/nvmap/iovmm/clients"),
        }
    }
}

/// The most processes a list may name: each is a series.
pub const MAX_TOP: usize = 50;

/// One process as `/proc/<pid>/stat` gives it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    comm: String,
    /// User and system time, in clock ticks.
    ticks: f64,
    rss_bytes: f64,
}

pub struct ProcessesCollector {
    config: ProcessesSection,
    proc_root: PathBuf,
    /// Each process's ticks at the last round, and when that was.
    last: HashMap<u32, f64>,
    last_at: Option<std::time::Instant>,
    nvmap_refused: bool,
}

impl ProcessesCollector {
    pub fn new(config: ProcessesSection) -> Self {
        Self::with_proc_root(config, Path::new("/proc"))
    }

    pub fn with_proc_root(config: ProcessesSection, proc_root: &Path) -> Self {
        ProcessesCollector {
            config,
            proc_root: proc_root.to_path_buf(),
            last: HashMap::new(),
            last_at: None,
            nvmap_refused: false,
        }
    }

    pub fn collect(&mut self, out: &mut Samples) {
        let now = std::time::Instant::now();
        let processes = scan(&self.proc_root);
        let elapsed = self.last_at.map(|at| now.duration_since(at).as_secs_f64());
        let ticks_per_second = super::host::ticks_per_second();
        // CPU over the last round, as a share of one core; none on the first round.
        let mut by_cpu: Vec<(u32, f64)> = match elapsed.filter(|e| *e > 0.0) {
            Some(elapsed) => processes
                .iter()
                .filter_map(|(pid, seen)| {
                    let before = self.last.get(pid)?;
                    let used = (seen.ticks - before).max(0.0) / ticks_per_second;
                    Some((*pid, used / elapsed))
                })
                .collect(),
            None => Vec::new(),
        };
        self.last = processes.iter().map(|(pid, s)| (*pid, s.ticks)).collect();
        self.last_at = Some(now);
        let top = self.config.top.min(MAX_TOP);
        by_cpu.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        by_cpu.truncate(top);
        let mut by_memory: Vec<(u32, f64)> = processes
            .iter()
            .map(|(pid, s)| (*pid, s.rss_bytes))
            .collect();
        by_memory.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        by_memory.truncate(top);
        let mut containers = HashMap::new();
        let proc_root = self.proc_root.clone();
        let mut labels_of = |pid: u32| -> Option<[String; 3]> {
            let seen = processes.get(&pid)?;
            let container = containers
                .entry(pid)
                .or_insert_with(|| container_of_process(&proc_root, pid))
                .clone();
            Some([pid.to_string(), seen.comm.clone(), container])
        };
        let lists = [
            ("outpost_top_process_cpu_ratio", by_cpu),
            ("outpost_top_process_resident_memory_bytes", by_memory),
        ];
        for (metric, list) in lists {
            for (pid, value) in list {
                if let Some([pid, comm, container]) = labels_of(pid) {
                    let labels = [
                        ("pid", pid.as_str()),
                        ("comm", comm.as_str()),
                        ("container", container.as_str()),
                    ];
                    out.add(metric, &labels, value);
                }
            }
        }
        let path = self.config.nvmap_clients.clone();
        gpu_memory(&path, &mut self.nvmap_refused, &mut labels_of, out);
    }
}

/// Each process's nvmap allocations, on a Jetson (it has `/dev/nvmap`) that lets them be read.
fn gpu_memory(
    path: &Path,
    refused: &mut bool,
    labels_of: &mut impl FnMut(u32) -> Option<[String; 3]>,
    out: &mut Samples,
) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            let jetson = error.kind() == std::io::ErrorKind::PermissionDenied
                || Path::new("/dev/nvmap").exists();
            if !jetson {
                return;
            }
            // debugfs is root's: said once, and in a series, so that an empty chart says why.
            if !*refused {
                tracing::warn!(path = %path.display(), %error, "per-process GPU memory needs the agent to run as root (debugfs)");
            }
            *refused = true;
            out.add("jetson_process_gpu_memory_readable", &[], 0.0);
            return;
        }
    };
    *refused = false;
    out.add("jetson_process_gpu_memory_readable", &[], 1.0);
    for (pid, bytes) in nvmap_clients(&text) {
        // A kernel client, or a process gone since the scan: its pid alone.
        let [pid_label, comm, container] =
            labels_of(pid).unwrap_or_else(|| [pid.to_string(), String::new(), String::new()]);
        let labels = [
            ("pid", pid_label.as_str()),
            ("comm", comm.as_str()),
            ("container", container.as_str()),
        ];
        out.add("jetson_process_gpu_memory_bytes", &labels, bytes);
    }
}

/// Every process's name, CPU ticks and resident memory.
fn scan(proc_root: &Path) -> HashMap<u32, Seen> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return out;
    };
    let page = super::host::page_bytes();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(seen) = parse_stat(&stat, page) {
            out.insert(pid, seen);
        }
    }
    out
}

/// `/proc/<pid>/stat`: the name between the first `(` and the last `)` (it may hold spaces and
/// parentheses), then utime and stime (fields 14 and 15) and rss in pages (field 24).
fn parse_stat(stat: &str, page_bytes: f64) -> Option<Seen> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let stat = super::own_process::parse_stat(stat)?;
    Some(Seen {
        comm,
        ticks: stat.cpu_ticks,
        rss_bytes: stat.resident_pages * page_bytes,
    })
}

/// The container a process runs in (its name where the runtime's cgroup names it, the short
/// id), or empty for one on the host.
fn container_of_process(proc_root: &Path, pid: u32) -> String {
    let Ok(text) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")) else {
        return String::new();
    };
    for line in text.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        let parts: Vec<&str> = path.split('/').collect();
        for pair in parts.windows(2) {
            if let Some((id, _)) = super::containers::container_of(pair[1], pair[0]) {
                return id[..12].to_string();
            }
        }
    }
    String::new()
}

/// nvmap's client list: a header, then per client `CLIENT PROCESS PID SIZEK` (the kernel's
/// `%-18s %18s %8u %10lluK`), and a `total` line. Sizes are summed per process.
pub fn nvmap_clients(text: &str) -> Vec<(u32, f64)> {
    let mut by_pid: HashMap<u32, f64> = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() < 4 || fields[0] == "total" {
            continue;
        }
        let (Some(size), Ok(pid)) = (
            fields[fields.len() - 1].strip_suffix('K'),
            fields[fields.len() - 2].parse::<u32>(),
        ) else {
            continue;
        };
        let Ok(kib) = size.parse::<f64>() else {
            continue;
        };
        *by_pid.entry(pid).or_default() += kib * 1024.0;
    }
    let mut out: Vec<(u32, f64)> = by_pid.into_iter().collect();
    out.sort_by_key(|(pid, _)| *pid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_awkward_names() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 \
                    12345 1000000 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let seen = parse_stat(stat, 4096.0).unwrap();
        assert_eq!(seen.comm, "my (odd) name");
        assert_eq!(seen.ticks, 300.0);
        assert_eq!(seen.rss_bytes, 2048.0 * 4096.0);
        assert_eq!(parse_stat("garbage", 4096.0), None);
        assert_eq!(parse_stat("1 (x) S", 4096.0), None);
    }

    #[test]
    fn nvmap_client_lists_in_the_kernels_layout() {
        // Laid out with the kernel's formats (drivers/video/tegra/nvmap, debugfs `clients`).
        let text = format!(
            "{:<18} {:>18} {:>8} {:>11}\n{:<18} {:>18} {:>8} {:>10}K\n{:<18} {:>18} {:>8} {:>10}K\n\
             {:<18} {:>18} {:>8} {:>10}K\n{:<18} {:<18} {:>8} {:>10}K\n",
            "CLIENT", "PROCESS", "PID", "SIZE",
            "user", "deepstream-app", 1234, 262144,
            "user", "deepstream-app", 1234, 1024,
            "user", "nvargus-daemon", 987, 65536,
            "total", "", "", 328704,
        );
        assert_eq!(
            nvmap_clients(&text),
            [(987, 65536.0 * 1024.0), (1234, 263168.0 * 1024.0)]
        );
        assert!(nvmap_clients("CLIENT PROCESS PID SIZE\nnot a row K\n").is_empty());
    }

    #[test]
    fn this_process_is_found_with_its_cpu_and_memory() {
        let config = ProcessesSection {
            top: MAX_TOP,
            nvmap_clients: PathBuf::from("/nonexistent/clients"),
            ..ProcessesSection::default()
        };
        let mut collector = ProcessesCollector::new(config);
        let mut out = Samples::new();
        collector.collect(&mut out);
        let me = std::process::id().to_string();
        let memory = crate::collect::render(out);
        assert!(
            memory.iter().any(
                |l| l.starts_with("outpost_top_process_resident_memory_bytes")
                    && l.contains(&format!("pid=\"{me}\""))
            ),
            "{memory:?}"
        );
        // Busy between two rounds: among the top by CPU.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(300);
        let mut spin = 0u64;
        while std::time::Instant::now() < until {
            spin = spin.wrapping_add(std::hint::black_box(1));
        }
        let mut out = Samples::new();
        collector.collect(&mut out);
        let cpu: Vec<String> = crate::collect::render(out)
            .into_iter()
            .filter(|l| {
                l.starts_with("outpost_top_process_cpu_ratio")
                    && l.contains(&format!("pid=\"{me}\""))
            })
            .collect();
        let share: f64 = cpu[0].rsplit_once(' ').unwrap().1.parse().unwrap();
        assert!(share > 0.2 && share < 4.0, "{cpu:?} after {spin} turns");
    }
}
