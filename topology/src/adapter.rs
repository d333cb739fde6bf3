//! Sources that page through a public API: what a user asks for, in an
//! ingest stage's `source:` or on the command line (`--source ctgov:QUERY`).
//!
//! ```
//! use medkg_topology::{AdapterKind, AdapterSpec};
//!
//! let spec: AdapterSpec = "ctgov:lung cancer".parse().unwrap();
//! assert_eq!((spec.kind, spec.query.as_str()), (AdapterKind::Ctgov, "lung cancer"));
//! let yaml = serde_json::json!({"adapter": "pubmed", "query": "asthma[mh]", "since": "2024-01-31"});
//! let spec = AdapterSpec::from_value(&yaml).unwrap();
//! assert_eq!(spec.since.as_deref(), Some("2024-01-31"));
//! assert!("gopher:x".parse::<AdapterSpec>().is_err());
//! ```

use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;

/// Which public API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdapterKind {
    /// ClinicalTrials.gov API v2 (`/api/v2/studies`).
    Ctgov,
    /// PubMed E-utilities (`esearch` with history, then `efetch`).
    Pubmed,
    /// OpenAlex (`/works`, cursor paging).
    OpenAlex,
    /// Unpaywall (`/v2/{doi}`): DOIs from a file to open-access PDF URLs.
    Unpaywall,
}

impl AdapterKind {
    /// Every adapter, by its name.
    pub const ALL: [AdapterKind; 4] =
        [AdapterKind::Ctgov, AdapterKind::Pubmed, AdapterKind::OpenAlex, AdapterKind::Unpaywall];

    /// Its name in `--source NAME:...` and `adapter: NAME`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterKind::Ctgov => "ctgov",
            AdapterKind::Pubmed => "pubmed",
            AdapterKind::OpenAlex => "openalex",
            AdapterKind::Unpaywall => "unpaywall",
        }
    }

    /// The public API (what `base_url` defaults to).
    pub fn default_base_url(self) -> &'static str {
        match self {
            AdapterKind::Ctgov => "https://clinicaltrials.gov",
            AdapterKind::Pubmed => "https://eutils.ncbi.nlm.nih.gov/entrez/eutils",
            AdapterKind::OpenAlex => "https://api.openalex.org",
            AdapterKind::Unpaywall => "https://api.unpaywall.org",
        }
    }

    /// Records a page asks for unless `page_size` says otherwise, and the most the API serves.
    pub fn page_sizes(self) -> (u32, u32) {
        match self {
            // (Few large pages: the API asks for about 50 requests a minute.)
            AdapterKind::Ctgov => (1000, 1000),
            AdapterKind::Pubmed => (200, 10_000),
            AdapterKind::OpenAlex => (200, 200),
            AdapterKind::Unpaywall => (1, 1),
        }
    }

    /// What `query` means for this adapter (for messages).
    fn query_is(self) -> &'static str {
        match self {
            AdapterKind::Ctgov => "a search (query.term) or query.*/filter.* parameters",
            AdapterKind::Pubmed => "a PubMed search term",
            AdapterKind::OpenAlex => "an OpenAlex filter",
            AdapterKind::Unpaywall => "a file of DOIs, one a line",
        }
    }
}

impl FromStr for AdapterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AdapterKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            format!("unknown adapter `{s}`: one of {}", AdapterKind::ALL.map(AdapterKind::as_str).join(", "))
        })
    }
}

