//! The part of Go's text/template that Prometheus alert annotations use: `{{ $value }}`,
//! `{{ $labels.NAME }}`, `{{ .Value }}`, pipelines through `humanize`, `humanize1024`,
//! `humanizePercentage`, `humanizeDuration`, `printf`, `toUpper`, `toLower`, `title`, and
//! `index $labels "name"`. Anything else (`if`, `range`, `query`, variables) is refused at
//! load, naming the construct, rather than rendered wrongly.
//!
//! Numbers print as Go prints them (`%v` of a float is `%g` with the shortest digits, so a
//! million is `1e+06`), because people compare these texts with what Prometheus sent.

use std::collections::BTreeMap;

/// Where an operand's value comes from.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    /// `$value`, `.Value`.
    Value,
    /// `$labels.NAME`, `.Labels.NAME`, `index $labels "NAME"`.
    Label(String),
    /// `$externalLabels.NAME`: Outpost has none, so always empty.
    ExternalLabel,
    Text(String),
    Number(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Function {
    Humanize,
    Humanize1024,
    HumanizePercentage,
    HumanizeDuration,
    Printf,
    ToUpper,
    ToLower,
    Title,
}

impl Function {
    fn named(name: &str) -> Option<Function> {
        Some(match name {
            "humanize" => Function::Humanize,
            "humanize1024" => Function::Humanize1024,
            "humanizePercentage" => Function::HumanizePercentage,
            "humanizeDuration" => Function::HumanizeDuration,
            "printf" => Function::Printf,
            "toUpper" => Function::ToUpper,
            "toLower" => Function::ToLower,
            "title" => Function::Title,
            _ => return None,
        })
    }
}

/// One command of a pipeline: a bare operand, or a function and its arguments (the previous
/// command's result is appended as the last argument).
#[derive(Debug, Clone, PartialEq)]
enum Command {
    Operand(Operand),
    Call(Function, Vec<Operand>),
}

/// A `{{ ... }}` action: commands joined by `|`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline(Vec<Command>);

/// A value while a pipeline runs.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Float(f64),
    Text(String),
}

/// What an action reads. As in Prometheus, `$labels` are the series' labels: neither the
/// rule's own labels nor `alertname` are among them.
pub struct Data<'a> {
    pub value: Option<f64>,
    pub labels: &'a BTreeMap<String, String>,
}

/// Splits an action into words: bare words, `"..."` and `` `...` `` strings, and `|`.
fn words(action: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '|' {
            chars.next();
            out.push("|".into());
        } else if c == '"' || c == '`' {
            chars.next();
            let mut text = String::from(c);
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated string in {{{{{action}}}}}")),
                    Some('\\') if c == '"' => {
                        text.push('\\');
                        text.extend(chars.next());
                    }
                    Some(end) if end == c => break,
                    Some(other) => text.push(other),
                }
            }
            text.push(c);
            out.push(text);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '|' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            out.push(word);
        }
    }
    Ok(out)
}

fn unquote(word: &str) -> Option<String> {
    if let Some(raw) = word.strip_prefix('`').and_then(|w| w.strip_suffix('`')) {
        return Some(raw.to_string());
    }
    // A Go string literal's escapes are JSON's, but for a few rare ones.
    word.starts_with('"')
        .then(|| serde_json::from_str::<String>(word).ok())
        .flatten()
}

fn operand(word: &str, action: &str) -> Result<Operand, String> {
    if let Some(text) = unquote(word) {
        return Ok(Operand::Text(text));
    }
    if let Ok(n) = word.parse::<f64>() {
        return Ok(Operand::Number(n));
    }
    let label = word
        .strip_prefix("$labels.")
        .or_else(|| word.strip_prefix(".Labels."));
    match (word, label) {
        ("$value" | ".Value", _) => Ok(Operand::Value),
        (_, Some(name)) if !name.is_empty() && !name.contains('.') => {
            Ok(Operand::Label(name.to_string()))
        }
        _ if word.starts_with("$externalLabels.") || word.starts_with(".ExternalLabels.") => {
            Ok(Operand::ExternalLabel)
        }
        _ => Err(unsupported(word, action)),
    }
}

fn unsupported(word: &str, action: &str) -> String {
    format!(
        "{{{{{action}}}}}: {word:?} is not supported in alert templates (Outpost renders \
         $value, $labels.NAME, .Value, .Labels.NAME, index $labels \"NAME\", and the functions \
         humanize, humanize1024, humanizePercentage, humanizeDuration, printf, toUpper, \
         toLower and title)"
    )
}

