//! Where the dashboard's samples come from: the hub's store, or, with remote storage
//! (`[remote_write] query_url`), the engine's Prometheus query API, so that every hub's charts
//! show the whole fleet. Both answer in the store's terms: a step of `step` ms cuts time into
//! buckets `[b, b + step)` with `b` a multiple of the step, and a bucket's point sits at `b`.
//!
//! On the engine a bucket is one evaluation of `<fn>_over_time(selector[step] offset 1ms)` at
//! `b + step`: the window `(b - 1, b + step - 1]` holds exactly the bucket's milliseconds. The
//! evaluation times are multiples of the step, which engines cache best. Samples that reached
//! the engine only as rollups (a device whose raw samples aged out before it could ship them,
//! docs/scale.md) are the series `<name>:<figure>_1m` and `_1h`; steps that are whole minutes
//! read them where no raw sample answers a bucket, as the store reads its own tiers.

use std::collections::BTreeMap;
use std::sync::Arc;

use outpost_storage::{Aggregation, MatchOp, Selector, SeriesKey, SeriesPoints, Store};
use serde_json::Value;

use crate::prometheus::QueryEngine;
use crate::WebError;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// How the series of one device combine into one value per bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    Mean,
    Max,
    Sum,
}

/// One series of an engine's instant answer: its labels and its value.
type Labelled = (BTreeMap<String, String>, f64);

/// One series of an engine's answer: its labels and its points at their bucket starts.
type Answered = (BTreeMap<String, String>, Vec<(i64, f64)>);

/// Per device (its `instance` label), per bucket start: a value.
pub type PerInstance = BTreeMap<String, BTreeMap<i64, f64>>;

#[derive(Clone)]
pub enum Samples {
    Store(Arc<Store>),
    Engine(Engine),
}

/// The engine's query API, and the hub's clock: a bucket still filling is asked for up to
/// now, since engines do not evaluate a range query past their own present.
#[derive(Clone)]
pub struct Engine {
    pub api: Arc<dyn QueryEngine>,
    pub now_ms: i64,
}

impl Samples {
    /// The series matching `selector` that have data between `from` and `to` (the store lists
    /// every series it holds, as it always did).
    pub async fn series(
        &self,
        selector: &Selector,
        from: i64,
        to: i64,
    ) -> Result<Vec<SeriesKey>, WebError> {
        match self {
            Samples::Store(store) => Ok(store
                .series(selector)
                .into_iter()
                .map(|(_, key)| key)
                .collect()),
            Samples::Engine(engine) => Ok(engine_series(engine, selector, from, to)
                .await?
                .into_keys()
                .collect()),
        }
    }

    /// One point per bucket of `step` ms from `from`'s bucket to `to`'s, per series, reduced
    /// with `aggregation`; buckets without data are left out.
    pub async fn query_step(
        &self,
        selector: &Selector,
        from: i64,
        to: i64,
        step: i64,
        aggregation: Aggregation,
    ) -> Result<Vec<SeriesPoints>, WebError> {
        match self {
            Samples::Store(store) => {
                let (store, selector) = (store.clone(), selector.clone());
                blocking(move || Ok(store.query_step(&selector, from, to, step, aggregation)?))
                    .await
            }
            Samples::Engine(engine) => {
                engine_query_step(engine, selector, from, to, step, aggregation).await
            }
        }
    }

    /// Per device, per minute from `from`'s minute to `to`: every matching series' minute mean,
    /// combined across the device's series with `combine`.
    pub async fn per_instance(
        &self,
        selector: &Selector,
        combine: Combine,
        from: i64,
        to: i64,
    ) -> Result<PerInstance, WebError> {
        match self {
            Samples::Store(_) => {
                let found = self
                    .query_step(selector, from, to, MINUTE_MS, Aggregation::Avg)
                    .await?;
                Ok(combine_per_instance(found, combine))
            }
            Samples::Engine(engine) => {
                let outer = match combine {
                    Combine::Mean => "avg",
                    Combine::Max => "max",
                    Combine::Sum => "sum",
                };
                let selector = promql_selector(selector, None);
                let expression = move |window: &str| {
                    format!("{outer} by (instance) (avg_over_time({selector}{window}))")
                };
                let first = outpost_storage::bucket_start(from, MINUTE_MS);
                let last = outpost_storage::bucket_start(to, MINUTE_MS);
                let mut out = PerInstance::new();
                for (labels, points) in engine.evaluate(&expression, first, last, MINUTE_MS).await?
                {
                    let Some(instance) = labels.get("instance") else {
                        continue;
                    };
                    out.entry(instance.clone())
                        .or_default()
                        .extend(points.into_iter().filter(|(_, v)| v.is_finite()));
                }
                Ok(out)
            }
        }
    }
}

