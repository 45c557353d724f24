//! A parser for the output of NVIDIA's `tegrastats`, every era from L4T R28 to JetPack 7.
//!
//! A line is a sequence of fields separated by spaces. Each field has its own nom parser; a
//! token that none of them recognises is kept in [`Tegrastats::unknown`], so a new field on a
//! future release costs nothing but that token. [`parse`] never fails and never panics.
//!
//! Field meanings follow jetson-stats (`jtop/core/tegra_parse.py`), which Jetson users know, with
//! these deliberate differences, where jtop is wrong:
//! - `MTS fg X% bg Y%`: jtop reports X for both; here `bg` is Y.
//! - the old lowercase form `cpu [17%,13%]@408` (TX1, L4T R28) is parsed; jtop ignores it.
//! - a bare engine number such as `APE 150` or `NVENC 716` is a frequency in MHz; jtop stores it
//!   as a load.
//! - memory units are binary (1 MB = 1 MiB, 1 kB = 1 KiB) and reported in bytes.

use nom::branch::alt;
use nom::bytes::complete::{tag, take_while, take_while1, take_while_m_n};
use nom::character::complete::{char, one_of};
use nom::combinator::{map, map_opt, opt, recognize};
use nom::sequence::{delimited, preceded};
use nom::{IResult, Parser};

/// One parsed line. Absent fields are `None` or empty.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tegrastats<'a> {
    /// `MM-DD-YYYY HH:MM:SS` at the start of the line.
    pub timestamp: Option<Stamp>,
    pub ram: Option<Ram>,
    pub swap: Option<Swap>,
    pub iram: Option<Iram>,
    /// One entry per core; `None` for a core that is off.
    pub cpus: Option<Vec<Option<Cpu>>>,
    pub mts: Option<Mts>,
    /// Engines in line order, names without a trailing `_FREQ`.
    pub engines: Vec<(&'a str, Engine)>,
    pub temperatures: Vec<Temperature<'a>>,
    pub rails: Vec<Rail<'a>>,
    /// Tokens that no field parser recognised, in line order.
    pub unknown: Vec<&'a str>,
}

