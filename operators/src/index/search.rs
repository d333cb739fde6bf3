//! Search over every shard of a data directory, scored with BM25 statistics
//! summed over all shards (so a score means the same in every shard and the
//! per-shard top-k lists merge exactly).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tantivy::collector::{Count, TopDocs};
use tantivy::columnar::StrColumn;
use tantivy::postings::Postings;
use tantivy::query::{Bm25StatisticsProvider, BooleanQuery, BoostQuery, Occur, Query, TermQuery, TermSetQuery};
use tantivy::schema::{Field, IndexRecordOption, Value};
use tantivy::{DocAddress, DocId, DocSet, Index, IndexReader, ReloadPolicy, Searcher, TantivyDocument, Term};

use super::{fields_of, io_error, DenseShard, Fields, Layout, QUANT_SCALE};
use crate::models::SparseVector;
use crate::StageError;

/// Weight of a title match relative to a text match.
const TITLE_BOOST: f32 = 1.5;

/// One retrieved chunk.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Hit {
    /// Its document.
    pub doc_id: String,
    /// The chunk.
    pub chunk_id: String,
    /// BM25 score (higher is better).
    pub score: f32,
    /// The document's title.
    pub title: String,
    /// The chunk's text.
    pub text: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its section.
    pub section: String,
    /// Char span in the section.
    pub char_start: u64,
    /// Char span end.
    pub char_end: u64,
    /// Its rank (from 1) in each list that found it.
    pub ranks: ListRanks,
}

/// Where a chunk ranked in each list (from 1; `None`: not in that list's top).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ListRanks {
    /// BM25.
    pub bm25: Option<u32>,
    /// SPLADE.
    pub splade: Option<u32>,
    /// Dense.
    pub dense: Option<u32>,
}

/// Which list a ranking comes from.
#[derive(Clone, Copy)]
enum List {
    Bm25,
    Splade,
    Dense,
}

impl ListRanks {
    fn set(&mut self, list: List, rank: usize) {
        let rank = Some(u32::try_from(rank).unwrap_or(u32::MAX));
        match list {
            List::Bm25 => self.bm25 = rank,
            List::Splade => self.splade = rank,
            List::Dense => self.dense = rank,
        }
    }
}

/// Numbers a ranked list's ranks (from 1).
fn rank(mut ranked: Vec<Ranked>, list: List) -> Vec<Ranked> {
    for (i, r) in ranked.iter_mut().enumerate() {
        r.ranks.set(list, i + 1);
    }
    ranked
}

/// A query as each list wants it: words for BM25, the encoded vectors for
/// SPLADE and dense (`None` leaves that list out).
#[derive(Clone, Copy, Debug)]
pub struct EncodedQuery<'a> {
    /// The words.
    pub text: &'a str,
    /// SPLADE expansion of the words.
    pub sparse: Option<&'a SparseVector>,
    /// Dense embedding of the words.
    pub dense: Option<&'a [f32]>,
}

/// A chunk in a ranked list, before its stored fields are loaded.
struct Ranked {
    score: f32,
    chunk_id: String,
    /// Shard and address, when the list knows them.
    at: Option<(usize, DocAddress)>,
    ranks: ListRanks,
}

/// Per-list weights of hybrid fusion.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    /// BM25.
    pub bm25: f32,
    /// Dense.
    pub dense: f32,
    /// SPLADE.
    pub splade: f32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights { bm25: 1.0, dense: 1.0, splade: 1.0 }
    }
}

/// Counts in a data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Documents (with at least one chunk).
    pub docs: u64,
    /// Chunks.
    pub chunks: u64,
}

/// A shard's dense index as readers share it: one copy in memory for any
/// number of [`SearchIndex`] clones (a search locks it for its FAISS call),
/// with the stamp of the files it was read from, so a reopen reads again
/// only the shards that committed since.
#[derive(Clone)]
struct SharedDense {
    dir: std::path::PathBuf,
    shard: Arc<Mutex<DenseShard>>,
    stamp: FileStamp,
}

/// Length and modification time of a dense shard's files.
type FileStamp = Vec<(u64, Option<std::time::SystemTime>)>;

fn dense_stamp(dir: &std::path::Path) -> FileStamp {
    ["dense.faiss", "dense-meta.json"]
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).map(|m| (m.len(), m.modified().ok())).unwrap_or((0, None)))
        .collect()
}