/// Per device (its `instance` label): its newest value now.
pub type Latest = BTreeMap<String, f64>;

impl Samples {
    /// Per device: the newest sample of each matching series in `(now - within, now]`, combined
    /// across the device's series with `combine`. A device none of whose series has a sample
    /// that recent has no value: what stopped coming is not shown as current.
    pub async fn latest_per_instance(
        &self,
        selector: &Selector,
        combine: Combine,
        now: i64,
        within: i64,
    ) -> Result<Latest, WebError> {
        let from = now.saturating_sub(within).saturating_add(1);
        match self {
            Samples::Store(store) => {
                let (store, selector) = (store.clone(), selector.clone());
                let found = blocking(move || Ok(store.query_raw(&selector, from, now)?)).await?;
                let newest = found.into_iter().filter_map(|series| {
                    let (_, value) = series
                        .points
                        .iter()
                        .rev()
                        .find(|(at, v)| *at <= now && v.is_finite())?;
                    Some((series.series.label("instance").to_string(), *value))
                });
                Ok(combine_values(newest, combine))
            }
            Samples::Engine(engine) => {
                let outer = match combine {
                    Combine::Mean => "avg",
                    Combine::Max => "max",
                    Combine::Sum => "sum",
                };
                let selector = promql_selector(selector, None);
                let expression =
                    format!("{outer} by (instance) (last_over_time({selector}[{within}ms]))");
                let answered = instant_query(engine, &expression, now).await?;
                Ok(answered
                    .into_iter()
                    .filter(|(_, value)| value.is_finite())
                    .filter_map(|(labels, value)| Some((labels.get("instance")?.clone(), value)))
                    .collect())
            }
        }
    }
}

/// Runs a store read off the async thread: a long range query must not hold up MQTT.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, WebError> + Send + 'static,
) -> Result<T, WebError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| WebError::Internal(format!("query task: {e}")))?
}

/// The store's per-series minute means, combined per device. Nested maps, device then bucket:
/// one string lookup per series, not per point (the fleet summary reads a million points).
fn combine_per_instance(found: Vec<SeriesPoints>, combine: Combine) -> PerInstance {
    let mut sums: BTreeMap<String, BTreeMap<i64, Combined>> = BTreeMap::new();
    for series in found {
        let device = series.series.label("instance").to_string();
        let buckets = sums.entry(device).or_default();
        for (bucket, value) in series.points {
            buckets.entry(bucket).or_default().add(value, combine);
        }
    }
    sums.into_iter()
        .map(|(device, buckets)| {
            let values = buckets
                .into_iter()
                .filter_map(|(bucket, sum)| Some((bucket, sum.value(combine)?)))
                .collect();
            (device, values)
        })
        .collect()
}

/// The finite values of each key combined with `combine`.
fn combine_values<K: Ord>(
    values: impl Iterator<Item = (K, f64)>,
    combine: Combine,
) -> BTreeMap<K, f64> {
    let mut sums: BTreeMap<K, Combined> = BTreeMap::new();
    for (key, value) in values {
        sums.entry(key).or_default().add(value, combine);
    }
    sums.into_iter()
        .filter_map(|(key, sum)| Some((key, sum.value(combine)?)))
        .collect()
}

/// Values combined as they come: the running maximum or sum, and how many.
#[derive(Default)]
struct Combined {
    value: f64,
    count: u32,
}