/// The local date and time tegrastats prints with `--verbose` or in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl std::fmt::Display for Stamp {
    /// ISO 8601 without a zone: `2026-07-25T09:08:28`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ram {
    pub used_bytes: u64,
    pub total_bytes: u64,
    /// The number of free blocks of the largest free size.
    pub lfb_blocks: u64,
    pub lfb_block_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swap {
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub cached_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iram {
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub lfb_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    pub load_percent: u64,
    /// Absent when tegrastats does not print it (non-root on some releases).
    pub freq_mhz: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mts {
    pub fg_percent: u64,
    pub bg_percent: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    Off,
    On {
        load_percent: Option<u64>,
        /// For per-GPC arrays, the highest GPC frequency (as jtop does).
        freq_mhz: Option<u64>,
        gpc_freq_mhz: Option<Vec<u64>>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Temperature<'a> {
    pub sensor: &'a str,
    /// As printed, sentinels such as -256 included.
    pub celsius: f64,
    /// Further values on the same sensor (JetPack 7 prints `cpu@52.968C/52.968C`).
    pub extra: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rail<'a> {
    pub name: &'a str,
    pub current_mw: u64,
    pub average_mw: u64,
    /// Further values (JetPack 7 prints three: `5139mW/5139mW/5139mW`).
    pub extra: Vec<u64>,
}

// The parsers work on bytes: tegrastats prints ASCII, and skipping UTF-8 decoding of every
// character more than doubles the speed. Names stay byte slices of the line until `parse` turns
// them back into `&str` by their offset in the line, which costs no validation.
type Res<'a, T> = IResult<&'a [u8], T>;

fn fail<T>(input: &[u8], kind: nom::error::ErrorKind) -> Res<'_, T> {
    Err(nom::Err::Error(nom::error::Error::new(input, kind)))
}

/// The value of the leading run of digits and its length; `None` on overflow. One pass, where
/// `digit1` and a fold would take two: numbers are most of what a line holds.
fn leading_digits(input: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    let mut len = 0;
    for &c in input {
        if !c.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        len += 1;
    }
    Some((value, len))
}

fn number(input: &[u8]) -> Res<'_, u64> {
    match leading_digits(input) {
        Some((value, len)) if len > 0 => Ok((&input[len..], value)),
        _ => fail(input, nom::error::ErrorKind::Digit),
    }
}

fn decimal(input: &[u8]) -> Res<'_, f64> {
    let negative = input.first() == Some(&b'-');
    let unsigned = &input[usize::from(negative)..];
    let int_len = unsigned.iter().take_while(|c| c.is_ascii_digit()).count();
    if int_len == 0 {
        return fail(input, nom::error::ErrorKind::Digit);
    }
    let fraction_len = match unsigned.get(int_len) {
        Some(b'.') => unsigned[int_len + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count(),
        _ => 0,
    };
    let int = &unsigned[..int_len];
    let fraction = &unsigned[int_len + 1.min(fraction_len)..][..fraction_len];
    // The integer of all digits over a power of ten: IEEE division is correctly rounded, so this
    // is the f64 nearest the printed decimal, as `str::parse` would give, for up to 15
    // significant digits; longer numbers take the general path.
    let value = if int_len + fraction_len <= 15 {
        let (int_value, _) = leading_digits(int).expect("15 digits fit in a u64");
        let (fraction_value, _) = leading_digits(fraction).expect("15 digits fit in a u64");
        (int_value * 10u64.pow(fraction_len as u32) + fraction_value) as f64
            / 10f64.powi(fraction_len as i32)
    } else {
        let printed: String = int
            .iter()
            .chain(b".")
            .chain(fraction)
            .map(|&c| char::from(c))
            .collect();
        match printed.parse::<f64>() {
            Ok(value) => value,
            Err(_) => return fail(input, nom::error::ErrorKind::Float),
        }
    };
    let consumed = usize::from(negative)
        + int_len
        + if fraction_len > 0 {
            1 + fraction_len
        } else {
            0
        };
    Ok((&input[consumed..], if negative { -value } else { value }))
}

/// A field ends at whitespace or at the end of the line.
fn end_of_field(input: &[u8]) -> Res<'_, ()> {
    match input.first() {
        None => Ok((input, ())),
        Some(c) if c.is_ascii_whitespace() => Ok((input, ())),
        Some(_) => Err(nom::Err::Error(nom::error::Error::new(
            input,
            nom::error::ErrorKind::Space,
        ))),
    }
}

/// Zero or more of `item`, like nom's `many0` but without allocating when there are none: most
/// fields have no extra values, and `many0` reserves room up front.
fn repeated<'a, T>(
    mut item: impl Parser<&'a [u8], Output = T, Error = nom::error::Error<&'a [u8]>>,
) -> impl Parser<&'a [u8], Output = Vec<T>, Error = nom::error::Error<&'a [u8]>> {
    move |mut input: &'a [u8]| {
        let mut out = Vec::new();
        while let Ok((rest, value)) = item.parse(input) {
            if rest.len() == input.len() {
                break;
            }
            out.push(value);
            input = rest;
        }
        Ok((input, out))
    }
}

fn spaces(input: &[u8]) -> Res<'_, &[u8]> {
    take_while1(|c: u8| c == b' ').parse(input)
}

/// `k`, `M` or `G` followed by `B`, as a byte multiplier (binary units).
fn unit(input: &[u8]) -> Res<'_, u64> {
    map((one_of("kMG"), char('B')), |(u, _)| match u {
        'k' => 1 << 10,
        'M' => 1 << 20,
        _ => 1 << 30,
    })
    .parse(input)
}

/// `used/totalUNIT`: the unit follows the total and applies to both.
fn used_total(input: &[u8]) -> Res<'_, (u64, u64)> {
    map((number, char('/'), number, unit), |(used, _, total, u)| {
        (used.saturating_mul(u), total.saturating_mul(u))
    })
    .parse(input)
}

