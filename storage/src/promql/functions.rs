//! PromQL's functions over float samples.

use std::collections::HashMap;

use promql_parser::parser::{Call, Expr};

use super::eval::{check_distinct, merge_same_labels, Evaluator, Grid, RangeArg, Val};
use super::labels::Labels;
use super::{Bucket, Error, Result, Series};
use crate::series::is_label_name;

/// Functions over a range vector, each given one series' window at one step.
const RANGE_FUNCTIONS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "predict_linear",
    "resets",
    "changes",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "present_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "absent_over_time",
    "holt_winters",
    "double_exponential_smoothing",
];

type ValueFunction = fn(f64) -> f64;

/// Functions of one sample's value.
const MATH: &[(&str, ValueFunction)] = &[
    ("abs", f64::abs),
    ("ceil", f64::ceil),
    ("floor", f64::floor),
    ("exp", f64::exp),
    ("sqrt", f64::sqrt),
    ("ln", f64::ln),
    ("log2", f64::log2),
    ("log10", f64::log10),
    ("sin", f64::sin),
    ("cos", f64::cos),
    ("tan", f64::tan),
    ("asin", f64::asin),
    ("acos", f64::acos),
    ("atan", f64::atan),
    ("sinh", f64::sinh),
    ("cosh", f64::cosh),
    ("tanh", f64::tanh),
    ("asinh", f64::asinh),
    ("acosh", f64::acosh),
    ("atanh", f64::atanh),
    ("rad", |v| v * std::f64::consts::PI / 180.0),
    ("deg", |v| v * 180.0 / std::f64::consts::PI),
    ("sgn", |v| {
        if v < 0.0 {
            -1.0
        } else if v > 0.0 {
            1.0
        } else {
            v
        }
    }),
];

/// Calendar fields of a Unix time in UTC.
const DATES: &[&str] = &[
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "hour",
    "minute",
    "month",
    "year",
];

const OTHERS: &[&str] = &[
    "time",
    "pi",
    "timestamp",
    "vector",
    "scalar",
    "absent",
    "sort",
    "sort_desc",
    "label_replace",
    "label_join",
    "histogram_quantile",
    "histogram_count",
    "histogram_sum",
    "histogram_fraction",
    "clamp",
    "clamp_min",
    "clamp_max",
    "round",
];

pub(super) fn supported(name: &str) -> bool {
    RANGE_FUNCTIONS.contains(&name)
        || DATES.contains(&name)
        || OTHERS.contains(&name)
        || MATH.iter().any(|(n, _)| *n == name)
}

fn unparen(mut expr: &Expr) -> &Expr {
    while let Expr::Paren(p) = expr {
        expr = &p.expr;
    }
    expr
}

pub(super) fn call(ev: &mut Evaluator, call: &Call, grid: Grid) -> Result<Val> {
    let name = call.func.name;
    let args: Vec<&Expr> = call.args.args.iter().map(|a| unparen(a)).collect();
    if RANGE_FUNCTIONS.contains(&name) {
        return range_function(ev, name, &args, grid);
    }
    if let Some((_, f)) = MATH.iter().find(|(n, _)| *n == name) {
        let series = vector_arg(ev, args[0], grid)?;
        return map_values(series, |_, v| Some(f(v)));
    }
    if DATES.contains(&name) {
        return date_function(ev, name, &args, grid);
    }
    match name {
        "time" => Ok(Val::Scalar(
            grid.times().map(|t| t as f64 / 1000.0).collect(),
        )),
        "pi" => Ok(Val::Scalar(vec![std::f64::consts::PI; grid.len()])),
        "timestamp" => {
            let series = match args[0] {
                Expr::VectorSelector(vs) => ev.vector_selector(vs, grid, true)?,
                other => {
                    let mut series = vector_arg(ev, other, grid)?;
                    for s in &mut series {
                        for point in &mut s.points {
                            point.1 = point.0 as f64 / 1000.0;
                        }
                    }
                    series
                }
            };
            map_values(series, |_, v| Some(v))
        }
        "vector" => {
            let values = scalar_arg(ev, args[0], grid)?;
            Ok(Val::Vector(vec![Series {
                labels: Labels::default(),
                points: grid.times().zip(values).collect(),
            }]))
        }
        "scalar" => {
            let series = vector_arg(ev, args[0], grid)?;
            let mut counts = vec![0usize; grid.len()];
            let mut values = vec![f64::NAN; grid.len()];
            for s in &series {
                for &(t, v) in &s.points {
                    let i = grid.index(t);
                    counts[i] += 1;
                    values[i] = v;
                }
            }
            for (value, count) in values.iter_mut().zip(counts) {
                if count != 1 {
                    *value = f64::NAN;
                }
            }
            Ok(Val::Scalar(values))
        }
        "absent" => {
            let series = vector_arg(ev, args[0], grid)?;
            let mut present = vec![false; grid.len()];
            for s in &series {
                for &(t, _) in &s.points {
                    present[grid.index(t)] = true;
                }
            }
            let points: Vec<(i64, f64)> = grid
                .times()
                .zip(present)
                .filter(|(_, p)| !p)
                .map(|(t, _)| (t, 1.0))
                .collect();
            Ok(Val::Vector(one_series(absent_labels(args[0]), points)))
        }
        "sort" | "sort_desc" => Ok(Val::Vector(vector_arg(ev, args[0], grid)?)),
        "label_replace" => label_replace(ev, &args, grid),
        "label_join" => label_join(ev, &args, grid),
        "histogram_quantile" => histogram_quantile(ev, &args, grid),
        // Native histograms only: float series give nothing.
        "histogram_count" | "histogram_sum" | "histogram_fraction" => {
            for arg in &args {
                ev.eval(arg, grid)?;
            }
            Ok(Val::Vector(Vec::new()))
        }
        "clamp" | "clamp_min" | "clamp_max" | "round" => clamp_or_round(ev, name, &args, grid),
        other => Err(Error::BadData(format!("unknown function {other}()"))),
    }
}

