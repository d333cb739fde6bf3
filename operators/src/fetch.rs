//! `fetch`: HTTP GET of a URL a record names; the body becomes the record.
//!
//! A record is either a JSON object whose `url_field` (default `url`) holds
//! the URL, with the document's id in `id_field` (default `id`, optional),
//! or a bare `http(s)://` line. The body replaces the record, so `parse`
//! reads what the URL served (a CT.gov study, an efetch XML page...).
//!
//! Who may be called (see [`medkg_topology::hosts`]): with `allow_hosts`
//! set, only the hosts it names. Whatever the list, medkg connects only to
//! public addresses, unless an address or CIDR range is listed: an IP
//! literal in any spelling (`[::ffff:7f00:1]`, `2130706433`) is checked as
//! the address it is, and a name is checked by every address it resolves
//! to *when the connection is made* (a resolver of medkg's own), so a name
//! that resolves to 127.0.0.1, or is rebound to it between two lookups,
//! reaches nothing. Every redirect passes the same checks, and no proxy
//! from the environment is used. Bodies above `max_bytes` are refused while
//! they stream in.
//!
//! Failures carry their class: timeouts, connection errors, 408, 429 and
//! 5xx are transient (the stage's policy retries them); other 4xx, refused
//! hosts, bad URLs and oversized bodies are permanent.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use medkg_topology::hosts::{self, AllowEntry};
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
        if let Some(id) = &id {
            crate::check_doc_id(id)?;
        }
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

/// Which hosts and addresses may be called.
#[derive(Clone, Debug, Default)]
pub struct HostRules {
    allow: Vec<AllowEntry>,
}

impl HostRules {
    /// Rules from an allowlist (empty: any public host); entries are
    /// checked as `validate` checks them.
    pub fn new(allow: &[String]) -> Result<HostRules, StageError> {
        let allow = allow
            .iter()
            .map(|entry| AllowEntry::parse(entry))
            .collect::<Result<_, _>>()
            .map_err(|e| StageError::unavailable("bad_config", e))?;
        Ok(HostRules { allow })
    }

