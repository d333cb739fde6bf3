//! A structure-aware fuzz harness for every parser, stable toolchain:
//! proptest generators build inputs that look like each format (the right
//! element and key names, ids, nesting) and then turn hostile (entity
//! bombs, DOCTYPEs with internal subsets, nesting thousands deep, huge
//! and odd ids and tenants, truncation and byte flips).
//!
//! Each case runs on a thread with a 1 MiB stack, so a recursive walk over
//! a deep input fails here rather than in production. The property for
//! every case: `parse` returns (no panic: a caught one would show as
//! `internal_error`, which fails the case), every document has a valid id
//! and tenant and some text, and every error has a kind and a bounded
//! message.
//!
//! `MEDKG_FUZZ_CASES` sets the cases per parser (default 300 here in CI);
//! `scripts/fuzz.sh` runs many more under memory and stack limits and
//! prints the counts per parser.

use medkg_operators::parse::{parse, Format, ParseOptions};
use medkg_operators::{check_doc_id, check_tenant};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn cases() -> u32 {
    std::env::var("MEDKG_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(300)
}

/// Runs `strategy` through the parser in `format` on a small stack; returns
/// how many cases ran.
fn fuzz<S, F>(name: &'static str, format: Format, strategy: F) -> u32
where
    F: FnOnce() -> S + Send + 'static,
    S: Strategy<Value = Vec<u8>>,
{
    let cases = cases();
    let handle = std::thread::Builder::new()
        .name(format!("fuzz-{name}"))
        .stack_size(1 << 20)
        .spawn(move || {
            let config = Config { cases, failure_persistence: None, ..Config::default() };
            let mut runner = TestRunner::new(config);
            let result = runner.run(&strategy(), |bytes| check(format, &bytes));
            if let Err(e) = result {
                panic!("fuzz {name}: {e}");
            }
        })
        .expect("a fuzz thread");
    handle.join().unwrap_or_else(|_| panic!("fuzz {name} failed (see above)"));
    eprintln!("fuzz {name}: {cases} cases, no failure");
    cases
}

fn check(format: Format, bytes: &[u8]) -> Result<(), TestCaseError> {
    let options = ParseOptions { format, max_doc_bytes: 1 << 20, ..ParseOptions::default() };
    for result in parse(&options, bytes, None) {
        match result {
            Ok(doc) => {
                prop_assert!(check_doc_id(&doc.id).is_ok(), "bad id {:?}", doc.id);
                prop_assert!(check_tenant(&doc.tenant_id).is_ok(), "bad tenant {:?}", doc.tenant_id);
                prop_assert!(!doc.sections.is_empty());
            }
            Err(e) => {
                prop_assert_ne!(e.kind.as_str(), "internal_error", "a parser panicked: {}", e.message);
                prop_assert!(!e.kind.is_empty() && !e.message.is_empty());
                prop_assert!(e.message.len() <= medkg_operators::MAX_ERROR_MESSAGE + 64, "{} bytes", e.message.len());
            }
        }
    }
    Ok(())
}

// ---- building blocks ----

/// Text that XML and JSON parsers find awkward.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z ]{0,40}",
        Just("Aspirin &amp; stroke &lt;risk&gt; &#x1F600; &#65;".to_string()),
        Just("\u{feff}\u{202e}zero\u{0}width\u{200b}".to_string()),
        Just("<![CDATA[ <not> & markup ]]>".to_string()),
        "\\PC{0,30}",
        (1usize..5000).prop_map(|n| "word ".repeat(n)),
    ]
}

/// An identifier-ish value: plausible, empty, huge or odd.
fn id_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,9}",
        Just(String::new()),
        Just(" ".to_string()),
        (1usize..80_000).prop_map(|n| "9".repeat(n)),
        "[a-z:/. \\t\\n]{0,20}",
        Just("PMC12345".to_string()),
        Just("NCT01234567".to_string()),
        Just("10.1186/s12984-016-0129-6".to_string()),
    ]
}

