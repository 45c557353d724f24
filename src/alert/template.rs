//! The `{{value}}` templates of alert summaries, descriptions and webhook bodies: parsed once at
//! load, so that a typo is a load error rather than a surprise in a notification.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What a placeholder stands for.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    Value,
    Threshold,
    Rule,
    Severity,
    Device,
    State,
    Summary,
    Description,
    Label(String),
    /// Every label as `a="1", b="2"`.
    Labels,
}

#[derive(Debug, Clone, PartialEq)]
enum Filter {
    None,
    /// Ratio times 100 with one decimal and a `%`.
    Percent,
    /// JSON string escaping without the quotes, for templates that build JSON bodies.
    Json,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(Field, Filter),
    /// An action of a Prometheus annotation, in Go's template syntax, and its text.
    Go(super::gotemplate::Pipeline, String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Template {
    parts: Vec<Part>,
}

/// The values a template is rendered with.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub rule: &'a str,
    pub severity: &'a str,
    pub device: &'a str,
    pub state: &'a str,
    pub summary: &'a str,
    pub description: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl Default for Context<'_> {
    fn default() -> Self {
        Context {
            value: None,
            threshold: None,
            rule: "",
            severity: "",
            device: "",
            state: "",
            summary: "",
            description: "",
            labels: &NO_LABELS,
        }
    }
}

impl Template {
    /// Parses `text`; `{{` opens a placeholder, `}}` closes it, and `{{{{` is a literal `{{`.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut literal = String::new();
        while let Some(open) = rest.find("{{") {
            literal.push_str(&rest[..open]);
            rest = &rest[open + 2..];
            if let Some(after) = rest.strip_prefix("{{") {
                literal.push_str("{{");
                rest = after;
                continue;
            }
            let close = rest
                .find("}}")
                .ok_or_else(|| format!("unclosed {{{{ in {text:?}"))?;
            let inner = rest[..close].trim();
            rest = &rest[close + 2..];
            let (name, filter) = match inner.split_once('|') {
                Some((name, filter)) => (name.trim(), filter.trim()),
                None => (inner, ""),
            };
            let filter = match filter {
                "" => Filter::None,
                "percent" => Filter::Percent,
                "json" => Filter::Json,
                other => {
                    return Err(format!(
                        "unknown filter {other:?} in {{{{{inner}}}}}: use percent or json"
                    ))
                }
            };
            let field = match name {
                "value" => Field::Value,
                "threshold" => Field::Threshold,
                "rule" => Field::Rule,
                "severity" => Field::Severity,
                "device" => Field::Device,
                "state" => Field::State,
                "summary" => Field::Summary,
                "description" => Field::Description,
                "labels" => Field::Labels,
                _ => match name.strip_prefix("labels.") {
                    Some(label) if !label.is_empty() => Field::Label(label.to_string()),
                    _ => return Err(format!(
                        "unknown placeholder {{{{{name}}}}}: use value, threshold, rule, severity, device, state, summary, description, labels or labels.NAME"
                    )),
                },
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Field(field, filter));
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// Parses a Prometheus annotation: Go's template syntax, `{{-` and `-}}` trimming the
    /// spaces beside them, and only the actions [`super::gotemplate`] renders.
    pub fn parse_prometheus(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut literal = String::new();
        while let Some(open) = rest.find("{{") {
            let mut before = &rest[..open];
            rest = &rest[open + 2..];
            // Go's trim markers are a dash with white space on its inner side.
            if let Some(after) = rest
                .strip_prefix('-')
                .filter(|a| a.starts_with(char::is_whitespace))
            {
                before = before.trim_end();
                rest = after;
            }
            literal.push_str(before);
            let close = rest
                .find("}}")
                .ok_or_else(|| format!("unclosed {{{{ in {text:?}"))?;
            let mut action = &rest[..close];
            rest = &rest[close + 2..];
            if let Some(kept) = action
                .strip_suffix('-')
                .filter(|a| a.ends_with(char::is_whitespace))
            {
                action = kept;
                rest = rest.trim_start();
            }
            if let Some(pipeline) = super::gotemplate::parse_action(action)? {
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Go(pipeline, format!("{{{{{action}}}}}")));
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    pub fn render(&self, context: &Context<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Go(pipeline, _) => out.push_str(&pipeline.render(&super::gotemplate::Data {
                    value: context.value,
                    labels: context.labels,
                })),
                Part::Field(field, filter) => {
                    let number = |v: f64| match filter {
                        Filter::Percent => format!("{:.1}%", v * 100.0),
                        _ => format_number(v),
                    };
                    let text = match field {
                        Field::Value => context.value.map_or_else(|| "none".into(), number),
                        Field::Threshold => context.threshold.map_or_else(|| "none".into(), number),
                        Field::Rule => context.rule.to_string(),
                        Field::Severity => context.severity.to_string(),
                        Field::Device => context.device.to_string(),
                        Field::State => context.state.to_string(),
                        Field::Summary => context.summary.to_string(),
                        Field::Description => context.description.to_string(),
                        Field::Label(name) => context.labels.get(name).cloned().unwrap_or_default(),
                        Field::Labels => {
                            let mut all = String::new();
                            for (i, (k, v)) in context.labels.iter().enumerate() {
                                if i > 0 {
                                    all.push_str(", ");
                                }
                                let _ = write!(all, "{k}={v:?}");
                            }
                            all
                        }
                    };
                    if *filter == Filter::Json {
                        let quoted = serde_json::to_string(&text).expect("strings serialize");
                        out.push_str(&quoted[1..quoted.len() - 1]);
                    } else {
                        out.push_str(&text);
                    }
                }
            }
        }
        out
    }
}

impl Template {
    /// The template in Prometheus' annotation syntax, for exporting rules: the value and
    /// labels as `$value` and `$labels`, the threshold written in. What has no equivalent in an
    /// alert's data (every label at once, the state) is left out.
    pub fn to_prometheus(&self, rule: &str, severity: &str, threshold: Option<f64>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Go(_, text) => out.push_str(text),
                Part::Field(field, filter) => {
                    let value = match filter {
                        Filter::Percent => "{{ $value | humanizePercentage }}",
                        _ => "{{ $value }}",
                    };
                    let text = match field {
                        Field::Value => value.to_string(),
                        Field::Threshold => threshold.map_or_else(String::new, |t| match filter {
                            Filter::Percent => format!("{:.1}%", t * 100.0),
                            _ => format_number(t),
                        }),
                        // Prometheus' $labels hold the series' labels only.
                        Field::Rule => rule.to_string(),
                        Field::Severity => severity.to_string(),
                        Field::Device => "{{ $labels.instance }}".into(),
                        Field::Label(name) => format!("{{{{ $labels.{name} }}}}"),
                        Field::Labels | Field::State | Field::Summary | Field::Description => {
                            String::new()
                        }
                    };
                    out.push_str(&text);
                }
            }
        }
        out.trim_end().to_string()
    }
}

