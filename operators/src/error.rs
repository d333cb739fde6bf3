use std::fmt;

/// What to do with a failure: the class drives retry, dead-letter and fail-fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// May succeed if tried again (timeouts, 503s): retry under the stage's policy.
    Transient,
    /// The input itself is bad and will never succeed: dead-letter it, go on.
    Permanent,
    /// A dependency is down or misconfigured (no GPU, no disk): stop, loudly.
    Unavailable,
}

impl ErrorClass {
    /// The class as written in dead-letter records and events.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Unavailable => "unavailable",
        }
    }
}

/// A stage failure: its class, a short machine-readable kind
/// (`bad_json`, `missing_id`, ...) and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub struct StageError {
    /// What to do about it.
    pub class: ErrorClass,
    /// A stable identifier of the failure (`bad_json`, `too_large`, ...).
    pub kind: String,
    /// What went wrong, for people.
    pub message: String,
    /// The earliest a retry may come (an HTTP `Retry-After`): the policy
    /// waits at least this long before the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<std::time::Duration>,
}

/// The longest message a [`StageError`] keeps: messages quote input (a bad
/// id, a URL), and events, logs, the ledger and dead letters all carry them.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// `message`, cut at a character boundary to [`MAX_ERROR_MESSAGE`] bytes.
fn bounded(message: impl Into<String>) -> String {
    let mut message = message.into();
    if message.len() > MAX_ERROR_MESSAGE {
        message.truncate(message.floor_char_boundary(MAX_ERROR_MESSAGE - '…'.len_utf8()));
        message.push('…');
    }
    message
}

impl StageError {
    /// A permanent failure of the input.
    pub fn permanent(kind: &str, message: impl Into<String>) -> Self {
        StageError {
            class: ErrorClass::Permanent,
            kind: kind.to_string(),
            message: bounded(message),
            retry_after: None,
        }
    }

    /// A failure that may pass if tried again (a timeout, a 503).
    pub fn transient(kind: &str, message: impl Into<String>) -> Self {
        StageError {
            class: ErrorClass::Transient,
            kind: kind.to_string(),
            message: bounded(message),
            retry_after: None,
        }
    }

    /// The same error, asking the next attempt to wait at least `after`.
    pub fn with_retry_after(mut self, after: Option<std::time::Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// A failure of a dependency that makes going on pointless.
    pub fn unavailable(kind: &str, message: impl Into<String>) -> Self {
        StageError {
            class: ErrorClass::Unavailable,
            kind: kind.to_string(),
            message: bounded(message),
            retry_after: None,
        }
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.kind, self.class.as_str(), self.message)
    }
}

/// Outside text quoted in a message: debug-escaped, at most 64 characters.
pub(crate) fn shown(text: &str) -> String {
    let cut: String = text.chars().take(64).collect();
    if cut.len() < text.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}
