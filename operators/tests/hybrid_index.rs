//! The three lists over real shards on disk (tantivy BM25 + SPLADE, FAISS
//! dense) with hand-made vectors: tenant isolation in every mode
//! (proptest), re-ingestion that leaves no old vector or posting behind,
//! and dense/SPLADE scores that are the exact dot products.

use medkg_operators::index::{Backends, EncodedQuery, Layout, SearchIndex, ShardWriter, Weights};
use medkg_operators::models::SparseVector;
use medkg_operators::{Chunk, ChunkedDocument, SourceKind};
use proptest::prelude::*;

fn unit(seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..8)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1000) as f32 / 500.0 - 1.0
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-6);
    v.iter_mut().for_each(|a| *a /= n);
    v
}

fn doc(id: &str, tenant: &str, texts: &[&str], terms: &[(u32, f32)], seed: u64) -> ChunkedDocument {
    ChunkedDocument {
        doc_id: id.into(),
        tenant_id: tenant.into(),
        source: SourceKind::Pubmed,
        title: format!("title of {id}"),
        content_hash: 0,
        chunks: texts
            .iter()
            .enumerate()
            .map(|(n, text)| Chunk {
                dense: Some(unit(seed + n as u64)),
                sparse: Some(SparseVector {
                    indices: terms.iter().map(|t| t.0).collect(),
                    weights: terms.iter().map(|t| t.1).collect(),
                }),
                ..Chunk::of_text(id, n as u32, text)
            })
            .collect(),
        metadata: Default::default(),
    }
}

/// Writes documents as the index stage does: each into the shard that owns it.
fn write(dir: &std::path::Path, docs: &[ChunkedDocument]) {
    let layout = Layout::open_or_create(dir, 2).unwrap();
    let backends = Backends { splade: true, dense: true };
    let mut shards: Vec<ShardWriter> =
        (0..2).map(|n| ShardWriter::open(&layout, n, 15_000_000, backends).unwrap()).collect();
    for d in docs {
        shards[layout.shard_of(&d.doc_id) as usize].upsert(d).unwrap();
    }
    for shard in &mut shards {
        shard.commit().unwrap();
    }
}

#[test]
fn reingesting_a_document_removes_its_old_vectors_and_postings() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            doc("pmid:1", "t", &["alpha beta", "gamma"], &[(10, 1.0), (11, 2.0)], 1),
            doc("pmid:2", "t", &["delta"], &[(12, 1.0)], 9),
        ],
    );
    write(dir.path(), &[doc("pmid:1", "t", &["epsilon"], &[(13, 1.5)], 5)]);
    let mut index = SearchIndex::open(dir.path()).unwrap();
    assert_eq!(index.stats(None).unwrap().chunks, 2);
    let old = SparseVector { indices: vec![10, 11], weights: vec![1.0, 1.0] };
    assert!(index.search_splade(&old, "t", 10).unwrap().is_empty(), "old SPLADE postings must be gone");
    let new = index.search_splade(&SparseVector { indices: vec![13], weights: vec![2.0] }, "t", 10).unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].chunk_id, "pmid:1#0");
    assert!((new[0].score - 3.0).abs() < 1e-2, "dot product 2.0 × 1.5, got {}", new[0].score);
    let hits = index.search_dense(&unit(1), "t", 10).unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| h.chunk_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}: pmid:1#1 must be gone");
    assert!(!ids.contains(&"pmid:1#1"));
    // The re-ingested chunk's new vector, not the old one, is what is found.
    let top = &index.search_dense(&unit(5), "t", 1).unwrap()[0];
    assert_eq!(top.chunk_id, "pmid:1#0");
    assert!((top.score - 1.0).abs() < 1e-4);
    assert_eq!(top.text, "epsilon");
}

#[test]
fn a_reopen_sees_new_commits_and_clones_search_alike() {
    let dir = tempfile::tempdir().unwrap();
    // Enough documents that both shards hold some.
    let first: Vec<ChunkedDocument> =
        (0..8).map(|i| doc(&format!("pmid:{i}"), "t", &["shared words"], &[(7, 1.0)], i)).collect();
    write(dir.path(), &first);
    let before = SearchIndex::open(dir.path()).unwrap();
    // Nothing committed: the reopened index answers as the old one, and so does a clone.
    let mut same = SearchIndex::reopen(dir.path(), Some(&before)).unwrap();
    let mut clone = same.clone();
    let a = same.search_dense(&unit(3), "t", 3).unwrap();
    assert_eq!(a, clone.search_dense(&unit(3), "t", 3).unwrap());
    assert_eq!(a[0].chunk_id, "pmid:3#0");
    // A new document commits into one shard: a reopen from the last index finds it
    // (its shard read again), and still finds the others (the other shard kept).
    write(dir.path(), &[doc("pmid:99", "t", &["new words"], &[(8, 1.0)], 99)]);
    let mut after = SearchIndex::reopen(dir.path(), Some(&same)).unwrap();
    assert_eq!(after.search_dense(&unit(99), "t", 1).unwrap()[0].chunk_id, "pmid:99#0");
    for i in 0..8 {
        assert_eq!(after.search_dense(&unit(i), "t", 1).unwrap()[0].chunk_id, format!("pmid:{i}#0"));
    }
    assert_eq!(after.stats(None).unwrap().docs, 9);
    // The old index is untouched by the reopen.
    assert!(same.search_dense(&unit(99), "t", 9).unwrap().iter().all(|h| h.chunk_id != "pmid:99#0"));
}

