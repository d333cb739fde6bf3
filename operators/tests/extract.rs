//! The extractor on real sentences of the bundled PubMed sample, against
//! the real vocabulary (`scripts/vocab.sh`; `MEDKG_VOCAB` names it), and on
//! hostile text.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use medkg_operators::extract::{Extraction, Extractor, Vocabulary};
use medkg_operators::{Chunk, ChunkedDocument, SourceKind};

fn extractor() -> &'static Extractor {
    static EXTRACTOR: OnceLock<Extractor> = OnceLock::new();
    EXTRACTOR.get_or_init(|| {
        let path = std::env::var("MEDKG_VOCAB").expect("MEDKG_VOCAB: run `export MEDKG_VOCAB=$(scripts/vocab.sh)`");
        Extractor::new(Vocabulary::load(std::path::Path::new(&path)).expect("the vocabulary loads"))
    })
}

fn doc(id: &str, texts: &[&str]) -> ChunkedDocument {
    let chunks = texts.iter().enumerate().map(|(n, text)| Chunk::of_text(id, n as u32, text)).collect();
    ChunkedDocument {
        doc_id: id.into(),
        tenant_id: "default".into(),
        source: SourceKind::Pubmed,
        title: String::new(),
        content_hash: 0,
        chunks,
        metadata: Default::default(),
    }
}

fn extract(id: &str, texts: &[&str]) -> Extraction {
    extractor().extract(&doc(id, texts))
}

fn mentions(x: &Extraction) -> Vec<(String, String)> {
    x.mentions.iter().map(|m| (m.text.clone(), m.concept.clone())).collect()
}

fn claims(x: &Extraction) -> Vec<(String, String, String, bool)> {
    x.claims.iter().map(|c| (c.subject.clone(), c.predicate.clone(), c.object.clone(), c.negated)).collect()
}

/// Sentences of real abstracts, with what a reader finds in them (checked
/// by hand against the vocabulary: HP:0001953 "Diabetic ketoacidosis",
/// DRUGBANK:DB00563 methotrexate, HP:0000822 "Hypertension", ...).
#[test]
fn golden_sentences_from_real_abstracts() {
    // PMID 411105: "were treated with" puts the drug first.
    let x = extract(
        "pmid:411105",
        &["Twenty-five episodes of diabetic ketoacidosis in 20 children were treated with continuous low-dose intravenous insulin infusion."],
    );
    assert_eq!(
        mentions(&x),
        [("diabetic ketoacidosis".into(), "HP:0001953".into()), ("insulin".into(), "MESH:D007004".into())]
    );
    assert_eq!(claims(&x), [("MESH:D007004".into(), "biolink:treats".into(), "HP:0001953".into(), false)]);
    assert_eq!((x.mentions[0].start, x.mentions[0].end), (24, 45));

    // PMID 414118: "in the treatment of".
    let x = extract(
        "pmid:414118",
        &["More recent investigations on the duration of effect and plasma half-life of propranolol suggest a simplification of dosage for the beta-blocker in the treatment of hypertension."],
    );
    assert_eq!(claims(&x), [("DRUGBANK:DB03322".into(), "biolink:treats".into(), "HP:0000822".into(), false)]);

    // PMID 407056: four concepts; neighbours only pair up, without a trigger
    // as a weak co-occurrence.
    let x = extract(
        "pmid:407056",
        &["The control of asthma by therapy with cromolyn sodium was studied in 28 adults with late-onset asthma associated with hypersensitivity to aspirin and nasal polyps."],
    );
    let found: Vec<String> = x.mentions.iter().map(|m| m.concept.clone()).collect();
    assert_eq!(found, ["HP:0002099", "DRUGBANK:DB01003", "HP:0002099", "HP:0041092", "DRUGBANK:DB00945", "HP:0100582"]);
    assert!(x.claims.iter().all(|c| c.predicate == "biolink:related_to" && c.confidence < 0.5), "{:?}", claims(&x));

    // A definition "methotrexate (MTX)" carries the drug to every later MTX,
    // in later chunks too; "did not" negates the claim it stands in.
    let x = extract(
        "x",
        &[
            "Four hr after either a single injection or continuous infusion of methotrexate (MTX) plus purified MTX in cynomolgus or rhesus monkeys.",
            "MTX did not cause seizures.",
        ],
    );
    let mtx: Vec<(&str, bool)> =
        x.mentions.iter().filter(|m| m.text == "MTX").map(|m| (m.chunk_id.as_str(), m.abbreviation)).collect();
    assert_eq!(mtx, [("x#0", true), ("x#0", true), ("x#1", true)]);
    assert_eq!(claims(&x), [("DRUGBANK:DB00563".into(), "biolink:causes".into(), "HP:0001250".into(), true)]);
    assert_eq!(x.claims[0].chunk_id.as_deref(), Some("x#1"));
    assert_eq!(x.claims[0].sentence, Some((0, 27)));
}

#[test]
fn records_state_claims_and_topics_in_their_structure() {
    let mut metadata = BTreeMap::new();
    metadata.insert("interventions".to_string(), vec!["Metformin".to_string(), "Placebo".to_string()]);
    metadata.insert("conditions".to_string(), vec!["Polycystic Ovary Syndrome".to_string(), "Obesity".to_string()]);
    metadata.insert("mesh".to_string(), vec!["Aspirin".to_string(), "Humans".to_string(), "Hypertension".to_string()]);
    let x = extractor().extract(&ChunkedDocument { metadata, ..doc("nct:NCT00000001", &[]) });
    let stated: Vec<(&str, &str, &str)> =
        x.claims.iter().map(|c| (c.subject.as_str(), c.predicate.as_str(), c.object.as_str())).collect();
    assert!(
        stated.iter().all(|(s, p, _)| *s == "DRUGBANK:DB00331" && *p == "biolink:in_clinical_trials_for"),
        "{stated:?}"
    );
    let objects: Vec<&str> = stated.iter().map(|(_, _, o)| *o).collect();
    // "Obesity" is a disease (OMIM) and a phenotype (HP): the disease wins a tie.
    assert_eq!(objects, ["HP:0000147", "OMIM:601665"]);
    assert_eq!(x.topics, ["DRUGBANK:DB00945", "HP:0000822"]);
}

/// Hostile text: nothing crashes, and every span lies inside its chunk on
/// character boundaries.
#[test]
fn hostile_text_stays_inside_its_spans() {
    const BIG: usize = 2 << 20;
    let big = "insulin ".repeat(BIG); // 16 MB of one word, 2 M mentions
    let odd =
        "İnsulin\u{0301} ASPİRİN \u{200b}aspirin\u{fe0f} (ASA) ASA\u{0000} ﬁbrosis aspirin-induced asthma ".repeat(50);
    let texts = ["", " ", "(", "aspirin (", "aspirin ()", "((((((((", "a\u{0}b", big.as_str(), odd.as_str()];
    for text in texts {
        let x = extract("h", &[text]);
        let bytes: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        let chars = bytes.len() - 1;
        for m in &x.mentions {
            assert!(m.start < m.end && m.end <= chars, "{m:?}");
            assert_eq!(&text[bytes[m.start]..bytes[m.end]], m.text);
        }
        for c in &x.claims {
            let (s, e) = c.sentence.unwrap_or_default();
            assert!(s <= e && e <= chars);
        }
    }
}
