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
    /// No issue has this id (in the project given, if one was).
    #[error("no issue {}{}", inert(issue_id), project.as_deref().map(|p| format!(" in project {}", inert(p))).unwrap_or_default())]
    UnknownIssue {
        /// The id asked for.
        issue_id: String,
        /// The project asked for.
        project: Option<String>,
    },
    /// A query's answer would be longer than the bound it is read with (rather than cut short
    /// in silence): narrow it.
    #[error("{what}: more than {limit} rows; narrow the window or name a project")]
    TooManyRows {
        /// The query.
        what: &'static str,
        /// The bound.
        limit: u64,
    },
    /// The id names issues in several projects and no project was given.
    #[error("issue {} exists in projects {}; name one with --project", inert(issue_id), projects.iter().map(|p| inert(p)).collect::<Vec<_>>().join(", "))]
    AmbiguousIssue {
        /// The id asked for.
        issue_id: String,
        /// The projects that have it.
        projects: Vec<String>,
    },
}

/// `s` with control characters escaped, so that a name from event data printed in a message
/// cannot move a terminal's cursor or change its colours.
fn inert(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// The store's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps a client error to [`Error::ClickHouse`] naming the step `what`.
pub(crate) fn step(what: impl Into<String>) -> impl FnOnce(clickhouse::error::Error) -> Error {
    let what = what.into();
    move |source| Error::ClickHouse { what, source }
}
