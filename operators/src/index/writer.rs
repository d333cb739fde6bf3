//! One shard's writers together: BM25 (+ SPLADE) in tantivy, dense in FAISS.

use std::path::PathBuf;

use super::{Bm25Shard, DenseShard, Layout};
use crate::{ChunkedDocument, StageError};

/// Which parts of the dual index a shard writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backends {
    /// SPLADE terms and vectors in the tantivy shard.
    pub splade: bool,
    /// Dense vectors in FAISS.
    pub dense: bool,
}

/// A shard open for writing.
pub struct ShardWriter {
    dir: PathBuf,
    bm25: Bm25Shard,
    dense: Option<DenseShard>,
    backends: Backends,
}

impl ShardWriter {
    /// Opens shard `n` of `layout`.
    pub fn open(
        layout: &Layout,
        n: u32,
        writer_memory_bytes: usize,
        backends: Backends,
    ) -> Result<ShardWriter, StageError> {
        let dir = layout.shard_dir(n);
        let bm25 = Bm25Shard::open(&dir.join("bm25"), writer_memory_bytes)?;
        Ok(ShardWriter { dir, bm25, dense: None, backends })
    }

    /// Replaces every chunk (text, SPLADE terms, vectors) of the document.
    pub fn upsert(&mut self, doc: &ChunkedDocument) -> Result<(), StageError> {
        self.bm25.upsert(doc, self.backends.splade)?;
        if self.backends.dense {
            if self.dense.is_none() {
                // The width comes from the first vector (an existing index checks it).
                let Some(dim) = doc.chunks.iter().find_map(|c| c.dense.as_ref().map(Vec::len)) else {
                    return Ok(());
                };
                self.dense = Some(DenseShard::open(&self.dir, dim as u32)?);
            }
            if let Some(dense) = &mut self.dense {
                dense.upsert(doc)?;
            }
        }
        Ok(())
    }

    /// Deletes every chunk (text, SPLADE terms, vectors) of a tenant's document.
    pub fn delete(&mut self, tenant_id: &str, doc_id: &str) {
        self.bm25.delete(tenant_id, doc_id);
        if self.backends.dense {
            if self.dense.is_none() {
                // No vector written yet by this writer: an index on disk may still hold some.
                if let Ok(dense) = DenseShard::open(&self.dir, 0) {
                    if dense.dim() > 0 {
                        self.dense = Some(dense);
                    }
                }
            }
            if let Some(dense) = &mut self.dense {
                dense.delete(tenant_id, doc_id);
            }
        }
    }

    /// Makes every write durable.
    pub fn commit(&mut self) -> Result<(), StageError> {
        self.bm25.commit()?;
        if let Some(dense) = &mut self.dense {
            dense.commit()?;
        }
        Ok(())
    }
}