impl Combined {
    fn add(&mut self, value: f64, combine: Combine) {
        if !value.is_finite() {
            return;
        }
        self.value = match (combine, self.count) {
            (_, 0) => value,
            (Combine::Max, _) => self.value.max(value),
            (Combine::Mean | Combine::Sum, _) => self.value + value,
        };
        self.count += 1;
    }

    /// `None` when no finite value came.
    fn value(&self, combine: Combine) -> Option<f64> {
        match (combine, self.count) {
            (_, 0) => None,
            (Combine::Mean, n) => Some(self.value / f64::from(n)),
            _ => Some(self.value),
        }
    }
}

/// A rollup tier as the engine holds it: the suffix of its series' names and its bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum RollupTier {
    Minute,
    Hour,
}

impl RollupTier {
    fn suffix(self) -> &'static str {
        match self {
            RollupTier::Minute => "1m",
            RollupTier::Hour => "1h",
        }
    }

    fn width(self) -> i64 {
        match self {
            RollupTier::Minute => MINUTE_MS,
            RollupTier::Hour => HOUR_MS,
        }
    }

    /// The tier a series name belongs to, and the name of the series it is a rollup of:
    /// `node_load1:count_1h` is node_load1's hour tier.
    fn of(name: &str) -> Option<(&str, RollupTier)> {
        let (base, figure) = name.rsplit_once(':')?;
        let (figure, suffix) = figure.rsplit_once('_')?;
        if !matches!(figure, "min" | "max" | "sum" | "count" | "last") || base.is_empty() {
            return None;
        }
        let tier = match suffix {
            "1m" => RollupTier::Minute,
            "1h" => RollupTier::Hour,
            _ => return None,
        };
        Some((base, tier))
    }
}

/// Where the engine holds a series' samples: raw, and the rollup tiers it came in as.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Held {
    raw: bool,
    tiers: Vec<RollupTier>,
}

/// The series matching `selector` with data in `from..=to`, raw or as rollups, and where each
/// is held. Rollup series are listed by their `count` figure, then matched by the series they
/// stand for, so that a selector means the same series on the engine as in the store.
async fn engine_series(
    engine: &Engine,
    selector: &Selector,
    from: i64,
    to: i64,
) -> Result<BTreeMap<SeriesKey, Held>, WebError> {
    let mut out: BTreeMap<SeriesKey, Held> = BTreeMap::new();
    for labels in list_series(engine, &promql_selector(selector, None), from, to).await? {
        let (name, key) = key_of(labels)?;
        if RollupTier::of(&name).is_none() {
            out.entry(key).or_default().raw = true;
        }
    }
    let rollups = promql_selector_with_name(selector, MatchOp::Regex, ".+:count_1[mh]");
    for labels in list_series(engine, &rollups, from, to).await? {
        let (name, key) = key_of(labels)?;
        let Some((base, tier)) = RollupTier::of(&name) else {
            continue;
        };
        let key = SeriesKey::new(base, key.owned_labels())?;
        if selector.matches(&key) {
            let held = out.entry(key).or_default();
            if !held.tiers.contains(&tier) {
                held.tiers.push(tier);
                held.tiers.sort();
            }
        }
    }
    Ok(out)
}

/// Splits an engine's label set into its metric name and a key of that name.
fn key_of(mut labels: BTreeMap<String, String>) -> Result<(String, SeriesKey), WebError> {
    let name = labels.remove("__name__").unwrap_or_default();
    let key = SeriesKey::new(name.clone(), labels)
        .map_err(|e| WebError::Unavailable(format!("the remote storage's series: {e}")))?;
    Ok((name, key))
}

