//! The offline alert engine: rules evaluated by the agent against the samples it collects, with
//! the alert lifecycle, silences and the notification queue kept in the local store, so that
//! alerting goes on for days without a network and nothing is lost or repeated across restarts.
//!
//! - [`rules`]: the rule file format and its checks.
//! - [`window`]: the in-memory windows of the series that rules select, and the reducers.
//! - [`engine`]: the lifecycle and what each transition queues for each channel.
//! - [`schedule`]: silences and maintenance windows.
//! - [`template`]: the `{{value}}` templates of summaries and webhook bodies.
//! - [`promrules`]: Prometheus' rule files (YAML, PromQL), loaded into the same rules.
//! - [`gotemplate`]: the Go template actions of their annotations.
//!
//! The engine reads no clock and does no I/O but through the store it is given; delivering
//! the queue (MQTT, webhooks, e-mail, commands) is the agent's part.

pub mod engine;
pub mod gotemplate;
pub mod promrules;
pub mod rules;
pub mod schedule;
pub mod template;
pub mod window;
