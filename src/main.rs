//! `outpost`: one binary for the agent that runs on each device and the hub that gathers the
//! fleet. This file holds the command line; each command lives in its own module.

mod agent;
mod alerting;
mod catalogue;
mod collect;
mod config_values;
mod daemon;
mod db;
mod demo;
mod http_client;
mod hub;
mod input;
mod netaddr;
mod repeat_limit;
mod results;
mod rules_cmd;
mod sdnotify;
mod supervise;
mod sysinfo_ids;
mod tegrastats_cmd;
mod tls;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Edge monitoring for fleets of NVIDIA Jetson devices and GPU hosts.
///
/// Outpost keeps every device's metrics in a compressed, crash-safe local store that keeps
/// working offline. The `db` commands work on such a store file directly.
#[derive(Debug, Parser)]
#[command(name = "outpost", version, propagate_version = true)]
struct Cli {
    /// Log filter, as in RUST_LOG (for example `info` or `outpost_storage=debug`).
    #[arg(long, global = true, env = "OUTPOST_LOG", default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole thing on this machine: a hub and an agent sending it this machine's
    /// metrics and a replayed Jetson TX2; prints the dashboard's address and a login.
    Demo(demo::DemoArgs),
    /// Run the agent: collect this device's metrics into its store and serve /metrics.
    ///
    /// Collectors: host (always), tegrastats and Jetson sysfs files (on Jetsons), NVML (where
    /// an NVIDIA driver is installed), health probes and application metrics from the config.
    Agent(agent::AgentArgs),
    /// Run the hub: gather the fleet's batches over MQTT into the hub's store and serve its API.
    ///
    /// Runs an embedded MQTT broker by default (or uses Mosquitto or EMQX), verifies each
    /// device's signed batches, stores them idempotently and acknowledges them once durable.
    /// `outpost hub device add ID` enrols a device.
    Hub(hub::HubArgs),
    /// Work with a store file: import, query, statistics, compaction.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Work with tegrastats output: parse it as Outpost's agent does.
    #[command(subcommand)]
    Tegrastats(tegrastats_cmd::TegrastatsCommand),
    /// Check alert rule files, and test them against a store's history.
    ///
    /// The agent evaluates its rules offline against its own store and publishes alert state on
    /// MQTT topics (see docs/alerts.md). `outpost rules check default` checks the built-in pack.
    #[command(subcommand)]
    Rules(rules_cmd::RulesCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::EnvFilter::try_new(&cli.log)
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with(repeat_limit::RepeatLimit::stderr())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init();
    }
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Hub(args) => hub::run(args),
        Command::Db(command) => db::run(command),
        Command::Tegrastats(command) => tegrastats_cmd::run(command),
        Command::Rules(command) => rules_cmd::run(command),
    };
    match result {
        Ok(code) => code,
        // `outpost ... | head` closing the pipe early is not an error worth a message.
        Err(error)
            if error.chain().any(|cause| {
                let kind = cause
                    .downcast_ref::<std::io::Error>()
                    .map(std::io::Error::kind)
                    .or_else(|| {
                        cause
                            .downcast_ref::<serde_json::Error>()
                            .and_then(serde_json::Error::io_error_kind)
                    });
                kind == Some(std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