/// Parses what lies between `{{` and `}}`, trim markers removed. `None` for a comment.
pub fn parse_action(action: &str) -> Result<Option<Pipeline>, String> {
    let trimmed = action.trim();
    if trimmed.starts_with("/*") && trimmed.ends_with("*/") {
        return Ok(None);
    }
    let words = words(trimmed)?;
    let mut commands = Vec::new();
    for part in words.split(|w| w == "|") {
        let Some((first, args)) = part.split_first() else {
            return Err(format!("{{{{{trimmed}}}}}: an empty command"));
        };
        if first == "index" {
            match args {
                [map, key] if map == "$labels" || map == ".Labels" => {
                    let name = unquote(key).ok_or_else(|| unsupported(key, trimmed))?;
                    commands.push(Command::Operand(Operand::Label(name)));
                    continue;
                }
                _ => return Err(unsupported("index", trimmed)),
            }
        }
        match Function::named(first) {
            Some(function) => {
                let args = args
                    .iter()
                    .map(|w| operand(w, trimmed))
                    .collect::<Result<Vec<_>, _>>()?;
                commands.push(Command::Call(function, args));
            }
            None if args.is_empty() && commands.is_empty() => {
                commands.push(Command::Operand(operand(first, trimmed)?));
            }
            None => return Err(unsupported(first, trimmed)),
        }
    }
    if commands.is_empty() {
        return Err(format!("{{{{{trimmed}}}}}: an empty action"));
    }
    Ok(Some(Pipeline(commands)))
}

impl Pipeline {
    pub fn render(&self, data: &Data<'_>) -> String {
        let mut previous: Option<Val> = None;
        for command in &self.0 {
            let value = match command {
                Command::Operand(o) => resolve(o, data),
                Command::Call(function, args) => {
                    let mut args: Vec<Val> = args.iter().map(|a| resolve(a, data)).collect();
                    args.extend(previous.take());
                    call(*function, args)
                }
            };
            previous = Some(value);
        }
        match previous {
            Some(Val::Float(v)) => go_float(v, None, 'g'),
            Some(Val::Text(t)) => t,
            None => String::new(),
        }
    }
}

fn resolve(operand: &Operand, data: &Data<'_>) -> Val {
    match operand {
        // Prometheus always has a value; an alert without one reads as NaN there too.
        Operand::Value => Val::Float(data.value.unwrap_or(f64::NAN)),
        Operand::Label(name) => Val::Text(data.labels.get(name).cloned().unwrap_or_default()),
        Operand::ExternalLabel => Val::Text(String::new()),
        Operand::Text(t) => Val::Text(t.clone()),
        Operand::Number(n) => Val::Float(*n),
    }
}

fn as_float(value: &Val) -> f64 {
    match value {
        Val::Float(v) => *v,
        Val::Text(t) => t.trim().parse().unwrap_or(f64::NAN),
    }
}

fn as_text(value: &Val) -> String {
    match value {
        Val::Float(v) => go_float(*v, None, 'g'),
        Val::Text(t) => t.clone(),
    }
}

fn call(function: Function, args: Vec<Val>) -> Val {
    let last = args.last().cloned().unwrap_or(Val::Text(String::new()));
    match function {
        Function::Humanize => Val::Text(humanize(as_float(&last))),
        Function::Humanize1024 => Val::Text(humanize_1024(as_float(&last))),
        Function::HumanizePercentage => Val::Text(format!(
            "{}%",
            go_float(as_float(&last) * 100.0, Some(4), 'g')
        )),
        Function::HumanizeDuration => Val::Text(humanize_duration(as_float(&last))),
        Function::Printf => {
            let mut args = args.into_iter();
            let format = args.next().map(|f| as_text(&f)).unwrap_or_default();
            Val::Text(printf(&format, args.collect()))
        }
        Function::ToUpper => Val::Text(as_text(&last).to_uppercase()),
        Function::ToLower => Val::Text(as_text(&last).to_lowercase()),
        Function::Title => Val::Text(title(&as_text(&last))),
    }
}

fn title(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at_start = true;
    for c in text.chars() {
        if at_start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        at_start = !c.is_alphanumeric() && c != '_' && c != '\'';
    }
    out
}

fn g4(v: f64) -> String {
    go_float(v, Some(4), 'g')
}

/// Prometheus' `humanize`: SI prefixes, four significant digits.
pub fn humanize(mut v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return g4(v);
    }
    let prefixes: &[&str] = if v.abs() >= 1.0 {
        &["k", "M", "G", "T", "P", "E", "Z", "Y"]
    } else {
        &["m", "u", "n", "p", "f", "a", "z", "y"]
    };
    let mut prefix = "";
    for p in prefixes {
        let done = if v.abs() >= 1.0 {
            v.abs() < 1000.0
        } else {
            v.abs() >= 1.0
        };
        if done {
            break;
        }
        prefix = p;
        v = if v.abs() >= 1.0 {
            v / 1000.0
        } else {
            v * 1000.0
        };
    }
    format!("{}{prefix}", g4(v))
}

