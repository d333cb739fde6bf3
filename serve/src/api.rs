//! The endpoints, as `docs/openapi.yaml` describes them. Every `/v1`
//! request speaks for the principal of its token (without `--auth`, the
//! server's tenant as admin); search, documents, the graph, SPARQL, stats
//! and the gate see that tenant only; runs, the ledger and dead letters
//! are the deployment's and need `admin`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use medkg_connectors::ledger::{Ledger, RunRecord, Status};
use medkg_connectors::DeadLetter;
use medkg_dataflow::{search_index, Mode};
use medkg_operators::graph::{CancellationToken, QueryFormat};
use medkg_operators::index::{Hit, Weights};
use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, Principal, Role};
use crate::http::{bytes_response, decode_segment, form_pairs, json_response, read_body, ApiError, Body};
use crate::snippet::{snippet, terms, Snippet};
use crate::{ui, State};

/// Longest document id or concept name in a path.
const MAX_ID_BYTES: usize = 512;
/// Most chunks `/v1/documents/{id}` returns.
const MAX_DOCUMENT_CHUNKS: usize = 1000;
/// Characters of a snippet.
const SNIPPET_CHARS: usize = 240;

/// Answers one request, and counts it.
pub(crate) async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let began = Instant::now();
    let (parts, body) = request.into_parts();
    let route = route_of(parts.uri.path());
    // A body is read whole (bounded in size and time) before anything else,
    // so no answer leaves part of a request on the connection; one that
    // cannot be read closes the connection.
    let limits = &state.options.limits;
    let mut response = match read_body(body, &parts.headers, limits.max_body_bytes, limits.body_timeout).await {
        Err(error) => {
            let mut response = error.response();
            response.headers_mut().insert("connection", hyper::header::HeaderValue::from_static("close"));
            response
        }
        Ok(body) => match dispatch(&state, &parts, body, route).await {
            Ok(response) => response,
            Err(error) => error.response(),
        },
    };
    let headers = response.headers_mut();
    headers.insert("cache-control", hyper::header::HeaderValue::from_static("no-store"));
    let status = response.status();
    state.metrics.requests.with_label_values(&[route, status.as_str()]).inc();
    state.metrics.duration.with_label_values(&[route]).observe(began.elapsed().as_secs_f64());
    response
}

/// The route's template (a metric label: never the raw path).
fn route_of(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        [""] | ["index.html"] => "/",
        ["ui", _] => "/ui",
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["metrics"] => "/metrics",
        ["v1", "openapi.yaml"] => "/v1/openapi.yaml",
        ["v1", "search"] => "/v1/search",
        ["v1", "documents", _] => "/v1/documents/{id}",
        ["v1", "stats"] => "/v1/stats",
        ["v1", "runs"] => "/v1/runs",
        ["v1", "runs", _] => "/v1/runs/{id}",
        ["v1", "ledger"] => "/v1/ledger",
        ["v1", "gate"] => "/v1/gate",
        ["v1", "dead-letters"] => "/v1/dead-letters",
        ["v1", "graph", _] => "/v1/graph/{id}",
        ["v1", "sparql"] => "/v1/sparql",
        _ => "other",
    }
}

fn method_not_allowed(allowed: &str) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("use {allowed}"))
}

