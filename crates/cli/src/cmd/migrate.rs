//! `tracefold migrate` and `tracefold retention`: the ClickHouse schema and its time partitions.

use crate::args::{MigrateArgs, RetentionArgs};
use crate::out::outln;

/// Runs `tracefold migrate`: prints the statements for a server version (`--print-for`), or
/// applies the migrations.
///
/// # Errors
/// When ClickHouse does not answer or refuses a statement.
pub async fn migrate(a: MigrateArgs) -> anyhow::Result<()> {
    let MigrateArgs { ch, cluster, retention_days, print_for } = a;
    if let Some(version) = print_for {
        use tracefold_store::migrate::{flavored, statements, Flavor, MIGRATIONS};
        // The names checked as `migrate` checks them: printed statements that ClickHouse
        // refuses (or that do more than create the schema) help no one.
        tracefold_store::migrate::check_names(&ch.database, cluster.as_deref())?;
        let flavor = Flavor::for_version(&version, cluster, retention_days);
        for m in MIGRATIONS {
            outln!("-- {:04}_{}", m.version, m.name);
            for st in statements(m.sql, &ch.database).iter().flat_map(|st| flavored(st, &ch.database, &flavor)) {
                outln!("{st};\n");
            }
        }
        return Ok(());
    }
    let cfg = ch.config();
    let report = tracefold_store::migrate::migrate_with(&cfg, cluster, retention_days, |m, done| {
        eprintln!("  {:04}_{:<24} {}", m.version, m.name, if done { "already applied" } else { "applying" });
    })
    .await?;
    outln!(
        "ClickHouse {}: database {}: {} applied, {} already there",
        report.server_version,
        cfg.database,
        report.applied.len(),
        report.skipped.len()
    );
    Ok(())
}

/// Runs `tracefold retention`.
///
/// # Errors
/// When ClickHouse does not answer or refuses a drop.
pub async fn retention(a: RetentionArgs) -> anyhow::Result<()> {
    let RetentionArgs { ch, days, dry_run } = a;
    let cfg = ch.config();
    let dropped = tracefold_store::migrate::retention(&cfg, days, dry_run).await?;
    for (table, partition) in &dropped {
        outln!("{} {table} partition {partition}", if dry_run { "would drop" } else { "dropped" });
    }
    outln!("{} partitions older than {days} days {}", dropped.len(), if dry_run { "to drop" } else { "dropped" });
    Ok(())
}