fn tenant_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        "[a-z-]{1,12}".prop_map(serde_json::Value::String),
        (200usize..70_000).prop_map(|n| serde_json::Value::String("t".repeat(n))),
        Just(serde_json::json!("a b/../c")),
        Just(serde_json::json!(7)),
    ]
}

/// An XML tree over `names`, at most `depth` levels generated, plus hostile additions.
/// `hosts` are where the deep nesting goes (`{}` marks it): inside the
/// elements each parser walks, so the walks meet it.
fn xml_tree(
    names: &'static [&'static str],
    root: &'static str,
    hosts: &'static [&'static str],
) -> impl Strategy<Value = String> {
    let leaf = text().prop_map(|t| xml_escape_some(&t));
    let tree = leaf.prop_recursive(6, 64, 6, move |inner| {
        (proptest::sample::select(names), proptest::collection::vec(inner, 0..6), "[a-z]{0,6}").prop_map(
            |(name, children, attr)| {
                let attrs =
                    if attr.is_empty() { String::new() } else { format!(" pub-id-type=\"{attr}\" type=\"{attr}\"") };
                format!("<{name}{attrs}>{}</{name}>", children.concat())
            },
        )
    });
    (tree, prolog(), nest(), 0usize..4, proptest::sample::select(hosts)).prop_map(
        move |(body, prolog, nested, place, host)| match place {
            0 => format!("{prolog}<{root}>{body}</{root}>"),
            1 => format!("{prolog}<{root}>{body}{nested}</{root}>"),
            2 => format!("{prolog}<{root}>{body}{}</{root}>", host.replace("{}", &nested)),
            _ => format!("{prolog}{body}"),
        },
    )
}

/// Markup that is fine in text, and some that is not.
fn xml_escape_some(text: &str) -> String {
    if text.starts_with("<![CDATA[") || text.contains('&') {
        text.to_string()
    } else {
        text.replace('<', "&lt;")
    }
}

/// What can come before the root: nothing, an external DOCTYPE, or a DTD bomb.
fn prolog() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n".to_string()),
        Just("<!DOCTYPE article PUBLIC \"-//NLM//DTD JATS//EN\" \"JATS-archivearticle1.dtd\">\n".to_string()),
        Just(laughs(10)),
        Just("<!DOCTYPE a [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>\n".to_string()),
        Just("<!DOCTYPE a [<!ELEMENT a ANY>]>\n".to_string()),
    ]
}

/// The "billion laughs" entity bomb.
fn laughs(levels: usize) -> String {
    let mut dtd = String::from("<!DOCTYPE lolz [<!ENTITY lol0 \"lol\">");
    for i in 1..levels {
        let refs = format!("&lol{};", i - 1).repeat(10);
        dtd.push_str(&format!("<!ENTITY lol{i} \"{refs}\">"));
    }
    dtd.push_str("]>\n");
    dtd
}

/// Nesting far past any limit, of inline markup or of sections.
fn nest() -> impl Strategy<Value = String> {
    (proptest::sample::select(&["i", "sec", "p", "div", "AbstractText"][..]), 0usize..20_000).prop_map(
        |(name, depth)| format!("{}x{}", format!("<{name}>").repeat(depth), format!("</{name}>").repeat(depth)),
    )
}