/// Every shard of a data directory, open for reading at its last commit.
///
/// Clones are cheap and share the index (tantivy searchers and the dense
/// shards): a server keeps one clone per concurrent search.
#[derive(Clone)]
pub struct SearchIndex {
    shards: Vec<(Index, Searcher)>,
    /// Per shard of `shards`: its directory and reader, which a reopen
    /// reloads (reusing the segments it already has open) rather than open again.
    readers: Vec<(std::path::PathBuf, IndexReader)>,
    /// Per shard: the one tenant all its chunks belong to, if there is one
    /// (then a query of that tenant needs no tenant filter, and BM25 can
    /// prune with block-max WAND; a query of another tenant skips the shard).
    sole_tenants: Vec<Option<String>>,
    dense: Vec<SharedDense>,
    fields: Fields,
    /// Search only these chunks (`--entity`: the chunks that mention a concept).
    only: Option<std::collections::HashSet<String>>,
}

impl SearchIndex {
    /// Opens the data directory's shards as of their last commits.
    pub fn open(data_dir: &std::path::Path) -> Result<SearchIndex, StageError> {
        SearchIndex::reopen(data_dir, None)
    }

    /// Opens the data directory's shards as of their last commits, keeping
    /// from `previous` each dense shard whose files have not changed, and
    /// reloading its BM25 readers (a server reopens on every commit; reading
    /// every FAISS shard, or opening every segment, again each time would
    /// cost the whole index per commit).
    pub fn reopen(data_dir: &std::path::Path, previous: Option<&SearchIndex>) -> Result<SearchIndex, StageError> {
        let layout = Layout::open(data_dir)?;
        let mut shards = Vec::new();
        let mut readers = Vec::new();
        let mut sole_tenants = Vec::new();
        let mut dense = Vec::new();
        let mut fields = None;
        for n in 0..layout.shards {
            let dir = layout.shard_dir(n);
            if dir.join("dense.faiss").exists() {
                let stamp = dense_stamp(&dir);
                let kept = previous.and_then(|p| p.dense.iter().find(|d| d.dir == dir && d.stamp == stamp));
                dense.push(match kept {
                    Some(shared) => shared.clone(),
                    None => SharedDense { shard: Arc::new(Mutex::new(DenseShard::open(&dir, 0)?)), stamp, dir },
                });
            }
            let dir = layout.shard_dir(n).join("bm25");
            if !dir.join("meta.json").exists() {
                continue; // never committed: nothing to read
            }
            let kept = previous.and_then(|p| {
                let at = p.readers.iter().position(|(d, _)| *d == dir)?;
                Some((p.shards[at].0.clone(), p.readers[at].1.clone()))
            });
            let (index, reader) = match kept {
                Some((index, reader)) => {
                    reader.reload().map_err(|e| io_error(&format!("cannot reload {}", dir.display()), e))?;
                    (index, reader)
                }
                None => {
                    let index =
                        Index::open_in_dir(&dir).map_err(|e| io_error(&format!("cannot open {}", dir.display()), e))?;
                    // Reloaded by `reopen` when the shard commits: no watcher thread of tantivy's.
                    let reader = index
                        .reader_builder()
                        .reload_policy(ReloadPolicy::Manual)
                        .try_into()
                        .map_err(|e| io_error("cannot read the index", e))?;
                    (index, reader)
                }
            };
            let schema_fields = fields_of(&index.schema())?;
            fields = Some(schema_fields);
            let searcher = reader.searcher();
            sole_tenants.push(sole_tenant(&searcher, schema_fields.tenant_id)?);
            shards.push((index, searcher));
            readers.push((dir, reader));
        }
        let fields = match fields {
            Some(f) => f,
            None => super::schema().1,
        };
        Ok(SearchIndex { shards, readers, sole_tenants, dense, fields, only: None })
    }

