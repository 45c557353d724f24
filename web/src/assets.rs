//! The bundled front-end, embedded at build time. `web/dist/` is committed, so that building
//! the crate needs neither Node.js nor the network; `npm run bundle` in `web/frontend/` makes
//! it anew from the sources, and a test (`tests/it/dashboard.rs`) checks that it is exactly
//! what they build to.

pub const INDEX_HTML: &str = include_str!("../dist/index.html");
pub const APP_JS: &str = include_str!("../dist/app.js");
pub const APP_CSS: &str = include_str!("../dist/app.css");
