//! What both daemons (`outpost agent`, `outpost hub`) do the same way before they run: the
//! flags they share, printing or checking the config, and the single-threaded runtime they run
//! on.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct DaemonFlags {
    /// Print the default config, with every key explained, and exit.
    #[arg(long)]
    pub print_default_config: bool,
    /// Check the config and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Store file (overrides [store] path).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

/// Prints the default config, or loads the config (`load` applies the flags and validates), and
/// with `--check-config` stops there; otherwise runs `daemon` with the config on a
/// single-threaded runtime (the daemons do their disk work on threads of their own).
pub fn start<C, F>(
    flags: &DaemonFlags,
    default_config: &str,
    load: impl FnOnce() -> Result<C>,
    daemon: impl FnOnce(C) -> F,
) -> Result<ExitCode>
where
    F: Future<Output = Result<()>>,
{
    if flags.print_default_config {
        print!("{default_config}");
        return Ok(ExitCode::SUCCESS);
    }
    let config = load()?;
    if flags.check_config {
        println!("config is valid");
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(daemon(config));
    // A collection round stuck in the kernel (a hung device's file) cannot be interrupted, and
    // dropping the runtime would wait for it for ever: the daemon has closed its store by now,
    // so the round is left behind and the process ends.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result?;
    Ok(ExitCode::SUCCESS)
}
