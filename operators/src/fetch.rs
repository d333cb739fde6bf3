//! `fetch`: HTTP GET of a URL a record names; the body becomes the record.
//!
//! A record is either a JSON object whose `url_field` (default `url`) holds
//! the URL, with the document's id in `id_field` (default `id`, optional),
//! or a bare `http(s)://` line. The body replaces the record, so `parse`
//! reads what the URL served (a CT.gov study, an efetch XML page...).
//!
//! Who may be called: with `allow_hosts` set, only those hosts (`*.x.org`
//! matches subdomains). Loopback, private, link-local and unspecified
//! addresses (and `localhost`) are refused unless they are listed, so a
//! record cannot make medkg probe its own network. Every redirect is
//! checked by the same rule. Bodies above `max_bytes` are refused while
//! they stream in.
//!
//! Failures carry their class: timeouts, connection errors, 408, 429 and
//! 5xx are transient (the stage's policy retries them); other 4xx, refused
//! hosts, bad URLs and oversized bodies are permanent.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub use reqwest::Url;

use crate::StageError;

/// The `fetch` stage's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchConfig {
    /// The record field holding the URL.
    pub url_field: String,
    /// The record field holding the document id (for the ledger and events).
    pub id_field: String,
    /// Largest body accepted.
    pub max_bytes: usize,
    /// Hosts that may be called (empty: any public host).
    pub allow_hosts: Vec<String>,
    /// Requests in flight per worker.
    pub max_in_flight: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            url_field: "url".into(),
            id_field: "id".into(),
            max_bytes: 16 << 20,
            allow_hosts: Vec::new(),
            max_in_flight: 16,
        }
    }
}

/// What a record asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    /// The URL.
    pub url: Url,
    /// The document id the record names, if any.
    pub id: Option<String>,
}

/// Reads a record: a JSON object with the URL field, or a bare URL.
pub fn request_of(config: &FetchConfig, record: &[u8]) -> Result<FetchRequest, StageError> {
    let text = std::str::from_utf8(record)
        .map_err(|e| StageError::permanent("bad_utf8", format!("record is not UTF-8: {e}")))?
        .trim();
    let (url, id) = if text.starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| StageError::permanent("bad_json", format!("record: {e}")))?;
        let url = value.get(&config.url_field).and_then(|v| v.as_str()).ok_or_else(|| {
            StageError::permanent("missing_url", format!("record has no string field `{}`", config.url_field))
        })?;
        let id = value.get(&config.id_field).and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        (url.to_string(), id)
    } else {
        (text.to_string(), None)
    };
    let url = Url::parse(&url).map_err(|e| StageError::permanent("bad_url", format!("`{url}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(StageError::permanent("bad_url", format!("`{url}`: only http and https URLs are fetched")));
    }
    Ok(FetchRequest { url, id })
}

/// Which hosts may be called.
#[derive(Clone, Debug, Default)]
pub struct HostRules {
    allow: Vec<String>,
}

impl HostRules {
    /// Rules from an allowlist (empty: any public host).
    pub fn new(allow: &[String]) -> HostRules {
        HostRules { allow: allow.iter().map(|h| h.trim().to_ascii_lowercase()).collect() }
    }

    /// Why `url` may not be called, if it may not.
    pub fn refusal(&self, url: &Url) -> Option<String> {
        let Some(host) = url.host_str() else {
            return Some(format!("`{url}` has no host"));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let listed = self.allow.iter().any(|a| match a.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => *a == host,
        });
        if listed {
            return None;
        }
        if !self.allow.is_empty() {
            return Some(format!("host `{host}` is not in allow_hosts"));
        }
        let internal = host == "localhost"
            || host.ends_with(".localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| match ip {
                IpAddr::V4(v4) => {
                    v4.is_loopback()
                        || v4.is_private()
                        || v4.is_link_local()
                        || v4.is_unspecified()
                        || v4.is_broadcast()
                }
                IpAddr::V6(v6) => {
                    v6.is_loopback()
                        || v6.is_unspecified()
                        || (v6.segments()[0] & 0xfe00) == 0xfc00
                        || (v6.segments()[0] & 0xffc0) == 0xfe80
                }
            });
        internal.then(|| format!("host `{host}` is loopback or private; list it in allow_hosts to call it"))
    }
}

/// What a GET brought back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The body.
    pub body: Vec<u8>,
    /// Its `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The URL after redirects.
    pub url: Url,
}

/// An HTTP client bound to a stage's rules.
#[derive(Clone, Debug)]
pub struct Fetcher {
    client: reqwest::Client,
    rules: Arc<HostRules>,
    max_bytes: usize,
}

