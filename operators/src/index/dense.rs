//! Dense vectors of one shard in FAISS (`IDMap,Flat`, inner product: exact
//! cosine on normalised vectors), keyed by a stable id per chunk.
//!
//! Writes are staged and applied at [`DenseShard::commit`]: one batched
//! removal (FAISS compacts a flat index on every `remove_ids`, so one call
//! per document would cost O(n²)), then one batched add, then the index and
//! its id → chunk map are written atomically (temp file, rename).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use faiss::index::{IndexImpl, SearchWithParamsMut};
use faiss::selector::IdSelector;
use faiss::{Idx, Index, MetricType};
use serde::{Deserialize, Serialize};

use super::io_error;
use crate::{doc_key, stable_hash, ChunkedDocument, StageError};

const INDEX_FILE: &str = "dense.faiss";
const META_FILE: &str = "dense-meta.json";

/// What an id stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenseMeta {
    /// The chunk.
    pub chunk_id: String,
    /// Its document.
    pub doc_id: String,
    /// Its tenant.
    pub tenant_id: String,
}

#[derive(Serialize, Deserialize)]
struct MetaFile {
    dim: u32,
    entries: Vec<(i64, DenseMeta)>,
}

/// A shard's dense index, for writing and for searching.
pub struct DenseShard {
    dir: PathBuf,
    dim: u32,
    index: IndexImpl,
    meta: HashMap<i64, DenseMeta>,
    by_doc: HashMap<String, Vec<i64>>,
    pending_remove: HashSet<i64>,
    pending_add: BTreeMap<i64, Vec<f32>>,
}

fn faiss_error(what: &str, e: faiss::error::Error) -> StageError {
    io_error(&format!("FAISS: {what}"), e)
}

/// A chunk's id in FAISS: chunk ids repeat across tenants, so the tenant is part of it.
fn id_of(tenant_id: &str, chunk_id: &str) -> i64 {
    (stable_hash(&doc_key(tenant_id, chunk_id)) >> 1) as i64
}