fn one_series(labels: Labels, points: Vec<(i64, f64)>) -> Vec<Series> {
    if points.is_empty() {
        Vec::new()
    } else {
        vec![Series { labels, points }]
    }
}

pub(super) fn vector_arg(ev: &mut Evaluator, expr: &Expr, grid: Grid) -> Result<Vec<Series>> {
    match ev.eval(expr, grid)? {
        Val::Vector(series) => Ok(series),
        _ => Err(Error::BadData(format!(
            "expected an instant vector: {expr}"
        ))),
    }
}

pub(super) fn scalar_arg(ev: &mut Evaluator, expr: &Expr, grid: Grid) -> Result<Vec<f64>> {
    match ev.eval(expr, grid)? {
        Val::Scalar(values) => Ok(values),
        _ => Err(Error::BadData(format!("expected a scalar: {expr}"))),
    }
}

pub(super) fn string_arg(expr: &Expr) -> Result<&str> {
    match unparen(expr) {
        Expr::StringLiteral(s) => Ok(&s.val),
        other => Err(Error::BadData(format!("expected a string: {other}"))),
    }
}

/// Applies `f` (given the step's index) to every point, dropping the metric name; a point
/// for which `f` gives nothing is left out.
fn map_values(series: Vec<Series>, mut f: impl FnMut(usize, f64) -> Option<f64>) -> Result<Val> {
    let mapped = series
        .into_iter()
        .map(|s| {
            let mut i = 0;
            let points = s
                .points
                .into_iter()
                .filter_map(|(t, v)| {
                    i += 1;
                    f(i - 1, v).map(|v| (t, v))
                })
                .collect();
            Series {
                labels: s.labels.without_name(),
                points,
            }
        })
        .collect();
    Ok(Val::Vector(merge_same_labels(mapped)?))
}

fn clamp_or_round(ev: &mut Evaluator, name: &str, args: &[&Expr], grid: Grid) -> Result<Val> {
    let series = vector_arg(ev, args[0], grid)?;
    let mut scalars = Vec::new();
    for arg in &args[1..] {
        scalars.push(scalar_arg(ev, arg, grid)?);
    }
    let at = |series: &Series, i: usize| grid.index(series.points[i].0);
    let mut out = Vec::with_capacity(series.len());
    for s in series {
        let mut points = Vec::with_capacity(s.points.len());
        for (i, &(t, v)) in s.points.iter().enumerate() {
            let step = at(&s, i);
            let value = match name {
                "clamp" => {
                    let (min, max) = (scalars[0][step], scalars[1][step]);
                    if max < min {
                        continue;
                    }
                    go_max(min, go_min(max, v))
                }
                "clamp_min" => go_max(scalars[0][step], v),
                "clamp_max" => go_min(scalars[0][step], v),
                _ => {
                    let to_nearest = scalars.first().map_or(1.0, |s| s[step]);
                    let inverse = 1.0 / to_nearest;
                    (v * inverse + 0.5).floor() / inverse
                }
            };
            points.push((t, value));
        }
        out.push(Series {
            labels: s.labels.without_name(),
            points,
        });
    }
    Ok(Val::Vector(merge_same_labels(out)?))
}

