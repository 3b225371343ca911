//! The store's one error type.

/// What can go wrong talking to ClickHouse.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// ClickHouse did not answer or refused a statement; `what` says which step.
    #[error("{what}")]
    ClickHouse {
        /// The step that failed (`top issue counts`, `migration 0002_issues failed at: ...`).
        what: String,
        /// The client's error.
        #[source]
        source: clickhouse::error::Error,
    },
    /// A database or table name that is not `[A-Za-z0-9_]+` (it would be formatted into SQL).
    #[error("{what} must be [A-Za-z0-9_]+, got {value:?}")]
    Identifier {
        /// Which name (`clickhouse.database`, `writer.table`).
        what: &'static str,
        /// The name given.
        value: String,
    },
    /// An issue status that is not `active`, `resolved` or `ignored`.
    #[error("status must be resolved, ignored or active, got {0:?}")]
    UnknownStatus(String),
}

/// The store's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps a client error to [`Error::ClickHouse`] naming the step `what`.
pub(crate) fn step(what: impl Into<String>) -> impl FnOnce(clickhouse::error::Error) -> Error {
    let what = what.into();
    move |source| Error::ClickHouse { what, source }
}
