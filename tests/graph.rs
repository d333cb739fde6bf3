//! The knowledge graph end to end through the `medkg` binary: real PubMed
//! records through `config/pipelines/kg-lexical.yaml` into Oxigraph at
//! `DATA_DIR/graph`, then read with `medkg export`, `medkg sparql` and
//! `medkg graph`. A changed document replaces its claims, a killed run
//! resumes to the graph of an uninterrupted one, tenants see only their
//! own graph, and a remote SPARQL store holds the same graph.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{medkg, pubmed_slice, repo, succeeded};
use serde_json::Value;

fn kg_lexical() -> PathBuf {
    repo().join("config/pipelines/kg-lexical.yaml")
}

fn run(pipeline: &Path, source: &Path, data: &Path, extra: &[&str]) {
    succeeded(
        medkg()
            .args(["run", "--pipeline"])
            .arg(pipeline)
            .arg("--source")
            .arg(format!("file:{}", source.display()))
            .arg("--data-dir")
            .arg(data)
            .args(["-w", "2"])
            .args(extra)
            .output()
            .unwrap(),
    );
}

/// The graph as sorted N-Quads lines.
fn export(data: &Path, tenant: Option<&str>) -> Vec<String> {
    let mut command = medkg();
    command.args(["export", "--data-dir"]).arg(data);
    if let Some(tenant) = tenant {
        command.args(["--tenant", tenant]);
    }
    let output = succeeded(command.output().unwrap());
    let mut lines: Vec<String> = String::from_utf8(output.stdout).unwrap().lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// The bindings of a SPARQL query's results.
fn sparql(data: &Path, tenant: &str, query: &str) -> Vec<Value> {
    let output = succeeded(
        medkg().args(["sparql", "--json", "--tenant", tenant, "--data-dir"]).arg(data).arg(query).output().unwrap(),
    );
    let results: Value = serde_json::from_slice(&output.stdout).unwrap();
    results["results"]["bindings"].as_array().unwrap().clone()
}

fn count(data: &Path, tenant: &str, query: &str) -> u64 {
    let rows = sparql(data, tenant, query);
    rows[0]["n"]["value"].as_str().unwrap().parse().unwrap()
}

/// Writes records as a JSONL file.
fn write(path: &Path, records: &[Value]) -> PathBuf {
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Two graphs (sorted N-Quads) are the same; else the quads of each alone, some of them.
fn assert_same(got: &[String], want: &[String]) {
    if got != want {
        let only = |a: &[String], b: &[String]| -> Vec<String> {
            let b: std::collections::BTreeSet<&String> = b.iter().collect();
            a.iter().filter(|q| !b.contains(q)).take(12).cloned().collect()
        };
        panic!(
            "the graphs differ ({} and {} quads)\nonly in the first:\n{}\nonly in the second:\n{}",
            got.len(),
            want.len(),
            only(got, want).join("\n"),
            only(want, got).join("\n")
        );
    }
}

const CHANGED: &str = "Aspirin relieves headache in adults. Ibuprofen was not effective against migraine.";

#[test]
fn a_changed_document_replaces_its_claims_and_the_graph_equals_a_fresh_build() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut records) = pubmed_slice(dir.path(), 400);
    let data = dir.path().join("data");
    run(&kg_lexical(), &write(&dir.path().join("first.jsonl"), &records), &data, &[]);

    let documents =
        count(&data, "default", "SELECT (COUNT(DISTINCT ?d) AS ?n) WHERE { GRAPH ?d { ?d a medkg:Document } }");
    assert_eq!(documents, 400, "every record has its document graph");
    let before = export(&data, None);
    assert!(before.len() > 2_000, "a graph of 400 abstracts: {} quads", before.len());
    let stats = succeeded(medkg().args(["stats", "--json", "--data-dir"]).arg(&data).output().unwrap());
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["graph"]["quads"], before.len() as u64, "{stats}");
    assert_eq!(stats["graph"]["documents"], 400, "{stats}");

    // The document with the most claims says something else now.
    let claims = sparql(
        &data,
        "default",
        "SELECT ?id (COUNT(?c) AS ?n) WHERE { GRAPH ?d { ?c a biolink:Association . ?d medkg:id ?id } } \
         GROUP BY ?id ORDER BY DESC(?n) ?id LIMIT 1",
    );
    let changed_id = claims[0]["id"]["value"].as_str().unwrap().to_string();
    let pmid = changed_id.strip_prefix("pmid:").unwrap();
    let at = records.iter().position(|r| r["pmid"] == pmid).unwrap();
    records[at]["abstract"] = Value::from(CHANGED);
    run(&kg_lexical(), &write(&dir.path().join("change.jsonl"), &records[at..=at]), &data, &[]);

    let doc_claims = |data: &Path| {
        sparql(
            data,
            "default",
            &format!(
                "SELECT ?s ?p ?o ?neg WHERE {{ GRAPH ?d {{ ?d medkg:id \"{changed_id}\" . ?c biolink:subject ?s ; \
                 biolink:predicate ?p ; biolink:object ?o ; medkg:negated ?neg }} }} ORDER BY ?s ?p ?o"
            ),
        )
    };
    let now: Vec<(String, String, String, String)> = doc_claims(&data)
        .iter()
        .map(|r| {
            let v = |k: &str| r[k]["value"].as_str().unwrap().to_string();
            (v("s"), v("p"), v("o"), v("neg"))
        })
        .collect();
    let treats = ("http://identifiers.org/drugbank/DB00945", "https://w3id.org/biolink/vocab/treats");
    assert!(
        now.iter().any(|(s, p, o, neg)| (s.as_str(), p.as_str()) == treats
            && o == "http://purl.obolibrary.org/obo/HP_0002315"
            && neg == "false"),
        "aspirin treats headache: {now:?}"
    );
    assert!(now.iter().any(|(_, _, _, neg)| neg == "true"), "the negated ibuprofen claim: {now:?}");
    // Only the new text's claims are left for it: the old ones went with the old version.
    let old_claims = claims[0]["n"]["value"].as_str().unwrap().parse::<usize>().unwrap();
    assert!(now.len() < old_claims, "{} claims now, {old_claims} before", now.len());

    // Incremental (first run, then the change, restored from the store in between)
    // equals a from-scratch build over the final documents.
    let fresh = dir.path().join("fresh");
    run(&kg_lexical(), &write(&dir.path().join("final.jsonl"), &records), &fresh, &[]);
    let (incremental, batch) = (export(&data, None), export(&fresh, None));
    assert_same(&incremental, &batch);
    assert_ne!(incremental, before);

    // Support counts are distinct documents: the tenant graph says so for every edge.
    let support =
        count(&data, "default", "SELECT (SUM(?n) AS ?n) WHERE { ?e a biolink:Association ; medkg:support ?n }");
    let distinct = count(
        &data,
        "default",
        "SELECT (COUNT(*) AS ?n) WHERE { SELECT DISTINCT ?d ?s ?p ?o WHERE { GRAPH ?d { ?c biolink:subject ?s ; \
         biolink:predicate ?p ; biolink:object ?o ; medkg:negated false } } }",
    );
    assert_eq!(support, distinct, "support = distinct (document, edge) pairs");
}

