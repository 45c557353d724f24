//! The evaluator: selectors, subqueries, the grid of steps, and the result types.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{AtModifier, Expr, Offset, VectorSelector};

use super::labels::{Labels, METRIC_NAME};
use super::{aggregate, binary, functions};
use super::{Answer, Bucket, Error, Options, Result, Sample, Series, Source, Value};

/// The instants an expression is evaluated at: `start`, `start + step`, ..., up to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Grid {
    pub start: i64,
    pub end: i64,
    pub step: i64,
}

impl Grid {
    pub fn len(&self) -> usize {
        if self.end < self.start {
            0
        } else {
            ((self.end - self.start) / self.step + 1) as usize
        }
    }

    pub fn times(&self) -> impl Iterator<Item = i64> {
        let grid = *self;
        (0..grid.len()).map(move |i| grid.start + i as i64 * grid.step)
    }

    pub fn index(&self, t: i64) -> usize {
        ((t - self.start) / self.step) as usize
    }
}

/// An evaluated expression over a grid.
pub(super) enum Val {
    /// An instant vector at every step: points lie on the grid's instants.
    Vector(Vec<Series>),
    /// One value per step.
    Scalar(Vec<f64>),
    Str(String),
    /// A range vector: the windows are cut per step by [`RangeArg::window`].
    Range(RangeArg),
}

/// A matrix selector's or subquery's series, and how to cut each step's window from them.
pub(super) struct RangeArg {
    pub series: Vec<Series>,
    /// Per series, the rollup buckets that stand in for raw samples aged out (before the
    /// first raw point); empty for a subquery.
    pub buckets: Vec<Vec<Bucket>>,
    pub range: i64,
    pub offset: i64,
    pub at: Option<i64>,
}

impl RangeArg {
    /// The first and last instant of the window that ends at step `ts`.
    pub fn bounds(&self, ts: i64) -> (i64, i64) {
        let end = self.at.unwrap_or(ts).saturating_sub(self.offset);
        (end.saturating_sub(self.range), end)
    }

    /// The points of `series` in the window that ends at step `ts`: `[end - range, end]`.
    pub fn window<'s>(&self, series: &'s Series, ts: i64) -> &'s [(i64, f64)] {
        let (start, end) = self.bounds(ts);
        let points = &series.points;
        let from = points.partition_point(|(t, _)| *t < start);
        let to = points.partition_point(|(t, _)| *t <= end);
        &points[from..to.max(from)]
    }

    /// The buckets of series `i` that overlap the window of step `ts`.
    pub fn buckets_in(&self, i: usize, ts: i64) -> &[Bucket] {
        let Some(buckets) = self.buckets.get(i) else {
            return &[];
        };
        let (start, end) = self.bounds(ts);
        let from = buckets.partition_point(|b| b.end() < start);
        let to = buckets.partition_point(|b| b.start <= end);
        &buckets[from..to.max(from)]
    }
}

/// What the answer says when rollups stood in for raw samples that had aged out.
pub(super) const APPROXIMATE: &str = "some raw samples had aged out of retention: values come \
     from the 1-minute and 1-hour rollups and are approximate (see docs/promql.md)";

/// Prometheus' staleness marker, which a scraped store may hold: no sample.
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN
}

pub(super) struct Evaluator<'a> {
    source: &'a dyn Source,
    pub options: &'a Options,
    deadline: Option<Instant>,
    /// What `@ start()` and `@ end()` mean.
    query_start: i64,
    query_end: i64,
    /// Samples read or computed so far, against `options.max_samples`.
    samples: usize,
    pub warnings: std::collections::BTreeSet<String>,
}

impl<'a> Evaluator<'a> {
    pub fn new(
        source: &'a dyn Source,
        options: &'a Options,
        deadline: Option<Instant>,
        query_start: i64,
        query_end: i64,
    ) -> Self {
        Evaluator {
            source,
            options,
            deadline,
            query_start,
            query_end,
            samples: 0,
            warnings: Default::default(),
        }
    }