async fn dispatch(
    state: &Arc<State>,
    parts: &Parts,
    body: Bytes,
    route: &'static str,
) -> Result<Response<Body>, ApiError> {
    let get = parts.method == Method::GET || parts.method == Method::HEAD;
    let path = parts.uri.path();
    let segment = |n: usize| path.trim_start_matches('/').split('/').nth(n).unwrap_or("");
    // What needs no token: the UI's files, probes, metrics, the API's description.
    match (route, get) {
        ("/", true) => {
            let mut page = bytes_response(StatusCode::OK, "text/html; charset=utf-8", ui::INDEX_HTML);
            // The page loads only its own script and style, and is not framed.
            let headers = page.headers_mut();
            headers.insert(
                "content-security-policy",
                hyper::header::HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
                ),
            );
            headers.insert("x-frame-options", hyper::header::HeaderValue::from_static("DENY"));
            return Ok(page);
        }
        ("/ui", true) => {
            return match segment(1) {
                "app.js" => Ok(bytes_response(StatusCode::OK, "text/javascript; charset=utf-8", ui::APP_JS)),
                "app.css" => Ok(bytes_response(StatusCode::OK, "text/css; charset=utf-8", ui::APP_CSS)),
                _ => Err(ApiError::not_found("no such file")),
            }
        }
        ("/healthz", true) => return Ok(json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        ("/readyz", true) => return Ok(readyz(state)),
        ("/metrics", true) => return Ok(metrics(state)),
        ("/v1/openapi.yaml", true) => {
            return Ok(bytes_response(StatusCode::OK, "application/yaml; charset=utf-8", ui::OPENAPI_YAML))
        }
        ("/" | "/ui" | "/healthz" | "/readyz" | "/metrics" | "/v1/openapi.yaml", false) => {
            return Err(method_not_allowed("GET"))
        }
        _ => {}
    }
    if !path.starts_with("/v1/") {
        return Err(ApiError::not_found(format!("no such page: {}", crate::http::truncate(path, 100))));
    }
    let principal = principal(state, parts)?;
    let admin = || match principal.role {
        Role::Admin => Ok(()),
        Role::Read => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this needs an admin token")),
    };
    let query = parts.uri.query().unwrap_or("");
    match (route, &parts.method) {
        ("/v1/search", &Method::POST) => search(state, &principal, parts, body).await,
        ("/v1/search", _) => Err(method_not_allowed("POST")),
        ("/v1/sparql", &Method::GET | &Method::POST) => sparql(state, &principal, parts, body).await,
        ("/v1/sparql", _) => Err(method_not_allowed("GET or POST")),
        (_, m) if m != Method::GET => Err(method_not_allowed("GET")),
        ("/v1/documents/{id}", _) => document(state, &principal, &id_segment(segment(2))?).await,
        ("/v1/stats", _) => stats(state, &principal).await,
        ("/v1/gate", _) => gate(state, &principal).await,
        ("/v1/graph/{id}", _) => graph(state, &principal, &id_segment(segment(2))?, query).await,
        ("/v1/runs", _) => {
            admin()?;
            runs(state, query).await
        }
        ("/v1/runs/{id}", _) => {
            admin()?;
            run(state, &id_segment(segment(2))?).await
        }
        ("/v1/ledger", _) => {
            admin()?;
            ledger(state, query).await
        }
        ("/v1/dead-letters", _) => {
            admin()?;
            dead_letters(state, query).await
        }
        _ => Err(ApiError::not_found(format!("no such endpoint: {}", crate::http::truncate(path, 100)))),
    }
}

fn principal(state: &State, parts: &Parts) -> Result<Principal, ApiError> {
    let Some(auth) = &state.options.auth else {
        return Ok(Principal { tenant: state.options.tenant.clone(), role: Role::Admin });
    };
    let header = parts.headers.get("authorization").map(|v| v.as_bytes());
    auth.principal(header).map_err(|e| {
        let message = match e {
            AuthError::Missing => "this needs a token: Authorization: Bearer TOKEN",
            AuthError::Malformed => "the Authorization header is not `Bearer TOKEN`",
            AuthError::Unknown => "unknown token",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    })
}

fn id_segment(raw: &str) -> Result<String, ApiError> {
    let id = decode_segment(raw)?;
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!("an id is 1 to {MAX_ID_BYTES} bytes without control characters")));
    }
    Ok(id)
}

/// Runs blocking work on the runtime's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("a request task failed: {e}")))?
}