fn timestamp(input: &[u8]) -> Res<'_, Stamp> {
    let two = |i| {
        map_opt(
            take_while_m_n(2, 2, |c: u8| c.is_ascii_digit()),
            |d: &[u8]| u8::try_from(leading_digits(d)?.0).ok(),
        )
        .parse(i)
    };
    map(
        (
            two,
            char('-'),
            two,
            char('-'),
            map_opt(number, |year| u16::try_from(year).ok()),
            spaces,
            two,
            char(':'),
            two,
            char(':'),
            two,
            end_of_field,
        ),
        |(month, _, day, _, year, _, hour, _, minute, _, second, ())| Stamp {
            year,
            month,
            day,
            hour,
            minute,
            second,
        },
    )
    .parse(input)
}

fn ram(input: &[u8]) -> Res<'_, Ram> {
    map(
        (
            tag("RAM "),
            used_total,
            opt(spaces),
            tag("(lfb "),
            number,
            char('x'),
            number,
            unit,
            char(')'),
            end_of_field,
        ),
        |(_, (used_bytes, total_bytes), _, _, lfb_blocks, _, size, u, _, ())| Ram {
            used_bytes,
            total_bytes,
            lfb_blocks,
            lfb_block_bytes: size.saturating_mul(u),
        },
    )
    .parse(input)
}

fn swap(input: &[u8]) -> Res<'_, Swap> {
    map(
        (
            tag("SWAP "),
            used_total,
            opt(spaces),
            tag("(cached "),
            number,
            unit,
            char(')'),
            end_of_field,
        ),
        |(_, (used_bytes, total_bytes), _, _, cached, u, _, ())| Swap {
            used_bytes,
            total_bytes,
            cached_bytes: cached.saturating_mul(u),
        },
    )
    .parse(input)
}

fn iram(input: &[u8]) -> Res<'_, Iram> {
    map(
        (
            tag("IRAM "),
            used_total,
            opt(spaces),
            tag("(lfb "),
            number,
            unit,
            char(')'),
            end_of_field,
        ),
        |(_, (used_bytes, total_bytes), _, _, lfb, u, _, ())| Iram {
            used_bytes,
            total_bytes,
            lfb_bytes: lfb.saturating_mul(u),
        },
    )
    .parse(input)
}

/// `CPU [12%@1420,off,...]`, or the old `cpu [17%,13%]@408` with one frequency for all cores.
fn cpus(input: &[u8]) -> Res<'_, Vec<Option<Cpu>>> {
    let core = alt((
        map(tag("off"), |_| None),
        map(
            (number, char('%'), opt(preceded(char('@'), number))),
            |(load, _, freq)| {
                Some(Cpu {
                    load_percent: load,
                    freq_mhz: freq,
                })
            },
        ),
    ));
    map(
        (
            alt((tag("CPU "), tag("cpu "))),
            delimited(char('['), comma_list(core, 12), char(']')),
            opt(preceded(char('@'), number)),
            end_of_field,
        ),
        |(_, mut cores, shared_freq, ())| {
            if let Some(freq) = shared_freq {
                for core in cores.iter_mut().flatten() {
                    core.freq_mhz.get_or_insert(freq);
                }
            }
            cores
        },
    )
    .parse(input)
}

fn mts(input: &[u8]) -> Res<'_, Mts> {
    map(
        (
            tag("MTS fg "),
            number,
            tag("% bg "),
            number,
            char('%'),
            end_of_field,
        ),
        |(_, fg_percent, _, bg_percent, _, ())| Mts {
            fg_percent,
            bg_percent,
        },
    )
    .parse(input)
}

/// A field as parsed, names still bytes of the line.
enum Field<'a> {
    Ram(Ram),
    Swap(Swap),
    Iram(Iram),
    Cpus(Vec<Option<Cpu>>),
    Mts(Mts),
    Temperature {
        sensor: &'a [u8],
        celsius: f64,
        extra: Vec<f64>,
    },
    Rail {
        name: &'a [u8],
        current_mw: u64,
        average_mw: u64,
        extra: Vec<u64>,
    },
    Engine(&'a [u8], Engine),
}

