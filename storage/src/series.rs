//! Series identity (Prometheus' data model: a metric name plus sorted labels) and selectors.
//!
//! The canonical text of a series, `name{a="x",b="y"}` with labels sorted by name, is what the
//! catalogue stores; selectors use the same syntax with the matchers `=`, `!=`, `=~` and `!~`.

use std::fmt;

use crate::error::{Error, Result};

/// A metric name and its labels, sorted by label name. Labels with an empty value are dropped,
/// as Prometheus does: an empty label and an absent one are the same series.
///
/// The name and the labels' names and values are one string, cut by `ends`: a hub keeps a key
/// for every series of its fleet, and a string per name and value made the catalogue most of
/// its memory, and reading a key a walk through as many allocations.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    /// The name, then each label's name and value.
    text: Box<str>,
    /// Where the name and then each label's name and value end in `text`; empty for a key
    /// without labels.
    ends: Box<[u32]>,
}

impl SeriesKey {
    /// Builds a key, validating names and sorting labels.
    pub fn new(
        name: impl Into<String>,
        labels: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let name = name.into();
        let mut labels: Vec<(String, String)> =
            labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        labels.sort();
        let error = |reason: String| Error::SeriesKey {
            key: format!("{name}{{..}}"),
            reason,
        };
        if !is_metric_name(&name) {
            return Err(error(format!(
                "metric name {name:?} is not [a-zA-Z_:][a-zA-Z0-9_:]*"
            )));
        }
        for pair in labels.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(error(format!("label {:?} appears twice", pair[0].0)));
            }
        }
        if let Some((bad, _)) = labels.iter().find(|(l, _)| !is_label_name(l)) {
            return Err(error(format!(
                "label name {bad:?} is not [a-zA-Z_][a-zA-Z0-9_]*"
            )));
        }
        let length = name.len() + labels.iter().map(|(l, v)| l.len() + v.len()).sum::<usize>();
        if u32::try_from(length).is_err() {
            return Err(error(format!("{length} bytes of names and values")));
        }
        let mut text = name;
        let mut ends = Vec::new();
        if !labels.is_empty() {
            text.reserve_exact(length - text.len());
            ends.reserve_exact(1 + labels.len() * 2);
            ends.push(text.len() as u32);
            for (label, value) in &labels {
                text.push_str(label);
                ends.push(text.len() as u32);
                text.push_str(value);
                ends.push(text.len() as u32);
            }
        }
        Ok(SeriesKey {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        })
    }

    /// Parses `name` or `name{label="value",...}` (the exposition format's series syntax).
    pub fn parse(text: &str) -> Result<Self> {
        let error = |reason: String| Error::SeriesKey {
            key: text.to_string(),
            reason,
        };
        let mut lexer = Lexer::new(text);
        let name = lexer.name(false).map_err(error)?;
        let mut labels = Vec::new();
        if lexer.peek() == Some(b'{') {
            for (label, op, value) in lexer.matchers().map_err(error)? {
                if op != MatchOp::Equal {
                    return Err(error(format!("label {label:?} must use =, not {op}")));
                }
                labels.push((label, value));
            }
        }
        lexer.end().map_err(error)?;
        SeriesKey::new(name, labels).map_err(|e| match e {
            Error::SeriesKey { reason, .. } => error(reason),
            other => other,
        })
    }

    pub fn name(&self) -> &str {
        match self.ends.first() {
            Some(&end) => &self.text[..end as usize],
            None => &self.text,
        }
    }

    /// The labels, sorted by name, as (name, value).
    pub fn labels(&self) -> KeyLabels<'_> {
        KeyLabels {
            key: self,
            range: 0..self.label_count(),
        }
    }

    pub fn label_count(&self) -> usize {
        self.ends.len() / 2
    }

    /// The labels as owned pairs.
    pub fn owned_labels(&self) -> Vec<(String, String)> {
        self.labels()
            .map(|(label, value)| (label.to_string(), value.to_string()))
            .collect()
    }

    /// Label `index`'s name and value.
    fn label_at(&self, index: usize) -> (&str, &str) {
        let at = |part: usize| self.ends[part] as usize;
        let (start, middle, end) = (at(2 * index), at(2 * index + 1), at(2 * index + 2));
        (&self.text[start..middle], &self.text[middle..end])
    }

    /// The value of a label, with `__name__` meaning the metric name; "" when absent.
    pub fn label(&self, label: &str) -> &str {
        if label == "__name__" {
            return self.name();
        }
        let (mut low, mut high) = (0, self.label_count());
        while low < high {
            let middle = (low + high) / 2;
            let (name, value) = self.label_at(middle);
            match name.cmp(label) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return value,
            }
        }
        ""
    }
}

