//! What the ledger records: where a document stands, and one stage's word on it.

use std::collections::BTreeMap;

/// Where a document stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// A stage has it (and may be retrying).
    Running,
    /// A stage passed it on; the next has not reported yet.
    InProgress,
    /// It reached the pipeline's sinks (for an index: durably indexed).
    Completed,
    /// It was dead-lettered.
    Failed,
    /// A tombstone removed it.
    Deleted,
    /// It is waiting at a gate.
    Waiting,
    /// A gate gave up waiting for it.
    GateTimeout,
}

impl Status {
    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Deleted => "deleted",
            Status::Waiting => "waiting",
            Status::GateTimeout => "gate_timeout",
        }
    }

    /// Every status, for `--status` help and checks.
    pub const ALL: [Status; 7] = [
        Status::Running,
        Status::InProgress,
        Status::Completed,
        Status::Failed,
        Status::Deleted,
        Status::Waiting,
        Status::GateTimeout,
    ];

    /// Whether the document's run is over (so a later stage of it cannot
    /// report any more).
    pub(crate) fn terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Deleted | Status::GateTimeout)
    }
}

impl std::str::FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("`{s}`: expected one of {}", Status::ALL.map(Status::as_str).join(", ")))
    }
}

/// One stage's report about one document.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// The document's tenant.
    pub tenant_id: String,
    /// The document.
    pub doc_id: String,
    /// The stage.
    pub stage: String,
    /// The stage's position in the pipeline (plan order).
    pub stage_index: u32,
    /// Where the document stands after it.
    pub status: Status,
    /// Retries this stage made for it.
    pub retries: u32,
    /// The error that failed it.
    pub error: Option<String>,
    /// Its PDF is downloaded.
    pub pdf_downloaded: bool,
    /// Its IR is ready.
    pub pdf_ir_ready: bool,
}

impl Update {
    /// An update with no retries, error or PDF flags.
    pub fn new(tenant_id: &str, doc_id: &str, stage: &str, stage_index: u32, status: Status) -> Update {
        Update {
            tenant_id: tenant_id.to_string(),
            doc_id: doc_id.to_string(),
            stage: stage.to_string(),
            stage_index,
            status,
            retries: 0,
            error: None,
            pdf_downloaded: false,
            pdf_ir_ready: false,
        }
    }

    /// Whether this update supersedes `other` (both of one run): a later
    /// stage, or the same stage with a final word.
    pub(crate) fn supersedes(&self, other: &Update) -> bool {
        self.stage_index > other.stage_index
            || (self.stage_index == other.stage_index && (self.status.terminal() || !other.status.terminal()))
    }
}

/// A document's folded updates, waiting for the next write.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub latest: Update,
    pub retries: BTreeMap<String, u32>,
    pub at_ms: i64,
}

/// Now, in ms since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