fn number(pairs: &[(String, String)], name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
    match pairs.iter().rev().find(|(k, _)| k == name) {
        None => Ok(default),
        Some((_, v)) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!("`{name}` must be a whole number from 1 to {max}"))),
        },
    }
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------- probes

fn readyz(state: &State) -> Response<Body> {
    let generation = state.readers.current().map(|g| g.number);
    let run_started = state.options.live.as_ref().is_none_or(|live| live.run_id.get().is_some());
    let ready = generation.is_some() && run_started;
    let reason = match (generation, run_started) {
        (_, false) => Some("the run has not started".to_string()),
        (None, _) => Some(state.readers.last_error().unwrap_or_else(|| "no index opened yet".into())),
        _ => None,
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_response(status, &serde_json::json!({"ready": ready, "generation": generation, "reason": reason}))
}

fn metrics(state: &State) -> Response<Body> {
    let mut text = String::new();
    if let Some(live) = &state.options.live {
        if let Some(telemetry) = live.telemetry.get() {
            text.push_str(&telemetry.metrics.render(&telemetry.pipeline, live));
        }
    }
    text.push_str(&state.metrics.render());
    bytes_response(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text)
}

// ---------------------------------------------------------------- search

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    query: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    k: Option<u64>,
    #[serde(default)]
    weights: Option<WeightsRequest>,
    #[serde(default)]
    entity: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsRequest {
    bm25: Option<f32>,
    dense: Option<f32>,
    splade: Option<f32>,
}

#[derive(Serialize)]
struct SearchHit {
    rank: usize,
    doc_id: String,
    chunk_id: String,
    score: f32,
    title: String,
    section: String,
    char_start: u64,
    char_end: u64,
    ranks: medkg_operators::index::ListRanks,
    snippet: Snippet,
}

#[derive(Serialize)]
struct SearchResponse {
    query: String,
    mode: &'static str,
    k: usize,
    tenant_id: String,
    entity: Option<String>,
    generation: u64,
    took_ms: f64,
    hits: Vec<SearchHit>,
}

fn weights_of(request: Option<WeightsRequest>) -> Result<Weights, ApiError> {
    let mut weights = Weights::default();
    if let Some(w) = request {
        for (value, slot) in
            [(w.bm25, &mut weights.bm25), (w.dense, &mut weights.dense), (w.splade, &mut weights.splade)]
        {
            if let Some(v) = value {
                if !(v.is_finite() && (0.0..=1000.0).contains(&v)) {
                    return Err(ApiError::bad_request("weights are numbers from 0 to 1000"));
                }
                *slot = v;
            }
        }
        if weights.bm25 + weights.dense + weights.splade <= 0.0 {
            return Err(ApiError::bad_request("at least one weight must be above 0"));
        }
    }
    Ok(weights)
}

async fn search(
    state: &Arc<State>,
    principal: &Principal,
    parts: &Parts,
    bytes: Bytes,
) -> Result<Response<Body>, ApiError> {
    if let Some(kind) = parts.headers.get("content-type") {
        let kind = kind.to_str().unwrap_or("");
        if !kind.trim_start().to_ascii_lowercase().starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the search as application/json",
            ));
        }
    }
    let limits = &state.options.limits;
    let request: SearchRequest =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid search request: {e}")))?;
    let query = request.query.trim().to_string();
    if query.is_empty() {
        return Err(ApiError::bad_request("`query` is empty"));
    }
    if query.len() > limits.max_query_bytes {
        return Err(ApiError::bad_request(format!("`query` is longer than {} bytes", limits.max_query_bytes)));
    }
    let mode: Mode = request.mode.as_deref().unwrap_or("hybrid").parse().map_err(ApiError::bad_request)?;
    let k = match request.k {
        None => 10,
        Some(k) if (1..=limits.max_k as u64).contains(&k) => k as usize,
        Some(_) => return Err(ApiError::bad_request(format!("`k` must be from 1 to {}", limits.max_k))),
    };
    let weights = weights_of(request.weights)?;
    let entity = match request.entity {
        Some(e) if e.is_empty() || e.len() > MAX_ID_BYTES => {
            return Err(ApiError::bad_request(format!("`entity` is a CURIE of 1 to {MAX_ID_BYTES} bytes")))
        }
        other => other,
    };
    // Bounded: past `max_searches` running or waiting, a client is told to come back.
    let Ok(_permit) = state.searches.try_acquire() else {
        state.metrics.searches_refused.inc();
        return Err(ApiError::unavailable("busy", "too many searches at once; try again shortly", 1));
    };
    let generation =
        state.readers.current().ok_or_else(|| ApiError::unavailable("not_ready", "no index to search yet", 1))?;
    let encoders =
        state.readers.encoders().ok_or_else(|| ApiError::unavailable("not_ready", "no query encoders yet", 1))?;
    if !encoders.first().is_some_and(|e| e.serves(mode)) {
        return Err(ApiError::bad_request(format!(
            "mode `{}`: this data directory has no {} index",
            mode.as_str(),
            mode.as_str()
        )));
    }
    let only = match &entity {
        None => None,
        Some(concept) => {
            let (store, tenant, concept) = (state.graph()?, principal.tenant.clone(), concept.clone());
            Some(
                blocking(move || {
                    store.chunks_mentioning(&tenant, &concept).map_err(|e| ApiError::internal(e.to_string()))
                })
                .await?,
            )
        }
    };
    let tenant = principal.tenant.clone();
    let began = Instant::now();
    let (text, number) = (query.clone(), generation.number);
    let hits: Vec<Hit> = blocking(move || {
        generation.with(|index, slot| {
            let vectors =
                encoders[slot % encoders.len()].encode(&text, mode).map_err(|e| ApiError::internal(e.to_string()))?;
            // Every search sets its own restriction (none without `entity`).
            index.restrict(only.map(|chunks| chunks.into_iter().collect()));
            let hits = search_index(index, &text, &vectors, mode, &tenant, k, &weights);
            index.restrict(None);
            hits.map_err(|e| ApiError::internal(e.to_string()))
        })
    })
    .await?;
    let words = terms(&query);
    let hits = hits
        .into_iter()
        .enumerate()
        .map(|(i, hit)| SearchHit {
            rank: i + 1,
            snippet: snippet(&hit.text, &words, SNIPPET_CHARS),
            doc_id: hit.doc_id,
            chunk_id: hit.chunk_id,
            score: hit.score,
            title: hit.title,
            section: hit.section,
            char_start: hit.char_start,
            char_end: hit.char_end,
            ranks: hit.ranks,
        })
        .collect();
    let response = SearchResponse {
        query,
        mode: mode.as_str(),
        k,
        tenant_id: principal.tenant.clone(),
        entity,
        generation: number,
        took_ms: (began.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        hits,
    };
    Ok(json_response(StatusCode::OK, &response))
}