#[test]
fn a_killed_run_resumes_to_the_graph_of_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (source, _) = pubmed_slice(dir.path(), 6_000);
    let pipeline = dir.path().join("kg-small-epochs.yaml");
    let text = std::fs::read_to_string(kg_lexical())
        .unwrap()
        .replace("epoch_records: 1024", "epoch_records: 128")
        .replace("commit_interval: auto", "commit_interval: 50ms");
    assert!(text.contains("commit_interval: 50ms"), "kg-lexical.yaml no longer says commit_interval: auto");
    std::fs::write(&pipeline, text).unwrap();
    let clean = dir.path().join("clean");
    run(&pipeline, &source, &clean, &[]);

    let crashed = dir.path().join("crashed");
    let mut child = medkg()
        .args(["run", "--pipeline"])
        .arg(&pipeline)
        .arg("--source")
        .arg(format!("file:{}", source.display()))
        .arg("--data-dir")
        .arg(&crashed)
        .args(["-w", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoints = crashed.join("checkpoints");
    let deadline = Instant::now() + Duration::from_secs(300);
    let committed = loop {
        assert!(Instant::now() < deadline, "no checkpoint within 300 s");
        assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed midway");
        let checkpoint = std::fs::read_dir(&checkpoints)
            .ok()
            .and_then(|d| {
                d.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "json"))
            })
            .and_then(|p| std::fs::read_to_string(p).ok());
        if let Some(v) = checkpoint.and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
            if v["committed"].as_u64().unwrap_or(0) > 500 {
                break v["committed"].as_u64().unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(committed < 6_000, "killed after the end ({committed})");

    run(&pipeline, &source, &crashed, &[]);
    let (resumed, uninterrupted) = (export(&crashed, None), export(&clean, None));
    assert_same(&resumed, &uninterrupted);
}

#[test]
fn tenants_see_only_their_own_graph_and_graph_shows_neighbours_with_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let (_, records) = pubmed_slice(dir.path(), 300);
    let data = dir.path().join("data");
    let mut a = records[..150].to_vec();
    a.push(serde_json::json!({"pmid": "90000001", "title": "Aspirin and headache", "abstract": CHANGED}));
    run(&kg_lexical(), &write(&dir.path().join("a.jsonl"), &a), &data, &["--tenant", "alpha"]);
    run(&kg_lexical(), &write(&dir.path().join("b.jsonl"), &records[150..]), &data, &["--tenant", "beta"]);

    let docs = "SELECT (COUNT(DISTINCT ?d) AS ?n) WHERE { GRAPH ?d { ?d a medkg:Document } }";
    assert_eq!(count(&data, "alpha", docs), 151);
    assert_eq!(count(&data, "beta", docs), 150);
    // Naming the other tenant's graph does not reach it.
    let beta_graph = "urn:medkg:tenant:beta";
    let sneaky = format!("SELECT (COUNT(*) AS ?n) FROM <{beta_graph}> FROM NAMED <{beta_graph}> WHERE {{ ?s ?p ?o }}");
    let alpha_edges = count(&data, "alpha", "SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }");
    assert_eq!(count(&data, "alpha", &sneaky), alpha_edges, "FROM is replaced by the tenant's own graph");
    let other = count(&data, "alpha", "SELECT (COUNT(*) AS ?n) WHERE { GRAPH ?g { ?d medkg:tenant \"beta\" } }");
    assert_eq!(other, 0);
    // An export of one tenant holds none of the other's documents.
    assert!(export(&data, Some("alpha")).iter().all(|q| !q.contains("urn:medkg:doc:beta:")));

    let output = succeeded(
        medkg()
            .args(["graph", "--json", "--tenant", "alpha", "--data-dir"])
            .arg(&data)
            .arg("aspirin")
            .output()
            .unwrap(),
    );
    let views: Value = serde_json::from_slice(&output.stdout).unwrap();
    let aspirin = &views[0];
    assert_eq!(aspirin["concept"], "DRUGBANK:DB00945", "{views}");
    assert_eq!(aspirin["category"], "biolink:Drug");
    let headache = aspirin["neighbours"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["concept"] == "HP:0002315" && n["predicate"] == "biolink:treats")
        .unwrap_or_else(|| panic!("aspirin treats headache: {views}"));
    assert_eq!(headache["outgoing"], true);
    assert!(headache["support"].as_u64().unwrap() >= 1);
    let evidence = headache["evidence"].as_array().unwrap();
    assert!(
        evidence.iter().any(|e| e[0] == "pmid:90000001" && e[1] == "Aspirin relieves headache in adults."),
        "{headache}"
    );
    // Search restricted to the chunks that mention aspirin.
    let output = succeeded(
        medkg()
            .args([
                "search",
                "--json",
                "--mode",
                "bm25",
                "--tenant",
                "alpha",
                "--entity",
                "DRUGBANK:DB00945",
                "--data-dir",
            ])
            .arg(&data)
            .arg("headache adults")
            .output()
            .unwrap(),
    );
    let hits: Vec<Value> = serde_json::from_slice::<Value>(&output.stdout).unwrap().as_array().unwrap().clone();
    let mentioning: Vec<String> = sparql(
        &data,
        "alpha",
        "SELECT ?id WHERE { GRAPH ?d { ?c medkg:mentions <http://identifiers.org/drugbank/DB00945> ; medkg:id ?id } }",
    )
    .iter()
    .map(|r| r["id"]["value"].as_str().unwrap().to_string())
    .collect();
    assert!(hits.iter().any(|h| h["doc_id"] == "pmid:90000001"), "{hits:?}");
    assert!(hits.iter().all(|h| mentioning.contains(&h["chunk_id"].as_str().unwrap().to_string())), "{hits:?}");
    // The other tenant has no such document, so no such evidence.
    let beta = succeeded(
        medkg()
            .args(["graph", "--json", "--tenant", "beta", "--data-dir"])
            .arg(&data)
            .arg("DRUGBANK:DB00945")
            .output()
            .unwrap(),
    );
    assert!(!String::from_utf8_lossy(&beta.stdout).contains("90000001"));
}

