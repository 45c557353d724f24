//! PromQL over the store, with the semantics of Prometheus 2.x for float samples: what a query
//! answers here is what Prometheus answers on the same samples (checked by the differential
//! test against a real Prometheus, `tests/it/promql.rs`).
//!
//! The parser is the `promql-parser` crate's; the evaluator is ours. Evaluation follows
//! Prometheus' model: every instant-vector expression is evaluated once over the whole grid of
//! steps into a set of series, and operators combine those step by step. That keeps range
//! queries to one read of the store per selector, and makes "at each step" rules (a label set
//! may appear once per step, lookback, range windows) easy to state once.

mod aggregate;
mod binary;
mod eval;
mod functions;
mod labels;
mod reach;

use std::time::Instant;

pub use crate::series::is_label_name;
pub use labels::{Labels, METRIC_NAME};
pub use promql_parser::label::{MatchOp as LabelMatchOp, Matcher};
pub use promql_parser::parser::Expr;
pub use reach::{matchers_key, selector_reaches, SelectorReach};

use crate::{Rollup, Selector, Store, Tier};

/// How a query is evaluated and what bounds it.
#[derive(Debug, Clone)]
pub struct Options {
    /// How far back an instant selector looks for a sample (Prometheus: 5 minutes).
    pub lookback_ms: i64,
    /// Samples a query may hold at once, read and computed (Prometheus: `--query.max-samples`).
    pub max_samples: usize,
    /// Series one selector may select.
    pub max_series: usize,
    /// A subquery's step when it gives none (Prometheus: the global evaluation interval).
    pub subquery_step_ms: i64,
    /// Steps a range query may have (Prometheus refuses more than 11,000).
    pub max_steps: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lookback_ms: 5 * 60_000,
            max_samples: 20_000_000,
            max_series: 100_000,
            subquery_step_ms: 60_000,
            max_steps: 11_000,
        }
    }
}

/// Why a query has no answer. Each maps onto one of Prometheus' API error types.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The expression or a parameter is malformed (`bad_data`).
    #[error("{0}")]
    BadData(String),
    /// The expression is well formed but cannot be evaluated on this data (`execution`).
    #[error("{0}")]
    Execution(String),
    /// A bound of [`Options`] was hit (`execution`).
    #[error("query processing would load too many samples into memory in {0}")]
    TooManySamples(&'static str),
    #[error("query timed out in {0}")]
    Timeout(&'static str),
    /// The store failed (`internal`).
    #[error("reading the store: {0}")]
    Storage(#[from] crate::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where selectors read their samples.
pub trait Source {
    /// Every series matching all `matchers`, with its samples in `from..=to`, sorted by time.
    fn select(&self, matchers: &[Matcher], from: i64, to: i64) -> Result<Vec<Series>>;

    /// The rollups of the series matching `matchers` whose buckets start in `from..=to`: what
    /// answers for raw samples that retention removed. `resolution_ms` is the coarsest bucket
    /// the caller can use (the step, or a window if shorter): the hour tier answers where it
    /// fits, so that a month at a 1-hour step reads hours, not minutes; else the finest kept.
    fn select_rollups(
        &self,
        matchers: &[Matcher],
        from: i64,
        to: i64,
        resolution_ms: i64,
    ) -> Result<Vec<Rollups>> {
        let _ = (matchers, from, to, resolution_ms);
        Ok(Vec::new())
    }
}

/// One bucket of a rollup tier: what the samples in `start..start + width` came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub start: i64,
    pub width: i64,
    pub rollup: Rollup,
}

impl Bucket {
    /// The last instant the bucket covers.
    pub fn end(&self) -> i64 {
        self.start + self.width - 1
    }
}

/// A series' rollup buckets, sorted by start, none overlapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollups {
    pub labels: Labels,
    pub buckets: Vec<Bucket>,
}

impl Source for Store {
    fn select(&self, matchers: &[Matcher], from: i64, to: i64) -> Result<Vec<Series>> {
        let selector = store_selector(matchers)?;
        #[allow(clippy::disallowed_methods)] // callers run queries off the async threads
        let found = self.query_raw(&selector, from, to)?;
        Ok(found
            .into_iter()
            .map(|s| Series {
                labels: Labels::from_key(&s.series),
                points: s.points,
            })
            .collect())
    }

    fn select_rollups(
        &self,
        matchers: &[Matcher],
        from: i64,
        to: i64,
        resolution_ms: i64,
    ) -> Result<Vec<Rollups>> {
        #![allow(clippy::disallowed_methods)] // callers run queries off the async threads
        use std::collections::HashMap;
        let selector = store_selector(matchers)?;
        let (minute, hour) = (Tier::Minute.resolution_ms(), Tier::Hour.resolution_ms());
        // Buckets stand in only for raw samples that are gone.
        let raw_starts: HashMap<crate::SeriesKey, i64> = self
            .raw_starts(&selector)?
            .into_iter()
            .map(|(key, start)| (key, start.unwrap_or(i64::MAX)))
            .collect();
        let before_raw = |key: &crate::SeriesKey, start: i64, width: i64| {
            start + width <= raw_starts.get(key).copied().unwrap_or(i64::MAX)
        };
        let keep =
            |tier: Vec<crate::store::SeriesRollups>, width: i64| -> HashMap<_, Vec<Bucket>> {
                tier.into_iter()
                    .map(|(key, points)| {
                        let buckets = points
                            .into_iter()
                            .filter(|(start, _)| before_raw(&key, *start, width))
                            .map(|(start, rollup)| Bucket {
                                start,
                                width,
                                rollup,
                            })
                            .collect::<Vec<_>>();
                        (key, buckets)
                    })
                    .collect()
            };
        // The coarse tier where the caller can use it (then minutes only after its last
        // bucket); else minutes, and hours only before the first minute kept.
        let prefer_hours = resolution_ms >= hour;
        let (mut hours, mut minutes) = if prefer_hours {
            let hours = keep(self.query_rollups(&selector, Tier::Hour, from, to)?, hour);
            let covered = hours
                .values()
                .map(|b| b.last().map_or(from, |b| b.start + hour))
                .min()
                .unwrap_or(from);
            let minutes = self.query_rollups(&selector, Tier::Minute, covered, to)?;
            (hours, keep(minutes, minute))
        } else {
            let minutes = keep(
                self.query_rollups(&selector, Tier::Minute, from, to)?,
                minute,
            );
            let uncovered = minutes
                .values()
                .map(|b| b.first().map_or(to, |b| b.start))
                .max()
                .unwrap_or(to);
            let hours = self.query_rollups(&selector, Tier::Hour, from, uncovered)?;
            (keep(hours, hour), minutes)
        };
        let keys: std::collections::BTreeSet<crate::SeriesKey> =
            hours.keys().chain(minutes.keys()).cloned().collect();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let mut buckets = hours.remove(&key).unwrap_or_default();
            let mut later = minutes.remove(&key).unwrap_or_default();
            // Hours, then the minutes after them; no instant is covered twice.
            if prefer_hours {
                let until = buckets.last().map_or(i64::MIN, |b| b.start + hour);
                later.retain(|b| b.start >= until);
            } else {
                let since = later.first().map_or(i64::MAX, |b| b.start);
                buckets.retain(|b| b.start + hour <= since);
            }
            buckets.extend(later);
            if !buckets.is_empty() {
                out.push(Rollups {
                    labels: Labels::from_key(&key),
                    buckets,
                });
            }
        }
        Ok(out)
    }
}