/// Go's `math.Max`: NaN if either is NaN.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn date_function(ev: &mut Evaluator, name: &str, args: &[&Expr], grid: Grid) -> Result<Val> {
    let field = |seconds: f64| -> f64 {
        if !seconds.is_finite() {
            return f64::NAN;
        }
        let Ok(time) = jiff::Timestamp::from_second(seconds.trunc() as i64) else {
            return f64::NAN;
        };
        let date = time.to_zoned(jiff::tz::TimeZone::UTC);
        f64::from(match name {
            "day_of_month" => i32::from(date.day()),
            "day_of_week" => i32::from(date.weekday().to_sunday_zero_offset()),
            "day_of_year" => i32::from(date.day_of_year()),
            "days_in_month" => i32::from(date.days_in_month()),
            "hour" => i32::from(date.hour()),
            "minute" => i32::from(date.minute()),
            "month" => i32::from(date.month()),
            _ => i32::from(date.year()),
        })
    };
    match args.first() {
        None => {
            let points = grid
                .times()
                .map(|t| (t, field((t / 1000) as f64)))
                .collect();
            Ok(Val::Vector(vec![Series {
                labels: Labels::default(),
                points,
            }]))
        }
        Some(arg) => {
            let series = vector_arg(ev, arg, grid)?;
            map_values(series, |_, v| Some(field(v)))
        }
    }
}

/// The labels `absent` gives: those its selector pins with `=` (a label pinned twice, or
/// also matched otherwise, is left out, as Prometheus does).
fn absent_labels(expr: &Expr) -> Labels {
    let vs = match expr {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::default(),
    };
    let mut labels = Labels::default();
    let mut seen = std::collections::HashSet::new();
    for m in &vs.matchers.matchers {
        if m.name == super::labels::METRIC_NAME {
            continue;
        }
        if m.op == promql_parser::label::MatchOp::Equal && seen.insert(m.name.clone()) {
            labels.set(&m.name, &m.value);
        } else {
            labels.set(&m.name, "");
        }
    }
    labels
}

/// Renames every series with `relabel` (computed once per series), keeping the metric name.
fn relabel(series: Vec<Series>, mut relabel: impl FnMut(&Labels) -> Labels) -> Result<Val> {
    let renamed = series
        .into_iter()
        .map(|s| Series {
            labels: relabel(&s.labels),
            points: s.points,
        })
        .collect();
    Ok(Val::Vector(merge_same_labels(renamed)?))
}

