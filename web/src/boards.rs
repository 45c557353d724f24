//! Boards: named lists of explorer queries pinned as panels, kept by the hub, exported and
//! imported as the JSON `GET /api/boards/{name}` answers. Every field is checked here, before the
//! hub stores anything: a board is a document people paste in from elsewhere.

use serde::{Deserialize, Serialize};

use crate::WebError;

/// The most boards a hub keeps, and panels a board holds: enough for people, bounded for an
/// API that anyone with an admin token can write to.
pub const MAX_BOARDS: usize = 200;
pub const MAX_PANELS: usize = 50;
const MAX_QUERY: usize = 4096;
const MAX_TITLE: usize = 200;

/// The ranges a panel may show, as the explorer offers them.
pub const RANGES: [&str; 5] = ["15m", "1h", "6h", "24h", "7d"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A chart over the panel's range.
    Range,
    /// The values now, as a table.
    Instant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Panel {
    pub title: String,
    /// PromQL.
    pub query: String,
    pub mode: Mode,
    #[serde(default = "default_range")]
    pub range: String,
}

fn default_range() -> String {
    "1h".into()
}

/// A board as stored and as exported: importing it elsewhere takes the same document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Board {
    pub name: String,
    pub panels: Vec<Panel>,
    /// Set by the hub on each change; ignored in an import.
    #[serde(default)]
    pub updated_ms: i64,
    #[serde(default)]
    pub updated_by: String,
}

/// What `PUT /api/boards/{name}` takes: a board (an export, or one made in the page); its name
/// is the path's.
#[derive(Debug, Clone, Deserialize)]
pub struct BoardRequest {
    pub panels: Vec<Panel>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub updated_ms: Option<i64>,
    #[serde(default)]
    pub updated_by: Option<String>,
}

/// A board's name: what people read and what a URL carries.
pub fn check_name(name: &str) -> Result<(), WebError> {
    let fine = !name.trim().is_empty()
        && name.chars().count() <= 64
        && name == name.trim()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'));
    if fine {
        Ok(())
    } else {
        Err(WebError::BadRequest(format!(
            "name {:?}: 1 to 64 letters, digits, spaces, '-', '_' or '.', not starting or ending \
             with a space",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// Checks every panel, naming the first that is wrong; the board as the hub keeps it.
pub fn board(name: &str, request: BoardRequest, by: &str, now_ms: i64) -> Result<Board, WebError> {
    check_name(name)?;
    if request.panels.len() > MAX_PANELS {
        return Err(WebError::BadRequest(format!(
            "panels: at most {MAX_PANELS}"
        )));
    }
    for (i, panel) in request.panels.iter().enumerate() {
        let bad = |what: String| Err(WebError::BadRequest(format!("panels[{i}].{what}")));
        if panel.title.chars().count() > MAX_TITLE || panel.title.chars().any(char::is_control) {
            return bad(format!("title: at most {MAX_TITLE} printable characters"));
        }
        if panel.query.trim().is_empty() || panel.query.len() > MAX_QUERY {
            return bad(format!("query: 1 to {MAX_QUERY} bytes"));
        }
        if let Err(error) = outpost_storage::promql::parse(&panel.query) {
            return bad(format!("query: {error}"));
        }
        if !RANGES.contains(&panel.range.as_str()) {
            return bad(format!("range: one of {}", RANGES.join(", ")));
        }
    }
    Ok(Board {
        name: name.to_string(),
        panels: request.panels,
        updated_ms: now_ms,
        updated_by: by.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<BoardRequest, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn an_export_imports_as_it_is_and_every_mistake_is_named() {
        let exported = board(
            "Site north",
            request(r#"{"panels":[{"title":"GPU","query":"max by (instance) (jetson_gpu_load_ratio)","mode":"range","range":"6h"}]}"#)
                .unwrap(),
            "ada",
            7,
        )
        .unwrap();
        let text = serde_json::to_string(&exported).unwrap();
        let again = board("Site north", request(&text).unwrap(), "bob", 9).unwrap();
        assert_eq!(again.panels, exported.panels);
        assert_eq!((again.updated_by.as_str(), again.updated_ms), ("bob", 9));

        let cases = [
            (
                r#"{"panels":[{"title":"x","query":"sum(","mode":"range"}]}"#,
                "panels[0].query",
            ),
            (
                r#"{"panels":[{"title":"x","query":"up","mode":"range","range":"1y"}]}"#,
                "panels[0].range",
            ),
            (
                r#"{"panels":[{"title":"x","query":"","mode":"instant"}]}"#,
                "panels[0].query",
            ),
            (
                r#"{"panels":[{"title":"a\u0007","query":"up","mode":"instant"}]}"#,
                "panels[0].title",
            ),
        ];
        for (json, named) in cases {
            let error = board("b", request(json).unwrap(), "ada", 0)
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{json}: {error}");
        }
        assert!(request(r#"{"panels":[{"title":"x","query":"up","mode":"sideways"}]}"#).is_err());
        assert!(
            request(r#"{"panels":[{"title":"x","query":"up","mode":"range","script":"x"}]}"#)
                .is_err()
        );
        let many = format!(
            r#"{{"panels":[{}]}}"#,
            vec![r#"{"title":"x","query":"up","mode":"range"}"#; MAX_PANELS + 1].join(",")
        );
        assert!(board("b", request(&many).unwrap(), "ada", 0).is_err());
        for name in ["", " x", "x ", "a/b", "../etc", &"x".repeat(65), "a\nb"] {
            assert!(check_name(name).is_err(), "{name:?}");
        }
        assert!(
            check_name("Orin fleet – north").is_err(),
            "a dash that is not '-'"
        );
        assert!(check_name("Orin fleet north_2.1").is_ok());
    }
}