#[test]
fn bad_queries_and_missing_graphs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let output =
        medkg().args(["sparql", "--data-dir"]).arg(dir.path()).arg("SELECT * WHERE { ?s ?p ?o }").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no graph here"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let (source, _) = pubmed_slice(dir.path(), 20);
    let data = dir.path().join("data");
    run(&kg_lexical(), &source, &data, &[]);
    let output = medkg().args(["sparql", "--data-dir"]).arg(&data).arg("SELECT * WHERE { ?s ?p").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("SPARQL"), "{}", String::from_utf8_lossy(&output.stderr));
    // A SERVICE call would leave the machine: refused.
    let output = medkg()
        .args(["sparql", "--data-dir"])
        .arg(&data)
        .arg("SELECT * WHERE { SERVICE <http://127.0.0.1:9/sparql> { ?s ?p ?o } }")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn an_independent_client_reads_the_export_and_counts_as_medkg_sparql() {
    let rdflib = std::env::var("MEDKG_RDFLIB").expect("MEDKG_RDFLIB: scripts/test.sh sets it (scripts/rdflib.sh)");
    let dir = tempfile::tempdir().unwrap();
    let (source, _) = pubmed_slice(dir.path(), 200);
    let data = dir.path().join("data");
    run(&kg_lexical(), &source, &data, &[]);
    let nquads = dir.path().join("graph.nq");
    let output = succeeded(medkg().args(["export", "--tenant", "default", "--data-dir"]).arg(&data).output().unwrap());
    std::fs::write(&nquads, &output.stdout).unwrap();

    let claims = "SELECT (COUNT(*) AS ?n) WHERE { GRAPH ?g { ?c a biolink:Association ; medkg:negated false } }";
    let edges = "SELECT (COUNT(*) AS ?n) WHERE { ?e medkg:support ?s }";
    let script = r#"
import sys, rdflib
ds = rdflib.Dataset()
ds.parse(sys.argv[1], format="nquads")
B, M = "https://w3id.org/biolink/vocab/", "https://w3id.org/medkg/vocab#"
claims = f"SELECT (COUNT(*) AS ?n) WHERE {{ GRAPH ?g {{ ?c a <{B}Association> ; <{M}negated> false }} }}"
edges = f"SELECT (COUNT(*) AS ?n) WHERE {{ GRAPH <urn:medkg:tenant:default> {{ ?e <{M}support> ?s }} }}"
print(*(int(next(iter(ds.query(q)))[0]) for q in (claims, edges)))
"#;
    let output = std::process::Command::new("python3")
        .env("PYTHONPATH", &rdflib)
        .arg("-c")
        .arg(script)
        .arg(&nquads)
        .output()
        .unwrap();
    assert!(output.status.success(), "rdflib: {}", String::from_utf8_lossy(&output.stderr));
    let counted: Vec<u64> =
        String::from_utf8_lossy(&output.stdout).split_whitespace().map(|n| n.parse().unwrap()).collect();
    let ours = vec![count(&data, "default", claims), count(&data, "default", edges)];
    assert!(ours[0] > 10 && ours[1] > 10, "a graph worth comparing: {ours:?}");
    assert_eq!(counted, ours, "rdflib over the N-Quads export and medkg sparql agree");
}