    pub fn instant(&mut self, expr: &Expr, t: i64) -> Result<Answer> {
        let grid = Grid {
            start: t,
            end: t,
            step: 1,
        };
        let value = match self.eval(expr, grid)? {
            Val::Scalar(values) => Value::Scalar { t, v: values[0] },
            Val::Str(v) => Value::String { t, v },
            Val::Vector(series) => Value::Vector(instant_vector(expr, series, t)),
            Val::Range(range) => Value::Matrix(self.raw_windows(&range, t)),
        };
        Ok(Answer {
            value,
            warnings: std::mem::take(&mut self.warnings).into_iter().collect(),
        })
    }

    pub fn range(&mut self, expr: &Expr, start: i64, end: i64, step: i64) -> Result<Answer> {
        match expr.value_type() {
            ValueType::Vector | ValueType::Scalar => {}
            other => {
                let name = if other == ValueType::Matrix {
                    "range vector"
                } else {
                    "string"
                };
                return Err(Error::BadData(format!(
                    "invalid expression type \"{name}\" for range query, must be Scalar or instant Vector"
                )));
            }
        }
        let grid = Grid { start, end, step };
        let mut series = match self.eval(expr, grid)? {
            Val::Vector(series) => series,
            Val::Scalar(values) => vec![Series {
                labels: Labels::default(),
                points: grid.times().zip(values).collect(),
            }],
            Val::Str(_) | Val::Range(_) => unreachable!("types checked above"),
        };
        series.retain(|s| !s.points.is_empty());
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(Answer {
            value: Value::Matrix(series),
            warnings: std::mem::take(&mut self.warnings).into_iter().collect(),
        })
    }

    /// A range vector's windows at `t` as a matrix; rollup buckets show as their last value at
    /// their end.
    fn raw_windows(&mut self, range: &RangeArg, t: i64) -> Vec<Series> {
        let mut out = Vec::new();
        for (i, s) in range.series.iter().enumerate() {
            let buckets = range.buckets_in(i, t);
            let mut points: Vec<(i64, f64)> = buckets
                .iter()
                .map(|b| (b.end(), b.rollup.last))
                .filter(|(end, _)| *end <= range.bounds(t).1)
                .collect();
            if !points.is_empty() {
                self.approximate();
            }
            points.extend_from_slice(range.window(s, t));
            if !points.is_empty() {
                out.push(Series {
                    labels: s.labels.clone(),
                    points,
                });
            }
        }
        out
    }

    pub fn check_deadline(&self) -> Result<()> {
        match self.deadline {
            Some(deadline) if Instant::now() > deadline => {
                Err(Error::Timeout("expression evaluation"))
            }
            _ => Ok(()),
        }
    }

    /// Says in the answer that rollups stood in for aged-out samples (once, however often).
    pub fn approximate(&mut self) {
        if !self.warnings.contains(APPROXIMATE) {
            self.warnings.insert(APPROXIMATE.to_string());
        }
    }

    /// Counts `n` more samples held by the query, failing past the bound.
    pub fn hold(&mut self, n: usize) -> Result<()> {
        self.samples = self.samples.saturating_add(n);
        if self.samples > self.options.max_samples {
            return Err(Error::TooManySamples("query execution"));
        }
        Ok(())
    }