    /// Reciprocal-rank fusion of the BM25, SPLADE and dense lists (each
    /// `depth` deep, each already restricted to the tenant); a list whose
    /// query is `None` or whose weight is 0 is left out.
    pub fn search_hybrid(
        &mut self,
        query: &EncodedQuery<'_>,
        tenant: &str,
        k: usize,
        weights: &Weights,
        depth: usize,
    ) -> Result<Vec<Hit>, StageError> {
        let EncodedQuery { text, sparse, dense } = *query;
        let depth = depth.max(k);
        let mut lists: Vec<(f32, Vec<Ranked>)> = Vec::new();
        if weights.bm25 > 0.0 {
            lists.push((weights.bm25, rank(self.ranked_bm25(text, tenant, depth)?, List::Bm25)));
        }
        if let (Some(q), true) = (sparse, weights.splade > 0.0) {
            lists.push((weights.splade, rank(self.ranked_splade(q, tenant, depth)?, List::Splade)));
        }
        if let (Some(q), true) = (dense, weights.dense > 0.0) {
            lists.push((weights.dense, rank(self.ranked_dense(q, tenant, depth)?, List::Dense)));
        }
        let ids: Vec<(f32, Vec<String>)> =
            lists.iter().map(|(w, ranked)| (*w, ranked.iter().map(|r| r.chunk_id.clone()).collect())).collect();
        // Where each chunk is, if a lexical list saw it (dense hits are looked up).
        // Where each chunk is, if a lexical list saw it (dense hits are looked
        // up), and its rank in every list.
        let mut at: HashMap<String, (Option<(usize, DocAddress)>, ListRanks)> = HashMap::new();
        for (_, ranked) in &lists {
            for r in ranked {
                let (place, ranks) = at.entry(r.chunk_id.clone()).or_default();
                *place = place.or(r.at);
                for (mine, theirs) in [
                    (&mut ranks.bm25, r.ranks.bm25),
                    (&mut ranks.splade, r.ranks.splade),
                    (&mut ranks.dense, r.ranks.dense),
                ] {
                    *mine = mine.or(theirs);
                }
            }
        }
        // Only the fused top k are loaded from the doc store.
        let fused = crate::retrieve::rrf(&ids, k)
            .into_iter()
            .map(|(chunk_id, score)| {
                let (place, ranks) = at.get(&chunk_id).copied().unwrap_or_default();
                Ranked { score, at: place, ranks, chunk_id }
            })
            .collect();
        self.materialize(fused, tenant)
    }

    /// Restricts every list to the chunks `only` names (`None`: all chunks).
    pub fn restrict(&mut self, only: Option<std::collections::HashSet<String>>) {
        self.only = only;
    }

    /// Whether the directory holds dense vectors.
    pub fn has_dense(&self) -> bool {
        !self.dense.is_empty()
    }

    /// The `k` chunks of `tenant` with the largest SPLADE dot product with
    /// `query`, scored term-at-a-time over the postings of the query's terms
    /// (a chunk's term frequency is its quantised weight).
    pub fn search_splade(&self, query: &SparseVector, tenant: &str, k: usize) -> Result<Vec<Hit>, StageError> {
        self.materialize(rank(self.ranked_splade(query, tenant, k)?, List::Splade), tenant)
    }