#[test]
fn the_same_document_id_in_two_tenants_is_two_documents() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[doc("pmid:5", "a", &["alpha"], &[(20, 1.0)], 3), doc("pmid:5", "b", &["beta"], &[(20, 1.0)], 4)],
    );
    // Tenant b re-ingests its copy: tenant a's vectors and postings stay.
    write(dir.path(), &[doc("pmid:5", "b", &["gamma"], &[(21, 1.0)], 6)]);
    let mut index = SearchIndex::open(dir.path()).unwrap();
    let sparse = SparseVector { indices: vec![20], weights: vec![1.0] };
    assert_eq!(index.search_splade(&sparse, "a", 5).unwrap().len(), 1);
    assert!(index.search_splade(&sparse, "b", 5).unwrap().is_empty());
    let a = index.search_dense(&unit(3), "a", 5).unwrap();
    assert_eq!((a.len(), a[0].text.as_str()), (1, "alpha"));
    let b = index.search_dense(&unit(6), "b", 5).unwrap();
    assert_eq!((b.len(), b[0].text.as_str()), (1, "gamma"));
}

#[test]
fn a_restriction_to_some_chunks_holds_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<ChunkedDocument> = (0..12)
        .map(|n| {
            doc(&format!("pmid:{n}"), "t", &["shared words here", "more shared words"], &[(7, 1.0 + n as f32)], n * 2)
        })
        .collect();
    write(dir.path(), &docs);
    let mut index = SearchIndex::open(dir.path()).unwrap();
    let only: std::collections::HashSet<String> = ["pmid:3#1", "pmid:8#0", "pmid:11#1"].map(String::from).into();
    index.restrict(Some(only.clone()));
    let sparse = SparseVector { indices: vec![7], weights: vec![1.0] };
    // The best-scored chunks overall (pmid:11, pmid:10, ...) are outside the set but for one.
    let query = EncodedQuery { text: "shared words", sparse: Some(&sparse), dense: Some(&unit(0)) };
    let lists = [
        index.search("shared words", "t", 100).unwrap(),
        index.search_splade(&sparse, "t", 100).unwrap(),
        index.search_dense(&unit(0), "t", 100).unwrap(),
        index.search_hybrid(&query, "t", 100, &Weights::default(), 100).unwrap(),
    ];
    for (mode, hits) in ["bm25", "splade", "dense", "hybrid"].iter().zip(&lists) {
        let ids: std::collections::HashSet<String> = hits.iter().map(|h| h.chunk_id.clone()).collect();
        assert_eq!(ids, only, "{mode}: exactly the chunks of the restriction");
    }
    index.restrict(None);
    assert_eq!(index.search_dense(&unit(0), "t", 100).unwrap().len(), 24, "lifted: every chunk again");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn no_result_from_another_tenant_in_any_mode(
        tenants in proptest::collection::vec(0usize..3, 1..25),
        query_tenant in 0usize..3,
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let names = ["acme", "beta", "gamma"];
        let docs: Vec<ChunkedDocument> = tenants
            .iter()
            .enumerate()
            .map(|(i, &t)| doc(&format!("pmid:{i}"), names[t], &["shared words here", "more shared words"], &[(7, 1.0), (100 + i as u32, 0.5)], seed ^ i as u64))
            .collect();
        write(dir.path(), &docs);
        let mut index = SearchIndex::open(dir.path()).unwrap();
        let tenant = names[query_tenant];
        let owned = tenants.iter().filter(|&&t| t == query_tenant).count();
        let sparse = SparseVector { indices: vec![7], weights: vec![1.0] };
        let query = unit(seed);
        let lists = [
            index.search("shared words", tenant, 100).unwrap(),
            index.search_splade(&sparse, tenant, 100).unwrap(),
            index.search_dense(&query, tenant, 100).unwrap(),
            index.search_hybrid(&EncodedQuery { text: "shared words", sparse: Some(&sparse), dense: Some(&query) }, tenant, 100, &Weights::default(), 100).unwrap(),
        ];
        for (mode, hits) in ["bm25", "splade", "dense", "hybrid"].iter().zip(&lists) {
            prop_assert_eq!(hits.len(), owned * 2, "{} returned {} of the tenant's {} chunks", mode, hits.len(), owned * 2);
            for hit in hits {
                let i: usize = hit.doc_id.trim_start_matches("pmid:").parse().unwrap();
                prop_assert_eq!(tenants[i], query_tenant, "{} leaked {} of another tenant", mode, hit.doc_id);
            }
        }
    }
}
