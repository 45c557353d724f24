//! `outpost tegrastats ...`: the tegrastats parser on the command line.

use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use outpost::tegrastats;

#[derive(Debug, Subcommand)]
pub enum TegrastatsCommand {
    /// Parse tegrastats output into one JSON object per line.
    ///
    /// Every object has the keys timestamp, ram, swap, iram, cpus, mts, engines,
    /// temperatures_c, rails_mw and unknown; parts the line does not print are null (or empty),
    /// memory is in bytes (1 MB = 1 MiB), frequencies in MHz, temperatures as printed, and
    /// tokens the parser does not know are listed under unknown. Lines from every release from
    /// L4T R28 to JetPack 7 are understood, with or without the leading date.
    Parse {
        /// A file of tegrastats output (plain or zstd-compressed), or `-` for standard input.
        #[arg(default_value = "-")]
        input: String,
    },
    /// Import a recorded tegrastats log into a store, as the agent would have stored it.
    ///
    /// Each line becomes the agent's `jetson_*` samples, stamped with the line's own
    /// `MM-DD-YYYY HH:MM:SS` (read as UTC) or, for lines without one, --start plus --interval
    /// per line. `outpost rules test` can then run alert rules over the log's history.
    Import {
        /// The log (plain or zstd-compressed).
        #[arg(value_name = "LOG")]
        file: std::path::PathBuf,
        /// The store to write (created if missing).
        #[arg(long)]
        db: std::path::PathBuf,
        /// Time of the first line without a stamp: RFC 3339 or milliseconds since the epoch.
        #[arg(long, default_value = "2026-01-01T00:00:00Z")]
        start: String,
        /// Time between lines without stamps.
        #[arg(long, default_value = "1s")]
        interval: String,
    },
}

pub fn run(command: TegrastatsCommand) -> Result<ExitCode> {
    match command {
        TegrastatsCommand::Import {
            file: log,
            db,
            start,
            interval,
        } => {
            let start = outpost::timearg::parse_time(&start, outpost::timearg::now_ms())
                .context("--start")?;
            let interval = outpost::timearg::parse_duration_ms(&interval).context("--interval")?;
            let lines = crate::collect::tegrastats::read_log(&log)?;
            let store = outpost_storage::Store::open(&db, outpost::timearg::store_options())
                .with_context(|| format!("opening the store {}", db.display()))?;
            let mut at = start - interval;
            let mut samples_total = 0usize;
            for line in &lines {
                let parsed = tegrastats::parse(line);
                at = parsed
                    .timestamp
                    .as_ref()
                    .and_then(crate::collect::tegrastats::stamp_ms)
                    .unwrap_or(at + interval);
                let mut samples = crate::collect::Samples::new();
                crate::collect::tegrastats::to_samples(&parsed, &mut samples);
                let mut batch = outpost_storage::WriteBatch::with_capacity(samples.values.len());
                for (key, value) in &samples.values {
                    batch.sample(store.series_id(key)?, at, *value);
                }
                samples_total += samples.values.len();
                store.write(batch)?;
            }
            store.close()?;
            eprintln!(
                "imported {} lines ({samples_total} samples) into {}",
                lines.len(),
                db.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        TegrastatsCommand::Parse { input } => {
            let reader: Box<dyn BufRead> = if input == "-" {
                Box::new(BufReader::new(std::io::stdin().lock()))
            } else {
                Box::new(BufReader::new(
                    std::fs::File::open(&input).with_context(|| format!("cannot open {input}"))?,
                ))
            };
            let reader =
                crate::input::decompressing(reader).with_context(|| format!("reading {input}"))?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut reader = reader;
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&line);
                let parsed = tegrastats::parse(text.trim_end_matches(['\n', '\r']));
                serde_json::to_writer(&mut out, &parsed.to_json())?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
