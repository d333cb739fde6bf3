//! BM25 index shards in tantivy, and search across them.
//!
//! A data directory holds `shards` shards (`shard-{n}/bm25`), fixed when the
//! directory is created; a document lives in shard `stable_hash(doc_id) % shards`,
//! whatever the number of workers that writes it. Every chunk is one tantivy
//! document keyed by its chunk id and carrying its document id and tenant, so
//! re-ingesting a document deletes all its old chunks before adding the new.

mod dense;
mod layout;
mod search;
mod shard;
mod splade;
mod writer;

pub use dense::DenseMeta;
pub use dense::DenseShard;
pub use layout::{write_atomically, Layout};
pub use search::{EncodedQuery, Hit, ListRanks, SearchIndex, Stats, Weights};
pub use shard::Bm25Shard;
pub use splade::{quantize, splade_tokens, QUANT_SCALE};
pub use writer::{Backends, ShardWriter};

use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STORED, STRING,
};

/// The tokenizer of the searchable text fields (lower-cased, English stemming).
pub const TOKENIZER: &str = "en_stem";

/// The fields of the BM25 schema.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fields {
    pub chunk_id: Field,
    pub doc_id: Field,
    /// Tenant + document id: what an upsert or a delete replaces.
    pub doc_key: Field,
    pub tenant_id: Field,
    pub chunk_no: Field,
    pub source: Field,
    pub title: Field,
    pub text: Field,
    pub section: Field,
    pub char_start: Field,
    pub char_end: Field,
    /// SPLADE term ids of the chunk, each repeated by its quantised weight
    /// (its term frequency is the weight).
    pub splade_terms: Field,
}

pub(crate) fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let text_options = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let fields = Fields {
        chunk_id: builder.add_text_field("chunk_id", STRING | STORED | FAST),
        doc_id: builder.add_text_field("doc_id", STRING | STORED),
        doc_key: builder.add_text_field("doc_key", STRING),
        tenant_id: builder.add_text_field("tenant_id", STRING | STORED),
        chunk_no: builder.add_u64_field("chunk_no", INDEXED | STORED),
        source: builder.add_text_field("source", STRING | STORED),
        title: builder.add_text_field("title", text_options.clone()),
        text: builder.add_text_field("text", text_options),
        section: builder.add_text_field("section", STORED),
        char_start: builder.add_u64_field("char_start", STORED),
        char_end: builder.add_u64_field("char_end", STORED),
        splade_terms: builder.add_text_field(
            "splade_terms",
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default().set_tokenizer("whitespace").set_index_option(IndexRecordOption::WithFreqs),
            ),
        ),
    };
    (builder.build(), fields)
}

pub(crate) fn fields_of(schema: &Schema) -> Result<Fields, crate::StageError> {
    let get = |name: &str| {
        schema.get_field(name).map_err(|_| {
            crate::StageError::unavailable(
                "index_schema",
                format!("the index has no field `{name}`: it was written by another version of medkg"),
            )
        })
    };
    Ok(Fields {
        chunk_id: get("chunk_id")?,
        doc_id: get("doc_id")?,
        doc_key: get("doc_key")?,
        tenant_id: get("tenant_id")?,
        chunk_no: get("chunk_no")?,
        source: get("source")?,
        title: get("title")?,
        text: get("text")?,
        section: get("section")?,
        char_start: get("char_start")?,
        char_end: get("char_end")?,
        splade_terms: get("splade_terms")?,
    })
}

pub(crate) fn io_error(what: &str, error: impl std::fmt::Display) -> crate::StageError {
    crate::StageError::unavailable("index_io", format!("{what}: {error}"))
}
