//! The public APIs an adapter source pages through, as pure protocol: the
//! URL of the next request, and what a response says (its records, where
//! the pass goes on, what is wrong with it). The HTTP calls, their policy
//! and the dataflow live in `medkg-dataflow`; nothing here touches a socket.
//!
//! A *pass* reads everything new or updated since a day (`since`, none on
//! the first pass) up to the day it began (`until`); the next pass starts
//! where that one ended, `since = until`. Where a pass stands is a
//! [`Cursor`], which the source checkpoints once the pages before it are
//! durable in every index:
//!
//! | adapter   | request                                  | cursor                   | incremental by             |
//! |-----------|------------------------------------------|--------------------------|----------------------------|
//! | ctgov     | `/api/v2/studies?query.term=…&pageSize`  | `pageToken`              | `LastUpdatePostDate`       |
//! | pubmed    | `esearch` (`usehistory=y`), `efetch`     | `retstart` (offset)      | entry date (`edat`)        |
//! | openalex  | `/works?filter=…&per-page=200&cursor=*`  | `next_cursor`            | `from_updated_date` (key)  |
//! | unpaywall | `/v2/{doi}?email=…`, one DOI a request   | line of the DOI file     | lines added to the file    |
//!
//! Every response is read defensively: a page that is not what its API
//! documents (bad JSON or XML, a missing field, a cursor that repeats, an
//! empty page that claims more) is a [`PageError`] naming what is wrong;
//! its `fatal` field says whether the pass can go on past it.

use std::path::Path;

use medkg_topology::{AdapterKind, AdapterSpec};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most DOIs an Unpaywall source file may list, and its largest size.
pub const MAX_DOIS: usize = 1_000_000;
const MAX_DOI_FILE_BYTES: u64 = 64 << 20;

/// Where a pass goes on from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cursor {
    /// The first page.
    Start,
    /// A page token or cursor the API handed out (ctgov, openalex).
    Token(String),
    /// Records (pubmed) or DOIs (unpaywall) already read.
    Offset(u64),
}

impl Cursor {
    /// Records or DOIs read (0 for a token or the start).
    fn offset(&self) -> u64 {
        match self {
            Cursor::Offset(n) => *n,
            Cursor::Start | Cursor::Token(_) => 0,
        }
    }
}

/// One pass over the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pass {
    /// Records new or updated on or after this day (`YYYY-MM-DD`); `None`: all.
    pub since: Option<String>,
    /// The day the pass began: its upper bound where the API takes one.
    pub until: String,
    /// Where it goes on; `None` once it is complete.
    pub cursor: Option<Cursor>,
}

impl Pass {
    /// The first pass: from `since` (if any) up to today.
    pub fn first(since: Option<String>) -> Pass {
        Pass { since, until: today(), cursor: Some(Cursor::Start) }
    }
}

/// Today in UTC, `YYYY-MM-DD`.
pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// A PubMed search's history: what `efetch` pages through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Records the search found.
    pub count: u64,
    /// The history server's `WebEnv`.
    pub webenv: String,
    /// The search's `query_key`.
    pub query_key: String,
}

/// The next request of a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// PubMed `esearch`: start (or restart) the search's history.
    Search(Url),
    /// A page of records.
    Page(Url),
}

/// What a page held.
#[derive(Clone, Debug, PartialEq)]
pub struct PageRead {
    /// What goes downstream: the page as the API served it (a ctgov or
    /// openalex page, an efetch `PubmedArticleSet`), or the download record
    /// an Unpaywall answer becomes. `None`: nothing to index.
    pub payload: Option<Vec<u8>>,
    /// Records in the page.
    pub records: u64,
    /// Where the pass goes on (`None`: it is complete).
    pub next: Option<Cursor>,
    /// Something wrong with this page that does not stop the pass (it is
    /// dead-lettered; an Unpaywall DOI without an open-access PDF).
    pub problem: Option<PageError>,
}

/// What is wrong with a response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct PageError {
    /// `bad_page`, `missing_field`, `cursor_repeated`, `empty_page`,
    /// `cursor_expired`, `search_failed`, `no_open_access`, `bad_doi`.
    pub kind: String,
    /// For people.
    pub message: String,
    /// The pass cannot go on past it (no cursor to follow, or following it
    /// would loop).
    pub fatal: bool,
}