async fn engine_query_step(
    engine: &Engine,
    selector: &Selector,
    from: i64,
    to: i64,
    step: i64,
    aggregation: Aggregation,
) -> Result<Vec<SeriesPoints>, WebError> {
    if step <= 0 {
        return Err(WebError::BadRequest("step must be positive".into()));
    }
    let first = outpost_storage::bucket_start(from, step);
    let last = outpost_storage::bucket_start(to, step);
    let held = engine_series(engine, selector, from, last.saturating_add(step - 1)).await?;
    // One query per metric name: engines drop the name from a function's result, and two
    // names with the same other labels would then collide.
    let mut names: BTreeMap<&str, Held> = BTreeMap::new();
    for (key, where_held) in &held {
        let entry = names.entry(key.name()).or_default();
        entry.raw |= where_held.raw;
        for tier in &where_held.tiers {
            if !entry.tiers.contains(tier) {
                entry.tiers.push(*tier);
            }
        }
    }
    let mut merged: BTreeMap<SeriesKey, BTreeMap<i64, f64>> = BTreeMap::new();
    for (name, where_held) in names {
        let mut sources: Vec<Option<RollupTier>> = Vec::new();
        if where_held.raw {
            sources.push(None);
        }
        // Finer first: where two answer a bucket, the finer one stays. A minute step cannot
        // be cut from hours.
        let mut tiers = where_held.tiers.clone();
        tiers.sort();
        for tier in tiers {
            if step % tier.width() == 0 {
                sources.push(Some(tier));
            }
        }
        for source in sources {
            let found = engine_points(
                engine,
                selector,
                name,
                source,
                first,
                last,
                step,
                aggregation,
            )
            .await?;
            for (key, points) in found {
                let buckets = merged.entry(key).or_default();
                for (bucket, value) in points {
                    buckets.entry(bucket).or_insert(value);
                }
            }
        }
    }
    Ok(merged
        .into_iter()
        .filter(|(_, points)| !points.is_empty())
        .map(|(series, points)| SeriesPoints {
            series,
            points: points.into_iter().collect(),
        })
        .collect())
}

/// The points of one metric name's series, from raw samples (`tier` None) or a rollup tier.
#[allow(clippy::too_many_arguments)] // one query's coordinates, each used once
async fn engine_points(
    engine: &Engine,
    selector: &Selector,
    name: &str,
    tier: Option<RollupTier>,
    first: i64,
    last: i64,
    step: i64,
    aggregation: Aggregation,
) -> Result<Vec<(SeriesKey, Vec<(i64, f64)>)>, WebError> {
    let figure = |figure: &str| {
        let series = match tier {
            None => name.to_string(),
            Some(tier) => format!("{name}:{figure}_{}", tier.suffix()),
        };
        promql_selector_with_name(selector, MatchOp::Equal, &series)
    };
    // A rate is worked out here from each bucket's last value and the one before, as the
    // store works it out from its tiers, so that both read alike; the bucket before the first
    // gives the first one its predecessor.
    let (sum, count) = (figure("sum"), figure("count"));
    let (expression, from): (Expression, i64) = match (aggregation, tier) {
        (Aggregation::Rate, _) => {
            let last = figure("last");
            (
                Box::new(move |window| format!("last_over_time({last}{window})")),
                first.saturating_sub(step),
            )
        }
        (Aggregation::Avg, Some(_)) => (
            Box::new(move |window| {
                format!("sum_over_time({sum}{window}) / sum_over_time({count}{window})")
            }),
            first,
        ),
        (aggregation, _) => {
            let (function, figure_name) = match aggregation {
                Aggregation::Avg => ("avg_over_time", "sum"),
                Aggregation::Min => ("min_over_time", "min"),
                Aggregation::Max => ("max_over_time", "max"),
                Aggregation::Sum => ("sum_over_time", "sum"),
                // A rollup's count sums; raw samples are counted.
                Aggregation::Count if tier.is_some() => ("sum_over_time", "count"),
                Aggregation::Count => ("count_over_time", "count"),
                Aggregation::Last | Aggregation::Rate => ("last_over_time", "last"),
            };
            let selector = figure(figure_name);
            (
                Box::new(move |window| format!("{function}({selector}{window})")),
                first,
            )
        }
    };
    let mut out = Vec::new();
    for (labels, mut points) in engine.evaluate(&expression, from, last, step).await? {
        let labels = labels.into_iter().filter(|(label, _)| label != "__name__");
        let key = SeriesKey::new(name, labels)
            .map_err(|e| WebError::Unavailable(format!("the remote storage's answer: {e}")))?;
        if aggregation == Aggregation::Rate {
            points = outpost_storage::rate_per_bucket(&points, step);
            points.retain(|(bucket, _)| *bucket >= first);
        }
        out.push((key, points));
    }
    Ok(out)
}

