//! Topology validation: every shipped pipeline is valid, every kind of
//! mistake is reported with its file, line, column and name, and (proptest)
//! random DAGs compile while random cycles are rejected at the right line.

use medkg_topology::{ChunkSettings, IndexSettings, Plan, Policies, StageKind, StageSettings, StreamSpec};
use proptest::prelude::*;

fn plan(text: &str) -> Result<Plan, medkg_topology::ValidationErrors> {
    Plan::from_yaml_str("t.yaml", text, &Policies::builtin())
}

#[test]
fn shipped_pipelines_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/pipelines");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let plan = Plan::from_path(&path, &Policies::builtin())
            .unwrap_or_else(|e| panic!("{} is invalid:\n{e}", path.display()));
        assert!(!plan.stages.is_empty());
        seen += 1;
    }
    assert!(seen >= 6, "expected the five seed pipelines and hybrid.yaml, found {seen}");
    let auto = Plan::from_path(std::path::Path::new(&format!("{dir}/auto.yaml")), &Policies::builtin()).unwrap();
    let kinds: Vec<_> = auto.stages.iter().map(|s| s.kind.name()).collect();
    assert_eq!(kinds, ["ingest", "parse", "chunk", "embed", "splade", "index", "extract", "kg"]);
    let pdf =
        Plan::from_path(std::path::Path::new(&format!("{dir}/pdf-two-phase.yaml")), &Policies::builtin()).unwrap();
    assert_eq!(pdf.gates.len(), 1);
    assert_eq!(pdf.stages[pdf.gates[0].after].kind, StageKind::Download);
}

#[test]
fn every_error_of_a_file_is_reported_with_location_and_name() {
    let text = "\
name: broken
version: 1
stages:
  - name: parse
    type: parser
  - name: chunk
    type: chunk
    policy: reckless
    depends_on: [parse, nowhere]
    config: { split_by: paragraph, split_length: 0, colour: blue }
  - name: chunk
    type: index
    depends_on: [chunk]
gates:
  - name: g
    after: ghost
    condition: moon_phase
    timeout: forever
";
    let errors = plan(text).unwrap_err().0;
    let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let has = |line: u64, name: &str, words: &str| {
        errors.iter().any(|e| {
            e.location.line == line
                && e.location.column > 0
                && e.location.file == "t.yaml"
                && e.name.as_deref() == Some(name)
                && e.message.contains(words)
        })
    };
    assert!(has(5, "parse", "unknown stage type `parser`"), "{shown:#?}");
    assert!(has(8, "reckless", "unknown policy"), "{shown:#?}");
    assert!(has(9, "nowhere", "not a stage"), "{shown:#?}");
    assert!(has(10, "split_by", "paragraph"), "{shown:#?}");
    assert!(has(10, "split_length", "≥ 1"), "{shown:#?}");
    assert!(has(10, "colour", "unknown config key"), "{shown:#?}");
    assert!(has(11, "chunk", "duplicate stage name"), "{shown:#?}");
    assert!(has(16, "ghost", "not a stage"), "{shown:#?}");
    assert!(has(17, "moon_phase", "unknown condition"), "{shown:#?}");
    assert!(has(18, "g", "not a duration"), "{shown:#?}");
    assert!(shown[0].starts_with("t.yaml:5:"), "{shown:#?}");
}

#[test]
fn every_shape_error_is_reported_once_and_without_a_doubled_prefix() {
    let text = "name: shapes\nversion: 1\ncolour: red\nstages:\n  - name: parse\n    type: parse\n    bogus: 1\n  - name: chunk\n    typo: chunk\n    depends_on: parse\n";
    let errors = plan(text).unwrap_err();
    let shown = errors.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 5, "{shown}");
    assert!(lines[0].starts_with("t.yaml:3:1: error: unknown field `colour`"), "{shown}");
    assert!(lines.iter().any(|l| l.starts_with("t.yaml:7:5: error: stage `parse`: unknown field `bogus`")), "{shown}");
    assert!(lines.iter().any(|l| l.contains("stage `chunk`: missing field `type`")), "{shown}");
    assert!(lines.iter().any(|l| l.contains("stage `chunk`: `depends_on` must be a list")), "{shown}");
    assert!(!shown.contains("error: error:") && !shown.contains(" column "), "{shown}");
    // A file that does not read at all still gets its one located error.
    let errors = plan("name: [unclosed\n").unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert!(!errors.to_string().contains("error: error:"), "{errors}");
}

#[test]
fn allow_hosts_entries_are_validated() {
    let pipeline = |hosts: &str| {
        format!("name: f\nversion: 1\nstages:\n  - name: fetch\n    type: fetch\n    config: {{ allow_hosts: {hosts} }}\n  - name: parse\n    type: parse\n    depends_on: [fetch]\n")
    };
    for good in ["[]", "[clinicaltrials.gov]", "[\"*.nih.gov\", 127.0.0.1, \"10.0.0.0/8\", \"::1\"]"] {
        assert!(plan(&pipeline(good)).is_ok(), "{good}");
    }
    for bad in ["[\"*\"]", "[\"\"]", "[\"https://x.org\"]", "[\"*.0.0.1\"]", "[\"10.0.0.0/40\"]", "[7]"] {
        let errors = plan(&pipeline(bad)).expect_err(bad).to_string();
        assert!(errors.contains("allow_hosts"), "{bad}: {errors}");
    }
}