fn temperature(input: &[u8]) -> Res<'_, Field<'_>> {
    let name = take_while1(|c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    map(
        (
            name,
            char('@'),
            decimal,
            char('C'),
            repeated(delimited(char('/'), decimal, char('C'))),
            end_of_field,
        ),
        |(sensor, _, celsius, _, extra, ())| Field::Temperature {
            sensor,
            celsius,
            extra,
        },
    )
    .parse(input)
}

fn rail(input: &[u8]) -> Res<'_, Field<'_>> {
    let name = take_while1(|c: u8| c.is_ascii_alphanumeric() || c == b'_');
    let milliwatts = |i| map((number, opt(tag("mW"))), |(n, _)| n).parse(i);
    map(
        (
            name,
            spaces,
            milliwatts,
            char('/'),
            milliwatts,
            repeated(preceded(char('/'), milliwatts)),
            end_of_field,
        ),
        |(name, _, current_mw, _, average_mw, extra, ())| Field::Rail {
            name,
            current_mw,
            average_mw,
            extra,
        },
    )
    .parse(input)
}

fn gpc_list(input: &[u8]) -> Res<'_, Vec<u64>> {
    delimited(tag("@["), comma_list(number, 4), char(']')).parse(input)
}

/// One or more of `item` separated by commas, like nom's `separated_list1` but with room for a
/// typical list up front (`separated_list1` grows from nothing, three allocations for 12 cores).
fn comma_list<'a, T>(
    mut item: impl Parser<&'a [u8], Output = T, Error = nom::error::Error<&'a [u8]>>,
    typical: usize,
) -> impl Parser<&'a [u8], Output = Vec<T>, Error = nom::error::Error<&'a [u8]>> {
    move |input: &'a [u8]| {
        let (mut rest, first) = item.parse(input)?;
        let mut out = Vec::with_capacity(typical);
        out.push(first);
        while let Some(after_comma) = rest.strip_prefix(b",") {
            let (after, value) = item.parse(after_comma)?;
            out.push(value);
            rest = after;
        }
        Ok((rest, out))
    }
}

fn engine(input: &[u8]) -> Res<'_, Field<'_>> {
    let name = recognize((
        take_while_m_n(1, 1, |c: u8| c.is_ascii_uppercase()),
        take_while(|c: u8| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_'),
    ));
    let on = |load: Option<u64>, freq: Option<u64>| Engine::On {
        load_percent: load,
        freq_mhz: freq,
        gpc_freq_mhz: None,
    };
    let with_gpcs = |load: Option<u64>, gpcs: Vec<u64>| Engine::On {
        load_percent: load,
        freq_mhz: gpcs.iter().copied().max(),
        gpc_freq_mhz: Some(gpcs),
    };
    let value = alt((
        map(tag("off"), |_| Engine::Off),
        map(gpc_list, move |gpcs| with_gpcs(None, gpcs)),
        map((number, char('%'), gpc_list), move |(load, _, gpcs)| {
            with_gpcs(Some(load), gpcs)
        }),
        map((number, tag("%@"), number), move |(load, _, freq)| {
            on(Some(load), Some(freq))
        }),
        map(preceded(char('@'), number), move |freq| {
            on(None, Some(freq))
        }),
        map((number, char('%')), move |(load, _)| on(Some(load), None)),
        // A bare number is a frequency in MHz (`APE 150`), not a load.
        map(number, move |freq| on(None, Some(freq))),
    ));
    map(
        (name, spaces, value, end_of_field),
        |(name, _, value, ())| Field::Engine(name.strip_suffix(b"_FREQ").unwrap_or(name), value),
    )
    .parse(input)
}

/// Picks the one parser that can match from the field's first token, rather than trying each in
/// turn: the speed of a parser that runs once a second on every device adds up.
fn field(input: &[u8]) -> Res<'_, Field<'_>> {
    let token_end = input
        .iter()
        .position(u8::is_ascii_whitespace)
        .unwrap_or(input.len());
    let token = &input[..token_end];
    let after = skip_spaces(&input[token_end..]);
    match token {
        b"RAM" => map(ram, Field::Ram).parse(input),
        b"SWAP" => map(swap, Field::Swap).parse(input),
        b"IRAM" => map(iram, Field::Iram).parse(input),
        b"CPU" | b"cpu" if after.first() == Some(&b'[') => map(cpus, Field::Cpus).parse(input),
        b"MTS" => map(mts, Field::Mts).parse(input),
        _ if token.ends_with(b"C") && token.contains(&b'@') => temperature(input),
        _ => {
            let value_end = after
                .iter()
                .position(u8::is_ascii_whitespace)
                .unwrap_or(after.len());
            if after[..value_end].contains(&b'/') {
                rail(input)
            } else {
                engine(input)
            }
        }
    }
}

/// A name the field parsers took from `line`, as the `&str` it is there. The parsers accept only
/// ASCII in names, so the offsets are always character boundaries; `""` is unreachable.
fn name_in<'a>(line: &'a str, name: &[u8]) -> &'a str {
    let start = name.as_ptr() as usize - line.as_ptr() as usize;
    line.get(start..start + name.len()).unwrap_or_default()
}

