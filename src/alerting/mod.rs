//! The alert runtime that both roles run over the engine (`outpost::alert`): the agent over its
//! own samples, the hub over its view of each device. `config.rs` the `[alerts]` section,
//! `pack.rs` its rules and silences, `runtime.rs` the evaluation tick, commands and HTTP API,
//! `notify.rs` delivery (the MQTT mailbox, webhooks, SMTP, exec), `receivers.rs` the requests
//! of the services webhook channels speak to (PagerDuty, Opsgenie, Alertmanager, ...).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

pub mod config;
pub mod notify;
pub mod pack;
pub mod prometheus;
pub mod receivers;
pub mod runtime;

use config::{AlertsSection, WebhookFormat};

/// A channel's `group_by` labels and `group_wait`.
fn check_group(channel: String, by: &[String], wait: Duration) -> Result<()> {
    for label in by {
        if !outpost_storage::promql::is_label_name(label) {
            bail!("{channel}.group_by: {label:?} is not a label name");
        }
    }
    if wait > Duration::from_secs(86_400) {
        bail!("{channel}: group_wait and group_interval are at most 24h (notifications wait that long)");
    }
    Ok(())
}

impl AlertsSection {
    /// Checks the section; the hub's `[alerts]` has the same keys.
    pub fn validate(&self) -> Result<()> {
        let alerts = self;
        if alerts.interval.0 < Duration::from_millis(100) {
            bail!("alerts.interval: must be at least 100ms");
        }
        if alerts.max_queued == 0 {
            bail!("alerts.max_queued: must be at least 1");
        }
        let mut names = std::collections::BTreeSet::new();
        let mut check_name = |key: String, name: &str| -> Result<()> {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                bail!("{key}: {name:?}: use letters, digits, '_' and '-'");
            }
            if !names.insert(name.to_string()) {
                bail!("{key}: {name:?} names two channels");
            }
            Ok(())
        };
        for (i, hook) in alerts.webhook.iter().enumerate() {
            check_name(format!("alerts.webhook[{i}].name"), &hook.name)?;
            let url = receivers::endpoint(hook);
            if url.is_empty() {
                bail!("alerts.webhook[{i}].url: missing (the service's address)");
            }
            crate::http_client::Target::parse(url)
                .with_context(|| format!("alerts.webhook[{i}].url"))?;
            for (key, value) in receivers::required_keys(hook) {
                if value.trim().is_empty() {
                    bail!(
                        "alerts.webhook[{i}].{key}: missing (format {:?} needs it)",
                        hook.format
                    );
                }
            }
            match (
                receivers::needs_secret(hook.format),
                hook.secret_file.as_os_str().is_empty(),
            ) {
                (true, true) => bail!(
                    "alerts.webhook[{i}].secret_file: missing (format {:?} needs its key or token)",
                    hook.format
                ),
                (_, false) => {
                    crate::sysinfo_ids::read_secret(&hook.secret_file, "channel secret")
                        .with_context(|| format!("alerts.webhook[{i}].secret_file"))?;
                }
                (false, true) => {}
            }
            if !hook.group_by.is_empty() && !receivers::groups(hook.format) {
                bail!(
                    "alerts.webhook[{i}].group_by: format {:?} sends one alert a request; group \
                     another channel",
                    hook.format
                );
            }
            check_group(
                format!("alerts.webhook[{i}]"),
                &hook.group_by,
                hook.group_wait.0.max(hook.group_interval.0),
            )?;
            if hook.resend_every.0 < Duration::from_secs(1) {
                bail!("alerts.webhook[{i}].resend_every: at least 1s");
            }
            if hook.format == WebhookFormat::Template {
                outpost::alert::template::Template::parse(&hook.template)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("alerts.webhook[{i}].template"))?;
            }
            if !hook.ca_file.as_os_str().is_empty() {
                crate::tls::client_config(&hook.ca_file, Path::new(""), Path::new(""))
                    .with_context(|| format!("alerts.webhook[{i}].ca_file"))?;
            }
        }
        for (i, exec) in alerts.exec.iter().enumerate() {
            check_name(format!("alerts.exec[{i}].name"), &exec.name)?;
            if exec.command.is_empty() || exec.command[0].is_empty() {
                bail!("alerts.exec[{i}].command: needs at least the program");
            }
        }
        for (i, email) in alerts.email.iter().enumerate() {
            check_name(format!("alerts.email[{i}].name"), &email.name)?;
            check_group(
                format!("alerts.email[{i}]"),
                &email.group_by,
                email.group_wait.0.max(email.group_interval.0),
            )?;
            notify::SmtpServer::parse(&email.server, email.insecure_plaintext)
                .with_context(|| format!("alerts.email[{i}].server"))?;
            if email.to.is_empty() {
                bail!("alerts.email[{i}].to: needs at least one address");
            }
            if !email.ca_file.as_os_str().is_empty() {
                crate::tls::client_config(&email.ca_file, Path::new(""), Path::new(""))
                    .with_context(|| format!("alerts.email[{i}].ca_file"))?;
            }
            for address in std::iter::once(&email.from).chain(&email.to) {
                if !address.contains('@') || address.contains(['\r', '\n']) {
                    bail!("alerts.email[{i}]: {address:?} is not an e-mail address");
                }
            }
        }
        pack::silences_from_config(alerts, 0)?;
        pack::inhibitions_from_config(alerts)?;
        Ok(())
    }
}