/// What an adapter source pages through, and how politely.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSpec {
    /// Which API.
    pub kind: AdapterKind,
    /// The search (ctgov, pubmed), the filter (openalex) or the DOI file (unpaywall).
    pub query: String,
    /// Only records new or updated on or after this day (`YYYY-MM-DD`).
    pub since: Option<String>,
    /// The API's root (default: the public API).
    pub base_url: Option<String>,
    /// Records a page asks for (default and maximum: [`AdapterKind::page_sizes`]).
    pub page_size: Option<u32>,
    /// Keep polling for new and updated records (until SIGTERM).
    pub follow: bool,
    /// Time between two passes when following (default 10 minutes).
    pub interval: Duration,
    /// Contact address the APIs ask for (`email` for E-utilities and
    /// Unpaywall, `mailto` for OpenAlex).
    pub email: Option<String>,
    /// An API key (E-utilities: 10 requests/s instead of 3; OpenAlex).
    pub api_key: Option<String>,
    /// The `tool` name E-utilities asks for (default `medkg`).
    pub tool: Option<String>,
}

impl AdapterSpec {
    /// The keys an ingest stage's `source:` accepts.
    pub const KEYS: &'static [&'static str] =
        &["adapter", "query", "since", "base_url", "page_size", "follow", "interval", "email", "api_key", "tool"];
    /// The default time between two passes.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);

    /// A spec of `kind` for `query`, every other setting at its default.
    pub fn new(kind: AdapterKind, query: impl Into<String>) -> AdapterSpec {
        AdapterSpec {
            kind,
            query: query.into(),
            since: None,
            base_url: None,
            page_size: None,
            follow: false,
            interval: Self::DEFAULT_INTERVAL,
            email: None,
            api_key: None,
            tool: None,
        }
    }

    /// The source's name in checkpoints, positions and dead letters.
    pub fn name(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.query)
    }

    /// What its checkpoint is kept under: the source at its API (a cursor
    /// of one server means nothing to another, a mirror say).
    pub fn checkpoint_name(&self) -> String {
        format!("{}@{}", self.name(), self.base())
    }

    /// The API root, without a trailing `/`.
    pub fn base(&self) -> &str {
        self.base_url.as_deref().unwrap_or(self.kind.default_base_url()).trim_end_matches('/')
    }

    /// Records a page asks for.
    pub fn page_size(&self) -> u32 {
        self.page_size.unwrap_or(self.kind.page_sizes().0)
    }

    /// Reads an ingest stage's `source:` object.
    pub fn from_value(value: &Value) -> Result<AdapterSpec, String> {
        let Some(object) = value.as_object() else {
            return Err("expected an object such as { adapter: ctgov, query: \"lung cancer\" }".into());
        };
        if let Some(unknown) = object.keys().find(|k| !Self::KEYS.contains(&k.as_str())) {
            return Err(format!("unknown key `{unknown}` in source (known: {})", Self::KEYS.join(", ")));
        }
        let text = |key: &str| -> Result<Option<String>, String> {
            match object.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
                Some(other) => Err(format!("source.{key}: expected a non-empty string, found {other}")),
            }
        };
        let kind: AdapterKind = text("adapter")?.ok_or("source needs `adapter`")?.parse()?;
        let query = text("query")?.ok_or_else(|| format!("source needs `query` ({})", kind.query_is()))?;
        let mut spec = AdapterSpec::new(kind, query);
        spec.since = text("since")?;
        spec.base_url = text("base_url")?;
        spec.email = text("email")?;
        spec.api_key = text("api_key")?;
        spec.tool = text("tool")?;
        if let Some(size) = object.get("page_size") {
            let size = size.as_u64().filter(|n| *n >= 1).ok_or("source.page_size: expected an integer ≥ 1")?;
            spec.page_size = Some(u32::try_from(size).unwrap_or(u32::MAX));
        }
        if let Some(follow) = object.get("follow") {
            spec.follow = follow.as_bool().ok_or("source.follow: expected true or false")?;
        }
        if let Some(interval) = text("interval")? {
            spec.interval = crate::parse_duration(&interval)
                .ok_or_else(|| format!("source.interval: `{interval}` is not a duration such as 30s or 10m"))?;
        }
        spec.check()?;
        Ok(spec)
    }

    /// What is wrong with the spec, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.query.trim().is_empty() || self.query.len() > 4096 {
            return Err(format!(
                "{}: the query must be 1 to 4096 bytes ({})",
                self.kind.as_str(),
                self.kind.query_is()
            ));
        }
        if self.query.chars().any(char::is_control) {
            return Err(format!("{}: the query has control characters", self.kind.as_str()));
        }
        if let Some(since) = &self.since {
            if !is_day(since) {
                return Err(format!("since: `{since}` is not a day (YYYY-MM-DD)"));
            }
        }
        if let Some(base) = &self.base_url {
            let rest = base.strip_prefix("https://").or_else(|| base.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) || base.contains(['?', '#', ' ']) {
                return Err(format!("base_url: `{base}` is not an http(s) URL without query or fragment"));
            }
        }
        let (_, most) = self.kind.page_sizes();
        if let Some(size) = self.page_size {
            if size == 0 || size > most {
                return Err(format!("page_size: {} serves 1 to {most} records a page", self.kind.as_str()));
            }
        }
        if self.interval < Duration::from_secs(1) {
            return Err("interval: at least 1s between passes".into());
        }
        for (key, value) in [("email", &self.email), ("api_key", &self.api_key), ("tool", &self.tool)] {
            if value.as_ref().is_some_and(|v| v.len() > 256 || v.chars().any(|c| c.is_control() || c == ' ')) {
                return Err(format!("{key}: at most 256 characters, no spaces or control characters"));
            }
        }
        Ok(())
    }
}