/// Byte-level damage to a generated input (half the time): truncation and byte flips.
fn damaged<T: Into<Vec<u8>> + std::fmt::Debug>(input: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<u8>> {
    (input, 0.0f64..=1.0, proptest::collection::vec((0.0f64..1.0, any::<u8>()), 0..6), any::<bool>()).prop_map(
        |(input, keep, flips, damage)| {
            let mut bytes = input.into();
            if damage {
                bytes.truncate(((bytes.len() as f64) * keep) as usize);
                for (at, byte) in flips {
                    if !bytes.is_empty() {
                        let i = ((bytes.len() - 1) as f64 * at) as usize;
                        bytes[i] = byte;
                    }
                }
            }
            bytes
        },
    )
}

/// JSON nested `depth` deep (serde_json's limit is 128).
fn deep_json(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

// ---- one harness per parser ----

const PUBMED_HOSTS: &[&str] = &[
    "<PubmedArticle><MedlineCitation><PMID>1</PMID><Article><ArticleTitle>{}</ArticleTitle></Article></MedlineCitation></PubmedArticle>",
    "<PubmedArticle><MedlineCitation><PMID>2</PMID><Article><Abstract><AbstractText>{}</AbstractText></Abstract></Article></MedlineCitation></PubmedArticle>",
];
const JATS_HOSTS: &[&str] =
    &["<body><sec><title>t</title><p>{}</p></sec></body>", "<body>{}</body>", "<body><sec>{}</sec></body>"];
const TEI_HOSTS: &[&str] = &[
    "<text><body><div><head>h</head><p>{}</p></div></body></text>",
    "<teiHeader><idno type=\"DOI\">10.1/x</idno><abstract><p>{}</p></abstract></teiHeader>",
];

#[test]
fn fuzz_pubmed_jsonl() {
    fuzz("pubmed-jsonl", Format::PubmedJsonl, || {
        let record = (id_value(), text(), text(), proptest::collection::vec(text(), 0..4), tenant_value(), 0usize..300)
            .prop_map(|(pmid, title, abstract_text, mesh, tenant, depth)| {
                let mut record =
                    serde_json::json!({ "pmid": pmid, "title": title, "abstract": abstract_text, "mesh": mesh });
                if !tenant.is_null() {
                    record["tenant_id"] = tenant;
                }
                if depth > 200 {
                    record["extra"] = serde_json::from_str(&deep_json(100)).unwrap_or_default();
                    let text = record.to_string();
                    return format!("{},\"deep\":{}}}", &text[..text.len() - 1], deep_json(depth));
                }
                record.to_string()
            });
        damaged(record)
    });
}

#[rustfmt::skip]
const PUBMED_NAMES: &[&str] = &[
    "PubmedArticle", "MedlineCitation", "PMID", "Article", "ArticleTitle", "Abstract", "AbstractText", "Journal",
    "Title", "JournalIssue", "PubDate", "Year", "MedlineDate", "MeshHeadingList", "MeshHeading", "DescriptorName",
    "i", "b", "sup",
];
#[rustfmt::skip]
const JATS_NAMES: &[&str] = &[
    "front", "article-meta", "article-id", "title-group", "article-title", "abstract", "body", "sec", "title", "p",
    "i", "b", "xref", "table-wrap", "kwd", "kwd-group", "pub-date", "year", "journal-title", "fig",
];
#[rustfmt::skip]
const TEI_NAMES: &[&str] = &[
    "teiHeader", "fileDesc", "titleStmt", "title", "idno", "abstract", "text", "body", "div", "head", "p",
    "formula", "figure", "note", "date", "ref",
];

/// Inputs for an XML format: trees over `names` under `root`, with
/// `head(id, n)` (what makes a document of that format, around a generated
/// id; `n` for fillers) right after the root's start tag, then damaged.
fn xml_format(
    names: &'static [&'static str],
    root: &'static str,
    hosts: &'static [&'static str],
    head: fn(&str, usize) -> String,
) -> impl Strategy<Value = Vec<u8>> {
    let open = format!("<{root}>");
    damaged(
        (xml_tree(names, root, hosts), id_value(), 0usize..50)
            .prop_map(move |(tree, id, n)| tree.replacen(&open, &format!("{open}{}", head(&id, n)), 1)),
    )
}

#[test]
fn fuzz_pubmed_xml() {
    fuzz("pubmed-xml", Format::PubmedXml, || {
        xml_format(PUBMED_NAMES, "PubmedArticleSet", PUBMED_HOSTS, |pmid, empties| {
            let article = "<PubmedArticle><MedlineCitation><PMID>{}</PMID><Article><ArticleTitle>T</ArticleTitle></Article></MedlineCitation></PubmedArticle>";
            // An update file's deletions too: their PMIDs are as hostile as the articles'.
            let deletes = format!(
                "<DeleteCitation><PMID Version=\"1\">{pmid}</PMID><PMID>{}</PMID></DeleteCitation>",
                "1".repeat(empties)
            );
            article.replace("{}", pmid) + &"<PubmedArticle></PubmedArticle>".repeat(empties) + &deletes
        })
    });
}