    pub fn eval(&mut self, expr: &Expr, grid: Grid) -> Result<Val> {
        self.check_deadline()?;
        match expr {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(vec![n.val; grid.len()])),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, grid),
            Expr::Unary(u) => match self.eval(&u.expr, grid)? {
                Val::Scalar(values) => Ok(Val::Scalar(values.into_iter().map(|v| -v).collect())),
                Val::Vector(series) => {
                    let negated: Vec<Series> = series
                        .into_iter()
                        .map(|s| Series {
                            labels: s.labels.without_name(),
                            points: s.points.into_iter().map(|(t, v)| (t, -v)).collect(),
                        })
                        .collect();
                    check_distinct(&negated)?;
                    Ok(Val::Vector(negated))
                }
                _ => Err(Error::BadData(
                    "unary expression only allowed on expressions of type scalar or instant vector"
                        .into(),
                )),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.vector_selector(vs, grid, false)?)),
            Expr::MatrixSelector(ms) => {
                let range = duration_ms(&ms.range);
                Ok(Val::Range(self.range_selector(&ms.vs, range, grid)?))
            }
            Expr::Subquery(sq) => Ok(Val::Range(self.subquery(sq, grid)?)),
            Expr::Call(call) => functions::call(self, call, grid),
            Expr::Aggregate(agg) => aggregate::eval(self, agg, grid),
            Expr::Binary(bin) => binary::eval(self, bin, grid),
            Expr::Extension(_) => Err(Error::BadData("unsupported expression".into())),
        }
    }

    pub fn at_ms(&self, at: &Option<AtModifier>) -> Option<i64> {
        at.as_ref().map(|at| match at {
            AtModifier::Start => self.query_start,
            AtModifier::End => self.query_end,
            AtModifier::At(time) => system_time_ms(*time),
        })
    }

    /// The series a selector reads over `from..=to`: raw samples, and for each the rollup
    /// buckets that stand in for raw samples aged out before its first one.
    fn select(
        &mut self,
        vs: &VectorSelector,
        from: i64,
        to: i64,
        resolution_ms: i64,
    ) -> Result<Vec<(Series, Vec<Bucket>)>> {
        let raw = self.select_raw(vs, from, to)?;
        // A series whose raw samples start late in the range (or are gone) may have rollups.
        let missing_until = raw
            .iter()
            .filter_map(|s| match s.points.first() {
                None => Some(to),
                Some(&(t, _)) if t > from.saturating_add(60_000) => Some(t - 1),
                Some(_) => None,
            })
            .max();
        let mut rollups: HashMap<Labels, Vec<Bucket>> = match missing_until {
            Some(until) => self
                .source
                .select_rollups(&selector_matchers(vs), from, until, resolution_ms)?
                .into_iter()
                .map(|r| (r.labels, r.buckets))
                .collect(),
            None => HashMap::new(),
        };
        let mut out = Vec::with_capacity(raw.len());
        for series in raw {
            let first_raw = series.points.first().map_or(i64::MAX, |(t, _)| *t);
            let mut buckets = rollups.remove(&series.labels).unwrap_or_default();
            buckets.retain(|b| b.end() < first_raw && b.end() >= from && b.start <= to);
            self.hold(buckets.len())?;
            out.push((series, buckets));
        }
        Ok(out)
    }

    fn select_raw(&mut self, vs: &VectorSelector, from: i64, to: i64) -> Result<Vec<Series>> {
        let matchers = selector_matchers(vs);
        let mut found = self.source.select(&matchers, from, to)?;
        if found.len() > self.options.max_series {
            return Err(Error::Execution(format!(
                "the selector {vs} matches {} series, more than the {} a query may read",
                found.len(),
                self.options.max_series
            )));
        }
        for series in &mut found {
            series.points.retain(|(_, v)| !is_stale(*v));
        }
        self.hold(found.iter().map(|s| s.points.len()).sum())?;
        Ok(found)
    }

    /// An instant selector at every step: each series' latest sample within the lookback
    /// before the step (its timestamp instead of its value with `timestamps`, for
    /// `timestamp()`).
    pub fn vector_selector(
        &mut self,
        vs: &VectorSelector,
        grid: Grid,
        timestamps: bool,
    ) -> Result<Vec<Series>> {
        let offset = offset_ms(&vs.offset);
        let at = self.at_ms(&vs.at);
        let lookback = self.options.lookback_ms;
        let (first, last) = match at {
            Some(at) => (at.saturating_sub(offset), at.saturating_sub(offset)),
            None => (
                grid.start.saturating_sub(offset),
                grid.end.saturating_sub(offset),
            ),
        };
        let raw = self.select(vs, first.saturating_sub(lookback), last, grid.step)?;
        let mut out = Vec::with_capacity(raw.len());
        for (series, buckets) in raw {
            let mut points = Vec::new();
            for ts in grid.times() {
                let reference = at.unwrap_or(ts).saturating_sub(offset);
                let found = latest(&series.points, reference, lookback).or_else(|| {
                    let (t, v) = latest_bucket(&buckets, reference, lookback)?;
                    self.approximate();
                    Some((t, v))
                });
                if let Some((t, v)) = found {
                    points.push((ts, if timestamps { t as f64 / 1000.0 } else { v }));
                }
            }
            self.hold(points.len())?;
            if !points.is_empty() {
                out.push(Series {
                    labels: series.labels,
                    points,
                });
            }
        }
        Ok(out)
    }

    fn range_selector(&mut self, vs: &VectorSelector, range: i64, grid: Grid) -> Result<RangeArg> {
        let offset = offset_ms(&vs.offset);
        let at = self.at_ms(&vs.at);
        let (first, last) = match at {
            Some(at) => (at, at),
            None => (grid.start, grid.end),
        };
        let from = first.saturating_sub(offset).saturating_sub(range);
        let (series, buckets) = self
            .select(vs, from, last.saturating_sub(offset), grid.step.min(range))?
            .into_iter()
            .unzip();
        Ok(RangeArg {
            series,
            buckets,
            range,
            offset,
            at,
        })
    }

    /// A subquery: its expression evaluated on a grid of its own, aligned to multiples of its
    /// step, covering every window the outer grid cuts.
    fn subquery(
        &mut self,
        sq: &promql_parser::parser::SubqueryExpr,
        grid: Grid,
    ) -> Result<RangeArg> {
        let offset = offset_ms(&sq.offset);
        let range = duration_ms(&sq.range);
        let at = self.at_ms(&sq.at);
        let step = sq
            .step
            .as_ref()
            .map(duration_ms)
            .unwrap_or(self.options.subquery_step_ms);
        if step <= 0 {
            return Err(Error::BadData("a subquery's step must be positive".into()));
        }
        let (outer_start, outer_end) = match at {
            Some(at) => (at, at),
            None => (grid.start, grid.end),
        };
        let lowest = outer_start.saturating_sub(offset).saturating_sub(range);
        let mut start = step * (lowest / step);
        if start < lowest {
            start += step;
        }
        let inner = Grid {
            start,
            end: outer_end.saturating_sub(offset),
            step,
        };
        if inner.len() > self.options.max_samples {
            return Err(Error::TooManySamples("subquery evaluation"));
        }
        let series = if inner.len() == 0 {
            Vec::new()
        } else {
            match self.eval(&sq.expr, inner)? {
                Val::Vector(series) => series,
                Val::Scalar(values) => vec![Series {
                    labels: Labels::default(),
                    points: inner.times().zip(values).collect(),
                }],
                _ => {
                    return Err(Error::BadData(
                        "subquery is only allowed on instant vector".into(),
                    ))
                }
            }
        };
        Ok(RangeArg {
            series,
            buckets: Vec::new(),
            range,
            offset,
            at,
        })
    }
}