/// Whether `text` is a calendar day `YYYY-MM-DD` (months and days in range).
pub fn is_day(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let [year, month, day] = parts[..] else { return false };
    let number = |s: &str, len: usize| {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u32>().ok()).flatten()
    };
    matches!((number(year, 4), number(month, 2), number(day, 2)), (Some(_), Some(1..=12), Some(1..=31)))
}

impl FromStr for AdapterSpec {
    type Err = String;

    /// `ctgov:QUERY`, `pubmed:QUERY`, `openalex:FILTER` or `unpaywall:FILE`.
    fn from_str(text: &str) -> Result<AdapterSpec, String> {
        let (kind, query) = text.split_once(':').ok_or_else(|| format!("`{text}` is not ADAPTER:QUERY"))?;
        let spec = AdapterSpec::new(kind.parse()?, query.trim());
        spec.check()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked() {
        let spec = |v: Value| AdapterSpec::from_value(&v);
        assert!(spec(serde_json::json!({"adapter": "openalex", "query": "concepts.id:C71924100", "page_size": 200, "follow": true, "interval": "1h"})).is_ok());
        for (bad, says) in [
            (serde_json::json!({"adapter": "ctgov"}), "needs `query`"),
            (serde_json::json!({"adapter": "ctgov", "query": "x", "colour": 1}), "unknown key `colour`"),
            (serde_json::json!({"adapter": "ctgov", "query": "x", "since": "2024-13-01"}), "not a day"),
            (serde_json::json!({"adapter": "ctgov", "query": "x", "base_url": "ftp://x"}), "base_url"),
            (serde_json::json!({"adapter": "ctgov", "query": "x", "base_url": "http://"}), "base_url"),
            (serde_json::json!({"adapter": "openalex", "query": "x", "page_size": 201}), "1 to 200"),
            (serde_json::json!({"adapter": "ctgov", "query": "x", "interval": "1ms"}), "at least 1s"),
            (serde_json::json!({"adapter": "ctgov", "query": "x", "email": "a b"}), "email"),
            (serde_json::json!({"adapter": "ftp", "query": "x"}), "unknown adapter"),
            (serde_json::json!("ctgov:x"), "expected an object"),
        ] {
            let error = spec(bad.clone()).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        assert!("pubmed:\u{7}".parse::<AdapterSpec>().is_err());
        assert!("pubmed:".parse::<AdapterSpec>().is_err());
        assert!(is_day("2024-02-29") && !is_day("24-02-29") && !is_day("2024-2-29") && !is_day("2024-02-29x"));
    }
}
