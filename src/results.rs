//! Query results as the binary prints them: `outpost db query` and the agent's `/api/query`.

use std::io::Write;

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

/// Prints a value so that it parses back to the identical f64: Rust's shortest round-trip form,
/// Prometheus' spelling of infinities, and the bits of a NaN that is not the canonical one.
pub fn format_value(value: f64) -> String {
    if value.is_nan() && value.to_bits() != f64::NAN.to_bits() {
        return format!("NaN(0x{:016x})", value.to_bits());
    }
    special_value(value).map_or_else(|| format!("{value:?}"), str::to_string)
}

/// Prometheus' spelling of the values that have no digits (`NaN`, `+Inf`, `-Inf`).
pub fn special_value(value: f64) -> Option<&'static str> {
    if value.is_nan() {
        Some("NaN")
    } else if value == f64::INFINITY {
        Some("+Inf")
    } else if value == f64::NEG_INFINITY {
        Some("-Inf")
    } else {
        None
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Writes query results as `outpost db query` prints them (the agent's `/api/query` too).
pub fn write_results(
    out: &mut impl Write,
    results: &[outpost_storage::SeriesPoints],
    format: Format,
) -> std::io::Result<()> {
    match format {
        Format::Csv => {
            writeln!(out, "series,timestamp_ms,value")?;
            for series in results {
                let name = csv_field(&series.series.to_string());
                for (ts, value) in &series.points {
                    writeln!(out, "{name},{ts},{}", format_value(*value))?;
                }
            }
        }
        Format::Json => {
            // Values are strings, as in Prometheus' API, because JSON has no NaN or infinity.
            let json: Vec<serde_json::Value> = results
                .iter()
                .map(|series| {
                    serde_json::json!({
                        "series": series.series.to_string(),
                        "points": series.points.iter()
                            .map(|(ts, v)| serde_json::json!([ts, format_value(*v)]))
                            .collect::<Vec<_>>(),
                    })
                })
                .collect();
            serde_json::to_writer(&mut *out, &json)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_values_parse_back_bit_exact() {
        for value in [
            0.1,
            -0.0,
            1e300,
            5e-324,
            111.11,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ] {
            let text = format_value(value);
            let back: f64 = text.parse().unwrap();
            assert_eq!(back.to_bits(), value.to_bits(), "{text}");
        }
        assert_eq!(
            format_value(f64::from_bits(0x7ff8_0000_0000_0001)),
            "NaN(0x7ff8000000000001)"
        );
    }
}