/// A key's labels, sorted by name, as (name, value).
#[derive(Clone)]
pub struct KeyLabels<'a> {
    key: &'a SeriesKey,
    range: std::ops::Range<usize>,
}

impl<'a> Iterator for KeyLabels<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        self.range.next().map(|index| self.key.label_at(index))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.range.size_hint()
    }
}

impl DoubleEndedIterator for KeyLabels<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.range.next_back().map(|index| self.key.label_at(index))
    }
}

impl ExactSizeIterator for KeyLabels<'_> {}

impl fmt::Debug for KeyLabels<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

/// As the name, then the labels in order: the order the key's parts had as fields.
impl Ord for SeriesKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name()
            .cmp(other.name())
            .then_with(|| self.labels().cmp(other.labels()))
    }
}

impl PartialOrd for SeriesKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeriesKey({self})")
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        if self.ends.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, (label, value)) in self.labels().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{label}=\"")?;
            for c in value.chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '"' => f.write_str("\\\"")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Prometheus' label name rule: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// How a selector compares a label with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl fmt::Display for MatchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        })
    }
}

#[derive(Debug, Clone)]
struct Matcher {
    label: String,
    op: MatchOp,
    value: String,
    /// Anchored at both ends, as in PromQL.
    regex: Option<regex::Regex>,
}

impl Matcher {
    fn matches(&self, key: &SeriesKey) -> bool {
        let actual = key.label(&self.label);
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => actual == self.value,
            (MatchOp::NotEqual, _) => actual != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(actual),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(actual),
            (_, None) => false,
        }
    }
}

/// A series selector: `name{label="v",other=~"re.*"}`, `name`, or `{__name__=~"node_.*"}`.
#[derive(Debug, Clone)]
pub struct Selector {
    text: String,
    matchers: Vec<Matcher>,
}