/// The latest raw sample at or before `reference`, within the lookback.
fn latest(points: &[(i64, f64)], reference: i64, lookback: i64) -> Option<(i64, f64)> {
    let before = points.partition_point(|(t, _)| *t <= reference);
    let (t, v) = *points.get(before.checked_sub(1)?)?;
    (t >= reference.saturating_sub(lookback)).then_some((t, v))
}

/// The last value of the latest bucket that ended by `reference`, stamped at its end; the
/// lookback stretches to a bucket's width, so that hour buckets leave no gaps.
fn latest_bucket(buckets: &[Bucket], reference: i64, lookback: i64) -> Option<(i64, f64)> {
    let before = buckets.partition_point(|b| b.end() <= reference);
    let bucket = buckets.get(before.checked_sub(1)?)?;
    let reach = lookback.max(bucket.width);
    (bucket.end() >= reference.saturating_sub(reach)).then_some((bucket.end(), bucket.rollup.last))
}

/// Every matcher of a selector, its metric name included.
pub(super) fn selector_matchers(vs: &VectorSelector) -> Vec<Matcher> {
    let mut matchers = vs.matchers.matchers.clone();
    if let Some(name) = &vs.name {
        let named = matchers
            .iter()
            .any(|m| m.name == METRIC_NAME && m.op == MatchOp::Equal && &m.value == name);
        if !named {
            matchers.push(Matcher::new(MatchOp::Equal, METRIC_NAME, name));
        }
    }
    matchers
}

