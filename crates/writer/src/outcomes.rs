//! The writer's second consumer: outcome records (`tracefold.outcomes`) into ClickHouse's
//! `outcomes` table, in its own consumer group (`<writer.group_id>-outcomes`) and thread.
//!
//! - One INSERT per batch; offsets are committed only after ClickHouse acknowledged it.
//! - Idempotent by the table: a record redelivered (a restart before the commit) or published
//!   twice has the same (project, minute, outcome, reason, source) and collapses into one row
//!   (`ReplacingMergeTree`; queries read with `FINAL`), so a failed insert of unknown outcome is
//!   simply tried again.
//! - A message that is not an outcome record goes to the DLQ (reason `malformed`).

use crate::config::Config;
use crate::metrics as m;
use anyhow::Context as _;
use rdkafka::message::{BorrowedMessage, Message};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracefold_model::{OutcomeRecord, Reason};
use tracefold_runtime::consumer::{Ctx, Step, Strategy};
use tracefold_runtime::kafka::DlqRecord;
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;
use tracefold_store::outcomes::OutcomeRow;

/// The table outcome rows go to.
pub const TABLE: &str = "outcomes";

/// The consumer group of the outcomes consumer for writer group `group`.
pub fn group_id(group: &str) -> String {
    format!("{group}-outcomes")
}

struct OutcomeWriter<'a> {
    cfg: &'a Config,
    client: tracefold_store::Client,
    rt: tokio::runtime::Runtime,
    /// Rows read and not yet stored, with their partition.
    pending: Vec<(i32, OutcomeRow)>,
    oldest: Option<Instant>,
    next_offsets: HashMap<i32, i64>,
    retry_delay: Option<Duration>,
}

/// Runs the outcomes consumer until `shutdown` fires, then stores what it holds and commits.
/// Blocking: call it from a dedicated thread.
///
/// # Errors
/// Kafka fatal errors; ClickHouse errors are retried, not returned.
pub fn run(cfg: &Config, shutdown: &Shutdown, health: &Health) -> anyhow::Result<()> {
    let group = group_id(&cfg.writer.group_id);
    let (runtime, rt, client) =
        crate::service::start_consumer(cfg, &group, &cfg.topics.outcomes, m::OUTCOMES_LOST_TOTAL)?;
    let mut w = OutcomeWriter {
        cfg,
        client,
        rt,
        pending: Vec::new(),
        oldest: None,
        next_offsets: HashMap::new(),
        retry_delay: None,
    };
    tracing::info!(topic = %cfg.topics.outcomes, group = %group, "outcomes writer started");
    runtime.run(&mut w, shutdown, health)
}

impl Strategy for OutcomeWriter<'_> {
    fn on_assign(&mut self, _: &mut Ctx<'_>, _: &[i32]) -> anyhow::Result<()> {
        Ok(())
    }

    fn on_revoke(&mut self, _: &mut Ctx<'_>, partitions: &[i32]) {
        // Not stored, not committed: the next owner reads them again.
        self.pending.retain(|(p, _)| !partitions.contains(p));
        for p in partitions {
            self.next_offsets.remove(p);
        }
        if self.pending.is_empty() {
            self.oldest = None;
        }
    }

    fn on_message(&mut self, cx: &mut Ctx<'_>, msg: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let (p, o) = (msg.partition(), msg.offset());
        let payload = msg.payload().unwrap_or(&[]);
        match serde_json::from_slice::<OutcomeRecord>(payload) {
            Ok(r) => {
                self.pending.push((p, OutcomeRow::from_record(&r)));
                self.oldest.get_or_insert_with(Instant::now);
            }
            Err(e) => {
                metrics::counter!(m::MALFORMED_TOTAL).increment(1);
                let detail = format!("malformed outcome record: {e}");
                tracing::warn!(partition = p, offset = o, reason = %detail, "malformed outcome record sent to the DLQ");
                let max = tracefold_runtime::kafka::message_max_bytes(&self.cfg.kafka);
                cx.send_dlq(DlqRecord::new(payload, &self.cfg.topics.outcomes, p, o, Reason::Malformed, &detail, max))?;
            }
        }
        self.next_offsets.insert(p, o + 1);
        Ok(())
    }

    fn on_tick(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<Step> {
        let max_age = Duration::from_millis(self.cfg.writer.batch_max_age_ms);
        let full = self.pending.len() >= self.cfg.writer.batch_max_rows;
        let old = self.oldest.is_some_and(|t| t.elapsed() >= max_age);
        let only_offsets = self.pending.is_empty() && !self.next_offsets.is_empty();
        if !(full || old || self.retry_delay.is_some() || only_offsets) {
            return Ok(Step::Continue);
        }
        match self.try_flush(cx) {
            Ok(()) => {
                self.retry_delay = None;
                Ok(Step::Continue)
            }
            Err(e) => {
                let delay = match self.retry_delay {
                    None => Duration::from_millis(self.cfg.writer.retry_initial_ms),
                    Some(d) => (d * 2).min(Duration::from_millis(self.cfg.writer.retry_max_ms)),
                };
                self.retry_delay = Some(delay);
                metrics::counter!(m::OUTCOME_INSERTS_TOTAL, "outcome" => "error").increment(1);
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, rows = self.pending.len(), "outcome insert failed; pausing and retrying");
                Ok(Step::Backoff(delay))
            }
        }
    }

    fn on_shutdown(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while (!self.next_offsets.is_empty() || cx.commits_pending()) && Instant::now() < deadline {
            cx.beat();
            if self.try_flush(cx).is_err() || cx.commits_pending() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }
}

impl OutcomeWriter<'_> {
    /// Inserts the pending rows, then commits past them.
    fn try_flush(&mut self, cx: &mut Ctx<'_>) -> anyhow::Result<()> {
        if !self.pending.is_empty() {
            let rows: Vec<OutcomeRow> = self.pending.iter().map(|(_, r)| r.clone()).collect();
            let timeout = Duration::from_millis(self.cfg.writer.insert_timeout_ms);
            self.rt
                .block_on(tracefold_store::outcomes::insert(&self.client, TABLE, &rows, timeout))
                .context("insert into outcomes")?;
            metrics::counter!(m::OUTCOME_INSERTS_TOTAL, "outcome" => "ok").increment(1);
            metrics::counter!(m::OUTCOME_ROWS_INSERTED_TOTAL).increment(rows.len() as u64);
            tracing::debug!(rows = rows.len(), "outcomes inserted");
        }
        let offsets: Vec<(i32, i64)> = self.next_offsets.iter().map(|(p, o)| (*p, *o)).collect();
        cx.commit(&offsets)?;
        self.pending.clear();
        self.oldest = None;
        self.next_offsets.clear();
        Ok(())
    }
}