/// How long after a bucket ends a range query may answer it (see `Engine::evaluate`).
const SETTLED_MS: i64 = 5_000;

/// A PromQL expression of the window its range functions read (`[10000ms] offset 1ms`).
type Expression = Box<dyn Fn(&str) -> String + Send + Sync>;

impl Engine {
    /// `expression` for every bucket `b` from `first` to `last`: each result series' labels
    /// and its points at their bucket starts. Buckets that ended `SETTLED_MS` ago are one range
    /// query, each over `[step] offset 1ms` at `b + step`: the window `(b - 1, b + step - 1]`
    /// holds exactly the bucket's milliseconds. Later ones, up to the bucket that holds now,
    /// are instant queries pinned with `@` to the same windows: an engine evaluates nothing
    /// past its present, and VictoriaMetrics answers a range query's points of the last
    /// seconds from a window moved back (to a whole second, or to the step before). Buckets
    /// after now hold nothing yet.
    async fn evaluate(
        &self,
        expression: &(dyn Fn(&str) -> String + Send + Sync),
        first: i64,
        last: i64,
        step: i64,
    ) -> Result<Vec<Answered>, WebError> {
        let mut out: BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> = BTreeMap::new();
        let current = outpost_storage::bucket_start(self.now_ms, step);
        let settled = outpost_storage::bucket_start(self.now_ms - SETTLED_MS, step) - step;
        let complete = last.min(settled);
        if complete >= first {
            let window = format!("[{step}ms] offset 1ms");
            for (labels, points) in
                range_query(self, &expression(&window), first, complete, step).await?
            {
                out.entry(labels).or_default().extend(points);
            }
        }
        let mut bucket = first.max(complete.saturating_add(step));
        while bucket <= last.min(current) {
            let end = bucket.saturating_add(step - 1);
            let window = format!("[{step}ms] @ {}", seconds(end));
            for (labels, value) in instant_query(self, &expression(&window), self.now_ms).await? {
                out.entry(labels).or_default().push((bucket, value));
            }
            bucket = bucket.saturating_add(step);
        }
        Ok(out.into_iter().collect())
    }
}

/// The selector in PromQL, its values quoted as PromQL reads them; with `name`, the metric
/// name matchers replaced by `__name__ <op> name`.
fn promql_selector(selector: &Selector, name: Option<(MatchOp, &str)>) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some((op, name)) = name {
        parts.push(format!("__name__{op}{}", quoted(name)));
    }
    for (label, op, value) in selector.matchers() {
        if name.is_some() && label == "__name__" {
            continue;
        }
        parts.push(format!("{label}{op}{}", quoted(value)));
    }
    format!("{{{}}}", parts.join(","))
}

fn promql_selector_with_name(selector: &Selector, op: MatchOp, name: &str) -> String {
    promql_selector(selector, Some((op, name)))
}

/// A PromQL string literal holding `value` exactly.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Milliseconds as the API's float seconds.
fn seconds(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

/// `expression` evaluated at `b + step` for every bucket `b` from `first` to `last`, each
/// point moved to its `b`.
async fn range_query(
    engine: &Engine,
    expression: &str,
    first: i64,
    last: i64,
    step: i64,
) -> Result<Vec<Answered>, WebError> {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", expression)
        .append_pair("start", &seconds(first.saturating_add(step)))
        .append_pair("end", &seconds(last.saturating_add(step)))
        .append_pair("step", &seconds(step))
        // VictoriaMetrics caches range answers and would not see a device's backfill older
        // than its cache offset; it also moves the points of uncached answers of 50 points
        // or more. Other engines ignore the parameter.
        .append_pair("nocache", "1")
        .finish();
    let data = ask(engine, "/api/v1/query_range", form).await?;
    parse_matrix(&data, step)
}

/// `expression` at `at`: each result series' labels and value.
async fn instant_query(
    engine: &Engine,
    expression: &str,
    at: i64,
) -> Result<Vec<Labelled>, WebError> {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", expression)
        .append_pair("time", &seconds(at))
        .finish();
    let data = ask(engine, "/api/v1/query", form).await?;
    parse_vector(&data)
}

/// A `query` answer's series: labels and value.
fn parse_vector(data: &Value) -> Result<Vec<Labelled>, WebError> {
    let result = data
        .get("result")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("query has no result list"))?;
    result
        .iter()
        .map(|series| {
            let labels = labels_of(series.get("metric"))?;
            let (_, value) = point_of(series.get("value"))?;
            Ok((labels, value))
        })
        .collect()
}