// ---------------------------------------------------------------- documents and stats

fn open_ledger(state: &State) -> Result<Option<Ledger>, ApiError> {
    match Ledger::open_existing(&state.options.data_dir) {
        Ok(ledger) => Ok(Some(ledger)),
        Err(medkg_connectors::Error::Config(_)) => Ok(None), // nothing has run there yet
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

async fn document(state: &Arc<State>, principal: &Principal, id: &str) -> Result<Response<Body>, ApiError> {
    let (state, tenant, id) = (state.clone(), principal.tenant.clone(), id.to_string());
    blocking(move || {
        let chunks = match state.readers.current() {
            Some(generation) => generation
                .with(|index, _| index.document(&tenant, &id, MAX_DOCUMENT_CHUNKS))
                .map_err(|e| ApiError::internal(e.to_string()))?,
            None => Vec::new(),
        };
        let journey = match open_ledger(&state)? {
            Some(ledger) => ledger
                .query(None, Some(&id), 100)
                .map_err(|e| ApiError::internal(e.to_string()))?
                .into_iter()
                .find(|row| row.tenant_id == tenant),
            None => None,
        };
        if chunks.is_empty() && journey.is_none() {
            return Err(ApiError::not_found(format!("tenant `{tenant}` has no document `{id}`")));
        }
        let title = chunks.first().map(|c| c.title.clone());
        let chunks: Vec<serde_json::Value> = chunks
            .into_iter()
            .map(|c| {
                serde_json::json!({"chunk_id": c.chunk_id, "section": c.section, "char_start": c.char_start,
                                   "char_end": c.char_end, "text": c.text})
            })
            .collect();
        let body = serde_json::json!({"tenant_id": tenant, "doc_id": id, "title": title, "chunks": chunks,
                                      "journey": journey});
        Ok(json_response(StatusCode::OK, &body))
    })
    .await
}

async fn stats(state: &Arc<State>, principal: &Principal) -> Result<Response<Body>, ApiError> {
    let (state, principal) = (state.clone(), principal.clone());
    blocking(move || {
        let generation = state.readers.current();
        let counts = |tenant: Option<&str>| -> Result<serde_json::Value, ApiError> {
            match &generation {
                Some(g) => {
                    let stats =
                        g.with(|index, _| index.stats(tenant)).map_err(|e| ApiError::internal(e.to_string()))?;
                    Ok(serde_json::json!({"docs": stats.docs, "chunks": stats.chunks}))
                }
                None => Ok(serde_json::json!({"docs": 0, "chunks": 0})),
            }
        };
        let mine = counts(Some(&principal.tenant))?;
        let mut body = serde_json::json!({
            "tenant_id": principal.tenant,
            "docs": mine["docs"],
            "chunks": mine["chunks"],
            "generation": generation.as_ref().map(|g| g.number),
        });
        if principal.role == Role::Admin {
            body["all_tenants"] = counts(None)?;
            if let Ok(store) = state.graph() {
                if let Ok(census) = store.census() {
                    body["graph"] = serde_json::to_value(census).unwrap_or_default();
                }
            }
        }
        Ok(json_response(StatusCode::OK, &body))
    })
    .await
}

async fn gate(state: &Arc<State>, principal: &Principal) -> Result<Response<Body>, ApiError> {
    let (state, principal) = (state.clone(), principal.clone());
    blocking(move || {
        let tenant = (principal.role == Role::Read).then_some(principal.tenant.as_str());
        let backlog = match open_ledger(&state)? {
            Some(ledger) => ledger.gate_backlog(tenant).map_err(|e| ApiError::internal(e.to_string()))?,
            None => Vec::new(),
        };
        let now = now_ms();
        let gates: Vec<serde_json::Value> = backlog
            .into_iter()
            .map(|b| {
                serde_json::json!({"gate": b.gate, "side": b.side, "documents": b.documents,
                    "oldest_since": rfc3339(b.oldest_since_ms),
                    "oldest_age_seconds": ((now - b.oldest_since_ms).max(0) as f64) / 1000.0})
            })
            .collect();
        let waiting: u64 = gates.iter().filter_map(|g| g["documents"].as_u64()).sum();
        Ok(json_response(StatusCode::OK, &serde_json::json!({"waiting": waiting, "gates": gates})))
    })
    .await
}

// ---------------------------------------------------------------- runs, ledger, dead letters

fn slower(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// One run, its processes' records merged: counts summed, stages summed
/// by name (latencies: the slowest process's), the worst status.
fn merge_run(records: Vec<RunRecord>) -> serde_json::Value {
    let first = records[0].clone();
    let status = if records.iter().any(|r| r.status == "failed") {
        "failed"
    } else if records.iter().any(|r| r.status == "running") {
        "running"
    } else {
        "completed"
    };
    let mut stages: Vec<medkg_connectors::ledger::StageRecord> = Vec::new();
    for record in &records {
        for stage in &record.stages {
            match stages.iter_mut().find(|s| s.name == stage.name) {
                Some(s) => {
                    s.docs_in += stage.docs_in;
                    s.docs_out += stage.docs_out;
                    s.docs_failed += stage.docs_failed;
                    s.retries += stage.retries;
                    s.p50_seconds = slower(s.p50_seconds, stage.p50_seconds);
                    s.p95_seconds = slower(s.p95_seconds, stage.p95_seconds);
                    if stage.breaker.as_deref().is_some_and(|b| b != "closed") {
                        s.breaker = stage.breaker.clone();
                    }
                }
                None => stages.push(stage.clone()),
            }
        }
    }
    let sum = |f: fn(&RunRecord) -> u64| records.iter().map(f).sum::<u64>();
    let started = records.iter().map(|r| r.started_ms).min().unwrap_or(first.started_ms);
    let updated = records.iter().map(|r| r.updated_ms).max().unwrap_or(first.updated_ms);
    let finished = match status {
        "running" => None,
        _ => records.iter().filter_map(|r| r.finished_ms).max(),
    };
    let end = finished.unwrap_or(updated);
    let seconds = ((end - started).max(0) as f64) / 1000.0;
    let docs = sum(|r| r.docs);
    serde_json::json!({
        "run_id": first.run_id,
        "pipeline": first.pipeline,
        "tenant_id": first.tenant_id,
        "source": first.source,
        "status": status,
        "processes": records.len(),
        "started_at": rfc3339(started),
        "updated_at": rfc3339(updated),
        "finished_at": finished.map(rfc3339),
        "seconds": seconds,
        "error": records.iter().find_map(|r| r.error.clone()),
        "records": sum(|r| r.records),
        "docs": docs,
        "chunks": sum(|r| r.chunks),
        "failed": sum(|r| r.failed),
        "gate_pending": records.iter().map(|r| r.gate_pending).sum::<i64>(),
        "consumer_lag": sum(|r| r.consumer_lag),
        "docs_per_second": if seconds > 0.0 { docs as f64 / seconds } else { 0.0 },
        "stages": stages,
        // Process 0's (a cluster's processes sample at their own moments).
        "history": first.history,
    })
}

async fn runs(state: &Arc<State>, query: &str) -> Result<Response<Body>, ApiError> {
    let pairs = form_pairs(query)?;
    let limit = number(&pairs, "limit", 20, 200)?;
    let state = state.clone();
    blocking(move || {
        let records = match open_ledger(&state)? {
            Some(ledger) => ledger.runs(limit * 16).map_err(|e| ApiError::internal(e.to_string()))?,
            None => Vec::new(),
        };
        // Group by run (processes of one run), newest first.
        let mut order: Vec<String> = Vec::new();
        let mut by_run: BTreeMap<String, Vec<RunRecord>> = BTreeMap::new();
        for record in records {
            if !by_run.contains_key(&record.run_id) {
                order.push(record.run_id.clone());
            }
            by_run.entry(record.run_id.clone()).or_default().push(record);
        }
        let runs: Vec<serde_json::Value> =
            order.into_iter().take(limit).filter_map(|id| by_run.remove(&id)).map(merge_run).collect();
        Ok(json_response(StatusCode::OK, &serde_json::json!({"runs": runs})))
    })
    .await
}

async fn run(state: &Arc<State>, id: &str) -> Result<Response<Body>, ApiError> {
    let (state, id) = (state.clone(), id.to_string());
    blocking(move || {
        let ledger = open_ledger(&state)?.ok_or_else(|| ApiError::not_found(format!("no run `{id}`")))?;
        match ledger.run(&id).map_err(|e| ApiError::internal(e.to_string()))? {
            Some(records) => Ok(json_response(StatusCode::OK, &merge_run(records))),
            None => Err(ApiError::not_found(format!("no run `{id}`"))),
        }
    })
    .await
}

async fn ledger(state: &Arc<State>, query: &str) -> Result<Response<Body>, ApiError> {
    let pairs = form_pairs(query)?;
    let limit = number(&pairs, "limit", 50, 1000)?;
    let status: Option<Status> = param(&pairs, "status")
        .map(str::parse)
        .transpose()
        .map_err(|e: String| ApiError::bad_request(format!("`status`: {e}")))?;
    let doc = param(&pairs, "doc").map(str::to_string);
    if doc.as_ref().is_some_and(|d| d.len() > MAX_ID_BYTES) {
        return Err(ApiError::bad_request(format!("`doc` is at most {MAX_ID_BYTES} bytes")));
    }
    let state = state.clone();
    blocking(move || {
        let Some(ledger) = open_ledger(&state)? else {
            return Ok(json_response(StatusCode::OK, &serde_json::json!({"counts": {}, "rows": []})));
        };
        let fail = |e: medkg_connectors::Error| ApiError::internal(e.to_string());
        let rows = ledger.query(status, doc.as_deref(), limit).map_err(fail)?;
        let counts = ledger.counts().map_err(fail)?;
        Ok(json_response(StatusCode::OK, &serde_json::json!({"counts": counts, "rows": rows})))
    })
    .await
}

/// A dead letter as the API shows it: without its bytes, with a preview.
fn letter_view(letter: DeadLetter) -> serde_json::Value {
    let preview = match (&letter.bytes_utf8, &letter.bytes_base64, &letter.bytes_at) {
        (Some(text), _, _) => Some(crate::http::truncate(text, 300)),
        (None, Some(b64), _) => Some(format!("({} bytes of binary, base64)", b64.len() / 4 * 3)),
        (None, None, Some(at)) => Some(format!("(the bytes are with the letter at {at})")),
        _ => None,
    };
    serde_json::json!({
        "at": rfc3339(letter.unix_ms as i64),
        "stage": letter.stage,
        "source": letter.source,
        "position": letter.position,
        "doc_id": letter.doc_id,
        "error_class": letter.error_class,
        "error_kind": letter.error_kind,
        "message": letter.message,
        "bytes_preview": preview,
    })
}

async fn dead_letters(state: &Arc<State>, query: &str) -> Result<Response<Body>, ApiError> {
    let pairs = form_pairs(query)?;
    let limit = number(&pairs, "limit", 50, 500)?;
    let state = state.clone();
    blocking(move || {
        let letters = medkg_connectors::DeadLetterSink::read_recent(&state.options.data_dir, limit)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let letters: Vec<serde_json::Value> = letters.into_iter().map(letter_view).collect();
        Ok(json_response(StatusCode::OK, &serde_json::json!({"dead_letters": letters})))
    })
    .await
}

// ---------------------------------------------------------------- the graph

async fn graph(state: &Arc<State>, principal: &Principal, id: &str, query: &str) -> Result<Response<Body>, ApiError> {
    let pairs = form_pairs(query)?;
    let limit = number(&pairs, "limit", 20, 100)?;
    let evidence = number(&pairs, "evidence", 3, 10)?;
    let store = state.graph()?;
    let (tenant, id) = (principal.tenant.clone(), id.to_string());
    blocking(move || {
        let fail = |e: medkg_operators::graph::GraphError| ApiError::internal(e.to_string());
        let concepts = if id.contains(':') && !id.contains(' ') {
            vec![id.clone()]
        } else {
            store.concepts_named(&tenant, &id).map_err(fail)?
        };
        let mut views = Vec::new();
        for concept in concepts.iter().take(10) {
            let info = store.concept(&tenant, concept).map_err(fail)?;
            let neighbours = store.neighbours(&tenant, concept, limit, evidence).map_err(fail)?;
            if info.is_none() && neighbours.is_empty() {
                continue;
            }
            views.push(serde_json::json!({
                "concept": concept,
                "label": info.as_ref().and_then(|i| i.label.clone()),
                "category": info.as_ref().and_then(|i| i.category.clone()),
                "documents": info.as_ref().map_or(0, |i| i.documents),
                "neighbours": neighbours,
            }));
        }
        if views.is_empty() {
            return Err(ApiError::not_found(format!("`{id}` names no concept of tenant `{tenant}`'s graph")));
        }
        Ok(json_response(StatusCode::OK, &serde_json::json!({"concepts": views})))
    })
    .await
}

/// A writer that refuses to grow past `max` bytes.
struct Capped {
    bytes: Vec<u8>,
    max: usize,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.max {
            return Err(std::io::Error::other("result too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The SPARQL 1.1 protocol's query operation: `GET ?query=`, `POST` of
/// `application/sparql-query` or of a form with `query=`. Results as
/// SPARQL JSON (or TSV when asked for), N-Triples for CONSTRUCT and
/// DESCRIBE; over the tenant's dataset only; cancelled past the time limit.
async fn sparql(
    state: &Arc<State>,
    principal: &Principal,
    parts: &Parts,
    bytes: Bytes,
) -> Result<Response<Body>, ApiError> {
    let limits = state.options.limits.clone();
    let text = if parts.method == Method::GET {
        let pairs = form_pairs(parts.uri.query().unwrap_or(""))?;
        param(&pairs, "query").map(str::to_string)
    } else {
        let kind = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
        let text =
            String::from_utf8(bytes.to_vec()).map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
        if kind.starts_with("application/sparql-query") {
            Some(text)
        } else if kind.starts_with("application/x-www-form-urlencoded") {
            param(&form_pairs(&text)?, "query").map(str::to_string)
        } else {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "POST a query as application/sparql-query or application/x-www-form-urlencoded",
            ));
        }
    };
    let text = text.ok_or_else(|| ApiError::bad_request("no `query`"))?;
    if text.len() > limits.max_body_bytes {
        return Err(ApiError::bad_request(format!("the query is longer than {} bytes", limits.max_body_bytes)));
    }
    let accept = parts.headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let format = if accept.contains("text/tab-separated-values") { QueryFormat::Tsv } else { QueryFormat::Json };
    let store = state.graph()?;
    let Ok(_permit) = state.queries.try_acquire() else {
        return Err(ApiError::unavailable("busy", "too many SPARQL queries at once; try again shortly", 1));
    };
    let tenant = principal.tenant.clone();
    let token = CancellationToken::new();
    let timed_out = Arc::new(AtomicBool::new(false));
    let timer = {
        let (token, timed_out, after) = (token.clone(), timed_out.clone(), limits.sparql_timeout);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            timed_out.store(true, Ordering::Relaxed);
            token.cancel();
        })
    };
    let max = limits.max_sparql_result_bytes;
    let result = blocking(move || {
        let mut out = Capped { bytes: Vec::new(), max };
        let result = store.query_cancellable(&tenant, &text, format, &mut out, Some(token));
        Ok((result, out.bytes))
    })
    .await;
    timer.abort();
    let (result, bytes) = result?;
    if let Err(e) = result {
        if timed_out.load(Ordering::Relaxed) {
            return Err(ApiError::unavailable(
                "timeout",
                format!("the query ran past {} s and was cancelled", limits.sparql_timeout.as_secs()),
                1,
            ));
        }
        let message = e.to_string();
        if message.contains("result too large") {
            return Err(ApiError::bad_request(format!("the result is over {max} bytes: add a LIMIT")));
        }
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_query", message));
    }
    let kind = match (format, bytes.first()) {
        (QueryFormat::Json, Some(b'{')) => "application/sparql-results+json",
        (QueryFormat::Tsv, Some(b'?')) | (QueryFormat::Tsv, None) => "text/tab-separated-values; charset=utf-8",
        (_, _) => "application/n-triples",
    };
    Ok(bytes_response(StatusCode::OK, kind, bytes))
}