/// Prometheus' `humanize1024`: binary prefixes.
pub fn humanize_1024(mut v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return g4(v);
    }
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", g4(v))
}

/// Prometheus' `humanizeDuration`: seconds as `1d 2h 3m 4s`, or with a sub-second prefix.
pub fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return g4(v);
    }
    if v == 0.0 {
        return format!("{}s", g4(v));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let whole = v.abs() as i64;
        let (days, hours, minutes, seconds) = (
            whole / 86_400,
            whole / 3600 % 24,
            whole / 60 % 60,
            whole % 60,
        );
        return if days != 0 {
            format!("{sign}{days}d {hours}h {minutes}m {seconds}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {minutes}m {seconds}s")
        } else if minutes != 0 {
            format!("{sign}{minutes}m {seconds}s")
        } else {
            format!("{sign}{}s", g4(v.abs()))
        };
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", g4(v))
}

/// Go's `%g`, `%e` and `%f` of a float64 (`precision` `None`: the shortest digits that read
/// back the same, as `%v` prints).
pub fn go_float(v: f64, precision: Option<usize>, verb: char) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if verb == 'f' {
        return format!("{v:.*}", precision.unwrap_or(6));
    }
    // Significant digits and the decimal exponent, from Rust's exact formatting.
    let scientific = match (verb, precision) {
        ('e', p) => format!("{v:.*e}", p.unwrap_or(6)),
        (_, Some(p)) => format!("{v:.*e}", p.max(1) - 1),
        (_, None) => format!("{v:e}"),
    };
    let (mantissa, exponent) = scientific.split_once('e').expect("e in {:e}");
    let exponent: i32 = exponent.parse().expect("an integer exponent");
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if negative { "-" } else { "" };
    let e_form = |digits: &str| {
        let (first, rest) = digits.split_at(1);
        let point = if rest.is_empty() { "" } else { "." };
        let esign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{first}{point}{rest}e{esign}{:02}", exponent.abs())
    };
    if verb == 'e' {
        return e_form(&digits);
    }
    // %g drops trailing zeros and chooses %e when the exponent is below -4 or at least the
    // precision (6 for the shortest form).
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let limit = precision.map_or(6, |p| {
        let p = p.max(1) as i32;
        if p > digits.len() as i32 && digits.len() as i32 > exponent {
            digits.len() as i32
        } else {
            p
        }
    });
    if exponent < -4 || exponent >= limit {
        return e_form(digits);
    }
    let point = exponent + 1;
    let text = if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        format!(
            "{}.{}",
            &digits[..point as usize],
            &digits[point as usize..]
        )
    };
    format!("{sign}{text}")
}

/// Go's `fmt.Sprintf` for the verbs annotations use (`%v %s %d %f %e %g %q %%`, with flags,
/// width and precision); a wrong argument prints as Go prints it (`%!d(float64=1.5)`).
fn printf(format: &str, args: Vec<Val>) -> String {
    let mut out = String::new();
    let mut args = args.into_iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&f) = chars.peek() {
            if matches!(f, '-' | '+' | '0' | ' ' | '#') || f.is_ascii_digit() || f == '.' {
                spec.push(f);
                chars.next();
            } else {
                break;
            }
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        out.push_str(&format_one(&spec, verb, &arg));
    }
    let extra: Vec<String> = args
        .map(|a| match a {
            Val::Float(v) => format!("float64={}", go_float(v, None, 'g')),
            Val::Text(t) => format!("string={t}"),
        })
        .collect();
    if !extra.is_empty() {
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    out
}

