//! The operator UI: one HTML page, its stylesheet and script, compiled
//! into the binary (no CDN, works offline). It reads the JSON API like
//! any client, with the token the operator types in (kept in the
//! browser's local storage).

/// `/`.
pub const INDEX_HTML: &str = include_str!("../ui/index.html");
/// `/ui/app.css`.
pub const APP_CSS: &str = include_str!("../ui/app.css");
/// `/ui/app.js`.
pub const APP_JS: &str = include_str!("../ui/app.js");
/// `/v1/openapi.yaml`: the API's description.
pub const OPENAPI_YAML: &str = include_str!("../../docs/openapi.yaml");