/// Oxigraph's SPARQL server (`scripts/oxigraph-server.sh`) on a free
/// loopback port, persisting to `location`; killed on drop.
struct SparqlServer {
    child: std::process::Child,
    url: String,
}

impl SparqlServer {
    fn start(location: &Path) -> SparqlServer {
        let binary = std::env::var("MEDKG_OXIGRAPH")
            .expect("MEDKG_OXIGRAPH: scripts/test.sh sets it (scripts/oxigraph-server.sh)");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(binary)
            .arg("serve")
            .arg("--location")
            .arg(location)
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the SPARQL server did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        SparqlServer { child, url: format!("http://127.0.0.1:{port}") }
    }

    /// Its whole dataset (Graph Store protocol), as sorted N-Quads lines.
    fn dataset(&self) -> Vec<String> {
        let response = reqwest::blocking::Client::new()
            .get(format!("{}/store", self.url))
            .header("Accept", "application/n-quads")
            .send()
            .unwrap();
        assert!(response.status().is_success(), "GET /store: {}", response.status());
        let mut lines: Vec<String> = response.text().unwrap().lines().map(str::to_string).collect();
        lines.sort();
        lines
    }
}

impl Drop for SparqlServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--graph sparql:URL`: the same runs write the same graph to Oxigraph's
/// server as to the embedded store, a restart restores its state from the
/// endpoint, and a run whose endpoint is down fails without committing,
/// then resumes once it is back.
#[test]
fn a_remote_sparql_store_holds_the_same_graph_as_the_embedded_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut records) = pubmed_slice(dir.path(), 300);
    let first = write(&dir.path().join("first.jsonl"), &records);
    let at = 7;
    records[at]["abstract"] = Value::from(CHANGED);
    let change = write(&dir.path().join("change.jsonl"), &records[at..=at]);

    let embedded = dir.path().join("embedded");
    run(&kg_lexical(), &first, &embedded, &[]);
    run(&kg_lexical(), &change, &embedded, &[]);

    let location = dir.path().join("server");
    let server = SparqlServer::start(&location);
    let remote = dir.path().join("remote");
    let graph = format!("sparql:{}", server.url);
    run(&kg_lexical(), &first, &remote, &["--graph", &graph]);
    assert!(!remote.join("graph").exists(), "nothing is kept in DATA_DIR/graph");
    drop(server);

    // The endpoint is down: the change cannot be written, so the run fails and its
    // checkpoint stays where it was.
    let checkpoint = |data: &Path| -> Vec<(PathBuf, String)> {
        let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(data.join("checkpoints"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| (e.path(), std::fs::read_to_string(e.path()).unwrap_or_default()))
            .collect();
        files.sort();
        files
    };
    let before = checkpoint(&remote);
    let output = medkg()
        .args(["run", "--pipeline"])
        .arg(kg_lexical())
        .arg("--source")
        .arg(format!("file:{}", change.display()))
        .arg("--data-dir")
        .arg(&remote)
        .args(["--graph", &graph])
        .output()
        .unwrap();
    assert!(!output.status.success(), "a run with no endpoint succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&server_url_of(&graph)), "the error names the endpoint: {stderr}");
    assert_eq!(checkpoint(&remote), before, "nothing committed past the graph");

    // Back up (on another port): the change is applied over the restored state.
    let server = SparqlServer::start(&location);
    let graph = format!("sparql:{}", server.url);
    run(&kg_lexical(), &change, &remote, &["--graph", &graph]);
    assert_same(&server.dataset(), &export(&embedded, None));
}

fn server_url_of(graph: &str) -> String {
    graph.trim_start_matches("sparql:").to_string()
}

/// The two other seed pipelines that end in the graph, with the real models:
/// `auto.yaml` (all eight stages) over PubMed records, where `--entity`
/// restricts every search mode; `clinical-trials.yaml` over study records,
/// whose interventions and conditions become claims.
#[test]
fn the_auto_and_clinical_trials_pipelines_run_end_to_end_into_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut records) = pubmed_slice(dir.path(), 40);
    records.push(serde_json::json!({"pmid": "90000002", "title": "Aspirin for headache", "abstract": CHANGED}));
    let source = write(&dir.path().join("auto.jsonl"), &records);
    let models = common::models();
    let data = dir.path().join("auto");
    run(&repo().join("config/pipelines/auto.yaml"), &source, &data, &["--models", models.to_str().unwrap()]);
    let docs = "SELECT (COUNT(DISTINCT ?d) AS ?n) WHERE { GRAPH ?d { ?d a medkg:Document } }";
    assert_eq!(count(&data, "default", docs), 41);
    for mode in ["bm25", "dense", "splade", "hybrid"] {
        let output = succeeded(
            medkg()
                .args(["search", "--json", "--mode", mode, "--entity", "HP:0002315", "-k", "50", "--data-dir"])
                .arg(&data)
                .arg("headache relief")
                .output()
                .unwrap(),
        );
        let hits: Vec<Value> = serde_json::from_slice::<Value>(&output.stdout).unwrap().as_array().unwrap().clone();
        let ids: Vec<&str> = hits.iter().map(|h| h["chunk_id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["pmid:90000002#0"], "{mode}: only the chunk that mentions headache");
    }

    // A trial of metformin in polycystic ovary syndrome, from the bundled record's shape.
    let input = dir.path().join("trials");
    std::fs::create_dir(&input).unwrap();
    std::fs::copy(repo().join("tests/fixtures/ctgov/NCT04280705.json"), input.join("NCT04280705.json")).unwrap();
    let mut study: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("tests/fixtures/ctgov/NCT04280705.json")).unwrap())
            .unwrap();
    let protocol = &mut study["protocolSection"];
    protocol["identificationModule"]["nctId"] = Value::from("NCT09999999");
    protocol["conditionsModule"]["conditions"] = serde_json::json!(["Polycystic Ovary Syndrome"]);
    protocol["armsInterventionsModule"]["interventions"] = serde_json::json!([{"type": "DRUG", "name": "Metformin"}]);
    std::fs::write(input.join("NCT09999999.json"), study.to_string()).unwrap();
    let data = dir.path().join("trials-data");
    run(&repo().join("config/pipelines/clinical-trials.yaml"), &input, &data, &["--models", models.to_str().unwrap()]);
    assert_eq!(count(&data, "default", docs), 2);
    let rows = sparql(
        &data,
        "default",
        "SELECT ?o ?n WHERE { ?e biolink:subject <http://identifiers.org/drugbank/DB00331> ; \
         biolink:predicate biolink:in_clinical_trials_for ; biolink:object ?o ; medkg:support ?n }",
    );
    assert_eq!(rows.len(), 1, "metformin is in a trial for one condition: {rows:?}");
    assert_eq!(rows[0]["n"]["value"], "1");
}
