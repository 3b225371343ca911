//! The `signal_deliveries` table: what became of each signal on each notification channel
//! (`schemas/clickhouse/0006_signal_deliveries.sql`). The detector writes a row per outcome
//! and reads them back at start-up to hand again the signals a channel never took.

use crate::client::{db, ident};
use crate::error::{step, Result};
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What became of a signal on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeliveryOutcome {
    /// Handed to the channel's queue: no outcome yet (the process may have stopped first).
    Queued,
    /// Every attempt of a process life failed.
    Failed,
    /// The channel's queue was full.
    Dropped,
    /// Over the channel's rate limit: not sent, on purpose.
    RateLimited,
    /// Within the channel's cooldown for the issue and type: not sent, on purpose.
    Cooled,
    /// Never delivered, and older than the redelivery age at a start-up: given up.
    Expired,
    /// The receiver took it.
    Delivered,
}

impl DeliveryOutcome {
    /// Every outcome.
    pub const ALL: [DeliveryOutcome; 7] =
        [Self::Queued, Self::Failed, Self::Dropped, Self::RateLimited, Self::Cooled, Self::Expired, Self::Delivered];

    /// The stored code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
            Self::RateLimited => "rate_limited",
            Self::Cooled => "cooled",
            Self::Expired => "expired",
            Self::Delivered => "delivered",
        }
    }

    /// The outcome of a stored code.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.code() == code)
    }

    /// The precedence of the outcome among the rows of one (signal, channel), the table's
    /// `outcome_rank`: 3 delivered; 2 final without delivery (cooled, rate-limited, expired);
    /// 1 still to be delivered (queued, failed, dropped).
    pub fn rank(self) -> u8 {
        match self {
            Self::Delivered => 3,
            Self::RateLimited | Self::Cooled | Self::Expired => 2,
            Self::Queued | Self::Failed | Self::Dropped => 1,
        }
    }

    /// Whether a signal whose highest-ranked outcome on a channel is this one is handed to
    /// that channel again at start-up (while young enough).
    pub fn redeliverable(self) -> bool {
        self.rank() == 1
    }
}

/// One row of `signal_deliveries`.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct DeliveryRow {
    /// The signal's project.
    pub project: String,
    /// The signal's issue (empty for a digest).
    pub issue_id: String,
    /// The signal's id.
    pub signal_id: String,
    /// The channel's name (`[[detector.channels]] name`).
    pub channel: String,
    /// The channel's kind (`webhook`, `slack`, `discord`, `telegram`).
    pub kind: String,
    /// [`DeliveryOutcome::code`].
    pub outcome: String,
    /// Attempts made, over every process life so far.
    pub attempts: u32,
    /// The last failed attempt's error (redacted), else empty.
    pub error: String,
    /// [`DeliveryOutcome::rank`] of `outcome`.
    pub outcome_rank: u8,
    /// When, Unix seconds.
    pub at: u32,
}

/// Inserts `rows` into `signal_deliveries` of `database` in one INSERT.
///
/// # Errors
/// When the database name is not an identifier, ClickHouse refuses, or `timeout` passes (the
/// outcome is then unknown; inserting the same rows again is harmless: readers take the
/// highest rank).
pub async fn insert(client: &Client, database: &str, rows: &[DeliveryRow], timeout: Duration) -> Result<()> {
    // The client quotes the table name whole: the database is the client's.
    let client = client.clone().with_database(ident("clickhouse.database", database)?);
    let written = async {
        let mut ins =
            client.insert::<DeliveryRow>("signal_deliveries").await?.with_timeouts(Some(timeout), Some(timeout));
        for row in rows {
            ins.write(row).await?;
        }
        ins.end().await
    };
    written.await.map_err(step("insert signal delivery rows"))
}

/// Every row written at or after `from_secs` (Unix seconds).
///
/// # Errors
/// When the database name is not an identifier or ClickHouse does not answer.
pub async fn since(client: &Client, database: &str, from_secs: u32) -> Result<Vec<DeliveryRow>> {
    let db = db(database)?;
    client
        .query(&format!(
            "SELECT project, issue_id, signal_id, channel, kind, outcome, attempts, error, outcome_rank, \
             toUInt32(at) AS at_secs FROM {db}.signal_deliveries WHERE at >= toDateTime(?)"
        ))
        .bind(from_secs)
        .fetch_all::<DeliveryRow>()
        .await
        .map_err(step("signal deliveries"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_delivered_outranks_everything() {
        for o in DeliveryOutcome::ALL {
            assert_eq!(DeliveryOutcome::from_code(o.code()), Some(o));
            assert!(o == DeliveryOutcome::Delivered || o.rank() < DeliveryOutcome::Delivered.rank());
        }
        assert_eq!(DeliveryOutcome::from_code("sent"), None);
        let again: Vec<&str> =
            DeliveryOutcome::ALL.into_iter().filter(|o| o.redeliverable()).map(DeliveryOutcome::code).collect();
        assert_eq!(again, ["queued", "failed", "dropped"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_written_are_read_back_from_their_time_on() {
        let cfg = crate::testdb::scratch("deliveries");
        crate::migrate::migrate(&cfg, |_, _| {}).await.expect("ClickHouse is needed for this test");
        let client = crate::client::client(&cfg);
        let row = |id: &str, outcome: DeliveryOutcome, at: u32| DeliveryRow {
            project: "wéb".into(),
            issue_id: "i".into(),
            signal_id: id.into(),
            channel: "oncall 日本".into(),
            kind: "slack".into(),
            outcome: outcome.code().into(),
            attempts: 2,
            error: "status 500 😀".into(),
            outcome_rank: outcome.rank(),
            at,
        };
        let rows = [
            row("a", DeliveryOutcome::Queued, 1_000),
            row("a", DeliveryOutcome::Delivered, 2_000),
            row("b", DeliveryOutcome::Failed, 3_000),
        ];
        let written = insert(&client, &cfg.database, &rows, Duration::from_secs(10)).await;
        let mut read = since(&client, &cfg.database, 2_000).await;
        let _ = crate::client::drop_database(&client, &cfg.database).await;
        written.unwrap();
        let read = read.as_mut().unwrap();
        read.sort_by_key(|r| r.at);
        assert_eq!(read, &rows[1..]);
    }
}