#[test]
fn stream_types_must_match_along_edges() {
    let text = "name: x\nversion: 1\nstages:\n  - name: chunk\n    type: chunk\n  - name: parse\n    type: parse\n  - name: index\n    type: index\n    depends_on: [parse]\n";
    let errors = plan(text).unwrap_err().0;
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].message.contains("no depends_on"), "{errors:#?}");
    assert_eq!(errors[1].location.line, 10);
    assert!(errors[1].message.contains("consumes chunks but `parse` (parse) produces documents"));
}

#[test]
fn overlap_must_be_smaller_than_length() {
    let text = "name: x\nversion: 1\nstages:\n  - name: parse\n    type: parse\n  - name: chunk\n    type: chunk\n    depends_on: [parse]\n    config:\n      split_length: 10\n      split_overlap: 10\n";
    let errors = plan(text).unwrap_err().0;
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].location.line, errors[0].name.as_deref()), (11, Some("split_overlap")));
}

#[test]
fn settings_are_decoded_once_with_their_defaults() {
    let plan = plan(
        "
name: p
version: 1
stages:
  - { name: chunk, type: chunk, depends_on: [parse], config: { split_length: 50 } }
  - { name: parse, type: parse }
  - { name: index, type: index, depends_on: [chunk], config: { backends: [bm25, splade], commit_interval: 250ms } }
  - { name: dl, type: download, config: { output: kafka:pdf.downloaded.v1 } }
",
    )
    .unwrap();
    let settings: Vec<&StageSettings> = plan.stages.iter().map(|s| &s.settings).collect();
    // A key that is not given takes the one default there is.
    let StageSettings::Chunk(chunk) = settings[1] else { panic!("{settings:?}") };
    assert_eq!(
        chunk,
        &ChunkSettings {
            split_by: "word".into(),
            split_length: 50,
            split_overlap: 20,
            respect_sentence_boundary: true
        }
    );
    let StageSettings::Index(index) = settings[2] else { panic!("{settings:?}") };
    assert_eq!(
        index,
        &IndexSettings {
            backends: vec!["bm25".into(), "splade".into()],
            commit_interval: medkg_topology::CommitInterval::Every(std::time::Duration::from_millis(250)),
            writer_memory_mb: 64
        }
    );
    let StageSettings::Download(download) = settings[3] else { panic!("{settings:?}") };
    assert_eq!((download.url_field.as_str(), download.max_bytes), ("pdf_url", 64 << 20));
    assert_eq!(download.output, Some(StreamSpec::Kafka("pdf.downloaded.v1".into())));
}

/// `commit_interval`: a duration (1 s by default) or `auto`; `precision`: fp32,
/// fp16 or int8, and the SPLADE default is the pooled model.
#[test]
fn commit_intervals_and_model_precisions_are_validated() {
    use medkg_topology::{CommitInterval, ModelSettings};
    use std::time::Duration;
    let index = |value: &str| {
        let text = format!("name: p\nversion: 1\nstages:\n  - {{ name: parse, type: parse }}\n  - {{ name: chunk, type: chunk, depends_on: [parse] }}\n  - {{ name: index, type: index, depends_on: [chunk]{value} }}\n");
        plan(&text).map(|p| match &p.stages[2].settings {
            StageSettings::Index(index) => index.commit_interval,
            other => panic!("{other:?}"),
        })
    };
    assert_eq!(index("").unwrap(), CommitInterval::Auto, "auto is the default");
    assert_eq!(index(", config: { commit_interval: auto }").unwrap(), CommitInterval::Auto);
    assert_eq!(index(", config: { commit_interval: 2s }").unwrap(), CommitInterval::Every(Duration::from_secs(2)));
    for bad in ["often", "7", "-1s"] {
        let errors = index(&format!(", config: {{ commit_interval: {bad} }}")).unwrap_err().to_string();
        assert!(
            errors.contains("commit_interval") && errors.contains("expected auto or a duration"),
            "{bad}: {errors}"
        );
    }

    let model = |config: &str| {
        let text = format!("name: p\nversion: 1\nstages:\n  - {{ name: parse, type: parse }}\n  - {{ name: chunk, type: chunk, depends_on: [parse] }}\n  - {{ name: splade, type: splade, depends_on: [chunk], config: {{ {config} }} }}\n");
        plan(&text).map(|p| match &p.stages[2].settings {
            StageSettings::Splade(model) => model.clone(),
            other => panic!("{other:?}"),
        })
    };
    let default: ModelSettings = model("").unwrap();
    assert_eq!((default.model.as_str(), default.precision.as_str()), ("splade-tiny.pooled", "fp32"));
    assert_eq!(model("precision: int8").unwrap().precision, "int8");
    let errors = model("precision: int4").unwrap_err().to_string();
    assert!(errors.contains("precision") && errors.contains("int8"), "{errors}");
}