#[test]
fn fuzz_jats() {
    fuzz("jats", Format::Jats, || {
        xml_format(JATS_NAMES, "article", JATS_HOSTS, |id, _| {
            format!("<front><article-meta><article-id pub-id-type=\"pmc\">{id}</article-id><title-group><article-title>A title</article-title></title-group></article-meta></front>")
        })
    });
}

#[test]
fn fuzz_tei() {
    fuzz("tei", Format::Tei, || {
        xml_format(TEI_NAMES, "TEI", TEI_HOSTS, |id, _| {
            format!("<teiHeader><fileDesc><titleStmt><title>T</title></titleStmt></fileDesc><idno type=\"DOI\">{id}</idno></teiHeader>")
        })
    });
}

#[test]
fn fuzz_ctgov() {
    fuzz("ctgov", Format::Ctgov, || {
        let study = (id_value(), text(), proptest::collection::vec(text(), 0..3), tenant_value()).prop_map(
            |(nct, summary, conditions, tenant)| {
                serde_json::json!({
                    "protocolSection": {
                        "identificationModule": { "nctId": format!("NCT{nct}"), "briefTitle": "A trial" },
                        "descriptionModule": { "briefSummary": summary, "detailedDescription": "a\n\nb" },
                        "conditionsModule": { "conditions": conditions },
                        "armsInterventionsModule": { "interventions": [{ "name": "X", "type": 3 }, 0, null] },
                        "eligibilityModule": { "eligibilityCriteria": 5 }
                    },
                    "tenant_id": tenant
                })
            },
        );
        let page =
            (proptest::collection::vec(study, 0..4), 0usize..3000, 0usize..200).prop_map(|(studies, zeros, depth)| {
                let mut studies: Vec<serde_json::Value> = studies;
                studies.extend(std::iter::repeat_n(serde_json::json!(0), zeros % 500));
                let page = serde_json::json!({ "studies": studies }).to_string();
                if depth > 150 {
                    format!("{}, \"x\": {}}}", &page[..page.len() - 1], deep_json(depth))
                } else {
                    page
                }
            });
        damaged(page)
    });
}

#[test]
fn fuzz_openalex() {
    fuzz("openalex", Format::OpenAlex, || {
        let positions = prop_oneof![
            proptest::collection::vec(any::<u64>().prop_map(serde_json::Value::from), 0..4),
            Just(vec![serde_json::json!(-1), serde_json::json!(1.5), serde_json::json!("3")]),
            Just(vec![serde_json::json!(u64::MAX), serde_json::json!(0), serde_json::json!(0)]),
        ];
        let index = proptest::collection::btree_map(text(), positions, 0..12);
        let work = (id_value(), text(), index, tenant_value()).prop_map(|(id, title, index, tenant)| {
            serde_json::json!({
                "id": format!("https://openalex.org/W{id}"),
                "title": title,
                "doi": format!("https://doi.org/10.1/{id}"),
                "ids": { "pmid": 5, "pmcid": [id] },
                "publication_year": -3,
                "primary_location": { "source": null },
                "abstract_inverted_index": index,
                "tenant_id": tenant
            })
        });
        let page =
            (proptest::collection::vec(work, 0..4), 0usize..3000, 0usize..200).prop_map(|(works, zeros, depth)| {
                let mut works: Vec<serde_json::Value> = works;
                works.extend(std::iter::repeat_n(serde_json::json!(null), zeros % 500));
                let page = serde_json::json!({ "meta": { "next_cursor": null }, "results": works }).to_string();
                if depth > 150 {
                    format!("{}, \"x\": {}}}", &page[..page.len() - 1], deep_json(depth))
                } else {
                    page
                }
            });
        damaged(page)
    });
}