fn skip_spaces(input: &[u8]) -> &[u8] {
    let start = input
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(input.len());
    &input[start..]
}

/// Parses one line of tegrastats output, with or without its trailing newline. Never fails:
/// what it does not recognise ends up in [`Tegrastats::unknown`].
pub fn parse(line: &str) -> Tegrastats<'_> {
    // Room for a typical Orin line, so that a line costs four allocations, not twenty.
    let mut out = Tegrastats {
        engines: Vec::with_capacity(16),
        temperatures: Vec::with_capacity(16),
        rails: Vec::with_capacity(8),
        ..Tegrastats::default()
    };
    let mut rest = skip_spaces(line.as_bytes());
    if let Ok((after, stamp)) = timestamp(rest) {
        out.timestamp = Some(stamp);
        rest = after;
    }
    loop {
        rest = skip_spaces(rest);
        if rest.is_empty() {
            break;
        }
        match field(rest) {
            Ok((after, parsed)) => {
                match parsed {
                    Field::Ram(ram) => out.ram = Some(ram),
                    Field::Swap(swap) => out.swap = Some(swap),
                    Field::Iram(iram) => out.iram = Some(iram),
                    Field::Cpus(cpus) => out.cpus = Some(cpus),
                    Field::Mts(mts) => out.mts = Some(mts),
                    Field::Temperature {
                        sensor,
                        celsius,
                        extra,
                    } => out.temperatures.push(Temperature {
                        sensor: name_in(line, sensor),
                        celsius,
                        extra,
                    }),
                    Field::Rail {
                        name,
                        current_mw,
                        average_mw,
                        extra,
                    } => out.rails.push(Rail {
                        name: name_in(line, name),
                        current_mw,
                        average_mw,
                        extra,
                    }),
                    Field::Engine(name, engine) => out.engines.push((name_in(line, name), engine)),
                }
                rest = after;
            }
            Err(_) => {
                // Token boundaries are ASCII whitespace, so these offsets are char boundaries.
                let start = line.len() - rest.len();
                let len = rest
                    .iter()
                    .position(u8::is_ascii_whitespace)
                    .unwrap_or(rest.len());
                if let Some(token) = line.get(start..start + len) {
                    out.unknown.push(token);
                }
                rest = &rest[len..];
            }
        }
    }
    out
}

