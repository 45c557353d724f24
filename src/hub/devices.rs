//! The fleet's credentials: one entry per device in a TOML file that only the hub's user may
//! read, managed with `outpost hub device add|list|revoke|delete`. The hub re-reads it when it
//! changes, so a revocation takes effect without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use outpost_web::sha256_hex;
use serde::{Deserialize, Serialize};

use crate::sysinfo_ids::{random_bytes, random_hex, read_secret, write_secret};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// The device's signing key, hex.
    pub key: String,
    /// SHA-256 of the broker password, hex. The password is 32 random bytes, so a fast hash
    /// is enough: there is nothing to guess.
    pub password_sha256: String,
    #[serde(default)]
    pub revoked: bool,
    pub added_ms: i64,
    /// The operators' labels (site, customer, model, role, group...): routes, silences and the
    /// fleet filter match on them as on the device's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A read-only broker login for people's own tools: it may subscribe to the fleet's alert and
/// status topics and nothing else (`hub/gate.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderEntry {
    /// SHA-256 of the broker password (32 random bytes), hex.
    pub password_sha256: String,
    pub added_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesFile {
    #[serde(default)]
    pub device: BTreeMap<String, DeviceEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reader: BTreeMap<String, ReaderEntry>,
}

impl DevicesFile {
    pub fn load(path: &Path) -> Result<DevicesFile> {
        if !path.exists() {
            return Ok(DevicesFile::default());
        }
        let text = read_secret(path, "devices file")?;
        let file: DevicesFile = toml::from_str(&text)
            .with_context(|| format!("invalid devices file {}", path.display()))?;
        for (id, entry) in &file.device {
            check_labels(&entry.labels).with_context(|| {
                format!(
                    "invalid devices file {}: device.{id}.labels",
                    path.display()
                )
            })?;
        }
        Ok(file)
    }

    /// The operators' labels of an enrolled, unrevoked device.
    pub fn labels(&self, device: &str) -> Option<&BTreeMap<String, String>> {
        Some(&self.device.get(device).filter(|d| !d.revoked)?.labels)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = format!(
            "# Outpost hub: device credentials. Managed by `outpost hub device ...`; keep it private.\n{}",
            toml::to_string(self)?
        );
        let temporary = path.with_extension("toml.tmp");
        write_secret(&temporary, &text)?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot replace {}", path.display()))
    }

    /// Whether `password` is the password of reader `name`.
    pub fn authenticates_reader(&self, name: &str, password: &str) -> bool {
        self.reader
            .get(name)
            .is_some_and(|r| r.password_sha256 == sha256_hex(password))
    }

    /// Whether `password` is the live password of `device`.
    pub fn authenticates(&self, device: &str, password: &str) -> bool {
        self.device
            .get(device)
            .is_some_and(|d| !d.revoked && d.password_sha256 == sha256_hex(password))
    }