impl PageError {
    fn fatal(kind: &str, message: impl Into<String>) -> PageError {
        PageError { kind: kind.into(), message: message.into(), fatal: true }
    }

    fn skip(kind: &str, message: impl Into<String>) -> PageError {
        PageError { kind: kind.into(), message: message.into(), fatal: false }
    }
}

/// An adapter: its spec, and for Unpaywall the DOIs of its file.
#[derive(Clone, Debug)]
pub struct Adapter {
    spec: AdapterSpec,
    base: Url,
    dois: Vec<String>,
}

impl Adapter {
    /// The adapter of `spec`; the base URL must parse, and Unpaywall needs
    /// `email` (its terms) and a readable DOI file.
    pub fn open(spec: &AdapterSpec) -> Result<Adapter, String> {
        spec.check()?;
        let base = Url::parse(spec.base()).map_err(|e| format!("base_url `{}`: {e}", spec.base()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(format!("base_url `{}`: an http(s) URL with a host", spec.base()));
        }
        if spec.kind == AdapterKind::Unpaywall && spec.email.is_none() {
            return Err("unpaywall: --email (or source.email) is required: Unpaywall asks every caller for one".into());
        }
        let mut adapter = Adapter { spec: spec.clone(), base, dois: Vec::new() };
        adapter.reload()?;
        Ok(adapter)
    }

    /// The spec.
    pub fn spec(&self) -> &AdapterSpec {
        &self.spec
    }

    /// The host (and port) every request goes to.
    pub fn host(&self) -> String {
        self.base.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string()
    }

    /// Reads the DOI file again (Unpaywall, at the start of every pass: a
    /// followed file picks up the lines added to it). A no-op for the others.
    pub fn reload(&mut self) -> Result<(), String> {
        if self.spec.kind != AdapterKind::Unpaywall {
            return Ok(());
        }
        self.dois = read_dois(Path::new(&self.spec.query))?;
        Ok(())
    }

    /// The most requests a second the API itself asks of one caller
    /// (E-utilities: 3, 10 with an API key; OpenAlex: 10; ClinicalTrials.gov:
    /// about 50 a minute per address; Unpaywall: 100,000 a day, about 1.16
    /// a second sustained).
    pub fn ceiling(&self) -> f64 {
        match self.spec.kind {
            AdapterKind::Pubmed if self.spec.api_key.is_some() => 10.0,
            AdapterKind::Pubmed => 3.0,
            AdapterKind::OpenAlex => 10.0,
            AdapterKind::Ctgov => 50.0 / 60.0,
            AdapterKind::Unpaywall => 100_000.0 / 86_400.0,
        }
    }

    /// The pass after `done`, which is complete.
    pub fn next_pass(&self, done: &Pass) -> Pass {
        let cursor = match self.spec.kind {
            // The DOI file is followed by line: go on after the last one read.
            AdapterKind::Unpaywall => done.cursor.clone().unwrap_or(Cursor::Offset(0)),
            _ => Cursor::Start,
        };
        Pass { since: Some(done.until.clone()), until: today(), cursor: Some(cursor) }
    }

    /// The next request of `pass` (`session`: PubMed's search history, once
    /// searched), or `None` when the pass is complete.
    pub fn call(&self, pass: &Pass, session: Option<&Session>) -> Option<Call> {
        let cursor = pass.cursor.as_ref()?;
        let spec = &self.spec;
        let size = spec.page_size().to_string();
        match spec.kind {
            AdapterKind::Ctgov => {
                let mut url = self.url("api/v2/studies");
                {
                    let mut query = url.query_pairs_mut();
                    query.append_pair("format", "json").append_pair("pageSize", &size);
                    match spec.query.contains('=') {
                        // `query.cond=…&filter.overallStatus=…`, as the API spells them.
                        true => {
                            let given = Url::parse(&format!("http://query/?{}", spec.query)).ok();
                            for (key, value) in given.iter().flat_map(Url::query_pairs) {
                                query.append_pair(&key, &value);
                            }
                        }
                        false => {
                            query.append_pair("query.term", &spec.query);
                        }
                    }
                    if let Some(since) = &pass.since {
                        query.append_pair("filter.advanced", &format!("AREA[LastUpdatePostDate]RANGE[{since},MAX]"));
                    }
                    if let Cursor::Token(token) = cursor {
                        query.append_pair("pageToken", token);
                    }
                }
                Some(Call::Page(url))
            }
            AdapterKind::Pubmed => {
                let offset = cursor.offset();
                let Some(session) = session else {
                    let mut url = self.url("esearch.fcgi");
                    {
                        let mut query = url.query_pairs_mut();
                        query
                            .append_pair("db", "pubmed")
                            .append_pair("term", &spec.query)
                            .append_pair("usehistory", "y")
                            .append_pair("retmax", "0")
                            .append_pair("retmode", "json");
                        if let Some(since) = &pass.since {
                            query
                                .append_pair("datetype", "edat")
                                .append_pair("mindate", &since.replace('-', "/"))
                                .append_pair("maxdate", &pass.until.replace('-', "/"));
                        }
                    }
                    self.eutils_identity(&mut url);
                    return Some(Call::Search(url));
                };
                if offset >= session.count {
                    return None;
                }
                let mut url = self.url("efetch.fcgi");
                url.query_pairs_mut()
                    .append_pair("db", "pubmed")
                    .append_pair("query_key", &session.query_key)
                    .append_pair("WebEnv", &session.webenv)
                    .append_pair("retstart", &offset.to_string())
                    .append_pair("retmax", &size)
                    .append_pair("retmode", "xml");
                self.eutils_identity(&mut url);
                Some(Call::Page(url))
            }
            AdapterKind::OpenAlex => {
                let mut url = self.url("works");
                {
                    let mut filter = spec.query.clone();
                    if let Some(since) = &pass.since {
                        // OpenAlex keeps `from_updated_date` for API-key holders.
                        let key = if spec.api_key.is_some() { "from_updated_date" } else { "from_publication_date" };
                        filter.push_str(&format!(",{key}:{since}"));
                    }
                    let token = match cursor {
                        Cursor::Token(token) => token.as_str(),
                        _ => "*",
                    };
                    let mut query = url.query_pairs_mut();
                    query.append_pair("filter", &filter).append_pair("per-page", &size).append_pair("cursor", token);
                    if let Some(email) = &spec.email {
                        query.append_pair("mailto", email);
                    }
                    if let Some(key) = &spec.api_key {
                        query.append_pair("api_key", key);
                    }
                }
                Some(Call::Page(url))
            }
            AdapterKind::Unpaywall => {
                let doi = self.dois.get(usize::try_from(cursor.offset()).ok()?)?;
                let mut url = self.url("v2/");
                // The DOI is one path segment, escaped (`10.1/a/b` keeps its slashes
                // as %2F would be refused by some servers: the API takes them raw).
                url.path_segments_mut().ok()?.pop_if_empty().extend(doi.split('/'));
                url.query_pairs_mut().append_pair("email", spec.email.as_deref().unwrap_or_default());
                Some(Call::Page(url))
            }
        }
    }

    /// `base` + `path` (the base's own path kept).
    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    /// `tool`, `email` and `api_key`, as E-utilities asks every caller.
    fn eutils_identity(&self, url: &mut Url) {
        let mut query = url.query_pairs_mut();
        query.append_pair("tool", self.spec.tool.as_deref().unwrap_or("medkg"));
        if let Some(email) = &self.spec.email {
            query.append_pair("email", email);
        }
        if let Some(key) = &self.spec.api_key {
            query.append_pair("api_key", key);
        }
    }

    /// Reads an `esearch` answer.
    pub fn read_search(&self, body: &[u8]) -> Result<Session, PageError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| PageError::fatal("bad_page", format!("esearch did not answer JSON: {e}")))?;
        let result = value.get("esearchresult").ok_or_else(|| {
            let why = value.get("error").and_then(Value::as_str).unwrap_or("no `esearchresult`");
            PageError::fatal("search_failed", format!("esearch: {}", shown(why)))
        })?;
        if let Some(error) = result.get("ERROR").and_then(Value::as_str) {
            return Err(PageError::fatal("search_failed", format!("esearch: {}", shown(error))));
        }
        let field = |key: &str| {
            result.get(key).and_then(|v| v.as_str().map(str::to_string).or_else(|| v.as_u64().map(|n| n.to_string())))
        };
        let count = field("count")
            .and_then(|c| c.parse::<u64>().ok())
            .ok_or_else(|| PageError::fatal("missing_field", "esearch answered without a `count`"))?;
        let webenv = field("webenv").filter(|w| is_token(w));
        let query_key = field("querykey").filter(|q| is_token(q));
        match (webenv, query_key) {
            (Some(webenv), Some(query_key)) => Ok(Session { count, webenv, query_key }),
            _ if count == 0 => Ok(Session { count, webenv: String::new(), query_key: String::new() }),
            _ => {
                Err(PageError::fatal("missing_field", "esearch answered without `webenv` and `querykey` (usehistory)"))
            }
        }
    }

    /// Reads one page of `pass`.
    pub fn read_page(&self, pass: &Pass, session: Option<&Session>, body: &[u8]) -> Result<PageRead, PageError> {
        let cursor = pass.cursor.clone().unwrap_or(Cursor::Start);
        match self.spec.kind {
            AdapterKind::Ctgov => {
                let page = json_object(body)?;
                let next = next_token(page.get("nextPageToken"), "nextPageToken")?;
                self.cursor_moves(&cursor, next.as_ref())?;
                let records = match page.get("studies") {
                    Some(Value::Array(studies)) => studies.len() as u64,
                    _ => {
                        let error = PageError::fatal("missing_field", "the page has no `studies` list");
                        return match next {
                            // A next page to go on to: dead-letter this one, go on.
                            Some(next) => Ok(PageRead {
                                payload: None,
                                records: 0,
                                next: Some(next),
                                problem: Some(PageError { fatal: false, ..error }),
                            }),
                            None => Err(error),
                        };
                    }
                };
                if records == 0 && next.is_some() {
                    return Err(PageError::fatal("empty_page", "an empty page that names a next page"));
                }
                Ok(PageRead { payload: (records > 0).then(|| body.to_vec()), records, next, problem: None })
            }
            AdapterKind::Pubmed => {
                let session = session.ok_or_else(|| PageError::fatal("search_failed", "efetch before esearch"))?;
                let offset = cursor.offset();
                let after = offset.saturating_add(u64::from(self.spec.page_size()));
                let next = (after < session.count).then_some(Cursor::Offset(after));
                let text = String::from_utf8_lossy(&body[..body.len().min(1 << 16)]);
                if !text.contains("<PubmedArticleSet") {
                    // E-utilities reports an expired history as an error document.
                    if text.contains("<ERROR>") || text.contains("\"ERROR\"") || text.contains("\"error\"") {
                        return Err(PageError::fatal("cursor_expired", format!("efetch: {}", shown(&text))));
                    }
                    let error = PageError::skip("bad_page", "efetch did not answer a PubmedArticleSet");
                    // Offsets let the pass go on past a bad page (it is dead-lettered).
                    return Ok(PageRead { payload: None, records: 0, next, problem: Some(error) });
                }
                let text = String::from_utf8_lossy(body);
                let records = count_open(&text, "PubmedArticle") + count_open(&text, "PubmedBookArticle");
                if records == 0 {
                    return Err(PageError::fatal(
                        "empty_page",
                        format!("efetch returned no articles at {offset} of {} found", session.count),
                    ));
                }
                Ok(PageRead { payload: Some(body.to_vec()), records, next, problem: None })
            }
            AdapterKind::OpenAlex => {
                let page = json_object(body)?;
                let meta = page
                    .get("meta")
                    .filter(|m| m.is_object())
                    .ok_or_else(|| PageError::fatal("missing_field", "the page has no `meta` object"))?;
                let next = next_token(meta.get("next_cursor"), "next_cursor")?;
                let Some(Value::Array(results)) = page.get("results") else {
                    return Err(PageError::fatal("missing_field", "the page has no `results` list"));
                };
                if results.is_empty() {
                    // The last page of a cursor is empty, its next_cursor null.
                    if next.is_some() {
                        return Err(PageError::fatal("empty_page", "an empty page that names a next cursor"));
                    }
                    return Ok(PageRead { payload: None, records: 0, next: None, problem: None });
                }
                self.cursor_moves(&cursor, next.as_ref())?;
                Ok(PageRead { payload: Some(body.to_vec()), records: results.len() as u64, next, problem: None })
            }
            AdapterKind::Unpaywall => {
                let at = cursor.offset();
                let doi = usize::try_from(at).ok().and_then(|i| self.dois.get(i)).cloned().unwrap_or_default();
                // (Never `None`: the pass ends when no DOI is left, and the
                // next one, of a followed file, starts after this one.)
                let next = Some(Cursor::Offset(at + 1));
                let skip = |error: PageError| {
                    Ok(PageRead { payload: None, records: 0, next: next.clone(), problem: Some(error) })
                };
                let page = match json_object(body) {
                    Ok(page) => page,
                    Err(e) => return skip(PageError::skip(&e.kind, format!("{doi}: {}", e.message))),
                };
                let pdf = page.get("best_oa_location").and_then(|l| l.get("url_for_pdf")).and_then(Value::as_str);
                let pdf = pdf.filter(|u| Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https")));
                let Some(pdf) = pdf else {
                    return skip(PageError::skip(
                        "no_open_access",
                        format!("{doi}: no open-access PDF (best_oa_location.url_for_pdf)"),
                    ));
                };
                let mut record = serde_json::json!({ "id": format!("doi:{doi}"), "doi": doi, "pdf_url": pdf });
                if let Some(title) = page.get("title").and_then(Value::as_str) {
                    record["title"] = Value::from(title);
                }
                Ok(PageRead { payload: Some(record.to_string().into_bytes()), records: 1, next, problem: None })
            }
        }
    }

    /// Refuses a next cursor equal to the one just used (it would loop).
    fn cursor_moves(&self, cursor: &Cursor, next: Option<&Cursor>) -> Result<(), PageError> {
        match (cursor, next) {
            (Cursor::Token(now), Some(Cursor::Token(next))) if now == next => {
                Err(PageError::fatal("cursor_repeated", "the page hands back the cursor that fetched it"))
            }
            _ => Ok(()),
        }
    }

    /// Whether the answer to `call` failing with HTTP `status` means the
    /// cursor it carried expired (start the pass again) rather than a failure.
    pub fn expired(&self, pass: &Pass, status: u16) -> bool {
        let tokened = matches!(pass.cursor, Some(Cursor::Token(_)));
        tokened
            && matches!(self.spec.kind, AdapterKind::Ctgov | AdapterKind::OpenAlex)
            && matches!(status, 400 | 404 | 410)
    }
}

