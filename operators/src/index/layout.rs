//! The data directory's shard layout, fixed at creation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::io_error;
use crate::{stable_hash, StageError};

const LAYOUT_FILE: &str = "medkg-layout.json";
const LAYOUT_VERSION: u32 = 1;

/// How many shards a data directory has, and where they live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Format version of the directory.
    pub version: u32,
    /// Number of shards.
    pub shards: u32,
    #[serde(skip)]
    root: PathBuf,
}

impl Layout {
    /// Opens the layout of `root`, creating it with `shards` shards when the
    /// directory is new.
    pub fn open_or_create(root: &Path, shards: u32) -> Result<Layout, StageError> {
        let file = root.join(LAYOUT_FILE);
        if file.exists() {
            return Layout::open(root);
        }
        std::fs::create_dir_all(root).map_err(|e| io_error(&format!("cannot create {}", root.display()), e))?;
        let layout = Layout { version: LAYOUT_VERSION, shards: shards.max(1), root: root.to_path_buf() };
        let text = serde_json::to_string_pretty(&layout).map_err(|e| io_error("layout", e))?;
        write_atomically(&file, text.as_bytes()).map_err(|e| io_error("cannot write the layout", e))?;
        Ok(layout)
    }

    /// Opens an existing data directory.
    pub fn open(root: &Path) -> Result<Layout, StageError> {
        let file = root.join(LAYOUT_FILE);
        let text = std::fs::read_to_string(&file).map_err(|e| {
            StageError::unavailable(
                "no_index",
                format!("{} is not a medkg data directory ({}: {e})", root.display(), file.display()),
            )
        })?;
        let mut layout: Layout = serde_json::from_str(&text)
            .map_err(|e| StageError::unavailable("bad_layout", format!("{} is damaged: {e}", file.display())))?;
        if layout.version != LAYOUT_VERSION || layout.shards == 0 {
            return Err(StageError::unavailable(
                "bad_layout",
                format!(
                    "{}: layout version {} with {} shards is not supported by this build",
                    file.display(),
                    layout.version,
                    layout.shards
                ),
            ));
        }
        layout.root = root.to_path_buf();
        Ok(layout)
    }

    /// The shard that owns `doc_id`.
    pub fn shard_of(&self, doc_id: &str) -> u32 {
        (stable_hash(doc_id) % u64::from(self.shards)) as u32
    }

    /// The directory of shard `n`.
    pub fn shard_dir(&self, n: u32) -> PathBuf {
        self.root.join(format!("shard-{n}"))
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Replaces `path` with `bytes` all at once and durably (a temp file of its
/// own, synced, then a rename), so a reader never sees a half-written file,
/// even while threads or the processes of a cluster race to write it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    // Writers of one path may race (two downloads of one PDF): each writes a
    // temp file of its own, hidden from folder readers (leading `.`, `.tmp`).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the folder is synced.
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(folder)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
