//! The bundled front-end, embedded at build time. `web/dist/` is committed, so that building
//! the crate needs neither Node.js nor the network; `npm run bundle` in `web/frontend/` makes
//! it anew from the sources, and a test (`tests/it/dashboard.rs`) checks that it is exactly
//! what they build to.

pub const INDEX_HTML: &str = include_str!("../dist/index.html");
pub const APP_JS: &str = include_str!("../dist/app.js");
pub const APP_CSS: &str = include_str!("../dist/app.css");

/// A page with requests its script will make preloaded, so that they start while the browser
/// still fetches the script (its `fetch` of the same address takes the answer).
fn with_preloads(paths: &[&str]) -> String {
    let links: String = paths
        .iter()
        .map(|path| {
            format!(
                "<link rel=\"preload\" href=\"{path}\" as=\"fetch\" crossorigin=\"anonymous\">\n"
            )
        })
        .collect();
    INDEX_HTML.replacen("</head>", &format!("{links}</head>"), 1)
}

/// Any page behind the login: each asks who is logged in first.
pub fn app_html() -> &'static str {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PAGE.get_or_init(|| with_preloads(&["/api/me"]))
}

/// The page at `/`, the fleet, which also asks for the devices and the alerts at once. Other
/// pages would waste those two.
pub fn fleet_html() -> &'static str {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PAGE.get_or_init(|| with_preloads(&["/api/me", "/api/devices", "/api/alerts"]))
}

#[cfg(test)]
mod tests {
    fn preloaded(page: &str) -> Vec<&str> {
        let head = &page[..page.find("</head>").unwrap()];
        head.split("<link rel=\"preload\" href=\"")
            .skip(1)
            .map(|link| &link[..link.find('"').unwrap()])
            .collect()
    }

    #[test]
    fn pages_preload_the_requests_their_script_makes_first() {
        assert_eq!(
            preloaded(super::fleet_html()),
            ["/api/me", "/api/devices", "/api/alerts"]
        );
        assert_eq!(preloaded(super::app_html()), ["/api/me"]);
        assert!(preloaded(super::INDEX_HTML).is_empty());
    }
}