/// A `[time, "value"]` pair: milliseconds and the value.
fn point_of(pair: Option<&Value>) -> Result<(i64, f64), WebError> {
    let (time, value) = match pair.and_then(Value::as_array).map(Vec::as_slice) {
        Some([time, value]) => (time, value),
        _ => return Err(malformed("a point is not [time, value]")),
    };
    let time = time
        .as_f64()
        .ok_or_else(|| malformed("a point's time is not a number"))?;
    let value = value
        .as_str()
        .and_then(|text| text.parse::<f64>().ok())
        .ok_or_else(|| malformed("a point's value is not a number in a string"))?;
    Ok(((time * 1000.0).round() as i64, value))
}

/// A `query_range` answer's series: labels, and points moved from `b + step` to `b`.
fn parse_matrix(data: &Value, step: i64) -> Result<Vec<Answered>, WebError> {
    let result = data
        .get("result")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("query_range has no result list"))?;
    let mut out = Vec::with_capacity(result.len());
    for series in result {
        let labels = labels_of(series.get("metric"))?;
        let values = series
            .get("values")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("a query_range series has no values"))?;
        let mut points = Vec::with_capacity(values.len());
        for pair in values {
            let (at, value) = point_of(Some(pair))?;
            points.push((at.saturating_sub(step), value));
        }
        out.push((labels, points));
    }
    Ok(out)
}

/// The label sets the engine holds for `selector` between `from` and `to`.
async fn list_series(
    engine: &Engine,
    selector: &str,
    from: i64,
    to: i64,
) -> Result<Vec<BTreeMap<String, String>>, WebError> {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("match[]", selector)
        // VictoriaMetrics reads a start of 0 as none given, and then lists the last day only.
        .append_pair("start", &seconds(from.max(1)))
        .append_pair("end", &seconds(to))
        .finish();
    let data = ask(engine, "/api/v1/series", form).await?;
    data.as_array()
        .ok_or_else(|| malformed("series is not a list"))?
        .iter()
        .map(|labels| labels_of(Some(labels)))
        .collect()
}

fn labels_of(labels: Option<&Value>) -> Result<BTreeMap<String, String>, WebError> {
    labels
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("a series' labels are not an object"))?
        .iter()
        .map(|(label, value)| {
            let value = value
                .as_str()
                .ok_or_else(|| malformed("a label value is not a string"))?;
            Ok((label.clone(), value.to_string()))
        })
        .collect()
}

fn malformed(what: &str) -> WebError {
    WebError::Unavailable(format!("the remote storage answered oddly: {what}"))
}

/// POSTs a form to the engine and returns its `data`, or the engine's error.
async fn ask(engine: &Engine, path: &str, form: String) -> Result<Value, WebError> {
    let (status, body) = engine
        .api
        .forward(path, Some(form.into()))
        .await
        .map_err(|e| WebError::Unavailable(format!("the remote storage's query API: {e}")))?;
    parse_answer(status, &body)
}

