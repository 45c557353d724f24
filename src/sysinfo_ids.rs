//! Identities and clocks of this machine that the sync protocol carries: machine id, boot id,
//! uptime, and the secrets files that must be readable by their owner only.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// `/etc/machine-id` (systemd's stable id of the installation), as a topic-safe device id.
pub fn machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
}

/// The kernel's id of this boot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_string())
        .unwrap_or_default()
}

/// Milliseconds since boot, suspend included (the first field of `/proc/uptime`).
pub fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |secs| (secs * 1000.0) as u64)
}

/// Milliseconds since the Unix epoch.
pub fn wall_ms() -> i64 {
    outpost::timearg::now_ms()
}

/// Reads a secret, refusing a file that other users can read or write: a device's key is its
/// whole identity, and a readable one lets any local user impersonate it.
pub fn read_secret(path: &Path, what: &str) -> Result<String> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    if metadata.mode() & 0o077 != 0 {
        bail!(
            "the {what} {} is readable by other users (mode {:o}): run `chmod 600 {}`",
            path.display(),
            metadata.mode() & 0o777,
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// Writes a secret readable by its owner only.
pub fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// `bytes` random bytes from the kernel.
/// `bytes` random bytes as lowercase hex: passwords, tokens, ids.
pub fn random_hex(bytes: usize) -> Result<String> {
    Ok(random_bytes(bytes)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

pub fn random_bytes(bytes: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; bytes];
    getrandom::getrandom(&mut out).context("the kernel's random source")?;
    Ok(out)
}