#[test]
fn a_default_that_breaks_a_given_value_is_reported_at_validation() {
    // split_overlap defaults to 20: a length of 10 alone cannot work, and
    // the topology says so (the chunker once found it out at run time).
    let errors = plan("name: p\nversion: 1\nstages:\n  - { name: parse, type: parse }\n  - { name: chunk, type: chunk, depends_on: [parse], config: { split_length: 10 } }\n").unwrap_err();
    assert!(errors.to_string().contains("split_overlap (20) must be smaller than split_length (10)"), "{errors}");
    let errors = plan("name: p\nversion: 1\nstages:\n  - { name: dl, type: download, config: { output: /tmp/x } }\n")
        .unwrap_err();
    assert!(errors.to_string().contains("expected dir:PATH or kafka:TOPIC"), "{errors}");
}

#[test]
fn yaml_syntax_and_shape_errors_have_locations() {
    let errors = plan("name: x\nversion: 1\nstages:\n  - name: [unclosed\n").unwrap_err().0;
    assert_eq!(errors.len(), 1);
    assert!(errors[0].location.line >= 4, "{errors:?}");
    let errors = plan("name: x\nversion: 1\nstages:\n  - name: a\n    type: parse\n    colour: red\n").unwrap_err().0;
    assert_eq!(errors[0].location.line, 6, "{errors:?}");
    assert!(errors[0].message.contains("colour"), "{errors:?}");
}

/// A pipeline of `n` parse-free `ingest` stages with the given edges
/// (`(i, j)`: stage i depends on stage j). ingest consumes and produces raw
/// payloads, so any graph of them is well typed.
fn graph_yaml(n: usize, edges: &[(usize, usize)]) -> String {
    let mut text = String::from("name: g\nversion: 1\nstages:\n");
    for i in 0..n {
        text.push_str(&format!("  - name: s{i}\n    type: ingest\n    depends_on: ["));
        let deps: Vec<String> = edges.iter().filter(|(a, _)| *a == i).map(|(_, b)| format!("s{b}")).collect();
        text.push_str(&deps.join(", "));
        text.push_str("]\n");
    }
    text
}

fn line_of_stage(i: usize) -> u64 {
    // "  - name: s{i}" sits on line 4 + 3i; its depends_on two lines below.
    4 + 3 * i as u64 + 2
}

proptest! {
    #[test]
    fn random_dags_compile_in_dependency_order(n in 1usize..12, raw_edges in proptest::collection::vec((0usize..12, 0usize..12), 0..30)) {
        // Only edges from a later stage to an earlier one: always acyclic.
        let mut edges: Vec<(usize, usize)> = raw_edges.into_iter()
            .map(|(a, b)| (a % n, b % n))
            .filter(|(a, b)| a > b)
            .collect();
        edges.sort();
        edges.dedup();
        let plan = plan(&graph_yaml(n, &edges)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(plan.stages.len(), n);
        for (position, stage) in plan.stages.iter().enumerate() {
            for &input in &stage.inputs {
                prop_assert!(input < position, "input {} of stage {} is not before it", input, position);
            }
        }
        let total: usize = plan.stages.iter().map(|s| s.inputs.len()).sum();
        prop_assert_eq!(total, edges.len());
    }

    #[test]
    fn random_cycles_are_rejected_with_a_line(n in 2usize..10, cycle_len in 1usize..6, start in 0usize..10, extra in proptest::collection::vec((0usize..10, 0usize..10), 0..10)) {
        let cycle_len = cycle_len.min(n);
        let start = start % (n - cycle_len + 1);
        let members: Vec<usize> = (start..start + cycle_len).collect();
        // s_k depends on s_{k+1}, the last on the first: a cycle.
        let mut edges: Vec<(usize, usize)> = members.windows(2).map(|w| (w[0], w[1])).collect();
        edges.push((members[cycle_len - 1], members[0]));
        // Plus acyclic noise outside the cycle.
        edges.extend(extra.into_iter().map(|(a, b)| (a % n, b % n)).filter(|(a, b)| a > b && !members.contains(a)));
        edges.sort();
        edges.dedup();
        let errors = plan(&graph_yaml(n, &edges)).unwrap_err().0;
        let cycles: Vec<_> = errors.iter().filter(|e| e.message.contains("dependency cycle")).collect();
        prop_assert_eq!(cycles.len(), 1, "{:?}", errors);
        let lines: Vec<u64> = members.iter().map(|&i| line_of_stage(i)).collect();
        prop_assert!(lines.contains(&cycles[0].location.line), "line {} not a depends_on of the cycle {:?}", cycles[0].location.line, members);
        for m in &members {
            let name = format!("s{m}");
            prop_assert!(cycles[0].message.contains(&name), "{} missing in {}", name, cycles[0].message);
        }
    }
}
