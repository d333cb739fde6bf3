//! `medkg serve` end to end: every endpoint against `docs/openapi.yaml`,
//! tenancy over random tokens (proptest), hostile requests, a run that
//! serves while Kafka input streams in, and the operator UI driven by a
//! real headless Chromium during a real run.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{medkg, pubmed_slice, Reply, TestServer};
use medkg_serve::{Auth, Limits, Role, ServeOptions};
use serde_json::{json, Value};

// ---------------------------------------------------------------- the OpenAPI description as a checker

/// `docs/openapi.yaml`, read once.
fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = std::fs::read_to_string(common::repo().join("docs/openapi.yaml")).unwrap();
        serde_saphyr::from_str(&text).unwrap()
    })
}

/// What `$ref` points at.
fn deref(value: &Value) -> &Value {
    let mut value = value;
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("external $ref {reference}"));
        value = spec().pointer(pointer).unwrap_or_else(|| panic!("unresolved $ref {reference}"));
    }
    value
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        other => panic!("unknown schema type {other}"),
    }
}

/// Checks `value` against a JSON Schema of the subset the description
/// uses (type, properties, required, additionalProperties, items, enum,
/// const, oneOf, min/maxItems, minimum, maximum, minLength).
fn validate(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = deref(schema);
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let passing = options.iter().filter(|s| validate(s, value, at).is_ok()).count();
        return if passing == 1 { Ok(()) } else { Err(format!("{at}: {passing} of oneOf match {value}")) };
    }
    match schema.get("type") {
        Some(Value::String(t)) if !type_matches(t, value) => return Err(format!("{at}: not {t}: {value}")),
        Some(Value::Array(ts)) if !ts.iter().any(|t| type_matches(t.as_str().unwrap(), value)) => {
            return Err(format!("{at}: not any of {ts:?}: {value}"))
        }
        _ => {}
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            return Err(format!("{at}: {value} not in {options:?}"));
        }
    }
    if let Some(constant) = schema.get("const") {
        if constant != value {
            return Err(format!("{at}: {value} is not {constant}"));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), value.as_f64()) {
        if n < min {
            return Err(format!("{at}: {n} < {min}"));
        }
    }
    if let (Some(max), Some(n)) = (schema.get("maximum").and_then(Value::as_f64), value.as_f64()) {
        if n > max {
            return Err(format!("{at}: {n} > {max}"));
        }
    }
    if let (Some(min), Some(s)) = (schema.get("minLength").and_then(Value::as_u64), value.as_str()) {
        if (s.chars().count() as u64) < min {
            return Err(format!("{at}: shorter than {min}"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let name = name.as_str().unwrap();
            if !object.contains_key(name) {
                return Err(format!("{at}: missing required `{name}` in {value}"));
            }
        }
        for (name, field) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(property) => validate(property, field, &format!("{at}.{name}"))?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => return Err(format!("{at}: undocumented field `{name}`")),
                    Some(extra @ Value::Object(_)) => validate(extra, field, &format!("{at}.{name}"))?,
                    // An object schema that lists its properties documents all of them.
                    _ if properties.is_some() => return Err(format!("{at}: undocumented field `{name}`")),
                    _ => {}
                },
            }
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if (items.len() as u64) < min {
                return Err(format!("{at}: fewer than {min} items"));
            }
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
            if (items.len() as u64) > max {
                return Err(format!("{at}: more than {max} items"));
            }
        }
        if let Some(item) = schema.get("items") {
            for (i, v) in items.iter().enumerate() {
                validate(item, v, &format!("{at}[{i}]"))?;
            }
        }
    }
    Ok(())
}

/// Panics unless the description documents `status` for `method template`
/// with a JSON schema `body` satisfies.
fn conforms(template: &str, method: &str, status: u16, body: &Value) {
    let operation = &spec()["paths"][template][method];
    assert!(operation.is_object(), "{method} {template} is not in docs/openapi.yaml");
    let response = deref(&operation["responses"][status.to_string()]);
    assert!(response.is_object(), "{method} {template} does not document {status}");
    let schema = &response["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {template} {status} has no JSON schema");
    if let Err(e) = validate(schema, body, "$") {
        panic!("{method} {template} {status} does not match docs/openapi.yaml: {e}");
    }
}

// ---------------------------------------------------------------- a client

struct Client {
    base: String,
    http: reqwest::blocking::Client,
}

/// A response: status, headers and JSON body (`Null` when not JSON).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    json: Value,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        Client { base: format!("http://{addr}"), http }
    }

    fn send(&self, request: reqwest::blocking::RequestBuilder, token: Option<&str>) -> Answer {
        let request = match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        let response = request.send().unwrap();
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let text = response.text().unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, headers, text, json }
    }

    fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)), token)
    }

    fn search(&self, body: Value, token: Option<&str>) -> Answer {
        self.post("/v1/search", "application/json", body.to_string(), token)
    }

    fn post(&self, path: &str, kind: &str, body: impl Into<reqwest::blocking::Body>, token: Option<&str>) -> Answer {
        let request = self.http.post(format!("{}{path}", self.base)).header("content-type", kind).body(body);
        self.send(request, token)
    }
}