impl Selector {
    /// The selector of these label matchers (no metric name), through the same text that
    /// [`Selector::parse`] reads: each value is quoted with this grammar's escapes (`\\`,
    /// `\"`, `\n`), so that any value comes back as it went in.
    pub fn from_matchers<'a>(
        matchers: impl IntoIterator<Item = (&'a str, MatchOp, &'a str)>,
    ) -> Result<Self> {
        let mut text = String::from("{");
        for (i, (label, op, value)) in matchers.into_iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(label);
            text.push_str(&op.to_string());
            text.push('"');
            for c in value.chars() {
                match c {
                    '\\' => text.push_str("\\\\"),
                    '"' => text.push_str("\\\""),
                    '\n' => text.push_str("\\n"),
                    c => text.push(c),
                }
            }
            text.push('"');
        }
        text.push('}');
        Selector::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self> {
        let error = |reason: String| Error::Selector {
            selector: text.to_string(),
            reason,
        };
        let mut lexer = Lexer::new(text.trim());
        let mut matchers = Vec::new();
        if lexer.peek() != Some(b'{') {
            let name = lexer.name(false).map_err(error)?;
            matchers.push(Matcher {
                label: "__name__".into(),
                op: MatchOp::Equal,
                value: name,
                regex: None,
            });
        }
        if lexer.peek() == Some(b'{') {
            for (label, op, value) in lexer.matchers().map_err(error)? {
                let regex = match op {
                    MatchOp::Regex | MatchOp::NotRegex => Some(
                        regex::Regex::new(&format!("^(?:{value})$"))
                            .map_err(|e| error(format!("bad regex for {label}: {e}")))?,
                    ),
                    _ => None,
                };
                matchers.push(Matcher {
                    label,
                    op,
                    value,
                    regex,
                });
            }
        }
        lexer.end().map_err(error)?;
        if matchers.is_empty() {
            return Err(error("a selector needs a metric name or a matcher".into()));
        }
        if matchers.iter().all(|m| {
            m.regex.as_ref().is_some_and(|r| r.is_match(""))
                || (m.op == MatchOp::Equal && m.value.is_empty())
                || (m.op == MatchOp::NotEqual && !m.value.is_empty())
        }) {
            return Err(error(
                "at least one matcher must not match the empty string, or it selects every series"
                    .into(),
            ));
        }
        Ok(Selector {
            text: text.to_string(),
            matchers,
        })
    }

    pub fn matches(&self, key: &SeriesKey) -> bool {
        self.matchers.iter().all(|m| m.matches(key))
    }

    /// Every matcher as (label, operator, value), the metric name as `__name__`.
    pub fn matchers(&self) -> impl Iterator<Item = (&str, MatchOp, &str)> {
        self.matchers
            .iter()
            .map(|m| (m.label.as_str(), m.op, m.value.as_str()))
    }

    /// The selector narrowed to series whose `label` equals `value` (a dashboard scoping a
    /// user's selector to one device, say).
    pub fn and_equal(mut self, label: &str, value: &str) -> Selector {
        self.text = format!("{} and {label}={value:?}", self.text);
        self.matchers.push(Matcher {
            label: label.to_string(),
            op: MatchOp::Equal,
            value: value.to_string(),
            regex: None,
        });
        self
    }

    /// The labels the selector pins with `=` (the metric name as `__name__`), in its order: what
    /// every series it matches has in common for certain.
    pub fn equalities(&self) -> impl Iterator<Item = (&str, &str)> {
        self.matchers
            .iter()
            .filter(|m| m.op == MatchOp::Equal)
            .map(|m| (m.label.as_str(), m.value.as_str()))
    }

    /// The metric name when the selector pins it with `=`, which lets lookups skip other names.
    pub fn exact_name(&self) -> Option<&str> {
        self.matchers
            .iter()
            .find(|m| m.label == "__name__" && m.op == MatchOp::Equal)
            .map(|m| m.value.as_str())
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A tiny hand-written lexer for the shared `name{label op "value", ...}` syntax.
struct Lexer<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Lexer { text, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn name(&mut self, label: bool) -> std::result::Result<String, String> {
        self.skip_spaces();
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == b'_' || (c == b':' && !label) {
                self.pos += 1;
            } else {
                break;
            }
        }
        if start == self.pos {
            return Err(format!(
                "expected a {} at byte {}",
                if label { "label name" } else { "metric name" },
                start
            ));
        }
        Ok(self.text[start..self.pos].to_string())
    }

    fn matchers(&mut self) -> std::result::Result<Vec<(String, MatchOp, String)>, String> {
        self.pos += 1; // the '{'
        let mut out = Vec::new();
        loop {
            self.skip_spaces();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(out);
            }
            let label = self.name(true)?;
            self.skip_spaces();
            let rest = &self.text[self.pos..];
            let (op, len) = if rest.starts_with("=~") {
                (MatchOp::Regex, 2)
            } else if rest.starts_with("!~") {
                (MatchOp::NotRegex, 2)
            } else if rest.starts_with("!=") {
                (MatchOp::NotEqual, 2)
            } else if rest.starts_with('=') {
                (MatchOp::Equal, 1)
            } else {
                return Err(format!(
                    "expected =, !=, =~ or !~ after label {label:?} at byte {}",
                    self.pos
                ));
            };
            self.pos += len;
            self.skip_spaces();
            let value = self.quoted()?;
            out.push((label, op, value));
            self.skip_spaces();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(format!("expected , or }} at byte {}", self.pos)),
            }
        }
    }

    fn quoted(&mut self) -> std::result::Result<String, String> {
        if self.peek() != Some(b'"') {
            return Err(format!("expected a quoted value at byte {}", self.pos));
        }
        self.pos += 1;
        let mut value = String::new();
        let mut chars = self.text[self.pos..].char_indices();
        while let Some((offset, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += offset + 1;
                    return Ok(value);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, other)) => {
                        value.push('\\');
                        value.push(other);
                    }
                    None => break,
                },
                c => value.push(c),
            }
        }
        Err("unterminated quoted value".into())
    }

    fn end(&mut self) -> std::result::Result<(), String> {
        self.skip_spaces();
        if self.pos == self.text.len() {
            Ok(())
        } else {
            Err(format!("unexpected {:?}", &self.text[self.pos..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_labels_and_round_trips() {
        let key = SeriesKey::parse(r#"node_cpu{mode="idle",cpu="0",empty=""}"#).unwrap();
        assert_eq!(key.to_string(), r#"node_cpu{cpu="0",mode="idle"}"#);
        assert_eq!(SeriesKey::parse(&key.to_string()).unwrap(), key);
        let quoted = SeriesKey::parse(r#"m{path="a\"b\\c\nd"}"#).unwrap();
        assert_eq!(quoted.label("path"), "a\"b\\c\nd");
        assert_eq!(SeriesKey::parse(&quoted.to_string()).unwrap(), quoted);
    }

    /// The parts of a key read back as they were given, and keys order as (name, labels)
    /// tuples: the one string they are kept in must not show through.
    #[test]
    fn a_key_reads_back_its_parts_and_orders_as_name_then_labels() {
        let pairs = |key: &SeriesKey| -> Vec<(String, String)> { key.owned_labels() };
        let long = "long".repeat(100);
        let cases = [
            ("up", vec![]),
            ("m", vec![("a", "x"), ("ab", "")]),
            ("m", vec![("a", "xa"), ("b", "")]),
            ("m", vec![("a", "x"), ("b", "a\u{0}z")]),
            ("m", vec![("A", "1"), ("__x", "2"), ("b", "3"), ("c", "")]),
            ("mm", vec![("a", "")]),
            ("m", vec![("a", "é"), ("b", long.as_str())]),
        ];
        type Parts = (String, Vec<(String, String)>);
        let keys: Vec<(SeriesKey, Parts)> = cases
            .iter()
            .map(|(name, labels)| {
                let owned: Vec<(String, String)> = labels
                    .iter()
                    .map(|(l, v)| (l.to_string(), v.to_string()))
                    .collect();
                let key = SeriesKey::new(*name, owned.clone()).unwrap();
                let mut kept: Vec<_> = owned.into_iter().filter(|(_, v)| !v.is_empty()).collect();
                kept.sort();
                (key, (name.to_string(), kept))
            })
            .collect();
        for (key, (name, labels)) in &keys {
            assert_eq!(key.name(), name);
            assert_eq!(&pairs(key), labels);
            assert_eq!(key.label_count(), labels.len());
            assert_eq!(key.labels().rev().count(), labels.len());
            for (label, value) in labels {
                assert_eq!(key.label(label), value);
            }
            assert_eq!(key.label("__name__"), name);
            assert_eq!(key.label("zz"), "");
            assert_eq!(key.label("0"), "");
            assert_eq!(&SeriesKey::parse(&key.to_string()).unwrap(), key);
        }
        for (a, a_parts) in &keys {
            for (b, b_parts) in &keys {
                assert_eq!(a.cmp(b), a_parts.cmp(b_parts), "{a} against {b}");
                assert_eq!(a == b, a_parts == b_parts, "{a} against {b}");
            }
        }
    }

    #[test]
    fn and_equal_narrows_a_selector() {
        let a = SeriesKey::parse(r#"cpu{instance="a",core="0"}"#).unwrap();
        let b = SeriesKey::parse(r#"cpu{instance="b",core="0"}"#).unwrap();
        let selector = Selector::parse(r#"cpu{core="0"}"#).unwrap();
        assert!(selector.matches(&a) && selector.matches(&b));
        let narrowed = selector.and_equal("instance", "a");
        assert!(narrowed.matches(&a));
        assert!(!narrowed.matches(&b));
        assert_eq!(narrowed.exact_name(), Some("cpu"));
    }

    #[test]
    fn bad_series_are_refused_with_a_reason() {
        for bad in [
            "",
            "1abc",
            "m{a=\"x\",a=\"y\"}",
            "m{a=~\"x\"}",
            "m{a=\"x\"",
            "m x",
        ] {
            assert!(SeriesKey::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn selectors_match_like_promql() {
        let key = SeriesKey::parse(r#"node_cpu_seconds_total{cpu="0",mode="idle"}"#).unwrap();
        let check = |sel: &str, expected: bool| {
            assert_eq!(
                Selector::parse(sel).unwrap().matches(&key),
                expected,
                "{sel}"
            );
        };
        check("node_cpu_seconds_total", true);
        check(r#"node_cpu_seconds_total{mode="idle"}"#, true);
        check(r#"node_cpu_seconds_total{mode!="idle"}"#, false);
        check(r#"node_cpu_seconds_total{mode=~"id.*"}"#, true);
        check(r#"node_cpu_seconds_total{mode=~"id"}"#, false);
        check(r#"node_cpu_seconds_total{mode!~"user|system"}"#, true);
        check(r#"{__name__=~"node_cpu.*",cpu="0"}"#, true);
        check(r#"node_cpu_seconds_total{missing=""}"#, true);
        check("node_load1", false);
        assert!(Selector::parse(r#"{mode=~".*"}"#).is_err());
        assert!(Selector::parse(r#"m{a=~"("}"#).is_err());
    }

    proptest::proptest! {
        /// Any values, through a selector's text and back, come out as they went in.
        #[test]
        fn matchers_survive_the_selector_text(
            values in proptest::collection::vec(proptest::prelude::any::<String>(), 1..4),
            negate in proptest::prelude::any::<bool>(),
        ) {
            let labels = ["b_2", "c", "d"];
            let op = if negate { MatchOp::NotEqual } else { MatchOp::Equal };
            // A selector must have a matcher that the empty string does not satisfy.
            let matchers: Vec<(&str, MatchOp, &str)> = std::iter::once(("a", MatchOp::Equal, "x"))
                .chain(values.iter().enumerate().map(|(i, value)| (labels[i], op, value.as_str())))
                .collect();
            let selector = Selector::from_matchers(matchers.clone()).unwrap();
            let back: Vec<(&str, MatchOp, &str)> = selector.matchers().collect();
            proptest::prop_assert_eq!(back, matchers);
            let reparsed = Selector::parse(&selector.to_string()).unwrap();
            proptest::prop_assert_eq!(reparsed.matchers().count(), values.len() + 1);
        }
    }
}