/// A URL as logs, positions and dead letters show it: keys masked.
pub fn shown_url(url: &Url) -> String {
    if !url.query_pairs().any(|(k, _)| k == "api_key") {
        return url.to_string();
    }
    let mut shown = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "api_key" { "***".to_string() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    shown.query_pairs_mut().clear().extend_pairs(pairs);
    shown.to_string()
}

/// The next page's token or cursor a page names in `field` (`None`: the last page).
fn next_token(value: Option<&Value>, field: &str) -> Result<Option<Cursor>, PageError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(token)) if is_token(token) => Ok(Some(Cursor::Token(token.clone()))),
        Some(other) => {
            Err(PageError::fatal("bad_page", format!("{field} is not a token: {}", shown(&other.to_string()))))
        }
    }
}

fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, PageError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(PageError::fatal("bad_page", "the page is not a JSON object")),
        Err(e) => Err(PageError::fatal("bad_page", format!("the page is not valid JSON: {e}"))),
    }
}

/// A cursor or token: 1 to 4096 printable ASCII characters.
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.len() <= 4096 && text.bytes().all(|b| b.is_ascii_graphic())
}

/// At most 200 characters of an API's words, for a message.
fn shown(text: &str) -> String {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Occurrences of `<name>` or `<name ...>` (not `<nameSuffix>`).
fn count_open(text: &str, name: &str) -> u64 {
    let pattern = format!("<{name}");
    text.match_indices(&pattern)
        .filter(|(at, _)| {
            matches!(text[at + pattern.len()..].bytes().next(), Some(b'>' | b' ' | b'\t' | b'\n' | b'\r'))
        })
        .count() as u64
}

/// The DOIs of a file: one a line, blank lines and `#` comments skipped,
/// `https://doi.org/` and `doi:` prefixes taken off. A line that is not a
/// DOI is refused with its line number (the file is the user's own).
pub fn read_dois(path: &Path) -> Result<Vec<String>, String> {
    let size = std::fs::metadata(path).map_err(|e| format!("unpaywall: {}: {e}", path.display()))?.len();
    if size > MAX_DOI_FILE_BYTES {
        return Err(format!("unpaywall: {} is {size} bytes; at most {MAX_DOI_FILE_BYTES}", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("unpaywall: {}: {e}", path.display()))?;
    let mut dois = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let lower = line.to_ascii_lowercase();
        let doi = ["https://doi.org/", "http://doi.org/", "doi:"]
            .iter()
            .find(|p| lower.starts_with(*p))
            .map_or(line, |p| &line[p.len()..]);
        let valid = doi.starts_with("10.")
            && doi.contains('/')
            && doi.len() <= 512
            && !doi.chars().any(|c| c.is_whitespace() || c.is_control());
        if !valid {
            return Err(format!(
                "unpaywall: {}:{}: `{}` is not a DOI (10.PREFIX/SUFFIX)",
                path.display(),
                n + 1,
                shown(line)
            ));
        }
        if dois.len() == MAX_DOIS {
            return Err(format!("unpaywall: {} lists more than {MAX_DOIS} DOIs", path.display()));
        }
        dois.push(doi.to_string());
    }
    Ok(dois)
}

/// Where an adapter source stands, durably: the pass in progress (or the
/// last one, complete) at the last page every index has made durable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterCheckpoint {
    /// The source at its API (`ctgov:QUERY@https://clinicaltrials.gov`, ...).
    pub source: String,
    /// The pass, its cursor after the last durable page.
    pub pass: Pass,
    /// Pages read so far, over every run (the next page's ordinal).
    pub pages: u64,
}

impl AdapterCheckpoint {
    /// The checkpoint of `source` in `data_dir`, if one was written.
    pub fn load(data_dir: &Path, source: &str) -> std::io::Result<Option<AdapterCheckpoint>> {
        crate::file::load_json(&crate::file::checkpoint_path(data_dir, source))
    }

    /// Writes it atomically and durably.
    pub fn store(&self, data_dir: &Path) -> std::io::Result<()> {
        crate::file::store_json(&crate::file::checkpoint_path(data_dir, &self.source), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(kind: AdapterKind, query: &str) -> Adapter {
        let mut spec = AdapterSpec::new(kind, query);
        spec.base_url = Some("http://127.0.0.1:9/root".into());
        spec.email = Some("ops@example.org".into());
        spec.api_key = Some("SECRET".into());
        Adapter::open(&spec).unwrap()
    }

    fn pass(cursor: Cursor) -> Pass {
        Pass { since: Some("2024-01-31".into()), until: "2024-02-02".into(), cursor: Some(cursor) }
    }

    #[test]
    fn requests_say_what_each_api_documents() {
        let ctgov = adapter(AdapterKind::Ctgov, "lung cancer");
        let Some(Call::Page(url)) = ctgov.call(&pass(Cursor::Token("tok".into())), None) else { panic!() };
        assert_eq!(url.path(), "/root/api/v2/studies");
        let query: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into(), v.into())).collect();
        assert!(query.contains(&("query.term".into(), "lung cancer".into())));
        assert!(query.contains(&("pageToken".into(), "tok".into())));
        assert!(query.contains(&("filter.advanced".into(), "AREA[LastUpdatePostDate]RANGE[2024-01-31,MAX]".into())));
        let raw = adapter(AdapterKind::Ctgov, "query.cond=asthma&filter.overallStatus=RECRUITING");
        let Some(Call::Page(url)) = raw.call(&pass(Cursor::Start), None) else { panic!() };
        assert!(url.query().unwrap().contains("query.cond=asthma&filter.overallStatus=RECRUITING"));

        let pubmed = adapter(AdapterKind::Pubmed, "asthma[mh]");
        let Some(Call::Search(search)) = pubmed.call(&pass(Cursor::Start), None) else { panic!() };
        assert!(search.as_str().contains("usehistory=y") && search.as_str().contains("mindate=2024%2F01%2F31"));
        assert!(search.as_str().contains("tool=medkg") && search.as_str().contains("api_key=SECRET"));
        assert!(!shown_url(&search).contains("SECRET"), "{}", shown_url(&search));
        let session = Session { count: 450, webenv: "MCID_1".into(), query_key: "1".into() };
        let Some(Call::Page(fetch)) = pubmed.call(&pass(Cursor::Offset(400)), Some(&session)) else { panic!() };
        assert!(fetch.as_str().contains("retstart=400") && fetch.as_str().contains("WebEnv=MCID_1"));
        assert_eq!(pubmed.call(&pass(Cursor::Offset(600)), Some(&session)), None);
        assert_eq!(pubmed.ceiling(), 10.0);

        let openalex = adapter(AdapterKind::OpenAlex, "concepts.id:C71924100");
        let Some(Call::Page(url)) = openalex.call(&pass(Cursor::Start), None) else { panic!() };
        assert!(url.as_str().contains("cursor=*") && url.as_str().contains("per-page=200"));
        assert!(
            url.as_str().contains("from_updated_date%3A2024-01-31")
                && url.as_str().contains("mailto=ops%40example.org")
        );
    }

    #[test]
    fn pages_are_read_defensively() {
        let ctgov = adapter(AdapterKind::Ctgov, "x");
        let at = pass(Cursor::Token("a".into()));
        let read = ctgov.read_page(&at, None, br#"{"studies":[{"x":1}],"nextPageToken":"b"}"#).unwrap();
        assert_eq!((read.records, read.next), (1, Some(Cursor::Token("b".into()))));
        let last = ctgov.read_page(&at, None, br#"{"studies":[{"x":1}]}"#).unwrap();
        assert_eq!(last.next, None);
        for (body, kind) in [
            (&br#"{"studies":[{"x":1}],"nextPageToken":"a"}"#[..], "cursor_repeated"),
            (br#"{"studies":[],"nextPageToken":"c"}"#, "empty_page"),
            (br#"{"studies":[{"x":1}"#, "bad_page"),
            (br#"[1]"#, "bad_page"),
            (br#"{"nothing":1}"#, "missing_field"),
            (br#"{"studies":[1],"nextPageToken":"\n"}"#, "bad_page"),
        ] {
            let error = ctgov.read_page(&at, None, body).unwrap_err();
            assert_eq!((error.kind.as_str(), error.fatal), (kind, true), "{}", String::from_utf8_lossy(body));
        }
        // No studies but a next page: this page is dead-lettered, the pass goes on.
        let skipped = ctgov.read_page(&at, None, br#"{"nextPageToken":"c"}"#).unwrap();
        assert_eq!(skipped.problem.unwrap().kind, "missing_field");
        assert!(ctgov.expired(&at, 400) && !ctgov.expired(&pass(Cursor::Start), 400));

        let pubmed = adapter(AdapterKind::Pubmed, "x");
        let session = pubmed.read_search(br#"{"esearchresult":{"count":"3","webenv":"W","querykey":"1"}}"#).unwrap();
        assert_eq!(session.count, 3);
        assert_eq!(pubmed.read_search(br#"{"esearchresult":{"ERROR":"bad term"}}"#).unwrap_err().kind, "search_failed");
        assert_eq!(pubmed.read_search(br#"{"esearchresult":{"count":"3"}}"#).unwrap_err().kind, "missing_field");
        let set =
            b"<PubmedArticleSet><PubmedArticle>a</PubmedArticle><PubmedArticle>b</PubmedArticle></PubmedArticleSet>";
        let read = pubmed.read_page(&pass(Cursor::Start), Some(&session), set).unwrap();
        assert_eq!((read.records, read.next), (2, None));
        let expired = pubmed.read_page(
            &pass(Cursor::Start),
            Some(&session),
            b"<eFetchResult><ERROR>Unable to obtain query #1</ERROR></eFetchResult>",
        );
        assert_eq!(expired.unwrap_err().kind, "cursor_expired");
        let empty = pubmed.read_page(&pass(Cursor::Start), Some(&session), b"<PubmedArticleSet></PubmedArticleSet>");
        assert_eq!(empty.unwrap_err().kind, "empty_page");
        let html = pubmed.read_page(&pass(Cursor::Start), Some(&session), b"<html>oops</html>").unwrap();
        assert_eq!(html.problem.unwrap().kind, "bad_page");

        let openalex = adapter(AdapterKind::OpenAlex, "x");
        let read = openalex.read_page(&at, None, br#"{"meta":{"next_cursor":"b"},"results":[{"id":"W1"}]}"#).unwrap();
        assert_eq!(read.next, Some(Cursor::Token("b".into())));
        let end = openalex.read_page(&at, None, br#"{"meta":{"next_cursor":null},"results":[]}"#).unwrap();
        assert_eq!((end.next, end.payload), (None, None));
        for (body, kind) in [
            (&br#"{"meta":{"next_cursor":"a"},"results":[{"id":"W1"}]}"#[..], "cursor_repeated"),
            (br#"{"meta":{"next_cursor":"z"},"results":[]}"#, "empty_page"),
            (br#"{"results":[]}"#, "missing_field"),
            (br#"{"meta":{}}"#, "missing_field"),
        ] {
            assert_eq!(openalex.read_page(&at, None, body).unwrap_err().kind, kind);
        }
    }

    #[test]
    fn unpaywall_reads_a_doi_file_and_answers_download_records() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dois.txt");
        std::fs::write(&file, "# mine\n10.1186/s12984-016-0129-6\n\nhttps://doi.org/10.1/a/b\n").unwrap();
        let mut spec = AdapterSpec::new(AdapterKind::Unpaywall, file.display().to_string());
        assert!(Adapter::open(&spec).unwrap_err().contains("--email"));
        spec.email = Some("ops@example.org".into());
        spec.base_url = Some("http://127.0.0.1:9".into());
        let unpaywall = Adapter::open(&spec).unwrap();
        let Some(Call::Page(url)) = unpaywall.call(&pass(Cursor::Offset(1)), None) else { panic!() };
        assert_eq!(url.path(), "/v2/10.1/a/b");
        let read = unpaywall
            .read_page(
                &pass(Cursor::Offset(0)),
                None,
                br#"{"title":"T","best_oa_location":{"url_for_pdf":"https://x.org/a.pdf"}}"#,
            )
            .unwrap();
        let record: Value = serde_json::from_slice(&read.payload.unwrap()).unwrap();
        assert_eq!(record["id"], "doi:10.1186/s12984-016-0129-6");
        assert_eq!(read.next, Some(Cursor::Offset(1)));
        let closed = unpaywall.read_page(&pass(Cursor::Offset(1)), None, br#"{"best_oa_location":null}"#).unwrap();
        assert_eq!((closed.problem.unwrap().kind.as_str(), closed.next), ("no_open_access", Some(Cursor::Offset(2))));
        assert_eq!(unpaywall.call(&pass(Cursor::Offset(2)), None), None, "no DOI left: the pass is complete");
        let bad = unpaywall
            .read_page(&pass(Cursor::Offset(0)), None, br#"{"best_oa_location":{"url_for_pdf":"file:///etc/passwd"}}"#)
            .unwrap();
        assert_eq!(bad.problem.unwrap().kind, "no_open_access");
        std::fs::write(&file, "10.1/ok\nnot a doi\n").unwrap();
        assert!(read_dois(&file).unwrap_err().contains(":2:"));
        // The next pass of a followed file starts after the DOIs already read.
        let done = Pass { since: None, until: "2024-01-01".into(), cursor: Some(Cursor::Offset(2)) };
        assert_eq!(unpaywall.next_pass(&done).cursor, Some(Cursor::Offset(2)));
    }

    fn answers() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            "\\{\"(studies|results|meta|nextPageToken|esearchresult)\": ?(\\[|\\{|\"|null|1)[a-z0-9\"\\[\\]{},: ]{0,40}"
                .prop_map(String::into_bytes),
            "<(PubmedArticleSet|eFetchResult|ERROR|PubmedArticle)[ >][<>/a-zA-Z ]{0,60}".prop_map(String::into_bytes),
            "[a-z0-9]{1,3}".prop_map(|t| format!(r#"{{"studies":[1],"nextPageToken":"{t}","meta":{{"next_cursor":"{t}"}},"results":[1]}}"#).into_bytes()),
        ]
    }

    proptest::proptest! {
        /// Whatever an API answers, reading it never panics: records and a
        /// next cursor, or an error naming what is wrong; and a cursor that
        /// would loop is never followed.
        #[test]
        fn any_answer_is_read_or_refused(body in answers(), token in "[a-z0-9]{1,3}") {
            for kind in [AdapterKind::Ctgov, AdapterKind::Pubmed, AdapterKind::OpenAlex] {
                let adapter = adapter(kind, "x");
                let session = Session { count: 1_000, webenv: "W".into(), query_key: "1".into() };
                let at = pass(Cursor::Token(token.clone()));
                match adapter.read_page(&at, Some(&session), &body) {
                    Ok(read) => proptest::prop_assert_ne!(read.next, Some(Cursor::Token(token.clone()))),
                    Err(e) => proptest::prop_assert!(!e.kind.is_empty() && e.message.len() < 2_000),
                }
                let _ = adapter.read_search(&body);
            }
        }
    }
}
