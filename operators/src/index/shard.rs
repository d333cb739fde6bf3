//! One writable BM25 shard.

use std::path::Path;

use tantivy::directory::MmapDirectory;
use tantivy::{doc, Index, IndexWriter, Term};

use super::{fields_of, io_error, schema, splade_tokens, Fields};
use crate::{doc_key, ChunkedDocument, StageError};

/// A tantivy index open for writing. Writes become visible (and durable)
/// only at [`Bm25Shard::commit`].
pub struct Bm25Shard {
    writer: IndexWriter,
    fields: Fields,
}

impl Bm25Shard {
    /// Opens (creating if needed) the shard in `dir`, with an indexing
    /// budget of `memory_bytes` (at least 15 MB).
    pub fn open(dir: &Path, memory_bytes: usize) -> Result<Bm25Shard, StageError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(&format!("cannot create {}", dir.display()), e))?;
        let directory = MmapDirectory::open(dir).map_err(|e| io_error(&format!("cannot open {}", dir.display()), e))?;
        let (schema, _) = schema();
        let index = Index::open_or_create(directory, schema)
            .map_err(|e| io_error(&format!("cannot open the index in {}", dir.display()), e))?;
        let fields = fields_of(&index.schema())?;
        let writer = index.writer_with_num_threads(1, memory_bytes.max(15_000_000)).map_err(|e| {
            io_error(
                &format!("cannot lock the index in {} for writing (is another medkg writing it?)", dir.display()),
                e,
            )
        })?;
        Ok(Bm25Shard { writer, fields })
    }

    /// Replaces every chunk of the document with `doc`'s chunks (with their
    /// SPLADE terms when `splade`).
    pub fn upsert(&mut self, doc: &ChunkedDocument, splade: bool) -> Result<(), StageError> {
        let f = self.fields;
        let key = doc_key(&doc.tenant_id, &doc.doc_id);
        self.writer.delete_term(Term::from_field_text(f.doc_key, &key));
        for chunk in &doc.chunks {
            let mut document = doc!(
                    f.chunk_id => chunk.id.as_str(),
                    f.doc_id => doc.doc_id.as_str(),
                    f.doc_key => key.as_str(),
                    f.tenant_id => doc.tenant_id.as_str(),
                    f.chunk_no => u64::from(chunk.n),
                    f.source => doc.source.as_str(),
                    f.title => doc.title.as_str(),
                    f.text => chunk.text.as_str(),
                    f.section => chunk.section_name.as_str(),
                    f.char_start => chunk.char_start as u64,
                    f.char_end => chunk.char_end as u64,
            );
            if let Some(sparse) = chunk.sparse.as_ref().filter(|_| splade) {
                document.add_text(f.splade_terms, splade_tokens(sparse));
            }
            self.writer.add_document(document).map_err(|e| io_error("cannot add a chunk", e))?;
        }
        Ok(())
    }

    /// Deletes every chunk of a document.
    pub fn delete(&mut self, tenant_id: &str, doc_id: &str) {
        self.writer.delete_term(Term::from_field_text(self.fields.doc_key, &doc_key(tenant_id, doc_id)));
    }

    /// Makes every write so far durable and visible.
    pub fn commit(&mut self) -> Result<(), StageError> {
        self.writer.commit().map(|_| ()).map_err(|e| io_error("commit failed", e))
    }
}