/// A number as people read it: integers without a fraction, others with at most three decimals.
pub fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if value == value.trunc() && value.abs() < 1e15 {
        return format!("{}", value as i64);
    }
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fields_filters_and_literal_braces() {
        let labels: BTreeMap<String, String> =
            [("cpu".to_string(), "3".to_string())].into_iter().collect();
        let context = Context {
            value: Some(0.9321),
            threshold: Some(0.8),
            rule: "cpu_high",
            severity: "warning",
            device: "orin-1",
            labels: &labels,
            ..Context::default()
        };
        let t = Template::parse("{{rule}} core {{ labels.cpu }} at {{value|percent}} (> {{threshold}}) {{{{x}} {{labels}}").unwrap();
        assert_eq!(
            t.render(&context),
            "cpu_high core 3 at 93.2% (> 0.8) {{x}} cpu=\"3\""
        );
        let json = Template::parse("{\"text\": \"{{labels.cpu|json}}\"}").unwrap();
        let quoting: BTreeMap<String, String> = [("cpu".to_string(), "a\"b\n".to_string())]
            .into_iter()
            .collect();
        let rendered = json.render(&Context {
            labels: &quoting,
            ..context.clone()
        });
        let parsed: serde_json::Value = serde_json::from_str(&rendered).unwrap();
        assert_eq!(parsed["text"], "a\"b\n");
    }

    #[test]
    fn mistakes_are_load_errors() {
        assert!(Template::parse("{{valeu}}").unwrap_err().contains("valeu"));
        assert!(Template::parse("{{value").unwrap_err().contains("unclosed"));
        assert!(Template::parse("{{value|pct}}")
            .unwrap_err()
            .contains("pct"));
        assert!(Template::parse("{{labels.}}").is_err());
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(format_number(3.0), "3");
        assert_eq!(format_number(0.12345), "0.123");
        assert_eq!(format_number(2.5), "2.5");
        assert_eq!(format_number(-1.0), "-1");
    }
}