fn format_one(spec: &str, verb: char, arg: &Val) -> String {
    let left = spec.contains('-');
    let plus = spec.contains('+');
    let zero = spec.starts_with('0') || spec.contains("+0") || spec.contains("-0");
    let numbers = spec.trim_start_matches(['-', '+', '0', ' ', '#']);
    let (width, precision) = match numbers.split_once('.') {
        Some((w, p)) => (w.parse().ok(), Some(p.parse().unwrap_or(0))),
        None => (numbers.parse::<usize>().ok(), None),
    };
    let body = match (verb, arg) {
        ('v' | 'g' | 'G', Val::Float(v)) => go_float(*v, precision, 'g'),
        ('f' | 'F', Val::Float(v)) => go_float(*v, Some(precision.unwrap_or(6)), 'f'),
        ('e' | 'E', Val::Float(v)) => go_float(*v, Some(precision.unwrap_or(6)), 'e'),
        ('v' | 's', Val::Text(t)) => match precision {
            Some(p) => t.chars().take(p).collect(),
            None => t.clone(),
        },
        ('q', Val::Text(t)) => serde_json::to_string(t).expect("strings serialize"),
        ('d', Val::Text(_)) | ('d' | 's' | 'q', Val::Float(_)) | (_, _) => {
            return match arg {
                Val::Float(v) => format!("%!{verb}(float64={})", go_float(*v, None, 'g')),
                Val::Text(t) => format!("%!{verb}(string={t})"),
            }
        }
    };
    let body = if plus && !body.starts_with('-') && matches!(arg, Val::Float(_)) {
        format!("+{body}")
    } else {
        body
    };
    let width = width.unwrap_or(0);
    let length = body.chars().count();
    if length >= width {
        return body;
    }
    let pad = width - length;
    if left {
        format!("{body}{}", " ".repeat(pad))
    } else if zero && matches!(arg, Val::Float(_)) {
        let (sign, digits) = match body.strip_prefix(['-', '+']) {
            Some(rest) => (&body[..1], rest),
            None => ("", body.as_str()),
        };
        format!("{sign}{}{digits}", "0".repeat(pad))
    } else {
        format!("{}{body}", " ".repeat(pad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(action: &str, value: f64) -> String {
        let labels: BTreeMap<String, String> = [("instance".to_string(), "orin-1".to_string())]
            .into_iter()
            .collect();
        parse_action(action).unwrap().unwrap().render(&Data {
            value: Some(value),
            labels: &labels,
        })
    }

    #[test]
    fn numbers_print_as_go_prints_them() {
        assert_eq!(render("$value", 95.5), "95.5");
        assert_eq!(render("$value", 1e6), "1e+06");
        assert_eq!(render("$value", 123456.0), "123456");
        assert_eq!(render("$value", 0.0001), "0.0001");
        assert_eq!(render("$value", 0.00001), "1e-05");
        assert_eq!(render(".Value", f64::NAN), "NaN");
        assert_eq!(go_float(12345.0, Some(4), 'g'), "1.234e+04");
        assert_eq!(go_float(100.0, Some(4), 'g'), "100");
        assert_eq!(go_float(-2.5, Some(3), 'e'), "-2.500e+00");
    }

    #[test]
    fn prometheus_humanize_functions() {
        // The examples of Prometheus' and Grafana's template references.
        assert_eq!(render("humanize $value", 1234567.0), "1.235M");
        assert_eq!(render("$value | humanize1024", 1048576.0), "1Mi");
        assert_eq!(render("humanizeDuration $value", 899.99), "14m 59s");
        assert_eq!(render("$value | humanizePercentage", 0.1234567), "12.35%");
        assert_eq!(render("humanize $value", 0.0012), "1.2m");
        assert_eq!(render("humanize $value", 0.0), "0");
        assert_eq!(render("humanizeDuration $value", 0.25), "250ms");
        assert_eq!(render("humanizeDuration $value", 90061.0), "1d 1h 1m 1s");
        assert_eq!(render("humanizeDuration $value", 2.5), "2.5s");
        assert_eq!(render("humanize1024 $value", 512.0), "512");
    }

    #[test]
    fn printf_labels_and_pipelines() {
        assert_eq!(render("printf \"%.2f\" $value", 9.87654), "9.88");
        assert_eq!(render("$value | printf \"%5.1f%%\"", 9.96), " 10.0%");
        assert_eq!(
            render("printf \"%s on %s\" \"HighCpu\" .Labels.instance", 1.0),
            "HighCpu on orin-1"
        );
        assert_eq!(render("$labels.alertname", 1.0), "", "not a series label");
        assert_eq!(render("printf \"%d\" $value", 1.5), "%!d(float64=1.5)");
        assert_eq!(
            render("index $labels \"instance\" | toUpper", 0.0),
            "ORIN-1"
        );
        assert_eq!(render("$labels.missing", 0.0), "");
        assert_eq!(render("$externalLabels.cluster", 0.0), "");
        assert_eq!(render("\"up and down\" | title", 0.0), "Up And Down");
    }

    #[test]
    fn what_is_not_rendered_is_refused() {
        for action in [
            "if gt $value 80.0",
            "range $labels",
            "$x := 1",
            "query \"up\"",
            "end",
            "$labels",
            "humanize $value |",
            "\"open",
        ] {
            assert!(parse_action(action).is_err(), "{action}");
        }
        assert_eq!(parse_action("/* a note */").unwrap(), None);
    }
}
