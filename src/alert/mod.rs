//! The offline alert engine: rules evaluated by the agent against the samples it collects, with
//! the alert lifecycle, silences and the notification queue kept in the local store, so that
//! alerting goes on for days without a network and nothing is lost or repeated across restarts.
//!
//! - [`rules`]: the rule file format and its checks.
//! - [`window`]: the in-memory windows of the series that rules select, and the reducers.
//! - [`engine`]: the lifecycle and what each transition queues for each channel.
//! - [`schedule`]: silences and maintenance windows.
//! - [`notify`]: delivery of the queue: MQTT topics, webhooks, e-mail, local commands.
//! - [`template`]: the `{{value}}` templates of summaries and webhook bodies.

pub mod cli;
pub mod engine;
pub mod notify;
pub mod rules;
pub mod schedule;
pub mod template;
pub mod window;