    /// The names of the enrolled, unrevoked devices.
    pub fn names(&self) -> Vec<String> {
        self.device
            .iter()
            .filter(|(_, d)| !d.revoked)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The signing key of an enrolled, unrevoked device.
    pub fn key(&self, device: &str) -> Option<outpost_sync::DeviceKey> {
        let entry = self.device.get(device).filter(|d| !d.revoked)?;
        outpost_sync::DeviceKey::from_hex(&entry.key).ok()
    }
}

/// Labels the hub sets itself on every device alert; an operator's label must not pose as one.
const RESERVED_LABELS: [&str; 4] = ["device", "instance", "alertname", "severity"];
const MAX_LABELS: usize = 32;

/// Refuses a device label that routes and silences could not match or that would pose as
/// one the hub sets: names as Prometheus allows them, values of 1 to 128 printable characters.
pub fn check_label(name: &str, value: &str) -> Result<()> {
    let mut chars = name.chars();
    let well_formed = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64;
    if !well_formed {
        bail!("label name {name:?}: 1 to 64 letters, digits and '_', not starting with a digit");
    }
    if name.starts_with("__") || RESERVED_LABELS.contains(&name) {
        bail!("label name {name:?} is the hub's own (device, instance, alertname, severity, __*)");
    }
    if value.is_empty() || value.chars().count() > 128 || value.chars().any(char::is_control) {
        bail!("label {name}: the value must be 1 to 128 printable characters");
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        bail!("at most {MAX_LABELS} labels");
    }
    labels
        .iter()
        .try_for_each(|(name, value)| check_label(name, value))
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Enrol a device: create its key and broker password, and write the files it needs.
    ///
    /// Writes DIR/ID.key and DIR/ID.password (owner-only) and prints the agent's [mqtt] section.
    Add {
        id: String,
        /// Where to write the device's key and password files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The broker address the device should use, for the printed config.
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        url: String,
        #[arg(long, default_value = "default")]
        fleet: String,
    },
    /// List enrolled devices.
    List,
    /// Set or remove a device's labels (site, customer, model, role, group...).
    ///
    /// `outpost hub device label cam-7 site=north role=camera` sets two; `site-` removes one.
    /// Routes (`[[alerts.route]] match`), silences and the dashboard's filter match on them;
    /// the running hub re-reads the file.
    Label {
        id: String,
        /// NAME=VALUE to set, NAME- to remove; none to show the device's labels.
        changes: Vec<String>,
    },
    /// Refuse a device's connections and data from now on (the running hub re-reads the file).
    Revoke { id: String },
    /// Forget a device's credentials entirely.
    Delete { id: String },
}

/// Enrols `id`: a new key and broker password, written to `out/ID.key` and `out/ID.password`
/// (owner-only), and its entry saved in the devices file. Returns the two paths.
pub fn enrol(
    devices: &mut DevicesFile,
    devices_file: &Path,
    id: &str,
    out: &Path,
) -> Result<(PathBuf, PathBuf)> {
    outpost_sync::topic::check_id("device", id)?;
    if devices.device.contains_key(id) {
        bail!("device {id:?} is already enrolled; `outpost hub device delete {id}` first");
    }
    if devices.reader.contains_key(id) {
        bail!("{id:?} is a reader's login; a device needs a name of its own");
    }
    let key = outpost_sync::DeviceKey::new(random_bytes(32)?)?;
    let password = random_hex(32)?;
    let key_path = out.join(format!("{id}.key"));
    let password_path = out.join(format!("{id}.password"));
    write_secret(&key_path, &format!("{}\n", key.to_hex()))?;
    write_secret(&password_path, &format!("{password}\n"))?;
    devices.device.insert(
        id.to_string(),
        DeviceEntry {
            key: key.to_hex(),
            password_sha256: sha256_hex(&password),
            revoked: false,
            added_ms: outpost::timearg::now_ms(),
            labels: BTreeMap::new(),
        },
    );
    devices.save(devices_file)?;
    Ok((key_path, password_path))
}

pub fn run(command: DeviceCommand, devices_file: &Path) -> Result<std::process::ExitCode> {
    let mut devices = DevicesFile::load(devices_file)?;
    match command {
        DeviceCommand::Add {
            id,
            out,
            url,
            fleet,
        } => {
            let (key_path, password_path) = enrol(&mut devices, devices_file, &id, &out)?;
            println!(
                "# Enrolled {id}. Copy {key} and {password} to the device (mode 600), then put\n\
                 # this in its agent config:\n[mqtt]\nenabled = true\nurl = \"{url}\"\nfleet = \"{fleet}\"\n\
                 device = \"{id}\"\nkey_file = \"/etc/outpost/{id}.key\"\npassword_file = \"/etc/outpost/{id}.password\"",
                key = key_path.display(),
                password = password_path.display(),
            );
        }
        DeviceCommand::List => {
            println!("{:<32} {:<8} {:<20} labels", "device", "state", "added");
            for (id, entry) in &devices.device {
                let state = if entry.revoked { "revoked" } else { "active" };
                let added = jiff::Timestamp::from_second(entry.added_ms / 1000)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                println!(
                    "{id:<32} {state:<8} {added:<20} {}",
                    show_labels(&entry.labels)
                );
            }
        }
        DeviceCommand::Label { id, changes } => {
            let entry = devices
                .device
                .get_mut(&id)
                .with_context(|| format!("no device {id:?} in {}", devices_file.display()))?;
            relabel(&mut entry.labels, &changes)?;
            if !changes.is_empty() {
                devices.save(devices_file)?;
            }
            println!("{id} {}", show_labels(&devices.device[&id].labels));
        }
        DeviceCommand::Revoke { id } => {
            let entry = devices
                .device
                .get_mut(&id)
                .with_context(|| format!("no device {id:?} in {}", devices_file.display()))?;
            entry.revoked = true;
            devices.save(devices_file)?;
            println!("revoked {id}");
        }
        DeviceCommand::Delete { id } => {
            let remove = |devices: &mut DevicesFile| devices.device.remove(&id).map(drop);
            delete(&mut devices, devices_file, ("device", &id), remove)?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn show_labels(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Applies `NAME=VALUE` and `NAME-` changes to `labels`, all or none.
fn relabel(labels: &mut BTreeMap<String, String>, changes: &[String]) -> Result<()> {
    let mut changed = labels.clone();
    for change in changes {
        if let Some((name, value)) = change.split_once('=') {
            check_label(name, value)?;
            changed.insert(name.to_string(), value.to_string());
        } else if let Some(name) = change.strip_suffix('-') {
            if changed.remove(name).is_none() {
                bail!("{change}: the device has no label {name:?}");
            }
        } else {
            bail!("{change:?}: write NAME=VALUE to set a label, NAME- to remove one");
        }
    }
    check_labels(&changed)?;
    *labels = changed;
    Ok(())
}

/// Deletes a device or a reader (`what`, `name`) with `remove`, which finds nothing when it is
/// not there; then saves the file.
fn delete(
    devices: &mut DevicesFile,
    file: &Path,
    (what, name): (&str, &str),
    remove: impl FnOnce(&mut DevicesFile) -> Option<()>,
) -> Result<()> {
    if remove(devices).is_none() {
        bail!("no {what} {name:?} in {}", file.display());
    }
    devices.save(file)?;
    println!("deleted {name}");
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ReaderCommand {
    /// Make a read-only broker login for your own tools (alert and status topics only).
    ///
    /// Writes DIR/NAME.password (owner-only). Its client id must not start with `outpost-`.
    Add {
        name: String,
        /// Where to write the password file.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// List readers.
    List,
    /// Forget a reader (the running hub refuses its next connections).
    Delete { name: String },
}

pub fn run_reader(command: ReaderCommand, devices_file: &Path) -> Result<std::process::ExitCode> {
    let mut devices = DevicesFile::load(devices_file)?;
    match command {
        ReaderCommand::Add { name, out } => {
            outpost_sync::topic::check_id("reader", &name)?;
            if devices.device.contains_key(&name) || devices.reader.contains_key(&name) {
                bail!("{name:?} is already a device's or a reader's login");
            }
            let password = random_hex(32)?;
            let password_path = out.join(format!("{name}.password"));
            write_secret(&password_path, &format!("{password}\n"))?;
            devices.reader.insert(
                name.clone(),
                ReaderEntry {
                    password_sha256: sha256_hex(&password),
                    added_ms: outpost::timearg::now_ms(),
                },
            );
            devices.save(devices_file)?;
            println!(
                "# Reader {name}: its password is in {path}. For example:\n\
                 mosquitto_sub -u {name} -P \"$(cat {path})\" -i {name}-1 -q 1 -c -t 'outpost/v1/+/+/alerts/events'",
                path = password_path.display(),
            );
        }
        ReaderCommand::List => {
            for name in devices.reader.keys() {
                println!("{name}");
            }
        }
        ReaderCommand::Delete { name } => {
            let remove = |devices: &mut DevicesFile| devices.reader.remove(&name).map(drop);
            delete(&mut devices, devices_file, ("reader", &name), remove)?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_change_all_or_nothing_and_never_pose_as_the_hubs() {
        let mut labels = BTreeMap::new();
        relabel(&mut labels, &["site=north".into(), "role=camera".into()]).unwrap();
        assert_eq!(labels.len(), 2);
        relabel(&mut labels, &["role-".into(), "site=south".into()]).unwrap();
        assert_eq!(labels, [("site".to_string(), "south".to_string())].into());
        for bad in [
            "device=cam-1",
            "severity=critical",
            "__name__=x",
            "1site=x",
            "si te=x",
            "site=",
            "site=a\nb",
            "site",
            "ghost-",
        ] {
            let before = labels.clone();
            let error = relabel(&mut labels, &["model=orin".into(), bad.into()]).unwrap_err();
            assert_eq!(labels, before, "{bad}: nothing applied ({error})");
        }
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("l{i}=v")).collect();
        assert!(relabel(&mut labels, &many).is_err());
    }

    #[test]
    fn a_hand_edited_label_is_refused_at_load_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.toml");
        let mut file = DevicesFile::default();
        file.device.insert(
            "cam-1".into(),
            DeviceEntry {
                key: "00".repeat(32),
                password_sha256: "00".repeat(32),
                revoked: false,
                added_ms: 0,
                labels: [("instance".to_string(), "other".to_string())].into(),
            },
        );
        file.save(&path).unwrap();
        let error = format!("{:#}", DevicesFile::load(&path).unwrap_err());
        assert!(error.contains("device.cam-1.labels"), "{error}");
        assert!(error.contains("\"instance\""), "{error}");
    }
}