impl DenseShard {
    /// Opens the shard's dense index in `dir`, creating an empty one of
    /// width `dim` when there is none. An existing index of another width is
    /// an error (the data directory was built with another model).
    pub fn open(dir: &Path, dim: u32) -> Result<DenseShard, StageError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(&format!("cannot create {}", dir.display()), e))?;
        let (index, meta) = match DenseShard::read(dir)? {
            Some((index, file)) => {
                if file.dim != dim && dim != 0 {
                    return Err(StageError::unavailable(
                        "dimension_mismatch",
                        format!(
                            "{} holds {}-d vectors but the model makes {dim}-d ones: use a new data directory",
                            dir.display(),
                            file.dim
                        ),
                    ));
                }
                (index, file.entries.into_iter().collect::<HashMap<_, _>>())
            }
            None => {
                let index = faiss::index_factory(dim, "IDMap,Flat", MetricType::InnerProduct)
                    .map_err(|e| faiss_error("cannot create an index", e))?;
                (index, HashMap::new())
            }
        };
        let mut by_doc: HashMap<String, Vec<i64>> = HashMap::new();
        for (id, m) in &meta {
            by_doc.entry(doc_key(&m.tenant_id, &m.doc_id)).or_default().push(*id);
        }
        let dim = index.d();
        Ok(DenseShard {
            dir: dir.to_path_buf(),
            dim,
            index,
            meta,
            by_doc,
            pending_remove: HashSet::new(),
            pending_add: BTreeMap::new(),
        })
    }

    /// Reads a committed index, if there is one.
    fn read(dir: &Path) -> Result<Option<(IndexImpl, MetaFile)>, StageError> {
        let (index_path, meta_path) = (dir.join(INDEX_FILE), dir.join(META_FILE));
        if !index_path.exists() || !meta_path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&meta_path)
            .map_err(|e| io_error(&format!("cannot read {}", meta_path.display()), e))?;
        let file: MetaFile =
            serde_json::from_str(&text).map_err(|e| io_error(&format!("{} is damaged", meta_path.display()), e))?;
        let index =
            faiss::read_index(index_path.to_string_lossy()).map_err(|e| faiss_error("cannot read the index", e))?;
        Ok(Some((index, file)))
    }

    /// Vector width.
    pub fn dim(&self) -> u32 {
        self.dim
    }

    /// Replaces every vector of the document with those of its chunks.
    pub fn upsert(&mut self, doc: &ChunkedDocument) -> Result<(), StageError> {
        self.delete(&doc.tenant_id, &doc.doc_id);
        let mut ids = Vec::new();
        for chunk in &doc.chunks {
            let Some(vector) = &chunk.dense else { continue };
            if vector.len() != self.dim as usize {
                return Err(StageError::unavailable(
                    "dimension_mismatch",
                    format!("chunk {} has a {}-d vector, the index {}-d", chunk.id, vector.len(), self.dim),
                ));
            }
            let id = id_of(&doc.tenant_id, &chunk.id);
            // Also remove the id itself: after a crash the index may hold it
            // while the map (written after it) does not.
            self.pending_remove.insert(id);
            self.pending_add.insert(id, vector.clone());
            self.meta.insert(
                id,
                DenseMeta { chunk_id: chunk.id.clone(), doc_id: doc.doc_id.clone(), tenant_id: doc.tenant_id.clone() },
            );
            ids.push(id);
        }
        if !ids.is_empty() {
            self.by_doc.insert(doc_key(&doc.tenant_id, &doc.doc_id), ids);
        }
        Ok(())
    }

    /// Removes every vector of a tenant's document.
    pub fn delete(&mut self, tenant_id: &str, doc_id: &str) {
        for id in self.by_doc.remove(&doc_key(tenant_id, doc_id)).unwrap_or_default() {
            self.pending_remove.insert(id);
            self.pending_add.remove(&id);
            self.meta.remove(&id);
        }
    }

    /// Applies staged writes and writes the index and its map durably.
    pub fn commit(&mut self) -> Result<(), StageError> {
        if self.pending_remove.is_empty() && self.pending_add.is_empty() && self.dir.join(INDEX_FILE).exists() {
            return Ok(());
        }
        if !self.pending_remove.is_empty() {
            let ids: Vec<Idx> = self.pending_remove.iter().map(|&id| Idx::new(id as u64)).collect();
            let selector = IdSelector::batch(&ids).map_err(|e| faiss_error("selector", e))?;
            self.index.remove_ids(&selector).map_err(|e| faiss_error("remove", e))?;
        }
        if !self.pending_add.is_empty() {
            let ids: Vec<Idx> = self.pending_add.keys().map(|&id| Idx::new(id as u64)).collect();
            let vectors: Vec<f32> = self.pending_add.values().flatten().copied().collect();
            self.index.add_with_ids(&vectors, &ids).map_err(|e| faiss_error("add", e))?;
        }
        self.pending_remove.clear();
        self.pending_add.clear();
        let tmp_index = self.dir.join(format!("{INDEX_FILE}.tmp"));
        faiss::write_index(&self.index, tmp_index.to_string_lossy())
            .map_err(|e| faiss_error("cannot write the index", e))?;
        let meta = MetaFile { dim: self.dim, entries: self.meta.iter().map(|(id, m)| (*id, m.clone())).collect() };
        let tmp_meta = self.dir.join(format!("{META_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            std::fs::write(&tmp_meta, serde_json::to_vec(&meta)?)?;
            std::fs::File::open(&tmp_index)?.sync_all()?;
            std::fs::File::open(&tmp_meta)?.sync_all()?;
            std::fs::rename(&tmp_index, self.dir.join(INDEX_FILE))?;
            std::fs::rename(&tmp_meta, self.dir.join(META_FILE))?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| io_error(&format!("cannot write the dense index in {}", self.dir.display()), e))
    }

    /// Number of committed vectors.
    pub fn len(&self) -> u64 {
        self.index.ntotal()
    }

    /// Whether no vector is committed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` nearest committed chunks of `tenant` (inner product, best first),
    /// among the chunks `only` names when it is given. Only those ids are
    /// searched, so ranks are ranks within them.
    pub fn search(
        &mut self,
        query: &[f32],
        tenant: &str,
        k: usize,
        only: Option<&std::collections::HashSet<String>>,
    ) -> Result<Vec<(f32, DenseMeta)>, StageError> {
        if query.len() != self.dim as usize || k == 0 {
            return Ok(Vec::new());
        }
        let allowed: Vec<Idx> = self
            .meta
            .iter()
            .filter(|(_, m)| m.tenant_id == tenant && only.is_none_or(|only| only.contains(&m.chunk_id)))
            .map(|(&id, _)| Idx::new(id as u64))
            .collect();
        if allowed.is_empty() {
            return Ok(Vec::new());
        }
        let selector = IdSelector::batch(&allowed).map_err(|e| faiss_error("selector", e))?;
        let params = faiss::search_params::SearchParametersImpl::new(selector)
            .map_err(|e| faiss_error("search parameters", e))?;
        let result = self
            .index
            .search_with_params(query, k.min(allowed.len()), &params)
            .map_err(|e| faiss_error("search", e))?;
        Ok(result
            .distances
            .iter()
            .zip(&result.labels)
            .filter_map(|(&score, label)| {
                let id = label.get()? as i64;
                self.meta.get(&id).filter(|m| m.tenant_id == tenant).map(|m| (score, m.clone()))
            })
            .collect())
    }
}
