//! Versioned, idempotent ClickHouse migrations (`schemas/clickhouse/*.sql`), applied by
//! `tracefold migrate` and by `tracefold dev`. Applied versions are recorded in
//! `<db>.schema_migrations`; every statement is also `IF NOT EXISTS`, so a half-applied
//! migration can be re-run.

use anyhow::Context as _;
use clickhouse::Client;

/// One migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version, from the file name.
    pub version: u32,
    /// Name, from the file name.
    pub name: &'static str,
    /// SQL with `{db}` standing for the database.
    pub sql: &'static str,
}

/// All migrations, in order. A test checks that every file in `schemas/clickhouse` is here.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "aggregates", sql: include_str!("../../../schemas/clickhouse/0001_aggregates.sql") },
    Migration { version: 2, name: "issues", sql: include_str!("../../../schemas/clickhouse/0002_issues.sql") },
    Migration {
        version: 3,
        name: "counts_and_users",
        sql: include_str!("../../../schemas/clickhouse/0003_counts_and_users.sql"),
    },
];

/// The statements of a migration for database `db`: `{db}` substituted, comments dropped,
/// split at `;` that ends a line.
pub fn statements(sql: &str, db: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        let code = line.split("--").next().unwrap_or("");
        if code.trim().is_empty() {
            continue;
        }
        cur.push_str(code);
        cur.push('\n');
        if code.trim_end().ends_with(';') {
            let stmt = cur.trim().trim_end_matches(';').replace("{db}", db);
            out.push(stmt);
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().replace("{db}", db));
    }
    out
}

/// What [`migrate`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Server version (`SELECT version()`).
    pub server_version: String,
    /// Migrations applied now.
    pub applied: Vec<u32>,
    /// Migrations that were already applied.
    pub skipped: Vec<u32>,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct VersionRow {
    version: u32,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct StringRow {
    v: String,
}

/// Returns a client for `cfg` (validation off, so that it works on ClickHouse 18.16 too).
pub fn client(cfg: &tracefold_runtime::config::ClickHouseConfig) -> Client {
    Client::default().with_url(&cfg.url).with_user(&cfg.user).with_password(&cfg.password).with_validation(false)
}

/// Creates the database and applies every migration not yet recorded, calling `progress`
/// before each one.
///
/// # Errors
/// The first statement ClickHouse rejects, with the migration named.
pub async fn migrate(
    ch: &tracefold_runtime::config::ClickHouseConfig,
    mut progress: impl FnMut(&Migration, bool),
) -> anyhow::Result<Report> {
    let client = client(ch);
    let db = &ch.database;
    if !db.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        anyhow::bail!("clickhouse.database must be [A-Za-z0-9_]+, got {db:?}");
    }
    let server_version = client
        .query("SELECT version() AS v")
        .fetch_one::<StringRow>()
        .await
        .with_context(|| format!("cannot reach ClickHouse at {}", ch.url))?
        .v;
    client.query(&format!("CREATE DATABASE IF NOT EXISTS {db}")).execute().await.context("create database")?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, applied_at DateTime DEFAULT now()) \
             ENGINE = MergeTree ORDER BY version"
        ))
        .execute()
        .await
        .context("create schema_migrations")?;
    let applied: Vec<u32> = client
        .query(&format!("SELECT DISTINCT version FROM {db}.schema_migrations"))
        .fetch_all::<VersionRow>()
        .await
        .context("read schema_migrations")?
        .into_iter()
        .map(|r| r.version)
        .collect();
    let mut report = Report { server_version, ..Report::default() };
    for m in MIGRATIONS {
        let done = applied.contains(&m.version);
        progress(m, done);
        if done {
            report.skipped.push(m.version);
            continue;
        }
        for stmt in statements(m.sql, db) {
            client
                .query(&stmt)
                .execute()
                .await
                .with_context(|| format!("migration {:04}_{} failed at: {}", m.version, m.name, first_line(&stmt)))?;
        }
        client
            .query(&format!("INSERT INTO {db}.schema_migrations (version, name) VALUES ({}, '{}')", m.version, m.name))
            .execute()
            .await
            .context("record migration")?;
        report.applied.push(m.version);
    }
    Ok(report)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sql_file_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/clickhouse");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|m| format!("{:04}_{}.sql", m.version, m.name)).collect();
        assert_eq!(files, listed);
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
    }

    #[test]
    fn statements_split_and_substitute() {
        let s = statements(
            "-- c\nCREATE TABLE {db}.a (x UInt8) -- trailing\nENGINE = Memory;\n\nCREATE VIEW {db}.v AS SELECT 1;\n",
            "tf",
        );
        assert_eq!(s, ["CREATE TABLE tf.a (x UInt8) \nENGINE = Memory", "CREATE VIEW tf.v AS SELECT 1"]);
        for m in MIGRATIONS {
            for st in statements(m.sql, "tf") {
                assert!(st.contains("IF NOT EXISTS"), "not idempotent: {st}");
                assert!(!st.contains("{db}"));
            }
        }
    }
}