/// Refuses what parses but that Prometheus 2.x does not evaluate, and what nests deeper
/// than [`super::MAX_DEPTH`].
pub(super) fn check_supported(expr: &Expr, depth: usize) -> Result<()> {
    let unsupported = |what: &str| Err(Error::BadData(format!("{what} is not supported")));
    if depth > super::MAX_DEPTH {
        return Err(super::too_deep());
    }
    let check_supported = |e: &Expr| check_supported(e, depth + 1);
    match expr {
        Expr::VectorSelector(vs) if !vs.matchers.or_matchers.is_empty() => {
            unsupported("\"or\" inside a selector")
        }
        Expr::MatrixSelector(ms) if !ms.vs.matchers.or_matchers.is_empty() => {
            unsupported("\"or\" inside a selector")
        }
        Expr::VectorSelector(_) | Expr::MatrixSelector(_) => Ok(()),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::Paren(p) => check_supported(&p.expr),
        Expr::Unary(u) => check_supported(&u.expr),
        Expr::Subquery(sq) => check_supported(&sq.expr),
        Expr::Aggregate(agg) => {
            if !aggregate::supported(agg.op.id()) {
                return unsupported(&format!("the aggregation {}", agg.op));
            }
            check_supported(&agg.expr)?;
            agg.param.as_deref().map_or(Ok(()), check_supported)
        }
        Expr::Binary(bin) => {
            let fills = bin
                .modifier
                .as_ref()
                .is_some_and(|m| m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some());
            if fills {
                return unsupported("fill() in vector matching");
            }
            check_supported(&bin.lhs)?;
            check_supported(&bin.rhs)
        }
        Expr::Call(call) => {
            if !functions::supported(call.func.name) {
                return unsupported(&format!("the function {}()", call.func.name));
            }
            call.args.args.iter().try_for_each(|a| check_supported(a))
        }
        Expr::Extension(_) => unsupported("this expression"),
    }
}

/// The result of an instant query in Prometheus' order: by value for a top-level `sort` or
/// `sort_desc`, by labels otherwise.
fn instant_vector(expr: &Expr, series: Vec<Series>, t: i64) -> Vec<Sample> {
    let mut samples: Vec<Sample> = series
        .into_iter()
        .filter_map(|s| {
            s.points.first().map(|&(_, v)| Sample {
                labels: s.labels,
                t,
                v,
            })
        })
        .collect();
    samples.sort_by(|a, b| a.labels.cmp(&b.labels));
    let mut top = expr;
    while let Expr::Paren(p) = top {
        top = &p.expr;
    }
    if let Expr::Call(call) = top {
        let descending = match call.func.name {
            "sort" => false,
            "sort_desc" => true,
            _ => return samples,
        };
        // NaN last either way, as Prometheus sorts.
        samples.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ if descending => b.v.total_cmp(&a.v),
            _ => a.v.total_cmp(&b.v),
        });
    }
    samples
}

/// Fails when two series have the same labels (Prometheus checks a function's or a negation's
/// whole result this way).
pub(super) fn check_distinct(series: &[Series]) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(series.len());
    for s in series {
        if !seen.insert(&s.labels) {
            return Err(same_labelset());
        }
    }
    Ok(())
}

pub(super) fn same_labelset() -> Error {
    Error::Execution("vector cannot contain metrics with the same labelset".into())
}

/// Joins series that ended up with the same labels, failing only where two of them have a
/// point at the same step (Prometheus' rule for results combined step by step).
pub(super) fn merge_same_labels(series: Vec<Series>) -> Result<Vec<Series>> {
    let mut index: HashMap<Labels, usize> = HashMap::with_capacity(series.len());
    let mut out: Vec<Series> = Vec::with_capacity(series.len());
    let mut merged = false;
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        match index.get(&s.labels) {
            Some(&i) => {
                out[i].points.extend(s.points);
                merged = true;
            }
            None => {
                index.insert(s.labels.clone(), out.len());
                out.push(s);
            }
        }
    }
    if merged {
        for s in &mut out {
            s.points.sort_by_key(|(t, _)| *t);
            if s.points.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(same_labelset());
            }
        }
    }
    Ok(out)
}

pub(super) fn duration_ms(d: &std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

pub(super) fn offset_ms(offset: &Option<Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(d),
        Some(Offset::Neg(d)) => -duration_ms(d),
    }
}

fn system_time_ms(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => duration_ms(&after),
        Err(before) => -duration_ms(&before.duration()),
    }
}