/// The store's selector for PromQL's matchers (both anchor regexes the same way).
pub fn store_selector(matchers: &[Matcher]) -> Result<Selector> {
    use promql_parser::label::MatchOp as P;
    let converted = matchers.iter().map(|m| {
        let op = match m.op {
            P::Equal => crate::MatchOp::Equal,
            P::NotEqual => crate::MatchOp::NotEqual,
            P::Re(_) => crate::MatchOp::Regex,
            P::NotRe(_) => crate::MatchOp::NotRegex,
        };
        (m.name.as_str(), op, m.value.as_str())
    });
    Selector::from_matchers(converted).map_err(|e| Error::BadData(e.to_string()))
}

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub t: i64,
    pub v: f64,
}

/// One series of a range vector: points sorted by time.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub points: Vec<(i64, f64)>,
}

/// What a query evaluates to, in Prometheus' four result types.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar { t: i64, v: f64 },
    String { t: i64, v: String },
    Vector(Vec<Sample>),
    Matrix(Vec<Series>),
}

impl Value {
    /// Prometheus' name of the type (`resultType`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar { .. } => "scalar",
            Value::String { .. } => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// A result and what the caller should know about how it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub value: Value,
    pub warnings: Vec<String>,
}

/// The longest expression taken: far beyond any dashboard's, well short of what could exhaust
/// the parser.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// The most bytes outside string literals: the parser recurses once per operator of a chain
/// (`a + b + ...`), so this bounds its depth; long regular expressions stay possible.
pub const MAX_CODE_BYTES: usize = 16 * 1024;
/// The deepest nesting of an expression's parts: evaluation recurses once per level.
pub const MAX_DEPTH: usize = 200;

/// Parses an expression, with Prometheus' checks of types and arguments.
pub fn parse(text: &str) -> Result<Expr> {
    if text.trim().is_empty() {
        return Err(Error::BadData("empty query".into()));
    }
    if text.len() > MAX_QUERY_BYTES {
        return Err(Error::BadData(format!(
            "the query is {} bytes long; at most {MAX_QUERY_BYTES} are taken",
            text.len()
        )));
    }
    let (depth, code_bytes) = nesting(text);
    if code_bytes > MAX_CODE_BYTES {
        return Err(Error::BadData(format!(
            "the query has {code_bytes} bytes outside string literals; at most {MAX_CODE_BYTES} \
             are taken"
        )));
    }
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    register_prometheus_2_functions();
    let expr = promql_parser::parser::parse(text).map_err(Error::BadData)?;
    eval::check_supported(&expr, 0)?;
    Ok(expr)
}