    fn ranked_splade(&self, query: &SparseVector, tenant: &str, k: usize) -> Result<Vec<Ranked>, StageError> {
        if query.indices.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let fail = |e: &dyn std::fmt::Display| io_error("SPLADE search failed", e);
        let tenant_term = Term::from_field_text(self.fields.tenant_id, tenant);
        let mut scored: Vec<(f32, usize, DocAddress)> = Vec::new();
        for (shard, (_, searcher)) in self.shards.iter().enumerate() {
            for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
                // The tenant's chunks of this segment.
                let mut allowed = vec![false; segment.max_doc() as usize];
                let tenants = segment.inverted_index(self.fields.tenant_id).map_err(|e| fail(&e))?;
                if let Some(mut postings) =
                    tenants.read_postings(&tenant_term, IndexRecordOption::Basic).map_err(|e| fail(&e))?
                {
                    let mut doc = postings.doc();
                    while doc != tantivy::TERMINATED {
                        allowed[doc as usize] = true;
                        doc = postings.advance();
                    }
                }
                if let Some(only) = &self.only {
                    let mut listed = vec![false; allowed.len()];
                    let ids = segment.inverted_index(self.fields.chunk_id).map_err(|e| fail(&e))?;
                    for chunk_id in only {
                        let term = Term::from_field_text(self.fields.chunk_id, chunk_id);
                        if let Some(mut postings) =
                            ids.read_postings(&term, IndexRecordOption::Basic).map_err(|e| fail(&e))?
                        {
                            let mut doc = postings.doc();
                            while doc != tantivy::TERMINATED {
                                listed[doc as usize] = true;
                                doc = postings.advance();
                            }
                        }
                    }
                    allowed.iter_mut().zip(listed).for_each(|(a, l)| *a &= l);
                }
                let alive = segment.alive_bitset();
                let terms = segment.inverted_index(self.fields.splade_terms).map_err(|e| fail(&e))?;
                let mut scores: std::collections::HashMap<DocId, f32> = std::collections::HashMap::new();
                for (&id, &weight) in query.indices.iter().zip(&query.weights) {
                    let term = Term::from_field_text(self.fields.splade_terms, &id.to_string());
                    let Some(mut postings) =
                        terms.read_postings(&term, IndexRecordOption::WithFreqs).map_err(|e| fail(&e))?
                    else {
                        continue;
                    };
                    let mut doc = postings.doc();
                    while doc != tantivy::TERMINATED {
                        if allowed[doc as usize] && alive.is_none_or(|a| a.is_alive(doc)) {
                            *scores.entry(doc).or_insert(0.0) += weight * postings.term_freq() as f32 / QUANT_SCALE;
                        }
                        doc = postings.advance();
                    }
                }
                scored.extend(
                    scores.into_iter().map(|(doc, score)| (score, shard, DocAddress::new(ordinal as u32, doc))),
                );
            }
        }
        self.ranked(scored, k)
    }

    /// The `k` chunks of `tenant` nearest to `query` in the dense indexes.
    pub fn search_dense(&mut self, query: &[f32], tenant: &str, k: usize) -> Result<Vec<Hit>, StageError> {
        let ranked = self.ranked_dense(query, tenant, k)?;
        self.materialize(rank(ranked, List::Dense), tenant)
    }

    fn ranked_dense(&mut self, query: &[f32], tenant: &str, k: usize) -> Result<Vec<Ranked>, StageError> {
        let mut found = Vec::new();
        for dense in &self.dense {
            let mut shard = dense.shard.lock().unwrap_or_else(|p| p.into_inner());
            found.extend(shard.search(query, tenant, k, self.only.as_ref())?);
        }
        found.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.chunk_id.cmp(&b.1.chunk_id)));
        found.truncate(k);
        Ok(found
            .into_iter()
            .map(|(score, meta)| Ranked { score, chunk_id: meta.chunk_id, at: None, ranks: ListRanks::default() })
            .collect())
    }

    /// Loads the stored fields of ranked chunks (finding those whose place is unknown).
    fn materialize(&self, ranked: Vec<Ranked>, tenant: &str) -> Result<Vec<Hit>, StageError> {
        let mut hits = Vec::with_capacity(ranked.len());
        for r in ranked {
            let place = match r.at {
                Some(place) => Some(place),
                None => self.locate(&r.chunk_id, tenant)?,
            };
            if let Some((shard, address)) = place {
                hits.push(Hit { ranks: r.ranks, ..self.hit(shard, address, r.score)? });
            }
        }
        Ok(hits)
    }

    /// The `chunk_id` fast-field column of a segment.
    fn chunk_ids(&self, shard: usize, segment: u32) -> Result<StrColumn, StageError> {
        self.shards[shard]
            .1
            .segment_reader(segment)
            .fast_fields()
            .str("chunk_id")
            .map_err(|e| io_error("chunk_id column", e))?
            .ok_or_else(|| io_error("chunk_id column", "missing: the index predates this version"))
    }

    /// Where a tenant's chunk is, in whichever shard holds it.
    fn locate(&self, chunk_id: &str, tenant: &str) -> Result<Option<(usize, DocAddress)>, StageError> {
        let chunk: Box<dyn Query> =
            Box::new(TermQuery::new(Term::from_field_text(self.fields.chunk_id, chunk_id), IndexRecordOption::Basic));
        let query = BooleanQuery::new(vec![(Occur::Must, chunk), (Occur::Must, self.tenant_filter(tenant))]);
        for (shard, (_, searcher)) in self.shards.iter().enumerate() {
            let top = searcher
                .search(&query, &TopDocs::with_limit(1).order_by_score())
                .map_err(|e| io_error("lookup failed", e))?;
            if let Some((_, address)) = top.first() {
                return Ok(Some((shard, *address)));
            }
        }
        Ok(None)
    }

    /// Best `k` of per-shard results (stable on ties), with their chunk ids.
    fn ranked(&self, mut scored: Vec<(f32, usize, DocAddress)>, k: usize) -> Result<Vec<Ranked>, StageError> {
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        scored.truncate(k);
        // Each segment's column is opened once, however many of its chunks rank.
        let mut columns: HashMap<(usize, u32), StrColumn> = HashMap::new();
        let mut ranked = Vec::with_capacity(scored.len());
        for (score, shard, address) in scored {
            let column = match columns.entry((shard, address.segment_ord)) {
                std::collections::hash_map::Entry::Occupied(c) => c.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(self.chunk_ids(shard, address.segment_ord)?)
                }
            };
            let mut chunk_id = String::new();
            if let Some(ord) = column.term_ords(address.doc_id).next() {
                column.ord_to_str(ord, &mut chunk_id).map_err(|e| io_error("chunk_id column", e))?;
            }
            ranked.push(Ranked { score, chunk_id, at: Some((shard, address)), ranks: ListRanks::default() });
        }
        Ok(ranked)
    }

    /// The `k` best chunks for a free-text query within one tenant.
    pub fn search(&self, query: &str, tenant: &str, k: usize) -> Result<Vec<Hit>, StageError> {
        self.materialize(rank(self.ranked_bm25(query, tenant, k)?, List::Bm25), tenant)
    }

    /// A tenant's document: its chunks in order (at most `max_chunks`;
    /// empty when the tenant has no such document).
    pub fn document(&self, tenant: &str, doc_id: &str, max_chunks: usize) -> Result<Vec<Hit>, StageError> {
        let doc: Box<dyn Query> =
            Box::new(TermQuery::new(Term::from_field_text(self.fields.doc_id, doc_id), IndexRecordOption::Basic));
        let query = BooleanQuery::new(vec![(Occur::Must, doc), (Occur::Must, self.tenant_filter(tenant))]);
        let mut chunks = Vec::new();
        for (_, searcher) in &self.shards {
            let top = searcher
                .search(&query, &TopDocs::with_limit(max_chunks.max(1)).order_by_score())
                .map_err(|e| io_error("lookup failed", e))?;
            for (_, address) in top {
                let doc: TantivyDocument =
                    searcher.doc(address).map_err(|e| io_error("cannot load a stored chunk", e))?;
                let no = doc.get_first(self.fields.chunk_no).and_then(|v| v.as_u64()).unwrap_or(0);
                chunks.push((no, self.hit_of(&doc, 0.0)));
            }
        }
        chunks.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.chunk_id.cmp(&b.1.chunk_id)));
        chunks.truncate(max_chunks);
        Ok(chunks.into_iter().map(|(_, hit)| hit).collect())
    }

    fn ranked_bm25(&self, query: &str, tenant: &str, k: usize) -> Result<Vec<Ranked>, StageError> {
        let (Some(filtered), Some(unfiltered)) = (self.bm25_query(query, Some(tenant))?, self.bm25_query(query, None)?)
        else {
            return Ok(Vec::new());
        };
        let stats = GlobalStats { searchers: self.shards.iter().map(|(_, s)| s).collect() };
        let mut scored: Vec<(f32, usize, DocAddress)> = Vec::new();
        for (shard, (_, searcher)) in self.shards.iter().enumerate() {
            // A shard of this tenant alone needs no filter; one of another tenant alone holds nothing.
            let query = match self.sole_tenants.get(shard).and_then(Option::as_deref) {
                Some(sole) if sole == tenant => &unfiltered,
                Some(_) => continue,
                None => &filtered,
            };
            let top = searcher
                .search_with_statistics_provider(query, &TopDocs::with_limit(k.max(1)).order_by_score(), &stats)
                .map_err(|e| io_error("search failed", e))?;
            scored.extend(top.into_iter().map(|(score, address)| (score, shard, address)));
        }
        self.ranked(scored, k)
    }

    /// Document and chunk counts, for one tenant or all.
    pub fn stats(&self, tenant: Option<&str>) -> Result<Stats, StageError> {
        let mut stats = Stats { docs: 0, chunks: 0 };
        let first_chunks: Box<dyn Query> =
            Box::new(TermQuery::new(Term::from_field_u64(self.fields.chunk_no, 0), IndexRecordOption::Basic));
        for (_, searcher) in &self.shards {
            match tenant {
                None => {
                    stats.chunks += searcher.num_docs();
                    stats.docs +=
                        searcher.search(&first_chunks, &Count).map_err(|e| io_error("count failed", e))? as u64;
                }
                Some(t) => {
                    let all = self.tenant_filter(t);
                    let docs = BooleanQuery::new(vec![
                        (Occur::Must, first_chunks.box_clone()),
                        (Occur::Must, self.tenant_filter(t)),
                    ]);
                    stats.chunks += searcher.search(&all, &Count).map_err(|e| io_error("count failed", e))? as u64;
                    stats.docs += searcher.search(&docs, &Count).map_err(|e| io_error("count failed", e))? as u64;
                }
            }
        }
        Ok(stats)
    }

    fn tenant_filter(&self, tenant: &str) -> Box<dyn Query> {
        let term = TermQuery::new(Term::from_field_text(self.fields.tenant_id, tenant), IndexRecordOption::Basic);
        // A filter: it must match, and adds nothing to the score.
        Box::new(BoostQuery::new(Box::new(term), 0.0))
    }

    /// Bag-of-words BM25 over title and text, restricted to a tenant (when
    /// given); `None` when the query has no searchable term. Without a tenant
    /// filter or an `only` set it is a plain disjunction of term queries,
    /// which tantivy scores with block-max WAND.
    fn bm25_query(&self, text: &str, tenant: Option<&str>) -> Result<Option<BooleanQuery>, StageError> {
        let Some((index, _)) = self.shards.first() else {
            return Ok(None);
        };
        let mut tokenizer = index.tokenizer_for_field(self.fields.text).map_err(|e| io_error("tokenizer", e))?;
        let mut terms: Vec<String> = Vec::new();
        let mut stream = tokenizer.token_stream(text);
        while let Some(token) = stream.next() {
            if !terms.contains(&token.text) {
                terms.push(token.text.clone());
            }
        }
        if terms.is_empty() {
            return Ok(None);
        }
        let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for term in &terms {
            for (field, boost) in [(self.fields.text, 1.0), (self.fields.title, TITLE_BOOST)] {
                let query = TermQuery::new(Term::from_field_text(field, term), IndexRecordOption::WithFreqs);
                should.push((Occur::Should, Box::new(BoostQuery::new(Box::new(query), boost))));
            }
        }
        if tenant.is_none() && self.only.is_none() {
            return Ok(Some(BooleanQuery::new(should)));
        }
        let mut must: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, Box::new(BooleanQuery::new(should)))];
        if let Some(tenant) = tenant {
            must.push((Occur::Must, self.tenant_filter(tenant)));
        }
        if let Some(only) = &self.only {
            let chunks = TermSetQuery::new(only.iter().map(|id| Term::from_field_text(self.fields.chunk_id, id)));
            must.push((Occur::Must, Box::new(BoostQuery::new(Box::new(chunks), 0.0))));
        }
        Ok(Some(BooleanQuery::new(must)))
    }

    fn hit(&self, shard: usize, address: DocAddress, score: f32) -> Result<Hit, StageError> {
        let doc: TantivyDocument =
            self.shards[shard].1.doc(address).map_err(|e| io_error("cannot load a stored chunk", e))?;
        Ok(self.hit_of(&doc, score))
    }

    fn hit_of(&self, doc: &TantivyDocument, score: f32) -> Hit {
        let text = |field: Field| doc.get_first(field).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let number = |field: Field| doc.get_first(field).and_then(|v| v.as_u64()).unwrap_or(0);
        let f = self.fields;
        Hit {
            doc_id: text(f.doc_id),
            chunk_id: text(f.chunk_id),
            score,
            title: text(f.title),
            text: text(f.text),
            tenant_id: text(f.tenant_id),
            section: text(f.section),
            char_start: number(f.char_start),
            char_end: number(f.char_end),
            ranks: ListRanks::default(),
        }
    }
}

