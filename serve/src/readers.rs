//! The index readers searches share, reopened whenever the data directory
//! commits.
//!
//! A *generation* is the data directory as of one set of commits: a small
//! pool of [`SearchIndex`] clones, one per concurrent search, opened once
//! (the clones share the tantivy searchers and the dense shards, and a
//! reopen reads again only the dense shards that committed). A
//! watcher polls the directory's commit files (each shard's tantivy
//! `meta.json` and dense files, the layout and the model record) every
//! [`POLL_INTERVAL`]; when they change it opens a new generation and swaps
//! it in, and searches already running finish on the old one. A document
//! is therefore searchable within one poll of its epoch's commit, whether
//! the run is in this process (`run --serve`) or another.
//!
//! The query encoders are loaded once from the model record, one set per
//! reader slot (an ONNX session runs one query at a time, so one set would
//! serialise every dense or SPLADE search), and reloaded only if the record
//! changes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use medkg_dataflow::{Mode, QueryEncoders};
use medkg_operators::index::SearchIndex;
use medkg_operators::StageError;

/// How often the watcher looks for new commits.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// One opened state of the data directory.
pub struct Generation {
    pool: Vec<Mutex<SearchIndex>>,
    next: AtomicU64,
    /// Counts generations opened since the server started (from 1).
    pub number: u64,
}

impl Generation {
    /// Runs `f` on a reader of this generation: a free one if there is
    /// one, else waits for one. `f` also gets the reader's slot number, which
    /// picks the query encoders of the same slot: a search holds one slot
    /// for its encoding and its search, and as many run at once as there
    /// are slots.
    pub fn with<R>(&self, f: impl FnOnce(&mut SearchIndex, usize) -> R) -> R {
        for (slot, reader) in self.pool.iter().enumerate() {
            if let Ok(mut index) = reader.try_lock() {
                return f(&mut index, slot);
            }
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.pool.len();
        let mut index = self.pool[slot].lock().unwrap_or_else(|p| p.into_inner());
        f(&mut index, slot)
    }
}

/// What the data directory's commit files look like (path, length, mtime).
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The readers of a data directory.
pub struct Readers {
    data_dir: PathBuf,
    size: usize,
    current: RwLock<Option<Arc<Generation>>>,
    encoders: RwLock<Option<Arc<Vec<QueryEncoders>>>>,
    seen: Mutex<(Fingerprint, Fingerprint)>,
    generations: AtomicU64,
    last_error: Mutex<Option<String>>,
}

fn stamp(path: &Path, out: &mut Fingerprint) {
    if let Ok(meta) = std::fs::metadata(path) {
        out.push((path.to_path_buf(), meta.len(), meta.modified().ok()));
    }
}

/// The files whose change means a commit: per shard, tantivy's
/// `meta.json` and the dense files; the layout.
fn index_fingerprint(data_dir: &Path) -> Fingerprint {
    let mut out = Vec::new();
    stamp(&data_dir.join("medkg-layout.json"), &mut out);
    let Ok(entries) = std::fs::read_dir(data_dir) else { return out };
    let mut shards: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("shard-")))
        .collect();
    shards.sort();
    for shard in shards.into_iter().take(4096) {
        stamp(&shard.join("bm25").join("meta.json"), &mut out);
        if let Ok(files) = std::fs::read_dir(&shard) {
            let mut dense: Vec<PathBuf> = files
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("dense")))
                .collect();
            dense.sort();
            for file in dense {
                stamp(&file, &mut out);
            }
        }
    }
    out
}

impl Readers {
    /// Readers of `data_dir`, `size` per generation (nothing opened yet: see [`Readers::refresh`]).
    pub fn new(data_dir: &Path, size: usize) -> Readers {
        Readers {
            data_dir: data_dir.to_path_buf(),
            size: size.max(1),
            current: RwLock::new(None),
            encoders: RwLock::new(None),
            seen: Mutex::new((Vec::new(), Vec::new())),
            generations: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Opens a new generation if the directory committed since the last
    /// one (and the encoders if the model record changed). Returns whether
    /// anything was reopened; an error leaves the current generation serving.
    pub fn refresh(&self) -> Result<bool, StageError> {
        let index = index_fingerprint(&self.data_dir);
        let mut record = Vec::new();
        stamp(&self.data_dir.join("medkg-models.json"), &mut record);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let have_generation = self.current().is_some();
        if have_generation && seen.0 == index && seen.1 == record {
            return Ok(false);
        }
        let result = self.reopen(&index, &record, &seen.1);
        match &result {
            Ok(()) => {
                *seen = (index, record);
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(e) => *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string()),
        }
        result.map(|()| true)
    }

    fn reopen(&self, index: &Fingerprint, record: &Fingerprint, seen_record: &Fingerprint) -> Result<(), StageError> {
        if index.is_empty() {
            return Err(StageError::unavailable(
                "no_index",
                format!("{} holds no index yet (nothing has committed there)", self.data_dir.display()),
            ));
        }
        // One opening, cloned per slot: the clones share the searchers and
        // the dense shards, and the dense shards that did not commit are
        // kept from the last generation.
        let previous = self.current();
        let last = previous.as_ref().map(|g| g.with(|index, _| index.clone()));
        let first = SearchIndex::reopen(&self.data_dir, last.as_ref())?;
        let has_dense = first.has_dense();
        let pool: Vec<Mutex<SearchIndex>> = (0..self.size).map(|_| Mutex::new(first.clone())).collect();
        let encoders_loaded = self.encoders().is_some();
        if !encoders_loaded || record != seen_record || (has_dense && !self.encoders_serve(Mode::Dense)) {
            let sets = (0..self.size)
                .map(|_| QueryEncoders::load(&self.data_dir, Mode::Hybrid, has_dense))
                .collect::<Result<Vec<_>, _>>()?;
            *self.encoders.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(sets));
        }
        let number = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let generation = Arc::new(Generation { pool, next: AtomicU64::new(0), number });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(generation);
        tracing::debug!(generation = number, "index readers reopened");
        Ok(())
    }

    fn encoders_serve(&self, mode: Mode) -> bool {
        self.encoders().is_some_and(|e| e.first().is_some_and(|e| e.serves(mode)))
    }

    /// The generation searches use now (`None` until one opened).
    pub fn current(&self) -> Option<Arc<Generation>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The query encoders, one set per reader slot.
    pub fn encoders(&self) -> Option<Arc<Vec<QueryEncoders>>> {
        self.encoders.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why the last reopen failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