/// A series selector (`match[]`), as the store reads it.
pub fn parse_selector(text: &str) -> Result<Selector> {
    match parse(text)? {
        Expr::VectorSelector(vs) => store_selector(&eval::selector_matchers(&vs)),
        _ => Err(Error::BadData(format!(
            "{text:?} is not a series selector (like up{{job=\"node\"}})"
        ))),
    }
}

/// The label matchers of a series selector, as [`Source::select`] takes them.
pub fn parse_matchers(text: &str) -> Result<Vec<Matcher>> {
    match parse(text)? {
        Expr::VectorSelector(vs) => Ok(eval::selector_matchers(&vs)),
        _ => Err(Error::BadData(format!(
            "{text:?} is not a series selector (like up{{job=\"node\"}})"
        ))),
    }
}

/// The expression laid out as Prometheus' `format_query` lays it out.
pub fn prettify(text: &str) -> Result<String> {
    Ok(parse(text)?.prettify())
}

fn too_deep() -> Error {
    Error::BadData(format!(
        "the expression nests deeper than {MAX_DEPTH} levels"
    ))
}

/// How deep brackets of any kind nest outside string literals, or how many signs follow one
/// another (each a unary operator), and how many bytes lie outside string literals: checked
/// before parsing, because the parser recurses as deep.
fn nesting(text: &str) -> (usize, usize) {
    let (mut depth, mut deepest, mut code_bytes, mut signs) = (0usize, 0usize, 0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q != '`' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        code_bytes += c.len_utf8();
        if c == '-' || c == '+' {
            signs += 1;
            deepest = deepest.max(signs);
            continue;
        }
        signs = 0;
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    (deepest, code_bytes)
}

/// Functions of Prometheus 2.x that the parser, which follows Prometheus 3, no longer knows.
fn register_prometheus_2_functions() {
    use promql_parser::parser::{value::ValueType, Function};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let holt_winters = Function::new(
            "holt_winters",
            vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar],
            0,
            ValueType::Vector,
            false,
        );
        // It fails only on a name already taken, which would be the parser knowing it again.
        let _ = promql_parser::parser::register_extra_functions(vec![holt_winters]);
    });
}

/// Evaluates `text` at one instant (Unix milliseconds).
pub fn instant(
    source: &dyn Source,
    text: &str,
    at_ms: i64,
    options: &Options,
    deadline: Option<Instant>,
) -> Result<Answer> {
    let expr = parse(text)?;
    eval::Evaluator::new(source, options, deadline, at_ms, at_ms).instant(&expr, at_ms)
}

/// Evaluates an expression parsed once with [`parse`] at one instant: what a rule evaluated
/// every few seconds does, without parsing it each time.
pub fn instant_expr(
    source: &dyn Source,
    expr: &Expr,
    at_ms: i64,
    options: &Options,
    deadline: Option<Instant>,
) -> Result<Answer> {
    eval::Evaluator::new(source, options, deadline, at_ms, at_ms).instant(expr, at_ms)
}

/// Evaluates `text` at `start`, `start + step`, ... up to `end` (milliseconds).
pub fn range(
    source: &dyn Source,
    text: &str,
    start: i64,
    end: i64,
    step: i64,
    options: &Options,
    deadline: Option<Instant>,
) -> Result<Answer> {
    if end < start {
        return Err(Error::BadData(
            "end timestamp must not be before start time".into(),
        ));
    }
    if step <= 0 {
        return Err(Error::BadData(
            "zero or negative query resolution step widths are not accepted. Try a positive integer"
                .into(),
        ));
    }
    if (end - start) / step > options.max_steps {
        return Err(Error::BadData(format!(
            "exceeded maximum resolution of {} points per timeseries. Try decreasing the query \
             resolution (?step=XX)",
            options.max_steps
        )));
    }
    let expr = parse(text)?;
    eval::Evaluator::new(source, options, deadline, start, end).range(&expr, start, end, step)
}

/// Prometheus' spelling of a sample value: shortest round-trip decimal, `NaN`, `+Inf`, `-Inf`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v != 0.0 && (v.abs() >= 1e21 || v.abs() < 1e-6) {
        format_exponent(v)
    } else {
        format!("{v}")
    }
}

/// Go's `%e`-style shortest form (`1e+21`, `1.5e-05`), which Prometheus' JSON uses for very large
/// and very small values.
pub fn format_exponent(v: f64) -> String {
    let text = format!("{v:e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.abs())
}

#[cfg(test)]
mod tests;