    /// Why `url` may not be called, if it may not (from its host as written;
    /// the addresses a name resolves to are checked by [`HostRules::address_refusal`]).
    pub fn refusal(&self, url: &Url) -> Option<String> {
        match url.host() {
            None => Some(format!("`{url}` has no host")),
            Some(url::Host::Ipv4(v4)) => self.literal_refusal(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => self.literal_refusal(IpAddr::V6(v6)),
            Some(url::Host::Domain(name)) => {
                let name = name.to_ascii_lowercase();
                let name = name.strip_suffix('.').unwrap_or(&name);
                let listed = self.allow.is_empty() || self.allow.iter().any(|a| a.matches_name(name));
                (!listed).then(|| format!("host `{name}` is not in allow_hosts"))
            }
        }
    }

    /// Why `ip` (an address `host` is, or resolved to) may not be connected
    /// to: it is not public and no listed range holds it, or the list names
    /// hosts and this address is not among them.
    pub fn address_refusal(&self, host: &str, ip: IpAddr) -> Option<String> {
        let ip = hosts::canonical(ip);
        if self.allow.iter().any(|a| a.contains(ip)) {
            return None;
        }
        if !hosts::is_public(ip) {
            return Some(format!(
                "host `{host}` is {ip}, a loopback, private or reserved address; list the address or its range in allow_hosts to call it"
            ));
        }
        None
    }

    /// Why an address written as a URL's host may not be called: it must
    /// be listed (when the list is not empty) and public or in a listed range.
    fn literal_refusal(&self, ip: IpAddr) -> Option<String> {
        let ip = hosts::canonical(ip);
        if !self.allow.is_empty() && !self.allow.iter().any(|a| a.contains(ip)) {
            return Some(format!("host `{ip}` is not in allow_hosts"));
        }
        self.address_refusal(&ip.to_string(), ip)
    }
}

/// Resolves names for the HTTP client and keeps only the addresses the
/// rules allow, at connect time: what DNS answers then is what is checked.
struct CheckedResolver {
    rules: Arc<HostRules>,
    /// Fixed answers for some names, checked like any others (tests).
    fixed: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (rules, fixed) = (self.rules.clone(), self.fixed.clone());
        let host = name.as_str().to_ascii_lowercase();
        Box::pin(async move {
            let found: Vec<IpAddr> = match fixed.get(host.trim_end_matches('.')) {
                Some(ips) => ips.clone(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.map(|a| a.ip()).collect(),
            };
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|ip| match rules.address_refusal(&host, *ip) {
                    Some(why) => {
                        refused.get_or_insert(why);
                        false
                    }
                    None => true,
                })
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if allowed.is_empty() {
                // Every address refused: permanent. No address at all: a DNS
                // hiccup, left to the policy's retries like any connect error.
                return Err(match refused {
                    Some(why) => Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>,
                    None => Box::new(std::io::Error::other(format!("host `{host}` resolves to no address"))),
                });
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A connection the rules refused (found in a request error's causes).
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

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
        Fetcher::with_fixed_hosts(config, HashMap::new())
    }

    /// A client whose resolver answers `fixed` names with the given
    /// addresses (like `/etc/hosts` entries), checked like any others.
    pub fn with_fixed_hosts(config: &FetchConfig, fixed: HashMap<String, Vec<IpAddr>>) -> Result<Fetcher, StageError> {
        let rules = Arc::new(HostRules::new(&config.allow_hosts)?);
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
        let resolver = CheckedResolver { rules: rules.clone(), fixed: Arc::new(fixed) };
        let client = reqwest::Client::builder()
            .redirect(redirects)
            .dns_resolver(Arc::new(resolver))
            .no_proxy()
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
    let refused = std::iter::successors(std::error::Error::source(e), |c| c.source()).any(|c| c.is::<Refused>());
    if refused {
        StageError::permanent("host_refused", message)
    } else if e.is_redirect() {
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
    fn internal_addresses_in_every_spelling_are_refused() {
        let open = HostRules::new(&[]).unwrap();
        for internal in [
            "http://127.0.0.1:8080/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://100.64.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://0.0.0.0/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[0:0:0:0:0:ffff:127.0.0.1]/",
            "http://[::ffff:0.0.0.0]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://224.0.0.1/",
        ] {
            assert!(open.refusal(&url(internal)).is_some(), "{internal} was allowed");
        }
        // Names are checked by what they resolve to, at connect time.
        assert_eq!(open.refusal(&url("http://localhost/")), None);
        assert_eq!(open.refusal(&url("https://eutils.ncbi.nlm.nih.gov/x")), None);
        assert_eq!(open.refusal(&url("http://8.8.8.8/")), None);
    }

    #[test]
    fn listed_names_never_open_private_addresses_and_listed_ranges_do() {
        let listed = HostRules::new(&["127.0.0.1".into(), "*.nih.gov".into(), "intranet.example".into()]).unwrap();
        assert_eq!(listed.refusal(&url("http://127.0.0.1:9/")), None);
        assert_eq!(listed.refusal(&url("http://[::ffff:127.0.0.1]:9/")), None);
        assert!(listed.refusal(&url("http://127.0.0.2/")).is_some(), "not listed");
        assert_eq!(listed.refusal(&url("https://eutils.ncbi.nlm.nih.gov/x")), None);
        assert!(listed.refusal(&url("https://example.org/")).is_some());
        assert!(listed.refusal(&url("https://nih.gov.evil.org/")).is_some());
        assert!(listed.refusal(&url("http://8.8.8.8/")).is_some(), "a public address not listed");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A listed name resolving to a private address: refused, unless that address is listed.
        assert!(listed.address_refusal("intranet.example", ip("10.0.0.5")).is_some());
        assert_eq!(listed.address_refusal("intranet.example", ip("127.0.0.1")), None);
        assert_eq!(listed.address_refusal("eutils.ncbi.nlm.nih.gov", ip("130.14.29.110")), None);
        let ranged = HostRules::new(&["10.0.0.0/8".into()]).unwrap();
        assert_eq!(ranged.refusal(&url("http://10.9.8.7/")), None);
        for bad in ["*", "", "https://example.org", "*.0.0.1"] {
            assert_eq!(HostRules::new(&[bad.into()]).unwrap_err().kind, "bad_config", "{bad:?}");
        }
    }

    /// A one-shot HTTP server on 127.0.0.1 that answers `body` to anything.
    fn serve_once(body: &'static str) -> std::net::SocketAddr {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let reply =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        addr
    }

    #[test]
    fn names_resolving_to_private_addresses_are_refused_at_connect_time() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let addr = serve_once("secret");
        let fixed: HashMap<String, Vec<IpAddr>> = [
            ("rebind.test".to_string(), vec![addr.ip()]),
            ("mapped.test".to_string(), vec!["::ffff:127.0.0.1".parse().unwrap()]),
        ]
        .into();
        let config =
            FetchConfig { allow_hosts: vec!["rebind.test".into(), "mapped.test".into()], ..Default::default() };
        let fetcher = Fetcher::with_fixed_hosts(&config, fixed.clone()).unwrap();
        for host in ["rebind.test", "mapped.test", "localhost"] {
            let target = url(&format!("http://{host}:{}/", addr.port()));
            let error = rt.block_on(fetcher.get(&target)).unwrap_err();
            assert_eq!(error.kind, "host_refused", "{host}: {error}");
            assert_eq!(error.class, crate::ErrorClass::Permanent);
        }
        // Listing the address (not the name) is what opens it.
        let config = FetchConfig { allow_hosts: vec!["rebind.test".into(), "127.0.0.1".into()], ..Default::default() };
        let fetcher = Fetcher::with_fixed_hosts(&config, fixed).unwrap();
        let fetched = rt.block_on(fetcher.get(&url(&format!("http://rebind.test:{}/", addr.port())))).unwrap();
        assert_eq!(fetched.body, b"secret");
    }
}
