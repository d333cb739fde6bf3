//! The one error type of the connectors: what failed, and on what.

use rdkafka::error::KafkaError;

/// A connector's error: what it was doing, and the error underneath.
/// The messages read as one line (`cannot write X: No space left on device`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{what}: {cause}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        cause: std::io::Error,
    },
    /// A broker refused or did not answer.
    #[error("{what}: {cause}")]
    Kafka {
        /// What was being done.
        what: String,
        /// Why it failed.
        cause: KafkaError,
    },
    /// The ledger's database failed.
    #[error("{what}: {cause}")]
    Sqlite {
        /// What was being done.
        what: String,
        /// Why it failed.
        cause: rusqlite::Error,
    },
    /// A record could not be read or written as JSON.
    #[error("{what}: {cause}")]
    Json {
        /// What was being done.
        what: String,
        /// Why it failed.
        cause: serde_json::Error,
    },
    /// An HTTP endpoint (OpenLineage) failed.
    #[error("{what}: {cause}")]
    Http {
        /// What was being done.
        what: String,
        /// Why it failed.
        cause: reqwest::Error,
    },
    /// Settings or input that cannot work as given.
    #[error("{0}")]
    Config(String),
    /// Something went wrong that is none of the above (a thread died, a
    /// broker timed out on a whole batch).
    #[error("{0}")]
    Other(String),
}

/// A connector's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, cause: std::io::Error) -> Error {
        Error::Io { what: what.into(), cause }
    }

    /// A Kafka error while doing `what`.
    pub fn kafka(what: impl Into<String>, cause: KafkaError) -> Error {
        Error::Kafka { what: what.into(), cause }
    }

    /// A SQLite error while doing `what`.
    pub fn sqlite(what: impl Into<String>, cause: rusqlite::Error) -> Error {
        Error::Sqlite { what: what.into(), cause }
    }

    /// A JSON error while doing `what`.
    pub fn json(what: impl Into<String>, cause: serde_json::Error) -> Error {
        Error::Json { what: what.into(), cause }
    }

    /// Whether trying again later may succeed: a broker or endpoint that is
    /// away, a busy database, an interrupted write. Settings, bad JSON and a
    /// full disk stay as they are.
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind;
        match self {
            Error::Io { cause, .. } => {
                matches!(cause.kind(), ErrorKind::Interrupted | ErrorKind::TimedOut | ErrorKind::WouldBlock)
            }
            Error::Kafka { cause, .. } => cause.rdkafka_error_code().is_some_and(|code| {
                use rdkafka::types::RDKafkaErrorCode::*;
                matches!(
                    code,
                    BrokerTransportFailure
                        | AllBrokersDown
                        | MessageTimedOut
                        | RequestTimedOut
                        | QueueFull
                        | NetworkException
                        | NotCoordinator
                        | CoordinatorNotAvailable
                        | CoordinatorLoadInProgress
                        | LeaderNotAvailable
                        | NotLeaderForPartition
                        | OperationTimedOut
                )
            }),
            Error::Sqlite { cause, .. } => matches!(
                cause.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            Error::Http { cause, .. } => cause.is_timeout() || cause.is_connect(),
            Error::Json { .. } | Error::Config(_) | Error::Other(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_one_line_and_classes_follow_the_cause() {
        let full = Error::io("cannot write /d/x", std::io::Error::other("No space left on device"));
        assert_eq!(full.to_string(), "cannot write /d/x: No space left on device");
        assert!(!full.is_transient());
        let interrupted = Error::io("cannot read", std::io::ErrorKind::Interrupted.into());
        assert!(interrupted.is_transient());
        let away = Error::kafka(
            "cannot commit",
            KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::AllBrokersDown),
        );
        assert!(away.is_transient());
        let refused = Error::kafka(
            "cannot commit",
            KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed),
        );
        assert!(!refused.is_transient());
        let busy = Error::sqlite(
            "ledger",
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None),
        );
        assert!(busy.is_transient());
        assert!(!Error::Config("no brokers".into()).is_transient());
    }
}