impl Tegrastats<'_> {
    /// The JSON form that `outpost tegrastats parse` prints: every key present, absent parts
    /// `null`, memory in bytes.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let engines: Map<String, Value> = self
            .engines
            .iter()
            .map(|(name, engine)| {
                let value = match engine {
                    Engine::Off => json!("off"),
                    Engine::On {
                        load_percent,
                        freq_mhz,
                        gpc_freq_mhz,
                    } => {
                        let mut object = Map::new();
                        if let Some(load) = load_percent {
                            object.insert("load_percent".into(), json!(load));
                        }
                        if let Some(freq) = freq_mhz {
                            object.insert("freq_mhz".into(), json!(freq));
                        }
                        if let Some(gpcs) = gpc_freq_mhz {
                            object.insert("gpc_freq_mhz".into(), json!(gpcs));
                        }
                        Value::Object(object)
                    }
                };
                ((*name).to_string(), value)
            })
            .collect();
        let mut temperatures: Map<String, Value> = self
            .temperatures
            .iter()
            .map(|t| (t.sensor.to_string(), json!(t.celsius)))
            .collect();
        let extra_temperatures: Map<String, Value> = self
            .temperatures
            .iter()
            .filter(|t| !t.extra.is_empty())
            .map(|t| (t.sensor.to_string(), json!(t.extra)))
            .collect();
        if !extra_temperatures.is_empty() {
            temperatures.insert("extra".into(), Value::Object(extra_temperatures));
        }
        let rails: Map<String, Value> = self
            .rails
            .iter()
            .map(|r| {
                let mut object = Map::new();
                object.insert("current".into(), json!(r.current_mw));
                object.insert("average".into(), json!(r.average_mw));
                if !r.extra.is_empty() {
                    object.insert("extra".into(), json!(r.extra));
                }
                (r.name.to_string(), Value::Object(object))
            })
            .collect();
        json!({
            "timestamp": self.timestamp.map(|t| t.to_string()),
            "ram": self.ram.map(|r| json!({
                "used_bytes": r.used_bytes,
                "total_bytes": r.total_bytes,
                "lfb_blocks": r.lfb_blocks,
                "lfb_block_bytes": r.lfb_block_bytes,
            })),
            "swap": self.swap.map(|s| json!({
                "used_bytes": s.used_bytes,
                "total_bytes": s.total_bytes,
                "cached_bytes": s.cached_bytes,
            })),
            "iram": self.iram.map(|i| json!({
                "used_bytes": i.used_bytes,
                "total_bytes": i.total_bytes,
                "lfb_bytes": i.lfb_bytes,
            })),
            "cpus": self.cpus.as_ref().map(|cpus| cpus.iter().map(|c| c.map(|c| {
                let mut object = Map::new();
                object.insert("load_percent".into(), json!(c.load_percent));
                if let Some(freq) = c.freq_mhz {
                    object.insert("freq_mhz".into(), json!(freq));
                }
                Value::Object(object)
            })).collect::<Vec<_>>()),
            "mts": self.mts.map(|m| json!({"fg_percent": m.fg_percent, "bg_percent": m.bg_percent})),
            "engines": engines,
            "temperatures_c": temperatures,
            "rails_mw": rails,
            "unknown": self.unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(line: &str, expected: serde_json::Value) {
        assert_eq!(parse(line).to_json(), expected, "{line}");
    }

    #[test]
    fn jetpack_7_orin_with_gpc_arrays_and_three_value_rails() {
        check(
            "07-25-2026 09:08:28 RAM 20642/62817MB (lfb 1x2MB) CPU [23%@2201,off] EMC_FREQ 3%@3199 \
             GR3D_FREQ 12%@[1300,1300] NVDLA0 off PVA0_FREQ off APE 174 cpu@52.968C/52.968C \
             CV0@-256C VDD_GPU_SOC 5139mW/5139mW/5139mW\n",
            json!({
                "timestamp": "2026-07-25T09:08:28",
                "ram": {"used_bytes": 20642u64 << 20, "total_bytes": 62817u64 << 20, "lfb_blocks": 1, "lfb_block_bytes": 2u64 << 20},
                "swap": null,
                "iram": null,
                "cpus": [{"load_percent": 23, "freq_mhz": 2201}, null],
                "mts": null,
                "engines": {
                    "EMC": {"load_percent": 3, "freq_mhz": 3199},
                    "GR3D": {"load_percent": 12, "freq_mhz": 1300, "gpc_freq_mhz": [1300, 1300]},
                    "NVDLA0": "off",
                    "PVA0": "off",
                    "APE": {"freq_mhz": 174},
                },
                "temperatures_c": {"cpu": 52.968, "CV0": -256.0, "extra": {"cpu": [52.968]}},
                "rails_mw": {"VDD_GPU_SOC": {"current": 5139, "average": 5139, "extra": [5139]}},
                "unknown": [],
            }),
        );
    }

    #[test]
    fn tx1_lowercase_cpu_form_and_bare_engine_frequencies() {
        check(
            "RAM 3468/3983MB (lfb 48x4MB) SWAP 873/8192MB (cached 295MB) cpu [17%,13%,off,5%]@408 EMC 1%@408 APE 25 GR3D 3%@76",
            json!({
                "timestamp": null,
                "ram": {"used_bytes": 3468u64 << 20, "total_bytes": 3983u64 << 20, "lfb_blocks": 48, "lfb_block_bytes": 4u64 << 20},
                "swap": {"used_bytes": 873u64 << 20, "total_bytes": 8192u64 << 20, "cached_bytes": 295u64 << 20},
                "iram": null,
                "cpus": [
                    {"load_percent": 17, "freq_mhz": 408},
                    {"load_percent": 13, "freq_mhz": 408},
                    null,
                    {"load_percent": 5, "freq_mhz": 408},
                ],
                "mts": null,
                "engines": {
                    "EMC": {"load_percent": 1, "freq_mhz": 408},
                    "APE": {"freq_mhz": 25},
                    "GR3D": {"load_percent": 3, "freq_mhz": 76},
                },
                "temperatures_c": {},
                "rails_mw": {},
                "unknown": [],
            }),
        );
    }

    #[test]
    fn nano_iram_mts_and_unitless_rails() {
        let parsed = parse(
            "RAM 1180/3965MB (lfb 1x2MB) IRAM 0/252kB(lfb 252kB) CPU [30%@1036] MTS fg 3% bg 8% \
             NVENC 716 PLL@57C POM_5V_IN 4520/4680",
        );
        assert_eq!(
            parsed.iram,
            Some(Iram {
                used_bytes: 0,
                total_bytes: 252 * 1024,
                lfb_bytes: 252 * 1024
            })
        );
        assert_eq!(
            parsed.mts,
            Some(Mts {
                fg_percent: 3,
                bg_percent: 8
            })
        );
        assert_eq!(
            parsed.engines,
            vec![(
                "NVENC",
                Engine::On {
                    load_percent: None,
                    freq_mhz: Some(716),
                    gpc_freq_mhz: None
                }
            )]
        );
        assert_eq!(parsed.rails[0].current_mw, 4520);
        assert_eq!(parsed.rails[0].average_mw, 4680);
        assert!(parsed.unknown.is_empty());
    }

    #[test]
    fn thor_frequency_only_engines_and_non_root_loads() {
        let parsed =
            parse("GR3D_FREQ @[1000,1000,900] NVENC0_FREQ @0 EMC_FREQ 0% GR3D2_FREQ 0%@114");
        assert_eq!(
            parsed.engines,
            vec![
                (
                    "GR3D",
                    Engine::On {
                        load_percent: None,
                        freq_mhz: Some(1000),
                        gpc_freq_mhz: Some(vec![1000, 1000, 900])
                    }
                ),
                (
                    "NVENC0",
                    Engine::On {
                        load_percent: None,
                        freq_mhz: Some(0),
                        gpc_freq_mhz: None
                    }
                ),
                (
                    "EMC",
                    Engine::On {
                        load_percent: Some(0),
                        freq_mhz: None,
                        gpc_freq_mhz: None
                    }
                ),
                (
                    "GR3D2",
                    Engine::On {
                        load_percent: Some(0),
                        freq_mhz: Some(114),
                        gpc_freq_mhz: None
                    }
                ),
            ]
        );
    }

    #[test]
    fn unknown_tokens_are_kept_and_never_fatal() {
        let parsed = parse("RAM 1/2MB (lfb 1x4MB) WEIRD!! 12@@ CPU [bad] VDD_IN 5/5");
        assert_eq!(parsed.unknown, vec!["WEIRD!!", "12@@", "CPU", "[bad]"]);
        assert!(parsed.ram.is_some());
        assert_eq!(parsed.rails.len(), 1);
        assert_eq!(parse(""), Tegrastats::default());
        // Numbers too large for u64 are unknown tokens, not a panic.
        assert_eq!(parse("APE 99999999999999999999999").unknown.len(), 2);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(line in "\\PC{0,200}") {
            let _ = parse(&line).to_json();
        }

        #[test]
        fn never_panics_on_near_misses(line in "[ A-Z0-9a-z@%/\\[\\],.()x:-]{0,120}") {
            let _ = parse(&line).to_json();
        }
    }
}