// ---------------------------------------------------------------- fixtures

const TENANTS: [&str; 3] = ["alpha", "beta", "gamma"];

/// A data directory written by kg-lexical.yaml: 150 PubMed records, 50 per
/// tenant (the `tenant_id` of each record), plus records that fail (dead
/// letters, failed ledger rows). Returns the directory and each tenant's
/// document ids.
fn tenants_fixture(dir: &Path) -> (PathBuf, Vec<Vec<String>>) {
    let (_, records) = pubmed_slice(dir, 150);
    let mut lines = Vec::new();
    let mut ids = vec![Vec::new(); TENANTS.len()];
    for (i, mut record) in records.into_iter().enumerate() {
        let t = i % TENANTS.len();
        record["tenant_id"] = json!(TENANTS[t]);
        ids[t].push(format!("pmid:{}", record["pmid"].as_str().unwrap()));
        lines.push(record.to_string());
    }
    lines.push("{not json".into());
    lines.push(json!({"pmid": "999999991", "tenant_id": "alpha"}).to_string()); // no title, no text
    let input = dir.join("tenants.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let data = dir.join("data");
    let out = medkg()
        .args(["run", "-w", "2", "--run-id", "fixture-run"])
        .arg("--pipeline")
        .arg(common::repo().join("config/pipelines/kg-lexical.yaml"))
        .arg(format!("--source=file:{}", input.display()))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (data, ids)
}

fn token(tenant: &str, role: Role) -> String {
    format!("tok-{tenant}-{}", role.as_str())
}

fn auth() -> Auth {
    TENANTS.iter().fold(Auth::default(), |auth, t| {
        auth.with_token(&token(t, Role::Read), t, Role::Read).with_token(&token(t, Role::Admin), t, Role::Admin)
    })
}

fn serve(data: &Path, limits: Limits) -> medkg_serve::Server {
    let options =
        ServeOptions { auth: Some(auth()), limits, ..ServeOptions::new(data, "127.0.0.1:0".parse().unwrap()) };
    medkg_serve::start(options).unwrap()
}

/// Waits until `check` holds (polling), or panics with `what`.
fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- the API

#[test]
fn every_endpoint_answers_as_the_openapi_description_says() {
    let dir = tempfile::tempdir().unwrap();
    let (data, ids) = tenants_fixture(dir.path());
    let server = serve(&data, Limits::default());
    let client = Client::new(server.addr());
    let (read, admin) = (token("alpha", Role::Read), token("alpha", Role::Admin));
    let (read, admin) = (Some(read.as_str()), Some(admin.as_str()));
    wait_for("readiness", Duration::from_secs(10), || client.get("/readyz", None).status == 200);
    conforms("/readyz", "get", 200, &client.get("/readyz", None).json);
    conforms("/healthz", "get", 200, &client.get("/healthz", None).json);

    // Search: every field, the snippet's marks on the query's words.
    let found = client.search(json!({"query": "cancer cells", "k": 5, "mode": "hybrid"}), read);
    assert_eq!(found.status, 200, "{}", found.text);
    conforms("/v1/search", "post", 200, &found.json);
    let hits = found.json["hits"].as_array().unwrap();
    assert!(!hits.is_empty() && hits.len() <= 5);
    assert!(hits.iter().all(|h| ids[0].contains(&h["doc_id"].as_str().unwrap().to_string())));
    let hit = &hits[0];
    assert_eq!(hit["ranks"]["bm25"], json!(1));
    let text: Vec<char> = hit["snippet"]["text"].as_str().unwrap().chars().collect();
    let marks = hit["snippet"]["highlights"].as_array().unwrap();
    assert!(!marks.is_empty());
    for mark in marks {
        let (a, b) = (mark[0].as_u64().unwrap() as usize, mark[1].as_u64().unwrap() as usize);
        let word: String = text[a..b].iter().collect::<String>().to_lowercase();
        assert!(word == "cancer" || word == "cells", "marked `{word}`");
    }
    let weighted = client.search(json!({"query": "cancer", "k": 3, "mode": "bm25", "weights": {"bm25": 2}}), read);
    conforms("/v1/search", "post", 200, &weighted.json);

    // A document and its journey; another tenant's is not there.
    let doc = &ids[0][0];
    let got = client.get(&format!("/v1/documents/{}", doc.replace(':', "%3A")), read);
    assert_eq!(got.status, 200, "{}", got.text);
    conforms("/v1/documents/{id}", "get", 200, &got.json);
    assert_eq!(got.json["journey"]["status"], "completed");
    assert!(!got.json["chunks"].as_array().unwrap().is_empty());
    let theirs = client.get(&format!("/v1/documents/{}", ids[1][0]), read);
    assert_eq!(theirs.status, 404);
    conforms("/v1/documents/{id}", "get", 404, &theirs.json);

    // Stats: the tenant's counts; admin sees all tenants and the graph.
    let stats = client.get("/v1/stats", read);
    conforms("/v1/stats", "get", 200, &stats.json);
    assert_eq!(stats.json["docs"], json!(50));
    assert!(stats.json.get("all_tenants").is_none());
    let stats = client.get("/v1/stats", admin);
    conforms("/v1/stats", "get", 200, &stats.json);
    assert_eq!(stats.json["all_tenants"]["docs"], json!(150));
    assert!(stats.json["graph"]["claims"].as_u64().unwrap() > 0);

    // Operations: admin only.
    for path in ["/v1/runs", "/v1/runs/fixture-run", "/v1/ledger", "/v1/dead-letters"] {
        let refused = client.get(path, read);
        assert_eq!(refused.status, 403, "{path}");
        let template = if path == "/v1/runs/fixture-run" { "/v1/runs/{id}" } else { path };
        conforms(template, "get", 403, &refused.json);
    }
    let runs = client.get("/v1/runs", admin);
    conforms("/v1/runs", "get", 200, &runs.json);
    let run = client.get("/v1/runs/fixture-run", admin);
    conforms("/v1/runs/{id}", "get", 200, &run.json);
    assert_eq!(run.json["status"], "completed");
    assert_eq!(run.json["docs"], json!(150));
    let stages: Vec<&str> =
        run.json["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(stages, ["parse", "chunk", "index", "extract", "kg"]);
    // The bad JSON line and the record without text failed in parse.
    let parse = &run.json["stages"][0];
    assert_eq!((parse["docs_out"].as_u64(), parse["docs_failed"].as_u64()), (Some(150), Some(2)), "{parse}");
    assert!(parse["p95_seconds"].as_f64().unwrap() >= parse["p50_seconds"].as_f64().unwrap());
    assert!(!run.json["history"].as_array().unwrap().is_empty());
    conforms("/v1/runs/{id}", "get", 404, &client.get("/v1/runs/nope", admin).json);
    let ledger = client.get("/v1/ledger?status=failed", admin);
    conforms("/v1/ledger", "get", 200, &ledger.json);
    let failed: Vec<&str> =
        ledger.json["rows"].as_array().unwrap().iter().map(|r| r["doc_id"].as_str().unwrap()).collect();
    // Neither parsed, so each is keyed by its place in the source.
    assert!(failed.len() == 2 && failed.iter().any(|d| d.ends_with("tenants.jsonl:152")), "{failed:?}");
    assert_eq!(client.get("/v1/ledger?status=done", admin).status, 400);
    let letters = client.get("/v1/dead-letters?limit=10", admin);
    conforms("/v1/dead-letters", "get", 200, &letters.json);
    assert_eq!(letters.json["dead_letters"].as_array().unwrap().len(), 2, "{}", letters.text);
    let gate = client.get("/v1/gate", read);
    conforms("/v1/gate", "get", 200, &gate.json);

    // The graph: a concept by CURIE, and SPARQL over the tenant's dataset.
    let concepts = client.post(
        "/v1/sparql",
        "application/sparql-query",
        "SELECT ?c (COUNT(*) AS ?n) WHERE { ?e biolink:subject ?c } GROUP BY ?c ORDER BY DESC(?n) LIMIT 1",
        read,
    );
    assert_eq!(concepts.status, 200, "{}", concepts.text);
    assert_eq!(concepts.headers["content-type"], "application/sparql-results+json");
    let iri = concepts.json["results"]["bindings"][0]["c"]["value"].as_str().unwrap().to_string();
    let select = format!("SELECT ?p WHERE {{ <{iri}> ?p ?o }} LIMIT 3");
    let by_get = client.get(&format!("/v1/sparql?query={}", urlencode(&select)), read);
    assert_eq!(by_get.status, 200, "{}", by_get.text);
    let form =
        client.post("/v1/sparql", "application/x-www-form-urlencoded", format!("query={}", urlencode(&select)), read);
    assert_eq!(form.json, by_get.json);
    let tsv = client.send(
        client
            .http
            .get(format!("{}/v1/sparql?query={}", client.base, urlencode(&select)))
            .header("accept", "text/tab-separated-values"),
        read,
    );
    assert!(tsv.text.starts_with("?p"), "{}", tsv.text);
    let bad = client.get("/v1/sparql?query=SELEC", read);
    conforms("/v1/sparql", "get", 400, &bad.json);
    assert_eq!(bad.json["error"]["code"], "bad_query");
    let curie = medkg_operators::graph::rdf::curie_of(&iri).unwrap();
    let concept = client.get(&format!("/v1/graph/{}?limit=5&evidence=2", urlencode(&curie)), read);
    assert_eq!(concept.status, 200, "{}", concept.text);
    conforms("/v1/graph/{id}", "get", 200, &concept.json);
    assert!(!concept.json["concepts"][0]["neighbours"].as_array().unwrap().is_empty());
    conforms("/v1/graph/{id}", "get", 404, &client.get("/v1/graph/NOPE%3A0", read).json);
    // Search restricted to the chunks that mention the concept (by the graph).
    let label = concept.json["concepts"][0]["label"].as_str().unwrap_or(&curie).to_string();
    let all = client.search(json!({"query": label, "mode": "bm25", "k": 50}), read);
    let only = client.search(json!({"query": label, "mode": "bm25", "k": 50, "entity": curie}), read);
    assert_eq!(only.status, 200, "{}", only.text);
    conforms("/v1/search", "post", 200, &only.json);
    let (all, only) = (all.json["hits"].as_array().unwrap().len(), only.json["hits"].as_array().unwrap().len());
    assert!(only >= 1 && only <= all, "{only} of {all}");
    let none = client.search(json!({"query": label, "mode": "bm25", "entity": "NOPE:0"}), read);
    assert_eq!(none.json["hits"], json!([]));

    // Errors, each as documented.
    let cases: Vec<(Answer, &str, u16)> = vec![
        (client.search(json!({"query": "x"}), None), "/v1/search", 401),
        (client.search(json!({"query": "x"}), Some("wrong")), "/v1/search", 401),
        (client.search(json!({"query": "x", "mode": "telepathy"}), read), "/v1/search", 400),
        (client.search(json!({"query": "x", "k": 1_000_000}), read), "/v1/search", 400),
        (client.search(json!({"query": "x", "k": 0}), read), "/v1/search", 400),
        (client.search(json!({"query": "   "}), read), "/v1/search", 400),
        (client.search(json!({"query": "x".repeat(5000)}), read), "/v1/search", 400),
        (client.search(json!({"query": "x", "weights": {"bm25": -1}}), read), "/v1/search", 400),
        (client.search(json!({"query": "x", "extra": true}), read), "/v1/search", 400),
        (client.search(json!({"query": "x", "mode": "dense"}), read), "/v1/search", 400),
        (client.post("/v1/search", "application/json", "{\"query\": ", read), "/v1/search", 400),
        (client.post("/v1/search", "text/plain", "{\"query\": \"x\"}", read), "/v1/search", 415),
        (client.post("/v1/search", "application/json", vec![b' '; 100_000], read), "/v1/search", 413),
        (client.post("/v1/sparql", "text/plain", "SELECT * {}", read), "/v1/sparql", 415),
        (client.get("/v1/documents/%ZZ", read), "/v1/documents/{id}", 400),
        (client.get(&format!("/v1/documents/{}", "d".repeat(600)), read), "/v1/documents/{id}", 400),
        (client.get("/v1/runs?limit=100000", admin), "/v1/runs", 400),
    ];
    for (answer, template, status) in cases {
        assert_eq!(answer.status, status, "{template}: {}", answer.text);
        let method = if template == "/v1/search" || answer.status == 415 { "post" } else { "get" };
        conforms(template, method, status, &answer.json);
    }
    let unauthorized = client.get("/v1/stats", None);
    assert_eq!(unauthorized.headers["www-authenticate"], "Bearer");
    assert_eq!(client.get("/v1/nothing", read).status, 404);
    assert_eq!(client.get("/v1/search", read).status, 405);

    // Metrics count what was asked, by route template.
    let metrics = client.get("/metrics", None).text;
    assert!(metrics.contains("medkg_http_requests_total{route=\"/v1/search\",status=\"200\"}"), "{metrics}");
    assert!(metrics.contains("medkg_http_requests_total{route=\"/v1/documents/{id}\",status=\"404\"}"));
    // The description is served too, and the UI's files.
    assert!(client.get("/v1/openapi.yaml", None).text.starts_with("openapi: 3.1"));
    for path in ["/", "/ui/app.js", "/ui/app.css"] {
        assert_eq!(client.get(path, None).status, 200, "{path}");
    }
    let page = client.get("/", None);
    assert!(page.headers["content-security-policy"].to_str().unwrap().starts_with("default-src 'self'"));
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------- tenancy

#[test]
fn no_response_ever_holds_another_tenants_document() {
    use proptest::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let (data, ids) = tenants_fixture(dir.path());
    let server = serve(&data, Limits::default());
    let client = Client::new(server.addr());
    wait_for("readiness", Duration::from_secs(10), || client.get("/readyz", None).status == 200);
    let owner = |doc: &str| ids.iter().position(|list| list.iter().any(|d| d == doc));
    let words = ["cancer", "cells", "patients", "protein", "treatment", "blood", "effect", "acid", "rat", "human"];
    let config = ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(tenant in 0usize..3, admin in any::<bool>(), query in proptest::sample::subsequence(words.to_vec(), 1..4),
                        other in 0usize..3, pick in 0usize..50, k in 1usize..40)| {
        let role = if admin { Role::Admin } else { Role::Read };
        let token = token(TENANTS[tenant], role);
        // Search: only the token's tenant's documents, in every mode it has.
        let found = client.search(json!({"query": query.join(" "), "k": k, "mode": "bm25"}), Some(&token));
        prop_assert_eq!(found.status, 200);
        for hit in found.json["hits"].as_array().unwrap() {
            prop_assert_eq!(owner(hit["doc_id"].as_str().unwrap()), Some(tenant), "{}", hit);
        }
        // A document: found for its tenant, 404 for any other (admins included).
        let doc = &ids[other][pick % ids[other].len()];
        let got = client.get(&format!("/v1/documents/{doc}"), Some(&token));
        prop_assert_eq!(got.status, if other == tenant { 200 } else { 404 }, "{}", got.text);
        // SPARQL: FROM and FROM NAMED cannot reach another tenant's graphs.
        let sparql = format!(
            "SELECT DISTINCT ?t FROM <urn:medkg:tenant:{o}> FROM NAMED <urn:medkg:tenant:{o}> WHERE {{ {{ ?s medkg:tenant ?t }} UNION {{ GRAPH ?g {{ ?s medkg:tenant ?t }} }} }}",
            o = TENANTS[other]
        );
        let answer = client.get(&format!("/v1/sparql?query={}", urlencode(&sparql)), Some(&token));
        prop_assert_eq!(answer.status, 200, "{}", answer.text);
        for row in answer.json["results"]["bindings"].as_array().unwrap() {
            prop_assert_eq!(row["t"]["value"].as_str(), Some(TENANTS[tenant]));
        }
        // Stats count the token's tenant only.
        prop_assert_eq!(&client.get("/v1/stats", Some(&token)).json["docs"], &json!(50));
    });
    // A wrong or missing token gets 401 everywhere under /v1.
    for path in ["/v1/stats", "/v1/gate", "/v1/runs", "/v1/documents/x", "/v1/graph/x", "/v1/sparql?query=ASK{}"] {
        assert_eq!(client.get(path, None).status, 401, "{path}");
        assert_eq!(client.get(path, Some("tok-alpha-root")).status, 401, "{path}");
    }
}

// ---------------------------------------------------------------- hostile requests

#[test]
fn hostile_clients_get_clear_errors_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = tenants_fixture(dir.path());
    let limits = Limits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        sparql_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = serve(&data, limits);
    let client = Client::new(server.addr());
    let read = token("beta", Role::Read);
    let read = Some(read.as_str());
    wait_for("readiness", Duration::from_secs(10), || client.get("/readyz", None).status == 200);

    // Slowloris: headers that never end are cut off after the header timeout.
    let mut slow = TcpStream::connect(server.addr()).unwrap();
    slow.write_all(b"GET /v1/stats HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let began = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(began.elapsed() < Duration::from_secs(4), "a slow client held its connection {:?}", began.elapsed());
    // A body that trickles: 408 after the body timeout.
    let mut trickle = TcpStream::connect(server.addr()).unwrap();
    write!(
        trickle,
        "POST /v1/search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-beta-read\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"qu"
    )
    .unwrap();
    trickle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = BufReader::new(&trickle).read_line(&mut answer);
    assert!(answer.contains(" 408 "), "{answer}");
    // Headers past the buffer: refused, not buffered without end.
    let huge =
        client.send(client.http.get(format!("{}/v1/stats", client.base)).header("x-big", "a".repeat(200_000)), read);
    assert!(huge.status == 431 || huge.status == 400, "{}", huge.status);
    // A SPARQL query that runs too long is cancelled with 503.
    let heavy = "SELECT (COUNT(*) AS ?n) WHERE { ?a ?b ?c . ?d ?e ?f . ?g ?h ?i }";
    let cancelled = client.get(&format!("/v1/sparql?query={}", urlencode(heavy)), read);
    assert_eq!(cancelled.status, 503, "{}", cancelled.text);
    assert_eq!(cancelled.json["error"]["code"], "timeout");
    assert!(cancelled.headers.contains_key("retry-after"));
    conforms("/v1/sparql", "get", 503, &cancelled.json);
    // Garbage on the wire, control characters in ids, odd Unicode: answered, never fatal.
    let mut garbage = TcpStream::connect(server.addr()).unwrap();
    garbage.write_all(b"\x00\xff\xfe NOT HTTP\r\n\r\n").unwrap();
    let mut ignored = Vec::new();
    let _ = garbage.read_to_end(&mut ignored);
    assert_eq!(client.get("/v1/documents/a%00b", read).status, 400);
    let odd = client.search(json!({"query": "\u{202e}\u{0}🧬 ̈ \u{fffd}"}), read);
    assert_eq!(odd.status, 200, "{}", odd.text);

    // Still up, still answering.
    assert_eq!(client.search(json!({"query": "protein"}), read).status, 200);
    assert_eq!(client.get("/healthz", None).status, 200);
}

#[test]
fn searches_past_the_bound_get_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = tenants_fixture(dir.path());
    let server = serve(&data, Limits { max_searches: 0, ..Limits::default() });
    let client = Client::new(server.addr());
    wait_for("readiness", Duration::from_secs(10), || client.get("/readyz", None).status == 200);
    let busy = client.search(json!({"query": "protein"}), Some("tok-gamma-read"));
    assert_eq!(busy.status, 503, "{}", busy.text);
    assert_eq!(busy.headers["retry-after"], "1");
    conforms("/v1/search", "post", 503, &busy.json);
    // Everything else still answers.
    assert_eq!(client.get("/v1/stats", Some("tok-gamma-read")).status, 200);
    let metrics = client.get("/metrics", None).text;
    assert!(metrics.contains("medkg_http_searches_refused_total 1"), "{metrics}");
}

#[test]
fn without_auth_only_loopback_is_served() {
    let out = medkg().args(["serve", "--data-dir", "/nonexistent", "--addr", "0.0.0.0:0"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to serve 0.0.0.0:0 without --auth"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("auth.yaml");
    std::fs::write(&bad, "tokens:\n  - sha256: nothex\n    tenant: a\n    role: read\n").unwrap();
    let out = medkg().args(["serve", "--addr", "0.0.0.0:0", "--auth"]).arg(&bad).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens[0].sha256"));
    // `medkg token` prints a token and the entry that lets it in.
    let out = medkg().args(["token", "--tenant", "acme", "--role", "admin", "--name", "ops"]).output().unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let entry = String::from_utf8_lossy(&out.stderr);
    let yaml = format!("tokens:\n{}", entry.split_once("`tokens:`:\n").unwrap().1);
    let auth = Auth::parse(&yaml).unwrap();
    let who = auth.principal(Some(format!("Bearer {token}").as_bytes())).unwrap();
    assert_eq!((who.tenant.as_str(), who.role), ("acme", Role::Admin));
}

// ---------------------------------------------------------------- a live run

/// A `medkg run ... --serve 127.0.0.1:0` child, and the address it serves.
struct LiveRun {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl LiveRun {
    fn start(mut command: std::process::Command) -> LiveRun {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr: Arc<std::sync::Mutex<String>> = Arc::default();
        let log = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.strip_prefix("medkg: serving at http://") {
                    let _ = tx.send(rest.split('/').next().unwrap_or("").to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no serving line:\n{}", stderr.lock().unwrap()));
        LiveRun { child, addr: addr.parse().unwrap(), stderr }
    }

    fn stop(self) -> String {
        // SAFETY: a plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait()
    }

    /// Waits for the run to end by itself; its log.
    fn wait(mut self) -> String {
        let status = self.child.wait().unwrap();
        let log = self.stderr.lock().unwrap().clone();
        assert!(status.success(), "{log}");
        log
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn produce(file: &Path, topic: &str) {
    let output =
        medkg().args(["produce", "--brokers", &common::kafka::brokers(), "--topic", topic]).arg(file).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_run_with_serve_answers_while_kafka_streams_in_and_sees_each_commit() {
    use common::kafka;
    let dir = tempfile::tempdir().unwrap();
    let (input, records) = pubmed_slice(dir.path(), 400);
    let topic = kafka::topic("serve");
    kafka::create_topic(&topic, 2);
    // The first 300 records before the run, the rest while it serves.
    let first = dir.path().join("first.jsonl");
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&first, lines[..300].join("\n") + "\n").unwrap();
    produce(&first, &topic);
    let data = dir.path().join("data");
    let mut command = medkg();
    command
        .args([
            "run",
            "-w",
            "2",
            "--group",
            &format!("{topic}-g"),
            "--brokers",
            &kafka::brokers(),
            "--serve",
            "127.0.0.1:0",
        ])
        .arg("--pipeline")
        .arg(common::repo().join("config/pipelines/lexical.yaml"))
        .arg(format!("--source=kafka:{topic}"))
        .arg("--data-dir")
        .arg(&data);
    let run = LiveRun::start(command);
    let client = Client::new(run.addr);
    let count = |client: &Client| client.get("/v1/stats", None).json["docs"].as_u64().unwrap_or(0);
    wait_for("the first 300 documents", Duration::from_secs(90), || count(&client) == 300);
    // While the rest streams in, searches keep answering.
    let rest = dir.path().join("rest.jsonl");
    std::fs::write(&rest, lines[300..].join("\n") + "\n").unwrap();
    let producer = {
        let (rest, topic) = (rest.clone(), topic.clone());
        std::thread::spawn(move || produce(&rest, &topic))
    };
    let mut answered = 0;
    let mut seen = Vec::new();
    while count(&client) < 400 {
        let found = client.search(json!({"query": "patients treatment", "mode": "bm25", "k": 5}), None);
        assert_eq!(found.status, 200, "{}", found.text);
        conforms("/v1/search", "post", 200, &found.json);
        seen.push(found.json["generation"].as_u64().unwrap());
        answered += 1;
        assert!(answered < 100_000, "the last documents never became searchable");
    }
    producer.join().unwrap();
    // One more search: it sees the generation that counted 400.
    let after = client.search(json!({"query": "patients treatment", "mode": "bm25", "k": 5}), None);
    seen.push(after.json["generation"].as_u64().unwrap());
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "generations go forward");
    assert!(seen.last() > seen.first(), "the readers reopened while searches ran: {seen:?}");
    // The last record is searchable by its own title once its epoch committed.
    let last = &records[399];
    let doc = format!("pmid:{}", last["pmid"].as_str().unwrap());
    let got = client.get(&format!("/v1/documents/{doc}"), None);
    assert_eq!(got.status, 200, "{}", got.text);
    let title = last["title"].as_str().unwrap();
    let found = client.search(json!({"query": title, "mode": "bm25", "k": 3}), None);
    assert!(found.json["hits"].as_array().unwrap().iter().any(|h| h["doc_id"] == json!(doc)), "{}", found.text);
    // The live run shows as running, with its stages; the run's metrics are on /metrics.
    let runs = client.get("/v1/runs", None);
    conforms("/v1/runs", "get", 200, &runs.json);
    assert_eq!(runs.json["runs"][0]["status"], "running");
    let metrics = client.get("/metrics", None).text;
    assert!(metrics.contains("medkg_docs_out_total{pipeline=\"lexical\"}"), "{metrics}");
    assert!(metrics.contains("medkg_http_requests_total"));
    run.stop();
}

// ---------------------------------------------------------------- the operator UI in a browser

/// Renders `url` in headless Chromium and returns the DOM once the page's
/// script has run (virtual time lets its fetches finish).
fn browse(url: &str) -> String {
    let out = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=4000", "--dump-dom", url])
        .output()
        .expect("chromium (scripts/setup-system.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A PNG of `url` at 1280×800.
fn screenshot(url: &str, path: &Path) {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=4000",
            "--window-size=1280,800",
        ])
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(path).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
}

/// The text inside the first element of `dom` with attribute `attr` (tags stripped).
fn element_text(dom: &str, attr: &str) -> Option<String> {
    let at = dom.find(attr)?;
    let open = dom[..at].rfind('<')?;
    let tag: String = dom[open + 1..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    let close = format!("</{tag}>");
    let end = at + dom[at..].find(&close)?;
    let inner = &dom[at..end];
    let mut text = String::new();
    let mut in_tag = true; // still inside the opening tag
    for c in inner.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[test]
fn the_operator_ui_shows_a_live_run_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (_, docs) = pubmed_slice(dir.path(), 12);
    let bodies: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    let release = Arc::new(AtomicBool::new(false));
    let held = release.clone();
    let fake = TestServer::start(move |path, _| {
        let n: usize = path.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        match path.split('/').nth(1) {
            Some("ok") => Reply::ok(bodies[n].clone()),
            Some("down") => Reply::status(503),
            Some("held") => Reply { hold: Some(held.clone()), ..Reply::ok(bodies[n].clone()) },
            _ => Reply::status(404),
        }
    });
    let config = dir.path().join("config");
    std::fs::create_dir_all(config.join("pipelines")).unwrap();
    std::fs::write(
        config.join("resilience.yaml"),
        "policies:\n  default:\n    timeout: 30s\n  retrying:\n    retries: { max_retries: 2, backoff: constant, initial_delay: 50ms, max_delay: 50ms }\n    timeout: 60s\n",
    )
    .unwrap();
    let pipeline = config.join("pipelines/fetched.yaml");
    std::fs::write(
        &pipeline,
        "name: fetched\nversion: 1\nstages:\n  - { name: fetch, type: fetch, policy: retrying, config: { url_field: url, allow_hosts: [127.0.0.1] } }\n  - { name: parse, type: parse, depends_on: [fetch] }\n  - { name: chunk, type: chunk, depends_on: [parse] }\n  - { name: index, type: index, depends_on: [chunk], config: { backends: [bm25], commit_interval: 100ms } }\nruntime: { epoch_records: 4 }\n",
    )
    .unwrap();
    let id = |n: usize| format!("pmid:{}", docs[n]["pmid"].as_str().unwrap());
    let mut lines: Vec<String> =
        (0..10).map(|n| json!({"id": id(n), "url": fake.url(&format!("/ok/{n}"))}).to_string()).collect();
    lines.push(json!({"id": id(10), "url": fake.url("/down/10")}).to_string());
    lines.push(json!({"id": id(11), "url": fake.url("/held/11")}).to_string());
    let input = dir.path().join("urls.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();

    let mut command = medkg();
    command
        .args(["run", "--run-id", "ui-run", "--serve", "127.0.0.1:0"])
        .arg("--pipeline")
        .arg(&pipeline)
        .arg(format!("--source=file:{}", input.display()))
        .arg("--data-dir")
        .arg(dir.path().join("data"));
    let run = LiveRun::start(command);
    let client = Client::new(run.addr);
    // The run is under way: ten documents searchable, one failed after its retries, one held.
    wait_for("the run's progress", Duration::from_secs(60), || {
        let failed = client.get("/v1/ledger?status=failed", None);
        client.get("/v1/stats", None).json["docs"] == json!(10)
            && failed.json["rows"].as_array().is_some_and(|r| !r.is_empty())
    });
    // The run's record is brought up to date about once a second.
    let fetch_stage =
        |run: &Value| run["stages"].as_array().and_then(|s| s.iter().find(|s| s["name"] == "fetch").cloned());
    wait_for("the run's record", Duration::from_secs(10), || {
        let run = client.get("/v1/runs/ui-run", None).json;
        fetch_stage(&run).is_some_and(|s| s["docs_out"] == json!(10) && s["docs_failed"] == json!(1))
    });
    let run_json = client.get("/v1/runs/ui-run", None).json;
    assert_eq!(run_json["status"], "running");
    let base = format!("http://{}", run.addr);

    // The stage table shows the run's numbers.
    let dom = browse(&format!("{base}/#/runs"));
    assert!(dom.contains("data-ready=\"runs\""), "{dom}");
    let fetch = element_text(&dom, "data-stage=\"fetch\"").expect("a fetch row");
    let stage = fetch_stage(&run_json).unwrap();
    assert_eq!(stage["docs_out"], json!(10), "{stage}");
    assert_eq!(stage["docs_failed"], json!(1), "{stage}");
    assert_eq!(stage["retries"], json!(2), "{stage}");
    assert!(fetch.starts_with("fetch fetch 11 10 1 "), "{fetch}");
    assert!(fetch.ends_with(" 2 closed"), "{fetch}");
    assert!(element_text(&dom, "id=\"run-cards\"").unwrap().contains("running"));
    assert!(dom.contains("<canvas id=\"throughput\""));

    // The failed document shows its error and its retries.
    let dom = browse(&format!("{base}/#/failures"));
    let row = element_text(&dom, &format!("data-doc=\"{}\"", id(10))).expect("the failed document's row");
    assert!(row.contains("fetch") && row.contains("http_503") && row.contains("fetch ×2"), "{row}");
    let dom = browse(&format!("{base}/#/doc/{}", urlencode(&id(10))));
    let journey = element_text(&dom, "id=\"journey-table\"").expect("the journey");
    assert!(journey.contains("failed") && journey.contains("fetch ×2"), "{journey}");

    // The search box returns hits, marked up.
    let title_word = docs[3]["title"].as_str().unwrap().split_whitespace().max_by_key(|w| w.len()).unwrap().to_string();
    let word: String = title_word.chars().filter(|c| c.is_alphanumeric()).collect();
    let dom = browse(&format!("{base}/#/search?q={}&mode=bm25", urlencode(&word)));
    assert!(dom.contains(&format!("data-doc=\"{}\"", id(3))), "{dom}");
    assert!(dom.to_lowercase().contains(&format!("<mark>{}</mark>", word.to_lowercase())), "{dom}");

    // Screenshots (into docs/img/ when MEDKG_UI_SCREENSHOTS names it).
    let shots = std::env::var_os("MEDKG_UI_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| dir.path().to_path_buf());
    std::fs::create_dir_all(&shots).unwrap();
    screenshot(&format!("{base}/#/runs"), &shots.join("ui-runs.png"));
    screenshot(&format!("{base}/#/failures"), &shots.join("ui-failures.png"));
    screenshot(&format!("{base}/#/search?q={}&mode=bm25", urlencode(&word)), &shots.join("ui-search.png"));

    // Released, the run finishes (and its server with it); the ledger says how it ended.
    release.store(true, Ordering::SeqCst);
    run.wait();
    let ledger = medkg_connectors::ledger::Ledger::open_existing(&dir.path().join("data")).unwrap();
    let record = ledger.run("ui-run").unwrap().expect("the run's record");
    assert_eq!((record[0].status.as_str(), record[0].docs), ("completed", 11));
}
