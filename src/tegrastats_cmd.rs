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
}

pub fn run(command: TegrastatsCommand) -> Result<ExitCode> {
    match command {
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
