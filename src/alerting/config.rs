//! The `[alerts]` section, the same in the agent's config and the hub's.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config_values::Interval;

/// The offline alert engine (`crate::alert`) and its notification channels.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// Evaluate rules and notify; off, the agent only stores.
    pub enabled: bool,
    /// The rule pack built into the agent (`config/rules.toml`); a rule of the same name in
    /// `rules` replaces the pack's.
    pub default_rules: bool,
    /// Rule files, and directories whose `*.toml` files are rule files.
    pub rules: Vec<PathBuf>,
    /// How often every rule is evaluated.
    pub interval: Interval,
    /// Notifications each channel may hold while it cannot deliver; then the oldest go, counted.
    pub max_queued: usize,
    /// Channels: `[[alerts.webhook]]`, `[[alerts.exec]]`, `[[alerts.email]]`.
    pub webhook: Vec<WebhookConfig>,
    pub exec: Vec<ExecConfig>,
    pub email: Vec<EmailConfig>,
    /// Silences from the config file, besides those sent by the hub.
    pub silence: Vec<SilenceConfig>,
    /// Recurring windows in which matching alerts are silenced.
    pub maintenance: Vec<MaintenanceConfig>,
    /// Alerts that hold others back while they fire (`[[alerts.inhibit]]`).
    pub inhibit: Vec<InhibitConfig>,
    /// The hub's routes for the devices' alerts (`[[alerts.route]]`): which of its channels
    /// hear of which; the first route that matches wins unless it says `continue`.
    pub route: Vec<RouteConfig>,
}

/// A route of the hub's tree: an alert it matches goes to the first of its `routes` that
/// matches (and on past those with `continue`), or to its own receivers when none does. A route
/// leaves out what its parent says: receivers and grouping are inherited.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A selector over a device alert's labels, the device's labels (`outpost hub device
    /// label`), `alertname`, `severity` and `device`; `{}` (or nothing) for every alert.
    #[serde(rename = "match", default)]
    pub matcher: String,
    /// The hub's channels by name; none: the parent's.
    #[serde(default)]
    pub receivers: Vec<String>,
    /// Go on to the next routes after this one matched.
    #[serde(default, rename = "continue")]
    pub continue_: bool,
    /// Gather the alerts that agree on these labels into one notification (`["..."]`: every
    /// alert alone), in place of the channel's own `group_by`.
    pub group_by: Option<Vec<String>>,
    pub group_wait: Option<Interval>,
    pub group_interval: Option<Interval>,
    /// Tell the receivers again of alerts still firing after this long (none: never).
    pub repeat_interval: Option<Interval>,
    /// Routes below this one.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// While an alert matching `source` fires, alerts matching `target` that agree with it on the
/// `equal` labels are held back from the channels.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitConfig {
    /// Selectors over an alert's labels, `alertname` and `severity`.
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub equal: Vec<String>,
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            enabled: true,
            default_rules: true,
            rules: Vec::new(),
            interval: Interval::secs(1),
            max_queued: 10_000,
            webhook: Vec::new(),
            exec: Vec::new(),
            email: Vec::new(),
            silence: Vec::new(),
            maintenance: Vec::new(),
            inhibit: Vec::new(),
            route: Vec::new(),
        }
    }
}

/// Which transitions a channel is told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    Firing,
    Resolved,
}

fn default_notify_on() -> Vec<NotifyOn> {
    vec![NotifyOn::Firing, NotifyOn::Resolved]
}