/// The one tenant every chunk of a shard belongs to (deleted ones too):
/// each segment's `tenant_id` dictionary holds exactly that one term.
fn sole_tenant(searcher: &Searcher, field: Field) -> Result<Option<String>, StageError> {
    let mut sole: Option<String> = None;
    for segment in searcher.segment_readers() {
        let index = segment.inverted_index(field).map_err(|e| io_error("tenant terms", e))?;
        let terms = index.terms();
        if terms.num_terms() != 1 {
            return Ok(None);
        }
        let mut stream = terms.stream().map_err(|e| io_error("tenant terms", e))?;
        let Some((key, _)) = stream.next() else { return Ok(None) };
        let tenant = String::from_utf8_lossy(key).into_owned();
        match &sole {
            Some(t) if *t != tenant => return Ok(None),
            _ => sole = Some(tenant),
        }
    }
    Ok(sole)
}

/// BM25 statistics summed over every shard.
struct GlobalStats<'a> {
    searchers: Vec<&'a Searcher>,
}

impl Bm25StatisticsProvider for GlobalStats<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        self.searchers.iter().map(|s| s.total_num_tokens(field)).sum()
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        self.searchers.iter().map(|s| Bm25StatisticsProvider::total_num_docs(*s)).sum()
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        self.searchers.iter().map(|s| Bm25StatisticsProvider::doc_freq(*s, term)).sum()
    }
}