impl Fetcher {
    /// A client for `config` (timeouts come from the stage's policy).
    pub fn new(config: &FetchConfig) -> Result<Fetcher, StageError> {
        let rules = Arc::new(HostRules::new(&config.allow_hosts));
        let check = rules.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                attempt.error("more than 10 redirects")
            } else if let Some(why) = check.refusal(attempt.url()) {
                attempt.error(format!("redirect refused: {why}"))
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .redirect(redirects)
            .user_agent(concat!("medkg/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| StageError::unavailable("http_client", format!("cannot build the HTTP client: {e}")))?;
        Ok(Fetcher { client, rules, max_bytes: config.max_bytes })
    }

    /// One GET (one attempt; the caller's policy retries).
    pub async fn get(&self, url: &Url) -> Result<Fetched, StageError> {
        if let Some(why) = self.rules.refusal(url) {
            return Err(StageError::permanent("host_refused", why));
        }
        let mut response = self.client.get(url.clone()).send().await.map_err(|e| request_error(url, &e))?;
        let status = response.status();
        if !status.is_success() {
            let message = format!("GET {url}: HTTP {status}");
            let kind = format!("http_{}", status.as_u16());
            let transient = status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
            return Err(if transient {
                let after = response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok());
                StageError::transient(&kind, message).with_retry_after(after.and_then(retry_after))
            } else {
                StageError::permanent(&kind, message)
            });
        }
        let too_large = |n: u64| {
            StageError::permanent(
                "too_large",
                format!("GET {url}: body of {n}+ bytes exceeds max_bytes ({})", self.max_bytes),
            )
        };
        if let Some(length) = response.content_length() {
            if length > self.max_bytes as u64 {
                return Err(too_large(length));
            }
        }
        let content_type =
            response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let final_url = response.url().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| request_error(url, &e))? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(too_large((body.len() + chunk.len()) as u64));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched { body, content_type, url: final_url })
    }
}

/// A `Retry-After` value: seconds, or an HTTP date (capped at an hour).
pub fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let after = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(after.min(Duration::from_secs(3600)))
}

/// Classifies a failed request.
fn request_error(url: &Url, e: &reqwest::Error) -> StageError {
    // The full chain: reqwest's own message hides the cause.
    let mut message = format!("GET {url}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if e.is_redirect() {
        StageError::permanent("redirect_refused", message)
    } else if e.is_timeout() {
        StageError::transient("timeout", message)
    } else if e.is_connect() {
        StageError::transient("connect", message)
    } else if e.is_builder() {
        StageError::permanent("bad_url", message)
    } else {
        StageError::transient("http_error", message)
    }
}

/// A name for the fetched body that helps `parse` sniff its format.
pub fn body_name(fetched: &Fetched) -> Option<String> {
    let from_type = fetched.content_type.as_deref().and_then(|t| {
        let t = t.to_ascii_lowercase();
        if t.contains("json") {
            Some("fetched.json")
        } else if t.contains("xml") {
            Some("fetched.xml")
        } else {
            None
        }
    });
    let last = fetched.url.path_segments().and_then(|mut s| s.next_back()).filter(|s| s.contains('.'));
    last.map(str::to_string).or(from_type.map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn records_name_their_url_and_id() {
        let config = FetchConfig::default();
        let r = request_of(&config, br#"{"id":"nct:NCT01","url":"https://clinicaltrials.gov/api/v2/studies/NCT01"}"#)
            .unwrap();
        assert_eq!((r.id.as_deref(), r.url.host_str()), (Some("nct:NCT01"), Some("clinicaltrials.gov")));
        assert_eq!(request_of(&config, b"https://example.org/a.xml\n").unwrap().id, None);
        for (bad, kind) in [
            (&b"{\"id\":1}"[..], "missing_url"),
            (b"{\"url\":", "bad_json"),
            (b"ftp://example.org/x", "bad_url"),
            (b"not a url", "bad_url"),
            (b"\xff\xfe", "bad_utf8"),
        ] {
            assert_eq!(request_of(&config, bad).unwrap_err().kind, kind, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after("86400"), Some(Duration::from_secs(3600)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn internal_hosts_need_the_allowlist() {
        let open = HostRules::new(&[]);
        for internal in [
            "http://127.0.0.1:8080/",
            "http://localhost/",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://0.0.0.0/",
        ] {
            assert!(open.refusal(&url(internal)).is_some(), "{internal}");
        }
        assert_eq!(open.refusal(&url("https://eutils.ncbi.nlm.nih.gov/x")), None);
        let listed = HostRules::new(&["127.0.0.1".into(), "*.nih.gov".into()]);
        assert_eq!(listed.refusal(&url("http://127.0.0.1:9/")), None);
        assert_eq!(listed.refusal(&url("https://eutils.ncbi.nlm.nih.gov/x")), None);
        assert!(listed.refusal(&url("https://example.org/")).is_some());
        assert!(listed.refusal(&url("https://nih.gov.evil.org/")).is_some());
    }
}