#[test]
fn fuzz_ir_ready() {
    fuzz("ir-ready", Format::Ir, || {
        let record = (
            id_value(),
            tenant_value(),
            text(),
            xml_tree(&["teiHeader", "idno", "text", "body", "div", "p"], "TEI", TEI_HOSTS),
            any::<bool>(),
        )
            .prop_map(|(doc_id, tenant, title, tei, with_ir)| {
                let mut record = serde_json::json!({ "doc_id": doc_id, "tenant_id": tenant, "sha256": "ab" });
                if with_ir {
                    record["ir"] = serde_json::json!({
                        "id": "x", "tenant_id": "t", "source": "pdf", "title": title,
                        "sections": [{ "name": "body", "text": "some text", "offset": 0 }],
                        "metadata": {}, "content_hash": 1, "version": 1
                    });
                } else {
                    record["tei"] = serde_json::Value::String(tei);
                }
                record.to_string()
            });
        damaged(record)
    });
}

#[test]
fn fuzz_sniffing_on_arbitrary_bytes() {
    let bytes = proptest::collection::vec(any::<u8>(), 0..2048);
    let cases = cases();
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner.run(&bytes, |bytes| check(Format::Auto, &bytes)).unwrap();
    eprintln!("fuzz sniffing: {cases} cases, no failure");
}

/// A small PDF with one page of `text`, its xref table right (or, when
/// `hostile`, an object nested thousands deep and a stream whose declared
/// length lies).
fn pdf(text: &str, depth: usize, hostile: bool) -> Vec<u8> {
    let escaped: String = text
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .collect::<String>()
        .replace('\\', "\\\\")
        .replace('(', "\\(")
        .replace(')', "\\)");
    // A title, then the text further down the page (from_text takes the first block as the title).
    let content = format!(
        "BT /F1 16 Tf 72 720 Td (A generated article about aspirin and stroke) Tj ET\nBT /F1 12 Tf 72 600 Td (Abstract) Tj ET\nBT /F1 12 Tf 72 580 Td ({escaped} and more words) Tj ET"
    );
    let length = if hostile { content.len() * 1000 + 7 } else { content.len() };
    let nested = format!("[{}{}]", "[".repeat(depth), "]".repeat(depth));
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        format!("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> /X {nested} >>"),
        format!("<< /Length {length} >>\nstream\n{content}\nendstream"),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for offset in offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).as_bytes(),
    );
    out
}

#[test]
fn fuzz_pdf_text_extraction() {
    let cases = (cases() / 2).max(20);
    let handle = std::thread::Builder::new()
        .name("fuzz-pdf".into())
        .stack_size(8 << 20) // the PDF worker's main thread has 8 MiB
        .spawn(move || {
            let pdfs = (text(), prop_oneof![Just(0usize), 0usize..64, 1000usize..50_000], any::<bool>())
                .prop_map(|(text, depth, hostile)| pdf(&text, depth, hostile));
            let strategy = damaged(pdfs);
            let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
            runner
                .run(&strategy, |bytes| {
                    match medkg_operators::pdf::extract(&bytes, "pdf:fuzz", "default") {
                        Ok(doc) => prop_assert!(!doc.sections.is_empty()),
                        Err(e) => prop_assert!(
                            !e.kind.is_empty() && e.message.len() <= medkg_operators::MAX_ERROR_MESSAGE + 64
                        ),
                    }
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("fuzz pdf: {e}"));
        })
        .expect("a fuzz thread");
    handle.join().unwrap_or_else(|_| panic!("fuzz pdf failed (see above)"));
    eprintln!("fuzz pdf: {cases} cases, no failure");
}

/// The generator's PDFs are real: undamaged, their text comes out.
#[test]
fn generated_pdfs_are_read() {
    let doc = medkg_operators::pdf::extract(
        &pdf("Aspirin lowers the risk of stroke in adults", 3, false),
        "pdf:x",
        "default",
    )
    .expect("a readable PDF");
    assert!(doc.full_text().contains("Aspirin lowers the risk"), "{doc:?}");
}
