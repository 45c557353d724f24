//! The bundled front-end, embedded at build time (`build.rs`).

pub const INDEX_HTML: &str = include_str!(concat!(env!("OUT_DIR"), "/dist/index.html"));
pub const APP_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/dist/app.js"));
pub const APP_CSS: &str = include_str!(concat!(env!("OUT_DIR"), "/dist/app.css"));