/// The body a webhook gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The alert's JSON, as on the MQTT topics.
    Json,
    /// Slack incoming webhooks (`{"text": ...}`); Mattermost and Rocket.Chat take it too.
    Slack,
    /// Microsoft Teams incoming webhooks (a MessageCard).
    Teams,
    /// Discord webhooks (`{"content": ...}`).
    Discord,
    /// `template`, rendered with the alert's fields.
    Template,
    /// The payload Alertmanager sends its webhook receivers (version 4), one alert a message.
    Alertmanager,
    /// Forwarding to an Alertmanager (`POST /api/v2/alerts`), firing alerts resent every
    /// minute as Prometheus resends them.
    #[serde(rename = "alertmanager-api")]
    AlertmanagerApi,
    /// PagerDuty's Events API v2 (`secret_file`: the integration's routing key).
    Pagerduty,
    /// Opsgenie's Alert API (`secret_file`: the API key); resolves close the alert.
    Opsgenie,
    /// A Telegram bot's `sendMessage` (`secret_file`: the bot token; `chat_id`).
    Telegram,
    /// An ntfy server (`url` the server, `topic`; `secret_file`: an access token, if needed).
    Ntfy,
    /// A Gotify server (`url` the server; `secret_file`: the application token).
    Gotify,
    /// A generic HTTP SMS gateway: `{"to", "from", "text"}` as JSON (`secret_file`: a bearer
    /// token, if needed).
    Sms,
    /// Twilio's Messages API (`account_sid`, `secret_file`: the auth token; `from`, `to`).
    Twilio,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    /// Empty for a service's public endpoint (PagerDuty, Opsgenie, Telegram, Twilio).
    #[serde(default)]
    pub url: String,
    #[serde(default = "default_webhook_format")]
    pub format: WebhookFormat,
    /// For `format = "template"`: the body, with `{{value}}`-style placeholders.
    #[serde(default)]
    pub template: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// For an `https://` URL whose certificate no public CA signed: the CA that did.
    #[serde(default)]
    pub ca_file: PathBuf,
    #[serde(default = "default_timeout")]
    pub timeout: Interval,
    #[serde(default = "default_notify_on")]
    pub on: Vec<NotifyOn>,
    /// The service's key or token, in a file only its owner can read; never logged.
    #[serde(default)]
    pub secret_file: PathBuf,
    /// Telegram: the chat to write to.
    #[serde(default)]
    pub chat_id: String,
    /// ntfy: the topic.
    #[serde(default)]
    pub topic: String,
    /// SMS and Twilio: the recipient's number and the sender's.
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub from: String,
    /// Twilio: the account.
    #[serde(default)]
    pub account_sid: String,
    /// Grouping: notifications of alerts that agree on these labels (`alertname` is the
    /// rule) and on their state, gathered for `group_wait` after the first, go as one message;
    /// one CPU burn over eight cores is one message, not eight. Empty: one message each.
    #[serde(default)]
    pub group_by: Vec<String>,
    #[serde(default = "default_group_wait")]
    pub group_wait: Interval,
    /// After a group's message, how long before another one for that group (new alerts that
    /// joined it): they gather meanwhile.
    #[serde(default = "default_group_interval")]
    pub group_interval: Interval,
    /// `alertmanager-api`: how often the firing alerts are sent again (Prometheus'
    /// `--rules.alert.resend-delay`); each stays valid for four of these.
    #[serde(default = "default_resend_every")]
    pub resend_every: Interval,
}

fn default_resend_every() -> Interval {
    Interval::secs(60)
}

fn default_group_wait() -> Interval {
    Interval::secs(30)
}

fn default_group_interval() -> Interval {
    Interval::secs(300)
}

fn default_webhook_format() -> WebhookFormat {
    WebhookFormat::Json
}

/// A local command run for each notification (a recovery action), with the alert in
/// `OUTPOST_ALERT_*` environment variables.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    pub name: String,
    /// The program and its arguments; no shell is involved.
    pub command: Vec<String>,
    #[serde(default = "default_exec_timeout")]
    pub timeout: Interval,
    #[serde(default = "default_firing_only")]
    pub on: Vec<NotifyOn>,
}

fn default_exec_timeout() -> Interval {
    Interval::secs(30)
}

fn default_firing_only() -> Vec<NotifyOn> {
    vec![NotifyOn::Firing]
}

/// E-mail over SMTP: `smtps://host:465` (TLS from the start) or `smtp://host:587` (STARTTLS,
/// required unless `insecure_plaintext`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub name: String,
    pub server: String,
    /// Only for a relay on localhost or a test server: send without TLS.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// The CA that signed the server's certificate, when it is not a public one.
    #[serde(default)]
    pub ca_file: PathBuf,
    #[serde(default)]
    pub username: String,
    /// A file holding the SMTP password.
    #[serde(default)]
    pub password_file: PathBuf,
    pub from: String,
    pub to: Vec<String>,
    #[serde(default = "default_timeout")]
    pub timeout: Interval,
    #[serde(default = "default_notify_on")]
    pub on: Vec<NotifyOn>,
    /// As for webhooks: one mail for the alerts that agree on these labels.
    #[serde(default)]
    pub group_by: Vec<String>,
    #[serde(default = "default_group_wait")]
    pub group_wait: Interval,
    #[serde(default = "default_group_interval")]
    pub group_interval: Interval,
}

/// A silence written in the config: from `starts` (default: always) to `ends`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceConfig {
    /// A selector over the alert's labels and `alertname`, e.g. `{alertname="disk_full"}`.
    #[serde(rename = "match")]
    pub matcher: String,
    pub starts: Option<String>,
    pub ends: String,
    #[serde(default)]
    pub comment: String,
}

/// A maintenance window: fixed (`starts`, `ends`) or weekly (`days`, `at`, `duration` in
/// `timezone`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    pub name: String,
    /// Which alerts it covers; all of them when absent.
    #[serde(rename = "match")]
    pub matcher: Option<String>,
    pub starts: Option<String>,
    pub ends: Option<String>,
    #[serde(default)]
    pub days: Vec<String>,
    /// Local time of day it opens, `HH:MM`.
    pub at: Option<String>,
    pub duration: Option<Interval>,
    /// An IANA time zone name; UTC when absent.
    pub timezone: Option<String>,
}

fn default_timeout() -> Interval {
    Interval::secs(5)
}