/// The `data` of an answer in Prometheus' shape, or its error: a 400 or 422 is about the
/// query (a limit the engine enforces, say), anything else is the engine's trouble.
fn parse_answer(status: u16, body: &[u8]) -> Result<Value, WebError> {
    let answer: Value = serde_json::from_slice(body).map_err(|e| {
        WebError::Unavailable(format!(
            "the remote storage's query API answered {status} with no JSON: {e}"
        ))
    })?;
    if answer.get("status").and_then(Value::as_str) == Some("success") {
        return Ok(answer.get("data").cloned().unwrap_or(Value::Null));
    }
    let error = answer
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("no reason given");
    let message = format!("the remote storage refused the query ({status}): {error}");
    Err(match status {
        400 | 422 => WebError::BadRequest(message),
        _ => WebError::Unavailable(message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_series_names_are_told_from_others() {
        assert_eq!(
            RollupTier::of("node_load1:count_1h"),
            Some(("node_load1", RollupTier::Hour))
        );
        assert_eq!(
            RollupTier::of("a:b:max_1m"),
            Some(("a:b", RollupTier::Minute))
        );
        for other in [
            "node_load1",
            "job:rate_5m",
            ":count_1m",
            "x:count_5m",
            "x:avg_1m",
        ] {
            assert_eq!(RollupTier::of(other), None, "{other}");
        }
    }

    #[test]
    fn selectors_reach_promql_with_every_value_intact() {
        let selector = Selector::parse(r#"{__name__=~"a|b",path="C:\\x \"y\"",cpu!="total"}"#)
            .unwrap()
            .and_equal("instance", "dev-1");
        assert_eq!(
            promql_selector(&selector, None),
            r#"{__name__=~"a|b",path="C:\\x \"y\"",cpu!="total",instance="dev-1"}"#
        );
        assert_eq!(
            promql_selector_with_name(&selector, MatchOp::Equal, "a:sum_1m"),
            r#"{__name__="a:sum_1m",path="C:\\x \"y\"",cpu!="total",instance="dev-1"}"#
        );
    }

    #[test]
    fn times_are_float_seconds() {
        assert_eq!(seconds(1_700_000_000_123), "1700000000.123");
        assert_eq!(seconds(60_000), "60.000");
        assert_eq!(seconds(-1_500), "-1.500");
        assert_eq!(seconds(i64::MIN), "-9223372036854775.808");
    }

    /// Bodies in the shapes Prometheus documents (and VictoriaMetrics gives).
    #[test]
    fn engine_errors_are_told_apart_from_bad_queries() {
        let refused = br#"{"status":"error","errorType":"execution","error":"too many series"}"#;
        let error = parse_answer(422, refused).unwrap_err();
        assert!(matches!(&error, WebError::BadRequest(m) if m.contains("too many series")));
        let error = parse_answer(503, br#"{"status":"error","error":"shutting down"}"#);
        assert!(matches!(error, Err(WebError::Unavailable(_))));
        let error = parse_answer(502, b"<html>bad gateway</html>").unwrap_err();
        assert!(matches!(&error, WebError::Unavailable(m) if m.contains("502")));
        let data = parse_answer(200, br#"{"status":"success","data":[{"__name__":"up"}]}"#);
        assert_eq!(data.unwrap()[0]["__name__"], "up");
        let odd = serde_json::json!({"result": [{"metric": {}, "values": [[1, 2]]}]});
        let error = parse_matrix(&odd, 1000).unwrap_err();
        assert!(matches!(&error, WebError::Unavailable(m) if m.contains("value")));
        let odd = serde_json::json!({"result": [{"metric": {"a": 1}, "values": []}]});
        assert!(parse_matrix(&odd, 1000).is_err());
        assert!(parse_matrix(&serde_json::json!([]), 1000).is_err());
    }

    #[test]
    fn points_land_on_their_bucket_starts() {
        let data: Value = serde_json::from_str(
            r#"{"resultType":"matrix","result":[
                {"metric":{"instance":"a"},"values":[[120,"1.5"],[180.001,"NaN"],[240,"+Inf"]]}]}"#,
        )
        .unwrap();
        let found = parse_matrix(&data, 60_000).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0["instance"], "a");
        let points = &found[0].1;
        assert_eq!(points[0], (60_000, 1.5));
        assert_eq!(points[1].0, 120_001);
        assert!(points[1].1.is_nan());
        assert_eq!(points[2], (180_000, f64::INFINITY));
    }
}
