//! Search over every shard of a data directory, scored with BM25 statistics
//! summed over all shards (so a score means the same in every shard and the
//! per-shard top-k lists merge exactly).

use tantivy::collector::{Count, TopDocs};
use tantivy::query::{Bm25StatisticsProvider, BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Value};
use tantivy::{DocAddress, Index, Searcher, TantivyDocument, Term};

use super::{fields_of, io_error, Fields, Layout};
use crate::StageError;

/// Weight of a title match relative to a text match.
const TITLE_BOOST: f32 = 1.5;

/// One retrieved chunk.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
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
}

/// Counts in a data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Documents (with at least one chunk).
    pub docs: u64,
    /// Chunks.
    pub chunks: u64,
}

/// Every shard of a data directory, open for reading at its last commit.
pub struct SearchIndex {
    shards: Vec<(Index, Searcher)>,
    fields: Fields,
}

impl SearchIndex {
    /// Opens the data directory's shards as of their last commits.
    pub fn open(data_dir: &std::path::Path) -> Result<SearchIndex, StageError> {
        let layout = Layout::open(data_dir)?;
        let mut shards = Vec::new();
        let mut fields = None;
        for n in 0..layout.shards {
            let dir = layout.shard_dir(n).join("bm25");
            if !dir.join("meta.json").exists() {
                continue; // never committed: nothing to read
            }
            let index = Index::open_in_dir(&dir)
                .map_err(|e| io_error(&format!("cannot open {}", dir.display()), e))?;
            let reader = index
                .reader()
                .map_err(|e| io_error("cannot read the index", e))?;
            fields = Some(fields_of(&index.schema())?);
            shards.push((index, reader.searcher()));
        }
        let fields = match fields {
            Some(f) => f,
            None => super::schema().1,
        };
        Ok(SearchIndex { shards, fields })
    }

    /// The `k` best chunks for a free-text query within one tenant.
    pub fn search(&self, query: &str, tenant: &str, k: usize) -> Result<Vec<Hit>, StageError> {
        let Some(query) = self.bm25_query(query, tenant)? else {
            return Ok(Vec::new());
        };
        let stats = GlobalStats {
            searchers: self.shards.iter().map(|(_, s)| s).collect(),
        };
        let mut scored: Vec<(f32, usize, DocAddress)> = Vec::new();
        for (shard, (_, searcher)) in self.shards.iter().enumerate() {
            let top = searcher
                .search_with_statistics_provider(
                    &query,
                    &TopDocs::with_limit(k.max(1)).order_by_score(),
                    &stats,
                )
                .map_err(|e| io_error("search failed", e))?;
            scored.extend(
                top.into_iter()
                    .map(|(score, address)| (score, shard, address)),
            );
        }
        // Best first; ties broken by shard and address so results are stable.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        scored.truncate(k);
        scored
            .into_iter()
            .map(|(score, shard, address)| self.hit(shard, address, score))
            .collect()
    }

    /// Document and chunk counts, for one tenant or all.
    pub fn stats(&self, tenant: Option<&str>) -> Result<Stats, StageError> {
        let mut stats = Stats { docs: 0, chunks: 0 };
        let first_chunks: Box<dyn Query> = Box::new(TermQuery::new(
            Term::from_field_u64(self.fields.chunk_no, 0),
            IndexRecordOption::Basic,
        ));
        for (_, searcher) in &self.shards {
            match tenant {
                None => {
                    stats.chunks += searcher.num_docs();
                    stats.docs += searcher
                        .search(&first_chunks, &Count)
                        .map_err(|e| io_error("count failed", e))?
                        as u64;
                }
                Some(t) => {
                    let all = self.tenant_filter(t);
                    let docs = BooleanQuery::new(vec![
                        (Occur::Must, first_chunks.box_clone()),
                        (Occur::Must, self.tenant_filter(t)),
                    ]);
                    stats.chunks += searcher
                        .search(&all, &Count)
                        .map_err(|e| io_error("count failed", e))?
                        as u64;
                    stats.docs += searcher
                        .search(&docs, &Count)
                        .map_err(|e| io_error("count failed", e))?
                        as u64;
                }
            }
        }
        Ok(stats)
    }

    fn tenant_filter(&self, tenant: &str) -> Box<dyn Query> {
        let term = TermQuery::new(
            Term::from_field_text(self.fields.tenant_id, tenant),
            IndexRecordOption::Basic,
        );
        // A filter: it must match, and adds nothing to the score.
        Box::new(BoostQuery::new(Box::new(term), 0.0))
    }

    /// Bag-of-words BM25 over title and text, restricted to a tenant; `None`
    /// when the query has no searchable term.
    fn bm25_query(&self, text: &str, tenant: &str) -> Result<Option<BooleanQuery>, StageError> {
        let Some((index, _)) = self.shards.first() else {
            return Ok(None);
        };
        let mut tokenizer = index
            .tokenizer_for_field(self.fields.text)
            .map_err(|e| io_error("tokenizer", e))?;
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
                let query = TermQuery::new(
                    Term::from_field_text(field, term),
                    IndexRecordOption::WithFreqs,
                );
                should.push((
                    Occur::Should,
                    Box::new(BoostQuery::new(Box::new(query), boost)),
                ));
            }
        }
        Ok(Some(BooleanQuery::new(vec![
            (Occur::Must, Box::new(BooleanQuery::new(should))),
            (Occur::Must, self.tenant_filter(tenant)),
        ])))
    }

    fn hit(&self, shard: usize, address: DocAddress, score: f32) -> Result<Hit, StageError> {
        let doc: TantivyDocument = self.shards[shard]
            .1
            .doc(address)
            .map_err(|e| io_error("cannot load a stored chunk", e))?;
        let text = |field: Field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let number = |field: Field| doc.get_first(field).and_then(|v| v.as_u64()).unwrap_or(0);
        let f = self.fields;
        Ok(Hit {
            doc_id: text(f.doc_id),
            chunk_id: text(f.chunk_id),
            score,
            title: text(f.title),
            text: text(f.text),
            tenant_id: text(f.tenant_id),
            section: text(f.section),
            char_start: number(f.char_start),
            char_end: number(f.char_end),
        })
    }
}

/// BM25 statistics summed over every shard.
struct GlobalStats<'a> {
    searchers: Vec<&'a Searcher>,
}

impl Bm25StatisticsProvider for GlobalStats<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        self.searchers
            .iter()
            .map(|s| s.total_num_tokens(field))
            .sum()
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        self.searchers
            .iter()
            .map(|s| Bm25StatisticsProvider::total_num_docs(*s))
            .sum()
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        self.searchers
            .iter()
            .map(|s| Bm25StatisticsProvider::doc_freq(*s, term))
            .sum()
    }
}
