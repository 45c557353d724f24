//! `outpost db ...`: import, query, statistics and compaction of a store file.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::builder::TypedValueParser;
use clap::{Args, Subcommand};
use outpost_storage::text::{Importer, TimeWindow};
use outpost_storage::{Aggregation, Selector, Store};

use outpost::timearg::{now_ms, parse_duration_ms, parse_time};

use crate::results::{write_results, Format};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Import samples in the Prometheus text exposition format.
    ///
    /// Lines look like `name{label="v"} value timestamp_ms`; comments and `# TYPE` lines are
    /// skipped, and a sample without a timestamp is stamped with the current time. The input may
    /// be zstd-compressed. Malformed lines are reported with their line number and skipped; the
    /// exit code is non-zero if there were any.
    ///
    /// History of any age is accepted (retention then applies to it as to any data). A sample
    /// timestamped further in the future than --max-future is refused as a malformed line: it is
    /// nearly always a unit mistake (seconds, microseconds or nanoseconds for milliseconds).
    Import {
        #[command(flatten)]
        store: StoreArg,
        /// Input file, or `-` for standard input.
        #[arg(default_value = "-")]
        input: String,
        /// How far ahead of this machine's clock a sample's timestamp may be.
        #[arg(long, default_value = "10m", value_name = "DURATION")]
        max_future: String,
    },
    /// Query samples of the series that a selector matches.
    ///
    /// Without --step, prints raw samples. With --step, prints one value per step-aligned bucket,
    /// answered from the 1-hour tier when the step is a multiple of an hour, from the 1-minute
    /// tier when it is a multiple of a minute, else from raw samples.
    Query {
        #[command(flatten)]
        store: StoreArg,
        /// Series selector: `name`, `name{label="v",other=~"re.*"}`, with =, !=, =~ and !~.
        selector: String,
        /// Start of the range: RFC 3339, milliseconds since the epoch, or `now`.
        #[arg(long)]
        from: String,
        /// End of the range (inclusive), in the same forms as --from.
        #[arg(long, default_value = "now")]
        to: String,
        /// Bucket width, such as 30s, 5m, 1h.
        #[arg(long)]
        step: Option<String>,
        /// How each bucket is reduced (needs --step); rate is per second and reset-aware.
        #[arg(
            long = "fn",
            default_value = "avg",
            requires = "step",
            value_parser = clap::builder::PossibleValuesParser::new(
                ["avg", "min", "max", "sum", "count", "last", "rate"]
            ).try_map(|f| f.parse::<Aggregation>())
        )]
        function: Aggregation,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
    },
    /// Show series and sample counts, bytes on disk, and bytes written since open.
    Stats {
        #[command(flatten)]
        store: StoreArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also read every chunk to add up the bytes of each tier (slow on a large store).
        #[arg(long)]
        full: bool,
    },
    /// Read every chunk, log frame and state entry, and report what is damaged.
    ///
    /// Changes nothing. Exits 0 when everything could be read, 1 when something could not.
    Check {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Copy everything still readable from a damaged store into a new one.
    ///
    /// Reads series by series, so damage costs only the data stored in the damaged part; the
    /// original is not changed. Prints what could not be read, and exits 1 if anything was lost.
    Salvage {
        #[command(flatten)]
        store: StoreArg,
        /// Path of the new store (must not exist yet).
        #[arg(long, value_name = "PATH")]
        to: PathBuf,
    },
    /// Seal pending data and rewrite the store file without free pages, shrinking it.
    Compact {
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(Debug, Args)]
pub struct StoreArg {
    /// Path of the store file.
    #[arg(long = "db", env = "OUTPOST_DB", value_name = "PATH")]
    path: PathBuf,
}

pub fn run(command: DbCommand) -> Result<ExitCode> {
    match command {
        DbCommand::Import {
            store,
            input,
            max_future,
        } => {
            let max_future = parse_duration_ms(&max_future).context("--max-future")?;
            import(&store.path, &input, max_future)
        }
        DbCommand::Query {
            store,
            selector,
            from,
            to,
            step,
            function,
            format,
        } => {
            let now = now_ms();
            let from = parse_time(&from, now).context("--from")?;
            let to = parse_time(&to, now).context("--to")?;
            let step = step
                .map(|s| parse_duration_ms(&s))
                .transpose()
                .context("--step")?;
            query(&store.path, &selector, from, to, step, function, format)
        }
        DbCommand::Stats { store, json, full } => stats(&store.path, json, full),
        DbCommand::Check { store } => check(&store.path),
        DbCommand::Salvage { store, to } => salvage(&store.path, &to),
        DbCommand::Compact { store } => {
            let store = open_existing(&store.path, false)?;
            let before = store.stats()?.disk_bytes;
            store.compact()?;
            let after = store.stats()?.disk_bytes;
            store.close()?;
            println!("compacted: {before} -> {after} bytes on disk");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Opens a store that must exist; `read_only` for commands that only look, which then change
/// nothing in the file or its logs.
fn open_existing(path: &Path, read_only: bool) -> Result<Store> {
    if !path.exists() {
        bail!(
            "no store at {}: import data first with `outpost db import --db {} FILE`",
            path.display(),
            path.display()
        );
    }
    let options = outpost_storage::Options {
        read_only,
        ..outpost::timearg::store_options()
    };
    match Store::open(path, options) {
        Err(error @ outpost_storage::Error::Locked { .. }) => Err(anyhow::Error::new(error)
            .context(
                "if `outpost agent` holds it, query the agent instead: \
             curl '127.0.0.1:9810/api/query?match=SELECTOR&from=-1h'",
            )),
        other => Ok(other?),
    }
}

/// Counts the bytes read through it, for the progress bar.
struct CountingReader<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn import(path: &Path, input: &str, max_future_ms: i64) -> Result<ExitCode> {
    let (raw, len): (Box<dyn Read>, Option<u64>) = if input == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let file = File::open(input).with_context(|| format!("cannot open {input}"))?;
        let len = file.metadata().ok().map(|m| m.len());
        (Box::new(file), len)
    };
    let bar = if std::io::stderr().is_terminal() {
        match len {
            Some(len) => indicatif::ProgressBar::new(len).with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} importing [{bar:40}] {bytes}/{total_bytes} {msg} ({eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => indicatif::ProgressBar::new_spinner(),
        }
    } else {
        indicatif::ProgressBar::hidden()
    };
    let reader = BufReader::with_capacity(
        1 << 20,
        CountingReader {
            inner: raw,
            bar: bar.clone(),
        },
    );
    let mut lines = crate::input::decompressing(reader)?;

    let started = Instant::now();
    let store = Store::open(path, outpost::timearg::store_options())?;
    let now = now_ms();
    let window = TimeWindow {
        earliest_ms: i64::MIN,
        latest_ms: now.saturating_add(max_future_ms),
    };
    let mut importer = Importer::new(&store, now).with_window(window);
    let mut line = Vec::with_capacity(256);
    let mut line_number = 0u64;
    let mut reported = 0u64;
    loop {
        line.clear();
        if lines.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        line_number += 1;
        let outcome = match std::str::from_utf8(&line) {
            Ok(text) => importer.line(text, line_number)?,
            Err(_) => Err(outpost_storage::text::LineError {
                line_number,
                message: "not valid UTF-8".into(),
            }),
        };
        if let Err(error) = outcome {
            reported += 1;
            if reported <= 100 {
                bar.suspend(|| eprintln!("line {}: {}", error.line_number, error.message));
            }
        }
        if line_number.is_multiple_of(65_536) {
            bar.set_message(format!("{} samples", importer.samples));
        }
    }
    let samples = importer.samples;
    let errors = reported;
    importer.finish()?;
    let stats = store.stats()?;
    store.close()?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "imported {samples} samples into {} series in {seconds:.2} s ({:.0} samples/s); store: {} bytes on disk",
        stats.series,
        samples as f64 / seconds.max(1e-9),
        stats.disk_bytes,
    );
    if errors > 0 {
        if errors > 100 {
            eprintln!("({} more malformed lines not shown)", errors - 100);
        }
        eprintln!("{errors} lines skipped (malformed, or timestamped past --max-future)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn query(
    path: &Path,
    selector: &str,
    from: i64,
    to: i64,
    step: Option<i64>,
    function: Aggregation,
    format: Format,
) -> Result<ExitCode> {
    let selector = Selector::parse(selector)?;
    if from > to {
        bail!("--from ({from}) is after --to ({to})");
    }
    let store = open_existing(path, true)?;
    let results = match step {
        None => store.query_raw(&selector, from, to)?,
        Some(step) => store.query_step(&selector, from, to, step, function)?,
    };
    store.close()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    write_results(&mut out, &results, format)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &outpost_storage::CheckReport) -> ExitCode {
    eprintln!(
        "{} series; readable: {} raw chunks ({} samples), {} 1-minute and {} 1-hour rollup chunks, \
         {} samples from the logs, {} state entries",
        report.series,
        report.chunks_ok[0],
        report.points_ok[0],
        report.chunks_ok[1],
        report.chunks_ok[2],
        report.head_samples,
        report.state_entries
    );
    for problem in &report.problems {
        eprintln!("damaged: {problem}");
    }
    if report.is_clean() {
        eprintln!("no damage found");
        ExitCode::SUCCESS
    } else {
        eprintln!("{} problems", report.problems.len());
        ExitCode::FAILURE
    }
}

fn check(path: &Path) -> Result<ExitCode> {
    let store = open_existing(path, true)?;
    let report = store.check()?;
    Ok(print_report(&report))
}

fn salvage(path: &Path, to: &Path) -> Result<ExitCode> {
    if to.exists() {
        bail!(
            "{} exists already: salvage writes a new store",
            to.display()
        );
    }
    let store = open_existing(path, true)?;
    let target = Store::open(to, outpost::timearg::store_options())
        .with_context(|| format!("creating {}", to.display()))?;
    let report = store.salvage_into(&target)?;
    target.close()?;
    eprintln!("salvaged into {}", to.display());
    Ok(print_report(&report))
}

fn stats(path: &Path, json: bool, full: bool) -> Result<ExitCode> {
    let store = open_existing(path, true)?;
    let stats = store.stats()?;
    let chunk_bytes = if full {
        Some(store.chunk_bytes()?)
    } else {
        None
    };
    store.close()?;
    let mut out = std::io::stdout().lock();
    if json {
        let mut json = serde_json::json!({
            "series": stats.series,
            "raw_samples": stats.raw_samples,
            "minute_points": stats.minute_points,
            "hour_points": stats.hour_points,
            "head_samples": stats.head_samples,
            "disk_bytes": stats.disk_bytes,
            "bytes_per_raw_sample": stats.bytes_per_raw_sample(),
            "bytes_written_since_open": stats.bytes_written_since_open,
        });
        if let Some([raw, minute, hour]) = chunk_bytes {
            json["chunk_bytes"] = serde_json::json!({"raw": raw, "minute": minute, "hour": hour});
        }
        writeln!(out, "{json}")?;
    } else {
        let mut lines = vec![
            ("series", stats.series.to_string()),
            ("raw samples", stats.raw_samples.to_string()),
            ("1-minute rollup points", stats.minute_points.to_string()),
            ("1-hour rollup points", stats.hour_points.to_string()),
            ("bytes on disk", stats.disk_bytes.to_string()),
            (
                "bytes per raw sample",
                format!("{:.3}", stats.bytes_per_raw_sample()),
            ),
            (
                "bytes written since open",
                stats.bytes_written_since_open.to_string(),
            ),
        ];
        if let Some([raw, minute, hour]) = chunk_bytes {
            lines.push((
                "chunk bytes per tier",
                format!("raw {raw}, 1m {minute}, 1h {hour}"),
            ));
        }
        for (name, value) in lines {
            writeln!(out, "{name:<25} {value}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