fn label_replace(ev: &mut Evaluator, args: &[&Expr], grid: Grid) -> Result<Val> {
    let series = vector_arg(ev, args[0], grid)?;
    let (dst, replacement, src, pattern) = (
        string_arg(args[1])?,
        string_arg(args[2])?,
        string_arg(args[3])?,
        string_arg(args[4])?,
    );
    let regex = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|_| {
        Error::Execution(format!(
            "invalid regular expression in label_replace(): {pattern}"
        ))
    })?;
    if !is_label_name(dst) {
        return Err(Error::Execution(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    relabel(series, |labels| {
        let Some(captures) = regex.captures(labels.get(src)) else {
            return labels.clone();
        };
        let mut value = String::new();
        captures.expand(replacement, &mut value);
        let mut out = labels.clone();
        out.set(dst, &value);
        out
    })
}

fn label_join(ev: &mut Evaluator, args: &[&Expr], grid: Grid) -> Result<Val> {
    let series = vector_arg(ev, args[0], grid)?;
    let dst = string_arg(args[1])?;
    let separator = string_arg(args[2])?;
    let mut sources = Vec::new();
    for arg in &args[3..] {
        let src = string_arg(arg)?;
        if !is_label_name(src) {
            return Err(Error::Execution(format!(
                "invalid source label name in label_join(): {src}"
            )));
        }
        sources.push(src);
    }
    if !is_label_name(dst) {
        return Err(Error::Execution(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    relabel(series, |labels| {
        let joined: Vec<&str> = sources.iter().map(|s| labels.get(s)).collect();
        let mut out = labels.clone();
        out.set(dst, &joined.join(separator));
        out
    })
}

fn histogram_quantile(ev: &mut Evaluator, args: &[&Expr], grid: Grid) -> Result<Val> {
    let phi = scalar_arg(ev, args[0], grid)?;
    let series = vector_arg(ev, args[1], grid)?;
    // Buckets group by every label but `le` (the name included); the result drops both.
    let mut groups: HashMap<Labels, usize> = HashMap::new();
    let mut members: Vec<(usize, f64)> = Vec::new();
    let mut group_labels: Vec<Labels> = Vec::new();
    for s in &series {
        // Go's ParseFloat takes what `le` holds: `+Inf`, `0.5`, `1e3`.
        let Ok(bound) = s.labels.get("le").parse::<f64>() else {
            members.push((usize::MAX, 0.0));
            continue;
        };
        let key = s.labels.without(&["le"]);
        let next = groups.len();
        let group = *groups.entry(key).or_insert(next);
        if group == group_labels.len() {
            group_labels.push(s.labels.without(&["le", super::labels::METRIC_NAME]));
        }
        members.push((group, bound));
    }
    let mut out: Vec<Series> = group_labels
        .into_iter()
        .map(|labels| Series {
            labels,
            points: Vec::new(),
        })
        .collect();
    let mut cursors = vec![0usize; series.len()];
    let mut buckets: Vec<Vec<(f64, f64)>> = vec![Vec::new(); out.len()];
    for (step, ts) in grid.times().enumerate() {
        for b in &mut buckets {
            b.clear();
        }
        for (i, s) in series.iter().enumerate() {
            let (group, bound) = members[i];
            if group == usize::MAX {
                continue;
            }
            if let Some(&(t, v)) = s.points.get(cursors[i]) {
                if t == ts {
                    cursors[i] += 1;
                    buckets[group].push((bound, v));
                }
            }
        }
        for (group, b) in buckets.iter_mut().enumerate() {
            if !b.is_empty() {
                out[group].points.push((ts, bucket_quantile(phi[step], b)));
            }
        }
    }
    Ok(Val::Vector(merge_same_labels(out)?))
}

/// The φ-quantile of classic histogram buckets (upper bound, cumulative count), interpolated
/// linearly within a bucket, as Prometheus does.
fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Buckets with the same bound add up.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(bound, count) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == bound => last.1 += count,
            _ => merged.push((bound, count)),
        }
    }
    // Counts never fall with a rising bound (the "envelope" Prometheus takes).
    let mut max = merged[0].1;
    for b in merged.iter_mut().skip(1) {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let last = merged.len() - 1;
    let b = merged[..last].partition_point(|bucket| bucket.1 < rank);
    if b == last {
        return merged[last - 1].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let (mut start, end, mut count) = (0.0, merged[b].0, merged[b].1);
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

fn range_function(ev: &mut Evaluator, name: &str, args: &[&Expr], grid: Grid) -> Result<Val> {
    let matrix_at = args
        .iter()
        .position(|a| matches!(a, Expr::MatrixSelector(_) | Expr::Subquery(_)))
        .ok_or_else(|| Error::BadData(format!("{name}() needs a range vector")))?;
    let mut scalars: Vec<Vec<f64>> = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        if i != matrix_at {
            scalars.push(scalar_arg(ev, arg, grid)?);
        }
    }
    let range = match ev.eval(args[matrix_at], grid)? {
        Val::Range(range) => range,
        _ => return Err(Error::BadData(format!("{name}() needs a range vector"))),
    };
    let mut out = Vec::with_capacity(range.series.len());
    for (i, series) in range.series.iter().enumerate() {
        ev.check_deadline()?;
        let mut points = Vec::new();
        for (step, ts) in grid.times().enumerate() {
            let window = range.window(series, ts);
            let buckets = range.buckets_in(i, ts);
            let extra = |k: usize| scalars[k][step];
            let value = if !buckets.is_empty() {
                let (value, exact) = over_buckets(name, window, buckets, &range, ts, extra)?;
                if !exact {
                    ev.approximate();
                }
                value
            } else if window.is_empty() {
                continue;
            } else {
                over_window(name, window, &range, ts, extra)?
            };
            if let Some(v) = value {
                points.push((ts, v));
            }
        }
        ev.hold(points.len())?;
        if !points.is_empty() {
            let labels = if name == "last_over_time" {
                series.labels.clone()
            } else {
                series.labels.without_name()
            };
            out.push(Series { labels, points });
        }
    }
    if name == "absent_over_time" {
        return Ok(Val::Vector(absent_over_time(&out, args[matrix_at], grid)));
    }
    check_distinct(&out)?;
    Ok(Val::Vector(out))
}

/// A range function over a window that reaches back into rollups (`buckets`, all before
/// `raw`), and whether the answer is the one the raw samples would have given: aggregates
/// over whole buckets are; anything that needs the samples themselves is approximated from
/// each bucket's last value at its end.
fn over_buckets(
    name: &str,
    raw: &[(i64, f64)],
    buckets: &[Bucket],
    range: &RangeArg,
    ts: i64,
    extra: impl Fn(usize) -> f64,
) -> Result<(Option<f64>, bool)> {
    let (start, end) = range.bounds(ts);
    let whole = buckets.iter().all(|b| b.start >= start && b.end() <= end);
    let count = buckets.iter().map(|b| b.rollup.count as f64).sum::<f64>() + raw.len() as f64;
    let sum = || {
        let (sum, c) = buckets
            .iter()
            .map(|b| b.rollup.sum)
            .chain(raw.iter().map(|(_, v)| *v))
            .fold((0.0, 0.0), |(s, c), v| kahan_add(v, s, c));
        if sum.is_infinite() {
            sum
        } else {
            sum + c
        }
    };
    let extreme = |pick: fn(f64, f64) -> bool, of: fn(&Bucket) -> f64| {
        buckets
            .iter()
            .map(of)
            .chain(raw.iter().map(|(_, v)| *v))
            .reduce(|m, v| if pick(v, m) || m.is_nan() { v } else { m })
    };
    Ok(match name {
        "count_over_time" => (Some(count), whole),
        "sum_over_time" => (Some(sum()), whole),
        "avg_over_time" => (Some(sum() / count), whole),
        "min_over_time" => (extreme(|v, m| v < m, |b| b.rollup.min), whole),
        "max_over_time" => (extreme(|v, m| v > m, |b| b.rollup.max), whole),
        "present_over_time" | "absent_over_time" => (Some(1.0), true),
        "last_over_time" => match raw.last() {
            Some((_, v)) => (Some(*v), true),
            None => {
                let last = buckets[buckets.len() - 1];
                (Some(last.rollup.last), last.end() <= end)
            }
        },
        _ => {
            let mut points: Vec<(i64, f64)> = buckets
                .iter()
                .map(|b| (b.end().min(end), b.rollup.last))
                .collect();
            points.extend_from_slice(raw);
            (over_window(name, &points, range, ts, extra)?, false)
        }
    })
}

/// One series at one step: `1` where no series had a sample in the window.
fn absent_over_time(present: &[Series], arg: &Expr, grid: Grid) -> Vec<Series> {
    let mut found = vec![false; grid.len()];
    for s in present {
        for &(t, _) in &s.points {
            found[grid.index(t)] = true;
        }
    }
    let points = grid
        .times()
        .zip(found)
        .filter(|(_, f)| !f)
        .map(|(t, _)| (t, 1.0))
        .collect();
    let labels = match arg {
        Expr::MatrixSelector(_) => absent_labels(arg),
        _ => Labels::default(),
    };
    one_series(labels, points)
}

/// The value of a range function over one window (not empty), or nothing.
fn over_window(
    name: &str,
    window: &[(i64, f64)],
    range: &RangeArg,
    ts: i64,
    extra: impl Fn(usize) -> f64,
) -> Result<Option<f64>> {
    let values = || window.iter().map(|(_, v)| *v);
    let v = match name {
        "rate" => return Ok(extrapolated_rate(window, range, ts, true, true)),
        "increase" => return Ok(extrapolated_rate(window, range, ts, true, false)),
        "delta" => return Ok(extrapolated_rate(window, range, ts, false, false)),
        "irate" => return Ok(instant_value(window, true)),
        "idelta" => return Ok(instant_value(window, false)),
        "deriv" => {
            if window.len() < 2 {
                return Ok(None);
            }
            linear_regression(window, window[0].0).0
        }
        "predict_linear" => {
            if window.len() < 2 {
                return Ok(None);
            }
            let (slope, intercept) = linear_regression(window, ts);
            slope * extra(0) + intercept
        }
        "resets" => window.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64,
        "changes" => window
            .windows(2)
            .filter(|w| w[1].1 != w[0].1 && !(w[1].1.is_nan() && w[0].1.is_nan()))
            .count() as f64,
        "avg_over_time" => average(values()),
        "sum_over_time" => {
            let (sum, c) = values().fold((0.0, 0.0), |(s, c), v| kahan_add(v, s, c));
            if sum.is_infinite() {
                sum
            } else {
                sum + c
            }
        }
        "min_over_time" => {
            values().fold(window[0].1, |m, v| if v < m || m.is_nan() { v } else { m })
        }
        "max_over_time" => {
            values().fold(window[0].1, |m, v| if v > m || m.is_nan() { v } else { m })
        }
        "count_over_time" => window.len() as f64,
        "last_over_time" => window[window.len() - 1].1,
        "present_over_time" | "absent_over_time" => 1.0,
        "quantile_over_time" => {
            let mut sorted: Vec<f64> = values().collect();
            quantile(extra(0), &mut sorted)
        }
        "stddev_over_time" => variance(values()).sqrt(),
        "stdvar_over_time" => variance(values()),
        "holt_winters" | "double_exponential_smoothing" => {
            return holt_winters(window, extra(0), extra(1))
        }
        other => return Err(Error::BadData(format!("unknown function {other}()"))),
    };
    Ok(Some(v))
}

/// `rate`, `increase` and `delta`: the change over the window, corrected for counter resets
/// and extrapolated towards the window's edges as Prometheus does.
fn extrapolated_rate(
    window: &[(i64, f64)],
    range: &RangeArg,
    ts: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if window.len() < 2 {
        return None;
    }
    let range_end = range.at.unwrap_or(ts).saturating_sub(range.offset);
    let range_start = range_end.saturating_sub(range.range);
    let (first, last) = (window[0], window[window.len() - 1]);
    let mut result = last.1 - first.1;
    if is_counter {
        let mut previous = first.1;
        for &(_, v) in &window[1..] {
            if v < previous {
                result += previous;
            }
            previous = v;
        }
    }
    let mut to_start = (first.0 - range_start) as f64 / 1000.0;
    let to_end = (range_end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let average_gap = sampled / (window.len() - 1) as f64;
    if is_counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average_gap * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        average_gap / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        average_gap / 2.0
    };
    let mut factor = interval / sampled;
    if is_rate {
        factor /= range.range as f64 / 1000.0;
    }
    Some(result * factor)
}

fn instant_value(window: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if window.len() < 2 {
        return None;
    }
    let (previous, last) = (window[window.len() - 2], window[window.len() - 1]);
    let mut result = if is_rate && last.1 < previous.1 {
        last.1
    } else {
        last.1 - previous.1
    };
    let interval = last.0 - previous.0;
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

/// Neumaier's compensated sum, as Prometheus sums: returns the new sum and compensation.
pub(super) fn kahan_add(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

fn average(values: impl Iterator<Item = f64>) -> f64 {
    let (mut mean, mut count, mut c) = (0.0f64, 0.0f64, 0.0f64);
    for v in values {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_add(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() {
        mean
    } else {
        mean + c
    }
}

fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for v in values {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_add(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_add(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// Least squares over the window: the slope, and the line's value at `intercept_time`.
fn linear_regression(window: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let first_y = window[0].1;
    let mut constant_y = true;
    for (i, &(t, v)) in window.iter().enumerate() {
        if constant_y && i > 0 && v != first_y {
            constant_y = false;
        }
        n += 1.0;
        let x = (t - intercept_time) as f64 / 1e3;
        (sum_x, c_x) = kahan_add(x, sum_x, c_x);
        (sum_y, c_y) = kahan_add(v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_add(x * v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_add(x * x, sum_x2, c_x2);
    }
    if constant_y {
        if first_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, first_y);
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    (slope, sum_y / n - slope * sum_x / n)
}

/// The φ-quantile of `values`, interpolating between the two nearest ranks.
pub(super) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // NaN sorts first, as Prometheus' ordering puts it.
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.total_cmp(b),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

fn holt_winters(window: &[(i64, f64)], sf: f64, tf: f64) -> Result<Option<f64>> {
    if sf <= 0.0 || sf >= 1.0 {
        return Err(Error::Execution(format!(
            "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
        )));
    }
    if tf <= 0.0 || tf >= 1.0 {
        return Err(Error::Execution(format!(
            "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
        )));
    }
    if window.len() < 2 {
        return Ok(None);
    }
    let (mut s0, mut s1) = (0.0, window[0].1);
    let mut b = window[1].1 - window[0].1;
    for (i, &(_, v)) in window.iter().enumerate().skip(1) {
        let x = sf * v;
        b = if i == 1 {
            b
        } else {
            tf * (s1 - s0) + (1.0 - tf) * b
        };
        let y = (1.0 - sf) * (s1 + b);
        (s0, s1) = (s1, x + y);
    }
    Ok(Some(s1))
}
